//! The status screen, as plain text: every disk (name, transport, size, serial,
//! model, state), which one is the primary and the secondary and the primary's state,
//! then start-up notes. A pure function of a [`Status`] value, cut to the console's
//! width.
//!
//! PID 1 shows it while the recovery console starts and when the console keeps
//! crashing; the console draws the same disk lines ([`disk_lines`]).
//!
//! Does not own: gathering the values (`mod.rs`), the menu line (`menu.rs`), the
//! ratatui recovery console (`console`).

use std::fmt::Write;

use super::recorded::{RECOVERY_LABEL, RecordedState};
use crate::disk::{Candidate, DiskRoles, Inventory, PrimaryStatus, Role, SecondaryStatus};

/// Everything the screen shows.
#[derive(Clone, Debug)]
pub struct Status {
    /// `None` when the inventory could not be taken (PID 1 panicked first).
    pub inventory: Option<Inventory>,
    /// The names in `/sys/block` just before the inventory was taken: a disk that
    /// appeared while it was taken is not in it.
    pub block_devices: Vec<String>,
    pub recorded: RecordedState,
    pub roles: Option<DiskRoles>,
    /// One line each: drivers loaded, what went wrong during start-up.
    pub notes: Vec<String>,
}

/// The first line: what a test and a technician look for.
pub const TITLE: &str = "understudy recovery";
/// The status screen's first line, which tests wait for.
pub const HEADING: &str = "understudy recovery - disks and their state";

fn candidate(c: &Candidate) -> String {
    match c {
        Candidate::Blank => "blank".into(),
        Candidate::Foreign => "has other data".into(),
        Candidate::Unreadable(r) => format!("unreadable: {r}"),
    }
}

fn role(r: &Role) -> String {
    match r {
        Role::Primary => "PRIMARY".into(),
        Role::Secondary => "SECONDARY".into(),
        Role::Replacement(c) => format!("replacement candidate ({})", candidate(c)),
        Role::Removable => "removable".into(),
        Role::Ambiguous => "AMBIGUOUS (matches a recorded disk as well as another)".into(),
    }
}

/// The primary's state in the words of the product: healthy, present but
/// unreadable, missing, with the replacement candidates when it is missing.
fn primary_line(roles: &DiskRoles) -> String {
    match &roles.primary {
        PrimaryStatus::Healthy { disk } => format!("Primary: healthy ({disk})"),
        PrimaryStatus::Unreadable { disk, reason } => {
            format!("Primary: present but unreadable ({disk}: {reason})")
        }
        PrimaryStatus::Missing => {
            let candidates: Vec<String> = roles
                .disks
                .iter()
                .filter_map(|d| match &d.role {
                    Role::Replacement(c) => Some(format!("{} ({})", d.disk, candidate(c))),
                    _ => None,
                })
                .collect();
            if candidates.is_empty() {
                "Primary: MISSING; no replacement candidate".into()
            } else {
                format!(
                    "Primary: MISSING; replacement candidate: {}",
                    candidates.join(", ")
                )
            }
        }
        PrimaryStatus::Ambiguous { disks } => {
            format!("Primary: ambiguous, matches {}", disks.join(", "))
        }
        PrimaryStatus::NotRecorded => "Primary: no identity recorded".into(),
    }
}

/// The "Secondary:" line.
pub fn secondary_line(roles: &DiskRoles) -> String {
    match &roles.secondary {
        SecondaryStatus::Present { disk } => format!("Secondary: {disk}"),
        SecondaryStatus::Missing => "Secondary: MISSING".into(),
        SecondaryStatus::Ambiguous { disks } => {
            format!("Secondary: ambiguous, matches {}", disks.join(", "))
        }
        SecondaryStatus::NotRecorded => "Secondary: no identity recorded".into(),
    }
}

/// Cuts `line` to `cols` characters.
fn fit(line: &str, cols: usize) -> String {
    line.chars().take(cols).collect()
}

/// Two lines per disk: name, transport, size, serial and model; then its state and
/// role. The recovery console's status screen shows the same lines.
pub fn disk_lines(inventory: Option<&Inventory>, roles: Option<&DiskRoles>) -> Vec<String> {
    let mut out = Vec::new();
    match inventory {
        None => out.push("Disks: not looked at (see the notes below)".into()),
        Some(inv) if inv.disks.is_empty() => out.push("Disks: none found".into()),
        Some(inv) => {
            for d in &inv.disks {
                let mut line = format!(
                    "{:<8} {:<7} {:>10}  serial {}",
                    d.name,
                    d.transport.to_string(),
                    d.size.human(),
                    d.serial.as_deref().unwrap_or("-")
                );
                if let Some(m) = &d.model {
                    let _ = write!(line, "  model {m}");
                }
                out.push(line);
                let mut state = format!("         {}", d.state);
                if let Some(r) = roles.and_then(|r| r.disks.iter().find(|x| x.disk == d.name)) {
                    let _ = write!(state, "; {}", role(&r.role));
                }
                out.push(state);
            }
        }
    }
    out
}

/// Where the recorded identities came from, or why there are none.
pub fn recorded_line(recorded: &RecordedState) -> String {
    match recorded {
        RecordedState::NoRecoveryFilesystem => {
            format!("Recorded disks: none (no filesystem labelled {RECOVERY_LABEL})")
        }
        RecordedState::Unreadable { device, reason } => {
            format!("Recorded disks: {} unreadable: {reason}", device.display())
        }
        RecordedState::Found { device, .. } => {
            format!("Recorded disks: read from {}", device.display())
        }
    }
}

/// The screen's lines, each at most `cols` characters.
pub fn render(s: &Status, cols: u16) -> Vec<String> {
    let mut out: Vec<String> = vec![HEADING.to_string(), String::new()];
    out.extend(disk_lines(s.inventory.as_ref(), s.roles.as_ref()));
    out.push(String::new());
    out.push(recorded_line(&s.recorded));
    match &s.recorded {
        RecordedState::NoRecoveryFilesystem | RecordedState::Unreadable { .. } => {
            out.push("Primary: unknown, no recorded identities to compare with".into());
        }
        RecordedState::Found { .. } => {
            if let Some(roles) = &s.roles {
                out.push(primary_line(roles));
                out.push(secondary_line(roles));
            }
        }
    }
    if !s.notes.is_empty() {
        out.push(String::new());
        out.extend(s.notes.iter().cloned());
    }
    out.iter().map(|l| fit(l, usize::from(cols))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{
        Bytes, Disk, Identity, LvmStatus, Readability, Recorded, Transport, identify,
    };

    fn disk(name: &str, serial: &str, mib: u64, state: Readability) -> Disk {
        let identity = Identity {
            wwn: None,
            serial: Some(serial.into()),
            model: None,
            size: Bytes(mib << 20),
            logical_sector: Bytes(512),
        };
        Disk::known_as(name, identity, Transport::Virtio, state)
    }

    fn inventory(disks: Vec<Disk>) -> Inventory {
        Inventory {
            disks,
            lvm: LvmStatus::Skipped,
            mounts: Vec::new(),
            swaps: Vec::new(),
            problems: Vec::new(),
        }
    }

    fn two_disks() -> Inventory {
        inventory(vec![
            disk("vda", "US-PRIMARY-0001", 64, Readability::Blank),
            disk("vdb", "US-SECONDARY-0002", 128, Readability::Readable),
        ])
    }

    #[test]
    fn without_recorded_identities_every_disk_is_listed_and_the_primary_unknown() {
        let s = Status {
            inventory: Some(two_disks()),
            block_devices: Vec::new(),
            recorded: RecordedState::NoRecoveryFilesystem,
            roles: None,
            notes: vec!["drivers: 7 loaded".into()],
        };
        let lines = render(&s, 80);
        let text = lines.join("\n");
        assert!(lines[0].starts_with(TITLE));
        assert!(
            text.contains("vda      virtio    64.0 MiB  serial US-PRIMARY-0001"),
            "{text}"
        );
        assert!(text.contains("vdb      virtio   128.0 MiB  serial US-SECONDARY-0002"));
        assert!(text.contains("blank (first MiB all zeros)"));
        assert!(text.contains("no filesystem labelled US_RECOVERY"));
        assert!(text.contains("Primary: unknown"));
        assert!(text.ends_with("drivers: 7 loaded"));
    }

    fn recorded_state(primary: &Disk, secondary: &Disk) -> RecordedState {
        RecordedState::Found {
            device: "/dev/vdb2".into(),
            recorded: Recorded {
                primary: Some(primary.identity.clone()),
                secondary: Some(secondary.identity.clone()),
            },
        }
    }

    fn with_roles(inv: Inventory, recorded: RecordedState) -> Vec<String> {
        let roles = match &recorded {
            RecordedState::Found { recorded, .. } => Some(identify(&inv, recorded)),
            _ => None,
        };
        render(
            &Status {
                inventory: Some(inv),
                block_devices: Vec::new(),
                recorded,
                roles,
                notes: Vec::new(),
            },
            80,
        )
    }

    #[test]
    fn the_primary_is_healthy_unreadable_or_missing_with_candidates() {
        let inv = two_disks();
        let (p, s) = (inv.disks[0].clone(), inv.disks[1].clone());
        let mut healthy = inv.clone();
        healthy.disks[0].state = Readability::Readable;
        let text = with_roles(healthy, recorded_state(&p, &s)).join("\n");
        assert!(text.contains("Primary: healthy (vda)"), "{text}");
        assert!(text.contains("Secondary: vdb"));
        assert!(text.contains("readable; PRIMARY"));
        assert!(text.contains("readable; SECONDARY"));

        let mut broken = inv.clone();
        broken.disks[0].state = Readability::IoError("Input/output error".into());
        let text = with_roles(broken, recorded_state(&p, &s)).join("\n");
        assert!(
            text.contains("Primary: present but unreadable (vda: I/O error: Input/output error)"),
            "{text}"
        );

        // The primary gone, a blank disk in its place.
        let mut swapped = inv.clone();
        swapped.disks[0] = disk("vdc", "NEW-DISK-9", 64, Readability::Blank);
        let text = with_roles(swapped, recorded_state(&p, &s)).join("\n");
        assert!(
            text.contains("Primary: MISSING; replacement candidate: vdc (blank)"),
            "{text}"
        );
        assert!(text.contains("replacement candidate (blank)"));
    }

    #[test]
    fn lines_fit_a_narrow_console_and_a_failed_start_still_renders() {
        let s = Status {
            inventory: None,
            block_devices: Vec::new(),
            recorded: RecordedState::Unreadable {
                device: "/dev/vdb2".into(),
                reason: "reading /run/understudy/recovery/understudy/disks.json: No such file or directory".into(),
            },
            roles: None,
            notes: vec!["PID 1 panicked: boom".into()],
        };
        let lines = render(&s, 40);
        assert!(lines.iter().all(|l| l.chars().count() <= 40), "{lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("Disks: not looked at")));
        assert!(lines.iter().any(|l| l == "PID 1 panicked: boom"));
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("Recorded disks: /dev/vdb2 unread"))
        );
    }
}
