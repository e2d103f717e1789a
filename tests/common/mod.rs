//! Helpers shared by the archive integration tests: running the CLI with a time
//! limit, scratch directories, building tar streams (with the library's own header
//! encoder, plus raw edits where a header must lie), wrapping them in lzop, and
//! snapshots of a directory tree to prove that nothing changed.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use understudy::archive::header::{BLOCK, Entry, Kind, encode, padding};
use understudy::lzop::Writer;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_understudy")
}

/// What one run of the CLI did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Both streams, for assertion messages and substring checks.
    pub fn text(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr)
    }
}

/// Run `understudy ARGS` in `cwd`, failing the test if it takes longer than
/// `limit` (a hang is a bug too) or dies of a signal.
pub fn understudy_in<I, S>(cwd: &Path, args: I, limit: Duration) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let mut child = Command::new(bin())
        .args(&args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting understudy");
    // Drain both pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("waiting for understudy") {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("understudy {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
    let Some(code) = status.code() else {
        panic!("understudy {args:?} was killed by a signal: {status:?}\n{stderr}");
    };
    assert!(
        !stderr.contains("panicked"),
        "understudy {args:?} panicked:\n{stderr}"
    );
    Run {
        code,
        stdout,
        stderr,
    }
}

/// A directory under cargo's per-target temporary directory, removed on drop
/// (kept when `KEEP_TEST_DIRS` is set, to look at after a failure).
#[derive(Debug)]
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{tag}-{}-{n}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).unwrap();
        }
        std::fs::create_dir_all(&path).unwrap();
        Scratch { path }
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("KEEP_TEST_DIRS").is_none() {
            // remove_dir_all does not follow symlinks, so hostile trees are safe here.
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------
// Building archives

/// Modification time of every entry we make.
pub const MTIME: i64 = 1_700_000_000;

/// An entry for `encode`; `size` matters only for regular files.
pub fn entry(name: &[u8], kind: Kind, mode: u32, size: u64) -> Entry {
    Entry {
        name: name.to_vec(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        size,
        mtime: MTIME,
        mtime_nsec: 0,
        xattrs: vec![],
    }
}

/// A tar stream under construction.
#[derive(Clone, Debug, Default)]
pub struct Tar {
    pub bytes: Vec<u8>,
}

impl Tar {
    pub fn new() -> Tar {
        Tar::default()
    }

    /// Headers for `e`, then `data` padded to a block.
    pub fn add(&mut self, e: &Entry, data: &[u8]) -> &mut Tar {
        encode(e, &mut self.bytes);
        self.bytes.extend_from_slice(data);
        self.bytes
            .resize(self.bytes.len() + padding(data.len() as u64), 0);
        self
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Tar {
        self.file_bytes(name.as_bytes(), mode, data)
    }

    pub fn file_bytes(&mut self, name: &[u8], mode: u32, data: &[u8]) -> &mut Tar {
        let e = entry(name, Kind::Regular, mode, data.len() as u64);
        self.add(&e, data)
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Tar {
        self.add(&entry(name.as_bytes(), Kind::Directory, mode, 0), &[])
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Tar {
        let k = Kind::Symlink(target.as_bytes().to_vec());
        self.add(&entry(name.as_bytes(), k, 0o777, 0), &[])
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Tar {
        let k = Kind::Hardlink(target.as_bytes().to_vec());
        self.add(&entry(name.as_bytes(), k, 0o644, 0), &[])
    }

    pub fn node(&mut self, name: &str, kind: Kind, mode: u32) -> &mut Tar {
        self.add(&entry(name.as_bytes(), kind, mode, 0), &[])
    }

    /// Bytes exactly as given (hand-made or edited headers).
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Tar {
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// The stream with its end-of-archive marker.
    pub fn finish(&self) -> Vec<u8> {
        let mut v = self.bytes.clone();
        v.extend_from_slice(&[0u8; 2 * BLOCK]);
        v
    }
}

/// Recompute the checksum of a header block after a raw edit.
pub fn set_checksum(h: &mut [u8]) {
    h[148..156].fill(b' ');
    let sum: u32 = h[..BLOCK].iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// One pax record: "LEN key=value\n", LEN counting itself.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = 1 + key.len() + 1 + value.len() + 1;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

/// A pax extended header ('x') carrying `records` verbatim, with its data:
/// made by the library's encoder as a regular file, then retyped.
pub fn pax_header(records: &[(&str, &[u8])]) -> Vec<u8> {
    let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
    let mut t = Tar::new();
    t.file("././@PaxHeader", 0o644, &data);
    let mut bytes = t.bytes;
    bytes[156] = b'x';
    set_checksum(&mut bytes[..BLOCK]);
    bytes
}

/// `tar` wrapped in an lzop container by the library's writer.
pub fn lzop(tar: &[u8]) -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), 2, 0).unwrap();
    w.write_all(tar).unwrap();
    w.finish().unwrap().0
}

// ---------------------------------------------------------------------------
// Tree snapshots

/// Everything about one path that extraction could change (atime aside).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rec {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u64,
    pub ino: u64,
    pub rdev: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub link: Option<PathBuf>,
    pub content: Option<Vec<u8>>,
}

pub fn rec(p: &Path) -> Option<Rec> {
    let m = std::fs::symlink_metadata(p).ok()?;
    let ft = m.file_type();
    use std::os::unix::fs::FileTypeExt;
    let kind = if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_file() {
        '-'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else if ft.is_fifo() {
        'p'
    } else {
        '?'
    };
    Some(Rec {
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        size: m.len(),
        nlink: m.nlink(),
        ino: m.ino(),
        rdev: m.rdev(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
        link: ft.is_symlink().then(|| std::fs::read_link(p).unwrap()),
        content: (ft.is_file() && m.len() <= 1 << 20).then(|| std::fs::read(p).unwrap()),
    })
}

pub type Snapshot = BTreeMap<PathBuf, Rec>;

/// Every path below `root` (not `root` itself), without following symlinks,
/// leaving out the top-level names in `skip`.
pub fn snapshot(root: &Path, skip: &[&str]) -> Snapshot {
    fn walk(dir: &Path, rel: &Path, out: &mut Snapshot) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let p = dir.join(&n);
            let r = rel.join(&n);
            let rec = rec(&p).unwrap();
            let is_dir = rec.kind == 'd';
            out.insert(r.clone(), rec);
            if is_dir {
                walk(&p, &r, out);
            }
        }
    }
    let mut out = Snapshot::new();
    let mut names: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !skip.iter().any(|s| OsStr::new(s) == n))
        .collect();
    names.sort();
    for n in names {
        let p = root.join(&n);
        let rec = rec(&p).unwrap();
        let is_dir = rec.kind == 'd';
        out.insert(PathBuf::from(&n), rec);
        if is_dir {
            walk(&p, Path::new(&n), &mut out);
        }
    }
    out
}

/// Fails naming every path that appeared, disappeared or changed.
pub fn assert_same(before: &Snapshot, after: &Snapshot, what: &str) {
    let mut diffs = Vec::new();
    for (p, r) in before {
        match after.get(p) {
            None => diffs.push(format!("removed: {}", p.display())),
            Some(a) if a != r => diffs.push(format!(
                "changed: {}\n  before {r:?}\n  after  {a:?}",
                p.display()
            )),
            _ => {}
        }
    }
    for p in after.keys() {
        if !before.contains_key(p) {
            diffs.push(format!("created: {}", p.display()));
        }
    }
    assert!(diffs.is_empty(), "{what}:\n{}", diffs.join("\n"));
}

/// Names of the regular files, directories etc. below `root`, relative, sorted.
pub fn listing(root: &Path) -> Vec<String> {
    snapshot(root, &[])
        .into_iter()
        .map(|(p, r)| format!("{} {}", r.kind, p.display()))
        .collect()
}

/// Run a shell pipeline, returning (exit code, stdout, stderr).
pub fn sh(script: &str) -> (i32, String, String) {
    let out = Command::new("bash")
        .args(["-c", script])
        .stdin(Stdio::null())
        .output()
        .expect("running bash");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
