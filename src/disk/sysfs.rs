//! Block devices as sysfs describes them, read from any sysfs root (the real `/sys`
//! or a captured fixture tree): names, device numbers, sizes, sector sizes, model,
//! serial, WWN, transport, partitions and holders.
//!
//! Does not own: the bytes on the devices (`probe`), mounts (`mounts`).
//!
//! Where each attribute lives differs by driver, so each is looked up in order:
//! * serial: `block/X/serial` (virtio), `device/serial` (NVMe controller or
//!   subsystem), SCSI VPD page 0x80 `device/vpd_pg80` (SCSI, SATA through libata, USB);
//! * WWN: `block/X/wwid` (NVMe namespace), `device/wwid` (SCSI, SATA); only `naa.`,
//!   `eui.` and `uuid.` identifiers are world-wide names, `t10.` and `nvme.` ones are
//!   made up from vendor, model and serial;
//! * model and vendor: `device/model`, `device/vendor`.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};

use super::{Bytes, DevNo, Transport};

/// A `/sys/block` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysBlock {
    pub name: String,
    /// Where the `block/NAME` link points, relative to the sysfs root:
    /// `devices/pci0000:00/0000:00:02.0/virtio1/block/vda`.
    pub device_path: String,
    /// Loop, zram, dm, md and other software devices; not disks.
    pub is_virtual: bool,
    pub devno: Option<DevNo>,
    pub size: Option<Bytes>,
    pub logical_sector: Option<Bytes>,
    pub physical_sector: Option<Bytes>,
    pub removable: bool,
    pub read_only: bool,
    pub model: Option<String>,
    pub vendor: Option<String>,
    pub serial: Option<String>,
    pub wwn: Option<String>,
    pub transport: Transport,
    pub partitions: Vec<SysPartition>,
    pub holders: Vec<String>,
    /// `dm/name` for device-mapper devices.
    pub dm_name: Option<String>,
    /// Attributes present but not understood.
    pub problems: Vec<String>,
}

/// A partition the kernel knows (`/sys/block/vda/vda1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysPartition {
    pub name: String,
    pub number: u32,
    pub devno: Option<DevNo>,
    pub start: Bytes,
    pub size: Bytes,
    pub holders: Vec<String>,
}

/// Every entry of `ROOT/block`, sorted by name. Fails only when `ROOT/block` cannot
/// be listed; a single unreadable attribute becomes `None` or a problem.
pub fn block_devices(root: &Path) -> Result<Vec<SysBlock>> {
    let dir = root.join("block");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names.iter().map(|n| block(root, n)).collect())
}

fn block(root: &Path, name: &str) -> SysBlock {
    let link = root.join("block").join(name);
    let device_path = match std::fs::read_link(&link) {
        Ok(target) => normalize(&Path::new("block").join(target)),
        // Very old kernels made /sys/block entries directories.
        Err(_) => format!("block/{name}"),
    };
    let mut problems = Vec::new();
    let mut a = Attrs {
        dir: link.clone(),
        problems: &mut problems,
    };
    let removable = a.flag("removable");
    let read_only = a.flag("ro");
    let devno = a.parsed::<DevNo>("dev");
    let size = a.sectors("size");
    let logical_sector = a.parsed::<u64>("queue/logical_block_size").map(Bytes);
    let physical_sector = a.parsed::<u64>("queue/physical_block_size").map(Bytes);
    let model = a.text("device/model");
    let vendor = a.text("device/vendor");
    let serial = a
        .text("serial")
        .or_else(|| a.text("device/serial"))
        .or_else(|| a.raw("device/vpd_pg80").and_then(|b| vpd_pg80_serial(&b)));
    let wwn = a
        .text("wwid")
        .or_else(|| a.text("device/wwid"))
        .and_then(|w| wwn_from_wwid(&w));
    let dm_name = a.text("dm/name");
    let holders = list(&link.join("holders"));
    let partitions = partitions(&link, name);
    let is_virtual = is_virtual(&device_path);
    let transport = transport_from_path(&device_path);
    SysBlock {
        name: name.to_string(),
        device_path,
        is_virtual,
        devno,
        size,
        logical_sector,
        physical_sector,
        removable,
        read_only,
        model,
        vendor,
        serial,
        wwn,
        transport,
        partitions,
        holders,
        dm_name,
        problems,
    }
}

/// Subdirectories with a `partition` file are the kernel's partitions.
fn partitions(disk_dir: &Path, disk: &str) -> Vec<SysPartition> {
    let mut out: Vec<SysPartition> = list(disk_dir)
        .into_iter()
        .filter(|n| n.starts_with(disk))
        .filter_map(|n| {
            let dir = disk_dir.join(&n);
            let mut ignored = Vec::new();
            let mut a = Attrs {
                dir: dir.clone(),
                problems: &mut ignored,
            };
            let number = a.parsed::<u32>("partition")?;
            Some(SysPartition {
                number,
                devno: a.parsed::<DevNo>("dev"),
                start: a.sectors("start").unwrap_or_default(),
                size: a.sectors("size").unwrap_or_default(),
                holders: list(&dir.join("holders")),
                name: n,
            })
        })
        .collect();
    out.sort_by_key(|p| p.number);
    out
}

/// Names in a directory, sorted; empty when it is missing.
fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

struct Attrs<'a> {
    dir: PathBuf,
    problems: &'a mut Vec<String>,
}

impl Attrs<'_> {
    fn raw(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.dir.join(name)).ok()
    }

    /// Trimmed text, `None` when missing or empty.
    fn text(&self, name: &str) -> Option<String> {
        let b = self.raw(name)?;
        let s = String::from_utf8_lossy(&b);
        let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
        (!s.is_empty()).then(|| s.to_string())
    }

    fn parsed<T: std::str::FromStr>(&mut self, name: &str) -> Option<T> {
        let t = self.text(name)?;
        let v = t.parse().ok();
        if v.is_none() {
            self.problems.push(format!(
                "{}: cannot parse {t:?}",
                self.dir.join(name).display()
            ));
        }
        v
    }

    fn flag(&mut self, name: &str) -> bool {
        self.parsed::<u8>(name).is_some_and(|v| v != 0)
    }

    fn sectors(&mut self, name: &str) -> Option<Bytes> {
        let n = self.parsed::<u64>(name)?;
        let b = Bytes::from_512_sectors(n);
        if b.is_none() {
            self.problems.push(format!(
                "{}: {n} sectors overflow a byte count",
                self.dir.join(name).display()
            ));
        }
        b
    }
}

/// Resolve `.` and `..` without touching the filesystem (the path is inside a sysfs
/// root that may be a fixture). `..` above the start is dropped.
fn normalize(p: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                parts.pop();
            }
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    parts.join("/")
}

/// Software block devices live under `devices/virtual`. NVMe namespaces with native
/// multipath (Debian's kernels) do too, below `nvme-subsystem`, yet are real disks.
pub fn is_virtual(device_path: &str) -> bool {
    device_path.starts_with("devices/virtual/")
        && !device_path.starts_with("devices/virtual/nvme-subsystem/")
}

/// How the disk is attached, from the chain of devices above it in sysfs. USB comes
/// first because USB disks also sit below a SCSI host; ATA next for the same reason.
pub fn transport_from_path(device_path: &str) -> Transport {
    let parts: Vec<&str> = device_path.split('/').collect();
    let any = |f: &dyn Fn(&str) -> bool| parts.iter().any(|p| f(p));
    let numbered = |p: &str, prefix: &str| {
        p.strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
    };
    if any(&|p| numbered(p, "usb")) {
        Transport::Usb
    } else if any(&|p| numbered(p, "ata")) {
        Transport::Sata
    } else if any(&|p| p == "nvme" || p == "nvme-subsystem") {
        Transport::Nvme
    } else if any(&|p| numbered(p, "host")) && any(&|p| p.starts_with("target")) {
        Transport::Scsi
    } else if any(&|p| numbered(p, "virtio")) {
        Transport::Virtio
    } else if any(&|p| numbered(p, "mmc_host") || p.starts_with("mmc")) {
        Transport::Mmc
    } else {
        Transport::Unknown
    }
}

/// The unit serial number from SCSI VPD page 0x80: a 4-byte header (byte 1 is the
/// page code, bytes 2–3 the length) then ASCII, space padded.
pub fn vpd_pg80_serial(page: &[u8]) -> Option<String> {
    if page.len() < 4 || page[1] != 0x80 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([page[2], page[3]]));
    let end = 4usize.checked_add(len)?.min(page.len());
    let s = String::from_utf8_lossy(&page[4..end]);
    let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!s.is_empty()).then(|| s.to_string())
}

/// The world-wide name in a sysfs `wwid`, in the form lsblk prints: NAA as
/// `0x5000c500a1b2c3d4`, EUI-64 and UUIDs with their prefix. `t10.` and `nvme.`
/// identifiers are vendor/model/serial strings, not WWNs.
pub fn wwn_from_wwid(wwid: &str) -> Option<String> {
    let w = wwid.trim();
    if let Some(naa) = w.strip_prefix("naa.") {
        Some(format!("0x{}", naa.to_ascii_lowercase()))
    } else if w.starts_with("eui.") || w.starts_with("uuid.") {
        Some(w.to_ascii_lowercase())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_from_real_sysfs_paths() {
        let cases = [
            (
                "devices/pci0000:00/0000:00:02.0/virtio1/block/vda",
                Transport::Virtio,
            ),
            (
                "devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda",
                Transport::Sata,
            ),
            (
                "devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1",
                Transport::Nvme,
            ),
            (
                "devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1",
                Transport::Nvme,
            ),
            (
                "devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb",
                Transport::Usb,
            ),
            (
                "devices/pci0000:00/0000:00:05.0/virtio2/host2/target2:0:0/2:0:0:0/block/sda",
                Transport::Scsi,
            ),
            (
                "devices/pci0000:00/0000:00:1e.0/0000:01:00.0/host1/port-1:0/end_device-1:0/target1:0:0/1:0:0:0/block/sdc",
                Transport::Scsi,
            ),
            (
                "devices/platform/fe320000.mmc/mmc_host/mmc1/mmc1:0001/block/mmcblk1",
                Transport::Mmc,
            ),
            ("devices/virtual/block/loop0", Transport::Unknown),
        ];
        for (path, want) in cases {
            assert_eq!(transport_from_path(path), want, "{path}");
        }
    }

    #[test]
    fn virtual_devices_except_nvme_heads() {
        assert!(is_virtual("devices/virtual/block/dm-0"));
        assert!(is_virtual("devices/virtual/block/zram0"));
        assert!(!is_virtual(
            "devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1"
        ));
        assert!(!is_virtual(
            "devices/pci0000:00/0000:00:02.0/virtio1/block/vda"
        ));
    }

    #[test]
    fn vpd_page_0x80() {
        let mut page = vec![0x00, 0x80, 0x00, 0x14];
        page.extend_from_slice(b"        Z9A1B2C3    ");
        assert_eq!(vpd_pg80_serial(&page).as_deref(), Some("Z9A1B2C3"));
        // Length larger than the page: take what is there.
        assert_eq!(
            vpd_pg80_serial(&[0, 0x80, 0, 0xff, b'A', b'B']).as_deref(),
            Some("AB")
        );
        assert_eq!(vpd_pg80_serial(&[0, 0x83, 0, 2, b'A', b'B']), None);
        assert_eq!(vpd_pg80_serial(&[0, 0x80, 0, 4, b' ', b' ', 0, 0]), None);
        assert_eq!(vpd_pg80_serial(&[0, 0x80]), None);
    }

    #[test]
    fn wwn_forms() {
        assert_eq!(
            wwn_from_wwid("naa.5000C500A1B2C3D4\n").as_deref(),
            Some("0x5000c500a1b2c3d4")
        );
        assert_eq!(
            wwn_from_wwid("eui.0025385b71b2c3d4").as_deref(),
            Some("eui.0025385b71b2c3d4")
        );
        assert_eq!(wwn_from_wwid("t10.ATA     QEMU HARDDISK    QM00001"), None);
        assert_eq!(
            wwn_from_wwid("nvme.1b36-6465616462656566-51454d55-00000001"),
            None
        );
    }

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(
            normalize(Path::new("block/../devices/pci0000:00/virtio1/block/vda")),
            "devices/pci0000:00/virtio1/block/vda"
        );
        assert_eq!(normalize(Path::new("../../x")), "x");
    }
}
