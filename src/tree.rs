//! An inventory of a directory tree, and the comparison of two inventories.
//!
//! Owns the record of what a tree holds, path by path: type, permission bits, owner,
//! size and SHA-256 of file content, symlink target, device number, mtime to the
//! nanosecond, every extended attribute (POSIX ACLs and file capabilities included,
//! as the raw `system.posix_acl_*` and `security.capability` values), allocated blocks
//! and hardlink groups. It is what the fidelity tests compare an extracted tree
//! against, and what the restore engine indexes the emergency tree with; it
//! serializes to JSON with serde.
//!
//! Paths are `./`-style and relative to the scanned root: the root itself is `.`,
//! everything below it `./a/b`; directories carry no trailing `/`. They are raw bytes
//! (Linux names need not be UTF-8), and entries are sorted by those bytes.
//!
//! [`Inventory::scan`] is the only I/O; [`Inventory::diff`] is pure.
//! Does not own: walking for capture (that is `archive`), restoring anything.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Raw bytes (a path, a symlink target, an xattr value) that are usually text.
///
/// In JSON: a string when the bytes are UTF-8, else `{"hex": "..."}`. Displayed as
/// text with each byte that is not part of valid UTF-8 shown as `\xNN`.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub Vec<u8>);

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl From<&[u8]> for Bytes {
    fn from(b: &[u8]) -> Bytes {
        Bytes(b.to_vec())
    }
}

impl From<&str> for Bytes {
    fn from(s: &str) -> Bytes {
        Bytes(s.as_bytes().to_vec())
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum BytesRepr {
    Text(String),
    Hex { hex: String },
}

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(t) => s.serialize_str(t),
            Err(_) => BytesRepr::Hex {
                hex: hex::encode(&self.0),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Bytes, D::Error> {
        match BytesRepr::deserialize(d)? {
            BytesRepr::Text(t) => Ok(Bytes(t.into_bytes())),
            BytesRepr::Hex { hex } => hex::decode(hex)
                .map(Bytes)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// What a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::File => "file",
            Kind::Dir => "directory",
            Kind::Symlink => "symlink",
            Kind::Char => "character device",
            Kind::Block => "block device",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
        })
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Everything recorded about one path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// `.` for the root, `./a/b` below it.
    pub path: Bytes,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Length of a file's content; 0 for everything else.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// SHA-256 of a file's content, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A symlink's target, as stored (not resolved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Bytes>,
    /// A device's (major, minor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<(u64, u64)>,
    /// Seconds since the epoch (negative before 1970) and nanoseconds (0..1e9).
    pub mtime: i64,
    #[serde(default)]
    pub mtime_nsec: u32,
    /// Every extended attribute, by name, all namespaces.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, Bytes>,
    /// Allocated 512-byte blocks (`st_blocks`), for telling sparse files apart.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub blocks: u64,
    /// For a non-directory that shares its inode with other paths of the tree: the
    /// smallest of those paths (bytewise), the same for the whole group. `None` when
    /// no other path in the tree has the same inode, whatever `st_nlink` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_group: Option<Bytes>,
}

impl Entry {
    /// A file whose allocated space is less than its size.
    pub fn is_sparse(&self) -> bool {
        self.kind == Kind::File && self.blocks.saturating_mul(512) < self.size
    }
}

/// The inventory of one tree: its entries sorted by path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub entries: Vec<Entry>,
}

/// What [`Inventory::diff`] compares. Paths present on one side only and types are
/// always compared; atime and ctime never are (they are not recorded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compare {
    /// Permission bits, setuid, setgid and sticky.
    pub mode: bool,
    /// Numeric uid and gid.
    pub owner: bool,
    /// Size of files.
    pub size: bool,
    /// SHA-256 of file content.
    pub content: bool,
    /// Symlink targets.
    pub link_target: bool,
    /// Device numbers.
    pub rdev: bool,
    /// Mtime of everything but directories and symlinks.
    pub mtime: bool,
    /// Mtime of directories.
    pub dir_mtime: bool,
    /// Mtime of symlinks.
    pub symlink_mtime: bool,
    /// Whether the mtimes compared include nanoseconds (else whole seconds only).
    pub mtime_nsec: bool,
    /// Extended attributes other than ACLs and capabilities.
    pub xattrs: bool,
    /// `system.posix_acl_access` and `system.posix_acl_default`.
    pub acls: bool,
    /// `security.capability`.
    pub capability: bool,
    /// Loosely: a file sparse on one side (allocated < size) must be sparse on the
    /// other too, allocating at most twice as much plus 1 MiB.
    pub sparseness: bool,
    /// Hardlink groups.
    pub hardlinks: bool,
}

impl Compare {
    /// Everything that is recorded.
    pub const ALL: Compare = Compare {
        mode: true,
        owner: true,
        size: true,
        content: true,
        link_target: true,
        rdev: true,
        mtime: true,
        dir_mtime: true,
        symlink_mtime: true,
        mtime_nsec: true,
        xattrs: true,
        acls: true,
        capability: true,
        sparseness: true,
        hardlinks: true,
    };

    /// Presence and type only.
    pub const NONE: Compare = Compare {
        mode: false,
        owner: false,
        size: false,
        content: false,
        link_target: false,
        rdev: false,
        mtime: false,
        dir_mtime: false,
        symlink_mtime: false,
        mtime_nsec: false,
        xattrs: false,
        acls: false,
        capability: false,
        sparseness: false,
        hardlinks: false,
    };

    fn xattr(&self, name: &str) -> bool {
        match name {
            "system.posix_acl_access" | "system.posix_acl_default" => self.acls,
            "security.capability" => self.capability,
            _ => self.xattrs,
        }
    }
}

impl Default for Compare {
    fn default() -> Compare {
        Compare::ALL
    }
}

/// One difference between two inventories, on one path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// As shown: `./a/b`, with non-UTF-8 bytes as `\xNN`.
    pub path: String,
    /// What differs, left side first: "mode 0755 vs 0700", "only in left".
    pub what: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.what)
    }
}

fn show_time(sec: i64, nsec: u32, with_nsec: bool) -> String {
    if with_nsec {
        format!("{sec}.{nsec:09}")
    } else {
        sec.to_string()
    }
}

fn short_hash(h: &Option<String>) -> &str {
    h.as_deref().map_or("none", |h| &h[..h.len().min(12)])
}

/// The differences of one path present on both sides.
fn diff_entry(l: &Entry, r: &Entry, what: &Compare, out: &mut Vec<String>) {
    if l.kind != r.kind {
        out.push(format!("type {} vs {}", l.kind, r.kind));
        return;
    }
    if what.mode && l.mode != r.mode {
        out.push(format!("mode {:04o} vs {:04o}", l.mode, r.mode));
    }
    if what.owner && (l.uid, l.gid) != (r.uid, r.gid) {
        out.push(format!("owner {}:{} vs {}:{}", l.uid, l.gid, r.uid, r.gid));
    }
    if what.size && l.size != r.size {
        out.push(format!("size {} vs {}", l.size, r.size));
    }
    if what.content && l.sha256 != r.sha256 {
        out.push(format!(
            "content differs (sha256 {}… vs {}…)",
            short_hash(&l.sha256),
            short_hash(&r.sha256)
        ));
    }
    if what.link_target && l.target != r.target {
        let show = |t: &Option<Bytes>| t.as_ref().map_or("none".to_string(), |t| t.to_string());
        out.push(format!(
            "symlink target {:?} vs {:?}",
            show(&l.target),
            show(&r.target)
        ));
    }
    if what.rdev && l.rdev != r.rdev {
        let show = |d: Option<(u64, u64)>| d.map_or("none".into(), |(a, b)| format!("{a},{b}"));
        out.push(format!("device {} vs {}", show(l.rdev), show(r.rdev)));
    }
    let mtime_wanted = match l.kind {
        Kind::Dir => what.dir_mtime,
        Kind::Symlink => what.symlink_mtime,
        _ => what.mtime,
    };
    if mtime_wanted {
        let differs = l.mtime != r.mtime || (what.mtime_nsec && l.mtime_nsec != r.mtime_nsec);
        if differs {
            out.push(format!(
                "mtime {} vs {}",
                show_time(l.mtime, l.mtime_nsec, what.mtime_nsec),
                show_time(r.mtime, r.mtime_nsec, what.mtime_nsec)
            ));
        }
    }
    let names: BTreeSet<&String> = l.xattrs.keys().chain(r.xattrs.keys()).collect();
    for name in names {
        if !what.xattr(name) {
            continue;
        }
        match (l.xattrs.get(name), r.xattrs.get(name)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(_), Some(_)) => out.push(format!("xattr {name} differs")),
            (Some(_), None) => out.push(format!("xattr {name} only in left")),
            (None, Some(_)) => out.push(format!("xattr {name} only in right")),
            (None, None) => {}
        }
    }
    if what.sparseness && l.kind == Kind::File && l.is_sparse() != r.is_sparse() {
        let (sparse, dense) = if l.is_sparse() { (l, r) } else { (r, l) };
        let allowed = sparse.blocks.saturating_mul(2).saturating_add(2048);
        if dense.blocks > allowed {
            out.push(format!(
                "allocation {} vs {} KiB for {} bytes (sparse on one side only)",
                l.blocks / 2,
                r.blocks / 2,
                l.size
            ));
        }
    }
    if what.hardlinks && l.link_group != r.link_group {
        let show = |g: &Option<Bytes>| g.as_ref().map_or("none".to_string(), |g| g.to_string());
        out.push(format!(
            "hardlink group {} vs {}",
            show(&l.link_group),
            show(&r.link_group)
        ));
    }
}

impl Inventory {
    /// Walk the tree at `root` without following symlinks (the root itself must be
    /// a directory or a symlink to one) and record every path. Crosses mount points.
    /// File content is hashed on all cores, once per inode.
    pub fn scan(root: &Path) -> Result<Inventory> {
        let mut entries = Vec::new();
        let mut files: Vec<(usize, PathBuf)> = Vec::new();
        let mut inodes: HashMap<(u64, u64), Vec<usize>> = HashMap::new();
        let shown = root.display();
        let meta = fs::symlink_metadata(root).with_context(|| format!("reading {shown}"))?;
        // A root that is a symlink is scanned as the directory it names.
        let root = if meta.is_symlink() {
            &fs::canonicalize(root).with_context(|| format!("resolving {shown}"))?
        } else {
            root
        };
        let meta = fs::symlink_metadata(root).with_context(|| format!("reading {shown}"))?;
        anyhow::ensure!(meta.is_dir(), "{shown} is not a directory");
        let mut stack = vec![(root.to_path_buf(), b".".to_vec())];
        while let Some((full, rel)) = stack.pop() {
            let meta = if rel == b"." {
                meta.clone()
            } else {
                fs::symlink_metadata(&full)
                    .with_context(|| format!("reading {}", full.display()))?
            };
            let entry = scan_one(&full, rel.clone(), &meta)?;
            if entry.kind != Kind::Dir {
                let group = inodes.entry((meta.dev(), meta.ino())).or_default();
                if group.is_empty() && entry.kind == Kind::File {
                    files.push((entries.len(), full.clone()));
                }
                group.push(entries.len());
            }
            let is_dir = entry.kind == Kind::Dir;
            entries.push(entry);
            if is_dir {
                let rd = fs::read_dir(&full)
                    .with_context(|| format!("reading directory {}", full.display()))?;
                for child in rd {
                    let child =
                        child.with_context(|| format!("reading directory {}", full.display()))?;
                    let name = child.file_name();
                    let mut crel = rel.clone();
                    crel.push(b'/');
                    crel.extend_from_slice(name.as_bytes());
                    stack.push((child.path(), crel));
                }
            }
        }
        for (i, hash) in hash_files(&files)? {
            entries[i].sha256 = Some(hash);
        }
        for group in inodes.values().filter(|g| g.len() > 1) {
            let hash = entries[group[0]].sha256.clone();
            for &i in group {
                entries[i].sha256.clone_from(&hash);
            }
            let first = group
                .iter()
                .map(|&i| entries[i].path.clone())
                .min()
                .unwrap_or_default();
            for &i in group {
                entries[i].link_group = Some(first.clone());
            }
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Inventory { entries })
    }

    /// The entry at `path` (`.` or `./a/b`).
    pub fn get(&self, path: &[u8]) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.path.0.as_slice().cmp(path))
            .ok()
            .map(|i| &self.entries[i])
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every difference between `self` (left) and `other` (right) that `what`
    /// selects, in path order.
    pub fn diff(&self, other: &Inventory, what: Compare) -> Vec<Difference> {
        let mut out = Vec::new();
        let mut left: Vec<&Entry> = self.entries.iter().collect();
        let mut right: Vec<&Entry> = other.entries.iter().collect();
        // Hand-made inventories need not be sorted.
        left.sort_by(|a, b| a.path.cmp(&b.path));
        right.sort_by(|a, b| a.path.cmp(&b.path));
        let (mut i, mut j) = (0, 0);
        let mut push = |path: &Bytes, what: String| {
            out.push(Difference {
                path: path.to_string(),
                what,
            })
        };
        while i < left.len() || j < right.len() {
            let order = match (left.get(i), right.get(j)) {
                (Some(l), Some(r)) => l.path.cmp(&r.path),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, _) => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    push(&left[i].path, "only in left".into());
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    push(&right[j].path, "only in right".into());
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let mut whats = Vec::new();
                    diff_entry(left[i], right[j], &what, &mut whats);
                    for w in whats {
                        push(&left[i].path, w);
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        out
    }
}

fn kind_of(ft: fs::FileType) -> Kind {
    if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_char_device() {
        Kind::Char
    } else if ft.is_block_device() {
        Kind::Block
    } else if ft.is_fifo() {
        Kind::Fifo
    } else {
        Kind::Socket
    }
}

fn read_xattrs(path: &Path) -> Result<BTreeMap<String, Bytes>> {
    let mut out = BTreeMap::new();
    let names = match xattr::list(path) {
        Ok(n) => n,
        // A filesystem without xattrs has none to record.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing xattrs of {}", path.display())),
    };
    for name in names {
        let value = xattr::get(path, &name).with_context(|| {
            format!(
                "reading xattr {} of {}",
                name.to_string_lossy(),
                path.display()
            )
        })?;
        if let Some(v) = value {
            out.insert(name.to_string_lossy().into_owned(), Bytes(v));
        }
    }
    Ok(out)
}

/// SHA-256 of each file, on all cores: (index, hash).
fn hash_files(files: &[(usize, PathBuf)]) -> Result<Vec<(usize, String)>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<Vec<(usize, String)>>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.min(files.len()).max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((i, path)) = files.get(k) else {
                            return Ok(out);
                        };
                        out.push((*i, hash_file(path)?));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut all = Vec::with_capacity(files.len());
    for r in results {
        all.extend(r?);
    }
    Ok(all)
}

fn hash_file(path: &Path) -> Result<String> {
    let open = |noatime: bool| {
        let mut o = fs::OpenOptions::new();
        o.read(true);
        let flags = libc::O_NOFOLLOW | if noatime { libc::O_NOATIME } else { 0 };
        o.custom_flags(flags);
        o.open(path)
    };
    // O_NOATIME is refused (EPERM) on files we do not own unless we are root.
    let mut f: File = open(true)
        .or_else(|_| open(false))
        .with_context(|| format!("opening {}", path.display()))?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        sha.update(&buf[..n]);
    }
    Ok(hex::encode(sha.finalize()))
}

fn scan_one(full: &PathBuf, rel: Vec<u8>, meta: &fs::Metadata) -> Result<Entry> {
    let kind = kind_of(meta.file_type());
    let size = if kind == Kind::File { meta.len() } else { 0 };
    let target = if kind == Kind::Symlink {
        let t = fs::read_link(full).with_context(|| format!("reading {}", full.display()))?;
        Some(Bytes(t.as_os_str().as_bytes().to_vec()))
    } else {
        None
    };
    let rdev = matches!(kind, Kind::Char | Kind::Block).then(|| {
        let d = meta.rdev();
        (libc::major(d).into(), libc::minor(d).into())
    });
    Ok(Entry {
        path: Bytes(rel),
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        size,
        sha256: None, // filled in by `scan`, all files at once
        target,
        rdev,
        mtime: meta.mtime(),
        mtime_nsec: u32::try_from(meta.mtime_nsec()).unwrap_or(0),
        xattrs: read_xattrs(full)?,
        blocks: meta.blocks(),
        link_group: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: content.len() as u64,
            sha256: Some(hex::encode(Sha256::digest(content.as_bytes()))),
            target: None,
            rdev: None,
            mtime: 1_700_000_000,
            mtime_nsec: 5,
            xattrs: BTreeMap::new(),
            blocks: 8,
            link_group: None,
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            kind: Kind::Dir,
            mode: 0o755,
            size: 0,
            sha256: None,
            ..file(path, "")
        }
    }

    fn inv(entries: Vec<Entry>) -> Inventory {
        Inventory { entries }
    }

    fn shown(d: &[Difference]) -> Vec<String> {
        d.iter().map(|d| d.to_string()).collect()
    }

    #[test]
    fn identical_inventories_have_no_differences() {
        let a = inv(vec![dir("."), file("./a", "x"), dir("./d")]);
        assert!(a.diff(&a.clone(), Compare::ALL).is_empty());
    }

    #[test]
    fn paths_on_one_side_are_named_in_order() {
        let a = inv(vec![dir("."), file("./a", "x"), file("./c", "")]);
        let b = inv(vec![file("./b", ""), dir("."), file("./c", "")]);
        assert_eq!(
            shown(&a.diff(&b, Compare::NONE)),
            ["./a: only in left", "./b: only in right"]
        );
    }

    #[test]
    fn each_field_is_reported_and_can_be_switched_off() {
        let l = file("./f", "one");
        let mut r = file("./f", "two");
        r.mode = 0o4755;
        r.uid = 12345;
        r.gid = 54321;
        r.size = 4;
        r.mtime_nsec = 0;
        r.xattrs
            .insert("security.capability".into(), Bytes(vec![1, 0, 0, 2]));
        r.xattrs.insert("user.a".into(), "v".into());
        let (a, b) = (inv(vec![l]), inv(vec![r]));
        assert_eq!(
            shown(&a.diff(&b, Compare::ALL)),
            [
                "./f: mode 0644 vs 4755",
                "./f: owner 0:0 vs 12345:54321",
                "./f: size 3 vs 4",
                "./f: content differs (sha256 7692c3ad3540… vs 3fc4ccfe7458…)",
                "./f: mtime 1700000000.000000005 vs 1700000000.000000000",
                "./f: xattr security.capability only in right",
                "./f: xattr user.a only in right",
            ]
        );
        let loose = Compare {
            mode: false,
            owner: false,
            size: false,
            content: false,
            mtime_nsec: false,
            xattrs: false,
            ..Compare::ALL
        };
        assert_eq!(
            shown(&a.diff(&b, loose)),
            ["./f: xattr security.capability only in right"]
        );
        let no_cap = Compare {
            capability: false,
            ..loose
        };
        assert!(a.diff(&b, no_cap).is_empty());
    }

    #[test]
    fn mtime_switches_depend_on_the_type() {
        let mut l = vec![dir("./d"), file("./f", "")];
        let mut link = file("./l", "");
        link.kind = Kind::Symlink;
        link.sha256 = None;
        link.size = 0;
        link.target = Some("f".into());
        l.push(link);
        let mut r = l.clone();
        for e in &mut r {
            e.mtime += 1;
        }
        let (a, b) = (inv(l), inv(r));
        assert_eq!(a.diff(&b, Compare::ALL).len(), 3);
        let only_files = Compare {
            dir_mtime: false,
            symlink_mtime: false,
            ..Compare::ALL
        };
        assert_eq!(
            shown(&a.diff(&b, only_files)),
            ["./f: mtime 1700000000.000000005 vs 1700000001.000000005"]
        );
    }

    #[test]
    fn type_change_hides_the_rest() {
        let a = inv(vec![file("./x", "data")]);
        let b = inv(vec![dir("./x")]);
        assert_eq!(
            shown(&a.diff(&b, Compare::ALL)),
            ["./x: type file vs directory"]
        );
    }

    #[test]
    fn xattr_values_and_categories() {
        let mut l = dir("./d");
        l.xattrs
            .insert("system.posix_acl_default".into(), Bytes(vec![2, 0]));
        l.xattrs.insert("trusted.t".into(), "1".into());
        let mut r = l.clone();
        r.xattrs
            .insert("system.posix_acl_default".into(), Bytes(vec![2, 1]));
        r.xattrs.remove("trusted.t");
        let (a, b) = (inv(vec![l]), inv(vec![r]));
        assert_eq!(
            shown(&a.diff(&b, Compare::ALL)),
            [
                "./d: xattr system.posix_acl_default differs",
                "./d: xattr trusted.t only in left"
            ]
        );
        let no_acls = Compare {
            acls: false,
            ..Compare::ALL
        };
        assert_eq!(
            shown(&a.diff(&b, no_acls)),
            ["./d: xattr trusted.t only in left"]
        );
    }

    #[test]
    fn sparseness_is_compared_loosely() {
        let mut l = file("./s", "");
        l.size = 64 << 20;
        l.blocks = 64; // 32 KiB allocated
        let mut r = l.clone();
        r.blocks = 200; // still sparse, a little more allocated: fine
        assert!(
            inv(vec![l.clone()])
                .diff(&inv(vec![r.clone()]), Compare::ALL)
                .is_empty()
        );
        r.blocks = (64 << 20) / 512; // fully allocated
        assert_eq!(
            shown(&inv(vec![l]).diff(&inv(vec![r]), Compare::ALL)),
            ["./s: allocation 32 vs 65536 KiB for 67108864 bytes (sparse on one side only)"]
        );
    }

    #[test]
    fn hardlink_groups_and_devices() {
        let mut l = vec![file("./a", "x"), file("./b", "x")];
        for e in &mut l {
            e.link_group = Some("./a".into());
        }
        let mut dev = file("./null", "");
        dev.kind = Kind::Char;
        dev.sha256 = None;
        dev.rdev = Some((1, 3));
        l.push(dev);
        let mut r = l.clone();
        r[1].link_group = None;
        r[2].rdev = Some((1, 5));
        assert_eq!(
            shown(&inv(l).diff(&inv(r), Compare::ALL)),
            [
                "./b: hardlink group ./a vs none",
                "./null: device 1,3 vs 1,5"
            ]
        );
    }

    #[test]
    fn json_round_trip_keeps_non_utf8_bytes() {
        let mut f = file("./caf\u{e9}", "x");
        f.path = Bytes(b"./bad\xffname".to_vec());
        f.xattrs
            .insert("security.capability".into(), Bytes(vec![1, 0, 0, 2, 0xff]));
        f.xattrs.insert("user.text".into(), "hello".into());
        let a = inv(vec![dir("."), f]);
        let json = serde_json::to_string(&a).unwrap();
        assert!(
            json.contains(r#""path":{"hex":"2e2f626164ff6e616d65"}"#),
            "{json}"
        );
        assert!(json.contains(r#""user.text":"hello""#), "{json}");
        assert!(json.contains(r#""type":"file""#), "{json}");
        let back: Inventory = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
        assert_eq!(a.entries[1].path.to_string(), "./bad\\xffname");
    }

    #[test]
    fn scan_records_a_small_tree() {
        let root = std::env::temp_dir().join(format!("understudy-tree-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("d")).unwrap();
        fs::write(root.join("d/f"), b"hello").unwrap();
        fs::hard_link(root.join("d/f"), root.join("g")).unwrap();
        std::os::unix::fs::symlink("d/f", root.join("l")).unwrap();
        let got = Inventory::scan(&root);
        fs::remove_dir_all(&root).unwrap();
        let got = got.unwrap();
        let paths: Vec<String> = got.entries.iter().map(|e| e.path.to_string()).collect();
        assert_eq!(paths, [".", "./d", "./d/f", "./g", "./l"]);
        let f = got.get(b"./d/f").unwrap();
        assert_eq!(f.kind, Kind::File);
        assert_eq!(f.size, 5);
        assert_eq!(
            f.sha256.as_deref(),
            Some("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
        );
        assert_eq!(f.link_group, Some("./d/f".into()));
        assert_eq!(got.get(b"./g").unwrap().link_group, Some("./d/f".into()));
        let l = got.get(b"./l").unwrap();
        assert_eq!(
            (l.kind, l.target.clone()),
            (Kind::Symlink, Some("d/f".into()))
        );
        assert_eq!(l.link_group, None);
        assert_eq!(got.get(b"./d").unwrap().kind, Kind::Dir);
    }
}
