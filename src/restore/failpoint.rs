//! Named failpoints for the power-cut tests: at the end of each restore step, a build
//! with the cargo feature `failpoints` reboots without syncing when the kernel command
//! line says `understudy.failpoint=STEP` (`docs/restore.md`). Other builds compile
//! [`hit`] to nothing, so no command line can cut a customer's restore short.
//!
//! Owns: the key and its matching ([`armed`]). Does not own: rebooting (`sys`).

use super::events::Step;
use crate::cmdline::Cmdline;

/// The kernel command-line key.
pub const KEY: &str = "understudy.failpoint";

/// Whether `cmdline` (the text of `/proc/cmdline`) arms the failpoint of `step`.
pub fn armed(cmdline: &str, step: Step) -> bool {
    Cmdline::parse(cmdline.trim()).get(KEY) == Some(step.name())
}

/// The failpoint at the end of `step`: reboots without syncing when armed, in builds
/// with the `failpoints` feature; does nothing otherwise.
pub fn hit(step: Step) {
    #[cfg(feature = "failpoints")]
    if let Ok(text) = std::fs::read_to_string("/proc/cmdline")
        && armed(&text, step)
    {
        eprintln!(
            "understudy: failpoint {}: rebooting without sync",
            step.name()
        );
        let e = crate::sys::reboot_without_sync();
        eprintln!("understudy: failpoint {}: reboot failed: {e}", step.name());
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = step;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_step_is_armed() {
        let line = "console=ttyS0 understudy.failpoint=extract quiet\n";
        assert!(armed(line, Step::Extract));
        assert!(!armed(line, Step::Mkfs));
        assert!(!armed("console=ttyS0", Step::Extract));
        assert!(armed("understudy.failpoint=copy-back", Step::CopyBack));
    }
}
