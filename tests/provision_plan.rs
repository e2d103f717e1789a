//! `provision::plan`, table-driven: inventories built here (an appliance booted from
//! `sda` with its root on LV `vg0/root`, and a candidate secondary `sdb` in every state
//! provision meets), the plan or the refusal expected for each. The layout of a fresh
//! plan is also written on an image file and checked by `sgdisk -v`.

use std::path::{Path, PathBuf};

use understudy::boot;
use understudy::disk::{
    self, Disk, Holder, Identity, Inventory, Lv, Lvm, LvmStatus, Partition, Pv, Readability,
    Recorded, Signature, Transport, Usage, Vg,
};
use understudy::layout::{self, Bytes, Filesystem, Layout, MIB, SectorSize, Source, Table};
use understudy::provision::plan::{
    self, COW_MIN_BYTES, ESP_BYTES, Mode, ProvisionPlan, RECOVERY_BYTES, Refusal, Request, Role,
};
use uuid::Uuid;

const GIB: u64 = 1 << 30;
const ROOT_UUID: &str = "0a0a0a0a-0000-4000-8000-000000000001";
const BOOT_UUID: &str = "0a0a0a0a-0000-4000-8000-000000000002";
const ESP_ID: &str = "AB12-CD34";

fn sig(kind: &str, label: Option<&str>, uuid: &str) -> Option<Signature> {
    Some(Signature {
        kind: kind.into(),
        usage: Some("filesystem".into()),
        uuid: Some(uuid.into()),
        label: label.map(str::to_string),
        version: None,
        bad_checksum: false,
    })
}

fn part(disk: &str, n: u32, start_mib: u64, size_mib: u64, s: Option<Signature>) -> Partition {
    Partition {
        number: n,
        device: Some(format!("{disk}{n}")),
        path: Some(PathBuf::from(format!("/dev/{disk}{n}"))),
        start: disk::Bytes(start_mib * MIB),
        size: disk::Bytes(size_mib * MIB),
        type_guid: None,
        uuid: Some(format!("00000000-0000-4000-8000-{disk:0>8}{n:04}")),
        name: None,
        extended: false,
        signature: s,
        error: None,
        usage: Usage::default(),
    }
}

fn disk(name: &str, serial: &str, bytes: u64, partitions: Vec<Partition>) -> Disk {
    let identity = Identity {
        wwn: None,
        serial: Some(serial.into()),
        model: Some("QEMU HARDDISK".into()),
        size: disk::Bytes(bytes),
        logical_sector: disk::Bytes(512),
    };
    let state = if partitions.is_empty() {
        Readability::Blank
    } else {
        Readability::Readable
    };
    Disk {
        partitions,
        ..Disk::known_as(name, identity, Transport::Sata, state)
    }
}

fn mounted(at: &str) -> Usage {
    Usage {
        mounts: vec![PathBuf::from(at)],
        ..Usage::default()
    }
}

/// The appliance's primary: sda1 ESP, sda2 /boot, sda3 PV of vg0 (root LV, mounted).
fn primary() -> Disk {
    let mut esp = part("sda", 1, 1, 256, sig("vfat", None, ESP_ID));
    esp.usage = mounted("/boot/efi");
    let mut boot = part("sda", 2, 257, 512, sig("ext4", None, BOOT_UUID));
    boot.usage = mounted("/boot");
    let mut pv = part(
        "sda",
        3,
        769,
        30 * 1024,
        sig("LVM2_member", None, "pv-sda3"),
    );
    pv.usage.holders = vec![Holder {
        device: "dm-0".into(),
        dm_name: Some("vg0-root".into()),
    }];
    disk("sda", "PRIMARY-1", 64 * GIB, vec![esp, boot, pv])
}

fn pv(path: &str, vg: Option<&str>) -> Pv {
    Pv {
        path: path.into(),
        uuid: format!("pvuuid-{path}"),
        vg: vg.map(str::to_string),
        size: disk::Bytes(GIB),
        free: disk::Bytes(0),
        dev_size: disk::Bytes(GIB),
        attr: "a--".into(),
    }
}

fn lvm(extra_pvs: Vec<Pv>) -> LvmStatus {
    let mut pvs = vec![pv("/dev/sda3", Some("vg0"))];
    pvs.extend(extra_pvs);
    LvmStatus::Found(Lvm {
        pvs,
        vgs: vec![Vg {
            name: "vg0".into(),
            uuid: "vguuid".into(),
            size: disk::Bytes(30 * GIB),
            free: disk::Bytes(0),
            extent_size: disk::Bytes(4 * MIB),
            pv_count: 1,
            lv_count: 1,
            attr: "wz--n-".into(),
        }],
        lvs: vec![Lv {
            name: "root".into(),
            vg: "vg0".into(),
            uuid: "lvuuid".into(),
            size: disk::Bytes(30 * GIB),
            path: Some("/dev/vg0/root".into()),
            dm_path: Some("/dev/mapper/vg0-root".into()),
            attr: "-wi-ao----".into(),
            origin: None,
            segtypes: vec!["linear".into()],
            devices: vec!["/dev/sda3".into()],
            device: Some("dm-0".into()),
            signature: sig("ext4", None, ROOT_UUID),
            error: None,
            usage: mounted("/"),
        }],
    })
}

fn inv(secondary: Option<Disk>, lvm: LvmStatus) -> Inventory {
    let mut disks = vec![primary()];
    disks.extend(secondary);
    Inventory {
        disks,
        lvm,
        mounts: Vec::new(),
        swaps: Vec::new(),
        problems: Vec::new(),
    }
}

/// The primary's captured layout: 3 GiB used in the root, 200 MiB in /boot.
fn layout_doc() -> Layout {
    let fs = |source, fstype: &str, uuid: &str, used, mp: &str| Filesystem {
        source,
        fstype: fstype.into(),
        uuid: Some(uuid.into()),
        label: None,
        used_bytes: Bytes(used),
        mountpoint: Some(mp.into()),
        mount_options: Vec::new(),
    };
    Layout {
        schema: layout::SCHEMA,
        table: Table::Gpt {
            disk_guid: Uuid::nil(),
        },
        disk: layout::Disk {
            size_bytes: Bytes(64 * GIB),
            logical_sector: SectorSize::B512,
            physical_sector: 512,
        },
        partitions: Vec::new(),
        filesystems: vec![
            fs(Source::Partition(1), "vfat", ESP_ID, 8 * MIB, "/boot/efi"),
            fs(Source::Partition(2), "ext4", BOOT_UUID, 192 * MIB, "/boot"),
            fs(
                Source::Lv {
                    vg: "vg0".into(),
                    name: "root".into(),
                },
                "ext4",
                ROOT_UUID,
                3 * GIB,
                "/",
            ),
        ],
        lvm: layout::Lvm::default(),
        swap: Vec::new(),
    }
}

/// UUIDs 1, 2, 3, ... so plans are the same on every run.
fn counter() -> impl FnMut() -> Uuid {
    let mut n = 0u128;
    move || {
        n += 1;
        Uuid::from_u128(0x5ec0_0000_0000_4000_8000_0000_0000_0000 + n)
    }
}

fn req(secondary: &str) -> Request {
    Request {
        secondary: secondary.into(),
        ..Request::default()
    }
}

fn run(inv: &Inventory, req: &Request, rec: Option<&Recorded>) -> Result<ProvisionPlan, Refusal> {
    plan::plan(inv, req, &layout_doc(), rec, &mut counter())
}

fn blank(gib: u64) -> Disk {
    disk("sdb", "SECONDARY-2", gib * GIB, Vec::new())
}

/// A disk laid out by an earlier run (fs UUIDs `...-00000000000N`).
fn provisioned(cow_pv: bool) -> Disk {
    let u = |n: u32| format!("5ec0aaaa-0000-4000-8000-00000000000{n}");
    let parts = vec![
        part("sdb", 1, 1, 1, None),
        part("sdb", 2, 2, 256, sig("vfat", Some("US-ESP"), "5EC0-0002")),
        part("sdb", 3, 258, 512, sig("ext4", Some("US_RECOVERY"), &u(3))),
        part(
            "sdb",
            4,
            770,
            7000,
            sig("ext4", Some("US-EMERGENCY"), &u(4)),
        ),
        part("sdb", 5, 7770, 40000, sig("ext4", Some("US-IMAGES"), &u(5))),
        part(
            "sdb",
            6,
            47770,
            6000,
            if cow_pv {
                sig("LVM2_member", None, "pv-sdb6")
            } else {
                None
            },
        ),
    ];
    disk("sdb", "SECONDARY-2", 64 * GIB, parts)
}

fn recorded_sdb() -> Recorded {
    Recorded {
        primary: Some(primary().identity),
        secondary: Some(blank(64).identity),
    }
}

/// Invariants of every fresh plan: six partitions in order, 1 MiB-aligned and
/// contiguous from 1 MiB, inside the disk; fixed sizes; emergency ≥ 2 × used; every
/// filesystem UUID, FAT id and partition UUID fresh and unique, none equal to the
/// primary's.
fn check_fresh(p: &ProvisionPlan) {
    assert_eq!(p.mode, Mode::Fresh);
    let table = p.table.as_ref().expect("a fresh plan writes a table");
    layout::check_plan(table).unwrap();
    let s = table.sector_size.bytes();
    let mut end = MIB;
    for (i, part) in p.parts.iter().enumerate() {
        assert_eq!(part.number as usize, i + 1);
        assert_eq!(part.start.0, end, "partition {} is contiguous", part.number);
        assert_eq!(part.start.0 % MIB, 0);
        assert_eq!(part.size.0 % MIB, 0);
        let t = &table.partitions[i];
        assert_eq!(t.start_lba.0 * s, part.start.0);
        assert_eq!(t.size_lba.0 * s, part.size.0);
        assert_eq!(t.name, part.role.gpt_name());
        end = part.start.0 + part.size.0;
    }
    assert!(end + MIB <= p.secondary.size.0);
    assert_eq!(p.part(Role::BiosBoot).size, Bytes(MIB));
    assert_eq!(p.part(Role::Esp).size, ESP_BYTES);
    assert_eq!(p.part(Role::Recovery).size, RECOVERY_BYTES);
    assert!(p.part(Role::Emergency).size.0 >= 2 * p.used.0);
    let mut ids: Vec<String> = p
        .parts
        .iter()
        .filter_map(|x| x.filesystem.as_ref())
        .map(|f| f.uuid.to_ascii_lowercase())
        .filter(|u| !u.is_empty())
        .collect();
    ids.extend(
        table
            .partitions
            .iter()
            .map(|x| x.part_uuid.unwrap().to_string()),
    );
    if let Table::Gpt { disk_guid } = table.table {
        ids.push(disk_guid.to_string());
    }
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "fresh identifiers are unique");
    for theirs in [ROOT_UUID, BOOT_UUID, &ESP_ID.to_ascii_lowercase()] {
        assert!(!ids.iter().any(|u| u == theirs), "{theirs} reused");
    }
    let labels: Vec<&str> = p
        .parts
        .iter()
        .filter_map(|x| x.filesystem.as_ref())
        .map(|f| f.label.as_str())
        .collect();
    assert_eq!(
        labels,
        ["US-ESP", "US_RECOVERY", "US-EMERGENCY", "US-IMAGES", ""]
    );
}

#[test]
fn a_blank_disk_gets_the_product_layout() {
    let p = run(&inv(Some(blank(64)), lvm(vec![])), &req("/dev/sdb"), None).unwrap();
    check_fresh(&p);
    // Used: 3 GiB + 192 MiB + 8 MiB; emergency twice that.
    assert_eq!(p.used, Bytes(3 * GIB + 200 * MIB));
    assert_eq!(p.part(Role::Emergency).size, Bytes(6 * GIB + 400 * MIB));
    // Default COW: 10% of 64 GiB, rounded down to a MiB.
    assert_eq!(p.part(Role::Cow).size, Bytes(64 * GIB / 10 / MIB * MIB));
    // Images: everything else, up to the last whole MiB before the backup GPT.
    let images = p.part(Role::Images);
    assert_eq!(
        images.size.0,
        64 * GIB
            - MIB
            - MIB
            - (MIB + 256 * MIB + 512 * MIB)
            - p.part(Role::Emergency).size.0
            - p.part(Role::Cow).size.0
    );
    assert_eq!(p.root_vg, "vg0");
    assert!(p.add_cow_pv);
    assert_eq!(p.primary.name, "sda");
    assert_eq!(p.part(Role::Recovery).path, Path::new("/dev/sdb3"));
    assert_eq!(p.recorded, recorded_sdb());
    let ids = p.primary_boot.as_ref().unwrap();
    assert_eq!(ids.root_fs_uuid, ROOT_UUID);
    assert_eq!(ids.boot_fs_uuid, BOOT_UUID, "BIOS chainloads via /boot");
    assert_eq!(ids.esp_fs_uuid.as_deref(), Some(ESP_ID));
    // The FAT volume id has blkid's form.
    let esp = p.fs_uuid(Role::Esp);
    assert!(
        esp.len() == 9 && esp.as_bytes()[4] == b'-',
        "FAT id {esp:?}"
    );
}

#[test]
fn sizes_follow_the_options_and_the_sector_size() {
    let mut r = req("sdb");
    r.cow = Some(Bytes(8 * GIB));
    let p = run(&inv(Some(blank(64)), lvm(vec![])), &r, None).unwrap();
    check_fresh(&p);
    assert_eq!(p.part(Role::Cow).size, Bytes(8 * GIB));

    let mut d = blank(64);
    d.logical_sector = disk::Bytes(4096);
    d.identity.logical_sector = disk::Bytes(4096);
    let p = run(&inv(Some(d), lvm(vec![])), &req("sdb"), None).unwrap();
    check_fresh(&p);
    assert_eq!(p.table.as_ref().unwrap().sector_size, SectorSize::B4096);
}

#[test]
fn fresh_uuids_skip_any_already_on_the_primary() {
    // The generator's first answer is the primary's root UUID.
    let mut first = true;
    let mut inner = counter();
    let mut clashing = move || {
        if std::mem::take(&mut first) {
            ROOT_UUID.parse().unwrap()
        } else {
            inner()
        }
    };
    let p = plan::plan(
        &inv(Some(blank(64)), lvm(vec![])),
        &req("sdb"),
        &layout_doc(),
        None,
        &mut clashing,
    )
    .unwrap();
    check_fresh(&p);
}

struct Refused {
    what: &'static str,
    inv: Inventory,
    req: Request,
    recorded: Option<Recorded>,
    expect: fn(&Refusal) -> bool,
    /// A phrase the message must contain.
    says: &'static str,
}

#[test]
fn refusals_say_why() {
    let with = |f: fn(&mut Disk)| {
        let mut d = blank(64);
        d.partitions = vec![part("sdb", 1, 1, 1024, sig("ext4", None, "x"))];
        f(&mut d);
        inv(Some(d), lvm(vec![]))
    };
    let cases = vec![
        Refused {
            what: "the disk the system booted from",
            inv: inv(Some(blank(64)), lvm(vec![])),
            req: req("sda"),
            recorded: None,
            expect: |r| matches!(r, Refusal::BootDisk { .. }),
            says: "sda is the disk the running system booted from (it holds the root LV's extents in vg0",
        },
        Refused {
            what: "the named primary",
            inv: inv(Some(blank(64)), lvm(vec![])),
            req: Request {
                primary: Some("sdb".into()),
                ..req("sdb")
            },
            recorded: None,
            expect: |r| matches!(r, Refusal::IsPrimary { .. }),
            says: "sdb is the primary disk",
        },
        Refused {
            what: "a mounted partition",
            inv: with(|d| d.partitions[0].usage = mounted("/srv")),
            req: req("sdb"),
            recorded: None,
            expect: |r| matches!(r, Refusal::Busy { .. }),
            says: "sdb1 is mounted at /srv",
        },
        Refused {
            what: "a swap partition",
            inv: with(|d| d.partitions[0].usage.swap = true),
            req: req("sdb"),
            recorded: None,
            expect: |r| matches!(r, Refusal::Busy { .. }),
            says: "sdb1 is in use as swap",
        },
        Refused {
            what: "a held partition",
            inv: with(|d| {
                d.partitions[0].usage.holders = vec![Holder {
                    device: "md127".into(),
                    dm_name: None,
                }]
            }),
            req: req("sdb"),
            recorded: None,
            expect: |r| matches!(r, Refusal::Busy { .. }),
            says: "sdb1 is held by md127",
        },
        Refused {
            what: "a read-only disk",
            inv: with(|d| d.read_only = true),
            req: req("sdb"),
            recorded: None,
            expect: |r| matches!(r, Refusal::ReadOnly { .. }),
            says: "sdb is read-only",
        },
        Refused {
            what: "a disk too small for the layout",
            inv: inv(Some(blank(8)), lvm(vec![])),
            req: req("sdb"),
            recorded: None,
            expect: |r| {
                // 1 + 769 MiB fixed + 6.4 GiB emergency + 3.2 GiB images + 819 MiB COW + 1.
                matches!(r, Refusal::TooSmall { have, needed, .. }
                    if *have == 8 * GIB && *needed == (2 + 769 + 6544 + 3272 + 819) * MIB)
            },
            says: "sdb is too small: it has 8.0 GiB",
        },
        Refused {
            what: "an unknown disk",
            inv: inv(None, lvm(vec![])),
            req: req("sdq"),
            recorded: None,
            expect: |r| matches!(r, Refusal::NoSuchDisk { .. }),
            says: "no disk sdq",
        },
        Refused {
            what: "a root not on LVM, no --root-vg",
            inv: {
                let mut i = inv(Some(blank(64)), LvmStatus::Skipped);
                i.disks[0].partitions[1].usage = mounted("/");
                i
            },
            req: req("sdb"),
            recorded: None,
            expect: |r| matches!(r, Refusal::NoRootVg),
            says: "name one with --root-vg",
        },
        Refused {
            what: "a --root-vg that does not exist",
            inv: inv(Some(blank(64)), lvm(vec![])),
            req: Request {
                root_vg: Some("nope".into()),
                ..req("sdb")
            },
            recorded: None,
            expect: |r| matches!(r, Refusal::NoSuchVg { .. }),
            says: "volume group nope does not exist",
        },
        Refused {
            what: "a PV of another VG on the secondary",
            inv: with(|_| ()).pipe(|mut i| {
                i.lvm = lvm(vec![pv("/dev/sdb1", Some("data"))]);
                i
            }),
            req: req("sdb"),
            recorded: None,
            expect: |r| matches!(r, Refusal::PvInUse { vg, .. } if vg == "data"),
            says: "partition /dev/sdb1 is a physical volume of volume group data",
        },
        Refused {
            what: "a provisioned disk that is not the recorded one, its PV in the root VG",
            inv: inv(
                Some(provisioned(true)),
                lvm(vec![pv("/dev/sdb6", Some("vg0"))]),
            ),
            req: req("sdb"),
            recorded: None,
            expect: |r| matches!(r, Refusal::PvInUse { vg, .. } if vg == "vg0"),
            says: "vgreduce",
        },
        Refused {
            what: "our label already on the primary",
            inv: {
                let mut i = inv(Some(blank(64)), lvm(vec![]));
                i.disks[0].partitions[1].signature = sig("ext4", Some("US-IMAGES"), BOOT_UUID);
                i
            },
            req: req("sdb"),
            recorded: None,
            expect: |r| matches!(r, Refusal::LabelTaken { label, .. } if label == "US-IMAGES"),
            says: "already has a filesystem labelled US-IMAGES",
        },
        Refused {
            what: "a COW size below the minimum",
            inv: inv(Some(blank(64)), lvm(vec![])),
            req: Request {
                cow: Some(Bytes(COW_MIN_BYTES.0 - MIB)),
                ..req("sdb")
            },
            recorded: None,
            expect: |r| matches!(r, Refusal::CowTooSmall { .. }),
            says: "below the minimum",
        },
    ];
    for c in cases {
        let got = run(&c.inv, &c.req, c.recorded.as_ref());
        let r = match got {
            Err(r) => r,
            Ok(p) => panic!("{}: planned instead of refusing:\n{p}", c.what),
        };
        assert!((c.expect)(&r), "{}: wrong refusal {r:?}", c.what);
        let text = r.to_string();
        assert!(
            text.contains(c.says),
            "{}: {text:?} lacks {:?}",
            c.what,
            c.says
        );
        // The JSON form names the refusal for scripts.
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["refusal"].is_string(), "{}: {json}", c.what);
    }
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl Pipe for Inventory {}

#[test]
fn the_recorded_secondary_is_updated_in_place() {
    let rec = recorded_sdb();
    let p = run(
        &inv(
            Some(provisioned(true)),
            lvm(vec![pv("/dev/sdb6", Some("vg0"))]),
        ),
        &req("sdb"),
        Some(&rec),
    )
    .unwrap();
    assert_eq!(p.mode, Mode::Update);
    assert!(p.table.is_none(), "no table is written");
    assert!(p.parts.iter().all(|x| !x.create), "every partition kept");
    assert_eq!(
        p.fs_uuid(Role::Images),
        "5ec0aaaa-0000-4000-8000-000000000005"
    );
    assert_eq!(
        p.fs_uuid(Role::Recovery),
        "5ec0aaaa-0000-4000-8000-000000000003"
    );
    assert!(!p.add_cow_pv, "the PV is already in vg0");

    // A run that stopped before vgextend: the PV joins now.
    let p = run(
        &inv(Some(provisioned(true)), lvm(vec![pv("/dev/sdb6", None)])),
        &req("sdb"),
        Some(&rec),
    )
    .unwrap();
    assert_eq!(p.mode, Mode::Update);
    assert!(p.add_cow_pv);
}

#[test]
fn a_provisioned_disk_that_was_not_recorded_is_laid_out_afresh_with_a_note() {
    let mut other = recorded_sdb();
    other.secondary.as_mut().unwrap().serial = Some("SOMEONE-ELSE".into());
    for rec in [None, Some(other)] {
        let p = run(
            &inv(Some(provisioned(true)), lvm(vec![pv("/dev/sdb6", None)])),
            &req("sdb"),
            rec.as_ref(),
        )
        .unwrap();
        check_fresh(&p);
        assert!(
            p.notes.iter().any(|n| n.contains("images are erased")),
            "{:?}",
            p.notes
        );
    }
}

#[test]
fn partition_nodes_follow_the_kernels_naming() {
    assert_eq!(
        plan::partition_path(Path::new("/dev/vdb"), 3),
        Path::new("/dev/vdb3")
    );
    assert_eq!(
        plan::partition_path(Path::new("/dev/nvme0n1"), 3),
        Path::new("/dev/nvme0n1p3")
    );
    assert_eq!(
        plan::partition_path(Path::new("/dev/mmcblk0"), 5),
        Path::new("/dev/mmcblk0p5")
    );
}

#[test]
fn a_rerun_keeps_the_emergency_entry_expand_wrote() {
    let p = run(&inv(Some(blank(64)), lvm(vec![])), &req("sdb"), None).unwrap();
    let entry = boot::EmergencyEntry {
        fs_uuid: p.fs_uuid(Role::Emergency).into(),
        kernel: "/boot/vmlinuz-6.1.0-28-amd64".into(),
        initrd: "/boot/initrd.img-6.1.0-28-amd64".into(),
        cmdline: vec!["quiet".into(), "noresume".into()],
    };
    let cfg = boot::render_grub_cfg(&p.secondary_boot(Some(entry.clone()))).unwrap();
    assert_eq!(
        plan::emergency_entry_from_cfg(&cfg, p.fs_uuid(Role::Emergency)),
        Some(entry)
    );
    // Not ours (another UUID): nothing is kept.
    assert_eq!(
        plan::emergency_entry_from_cfg(&cfg, "5ec0aaaa-0000-4000-8000-00000000ffff"),
        None
    );
    // The fresh menu: Debian's links, no extra words, the primary's entry.
    let fresh = p.secondary_boot(None);
    assert_eq!(fresh.emergency.kernel, "/vmlinuz");
    assert!(fresh.emergency.cmdline.is_empty());
    assert_eq!(fresh.primary.unwrap().root_fs_uuid, ROOT_UUID);
}

/// The fresh table, written by our GPT writer on an image file of the disk's size,
/// passes `sgdisk -v`, and `sfdisk --json` reads back the plan's names and types.
#[test]
fn the_fresh_table_is_clean_for_sgdisk() {
    let p = run(&inv(Some(blank(64)), lvm(vec![])), &req("sdb"), None).unwrap();
    let dir = tempdir();
    let img = dir.join("secondary.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 * GIB)
        .unwrap();
    understudy::partition::write(&img, p.table.as_ref().unwrap()).unwrap();
    let out = std::process::Command::new("sgdisk")
        .arg("-v")
        .arg(&img)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sgdisk -v: {text}");
    assert!(text.contains("No problems found"), "sgdisk -v: {text}");
    let out = std::process::Command::new("sfdisk")
        .arg("--json")
        .arg(&img)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let parts = v["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 6);
    for (got, want) in parts.iter().zip(&p.parts) {
        assert_eq!(got["name"], want.role.gpt_name());
        assert_eq!(
            got["type"].as_str().unwrap().to_ascii_lowercase(),
            want.role.type_guid().to_string()
        );
        assert_eq!(got["start"].as_u64().unwrap() * 512, want.start.0);
        assert_eq!(got["size"].as_u64().unwrap() * 512, want.size.0);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("provision-plan-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// What the executor needs but the system lacks is named before anything is written:
/// a missing kernel, initramfs or module directory.
#[test]
fn missing_inputs_are_named_before_anything_is_written() {
    use understudy::provision::execute::{RecoverySource, missing};
    let mut src = RecoverySource {
        kernel: "/nonexistent/vmlinuz".into(),
        initrd: Some("/nonexistent/initrd.img".into()),
        kernel_version: "6.1.0-99-amd64".into(),
        modules: "/nonexistent/modules".into(),
        init: "/nonexistent/understudy".into(),
    };
    let m = missing(&src);
    assert!(
        m.iter()
            .any(|l| l.contains("the recovery kernel /nonexistent/vmlinuz")),
        "{m:?}"
    );
    assert!(
        m.iter()
            .any(|l| l.contains("the recovery initramfs /nonexistent/initrd.img")),
        "{m:?}"
    );
    src.initrd = None;
    let m = missing(&src);
    assert!(
        m.iter()
            .any(|l| l.contains("the kernel modules /nonexistent/modules")),
        "{m:?}"
    );
    // With everything present, only missing host tools could be listed.
    let here = std::env::current_exe().unwrap();
    src.kernel = here.clone();
    src.initrd = Some(here);
    assert!(
        missing(&src).iter().all(|l| l.contains("Debian package")),
        "{:?}",
        missing(&src)
    );
}
