//! Image archives: a tar stream in an lzop container, plus the summary that pins it.
//!
//! Owns the archive operations the CLI, the snapshot agent and the restore engine
//! call (`create`, `extract`, `verify`, `list`), all on streams. The summary (exact
//! length, SHA-256, uncompressed size, entry count) is what catches the damage lzop's
//! per-block checksums cannot: a dropped, duplicated or swapped block.
//! Does not own: where archives live or how images group them.

mod capture;
mod extract;
pub mod header;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub use capture::{CaptureOptions, CaptureReport, Excludes, create};
pub use extract::{ExtractOptions, ExtractReport, extract};

use crate::lzop;

/// All cores, the default for every parallel step.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A non-fatal problem with one path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// What pins an archive's exact bytes; recorded at creation, checked before use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Length of the archive file in bytes.
    pub length: u64,
    /// SHA-256 of the whole archive file, lowercase hex.
    pub sha256: String,
    /// Length of the tar stream inside.
    pub uncompressed: u64,
    /// Tar members, not counting pax extended headers.
    pub entries: u64,
}

impl Summary {
    fn from_stats(st: &lzop::StreamStats, entries: u64) -> Summary {
        Summary {
            length: st.length,
            sha256: hex::encode(st.sha256),
            uncompressed: st.uncompressed,
            entries,
        }
    }

    /// Fails, naming every difference, unless `self` (what was read) is `want`.
    pub fn check(&self, want: &Summary) -> Result<()> {
        let mut diffs = Vec::new();
        if self.length != want.length {
            diffs.push(format!(
                "length is {} bytes, expected {}",
                self.length, want.length
            ));
        }
        if self.sha256 != want.sha256 {
            diffs.push(format!(
                "SHA-256 is {}, expected {}",
                self.sha256, want.sha256
            ));
        }
        if self.uncompressed != want.uncompressed {
            diffs.push(format!(
                "uncompressed size is {}, expected {}",
                self.uncompressed, want.uncompressed
            ));
        }
        if self.entries != want.entries {
            diffs.push(format!(
                "{} entries, expected {}",
                self.entries, want.entries
            ));
        }
        if !diffs.is_empty() {
            bail!("archive does not match its summary: {}", diffs.join("; "));
        }
        Ok(())
    }

    /// Where `create` puts the summary of an archive written to a path.
    pub fn sidecar(archive: &Path) -> PathBuf {
        let mut s = archive.as_os_str().to_owned();
        s.push(".json");
        PathBuf::from(s)
    }

    pub fn load(path: &Path) -> Result<Summary> {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Write durably: temporary file, fsync, rename, fsync of the directory.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)?;
        write_atomic(path, &json)
    }
}

/// Replace `path` with `bytes` so that a crash leaves the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().context("path has no file name")?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

/// One member as `list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Listed {
    /// `-` file, `d` directory, `l` symlink, `h` hardlink, `c`/`b` device, `p` fifo, `S` sparse.
    pub kind: char,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: u64,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

impl std::fmt::Display for Listed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{:04o} {:>5}/{:<5} {:>12} {:>11} {}",
            self.kind, self.mode, self.uid, self.gid, self.size, self.mtime, self.path
        )?;
        match (self.kind, &self.link) {
            ('l', Some(t)) => write!(f, " -> {t}"),
            ('h', Some(t)) => write!(f, " link to {t}"),
            _ => Ok(()),
        }
    }
}

fn listed(e: &mut tar::Entry<'_, impl Read>) -> Listed {
    use tar::EntryType as T;
    let h = e.header();
    let kind = match h.entry_type() {
        T::Directory => 'd',
        T::Symlink => 'l',
        T::Link => 'h',
        T::Char => 'c',
        T::Block => 'b',
        T::Fifo => 'p',
        T::GNUSparse => 'S',
        _ => '-',
    };
    let size = if kind == 'S' {
        h.as_gnu().and_then(|g| g.real_size().ok()).unwrap_or(0)
    } else {
        e.size()
    };
    Listed {
        kind,
        mode: h.mode().unwrap_or(0),
        uid: h.uid().unwrap_or(0),
        gid: h.gid().unwrap_or(0),
        size,
        mtime: h.mtime().unwrap_or(0),
        path: String::from_utf8_lossy(&e.path_bytes()).into_owned(),
        link: e
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned()),
    }
}

/// Walk every member of the archive, reading all data, and hand each to `each`.
/// A damaged stream fails with the offset; the returned summary is what was read.
pub fn walk<R: Read + Send>(
    input: R,
    threads: usize,
    progress: &mut dyn FnMut(u64),
    mut each: impl FnMut(Listed) -> Result<()>,
) -> Result<Summary> {
    let (entries, stats) = lzop::decode(input, threads, progress, |dec| {
        let mut n = 0u64;
        let outcome = (|| -> Result<()> {
            let mut ar = tar::Archive::new(&mut *dec);
            for e in ar.entries().context("reading the tar stream")? {
                let mut e = e.context("reading a tar header")?;
                let item = listed(&mut e);
                // A sparse member's holes are not in the archive, and reading them
                // takes time in proportion to its logical size, which a 1 KiB
                // archive can make an exbibyte. Its stored data is still read, and
                // checked, when the next header is sought.
                if item.kind != 'S' {
                    std::io::copy(&mut e, &mut std::io::sink()).context("reading member data")?;
                }
                n += 1;
                each(item)?;
            }
            Ok(())
        })();
        let at = dec.position();
        outcome.with_context(|| format!("damaged archive at {at}"))?;
        Ok(n)
    })?;
    Ok(Summary::from_stats(&stats, entries))
}

/// Check an archive completely: container, checksums, tar structure, and, when a
/// summary is given, its exact length, digest, size and entry count.
pub fn verify<R: Read + Send>(
    input: R,
    expect: Option<&Summary>,
    threads: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<Summary> {
    let got = walk(input, threads, progress, |_| Ok(()))?;
    if let Some(want) = expect {
        got.check(want)?;
    }
    Ok(got)
}
