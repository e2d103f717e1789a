//! The shared-library closure of ELF programs, found the way the dynamic loader would
//! without `/etc/ld.so.cache`: each object's `PT_INTERP` and `DT_NEEDED` entries (and
//! its `DT_RUNPATH`/`DT_RPATH`), resolved against the Debian multiarch directories.
//! `ldd` is never run: it executes the program's loader, and would not work for a
//! root other than `/`.
//!
//! Does not own: libraries loaded with `dlopen` (invisible in the ELF; the programs
//! the initramfs carries work without them), nor where files land in the archive.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use goblin::elf::Elf;
use goblin::elf::header::{ELFCLASS64, EM_X86_64};

/// Where glibc's loader looks when there is no cache, in its order, for x86-64 Debian.
pub const SEARCH_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// What an ELF object asks of the dynamic loader.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// `PT_INTERP`: the loader's path (`/lib64/ld-linux-x86-64.so.2`); none when static.
    pub interpreter: Option<String>,
    /// `DT_NEEDED` entries in order (`libc.so.6`).
    pub needed: Vec<String>,
    /// `DT_RUNPATH` then `DT_RPATH` directories, `$ORIGIN` not yet expanded.
    pub search: Vec<String>,
    /// Whether the object is 64-bit x86 (a library of another ABI is never picked).
    pub x86_64: bool,
}

/// Reads an ELF object's dynamic-loading needs from its bytes.
pub fn parse(bytes: &[u8]) -> Result<Needs> {
    let elf = Elf::parse(bytes).context("parsing the ELF file")?;
    let mut search: Vec<String> = Vec::new();
    for list in elf.runpaths.iter().chain(elf.rpaths.iter()) {
        search.extend(
            list.split(':')
                .filter(|d| !d.is_empty())
                .map(str::to_string),
        );
    }
    Ok(Needs {
        interpreter: elf.interpreter.map(str::to_string),
        needed: elf.libraries.iter().map(|l| l.to_string()).collect(),
        search,
        x86_64: elf.header.e_machine == EM_X86_64 && elf.header.e_ident[4] == ELFCLASS64,
    })
}

/// One file of the closure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Library {
    /// The absolute path the loader opens (`/lib/x86_64-linux-gnu/libc.so.6`), as seen
    /// inside the system being described.
    pub path: String,
    /// The host file with its bytes (symlinks resolved), below the root given.
    pub source: PathBuf,
}

/// `path` (absolute, as seen inside the system at `root`) as a host path.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Finds `name` for an object living in `origin_dir`: a name with `/` is a path,
/// otherwise the object's own search path, then [`SEARCH_DIRS`]. Returns the path
/// the loader would open and its bytes, or `None` when nothing fits.
fn find(
    root: &Path,
    name: &str,
    extra: &[String],
    origin_dir: &str,
) -> Result<Option<(String, Vec<u8>)>> {
    let candidates: Vec<String> = if name.contains('/') {
        vec![name.to_string()]
    } else {
        extra
            .iter()
            .map(|d| {
                d.replace("$ORIGIN", origin_dir)
                    .replace("${ORIGIN}", origin_dir)
            })
            .chain(SEARCH_DIRS.iter().map(|d| d.to_string()))
            .map(|d| format!("{}/{name}", d.trim_end_matches('/')))
            .collect()
    };
    for c in candidates {
        let host = under(root, &c);
        if !host.is_file() {
            continue;
        }
        let bytes = fs::read(&host).with_context(|| format!("reading {}", host.display()))?;
        // The loader skips a library of the wrong class or machine and goes on
        // searching; so do we.
        if parse(&bytes).is_ok_and(|n| n.x86_64) {
            return Ok(Some((c, bytes)));
        }
    }
    Ok(None)
}

/// The libraries and loader that `programs` (absolute paths inside `root`) need,
/// transitively, each once, sorted by path. A missing library is an error naming who
/// needs it: the program would not start in the initramfs.
pub fn closure(root: &Path, programs: &[String]) -> Result<Vec<Library>> {
    let mut found: BTreeMap<String, Library> = BTreeMap::new();
    let mut queue: VecDeque<(String, Vec<u8>)> = VecDeque::new();
    for p in programs {
        let host = under(root, p);
        let bytes = fs::read(&host).with_context(|| format!("reading {}", host.display()))?;
        queue.push_back((p.clone(), bytes));
    }
    while let Some((path, bytes)) = queue.pop_front() {
        let needs =
            parse(&bytes).with_context(|| format!("reading the dynamic section of {path}"))?;
        let origin = path.rsplit_once('/').map_or("/", |(d, _)| d).to_string();
        let wanted = needs.interpreter.iter().chain(needs.needed.iter());
        for name in wanted {
            if found
                .values()
                .any(|l| l.path == *name || l.path.ends_with(&format!("/{name}")))
            {
                continue;
            }
            let Some((lib_path, lib_bytes)) = find(root, name, &needs.search, &origin)? else {
                bail!(
                    "{path} needs {name}, which is in none of {} below {}",
                    SEARCH_DIRS.join(", "),
                    root.display()
                );
            };
            let source = fs::canonicalize(under(root, &lib_path))
                .with_context(|| format!("resolving {lib_path} below {}", root.display()))?;
            found.insert(
                lib_path.clone(),
                Library {
                    path: lib_path.clone(),
                    source,
                },
            );
            queue.push_back((lib_path, lib_bytes));
        }
    }
    Ok(found.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mke2fs_needs_ext2fs_and_libc_through_the_x86_64_loader() {
        let bytes = fs::read("/usr/sbin/mke2fs").unwrap();
        let needs = parse(&bytes).unwrap();
        assert_eq!(
            needs.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        for lib in [
            "libext2fs.so.2",
            "libcom_err.so.2",
            "libblkid.so.1",
            "libuuid.so.1",
            "libe2p.so.2",
            "libc.so.6",
        ] {
            assert!(
                needs.needed.iter().any(|n| n == lib),
                "{lib} not in {:?}",
                needs.needed
            );
        }
        assert!(needs.x86_64);
    }

    #[test]
    fn a_static_program_needs_nothing() {
        let needs = parse(&fs::read("/usr/bin/busybox").unwrap()).unwrap();
        assert_eq!(
            needs,
            Needs {
                x86_64: true,
                ..Needs::default()
            }
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse(b"#!/bin/sh\necho hi\n").is_err());
    }

    #[test]
    fn closure_of_mke2fs_is_transitive_and_has_the_loader() {
        let libs = closure(Path::new("/"), &["/usr/sbin/mke2fs".to_string()]).unwrap();
        let paths: Vec<&str> = libs.iter().map(|l| l.path.as_str()).collect();
        assert!(paths.contains(&"/lib64/ld-linux-x86-64.so.2"), "{paths:?}");
        assert!(
            paths.contains(&"/lib/x86_64-linux-gnu/libc.so.6"),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"/lib/x86_64-linux-gnu/libext2fs.so.2"),
            "{paths:?}"
        );
        // Each library once, though every one of them needs libc.
        assert_eq!(
            paths.iter().filter(|p| p.ends_with("/libc.so.6")).count(),
            1
        );
        for l in &libs {
            assert!(l.source.is_absolute() && l.source.is_file(), "{l:?}");
            assert!(
                !fs::symlink_metadata(&l.source)
                    .unwrap()
                    .file_type()
                    .is_symlink()
            );
        }
    }

    #[test]
    fn a_missing_library_names_the_program_and_the_library() {
        // A root holding mke2fs but none of its libraries.
        let root = std::env::temp_dir().join(format!("understudy-libs-{}", std::process::id()));
        fs::create_dir_all(root.join("usr/sbin")).unwrap();
        fs::copy("/usr/sbin/mke2fs", root.join("usr/sbin/mke2fs")).unwrap();
        let err = closure(&root, &["/usr/sbin/mke2fs".to_string()]).unwrap_err();
        let msg = format!("{err:#}");
        fs::remove_dir_all(&root).unwrap();
        assert!(msg.contains("/usr/sbin/mke2fs needs"), "{msg}");
    }
}
