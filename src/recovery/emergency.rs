//! How to start the emergency copy without GRUB: its filesystem, kernel, initrd and
//! command line, read back from the `understudy_emergency` function of the recovery
//! partition's `grub.cfg` (which `boot::render_grub_cfg` writes at expand time), so
//! kexec starts exactly what GRUB would.
//!
//! Does not own: writing that configuration (`boot`), mounting the emergency
//! filesystem or the kexec system calls (`console::run`, `sys`).

use std::fmt;

/// The emergency copy's boot entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmergencyBoot {
    /// The emergency filesystem's UUID (GRUB's `search --fs-uuid`).
    pub fs_uuid: String,
    /// Paths inside that filesystem.
    pub kernel: String,
    pub initrd: String,
    /// The kernel command line, as GRUB passes it.
    pub cmdline: String,
}

impl fmt::Display for EmergencyBoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} and {} on UUID={}, command line: {}",
            self.kernel, self.initrd, self.fs_uuid, self.cmdline
        )
    }
}

/// The function's name in `grub.cfg`.
const FUNCTION: &str = "function understudy_emergency {";

/// The entry from `grub.cfg`'s text, or why it is not there.
pub fn parse(grub_cfg: &str) -> Result<EmergencyBoot, String> {
    let mut lines = grub_cfg.lines().map(str::trim);
    if !lines.any(|l| l == FUNCTION) {
        return Err("grub.cfg has no understudy_emergency function".into());
    }
    let (mut fs_uuid, mut kernel, mut initrd, mut cmdline) = (None, None, None, None);
    for l in lines.take_while(|l| *l != "}") {
        let mut words = l.split_whitespace();
        match words.next() {
            Some("search") => {
                let set_root = l.split_whitespace().any(|w| w == "--set=root");
                if set_root {
                    fs_uuid = l.split_whitespace().last().map(String::from);
                }
            }
            Some("linux") => {
                kernel = words.next().map(String::from);
                cmdline = Some(words.collect::<Vec<_>>().join(" "));
            }
            Some("initrd") => initrd = words.next().map(String::from),
            _ => {}
        }
    }
    match (fs_uuid, kernel, initrd, cmdline) {
        (Some(fs_uuid), Some(kernel), Some(initrd), Some(cmdline)) => Ok(EmergencyBoot {
            fs_uuid,
            kernel,
            initrd,
            cmdline,
        }),
        _ => Err("grub.cfg's understudy_emergency lacks its search, linux or initrd line".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::{EmergencyEntry, SecondaryBoot, render_grub_cfg};

    #[test]
    fn the_entry_round_trips_through_the_rendered_grub_cfg() {
        let b = SecondaryBoot {
            recovery_fs_uuid: "5ec0a3d1-0003-4e5c-9a11-000000000003".into(),
            emergency: EmergencyEntry {
                fs_uuid: "5ec0a3d1-0004-4e5c-9a11-000000000004".into(),
                kernel: "/vmlinuz".into(),
                initrd: "/initrd.img".into(),
                cmdline: vec!["quiet".into(), "systemd.unit=multi-user.target".into()],
            },
            primary: None,
            fallback_timeout_secs: 3,
            menu_timeout_secs: 5,
        };
        let cfg = render_grub_cfg(&b).unwrap();
        let e = parse(&cfg).unwrap();
        assert_eq!(e.fs_uuid, "5ec0a3d1-0004-4e5c-9a11-000000000004");
        assert_eq!(e.kernel, "/vmlinuz");
        assert_eq!(e.initrd, "/initrd.img");
        assert_eq!(
            e.cmdline,
            format!(
                "root=UUID=5ec0a3d1-0004-4e5c-9a11-000000000004 ro {} quiet systemd.unit=multi-user.target",
                crate::boot::CONSOLES
            )
        );
    }

    #[test]
    fn a_config_without_the_entry_says_so() {
        assert!(
            parse("set timeout=5\n")
                .unwrap_err()
                .contains("no understudy_emergency")
        );
        let torn = "function understudy_emergency {\n  linux /vmlinuz ro\n}\n";
        assert!(parse(torn).unwrap_err().contains("lacks"));
    }
}
