//! The thin executor of a [`ProvisionPlan`]: the GPT through `partition::write`,
//! `mkfs.vfat`/`mke2fs` with the plan's labels and UUIDs, the COW PV, GRUB for BIOS
//! and UEFI with `grub-install`, the menu and environment block from `boot`, the
//! recovery kernel and initramfs (`initramfs::build`), the recorded identities, and
//! the "Recovery" entry in the primary's GRUB.
//!
//! Does not own: deciding anything (the plan did), the formats it writes (`boot`,
//! `partition`, `init::recorded`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::plan::{Mode, Part, ProvisionPlan, Role};
use crate::boot::{self, Env, EnvCopy};
use crate::cmd::Cmd;
use crate::disk::Recorded;
use crate::init::recorded::DISKS_FILE;
use crate::initramfs::{self, Init, Spec};
use crate::layout::SectorSize;

/// The primary's `/etc/grub.d` script (adds "Recovery"), installed by provision.
pub const GRUB_D_SCRIPT: &str = include_str!("../../grub/40_understudy");

/// Where the recovery kernel and initramfs come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoverySource {
    /// The kernel image to copy.
    pub kernel: PathBuf,
    /// A ready initramfs to copy instead of building one.
    pub initrd: Option<PathBuf>,
    /// Kernel release and module directory the built initramfs is for.
    pub kernel_version: String,
    pub modules: PathBuf,
    /// Our binary, `/init` of the built initramfs.
    pub init: PathBuf,
}

/// The running system's paths the executor touches (tests and VM fixtures move them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemPaths {
    /// `/etc/understudy`: `disks.json` and `grub.conf`.
    pub config_dir: PathBuf,
    /// `/etc/grub.d`.
    pub grub_d: PathBuf,
    /// `/boot/grub`: present when the primary boots with GRUB.
    pub boot_grub: PathBuf,
    /// Where the secondary's filesystems are mounted while provisioning.
    pub work: PathBuf,
}

impl SystemPaths {
    pub fn system() -> SystemPaths {
        SystemPaths {
            config_dir: "/etc/understudy".into(),
            grub_d: "/etc/grub.d".into(),
            boot_grub: "/boot/grub".into(),
            work: "/run/understudy/provision".into(),
        }
    }
}

/// Programs the executor runs, with the Debian package that has each.
const TOOLS: &[(&str, &str)] = &[
    ("wipefs", "util-linux"),
    ("blockdev", "util-linux"),
    ("mount", "mount"),
    ("umount", "mount"),
    ("mkfs.vfat", "dosfstools"),
    ("mke2fs", "e2fsprogs"),
    ("lvm", "lvm2"),
    ("grub-install", "grub2-common"),
];

/// GRUB's platform directories grub-install takes its images from.
const GRUB_PLATFORMS: &[(&str, &str)] = &[
    ("/usr/lib/grub/i386-pc", "grub-pc-bin"),
    ("/usr/lib/grub/x86_64-efi", "grub-efi-amd64-bin"),
];

/// What this system lacks to carry out a plan, one line each naming the Debian
/// package; checked before anything is written.
pub fn missing(src: &RecoverySource) -> Vec<String> {
    let found = |prog: &str| crate::cmd::find_program(prog).is_some();
    let mut out: Vec<String> = TOOLS
        .iter()
        .filter(|(prog, _)| !found(prog))
        .map(|(prog, pkg)| format!("{prog} (Debian package {pkg})"))
        .collect();
    out.extend(
        GRUB_PLATFORMS
            .iter()
            .filter(|(dir, _)| !Path::new(dir).is_dir())
            .map(|(dir, pkg)| format!("{dir} (Debian package {pkg})")),
    );
    if !src.kernel.is_file() {
        out.push(format!(
            "the recovery kernel {} (name one with --kernel)",
            src.kernel.display()
        ));
    }
    match &src.initrd {
        Some(i) if !i.is_file() => out.push(format!("the recovery initramfs {}", i.display())),
        Some(_) => {}
        None => {
            if !src.modules.is_dir() {
                out.push(format!(
                    "the kernel modules {} (name them with --modules, or give --initrd)",
                    src.modules.display()
                ));
            }
            if !Path::new("/usr/bin/busybox").is_file() {
                out.push(
                    "/usr/bin/busybox for the recovery initramfs (Debian package busybox), or \
                     give --initrd"
                        .into(),
                );
            }
        }
    }
    out
}

/// What was done, step by step, for the log and the final report.
pub type Log<'a> = &'a mut dyn FnMut(&str);

/// A filesystem mounted for the duration of provisioning; unmounted on drop (after a
/// failure too).
struct MountGuard {
    dir: PathBuf,
    mounted: bool,
}

impl MountGuard {
    fn mount(dev: &Path, dir: &Path, fstype: &str) -> Result<MountGuard> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Cmd::new("mount")
            .args(["-t", fstype])
            .arg(dev)
            .arg(dir)
            .run()
            .with_context(|| format!("mounting {} at {}", dev.display(), dir.display()))?;
        Ok(MountGuard {
            dir: dir.to_path_buf(),
            mounted: true,
        })
    }

    fn unmount(mut self) -> Result<()> {
        self.mounted = false;
        Cmd::new("umount")
            .arg(&self.dir)
            .run()
            .with_context(|| format!("unmounting {}", self.dir.display()))
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Cmd::new("umount").arg(&self.dir).run();
        }
    }
}

/// Writes `bytes` to `path` through a temporary file, synced, renamed into place.
fn write_durable(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("partial");
    let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.set_permissions(fs::Permissions::from_mode(mode)))
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

/// Waits until every partition's node exists (the kernel re-read the table).
fn wait_for_nodes(parts: &[Part]) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let missing: Vec<&Path> = parts
            .iter()
            .map(|p| p.path.as_path())
            .filter(|p| !p.exists())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= until {
            bail!(
                "the kernel shows no device node for {} after re-reading the partition table",
                missing
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `udevadm settle` when udev is there; nothing otherwise.
fn settle() {
    let _ = Cmd::new("udevadm").args(["settle", "--timeout=30"]).run();
}

fn make_filesystems(plan: &ProvisionPlan, log: Log<'_>) -> Result<()> {
    for p in plan.parts.iter().filter(|p| p.create) {
        let Some(fs) = &p.filesystem else { continue };
        let dev = &p.path;
        Cmd::new("wipefs")
            .args(["-a", "-q"])
            .arg(dev)
            .run()
            .with_context(|| format!("clearing old signatures on {}", dev.display()))?;
        let cmd = match fs.fstype.as_str() {
            "vfat" => Cmd::new("mkfs.vfat")
                .args(["-F", "32", "-n", &fs.label, "-i", &fs.uuid.replace('-', "")])
                .arg(dev),
            "ext4" => Cmd::new("mke2fs")
                .args(["-q", "-F", "-t", "ext4", "-L", &fs.label, "-U", &fs.uuid])
                .arg(dev),
            "LVM2_member" => Cmd::new("lvm").args(["pvcreate", "-y"]).arg(dev),
            other => bail!("no way to make a {other} filesystem"),
        };
        cmd.run()
            .with_context(|| format!("making the {} filesystem on {}", p.role, dev.display()))?;
        log(&format!(
            "made {} {} on {}",
            fs.fstype,
            if fs.label.is_empty() {
                "PV"
            } else {
                fs.label.as_str()
            },
            dev.display()
        ));
    }
    Ok(())
}

/// grub-install for one platform, with the menu's modules built in (so the menu never
/// depends on module files matching the core image).
fn grub_install(
    platform: &str,
    extra: &[&str],
    recovery: &Path,
    esp: Option<&Path>,
    disk: &Path,
) -> Result<()> {
    let mut modules: Vec<&str> = boot::GRUB_MODULES.to_vec();
    modules.extend_from_slice(extra);
    let mut cmd = Cmd::new("grub-install")
        .arg(format!("--target={platform}"))
        .arg(format!("--boot-directory={}", recovery.display()))
        .arg(format!("--modules={}", modules.join(" ")));
    if let Some(esp) = esp {
        cmd = cmd
            .args(["--removable", "--no-nvram", "--no-uefi-secure-boot"])
            .arg(format!("--efi-directory={}", esp.display()));
    } else {
        cmd = cmd.arg(disk);
    }
    cmd.run()
        .with_context(|| format!("installing GRUB ({platform}) on {}", disk.display()))
}

/// The environment block to keep (update mode: whatever expand last wrote, when it
/// reads), or `None` to write "not ready".
fn kept_env(recovery: &Path) -> Option<Env> {
    let read = |c: EnvCopy| fs::read(recovery.join(c.path().trim_start_matches('/'))).ok();
    let (a, b) = (read(EnvCopy::A), read(EnvCopy::B));
    boot::read_copies(a.as_deref(), b.as_deref()).env().cloned()
}

fn install_recovery_os(
    plan: &ProvisionPlan,
    rec: &Path,
    src: &RecoverySource,
    log: Log<'_>,
) -> Result<()> {
    let kernel = rec.join(boot::RECOVERY_KERNEL_PATH.trim_start_matches('/'));
    let initrd = rec.join(boot::RECOVERY_INITRD_PATH.trim_start_matches('/'));
    let bytes =
        fs::read(&src.kernel).with_context(|| format!("reading {}", src.kernel.display()))?;
    write_durable(&kernel, &bytes, 0o644)?;
    log(&format!(
        "installed the recovery kernel from {}",
        src.kernel.display()
    ));
    match &src.initrd {
        Some(given) => {
            let bytes = fs::read(given).with_context(|| format!("reading {}", given.display()))?;
            write_durable(&initrd, &bytes, 0o644)?;
            log(&format!(
                "installed the recovery initramfs from {}",
                given.display()
            ));
        }
        None => {
            let spec = Spec::new(
                &src.kernel_version,
                &src.modules,
                Init::Binary(src.init.clone()),
                &initrd,
            )?;
            let report = initramfs::build(&spec).with_context(|| {
                format!(
                    "building the recovery initramfs for {} on {}",
                    src.kernel_version,
                    plan.secondary.path.display()
                )
            })?;
            log(&format!(
                "built the recovery initramfs for {} ({} bytes)",
                src.kernel_version, report.compressed_bytes
            ));
        }
    }
    Ok(())
}

fn recorded_json(r: &Recorded) -> Result<Vec<u8>> {
    let mut v = serde_json::to_vec_pretty(r).context("encoding the recorded identities")?;
    v.push(b'\n');
    Ok(v)
}

/// Carries out `plan`. Steps are logged through `log` as they finish.
pub fn execute(
    plan: &ProvisionPlan,
    src: &RecoverySource,
    sys: &SystemPaths,
    log: Log<'_>,
) -> Result<()> {
    let disk = &plan.secondary.path;
    if let (Mode::Fresh, Some(table)) = (plan.mode, &plan.table) {
        crate::partition::write(disk, table)
            .with_context(|| format!("writing the partition table of {}", disk.display()))?;
        log(&format!("wrote the GPT on {}", disk.display()));
        Cmd::new("blockdev")
            .arg("--rereadpt")
            .arg(disk)
            .run()
            .with_context(|| format!("telling the kernel to re-read {}", disk.display()))?;
        settle();
        wait_for_nodes(&plan.parts)?;
        make_filesystems(plan, log)?;
        settle();
    }

    let rec_dir = sys.work.join("recovery");
    let esp_dir = sys.work.join("esp");
    let rec = MountGuard::mount(&plan.part(Role::Recovery).path, &rec_dir, "ext4")?;
    let esp = MountGuard::mount(&plan.part(Role::Esp).path, &esp_dir, "vfat")?;

    if plan
        .table
        .as_ref()
        .is_none_or(|t| t.sector_size == SectorSize::B512)
    {
        grub_install("i386-pc", boot::GRUB_MODULES_PC, &rec_dir, None, disk)?;
        log("installed GRUB for BIOS (i386-pc)");
    } else {
        log("BIOS GRUB skipped: the disk has 4096-byte sectors");
    }
    grub_install(
        "x86_64-efi",
        boot::GRUB_MODULES_EFI,
        &rec_dir,
        Some(&esp_dir),
        disk,
    )?;
    log("installed GRUB for UEFI (EFI/BOOT/BOOTX64.EFI)");

    // The menu: a re-run keeps the emergency entry expand wrote.
    let cfg_path = rec_dir.join(boot::GRUB_CFG_PATH.trim_start_matches('/'));
    let kept_entry = match plan.mode {
        Mode::Update => fs::read_to_string(&cfg_path)
            .ok()
            .and_then(|t| super::plan::emergency_entry_from_cfg(&t, plan.fs_uuid(Role::Emergency))),
        Mode::Fresh => None,
    };
    let cfg = boot::render_grub_cfg(&plan.secondary_boot(kept_entry))?;
    write_durable(&cfg_path, cfg.as_bytes(), 0o644)?;
    log(&format!("wrote {}", boot::GRUB_CFG_PATH));
    match kept_env(&rec_dir).filter(|_| plan.mode == Mode::Update) {
        Some(env) => log(&format!(
            "kept the environment block (emergency_ready={})",
            u8::from(env.emergency_ready())
        )),
        None => {
            boot::write_copies(&Env::with_emergency(None), |copy, block| {
                write_durable(
                    &rec_dir.join(copy.path().trim_start_matches('/')),
                    block,
                    0o644,
                )
            })?;
            log("wrote the environment block: emergency copy not ready");
        }
    }

    install_recovery_os(plan, &rec_dir, src, log)?;

    let json = recorded_json(&plan.recorded)?;
    write_durable(&rec_dir.join(DISKS_FILE), &json, 0o644)?;
    esp.unmount()?;
    rec.unmount()?;
    log("unmounted the secondary's filesystems");
    write_durable(&sys.config_dir.join("disks.json"), &json, 0o644)?;
    log(&format!(
        "recorded both disks' identities on the recovery partition and in {}",
        sys.config_dir.display()
    ));

    // Last, so that a failure before it leaves no PV of the root VG on a disk that a
    // re-run would have to lay out afresh.
    if plan.add_cow_pv {
        // vgextend also initialises a device that is not a PV yet.
        let cow = &plan.part(Role::Cow).path;
        Cmd::new("lvm")
            .args(["vgextend", &plan.root_vg])
            .arg(cow)
            .run()
            .with_context(|| {
                format!("adding {} to volume group {}", cow.display(), plan.root_vg)
            })?;
        log(&format!(
            "added {} to volume group {}",
            cow.display(),
            plan.root_vg
        ));
    } else {
        log(&format!(
            "the COW PV is already in volume group {}",
            plan.root_vg
        ));
    }

    primary_grub(plan, sys, log)
}

/// The "Recovery" entry in the primary's GRUB: `grub.conf` for `40_understudy`, the
/// script in `/etc/grub.d`, and `update-grub` (or `grub-mkconfig`).
fn primary_grub(plan: &ProvisionPlan, sys: &SystemPaths, log: Log<'_>) -> Result<()> {
    let conf = format!(
        "# Written by understudy provision: the secondary disk's recovery filesystem.\n\
         UNDERSTUDY_RECOVERY_UUID={}\n",
        plan.fs_uuid(Role::Recovery)
    );
    write_durable(&sys.config_dir.join("grub.conf"), conf.as_bytes(), 0o644)?;
    if !sys.grub_d.is_dir() || !sys.boot_grub.is_dir() {
        log(&format!(
            "the primary has no GRUB configuration ({} or {} missing): no \"Recovery\" entry added",
            sys.grub_d.display(),
            sys.boot_grub.display()
        ));
        return Ok(());
    }
    write_durable(
        &sys.grub_d.join("40_understudy"),
        GRUB_D_SCRIPT.as_bytes(),
        0o755,
    )?;
    let update = if Cmd::new("sh")
        .args(["-c", "command -v update-grub"])
        .run()
        .is_ok()
    {
        Cmd::new("update-grub")
    } else {
        Cmd::new("grub-mkconfig")
            .arg("-o")
            .arg(sys.boot_grub.join("grub.cfg"))
    };
    update
        .run()
        .context("regenerating the primary's GRUB configuration")?;
    log("added \"Recovery\" to the primary's GRUB menu");
    Ok(())
}
