//! The inventory on fixture machines (tests/fixtures/sysfs): sysfs trees captured from
//! a real machine (capture.sh) or written by make-fixtures.sh, with their mountinfo,
//! swaps and captured LVM reports (capture-lvm.sh). No root, no disks: the device nodes
//! are absent, so every disk is reported unreadable, with the reason.

use std::path::{Path, PathBuf};

use understudy::disk::{self, Bytes, LvmSource, LvmStatus, Readability, Sources, Transport};

fn machine(name: &str) -> Sources {
    Sources::fixture(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/sysfs")
            .join(name),
    )
}

fn unreadable_because_missing(d: &disk::Disk) {
    match &d.state {
        Readability::IoError(e) => assert!(e.contains("No such file"), "{e}"),
        other => panic!("{}: {other:?}", d.name),
    }
}

#[test]
fn captured_virtio_machine() {
    let inv = disk::inventory(&machine("captured"));
    assert!(inv.problems.is_empty(), "{:?}", inv.problems);
    // loop and zram devices are virtual: not disks.
    assert_eq!(inv.disks.len(), 1, "{:?}", inv.disks);
    let d = &inv.disks[0];
    assert_eq!(d.name, "vda");
    assert_eq!(d.transport, Transport::Virtio);
    assert_eq!(d.size, Bytes(256 << 30));
    assert_eq!(
        (d.logical_sector, d.physical_sector),
        (Bytes(512), Bytes(4096))
    );
    assert_eq!(d.serial.as_deref(), Some("overlayblk"));
    assert_eq!(d.model, None);
    assert_eq!(d.wwn, None);
    assert!(!d.removable && !d.read_only);
    assert_eq!(d.devno.unwrap().to_string(), "254:0");
    assert_eq!(d.usage.mounts, [PathBuf::from("/")]);
    assert_eq!(d.busy_reasons(), ["vda is mounted at /"]);
    unreadable_because_missing(d);
    assert_eq!(d.identity.serial.as_deref(), Some("overlayblk"));
}

#[test]
fn nvme_namespace_below_a_multipath_subsystem() {
    let inv = disk::inventory(&machine("nvme"));
    assert_eq!(inv.disks.len(), 1);
    let d = &inv.disks[0];
    assert_eq!(d.name, "nvme0n1");
    assert_eq!(d.transport, Transport::Nvme);
    assert_eq!(d.model.as_deref(), Some("Samsung SSD 970 EVO Plus 500GB"));
    assert_eq!(d.serial.as_deref(), Some("S4EVNX0N123456P"));
    assert_eq!(d.wwn.as_deref(), Some("eui.0025385b71b2c3d4"));
    assert_eq!(d.size, Bytes(976_773_168 * 512));
    // The table cannot be read (no device node), so the kernel's partitions stand.
    let parts: Vec<(u32, Option<&str>, Bytes, Bytes)> = d
        .partitions
        .iter()
        .map(|p| (p.number, p.device.as_deref(), p.start, p.size))
        .collect();
    assert_eq!(
        parts,
        [
            (1, Some("nvme0n1p1"), Bytes(1 << 20), Bytes(512 << 20)),
            (
                2,
                Some("nvme0n1p2"),
                Bytes(1_050_624 * 512),
                Bytes(975_720_448 * 512)
            ),
        ]
    );
    assert_eq!(d.partitions[1].usage.mounts, [PathBuf::from("/")]);
    assert_eq!(d.partitions[0].type_guid, None);
    unreadable_because_missing(d);
}

#[test]
fn sata_disk_with_wwn_and_vpd_serial() {
    let inv = disk::inventory(&machine("sata"));
    let d = &inv.disks[0];
    assert_eq!(d.transport, Transport::Sata);
    assert_eq!(d.model.as_deref(), Some("ST1000DM010-2EP1"));
    assert_eq!(d.vendor.as_deref(), Some("ATA"));
    assert_eq!(d.serial.as_deref(), Some("Z9A1B2C3"));
    assert_eq!(d.wwn.as_deref(), Some("0x5000c500a1b2c3d4"));
    assert_eq!(
        (d.logical_sector, d.physical_sector),
        (Bytes(512), Bytes(4096))
    );
    assert!(d.partitions.is_empty());
    assert!(d.busy_reasons().is_empty());
}

#[test]
fn usb_stick_is_removable_without_a_wwn() {
    let inv = disk::inventory(&machine("usb"));
    let d = &inv.disks[0];
    assert_eq!(d.transport, Transport::Usb);
    assert!(d.removable);
    assert_eq!(d.wwn, None, "a t10 identifier is not a WWN");
    assert_eq!(d.serial.as_deref(), Some("4C530001234567891234"));
    assert_eq!(d.model.as_deref(), Some("Cruzer Blade"));
    assert_eq!(d.busy_reasons(), ["sdb1 is mounted at /media/usb"]);
}

#[test]
fn captured_lvm_reports_with_a_two_segment_lv() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sysfs/lvm-two-pvs/lvm");
    let LvmStatus::Found(lvm) = disk::lvm::load(&dir) else {
        panic!("reports did not load");
    };
    assert_eq!(lvm.pvs.len(), 2);
    assert_eq!(lvm.pvs[0].path, Path::new("/dev/sda3"));
    assert_eq!(lvm.pvs[0].vg.as_deref(), Some("vg0"));
    assert_eq!(lvm.pvs[0].dev_size, Bytes(8 << 20));
    assert_eq!(lvm.vgs.len(), 1);
    assert_eq!(lvm.vgs[0].extent_size, Bytes(1 << 20));
    assert_eq!((lvm.vgs[0].pv_count, lvm.vgs[0].lv_count), (2, 2));
    assert_eq!(lvm.lvs.len(), 2, "three rows, two LVs");
    let big = lvm.lvs.iter().find(|l| l.name == "big").unwrap();
    assert_eq!(big.size, Bytes(9 << 20));
    assert_eq!(big.devices.len(), 2);
    assert!(big.devices.contains(&PathBuf::from("/dev/sda3")));
    assert!(big.devices.contains(&PathBuf::from("/dev/sdb1")));
    assert_eq!(
        big.dm_path.as_deref(),
        Some(Path::new("/dev/mapper/vg0-big"))
    );
    assert!(!big.is_active(), "captured without device-mapper");
}

#[test]
fn nothing_readable_is_still_an_inventory() {
    let nowhere = Path::new("/nonexistent/understudy");
    let inv = disk::inventory(&Sources {
        sysfs: nowhere.join("sys"),
        dev: nowhere.join("dev"),
        mountinfo: nowhere.join("mountinfo"),
        swaps: nowhere.join("swaps"),
        lvm: LvmSource::Dir(nowhere.join("lvm")),
    });
    assert!(inv.disks.is_empty());
    assert_eq!(inv.problems.len(), 3, "{:?}", inv.problems);
    assert!(inv.problems[0].contains("listing /nonexistent/understudy/sys/block"));
    match &inv.lvm {
        LvmStatus::Failed(e) => assert!(e.contains("pvs.json"), "{e}"),
        other => panic!("{other:?}"),
    }
    // And it renders.
    assert!(inv.to_string().contains("no disks found"));
}

#[test]
fn json_names_states_and_units() {
    let inv = disk::inventory(&machine("sata"));
    let v: serde_json::Value = serde_json::to_value(&inv).unwrap();
    let d = &v["disks"][0];
    assert_eq!(d["transport"], "sata");
    assert_eq!(d["size"], 1_953_525_168u64 * 512);
    assert_eq!(d["devno"], "8:0");
    assert_eq!(d["state"]["state"], "io_error");
    assert_eq!(d["identity"]["wwn"], "0x5000c500a1b2c3d4");
    assert_eq!(v["lvm"]["status"], "skipped");
    // Round trip: what `disks --json` prints can be read back.
    let back: disk::Inventory = serde_json::from_value(v).unwrap();
    assert_eq!(back, inv);
}
