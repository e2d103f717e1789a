//! The console's logic: `update(State, Msg) -> (State, Vec<Effect>)`, pure. Keys move
//! between screens; the only effect that writes a disk ([`Effect::StartRestore`])
//! comes from the confirmation screen after the target's serial number was typed.
//!
//! Does not own: carrying effects out (`run`), drawing (`view`).

use std::path::PathBuf;

use super::msg::{EngineEvent, Key, Msg};
use super::state::{Outcome, Progress, Screen, State};
use crate::recovery::emergency::EmergencyBoot;
use crate::recovery::situation::EmergencyState;

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
    /// SIGTERM to the restore (only before the point of no return).
    CancelRestore,
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
            Key::Enter => Screen::RestoreConfirm {
                image,
                target,
                typed: String::new(),
                refused: None,
            },
            _ => Screen::RestorePlan { image, target },
        },
        Screen::RestoreConfirm {
            image,
            target,
            mut typed,
            refused,
        } => match k {
            Key::Esc => Screen::RestorePlan { image, target },
            Key::Backspace => {
                typed.pop();
                Screen::RestoreConfirm {
                    image,
                    target,
                    typed,
                    refused,
                }
            }
            Key::Char(c) if !c.is_control() && typed.chars().count() < 64 => {
                typed.push(c);
                Screen::RestoreConfirm {
                    image,
                    target,
                    typed,
                    refused,
                }
            }
            Key::Enter if typed == target.confirm_word() => {
                s.log(format!(
                    "restore {} onto {} (serial {}) confirmed",
                    image.id,
                    target.disk,
                    target.serial.as_deref().unwrap_or("-")
                ));
                fx.push(Effect::StartRestore {
                    image: image.dir.clone(),
                    target: target.path.clone(),
                });
                Screen::Restoring(Box::new(Progress {
                    image,
                    target,
                    step: "starting".into(),
                    step_started: s.now,
                    done: 0,
                    total: 0,
                    no_return_at: None,
                    cancelling: false,
                    outcome: None,
                }))
            }
            Key::Enter => {
                s.log(format!(
                    "restore refused: typed {typed:?}, the disk's serial is {:?}",
                    target.confirm_word()
                ));
                Screen::RestoreConfirm {
                    image,
                    target,
                    typed: String::new(),
                    refused: Some(typed),
                }
            }
            _ => Screen::RestoreConfirm {
                image,
                target,
                typed,
                refused,
            },
        },
        Screen::Restoring(mut p) => {
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
                    fx.push(Effect::CancelRestore);
                }
            }
            Screen::Restoring(p)
        }
        Screen::RestoreResult {
            image,
            target,
            outcome,
        } => match k {
            Key::Char('r' | 'R') if outcome == Outcome::Done => {
                s.log("reboot into the restored primary");
                fx.push(Effect::Reboot);
                Screen::RestoreResult {
                    image,
                    target,
                    outcome,
                }
            }
            Key::Enter | Key::Esc => {
                fx.push(Effect::Refresh);
                Screen::Status
            }
            _ => Screen::RestoreResult {
                image,
                target,
                outcome,
            },
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
        Screen::CopyBack | Screen::Import | Screen::Log => match k {
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
    let Screen::Restoring(p) = &mut s.screen else {
        s.log(format!("restore engine (no restore shown): {e:?}"));
        return;
    };
    let mut lines = Vec::new();
    let mut finished = None;
    match e {
        EngineEvent::Phase {
            step,
            point_of_no_return,
        } => {
            lines.push(format!("restore: step {step}"));
            if point_of_no_return && p.no_return_at.is_none() {
                lines.push(format!("restore: point of no return at {step}"));
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
        EngineEvent::Note(t) => lines.push(format!("restore: {t}")),
        EngineEvent::CopiedBack(c) => lines.push(format!("restore: copied back: {c}")),
        EngineEvent::Unparsed(t) => lines.push(format!("restore said: {t}")),
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
                        Some(c) => format!("the restore exited with code {c}: {stderr}"),
                        None => format!("the restore was killed: {stderr}"),
                    },
                },
            };
            finished = Some((p.image.id.clone(), p.target.clone(), outcome));
        }
    }
    for l in lines {
        s.log(l);
    }
    if let Some((image, target, outcome)) = finished {
        s.log(match &outcome {
            Outcome::Done => format!("restore of {image} onto {} complete", target.disk),
            Outcome::Failed { step, error } => {
                format!("restore FAILED at step {step}: {error}")
            }
            Outcome::Cancelled { step } => format!("restore cancelled during step {step}"),
        });
        s.screen = Screen::RestoreResult {
            image,
            target,
            outcome,
        };
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
        assert!(
            matches!(s.screen, Screen::RestoreConfirm { .. }),
            "{:?}",
            s.screen
        );
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
        let Screen::Restoring(p) = &s.screen else {
            panic!("{:?}", s.screen)
        };
        assert_eq!(p.image.id, "20261124T031500Z-pbx", "the newest image first");
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
        let Screen::RestoreConfirm { typed, refused, .. } = &s.screen else {
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
    fn no_screen_but_the_confirmation_starts_a_restore() {
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
        let mut frontier = vec![missing(false)];
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
                        !matches!(e, Effect::StartRestore { .. }),
                        "{k:?} on {before:?} started a restore"
                    );
                }
                if !matches!(
                    n.screen,
                    Screen::RestoreConfirm { .. } | Screen::Restoring(_)
                ) && std::mem::discriminant(&n.screen) != std::mem::discriminant(&before)
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
        assert_eq!(fx, [Effect::CancelRestore]);
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
            Screen::RestoreResult { outcome: Outcome::Cancelled { step }, .. } if step == "verify"
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
        assert_eq!(
            s.screen,
            Screen::RestoreResult {
                image: "20261124T031500Z-pbx".into(),
                target: s.situation.targets[0].clone(),
                outcome: Outcome::Failed {
                    step: "mkfs".into(),
                    error: "mkfs.ext4 /dev/vdc2: exit 1".into()
                }
            }
        );
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
            Screen::RestoreResult { outcome: Outcome::Failed { step, error }, .. }
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
            Screen::RestoreResult {
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
}
