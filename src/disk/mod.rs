//! The disk inventory: which disks the machine has, what is on them (partition
//! tables, partitions, filesystems and other signatures, LVM), what is mounted or in
//! use, and which disk plays which role (primary, secondary, replacement, removable).
//!
//! Owns reading sysfs, libblkid probing, LVM reports, mountinfo and swaps, all behind
//! injectable roots ([`Sources`]) so tests run on fixture trees without root.
//! Does not own the primary's layout document, partition planning or writing
//! partition tables (that is `layout`), nor storing the recorded identities
//! (provision writes them; [`identify`] only compares).
//!
//! [`inventory`] never fails as a whole: a disk that cannot be read is reported with
//! the reason as a value ([`Readability`]), because that is what the recovery console
//! must show.

mod identify;
pub mod lvm;
pub mod mounts;
pub mod probe;
mod render;
pub mod sysfs;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use identify::{
    Candidate, DiskRole, DiskRoles, Identity, MatchedBy, PrimaryStatus, Recorded, Role,
    SecondaryStatus, identify,
};
pub use lvm::{Lv, Lvm, LvmStatus, Pv, Vg};
pub use mounts::{Mount, Swap};
pub use probe::{PartitionTable, Signature};

/// A size or offset in bytes.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Bytes(pub u64);

impl Bytes {
    /// `n` sectors of 512 bytes: the unit of sysfs `size`/`start` and of libblkid's
    /// partition offsets, whatever the device's logical sector size. `None` on overflow.
    pub fn from_512_sectors(n: u64) -> Option<Bytes> {
        n.checked_mul(512).map(Bytes)
    }

    /// Short human form with a binary unit: `512 B`, `1.0 MiB`, `256.0 GiB`.
    pub fn human(self) -> String {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        if self.0 < 1024 {
            return format!("{} B", self.0);
        }
        let mut v = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while v >= 1024.0 && unit + 1 < UNITS.len() {
            v /= 1024.0;
            unit += 1;
        }
        format!("{v:.1} {}", UNITS[unit])
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A block device number, `major:minor` as in sysfs `dev` files and mountinfo.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct DevNo {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for DevNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl FromStr for DevNo {
    type Err = String;
    fn from_str(s: &str) -> Result<DevNo, String> {
        let (a, b) = s
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("not a device number: {s:?}"))?;
        let num = |x: &str| {
            x.parse::<u32>()
                .map_err(|_| format!("not a device number: {s:?}"))
        };
        Ok(DevNo {
            major: num(a)?,
            minor: num(b)?,
        })
    }
}

impl From<DevNo> for String {
    fn from(d: DevNo) -> String {
        d.to_string()
    }
}

impl TryFrom<String> for DevNo {
    type Error = String;
    fn try_from(s: String) -> Result<DevNo, String> {
        s.parse()
    }
}

/// How a disk is attached, from its sysfs device path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Virtio,
    /// SATA, and parallel ATA too: both sit below an `ataN` port in sysfs.
    Sata,
    Nvme,
    Usb,
    /// SCSI, SAS, virtio-scsi and other SCSI hosts.
    Scsi,
    Mmc,
    Unknown,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Transport::Virtio => "virtio",
            Transport::Sata => "sata",
            Transport::Nvme => "nvme",
            Transport::Usb => "usb",
            Transport::Scsi => "scsi",
            Transport::Mmc => "mmc",
            Transport::Unknown => "unknown",
        };
        f.write_str(s)
    }
}

/// Whether a disk's contents could be read, and if not, why. Ordered from the most
/// to the least usable; the recovery console shows it for the primary disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "detail", rename_all = "snake_case")]
pub enum Readability {
    /// A partition table or a signature was found and every volume probed cleanly.
    Readable,
    /// A signature was found but its checksum is wrong (which one is said).
    BadSuperblock(String),
    /// libblkid found signatures that contradict each other and would not choose.
    Ambivalent(String),
    /// Readable, but no partition table and no signature: foreign or wiped data.
    NoPartitionTable,
    /// Readable, and the first MiB is all zeros: nothing was ever written here.
    Blank,
    /// The device has no medium (size 0: an empty card reader or drive).
    NoMedium,
    /// Opening or reading failed; the operating system's message.
    IoError(String),
}

impl Readability {
    pub fn is_readable(&self) -> bool {
        matches!(self, Readability::Readable)
    }
}

impl fmt::Display for Readability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Readability::Readable => f.write_str("readable"),
            Readability::BadSuperblock(d) => write!(f, "bad superblock: {d}"),
            Readability::Ambivalent(d) => write!(f, "conflicting signatures: {d}"),
            Readability::NoPartitionTable => f.write_str("no partition table and no signature"),
            Readability::Blank => f.write_str("blank (first MiB all zeros)"),
            Readability::NoMedium => f.write_str("no medium"),
            Readability::IoError(e) => write!(f, "I/O error: {e}"),
        }
    }
}

/// A device that holds another (a device-mapper volume over a partition, an md array).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Kernel name: `dm-0`, `md127`.
    pub device: String,
    /// Device-mapper name (`vg0-root`) when the holder is a dm device.
    pub dm_name: Option<String>,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.dm_name {
            Some(n) => write!(f, "{} ({n})", self.device),
            None => f.write_str(&self.device),
        }
    }
}

/// What uses one block device right now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Mount points whose source is this device (bind mounts included).
    pub mounts: Vec<PathBuf>,
    /// Active as swap.
    pub swap: bool,
    pub holders: Vec<Holder>,
}

impl Usage {
    pub fn is_busy(&self) -> bool {
        !self.mounts.is_empty() || self.swap || !self.holders.is_empty()
    }

    /// One phrase per use, naming `what`: "vda1 mounted at /boot"; holders for which
    /// `expected` says yes are left out.
    pub fn reasons(&self, what: &str, expected: &dyn Fn(&Holder) -> bool, out: &mut Vec<String>) {
        for m in &self.mounts {
            out.push(format!("{what} is mounted at {}", m.display()));
        }
        if self.swap {
            out.push(format!("{what} is in use as swap"));
        }
        for h in self.holders.iter().filter(|h| !expected(h)) {
            out.push(format!("{what} is held by {h}"));
        }
    }
}

/// One partition, merged from the partition table on the disk (libblkid) and the
/// kernel's view (sysfs). Either side may be missing: a loop device or an image file
/// has no partition nodes; an unreadable disk has no table but the kernel may still
/// list what it read at boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    pub number: u32,
    /// Kernel name (`vda1`) when the kernel has a node for it.
    pub device: Option<String>,
    pub path: Option<PathBuf>,
    pub start: Bytes,
    pub size: Bytes,
    /// GPT partition type GUID, or the MBR type byte as `0x83`.
    pub type_guid: Option<String>,
    /// GPT partition UUID, or the MBR form `DISKID-NN`.
    pub uuid: Option<String>,
    /// GPT partition name.
    pub name: Option<String>,
    /// An MBR extended partition (a container, probed for nothing).
    pub extended: bool,
    pub signature: Option<Signature>,
    /// Probing this partition's bytes failed: why.
    pub error: Option<String>,
    pub usage: Usage,
}

/// One whole disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Kernel name: `vda`, `sda`, `nvme0n1`.
    pub name: String,
    pub path: PathBuf,
    pub devno: Option<DevNo>,
    pub model: Option<String>,
    pub vendor: Option<String>,
    pub serial: Option<String>,
    pub wwn: Option<String>,
    pub size: Bytes,
    pub logical_sector: Bytes,
    pub physical_sector: Bytes,
    pub removable: bool,
    pub read_only: bool,
    pub transport: Transport,
    pub identity: Identity,
    pub state: Readability,
    pub table: Option<PartitionTable>,
    /// A signature on the whole disk (a filesystem or PV without a partition table).
    pub signature: Option<Signature>,
    pub partitions: Vec<Partition>,
    pub usage: Usage,
}

impl Disk {
    /// A disk known by its name and identity only, as the inventory reports an empty,
    /// idle one (`/dev/NAME`, no table, no partitions, nothing in use; removable when
    /// on USB): the base that plans and tests add partitions and usage to.
    pub fn known_as(
        name: &str,
        identity: Identity,
        transport: Transport,
        state: Readability,
    ) -> Disk {
        Disk {
            name: name.into(),
            path: PathBuf::from("/dev").join(name),
            devno: None,
            model: identity.model.clone(),
            vendor: None,
            serial: identity.serial.clone(),
            wwn: identity.wwn.clone(),
            size: identity.size,
            logical_sector: identity.logical_sector,
            physical_sector: identity.logical_sector,
            removable: transport == Transport::Usb,
            read_only: false,
            transport,
            identity,
            state,
            table: None,
            signature: None,
            partitions: Vec::new(),
            usage: Usage::default(),
        }
    }

    /// Every way this disk or one of its partitions is in use, one phrase each;
    /// empty when nothing on it is mounted, swapped on or held.
    pub fn busy_reasons(&self) -> Vec<String> {
        self.busy_reasons_but(&|_| false)
    }

    /// [`Disk::busy_reasons`], leaving out holders for which `expected` says yes (a
    /// copy-back expects the device-mapper volumes of the disk's own volume groups).
    pub fn busy_reasons_but(&self, expected: &dyn Fn(&Holder) -> bool) -> Vec<String> {
        let mut out = Vec::new();
        self.usage.reasons(&self.name, expected, &mut out);
        for p in &self.partitions {
            let what = p
                .device
                .clone()
                .unwrap_or_else(|| format!("{} partition {}", self.name, p.number));
            p.usage.reasons(&what, expected, &mut out);
        }
        out
    }
}

/// Everything known about the machine's disks at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub disks: Vec<Disk>,
    pub lvm: LvmStatus,
    /// Mounts of block devices (pseudo filesystems left out).
    pub mounts: Vec<Mount>,
    pub swaps: Vec<Swap>,
    /// What could not be looked at (a source missing, a line not understood); the
    /// inventory is complete apart from these.
    pub problems: Vec<String>,
}

impl Inventory {
    pub fn disk(&self, name: &str) -> Option<&Disk> {
        self.disks.iter().find(|d| d.name == name)
    }
}

impl fmt::Display for Inventory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        render::inventory(self, f)
    }
}

/// Where LVM reports come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LvmSource {
    /// Do not look at LVM.
    Skip,
    /// Run `lvm pvs|vgs|lvs --reportformat json` when lvm is installed.
    Run,
    /// Read captured `pvs.json`, `vgs.json` and `lvs.json` from this directory.
    Dir(PathBuf),
}

/// Where the inventory reads the machine from. [`Sources::system`] is the running
/// system; tests point every root at a fixture tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sources {
    /// sysfs root (`/sys`).
    pub sysfs: PathBuf,
    /// Device node directory (`/dev`): disks are opened as `dev/NAME`.
    pub dev: PathBuf,
    /// `/proc/self/mountinfo`.
    pub mountinfo: PathBuf,
    /// `/proc/swaps`.
    pub swaps: PathBuf,
    pub lvm: LvmSource,
}

impl Sources {
    pub fn system() -> Sources {
        Sources {
            sysfs: "/sys".into(),
            dev: "/dev".into(),
            mountinfo: "/proc/self/mountinfo".into(),
            swaps: "/proc/swaps".into(),
            lvm: LvmSource::Run,
        }
    }

    /// A captured machine under `root`: `root/sys`, `root/dev`, `root/mountinfo`,
    /// `root/swaps`, and `root/lvm/*.json` when that directory exists.
    pub fn fixture(root: &Path) -> Sources {
        let lvm = root.join("lvm");
        Sources {
            sysfs: root.join("sys"),
            dev: root.join("dev"),
            mountinfo: root.join("mountinfo"),
            swaps: root.join("swaps"),
            lvm: if lvm.is_dir() {
                LvmSource::Dir(lvm)
            } else {
                LvmSource::Skip
            },
        }
    }
}

/// Take the inventory. Never fails: what cannot be read is reported in the result.
pub fn inventory(src: &Sources) -> Inventory {
    let mut problems = Vec::new();
    let blocks = sysfs::block_devices(&src.sysfs).unwrap_or_else(|e| {
        problems.push(format!("{e:#}"));
        Vec::new()
    });
    let mounts = match std::fs::read_to_string(&src.mountinfo) {
        Ok(text) => {
            let (m, bad) = mounts::parse_mountinfo(&text);
            problems.extend(
                bad.into_iter()
                    .map(|b| format!("{}: {b}", src.mountinfo.display())),
            );
            m
        }
        Err(e) => {
            problems.push(format!("reading {}: {e}", src.mountinfo.display()));
            Vec::new()
        }
    };
    let swaps = match std::fs::read_to_string(&src.swaps) {
        Ok(text) => {
            let (s, bad) = mounts::parse_swaps(&text);
            problems.extend(
                bad.into_iter()
                    .map(|b| format!("{}: {b}", src.swaps.display())),
            );
            s
        }
        Err(e) => {
            problems.push(format!("reading {}: {e}", src.swaps.display()));
            Vec::new()
        }
    };

    let uses = Uses::new(&blocks, &mounts, &swaps, &src.dev);
    let disks = blocks
        .iter()
        .filter(|b| !b.is_virtual)
        .map(|b| disk(b, &src.dev, &uses, &mut problems))
        .collect();

    let mut lvm = match &src.lvm {
        LvmSource::Skip => LvmStatus::Skipped,
        LvmSource::Run => lvm::run(),
        LvmSource::Dir(d) => lvm::load(d),
    };
    if let LvmStatus::Found(l) = &mut lvm {
        for lv in &mut l.lvs {
            fill_lv(lv, &blocks, &uses, &src.dev);
        }
    }

    Inventory {
        disks,
        lvm,
        // Only block devices: the pseudo filesystems are noise for disk decisions.
        mounts: mounts.into_iter().filter(|m| m.devno.major != 0).collect(),
        swaps,
        problems,
    }
}

/// Mounts, swaps and holders, looked up by device.
struct Uses {
    mounts: BTreeMap<DevNo, Vec<PathBuf>>,
    /// Kernel names of the block devices that are active swap.
    swaps: BTreeSet<String>,
    /// dm names by kernel name, to describe holders.
    dm_names: BTreeMap<String, String>,
}

impl Uses {
    fn new(blocks: &[sysfs::SysBlock], mounts: &[Mount], swaps: &[Swap], dev: &Path) -> Uses {
        let mut by_dev: BTreeMap<DevNo, Vec<PathBuf>> = BTreeMap::new();
        for m in mounts {
            by_dev
                .entry(m.devno)
                .or_default()
                .push(m.mount_point.clone());
        }
        let swaps = swaps
            .iter()
            .filter_map(|s| mounts::swap_device(&s.path, dev))
            .collect();
        let dm_names = blocks
            .iter()
            .filter_map(|b| Some((b.name.clone(), b.dm_name.clone()?)))
            .collect();
        Uses {
            mounts: by_dev,
            swaps,
            dm_names,
        }
    }

    fn usage(&self, name: &str, devno: Option<DevNo>, holders: &[String]) -> Usage {
        Usage {
            mounts: devno
                .and_then(|d| self.mounts.get(&d).cloned())
                .unwrap_or_default(),
            swap: self.swaps.contains(name),
            holders: holders
                .iter()
                .map(|h| Holder {
                    device: h.clone(),
                    dm_name: self.dm_names.get(h).cloned(),
                })
                .collect(),
        }
    }
}

fn disk(b: &sysfs::SysBlock, dev: &Path, uses: &Uses, problems: &mut Vec<String>) -> Disk {
    let path = dev.join(&b.name);
    let size = b.size.unwrap_or_default();
    let logical_sector = b.logical_sector.unwrap_or(Bytes(512));
    let probed = if size == Bytes(0) {
        probe::DiskProbe::empty(Readability::NoMedium)
    } else {
        probe::disk(&path, logical_sector)
    };
    problems.extend(b.problems.iter().cloned());

    // Kernel partitions by number; the table on the disk wins for everything the
    // kernel does not know (types, UUIDs, names).
    let mut kernel: BTreeMap<u32, &sysfs::SysPartition> =
        b.partitions.iter().map(|p| (p.number, p)).collect();
    let mut partitions: Vec<Partition> = probed
        .partitions
        .iter()
        .map(|p| {
            let k = kernel.remove(&p.number);
            Partition {
                number: p.number,
                device: k.map(|k| k.name.clone()),
                path: k.map(|k| dev.join(&k.name)),
                start: p.start,
                size: p.size,
                type_guid: p.type_guid.clone(),
                uuid: p.uuid.clone(),
                name: p.name.clone(),
                extended: p.extended,
                signature: p.signature.clone(),
                error: p.error.clone(),
                usage: k
                    .map(|k| uses.usage(&k.name, k.devno, &k.holders))
                    .unwrap_or_default(),
            }
        })
        .collect();
    // What the kernel has but the disk's table does not (unreadable disk, or a table
    // changed since the kernel read it).
    partitions.extend(kernel.into_values().map(|k| Partition {
        number: k.number,
        device: Some(k.name.clone()),
        path: Some(dev.join(&k.name)),
        start: k.start,
        size: k.size,
        type_guid: None,
        uuid: None,
        name: None,
        extended: false,
        signature: None,
        error: None,
        usage: uses.usage(&k.name, k.devno, &k.holders),
    }));
    partitions.sort_by_key(|p| p.number);

    let identity = Identity {
        wwn: b.wwn.clone(),
        serial: b.serial.clone(),
        model: b.model.clone(),
        size,
        logical_sector,
    };
    Disk {
        name: b.name.clone(),
        path,
        devno: b.devno,
        model: b.model.clone(),
        vendor: b.vendor.clone(),
        serial: b.serial.clone(),
        wwn: b.wwn.clone(),
        size,
        logical_sector,
        physical_sector: b.physical_sector.unwrap_or(logical_sector),
        removable: b.removable,
        read_only: b.read_only,
        transport: b.transport,
        identity,
        state: probed.state,
        table: probed.table,
        signature: probed.signature,
        partitions,
        usage: uses.usage(&b.name, b.devno, &b.holders),
    }
}

/// Probe an LV's node (when active) and find its mounts through its dm device.
fn fill_lv(lv: &mut Lv, blocks: &[sysfs::SysBlock], uses: &Uses, dev: &Path) {
    let Some(dm_name) = lv.dm_name() else {
        return;
    };
    let Some(b) = blocks
        .iter()
        .find(|b| b.dm_name.as_deref() == Some(dm_name.as_str()))
    else {
        return;
    };
    lv.device = Some(b.name.clone());
    lv.usage = uses.usage(&b.name, b.devno, &b.holders);
    match probe::volume(&dev.join(&b.name)) {
        Ok(sig) => lv.signature = sig,
        Err(e) => lv.error = Some(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_human_and_sectors() {
        assert_eq!(Bytes(0).human(), "0 B");
        assert_eq!(Bytes(1023).human(), "1023 B");
        assert_eq!(Bytes(1 << 20).human(), "1.0 MiB");
        assert_eq!(Bytes(256 << 30).human(), "256.0 GiB");
        assert_eq!(Bytes::from_512_sectors(536_870_912), Some(Bytes(256 << 30)));
        assert_eq!(Bytes::from_512_sectors(u64::MAX), None);
    }

    #[test]
    fn devno_round_trips_as_text_and_json() {
        let d: DevNo = "254:16".parse().unwrap();
        assert_eq!(
            d,
            DevNo {
                major: 254,
                minor: 16
            }
        );
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"254:16\"");
        assert_eq!(serde_json::from_str::<DevNo>("\"8:0\"").unwrap().major, 8);
        assert!("254".parse::<DevNo>().is_err());
        assert!("a:1".parse::<DevNo>().is_err());
    }

    #[test]
    fn readability_serializes_with_its_reason() {
        let r = Readability::IoError("Input/output error (os error 5)".into());
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"state":"io_error","detail":"Input/output error (os error 5)"}"#
        );
        assert_eq!(
            serde_json::to_string(&Readability::Blank).unwrap(),
            r#"{"state":"blank"}"#
        );
    }
}
