//! PID 1's side of the recovery console: runs it as a child process (`/init console`)
//! on the console, hands it PID 1's start-up notes through [`NOTES_FILE`], starts it
//! again when it ends or crashes, and after [`CRASHES`] quick crashes in a row falls
//! back to PID 1's own plain-text menu (status, shell, reboot, power off), so a broken
//! console never leaves the technician without a shell. Starts the drivers the first
//! screen does not need once the console says it has drawn ([`DRAWN_FILE`]).
//!
//! Does not own: the console (`console`), the plain menu (`mod.rs`, `menu.rs`).

use std::time::{Duration, Instant};

use super::console::{CLEAR, Consoles};
use super::status::Status;
use super::{Options, log, reaper};
use crate::cmd::Cmd;

/// Where PID 1 leaves its start-up notes for the console.
pub const NOTES_FILE: &str = "/run/understudy/pid1-notes";
/// The environment variable naming the file the console creates once its first
/// screen is drawn ([`DRAWN_FILE`]).
pub const DRAWN_ENV: &str = "UNDERSTUDY_DRAWN_FILE";
/// Created by the console after its first draw: PID 1 then starts the work the
/// first screen does not need (the filesystem and device-mapper drivers), so that
/// work does not compete with the console for the CPU before the technician sees
/// anything.
pub const DRAWN_FILE: &str = "/run/understudy/console-drawn";
/// The background work starts at the latest this long after the console, drawn or
/// not.
const DRAWN_BOUND: Duration = Duration::from_secs(5);
/// Quick crashes in a row before the plain menu takes over.
pub const CRASHES: u32 = 3;
/// A console that ran this long before it crashed counts as a fresh start.
const STABLE: Duration = Duration::from_secs(60);

/// How a run of the console ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It quit on its own (`q`): start it again.
    Quit,
    /// Exit code, signal, or failure to start: why.
    Crashed(String),
}

/// What PID 1 does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Restart,
    /// Too many crashes: the plain menu.
    PlainMenu,
}

/// The next step and the new count of quick crashes in a row.
pub fn next(exit: &Exit, ran_for: Duration, crashes: u32) -> (Next, u32) {
    match exit {
        Exit::Quit => (Next::Restart, 0),
        Exit::Crashed(_) => {
            let crashes = if ran_for >= STABLE { 1 } else { crashes + 1 };
            if crashes >= CRASHES {
                (Next::PlainMenu, crashes)
            } else {
                (Next::Restart, crashes)
            }
        }
    }
}

/// The notes worth passing on (the plain menu's own remarks left out).
fn notes_text(notes: &[String]) -> String {
    notes
        .iter()
        .filter(|n| !n.starts_with("understudy.mode=auto: automatic actions come"))
        .map(|n| format!("{n}\n"))
        .collect()
}

/// How often PID 1 looks for ended children and signals while the console runs.
const TICK: Duration = Duration::from_millis(200);

/// Runs the console once. PID 1 keeps reaping every child meanwhile (orphans are
/// its children too) and acting on signals (Ctrl-Alt-Del), so it does not wait for
/// the console by pid but collects every ended child and picks the console out.
fn run_once() -> Exit {
    let exe = std::env::current_exe().unwrap_or_else(|_| "/init".into());
    let started = Instant::now();
    let child = match Cmd::new(exe)
        .args(["console", "--notes", NOTES_FILE])
        .env(DRAWN_ENV, DRAWN_FILE)
        .spawn_interactive()
    {
        Ok(c) => c,
        Err(e) => return Exit::Crashed(format!("{e:#}")),
    };
    log::info(&format!("recovery console started, pid {}", child.id()));
    let Ok(console) = i32::try_from(child.id()) else {
        return Exit::Crashed(format!("pid {} out of range", child.id()));
    };
    loop {
        for (pid, how) in reaper::reap() {
            if pid != console {
                log::info(&format!("reaped process {pid}: {how}"));
            } else if how.success() {
                return Exit::Quit;
            } else {
                return Exit::Crashed(format!("the recovery console ended: {how}"));
            }
        }
        super::handle_signals();
        if started.elapsed() >= DRAWN_BOUND || std::path::Path::new(DRAWN_FILE).exists() {
            super::start_late_drivers();
        }
        std::thread::sleep(TICK);
    }
}

/// Runs the console for ever; the plain menu after repeated crashes. Never returns
/// unless the plain menu does.
pub fn run(consoles: &mut Consoles, status: &mut Status, opts: Options) {
    // The late drivers start once the console has drawn (`run_once`).
    let mut crashes = 0;
    loop {
        super::service();
        if let Err(e) = std::fs::create_dir_all("/run/understudy")
            .and_then(|()| std::fs::write(NOTES_FILE, notes_text(&status.notes)))
        {
            log::warn(&format!("writing {NOTES_FILE}: {e}"));
        }
        consoles.lines_mode();
        let began = Instant::now();
        let exit = run_once();
        log::info(&format!("recovery console: {exit:?}"));
        super::start_late_drivers();
        super::service();
        let (what, n) = next(&exit, began.elapsed(), crashes);
        crashes = n;
        if let Exit::Crashed(why) = &exit {
            status
                .notes
                .retain(|n| !n.starts_with("recovery console: "));
            status.notes.push(format!("recovery console: {why}"));
        }
        match what {
            Next::Restart => {
                if crashes > 0 {
                    // A console that dies at once must not spin the CPU.
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            Next::PlainMenu => {
                let msg = format!(
                    "recovery console: crashed {crashes} times in a row; PID 1's plain menu follows"
                );
                log::error(&msg);
                status.notes.push(msg);
                consoles.show(CLEAR);
                super::menu_loop(consoles, status, opts);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_crashes_in_a_row_fall_back_to_the_plain_menu() {
        let crash = Exit::Crashed("killed by SIGSEGV".into());
        let quick = Duration::from_secs(2);
        let (n1, c) = next(&crash, quick, 0);
        let (n2, c) = next(&crash, quick, c);
        let (n3, c) = next(&crash, quick, c);
        assert_eq!(
            [n1, n2, n3],
            [Next::Restart, Next::Restart, Next::PlainMenu]
        );
        assert_eq!(c, CRASHES);
        // A long run between crashes starts the count again; quitting resets it.
        assert_eq!(next(&crash, STABLE, 2), (Next::Restart, 1));
        assert_eq!(next(&Exit::Quit, quick, 2), (Next::Restart, 0));
    }

    #[test]
    fn the_console_gets_the_notes_but_not_the_plain_menus_remark() {
        let t = notes_text(&[
            "drivers: 7 loaded (120 ms)".into(),
            "understudy.mode=auto: automatic actions come with the recovery console; waiting here"
                .into(),
            "PID 1 panicked during start-up: boom".into(),
        ]);
        assert_eq!(
            t,
            "drivers: 7 loaded (120 ms)\nPID 1 panicked during start-up: boom\n"
        );
    }
}
