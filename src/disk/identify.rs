//! Which present disk is which: the pure comparison of the disks in an [`Inventory`]
//! with the identities provision recorded for the primary and the secondary.
//!
//! Does not own: storing or loading the recorded identities (provision and the
//! recovery config do), or acting on the result (the console and restore do).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Bytes, Disk, Inventory, Readability, Transport};

/// What stays true of a disk across boots, cables and ports: the WWN, else the serial
/// number, else the model with the size and sector size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub wwn: Option<String>,
    pub serial: Option<String>,
    pub model: Option<String>,
    pub size: Bytes,
    pub logical_sector: Bytes,
}

/// How sure a match is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchedBy {
    /// Model, size and sector size only: two disks of one make and size look alike.
    ModelAndSize,
    Serial,
    Wwn,
}

impl Identity {
    /// Whether `other` is the same disk, and by what. The strongest identifier both
    /// sides have decides, so a different WWN is a different disk even if the serial
    /// numbers agree, and two serials that differ are two disks even if the model and
    /// size agree.
    pub fn matches(&self, other: &Identity) -> Option<MatchedBy> {
        if let (Some(a), Some(b)) = (&self.wwn, &other.wwn) {
            return (a.eq_ignore_ascii_case(b)).then_some(MatchedBy::Wwn);
        }
        if let (Some(a), Some(b)) = (&self.serial, &other.serial) {
            let same_model = match (&self.model, &other.model) {
                (Some(x), Some(y)) => x == y,
                _ => true,
            };
            return (a == b && same_model).then_some(MatchedBy::Serial);
        }
        (self.model == other.model
            && self.size == other.size
            && self.logical_sector == other.logical_sector)
            .then_some(MatchedBy::ModelAndSize)
    }
}

/// The identities provision stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    pub primary: Option<Identity>,
    pub secondary: Option<Identity>,
}

/// Why a disk that is neither primary nor secondary could take the primary's place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Candidate {
    /// Nothing on it: no partition table, no signature.
    Blank,
    /// It carries data from elsewhere (a partition table or signatures); restoring
    /// onto it erases that.
    Foreign,
    /// It cannot be read; restoring onto it would likely fail.
    Unreadable(Readability),
}

/// The part a present disk plays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", content = "detail", rename_all = "snake_case")]
pub enum Role {
    Primary,
    Secondary,
    Replacement(Candidate),
    /// USB sticks, card readers and other removable media: never a restore target
    /// unless chosen by hand.
    Removable,
    /// It matches a recorded identity as well as another disk does, so which one is
    /// meant cannot be told.
    Ambiguous,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRole {
    pub disk: String,
    pub path: PathBuf,
    pub role: Role,
    pub matched_by: Option<MatchedBy>,
}

/// The primary disk's state, as the recovery console reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PrimaryStatus {
    Healthy {
        disk: String,
    },
    /// Present (its identity matches) but its contents cannot be used.
    Unreadable {
        disk: String,
        reason: Readability,
    },
    Missing,
    /// Several disks match the recorded identity equally well.
    Ambiguous {
        disks: Vec<String>,
    },
    /// No identity was recorded.
    NotRecorded,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SecondaryStatus {
    Present { disk: String },
    Missing,
    Ambiguous { disks: Vec<String> },
    NotRecorded,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRoles {
    pub primary: PrimaryStatus,
    pub secondary: SecondaryStatus,
    /// Every present disk, in inventory order.
    pub disks: Vec<DiskRole>,
}

/// Which disks a recorded identity points at.
enum Found {
    NotRecorded,
    None,
    One(usize),
    Many(Vec<usize>),
}

impl Found {
    fn contains(&self, i: usize) -> bool {
        match self {
            Found::One(j) => *j == i,
            Found::Many(v) => v.contains(&i),
            _ => false,
        }
    }
}

/// The disks that match `id` best: all of those with the strongest match.
fn find(inv: &Inventory, id: Option<&Identity>) -> (Found, Option<MatchedBy>) {
    let Some(id) = id else {
        return (Found::NotRecorded, None);
    };
    let scored: Vec<(usize, MatchedBy)> = inv
        .disks
        .iter()
        .enumerate()
        .filter_map(|(i, d)| Some((i, id.matches(&d.identity)?)))
        .collect();
    let best = scored.iter().map(|&(_, m)| m).max();
    let idx: Vec<usize> = scored
        .iter()
        .filter(|&&(_, m)| Some(m) == best)
        .map(|&(i, _)| i)
        .collect();
    let found = match idx.as_slice() {
        [] => Found::None,
        [i] => Found::One(*i),
        _ => Found::Many(idx),
    };
    (found, best)
}

fn is_removable(d: &Disk) -> bool {
    d.removable || d.transport == Transport::Usb
}

fn candidate(d: &Disk) -> Candidate {
    match &d.state {
        Readability::Blank => Candidate::Blank,
        Readability::IoError(_) | Readability::NoMedium => Candidate::Unreadable(d.state.clone()),
        _ => Candidate::Foreign,
    }
}

/// Classify every present disk against the recorded identities.
pub fn identify(inv: &Inventory, rec: &Recorded) -> DiskRoles {
    let (mut prim, prim_by) = find(inv, rec.primary.as_ref());
    let (mut sec, sec_by) = find(inv, rec.secondary.as_ref());
    // One disk matching both records (two disks of one model and size, without
    // serial numbers) cannot be told apart: never guess which one to overwrite.
    if let (Found::One(a), Found::One(b)) = (&prim, &sec) {
        if a == b {
            prim = Found::Many(vec![*a]);
            sec = Found::Many(vec![*b]);
        }
    }
    let names = |v: &[usize]| v.iter().map(|&i| inv.disks[i].name.clone()).collect();

    let primary = match &prim {
        Found::NotRecorded => PrimaryStatus::NotRecorded,
        Found::None => PrimaryStatus::Missing,
        Found::One(i) => {
            let d = &inv.disks[*i];
            if d.state.is_readable() {
                PrimaryStatus::Healthy {
                    disk: d.name.clone(),
                }
            } else {
                PrimaryStatus::Unreadable {
                    disk: d.name.clone(),
                    reason: d.state.clone(),
                }
            }
        }
        Found::Many(v) => PrimaryStatus::Ambiguous { disks: names(v) },
    };
    let secondary = match &sec {
        Found::NotRecorded => SecondaryStatus::NotRecorded,
        Found::None => SecondaryStatus::Missing,
        Found::One(i) => SecondaryStatus::Present {
            disk: inv.disks[*i].name.clone(),
        },
        Found::Many(v) => SecondaryStatus::Ambiguous { disks: names(v) },
    };

    let disks = inv
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let (role, matched_by) = match (&prim, &sec) {
                (Found::One(j), _) if *j == i => (Role::Primary, prim_by),
                (_, Found::One(j)) if *j == i => (Role::Secondary, sec_by),
                (p, _) if p.contains(i) => (Role::Ambiguous, prim_by),
                (_, s) if s.contains(i) => (Role::Ambiguous, sec_by),
                _ if is_removable(d) => (Role::Removable, None),
                _ => (Role::Replacement(candidate(d)), None),
            };
            DiskRole {
                disk: d.name.clone(),
                path: d.path.clone(),
                role,
                matched_by,
            }
        })
        .collect();
    DiskRoles {
        primary,
        secondary,
        disks,
    }
}
