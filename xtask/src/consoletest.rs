//! VM scenarios of the recovery console (`src/console/`, run by PID 1 as a child
//! process), on the real recovery image booted directly on Debian's kernel with a
//! secondary disk built by `images.rs` (recorded identities, environment block,
//! emergency copy):
//!
//! * `console-auto-kexec`: the primary missing, the emergency copy ready, automatic
//!   mode: the countdown is on the screen, a key cancels it (the console stays); on a
//!   second boot, with no key, the console kexecs the emergency copy, whose stand-in
//!   initrd prints its marker with the emergency command line.
//! * `console-unreadable`: the primary present but failing every read (`blkdebug`):
//!   the console says "present but unreadable" with the I/O error.
//! * `console-restore`: the small synthetic image of `restore_engine_test.rs` restored
//!   onto a blank disk through the console's screens, keys typed over the serial line
//!   (a wrong serial refused first), the progress and the result on screen; then
//!   `sgdisk -v` on the restored disk from the shell. The console runs from PID 1's
//!   shell with `--images` (the image disk is a whole-disk ext4, not a secondary).
//!
//! A child module of `vmtest.rs` (a `#[path]` mod line there). Does not own the
//! harness (`qemu/`), the images (`images.rs`), or the console's text: the markers
//! come from `understudy::console::view` and `understudy::init`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use understudy::boot::{self, Env};
use understudy::console::view::{BOOTING_TEXT, COUNTDOWN_TEXT, RESTORE_TITLE};
use understudy::initramfs::{self, Init, Spec};
use understudy::layout::Bytes;

use super::boottest::recovery_initrd;
use super::{BOOT, Ctx, Firmware, STEP, Scenario, expect_poweroff, secs, shell_ready};
use crate::images::{self, SecondarySpec};
use crate::qemu::{DirectBoot, DiskSpec, ImageFormat, Key, Machine};

pub const AUTO_KEXEC: Scenario = Scenario {
    name: "console-auto-kexec",
    firmware: Firmware::SeaBios,
    run: auto_kexec,
};
pub const UNREADABLE: Scenario = Scenario {
    name: "console-unreadable",
    firmware: Firmware::SeaBios,
    run: unreadable,
};
pub const RESTORE: Scenario = Scenario {
    name: "console-restore",
    firmware: Firmware::SeaBios,
    run: restore,
};

const TITLE: &str = understudy::init::status::HEADING;
const MENU: &str = understudy::init::menu::LINE;
const PRIMARY_SERIAL: &str = "US-PRIMARY-0001";
const SECONDARY_SERIAL: &str = "US-SECONDARY-0002";
const PRIMARY_MIB: u64 = 64;
const EMERGENCY_MARK: &str = "EMERGENCY COPY KEXECED";
const APPEND: &str = "console=ttyS0 panic=-1 quiet";

/// A busybox-only initrd that prints `EMERGENCY_MARK` with its command line and
/// powers off: the emergency copy's stand-in.
fn emergency_initrd(ctx: &Ctx) -> Result<PathBuf> {
    let k = ctx.guest.kernel;
    let out = ctx.dir.join("emergency-initrd.img");
    let script = format!(
        "#!/bin/sh\nmount -t proc proc /proc\necho \"{EMERGENCY_MARK} cmdline=[$(cat /proc/cmdline)]\"\npoweroff -f\n"
    );
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
    initramfs::build(&spec).context("building the emergency stand-in initrd")?;
    Ok(out)
}

/// The secondary: emergency copy ready (image `test-image`), both identities
/// recorded, the same kernel with the stand-in initrd as the emergency copy.
fn secondary(ctx: &Ctx) -> Result<PathBuf> {
    let env = boot::encode(&Env::with_emergency(Some("test-image")))?.to_vec();
    let output = ctx.dir.join("secondary.raw");
    let kernel = ctx.guest.kernel.vmlinuz.clone();
    images::build_secondary(&SecondarySpec {
        work: ctx.dir.join("work-secondary"),
        output: output.clone(),
        boot: images::test_boot(),
        recovery_kernel: kernel.clone(),
        recovery_initrd: recovery_initrd()?,
        emergency_kernel: kernel,
        emergency_initrd: emergency_initrd(ctx)?,
        env_a: Some(env.clone()),
        env_b: Some(env),
        next_entry: None,
        recorded: Some(images::recorded_virtio(
            (PRIMARY_SERIAL, Bytes(PRIMARY_MIB << 20)),
            (SECONDARY_SERIAL, images::secondary_bytes()),
        )),
        images: None,
        emergency_root: None,
    })?;
    Ok(output)
}

/// The recovery image on the scenario's kernel with `disks` (in that order).
fn start(ctx: &Ctx, extra_append: &str, disks: Vec<DiskSpec>) -> Result<Machine> {
    let mut spec = ctx.spec();
    ctx.booted_kernel.set(true);
    spec.direct_boot = Some(DirectBoot {
        kernel: ctx.guest.boot_kernel.clone(),
        initrd: Some(recovery_initrd()?),
        append: format!("{APPEND}{extra_append}"),
    });
    spec.disks = disks;
    Machine::start(&spec)
}

fn secondary_disk(image: &Path) -> DiskSpec {
    DiskSpec::virtio("secondary", image, ImageFormat::Raw, SECONDARY_SERIAL)
}

fn regex(re: &str) -> Result<regex::Regex> {
    Ok(regex::Regex::new(re)?)
}

/// The primary missing, the copy ready, automatic mode: a key cancels the countdown;
/// without one, the console kexecs the emergency copy.
fn auto_kexec(ctx: &Ctx) -> Result<Vec<String>> {
    let image = secondary(ctx)?;
    let auto = " understudy.mode=auto";

    // First boot: a key during the countdown keeps the console.
    let mut vm = start(ctx, auto, vec![secondary_disk(&image)])?;
    vm.wait_for_text(COUNTDOWN_TEXT, BOOT)?;
    let countdown_at = vm.elapsed();
    // The screen arrives over 115200 baud: wait for each line rather than look once.
    for want in [
        "Primary: MISSING",
        "Emergency copy: ready, image test-image",
    ] {
        vm.wait_for_text(want, STEP)?;
    }
    vm.send_key(Key::Down)?;
    vm.wait_for_text("automatic boot cancelled", STEP)?;
    vm.wait_for_text(MENU, STEP)?;
    if vm.console().log_text()?.contains(BOOTING_TEXT) {
        bail!("the console started the emergency copy after a key");
    }
    vm.send_keys("p")?;
    let off = expect_poweroff(&mut vm)?;
    drop(vm);

    // Second boot: no key; the countdown runs out and kexec starts the copy.
    let mut vm = start(ctx, auto, vec![secondary_disk(&image)])?;
    vm.wait_for_text(COUNTDOWN_TEXT, BOOT)?;
    let shown = vm.elapsed();
    vm.wait_for_text(BOOTING_TEXT, STEP + STEP)?;
    let kexec_at = vm.elapsed();
    vm.wait_for_text(
        regex(&format!(r"{EMERGENCY_MARK} cmdline=\[[^\]]*\]"))?,
        BOOT,
    )?;
    let up = vm.elapsed();
    let log = vm.console().log_text()?;
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains(EMERGENCY_MARK))
        .unwrap_or_default()
        .to_string();
    let want = format!("root=UUID={}", images::EMERGENCY_UUID);
    if !line.contains(&want) {
        bail!("the kexeced kernel's command line lacks {want}: {line}");
    }
    vm.wait_shutdown(STEP)?;
    Ok(vec![
        format!(
            "countdown on screen {} after QEMU start; a key cancelled it, `p`: {off}",
            secs(countdown_at)
        ),
        format!(
            "no key: countdown at {}, kexec at {}, emergency copy up at {} with {want}",
            secs(shown),
            secs(kexec_at),
            secs(up)
        ),
    ])
}

/// A primary whose reads all fail: present (its identity matches) but unreadable,
/// with the I/O error.
fn unreadable(ctx: &Ctx) -> Result<Vec<String>> {
    let image = secondary(ctx)?;
    let mut primary = DiskSpec::virtio(
        "primary",
        ctx.blank("primary.raw", PRIMARY_MIB)?,
        ImageFormat::Raw,
        PRIMARY_SERIAL,
    );
    primary.read_errors = true;
    let mut vm = start(ctx, "", vec![primary, secondary_disk(&image)])?;
    vm.wait_for_text(TITLE, BOOT)?;
    let at = vm.elapsed();
    vm.wait_for_text(MENU, STEP)?;
    // The line wraps on an 80-column screen: the reason runs to its `)`.
    let want = regex(r"Primary: present but unreadable \(vd[a-z]: I/O error: [^)]+\)")?;
    vm.wait_for_text(want.clone(), STEP)?;
    let screen = vm.screen_text();
    let said = want
        .find(&screen)
        .map(|m| m.as_str().split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    if screen.contains(COUNTDOWN_TEXT) {
        bail!("a countdown with the primary present");
    }
    vm.send_keys("p")?;
    let off = expect_poweroff(&mut vm)?;
    Ok(vec![
        format!("status {} after QEMU start: {said}", secs(at)),
        format!("`p`: {off}"),
    ])
}

/// How long the small restore may take under emulation.
const RESTORE_WAIT: Duration = Duration::from_secs(150);
const TARGET_SERIAL: &str = "US-TARGET-0002";

/// Types `line` at the shell and waits for its exit status; true when 0.
fn shell(vm: &Machine, line: &str, marker: &str) -> Result<bool> {
    vm.clear_screen();
    vm.send_keys(&format!("{line}; echo {marker}=$?"))?;
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(regex(&format!(r"{marker}=\d+"))?, RESTORE_WAIT)?;
    Ok(vm.console().log_text()?.contains(&format!("{marker}=0")))
}

/// A restore through the console's screens, typed as a technician would.
fn restore(ctx: &Ctx) -> Result<Vec<String>> {
    let initrd = ctx.dir.join("initrd.img");
    let mut spec = Spec::new(
        &ctx.guest.kernel.version,
        &ctx.guest.kernel.modules_dir,
        Init::Binary(super::restore_engine_test::dev_bin()?),
        &initrd,
    )?;
    spec.strip_init = true;
    initramfs::build(&spec).context("building the recovery image")?;
    let images = super::restore_engine_test::images_disk(&ctx.dir)?;
    let mut m = ctx.spec();
    ctx.booted_kernel.set(true);
    m.memory_mib = 768;
    m.direct_boot = Some(DirectBoot {
        kernel: ctx.guest.boot_kernel.clone(),
        initrd: Some(initrd),
        append: APPEND.into(),
    });
    m.disks.push(DiskSpec::virtio(
        "images",
        images,
        ImageFormat::Raw,
        "US-IMAGES-0001",
    ));
    m.disks.push(DiskSpec::virtio(
        "target",
        ctx.blank("target.raw", 256)?,
        ImageFormat::Raw,
        TARGET_SERIAL,
    ));
    let mut vm = Machine::start(&m)?;
    vm.wait_for_text(MENU, BOOT)?;
    vm.send_keys("s")?;
    vm.wait_for_text(regex(r"(?m)^/ # ")?, STEP)?;
    // PID 1 loads the filesystem drivers in the background after its first screen.
    if !shell(
        &vm,
        "i=0; until grep -qw ext4 /proc/filesystems || [ $i -ge 120 ]; do i=$((i+1)); \
         sleep 1; done; mkdir -p /mnt/images && mount -t ext4 -o ro /dev/vda /mnt/images",
        "MOUNTED",
    )? {
        bail!(
            "could not mount the image disk:\n{}",
            vm.console().framed_screen()
        );
    }
    vm.clear_screen();
    vm.send_keys("/init console --images /mnt/images")?;
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(understudy::init::menu::LINE_RECOVERY, BOOT)?;
    vm.wait_for_text("Newest image: img", STEP)?;
    vm.send_keys("t")?;
    vm.wait_for_text(format!("{RESTORE_TITLE} 1/4"), STEP)?;
    vm.wait_for_text("> img", STEP)?;
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(format!("{RESTORE_TITLE} 2/4"), STEP)?;
    vm.wait_for_text(format!("serial {TARGET_SERIAL}"), STEP)?;
    let screen = vm.screen_text();
    if screen.contains("US-IMAGES-0001") {
        bail!(
            "the mounted image disk is offered as a target:\n{}",
            vm.console().framed_screen()
        );
    }
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(format!("{RESTORE_TITLE} 3/4"), STEP)?;
    vm.wait_for_text(format!("serial {TARGET_SERIAL}, size 256.0 MiB"), STEP)?;
    vm.send_key(Key::Enter)?;
    vm.wait_for_text("Type the disk's serial number", STEP)?;
    vm.send_keys("US-TARGET-0003")?;
    vm.send_key(Key::Enter)?;
    vm.wait_for_text("nothing was written", STEP)?;
    vm.send_keys(TARGET_SERIAL)?;
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(format!("{RESTORE_TITLE}: in progress"), STEP)?;
    let started = vm.elapsed();
    vm.wait_for_text(
        regex(r"Restore complete|Restore FAILED|Restore cancelled")?,
        RESTORE_WAIT,
    )?;
    let took = vm.elapsed().saturating_sub(started);
    let screen = vm.screen_text();
    if !screen.contains("Restore complete") {
        bail!(
            "the restore did not complete:\n{}",
            vm.console().framed_screen()
        );
    }
    // Back to the status, quit the console, check the disk from the shell.
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(understudy::init::menu::LINE_RECOVERY, STEP)?;
    vm.send_keys("q")?;
    shell_ready(&vm)?;
    if !shell(
        &vm,
        "sgdisk -v /dev/vdb | grep -q 'No problems found'",
        "SGDISK",
    )? {
        bail!(
            "sgdisk -v /dev/vdb is not clean:\n{}",
            vm.console().framed_screen()
        );
    }
    // Not `exit` back to the console that started this shell: after a restore ran
    // here, this shell stops reading its input (without the restore, `exit` comes
    // back; not understood yet, see docs/console.md). The disk is checked: cut the
    // power.
    let off = vm.power_cut()?;
    Ok(vec![
        "console: image chosen, target vdb offered alone (the mounted image disk is not)".into(),
        "a wrong serial refused with nothing written; the right one started the restore".into(),
        format!(
            "progress then \"Restore complete\" on screen {} after it started",
            secs(took)
        ),
        "sgdisk -v /dev/vdb: No problems found".into(),
        format!("power cut after the checks ({} to go)", secs(off)),
    ])
}
