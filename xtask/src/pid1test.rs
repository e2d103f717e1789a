//! VM scenarios for understudy's PID 1 (`src/init/`): the recovery image built by
//! `cargo xtask initramfs` (`target/recovery/initrd.img`, our static binary as
//! `/init`) booted directly on Debian's kernel with two virtio disks, driven over the
//! serial console as a technician would: the status screen, the shell and back, power
//! off; a deliberate panic caught by the panic hook; and the time to the status
//! screen next to a trivial busybox `/init` on the same kernel (our overhead).
//!
//! A child module of `vmtest.rs` (declared there with `#[path]`), so it uses the
//! runner's context and helpers. It does not build the image: run
//! `cargo xtask initramfs` first (the scenarios say so when it is missing).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};

use super::{BOOT, Ctx, Firmware, STEP, Scenario, expect_poweroff, secs};
use crate::qemu::{DirectBoot, DiskSpec, ImageFormat, Key, Machine, MachineSpec};
use crate::target_dir;

pub const STATUS_SHELL_POWEROFF: Scenario = Scenario {
    name: "pid1-status-shell-poweroff",
    firmware: Firmware::SeaBios,
    run: status_shell_poweroff,
};
pub const PANIC_HOOK: Scenario = Scenario {
    name: "pid1-panic-hook",
    firmware: Firmware::SeaBios,
    run: panic_hook,
};
pub const OVERHEAD: Scenario = Scenario {
    name: "pid1-overhead",
    firmware: Firmware::SeaBios,
    run: overhead,
};

/// PID 1's status heading and menu line, from the code that draws them.
const TITLE: &str = understudy::init::status::HEADING;
const MENU: &str = understudy::init::menu::LINE;
const APPEND: &str = "console=ttyS0 panic=-1 quiet";

/// (id, serial, size in MiB, how the status screen shows the size).
const DISKS: [(&str, &str, u64, &str); 2] = [
    ("primary", "US-PRIMARY-0001", 64, "64.0 MiB"),
    ("secondary", "US-SECONDARY-0002", 128, "128.0 MiB"),
];

fn recovery_initrd() -> Result<PathBuf> {
    let initrd = target_dir().join("recovery/initrd.img");
    if !initrd.is_file() {
        bail!(
            "{} is missing: run `cargo xtask initramfs` first",
            initrd.display()
        );
    }
    Ok(initrd)
}

/// Our recovery image on the scenario's kernel, with the two disks.
fn recovery_spec(ctx: &Ctx, extra_append: &str) -> Result<MachineSpec> {
    let mut spec = ctx.spec();
    ctx.booted_kernel.set(true);
    spec.direct_boot = Some(DirectBoot {
        kernel: ctx.guest.boot_kernel.clone(),
        initrd: Some(recovery_initrd()?),
        append: format!("{APPEND}{extra_append}"),
    });
    for (id, serial, mib, _) in DISKS {
        spec.disks.push(DiskSpec::virtio(
            id,
            ctx.blank(&format!("{id}.raw"), mib)?,
            ImageFormat::Raw,
            serial,
        ));
    }
    Ok(spec)
}

/// Boots to the status screen; returns the machine and when the screen came.
fn boot_to_status(ctx: &Ctx, extra_append: &str) -> Result<(Machine, Duration)> {
    let vm = Machine::start(&recovery_spec(ctx, extra_append)?)?;
    vm.wait_for_text(TITLE, BOOT)?;
    let at = vm.elapsed();
    vm.wait_for_text(MENU, STEP)?;
    Ok((vm, at))
}

fn regex(re: &str) -> Result<regex::Regex> {
    Ok(regex::Regex::new(re)?)
}

/// Status screen with both disks by serial and size, the shell and back, power off.
fn status_shell_poweroff(ctx: &Ctx) -> Result<Vec<String>> {
    let (vm, status_at) = boot_to_status(ctx, "")?;
    let mut vm = vm;
    let screen = vm.screen_text();
    let mut seen = Vec::new();
    for (i, (_, serial, _, size)) in DISKS.iter().enumerate() {
        let name = format!("vd{}", char::from(b'a' + u8::try_from(i)?));
        let line = regex(&format!(
            r"{name}\s+virtio\s+{}\s+serial {}",
            regex::escape(size),
            regex::escape(serial)
        ))?;
        if !line.is_match(&screen) {
            bail!(
                "the status screen does not show {name} {size} {serial}:\n{}",
                vm.console().framed_screen()
            );
        }
        seen.push(format!("{name} {size} {serial}"));
    }
    if !screen.contains("no filesystem labelled US_RECOVERY") {
        bail!(
            "the status screen does not say the recorded identities are absent:\n{}",
            vm.console().framed_screen()
        );
    }
    vm.send_keys("s")?;
    vm.wait_for_text("`exit` comes back to the menu", STEP)?;
    vm.wait_for_text(regex(r"(?m)^/ # ")?, STEP)?;
    vm.send_keys("echo hello-from-shell")?;
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(regex(r"(?m)^hello-from-shell")?, STEP)?;
    // ENV=/etc/profile was read: the real mke2fs wins over busybox's applet.
    vm.send_keys("type mke2fs")?;
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(regex(r"mke2fs is an alias for /usr/s?bin/mke2fs")?, STEP)?;
    vm.clear_screen();
    vm.send_keys("exit")?;
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(MENU, STEP)?;
    vm.wait_for_text(TITLE, STEP)?;
    vm.send_keys("p")?;
    let off = expect_poweroff(&mut vm)?;
    Ok(vec![
        format!("status screen {} after QEMU start", secs(status_at)),
        format!("disks shown: {}", seen.join(", ")),
        "shell: echo ran, mke2fs is the real one, exit came back to the menu".into(),
        format!("`p`: {off}"),
    ])
}

/// `understudy.test_panic=1`: the hook's message, then the menu, which still works.
fn panic_hook(ctx: &Ctx) -> Result<Vec<String>> {
    let mut vm = Machine::start(&recovery_spec(ctx, " understudy.test_panic=1")?)?;
    vm.wait_for_text("understudy: PID 1 panicked", BOOT)?;
    vm.wait_for_text(MENU, STEP)?;
    vm.wait_for_text(
        "PID 1 panicked during start-up: panicked at src/init/mod.rs",
        STEP,
    )?;
    if vm.detect_kernel_panic().is_some() {
        bail!("the kernel panicked: PID 1 died");
    }
    vm.send_keys("p")?;
    let off = expect_poweroff(&mut vm)?;
    Ok(vec![
        "panic message and the menu on the console; no kernel panic".into(),
        format!("`p`: {off}"),
    ])
}

/// The time to our status screen, and to a trivial busybox `/init` printing a
/// marker on the same kernel with the same disks: the difference is our overhead.
fn overhead(ctx: &Ctx) -> Result<Vec<String>> {
    let mut trivial = ctx.direct_boot("echo TRIVIAL-INIT-MARKER\npoweroff -f\n", &[])?;
    trivial.disks = recovery_spec(ctx, "")?.disks;
    let mut vm = Machine::start(&trivial)?;
    vm.wait_for_text("TRIVIAL-INIT-MARKER", BOOT)?;
    let baseline = vm.elapsed();
    expect_poweroff(&mut vm)?;
    drop(vm);
    let (mut vm, ours) = boot_to_status(ctx, "")?;
    vm.send_keys("p")?;
    expect_poweroff(&mut vm)?;
    // One boot of each on a shared machine: a figure to look at, not a measurement
    // (`cargo xtask bench --boot` takes medians), and it can come out negative.
    let over = ours.as_secs_f64() - baseline.as_secs_f64();
    Ok(vec![
        format!(
            "trivial busybox /init marker {} after QEMU start",
            secs(baseline)
        ),
        format!("our status screen {} after QEMU start", secs(ours)),
        format!(
            "our overhead {over:.2} s in this one pair of boots (target under 1 s; medians: cargo xtask bench --boot)"
        ),
    ])
}
