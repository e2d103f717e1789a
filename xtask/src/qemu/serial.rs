//! The guest's serial console as a technician would see it: a thread reads the
//! console socket into an 80x24 `vt100` screen and a raw byte log, answers the
//! cursor-position queries a real terminal answers, and watches for patterns
//! and kernel panics; keys go back as the bytes a terminal would send.
//! It does not start or stop QEMU (`machine.rs` does).

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The screen size: a serial line has no window size, so this is what a
/// terminal on the other end would most likely have.
pub const ROWS: u16 = 24;
pub const COLS: u16 = 80;

/// How many rows that scrolled off the top are kept for matching and for
/// panic detection.
const HISTORY_ROWS: usize = 5000;

/// What the kernel prints first when it panics ("Kernel panic - not
/// syncing: ...").
const PANIC_TEXT: &str = "Kernel panic";

/// Text to wait for: a plain substring or a regular expression, matched
/// against the screen's rows joined by newlines.
#[derive(Clone, Debug)]
pub enum Pattern {
    Text(String),
    Regex(regex::Regex),
}

impl Pattern {
    fn is_in(&self, haystack: &str) -> bool {
        match self {
            Pattern::Text(t) => haystack.contains(t.as_str()),
            Pattern::Regex(r) => r.is_match(haystack),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Text(t) => write!(f, "{t:?}"),
            Pattern::Regex(r) => write!(f, "/{}/", r.as_str()),
        }
    }
}

impl From<&str> for Pattern {
    fn from(t: &str) -> Self {
        Pattern::Text(t.to_string())
    }
}

impl From<String> for Pattern {
    fn from(t: String) -> Self {
        Pattern::Text(t)
    }
}

impl From<regex::Regex> for Pattern {
    fn from(r: regex::Regex) -> Self {
        Pattern::Regex(r)
    }
}

impl From<&regex::Regex> for Pattern {
    fn from(r: &regex::Regex) -> Self {
        Pattern::Regex(r.clone())
    }
}

/// A key a technician presses.
#[allow(
    dead_code,
    reason = "the whole keyboard is the API: console tests press what a technician would"
)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Enter,
    Tab,
    Backspace,
    Esc,
    Up,
    Down,
    Left,
    Right,
    Home,
    End,
    PageUp,
    PageDown,
    Insert,
    Delete,
    /// F1 to F12.
    F(u8),
    /// Control and a letter (or one of `@[\]^_`).
    Ctrl(char),
}

impl Key {
    /// The bytes an xterm sends for this key. `application_cursor` is the
    /// DECCKM mode the guest set (`ESC [ ? 1 h`), which turns `ESC [ A` into
    /// `ESC O A` for the cursor keys, Home and End.
    pub fn bytes(self, application_cursor: bool) -> Result<Vec<u8>> {
        let cursor = |c: char| -> Vec<u8> {
            if application_cursor {
                format!("\x1bO{c}").into_bytes()
            } else {
                format!("\x1b[{c}").into_bytes()
            }
        };
        let tilde = |n: u8| format!("\x1b[{n}~").into_bytes();
        Ok(match self {
            // A terminal sends CR for Enter; the tty's ICRNL turns it into NL.
            Key::Enter => b"\r".to_vec(),
            Key::Tab => b"\t".to_vec(),
            Key::Backspace => b"\x7f".to_vec(),
            Key::Esc => b"\x1b".to_vec(),
            Key::Up => cursor('A'),
            Key::Down => cursor('B'),
            Key::Right => cursor('C'),
            Key::Left => cursor('D'),
            Key::Home => cursor('H'),
            Key::End => cursor('F'),
            Key::Insert => tilde(2),
            Key::Delete => tilde(3),
            Key::PageUp => tilde(5),
            Key::PageDown => tilde(6),
            Key::F(n @ 1..=4) => format!("\x1bO{}", char::from(b'P' + (n - 1))).into_bytes(),
            Key::F(n @ 5..=12) => {
                // xterm skips 16 and 22.
                const CODES: [u8; 8] = [15, 17, 18, 19, 20, 21, 23, 24];
                tilde(CODES[usize::from(n - 5)])
            }
            Key::F(n) => bail!("there is no key F{n}"),
            Key::Ctrl(c) => {
                let c = c.to_ascii_lowercase();
                match c {
                    'a'..='z' | '@' | '[' | '\\' | ']' | '^' | '_' => {
                        vec![u8::try_from(c).context("ascii key")? & 0x1f]
                    }
                    _ => bail!("there is no key Ctrl-{c}"),
                }
            }
        })
    }
}

/// The parser's callbacks: keeps the rows that scroll off the top (so a
/// line that flashed past is still found) and queues the answers a terminal
/// gives to status queries.
struct Watcher {
    history: VecDeque<String>,
    /// Rows ever scrolled off; `history` holds the last of them.
    scrolled: u64,
    replies: Vec<u8>,
}

impl vt100::Callbacks for Watcher {
    fn on_scroll(&mut self, contents: vt100::capture::RowContents<'_>, _alternate: bool) {
        let mut formatted = String::new();
        let mut state = vt100::capture::BasicFormattedCaptureState::new();
        // Writing into a String cannot fail.
        let _ = contents.write_formatted_basic(&mut formatted, &mut state);
        let plain: String = vt100::capture::basic_formatted_to_plain(&formatted).collect();
        if self.history.len() == HISTORY_ROWS {
            self.history.pop_front();
        }
        self.history.push_back(plain.trim_end().to_string());
        self.scrolled += 1;
    }

    fn unhandled_csi(
        &mut self,
        screen: &mut vt100::Screen,
        i1: Option<u8>,
        _i2: Option<u8>,
        params: &[&[u16]],
        c: char,
    ) {
        let first = params.first().and_then(|p| p.first()).copied();
        match (i1, c, first) {
            // DSR 6: cursor position report, how full-screen programs on a
            // serial line learn the terminal's size.
            (None, 'n', Some(6)) => {
                let (row, col) = screen.cursor_position();
                let reply = format!("\x1b[{};{}R", u32::from(row) + 1, u32::from(col) + 1);
                self.replies.extend_from_slice(reply.as_bytes());
            }
            // DSR 5: "are you there" -> "ok".
            (None, 'n', Some(5)) => self.replies.extend_from_slice(b"\x1b[0n"),
            // XTWINOPS 18: text area size in characters.
            (None, 't', Some(18)) => {
                let (rows, cols) = screen.size();
                let reply = format!("\x1b[8;{rows};{cols}t");
                self.replies.extend_from_slice(reply.as_bytes());
            }
            _ => {}
        }
    }
}

struct Wait {
    pattern: Pattern,
    /// Scrolled-off rows from this number on count for the wait.
    from_row: u64,
    matched: bool,
}

struct State {
    parser: vt100::Parser<Watcher>,
    /// The socket reached end of file (QEMU exited) or failed.
    closed: bool,
    wait: Option<Wait>,
    /// The first line that reported a kernel panic.
    panic: Option<String>,
    /// Scrolled-off rows below this number have been searched for a panic.
    panic_checked: u64,
}

impl State {
    /// Scrolled-off rows from number `from` on, then the screen.
    fn text_since(&self, from: u64) -> String {
        let w = self.parser.callbacks();
        let first_kept = w.scrolled - w.history.len() as u64;
        let skip = usize::try_from(from.saturating_sub(first_kept)).unwrap_or(usize::MAX);
        let mut text = String::new();
        for row in w.history.iter().skip(skip) {
            text.push_str(row);
            text.push('\n');
        }
        text.push_str(&self.parser.screen().contents());
        text
    }

    /// Re-evaluates the pending wait and the panic watch after new output.
    fn check(&mut self) {
        if let Some(wait) = &self.wait
            && !wait.matched
        {
            let matched = wait.pattern.is_in(&self.text_since(wait.from_row));
            if let Some(wait) = &mut self.wait {
                wait.matched = matched;
            }
        }
        if self.panic.is_none() {
            let text = self.text_since(self.panic_checked);
            self.panic = text
                .lines()
                .find(|l| l.contains(PANIC_TEXT))
                .map(|l| l.trim().to_string());
            self.panic_checked = self.parser.callbacks().scrolled;
        }
    }
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in the reader thread must not hide the screen from the
        // failure report: take the state as it was.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The serial console of a running machine.
pub struct Console {
    shared: Arc<Shared>,
    stream: UnixStream,
    log_path: PathBuf,
    reader: Option<JoinHandle<()>>,
}

impl Console {
    /// Starts reading `stream` (QEMU's serial chardev socket), appending every
    /// byte to the file `log_path`.
    pub fn attach(stream: UnixStream, log_path: &Path) -> Result<Console> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("opening console log {}", log_path.display()))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                parser: vt100::Parser::new_with_callbacks(
                    ROWS.try_into().context("screen rows")?,
                    COLS.try_into().context("screen columns")?,
                    0,
                    Watcher {
                        history: VecDeque::new(),
                        scrolled: 0,
                        replies: Vec::new(),
                    },
                ),
                closed: false,
                wait: None,
                panic: None,
                panic_checked: 0,
            }),
            changed: Condvar::new(),
        });
        let read_half = stream.try_clone().context("cloning the console socket")?;
        let reader = std::thread::Builder::new()
            .name("vm-console".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || read_loop(read_half, log, &shared)
            })
            .context("starting the console reader thread")?;
        Ok(Console {
            shared,
            stream,
            log_path: log_path.to_path_buf(),
            reader: Some(reader),
        })
    }

    /// Waits until `pattern` is on the screen, or was on a row that scrolled
    /// off since this call. Fails early when the kernel panics or the console
    /// closes; on failure the error carries the screen and the log's path.
    pub fn wait_for_text(&self, pattern: impl Into<Pattern>, timeout: Duration) -> Result<()> {
        let pattern = pattern.into();
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        let from_row = state.parser.callbacks().scrolled;
        state.wait = Some(Wait {
            pattern: pattern.clone(),
            from_row,
            matched: false,
        });
        state.check();
        let outcome = loop {
            if state.wait.as_ref().is_some_and(|w| w.matched) {
                break Ok(());
            }
            if let Some(line) = &state.panic {
                break Err(format!("the kernel panicked: {line}"));
            }
            if state.closed {
                break Err("the console closed (QEMU exited)".to_string());
            }
            let now = Instant::now();
            if now >= deadline {
                break Err(format!("timed out after {timeout:.1?}"));
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        state.wait = None;
        let screen = state.parser.screen().contents();
        drop(state);
        outcome.map_err(|why| {
            anyhow::anyhow!(
                "waiting for {pattern} on the serial console: {why}\nthe screen:\n{}\nconsole log: {}",
                frame(&screen),
                self.log_path.display()
            )
        })
    }

    /// The screen's text, rows joined by newlines, trailing blanks trimmed.
    pub fn screen_text(&self) -> String {
        self.shared.lock().parser.screen().contents()
    }

    /// Blanks our copy of the screen (the cursor stays where the guest left
    /// it), so that a following wait only matches what the guest prints from
    /// now on: after a reset, the old boot's lines would otherwise match.
    pub fn clear_screen(&self) {
        self.shared.lock().parser.process(b"\x1b[2J");
    }

    /// Types `text` as it is (use `\r` or [`Key::Enter`] for Enter).
    pub fn send_keys(&self, text: &str) -> Result<()> {
        self.write(text.as_bytes())
    }

    /// Presses one key, honouring the cursor-key mode the guest set.
    pub fn send_key(&self, key: Key) -> Result<()> {
        let application_cursor = self.shared.lock().parser.screen().application_cursor();
        self.write(&key.bytes(application_cursor)?)
    }

    fn write(&self, bytes: &[u8]) -> Result<()> {
        (&self.stream)
            .write_all(bytes)
            .with_context(|| format!("typing {} bytes on the serial console", bytes.len()))
    }

    /// The line where the kernel reported a panic, if it did.
    pub fn kernel_panic(&self) -> Option<String> {
        self.shared.lock().panic.clone()
    }

    /// Where the raw bytes from the guest are kept.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The raw log so far, as text (escape sequences left in).
    pub fn log_text(&self) -> Result<String> {
        let bytes = std::fs::read(&self.log_path)
            .with_context(|| format!("reading console log {}", self.log_path.display()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The screen framed for an error message or a report.
    pub fn framed_screen(&self) -> String {
        frame(&self.screen_text())
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        // Unblocks the reader's read(); it then sees end of file and returns.
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

fn read_loop(mut stream: UnixStream, mut log: File, shared: &Shared) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // The log is for people reading a failure later; a full disk must not
        // stop the test from seeing the screen.
        let _ = log.write_all(&buf[..n]);
        let replies = {
            let mut state = shared.lock();
            state.parser.process(&buf[..n]);
            state.check();
            std::mem::take(&mut state.parser.callbacks_mut().replies)
        };
        shared.changed.notify_all();
        if !replies.is_empty() {
            let _ = stream.write_all(&replies);
        }
    }
    shared.lock().closed = true;
    shared.changed.notify_all();
}

/// Rows of `screen` indented behind a bar, padded to a full screen so that
/// blank rows show.
fn frame(screen: &str) -> String {
    let mut rows: Vec<&str> = screen.split('\n').collect();
    rows.resize(usize::from(ROWS).max(rows.len()), "");
    let rule = format!("  +{}+", "-".repeat(usize::from(COLS)));
    let mut out = rule.clone();
    for row in rows {
        out.push_str(&format!("\n  |{row:<width$}|", width = usize::from(COLS)));
    }
    out.push('\n');
    out.push_str(&rule);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser() -> vt100::Parser<Watcher> {
        vt100::Parser::new_with_callbacks(
            ROWS.try_into().unwrap(),
            COLS.try_into().unwrap(),
            0,
            Watcher {
                history: VecDeque::new(),
                scrolled: 0,
                replies: Vec::new(),
            },
        )
    }

    #[test]
    fn keys_are_what_xterm_sends() {
        assert_eq!(Key::Enter.bytes(false).unwrap(), b"\r");
        assert_eq!(Key::Up.bytes(false).unwrap(), b"\x1b[A");
        assert_eq!(Key::Up.bytes(true).unwrap(), b"\x1bOA");
        assert_eq!(Key::Delete.bytes(true).unwrap(), b"\x1b[3~");
        assert_eq!(Key::F(1).bytes(false).unwrap(), b"\x1bOP");
        assert_eq!(Key::F(5).bytes(false).unwrap(), b"\x1b[15~");
        assert_eq!(Key::F(12).bytes(false).unwrap(), b"\x1b[24~");
        assert_eq!(Key::Ctrl('C').bytes(false).unwrap(), [3]);
        assert!(Key::F(13).bytes(false).is_err());
        assert!(Key::Ctrl('1').bytes(false).is_err());
    }

    #[test]
    fn rows_that_scroll_off_are_still_matched() {
        let mut state = State {
            parser: parser(),
            closed: false,
            wait: Some(Wait {
                pattern: "MARKER".into(),
                from_row: 0,
                matched: false,
            }),
            panic: None,
            panic_checked: 0,
        };
        let mut out = String::from("MARKER\r\n");
        for i in 0..40 {
            out.push_str(&format!("line {i}\r\n"));
        }
        state.parser.process(out.as_bytes());
        assert!(!state.parser.screen().contents().contains("MARKER"));
        state.check();
        assert!(state.wait.as_ref().unwrap().matched);
    }

    #[test]
    fn a_wait_does_not_match_rows_gone_before_it_began() {
        let mut state = State {
            parser: parser(),
            closed: false,
            wait: None,
            panic: None,
            panic_checked: 0,
        };
        let mut out = String::from("MARKER\r\n");
        for i in 0..40 {
            out.push_str(&format!("line {i}\r\n"));
        }
        state.parser.process(out.as_bytes());
        state.wait = Some(Wait {
            pattern: Pattern::Regex(regex::Regex::new("MARK(ER)?$").unwrap()),
            from_row: state.parser.callbacks().scrolled,
            matched: false,
        });
        state.check();
        assert!(!state.wait.as_ref().unwrap().matched);
    }

    #[test]
    fn panics_are_found_and_cursor_queries_answered() {
        let mut state = State {
            parser: parser(),
            closed: false,
            wait: None,
            panic: None,
            panic_checked: 0,
        };
        state
            .parser
            .process(b"[    1.0] Kernel panic - not syncing: Attempted to kill init!\r\nab\x1b[6n");
        state.check();
        assert_eq!(
            state.panic.as_deref(),
            Some("[    1.0] Kernel panic - not syncing: Attempted to kill init!")
        );
        assert_eq!(state.parser.callbacks().replies, b"\x1b[2;3R");
    }

    #[test]
    fn the_frame_shows_a_full_screen() {
        let framed = frame("hello");
        assert_eq!(framed.lines().count(), usize::from(ROWS) + 2);
        assert!(framed.contains("  |hello "));
    }
}
