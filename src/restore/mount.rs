//! The restore's mounts under its private directory: a stack that unmounts what it
//! mounted, in reverse order ([`MountGuard`]), strictly on the success path and lazily
//! on drop, so a failure never leaves the target's filesystems mounted.
//!
//! Owns: mounting, bind mounts for the chroot, unmounting. Does not own: which
//! filesystems or where (`plan`), PID 1's own mounts (`init::mounts`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// What this restore mounted, innermost last.
#[derive(Debug, Default)]
pub struct MountGuard {
    /// Mount points, and whether each is a bind of the running system's own.
    mounted: Vec<(PathBuf, bool)>,
}

impl MountGuard {
    pub fn new() -> MountGuard {
        MountGuard::default()
    }

    /// Mounts `device` (a filesystem of type `fstype`) on `target`, creating it.
    pub fn mount(&mut self, device: &Path, target: &Path, fstype: &str) -> Result<()> {
        std::fs::create_dir_all(target)
            .with_context(|| format!("creating {}", target.display()))?;
        mount(
            Some(device),
            target,
            Some(fstype),
            MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| {
            format!(
                "mounting {} ({fstype}) on {}",
                device.display(),
                target.display()
            )
        })?;
        self.mounted.push((target.to_path_buf(), false));
        Ok(())
    }

    /// Bind-mounts `source` (a directory of the running system) on `target`, recursively
    /// (`/dev` brings `/dev/pts`).
    pub fn bind(&mut self, source: &Path, target: &Path) -> Result<()> {
        std::fs::create_dir_all(target)
            .with_context(|| format!("creating {}", target.display()))?;
        mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| format!("bind-mounting {} on {}", source.display(), target.display()))?;
        self.mounted.push((target.to_path_buf(), true));
        Ok(())
    }

    /// Unmounts everything mounted since `mark` (a [`MountGuard::depth`]), innermost
    /// first. A filesystem of the target must really come off (its data written, the
    /// device free): a busy one is an error, never a lazy unmount. A recursive bind of
    /// the running system's `/dev` carries submounts and is detached instead.
    pub fn unmount_to(&mut self, mark: usize) -> Result<()> {
        while self.mounted.len() > mark {
            let Some((t, bind)) = self.mounted.last() else {
                break;
            };
            let flags = if *bind {
                MntFlags::MNT_DETACH
            } else {
                MntFlags::empty()
            };
            umount2(t, flags).with_context(|| format!("unmounting {}", t.display()))?;
            self.mounted.pop();
        }
        Ok(())
    }

    /// How many mounts are held: a mark for [`MountGuard::unmount_to`].
    pub fn depth(&self) -> usize {
        self.mounted.len()
    }

    /// Unmounts everything, innermost first.
    pub fn unmount_all(&mut self) -> Result<()> {
        self.unmount_to(0)
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        while let Some((t, _)) = self.mounted.pop() {
            if let Err(e) = umount2(&t, MntFlags::MNT_DETACH) {
                eprintln!("understudy: unmounting {}: {e}", t.display());
            }
        }
    }
}
