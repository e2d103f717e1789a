//! Files inside a mounted target root (the emergency copy, a restored primary), reached
//! only through the root's directory handle with `openat2(RESOLVE_IN_ROOT)`: a symlink
//! in the image, absolute or with `..`, resolves inside the image as if the image were
//! `/`, so `etc/fstab -> /etc/fstab` can never read or edit the running system's file.
//!
//! Owns: [`RootDir`] and its reads, existence checks, directory creation, removal and
//! atomic replacement of files (temp file, fsync, rename, directory fsync; mode and
//! owner kept). Does not own: what is written (`remap`), mounting the root.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2, readlinkat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fsync, unlinkat};

/// Symlinks followed before giving up, as the kernel's own limit (`MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// A directory handle that is `/` for every path resolved through it.
#[derive(Debug)]
pub struct RootDir {
    fd: OwnedFd,
    path: PathBuf,
}

fn in_root(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY
}

/// `rel` without leading slashes, `.` for the root itself: the form openat2 wants.
fn relative(rel: &Path) -> PathBuf {
    let stripped: PathBuf = rel
        .components()
        .filter(|c| !matches!(c, Component::RootDir))
        .collect();
    if stripped.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        stripped
    }
}

impl RootDir {
    pub fn open(path: &Path) -> Result<RootDir> {
        let fd = nix::fcntl::open(path, dir_flags() | OFlag::O_CLOEXEC, Mode::empty())
            .with_context(|| format!("opening target root {}", path.display()))?;
        Ok(RootDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The root's path on this system (for messages and for hooks).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn show(&self, rel: &Path) -> String {
        format!("{}/{}", self.path.display(), relative(rel).display())
    }

    /// Whether `rel` exists inside the root (following symlinks inside the root; a
    /// dangling symlink does not exist).
    pub fn exists(&self, rel: impl AsRef<Path>) -> Result<bool> {
        let rel = rel.as_ref();
        match openat2(&self.fd, &relative(rel), in_root(OFlag::O_PATH)) {
            Ok(_) => Ok(true),
            Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("looking up {}", self.show(rel))),
        }
    }

    /// The content of regular file `rel`.
    pub fn read(&self, rel: impl AsRef<Path>) -> Result<Vec<u8>> {
        let rel = rel.as_ref();
        self.read_optional(rel)?
            .with_context(|| format!("reading {}: no such file", self.show(rel)))
    }

    /// The content of regular file `rel`, `None` if it does not exist.
    pub fn read_optional(&self, rel: impl AsRef<Path>) -> Result<Option<Vec<u8>>> {
        let rel = rel.as_ref();
        let fd = match openat2(
            &self.fd,
            &relative(rel),
            in_root(OFlag::O_RDONLY | OFlag::O_NOCTTY),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {}", self.show(rel))),
        };
        let st = fstat(&fd).with_context(|| format!("inspecting {}", self.show(rel)))?;
        if !is_kind(&st, SFlag::S_IFREG) {
            bail!("reading {}: not a regular file", self.show(rel));
        }
        let mut buf = Vec::new();
        File::from(fd)
            .read_to_end(&mut buf)
            .with_context(|| format!("reading {}", self.show(rel)))?;
        Ok(Some(buf))
    }

    /// The status of `rel` itself (a symlink there is not followed; its parents are,
    /// inside the root), or `None` if nothing is there.
    pub fn lstat(&self, rel: impl AsRef<Path>) -> Result<Option<FileStat>> {
        let rel = rel.as_ref();
        if relative(rel).components().all(|c| c == Component::CurDir) {
            return fstat(&self.fd)
                .map(Some)
                .with_context(|| format!("inspecting {}", self.path.display()));
        }
        let Some((dir, name)) = self.parent_of(rel)? else {
            return Ok(None);
        };
        match fstatat(&dir, &name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("inspecting {}", self.show(rel))),
        }
    }

    /// Remove `rel` whatever it is, a directory with everything below it; a symlink
    /// there is removed, never followed. Whether anything was there.
    pub fn remove_all(&self, rel: impl AsRef<Path>) -> Result<bool> {
        let rel = rel.as_ref();
        let Some((dir, name)) = self.parent_of(rel)? else {
            return Ok(false);
        };
        remove_at(&dir, name.as_os_str()).with_context(|| format!("removing {}", self.show(rel)))
    }

    /// The directory holding `rel` (resolved inside the root) and `rel`'s last name;
    /// `None` when that directory does not exist.
    fn parent_of(&self, rel: &Path) -> Result<Option<(OwnedFd, PathBuf)>> {
        let path = relative(rel);
        let name = match path.components().next_back() {
            Some(Component::Normal(n)) => PathBuf::from(n),
            _ => bail!("{}: not a name inside the root", self.show(rel)),
        };
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        match openat2(&self.fd, &parent, in_root(dir_flags())) {
            Ok(dir) => Ok(Some((dir, name))),
            Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("opening {}", self.show(&parent))),
        }
    }

    /// Create directory `rel` and its missing parents inside the root.
    pub fn create_dir_all(&self, rel: impl AsRef<Path>, mode: u32) -> Result<()> {
        let rel = relative(rel.as_ref());
        let mut done = PathBuf::new();
        for c in rel.components() {
            let parent = if done.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                done.clone()
            };
            done.push(c);
            match openat2(&self.fd, &done, in_root(dir_flags())) {
                Ok(_) => continue,
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(e).with_context(|| format!("opening {}", self.show(&done))),
            }
            let dir = openat2(&self.fd, &parent, in_root(dir_flags()))
                .with_context(|| format!("opening {}", self.show(&parent)))?;
            match mkdirat(&dir, c.as_os_str(), Mode::from_bits_truncate(mode)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e).with_context(|| format!("creating {}", self.show(&done))),
            }
        }
        Ok(())
    }

    /// Replace regular file `rel` with `bytes` so that a crash leaves the old or the
    /// new content, never a mix: write a temporary file beside it, fsync it, rename it
    /// over the file, fsync the directory. A symlink at `rel` is followed inside the
    /// root and its target replaced. An existing file's mode and owner are kept; a
    /// new file gets mode 0644.
    pub fn write_atomic(&self, rel: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
        let rel = rel.as_ref();
        let (dir, name, old) = self.resolve_for_write(rel)?;
        let shown = self.show(rel);
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut tmp = b".".to_vec();
        tmp.extend_from_slice(name.as_os_str().as_bytes());
        tmp.extend_from_slice(
            format!(
                ".understudy-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            )
            .as_bytes(),
        );
        let tmp = OsStr::from_bytes(&tmp);
        let fd = openat(
            &dir,
            tmp,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .with_context(|| format!("creating a temporary file beside {shown}"))?;
        let result = (|| -> Result<()> {
            let mut f = File::from(fd);
            f.write_all(bytes)
                .with_context(|| format!("writing the new {shown}"))?;
            let (mode, owner) = match &old {
                Some(st) => (st.st_mode & 0o7777, Some((st.st_uid, st.st_gid))),
                None => (0o644, None),
            };
            if let Some((uid, gid)) = owner {
                fchown(
                    f.as_fd(),
                    Some(Uid::from_raw(uid)),
                    Some(Gid::from_raw(gid)),
                )
                .with_context(|| format!("giving the new {shown} its owner {uid}:{gid}"))?;
            }
            fchmod(f.as_fd(), Mode::from_bits_truncate(mode))
                .with_context(|| format!("giving the new {shown} mode {mode:o}"))?;
            f.sync_all()
                .with_context(|| format!("syncing the new {shown}"))?;
            renameat(&dir, tmp, &dir, name.as_os_str())
                .with_context(|| format!("renaming the new {shown} into place"))?;
            Ok(())
        })();
        if result.is_err() {
            let _ = unlinkat(&dir, tmp, UnlinkatFlags::NoRemoveDir);
        }
        result?;
        fsync(&dir).with_context(|| format!("syncing the directory of {shown}"))
    }

    /// The directory holding the file `rel` names, after following symlinks in its
    /// last component inside the root; its name there; and its status if it exists.
    fn resolve_for_write(&self, rel: &Path) -> Result<(OwnedFd, PathBuf, Option<FileStat>)> {
        let mut path = relative(rel);
        for _ in 0..MAX_SYMLINKS {
            let name = match path.components().next_back() {
                Some(Component::Normal(n)) => PathBuf::from(n),
                _ => bail!("writing {}: not a file name", self.show(rel)),
            };
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let dir = openat2(&self.fd, &parent, in_root(dir_flags())).with_context(|| {
                format!("opening {} inside the target root", self.show(&parent))
            })?;
            match fstatat(&dir, &name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Err(Errno::ENOENT) => return Ok((dir, name, None)),
                Err(e) => {
                    return Err(e).with_context(|| format!("inspecting {}", self.show(&path)));
                }
                Ok(st) if is_kind(&st, SFlag::S_IFLNK) => {
                    let target = readlinkat(&dir, &name)
                        .with_context(|| format!("reading symlink {}", self.show(&path)))?;
                    // An absolute target is relative to the root; a relative one to
                    // the link's directory. `..` cannot climb out: openat2 stops at
                    // the root.
                    path = if Path::new(&target).is_absolute() {
                        relative(Path::new(&target))
                    } else {
                        parent.join(target)
                    };
                }
                Ok(st) if is_kind(&st, SFlag::S_IFREG) => return Ok((dir, name, Some(st))),
                Ok(_) => bail!("writing {}: not a regular file", self.show(&path)),
            }
        }
        bail!(
            "writing {}: too many levels of symbolic links",
            self.show(rel)
        )
    }
}

/// Remove `name` in `dir`, depth first if it is a directory; never follows a symlink.
fn remove_at(dir: &OwnedFd, name: &OsStr) -> nix::Result<bool> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => return Ok(true),
        Err(Errno::ENOENT) => return Ok(false),
        Err(Errno::EISDIR) => {}
        Err(e) => return Err(e),
    }
    let how = OpenHow::new()
        .flags(dir_flags() | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let sub = openat2(dir, name, how)?;
    let mut children = Vec::new();
    let mut listing = nix::dir::Dir::from_fd(sub.try_clone().map_err(|_| Errno::EBADF)?)?;
    for entry in listing.iter() {
        let n = entry?.file_name().to_bytes().to_vec();
        if n != b"." && n != b".." {
            children.push(n);
        }
    }
    for child in children {
        remove_at(&sub, OsStr::from_bytes(&child))?;
    }
    unlinkat(dir, name, UnlinkatFlags::RemoveDir)?;
    Ok(true)
}

fn is_kind(st: &FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == kind
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let p = std::env::temp_dir()
                .join(format!("understudy-rootfs-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn an_absolute_symlink_never_reaches_the_host() {
        let s = Scratch::new("abs");
        // The sentinel plays the host's /etc/fstab: outside the root, at an absolute
        // path that a symlink inside the root names.
        let outside = s.0.join("host");
        std::fs::create_dir_all(&outside).unwrap();
        let sentinel = outside.join("fstab");
        std::fs::write(&sentinel, "host fstab\n").unwrap();
        let root = s.0.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        symlink(&sentinel, root.join("etc/fstab")).unwrap();
        // Inside the root the same absolute path holds the image's own file.
        let inside = root.join(sentinel.strip_prefix("/").unwrap());
        std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
        std::fs::write(&inside, "image fstab\n").unwrap();

        let r = RootDir::open(&root).unwrap();
        assert_eq!(r.read("etc/fstab").unwrap(), b"image fstab\n");
        r.write_atomic("etc/fstab", b"remapped\n").unwrap();
        assert_eq!(std::fs::read(&sentinel).unwrap(), b"host fstab\n");
        assert_eq!(std::fs::read(&inside).unwrap(), b"remapped\n");
        // The link itself is still a link.
        assert!(
            std::fs::symlink_metadata(root.join("etc/fstab"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn a_symlink_to_the_hosts_etc_fstab_by_name_stays_inside() {
        let s = Scratch::new("etc");
        let root = s.0.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        // The literal case: etc/fstab -> /etc/fstab. Inside the root that is the link
        // itself, a loop; outside it would be this machine's own fstab.
        symlink("/etc/fstab", root.join("etc/fstab")).unwrap();
        let host_before = std::fs::read("/etc/fstab").ok();
        let r = RootDir::open(&root).unwrap();
        let err = r.read("etc/fstab").unwrap_err();
        assert!(format!("{err:#}").contains("symbolic links"), "{err:#}");
        let err = r.write_atomic("etc/fstab", b"x\n").unwrap_err();
        assert!(format!("{err:#}").contains("too many levels"), "{err:#}");
        assert_eq!(std::fs::read("/etc/fstab").ok(), host_before);
        // A relative link that climbs with `..` stops at the root too.
        std::fs::remove_file(root.join("etc/fstab")).unwrap();
        symlink("../../../../../../etc/passwd-copy", root.join("etc/fstab")).unwrap();
        r.write_atomic("etc/fstab", b"y\n").unwrap();
        assert_eq!(std::fs::read(root.join("etc/passwd-copy")).unwrap(), b"y\n");
        assert!(!Path::new("/etc/passwd-copy").exists());
    }

    #[test]
    fn write_atomic_keeps_mode_and_owner_and_leaves_no_temporary_file() {
        let s = Scratch::new("mode");
        std::fs::create_dir_all(s.0.join("etc/default")).unwrap();
        let f = s.0.join("etc/default/grub");
        std::fs::write(&f, "old").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let before = std::fs::metadata(&f).unwrap();
        let r = RootDir::open(&s.0).unwrap();
        r.write_atomic("/etc/default/grub", b"new").unwrap();
        let after = std::fs::metadata(&f).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"new");
        assert_eq!(after.mode() & 0o7777, 0o640);
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        assert_ne!(
            after.ino(),
            before.ino(),
            "replaced by rename, not rewritten in place"
        );
        let names: Vec<_> = std::fs::read_dir(s.0.join("etc/default"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("grub")]);
        // A new file gets 0644.
        r.write_atomic("etc/new", b"n").unwrap();
        assert_eq!(
            std::fs::metadata(s.0.join("etc/new")).unwrap().mode() & 0o7777,
            0o644
        );
    }

    #[test]
    fn exists_read_optional_and_create_dir_all() {
        let s = Scratch::new("misc");
        let r = RootDir::open(&s.0).unwrap();
        assert!(!r.exists("etc/initramfs-tools/conf.d").unwrap());
        assert_eq!(r.read_optional("etc/fstab").unwrap(), None);
        assert!(format!("{:#}", r.read("etc/fstab").unwrap_err()).contains("no such file"));
        r.create_dir_all("etc/initramfs-tools/conf.d", 0o755)
            .unwrap();
        assert!(r.exists("/etc/initramfs-tools/conf.d").unwrap());
        // A directory is not a file to read or replace.
        assert!(r.read("etc").is_err());
        assert!(r.write_atomic("etc/initramfs-tools", b"x").is_err());
        // A dangling link does not exist, and writing through it creates its target.
        symlink("/etc/missing", s.0.join("etc/link")).unwrap();
        assert!(!r.exists("etc/link").unwrap());
        r.write_atomic("etc/link", b"z").unwrap();
        assert_eq!(std::fs::read(s.0.join("etc/missing")).unwrap(), b"z");
    }
}
