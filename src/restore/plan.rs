//! The restore plan: what a restore of one image onto one disk will do, step by step,
//! as a pure function of the image's manifest, the disk inventory and the recorded
//! disk identities ([`plan`] → [`RestorePlan`]), or why it must not happen
//! ([`Refusal`]).
//!
//! Owns: the refusals (secondary, busy, too small, ...), device names of the new
//! partitions and LVs, which UUIDs are kept, mount order, which archive fills which
//! mount point, what the clear step zeroes, which bootloaders to install, and the
//! fstab remap for UUIDs that could not be kept ([`fstab_remap`]).
//! Does not own: fitting partitions to the disk (`layout::plan`), doing anything
//! (`execute`), the manifest format (`image::manifest`).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use uuid::Uuid;

use crate::archive::Summary;
use crate::disk::{self, Inventory, Recorded, Role};
use crate::fstab::{Fstab, Spec};
use crate::image::manifest::Manifest;
use crate::init::recorded::RECOVERY_LABEL;
use crate::layout::{self, Bytes, MIB, PartitionPlan, PlanError, SectorSize, Source};
use crate::remap::{BootPolicy, FstabRemap, MountFate, NewRoot, RemapPlan, SwapPolicy};

/// GPT type of the partition GRUB's BIOS core image lives in.
pub const BIOS_BOOT: Uuid = Uuid::from_u128(0x21686148_6449_6e6f_744e_656564454649);
/// GPT type of the EFI system partition.
pub const ESP: Uuid = Uuid::from_u128(0xc12a7328_f81f_11d2_ba4b_00a0c93ec93b);

/// Filesystem types the restore can make with a chosen UUID and label.
pub const MAKEABLE: &[&str] = &["ext2", "ext3", "ext4", "vfat", "xfs", "btrfs"];

/// Why a restore will not start. Every variant says what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no disk {0} in the inventory (a whole disk such as /dev/vdb is needed)")]
    NoSuchDisk(String),
    #[error("{0} is the secondary disk (it holds the images and the recovery system)")]
    Secondary(String),
    #[error(
        "{0} carries the recovery filesystem ({RECOVERY_LABEL}): it is a secondary disk, not a \
         restore target"
    )]
    CarriesRecovery(String),
    #[error(
        "{0} matches a recorded identity as well as another disk does: which disk is meant \
         cannot be told"
    )]
    Ambiguous(String),
    #[error("{0} is read-only")]
    ReadOnly(String),
    #[error("{disk} is in use: {}", reasons.join("; "))]
    Busy { disk: String, reasons: Vec<String> },
    #[error(
        "{disk} is too small: it has {available} ({} bytes), the image needs at least {needed} ({} \
         bytes)",
        available.0,
        needed.0
    )]
    TooSmall {
        disk: String,
        needed: Bytes,
        available: Bytes,
    },
    #[error(
        "volume group {vg} already exists on {elsewhere}: two VGs of one name cannot be told \
         apart (remove it or detach that disk first)"
    )]
    VgExists { vg: String, elsewhere: String },
    #[error("the image cannot be restored: {0}")]
    Unsupported(String),
}

/// The disk written to, as the technician must see it before confirming.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Target {
    /// Kernel name (`vdb`).
    pub name: String,
    /// `/dev/NAME`.
    pub path: PathBuf,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub size: Bytes,
    pub sector: SectorSize,
    /// What is on it now ("blank", "foreign: GPT, 3 partitions").
    pub now: String,
}

impl Target {
    /// Disk `disk` as the technician sees it, with `sector` its logical sector size.
    pub fn of(disk: &disk::Disk, sector: SectorSize) -> Target {
        Target {
            name: disk.name.clone(),
            path: PathBuf::from("/dev").join(&disk.name),
            model: disk.model.clone(),
            serial: disk.serial.clone(),
            size: Bytes(disk.size.0),
            sector,
            now: match &disk.state {
                disk::Readability::Blank => "blank".to_string(),
                state => format!("{state}, {} partition(s)", disk.partitions.len()),
            },
        }
    }

    /// What a technician types to confirm: the serial number, else the kernel name.
    pub fn confirmation(&self) -> &str {
        self.serial.as_deref().unwrap_or(&self.name)
    }
}

/// A byte range of the target to zero in the clear step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Zero {
    pub offset: Bytes,
    pub len: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PvStep {
    pub device: PathBuf,
    pub uuid: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VgStep {
    pub name: String,
    pub extent_size: Bytes,
    pub pvs: Vec<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LvStep {
    pub vg: String,
    pub name: String,
    pub extents: u64,
    pub device: PathBuf,
}

/// A VG of the image's name found only on the recorded secondary's snapshot COW PV
/// (its other PVs were the old primary's): the executor removes it from the COW PV
/// before making the VG, then adds the COW PV to the new VG (`vgextend`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StaleVg {
    pub vg: String,
    pub cow_pv: PathBuf,
}

/// One filesystem to make (`fstype` of [`MAKEABLE`]) or swap area (`fstype` `swap`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MkfsStep {
    pub device: PathBuf,
    pub fstype: String,
    /// The recorded UUID when it is kept; `None`: the tool picks one.
    pub uuid: Option<String>,
    /// The recorded UUID when it could not be kept (fstab is remapped from it).
    pub replaces: Option<String>,
    pub label: Option<String>,
    pub mountpoint: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MountStep {
    pub device: PathBuf,
    pub fstype: String,
    /// Absolute mount point in the restored system (`/`, `/boot`).
    pub mountpoint: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExtractStep {
    /// The archive's path: the image directory joined with its file name.
    pub archive: PathBuf,
    pub mountpoint: String,
    pub summary: Summary,
}

/// Which GRUB platforms to install from the restored tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Bootloader {
    /// The layout has a BIOS boot partition: `grub-install --target=i386-pc`.
    pub bios: bool,
    /// The ESP's mount point when the layout has one with a filesystem mounted:
    /// `grub-install --target=x86_64-efi --removable` (if the tree has grub-efi).
    pub esp: Option<String>,
}

/// Everything a restore will do, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RestorePlan {
    pub image_id: String,
    pub target: Target,
    pub zero: Vec<Zero>,
    pub table: PartitionPlan,
    /// VGs of the image's names to clear from the secondary's COW PV first.
    pub stale_vgs: Vec<StaleVg>,
    pub pvs: Vec<PvStep>,
    pub vgs: Vec<VgStep>,
    pub lvs: Vec<LvStep>,
    /// Swap areas included (`fstype` `swap`).
    pub mkfs: Vec<MkfsStep>,
    /// Parents before children.
    pub mounts: Vec<MountStep>,
    pub extracts: Vec<ExtractStep>,
    pub bootloader: Bootloader,
    /// Tar bytes extracted (the progress total of the extract step).
    pub extract_bytes: u64,
    /// What the technician should know (UUIDs not kept, filesystems left empty).
    pub notes: Vec<String>,
}

/// The node of partition `n` of disk `disk` (`/dev/vdb` → `/dev/vdb2`,
/// `/dev/nvme0n1` → `/dev/nvme0n1p2`: names ending in a digit take a `p`).
pub fn partition_device(disk: &Path, n: u32) -> PathBuf {
    let s = disk.as_os_str().to_string_lossy();
    if s.ends_with(|c: char| c.is_ascii_digit()) {
        PathBuf::from(format!("{s}p{n}"))
    } else {
        PathBuf::from(format!("{s}{n}"))
    }
}

/// The device-mapper node of an LV (`vg-0`/`root` → `/dev/mapper/vg--0-root`).
pub fn lv_device(vg: &str, lv: &str) -> PathBuf {
    PathBuf::from(format!(
        "/dev/mapper/{}-{}",
        vg.replace('-', "--"),
        lv.replace('-', "--")
    ))
}

/// Disk `target` (kernel name) of `inv`, unless it must not be written: not in the
/// inventory, the secondary (by the recorded identities `recorded` when known, else
/// by the recovery filesystem on it), ambiguous, or read-only. Whether it is in use is
/// the caller's to check: a restore and a copy-back expect different uses.
pub fn writable_disk<'a>(
    inv: &'a Inventory,
    recorded: Option<&Recorded>,
    target: &str,
) -> Result<&'a disk::Disk, Refusal> {
    let disk = inv
        .disk(target)
        .ok_or_else(|| Refusal::NoSuchDisk(target.to_string()))?;
    let name = disk.name.clone();
    if let Some(rec) = recorded {
        let roles = disk::identify(inv, rec);
        match roles.disks.iter().find(|r| r.disk == name).map(|r| &r.role) {
            Some(Role::Secondary) => return Err(Refusal::Secondary(name)),
            Some(Role::Ambiguous) => return Err(Refusal::Ambiguous(name)),
            _ => {}
        }
    }
    if carries_label(disk, RECOVERY_LABEL) {
        return Err(Refusal::CarriesRecovery(name));
    }
    if disk.read_only {
        return Err(Refusal::ReadOnly(name));
    }
    Ok(disk)
}

/// Whether the whole disk or one of its partitions carries a filesystem labelled
/// `label`.
pub fn carries_label(disk: &disk::Disk, label: &str) -> bool {
    disk.partitions
        .iter()
        .filter_map(|p| p.signature.as_ref())
        .chain(disk.signature.as_ref())
        .any(|s| s.label.as_deref() == Some(label))
}

/// Plan restoring the image of `manifest` (in `image_dir`) onto disk `target` (kernel
/// name) of `inv`. `recorded` are the identities provision stored, when known: the
/// secondary is refused by identity; without them, by the recovery label on it.
pub fn plan(
    manifest: &Manifest,
    image_dir: &Path,
    inv: &Inventory,
    recorded: Option<&Recorded>,
    target: &str,
) -> Result<RestorePlan, Refusal> {
    let disk = writable_disk(inv, recorded, target)?;
    let name = disk.name.clone();
    let reasons = disk.busy_reasons();
    if !reasons.is_empty() {
        return Err(Refusal::Busy {
            disk: name,
            reasons,
        });
    }
    let sector = SectorSize::try_from(disk.logical_sector.0).map_err(|e| {
        Refusal::Unsupported(format!(
            "{name} has {}-byte sectors: {e}",
            disk.logical_sector
        ))
    })?;
    let size = Bytes(disk.size.0);
    let lay = &manifest.layout;
    let table = layout::plan(lay, size, sector).map_err(|e| match e {
        PlanError::TargetTooSmall { needed, available } => Refusal::TooSmall {
            disk: name.clone(),
            needed,
            available,
        },
        other => Refusal::Unsupported(other.to_string()),
    })?;
    if !matches!(table.table, layout::Table::Gpt { .. }) {
        return Err(Refusal::Unsupported(
            "only GPT layouts can be written (this one is MBR or has no table)".into(),
        ));
    }

    // LVM: names must be free on the other disks, but for the primary's VG left on
    // the secondary's snapshot COW PV (it joins the root VG), which is cleared and
    // joins the restored VG again.
    let cow = recorded.and_then(|rec| cow_pv(inv, rec));
    let mut stale = Vec::new();
    for vg in &lay.lvm.vgs {
        match vg_elsewhere(inv, &vg.name, &name, cow.as_deref()) {
            VgElsewhere::Free => {}
            VgElsewhere::OnCowPv => stale.push(StaleVg {
                vg: vg.name.clone(),
                cow_pv: cow.clone().unwrap_or_default(),
            }),
            VgElsewhere::Taken(elsewhere) => {
                return Err(Refusal::VgExists {
                    vg: vg.name.clone(),
                    elsewhere: if elsewhere.is_empty() {
                        "another disk".into()
                    } else {
                        elsewhere.join(", ")
                    },
                });
            }
        }
    }
    let mut notes = Vec::new();
    for s in &stale {
        notes.push(format!(
            "volume group {} is left on the secondary's snapshot COW PV {} without the old \
             primary: it is removed there, and the COW PV joins the restored {} again",
            s.vg,
            s.cow_pv.display(),
            s.vg
        ));
    }
    let dev = PathBuf::from("/dev").join(&name);
    let pvs: Vec<PvStep> = lay
        .lvm
        .vgs
        .iter()
        .flat_map(|vg| vg.pvs.iter())
        .map(|pv| PvStep {
            device: partition_device(&dev, pv.partition),
            uuid: pv.uuid.clone(),
        })
        .collect();
    let vgs: Vec<VgStep> = lay
        .lvm
        .vgs
        .iter()
        .map(|vg| VgStep {
            name: vg.name.clone(),
            extent_size: vg.extent_size,
            pvs: vg
                .pvs
                .iter()
                .map(|pv| partition_device(&dev, pv.partition))
                .collect(),
        })
        .collect();
    let mut lvs = Vec::new();
    for planned in &table.lvs {
        let extent = lay
            .lvm
            .vgs
            .iter()
            .find(|v| v.name == planned.vg)
            .map(|v| v.extent_size.0)
            .filter(|&e| e > 0)
            .ok_or_else(|| {
                Refusal::Unsupported(format!("LV {}/{} has no VG", planned.vg, planned.name))
            })?;
        if planned.size_bytes.0 % extent != 0 {
            return Err(Refusal::Unsupported(format!(
                "LV {}/{} is planned at {} bytes, not a whole number of {extent}-byte extents",
                planned.vg, planned.name, planned.size_bytes.0
            )));
        }
        lvs.push(LvStep {
            vg: planned.vg.clone(),
            name: planned.name.clone(),
            extents: planned.size_bytes.0 / extent,
            device: lv_device(&planned.vg, &planned.name),
        });
    }

    let device_of = |src: &Source| -> Result<PathBuf, Refusal> {
        match src {
            Source::Partition(n) => Ok(partition_device(&dev, *n)),
            Source::Lv { vg, name } => Ok(lv_device(vg, name)),
            Source::Disk => Err(Refusal::Unsupported(
                "a filesystem on the whole disk (no partition table)".into(),
            )),
        }
    };
    // UUIDs seen on the other disks: keeping one of those would make two.
    let elsewhere: BTreeSet<&str> = inv
        .disks
        .iter()
        .filter(|d| d.name != name)
        .flat_map(|d| {
            d.partitions
                .iter()
                .filter_map(|p| p.signature.as_ref())
                .chain(d.signature.as_ref())
        })
        .filter_map(|s| s.uuid.as_deref())
        .collect();
    let mut mkfs = Vec::new();
    let keep = |uuid: &Option<String>, what: &str, notes: &mut Vec<String>| -> Option<String> {
        match uuid {
            Some(u) if elsewhere.contains(u.as_str()) => {
                notes.push(format!(
                    "{what}: UUID {u} is already on another disk; a new one is made and fstab \
                     remapped"
                ));
                None
            }
            Some(u) => Some(u.clone()),
            None => {
                notes.push(format!("{what}: no UUID was recorded; a new one is made"));
                None
            }
        }
    };
    for fs in &lay.filesystems {
        if !MAKEABLE.contains(&fs.fstype.as_str()) {
            return Err(Refusal::Unsupported(format!(
                "{} on {} cannot be made (the restore makes {})",
                fs.fstype,
                fs.source,
                MAKEABLE.join(", ")
            )));
        }
        let what = format!("{} on {}", fs.fstype, fs.source);
        let uuid = keep(&fs.uuid, &what, &mut notes);
        mkfs.push(MkfsStep {
            device: device_of(&fs.source)?,
            fstype: fs.fstype.clone(),
            replaces: if uuid.is_none() {
                fs.uuid.clone()
            } else {
                None
            },
            uuid,
            label: fs.label.clone(),
            mountpoint: fs.mountpoint.clone().filter(|m| m.starts_with('/')),
        });
    }
    for sw in &lay.swap {
        let what = format!("swap on {}", sw.source);
        let uuid = keep(&sw.uuid, &what, &mut notes);
        mkfs.push(MkfsStep {
            device: device_of(&sw.source)?,
            fstype: "swap".into(),
            replaces: if uuid.is_none() {
                sw.uuid.clone()
            } else {
                None
            },
            uuid,
            label: sw.label.clone(),
            mountpoint: None,
        });
    }

    let mut mounts: Vec<MountStep> = mkfs
        .iter()
        .filter_map(|m| {
            Some(MountStep {
                device: m.device.clone(),
                fstype: m.fstype.clone(),
                mountpoint: m.mountpoint.clone()?,
            })
        })
        .collect();
    mounts.sort_by_key(|m| (depth(&m.mountpoint), m.mountpoint.clone()));
    if mounts.first().map(|m| m.mountpoint.as_str()) != Some("/") {
        return Err(Refusal::Unsupported(
            "the layout has no filesystem mounted at /".into(),
        ));
    }
    let mut extracts = Vec::new();
    for m in &mounts {
        match manifest.archive_for(&m.mountpoint) {
            Some(a) => extracts.push(ExtractStep {
                archive: image_dir.join(&a.file),
                mountpoint: m.mountpoint.clone(),
                summary: a.summary.clone(),
            }),
            None => notes.push(format!(
                "{} has no archive in the image: it is left empty",
                m.mountpoint
            )),
        }
    }

    let has_type = |t: Uuid| table.partitions.iter().any(|p| p.type_guid == Some(t));
    let esp_numbers: Vec<u32> = table
        .partitions
        .iter()
        .filter(|p| p.type_guid == Some(ESP))
        .map(|p| p.number)
        .collect();
    let esp = lay
        .filesystems
        .iter()
        .find(|f| matches!(f.source, Source::Partition(n) if esp_numbers.contains(&n)))
        .and_then(|f| f.mountpoint.clone())
        .filter(|m| m.starts_with('/') && m != "/");
    let bootloader = Bootloader {
        bios: has_type(BIOS_BOOT),
        esp,
    };
    if !bootloader.bios && bootloader.esp.is_none() {
        notes.push(
            "the layout has neither a BIOS boot partition nor a mounted ESP: no bootloader is \
             installed"
                .into(),
        );
    }

    // Zero the first and last MiB (MBR, GPT and its backup), and the first MiB of
    // every old and new partition: stale LVM labels and superblocks there would make
    // pvcreate and the kernel see what was, and a rerun after a failure starts clean.
    let mut zero = vec![
        Zero {
            offset: Bytes(0),
            len: Bytes(MIB.min(size.0)),
        },
        Zero {
            offset: Bytes(size.0.saturating_sub(MIB)),
            len: Bytes(MIB.min(size.0)),
        },
    ];
    let starts = disk.partitions.iter().map(|p| (p.start.0, p.size.0)).chain(
        table
            .partitions
            .iter()
            .filter_map(|p| Some((p.start_lba.bytes(sector)?.0, p.size_lba.bytes(sector)?.0))),
    );
    for (start, len) in starts {
        let z = Zero {
            offset: Bytes(start),
            len: Bytes(len.min(MIB)),
        };
        if start < size.0 && !zero.contains(&z) {
            zero.push(z);
        }
    }
    zero.sort_by_key(|z| z.offset);

    Ok(RestorePlan {
        image_id: manifest.id.clone(),
        target: Target::of(disk, sector),
        zero,
        table,
        stale_vgs: stale,
        pvs,
        vgs,
        lvs,
        mkfs,
        mounts,
        extracts,
        bootloader,
        extract_bytes: manifest.uncompressed_bytes(),
        notes,
    })
}

/// The recorded secondary's snapshot COW PV (the partition provision names
/// `understudy-cow`), when the secondary is present and has one.
fn cow_pv(inv: &Inventory, rec: &Recorded) -> Option<PathBuf> {
    let roles = disk::identify(inv, rec);
    let secondary = roles.disks.iter().find(|r| r.role == Role::Secondary)?;
    let cow = crate::provision::Role::Cow;
    inv.disk(&secondary.disk)?
        .partitions
        .iter()
        .find(|p| p.number == cow.number() && p.name.as_deref() == Some(cow.gpt_name()))?
        .path
        .clone()
}

/// Where a VG of the image's name already is, outside the target.
#[derive(Clone, Debug, PartialEq, Eq)]
enum VgElsewhere {
    Free,
    /// Only on the secondary's COW PV, with the rest of it gone (missing PVs, PVs on
    /// the target about to be erased) or holding no LV: the old primary's VG.
    OnCowPv,
    /// On these PVs (paths) of other disks.
    Taken(Vec<String>),
}

/// Whether VG `vg` exists outside disk `target` (kernel name), and where. `cow` is
/// the recorded secondary's COW PV; no other PV is ever taken for stale.
fn vg_elsewhere(inv: &Inventory, vg: &str, target: &str, cow: Option<&Path>) -> VgElsewhere {
    let disk::LvmStatus::Found(l) = &inv.lvm else {
        return VgElsewhere::Free;
    };
    let Some(found) = l.vgs.iter().find(|v| v.name == vg) else {
        return VgElsewhere::Free;
    };
    let on_target: BTreeSet<&Path> = inv
        .disk(target)
        .into_iter()
        .flat_map(|d| d.partitions.iter().filter_map(|p| p.path.as_deref()))
        .chain(inv.disk(target).map(|d| d.path.as_path()))
        .collect();
    // pv_attr's third character is `m` for a PV LVM knows of but cannot find.
    let missing = |p: &disk::lvm::Pv| p.attr.chars().nth(2) == Some('m');
    let mine: Vec<&disk::lvm::Pv> = l
        .pvs
        .iter()
        .filter(|p| p.vg.as_deref() == Some(vg))
        .collect();
    let outside: Vec<&disk::lvm::Pv> = mine
        .iter()
        .copied()
        .filter(|p| !missing(p) && !on_target.contains(p.path.as_path()))
        .collect();
    if outside.is_empty() {
        // Only on the target (a restore being run again): erased by the clear step.
        return if mine.is_empty() {
            VgElsewhere::Taken(Vec::new())
        } else {
            VgElsewhere::Free
        };
    }
    // vg_attr's fourth character is `p` for a partial VG (PVs missing).
    let partial = found.attr.chars().nth(3) == Some('p');
    let lost_rest = partial || outside.len() < mine.len() || found.lv_count == 0;
    match cow {
        Some(cow) if lost_rest && outside.iter().all(|p| p.path == cow) => VgElsewhere::OnCowPv,
        _ => VgElsewhere::Taken(
            outside
                .iter()
                .map(|p| p.path.display().to_string())
                .collect(),
        ),
    }
}

impl RestorePlan {
    /// The programs the executor will run for this plan, in step order: checked before
    /// the point of no return, so a recovery image without one refuses instead of
    /// leaving the target half-made.
    pub fn tools(&self) -> Vec<&'static str> {
        let mut tools = vec!["blockdev"];
        if !self.pvs.is_empty() || !self.stale_vgs.is_empty() {
            tools.push("lvm");
        }
        for m in &self.mkfs {
            let tool = match m.fstype.as_str() {
                "ext2" | "ext3" | "ext4" => "mke2fs",
                "vfat" => "mkfs.fat",
                "xfs" => "mkfs.xfs",
                "btrfs" => "mkfs.btrfs",
                // Swap headers are written by understudy itself.
                _ => continue,
            };
            if !tools.contains(&tool) {
                tools.push(tool);
            }
        }
        if self.bootloader.bios || self.bootloader.esp.is_some() {
            tools.push("chroot");
        }
        tools
    }
}

/// Something the running kernel must offer before the target is touched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelNeed {
    /// A filesystem type, as `/proc/filesystems` names it, and its module.
    Filesystem {
        name: &'static str,
        module: &'static str,
    },
    /// Device-mapper, for LVM.
    DeviceMapper,
}

impl KernelNeed {
    /// What mounting a filesystem of type `fstype` needs (`None`: nothing known, such
    /// as swap).
    pub fn filesystem(fstype: &str) -> Option<KernelNeed> {
        let (name, module) = match fstype {
            "ext2" | "ext3" | "ext4" => ("ext4", "ext4"),
            "vfat" => ("vfat", "vfat"),
            "xfs" => ("xfs", "xfs"),
            "btrfs" => ("btrfs", "btrfs"),
            _ => return None,
        };
        Some(KernelNeed::Filesystem { name, module })
    }

    /// The module that provides it.
    pub fn module(self) -> &'static str {
        match self {
            KernelNeed::Filesystem { module, .. } => module,
            KernelNeed::DeviceMapper => "dm_mod",
        }
    }
}

impl RestorePlan {
    /// What the kernel must support for this plan: the recovery image loads filesystem
    /// and device-mapper drivers after its first screen, so a restore started at once
    /// waits for them (bounded) instead of failing at its first mount.
    pub fn kernel_needs(&self) -> Vec<KernelNeed> {
        let mut needs = Vec::new();
        if !self.pvs.is_empty() || !self.stale_vgs.is_empty() {
            needs.push(KernelNeed::DeviceMapper);
        }
        for need in self
            .mkfs
            .iter()
            .filter_map(|m| KernelNeed::filesystem(&m.fstype))
        {
            if !needs.contains(&need) {
                needs.push(need);
            }
        }
        needs
    }
}

/// How many components a mount point has: parents sort before their children.
pub fn depth(mountpoint: &str) -> usize {
    mountpoint.split('/').filter(|c| !c.is_empty()).count()
}

/// A UUID the restore could not keep: the recorded one and the one made instead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UuidChange {
    pub old: String,
    pub new: String,
}

/// The remap for a restored tree whose fstab is `fstab`, when some UUIDs changed;
/// `None` when nothing needs remapping (the usual case: every UUID was kept).
/// Every mount and swap line stays; only `UUID=old` sources become `UUID=new`, and
/// the kernel's `root=UUID=old` follows the root's.
pub fn fstab_remap(fstab: &Fstab, changes: &[UuidChange]) -> Option<RemapPlan> {
    if changes.is_empty() {
        return None;
    }
    let renamed = |spec: &Spec| {
        changes
            .iter()
            .find(|c| spec.same_as(&Spec::parse(&format!("UUID={}", c.old))))
            .map(|c| format!("UUID={}", c.new))
    };
    let root_entry = fstab.entries().map(|(_, e)| e).find(|e| e.target() == "/");
    let root_source = root_entry.map(|e| (e.spec(), renamed(&e.source())));
    let (root, kernel_root) = match root_source {
        Some((_, Some(new))) => (new.clone(), Some(new)),
        Some((old, None)) => (old, None),
        // No root line: nothing to rename there; the entry must still name something.
        None => (String::new(), None),
    };
    let mounts = changes
        .iter()
        .map(|c| {
            (
                format!("UUID={}", c.old),
                MountFate::Map(format!("UUID={}", c.new)),
            )
        })
        .collect();
    Some(RemapPlan {
        fstab: FstabRemap {
            root: NewRoot {
                source: root,
                fstype: None,
            },
            swap: SwapPolicy::Keep,
            boot: BootPolicy::Keep,
            mounts,
            missing: MountFate::Keep,
        },
        kernel_root,
    })
}

impl fmt::Display for RestorePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.target;
        writeln!(
            f,
            "restore image {} onto {} ({}, serial {}, {} = {} bytes, now {})",
            self.image_id,
            t.path.display(),
            t.model.as_deref().unwrap_or("unknown model"),
            t.serial.as_deref().unwrap_or("none"),
            t.size,
            t.size.0,
            t.now
        )?;
        write!(f, "{}", self.table)?;
        for s in &self.stale_vgs {
            writeln!(
                f,
                "  remove volume group {} from the secondary's COW PV {}, then add that PV to \
                 the new {}",
                s.vg,
                s.cow_pv.display(),
                s.vg
            )?;
        }
        for m in &self.mkfs {
            writeln!(
                f,
                "  {} {} uuid {}{}{}",
                m.device.display(),
                m.fstype,
                m.uuid.as_deref().unwrap_or("(new)"),
                m.label
                    .as_deref()
                    .map(|l| format!(" label {l}"))
                    .unwrap_or_default(),
                m.mountpoint
                    .as_deref()
                    .map(|p| format!(" at {p}"))
                    .unwrap_or_default()
            )?;
        }
        for e in &self.extracts {
            writeln!(
                f,
                "  extract {} into {} ({} bytes)",
                e.archive.display(),
                e.mountpoint,
                e.summary.uncompressed
            )?;
        }
        let b = &self.bootloader;
        writeln!(
            f,
            "  bootloader: {}",
            match (b.bios, &b.esp) {
                (true, Some(e)) => format!("GRUB for BIOS and UEFI (ESP at {e})"),
                (true, None) => "GRUB for BIOS".into(),
                (false, Some(e)) => format!("GRUB for UEFI (ESP at {e})"),
                (false, None) => "none".into(),
            }
        )?;
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{Identity, Readability, Transport, Usage};
    use crate::image::manifest::ArchiveEntry;
    use crate::layout::{
        Change, Disk, Filesystem, Layout, Lba, Lv, Lvm, Partition, Pv, Sectors, Swap, Table, Vg,
    };

    const GIB: u64 = 1 << 30;
    const ROOT_UUID: &str = "11111111-2222-4333-8444-555555555555";
    const BOOT_UUID: &str = "66666666-7777-4888-8999-aaaaaaaaaaaa";
    const SWAP_UUID: &str = "bbbbbbbb-cccc-4ddd-8eee-ffffffffffff";

    fn part(number: u32, start_mib: u64, size_mib: u64, ty: Uuid, name: &str) -> Partition {
        Partition {
            number,
            start_lba: Lba(start_mib * 2048),
            size_lba: Sectors(size_mib * 2048),
            type_guid: Some(ty),
            mbr_type: None,
            part_uuid: Some(Uuid::from_u128(u128::from(number))),
            name: name.into(),
            attributes: 0,
            growable: false,
        }
    }

    fn fs(source: Source, fstype: &str, uuid: &str, used: u64, at: &str) -> Filesystem {
        Filesystem {
            source,
            fstype: fstype.into(),
            uuid: Some(uuid.into()),
            label: None,
            used_bytes: Bytes(used),
            mountpoint: Some(at.into()),
            mount_options: vec![],
        }
    }

    fn lv(name: &str) -> Source {
        Source::Lv {
            vg: "vg0".into(),
            name: name.into(),
        }
    }

    /// A Debian-like appliance on 10 GiB: BIOS boot, ESP, /boot, and an LVM PV with
    /// root (8 GiB) and swap (1 GiB).
    fn manifest() -> Manifest {
        let linux = Uuid::from_u128(0x0fc63daf_8483_4772_8e79_3d69d8477de4);
        let lvm = Uuid::from_u128(0xe6d6d379_f507_44c2_a23c_238f2a3df928);
        let layout = Layout {
            schema: layout::SCHEMA,
            table: Table::Gpt {
                disk_guid: Uuid::from_u128(7),
            },
            disk: Disk {
                size_bytes: Bytes(10 * GIB),
                logical_sector: SectorSize::B512,
                physical_sector: 512,
            },
            partitions: vec![
                part(1, 1, 1, BIOS_BOOT, "bios"),
                part(2, 2, 64, ESP, "esp"),
                part(3, 66, 256, linux, "boot"),
                part(4, 322, 9917, lvm, "lvm"),
            ],
            filesystems: vec![
                fs(Source::Partition(2), "vfat", "ABCD-1234", MIB, "/boot/efi"),
                fs(Source::Partition(3), "ext4", BOOT_UUID, 100 * MIB, "/boot"),
                fs(lv("root"), "ext4", ROOT_UUID, 2 * GIB, "/"),
            ],
            lvm: Lvm {
                vgs: vec![Vg {
                    name: "vg0".into(),
                    uuid: "vgvgvg-vgvg-vgvg-vgvg-vgvg-vgvg-vgvgvg".into(),
                    pvs: vec![Pv {
                        partition: 4,
                        uuid: "pvpvpv-pvpv-pvpv-pvpv-pvpv-pvpv-pvpvpv".into(),
                        pe_start: Bytes(MIB),
                    }],
                    extent_size: Bytes(4 * MIB),
                }],
                lvs: vec![
                    Lv {
                        vg: "vg0".into(),
                        name: "root".into(),
                        uuid: "r".into(),
                        size_bytes: Bytes(8 * GIB),
                        growable: true,
                    },
                    Lv {
                        vg: "vg0".into(),
                        name: "swap".into(),
                        uuid: "s".into(),
                        size_bytes: Bytes(GIB),
                        growable: false,
                    },
                ],
            },
            swap: vec![Swap {
                source: lv("swap"),
                uuid: Some(SWAP_UUID.into()),
                label: None,
                size_bytes: Bytes(GIB),
            }],
        };
        let archive = |at: &str, file: &str| ArchiveEntry {
            filesystem: at.into(),
            file: file.into(),
            summary: Summary {
                length: 1000,
                sha256: "00".repeat(32),
                uncompressed: 5000,
                entries: 10,
            },
        };
        Manifest {
            schema: 1,
            id: "20261125T031500Z-appliance".into(),
            created: "2026-11-25T03:15:00Z".into(),
            host: "appliance".into(),
            tool_version: "0.1.0".into(),
            layout,
            archives: vec![
                archive("/", "root.tar.lzo"),
                archive("/boot", "boot.tar.lzo"),
                archive("/boot/efi", "boot-efi.tar.lzo"),
            ],
            excludes: vec![],
        }
    }

    fn sig(kind: &str, uuid: &str, label: Option<&str>) -> disk::Signature {
        disk::Signature {
            kind: kind.into(),
            usage: Some("filesystem".into()),
            uuid: Some(uuid.into()),
            label: label.map(Into::into),
            version: None,
            bad_checksum: false,
        }
    }

    fn partition(disk: &str, number: u32, sig: Option<disk::Signature>) -> disk::Partition {
        disk::Partition {
            number,
            device: Some(format!("{disk}{number}")),
            path: Some(format!("/dev/{disk}{number}").into()),
            start: disk::Bytes(u64::from(number) * MIB),
            size: disk::Bytes(MIB),
            type_guid: None,
            uuid: None,
            name: None,
            extended: false,
            signature: sig,
            error: None,
            usage: Usage::default(),
        }
    }

    fn disk(name: &str, size: u64, serial: &str, partitions: Vec<disk::Partition>) -> disk::Disk {
        let identity = Identity {
            wwn: None,
            serial: Some(serial.into()),
            model: Some("QEMU HARDDISK".into()),
            size: disk::Bytes(size),
            logical_sector: disk::Bytes(512),
        };
        let state = if partitions.is_empty() {
            Readability::Blank
        } else {
            Readability::Readable
        };
        disk::Disk {
            partitions,
            ..disk::Disk::known_as(name, identity, Transport::Virtio, state)
        }
    }

    /// The secondary `vda` (recovery and emergency filesystems) and a target `vdb`.
    fn machine(target: disk::Disk) -> Inventory {
        let secondary = disk(
            "vda",
            64 * GIB,
            "SECONDARY",
            vec![
                partition(
                    "vda",
                    3,
                    Some(sig(
                        "ext4",
                        "aaaa0003-0000-4000-8000-000000000000",
                        Some(RECOVERY_LABEL),
                    )),
                ),
                partition(
                    "vda",
                    4,
                    Some(sig(
                        "ext4",
                        "aaaa0004-0000-4000-8000-000000000000",
                        Some("US-EMERGENCY"),
                    )),
                ),
            ],
        );
        Inventory {
            disks: vec![secondary, target],
            lvm: disk::LvmStatus::Found(disk::Lvm::default()),
            mounts: vec![],
            swaps: vec![],
            problems: vec![],
        }
    }

    fn recorded(inv: &Inventory) -> Recorded {
        Recorded {
            primary: Some(Identity {
                serial: Some("OLD-PRIMARY".into()),
                ..inv.disks[0].identity.clone()
            }),
            secondary: Some(inv.disks[0].identity.clone()),
        }
    }

    fn plan_onto(inv: &Inventory, target: &str) -> Result<RestorePlan, Refusal> {
        let rec = recorded(inv);
        plan(&manifest(), Path::new("/images/x"), inv, Some(&rec), target)
    }

    #[test]
    fn plans_for_same_larger_smaller_and_too_small_disks() {
        // (target size, expected root LV extents or the refusal's needed minimum)
        let table: [(u64, Option<Change>, Option<u64>); 4] = [
            (10 * GIB, Some(Change::Same), Some(2048)),
            (20 * GIB, Some(Change::Grown), None),
            (5 * GIB, Some(Change::Shrunk), None),
            (GIB, None, None),
        ];
        for (size, change, root_extents) in table {
            let inv = machine(disk("vdb", size, "NEW-DISK", vec![]));
            let got = plan_onto(&inv, "vdb");
            let Some(change) = change else {
                match got {
                    Err(Refusal::TooSmall {
                        disk,
                        needed,
                        available,
                    }) => {
                        assert_eq!(disk, "vdb");
                        assert_eq!(available, Bytes(size));
                        assert!(needed.0 > 2 * GIB, "needed {needed}");
                    }
                    other => panic!("{size}: expected TooSmall, got {other:?}"),
                }
                continue;
            };
            let p = got.unwrap_or_else(|e| panic!("{size}: {e}"));
            assert_eq!(p.table.partitions[3].change, change, "{size}");
            let root = p.lvs.iter().find(|l| l.name == "root").unwrap();
            if let Some(e) = root_extents {
                assert_eq!(root.extents, e);
            }
            match change {
                Change::Grown => assert!(root.extents > 2048),
                Change::Shrunk => assert!(root.extents < 2048),
                _ => {}
            }
            let swap = p.lvs.iter().find(|l| l.name == "swap").unwrap();
            assert_eq!(swap.extents, 256, "swap keeps its size ({size})");
            assert_eq!(root.device, PathBuf::from("/dev/mapper/vg0-root"));
            assert_eq!(p.pvs[0].device, PathBuf::from("/dev/vdb4"));
            assert_eq!(p.vgs[0].pvs, [PathBuf::from("/dev/vdb4")]);
            // Recorded UUIDs kept, mounts parents first, one archive each.
            let uuids: Vec<_> = p.mkfs.iter().map(|m| m.uuid.as_deref()).collect();
            assert_eq!(
                uuids,
                [
                    Some("ABCD-1234"),
                    Some(BOOT_UUID),
                    Some(ROOT_UUID),
                    Some(SWAP_UUID)
                ]
            );
            assert!(p.mkfs.iter().all(|m| m.replaces.is_none()));
            let at: Vec<_> = p.mounts.iter().map(|m| m.mountpoint.as_str()).collect();
            assert_eq!(at, ["/", "/boot", "/boot/efi"]);
            assert_eq!(p.mounts[0].device, PathBuf::from("/dev/mapper/vg0-root"));
            let files: Vec<_> = p.extracts.iter().map(|x| x.archive.clone()).collect();
            assert_eq!(
                files,
                ["root.tar.lzo", "boot.tar.lzo", "boot-efi.tar.lzo"]
                    .map(|f| PathBuf::from("/images/x").join(f))
            );
            assert_eq!(
                p.bootloader,
                Bootloader {
                    bios: true,
                    esp: Some("/boot/efi".into())
                }
            );
            // The first and last MiB are cleared, and every new partition's start.
            assert_eq!(
                p.zero[0],
                Zero {
                    offset: Bytes(0),
                    len: Bytes(MIB)
                }
            );
            assert!(p.zero.contains(&Zero {
                offset: Bytes(size - MIB),
                len: Bytes(MIB)
            }));
            assert!(p.zero.contains(&Zero {
                offset: Bytes(66 * MIB),
                len: Bytes(MIB)
            }));
            assert_eq!(p.target.confirmation(), "NEW-DISK");
            assert!(p.notes.is_empty(), "{:?}", p.notes);
        }
    }

    #[test]
    fn the_secondary_is_refused_by_identity_and_by_its_recovery_filesystem() {
        let inv = machine(disk("vdb", 10 * GIB, "NEW-DISK", vec![]));
        assert_eq!(
            plan_onto(&inv, "vda").unwrap_err(),
            Refusal::Secondary("vda".into())
        );
        // Without recorded identities, the recovery label still gives it away.
        let got = plan(&manifest(), Path::new("/i"), &inv, None, "vda").unwrap_err();
        assert_eq!(got, Refusal::CarriesRecovery("vda".into()));
        assert_eq!(
            plan_onto(&inv, "vdc").unwrap_err(),
            Refusal::NoSuchDisk("vdc".into())
        );
    }

    #[test]
    fn a_busy_disk_is_refused_with_every_reason() {
        let mut target = disk(
            "vdb",
            10 * GIB,
            "NEW-DISK",
            vec![partition("vdb", 1, None), partition("vdb", 2, None)],
        );
        target.partitions[0].usage.mounts = vec!["/mnt".into()];
        target.partitions[1].usage.swap = true;
        let inv = machine(target);
        match plan_onto(&inv, "vdb").unwrap_err() {
            Refusal::Busy { disk, reasons } => {
                assert_eq!(disk, "vdb");
                assert_eq!(
                    reasons,
                    ["vdb1 is mounted at /mnt", "vdb2 is in use as swap"]
                );
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        let mut ro = disk("vdb", 10 * GIB, "NEW-DISK", vec![]);
        ro.read_only = true;
        assert_eq!(
            plan_onto(&machine(ro), "vdb").unwrap_err(),
            Refusal::ReadOnly("vdb".into())
        );
    }

    #[test]
    fn a_vg_of_the_same_name_elsewhere_is_refused() {
        let mut inv = machine(disk("vdb", 10 * GIB, "NEW-DISK", vec![]));
        let vgs = serde_json::from_str(
            r#"[{"name":"vg0","uuid":"u","size":1,"free":0,"extent_size":4194304,"pv_count":1,"lv_count":0,"attr":"wz--n-"}]"#,
        )
        .unwrap();
        let pvs = serde_json::from_str(
            r#"[{"path":"/dev/vda6","uuid":"p","vg":"vg0","size":1,"free":0,"dev_size":1,"attr":"a--"}]"#,
        )
        .unwrap();
        inv.lvm = disk::LvmStatus::Found(disk::Lvm {
            pvs,
            vgs,
            lvs: vec![],
        });
        assert_eq!(
            plan_onto(&inv, "vdb").unwrap_err(),
            Refusal::VgExists {
                vg: "vg0".into(),
                elsewhere: "/dev/vda6".into()
            }
        );
    }

    /// The old primary's VG seen from the recovery system: `vg0` on the secondary's
    /// COW PV and on `others` (`[unknown]`: a missing PV).
    fn lvm_with_vg0(vg_attr: &str, lv_count: u32, pvs: &[(&str, &str)]) -> disk::LvmStatus {
        let vgs = serde_json::from_value(serde_json::json!([{
            "name": "vg0", "uuid": "u", "size": 1, "free": 0, "extent_size": 4194304,
            "pv_count": pvs.len(), "lv_count": lv_count, "attr": vg_attr
        }]))
        .unwrap();
        let pvs = pvs
            .iter()
            .map(|(path, attr)| {
                serde_json::json!({
                    "path": path, "uuid": format!("uuid-{path}"), "vg": "vg0", "size": 1,
                    "free": 0, "dev_size": 1, "attr": attr
                })
            })
            .collect::<Vec<_>>();
        disk::LvmStatus::Found(disk::Lvm {
            pvs: serde_json::from_value(serde_json::Value::Array(pvs)).unwrap(),
            vgs,
            lvs: vec![],
        })
    }

    #[test]
    fn the_old_vg_on_the_secondarys_cow_pv_is_cleared_and_rejoined() {
        const COW: &str = "/dev/vda6";
        const MISSING: (&str, &str) = ("[unknown]", "a-m");
        const ON_COW: (&str, &str) = (COW, "a--");
        // (case, COW partition's GPT name, recorded identities, vg_attr, LVs, PVs of
        //  vg0, what the plan does: Some(stale on the COW PV) or None (VgExists with
        //  these PVs), or "free" when vg0 does not count at all)
        type Case<'a> = (
            &'a str,
            &'a str,
            bool,
            &'a str,
            u32,
            &'a [(&'a str, &'a str)],
            Result<bool, &'a str>,
        );
        let table: &[Case] = &[
            (
                "primary dead: partial vg0 on the COW PV",
                "understudy-cow",
                true,
                "wz-pn-",
                3,
                &[MISSING, ON_COW],
                Ok(true),
            ),
            (
                "no recorded identities: the secondary is not known for sure",
                "understudy-cow",
                false,
                "wz-pn-",
                3,
                &[MISSING, ON_COW],
                Err(COW),
            ),
            (
                "partition 6 is not provision's COW partition",
                "vendor-data",
                true,
                "wz-pn-",
                3,
                &[MISSING, ON_COW],
                Err(COW),
            ),
            (
                "the old primary is attached: its VG is whole",
                "understudy-cow",
                true,
                "wz--n-",
                3,
                &[("/dev/vdc4", "a--"), ON_COW],
                Err("/dev/vdc4, /dev/vda6"),
            ),
            (
                "a whole VG with LVs only on the COW PV is not ours to remove",
                "understudy-cow",
                true,
                "wz--n-",
                1,
                &[ON_COW],
                Err(COW),
            ),
            (
                "missing PVs already removed, no LV left",
                "understudy-cow",
                true,
                "wz--n-",
                0,
                &[ON_COW],
                Ok(true),
            ),
            (
                "a rerun after the COW PV joined the half-restored target's vg0",
                "understudy-cow",
                true,
                "wz--n-",
                2,
                &[("/dev/vdb3", "a--"), ON_COW],
                Ok(true),
            ),
            (
                "a rerun before: vg0 only on the target, erased by the clear step",
                "understudy-cow",
                true,
                "wz--n-",
                2,
                &[("/dev/vdb3", "a--")],
                Ok(false),
            ),
        ];
        for &(case, cow_name, with_recorded, attr, lvs, pvs, want) in table {
            let mut inv = machine(disk(
                "vdb",
                10 * GIB,
                "NEW-DISK",
                vec![partition("vdb", 3, None)],
            ));
            let mut cow = partition("vda", 6, None);
            cow.name = Some(cow_name.into());
            inv.disks[0].partitions.push(cow);
            inv.lvm = lvm_with_vg0(attr, lvs, pvs);
            let rec = recorded(&inv);
            let got = plan(
                &manifest(),
                Path::new("/i"),
                &inv,
                with_recorded.then_some(&rec),
                "vdb",
            );
            match want {
                Ok(stale) => {
                    let p = got.unwrap_or_else(|e| panic!("{case}: {e}"));
                    let expected = if stale {
                        vec![StaleVg {
                            vg: "vg0".into(),
                            cow_pv: COW.into(),
                        }]
                    } else {
                        vec![]
                    };
                    assert_eq!(p.stale_vgs, expected, "{case}");
                    assert_eq!(
                        p.notes.iter().any(|n| n.contains("COW PV /dev/vda6")),
                        stale,
                        "{case}: {:?}",
                        p.notes
                    );
                    assert_eq!(p.to_string().contains("remove volume group vg0"), stale);
                }
                Err(elsewhere) => assert_eq!(
                    got.unwrap_err(),
                    Refusal::VgExists {
                        vg: "vg0".into(),
                        elsewhere: elsewhere.into()
                    },
                    "{case}"
                ),
            }
        }
    }

    #[test]
    fn the_tools_needed_are_known_before_the_point_of_no_return() {
        let inv = machine(disk("vdb", 10 * GIB, "NEW-DISK", vec![]));
        let p = plan_onto(&inv, "vdb").unwrap();
        assert_eq!(
            p.tools(),
            ["blockdev", "lvm", "mkfs.fat", "mke2fs", "chroot"]
        );
        // A btrfs root on a partition, no LVM, no bootloader.
        let mut m = manifest();
        m.layout.filesystems = vec![fs(Source::Partition(3), "btrfs", ROOT_UUID, MIB, "/")];
        m.layout.lvm = Default::default();
        m.layout.swap.clear();
        m.layout
            .partitions
            .retain(|p| p.type_guid != Some(BIOS_BOOT) && p.type_guid != Some(ESP));
        let p = plan(&m, Path::new("/i"), &inv, None, "vdb").unwrap();
        assert_eq!(p.tools(), ["blockdev", "mkfs.btrfs"]);
    }

    #[test]
    fn the_kernel_support_needed_is_known_before_the_point_of_no_return() {
        let inv = machine(disk("vdb", 10 * GIB, "NEW-DISK", vec![]));
        let p = plan_onto(&inv, "vdb").unwrap();
        let modules: Vec<&str> = p.kernel_needs().iter().map(|n| n.module()).collect();
        assert_eq!(modules, ["dm_mod", "vfat", "ext4"]);
        let mut m = manifest();
        m.layout.filesystems = vec![fs(Source::Partition(3), "xfs", ROOT_UUID, MIB, "/")];
        m.layout.lvm = Default::default();
        m.layout.swap.clear();
        m.layout
            .partitions
            .retain(|p| p.type_guid != Some(BIOS_BOOT) && p.type_guid != Some(ESP));
        let p = plan(&m, Path::new("/i"), &inv, None, "vdb").unwrap();
        assert_eq!(
            p.kernel_needs(),
            [KernelNeed::Filesystem {
                name: "xfs",
                module: "xfs"
            }]
        );
    }

    #[test]
    fn a_uuid_already_on_another_disk_is_not_kept() {
        let mut inv = machine(disk("vdb", 10 * GIB, "NEW-DISK", vec![]));
        // The old primary, still attached, carries the same /boot.
        inv.disks.push(disk(
            "vdc",
            10 * GIB,
            "OLD-PRIMARY",
            vec![partition("vdc", 3, Some(sig("ext4", BOOT_UUID, None)))],
        ));
        let p = plan(&manifest(), Path::new("/i"), &inv, None, "vdb").unwrap();
        let boot = p
            .mkfs
            .iter()
            .find(|m| m.mountpoint.as_deref() == Some("/boot"))
            .unwrap();
        assert_eq!(boot.uuid, None);
        assert_eq!(boot.replaces.as_deref(), Some(BOOT_UUID));
        assert_eq!(p.notes.len(), 1, "{:?}", p.notes);
        assert!(p.notes[0].contains(BOOT_UUID));
    }

    #[test]
    fn unsupported_layouts_are_refused_before_anything() {
        let mut m = manifest();
        m.layout.filesystems[1].fstype = "zfs".into();
        let inv = machine(disk("vdb", 10 * GIB, "NEW-DISK", vec![]));
        let got = plan(&m, Path::new("/i"), &inv, None, "vdb").unwrap_err();
        assert!(
            matches!(got, Refusal::Unsupported(ref s) if s.contains("zfs")),
            "{got:?}"
        );
    }

    #[test]
    fn device_names_follow_the_kernel() {
        assert_eq!(
            partition_device(Path::new("/dev/sda"), 2),
            PathBuf::from("/dev/sda2")
        );
        assert_eq!(
            partition_device(Path::new("/dev/nvme0n1"), 2),
            PathBuf::from("/dev/nvme0n1p2")
        );
        assert_eq!(
            lv_device("my-vg", "root"),
            PathBuf::from("/dev/mapper/my--vg-root")
        );
    }

    #[test]
    fn fstab_is_remapped_only_for_uuids_not_kept() {
        let text = format!(
            "UUID={ROOT_UUID} / ext4 errors=remount-ro 0 1\nUUID={BOOT_UUID} /boot ext4 defaults 0 2\n/dev/mapper/vg0-swap none swap sw 0 0\n"
        );
        let fstab = Fstab::parse(&text);
        assert_eq!(fstab_remap(&fstab, &[]), None);
        let new_boot = "12345678-0000-4000-8000-000000000000";
        let plan = fstab_remap(
            &fstab,
            &[UuidChange {
                old: BOOT_UUID.into(),
                new: new_boot.into(),
            }],
        )
        .unwrap();
        assert_eq!(plan.kernel_root, None);
        let (out, _) = crate::remap::fstab(&fstab, &plan.fstab);
        assert_eq!(
            out.render(),
            text.replace(BOOT_UUID, new_boot),
            "only the /boot source changes"
        );
        let new_root = "87654321-0000-4000-8000-000000000000";
        let plan = fstab_remap(
            &fstab,
            &[UuidChange {
                old: ROOT_UUID.into(),
                new: new_root.into(),
            }],
        )
        .unwrap();
        assert_eq!(plan.kernel_root, Some(format!("UUID={new_root}")));
        let (out, _) = crate::remap::fstab(&fstab, &plan.fstab);
        assert_eq!(out.render(), text.replace(ROOT_UUID, new_root));
    }
}
