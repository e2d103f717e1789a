//! `cargo xtask bench`: understudy against GNU tar + lzop on the corpus.
//!
//! One run measures, each as the median of N wall-clock runs:
//! * capture: `understudy archive create` vs `tar -cpf - . | lzop -3`, with
//!   plain `tar -cpf` (no compression) as the limit, plus the archive sizes;
//! * extract onto a freshly made ext4 filesystem, `sync` included:
//!   `understudy archive extract` vs `lzop -dc | tar -xpf -`, with plain
//!   `tar -xpf` of the uncompressed tar as the limit.
//!
//! Results go to stdout as a table and to `target/bench/archive.json`. When the
//! recovery image is built, the boot (`--boot`, below) and the restore in a VM
//! (`--restore`, `bench/restore.rs`) follow.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::corpus;
use crate::run::{Cmd, is_root, require};
use crate::target_dir;

mod restore;

/// Targets the project holds itself to (ours / theirs).
const CAPTURE_TIME_TARGET: f64 = 0.60;
const CAPTURE_SIZE_TARGET: f64 = 1.02;
const EXTRACT_TIME_TARGET: f64 = 0.50;

struct Opts {
    runs: usize,
    quick: bool,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut runs = None;
    let mut quick = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => {
                let v = it.next().context("--runs needs a number")?;
                runs = Some(v.parse().with_context(|| format!("bad --runs `{v}`"))?);
            }
            s if s.starts_with("--runs=") => {
                let v = &s["--runs=".len()..];
                runs = Some(v.parse().with_context(|| format!("bad --runs `{v}`"))?);
            }
            "--quick" => quick = true,
            other => bail!(
                "bench: unknown argument `{other}` (usage: bench [--runs N] [--quick] | bench --boot | bench --restore [--runs N])"
            ),
        }
    }
    let runs = runs.unwrap_or(if quick { 1 } else { 3 });
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    Ok(Opts { runs, quick })
}

/// Timings of one contender on one operation.
#[derive(Serialize, Default, Clone)]
struct Timing {
    /// Every run, in seconds, in the order they ran.
    runs_s: Vec<f64>,
    median_s: Option<f64>,
    /// Why this contender has no figures, if it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<String>,
}

impl Timing {
    fn skipped(why: impl Into<String>) -> Self {
        Timing {
            skipped: Some(why.into()),
            ..Timing::default()
        }
    }
    fn push(&mut self, d: Duration) {
        self.runs_s.push(d.as_secs_f64());
        self.median_s = median(&self.runs_s);
    }
}

#[derive(Serialize)]
struct Operation {
    ours: Timing,
    theirs: Timing,
    limit: Timing,
    /// `ours / theirs` of the medians.
    ratio_ours_theirs: Option<f64>,
    ratio_ours_limit: Option<f64>,
    target_ratio: f64,
    met: Option<bool>,
}

impl Operation {
    fn new(ours: Timing, theirs: Timing, limit: Timing, target: f64) -> Self {
        let ratio = |a: &Timing, b: &Timing| Some(a.median_s? / b.median_s?);
        let ratio_ours_theirs = ratio(&ours, &theirs);
        Operation {
            ratio_ours_limit: ratio(&ours, &limit),
            met: ratio_ours_theirs.map(|r| r <= target),
            ratio_ours_theirs,
            ours,
            theirs,
            limit,
            target_ratio: target,
        }
    }
}

#[derive(Serialize)]
struct Sizes {
    ours_bytes: Option<u64>,
    theirs_bytes: Option<u64>,
    /// The uncompressed tar.
    limit_bytes: Option<u64>,
    ratio_ours_theirs: Option<f64>,
    target_ratio: f64,
    met: Option<bool>,
}

#[derive(Serialize)]
struct Report {
    date: String,
    git_commit: String,
    host: Host,
    corpus: CorpusInfo,
    runs: usize,
    quick: bool,
    page_cache_dropped: bool,
    /// Where extraction wrote: a fresh loop-mounted ext4, or a fallback.
    extract_target: String,
    capture: Operation,
    capture_size: Sizes,
    extract: Operation,
    memory: Memory,
    /// All targets that could be measured were met.
    all_met: Option<bool>,
}

/// Peak resident set of our binary, from `/usr/bin/time`.
#[derive(Serialize)]
struct Memory {
    create_peak_kib: Option<u64>,
    extract_peak_kib: Option<u64>,
    target_kib: u64,
    met: Option<bool>,
}

const RSS_TARGET_KIB: u64 = 64 * 1024;

/// Run `cmd` under GNU time and return its maximum resident set size in KiB.
fn peak_rss_kib(dir: &Path, cmd: Cmd) -> Result<u64> {
    let out = dir.join("rss.txt");
    Cmd::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&out)
        .args(cmd.argv())
        .output()?;
    let text = fs::read_to_string(&out)?;
    text.trim()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no peak RSS in {}: {text:?}", out.display()))
}

#[derive(Serialize)]
struct Host {
    cpus: usize,
    kernel: String,
    tar: String,
    lzop: String,
}

#[derive(Serialize)]
struct CorpusInfo {
    path: String,
    entries: u64,
    regular_file_bytes: u64,
}

pub fn main(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "--boot") {
        return boot_main();
    }
    if args.iter().any(|a| a == "--restore") {
        let rest: Vec<String> = args.iter().filter(|a| *a != "--restore").cloned().collect();
        return restore::main(parse(&rest)?.runs);
    }
    let opts = parse(args)?;
    require(&[
        "bash",
        "tar",
        "lzop",
        "mkfs.ext4",
        "mount",
        "umount",
        "sync",
    ])?;
    let corpus = corpus::ensure()?;
    let (entries, bytes) = corpus::stats(&corpus)?;
    eprintln!(
        "bench: corpus {} ({entries} entries, {}), {} run(s) each",
        corpus.display(),
        corpus::human_bytes(bytes),
        opts.runs
    );

    let dir = target_dir().join("bench");
    fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;

    let ours_bin = build_ours();
    let ours_archive = dir.join("ours.tar.lzo");
    let theirs_archive = dir.join("theirs.tar.lzo");
    let limit_archive = dir.join("limit.tar");
    let c = shell_quote(&corpus);

    // --- capture -------------------------------------------------------
    let ours_capture_cmd = ours_bin.as_ref().ok().map(|bin| {
        Cmd::new(bin)
            .args(["archive", "create"])
            .arg(&corpus)
            .arg(&ours_archive)
    });
    let theirs_capture_cmd = Cmd::bash(&format!(
        "tar -C {c} -cpf - . | lzop -3 > {}",
        shell_quote(&theirs_archive)
    ));
    let limit_capture_cmd = Cmd::new("tar")
        .arg("-C")
        .arg(&corpus)
        .arg("-cpf")
        .arg(&limit_archive)
        .arg(".");

    let mut ours_cap = match &ours_bin {
        Ok(_) => Timing::default(),
        Err(e) => Timing::skipped(e.clone()),
    };
    let mut theirs_cap = Timing::default();
    let mut limit_cap = if opts.quick {
        Timing::skipped("--quick")
    } else {
        Timing::default()
    };
    let mut dropped = true;
    for run in 1..=opts.runs {
        eprintln!("bench: capture run {run}/{}", opts.runs);
        if ours_cap.skipped.is_none()
            && let Some(cmd) = &ours_capture_cmd
        {
            remove_archive(&ours_archive);
            dropped &= drop_caches();
            match cmd.timed() {
                Ok(d) => ours_cap.push(d),
                Err(e) => {
                    eprintln!("bench: ours skipped from here on: {e:#}");
                    ours_cap = Timing::skipped(format!("{e:#}"));
                }
            }
        }
        remove_archive(&theirs_archive);
        dropped &= drop_caches();
        theirs_cap.push(theirs_capture_cmd.timed()?);
        if limit_cap.skipped.is_none() {
            remove_archive(&limit_archive);
            dropped &= drop_caches();
            limit_cap.push(limit_capture_cmd.timed()?);
        }
    }
    let size = |p: &Path, t: &Timing| {
        if t.skipped.is_some() {
            None
        } else {
            fs::metadata(p).ok().map(|m| m.len())
        }
    };
    let ours_size = size(&ours_archive, &ours_cap);
    let theirs_size = size(&theirs_archive, &theirs_cap);
    let limit_size = size(&limit_archive, &limit_cap);
    let size_ratio = match (ours_size, theirs_size) {
        (Some(o), Some(t)) if t > 0 => Some(o as f64 / t as f64),
        _ => None,
    };
    let capture_size = Sizes {
        ours_bytes: ours_size,
        theirs_bytes: theirs_size,
        limit_bytes: limit_size,
        ratio_ours_theirs: size_ratio,
        target_ratio: CAPTURE_SIZE_TARGET,
        met: size_ratio.map(|r| r <= CAPTURE_SIZE_TARGET),
    };
    let capture = Operation::new(ours_cap, theirs_cap, limit_cap, CAPTURE_TIME_TARGET);

    // --- extract -------------------------------------------------------
    let fs_bytes = bytes * 2 + (512 << 20);
    let (target_kind, use_loop) = match probe_loop(&dir) {
        Ok(()) => (
            "fresh ext4 on a loop-mounted sparse image".to_string(),
            true,
        ),
        Err(e) => {
            let why = format!(
                "plain directory on the host filesystem (loop mount of ext4 failed: {e:#})"
            );
            eprintln!("bench: extract target: {why}");
            (why, false)
        }
    };
    let mut ours_ex = match &capture.ours.skipped {
        None => Timing::default(),
        Some(why) => Timing::skipped(format!("no archive of ours: {why}")),
    };
    let mut theirs_ex = Timing::default();
    let mut limit_ex = match &capture.limit.skipped {
        None => Timing::default(),
        Some(why) => Timing::skipped(why.clone()),
    };
    for run in 1..=opts.runs {
        eprintln!("bench: extract run {run}/{}", opts.runs);
        if ours_ex.skipped.is_none()
            && let Ok(bin) = &ours_bin
        {
            let t = Target::fresh(&dir, "ours", use_loop, fs_bytes)?;
            let cmd = Cmd::bash(&format!(
                "{} archive extract {} {} && sync",
                shell_quote(bin),
                shell_quote(&ours_archive),
                shell_quote(&t.mnt)
            ));
            dropped &= drop_caches();
            match cmd.timed() {
                Ok(d) => ours_ex.push(d),
                Err(e) => {
                    eprintln!("bench: ours extract skipped from here on: {e:#}");
                    ours_ex = Timing::skipped(format!("{e:#}"));
                }
            }
            t.finish()?;
        }
        {
            let t = Target::fresh(&dir, "theirs", use_loop, fs_bytes)?;
            let cmd = Cmd::bash(&format!(
                "lzop -dc {} | tar -C {} -xpf - && sync",
                shell_quote(&theirs_archive),
                shell_quote(&t.mnt)
            ));
            dropped &= drop_caches();
            theirs_ex.push(cmd.timed()?);
            t.finish()?;
        }
        if limit_ex.skipped.is_none() {
            let t = Target::fresh(&dir, "limit", use_loop, fs_bytes)?;
            let cmd = Cmd::bash(&format!(
                "tar -C {} -xpf {} && sync",
                shell_quote(&t.mnt),
                shell_quote(&limit_archive)
            ));
            dropped &= drop_caches();
            limit_ex.push(cmd.timed()?);
            t.finish()?;
        }
    }
    let extract = Operation::new(ours_ex, theirs_ex, limit_ex, EXTRACT_TIME_TARGET);

    // Peak memory, measured once each outside the timed runs: the archive engine
    // promises a resident set under 64 MiB however large the archive.
    let memory = match &ours_bin {
        Ok(bin) => {
            let rss_dir = dir.join("rss");
            let _ = fs::remove_dir_all(&rss_dir);
            let create = peak_rss_kib(
                &dir,
                Cmd::new(bin)
                    .arg("archive")
                    .arg("create")
                    .arg(&corpus)
                    .arg(dir.join("rss.tar.lzo")),
            );
            let extract = peak_rss_kib(
                &dir,
                Cmd::new(bin)
                    .arg("archive")
                    .arg("extract")
                    .arg(dir.join("rss.tar.lzo"))
                    .arg(&rss_dir),
            );
            remove_archive(&dir.join("rss.tar.lzo"));
            let _ = fs::remove_dir_all(&rss_dir);
            let (create, extract) = (create.ok(), extract.ok());
            Memory {
                met: match (create, extract) {
                    (Some(c), Some(e)) => Some(c.max(e) < RSS_TARGET_KIB),
                    _ => None,
                },
                create_peak_kib: create,
                extract_peak_kib: extract,
                target_kib: RSS_TARGET_KIB,
            }
        }
        Err(_) => Memory {
            create_peak_kib: None,
            extract_peak_kib: None,
            target_kib: RSS_TARGET_KIB,
            met: None,
        },
    };

    let mets = [capture.met, capture_size.met, extract.met, memory.met];
    let all_met = if mets.iter().any(Option::is_none) {
        None
    } else {
        Some(mets.iter().all(|m| *m == Some(true)))
    };
    let report = Report {
        date: Cmd::new("date")
            .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
            .output()
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        git_commit: git_commit(),
        host: Host {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: first_line(Cmd::new("uname").arg("-r")),
            tar: first_line(Cmd::new("tar").arg("--version")),
            lzop: lzop_version(),
        },
        corpus: CorpusInfo {
            path: corpus.display().to_string(),
            entries,
            regular_file_bytes: bytes,
        },
        runs: opts.runs,
        quick: opts.quick,
        page_cache_dropped: dropped,
        extract_target: target_kind,
        capture,
        capture_size,
        extract,
        memory,
        all_met,
    };

    print_table(&report);
    let json_path = dir.join("archive.json");
    fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("\nJSON: {}", json_path.display());
    if target_dir().join("recovery").is_dir() {
        boot_main()?;
        restore::main(opts.runs)?;
    }
    Ok(())
}

/// Builds understudy in release and returns its path, or why ours is skipped.
/// `UNDERSTUDY_BIN` names a binary to use instead (no build).
fn build_ours() -> std::result::Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("UNDERSTUDY_BIN").filter(|b| !b.is_empty()) {
        eprintln!("bench: ours = $UNDERSTUDY_BIN = {}", bin.to_string_lossy());
        return Ok(PathBuf::from(bin));
    }
    eprintln!("bench: cargo build --release -p understudy");
    let built = Cmd::new("cargo")
        .args(["build", "--release", "-p", "understudy"])
        .dir(crate::repo_root())
        .run();
    if let Err(e) = built {
        let why = format!("release build failed: {e:#}");
        eprintln!("bench: ours skipped: {why}");
        return Err(why);
    }
    let bin = crate::release_bin("understudy");
    if !bin.is_file() {
        let why = format!("{} not found after the build", bin.display());
        eprintln!("bench: ours skipped: {why}");
        return Err(why);
    }
    Ok(bin)
}

/// Where one extraction run writes: a fresh ext4 mounted from a sparse
/// image, or (fallback) a fresh empty directory.
struct Target {
    mnt: PathBuf,
    image: Option<PathBuf>,
    mounted: bool,
}

impl Target {
    fn fresh(dir: &Path, name: &str, use_loop: bool, fs_bytes: u64) -> Result<Target> {
        let mnt = dir.join(format!("mnt-{name}"));
        corpus::unmount_below(&mnt)?;
        remove_dir(&mnt)?;
        fs::create_dir_all(&mnt)?;
        if !use_loop {
            return Ok(Target {
                mnt,
                image: None,
                mounted: false,
            });
        }
        let image = dir.join(format!("fs-{name}.img"));
        make_ext4(&image, fs_bytes)?;
        let mut t = Target {
            mnt,
            image: Some(image),
            mounted: false,
        };
        Cmd::new("mount")
            .args(["-o", "loop"])
            .arg(t.image.as_ref().expect("set above"))
            .arg(&t.mnt)
            .output()?;
        t.mounted = true;
        Ok(t)
    }

    /// Unmounts and removes everything; errors here are real errors.
    fn finish(mut self) -> Result<()> {
        self.cleanup()
    }

    fn cleanup(&mut self) -> Result<()> {
        if self.mounted {
            Cmd::new("umount").arg(&self.mnt).output()?;
            self.mounted = false;
        }
        remove_dir(&self.mnt)?;
        if let Some(img) = self.image.take() {
            let _ = fs::remove_file(img);
        }
        Ok(())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Cmd::new("umount").arg("-l").arg(&self.mnt).output();
            self.mounted = false;
        }
        if let Some(img) = self.image.take() {
            let _ = fs::remove_file(img);
        }
    }
}

/// A sparse image with a fully initialised ext4 on it (no lazy inode table
/// init, which would otherwise write in the background while we time).
fn make_ext4(image: &Path, bytes: u64) -> Result<()> {
    let _ = fs::remove_file(image);
    let f = fs::File::create(image)?;
    f.set_len(bytes)?;
    drop(f);
    Cmd::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(image)
        .output()?;
    Ok(())
}

/// Checks once that a loop-mounted ext4 works here.
fn probe_loop(dir: &Path) -> Result<()> {
    if !is_root() {
        bail!("not root");
    }
    let t = Target::fresh(dir, "probe", true, 64 << 20)?;
    fs::write(t.mnt.join("probe"), b"ok")?;
    t.finish()
}

fn remove_dir(p: &Path) -> Result<()> {
    if p.symlink_metadata().is_ok() {
        Cmd::new("rm")
            .args(["-rf", "--one-file-system"])
            .arg(p)
            .output()?;
    }
    Ok(())
}

fn remove_archive(p: &Path) {
    let _ = fs::remove_file(p);
    let mut side = p.as_os_str().to_owned();
    side.push(".json");
    let _ = fs::remove_file(PathBuf::from(side));
}

/// Flushes dirty pages and drops the page cache; false if we may not.
fn drop_caches() -> bool {
    let _ = Cmd::new("sync").output();
    fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.to_string_lossy().replace('\'', r"'\''"))
}

fn git_commit() -> String {
    let rev = Cmd::new("git")
        .args(["rev-parse", "HEAD"])
        .dir(crate::repo_root())
        .output()
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown (no commit)".into());
    let dirty = Cmd::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .dir(crate::repo_root())
        .output()
        .is_ok_and(|s| !s.trim().is_empty());
    if dirty { format!("{rev}-dirty") } else { rev }
}

fn first_line(cmd: Cmd) -> String {
    cmd.output()
        .map(|s| s.lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

fn lzop_version() -> String {
    // lzop prints its banner on stdout with -V; keep the line naming it.
    Cmd::new("lzop")
        .arg("--version")
        .output()
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.trim_start().starts_with("lzop"))
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_default()
}

fn print_table(r: &Report) {
    let secs = |t: &Timing| match t.median_s {
        Some(s) => format!("{s:.2} s"),
        None => "-".into(),
    };
    let ratio = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.2}"));
    let met = |m: Option<bool>| match m {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    };
    let mib = |b: Option<u64>| b.map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0));
    let size_limit_ratio = match (r.capture_size.ours_bytes, r.capture_size.limit_bytes) {
        (Some(o), Some(l)) if l > 0 => Some(o as f64 / l as f64),
        _ => None,
    };

    let header = [
        "operation",
        "ours",
        "theirs",
        "ours/theirs",
        "limit",
        "ours/limit",
        "target",
        "met",
    ];
    let rows: Vec<[String; 8]> = vec![
        [
            "capture (time)".into(),
            secs(&r.capture.ours),
            secs(&r.capture.theirs),
            ratio(r.capture.ratio_ours_theirs),
            secs(&r.capture.limit),
            ratio(r.capture.ratio_ours_limit),
            format!("<= {:.2}", r.capture.target_ratio),
            met(r.capture.met).into(),
        ],
        [
            "capture (size)".into(),
            mib(r.capture_size.ours_bytes),
            mib(r.capture_size.theirs_bytes),
            ratio(r.capture_size.ratio_ours_theirs),
            mib(r.capture_size.limit_bytes),
            ratio(size_limit_ratio),
            format!("<= {:.2}", r.capture_size.target_ratio),
            met(r.capture_size.met).into(),
        ],
        [
            "extract + sync".into(),
            secs(&r.extract.ours),
            secs(&r.extract.theirs),
            ratio(r.extract.ratio_ours_theirs),
            secs(&r.extract.limit),
            ratio(r.extract.ratio_ours_limit),
            format!("<= {:.2}", r.extract.target_ratio),
            met(r.extract.met).into(),
        ],
    ];
    let mut width = header.map(str::len);
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    println!();
    println!(
        "corpus: {} entries, {:.1} MiB in regular files; median of {} run(s); page cache {}",
        r.corpus.entries,
        r.corpus.regular_file_bytes as f64 / 1048576.0,
        r.runs,
        if r.page_cache_dropped {
            "dropped before each run"
        } else {
            "NOT dropped (not permitted)"
        }
    );
    println!("theirs: tar | lzop -3; limit: plain tar, no compression");
    println!("extract target: {}", r.extract_target);
    println!();
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(width)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        println!("{}", parts.join("  "));
    };
    line(&header.map(String::from));
    line(&width.map(|w| "-".repeat(w)));
    for row in &rows {
        line(row);
    }
    for (what, t) in [
        ("capture ours", &r.capture.ours),
        ("capture limit", &r.capture.limit),
        ("extract ours", &r.extract.ours),
        ("extract limit", &r.extract.limit),
    ] {
        if let Some(why) = &t.skipped {
            let first = why.lines().next().unwrap_or("");
            println!("{what} skipped: {first}");
        }
    }
    let mib =
        |k: Option<u64>| k.map_or("-".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    println!(
        "\npeak RSS (ours): create {}, extract {}; target < {} MiB: {}",
        mib(r.memory.create_peak_kib),
        mib(r.memory.extract_peak_kib),
        r.memory.target_kib / 1024,
        met(r.memory.met)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn args() {
        let a = |v: &[&str]| parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(a(&[]).unwrap().runs, 3);
        assert_eq!(a(&["--quick"]).unwrap().runs, 1);
        assert_eq!(a(&["--runs", "5", "--quick"]).unwrap().runs, 5);
        assert_eq!(a(&["--runs=2"]).unwrap().runs, 2);
        assert!(a(&["--runs", "0"]).is_err());
        assert!(a(&["--bogus"]).is_err());
    }
}

// --- boot (`cargo xtask bench --boot`) -------------------------------------------
//
// The recovery image's size, and the time from QEMU start to PID 1's status screen
// (on the harness's vt100 screen) next to the time to a trivial busybox `/init`
// printing a marker on the same kernel with the same two disks: our overhead.
// Median of [`BOOT_RUNS`]; a table on stdout and `target/bench/boot.json`.

/// Boots of each kind; the median counts.
const BOOT_RUNS: usize = 7;
/// The issue's target for our overhead over a trivial `/init`.
const BOOT_OVERHEAD_TARGET_SECS: f64 = 1.0;
/// The status screen's first line: PID 1's plain screen and the console draw it.
const BOOT_STATUS_TITLE: &str = understudy::init::status::HEADING;
/// A line only the recovery console draws (PID 1's plain menu has no restore key).
const BOOT_CONSOLE_LINE: &str = understudy::init::menu::LINE_RECOVERY;
const BOOT_TRIVIAL_MARK: &str = "TRIVIAL-INIT-MARKER";
const BOOT_FLOOR_MARK: &str = "FLOOR-INIT-DISKS-SEEN";
const BOOT_FLOOR_FAILED: &str = "FLOOR-INIT-NO-DISKS";

/// The floor: a busybox `/init` that loads the disks' drivers with `modprobe` and
/// waits for both disks to appear, with nothing of ours. Any recovery image that
/// shows the disks pays this on the same kernel; what the recovery console takes
/// beyond it is what the image's size and our code cost.
fn floor_script() -> String {
    format!(
        "#!/bin/sh\n\
         mkdir -p /proc /sys\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         modprobe virtio_pci && modprobe virtio_blk || echo modprobe failed\n\
         i=0\n\
         while [ ! -e /sys/block/vda ] || [ ! -e /sys/block/vdb ]; do\n\
         \x20 i=$((i+1)); if [ $i -gt 3000 ]; then echo {BOOT_FLOOR_FAILED}; poweroff -f; fi\n\
         \x20 usleep 2000\n\
         done\n\
         echo {BOOT_FLOOR_MARK}\n\
         poweroff -f\n"
    )
}

#[derive(Serialize)]
struct BootReport {
    initrd: String,
    kernel: String,
    accel: String,
    initrd_format: String,
    initrd_compressed_bytes: u64,
    /// The cpio the kernel unpacks (the deferred part, one member of it, still
    /// compressed).
    initrd_uncompressed_bytes: u64,
    /// `/proc/loadavg` before and after: the host is shared, and load shows in
    /// emulated boot times.
    host_load_before: String,
    host_load_after: String,
    runs: usize,
    /// Every run, seconds from QEMU start.
    trivial_secs: Vec<f64>,
    /// The floor ([`floor_script`]): both disks seen by a busybox `/init`.
    floor_secs: Vec<f64>,
    status_screen_secs: Vec<f64>,
    /// Until the recovery console (a child of PID 1) has drawn its first screen.
    console_secs: Vec<f64>,
    /// Until the screen's drivers line says they are all in (PID 1's plain screen
    /// first says "still loading" when the disks came before the last drivers); only
    /// the runs whose screen showed it (the recovery console shows the line only
    /// when the drivers were in before it started).
    drivers_in_secs: Vec<f64>,
    trivial_median_secs: f64,
    floor_median_secs: f64,
    status_screen_median_secs: f64,
    console_median_secs: f64,
    drivers_in_median_secs: f64,
    overhead_secs: f64,
    /// The median of each round's console less its trivial boot: the two boots of a
    /// round are minutes closer than the runs of a median, so this moves less with
    /// the host's load.
    overhead_paired_median_secs: f64,
    /// The console's median less the floor's: ours beyond the disks' drivers.
    over_floor_secs: f64,
    overhead_target_secs: f64,
    overhead_met: bool,
}

fn median_secs(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The host's load averages, as `/proc/loadavg` gives them.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// The recovery image's compression (from its magic number) and its cpio's size.
fn initrd_format_and_size(initrd: &Path) -> Result<(&'static str, u64)> {
    let bytes = fs::read(initrd).with_context(|| format!("reading {}", initrd.display()))?;
    if bytes.starts_with(&understudy::initramfs::lz4::MAGIC.to_le_bytes()) {
        let cpio = understudy::initramfs::lz4::decompress(&bytes[..])
            .with_context(|| format!("decompressing {}", initrd.display()))?;
        return Ok(("lz4", cpio.len() as u64));
    }
    if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let n: u64 = Cmd::bash(r#"zstd -dc -- "$1" | wc -c"#)
            .arg("zstd")
            .arg(initrd)
            .output()
            .context("decompressing the recovery image to measure it")?
            .trim()
            .parse()
            .context("reading wc's byte count")?;
        return Ok(("zstd", n));
    }
    Ok(("uncompressed", bytes.len() as u64))
}

/// `cargo xtask bench --boot`.
pub fn boot_main() -> Result<()> {
    use crate::qemu::{self, DirectBoot, DiskSpec, Firmware, ImageFormat, Machine, MachineSpec};
    use understudy::initramfs::{self as builder, Init, Spec};

    require(&["qemu-system-x86_64", "zstd"])?;
    let recovery = target_dir().join("recovery");
    let initrd = recovery.join("initrd.img");
    if !initrd.is_file() {
        bail!(
            "{} is missing: run `cargo xtask initramfs` first",
            initrd.display()
        );
    }
    let k = crate::kernel::ensure()?;
    let dir = target_dir().join("bench").join("boot");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let compressed = fs::metadata(&initrd)
        .with_context(|| format!("reading the size of {}", initrd.display()))?
        .len();
    let (format, uncompressed) = initrd_format_and_size(&initrd)?;
    let host_load_before = loadavg();

    let vm_dir = target_dir().join("vm");
    let accel = qemu::accel::choose(&k.vmlinuz, &vm_dir);
    let kernel = qemu::pvh::vmlinux_for(&k.vmlinuz, &vm_dir.join("base"))
        .context("extracting vmlinux for a PVH boot")?
        .unwrap_or_else(|| k.vmlinuz.clone());

    let trivial_initrd = dir.join("trivial-initrd.img");
    let mut spec = Spec::new(
        &k.version,
        &k.modules_dir,
        Init::BusyboxScript(format!(
            "#!/bin/sh\necho {BOOT_TRIVIAL_MARK}\npoweroff -f\n"
        )),
        &trivial_initrd,
    )?;
    spec.modules.clear();
    spec.tools.clear();
    spec.files.clear();
    builder::build(&spec).context("building the trivial initrd")?;
    let floor_initrd = dir.join("floor-initrd.img");
    spec.init = Init::BusyboxScript(floor_script());
    spec.modules = vec!["virtio_pci".into(), "virtio_blk".into()];
    spec.output = floor_initrd.clone();
    builder::build(&spec).context("building the floor initrd")?;

    let disks = [
        ("primary", "US-PRIMARY-0001", 64u64),
        ("secondary", "US-SECONDARY-0002", 128),
    ];
    let machine = |label: &str, initrd: &Path| -> Result<MachineSpec> {
        let run_dir = dir.join(label);
        fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        let mut m = MachineSpec::new(label, &run_dir, Firmware::SeaBios, accel);
        m.memory_mib = 512;
        m.no_reboot = true;
        m.deadline = Some(std::time::Instant::now() + Duration::from_secs(180));
        m.direct_boot = Some(DirectBoot {
            kernel: kernel.clone(),
            initrd: Some(initrd.to_path_buf()),
            append: "console=ttyS0 panic=-1 quiet".into(),
        });
        for (id, serial, mib) in disks {
            let image = run_dir.join(format!("{id}.raw"));
            let _ = fs::remove_file(&image);
            qemu::create_blank(&image, mib)?;
            m.disks
                .push(DiskSpec::virtio(id, image, ImageFormat::Raw, serial));
        }
        Ok(m)
    };
    let bound = Duration::from_secs(120);
    let mut trivial = Vec::new();
    let mut floor = Vec::new();
    let mut ours = Vec::new();
    let mut console = Vec::new();
    let mut drivers_in = Vec::new();
    let drivers_line = regex::Regex::new(r"drivers: \d+ loaded")?;
    for run in 0..BOOT_RUNS {
        let mut vm = Machine::start(&machine(&format!("trivial-{run}"), &trivial_initrd)?)?;
        vm.wait_for_text(BOOT_TRIVIAL_MARK, bound)?;
        trivial.push(vm.elapsed().as_secs_f64());
        vm.wait_shutdown(Duration::from_secs(30))?;
        drop(vm);
        let mut vm = Machine::start(&machine(&format!("floor-{run}"), &floor_initrd)?)?;
        let seen = regex::Regex::new(&format!("{BOOT_FLOOR_MARK}|{BOOT_FLOOR_FAILED}"))?;
        vm.wait_for_text(seen, bound)?;
        if vm.screen_text().contains(BOOT_FLOOR_FAILED) {
            bail!(
                "the floor's busybox /init did not see both disks:\n{}",
                vm.console().framed_screen()
            );
        }
        floor.push(vm.elapsed().as_secs_f64());
        vm.wait_shutdown(Duration::from_secs(30))?;
        drop(vm);
        let mut vm = Machine::start(&machine(&format!("recovery-{run}"), &initrd)?)?;
        vm.wait_for_text(BOOT_STATUS_TITLE, bound)?;
        ours.push(vm.elapsed().as_secs_f64());
        vm.wait_for_text("[p] power off", Duration::from_secs(30))?;
        // The first screen already lists the disks (PID 1 draws it once they are
        // found): the time above is to a screen a technician can act on.
        let screen = vm.screen_text();
        for (_, serial, _) in disks {
            if !screen.contains(serial) {
                bail!(
                    "PID 1's first status screen does not list {serial}:\n{}",
                    vm.console().framed_screen()
                );
            }
        }
        vm.wait_for_text(BOOT_CONSOLE_LINE, bound)?;
        console.push(vm.elapsed().as_secs_f64());
        let drivers_at = vm
            .wait_for_text(drivers_line.clone(), Duration::from_secs(15))
            .ok()
            .map(|_| vm.elapsed().as_secs_f64());
        drivers_in.extend(drivers_at);
        vm.send_keys("p")?;
        vm.wait_shutdown(Duration::from_secs(30))?;
        eprintln!(
            "bench: boot run {}: trivial /init {:.2} s, floor {:.2} s, status screen {:.2} s, console {:.2} s, drivers all in {}",
            run + 1,
            trivial[run],
            floor[run],
            ours[run],
            console[run],
            drivers_at.map_or("(not shown)".to_string(), |d| format!("{d:.2} s"))
        );
    }
    let t = median_secs(&trivial);
    let f = median_secs(&floor);
    let o = median_secs(&ours);
    let c = median_secs(&console);
    let d = median_secs(&drivers_in);
    let paired: Vec<f64> = console.iter().zip(&trivial).map(|(c, t)| c - t).collect();
    let paired = median_secs(&paired);
    let report = BootReport {
        initrd: initrd.display().to_string(),
        kernel: kernel.display().to_string(),
        accel: accel.name().to_string(),
        initrd_format: format.to_string(),
        initrd_compressed_bytes: compressed,
        host_load_before,
        host_load_after: loadavg(),
        initrd_uncompressed_bytes: uncompressed,
        runs: BOOT_RUNS,
        trivial_secs: trivial,
        floor_secs: floor,
        floor_median_secs: f,
        over_floor_secs: c - f,
        status_screen_secs: ours,
        console_secs: console,
        drivers_in_secs: drivers_in,
        trivial_median_secs: t,
        status_screen_median_secs: o,
        console_median_secs: c,
        drivers_in_median_secs: d,
        overhead_secs: c - t,
        overhead_paired_median_secs: paired,
        overhead_target_secs: BOOT_OVERHEAD_TARGET_SECS,
        overhead_met: c - t < BOOT_OVERHEAD_TARGET_SECS,
    };
    let mib = |b: u64| b as f64 / 1048576.0;
    println!("\n== boot ({}, median of {BOOT_RUNS}) ==", report.accel);
    println!("{:<50} {:>10}", "what", "value");
    println!(
        "{:<50} {:>7.1} MiB",
        &format!("recovery initrd, compressed ({format})"),
        mib(compressed)
    );
    println!(
        "{:<50} {:>7.1} MiB",
        "recovery initrd, cpio the kernel unpacks",
        mib(uncompressed)
    );
    println!("{:<50} {:>8.2} s", "QEMU start -> trivial /init marker", t);
    println!(
        "{:<50} {:>8.2} s",
        "QEMU start -> busybox /init sees both disks", f
    );
    println!(
        "{:<50} {:>8.2} s",
        "QEMU start -> PID 1 status screen, disks listed", o
    );
    if d.is_nan() {
        println!(
            "{:<50} {:>10}",
            "QEMU start -> same screen, all drivers in", "not shown"
        );
    } else {
        println!(
            "{:<50} {:>8.2} s",
            "QEMU start -> same screen, all drivers in", d
        );
    }
    println!(
        "{:<50} {:>8.2} s",
        "QEMU start -> recovery console's first screen", c
    );
    println!(
        "{:<50} {:>8.2} s  (target < {BOOT_OVERHEAD_TARGET_SECS:.1} s: {})",
        "our overhead (to the recovery console)",
        c - t,
        if report.overhead_met {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "{:<50} {:>8.2} s",
        "  the same, median of each round's difference", paired
    );
    println!(
        "{:<50} {:>8.2} s  (the disks' drivers alone: {:.2} s)",
        "our overhead beyond that floor",
        c - f,
        f - t
    );
    println!(
        "host load average (1, 5, 15 min): {} before, {} after",
        report.host_load_before, report.host_load_after
    );
    let json_path = target_dir().join("bench").join("boot.json");
    fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    println!("JSON: {}", json_path.display());
    Ok(())
}
