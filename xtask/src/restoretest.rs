//! VM scenarios for the restore (issue 5), through real parts: the test appliance's
//! image (`appliance.rs`: the Debian corpus, made into an image by `understudy image
//! create`, layout `/boot` + LVM root + swap) on an image disk; our recovery kernel
//! and initramfs booted with a blank virtio primary; the recovery console started on
//! the mounted image disk and driven by keys over the serial line as a technician
//! would (image, target, the plan naming the target's model, serial and size, the
//! serial typed, the progress to its result); `r` on the result screen resets the
//! machine; the restored primary checked from the recovery shell of a new boot (`sgdisk -v`,
//! `e2fsck -fn`, every path and every file's MD5 against the image's trees) and
//! booted alone through its own GRUB to a login on the serial console.
//! Same size, larger, smaller-but-enough, and a corrupt image refused in verify with
//! the reason on the console's screen, the target untouched. [`restored_primary`]
//! caches the restored same-size primary as a qcow2 base image for other scenarios.
//!
//! The console runs the dev build of our binary from the image disk (`/img/understudy
//! console --images`), so the scenarios test the code of this tree without rebuilding
//! the recovery image's release binary; the recovery image provides the kernel,
//! modules and tools (lvm, mke2fs, sgdisk). A child module of `vmtest.rs`.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Ctx, Firmware, Scenario, secs};
use crate::appliance::{self, ImageDisk};
use crate::qemu::{DirectBoot, DiskSpec, ImageFormat, Key, Machine, MachineSpec};
use crate::run::Cmd;
use crate::target_dir;
use understudy::console::view::RESTORE_TITLE;
use understudy::disk::Bytes;

pub const SAME_SIZE: Scenario = Scenario {
    name: "restore-same-size",
    firmware: Firmware::SeaBios,
    run: same_size,
};
pub const LARGER: Scenario = Scenario {
    name: "restore-larger",
    firmware: Firmware::SeaBios,
    run: larger,
};
pub const SMALLER: Scenario = Scenario {
    name: "restore-smaller",
    firmware: Firmware::SeaBios,
    run: smaller,
};
pub const CORRUPT: Scenario = Scenario {
    name: "restore-corrupt-image",
    firmware: Firmware::SeaBios,
    run: corrupt,
};

/// These scenarios restore 800 MB under TCG: their own bound, not the harness's.
const LIMIT: Duration = Duration::from_secs(20 * 60);
const BOOT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(60);
/// Verify, partition, mkfs, extract, grub-install in a chroot, sync.
const RESTORE: Duration = Duration::from_secs(900);
const CHECKS: Duration = Duration::from_secs(600);
/// GRUB, the kernel, the appliance's initramfs activating LVM, systemd to a getty.
const LOGIN: Duration = Duration::from_secs(420);

const TITLE: &str = understudy::init::status::HEADING;
const MENU: &str = understudy::init::menu::LINE;
const APPEND: &str = "console=ttyS0 panic=-1 quiet";
const PRIMARY_SERIAL: &str = "US-PRIMARY-0001";
const IMAGES_SERIAL: &str = "US-IMAGES-0002";

fn re(s: &str) -> Result<regex::Regex> {
    Ok(regex::Regex::new(s)?)
}

/// The recovery kernel and initramfs (`cargo xtask initramfs`).
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

fn spec(ctx: &Ctx, deadline: Instant) -> MachineSpec {
    let mut spec = ctx.spec();
    spec.deadline = Some(deadline);
    spec.memory_mib = 1024;
    spec.cpus = 2;
    spec
}

/// An overlay over the image disk, so that mounting it (or corrupting it) leaves
/// the cached disk as it was.
fn images_overlay(ctx: &Ctx, img: &ImageDisk) -> Result<DiskSpec> {
    let overlay = ctx.dir.join("images.qcow2");
    crate::qemu::create_overlay(&img.disk, &overlay)?;
    Ok(DiskSpec::virtio(
        "images",
        overlay,
        ImageFormat::Qcow2,
        IMAGES_SERIAL,
    ))
}

/// Boots the recovery image with `primary` as vda and the image disk as vdb, opens
/// the shell from the menu and mounts the image disk at `/img`.
fn recovery_shell(
    ctx: &Ctx,
    deadline: Instant,
    primary: DiskSpec,
    img: &ImageDisk,
) -> Result<Machine> {
    let mut s = spec(ctx, deadline);
    ctx.booted_kernel.set(true);
    s.direct_boot = Some(DirectBoot {
        kernel: ctx.guest.boot_kernel.clone(),
        initrd: Some(recovery_initrd()?),
        append: APPEND.into(),
    });
    s.disks.push(primary);
    s.disks.push(images_overlay(ctx, img)?);
    let vm = Machine::start(&s)?;
    open_shell(&vm)?;
    Ok(vm)
}

/// From the recovery image's first screen: the shell from the menu, the image disk
/// mounted at `/img` once PID 1 has loaded ext4 and device-mapper.
fn open_shell(vm: &Machine) -> Result<()> {
    vm.wait_for_text(TITLE, BOOT)?;
    vm.wait_for_text(MENU, STEP)?;
    vm.send_keys("s")?;
    vm.wait_for_text(re(r"(?m)^/ # ")?, STEP)?;
    // PID 1 loads the filesystems and device-mapper after its first screen, in the
    // background (`init::modload::ALWAYS`): the restore needs ext4 and dm-mod.
    type_line(
        vm,
        "i=0; until grep -qw ext4 /proc/filesystems && [ -d /sys/module/dm_mod ] && [ -b /dev/vdb ] \
         || [ $i -ge 120 ]; do i=$((i+1)); sleep 1; done; \
         mkdir -p /img && mount -t ext4 /dev/vdb /img && echo IMG-MOUNTED=$?",
    )?;
    vm.wait_for_text(re(r"IMG-MOUNTED=0")?, BOOT + STEP)?;
    Ok(())
}

fn type_line(vm: &Machine, line: &str) -> Result<()> {
    vm.send_keys(line)?;
    vm.send_key(Key::Enter)
}

/// The last value printed as `NAME=VALUE` on the console so far.
fn marker(vm: &Machine, name: &str) -> Result<String> {
    let log = vm.console().log_text()?;
    let r = re(&format!(r"{}=(\S+)", regex::escape(name)))?;
    r.captures_iter(&log)
        .filter(|c| !c[1].starts_with('$'))
        .last()
        .map(|c| c[1].to_string())
        .with_context(|| format!("no {name}= on the console"))
}

/// The console's restore of the appliance image onto the blank primary (vda), driven
/// by keys over the serial line as a technician would: the console started from the
/// shell on the mounted image disk, the image chosen, the blank disk chosen (the
/// mounted image disk must not be offered), the plan naming the target's model,
/// serial and size, the serial typed, then the progress until a result. Returns the
/// plan's line naming the target, the result screen and how long the restore ran.
fn console_restore(vm: &Machine, mib: u64) -> Result<(String, String, Duration)> {
    vm.clear_screen();
    type_line(vm, "/img/understudy console --images /img/images")?;
    vm.wait_for_text(understudy::init::menu::LINE_RECOVERY, BOOT)?;
    vm.wait_for_text(format!("Newest image: {}", appliance::IMAGE_ID), STEP)?;
    vm.send_keys("t")?;
    vm.wait_for_text(format!("{RESTORE_TITLE} 1/4"), STEP)?;
    vm.wait_for_text(format!("> {}", appliance::IMAGE_ID), STEP)?;
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(format!("{RESTORE_TITLE} 2/4"), STEP)?;
    vm.wait_for_text(format!("serial {PRIMARY_SERIAL}"), STEP)?;
    if vm.screen_text().contains(IMAGES_SERIAL) {
        bail!(
            "the mounted image disk is offered as a target:\n{}",
            vm.console().framed_screen()
        );
    }
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(format!("{RESTORE_TITLE} 3/4"), STEP)?;
    let size = Bytes(mib << 20).human();
    let named = re(&format!(
        r"model [^,]+, serial {PRIMARY_SERIAL}, size {}",
        regex::escape(&size)
    ))?;
    vm.wait_for_text(named.clone(), STEP)?;
    let plan = named
        .find(&vm.screen_text())
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    vm.send_key(Key::Enter)?;
    vm.wait_for_text("Type the disk's serial number", STEP)?;
    vm.send_keys(PRIMARY_SERIAL)?;
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(format!("{RESTORE_TITLE}: in progress"), STEP)?;
    let started = Instant::now();
    vm.wait_for_text(
        re(r"Restore complete|Restore FAILED|Restore cancelled")?,
        RESTORE,
    )?;
    let took = started.elapsed();
    // The result's lines arrive over 115200 baud: wait for its keys line.
    vm.wait_for_text(re(r"\[Enter\] status|\[Enter\]")?, STEP)?;
    Ok((plan, vm.console().framed_screen(), took))
}

/// Runs `check.sh` and fails unless every check passed; returns notes.
fn checks(vm: &Machine) -> Result<Vec<String>> {
    let started = Instant::now();
    vm.clear_screen();
    type_line(vm, "sh /img/check.sh")?;
    vm.wait_for_text("CHECKS-DONE", CHECKS)?;
    let log = vm.console().log_text()?;
    let tail = &log[log.rfind("sh /img/check.sh").unwrap_or(0)..];
    let mut problems = Vec::new();
    for (name, want) in [
        ("SGDISK-RC", "0"),
        ("E2FSCK-BOOT-RC", "0"),
        ("E2FSCK-ROOT-RC", "0"),
        ("MD5-root-RC", "0"),
        ("MD5-boot-RC", "0"),
    ] {
        let got = marker(vm, name)?;
        if got != want {
            problems.push(format!("{name}={got}"));
        }
    }
    if !tail.contains("No problems found") {
        problems.push("sgdisk -v did not say \"No problems found\"".into());
    }
    if tail.contains("MOUNT-FAILED") {
        problems.push("the restored filesystems did not mount".into());
    }
    let mut notes = Vec::new();
    for fs in ["root", "boot"] {
        let c = re(&format!(r"PATHS-{fs} missing=(\d+) extra=(\d+)"))?
            .captures_iter(tail)
            .last()
            .with_context(|| format!("no PATHS-{fs} line"))?;
        if &c[1] != "0" {
            problems.push(format!("{} paths of {fs} missing after the restore", &c[1]));
        }
        notes.push(format!(
            "{fs}: every path of the image present, {} added by the restore (bootloader)",
            &c[2]
        ));
    }
    if !problems.is_empty() {
        bail!(
            "checks of the restored disk failed: {}\n(see the console log)",
            problems.join("; ")
        );
    }
    notes.insert(
        0,
        format!(
            "sgdisk -v clean, e2fsck -fn clean on /boot and the root LV, every file's MD5 equal to the image ({})",
            secs(started.elapsed())
        ),
    );
    Ok(notes)
}

/// The restored root LV against the image's: the same size on a disk of the image's
/// size, grown on a larger disk, shrunk on a smaller one (the layout planner's fit).
fn root_lv_fits(vm: &Machine, img: &ImageDisk, mib: u64) -> Result<String> {
    let manifest = understudy::image::manifest::Manifest::load(&img.image)?;
    let recorded = manifest
        .layout
        .lvm
        .lvs
        .iter()
        .find(|l| l.vg == appliance::VG && l.name == "root")
        .map(|l| l.size_bytes.0)
        .context("the image's layout has no root LV")?;
    let got: u64 = marker(vm, "ROOT-LV-BYTES")?
        .parse()
        .context("reading the restored root LV's size")?;
    let fits = match mib.cmp(&appliance::DISK_MIB) {
        std::cmp::Ordering::Equal => got == recorded,
        std::cmp::Ordering::Greater => got > recorded,
        std::cmp::Ordering::Less => got < recorded,
    };
    if !fits {
        bail!(
            "the restored root LV is {got} bytes on a {mib} MiB disk; the image's is {recorded} \
             bytes on {} MiB",
            appliance::DISK_MIB
        );
    }
    Ok(format!(
        "root LV {got} bytes on {mib} MiB (the image's: {recorded} bytes on {} MiB)",
        appliance::DISK_MIB
    ))
}

/// Leaves the shell and powers off from the menu.
fn power_off(vm: &mut Machine) -> Result<()> {
    type_line(vm, "cd / ; sync")?;
    type_line(vm, "exit")?;
    vm.wait_for_text(MENU, STEP)?;
    vm.send_keys("p")?;
    vm.wait_shutdown(STEP)?;
    Ok(())
}

/// Restores the appliance image onto a blank primary of `mib` MiB through the
/// console's keys, reboots from the console's result screen (QEMU, run with
/// `-no-reboot`, ends on the guest's reset), and checks the disk from the recovery
/// shell of a new boot.
fn restore_onto(ctx: &Ctx, deadline: Instant, mib: u64) -> Result<(PathBuf, Vec<String>)> {
    let img = appliance::image_disk()?;
    let primary = ctx.blank("primary.raw", mib)?;
    let disk = DiskSpec::virtio("primary", &primary, ImageFormat::Raw, PRIMARY_SERIAL);
    let mut vm = recovery_shell(ctx, deadline, disk, &img)?;
    let (plan, screen, took) = console_restore(&vm, mib)?;
    let complete = format!("Restore complete: {} is on vda", appliance::IMAGE_ID);
    if !screen.contains(&complete) || !screen.contains("[r] reboot into the primary") {
        bail!("the console's restore did not complete:\n{screen}");
    }
    let mut notes = vec![
        format!("console plan named the target: {plan}; its serial typed"),
        format!(
            "console restore onto {mib} MiB: \"{complete}\" on screen {} after the serial",
            secs(took)
        ),
    ];
    vm.clear_screen();
    vm.send_keys("r")?;
    vm.wait_for_text("rebooting", STEP)?;
    // The harness runs QEMU with `-no-reboot`: the guest's reset ends it.
    let reset = vm.wait_shutdown(STEP)?;
    if reset.reason.as_deref() != Some("guest-reset") {
        bail!(
            "`r` on the result screen did not reset the machine: QEMU ended with {:?}",
            reset.reason
        );
    }
    drop(vm);
    notes.push("`r` on the result screen: \"rebooting...\", the guest reset the machine".into());
    // The checks from the recovery shell, on the disk as the reset left it.
    let disk = DiskSpec::virtio("primary", &primary, ImageFormat::Raw, PRIMARY_SERIAL);
    let mut vm = recovery_shell(ctx, deadline, disk, &img)?;
    notes.extend(checks(&vm)?);
    notes.push(root_lv_fits(&vm, &img, mib)?);
    power_off(&mut vm)?;
    Ok((primary, notes))
}

/// Boots `disk` alone through its own GRUB to a login on the serial console, and
/// checks from the autologin shell that / is the LVM root and swap is on.
fn boot_restored(ctx: &Ctx, deadline: Instant, disk: DiskSpec) -> Result<Vec<String>> {
    let mut s = spec(ctx, deadline);
    s.bios_on_serial = true;
    let mut disk = disk;
    disk.bootindex = Some(1);
    s.disks.push(disk);
    let mut vm = Machine::start(&s)?;
    vm.wait_for_text(re(r"login:")?, LOGIN)?;
    let login_at = vm.elapsed();
    vm.wait_for_text(re(r"(?m)root@appliance:~# ?$")?, STEP)?;
    type_line(
        &vm,
        "echo BOOTED-ROOT=$(findmnt -no SOURCE /) BOOTED-SWAPS=$(swapon --noheadings --show=NAME | wc -l)",
    )?;
    vm.wait_for_text(re(r"BOOTED-SWAPS=\d")?, STEP)?;
    let root = marker(&vm, "BOOTED-ROOT")?;
    let swaps = marker(&vm, "BOOTED-SWAPS")?;
    if root != "/dev/mapper/vg0-root" || swaps != "1" {
        bail!("the restored system runs from {root} with {swaps} swap area(s)");
    }
    type_line(&vm, "poweroff")?;
    vm.wait_shutdown(Duration::from_secs(120))?;
    Ok(vec![format!(
        "the restored primary booted alone to a login on ttyS0 in {}; / is {root}, swap on",
        secs(login_at)
    )])
}

/// `target/vm/appliance/primary.qcow2`: the appliance restored onto a blank 2 GiB
/// disk by `understudy restore` (GPT, BIOS boot, ext4 /boot, VG vg0 with an ext4
/// root LV and swap, GRUB installed), before its first boot, for scenarios that need
/// "a VM booted from a primary with an LVM root": use it as the base of a qcow2
/// overlay (`qemu-img create -f qcow2 -F qcow2 -b BASE`). Restored here when missing,
/// made from another image disk, or `fresh`; returns the restore's notes then.
pub fn restored_primary(ctx: &Ctx, fresh: bool) -> Result<(PathBuf, Vec<String>)> {
    let dir = target_dir().join("vm/appliance");
    let base = dir.join("primary.qcow2");
    let stamp = dir.join("primary.key");
    appliance::image_disk()?;
    let current = fs::read_to_string(dir.join("images.key")).unwrap_or_default();
    if !fresh && base.is_file() && fs::read_to_string(&stamp).is_ok_and(|k| k == current) {
        return Ok((base, Vec::new()));
    }
    let _ = fs::remove_file(&stamp);
    let (raw, mut notes) = restore_onto(ctx, Instant::now() + LIMIT, appliance::DISK_MIB)?;
    save_base(&raw, &base, &stamp, &current)?;
    fs::remove_file(&raw).with_context(|| format!("removing {}", raw.display()))?;
    notes.push(format!("cached as {}", base.display()));
    Ok((base, notes))
}

fn save_base(raw: &Path, base: &Path, stamp: &Path, key: &str) -> Result<()> {
    let tmp = base.with_extension("qcow2.tmp");
    Cmd::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(&tmp)
        .output()
        .context("converting the restored primary to qcow2")?;
    fs::rename(&tmp, base).with_context(|| format!("renaming {}", tmp.display()))?;
    fs::write(stamp, key).with_context(|| format!("writing {}", stamp.display()))
}

/// A qcow2 overlay over a qcow2 base.
fn qcow2_overlay(base: &Path, overlay: &Path) -> Result<()> {
    let _ = fs::remove_file(overlay);
    Cmd::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(base.canonicalize()?)
        .arg(overlay)
        .output()
        .map(|_| ())
        .context("creating an overlay over the restored primary")
}

fn same_size(ctx: &Ctx) -> Result<Vec<String>> {
    let deadline = Instant::now() + LIMIT;
    // Cached before its first boot; booting an overlay of the cached base proves
    // what other scenarios start from.
    let (base, mut notes) = restored_primary(ctx, true)?;
    let overlay = ctx.dir.join("primary.qcow2");
    qcow2_overlay(&base, &overlay)?;
    let disk = DiskSpec::virtio("primary", overlay, ImageFormat::Qcow2, PRIMARY_SERIAL);
    notes.extend(boot_restored(ctx, deadline, disk)?);
    Ok(notes)
}

fn other_size(ctx: &Ctx, mib: u64) -> Result<Vec<String>> {
    let deadline = Instant::now() + LIMIT;
    let (raw, mut notes) = restore_onto(ctx, deadline, mib)?;
    let disk = DiskSpec::virtio("primary", &raw, ImageFormat::Raw, PRIMARY_SERIAL);
    notes.extend(boot_restored(ctx, deadline, disk)?);
    fs::remove_file(&raw).with_context(|| format!("removing {}", raw.display()))?;
    Ok(notes)
}

fn larger(ctx: &Ctx) -> Result<Vec<String>> {
    other_size(ctx, appliance::DISK_MIB + 1024)
}

/// Smaller than the image's disk but enough for its data plus the planner's headroom.
fn smaller(ctx: &Ctx) -> Result<Vec<String>> {
    other_size(ctx, 1536)
}

/// Reads the first and last MiB of `path`.
fn ends(path: &Path) -> Result<Vec<u8>> {
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = vec![0u8; 2 << 20];
    f.read_exact(&mut out[..1 << 20])?;
    f.seek(SeekFrom::End(-(1 << 20)))?;
    f.read_exact(&mut out[1 << 20..])?;
    Ok(out)
}

/// A byte flipped in the middle of the root archive: the restore fails in `verify`,
/// and the target's first and last MiB (filled with a pattern) are unchanged.
fn corrupt(ctx: &Ctx) -> Result<Vec<String>> {
    let deadline = Instant::now() + LIMIT;
    let img = appliance::image_disk()?;
    let primary = ctx.blank("primary.raw", appliance::DISK_MIB)?;
    {
        let mut f = fs::OpenOptions::new().write(true).open(&primary)?;
        let pattern: Vec<u8> = b"UNDERSTUDY-UNTOUCHED-TARGET\n"
            .iter()
            .copied()
            .cycle()
            .take(1 << 20)
            .collect();
        f.write_all(&pattern)?;
        f.seek(SeekFrom::End(-(1 << 20)))?;
        f.write_all(&pattern)?;
        f.sync_all()?;
    }
    let before = ends(&primary)?;
    let root_len = fs::metadata(img.image.join("root.tar.lzo"))?.len();
    let disk = DiskSpec::virtio("primary", &primary, ImageFormat::Raw, PRIMARY_SERIAL);
    let mut vm = recovery_shell(ctx, deadline, disk, &img)?;
    type_line(
        &vm,
        &format!(
            "printf '\\377' | dd of=/img/images/{}/root.tar.lzo bs=1 seek={} conv=notrunc 2>/dev/null; echo FLIPPED=$?",
            appliance::IMAGE_ID,
            root_len / 2
        ),
    )?;
    vm.wait_for_text(re(r"FLIPPED=0")?, STEP)?;
    let (_, screen, took) = console_restore(&vm, appliance::DISK_MIB)?;
    let failed = "Restore FAILED at step verify:";
    let Some(at) = screen.find(failed) else {
        bail!("the console did not refuse the corrupt image in verify:\n{screen}");
    };
    // The reason is the line under the heading, inside the screen's frame.
    let reason = screen[at + failed.len()..]
        .lines()
        .nth(1)
        .map(|l| {
            l.trim_matches(|c: char| c == '|' || c.is_whitespace())
                .to_string()
        })
        .unwrap_or_default();
    if reason.is_empty() {
        bail!("the refusal gives no reason on the screen:\n{screen}");
    }
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(understudy::init::menu::LINE_RECOVERY, STEP)?;
    vm.send_keys("q")?;
    vm.wait_for_text(re(r"(?m)^/ # ")?, STEP)?;
    power_off(&mut vm)?;
    if ends(&primary)? != before {
        bail!("the target's first or last MiB changed although the image was refused");
    }
    Ok(vec![
        format!(
            "the console refused the corrupt image {} after the serial: \"{failed} {reason}\"",
            secs(took)
        ),
        "the target's first and last MiB are unchanged".into(),
    ])
}
