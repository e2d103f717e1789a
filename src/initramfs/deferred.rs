//! The image's deferred part: what the recovery console's first screen does not need
//! (the tools, their libraries, the xfs and device-mapper modules) travels as one
//! zstd-compressed cpio, [`NAME`], inside the image. The kernel copies that one file
//! instead of unpacking thousands, which on a slow machine is most of the time the
//! image adds before `/init` runs; PID 1 unpacks it once the first screen is up.
//!
//! Anything that needs a tool or a module waits for it through [`ensure`] (`Cmd` and
//! PID 1's module loader call it): the first caller unpacks, under a lock on the
//! archive, while the others wait on that lock; the archive is removed once every
//! file is in place, so its absence means "all there". On a system without the
//! archive (the live appliance) [`ensure`] is one failed `open`.
//!
//! Does not own: choosing what is deferred or writing the archive (the builder,
//! `initramfs`), or when PID 1 starts the unpacking (`init`).

use std::fs::{self, File};
use std::io::{BufReader, ErrorKind};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};

use super::cpio::{self, Node};

/// The deferred part's name at the image's root.
pub const NAME: &str = "deferred.cpio.zst";
/// zstd's level for it: its size is what the kernel copies at boot, and unpacking
/// costs the same at any level.
pub const LEVEL: i32 = 19;

/// What one unpacking did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unpacked {
    pub entries: usize,
    pub bytes: u64,
    pub took: Duration,
}

/// Makes sure the deferred part of the running recovery image is unpacked: at once
/// when it is (or when this is not a recovery image), else after unpacking it here
/// or waiting for whoever is. `Some` when this call did the unpacking.
pub fn ensure() -> Result<Option<Unpacked>> {
    let root = Path::new("/");
    ensure_at(&root.join(NAME), root)
}

/// [`ensure`] for the archive `archive`, unpacked below `root`.
pub fn ensure_at(archive: &Path, root: &Path) -> Result<Option<Unpacked>> {
    let file = match File::open(archive) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", archive.display())),
    };
    // Held until it drops, at the end of this call.
    let file = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("locking {}", archive.display()))?;
    // Whoever held the lock before may have finished and removed it.
    if fs::symlink_metadata(archive).is_err() {
        return Ok(None);
    }
    let began = Instant::now();
    let (entries, bytes) = unpack(BufReader::new(&*file), root)
        .with_context(|| format!("unpacking the image's deferred part {}", archive.display()))?;
    fs::remove_file(archive).with_context(|| format!("removing {}", archive.display()))?;
    Ok(Some(Unpacked {
        entries,
        bytes,
        took: began.elapsed(),
    }))
}

/// `name` as a path below the root: relative, without `..`.
fn below_root(name: &str) -> Result<PathBuf> {
    let p = Path::new(name);
    if name.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        bail!("member {name:?} would land outside the root");
    }
    Ok(p.to_path_buf())
}

/// Writes every member of the zstd-compressed cpio `input` below `root`; the number
/// of members and of data bytes. A member that exists already is replaced, so an
/// unpacking cut short is simply done again.
fn unpack(input: impl std::io::Read, root: &Path) -> Result<(usize, u64)> {
    let decoder = zstd::stream::read::Decoder::new(input).context("starting zstd")?;
    let mut reader = cpio::Reader::new(decoder);
    let (mut entries, mut bytes) = (0, 0);
    while let Some(e) = reader.next_entry()? {
        let dest = root.join(below_root(&e.header.name)?);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let mode = fs::Permissions::from_mode(e.header.perm);
        match e.header.node {
            Node::Dir => {
                fs::create_dir_all(&dest)
                    .with_context(|| format!("creating {}", dest.display()))?;
                fs::set_permissions(&dest, mode)
                    .with_context(|| format!("setting the mode of {}", dest.display()))?;
            }
            Node::File => {
                remove_if_there(&dest)?;
                fs::write(&dest, &e.data).with_context(|| format!("writing {}", dest.display()))?;
                fs::set_permissions(&dest, mode)
                    .with_context(|| format!("setting the mode of {}", dest.display()))?;
            }
            Node::Symlink => {
                remove_if_there(&dest)?;
                let target = std::str::from_utf8(&e.data)
                    .with_context(|| format!("the target of {} is not UTF-8", e.header.name))?;
                symlink(target, &dest)
                    .with_context(|| format!("linking {} to {target}", dest.display()))?;
            }
            Node::CharDev { .. } => bail!(
                "{}: a device node, which the deferred part never holds",
                e.header.name
            ),
        }
        entries += 1;
        bytes += e.data.len() as u64;
    }
    // To the end of the zstd frame, whose checksum is checked there.
    std::io::copy(&mut reader.into_inner(), &mut std::io::sink())
        .context("reading the deferred part to its end (checksum)")?;
    Ok((entries, bytes))
}

/// Removes a file or link at `p`, if any (a directory there is an error when the
/// member is written).
fn remove_if_there(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if !m.is_dir() => {
            fs::remove_file(p).with_context(|| format!("replacing {}", p.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::initramfs::cpio::{Header, Writer};

    fn archive(members: &[(&str, Node, u32, &[u8])]) -> Vec<u8> {
        let enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        let mut w = Writer::new(enc);
        for (name, node, perm, data) in members {
            let h = Header {
                name: name.to_string(),
                node: node.clone(),
                perm: *perm,
                mtime: 0,
                size_bytes: data.len() as u32,
            };
            w.append(&h, data).unwrap();
        }
        w.finish().unwrap().0.finish().unwrap()
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("understudy-deferred-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("root/usr/bin")).unwrap();
        dir
    }

    #[test]
    fn it_unpacks_once_and_removes_the_archive() {
        let dir = scratch("once");
        let root = dir.join("root");
        let path = dir.join(NAME);
        // An older copy of a member is replaced.
        fs::write(root.join("usr/bin/tool"), b"old").unwrap();
        fs::write(
            &path,
            archive(&[
                ("usr/bin/tool", Node::File, 0o755, b"#!/bin/sh\n"),
                ("usr/lib/x/libx.so.1", Node::File, 0o644, b"lib"),
                ("usr/bin/alias", Node::Symlink, 0o777, b"tool"),
                ("usr/share/empty", Node::Dir, 0o700, b""),
            ]),
        )
        .unwrap();
        let done = ensure_at(&path, &root).unwrap().expect("unpacked");
        assert_eq!((done.entries, done.bytes), (4, 17));
        assert_eq!(fs::read(root.join("usr/bin/tool")).unwrap(), b"#!/bin/sh\n");
        let mode = |p: &str| fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("usr/bin/tool"), 0o755);
        assert_eq!(mode("usr/lib/x/libx.so.1"), 0o644);
        assert_eq!(mode("usr/share/empty"), 0o700);
        assert_eq!(
            fs::read_link(root.join("usr/bin/alias")).unwrap(),
            Path::new("tool")
        );
        assert!(
            !path.exists(),
            "the archive is removed once all is in place"
        );
        // Done already: nothing to do, nothing changed.
        assert_eq!(ensure_at(&path, &root).unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn callers_at_once_unpack_it_once_and_all_find_it_done() {
        let dir = scratch("race");
        let root = dir.join("root");
        let path = dir.join(NAME);
        let big = vec![1u8; 1 << 20];
        let members: Vec<(String, Vec<u8>)> = (0..8)
            .map(|i| (format!("usr/lib/l{i}.so"), big.clone()))
            .collect();
        let list: Vec<(&str, Node, u32, &[u8])> = members
            .iter()
            .map(|(n, d)| (n.as_str(), Node::File, 0o644, &d[..]))
            .collect();
        fs::write(&path, archive(&list)).unwrap();
        // Each caller, once it returns, finds every file whole.
        let call = || {
            let r = ensure_at(&path, &root).unwrap();
            let whole = members
                .iter()
                .all(|(n, d)| fs::read(root.join(n)).is_ok_and(|got| got == *d));
            (r, whole)
        };
        let results: Vec<(Option<Unpacked>, bool)> = std::thread::scope(|s| {
            let calls: Vec<_> = (0..4).map(|_| s.spawn(call)).collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|(r, _)| r.is_some()).count(), 1);
        assert!(results.iter().all(|(_, whole)| *whole));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_archive_is_an_error_and_stays_for_the_next_try() {
        let dir = scratch("bad");
        let root = dir.join("root");
        let path = dir.join(NAME);
        fs::write(&path, archive(&[("../escape", Node::File, 0o644, b"x")])).unwrap();
        let err = ensure_at(&path, &root).unwrap_err();
        assert!(format!("{err:#}").contains("outside the root"), "{err:#}");
        assert!(!dir.join("escape").exists());
        assert!(path.exists(), "kept: a later call says the same");
        let mut cut = archive(&[("usr/bin/t", Node::File, 0o755, &[7u8; 4000])]);
        cut.truncate(cut.len() / 2);
        fs::write(&path, cut).unwrap();
        assert!(ensure_at(&path, &root).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_an_archive_there_is_nothing_to_wait_for() {
        let dir = scratch("none");
        assert_eq!(ensure_at(&dir.join(NAME), &dir.join("root")).unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
