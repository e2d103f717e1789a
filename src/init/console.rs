//! The consoles PID 1 talks on: `/dev/console` (the serial line `ttyS0` with
//! `console=ttyS0`) for the screen and keys, mirrored to the VGA console `/dev/tty1`
//! when that is a different device; the terminal's size, with 80x24 when the line
//! reports none (a serial line never does); key-at-a-time input for the menu and the
//! line discipline back for a shell.
//!
//! Does not own: what is shown (`status.rs`, `menu.rs`) or the system calls
//! themselves (`sys.rs`, nix).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{self, LocalFlags, SetArg, SpecialCharacterIndices, Termios};

use crate::sys;

/// A terminal size in character cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub cols: u16,
    pub rows: u16,
}

/// What a terminal on the other end of a serial line most likely is.
pub const FALLBACK: Size = Size { cols: 80, rows: 24 };

/// The size to draw for: what `TIOCGWINSZ` said, unless it said nothing useful (a
/// serial line reports 0x0; an error means no terminal at all).
pub fn effective_size(reported: Option<(u16, u16)>) -> Size {
    match reported {
        Some((cols, rows)) if cols >= 20 && rows >= 5 => Size { cols, rows },
        _ => FALLBACK,
    }
}

/// Clear the screen and home the cursor (VT100; the Linux console understands it).
pub const CLEAR: &str = "\x1b[H\x1b[2J";

/// PID 1's consoles.
#[derive(Debug)]
pub struct Consoles {
    /// `/dev/tty1` when it is not the same device as `/dev/console`.
    vga: Option<File>,
    /// The line discipline as the kernel set it up, for shells.
    cooked: Option<Termios>,
    pub size: Size,
}

impl Consoles {
    /// Makes sure standard input, output and error are the console (the kernel opens
    /// `/dev/console` for them, if the image has that node), and finds the VGA one.
    pub fn setup() -> Consoles {
        if nix::fcntl::fcntl(io::stdin(), nix::fcntl::FcntlArg::F_GETFD).is_err() {
            reopen_stdio();
        }
        let vga = match (
            std::fs::metadata("/dev/console"),
            std::fs::metadata("/dev/tty1"),
        ) {
            (Ok(c), Ok(t)) if c.rdev() != t.rdev() => {
                OpenOptions::new().write(true).open("/dev/tty1").ok()
            }
            _ => None,
        };
        let size = effective_size(sys::window_size(io::stdin()).ok());
        let cooked = termios::tcgetattr(io::stdin()).ok();
        Consoles { vga, cooked, size }
    }

    /// Writes `text` on every console. Output errors are not PID 1's to act on.
    pub fn show(&mut self, text: &str) {
        // A terminal wants CR LF; the tty's OPOST|ONLCR adds the CR, but the VGA
        // console opened here gets the same bytes, so send both ourselves.
        let text = text.replace("\r\n", "\n").replace('\n', "\r\n");
        let mut out = io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        if let Some(v) = self.vga.as_mut() {
            let _ = v.write_all(text.as_bytes());
        }
    }

    /// Keys one at a time, without echo, for the menu.
    pub fn keys_mode(&self) {
        if let Some(t) = &self.cooked {
            let mut raw = t.clone();
            raw.local_flags
                .remove(LocalFlags::ICANON | LocalFlags::ECHO);
            raw.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
            raw.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
            let _ = termios::tcsetattr(io::stdin(), SetArg::TCSANOW, &raw);
        }
    }

    /// The line discipline as it was, for a shell.
    pub fn lines_mode(&self) {
        if let Some(t) = &self.cooked {
            let _ = termios::tcsetattr(io::stdin(), SetArg::TCSANOW, t);
        }
    }

    /// One key from the console, or `None` if none came within `timeout` (or a
    /// signal arrived: the caller's loop then looks at it).
    pub fn read_key(&self, timeout: Duration) -> Option<u8> {
        read_key_from(io::stdin(), timeout)
    }
}

/// One byte from `stdin` within `timeout`; see [`Consoles::read_key`].
fn read_key_from(stdin: impl AsFd, timeout: Duration) -> Option<u8> {
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(n) if n > 0 => {
            let mut b = [0u8; 1];
            match nix::unistd::read(&stdin, &mut b) {
                Ok(1) => Some(b[0]),
                Err(nix::errno::Errno::EINTR) => None,
                // End of input, a hang-up or a dead console: poll reports it at
                // once every time, so without this wait the menu loop would spin
                // a core forever (it did, when a test ran `/init` with no console).
                _ => {
                    std::thread::sleep(timeout);
                    None
                }
            }
        }
        Ok(_) | Err(nix::errno::Errno::EINTR) => None,
        Err(_) => {
            std::thread::sleep(timeout);
            None
        }
    }
}

/// Standard streams on `/dev/console`, for when the kernel could not give them.
fn reopen_stdio() {
    if let Ok(c) = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        let _ = nix::unistd::dup2_stdin(&c);
        let _ = nix::unistd::dup2_stdout(&c);
        let _ = nix::unistd::dup2_stderr(&c);
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_closed_console_waits_instead_of_spinning() {
        let (r, w) = std::io::pipe().unwrap();
        drop(w); // end of input: poll says readable, read returns 0, every time
        let t = Duration::from_millis(100);
        let start = std::time::Instant::now();
        for _ in 0..3 {
            assert_eq!(read_key_from(&r, t), None);
        }
        // Three calls cannot take less than three timeouts: a sleep never ends early.
        assert!(
            start.elapsed() >= 3 * t,
            "returned at once: the menu loop would spin"
        );
    }

    #[test]
    fn a_key_is_read() {
        let (r, mut w) = std::io::pipe().unwrap();
        std::io::Write::write_all(&mut w, b"p").unwrap();
        assert_eq!(read_key_from(&r, Duration::from_millis(100)), Some(b'p'));
    }

    use super::*;

    #[test]
    fn a_serial_line_without_a_size_gets_80x24() {
        assert_eq!(effective_size(Some((0, 0))), FALLBACK);
        assert_eq!(effective_size(None), FALLBACK);
        assert_eq!(effective_size(Some((1, 1))), FALLBACK);
        assert_eq!(
            effective_size(Some((132, 43))),
            Size {
                cols: 132,
                rows: 43
            }
        );
    }
}
