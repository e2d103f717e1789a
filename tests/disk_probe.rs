//! libblkid probing on real bytes: disk images made by the real tools
//! (tests/fixtures/sysfs/make-images.sh: sfdisk, mke2fs, mkfs.vfat, mkswap, mkfs.xfs,
//! cryptsetup, pvcreate) are probed for partition tables, partition entries and
//! signatures, as files, through a loop device, and inside a whole fixture machine.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use understudy::cmd::Cmd;
use understudy::disk::probe::{self, DiskProbe};
use understudy::disk::{self, Bytes, LvmStatus, Readability, Sources};

const MIB: u64 = 1 << 20;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sysfs")
}

/// The images, built once per test run under target/ (sparse: about 25 MB used).
fn images() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("disk-images");
        Cmd::new(fixtures().join("make-images.sh"))
            .arg(&dir)
            .run()
            .expect("building the disk images");
        dir
    })
}

fn probe_image(name: &str, sector: u64) -> DiskProbe {
    probe::disk(&images().join(name), Bytes(sector))
}

fn sig(p: &DiskProbe, n: u32) -> (String, Option<String>, Option<String>) {
    let part = p.partitions.iter().find(|x| x.number == n).unwrap();
    let s = part
        .signature
        .as_ref()
        .unwrap_or_else(|| panic!("partition {n} has no signature: {part:?}"));
    (s.kind.clone(), s.uuid.clone(), s.label.clone())
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

#[test]
fn gpt_entries_and_every_kind_of_signature() {
    let p = probe_image("gpt.img", 512);
    assert_eq!(p.state, Readability::Readable);
    let t = p.table.as_ref().unwrap();
    assert_eq!(t.kind, "gpt");
    assert_eq!(
        t.id.as_deref(),
        Some("6e0f1d0c-3b1f-4c39-9e2b-2d7c1a5b0001")
    );
    assert_eq!(p.signature, None, "a GPT disk has no whole-disk signature");

    // (number, start sector, sectors, type GUID, name)
    let want = [
        (
            1,
            2048,
            2048,
            "21686148-6449-6e6f-744e-656564454649",
            "bios",
        ),
        (
            2,
            4096,
            65536,
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
            "esp",
        ),
        (
            3,
            69632,
            131072,
            "0fc63daf-8483-4772-8e79-3d69d8477de4",
            "root",
        ),
        (
            4,
            200704,
            32768,
            "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f",
            "swap",
        ),
        (
            5,
            233472,
            622592,
            "0fc63daf-8483-4772-8e79-3d69d8477de4",
            "data",
        ),
        (
            6,
            856064,
            32768,
            "ca7d7ccb-63ed-4c53-861c-1742536059cc",
            "secret",
        ),
        (
            7,
            888832,
            16384,
            "e6d6d379-f507-44c2-a23c-238f2a3df928",
            "pv",
        ),
    ];
    assert_eq!(p.partitions.len(), want.len());
    for (part, (n, start, size, ty, name)) in p.partitions.iter().zip(want) {
        assert_eq!(part.number, n);
        assert_eq!(part.start, Bytes(start * 512), "start of {n}");
        assert_eq!(part.size, Bytes(size * 512), "size of {n}");
        assert_eq!(part.type_guid.as_deref(), Some(ty), "type of {n}");
        assert_eq!(part.name.as_deref(), Some(name));
        assert_eq!(
            part.uuid.as_deref(),
            Some(format!("a0000000-0000-4000-8000-00000000000{n}").as_str())
        );
        assert_eq!(part.error, None);
    }
    assert!(
        p.partitions[0].signature.is_none(),
        "bios boot holds no filesystem"
    );
    assert_eq!(sig(&p, 2), ("vfat".into(), s("1234-ABCD"), s("ESP")));
    assert_eq!(
        sig(&p, 3),
        (
            "ext4".into(),
            s("11111111-1111-4111-8111-111111111103"),
            s("root")
        )
    );
    assert_eq!(
        sig(&p, 4),
        (
            "swap".into(),
            s("11111111-1111-4111-8111-111111111104"),
            s("swap")
        )
    );
    assert_eq!(
        sig(&p, 5),
        (
            "xfs".into(),
            s("11111111-1111-4111-8111-111111111105"),
            s("data")
        )
    );
    assert_eq!(
        sig(&p, 6),
        (
            "crypto_LUKS".into(),
            s("11111111-1111-4111-8111-111111111106"),
            s("secret")
        )
    );
    assert_eq!(
        sig(&p, 7),
        (
            "LVM2_member".into(),
            s("1111AA-1111-1111-1111-1111-1111-111107"),
            None
        )
    );
    let luks = p.partitions[5].signature.as_ref().unwrap();
    assert_eq!(luks.usage.as_deref(), Some("crypto"));
    assert_eq!(luks.version.as_deref(), Some("2"));
}

#[test]
fn mbr_with_an_extended_and_a_logical_partition() {
    let p = probe_image("dos.img", 512);
    assert_eq!(p.state, Readability::Readable);
    let t = p.table.as_ref().unwrap();
    assert_eq!(
        (t.kind.as_str(), t.id.as_deref()),
        ("dos", Some("0x1234abcd"))
    );
    let got: Vec<(u32, Option<&str>, bool, Option<&str>)> = p
        .partitions
        .iter()
        .map(|x| {
            (
                x.number,
                x.type_guid.as_deref(),
                x.extended,
                x.signature.as_ref().map(|s| s.kind.as_str()),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (1, Some("0x83"), false, Some("ext4")),
            (2, Some("0x82"), false, Some("swap")),
            (3, Some("0x05"), true, None),
            (5, Some("0x83"), false, Some("ext4")),
        ]
    );
    assert_eq!(p.partitions[0].uuid.as_deref(), Some("1234abcd-01"));
    assert_eq!(p.partitions[3].uuid.as_deref(), Some("1234abcd-05"));
    assert_eq!(p.partitions[3].start, Bytes(53248 * 512));
    assert_eq!(
        p.partitions[3].signature.as_ref().unwrap().label.as_deref(),
        Some("logical")
    );
}

#[test]
fn four_k_sector_gpt_needs_the_sector_size() {
    let p = probe_image("gpt4k.img", 4096);
    assert_eq!(p.state, Readability::Readable);
    assert_eq!(p.table.as_ref().unwrap().kind, "gpt");
    assert_eq!(p.partitions.len(), 1);
    let part = &p.partitions[0];
    // libblkid counts in 512-byte units whatever the sector size; we say bytes.
    assert_eq!(part.start, Bytes(MIB));
    assert_eq!(part.size, Bytes(32 * MIB));
    assert_eq!(part.name.as_deref(), Some("four-k"));
    assert_eq!(
        part.signature.as_ref().unwrap().label.as_deref(),
        Some("fourk")
    );

    // Read with 512-byte sectors the GPT header is not where it is looked for.
    let wrong = probe_image("gpt4k.img", 512);
    assert_ne!(wrong.table.as_ref().map(|t| t.kind.as_str()), Some("gpt"));
}

#[test]
fn whole_disk_filesystem_without_a_table() {
    let p = probe_image("whole-ext4.img", 512);
    assert_eq!(p.state, Readability::Readable);
    assert_eq!(p.table, None);
    assert!(p.partitions.is_empty());
    let s = p.signature.unwrap();
    assert_eq!(s.kind, "ext4");
    assert_eq!(
        s.uuid.as_deref(),
        Some("44444444-4444-4444-8444-444444444401")
    );
    assert_eq!(s.label.as_deref(), Some("whole"));
    assert!(!s.bad_checksum);
}

#[test]
fn unusable_disks_say_why() {
    let bad = probe_image("badcsum.img", 512);
    assert_eq!(
        bad.state,
        Readability::BadSuperblock("ext4 on the whole disk".into())
    );
    assert!(bad.signature.unwrap().bad_checksum);

    assert_eq!(
        probe_image("ambivalent.img", 512).state,
        Readability::Ambivalent("more than one signature on the whole disk".into())
    );
    assert_eq!(probe_image("blank.img", 512).state, Readability::Blank);
    assert_eq!(
        probe_image("noise.img", 512).state,
        Readability::NoPartitionTable
    );

    let missing = probe_image("no-such.img", 512);
    match missing.state {
        Readability::IoError(e) => assert!(e.contains("No such file"), "{e}"),
        other => panic!("{other:?}"),
    }
    // A directory opens but cannot be read: the read error is reported.
    match probe::disk(images(), Bytes(512)).state {
        Readability::IoError(e) => assert!(e.contains("reading") && e.contains("directory"), "{e}"),
        other => panic!("{other:?}"),
    }
}

/// Detaches a loop device this test attached.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Cmd::new("losetup").args(["-d", &self.0]).run();
    }
}

#[test]
fn a_real_block_device_reads_the_same_as_its_image() {
    let img = images().join("gpt.img");
    let dev = Cmd::new("losetup")
        .args(["--find", "--show", "--read-only"])
        .arg(&img)
        .output()
        .expect("attaching a loop device (root needed)")
        .text()
        .trim()
        .to_string();
    let _guard = Loop(dev.clone());
    let from_dev = probe::disk(Path::new(&dev), Bytes(512));
    let from_file = probe_image("gpt.img", 512);
    assert_eq!(from_dev, from_file);
    assert_eq!(from_dev.partitions.len(), 7);
}

/// A copy of the partitions-dm fixture machine whose dev/vdb is gpt.img.
fn machine_with_disk() -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("disk-machine");
    let _ = std::fs::remove_dir_all(&root);
    Cmd::new("cp")
        .arg("-a")
        .arg(fixtures().join("partitions-dm"))
        .arg(&root)
        .run()
        .unwrap();
    std::os::unix::fs::symlink(images().join("gpt.img"), root.join("dev/vdb")).unwrap();
    root
}

#[test]
fn inventory_merges_kernel_partitions_table_signatures_and_use() {
    let root = machine_with_disk();
    let inv = disk::inventory(&Sources::fixture(&root));
    assert!(inv.problems.is_empty(), "{:?}", inv.problems);
    assert_eq!(inv.disks.len(), 1, "dm-0 is not a disk");
    let d = &inv.disks[0];
    assert_eq!(d.name, "vdb");
    assert_eq!(d.path, root.join("dev/vdb"));
    assert_eq!(d.serial.as_deref(), Some("SECONDARY-0001"));
    assert_eq!(d.size, Bytes(512 * MIB));
    assert_eq!(d.state, Readability::Readable);
    assert_eq!(d.table.as_ref().unwrap().kind, "gpt");
    assert_eq!(d.partitions.len(), 7);
    for p in &d.partitions {
        assert_eq!(
            p.device.as_deref(),
            Some(format!("vdb{}", p.number).as_str())
        );
        assert_eq!(p.path, Some(root.join(format!("dev/vdb{}", p.number))));
    }
    let part = |n: usize| &d.partitions[n - 1];
    assert_eq!(
        part(3).signature.as_ref().unwrap().label.as_deref(),
        Some("root")
    );
    assert_eq!(part(3).usage.mounts, [PathBuf::from("/")]);
    assert_eq!(part(2).usage.mounts, [PathBuf::from("/boot/efi")]);
    assert!(part(4).usage.swap);
    assert_eq!(part(7).usage.holders.len(), 1);
    assert_eq!(part(7).usage.holders[0].to_string(), "dm-0 (vg0-data)");
    assert!(!part(5).usage.is_busy());
    assert_eq!(
        d.busy_reasons(),
        [
            "vdb2 is mounted at /boot/efi",
            "vdb3 is mounted at /",
            "vdb4 is in use as swap",
            "vdb7 is held by dm-0 (vg0-data)",
        ]
    );

    let LvmStatus::Found(lvm) = &inv.lvm else {
        panic!("{:?}", inv.lvm);
    };
    assert_eq!(lvm.pvs[0].path, Path::new("/dev/vdb7"));
    assert_eq!(lvm.vgs[0].name, "vg0");
    let lv = &lvm.lvs[0];
    assert_eq!(lv.name, "data");
    assert_eq!(lv.device.as_deref(), Some("dm-0"));
    // The LV is mounted twice (a bind mount of a subdirectory).
    assert_eq!(
        lv.usage.mounts,
        [PathBuf::from("/srv"), PathBuf::from("/var/www")]
    );
    // dev/dm-0 is an empty placeholder: nothing on it, and no error either.
    assert_eq!((&lv.signature, &lv.error), (&None, &None));

    // The pseudo filesystems are left out of the mounts.
    assert_eq!(inv.mounts.len(), 4);
    let text = inv.to_string();
    assert!(text.contains("vdb3"), "{text}");
    assert!(
        text.contains("ext4 1.0 UUID=11111111-1111-4111-8111-111111111103 LABEL=\"root\""),
        "{text}"
    );
    assert!(text.contains("LV vg0/data 4.0 MiB on /dev/vdb7"), "{text}");
    std::fs::remove_dir_all(&root).unwrap();
}
