//! `console-copy-back` (a child of `vmtest.rs`): the primary came back healthy after
//! the appliance ran from the emergency copy, and the technician copies what was
//! recorded meanwhile back onto it from the recovery console.
//!
//! The primary is the restored Debian appliance (`restoretest::restored_primary`: GPT,
//! `/boot`, an LVM root in `vg0`, the image's UUIDs), recorded as the primary. The
//! secondary (`restoretest::secondary`) carries the appliance image (its layout says
//! where `/` and `/boot` are) and an emergency filesystem made here as the expand
//! step would leave it, then changed as an application would in emergency mode:
//! indexed with `copyback::write_index` (`/etc/fstab` marked remapped), then a record
//! appended to `var/lib/app/records.txt`, `var/lib/app/new.txt` written,
//! `etc/issue.net` deleted and `etc/fstab` edited. The recovery image boots directly
//! with both disks; the console must call the primary healthy, and is driven by keys
//! (`c`, Enter, a wrong serial refused, the primary's serial) to its result. From the
//! console's shell the primary's root LV must then hold the record and the new file,
//! have lost `/etc/issue.net` (a file Debian ships), and keep its own `/etc/fstab`.
//!
//! Does not own: the harness (`qemu/`), the secondary's image (`images.rs`), the
//! console's text (`understudy::console::view`), copy-back's rules
//! (`understudy::restore::copyback`).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use understudy::restore::copyback;

use super::restoretest;
use super::{Ctx, Firmware, STEP, Scenario, secs};
use crate::appliance;
use crate::images;
use crate::qemu::{DirectBoot, DiskSpec, ImageFormat, Key, Machine};
use crate::run::Cmd;

pub const COPY_BACK: Scenario = Scenario {
    name: "console-copy-back",
    firmware: Firmware::SeaBios,
    run: copy_back,
};

const PRIMARY_SERIAL: &str = "US-PRIMARY-0001";
const SECONDARY_SERIAL: &str = "US-SECONDARY-0002";
const APPEND: &str = "console=ttyS0 panic=-1 quiet";
/// This scenario's machine, after the restored primary is there.
const LIMIT: Duration = Duration::from_secs(600);
/// From QEMU start to the console's first screen, direct boot.
const BOOT: Duration = Duration::from_secs(120);
/// Activating LVM, mounting, indexing the emergency tree, copying, syncing.
const COPY: Duration = Duration::from_secs(300);
/// Whole seconds, so that ext4 (`mke2fs -d`) keeps the indexed times exactly.
const EXPANDED_AT: &str = "@1767225600";
const CHANGED_AT: &str = "@1767312000";
const RECORDS: &str = "record 1\nrecord 2\n";
const RECORD_3: &str = "record 3, written in emergency mode\n";
const NEW_FILE: &str = "new in emergency mode\n";
const FSTAB_MARK: &str = "# remapped for the emergency copy";

/// The console's words (`understudy::console::view`) the keys wait for.
const COPY_BACK_OFFERED: &str = "[Enter] go on to the confirmation";
const TYPE_SERIAL: &str = "Type the disk's serial number";
const WRONG_SERIAL: &str = "\"US-WRONG-0009\" is not";
const COPY_BACK_DONE: &str = r"Copy-back complete onto|Copy-back FAILED";
const COPY_BACK_SUCCEEDED: &str = r"Copy-back complete onto vda";

fn re(s: &str) -> Result<regex::Regex> {
    Ok(regex::Regex::new(s)?)
}

fn write(path: &Path, bytes: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// `touch -h -d WHEN` on each path (and, with `all`, on everything below them).
fn touch(paths: &[PathBuf], when: &str, all: bool) -> Result<()> {
    for p in paths {
        let mut cmd = if all {
            Cmd::new("find")
                .arg(p)
                .args(["-exec", "touch", "-h", "-d", when, "{}", "+"])
        } else {
            Cmd::new("touch").args(["-h", "-d", when]).arg(p)
        };
        cmd = cmd.dir(Path::new("/"));
        cmd.output()
            .with_context(|| format!("setting the times of {}", p.display()))?;
    }
    Ok(())
}

/// The emergency tree as expansion left it (kernel and initrd stand-ins where the
/// emergency entry looks, the application's data, an fstab), indexed, then changed
/// as the application would while the appliance ran from it.
fn emergency_tree(dir: &Path) -> Result<(PathBuf, Vec<String>)> {
    let (kernel, initrd) = (
        crate::target_dir().join("recovery/vmlinuz"),
        crate::target_dir().join("recovery/initrd.img"),
    );
    let root = dir.join("emergency-root");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    let e = images::test_boot().emergency;
    for (from, to) in [(&kernel, &e.kernel), (&initrd, &e.initrd)] {
        let to = root.join(to.trim_start_matches('/'));
        if let Some(d) = to.parent() {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
    }
    write(&root.join("var/lib/app/records.txt"), RECORDS)?;
    write(&root.join("etc/issue.net"), "Debian GNU/Linux 12\n")?;
    write(
        &root.join("etc/fstab"),
        "UUID=emergency / ext4 defaults 0 1\n",
    )?;
    touch(std::slice::from_ref(&root), EXPANDED_AT, true)?;
    let index_path = root.join(copyback::INDEX_PATH);
    let index = copyback::write_index(&root, &["/etc/fstab"], &index_path)
        .context("indexing the emergency tree")?;

    // Emergency mode: the application appends a record and writes a file, someone
    // deletes /etc/issue.net, and the fstab (remapped at expansion) is edited.
    let records = root.join("var/lib/app/records.txt");
    write(&records, &format!("{RECORDS}{RECORD_3}"))?;
    write(&root.join("var/lib/app/new.txt"), NEW_FILE)?;
    fs::remove_file(root.join("etc/issue.net")).context("deleting etc/issue.net")?;
    write(
        &root.join("etc/fstab"),
        &format!("UUID=emergency / ext4 defaults 0 1\n{FSTAB_MARK}\n"),
    )?;
    touch(
        &[
            records,
            root.join("var/lib/app/new.txt"),
            root.join("etc/fstab"),
            root.join("var/lib/app"),
            root.join("etc"),
        ],
        CHANGED_AT,
        false,
    )?;
    let plan = copyback::plan(&index, &root).context("planning the copy-back on the host")?;
    let summary = plan.to_string();
    Ok((
        root,
        vec![format!(
            "emergency tree indexed ({} entries), then changed; the host's own plan of it: {}",
            index.tree.len(),
            summary.lines().next().unwrap_or_default().trim()
        )],
    ))
}

/// Types `line` at the console's shell and returns what it printed after `NAME=`
/// (one line).
fn value(vm: &Machine, name: &str, line: &str, timeout: Duration) -> Result<String> {
    vm.send_keys(&format!("{line}; echo {name}=[$?]"))?;
    vm.send_key(Key::Enter)?;
    let answer = re(&format!(r"{name}=\[(\d+)\]"))?;
    vm.wait_for_text(answer.clone(), timeout)?;
    let log = vm.console().log_text()?;
    let rc = answer
        .captures_iter(&log)
        .last()
        .map(|c| c[1].to_string())
        .with_context(|| format!("no {name}= on the console"))?;
    Ok(rc)
}

fn copy_back(ctx: &Ctx) -> Result<Vec<String>> {
    let (base, mut notes) = restoretest::restored_primary(ctx, false)?;
    let primary = ctx.dir.join("primary.qcow2");
    restoretest::qcow2_overlay(&base, &primary)?;
    let img = appliance::image_disk()?;
    let uuids = appliance::primary_fs_uuids(&img)?;
    let (tree, tree_notes) = emergency_tree(&ctx.dir)?;
    notes.extend(tree_notes);
    let sec = restoretest::secondary(ctx, &img, false, Some(tree))?;
    notes.extend(sec.notes.iter().cloned());

    let mut spec = ctx.spec();
    // Its own bound: the harness's 180 s may be gone already if the restored primary
    // had to be made again (a restore under emulation).
    spec.deadline = Some(Instant::now() + LIMIT);
    ctx.booted_kernel.set(true);
    spec.memory_mib = 1024;
    spec.cpus = 2;
    spec.direct_boot = Some(DirectBoot {
        kernel: ctx.guest.boot_kernel.clone(),
        initrd: Some(crate::target_dir().join("recovery/initrd.img")),
        append: APPEND.into(),
    });
    spec.disks = vec![
        DiskSpec::virtio("primary", &primary, ImageFormat::Qcow2, PRIMARY_SERIAL),
        DiskSpec::virtio("secondary", &sec.disk, ImageFormat::Raw, SECONDARY_SERIAL),
    ];
    let mut vm = Machine::start(&spec)?;
    vm.wait_for_text(understudy::init::menu::LINE_RECOVERY, BOOT)?;
    let healthy = re(r"Primary: healthy \(vda")?;
    vm.wait_for_text(healthy, STEP)?;
    notes.push(format!(
        "the console on screen {} after QEMU start, the primary healthy",
        secs(vm.elapsed())
    ));

    // The technician's keys.
    vm.send_keys("c")?;
    vm.wait_for_text(COPY_BACK_OFFERED, STEP)?;
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(TYPE_SERIAL, STEP)?;
    vm.send_keys("US-WRONG-0009")?;
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(WRONG_SERIAL, STEP)?;
    vm.send_keys(PRIMARY_SERIAL)?;
    vm.send_key(Key::Enter)?;
    let asked = vm.elapsed();
    vm.wait_for_text(re(COPY_BACK_DONE)?, COPY)?;
    let took = vm.elapsed().saturating_sub(asked);
    let screen = vm.console().framed_screen();
    if !re(COPY_BACK_SUCCEEDED)?.is_match(&vm.screen_text()) {
        bail!("the copy-back did not succeed:\n{screen}");
    }
    notes.push(format!(
        "`c`, Enter, a wrong serial refused, the primary's serial: the result on screen {} later",
        secs(took)
    ));

    // The primary's root, read from the console's shell.
    vm.send_key(Key::Enter)?;
    vm.wait_for_text(understudy::init::menu::LINE_RECOVERY, STEP)?;
    vm.send_keys("s")?;
    super::shell_ready(&vm)?;
    let vg = appliance::VG;
    let mounted = value(
        &vm,
        "MOUNTED",
        &format!(
            "lvm vgchange -a y {vg} >/dev/null; mkdir -p /mnt/p && mount -o ro /dev/mapper/{vg}-root /mnt/p \
             && blkid -s UUID -o value /dev/mapper/{vg}-root | grep -qx {}",
            uuids.root_fs_uuid
        ),
        STEP,
    )?;
    if mounted != "0" {
        bail!("the primary's root LV would not mount read-only from the shell");
    }
    let checks = [
        (
            "RECORDS",
            format!(
                "printf '{}' | cmp -s - /mnt/p/var/lib/app/records.txt",
                format!("{RECORDS}{RECORD_3}").replace('\n', "\\n")
            ),
            "the record written in emergency mode is in /var/lib/app/records.txt",
        ),
        (
            "NEW",
            format!(
                "printf '{}' | cmp -s - /mnt/p/var/lib/app/new.txt",
                NEW_FILE.replace('\n', "\\n")
            ),
            "/var/lib/app/new.txt is there",
        ),
        (
            "DELETED",
            "! test -e /mnt/p/etc/issue.net".to_string(),
            "/etc/issue.net, deleted in emergency mode, is gone",
        ),
        (
            "FSTAB",
            format!("! grep -q '{FSTAB_MARK}' /mnt/p/etc/fstab && grep -q UUID= /mnt/p/etc/fstab"),
            "/etc/fstab (remapped at expansion) is the primary's own",
        ),
    ];
    let mut seen = Vec::new();
    for (name, line, what) in &checks {
        if value(&vm, name, line, STEP)? != "0" {
            bail!("on the primary after copy-back: not true that {what} (`{line}`)");
        }
        seen.push(*what);
    }
    notes.push(format!("on the primary's root LV: {}", seen.join("; ")));
    value(
        &vm,
        "UMOUNT",
        "umount /mnt/p && lvm vgchange -a n vg0 >/dev/null",
        STEP,
    )?;
    // The checks are done: cut the power rather than type `exit` and `p`, whose keys
    // can reach the console while it takes the terminal back (seen: `exit` read as
    // the console's `e`, `x`, `i`, `t`, and `p` landing in a new shell).
    let off = vm.power_cut()?;
    notes.push(format!("power cut after the checks ({} to go)", secs(off)));
    Ok(notes)
}
