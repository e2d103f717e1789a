//! What is on a disk's bytes, through libblkid (the `blkid` crate, linked
//! statically): the partition table and its entries, and filesystem, swap, LVM, LUKS
//! and RAID signatures with their UUIDs and labels.
//!
//! Does not own: where disks are (`sysfs`), or deciding what a result means for a
//! disk's role (`identify`). Works the same on block devices and image files: each
//! partition is probed as a range of the whole disk, so no partition nodes are needed.
//! Every failure is a value: the caller gets a [`DiskProbe`] whatever happens.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use blkid::prober::{ProbeState, Prober};
use blkid::{PartitionsFlags, SuperblocksFlags};
use serde::{Deserialize, Serialize};

use super::{Bytes, Readability};

/// How much of the disk's head is read to tell a blank disk from a used one.
const HEAD: u64 = 1 << 20;

/// A partition table found on a disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionTable {
    /// libblkid's name: `gpt`, `dos`, ...
    pub kind: String,
    /// GPT disk GUID, or the MBR disk identifier (`0x1234abcd`).
    pub id: Option<String>,
}

/// A signature libblkid recognised: a filesystem, swap, an LVM PV, a LUKS header, a
/// RAID member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// libblkid's `TYPE`: `ext4`, `xfs`, `vfat`, `swap`, `LVM2_member`,
    /// `crypto_LUKS`, `linux_raid_member`.
    pub kind: String,
    /// `filesystem`, `raid`, `crypto` or `other`.
    pub usage: Option<String>,
    pub uuid: Option<String>,
    pub label: Option<String>,
    pub version: Option<String>,
    /// The superblock's checksum does not match its contents.
    pub bad_checksum: bool,
}

/// One entry of a partition table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbedPartition {
    pub number: u32,
    pub start: Bytes,
    pub size: Bytes,
    pub type_guid: Option<String>,
    pub uuid: Option<String>,
    pub name: Option<String>,
    pub extended: bool,
    pub signature: Option<Signature>,
    pub error: Option<String>,
    /// libblkid found more than one signature in the partition.
    pub ambivalent: bool,
}

/// Everything read from one disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskProbe {
    pub state: Readability,
    pub table: Option<PartitionTable>,
    pub signature: Option<Signature>,
    pub partitions: Vec<ProbedPartition>,
}

impl DiskProbe {
    pub fn empty(state: Readability) -> DiskProbe {
        DiskProbe {
            state,
            table: None,
            signature: None,
            partitions: Vec::new(),
        }
    }
}

/// Probe a whole disk (block device or image file) whose logical sector size is
/// `sector` (libblkid cannot ask an image file, and a 4Kn disk's GPT is at 4096).
pub fn disk(path: &Path, sector: Bytes) -> DiskProbe {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return DiskProbe::empty(Readability::IoError(format!("opening: {e}"))),
    };
    let mut head = Vec::new();
    if let Err(e) = (&file).take(HEAD).read_to_end(&mut head) {
        return DiskProbe::empty(Readability::IoError(format!("reading the first MiB: {e}")));
    }
    let blank = head.iter().all(|&b| b == 0);

    let whole = match probe_range(&file, Bytes(0), None, sector, true) {
        Ok(w) => w,
        Err(e) => return DiskProbe::empty(Readability::IoError(e)),
    };
    let (table, partitions) = match partition_list(&file, sector) {
        Ok(t) => t,
        Err(e) => return DiskProbe::empty(Readability::IoError(e)),
    };

    let mut state = match (&whole, &table) {
        (Found::Ambivalent, _) => {
            Readability::Ambivalent("more than one signature on the whole disk".into())
        }
        (Found::Nothing, None) if blank => Readability::Blank,
        (Found::Nothing, None) => Readability::NoPartitionTable,
        (Found::Signature(s), _) if s.bad_checksum => {
            Readability::BadSuperblock(format!("{} on the whole disk", s.kind))
        }
        _ => Readability::Readable,
    };
    if state.is_readable() {
        // A volume's trouble is the disk's trouble: the console shows the disk.
        let bad = partitions
            .iter()
            .find_map(|p| match (&p.error, &p.signature) {
                _ if p.ambivalent => Some(Readability::Ambivalent(format!(
                    "more than one signature on partition {}",
                    p.number
                ))),
                (Some(e), _) => Some(Readability::IoError(format!("partition {}: {e}", p.number))),
                (None, Some(s)) if s.bad_checksum => Some(Readability::BadSuperblock(format!(
                    "{} on partition {}",
                    s.kind, p.number
                ))),
                _ => None,
            });
        if let Some(bad) = bad {
            state = bad;
        }
    }
    DiskProbe {
        state,
        table,
        signature: match whole {
            Found::Signature(s) => Some(s),
            _ => None,
        },
        partitions,
    }
}

/// Probe one volume (a partition node, an LV) for a signature.
pub fn volume(path: &Path) -> Result<Option<Signature>, String> {
    let file = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    match probe_range(&file, Bytes(0), None, Bytes(512), false)? {
        Found::Signature(s) => Ok(Some(s)),
        Found::Nothing => Ok(None),
        Found::Ambivalent => Err("more than one signature".into()),
    }
}

enum Found {
    Signature(Signature),
    Nothing,
    Ambivalent,
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

fn prober(
    file: &File,
    offset: Bytes,
    size: Option<Bytes>,
    sector: Bytes,
) -> Result<Prober, String> {
    let mut p = Prober::new().map_err(|e| err("allocating a libblkid probe", e))?;
    let off = i64::try_from(offset.0).map_err(|e| err("offset", e))?;
    let size = size
        .map(|s| i64::try_from(s.0))
        .transpose()
        .map_err(|e| err("size", e))?;
    p.set_device(file.as_raw_fd(), off, size)
        .map_err(|e| err("attaching the device to libblkid", e))?;
    let sector = u32::try_from(sector.0).map_err(|e| err("sector size", e))?;
    p.set_sector_size(sector)
        .map_err(|e| err("setting the sector size", e))?;
    Ok(p)
}

/// Superblock probing of `[offset, offset+size)` of `file`. With `with_table`, the
/// partitions chain runs too, so that libblkid ignores filesystems that a partition
/// table covers (a stale superblock inside partition 1 is not the disk's).
fn probe_range(
    file: &File,
    offset: Bytes,
    size: Option<Bytes>,
    sector: Bytes,
    with_table: bool,
) -> Result<Found, String> {
    let p = prober(file, offset, size, sector)?;
    p.enable_superblocks(true)
        .map_err(|e| err("enabling superblock probing", e))?;
    // BADCSUM: report a superblock whose checksum is wrong instead of hiding it, so
    // the console can say "bad superblock" rather than "nothing here".
    p.set_superblocks_flags(
        SuperblocksFlags::LABEL
            | SuperblocksFlags::UUID
            | SuperblocksFlags::TYPE
            | SuperblocksFlags::USAGE
            | SuperblocksFlags::VERSION
            | SuperblocksFlags::BADCSUM,
    )
    .map_err(|e| err("setting superblock flags", e))?;
    p.enable_partitions(with_table)
        .map_err(|e| err("enabling partition probing", e))?;
    let state = p.do_safe_probe().map_err(|e| err("probing", e))?;
    match state {
        ProbeState::Ambivalent => return Ok(Found::Ambivalent),
        ProbeState::NothingDetected => return Ok(Found::Nothing),
        ProbeState::Success | ProbeState::Done => {}
    }
    let value = |k: &str| p.lookup_value(k).ok().filter(|v| !v.is_empty());
    let Some(kind) = value("TYPE") else {
        // Only a partition table (PTTYPE): no signature on the whole disk.
        return Ok(Found::Nothing);
    };
    let mut bad_checksum = value("SBBADCSUM").is_some();
    if !bad_checksum && kind.starts_with("ext") {
        // libblkid before 2.39 does not check ext4's superblock checksum.
        let mut sb = [0u8; 1024];
        let at = offset.0.checked_add(1024).ok_or("offset out of range")?;
        file.read_exact_at(&mut sb, at)
            .map_err(|e| err("reading the ext superblock", e))?;
        bad_checksum = ext4_superblock_checksum_ok(&sb) == Some(false);
    }
    Ok(Found::Signature(Signature {
        kind,
        usage: value("USAGE"),
        uuid: value("UUID"),
        label: value("LABEL"),
        version: value("VERSION"),
        bad_checksum,
    }))
}

/// Whether an ext2/3/4 superblock's checksum matches; `None` when it has none (no
/// `metadata_csum` feature) or is not an ext superblock.
pub fn ext4_superblock_checksum_ok(sb: &[u8; 1024]) -> Option<bool> {
    const MAGIC: usize = 0x38;
    const RO_COMPAT: usize = 0x64;
    const METADATA_CSUM: u32 = 0x400;
    const CHECKSUM: usize = 0x3fc;
    let le32 = |at: usize| u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
    if u16::from_le_bytes([sb[MAGIC], sb[MAGIC + 1]]) != 0xef53
        || le32(RO_COMPAT) & METADATA_CSUM == 0
    {
        return None;
    }
    // ext4 stores the CRC32C register without the final inversion.
    Some(!crc32c(&sb[..CHECKSUM]) == le32(CHECKSUM))
}

/// CRC-32C (Castagnoli), bit by bit: it only ever runs over one 1 KiB superblock per
/// volume, which does not warrant a table or another dependency.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The partition table and its entries, each probed for a signature.
fn partition_list(
    file: &File,
    sector: Bytes,
) -> Result<(Option<PartitionTable>, Vec<ProbedPartition>), String> {
    let p = prober(file, Bytes(0), None, sector)?;
    p.enable_partitions(true)
        .map_err(|e| err("enabling partition probing", e))?;
    p.set_partitions_flags(PartitionsFlags::ENTRY_DETAILS)
        .map_err(|e| err("setting partition flags", e))?;
    // libblkid returns no list both when probing failed and when it decided there
    // is nothing to list (a filesystem on the whole disk); only errno tells them apart.
    let list = match p.part_list() {
        Ok(l) => l,
        Err(blkid::BlkIdError::Io(e)) if e.raw_os_error().is_some_and(|n| n != 0) => {
            return Err(err("reading the partition table", e));
        }
        Err(_) => return Ok((None, Vec::new())),
    };
    let Some(table) = list.get_table() else {
        return Ok((None, Vec::new()));
    };
    let kind = table.get_type().map(|t| t.to_string()).unwrap_or_default();
    let table = PartitionTable {
        id: table
            .get_id()
            .filter(|s| !s.is_empty())
            .map(|id| if kind == "dos" { format!("0x{id}") } else { id }),
        kind,
    };
    let parts = list
        .get_partitions()
        .map_err(|e| err("listing partitions", e))?;
    let mut out = Vec::new();
    for part in parts {
        let number = part.partno().map_err(|e| err("partition number", e))?;
        let start = part.start().map_err(|e| err("partition start", e))?;
        let size = part.size().map_err(|e| err("partition size", e))?;
        let (Ok(number), Some(start), Some(size)) = (
            u32::try_from(number),
            u64::try_from(start).ok().and_then(Bytes::from_512_sectors),
            u64::try_from(size).ok().and_then(Bytes::from_512_sectors),
        ) else {
            return Err(format!("partition {number}: start or size out of range"));
        };
        let extended = part.is_extended();
        let type_guid = part.typ_string().or_else(|| {
            let t = part.typ();
            (t != 0).then(|| format!("{t:#04x}"))
        });
        let found = if extended {
            Ok(Found::Nothing)
        } else {
            probe_range(file, start, Some(size), sector, false)
        };
        let ambivalent = matches!(found, Ok(Found::Ambivalent));
        let (signature, error) = match found {
            Ok(Found::Signature(s)) => (Some(s), None),
            Ok(Found::Nothing) => (None, None),
            Ok(Found::Ambivalent) => (None, Some("more than one signature".into())),
            Err(e) => (None, Some(e)),
        };
        out.push(ProbedPartition {
            number,
            start,
            size,
            type_guid,
            uuid: part.uuid().filter(|s| !s.is_empty()),
            name: part.name().filter(|s| !s.is_empty()),
            extended,
            signature,
            error,
            ambivalent,
        });
    }
    Ok((Some(table), out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn ext4_superblock_checksum() {
        let mut sb = [0u8; 1024];
        assert_eq!(ext4_superblock_checksum_ok(&sb), None, "not ext");
        sb[0x38..0x3a].copy_from_slice(&0xef53u16.to_le_bytes());
        assert_eq!(ext4_superblock_checksum_ok(&sb), None, "no metadata_csum");
        sb[0x64..0x68].copy_from_slice(&0x400u32.to_le_bytes());
        sb[0x78..0x7d].copy_from_slice(b"label");
        let sum = !crc32c(&sb[..0x3fc]);
        sb[0x3fc..].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(ext4_superblock_checksum_ok(&sb), Some(true));
        sb[0x78] = b'X';
        assert_eq!(ext4_superblock_checksum_ok(&sb), Some(false));
    }
}
