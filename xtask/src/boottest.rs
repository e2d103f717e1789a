//! The boot chain's VM scenarios (a child of `vmtest.rs`, listed in its `SCENARIOS`):
//! a secondary disk built by `images.rs` boots through GRUB under SeaBIOS and OVMF;
//! the menu shows its entries on the serial console, the recovery entry boots the
//! recovery kernel and initrd, and with no primary GRUB picks the emergency copy or
//! the recovery console by the environment block, a torn copy A falling back to B.
//!
//! The recovery initrd is a stand-in (a busybox script that prints a marker and its
//! command line) until PID 1 is ready; the emergency copy holds the same kernel and a
//! stand-in that prints `EMERGENCY SYSTEM UP`. Does not own: the harness (`qemu/`),
//! the images (`images.rs`), the configuration (`understudy::boot`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use understudy::boot::{self, Env};
use understudy::initramfs::{self, Init, Spec};

use super::{BOOT, Ctx, Firmware, STEP, Scenario, secs};
use crate::images::{self, SecondarySpec};
use crate::qemu::{DiskSpec, ImageFormat, Key, Machine};

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
pub const FALLBACK_OVMF: Scenario = Scenario {
    name: "grub-fallback-ovmf",
    firmware: Firmware::Ovmf,
    run: fallback,
};

const RECOVERY_MARK: &str = "RECOVERY STAND-IN UP";
const EMERGENCY_MARK: &str = "EMERGENCY SYSTEM UP";

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

/// The environment state a boot starts from.
#[derive(Clone, Copy, Debug)]
enum EnvCase {
    Ready,
    NotReady,
    /// Copy A's first sector zeroed (a torn write), copy B ready.
    TornAReadyB,
}

/// Builds `secondary-<tag>.raw` in the scenario directory.
fn secondary(ctx: &Ctx, tag: &str, case: EnvCase, initrds: &(PathBuf, PathBuf)) -> Result<PathBuf> {
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
    images::build_secondary(&SecondarySpec {
        work: ctx.dir.join(format!("work-{tag}")),
        output: output.clone(),
        boot: images::test_boot(),
        recovery_kernel: kernel.clone(),
        recovery_initrd: initrds.0.clone(),
        emergency_kernel: kernel,
        emergency_initrd: initrds.1.clone(),
        env_a: Some(a),
        env_b: Some(b),
    })?;
    Ok(output)
}

fn initrds(ctx: &Ctx) -> Result<(PathBuf, PathBuf)> {
    Ok((
        stand_in_initrd(ctx, "recovery-initrd.img", stand_in(RECOVERY_MARK))?,
        stand_in_initrd(ctx, "emergency-initrd.img", stand_in(EMERGENCY_MARK))?,
    ))
}

fn start(ctx: &Ctx, image: &Path) -> Result<Machine> {
    let mut spec = ctx.spec();
    let mut disk = DiskSpec::virtio("secondary", image, ImageFormat::Raw, "US-SECOND-02");
    disk.bootindex = Some(1);
    spec.disks.push(disk);
    Machine::start(&spec)
}

/// The line the stand-in printed, from the console log (the screen may have scrolled).
fn marker_line(vm: &Machine, mark: &str) -> Result<String> {
    let log = vm.console().log_text()?;
    log.lines()
        .rev()
        .find(|l| l.contains(mark))
        .map(str::to_string)
        .with_context(|| format!("{mark} not in the console log"))
}

/// (1) and (2): the menu's entries on the serial console; choosing "Recovery console"
/// boots the recovery kernel and initrd in recovery mode.
fn menu_and_recovery(ctx: &Ctx) -> Result<Vec<String>> {
    ctx.booted_kernel.set(true);
    let initrds = initrds(ctx)?;
    let image = secondary(ctx, "not-ready", EnvCase::NotReady, &initrds)?;
    let mut vm = start(ctx, &image)?;
    vm.wait_for_text(boot::TITLE_RECOVERY_AUTO, TO_MENU)?;
    let menu = vm.elapsed();
    // Stops the countdown, then moves from the default (automatic fallback, last) up.
    vm.send_key(Key::Up)?;
    let screen = vm.screen_text();
    for title in [
        boot::TITLE_EMERGENCY_NOT_READY,
        boot::TITLE_RECOVERY,
        boot::TITLE_RECOVERY_AUTO,
    ] {
        if !screen.contains(title) {
            bail!(
                "{title:?} is not on the menu:\n{}",
                vm.console().framed_screen()
            );
        }
    }
    if screen.contains(boot::TITLE_PRIMARY) {
        bail!("a primary entry with no primary recorded");
    }
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(RECOVERY_MARK, BOOT)?;
    let up = vm.elapsed();
    let line = marker_line(&vm, RECOVERY_MARK)?;
    if !line.contains("understudy.mode=recovery") || !line.contains("console=ttyS0") {
        bail!("the recovery kernel got the wrong command line: {line}");
    }
    let down = vm.wait_shutdown(STEP)?;
    Ok(vec![
        format!(
            "GRUB menu with its 3 entries {} after QEMU start",
            secs(menu)
        ),
        format!("recovery stand-in up {} after QEMU start: {line}", secs(up)),
        format!("powered off at {}", secs(down.at)),
    ])
}

/// (3), (4), (5): no primary, no keypress: emergency when ready, recovery console in
/// automatic mode when not, and emergency again when copy A is torn and B is ready.
fn fallback(ctx: &Ctx) -> Result<Vec<String>> {
    ctx.booted_kernel.set(true);
    let initrds = initrds(ctx)?;
    let mut notes = Vec::new();
    for (tag, case, mark, want) in [
        (
            "ready",
            EnvCase::Ready,
            EMERGENCY_MARK,
            format!("root=UUID={}", images::EMERGENCY_UUID),
        ),
        (
            "not-ready",
            EnvCase::NotReady,
            RECOVERY_MARK,
            "understudy.mode=auto".to_string(),
        ),
        (
            "torn-a",
            EnvCase::TornAReadyB,
            EMERGENCY_MARK,
            format!("root=UUID={}", images::EMERGENCY_UUID),
        ),
    ] {
        let image = secondary(ctx, tag, case, &initrds)?;
        let mut vm = start(ctx, &image)?;
        vm.wait_for_text("understudy: emergency_ready=", TO_MENU)?;
        let menu = vm.elapsed();
        vm.wait_for_text(mark, BOOT)?;
        let up = vm.elapsed();
        let line = marker_line(&vm, mark)?;
        if !line.contains(&want) {
            bail!("{tag}: expected {want} in the command line: {line}");
        }
        let log = vm.console().log_text()?;
        let env_copy = if matches!(case, EnvCase::TornAReadyB) {
            "env copy b"
        } else {
            "env copy a"
        };
        if !log.contains(&format!("({env_copy})")) {
            bail!("{tag}: GRUB did not say {env_copy}");
        }
        vm.wait_shutdown(STEP)?;
        drop(vm);
        notes.push(format!(
            "{tag}: GRUB {} after QEMU start, {mark:?} at {} with no keypress ({env_copy})",
            secs(menu),
            secs(up)
        ));
    }
    Ok(notes)
}
