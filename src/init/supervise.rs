//! PID 1's side of the recovery console: runs it as a child process (`/init console`)
//! on the console, hands it PID 1's start-up notes through [`NOTES_FILE`] (and, for
//! its first start, PID 1's disk inventory: [`HandOver`]), starts it
//! again when it ends or crashes, and after [`CRASHES`] quick crashes in a row falls
//! back to PID 1's own plain-text menu (status, shell, reboot, power off), so a broken
//! console never leaves the technician without a shell. Starts the drivers the first
//! screen does not need once the console says it has drawn ([`DRAWN_FILE`]).
//!
//! Does not own: the console (`console`), the plain menu (`mod.rs`, `menu.rs`).

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::console::{CLEAR, Consoles};
use super::status::Status;
use super::{Options, log, reaper};
use crate::cmd::Cmd;
use crate::disk::Inventory;

/// Where PID 1 leaves its start-up notes for the console.
pub const NOTES_FILE: &str = "/run/understudy/pid1-notes";
/// Where PID 1 leaves its inventory ([`HandOver`]) for the console's first start.
pub const INVENTORY_FILE: &str = "/run/understudy/pid1-inventory.json";

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

/// The disk inventory PID 1 took just before starting the console, with the block
/// devices it saw: the console's first screen uses it instead of probing every disk
/// again (about 0.2 s under emulation), unless `/sys/block` has changed since. Only
/// for the console's first start: later ones (after a shell, say) probe afresh.
#[derive(Debug, Serialize, Deserialize)]
pub struct HandOver {
    pub block_devices: Vec<String>,
    pub inventory: Inventory,
}

impl HandOver {
    /// The hand-over in `file`, if it is readable.
    pub fn read(file: &Path) -> Option<HandOver> {
        serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()
    }

    /// The inventory, if it was taken with the block devices `now` lists.
    pub fn inventory_for(self, now: &[String]) -> Option<Inventory> {
        (self.block_devices == now).then_some(self.inventory)
    }

    /// Writes the inventory of `status` to [`INVENTORY_FILE`] with the block devices
    /// it was taken with; false when there is none or it could not be written.
    fn put(status: &Status) -> bool {
        let Some(inventory) = &status.inventory else {
            return false;
        };
        let h = HandOver {
            block_devices: status.block_devices.clone(),
            inventory: inventory.clone(),
        };
        match serde_json::to_string(&h) {
            Ok(text) => match std::fs::write(INVENTORY_FILE, text) {
                Ok(()) => true,
                Err(e) => {
                    log::warn(&format!("writing {INVENTORY_FILE}: {e}"));
                    false
                }
            },
            Err(e) => {
                log::warn(&format!("serialising the inventory: {e}"));
                false
            }
        }
    }
}

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
fn run_once(hand_over: bool) -> Exit {
    let exe = std::env::current_exe().unwrap_or_else(|_| "/init".into());
    let started = Instant::now();
    let mut args = vec!["console", "--notes", NOTES_FILE];
    if hand_over {
        args.extend(["--inventory", INVENTORY_FILE]);
    }
    let child = match Cmd::new(exe)
        .args(args)
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
    let mut first = true;
    loop {
        super::service();
        if let Err(e) = std::fs::create_dir_all("/run/understudy")
            .and_then(|()| std::fs::write(NOTES_FILE, notes_text(&status.notes)))
        {
            log::warn(&format!("writing {NOTES_FILE}: {e}"));
        }
        consoles.lines_mode();
        let began = Instant::now();
        // A stale hand-over must not outlive its start.
        let _ = std::fs::remove_file(INVENTORY_FILE);
        let hand_over = first && HandOver::put(status);
        first = false;
        let exit = run_once(hand_over);
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
    fn a_handed_over_inventory_counts_only_for_the_same_block_devices() {
        let inventory = Inventory {
            disks: Vec::new(),
            lvm: crate::disk::LvmStatus::Skipped,
            mounts: Vec::new(),
            swaps: Vec::new(),
            problems: vec!["taken by PID 1".into()],
        };
        let devices = vec!["vda".to_string(), "vdb".to_string()];
        let dir = std::env::temp_dir().join(format!("understudy-handover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("inventory.json");
        let text = serde_json::to_string(&HandOver {
            block_devices: devices.clone(),
            inventory: inventory.clone(),
        })
        .unwrap();
        std::fs::write(&file, text).unwrap();
        let read = || HandOver::read(&file).unwrap();
        assert_eq!(read().inventory_for(&devices), Some(inventory));
        // A disk came or went since: the console probes afresh.
        assert_eq!(read().inventory_for(&devices[..1]), None);
        assert_eq!(
            read().inventory_for(&[devices[0].clone(), "sda".into()]),
            None
        );
        std::fs::write(&file, "{not json").unwrap();
        assert!(HandOver::read(&file).is_none());
        assert!(HandOver::read(&dir.join("missing")).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
