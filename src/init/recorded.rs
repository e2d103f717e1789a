//! The disk identities provision recorded, as PID 1 finds them: a filesystem labelled
//! [`RECOVERY_LABEL`] on some disk, mounted read-only for the moment of reading
//! [`DISKS_FILE`] (the JSON form of [`disk::Recorded`]).
//!
//! Does not own: writing that file (provision), or comparing identities
//! ([`disk::identify`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::mounts::MountGuard;
use crate::disk::{self, Inventory, Recorded};

/// The label of the recovery partition's filesystem.
pub const RECOVERY_LABEL: &str = "US_RECOVERY";
/// Below the recovery filesystem's root.
pub const DISKS_FILE: &str = "understudy/disks.json";
/// Where PID 1 mounts it for the read.
const MOUNT_POINT: &str = "/run/understudy/recovery";

/// What PID 1 knows of the recorded identities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordedState {
    /// No filesystem labelled [`RECOVERY_LABEL`] on any disk.
    NoRecoveryFilesystem,
    /// Found at `device`, but the file could not be read or understood.
    Unreadable {
        device: PathBuf,
        reason: String,
    },
    Found {
        device: PathBuf,
        recorded: Recorded,
    },
}

/// The recovery filesystem in `inv`: its device node and type, from the first
/// partition (or whole disk) whose signature carries the label.
pub fn find_recovery(inv: &Inventory) -> Option<(PathBuf, String)> {
    for d in &inv.disks {
        for p in &d.partitions {
            if let (Some(sig), Some(path)) = (&p.signature, &p.path)
                && sig.label.as_deref() == Some(RECOVERY_LABEL)
            {
                return Some((path.clone(), sig.kind.clone()));
            }
        }
        if let Some(sig) = &d.signature
            && sig.label.as_deref() == Some(RECOVERY_LABEL)
        {
            return Some((d.path.clone(), sig.kind.clone()));
        }
    }
    None
}

pub fn parse(text: &str) -> Result<Recorded> {
    serde_json::from_str(text).context("parsing the recorded disk identities")
}

/// Finds, mounts, reads and unmounts; never fails, the reason is in the value.
pub fn load(inv: &Inventory) -> RecordedState {
    let Some((device, fstype)) = find_recovery(inv) else {
        return RecordedState::NoRecoveryFilesystem;
    };
    match read_from(&device, &fstype) {
        Ok(recorded) => RecordedState::Found { device, recorded },
        Err(e) => RecordedState::Unreadable {
            device,
            reason: format!("{e:#}"),
        },
    }
}

fn read_from(device: &Path, fstype: &str) -> Result<Recorded> {
    let guard = MountGuard::read_only(device, Path::new(MOUNT_POINT), fstype)?;
    let file = guard.path().join(DISKS_FILE);
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    parse(&text)
}

/// The roles of the present disks, when identities were recorded.
pub fn roles(inv: &Inventory, state: &RecordedState) -> Option<disk::DiskRoles> {
    match state {
        RecordedState::Found { recorded, .. } => Some(disk::identify(inv, recorded)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_file_is_the_json_of_disk_recorded() {
        let r = parse(
            r#"{"primary":{"wwn":null,"serial":"US-PRIMARY-0001","model":null,"size":67108864,"logical_sector":512},
                "secondary":null}"#,
        )
        .unwrap();
        let p = r.primary.unwrap();
        assert_eq!(p.serial.as_deref(), Some("US-PRIMARY-0001"));
        assert_eq!(p.size, disk::Bytes(64 << 20));
        assert!(r.secondary.is_none());
        let err = parse("{\"primary\": 3}").unwrap_err();
        assert!(format!("{err:#}").contains("recorded disk identities"));
    }
}
