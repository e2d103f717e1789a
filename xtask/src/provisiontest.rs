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
//! `provision-fixture`: a stand-in for the appliance. Debian's kernel boots a busybox
//! initramfs that mounts the host's root read-only over 9p, partitions a blank primary
//! (`vda`: BIOS boot, an ext4 `/boot`, a PV of VG `appvg` holding LV `root`), copies
//! the host's `/etc` into that root, binds the host's `/usr` (the real tools: lvm,
//! mke2fs, mkfs.vfat, grub-install, update-grub) and `chroot`s into it, so that the
//! running root is an LV and `vda` the boot disk, as on the appliance. There our
//! static binary provisions the blank `vdb` (a prebuilt initramfs first, then one
//! built from the guest kernel's modules), with the same checks and firmware boots.
//!
//! Does not own: the harness (`qemu/`), the appliance (`appliance.rs`,
//! `restoretest.rs`), provision itself.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Ctx, Firmware, Scenario, expect_poweroff, secs};
use crate::qemu::{DiskSpec, ImageFormat, Key, Machine, MachineSpec};
use crate::run::Cmd;

pub const FIXTURE: Scenario = Scenario {
    name: "provision-fixture",
    firmware: Firmware::SeaBios,
    run: fixture,
};

const PRIMARY_SERIAL: &str = "US-PRIMARY-0001";
const SECONDARY_SERIAL: &str = "US-SECONDARY-0002";

/// The whole scenario: two provision runs under TCG and two firmware boots.
const LIMIT: Duration = Duration::from_secs(1200);
/// From QEMU start to the end of the fixture's script.
const FIXTURE_RUN: Duration = Duration::from_secs(900);
/// From QEMU start to PID 1's screen through GRUB.
const TO_RECOVERY: Duration = Duration::from_secs(180);

const IMAGE_DIR: &str = "20261125T000000Z-fixture";
const IMAGE_MARK: &str = "image-kept-marker";

/// The busybox part: host root over 9p, the primary laid out, the chroot entered.
fn outer_script(inside: &Path) -> String {
    format!(
        r#"
H=/host
mkdir -p $H /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 host $H || echo "FIXTURE-FAIL 9p"
mount -t proc proc $H/proc; mount -t sysfs sys $H/sys; mount -t devtmpfs dev $H/dev
mount -t tmpfs run $H/run; mount -t tmpfs tmp $H/tmp
export PATH=/usr/sbin:/usr/bin:/sbin:/bin DM_DISABLE_UDEV=1 LVM_SUPPRESS_FD_WARNINGS=1
# Busybox's chroot runs its own applet of a name (mke2fs!) before the chroot's
# program: go through the host's env, by path.
hc() {{ chroot $H /usr/bin/env "$@" || echo "FIXTURE-FAIL $*"; }}
hc sgdisk -n1:0:+1M -t1:ef02 -n2:0:+64M -t2:8300 -n3:0:0 -t3:8e00 /dev/vda >/dev/null
hc blockdev --rereadpt /dev/vda
sleep 1
cat /proc/partitions
hc mke2fs -q -t ext4 -L fixture-boot /dev/vda2
hc lvm pvcreate -q -y /dev/vda3
hc lvm vgcreate -q -A n appvg /dev/vda3
hc lvm lvcreate -q -A n -y -L 256M -n root appvg
hc mke2fs -q -t ext4 -L fixture-root /dev/mapper/appvg-root
mount -t ext4 /dev/mapper/appvg-root /newroot || echo "FIXTURE-FAIL mount root"
mkdir -p /newroot/boot && mount -t ext4 /dev/vda2 /newroot/boot
cd /newroot && mkdir -p usr etc proc sys dev run tmp work mnt var/tmp boot/grub
ln -s usr/bin bin; ln -s usr/sbin sbin; ln -s usr/lib lib; ln -s usr/lib64 lib64; cd /
cp -a $H/etc/. /newroot/etc/
rm -rf /newroot/etc/understudy
ROOT=$(chroot $H /usr/sbin/blkid -s UUID -o value /dev/mapper/appvg-root)
BOOT=$(chroot $H /usr/sbin/blkid -s UUID -o value /dev/vda2)
printf 'UUID=%s / ext4 defaults 0 1\nUUID=%s /boot ext4 defaults 0 2\n' $ROOT $BOOT > /newroot/etc/fstab
mount --bind $H/usr /newroot/usr; mount --bind $H/work /newroot/work
mount -t proc proc /newroot/proc; mount -t sysfs sys /newroot/sys; mount -t devtmpfs dev /newroot/dev
mount -t tmpfs run /newroot/run; mount -t tmpfs tmp /newroot/tmp
echo "FIXTURE-READY root=$ROOT"
chroot /newroot /bin/sh {inside}
echo "FIXTURE-DONE rc=$?"
sync
poweroff -f
"#,
        inside = inside.display()
    )
}

/// The appliance part, run with the LV as `/`: provision twice around an image, the
/// first run installing a ready initramfs (`first`), the second building one
/// (`second`), which the firmware boots then use.
fn inside_script(bin: &Path, args: &str, first: &str, second: &str) -> String {
    format!(
        r#"set -u
B={bin}
ARGS="{args}"
$B provision $ARGS {first} --dry-run; echo "DRY-RUN rc=$?"
$B provision $ARGS {first}; echo "PROVISION-1 rc=$?"
sgdisk -v /dev/vdb; echo "SGDISK-1 rc=$?"
echo "PVS: $(lvm pvs --noheadings -o pv_name,vg_name /dev/vdb6 | tr -s ' ')"
echo "RECOVERY-ENTRY $(grep -c 'menuentry "Recovery"' /boot/grub/grub.cfg)"
echo "RECORDED $(tr -d ' \n' < /etc/understudy/disks.json)"
mount /dev/vdb5 /mnt && mkdir /mnt/{IMAGE_DIR} && echo {IMAGE_MARK} > /mnt/{IMAGE_DIR}/manifest.json && umount /mnt
echo "IMAGE-PLACED rc=$?"
$B provision $ARGS {second}; echo "PROVISION-2 rc=$?"
mount -o ro /dev/vdb5 /mnt && echo "IMAGE-AFTER $(cat /mnt/{IMAGE_DIR}/manifest.json)"; umount /mnt
sgdisk -v /dev/vdb; echo "SGDISK-2 rc=$?"
echo "PVS-2: $(lvm pvs --noheadings -o pv_name,vg_name /dev/vdb6 | tr -s ' ')"
"#,
        bin = bin.display()
    )
}

/// Waits until the console log has a line containing `mark`, and returns it.
fn log_line(vm: &Machine, mark: &str, timeout: Duration) -> Result<String> {
    let until = Instant::now() + timeout;
    loop {
        let log = vm.console().log_text()?;
        if let Some(l) = log.lines().find(|l| l.contains(mark)) {
            return Ok(l.trim_end().to_string());
        }
        if let Some(p) = vm.detect_kernel_panic() {
            bail!("kernel panic while waiting for {mark:?}: {p}");
        }
        if Instant::now() >= until {
            bail!("no {mark:?} on the console within {}", secs(timeout));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The `n`th (0-based) line containing `mark`, once there.
fn nth_line(vm: &Machine, mark: &str, n: usize) -> Result<String> {
    let log = vm.console().log_text()?;
    log.lines()
        .filter(|l| l.contains(mark))
        .nth(n)
        .map(|l| l.trim_end().to_string())
        .with_context(|| format!("no line {n} with {mark:?} in the console log"))
}

fn expect(line: &str, want: &str) -> Result<()> {
    if !line.contains(want) {
        bail!("expected {want:?}, the guest said {line:?}");
    }
    Ok(())
}

fn fixture(ctx: &Ctx) -> Result<Vec<String>> {
    ctx.booted_kernel.set(true);
    let deadline = Instant::now() + LIMIT;
    let work = Path::new("/work");
    let k = ctx.guest.kernel;
    // Stripped: it becomes /init of the initramfs the second run builds.
    let bin = crate::appliance::understudy_bin(&ctx.dir)?;
    let initrd = super::boottest::recovery_initrd()?;
    for p in [&bin, &initrd, &k.vmlinuz, &ctx.dir] {
        if !p.starts_with(work) {
            bail!(
                "{} is not under {}: the guest sees the host's files only there",
                p.display(),
                work.display()
            );
        }
    }
    let primary = ctx.blank("primary.raw", 1024)?;
    let secondary = ctx.blank("secondary.raw", 2048)?;
    let args = format!(
        "--secondary /dev/vdb --yes --cow-size 64M --kernel {} --kernel-version {}",
        k.vmlinuz.display(),
        k.version,
    );
    let first = format!("--initrd {}", initrd.display());
    let second = format!("--modules {}", k.modules_dir.display());
    let inside = ctx.dir.join("inside.sh");
    std::fs::write(&inside, inside_script(&bin, &args, &first, &second))
        .with_context(|| format!("writing {}", inside.display()))?;

    let mut spec = ctx.direct_boot(
        &outer_script(&inside),
        &[
            "virtio_pci",
            "virtio_blk",
            "9p",
            "9pnet_virtio",
            "dm_mod",
            "ext4",
            "crc32c_generic",
            "vfat",
            "nls_cp437",
            "nls_iso8859_1",
            // Debian's kernel mounts vfat with iocharset=ascii by default, and the
            // fixture has no modprobe to load it on demand.
            "nls_ascii",
        ],
    )?;
    spec.deadline = Some(deadline);
    spec.memory_mib = 1024;
    spec.extra_args.extend([
        "-virtfs".to_string(),
        "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap".to_string(),
    ]);
    spec.disks.push(DiskSpec::virtio(
        "primary",
        &primary,
        ImageFormat::Raw,
        PRIMARY_SERIAL,
    ));
    spec.disks.push(DiskSpec::virtio(
        "secondary",
        &secondary,
        ImageFormat::Raw,
        SECONDARY_SERIAL,
    ));
    let mut vm = Machine::start(&spec)?;
    let ready = log_line(&vm, "FIXTURE-READY", Duration::from_secs(300))?;
    let ready_at = vm.elapsed();
    let done = log_line(&vm, "FIXTURE-DONE", FIXTURE_RUN)?;
    let done_at = vm.elapsed();
    vm.wait_shutdown(Duration::from_secs(60))?;
    let log = vm.console().log_text()?;
    if let Some(l) = log.lines().find(|l| l.contains("FIXTURE-FAIL")) {
        bail!("the fixture could not be built: {l}");
    }
    expect(&done, "rc=0")?;
    expect(&nth_line(&vm, "DRY-RUN rc=", 0)?, "rc=0")?;
    expect(&nth_line(&vm, "PROVISION-1 rc=", 0)?, "rc=0")?;
    expect(&nth_line(&vm, "SGDISK-1 rc=", 0)?, "rc=0")?;
    let clean = log.matches("No problems found").count();
    if clean < 2 {
        bail!("`sgdisk -v` said \"No problems found\" {clean} times, not 2");
    }
    expect(&nth_line(&vm, "PVS:", 0)?, "/dev/vdb6 appvg")?;
    expect(&nth_line(&vm, "RECOVERY-ENTRY", 0)?, "RECOVERY-ENTRY 1")?;
    let recorded = nth_line(&vm, "RECORDED", 0)?;
    expect(&recorded, &format!("\"serial\":\"{PRIMARY_SERIAL}\""))?;
    expect(&recorded, &format!("\"serial\":\"{SECONDARY_SERIAL}\""))?;
    expect(&nth_line(&vm, "IMAGE-PLACED rc=", 0)?, "rc=0")?;
    expect(&nth_line(&vm, "PROVISION-2 rc=", 0)?, "rc=0")?;
    if !log.contains("provision: built the recovery initramfs for") {
        bail!("the second run did not build the recovery initramfs");
    }
    if !log.contains("mode: update") {
        bail!("the second run did not recognise the provisioned disk (no \"mode: update\")");
    }
    expect(&nth_line(&vm, "IMAGE-AFTER", 0)?, IMAGE_MARK)?;
    expect(&nth_line(&vm, "SGDISK-2 rc=", 0)?, "rc=0")?;
    expect(&nth_line(&vm, "PVS-2:", 0)?, "/dev/vdb6 appvg")?;
    drop(vm);
    let mut notes = vec![
        format!("fixture ready at {} ({ready})", secs(ready_at)),
        format!(
            "provisioned (ready initramfs), checked, image placed, provisioned again \
             (initramfs built in the guest): done at {}",
            secs(done_at)
        ),
        "sgdisk -v clean twice; /dev/vdb6 in appvg; \"Recovery\" in the primary's grub.cfg; \
         image directory kept by the second run"
            .to_string(),
    ];

    notes.extend(boot_secondary_alone(
        ctx,
        "provision-fixture",
        &secondary,
        deadline,
    )?);
    Ok(notes)
}

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

/// `sgdisk -v` on the host, on the secondary's image file once the VM is off:
/// the appliance has no gdisk, and the bytes checked are the same.
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
    // TEMPORARY-DEV-HOOK
    let (base, mut notes) = match std::env::var_os("PROVISION_APPLIANCE_BASE") {
        Some(p) => (std::path::PathBuf::from(p), Vec::new()),
        None => super::restoretest::restored_primary(ctx, false)?,
    };
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
    shell_ok(&vm, "SFDISK-1", "sfdisk --verify /dev/vdb", SHELL_STEP)?;
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
        "sfdisk --verify clean; pvs: /dev/vdb6 in {vg}; vgs: {vgs}; \"Recovery\" once in the \
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
    shell_ok(&vm, "SFDISK-2", "sfdisk --verify /dev/vdb", SHELL_STEP)?;
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
        "sgdisk -v of the secondary: {}",
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
