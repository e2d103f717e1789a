//! The machine's disks: images (blank raw files, qcow2 overlays over a base so
//! every scenario starts from the same disks cheaply) and how each becomes a
//! QEMU block node and device (bus, serial, WWN, boot index, a `blkdebug`
//! layer that fails reads). It does not start QEMU (`machine.rs` does).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::run::Cmd;

/// The longest serial every bus here accepts: virtio-blk's `VIRTIO_BLK_ID_BYTES`
/// and the ATA IDENTIFY serial field are 20 bytes.
const MAX_SERIAL: usize = 20;

/// errno for "Input/output error".
const EIO: u32 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

/// How the guest sees the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskBus {
    /// `/dev/vdX`; identified by `serial` only (`/sys/block/vdX/serial`).
    VirtioBlk,
    /// `/dev/sdX` on a virtio-scsi controller; has `serial` and `wwn`.
    ScsiHd,
    /// `/dev/sdX` on the board's IDE controller; has `serial` and `wwn`.
    IdeHd,
    /// `/dev/nvmeXnY`; identified by `serial`.
    Nvme,
}

impl DiskBus {
    fn device(self) -> &'static str {
        match self {
            DiskBus::VirtioBlk => "virtio-blk-pci",
            DiskBus::ScsiHd => "scsi-hd",
            DiskBus::IdeHd => "ide-hd",
            DiskBus::Nvme => "nvme",
        }
    }

    fn has_wwn(self) -> bool {
        matches!(self, DiskBus::ScsiHd | DiskBus::IdeHd)
    }
}

/// One disk of a machine.
#[derive(Clone, Debug)]
pub struct DiskSpec {
    /// The QEMU device id (what [`super::Machine::remove_disk`] takes); the
    /// block node is named `<id>-drive`.
    pub id: String,
    pub image: PathBuf,
    pub format: ImageFormat,
    pub bus: DiskBus,
    /// What the guest reads as the disk's serial number (at most 20 bytes).
    pub serial: String,
    /// World wide name, for the buses that have one.
    pub wwn: Option<u64>,
    /// Firmware boot order: lower boots first; `None` is not bootable.
    pub bootindex: Option<u32>,
    /// Every read fails with EIO (a `blkdebug` layer), while writes work: a
    /// disk the firmware sees but cannot read.
    pub read_errors: bool,
    pub read_only: bool,
}

impl DiskSpec {
    /// A virtio-blk disk with the given serial, not bootable, no faults.
    pub fn virtio(
        id: &str,
        image: impl Into<PathBuf>,
        format: ImageFormat,
        serial: &str,
    ) -> DiskSpec {
        DiskSpec {
            id: id.to_string(),
            image: image.into(),
            format,
            bus: DiskBus::VirtioBlk,
            serial: serial.to_string(),
            wwn: None,
            bootindex: None,
            read_errors: false,
            read_only: false,
        }
    }

    pub fn node_name(&self) -> String {
        format!("{}-drive", self.id)
    }

    /// The `-blockdev` JSON: format over file, and when reads must fail, a
    /// raw node over `blkdebug` over that, because `blkdebug` arms its rule on
    /// the `read_aio` event that the raw driver raises on its child for every
    /// read (the format's own header reads at open are below it and succeed).
    pub fn blockdev(&self) -> Value {
        let file = json!({ "driver": "file", "filename": self.image.to_string_lossy() });
        let mut node = json!({ "driver": self.format.name(), "file": file });
        if self.read_errors {
            node = json!({
                "driver": "raw",
                "file": {
                    "driver": "blkdebug",
                    "inject-error": [{ "event": "read_aio", "errno": EIO, "iotype": "read" }],
                    "image": node,
                },
            });
        }
        node["node-name"] = json!(self.node_name());
        if self.read_only {
            node["read-only"] = json!(true);
        }
        node
    }

    /// The `-device` argument.
    pub fn device(&self) -> Result<String> {
        if self.serial.is_empty() || self.serial.len() > MAX_SERIAL {
            bail!(
                "disk {}: a serial of 1 to {MAX_SERIAL} bytes is needed (got {:?})",
                self.id,
                self.serial
            );
        }
        if !self
            .serial
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            bail!(
                "disk {}: serial {:?} must be letters, digits, '-', '_' or '.'",
                self.id,
                self.serial
            );
        }
        let mut arg = format!(
            "{},id={},drive={},serial={}",
            self.bus.device(),
            self.id,
            self.node_name(),
            self.serial
        );
        if self.bus == DiskBus::ScsiHd {
            arg.push_str(",bus=scsi0.0");
        }
        if let Some(wwn) = self.wwn {
            if !self.bus.has_wwn() {
                bail!(
                    "disk {}: {} has no wwn property (only scsi-hd and ide-hd do)",
                    self.id,
                    self.bus.device()
                );
            }
            arg.push_str(&format!(",wwn={wwn:#x}"));
        }
        if let Some(n) = self.bootindex {
            arg.push_str(&format!(",bootindex={n}"));
        }
        Ok(arg)
    }
}

/// Creates a sparse raw image of `size_mib` MiB at `path`.
pub fn create_blank(path: &Path, size_mib: u64) -> Result<()> {
    Cmd::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(path)
        .arg(format!("{size_mib}M"))
        .output()
        .with_context(|| format!("creating blank image {}", path.display()))?;
    Ok(())
}

/// Creates a qcow2 overlay at `overlay` whose reads fall through to the raw
/// image `base` and whose writes stay in the overlay, so `base` is never
/// changed and can be shared by every run.
pub fn create_overlay(base: &Path, overlay: &Path) -> Result<()> {
    // qcow2 stores the backing path as given, relative to the overlay's own
    // directory: an absolute path keeps it valid wherever the overlay is.
    let base = base
        .canonicalize()
        .with_context(|| format!("finding base image {}", base.display()))?;
    if overlay.exists() {
        std::fs::remove_file(overlay)
            .with_context(|| format!("removing old overlay {}", overlay.display()))?;
    }
    Cmd::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(overlay)
        .output()
        .with_context(|| {
            format!(
                "creating overlay {} over {}",
                overlay.display(),
                base.display()
            )
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_virtio_disk() {
        let mut d = DiskSpec::virtio("primary", "/i/p.img", ImageFormat::Raw, "US-PRIMARY-1");
        d.bootindex = Some(1);
        assert_eq!(
            d.device().unwrap(),
            "virtio-blk-pci,id=primary,drive=primary-drive,serial=US-PRIMARY-1,bootindex=1"
        );
        assert_eq!(
            d.blockdev(),
            json!({"driver": "raw", "node-name": "primary-drive",
                   "file": {"driver": "file", "filename": "/i/p.img"}})
        );
    }

    #[test]
    fn read_errors_sit_under_a_raw_node_and_over_the_format() {
        let mut d = DiskSpec::virtio("bad", "/i/b.qcow2", ImageFormat::Qcow2, "BAD");
        d.read_errors = true;
        let b = d.blockdev();
        assert_eq!(b["driver"], "raw");
        assert_eq!(b["node-name"], "bad-drive");
        assert_eq!(b["file"]["driver"], "blkdebug");
        assert_eq!(b["file"]["inject-error"][0]["errno"], 5);
        assert_eq!(b["file"]["image"]["driver"], "qcow2");
        assert_eq!(b["file"]["image"]["file"]["filename"], "/i/b.qcow2");
    }

    #[test]
    fn wwn_only_where_the_device_has_one() {
        let mut d = DiskSpec::virtio("s", "/i/s.img", ImageFormat::Raw, "S1");
        d.wwn = Some(0x5000_c500_1234_5678);
        assert!(d.device().unwrap_err().to_string().contains("has no wwn"));
        d.bus = DiskBus::ScsiHd;
        assert_eq!(
            d.device().unwrap(),
            "scsi-hd,id=s,drive=s-drive,serial=S1,bus=scsi0.0,wwn=0x5000c50012345678"
        );
    }

    #[test]
    fn serials_qemu_would_mangle_are_refused() {
        let d = DiskSpec::virtio("s", "/i/s.img", ImageFormat::Raw, "A-SERIAL-LONGER-THAN-20");
        assert!(d.device().is_err());
        let d = DiskSpec::virtio("s", "/i/s.img", ImageFormat::Raw, "a,b");
        assert!(d.device().is_err());
    }
}
