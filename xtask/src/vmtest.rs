//! `cargo xtask vm [SCENARIO...]` and the `vm` step of `cargo xtask test`: the
//! QEMU harness's own proof scenarios (most boot Debian's kernel with a tiny
//! busybox initramfs made here; two boot only firmware), each bounded, each
//! leaving `target/vm/<scenario>/console.log` and `summary.txt`, closing with
//! `vm: N passed, N failed`. It does not build understudy's recovery image or
//! disks (their own modules do, and their VM tests use `crate::qemu` too).

use std::cell::Cell;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use understudy::initramfs::modules;

use crate::kernel::{self, Kernel};
use crate::qemu::{
    self, Accel, DirectBoot, DiskBus, DiskSpec, Firmware, ImageFormat, Key, Machine, MachineSpec,
};
use crate::run::Cmd;
use crate::target_dir;

#[path = "pid1test.rs"]
mod pid1test;

#[path = "boottest.rs"]
mod boottest;

#[path = "consoletest.rs"]
mod consoletest;

#[path = "restore_engine_test.rs"]
mod restore_engine_test;

#[path = "powercut_test.rs"]
mod powercut_test;

#[path = "provisiontest.rs"]
mod provisiontest;

#[path = "restoretest.rs"]
mod restoretest;

#[path = "copyback_test.rs"]
mod copyback_test;

/// No scenario runs longer than this, whatever its own waits say.
const SCENARIO_LIMIT: Duration = Duration::from_secs(180);
/// From QEMU start to the init script's first line, under TCG.
const BOOT: Duration = Duration::from_secs(90);
/// For the guest's answer to something the test just did.
const STEP: Duration = Duration::from_secs(30);

/// The serial console, `panic=-1` with `-no-reboot` so a panic ends QEMU,
/// `quiet` so the markers are not drowned in boot messages.
const APPEND: &str = "console=ttyS0 panic=-1 quiet";

/// The first lines of every init script: a console on stdio, busybox's
/// applets, /proc and /sys, and the modules the scenario asked for (their
/// names start with a number giving the load order).
const INIT_PRELUDE: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
for m in /lib/modules/*.ko; do insmod "$m" || echo "INSMOD FAILED $m"; done
"#;

/// virtio-blk and what it needs, for `/dev/vdX`.
const VIRTIO_BLK: &[&str] = &["virtio_pci", "virtio_blk"];

struct Scenario {
    name: &'static str,
    firmware: Firmware,
    /// Returns notes for the summary: timings and what was seen.
    run: fn(&Ctx) -> Result<Vec<String>>,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "boot-marker",
        firmware: Firmware::SeaBios,
        run: boot_marker,
    },
    Scenario {
        name: "power-cut",
        firmware: Firmware::SeaBios,
        run: power_cut,
    },
    Scenario {
        name: "disk-removal",
        firmware: Firmware::SeaBios,
        run: disk_removal,
    },
    Scenario {
        name: "blkdebug-eio",
        firmware: Firmware::SeaBios,
        run: blkdebug_eio,
    },
    Scenario {
        name: "keys",
        firmware: Firmware::SeaBios,
        run: keys,
    },
    Scenario {
        name: "boot-order",
        firmware: Firmware::SeaBios,
        run: boot_order,
    },
    Scenario {
        name: "reset-powerdown",
        firmware: Firmware::SeaBios,
        run: reset_powerdown,
    },
    Scenario {
        name: "panic-detected",
        firmware: Firmware::SeaBios,
        run: panic_detected,
    },
    Scenario {
        name: "ovmf-starts",
        firmware: Firmware::Ovmf,
        run: ovmf_starts,
    },
    boottest::MENU_SEABIOS,
    boottest::MENU_OVMF,
    boottest::FALLBACK_SEABIOS,
    boottest::FALLBACK_OVMF,
    boottest::NEXT_ENTRY_SEABIOS,
    boottest::PRIMARY_RECOVERY_SEABIOS,
    boottest::PRIMARY_RECOVERY_OVMF,
    pid1test::STATUS_SHELL_POWEROFF,
    pid1test::PANIC_HOOK,
    pid1test::OVERHEAD,
    consoletest::AUTO_KEXEC,
    consoletest::UNREADABLE,
    consoletest::RESTORE,
    restore_engine_test::RESTORE_ENGINE,
    powercut_test::RESTORE_POWER_CUT,
    restoretest::SAME_SIZE,
    restoretest::LARGER,
    restoretest::SMALLER,
    restoretest::CORRUPT,
    restoretest::LVM_PRIMARY_FLOPPY,
    copyback_test::COPY_BACK,
    provisiontest::APPLIANCE,
];

/// How a set of scenarios went.
#[derive(Debug, Default)]
pub struct Tally {
    pub passed: usize,
    pub failed: usize,
}

pub fn main(args: &[String]) -> Result<()> {
    if args
        .iter()
        .any(|a| a == "-h" || a == "--help" || a == "--list")
    {
        println!("usage: cargo xtask vm [SCENARIO...]\n\nscenarios:");
        for s in SCENARIOS {
            println!("  {} ({})", s.name, s.firmware.name());
        }
        return Ok(());
    }
    let tally = run(args)?;
    if tally.failed > 0 {
        bail!(
            "{} of {} VM scenarios failed",
            tally.failed,
            tally.failed + tally.passed
        );
    }
    Ok(())
}

/// Runs the scenarios named in `only` (all when empty), one after another,
/// printing a line per scenario and the closing `vm: N passed, N failed`.
pub fn run(only: &[String]) -> Result<Tally> {
    for name in only {
        if !SCENARIOS.iter().any(|s| s.name == name) {
            let names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
            bail!("no VM scenario `{name}` (there are: {})", names.join(", "));
        }
    }
    crate::run::require(&["qemu-system-x86_64", "qemu-img", "cpio"])?;
    let vm_dir = target_dir().join("vm");
    let kernel = kernel::ensure()?;
    let modules = modules::Index::load(&kernel.modules_dir)
        .with_context(|| format!("indexing the modules of {}", kernel.version))?;
    let accel = qemu::accel::choose(&kernel.vmlinuz, &vm_dir);
    let pvh = qemu::pvh::vmlinux_for(&kernel.vmlinuz, &vm_dir.join("base"))
        .context("extracting vmlinux for a PVH boot")?;
    let guest = Guest {
        kernel: &kernel,
        boot_kernel: pvh.unwrap_or_else(|| kernel.vmlinuz.clone()),
        modules: &modules,
    };
    // Built before any scenario's clock starts: on a fresh clone this is a release
    // build of the static binary, minutes that no scenario's limit should pay for.
    boottest::recovery_initrd()?;
    let mut tally = Tally::default();
    for s in SCENARIOS
        .iter()
        .filter(|s| only.is_empty() || only.iter().any(|n| n == s.name))
    {
        if run_one(s, &vm_dir, &guest, accel) {
            tally.passed += 1;
        } else {
            tally.failed += 1;
        }
    }
    eprintln!("vm: {} passed, {} failed", tally.passed, tally.failed);
    Ok(tally)
}

/// Runs one scenario in a fresh `target/vm/<name>/`, writes its summary,
/// and says on stderr how it went and where its logs are.
fn run_one(s: &Scenario, vm_dir: &Path, guest: &Guest, accel: Accel) -> bool {
    let dir = vm_dir.join(s.name);
    let started = Instant::now();
    eprintln!(
        "vm: {} ({}, {}) ...",
        s.name,
        s.firmware.name(),
        accel.name()
    );
    let booted_kernel = Cell::new(false);
    let outcome = fresh_dir(&dir).and_then(|()| {
        let ctx = Ctx {
            dir: dir.clone(),
            vm_dir: vm_dir.to_path_buf(),
            guest,
            accel,
            firmware: s.firmware,
            deadline: started + SCENARIO_LIMIT,
            booted_kernel: &booted_kernel,
        };
        (s.run)(&ctx)
    });
    let took = started.elapsed();
    let mut summary = format!(
        "scenario: {}\nfirmware: {}\naccel: {}\nkernel: {}\nduration: {:.1} s\n",
        s.name,
        s.firmware.name(),
        accel.name(),
        if booted_kernel.get() {
            guest.boot_kernel.display().to_string()
        } else {
            "none (firmware only)".to_string()
        },
        took.as_secs_f64()
    );
    let passed = match &outcome {
        Ok(notes) => {
            summary.push_str("outcome: passed\n");
            for n in notes {
                let _ = writeln!(summary, "note: {n}");
            }
            eprintln!("vm: {} passed in {:.1} s", s.name, took.as_secs_f64());
            for n in notes {
                eprintln!("vm:     {n}");
            }
            true
        }
        Err(e) => {
            let _ = writeln!(summary, "outcome: failed\nerror: {e:#}");
            eprintln!(
                "vm: {} FAILED after {:.1} s: {e:#}\nvm:     console log: {}\nvm:     summary: {}\nvm:     qemu messages: {}",
                s.name,
                took.as_secs_f64(),
                dir.join("console.log").display(),
                dir.join("summary.txt").display(),
                dir.join("qemu.log").display(),
            );
            false
        }
    };
    if let Err(e) = std::fs::write(dir.join("summary.txt"), summary) {
        eprintln!("vm: {}: cannot write summary.txt: {e}", s.name);
    }
    passed
}

fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Whether `bytes` are an ELF executable with no program interpreter (one
/// that runs on an initramfs without a libc).
fn is_static_elf(bytes: &[u8]) -> bool {
    goblin::elf::Elf::parse(bytes).is_ok_and(|elf| elf.interpreter.is_none())
}

/// The guest's kernel and an index of its modules, shared by the scenarios.
struct Guest<'a> {
    kernel: &'a Kernel,
    /// What `-kernel` gets: the PVH `vmlinux` when there is one (seconds
    /// faster under TCG), else the bzImage.
    boot_kernel: PathBuf,
    modules: &'a modules::Index,
}

/// What a scenario works with.
struct Ctx<'a> {
    /// `target/vm/<scenario>`, fresh.
    dir: PathBuf,
    /// `target/vm`, for images shared between scenarios.
    vm_dir: PathBuf,
    guest: &'a Guest<'a>,
    accel: Accel,
    firmware: Firmware,
    deadline: Instant,
    /// Set when the scenario boots the kernel directly, for the summary.
    booted_kernel: &'a Cell<bool>,
}

impl Ctx<'_> {
    fn spec(&self) -> MachineSpec {
        let label = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut spec = MachineSpec::new(&label, &self.dir, self.firmware, self.accel);
        spec.memory_mib = 512;
        spec.deadline = Some(self.deadline);
        spec.no_reboot = true;
        spec
    }

    /// A spec booting the kernel directly with an initramfs whose `/init` is
    /// the prelude, then `script`, with `modules` (and their dependencies).
    fn direct_boot(&self, script: &str, modules: &[&str]) -> Result<MachineSpec> {
        let initrd = self.initramfs(script, modules)?;
        self.booted_kernel.set(true);
        let mut spec = self.spec();
        spec.direct_boot = Some(DirectBoot {
            kernel: self.guest.boot_kernel.clone(),
            initrd: Some(initrd),
            append: APPEND.to_string(),
        });
        Ok(spec)
    }

    /// Builds `initramfs.cpio` (uncompressed newc) in the scenario directory.
    fn initramfs(&self, script: &str, modules: &[&str]) -> Result<PathBuf> {
        let root = self.dir.join("initramfs");
        for d in ["bin", "dev", "proc", "sys", "lib/modules"] {
            std::fs::create_dir_all(root.join(d))
                .with_context(|| format!("creating {}", root.join(d).display()))?;
        }
        let busybox = Path::new("/bin/busybox");
        let bytes = std::fs::read(busybox)
            .with_context(|| format!("reading {} (install busybox-static)", busybox.display()))?;
        if !is_static_elf(&bytes) {
            bail!(
                "{} is dynamically linked; the initramfs needs busybox-static",
                busybox.display()
            );
        }
        write_executable(&root.join("bin/busybox"), &bytes)?;
        let index = self.guest.modules;
        let order = index.load_order(modules);
        if let Some(missing) = modules.iter().find(|m| !order.iter().any(|o| o == *m)) {
            bail!("the kernel has no loadable module {missing}");
        }
        for (i, name) in order.iter().enumerate() {
            let from = self
                .guest
                .kernel
                .modules_dir
                .join(&index.modules[name].path);
            // Decompressed: busybox insmod takes plain ELF.
            let bytes = modules::read_module(&from)?;
            let to = root.join(format!("lib/modules/{i:02}-{name}.ko"));
            std::fs::write(&to, bytes).with_context(|| format!("writing {}", to.display()))?;
        }
        write_executable(
            &root.join("init"),
            format!("{INIT_PRELUDE}{script}").as_bytes(),
        )?;
        let out = self.dir.join("initramfs.cpio");
        Cmd::bash(r#"find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet > "$1""#)
            .arg("cpio")
            .arg(&out)
            .dir(&root)
            .output()
            .context("packing the initramfs")?;
        Ok(out)
    }

    /// A blank sparse raw image in the scenario directory.
    fn blank(&self, name: &str, size_mib: u64) -> Result<PathBuf> {
        let path = self.dir.join(name);
        qemu::create_blank(&path, size_mib)?;
        Ok(path)
    }

    /// `target/vm/base/marked.raw`, shared by scenarios through overlays:
    /// 16 MiB starting with [`BASE_MARK`].
    fn base_image(&self) -> Result<PathBuf> {
        let dir = self.vm_dir.join("base");
        let path = dir.join("marked.raw");
        if path.is_file() {
            return Ok(path);
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join("marked.raw.tmp");
        qemu::create_blank(&tmp, 16)?;
        write_at_start(&tmp, BASE_MARK.as_bytes())?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming {}", tmp.display()))?;
        Ok(path)
    }
}

/// The first bytes of the shared base image.
const BASE_MARK: &str = "UNDERSTUDY-BASE";

/// Overwrites the first bytes of the image at `path`, keeping its size.
fn write_at_start(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .with_context(|| format!("writing the start of {}", path.display()))
}

fn write_executable(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Waits until a shell just started on the console reads what is typed: an `echo`
/// typed until it is answered. A prompt on the screen is not enough: when the
/// recovery console hands the terminal back, the screen it saved (with an old
/// prompt) comes back before the shell reads, and keys typed then are lost.
fn shell_ready(vm: &Machine) -> Result<()> {
    for _ in 0..6 {
        vm.send_keys("echo SHELL-READY=$((40+2))")?;
        vm.send_key(Key::Enter)?;
        if vm
            .wait_for_text("SHELL-READY=42", Duration::from_secs(5))
            .is_ok()
        {
            return Ok(());
        }
    }
    bail!(
        "the shell did not answer on the console:\n{}",
        vm.console().framed_screen()
    )
}

/// Waits for QEMU to exit after the guest's `poweroff -f`, checking that it
/// was a guest power-off.
fn expect_poweroff(vm: &mut Machine) -> Result<String> {
    let down = vm.wait_shutdown(STEP)?;
    match down.reason.as_deref() {
        Some("guest-shutdown") => Ok(format!("guest powered off at {}", secs(down.at))),
        None if down.status.success() => Ok(format!(
            "QEMU exited cleanly at {} (SHUTDOWN event not read)",
            secs(down.at)
        )),
        other => bail!(
            "expected a guest power-off, got reason {other:?} and exit {}",
            down.status
        ),
    }
}

/// The disks of `boot-marker`: (id, bus, serial, WWN), in bus order.
const MARKER_DISKS: [(&str, DiskBus, &str, Option<u64>); 5] = [
    ("primary", DiskBus::VirtioBlk, "US-PRIMARY-01", None),
    ("secondary", DiskBus::VirtioBlk, "US-SECOND-02", None),
    (
        "scsi",
        DiskBus::ScsiHd,
        "US-SCSI-03",
        Some(0x5000_c500_1234_5678),
    ),
    (
        "ide",
        DiskBus::IdeHd,
        "US-IDE-04",
        Some(0x5000_c500_8765_4321),
    ),
    ("nvme", DiskBus::Nvme, "US-NVME-05", None),
];

/// Direct boot with a disk on every bus the harness offers (the first a
/// qcow2 overlay over the shared base): the marker, every disk found by its
/// serial (and WWN where the bus has one), the base's bytes read through the
/// overlay, a clean power-off.
fn boot_marker(ctx: &Ctx) -> Result<Vec<String>> {
    let overlay = ctx.dir.join("primary.qcow2");
    qemu::create_overlay(&ctx.base_image()?, &overlay)?;
    // SCSI and ATA disks are scanned asynchronously after their driver
    // loads: wait (bounded) until all have appeared.
    let script = format!(
        r#"
echo UNDERSTUDY-MARKER
i=0
while [ "$(ls /sys/block | wc -l)" -lt {count} ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
for d in /sys/block/*; do
    n=${{d##*/}}
    if [ -e "$d/serial" ]; then s=$(cat "$d/serial")
    elif [ -e "$d/device/serial" ]; then s=$(cat "$d/device/serial")
    else s=$(tail -c +5 "$d/device/vpd_pg80"); fi
    echo "DISK $n serial=$(echo $s) wwid=$(cat "$d/device/wwid" 2>/dev/null)"
done
echo "BASE $(head -c 15 /dev/vda)"
poweroff -f
"#,
        count = MARKER_DISKS.len()
    );
    let mut modules = VIRTIO_BLK.to_vec();
    modules.extend(["virtio_scsi", "sd_mod", "ata_piix", "nvme"]);
    let mut spec = ctx.direct_boot(&script, &modules)?;
    for (i, (id, bus, serial, wwn)) in MARKER_DISKS.into_iter().enumerate() {
        let mut disk = if i == 0 {
            DiskSpec::virtio(id, &overlay, ImageFormat::Qcow2, serial)
        } else {
            DiskSpec::virtio(
                id,
                ctx.blank(&format!("{id}.raw"), 8)?,
                ImageFormat::Raw,
                serial,
            )
        };
        disk.bus = bus;
        disk.wwn = wwn;
        spec.disks.push(disk);
    }
    let mut vm = Machine::start(&spec)?;
    vm.wait_for_text("UNDERSTUDY-MARKER", BOOT)?;
    let marker = vm.elapsed();
    let mut found = Vec::new();
    for (_, bus, serial, wwn) in MARKER_DISKS {
        let name = match bus {
            DiskBus::VirtioBlk => "vd[a-z]",
            DiskBus::ScsiHd | DiskBus::IdeHd => "sd[a-z]",
            DiskBus::Nvme => "nvme[0-9]n1",
        };
        let wwid = match wwn {
            Some(w) => format!("naa.{w:016x}"),
            None => String::new(),
        };
        let line = regex::Regex::new(&format!(
            "DISK ({name}) serial={} wwid={}",
            regex::escape(serial),
            regex::escape(&wwid)
        ))
        .context("disk line regex")?;
        vm.wait_for_text(&line, STEP)?;
        let screen = vm.screen_text();
        let dev = line
            .captures(&screen)
            .and_then(|c| c.get(1))
            .map_or("?", |m| m.as_str());
        found.push(format!(
            "{dev}={serial}{}",
            if wwid.is_empty() {
                String::new()
            } else {
                format!(" ({wwid})")
            }
        ));
    }
    vm.wait_for_text(format!("BASE {BASE_MARK}"), STEP)?;
    let off = expect_poweroff(&mut vm)?;
    Ok(vec![
        format!("marker on screen {} after QEMU start", secs(marker)),
        format!("disks by serial: {}", found.join(", ")),
        format!("the qcow2 overlay reads the base's {BASE_MARK:?}"),
        off,
    ])
}

/// A shell prompt, a command typed into it, then QMP `quit`: QEMU is gone
/// at once.
fn power_cut(ctx: &Ctx) -> Result<Vec<String>> {
    let script = "echo SHELL-NEXT\nexec setsid cttyhack sh\n";
    let mut vm = Machine::start(&ctx.direct_boot(script, &[])?)?;
    vm.wait_for_text("SHELL-NEXT", BOOT)?;
    vm.wait_for_text(
        regex::Regex::new(r"(?m)^/ # ").context("prompt regex")?,
        STEP,
    )?;
    let prompt = vm.elapsed();
    vm.send_keys("echo alive-$((6*7))")?;
    vm.send_key(Key::Enter)?;
    vm.wait_for_text("alive-42", STEP)?;
    let took = vm.power_cut()?;
    if took > Duration::from_secs(5) {
        bail!("QEMU took {} to go after `quit`", secs(took));
    }
    let down = vm.wait_shutdown(STEP)?;
    if let Some(r) = down.reason.as_deref()
        && r != "host-qmp-quit"
    {
        bail!("after a power cut the SHUTDOWN reason was {r}, not host-qmp-quit");
    }
    Ok(vec![
        format!("shell prompt {} after QEMU start", secs(prompt)),
        format!(
            "QEMU gone {} after quit (SHUTDOWN reason {})",
            secs(took),
            down.reason.as_deref().unwrap_or("not read")
        ),
    ])
}

/// Two disks; the second is unplugged while the guest watches /sys/block.
fn disk_removal(ctx: &Ctx) -> Result<Vec<String>> {
    let script = r#"
echo "DISKS $(ls /sys/block | tr '\n' ' ')"
echo WATCHING
i=0
while [ -e /sys/block/vdb ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
if [ -e /sys/block/vdb ]; then echo "STILL vdb"; else echo "GONE vdb"; fi
echo "LEFT $(ls /sys/block | tr '\n' ' ')END"
read -r done
poweroff -f
"#;
    let mut spec = ctx.direct_boot(script, VIRTIO_BLK)?;
    spec.disks.push(DiskSpec::virtio(
        "primary",
        ctx.blank("primary.raw", 8)?,
        ImageFormat::Raw,
        "US-PRIMARY-01",
    ));
    spec.disks.push(DiskSpec::virtio(
        "secondary",
        ctx.blank("secondary.raw", 8)?,
        ImageFormat::Raw,
        "US-SECOND-02",
    ));
    let mut vm = Machine::start(&spec)?;
    vm.wait_for_text("DISKS vda vdb", BOOT)?;
    vm.wait_for_text("WATCHING", STEP)?;
    let asked = Instant::now();
    vm.remove_disk("secondary", STEP)?;
    let deleted = asked.elapsed();
    vm.wait_for_text("GONE vdb", STEP)?;
    vm.wait_for_text("LEFT vda END", STEP)?;
    let seen = asked.elapsed();
    // The guest waits for this before powering off, so QEMU's
    // DEVICE_DELETED is never raced by the machine going away.
    vm.send_key(Key::Enter)?;
    let off = expect_poweroff(&mut vm)?;
    Ok(vec![
        format!("DEVICE_DELETED {} after device_del", secs(deleted)),
        format!("guest saw vdb gone {} after device_del", secs(seen)),
        off,
    ])
}

/// A disk whose reads fail through blkdebug, next to one that works.
fn blkdebug_eio(ctx: &Ctx) -> Result<Vec<String>> {
    let script = r#"
dd if=/dev/vda of=/dev/null bs=4096 count=1 2>/dev/null; echo "READ vda status=$?"
dd if=/dev/vdb of=/dev/null bs=4096 count=1; echo "READ vdb status=$?"
poweroff -f
"#;
    let mut spec = ctx.direct_boot(script, VIRTIO_BLK)?;
    spec.disks.push(DiskSpec::virtio(
        "good",
        ctx.blank("good.raw", 8)?,
        ImageFormat::Raw,
        "US-GOOD-01",
    ));
    let mut bad = DiskSpec::virtio(
        "bad",
        ctx.blank("bad.raw", 8)?,
        ImageFormat::Raw,
        "US-BAD-02",
    );
    bad.read_errors = true;
    spec.disks.push(bad);
    let mut vm = Machine::start(&spec)?;
    vm.wait_for_text("READ vda status=0", BOOT)?;
    vm.wait_for_text("READ vdb status=1", STEP)?;
    if !vm.screen_text().contains("Input/output error") {
        bail!(
            "dd on the blkdebug disk failed without saying Input/output error:\n{}",
            vm.console().framed_screen()
        );
    }
    let off = expect_poweroff(&mut vm)?;
    Ok(vec![
        "dd reads vda; dd on vdb fails with Input/output error".into(),
        off,
    ])
}

/// A BIOS boot sector that writes `message` to COM1 and powers the machine
/// off through the PIIX4 ACPI port SeaBIOS sets up (PM1a control at 0x604,
/// SLP_EN with sleep type 0 = S5). Hand-assembled, 16-bit, loaded at 0x7c00:
///
/// ```text
///  0: fc          cld
///  1: 31 c0       xor ax, ax
///  3: 8e d8       mov ds, ax
///  5: be 1d 7c    mov si, 0x7c1d      ; message
///  8: ba f8 03    mov dx, 0x3f8       ; COM1 data
/// 11: ac          lodsb
/// 12: 84 c0       test al, al
/// 14: 74 03       jz 19
/// 16: ee          out dx, al
/// 17: eb f8       jmp 11
/// 19: ba 04 06    mov dx, 0x604
/// 22: b8 00 20    mov ax, 0x2000
/// 25: ef          out dx, ax
/// 26: f4          hlt
/// 27: eb fd       jmp 26
/// 29: message, NUL
/// ```
fn boot_sector(message: &str) -> Result<Vec<u8>> {
    const CODE: [u8; 29] = [
        0xfc, 0x31, 0xc0, 0x8e, 0xd8, 0xbe, 0x1d, 0x7c, 0xba, 0xf8, 0x03, 0xac, 0x84, 0xc0, 0x74,
        0x03, 0xee, 0xeb, 0xf8, 0xba, 0x04, 0x06, 0xb8, 0x00, 0x20, 0xef, 0xf4, 0xeb, 0xfd,
    ];
    let mut sector = CODE.to_vec();
    sector.extend_from_slice(message.as_bytes());
    sector.push(0);
    if sector.len() > 510 {
        bail!("boot sector message too long: {message:?}");
    }
    sector.resize(510, 0);
    sector.extend_from_slice(&[0x55, 0xaa]);
    Ok(sector)
}

/// SeaBIOS boots the disks in `bootindex` order; when the first disk's
/// reads fail (blkdebug) it does not fall through to the second: SeaBIOS
/// tries one hard disk, the first, then the floppy, then gives up.
fn boot_order(ctx: &Ctx) -> Result<Vec<String>> {
    let mut disks = Vec::new();
    for name in ["A", "B"] {
        let path = ctx.blank(&format!("disk-{name}.raw"), 1)?;
        write_at_start(&path, &boot_sector(&format!("BOOTED-FROM-{name}\r\n"))?)?;
        disks.push(DiskSpec::virtio(
            &format!("disk-{}", name.to_lowercase()),
            path,
            ImageFormat::Raw,
            &format!("US-BOOT-{name}"),
        ));
    }
    let mut notes = Vec::new();
    // (boot index of A, of B, A unreadable, what the serial console shows)
    for (a_index, b_index, a_fails, expect) in [
        (1, 2, false, "BOOTED-FROM-A"),
        (2, 1, false, "BOOTED-FROM-B"),
        (1, 2, true, "No bootable device."),
    ] {
        let mut spec = ctx.spec();
        spec.bios_on_serial = true;
        let mut a = disks[0].clone();
        let mut b = disks[1].clone();
        a.bootindex = Some(a_index);
        a.read_errors = a_fails;
        b.bootindex = Some(b_index);
        spec.disks = vec![a, b];
        let mut vm = Machine::start(&spec)?;
        vm.wait_for_text("Booting from Hard Disk", BOOT)?;
        vm.wait_for_text(expect, BOOT)?;
        let seen = vm.elapsed();
        if a_fails {
            vm.wait_for_text("Boot failed: could not read the boot disk", STEP)?;
            if vm.screen_text().contains("BOOTED-FROM-B") {
                bail!("SeaBIOS booted B after A failed; the harness's note on SeaBIOS is wrong");
            }
            // SeaBIOS would wait 60 s before retrying.
            vm.power_cut()?;
        } else {
            let off = vm.wait_shutdown(STEP)?;
            if off.reason.as_deref().is_some_and(|r| r != "guest-shutdown") {
                bail!(
                    "the boot sector's ACPI power-off ended QEMU as {:?}",
                    off.reason
                );
            }
        }
        notes.push(format!(
            "A at {a_index}{}, B at {b_index}: {expect:?} after {}",
            if a_fails { " (reads fail)" } else { "" },
            secs(seen)
        ));
    }
    Ok(notes)
}

/// Lines typed into a `read` come back transformed, editing and cursor keys
/// included.
fn keys(ctx: &Ctx) -> Result<Vec<String>> {
    let script = r#"
echo "TYPE A LINE:"
read -r line
echo "ECHO:$(echo "$line" | tr a-z A-Z)"
echo "PRESS UP:"
read -r key
echo "KEY:$(printf %s "$key" | od -An -tx1 | tr -d ' \n')"
poweroff -f
"#;
    let spec = ctx.direct_boot(script, &[])?;
    let mut vm = Machine::start(&spec)?;
    vm.wait_for_text("TYPE A LINE:", BOOT)?;
    let typed = Instant::now();
    // The tty's erase character is DEL, which Backspace sends.
    vm.send_keys("hello understudx")?;
    vm.send_key(Key::Backspace)?;
    vm.send_keys("y")?;
    vm.send_key(Key::Enter)?;
    vm.wait_for_text("ECHO:HELLO UNDERSTUDY", STEP)?;
    let echoed = typed.elapsed();
    vm.wait_for_text("PRESS UP:", STEP)?;
    vm.send_key(Key::Up)?;
    vm.send_key(Key::Enter)?;
    vm.wait_for_text("KEY:1b5b41", STEP)?;
    let off = expect_poweroff(&mut vm)?;
    Ok(vec![
        format!("typed line echoed back upper-cased in {}", secs(echoed)),
        "Up arrived as ESC [ A".into(),
        off,
    ])
}

/// A reset reboots the guest (no `-no-reboot` here); the power button
/// reaches it as an input event it answers by powering off.
fn reset_powerdown(ctx: &Ctx) -> Result<Vec<String>> {
    let script = r#"
ev=
for e in /sys/class/input/event*; do
    [ "$(cat "$e/device/name")" = "Power Button" ] && ev=/dev/input/${e##*/}
done
# Open before saying so: evdev only queues events for open clients.
exec 3<"$ev"
echo "WAITING FOR BUTTON on ${ev:-nothing}"
dd of=/dev/null bs=24 count=1 <&3 2>/dev/null && echo "POWER BUTTON PRESSED"
poweroff -f
"#;
    let mut spec = ctx.direct_boot(script, &["button", "evdev"])?;
    spec.no_reboot = false;
    let mut vm = Machine::start(&spec)?;
    vm.wait_for_text("WAITING FOR BUTTON on /dev/input/event", BOOT)?;
    let status = vm.status()?;
    if status != "running" {
        bail!("QMP says the machine is {status}, not running");
    }
    vm.clear_screen();
    let reset = Instant::now();
    vm.reset()?;
    vm.wait_for_text("WAITING FOR BUTTON on /dev/input/event", BOOT)?;
    let rebooted = reset.elapsed();
    let boots = vm
        .console()
        .log_text()?
        .matches("WAITING FOR BUTTON")
        .count();
    if boots != 2 {
        bail!("expected two boots in the console log after a reset, found {boots}");
    }
    vm.powerdown()?;
    vm.wait_for_text("POWER BUTTON PRESSED", STEP)?;
    let off = expect_poweroff(&mut vm)?;
    Ok(vec![
        format!(
            "rebooted to the script {} after system_reset",
            secs(rebooted)
        ),
        format!("power button seen by the guest; {off}"),
    ])
}

/// An init that exits makes the kernel panic: waits fail at once with the
/// panic line instead of running out their time.
fn panic_detected(ctx: &Ctx) -> Result<Vec<String>> {
    let script = "echo ABOUT-TO-EXIT\nexit 3\n";
    let vm = Machine::start(&ctx.direct_boot(script, &[])?)?;
    vm.wait_for_text("ABOUT-TO-EXIT", BOOT)?;
    let asked = Instant::now();
    let waited = vm.wait_for_text("NEVER-PRINTED", BOOT);
    let failed_after = asked.elapsed();
    let err = match waited {
        Ok(()) => bail!("a wait matched text the guest never printed"),
        Err(e) => format!("{e:#}"),
    };
    let line = vm
        .detect_kernel_panic()
        .context("the wait failed but no kernel panic was detected")?;
    if !err.contains("the kernel panicked") || !line.contains("Attempted to kill init") {
        bail!("expected the wait to fail on init's death, got: {err}");
    }
    if failed_after >= BOOT / 2 {
        bail!("the wait took {} to notice the panic", secs(failed_after));
    }
    Ok(vec![format!(
        "wait failed {} after the panic began: {line}",
        secs(failed_after)
    )])
}

/// OVMF reaches its boot manager and the EFI shell, takes keys there, and
/// powers off on `reset -s`.
fn ovmf_starts(ctx: &Ctx) -> Result<Vec<String>> {
    let mut vm = Machine::start(&ctx.spec())?;
    vm.wait_for_text("Press ESC", BOOT)?;
    let shell = vm.elapsed();
    // Skips the 5-second startup.nsh countdown.
    vm.send_key(Key::Esc)?;
    vm.wait_for_text("Shell>", STEP)?;
    let log = vm.console().log_text()?;
    if !log.contains("BdsDxe") {
        bail!("OVMF reached the shell without its boot manager (BdsDxe) on the console");
    }
    vm.send_keys("reset -s")?;
    vm.send_key(Key::Enter)?;
    let off = expect_poweroff(&mut vm)?;
    Ok(vec![
        format!("BdsDxe and the EFI shell {} after QEMU start", secs(shell)),
        format!("`reset -s` typed in the shell: {off}"),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 executable with one program header of type `p_type`
    /// pointing at an interpreter path.
    fn elf(p_type: u32) -> Vec<u8> {
        let interp = b"/lib64/ld-linux-x86-64.so.2\0";
        let mut f = vec![0u8; 120];
        f[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[18..20].copy_from_slice(&0x3eu16.to_le_bytes()); // x86-64
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        f[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        f[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        f[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        f[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        f[64..68].copy_from_slice(&p_type.to_le_bytes());
        f[72..80].copy_from_slice(&120u64.to_le_bytes()); // p_offset
        let len = interp.len() as u64;
        f[96..104].copy_from_slice(&len.to_le_bytes()); // p_filesz
        f[104..112].copy_from_slice(&len.to_le_bytes()); // p_memsz
        f.extend_from_slice(interp);
        f
    }

    #[test]
    fn static_elf_is_told_from_dynamic() {
        const PT_LOAD: u32 = 1;
        const PT_INTERP: u32 = 3;
        assert!(is_static_elf(&elf(PT_LOAD)));
        assert!(!is_static_elf(&elf(PT_INTERP)));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
    }

    #[test]
    fn scenario_names_are_unique() {
        let mut names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SCENARIOS.len());
    }
}
