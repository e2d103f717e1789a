//! What a restore tells whoever watches it: the steps ([`Step`]), the machine-readable
//! stream of one JSON object per line on standard output ([`Event`], the interface the
//! recovery console reads, `docs/restore.md`), and the human form on standard error
//! (a line per step, a bar with bytes, throughput and time left on a terminal).
//!
//! Owns: event names and their JSON, throttling progress to about 4 per second.
//! Does not own: the work (`execute`), the bar's drawing (`progress`).

use std::io::Write;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::progress::Progress;

/// The steps of a restore, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Verify,
    Refuse,
    Clear,
    Partition,
    Lvm,
    Mkfs,
    Mount,
    Extract,
    Remap,
    Bootloader,
    CopyBack,
    Sync,
    Finish,
}

impl Step {
    pub const ALL: [Step; 13] = [
        Step::Verify,
        Step::Refuse,
        Step::Clear,
        Step::Partition,
        Step::Lvm,
        Step::Mkfs,
        Step::Mount,
        Step::Extract,
        Step::Remap,
        Step::Bootloader,
        Step::CopyBack,
        Step::Sync,
        Step::Finish,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Verify => "verify",
            Step::Refuse => "refuse",
            Step::Clear => "clear",
            Step::Partition => "partition",
            Step::Lvm => "lvm",
            Step::Mkfs => "mkfs",
            Step::Mount => "mount",
            Step::Extract => "extract",
            Step::Remap => "remap",
            Step::Bootloader => "bootloader",
            Step::CopyBack => "copy-back",
            Step::Sync => "sync",
            Step::Finish => "finish",
        }
    }

    /// From `clear` on, the target has been written to.
    pub fn point_of_no_return(self) -> bool {
        self >= Step::Clear
    }
}

/// One line of the JSON stream (the console reads it back with `Deserialize`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    Phase {
        step: Step,
        point_of_no_return: bool,
    },
    Progress {
        step: Step,
        done: u64,
        total: u64,
    },
    Note {
        text: String,
    },
    Done,
    Failed {
        step: Step,
        error: String,
    },
}

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
}

/// Emits events in one [`Format`].
#[derive(Debug)]
pub struct Reporter {
    format: Format,
    step: Step,
    done: u64,
    total: u64,
    last: Option<Instant>,
    bar: Option<Progress>,
}

/// No more progress lines than this (the console redraws at about 4 Hz).
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

impl Reporter {
    pub fn new(format: Format) -> Reporter {
        Reporter {
            format,
            step: Step::Verify,
            done: 0,
            total: 0,
            last: None,
            bar: None,
        }
    }

    pub fn step(&self) -> Step {
        self.step
    }

    fn emit(&self, e: &Event) {
        if self.format == Format::Json {
            let mut out = std::io::stdout().lock();
            // The reader may be gone (the console crashed): the restore goes on.
            let _ = serde_json::to_writer(&mut out, e);
            let _ = writeln!(out);
            let _ = out.flush();
        }
    }

    /// A step starts; `total` bytes of work when it reports progress.
    pub fn phase(&mut self, step: Step, total: Option<u64>) {
        if let Some(b) = self.bar.take() {
            b.done();
        }
        self.step = step;
        self.done = 0;
        self.total = total.unwrap_or(0);
        self.last = None;
        self.emit(&Event::Phase {
            step,
            point_of_no_return: step.point_of_no_return(),
        });
        if self.format == Format::Human {
            let n = Step::ALL.iter().position(|s| *s == step).unwrap_or(0) + 1;
            eprintln!(
                "restore: [{n:>2}/{}] {}{}",
                Step::ALL.len(),
                step.name(),
                if step == Step::Clear {
                    " (point of no return: the target is written from here on)"
                } else {
                    ""
                }
            );
            if total.is_some() {
                self.bar = Some(Progress::new(true, step.name(), total));
            }
        }
    }

    /// `n` more bytes of the current step are done.
    pub fn add(&mut self, n: u64) {
        self.done = self.done.saturating_add(n);
        if let Some(b) = &self.bar {
            b.add(n);
        }
        let due = self.last.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY);
        if due || self.done >= self.total {
            self.last = Some(Instant::now());
            self.emit(&Event::Progress {
                step: self.step,
                done: self.done,
                total: self.total,
            });
        }
    }

    pub fn note(&mut self, text: impl Into<String>) {
        let text = text.into();
        if self.format == Format::Human {
            if let Some(b) = &self.bar {
                b.done();
            }
            eprintln!("restore: {text}");
        }
        self.emit(&Event::Note { text });
    }

    pub fn done(&mut self) {
        if let Some(b) = self.bar.take() {
            b.done();
        }
        self.emit(&Event::Done);
    }

    pub fn failed(&mut self, error: &anyhow::Error) {
        if let Some(b) = self.bar.take() {
            b.done();
        }
        // One line: the console shows it as is.
        let error = format!("{error:#}").replace('\n', " ");
        self.emit(&Event::Failed {
            step: self.step,
            error,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_the_json_of_the_interface() {
        let j = |e: &Event| serde_json::to_string(e).unwrap();
        assert_eq!(
            j(&Event::Phase {
                step: Step::CopyBack,
                point_of_no_return: true
            }),
            r#"{"event":"phase","step":"copy-back","point_of_no_return":true}"#
        );
        assert_eq!(
            j(&Event::Progress {
                step: Step::Extract,
                done: 5,
                total: 10
            }),
            r#"{"event":"progress","step":"extract","done":5,"total":10}"#
        );
        assert_eq!(j(&Event::Done), r#"{"event":"done"}"#);
        assert_eq!(
            j(&Event::Failed {
                step: Step::Verify,
                error: "x".into()
            }),
            r#"{"event":"failed","step":"verify","error":"x"}"#
        );
        assert_eq!(
            j(&Event::Note { text: "n".into() }),
            r#"{"event":"note","text":"n"}"#
        );
    }

    #[test]
    fn the_point_of_no_return_is_clear() {
        let before: Vec<&str> = Step::ALL
            .iter()
            .filter(|s| !s.point_of_no_return())
            .map(|s| s.name())
            .collect();
        assert_eq!(before, ["verify", "refuse"]);
        for s in Step::ALL {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.name())
            );
        }
    }
}
