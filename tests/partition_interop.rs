//! Partition tables against real clients. Plans written by `partition::write` on
//! sparse images of 64 MiB, 1 GiB and 10 GiB, with 512- and 4096-byte sectors, must
//! pass `sgdisk -v` and read back through `sfdisk --json` exactly as planned (start,
//! size, type, partition GUID, name, attributes, disk GUID, usable area). Tables that
//! sgdisk and sfdisk make must read back through `partition::read` as those tools
//! show them, GPT and MBR with logical partitions. Damaged tables come back as values.
//!
//! 4096-byte sectors need a block device that says so: a loop device made with
//! `losetup --sector-size 4096` (sfdisk and sgdisk take the sector size from the
//! device; neither has an option for image files).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use understudy::cmd::Cmd;
use understudy::layout::{
    Bytes, Disk, Filesystem, Layout, Lba, Lvm, MIB, Partition, PartitionPlan, SCHEMA, SectorSize,
    Sectors, Source, Table, plan,
};
use understudy::partition::{self, LEGACY_BIOS_BOOTABLE, PartitionTable};
use uuid::Uuid;

const GIB: u64 = 1 << 30;

struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("understudy-part-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// A sparse image file of `size` bytes.
    fn image(&self, name: &str, size: u64) -> PathBuf {
        let p = self.0.join(name);
        std::fs::File::create(&p).unwrap().set_len(size).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loop device over an image, detached when dropped.
struct Loop(PathBuf);

impl Loop {
    fn attach(image: &Path, sector: u64) -> Loop {
        let out = Cmd::new("losetup")
            .args(["--sector-size", &sector.to_string(), "--find", "--show"])
            .arg(image)
            .output()
            .expect("attaching a loop device");
        Loop(PathBuf::from(out.text().trim()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Cmd::new("losetup").arg("-d").arg(&self.0).run();
    }
}

fn guid(s: &str) -> Uuid {
    s.parse().unwrap()
}

/// A small disk like the secondary's, with a gap in the numbering (no 4), a
/// non-ASCII name and attribute bits, on 512-byte sectors.
fn template() -> Layout {
    let p = |number, start_mib: u64, size_mib: u64, ty: &str, name: &str, attributes| Partition {
        number,
        start_lba: Lba(start_mib * MIB / 512),
        size_lba: Sectors(size_mib * MIB / 512),
        type_guid: Some(guid(ty)),
        mbr_type: None,
        part_uuid: Some(Uuid::from_u128(0xfeed_0000 + u128::from(number))),
        name: name.into(),
        attributes,
        growable: number == 5,
    };
    Layout {
        schema: SCHEMA,
        table: Table::Gpt {
            disk_guid: guid("0ddba11c-0ffe-4eed-8bad-f00d00c0ffee"),
        },
        disk: Disk {
            size_bytes: Bytes(64 * MIB),
            logical_sector: SectorSize::B512,
            physical_sector: 512,
        },
        partitions: vec![
            p(
                1,
                1,
                1,
                "21686148-6449-6e6f-744e-656564454649",
                "bios boot",
                1 | LEGACY_BIOS_BOOTABLE,
            ),
            p(
                2,
                2,
                16,
                "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
                "EFI system",
                0,
            ),
            p(
                3,
                18,
                8,
                "0fc63daf-8483-4772-8e79-3d69d8477de4",
                "données-é",
                1 << 63,
            ),
            p(
                5,
                26,
                37,
                "e6d6d379-f507-44c2-a23c-238f2a3df928",
                "understudy lvm",
                1 << 48,
            ),
        ],
        filesystems: vec![fs(2, "vfat", 1), fs(3, "ext4", 2)],
        lvm: Lvm::default(),
        swap: vec![],
    }
}

fn fs(n: u32, t: &str, used_mib: u64) -> Filesystem {
    Filesystem {
        source: Source::Partition(n),
        fstype: t.into(),
        uuid: None,
        label: None,
        used_bytes: Bytes(used_mib * MIB),
        mountpoint: None,
        mount_options: vec![],
    }
}

/// What sfdisk says, reduced to what a plan fixes: disk GUID, sector size, first and
/// last usable LBA, and per partition number (start, size, type, uuid, name, attrs).
#[derive(Debug, PartialEq)]
struct Seen {
    id: String,
    sector: u64,
    first: u64,
    last: u64,
    parts: BTreeMap<u32, (u64, u64, String, String, String, u64)>,
}

/// sfdisk's attribute string as bits: `RequiredPartition LegacyBIOSBootable GUID:48,63`.
fn attr_bits(s: &str) -> u64 {
    s.split_whitespace()
        .map(|t| match t {
            "RequiredPartition" => 1,
            "NoBlockIOProtocol" => 2,
            "LegacyBIOSBootable" => 4,
            t => t
                .strip_prefix("GUID:")
                .unwrap_or_else(|| panic!("unknown attribute {t}"))
                .split(',')
                .map(|b| 1u64 << b.parse::<u32>().unwrap())
                .sum(),
        })
        .sum()
}

fn node_number(node: &str) -> u32 {
    let digits: String = node
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.chars().rev().collect::<String>().parse().unwrap()
}

fn sfdisk(dev: &Path) -> Value {
    let out = Cmd::new("sfdisk")
        .arg("--json")
        .arg(dev)
        .output()
        .expect("sfdisk --json");
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["partitiontable"].clone()
}

fn sfdisk_gpt(dev: &Path) -> Seen {
    let t = sfdisk(dev);
    assert_eq!(t["label"], "gpt", "{t}");
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    Seen {
        id: s(&t["id"]).to_lowercase(),
        sector: t["sectorsize"].as_u64().unwrap(),
        first: t["firstlba"].as_u64().unwrap(),
        last: t["lastlba"].as_u64().unwrap(),
        parts: t["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    node_number(p["node"].as_str().unwrap()),
                    (
                        p["start"].as_u64().unwrap(),
                        p["size"].as_u64().unwrap(),
                        s(&p["type"]).to_lowercase(),
                        s(&p["uuid"]).to_lowercase(),
                        s(&p["name"]),
                        attr_bits(p["attrs"].as_str().unwrap_or("")),
                    ),
                )
            })
            .collect(),
    }
}

fn planned(p: &PartitionPlan) -> Seen {
    let Table::Gpt { disk_guid } = p.table else {
        panic!("not GPT")
    };
    Seen {
        id: disk_guid.to_string(),
        sector: p.sector_size.bytes(),
        first: p.first_usable.0,
        last: p.last_usable.0,
        parts: p
            .partitions
            .iter()
            .map(|q| {
                let u = |g: Option<Uuid>| g.unwrap().to_string();
                (
                    q.number,
                    (
                        q.start_lba.0,
                        q.size_lba.0,
                        u(q.type_guid),
                        u(q.part_uuid),
                        q.name.clone(),
                        q.attributes,
                    ),
                )
            })
            .collect(),
    }
}

fn ours(t: &PartitionTable) -> Seen {
    let PartitionTable::Gpt(g) = t else {
        panic!("not GPT: {t:?}")
    };
    Seen {
        id: g.disk_guid.to_string(),
        sector: g.sector_size.bytes(),
        first: g.first_usable.0,
        last: g.last_usable.0,
        parts: g
            .partitions
            .iter()
            .map(|q| {
                let u = |g: Option<Uuid>| g.unwrap().to_string();
                (
                    q.number,
                    (
                        q.start_lba.0,
                        q.size_lba.0,
                        u(q.type_guid),
                        u(q.part_uuid),
                        q.name.clone(),
                        q.attributes,
                    ),
                )
            })
            .collect(),
    }
}

/// `sgdisk -v` on `dev`: clean, and about an existing GPT (sgdisk says "No problems
/// found" even when it found no GPT and made one up in memory).
fn assert_sgdisk_clean(dev: &Path) {
    let out = Cmd::new("sgdisk")
        .arg("-v")
        .arg(dev)
        .output()
        .expect("sgdisk -v");
    let text = out.text();
    assert!(
        text.contains("No problems found"),
        "{}: {text}",
        dev.display()
    );
    assert!(
        !text.contains("Creating new GPT"),
        "{}: sgdisk found no GPT: {text}",
        dev.display()
    );
}

#[test]
fn written_plans_pass_sgdisk_and_read_back_through_sfdisk_and_us() {
    let tmp = Scratch::new("write");
    let layout = template();
    let mut checked = 0;
    for size in [64 * MIB, GIB, 10 * GIB] {
        for sector in [SectorSize::B512, SectorSize::B4096] {
            let ctx = format!("{} on {sector}-byte sectors", Bytes(size));
            let p = plan(&layout, Bytes(size), sector).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            // The growable partition takes the new space; 5 stays 5.
            assert_eq!(p.partitions.last().unwrap().number, 5, "{ctx}");
            let img = tmp.image(&format!("{size}-{sector}.img"), size);
            let seen = if sector == SectorSize::B512 {
                partition::write(&img, &p).unwrap_or_else(|e| panic!("{ctx}: {e:#}"));
                assert_sgdisk_clean(&img);
                assert_eq!(
                    ours(&partition::read(&img).unwrap()),
                    planned(&p),
                    "{ctx}: our reader"
                );
                sfdisk_gpt(&img)
            } else {
                let lo = Loop::attach(&img, 4096);
                // Through the block device, so the writer's sector-size check runs.
                partition::write(&lo.0, &p).unwrap_or_else(|e| panic!("{ctx}: {e:#}"));
                assert_sgdisk_clean(&lo.0);
                assert_eq!(
                    ours(&partition::read(&lo.0).unwrap()),
                    planned(&p),
                    "{ctx}: our reader, device"
                );
                assert_eq!(
                    ours(&partition::read(&img).unwrap()),
                    planned(&p),
                    "{ctx}: our reader, image file"
                );
                sfdisk_gpt(&lo.0)
            };
            assert_eq!(seen, planned(&p), "{ctx}: sfdisk");
            // Only the table's sectors were written: the image stays sparse.
            let allocated = std::fs::metadata(&img).unwrap().blocks() * 512;
            assert!(allocated <= 2 * MIB, "{ctx}: {allocated} bytes allocated");
            checked += 1;
        }
    }
    assert_eq!(checked, 6);
}

#[test]
fn a_new_table_replaces_an_old_one_completely() {
    let tmp = Scratch::new("replace");
    let img = tmp.image("old.img", GIB);
    // An old table with more partitions and an MBR boot code area full of bytes.
    Cmd::new("sgdisk")
        .args([
            "-n",
            "1:0:+100M",
            "-n",
            "2:0:+100M",
            "-n",
            "7:0:+100M",
            "-n",
            "128:0:0",
        ])
        .arg(&img)
        .output()
        .unwrap();
    let p = plan(&template(), Bytes(GIB), SectorSize::B512).unwrap();
    partition::write(&img, &p).unwrap();
    assert_sgdisk_clean(&img);
    assert_eq!(sfdisk_gpt(&img), planned(&p));
}

#[test]
fn the_writer_refuses_what_does_not_fit_the_device() {
    let tmp = Scratch::new("refuse");
    let p = plan(&template(), Bytes(GIB), SectorSize::B512).unwrap();
    let small = tmp.image("small.img", GIB - MIB);
    let err = format!("{:#}", partition::write(&small, &p).unwrap_err());
    assert!(
        err.contains("has 1072693248 bytes but the plan is for a disk of 1073741824 bytes"),
        "{err}"
    );
    // A 512-byte plan on a device with 4096-byte sectors.
    let img = tmp.image("4k.img", GIB);
    let lo = Loop::attach(&img, 4096);
    let err = format!("{:#}", partition::write(&lo.0, &p).unwrap_err());
    assert!(
        err.contains("has 4096-byte sectors but the plan is for 512-byte sectors"),
        "{err}"
    );
    let mut mbr = p.clone();
    mbr.table = Table::Mbr { disk_id: 1 };
    assert!(format!("{:#}", partition::write(&img, &mbr).unwrap_err()).contains("only GPT"));
    // Nothing was written by the refusals.
    assert_eq!(partition::read(&img).unwrap(), PartitionTable::None);
}

#[test]
fn tables_made_by_sgdisk_read_back_as_sfdisk_shows_them() {
    let tmp = Scratch::new("sgdisk");
    for sector in [512u64, 4096] {
        let img = tmp.image(&format!("sg-{sector}.img"), GIB);
        let lo = Loop::attach(&img, sector);
        Cmd::new("sgdisk")
            .args([
                "-n", "1:0:+1M", "-t", "1:EF02", "-c", "1:bios", "-A", "1:set:2",
            ])
            .args([
                "-n",
                "3:0:+200M",
                "-t",
                "3:8300",
                "-c",
                "3:root fs",
                "-u",
                "3:11111111-2222-4333-8444-555555555555",
            ])
            .args([
                "-n", "9:0:0", "-t", "9:8E00", "-c", "9:pv", "-A", "9:set:0", "-A", "9:set:60",
            ])
            .args(["-U", "99999999-8888-4777-8666-555555555555"])
            .arg(&lo.0)
            .output()
            .unwrap();
        let seen = sfdisk_gpt(&lo.0);
        assert_eq!(
            seen.parts.keys().copied().collect::<Vec<_>>(),
            vec![1, 3, 9]
        );
        assert_eq!(ours(&partition::read(&lo.0).unwrap()), seen, "{sector}");
    }
}

#[test]
fn mbr_tables_with_logical_partitions_read_back_as_sfdisk_shows_them() {
    let tmp = Scratch::new("mbr");
    let img = tmp.image("mbr.img", 64 * MIB);
    Cmd::new("sfdisk")
        .arg("-q")
        .arg(&img)
        .stdin("label: dos\nlabel-id: 0x1234abcd\n,16M,83,*\n,,5\n,8M,82\n,8M,8e\n")
        .output()
        .unwrap();
    let t = sfdisk(&img);
    let PartitionTable::Mbr(m) = partition::read(&img).unwrap() else {
        panic!("not MBR")
    };
    assert_eq!(format!("0x{:08x}", m.disk_id), t["id"].as_str().unwrap());
    let theirs: Vec<_> = t["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                node_number(p["node"].as_str().unwrap()),
                p["start"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
                u8::from_str_radix(p["type"].as_str().unwrap(), 16).unwrap(),
                p["bootable"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    let ours: Vec<_> = m
        .partitions
        .iter()
        .map(|p| {
            (
                p.number,
                p.start_lba.0,
                p.size_lba.0,
                p.mbr_type.unwrap(),
                p.attributes & LEGACY_BIOS_BOOTABLE != 0,
            )
        })
        .collect();
    assert_eq!(ours, theirs);
    assert_eq!(
        ours.iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![1, 2, 5, 6]
    );
}

fn write_template(tmp: &Scratch, name: &str) -> (PathBuf, PartitionPlan) {
    let img = tmp.image(name, 64 * MIB);
    let p = plan(&template(), Bytes(64 * MIB), SectorSize::B512).unwrap();
    partition::write(&img, &p).unwrap();
    (img, p)
}

fn patch(img: &Path, offset: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn damaged_and_absent_tables_are_values_not_errors() {
    let tmp = Scratch::new("damage");

    // A damaged primary header: the backup is used and the damage is reported;
    // sgdisk agrees something is wrong.
    let (img, p) = write_template(&tmp, "primary.img");
    patch(&img, 512 + 40, &[0xff]);
    let t = partition::read(&img).unwrap();
    assert_eq!(ours(&t), planned(&p));
    let PartitionTable::Gpt(g) = &t else {
        unreachable!()
    };
    assert!(
        g.problems
            .iter()
            .any(|m| m.contains("primary GPT header is damaged")),
        "{:?}",
        g.problems
    );
    let sg = Cmd::new("sh")
        .args(["-c", "sgdisk -v \"$1\" 2>&1; true", "sh"])
        .arg(&img)
        .output()
        .unwrap()
        .text();
    assert!(sg.contains("invalid main GPT header"), "{sg}");

    // Both headers gone behind a protective MBR.
    patch(&img, 64 * MIB - 512, &[0; 8]);
    assert!(
        matches!(partition::read(&img).unwrap(), PartitionTable::Damaged { reason } if reason.contains("protective MBR"))
    );

    // A header that claims four billion entries, with a correct checksum: refused
    // without trying to read them.
    let (img, _) = write_template(&tmp, "huge.img");
    for lba in [1, 64 * MIB / 512 - 1] {
        let mut h = vec![0u8; 92];
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&img).unwrap();
        f.seek(SeekFrom::Start(lba * 512)).unwrap();
        f.read_exact(&mut h).unwrap();
        h[80..84].copy_from_slice(&u32::MAX.to_le_bytes());
        h[16..20].fill(0);
        let crc = crc32fast::hash(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        patch(&img, lba * 512, &h);
    }
    match partition::read(&img).unwrap() {
        PartitionTable::Damaged { reason } => {
            assert!(reason.contains("not a usable entry array"), "{reason}")
        }
        t => panic!("{t:?}"),
    }

    // The image grew after the table was written: the backup header is not at the end.
    let (img, p) = write_template(&tmp, "grown.img");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(128 * MIB)
        .unwrap();
    let t = partition::read(&img).unwrap();
    assert_eq!(ours(&t).parts, planned(&p).parts);
    let PartitionTable::Gpt(g) = &t else {
        unreachable!()
    };
    assert!(
        g.problems.iter().any(|m| m.contains("the disk grew")),
        "{:?}",
        g.problems
    );

    // Blank, tiny, and a FAT boot sector (55 AA, but not an MBR).
    assert_eq!(
        partition::read(&tmp.image("blank.img", 64 * MIB)).unwrap(),
        PartitionTable::None
    );
    assert_eq!(
        partition::read(&tmp.image("tiny.img", 700)).unwrap(),
        PartitionTable::None
    );
    let fat = tmp.image("fat.img", 64 * MIB);
    Cmd::new("mkfs.vfat").arg(&fat).output().expect("mkfs.vfat");
    assert_eq!(partition::read(&fat).unwrap(), PartitionTable::None);
}
