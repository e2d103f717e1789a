//! Disk images of a secondary disk for the boot tests and the demo, built without root
//! and without mounting anything: a GPT from the library's writer, FAT with
//! `mkfs.fat` + mtools and ext4 with `mke2fs -d` in files of their own that are then
//! copied in at their partition's offset, and GRUB installed for BIOS (a core image in
//! the BIOS boot partition, `boot.img` patched into the MBR as `grub-bios-setup` does)
//! and for UEFI (`EFI/BOOT/BOOTX64.EFI` on the ESP).
//!
//! The recovery filesystem carries the label PID 1 looks for
//! ([`understudy::init::recorded::RECOVERY_LABEL`]) and, when the spec records them,
//! the disks' identities at [`understudy::init::recorded::DISKS_FILE`]. The images
//! filesystem (`US-IMAGES`) is empty, or filled from a tree of image directories and
//! sized to hold them when the spec gives one (the restore scenarios).
//!
//! Also a small primary disk for the demo and the boot tests ([`build_primary`]): GPT,
//! an ext4 root filled from a tree, and GRUB (BIOS and UEFI) booting the kernel and
//! initrd in that tree, so the secondary's "Primary disk" entry has something to
//! chainload; optionally with the "Recovery" entry that `grub/40_understudy` prints,
//! as `update-grub` on a provisioned appliance pastes it ([`recovery_snippet`]).
//!
//! Does not own: what GRUB's configuration says or the environment block format
//! (`understudy::boot`), booting the images (`boottest.rs`, `demo.rs`).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use understudy::boot::{self, ENV_BLOCK_BYTES, SecondaryBoot};
use understudy::disk::{Identity, Recorded};
use understudy::init::recorded::{DISKS_FILE, RECOVERY_LABEL};
use understudy::layout::{Bytes, Change, Geometry, Lba, MIB, PlannedPartition, SectorSize, Table};
use understudy::layout::{PartitionPlan, Sectors};
use uuid::Uuid;

use crate::run::Cmd;

const GRUB_PC_DIR: &str = "/usr/lib/grub/i386-pc";
const GRUB_EFI_DIR: &str = "/usr/lib/grub/x86_64-efi";

/// GPT partition types.
const BIOS_BOOT: Uuid = Uuid::from_u128(0x21686148_6449_6e6f_744e_656564454649);
const EFI_SYSTEM: Uuid = Uuid::from_u128(0xc12a7328_f81f_11d2_ba4b_00a0c93ec93b);
const LINUX_FS: Uuid = Uuid::from_u128(0x0fc63daf_8483_4772_8e79_3d69d8477de4);

/// Fixed identities of the test secondary, so logs and configs read the same every run.
pub const DISK_GUID: Uuid = Uuid::from_u128(0x5ec0a3d1_0000_4e5c_9a11_000000000000);
pub const ESP_VOLUME_ID: &str = "5EC0-0002";
pub const RECOVERY_UUID: &str = "5ec0a3d1-0003-4e5c-9a11-000000000003";
pub const EMERGENCY_UUID: &str = "5ec0a3d1-0004-4e5c-9a11-000000000004";
pub const IMAGES_UUID: &str = "5ec0a3d1-0005-4e5c-9a11-000000000005";

/// Fixed identities of the test and demo primary.
pub const PRIMARY_DISK_GUID: Uuid = Uuid::from_u128(0x9a1d0000_0000_4e5c_9a11_000000000000);
pub const PRIMARY_ESP_VOLUME_ID: &str = "9A1D-0002";
pub const PRIMARY_ROOT_UUID: &str = "9a1d0000-0003-4e5c-9a11-000000000003";

/// Offsets in GRUB's i386-pc `boot.img` (include/grub/i386/pc/boot.h).
const BOOT_KERNEL_SECTOR: usize = 0x5c;
const BOOT_DRIVE: usize = 0x64;
const BOOT_DRIVE_CHECK: usize = 0x66;
/// `boot.img` code ends where the MBR's disk signature and partition table begin.
const BOOT_WINDOWS_NT_MAGIC: usize = 0x1b8;
/// The first blocklist of `diskboot.img` (core.img's first sector) sits at its end:
/// start sector (u64), sector count (u16), load segment (u16) (boot/i386/pc/diskboot.S).
const BLOCKLIST_START: usize = 0x200 - 12;
const BLOCKLIST_LEN: usize = 0x200 - 4;

/// One partition of the secondary.
struct Part {
    name: &'static str,
    type_guid: Uuid,
    size: Bytes,
}

/// The images partition's size when the spec gives no images tree.
const EMPTY_IMAGES: Bytes = Bytes(32 * MIB);

/// The partitions, scaled down from docs/disk-layout.md's sizes for tests, with an
/// images partition of `images` bytes.
const fn parts(images: Bytes) -> [Part; 5] {
    [
        Part {
            name: "bios-boot",
            type_guid: BIOS_BOOT,
            size: Bytes(MIB),
        },
        Part {
            name: "understudy-esp",
            type_guid: EFI_SYSTEM,
            size: Bytes(64 * MIB),
        },
        Part {
            name: "understudy-recovery",
            type_guid: LINUX_FS,
            size: Bytes(128 * MIB),
        },
        Part {
            name: "understudy-emergency",
            type_guid: LINUX_FS,
            size: Bytes(64 * MIB),
        },
        Part {
            name: "understudy-images",
            type_guid: LINUX_FS,
            size: images,
        },
    ]
}

/// What goes on a test secondary.
pub struct SecondarySpec {
    /// Scratch space for the filesystems and GRUB images (created).
    pub work: PathBuf,
    pub output: PathBuf,
    pub boot: SecondaryBoot,
    pub recovery_kernel: PathBuf,
    pub recovery_initrd: PathBuf,
    /// Put at the emergency filesystem's `/vmlinuz` and `/initrd.img`.
    pub emergency_kernel: PathBuf,
    pub emergency_initrd: PathBuf,
    /// The two environment block copies' bytes (`None`: the file is left out).
    pub env_a: Option<Vec<u8>>,
    pub env_b: Option<Vec<u8>>,
    /// GRUB's one-shot choice block at [`boot::NEXT_ENTRY_PATH`] (`None`: left out).
    pub next_entry: Option<Vec<u8>>,
    /// Written as JSON to [`DISKS_FILE`] on the recovery filesystem (`None`: left out).
    pub recorded: Option<Recorded>,
    /// The images filesystem's contents (image directories at its root, as the
    /// recovery console lists them) and its partition's size, a whole number of MiB
    /// (`None`: an empty filesystem of 32 MiB).
    pub images: Option<(PathBuf, Bytes)>,
    /// The emergency filesystem's tree as it is (`None`: one made of
    /// `emergency_kernel` and `emergency_initrd` at the paths of the emergency entry).
    /// A given tree must hold them itself: the copy-back scenario indexes it first.
    pub emergency_root: Option<PathBuf>,
}

/// The size of a secondary this module builds with no images tree (the partitions
/// and 2 MiB for alignment and the GPT's copies): what the guest sees as the disk's
/// size.
pub fn secondary_bytes() -> Bytes {
    secondary_bytes_with(EMPTY_IMAGES)
}

/// The size of a secondary whose images partition is `images` bytes.
pub fn secondary_bytes_with(images: Bytes) -> Bytes {
    Bytes(parts(images).iter().map(|p| p.size.0).sum::<u64>() + 2 * MIB)
}

/// The identities provision would record for a virtio primary and secondary with
/// these serial numbers and sizes (virtio disks have no WWN or model).
pub fn recorded_virtio(primary: (&str, Bytes), secondary: (&str, Bytes)) -> Recorded {
    let identity = |(serial, size): (&str, Bytes)| Identity {
        wwn: None,
        serial: Some(serial.to_string()),
        model: None,
        size: understudy::disk::Bytes(size.0),
        logical_sector: understudy::disk::Bytes(512),
    };
    Recorded {
        primary: Some(identity(primary)),
        secondary: Some(identity(secondary)),
    }
}

/// The menu of a test secondary: no primary recorded, 3 s fallback.
pub fn test_boot() -> SecondaryBoot {
    SecondaryBoot {
        recovery_fs_uuid: RECOVERY_UUID.to_string(),
        emergency: boot::EmergencyEntry {
            fs_uuid: EMERGENCY_UUID.to_string(),
            kernel: "/vmlinuz".to_string(),
            initrd: "/initrd.img".to_string(),
            cmdline: Vec::new(),
        },
        primary: None,
        fallback_timeout_secs: 3,
        menu_timeout_secs: 5,
    }
}

/// The GPT of the secondary, partitions 1 MiB-aligned from 1 MiB, the images
/// partition `images` bytes.
fn plan(images: Bytes) -> Result<PartitionPlan> {
    ensure!(
        images.0 >= EMPTY_IMAGES.0 && images.0.is_multiple_of(MIB),
        "an images partition of {} bytes (a whole number of MiB, at least 32, is needed)",
        images.0
    );
    plan_of(
        &parts(images),
        DISK_GUID,
        0x5ec0a3d1_0000_4e5c_9a11_100000000000,
    )
}

/// A GPT holding `parts` in order, 1 MiB-aligned from 1 MiB, with 1 MiB to spare at
/// the end; partition `n`'s UUID is `part_uuid_base + n`.
fn plan_of(layout: &[Part], disk_guid: Uuid, part_uuid_base: u128) -> Result<PartitionPlan> {
    let sector = SectorSize::B512;
    let total: u64 = layout
        .iter()
        .try_fold(2 * MIB, |acc, p| acc.checked_add(p.size.0))
        .context("image size overflows")?;
    let table = Table::Gpt { disk_guid };
    let geo = Geometry::new(&table, Bytes(total), sector).context("no GPT fits the image")?;
    let mut start = MIB;
    let mut partitions = Vec::new();
    for (i, p) in layout.iter().enumerate() {
        let number = u32::try_from(i + 1)?;
        partitions.push(PlannedPartition {
            number,
            start_lba: Lba(start / sector.bytes()),
            size_lba: p.size.to_sectors(sector).context("partition size")?,
            type_guid: Some(p.type_guid),
            mbr_type: None,
            part_uuid: Some(Uuid::from_u128(part_uuid_base + u128::from(number))),
            name: p.name.to_string(),
            attributes: 0,
            was_bytes: p.size,
            change: Change::Same,
        });
        start = start
            .checked_add(p.size.0)
            .context("image size overflows")?;
    }
    Ok(PartitionPlan {
        table,
        sector_size: sector,
        disk_bytes: Bytes(total),
        first_usable: geo.first_usable,
        last_usable: geo.last_usable,
        partitions,
        lvs: Vec::new(),
    })
}

/// Builds the secondary disk image described by `spec`.
pub fn build_secondary(spec: &SecondarySpec) -> Result<()> {
    crate::run::require(&["mke2fs", "mkfs.fat", "mcopy", "mmd", "grub-mkimage"])?;
    let work = &spec.work;
    if work.exists() {
        fs::remove_dir_all(work).with_context(|| format!("removing {}", work.display()))?;
    }
    fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let (images_tree, images_size) = match &spec.images {
        Some((tree, size)) => (Some(tree.as_path()), *size),
        None => (None, EMPTY_IMAGES),
    };
    let plan = plan(images_size)?;
    let out = &spec.output;
    let f = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    f.set_len(plan.disk_bytes.0)
        .with_context(|| format!("sizing {}", out.display()))?;
    drop(f);
    understudy::partition::write(out, &plan)?;
    let part = |n: usize| &plan.partitions[n - 1];

    // GRUB: one early configuration for both platforms.
    let (core, efi) = grub_images(work, &spec.boot.recovery_fs_uuid)?;

    esp(work, out, &plan, 2, ("US-ESP", ESP_VOLUME_ID), &efi)?;

    // Recovery: GRUB's configuration and environment, the recovery kernel and initrd.
    let rec = work.join("recovery-root");
    fs::create_dir_all(rec.join("grub")).context("creating the recovery tree")?;
    fs::create_dir_all(rec.join("boot")).context("creating the recovery tree")?;
    write(
        &rec.join(boot::GRUB_CFG_PATH.trim_start_matches('/')),
        boot::render_grub_cfg(&spec.boot)?.as_bytes(),
    )?;
    for (bytes, path) in [
        (&spec.env_a, boot::ENV_PATH_A),
        (&spec.env_b, boot::ENV_PATH_B),
        (&spec.next_entry, boot::NEXT_ENTRY_PATH),
    ] {
        if let Some(b) = bytes {
            ensure!(
                b.len() == ENV_BLOCK_BYTES,
                "an env block of {} bytes",
                b.len()
            );
            write(&rec.join(path.trim_start_matches('/')), b)?;
        }
    }
    copy_file(
        &spec.recovery_kernel,
        &rec.join(boot::RECOVERY_KERNEL_PATH.trim_start_matches('/')),
    )?;
    copy_file(
        &spec.recovery_initrd,
        &rec.join(boot::RECOVERY_INITRD_PATH.trim_start_matches('/')),
    )?;
    if let Some(recorded) = &spec.recorded {
        let file = rec.join(DISKS_FILE);
        if let Some(dir) = file.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let json = serde_json::to_string_pretty(recorded).context("encoding the identities")?;
        write(&file, json.as_bytes())?;
    }
    ext4(
        work,
        out,
        &plan,
        3,
        RECOVERY_LABEL,
        &spec.boot.recovery_fs_uuid,
        Some(&rec),
    )?;

    // Emergency: a kernel and an initrd where the emergency entry looks for them.
    let e = &spec.boot.emergency;
    let em = match &spec.emergency_root {
        Some(tree) => tree.clone(),
        None => {
            let em = work.join("emergency-root");
            fs::create_dir_all(&em).context("creating the emergency tree")?;
            copy_file(
                &spec.emergency_kernel,
                &em.join(e.kernel.trim_start_matches('/')),
            )?;
            copy_file(
                &spec.emergency_initrd,
                &em.join(e.initrd.trim_start_matches('/')),
            )?;
            em
        }
    };
    ext4(work, out, &plan, 4, "US-EMERGENCY", &e.fs_uuid, Some(&em))?;
    ext4(work, out, &plan, 5, "US-IMAGES", IMAGES_UUID, images_tree)?;

    install_bios(out, &core, part(1), plan.sector_size)?;
    Ok(())
}

/// What goes on a test or demo primary.
pub struct PrimarySpec {
    /// Scratch space for the filesystems and GRUB images (created).
    pub work: PathBuf,
    pub output: PathBuf,
    /// The root filesystem's contents, with the appliance's kernel and initrd at
    /// `/boot/vmlinuz` and `/boot/initrd.img`; `/grub/grub.cfg` is written into it.
    pub tree: PathBuf,
    /// The root filesystem's size.
    pub root: Bytes,
    /// The GRUB menu entry's title and the kernel's command line after `root=`.
    pub title: String,
    pub cmdline: String,
    /// The secondary's recovery filesystem UUID: when given, the primary's menu also
    /// has the "Recovery" entry that reaches it ([`recovery_snippet`]).
    pub recovery_entry: Option<String>,
}

/// What `grub/40_understudy` prints for a secondary whose recovery filesystem has
/// `uuid`: the script itself, run as `update-grub` runs it, with its configuration
/// file (`UNDERSTUDY_RECOVERY_UUID=`, as provision writes it) in `work`.
pub fn recovery_snippet(work: &Path, uuid: &str) -> Result<String> {
    let conf = work.join("understudy-grub.conf");
    write(
        &conf,
        format!("UNDERSTUDY_RECOVERY_UUID={uuid}\n").as_bytes(),
    )?;
    let script = crate::repo_root().join("grub/40_understudy");
    let out = Cmd::new("sh")
        .arg(&script)
        .env("UNDERSTUDY_GRUB_CONF", &conf)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        out.contains("menuentry \"Recovery\"") && out.contains(uuid),
        "{} printed no Recovery entry for {uuid}:\n{out}",
        script.display()
    );
    Ok(out)
}

/// Builds a primary: GPT with a BIOS boot partition, an ESP and an ext4 root
/// (label `appliance-root`, UUID [`PRIMARY_ROOT_UUID`]), GRUB for BIOS and UEFI
/// finding the root by its UUID and booting `/boot/vmlinuz` from it. Returns the
/// disk's size.
pub fn build_primary(spec: &PrimarySpec) -> Result<Bytes> {
    crate::run::require(&["mke2fs", "mkfs.fat", "mcopy", "mmd", "grub-mkimage"])?;
    let work = &spec.work;
    if work.exists() {
        fs::remove_dir_all(work).with_context(|| format!("removing {}", work.display()))?;
    }
    fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let parts = [
        Part {
            name: "bios-boot",
            type_guid: BIOS_BOOT,
            size: Bytes(MIB),
        },
        Part {
            name: "EFI system",
            type_guid: EFI_SYSTEM,
            // FAT32 needs 65525 clusters: 64 MiB of 512-byte ones.
            size: Bytes(64 * MIB),
        },
        Part {
            name: "appliance-root",
            type_guid: LINUX_FS,
            size: spec.root,
        },
    ];
    let plan = plan_of(
        &parts,
        PRIMARY_DISK_GUID,
        0x9a1d0000_0000_4e5c_9a11_100000000000,
    )?;
    let out = &spec.output;
    let f = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    f.set_len(plan.disk_bytes.0)
        .with_context(|| format!("sizing {}", out.display()))?;
    drop(f);
    understudy::partition::write(out, &plan)?;

    let (core, efi) = grub_images(work, PRIMARY_ROOT_UUID)?;
    esp(
        work,
        out,
        &plan,
        2,
        ("APPL-ESP", PRIMARY_ESP_VOLUME_ID),
        &efi,
    )?;
    let mut cfg = format!(
        "serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\n\
         set timeout=2\nset default=0\n\
         menuentry \"{title}\" {{\n  linux /boot/vmlinuz root=UUID={PRIMARY_ROOT_UUID} {cmdline}\n  initrd /boot/initrd.img\n}}\n",
        title = spec.title,
        cmdline = spec.cmdline,
    );
    if let Some(uuid) = &spec.recovery_entry {
        cfg.push_str(&recovery_snippet(work, uuid)?);
    }
    let cfg_path = spec.tree.join("grub/grub.cfg");
    if let Some(dir) = cfg_path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write(&cfg_path, cfg.as_bytes())?;
    ext4(
        work,
        out,
        &plan,
        3,
        "appliance-root",
        PRIMARY_ROOT_UUID,
        Some(&spec.tree),
    )?;
    install_bios(out, &core, &plan.partitions[0], plan.sector_size)?;
    Ok(plan.disk_bytes)
}

/// A FAT32 ESP for partition `n` (label and volume id `XXXX-XXXX`) holding GRUB's
/// `EFI/BOOT/BOOTX64.EFI`, copied into the image.
fn esp(
    work: &Path,
    out: &Path,
    plan: &PartitionPlan,
    n: usize,
    (label, volume_id): (&str, &str),
    efi: &Path,
) -> Result<()> {
    let file = work.join(format!("{label}.fat"));
    let p = &plan.partitions[n - 1];
    make_sized(&file, p.size_lba, plan.sector_size)?;
    let volume_id = volume_id.replace('-', "");
    Cmd::new("mkfs.fat")
        .args(["-F", "32", "-s", "1", "-n", label, "-i", &volume_id])
        .arg(&file)
        .output()
        .with_context(|| format!("making the {label} filesystem"))?;
    let img = format!("-i{}", file.display());
    Cmd::new("mmd")
        .args([&img, "::/EFI", "::/EFI/BOOT"])
        .output()?;
    Cmd::new("mcopy")
        .arg(&img)
        .arg(efi)
        .arg("::/EFI/BOOT/BOOTX64.EFI")
        .output()?;
    copy_in(&file, out, p, plan.sector_size)
}

/// GRUB's BIOS core image and EFI binary, both with an early configuration that
/// finds the filesystem `root_uuid` and loads its `grub.cfg`.
fn grub_images(work: &Path, root_uuid: &str) -> Result<(PathBuf, PathBuf)> {
    let early = work.join("early.cfg");
    write(&early, boot::render_early_cfg(root_uuid)?.as_bytes())?;
    let core = work.join("core.img");
    grub_mkimage("i386-pc", GRUB_PC_DIR, boot::GRUB_MODULES_PC, &early, &core)?;
    let efi = work.join("BOOTX64.EFI");
    grub_mkimage(
        "x86_64-efi",
        GRUB_EFI_DIR,
        boot::GRUB_MODULES_EFI,
        &early,
        &efi,
    )?;
    Ok((core, efi))
}

fn grub_mkimage(format: &str, dir: &str, extra: &[&str], early: &Path, out: &Path) -> Result<()> {
    Cmd::new("grub-mkimage")
        .args(["-O", format, "-d", dir, "-p", "/grub", "-c"])
        .arg(early)
        .arg("-o")
        .arg(out)
        .args(boot::GRUB_MODULES)
        .args(extra)
        .output()
        .with_context(|| format!("making GRUB's {format} image"))?;
    Ok(())
}

/// An ext4 filesystem for partition `n`, filled from `tree`, copied into the image.
fn ext4(
    work: &Path,
    out: &Path,
    plan: &PartitionPlan,
    n: usize,
    label: &str,
    uuid: &str,
    tree: Option<&Path>,
) -> Result<()> {
    let p = &plan.partitions[n - 1];
    let file = work.join(format!("{label}.ext4"));
    make_sized(&file, p.size_lba, plan.sector_size)?;
    let mut cmd = Cmd::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", label, "-U", uuid])
        .args(["-E", "root_owner=0:0"]);
    if let Some(t) = tree {
        cmd = cmd.arg("-d").arg(t);
    }
    cmd.arg(&file)
        .output()
        .with_context(|| format!("making the {label} filesystem"))?;
    copy_in(&file, out, p, plan.sector_size)
}

/// A sparse file of exactly the partition's size.
fn make_sized(path: &Path, size: Sectors, sector: SectorSize) -> Result<()> {
    let bytes = size.bytes(sector).context("partition size overflows")?;
    let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(bytes.0)
        .with_context(|| format!("sizing {}", path.display()))
}

/// Copies a filesystem file into the image at the partition's offset, skipping
/// zero MiBs (the image is sparse and was created zeroed).
fn copy_in(from: &Path, image: &Path, p: &PlannedPartition, sector: SectorSize) -> Result<()> {
    let offset = p.start_lba.bytes(sector).context("offset overflows")?.0;
    let size = p.size_lba.bytes(sector).context("size overflows")?.0;
    let mut src = File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let len = src.metadata()?.len();
    ensure!(
        len <= size,
        "{} is larger than partition {}",
        from.display(),
        p.number
    );
    let mut dst = OpenOptions::new()
        .write(true)
        .open(image)
        .with_context(|| format!("opening {}", image.display()))?;
    let mut buf = vec![0u8; usize::try_from(MIB)?];
    let mut done = 0u64;
    let what = || format!("copying {} into {}", from.display(), image.display());
    while done < len {
        let n = src.read(&mut buf).with_context(what)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            dst.seek(SeekFrom::Start(offset + done))
                .with_context(what)?;
            dst.write_all(&buf[..n]).with_context(what)?;
        }
        done += n as u64;
    }
    dst.sync_all().with_context(what)
}

/// What `grub-bios-setup` does for a GPT disk with a BIOS boot partition: core.img
/// into the partition, its first sector's blocklist pointing at the rest, and
/// `boot.img` in the MBR's code area pointing at core.img, keeping the protective
/// MBR's disk signature and partition table.
fn install_bios(image: &Path, core: &Path, p: &PlannedPartition, sector: SectorSize) -> Result<()> {
    ensure!(
        sector == SectorSize::B512,
        "BIOS GRUB needs 512-byte sectors"
    );
    let mut core_bytes = fs::read(core).with_context(|| format!("reading {}", core.display()))?;
    let diskboot = fs::read(Path::new(GRUB_PC_DIR).join("diskboot.img"))
        .context("reading GRUB's diskboot.img")?;
    ensure!(
        core_bytes.len() > 512 && core_bytes[..BLOCKLIST_START] == diskboot[..BLOCKLIST_START],
        "{} does not start with diskboot.img",
        core.display()
    );
    let sectors = u64::try_from(core_bytes.len().div_ceil(512))?;
    core_bytes.resize(usize::try_from(sectors * 512)?, 0);
    if sectors > p.size_lba.0 {
        bail!(
            "core.img is {sectors} sectors, the BIOS boot partition {}",
            p.size_lba.0
        );
    }
    let core_lba = p.start_lba.0;
    core_bytes[BLOCKLIST_START..BLOCKLIST_START + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    core_bytes[BLOCKLIST_LEN..BLOCKLIST_LEN + 2]
        .copy_from_slice(&u16::try_from(sectors - 1)?.to_le_bytes());

    let boot_img =
        fs::read(Path::new(GRUB_PC_DIR).join("boot.img")).context("reading GRUB's boot.img")?;
    ensure!(
        boot_img.len() == 512,
        "boot.img is {} bytes",
        boot_img.len()
    );
    let mut dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("opening {}", image.display()))?;
    let mut mbr = [0u8; 512];
    dev.read_exact(&mut mbr)
        .with_context(|| format!("reading the MBR of {}", image.display()))?;
    mbr[..BOOT_WINDOWS_NT_MAGIC].copy_from_slice(&boot_img[..BOOT_WINDOWS_NT_MAGIC]);
    mbr[BOOT_KERNEL_SECTOR..BOOT_KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    // 0xff: boot from the drive the BIOS says (DL).
    mbr[BOOT_DRIVE] = 0xff;
    // A hard disk: skip the floppy check's jump (grub-bios-setup does the same for
    // buggy BIOSes that pass a wrong DL).
    mbr[BOOT_DRIVE_CHECK..BOOT_DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);
    let what = || format!("installing GRUB for BIOS on {}", image.display());
    dev.seek(SeekFrom::Start(core_lba * 512))
        .with_context(what)?;
    dev.write_all(&core_bytes).with_context(what)?;
    dev.seek(SeekFrom::Start(0)).with_context(what)?;
    dev.write_all(&mbr).with_context(what)?;
    dev.sync_all().with_context(what)
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn copy_file(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_valid_and_aligned() {
        let p = plan(EMPTY_IMAGES).unwrap();
        understudy::layout::check_plan(&p).unwrap();
        for part in &p.partitions {
            assert_eq!(part.start_lba.0 % 2048, 0, "partition {}", part.number);
        }
        assert_eq!(p.partitions[0].type_guid, Some(BIOS_BOOT));
        assert_eq!(p.partitions[0].start_lba, Lba(2048));
    }

    #[test]
    fn an_images_partition_sized_for_a_tree_is_in_the_plan_and_the_disk_size() {
        let images = Bytes(600 * MIB);
        let p = plan(images).unwrap();
        understudy::layout::check_plan(&p).unwrap();
        let last = p.partitions.last().unwrap();
        assert_eq!(last.size_lba.bytes(p.sector_size).unwrap(), images);
        assert_eq!(p.disk_bytes, secondary_bytes_with(images));
        assert_eq!(
            secondary_bytes_with(images).0 - secondary_bytes().0,
            568 * MIB
        );
        assert!(plan(Bytes(600 * MIB + 1)).is_err());
        assert!(plan(Bytes(16 * MIB)).is_err());
    }

    /// GRUB's images carry the values the offsets above are for.
    #[test]
    fn grub_boot_images_have_the_expected_defaults() {
        let boot = fs::read(Path::new(GRUB_PC_DIR).join("boot.img")).unwrap();
        assert_eq!(
            boot[BOOT_KERNEL_SECTOR..BOOT_KERNEL_SECTOR + 8],
            1u64.to_le_bytes()
        );
        assert_eq!(boot[BOOT_DRIVE], 0xff);
        assert_eq!(boot[BOOT_DRIVE_CHECK], 0xeb, "a short jmp");
        let diskboot = fs::read(Path::new(GRUB_PC_DIR).join("diskboot.img")).unwrap();
        assert_eq!(
            diskboot[BLOCKLIST_START..BLOCKLIST_START + 8],
            2u64.to_le_bytes()
        );
        assert_eq!(
            diskboot[BLOCKLIST_LEN..BLOCKLIST_LEN + 4],
            [0, 0, 0x20, 0x08]
        );
    }
}
