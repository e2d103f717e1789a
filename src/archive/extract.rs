//! Extraction: recreate a tree from a tar stream, and never touch anything outside it.
//!
//! Every path is resolved with `openat2(RESOLVE_IN_ROOT)` against the target's
//! directory handle, so `..`, absolute names and symlinks (made by the archive or
//! already there) all stay inside the target: the kernel treats the target as `/`.
//! The last component is always created or opened without following symlinks.
//! Directory metadata is applied at the end, through a handle that refuses a symlink,
//! because creating children changes a directory's times and a later entry may have
//! replaced it. Owners are set before modes (chown clears setuid) and
//! `security.capability` after chown (chown clears it too).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{
    FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, futimens, mkdirat, mknodat,
    utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};
use tar::EntryType;

use super::{Note, Summary};
use crate::lzop;

/// How to extract.
#[derive(Clone, Debug)]
pub struct ExtractOptions {
    pub threads: usize,
    /// Set owners from the archive (the default when running as root).
    pub same_owner: bool,
    /// If known, the archive's summary: a mismatch fails the extraction at the end.
    pub expect: Option<Summary>,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            threads: super::default_threads(),
            same_owner: nix::unistd::geteuid().is_root(),
            expect: None,
        }
    }
}

/// What an extraction did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExtractReport {
    /// What the stream turned out to be.
    pub summary: Summary,
    /// Entries not extracted, or extracted without some metadata, and why.
    pub problems: Vec<Note>,
}

/// Metadata common to every entry.
#[derive(Clone, Debug)]
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: TimeSpec,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// A cleaned archive name: components with no `.`, `..` or empty parts.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Name(Vec<Vec<u8>>);

impl Name {
    /// Returns `Err` with the reason for names we refuse.
    fn parse(raw: &[u8]) -> std::result::Result<Name, &'static str> {
        let mut parts = Vec::new();
        for c in raw.split(|&b| b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => return Err("name contains '..'"),
                _ => parts.push(c.to_vec()),
            }
        }
        if raw.contains(&0) {
            return Err("name contains a NUL byte");
        }
        Ok(Name(parts))
    }

    fn parent(&self) -> Vec<u8> {
        match self.0.split_last() {
            Some((_, dirs)) if !dirs.is_empty() => dirs.join(&b'/'),
            _ => b".".to_vec(),
        }
    }

    fn base(&self) -> &[u8] {
        self.0.last().map_or(b".", |b| b.as_slice())
    }

    fn joined(&self) -> Vec<u8> {
        if self.0.is_empty() {
            b".".to_vec()
        } else {
            self.0.join(&b'/')
        }
    }

    fn display(&self) -> String {
        format!("./{}", String::from_utf8_lossy(&self.joined()))
    }
}

/// Resolution that never leaves the target: it is the root for `..` and symlinks.
fn in_root(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

struct Extractor {
    root: OwnedFd,
    same_owner: bool,
    /// The most recently used parent directory, by cleaned path.
    cached: Option<(Vec<u8>, OwnedFd)>,
    dirs: Vec<(Name, Meta)>,
    problems: Vec<Note>,
    stripped_absolute: bool,
    buf: Vec<u8>,
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY
}

impl Extractor {
    fn problem(&mut self, name: &str, what: impl Into<String>) {
        self.problems.push(Note {
            path: name.to_string(),
            message: what.into(),
        });
    }

    /// A handle on the directory that will hold `name`, creating missing ones.
    fn parent(&mut self, name: &Name) -> nix::Result<OwnedFd> {
        let want = name.parent();
        if let Some((path, fd)) = &self.cached {
            if *path == want {
                return fd.try_clone().map_err(|_| Errno::EBADF);
            }
        }
        let fd = match openat2(&self.root, want.as_slice(), in_root(dir_flags())) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => self.make_dirs(name)?,
            Err(e) => return Err(e),
        };
        self.cached = Some((want, fd.try_clone().map_err(|_| Errno::EBADF)?));
        Ok(fd)
    }

    /// `mkdir -p` of the parent of `name`, one component at a time, inside the root.
    fn make_dirs(&mut self, name: &Name) -> nix::Result<OwnedFd> {
        let dirs = &name.0[..name.0.len().saturating_sub(1)];
        let mut fd = self.root.try_clone().map_err(|_| Errno::EBADF)?;
        for (i, c) in dirs.iter().enumerate() {
            let path = dirs[..=i].join(&b'/');
            fd = match openat2(&self.root, path.as_slice(), in_root(dir_flags())) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    match mkdirat(&fd, c.as_slice(), Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(e),
                    }
                    openat2(&self.root, path.as_slice(), in_root(dir_flags()))?
                }
                Err(e) => return Err(e),
            };
        }
        Ok(fd)
    }

    /// Remove whatever stands at `base` in `dir` so an entry of another kind can
    /// take its place (tar semantics: the later entry wins). Non-empty directories
    /// are kept and the error is returned.
    fn clear(&mut self, dir: &OwnedFd, base: &[u8]) -> nix::Result<()> {
        match unlinkat(dir, base, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(()),
            Err(Errno::EISDIR) => unlinkat(dir, base, UnlinkatFlags::RemoveDir),
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e),
        }
        .inspect(|()| {
            // A directory we had cached may be the thing just removed.
            self.cached = None;
        })
    }

    fn owner(&self, meta: &Meta) -> (Option<Uid>, Option<Gid>) {
        if !self.same_owner {
            return (None, None);
        }
        let uid = u32::try_from(meta.uid).ok().map(Uid::from_raw);
        let gid = u32::try_from(meta.gid).ok().map(Gid::from_raw);
        (uid, gid)
    }

    /// Owner, mode, xattrs and times on an open file or directory, in that order.
    fn finish_fd(&mut self, fd: &impl AsFd, meta: &Meta, shown: &str) {
        let (uid, gid) = self.owner(meta);
        if uid.is_some() || gid.is_some() {
            if let Err(e) = fchown(fd, uid, gid) {
                self.problem(shown, format!("owner not set: {e}"));
            }
        }
        if let Err(e) = fchmod(fd, Mode::from_bits_truncate(meta.mode & 0o7777)) {
            self.problem(shown, format!("mode not set: {e}"));
        }
        if !meta.xattrs.is_empty() {
            match fd_file(fd) {
                Ok(file) => {
                    for (k, v) in &meta.xattrs {
                        if let Err(e) = xattr::FileExt::set_xattr(&file, k, v) {
                            self.problem(shown, format!("extended attribute {k} not set: {e}"));
                        }
                    }
                }
                Err(e) => self.problem(shown, format!("extended attributes not set: {e}")),
            }
        }
        if let Err(e) = futimens(fd, &meta.mtime, &meta.mtime) {
            self.problem(shown, format!("times not set: {e}"));
        }
    }

    fn entry(&mut self, e: &mut tar::Entry<'_, impl Read>) -> Result<()> {
        let raw = e.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        if raw.first() == Some(&b'/') && !self.stripped_absolute {
            self.stripped_absolute = true;
            self.problem(&shown, "leading '/' removed from member names");
        }
        let name = match Name::parse(&raw) {
            Ok(n) => n,
            Err(why) => {
                self.problem(&shown, format!("refused: {why}"));
                return Ok(());
            }
        };
        let meta = entry_meta(e)?;
        let etype = e.header().entry_type();
        let result = match etype {
            EntryType::Directory => {
                self.directory(&name)?;
                self.dirs.push((name.clone(), meta));
                Ok(())
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.regular(&name, e, &meta, etype == EntryType::GNUSparse)
            }
            EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default();
                self.symlink(&name, &target, &meta)
            }
            EntryType::Link => {
                let target = e
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default();
                self.hardlink(&name, &target)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let dev = (
                    e.header().device_major().ok().flatten().unwrap_or(0),
                    e.header().device_minor().ok().flatten().unwrap_or(0),
                );
                let kind = match etype {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                self.node(&name, kind, dev, &meta)
            }
            other => {
                self.problem(
                    &name.display(),
                    format!("skipped: entry type {other:?} is not supported"),
                );
                Ok(())
            }
        };
        if let Err(err) = result {
            if err.downcast_ref::<StreamError>().is_some() {
                return Err(err);
            }
            self.problem(&name.display(), format!("{err:#}"));
        }
        Ok(())
    }

    fn directory(&mut self, name: &Name) -> Result<()> {
        if name.0.is_empty() {
            return Ok(()); // the target itself
        }
        let parent = self.parent(name).context("opening the parent directory")?;
        let mode = Mode::from_bits_truncate(0o700);
        match mkdirat(&parent, name.base(), mode) {
            Ok(()) => Ok(()),
            Err(Errno::EEXIST) => {
                let st = nix::sys::stat::fstatat(
                    &parent,
                    name.base(),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )?;
                if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    return Ok(());
                }
                self.clear(&parent, name.base())?;
                mkdirat(&parent, name.base(), mode).context("creating the directory")
            }
            Err(e) => Err(e).context("creating the directory"),
        }
    }

    fn regular(&mut self, name: &Name, e: &mut impl Read, meta: &Meta, sparse: bool) -> Result<()> {
        if name.0.is_empty() {
            bail!("a file cannot replace the target directory");
        }
        let parent = self.parent(name).context("opening the parent directory")?;
        let how = || {
            OpenHow::new()
                .flags(
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                )
                .mode(Mode::from_bits_truncate(0o600))
                .resolve(ResolveFlag::RESOLVE_BENEATH)
        };
        let fd = match openat2(&parent, name.base(), how()) {
            Err(Errno::EEXIST) => {
                self.clear(&parent, name.base())?;
                openat2(&parent, name.base(), how())
            }
            r => r,
        }
        .context("creating the file")?;
        let mut file = File::from(fd);
        let mut len = 0u64;
        loop {
            let n = match e.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                // A read error here is the stream's, not this file's: fatal.
                Err(err) => return Err(StreamError(err).into()),
            };
            let chunk = &self.buf[..n];
            if sparse && chunk.iter().all(|&b| b == 0) {
                file.seek(SeekFrom::Current(n as i64))
                    .context("seeking over a hole")?;
            } else {
                file.write_all(chunk).context("writing the file")?;
            }
            len += n as u64;
        }
        if sparse {
            file.set_len(len)
                .context("setting the size of a sparse file")?;
        }
        self.finish_fd(&file, meta, &name.display());
        Ok(())
    }

    fn symlink(&mut self, name: &Name, target: &[u8], meta: &Meta) -> Result<()> {
        let parent = self.parent(name).context("opening the parent directory")?;
        match symlinkat(target, &parent, name.base()) {
            Err(Errno::EEXIST) => {
                self.clear(&parent, name.base())?;
                symlinkat(target, &parent, name.base())
            }
            r => r,
        }
        .context("creating the symlink")?;
        let (uid, gid) = self.owner(meta);
        let nofollow = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
        if uid.is_some() || gid.is_some() {
            fchownat(&parent, name.base(), uid, gid, nofollow)
                .context("setting the symlink's owner")?;
        }
        for (k, v) in &meta.xattrs {
            // No fd-relative lsetxattr exists; the /proc path of the parent's fd is
            // a resolved handle, and lsetxattr does not follow the last component.
            let path = proc_path(&parent, name.base());
            xattr::set(&path, k, v).with_context(|| format!("setting {k} on the symlink"))?;
        }
        utimensat(
            &parent,
            name.base(),
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .context("setting the symlink's times")?;
        Ok(())
    }

    fn hardlink(&mut self, name: &Name, target: &[u8]) -> Result<()> {
        let target =
            Name::parse(target).map_err(|why| anyhow::anyhow!("link target refused: {why}"))?;
        if target.0.is_empty() {
            bail!("hardlink to the target directory refused");
        }
        let tparent = openat2(&self.root, target.parent().as_slice(), in_root(dir_flags()))
            .with_context(|| {
                format!("opening the directory of link target {}", target.display())
            })?;
        let parent = self.parent(name).context("opening the parent directory")?;
        let link = || {
            linkat(
                &tparent,
                target.base(),
                &parent,
                name.base(),
                nix::fcntl::AtFlags::empty(),
            )
        };
        match link() {
            Err(Errno::EEXIST) => {
                self.clear(&parent, name.base())?;
                link()
            }
            r => r,
        }
        .with_context(|| format!("linking to {}", target.display()))
    }

    fn node(
        &mut self,
        name: &Name,
        kind: SFlag,
        (maj, min): (u32, u32),
        meta: &Meta,
    ) -> Result<()> {
        let parent = self.parent(name).context("opening the parent directory")?;
        let dev = nix::sys::stat::makedev(u64::from(maj), u64::from(min));
        let perm = Mode::from_bits_truncate(0o600);
        match mknodat(&parent, name.base(), kind, perm, dev) {
            Err(Errno::EEXIST) => {
                self.clear(&parent, name.base())?;
                mknodat(&parent, name.base(), kind, perm, dev)
            }
            r => r,
        }
        .context("creating the node")?;
        let (uid, gid) = self.owner(meta);
        let nofollow = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
        if uid.is_some() || gid.is_some() {
            fchownat(&parent, name.base(), uid, gid, nofollow).context("setting the owner")?;
        }
        // mknodat just made it, so it is not a symlink: following is harmless here.
        fchmodat(
            &parent,
            name.base(),
            Mode::from_bits_truncate(meta.mode & 0o7777),
            FchmodatFlags::FollowSymlink,
        )
        .context("setting the mode")?;
        for (k, v) in &meta.xattrs {
            xattr::set(proc_path(&parent, name.base()), k, v)
                .with_context(|| format!("setting {k}"))?;
        }
        utimensat(
            &parent,
            name.base(),
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .context("setting the times")?;
        Ok(())
    }

    /// Apply the directories' metadata, deepest first.
    fn finish_dirs(&mut self) {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|(n, _)| std::cmp::Reverse(n.0.len()));
        for (name, meta) in dirs {
            let how = in_root(dir_flags() | OFlag::O_NOFOLLOW);
            match openat2(&self.root, name.joined().as_slice(), how) {
                Ok(fd) => self.finish_fd(&fd, &meta, &name.display()),
                Err(e) => self.problem(&name.display(), format!("directory metadata not set: {e}")),
            }
        }
    }
}

/// A read error of the stream itself, as opposed to a problem with one entry.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct StreamError(std::io::Error);

fn proc_path(dir: &OwnedFd, base: &[u8]) -> std::path::PathBuf {
    use std::os::fd::AsRawFd;
    let mut p = std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(std::ffi::OsStr::from_bytes(base));
    p
}

/// A `File` view of a borrowed fd, for the `xattr` crate's fd-based calls.
fn fd_file(fd: &impl AsFd) -> std::io::Result<File> {
    Ok(File::from(fd.as_fd().try_clone_to_owned()?))
}

fn entry_meta(e: &mut tar::Entry<'_, impl Read>) -> Result<Meta> {
    let h = e.header();
    let mut meta = Meta {
        mode: h.mode().unwrap_or(0o644),
        uid: h.uid().unwrap_or(0),
        gid: h.gid().unwrap_or(0),
        mtime: TimeSpec::new(h.mtime().unwrap_or(0) as i64, 0),
        xattrs: Vec::new(),
    };
    if let Some(exts) = e.pax_extensions().ok().flatten() {
        for ext in exts.flatten() {
            let (Ok(key), value) = (ext.key(), ext.value_bytes()) else {
                continue;
            };
            apply_pax(&mut meta, key, value);
        }
    }
    Ok(meta)
}

fn apply_pax(meta: &mut Meta, key: &str, value: &[u8]) {
    let text = || std::str::from_utf8(value).ok();
    match key {
        "uid" => meta.uid = text().and_then(|t| t.parse().ok()).unwrap_or(meta.uid),
        "gid" => meta.gid = text().and_then(|t| t.parse().ok()).unwrap_or(meta.gid),
        "mtime" => {
            if let Some(ts) = text().and_then(parse_pax_time) {
                meta.mtime = ts;
            }
        }
        _ => {
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                meta.xattrs.push((name.to_string(), value.to_vec()));
            }
        }
    }
}

/// "1700000000.5" or "-1.25" to a timespec.
fn parse_pax_time(t: &str) -> Option<TimeSpec> {
    let (neg, t) = t.strip_prefix('-').map_or((false, t), |r| (true, r));
    let (sec, frac) = t.split_once('.').unwrap_or((t, ""));
    let sec: i64 = sec.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let nsec: i64 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    Some(if !neg {
        TimeSpec::new(sec, nsec)
    } else if nsec == 0 {
        TimeSpec::new(-sec, 0)
    } else {
        TimeSpec::new(-sec - 1, 1_000_000_000 - nsec)
    })
}

/// Extract the archive read from `input` into `target` (created if missing).
/// Per-entry problems are collected in the report and extraction goes on; a damaged
/// stream stops it with an error that names the offset.
pub fn extract<R: Read + Send>(
    input: R,
    target: &Path,
    opts: &ExtractOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<ExtractReport> {
    std::fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
    let root: OwnedFd = File::open(target)
        .with_context(|| format!("opening {}", target.display()))?
        .into();
    let mut x = Extractor {
        root,
        same_owner: opts.same_owner,
        cached: None,
        dirs: Vec::new(),
        problems: Vec::new(),
        stripped_absolute: false,
        buf: vec![0u8; 256 * 1024],
    };
    let (entries, stats) = lzop::decode(input, opts.threads, progress, |dec| {
        let mut entries = 0u64;
        let outcome = (|| -> Result<()> {
            let mut ar = tar::Archive::new(&mut *dec);
            for e in ar.entries().context("reading the tar stream")? {
                let mut e = e.context("reading a tar header")?;
                entries += 1;
                x.entry(&mut e)?;
            }
            Ok(())
        })();
        let at = dec.position();
        outcome.with_context(|| format!("damaged archive at {at}"))?;
        Ok(entries)
    })?;
    x.finish_dirs();
    let summary = Summary::from_stats(&stats, entries);
    if let Some(want) = &opts.expect {
        summary.check(want)?;
    }
    Ok(ExtractReport {
        summary,
        problems: x.problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_or_refused() {
        assert_eq!(
            Name::parse(b"./a//b/./c").unwrap().0,
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(Name::parse(b"/etc/passwd").unwrap().joined(), b"etc/passwd");
        assert_eq!(Name::parse(b"./").unwrap().0.len(), 0);
        assert!(Name::parse(b"../x").is_err());
        assert!(Name::parse(b"a/../../x").is_err());
        assert!(Name::parse(b"a/..").is_err());
        assert_eq!(Name::parse(b"a/b").unwrap().parent(), b"a");
        assert_eq!(Name::parse(b"a").unwrap().parent(), b".");
    }

    #[test]
    fn pax_times_parse_like_gnu_tar() {
        assert_eq!(parse_pax_time("12.5"), Some(TimeSpec::new(12, 500_000_000)));
        assert_eq!(parse_pax_time("7"), Some(TimeSpec::new(7, 0)));
        assert_eq!(
            parse_pax_time("-1.25"),
            Some(TimeSpec::new(-2, 750_000_000))
        );
        assert_eq!(parse_pax_time("1.0000000019"), Some(TimeSpec::new(1, 1)));
        assert_eq!(parse_pax_time("x"), None);
    }
}
