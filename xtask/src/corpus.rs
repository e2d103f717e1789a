//! The test and benchmark corpus: a real Debian bookworm tree made by
//! debootstrap, cached under `target/corpus/<key>/root`.
//!
//! The tree is built in a temporary directory beside its final place and
//! renamed only once debootstrap has finished, and `done` is written last, so
//! an interrupted build never leaves something that counts as a corpus.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::run::{Cmd, is_root, require};
use crate::target_dir;

pub const SUITE: &str = "bookworm";
pub const VARIANT: &str = "minbase";
pub const INCLUDE: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "lvm2",
    "linux-image-amd64",
    "grub-pc",
    "e2fsprogs",
    "udev",
    // What `understudy provision` needs on the appliance: FAT for the ESP, GRUB's
    // UEFI modules beside grub-pc's, and a busybox for the recovery initramfs.
    "dosfstools",
    "grub-efi-amd64-bin",
    "busybox-static",
];

/// `cargo xtask corpus`: make sure the tree exists and print its path.
pub fn main(args: &[String]) -> Result<()> {
    if let Some(a) = args.first() {
        bail!("corpus takes no arguments (got `{a}`)");
    }
    let root = ensure()?;
    let (entries, bytes) = stats(&root)?;
    eprintln!(
        "corpus: {entries} entries, {} in regular files",
        human_bytes(bytes)
    );
    println!("{}", root.display());
    Ok(())
}

/// Short stable key for the suite, variant and package list, so a change to
/// any of them builds a new tree instead of reusing an old one.
pub fn key() -> String {
    let mut text = format!("{SUITE}\n{VARIANT}\n");
    text.push_str(&INCLUDE.join(","));
    // FNV-1a, 64 bit: stable across Rust versions, unlike DefaultHasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{SUITE}-{:012x}", h >> 16)
}

/// The cached corpus root, building it first if it is missing.
pub fn ensure() -> Result<PathBuf> {
    let dir = target_dir().join("corpus").join(key());
    let root = dir.join("root");
    let done = dir.join("done");
    if done.is_file() && root.is_dir() {
        return Ok(root);
    }
    if !is_root() {
        bail!(
            "the corpus {} is not built yet, and building it needs root \
             (debootstrap creates device nodes and chroots); run `sudo ./x corpus` once",
            root.display()
        );
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    // One builder at a time (say `./x test` and `./x bench` in two shells).
    let lock = File::create(dir.join("lock"))?;
    lock.lock().context("locking the corpus directory")?;
    if done.is_file() && root.is_dir() {
        return Ok(root);
    }

    // Leftovers of an interrupted build never count: clear them.
    for entry in fs::read_dir(&dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("root.tmp") || name == "root" {
            remove_tree(&path)?;
        }
    }

    require(&["debootstrap"])?;
    let mirror = apt_mirror()?;
    let tmp = dir.join(format!("root.tmp-{}", std::process::id()));
    let log = dir.join("debootstrap.log");
    let _ = fs::remove_file(&log);
    eprintln!(
        "corpus: debootstrap {SUITE} ({VARIANT} + {}) from {mirror} into {} (a few minutes; log: {})",
        INCLUDE.join(","),
        tmp.display(),
        log.display()
    );
    let start = Instant::now();
    let result = Cmd::new("debootstrap")
        .arg(format!("--variant={VARIANT}"))
        .arg(format!("--include={}", INCLUDE.join(",")))
        .arg(SUITE)
        .arg(&tmp)
        .arg(&mirror)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run_logged(&log);
    if let Err(e) = result {
        let _ = remove_tree(&tmp);
        return Err(e);
    }
    // Installing packages can leave things behind that belong to the
    // build, not the tree.
    unmount_below(&tmp)?;
    let _ = fs::remove_dir_all(tmp.join("var/cache/apt/archives/partial"));
    let secs = start.elapsed().as_secs_f64();

    fs::rename(&tmp, &root)
        .with_context(|| format!("renaming {} to {}", tmp.display(), root.display()))?;
    let (entries, bytes) = stats(&root)?;
    let info = serde_json::json!({
        "suite": SUITE,
        "variant": VARIANT,
        "include": INCLUDE,
        "mirror": mirror,
        "build_seconds": secs,
        "entries": entries,
        "regular_file_bytes": bytes,
        "built_unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    });
    let mut f = File::create(&done)?;
    writeln!(f, "{}", serde_json::to_string_pretty(&info)?)?;
    f.sync_all()?;
    eprintln!("corpus: built in {secs:.0} s");
    Ok(root)
}

/// The Debian mirror this machine's apt uses, read from its sources (never
/// hard-coded): the first `deb` entry carrying the corpus suite.
pub fn apt_mirror() -> Result<String> {
    if let Ok(m) = std::env::var("UNDERSTUDY_MIRROR")
        && !m.is_empty()
    {
        return Ok(m);
    }
    let mut files: Vec<PathBuf> = Vec::new();
    files.push(PathBuf::from("/etc/apt/sources.list"));
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for file in &files {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
        let found = match (file.ends_with("sources.list"), ext) {
            (true, _) | (_, "list") => mirror_from_list(&text),
            (_, "sources") => mirror_from_deb822(&text),
            _ => None,
        };
        if let Some(m) = found {
            return Ok(m);
        }
    }
    bail!(
        "no apt source for `{SUITE}` found in /etc/apt/sources.list or \
         /etc/apt/sources.list.d/*.sources; set UNDERSTUDY_MIRROR to a Debian mirror URL"
    )
}

/// One-line style: `deb [options] URI SUITE COMPONENTS...`.
fn mirror_from_list(text: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut rest: Vec<&str> = words.collect();
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            let close = rest.iter().position(|w| w.ends_with(']'))?;
            rest.drain(..=close);
        }
        if rest.len() >= 2 && rest[1] == SUITE {
            return Some(rest[0].to_string());
        }
    }
    None
}

/// deb822 style: stanzas of `Types:`, `URIs:`, `Suites:`, `Enabled:`.
fn mirror_from_deb822(text: &str) -> Option<String> {
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let types = field("Types").unwrap_or_default();
        let suites = field("Suites").unwrap_or_default();
        let enabled = field("Enabled").unwrap_or_else(|| "yes".into());
        if types.split_whitespace().any(|t| t == "deb")
            && suites.split_whitespace().any(|s| s == SUITE)
            && enabled != "no"
            && let Some(uris) = field("URIs")
            && let Some(first) = uris.split_whitespace().next()
        {
            return Some(first.to_string());
        }
    }
    None
}

/// Unmounts anything still mounted at or below `path` (an interrupted
/// debootstrap can leave /proc or /sys mounted inside its tree), deepest
/// first.
pub fn unmount_below(path: &Path) -> Result<()> {
    let Ok(path) = path.canonicalize() else {
        return Ok(());
    };
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(&path))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        Cmd::new("umount").arg("-l").arg(&p).output()?;
    }
    Ok(())
}

/// Removes a (possibly partial) tree, unmounting first and never crossing
/// onto another filesystem.
fn remove_tree(path: &Path) -> Result<()> {
    unmount_below(path)?;
    Cmd::new("rm")
        .args(["-rf", "--one-file-system"])
        .arg(path)
        .output()?;
    Ok(())
}

/// Entries (of any type, the root excluded) and bytes in regular files, not
/// following symlinks.
pub fn stats(root: &Path) -> Result<(u64, u64)> {
    let mut entries = 0;
    let mut bytes = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let md = e.path().symlink_metadata()?;
            entries += 1;
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                bytes += md.len();
            }
        }
    }
    Ok((entries, bytes))
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_mirror() {
        let text = "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\n\
                    Components: main\n\nTypes: deb\nURIs: http://m.example/sec\nSuites: bookworm-security\n";
        assert_eq!(
            mirror_from_deb822(text).as_deref(),
            Some("http://m.example/debian")
        );
    }

    #[test]
    fn list_mirror() {
        let text = "# c\ndeb-src http://x/ bookworm main\ndeb [arch=amd64 signed-by=/k] http://m.example/d bookworm main\n";
        assert_eq!(
            mirror_from_list(text).as_deref(),
            Some("http://m.example/d")
        );
    }

    #[test]
    fn key_is_stable() {
        assert_eq!(key(), key());
        assert!(key().starts_with("bookworm-"));
    }
}
