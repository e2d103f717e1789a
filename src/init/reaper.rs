//! Reaping: PID 1 inherits every orphan, and each must be waited for or it stays a
//! zombie. [`reap`] collects every child that has exited, without blocking.
//!
//! Does not own: waiting for a child PID 1 runs in the foreground (the shell): `Cmd`
//! waits for its own child by pid, and [`reap`] is only called between such runs, so
//! it never takes a status that `Cmd` is waiting for.

use std::fmt;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Killed(Signal),
}

impl Ended {
    pub fn success(self) -> bool {
        self == Ended::Exited(0)
    }
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Exited(code) => write!(f, "exited {code}"),
            Ended::Killed(sig) => write!(f, "killed by {sig}"),
        }
    }
}

/// Every exited child's pid and how it ended; returns at once when none has.
pub fn reap() -> Vec<(i32, Ended)> {
    reap_with(|| waitpid(None, Some(WaitPidFlag::WNOHANG)))
}

/// The loop of [`reap`] over any non-blocking wait (tests wait for their own child
/// only, so as not to take the children of tests running alongside).
fn reap_with(mut wait: impl FnMut() -> nix::Result<WaitStatus>) -> Vec<(i32, Ended)> {
    let mut out = Vec::new();
    loop {
        match wait() {
            Ok(WaitStatus::Exited(pid, code)) => out.push((pid.as_raw(), Ended::Exited(code))),
            Ok(WaitStatus::Signaled(pid, sig, _)) => out.push((pid.as_raw(), Ended::Killed(sig))),
            // Stopped or continued children are still alive; nothing (more) to reap.
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(
        clippy::zombie_processes,
        reason = "the child is waited for by pid through reap_with: that is the test"
    )]
    fn an_exited_child_is_reaped_once() {
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        let ours = || waitpid(pid, Some(WaitPidFlag::WNOHANG));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut seen = Vec::new();
        while seen.is_empty() && std::time::Instant::now() < deadline {
            seen = reap_with(ours);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(seen, [(pid.as_raw(), Ended::Exited(7))]);
        assert_eq!(seen[0].1.to_string(), "exited 7");
        // Gone now: ECHILD ends the loop with nothing.
        assert!(reap_with(ours).is_empty());
    }
}
