//! The test appliance: the Debian corpus tree (`corpus.rs`) with what a test needs
//! added through an overlay (never in the cached corpus), made into an image with
//! `understudy image create` and a layout with `/boot`, an LVM root and swap, and
//! put on a secondary-like disk (a whole-disk ext4 filled with `mke2fs -d`) with the
//! expectations a guest checks a restore against.
//!
//! Owns the appliance's layout description and its fixed identities, the overlay
//! (fstab, GRUB's serial console, a serial-getty autologin, our binary at
//! `/usr/local/sbin/understudy`), and the cache of the image disk under
//! `target/vm/appliance/`, keyed by everything that goes into it.
//! Does not own: the corpus (`corpus.rs`), the VM scenarios (`restoretest.rs`).

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use understudy::boot::PrimaryDisk;
use understudy::layout::{Bytes, MIB};

use crate::run::Cmd;
use crate::{corpus, repo_root, target_dir};

/// The appliance's identities, fixed so that its fstab can name them.
pub const BOOT_UUID: &str = "a9911a4c-0b00-4e5c-9a11-000000000b00";
pub const ROOT_UUID: &str = "a9911a4c-0001-4e5c-9a11-000000000001";
pub const SWAP_UUID: &str = "a9911a4c-5a00-4e5c-9a11-000000005a00";
pub const VG: &str = "vg0";
pub const IMAGE_ID: &str = "20260101T000000Z-appliance";
/// The disk the image was made for, in MiB; the same-size restore uses it.
pub const DISK_MIB: u64 = 2048;

/// The layout description the image is made from (docs/image-format.md).
pub fn description() -> String {
    format!(
        r#"{{
  "host": "appliance",
  "disk": {{ "size": "{DISK_MIB}MiB" }},
  "partitions": [
    {{ "name": "bios", "size": "1MiB", "type": "bios-boot" }},
    {{ "name": "boot", "size": "256MiB",
      "filesystem": {{ "type": "ext4", "mount": "/boot", "label": "boot", "uuid": "{BOOT_UUID}" }} }},
    {{ "name": "lvm", "grow": true, "pv": "{VG}" }}
  ],
  "vgs": [
    {{ "name": "{VG}", "lvs": [
      {{ "name": "root", "grow": true,
        "filesystem": {{ "type": "ext4", "mount": "/", "uuid": "{ROOT_UUID}",
                         "options": ["errors=remount-ro"] }} }},
      {{ "name": "swap", "size": "128MiB", "swap": {{ "uuid": "{SWAP_UUID}" }} }}
    ] }}
  ]
}}
"#
    )
}

/// The files the overlay adds or replaces, relative to the tree's root.
fn overlay_files() -> Vec<(&'static str, String, u32)> {
    vec![
        (
            "etc/fstab",
            format!(
                "# written by the understudy test appliance (xtask/src/appliance.rs)\n\
                 UUID={ROOT_UUID} / ext4 errors=remount-ro 0 1\n\
                 UUID={BOOT_UUID} /boot ext4 defaults 0 2\n\
                 UUID={SWAP_UUID} none swap sw 0 0\n"
            ),
            0o644,
        ),
        ("etc/hostname", "appliance\n".into(), 0o644),
        (
            // update-grub in the restored system reads this: kernel and GRUB on ttyS0.
            "etc/default/grub",
            "GRUB_DEFAULT=0\nGRUB_TIMEOUT=1\nGRUB_DISTRIBUTOR=Debian\n\
             GRUB_CMDLINE_LINUX_DEFAULT=\"\"\nGRUB_CMDLINE_LINUX=\"console=ttyS0,115200n8\"\n\
             GRUB_TERMINAL=serial\nGRUB_SERIAL_COMMAND=\"serial --unit=0 --speed=115200\"\n\
             GRUB_DISABLE_OS_PROBER=true\n"
                .into(),
            0o644,
        ),
        (
            "etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf",
            "[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,57600,38400,9600 %I $TERM\n"
                .into(),
            0o644,
        ),
    ]
}

/// FNV-1a, 64 bit, as `corpus::key` uses.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(b"\0") {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The static understudy binary the tests use (the dev build: the release build's
/// fat LTO takes minutes), built if needed, without its debug sections.
pub fn understudy_bin(dir: &Path) -> Result<PathBuf> {
    Cmd::new("cargo")
        .args(["build", "--bin", "understudy"])
        .dir(repo_root())
        .run()
        .context("building understudy")?;
    let built = target_dir().join("x86_64-unknown-linux-gnu/debug/understudy");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join("understudy");
    Cmd::new("objcopy")
        .arg("--strip-debug")
        .arg(&built)
        .arg(&out)
        .output()
        .with_context(|| format!("stripping {}", built.display()))?;
    Ok(out)
}

/// What a restore scenario needs.
#[derive(Debug, Clone)]
pub struct ImageDisk {
    /// Raw whole-disk ext4 holding `images/IMAGE_ID/`, `understudy`, `check.sh` and
    /// `expect/` (the restored trees' paths and MD5 sums).
    pub disk: PathBuf,
    /// The image directory on the host.
    pub image: PathBuf,
}

/// The image disk, made again when the corpus, the description, the overlay, the
/// check script or our binary changed.
pub fn image_disk() -> Result<ImageDisk> {
    let root = corpus::ensure()?;
    let dir = target_dir().join("vm/appliance");
    let bin = understudy_bin(&dir.join("bin"))?;
    let bin_bytes = fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
    let overlay: Vec<u8> = overlay_files()
        .iter()
        .flat_map(|(p, c, _)| [p.as_bytes(), c.as_bytes()].concat())
        .collect();
    let key = format!(
        "{:016x}",
        fnv(&[
            corpus::key().as_bytes(),
            description().as_bytes(),
            &overlay,
            CHECK_SH.as_bytes(),
            &bin_bytes
        ])
    );
    let disk = dir.join("images.raw");
    let stamp = dir.join("images.key");
    let image = dir.join("fill/images").join(IMAGE_ID);
    let mib = 1024;
    if fs::read_to_string(&stamp).is_ok_and(|k| k == key) && disk.is_file() && image.is_dir() {
        return Ok(ImageDisk { disk, image });
    }
    let _ = fs::remove_file(&stamp);
    let tree = dir.join("tree");
    let fill = dir.join("fill");
    for d in [&tree, &fill] {
        if d.exists() {
            fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    // Hardlinks into the cache: cheap, and safe because the overlay unlinks every
    // file before writing it and nothing else writes to this tree.
    Cmd::new("cp")
        .arg("-al")
        .arg(&root)
        .arg(&tree)
        .run()
        .context("linking the corpus tree")?;
    for (rel, content, mode) in overlay_files() {
        put(&tree.join(rel), content.as_bytes(), mode)?;
    }
    put(&tree.join("usr/local/sbin/understudy"), &bin_bytes, 0o755)?;

    fs::create_dir_all(fill.join("images")).context("creating the image disk's tree")?;
    let layout = dir.join("layout.json");
    fs::write(&layout, description()).with_context(|| format!("writing {}", layout.display()))?;
    Cmd::new(&bin)
        .args(["image", "create", "--layout"])
        .arg(&layout)
        .arg(format!("--tree=/={}", tree.display()))
        .args(["--id", IMAGE_ID])
        .arg(fill.join("images"))
        .run()
        .context("understudy image create")?;
    put(&fill.join("understudy"), &bin_bytes, 0o755)?;
    put(&fill.join("check.sh"), CHECK_SH.as_bytes(), 0o755)?;
    expectations(&tree, &fill.join("expect"))?;

    let _ = fs::remove_file(&disk);
    Cmd::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "images", "-d"])
        .arg(&fill)
        .arg(&disk)
        .arg(format!("{mib}M"))
        .output()
        .context("making the image disk")?;
    // The tree is only needed to make the image and expectations.
    fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    fs::write(&stamp, &key).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(ImageDisk { disk, image })
}

/// Replace `path` (unlinking first: it may be a hardlink into the corpus cache).
fn put(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// `expect/{root,boot}.{paths,md5}`: every path (sorted bytewise) and the MD5 of every
/// regular file of the two filesystems (but the few whose names md5sum must escape),
/// as the guest's busybox `find` and `md5sum` print them. The root's `/boot` is its
/// mount point, empty.
fn expectations(tree: &Path, out: &Path) -> Result<()> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let script = r#"set -eu
tree=$1; out=$2
( cd "$tree" && find . -path ./boot/'*' -prune -o -print | LC_ALL=C sort > "$out/root.paths" )
( cd "$tree" && find . -path ./boot -prune -o -type f -print0 | LC_ALL=C sort -z | xargs -0 md5sum > "$out/root.md5" )
( cd "$tree/boot" && find . | LC_ALL=C sort > "$out/boot.paths" )
( cd "$tree/boot" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 md5sum > "$out/boot.md5" )
# md5sum escapes names with a backslash (systemd's `\x2d` units); busybox's -c does
# not read those lines back, so they are left out of the sums (their paths still count).
for f in root boot; do grep -v '^\\' "$out/$f.md5" > "$out/$f.md5.tmp"; mv "$out/$f.md5.tmp" "$out/$f.md5"; done
"#;
    Cmd::bash(script)
        .arg("expectations")
        .arg(tree)
        .arg(out)
        .output()
        .context("listing the appliance tree")?;
    let n = fs::read_to_string(out.join("root.paths"))?.lines().count();
    if n < 1000 {
        bail!("the appliance tree lists only {n} paths");
    }
    Ok(())
}

/// Run in the recovery shell after a restore, with the image disk at `/img`: checks
/// the restored `/dev/vda` and prints one marker line per check.
pub const CHECK_SH: &str = r#"#!/bin/sh
# Checks a restored primary (/dev/vda) against /img/expect; written by xtask/src/appliance.rs.
E=/img/expect
sgdisk -v /dev/vda; echo "SGDISK-RC=$?"
lvm vgchange -ay vg0 >/dev/null 2>&1
lvm lvs --noheadings -o lv_name,lv_size vg0
echo "ROOT-LV-BYTES=$(lvm lvs --noheadings --units b --nosuffix -o lv_size vg0/root | tr -d ' ')"
e2fsck -fn /dev/vda2 >/tmp/fsck-boot 2>&1; echo "E2FSCK-BOOT-RC=$?"; tail -2 /tmp/fsck-boot
e2fsck -fn /dev/mapper/vg0-root >/tmp/fsck-root 2>&1; echo "E2FSCK-ROOT-RC=$?"; tail -2 /tmp/fsck-root
blkid /dev/vda2 /dev/mapper/vg0-root /dev/mapper/vg0-swap
mkdir -p /r /b
mount -o ro /dev/mapper/vg0-root /r && mount -o ro /dev/vda2 /b || echo "MOUNT-FAILED"
for fs in root:/r boot:/b; do
  name=${fs%%:*}; dir=${fs#*:}
  (cd "$dir" && find . | sort > "/tmp/$name.paths")
  diff "$E/$name.paths" "/tmp/$name.paths" > "/tmp/$name.diff"
  echo "PATHS-$name missing=$(grep -c '^-\./' "/tmp/$name.diff") extra=$(grep -c '^+\./' "/tmp/$name.diff")"
  grep '^[-+]\./' "/tmp/$name.diff" | head -12
  (cd "$dir" && md5sum -c -s "$E/$name.md5"); echo "MD5-$name-RC=$?"
  (cd "$dir" && md5sum -c "$E/$name.md5" 2>&1 | grep -v ': OK$' | head -12)
done
umount /b /r
lvm vgchange -an vg0 >/dev/null 2>&1
echo "CHECKS-DONE"
"#;

/// The appliance image's `/` and `/boot` filesystem UUIDs, from its manifest: what
/// the secondary's GRUB looks for to tell whether the primary is present and to find
/// the disk whose MBR it chainloads (the restore keeps the recorded UUIDs).
pub fn primary_fs_uuids(img: &ImageDisk) -> Result<PrimaryDisk> {
    let manifest = understudy::image::manifest::Manifest::load(&img.image)?;
    let uuid = |mount: &str| {
        manifest
            .layout
            .filesystems
            .iter()
            .find(|f| f.mountpoint.as_deref() == Some(mount))
            .and_then(|f| f.uuid.clone())
            .with_context(|| format!("the image's layout has no {mount} filesystem with a UUID"))
    };
    Ok(PrimaryDisk {
        root_fs_uuid: uuid("/")?,
        boot_fs_uuid: uuid("/boot")?,
        esp_fs_uuid: None,
    })
}

/// `tree/IMAGE_ID/`: hard links to the cached image's files, except a copy of the
/// root archive with one byte flipped in its middle when `corrupt` (the cache stays
/// as it was). Returns the files' total size.
pub fn images_tree(img: &ImageDisk, tree: &Path, corrupt: bool) -> Result<u64> {
    let dir = tree.join(IMAGE_ID);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut total = 0u64;
    let entries =
        fs::read_dir(&img.image).with_context(|| format!("listing {}", img.image.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", img.image.display()))?;
        let from = entry.path();
        let to = dir.join(entry.file_name());
        total = total
            .checked_add(entry.metadata()?.len())
            .context("the image's size overflows")?;
        if corrupt && entry.file_name() == "root.tar.lzo" {
            fs::copy(&from, &to)
                .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            flip_middle_byte(&to)?;
        } else {
            fs::hard_link(&from, &to)
                .with_context(|| format!("linking {} to {}", from.display(), to.display()))?;
        }
    }
    Ok(total)
}

/// Inverts the byte in the middle of `path`.
fn flip_middle_byte(path: &Path) -> Result<()> {
    let what = || format!("flipping a byte of {}", path.display());
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(what)?;
    let at = f.metadata().with_context(what)?.len() / 2;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).with_context(what)?;
    f.read_exact(&mut b).with_context(what)?;
    b[0] ^= 0xff;
    f.seek(SeekFrom::Start(at)).with_context(what)?;
    f.write_all(&b).with_context(what)?;
    f.sync_all().with_context(what)
}

/// The images partition for `bytes` of image files: a tenth more and 64 MiB for
/// ext4's journal and tables, in whole MiB.
pub fn images_partition(bytes: u64) -> Result<Bytes> {
    let want = bytes
        .checked_add(bytes / 10)
        .and_then(|b| b.checked_add(64 * MIB))
        .context("the images partition's size overflows")?;
    Ok(Bytes(want.div_ceil(MIB) * MIB))
}
