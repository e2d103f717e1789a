//! The image manifest (`manifest.json`, schema 1): what an image holds, with the layout
//! of the disk it came from and the summary that pins each archive.
//!
//! Owns: the manifest schema, parsing it with its version checked, its consistency
//! rules (plain archive file names, one archive per filesystem, each naming a
//! filesystem of the layout), and RFC 3339 timestamps for it.
//! Does not own: reading or verifying archives (`archive`), where images live and
//! how they are listed (`image`), the layout document itself (`layout`).

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::archive::Summary;
use crate::layout::{self, Layout};

/// The manifest schema this build writes and reads.
pub const SCHEMA: u32 = 1;

/// The manifest's file name inside an image directory.
pub const FILE: &str = "manifest.json";

/// What an image holds. Serialized as `docs/image-format.md` describes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`SCHEMA`]; a reader refuses other values.
    pub schema: u32,
    /// The image's name, the same as its directory's (`20261125T031500Z-host`).
    pub id: String,
    /// When the image was made, RFC 3339 in UTC (`2026-11-25T03:15:00Z`).
    pub created: String,
    /// The host it was made on (or for, for an image made from directories).
    pub host: String,
    /// The understudy version that wrote it.
    pub tool_version: String,
    /// The source disk's layout (`docs/layout.md`, schema 1).
    pub layout: Layout,
    /// One archive per filesystem of the layout that has content.
    pub archives: Vec<ArchiveEntry>,
    /// The exclude patterns the archives were captured with.
    #[serde(default)]
    pub excludes: Vec<String>,
}

/// One archive of an image: which filesystem it fills, its file, and its summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveEntry {
    /// The mount point of the filesystem it fills (`/`, `/boot`), as in the layout.
    pub filesystem: String,
    /// The archive's file name in the image directory (`root.tar.lzo`): a plain name.
    pub file: String,
    /// `length`, `sha256`, `uncompressed`, `entries`, inline.
    #[serde(flatten)]
    pub summary: Summary,
}

impl Manifest {
    /// Parse a manifest, refusing other schema versions (of the manifest and of its
    /// layout) and inconsistent ones ([`Manifest::check`]).
    pub fn from_json(text: &str) -> Result<Manifest> {
        #[derive(Deserialize)]
        struct Version {
            schema: u32,
        }
        let v: Version =
            serde_json::from_str(text).context("reading the manifest's schema version")?;
        if v.schema != SCHEMA {
            bail!(
                "manifest schema {} is not supported by this build (it reads schema {SCHEMA})",
                v.schema
            );
        }
        let m: Manifest = serde_json::from_str(text).context("parsing the manifest")?;
        m.check()?;
        Ok(m)
    }

    /// Read `DIR/manifest.json`.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Manifest::from_json(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn to_json_pretty(&self) -> String {
        // A manifest is plain data: serializing it cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The rules a reader relies on: the layout's schema, archive names that cannot
    /// leave the image directory, one archive per filesystem, and every archive naming
    /// a filesystem (not swap) of the layout.
    pub fn check(&self) -> Result<()> {
        if self.layout.schema != layout::SCHEMA {
            bail!(
                "layout schema {} is not supported by this build (it reads schema {})",
                self.layout.schema,
                layout::SCHEMA
            );
        }
        if self.id.is_empty() || !is_plain_name(&self.id) {
            bail!("image id {:?} is not a plain directory name", self.id);
        }
        let mounts: BTreeSet<&str> = self
            .layout
            .filesystems
            .iter()
            .filter_map(|f| f.mountpoint.as_deref())
            .collect();
        let mut files = BTreeSet::new();
        let mut filesystems = BTreeSet::new();
        for a in &self.archives {
            if !is_plain_name(&a.file) || a.file == FILE {
                bail!("archive file {:?} is not a plain file name", a.file);
            }
            if !files.insert(a.file.as_str()) {
                bail!("archive file {:?} is listed twice", a.file);
            }
            if !filesystems.insert(a.filesystem.as_str()) {
                bail!("filesystem {} has two archives", a.filesystem);
            }
            if !mounts.contains(a.filesystem.as_str()) {
                bail!(
                    "archive {} is for {}, which is not a filesystem of the layout",
                    a.file,
                    a.filesystem
                );
            }
        }
        Ok(())
    }

    /// The archive that fills the filesystem mounted at `mountpoint`, if any.
    pub fn archive_for(&self, mountpoint: &str) -> Option<&ArchiveEntry> {
        self.archives.iter().find(|a| a.filesystem == mountpoint)
    }

    /// Total length of the archive files: what verification reads.
    pub fn archive_bytes(&self) -> u64 {
        self.archives
            .iter()
            .fold(0u64, |n, a| n.saturating_add(a.summary.length))
    }

    /// Total length of the tar streams: about what extraction writes.
    pub fn uncompressed_bytes(&self) -> u64 {
        self.archives
            .iter()
            .fold(0u64, |n, a| n.saturating_add(a.summary.uncompressed))
    }
}

/// A name that stays in its directory: not empty, no `/`, not `.` or `..`, no NUL.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// The archive file name for a mount point: `/` → `root.tar.lzo`,
/// `/var/lib/db` → `var-lib-db.tar.lzo`.
pub fn archive_file_name(mountpoint: &str) -> String {
    let trimmed = mountpoint.trim_matches('/');
    if trimmed.is_empty() {
        "root.tar.lzo".into()
    } else {
        format!("{}.tar.lzo", trimmed.replace('/', "-"))
    }
}

/// Seconds since the Unix epoch as RFC 3339 UTC (`2026-11-25T03:15:00Z`).
pub fn rfc3339(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// Seconds since the Unix epoch in the compact form image ids use (`20261125T031500Z`).
pub fn compact_utc(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// Year, month, day, hour, minute, second of a Unix time (proleptic Gregorian, UTC),
/// after Howard Hinnant's `civil_from_days`.
fn civil(secs: u64) -> (u64, u64, u64, u64, u64, u64) {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_576_500), "2026-11-25T03:15:00Z");
        assert_eq!(compact_utc(1_795_576_500), "20261125T031500Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn archive_names() {
        assert_eq!(archive_file_name("/"), "root.tar.lzo");
        assert_eq!(archive_file_name("/boot"), "boot.tar.lzo");
        assert_eq!(archive_file_name("/var/lib/db/"), "var-lib-db.tar.lzo");
        assert!(is_plain_name("root.tar.lzo"));
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    fn sample() -> Manifest {
        let layout = Layout::from_json(
            r#"{ "schema": 1, "table": { "type": "none" },
                 "disk": { "size_bytes": 1073741824, "logical_sector": 512, "physical_sector": 512 },
                 "filesystems": [ { "source": "disk", "fstype": "ext4", "used_bytes": 1, "mountpoint": "/" } ] }"#,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        Manifest {
            schema: SCHEMA,
            id: "20261125T031500Z-host".into(),
            created: "2026-11-25T03:15:00Z".into(),
            host: "host".into(),
            tool_version: "0.1.0".into(),
            layout,
            archives: vec![ArchiveEntry {
                filesystem: "/".into(),
                file: "root.tar.lzo".into(),
                summary: Summary {
                    length: 10,
                    sha256: "ab".into(),
                    uncompressed: 20,
                    entries: 3,
                },
            }],
            excludes: vec![],
        }
    }

    #[test]
    fn round_trip_with_the_summary_inline() -> Result<()> {
        let m = sample();
        let json = m.to_json_pretty();
        let v: serde_json::Value = serde_json::from_str(&json)?;
        assert_eq!(v["archives"][0]["length"], 10);
        assert_eq!(v["archives"][0]["sha256"], "ab");
        assert_eq!(Manifest::from_json(&json)?, m);
        Ok(())
    }

    #[test]
    fn refuses_other_schemas_and_inconsistencies() {
        let mut v: serde_json::Value =
            serde_json::from_str(&sample().to_json_pretty()).unwrap_or_default();
        let refused = |v: &serde_json::Value, want: &str| {
            let err = Manifest::from_json(&v.to_string()).unwrap_err();
            assert!(format!("{err:#}").contains(want), "{want}: {err:#}");
        };
        v["schema"] = 2.into();
        refused(&v, "manifest schema 2 is not supported");
        v["schema"] = 1.into();
        v["layout"]["schema"] = 3.into();
        refused(&v, "layout schema 3");
        v["layout"]["schema"] = 1.into();
        v["archives"][0]["file"] = "../etc/passwd".into();
        refused(&v, "not a plain file name");
        v["archives"][0]["file"] = "root.tar.lzo".into();
        v["archives"][0]["filesystem"] = "/srv".into();
        refused(&v, "not a filesystem of the layout");
        v["archives"][0]["filesystem"] = "/".into();
        let dup = v["archives"][0].clone();
        if let Some(a) = v["archives"].as_array_mut() {
            a.push(dup);
        }
        refused(&v, "listed twice");
    }
}
