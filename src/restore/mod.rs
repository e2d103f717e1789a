//! The restore engine: putting an image back onto a replacement primary disk
//! (`understudy restore IMAGE --target DISK`, and the recovery console through its
//! JSON progress stream; `docs/restore.md`).
//!
//! Owns: the pure [`plan::RestorePlan`] and its refusals, the thin executor
//! ([`execute::run`]), the progress events ([`events`]), named failpoints
//! ([`failpoint`]), swap headers ([`swap`]), its mounts ([`mount`]), copy-back
//! ([`copyback`]), and copy-back onto a primary that came back healthy
//! ([`copyback_disk`]). Does not own: archives, partition tables, the layout planner, the
//! manifest, or fstab remap rules (their own modules).

pub mod copyback;
pub mod copyback_disk;
pub mod events;
pub mod execute;
pub mod failpoint;
pub mod mount;
pub mod plan;
pub mod swap;

pub use events::{Event, Format, Step};
pub use execute::{Damaged, Options, Report, Stopped, run};
pub use plan::{Refusal, RestorePlan, plan};
