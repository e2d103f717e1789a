//! The console's view of the image directories on the images partition: id, time,
//! size and archives from each `manifest.json` (interface 1 in `docs/console.md`),
//! an unreadable manifest listed with its reason rather than dropped; and checking
//! every archive's length and SHA-256 against its manifest.
//!
//! Stands in for `image::list` and `image::Manifest` until the image module exists:
//! only the manifest fields the console shows are read. Does not own the format.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::disk::Bytes;

/// The manifest's file name in an image directory.
pub const MANIFEST: &str = "manifest.json";

/// One image, as the console lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageView {
    pub id: String,
    pub dir: PathBuf,
    /// RFC 3339 UTC, as the manifest says.
    pub created: Option<String>,
    /// The archives' total length on disk.
    pub bytes: Option<Bytes>,
    /// (mount point, uncompressed size) of each archive.
    pub archives: Vec<(String, Bytes)>,
    /// Why the manifest could not be read: such an image cannot be restored.
    pub problem: Option<String>,
}

#[derive(Deserialize)]
struct ArchiveEntry {
    filesystem: String,
    file: String,
    length: u64,
    sha256: String,
    uncompressed: u64,
}

#[derive(Deserialize)]
struct Manifest {
    id: String,
    created: String,
    archives: Vec<ArchiveEntry>,
}

/// The view of the image in `dir` from its manifest's text.
pub fn view(dir: &Path, manifest: &str) -> ImageView {
    let fallback_id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match serde_json::from_str::<Manifest>(manifest) {
        Ok(m) => ImageView {
            id: m.id,
            dir: dir.to_path_buf(),
            created: Some(m.created),
            bytes: m
                .archives
                .iter()
                .try_fold(0u64, |acc, a| acc.checked_add(a.length))
                .map(Bytes),
            archives: m
                .archives
                .iter()
                .map(|a| (a.filesystem.clone(), Bytes(a.uncompressed)))
                .collect(),
            problem: None,
        },
        Err(e) => ImageView {
            id: fallback_id,
            dir: dir.to_path_buf(),
            created: None,
            bytes: None,
            archives: Vec::new(),
            problem: Some(format!("{MANIFEST}: {e}")),
        },
    }
}

/// Every published image directory under `root` (names ending in `.partial` are
/// unfinished and left out), in no particular order.
pub fn list(root: &Path) -> Result<Vec<ImageView>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
        let entry = entry.with_context(|| format!("listing {}", root.display()))?;
        let dir = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !dir.is_dir() || name.ends_with(".partial") || name == "lost+found" {
            continue;
        }
        let text = std::fs::read_to_string(dir.join(MANIFEST));
        out.push(match text {
            Ok(t) => view(&dir, &t),
            Err(e) => ImageView {
                problem: Some(format!("{MANIFEST}: {e}")),
                ..view(&dir, "")
            },
        });
    }
    Ok(out)
}

/// Checks every archive of the image in `dir` against its manifest: length, then
/// SHA-256 over the whole file.
pub fn verify(dir: &Path) -> Result<()> {
    let path = dir.join(MANIFEST);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let m: Manifest =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    for a in &m.archives {
        let file = dir.join(&a.file);
        let mut f = File::open(&file).with_context(|| format!("opening {}", file.display()))?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut length = 0u64;
        loop {
            let n = f
                .read(&mut buf)
                .with_context(|| format!("reading {}", file.display()))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            length = length.saturating_add(u64::try_from(n)?);
        }
        if length != a.length {
            bail!("{}: {length} bytes, the manifest says {}", a.file, a.length);
        }
        let got = hex::encode(hash.finalize());
        if !got.eq_ignore_ascii_case(&a.sha256) {
            bail!("{}: SHA-256 {got}, the manifest says {}", a.file, a.sha256);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(len: u64, sha: &str) -> String {
        format!(
            r#"{{"schema":1,"id":"20261124T031500Z-pbx","created":"2026-11-24T03:15:00Z","host":"pbx",
               "tool_version":"0.1.0","layout":{{}},"excludes":[],
               "archives":[{{"filesystem":"/","file":"root.tar.lzo","length":{len},"sha256":"{sha}","uncompressed":4096,"entries":3}}]}}"#
        )
    }

    #[test]
    fn images_are_listed_unreadable_ones_with_the_reason_and_verified() {
        let root =
            std::env::temp_dir().join(format!("understudy-recovery-images-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let good = root.join("20261124T031500Z-pbx");
        std::fs::create_dir_all(&good).unwrap();
        std::fs::write(good.join("root.tar.lzo"), b"archive bytes").unwrap();
        let sha = hex::encode(Sha256::digest(b"archive bytes"));
        std::fs::write(good.join(MANIFEST), manifest(13, &sha)).unwrap();
        let bad = root.join("20261125T031500Z-pbx");
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::write(bad.join(MANIFEST), "{").unwrap();
        std::fs::create_dir_all(root.join("20261126T031500Z-pbx.partial")).unwrap();

        let mut images = list(&root).unwrap();
        images.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(images.len(), 2, "{images:?}");
        assert_eq!(images[0].id, "20261124T031500Z-pbx");
        assert_eq!(images[0].bytes, Some(Bytes(13)));
        assert_eq!(images[0].archives, [("/".to_string(), Bytes(4096))]);
        assert!(images[0].problem.is_none());
        assert_eq!(images[1].id, "20261125T031500Z-pbx");
        assert!(images[1].problem.as_deref().unwrap().starts_with(MANIFEST));

        verify(&good).unwrap();
        std::fs::write(good.join("root.tar.lzo"), b"archive bytez").unwrap();
        let err = format!("{:#}", verify(&good).unwrap_err());
        assert!(err.contains("SHA-256"), "{err}");
        std::fs::write(good.join("root.tar.lzo"), b"archive").unwrap();
        let err = format!("{:#}", verify(&good).unwrap_err());
        assert!(err.contains("7 bytes, the manifest says 13"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
