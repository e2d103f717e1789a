//! Capture: walk a directory tree and write it as a tar stream into an lzop container.
//!
//! Owns the tree walk, exclusion, hardlink and hole detection, and the read side of
//! fidelity (modes, owners, times, xattrs). Compression lives in `lzop`, the byte
//! layout of headers in `header`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use globset::{GlobSet, GlobSetBuilder};
use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
use nix::unistd::{Whence, lseek};

use super::header::{self, Entry, Kind};
use super::{Note, Summary};
use crate::lzop;

/// Which paths to leave out, tar style: a pattern with a `/` matches the whole path
/// relative to the source (no leading `./`), one without matches any single name.
#[derive(Clone, Debug)]
pub struct Excludes {
    paths: GlobSet,
    names: GlobSet,
}

impl Excludes {
    pub fn new(patterns: &[String]) -> Result<Excludes> {
        let mut paths = GlobSetBuilder::new();
        let mut names = GlobSetBuilder::new();
        for p in patterns {
            let trimmed = p.trim_start_matches("./").trim_start_matches('/');
            let trimmed = trimmed.trim_end_matches('/');
            let glob = globset::GlobBuilder::new(trimmed)
                .literal_separator(true)
                .build()
                .map_err(|e| anyhow::anyhow!("bad exclude pattern {p:?}: {e}"))?;
            if trimmed.contains('/') {
                paths.add(glob);
            } else {
                names.add(glob);
            }
        }
        Ok(Excludes {
            paths: paths.build().context("building exclude patterns")?,
            names: names.build().context("building exclude patterns")?,
        })
    }

    /// `rel` is the path below the source root, without a leading `./`.
    pub fn matches(&self, rel: &Path, name: &OsStr) -> bool {
        self.names.is_match(name) || self.paths.is_match(rel)
    }
}

/// How to capture.
#[derive(Clone, Debug)]
pub struct CaptureOptions {
    pub excludes: Vec<String>,
    pub threads: usize,
    /// Do not descend into directories on another filesystem (mount points are kept
    /// as empty directories).
    pub one_file_system: bool,
    /// Seconds since the epoch for the lzop header.
    pub mtime: u64,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            excludes: Vec::new(),
            threads: super::default_threads(),
            one_file_system: false,
            mtime: 0,
        }
    }
}

/// What a capture did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CaptureReport {
    pub summary: Summary,
    /// Things left out or changed under us; the archive is still complete and sound.
    pub notes: Vec<Note>,
}

/// One thing the scanner found, in archive order.
enum Found {
    /// An entry to write; `file` is open (and being read ahead) for regular files.
    Entry {
        header: Entry,
        file: Option<File>,
    },
    Note(Note),
}

/// Capture the tree at `source` into `out` as an lzop-compressed tar stream.
/// `progress` is told how many bytes of file data were read, as they are.
///
/// A scanner thread walks the tree (directory reads, `lstat`, xattrs, opening files
/// and asking the kernel to read them ahead) a bounded distance in front of the
/// thread that writes the stream, so on a cold cache the disk always has work.
pub fn create<W: Write>(
    source: &Path,
    out: W,
    opts: &CaptureOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<(W, CaptureReport)> {
    let meta =
        fs::symlink_metadata(source).with_context(|| format!("reading {}", source.display()))?;
    if !meta.is_dir() {
        anyhow::bail!("{} is not a directory", source.display());
    }
    let excludes = Excludes::new(&opts.excludes)?;
    let mut writer = lzop::Writer::new(out, opts.threads.max(1), opts.mtime)?;
    // Each item in flight may hold an open file: stay well under the usual
    // 1024-descriptor limit.
    let (tx, rx) = crossbeam_channel::bounded::<Found>(LOOKAHEAD);
    let (entries, notes) = std::thread::scope(|s| -> Result<(u64, Vec<Note>)> {
        let mut scanner = Scanner {
            root: source.to_path_buf(),
            excludes,
            one_fs: opts.one_file_system.then(|| meta.dev()),
            links: HashMap::new(),
            tx,
        };
        s.spawn(move || {
            if scanner.entry(Path::new(""), &meta) {
                scanner.dir(Path::new(""));
            }
        });
        let mut sink = Sink {
            out: &mut writer,
            buf: vec![0u8; 1 << 20],
            hdr: Vec::with_capacity(4 * header::BLOCK),
            notes: Vec::new(),
            progress,
        };
        let mut entries = 0u64;
        for found in rx {
            match found {
                Found::Note(n) => sink.notes.push(n),
                Found::Entry { header, file } => {
                    sink.entry(&header, file)?;
                    entries += 1;
                }
            }
        }
        Ok((entries, sink.notes))
    })?;
    // End of archive: two zero blocks.
    writer
        .write_all(&[0u8; 2 * header::BLOCK])
        .context("writing the archive")?;
    let (out, stats) = writer.finish()?;
    Ok((
        out,
        CaptureReport {
            summary: Summary::from_stats(&stats, entries),
            notes,
        },
    ))
}

/// How many entries the scanner may run ahead of the writer.
const LOOKAHEAD: usize = 256;
/// How much of each file to ask the kernel to read ahead.
const READAHEAD: i64 = 8 << 20;

fn archive_name(rel: &Path, is_dir: bool) -> Vec<u8> {
    let mut name = b"./".to_vec();
    name.extend_from_slice(rel.as_os_str().as_bytes());
    if is_dir && !rel.as_os_str().is_empty() {
        name.push(b'/');
    }
    name
}

fn read_xattrs(path: &Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in xattr::list(path)? {
        let Some(text) = name.to_str() else { continue };
        if let Some(value) = xattr::get(path, &name)? {
            out.push((pax_xattr_name(text), value));
        }
    }
    out.sort();
    Ok(out)
}

/// An xattr name as GNU tar writes it into a `SCHILY.xattr.` pax keyword: `%` and
/// `=` percent-encoded, since an `=` would end the keyword (`extract` decodes).
fn pax_xattr_name(name: &str) -> String {
    name.replace('%', "%25").replace('=', "%3D")
}

/// The data segments of a file with holes, or `None` if it has none worth keeping.
fn data_segments(file: &File, size: u64) -> Option<Vec<(u64, u64)>> {
    let mut segs = Vec::new();
    let mut pos: i64 = 0;
    let end = i64::try_from(size).ok()?;
    while pos < end {
        let data = match lseek(file, pos, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break, // only a hole remains
            Err(_) => return None,
        };
        let hole = lseek(file, data, Whence::SeekHole).ok()?.min(end);
        if hole > data {
            segs.push((data as u64, (hole - data) as u64));
        }
        pos = hole;
    }
    let stored: u64 = segs.iter().map(|s| s.1).sum();
    (stored < size).then_some(segs)
}

/// The walking half: decides what goes into the archive and describes it.
struct Scanner {
    root: PathBuf,
    excludes: Excludes,
    one_fs: Option<u64>,
    links: HashMap<(u64, u64), Vec<u8>>,
    tx: crossbeam_channel::Sender<Found>,
}

impl Scanner {
    /// Returns false once the writer has stopped listening.
    fn send(&self, f: Found) -> bool {
        self.tx.send(f).is_ok()
    }

    fn note(&self, path: &Path, what: impl Into<String>) -> bool {
        self.send(Found::Note(Note {
            path: format!("./{}", path.display()),
            message: what.into(),
        }))
    }

    fn dir(&mut self, rel: &Path) -> bool {
        let full = self.root.join(rel);
        let rd = match fs::read_dir(&full) {
            Ok(rd) => rd,
            Err(e) => return self.note(rel, format!("directory not read: {e}")),
        };
        let mut names: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
        names.sort();
        for name in names {
            let child = rel.join(&name);
            if self.excludes.matches(&child, &name) {
                continue;
            }
            let meta = match fs::symlink_metadata(self.root.join(&child)) {
                Ok(m) => m,
                Err(e) => {
                    if !self.note(&child, format!("vanished or unreadable: {e}")) {
                        return false;
                    }
                    continue;
                }
            };
            if !self.entry(&child, &meta) {
                return false;
            }
            let descend = meta.is_dir() && self.one_fs.is_none_or(|dev| dev == meta.dev());
            if descend && !self.dir(&child) {
                return false;
            }
        }
        true
    }

    /// Describe one entry and send it; false once the writer is gone.
    fn entry(&mut self, rel: &Path, meta: &Metadata) -> bool {
        let full = self.root.join(rel);
        let ft = meta.file_type();
        let mut file = None;
        let mut size = 0;
        let mut kind = if ft.is_dir() {
            Kind::Directory
        } else if ft.is_symlink() {
            match fs::read_link(&full) {
                Ok(t) => Kind::Symlink(t.as_os_str().as_bytes().to_vec()),
                Err(e) => return self.note(rel, format!("symlink not read: {e}")),
            }
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            match self.links.get(&key) {
                Some(first) if meta.nlink() > 1 => Kind::Hardlink(first.clone()),
                _ => {
                    if meta.nlink() > 1 {
                        self.links.insert(key, archive_name(rel, false));
                    }
                    Kind::Regular
                }
            }
        } else if ft.is_char_device() || ft.is_block_device() {
            let rdev = meta.rdev();
            let (maj, min) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
            // Linux device numbers are 12-bit major, 20-bit minor.
            let (maj, min) = (
                u32::try_from(maj).unwrap_or(u32::MAX),
                u32::try_from(min).unwrap_or(u32::MAX),
            );
            if ft.is_char_device() {
                Kind::Char(maj, min)
            } else {
                Kind::Block(maj, min)
            }
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            return self.note(rel, "socket skipped");
        };
        if kind == Kind::Regular {
            let f = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOATIME)
                .open(&full)
                .or_else(|_| File::open(&full));
            match f {
                Ok(f) => {
                    size = meta.len();
                    if meta.blocks() * 512 < size {
                        if let Some(segs) = data_segments(&f, size) {
                            kind = Kind::Sparse(segs);
                        }
                    }
                    // Only a hint: the kernel starts reading while we go on.
                    let ahead = i64::try_from(size).unwrap_or(READAHEAD).min(READAHEAD);
                    let _ = posix_fadvise(&f, 0, ahead, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
                    file = Some(f);
                }
                Err(e) => return self.note(rel, format!("file not read: {e}")),
            }
        }
        let xattrs = match read_xattrs(&full) {
            Ok(x) => x,
            Err(e) => {
                if !self.note(rel, format!("extended attributes not read: {e}")) {
                    return false;
                }
                Vec::new()
            }
        };
        let header = Entry {
            name: archive_name(rel, ft.is_dir()),
            kind,
            mode: meta.mode(),
            uid: u64::from(meta.uid()),
            gid: u64::from(meta.gid()),
            size,
            mtime: meta.mtime(),
            mtime_nsec: u32::try_from(meta.mtime_nsec()).unwrap_or(0),
            xattrs,
        };
        self.send(Found::Entry { header, file })
    }
}

/// The writing half: headers and file data into the lzop stream.
struct Sink<'a, W: Write> {
    out: &'a mut lzop::Writer<W>,
    buf: Vec<u8>,
    hdr: Vec<u8>,
    notes: Vec<Note>,
    progress: &'a mut dyn FnMut(u64),
}

impl<W: Write> Sink<'_, W> {
    fn note(&mut self, name: &[u8], what: impl Into<String>) {
        self.notes.push(Note {
            path: String::from_utf8_lossy(name).into_owned(),
            message: what.into(),
        });
    }

    fn entry(&mut self, e: &Entry, file: Option<File>) -> Result<()> {
        self.hdr.clear();
        header::encode(e, &mut self.hdr);
        self.out
            .write_all(&self.hdr)
            .context("writing the archive")?;
        if let Some(f) = file {
            let segs = match &e.kind {
                Kind::Sparse(s) => s.clone(),
                _ => vec![(0, e.size)],
            };
            let stored: u64 = segs.iter().map(|s| s.1).sum();
            for (off, len) in segs {
                self.copy_range(&e.name, &f, off, len)?;
            }
            let pad = header::padding(stored);
            self.out
                .write_all(&[0u8; header::BLOCK][..pad])
                .context("writing the archive")?;
        }
        Ok(())
    }

    /// Copy `len` bytes at `off` of `f` into the stream. A file that shrank while we
    /// read it is padded with zeros so the stream stays well formed, with a note.
    fn copy_range(&mut self, name: &[u8], f: &File, off: u64, len: u64) -> Result<()> {
        let mut done = 0u64;
        let mut short = false;
        while done < len {
            let want =
                usize::try_from(len - done).map_or(self.buf.len(), |r| r.min(self.buf.len()));
            let n = if short {
                0
            } else {
                match f.read_at(&mut self.buf[..want], off + done) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.note(
                            name,
                            format!("read error at byte {}: {e}; rest zero-filled", off + done),
                        );
                        0
                    }
                }
            };
            if n == 0 {
                if !short {
                    self.note(name, "file shrank while being read; zero-filled");
                }
                short = true;
                self.buf[..want].fill(0);
            }
            let n = if n == 0 { want } else { n };
            self.out
                .write_all(&self.buf[..n])
                .context("writing the archive")?;
            (self.progress)(n as u64);
            done += n as u64;
        }
        Ok(())
    }
}
