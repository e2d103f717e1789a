//! The one way xtask spawns processes: every failure names the full argv and
//! carries the child's stderr, so a broken step says exactly what broke.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// How many trailing stderr lines an error from [`Cmd::run`] carries.
const STDERR_TAIL: usize = 20;

/// A command line to run, built up like `std::process::Command` but keeping
/// its argv around for error messages.
#[derive(Clone)]
pub struct Cmd {
    argv: Vec<OsString>,
    dir: Option<OsString>,
    envs: Vec<(OsString, OsString)>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            argv: vec![program.as_ref().to_owned()],
            dir: None,
            envs: Vec::new(),
        }
    }

    /// `bash -c SCRIPT`, for pipelines.
    pub fn bash(script: &str) -> Self {
        Cmd::new("bash").args(["-o", "pipefail", "-c", script])
    }

    /// The program and its arguments.
    pub fn argv(&self) -> &[OsString] {
        &self.argv
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.argv.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.argv
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn dir(mut self, d: impl AsRef<Path>) -> Self {
        self.dir = Some(d.as_ref().as_os_str().to_owned());
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    /// "`ARGV` failed (STATUS): STDERR", leaving out an empty stderr.
    fn failure(&self, status: std::process::ExitStatus, stderr: &[u8]) -> String {
        let stderr = String::from_utf8_lossy(stderr);
        let stderr = stderr.trim_end();
        if stderr.is_empty() {
            format!("`{self}` failed ({status}) and wrote nothing on stderr")
        } else {
            format!("`{self}` failed ({status}): {stderr}")
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.argv[0]);
        c.args(&self.argv[1..]);
        if let Some(d) = &self.dir {
            c.current_dir(d);
        }
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        c
    }

    /// Runs with stdout passed through and stderr copied through to ours
    /// as it comes; fails on a non-zero exit with the argv and the last
    /// lines of stderr in the error.
    pub fn run(&self) -> Result<()> {
        let mut child = self
            .command()
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start `{self}`: {e}"))?;
        let mut tail: VecDeque<String> = VecDeque::new();
        if let Some(err) = child.stderr.take() {
            let mut ours = std::io::stderr();
            for line in BufReader::new(err).split(b'\n') {
                let Ok(line) = line else { break };
                let _ = ours.write_all(&line);
                let _ = ours.write_all(b"\n");
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(String::from_utf8_lossy(&line).into_owned());
            }
        }
        let status = child
            .wait()
            .map_err(|e| anyhow::anyhow!("waiting for `{self}`: {e}"))?;
        if !status.success() {
            let tail: Vec<String> = tail.into_iter().collect();
            bail!("{}", self.failure(status, tail.join("\n").as_bytes()));
        }
        Ok(())
    }

    /// Runs with all stdio inherited, so the child sees our terminal (for
    /// progress bars); its stderr has already been shown when this fails.
    pub fn run_interactive(&self) -> Result<()> {
        let status = self
            .command()
            .status()
            .map_err(|e| anyhow::anyhow!("cannot start `{self}`: {e}"))?;
        if !status.success() {
            bail!("`{self}` failed ({status}); its messages are above");
        }
        Ok(())
    }

    /// Runs with inherited stdio, returning whether it exited zero (for
    /// steps whose failure is reported rather than fatal).
    pub fn run_ok(&self) -> Result<bool> {
        let status = self
            .command()
            .status()
            .map_err(|e| anyhow::anyhow!("cannot start `{self}`: {e}"))?;
        Ok(status.success())
    }

    /// Runs with stdout and stderr appended to `log`; on failure the error
    /// carries the argv and the log's last lines.
    pub fn run_logged(&self, log: &Path) -> Result<()> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| anyhow::anyhow!("cannot open log {}: {e}", log.display()))?;
        let status = self
            .command()
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .status()
            .map_err(|e| anyhow::anyhow!("cannot start `{self}`: {e}"))?;
        if !status.success() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(25)..].join("\n");
            bail!(
                "`{self}` failed ({status}); last lines of {}:\n{tail}",
                log.display()
            );
        }
        Ok(())
    }

    /// Starts without waiting (for long-lived children such as QEMU), with
    /// stdin closed and stdout and stderr appended to `log`; the caller owns
    /// the child and must kill and reap it.
    pub fn spawn_logged(&self, log: &Path) -> Result<std::process::Child> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| anyhow::anyhow!("cannot open log {}: {e}", log.display()))?;
        self.command()
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start `{self}`: {e}"))
    }

    /// Runs capturing stdout (returned) and stderr (put into the error).
    pub fn output(&self) -> Result<String> {
        let out = self
            .command()
            .stdin(Stdio::null())
            .output()
            .map_err(|e| anyhow::anyhow!("cannot start `{self}`: {e}"))?;
        if !out.status.success() {
            bail!("{}", self.failure(out.status, &out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs capturing exit code, stdout and stderr, without judging the
    /// exit code (for tools like diff, whose 1 is an answer, not a failure).
    pub fn capture(&self) -> Result<(Option<i32>, String, String)> {
        let out = self
            .command()
            .stdin(Stdio::null())
            .output()
            .map_err(|e| anyhow::anyhow!("cannot start `{self}`: {e}"))?;
        Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Runs quietly (stdout discarded, stderr captured for the error) and
    /// returns the wall-clock time it took.
    pub fn timed(&self) -> Result<Duration> {
        let start = Instant::now();
        let out = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| anyhow::anyhow!("cannot start `{self}`: {e}"))?;
        let took = start.elapsed();
        if !out.status.success() {
            bail!("{}", self.failure(out.status, &out.stderr));
        }
        Ok(took)
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.argv.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            let s = a.to_string_lossy();
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                f.write_str(&s)?;
            } else {
                write!(f, "'{}'", s.replace('\'', r"'\''"))?;
            }
        }
        Ok(())
    }
}

/// Whether we run as root (debootstrap, mounts and drop_caches need it).
pub fn is_root() -> bool {
    // Read our effective uid from /proc rather than linking libc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Fails naming every one of `programs` that is not on PATH.
pub fn require(programs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = programs.iter().copied().filter(|p| !have(p)).collect();
    if !missing.is_empty() {
        bail!(
            "missing on PATH: {} (`./x` installs the Debian packages in xtask/debian-packages.txt)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Whether `program` is on PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            let f = d.join(program);
            f.is_file()
        })
    })
}
