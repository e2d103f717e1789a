//! Copy-back: what changed on the emergency copy while the appliance ran from it,
//! put onto the restored primary.
//!
//! Owns the copy-back index (the state of the emergency tree right after expansion:
//! [`Index`], its versioned JSON-lines file, [`write_index`] that the snapshot agent's
//! expand step calls), the pure comparison of that index with the tree as it is now
//! ([`plan_from`] → [`CopyBackPlan`]: new, changed, type-changed, deleted, and the
//! paths expansion remapped, which are never copied back), and [`apply`], which carries
//! a plan out on the target root.
//!
//! [`apply`] writes nothing itself: removals go through [`RootDir`] (`openat2` with
//! `RESOLVE_IN_ROOT`), and the paths to write travel as a small tar stream, built with
//! the archive header encoder, into [`archive::extract`], so modes, owners, times,
//! xattrs (capabilities after chown), device nodes and hardlinks are set by the one
//! extractor the restore already trusts, inside the target root.
//! Does not own: walking or hashing trees (`tree`), the archive format (`archive`),
//! mounting the emergency or target filesystems (the restore engine).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Component, Path};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::FileStat;
use serde::{Deserialize, Serialize};

use super::events::CopiedBack;
use crate::archive::{self, ExtractOptions, Note, header};
use crate::lzop;
use crate::rootfs::RootDir;
use crate::tree::{Bytes, Compare, Entry, Inventory, Kind};

/// The first line's `format`: what tells an index from any other JSON-lines file.
pub const INDEX_FORMAT: &str = "understudy-copy-back-index";
/// The one version this code writes and reads.
pub const INDEX_VERSION: u32 = 1;
/// Where the expand step keeps the index, relative to the emergency root. Inside the
/// tree it describes, so it travels with it; it excludes itself from copy-back.
pub const INDEX_PATH: &str = "var/lib/understudy/copy-back-index.jsonl";

/// Why an index file cannot be read; the restore engine tells these apart from I/O
/// errors (a missing or foreign index means "no copy-back", not "restore failed").
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("not a copy-back index: the first line is not a {INDEX_FORMAT} header")]
    NotAnIndex,
    #[error(
        "copy-back index version {found} is not supported (this understudy reads version {INDEX_VERSION})"
    )]
    UnsupportedVersion { found: u64 },
    #[error("copy-back index is truncated: its header announces {expected} entries, {found} read")]
    Truncated { expected: u64, found: u64 },
}

/// The first line of an index file.
#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    /// Seconds since the epoch when the index was written.
    created: u64,
    /// How many entry lines follow.
    entries: u64,
    remapped: Vec<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    own_path: Option<Bytes>,
}

/// The emergency tree as expansion left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    /// Seconds since the epoch when the index was written.
    pub created: u64,
    /// Paths (`./etc/fstab`) that expansion rewrote for the emergency copy; each
    /// excludes itself and everything below it from copy-back.
    pub remapped: Vec<Bytes>,
    /// The index file's own path when it lies inside the tree (excluded too).
    pub own_path: Option<Bytes>,
    /// Every path of the tree, sorted.
    pub tree: Inventory,
}

/// `./a/b` from `/a/b`, `a/b` or `./a/b`; refuses `..` and the root itself.
pub fn tree_path(p: &Path) -> Result<Bytes> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = b".".to_vec();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => {
                out.push(b'/');
                out.extend_from_slice(n.as_bytes());
            }
            Component::ParentDir | Component::Prefix(_) => {
                bail!("{}: not a path inside the tree", p.display())
            }
        }
    }
    if out == b"." {
        bail!("{}: the whole tree cannot be excluded", p.display());
    }
    Ok(Bytes(out))
}

/// Whether `path` is `top` or below it.
fn within(path: &[u8], top: &[u8]) -> bool {
    path.strip_prefix(top)
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'/')
}

impl Index {
    /// An index of `tree` excluding `remapped` (tree paths, `./a/b`).
    pub fn new(tree: Inventory, remapped: Vec<Bytes>, own_path: Option<Bytes>) -> Index {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut remapped = remapped;
        remapped.sort();
        remapped.dedup();
        Index {
            created,
            remapped,
            own_path,
            tree,
        }
    }

    /// Whether copy-back leaves `path` alone: remapped by expansion (or below such a
    /// path), or the index file itself.
    pub fn excludes(&self, path: &[u8]) -> bool {
        self.own_path.as_ref().is_some_and(|o| o.0 == path)
            || self.remapped.iter().any(|r| within(path, &r.0))
    }

    /// The index as JSON lines: the header, then one entry a line in path order.
    pub fn write_to(&self, mut out: impl Write) -> Result<()> {
        let mut entries: Vec<&Entry> = self.tree.entries.iter().collect();
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let head = Header {
            format: INDEX_FORMAT.into(),
            version: INDEX_VERSION,
            created: self.created,
            entries: entries.len() as u64,
            remapped: self.remapped.clone(),
            own_path: self.own_path.clone(),
        };
        serde_json::to_writer(&mut out, &head).context("writing the index header")?;
        out.write_all(b"\n").context("writing the index")?;
        for e in entries {
            serde_json::to_writer(&mut out, e).context("writing an index entry")?;
            out.write_all(b"\n").context("writing the index")?;
        }
        Ok(())
    }

    /// Read an index written by [`Index::write_to`], line by line.
    pub fn read_from(input: impl Read) -> Result<Index> {
        let mut lines = BufReader::new(input).lines();
        let first = match lines.next() {
            Some(l) => l.context("reading the index header")?,
            None => return Err(IndexError::NotAnIndex.into()),
        };
        // Format and version first, from a loose parse, so that a future version
        // with other fields is reported as such rather than as a parse error.
        let loose: serde_json::Value =
            serde_json::from_str(&first).map_err(|_| IndexError::NotAnIndex)?;
        if loose.get("format").and_then(|f| f.as_str()) != Some(INDEX_FORMAT) {
            return Err(IndexError::NotAnIndex.into());
        }
        match loose.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(INDEX_VERSION) => {}
            Some(found) => return Err(IndexError::UnsupportedVersion { found }.into()),
            None => return Err(IndexError::NotAnIndex.into()),
        }
        let head: Header = serde_json::from_value(loose).context("parsing the index header")?;
        let mut entries = Vec::with_capacity(usize::try_from(head.entries.min(1 << 20))?);
        for (n, line) in lines.enumerate() {
            let line = line.context("reading the index")?;
            let e: Entry = serde_json::from_str(&line)
                .with_context(|| format!("parsing line {} of the index", n + 2))?;
            entries.push(e);
        }
        if entries.len() as u64 != head.entries {
            return Err(IndexError::Truncated {
                expected: head.entries,
                found: entries.len() as u64,
            }
            .into());
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        if let Some(w) = entries.windows(2).find(|w| w[0].path == w[1].path) {
            bail!("the index lists {} twice", w[0].path);
        }
        Ok(Index {
            created: head.created,
            remapped: head.remapped,
            own_path: head.own_path,
            tree: Inventory { entries },
        })
    }

    pub fn load(path: &Path) -> Result<Index> {
        let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Index::read_from(f).with_context(|| format!("reading copy-back index {}", path.display()))
    }

    /// Write to `path` durably (temporary file, fsync, rename, directory fsync).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut bytes = Vec::new();
        self.write_to(&mut bytes)?;
        archive::write_atomic(path, &bytes)
            .with_context(|| format!("writing copy-back index {}", path.display()))
    }
}

/// Index the tree at `root_dir` and write the index to `out_path` (atomically;
/// missing parent directories are created first, so they are in the index). The
/// expand step of the snapshot agent calls this right after it expanded an image
/// onto the emergency partition and remapped `remapped` (paths inside the tree, such
/// as `/etc/fstab` or `/boot/grub/grub.cfg`; a directory excludes all below it).
/// `out_path` may lie inside the tree: [`INDEX_PATH`] is the usual place.
pub fn write_index(
    root_dir: &Path,
    remapped: &[impl AsRef<Path>],
    out_path: &Path,
) -> Result<Index> {
    let remapped = remapped
        .iter()
        .map(|p| tree_path(p.as_ref()))
        .collect::<Result<Vec<_>>>()?;
    let parent = out_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = out_path
        .file_name()
        .with_context(|| format!("{}: not a file name", out_path.display()))?;
    let root = std::fs::canonicalize(root_dir)
        .with_context(|| format!("resolving {}", root_dir.display()))?;
    let parent =
        std::fs::canonicalize(parent).with_context(|| format!("resolving {}", parent.display()))?;
    let own_path = match parent.strip_prefix(&root) {
        Ok(rel) => Some(tree_path(&rel.join(name))?),
        Err(_) => None,
    };
    let tree = Inventory::scan(&root)
        .with_context(|| format!("indexing emergency tree {}", root.display()))?;
    let index = Index::new(tree, remapped, own_path);
    index.save(out_path)?;
    if let Some(own) = &index.own_path {
        // Writing the index changed its directory's mtime after the scan: put back
        // the indexed one, or that directory would look changed at copy-back.
        let slash = own.as_slice().iter().rposition(|&b| b == b'/');
        let holder = slash.map(|i| &own.as_slice()[..i]);
        if let Some(held) = holder.and_then(|d| index.tree.get(d)) {
            let when = std::time::UNIX_EPOCH
                + std::time::Duration::new(u64::try_from(held.mtime).unwrap_or(0), held.mtime_nsec);
            File::open(&parent)
                .and_then(|d| d.set_modified(when))
                .with_context(|| format!("restoring the mtime of {}", parent.display()))?;
        }
    }
    Ok(index)
}

/// One path of a plan and what happened to it, for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub path: Bytes,
    pub what: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.what)
    }
}

/// A path to write onto the target, as the emergency tree has it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Put {
    pub entry: Entry,
    /// The path as indexed at expansion, if it existed then: what the target should
    /// still hold (else the target is in conflict, and the emergency copy wins).
    pub was: Option<Entry>,
    /// For a file hardlinked with others: the group's first path, written before it.
    pub link_to: Option<Bytes>,
}

/// What copy-back would do, computed from the index and the emergency tree alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CopyBackPlan {
    /// Paths that did not exist at expansion.
    pub new: Vec<Change>,
    /// Same type, other content or metadata (what differs, indexed state first).
    pub changed: Vec<Change>,
    /// Replaced by something of another type ("file → symlink").
    pub type_changed: Vec<Change>,
    /// Gone since expansion (every path, not only the top of a removed directory).
    pub deleted: Vec<Change>,
    /// Remapped by expansion (or the index itself): never copied back; what the
    /// emergency copy did to each.
    pub excluded: Vec<Change>,
    /// Changes copy-back cannot carry (sockets, a directory holding a remapped path).
    pub skipped: Vec<Change>,
    /// File data to copy, in bytes.
    pub bytes: u64,
    /// The paths to remove from the target first, each with all below it.
    #[serde(skip)]
    pub removals: Vec<Bytes>,
    /// The paths to write, parents before children, hardlink groups first-path first.
    #[serde(skip)]
    pub writes: Vec<Put>,
}

impl CopyBackPlan {
    /// Nothing to copy back.
    pub fn is_empty(&self) -> bool {
        self.removals.is_empty() && self.writes.is_empty()
    }

    /// What applying this plan did (`report`), as the progress stream says it.
    pub fn copied(&self, report: &CopyBackReport) -> CopiedBack {
        CopiedBack {
            new: self.new.len(),
            changed: self.changed.len(),
            type_changed: self.type_changed.len(),
            deleted: self.deleted.len(),
            bytes: report.bytes,
            notes: report.notes.len(),
        }
    }
}

impl fmt::Display for CopyBackPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "copy-back: {} new, {} changed, {} replaced by another type, {} deleted; {} bytes of file data",
            self.new.len(),
            self.changed.len(),
            self.type_changed.len(),
            self.deleted.len(),
            self.bytes
        )?;
        let groups = [
            ("new", &self.new),
            ("changed", &self.changed),
            ("type changed", &self.type_changed),
            ("deleted", &self.deleted),
            ("excluded (remapped at expansion)", &self.excluded),
            ("skipped", &self.skipped),
        ];
        for (title, list) in groups {
            if !list.is_empty() {
                writeln!(f, "{title}:")?;
                for c in list {
                    writeln!(f, "  {c}")?;
                }
            }
        }
        Ok(())
    }
}

/// What differs between the indexed and the current state of one path. Allocation
/// is not compared: copying a file changes it without changing the file.
fn differences(was: &Entry, now: &Entry) -> Vec<String> {
    let one = |e: &Entry| Inventory {
        entries: vec![e.clone()],
    };
    let what = Compare {
        sparseness: false,
        ..Compare::ALL
    };
    one(was)
        .diff(&one(now), what)
        .into_iter()
        .map(|d| d.what)
        .collect()
}

/// Scan the emergency tree at `emergency_root` and compare it with `index`.
pub fn plan(index: &Index, emergency_root: &Path) -> Result<CopyBackPlan> {
    let now = Inventory::scan(emergency_root)
        .with_context(|| format!("scanning emergency tree {}", emergency_root.display()))?;
    Ok(plan_from(index, &now))
}

/// The copy-back plan from the indexed tree to the tree `now`. Pure.
pub fn plan_from(index: &Index, now: &Inventory) -> CopyBackPlan {
    let mut p = CopyBackPlan::default();
    // Hand-made inventories need not be sorted: maps put them in path order.
    let was_at: BTreeMap<&[u8], &Entry> = index
        .tree
        .entries
        .iter()
        .map(|e| (e.path.as_slice(), e))
        .collect();
    let now_at: BTreeMap<&[u8], &Entry> =
        now.entries.iter().map(|e| (e.path.as_slice(), e)).collect();
    let change = |path: &Bytes, what: String| Change {
        path: path.clone(),
        what,
    };
    // Paths to write, and paths gone (deleted or replaced by another type).
    let mut puts: BTreeSet<&[u8]> = BTreeSet::new();
    let mut gone: BTreeSet<&[u8]> = BTreeSet::new();
    let paths: BTreeSet<&[u8]> = was_at.keys().chain(now_at.keys()).copied().collect();
    for path in paths {
        let key = Bytes(path.to_vec());
        match (was_at.get(path), now_at.get(path)) {
            (Some(was), Some(cur)) => {
                let diffs = differences(was, cur);
                if index.excludes(path) {
                    let what = if diffs.is_empty() {
                        "unchanged".to_string()
                    } else {
                        format!(
                            "changed in the emergency copy ({}); the target keeps its own",
                            diffs.join("; ")
                        )
                    };
                    p.excluded.push(change(&key, what));
                } else if diffs.is_empty() {
                } else if cur.kind == Kind::Socket {
                    p.skipped
                        .push(change(&key, "a socket cannot be copied".into()));
                } else if was.kind != cur.kind {
                    p.type_changed
                        .push(change(&key, format!("{} → {}", was.kind, cur.kind)));
                    gone.insert(path);
                    puts.insert(path);
                } else {
                    p.changed.push(change(&key, diffs.join("; ")));
                    puts.insert(path);
                }
            }
            (Some(was), None) => {
                if index.excludes(path) {
                    p.excluded.push(change(
                        &key,
                        "deleted in the emergency copy; the target keeps its own".into(),
                    ));
                } else {
                    p.deleted
                        .push(change(&key, format!("{} deleted", was.kind)));
                    gone.insert(path);
                }
            }
            (None, Some(cur)) => {
                if index.excludes(path) {
                    p.excluded.push(change(
                        &key,
                        "new in the emergency copy; not copied back".into(),
                    ));
                } else if cur.kind == Kind::Socket {
                    p.skipped
                        .push(change(&key, "a socket cannot be copied".into()));
                } else {
                    p.new.push(change(&key, format!("new {}", cur.kind)));
                    puts.insert(path);
                }
            }
            (None, None) => {}
        }
    }

    // Removals: the topmost gone paths. One that holds a remapped path cannot go
    // whole; its other gone descendants are then removed one by one.
    let mut top: Option<&[u8]> = None;
    for &path in &gone {
        if top.is_some_and(|t| within(path, t)) {
            continue;
        }
        let holds_excluded = index
            .remapped
            .iter()
            .any(|r| within(&r.0, path) && r.0 != path)
            || index.own_path.as_ref().is_some_and(|o| within(&o.0, path));
        if holds_excluded {
            let kept = now_at.get(path).is_none_or(|cur| cur.kind == Kind::Dir);
            let what = if kept {
                "directory deleted in the emergency copy, but kept: it holds a remapped path"
            } else {
                "replaced in the emergency copy, but kept: it holds a remapped path"
            };
            p.skipped.push(change(&Bytes(path.to_vec()), what.into()));
            puts.remove(path);
            continue;
        }
        top = Some(path);
        p.removals.push(Bytes(path.to_vec()));
    }

    // A write into a hardlink group rewrites the whole group, so the target's links
    // match the emergency tree's whatever the target held.
    let groups: BTreeSet<&[u8]> = puts
        .iter()
        .filter_map(|path| now_at.get(path)?.link_group.as_ref())
        .map(|g| g.as_slice())
        .collect();
    for e in now_at.values() {
        if let Some(g) = &e.link_group {
            if groups.contains(g.as_slice()) && !index.excludes(e.path.as_slice()) {
                puts.insert(e.path.as_slice());
            }
        }
    }
    // Every parent directory of a write, so that a target holding a symlink or a
    // file where the emergency tree has a directory gets the directory.
    let parents: Vec<&[u8]> = puts
        .iter()
        .flat_map(|path| {
            path.iter()
                .enumerate()
                .filter(|&(i, &b)| b == b'/' && i > 1)
                .map(|(i, _)| &path[..i])
        })
        .collect();
    puts.extend(parents);

    for path in puts {
        let Some(cur) = now_at.get(path) else {
            continue;
        };
        let link_to = cur
            .link_group
            .as_ref()
            .filter(|g| g.as_slice() != path && !index.excludes(g.as_slice()))
            .cloned();
        if cur.kind == Kind::File && link_to.is_none() {
            p.bytes = p.bytes.saturating_add(cur.size);
        }
        p.writes.push(Put {
            entry: (*cur).clone(),
            was: was_at.get(path).map(|e| (*e).clone()),
            link_to,
        });
    }
    p
}

/// What [`apply`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CopyBackReport {
    /// Paths removed from the target (tops of removed trees).
    pub removed: usize,
    /// Paths written (files, directories, links, nodes).
    pub written: usize,
    /// File data copied, in bytes.
    pub bytes: u64,
    /// Conflicts (the target differed from the indexed state; the emergency copy
    /// won), and paths written without some metadata or not at all.
    pub notes: Vec<Note>,
}

impl fmt::Display for CopyBackReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "copied back: {} removed, {} written, {} bytes; {} notes",
            self.removed,
            self.written,
            self.bytes,
            self.notes.len()
        )
    }
}

/// Whether the target's `st` is in conflict: neither the indexed state `was` (what
/// the restore put there) nor `now` (what copy-back writes: a rerun finds it there);
/// if so, what differs from the indexed state.
fn conflict(was: Option<&Entry>, now: &Entry, st: Option<&FileStat>) -> Option<String> {
    match (was, st) {
        (None, None) => None,
        (Some(_), None) => Some("the target lacks a path that existed at expansion".into()),
        (_, Some(st)) if differs(now, st).is_empty() => None,
        (None, Some(_)) => Some("the target has a path that did not exist at expansion".into()),
        (Some(was), Some(st)) => {
            let diffs = differs(was, st);
            (!diffs.is_empty()).then(|| format!("{} (indexed vs target)", diffs.join(", ")))
        }
    }
}

/// How the target's `st` differs from `e` in what a status shows cheaply. Directory
/// mtimes are not compared: restoring and remapping change them.
fn differs(e: &Entry, st: &FileStat) -> Vec<String> {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Symlink,
        libc::S_IFREG => Kind::File,
        libc::S_IFCHR => Kind::Char,
        libc::S_IFBLK => Kind::Block,
        libc::S_IFIFO => Kind::Fifo,
        _ => Kind::Socket,
    };
    if kind != e.kind {
        return vec![format!("type {} vs {}", e.kind, kind)];
    }
    let mut diffs = Vec::new();
    if st.st_mode & 0o7777 != e.mode {
        diffs.push(format!(
            "mode {:04o} vs {:04o}",
            e.mode,
            st.st_mode & 0o7777
        ));
    }
    if (st.st_uid, st.st_gid) != (e.uid, e.gid) {
        diffs.push(format!(
            "owner {}:{} vs {}:{}",
            e.uid, e.gid, st.st_uid, st.st_gid
        ));
    }
    if kind == Kind::File && u64::try_from(st.st_size).ok() != Some(e.size) {
        diffs.push(format!("size {} vs {}", e.size, st.st_size));
    }
    let mtime = (st.st_mtime, u32::try_from(st.st_mtime_nsec).unwrap_or(0));
    if kind != Kind::Dir && mtime != (e.mtime, e.mtime_nsec) {
        diffs.push("mtime differs".into());
    }
    diffs
}

fn tree_rel(path: &Bytes) -> &Path {
    use std::os::unix::ffi::OsStrExt;
    Path::new(std::ffi::OsStr::from_bytes(path.as_slice()))
}

/// Carry out `plan` onto the filesystem mounted at `target_root`, reading from the
/// emergency tree at `emergency_root`: remove what was deleted or replaced, then
/// write what is new or changed with its metadata, then sync the target. Paths
/// where the target differed from the indexed state are overwritten (the emergency
/// copy wins) and named in the report's notes. `progress` is told bytes of file
/// data as they are copied.
pub fn apply(
    plan: &CopyBackPlan,
    emergency_root: &Path,
    target_root: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<CopyBackReport> {
    let target = RootDir::open(target_root)?;
    let mut report = CopyBackReport::default();
    let note = |path: &Bytes, message: String| Note {
        path: path.to_string(),
        message,
    };
    for w in &plan.writes {
        let st = target.lstat(tree_rel(&w.entry.path))?;
        if let Some(why) = conflict(w.was.as_ref(), &w.entry, st.as_ref()) {
            report.notes.push(note(
                &w.entry.path,
                format!("{why}; the emergency copy's version wins"),
            ));
        }
    }
    for r in &plan.removals {
        if r.0 == b"." {
            bail!("refusing to remove the target root");
        }
        if target.remove_all(tree_rel(r))? {
            report.removed += 1;
        }
    }
    if !plan.writes.is_empty() {
        let (written, bytes, notes) = write_all(plan, emergency_root, target_root, progress)?;
        report.written = written;
        report.bytes = bytes;
        report.notes.extend(notes);
    }
    let fd =
        File::open(target_root).with_context(|| format!("opening {}", target_root.display()))?;
    nix::unistd::syncfs(&fd).with_context(|| format!("syncing {}", target_root.display()))?;
    Ok(report)
}

/// Stream `plan.writes` from the emergency tree as tar-in-lzop through a pipe into
/// the archive extractor at `target_root`.
fn write_all(
    plan: &CopyBackPlan,
    emergency_root: &Path,
    target_root: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<(usize, u64, Vec<Note>)> {
    let source: OwnedFd = File::open(emergency_root)
        .with_context(|| format!("opening emergency tree {}", emergency_root.display()))?
        .into();
    let (rx, tx) = nix::unistd::pipe().context("creating a pipe for copy-back")?;
    let copied = AtomicU64::new(0);
    let opts = ExtractOptions {
        threads: 2,
        ..ExtractOptions::default()
    };
    let (sent, extracted) = std::thread::scope(|s| {
        let copied = &copied;
        let source = &source;
        let sender = s.spawn(move || send(&plan.writes, source, File::from(tx), copied));
        let mut seen = 0u64;
        let extracted = archive::extract(File::from(rx), target_root, &opts, &mut |_| {
            let now = copied.load(Ordering::Relaxed);
            progress(now.saturating_sub(seen));
            seen = now;
        });
        let sent = sender
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        let now = copied.load(Ordering::Relaxed);
        progress(now.saturating_sub(seen));
        (sent, extracted)
    });
    // The sender's error explains an extractor that saw the stream end early.
    let (written, mut notes) = sent.context("reading the emergency tree for copy-back")?;
    let extracted = extracted.context("writing copied-back paths into the target")?;
    notes.extend(extracted.problems);
    Ok((written, copied.load(Ordering::Relaxed), notes))
}

/// Write each put as a tar member into an lzop stream on `out`.
fn send(
    puts: &[Put],
    source: &OwnedFd,
    out: File,
    copied: &AtomicU64,
) -> Result<(usize, Vec<Note>)> {
    let mut w = lzop::Writer::new(std::io::BufWriter::new(out), 1, 0)?;
    let mut notes = Vec::new();
    let mut hdr = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0usize;
    for put in puts {
        let e = &put.entry;
        let mut file = None;
        let mut name = e.path.0.clone();
        let kind = match (&e.kind, &put.link_to) {
            (Kind::File, Some(first)) => header::Kind::Hardlink(first.0.clone()),
            (Kind::File, None) => {
                let how = OpenHow::new()
                    .flags(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
                    .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
                match openat2(source, tree_rel(&e.path), how) {
                    Ok(fd) => file = Some(File::from(fd)),
                    Err(err) => {
                        notes.push(Note {
                            path: e.path.to_string(),
                            message: format!(
                                "not copied back: opening it in the emergency tree: {err}"
                            ),
                        });
                        continue;
                    }
                }
                header::Kind::Regular
            }
            (Kind::Dir, _) => {
                if name != b"." {
                    name.push(b'/');
                } else {
                    name = b"./".to_vec();
                }
                header::Kind::Directory
            }
            (Kind::Symlink, _) => header::Kind::Symlink(e.target.clone().unwrap_or_default().0),
            (Kind::Char | Kind::Block, _) => {
                let (maj, min) = e.rdev.unwrap_or((0, 0));
                let (maj, min) = (
                    u32::try_from(maj).unwrap_or(u32::MAX),
                    u32::try_from(min).unwrap_or(u32::MAX),
                );
                if e.kind == Kind::Char {
                    header::Kind::Char(maj, min)
                } else {
                    header::Kind::Block(maj, min)
                }
            }
            (Kind::Fifo, _) => header::Kind::Fifo,
            (Kind::Socket, _) => continue,
        };
        let size = if file.is_some() { e.size } else { 0 };
        let member = header::Entry {
            name,
            kind,
            mode: e.mode,
            uid: u64::from(e.uid),
            gid: u64::from(e.gid),
            size,
            mtime: e.mtime,
            mtime_nsec: e.mtime_nsec,
            // Pax keyword form, as capture writes it: `%` and `=` percent-encoded.
            xattrs: e
                .xattrs
                .iter()
                .map(|(k, v)| (k.replace('%', "%25").replace('=', "%3D"), v.0.clone()))
                .collect(),
        };
        hdr.clear();
        header::encode(&member, &mut hdr);
        w.write_all(&hdr).context("writing the copy-back stream")?;
        if let Some(mut f) = file {
            let mut done = 0u64;
            let mut short = false;
            while done < size {
                let want = usize::try_from(size - done).map_or(buf.len(), |r| r.min(buf.len()));
                let n = if short {
                    0
                } else {
                    match f.read(&mut buf[..want]) {
                        Ok(n) => n,
                        Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(err) => {
                            return Err(err).with_context(|| format!("reading {}", e.path));
                        }
                    }
                };
                if n == 0 {
                    if !short {
                        notes.push(Note {
                            path: e.path.to_string(),
                            message: "shrank while being copied back; zero-filled".into(),
                        });
                    }
                    short = true;
                    buf[..want].fill(0);
                }
                let n = if n == 0 { want } else { n };
                w.write_all(&buf[..n])
                    .context("writing the copy-back stream")?;
                done += n as u64;
                copied.fetch_add(n as u64, Ordering::Relaxed);
            }
            let pad = header::padding(size);
            w.write_all(&[0u8; header::BLOCK][..pad])
                .context("writing the copy-back stream")?;
        }
        written += 1;
    }
    w.write_all(&[0u8; 2 * header::BLOCK])
        .context("writing the copy-back stream")?;
    let (mut out, _) = w.finish()?;
    out.flush().context("writing the copy-back stream")?;
    Ok((written, notes))
}

/// What `understudy copy-back` did: the plan, and the report unless it was a dry run.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub plan: CopyBackPlan,
    pub report: Option<CopyBackReport>,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.plan)?;
        match &self.report {
            Some(r) => {
                writeln!(f, "{r}")?;
                for n in &r.notes {
                    writeln!(f, "  {n}")?;
                }
                Ok(())
            }
            None => writeln!(f, "dry run: the target was not touched"),
        }
    }
}

/// The technician's command: load the index (`index`, else [`INDEX_PATH`] inside
/// the emergency tree), plan, and unless `dry_run` apply.
pub fn copy_back(
    emergency_root: &Path,
    target_root: &Path,
    index: Option<&Path>,
    dry_run: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<Outcome> {
    let path = index.map_or_else(|| emergency_root.join(INDEX_PATH), Path::to_path_buf);
    let index = Index::load(&path)?;
    let plan = plan(&index, emergency_root)?;
    let report = if dry_run {
        None
    } else {
        Some(apply(&plan, emergency_root, target_root, progress)?)
    };
    Ok(Outcome { plan, report })
}
