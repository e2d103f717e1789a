//! Which accelerator the VMs of this run use: software emulation (TCG) unless
//! `/dev/kvm` is usable and a short bounded probe boot under KVM finishes.
//! A KVM guest was seen to hang on a host with broken nested virtualisation,
//! so KVM is never trusted untested. The verdict is kept for the process and
//! in a file keyed by the host's boot id and QEMU's version, so later runs on
//! the same booted host skip the probe. It does not run scenarios.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::machine::wait_child;
use crate::run::Cmd;

/// How long the probe boot may take before KVM is judged broken.
const PROBE_LIMIT: Duration = Duration::from_secs(20);

/// Set to `tcg` or `kvm` to skip the probe; `auto` or unset probes.
const ENV: &str = "UNDERSTUDY_VM_ACCEL";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }

    /// QEMU arguments selecting this accelerator and a CPU model for it.
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Accel::Tcg => &["-accel", "tcg"],
            Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
        }
    }
}

static CHOSEN: OnceLock<Accel> = OnceLock::new();

/// The accelerator for this run, probing KVM once by booting `kernel` (a
/// bzImage) with no initramfs: it runs to the root mount, panics, and with
/// `panic=-1` and `-no-reboot` QEMU exits. Probe files go under `work_dir`.
pub fn choose(kernel: &Path, work_dir: &Path) -> Accel {
    *CHOSEN.get_or_init(|| {
        let (accel, why) = decide(kernel, work_dir);
        eprintln!("vm: accelerator {} ({why})", accel.name());
        accel
    })
}

fn decide(kernel: &Path, work_dir: &Path) -> (Accel, String) {
    match std::env::var(ENV).as_deref() {
        Ok("tcg") => return (Accel::Tcg, format!("{ENV}=tcg")),
        Ok("kvm") => return (Accel::Kvm, format!("{ENV}=kvm, not probed")),
        _ => {}
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return (Accel::Tcg, format!("/dev/kvm not usable: {e}"));
    }
    let key = match probe_key() {
        Ok(k) => k,
        Err(e) => return (Accel::Tcg, format!("cannot key the KVM probe: {e:#}")),
    };
    let cache = work_dir.join("kvm-probe.txt");
    if let Some(verdict) = std::fs::read_to_string(&cache)
        .ok()
        .and_then(|text| cached_verdict(&text, &key))
    {
        return (
            if verdict.0 { Accel::Kvm } else { Accel::Tcg },
            format!("KVM probe {}, cached in {}", verdict.1, cache.display()),
        );
    }
    let (works, what) = match probe(kernel, work_dir) {
        Ok(r) => r,
        Err(e) => (false, format!("could not run: {e:#}")),
    };
    // Losing the cache only costs the next run a probe.
    let _ = std::fs::create_dir_all(work_dir);
    let _ = std::fs::write(
        &cache,
        format!("{key}\t{}\t{what}\n", if works { "kvm" } else { "tcg" }),
    );
    (
        if works { Accel::Kvm } else { Accel::Tcg },
        format!("KVM probe {what}"),
    )
}

/// What a verdict is valid for: this boot of the host and this QEMU.
fn probe_key() -> Result<String> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .context("reading the host's boot id")?;
    let version = Cmd::new("qemu-system-x86_64").arg("--version").output()?;
    let version = version.lines().next().unwrap_or("").trim().to_string();
    Ok(format!("{} {version}", boot_id.trim()))
}

/// The cached `(works, what happened)` for `key`, from lines
/// `KEY \t kvm|tcg \t WHAT`.
fn cached_verdict(text: &str, key: &str) -> Option<(bool, String)> {
    text.lines().find_map(|line| {
        let mut f = line.split('\t');
        if f.next()? != key {
            return None;
        }
        let works = f.next()? == "kvm";
        Some((works, f.next().unwrap_or("").to_string()))
    })
}

fn probe(kernel: &Path, work_dir: &Path) -> Result<(bool, String)> {
    std::fs::create_dir_all(work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    let console = work_dir.join("kvm-probe.console.log");
    let qemu_log = work_dir.join("kvm-probe.qemu.log");
    for f in [&console, &qemu_log] {
        let _ = std::fs::remove_file(f);
    }
    let started = Instant::now();
    let mut child = Cmd::new("qemu-system-x86_64")
        .args([
            "-nodefaults",
            "-no-user-config",
            "-machine",
            "pc",
            "-m",
            "256",
        ])
        .args(Accel::Kvm.args())
        .args(["-display", "none", "-nic", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1"])
        .spawn_logged(&qemu_log)?;
    let exited = wait_child(&mut child, PROBE_LIMIT)?;
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        return Ok((
            false,
            format!("hung: no exit within {PROBE_LIMIT:?}, killed"),
        ));
    }
    let text = String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).into_owned();
    if text.contains("Kernel panic") {
        Ok((
            true,
            format!("booted a kernel in {:.1?}", started.elapsed()),
        ))
    } else {
        let why = std::fs::read_to_string(&qemu_log).unwrap_or_default();
        let why = why.lines().last().unwrap_or("no message").to_string();
        Ok((false, format!("failed: {why}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_verdicts_are_per_key() {
        let text = "b1 QEMU 7.2\ttcg\thung\nb2 QEMU 7.2\tkvm\tbooted\n";
        assert_eq!(
            cached_verdict(text, "b1 QEMU 7.2"),
            Some((false, "hung".into()))
        );
        assert_eq!(
            cached_verdict(text, "b2 QEMU 7.2"),
            Some((true, "booted".into()))
        );
        assert_eq!(cached_verdict(text, "b3 QEMU 7.2"), None);
    }
}
