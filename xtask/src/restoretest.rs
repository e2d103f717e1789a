//! VM scenarios for the restore (issue 5), through the real boot chain: the test
//! appliance's image (`appliance.rs`: the Debian corpus, made into an image by
//! `understudy image create`, layout `/boot` + LVM root + swap) at the root of the
//! images filesystem of a secondary built by `images.rs` (GRUB for BIOS, the menu
//! rendered by `understudy::boot`, the environment block saying the emergency copy is
//! not ready, the release recovery kernel and initramfs of `target/recovery/`, the
//! recorded identities naming the primary that died). The machine boots the secondary
//! first under SeaBIOS with a blank replacement disk (a new serial) in the primary's
//! slot: GRUB finds no primary and boots the recovery console in automatic mode (its
//! `primary absent` line is checked), PID 1 starts the console, whose status screen
//! must name the blank disk as the replacement candidate; the console is then driven
//! by keys over the serial line as a technician would (image, target (the secondary
//! never offered), the plan naming the target's model, serial and size, the serial
//! typed, the progress to its result). `r` on the result screen reboots the same
//! QEMU (no `-no-reboot`): SeaBIOS boots the secondary again, its GRUB now finds the
//! restored primary (`primary present`) and chainloads its MBR by default, and the
//! restored Debian comes up to a login on ttyS0 with `/` on the root LV and swap on.
//! After a power-off, the restored disk is checked from the recovery shell of a new,
//! direct boot with a separate image disk at `/img` (the test's inspection, not the
//! product path: `sgdisk -v`, `e2fsck -fn`, every path and every file's MD5 against
//! the image's trees, the root LV's size fit).
//! Same size, larger, smaller-but-enough, and a corrupt image (a byte flipped in the
//! secondary's copy of the root archive, never in the cache) refused in verify with
//! the reason on the console's screen, the target's ends untouched.
//! [`restored_primary`] caches the same-size primary, as the console's restore left
//! it before its first boot, as a qcow2 base image for other scenarios.
//!
//! A child module of `vmtest.rs`. Does not own the harness (`qemu/`), the secondary's
//! image (`images.rs`), the appliance image (`appliance.rs`) or the console's text
//! (`understudy::console::view`, `understudy::recovery::situation`).

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Ctx, Firmware, Scenario, secs};
use crate::appliance::{self, ImageDisk};
use crate::images::{self, SecondarySpec};
use crate::qemu::{DirectBoot, DiskSpec, ImageFormat, Key, Machine, MachineSpec};
use crate::run::Cmd;
use crate::target_dir;
use understudy::boot::{self, Env};
use understudy::console::view::RESTORE_TITLE;
use understudy::disk::Bytes;
use understudy::layout::{Bytes as LayoutBytes, MIB};

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
pub const LVM_PRIMARY_FLOPPY: Scenario = Scenario {
    name: "grub-lvm-primary-floppy",
    firmware: Firmware::SeaBios,
    run: lvm_primary_floppy,
};

/// These scenarios restore 800 MB under TCG: their own bound, not the harness's.
const LIMIT: Duration = Duration::from_secs(20 * 60);
/// From QEMU start to the recovery image's first screen, direct boot.
const BOOT: Duration = Duration::from_secs(120);
/// From QEMU start to the console's first screen through SeaBIOS and GRUB (the
/// menu's fallback timeout, the kernel and initramfs read through the BIOS).
const CHAIN_BOOT: Duration = Duration::from_secs(300);
const STEP: Duration = Duration::from_secs(60);
/// Verify, partition, mkfs, extract, grub-install in a chroot, sync.
const RESTORE: Duration = Duration::from_secs(900);
const CHECKS: Duration = Duration::from_secs(600);
/// SeaBIOS, the secondary's GRUB and its menu timeout, the primary's GRUB, the
/// kernel, the appliance's initramfs activating LVM, systemd to a getty.
const LOGIN: Duration = Duration::from_secs(420);

const TITLE: &str = understudy::init::status::HEADING;
const MENU: &str = understudy::init::menu::LINE;
const APPEND: &str = "console=ttyS0 panic=-1 quiet";
/// The primary that died, as the secondary recorded it.
const RECORDED_SERIAL: &str = "US-PRIMARY-0001";
/// The blank replacement disk in the primary's slot.
const TARGET_SERIAL: &str = "US-REPLACEMENT-0003";
const SECONDARY_SERIAL: &str = "US-SECONDARY-0002";
/// The image disk of the checks' boot.
const IMAGES_SERIAL: &str = "US-IMAGES-0004";
/// What the status screen says of the disk in the primary's slot (vda), followed by
/// how it reads: `blank` (all zeros), `has other data` (the corrupt scenario's
/// pattern).
const REPLACEMENT_LINE: &str = "Primary: MISSING; replacement candidate: vda";
/// Automatic mode's line, up to where an 80-column screen wraps it.
const AUTO_LINE: &str = "Automatic mode (understudy.mode=auto): the emergency copy is not ready:";

fn re(s: &str) -> Result<regex::Regex> {
    Ok(regex::Regex::new(s)?)
}

/// The recovery kernel and initramfs (`cargo xtask initramfs`).
fn recovery_initrd() -> Result<(PathBuf, PathBuf)> {
    let dir = target_dir().join("recovery");
    let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initrd.img"));
    for f in [&kernel, &initrd] {
        if !f.is_file() {
            bail!(
                "{} is missing: run `cargo xtask initramfs` first",
                f.display()
            );
        }
    }
    Ok((kernel, initrd))
}

fn spec(ctx: &Ctx, deadline: Instant) -> MachineSpec {
    let mut spec = ctx.spec();
    spec.deadline = Some(deadline);
    spec.memory_mib = 1024;
    spec.cpus = 2;
    spec
}

/// Files removed when the scenario is done with them, or fails: the secondary and
/// its images tree are hundreds of MB each.
struct Scratch(Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = if p.is_dir() {
                fs::remove_dir_all(p)
            } else {
                fs::remove_file(p)
            };
        }
    }
}

/// The secondary of a restore scenario (`ctx.dir/secondary.raw`) and what it took.
pub(super) struct Secondary {
    pub(super) disk: PathBuf,
    /// Removes the disk when dropped.
    _scratch: Scratch,
    pub(super) notes: Vec<String>,
}

/// Builds the scenario's secondary: the appliance image at the images filesystem's
/// root (corrupted when asked), the emergency filesystem from `emergency_root` when
/// given (else the recovery kernel and initrd as stand-ins), the emergency copy not
/// ready, the dead primary
/// (`RECORDED_SERIAL`, the image's disk size) and this secondary recorded, GRUB's
/// menu naming the image's filesystems as the primary's.
pub(super) fn secondary(
    ctx: &Ctx,
    img: &ImageDisk,
    corrupt: bool,
    emergency_root: Option<PathBuf>,
) -> Result<Secondary> {
    let started = Instant::now();
    let (kernel, initrd) = recovery_initrd()?;
    let tree = ctx.dir.join("images-tree");
    let work = ctx.dir.join("work-secondary");
    let disk = ctx.dir.join("secondary.raw");
    // The tree and the work directory (the filesystems' files) go once the disk is
    // built; the disk when the scenario ends.
    let _build = Scratch(vec![tree.clone(), work.clone()]);
    let scratch = Scratch(vec![disk.clone()]);
    let size = appliance::images_partition(appliance::images_tree(img, &tree, corrupt)?)?;
    let mut menu = images::test_boot();
    menu.primary = Some(appliance::primary_fs_uuids(img)?);
    let env = boot::encode(&Env::with_emergency(None))?.to_vec();
    let bytes = images::secondary_bytes_with(size);
    images::build_secondary(&SecondarySpec {
        work: work.clone(),
        output: disk.clone(),
        boot: menu,
        recovery_kernel: kernel.clone(),
        recovery_initrd: initrd.clone(),
        // Not ready: never booted; any kernel and initrd fill the partition.
        emergency_kernel: kernel,
        emergency_initrd: initrd,
        env_a: Some(env.clone()),
        env_b: Some(env),
        next_entry: None,
        recorded: Some(images::recorded_virtio(
            (
                RECORDED_SERIAL,
                LayoutBytes(appliance::DISK_MIB.checked_mul(MIB).context("disk size")?),
            ),
            (SECONDARY_SERIAL, bytes),
        )),
        images: Some((tree.clone(), size)),
        emergency_root,
    })
    .context("building the secondary")?;
    let notes = vec![format!(
        "secondary built in {}: {} MiB, the image at the root of its {} MiB US-IMAGES filesystem{}, \
         emergency copy not ready, the release recovery kernel and initramfs",
        secs(started.elapsed()),
        bytes.0 / MIB,
        size.0 / MIB,
        if corrupt {
            " (root.tar.lzo a copy with its middle byte flipped)"
        } else {
            ""
        }
    )];
    Ok(Secondary {
        disk,
        _scratch: scratch,
        notes,
    })
}

/// SeaBIOS with the secondary first in the boot order and `primary` in the primary's
/// slot (vda); a guest reboot resets the machine instead of ending QEMU. With
/// `floppy`, an empty floppy drive too (see [`lvm_primary_floppy`]).
fn chain_machine(
    ctx: &Ctx,
    deadline: Instant,
    secondary: &Path,
    mut primary: DiskSpec,
    floppy: bool,
) -> Result<Machine> {
    let mut s = spec(ctx, deadline);
    s.no_reboot = false;
    if floppy {
        s.extra_args
            .extend(["-drive", "if=floppy,index=0"].map(String::from));
    }
    primary.bootindex = Some(2);
    let mut d = DiskSpec::virtio("secondary", secondary, ImageFormat::Raw, SECONDARY_SERIAL);
    d.bootindex = Some(1);
    s.disks = vec![primary, d];
    Machine::start(&s)
}

/// A blank replacement disk (a new serial) for [`chain_machine`].
fn replacement(target: &Path) -> DiskSpec {
    DiskSpec::virtio("primary", target, ImageFormat::Raw, TARGET_SERIAL)
}

/// The last whole line of the console log containing `what`, escape sequences cut.
fn log_line(vm: &Machine, what: &str) -> Result<String> {
    let log = vm.console().log_text()?;
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains(what))
        .with_context(|| format!("no {what:?} in the console log"))?;
    let esc = re(r"\x1b\[[0-9;?]*[A-Za-z]")?;
    Ok(esc.replace_all(line, "").trim().to_string())
}

/// From QEMU start: GRUB's automatic choice with the primary absent, then the
/// recovery console that PID 1 started, its status screen naming the disk in the
/// primary's slot as the replacement candidate (`state`: how it reads), automatic
/// mode waiting, the appliance image listed. Returns notes.
fn console_first_screen(vm: &Machine, state: &str) -> Result<Vec<String>> {
    let grub = re(r"understudy: emergency_ready=0 \(env copy a\), primary absent")?;
    vm.wait_for_text(grub, CHAIN_BOOT)?;
    let grub_at = vm.elapsed();
    let grub_line = log_line(vm, "understudy: emergency_ready=")?;
    vm.wait_for_text(understudy::init::menu::LINE_RECOVERY, CHAIN_BOOT)?;
    let console_at = vm.elapsed();
    let newest = format!("Newest image: {}", appliance::IMAGE_ID);
    let replacement = format!("{REPLACEMENT_LINE} ({state})");
    for want in [replacement.as_str(), AUTO_LINE, newest.as_str()] {
        vm.wait_for_text(want, STEP)?;
    }
    if !vm.screen_text().contains(TITLE) {
        bail!(
            "the console's status screen has no {TITLE:?} heading:\n{}",
            vm.console().framed_screen()
        );
    }
    Ok(vec![
        format!(
            "SeaBIOS booted the secondary; its GRUB said \"{grub_line}\" {} after QEMU start",
            secs(grub_at)
        ),
        format!(
            "the recovery console (started by PID 1, automatic mode) on screen {} after QEMU start: \
             \"{replacement}\", \"{newest}\"",
            secs(console_at)
        ),
    ])
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

/// The console's restore of the appliance image onto the blank replacement (vda),
/// from its status screen, driven by keys over the serial line as a technician
/// would: the image chosen, the blank disk chosen (the secondary must not be
/// offered), the plan naming the target's model, serial and size, the serial typed,
/// then the progress until a result. Returns the plan's line naming the target, the
/// result screen and how long the restore ran.
fn console_restore(vm: &Machine, mib: u64) -> Result<(String, String, Duration)> {
    vm.send_keys("t")?;
    vm.wait_for_text(format!("{RESTORE_TITLE} 1/4"), STEP)?;
    vm.wait_for_text(format!("> {}", appliance::IMAGE_ID), STEP)?;
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(format!("{RESTORE_TITLE} 2/4"), STEP)?;
    vm.wait_for_text(format!("serial {TARGET_SERIAL}"), STEP)?;
    if vm.screen_text().contains(SECONDARY_SERIAL) {
        bail!(
            "the secondary is offered as a target:\n{}",
            vm.console().framed_screen()
        );
    }
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(format!("{RESTORE_TITLE} 3/4"), STEP)?;
    let size = Bytes(mib << 20).human();
    let named = re(&format!(
        r"model [^,]+, serial {TARGET_SERIAL}, size {}",
        regex::escape(&size)
    ))?;
    vm.wait_for_text(named.clone(), STEP)?;
    let plan = named
        .find(&vm.screen_text())
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    vm.send_key(Key::Enter)?;
    vm.wait_for_text("Type the disk's serial number", STEP)?;
    vm.send_keys(TARGET_SERIAL)?;
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(format!("{RESTORE_TITLE}: in progress"), STEP)?;
    let started = Instant::now();
    vm.wait_for_text(
        re(r"Restore complete|Restore FAILED|Restore cancelled")?,
        RESTORE,
    )?;
    let took = started.elapsed();
    // The result's lines arrive over 115200 baud: wait for its keys line.
    vm.wait_for_text(re(r"\[Enter\]")?, STEP)?;
    Ok((plan, vm.console().framed_screen(), took))
}
/// An overlay over the image disk (the checks' `check.sh` and expectations), so that
/// mounting it leaves the cached disk as it was.
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
        initrd: Some(recovery_initrd()?.1),
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
    // background (`init::modload::ALWAYS`): the checks need ext4 and dm-mod.
    type_line(
        vm,
        "i=0; until grep -qw ext4 /proc/filesystems && [ -d /sys/module/dm_mod ] && [ -b /dev/vdb ] \
         || [ $i -ge 120 ]; do i=$((i+1)); sleep 1; done; \
         mkdir -p /img && mount -t ext4 /dev/vdb /img && echo IMG-MOUNTED=$?",
    )?;
    vm.wait_for_text(re(r"IMG-MOUNTED=0")?, BOOT + STEP)?;
    Ok(())
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

/// A qcow2 copy of the raw `target` while the machine using it is up (`-U`: QEMU
/// holds its lock), taken on the console's result screen: the disk as the restore
/// left it, before anything boots from it.
fn snapshot(target: &Path, out: &Path) -> Result<Duration> {
    let started = Instant::now();
    let tmp = out.with_extension("qcow2.tmp");
    let _ = fs::remove_file(&tmp);
    Cmd::new("qemu-img")
        .args(["convert", "-U", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(target)
        .arg(&tmp)
        .output()
        .with_context(|| format!("copying the restored {} to qcow2", target.display()))?;
    fs::rename(&tmp, out).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(started.elapsed())
}

/// Waits for the autologin shell on ttyS0, checks that `/` is the LVM root and swap
/// is on, and powers off. Returns when `login:` came (QEMU time) and the root.
fn logged_in(vm: &mut Machine) -> Result<(Duration, String)> {
    vm.wait_for_text(re(r"login:")?, LOGIN)?;
    let login_at = vm.elapsed();
    vm.wait_for_text(re(r"(?m)root@appliance:~# ?$")?, STEP)?;
    type_line(
        vm,
        "echo BOOTED-ROOT=$(findmnt -no SOURCE /) BOOTED-SWAPS=$(swapon --noheadings --show=NAME | wc -l)",
    )?;
    vm.wait_for_text(re(r"BOOTED-SWAPS=\d")?, STEP)?;
    let root = marker(vm, "BOOTED-ROOT")?;
    let swaps = marker(vm, "BOOTED-SWAPS")?;
    if root != "/dev/mapper/vg0-root" || swaps != "1" {
        bail!("the restored system runs from {root} with {swaps} swap area(s)");
    }
    type_line(vm, "poweroff")?;
    let down = vm.wait_shutdown(Duration::from_secs(120))?;
    if down.reason.as_deref() == Some("guest-reset") {
        bail!("`poweroff` in the restored system reset the machine");
    }
    Ok((login_at, root))
}

/// Restores the appliance image onto a blank replacement of `mib` MiB through the
/// real chain (SeaBIOS, the secondary's GRUB, PID 1's recovery console, its keys),
/// copies the restored disk to `ctx.dir/restored.qcow2` on the result screen, reboots
/// with `r` into the primary through the secondary's GRUB to a login, powers off,
/// and checks the copy from the recovery shell of a new boot. Returns the copy.
fn restore_onto(ctx: &Ctx, deadline: Instant, mib: u64) -> Result<(PathBuf, Vec<String>)> {
    let img = appliance::image_disk()?;
    let sec = secondary(ctx, &img, false, None)?;
    let mut notes = sec.notes.clone();
    let target = ctx.blank("primary.raw", mib)?;
    let target_scratch = Scratch(vec![target.clone()]);
    let mut vm = chain_machine(ctx, deadline, &sec.disk, replacement(&target), false)?;
    notes.extend(console_first_screen(&vm, "blank")?);
    let (plan, screen, took) = console_restore(&vm, mib)?;
    let complete = format!("Restore complete: {} is on vda", appliance::IMAGE_ID);
    if !screen.contains(&complete) || !screen.contains("[r] reboot into the primary") {
        bail!("the console's restore did not complete:\n{screen}");
    }
    notes.push(format!(
        "console plan named the target: {plan}; its serial typed"
    ));
    notes.push(format!(
        "console restore onto {mib} MiB: \"{complete}\" on screen {} after the serial",
        secs(took)
    ));
    let restored = ctx.dir.join("restored.qcow2");
    let copied = snapshot(&target, &restored)?;
    notes.push(format!(
        "the restored disk copied to qcow2 on the result screen, before any boot ({})",
        secs(copied)
    ));

    // `r`: the same QEMU resets; SeaBIOS boots the secondary, whose GRUB now finds
    // the primary and chainloads its MBR by default after the menu's timeout.
    vm.clear_screen();
    vm.send_keys("r")?;
    vm.wait_for_text("rebooting", STEP)?;
    let asked = vm.elapsed();
    let present = re(r"understudy: emergency_ready=0 \(env copy a\), primary present")?;
    vm.wait_for_text(present, CHAIN_BOOT)?;
    let grub_at = vm.elapsed();
    let grub_line = log_line(&vm, "primary present")?;
    vm.wait_for_text(boot::TITLE_PRIMARY, STEP)?;
    let (login_at, root) = logged_in(&mut vm)?;
    drop(vm);
    notes.push(format!(
        "`r` on the result screen: the same QEMU reset; the secondary's GRUB said \"{grub_line}\" {} \
         later, defaulted to \"{}\" and chainloaded the primary",
        secs(grub_at.saturating_sub(asked)),
        boot::TITLE_PRIMARY
    ));
    notes.push(format!(
        "the restored Debian reached login: on ttyS0 {} after `r`; / is {root}, swap on; powered off",
        secs(login_at.saturating_sub(asked))
    ));
    // The booted disk and the secondary are done with.
    drop(target_scratch);
    drop(sec);

    // The checks, on an overlay of the copy taken before the boot.
    let overlay = ctx.dir.join("checked.qcow2");
    qcow2_overlay(&restored, &overlay)?;
    let _overlay_scratch = Scratch(vec![overlay.clone()]);
    let disk = DiskSpec::virtio("primary", &overlay, ImageFormat::Qcow2, TARGET_SERIAL);
    let mut vm = recovery_shell(ctx, deadline, disk, &img)?;
    notes.extend(checks(&vm)?);
    notes.push(root_lv_fits(&vm, &img, mib)?);
    power_off(&mut vm)?;
    Ok((restored, notes))
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
    let (login_at, root) = logged_in(&mut vm)?;
    Ok(vec![format!(
        "the cached primary booted alone to a login on ttyS0 in {}; / is {root}, swap on",
        secs(login_at)
    )])
}

/// `target/vm/appliance/primary.qcow2`: the appliance restored onto a blank 2 GiB
/// disk by the recovery console through the boot chain (GPT, BIOS boot, ext4 /boot,
/// VG vg0 with an ext4 root LV and swap, GRUB installed), copied before its first
/// boot, for scenarios that need "a VM booted from a primary with an LVM root": use
/// it as the base of a qcow2 overlay (`qemu-img create -f qcow2 -F qcow2 -b BASE`).
/// Restored here when missing, made from another image disk, or `fresh`; returns the
/// restore's notes then.
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
    let (restored, mut notes) = restore_onto(ctx, Instant::now() + LIMIT, appliance::DISK_MIB)?;
    fs::rename(&restored, &base)
        .with_context(|| format!("renaming {} to {}", restored.display(), base.display()))?;
    fs::write(&stamp, &current).with_context(|| format!("writing {}", stamp.display()))?;
    notes.push(format!("cached as {}", base.display()));
    Ok((base, notes))
}

/// A qcow2 overlay over a qcow2 base.
pub(super) fn qcow2_overlay(base: &Path, overlay: &Path) -> Result<()> {
    let _ = fs::remove_file(overlay);
    Cmd::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(base.canonicalize()?)
        .arg(overlay)
        .output()
        .map(|_| ())
        .context("creating an overlay over the restored primary")
}

/// The recorded primary's disk: a qcow2 overlay over the restored primary `base`,
/// removed when the returned guard goes.
fn primary_overlay(ctx: &Ctx, base: &Path) -> Result<(DiskSpec, Scratch)> {
    let overlay = ctx.dir.join("primary.qcow2");
    qcow2_overlay(base, &overlay)?;
    let disk = DiskSpec::virtio("primary", &overlay, ImageFormat::Qcow2, RECORDED_SERIAL);
    Ok((disk, Scratch(vec![overlay])))
}

fn same_size(ctx: &Ctx) -> Result<Vec<String>> {
    let deadline = Instant::now() + LIMIT;
    // Cached before its first boot; booting an overlay of the cached base proves
    // what other scenarios start from.
    let (base, mut notes) = restored_primary(ctx, true)?;
    let (disk, _scratch) = primary_overlay(ctx, &base)?;
    notes.extend(boot_restored(ctx, deadline, disk)?);
    Ok(notes)
}

fn other_size(ctx: &Ctx, mib: u64) -> Result<Vec<String>> {
    let deadline = Instant::now() + LIMIT;
    let (restored, notes) = restore_onto(ctx, deadline, mib)?;
    fs::remove_file(&restored).with_context(|| format!("removing {}", restored.display()))?;
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

/// A byte flipped in the middle of the secondary's copy of the root archive: the
/// console, booted through the chain, refuses the restore in `verify` with the
/// reason on its screen, and the target's first and last MiB (filled with a pattern)
/// are unchanged.
fn corrupt(ctx: &Ctx) -> Result<Vec<String>> {
    let deadline = Instant::now() + LIMIT;
    let img = appliance::image_disk()?;
    let sec = secondary(ctx, &img, true, None)?;
    let mut notes = sec.notes.clone();
    let primary = ctx.blank("primary.raw", appliance::DISK_MIB)?;
    let _scratch = Scratch(vec![primary.clone()]);
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
    let mut vm = chain_machine(ctx, deadline, &sec.disk, replacement(&primary), false)?;
    notes.extend(console_first_screen(&vm, "has other data")?);
    let (_, screen, took) = console_restore(&vm, appliance::DISK_MIB)?;
    let failed = "Restore FAILED at step verify:";
    let Some(at) = screen.find(failed) else {
        bail!("the console did not refuse the corrupt image in verify:\n{screen}");
    };
    // The reason is the paragraph under the heading, inside the screen's frame,
    // wrapped at 80 columns: read it as one line.
    let reason = screen[at + failed.len()..]
        .lines()
        .skip(1)
        .map(|l| l.trim_matches(|c: char| c == '|' || c.is_whitespace()))
        .take_while(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if !reason.contains("root.tar.lzo") {
        bail!("the refusal does not name the damaged archive on the screen:\n{screen}");
    }
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(understudy::init::menu::LINE_RECOVERY, STEP)?;
    vm.send_keys("p")?;
    let down = vm.wait_shutdown(STEP)?;
    if down.reason.as_deref() != Some("guest-shutdown") {
        bail!(
            "`p` on the console's status screen did not power off: QEMU ended with {:?}",
            down.reason
        );
    }
    drop(vm);
    if ends(&primary)? != before {
        bail!("the target's first or last MiB changed although the image was refused");
    }
    notes.push(format!(
        "the console refused the corrupt image {} after the serial: \"{failed} {reason}\"",
        secs(took)
    ));
    notes.push("`p` powered off; the target's first and last MiB are unchanged".into());
    Ok(notes)
}

/// The secondary's GRUB with the restored appliance (root on an LV) as the primary and
/// an empty floppy drive, as a BMC's virtual floppy on a real server. GRUB 2.06's
/// `search --no-floppy` ends its device walk at the first floppy drive, before the
/// LVM volumes are scanned, so the secondary once took this primary for absent and
/// fell back (the demo, whose QEMU has a default floppy drive, showed it);
/// `boot::render_grub_cfg` searches again without `--no-floppy`. Must say "primary
/// present", after reading the floppy drive (its error line proves the drive is there
/// and the second search ran). Linux is not booted: Debian's udev on an empty
/// emulated floppy drive can stall its boot past any bound here.
fn lvm_primary_floppy(ctx: &Ctx) -> Result<Vec<String>> {
    let deadline = Instant::now() + LIMIT;
    let (base, mut notes) = restored_primary(ctx, false)?;
    let (primary, _scratch) = primary_overlay(ctx, &base)?;
    let img = appliance::image_disk()?;
    let sec = secondary(ctx, &img, false, None)?;
    notes.extend(sec.notes.iter().cloned());
    let vm = chain_machine(ctx, deadline, &sec.disk, primary, true)?;
    vm.wait_for_text(
        re(r"understudy: emergency_ready=0 \(env copy a\), primary present")?,
        CHAIN_BOOT,
    )?;
    let at = vm.elapsed();
    let floppy = "failure reading sector 0x0 from `fd0'";
    let log = vm.console().log_text()?;
    if !log.contains(floppy) {
        bail!("GRUB never read a floppy drive (is there one?): no {floppy:?} in the console log");
    }
    notes.push(format!(
        "with an empty floppy drive, the secondary's GRUB read it ({floppy:?}) and said \"{}\" {} after QEMU start",
        log_line(&vm, "understudy: emergency_ready=")?,
        secs(at)
    ));
    Ok(notes)
}
