//! The console's whole state as a value: the situation, the screen shown and what it
//! holds (choices, typed text, the progress of a restore or copy-back), the clock, the
//! log.
//!
//! Does not own: changing it (`update`), drawing it (`view`).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::recovery::images::ImageView;
use crate::recovery::situation::{Situation, Target};
use crate::restore::events::{CopiedBack, Operation};

/// How long the automatic boot of the emergency copy waits for a key.
pub const COUNTDOWN: Duration = Duration::from_secs(10);
/// How many log lines are kept.
pub const LOG_LINES: usize = 300;

/// How the console was started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `understudy.mode=auto`: boot the emergency copy after a countdown when the
    /// primary is missing and the copy is ready.
    pub auto: bool,
    /// 16 colours; without, only bold and reverse video.
    pub color: bool,
}

/// A child process that writes a disk: a restore of `image` onto `target`, or a
/// copy-back onto `target` (the primary) with the filesystems of `image`'s layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub op: Operation,
    pub image: ImageView,
    pub target: Target,
}

/// A job under way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub job: Job,
    /// The engine's current step, and when (console time) it started.
    pub step: String,
    pub step_started: Duration,
    pub done: u64,
    pub total: u64,
    /// The step at which the target was first written: no cancelling from there.
    pub no_return_at: Option<String>,
    pub cancelling: bool,
    /// The engine's own outcome line, once it said it.
    pub outcome: Option<Outcome>,
    /// What the copy-back step did, once it said it.
    pub copied: Option<CopiedBack>,
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Failed { step: String, error: String },
    Cancelled { step: String },
}

/// The screen shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Screen {
    Status,
    /// Automatic mode: booting the emergency copy at `deadline` unless a key comes.
    Countdown {
        deadline: Duration,
    },
    /// Boot the emergency copy: what it is, and the confirmation.
    Emergency,
    /// kexec asked for; `problem` when it failed.
    Booting {
        problem: Option<String>,
    },
    RestoreImage {
        sel: usize,
    },
    RestoreTarget {
        image: ImageView,
        sel: usize,
    },
    RestorePlan {
        image: ImageView,
        target: Target,
    },
    /// Typing the job's disk's serial number; `refused` says what was typed wrong last.
    Confirm {
        job: Job,
        typed: String,
        refused: Option<String>,
    },
    Running(Box<Progress>),
    /// How a job ended; `written` whether it went past its point of no return.
    Result {
        job: Job,
        outcome: Outcome,
        written: bool,
        copied: Option<CopiedBack>,
    },
    /// Copy back onto the primary: whether it is possible now, and onto what.
    CopyBack,
    Verify,
    Import,
    Log,
}

/// Everything the console knows.
#[derive(Clone, Debug)]
pub struct State {
    pub situation: Situation,
    pub opts: Options,
    pub screen: Screen,
    /// Time since the console started, from the last tick.
    pub now: Duration,
    /// What happened, oldest first.
    pub log: Vec<String>,
    /// PID 1's start-up notes (drivers, problems), shown on the status screen.
    pub notes: Vec<String>,
    /// Images checked this session, by id.
    pub verified: BTreeMap<String, Result<(), String>>,
    pub verifying: usize,
    /// One line for the technician on the status screen (the last refusal).
    pub message: Option<String>,
}

impl State {
    /// The first state: the status screen, or the countdown in automatic mode when
    /// the primary is missing and the emergency copy ready and bootable.
    pub fn new(situation: Situation, opts: Options, notes: Vec<String>) -> State {
        let mut s = State {
            situation,
            opts,
            screen: Screen::Status,
            now: Duration::ZERO,
            log: Vec::new(),
            notes,
            verified: BTreeMap::new(),
            verifying: 0,
            message: None,
        };
        if s.auto_boot_applies() {
            s.screen = Screen::Countdown {
                deadline: COUNTDOWN,
            };
            s.log("automatic mode: primary missing, emergency copy ready: countdown started");
        }
        s
    }

    /// Whether automatic mode boots the emergency copy now.
    pub fn auto_boot_applies(&self) -> bool {
        self.opts.auto && self.situation.primary.is_missing() && self.situation.emergency.is_ready()
    }

    pub fn log(&mut self, line: impl Into<String>) {
        self.log.push(line.into());
        if self.log.len() > LOG_LINES {
            let extra = self.log.len() - LOG_LINES;
            self.log.drain(..extra);
        }
    }

    /// Whether the job under way may still be cancelled.
    pub fn can_cancel(&self) -> bool {
        matches!(&self.screen, Screen::Running(p) if p.no_return_at.is_none() && p.outcome.is_none())
    }
}
