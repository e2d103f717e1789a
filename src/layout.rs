//! The primary disk's layout as a versioned JSON document ([`Layout`], schema 1, described
//! in `docs/layout.md`), and the pure planner that fits it onto a target disk
//! ([`plan`] → [`PartitionPlan`]).
//!
//! Owns: the layout schema, the units of disk geometry ([`Bytes`], [`Lba`], [`Sectors`],
//! [`SectorSize`]), the GPT/MBR reserved areas, 1 MiB alignment, the headroom rule for
//! shrinking, and which partition and logical volume grow.
//! Does not own: reading a layout from a live system (the disk inventory), writing a
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
            // The LV holding the largest filesystem.
            growers.extend(
                (0..lvs.len())
                    .filter(|&i| {
                        layout.filesystems.iter().any(|f| {
                            matches!(&f.source, Source::Lv { vg, name } if *vg == lvs[i].vg && *name == lvs[i].name)
                        })
                    })
                    .max_by_key(|&i| (lvs[i].size_bytes, std::cmp::Reverse(i))),
            );
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
}
