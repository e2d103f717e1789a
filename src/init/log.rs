//! PID 1's log: every line goes to the kernel's log (`/dev/kmsg`, read with `dmesg`)
//! and to an in-memory ring of the last lines, which the menu can show. Never to the
//! console: the status screen and menu own it.
//!
//! Does not own: what is worth logging (callers), the kernel's own console output
//! (the console log level is set in `mod.rs`).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Mutex;

/// How many lines the ring keeps.
pub const RING_LINES: usize = 500;

/// The kernel truncates a `/dev/kmsg` record at about 1 KiB; longer lines are cut
/// before that so the tail is not lost silently.
const KMSG_MAX_BYTES: usize = 900;

/// syslog levels, as `/dev/kmsg` takes them in a `<N>` prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Crit = 2,
    Err = 3,
    Warning = 4,
    Info = 6,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Crit => "crit",
            Level::Err => "error",
            Level::Warning => "warning",
            Level::Info => "info",
        }
    }
}

struct Sink {
    kmsg: Option<File>,
    ring: VecDeque<String>,
}

static SINK: Mutex<Sink> = Mutex::new(Sink {
    kmsg: None,
    ring: VecDeque::new(),
});

/// Opens `/dev/kmsg` (once `/dev` is mounted); until then lines only reach the ring.
pub fn open_kmsg() {
    let file = OpenOptions::new().write(true).open("/dev/kmsg");
    let problem = file
        .as_ref()
        .err()
        .map(|e| format!("opening /dev/kmsg: {e}"));
    SINK.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .kmsg = file.ok();
    if let Some(p) = problem {
        write(Level::Warning, &p);
    }
}

/// The kmsg record for `msg`: level prefix, our name, the message cut to fit.
pub fn kmsg_record(level: Level, msg: &str) -> String {
    let mut cut = msg.len().min(KMSG_MAX_BYTES);
    while !msg.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("<{}>understudy: {}\n", level as u8, &msg[..cut])
}

/// Logs one message (one line per line of `msg`).
pub fn write(level: Level, msg: &str) {
    let mut sink = SINK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    append(&mut sink, level, msg);
}

/// Logs from the panic hook: never waits, since the panic may have struck while this
/// thread held the log; then the line is lost rather than PID 1 deadlocked.
pub fn write_from_panic(level: Level, msg: &str) {
    match SINK.try_lock() {
        Ok(mut sink) => append(&mut sink, level, msg),
        Err(std::sync::TryLockError::Poisoned(p)) => append(&mut p.into_inner(), level, msg),
        Err(std::sync::TryLockError::WouldBlock) => {}
    }
}

fn append(sink: &mut Sink, level: Level, msg: &str) {
    for line in msg.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(k) = sink.kmsg.as_mut() {
            // A full kernel log buffer or a closed kmsg is no reason to stop.
            let _ = k.write_all(kmsg_record(level, line).as_bytes());
        }
        if sink.ring.len() == RING_LINES {
            sink.ring.pop_front();
        }
        sink.ring.push_back(format!("{}: {line}", level.name()));
    }
}

pub fn info(msg: &str) {
    write(Level::Info, msg);
}

pub fn warn(msg: &str) {
    write(Level::Warning, msg);
}

pub fn error(msg: &str) {
    write(Level::Err, msg);
}

/// The last `n` lines of the ring, oldest first.
pub fn tail(n: usize) -> Vec<String> {
    let sink = SINK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    sink.ring
        .iter()
        .skip(sink.ring.len().saturating_sub(n))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_the_level_and_are_cut_on_a_character_boundary() {
        assert_eq!(
            kmsg_record(Level::Info, "loaded virtio_blk"),
            "<6>understudy: loaded virtio_blk\n"
        );
        let long = "é".repeat(KMSG_MAX_BYTES);
        let rec = kmsg_record(Level::Err, &long);
        assert!(rec.len() <= KMSG_MAX_BYTES + 20, "{}", rec.len());
        assert!(rec.starts_with("<3>understudy: é"));
    }

    #[test]
    fn the_ring_keeps_the_last_lines() {
        for i in 0..RING_LINES + 5 {
            info(&format!("ring-test line {i}"));
        }
        let last = tail(2);
        assert_eq!(
            last,
            [
                format!("info: ring-test line {}", RING_LINES + 3),
                format!("info: ring-test line {}", RING_LINES + 4)
            ]
        );
    }
}
