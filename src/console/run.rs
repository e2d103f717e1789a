//! The console's executor: sets the current terminal up (raw keys, hidden cursor,
//! 80x24 when the line reports no size, output mirrored to the VGA console under
//! PID 1), runs the loop (keys, a clock tick, messages from worker threads, a look at
//! `/sys/block` for disks coming and going), and carries the effects out: gathering
//! the situation, the restore or copy-back child process and its JSON stream, SIGTERM
//! to cancel it, verifying images, kexec of the emergency copy, reboot, power off, a
//! shell.
//!
//! Does not own: any decision (`update`), any drawing (`view`), the facts
//! (`recovery::gather`), supervising the console (`init::supervise`).

use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::{cursor, execute, terminal};
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use ratatui::backend::CrosstermBackend;
use ratatui::layout::Rect;
use ratatui::{Terminal, TerminalOptions, Viewport};

use super::msg::{EngineEvent, Key, Msg};
use super::state::{Options, State};
use super::update::{Effect, update};
use super::view::view;
use crate::archive;
use crate::boot;
use crate::cmd::Cmd;
use crate::cmdline::Cmdline;
use crate::disk::Inventory;
use crate::init::console::{CLEAR, Size, effective_size};
use crate::init::mounts::MountGuard;
use crate::init::recorded::RECOVERY_LABEL;
use crate::init::supervise::{DRAWN_ENV, HandOver};
use crate::recovery::emergency::EmergencyBoot;
use crate::recovery::gather::{self, MOUNT_ROOT, find_label};
use crate::recovery::images;
use crate::recovery::situation::{self, Situation};
use crate::sys;

/// How often the loop wakes with no key.
const TICK: Duration = Duration::from_millis(250);
/// How often the set of disks is looked at.
const DISKS_EVERY: Duration = Duration::from_secs(2);

/// How `understudy console` was asked to run.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// No colours (also with `TERM=dumb` or `understudy.color=0`).
    pub no_color: bool,
    /// Automatic mode (also with `understudy.mode=auto`).
    pub auto: bool,
    /// Images from this directory instead of the images partition.
    pub images: Option<PathBuf>,
    /// PID 1's start-up notes, one a line.
    pub notes: Option<PathBuf>,
    /// PID 1's inventory ([`HandOver`]), for the first screen.
    pub inventory: Option<PathBuf>,
}

/// The options from the configuration, the kernel command line and `TERM`.
pub fn options(cfg: &Config, cmdline: &Cmdline, term: Option<&str>) -> Options {
    Options {
        auto: cfg.auto || cmdline.get("understudy.mode") == Some("auto"),
        color: !cfg.no_color
            && term != Some("dumb")
            && !matches!(cmdline.get("understudy.color"), Some("0" | "no" | "off")),
    }
}

/// Output to the console and, when it is another device, the VGA console too.
struct Tee {
    out: io::Stdout,
    vga: Option<File>,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(v) = self.vga.as_mut() {
            // The VGA console is a mirror: its errors are not the technician's.
            let _ = v.write_all(buf);
        }
        self.out.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        if let Some(v) = self.vga.as_mut() {
            let _ = v.flush();
        }
        self.out.flush()
    }
}

/// `/dev/tty1` when this process runs on another console (PID 1's serial line).
fn vga_mirror() -> Option<File> {
    let ours = std::fs::metadata("/proc/self/fd/1").ok()?;
    let console = std::fs::metadata("/dev/console").ok()?;
    let tty1 = std::fs::metadata("/dev/tty1").ok()?;
    (ours.rdev() == console.rdev() && console.rdev() != tty1.rdev())
        .then(|| OpenOptions::new().write(true).open("/dev/tty1").ok())
        .flatten()
}

type Term = Terminal<CrosstermBackend<Tee>>;

/// The terminal in raw mode; put back as it was when dropped (also on a panic).
struct TerminalGuard {
    term: Term,
    size: Size,
}

/// A terminal for `size` cells. Never `Terminal::clear`: it asks the terminal for
/// the cursor position, and a serial line (or the harness on it) may never answer.
fn make_term(size: Size) -> Result<Term> {
    let backend = CrosstermBackend::new(Tee {
        out: io::stdout(),
        vga: vga_mirror(),
    });
    Terminal::with_options(
        backend,
        TerminalOptions {
            viewport: Viewport::Fixed(Rect::new(0, 0, size.cols, size.rows)),
        },
    )
    .context("setting up the terminal")
}

impl TerminalGuard {
    fn new() -> Result<TerminalGuard> {
        let size = effective_size(sys::window_size(io::stdin()).ok());
        let mut g = TerminalGuard {
            term: make_term(size)?,
            size,
        };
        g.enter(size)?;
        Ok(g)
    }

    /// Raw mode, no cursor, a cleared screen and a terminal that knows it is clear.
    fn enter(&mut self, size: Size) -> Result<()> {
        terminal::enable_raw_mode().context("putting the terminal in raw mode")?;
        self.term = make_term(size)?;
        self.size = size;
        let out = self.term.backend_mut();
        execute!(out, cursor::Hide).context("hiding the cursor")?;
        out.write_all(CLEAR.as_bytes())
            .and_then(|()| out.flush())
            .context("clearing the terminal")?;
        Ok(())
    }

    fn leave(&mut self) {
        let _ = execute!(self.term.backend_mut(), cursor::Show);
        let _ = terminal::disable_raw_mode();
        blocking_stdin();
        let _ = self.term.backend_mut().write_all(CLEAR.as_bytes());
        let _ = self.term.backend_mut().flush();
    }
}

/// Standard input back to blocking reads. crossterm's event source (mio) leaves the
/// console's open file description non-blocking, which a shell or PID 1's menu
/// started after us shares: seen as a busybox shell that stopped reading its input
/// after the console had run in it.
fn blocking_stdin() {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let stdin = io::stdin();
    if let Ok(bits) = fcntl(&stdin, FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_truncate(bits);
        if flags.contains(OFlag::O_NONBLOCK) {
            let _ = fcntl(&stdin, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK));
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        self.leave();
    }
}

fn key(ev: event::KeyEvent) -> Option<Key> {
    if ev.kind == KeyEventKind::Release {
        return None;
    }
    Some(match ev.code {
        KeyCode::Char('c') if ev.modifiers.contains(KeyModifiers::CONTROL) => Key::Esc,
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        _ => Key::Other,
    })
}

/// What the executor holds between effects.
struct World {
    sources: gather::Sources,
    /// PID 1's inventory, for the first gathering only.
    handed_over: Option<HandOver>,
    /// The block devices as they were just before the facts were last gathered: one
    /// that appears during or after a gathering differs from these, and brings
    /// another.
    seen: Vec<String>,
    images_mount: Option<MountGuard>,
    tx: Sender<Msg>,
    /// The pid of the restore or copy-back child while it runs.
    engine: Option<u32>,
}

impl World {
    fn situation(&mut self) -> Situation {
        // Unmount the old view before mounting again at the same place.
        self.images_mount = None;
        self.seen = block_devices();
        let handed = self
            .handed_over
            .take()
            .and_then(|h| h.inventory_for(&self.seen));
        let g = gather::gather(&self.sources, handed);
        self.images_mount = g.images_mount;
        situation::decide(g.facts)
    }
}

/// Runs the console on the current terminal until the technician quits (`q`) or the
/// machine reboots.
pub fn main(cfg: Config) -> Result<()> {
    timeline("started");
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let term_var = std::env::var("TERM").ok();
    let opts = options(&cfg, &Cmdline::parse(cmdline.trim()), term_var.as_deref());
    let notes = match &cfg.notes {
        Some(f) => std::fs::read_to_string(f)
            .map(|t| t.lines().map(String::from).collect())
            .unwrap_or_else(|e| vec![format!("reading {}: {e}", f.display())]),
        None => Vec::new(),
    };
    let (tx, rx) = channel();
    let mut sources = gather::Sources::system();
    sources.images_dir = cfg.images.clone();
    let mut world = World {
        sources,
        handed_over: cfg.inventory.as_deref().and_then(HandOver::read),
        seen: Vec::new(),
        images_mount: None,
        tx,
        engine: None,
    };
    let situation = world.situation();
    timeline("facts gathered");
    let state = State::new(situation, opts, notes);
    let mut guard = TerminalGuard::new()?;
    timeline("terminal set up");
    event_loop(&mut guard, state, &mut world, &rx)
}

/// Tells PID 1 the first screen is up (creates the file it named in
/// [`DRAWN_ENV`]), so it starts what it held back for it. Run by hand, nothing.
fn tell_drawn() {
    if let Some(path) = std::env::var_os(DRAWN_ENV) {
        // PID 1 starts the work anyway after a while: a failure only delays it.
        let _ = std::fs::write(path, b"");
        timeline("first screen drawn");
    }
}

/// A line in PID 1's log, for the boot's timeline (`dmesg`); only when PID 1 started
/// this console (it names [`DRAWN_ENV`]): run by hand, the kernel log is not ours.
fn timeline(what: &str) {
    if std::env::var_os(DRAWN_ENV).is_some() {
        let _ = OpenOptions::new()
            .write(true)
            .open("/dev/kmsg")
            .and_then(|mut k| {
                k.write_all(format!("understudy: recovery console: {what}\n").as_bytes())
            });
    }
}

fn block_devices() -> Vec<String> {
    crate::init::block_devices(Path::new(crate::init::SYS_BLOCK))
}

fn event_loop(
    guard: &mut TerminalGuard,
    mut state: State,
    world: &mut World,
    rx: &Receiver<Msg>,
) -> Result<()> {
    let started = Instant::now();
    let mut disks_at = Instant::now();
    let mut drawn_told = false;
    loop {
        guard
            .term
            .draw(|f| view(&state, f))
            .context("drawing the console")?;
        if !drawn_told {
            drawn_told = true;
            tell_drawn();
        }
        let mut msgs = Vec::new();
        if event::poll(TICK).context("waiting for a key")? {
            match event::read().context("reading a key")? {
                Event::Key(k) => msgs.extend(key(k).map(Msg::Key)),
                Event::Resize(w, h) => guard.enter(effective_size(Some((w, h))))?,
                _ => {}
            }
        }
        msgs.extend(rx.try_iter());
        msgs.push(Msg::Tick(started.elapsed()));
        if disks_at.elapsed() >= DISKS_EVERY && world.engine.is_none() {
            disks_at = Instant::now();
            if block_devices() != world.seen {
                msgs.push(Msg::Situation(Box::new(world.situation())));
            }
        }
        for m in msgs {
            if let Msg::Engine(EngineEvent::Exited { .. }) = &m {
                world.engine = None;
            }
            let (next, effects) = update(state, m);
            state = next;
            for e in effects {
                if let Some(Quit) = carry_out(e, guard, &state, world)? {
                    return Ok(());
                }
            }
        }
    }
}

struct Quit;

fn carry_out(
    e: Effect,
    guard: &mut TerminalGuard,
    state: &State,
    world: &mut World,
) -> Result<Option<Quit>> {
    let tx = world.tx.clone();
    match e {
        Effect::Quit => return Ok(Some(Quit)),
        Effect::Refresh => {
            let s = world.situation();
            let _ = tx.send(Msg::Situation(Box::new(s)));
        }
        Effect::Shell => {
            guard.leave();
            println!("{CLEAR}Shell on the console; `exit` comes back to the menu.\r");
            let how = shell();
            guard.enter(guard.size)?;
            let _ = tx.send(Msg::ShellExited(how));
        }
        Effect::Reboot | Effect::PowerOff => {
            let (mode, what) = if e == Effect::Reboot {
                (RebootMode::RB_AUTOBOOT, "rebooting")
            } else {
                (RebootMode::RB_POWER_OFF, "powering off")
            };
            guard.leave();
            println!("{what}...\r");
            let problem = power(mode);
            guard.enter(guard.size)?;
            let _ = tx.send(Msg::EffectFailed(problem));
        }
        Effect::RebootToEmergency => match leave_next_entry(&state.situation.inventory) {
            Ok(()) => {
                guard.leave();
                println!("rebooting into the emergency copy through GRUB...\r");
                let problem = power(RebootMode::RB_AUTOBOOT);
                guard.enter(guard.size)?;
                let _ = tx.send(Msg::EffectFailed(problem));
            }
            Err(e) => {
                let _ = tx.send(Msg::EffectFailed(format!(
                    "not rebooting: GRUB's one-shot choice could not be left: {e:#}"
                )));
            }
        },
        Effect::BootEmergency(plan) => {
            // The "starting" screen is up; say it before the machine goes.
            guard
                .term
                .draw(|f| view(state, f))
                .context("drawing the console")?;
            match load_emergency(&plan, &state.situation.inventory) {
                Ok(()) => {
                    guard.leave();
                    println!("kexec: starting the emergency copy\r");
                    nix::unistd::sync();
                    let e = match reboot(RebootMode::RB_KEXEC) {
                        Err(e) => e,
                        Ok(never) => match never {},
                    };
                    guard.enter(guard.size)?;
                    let _ = tx.send(Msg::KexecFailed(format!("reboot(RB_KEXEC): {e}")));
                }
                Err(e) => {
                    let _ = tx.send(Msg::KexecFailed(format!("{e:#}")));
                }
            }
        }
        Effect::StartRestore { image, target } => {
            let args = [
                OsStr::new("restore"),
                image.as_os_str(),
                OsStr::new("--target"),
                target.as_os_str(),
            ];
            start_engine(world, &args);
        }
        Effect::CopyBack { image, disk } => {
            let args = [
                OsStr::new("copy-back"),
                OsStr::new("--disk"),
                disk.as_os_str(),
                OsStr::new("--image"),
                image.as_os_str(),
            ];
            start_engine(world, &args);
        }
        Effect::Cancel => {
            if let Some(pid) = world.engine
                && let Ok(raw) = i32::try_from(pid)
                && let Err(e) = kill(Pid::from_raw(raw), Signal::SIGTERM)
            {
                let _ = tx.send(Msg::EffectFailed(format!(
                    "SIGTERM to the running job: {e}"
                )));
            }
        }
        Effect::Verify(list) => {
            std::thread::spawn(move || {
                for (id, dir) in list {
                    let result = images::verify(&dir).map_err(|e| format!("{e:#}"));
                    let _ = tx.send(Msg::Verified { id, result });
                }
            });
        }
    }
    Ok(None)
}

/// busybox's shell with a controlling terminal (so Ctrl-C reaches what it runs) and
/// `/etc/profile`, as PID 1's menu runs it; `$SHELL` or `/bin/sh` elsewhere.
fn shell() -> String {
    let status = if let Some(cttyhack) = crate::cmd::find_program("cttyhack") {
        Cmd::new("/usr/bin/setsid")
            .arg(cttyhack)
            .arg("/bin/sh")
            .env("ENV", "/etc/profile")
            .env("HOME", "/root")
            .interactive()
    } else {
        Cmd::new(std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".into())).interactive()
    };
    match status {
        Ok(s) => match s.code() {
            Some(c) => format!("shell: exited {c}"),
            None => format!("shell: {s}"),
        },
        Err(e) => format!("shell: could not start: {e:#}"),
    }
}

/// Syncs, then reboots or powers off; returns why not if that failed.
fn power(mode: RebootMode) -> String {
    nix::unistd::sync();
    match reboot(mode) {
        Err(e) => format!("{mode:?} failed: {e}"),
        Ok(never) => match never {},
    }
}

/// Writes GRUB's one-shot choice of the emergency entry (`boot::NEXT_ENTRY_PATH`) on
/// the recovery filesystem, synced, so the next boot starts the emergency copy.
fn leave_next_entry(inv: &Inventory) -> Result<()> {
    let (device, fstype) = find_label(inv, RECOVERY_LABEL)
        .with_context(|| format!("no filesystem labelled {RECOVERY_LABEL}"))?;
    let guard = MountGuard::writable(&device, &Path::new(MOUNT_ROOT).join("recovery-rw"), &fstype)?;
    let block = boot::next_entry_emergency().context("encoding the one-shot choice")?;
    let path = guard
        .path()
        .join(boot::NEXT_ENTRY_PATH.trim_start_matches('/'));
    archive::write_atomic(&path, &block).with_context(|| format!("writing {}", path.display()))?;
    nix::unistd::sync();
    Ok(())
}

/// Mounts the emergency filesystem, and loads its kernel and initrd with its command
/// line for kexec.
fn load_emergency(plan: &EmergencyBoot, inv: &Inventory) -> Result<()> {
    let (device, kind) = inv
        .disks
        .iter()
        .flat_map(|d| &d.partitions)
        .find_map(|p| match (&p.signature, &p.path) {
            (Some(s), Some(path))
                if s.uuid
                    .as_deref()
                    .is_some_and(|u| u.eq_ignore_ascii_case(&plan.fs_uuid)) =>
            {
                Some((path.clone(), s.kind.clone()))
            }
            _ => None,
        })
        .with_context(|| {
            format!(
                "no filesystem with UUID {} (the emergency copy)",
                plan.fs_uuid
            )
        })?;
    let guard = MountGuard::read_only(&device, &Path::new(MOUNT_ROOT).join("emergency"), &kind)?;
    let open = |p: &str| {
        let path = guard.path().join(p.trim_start_matches('/'));
        File::open(&path).with_context(|| format!("opening {}", path.display()))
    };
    let kernel = open(&plan.kernel)?;
    let initrd = open(&plan.initrd)?;
    let cmdline = CString::new(plan.cmdline.clone()).context("a NUL in the command line")?;
    sys::kexec_file_load(&kernel, &initrd, &cmdline).with_context(|| {
        format!(
            "kexec_file_load of {} and {} from {}",
            plan.kernel,
            plan.initrd,
            device.display()
        )
    })?;
    Ok(())
}

/// Starts this very binary with `args` and `--yes --progress=json` (a restore or a
/// copy-back) and remembers its pid; its events go to the loop, the last one
/// [`EngineEvent::Exited`]. When it cannot start, says so as a failed job.
fn start_engine(world: &mut World, args: &[&OsStr]) {
    match spawn_engine(args, world.tx.clone()) {
        Ok(pid) => world.engine = Some(pid),
        Err(e) => {
            let _ = world.tx.send(Msg::Engine(EngineEvent::Failed {
                step: "start".into(),
                error: format!("{e:#}"),
            }));
            let _ = world.tx.send(Msg::Engine(EngineEvent::Exited {
                code: None,
                stderr: String::new(),
            }));
        }
    }
}

/// Spawns this binary with `args --yes --progress=json`; a thread sends each line of
/// its standard output as an [`EngineEvent`] to `tx`, then its exit. Returns its pid.
fn spawn_engine(args: &[&OsStr], tx: Sender<Msg>) -> Result<u32> {
    let exe = std::env::current_exe().context("finding this program")?;
    let cmd = Cmd::new(exe).args(args).args(["--yes", "--progress=json"]);
    let mut child = cmd.spawn_piped()?;
    let pid = child.id();
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        bail!("`{}` has no output pipes", cmd.display());
    };
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            if tx.send(Msg::Engine(EngineEvent::parse(&line))).is_err() {
                break;
            }
        }
        let stderr = errors.join().unwrap_or_default();
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        let stderr = tail.into_iter().rev().collect::<Vec<_>>().join(" / ");
        let code = child.wait().ok().and_then(|s| s.code());
        let _ = tx.send(Msg::Engine(EngineEvent::Exited { code, stderr }));
    });
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_is_off_for_the_flag_a_dumb_terminal_or_the_kernel_key() {
        let cfg = Config::default();
        let none = Cmdline::parse("console=ttyS0");
        assert!(options(&cfg, &none, Some("linux")).color);
        assert!(!options(&cfg, &none, Some("dumb")).color);
        assert!(!options(&cfg, &Cmdline::parse("understudy.color=0"), Some("vt100")).color);
        let no = Config {
            no_color: true,
            ..Config::default()
        };
        assert!(!options(&no, &none, None).color);
        assert!(options(&cfg, &Cmdline::parse("understudy.mode=auto"), None).auto);
        assert!(!options(&cfg, &Cmdline::parse("understudy.mode=recovery"), None).auto);
    }
}
