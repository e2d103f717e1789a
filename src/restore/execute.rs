//! The restore executor: carries out a [`RestorePlan`] on a real disk, step by step,
//! reporting each step ([`Reporter`]) and stopping at the first failure with the step
//! named. Thin: every decision is in the plan.
//!
//! The target is never bootable until the last step: the clear step zeroes its first
//! MiB (no boot signature: BIOS firmware passes over it), the boot code written with
//! the partition table and by `grub-install` is replaced by a stub that hands the
//! boot back to the firmware (`int 18h`), the ESP's removable boot path is kept under
//! another name, and only the finish step, after sync and unmount, puts GRUB's boot
//! sector and the ESP's boot path in place.
//!
//! Does not own: deciding anything (`plan`), the archive format (`archive`), the
//! partition table format (`partition`), copy-back's rules (`copyback`).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::Signal;
use uuid::Uuid;

use super::copyback_disk::{self, IndexState};
use super::events::{Format, Reporter, Step};
use super::failpoint;
use super::mount::MountGuard;
use super::plan::{self, MkfsStep, RestorePlan, UuidChange};
use super::swap;
use crate::archive::{self, ExtractOptions};
use crate::cmd::Cmd;
use crate::disk::{self, Recorded, Sources};
use crate::fstab::Fstab;
use crate::image::manifest::Manifest;
use crate::init::recorded::{self, RecordedState};
use crate::rootfs::RootDir;

/// The emergency filesystem's label, as provision makes it (docs/disk-layout.md).
pub const EMERGENCY_LABEL: &str = "US-EMERGENCY";

/// What the command line asks for.
#[derive(Clone, Debug)]
pub struct Options {
    /// The image directory (holding `manifest.json`).
    pub image: PathBuf,
    /// The target disk (`/dev/vdb`, or a link to it).
    pub target: PathBuf,
    /// Do not ask for the serial number.
    pub yes: bool,
    pub copy_back: bool,
    pub format: Format,
    pub threads: usize,
}

/// How a restore ended when it did not fail.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Entries extracted without some metadata, or not at all (listed as notes).
    pub problems: usize,
}

/// An archive of the image does not match its manifest, or cannot be read as an
/// archive: the CLI's "verification failed" exit code.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct Damaged(pub anyhow::Error);

/// The technician declined (or typed another serial), or asked to stop.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    #[error("not confirmed: the serial number typed does not match {0}; nothing was written")]
    NotConfirmed(String),
    #[error("cancelled before the point of no return: the target was not touched")]
    CancelledBefore,
    #[error(
        "cancelled after the point of no return: the target is left unbootable; run the \
         restore again to complete it"
    )]
    CancelledAfter,
}

/// Run a whole restore. In JSON mode the stream ends with `done` or `failed`.
pub fn run(opts: &Options) -> Result<Report> {
    if opts.format == Format::Json && !opts.yes {
        bail!("--progress=json needs --yes: the confirmation is the caller's to ask");
    }
    let mut rep = Reporter::new(opts.format);
    let cancel = Cancel::install();
    let mut run = Run {
        opts,
        rep: &mut rep,
        cancel: &cancel,
        mounts: MountGuard::new(),
        vgs: Vec::new(),
        boot_sector: None,
        target: None,
        problems: 0,
    };
    let result = run.all();
    let stopped_at = run.rep.step();
    let result = match result {
        Ok(()) => Ok(run.problems),
        Err(e) => {
            run.on_failure();
            Err(e)
        }
    };
    drop(run);
    match result {
        Ok(problems) => {
            rep.done();
            Ok(Report { problems })
        }
        Err(e) => {
            let e = if stopped_at.point_of_no_return() {
                e.context(format!(
                    "restore failed at step {}; the target is left unbootable: run the \
                     restore again to complete it",
                    stopped_at.name()
                ))
            } else {
                e
            };
            rep.failed(&e);
            Err(e)
        }
    }
}

/// SIGTERM and SIGINT only raise a flag; the restore (or copy-back) stops at the next
/// check.
#[derive(Debug)]
pub(super) struct Cancel {
    flag: AtomicBool,
}

impl Cancel {
    pub(super) fn install() -> Cancel {
        let _ = crate::sys::catch_as_flags(&[Signal::SIGTERM, Signal::SIGINT]);
        Cancel {
            flag: AtomicBool::new(false),
        }
    }

    pub(super) fn requested(&self) -> bool {
        if !crate::sys::take_signals().is_empty() {
            self.flag.store(true, Ordering::SeqCst);
        }
        self.flag.load(Ordering::SeqCst)
    }
}

/// A reader that fails once a cancel was requested, so a long verify or extract
/// stops within one block.
struct Cancellable<'a, R> {
    inner: R,
    cancel: &'a Cancel,
}

impl<R: Read> Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.requested() {
            return Err(io::Error::other("cancelled"));
        }
        self.inner.read(buf)
    }
}

struct Run<'a> {
    opts: &'a Options,
    rep: &'a mut Reporter,
    cancel: &'a Cancel,
    mounts: MountGuard,
    /// VGs this run created, deactivated on every path.
    vgs: Vec<String>,
    /// GRUB's boot sector, held back until the finish step.
    boot_sector: Option<Vec<u8>>,
    /// The target's path, once past the point of no return.
    target: Option<PathBuf>,
    problems: usize,
}

impl Run<'_> {
    fn step(&mut self, step: Step, total: Option<u64>) -> Result<()> {
        if self.cancel.requested() {
            return Err(if self.rep.step().point_of_no_return() {
                Stopped::CancelledAfter.into()
            } else {
                Stopped::CancelledBefore.into()
            });
        }
        self.rep.phase(step, total);
        Ok(())
    }

    fn all(&mut self) -> Result<()> {
        let opts = self.opts;
        // 1. Verify every archive before anything else.
        self.step(Step::Verify, None)?;
        let manifest = Manifest::load(&opts.image)
            .with_context(|| format!("loading the image at {}", opts.image.display()))?;
        // Archive reads report tar bytes as they are decoded.
        self.step(Step::Verify, Some(manifest.uncompressed_bytes()))?;
        for a in &manifest.archives {
            let path = opts.image.join(&a.file);
            self.verify(&path, &a.summary)?;
        }
        failpoint::hit(Step::Verify);

        // 2. Refuse what must not be written.
        self.step(Step::Refuse, None)?;
        let plan = self.plan(&manifest)?;
        for n in &plan.notes {
            self.rep.note(n.clone());
        }
        if !opts.yes {
            confirm(&plan)?;
        }
        failpoint::hit(Step::Refuse);

        // 3. Clear: from here on the target is written.
        let dev = plan.target.path.clone();
        self.step(Step::Clear, None)?;
        self.target = Some(dev.clone());
        clear(&dev, &plan)?;
        failpoint::hit(Step::Clear);

        // 4. Partition table, LVM, filesystems, mounts.
        self.step(Step::Partition, None)?;
        crate::partition::write(&dev, &plan.table)
            .with_context(|| format!("writing the partition table on {}", dev.display()))?;
        disarm(&dev)?;
        reread(&dev)?;
        let parts: Vec<PathBuf> = plan
            .table
            .partitions
            .iter()
            .map(|p| plan::partition_device(&dev, p.number))
            .collect();
        wait_for(&parts)?;
        failpoint::hit(Step::Partition);

        self.step(Step::Lvm, None)?;
        self.lvm(&plan)?;
        failpoint::hit(Step::Lvm);

        self.step(Step::Mkfs, None)?;
        let mut changes = Vec::new();
        for m in &plan.mkfs {
            if let Some(c) = mkfs(m)? {
                self.rep.note(format!(
                    "{}: new UUID {} (was {})",
                    m.device.display(),
                    c.new,
                    c.old
                ));
                changes.push(c);
            }
        }
        failpoint::hit(Step::Mkfs);

        self.step(Step::Mount, None)?;
        let root = private_dir("restore")?;
        for m in &plan.mounts {
            let at = root.join(m.mountpoint.trim_start_matches('/'));
            self.mounts.mount(&m.device, &at, &m.fstype)?;
        }
        failpoint::hit(Step::Mount);

        // 5. Extract each archive, streaming.
        self.step(Step::Extract, Some(plan.extract_bytes))?;
        for x in &plan.extracts {
            let at = root.join(x.mountpoint.trim_start_matches('/'));
            self.extract(&x.archive, &at, &x.summary)?;
        }
        failpoint::hit(Step::Extract);

        // 6. Remap where a UUID could not be kept; the bootloader from the tree.
        self.step(Step::Remap, None)?;
        let tree = RootDir::open(&root)?;
        let fstab = tree
            .read_optional(crate::remap::FSTAB)?
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        match plan::fstab_remap(&Fstab::parse(&fstab), &changes) {
            None => self.rep.note("every UUID was kept: nothing to remap"),
            Some(remap) => {
                let report = crate::remap::apply(&tree, &remap)?;
                for n in report.notes {
                    self.rep.note(n.to_string());
                }
            }
        }
        // An open handle keeps the root busy: unmounting it later would fail.
        drop(tree);
        failpoint::hit(Step::Remap);

        self.step(Step::Bootloader, None)?;
        self.bootloader(&plan, &root)?;
        failpoint::hit(Step::Bootloader);

        // 7. Copy back what changed on the emergency copy.
        self.step(Step::CopyBack, None)?;
        if opts.copy_back {
            self.copy_back(&plan, &root)?;
        } else {
            self.rep.note("copy-back skipped (--no-copy-back)");
        }
        failpoint::hit(Step::CopyBack);

        // 8. Sync, unmount, and only then make the disk bootable.
        self.step(Step::Sync, None)?;
        nix::unistd::sync();
        self.mounts.unmount_all()?;
        self.deactivate()?;
        sync_device(&dev)?;
        failpoint::hit(Step::Sync);

        self.step(Step::Finish, None)?;
        if let Some(esp) = &plan.bootloader.esp
            && let Some(m) = plan.mounts.iter().find(|m| &m.mountpoint == esp)
        {
            let at = private_dir("restore")?.join("esp");
            let mark = self.mounts.depth();
            self.mounts.mount(&m.device, &at, &m.fstype)?;
            let pending = at.join(EFI_PENDING);
            if pending.exists() {
                let boot = at.join(EFI_BOOT);
                std::fs::rename(&pending, &boot).with_context(|| {
                    format!("renaming {} to {}", pending.display(), boot.display())
                })?;
                fsync_dir(&at.join("EFI"))?;
            }
            self.mounts.unmount_to(mark)?;
        }
        if let Some(sector) = self.boot_sector.take() {
            write_boot_sector(&dev, &sector)?;
        }
        sync_device(&dev)?;
        failpoint::hit(Step::Finish);
        let _ = std::fs::remove_dir(&root);
        Ok(())
    }

    fn verify(&mut self, path: &Path, want: &archive::Summary) -> Result<()> {
        let len = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        if len != want.length {
            return Err(Damaged(anyhow::anyhow!(
                "{} is {len} bytes, the manifest says {}",
                path.display(),
                want.length
            ))
            .into());
        }
        let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let input = Cancellable {
            inner: BufReader::with_capacity(64 << 10, f),
            cancel: self.cancel,
        };
        let rep = &mut *self.rep;
        let got = archive::verify(input, Some(want), self.opts.threads, &mut |n| rep.add(n));
        match got {
            Ok(_) => Ok(()),
            Err(_) if self.cancel.requested() => Err(Stopped::CancelledBefore.into()),
            Err(e) => Err(Damaged(e.context(format!("verifying {}", path.display()))).into()),
        }
    }

    fn plan(&mut self, manifest: &Manifest) -> Result<RestorePlan> {
        let (_, name) = whole_disk(&self.opts.target)?;
        let inv = disk::inventory(&Sources::system());
        let recorded = recorded_identities(&inv, self.rep);
        let plan = plan::plan(manifest, &self.opts.image, &inv, recorded.as_ref(), &name)?;
        let missing: Vec<&str> = plan
            .tools()
            .into_iter()
            .filter(|t| crate::cmd::find_program(t).is_none())
            .collect();
        if !missing.is_empty() {
            bail!(
                "this system lacks {} (needed to restore this image): nothing was written",
                missing.join(", ")
            );
        }
        wait_for_kernel(self.rep, &plan.kernel_needs())?;
        Ok(plan)
    }

    fn lvm(&mut self, plan: &RestorePlan) -> Result<()> {
        // The old primary's VG, left on the secondary's COW PV: gone before the new
        // one of that name is made. Only the COW PV the plan names is touched.
        for s in &plan.stale_vgs {
            let cow = s.cow_pv.to_string_lossy();
            self.rep.note(format!(
                "removing the stale volume group {} from the COW PV {cow}",
                s.vg
            ));
            lvm(&["vgchange", "-a", "n", &s.vg])?;
            lvm(&["pvremove", "-ff", "-y", &cow])?;
        }
        for pv in &plan.pvs {
            lvm(&[
                "pvcreate",
                "-ff",
                "-y",
                "--norestorefile",
                "--uuid",
                &pv.uuid,
                &pv.device.to_string_lossy(),
            ])?;
        }
        for vg in &plan.vgs {
            let extent = format!("{}k", vg.extent_size.0 / 1024);
            let mut args = vec!["vgcreate", "-y", "-s", &extent, &vg.name];
            let pvs: Vec<String> = vg
                .pvs
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            args.extend(pvs.iter().map(String::as_str));
            lvm(&args)?;
            self.vgs.push(vg.name.clone());
        }
        for lv in &plan.lvs {
            lvm(&[
                "lvcreate",
                "-y",
                "-W",
                "y",
                "-Z",
                "y",
                "-l",
                &lv.extents.to_string(),
                "-n",
                &lv.name,
                &lv.vg,
            ])?;
        }
        let lvs: Vec<PathBuf> = plan.lvs.iter().map(|l| l.device.clone()).collect();
        wait_for(&lvs)?;
        // Snapshots keep their COW space on the secondary.
        for s in &plan.stale_vgs {
            let cow = s.cow_pv.to_string_lossy();
            lvm(&["pvcreate", "-y", &cow])?;
            lvm(&["vgextend", &s.vg, &cow])?;
            self.rep.note(format!(
                "the COW PV {cow} joined the restored volume group {}",
                s.vg
            ));
        }
        Ok(())
    }

    fn extract(&mut self, archive: &Path, at: &Path, want: &archive::Summary) -> Result<()> {
        let f = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
        let input = Cancellable {
            inner: BufReader::with_capacity(64 << 10, f),
            cancel: self.cancel,
        };
        let opts = ExtractOptions {
            threads: self.opts.threads,
            expect: Some(want.clone()),
            ..ExtractOptions::default()
        };
        let rep = &mut *self.rep;
        let report = archive::extract(input, at, &opts, &mut |n| rep.add(n))
            .with_context(|| format!("extracting {} into {}", archive.display(), at.display()));
        if report.is_err() && self.cancel.requested() {
            return Err(Stopped::CancelledAfter.into());
        }
        let report = report?;
        for p in &report.problems {
            self.rep.note(format!("{}: {p}", archive.display()));
        }
        self.problems += report.problems.len();
        Ok(())
    }

    fn bootloader(&mut self, plan: &RestorePlan, root: &Path) -> Result<()> {
        let b = &plan.bootloader;
        if !b.bios && b.esp.is_none() {
            return Ok(());
        }
        let tree = RootDir::open(root)?;
        if !tree.exists("usr/sbin/grub-install")? {
            bail!("the restored system has no /usr/sbin/grub-install: it cannot be made bootable");
        }
        let mark = self.mounts.depth();
        for d in ["dev", "proc", "sys"] {
            self.mounts.bind(&Path::new("/").join(d), &root.join(d))?;
        }
        let dev = plan.target.path.to_string_lossy().into_owned();
        let result = (|| -> Result<()> {
            if b.bios {
                if !tree.exists("usr/lib/grub/i386-pc")? {
                    bail!("the restored system has no GRUB for BIOS (/usr/lib/grub/i386-pc)");
                }
                let said = chroot(root, &["grub-install", "--target=i386-pc", &dev])?;
                self.rep.note(said);
                // grub-install wrote its boot sector: keep it for the finish step.
                self.boot_sector = Some(read_boot_sector(&plan.target.path)?);
                disarm(&plan.target.path)?;
            }
            if let Some(esp) = &b.esp {
                if tree.exists("usr/lib/grub/x86_64-efi")? {
                    let efi_dir = format!("--efi-directory={esp}");
                    let said = chroot(
                        root,
                        &[
                            "grub-install",
                            "--target=x86_64-efi",
                            "--removable",
                            "--no-nvram",
                            &efi_dir,
                        ],
                    )?;
                    self.rep.note(said);
                    let esp_dir = root.join(esp.trim_start_matches('/'));
                    let boot = esp_dir.join(EFI_BOOT);
                    let pending = esp_dir.join(EFI_PENDING);
                    if pending.exists() {
                        std::fs::remove_dir_all(&pending)
                            .with_context(|| format!("removing {}", pending.display()))?;
                    }
                    std::fs::rename(&boot, &pending).with_context(|| {
                        format!("renaming {} to {}", boot.display(), pending.display())
                    })?;
                    fsync_dir(&esp_dir.join("EFI"))?;
                } else {
                    self.rep.note(format!(
                        "the layout has an ESP at {esp} but the restored system has no GRUB for \
                         UEFI (/usr/lib/grub/x86_64-efi): UEFI boot is not installed"
                    ));
                }
            }
            if tree.exists("usr/sbin/grub-mkconfig")? {
                let said = chroot(root, &["grub-mkconfig", "-o", "/boot/grub/grub.cfg"])?;
                self.rep.note(said);
            }
            Ok(())
        })();
        let unbound = self.mounts.unmount_to(mark);
        result.and(unbound)
    }

    fn copy_back(&mut self, plan: &RestorePlan, root: &Path) -> Result<()> {
        let inv = disk::inventory(&Sources::system());
        let Some(em) = copyback_disk::find_emergency(&inv, &plan.target.name) else {
            self.rep.note(format!(
                "no emergency filesystem ({EMERGENCY_LABEL}): nothing to copy back"
            ));
            return Ok(());
        };
        let at = private_dir("restore")?.join("emergency");
        let mark = self.mounts.depth();
        // Read-write as before: a restore run from the emergency copy itself finds it
        // mounted read-write at /, and the kernel refuses a read-only second mount of
        // it (EBUSY, "would change RO state").
        self.mounts.mount(&em.device, &at, &em.fstype)?;
        let result = (|| -> Result<()> {
            match copyback_disk::read_index(&at)? {
                IndexState::Loaded(index) => copyback_disk::apply(self.rep, &index, &at, root),
                IndexState::Missing => {
                    self.rep.note(format!(
                        "the emergency copy on {} has no copy-back index: nothing to copy back",
                        em.device.display()
                    ));
                    Ok(())
                }
                IndexState::Unusable(e) => {
                    self.rep.note(format!(
                        "copy-back index not usable ({e:#}): nothing copied back"
                    ));
                    Ok(())
                }
            }
        })();
        let unmounted = self.mounts.unmount_to(mark);
        result.and(unmounted)
    }

    fn deactivate(&mut self) -> Result<()> {
        while let Some(vg) = self.vgs.pop() {
            lvm(&["vgchange", "-a", "n", &vg])?;
        }
        Ok(())
    }

    /// After a failure: unmount, deactivate, and make sure no boot code of ours or
    /// GRUB's is in the boot sector.
    fn on_failure(&mut self) {
        if let Err(e) = self.mounts.unmount_all() {
            self.rep.note(format!("cleaning up: {e:#}"));
        }
        if let Err(e) = self.deactivate() {
            self.rep.note(format!("cleaning up: {e:#}"));
        }
        if let Some(dev) = &self.target
            && let Err(e) = disarm(dev)
        {
            self.rep.note(format!("cleaning up: {e:#}"));
        }
    }
}

/// The ESP's removable boot path, and the name it waits under until the finish step.
const EFI_BOOT: &str = "EFI/BOOT";
const EFI_PENDING: &str = "EFI/BOOT.understudy-pending";

/// Boot code that gives the boot back to the firmware: `int 18h` (BIOS "boot failed,
/// try the next device"), then `cli; hlt` in a loop should the firmware return.
const STUB: [u8; 5] = [0xCD, 0x18, 0xFA, 0xF4, 0xEB];
/// The boot code area of an MBR: everything before the disk signature at 440.
const BOOT_CODE: usize = 440;

/// Replace the boot code of sector 0 with [`STUB`], keeping the partition entries and
/// the signature (the kernel needs the protective MBR to read the GPT).
fn disarm(dev: &Path) -> Result<()> {
    let mut sector = read_boot_sector(dev)?;
    sector[..BOOT_CODE].fill(0);
    sector[..STUB.len()].copy_from_slice(&STUB);
    // The last byte jumps back to `hlt` (`jmp -3`).
    sector[STUB.len()] = 0xFD;
    write_boot_sector(dev, &sector)
}

fn read_boot_sector(dev: &Path) -> Result<Vec<u8>> {
    let mut f = File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
    let mut s = vec![0u8; 512];
    f.read_exact(&mut s)
        .with_context(|| format!("reading the boot sector of {}", dev.display()))?;
    Ok(s)
}

fn write_boot_sector(dev: &Path, sector: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(dev)
        .with_context(|| format!("opening {} for writing", dev.display()))?;
    f.write_all(sector)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing the boot sector of {}", dev.display()))
}

/// Zero what the plan says, holding the disk exclusively (`O_EXCL` on a block device
/// fails if anything mounts or holds it).
fn clear(dev: &Path, plan: &RestorePlan) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_EXCL)
        .open(dev)
        .with_context(|| format!("opening {} exclusively", dev.display()))?;
    let zeros = vec![0u8; 1 << 20];
    for z in &plan.zero {
        let mut left = z.len.0;
        f.seek(SeekFrom::Start(z.offset.0))
            .with_context(|| format!("seeking to {} on {}", z.offset.0, dev.display()))?;
        while left > 0 {
            let n = usize::try_from(left.min(zeros.len() as u64))?;
            f.write_all(&zeros[..n])
                .with_context(|| format!("zeroing {} at {}", dev.display(), z.offset.0))?;
            left -= n as u64;
        }
    }
    f.sync_all()
        .with_context(|| format!("syncing {}", dev.display()))
}

/// Ask the kernel to read the new table (busybox and util-linux `blockdev` both have
/// `--rereadpt`).
fn reread(dev: &Path) -> Result<()> {
    Cmd::new("blockdev")
        .arg("--rereadpt")
        .arg(dev)
        .run()
        .with_context(|| format!("making the kernel read the new table of {}", dev.display()))
}

/// Wait (bounded) until every node exists: devtmpfs or udev make them.
pub(super) fn wait_for(nodes: &[PathBuf]) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let missing: Vec<&PathBuf> = nodes.iter().filter(|n| !n.exists()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > until {
            bail!(
                "device nodes did not appear within 30 s: {}",
                missing
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(super) fn lvm(args: &[&str]) -> Result<()> {
    let mut cmd = Cmd::new("lvm")
        .args(args)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1");
    // Without udev (the recovery image), device-mapper makes its own nodes.
    if !Path::new("/run/udev/control").exists() {
        cmd = cmd.env("DM_DISABLE_UDEV", "1");
    }
    cmd.run()
}

/// Make one filesystem or swap area; the UUID change when the recorded one was not kept.
fn mkfs(m: &MkfsStep) -> Result<Option<UuidChange>> {
    let dev = m.device.to_string_lossy().into_owned();
    let label = m.label.as_deref();
    match m.fstype.as_str() {
        "swap" => {
            let uuid = match &m.uuid {
                Some(u) => Uuid::parse_str(u).with_context(|| format!("swap UUID {u}"))?,
                None => Uuid::new_v4(),
            };
            swap::make(&m.device, uuid, label)?;
        }
        t @ ("ext2" | "ext3" | "ext4") => {
            let mut c = Cmd::new("mke2fs").args(["-F", "-q", "-t", t]);
            if let Some(u) = &m.uuid {
                c = c.args(["-U", u]);
            }
            if let Some(l) = label {
                c = c.args(["-L", l]);
            }
            c.arg(&dev).run()?;
        }
        "vfat" => {
            let mut c = Cmd::new("mkfs.fat");
            if let Some(u) = &m.uuid {
                c = c.args(["-i", &u.replace('-', "")]);
            }
            if let Some(l) = label {
                c = c.args(["-n", l]);
            }
            c.arg(&dev).run()?;
        }
        "xfs" => {
            let mut c = Cmd::new("mkfs.xfs").arg("-f");
            if let Some(u) = &m.uuid {
                c = c.args(["-m", &format!("uuid={u}")]);
            }
            if let Some(l) = label {
                c = c.args(["-L", l]);
            }
            c.arg(&dev).run()?;
        }
        "btrfs" => {
            let mut c = Cmd::new("mkfs.btrfs").arg("-f");
            if let Some(u) = &m.uuid {
                c = c.args(["-U", u]);
            }
            if let Some(l) = label {
                c = c.args(["-L", l]);
            }
            c.arg(&dev).run()?;
        }
        other => bail!("cannot make {other} on {dev}"),
    }
    let Some(old) = &m.replaces else {
        return Ok(None);
    };
    let new = disk::probe::volume(&m.device)
        .map_err(anyhow::Error::msg)?
        .and_then(|s| s.uuid)
        .with_context(|| format!("reading the new UUID of {dev}"))?;
    Ok(Some(UuidChange {
        old: old.clone(),
        new,
    }))
}

/// Run `args` inside the restored tree at `root`; a note for the progress stream:
/// the command and the last line it wrote ("Installation finished. No error
/// reported.", "done").
fn chroot(root: &Path, args: &[&str]) -> Result<String> {
    let out = Cmd::new("chroot")
        .arg(root)
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()?;
    let said = [&out.stderr, &out.stdout]
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .find_map(|t| {
            t.lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "done".into());
    Ok(format!(
        "{} (in the restored system): {said}",
        args.join(" ")
    ))
}

/// Waits (bounded) until the kernel offers every filesystem and device-mapper in
/// `needs`: the recovery image loads those drivers after its first screen, and
/// elsewhere `modprobe` (when there is one) loads them now.
pub(super) fn wait_for_kernel(rep: &mut Reporter, needs: &[plan::KernelNeed]) -> Result<()> {
    let mut missing: Vec<_> = needs.iter().filter(|n| !kernel_has(**n)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if crate::cmd::find_program("modprobe").is_some() {
        for n in &missing {
            // Failure is fine: PID 1 may still be loading it, or it is built in.
            let _ = Cmd::new("modprobe").args(["-q", n.module()]).run();
        }
    }
    let until = Instant::now() + KERNEL_WAIT;
    let mut said = false;
    loop {
        missing.retain(|n| !kernel_has(**n));
        if missing.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = missing.iter().map(|n| n.module()).collect();
        if Instant::now() >= until {
            bail!(
                "the kernel still lacks {} after {} s (drivers not loaded): nothing was written",
                names.join(", "),
                KERNEL_WAIT.as_secs()
            );
        }
        if !said {
            rep.note(format!(
                "waiting for the kernel's {} drivers",
                names.join(", ")
            ));
            said = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How long a restore waits for drivers still being loaded.
const KERNEL_WAIT: Duration = Duration::from_secs(60);

/// Whether the running kernel offers `need` now.
fn kernel_has(need: plan::KernelNeed) -> bool {
    match need {
        plan::KernelNeed::Filesystem { name, .. } => std::fs::read_to_string("/proc/filesystems")
            .is_ok_and(|t| t.lines().any(|l| l.split_whitespace().last() == Some(name))),
        plan::KernelNeed::DeviceMapper => Path::new("/dev/mapper/control").exists(),
    }
}

/// This process's private mount directory, `/run/understudy/WHAT-PID`.
pub(super) fn private_dir(what: &str) -> Result<PathBuf> {
    let dir = PathBuf::from(format!("/run/understudy/{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

pub(super) fn sync_device(dev: &Path) -> Result<()> {
    File::open(dev)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", dev.display()))
}

/// Show what is erased and ask for the serial number (or the disk's name).
fn confirm(plan: &RestorePlan) -> Result<()> {
    let t = &plan.target;
    eprint!("{plan}");
    eprintln!(
        "\nEverything on {} ({}) will be ERASED.",
        t.path.display(),
        described(t)
    );
    ask_serial(t)
}

/// A disk as the confirmation names it: model, serial number, size.
pub(super) fn described(t: &plan::Target) -> String {
    format!(
        "{}, serial {}, {}",
        t.model.as_deref().unwrap_or("unknown model"),
        t.serial.as_deref().unwrap_or("none"),
        t.size
    )
}

/// Ask for the disk's serial number (or its name if it reports none) on standard
/// input; anything else stops with [`Stopped::NotConfirmed`].
pub(super) fn ask_serial(t: &plan::Target) -> Result<()> {
    eprint!(
        "Type the disk's {} to go on: ",
        if t.serial.is_some() {
            "serial number"
        } else {
            "name"
        }
    );
    let mut line = String::new();
    io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the confirmation")?;
    if line.trim() != t.confirmation() {
        return Err(Stopped::NotConfirmed(t.confirmation().to_string()).into());
    }
    Ok(())
}

/// The whole disk at `path` (`/dev/vda`, or a link to it): its canonical path and
/// kernel name; an error when it is not a block device.
pub(super) fn whole_disk(path: &Path) -> Result<(PathBuf, String)> {
    let dev = std::fs::canonicalize(path).with_context(|| format!("finding {}", path.display()))?;
    let meta = std::fs::metadata(&dev).with_context(|| format!("inspecting {}", dev.display()))?;
    ensure!(
        meta.file_type().is_block_device(),
        "{} is not a block device",
        dev.display()
    );
    let name = dev
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((dev, name))
}

/// The disk identities provision recorded, when they can be read; otherwise a note
/// says the secondary is recognised by its recovery filesystem only.
pub(super) fn recorded_identities(inv: &disk::Inventory, rep: &mut Reporter) -> Option<Recorded> {
    match recorded::load(inv) {
        RecordedState::Found { recorded, .. } => Some(recorded),
        RecordedState::NoRecoveryFilesystem => {
            rep.note(
                "no recorded disk identities (no recovery filesystem): the secondary is \
                 recognised by its recovery filesystem only",
            );
            None
        }
        RecordedState::Unreadable { device, reason } => {
            rep.note(format!(
                "the recorded disk identities on {} cannot be read ({reason}): the \
                 secondary is recognised by its recovery filesystem only",
                device.display()
            ));
            None
        }
    }
}
