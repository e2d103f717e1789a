//! VM scenario for the restore engine (`src/restore/`) on its own, before the full
//! Debian proof of `restoretest.rs`: a small synthetic image (GPT, `/boot` ext4, an
//! LVM PV with an ext4 root LV and a swap LV) on a whole-disk ext4 "images" disk, and
//! a blank target of the same size. The recovery image is built here with the dev
//! build of understudy as `/init` (`cargo build` first), booted on Debian's kernel;
//! from PID 1's shell, `understudy restore` runs with `--progress=json`, then
//! `sgdisk -v`, `e2fsck -fn`, `lvs` and `blkid` check what it made, and a file of
//! the image is read back from the restored root. The machine also has a secondary
//! (recorded identities, a snapshot COW PV) and the wiped old primary, so the image's
//! VG name is left partial on the COW PV, as when a primary dies: the restore clears
//! it there and the COW PV joins the restored VG again.
//!
//! A child module of `vmtest.rs` (declared there with `#[path]`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use understudy::archive::{self, CaptureOptions};
use understudy::image::manifest::{ArchiveEntry, Manifest};
use understudy::initramfs::{self, Init, Spec};
use understudy::layout::Layout;

use super::{BOOT, Ctx, Firmware, STEP, Scenario, expect_poweroff};
use crate::qemu::{DirectBoot, DiskSpec, ImageFormat, Key, Machine};
use crate::run::Cmd;
use crate::target_dir;

pub const RESTORE_ENGINE: Scenario = Scenario {
    name: "restore-engine",
    firmware: Firmware::SeaBios,
    run: restore_engine,
};

const ROOT_UUID: &str = "0e5e0001-0000-4000-8000-000000000001";
const BOOT_UUID: &str = "0e5e0001-0000-4000-8000-000000000002";
const SWAP_UUID: &str = "0e5e0001-0000-4000-8000-000000000003";
pub(super) const HELLO: &str = "restored by understudy\n";

/// 256 MiB: `/boot` (64 MiB) and an LVM PV (190 MiB) with root (120 MiB) and swap
/// (16 MiB) in VG `usvg`.
const LAYOUT: &str = r#"{
  "schema": 1,
  "table": {"type": "gpt", "disk_guid": "0e5e0001-0000-4000-8000-0000000000d0"},
  "disk": {"size_bytes": 268435456, "logical_sector": 512, "physical_sector": 512},
  "partitions": [
    {"number": 1, "start_lba": 2048, "size_lba": 131072,
     "type_guid": "0fc63daf-8483-4772-8e79-3d69d8477de4", "name": "boot"},
    {"number": 2, "start_lba": 133120, "size_lba": 389120,
     "type_guid": "e6d6d379-f507-44c2-a23c-238f2a3df928", "name": "lvm"}
  ],
  "filesystems": [
    {"source": {"partition": 1}, "fstype": "ext4", "uuid": "0e5e0001-0000-4000-8000-000000000002",
     "label": "usboot", "used_bytes": 1048576, "mountpoint": "/boot", "mount_options": []},
    {"source": {"lv": {"vg": "usvg", "name": "root"}}, "fstype": "ext4",
     "uuid": "0e5e0001-0000-4000-8000-000000000001", "label": "usroot",
     "used_bytes": 4194304, "mountpoint": "/", "mount_options": []}
  ],
  "lvm": {
    "vgs": [{"name": "usvg", "uuid": "Us0001-Vg00-0000-0000-0000-0000-000001",
             "pvs": [{"partition": 2, "uuid": "Us0001-Pv00-0000-0000-0000-0000-000001"}],
             "extent_size": 4194304}],
    "lvs": [{"vg": "usvg", "name": "root", "uuid": "Us0001-Lv00-0000-0000-0000-0000-000001",
             "size_bytes": 125829120},
            {"vg": "usvg", "name": "swap", "uuid": "Us0001-Lv00-0000-0000-0000-0000-000002",
             "size_bytes": 16777216}]
  },
  "swap": [{"source": {"lv": {"vg": "usvg", "name": "swap"}},
            "uuid": "0e5e0001-0000-4000-8000-000000000003", "label": "usswap",
            "size_bytes": 16777216}]
}"#;

/// The secondary: a recovery filesystem with the recorded identities (partition 3)
/// and provision's snapshot COW PV (partition 6, `understudy-cow`).
pub(super) const SECONDARY_SERIAL: &str = "US-SECONDARY-0003";
pub(super) const SECONDARY_MIB: u64 = 64;
/// The old primary, whose PV of `usvg` is wiped before the restore (it died).
pub(super) const OLD_PRIMARY_SERIAL: &str = "US-OLDPRIMARY-0004";
pub(super) const OLD_PRIMARY_MIB: u64 = 16;

/// Lays out the secondary (`/dev/vdc`) as provision would for what the restore
/// looks at, makes `usvg` on the old primary (`/dev/vdd`) and the COW PV with an LV,
/// then wipes the old primary: `usvg` is left partial on the COW PV. Prints `vgs`.
pub(super) fn stale_vg_script() -> String {
    let id = |serial: &str, mib: u64| {
        format!(
            r#"{{"wwn":null,"serial":"{serial}","model":null,"size":{},"logical_sector":512}}"#,
            mib << 20
        )
    };
    let disks = format!(
        r#"{{"primary":{},"secondary":{}}}"#,
        id(OLD_PRIMARY_SERIAL, OLD_PRIMARY_MIB),
        id(SECONDARY_SERIAL, SECONDARY_MIB)
    );
    format!(
        "export DM_DISABLE_UDEV=1 LVM_SUPPRESS_FD_WARNINGS=1; \
         sgdisk -n 3:2048:+8M -c 3:understudy-recovery -n 6:0:+24M -t 6:8e00 \
         -c 6:understudy-cow /dev/vdc >/dev/null && \
         i=0; while [ ! -b /dev/vdc6 ] && [ $i -lt 30 ]; do i=$((i+1)); sleep 1; done; \
         mke2fs -q -F -t ext4 -L {label} /dev/vdc3 && mkdir -p /mnt/rec && \
         mount -t ext4 /dev/vdc3 /mnt/rec && mkdir -p /mnt/rec/understudy && \
         echo '{disks}' > /mnt/rec/{file} && umount /mnt/rec && \
         lvm pvcreate -q -y /dev/vdd /dev/vdc6 && lvm vgcreate -q usvg /dev/vdd /dev/vdc6 && \
         lvm lvcreate -q -y -l 1 -n oldroot usvg /dev/vdd && lvm vgchange -q -a n usvg && \
         dd if=/dev/zero of=/dev/vdd bs=1M count=4 2>/dev/null && sync && \
         lvm vgs --noheadings -o vg_name,vg_attr usvg",
        label = understudy::init::recorded::RECOVERY_LABEL,
        file = understudy::init::recorded::DISKS_FILE,
    )
}

/// The dev build of understudy (static, like every build of this repository).
pub(super) fn dev_bin() -> Result<PathBuf> {
    let bin = target_dir().join("x86_64-unknown-linux-gnu/debug/understudy");
    if !bin.is_file() {
        bail!("{} is missing: run `cargo build` first", bin.display());
    }
    Ok(bin)
}

/// The image directory `images/img` and the whole-disk ext4 holding `images/`.
pub(super) fn images_disk(dir: &Path) -> Result<PathBuf> {
    let trees = dir.join("trees");
    let root = trees.join("root");
    let boot = trees.join("boot");
    for d in [root.join("etc"), root.join("boot"), boot.clone()] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::write(root.join("etc/hello"), HELLO)?;
    std::fs::write(
        root.join("etc/fstab"),
        format!(
            "UUID={ROOT_UUID} / ext4 defaults 0 1\nUUID={BOOT_UUID} /boot ext4 defaults 0 2\n\
             UUID={SWAP_UUID} none swap sw 0 0\n"
        ),
    )?;
    std::fs::write(boot.join("vmlinuz-test"), vec![0x42u8; 300_000])?;
    let img = dir.join("images/img");
    std::fs::create_dir_all(&img)?;
    let opts = CaptureOptions {
        excludes: vec![],
        threads: 2,
        one_file_system: true,
        mtime: 0,
    };
    let mut archives = Vec::new();
    for (at, tree, file) in [
        ("/", &root, "root.tar.lzo"),
        ("/boot", &boot, "boot.tar.lzo"),
    ] {
        let out = std::fs::File::create(img.join(file))?;
        let (out, report) = archive::create(tree, out, &opts, &mut |_| {})?;
        out.sync_all()?;
        archives.push(ArchiveEntry {
            filesystem: at.into(),
            file: file.into(),
            summary: report.summary,
        });
    }
    let m = Manifest {
        schema: 1,
        id: "img".into(),
        created: "2026-11-25T03:15:00Z".into(),
        host: "restore-engine-test".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        layout: Layout::from_json(LAYOUT)?,
        archives,
        excludes: vec![],
    };
    m.check()?;
    std::fs::write(img.join("manifest.json"), m.to_json_pretty())?;
    let disk = dir.join("images.raw");
    Cmd::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "usimages", "-d"])
        .arg(dir.join("images"))
        .arg(&disk)
        .arg("64M")
        .run()?;
    Ok(disk)
}

/// Types `line` at the shell, waits for `MARKER=<n>`, and returns n and the log.
pub(super) fn shell(vm: &Machine, line: &str, marker: &str) -> Result<(i32, String)> {
    vm.clear_screen();
    vm.send_keys(&format!("{line}; echo {marker}=$?"))?;
    vm.send_key(Key::Enter)?;
    let re = regex::Regex::new(&format!(r"{marker}=(\d+)"))?;
    vm.wait_for_text(re.clone(), std::time::Duration::from_secs(150))?;
    let log = vm.console().log_text()?;
    let code = re
        .captures_iter(&log)
        .last()
        .and_then(|c| c[1].parse().ok())
        .context("reading the exit status")?;
    Ok((code, log))
}

fn restore_engine(ctx: &Ctx) -> Result<Vec<String>> {
    let initrd = ctx.dir.join("initrd.img");
    let mut spec = Spec::new(
        &ctx.guest.kernel.version,
        &ctx.guest.kernel.modules_dir,
        Init::Binary(dev_bin()?),
        &initrd,
    )?;
    spec.strip_init = true;
    initramfs::build(&spec).context("building the recovery image")?;
    let images = images_disk(&ctx.dir)?;

    let mut m = ctx.spec();
    ctx.booted_kernel.set(true);
    m.memory_mib = 768;
    m.direct_boot = Some(DirectBoot {
        kernel: ctx.guest.boot_kernel.clone(),
        initrd: Some(initrd),
        append: "console=ttyS0 panic=-1 quiet".into(),
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
        "US-TARGET-0002",
    ));
    m.disks.push(DiskSpec::virtio(
        "secondary",
        ctx.blank("secondary.raw", SECONDARY_MIB)?,
        ImageFormat::Raw,
        SECONDARY_SERIAL,
    ));
    m.disks.push(DiskSpec::virtio(
        "old-primary",
        ctx.blank("old-primary.raw", OLD_PRIMARY_MIB)?,
        ImageFormat::Raw,
        OLD_PRIMARY_SERIAL,
    ));
    let mut vm = Machine::start(&m)?;
    vm.wait_for_text(understudy::init::menu::LINE, BOOT)?;
    vm.send_keys("s")?;
    vm.wait_for_text(regex::Regex::new(r"(?m)^/ # ")?, STEP)?;

    let mut notes = Vec::new();
    // PID 1 loads the filesystems and device-mapper in the background after its
    // first screen (`init::modload::ALWAYS`).
    let (code, log) = shell(
        &vm,
        "i=0; until grep -qw ext4 /proc/filesystems && [ -d /sys/module/dm_mod ] \
         || [ $i -ge 120 ]; do i=$((i+1)); sleep 1; done; grep -qw ext4 /proc/filesystems",
        "DRIVERS",
    )?;
    if code != 0 {
        bail!("ext4 and dm-mod did not load:\n{}", tail(&log, 20));
    }
    // The dead primary's VG, left partial on the secondary's COW PV.
    let (code, log) = shell(&vm, &stale_vg_script(), "STALE")?;
    if code != 0 || !log.contains("wz-pn-") {
        bail!(
            "could not leave a partial usvg on the COW PV ({code}):\n{}",
            tail(&log, 30)
        );
    }
    notes.push("usvg left partial on the secondary's COW PV /dev/vdc6 (old primary wiped)".into());
    let (code, log) = shell(
        &vm,
        "mkdir -p /mnt/images && mount -t ext4 -o ro /dev/vda /mnt/images && \
         /init restore /mnt/images/img --target /dev/vdb --yes --no-copy-back --progress=json \
         >/tmp/events 2>/tmp/errors; r=$?; tail -n 2 /tmp/events; tail -n 3 /tmp/errors; \
         (exit $r)",
        "RESTORE",
    )?;
    if code != 0 {
        bail!("the restore failed ({code}):\n{}", tail(&log, 30));
    }
    notes.push("restore exited 0 with {\"event\":\"done\"}".into());
    if !log.contains(r#"{"event":"done"}"#) {
        bail!("no done event:\n{}", tail(&log, 30));
    }
    let (code, log) = shell(&vm, "grep -c 'COW PV /dev/vdc6' /tmp/events", "COWNOTES")?;
    if code != 0 {
        bail!(
            "the restore did not say it cleared and rejoined the COW PV:\n{}",
            tail(&log, 20)
        );
    }
    let (code, log) = shell(&vm, "sgdisk -v /dev/vdb", "SGDISK")?;
    if code != 0 || !log.contains("No problems found") {
        bail!("sgdisk -v is not clean ({code}):\n{}", tail(&log, 20));
    }
    notes.push("sgdisk -v: No problems found".into());
    let (code, log) = shell(
        &vm,
        "DM_DISABLE_UDEV=1 lvm vgchange -a y usvg >/dev/null && \
         lvm lvs --noheadings -o lv_name,lv_size --units m usvg",
        "LVS",
    )?;
    if code != 0 || !log.contains("root") || !log.contains("swap") {
        bail!(
            "lvs does not show root and swap ({code}):\n{}",
            tail(&log, 20)
        );
    }
    notes.push("lvs: usvg/root and usvg/swap".into());
    let (code, log) = shell(
        &vm,
        "lvm vgs --noheadings -o vg_attr,pv_count usvg; \
         lvm pvs --noheadings -o pv_name,vg_name | grep -c '/dev/vdc6 *usvg'",
        "COWPV",
    )?;
    let whole = regex::Regex::new(r"wz--n-\s+2\b")?;
    if code != 0 || !whole.is_match(&log) {
        bail!(
            "the COW PV did not join the restored usvg, or usvg is not whole ({code}):\n{}",
            tail(&log, 20)
        );
    }
    notes.push("the COW PV /dev/vdc6 is back in the restored usvg (2 PVs, not partial)".into());
    for (dev, what) in [("/dev/mapper/usvg-root", "root"), ("/dev/vdb1", "boot")] {
        let (code, log) = shell(&vm, &format!("e2fsck -fn {dev}"), "FSCK")?;
        if code != 0 {
            bail!(
                "e2fsck -fn {dev} ({what}) is not clean ({code}):\n{}",
                tail(&log, 20)
            );
        }
        notes.push(format!("e2fsck -fn {dev}: clean"));
    }
    let (code, log) = shell(
        &vm,
        "blkid /dev/mapper/usvg-root /dev/vdb1 /dev/mapper/usvg-swap",
        "BLKID",
    )?;
    for uuid in [ROOT_UUID, BOOT_UUID, SWAP_UUID] {
        if code != 0 || !log.contains(&format!("UUID=\"{uuid}\"")) {
            bail!("blkid does not show UUID {uuid}:\n{}", tail(&log, 20));
        }
    }
    notes.push("blkid: the recorded UUIDs of root, boot and swap".into());
    let (code, log) = shell(
        &vm,
        "mkdir -p /mnt/r && mount -o ro /dev/mapper/usvg-root /mnt/r && cat /mnt/r/etc/hello && \
         umount /mnt/r",
        "HELLO",
    )?;
    if code != 0 || !log.contains(HELLO.trim()) {
        bail!(
            "the restored root does not hold etc/hello:\n{}",
            tail(&log, 20)
        );
    }
    notes.push("the restored root holds the image's etc/hello".into());
    vm.send_keys("exit")?;
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(understudy::init::menu::LINE, STEP)?;
    vm.send_keys("p")?;
    notes.push(format!("`p`: {}", expect_poweroff(&mut vm)?));
    Ok(notes)
}

pub(super) fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
