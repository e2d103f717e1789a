//! The console's logic: `update(State, Msg) -> (State, Vec<Effect>)`, pure. Keys move
//! between screens; the only effects that write a disk ([`Effect::StartRestore`],
//! [`Effect::CopyBack`]) come from the confirmation screen after the disk's serial
//! number was typed.
//!
//! Does not own: carrying effects out (`run`), drawing (`view`).

use std::path::PathBuf;

use super::msg::{EngineEvent, Key, Msg};
use super::state::{Job, Outcome, Progress, Screen, State};
use crate::recovery::emergency::EmergencyBoot;
use crate::recovery::situation::EmergencyState;
use crate::restore::events::Operation;

/// What the executor is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Look at the machine again (a [`Msg::Situation`] follows).
    Refresh,
    /// kexec the emergency copy (a [`Msg::KexecFailed`] follows if it fails).
    BootEmergency(EmergencyBoot),
    /// kexec failed: leave GRUB a one-shot choice of the emergency entry, then reboot
    /// (an [`Msg::EffectFailed`] follows if the choice could not be written).
    RebootToEmergency,
    Reboot,
    PowerOff,
    /// A shell on the console; [`Msg::ShellExited`] when it ends.
    Shell,
    /// Run `understudy restore IMAGE --target DISK --yes --progress=json`; its events
    /// come as [`Msg::Engine`].
    StartRestore {
        image: PathBuf,
        target: PathBuf,
    },
    /// Run `understudy copy-back --disk DISK --image IMAGE --yes --progress=json`; its
    /// events come as [`Msg::Engine`].
    CopyBack {
        image: PathBuf,
        disk: PathBuf,
    },
    /// SIGTERM to the running job (only before its point of no return).
    Cancel,
    /// Check these images' archives; a [`Msg::Verified`] for each.
    Verify(Vec<(String, PathBuf)>),
    /// End the console (PID 1 starts it again).
    Quit,
}

/// The new state and the effects for a message.
pub fn update(mut s: State, msg: Msg) -> (State, Vec<Effect>) {
    let mut fx = Vec::new();
    match msg {
        Msg::Tick(now) => {
            s.now = now;
            if let Screen::Countdown { deadline } = s.screen
                && now >= deadline
            {
                s.log("automatic mode: countdown over, booting the emergency copy");
                boot_emergency(&mut s, &mut fx);
            }
        }
        Msg::Key(k) => key(&mut s, k, &mut fx),
        Msg::Engine(e) => engine(&mut s, e),
        Msg::Situation(sit) => {
            s.situation = *sit;
            s.log(format!(
                "looked at the disks again: primary {}",
                s.situation.primary
            ));
        }
        Msg::Verified { id, result } => {
            s.verifying = s.verifying.saturating_sub(1);
            match &result {
                Ok(()) => s.log(format!("verify {id}: every archive matches its manifest")),
                Err(e) => s.log(format!("verify {id}: FAILED: {e}")),
            }
            s.verified.insert(id, result);
        }
        Msg::KexecFailed(e) => {
            s.log(format!("kexec failed: {e}"));
            s.log("rebooting into the emergency copy through GRUB (a one-shot choice)");
            s.screen = Screen::Booting { problem: Some(e) };
            fx.push(Effect::RebootToEmergency);
        }
        Msg::ShellExited(how) => s.log(how),
        Msg::EffectFailed(e) => {
            s.log(e.clone());
            s.message = Some(e);
        }
    }
    (s, fx)
}

fn boot_emergency(s: &mut State, fx: &mut Vec<Effect>) {
    match &s.situation.emergency {
        EmergencyState::Ready {
            boot: Some(plan), ..
        } => {
            fx.push(Effect::BootEmergency(plan.clone()));
            s.screen = Screen::Booting { problem: None };
        }
        EmergencyState::Ready { boot: None, .. } => {
            let why = "the emergency copy's GRUB entry could not be read: no kexec".to_string();
            s.log(why.clone());
            s.screen = Screen::Booting { problem: Some(why) };
        }
        EmergencyState::NotReady { why } => {
            let why = format!("the emergency copy is not ready ({why})");
            s.log(why.clone());
            s.message = Some(why);
            s.screen = Screen::Status;
        }
    }
}

/// Keys on the status screen (also the menu's letters everywhere a screen has no
/// use for them).
fn status_key(s: &mut State, k: Key, fx: &mut Vec<Effect>) {
    let Key::Char(c) = k else { return };
    s.message = None;
    match c.to_ascii_lowercase() {
        'e' => s.screen = Screen::Emergency,
        't' => {
            if s.situation.images.is_empty() {
                let why = match &s.situation.images_problem {
                    Some(p) => format!("no image to restore: {p}"),
                    None => "no image to restore on the images partition".into(),
                };
                s.log(why.clone());
                s.message = Some(why);
            } else {
                s.screen = Screen::RestoreImage { sel: 0 };
            }
        }
        'c' => s.screen = Screen::CopyBack,
        'v' => s.screen = Screen::Verify,
        'u' => s.screen = Screen::Import,
        'l' => s.screen = Screen::Log,
        's' => {
            s.log("shell");
            fx.push(Effect::Shell);
        }
        'r' => {
            s.log("reboot");
            fx.push(Effect::Reboot);
        }
        'p' => {
            s.log("power off");
            fx.push(Effect::PowerOff);
        }
        'i' => fx.push(Effect::Refresh),
        'q' => fx.push(Effect::Quit),
        _ => {}
    }
}

fn select(sel: &mut usize, k: Key, len: usize) {
    match k {
        Key::Up => *sel = sel.saturating_sub(1),
        Key::Down if *sel + 1 < len => *sel += 1,
        _ => {}
    }
}

fn key(s: &mut State, k: Key, fx: &mut Vec<Effect>) {
    let screen = std::mem::replace(&mut s.screen, Screen::Status);
    s.screen = match screen {
        Screen::Status => {
            status_key(s, k, fx);
            return;
        }
        Screen::Countdown { .. } => {
            s.log("automatic boot cancelled by a key");
            s.message = Some("automatic boot of the emergency copy cancelled".into());
            Screen::Status
        }
        Screen::Emergency => match k {
            Key::Enter => {
                s.log("boot the emergency copy");
                boot_emergency(s, fx);
                return;
            }
            Key::Esc => Screen::Status,
            other => {
                s.screen = Screen::Emergency;
                status_key(s, other, fx);
                return;
            }
        },
        Screen::Booting { problem } => match k {
            Key::Char('r' | 'R') => {
                fx.push(Effect::Reboot);
                Screen::Booting { problem }
            }
            Key::Esc if problem.is_some() => Screen::Status,
            _ => Screen::Booting { problem },
        },
        Screen::RestoreImage { mut sel } => match k {
            Key::Esc => Screen::Status,
            Key::Enter => {
                // The list may have changed under the choice (a refresh): no image.
                let Some(image) = s.situation.images.get(sel).cloned() else {
                    s.message = Some("no image to restore".into());
                    s.screen = Screen::Status;
                    return;
                };
                if let Some(p) = &image.problem {
                    s.message = Some(format!("{} cannot be restored: {p}", image.id));
                    Screen::RestoreImage { sel }
                } else if s.situation.targets.is_empty() {
                    s.message = Some(
                        "no disk to restore onto (never the secondary or removable media)".into(),
                    );
                    Screen::RestoreImage { sel }
                } else {
                    s.message = None;
                    Screen::RestoreTarget { image, sel: 0 }
                }
            }
            other => {
                select(&mut sel, other, s.situation.images.len());
                Screen::RestoreImage { sel }
            }
        },
        Screen::RestoreTarget { image, mut sel } => match k {
            Key::Esc => Screen::RestoreImage { sel: 0 },
            Key::Enter => match s.situation.targets.get(sel) {
                Some(t) => Screen::RestorePlan {
                    image,
                    target: t.clone(),
                },
                None => Screen::RestoreTarget { image, sel },
            },
            other => {
                select(&mut sel, other, s.situation.targets.len());
                Screen::RestoreTarget { image, sel }
            }
        },
        Screen::RestorePlan { image, target } => match k {
            Key::Esc => Screen::RestoreTarget { image, sel: 0 },
            Key::Enter => Screen::Confirm {
                job: Job {
                    op: Operation::Restore,
                    image,
                    target,
                },
                typed: String::new(),
                refused: None,
            },
            _ => Screen::RestorePlan { image, target },
        },
        Screen::Confirm {
            job,
            mut typed,
            refused,
        } => match k {
            Key::Esc => match job.op {
                Operation::Restore => Screen::RestorePlan {
                    image: job.image,
                    target: job.target,
                },
                Operation::CopyBack => Screen::CopyBack,
            },
            Key::Backspace => {
                typed.pop();
                Screen::Confirm {
                    job,
                    typed,
                    refused,
                }
            }
            Key::Char(c) if !c.is_control() && typed.chars().count() < 64 => {
                typed.push(c);
                Screen::Confirm {
                    job,
                    typed,
                    refused,
                }
            }
            Key::Enter if typed == job.target.confirm_word() => {
                let serial = job.target.serial.as_deref().unwrap_or("-");
                let (line, effect) = match job.op {
                    Operation::Restore => (
                        format!(
                            "restore {} onto {} (serial {serial}) confirmed",
                            job.image.id, job.target.disk
                        ),
                        Effect::StartRestore {
                            image: job.image.dir.clone(),
                            target: job.target.path.clone(),
                        },
                    ),
                    Operation::CopyBack => (
                        format!(
                            "copy-back onto {} (serial {serial}) with the layout of {} confirmed",
                            job.target.disk, job.image.id
                        ),
                        Effect::CopyBack {
                            image: job.image.dir.clone(),
                            disk: job.target.path.clone(),
                        },
                    ),
                };
                s.log(line);
                fx.push(effect);
                Screen::Running(Box::new(Progress {
                    job,
                    step: "starting".into(),
                    step_started: s.now,
                    done: 0,
                    total: 0,
                    no_return_at: None,
                    cancelling: false,
                    outcome: None,
                    copied: None,
                }))
            }
            Key::Enter => {
                s.log(format!(
                    "{} refused: typed {typed:?}, the disk's serial is {:?}",
                    job.op.name(),
                    job.target.confirm_word()
                ));
                Screen::Confirm {
                    job,
                    typed: String::new(),
                    refused: Some(typed),
                }
            }
            _ => Screen::Confirm {
                job,
                typed,
                refused,
            },
        },
        Screen::Running(mut p) => {
            if matches!(k, Key::Char('c' | 'C') | Key::Esc) && p.outcome.is_none() {
                if p.cancelling {
                } else if let Some(at) = &p.no_return_at {
                    s.message = Some(format!(
                        "cannot cancel: the disk is being written since step {at}"
                    ));
                    s.log(format!(
                        "cancel refused: past the point of no return ({at})"
                    ));
                } else {
                    s.log(format!("cancel asked during step {}", p.step));
                    p.cancelling = true;
                    fx.push(Effect::Cancel);
                }
            }
            Screen::Running(p)
        }
        Screen::Result {
            job,
            outcome,
            written,
            copied,
        } => match k {
            Key::Char('r' | 'R') if outcome == Outcome::Done => {
                s.log(match job.op {
                    Operation::Restore => "reboot into the restored primary",
                    Operation::CopyBack => "reboot into the primary",
                });
                fx.push(Effect::Reboot);
                Screen::Result {
                    job,
                    outcome,
                    written,
                    copied,
                }
            }
            Key::Enter | Key::Esc => {
                fx.push(Effect::Refresh);
                Screen::Status
            }
            // The result screens offer the log: every note the job wrote is there.
            Key::Char('l' | 'L') => {
                fx.push(Effect::Refresh);
                Screen::Log
            }
            _ => Screen::Result {
                job,
                outcome,
                written,
                copied,
            },
        },
        Screen::CopyBack => match k {
            Key::Enter => match s.situation.copy_back() {
                Ok(c) => {
                    s.message = None;
                    Screen::Confirm {
                        job: Job {
                            op: Operation::CopyBack,
                            image: c.image,
                            target: c.target,
                        },
                        typed: String::new(),
                        refused: None,
                    }
                }
                Err(why) => {
                    s.log(format!("copy-back not possible: {why}"));
                    s.message = Some(why);
                    Screen::CopyBack
                }
            },
            Key::Esc => Screen::Status,
            Key::Char(_) => {
                s.screen = Screen::Status;
                status_key(s, k, fx);
                return;
            }
            _ => Screen::CopyBack,
        },
        Screen::Verify => match k {
            Key::Enter => {
                let list: Vec<(String, PathBuf)> = s
                    .situation
                    .images
                    .iter()
                    .filter(|i| i.problem.is_none())
                    .map(|i| (i.id.clone(), i.dir.clone()))
                    .collect();
                if !list.is_empty() && s.verifying == 0 {
                    s.verifying = list.len();
                    s.log(format!("verifying {} image(s)", list.len()));
                    fx.push(Effect::Verify(list));
                }
                Screen::Verify
            }
            Key::Esc => Screen::Status,
            _ => Screen::Verify,
        },
        Screen::Import | Screen::Log => match k {
            Key::Esc | Key::Enter => Screen::Status,
            Key::Char(_) => {
                s.screen = Screen::Status;
                status_key(s, k, fx);
                return;
            }
            _ => screen,
        },
    };
}

fn engine(s: &mut State, e: EngineEvent) {
    let now = s.now;
    let Screen::Running(p) = &mut s.screen else {
        s.log(format!("engine event with no job shown: {e:?}"));
        return;
    };
    let op = p.job.op.name();
    let mut lines = Vec::new();
    let mut finished = None;
    match e {
        EngineEvent::Phase {
            step,
            point_of_no_return,
        } => {
            lines.push(format!("{op}: step {step}"));
            if point_of_no_return && p.no_return_at.is_none() {
                lines.push(format!("{op}: point of no return at {step}"));
                p.no_return_at = Some(step.clone());
            }
            p.step = step;
            p.step_started = now;
            p.done = 0;
            p.total = 0;
        }
        EngineEvent::Progress { step, done, total } => {
            if step != p.step {
                p.step = step;
                p.step_started = now;
            }
            p.done = done;
            p.total = total;
        }
        EngineEvent::Note(t) => lines.push(format!("{op}: {t}")),
        EngineEvent::CopiedBack(c) => {
            lines.push(format!("{op}: copied back: {c}"));
            p.copied = Some(c);
        }
        EngineEvent::Unparsed(t) => lines.push(format!("{op} said: {t}")),
        EngineEvent::Done => p.outcome = Some(Outcome::Done),
        EngineEvent::Failed { step, error } => {
            p.outcome = Some(if p.cancelling && p.no_return_at.is_none() {
                Outcome::Cancelled { step }
            } else {
                Outcome::Failed { step, error }
            })
        }
        EngineEvent::Exited { code, stderr } => {
            let outcome = match (p.outcome.take(), code) {
                (Some(o), _) => o,
                (None, Some(0)) => Outcome::Done,
                (None, _) if p.cancelling && p.no_return_at.is_none() => Outcome::Cancelled {
                    step: p.step.clone(),
                },
                (None, code) => Outcome::Failed {
                    step: p.step.clone(),
                    error: match code {
                        Some(c) => format!("the {op} exited with code {c}: {stderr}"),
                        None => format!("the {op} was killed: {stderr}"),
                    },
                },
            };
            finished = Some(Screen::Result {
                job: p.job.clone(),
                outcome,
                written: p.no_return_at.is_some(),
                copied: p.copied.clone(),
            });
        }
    }
    for l in lines {
        s.log(l);
    }
    if let Some(result) = finished {
        if let Screen::Result {
            job,
            outcome,
            copied,
            ..
        } = &result
        {
            let disk = &job.target.disk;
            s.log(match (outcome, job.op) {
                (Outcome::Done, Operation::Restore) => {
                    format!("restore of {} onto {disk} complete", job.image.id)
                }
                (Outcome::Done, Operation::CopyBack) => match copied {
                    Some(c) => format!("copy-back onto {disk} complete: {c}"),
                    None => format!("copy-back onto {disk} complete"),
                },
                (Outcome::Failed { step, error }, op) => {
                    format!("{} FAILED at step {step}: {error}", op.name())
                }
                (Outcome::Cancelled { step }, op) => {
                    format!("{} cancelled during step {step}", op.name())
                }
            });
        }
        s.screen = result;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::state::{COUNTDOWN, Options};
    use crate::disk::Readability;
    use crate::recovery::situation::{decide, fixtures};
    use std::time::Duration;

    /// Primary missing, a blank replacement, the emergency copy ready.
    pub fn missing(auto: bool) -> State {
        let sit = decide(fixtures::facts(vec![
            fixtures::disk("vdc", "NEW-DISK-9", 64, Readability::Blank),
            fixtures::secondary(),
        ]));
        State::new(sit, Options { auto, color: true }, Vec::new())
    }

    /// Primary back and healthy, the emergency copy ready: copy-back is possible.
    fn healthy() -> State {
        let sit = decide(fixtures::facts(vec![
            fixtures::primary(),
            fixtures::secondary(),
        ]));
        State::new(
            sit,
            Options {
                auto: false,
                color: true,
            },
            Vec::new(),
        )
    }

    fn run(mut s: State, msgs: impl IntoIterator<Item = Msg>) -> (State, Vec<Effect>) {
        let mut all = Vec::new();
        for m in msgs {
            let (n, fx) = update(s, m);
            s = n;
            all.extend(fx);
        }
        (s, all)
    }

    fn keys(text: &str) -> Vec<Msg> {
        text.chars().map(|c| Msg::Key(Key::Char(c))).collect()
    }

    /// Status → restore → newest image → the blank disk → plan → confirmation.
    fn to_confirm() -> State {
        let (s, fx) = run(
            missing(false),
            [
                Msg::Key(Key::Char('t')),
                Msg::Key(Key::Enter),
                Msg::Key(Key::Enter),
                Msg::Key(Key::Enter),
            ],
        );
        assert!(fx.is_empty(), "{fx:?}");
        assert!(matches!(s.screen, Screen::Confirm { .. }), "{:?}", s.screen);
        s
    }

    #[test]
    fn restore_starts_only_once_the_serial_is_typed() {
        let s = to_confirm();
        let mut msgs = keys("NEW-DISK-9");
        msgs.push(Msg::Key(Key::Enter));
        let (s, fx) = run(s, msgs);
        assert_eq!(
            fx,
            [Effect::StartRestore {
                image: "/run/understudy/images/20261124T031500Z-pbx".into(),
                target: "/dev/vdc".into(),
            }]
        );
        let Screen::Running(p) = &s.screen else {
            panic!("{:?}", s.screen)
        };
        assert_eq!(
            p.job.image.id, "20261124T031500Z-pbx",
            "the newest image first"
        );
    }

    #[test]
    fn a_wrong_serial_is_refused_and_nothing_is_written() {
        let s = to_confirm();
        let mut msgs = keys("NEW-DISK-8");
        msgs.push(Msg::Key(Key::Enter));
        // Enter with nothing typed, too.
        msgs.push(Msg::Key(Key::Enter));
        let (s, fx) = run(s, msgs);
        assert!(fx.is_empty(), "{fx:?}");
        let Screen::Confirm { typed, refused, .. } = &s.screen else {
            panic!("{:?}", s.screen)
        };
        assert_eq!(typed, "");
        assert_eq!(refused.as_deref(), Some(""));
        assert!(s.log.iter().any(|l| l.contains("typed \"NEW-DISK-8\"")));
        // Backspace fixes a typo.
        let mut msgs = keys("NEW-DISK-99");
        msgs.push(Msg::Key(Key::Backspace));
        msgs.push(Msg::Key(Key::Enter));
        let (_, fx) = run(s, msgs);
        assert!(matches!(fx.as_slice(), [Effect::StartRestore { .. }]));
    }

    #[test]
    fn no_screen_but_the_confirmation_writes_a_disk() {
        // Every key on every screen reachable without typing the serial.
        let all_keys: Vec<Key> = "etcvulirpsq0123456789abcdefghjkmnowxyz"
            .chars()
            .map(Key::Char)
            .chain([
                Key::Enter,
                Key::Esc,
                Key::Up,
                Key::Down,
                Key::Backspace,
                Key::Other,
            ])
            .collect();
        let mut frontier = vec![missing(false), healthy()];
        let mut seen = 0;
        while let Some(s) = frontier.pop() {
            seen += 1;
            if seen > 400 {
                break;
            }
            for &k in &all_keys {
                let before = s.screen.clone();
                let (n, fx) = update(s.clone(), Msg::Key(k));
                for e in &fx {
                    assert!(
                        !matches!(e, Effect::StartRestore { .. } | Effect::CopyBack { .. }),
                        "{k:?} on {before:?} started {e:?}"
                    );
                }
                if !matches!(n.screen, Screen::Confirm { .. } | Screen::Running(_))
                    && std::mem::discriminant(&n.screen) != std::mem::discriminant(&before)
                {
                    frontier.push(n);
                }
            }
        }
    }

    #[test]
    fn the_countdown_boots_the_emergency_copy_unless_a_key_comes() {
        let s = missing(true);
        assert_eq!(
            s.screen,
            Screen::Countdown {
                deadline: COUNTDOWN
            }
        );
        let (s2, fx) = run(
            s.clone(),
            [
                Msg::Tick(Duration::from_secs(3)),
                Msg::Tick(Duration::from_secs(9)),
            ],
        );
        assert!(fx.is_empty());
        assert!(matches!(s2.screen, Screen::Countdown { .. }));
        let (s3, fx) = run(s2.clone(), [Msg::Tick(COUNTDOWN)]);
        assert_eq!(fx, [Effect::BootEmergency(fixtures::boot_entry())]);
        assert_eq!(s3.screen, Screen::Booting { problem: None });
        // Any key cancels, and later ticks do nothing.
        let (s4, fx) = run(
            s2,
            [
                Msg::Key(Key::Other),
                Msg::Tick(COUNTDOWN),
                Msg::Tick(COUNTDOWN * 2),
            ],
        );
        assert!(fx.is_empty(), "{fx:?}");
        assert_eq!(s4.screen, Screen::Status);
        assert!(s4.log.iter().any(|l| l.contains("cancelled by a key")));
    }

    #[test]
    fn no_countdown_unless_auto_primary_missing_and_copy_ready() {
        assert_eq!(missing(false).screen, Screen::Status);
        let healthy = decide(fixtures::facts(vec![
            fixtures::primary(),
            fixtures::secondary(),
        ]));
        let s = State::new(
            healthy,
            Options {
                auto: true,
                color: true,
            },
            Vec::new(),
        );
        assert_eq!(s.screen, Screen::Status);
        let mut f = fixtures::facts(vec![fixtures::secondary()]);
        f.env = Some(crate::boot::EnvRead::A {
            env: crate::boot::Env::with_emergency(None),
            b_problem: None,
        });
        let s = State::new(
            decide(f),
            Options {
                auto: true,
                color: true,
            },
            Vec::new(),
        );
        assert_eq!(s.screen, Screen::Status);
    }

    #[test]
    fn kexec_failure_reboots_into_the_emergency_copy_through_grub() {
        let (s, fx) = run(
            missing(true),
            [
                Msg::Tick(COUNTDOWN),
                Msg::KexecFailed("kexec_file_load: Operation not permitted".into()),
            ],
        );
        assert_eq!(
            fx,
            [
                Effect::BootEmergency(fixtures::boot_entry()),
                Effect::RebootToEmergency
            ]
        );
        assert!(
            matches!(&s.screen, Screen::Booting { problem: Some(p) } if p.contains("not permitted"))
        );
    }

    fn restoring() -> State {
        let mut msgs = keys("NEW-DISK-9");
        msgs.push(Msg::Key(Key::Enter));
        run(to_confirm(), msgs).0
    }

    fn phase(step: &str, ponr: bool) -> Msg {
        Msg::Engine(EngineEvent::Phase {
            step: step.into(),
            point_of_no_return: ponr,
        })
    }

    #[test]
    fn cancel_is_allowed_before_the_point_of_no_return_and_not_after() {
        let (s, fx) = run(
            restoring(),
            [phase("verify", false), Msg::Key(Key::Char('c'))],
        );
        assert_eq!(fx, [Effect::Cancel]);
        // The engine stops: the result says cancelled.
        let (s, _) = run(
            s,
            [
                Msg::Engine(EngineEvent::Failed {
                    step: "verify".into(),
                    error: "terminated".into(),
                }),
                Msg::Engine(EngineEvent::Exited {
                    code: Some(1),
                    stderr: String::new(),
                }),
            ],
        );
        assert!(matches!(
            &s.screen,
            Screen::Result { outcome: Outcome::Cancelled { step }, .. } if step == "verify"
        ));

        let (s, fx) = run(
            restoring(),
            [
                phase("verify", false),
                phase("clear", true),
                Msg::Key(Key::Char('c')),
                Msg::Key(Key::Esc),
            ],
        );
        assert!(fx.is_empty(), "{fx:?}");
        assert!(!s.can_cancel());
        assert!(s.message.as_deref().unwrap().contains("since step clear"));
    }

    #[test]
    fn an_engine_failure_is_shown_with_its_step_and_error() {
        let (s, _) = run(
            restoring(),
            [
                phase("verify", false),
                phase("clear", true),
                phase("mkfs", true),
                Msg::Engine(EngineEvent::Failed {
                    step: "mkfs".into(),
                    error: "mkfs.ext4 /dev/vdc2: exit 1".into(),
                }),
                Msg::Engine(EngineEvent::Exited {
                    code: Some(1),
                    stderr: String::new(),
                }),
            ],
        );
        let Screen::Result {
            job,
            outcome,
            written,
            copied,
        } = &s.screen
        else {
            panic!("{:?}", s.screen)
        };
        assert_eq!(job.op, Operation::Restore);
        assert_eq!(job.image.id, "20261124T031500Z-pbx");
        assert_eq!(job.target, s.situation.targets[0]);
        assert_eq!(
            outcome,
            &Outcome::Failed {
                step: "mkfs".into(),
                error: "mkfs.ext4 /dev/vdc2: exit 1".into()
            }
        );
        assert!(written);
        assert_eq!(copied, &None);
        // A crash with no failed line still ends in a result naming the step.
        let (s, _) = run(
            restoring(),
            [
                phase("extract", true),
                Msg::Engine(EngineEvent::Exited {
                    code: None,
                    stderr: "Killed".into(),
                }),
            ],
        );
        assert!(matches!(
            &s.screen,
            Screen::Result { outcome: Outcome::Failed { step, error }, .. }
                if step == "extract" && error.contains("killed")
        ));
    }

    #[test]
    fn a_finished_restore_offers_the_reboot() {
        let (s, fx) = run(
            restoring(),
            [
                Msg::Engine(EngineEvent::Done),
                Msg::Engine(EngineEvent::Exited {
                    code: Some(0),
                    stderr: String::new(),
                }),
                Msg::Key(Key::Char('r')),
            ],
        );
        assert_eq!(fx, [Effect::Reboot]);
        assert!(matches!(
            s.screen,
            Screen::Result {
                outcome: Outcome::Done,
                ..
            }
        ));
    }

    #[test]
    fn status_keys_map_to_screens_and_effects() {
        let cases: Vec<(char, Option<Effect>, Screen)> = vec![
            ('e', None, Screen::Emergency),
            ('c', None, Screen::CopyBack),
            ('v', None, Screen::Verify),
            ('u', None, Screen::Import),
            ('l', None, Screen::Log),
            ('s', Some(Effect::Shell), Screen::Status),
            ('r', Some(Effect::Reboot), Screen::Status),
            ('p', Some(Effect::PowerOff), Screen::Status),
            ('i', Some(Effect::Refresh), Screen::Status),
        ];
        for (c, effect, screen) in cases {
            let (s, fx) = update(missing(false), Msg::Key(Key::Char(c)));
            assert_eq!(fx, effect.into_iter().collect::<Vec<_>>(), "{c}");
            assert_eq!(s.screen, screen, "{c}");
        }
        // Every key of the menu lines is one the status screen knows.
        for line in [crate::init::menu::LINE, crate::init::menu::LINE_RECOVERY] {
            for c in line.split('[').skip(1).filter_map(|p| p.chars().next()) {
                let (s, fx) = update(missing(false), Msg::Key(Key::Char(c)));
                assert!(
                    !fx.is_empty() || s.screen != Screen::Status,
                    "{c} does nothing"
                );
            }
        }
    }

    #[test]
    fn a_refresh_that_empties_the_list_under_a_choice_goes_back_to_the_status() {
        let (s, _) = run(
            missing(false),
            [Msg::Key(Key::Char('t')), Msg::Key(Key::Down)],
        );
        let mut empty = s.situation.clone();
        empty.images.clear();
        let (s, fx) = run(s, [Msg::Situation(Box::new(empty)), Msg::Key(Key::Enter)]);
        assert!(fx.is_empty());
        assert_eq!(s.screen, Screen::Status);
        assert_eq!(s.message.as_deref(), Some("no image to restore"));
    }

    #[test]
    fn verify_checks_every_readable_image_once() {
        let (s, fx) = run(
            missing(false),
            [
                Msg::Key(Key::Char('v')),
                Msg::Key(Key::Enter),
                Msg::Key(Key::Enter),
            ],
        );
        assert_eq!(fx.len(), 1);
        let Effect::Verify(list) = &fx[0] else {
            panic!()
        };
        assert_eq!(list.len(), 2);
        let (s, _) = run(
            s,
            [
                Msg::Verified {
                    id: "20261124T031500Z-pbx".into(),
                    result: Err("root.tar.lzo: SHA-256 mismatch".into()),
                },
                Msg::Verified {
                    id: "20261120T031500Z-pbx".into(),
                    result: Ok(()),
                },
            ],
        );
        assert_eq!(s.verifying, 0);
        assert!(s.log.iter().any(|l| l.contains("FAILED: root.tar.lzo")));
    }

    /// Status → copy back → its confirmation.
    fn to_copy_back_confirm() -> State {
        let (s, fx) = run(healthy(), [Msg::Key(Key::Char('c')), Msg::Key(Key::Enter)]);
        assert!(fx.is_empty(), "{fx:?}");
        s
    }

    #[test]
    fn copy_back_starts_only_once_the_primarys_serial_is_typed() {
        let s = to_copy_back_confirm();
        let Screen::Confirm {
            job,
            typed,
            refused,
        } = &s.screen
        else {
            panic!("{:?}", s.screen)
        };
        assert_eq!(job.op, Operation::CopyBack);
        assert_eq!(job.target.disk, "vda");
        assert_eq!(
            job.image.id, "20261124T031500Z-pbx",
            "the newest image's layout"
        );
        assert!(typed.is_empty() && refused.is_none());

        // A wrong serial is refused, and nothing starts.
        let mut msgs = keys("US-PRIMARY-0002");
        msgs.push(Msg::Key(Key::Enter));
        let (s, fx) = run(s, msgs);
        assert!(fx.is_empty(), "{fx:?}");
        let Screen::Confirm { typed, refused, .. } = &s.screen else {
            panic!("{:?}", s.screen)
        };
        assert_eq!(typed, "");
        assert_eq!(refused.as_deref(), Some("US-PRIMARY-0002"));
        assert!(
            s.log
                .iter()
                .any(|l| l.contains("copy-back refused: typed \"US-PRIMARY-0002\""))
        );

        // The right one starts exactly one copy-back, onto the primary.
        let mut msgs = keys("US-PRIMARY-0001");
        msgs.push(Msg::Key(Key::Enter));
        let (s, fx) = run(s, msgs);
        assert_eq!(
            fx,
            [Effect::CopyBack {
                image: "/run/understudy/images/20261124T031500Z-pbx".into(),
                disk: "/dev/vda".into(),
            }]
        );
        let Screen::Running(p) = &s.screen else {
            panic!("{:?}", s.screen)
        };
        assert_eq!(p.job.op, Operation::CopyBack);
        // Esc on the confirmation goes back to the copy-back screen.
        let (s, fx) = run(to_copy_back_confirm(), [Msg::Key(Key::Esc)]);
        assert!(fx.is_empty());
        assert_eq!(s.screen, Screen::CopyBack);
    }

    #[test]
    fn copy_back_is_refused_with_the_reason_when_it_cannot_be_done() {
        let mut bad = fixtures::primary();
        bad.state = Readability::IoError("Input/output error".into());
        let unreadable = State::new(
            decide(fixtures::facts(vec![bad, fixtures::secondary()])),
            Options::default(),
            Vec::new(),
        );
        let mut no_emergency = fixtures::secondary();
        no_emergency.partitions.retain(|p| p.number != 4);
        let no_copy = State::new(
            decide(fixtures::facts(vec![fixtures::primary(), no_emergency])),
            Options::default(),
            Vec::new(),
        );
        let cases = [
            (
                missing(false),
                "the primary is missing: restore instead ([t])",
            ),
            (
                unreadable,
                "is unreadable (I/O error: Input/output error): restore instead",
            ),
            (no_copy, "no emergency copy"),
        ];
        for (s, why) in cases {
            let (s, fx) = run(s, [Msg::Key(Key::Char('c')), Msg::Key(Key::Enter)]);
            assert!(fx.is_empty(), "{why}: {fx:?}");
            assert_eq!(s.screen, Screen::CopyBack, "{why}");
            let m = s.message.as_deref().unwrap_or_default();
            assert!(m.contains(why), "{m:?} does not say {why:?}");
            assert!(s.log.iter().any(|l| l.contains("copy-back not possible")));
        }
    }

    fn copying_back() -> State {
        let mut msgs = keys("US-PRIMARY-0001");
        msgs.push(Msg::Key(Key::Enter));
        run(to_copy_back_confirm(), msgs).0
    }

    #[test]
    fn a_copy_back_ends_with_what_it_copied_or_where_it_failed() {
        let copied = crate::restore::events::CopiedBack {
            new: 3,
            changed: 2,
            type_changed: 0,
            deleted: 1,
            bytes: 4096,
            notes: 0,
        };
        let (s, fx) = run(
            copying_back(),
            [
                phase("refuse", false),
                phase("lvm", false),
                phase("mount", false),
                phase("copy-back", true),
                Msg::Engine(EngineEvent::CopiedBack(copied.clone())),
                phase("sync", true),
                Msg::Engine(EngineEvent::Done),
                Msg::Engine(EngineEvent::Exited {
                    code: Some(0),
                    stderr: String::new(),
                }),
                Msg::Key(Key::Char('r')),
            ],
        );
        assert_eq!(fx, [Effect::Reboot]);
        let Screen::Result {
            job,
            outcome,
            written,
            copied: said,
        } = &s.screen
        else {
            panic!("{:?}", s.screen)
        };
        assert_eq!(
            (job.op, outcome, written, said),
            (Operation::CopyBack, &Outcome::Done, &true, &Some(copied))
        );
        assert!(
            s.log
                .iter()
                .any(|l| l.contains("copy-back onto vda complete: 3 new"))
        );
        let (s, fx) = run(s, [Msg::Key(Key::Char('l'))]);
        assert_eq!((s.screen, fx), (Screen::Log, vec![Effect::Refresh]));

        // Refused before anything was written: nothing written, and said so.
        let (s, _) = run(
            copying_back(),
            [
                phase("refuse", false),
                Msg::Engine(EngineEvent::Failed {
                    step: "refuse".into(),
                    error: "no filesystem with UUID 1234 (the layout's /boot) on vda".into(),
                }),
                Msg::Engine(EngineEvent::Exited {
                    code: Some(1),
                    stderr: String::new(),
                }),
            ],
        );
        assert!(matches!(
            &s.screen,
            Screen::Result { outcome: Outcome::Failed { step, .. }, written: false, .. }
                if step == "refuse"
        ));
        // Cancelled before the copy-back step; not after.
        let (s, fx) = run(
            copying_back(),
            [phase("lvm", false), Msg::Key(Key::Char('c'))],
        );
        assert_eq!(fx, [Effect::Cancel]);
        assert!(matches!(&s.screen, Screen::Running(p) if p.cancelling));
        let (s, fx) = run(
            copying_back(),
            [phase("copy-back", true), Msg::Key(Key::Char('c'))],
        );
        assert!(fx.is_empty());
        assert!(
            s.message
                .as_deref()
                .unwrap()
                .contains("since step copy-back")
        );
        // Killed in the middle: the result says where, and that the disk was written.
        let (s, _) = run(
            s,
            [Msg::Engine(EngineEvent::Exited {
                code: None,
                stderr: "Killed".into(),
            })],
        );
        assert!(matches!(
            &s.screen,
            Screen::Result { outcome: Outcome::Failed { step, error }, written: true, .. }
                if step == "copy-back" && error.contains("the copy-back was killed")
        ));
    }
}
