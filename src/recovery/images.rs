//! The console's view of the image directories on the images partition: id, time,
//! size and archives of each image as `image::list` found it, an unreadable manifest
//! shown with its reason rather than dropped; and checking an image's archives with
//! `image::verify`.
//!
//! Does not own the image format or its reading (`image`): only the projection the
//! console draws, so its screens and tests need no image on disk.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::disk::Bytes;
use crate::image::{self, ImageEntry, Manifest};

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

/// The view of one listed image.
pub fn view(entry: &ImageEntry) -> ImageView {
    match &entry.manifest {
        image::ManifestState::Readable(m) => ImageView {
            id: m.id.clone(),
            dir: entry.path.clone(),
            created: Some(m.created.clone()),
            bytes: Some(Bytes(m.archive_bytes())),
            archives: m
                .archives
                .iter()
                .map(|a| (a.filesystem.clone(), Bytes(a.summary.uncompressed)))
                .collect(),
            problem: None,
        },
        image::ManifestState::Unreadable { reason } => ImageView {
            id: entry.name.clone(),
            dir: entry.path.clone(),
            created: None,
            bytes: None,
            archives: Vec::new(),
            problem: Some(reason.clone()),
        },
    }
}

/// Every published image under `root`, newest first.
pub fn list(root: &Path) -> Result<Vec<ImageView>> {
    Ok(image::list(root)?.iter().map(view).collect())
}

/// Checks every archive of the image in `dir` against its manifest: lengths first,
/// then every byte (`image::verify`).
pub fn verify(dir: &Path) -> Result<()> {
    let manifest = Manifest::load(dir)?;
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    image::verify(dir, &manifest, threads, &mut |_| ()).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::create::{CreateOptions, create};

    #[test]
    fn images_are_viewed_unreadable_ones_with_the_reason_and_verified() {
        let root =
            std::env::temp_dir().join(format!("understudy-recovery-images-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let tree = root.join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/hostname"), "pbx\n").unwrap();
        let desc = root.join("layout.json");
        std::fs::write(
            &desc,
            r#"{"disk": {"size": "256MiB"}, "partitions": [
                 {"name": "root", "grow": true, "filesystem": {"type": "ext4", "mount": "/"}}]}"#,
        )
        .unwrap();
        let out = root.join("images");
        let opts = CreateOptions {
            description: desc,
            trees: vec![("/".into(), tree)],
            id: Some("20261124T031500Z-pbx".into()),
            out_dir: out.clone(),
            threads: 1,
        };
        let (good, manifest) = create(&opts, &mut |_| {}).unwrap();
        let bad = out.join("20261125T031500Z-pbx");
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::write(bad.join(crate::image::manifest::FILE), "{").unwrap();
        // The root of an ext4 images filesystem: not an image, not a problem.
        std::fs::create_dir_all(out.join(crate::image::LOST_FOUND)).unwrap();

        let images = list(&out).unwrap();
        assert_eq!(images.len(), 2, "{images:?}");
        let g = images
            .iter()
            .find(|i| i.id == "20261124T031500Z-pbx")
            .unwrap();
        assert_eq!(g.problem, None);
        assert_eq!(g.created.as_deref(), Some(manifest.created.as_str()));
        assert_eq!(g.bytes, Some(Bytes(manifest.archive_bytes())));
        let a = &manifest.archives[0];
        assert_eq!(
            g.archives,
            [("/".to_string(), Bytes(a.summary.uncompressed))]
        );
        let b = images
            .iter()
            .find(|i| i.id == "20261125T031500Z-pbx")
            .unwrap();
        assert!(b.problem.is_some() && b.bytes.is_none(), "{b:?}");

        verify(&good).unwrap();
        let archive = good.join(&a.file);
        let mut bytes = std::fs::read(&archive).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&archive, &bytes).unwrap();
        assert!(verify(&good).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
