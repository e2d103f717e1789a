//! VM scenario proving the restore engine against power cuts (`docs/restore.md`,
//! "Power cuts, proven"): on `restore-engine`'s synthetic image and disks, a build of
//! understudy with the `failpoints` feature (`src/restore/failpoint.rs`, built into
//! `target/failpoints` so the normal build stays valid) is the recovery image's
//! `/init`; the restore is cut at the end of each step from `clear` to `finish`, and
//! after each cut (1) SeaBIOS, given a copy of the half-restored target as its only
//! disk, finds nothing to boot on it, and (2) rerunning the same restore on that disk
//! completes and the result checks clean (`sgdisk -v`, `e2fsck -fn`, the image's file).
//!
//! The `clear` cut comes from the real kernel command line (`understudy.failpoint=clear`
//! on `-append`, `-no-reboot`: the cut ends QEMU). The other cuts happen in one machine
//! that reboots into the recovery image after each: since a direct-boot reboot keeps the
//! same command line, the key is given to each cut run by bind-mounting a file holding
//! the command line plus the key over `/proc/cmdline`, which is what the failpoint reads.
//! `verify` and `refuse` are not cut: nothing is written before `clear`.
//!
//! A child module of `vmtest.rs` (declared there with `#[path]`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use understudy::initramfs::{self, Init, Spec};
use understudy::restore::events::Step;

use super::restore_engine_test::{
    HELLO, OLD_PRIMARY_MIB, OLD_PRIMARY_SERIAL, SECONDARY_MIB, SECONDARY_SERIAL, images_disk,
    shell, stale_vg_script, tail,
};
use super::{BOOT, Ctx, Firmware, STEP, Scenario, expect_poweroff, secs};
use crate::qemu::{DirectBoot, DiskSpec, ImageFormat, Key, Machine, MachineSpec};
use crate::run::Cmd;
use crate::{repo_root, target_dir};

pub const RESTORE_POWER_CUT: Scenario = Scenario {
    name: "restore-power-cut",
    firmware: Firmware::SeaBios,
    run: restore_power_cut,
};

/// This scenario's own bound (eleven cuts, each with a reboot and a full rerun, under
/// TCG): longer than the harness's default per-scenario limit.
const LIMIT: Duration = Duration::from_secs(900);

/// What the recovery kernel gets, without a failpoint.
const APPEND: &str = "console=ttyS0 panic=-1 quiet";

/// Mounts the image disk (once per boot) and runs the restore; the JSON events go to
/// `/tmp/events`, the messages (the failpoint's among them) to the console.
const RESTORE: &str = "mkdir -p /mnt/images && { grep -q ' /mnt/images ' /proc/mounts || \
     mount -t ext4 -o ro /dev/vda /mnt/images; } && \
     /init restore /mnt/images/img --target /dev/vdb --yes --no-copy-back --progress=json \
     >/tmp/events";

/// What restore-engine checks of a restored target, in one line; the VG is left
/// inactive (an active LV holds the target, and the next restore would refuse it).
fn check() -> String {
    format!(
        "export DM_DISABLE_UDEV=1 LVM_SUPPRESS_FD_WARNINGS=1; mkdir -p /mnt/r; \
         sgdisk -v /dev/vdb | grep -q 'No problems found' && \
         lvm vgchange -a y usvg >/dev/null && e2fsck -fn /dev/mapper/usvg-root >/dev/null && \
         e2fsck -fn /dev/vdb1 >/dev/null && mount -o ro /dev/mapper/usvg-root /mnt/r && \
         grep -qx '{}' /mnt/r/etc/hello; r=$?; umount /mnt/r 2>/dev/null; \
         lvm vgchange -a n usvg >/dev/null; (exit $r)",
        HELLO.trim()
    )
}

/// Builds understudy with `--features failpoints` into `target/failpoints`.
fn failpoints_bin() -> Result<PathBuf> {
    let dir = target_dir().join("failpoints");
    Cmd::new("cargo")
        .args(["build", "--features", "failpoints", "--bin", "understudy"])
        .env("CARGO_TARGET_DIR", &dir)
        .dir(repo_root())
        .run()
        .context("building understudy with --features failpoints")?;
    let bin = dir.join("x86_64-unknown-linux-gnu/debug/understudy");
    if !bin.is_file() {
        bail!("{} is missing after the build", bin.display());
    }
    Ok(bin)
}

fn restore_power_cut(ctx: &Ctx) -> Result<Vec<String>> {
    let started = Instant::now();
    let deadline = started + LIMIT;
    let initrd = ctx.dir.join("initrd.img");
    let mut spec = Spec::new(
        &ctx.guest.kernel.version,
        &ctx.guest.kernel.modules_dir,
        Init::Binary(failpoints_bin()?),
        &initrd,
    )?;
    spec.strip_init = true;
    initramfs::build(&spec).context("building the recovery image")?;
    let images = images_disk(&ctx.dir)?;
    let target = ctx.blank("target.raw", 256)?;

    let machine = |append: String, no_reboot: bool| -> Result<MachineSpec> {
        let mut m = ctx.spec();
        ctx.booted_kernel.set(true);
        m.memory_mib = 768;
        m.deadline = Some(deadline);
        m.no_reboot = no_reboot;
        m.direct_boot = Some(DirectBoot {
            kernel: ctx.guest.boot_kernel.clone(),
            initrd: Some(initrd.clone()),
            append,
        });
        m.disks = vec![
            DiskSpec::virtio("images", &images, ImageFormat::Raw, "US-IMAGES-0001"),
            DiskSpec::virtio("target", &target, ImageFormat::Raw, "US-TARGET-0002"),
            DiskSpec::virtio(
                "secondary",
                ctx.dir.join("secondary.raw"),
                ImageFormat::Raw,
                SECONDARY_SERIAL,
            ),
            DiskSpec::virtio(
                "old-primary",
                ctx.dir.join("old-primary.raw"),
                ImageFormat::Raw,
                OLD_PRIMARY_SERIAL,
            ),
        ];
        Ok(m)
    };
    ctx.blank("secondary.raw", SECONDARY_MIB)?;
    ctx.blank("old-primary.raw", OLD_PRIMARY_MIB)?;
    let cuts = ctx.dir.join("cuts");
    std::fs::create_dir_all(&cuts).with_context(|| format!("creating {}", cuts.display()))?;
    let mut notes = Vec::new();
    // (step, its copy of the target as the cut left it)
    let mut cut_disks: Vec<(Step, PathBuf)> = Vec::new();

    // The clear cut, from the real kernel command line.
    {
        let mut vm = Machine::start(&machine(
            format!(
                "{APPEND} {}={}",
                understudy::restore::failpoint::KEY,
                Step::Clear.name()
            ),
            true,
        )?)?;
        vm.wait_for_text(understudy::init::menu::LINE, BOOT)?;
        to_shell(&vm)?;
        let (code, log) = shell(&vm, &stale_vg_script(), "STALE")?;
        if code != 0 || !log.contains("wz-pn-") {
            bail!(
                "could not leave a partial usvg on the COW PV ({code}):\n{}",
                tail(&log, 30)
            );
        }
        cut(&vm, Step::Clear)?;
        let down = vm.wait_shutdown(STEP)?;
        if down.reason.as_deref() != Some("guest-reset") {
            bail!(
                "the clear failpoint ended QEMU as {:?} (exit {}), not a guest reset",
                down.reason,
                down.status
            );
        }
        cut_disks.push((Step::Clear, snapshot(&target, &cuts, Step::Clear)?));
        notes.push(format!(
            "clear: cut by understudy.failpoint=clear on the kernel command line \
             (QEMU saw a guest reset at {})",
            secs(down.at)
        ));
    }

    // The other cuts: one machine, rebooting into the recovery image after each.
    let mut vm = Machine::start(&machine(APPEND.to_string(), false)?)?;
    vm.wait_for_text(understudy::init::menu::LINE, BOOT)?;
    to_shell(&vm)?;
    rerun(&vm, Step::Clear)?;
    notes.push("clear: the rerun completed and checks clean".into());
    for step in Step::ALL
        .into_iter()
        .skip_while(|s| *s != Step::Clear)
        .skip(1)
    {
        let (code, log) = shell(
            &vm,
            &format!(
                "echo \"$(cat /proc/cmdline) {}={}\" >/run/cut-cmdline && \
                 mount --bind /run/cut-cmdline /proc/cmdline && cat /proc/cmdline",
                understudy::restore::failpoint::KEY,
                step.name()
            ),
            "ARMED",
        )?;
        if code != 0 {
            bail!(
                "could not arm the {} failpoint:\n{}",
                step.name(),
                tail(&log, 10)
            );
        }
        cut(&vm, step)?;
        vm.clear_screen();
        vm.wait_for_text(understudy::init::menu::LINE, BOOT)
            .with_context(|| {
                format!(
                    "waiting for the recovery menu after the {} cut",
                    step.name()
                )
            })?;
        cut_disks.push((step, snapshot(&target, &cuts, step)?));
        to_shell(&vm)?;
        let mut note = format!("{}: cut and rebooted", step.name());
        if matches!(step, Step::Sync | Step::Finish) {
            // Everything was flushed before these cuts: the target is whole already.
            let (code, log) = shell(&vm, &check(), "WHOLE")?;
            if code != 0 {
                bail!(
                    "after the {} cut the target does not check clean ({code}):\n{}",
                    step.name(),
                    tail(&log, 30)
                );
            }
            note.push_str("; the cut target already checks clean");
        }
        rerun(&vm, step)?;
        note.push_str("; the rerun completed and checks clean");
        notes.push(note);
    }
    vm.send_keys("exit")?;
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(understudy::init::menu::LINE, STEP)?;
    vm.send_keys("p")?;
    expect_poweroff(&mut vm)?;

    // Each cut target, alone, under SeaBIOS.
    for (step, disk) in &cut_disks {
        let seen = firmware_passes_over(ctx, disk, deadline)?;
        notes.push(format!(
            "{}: SeaBIOS with the cut target as its only disk: {seen}",
            step.name()
        ));
    }
    notes.push(format!(
        "{} cuts, {} in all",
        cut_disks.len(),
        secs(started.elapsed())
    ));
    Ok(notes)
}

/// From the recovery menu (on the screen) to PID 1's shell, with ext4 and
/// device-mapper loaded.
fn to_shell(vm: &Machine) -> Result<()> {
    vm.send_keys("s")?;
    vm.wait_for_text(regex::Regex::new(r"(?m)^/ # ")?, STEP)?;
    drivers(vm)
}

/// PID 1 loads the filesystems and device-mapper in the background.
fn drivers(vm: &Machine) -> Result<()> {
    let (code, log) = shell(
        vm,
        "i=0; until grep -qw ext4 /proc/filesystems && [ -d /sys/module/dm_mod ] \
         || [ $i -ge 120 ]; do i=$((i+1)); sleep 1; done; grep -qw ext4 /proc/filesystems",
        "DRIVERS",
    )?;
    if code != 0 {
        bail!("ext4 and dm-mod did not load:\n{}", tail(&log, 20));
    }
    Ok(())
}

/// Runs the restore with `step`'s failpoint armed and waits for the cut.
fn cut(vm: &Machine, step: Step) -> Result<()> {
    vm.clear_screen();
    vm.send_keys(&format!("{RESTORE}; echo RESTORE-NOT-CUT=$?"))?;
    vm.send_key(Key::Enter)?;
    let said = format!("failpoint {}: rebooting without sync", step.name());
    let either = regex::Regex::new(&format!(r"{}|RESTORE-NOT-CUT=\d", regex::escape(&said)))?;
    // With `-no-reboot` the console may close as soon as the message is out.
    let waited = vm.wait_for_text(either, Duration::from_secs(150));
    let log = vm.console().log_text()?;
    if log.contains(&said) {
        return Ok(());
    }
    waited.with_context(|| format!("waiting for the {} cut:\n{}", step.name(), tail(&log, 30)))?;
    bail!(
        "the restore ended without the {} cut:\n{}",
        step.name(),
        tail(&log, 30)
    )
}

/// Reruns the restore, without a failpoint, on the target `step`'s cut left, and checks it.
fn rerun(vm: &Machine, step: Step) -> Result<()> {
    let (code, log) = shell(
        vm,
        &format!(
            "{RESTORE} 2>/tmp/errors; r=$?; tail -n 3 /tmp/errors; tail -n 1 /tmp/events; (exit $r)"
        ),
        "RERUN",
    )?;
    if code != 0 || !log.contains(r#"{"event":"done"}"#) {
        bail!(
            "the rerun after the {} cut failed ({code}):\n{}",
            step.name(),
            tail(&log, 30)
        );
    }
    let (code, log) = shell(vm, &check(), "CHECK")?;
    if code != 0 {
        bail!(
            "the rerun after the {} cut does not check clean ({code}):\n{}",
            step.name(),
            tail(&log, 30)
        );
    }
    Ok(())
}

/// A sparse copy of the target as the cut left it (the guest writes nothing to it
/// while it sits at the recovery menu, or QEMU has exited).
fn snapshot(target: &Path, dir: &Path, step: Step) -> Result<PathBuf> {
    let to = dir.join(format!("{}.raw", step.name()));
    Cmd::new("cp")
        .arg("--sparse=always")
        .arg(target)
        .arg(&to)
        .run()
        .with_context(|| format!("copying {} to {}", target.display(), to.display()))?;
    Ok(to)
}

/// Boots SeaBIOS with `disk` as its only disk and expects it to find nothing to boot:
/// "No bootable device.", and no sign of a boot loader or kernel from the disk.
fn firmware_passes_over(ctx: &Ctx, disk: &Path, deadline: Instant) -> Result<String> {
    let mut m = ctx.spec();
    m.deadline = Some(deadline);
    m.bios_on_serial = true;
    m.memory_mib = 128;
    let mut d = DiskSpec::virtio("cut", disk, ImageFormat::Raw, "US-CUT-0001");
    d.bootindex = Some(1);
    m.disks = vec![d];
    let mut vm = Machine::start(&m)?;
    vm.wait_for_text("Booting from Hard Disk", BOOT)?;
    vm.wait_for_text("No bootable device.", STEP)
        .with_context(|| format!("SeaBIOS did not give up on {}", disk.display()))?;
    let seen = vm.elapsed();
    let whole = vm.console().log_text()?;
    // The console log holds every machine of the scenario: this one's is the last.
    let log = whole
        .rfind("----- understudy vm:")
        .map_or(whole.as_str(), |at| &whole[at..])
        .to_string();
    vm.power_cut()?;
    for sign in ["GRUB", "Linux version", "error:", "Booting `"] {
        if log.contains(sign) {
            bail!(
                "SeaBIOS ran something from {} ({sign:?} on the console):\n{}",
                disk.display(),
                tail(&log, 20)
            );
        }
    }
    let why = boot_sector_state(disk)?;
    Ok(format!(
        "\"No bootable device.\" after {} ({why})",
        secs(seen)
    ))
}

/// The restore's boot-code stub (`src/restore/execute.rs`): `int 18h; cli; hlt; jmp -3`.
const STUB: [u8; 6] = [0xCD, 0x18, 0xFA, 0xF4, 0xEB, 0xFD];

/// What sector 0 of `disk` holds: no boot signature, or the restore's stub; anything
/// else is an error (the firmware gave up on it, but not for a reason the restore made).
fn boot_sector_state(disk: &Path) -> Result<&'static str> {
    let mut sector = [0u8; 512];
    std::io::Read::read_exact(
        &mut std::fs::File::open(disk).with_context(|| format!("opening {}", disk.display()))?,
        &mut sector,
    )
    .with_context(|| format!("reading sector 0 of {}", disk.display()))?;
    if sector[510..] != [0x55, 0xAA] {
        Ok("sector 0 has no boot signature")
    } else if sector[..STUB.len()] == STUB && sector[STUB.len()..440].iter().all(|b| *b == 0) {
        Ok("sector 0 holds the restore's int 18h stub")
    } else {
        bail!(
            "sector 0 of {} has a boot signature and boot code that is not the restore's stub",
            disk.display()
        )
    }
}
