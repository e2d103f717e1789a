//! Table-driven tests of `layout::plan`: each case is a captured layout, a target disk
//! and the exact plan (or refusal) expected. Sizes were worked out by hand from the
//! rules in docs/layout.md; every successful plan is also checked against the
//! invariants that hold for all plans (inside the usable area, no overlap, identities
//! kept, filesystems not below their used bytes plus headroom, LVs fitting their VG).

use understudy::layout::{
    Bytes, Change, Disk, Filesystem, Layout, Lba, Lv, Lvm, MIB, PartitionPlan, PlanError, Pv,
    SCHEMA, SectorSize, Sectors, Source, Swap, Table, Vg, min_filesystem_bytes, plan,
};
use uuid::Uuid;

const GIB: u64 = 1 << 30;
const BIOS_BOOT: &str = "21686148-6449-6e6f-744e-656564454649";
const LINUX_FS: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";
const LINUX_LVM: &str = "e6d6d379-f507-44c2-a23c-238f2a3df928";
const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
const SWAP: &str = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f";

fn uuid(s: &str) -> Uuid {
    s.parse().unwrap()
}

/// A GPT partition given in MiB on a disk with `sector`-byte sectors.
fn part(
    number: u32,
    start_mib: u64,
    size_mib: u64,
    ty: &str,
    name: &str,
    sector: u64,
) -> understudy::layout::Partition {
    understudy::layout::Partition {
        number,
        start_lba: Lba(start_mib * MIB / sector),
        size_lba: Sectors(size_mib * MIB / sector),
        type_guid: Some(uuid(ty)),
        mbr_type: None,
        part_uuid: Some(Uuid::from_u128(0x1000 + u128::from(number))),
        name: name.into(),
        attributes: 0,
        growable: false,
    }
}

fn fs(source: Source, fstype: &str, used_mib: u64, mountpoint: &str) -> Filesystem {
    Filesystem {
        source,
        fstype: fstype.into(),
        uuid: Some(format!("{:08x}-0000-4000-8000-000000000000", used_mib)),
        label: None,
        used_bytes: Bytes(used_mib * MIB),
        mountpoint: Some(mountpoint.into()),
        mount_options: vec!["defaults".into()],
    }
}

fn lv_src(name: &str) -> Source {
    Source::Lv {
        vg: "vg0".into(),
        name: name.into(),
    }
}

fn gpt(size: u64, sector: SectorSize) -> (Table, Disk) {
    (
        Table::Gpt {
            disk_guid: uuid("5e1f0000-0000-4000-8000-00000000d15c"),
        },
        Disk {
            size_bytes: Bytes(size),
            logical_sector: sector,
            physical_sector: 4096,
        },
    )
}

/// Debian installer, guided LVM on GPT (BIOS), 10 GiB: bios boot, /boot, one PV with
/// root (2 GiB used), swap and home (100 MiB used); 127 extents of the VG are free.
fn debian_lvm(sector: SectorSize) -> Layout {
    let s = sector.bytes();
    let (table, disk) = gpt(10 * GIB, sector);
    Layout {
        schema: SCHEMA,
        table,
        disk,
        partitions: vec![
            part(1, 1, 1, BIOS_BOOT, "bios", s),
            part(2, 2, 512, LINUX_FS, "boot", s),
            part(3, 514, 9725, LINUX_LVM, "lvm", s),
        ],
        filesystems: vec![
            fs(Source::Partition(2), "ext4", 100, "/boot"),
            fs(lv_src("root"), "ext4", 2048, "/"),
            fs(lv_src("home"), "ext4", 100, "/home"),
        ],
        lvm: Lvm {
            vgs: vec![Vg {
                name: "vg0".into(),
                uuid: "aaaaaa-bbbb-cccc-dddd-eeee-ffff-000000".into(),
                pvs: vec![Pv {
                    partition: 3,
                    uuid: "pv0".into(),
                    pe_start: Bytes(MIB),
                }],
                extent_size: Bytes(4 * MIB),
            }],
            lvs: vec![lv("root", 6144), lv("swap_1", 1024), lv("home", 2048)],
        },
        swap: vec![Swap {
            source: lv_src("swap_1"),
            uuid: None,
            label: None,
            size_bytes: Bytes(GIB),
        }],
    }
}

fn lv(name: &str, mib: u64) -> Lv {
    Lv {
        vg: "vg0".into(),
        name: name.into(),
        uuid: format!("lv-{name}"),
        size_bytes: Bytes(mib * MIB),
        growable: false,
    }
}

/// UEFI install without LVM, 20 GiB: ESP, root (4 GiB used), swap partition, and
/// 510 MiB left free at the end by the installer.
fn plain_uefi() -> Layout {
    let (table, disk) = gpt(20 * GIB, SectorSize::B512);
    Layout {
        schema: SCHEMA,
        table,
        disk,
        partitions: vec![
            part(1, 1, 512, ESP, "EFI System Partition", 512),
            part(2, 513, 18432, LINUX_FS, "root", 512),
            part(3, 18945, 1024, SWAP, "swap", 512),
        ],
        filesystems: vec![
            fs(Source::Partition(1), "vfat", 6, "/boot/efi"),
            fs(Source::Partition(2), "ext4", 4096, "/"),
        ],
        lvm: Lvm::default(),
        swap: vec![Swap {
            source: Source::Partition(3),
            uuid: None,
            label: None,
            size_bytes: Bytes(GIB),
        }],
    }
}

/// Root plus a data partition the vendor marked growable.
fn vendor_data(second_growable: bool) -> Layout {
    let (table, disk) = gpt(8 * GIB, SectorSize::B512);
    let mut data = part(3, 4097, 4094, LINUX_FS, "data", 512);
    data.growable = true;
    let mut root = part(2, 1, 4096, LINUX_FS, "root", 512);
    root.growable = second_growable;
    Layout {
        schema: SCHEMA,
        table,
        disk,
        partitions: vec![root, data],
        filesystems: vec![
            fs(Source::Partition(2), "ext4", 1024, "/"),
            fs(Source::Partition(3), "xfs", 512, "/srv"),
        ],
        lvm: Lvm::default(),
        swap: vec![],
    }
}

/// An old DOS-labelled disk: first partition at sector 63, not MiB aligned.
fn legacy_mbr() -> Layout {
    let mut p1 = part(1, 0, 0, LINUX_FS, "", 512);
    p1.type_guid = None;
    p1.part_uuid = None;
    p1.mbr_type = Some(0x83);
    p1.start_lba = Lba(63);
    p1.size_lba = Sectors(4 * GIB / 512 - 63);
    Layout {
        schema: SCHEMA,
        table: Table::Mbr {
            disk_id: 0x0009_f1a5,
        },
        disk: Disk {
            size_bytes: Bytes(4 * GIB),
            logical_sector: SectorSize::B512,
            physical_sector: 512,
        },
        partitions: vec![p1],
        filesystems: vec![fs(Source::Partition(1), "ext3", 700, "/")],
        lvm: Lvm::default(),
        swap: vec![],
    }
}

/// A filesystem on the whole disk, no partition table.
fn whole_disk() -> Layout {
    Layout {
        schema: SCHEMA,
        table: Table::None,
        disk: Disk {
            size_bytes: Bytes(2 * GIB),
            logical_sector: SectorSize::B512,
            physical_sector: 512,
        },
        partitions: vec![],
        filesystems: vec![fs(Source::Disk, "ext4", 900, "/")],
        lvm: Lvm::default(),
        swap: vec![],
    }
}

/// A VG over two PVs on the same disk: the planner cannot know which extents live
/// where, so neither PV shrinks.
fn two_pv_vg() -> Layout {
    let mut l = debian_lvm(SectorSize::B512);
    l.partitions[2] = part(3, 514, 4862, LINUX_LVM, "lvm-a", 512);
    l.partitions
        .push(part(4, 5376, 4863, LINUX_LVM, "lvm-b", 512));
    l.lvm.vgs[0].pvs.push(Pv {
        partition: 4,
        uuid: "pv1".into(),
        pe_start: Bytes(MIB),
    });
    l
}

/// What a case expects: the partitions (number, start MiB, size MiB, change) and LV
/// sizes in MiB, or a refusal.
enum Expect {
    Plan {
        parts: Vec<(u32, u64, u64, Change)>,
        lvs: Vec<(&'static str, u64)>,
    },
    /// Partitions given in sectors of the target (for unaligned starts).
    Sectors {
        parts: Vec<(u32, u64, u64, Change)>,
    },
    TooSmall {
        needed_mib: u64,
    },
    Invalid(&'static str),
    Unsupported(&'static str),
}

struct Case {
    name: &'static str,
    layout: Layout,
    target: u64,
    sector: SectorSize,
    expect: Expect,
}

fn cases() -> Vec<Case> {
    use Change::*;
    use Expect::*;
    let s512 = SectorSize::B512;
    let s4k = SectorSize::B4096;
    let debian_same = vec![(1, 1, 1, Same), (2, 2, 512, Same), (3, 514, 9725, Same)];
    let debian_lvs = vec![("root", 6144), ("swap_1", 1024), ("home", 2048)];
    vec![
        Case {
            name: "same size and sector size: identical",
            layout: debian_lvm(s512),
            target: 10 * GIB,
            sector: s512,
            expect: Plan {
                parts: debian_same.clone(),
                lvs: debian_lvs.clone(),
            },
        },
        Case {
            name: "same bytes on 4096-byte sectors: same offsets, LBAs divided by 8",
            layout: debian_lvm(s512),
            target: 10 * GIB,
            sector: s4k,
            expect: Plan {
                parts: debian_same.clone(),
                lvs: debian_lvs.clone(),
            },
        },
        Case {
            name: "4096-byte source onto the same disk: identical",
            layout: debian_lvm(s4k),
            target: 10 * GIB,
            sector: s4k,
            expect: Plan {
                parts: debian_same.clone(),
                lvs: debian_lvs.clone(),
            },
        },
        Case {
            name: "twice the size: the PV grows by 10 GiB and root takes the new extents",
            layout: debian_lvm(s512),
            target: 20 * GIB,
            sector: s512,
            expect: Plan {
                parts: vec![(1, 1, 1, Same), (2, 2, 512, Same), (3, 514, 19965, Grown)],
                lvs: vec![("root", 16384), ("swap_1", 1024), ("home", 2048)],
            },
        },
        Case {
            name: "twice the size on 4096-byte sectors: the same in bytes",
            layout: debian_lvm(s512),
            target: 20 * GIB,
            sector: s4k,
            expect: Plan {
                parts: vec![(1, 1, 1, Same), (2, 2, 512, Same), (3, 514, 19965, Grown)],
                lvs: vec![("root", 16384), ("swap_1", 1024), ("home", 2048)],
            },
        },
        Case {
            name: "smaller (8 GiB): the PV shrinks, VG free extents go first, then root",
            layout: debian_lvm(s512),
            target: 8 * GIB,
            sector: s512,
            expect: Plan {
                parts: vec![(1, 1, 1, Same), (2, 2, 512, Same), (3, 514, 7677, Shrunk)],
                lvs: vec![("root", 4604), ("swap_1", 1024), ("home", 2048)],
            },
        },
        Case {
            name: "much smaller (3 GiB): refused, naming the size that fits",
            layout: debian_lvm(s512),
            target: 3 * GIB,
            sector: s512,
            expect: TooSmall { needed_mib: 3698 },
        },
        Case {
            name: "exactly the size named by the refusal: fits, everything at its minimum",
            layout: debian_lvm(s512),
            target: 3698 * MIB,
            sector: s512,
            expect: Plan {
                parts: vec![(1, 1, 1, Same), (2, 2, 174, Shrunk), (3, 176, 3521, Shrunk)],
                lvs: vec![("root", 2320), ("swap_1", 1024), ("home", 176)],
            },
        },
        Case {
            name: "one MiB less than that: refused",
            layout: debian_lvm(s512),
            target: 3697 * MIB,
            sector: s512,
            expect: TooSmall { needed_mib: 3698 },
        },
        Case {
            name: "no LVM, larger: root (largest filesystem) grows, swap moves, free tail kept",
            layout: plain_uefi(),
            target: 40 * GIB,
            sector: s512,
            expect: Plan {
                parts: vec![
                    (1, 1, 512, Same),
                    (2, 513, 38912, Grown),
                    (3, 39425, 1024, Moved),
                ],
                lvs: vec![],
            },
        },
        Case {
            name: "no LVM, smaller: the free tail goes first, then root shrinks",
            layout: plain_uefi(),
            target: 16 * GIB,
            sector: s512,
            expect: Plan {
                parts: vec![
                    (1, 1, 512, Same),
                    (2, 513, 14846, Shrunk),
                    (3, 15359, 1024, Moved),
                ],
                lvs: vec![],
            },
        },
        Case {
            name: "smaller but the partitions still fit before the end: unchanged",
            layout: plain_uefi(),
            target: 19970 * MIB,
            sector: s512,
            expect: Plan {
                parts: vec![
                    (1, 1, 512, Same),
                    (2, 513, 18432, Same),
                    (3, 18945, 1024, Same),
                ],
                lvs: vec![],
            },
        },
        Case {
            name: "the partition the vendor marked growable grows, not the larger root",
            layout: vendor_data(false),
            target: 16 * GIB,
            sector: s512,
            expect: Plan {
                parts: vec![(2, 1, 4096, Same), (3, 4097, 12286, Grown)],
                lvs: vec![],
            },
        },
        Case {
            name: "two growable partitions split the extra space evenly",
            layout: vendor_data(true),
            target: 16 * GIB,
            sector: s512,
            expect: Plan {
                parts: vec![(2, 1, 8192, Grown), (3, 8193, 8190, Grown)],
                lvs: vec![],
            },
        },
        Case {
            name: "legacy MBR at sector 63 onto 4096-byte sectors: realigned to 1 MiB",
            layout: legacy_mbr(),
            target: 8 * GIB,
            sector: s4k,
            // Start 1 MiB = LBA 256; the size is the old one rounded up to a 4096-byte
            // sector, plus the whole MiBs left before the end: 4095, as the start
            // moved right by almost a MiB.
            expect: Sectors {
                parts: vec![(
                    1,
                    256,
                    (4 * GIB - 63 * 512).div_ceil(4096) + 4095 * 256,
                    Grown,
                )],
            },
        },
        Case {
            name: "a target that cannot hold even the GPT headers",
            layout: debian_lvm(s512),
            target: 8 * 1024,
            sector: s512,
            expect: TooSmall { needed_mib: 3698 },
        },
        Case {
            name: "whole-disk filesystem: fits when used plus headroom fits",
            layout: whole_disk(),
            target: 1055 * MIB,
            sector: s512,
            expect: Plan {
                parts: vec![],
                lvs: vec![],
            },
        },
        Case {
            name: "whole-disk filesystem: refused below used plus headroom",
            layout: whole_disk(),
            target: 1024 * MIB,
            sector: s512,
            expect: TooSmall { needed_mib: 1054 },
        },
        Case {
            name: "a VG over two PVs: the PVs keep their size, /boot cannot make up for it",
            layout: two_pv_vg(),
            target: 8 * GIB,
            sector: s512,
            expect: TooSmall { needed_mib: 9902 },
        },
        Case {
            name: "overlapping partitions are an invalid layout",
            layout: {
                let mut l = plain_uefi();
                l.partitions[1].start_lba = Lba(1000 * MIB / 512);
                l
            },
            target: 20 * GIB,
            sector: s512,
            expect: Invalid("partitions 2 and 3 overlap"),
        },
        Case {
            name: "a partition past the end of its disk is an invalid layout",
            layout: {
                let mut l = plain_uefi();
                l.disk.size_bytes = Bytes(19 * GIB);
                l
            },
            target: 20 * GIB,
            sector: s512,
            expect: Invalid("outside the usable area"),
        },
        Case {
            name: "MBR logical partitions are not supported by the planner",
            layout: {
                let mut l = legacy_mbr();
                l.partitions[0].size_lba = Sectors(1024 * MIB / 512);
                let mut ext = l.partitions[0].clone();
                ext.number = 2;
                ext.mbr_type = Some(0x05);
                ext.start_lba = Lba(2048 * MIB / 512);
                ext.size_lba = Sectors(1024 * MIB / 512);
                let mut logical = ext.clone();
                logical.number = 5;
                logical.mbr_type = Some(0x82);
                logical.start_lba = Lba(2049 * MIB / 512);
                logical.size_lba = Sectors(512 * MIB / 512);
                l.partitions.extend([ext, logical]);
                l
            },
            target: 8 * GIB,
            sector: s512,
            expect: Unsupported("logical partitions"),
        },
    ]
}

#[test]
fn planner_cases() {
    let cases = cases();
    assert!(cases.len() >= 12);
    for c in &cases {
        let got = plan(&c.layout, Bytes(c.target), c.sector);
        let ctx = format!("case `{}`: got {got:#?}", c.name);
        match (&c.expect, &got) {
            (Expect::Plan { parts, lvs }, Ok(p)) => {
                let mib = |lba: u64| lba * c.sector.bytes() / MIB;
                let got_parts: Vec<_> = p
                    .partitions
                    .iter()
                    .map(|q| (q.number, mib(q.start_lba.0), mib(q.size_lba.0), q.change))
                    .collect();
                assert_eq!(&got_parts, parts, "{ctx}");
                for q in &p.partitions {
                    assert_eq!(q.start_lba.0 * c.sector.bytes() % MIB, 0, "{ctx}");
                    assert_eq!(q.size_lba.0 * c.sector.bytes() % MIB, 0, "{ctx}");
                }
                let got_lvs: Vec<_> = p
                    .lvs
                    .iter()
                    .map(|l| (l.name.as_str(), l.size_bytes.0 / MIB))
                    .collect();
                assert_eq!(&got_lvs, lvs, "{ctx}");
                invariants(&c.layout, p, &ctx);
            }
            (Expect::Sectors { parts }, Ok(p)) => {
                let got_parts: Vec<_> = p
                    .partitions
                    .iter()
                    .map(|q| (q.number, q.start_lba.0, q.size_lba.0, q.change))
                    .collect();
                assert_eq!(&got_parts, parts, "{ctx}");
                invariants(&c.layout, p, &ctx);
            }
            (
                Expect::TooSmall { needed_mib },
                Err(PlanError::TargetTooSmall { needed, available }),
            ) => {
                assert_eq!(*available, Bytes(c.target), "{ctx}");
                assert_eq!(*needed, Bytes(needed_mib * MIB), "{ctx}");
                let msg = got.as_ref().unwrap_err().to_string();
                assert!(msg.contains(&format!("{} bytes", needed.0)), "{ctx}: {msg}");
            }
            (Expect::Invalid(what), Err(PlanError::InvalidLayout(m))) => {
                assert!(m.contains(what), "{ctx}");
            }
            (Expect::Unsupported(what), Err(PlanError::Unsupported(m))) => {
                assert!(m.contains(what), "{ctx}");
            }
            _ => panic!("{ctx}: not what was expected"),
        }
    }
}

/// What every plan must satisfy, whatever the case.
fn invariants(layout: &Layout, p: &PartitionPlan, ctx: &str) {
    let s = p.sector_size.bytes();
    understudy::layout::check_plan(p).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    assert_eq!(p.table, layout.table, "{ctx}");
    assert_eq!(p.partitions.len(), layout.partitions.len(), "{ctx}");
    for (q, orig) in p.partitions.iter().zip(&layout.partitions) {
        assert_eq!(
            (q.number, q.type_guid, q.part_uuid, &q.name),
            (orig.number, orig.type_guid, orig.part_uuid, &orig.name),
            "{ctx}"
        );
        if let Some(f) = layout
            .filesystems
            .iter()
            .find(|f| f.source == Source::Partition(q.number))
        {
            let orig_size = Bytes(orig.size_lba.0 * layout.disk.logical_sector.bytes());
            assert!(
                q.size_lba.0 * s >= min_filesystem_bytes(f.used_bytes, orig_size).0,
                "{ctx}"
            );
        }
    }
    for vg in &layout.lvm.vgs {
        let ext = vg.extent_size.0;
        let cap: u64 = vg
            .pvs
            .iter()
            .map(|pv| {
                let q = p
                    .partitions
                    .iter()
                    .find(|q| q.number == pv.partition)
                    .unwrap();
                (q.size_lba.0 * s - pv.pe_start.0) / ext
            })
            .sum();
        let used: u64 = p
            .lvs
            .iter()
            .filter(|l| l.vg == vg.name)
            .map(|l| l.size_bytes.0 / ext)
            .sum();
        assert!(
            used <= cap,
            "{ctx}: LVs need {used} extents, the VG has {cap}"
        );
        for l in &p.lvs {
            let f = layout.filesystems.iter().find(|f| {
                f.source
                    == Source::Lv {
                        vg: l.vg.clone(),
                        name: l.name.clone(),
                    }
            });
            if let Some(f) = f {
                assert!(
                    l.size_bytes >= min_filesystem_bytes(f.used_bytes, l.was_bytes),
                    "{ctx}"
                );
            }
        }
    }
}

#[test]
fn the_refusal_names_both_sizes_in_words() {
    let err = plan(
        &debian_lvm(SectorSize::B512),
        Bytes(3 * GIB),
        SectorSize::B512,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("has 3.0 GiB"), "{msg}");
    assert!(msg.contains("at least 3.6 GiB"), "{msg}");
    assert!(msg.contains("10% and 64.0 MiB of headroom"), "{msg}");
}

#[test]
fn the_layout_document_round_trips_through_json_and_refuses_other_schemas() {
    let l = debian_lvm(SectorSize::B4096);
    let text = l.to_json_pretty();
    assert_eq!(Layout::from_json(&text).unwrap(), l);
    let v2 = text.replacen("\"schema\": 1", "\"schema\": 2", 1);
    let err = Layout::from_json(&v2).unwrap_err();
    assert!(
        format!("{err:#}").contains("layout schema 2 is not supported"),
        "{err:#}"
    );
}

#[test]
fn the_documented_example_parses_and_plans() {
    // docs/layout.md carries an example document; keep it valid.
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/layout.md")).unwrap();
    let start = doc.find("```json\n").expect("an example in docs/layout.md") + "```json\n".len();
    let end = start + doc[start..].find("```").unwrap();
    let l = Layout::from_json(&doc[start..end]).unwrap();
    let p = plan(&l, l.disk.size_bytes, l.disk.logical_sector).unwrap();
    assert!(p.unchanged());
    let bigger = plan(&l, Bytes(l.disk.size_bytes.0 * 2), SectorSize::B4096).unwrap();
    assert!(!bigger.unchanged());
}
