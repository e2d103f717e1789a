//! `understudy provision` in a VM (a child of `vmtest.rs`, listed in its `SCENARIOS`).
//!
//! `provision-appliance`: the real appliance. The Debian corpus, imaged by
//! `understudy image create` and restored by `understudy restore` onto an LVM-root
//! primary (`restoretest::restored_primary`, cached), boots alone through its own GRUB
//! with a blank `vdb`; at its serial autologin shell our binary
//! (`/usr/local/sbin/understudy`) provisions `vdb` with every default (the
//! appliance's kernel and modules, the recovery initramfs built there), the scenario
//! checks the COW PV in `vg0`, "Recovery" in the primary's menu and the recorded
//! serials, makes an image on the images partition with `understudy image create`,
//! provisions again (update mode, `--initrd` a copy of the built initramfs), verifies
//! the image, powers off, runs `sgdisk -v` on the secondary's image file, and boots the
//! secondary alone under SeaBIOS and under OVMF into PID 1's recovery console.
//!
//! It replaces `provision-fixture`, a stand-in that built an LVM root by script and
//! ran the host's tools in a chroot: what that one checked is checked here on the
//! appliance itself, with provision's defaults where the stand-in had to name the
//! kernel, its modules and the COW size.
//!
//! Does not own: the harness (`qemu/`), the appliance (`appliance.rs`,
//! `restoretest.rs`), provision itself.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Ctx, Firmware, Scenario, expect_poweroff, secs};
use crate::qemu::{DiskSpec, ImageFormat, Key, Machine, MachineSpec};
use crate::run::Cmd;

const PRIMARY_SERIAL: &str = "US-PRIMARY-0001";
const SECONDARY_SERIAL: &str = "US-SECONDARY-0002";
/// From QEMU start to PID 1's screen through GRUB.
const TO_RECOVERY: Duration = Duration::from_secs(180);

/// The secondary alone, through its own GRUB, under SeaBIOS and under OVMF: PID 1's
/// recovery console comes up and shows the primary missing and this secondary.
fn boot_secondary_alone(
    ctx: &Ctx,
    label: &str,
    secondary: &Path,
    deadline: Instant,
) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    for firmware in [Firmware::SeaBios, Firmware::Ovmf] {
        let mut spec = MachineSpec::new(
            &format!("{label}-{}", firmware.name()),
            &ctx.dir,
            firmware,
            ctx.accel,
        );
        spec.memory_mib = 512;
        spec.no_reboot = true;
        spec.deadline = Some(deadline);
        let mut disk = DiskSpec::virtio("secondary", secondary, ImageFormat::Raw, SECONDARY_SERIAL);
        disk.bootindex = Some(1);
        spec.disks.push(disk);
        let mut vm = Machine::start(&spec)?;
        vm.wait_for_text(understudy::init::status::HEADING, TO_RECOVERY)
            .with_context(|| format!("booting the secondary under {}", firmware.name()))?;
        let up = vm.elapsed();
        vm.wait_for_text(understudy::init::menu::LINE, Duration::from_secs(30))?;
        let screen = vm.screen_text();
        if !screen.contains("Primary: MISSING") || !screen.contains(SECONDARY_SERIAL) {
            bail!(
                "{}: PID 1 does not show the primary missing and the secondary:\n{}",
                firmware.name(),
                vm.console().framed_screen()
            );
        }
        vm.send_keys("p")?;
        expect_poweroff(&mut vm)?;
        notes.push(format!(
            "{}: the secondary's GRUB booted PID 1's recovery console at {} (primary MISSING)",
            firmware.name(),
            secs(up)
        ));
    }
    Ok(notes)
}

/// The appliance scenario as a whole: the appliance's boot, two provision runs with
/// the initramfs built in the guest, and two firmware boots, under TCG.
const APPLIANCE_LIMIT: Duration = Duration::from_secs(45 * 60);
/// GRUB, the appliance's kernel and initramfs activating LVM, systemd to the
/// autologin shell.
const APPLIANCE_LOGIN: Duration = Duration::from_secs(480);
/// One `understudy provision` on the appliance: mkfs, two grub-installs, the
/// initramfs built from the appliance's modules, update-grub.
const PROVISION_RUN: Duration = Duration::from_secs(900);
/// A quick command at the appliance's shell.
const SHELL_STEP: Duration = Duration::from_secs(90);
/// The blank secondary: room for the appliance's used bytes twice (emergency copy)
/// and once (images), and the default COW PV (10 %). Sparse.
const APPLIANCE_SECONDARY_MIB: u64 = 8192;
/// The image placed on the images partition between the two runs.
const KEPT_IMAGE: &str = "20261125T000000Z-kept";
/// Its layout: one ext4 filesystem, filled from the appliance's `/etc/default`.
const KEPT_LAYOUT: &str = r#"{"host":"kept","disk":{"size":"256MiB"},"partitions":[{"name":"data","grow":true,"filesystem":{"type":"ext4","mount":"/"}}]}"#;

pub const APPLIANCE: Scenario = Scenario {
    name: "provision-appliance",
    firmware: Firmware::SeaBios,
    run: appliance,
};

fn re(s: &str) -> Result<regex::Regex> {
    regex::Regex::new(s).with_context(|| format!("compiling /{s}/"))
}

/// A qcow2 overlay over the qcow2 `base`, so the cached restored primary stays as
/// it was.
fn qcow2_overlay(base: &Path, overlay: &Path) -> Result<()> {
    let base = base
        .canonicalize()
        .with_context(|| format!("finding {}", base.display()))?;
    if overlay.exists() {
        std::fs::remove_file(overlay).with_context(|| format!("removing {}", overlay.display()))?;
    }
    Cmd::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(overlay)
        .output()
        .map(|_| ())
        .with_context(|| format!("creating an overlay over {}", base.display()))
}

/// What a command typed at the appliance's shell did: its exit code, and the
/// console output from the moment it was typed.
struct Typed {
    rc: i32,
    output: String,
}

/// Types `command; echo NAME=$?` at the appliance's shell and waits until the exit
/// code is printed.
fn shell_step(vm: &Machine, name: &str, command: &str, timeout: Duration) -> Result<Typed> {
    let before = vm.console().log_text()?.len();
    vm.send_keys(&format!("{command}; echo {name}=$?"))?;
    vm.send_key(Key::Enter)?;
    // The typed line shows `NAME=$?`; the answer has digits there.
    let answer = format!(r"{}=(\d+)", regex::escape(name));
    vm.wait_for_text(re(&answer)?, timeout)
        .with_context(|| format!("waiting for {name}"))?;
    let log = vm.console().log_text()?;
    let output = log.get(before..).unwrap_or_default().to_string();
    let rc = re(&answer)?
        .captures_iter(&output)
        .last()
        .with_context(|| format!("no {name}= line in the console log"))?[1]
        .parse()
        .with_context(|| format!("reading {name}"))?;
    Ok(Typed { rc, output })
}

/// Like [`shell_step`], failing unless the command exited with 0; returns its output.
fn shell_ok(vm: &Machine, name: &str, command: &str, timeout: Duration) -> Result<String> {
    let t = shell_step(vm, name, command, timeout)?;
    if t.rc != 0 {
        let lines: Vec<&str> = t.output.lines().map(str::trim_end).collect();
        bail!(
            "`{command}` exited with {} on the appliance; its last lines:\n{}",
            t.rc,
            lines[lines.len().saturating_sub(20)..].join("\n")
        );
    }
    Ok(t.output)
}

/// Prints `NAME=[VALUE]` with VALUE what the shell expression `expr` expands to,
/// and returns VALUE.
fn shell_value(vm: &Machine, name: &str, expr: &str) -> Result<String> {
    let out = shell_ok(
        vm,
        &format!("{name}-RC"),
        &format!("echo {name}=[{expr}]"),
        SHELL_STEP,
    )?;
    // The typed line has `[$(` where the output has the value: no `$` in a value.
    re(&format!(r"{}=\[([^$\]\r\n]*)\]", regex::escape(name)))?
        .captures_iter(&out)
        .last()
        .map(|c| c[1].to_string())
        .with_context(|| format!("no {name}=[...] in the console log"))
}

/// `sgdisk -v` on the host, on the secondary's image file: the appliance has no
/// gdisk, and the bytes checked are the same.
fn sgdisk_verify(image: &Path) -> Result<String> {
    let (code, out, err) = Cmd::new("sgdisk")
        .arg("-v")
        .arg(image)
        .capture()
        .context("running sgdisk -v on the secondary's image")?;
    if code != Some(0) || !out.contains("No problems found") {
        bail!("`sgdisk -v` on the provisioned secondary (exit {code:?}):\n{out}{err}");
    }
    Ok(out
        .lines()
        .find(|l| l.contains("No problems found"))
        .unwrap_or_default()
        .trim()
        .to_string())
}

/// `understudy layout capture` of the live primary (an LVM root, a separate
/// `/boot`): the document must name the GPT, the VG and the `/` and `/boot`
/// filesystems by the UUIDs the image recorded (the restore kept them), and plan back
/// onto the same disk. Returns a note.
fn capture_layout(vm: &Machine) -> Result<String> {
    let img = crate::appliance::image_disk()?;
    let uuids = crate::appliance::primary_fs_uuids(&img)?;
    shell_ok(
        vm,
        "CAPTURE",
        "understudy layout capture /dev/vda --json > /tmp/layout.json && \
         understudy layout plan /tmp/layout.json --size $(blockdev --getsize64 /dev/vda) > /dev/null",
        SHELL_STEP,
    )?;
    let vg = crate::appliance::VG;
    let wanted = [
        ("gpt", r#""type": *"gpt""#.to_string()),
        ("the VG", format!(r#""name": *"{vg}""#)),
        ("/ by UUID", format!(r#""uuid": *"{}""#, uuids.root_fs_uuid)),
        (
            "/boot by UUID",
            format!(r#""uuid": *"{}""#, uuids.boot_fs_uuid),
        ),
        ("the mount point /", r#""mountpoint": *"/""#.to_string()),
        (
            "the mount point /boot",
            r#""mountpoint": *"/boot""#.to_string(),
        ),
    ];
    // A name per step: `shell_step` reads the answer from the log after the typing,
    // and an earlier step's answer is still on the screen.
    for (i, (what, pattern)) in wanted.iter().enumerate() {
        let t = shell_step(
            vm,
            &format!("CAPTURED-{i}"),
            &format!("grep -q '{pattern}' /tmp/layout.json"),
            SHELL_STEP,
        )?;
        if t.rc != 0 {
            bail!("the captured layout of /dev/vda does not name {what} (`{pattern}`)");
        }
    }
    Ok(format!(
        "`understudy layout capture /dev/vda --json` on the live appliance names the GPT, {vg}, \
         / ({}) and /boot ({}) as the image recorded them, and `layout plan` fits it back onto \
         the same disk",
        uuids.root_fs_uuid, uuids.boot_fs_uuid
    ))
}

/// The real appliance: the Debian corpus, imaged by `understudy image create` and
/// restored by `understudy restore` onto an LVM-root primary (`restoretest.rs`),
/// booted alone through its own GRUB with a blank secondary beside it. From its
/// serial autologin shell: `understudy provision --secondary /dev/vdb --yes`
/// (building the recovery initramfs from the appliance's own kernel modules), the
/// COW PV checked in the root's VG `vg0`, "Recovery" in the primary's grub.cfg, an
/// image made with `understudy image create` on the images partition, provision
/// again (update mode), the image verified; then `sgdisk -v` of the secondary, and
/// the secondary alone booted under SeaBIOS and OVMF into the recovery console.
fn appliance(ctx: &Ctx) -> Result<Vec<String>> {
    let deadline = Instant::now() + APPLIANCE_LIMIT;
    let (base, mut notes) = super::restoretest::restored_primary(ctx, false)?;
    let primary = ctx.dir.join("primary.qcow2");
    qcow2_overlay(&base, &primary)?;
    let secondary = ctx.blank("secondary.raw", APPLIANCE_SECONDARY_MIB)?;

    let mut spec = ctx.spec();
    spec.deadline = Some(deadline);
    spec.memory_mib = 1024;
    spec.cpus = 2;
    spec.bios_on_serial = true;
    let mut disk = DiskSpec::virtio("primary", &primary, ImageFormat::Qcow2, PRIMARY_SERIAL);
    disk.bootindex = Some(1);
    spec.disks.push(disk);
    spec.disks.push(DiskSpec::virtio(
        "secondary",
        &secondary,
        ImageFormat::Raw,
        SECONDARY_SERIAL,
    ));
    let mut vm = Machine::start(&spec)?;
    vm.wait_for_text(re(r"(?m)root@appliance:~# ?$")?, APPLIANCE_LOGIN)
        .context("booting the restored appliance to its autologin shell")?;
    notes.push(format!(
        "the restored appliance booted to its autologin shell at {}",
        secs(vm.elapsed())
    ));
    // Kernel messages would interleave with the commands' output.
    shell_ok(&vm, "QUIET", "dmesg -n 1", SHELL_STEP)?;
    let root = shell_value(&vm, "ROOT", "$(findmnt -no SOURCE /)")?;
    if root != format!("/dev/mapper/{}-root", crate::appliance::VG) {
        bail!("the appliance runs from {root}, not its root LV");
    }
    notes.push(capture_layout(&vm)?);

    let started = Instant::now();
    let dry = shell_ok(
        &vm,
        "DRY-RUN",
        "understudy provision --secondary /dev/vdb --yes --dry-run",
        SHELL_STEP,
    )?;
    if let Some(l) = dry.lines().find(|l| l.contains("this system lacks")) {
        bail!("the appliance lacks what provision runs: {}", l.trim());
    }
    if !dry.contains("mode: fresh") {
        bail!("the dry run did not plan a fresh layout of the blank secondary");
    }
    let first = shell_ok(
        &vm,
        "PROVISION-1",
        "understudy provision --secondary /dev/vdb --yes",
        PROVISION_RUN,
    )?;
    for want in [
        "provision: built the recovery initramfs for",
        "provision: installed GRUB for BIOS (i386-pc)",
        "provision: installed GRUB for UEFI",
        "provision: added \"Recovery\" to the primary's GRUB menu",
        "provision: /dev/vdb is the secondary disk (laid out afresh)",
    ] {
        if !first.contains(want) {
            bail!("the first provision run did not say {want:?}");
        }
    }
    notes.push(format!(
        "provision (fresh, initramfs built from the appliance's modules) exit 0 in {}",
        secs(started.elapsed())
    ));
    // The appliance has no gdisk: the host checks the image file, the guest's writes
    // flushed (QEMU writes through the host's page cache; sgdisk -v only reads).
    shell_ok(&vm, "SYNC-1", "sync", SHELL_STEP)?;
    let clean_1 = sgdisk_verify(&secondary)?;
    let vg = crate::appliance::VG;
    let pv = shell_value(
        &vm,
        "PV-1",
        "$(lvm pvs --noheadings --separator , -o pv_name,vg_name /dev/vdb6 | tr -d ' ')",
    )?;
    if pv != format!("/dev/vdb6,{vg}") {
        bail!("after provisioning, pvs says {pv:?} for /dev/vdb6, not in {vg}");
    }
    let vgs = shell_value(
        &vm,
        "VG-1",
        &format!("$(lvm vgs --noheadings --separator , -o vg_name,pv_count {vg} | tr -d ' ')"),
    )?;
    if vgs != format!("{vg},2") {
        bail!("after provisioning, vgs says {vgs:?}, not 2 PVs in {vg}");
    }
    let entries = shell_value(
        &vm,
        "RECOVERY-ENTRIES",
        "$(grep -c 'menuentry \"Recovery\"' /boot/grub/grub.cfg)",
    )?;
    if entries != "1" {
        bail!("the primary's grub.cfg has {entries} \"Recovery\" entries, not 1");
    }
    for (name, role, serial) in [
        ("RECORDED-PRIMARY", "primary", PRIMARY_SERIAL),
        ("RECORDED-SECONDARY", "secondary", SECONDARY_SERIAL),
    ] {
        shell_ok(
            &vm,
            name,
            &format!(
                "tr -d ' \\n' < /etc/understudy/disks.json | \
                 grep -q '\"{role}\":{{[^}}]*\"serial\":\"{serial}\"'"
            ),
            SHELL_STEP,
        )
        .with_context(|| {
            format!("/etc/understudy/disks.json does not record {serial} as the {role}")
        })?;
    }
    notes.push(format!(
        "sgdisk -v: {clean_1}; pvs: /dev/vdb6 in {vg}; vgs: {vgs}; \"Recovery\" once in the \
         primary's grub.cfg; both serials recorded"
    ));

    shell_ok(
        &vm,
        "IMAGE-CREATE",
        &format!(
            "printf '%s' '{KEPT_LAYOUT}' > /tmp/kept.json && mount /dev/vdb5 /mnt && \
             understudy image create --layout /tmp/kept.json --tree /=/etc/default --id {KEPT_IMAGE} /mnt; \
             r=$?; umount /mnt && (exit $r)"
        ),
        SHELL_STEP,
    )?;
    // The second run installs a ready initramfs (`--initrd`): a copy of the one the
    // first run built, so both ways are used and the firmware boots below still
    // boot an initramfs built on the appliance.
    shell_ok(
        &vm,
        "INITRD-COPY",
        &format!(
            "mount -o ro /dev/vdb3 /mnt && cp /mnt{} /root/recovery-initrd.img; \
             r=$?; umount /mnt && (exit $r)",
            understudy::boot::RECOVERY_INITRD_PATH
        ),
        SHELL_STEP,
    )?;
    let started = Instant::now();
    let second = shell_ok(
        &vm,
        "PROVISION-2",
        "understudy provision --secondary /dev/vdb --yes --initrd /root/recovery-initrd.img",
        PROVISION_RUN,
    )?;
    for want in [
        "mode: update",
        "provision: installed the recovery initramfs from /root/recovery-initrd.img",
        "provision: the COW PV is already in volume group",
        "provision: /dev/vdb is the secondary disk (updated, images kept)",
    ] {
        if !second.contains(want) {
            bail!("the second provision run did not say {want:?}");
        }
    }
    shell_ok(
        &vm,
        "INITRD-SAME",
        &format!(
            "mount -o ro /dev/vdb3 /mnt && cmp /mnt{} /root/recovery-initrd.img; \
             r=$?; umount /mnt && (exit $r)",
            understudy::boot::RECOVERY_INITRD_PATH
        ),
        SHELL_STEP,
    )
    .context("the second run did not install the initramfs given with --initrd")?;
    notes.push(format!(
        "provision again (update, --initrd a copy of the built one) exit 0 in {}; \
         the recovery partition has that initramfs",
        secs(started.elapsed())
    ));
    shell_ok(
        &vm,
        "IMAGE-VERIFY",
        &format!(
            "mount -o ro /dev/vdb5 /mnt && understudy image verify /mnt/{KEPT_IMAGE}; \
             r=$?; umount /mnt && (exit $r)"
        ),
        SHELL_STEP,
    )
    .context("the image placed before the second run is gone or damaged")?;
    let listed = shell_value(
        &vm,
        "IMAGES",
        "$(mount -o ro /dev/vdb5 /mnt && ls /mnt | grep -v lost+found; umount /mnt)",
    )?;
    if listed != KEPT_IMAGE {
        bail!("the images partition holds {listed:?} after the second run");
    }
    let pv = shell_value(
        &vm,
        "PV-2",
        "$(lvm pvs --noheadings --separator , -o pv_name,vg_name /dev/vdb6 | tr -d ' ')",
    )?;
    if pv != format!("/dev/vdb6,{vg}") {
        bail!("after the second run, pvs says {pv:?} for /dev/vdb6");
    }
    notes.push(format!(
        "image {KEPT_IMAGE} (made by `understudy image create` on the images partition) \
         verified after the second run; /dev/vdb6 still in {vg}"
    ));
    vm.send_keys("poweroff")?;
    vm.send_key(Key::Enter)?;
    let down = vm.wait_shutdown(Duration::from_secs(180))?;
    if down.reason.as_deref() != Some("guest-shutdown") && !down.status.success() {
        bail!("the appliance did not power off cleanly: {:?}", down.reason);
    }
    drop(vm);
    notes.push(format!(
        "sgdisk -v of the secondary after both runs: {}",
        sgdisk_verify(&secondary)?
    ));
    notes.extend(boot_secondary_alone(
        ctx,
        "provision-appliance",
        &secondary,
        deadline,
    )?);
    Ok(notes)
}
