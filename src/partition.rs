//! Partition tables on disks and disk images: [`write`] puts a [`PartitionPlan`] on a
//! device as GPT (with the `gpt` crate: protective MBR, primary and backup headers and
//! entry arrays), and [`read`] gives back the table a device holds, GPT or MBR
//! (extended partitions included), or says there is none.
//!
//! Owns: on-disk table formats and the order of writes. Does not own: planning
//! (`layout`), telling the kernel to re-read a table (`blockdev --rereadpt` by the
//! caller), making filesystems. The reader parses GPT itself rather than with the
//! `gpt` crate, because the crate asserts on an unusual entry size and allocates
//! whatever entry count a header claims: a damaged or hostile disk must come back as
//! [`PartitionTable::Damaged`], never as a panic or an abort in PID 1.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use gpt::disk::LogicalBlockSize;
use gpt::header::HeaderBuilder;
use gpt::mbr::{PartRecord, ProtectiveMBR};
use gpt::partition_types::{OperatingSystem, Type};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::layout::{self, Lba, Partition, PartitionPlan, SectorSize, Sectors, Table};

/// What a device's first and last sectors say.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum PartitionTable {
    Gpt(GptTable),
    Mbr(MbrTable),
    /// No partition table (blank, or a filesystem on the whole disk).
    None,
    /// Something that claims to be a table but cannot be read: a protective MBR with
    /// no valid GPT header, an MBR whose extended chain is broken.
    Damaged {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GptTable {
    pub sector_size: SectorSize,
    pub disk_guid: Uuid,
    pub first_usable: Lba,
    pub last_usable: Lba,
    /// In entry order; `number` is the entry's index + 1, so gaps stay gaps.
    pub partitions: Vec<Partition>,
    /// What is wrong but did not stop reading (a damaged or misplaced backup header).
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MbrTable {
    pub sector_size: SectorSize,
    pub disk_id: u32,
    /// Primary partitions 1–4 (extended containers included), then logical ones from
    /// 5. An active (boot) flag is shown as attribute bit 2, GPT's "legacy BIOS bootable".
    pub partitions: Vec<Partition>,
}

/// GPT attribute bit 2: legacy BIOS bootable (and, for MBR partitions here, active).
pub const LEGACY_BIOS_BOOTABLE: u64 = 1 << 2;

impl PartitionTable {
    /// The layout's table kind for this table, if it is one.
    pub fn table(&self) -> Option<Table> {
        match self {
            PartitionTable::Gpt(g) => Some(Table::Gpt {
                disk_guid: g.disk_guid,
            }),
            PartitionTable::Mbr(m) => Some(Table::Mbr { disk_id: m.disk_id }),
            PartitionTable::None => Some(Table::None),
            PartitionTable::Damaged { .. } => None,
        }
    }

    pub fn partitions(&self) -> &[Partition] {
        match self {
            PartitionTable::Gpt(g) => &g.partitions,
            PartitionTable::Mbr(m) => &m.partitions,
            _ => &[],
        }
    }
}

/// The logical sector size of `path`: the kernel's for a block device (from sysfs),
/// else where a GPT header is found in an image file (512 if none is).
pub fn sector_size(path: &Path) -> Result<SectorSize> {
    let meta = std::fs::metadata(path).with_context(|| format!("inspecting {}", path.display()))?;
    if meta.file_type().is_block_device() {
        let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
        let sys = format!("/sys/dev/block/{major}:{minor}/queue/logical_block_size");
        let text = std::fs::read_to_string(&sys)
            .with_context(|| format!("reading the sector size of {} from {sys}", path.display()))?;
        let n: u64 = text
            .trim()
            .parse()
            .with_context(|| format!("parsing {sys}"))?;
        return SectorSize::try_from(n).map_err(anyhow::Error::msg);
    }
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    for s in [SectorSize::B512, SectorSize::B4096] {
        let mut sig = [0u8; 8];
        if f.seek(SeekFrom::Start(s.bytes())).is_ok()
            && f.read_exact(&mut sig).is_ok()
            && &sig == b"EFI PART"
        {
            return Ok(s);
        }
    }
    Ok(SectorSize::B512)
}

/// Write `plan` as a GPT on `path` (an image file or a block device of exactly the
/// plan's size and sector size). The reserved areas at both ends are zeroed first
/// (old MBR boot code, old tables); then the entry arrays and backup header are
/// written, then the primary header, and the protective MBR last, so an interrupted
/// write leaves no valid-looking primary table. Synced before returning. The kernel's
/// view of a block device is not refreshed here.
pub fn write(path: &Path, plan: &PartitionPlan) -> Result<()> {
    let Table::Gpt { disk_guid } = plan.table else {
        bail!("writing {}: only GPT tables can be written", path.display());
    };
    layout::check_plan(plan)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("refusing to write a bad plan to {}", path.display()))?;
    let mut dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {} for writing", path.display()))?;
    let size = dev
        .seek(SeekFrom::End(0))
        .with_context(|| format!("measuring {}", path.display()))?;
    ensure!(
        size == plan.disk_bytes.0,
        "{} has {size} bytes but the plan is for a disk of {} bytes",
        path.display(),
        plan.disk_bytes.0
    );
    if std::fs::metadata(path)?.file_type().is_block_device() {
        let actual = sector_size(path)?;
        ensure!(
            actual == plan.sector_size,
            "{} has {actual}-byte sectors but the plan is for {}-byte sectors",
            path.display(),
            plan.sector_size
        );
    }
    let s = plan.sector_size.bytes();
    let lb = LogicalBlockSize::try_from(s).map_err(anyhow::Error::from)?;
    let total = size / s;
    let gpt_err = |what: &str| format!("{what} for {}", path.display());
    let mut primary = HeaderBuilder::new()
        .disk_guid(disk_guid)
        .backup_lba(total - 1)
        .primary(true)
        .build(lb)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| gpt_err("building the primary GPT header"))?;
    let mut backup = HeaderBuilder::from_header(&primary)
        .primary(false)
        .build(lb)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| gpt_err("building the backup GPT header"))?;
    ensure!(
        (Lba(primary.first_usable), Lba(primary.last_usable))
            == (plan.first_usable, plan.last_usable),
        "the plan's usable sectors {}..={} do not match a GPT on {} ({}..={})",
        plan.first_usable.0,
        plan.last_usable.0,
        path.display(),
        primary.first_usable,
        primary.last_usable
    );

    // Zero both reserved areas: LBA 0 up to the first usable sector, and after the
    // last usable one to the end.
    let zero = |dev: &mut File, from: u64, to: u64| -> Result<()> {
        dev.seek(SeekFrom::Start(from * s))?;
        let chunk = vec![0u8; usize::try_from((to - from) * s)?];
        dev.write_all(&chunk)?;
        Ok(())
    };
    zero(&mut dev, 0, primary.first_usable)
        .with_context(|| format!("clearing the start of {}", path.display()))?;
    zero(&mut dev, primary.last_usable + 1, total)
        .with_context(|| format!("clearing the end of {}", path.display()))?;

    for p in &plan.partitions {
        let type_guid = p
            .type_guid
            .with_context(|| format!("partition {} has no type GUID", p.number))?;
        ensure!(
            (1..=layout::GPT_ENTRIES).contains(&p.number),
            "partition number {} does not fit a {}-entry GPT",
            p.number,
            layout::GPT_ENTRIES
        );
        ensure!(
            p.name.encode_utf16().count() <= 36,
            "partition {}'s name is too long for GPT",
            p.number
        );
        let entry = gpt::partition::Partition {
            part_type_guid: Type {
                guid: type_guid,
                os: OperatingSystem::None,
            },
            part_guid: p.part_uuid.unwrap_or_else(Uuid::new_v4),
            first_lba: p.start_lba.0,
            last_lba: p.start_lba.0 + p.size_lba.0 - 1,
            flags: p.attributes,
            name: p.name.clone(),
        };
        let index = u64::from(p.number - 1);
        for h in [&primary, &backup] {
            entry
                .write_to_device(&mut dev, index, h.part_start, lb, h.part_size)
                .with_context(|| format!("writing GPT entry {} on {}", p.number, path.display()))?;
        }
    }
    // The header writers compute the entry array's CRC from what is on the device.
    backup
        .write_backup(&mut dev, lb)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| gpt_err("writing the backup GPT header"))?;
    primary
        .write_primary(&mut dev, lb)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| gpt_err("writing the primary GPT header"))?;
    let pmbr_size = u32::try_from(total - 1).unwrap_or(u32::MAX);
    ProtectiveMBR::with_lb_size(pmbr_size)
        .overwrite_lba0(&mut dev)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| gpt_err("writing the protective MBR"))?;
    dev.sync_all()
        .with_context(|| format!("syncing {}", path.display()))
}

/// The partition table on `path`, with the sector size from [`sector_size`].
pub fn read(path: &Path) -> Result<PartitionTable> {
    read_with_sector(path, sector_size(path)?)
}

/// The partition table on `path`, reading it with `sector`-byte sectors.
pub fn read_with_sector(path: &Path, sector: SectorSize) -> Result<PartitionTable> {
    let mut dev = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = dev
        .seek(SeekFrom::End(0))
        .with_context(|| format!("measuring {}", path.display()))?;
    let s = sector.bytes();
    let total = size / s;
    if total < 2 {
        return Ok(PartitionTable::None);
    }
    let mut lba0 = vec![0u8; 512];
    read_at(&mut dev, 0, &mut lba0)
        .with_context(|| format!("reading sector 0 of {}", path.display()))?;
    let mbr = parse_mbr_sector(&lba0);

    let primary = read_gpt_header(&mut dev, 1, sector, total)
        .with_context(|| format!("reading the primary GPT header of {}", path.display()))?;
    let backup_lba = match &primary {
        Ok(h) => h.alternate_lba,
        Err(_) => total - 1,
    };
    let backup = if backup_lba < total {
        read_gpt_header(&mut dev, backup_lba, sector, total)
            .with_context(|| format!("reading the backup GPT header of {}", path.display()))?
    } else {
        Err(format!("it would lie at sector {backup_lba}, past the end"))
    };
    let mut problems = Vec::new();
    let header = match (primary, backup) {
        (Ok(p), Ok(_)) => {
            if backup_lba != total - 1 {
                problems.push(format!(
                    "the backup GPT header is at sector {backup_lba}, not at the end of the disk ({}): the disk grew",
                    total - 1
                ));
            }
            p
        }
        (Ok(p), Err(why)) => {
            problems.push(format!("the backup GPT header is damaged: {why}"));
            p
        }
        (Err(why), Ok(b)) => {
            problems.push(format!("the primary GPT header is damaged: {why}"));
            b
        }
        (Err(p), Err(b)) => {
            return Ok(match mbr {
                Some(records) if records.iter().any(|r| r.os_type == 0xee) => {
                    PartitionTable::Damaged {
                        reason: format!(
                            "a protective MBR but no valid GPT header (primary: {p}; backup: {b})"
                        ),
                    }
                }
                Some(_) => read_mbr(&mut dev, &lba0, sector, total)
                    .with_context(|| format!("reading the MBR partitions of {}", path.display()))?,
                None => PartitionTable::None,
            });
        }
    };
    let partitions = read_gpt_entries(&mut dev, &header, sector)
        .with_context(|| format!("reading the GPT entries of {}", path.display()))?;
    for p in &partitions {
        let end = p.start_lba.0.saturating_add(p.size_lba.0);
        if p.start_lba.0 < header.first_usable || end > header.last_usable + 1 {
            problems.push(format!(
                "partition {} lies outside the usable sectors",
                p.number
            ));
        }
    }
    Ok(PartitionTable::Gpt(GptTable {
        sector_size: sector,
        disk_guid: header.disk_guid,
        first_usable: Lba(header.first_usable),
        last_usable: Lba(header.last_usable),
        partitions,
        problems,
    }))
}

fn read_at(dev: &mut File, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    dev.seek(SeekFrom::Start(offset))?;
    dev.read_exact(buf)
}

/// The fields of a GPT header we use.
struct GptHeader {
    alternate_lba: u64,
    first_usable: u64,
    last_usable: u64,
    disk_guid: Uuid,
    entries_lba: u64,
    entries: u32,
    entry_size: u32,
    entries_crc: u32,
}

/// Largest entry array we read (the usual one is 16 KiB).
const MAX_ENTRY_ARRAY: u64 = 1 << 20;

/// The header at `lba`, or why it is not valid (signature, CRC, sizes, bounds, the
/// entry array's CRC). I/O errors are errors.
fn read_gpt_header(
    dev: &mut File,
    lba: u64,
    sector: SectorSize,
    total: u64,
) -> Result<std::result::Result<GptHeader, String>> {
    let s = sector.bytes();
    let mut b = vec![0u8; usize::try_from(s)?];
    read_at(dev, lba * s, &mut b)?;
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |o: usize| u64::from(u32_at(o)) | u64::from(u32_at(o + 4)) << 32;
    if &b[..8] != b"EFI PART" {
        return Ok(Err("no GPT signature".into()));
    }
    let header_size = u32_at(12) as usize;
    if !(92..=b.len()).contains(&header_size) {
        return Ok(Err(format!("header size {header_size} is out of range")));
    }
    let mut copy = b[..header_size].to_vec();
    copy[16..20].fill(0);
    if crc32fast::hash(&copy) != u32_at(16) {
        return Ok(Err("header checksum mismatch".into()));
    }
    let mut guid = [0u8; 16];
    guid.copy_from_slice(&b[56..72]);
    let h = GptHeader {
        alternate_lba: u64_at(32),
        first_usable: u64_at(40),
        last_usable: u64_at(48),
        disk_guid: Uuid::from_bytes_le(guid),
        entries_lba: u64_at(72),
        entries: u32_at(80),
        entry_size: u32_at(84),
        entries_crc: u32_at(88),
    };
    if u64_at(24) != lba {
        return Ok(Err(format!(
            "it says it lives at sector {}, not {lba}",
            u64_at(24)
        )));
    }
    let array = u64::from(h.entries) * u64::from(h.entry_size);
    if h.entry_size < 128 || !h.entry_size.is_power_of_two() || array > MAX_ENTRY_ARRAY {
        return Ok(Err(format!(
            "{} entries of {} bytes is not a usable entry array",
            h.entries, h.entry_size
        )));
    }
    let array_end = h.entries_lba.saturating_add(array.div_ceil(s));
    if h.first_usable > h.last_usable || h.last_usable >= total || array_end > total {
        return Ok(Err(
            "its usable sectors or entry array lie outside the disk".into(),
        ));
    }
    let mut entries = vec![0u8; usize::try_from(array)?];
    read_at(dev, h.entries_lba * s, &mut entries)?;
    if crc32fast::hash(&entries) != h.entries_crc {
        return Ok(Err("entry array checksum mismatch".into()));
    }
    Ok(Ok(h))
}

fn read_gpt_entries(dev: &mut File, h: &GptHeader, sector: SectorSize) -> Result<Vec<Partition>> {
    let size = h.entry_size as usize;
    let mut buf = vec![0u8; h.entries as usize * size];
    read_at(dev, h.entries_lba * sector.bytes(), &mut buf)?;
    let mut out = Vec::new();
    for (i, e) in buf.chunks_exact(size).enumerate() {
        let guid = |o: usize| {
            let mut g = [0u8; 16];
            g.copy_from_slice(&e[o..o + 16]);
            Uuid::from_bytes_le(g)
        };
        let type_guid = guid(0);
        if type_guid.is_nil() {
            continue;
        }
        let u64_at = |o: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&e[o..o + 8]);
            u64::from_le_bytes(v)
        };
        let (first, last) = (u64_at(32), u64_at(40));
        let name: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        out.push(Partition {
            number: u32::try_from(i + 1)?,
            start_lba: Lba(first),
            size_lba: Sectors(last.saturating_sub(first).saturating_add(1)),
            type_guid: Some(type_guid),
            mbr_type: None,
            part_uuid: Some(guid(16)),
            name: String::from_utf16_lossy(&name),
            attributes: u64_at(48),
            growable: false,
        });
    }
    Ok(out)
}

/// The four records of an MBR sector, or `None` if it is not one: no 55 AA signature,
/// a boot indicator other than 0x00/0x80, or the boot sector of a FAT, exFAT or NTFS
/// filesystem on the whole disk (which ends in 55 AA too; libblkid skips those alike).
fn parse_mbr_sector(b: &[u8]) -> Option<[PartRecord; 4]> {
    if b.len() < 512 || b[510..512] != [0x55, 0xaa] {
        return None;
    }
    let jump = (b[0] == 0xeb && b[2] == 0x90) || b[0] == 0xe9;
    let fs_name =
        &b[54..57] == b"FAT" || &b[82..85] == b"FAT" || &b[3..7] == b"NTFS" || &b[3..8] == b"EXFAT";
    if jump && fs_name {
        return None;
    }
    let mut records = [PartRecord::zero(); 4];
    for (i, r) in records.iter_mut().enumerate() {
        let raw = &b[446 + 16 * i..462 + 16 * i];
        *r = PartRecord::from_bytes(raw).ok()?;
        if r.boot_indicator & 0x7f != 0 {
            return None;
        }
    }
    Some(records)
}

fn is_extended(t: u8) -> bool {
    matches!(t, 0x05 | 0x0f | 0x85)
}

/// Logical partitions are chained: each EBR's first record is a partition relative to
/// the EBR, its second the next EBR relative to the extended partition's start.
const MAX_LOGICAL: u32 = 128;

fn read_mbr(dev: &mut File, lba0: &[u8], sector: SectorSize, total: u64) -> Result<PartitionTable> {
    let Some(records) = parse_mbr_sector(lba0) else {
        return Ok(PartitionTable::None);
    };
    let disk_id = u32::from_le_bytes([lba0[440], lba0[441], lba0[442], lba0[443]]);
    let record = |number: u32, r: &PartRecord, base: u64| Partition {
        number,
        start_lba: Lba(base + u64::from(r.lb_start)),
        size_lba: Sectors(u64::from(r.lb_size)),
        type_guid: None,
        mbr_type: Some(r.os_type),
        part_uuid: None,
        name: String::new(),
        attributes: if r.boot_indicator == 0x80 {
            LEGACY_BIOS_BOOTABLE
        } else {
            0
        },
        growable: false,
    };
    let mut partitions = Vec::new();
    let mut extended = None;
    for (i, r) in records.iter().enumerate() {
        if r.os_type == 0 || r.lb_size == 0 {
            continue;
        }
        partitions.push(record(u32::try_from(i + 1)?, r, 0));
        if is_extended(r.os_type) && extended.is_none() {
            extended = Some(u64::from(r.lb_start));
        }
    }
    if let Some(ext_start) = extended {
        let mut ebr = ext_start;
        let mut number = 5;
        let mut buf = vec![0u8; 512];
        loop {
            if number >= 5 + MAX_LOGICAL || ebr >= total {
                return Ok(PartitionTable::Damaged {
                    reason: format!("the chain of logical partitions is broken at sector {ebr}"),
                });
            }
            read_at(dev, ebr * sector.bytes(), &mut buf)?;
            let Some(rs) = parse_mbr_sector(&buf) else {
                return Ok(PartitionTable::Damaged {
                    reason: format!("no extended boot record at sector {ebr}"),
                });
            };
            if rs[0].os_type != 0 && rs[0].lb_size != 0 {
                partitions.push(record(number, &rs[0], ebr));
                number += 1;
            }
            if !is_extended(rs[1].os_type) || rs[1].lb_size == 0 {
                break;
            }
            let next = ext_start + u64::from(rs[1].lb_start);
            if next <= ebr {
                return Ok(PartitionTable::Damaged {
                    reason: format!("the chain of logical partitions loops back at sector {ebr}"),
                });
            }
            ebr = next;
        }
    }
    Ok(PartitionTable::Mbr(MbrTable {
        sector_size: sector,
        disk_id,
        partitions,
    }))
}
