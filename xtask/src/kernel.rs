//! `cargo xtask kernel`: Debian's kernel for the recovery image, the tests and the
//! demo. `linux-image-amd64` (the metapackage) names the versioned package
//! (`linux-image-6.1.0-N-amd64`); both are fetched with `apt-get download` into
//! `target/kernel/PACKAGE_VERSION/` and the versioned one is unpacked with `dpkg -x`.
//! A kernel already there is reused, so only a new Debian kernel downloads again.
//!
//! Does not own: building the initramfs (`initramfs.rs`) or booting (the QEMU harness).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::run::{Cmd, is_root};
use crate::target_dir;

const METAPACKAGE: &str = "linux-image-amd64";

/// An unpacked kernel package.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// `uname -r` (`6.1.0-28-amd64`): the name of its modules directory.
    pub version: String,
    pub vmlinuz: PathBuf,
    /// `…/lib/modules/VERSION`, without depmod's files (the package does not ship them).
    pub modules_dir: PathBuf,
    /// The kernel's `.config` (`/boot/config-VERSION`).
    pub config: PathBuf,
    /// The versioned package and its Debian version.
    pub package: String,
    pub package_version: String,
}

pub fn main(args: &[String]) -> Result<()> {
    if let Some(a) = args.first() {
        bail!("kernel takes no arguments (got `{a}`)");
    }
    let k = ensure()?;
    println!("version:  {}", k.version);
    println!("package:  {} {}", k.package, k.package_version);
    println!("vmlinuz:  {}", k.vmlinuz.display());
    println!("modules:  {}", k.modules_dir.display());
    println!("config:   {}", k.config.display());
    Ok(())
}

/// The versioned image package the metapackage depends on, from
/// `apt-cache show --no-all-versions linux-image-amd64`: (package, version).
pub fn parse_metapackage(show: &str) -> Result<(String, String)> {
    let depends = show
        .lines()
        .find_map(|l| l.strip_prefix("Depends:"))
        .context("no Depends: field in the metapackage's record")?;
    for dep in depends.split(',') {
        // `linux-image-6.1.0-28-amd64 (= 6.1.119-1)`
        let dep = dep.trim();
        let (name, rest) = dep.split_once(' ').unwrap_or((dep, ""));
        if name.starts_with("linux-image-") && name != METAPACKAGE {
            let version = rest
                .trim()
                .strip_prefix("(=")
                .and_then(|v| v.strip_suffix(')'))
                .map(str::trim)
                .with_context(|| format!("{name} has no exact version in `{dep}`"))?;
            return Ok((name.to_string(), version.to_string()));
        }
    }
    bail!(
        "the metapackage depends on no linux-image-* package: `{}`",
        depends.trim()
    )
}

fn cache_root() -> PathBuf {
    target_dir().join("kernel")
}

/// The kernel unpacked in `dir` (a cache entry), if complete.
fn load(dir: &Path) -> Result<Option<Kernel>> {
    let root = dir.join("root");
    let Some((package, package_version)) = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split_once('_'))
        .map(|(p, v)| (p.to_string(), v.to_string()))
    else {
        return Ok(None);
    };
    let modules = root.join("lib/modules");
    let Ok(entries) = fs::read_dir(&modules) else {
        return Ok(None);
    };
    let mut versions: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort();
    let [version] = &versions[..] else {
        bail!(
            "expected one kernel in {}, found {versions:?}",
            modules.display()
        );
    };
    let vmlinuz = root.join(format!("boot/vmlinuz-{version}"));
    if !vmlinuz.is_file() {
        return Ok(None);
    }
    Ok(Some(Kernel {
        version: version.clone(),
        vmlinuz,
        modules_dir: modules.join(version),
        config: root.join(format!("boot/config-{version}")),
        package,
        package_version,
    }))
}

/// The newest kernel already in the cache, for when apt cannot be asked.
fn newest_cached() -> Option<Kernel> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(cache_root())
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    dirs.sort();
    dirs.iter().rev().find_map(|d| load(d).ok().flatten())
}

/// Returns the current Debian kernel, downloading and unpacking it if it is not
/// cached yet.
pub fn ensure() -> Result<Kernel> {
    let show = Cmd::new("apt-cache")
        .args(["show", "--no-all-versions", METAPACKAGE])
        .output();
    let (package, version) = match show.and_then(|s| parse_metapackage(&s)) {
        Ok(pv) => pv,
        Err(e) => {
            if let Some(k) = newest_cached() {
                eprintln!(
                    "kernel: cannot ask apt ({e:#}); using the cached {}",
                    k.version
                );
                return Ok(k);
            }
            return Err(e).context(format!(
                "finding the package {METAPACKAGE} depends on (run `apt-get update` first?)"
            ));
        }
    };
    let dir = cache_root().join(format!("{package}_{version}"));
    if let Some(k) = load(&dir)? {
        return Ok(k);
    }
    fs::create_dir_all(cache_root())
        .with_context(|| format!("creating {}", cache_root().display()))?;
    let tmp = cache_root().join(format!(".download-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = fetch(&tmp, &package, &version).and_then(|()| {
        if dir.exists() {
            fs::remove_dir_all(&dir)
                .with_context(|| format!("removing the incomplete {}", dir.display()))?;
        }
        fs::rename(&tmp, &dir)
            .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))
    });
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    load(&dir)?.with_context(|| {
        format!(
            "{} holds no kernel after unpacking {package}",
            dir.display()
        )
    })
}

/// Downloads both packages into `dir` and unpacks the versioned one into `dir/root`.
fn fetch(dir: &Path, package: &str, version: &str) -> Result<()> {
    eprintln!("kernel: downloading {METAPACKAGE} and {package} {version}");
    let download = Cmd::new("apt-get")
        .args([
            "download",
            "-q",
            METAPACKAGE,
            &format!("{package}={version}"),
        ])
        .dir(dir);
    if let Err(e) = download.output() {
        // A package list older than the mirror names files the mirror no longer has.
        if !is_root() {
            return Err(e).context("apt-get download failed; `apt-get update` as root may help");
        }
        eprintln!("kernel: download failed ({e:#}); running apt-get update and retrying");
        Cmd::new("apt-get").args(["update", "-q"]).output()?;
        download.output()?;
    }
    let deb = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .with_context(|| {
            format!(
                "apt-get download left no {package}_*.deb in {}",
                dir.display()
            )
        })?;
    Cmd::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(dir.join("root"))
        .output()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metapackage_record_names_the_versioned_package() {
        let show = "Package: linux-image-amd64\nSource: linux-signed-amd64 (6.1.119+1)\n\
                    Version: 6.1.119-1\nDepends: linux-image-6.1.0-28-amd64 (= 6.1.119-1)\n\
                    Description: Linux for 64-bit PCs (meta-package)\n";
        assert_eq!(
            parse_metapackage(show).unwrap(),
            (
                "linux-image-6.1.0-28-amd64".to_string(),
                "6.1.119-1".to_string()
            )
        );
        assert!(parse_metapackage("Package: x\n").is_err());
        assert!(parse_metapackage("Depends: linux-base\n").is_err());
    }
}
