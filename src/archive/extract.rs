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
use std::rc::Rc;

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
    /// GNU tar's pax sparse keys (`tar --sparse` in pax format), if any.
    sparse: PaxSparse,
    /// The pax `path` and `linkpath`, when the body was parsed here.
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
}

/// A sparse file in one of GNU tar's pax formats (0.0, 0.1, 1.0). The member's
/// data holds only the stored segments; 1.0 puts the map in front of them.
#[derive(Clone, Debug, Default)]
struct PaxSparse {
    /// The real name (0.1 and 1.0; the header has `GNUSparseFile.PID/NAME`).
    name: Option<Vec<u8>>,
    /// The real size (`GNU.sparse.size`, or `GNU.sparse.realsize` in 1.0).
    size: Option<u64>,
    /// Offsets and lengths, in turn (0.0: `offset`/`numbytes` records; 0.1: `map`).
    map: Vec<u64>,
    /// Format 1.0: the map leads the data.
    map_in_data: bool,
}

impl PaxSparse {
    fn present(&self) -> bool {
        self.size.is_some() || self.name.is_some() || self.map_in_data || !self.map.is_empty()
    }
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
    /// The most recently used parent directory: cleaned path, handle, and whether it
    /// is setgid (then new files take its group, not ours).
    cached: Option<(Vec<u8>, Rc<OwnedFd>, bool)>,
    /// Our own ids and umask: when a file's owner and mode come out right at
    /// creation, the chown and chmod calls are skipped (two syscalls a file).
    ids: (u64, u64),
    umask: u32,
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
    fn parent(&mut self, name: &Name) -> nix::Result<Rc<OwnedFd>> {
        self.parent_and_setgid(name).map(|(fd, _)| fd)
    }

    fn parent_and_setgid(&mut self, name: &Name) -> nix::Result<(Rc<OwnedFd>, bool)> {
        let want = name.parent();
        if let Some((path, fd, setgid)) = &self.cached {
            if *path == want {
                return Ok((Rc::clone(fd), *setgid));
            }
        }
        let fd = match openat2(&self.root, want.as_slice(), in_root(dir_flags())) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => self.make_dirs(name)?,
            Err(e) => return Err(e),
        };
        let setgid = nix::sys::stat::fstat(&fd)?.st_mode & libc::S_ISGID != 0;
        let fd = Rc::new(fd);
        self.cached = Some((want, Rc::clone(&fd), setgid));
        Ok((fd, setgid))
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
        self.finish_fd_as(fd, meta, shown, false);
    }

    /// As `finish_fd`; `owned_right` says the object was just created with the
    /// archive's owner and `meta.mode & 0o777` as its mode, so only what creation
    /// could not get right (special bits, bits the umask removed) is set again.
    fn finish_fd_as(&mut self, fd: &impl AsFd, meta: &Meta, shown: &str, owned_right: bool) {
        let (uid, gid) = self.owner(meta);
        if !owned_right && (uid.is_some() || gid.is_some()) {
            if let Err(e) = fchown(fd, uid, gid) {
                self.problem(shown, format!("owner not set: {e}"));
            }
        }
        let mode_right = owned_right && meta.mode & (0o7000 | self.umask) == 0;
        if !mode_right {
            if let Err(e) = fchmod(fd, Mode::from_bits_truncate(meta.mode & 0o7777)) {
                self.problem(shown, format!("mode not set: {e}"));
            }
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

    /// `pax` is the member's pax body, whole, if it had one (see [`PaxTap`]).
    fn entry(&mut self, e: &mut tar::Entry<'_, impl Read>, pax: Option<&[u8]>) -> Result<()> {
        let meta = entry_meta(e, pax)?;
        let raw = match (&meta.sparse.name, &meta.path) {
            (Some(real), _) | (None, Some(real)) => real.clone(),
            (None, None) => e.path_bytes().into_owned(),
        };
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
        let etype = e.header().entry_type();
        let result = match etype {
            EntryType::Directory => {
                // A directory that cannot be made is a problem with this entry,
                // like any other, not the end of the extraction.
                let made = self.directory(&name);
                if made.is_ok() {
                    self.dirs.push((name.clone(), meta));
                }
                made
            }
            EntryType::Regular | EntryType::Continuous if meta.sparse.present() => {
                let stored = e.size();
                match expand_pax_sparse(e, stored, &meta.sparse) {
                    Ok(mut data) => self.regular(&name, &mut data, &meta, true),
                    Err(err) => Err(err),
                }
            }
            EntryType::GNUSparse => self.gnu_sparse(&name, e, &meta),
            EntryType::Regular | EntryType::Continuous => {
                self.regular(&name, &mut Plain(e), &meta, false)
            }
            EntryType::Symlink => {
                let target = meta.linkpath.clone().unwrap_or_else(|| {
                    e.link_name_bytes()
                        .map(|c| c.into_owned())
                        .unwrap_or_default()
                });
                self.symlink(&name, &target, &meta)
            }
            EntryType::Link => {
                let target = meta.linkpath.clone().unwrap_or_else(|| {
                    e.link_name_bytes()
                        .map(|c| c.into_owned())
                        .unwrap_or_default()
                });
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

    /// An old GNU sparse member. The `tar` crate hides its map and yields holes as
    /// zeros, which for a hostile 1 PiB member would never end; its own `unpack`
    /// seeks over them instead. It creates the file with `O_CREAT|O_EXCL` (never
    /// following a symlink) under our already resolved parent, through that
    /// directory's `/proc/self/fd` path; metadata is then set through our handle.
    fn gnu_sparse(
        &mut self,
        name: &Name,
        e: &mut tar::Entry<'_, impl Read>,
        meta: &Meta,
    ) -> Result<()> {
        if name.0.is_empty() {
            bail!("a file cannot replace the target directory");
        }
        let parent = self.parent(name).context("opening the parent directory")?;
        self.clear(&parent, name.base())?;
        e.set_preserve_permissions(false);
        e.set_preserve_mtime(false);
        e.set_unpack_xattrs(false);
        if let Err(err) = e.unpack(proc_path(&parent, name.base())) {
            // Whatever was created is incomplete: do not leave it looking whole.
            let _ = unlinkat(&*parent, name.base(), UnlinkatFlags::NoRemoveDir);
            return Err(err).context("writing the sparse file");
        }
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH);
        let fd = openat2(&parent, name.base(), how).context("reopening the sparse file")?;
        self.finish_fd(&fd, meta, &name.display());
        Ok(())
    }

    fn regular(
        &mut self,
        name: &Name,
        e: &mut impl Content,
        meta: &Meta,
        sparse: bool,
    ) -> Result<()> {
        if name.0.is_empty() {
            bail!("a file cannot replace the target directory");
        }
        let (parent, setgid) = self
            .parent_and_setgid(name)
            .context("opening the parent directory")?;
        let how = || {
            OpenHow::new()
                .flags(
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                )
                .mode(Mode::from_bits_truncate(meta.mode & 0o777))
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
            let hole = e.hole();
            if hole > 0 {
                let step = i64::try_from(hole).context("hole too large")?;
                file.seek(SeekFrom::Current(step))
                    .context("seeking over a hole")?;
                e.skip(hole);
                len = len.checked_add(hole).context("file too large")?;
                continue;
            }
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
        if len >= EARLY_WRITEBACK {
            // Start writing this file to disk now rather than at the final sync, so
            // the disk works while we decompress the rest. Asynchronous; a failure
            // only means the data goes out later.
            let _ = crate::sys::start_writeback(&file);
        }
        let created_right = !setgid && (meta.uid, meta.gid) == self.ids;
        self.finish_fd_as(&file, meta, &name.display(), created_right);
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

/// Flushes the target filesystem every [`FLUSH_EVERY`] while extraction runs.
///
/// The kernel leaves dirty data in memory for up to 30 s, or until a tenth of RAM is
/// dirty, so without help everything would hit the disk only at the caller's final
/// sync, with the CPU idle. Flushing from a thread of its own keeps the disk busy
/// while the extraction goes on, and leaves the final sync little to do. It only
/// changes when data is written, never what.
struct Flusher {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

impl Flusher {
    fn start(root: &OwnedFd) -> Flusher {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let thread = root.try_clone().ok().and_then(|fd| {
            std::thread::Builder::new()
                .name("flusher".into())
                .spawn(move || {
                    while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                        stopped.recv_timeout(FLUSH_EVERY)
                    {
                        // A failed flush only means the data goes out at the final sync.
                        let _ = nix::unistd::syncfs(&fd);
                    }
                })
                .ok()
        });
        Flusher {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Files at least this large get their writeback started as soon as they are written.
const EARLY_WRITEBACK: u64 = 64 * 1024;

/// The process umask. There is no call that only reads it: set it and put it back.
fn current_umask() -> u32 {
    let old = nix::sys::stat::umask(Mode::empty());
    nix::sys::stat::umask(old);
    old.bits()
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

fn entry_meta(e: &mut tar::Entry<'_, impl Read>, pax: Option<&[u8]>) -> Result<Meta> {
    let h = e.header();
    let mut meta = Meta {
        mode: h.mode().unwrap_or(0o644),
        uid: h.uid().unwrap_or(0),
        gid: h.gid().unwrap_or(0),
        mtime: TimeSpec::new(h.mtime().unwrap_or(0) as i64, 0),
        xattrs: Vec::new(),
        sparse: PaxSparse::default(),
        path: None,
        linkpath: None,
    };
    if let Some(body) = pax {
        for (key, value) in super::header::pax_records(body) {
            match key {
                "path" => meta.path = Some(value.to_vec()),
                "linkpath" => meta.linkpath = Some(value.to_vec()),
                _ => apply_pax(&mut meta, key, value),
            }
        }
    } else if let Some(exts) = e.pax_extensions().ok().flatten() {
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
        "GNU.sparse.name" => meta.sparse.name = Some(value.to_vec()),
        "GNU.sparse.size" | "GNU.sparse.realsize" => {
            meta.sparse.size = text().and_then(|t| t.parse().ok());
        }
        "GNU.sparse.major" => meta.sparse.map_in_data = text() == Some("1"),
        "GNU.sparse.offset" | "GNU.sparse.numbytes" => {
            meta.sparse
                .map
                .extend(text().and_then(|t| t.parse::<u64>().ok()));
        }
        "GNU.sparse.map" => {
            meta.sparse.map = text()
                .unwrap_or("")
                .split(',')
                .filter_map(|n| n.parse().ok())
                .collect();
        }
        _ => {
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                meta.xattrs
                    .push((xattr_name_from_pax(name), value.to_vec()));
            }
        }
    }
}

/// The full content of a pax sparse member: its stored segments at their offsets,
/// zeros in between and up to the real size.
/// `stored` is the member's data size; the map must account for all of it.
fn expand_pax_sparse<'a, R: Read>(
    e: &'a mut R,
    stored: u64,
    sparse: &PaxSparse,
) -> Result<SparseExpand<&'a mut R>> {
    let mut map = sparse.map.clone();
    let mut data = stored;
    if sparse.map_in_data {
        // Decimal numbers, one per line: the count, then offset and length pairs;
        // padded with zeros to a block boundary.
        let mut text = Vec::new();
        let mut block = [0u8; 512];
        let n = loop {
            if data < 512 {
                bail!("malformed sparse map: runs past the member's data");
            }
            e.read_exact(&mut block)
                .map_err(StreamError)
                .context("reading a sparse map")?;
            data -= 512;
            text.extend_from_slice(&block);
            let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
            let complete = lines.len() - 1;
            if complete == 0 {
                continue;
            }
            let Some(n) = std::str::from_utf8(lines[0])
                .ok()
                .and_then(|t| t.parse::<usize>().ok())
                .filter(|&n| n <= 1 << 20)
            else {
                bail!("malformed sparse map: bad segment count");
            };
            if complete > 2 * n {
                break n;
            }
        };
        map = text
            .split(|&b| b == b'\n')
            .skip(1)
            .take(2 * n)
            .map(|l| std::str::from_utf8(l).ok().and_then(|t| t.parse().ok()))
            .collect::<Option<Vec<u64>>>()
            .context("malformed sparse map")?;
    }
    if map.len() % 2 != 0 {
        bail!("malformed sparse map: odd number of values");
    }
    if map.chunks(2).try_fold(0u64, |sum, c| sum.checked_add(c[1])) != Some(data) {
        bail!("malformed sparse map: segments do not add up to the stored data");
    }
    let size = sparse.size.context("sparse member without its real size")?;
    let mut segs: Vec<(u64, u64)> = map.chunks(2).map(|c| (c[0], c[1])).collect();
    segs.retain(|s| s.1 > 0);
    let mut end = 0;
    for &(off, len) in &segs {
        if off < end || off.checked_add(len).is_none_or(|e| e > size) {
            bail!("malformed sparse map: segments overlap, are out of order or too long");
        }
        end = off + len;
    }
    segs.reverse();
    Ok(SparseExpand {
        inner: e,
        segs,
        pos: 0,
        size,
    })
}

/// Reads as the logical content of a sparse file whose segments `inner` holds.
/// A member's content: bytes, and where known, holes to seek over instead of
/// reading zeros.
trait Content: Read {
    /// Bytes of hole at the current position; 0 when data or the end comes next.
    fn hole(&self) -> u64 {
        0
    }
    /// Step over `n` bytes of hole.
    fn skip(&mut self, _n: u64) {}
}

/// Content with no known holes.
struct Plain<'a, R>(&'a mut R);

impl<R: Read> Read for Plain<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read> Content for Plain<'_, R> {}

impl<R: Read> Content for SparseExpand<R> {
    fn hole(&self) -> u64 {
        match self.segs.last() {
            Some(&(off, _)) => off.saturating_sub(self.pos),
            None => self.size.saturating_sub(self.pos),
        }
    }

    fn skip(&mut self, n: u64) {
        self.pos += n;
    }
}

struct SparseExpand<R> {
    inner: R,
    /// Segments still to come, the next one last.
    segs: Vec<(u64, u64)>,
    pos: u64,
    size: u64,
}

impl<R: Read> Read for SparseExpand<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let cap = |n: u64| usize::try_from(n).map_or(buf.len(), |n| n.min(buf.len()));
        let (n, from_inner) = match self.segs.last() {
            Some(&(off, _)) if self.pos < off => (cap(off - self.pos), false),
            Some(&(off, len)) => (cap(off + len - self.pos), true),
            None => (cap(self.size.saturating_sub(self.pos)), false),
        };
        if n == 0 {
            return Ok(0);
        }
        let n = if from_inner {
            let got = self.inner.read(&mut buf[..n])?;
            if got == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            got
        } else {
            buf[..n].fill(0);
            n
        };
        self.pos += n as u64;
        if let Some(&(off, len)) = self.segs.last() {
            if self.pos == off + len {
                self.segs.pop();
            }
        }
        Ok(n)
    }
}

/// Pax extended header bodies, whole, by the stream offset of the header they
/// apply to (what `tar::Entry::raw_header_position` returns).
///
/// The `tar` crate (0.4.46) splits a pax body on newlines before it honours each
/// record's length (composefs/tar-rs#452), so a value holding a 0x0a byte — a binary
/// xattr: a capability, an ACL naming uid or gid 10 — loses that record and every
/// one after it. [`PaxTap`] watches the stream on its way into the `tar` crate,
/// follows the tar framing exactly as that crate does, and keeps each body for
/// [`header::pax_records`](super::header::pax_records), which parses by length.
type PaxBodies = Rc<std::cell::RefCell<std::collections::HashMap<u64, Vec<u8>>>>;

/// What the next bytes of the tar stream are, for [`PaxTap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// A header block (`ext`: a GNU sparse extension block of a member whose data,
    /// `data` bytes, follows the last of them).
    Header { ext: bool, data: u64 },
    /// Bytes to pass over: member data and padding.
    Skip(u64),
    /// A pax body still `n` bytes short, then `pad` bytes of padding.
    Pax { n: u64, pad: u64 },
    /// Not a stream we understand any more: keep nothing, the `tar` crate decides.
    Lost,
}

struct PaxTap<R> {
    inner: R,
    /// Stream offset of the next byte read.
    pos: u64,
    framing: Framing,
    block: Vec<u8>,
    body: Vec<u8>,
    /// The last complete pax body, waiting for the member it applies to.
    pending: Option<Vec<u8>>,
    bodies: PaxBodies,
}

fn round_block(n: u64) -> Option<u64> {
    n.checked_add(511).map(|n| n & !511)
}

impl<R: Read> PaxTap<R> {
    fn new(inner: R, bodies: PaxBodies) -> PaxTap<R> {
        PaxTap {
            inner,
            pos: 0,
            framing: Framing::Header {
                ext: false,
                data: 0,
            },
            block: Vec::with_capacity(512),
            body: Vec::new(),
            pending: None,
            bodies,
        }
    }

    fn observe(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let (n, next) = match self.framing {
                Framing::Lost => return,
                Framing::Skip(n) => {
                    let k = usize::try_from(n).map_or(data.len(), |n| n.min(data.len()));
                    let next = if k as u64 == n {
                        Framing::Header {
                            ext: false,
                            data: 0,
                        }
                    } else {
                        Framing::Skip(n - k as u64)
                    };
                    (k, next)
                }
                Framing::Pax { n, pad } => {
                    let k = usize::try_from(n).map_or(data.len(), |n| n.min(data.len()));
                    self.body.extend_from_slice(&data[..k]);
                    let next = if (k as u64) < n {
                        Framing::Pax {
                            n: n - k as u64,
                            pad,
                        }
                    } else {
                        self.pending = Some(std::mem::take(&mut self.body));
                        Framing::Skip(pad)
                    };
                    (k, next)
                }
                Framing::Header { ext, data: size } => {
                    let k = (512 - self.block.len()).min(data.len());
                    self.block.extend_from_slice(&data[..k]);
                    let next = if self.block.len() < 512 {
                        self.framing
                    } else {
                        let at = self.pos + k as u64 - 512;
                        let next = if ext {
                            self.after_ext(size)
                        } else {
                            self.header(at)
                        };
                        self.block.clear();
                        next
                    };
                    (k, next)
                }
            };
            // A skip of 0 bytes is no skip.
            self.framing = match next {
                Framing::Skip(0) => Framing::Header {
                    ext: false,
                    data: 0,
                },
                f => f,
            };
            self.pos += n as u64;
            data = &data[n..];
        }
    }

    /// After a GNU sparse extension block.
    fn after_ext(&self, data: u64) -> Framing {
        if self.block[504] != 0 {
            Framing::Header { ext: true, data }
        } else {
            round_block(data).map_or(Framing::Lost, Framing::Skip)
        }
    }

    /// After the header block at stream offset `at`, as `tar::Archive` reads it.
    fn header(&mut self, at: u64) -> Framing {
        let h = &self.block;
        if h.iter().all(|&b| b == 0) {
            return Framing::Header {
                ext: false,
                data: 0,
            };
        }
        let Ok(header) = <&[u8; 512]>::try_from(h.as_slice()) else {
            return Framing::Lost;
        };
        let header = tar::Header::from_byte_slice(header);
        let sum: u32 = h[..148]
            .iter()
            .chain(&[b' '; 8])
            .chain(&h[156..])
            .map(|&b| u32::from(b))
            .sum();
        let (Ok(size), Ok(cksum)) = (header.entry_size(), header.cksum()) else {
            return Framing::Lost;
        };
        if cksum != sum {
            return Framing::Lost;
        }
        let ty = header.entry_type();
        if ty.is_pax_local_extensions() {
            if self.pending.is_some() {
                return Framing::Lost; // the tar crate refuses this
            }
            return match round_block(size) {
                Some(r) if size == 0 => {
                    self.pending = Some(Vec::new());
                    Framing::Skip(r)
                }
                Some(r) => Framing::Pax {
                    n: size,
                    pad: r - size,
                },
                None => Framing::Lost,
            };
        }
        if ty.is_pax_global_extensions() || ty.is_gnu_longname() || ty.is_gnu_longlink() {
            return round_block(size).map_or(Framing::Lost, Framing::Skip);
        }
        // A member. Its size is found as the tar crate finds it, bugs included.
        let mut size = size;
        if let Some(body) = self.pending.take() {
            for ext in tar::PaxExtensions::new(&body) {
                let Ok(ext) = ext else { break };
                if ext.key_bytes() == b"size" {
                    if let Some(s) = ext.value().ok().and_then(|v| v.parse().ok()) {
                        size = s;
                    }
                    break;
                }
            }
            self.bodies.borrow_mut().insert(at, body);
        }
        if ty.is_gnu_sparse() && h[482] != 0 {
            return Framing::Header {
                ext: true,
                data: size,
            };
        }
        round_block(size).map_or(Framing::Lost, Framing::Skip)
    }
}

impl<R: Read> Read for PaxTap<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observe(&buf[..n]);
        Ok(n)
    }
}

/// An xattr name from a `SCHILY.xattr.` keyword, decoded as GNU tar does: `%3D` is
/// `=` and `%25` is `%` (GNU tar encodes both so an `=` cannot end the keyword).
fn xattr_name_from_pax(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let (c, skip) = if tail.starts_with("%3D") {
            ('=', 3)
        } else if tail.starts_with("%25") {
            ('%', 3)
        } else {
            ('%', 1)
        };
        out.push(c);
        rest = &tail[skip..];
    }
    out.push_str(rest);
    out
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
        ids: (
            u64::from(nix::unistd::geteuid().as_raw()),
            u64::from(nix::unistd::getegid().as_raw()),
        ),
        umask: current_umask(),
        dirs: Vec::new(),
        problems: Vec::new(),
        stripped_absolute: false,
        buf: vec![0u8; 256 * 1024],
    };
    let flusher = Flusher::start(&x.root);
    let (entries, stats) = lzop::decode(input, opts.threads, progress, |dec| {
        let mut entries = 0u64;
        let outcome = (|| -> Result<()> {
            let bodies = PaxBodies::default();
            let mut ar = tar::Archive::new(PaxTap::new(&mut *dec, Rc::clone(&bodies)));
            for e in ar.entries().context("reading the tar stream")? {
                let mut e = e.context("reading a tar header")?;
                entries += 1;
                let pax = bodies.borrow_mut().remove(&e.raw_header_position());
                x.entry(&mut e, pax.as_deref())?;
            }
            Ok(())
        })();
        let at = dec.position();
        outcome.with_context(|| format!("damaged archive at {at}"))?;
        Ok(entries)
    })?;
    drop(flusher);
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

    fn expanded(data: &[u8], sparse: &PaxSparse) -> Result<Vec<u8>> {
        let mut r = data;
        let mut out = Vec::new();
        expand_pax_sparse(&mut r, data.len() as u64, sparse)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn gnu_pax_sparse_members_expand() {
        // 1.0: the map leads the data, padded to a block.
        let mut data = b"2\n3\n2\n8\n1\n".to_vec();
        data.resize(512, 0);
        data.extend_from_slice(b"abc");
        let v1 = PaxSparse {
            name: Some(b"./s".to_vec()),
            size: Some(12),
            map: vec![],
            map_in_data: true,
        };
        assert_eq!(expanded(&data, &v1).unwrap(), b"\0\0\0ab\0\0\0c\0\0\0");
        // 0.1 and 0.0: the map is in the pax header.
        let v0 = PaxSparse {
            map: vec![3, 2, 8, 1, 12, 0],
            map_in_data: false,
            ..v1.clone()
        };
        assert_eq!(expanded(b"abc", &v0).unwrap(), b"\0\0\0ab\0\0\0c\0\0\0");
        // Maps that do not fit the data, or overlap, are refused.
        assert!(expanded(b"abcd", &v0).is_err());
        let overlap = PaxSparse {
            map: vec![3, 2, 4, 1],
            ..v0.clone()
        };
        assert!(expanded(b"abc", &overlap).is_err());
        let mut bad = b"x\n".to_vec();
        bad.resize(512, 0);
        assert!(expanded(&bad, &v1).is_err());
    }

    #[test]
    fn pax_bodies_with_newlines_in_values_are_kept_whole() {
        use super::super::header::{self, Entry, Kind};
        let entry = |name: &str, kind, xattrs| Entry {
            name: name.as_bytes().to_vec(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 3,
            mtime: 1,
            mtime_nsec: 0,
            xattrs,
        };
        // An ACL value ending in 0x0a, then another xattr: the tar crate loses both.
        let xattrs = vec![
            (
                "system.posix_acl_access".to_string(),
                vec![2, 0, 0, 0, 0x0a],
            ),
            ("user.after".to_string(), b"kept".to_vec()),
        ];
        let long = format!("./{}", "l".repeat(150));
        let mut tar = Vec::new();
        header::encode(&entry(&long, Kind::Regular, xattrs), &mut tar);
        tar.extend_from_slice(b"abc");
        tar.resize(tar.len() + header::padding(3), 0);
        let mut map: Vec<(u64, u64)> = (0..30).map(|i| (i * 1024, 512)).collect();
        map.push((40_960, 2));
        let mut sparse = entry(
            "./s",
            Kind::Sparse(map),
            vec![("user.x".into(), b"\n".to_vec())],
        );
        sparse.size = 40_962;
        header::encode(&sparse, &mut tar);
        tar.resize(tar.len() + 31 * 512, b'z');
        header::encode(&entry("./last", Kind::Regular, vec![]), &mut tar);
        tar.extend_from_slice(b"end");
        tar.resize(tar.len() + header::padding(3) + 1024, 0);

        let bodies = PaxBodies::default();
        let mut ar = tar::Archive::new(PaxTap::new(tar.as_slice(), Rc::clone(&bodies)));
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let body = bodies.borrow_mut().remove(&e.raw_header_position());
            let meta = entry_meta(&mut e, body.as_deref()).unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            seen.push((meta.path, meta.xattrs, data.len()));
        }
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].0.as_deref(), Some(long.as_bytes()));
        assert_eq!(
            seen[0].1,
            vec![
                (
                    "system.posix_acl_access".to_string(),
                    vec![2, 0, 0, 0, 0x0a]
                ),
                ("user.after".to_string(), b"kept".to_vec()),
            ]
        );
        assert_eq!(seen[1].1, vec![("user.x".to_string(), b"\n".to_vec())]);
        assert_eq!(seen[1].2, 40_962);
        assert_eq!((seen[2].0.clone(), seen[2].2), (None, 3));
        assert!(bodies.borrow().is_empty());
    }

    #[test]
    fn xattr_names_decode_like_gnu_tar() {
        assert_eq!(xattr_name_from_pax("user.a%3Db"), "user.a=b");
        assert_eq!(xattr_name_from_pax("user.p%2541%"), "user.p%41%");
        assert_eq!(xattr_name_from_pax("user.%%3D%3d"), "user.%=%3d");
        assert_eq!(
            xattr_name_from_pax("security.capability"),
            "security.capability"
        );
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
