//! `cargo xtask demo`: until the bootable demo exists, a real archive round
//! trip on the real corpus tree, checked file by file, with a short summary.
//!
//! Also `cargo xtask compare A B`: the tree comparison on its own.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::corpus::{self, human_bytes};
use crate::run::{Cmd, require};
use crate::{release_bin, repo_root, target_dir};

pub fn main(args: &[String]) -> Result<()> {
    if let Some(a) = args.first() {
        bail!("demo takes no arguments (got `{a}`)");
    }
    let corpus = corpus::ensure()?;
    let (entries, bytes) = corpus::stats(&corpus)?;

    let bin = match std::env::var_os("UNDERSTUDY_BIN").filter(|b| !b.is_empty()) {
        Some(bin) => PathBuf::from(bin),
        None => {
            eprintln!("demo: cargo build --release -p understudy");
            Cmd::new("cargo")
                .args(["build", "--release", "-p", "understudy"])
                .dir(repo_root())
                .run()
                .context("building understudy for the demo")?;
            release_bin("understudy")
        }
    };

    let dir = target_dir().join("demo");
    fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let archive = dir.join("corpus.tar.lzo");
    let out = dir.join("extract");
    let _ = fs::remove_file(&archive);
    let _ = fs::remove_file(dir.join("corpus.tar.lzo.json"));
    corpus::unmount_below(&out)?;
    if out.exists() {
        Cmd::new("rm")
            .args(["-rf", "--one-file-system"])
            .arg(&out)
            .output()?;
    }
    fs::create_dir_all(&out)?;

    let us = |args: &[&str]| Cmd::new(&bin).args(args);
    let timed = |cmd: Cmd| -> Result<Duration> {
        println!("\n$ {cmd}");
        let start = Instant::now();
        cmd.run_interactive()?;
        Ok(start.elapsed())
    };

    println!(
        "demo: corpus {} ({entries} entries, {} in regular files)",
        corpus.display(),
        human_bytes(bytes)
    );
    let t_create = timed(
        us(&["archive", "create"])
            .arg(&corpus)
            .arg(&archive)
            .arg("--progress"),
    )?;
    let t_verify = timed(us(&["archive", "verify"]).arg(&archive))?;

    let list = us(&["archive", "list"]).arg(&archive);
    println!("\n$ {list} | head");
    let listing = list.output()?;
    for line in listing.lines().take(10) {
        println!("{line}");
    }
    let listed = listing.lines().count();
    println!("... ({listed} lines in all)");

    let t_extract = timed(
        us(&["archive", "extract"])
            .arg(&archive)
            .arg(&out)
            .arg("--progress"),
    )?;

    println!(
        "\ndemo: comparing {} with {}",
        corpus.display(),
        out.display()
    );
    let problems = compare(&corpus, &out, &dir)?;

    let size = fs::metadata(&archive)?.len();
    let mibs = |d: Duration| bytes as f64 / 1048576.0 / d.as_secs_f64().max(1e-9);
    println!("\n== demo summary ==");
    println!(
        "tree:     {entries} entries, {} in regular files",
        human_bytes(bytes)
    );
    println!(
        "archive:  {} ({:.1}% of the file bytes), {}",
        human_bytes(size),
        100.0 * size as f64 / bytes.max(1) as f64,
        archive.display()
    );
    println!(
        "create:   {:.2} s ({:.0} MiB/s)",
        t_create.as_secs_f64(),
        mibs(t_create)
    );
    println!("verify:   {:.2} s", t_verify.as_secs_f64());
    println!(
        "extract:  {:.2} s ({:.0} MiB/s)",
        t_extract.as_secs_f64(),
        mibs(t_extract)
    );
    if problems.is_empty() {
        println!("round trip: identical (contents, types, modes, owners, symlinks, devices)");
        Ok(())
    } else {
        println!("round trip: {} difference(s):", problems.len());
        for p in problems.iter().take(30) {
            println!("  {p}");
        }
        bail!("the extracted tree differs from the corpus")
    }
}

/// `cargo xtask compare A B`.
pub fn compare_main(args: &[String]) -> Result<()> {
    let [a, b] = args else {
        bail!("usage: compare DIR_A DIR_B");
    };
    let work = target_dir().join("compare");
    fs::create_dir_all(&work)?;
    let problems = compare(Path::new(a), Path::new(b), &work)?;
    if problems.is_empty() {
        println!("identical (contents, types, modes, owners, symlinks, devices)");
        return Ok(());
    }
    for p in &problems {
        println!("{p}");
    }
    bail!("{} difference(s)", problems.len())
}

/// Differences between trees `a` and `b`, as human-readable lines (empty if
/// the same). `work` receives the full diff and listings.
///
/// Contents: `diff -r --no-dereference`, except that device nodes, fifos and
/// sockets are left out of it (diff would read them: `/dev/zero` forever);
/// they are compared by type and device number instead. Metadata:
/// `find -printf '%p %m %U %G %y %l'` on both sides, sorted and compared.
pub fn compare(a: &Path, b: &Path, work: &Path) -> Result<Vec<String>> {
    require(&["diff", "cmp", "find"])?;
    let mut problems = Vec::new();

    // Special files, by relative path, with their device numbers.
    let specials = special_files(a)?;
    let mut excluded: BTreeSet<String> = BTreeSet::new();
    for rel in specials.keys() {
        if let Some(name) = rel.file_name() {
            excluded.insert(name.to_string_lossy().into_owned());
        }
    }
    for (rel, (kind, rdev)) in &specials {
        match fs::symlink_metadata(b.join(rel)) {
            Ok(md) => {
                let kind_b = special_kind(&md);
                if kind_b != Some(*kind) || md.rdev() != *rdev {
                    problems.push(format!(
                        "{}: {kind} {rdev:#x} became {} {:#x}",
                        rel.display(),
                        kind_b.unwrap_or("not special"),
                        md.rdev()
                    ));
                }
            }
            Err(_) => problems.push(format!("{}: {kind} missing", rel.display())),
        }
    }

    let mut diff = Cmd::new("diff").args(["-r", "--no-dereference"]);
    for name in &excluded {
        diff = diff.arg("--exclude").arg(name);
    }
    let diff = diff.arg(a).arg(b);
    let (code, stdout, stderr) = diff.capture()?;
    fs::write(work.join("diff.txt"), &stdout)?;
    match code {
        Some(0) => {}
        Some(1) => problems.extend(stdout.lines().map(|l| format!("diff: {l}"))),
        _ => bail!("`{diff}` failed ({code:?}): {}", stderr.trim_end()),
    }

    // Regular files that share a name with an excluded special file were
    // skipped by diff too: compare them one by one.
    for rel in regular_files_named(a, &excluded)? {
        let (code, stdout, _) = Cmd::new("cmp")
            .arg(a.join(&rel))
            .arg(b.join(&rel))
            .capture()?;
        if code != Some(0) {
            problems.push(format!("cmp: {}: {}", rel.display(), stdout.trim()));
        }
    }

    // Types, modes, owners and symlink targets.
    let la = listing(a)?;
    let lb = listing(b)?;
    fs::write(work.join("listing-a.txt"), la.join("\n") + "\n")?;
    fs::write(work.join("listing-b.txt"), lb.join("\n") + "\n")?;
    let sa: BTreeSet<&String> = la.iter().collect();
    let sb: BTreeSet<&String> = lb.iter().collect();
    for l in sa.difference(&sb) {
        problems.push(format!("only in {}: {l}", a.display()));
    }
    for l in sb.difference(&sa) {
        problems.push(format!("only in {}: {l}", b.display()));
    }
    Ok(problems)
}

/// `find . -printf '%p %m %U %G %y %l\n' | sort`, run inside `root` so both
/// sides list the same relative paths.
fn listing(root: &Path) -> Result<Vec<String>> {
    let text = Cmd::new("find")
        .args([".", "-printf", "%p %m %U %G %y %l\\n"])
        .dir(root)
        .output()?;
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines.sort();
    Ok(lines)
}

fn special_kind(md: &fs::Metadata) -> Option<&'static str> {
    let t = md.file_type();
    if t.is_char_device() {
        Some("char device")
    } else if t.is_block_device() {
        Some("block device")
    } else if t.is_fifo() {
        Some("fifo")
    } else if t.is_socket() {
        Some("socket")
    } else {
        None
    }
}

fn walk(root: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata)) -> Result<()> {
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for e in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let rel = rel.join(e.file_name());
            let md = e.path().symlink_metadata()?;
            if md.is_dir() {
                stack.push(rel.clone());
            }
            f(&rel, &md);
        }
    }
    Ok(())
}

fn special_files(root: &Path) -> Result<BTreeMap<PathBuf, (&'static str, u64)>> {
    let mut out = BTreeMap::new();
    walk(root, &mut |rel, md| {
        if let Some(kind) = special_kind(md) {
            out.insert(rel.to_path_buf(), (kind, md.rdev()));
        }
    })?;
    Ok(out)
}

fn regular_files_named(root: &Path, names: &BTreeSet<String>) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if names.is_empty() {
        return Ok(out);
    }
    walk(root, &mut |rel, md| {
        if md.is_file()
            && rel
                .file_name()
                .is_some_and(|n| names.contains(n.to_string_lossy().as_ref()))
        {
            out.push(rel.to_path_buf());
        }
    })?;
    Ok(out)
}
