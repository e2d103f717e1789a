//! The pure half of provisioning: from the disk inventory, the primary's captured
//! layout, the recorded identities and the options, either a [`ProvisionPlan`] (the
//! secondary's partitions, filesystems with fresh labels and UUIDs, the COW PV, the
//! GRUB menu, the identities to record) or a [`Refusal`] that says why not.
//!
//! Does not own: measuring the world (the executor passes the inventory and the
//! layout), writing anything (`execute`), the GPT format (`partition`), the menu's
//! text (`boot`).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::boot::{EmergencyEntry, PrimaryDisk, SecondaryBoot};
use crate::disk::{self, Disk, Inventory, LvmStatus, Recorded};
use crate::init::recorded::RECOVERY_LABEL;
use crate::layout::{
    self, Bytes, Change, Geometry, Layout, Lba, MIB, PartitionPlan, PlannedPartition, SectorSize,
    Source, Table,
};

/// GPT partition types.
pub const BIOS_BOOT_TYPE: Uuid = Uuid::from_u128(0x21686148_6449_6e6f_744e_656564454649);
pub const EFI_SYSTEM_TYPE: Uuid = Uuid::from_u128(0xc12a7328_f81f_11d2_ba4b_00a0c93ec93b);
pub const LINUX_FS_TYPE: Uuid = Uuid::from_u128(0x0fc63daf_8483_4772_8e79_3d69d8477de4);
pub const LINUX_LVM_TYPE: Uuid = Uuid::from_u128(0xe6d6d379_f507_44c2_a23c_238f2a3df928);

/// Filesystem labels of the secondary (docs/disk-layout.md). The recovery one is what
/// PID 1 looks for.
pub const ESP_LABEL: &str = "US-ESP";
pub const EMERGENCY_LABEL: &str = "US-EMERGENCY";
pub const IMAGES_LABEL: &str = "US-IMAGES";

/// Fixed sizes of the first three partitions.
pub const BIOS_BOOT_BYTES: Bytes = Bytes(MIB);
pub const ESP_BYTES: Bytes = Bytes(256 * MIB);
pub const RECOVERY_BYTES: Bytes = Bytes(512 * MIB);
/// The emergency partition is twice the operational section's used bytes, and never
/// smaller than this.
pub const EMERGENCY_MIN_BYTES: Bytes = Bytes(512 * MIB);
/// The images partition must hold at least one image as large as the used bytes,
/// and never less than this.
pub const IMAGES_MIN_BYTES: Bytes = Bytes(64 * MIB);
/// The default COW PV: this share of the secondary (10%)...
pub const COW_DEFAULT_PERCENT: u64 = 10;
/// ...but at least this much, and never less than this when given.
pub const COW_MIN_BYTES: Bytes = Bytes(64 * MIB);

/// What a partition of the secondary is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    BiosBoot,
    Esp,
    Recovery,
    Emergency,
    Images,
    Cow,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::BiosBoot,
        Role::Esp,
        Role::Recovery,
        Role::Emergency,
        Role::Images,
        Role::Cow,
    ];

    /// Its partition number (the table's order).
    pub fn number(self) -> u32 {
        match self {
            Role::BiosBoot => 1,
            Role::Esp => 2,
            Role::Recovery => 3,
            Role::Emergency => 4,
            Role::Images => 5,
            Role::Cow => 6,
        }
    }

    /// Its GPT partition name.
    pub fn gpt_name(self) -> &'static str {
        match self {
            Role::BiosBoot => "bios-boot",
            Role::Esp => "understudy-esp",
            Role::Recovery => "understudy-recovery",
            Role::Emergency => "understudy-emergency",
            Role::Images => "understudy-images",
            Role::Cow => "understudy-cow",
        }
    }

    pub fn type_guid(self) -> Uuid {
        match self {
            Role::BiosBoot => BIOS_BOOT_TYPE,
            Role::Esp => EFI_SYSTEM_TYPE,
            Role::Cow => LINUX_LVM_TYPE,
            _ => LINUX_FS_TYPE,
        }
    }

    /// The filesystem type and label it carries (blkid's names), if any.
    pub fn filesystem(self) -> Option<(&'static str, &'static str)> {
        match self {
            Role::BiosBoot => None,
            Role::Esp => Some(("vfat", ESP_LABEL)),
            Role::Recovery => Some(("ext4", RECOVERY_LABEL)),
            Role::Emergency => Some(("ext4", EMERGENCY_LABEL)),
            Role::Images => Some(("ext4", IMAGES_LABEL)),
            Role::Cow => Some(("LVM2_member", "")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::BiosBoot => "BIOS boot",
            Role::Esp => "ESP",
            Role::Recovery => "recovery",
            Role::Emergency => "emergency",
            Role::Images => "images",
            Role::Cow => "snapshot COW PV",
        })
    }
}

/// What the options ask for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// The disk to provision: kernel name or `/dev` path.
    pub secondary: String,
    /// The primary; by default the disk the running system's root is on.
    pub primary: Option<String>,
    /// The VG the COW PV joins; by default the VG of the LV mounted at `/`.
    pub root_vg: Option<String>,
    /// The COW PV's size; by default [`COW_DEFAULT_PERCENT`] of the secondary.
    pub cow: Option<Bytes>,
}

/// Why provisioning will not go ahead. Each says which disk and why, in words a
/// technician can act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "refusal", rename_all = "snake_case")]
pub enum Refusal {
    #[error("no disk {disk} in the inventory (see `understudy disks`)")]
    NoSuchDisk { disk: String },
    #[error("{disk} is the disk the running system booted from ({why}); choose the other disk")]
    BootDisk { disk: String, why: String },
    #[error("{disk} is the primary disk; the secondary must be another disk")]
    IsPrimary { disk: String },
    #[error("{disk} is in use: {}; unmount, swapoff or deactivate first", reasons.join(", "))]
    Busy { disk: String, reasons: Vec<String> },
    #[error("{disk} is read-only")]
    ReadOnly { disk: String },
    #[error(
        "{disk} is too small: it has {} ({have} bytes) but needs at least {} ({needed} bytes): {why}",
        Bytes(*have), Bytes(*needed)
    )]
    TooSmall {
        disk: String,
        have: u64,
        needed: u64,
        why: String,
    },
    #[error("{disk} has {bytes}-byte sectors; only 512 and 4096 are supported")]
    SectorSize { disk: String, bytes: u64 },
    #[error(
        "{disk}'s partition {partition} is a physical volume of volume group {vg}; remove it from \
         the group (vgreduce) before provisioning over it"
    )]
    PvInUse {
        disk: String,
        partition: String,
        vg: String,
    },
    #[error(
        "the root filesystem is not on an LVM logical volume, so there is no volume group for the \
         snapshot COW space; name one with --root-vg"
    )]
    NoRootVg,
    #[error("volume group {vg} does not exist")]
    NoSuchVg { vg: String },
    #[error(
        "the primary disk cannot be told from the running system's root; name it with --primary"
    )]
    NoPrimary,
    #[error(
        "{disk} (not the secondary) already has a filesystem labelled {label}; labels must be \
         unique across both disks"
    )]
    LabelTaken { disk: String, label: String },
    #[error("the COW size {} is below the minimum {}", Bytes(*given), COW_MIN_BYTES)]
    CowTooSmall { given: u64 },
}

/// Lay out a blank (or foreign) disk, or refresh one provisioned before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Write a new table and make every filesystem: everything on the disk is erased.
    Fresh,
    /// The disk is the recorded secondary with understudy's partitions: keep the table
    /// and the filesystems (images and the emergency copy survive), reinstall GRUB,
    /// the recovery kernel and initramfs, the menu and the recorded identities.
    Update,
}

/// A disk as the confirmation shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSummary {
    pub name: String,
    pub path: PathBuf,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub wwn: Option<String>,
    pub size: Bytes,
}

impl DiskSummary {
    fn of(d: &Disk) -> DiskSummary {
        DiskSummary {
            name: d.name.clone(),
            path: d.path.clone(),
            model: d.model.clone(),
            serial: d.serial.clone(),
            wwn: d.wwn.clone(),
            size: Bytes(d.size.0),
        }
    }
}

impl fmt::Display for DiskSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}), model {}, serial {}, {} ({} bytes)",
            self.path.display(),
            self.name,
            self.model.as_deref().unwrap_or("unknown"),
            self.serial.as_deref().unwrap_or("none"),
            self.size,
            self.size.0
        )
    }
}

/// A filesystem to make (or keep) on a partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewFilesystem {
    /// blkid's type: `vfat`, `ext4`, `LVM2_member`.
    pub fstype: String,
    /// Empty for the PV.
    pub label: String,
    /// As blkid prints it (`ABCD-1234` for FAT); for the PV, LVM's own UUID is left
    /// to pvcreate and this is empty.
    pub uuid: String,
}

/// One partition of the secondary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub role: Role,
    pub number: u32,
    /// The partition's device node.
    pub path: PathBuf,
    pub start: Bytes,
    pub size: Bytes,
    pub filesystem: Option<NewFilesystem>,
    /// Made now (true), or already there and kept (false).
    pub create: bool,
}

/// Everything provisioning will do, decided before anything is written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionPlan {
    pub mode: Mode,
    pub secondary: DiskSummary,
    pub primary: DiskSummary,
    /// The table to write (fresh mode only).
    pub table: Option<PartitionPlan>,
    pub parts: Vec<Part>,
    /// The VG the COW PV joins.
    pub root_vg: String,
    /// Whether the COW partition still has to become a PV of `root_vg`.
    pub add_cow_pv: bool,
    /// The operational section's used bytes, which sized the emergency partition.
    pub used: Bytes,
    /// The identities recorded on the recovery partition and in /etc/understudy.
    pub recorded: Recorded,
    /// The primary's filesystems, for the secondary's "Primary disk" entry.
    pub primary_boot: Option<PrimaryBootIds>,
    /// What the technician should know (a re-used disk, a guess made).
    pub notes: Vec<String>,
}

/// The primary's filesystem UUIDs the secondary's menu uses (see [`PrimaryDisk`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryBootIds {
    pub root_fs_uuid: String,
    pub boot_fs_uuid: String,
    pub esp_fs_uuid: Option<String>,
}

impl ProvisionPlan {
    pub fn part(&self, role: Role) -> &Part {
        // Every plan holds all six roles (built from `Role::ALL`).
        &self.parts[usize::try_from(role.number() - 1).unwrap_or(0)]
    }

    /// The filesystem UUID of a partition (empty if it has none).
    pub fn fs_uuid(&self, role: Role) -> &str {
        self.part(role)
            .filesystem
            .as_ref()
            .map_or("", |f| f.uuid.as_str())
    }

    /// The secondary's GRUB menu for this plan, with the emergency entry given (expand
    /// writes its command line; a fresh disk gets Debian's `/vmlinuz` links and none).
    pub fn secondary_boot(&self, emergency: Option<EmergencyEntry>) -> SecondaryBoot {
        let fs_uuid = self.fs_uuid(Role::Emergency).to_string();
        SecondaryBoot {
            recovery_fs_uuid: self.fs_uuid(Role::Recovery).to_string(),
            emergency: emergency.unwrap_or(EmergencyEntry {
                fs_uuid,
                kernel: "/vmlinuz".into(),
                initrd: "/initrd.img".into(),
                cmdline: Vec::new(),
            }),
            primary: self.primary_boot.as_ref().map(|p| PrimaryDisk {
                root_fs_uuid: p.root_fs_uuid.clone(),
                boot_fs_uuid: p.boot_fs_uuid.clone(),
                esp_fs_uuid: p.esp_fs_uuid.clone(),
            }),
            fallback_timeout_secs: 3,
            menu_timeout_secs: 5,
        }
    }
}

impl fmt::Display for ProvisionPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "secondary: {}", self.secondary)?;
        writeln!(f, "primary:   {}", self.primary)?;
        match self.mode {
            Mode::Fresh => writeln!(
                f,
                "mode: fresh: a new GPT and new filesystems; EVERYTHING ON {} IS ERASED",
                self.secondary.path.display()
            )?,
            Mode::Update => writeln!(
                f,
                "mode: update: the disk is the recorded secondary; its table, images and \
                 emergency copy are kept"
            )?,
        }
        writeln!(
            f,
            "operational section: {} used; COW PV joins volume group {}",
            self.used, self.root_vg
        )?;
        writeln!(
            f,
            "  #  role             start        size        filesystem"
        )?;
        for p in &self.parts {
            let fs = match &p.filesystem {
                Some(fs) if fs.label.is_empty() => fs.fstype.clone(),
                Some(fs) => format!("{} {} {}", fs.fstype, fs.label, fs.uuid),
                None => "-".into(),
            };
            let what = if p.create { "new" } else { "kept" };
            writeln!(
                f,
                "  {}  {:<16} {:>11} {:>11}  {fs} ({what})",
                p.number,
                p.role.to_string(),
                p.start.to_string(),
                p.size.to_string()
            )?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

/// The device node of partition `n` of `disk`: `/dev/vdb3`, `/dev/nvme0n1p3`.
pub fn partition_path(disk: &Path, n: u32) -> PathBuf {
    let s = disk.to_string_lossy();
    if s.ends_with(|c: char| c.is_ascii_digit()) {
        PathBuf::from(format!("{s}p{n}"))
    } else {
        PathBuf::from(format!("{s}{n}"))
    }
}

/// Where the running system's root filesystem lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootPlace {
    /// The disk holding it (the root partition's, or the root VG's PVs').
    pub disks: Vec<String>,
    /// Its VG when it is an LV.
    pub vg: Option<String>,
}

/// The disks and VG of the filesystem mounted at `/`, from the inventory's usage.
pub fn root_place(inv: &Inventory) -> Option<RootPlace> {
    let slash = Path::new("/");
    for d in &inv.disks {
        if d.usage.mounts.iter().any(|m| m == slash)
            || d.partitions
                .iter()
                .any(|p| p.usage.mounts.iter().any(|m| m == slash))
        {
            return Some(RootPlace {
                disks: vec![d.name.clone()],
                vg: None,
            });
        }
    }
    let LvmStatus::Found(lvm) = &inv.lvm else {
        return None;
    };
    let lv = lvm
        .lvs
        .iter()
        .find(|lv| lv.usage.mounts.iter().any(|m| m == slash))?;
    // The disks holding the root LV's extents; a PV of the VG elsewhere (the COW PV
    // on the secondary) does not make that disk the boot disk.
    let mut disks = Vec::new();
    for dev in &lv.devices {
        if let Some(d) = disk_of_path(inv, dev)
            && !disks.contains(&d.name)
        {
            disks.push(d.name.clone());
        }
    }
    if disks.is_empty() {
        disks = vg_disks(inv, &lv.vg);
    }
    Some(RootPlace {
        disks,
        vg: Some(lv.vg.clone()),
    })
}

/// The disks holding a PV of `vg`.
fn vg_disks(inv: &Inventory, vg: &str) -> Vec<String> {
    let LvmStatus::Found(lvm) = &inv.lvm else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for pv in lvm.pvs.iter().filter(|pv| pv.vg.as_deref() == Some(vg)) {
        if let Some(d) = disk_of_path(inv, &pv.path)
            && !out.contains(&d.name)
        {
            out.push(d.name.clone());
        }
    }
    out
}

/// The disk a device path (whole disk or partition) belongs to.
fn disk_of_path<'a>(inv: &'a Inventory, path: &Path) -> Option<&'a Disk> {
    inv.disks
        .iter()
        .find(|d| d.path == path || d.partitions.iter().any(|p| p.path.as_deref() == Some(path)))
}

/// A disk by kernel name or `/dev` path.
pub fn find_disk<'a>(inv: &'a Inventory, name: &str) -> Option<&'a Disk> {
    let short = name.strip_prefix("/dev/").unwrap_or(name);
    inv.disks
        .iter()
        .find(|d| d.name == short || d.path == Path::new(name))
}

/// The used bytes of the operational section: every filesystem of the primary's
/// layout (swap is not copied).
pub fn used_bytes(primary: &Layout) -> Bytes {
    Bytes(
        primary
            .filesystems
            .iter()
            .filter(|f| f.fstype != "swap")
            .fold(0u64, |acc, f| acc.saturating_add(f.used_bytes.0)),
    )
}

/// The primary's filesystems that the secondary's menu names: the root (presence),
/// a filesystem on a partition of the disk itself (BIOS chainloads that disk's MBR:
/// `/boot`, else the ESP, else any), the ESP (UEFI chainloads its removable path).
fn primary_boot_ids(primary: &Layout, notes: &mut Vec<String>) -> Option<PrimaryBootIds> {
    let by_mount = |m: &str| {
        primary
            .filesystems
            .iter()
            .find(|f| f.mountpoint.as_deref() == Some(m) && f.uuid.is_some())
    };
    let Some(root) = by_mount("/") else {
        notes.push(
            "the primary's root filesystem is not in its layout (no fstab entry or mount for /): \
             the secondary's menu has no \"Primary disk\" entry and always falls back"
                .into(),
        );
        return None;
    };
    let on_partition = |f: &&layout::Filesystem| matches!(f.source, Source::Partition(_));
    let esp = primary
        .filesystems
        .iter()
        .filter(on_partition)
        .find(|f| f.fstype == "vfat" && f.uuid.is_some());
    let boot = by_mount("/boot")
        .filter(on_partition)
        .or(Some(root).filter(on_partition))
        .or(esp)
        .or_else(|| {
            primary
                .filesystems
                .iter()
                .filter(on_partition)
                .find(|f| f.uuid.is_some())
        });
    let boot_uuid = match boot {
        Some(b) => b.uuid.clone(),
        None => {
            notes.push(
                "no filesystem on a partition of the primary: BIOS cannot chainload it from the \
                 secondary's menu"
                    .into(),
            );
            root.uuid.clone()
        }
    };
    Some(PrimaryBootIds {
        root_fs_uuid: root.uuid.clone().unwrap_or_default(),
        boot_fs_uuid: boot_uuid.unwrap_or_default(),
        esp_fs_uuid: esp.and_then(|e| e.uuid.clone()),
    })
}

/// Every UUID (filesystem, partition, disk, PV, LV) and label present on disks other
/// than `except`, lowercased: fresh ones must differ from all of them.
fn taken_ids(inv: &Inventory, except: &str) -> (BTreeSet<String>, Vec<(String, String)>) {
    let mut uuids = BTreeSet::new();
    let mut labels = Vec::new();
    let mut sig = |disk: &str, s: &Option<disk::Signature>| {
        if let Some(s) = s {
            if let Some(u) = &s.uuid {
                uuids.insert(u.to_ascii_lowercase());
            }
            if let Some(l) = &s.label {
                labels.push((disk.to_string(), l.clone()));
            }
        }
    };
    for d in inv.disks.iter().filter(|d| d.name != except) {
        sig(&d.name, &d.signature);
        for p in &d.partitions {
            sig(&d.name, &p.signature);
        }
    }
    if let LvmStatus::Found(lvm) = &inv.lvm {
        for lv in &lvm.lvs {
            sig(&format!("{}/{}", lv.vg, lv.name), &lv.signature);
        }
    }
    for d in inv.disks.iter().filter(|d| d.name != except) {
        if let Some(id) = d.table.as_ref().and_then(|t| t.id.as_ref()) {
            uuids.insert(id.to_ascii_lowercase());
        }
        for p in &d.partitions {
            if let Some(u) = &p.uuid {
                uuids.insert(u.to_ascii_lowercase());
            }
        }
    }
    if let LvmStatus::Found(lvm) = &inv.lvm {
        uuids.extend(lvm.pvs.iter().map(|p| p.uuid.to_ascii_lowercase()));
        uuids.extend(lvm.lvs.iter().map(|l| l.uuid.to_ascii_lowercase()));
        uuids.extend(lvm.vgs.iter().map(|v| v.uuid.to_ascii_lowercase()));
    }
    (uuids, labels)
}

/// Draws UUIDs from `gen`, skipping any already taken or drawn.
struct Fresh<'a> {
    taken: BTreeSet<String>,
    new_uuid: &'a mut dyn FnMut() -> Uuid,
}

impl Fresh<'_> {
    fn uuid(&mut self) -> Uuid {
        loop {
            let u = (self.new_uuid)();
            if !u.is_nil() && self.taken.insert(u.to_string()) {
                return u;
            }
        }
    }

    /// A FAT volume id, `ABCD-1234`, from a fresh UUID's first four bytes.
    fn fat_id(&mut self) -> String {
        loop {
            let b = self.uuid().into_bytes();
            let id = format!("{:02X}{:02X}-{:02X}{:02X}", b[0], b[1], b[2], b[3]);
            if id != "0000-0000" && self.taken.insert(id.to_ascii_lowercase()) {
                return id;
            }
        }
    }
}

/// Whether the disk carries understudy's partitions with their labels: partition
/// number, fs type and label of each role, and a PV at 6.
fn has_understudy_layout(d: &Disk) -> bool {
    Role::ALL.iter().all(|role| {
        let Some((kind, label)) = role.filesystem() else {
            return d.partitions.iter().any(|p| p.number == role.number());
        };
        d.partitions.iter().any(|p| {
            p.number == role.number()
                && p.signature.as_ref().is_some_and(|s| {
                    s.kind == kind && (label.is_empty() || s.label.as_deref() == Some(label))
                })
        })
    })
}

/// The primary: the one named, else the disk holding the running system's root.
pub fn primary_disk<'a>(inv: &'a Inventory, req: &Request) -> Result<&'a Disk, Refusal> {
    match &req.primary {
        Some(p) => find_disk(inv, p).ok_or_else(|| Refusal::NoSuchDisk { disk: p.clone() }),
        None => root_place(inv)
            .as_ref()
            .and_then(|r| r.disks.first())
            .and_then(|n| inv.disk(n))
            .ok_or(Refusal::NoPrimary),
    }
}

/// Plan provisioning `req.secondary`. `primary` is the primary's captured layout (for
/// the used bytes and its boot filesystems), `recorded` what /etc/understudy says
/// (for recognising a provisioned disk), `new_uuid` the source of fresh UUIDs (random
/// in the executor, fixed in tests); drawn UUIDs that clash with any on the other
/// disks are skipped.
pub fn plan(
    inv: &Inventory,
    req: &Request,
    primary: &Layout,
    recorded: Option<&Recorded>,
    new_uuid: &mut dyn FnMut() -> Uuid,
) -> Result<ProvisionPlan, Refusal> {
    let sec = find_disk(inv, &req.secondary).ok_or_else(|| Refusal::NoSuchDisk {
        disk: req.secondary.clone(),
    })?;
    let root = root_place(inv);
    if let Some(r) = &root
        && r.disks.contains(&sec.name)
    {
        let why = match &r.vg {
            Some(vg) => format!("it holds the root LV's extents in {vg}"),
            None => "it holds the root filesystem".into(),
        };
        return Err(Refusal::BootDisk {
            disk: sec.name.clone(),
            why,
        });
    }
    let prim = primary_disk(inv, req)?;
    if prim.name == sec.name {
        return Err(Refusal::IsPrimary {
            disk: sec.name.clone(),
        });
    }
    if sec.read_only {
        return Err(Refusal::ReadOnly {
            disk: sec.name.clone(),
        });
    }
    let reasons = sec.busy_reasons();
    if !reasons.is_empty() {
        return Err(Refusal::Busy {
            disk: sec.name.clone(),
            reasons,
        });
    }
    let sector = SectorSize::try_from(sec.logical_sector.0).map_err(|_| Refusal::SectorSize {
        disk: sec.name.clone(),
        bytes: sec.logical_sector.0,
    })?;
    let root_vg = match (&req.root_vg, root.as_ref().and_then(|r| r.vg.clone())) {
        (Some(vg), _) => vg.clone(),
        (None, Some(vg)) => vg,
        (None, None) => return Err(Refusal::NoRootVg),
    };
    let lvm = match &inv.lvm {
        LvmStatus::Found(l) => Some(l),
        _ => None,
    };
    if !lvm.is_some_and(|l| l.vgs.iter().any(|v| v.name == root_vg)) {
        return Err(Refusal::NoSuchVg { vg: root_vg });
    }
    let (taken, labels) = taken_ids(inv, &sec.name);
    for label in [ESP_LABEL, RECOVERY_LABEL, EMERGENCY_LABEL, IMAGES_LABEL] {
        if let Some((disk, _)) = labels.iter().find(|(_, l)| l == label) {
            return Err(Refusal::LabelTaken {
                disk: disk.clone(),
                label: label.into(),
            });
        }
    }
    // The secondary's PVs: the COW PV in the root VG is expected on a provisioned
    // disk; any other PV in a VG would break that VG if overwritten.
    let sec_pvs: Vec<&disk::Pv> = lvm
        .map(|l| {
            l.pvs
                .iter()
                .filter(|pv| disk_of_path(inv, &pv.path).is_some_and(|d| d.name == sec.name))
                .collect()
        })
        .unwrap_or_default();
    let recorded_here = recorded
        .and_then(|r| r.secondary.as_ref())
        .is_some_and(|id| id.matches(&sec.identity).is_some());
    let labelled = has_understudy_layout(sec);
    let mut notes = Vec::new();
    let mode = if labelled && recorded_here {
        Mode::Update
    } else {
        if labelled {
            notes.push(format!(
                "{} carries understudy's partitions but is not the secondary recorded in \
                 /etc/understudy: it is laid out afresh and its images are erased",
                sec.name
            ));
        }
        Mode::Fresh
    };
    let cow_path = partition_path(&sec.path, Role::Cow.number());
    let mut add_cow_pv = true;
    for pv in &sec_pvs {
        let Some(vg) = &pv.vg else { continue };
        let expected = mode == Mode::Update && pv.path == cow_path && *vg == root_vg;
        if expected {
            add_cow_pv = false;
        } else {
            return Err(Refusal::PvInUse {
                disk: sec.name.clone(),
                partition: pv.path.display().to_string(),
                vg: vg.clone(),
            });
        }
    }
    if let Some(c) = req.cow
        && c < COW_MIN_BYTES
    {
        return Err(Refusal::CowTooSmall { given: c.0 });
    }

    let used = used_bytes(primary);
    let primary_boot = primary_boot_ids(primary, &mut notes);
    let recorded = Recorded {
        primary: Some(prim.identity.clone()),
        secondary: Some(sec.identity.clone()),
    };
    let mut fresh = Fresh { taken, new_uuid };
    let (table, parts) = match mode {
        Mode::Fresh => {
            let (table, parts) = lay_out(sec, sector, used, req.cow, &mut fresh)?;
            (Some(table), parts)
        }
        Mode::Update => (None, existing_parts(sec)),
    };
    Ok(ProvisionPlan {
        mode,
        secondary: DiskSummary::of(sec),
        primary: DiskSummary::of(prim),
        table,
        parts,
        root_vg,
        add_cow_pv,
        used,
        recorded,
        primary_boot,
        notes,
    })
}

fn mib_up(b: u64) -> u64 {
    b.checked_next_multiple_of(MIB).unwrap_or(u64::MAX)
}

/// The six partitions of a fresh table, 1 MiB-aligned from 1 MiB: fixed sizes, the
/// emergency partition at twice `used`, the COW PV at the end, the images partition
/// taking what is between.
fn lay_out(
    sec: &Disk,
    sector: SectorSize,
    used: Bytes,
    cow: Option<Bytes>,
    fresh: &mut Fresh<'_>,
) -> Result<(PartitionPlan, Vec<Part>), Refusal> {
    let size = Bytes(sec.size.0);
    let disk_guid = fresh.uuid();
    let table = Table::Gpt { disk_guid };
    let emergency = mib_up(used.0.saturating_mul(2)).max(EMERGENCY_MIN_BYTES.0);
    let images_min = mib_up(used.0).max(IMAGES_MIN_BYTES.0);
    let cow = match cow {
        Some(c) => mib_up(c.0),
        None => (size.0 / 100 * COW_DEFAULT_PERCENT / MIB * MIB).max(COW_MIN_BYTES.0),
    };
    let fixed = BIOS_BOOT_BYTES.0 + ESP_BYTES.0 + RECOVERY_BYTES.0;
    // 1 MiB before the first partition, 1 MiB for the backup GPT at the end.
    let needed = [MIB, fixed, emergency, images_min, cow, MIB]
        .iter()
        .fold(0u64, |a, b| a.saturating_add(*b));
    let too_small = || Refusal::TooSmall {
        disk: sec.name.clone(),
        have: size.0,
        needed,
        why: format!(
            "BIOS boot, ESP and recovery take {}, the emergency partition twice the {} used \
             ({}), images at least {}, the COW PV {}",
            Bytes(fixed),
            used,
            Bytes(emergency),
            Bytes(images_min),
            Bytes(cow)
        ),
    };
    let geo = Geometry::new(&table, size, sector).ok_or_else(too_small)?;
    let first = geo
        .first_usable
        .bytes(sector)
        .map(|b| mib_up(b.0))
        .ok_or_else(too_small)?;
    let end = Lba(geo.last_usable.0 + 1)
        .bytes(sector)
        .map(|b| b.0 / MIB * MIB)
        .ok_or_else(too_small)?;
    let images = end
        .checked_sub(first)
        .and_then(|v| v.checked_sub(fixed + emergency + cow))
        .filter(|&v| v >= images_min)
        .ok_or_else(too_small)?;
    let sizes = [
        BIOS_BOOT_BYTES.0,
        ESP_BYTES.0,
        RECOVERY_BYTES.0,
        emergency,
        images,
        cow,
    ];
    let mut start = first;
    let mut planned = Vec::new();
    let mut parts = Vec::new();
    for (role, bytes) in Role::ALL.into_iter().zip(sizes) {
        let part_uuid = fresh.uuid();
        let filesystem = role.filesystem().map(|(kind, label)| NewFilesystem {
            fstype: kind.into(),
            label: label.into(),
            uuid: match kind {
                "vfat" => fresh.fat_id(),
                "ext4" => fresh.uuid().to_string(),
                _ => String::new(),
            },
        });
        let to_lba = |b: u64| Bytes(b).to_sectors(sector).ok_or_else(too_small);
        planned.push(PlannedPartition {
            number: role.number(),
            start_lba: Lba(to_lba(start)?.0),
            size_lba: to_lba(bytes)?,
            type_guid: Some(role.type_guid()),
            mbr_type: None,
            part_uuid: Some(part_uuid),
            name: role.gpt_name().into(),
            attributes: 0,
            was_bytes: Bytes(bytes),
            change: Change::Same,
        });
        parts.push(Part {
            role,
            number: role.number(),
            path: partition_path(&sec.path, role.number()),
            start: Bytes(start),
            size: Bytes(bytes),
            filesystem,
            create: true,
        });
        start += bytes;
    }
    let plan = PartitionPlan {
        table,
        sector_size: sector,
        disk_bytes: size,
        first_usable: geo.first_usable,
        last_usable: geo.last_usable,
        partitions: planned,
        lvs: Vec::new(),
    };
    // A planner bug must be an error here, never a bad table on a disk.
    layout::check_plan(&plan).map_err(|why| Refusal::TooSmall {
        disk: sec.name.clone(),
        have: size.0,
        needed,
        why,
    })?;
    Ok((plan, parts))
}

/// The partitions of a provisioned disk, as they are (every one kept).
fn existing_parts(sec: &Disk) -> Vec<Part> {
    Role::ALL
        .into_iter()
        .map(|role| {
            let p = sec.partitions.iter().find(|p| p.number == role.number());
            let filesystem = role.filesystem().map(|(kind, label)| NewFilesystem {
                fstype: kind.into(),
                label: label.into(),
                uuid: p
                    .and_then(|p| p.signature.as_ref())
                    .and_then(|s| s.uuid.clone())
                    .filter(|_| kind != "LVM2_member")
                    .unwrap_or_default(),
            });
            Part {
                role,
                number: role.number(),
                path: p
                    .and_then(|p| p.path.clone())
                    .unwrap_or_else(|| partition_path(&sec.path, role.number())),
                start: Bytes(p.map_or(0, |p| p.start.0)),
                size: Bytes(p.map_or(0, |p| p.size.0)),
                filesystem,
                create: false,
            }
        })
        .collect()
}

/// The emergency entry in a `grub.cfg` that `boot::render_grub_cfg` wrote (expand may
/// have given it a remapped command line): its kernel, initrd and the words after the
/// consoles, so a re-run of provision keeps them. `None` if the text is not ours.
pub fn emergency_entry_from_cfg(cfg: &str, fs_uuid: &str) -> Option<EmergencyEntry> {
    let body = cfg.split("function understudy_emergency {").nth(1)?;
    let body = body.split('}').next()?;
    let mut kernel = None;
    let mut initrd = None;
    let mut cmdline = Vec::new();
    for line in body.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("linux") => {
                kernel = words.next().map(str::to_string);
                let rest: Vec<&str> = words.collect();
                let after = format!("root=UUID={fs_uuid} ro {}", crate::boot::CONSOLES);
                let skip = after.split_whitespace().count();
                if rest.join(" ").starts_with(&after) {
                    cmdline = rest[skip..].iter().map(|w| w.to_string()).collect();
                } else {
                    return None;
                }
            }
            Some("initrd") => initrd = words.next().map(str::to_string),
            _ => {}
        }
    }
    Some(EmergencyEntry {
        fs_uuid: fs_uuid.to_string(),
        kernel: kernel?,
        initrd: initrd?,
        cmdline,
    })
}
