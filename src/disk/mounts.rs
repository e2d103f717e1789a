//! What is mounted and what is swapped on: pure parsers of `/proc/self/mountinfo` and
//! `/proc/swaps`, and the mapping of a swap path to its kernel device name.
//!
//! Does not own: reading those files (the inventory does, from injectable paths), or
//! deciding whether a disk may be touched (callers read `Usage`).

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Bytes, DevNo};

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub devno: DevNo,
    /// The directory of the filesystem that is mounted (`/` unless a bind mount).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fs_type: String,
    /// What mount was given: `/dev/vda1`, `/dev/mapper/vg0-root`, `tmpfs`.
    pub source: String,
    pub options: String,
}

/// One active swap area.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Swap {
    pub path: PathBuf,
    /// `partition` or `file`.
    pub kind: String,
    pub size: Bytes,
    pub used: Bytes,
    pub priority: i32,
}

/// Undo the kernel's octal escapes (`\040` for space, `\011`, `\012`, `\134`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (u32::from(b[i + 1] - b'0') << 6)
                | (u32::from(b[i + 2] - b'0') << 3)
                | u32::from(b[i + 3] - b'0');
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse mountinfo (proc(5)): `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] -
/// FSTYPE SOURCE SUPEROPTIONS`. Lines that do not fit are returned as problems.
pub fn parse_mountinfo(text: &str) -> (Vec<Mount>, Vec<String>) {
    let mut mounts = Vec::new();
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match mountinfo_line(line) {
            Some(m) => mounts.push(m),
            None => bad.push(format!("line {}: not understood: {line:?}", n + 1)),
        }
    }
    (mounts, bad)
}

fn mountinfo_line(line: &str) -> Option<Mount> {
    let f: Vec<&str> = line.split(' ').collect();
    let sep = f.iter().skip(6).position(|&x| x == "-")? + 6;
    let devno = f.get(2)?.parse().ok()?;
    Some(Mount {
        devno,
        root: unescape(f.get(3)?).into(),
        mount_point: unescape(f.get(4)?).into(),
        options: (*f.get(5)?).to_string(),
        fs_type: unescape(f.get(sep + 1)?),
        source: unescape(f.get(sep + 2)?),
    })
}

/// Parse `/proc/swaps`: a header line, then `FILENAME TYPE SIZE USED PRIORITY` with
/// sizes in KiB.
pub fn parse_swaps(text: &str) -> (Vec<Swap>, Vec<String>) {
    let mut swaps = Vec::new();
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let kib = |s: &str| {
            s.parse::<u64>()
                .ok()
                .and_then(|k| k.checked_mul(1024))
                .map(Bytes)
        };
        let parsed = (f.len() == 5)
            .then(|| {
                Some(Swap {
                    path: unescape(f[0]).into(),
                    kind: f[1].to_string(),
                    size: kib(f[2])?,
                    used: kib(f[3])?,
                    priority: f[4].parse().ok()?,
                })
            })
            .flatten();
        match parsed {
            Some(s) => swaps.push(s),
            None => bad.push(format!("line {}: not understood: {line:?}", n + 1)),
        }
    }
    (swaps, bad)
}

/// The kernel name (`vda2`, `dm-1`) of a swap device given by its path, resolved
/// inside `dev` (the `/dev` root in use): `/dev/mapper/vg0-swap` is a link to
/// `../dm-1`. `None` for swap files and paths outside `/dev`.
pub fn swap_device(path: &Path, dev: &Path) -> Option<String> {
    let rel = path.strip_prefix("/dev").ok()?;
    let real = std::fs::canonicalize(dev.join(rel)).ok()?;
    let name = real.file_name()?.to_string_lossy().into_owned();
    // Under the real /dev only block devices count; in a fixture (or a test's dev
    // root holding disk images) regular files stand for them.
    let meta = std::fs::metadata(&real).ok()?;
    (meta.file_type().is_block_device() || meta.is_file()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
29 27 254:1 / /boot rw,relatime shared:5 master:2 - ext4 /dev/vda1 rw
30 27 253:0 /srv/data /mnt/with\\040space rw - xfs /dev/mapper/vg0-data rw,attr2
";

    #[test]
    fn mountinfo_with_optional_fields_escapes_and_bind_roots() {
        let (m, bad) = parse_mountinfo(MOUNTINFO);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(m.len(), 4);
        assert_eq!(
            m[1].devno,
            DevNo {
                major: 254,
                minor: 0
            }
        );
        assert_eq!(m[1].mount_point, Path::new("/"));
        assert_eq!(m[1].fs_type, "ext4");
        assert_eq!(m[1].source, "/dev/vda");
        assert_eq!(m[2].mount_point, Path::new("/boot"));
        assert_eq!(m[2].source, "/dev/vda1");
        assert_eq!(m[3].root, Path::new("/srv/data"));
        assert_eq!(m[3].mount_point, Path::new("/mnt/with space"));
        assert_eq!(m[3].options, "rw");
    }

    #[test]
    fn mountinfo_bad_lines_are_reported_not_fatal() {
        let (m, bad) = parse_mountinfo("garbage\n27 1 254:0 / / rw - ext4 /dev/vda rw\n");
        assert_eq!(m.len(), 1);
        assert_eq!(bad.len(), 1);
        assert!(bad[0].starts_with("line 1:"), "{bad:?}");
    }

    #[test]
    fn swaps_in_kib() {
        let text = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority
/dev/vda2                               partition\t2097148\t\t0\t\t-2
/swap\\040file                           file\t\t1024\t\t512\t\t10
bogus line
";
        let (s, bad) = parse_swaps(text);
        assert_eq!(bad.len(), 1);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].path, Path::new("/dev/vda2"));
        assert_eq!(s[0].kind, "partition");
        assert_eq!(s[0].size, Bytes(2_097_148 * 1024));
        assert_eq!(s[0].priority, -2);
        assert_eq!(s[1].path, Path::new("/swap file"));
        assert_eq!(s[1].used, Bytes(512 * 1024));
        // An empty /proc/swaps has only its header.
        assert!(
            parse_swaps("Filename Type Size Used Priority\n")
                .0
                .is_empty()
        );
    }

    #[test]
    fn unescape_leaves_lone_backslashes() {
        assert_eq!(unescape(r"a\040b\134c"), r"a b\c");
        assert_eq!(unescape(r"a\b\04"), r"a\b\04");
    }
}
