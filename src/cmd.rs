//! The one place that spawns processes. Every failure names the whole command line,
//! its exit status and what it wrote to stderr, so a log line is enough to act on.
//! In the recovery system, a tool may still be in the image's deferred part: every
//! start but our own binary's waits for it (`initramfs::deferred::ensure`).
//!
//! Does not own: deciding what to run (callers build a [`Cmd`] from a plan).

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context, Result};

/// A command failed; callers that branch on it can downcast to this.
#[derive(Debug, thiserror::Error)]
#[error("`{argv}` failed ({status}): {stderr}")]
pub struct Failed {
    pub argv: String,
    pub status: ExitStatus,
    pub stderr: String,
}

/// Where `program` is: the first executable file of that name in a directory of
/// `PATH` (or the usual ones when it is unset), then `/usr/sbin` and `/sbin`, which a
/// user's `PATH` may lack. In the recovery system the tools come with the image's
/// deferred part, so this waits for it first (a failure to unpack it PID 1 reports;
/// here the tool is then simply not found).
pub fn find_program(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let _ = crate::initramfs::deferred::ensure();
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A command to run, built up like `std::process::Command` but inspectable.
#[derive(Clone, Debug, Default)]
pub struct Cmd {
    argv: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    dir: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
}

/// Output of a successful run.
#[derive(Clone, Debug)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        Cmd {
            argv: vec![program.as_ref().to_owned()],
            ..Cmd::default()
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Cmd {
        self.argv.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.argv
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Cmd {
        self.env
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    pub fn dir(mut self, d: impl AsRef<Path>) -> Cmd {
        self.dir = Some(d.as_ref().to_owned());
        self
    }

    /// Bytes to feed on standard input.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(bytes.into());
        self
    }

    /// The command line, shell-quoted enough to copy and paste.
    pub fn display(&self) -> String {
        self.argv
            .iter()
            .map(|a| {
                let s = a.to_string_lossy();
                if !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
                {
                    s.into_owned()
                } else {
                    format!("'{}'", s.replace('\'', r"'\''"))
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Waits for the recovery image's deferred part (where the tools and their
    /// libraries are) unless the program is our own binary, which is always there:
    /// PID 1 starts the console before that part is unpacked.
    fn tools_ready(&self) -> Result<()> {
        let ours = std::env::current_exe().is_ok_and(|exe| Path::new(&self.argv[0]) == exe);
        if !ours {
            crate::initramfs::deferred::ensure()
                .with_context(|| format!("before starting `{}`", self.display()))?;
        }
        Ok(())
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.argv[0]);
        c.args(&self.argv[1..]);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(d) = &self.dir {
            c.current_dir(d);
        }
        c
    }

    /// Run to completion, capturing output; a non-zero exit is a [`Failed`] error.
    pub fn output(&self) -> Result<Output> {
        self.tools_ready()?;
        let mut c = self.command();
        c.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .with_context(|| format!("starting `{}`", self.display()))?;
        // Feed stdin from another thread so a chatty child cannot deadlock us.
        let feeder = match (self.stdin.clone(), child.stdin.take()) {
            (Some(bytes), Some(mut pipe)) => {
                Some(std::thread::spawn(move || pipe.write_all(&bytes)))
            }
            _ => None,
        };
        let out = child
            .wait_with_output()
            .with_context(|| format!("waiting for `{}`", self.display()))?;
        if let Some(f) = feeder {
            // A child that exits without reading all input is judged by its status.
            let _ = f.join();
        }
        if !out.status.success() {
            return Err(Failed {
                argv: self.display(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            }
            .into());
        }
        Ok(Output {
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    /// Run to completion; only success matters.
    pub fn run(&self) -> Result<()> {
        self.output().map(drop)
    }

    /// Start it with standard output and error piped to the caller, who reads them
    /// as they come (a long job's progress stream) and waits for the child.
    pub fn spawn_piped(&self) -> Result<std::process::Child> {
        self.tools_ready()?;
        self.command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `{}`", self.display()))
    }

    /// Start it with standard streams inherited and return at once: for a caller
    /// that waits in its own way (PID 1 reaps every child with `waitpid(-1)`).
    pub fn spawn_interactive(&self) -> Result<std::process::Child> {
        self.tools_ready()?;
        self.command()
            .spawn()
            .with_context(|| format!("starting `{}`", self.display()))
    }

    /// Run with standard streams inherited (interactive tools, a shell).
    pub fn interactive(&self) -> Result<ExitStatus> {
        self.tools_ready()?;
        self.command()
            .status()
            .with_context(|| format!("running `{}`", self.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_argv_status_and_stderr() {
        let err = Cmd::new("sh")
            .args(["-c", "echo oops >&2; exit 3"])
            .run()
            .unwrap_err();
        let f = err.downcast_ref::<Failed>().unwrap();
        assert_eq!(f.argv, "sh -c 'echo oops >&2; exit 3'");
        assert_eq!(f.status.code(), Some(3));
        assert_eq!(f.stderr, "oops");
    }

    #[test]
    fn stdin_env_and_dir_reach_the_child() {
        let out = Cmd::new("sh")
            .args(["-c", "cat; printf %s \"$X\"; pwd"])
            .env("X", "-y-")
            .dir("/")
            .stdin("in")
            .output()
            .unwrap();
        assert_eq!(out.text(), "in-y-/\n");
    }

    #[test]
    fn programs_are_found_on_path() {
        let sh = find_program("sh").expect("sh is on PATH");
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
        assert_eq!(find_program("understudy-no-such-tool"), None);
    }

    #[test]
    fn a_missing_program_is_a_clear_error() {
        let err = Cmd::new("/nonexistent/tool").run().unwrap_err();
        assert!(format!("{err:#}").contains("starting `/nonexistent/tool`"));
    }
}
