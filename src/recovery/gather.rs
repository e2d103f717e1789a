//! Collects the [`Facts`] of the situation from the machine: the disk inventory, the
//! recorded identities, the GRUB environment block and `grub.cfg` on the recovery
//! filesystem (mounted read-only for the moment of reading), and the images on the
//! images filesystem, which stays mounted read-only (its guard is returned) because a
//! restore reads the chosen image from there.
//!
//! Does not own: deciding anything from the facts (`situation`), the formats it reads
//! (`boot`, `disk`, `init::recorded`). Never fails as a whole: what could not be read
//! is in the facts as a reason.

use std::path::{Path, PathBuf};

use crate::boot::{self, EnvRead};
use crate::disk::{self, Inventory};
use crate::init::mounts::MountGuard;
use crate::init::recorded;

use super::emergency;
use super::images;
use super::situation::{Facts, IMAGES_LABEL};

/// Where the console mounts what it reads.
pub const MOUNT_ROOT: &str = "/run/understudy/console";

/// Where the facts come from.
#[derive(Clone, Debug)]
pub struct Sources {
    pub disks: disk::Sources,
    /// Read images from this directory instead of mounting the images filesystem (a
    /// developer's machine, tests).
    pub images_dir: Option<PathBuf>,
}

impl Sources {
    /// The running system; LVM is not looked at (three `lvm` runs cost about a
    /// second under emulation, and the console's screens do not need it).
    pub fn system() -> Sources {
        Sources {
            disks: disk::Sources {
                lvm: disk::LvmSource::Skip,
                ..disk::Sources::system()
            },
            images_dir: None,
        }
    }
}

/// The facts, and the mount of the images filesystem to keep while they are used.
#[derive(Debug)]
pub struct Gathered {
    pub facts: Facts,
    pub images_mount: Option<MountGuard>,
}

/// The device node and type of the first filesystem labelled `label`.
pub fn find_label(inv: &Inventory, label: &str) -> Option<(PathBuf, String)> {
    inv.disks.iter().find_map(|d| {
        d.partitions
            .iter()
            .find_map(|p| match (&p.signature, &p.path) {
                (Some(s), Some(path)) if s.label.as_deref() == Some(label) => {
                    Some((path.clone(), s.kind.clone()))
                }
                _ => None,
            })
    })
}

/// The environment block's two copies and the emergency entry of `grub.cfg`.
fn read_recovery(
    inv: &Inventory,
) -> (
    Option<EnvRead>,
    Option<String>,
    Result<emergency::EmergencyBoot, String>,
) {
    let Some((device, fstype)) = recorded::find_recovery(inv) else {
        let why = format!("no filesystem labelled {}", recorded::RECOVERY_LABEL);
        return (None, Some(why.clone()), Err(why));
    };
    let target = Path::new(MOUNT_ROOT).join("recovery");
    let guard = match MountGuard::read_only(&device, &target, &fstype) {
        Ok(g) => g,
        Err(e) => {
            let why = format!("{e:#}");
            return (None, Some(why.clone()), Err(why));
        }
    };
    let file = |p: &str| std::fs::read(guard.path().join(p.trim_start_matches('/'))).ok();
    let env = boot::read_copies(
        file(boot::ENV_PATH_A).as_deref(),
        file(boot::ENV_PATH_B).as_deref(),
    );
    let cfg = match file(boot::GRUB_CFG_PATH) {
        Some(bytes) => emergency::parse(&String::from_utf8_lossy(&bytes)),
        None => Err(format!(
            "no {} on {}",
            boot::GRUB_CFG_PATH,
            device.display()
        )),
    };
    (Some(env), None, cfg)
}

/// The images, from `sources.images_dir` or the images filesystem (mounted).
fn read_images(
    inv: &Inventory,
    sources: &Sources,
) -> (Vec<images::ImageView>, Option<String>, Option<MountGuard>) {
    let (dir, guard) = match &sources.images_dir {
        Some(d) => (d.clone(), None),
        None => {
            let Some((device, fstype)) = find_label(inv, IMAGES_LABEL) else {
                return (
                    Vec::new(),
                    Some(format!("no filesystem labelled {IMAGES_LABEL}")),
                    None,
                );
            };
            let target = Path::new(MOUNT_ROOT).join("images");
            match MountGuard::read_only(&device, &target, &fstype) {
                Ok(g) => (target, Some(g)),
                Err(e) => return (Vec::new(), Some(format!("{e:#}")), None),
            }
        }
    };
    match images::list(&dir) {
        Ok(list) => (list, None, guard),
        Err(e) => (Vec::new(), Some(format!("{e:#}")), guard),
    }
}

/// Everything, from the machine; the disks from `inventory` when one was just taken
/// (PID 1 hands its own to the console's first screen).
pub fn gather(sources: &Sources, inventory: Option<Inventory>) -> Gathered {
    let inventory = inventory.unwrap_or_else(|| disk::inventory(&sources.disks));
    let recorded = recorded::load(&inventory);
    let (env, env_problem, emergency_boot) = read_recovery(&inventory);
    let (images, images_problem, images_mount) = read_images(&inventory, sources);
    Gathered {
        facts: Facts {
            inventory,
            recorded,
            env,
            env_problem,
            emergency_boot,
            images,
            images_problem,
            // Mounting the primary's root to see whether it mounts needs LVM brought
            // up; not tried yet (docs/console.md).
            root_mount_problem: None,
        },
        images_mount,
    }
}
