//! PID 1 of the recovery image: mounts the pseudo filesystems, sets up the consoles,
//! loads the drivers for the devices present (on a thread), waits (bounded) for the
//! disks, takes the disk inventory and shows the status screen with a small menu
//! (shell, reboot, power off, refresh, log). The screen comes as soon as disks are
//! there and have stopped appearing, even while other drivers still load (it says
//! so). Only then, in the background, it loads the filesystems and device-mapper
//! targets recovery needs (those of the recovery filesystem come before the screen, to
//! read it), and while the menu waits it draws the screen again when the drivers are
//! all in or the set of disks changes. It reaps every child, turns signals into flags
//! handled in its loop, logs to `/dev/kmsg` and a ring buffer, and never exits: a
//! panic is caught, shown, and followed by the menu again.
//!
//! Does not own: the recovery console proper (ratatui, a later issue), the module
//! index and matcher (`initramfs::modules`), the inventory (`disk`), command-line
//! splitting (`cmdline`), or `unsafe` calls (`sys`).
//!
//! Kernel command-line keys: `docs/kernel-cmdline.md`.

// The kernel panics when init exits: nothing here may unwrap or panic on purpose.
// (Tests may: `clippy --all-targets` checks the non-test build with the deny too.)
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod console;
pub mod log;
pub mod menu;
pub mod modload;
pub mod mounts;
pub mod reaper;
pub mod recorded;
pub mod status;
pub mod supervise;
pub mod uevent;

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::reboot::{RebootMode, reboot, set_cad_enabled};
use nix::sys::signal::Signal;

use crate::cmd::Cmd;
use crate::cmdline::Cmdline;
use crate::disk;
use crate::initramfs;
use crate::initramfs::modules::Index;
use crate::sys;
use console::Consoles;
use menu::Action;
use recorded::RecordedState;
use status::Status;

/// What the kernel command line asks of PID 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub mode: Mode,
    /// `understudy.debug`: kernel messages stay on the console, and the log is shown
    /// under the status screen.
    pub debug: bool,
    /// `understudy.test_panic=1`: panic on purpose once the consoles are up, so a
    /// test sees the panic hook at work.
    pub test_panic: bool,
}

/// `understudy.mode=`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Wait for a technician at the menu.
    #[default]
    Recovery,
    /// Act without a keypress when the situation is clear (booting the emergency copy
    /// comes with the recovery console; for now it is shown and recovery goes on).
    Auto,
}

impl Options {
    /// The options from a kernel command line; unknown values are ignored (and
    /// named in the returned notes) rather than stopping the boot.
    pub fn from_cmdline(c: &Cmdline) -> (Options, Vec<String>) {
        let mut notes = Vec::new();
        let mode = match c.get("understudy.mode") {
            None | Some("recovery") => Mode::Recovery,
            Some("auto") => Mode::Auto,
            Some(other) => {
                notes.push(format!(
                    "understudy.mode={other} is not recovery or auto; using recovery"
                ));
                Mode::Recovery
            }
        };
        let debug = c
            .get("understudy.debug")
            .is_some_and(|v| !matches!(v, "0" | "no" | "off"));
        let test_panic = c.get("understudy.test_panic") == Some("1");
        (
            Options {
                mode,
                debug,
                test_panic,
            },
            notes,
        )
    }
}

/// Whether this process should be PID 1: only when it is. Being started as `/init`
/// is not enough: `chroot IMAGE /init --version` must answer and exit, not take over
/// the console and wait forever.
pub fn is_init(pid: u32) -> bool {
    pid == 1
}

/// How long driver loading may go on while new devices keep appearing.
const DRIVERS_BOUND: Duration = Duration::from_secs(10);
/// How long to wait for the set of disks to settle, and how long it must stay the
/// same to count as settled. Short: a disk that comes later (a slow USB stick) is
/// shown when it comes, as the menu draws the screen again when the set changes.
const DISKS_BOUND: Duration = Duration::from_secs(3);
const DISKS_STABLE: Duration = Duration::from_millis(60);
/// How often the menu loop wakes to reap and look at signals with no key pressed.
const TICK: Duration = Duration::from_millis(500);

/// At most this long, drivers still loading wait for the first screen.
const FIRST_SCREEN_HOLD: Duration = Duration::from_secs(2);
/// How long loading the modules wanted by name may take.
const NAMED_BOUND: Duration = Duration::from_secs(20);
/// Where the kernel lists block devices.
pub(crate) const SYS_BLOCK: &str = "/sys/block";

/// The last panic's message, for the status screen.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// The image's module index and the directory it describes, once loaded.
struct Drivers {
    index: Index,
    dir: PathBuf,
}
static DRIVERS: OnceLock<Drivers> = OnceLock::new();
/// Started once, after the first screen: loading [`modload::ALWAYS`].
static LATE_DRIVERS: std::sync::Once = std::sync::Once::new();
/// Problems the background loading found, for the status screen.
static LATE_NOTES: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// The device drivers' summary line, once their loading is over.
static DEVICE_DRIVERS: Mutex<Option<String>> = Mutex::new(None);
/// The plain status screen's drivers line until then. Drawn, not kept in the notes:
/// the recovery console reads the notes once, and would show it for ever.
pub const DRIVERS_LOADING: &str =
    "drivers: still loading; the screen is drawn again when they are in";

/// PID 1. Never returns.
pub fn main() -> ! {
    install_panic_hook();
    let started = catch(start);
    let (mut consoles, mut status, opts) = match started {
        Some(s) => s,
        None => {
            let consoles = Consoles::setup();
            let status = Status {
                inventory: None,
                block_devices: Vec::new(),
                recorded: RecordedState::NoRecoveryFilesystem,
                roles: None,
                notes: vec![panic_note("during start-up")],
            };
            (consoles, status, Options::default())
        }
    };
    loop {
        if catch(|| supervise::run(&mut consoles, &mut status, opts)).is_none() {
            status.notes.push(panic_note("in the menu"));
            // A panic that repeats at once must not spin the CPU.
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Runs `f`, turning a panic (already shown by the hook) into `None`.
fn catch<T>(f: impl FnOnce() -> T) -> Option<T> {
    panic::catch_unwind(AssertUnwindSafe(f)).ok()
}

fn panic_note(when: &str) -> String {
    let msg = LAST_PANIC
        .lock()
        .map(|m| m.clone())
        .unwrap_or_else(|p| p.into_inner().clone())
        .unwrap_or_else(|| "(no message)".into());
    format!("PID 1 panicked {when}: {msg}")
}

/// Logs the panic, syncs the disks and says on the console what happened; the
/// unwinding then ends in [`catch`], which brings the menu back.
fn install_panic_hook() {
    panic::set_hook(Box::new(|info| {
        let msg = info.to_string().replace('\n', " ");
        log::write_from_panic(log::Level::Crit, &format!("PID 1 panicked: {msg}"));
        if let Ok(mut last) = LAST_PANIC.try_lock() {
            *last = Some(msg.clone());
        }
        nix::unistd::sync();
        // The screen belongs to nobody now: say it there.
        eprint!(
            "\r\nunderstudy: PID 1 panicked: {msg}\r\nunderstudy: disks synced; the menu follows (shell, reboot, power off)\r\n"
        );
    }));
}

/// Mounts, logging, signals, consoles, drivers, disks: everything up to the first
/// status screen.
fn start() -> (Consoles, Status, Options) {
    sys::set_env_before_threads("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    let mount_problems = mounts::mount_pseudo();
    // The kernel lets a process write 10 lines to /dev/kmsg in a burst, then drops
    // them ("printk.devkmsg=ratelimit", the default): PID 1's log is most of what
    // there is to read after a bad start, so all of it goes in.
    let devkmsg = std::fs::write("/proc/sys/kernel/printk_devkmsg", "on\n");
    log::open_kmsg();
    if let Err(e) = devkmsg {
        log::warn(&format!("turning off /dev/kmsg's rate limit: {e}"));
    }
    let mut notes: Vec<String> = Vec::new();
    for p in mount_problems {
        log::error(&p);
        notes.push(p);
    }
    if let Err(e) = sys::catch_as_flags(&[
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ]) {
        log::error(&format!("installing the signal handlers: {e}"));
    }
    // Ctrl-Alt-Del then sends SIGINT to PID 1 instead of resetting at once.
    if let Err(e) = set_cad_enabled(false) {
        log::warn(&format!("disabling Ctrl-Alt-Del: {e}"));
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (opts, opt_notes) = Options::from_cmdline(&Cmdline::parse(cmdline.trim()));
    for n in opt_notes {
        log::warn(&n);
        notes.push(n);
    }
    log::info(&format!("starting; options {opts:?}"));
    if !opts.debug {
        // Only errors and worse from the kernel on the console, so driver chatter
        // does not scribble over the screen (`dmesg` still has everything).
        if let Err(e) = std::fs::write("/proc/sys/kernel/printk", "4") {
            log::warn(&format!("lowering the console log level: {e}"));
        }
    }
    let mut consoles = Consoles::setup();
    log::info(&format!("console size {:?}", consoles.size));
    consoles.show(&format!(
        "{}{}: loading drivers and looking for disks...\n",
        console::CLEAR,
        status::TITLE
    ));
    start_device_drivers();
    wait_for_disks(Path::new(SYS_BLOCK));
    // The drivers still loading wait while the first screen is made
    // (`start_late_drivers` releases them once the console has drawn it).
    modload::hold_until(Instant::now() + FIRST_SCREEN_HOLD);
    // Still loading: the summary joins the notes when it comes (`screen_changed`).
    notes.extend(device_drivers_line());
    if opts.mode == Mode::Auto {
        notes.push(
            "understudy.mode=auto: automatic actions come with the recovery console; waiting here"
                .into(),
        );
    }
    if opts.test_panic {
        failpoint_panic();
    }
    let status = gather(notes);
    (consoles, status, opts)
}

/// `understudy.test_panic=1`: the test of the panic hook.
#[allow(
    clippy::panic,
    reason = "a deliberate panic, asked for on the kernel command line"
)]
fn failpoint_panic() {
    panic!("understudy.test_panic=1 on the kernel command line");
}

/// Loads the drivers for the devices present; one line saying how it went.
fn load_drivers() -> String {
    let release = match nix::sys::utsname::uname() {
        Ok(u) => u.release().to_string_lossy().into_owned(),
        Err(e) => {
            let msg = format!("drivers: not loaded, uname failed: {e}");
            log::error(&msg);
            return msg;
        }
    };
    let dir = Path::new("/lib/modules").join(&release);
    let began = Instant::now();
    let index = match Index::load(&dir) {
        Ok(i) => i,
        Err(e) => {
            let msg = format!("drivers: not loaded: {e:#}");
            log::error(&msg);
            return msg;
        }
    };
    log::info(&format!(
        "module index read in {} ms",
        began.elapsed().as_millis()
    ));
    let d = DRIVERS.get_or_init(|| Drivers { index, dir });
    let began = Instant::now();
    // Opened before /sys is read, so no device falls between the two.
    let events = uevent::Uevents::open()
        .inspect_err(|e| log::warn(&format!("{e:#}; reading /sys after every module instead")))
        .ok();
    let devices = modload::Devices {
        sys: Path::new("/sys"),
        events: events.as_ref(),
    };
    let report = modload::load_for_devices(&d.index, &d.dir, devices, began + DRIVERS_BOUND);
    let line = format!("{} ({} ms)", report.summary(), began.elapsed().as_millis());
    log::info(&format!(
        "{line}; /sys read {} time(s), uevents {} time(s), {} ms in all",
        report.scans,
        report.event_checks,
        report.scanning.as_millis()
    ));
    line
}

/// The nice value of the threads that load drivers in the background: while PID 1
/// takes the inventory and the console draws its first screen, they get the CPU only
/// when those do not want it (on a one-CPU machine, libata's and ata_piix's loading
/// used to stretch the inventory by a third). Idle otherwise, they lose nothing.
const DRIVERS_NICE: i32 = 10;

/// Gives the calling thread [`DRIVERS_NICE`].
fn background_priority() {
    if let Err(e) = sys::set_thread_nice(DRIVERS_NICE) {
        log::warn(&format!("lowering the drivers' priority: {e}"));
    }
}

/// Loads the drivers for the devices present on a thread of its own (here, if no
/// thread can start), leaving the summary in [`DEVICE_DRIVERS`].
fn start_device_drivers() {
    let spawned = std::thread::Builder::new()
        .name("drivers".into())
        .spawn(|| {
            background_priority();
            let line = load_drivers();
            *DEVICE_DRIVERS.lock().unwrap_or_else(|p| p.into_inner()) = Some(line);
        });
    if let Err(e) = spawned {
        log::error(&format!("starting the drivers' thread: {e}; loading here"));
        let line = load_drivers();
        *DEVICE_DRIVERS.lock().unwrap_or_else(|p| p.into_inner()) = Some(line);
    }
}

/// The device drivers' summary, once they are all in.
fn device_drivers_line() -> Option<String> {
    DEVICE_DRIVERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// Loads the modules `names` now; a line when something failed.
fn load_named(names: &[&str], what: &str) -> Option<String> {
    let d = DRIVERS.get()?;
    let began = Instant::now();
    let report = modload::load_named(&d.index, &d.dir, names, began + NAMED_BOUND);
    log::info(&format!(
        "{what}: {} ({} ms)",
        report.summary(),
        began.elapsed().as_millis()
    ));
    (report.count(|l| matches!(l, modload::Loaded::Failed(_))) > 0 || report.timed_out)
        .then(|| format!("{what}: {}", report.summary()))
}

/// Once, after the first screen, on a thread of its own (so the disks' drivers and
/// the first screen do not wait for it): the image's deferred part (the tools, their
/// libraries and some modules), then the filesystems and device-mapper targets
/// ([`modload::ALWAYS`]). What failed reaches the screen through [`LATE_NOTES`].
fn start_late_drivers() {
    modload::release();
    LATE_DRIVERS.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("late-drivers".into())
            .spawn(|| {
                background_priority();
                late_work();
            });
        if let Err(e) = spawned {
            log::error(&format!("starting the filesystem drivers' thread: {e}"));
            late_work();
        }
    });
}

/// The late-drivers thread's work; what failed goes to [`LATE_NOTES`].
fn late_work() {
    let mut notes = Vec::new();
    match initramfs::deferred::ensure() {
        Ok(Some(u)) => log::info(&format!(
            "deferred part unpacked: {} entries, {} KiB in {} ms",
            u.entries,
            u.bytes / 1024,
            u.took.as_millis()
        )),
        Ok(None) => {}
        Err(e) => {
            let note = format!("tools: {e:#}");
            log::error(&note);
            notes.push(note);
        }
    }
    if let Some(note) = load_named(modload::ALWAYS, "drivers (filesystems)") {
        log::error(&note);
        notes.push(note);
    }
    LATE_NOTES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(notes);
}

/// Whether the screen must be drawn again: the background loading left a note, or
/// the set of block devices changed since `known` (a disk that took long to appear,
/// or one plugged in or removed), which is then taken again.
fn screen_changed(status: &mut Status, known: &mut Vec<String>) -> bool {
    let late: Vec<String> =
        std::mem::take(&mut *LATE_NOTES.lock().unwrap_or_else(|p| p.into_inner()));
    let mut changed = !late.is_empty();
    status.notes.extend(late);
    if !status.notes.iter().any(|n| n.starts_with("drivers: "))
        && let Some(line) = device_drivers_line()
    {
        status.notes.push(line);
        changed = true;
    }
    let now = block_devices(Path::new(SYS_BLOCK));
    if now != *known {
        log::info(&format!("block devices now: {}", now.join(" ")));
        *known = now;
        regather(status);
        changed = true;
    }
    changed
}

/// Takes the inventory again, keeping the drivers' notes.
fn regather(status: &mut Status) {
    let keep: Vec<String> = status
        .notes
        .iter()
        .filter(|n| n.starts_with("drivers"))
        .cloned()
        .collect();
    *status = gather(keep);
}

/// The names in `/sys/block`.
pub(crate) fn block_devices(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Whether to stop waiting for disks: the set of block devices has stayed the same
/// for [`DISKS_STABLE`], and either the drivers are all in or there are disks to
/// show (the screen says the drivers are still loading, and is drawn again when
/// they are in). `loader_moved_on`: every module loading when the set last changed
/// has returned since; a driver probing several disks in its init (virtio_blk
/// one after the other) may add the next one more than [`DISKS_STABLE`] after the
/// first.
fn disks_settled(
    drivers_done: bool,
    disks: bool,
    same_for: Duration,
    loader_moved_on: bool,
) -> bool {
    same_for >= DISKS_STABLE && (drivers_done || (disks && loader_moved_on))
}

/// Waits until [`disks_settled`] (SCSI and ATA disks appear some time after their
/// driver loads), at most [`DISKS_BOUND`] after the drivers are in and
/// [`DRIVERS_BOUND`] plus that in all.
fn wait_for_disks(dir: &Path) {
    let began = Instant::now();
    let mut last = block_devices(dir);
    let mut since = Instant::now();
    // The loader's counters when the set last changed.
    let mut at_change = modload::progress();
    let mut drivers_done_at: Option<Instant> = None;
    loop {
        std::thread::sleep(Duration::from_millis(30));
        if drivers_done_at.is_none() && device_drivers_line().is_some() {
            drivers_done_at = Some(Instant::now());
        }
        let now = block_devices(dir);
        if now != last {
            last = now;
            since = Instant::now();
            at_change = modload::progress();
        } else if disks_settled(
            drivers_done_at.is_some(),
            !last.is_empty(),
            since.elapsed(),
            modload::progress().all_returned_since(&at_change),
        ) {
            break;
        }
        let out_of_time = match drivers_done_at {
            Some(at) => at.elapsed() >= DISKS_BOUND,
            None => began.elapsed() >= DRIVERS_BOUND + DISKS_BOUND,
        };
        if out_of_time {
            break;
        }
    }
    log::info(&format!(
        "block devices after {} ms: {}",
        began.elapsed().as_millis(),
        last.join(" ")
    ));
}

/// The inventory, the recorded identities and the roles.
fn gather(mut notes: Vec<String>) -> Status {
    // LVM is not on this screen, and three `lvm` runs cost about a second under
    // emulation (the restore screens will ask for it).
    let sources = disk::Sources {
        lvm: disk::LvmSource::Skip,
        ..disk::Sources::system()
    };
    let began = Instant::now();
    let block_devices = block_devices(Path::new(SYS_BLOCK));
    let inventory = disk::inventory(&sources);
    log::info(&format!(
        "inventory: {} disk(s) in {} ms",
        inventory.disks.len(),
        began.elapsed().as_millis()
    ));
    for p in &inventory.problems {
        log::warn(&format!("inventory: {p}"));
    }
    // Reading the recovery filesystem needs its driver, which may not be in yet; the
    // console's first screen reads the images filesystem too (the other drivers
    // load once that screen is up, `supervise`).
    let wanted = [
        recorded::find_recovery(&inventory),
        crate::recovery::gather::find_label(&inventory, crate::recovery::situation::IMAGES_LABEL),
    ];
    let mut kinds: Vec<String> = wanted.into_iter().flatten().map(|(_, k)| k).collect();
    kinds.dedup();
    for kind in kinds {
        if let Some(note) = load_named(
            &modload::for_filesystem(&kind),
            "drivers (recovery and images filesystems)",
        ) {
            notes.push(note);
        }
    }
    let recorded = recorded::load(&inventory);
    log::info(&format!("recorded identities: {recorded:?}"));
    let roles = recorded::roles(&inventory, &recorded);
    Status {
        inventory: Some(inventory),
        block_devices,
        recorded,
        roles,
        notes,
    }
}

fn draw(consoles: &mut Consoles, status: &Status, opts: Options) {
    let cols = consoles.size.cols;
    let mut text = String::from(console::CLEAR);
    for line in status::render(status, cols) {
        text.push_str(&line);
        text.push('\n');
    }
    if opts.debug {
        text.push_str("\nlog:\n");
        for l in log::tail(5) {
            text.push_str(&l.chars().take(usize::from(cols)).collect::<String>());
            text.push('\n');
        }
    }
    if device_drivers_line().is_none() {
        text.push_str(DRIVERS_LOADING);
        text.push('\n');
    }
    text.push('\n');
    text.push_str(menu::LINE);
    text.push_str("\nchoice: ");
    consoles.show(&text);
}

/// Reaps children and acts on the signals that came.
fn service() {
    for (pid, how) in reaper::reap() {
        log::info(&format!("reaped process {pid}: {how}"));
    }
    handle_signals();
}

/// Acts on the signals that arrived since last time (their handlers only set flags).
fn handle_signals() {
    for sig in sys::take_signals() {
        match sig {
            Signal::SIGCHLD => {}
            // Ctrl-Alt-Del.
            Signal::SIGINT => {
                log::warn("SIGINT (Ctrl-Alt-Del): rebooting");
                let e = power(RebootMode::RB_AUTOBOOT);
                log::error(&e);
            }
            other => log::info(&format!("{other} ignored: PID 1 stops only from the menu")),
        }
    }
}

/// Syncs and reboots or powers off; returns only if that failed, saying why.
fn power(mode: RebootMode) -> String {
    nix::unistd::sync();
    match reboot(mode) {
        Err(e) => format!("{mode:?} failed: {e}"),
        Ok(never) => match never {},
    }
}

/// Shows the status and menu, waits for a key, carries the action out; for ever.
fn menu_loop(consoles: &mut Consoles, status: &mut Status, opts: Options) {
    let mut known = block_devices(Path::new(SYS_BLOCK));
    loop {
        service();
        draw(consoles, status, opts);
        start_late_drivers();
        consoles.keys_mode();
        let action = loop {
            service();
            if screen_changed(status, &mut known) {
                break None;
            }
            if let Some(a) = consoles.read_key(TICK).and_then(menu::action) {
                break Some(a);
            }
        };
        let Some(action) = action else {
            continue;
        };
        log::info(&format!("menu: {action:?}"));
        match action {
            Action::Shell => {
                consoles.lines_mode();
                consoles.show(&format!(
                    "{}Shell on the console; `exit` comes back to the menu.\n",
                    console::CLEAR
                ));
                let note = run_shell();
                log::info(&note);
                status.notes.retain(|n| !n.starts_with("shell: "));
                if !note.ends_with("exited 0") {
                    status.notes.push(note);
                }
            }
            Action::Reboot | Action::PowerOff => {
                let (mode, what) = if action == Action::Reboot {
                    (RebootMode::RB_AUTOBOOT, "rebooting")
                } else {
                    (RebootMode::RB_POWER_OFF, "powering off")
                };
                consoles.show(&format!("\n{what}...\n"));
                let e = power(mode);
                log::error(&e);
                status.notes.push(e);
            }
            Action::Refresh => {
                consoles.show("\nlooking at the disks again...\n");
                known = block_devices(Path::new(SYS_BLOCK));
                regather(status);
            }
            Action::Log => {
                let rows = usize::from(consoles.size.rows.saturating_sub(3));
                let mut text = format!("{}PID 1 log (all of it: dmesg)\n", console::CLEAR);
                for l in log::tail(rows) {
                    text.push_str(
                        &l.chars()
                            .take(usize::from(consoles.size.cols))
                            .collect::<String>(),
                    );
                    text.push('\n');
                }
                text.push_str("press a key for the menu");
                consoles.show(&text);
                while consoles.read_key(TICK).is_none() {
                    service();
                }
            }
        }
    }
}

/// busybox's shell on the console, with a controlling terminal (`setsid cttyhack`,
/// so Ctrl-C reaches what it runs) and `/etc/profile` (whose aliases make the real
/// `mke2fs` and friends win over busybox's applets); plain `sh` if that cannot start.
fn run_shell() -> String {
    let with_tty = Cmd::new("/usr/bin/setsid")
        .args(["/usr/bin/cttyhack", "/bin/sh"])
        .env("ENV", "/etc/profile")
        .env("HOME", "/root")
        .interactive();
    let status = match with_tty {
        Ok(s) => Ok(s),
        Err(e) => {
            log::warn(&format!("{e:#}; starting plain sh"));
            Cmd::new("/bin/sh").env("ENV", "/etc/profile").interactive()
        }
    };
    match status {
        Ok(s) => match s.code() {
            Some(c) => format!("shell: exited {c}"),
            None => format!("shell: {s}"),
        },
        Err(e) => format!("shell: could not start: {e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_come_from_the_kernel_command_line() {
        let (o, notes) = Options::from_cmdline(&Cmdline::parse(
            "console=ttyS0 understudy.mode=auto understudy.debug quiet",
        ));
        assert_eq!(
            o,
            Options {
                mode: Mode::Auto,
                debug: true,
                test_panic: false
            }
        );
        assert!(notes.is_empty());
        let (o, notes) = Options::from_cmdline(&Cmdline::parse(
            "understudy.mode=sideways understudy.debug=0 understudy.test_panic=1",
        ));
        assert_eq!(
            o,
            Options {
                mode: Mode::Recovery,
                debug: false,
                test_panic: true
            }
        );
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("sideways"));
        // Arguments after `--` belong to init's argv, not to these keys.
        let (o, _) = Options::from_cmdline(&Cmdline::parse("ro -- understudy.test_panic=1"));
        assert!(!o.test_panic);
    }

    #[test]
    fn only_pid_1_means_init() {
        assert!(is_init(1));
        assert!(!is_init(4242));
    }

    #[test]
    fn the_screen_comes_once_disks_stop_appearing_or_the_drivers_are_in() {
        let settled = DISKS_STABLE;
        let early = DISKS_STABLE / 2;
        // Disks there and steady: show them, even with drivers still loading.
        assert!(disks_settled(false, true, settled, true));
        assert!(disks_settled(true, true, settled, true));
        // No disks yet while drivers load: they may still come.
        assert!(!disks_settled(false, false, settled, true));
        // Drivers in and no disks: that is the answer.
        assert!(disks_settled(true, false, settled, true));
        // A set that just changed is not steady yet.
        assert!(!disks_settled(true, true, early, true));
        // The module that was loading when the last disk came has not returned: it
        // may be probing the next disk.
        assert!(!disks_settled(false, true, settled, false));
        assert!(disks_settled(true, true, settled, false));
    }

    #[test]
    fn block_devices_are_listed_sorted() {
        let dir =
            std::env::temp_dir().join(format!("understudy-init-block-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for n in ["vdb", "vda", "sr0"] {
            std::fs::create_dir_all(dir.join(n)).unwrap();
        }
        assert_eq!(block_devices(&dir), ["sr0", "vda", "vdb"]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(block_devices(&dir).is_empty());
    }
}
