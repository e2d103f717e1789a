//! The pseudo filesystems PID 1 mounts before anything else (`/proc`, `/sys`, `/dev`,
//! `/dev/pts`, `/run`, `/tmp`), and a read-only mount of a disk's filesystem that
//! undoes itself ([`MountGuard`]).
//!
//! Does not own: which disk filesystem to mount (`recorded.rs` finds it).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// One pseudo filesystem to mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pseudo {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: &'static str,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// In mount order: `/dev/pts` lies inside `/dev`.
pub const PSEUDO: &[Pseudo] = &[
    Pseudo {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    Pseudo {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    // The kernel does not mount devtmpfs in an initramfs by itself
    // (CONFIG_DEVTMPFS_MOUNT applies to the real root only).
    Pseudo {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
    Pseudo {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "gid=5,mode=0620,ptmxmode=0666",
    },
    Pseudo {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=0755",
    },
    Pseudo {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
];

/// Mounts every [`PSEUDO`] filesystem; one that is already mounted (`EBUSY`) is fine.
/// Returns what failed, one line each: PID 1 goes on without it.
pub fn mount_pseudo() -> Vec<String> {
    let mut problems = Vec::new();
    for p in PSEUDO {
        if let Err(e) = mount_one(p) {
            problems.push(format!("{e:#}"));
        }
    }
    problems
}

fn mount_one(p: &Pseudo) -> Result<()> {
    std::fs::create_dir_all(p.target).with_context(|| format!("creating {}", p.target))?;
    let data = (!p.data.is_empty()).then_some(p.data);
    match mount(Some(p.source), p.target, Some(p.fstype), p.flags, data) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("mounting {} on {}", p.fstype, p.target)),
    }
}

/// A filesystem mounted by PID 1 or the console (read-only unless a small write needs
/// it); unmounted (lazily, so a shell sitting in it cannot keep it) when dropped.
#[derive(Debug)]
pub struct MountGuard {
    target: PathBuf,
}

impl MountGuard {
    /// Mounts `device` (of type `fstype`) read-only on `target`, creating it.
    pub fn read_only(device: &Path, target: &Path, fstype: &str) -> Result<MountGuard> {
        MountGuard::mount(device, target, fstype, MsFlags::MS_RDONLY)
    }

    /// Mounts it writable, for a small write (the one-shot GRUB choice).
    pub fn writable(device: &Path, target: &Path, fstype: &str) -> Result<MountGuard> {
        MountGuard::mount(device, target, fstype, MsFlags::empty())
    }

    fn mount(device: &Path, target: &Path, fstype: &str, flags: MsFlags) -> Result<MountGuard> {
        std::fs::create_dir_all(target)
            .with_context(|| format!("creating {}", target.display()))?;
        let how = if flags.contains(MsFlags::MS_RDONLY) {
            "read-only"
        } else {
            "writable"
        };
        mount(
            Some(device),
            target,
            Some(fstype),
            flags | NOSUID_NODEV_NOEXEC,
            None::<&str>,
        )
        .with_context(|| {
            format!(
                "mounting {} ({fstype}) {how} on {}",
                device.display(),
                target.display()
            )
        })?;
        Ok(MountGuard {
            target: target.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.target
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = umount2(&self.target, MntFlags::MNT_DETACH) {
            super::log::warn(&format!("unmounting {}: {e}", self.target.display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_mounted_before_what_lies_inside_them() {
        for (i, p) in PSEUDO.iter().enumerate() {
            for earlier in &PSEUDO[..i] {
                assert!(
                    !earlier.target.starts_with(&format!("{}/", p.target)),
                    "{} is mounted before its parent {}",
                    earlier.target,
                    p.target
                );
            }
        }
        let targets: Vec<&str> = PSEUDO.iter().map(|p| p.target).collect();
        assert_eq!(
            targets,
            ["/proc", "/sys", "/dev", "/dev/pts", "/run", "/tmp"]
        );
    }
}
