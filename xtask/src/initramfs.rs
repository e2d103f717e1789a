//! `cargo xtask initramfs [--smoke] [--json]`: the recovery image for the demo and
//! the boot tests. Builds the static release binary, then, with the library's
//! `initramfs::build`, `target/recovery/initrd.img` from Debian's kernel (`kernel.rs`)
//! with our binary as `/init`; copies the kernel to `target/recovery/vmlinuz`; prints
//! the size report.
//!
//! `--smoke` also builds `target/recovery/smoke-initrd.img`, whose `/init` is a
//! busybox script, and boots it in QEMU: the script loads the virtio and ext4
//! modules with `insmod` in the order our module index gives, makes and mounts an
//! ext4 filesystem on a virtio disk with the image's own `mke2fs`, runs `lvm`, and
//! powers off. This checks the kernel, the modules and the tools' libraries without
//! our PID 1 (booting that is the QEMU harness's job).
//!
//! Does not own: the builder itself (`src/initramfs/`).

use std::fs;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use understudy::initramfs::{self, Init, Spec, modules};

use crate::kernel::{self, Kernel};
use crate::run::{Cmd, have};
use crate::{release_bin, repo_root, target_dir};

/// The image must stay under this (the issue's target); the build fails above it.
const LIMIT_BYTES: u64 = 32 * 1024 * 1024;

/// What QEMU's virtio-blk PCI function shows in `/sys/bus/pci/devices/*/modalias`.
/// The smoke test checks the guest really shows it, so the matcher's input is real.
const VIRTIO_BLK_MODALIASES: &[&str] = &[
    "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
    "virtio:d00000002v00001AF4",
];

const SMOKE_TIMEOUT_SECS: u32 = 120;

pub fn main(args: &[String]) -> Result<()> {
    let mut smoke = false;
    let mut json = false;
    for a in args {
        match a.as_str() {
            "--smoke" => smoke = true,
            "--json" => json = true,
            other => bail!("initramfs: unknown argument `{other}` (takes --smoke, --json)"),
        }
    }
    let k = kernel::ensure()?;
    let out_dir = target_dir().join("recovery");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    eprintln!("initramfs: building the static release binary");
    Cmd::new("cargo")
        .args(["build", "--release", "--bin", "understudy"])
        .dir(repo_root())
        .run()?;
    let bin = release_bin("understudy");

    let started = Instant::now();
    let mut spec = Spec::new(
        &k.version,
        &k.modules_dir,
        Init::Binary(bin),
        &out_dir.join("initrd.img"),
    )?;
    spec.strip_init = true;
    check_against_depmod(&k, &spec.modules)?;
    let report = initramfs::build(&spec)?;
    let took = started.elapsed();
    fs::copy(&k.vmlinuz, out_dir.join("vmlinuz"))
        .with_context(|| format!("copying {} to {}", k.vmlinuz.display(), out_dir.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
        println!(
            "built in {:.1} s; kernel: {}",
            took.as_secs_f64(),
            out_dir.join("vmlinuz").display()
        );
    }
    // Optional tools (kexec, sgdisk…) may be absent from this machine; a module
    // missing from Debian's own kernel means the list or the index is wrong.
    let missing_modules: Vec<&String> = report
        .missing
        .iter()
        .filter(|m| m.starts_with("module "))
        .collect();
    if !missing_modules.is_empty() {
        bail!(
            "Debian's kernel should have every module the image wants: missing {missing_modules:?}"
        );
    }
    if report.compressed_bytes > LIMIT_BYTES {
        bail!(
            "the image is {} bytes, over the {LIMIT_BYTES}-byte target",
            report.compressed_bytes
        );
    }
    if smoke {
        smoke_boot(&k, &out_dir)?;
    }
    Ok(())
}

/// The package ships no depmod output, so the builder makes its index from the
/// modules' `.modinfo`. When depmod (kmod) is installed, check that index against
/// depmod's own for the image's modules: the same modules, each with the same
/// dependency closure, soft dependencies and aliases.
fn check_against_depmod(k: &Kernel, wanted: &[String]) -> Result<()> {
    if !have("depmod") {
        eprintln!("initramfs: depmod not installed (kmod); module index not cross-checked");
        return Ok(());
    }
    let lib = k
        .modules_dir
        .parent()
        .and_then(Path::parent)
        .context("the modules directory has no lib/ above it")?;
    let work = target_dir().join("recovery/depmod-check");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    // depmod writes into the tree it reads: give it a hard-linked copy.
    Cmd::new("cp").arg("-al").arg(lib).arg(&work).output()?;
    Cmd::new("depmod")
        .arg("-b")
        .arg(&work)
        .arg(&k.version)
        .output()?;
    let theirs = modules::Index::load(&work.join("lib/modules").join(&k.version))?;
    let ours = modules::Index::load(&k.modules_dir)?;
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let set = sorted(ours.load_order(wanted));
    if set != sorted(theirs.load_order(wanted)) {
        bail!("our module index and depmod's disagree on the image's modules");
    }
    let closure = |index: &modules::Index, m: &str| sorted(index.load_order(&[m]));
    let aliases = |index: &modules::Index, m: &str| {
        sorted(
            index
                .aliases
                .iter()
                .filter(|a| a.module == m)
                .map(|a| a.pattern.clone())
                .collect(),
        )
    };
    for m in &set {
        let (o, t) = (&ours.modules[m], &theirs.modules[m]);
        if closure(&ours, m) != closure(&theirs, m)
            || o.softdep_pre != t.softdep_pre
            || o.softdep_post != t.softdep_post
            || aliases(&ours, m) != aliases(&theirs, m)
        {
            bail!("module {m}: our index says {o:?}, depmod's {t:?}");
        }
    }
    fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    eprintln!(
        "initramfs: module index matches depmod's for the image's {} modules",
        set.len()
    );
    Ok(())
}

/// The smoke script's `insmod` lines: the modules for QEMU's virtio disk (found by
/// modalias, as PID 1 will) and for ext4, in dependency order.
fn insmod_lines(k: &Kernel) -> Result<String> {
    let index = modules::Index::load(&k.modules_dir)?;
    let mut order = modules::modules_for_modaliases(VIRTIO_BLK_MODALIASES, &index);
    for m in index.load_order(&["ext4"]) {
        if !order.contains(&m) {
            order.push(m);
        }
    }
    if !order.iter().any(|m| m == "virtio_blk") || !order.iter().any(|m| m == "crc32c_generic") {
        bail!("the module index gave no virtio_blk or crc32c for the smoke test: {order:?}");
    }
    let mut lines = String::new();
    for name in order {
        let path = modules::installed_path(&index.modules[&name].path);
        lines.push_str(&format!(
            "insmod /lib/modules/{}/{path} || echo SMOKE-INSMOD-FAILED {name}\n",
            k.version
        ));
    }
    Ok(lines)
}

fn smoke_script(k: &Kernel) -> Result<String> {
    Ok(format!(
        r#"#!/bin/sh
# busybox's shell runs its own applets before PATH; the image's profile aliases the
# real tools' names (mke2fs) to them.
. /etc/profile
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "SMOKE-BEGIN uptime $(cut -d' ' -f1 /proc/uptime)"
ls /lib/modules/$(uname -r)
{insmod}sleep 1
cat /sys/bus/pci/devices/*/modalias
ls /sys/block
type mke2fs
mke2fs -q -F -t ext4 /dev/vda && echo SMOKE-MKE2FS-OK
mount -t ext4 /dev/vda /mnt && echo hello > /mnt/hello && umount /mnt && echo SMOKE-EXT4-OK
e2fsck -fn /dev/vda >/dev/null && echo SMOKE-E2FSCK-OK
lvm version >/dev/null && echo SMOKE-LVM-OK
echo "SMOKE-END uptime $(cut -d' ' -f1 /proc/uptime)"
poweroff -f
"#,
        insmod = insmod_lines(k)?
    ))
}

fn smoke_boot(k: &Kernel, out_dir: &Path) -> Result<()> {
    let mut spec = Spec::new(
        &k.version,
        &k.modules_dir,
        Init::BusyboxScript(smoke_script(k)?),
        &out_dir.join("smoke-initrd.img"),
    )?;
    // Fast to build; only the boot matters here.
    spec.compression = initramfs::Compression::Zstd { level: 3 };
    let report = initramfs::build(&spec)?;
    eprintln!(
        "initramfs: smoke image {} ({:.2} MiB)",
        report.output.display(),
        report.compressed_bytes as f64 / (1024.0 * 1024.0)
    );
    let disk = out_dir.join("smoke-disk.img");
    let f = fs::File::create(&disk).with_context(|| format!("creating {}", disk.display()))?;
    f.set_len(64 << 20)
        .with_context(|| format!("sizing {}", disk.display()))?;
    let log = out_dir.join("smoke-console.log");
    let _ = fs::remove_file(&log);
    let started = Instant::now();
    let qemu = Cmd::new("timeout")
        .arg(SMOKE_TIMEOUT_SECS.to_string())
        .args([
            "qemu-system-x86_64",
            "-nographic",
            "-no-reboot",
            "-m",
            "512",
            "-kernel",
        ])
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(&report.output)
        .args(["-append", "console=ttyS0 panic=-1", "-drive"])
        .arg(format!("file={},if=virtio,format=raw", disk.display()));
    eprintln!("initramfs: booting: {qemu}");
    let result = qemu.run_logged(&log);
    let wall = started.elapsed();
    let console = fs::read_to_string(&log).unwrap_or_default();
    result.with_context(|| format!("the smoke boot failed; console log: {}", log.display()))?;
    let mut missing: Vec<&str> = [
        "SMOKE-BEGIN",
        "SMOKE-MKE2FS-OK",
        "SMOKE-EXT4-OK",
        "SMOKE-E2FSCK-OK",
        "SMOKE-LVM-OK",
        "SMOKE-END",
    ]
    .into_iter()
    .filter(|m| !console.contains(m))
    .collect();
    if !console.contains(VIRTIO_BLK_MODALIASES[0]) {
        missing.push("the virtio-blk modalias the matcher was given");
    }
    // crc32c_intel needs SSE4.2, which QEMU's emulated CPU lacks: the kernel says
    // ENODEV and crc32c_generic serves instead. Any other failure is a real one.
    let failed: Vec<&str> = console
        .lines()
        .filter_map(|l| l.strip_prefix("SMOKE-INSMOD-FAILED "))
        .map(str::trim)
        .filter(|m| *m != "crc32c_intel")
        .collect();
    if !failed.is_empty() || !missing.is_empty() {
        bail!(
            "smoke boot: missing {missing:?}, modules that failed to load {failed:?}; console log: {}",
            log.display()
        );
    }
    let uptime = |marker: &str| {
        console
            .lines()
            .find_map(|l| {
                l.split_once(&format!("{marker} uptime "))
                    .map(|(_, t)| t.trim().to_string())
            })
            .unwrap_or_default()
    };
    println!(
        "smoke boot ok: /init ran at {} s of guest uptime, all checks done at {} s; QEMU start to power-off {:.1} s wall (log: {})",
        uptime("SMOKE-BEGIN"),
        uptime("SMOKE-END"),
        wall.as_secs_f64(),
        log.display()
    );
    Ok(())
}
