//! A QMP client on QEMU's control socket: the capabilities handshake,
//! commands with bounded waits for their replies, and the asynchronous events
//! (SHUTDOWN, DEVICE_DELETED, ...) kept until someone asks for them.
//! It does not know which commands a scenario needs (`machine.rs` does).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// What one bounded read of the socket brought.
#[derive(Debug)]
pub enum Received {
    Message(Value),
    TimedOut,
    /// QEMU closed the socket: it exited.
    Closed,
}

pub struct Qmp {
    stream: UnixStream,
    /// Bytes of a message not yet ended by its newline.
    partial: Vec<u8>,
    events: VecDeque<Value>,
    closed: bool,
    /// Every message both ways, for reading a failure later.
    log: Option<File>,
}

impl Qmp {
    /// Reads QEMU's greeting and leaves capabilities negotiation mode;
    /// messages both ways are appended to `log`.
    pub fn handshake(stream: UnixStream, log: &Path, timeout: Duration) -> Result<Qmp> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening QMP log {}", log.display()))?;
        let mut qmp = Qmp {
            stream,
            partial: Vec::new(),
            events: VecDeque::new(),
            closed: false,
            log: Some(log),
        };
        let deadline = Instant::now() + timeout;
        match qmp.receive(deadline)? {
            Received::Message(greeting) if greeting.get("QMP").is_some() => {}
            other => bail!("expected the QMP greeting, got {other:?}"),
        }
        qmp.execute("qmp_capabilities", Value::Null, timeout)?;
        Ok(qmp)
    }

    /// Runs `command` (with `arguments` unless null) and returns its
    /// `return` value; a QMP error reply becomes an error naming the command.
    pub fn execute(&mut self, command: &str, arguments: Value, timeout: Duration) -> Result<Value> {
        match self.try_execute(command, arguments, timeout)? {
            Some(v) => Ok(v),
            None => bail!("QMP `{command}`: QEMU closed the socket before replying"),
        }
    }

    /// Like [`Qmp::execute`], but a socket that closes before the reply is
    /// `None` (for `quit`, whose reply may be lost as QEMU exits).
    pub fn try_execute(
        &mut self,
        command: &str,
        arguments: Value,
        timeout: Duration,
    ) -> Result<Option<Value>> {
        let mut request = json!({ "execute": command });
        if !arguments.is_null() {
            request["arguments"] = arguments;
        }
        let mut line = serde_json::to_vec(&request).context("encoding a QMP command")?;
        line.push(b'\n');
        self.note("->", &line);
        if self.closed {
            return Ok(None);
        }
        if let Err(e) = self.stream.write_all(&line) {
            if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) {
                self.closed = true;
                return Ok(None);
            }
            return Err(e).with_context(|| format!("sending QMP `{command}`"));
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.receive(deadline)? {
                Received::Message(m) => {
                    if let Some(v) = m.get("return") {
                        return Ok(Some(v.clone()));
                    }
                    if let Some(e) = m.get("error") {
                        bail!(
                            "QMP `{command}` failed: {} ({})",
                            e.get("desc")
                                .and_then(Value::as_str)
                                .unwrap_or("no description"),
                            e.get("class").and_then(Value::as_str).unwrap_or("no class"),
                        );
                    }
                    if m.get("event").is_some() {
                        self.events.push_back(m);
                    }
                }
                Received::TimedOut => bail!("QMP `{command}`: no reply within {timeout:.1?}"),
                Received::Closed => return Ok(None),
            }
        }
    }

    /// Waits for an event named `name` whose message satisfies `wanted`
    /// (earlier ones kept from command replies count too); `None` when none
    /// came within `timeout` or the socket closed first.
    pub fn wait_event(
        &mut self,
        name: &str,
        wanted: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Option<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.take_event(name, &wanted) {
                return Ok(Some(e));
            }
            match self.receive(deadline)? {
                Received::Message(m) if m.get("event").is_some() => self.events.push_back(m),
                Received::Message(_) => {}
                Received::TimedOut | Received::Closed => return Ok(None),
            }
        }
    }

    /// Reads whatever events arrive within `wait`, keeping them.
    pub fn pump(&mut self, wait: Duration) -> Result<()> {
        let deadline = Instant::now() + wait;
        loop {
            match self.receive(deadline)? {
                Received::Message(m) if m.get("event").is_some() => self.events.push_back(m),
                Received::Message(_) => {}
                Received::TimedOut | Received::Closed => return Ok(()),
            }
        }
    }

    /// Removes and returns the first kept event named `name` that satisfies
    /// `wanted`.
    pub fn take_event(&mut self, name: &str, wanted: impl Fn(&Value) -> bool) -> Option<Value> {
        let i = self
            .events
            .iter()
            .position(|e| e.get("event").and_then(Value::as_str) == Some(name) && wanted(e))?;
        self.events.remove(i)
    }

    /// Whether QEMU closed the socket.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    fn note(&mut self, direction: &str, line: &[u8]) {
        if let Some(log) = &mut self.log {
            // The log only helps a person reading a failure: losing it must
            // not fail the machine.
            let _ = write!(log, "{direction} {}", String::from_utf8_lossy(line));
        }
    }

    /// The next message, waiting at most until `deadline`.
    fn receive(&mut self, deadline: Instant) -> Result<Received> {
        loop {
            if let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.partial.drain(..=end).collect();
                self.note("<-", &line);
                let text = String::from_utf8_lossy(&line);
                if text.trim().is_empty() {
                    continue;
                }
                let value = serde_json::from_str(text.trim())
                    .with_context(|| format!("parsing QMP message {:?}", text.trim()))?;
                return Ok(Received::Message(value));
            }
            if self.closed {
                return Ok(Received::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Received::TimedOut);
            }
            self.stream
                .set_read_timeout(Some(deadline - now))
                .context("setting the QMP socket's read timeout")?;
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) => self.closed = true,
                Ok(n) => self.partial.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(Received::TimedOut);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => self.closed = true,
                Err(e) => return Err(e).context("reading the QMP socket"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake QEMU on the other end of a socket pair.
    fn pair() -> (Qmp, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let qmp = Qmp {
            stream: ours,
            partial: Vec::new(),
            events: VecDeque::new(),
            closed: false,
            log: None,
        };
        (qmp, theirs)
    }

    #[test]
    fn events_before_a_reply_are_kept_for_later() {
        let (mut qmp, mut qemu) = pair();
        qemu.write_all(
            b"{\"event\": \"DEVICE_DELETED\", \"data\": {\"device\": \"d1\"}}\n{\"return\": {\"status\": \"running\"}}\n",
        )
        .unwrap();
        let r = qmp
            .execute("query-status", Value::Null, Duration::from_secs(5))
            .unwrap();
        assert_eq!(r["status"], "running");
        let e = qmp
            .wait_event(
                "DEVICE_DELETED",
                |e| e["data"]["device"] == "d1",
                Duration::ZERO,
            )
            .unwrap();
        assert!(e.is_some());
        let mut sent = [0u8; 64];
        let n = qemu.read(&mut sent).unwrap();
        assert_eq!(&sent[..n], b"{\"execute\":\"query-status\"}\n");
    }

    #[test]
    fn error_replies_name_the_command_and_silence_times_out() {
        let (mut qmp, mut qemu) = pair();
        qemu.write_all(
            b"{\"error\": {\"class\": \"DeviceNotFound\", \"desc\": \"Device 'x' not found\"}}\n",
        )
        .unwrap();
        let e = qmp
            .execute("device_del", json!({"id": "x"}), Duration::from_secs(5))
            .unwrap_err();
        assert!(format!("{e}").contains("QMP `device_del` failed: Device 'x' not found"));
        let started = Instant::now();
        assert!(
            qmp.execute("query-status", Value::Null, Duration::from_millis(100))
                .is_err()
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_closed_socket_is_a_value_not_a_hang() {
        let (mut qmp, qemu) = pair();
        drop(qemu);
        assert!(
            qmp.try_execute("quit", Value::Null, Duration::from_secs(5))
                .unwrap()
                .is_none()
        );
        assert!(qmp.is_closed());
        assert!(
            qmp.wait_event("SHUTDOWN", |_| true, Duration::from_secs(5))
                .unwrap()
                .is_none()
        );
    }
}
