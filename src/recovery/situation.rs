//! The machine's situation as the recovery console tells it: the primary's state
//! (healthy, present but unreadable and why, missing, or a replacement candidate in
//! its place), the emergency copy (ready or not, which image, when), the images
//! newest first, the disks a restore may write to, and what the machine runs from.
//! A pure function ([`decide`]) of the facts [`gather`](super::gather) collects.
//!
//! Does not own: collecting the facts, comparing identities (`disk::identify`), or
//! drawing any of it (`console::view`).

use std::fmt;
use std::path::PathBuf;

use crate::boot::EnvRead;
use crate::disk::{
    self, Bytes, Candidate, Disk, DiskRoles, Inventory, PrimaryStatus, Readability, Role,
};
use crate::init::recorded::{RECOVERY_LABEL, RecordedState};

use super::emergency::EmergencyBoot;
use super::images::ImageView;

/// The emergency partition's filesystem label (`docs/disk-layout.md`).
pub use crate::restore::execute::EMERGENCY_LABEL;
/// The images partition's filesystem label.
pub const IMAGES_LABEL: &str = "US-IMAGES";

/// Why a present primary cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// Reading the disk fails: the operating system's message.
    IoError(String),
    /// The disk reads, but holds no partition table (wiped, or never written).
    NoPartitionTable,
    /// A filesystem's superblock is damaged: which one and how.
    BadSuperblock(String),
    /// The disk and its table read, but its root filesystem will not mount.
    RootWillNotMount(String),
    /// Anything else libblkid or the kernel reported.
    Other(String),
}

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unreadable::IoError(e) => write!(f, "I/O error: {e}"),
            Unreadable::NoPartitionTable => f.write_str("no partition table"),
            Unreadable::BadSuperblock(e) => write!(f, "bad superblock: {e}"),
            Unreadable::RootWillNotMount(e) => write!(f, "root filesystem will not mount: {e}"),
            Unreadable::Other(e) => f.write_str(e),
        }
    }
}

impl Unreadable {
    /// The reason for a disk state that is not [`Readability::Readable`].
    pub fn from_readability(r: &Readability) -> Unreadable {
        match r {
            Readability::IoError(e) => Unreadable::IoError(e.clone()),
            Readability::NoMedium => Unreadable::IoError("no medium".into()),
            Readability::NoPartitionTable | Readability::Blank => Unreadable::NoPartitionTable,
            Readability::BadSuperblock(e) => Unreadable::BadSuperblock(e.clone()),
            other => Unreadable::Other(other.to_string()),
        }
    }
}

/// What a disk that is not the primary would be as its replacement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replacement {
    Blank,
    /// Carries someone else's data: a restore erases it.
    Foreign,
    Unreadable(String),
}

impl fmt::Display for Replacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Replacement::Blank => f.write_str("blank"),
            Replacement::Foreign => f.write_str("has other data"),
            Replacement::Unreadable(r) => write!(f, "unreadable: {r}"),
        }
    }
}

/// The primary disk's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrimaryState {
    Healthy {
        disk: String,
    },
    /// Its identity matches, its contents cannot be used.
    Unreadable {
        disk: String,
        reason: Unreadable,
    },
    /// Not present, and no other disk could take its place.
    Missing,
    /// Not present; these unknown disks (blank or foreign) could take its place.
    Replacement {
        candidates: Vec<(String, Replacement)>,
    },
    /// Several disks match the recorded identity equally well.
    Ambiguous {
        disks: Vec<String>,
    },
    /// Nothing to compare with: no identities recorded or readable.
    Unknown {
        why: String,
    },
}

impl PrimaryState {
    /// Whether the primary is gone (missing, with or without a candidate).
    pub fn is_missing(&self) -> bool {
        matches!(
            self,
            PrimaryState::Missing | PrimaryState::Replacement { .. }
        )
    }
}

impl fmt::Display for PrimaryState {
    /// The status screen's "Primary:" line, without the prefix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrimaryState::Healthy { disk } => write!(f, "healthy ({disk})"),
            PrimaryState::Unreadable { disk, reason } => {
                write!(f, "present but unreadable ({disk}: {reason})")
            }
            PrimaryState::Missing => f.write_str("MISSING; no replacement candidate"),
            PrimaryState::Replacement { candidates } => {
                let list: Vec<String> = candidates
                    .iter()
                    .map(|(d, why)| format!("{d} ({why})"))
                    .collect();
                write!(f, "MISSING; replacement candidate: {}", list.join(", "))
            }
            PrimaryState::Ambiguous { disks } => {
                write!(f, "ambiguous, matches {}", disks.join(", "))
            }
            PrimaryState::Unknown { why } => write!(f, "unknown, {why}"),
        }
    }
}

/// The emergency copy on the secondary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EmergencyState {
    /// Marked ready: `image` is the image it was expanded from, `when` that image's
    /// creation time when the image is still listed; `boot` how to start it (`None`
    /// when GRUB's entry could not be read: it can then only be booted through GRUB).
    Ready {
        image: Option<String>,
        when: Option<String>,
        boot: Option<EmergencyBoot>,
    },
    NotReady {
        why: String,
    },
}

impl EmergencyState {
    pub fn is_ready(&self) -> bool {
        matches!(self, EmergencyState::Ready { .. })
    }
}

impl fmt::Display for EmergencyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmergencyState::Ready { image, when, .. } => {
                f.write_str("ready")?;
                if let Some(i) = image {
                    write!(f, ", image {i}")?;
                }
                if let Some(w) = when {
                    write!(f, " of {w}")?;
                }
                Ok(())
            }
            EmergencyState::NotReady { why } => write!(f, "NOT READY ({why})"),
        }
    }
}

/// What the machine is running from right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunningFrom {
    /// The recovery system, in memory (no disk mounted at `/`).
    RecoveryRam,
    Primary {
        device: PathBuf,
    },
    Emergency {
        device: PathBuf,
    },
    /// A root on some other device (a developer's machine).
    Other {
        device: PathBuf,
    },
}

impl fmt::Display for RunningFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunningFrom::RecoveryRam => f.write_str("the recovery system, in memory"),
            RunningFrom::Primary { device } => write!(f, "the primary ({})", device.display()),
            RunningFrom::Emergency { device } => {
                write!(f, "the emergency copy ({})", device.display())
            }
            RunningFrom::Other { device } => write!(f, "{}", device.display()),
        }
    }
}

/// One partition of a restore target, as it is now (what the restore erases).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetPartition {
    pub number: u32,
    pub size: Bytes,
    /// Filesystem or other signature type, and its label.
    pub content: Option<String>,
}

/// A disk a restore may write to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub disk: String,
    pub path: PathBuf,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub size: Bytes,
    /// Why it is offered: "the recorded primary", "blank", "has other data".
    pub why: String,
    pub partitions: Vec<TargetPartition>,
}

impl Target {
    /// What the technician types to confirm erasing it: its serial number, or its
    /// kernel name when it reports none.
    pub fn confirm_word(&self) -> &str {
        self.serial.as_deref().unwrap_or(&self.disk)
    }
}

/// The facts [`decide`] works from.
#[derive(Clone, Debug)]
pub struct Facts {
    pub inventory: Inventory,
    pub recorded: RecordedState,
    /// The environment block's two copies as read (`None`: the recovery filesystem was
    /// not found or not mounted; `env_problem` says why).
    pub env: Option<EnvRead>,
    pub env_problem: Option<String>,
    /// The emergency entry from GRUB's configuration, or why it could not be read.
    pub emergency_boot: Result<EmergencyBoot, String>,
    /// In any order; [`decide`] sorts them.
    pub images: Vec<ImageView>,
    /// Why the images could not be listed, if they could not.
    pub images_problem: Option<String>,
    /// Why the primary's root filesystem would not mount, when that was tried and
    /// failed.
    pub root_mount_problem: Option<String>,
}

/// Everything the console shows and chooses from.
#[derive(Clone, Debug)]
pub struct Situation {
    pub inventory: Inventory,
    pub recorded: RecordedState,
    pub roles: Option<DiskRoles>,
    pub primary: PrimaryState,
    /// The secondary's kernel name, when it is known and present.
    pub secondary: Option<String>,
    pub emergency: EmergencyState,
    /// Newest first.
    pub images: Vec<ImageView>,
    pub images_problem: Option<String>,
    pub targets: Vec<Target>,
    pub running_from: RunningFrom,
}

fn replacement(c: &Candidate) -> Replacement {
    match c {
        Candidate::Blank => Replacement::Blank,
        Candidate::Foreign => Replacement::Foreign,
        Candidate::Unreadable(r) => Replacement::Unreadable(r.to_string()),
    }
}

fn primary_state(f: &Facts, roles: Option<&DiskRoles>) -> PrimaryState {
    let Some(roles) = roles else {
        let why = match &f.recorded {
            RecordedState::NoRecoveryFilesystem => {
                format!("no filesystem labelled {RECOVERY_LABEL} holds the recorded identities")
            }
            RecordedState::Unreadable { reason, .. } => {
                format!("the recorded identities are unreadable: {reason}")
            }
            RecordedState::Found { .. } => "no recorded identities".into(),
        };
        return PrimaryState::Unknown { why };
    };
    match &roles.primary {
        PrimaryStatus::Healthy { disk } => match &f.root_mount_problem {
            Some(p) => PrimaryState::Unreadable {
                disk: disk.clone(),
                reason: Unreadable::RootWillNotMount(p.clone()),
            },
            None => PrimaryState::Healthy { disk: disk.clone() },
        },
        PrimaryStatus::Unreadable { disk, reason } => PrimaryState::Unreadable {
            disk: disk.clone(),
            reason: Unreadable::from_readability(reason),
        },
        PrimaryStatus::Missing => {
            let candidates: Vec<(String, Replacement)> = roles
                .disks
                .iter()
                .filter_map(|d| match &d.role {
                    Role::Replacement(c) => Some((d.disk.clone(), replacement(c))),
                    _ => None,
                })
                .collect();
            if candidates.is_empty() {
                PrimaryState::Missing
            } else {
                PrimaryState::Replacement { candidates }
            }
        }
        PrimaryStatus::Ambiguous { disks } => PrimaryState::Ambiguous {
            disks: disks.clone(),
        },
        PrimaryStatus::NotRecorded => PrimaryState::Unknown {
            why: "no identity was recorded for it".into(),
        },
    }
}

/// Whether any partition (or the whole disk) of `d` carries a filesystem labelled
/// `label`.
fn has_label(d: &Disk, label: &str) -> bool {
    d.signature
        .iter()
        .chain(d.partitions.iter().filter_map(|p| p.signature.as_ref()))
        .any(|s| s.label.as_deref() == Some(label))
}

/// The secondary: the disk recorded as such, else the one holding the recovery
/// filesystem (identities may be unreadable, the disk is still the secondary).
fn find_secondary(inv: &Inventory, roles: Option<&DiskRoles>) -> Option<String> {
    let recorded = roles.and_then(|r| {
        r.disks
            .iter()
            .find(|d| d.role == Role::Secondary)
            .map(|d| d.disk.clone())
    });
    recorded.or_else(|| {
        inv.disks
            .iter()
            .find(|d| has_label(d, RECOVERY_LABEL))
            .map(|d| d.name.clone())
    })
}

fn emergency_state(f: &Facts, images: &[ImageView]) -> EmergencyState {
    let Some(env) = &f.env else {
        return EmergencyState::NotReady {
            why: f
                .env_problem
                .clone()
                .unwrap_or_else(|| "the recovery filesystem was not read".into()),
        };
    };
    match env.env() {
        None => EmergencyState::NotReady {
            why: "neither copy of the GRUB environment block is usable".into(),
        },
        Some(e) if !e.emergency_ready() => EmergencyState::NotReady {
            why: "marked not ready".into(),
        },
        Some(e) => {
            let image = e.vars.get(crate::boot::EMERGENCY_IMAGE_KEY).cloned();
            let when = image.as_ref().and_then(|id| {
                images
                    .iter()
                    .find(|i| &i.id == id)
                    .and_then(|i| i.created.clone())
            });
            EmergencyState::Ready {
                image,
                when,
                boot: f.emergency_boot.clone().ok(),
            }
        }
    }
}

fn running_from(inv: &Inventory, primary: Option<&str>) -> RunningFrom {
    let Some(root) = inv
        .mounts
        .iter()
        .find(|m| m.mount_point == std::path::Path::new("/"))
    else {
        return RunningFrom::RecoveryRam;
    };
    let device = PathBuf::from(&root.source);
    let on = |d: &Disk| {
        d.path == device
            || d.partitions
                .iter()
                .any(|p| p.path.as_deref() == Some(device.as_path()))
    };
    let disk = inv.disks.iter().find(|d| on(d));
    match disk {
        Some(d) if Some(d.name.as_str()) == primary => RunningFrom::Primary { device },
        Some(d)
            if d.partitions.iter().any(|p| {
                p.path.as_deref() == Some(device.as_path())
                    && p.signature
                        .as_ref()
                        .is_some_and(|s| s.label.as_deref() == Some(EMERGENCY_LABEL))
            }) =>
        {
            RunningFrom::Emergency { device }
        }
        _ => RunningFrom::Other { device },
    }
}

fn target(d: &Disk, why: String) -> Target {
    Target {
        disk: d.name.clone(),
        path: d.path.clone(),
        model: d.model.clone(),
        serial: d.serial.clone(),
        size: d.size,
        why,
        partitions: d
            .partitions
            .iter()
            .map(|p| TargetPartition {
                number: p.number,
                size: p.size,
                content: p.signature.as_ref().map(|s| match &s.label {
                    Some(l) => format!("{} \"{l}\"", s.kind),
                    None => s.kind.clone(),
                }),
            })
            .collect(),
    }
}

/// The disks a restore may write to: the recorded primary (even unreadable) and the
/// replacement candidates; never the secondary, never removable media, never a disk
/// with no medium, never a busy disk or the one the machine runs from. Without recorded identities,
/// every fixed disk but the one holding the recovery filesystem.
fn targets(
    inv: &Inventory,
    roles: Option<&DiskRoles>,
    secondary: Option<&str>,
    running: &RunningFrom,
) -> Vec<Target> {
    let running_dev = match running {
        RunningFrom::RecoveryRam => None,
        RunningFrom::Primary { device }
        | RunningFrom::Emergency { device }
        | RunningFrom::Other { device } => Some(device.clone()),
    };
    let mut out = Vec::new();
    for d in &inv.disks {
        if Some(d.name.as_str()) == secondary
            || d.removable
            || d.transport == disk::Transport::Usb
            || d.size.0 == 0
            || d.state == Readability::NoMedium
            || has_label(d, RECOVERY_LABEL)
            // Mounted, swapped on or held: the restore would refuse it.
            || !d.busy_reasons().is_empty()
        {
            continue;
        }
        if let Some(dev) = &running_dev
            && (d.path == *dev
                || d.partitions
                    .iter()
                    .any(|p| p.path.as_deref() == Some(dev.as_path())))
        {
            continue;
        }
        let why = match roles.and_then(|r| r.disks.iter().find(|x| x.disk == d.name)) {
            Some(r) => match &r.role {
                Role::Primary => "the recorded primary".to_string(),
                Role::Replacement(c) => replacement(c).to_string(),
                Role::Secondary | Role::Removable | Role::Ambiguous => continue,
            },
            None if roles.is_some() => continue,
            None => match &d.state {
                Readability::Blank => "blank".into(),
                other => format!("not recorded ({other})"),
            },
        };
        out.push(target(d, why));
    }
    out
}

/// What a copy-back onto the primary uses: the disk, and the image whose layout names
/// its filesystems.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyBackChoice {
    pub target: Target,
    pub image: ImageView,
}

impl Situation {
    /// Whether a copy-back onto the primary can start now (a healthy, idle recorded
    /// primary, an emergency filesystem on another disk that is not mounted, a readable
    /// image), onto which disk and with which image's layout (the newest readable
    /// image); else why not, as one sentence for the technician. `understudy copy-back --disk` checks again, more closely
    /// (the filesystems' UUIDs, the index), before it writes anything.
    pub fn copy_back(&self) -> Result<CopyBackChoice, String> {
        // The copy-back screen says that a restore copies back as its own step.
        const RESTORE: &str = "restore instead ([t])";
        let name = match &self.primary {
            PrimaryState::Healthy { disk } => disk,
            PrimaryState::Unreadable { disk, reason } => {
                return Err(format!(
                    "the primary ({disk}) is unreadable ({reason}): {RESTORE}"
                ));
            }
            PrimaryState::Missing | PrimaryState::Replacement { .. } => {
                return Err(format!("the primary is missing: {RESTORE}"));
            }
            p @ (PrimaryState::Ambiguous { .. } | PrimaryState::Unknown { .. }) => {
                return Err(format!(
                    "which disk is the primary cannot be told ({p}): copy-back needs the \
                     recorded primary, healthy"
                ));
            }
        };
        let Some(d) = self.inventory.disk(name) else {
            return Err(format!("the primary ({name}) is not in the inventory"));
        };
        let busy = d.busy_reasons();
        if !busy.is_empty() {
            return Err(format!(
                "the primary is in use ({}): copy back from the recovery console",
                busy.join("; ")
            ));
        }
        match crate::restore::copyback_disk::find_emergency(&self.inventory, name) {
            None => {
                return Err(format!(
                    "no emergency copy: no filesystem labelled {EMERGENCY_LABEL} on another disk"
                ));
            }
            Some(e) if !e.mounts.is_empty() => {
                return Err(format!(
                    "the emergency copy ({}) is mounted at {}: it must not change while it is \
                     copied back; copy back from the recovery console",
                    e.device.display(),
                    e.mounts
                        .iter()
                        .map(|m| m.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            Some(_) => {}
        }
        // An emergency copy not marked ready is still offered (the copy-back screen
        // warns): readiness says whether GRUB may boot it, and the restore's own
        // copy-back step does not look at it either; what guards a copy that was never
        // finished is its index, written last by expansion, which the child requires.
        let Some(image) = self.images.iter().find(|i| i.problem.is_none()) else {
            return Err(match &self.images_problem {
                Some(p) => format!("no image to read the primary's layout from: {p}"),
                None => "no image to read the primary's layout from".into(),
            });
        };
        Ok(CopyBackChoice {
            target: target(d, "the recorded primary".into()),
            image: image.clone(),
        })
    }
}

/// Newest first: by creation time, then by id (ids start with a UTC timestamp);
/// entries without a time (an unreadable manifest) last.
fn sort_images(images: &mut [ImageView]) {
    images.sort_by(|a, b| {
        b.created
            .is_some()
            .cmp(&a.created.is_some())
            .then_with(|| b.created.cmp(&a.created))
            .then_with(|| b.id.cmp(&a.id))
    });
}

/// The situation from the facts.
pub fn decide(f: Facts) -> Situation {
    let roles = match &f.recorded {
        RecordedState::Found { recorded, .. } => Some(disk::identify(&f.inventory, recorded)),
        _ => None,
    };
    let primary = primary_state(&f, roles.as_ref());
    let secondary = find_secondary(&f.inventory, roles.as_ref());
    let mut images = f.images.clone();
    sort_images(&mut images);
    let emergency = emergency_state(&f, &images);
    let primary_disk = match &primary {
        PrimaryState::Healthy { disk } | PrimaryState::Unreadable { disk, .. } => {
            Some(disk.as_str())
        }
        _ => None,
    };
    let running_from = running_from(&f.inventory, primary_disk);
    let targets = targets(
        &f.inventory,
        roles.as_ref(),
        secondary.as_deref(),
        &running_from,
    );
    Situation {
        primary,
        secondary,
        emergency,
        images,
        images_problem: f.images_problem,
        targets,
        running_from,
        roles,
        inventory: f.inventory,
        recorded: f.recorded,
    }
}

/// Test and demo values: disks, inventories and facts in a few lines.
#[cfg(test)]
pub mod fixtures {
    use super::*;
    use crate::boot::Env;
    use crate::disk::{Identity, LvmStatus, Partition, Recorded, Signature, Transport, Usage};

    pub fn disk(name: &str, serial: &str, mib: u64, state: Readability) -> Disk {
        let identity = Identity {
            wwn: None,
            serial: Some(serial.into()),
            model: Some("QEMU HARDDISK".into()),
            size: Bytes(mib << 20),
            logical_sector: Bytes(512),
        };
        Disk::known_as(name, identity, Transport::Virtio, state)
    }

    pub fn partition(disk: &str, number: u32, mib: u64, kind: &str, label: &str) -> Partition {
        Partition {
            number,
            device: Some(format!("{disk}{number}")),
            path: Some(PathBuf::from(format!("/dev/{disk}{number}"))),
            start: Bytes(1 << 20),
            size: Bytes(mib << 20),
            type_guid: None,
            uuid: None,
            name: None,
            extended: false,
            signature: Some(Signature {
                kind: kind.into(),
                uuid: None,
                label: Some(label.into()),
                usage: None,
                version: None,
                bad_checksum: false,
            }),
            error: None,
            usage: Usage::default(),
        }
    }

    pub fn root_mount(source: &str) -> crate::disk::Mount {
        crate::disk::Mount {
            devno: crate::disk::DevNo {
                major: 254,
                minor: 1,
            },
            root: "/".into(),
            mount_point: "/".into(),
            fs_type: "ext4".into(),
            source: source.into(),
            options: "rw".into(),
        }
    }

    pub fn primary() -> Disk {
        let mut d = disk("vda", "US-PRIMARY-0001", 64, Readability::Readable);
        d.partitions = vec![partition("vda", 1, 48, "ext4", "appliance-root")];
        d
    }

    pub fn secondary() -> Disk {
        let mut d = disk("vdb", "US-SECONDARY-0002", 640, Readability::Readable);
        d.partitions = vec![
            partition("vdb", 3, 64, "ext4", RECOVERY_LABEL),
            partition("vdb", 4, 64, "ext4", EMERGENCY_LABEL),
            partition("vdb", 5, 32, "ext4", IMAGES_LABEL),
        ];
        d
    }

    pub fn inventory(disks: Vec<Disk>) -> Inventory {
        Inventory {
            disks,
            lvm: LvmStatus::Skipped,
            mounts: Vec::new(),
            swaps: Vec::new(),
            problems: Vec::new(),
        }
    }

    pub fn recorded() -> RecordedState {
        RecordedState::Found {
            device: "/dev/vdb3".into(),
            recorded: Recorded {
                primary: Some(primary().identity),
                secondary: Some(secondary().identity),
            },
        }
    }

    pub fn image(id: &str, created: &str) -> ImageView {
        ImageView {
            id: id.into(),
            dir: PathBuf::from(format!("/run/understudy/images/{id}")),
            created: Some(created.into()),
            bytes: Some(Bytes(300 << 20)),
            archives: vec![("/".into(), Bytes(300 << 20))],
            problem: None,
        }
    }

    pub fn boot_entry() -> EmergencyBoot {
        EmergencyBoot {
            fs_uuid: "5ec0a3d1-0004-4e5c-9a11-000000000004".into(),
            kernel: "/vmlinuz".into(),
            initrd: "/initrd.img".into(),
            cmdline: "root=UUID=5ec0a3d1-0004-4e5c-9a11-000000000004 ro console=ttyS0,115200"
                .into(),
        }
    }

    /// Both disks healthy, the emergency copy ready with the older of two images.
    pub fn facts(disks: Vec<Disk>) -> Facts {
        Facts {
            inventory: inventory(disks),
            recorded: recorded(),
            env: Some(EnvRead::A {
                env: Env::with_emergency(Some("20261120T031500Z-pbx")),
                b_problem: None,
            }),
            env_problem: None,
            emergency_boot: Ok(boot_entry()),
            images: vec![
                image("20261120T031500Z-pbx", "2026-11-20T03:15:00Z"),
                image("20261124T031500Z-pbx", "2026-11-24T03:15:00Z"),
            ],
            images_problem: None,
            root_mount_problem: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use crate::boot::Env;
    use crate::disk::Transport;

    #[test]
    fn the_primary_state_comes_from_identity_readability_and_the_root_mount() {
        let unreadable = |state: Readability| {
            let mut p = primary();
            p.state = state;
            p
        };
        let mut usb = disk("sdc", "USB-STICK", 8000, Readability::Readable);
        usb.transport = Transport::Usb;
        let mut no_root = facts(vec![primary(), secondary()]);
        no_root.root_mount_problem = Some("mounting /dev/vg0/root: EUCLEAN".into());
        let no_identities = Facts {
            recorded: RecordedState::NoRecoveryFilesystem,
            ..facts(vec![primary(), secondary()])
        };
        let cases: Vec<(&str, Facts, PrimaryState)> = vec![
            (
                "healthy",
                facts(vec![primary(), secondary()]),
                PrimaryState::Healthy { disk: "vda".into() },
            ),
            (
                "i/o errors",
                facts(vec![
                    unreadable(Readability::IoError("Input/output error".into())),
                    secondary(),
                ]),
                PrimaryState::Unreadable {
                    disk: "vda".into(),
                    reason: Unreadable::IoError("Input/output error".into()),
                },
            ),
            (
                "no partition table",
                facts(vec![unreadable(Readability::NoPartitionTable), secondary()]),
                PrimaryState::Unreadable {
                    disk: "vda".into(),
                    reason: Unreadable::NoPartitionTable,
                },
            ),
            (
                "bad superblock",
                facts(vec![
                    unreadable(Readability::BadSuperblock("ext4 on vda1".into())),
                    secondary(),
                ]),
                PrimaryState::Unreadable {
                    disk: "vda".into(),
                    reason: Unreadable::BadSuperblock("ext4 on vda1".into()),
                },
            ),
            (
                "root will not mount",
                no_root,
                PrimaryState::Unreadable {
                    disk: "vda".into(),
                    reason: Unreadable::RootWillNotMount("mounting /dev/vg0/root: EUCLEAN".into()),
                },
            ),
            ("missing", facts(vec![secondary()]), PrimaryState::Missing),
            (
                "missing, a usb stick is no candidate",
                facts(vec![secondary(), usb.clone()]),
                PrimaryState::Missing,
            ),
            (
                "blank replacement",
                facts(vec![
                    disk("vdc", "NEW-DISK-9", 64, Readability::Blank),
                    secondary(),
                ]),
                PrimaryState::Replacement {
                    candidates: vec![("vdc".into(), Replacement::Blank)],
                },
            ),
            (
                "foreign replacement",
                facts(vec![
                    disk("vdc", "OLD-PC-DISK", 64, Readability::Readable),
                    secondary(),
                ]),
                PrimaryState::Replacement {
                    candidates: vec![("vdc".into(), Replacement::Foreign)],
                },
            ),
            (
                "nothing recorded",
                no_identities,
                PrimaryState::Unknown {
                    why: "no filesystem labelled US_RECOVERY holds the recorded identities".into(),
                },
            ),
        ];
        for (name, f, want) in cases {
            assert_eq!(decide(f).primary, want, "{name}");
        }
    }

    #[test]
    fn the_primary_line_says_why() {
        let s = decide(facts(vec![
            {
                let mut p = primary();
                p.state = Readability::IoError("Input/output error".into());
                p
            },
            secondary(),
        ]));
        assert_eq!(
            s.primary.to_string(),
            "present but unreadable (vda: I/O error: Input/output error)"
        );
        let s = decide(facts(vec![
            disk("vdc", "NEW", 64, Readability::Blank),
            secondary(),
        ]));
        assert_eq!(
            s.primary.to_string(),
            "MISSING; replacement candidate: vdc (blank)"
        );
        assert!(s.primary.is_missing());
    }

    #[test]
    fn the_emergency_copy_is_ready_with_its_image_and_time_or_not_and_why() {
        let s = decide(facts(vec![secondary()]));
        assert_eq!(
            s.emergency,
            EmergencyState::Ready {
                image: Some("20261120T031500Z-pbx".into()),
                when: Some("2026-11-20T03:15:00Z".into()),
                boot: Some(boot_entry()),
            }
        );
        let cases: Vec<(&str, Option<EnvRead>, Option<&str>, &str)> = vec![
            (
                "marked not ready",
                Some(EnvRead::A {
                    env: Env::with_emergency(None),
                    b_problem: None,
                }),
                None,
                "marked not ready",
            ),
            (
                "both copies torn",
                Some(EnvRead::Neither {
                    a_problem: "torn".into(),
                    b_problem: "missing".into(),
                }),
                None,
                "neither copy of the GRUB environment block is usable",
            ),
            (
                "no recovery filesystem",
                None,
                Some("no filesystem labelled US_RECOVERY"),
                "no filesystem labelled US_RECOVERY",
            ),
        ];
        for (name, env, problem, why) in cases {
            let f = Facts {
                env,
                env_problem: problem.map(String::from),
                ..facts(vec![secondary()])
            };
            assert_eq!(
                decide(f).emergency,
                EmergencyState::NotReady { why: why.into() },
                "{name}"
            );
        }
        // Ready, but GRUB's entry unreadable: still ready, no kexec plan.
        let f = Facts {
            emergency_boot: Err("no understudy_emergency function".into()),
            ..facts(vec![secondary()])
        };
        assert!(matches!(
            decide(f).emergency,
            EmergencyState::Ready { boot: None, .. }
        ));
    }

    #[test]
    fn images_come_newest_first_with_unreadable_ones_last() {
        let mut f = facts(vec![primary(), secondary()]);
        let mut broken = image("20261125T031500Z-pbx", "x");
        broken.created = None;
        broken.problem = Some("manifest.json: expected value".into());
        f.images.insert(0, broken);
        f.images
            .push(image("20261122T031500Z-pbx", "2026-11-22T03:15:00Z"));
        let ids: Vec<String> = decide(f).images.into_iter().map(|i| i.id).collect();
        assert_eq!(
            ids,
            [
                "20261124T031500Z-pbx",
                "20261122T031500Z-pbx",
                "20261120T031500Z-pbx",
                "20261125T031500Z-pbx"
            ]
        );
    }

    #[test]
    fn targets_are_never_the_secondary_removable_media_or_the_running_root() {
        let names =
            |f: Facts| -> Vec<String> { decide(f).targets.into_iter().map(|t| t.disk).collect() };
        let mut usb = disk("sdc", "USB-STICK", 8000, Readability::Readable);
        usb.transport = Transport::Usb;
        let mut card = disk("mmcblk0", "CARD", 4000, Readability::Blank);
        card.removable = true;
        let blank = disk("vdc", "NEW-DISK-9", 64, Readability::Blank);
        // The primary present (even unreadable) is the target; others are not asked.
        assert_eq!(
            names(facts(vec![
                primary(),
                secondary(),
                usb.clone(),
                card.clone()
            ])),
            ["vda"]
        );
        let mut bad = primary();
        bad.state = Readability::IoError("Input/output error".into());
        assert_eq!(names(facts(vec![bad, secondary()])), ["vda"]);
        // Missing: the blank candidate, not the stick or the card.
        let s = decide(facts(vec![
            secondary(),
            usb.clone(),
            card.clone(),
            blank.clone(),
        ]));
        assert_eq!(s.targets.len(), 1);
        assert_eq!(s.targets[0].disk, "vdc");
        assert_eq!(s.targets[0].why, "blank");
        assert_eq!(s.targets[0].confirm_word(), "NEW-DISK-9");
        // Nothing recorded: the secondary is still known by its recovery filesystem.
        let f = Facts {
            recorded: RecordedState::NoRecoveryFilesystem,
            ..facts(vec![blank.clone(), secondary(), usb])
        };
        let s = decide(f);
        assert_eq!(s.secondary.as_deref(), Some("vdb"));
        assert_eq!(
            s.targets.iter().map(|t| &t.disk).collect::<Vec<_>>(),
            ["vdc"]
        );
        // A disk with a mounted partition is no target.
        let mut busy = blank.clone();
        busy.partitions = vec![partition("vdc", 1, 60, "ext4", "data")];
        busy.partitions[0].usage.mounts.push("/mnt/images".into());
        let f = Facts {
            recorded: RecordedState::NoRecoveryFilesystem,
            ..facts(vec![busy, secondary()])
        };
        assert!(decide(f).targets.is_empty());
        // A dev machine running from vdc1: vdc is no target.
        let mut running = blank;
        running.partitions = vec![partition("vdc", 1, 60, "ext4", "root")];
        let mut f = Facts {
            recorded: RecordedState::NoRecoveryFilesystem,
            ..facts(vec![running, secondary()])
        };
        f.inventory.mounts.push(root_mount("/dev/vdc1"));
        let s = decide(f);
        assert_eq!(
            s.running_from,
            RunningFrom::Other {
                device: "/dev/vdc1".into()
            }
        );
        assert!(s.targets.is_empty(), "{:?}", s.targets);
    }

    #[test]
    fn the_machine_runs_from_ram_or_the_emergency_copy() {
        assert_eq!(
            decide(facts(vec![primary(), secondary()])).running_from,
            RunningFrom::RecoveryRam
        );
        let mut f = facts(vec![secondary()]);
        f.inventory.mounts.push(root_mount("/dev/vdb4"));
        assert_eq!(
            decide(f).running_from,
            RunningFrom::Emergency {
                device: "/dev/vdb4".into()
            }
        );
    }

    #[test]
    fn copy_back_needs_a_healthy_idle_primary_an_idle_emergency_copy_and_an_image() {
        let why = |f: Facts| decide(f).copy_back().unwrap_err();
        let ok = decide(facts(vec![primary(), secondary()]))
            .copy_back()
            .unwrap();
        assert_eq!(ok.target.disk, "vda");
        assert_eq!(ok.target.confirm_word(), "US-PRIMARY-0001");
        assert_eq!(ok.image.id, "20261124T031500Z-pbx", "the newest image");

        // Not healthy: restore instead.
        let e = why(facts(vec![secondary()]));
        assert!(
            e.starts_with("the primary is missing: restore instead"),
            "{e}"
        );
        let mut bad = primary();
        bad.state = Readability::IoError("Input/output error".into());
        let e = why(facts(vec![bad, secondary()]));
        assert!(
            e.contains("(vda) is unreadable (I/O error: Input/output error): restore instead"),
            "{e}"
        );
        let e = why(Facts {
            recorded: RecordedState::NoRecoveryFilesystem,
            ..facts(vec![primary(), secondary()])
        });
        assert!(
            e.contains("which disk is the primary cannot be told"),
            "{e}"
        );

        // In use.
        let mut busy = primary();
        busy.partitions[0].usage.mounts = vec!["/mnt".into()];
        let e = why(facts(vec![busy, secondary()]));
        assert!(
            e.contains("the primary is in use (vda1 is mounted at /mnt)"),
            "{e}"
        );

        // No emergency copy, one in use, or one not ready.
        let mut no_emergency = secondary();
        no_emergency.partitions.retain(|p| {
            p.signature.as_ref().and_then(|s| s.label.as_deref()) != Some(EMERGENCY_LABEL)
        });
        let e = why(facts(vec![primary(), no_emergency]));
        assert!(e.starts_with("no emergency copy"), "{e}");
        let mut mounted = secondary();
        mounted.partitions[1].usage.mounts = vec!["/".into()];
        let e = why(facts(vec![primary(), mounted]));
        assert!(e.contains("(/dev/vdb4) is mounted at /"), "{e}");
        // Not marked ready is no reason (the screen warns; the index decides).
        let mut f = facts(vec![primary(), secondary()]);
        f.env = Some(EnvRead::A {
            env: Env::with_emergency(None),
            b_problem: None,
        });
        assert!(decide(f).copy_back().is_ok());

        // No image to read the layout from (none, or none readable).
        let mut f = facts(vec![primary(), secondary()]);
        f.images.clear();
        f.images_problem = Some("no filesystem labelled US-IMAGES".into());
        let e = why(f);
        assert_eq!(
            e,
            "no image to read the primary's layout from: no filesystem labelled US-IMAGES"
        );
        let mut f = facts(vec![primary(), secondary()]);
        for i in &mut f.images {
            i.problem = Some("manifest.json: bad JSON".into());
        }
        assert!(why(f).starts_with("no image to read"));
    }
}
