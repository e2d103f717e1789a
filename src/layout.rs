//! The primary disk's layout as a versioned JSON document ([`Layout`], schema 1, described
//! in `docs/layout.md`), and the pure planner that fits it onto a target disk
//! ([`plan`] → [`PartitionPlan`]).
//!
//! Owns: the layout schema, the units of disk geometry ([`Bytes`], [`Lba`], [`Sectors`],
//! [`SectorSize`]), the GPT/MBR reserved areas, 1 MiB alignment, the headroom rule for
//! shrinking, and which partition and logical volume grow.
//! Also owns [`capture`]: turning the disk inventory, fstab and measured used bytes
//! into a layout (pure), with [`capture_live`] as its thin executor.
//! Does not own: reading disks, LVM and mounts (the disk inventory), writing a
//! partition table (`partition`), creating LVM or filesystems (the restore engine).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The layout schema this build writes and reads.
pub const SCHEMA: u32 = 1;

/// One mebibyte: the alignment of every partition start the planner chooses.
pub const MIB: u64 = 1 << 20;

/// Headroom kept above a filesystem's used bytes when shrinking: this share of the
/// used bytes (10%)...
pub const HEADROOM_PERCENT: u64 = 10;
/// ...plus this fixed amount per filesystem (64 MiB), for journals, metadata and the
/// writes of the first days on the restored disk.
pub const HEADROOM_FIXED: Bytes = Bytes(64 * MIB);

/// Entries in a GPT partition array as every tool writes it (128 × 128 bytes).
pub const GPT_ENTRIES: u32 = 128;
const GPT_ENTRY_BYTES: u64 = 128;

/// A size or offset in bytes. (Not `tree::Bytes`, which is raw byte content.)
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Bytes(pub u64);

/// A logical block address: a sector's index on the disk, in units of the disk's
/// logical sector size.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Lba(pub u64);

/// A number of logical sectors.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Sectors(pub u64);

/// A logical sector size: 512 or 4096 bytes (what GPT and our writer support).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub enum SectorSize {
    B512,
    B4096,
}

impl SectorSize {
    pub fn bytes(self) -> u64 {
        match self {
            SectorSize::B512 => 512,
            SectorSize::B4096 => 4096,
        }
    }
}

impl TryFrom<u32> for SectorSize {
    type Error = String;
    fn try_from(v: u32) -> Result<SectorSize, String> {
        match v {
            512 => Ok(SectorSize::B512),
            4096 => Ok(SectorSize::B4096),
            other => Err(format!(
                "unsupported logical sector size {other} (512 or 4096)"
            )),
        }
    }
}

impl TryFrom<u64> for SectorSize {
    type Error = String;
    fn try_from(v: u64) -> Result<SectorSize, String> {
        u32::try_from(v)
            .map_err(|_| format!("unsupported logical sector size {v} (512 or 4096)"))
            .and_then(SectorSize::try_from)
    }
}

impl From<SectorSize> for u32 {
    fn from(s: SectorSize) -> u32 {
        match s {
            SectorSize::B512 => 512,
            SectorSize::B4096 => 4096,
        }
    }
}

impl fmt::Display for SectorSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.bytes())
    }
}

impl Bytes {
    /// Whole sectors of `sector` in these bytes, or `None` if they are not a multiple.
    pub fn to_sectors(self, sector: SectorSize) -> Option<Sectors> {
        (self.0 % sector.bytes() == 0).then(|| Sectors(self.0 / sector.bytes()))
    }
}

impl Lba {
    /// Byte offset of this sector; `None` on overflow.
    pub fn bytes(self, sector: SectorSize) -> Option<Bytes> {
        self.0.checked_mul(sector.bytes()).map(Bytes)
    }
}

impl Sectors {
    /// Length in bytes; `None` on overflow.
    pub fn bytes(self, sector: SectorSize) -> Option<Bytes> {
        self.0.checked_mul(sector.bytes()).map(Bytes)
    }
}

impl fmt::Display for Bytes {
    /// Binary units with one decimal (`1.5 GiB`); exact below 1 KiB.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut v = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while v >= 1024.0 && unit + 1 < UNITS.len() {
            v /= 1024.0;
            unit += 1;
        }
        write!(f, "{v:.1} {}", UNITS[unit])
    }
}

/// A disk's layout, as captured from the primary and stored in every image manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Always [`SCHEMA`]; a reader refuses other values.
    pub schema: u32,
    pub table: Table,
    pub disk: Disk,
    #[serde(default)]
    pub partitions: Vec<Partition>,
    #[serde(default)]
    pub filesystems: Vec<Filesystem>,
    #[serde(default)]
    pub lvm: Lvm,
    #[serde(default)]
    pub swap: Vec<Swap>,
}

/// The partition table kind, with the disk's identity in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Table {
    Gpt {
        disk_guid: Uuid,
    },
    /// `disk_id` is the 32-bit MBR disk signature (bytes 440..444, little-endian).
    Mbr {
        disk_id: u32,
    },
    /// No partition table: a filesystem or PV on the whole disk.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub size_bytes: Bytes,
    pub logical_sector: SectorSize,
    /// Physical sector size in bytes (informational: alignment is 1 MiB anyway).
    pub physical_sector: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// 1-based; GPT: the entry's index + 1; MBR: 1–4 primary, 5+ logical.
    pub number: u32,
    pub start_lba: Lba,
    pub size_lba: Sectors,
    /// GPT partition type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_guid: Option<Uuid>,
    /// MBR partition type byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mbr_type: Option<u8>,
    /// GPT unique partition GUID (PARTUUID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_uuid: Option<Uuid>,
    /// GPT partition name (PARTLABEL); at most 36 UTF-16 code units.
    #[serde(default)]
    pub name: String,
    /// GPT attribute bits (bit 0 required, bit 2 legacy BIOS bootable, 48–63 type-specific).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attributes: u64,
    /// Grow this partition when the target disk is larger (see [`plan`] for the default).
    #[serde(default)]
    pub growable: bool,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Where a filesystem or swap area lives.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A partition of this disk, by number.
    Partition(u32),
    /// A logical volume of a VG on this disk.
    Lv { vg: String, name: String },
    /// The whole disk (no partition table).
    Disk,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Partition(n) => write!(f, "partition {n}"),
            Source::Lv { vg, name } => write!(f, "LV {vg}/{name}"),
            Source::Disk => write!(f, "the whole disk"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filesystem {
    pub source: Source,
    /// As blkid names it: `ext4`, `xfs`, `vfat`, `btrfs`…
    pub fstype: String,
    /// As blkid prints it (`ABCD-1234` for vfat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Bytes in use (statvfs: (blocks − free) × block size), the basis for shrinking.
    pub used_bytes: Bytes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mountpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_options: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lvm {
    #[serde(default)]
    pub vgs: Vec<Vg>,
    #[serde(default)]
    pub lvs: Vec<Lv>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vg {
    pub name: String,
    /// LVM's own UUID format (`xxxxxx-xxxx-…`, 38 characters).
    pub uuid: String,
    /// The VG's PVs on this disk. PVs elsewhere (the snapshot COW PV on the secondary
    /// disk) are not listed; the LVs below must fit on these.
    pub pvs: Vec<Pv>,
    pub extent_size: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pv {
    pub partition: u32,
    pub uuid: String,
    /// Offset of the first extent in the PV (LVM2's default: 1 MiB).
    #[serde(default = "default_pe_start")]
    pub pe_start: Bytes,
}

fn default_pe_start() -> Bytes {
    Bytes(MIB)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lv {
    pub vg: String,
    pub name: String,
    pub uuid: String,
    pub size_bytes: Bytes,
    /// Grow this LV when its VG grows (see [`plan`] for the default).
    #[serde(default)]
    pub growable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Swap {
    pub source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub size_bytes: Bytes,
}

impl Layout {
    /// Parse a layout document, refusing other schema versions.
    pub fn from_json(text: &str) -> Result<Layout> {
        #[derive(Deserialize)]
        struct Version {
            schema: u32,
        }
        let v: Version =
            serde_json::from_str(text).context("reading the layout's schema version")?;
        if v.schema != SCHEMA {
            anyhow::bail!(
                "layout schema {} is not supported by this build (it reads schema {SCHEMA})",
                v.schema
            );
        }
        serde_json::from_str(text).context("parsing the layout document")
    }

    /// Read a layout document from a file.
    pub fn load(path: &Path) -> Result<Layout> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading layout {}", path.display()))?;
        Layout::from_json(&text).with_context(|| format!("in layout {}", path.display()))
    }

    pub fn to_json_pretty(&self) -> String {
        // A layout is plain data: serializing it cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

impl fmt::Display for Layout {
    /// A summary for people: the table, one line per partition, filesystem, LV and swap.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.disk.logical_sector;
        let table = match self.table {
            Table::Gpt { disk_guid } => format!("GPT, disk GUID {disk_guid}"),
            Table::Mbr { disk_id } => format!("MBR, disk id 0x{disk_id:08x}"),
            Table::None => "no partition table".into(),
        };
        writeln!(
            f,
            "{table}; {} ({} bytes, {s}-byte sectors)",
            self.disk.size_bytes, self.disk.size_bytes.0
        )?;
        for p in &self.partitions {
            let size = p.size_lba.bytes(s).unwrap_or_default();
            let kind = match (p.type_guid, p.mbr_type) {
                (Some(g), _) => g.to_string(),
                (None, Some(t)) => format!("0x{t:02x}"),
                (None, None) => String::new(),
            };
            let grow = if p.growable { "  growable" } else { "" };
            writeln!(
                f,
                "partition {}: start {} size {} ({size}) type {kind} {:?}{grow}",
                p.number, p.start_lba.0, p.size_lba.0, p.name
            )?;
        }
        for fs in &self.filesystems {
            writeln!(
                f,
                "{} on {}: uuid {} label {} used {} mounted at {}",
                fs.fstype,
                fs.source,
                fs.uuid.as_deref().unwrap_or("-"),
                fs.label.as_deref().unwrap_or("-"),
                fs.used_bytes,
                fs.mountpoint.as_deref().unwrap_or("-")
            )?;
        }
        for vg in &self.lvm.vgs {
            let pvs: Vec<String> = vg.pvs.iter().map(|p| p.partition.to_string()).collect();
            writeln!(
                f,
                "VG {} on partition {} (extents of {})",
                vg.name,
                pvs.join(", "),
                vg.extent_size
            )?;
        }
        for lv in &self.lvm.lvs {
            let grow = if lv.growable { "  growable" } else { "" };
            writeln!(f, "LV {}/{}: {}{grow}", lv.vg, lv.name, lv.size_bytes)?;
        }
        for sw in &self.swap {
            writeln!(f, "swap on {}: {}", sw.source, sw.size_bytes)?;
        }
        Ok(())
    }
}

/// Why a layout cannot be planned onto a target. Callers branch on `TargetTooSmall`
/// (the console tells the technician to fetch a bigger disk).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "the target disk is too small: it has {available} ({} bytes) but this layout needs at \
         least {needed} ({} bytes): the used data of each filesystem plus {HEADROOM_PERCENT}% and \
         {HEADROOM_FIXED} of headroom, and the partitions that cannot shrink",
        available.0,
        needed.0
    )]
    TargetTooSmall { needed: Bytes, available: Bytes },
    #[error("the layout is not valid: {0}")]
    InvalidLayout(String),
    #[error("not supported by the planner: {0}")]
    Unsupported(String),
}

/// The result of [`plan`]: a partition table to write and the LV sizes to create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionPlan {
    pub table: Table,
    pub sector_size: SectorSize,
    pub disk_bytes: Bytes,
    /// First and last sector partitions may use (GPT: after and before the partition
    /// arrays; MBR: sector 1 and the last addressable sector).
    pub first_usable: Lba,
    pub last_usable: Lba,
    pub partitions: Vec<PlannedPartition>,
    pub lvs: Vec<PlannedLv>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedPartition {
    pub number: u32,
    pub start_lba: Lba,
    pub size_lba: Sectors,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_guid: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mbr_type: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_uuid: Option<Uuid>,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attributes: u64,
    /// Size on the source disk.
    pub was_bytes: Bytes,
    pub change: Change,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedLv {
    pub vg: String,
    pub name: String,
    pub size_bytes: Bytes,
    pub was_bytes: Bytes,
}

/// What happened to a partition, from the technician's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Same byte offset and size as on the source.
    Same,
    /// Same size, other offset.
    Moved,
    Grown,
    Shrunk,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Change::Same => "same",
            Change::Moved => "moved",
            Change::Grown => "grown",
            Change::Shrunk => "shrunk",
        })
    }
}

/// Where partitions may live on a disk of a given table kind, size and sector size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub sector: SectorSize,
    pub total: Sectors,
    pub first_usable: Lba,
    pub last_usable: Lba,
}

impl Geometry {
    /// GPT keeps LBA 0 (protective MBR), LBA 1 (header) and the 16 KiB entry array at
    /// the start, and the array plus the backup header at the end: 34 and 33 sectors of
    /// 512 bytes, 6 and 5 sectors of 4096 bytes. MBR keeps LBA 0 and cannot address
    /// beyond 2^32 sectors. `None` if the disk cannot hold the table at all.
    pub fn new(table: &Table, size: Bytes, sector: SectorSize) -> Option<Geometry> {
        let total = size.0 / sector.bytes();
        let (first, last) = match table {
            Table::Gpt { .. } => {
                let array = (u64::from(GPT_ENTRIES) * GPT_ENTRY_BYTES).div_ceil(sector.bytes());
                let first = 2 + array;
                let last = total.checked_sub(2 + array)?;
                (first, last)
            }
            Table::Mbr { .. } => (1, total.min(1 << 32).checked_sub(1)?),
            Table::None => (0, total.checked_sub(1)?),
        };
        (first <= last).then_some(Geometry {
            sector,
            total: Sectors(total),
            first_usable: Lba(first),
            last_usable: Lba(last),
        })
    }

    fn first_byte(&self) -> u64 {
        self.first_usable.0 * self.sector.bytes()
    }

    /// One past the last usable byte.
    fn end_byte(&self) -> u64 {
        (self.last_usable.0 + 1) * self.sector.bytes()
    }
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    v.checked_next_multiple_of(a)
}

fn align_down(v: u64, a: u64) -> u64 {
    v - v % a
}

/// The smallest size a filesystem holding `used` bytes may be given: used plus 10% plus
/// 64 MiB, rounded up to a MiB. Never more than `current` (a full filesystem keeps its size).
pub fn min_filesystem_bytes(used: Bytes, current: Bytes) -> Bytes {
    let want = used
        .0
        .saturating_add(used.0 / 100 * HEADROOM_PERCENT)
        .saturating_add(HEADROOM_FIXED.0);
    Bytes(align_up(want, MIB).unwrap_or(u64::MAX).min(current.0))
}

/// One partition while planning; all sizes in bytes.
#[derive(Clone, Debug)]
struct Slot {
    index: usize,
    orig_start: u64,
    orig_size: u64,
    size: u64,
    min: u64,
    growable: bool,
}

/// Fit `layout` onto a disk of `target` bytes with `sector`-byte logical sectors.
///
/// * Same size and sector size: the plan is the layout, sector for sector.
/// * Larger: the growable partitions take the extra space in whole MiB (split evenly),
///   and in a grown LVM PV the growable LVs take the new extents. Free space at the end
///   of the source disk stays free. Growable by default: the partition marked
///   `growable`, else the largest LVM PV, else the largest partition holding a
///   filesystem; the LV marked `growable`, else the largest LV holding a filesystem.
/// * Smaller: free space at the end goes first, then growable partitions shrink, then
///   the others with the most slack; none below its used bytes plus headroom
///   ([`min_filesystem_bytes`]). Partitions without a known filesystem (BIOS boot,
///   swap, unknown content) and PVs of a VG with several PVs keep their size. If it
///   still does not fit: [`PlanError::TargetTooSmall`] with the size needed.
///
/// Partitions keep their order, numbers, types, GUIDs, names and attributes, and the
/// gaps between them. A partition keeps its byte offset while nothing before it
/// changed; after a change, it starts on the next MiB boundary. LBAs are converted
/// between sector sizes.
pub fn plan(
    layout: &Layout,
    target: Bytes,
    sector: SectorSize,
) -> Result<PartitionPlan, PlanError> {
    validate(layout)?;
    if layout.partitions.iter().any(|p| p.number > 4) && matches!(layout.table, Table::Mbr { .. }) {
        return Err(PlanError::Unsupported(
            "MBR logical partitions (in an extended partition)".into(),
        ));
    }
    let src_sector = layout.disk.logical_sector;
    let src_geo = Geometry::new(&layout.table, layout.disk.size_bytes, src_sector)
        .ok_or_else(|| PlanError::InvalidLayout("the source disk cannot hold its table".into()))?;
    // `short` is how many bytes the target lacks.
    let too_small = |short: u64| PlanError::TargetTooSmall {
        needed: Bytes(align_up(target.0.saturating_add(short), MIB).unwrap_or(u64::MAX)),
        available: target,
    };
    let mins = minimums(layout);
    let Some(geo) = Geometry::new(&layout.table, target, sector) else {
        // Not even the table fits: a lower bound is a MiB, the partitions at their
        // minimum sizes, and the table's reserved sectors at the end.
        let reserved_end = layout.disk.size_bytes.0 - src_geo.end_byte();
        let parts: u64 = layout
            .partitions
            .iter()
            .map(|p| {
                mins.partitions
                    .get(&p.number)
                    .copied()
                    .unwrap_or(p.size_lba.0 * src_sector.bytes())
            })
            .sum();
        let need = MIB + parts + reserved_end + mins.whole_disk.unwrap_or(0);
        return Err(too_small(need.saturating_sub(target.0)));
    };

    let mut slots: Vec<Slot> = layout
        .partitions
        .iter()
        .enumerate()
        .map(|(index, p)| {
            let orig_start = p.start_lba.0 * src_sector.bytes();
            let orig_size = p.size_lba.0 * src_sector.bytes();
            Slot {
                index,
                orig_start,
                orig_size,
                size: orig_size,
                min: mins
                    .partitions
                    .get(&p.number)
                    .copied()
                    .unwrap_or(orig_size)
                    .min(orig_size),
                growable: false,
            }
        })
        .collect();
    slots.sort_by_key(|s| s.orig_start);
    for g in growable_partitions(layout) {
        if let Some(s) = slots
            .iter_mut()
            .find(|s| layout.partitions[s.index].number == g)
        {
            s.growable = true;
        }
    }

    if layout.table == Table::None {
        let need = mins.whole_disk.unwrap_or(layout.disk.size_bytes.0);
        if geo.end_byte() < need {
            return Err(too_small(need - geo.end_byte()));
        }
    }

    let identical = target == layout.disk.size_bytes && sector == src_sector;
    if !identical {
        // Grow by the whole MiBs the target has more than the source, so free space
        // the source left at its end stays free.
        let usable_mib = |g: &Geometry| align_down(g.end_byte(), MIB);
        let extra = usable_mib(&geo).saturating_sub(usable_mib(&src_geo));
        let placed_end = end_of(&place(&slots, &geo)?);
        let room = usable_mib(&geo).saturating_sub(placed_end).min(extra);
        let growers: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].growable).collect();
        if !growers.is_empty() {
            let share = align_down(room / growers.len() as u64, MIB);
            for &i in &growers {
                slots[i].size = slots[i].size.checked_add(share).ok_or_else(overflow)?;
            }
        }
        fit(&mut slots, &geo, too_small)?;
    }

    let placed = place(&slots, &geo)?;
    let mut partitions = Vec::with_capacity(slots.len());
    for (slot, &(start, size)) in slots.iter().zip(&placed) {
        let p = &layout.partitions[slot.index];
        let change = if size > slot.orig_size {
            Change::Grown
        } else if size < slot.orig_size {
            Change::Shrunk
        } else if start != slot.orig_start {
            Change::Moved
        } else {
            Change::Same
        };
        partitions.push(PlannedPartition {
            number: p.number,
            start_lba: Lba(start / sector.bytes()),
            size_lba: Sectors(size / sector.bytes()),
            type_guid: p.type_guid,
            mbr_type: p.mbr_type,
            part_uuid: p.part_uuid,
            name: p.name.clone(),
            attributes: p.attributes,
            was_bytes: Bytes(slot.orig_size),
            change,
        });
    }
    partitions.sort_by_key(|p| p.number);
    let new_sizes: BTreeMap<u32, u64> = partitions
        .iter()
        .map(|p| (p.number, p.size_lba.0 * sector.bytes()))
        .collect();
    let lvs = plan_lvs(layout, &new_sizes, too_small)?;
    let plan = PartitionPlan {
        table: layout.table,
        sector_size: sector,
        disk_bytes: target,
        first_usable: geo.first_usable,
        last_usable: geo.last_usable,
        partitions,
        lvs,
    };
    check_plan(&plan).map_err(PlanError::InvalidLayout)?;
    Ok(plan)
}

fn overflow() -> PlanError {
    PlanError::InvalidLayout("sizes overflow 64 bits".into())
}

/// Start and size in bytes of each slot, in disk order. Each keeps its byte offset
/// until something before it moved or changed size (or the offset is not a whole
/// target sector, or lies in the table's reserved area); from then on starts are
/// aligned up to a MiB after the previous end plus the original gap.
fn place(slots: &[Slot], geo: &Geometry) -> Result<Vec<(u64, u64)>, PlanError> {
    let sector = geo.sector.bytes();
    let mut out = Vec::with_capacity(slots.len());
    let mut moved = false;
    let (mut prev_orig_end, mut prev_end) = (0u64, 0u64);
    for s in slots {
        let size = align_up(s.size, sector).ok_or_else(overflow)?;
        let keep = !moved && s.orig_start % sector == 0 && s.orig_start >= geo.first_byte();
        let start = if keep {
            s.orig_start
        } else {
            let gap = s.orig_start.saturating_sub(prev_orig_end);
            let want = prev_end
                .checked_add(gap)
                .ok_or_else(overflow)?
                .max(geo.first_byte());
            align_up(want, MIB).ok_or_else(overflow)?
        };
        moved |= start != s.orig_start || size != s.orig_size;
        prev_orig_end = s.orig_start + s.orig_size;
        prev_end = start.checked_add(size).ok_or_else(overflow)?;
        out.push((start, size));
    }
    Ok(out)
}

fn end_of(placed: &[(u64, u64)]) -> u64 {
    placed.iter().map(|(s, l)| s + l).max().unwrap_or(0)
}

/// Shrink slots until the placement ends within the disk: growable ones first, then
/// the others with the most slack, each in whole MiB and never below its minimum.
fn fit(
    slots: &mut [Slot],
    geo: &Geometry,
    too_small: impl Fn(u64) -> PlanError,
) -> Result<(), PlanError> {
    let mut order: Vec<usize> = (0..slots.len()).collect();
    order.sort_by_key(|&i| {
        let s = &slots[i];
        (!s.growable, std::cmp::Reverse(s.size - s.min), s.orig_start)
    });
    let mut candidates = order.into_iter();
    let mut current = candidates.next();
    loop {
        let end = end_of(&place(slots, geo)?);
        if end <= geo.end_byte() {
            return Ok(());
        }
        let over = end - geo.end_byte();
        let Some(i) = current else {
            return Err(too_small(over));
        };
        let s = &mut slots[i];
        let smaller = align_down(s.size.saturating_sub(over), MIB).max(s.min);
        if smaller < s.size {
            s.size = smaller;
        } else {
            current = candidates.next();
        }
    }
}

/// Minimum sizes in bytes: per partition number that may shrink, per LV, and for a
/// filesystem on the whole disk.
struct Minimums {
    partitions: BTreeMap<u32, u64>,
    lvs: BTreeMap<(String, String), u64>,
    whole_disk: Option<u64>,
}

fn minimums(layout: &Layout) -> Minimums {
    let sector = layout.disk.logical_sector.bytes();
    let part_size = |n: u32| {
        layout
            .partitions
            .iter()
            .find(|p| p.number == n)
            .map_or(0, |p| p.size_lba.0 * sector)
    };
    let mut m = Minimums {
        partitions: BTreeMap::new(),
        lvs: BTreeMap::new(),
        whole_disk: None,
    };
    for lv in &layout.lvm.lvs {
        let fs = layout.filesystems.iter().find(
            |f| matches!(&f.source, Source::Lv { vg, name } if *vg == lv.vg && *name == lv.name),
        );
        let min = fs.map_or(lv.size_bytes, |f| {
            min_filesystem_bytes(f.used_bytes, lv.size_bytes)
        });
        m.lvs.insert((lv.vg.clone(), lv.name.clone()), min.0);
    }
    for f in &layout.filesystems {
        match f.source {
            Source::Partition(n) => {
                let size = Bytes(part_size(n));
                m.partitions
                    .insert(n, min_filesystem_bytes(f.used_bytes, size).0);
            }
            Source::Disk => {
                m.whole_disk = Some(min_filesystem_bytes(f.used_bytes, layout.disk.size_bytes).0)
            }
            Source::Lv { .. } => {}
        }
    }
    for vg in &layout.lvm.vgs {
        // Only a VG with a single PV on this disk lets its PV shrink: with several, which
        // extents live where is not in the layout.
        let [pv] = vg.pvs.as_slice() else { continue };
        let ext = vg.extent_size.0.max(1);
        let extents: u64 = layout
            .lvm
            .lvs
            .iter()
            .filter(|lv| lv.vg == vg.name)
            .map(|lv| lv_min(&m, lv).div_ceil(ext))
            .sum();
        let need = pv.pe_start.0.saturating_add(extents.saturating_mul(ext));
        let need = align_up(need, MIB).unwrap_or(u64::MAX);
        m.partitions
            .insert(pv.partition, need.min(part_size(pv.partition)));
    }
    m
}

fn lv_min(m: &Minimums, lv: &Lv) -> u64 {
    m.lvs
        .get(&(lv.vg.clone(), lv.name.clone()))
        .copied()
        .unwrap_or(lv.size_bytes.0)
}

/// Partition numbers that grow: those marked, else the largest PV, else the largest
/// partition holding a filesystem.
fn growable_partitions(layout: &Layout) -> Vec<u32> {
    let marked: Vec<u32> = layout
        .partitions
        .iter()
        .filter(|p| p.growable)
        .map(|p| p.number)
        .collect();
    if !marked.is_empty() {
        return marked;
    }
    let pvs: BTreeSet<u32> = layout
        .lvm
        .vgs
        .iter()
        .flat_map(|v| v.pvs.iter().map(|p| p.partition))
        .collect();
    let fss: BTreeSet<u32> = layout
        .filesystems
        .iter()
        .filter_map(|f| match f.source {
            Source::Partition(n) => Some(n),
            _ => None,
        })
        .collect();
    let largest = |set: &BTreeSet<u32>| {
        layout
            .partitions
            .iter()
            .filter(|p| set.contains(&p.number))
            .max_by_key(|p| (p.size_lba, std::cmp::Reverse(p.number)))
            .map(|p| p.number)
    };
    largest(&pvs)
        .or_else(|| largest(&fss))
        .into_iter()
        .collect()
}

/// The LV of `vg` that grows when none is marked: the largest LV holding a
/// filesystem (the first listed among equals), as an index into `layout.lvm.lvs`.
fn default_growable_lv(layout: &Layout, vg: &str) -> Option<usize> {
    let lvs = &layout.lvm.lvs;
    (0..lvs.len())
        .filter(|&i| lvs[i].vg == vg)
        .filter(|&i| {
            layout.filesystems.iter().any(|f| {
                matches!(&f.source, Source::Lv { vg, name } if *vg == lvs[i].vg && *name == lvs[i].name)
            })
        })
        .max_by_key(|&i| (lvs[i].size_bytes, std::cmp::Reverse(i)))
}

/// LV sizes for the new PV sizes: each VG gains or loses what its PVs gained or lost,
/// in whole extents; the growable LVs take the gain; a loss is taken from the VG's free
/// extents, then from growable LVs, then the others with the most slack.
fn plan_lvs(
    layout: &Layout,
    new_sizes: &BTreeMap<u32, u64>,
    too_small: impl Fn(u64) -> PlanError,
) -> Result<Vec<PlannedLv>, PlanError> {
    let sector = layout.disk.logical_sector.bytes();
    let mins = minimums(layout);
    let mut out = Vec::new();
    for vg in &layout.lvm.vgs {
        let ext = vg.extent_size.0;
        let capacity = |size_of: &dyn Fn(u32) -> u64| -> u64 {
            vg.pvs
                .iter()
                .map(|pv| size_of(pv.partition).saturating_sub(pv.pe_start.0) / ext)
                .sum()
        };
        let old_cap = capacity(&|n| {
            layout
                .partitions
                .iter()
                .find(|p| p.number == n)
                .map_or(0, |p| p.size_lba.0 * sector)
        });
        let new_cap = capacity(&|n| new_sizes.get(&n).copied().unwrap_or(0));
        let lvs: Vec<&Lv> = layout.lvm.lvs.iter().filter(|l| l.vg == vg.name).collect();
        let mut sizes: Vec<u64> = lvs.iter().map(|l| l.size_bytes.0.div_ceil(ext)).collect();
        let min_ext: Vec<u64> = lvs.iter().map(|l| lv_min(&mins, l).div_ceil(ext)).collect();
        let mut growers: Vec<usize> = (0..lvs.len()).filter(|&i| lvs[i].growable).collect();
        if growers.is_empty() {
            growers.extend(default_growable_lv(layout, &vg.name).and_then(|g| {
                lvs.iter()
                    .position(|l| std::ptr::eq(*l, &layout.lvm.lvs[g]))
            }));
        }
        if new_cap >= old_cap {
            if !growers.is_empty() {
                let gain = new_cap - old_cap;
                let share = gain / growers.len() as u64;
                for (k, &i) in growers.iter().enumerate() {
                    // The first grower also takes the remainder.
                    sizes[i] += share
                        + if k == 0 {
                            gain % growers.len() as u64
                        } else {
                            0
                        };
                }
            }
        } else {
            let used: u64 = sizes.iter().sum();
            let mut over = used.saturating_sub(new_cap);
            let mut order: Vec<usize> = (0..lvs.len()).collect();
            order.sort_by_key(|&i| {
                (
                    !growers.contains(&i),
                    std::cmp::Reverse(sizes[i] - min_ext[i]),
                    i,
                )
            });
            for i in order {
                let take = over.min(sizes[i] - min_ext[i]);
                sizes[i] -= take;
                over -= take;
            }
            if over > 0 {
                return Err(too_small(over.saturating_mul(ext)));
            }
        }
        for (lv, ext_count) in lvs.iter().zip(sizes) {
            let size = if ext_count * ext == lv.size_bytes.0.next_multiple_of(ext) {
                lv.size_bytes
            } else {
                Bytes(ext_count * ext)
            };
            out.push(PlannedLv {
                vg: lv.vg.clone(),
                name: lv.name.clone(),
                size_bytes: size,
                was_bytes: lv.size_bytes,
            });
        }
    }
    Ok(out)
}

/// Structural checks on a layout before planning.
fn validate(layout: &Layout) -> Result<(), PlanError> {
    let bad = |m: String| Err(PlanError::InvalidLayout(m));
    if layout.schema != SCHEMA {
        return Err(PlanError::Unsupported(format!(
            "layout schema {}",
            layout.schema
        )));
    }
    let sector = layout.disk.logical_sector;
    let Some(geo) = Geometry::new(&layout.table, layout.disk.size_bytes, sector) else {
        return bad(format!(
            "a {} disk cannot hold its partition table",
            layout.disk.size_bytes
        ));
    };
    if layout.table == Table::None && !layout.partitions.is_empty() {
        return bad("partitions listed on a disk without a partition table".into());
    }
    let mut numbers = BTreeSet::new();
    let mut spans = Vec::new();
    for p in &layout.partitions {
        let max = match layout.table {
            Table::Gpt { .. } => GPT_ENTRIES,
            _ => 255,
        };
        if p.number == 0 || p.number > max {
            return bad(format!(
                "partition number {} is out of range 1..={max}",
                p.number
            ));
        }
        if !numbers.insert(p.number) {
            return bad(format!("partition number {} appears twice", p.number));
        }
        if p.size_lba.0 == 0 {
            return bad(format!("partition {} has size 0", p.number));
        }
        if matches!(layout.table, Table::Gpt { .. }) && p.type_guid.is_none() {
            return bad(format!("GPT partition {} has no type GUID", p.number));
        }
        if p.name.encode_utf16().count() > 36 {
            return bad(format!(
                "partition {}'s name is longer than 36 UTF-16 units",
                p.number
            ));
        }
        let end = p
            .start_lba
            .0
            .checked_add(p.size_lba.0)
            .filter(|&e| e <= geo.last_usable.0 + 1);
        if p.start_lba < geo.first_usable || end.is_none() {
            return bad(format!(
                "partition {} (sectors {}+{}) lies outside the usable area {}..={}",
                p.number, p.start_lba.0, p.size_lba.0, geo.first_usable.0, geo.last_usable.0
            ));
        }
        spans.push((p.start_lba.0, p.start_lba.0 + p.size_lba.0, p.number));
    }
    spans.sort();
    for w in spans.windows(2) {
        // Logical partitions live inside their extended partition.
        let extended = layout
            .partitions
            .iter()
            .any(|p| p.number == w[0].2 && matches!(p.mbr_type, Some(0x05 | 0x0f | 0x85)));
        if w[1].0 < w[0].1 && !extended {
            return bad(format!("partitions {} and {} overlap", w[0].2, w[1].2));
        }
    }
    let vgs: BTreeSet<&str> = layout.lvm.vgs.iter().map(|v| v.name.as_str()).collect();
    for vg in &layout.lvm.vgs {
        if vg.extent_size.0 == 0 {
            return bad(format!("VG {} has extent size 0", vg.name));
        }
        for pv in &vg.pvs {
            if !numbers.contains(&pv.partition) {
                return bad(format!(
                    "VG {}'s PV is on partition {}, which is not listed",
                    vg.name, pv.partition
                ));
            }
        }
    }
    for lv in &layout.lvm.lvs {
        if !vgs.contains(lv.vg.as_str()) {
            return bad(format!("LV {}/{} is in an unlisted VG", lv.vg, lv.name));
        }
    }
    let sources = layout
        .filesystems
        .iter()
        .map(|f| &f.source)
        .chain(layout.swap.iter().map(|s| &s.source));
    for src in sources {
        let ok = match src {
            Source::Partition(n) => numbers.contains(n),
            Source::Lv { vg, name } => layout
                .lvm
                .lvs
                .iter()
                .any(|l| l.vg == *vg && l.name == *name),
            Source::Disk => layout.table == Table::None,
        };
        if !ok {
            return bad(format!(
                "a filesystem or swap area is on {src}, which is not in the layout"
            ));
        }
    }
    Ok(())
}

/// Invariants of every plan the planner returns (checked before returning it, so a
/// planner bug is an error, never a bad table on a disk): partitions inside the usable
/// area, in disk order without overlap.
pub fn check_plan(plan: &PartitionPlan) -> Result<(), String> {
    let mut spans: Vec<(u64, u64, u32)> = Vec::new();
    for p in &plan.partitions {
        let end = p
            .start_lba
            .0
            .checked_add(p.size_lba.0)
            .ok_or("partition end overflows")?;
        if p.size_lba.0 == 0 || p.start_lba < plan.first_usable || end > plan.last_usable.0 + 1 {
            return Err(format!(
                "partition {} (sectors {}+{}) is outside the usable area {}..={}",
                p.number, p.start_lba.0, p.size_lba.0, plan.first_usable.0, plan.last_usable.0
            ));
        }
        spans.push((p.start_lba.0, end, p.number));
    }
    spans.sort();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(format!("partitions {} and {} overlap", w[0].2, w[1].2));
        }
    }
    Ok(())
}

impl PartitionPlan {
    /// True when nothing moved or changed size.
    pub fn unchanged(&self) -> bool {
        self.partitions.iter().all(|p| p.change == Change::Same)
            && self.lvs.iter().all(|l| l.size_bytes == l.was_bytes)
    }
}

impl fmt::Display for PartitionPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.sector_size.bytes();
        let table = match self.table {
            Table::Gpt { disk_guid } => format!("GPT, disk GUID {disk_guid}"),
            Table::Mbr { disk_id } => format!("MBR, disk id 0x{disk_id:08x}"),
            Table::None => "no partition table".into(),
        };
        writeln!(
            f,
            "{table}; {} ({} sectors of {s} bytes), usable sectors {}..={}",
            self.disk_bytes,
            self.disk_bytes.0 / s,
            self.first_usable.0,
            self.last_usable.0
        )?;
        if !self.partitions.is_empty() {
            writeln!(
                f,
                "{:>3}  {:>12}  {:>12}  {:>10}  {:<20}  change",
                "#", "start", "sectors", "size", "name"
            )?;
        }
        for p in &self.partitions {
            let size = Bytes(p.size_lba.0 * s);
            let change = match p.change {
                Change::Grown | Change::Shrunk => format!("{} from {}", p.change, p.was_bytes),
                c => c.to_string(),
            };
            writeln!(
                f,
                "{:>3}  {:>12}  {:>12}  {:>10}  {:<20}  {change}",
                p.number,
                p.start_lba.0,
                p.size_lba.0,
                size.to_string(),
                p.name
            )?;
        }
        for lv in &self.lvs {
            let change = if lv.size_bytes == lv.was_bytes {
                "same".to_string()
            } else if lv.size_bytes > lv.was_bytes {
                format!("grown from {}", lv.was_bytes)
            } else {
                format!("shrunk from {}", lv.was_bytes)
            };
            writeln!(f, "LV {}/{}: {} ({change})", lv.vg, lv.name, lv.size_bytes)?;
        }
        Ok(())
    }
}

/// What `understudy layout plan` reports: the plan, or why there is none.
#[derive(Debug)]
pub struct PlanReport(pub Result<PartitionPlan, PlanError>);

/// Load a layout document and plan it onto `size` bytes with `sector`-byte sectors
/// (default: the layout's own sector size). Errors are about the inputs; a layout
/// that does not fit is a [`PlanReport`] holding the refusal.
pub fn plan_file(path: &Path, size: Bytes, sector: Option<u32>) -> Result<PlanReport> {
    let layout = Layout::load(path)?;
    let sector = match sector {
        Some(s) => SectorSize::try_from(s).map_err(anyhow::Error::msg)?,
        None => layout.disk.logical_sector,
    };
    Ok(PlanReport(plan(&layout, size, sector)))
}

impl PlanReport {
    /// The refusal as an error, for the exit code.
    pub fn into_result(self) -> Result<()> {
        self.0.map(drop).map_err(anyhow::Error::from)
    }
}

impl fmt::Display for PlanReport {
    /// The plan; nothing for a refusal (it is reported as the error).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Ok(p) => p.fmt(f),
            Err(_) => Ok(()),
        }
    }
}

impl Serialize for PlanReport {
    /// `{"plan": {…}}`, or `{"refused": {"kind", "message", "needed_bytes",
    /// "available_bytes"}}` (the sizes only for a target too small).
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let v = match &self.0 {
            Ok(p) => serde_json::json!({ "plan": p }),
            Err(e) => {
                let (kind, needed, available) = match e {
                    PlanError::TargetTooSmall { needed, available } => {
                        ("target_too_small", Some(needed.0), Some(available.0))
                    }
                    PlanError::InvalidLayout(_) => ("invalid_layout", None, None),
                    PlanError::Unsupported(_) => ("unsupported", None, None),
                };
                serde_json::json!({ "refused": {
                    "kind": kind,
                    "message": e.to_string(),
                    "needed_bytes": needed,
                    "available_bytes": available,
                }})
            }
        };
        v.serialize(s)
    }
}

/// Parse a size for the command line: bytes, or a number with a binary suffix
/// (`K`, `M`, `G`, `T`, optionally followed by `iB`: powers of 1024).
pub fn parse_size(text: &str) -> Result<Bytes, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| format!("`{text}` is not a size"))?;
    let shift = match suffix.trim().trim_end_matches("iB").trim_end_matches('B') {
        "" => 0,
        "K" | "k" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("`{text}`: unknown size suffix (K, M, G, T)")),
    };
    n.checked_mul(1 << shift)
        .map(Bytes)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Why a disk's layout cannot be captured. The console and the image writer branch on
/// `NoSuchDisk` and `Unreadable` (a disk that is gone or damaged is not imaged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaptureError {
    #[error("no disk named {0} in the inventory")]
    NoSuchDisk(String),
    #[error("disk {disk} cannot be captured: {state}")]
    Unreadable {
        disk: String,
        state: crate::disk::Readability,
    },
    #[error("disk {disk}: {reason}")]
    Unsupported { disk: String, reason: String },
}

/// The layout of disk `disk` (kernel name `vda` or path `/dev/vda`) in `inv`, as the
/// planner reads it. Pure: the caller measures the world.
///
/// * Partitions come from the table on the disk (libblkid), in bytes converted to
///   the disk's logical sectors; MBR type bytes and GPT type GUIDs, PARTUUIDs and names.
///   GPT attribute bits and an MBR active flag are not in the inventory: they are 0.
/// * Filesystems and swap areas are the signatures on partitions, on the whole disk,
///   and on the LVs of the VGs that have a PV on this disk. A filesystem's mount point
///   and options come from the `fstab` entry naming it (`UUID=`, `LABEL=`,
///   `PARTUUID=`, `PARTLABEL=`, `/dev/…`, `/dev/disk/by-*/…`), else from where it is
///   mounted now (options then empty).
/// * `used` maps a mount point, or a filesystem UUID, to the bytes in use
///   (statvfs). A filesystem with no entry is recorded as full (its container's size),
///   so the planner never shrinks what was not measured.
/// * LVM: VGs with a PV on a partition of this disk, only those PVs, and their LVs
///   except snapshots and LVs with no extents here. `pe_start` is LVM's default 1 MiB
///   (the inventory's `pvs` report does not ask for it).
/// * Growable: the partition and, in each VG, the LV that [`plan`] grows by default
///   (the largest PV, else the partition holding the largest filesystem; the largest LV
///   holding a filesystem), so the document says what will happen.
pub fn capture(
    inv: &crate::disk::Inventory,
    disk: &str,
    fstab: &crate::fstab::Fstab,
    used: &BTreeMap<String, u64>,
) -> Result<Layout, CaptureError> {
    use crate::disk::{Readability, Signature};
    let name = disk.strip_prefix("/dev/").unwrap_or(disk);
    let d = inv
        .disk(name)
        .ok_or_else(|| CaptureError::NoSuchDisk(disk.to_string()))?;
    let unsupported = |reason: String| CaptureError::Unsupported {
        disk: d.name.clone(),
        reason,
    };
    if d.state != Readability::Readable {
        return Err(CaptureError::Unreadable {
            disk: d.name.clone(),
            state: d.state.clone(),
        });
    }
    let sector = SectorSize::try_from(d.logical_sector.0).map_err(unsupported)?;
    let physical_sector = u32::try_from(d.physical_sector.0)
        .map_err(|_| unsupported(format!("physical sector size {}", d.physical_sector.0)))?;
    let table = match &d.table {
        None => Table::None,
        Some(t) => match (t.kind.as_str(), t.id.as_deref()) {
            ("gpt", Some(id)) => Table::Gpt {
                disk_guid: Uuid::parse_str(id)
                    .map_err(|_| unsupported(format!("GPT disk GUID {id:?}")))?,
            },
            ("dos", id) => Table::Mbr {
                disk_id: id
                    .and_then(|id| u32::from_str_radix(id.trim_start_matches("0x"), 16).ok())
                    .unwrap_or(0),
            },
            (kind, _) => return Err(unsupported(format!("a partition table of type {kind}"))),
        },
    };
    let gpt = matches!(table, Table::Gpt { .. });

    let mut partitions = Vec::new();
    for p in &d.partitions {
        let lba = |b: crate::disk::Bytes, what: &str| {
            Bytes(b.0).to_sectors(sector).ok_or_else(|| {
                unsupported(format!(
                    "partition {}'s {what} ({} bytes) is not a whole number of {sector}-byte sectors",
                    p.number, b.0
                ))
            })
        };
        let type_text = p.type_guid.as_deref().ok_or_else(|| {
            unsupported(format!(
                "partition {} is known to the kernel but not in the table on the disk",
                p.number
            ))
        })?;
        let (type_guid, mbr_type) = if gpt {
            let g = Uuid::parse_str(type_text)
                .map_err(|_| unsupported(format!("partition {}'s type {type_text:?}", p.number)))?;
            (Some(g), None)
        } else {
            let t = u8::from_str_radix(type_text.trim_start_matches("0x"), 16)
                .map_err(|_| unsupported(format!("partition {}'s type {type_text:?}", p.number)))?;
            (None, Some(t))
        };
        partitions.push(Partition {
            number: p.number,
            start_lba: Lba(lba(p.start, "start")?.0),
            size_lba: lba(p.size, "size")?,
            type_guid,
            mbr_type,
            part_uuid: if gpt {
                p.uuid.as_deref().and_then(|u| Uuid::parse_str(u).ok())
            } else {
                None
            },
            name: p.name.clone().unwrap_or_default(),
            attributes: 0,
            growable: false,
        });
    }

    // Every volume on this disk: where it is, what it is, how big, by which paths.
    struct Volume<'a> {
        source: Source,
        sig: &'a Signature,
        size: u64,
        paths: Vec<String>,
        part_uuid: Option<&'a str>,
        part_name: Option<&'a str>,
        mounts: &'a [std::path::PathBuf],
    }
    let path_text = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let mut volumes = Vec::new();
    if let Some(sig) = &d.signature {
        volumes.push(Volume {
            source: Source::Disk,
            sig,
            size: d.size.0,
            paths: vec![d.path.display().to_string()],
            part_uuid: None,
            part_name: None,
            mounts: &d.usage.mounts,
        });
    }
    for p in &d.partitions {
        if let Some(sig) = &p.signature {
            volumes.push(Volume {
                source: Source::Partition(p.number),
                sig,
                size: p.size.0,
                paths: path_text(&p.path).into_iter().collect(),
                part_uuid: p.uuid.as_deref(),
                part_name: p.name.as_deref(),
                mounts: &p.usage.mounts,
            });
        }
    }

    // LVM: the PVs on this disk's partitions, their VGs, and those VGs' LVs.
    let mut lvm = Lvm::default();
    if let crate::disk::LvmStatus::Found(found) = &inv.lvm {
        let local = |path: &std::path::Path| {
            d.partitions
                .iter()
                .find(|p| p.path.as_deref() == Some(path))
                .map(|p| p.number)
        };
        if found.pvs.iter().any(|pv| pv.path == d.path) {
            return Err(unsupported(
                "an LVM PV on the whole disk (the layout lists PVs by partition)".into(),
            ));
        }
        for vg in &found.vgs {
            let pvs: Vec<Pv> = found
                .pvs
                .iter()
                .filter(|pv| pv.vg.as_deref() == Some(vg.name.as_str()))
                .filter_map(|pv| {
                    Some(Pv {
                        partition: local(&pv.path)?,
                        uuid: pv.uuid.clone(),
                        pe_start: default_pe_start(),
                    })
                })
                .collect();
            if pvs.is_empty() {
                continue;
            }
            for lv in found.lvs.iter().filter(|lv| lv.vg == vg.name) {
                let snapshot = lv.origin.is_some() || lv.attr.starts_with(['s', 'S']);
                let here = lv.devices.is_empty() || lv.devices.iter().any(|p| local(p).is_some());
                if snapshot || !here {
                    continue;
                }
                lvm.lvs.push(Lv {
                    vg: lv.vg.clone(),
                    name: lv.name.clone(),
                    uuid: lv.uuid.clone(),
                    size_bytes: Bytes(lv.size.0),
                    growable: false,
                });
                if let Some(sig) = &lv.signature {
                    volumes.push(Volume {
                        source: Source::Lv {
                            vg: lv.vg.clone(),
                            name: lv.name.clone(),
                        },
                        sig,
                        size: lv.size.0,
                        paths: [path_text(&lv.path), path_text(&lv.dm_path)]
                            .into_iter()
                            .flatten()
                            .collect(),
                        part_uuid: None,
                        part_name: None,
                        mounts: &lv.usage.mounts,
                    });
                }
            }
            lvm.vgs.push(Vg {
                name: vg.name.clone(),
                uuid: vg.uuid.clone(),
                pvs,
                extent_size: Bytes(vg.extent_size.0),
            });
        }
    }

    let mut filesystems = Vec::new();
    let mut swap = Vec::new();
    for v in &volumes {
        match v.sig.kind.as_str() {
            "swap" => swap.push(Swap {
                source: v.source.clone(),
                uuid: v.sig.uuid.clone(),
                label: v.sig.label.clone(),
                size_bytes: Bytes(v.size),
            }),
            _ if v.sig.usage.as_deref() == Some("filesystem") => {
                let entry = fstab
                    .entries()
                    .map(|(_, e)| e)
                    .find(|e| names_volume(&e.source(), v.sig, v.part_uuid, v.part_name, &v.paths));
                let mountpoint = entry.map(|e| e.target()).or_else(|| {
                    v.mounts
                        .iter()
                        .min_by_key(|m| m.as_os_str().len())
                        .map(|m| m.display().to_string())
                });
                let mount_options = entry
                    .map(|e| e.options().split(',').map(str::to_string).collect())
                    .unwrap_or_default();
                let measured = mountpoint
                    .as_ref()
                    .and_then(|m| used.get(m))
                    .or_else(|| v.sig.uuid.as_ref().and_then(|u| used.get(u)));
                filesystems.push(Filesystem {
                    source: v.source.clone(),
                    fstype: v.sig.kind.clone(),
                    uuid: v.sig.uuid.clone(),
                    label: v.sig.label.clone(),
                    used_bytes: Bytes(measured.copied().unwrap_or(v.size)),
                    mountpoint,
                    mount_options,
                });
            }
            // PVs are in `lvm`; LUKS and RAID members are not laid out by us.
            _ => {}
        }
    }

    let mut layout = Layout {
        schema: SCHEMA,
        table,
        disk: Disk {
            size_bytes: Bytes(d.size.0),
            logical_sector: sector,
            physical_sector,
        },
        partitions,
        filesystems,
        lvm,
        swap,
    };
    for n in growable_partitions(&layout) {
        if let Some(p) = layout.partitions.iter_mut().find(|p| p.number == n) {
            p.growable = true;
        }
    }
    for vg in layout
        .lvm
        .vgs
        .iter()
        .map(|v| v.name.clone())
        .collect::<Vec<_>>()
    {
        if let Some(i) = default_growable_lv(&layout, &vg) {
            layout.lvm.lvs[i].growable = true;
        }
    }
    Ok(layout)
}

/// Whether an fstab source names this volume.
fn names_volume(
    spec: &crate::fstab::Spec,
    sig: &crate::disk::Signature,
    part_uuid: Option<&str>,
    part_name: Option<&str>,
    paths: &[String],
) -> bool {
    use crate::fstab::Spec;
    let same = |a: Option<&str>, b: &str| a.is_some_and(|a| a.eq_ignore_ascii_case(b));
    match spec {
        Spec::Uuid(u) => same(sig.uuid.as_deref(), u),
        Spec::PartUuid(u) => same(part_uuid, u),
        Spec::Label(l) => sig.label.as_deref() == Some(l.as_str()),
        Spec::PartLabel(l) => part_name == Some(l.as_str()),
        Spec::Path(p) => {
            let p = crate::fstab::clean_path(p);
            let by = |dir: &str| p.strip_prefix(dir).map(crate::fstab::unescape);
            if let Some(u) = by("/dev/disk/by-uuid/") {
                same(sig.uuid.as_deref(), &u)
            } else if let Some(l) = by("/dev/disk/by-label/") {
                sig.label.as_deref() == Some(l.as_str())
            } else if let Some(u) = by("/dev/disk/by-partuuid/") {
                same(part_uuid, &u)
            } else if let Some(l) = by("/dev/disk/by-partlabel/") {
                part_name == Some(l.as_str())
            } else {
                paths.iter().any(|q| crate::fstab::clean_path(q) == p)
            }
        }
        Spec::Id(_) | Spec::Other(_) => false,
    }
}

/// Capture the layout of the disk at `disk_path` on the running system: the
/// inventory, `/etc/fstab` (none is an empty one) and statvfs of every mounted
/// block-device filesystem, then [`capture`].
pub fn capture_live(disk_path: &Path) -> Result<Layout> {
    let real = std::fs::canonicalize(disk_path)
        .with_context(|| format!("resolving disk path {}", disk_path.display()))?;
    let name = real
        .file_name()
        .with_context(|| format!("{} is not a disk", real.display()))?
        .to_string_lossy()
        .into_owned();
    let inv = crate::disk::inventory(&crate::disk::Sources::system());
    let fstab = match std::fs::read_to_string("/etc/fstab") {
        Ok(text) => crate::fstab::Fstab::parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => crate::fstab::Fstab::parse(""),
        Err(e) => return Err(e).context("reading /etc/fstab"),
    };
    let mut used = BTreeMap::new();
    for m in &inv.mounts {
        let st = nix::sys::statvfs::statvfs(&m.mount_point)
            .with_context(|| format!("statvfs on {}", m.mount_point.display()))?;
        // fsblkcnt_t and c_ulong are u64 on the x86_64 target.
        let bytes = st
            .blocks()
            .saturating_sub(st.blocks_free())
            .checked_mul(st.fragment_size())
            .with_context(|| format!("used bytes of {} overflow", m.mount_point.display()))?;
        used.insert(m.mount_point.display().to_string(), bytes);
    }
    Ok(capture(&inv, &name, &fstab, &used)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt_reserves_34_and_33_sectors_of_512_and_6_and_5_of_4096() {
        let t = Table::Gpt {
            disk_guid: Uuid::nil(),
        };
        let g = Geometry::new(&t, Bytes(64 * MIB), SectorSize::B512).unwrap();
        assert_eq!((g.first_usable, g.last_usable), (Lba(34), Lba(131072 - 34)));
        let g = Geometry::new(&t, Bytes(64 * MIB), SectorSize::B4096).unwrap();
        assert_eq!((g.first_usable, g.last_usable), (Lba(6), Lba(16384 - 6)));
        assert!(Geometry::new(&t, Bytes(20 * 512), SectorSize::B512).is_none());
    }

    #[test]
    fn mbr_cannot_address_past_two_tib_with_512_byte_sectors() {
        let g =
            Geometry::new(&Table::Mbr { disk_id: 1 }, Bytes(4 << 40), SectorSize::B512).unwrap();
        assert_eq!(g.last_usable, Lba((1 << 32) - 1));
    }

    #[test]
    fn headroom_is_ten_percent_plus_64_mib_capped_at_the_current_size() {
        assert_eq!(
            min_filesystem_bytes(Bytes(0), Bytes(1 << 40)),
            Bytes(64 * MIB)
        );
        assert_eq!(
            min_filesystem_bytes(Bytes(1000 * MIB), Bytes(1 << 40)),
            Bytes(1164 * MIB)
        );
        assert_eq!(
            min_filesystem_bytes(Bytes(900 * MIB), Bytes(950 * MIB)),
            Bytes(950 * MIB)
        );
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(Bytes(4096)));
        assert_eq!(parse_size("64M"), Ok(Bytes(64 * MIB)));
        assert_eq!(parse_size("10GiB"), Ok(Bytes(10 << 30)));
        assert!(parse_size("10Q").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn bytes_display_in_binary_units() {
        assert_eq!(Bytes(512).to_string(), "512 B");
        assert_eq!(Bytes(3 * MIB / 2).to_string(), "1.5 MiB");
        assert_eq!(Bytes(10 << 30).to_string(), "10.0 GiB");
    }

    #[test]
    fn sector_size_accepts_only_512_and_4096() {
        assert_eq!(
            serde_json::from_str::<SectorSize>("4096").unwrap(),
            SectorSize::B4096
        );
        assert!(serde_json::from_str::<SectorSize>("1024").is_err());
    }

    /// Hand-built inventories for [`capture`]: one disk `vda`, and LVM when given.
    mod captured {
        use super::super::*;
        use crate::disk::{self, Readability};

        const GIB: u64 = 1 << 30;
        pub const BIOS_BOOT: &str = "21686148-6449-6e6f-744e-656564454649";
        pub const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
        pub const LINUX: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";
        pub const LINUX_LVM: &str = "e6d6d379-f507-44c2-a23c-238f2a3df928";

        pub fn sig(kind: &str, uuid: &str, label: Option<&str>) -> disk::Signature {
            disk::Signature {
                kind: kind.into(),
                usage: Some(
                    match kind {
                        "swap" | "LVM2_member" => "other",
                        _ => "filesystem",
                    }
                    .into(),
                ),
                uuid: Some(uuid.into()),
                label: label.map(Into::into),
                version: None,
                bad_checksum: false,
            }
        }

        fn usage(mounts: &[&str]) -> disk::Usage {
            disk::Usage {
                mounts: mounts.iter().map(Into::into).collect(),
                ..disk::Usage::default()
            }
        }

        /// Builds the inventory of one machine for a logical sector size.
        pub type Make = fn(u64) -> disk::Inventory;

        /// (start MiB, size MiB, type, name, signature, live mounts)
        pub type Part = (
            u64,
            u64,
            &'static str,
            &'static str,
            Option<disk::Signature>,
            &'static [&'static str],
        );

        pub fn inventory(
            size: u64,
            sector: u64,
            table: Option<(&str, &str)>,
            whole: Option<(disk::Signature, &'static [&'static str])>,
            parts: Vec<Part>,
            lvm: disk::LvmStatus,
        ) -> disk::Inventory {
            let partitions = parts
                .into_iter()
                .enumerate()
                .map(|(i, (start, len, ty, name, signature, mounts))| {
                    let number = u32::try_from(i + 1).unwrap();
                    disk::Partition {
                        number,
                        device: Some(format!("vda{number}")),
                        path: Some(format!("/dev/vda{number}").into()),
                        start: disk::Bytes(start * MIB),
                        size: disk::Bytes(len * MIB),
                        type_guid: Some(ty.into()),
                        uuid: Some(if ty.starts_with("0x") {
                            format!("1234abcd-{number:02}")
                        } else {
                            format!("00000000-0000-4000-8000-0000000000{number:02}")
                        }),
                        name: (!name.is_empty()).then(|| name.into()),
                        extended: false,
                        signature,
                        error: None,
                        usage: usage(mounts),
                    }
                })
                .collect();
            let (signature, whole_mounts) = match whole {
                Some((s, m)) => (Some(s), m),
                None => (None, &[][..]),
            };
            disk::Inventory {
                disks: vec![disk::Disk {
                    name: "vda".into(),
                    path: "/dev/vda".into(),
                    devno: None,
                    model: None,
                    vendor: None,
                    serial: Some("primary".into()),
                    wwn: None,
                    size: disk::Bytes(size),
                    logical_sector: disk::Bytes(sector),
                    physical_sector: disk::Bytes(4096),
                    removable: false,
                    read_only: false,
                    transport: disk::Transport::Virtio,
                    identity: disk::Identity {
                        wwn: None,
                        serial: Some("primary".into()),
                        model: None,
                        size: disk::Bytes(size),
                        logical_sector: disk::Bytes(sector),
                    },
                    state: Readability::Readable,
                    table: table.map(|(kind, id)| disk::PartitionTable {
                        kind: kind.into(),
                        id: Some(id.into()),
                    }),
                    signature,
                    partitions,
                    usage: usage(whole_mounts),
                }],
                lvm,
                mounts: Vec::new(),
                swaps: Vec::new(),
                problems: Vec::new(),
            }
        }

        fn lv(
            name: &str,
            size: u64,
            attr: &str,
            origin: Option<&str>,
            sig: Option<disk::Signature>,
            mounts: &[&str],
        ) -> disk::Lv {
            disk::Lv {
                name: name.into(),
                vg: "vg0".into(),
                uuid: format!("{name}-lv-uuid"),
                size: disk::Bytes(size),
                path: Some(format!("/dev/vg0/{name}").into()),
                dm_path: Some(format!("/dev/mapper/vg0-{name}").into()),
                attr: attr.into(),
                origin: origin.map(Into::into),
                segtypes: vec!["linear".into()],
                devices: vec!["/dev/vda4".into()],
                device: None,
                signature: sig,
                error: None,
                usage: usage(mounts),
            }
        }

        /// vg0 on /dev/vda4 (and a COW PV on the secondary): root (ext4), swap_1, and a
        /// snapshot of root whose extents are on the secondary.
        pub fn vg0() -> disk::LvmStatus {
            let pv = |path: &str, uuid: &str| disk::Pv {
                path: path.into(),
                uuid: uuid.into(),
                vg: Some("vg0".into()),
                size: disk::Bytes(10 * GIB),
                free: disk::Bytes(0),
                dev_size: disk::Bytes(10 * GIB),
                attr: "a--".into(),
            };
            let mut snap = lv("root-snap", GIB, "swi-a-s---", Some("root"), None, &[]);
            snap.devices = vec!["/dev/vdb6".into()];
            disk::LvmStatus::Found(disk::Lvm {
                pvs: vec![
                    pv("/dev/vda4", "pv-vda4-uuid"),
                    pv("/dev/vdb6", "pv-cow-uuid"),
                ],
                vgs: vec![disk::Vg {
                    name: "vg0".into(),
                    uuid: "vg0-uuid".into(),
                    size: disk::Bytes(20 * GIB),
                    free: disk::Bytes(GIB),
                    extent_size: disk::Bytes(4 * MIB),
                    pv_count: 2,
                    lv_count: 3,
                    attr: "wz--n-".into(),
                }],
                lvs: vec![
                    lv(
                        "root",
                        8 * GIB,
                        "owi-aos---",
                        None,
                        Some(sig("ext4", "root-fs-uuid", None)),
                        &["/"],
                    ),
                    lv(
                        "swap_1",
                        2 * GIB,
                        "-wi-ao----",
                        None,
                        Some(sig("swap", "swap-uuid", None)),
                        &[],
                    ),
                    snap,
                ],
            })
        }

        /// GPT: BIOS boot, ESP, /boot, an LVM PV to the end of a 20 GiB disk.
        pub fn gpt_lvm(sector: u64) -> disk::Inventory {
            inventory(
                20 * GIB,
                sector,
                Some(("gpt", "8c2f4e7a-51d3-4b6e-9a0f-2d7c6b5e4a31")),
                None,
                vec![
                    (1, 1, BIOS_BOOT, "bios", None, &[]),
                    (
                        2,
                        512,
                        ESP,
                        "esp",
                        Some(sig("vfat", "5A1B-2C3D", Some("EFI"))),
                        &["/boot/efi"],
                    ),
                    (
                        514,
                        1024,
                        LINUX,
                        "boot",
                        Some(sig("ext4", "boot-fs-uuid", Some("boot"))),
                        &["/boot"],
                    ),
                    (
                        1538,
                        20 * 1024 - 1538 - 1,
                        LINUX_LVM,
                        "lvm",
                        Some(sig("LVM2_member", "pv-vda4-uuid", None)),
                        &[],
                    ),
                ],
                vg0(),
            )
        }

        /// MBR: root, swap, and a /srv partition that is neither in fstab nor mounted.
        pub fn mbr_plain(sector: u64) -> disk::Inventory {
            inventory(
                40 * GIB,
                sector,
                Some(("dos", "0x1234abcd")),
                None,
                vec![
                    (
                        1,
                        30 * 1024,
                        "0x83",
                        "",
                        Some(sig("ext4", "ROOT-UUID", None)),
                        &["/"],
                    ),
                    (
                        30 * 1024 + 1,
                        2048,
                        "0x82",
                        "",
                        Some(sig("swap", "swap-uuid", None)),
                        &[],
                    ),
                    (
                        32 * 1024 + 1,
                        4096,
                        "0x83",
                        "",
                        Some(sig("xfs", "srv-uuid", Some("srv"))),
                        &[],
                    ),
                ],
                disk::LvmStatus::Skipped,
            )
        }

        /// ext4 on the whole 256 GiB disk, mounted at / and absent from fstab.
        pub fn whole_disk(sector: u64) -> disk::Inventory {
            inventory(
                256 * GIB,
                sector,
                None,
                Some((sig("ext4", "whole-uuid", Some("root")), &["/"])),
                Vec::new(),
                disk::LvmStatus::NotInstalled,
            )
        }
    }

    const GPT_FSTAB: &str = "\
# /etc/fstab
/dev/mapper/vg0-root /               ext4    errors=remount-ro 0       1
UUID=boot-fs-uuid  /boot           ext4    defaults        0       2
/dev/disk/by-uuid/5A1B-2C3D  /boot/efi       vfat    umask=0077      0       1
/dev/vg0/swap_1    none            swap    sw              0       0
tmpfs /tmp tmpfs defaults 0 0
";
    const MBR_FSTAB: &str = "\
UUID=root-uuid / ext4 defaults,noatime 0 1
UUID=swap-uuid none swap sw 0 0
";

    fn used(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// A filesystem as the tests compare it: (source, fstype, uuid, label, used,
    /// mountpoint, options).
    type FsOwned = (
        Source,
        String,
        String,
        Option<String>,
        u64,
        Option<String>,
        String,
    );
    /// The same, as the tables write it.
    type FsRow<'a> = (
        Source,
        &'a str,
        &'a str,
        Option<&'a str>,
        u64,
        Option<&'a str>,
        &'a str,
    );

    fn fs_rows(l: &Layout) -> Vec<FsOwned> {
        l.filesystems
            .iter()
            .map(|f| {
                (
                    f.source.clone(),
                    f.fstype.clone(),
                    f.uuid.clone().unwrap_or_default(),
                    f.label.clone(),
                    f.used_bytes.0,
                    f.mountpoint.clone(),
                    f.mount_options.join(","),
                )
            })
            .collect()
    }

    fn want_rows(rows: &[FsRow]) -> Vec<FsOwned> {
        rows.iter()
            .map(|(s, t, u, l, used, m, o)| {
                (
                    s.clone(),
                    t.to_string(),
                    u.to_string(),
                    l.map(Into::into),
                    *used,
                    m.map(Into::into),
                    o.to_string(),
                )
            })
            .collect()
    }

    fn lv_source(name: &str) -> Source {
        Source::Lv {
            vg: "vg0".into(),
            name: name.into(),
        }
    }

    #[test]
    fn capture_reads_tables_filesystems_lvm_swap_and_growable() {
        use captured::*;
        struct Case {
            what: &'static str,
            inv: Make,
            fstab: &'static str,
            used: Vec<(&'static str, u64)>,
            table: Table,
            /// (number, start MiB, size MiB, type GUID or MBR byte, name, growable)
            parts: Vec<(u32, u64, u64, &'static str, &'static str, bool)>,
            fs: Vec<FsRow<'static>>,
            vgs: Vec<(&'static str, Vec<u32>)>,
            /// (name, bytes, growable)
            lvs: Vec<(&'static str, u64, bool)>,
            swap: Vec<(Source, u64)>,
        }
        const G: u64 = 1 << 30;
        let cases = vec![
            Case {
                what: "GPT with ESP, /boot and an LVM PV holding root and swap",
                inv: gpt_lvm,
                fstab: GPT_FSTAB,
                used: vec![("/", 3 * G), ("/boot", 100 * MIB), ("5A1B-2C3D", 6 * MIB)],
                table: Table::Gpt {
                    disk_guid: Uuid::parse_str("8c2f4e7a-51d3-4b6e-9a0f-2d7c6b5e4a31").unwrap(),
                },
                parts: vec![
                    (1, 1, 1, BIOS_BOOT, "bios", false),
                    (2, 2, 512, ESP, "esp", false),
                    (3, 514, 1024, LINUX, "boot", false),
                    (4, 1538, 20 * 1024 - 1539, LINUX_LVM, "lvm", true),
                ],
                fs: vec![
                    (
                        Source::Partition(2),
                        "vfat",
                        "5A1B-2C3D",
                        Some("EFI"),
                        6 * MIB,
                        Some("/boot/efi"),
                        "umask=0077",
                    ),
                    (
                        Source::Partition(3),
                        "ext4",
                        "boot-fs-uuid",
                        Some("boot"),
                        100 * MIB,
                        Some("/boot"),
                        "defaults",
                    ),
                    (
                        lv_source("root"),
                        "ext4",
                        "root-fs-uuid",
                        None,
                        3 * G,
                        Some("/"),
                        "errors=remount-ro",
                    ),
                ],
                vgs: vec![("vg0", vec![4])],
                lvs: vec![("root", 8 * G, true), ("swap_1", 2 * G, false)],
                swap: vec![(lv_source("swap_1"), 2 * G)],
            },
            Case {
                what: "MBR with root, swap and an unmounted /srv not in fstab",
                inv: mbr_plain,
                fstab: MBR_FSTAB,
                used: vec![("/", 5 * G)],
                table: Table::Mbr {
                    disk_id: 0x1234_abcd,
                },
                parts: vec![
                    (1, 1, 30 * 1024, "0x83", "", true),
                    (2, 30 * 1024 + 1, 2048, "0x82", "", false),
                    (3, 32 * 1024 + 1, 4096, "0x83", "", false),
                ],
                fs: vec![
                    // fstab writes the UUID in another case: still the same filesystem.
                    (
                        Source::Partition(1),
                        "ext4",
                        "ROOT-UUID",
                        None,
                        5 * G,
                        Some("/"),
                        "defaults,noatime",
                    ),
                    // Not measured: recorded as full, so it never shrinks.
                    (
                        Source::Partition(3),
                        "xfs",
                        "srv-uuid",
                        Some("srv"),
                        4 * G,
                        None,
                        "",
                    ),
                ],
                vgs: vec![],
                lvs: vec![],
                swap: vec![(Source::Partition(2), 2 * G)],
            },
            Case {
                what: "ext4 on the whole disk, mounted but not in fstab",
                inv: whole_disk,
                fstab: "# UNCONFIGURED FSTAB FOR BASE SYSTEM\n",
                used: vec![("/", 40 * G)],
                table: Table::None,
                parts: vec![],
                fs: vec![(
                    Source::Disk,
                    "ext4",
                    "whole-uuid",
                    Some("root"),
                    40 * G,
                    Some("/"),
                    "",
                )],
                vgs: vec![],
                lvs: vec![],
                swap: vec![],
            },
        ];
        for case in &cases {
            for sector in [SectorSize::B512, SectorSize::B4096] {
                let what = format!("{} ({sector}-byte sectors)", case.what);
                let inv = (case.inv)(sector.bytes());
                let l = capture(
                    &inv,
                    "/dev/vda",
                    &crate::fstab::Fstab::parse(case.fstab),
                    &used(&case.used),
                )
                .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(l.schema, SCHEMA, "{what}");
                assert_eq!(l.table, case.table, "{what}");
                assert_eq!(l.disk.logical_sector, sector, "{what}");
                assert_eq!(l.disk.physical_sector, 4096, "{what}");
                let per_mib = MIB / sector.bytes();
                let parts: Vec<_> = l
                    .partitions
                    .iter()
                    .map(|p| {
                        let kind = match (p.type_guid, p.mbr_type) {
                            (Some(g), None) => g.to_string(),
                            (None, Some(t)) => format!("0x{t:02x}"),
                            other => panic!("{what}: partition {} has type {other:?}", p.number),
                        };
                        (
                            p.number,
                            p.start_lba.0,
                            p.size_lba.0,
                            kind,
                            p.name.clone(),
                            p.growable,
                        )
                    })
                    .collect();
                let want: Vec<_> = case
                    .parts
                    .iter()
                    .map(|&(n, s, z, t, name, g)| {
                        (
                            n,
                            s * per_mib,
                            z * per_mib,
                            t.to_string(),
                            name.to_string(),
                            g,
                        )
                    })
                    .collect();
                assert_eq!(parts, want, "{what}: partitions");
                if matches!(l.table, Table::Gpt { .. }) {
                    assert_eq!(
                        l.partitions[0].part_uuid,
                        Some(Uuid::parse_str("00000000-0000-4000-8000-000000000001").unwrap()),
                        "{what}"
                    );
                } else {
                    assert!(l.partitions.iter().all(|p| p.part_uuid.is_none()), "{what}");
                }
                assert_eq!(fs_rows(&l), want_rows(&case.fs), "{what}: filesystems");
                let vgs: Vec<_> = l
                    .lvm
                    .vgs
                    .iter()
                    .map(|v| {
                        (
                            v.name.as_str(),
                            v.pvs.iter().map(|p| p.partition).collect::<Vec<_>>(),
                        )
                    })
                    .collect();
                assert_eq!(vgs, case.vgs, "{what}: VGs (only the local PV)");
                let lvs: Vec<_> = l
                    .lvm
                    .lvs
                    .iter()
                    .map(|v| (v.name.as_str(), v.size_bytes.0, v.growable))
                    .collect();
                assert_eq!(lvs, case.lvs, "{what}: LVs (no snapshot)");
                let swap: Vec<_> = l
                    .swap
                    .iter()
                    .map(|s| (s.source.clone(), s.size_bytes.0))
                    .collect();
                assert_eq!(swap, case.swap, "{what}: swap");
            }
        }
    }

    #[test]
    fn a_captured_layout_plans_back_onto_the_same_disk_unchanged() {
        use captured::*;
        let cases: [(captured::Make, &str); 3] = [
            (gpt_lvm, GPT_FSTAB),
            (mbr_plain, MBR_FSTAB),
            (whole_disk, ""),
        ];
        for (inv, fstab) in cases {
            for sector in [512, 4096] {
                let inv = inv(sector);
                let l = capture(
                    &inv,
                    "vda",
                    &crate::fstab::Fstab::parse(fstab),
                    &used(&[("/", 1 << 30)]),
                )
                .unwrap();
                let what = format!("{:?} with {sector}-byte sectors", l.table);
                let p = plan(&l, l.disk.size_bytes, l.disk.logical_sector)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(p.unchanged(), "{what}:\n{p}");
                assert_eq!(p.table, l.table, "{what}");
                let back: Vec<Partition> = p
                    .partitions
                    .iter()
                    .map(|q| Partition {
                        number: q.number,
                        start_lba: q.start_lba,
                        size_lba: q.size_lba,
                        type_guid: q.type_guid,
                        mbr_type: q.mbr_type,
                        part_uuid: q.part_uuid,
                        name: q.name.clone(),
                        attributes: q.attributes,
                        growable: l
                            .partitions
                            .iter()
                            .any(|o| o.number == q.number && o.growable),
                    })
                    .collect();
                assert_eq!(back, l.partitions, "{what}");
                // The property that matters: the plan puts every partition at the very
                // bytes the disk has it.
                let on_disk: Vec<(u32, u64, u64)> = inv.disks[0]
                    .partitions
                    .iter()
                    .map(|q| (q.number, q.start.0, q.size.0))
                    .collect();
                let planned: Vec<(u32, u64, u64)> = p
                    .partitions
                    .iter()
                    .map(|q| (q.number, q.start_lba.0 * sector, q.size_lba.0 * sector))
                    .collect();
                assert_eq!(planned, on_disk, "{what}");
                let lvs: Vec<(&str, Bytes)> = p
                    .lvs
                    .iter()
                    .map(|v| (v.name.as_str(), v.size_bytes))
                    .collect();
                let want: Vec<(&str, Bytes)> = l
                    .lvm
                    .lvs
                    .iter()
                    .map(|v| (v.name.as_str(), v.size_bytes))
                    .collect();
                assert_eq!(lvs, want, "{what}");

                // On a larger disk, what capture marked growable is what grows.
                if !l.partitions.is_empty() {
                    let bigger = plan(
                        &l,
                        Bytes(l.disk.size_bytes.0 + (10 << 30)),
                        l.disk.logical_sector,
                    )
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                    let grown: Vec<u32> = bigger
                        .partitions
                        .iter()
                        .filter(|q| q.change == Change::Grown)
                        .map(|q| q.number)
                        .collect();
                    let marked: Vec<u32> = l
                        .partitions
                        .iter()
                        .filter(|q| q.growable)
                        .map(|q| q.number)
                        .collect();
                    assert_eq!(grown, marked, "{what}");
                }
            }
        }
    }

    #[test]
    fn a_captured_layout_is_schema_1_json_that_reads_back_equal() {
        let l = capture(
            &captured::gpt_lvm(512),
            "vda",
            &crate::fstab::Fstab::parse(GPT_FSTAB),
            &used(&[("/", 1 << 30)]),
        )
        .unwrap();
        let text = l.to_json_pretty();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["schema"], 1);
        assert_eq!(v["table"]["type"], "gpt");
        assert_eq!(v["partitions"][3]["growable"], true);
        assert_eq!(Layout::from_json(&text).unwrap(), l);
    }

    #[test]
    fn capture_refuses_a_missing_or_unreadable_disk() {
        let fstab = crate::fstab::Fstab::parse("");
        let mut inv = captured::whole_disk(512);
        assert_eq!(
            capture(&inv, "/dev/vdz", &fstab, &BTreeMap::new()),
            Err(CaptureError::NoSuchDisk("/dev/vdz".into()))
        );
        let state = crate::disk::Readability::IoError("Input/output error (os error 5)".into());
        inv.disks[0].state = state.clone();
        let err = capture(&inv, "vda", &fstab, &BTreeMap::new()).unwrap_err();
        assert_eq!(
            err,
            CaptureError::Unreadable {
                disk: "vda".into(),
                state
            }
        );
        assert_eq!(
            err.to_string(),
            "disk vda cannot be captured: I/O error: Input/output error (os error 5)"
        );
    }

    #[test]
    fn capture_refuses_a_partition_the_table_on_the_disk_does_not_have() {
        let mut inv = captured::gpt_lvm(512);
        inv.disks[0].partitions[2].type_guid = None;
        let err = capture(
            &inv,
            "vda",
            &crate::fstab::Fstab::parse(""),
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("partition 3 is known to the kernel but not in the table"),
            "{err}"
        );
    }
}
