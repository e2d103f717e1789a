//! The text menu under the status screen: its line and the pure mapping from a key
//! to an action; and the recovery console's menu lines, so tests read both from here.
//!
//! Does not own: carrying the action out (`mod.rs`).

/// What a key asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Shell,
    Reboot,
    PowerOff,
    /// Take the inventory again (a disk was plugged in).
    Refresh,
    /// Show the end of PID 1's log.
    Log,
}

/// The plain menu, also the last line of the recovery console's status screen (tests
/// wait for it).
pub const LINE: &str = "[s] shell  [r] reboot  [p] power off  [i] refresh  [l] log";

/// The recovery console's actions, the line above [`LINE`] on its status screen
/// (`console::update` maps these keys; the plain menu does not offer them).
pub const LINE_RECOVERY: &str =
    "[e] boot emergency copy  [t] restore  [c] copy back  [v] verify  [u] USB import";

/// The action for a key, either case; anything else (Enter, arrows, noise on the
/// line) does nothing.
pub fn action(key: u8) -> Option<Action> {
    match key.to_ascii_lowercase() {
        b's' => Some(Action::Shell),
        b'r' => Some(Action::Reboot),
        b'p' => Some(Action::PowerOff),
        b'i' => Some(Action::Refresh),
        b'l' => Some(Action::Log),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_listed_key_maps_to_its_action_and_nothing_else_does() {
        assert_eq!(action(b's'), Some(Action::Shell));
        assert_eq!(action(b'S'), Some(Action::Shell));
        assert_eq!(action(b'r'), Some(Action::Reboot));
        assert_eq!(action(b'p'), Some(Action::PowerOff));
        assert_eq!(action(b'i'), Some(Action::Refresh));
        assert_eq!(action(b'l'), Some(Action::Log));
        for k in [b'\r', b'\n', 0x1b, b'[', b'A', b'x', b' ', 0] {
            assert_eq!(action(k), None, "key {k:#x}");
        }
        // Every key the line offers is one `action` knows.
        for k in LINE.split('[').skip(1).filter_map(|p| p.bytes().next()) {
            assert!(action(k).is_some(), "{}", char::from(k));
        }
    }
}
