//! `understudy provision` in a VM (a child of `vmtest.rs`, listed in its `SCENARIOS`).
//!
//! `provision-fixture`: a stand-in for the LVM-root appliance until
//! `xtask/src/appliance.rs` exists. Debian's kernel boots a busybox initramfs that
//! mounts the host's root read-only over 9p, partitions a blank primary (`vda`: BIOS
//! boot, an ext4 `/boot`, a PV of VG `appvg` holding LV `root`), copies the host's
//! `/etc` into that root, binds the host's `/usr` (the real tools: lvm, mke2fs,
//! mkfs.vfat, grub-install, update-grub) and `chroot`s into it, so that the running
//! root is an LV and `vda` the boot disk, as on the appliance. There our static binary
//! provisions the blank `vdb`; the scenario then checks `sgdisk -v`, the COW PV in
//! `appvg`, the primary's "Recovery" entry, places an image directory on the images
//! partition, provisions again (update mode) and finds the image still there. Last, the
//! secondary alone boots through its own GRUB under SeaBIOS and under OVMF into PID 1's
//! recovery console, which shows the primary missing.
//!
//! The first run installs the prebuilt `target/recovery/initrd.img` (`--initrd`), the
//! second builds one from the guest kernel's modules with our stripped binary as
//! `/init` (provision's default path), and that is the one the firmware boots reach.
//! Does not own: the harness (`qemu/`), provision itself.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Ctx, Firmware, Scenario, expect_poweroff, secs};
use crate::qemu::{DiskSpec, ImageFormat, Machine, MachineSpec};

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

    // The secondary alone, through its own GRUB, with each firmware.
    for firmware in [Firmware::SeaBios, Firmware::Ovmf] {
        let mut spec = MachineSpec::new(
            &format!("provision-fixture-{}", firmware.name()),
            &ctx.dir,
            firmware,
            ctx.accel,
        );
        spec.memory_mib = 512;
        spec.no_reboot = true;
        spec.deadline = Some(deadline);
        let mut disk =
            DiskSpec::virtio("secondary", &secondary, ImageFormat::Raw, SECONDARY_SERIAL);
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
