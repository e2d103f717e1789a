//! The boot chain's VM scenarios (a child of `vmtest.rs`, listed in its `SCENARIOS`):
//! a secondary disk built by `images.rs` boots through GRUB under SeaBIOS and OVMF,
//! with the real recovery image (`target/recovery/initrd.img`, our PID 1; built by
//! `cargo xtask initramfs` when missing) and the disks' identities recorded on the
//! recovery filesystem. With both disks there, the menu shows its entries on the
//! serial console and "Recovery console" reaches PID 1, whose screen names the
//! primary (healthy) and the secondary by their serial numbers; with the primary
//! removed, GRUB picks the emergency copy or the recovery console by the environment
//! block with no keypress (a torn copy A falling back to B), and PID 1 says the
//! primary is missing. Booting from the primary instead, its own GRUB menu has the
//! "Recovery" entry `grub/40_understudy` prints (as `update-grub` pastes it on a
//! provisioned appliance), and choosing it reaches PID 1 from the secondary.
//!
//! The emergency copy holds the same kernel and a stand-in initrd that prints
//! `EMERGENCY SYSTEM UP` with its command line. Does not own: the harness (`qemu/`),
//! the images (`images.rs`), the configuration (`understudy::boot`), PID 1
//! (`understudy::init`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use understudy::boot::{self, Env, PrimaryDisk};
use understudy::initramfs::{self, Init, Spec};
use understudy::layout::Bytes;

use super::{BOOT, Ctx, Firmware, STEP, Scenario, expect_poweroff, secs};
use crate::images::{self, PrimarySpec, SecondarySpec};
use crate::qemu::{DiskSpec, ImageFormat, Key, Machine};
use crate::target_dir;

pub const MENU_SEABIOS: Scenario = Scenario {
    name: "grub-menu-recovery",
    firmware: Firmware::SeaBios,
    run: menu_and_recovery,
};
pub const MENU_OVMF: Scenario = Scenario {
    name: "grub-menu-recovery-ovmf",
    firmware: Firmware::Ovmf,
    run: menu_and_recovery,
};
pub const FALLBACK_SEABIOS: Scenario = Scenario {
    name: "grub-fallback",
    firmware: Firmware::SeaBios,
    run: fallback,
};
pub const NEXT_ENTRY_SEABIOS: Scenario = Scenario {
    name: "grub-next-entry",
    firmware: Firmware::SeaBios,
    run: next_entry,
};

pub const FALLBACK_OVMF: Scenario = Scenario {
    name: "grub-fallback-ovmf",
    firmware: Firmware::Ovmf,
    run: fallback,
};
pub const PRIMARY_RECOVERY_SEABIOS: Scenario = Scenario {
    name: "grub-primary-recovery-entry",
    firmware: Firmware::SeaBios,
    run: primary_recovery_entry,
};
pub const PRIMARY_RECOVERY_OVMF: Scenario = Scenario {
    name: "grub-primary-recovery-entry-ovmf",
    firmware: Firmware::Ovmf,
    run: primary_recovery_entry,
};

const EMERGENCY_MARK: &str = "EMERGENCY SYSTEM UP";
/// PID 1's status screen's first line and its menu (`init::status`, `init::menu`).
const STATUS_TITLE: &str = understudy::init::status::HEADING;
const STATUS_MENU: &str = understudy::init::menu::LINE;
/// The note PID 1 adds when GRUB booted it in automatic mode.
const AUTO_NOTE: &str = "understudy.mode=auto";

/// The virtio serial numbers the disks get, and so their recorded identities.
pub const PRIMARY_SERIAL: &str = "US-PRIMARY-0001";
pub const SECONDARY_SERIAL: &str = "US-SECONDARY-0002";

/// The primary's own menu entry.
const PRIMARY_TITLE: &str = "Test appliance";
/// What `grub/40_understudy`'s entry says before it loads the kernel.
const SNIPPET_SAYS: &str = "Loading the understudy recovery console from the secondary disk";

/// From QEMU start to GRUB's menu (OVMF under TCG takes a while).
const TO_MENU: Duration = Duration::from_secs(60);

/// A stand-in `/init` that says what it is and with which command line, then powers off.
fn stand_in(mark: &str) -> String {
    format!(
        "#!/bin/sh\nmount -t proc proc /proc\necho \"{mark} cmdline=[$(cat /proc/cmdline)]\"\npoweroff -f\n"
    )
}

/// A busybox-only initrd running `script` (no modules or tools: it only prints).
fn stand_in_initrd(ctx: &Ctx, name: &str, script: String) -> Result<PathBuf> {
    let k = ctx.guest.kernel;
    let out = ctx.dir.join(name);
    let mut spec = Spec::new(
        &k.version,
        &k.modules_dir,
        Init::BusyboxScript(script),
        &out,
    )?;
    spec.modules.clear();
    spec.tools.clear();
    spec.files.clear();
    spec.compression = initramfs::Compression::Zstd { level: 3 };
    initramfs::build(&spec).with_context(|| format!("building the stand-in {name}"))?;
    Ok(out)
}

/// `target/recovery/initrd.img`, built through `cargo xtask initramfs` when missing.
pub fn recovery_initrd() -> Result<PathBuf> {
    let initrd = target_dir().join("recovery/initrd.img");
    if !initrd.is_file() {
        eprintln!(
            "vm: {} is missing; building it (cargo xtask initramfs)",
            initrd.display()
        );
        crate::initramfs::main(&[]).context("building the recovery image")?;
    }
    Ok(initrd)
}

/// The environment state a boot starts from.
#[derive(Clone, Copy, Debug)]
enum EnvCase {
    Ready,
    NotReady,
    /// Copy A's first sector zeroed (a torn write), copy B ready.
    TornAReadyB,
}

/// The disks of a scenario: the primary (when attached) and what it was recorded as.
struct Disks {
    primary: PathBuf,
    primary_bytes: Bytes,
    emergency_initrd: PathBuf,
    recovery_initrd: PathBuf,
}

/// The primary (GPT, ESP, an ext4 root with only GRUB's configuration in it, with the
/// "Recovery" entry: its own system is never booted here) and the initrds, built
/// once per scenario.
fn disks(ctx: &Ctx) -> Result<Disks> {
    let tree = ctx.dir.join("primary-root");
    std::fs::create_dir_all(tree.join("boot"))
        .with_context(|| format!("creating {}", tree.display()))?;
    let primary = ctx.dir.join("primary.raw");
    let primary_bytes = images::build_primary(&PrimarySpec {
        work: ctx.dir.join("work-primary"),
        output: primary.clone(),
        tree,
        root: Bytes(16 << 20),
        title: PRIMARY_TITLE.into(),
        cmdline: "console=ttyS0".into(),
        recovery_entry: Some(images::RECOVERY_UUID.to_string()),
    })?;
    Ok(Disks {
        primary,
        primary_bytes,
        emergency_initrd: stand_in_initrd(ctx, "emergency-initrd.img", stand_in(EMERGENCY_MARK))?,
        recovery_initrd: recovery_initrd()?,
    })
}

/// Builds `secondary-<tag>.raw` in the scenario directory, recording the primary's
/// root filesystem (for GRUB) and both disks' identities (for PID 1).
fn secondary(ctx: &Ctx, tag: &str, case: EnvCase, d: &Disks) -> Result<PathBuf> {
    secondary_with(ctx, tag, case, d, None)
}

/// [`secondary`], with GRUB's one-shot choice block when given.
fn secondary_with(
    ctx: &Ctx,
    tag: &str,
    case: EnvCase,
    d: &Disks,
    next_entry: Option<Vec<u8>>,
) -> Result<PathBuf> {
    let ready = boot::encode(&Env::with_emergency(Some("test-image")))?.to_vec();
    let not_ready = boot::encode(&Env::with_emergency(None))?.to_vec();
    let (a, b) = match case {
        EnvCase::Ready => (ready.clone(), ready),
        EnvCase::NotReady => (not_ready.clone(), not_ready),
        EnvCase::TornAReadyB => {
            let mut torn = ready.clone();
            torn[..512].fill(0);
            (torn, ready)
        }
    };
    // The pure reader agrees with what GRUB is about to be shown.
    let read = boot::read_copies(Some(&a), Some(&b));
    let expect_ready = !matches!(case, EnvCase::NotReady);
    if read.emergency_ready() != expect_ready {
        bail!("boot::read_copies says {read:?} for {case:?}");
    }
    let output = ctx.dir.join(format!("secondary-{tag}.raw"));
    let kernel = ctx.guest.kernel.vmlinuz.clone();
    let mut menu = images::test_boot();
    menu.primary = Some(PrimaryDisk {
        root_fs_uuid: images::PRIMARY_ROOT_UUID.to_string(),
        boot_fs_uuid: images::PRIMARY_ROOT_UUID.to_string(),
        esp_fs_uuid: Some(images::PRIMARY_ESP_VOLUME_ID.to_string()),
    });
    images::build_secondary(&SecondarySpec {
        work: ctx.dir.join(format!("work-{tag}")),
        output: output.clone(),
        boot: menu,
        recovery_kernel: kernel.clone(),
        recovery_initrd: d.recovery_initrd.clone(),
        emergency_kernel: kernel,
        emergency_initrd: d.emergency_initrd.clone(),
        env_a: Some(a),
        env_b: Some(b),
        next_entry,
        recorded: Some(images::recorded_virtio(
            (PRIMARY_SERIAL, d.primary_bytes),
            (SECONDARY_SERIAL, images::secondary_bytes()),
        )),
        images: None,
        emergency_root: None,
    })?;
    Ok(output)
}

/// The secondary boots first; the primary is attached when given, second in the
/// boot order.
fn start(ctx: &Ctx, secondary: &Path, primary: Option<&Path>) -> Result<Machine> {
    start_in_order(ctx, secondary, primary, false)
}

/// Both disks virtio, the primary (when given) first on the bus; the secondary boots
/// first unless `primary_first`.
fn start_in_order(
    ctx: &Ctx,
    secondary: &Path,
    primary: Option<&Path>,
    primary_first: bool,
) -> Result<Machine> {
    let (primary_index, secondary_index) = if primary_first { (1, 2) } else { (2, 1) };
    let mut spec = ctx.spec();
    if let Some(p) = primary {
        let mut disk = DiskSpec::virtio("primary", p, ImageFormat::Raw, PRIMARY_SERIAL);
        // OVMF connects only the disks in the boot order: without this GRUB would
        // not see the other disk under UEFI.
        disk.bootindex = Some(primary_index);
        spec.disks.push(disk);
    }
    let mut disk = DiskSpec::virtio("secondary", secondary, ImageFormat::Raw, SECONDARY_SERIAL);
    disk.bootindex = Some(secondary_index);
    spec.disks.push(disk);
    Machine::start(&spec)
}

/// The line the stand-in printed, from the console log (the screen may have scrolled),
/// once it is whole (it ends with the command line's `]`).
fn marker_line(vm: &Machine, mark: &str) -> Result<String> {
    let until = std::time::Instant::now() + STEP;
    loop {
        let log = vm.console().log_text()?;
        let line = log.lines().rev().find(|l| l.contains(mark));
        match line {
            Some(l) if l.trim_end().ends_with(']') => return Ok(l.to_string()),
            _ if std::time::Instant::now() >= until => {
                bail!("no whole {mark} line in the console log: {line:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn regex(re: &str) -> Result<regex::Regex> {
    Ok(regex::Regex::new(re)?)
}

/// Waits for PID 1's status screen and its menu; fails unless every pattern in
/// `want` is on it and none in `not`. Returns when the screen came.
fn status_screen(vm: &Machine, want: &[String], not: &[&str]) -> Result<Duration> {
    vm.wait_for_text(STATUS_TITLE, BOOT)?;
    let at = vm.elapsed();
    vm.wait_for_text(STATUS_MENU, STEP)?;
    let screen = vm.screen_text();
    for w in want {
        if !regex(w)?.is_match(&screen) {
            bail!(
                "PID 1's screen does not match {w:?}:\n{}",
                vm.console().framed_screen()
            );
        }
    }
    for n in not {
        if screen.contains(n) {
            bail!(
                "PID 1's screen says {n:?}:\n{}",
                vm.console().framed_screen()
            );
        }
    }
    Ok(at)
}

/// A disk's line (name, virtio, size, serial) followed by its role on the next.
fn disk_with_role(serial: &str, role: &str) -> String {
    format!(
        r"(?m)^vd[a-z]\s+virtio\s+.*serial {}\s*\n\s+.*; {}",
        regex::escape(serial),
        regex::escape(role)
    )
}

/// Both disks: the menu's entries on the serial console (the primary's among them);
/// choosing "Recovery console" boots our PID 1 in recovery mode, which shows the
/// primary healthy and the secondary, each by its serial number.
fn menu_and_recovery(ctx: &Ctx) -> Result<Vec<String>> {
    ctx.booted_kernel.set(true);
    let d = disks(ctx)?;
    let image = secondary(ctx, "not-ready", EnvCase::NotReady, &d)?;
    let mut vm = start(ctx, &image, Some(&d.primary))?;
    vm.wait_for_text(boot::TITLE_PRIMARY, TO_MENU)?;
    let menu = vm.elapsed();
    // Stops the countdown, and moves from the default (the primary, last) up to the
    // recovery console.
    vm.send_key(Key::Up)?;
    let screen = vm.screen_text();
    for title in [
        boot::TITLE_EMERGENCY_NOT_READY,
        boot::TITLE_RECOVERY,
        boot::TITLE_PRIMARY,
    ] {
        if !screen.contains(title) {
            bail!(
                "{title:?} is not on the menu:\n{}",
                vm.console().framed_screen()
            );
        }
    }
    if screen.contains(boot::TITLE_RECOVERY_AUTO) {
        bail!(
            "the automatic fallback entry with the primary present:\n{}",
            vm.console().framed_screen()
        );
    }
    if !vm.console().log_text()?.contains("primary present") {
        bail!("GRUB did not find the primary's root filesystem");
    }
    vm.send_key(Key::Enter)?;
    let up = status_screen(
        &vm,
        &[
            disk_with_role(PRIMARY_SERIAL, "PRIMARY"),
            disk_with_role(SECONDARY_SERIAL, "SECONDARY"),
            r"Primary: healthy \(vd[a-z]\)".into(),
            r"Secondary: vd[a-z]".into(),
            r"Recorded disks: read from /dev/vd[a-z]3".into(),
        ],
        &[AUTO_NOTE],
    )?;
    vm.send_keys("p")?;
    let off = expect_poweroff(&mut vm)?;
    Ok(vec![
        format!(
            "GRUB menu with its 3 entries (primary present) {} after QEMU start",
            secs(menu)
        ),
        format!(
            "PID 1 status screen {} after QEMU start: primary {PRIMARY_SERIAL} healthy, secondary {SECONDARY_SERIAL}",
            secs(up)
        ),
        format!("`p`: {off}"),
    ])
}

/// The primary not attached, no keypress: the emergency copy when ready (also when
/// copy A is torn and B ready), the recovery console in automatic mode when not,
/// where PID 1 shows the primary missing.
fn fallback(ctx: &Ctx) -> Result<Vec<String>> {
    ctx.booted_kernel.set(true);
    let d = disks(ctx)?;
    let mut notes = Vec::new();
    for (tag, case) in [
        ("ready", EnvCase::Ready),
        ("not-ready", EnvCase::NotReady),
        ("torn-a", EnvCase::TornAReadyB),
    ] {
        let image = secondary(ctx, tag, case, &d)?;
        let mut vm = start(ctx, &image, None)?;
        vm.wait_for_text("understudy: emergency_ready=", TO_MENU)?;
        let menu = vm.elapsed();
        let log = vm.console().log_text()?;
        let env_copy = if matches!(case, EnvCase::TornAReadyB) {
            "env copy b"
        } else {
            "env copy a"
        };
        let said = format!("({env_copy}), primary absent");
        let what = match case {
            EnvCase::NotReady => {
                let up = status_screen(
                    &vm,
                    &[
                        disk_with_role(SECONDARY_SERIAL, "SECONDARY"),
                        "Primary: MISSING".into(),
                        regex::escape(AUTO_NOTE),
                    ],
                    &[PRIMARY_SERIAL],
                )?;
                vm.send_keys("p")?;
                expect_poweroff(&mut vm)?;
                format!(
                    "recovery console (auto) at {}, PID 1 shows the primary MISSING",
                    secs(up)
                )
            }
            EnvCase::Ready | EnvCase::TornAReadyB => {
                vm.wait_for_text(EMERGENCY_MARK, BOOT)?;
                let up = vm.elapsed();
                let line = marker_line(&vm, EMERGENCY_MARK)?;
                let want = format!("root=UUID={}", images::EMERGENCY_UUID);
                if !line.contains(&want) {
                    bail!("{tag}: expected {want} in the command line: {line}");
                }
                vm.wait_shutdown(STEP)?;
                format!("{EMERGENCY_MARK:?} at {}", secs(up))
            }
        };
        // Read after the boot: GRUB's line may arrive in pieces.
        let log = if log.contains(&said) {
            log
        } else {
            vm.console().log_text()?
        };
        if !log.contains(&said) {
            bail!("{tag}: GRUB did not say {said:?}");
        }
        drop(vm);
        notes.push(format!(
            "{tag}: GRUB {} after QEMU start, {what}, no keypress ({env_copy})",
            secs(menu)
        ));
    }
    Ok(notes)
}

/// Booting from the primary: its GRUB menu has its own entry and "Recovery" (from
/// `grub/40_understudy`); Down, Enter: GRUB finds the secondary's recovery filesystem
/// by UUID and boots our PID 1 from it in recovery mode, which shows both disks by
/// their roles. The primary holds no kernel or initrd at all, so the screen can only
/// have come from the secondary.
fn primary_recovery_entry(ctx: &Ctx) -> Result<Vec<String>> {
    ctx.booted_kernel.set(true);
    let d = disks(ctx)?;
    let image = secondary(ctx, "not-ready", EnvCase::NotReady, &d)?;
    let mut vm = start_in_order(ctx, &image, Some(&d.primary), true)?;
    vm.wait_for_text(PRIMARY_TITLE, TO_MENU)?;
    vm.wait_for_text("Recovery", STEP)?;
    // Down stops the primary's 2 s countdown and selects the second entry.
    vm.send_key(Key::Down)?;
    let menu = vm.elapsed();
    let screen = vm.screen_text();
    if !screen.contains(PRIMARY_TITLE) {
        bail!(
            "this is not the primary's menu (no {PRIMARY_TITLE:?}):\n{}",
            vm.console().framed_screen()
        );
    }
    if screen.contains(boot::TITLE_RECOVERY) {
        bail!(
            "the secondary's menu came up, not the primary's:\n{}",
            vm.console().framed_screen()
        );
    }
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(SNIPPET_SAYS, BOOT)?;
    let up = status_screen(
        &vm,
        &[
            disk_with_role(PRIMARY_SERIAL, "PRIMARY"),
            disk_with_role(SECONDARY_SERIAL, "SECONDARY"),
            r"Primary: healthy \(vd[a-z]\)".into(),
            r"Recorded disks: read from /dev/vd[a-z]3".into(),
        ],
        &[AUTO_NOTE],
    )?;
    vm.send_keys("p")?;
    let off = expect_poweroff(&mut vm)?;
    Ok(vec![
        format!(
            "primary's GRUB menu ({PRIMARY_TITLE:?}, \"Recovery\") {} after QEMU start",
            secs(menu)
        ),
        format!("\"Recovery\": GRUB said {SNIPPET_SAYS:?}"),
        format!(
            "PID 1 status screen {} after QEMU start: primary {PRIMARY_SERIAL} healthy, secondary {SECONDARY_SERIAL}",
            secs(up)
        ),
        format!("`p`: {off}"),
    ])
}

/// The recovery console's one-shot choice (left when kexec fails): with the primary
/// present, GRUB would boot it; with `next_entry=emergency` it boots the emergency copy
/// once, clears the choice with `save_env`, and boots the primary the next time.
fn next_entry(ctx: &Ctx) -> Result<Vec<String>> {
    ctx.booted_kernel.set(true);
    let d = disks(ctx)?;
    let block = boot::next_entry_emergency()?.to_vec();
    let image = secondary_with(ctx, "next-entry", EnvCase::Ready, &d, Some(block))?;

    let mut vm = start(ctx, &image, Some(&d.primary))?;
    vm.wait_for_text("understudy: emergency_ready=1", TO_MENU)?;
    vm.wait_for_text(EMERGENCY_MARK, BOOT)?;
    let first = vm.elapsed();
    let log = vm.console().log_text()?;
    if !log.contains("primary present") {
        bail!("GRUB did not see the primary, so the choice proves nothing");
    }
    vm.wait_shutdown(STEP)?;
    drop(vm);

    // The same disk again: the choice was used up, GRUB's automatic choice is back.
    let vm = start(ctx, &image, Some(&d.primary))?;
    vm.wait_for_text(PRIMARY_TITLE, TO_MENU)?;
    let second = vm.elapsed();
    // The log file holds both boots: look after the second GRUB's line only.
    let log = vm.console().log_text()?;
    let second_boot = log.rfind("understudy: emergency_ready=").unwrap_or(0);
    if log[second_boot..].contains(EMERGENCY_MARK) {
        bail!("the emergency copy booted a second time: the one-shot choice was not cleared");
    }
    drop(vm);
    Ok(vec![
        format!(
            "next_entry=emergency with the primary present: the emergency copy at {}",
            secs(first)
        ),
        format!(
            "next boot: GRUB went to the primary's menu at {} (the choice was cleared by save_env)",
            secs(second)
        ),
    ])
}
