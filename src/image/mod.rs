//! Images: a directory per image on the images partition holding `manifest.json` and
//! one archive per filesystem, published atomically (`NAME.partial/` renamed to `NAME/`).
//!
//! Owns: the image directory format (`docs/image-format.md`), listing the images of a
//! directory, verifying an image's archives against its manifest, and making an image
//! from directory trees and a layout description (`create`).
//! Does not own: the archive format (`archive`), the layout document and planner
//! (`layout`), restoring an image (`restore`).

pub mod create;
pub mod manifest;

pub use manifest::{ArchiveEntry, Manifest};

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::archive::{self, Summary};

/// The suffix of an image directory still being written; never listed or restored.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// One image directory as `list` found it.
#[derive(Clone, Debug, Serialize)]
pub struct ImageEntry {
    /// The directory's name.
    pub name: String,
    pub path: PathBuf,
    /// The manifest, or why it could not be read: such an image is listed, never
    /// dropped, so that the console can show it and say why it cannot be used.
    pub manifest: ManifestState,
    /// What the list is sorted by, newest first: the manifest's `created`, or for an
    /// unreadable manifest the directory's modification time (both RFC 3339 UTC).
    pub when: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ManifestState {
    Readable(Box<Manifest>),
    Unreadable { reason: String },
}

impl ImageEntry {
    pub fn manifest(&self) -> Option<&Manifest> {
        match &self.manifest {
            ManifestState::Readable(m) => Some(m),
            ManifestState::Unreadable { .. } => None,
        }
    }
}

/// The directory `mke2fs` makes at the root of every ext4 filesystem: never an image.
pub const LOST_FOUND: &str = "lost+found";

/// The images in `dir`, newest first. Directories whose name starts with `.` or ends
/// with [`PARTIAL_SUFFIX`] are not images (yet) and are skipped, and so is
/// [`LOST_FOUND`] (every ext4 images filesystem has one at its root); every other
/// directory is listed, with its manifest or the reason it cannot be read.
/// A missing `dir` has no images.
pub fn list(dir: &Path) -> Result<Vec<ImageEntry>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing images in {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.with_context(|| format!("listing images in {}", dir.display()))?;
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') || name.ends_with(PARTIAL_SUFFIX) || name == LOST_FOUND {
            continue;
        }
        let path = e.path();
        let meta =
            std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        if !meta.is_dir() {
            continue;
        }
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let (manifest, when) = match Manifest::load(&path) {
            Ok(m) => {
                let when = m.created.clone();
                (ManifestState::Readable(Box::new(m)), when)
            }
            Err(e) => (
                ManifestState::Unreadable {
                    reason: format!("{e:#}"),
                },
                manifest::rfc3339(mtime),
            ),
        };
        out.push(ImageEntry {
            name,
            path,
            manifest,
            when,
        });
    }
    out.sort_by(|a, b| b.when.cmp(&a.when).then_with(|| b.name.cmp(&a.name)));
    Ok(out)
}

/// Check every archive of the image in `dir` against `manifest`: first that each file
/// exists with its recorded length (cheap, catches a truncated copy at once), then
/// all of its bytes (lzop checksums, tar structure, SHA-256, size, entry count).
/// `progress` is told the archive bytes read, out of [`Manifest::archive_bytes`].
/// The error names the archive and every difference.
pub fn verify(
    dir: &Path,
    manifest: &Manifest,
    threads: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<Summary>> {
    for a in &manifest.archives {
        let path = dir.join(&a.file);
        let len = std::fs::metadata(&path)
            .with_context(|| format!("reading archive {} of image {}", a.file, manifest.id))?
            .len();
        if len != a.summary.length {
            bail!(
                "archive {} of image {} is {len} bytes long, the manifest says {}",
                a.file,
                manifest.id,
                a.summary.length
            );
        }
    }
    let mut got = Vec::new();
    for a in &manifest.archives {
        let path = dir.join(&a.file);
        let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let s = archive::verify(
            BufReader::with_capacity(1 << 20, f),
            Some(&a.summary),
            threads,
            progress,
        )
        .with_context(|| format!("verifying archive {} of image {}", a.file, manifest.id))?;
        got.push(s);
    }
    Ok(got)
}

/// The `understudy image` subcommands, as the CLI parsed them.
#[derive(Debug)]
pub enum Command {
    Create {
        opts: create::CreateOptions,
        progress: bool,
    },
    List {
        dir: PathBuf,
        json: bool,
    },
    Verify {
        image: PathBuf,
        threads: usize,
        progress: bool,
    },
}

/// Run one `understudy image` subcommand and print its result on standard output.
pub fn command(cmd: Command) -> Result<()> {
    use crate::progress::Progress;
    match cmd {
        Command::Create { opts, progress } => {
            let bar = Progress::new(progress, "image", None);
            let (dir, m) = create::create(&opts, &mut |n| bar.add(n))?;
            bar.done();
            println!("{}", dir.display());
            for a in &m.archives {
                println!(
                    "  {:<8} {:<20} {:>12} bytes  sha256 {}  {} entries",
                    a.filesystem, a.file, a.summary.length, a.summary.sha256, a.summary.entries
                );
            }
            Ok(())
        }
        Command::List { dir, json } => {
            let images = list(&dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&images)?);
                return Ok(());
            }
            for i in &images {
                match &i.manifest {
                    ManifestState::Readable(m) => println!(
                        "{:<32} {}  {} archive(s), {} bytes",
                        i.name,
                        m.created,
                        m.archives.len(),
                        m.archive_bytes()
                    ),
                    ManifestState::Unreadable { reason } => {
                        println!("{:<32} unreadable: {reason}", i.name)
                    }
                }
            }
            Ok(())
        }
        Command::Verify {
            image,
            threads,
            progress,
        } => {
            let m = Manifest::load(&image)?;
            let bar = Progress::new(progress, "verify", Some(m.archive_bytes()));
            verify(&image, &m, threads, &mut |n| bar.add(n))?;
            bar.done();
            println!("{}: {} archive(s) verified", m.id, m.archives.len());
            Ok(())
        }
    }
}
