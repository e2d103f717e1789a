//! The recovery console: the technician's screens (status, boot the emergency copy,
//! restore, copy back, verify, import, log) over ratatui and crossterm, shaped as
//! state ([`state`]), a closed set of messages ([`msg`]), a pure update that returns
//! effects ([`update`]), a pure view ([`view`]), and a thin executor ([`run`]) that
//! owns the terminal and carries the effects out. `docs/console.md` describes it.
//!
//! Does not own: what the situation is (`recovery`), restoring (the `understudy
//! restore` child process, whose JSON stream arrives as messages), starting or
//! restarting the console under PID 1 (`init::supervise`).

pub mod msg;
pub mod run;
pub mod state;
pub mod update;
pub mod view;

pub use run::{Config, main};
