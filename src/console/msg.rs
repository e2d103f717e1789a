//! Everything that can happen to the console, as one closed enum: keys, clock ticks,
//! the events of the restore or copy-back child (parsed from its JSON lines), and the
//! results of effects the executor carried out.
//!
//! Does not own: reading keys or lines (`run`), acting on messages (`update`).

use std::time::Duration;

use crate::restore::events::{CopiedBack, Event};

use crate::recovery::situation::Situation;

/// A key, as the screens use them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Esc,
    Backspace,
    Up,
    Down,
    /// Any other key: enough to cancel a countdown, nothing else.
    Other,
}

/// One event of `understudy restore --progress=json` or `understudy copy-back --disk
/// ... --progress=json` (`docs/console.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineEvent {
    Phase {
        step: String,
        point_of_no_return: bool,
    },
    Progress {
        step: String,
        done: u64,
        total: u64,
    },
    Note(String),
    /// What the copy-back step did.
    CopiedBack(CopiedBack),
    Done,
    Failed {
        step: String,
        error: String,
    },
    /// The process ended; its exit code (`None`: killed by a signal) and the end of
    /// its standard error.
    Exited {
        code: Option<i32>,
        stderr: String,
    },
    /// A line that is not one of the events (kept for the log).
    Unparsed(String),
}

impl EngineEvent {
    /// The event on one line of the stream.
    pub fn parse(line: &str) -> EngineEvent {
        match serde_json::from_str::<Event>(line) {
            Ok(Event::Phase {
                step,
                point_of_no_return,
            }) => EngineEvent::Phase {
                step: step.name().into(),
                point_of_no_return,
            },
            Ok(Event::Progress { step, done, total }) => EngineEvent::Progress {
                step: step.name().into(),
                done,
                total,
            },
            Ok(Event::Note { text }) => EngineEvent::Note(text),
            Ok(Event::CopiedBack(c)) => EngineEvent::CopiedBack(c),
            Ok(Event::Done) => EngineEvent::Done,
            Ok(Event::Failed { step, error }) => EngineEvent::Failed {
                step: step.name().into(),
                error,
            },
            Err(_) => EngineEvent::Unparsed(line.to_string()),
        }
    }
}

/// A message to [`update`](super::update::update).
#[derive(Clone, Debug)]
pub enum Msg {
    Key(Key),
    /// The clock: time since the console started.
    Tick(Duration),
    Engine(EngineEvent),
    /// The situation looked at again.
    Situation(Box<Situation>),
    /// An image's archives checked against its manifest.
    Verified {
        id: String,
        result: Result<(), String>,
    },
    /// Loading or starting the emergency kernel failed.
    KexecFailed(String),
    /// The shell ended (how).
    ShellExited(String),
    /// An effect could not be carried out (why).
    EffectFailed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_of_the_stream_parses_and_junk_is_kept() {
        let cases = [
            (
                r#"{"event":"phase","step":"clear","point_of_no_return":true}"#,
                EngineEvent::Phase {
                    step: "clear".into(),
                    point_of_no_return: true,
                },
            ),
            (
                r#"{"event":"progress","step":"extract","done":10,"total":100}"#,
                EngineEvent::Progress {
                    step: "extract".into(),
                    done: 10,
                    total: 100,
                },
            ),
            (
                r#"{"event":"note","text":"fstab remapped"}"#,
                EngineEvent::Note("fstab remapped".into()),
            ),
            (
                r#"{"event":"copied-back","new":3,"changed":2,"type_changed":0,"deleted":1,"bytes":4096,"notes":0}"#,
                EngineEvent::CopiedBack(CopiedBack {
                    new: 3,
                    changed: 2,
                    type_changed: 0,
                    deleted: 1,
                    bytes: 4096,
                    notes: 0,
                }),
            ),
            (r#"{"event":"done"}"#, EngineEvent::Done),
            (
                r#"{"event":"failed","step":"verify","error":"root.tar.lzo: SHA-256 mismatch"}"#,
                EngineEvent::Failed {
                    step: "verify".into(),
                    error: "root.tar.lzo: SHA-256 mismatch".into(),
                },
            ),
            (
                "restore: starting",
                EngineEvent::Unparsed("restore: starting".into()),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(EngineEvent::parse(line), want, "{line}");
        }
    }
}
