//! `cargo xtask bench --restore`: restore throughput on the Debian appliance image,
//! inside one VM booted from the recovery image (our kernel, our initramfs, its
//! release `/init`), against the standard tools in the same VM.
//!
//! Per run, in the recovery shell, page cache dropped before each timed command:
//! * `understudy restore IMAGE --target /dev/vda --yes` end to end (verify every
//!   archive, partition, LVM, mkfs, extract, remap, GRUB in a chroot, sync), with the
//!   time of each step from its JSON events;
//! * the root archive onto a fresh ext4 on the same disk, `sync` included:
//!   `understudy archive extract` against `lzop -dc | tar -xpf -` (Debian's lzop and
//!   GNU tar with their libraries, brought on a tools disk), in alternating order,
//!   after an untimed extraction (the first one after a restore is slow, whoever's).
//!
//! Medians and the ratio go to stdout and `target/bench/restore.json`. Under TCG
//! (no KVM here) every figure is emulated time: the ratio is the point.
//! Does not own: the image (`appliance.rs`), the harness (`qemu/`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::{loadavg, median_secs};
use crate::appliance;
use crate::qemu::{self, DirectBoot, DiskSpec, Firmware, ImageFormat, Key, Machine, MachineSpec};
use crate::run::{Cmd, require};
use crate::target_dir;

/// The shell script the guest runs: `bench.sh IMAGE_DIR RUNS`. Prints one
/// `RB-...` line per measurement and `RB-DONE` at the end.
const GUEST_SCRIPT: &str = r#"#!/bin/sh
# The restore bench, run from the recovery shell; written by xtask/src/bench/restore.rs.
IMG=$1; RUNS=$2; T=/dev/vda; L=/tools/lib
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
wipe() { lvm vgchange -an >/dev/null 2>&1; dd if=/dev/zero of=$T bs=1M count=16 conv=fsync 2>/dev/null; }
# Busybox's shell runs its own applets before PATH (no aliases in a script): the
# real mke2fs by its path.
# PID 1 loads the filesystem and device-mapper drivers after its first screen.
i=0; until grep -qw ext4 /proc/filesystems && [ -d /sys/module/dm_mod ] || [ $i -ge 120 ]; do i=$((i+1)); sleep 1; done
mkdir -p /t
for r in $(seq 1 "$RUNS"); do
  wipe; drop
  t0=$(now)
  { /init restore "$IMG" --target $T --yes --no-copy-back --progress json 2>/tmp/restore.err; echo "RB-RC $?"; } |
  while IFS= read -r l; do
    case $l in
      *'"event":"phase"'*) echo "RB-PHASE run=$r at=$(since "$t0") $l" ;;
      'RB-RC '*) echo "RB-RESTORE run=$r secs=$(since "$t0") rc=${l#RB-RC }" ;;
    esac
  done
  tail -3 /tmp/restore.err
  if [ $((r % 2)) = 1 ]; then order="ours theirs"; else order="theirs ours"; fi
  # Seen here: whichever extraction comes first after a restore takes two to three
  # times as long as the same one second, whoever it is. An untimed extraction
  # absorbs that, so neither side pays it.
  for who in warmup $order; do
    wipe
    /usr/sbin/mke2fs -q -F -t ext4 -E lazy_itable_init=0,lazy_journal_init=0 $T && mount -t ext4 $T /t || { echo "RB-X who=$who run=$r rc=mkfs"; continue; }
    drop
    t0=$(now)
    if [ "$who" = ours ] || [ "$who" = warmup ]; then
      /init archive extract "$IMG/root.tar.lzo" /t >/dev/null 2>/tmp/x.err; rc=$?
    else
      LD_LIBRARY_PATH=$L /tools/lzop -dc "$IMG/root.tar.lzo" | LD_LIBRARY_PATH=$L /tools/tar -xpf - -C /t 2>/tmp/x.err; rc=$?
    fi
    sync
    secs=$(since "$t0")
    n=$(find /t -xdev | wc -l)
    umount /t
    echo "RB-X who=$who run=$r secs=$secs rc=$rc entries=$n"
    tail -2 /tmp/x.err
  done
done
wipe
echo "RB-DONE"
"#;

/// Every timed figure of one run.
#[derive(Serialize, Default, Clone, Debug)]
struct Run {
    restore_secs: f64,
    /// Seconds from the restore's start to each step's start (from its events).
    steps_started_at: BTreeMap<String, f64>,
    ours_secs: f64,
    theirs_secs: f64,
    ours_entries: u64,
    theirs_entries: u64,
}

#[derive(Serialize)]
struct Report {
    accel: String,
    image: String,
    /// The root archive's compressed and tar bytes (the manifest's).
    root_archive_bytes: u64,
    root_tar_bytes: u64,
    /// Every archive's tar bytes: what a restore writes.
    image_tar_bytes: u64,
    runs: Vec<Run>,
    restore_median_secs: f64,
    restore_extract_step_median_secs: f64,
    ours_median_secs: f64,
    theirs_median_secs: f64,
    /// ours / theirs (below 1: we are faster).
    ratio: f64,
    host_load_before: String,
    host_load_after: String,
}

/// `cargo xtask bench --restore [--runs N]`.
pub fn main(runs: usize) -> Result<()> {
    require(&[
        "qemu-system-x86_64",
        "qemu-img",
        "mke2fs",
        "ldd",
        "lzop",
        "tar",
    ])?;
    let initrd = target_dir().join("recovery/initrd.img");
    if !initrd.is_file() {
        bail!(
            "{} is missing: run `cargo xtask initramfs` first",
            initrd.display()
        );
    }
    let img = appliance::image_disk()?;
    let manifest = understudy::image::manifest::Manifest::load(&img.image)?;
    let root = manifest
        .archives
        .iter()
        .find(|a| a.file == "root.tar.lzo")
        .context("the appliance image has no root.tar.lzo")?;
    let (root_archive_bytes, root_tar_bytes) = (root.summary.length, root.summary.uncompressed);
    let image_tar_bytes: u64 = manifest
        .archives
        .iter()
        .map(|a| a.summary.uncompressed)
        .sum();

    let k = crate::kernel::ensure()?;
    let dir = target_dir().join("bench/restore");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let vm_dir = target_dir().join("vm");
    let accel = qemu::accel::choose(&k.vmlinuz, &vm_dir);
    let kernel = qemu::pvh::vmlinux_for(&k.vmlinuz, &vm_dir.join("base"))
        .context("extracting vmlinux for a PVH boot")?
        .unwrap_or_else(|| k.vmlinuz.clone());
    let tools = tools_disk(&dir)?;
    let target = dir.join("target.raw");
    qemu::create_blank(&target, appliance::DISK_MIB)?;
    let images = dir.join("images.qcow2");
    qemu::create_overlay(&img.disk, &images)?;

    let mut m = MachineSpec::new("bench-restore", &dir, Firmware::SeaBios, accel);
    m.memory_mib = 1024;
    m.cpus = 2;
    m.no_reboot = true;
    let per_run = Duration::from_secs(15 * 60);
    let bound = per_run * u32::try_from(runs).context("too many runs")? + Duration::from_secs(300);
    m.deadline = Some(Instant::now() + bound);
    m.direct_boot = Some(DirectBoot {
        kernel,
        initrd: Some(initrd),
        append: "console=ttyS0 panic=-1 quiet".into(),
    });
    m.disks.push(DiskSpec::virtio(
        "target",
        &target,
        ImageFormat::Raw,
        "US-PRIMARY-0001",
    ));
    m.disks.push(DiskSpec::virtio(
        "images",
        &images,
        ImageFormat::Qcow2,
        "US-IMAGES-0002",
    ));
    m.disks.push(DiskSpec::virtio(
        "tools",
        &tools,
        ImageFormat::Raw,
        "US-TOOLS-0003",
    ));

    let host_load_before = loadavg();
    eprintln!(
        "bench: restore of {} ({} of tar) in a VM ({}), {runs} run(s)",
        manifest.id,
        human(image_tar_bytes),
        accel.name()
    );
    let mut vm = Machine::start(&m)?;
    vm.wait_for_text(understudy::init::status::HEADING, Duration::from_secs(120))?;
    vm.wait_for_text(understudy::init::menu::LINE, Duration::from_secs(60))?;
    vm.send_keys("s")?;
    vm.wait_for_text(regex::Regex::new(r"(?m)^/ # ")?, Duration::from_secs(60))?;
    // vdb: the image disk, vdc: the tools; the script waits for ext4 itself.
    vm.send_keys(&format!(
        "i=0; until grep -qw ext4 /proc/filesystems || [ $i -ge 120 ]; do i=$((i+1)); sleep 1; done; \
         mkdir -p /img /tools && mount -t ext4 -o ro /dev/vdb /img && mount -t ext4 -o ro /dev/vdc /tools \
         && sh /tools/bench.sh /img/images/{} {runs}",
        manifest.id
    ))?;
    vm.send_key(Key::Enter)?;
    let started = Instant::now();
    let mut printed = 0;
    loop {
        let done = vm.wait_for_text("RB-DONE", Duration::from_secs(20)).is_ok();
        let log = vm.console().log_text()?;
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.starts_with("RB-RESTORE ") || l.starts_with("RB-X "))
            .collect();
        for l in lines.iter().skip(printed) {
            eprintln!("bench: {}", l.trim_end());
        }
        printed = lines.len();
        if done {
            break;
        }
        if let Some(panic) = vm.detect_kernel_panic() {
            bail!("the bench VM's kernel panicked: {panic}");
        }
        if started.elapsed() >= bound {
            bail!(
                "the restore bench did not finish within {} s",
                bound.as_secs()
            );
        }
    }
    let log = vm.console().log_text()?;
    vm.send_keys("exit")?;
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(understudy::init::menu::LINE, Duration::from_secs(60))?;
    vm.send_keys("p")?;
    vm.wait_shutdown(Duration::from_secs(60))?;
    drop(vm);
    for f in [&target, &images, &tools] {
        let _ = fs::remove_file(f);
    }

    let runs_seen = parse(&log, runs)?;
    let col = |f: fn(&Run) -> f64| median_secs(&runs_seen.iter().map(f).collect::<Vec<_>>());
    let extract_step = |r: &Run| match (
        r.steps_started_at.get("extract"),
        r.steps_started_at.get("remap"),
    ) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    let ours = col(|r| r.ours_secs);
    let theirs = col(|r| r.theirs_secs);
    let report = Report {
        accel: accel.name().to_string(),
        image: manifest.id.clone(),
        root_archive_bytes,
        root_tar_bytes,
        image_tar_bytes,
        restore_median_secs: col(|r| r.restore_secs),
        restore_extract_step_median_secs: median_secs(
            &runs_seen.iter().map(extract_step).collect::<Vec<_>>(),
        ),
        ours_median_secs: ours,
        theirs_median_secs: theirs,
        ratio: ours / theirs,
        runs: runs_seen,
        host_load_before,
        host_load_after: loadavg(),
    };
    print_report(&report);
    let json = target_dir().join("bench/restore.json");
    fs::write(&json, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    println!("JSON: {}", json.display());
    Ok(())
}

fn print_report(r: &Report) {
    let mbs = |bytes: u64, secs: f64| bytes as f64 / 1e6 / secs;
    println!(
        "\n== restore ({}, one VM, median of {}) ==",
        r.accel,
        r.runs.len()
    );
    println!(
        "image {}: root.tar.lzo {} compressed, {} of tar; all archives {} of tar",
        r.image,
        human(r.root_archive_bytes),
        human(r.root_tar_bytes),
        human(r.image_tar_bytes)
    );
    println!("{:<58} {:>9} {:>10}", "what", "time", "MB/s (tar)");
    println!(
        "{:<58} {:>7.1} s {:>10.1}",
        "understudy restore, end to end (verify ... sync)",
        r.restore_median_secs,
        mbs(r.image_tar_bytes, r.restore_median_secs)
    );
    println!(
        "{:<58} {:>7.1} s {:>10.1}",
        "  of which its extract step (every archive)",
        r.restore_extract_step_median_secs,
        mbs(r.image_tar_bytes, r.restore_extract_step_median_secs)
    );
    println!(
        "{:<58} {:>7.1} s {:>10.1}",
        "root archive -> fresh ext4: understudy archive extract",
        r.ours_median_secs,
        mbs(r.root_tar_bytes, r.ours_median_secs)
    );
    println!(
        "{:<58} {:>7.1} s {:>10.1}",
        "root archive -> fresh ext4: lzop -dc | tar -xpf -",
        r.theirs_median_secs,
        mbs(r.root_tar_bytes, r.theirs_median_secs)
    );
    println!(
        "{:<58} {:>9.2}  ({})",
        "ours / theirs",
        r.ratio,
        if r.ratio < 1.0 {
            "ours faster"
        } else {
            "ours slower"
        }
    );
    for (i, run) in r.runs.iter().enumerate() {
        println!(
            "  run {}: restore {:.1} s, ours {:.1} s ({} entries), theirs {:.1} s ({} entries)",
            i + 1,
            run.restore_secs,
            run.ours_secs,
            run.ours_entries,
            run.theirs_secs,
            run.theirs_entries
        );
    }
    println!(
        "host load average (1, 5, 15 min): {} before, {} after",
        r.host_load_before, r.host_load_after
    );
}

/// The runs' figures from the console log; fails on a failed command or a missing line.
fn parse(log: &str, runs: usize) -> Result<Vec<Run>> {
    let field = |line: &str, key: &str| -> Option<String> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")).map(str::to_string))
    };
    let mut out = vec![Run::default(); runs];
    let run_of = |line: &str| -> Result<usize> {
        let n: usize = field(line, "run")
            .context("no run=")?
            .parse()
            .context("bad run=")?;
        if n == 0 || n > runs {
            bail!("run {n} out of range in `{line}`");
        }
        Ok(n - 1)
    };
    let secs = |line: &str, key: &str| -> Result<f64> {
        field(line, key)
            .with_context(|| format!("no {key}= in `{line}`"))?
            .parse()
            .with_context(|| format!("bad {key}= in `{line}`"))
    };
    for line in log.lines().map(str::trim_end) {
        if let Some(rest) = line.strip_prefix("RB-RESTORE ") {
            let r = run_of(rest)?;
            if field(rest, "rc").as_deref() != Some("0") {
                bail!("understudy restore failed in the VM: `{line}` (see the console log)");
            }
            out[r].restore_secs = secs(rest, "secs")?;
        } else if let Some(rest) = line.strip_prefix("RB-PHASE ") {
            let r = run_of(rest)?;
            let at = secs(rest, "at")?;
            let json = &rest[rest.find('{').context("no event JSON")?..];
            let event: serde_json::Value =
                serde_json::from_str(json).with_context(|| format!("reading `{json}`"))?;
            if let Some(step) = event.get("step").and_then(|s| s.as_str()) {
                out[r].steps_started_at.insert(step.to_string(), at);
            }
        } else if let Some(rest) = line.strip_prefix("RB-X ") {
            let r = run_of(rest)?;
            if field(rest, "rc").as_deref() != Some("0") {
                bail!("an extraction failed in the VM: `{line}` (see the console log)");
            }
            let s = secs(rest, "secs")?;
            let n: u64 = field(rest, "entries")
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("no entries= in `{line}`"))?;
            match field(rest, "who").as_deref() {
                Some("warmup") => {}
                Some("ours") => (out[r].ours_secs, out[r].ours_entries) = (s, n),
                Some("theirs") => (out[r].theirs_secs, out[r].theirs_entries) = (s, n),
                _ => bail!("who? `{line}`"),
            }
        }
    }
    for (i, r) in out.iter().enumerate() {
        if r.restore_secs == 0.0 || r.ours_secs == 0.0 || r.theirs_secs == 0.0 {
            bail!("run {} is incomplete in the console log: {r:?}", i + 1);
        }
        // The same archive, the same tree: both sides must have made it.
        if r.ours_entries != r.theirs_entries {
            bail!(
                "run {}: ours extracted {} entries, lzop | tar {}",
                i + 1,
                r.ours_entries,
                r.theirs_entries
            );
        }
    }
    Ok(out)
}

/// An ext4 image with `bench.sh`, Debian's `lzop` and GNU `tar`, and their shared
/// libraries under `lib/` (the recovery image's loader runs them).
fn tools_disk(dir: &Path) -> Result<PathBuf> {
    let tree = dir.join("tools");
    fs::create_dir_all(tree.join("lib")).with_context(|| format!("creating {}", tree.display()))?;
    for tool in ["lzop", "tar"] {
        let path = which(tool)?;
        fs::copy(&path, tree.join(tool)).with_context(|| format!("copying {}", path.display()))?;
        let ldd = Cmd::new("ldd")
            .arg(&path)
            .output()
            .with_context(|| format!("ldd {}", path.display()))?;
        for lib in ldd
            .lines()
            .filter_map(|l| l.split("=>").nth(1))
            .filter_map(|r| r.split_whitespace().next())
        {
            let lib = Path::new(lib);
            if let Some(name) = lib.file_name() {
                fs::copy(lib, tree.join("lib").join(name))
                    .with_context(|| format!("copying {}", lib.display()))?;
            }
        }
    }
    fs::write(tree.join("bench.sh"), GUEST_SCRIPT).context("writing bench.sh")?;
    let disk = dir.join("tools.raw");
    Cmd::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&tree)
        .arg(&disk)
        .arg("32M")
        .output()
        .context("making the tools disk")?;
    Ok(disk)
}

fn which(tool: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .with_context(|| format!("{tool} is not on PATH"))
}

fn human(bytes: u64) -> String {
    crate::corpus::human_bytes(bytes)
}
