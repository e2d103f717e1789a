//! What a restore or a copy-back onto a disk tells whoever watches it: the steps
//! ([`Step`], and which of them each [`Operation`] runs), the machine-readable stream of
//! one JSON object per line on standard output ([`Event`], the interface the recovery
//! console reads, `docs/restore.md`), and the human form on standard error (a line per
//! step, a bar with bytes, throughput and time left on a terminal).
//!
//! Owns: event names and their JSON, throttling progress to about 4 per second.
//! Does not own: the work (`execute`, `copyback_disk`), the bar's drawing (`progress`).

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

/// What runs: a restore, or a copy-back onto a disk (`understudy copy-back --disk`).
/// Both report with the same [`Step`] names; a copy-back runs five of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    Restore,
    CopyBack,
}

impl Operation {
    /// The steps it runs, in order.
    pub fn steps(self) -> &'static [Step] {
        match self {
            Operation::Restore => &Step::ALL,
            Operation::CopyBack => &[
                Step::Refuse,
                Step::Lvm,
                Step::Mount,
                Step::CopyBack,
                Step::Sync,
            ],
        }
    }

    /// Whether the disk has been written to once `step` started: from `clear` for a
    /// restore, from `copy-back` for a copy-back (activating LVM and mounting change
    /// no file).
    pub fn point_of_no_return(self, step: Step) -> bool {
        match self {
            Operation::Restore => step.point_of_no_return(),
            Operation::CopyBack => step >= Step::CopyBack,
        }
    }

    /// How the operation is named in messages: `restore`, `copy-back`.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Restore => "restore",
            Operation::CopyBack => "copy-back",
        }
    }
}

/// What a copy-back did (the `copied-back` event): paths new, changed, replaced by
/// another type and deleted on the emergency copy since its expansion, the file bytes
/// written, and how many notes (conflicts, paths written without some metadata) the
/// report has.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopiedBack {
    pub new: usize,
    pub changed: usize,
    pub type_changed: usize,
    pub deleted: usize,
    pub bytes: u64,
    pub notes: usize,
}

impl std::fmt::Display for CopiedBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} new, {} changed, {} replaced by another type, {} deleted; {} of file data; {} \
             notes",
            self.new,
            self.changed,
            self.type_changed,
            self.deleted,
            crate::disk::Bytes(self.bytes).human(),
            self.notes
        )
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
    /// The copy-back step's result (a restore's copy-back step says it too).
    #[serde(rename = "copied-back")]
    CopiedBack(CopiedBack),
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
    op: Operation,
    step: Step,
    done: u64,
    total: u64,
    last: Option<Instant>,
    bar: Option<Progress>,
}

/// No more progress lines than this (the console redraws at about 4 Hz).
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

impl Reporter {
    /// A restore's reporter.
    pub fn new(format: Format) -> Reporter {
        Reporter::of(Operation::Restore, format)
    }

    pub fn of(op: Operation, format: Format) -> Reporter {
        Reporter {
            format,
            op,
            step: op.steps()[0],
            done: 0,
            total: 0,
            last: None,
            bar: None,
        }
    }

    pub fn step(&self) -> Step {
        self.step
    }

    /// Whether the current step is past the operation's point of no return.
    pub fn past_point_of_no_return(&self) -> bool {
        self.op.point_of_no_return(self.step)
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
        let point_of_no_return = self.op.point_of_no_return(step);
        self.emit(&Event::Phase {
            step,
            point_of_no_return,
        });
        if self.format == Format::Human {
            let steps = self.op.steps();
            let n = steps.iter().position(|s| *s == step).unwrap_or(0) + 1;
            let first_write = point_of_no_return
                && steps
                    .iter()
                    .find(|s| self.op.point_of_no_return(**s))
                    .is_some_and(|s| *s == step);
            eprintln!(
                "{}: [{n:>2}/{}] {}{}",
                self.op.name(),
                steps.len(),
                step.name(),
                if first_write {
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

    /// The current step's total, once it is known (after the step started).
    pub fn total(&mut self, total: u64) {
        self.total = total;
        if self.format == Format::Human && self.bar.is_none() {
            self.bar = Some(Progress::new(true, self.step.name(), Some(total)));
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
            eprintln!("{}: {text}", self.op.name());
        }
        self.emit(&Event::Note { text });
    }

    /// What the copy-back step did.
    pub fn copied_back(&mut self, copied: CopiedBack) {
        if self.format == Format::Human {
            if let Some(b) = self.bar.take() {
                b.done();
            }
            eprintln!("{}: copied back: {copied}", self.op.name());
        }
        self.emit(&Event::CopiedBack(copied));
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
    fn a_copy_back_runs_five_steps_and_writes_from_its_copy_back_step() {
        let steps: Vec<&str> = Operation::CopyBack
            .steps()
            .iter()
            .map(|s| s.name())
            .collect();
        assert_eq!(steps, ["refuse", "lvm", "mount", "copy-back", "sync"]);
        let written: Vec<&str> = Operation::CopyBack
            .steps()
            .iter()
            .filter(|s| Operation::CopyBack.point_of_no_return(**s))
            .map(|s| s.name())
            .collect();
        assert_eq!(written, ["copy-back", "sync"]);
        assert_eq!(Operation::Restore.steps(), Step::ALL);
        let c = CopiedBack {
            new: 3,
            changed: 2,
            type_changed: 1,
            deleted: 4,
            bytes: 5 << 20,
            notes: 0,
        };
        let line = serde_json::to_string(&Event::CopiedBack(c.clone())).unwrap();
        assert_eq!(
            line,
            r#"{"event":"copied-back","new":3,"changed":2,"type_changed":1,"deleted":4,"bytes":5242880,"notes":0}"#
        );
        assert_eq!(
            serde_json::from_str::<Event>(&line).unwrap(),
            Event::CopiedBack(c.clone())
        );
        assert_eq!(
            c.to_string(),
            "3 new, 2 changed, 1 replaced by another type, 4 deleted; 5.0 MiB of file data; 0 notes"
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
