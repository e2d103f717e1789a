//! Drawing the console: a pure function of the [`State`] into a ratatui frame. Every
//! screen is a title line, a body and one or two key lines, with no side borders (so
//! a line read off a serial console starts with its text), cut to the frame's width;
//! 16 colours, or only bold and reverse video when colour is off.
//!
//! Does not own: the terminal (`run`), what the keys do (`update`).

use std::time::Duration;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Paragraph, Wrap};

use super::state::{Job, Outcome, Progress, Screen, State};
use crate::disk::Bytes;
use crate::init::{menu, status};
use crate::recovery::images::ImageView;
use crate::recovery::situation::{EmergencyState, PrimaryState, Target};
use crate::restore::events::{CopiedBack, Operation};

/// Text the VM tests wait for, from here where it is drawn.
pub const COUNTDOWN_TEXT: &str = "booting the emergency copy in";
pub const BOOTING_TEXT: &str = "Starting the emergency copy with kexec";
pub const RESTORE_TITLE: &str = "Restore";
pub const COPY_BACK_TITLE: &str = "Copy back";

/// Styles for 16 colours or none.
#[derive(Clone, Copy)]
struct Theme {
    color: bool,
}

impl Theme {
    fn title(self) -> Style {
        if self.color {
            Style::default()
                .fg(Color::White)
                .bg(Color::Blue)
                .add_modifier(Modifier::BOLD)
        } else {
            Style::default().add_modifier(Modifier::REVERSED)
        }
    }
    fn warn(self) -> Style {
        let s = Style::default().add_modifier(Modifier::BOLD);
        if self.color { s.fg(Color::Red) } else { s }
    }
    fn good(self) -> Style {
        if self.color {
            Style::default().fg(Color::Green)
        } else {
            Style::default()
        }
    }
    fn keys(self) -> Style {
        if self.color {
            Style::default().fg(Color::Cyan)
        } else {
            Style::default()
        }
    }
    fn selected(self) -> Style {
        Style::default().add_modifier(Modifier::REVERSED)
    }
}

/// One screen's parts.
struct Page<'a> {
    title: String,
    body: Vec<Line<'a>>,
    keys: Vec<String>,
}

/// Draws `s` into the whole frame.
pub fn view(s: &State, f: &mut Frame) {
    let t = Theme {
        color: s.opts.color,
    };
    let page = page(s, t);
    let keys = u16::try_from(page.keys.len()).unwrap_or(2);
    let [top, body, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(keys),
    ])
    .areas(f.area());
    f.render_widget(Paragraph::new(Line::from(page.title)).style(t.title()), top);
    // Long lines (a reason, an error) wrap rather than lose their end.
    f.render_widget(Paragraph::new(page.body).wrap(Wrap { trim: false }), body);
    let keys: Vec<Line> = page
        .keys
        .into_iter()
        .map(|k| Line::styled(k, t.keys()))
        .collect();
    f.render_widget(Paragraph::new(keys), bottom);
}

fn page(s: &State, t: Theme) -> Page<'static> {
    let back = vec!["[Esc] back".to_string()];
    match &s.screen {
        Screen::Status => Page {
            title: status::HEADING.into(),
            body: status_body(s, t, None),
            keys: vec![menu::LINE_RECOVERY.into(), menu::LINE.into()],
        },
        Screen::Countdown { deadline } => Page {
            title: status::HEADING.into(),
            body: status_body(s, t, Some(deadline.saturating_sub(s.now))),
            keys: vec!["any key: stay in the recovery console".into()],
        },
        Screen::Emergency => emergency_page(s, t),
        Screen::Booting { problem } => {
            let mut body = vec![Line::from(format!("{BOOTING_TEXT}..."))];
            if let EmergencyState::Ready { boot: Some(b), .. } = &s.situation.emergency {
                body.push(Line::from(format!(
                    "  kernel {} initrd {}",
                    b.kernel, b.initrd
                )));
                body.push(Line::from(format!("  command line: {}", b.cmdline)));
            }
            let mut keys = Vec::new();
            if let Some(p) = problem {
                body.push(Line::default());
                body.push(Line::styled(format!("kexec failed: {p}"), t.warn()));
                body.push(Line::from(
                    "GRUB boots the emergency copy by itself while the primary is missing",
                ));
                body.push(Line::from(
                    "and the copy is marked ready: reboot to let it.",
                ));
                keys.push("[r] reboot  [Esc] back".into());
            }
            Page {
                title: "Boot the emergency copy".into(),
                body,
                keys,
            }
        }
        Screen::RestoreImage { sel } => Page {
            title: format!("{RESTORE_TITLE} 1/4: choose the image (newest first)"),
            body: with_message(
                s,
                t,
                s.situation
                    .images
                    .iter()
                    .enumerate()
                    .map(|(i, img)| {
                        let line = image_line(s, img);
                        if i == *sel {
                            Line::styled(format!("> {line}"), t.selected())
                        } else {
                            Line::from(format!("  {line}"))
                        }
                    })
                    .collect(),
            ),
            keys: vec!["[Up/Down] choose  [Enter] next  [Esc] back".into()],
        },
        Screen::RestoreTarget { image, sel } => {
            let mut body = vec![
                Line::from(format!("Image: {}", image.id)),
                Line::from("The disk to write (never the secondary, never removable media):"),
            ];
            for (i, tg) in s.situation.targets.iter().enumerate() {
                let line = format!("{}  ({})", target_line(tg), tg.why);
                body.push(if i == *sel {
                    Line::styled(format!("> {line}"), t.selected())
                } else {
                    Line::from(format!("  {line}"))
                });
            }
            Page {
                title: format!("{RESTORE_TITLE} 2/4: choose the disk"),
                body,
                keys: vec!["[Up/Down] choose  [Enter] see the plan  [Esc] back".into()],
            }
        }
        Screen::RestorePlan { image, target } => Page {
            title: format!("{RESTORE_TITLE} 3/4: the plan"),
            body: plan_body(image, target, t),
            keys: vec!["[Enter] go on to the confirmation  [Esc] back".into()],
        },
        Screen::Confirm {
            job,
            typed,
            refused,
        } => confirm_page(job, typed, refused.as_deref(), t),
        Screen::Running(p) => running_page(s, p, t),
        Screen::Result {
            job,
            outcome,
            written,
            copied,
        } => result_page(job, outcome, *written, copied.as_ref(), t),
        Screen::CopyBack => copy_back_page(s, t),
        Screen::Verify => {
            let mut body = vec![Line::from(
                "Checks every archive's length and SHA-256 against its manifest.",
            )];
            if s.situation.images.is_empty() {
                body.push(Line::from("No images."));
            }
            for img in &s.situation.images {
                body.push(Line::from(format!("  {}", image_line(s, img))));
            }
            if s.verifying > 0 {
                body.push(Line::from(format!("verifying, {} to go...", s.verifying)));
            }
            Page {
                title: "Verify images".into(),
                body,
                keys: vec!["[Enter] verify all  [Esc] back".into()],
            }
        }
        Screen::Import => Page {
            title: "Import an image from USB".into(),
            body: vec![
                Line::from("Import from USB comes with the fleet feature."),
                Line::from("Until then: [s] shell, mount the stick, and copy"),
                Line::from("the image directory onto the images partition"),
                Line::from("(label US-IMAGES)."),
            ],
            keys: back,
        },
        Screen::Log => {
            let rows = 40;
            let start = s.log.len().saturating_sub(rows);
            let mut body: Vec<Line> = s.notes.iter().map(|n| Line::from(n.clone())).collect();
            body.extend(s.log[start..].iter().map(|l| Line::from(l.clone())));
            // The newest lines must show: keep the tail that fits a 24-row screen.
            let keep = body.len().saturating_sub(21);
            Page {
                title: "Log (PID 1's notes, then the console's)".into(),
                body: body.split_off(keep),
                keys: back,
            }
        }
    }
}

/// The status body; with `countdown`, the automatic boot's banner first.
fn status_body(s: &State, t: Theme, countdown: Option<Duration>) -> Vec<Line<'static>> {
    let sit = &s.situation;
    let mut out: Vec<Line> = Vec::new();
    if let Some(left) = countdown {
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        out.push(Line::styled(
            format!("Primary MISSING: {COUNTDOWN_TEXT} {secs} s; press any key to stay"),
            t.warn(),
        ));
    }
    out.extend(
        status::disk_lines(Some(&sit.inventory), sit.roles.as_ref())
            .into_iter()
            .map(Line::from),
    );
    out.push(Line::default());
    out.push(Line::from(status::recorded_line(&sit.recorded)));
    let primary = format!("Primary: {}", sit.primary);
    out.push(match sit.primary {
        PrimaryState::Healthy { .. } => Line::styled(primary, t.good()),
        _ => Line::styled(primary, t.warn()),
    });
    out.push(Line::from(match (&sit.roles, &sit.secondary) {
        (Some(r), _) => status::secondary_line(r),
        (None, Some(d)) => format!("Secondary: {d} (holds the recovery filesystem)"),
        (None, None) => "Secondary: not found".into(),
    }));
    let em = format!("Emergency copy: {}", sit.emergency);
    out.push(if sit.emergency.is_ready() {
        Line::from(em)
    } else {
        Line::styled(em, t.warn())
    });
    out.push(Line::from(
        match (sit.images.first(), &sit.images_problem) {
            (Some(i), _) => format!(
                "Newest image: {} ({} images)",
                image_line(s, i),
                sit.images.len()
            ),
            (None, Some(p)) => format!("Images: none ({p})"),
            (None, None) => "Images: none".into(),
        },
    ));
    out.push(Line::from(format!("Running from: {}", sit.running_from)));
    if s.opts.auto && countdown.is_none() {
        let what = if !sit.primary.is_missing() {
            "the primary is there: nothing to do on my own"
        } else if !sit.emergency.is_ready() {
            "the emergency copy is not ready: waiting for a technician"
        } else {
            "automatic boot cancelled: waiting for a technician"
        };
        out.push(Line::from(format!(
            "Automatic mode (understudy.mode=auto): {what}"
        )));
    }
    if let Some(m) = &s.message {
        out.push(Line::styled(format!("> {m}"), t.warn()));
    }
    if !s.notes.is_empty() {
        out.push(Line::default());
        out.extend(s.notes.iter().map(|n| Line::from(n.clone())));
    }
    out
}

fn with_message(s: &State, t: Theme, mut body: Vec<Line<'static>>) -> Vec<Line<'static>> {
    if let Some(m) = &s.message {
        body.push(Line::default());
        body.push(Line::styled(format!("> {m}"), t.warn()));
    }
    body
}

fn image_line(s: &State, i: &ImageView) -> String {
    if let Some(p) = &i.problem {
        return format!("{}  UNREADABLE: {p}", i.id);
    }
    let verified = match s.verified.get(&i.id) {
        None => "not verified".to_string(),
        Some(Ok(())) => "verified".to_string(),
        Some(Err(e)) => format!("VERIFY FAILED: {e}"),
    };
    format!(
        "{}  {}  {verified}  {}",
        i.id,
        i.bytes.map(Bytes::human).unwrap_or_else(|| "?".into()),
        i.created.as_deref().unwrap_or("?"),
    )
}

fn target_line(tg: &Target) -> String {
    format!(
        "{}  {}  serial {}  {}",
        tg.disk,
        tg.model.as_deref().unwrap_or("(no model)"),
        tg.serial.as_deref().unwrap_or("-"),
        tg.size.human()
    )
}

/// "model M, serial S, size Z": what a destructive action names.
fn described(tg: &Target) -> String {
    format!(
        "model {}, serial {}, size {}",
        tg.model.as_deref().unwrap_or("(none)"),
        tg.serial.as_deref().unwrap_or("(none)"),
        tg.size.human()
    )
}

fn plan_body(image: &ImageView, target: &Target, t: Theme) -> Vec<Line<'static>> {
    let mut body = vec![Line::from(format!(
        "Image {} of {}",
        image.id,
        image.created.as_deref().unwrap_or("?")
    ))];
    for (fs, size) in &image.archives {
        body.push(Line::from(format!(
            "  filesystem {fs:<10} {:>10} of files",
            size.human()
        )));
    }
    body.push(Line::from(format!(
        "Partitions and LVM from the image's layout, fitted to {}.",
        target.size.human()
    )));
    body.push(Line::from(
        "Every archive is verified before the disk is touched.",
    ));
    body.push(Line::default());
    body.push(Line::styled(
        format!("ERASED: {} ({})", target.disk, described(target)),
        t.warn(),
    ));
    if target.partitions.is_empty() {
        body.push(Line::from("  now: no partitions"));
    }
    for p in &target.partitions {
        body.push(Line::from(format!(
            "  now: partition {} {:>10}  {}",
            p.number,
            p.size.human(),
            p.content.as_deref().unwrap_or("(no filesystem)")
        )));
    }
    body
}

/// The job's title: `Restore`, `Copy back`.
fn title(op: Operation) -> &'static str {
    match op {
        Operation::Restore => RESTORE_TITLE,
        Operation::CopyBack => COPY_BACK_TITLE,
    }
}

/// The disk a job writes, as its screens call it.
fn disk_word(op: Operation) -> &'static str {
    match op {
        Operation::Restore => "target",
        Operation::CopyBack => "primary",
    }
}

fn confirm_page(job: &Job, typed: &str, refused: Option<&str>, t: Theme) -> Page<'static> {
    let target = &job.target;
    let mut body = match job.op {
        Operation::Restore => vec![
            Line::styled(
                format!("ERASES {}: {}", target.disk, described(target)),
                t.warn(),
            ),
            Line::from(format!("and writes image {} onto it.", job.image.id)),
        ],
        Operation::CopyBack => vec![
            Line::styled(
                format!("CHANGES FILES ON {}: {}", target.disk, described(target)),
                t.warn(),
            ),
            Line::from("What changed on the emergency copy since its expansion"),
            Line::from("is written onto its filesystems, as named by the layout"),
            Line::from(format!("of image {}.", job.image.id)),
        ],
    };
    body.push(Line::default());
    body.push(Line::from(format!(
        "Type the disk's {} ({}) and press Enter:",
        if target.serial.is_some() {
            "serial number"
        } else {
            "name"
        },
        target.confirm_word()
    )));
    body.push(Line::from(format!("> {typed}_")));
    if let Some(r) = refused {
        body.push(Line::default());
        body.push(Line::styled(
            format!(
                "{r:?} is not {}: nothing was written.",
                target.confirm_word()
            ),
            t.warn(),
        ));
    }
    let (title, keys) = match job.op {
        Operation::Restore => (
            format!("{RESTORE_TITLE} 4/4: confirm"),
            "[Enter] restore  [Esc] back",
        ),
        Operation::CopyBack => (
            format!("{COPY_BACK_TITLE} 2/2: confirm"),
            "[Enter] copy back  [Esc] back",
        ),
    };
    Page {
        title,
        body,
        keys: vec![keys.into()],
    }
}

fn running_page(s: &State, p: &Progress, t: Theme) -> Page<'static> {
    let job = &p.job;
    let mut body = vec![
        Line::from(match job.op {
            Operation::Restore => format!("Image {} onto {}", job.image.id, job.target.disk),
            Operation::CopyBack => format!(
                "Emergency copy onto {} (layout of {})",
                job.target.disk, job.image.id
            ),
        }),
        Line::from(format!("Step: {}", p.step)),
    ];
    if let Some(pct) = p.done.saturating_mul(100).checked_div(p.total) {
        let width = 40u64;
        let filled = p.done.min(p.total).saturating_mul(width) / p.total;
        let filled = usize::try_from(filled).unwrap_or(0);
        body.push(Line::from(format!(
            "[{}{}] {pct}%",
            "#".repeat(filled),
            "-".repeat(40 - filled.min(40))
        )));
        body.push(Line::from(format!(
            "{} of {}",
            Bytes(p.done).human(),
            Bytes(p.total).human()
        )));
        let secs = s.now.saturating_sub(p.step_started).as_secs_f64();
        if secs > 0.5 && p.done > 0 {
            let rate = p.done as f64 / secs;
            let left = p.total.saturating_sub(p.done) as f64 / rate;
            body.push(Line::from(format!(
                "{:.1} MB/s, about {} left",
                rate / 1e6,
                minutes(left)
            )));
        }
    }
    body.push(Line::default());
    let disk = disk_word(job.op);
    let keys = match (&p.no_return_at, p.cancelling) {
        (_, true) => {
            body.push(Line::from(format!(
                "Cancelling: waiting for the {} to stop...",
                job.op.name()
            )));
            vec![String::new()]
        }
        (None, false) => {
            body.push(Line::from(format!(
                "The {disk} is not written yet: cancelling leaves it as it was."
            )));
            vec!["[c] cancel".into()]
        }
        (Some(at), false) => {
            body.push(Line::styled(
                format!("Cannot be cancelled now: the {disk} is written since step {at}."),
                t.warn(),
            ));
            vec!["(no cancelling now)".into()]
        }
    };
    let tail = s.log.len().saturating_sub(4);
    body.extend(s.log[tail..].iter().map(|l| Line::from(l.clone())));
    if let Some(m) = &s.message {
        body.push(Line::styled(format!("> {m}"), t.warn()));
    }
    Page {
        title: format!("{}: in progress", title(job.op)),
        body,
        keys,
    }
}

fn result_page(
    job: &Job,
    outcome: &Outcome,
    written: bool,
    copied: Option<&CopiedBack>,
    t: Theme,
) -> Page<'static> {
    let disk = &job.target.disk;
    let (body, keys) = match (job.op, outcome) {
        (Operation::Restore, Outcome::Done) => (
            vec![
                Line::styled(
                    format!("Restore complete: {} is on {disk}.", job.image.id),
                    t.good(),
                ),
                Line::from("The disk was made bootable as the last step."),
            ],
            "[r] reboot into the primary  [Enter] status",
        ),
        (Operation::CopyBack, Outcome::Done) => {
            let mut body = vec![Line::styled(
                format!("Copy-back complete onto {disk}:"),
                t.good(),
            )];
            match copied {
                Some(c) => {
                    body.push(Line::from(format!(
                        "  {} new, {} changed, {} replaced by another type,",
                        c.new, c.changed, c.type_changed
                    )));
                    body.push(Line::from(format!(
                        "  {} deleted; {} of file data.",
                        c.deleted,
                        Bytes(c.bytes).human()
                    )));
                    if c.notes > 0 {
                        body.push(Line::from(format!(
                            "  {} note(s): conflicts, or paths written without some",
                            c.notes
                        )));
                        body.push(Line::from("  metadata; [l] the log lists them."));
                    }
                }
                None => body.push(Line::from("  (the copy-back did not say what it copied)")),
            }
            body.push(Line::default());
            body.push(Line::from(
                "What the appliance wrote on the emergency copy is on the",
            ));
            body.push(Line::from("primary now."));
            (body, "[r] reboot into the primary  [Enter] status")
        }
        (Operation::Restore, Outcome::Failed { step, error }) => (
            vec![
                Line::styled(format!("Restore FAILED at step {step}:"), t.warn()),
                Line::from(format!("  {error}")),
                Line::default(),
                Line::from(format!(
                    "{disk} is left not bootable. Fix the cause and restore again:"
                )),
                Line::from("the restore can be run again from the start."),
            ],
            "[Enter] status  [l] log",
        ),
        (Operation::CopyBack, Outcome::Failed { step, error }) => {
            let mut body = vec![
                Line::styled(format!("Copy-back FAILED at step {step}:"), t.warn()),
                Line::from(format!("  {error}")),
                Line::default(),
            ];
            if written {
                body.push(Line::from(format!(
                    "{disk} is left as the failure left it: what was copied"
                )));
                body.push(Line::from(
                    "stays. Fix the cause and copy back again to complete it.",
                ));
            } else {
                body.push(Line::from(format!(
                    "Nothing was written to {disk}; it is as it was."
                )));
            }
            (body, "[Enter] status  [l] log")
        }
        (op, Outcome::Cancelled { step }) => (
            vec![
                Line::from(format!("{} cancelled during step {step}.", title(op))),
                Line::from(format!("Nothing was written to {disk}; it is as it was.")),
            ],
            "[Enter] status",
        ),
    };
    Page {
        title: format!("{}: result", title(job.op)),
        body,
        keys: vec![keys.into()],
    }
}

fn copy_back_page(s: &State, t: Theme) -> Page<'static> {
    let mut body = vec![
        Line::from("What the appliance wrote while it ran from the emergency"),
        Line::from("copy (files new, changed or deleted since its expansion)"),
        Line::from("is copied onto the primary, once it is back and healthy."),
        Line::default(),
    ];
    let keys = match s.situation.copy_back() {
        Ok(c) => {
            body.push(Line::from(format!("Primary: {}", target_line(&c.target))));
            body.push(Line::from(format!(
                "Its filesystems by the layout of image {}.",
                c.image.id
            )));
            let em = format!("Emergency copy: {}", s.situation.emergency);
            if s.situation.emergency.is_ready() {
                body.push(Line::from(em));
            } else {
                body.push(Line::styled(em, t.warn()));
                body.push(Line::styled(
                    "Copy back only if the appliance ran from this copy.",
                    t.warn(),
                ));
            }
            body.push(Line::from(
                "Paths remapped at expansion (fstab, GRUB) are left alone.",
            ));
            "[Enter] go on to the confirmation  [Esc] back"
        }
        Err(why) => {
            body.push(Line::styled(format!("Not possible now: {why}."), t.warn()));
            body.push(Line::from(format!(
                "Emergency copy: {}",
                s.situation.emergency
            )));
            "[Esc] back"
        }
    };
    body.push(Line::default());
    body.push(Line::from(
        "A restore copies back by itself, as its copy-back step.",
    ));
    // No message line: the only one this screen gets is its own reason, shown above.
    Page {
        title: format!("{COPY_BACK_TITLE} 1/2: the emergency copy's changes"),
        body,
        keys: vec![keys.into()],
    }
}

fn minutes(secs: f64) -> String {
    let s = Duration::try_from_secs_f64(secs.round())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{}:{:02}", s / 60, s % 60)
}

fn emergency_page(s: &State, t: Theme) -> Page<'static> {
    let mut body = Vec::new();
    let mut keys = vec!["[Esc] back".to_string()];
    match &s.situation.emergency {
        EmergencyState::Ready { boot, .. } => {
            body.push(Line::from(format!(
                "Emergency copy: {}",
                s.situation.emergency
            )));
            match boot {
                Some(b) => {
                    body.push(Line::from(format!("  filesystem UUID={}", b.fs_uuid)));
                    body.push(Line::from(format!(
                        "  kernel {}  initrd {}",
                        b.kernel, b.initrd
                    )));
                    body.push(Line::from(format!("  command line: {}", b.cmdline)));
                    body.push(Line::default());
                    body.push(Line::from(
                        "The appliance then runs from the secondary disk; the console ends.",
                    ));
                    keys = vec!["[Enter] boot it now  [Esc] back".into()];
                }
                None => body.push(Line::styled(
                    "Its GRUB entry could not be read: boot it from GRUB's menu.",
                    t.warn(),
                )),
            }
        }
        EmergencyState::NotReady { .. } => {
            body.push(Line::styled(
                format!("Emergency copy: {}", s.situation.emergency),
                t.warn(),
            ));
            body.push(Line::from(
                "A copy not marked ready may be half-written: not booted.",
            ));
        }
    }
    Page {
        title: "Boot the emergency copy".into(),
        body,
        keys,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::msg::{EngineEvent, Key, Msg};
    use crate::console::state::Options;
    use crate::console::update::update;
    use crate::disk::Readability;
    use crate::recovery::situation::{decide, fixtures};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    /// The screen's text, one line per row, trailing blanks cut.
    fn text(s: &State, w: u16, h: u16) -> String {
        let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
        term.draw(|f| view(s, f)).unwrap();
        let buf = term.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..h {
            let mut line = String::new();
            for x in 0..w {
                line.push_str(buf[(x, y)].symbol());
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    fn state(disks: Vec<crate::disk::Disk>, auto: bool, color: bool) -> State {
        State::new(
            decide(fixtures::facts(disks)),
            Options { auto, color },
            vec!["drivers: 7 loaded (120 ms)".into()],
        )
    }

    fn missing() -> State {
        state(
            vec![
                fixtures::disk("vdc", "NEW-DISK-9", 64, Readability::Blank),
                fixtures::secondary(),
            ],
            false,
            true,
        )
    }

    fn send(mut s: State, msgs: Vec<Msg>) -> State {
        for m in msgs {
            s = update(s, m).0;
        }
        s
    }

    fn keys(k: &str) -> Vec<Msg> {
        k.chars()
            .map(|c| match c {
                '\n' => Msg::Key(Key::Enter),
                c => Msg::Key(Key::Char(c)),
            })
            .collect()
    }

    /// Every screen, at 80x24 and 60x20: its text, which the tests below look into.
    fn every_screen() -> Vec<(&'static str, State)> {
        let healthy = state(
            vec![fixtures::primary(), fixtures::secondary()],
            false,
            true,
        );
        let mut bad = fixtures::primary();
        bad.state = Readability::IoError("Input/output error".into());
        let unreadable = state(vec![bad, fixtures::secondary()], false, false);
        let countdown = send(
            state(
                vec![
                    fixtures::disk("vdc", "NEW-DISK-9", 64, Readability::Blank),
                    fixtures::secondary(),
                ],
                true,
                true,
            ),
            vec![Msg::Tick(Duration::from_millis(3500))],
        );
        let restoring = send(missing(), {
            let mut m = keys("t\n\n\nNEW-DISK-9\n");
            m.push(Msg::Tick(Duration::from_secs(10)));
            m.push(Msg::Engine(EngineEvent::Phase {
                step: "extract".into(),
                point_of_no_return: true,
            }));
            m.push(Msg::Tick(Duration::from_secs(20)));
            m.push(Msg::Engine(EngineEvent::Progress {
                step: "extract".into(),
                done: 100 << 20,
                total: 300 << 20,
            }));
            m
        });
        let failed = send(
            restoring.clone(),
            vec![
                Msg::Engine(EngineEvent::Failed {
                    step: "extract".into(),
                    error: "root.tar.lzo: No space left on device".into(),
                }),
                Msg::Engine(EngineEvent::Exited {
                    code: Some(1),
                    stderr: String::new(),
                }),
            ],
        );
        let copying_back = send(healthy.clone(), {
            let mut m = keys("c\nUS-PRIMARY-0001\n");
            m.push(Msg::Tick(Duration::from_secs(10)));
            m.push(Msg::Engine(EngineEvent::Phase {
                step: "copy-back".into(),
                point_of_no_return: true,
            }));
            m.push(Msg::Tick(Duration::from_secs(12)));
            m.push(Msg::Engine(EngineEvent::Progress {
                step: "copy-back".into(),
                done: 3 << 20,
                total: 4 << 20,
            }));
            m
        });
        let copied_back = send(
            copying_back.clone(),
            vec![
                Msg::Engine(EngineEvent::CopiedBack(CopiedBack {
                    new: 12,
                    changed: 5,
                    type_changed: 1,
                    deleted: 2,
                    bytes: 4 << 20,
                    notes: 1,
                })),
                Msg::Engine(EngineEvent::Done),
                Msg::Engine(EngineEvent::Exited {
                    code: Some(0),
                    stderr: String::new(),
                }),
            ],
        );
        let copy_back_failed = send(
            copying_back.clone(),
            vec![
                Msg::Engine(EngineEvent::Failed {
                    step: "copy-back".into(),
                    error: "./var/log/app.log: No space left on device".into(),
                }),
                Msg::Engine(EngineEvent::Exited {
                    code: Some(1),
                    stderr: String::new(),
                }),
            ],
        );
        let copy_back_refused = send(healthy.clone(), {
            let mut m = keys("c\nUS-PRIMARY-0001\n");
            m.push(Msg::Engine(EngineEvent::Failed {
                step: "mount".into(),
                error: "no filesystem with UUID 3f6c9a57 (the layout's /boot) on vda".into(),
            }));
            m.push(Msg::Engine(EngineEvent::Exited {
                code: Some(1),
                stderr: String::new(),
            }));
            m
        });
        vec![
            ("status healthy", healthy.clone()),
            ("status unreadable, no colour", unreadable),
            ("countdown", countdown),
            ("emergency", send(missing(), keys("e"))),
            ("booting", send(missing(), keys("e\n"))),
            ("restore image", send(missing(), keys("t"))),
            ("restore target", send(missing(), keys("t\n"))),
            ("restore plan", send(missing(), keys("t\n\n"))),
            (
                "restore confirm",
                send(missing(), keys("t\n\n\nNEW-DISK-8\nNEW")),
            ),
            ("restoring", restoring),
            ("restore failed", failed),
            ("copy back, primary missing", send(missing(), keys("c\n"))),
            ("copy back", send(healthy.clone(), keys("c"))),
            ("copy back, copy not marked ready", {
                let mut f = fixtures::facts(vec![fixtures::primary(), fixtures::secondary()]);
                f.env = Some(crate::boot::EnvRead::A {
                    env: crate::boot::Env::with_emergency(None),
                    b_problem: None,
                });
                let s = State::new(decide(f), Options::default(), Vec::new());
                send(s, keys("c"))
            }),
            (
                "copy back confirm",
                send(healthy.clone(), keys("c\nUS-PRIMARY-9\nUS-")),
            ),
            ("copying back", copying_back),
            ("copied back", copied_back),
            ("copy back failed", copy_back_failed),
            ("copy back refused", copy_back_refused),
            ("verify", send(missing(), keys("v"))),
            ("import", send(missing(), keys("u"))),
            ("log", send(missing(), keys("l"))),
        ]
    }

    #[test]
    fn every_screen_renders_its_text_at_80x24_and_60x20() {
        for (name, s) in every_screen() {
            for (w, h) in [(80, 24), (60, 20)] {
                let t = text(&s, w, h);
                let first = t.lines().next().unwrap();
                assert!(!first.trim().is_empty(), "{name} {w}x{h}: no title\n{t}");
                assert!(t.lines().all(|l| l.chars().count() <= usize::from(w)));
                let want: &[&str] = match name {
                    "status healthy" => &[
                        status::HEADING,
                        "Primary: healthy (vda)",
                        "serial US-PRIMARY-0001",
                        "Emergency copy: ready, image 20261120T031500Z-pbx",
                        "Newest image: 20261124T031500Z-pbx",
                        "Running from: the recovery system",
                        "drivers: 7 loaded",
                    ],
                    "status unreadable, no colour" => {
                        &["Primary: present but unreadable (vda: I/O error: Input/output"]
                    }
                    "countdown" => &[COUNTDOWN_TEXT, "7 s", "Primary: MISSING"],
                    "emergency" => &["/vmlinuz", "[Enter] boot it now"],
                    "booting" => &[BOOTING_TEXT],
                    "restore image" => &["> 20261124T031500Z-pbx", "  20261120T031500Z-pbx"],
                    "restore target" => &["> vdc  QEMU HARDDISK  serial NEW-DISK-9", "(blank)"],
                    "restore plan" => &[
                        "ERASED: vdc (model QEMU HARDDISK, serial NEW-DISK-9, size 64.0",
                        "filesystem /",
                        "now: no partitions",
                    ],
                    "restore confirm" => &[
                        "ERASES vdc",
                        "Type the disk's serial number (NEW-DISK-9)",
                        "> NEW_",
                        "\"NEW-DISK-8\" is not NEW-DISK-9: nothing was written.",
                    ],
                    "restoring" => &[
                        "Step: extract",
                        "100.0 MiB of 300.0 MiB",
                        "MB/s, about 0:20 left",
                        "Cannot be cancelled now",
                    ],
                    "restore failed" => &[
                        "Restore FAILED at step extract:",
                        "root.tar.lzo: No space left on device",
                    ],
                    "copy back, primary missing" => &[
                        "Copy back 1/2",
                        "Not possible now: the primary is missing: restore instead ([t]).",
                        "as its copy-back step",
                        "[Esc] back",
                    ],
                    "copy back" => &[
                        "Copy back 1/2",
                        "Primary: vda  QEMU HARDDISK  serial US-PRIMARY-0001  64.0 MiB",
                        "layout of image 20261124T031500Z-pbx",
                        "Emergency copy: ready, image 20261120T031500Z-pbx",
                        "as its copy-back step",
                        "[Enter] go on to the confirmation",
                    ],
                    "copy back, copy not marked ready" => &[
                        "Emergency copy: NOT READY (marked not ready)",
                        "Copy back only if the appliance ran from this copy.",
                        "[Enter] go on to the confirmation",
                    ],
                    "copy back confirm" => &[
                        "Copy back 2/2: confirm",
                        "CHANGES FILES ON vda: model QEMU HARDDISK, serial US-PRIMARY-0001, size 64.0 MiB",
                        "Type the disk's serial number (US-PRIMARY-0001)",
                        "> US-_",
                        "\"US-PRIMARY-9\" is not US-PRIMARY-0001: nothing was written.",
                        "[Enter] copy back  [Esc] back",
                    ],
                    "copying back" => &[
                        "Copy back: in progress",
                        "Emergency copy onto vda (layout of 20261124T031500Z-pbx)",
                        "Step: copy-back",
                        "3.0 MiB of 4.0 MiB",
                        "Cannot be cancelled now: the primary is written since step copy-back.",
                    ],
                    "copied back" => &[
                        "Copy back: result",
                        "Copy-back complete onto vda:",
                        "12 new, 5 changed, 1 replaced by another type,",
                        "2 deleted; 4.0 MiB of file data.",
                        "1 note(s): conflicts",
                        "[r] reboot into the primary",
                    ],
                    "copy back failed" => &[
                        "Copy-back FAILED at step copy-back:",
                        "./var/log/app.log: No space left on device",
                        "vda is left as the failure left it",
                        "copy back again to complete it.",
                    ],
                    "copy back refused" => &[
                        "Copy-back FAILED at step mount:",
                        "(the layout's /boot) on vda",
                        "Nothing was written to vda; it is as it was.",
                    ],
                    "verify" => &["SHA-256", "20261124T031500Z-pbx", "not verified"],
                    "import" => &["comes with the fleet feature"],
                    "log" => &["drivers: 7 loaded"],
                    other => panic!("no expectations for {other}"),
                };
                // Long lines wrap at a space: read the text as one line.
                let flat = t.replace('\n', " ");
                for w8 in want {
                    assert!(flat.contains(w8), "{name} {w}x{h}: no {w8:?} in\n{t}");
                }
            }
        }
    }

    #[test]
    fn the_status_screen_keeps_the_lines_the_vm_tests_read() {
        let t = text(
            &state(
                vec![fixtures::primary(), fixtures::secondary()],
                false,
                true,
            ),
            80,
            24,
        );
        // A disk's line starts at the left edge (no border) and its role follows.
        let disk = regex_lite(&t, "vda      virtio    64.0 MiB  serial US-PRIMARY-0001");
        assert!(disk, "{t}");
        assert!(t.contains("         readable; PRIMARY"), "{t}");
        assert!(t.contains("Recorded disks: read from /dev/vdb3"));
        assert!(t.contains("Secondary: vdb"));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[22], menu::LINE_RECOVERY);
        assert_eq!(lines[23], menu::LINE);
        assert!(!t.contains("understudy.mode=auto"));
        let auto = state(vec![fixtures::primary(), fixtures::secondary()], true, true);
        assert!(text(&auto, 80, 24).contains("Automatic mode (understudy.mode=auto)"));
    }

    fn regex_lite(text: &str, line_start: &str) -> bool {
        text.lines().any(|l| l.starts_with(line_start))
    }

    #[test]
    fn without_colour_only_bold_and_reverse_are_used() {
        let mut bad = fixtures::primary();
        bad.state = Readability::IoError("Input/output error".into());
        for color in [false, true] {
            let s = state(vec![bad.clone(), fixtures::secondary()], false, color);
            let mut term = Terminal::new(TestBackend::new(80, 24)).unwrap();
            term.draw(|f| view(&s, f)).unwrap();
            let buf = term.backend().buffer().clone();
            let colored = buf
                .content()
                .iter()
                .any(|c| c.fg != Color::Reset || c.bg != Color::Reset);
            assert_eq!(colored, color);
            if !color {
                assert!(
                    buf.content()
                        .iter()
                        .any(|c| c.modifier.contains(Modifier::BOLD))
                );
            }
        }
    }
}
