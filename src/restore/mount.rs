//! The restore's mounts under its private directory: a stack that unmounts what it
//! mounted, in reverse order ([`MountGuard`]), strictly on the success path (a busy
//! filesystem is an error naming its holders) and lazily on drop, so a failure never
//! leaves the target's filesystems mounted.
//!
//! Owns: mounting, bind mounts for the chroot, unmounting. Does not own: which
//! filesystems or where (`plan`), PID 1's own mounts (`init::mounts`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
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
        self.mount_with(device, target, fstype, MsFlags::empty())
    }

    /// Mounts `device` read-only on `target`, creating it: a filesystem that is only
    /// read from (the emergency copy, during copy-back).
    pub fn mount_read_only(&mut self, device: &Path, target: &Path, fstype: &str) -> Result<()> {
        self.mount_with(device, target, fstype, MsFlags::MS_RDONLY)
    }

    fn mount_with(
        &mut self,
        device: &Path,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
    ) -> Result<()> {
        std::fs::create_dir_all(target)
            .with_context(|| format!("creating {}", target.display()))?;
        let how = if flags.contains(MsFlags::MS_RDONLY) {
            " read-only"
        } else {
            ""
        };
        mount(Some(device), target, Some(fstype), flags, None::<&str>).with_context(|| {
            format!(
                "mounting {} ({fstype}){how} on {}",
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
    /// device free): a busy one is waited for a little (a process of the chroot may be
    /// exiting), then an error naming what holds it, never a lazy unmount. A recursive
    /// bind of the running system's `/dev` carries submounts and is detached instead.
    pub fn unmount_to(&mut self, mark: usize) -> Result<()> {
        while self.mounted.len() > mark {
            let Some((t, bind)) = self.mounted.last() else {
                break;
            };
            if *bind {
                umount2(t, MntFlags::MNT_DETACH)
                    .with_context(|| format!("detaching {}", t.display()))?;
            } else {
                unmount_busy_wait(t)?;
            }
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

/// How long a busy filesystem is waited for before its holders are named.
const BUSY_WAIT: Duration = Duration::from_secs(5);

/// Unmount `target`, retrying while it is busy for up to [`BUSY_WAIT`].
fn unmount_busy_wait(target: &Path) -> Result<()> {
    let until = Instant::now() + BUSY_WAIT;
    loop {
        match umount2(target, MntFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(Errno::EBUSY) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(Errno::EBUSY) => {
                let holders = holders(target);
                let submounts = submounts(target);
                bail!(
                    "unmounting {}: busy; {}{}",
                    target.display(),
                    if holders.is_empty() {
                        "no process has a file, directory or root under it".to_string()
                    } else {
                        format!("held by {}", holders.join(", "))
                    },
                    if submounts.is_empty() {
                        String::new()
                    } else {
                        format!("; mounted inside it: {}", submounts.join(", "))
                    }
                );
            }
            Err(e) => {
                return Err(e).with_context(|| format!("unmounting {}", target.display()));
            }
        }
    }
}

/// The processes whose root, working directory or an open file lies under `dir`
/// (`PID (COMM) cwd|root|fd N`), from `/proc`: what keeps a filesystem busy.
fn holders(dir: &Path) -> Vec<String> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let under = |p: &Path| p.starts_with(dir);
    let mut out = Vec::new();
    for e in procs.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let base = e.path();
        let comm = std::fs::read_to_string(base.join("comm")).unwrap_or_default();
        let mut what = Vec::new();
        for link in ["root", "cwd"] {
            if std::fs::read_link(base.join(link)).is_ok_and(|p| under(&p)) {
                what.push(link.to_string());
            }
        }
        if let Ok(fds) = std::fs::read_dir(base.join("fd")) {
            for fd in fds.flatten() {
                if std::fs::read_link(fd.path()).is_ok_and(|p| under(&p)) {
                    what.push(format!("fd {}", fd.file_name().to_string_lossy()));
                }
            }
        }
        if !what.is_empty() {
            out.push(format!("{pid} ({}) {}", comm.trim(), what.join(" ")));
        }
    }
    out
}

/// Mount points strictly inside `dir`, from `/proc/self/mountinfo`.
fn submounts(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m) != dir && Path::new(m).starts_with(dir))
        .map(str::to_string)
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_name_the_process_and_what_it_holds() {
        let dir = std::env::temp_dir().join(format!("understudy-holders-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let none = holders(&dir);
        assert!(none.is_empty(), "{none:?}");
        let file = std::fs::File::create(dir.join("sub/open")).unwrap();
        let me = std::process::id().to_string();
        let got = holders(&dir);
        let mine: Vec<&String> = got
            .iter()
            .filter(|h| h.starts_with(&format!("{me} (")))
            .collect();
        assert_eq!(mine.len(), 1, "{got:?}");
        assert!(mine[0].contains(" fd "), "{got:?}");
        drop(file);
        assert!(holders(&dir).is_empty());
        // Nothing is mounted inside a plain directory.
        assert!(submounts(&dir).is_empty());
        assert!(submounts(Path::new("/")).iter().any(|m| m == "/proc"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
