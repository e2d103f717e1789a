//! understudy: point-in-time images of a two-disk appliance's primary disk, an
//! emergency copy that boots when the primary dies, and the restore that puts it back.
//!
//! See ARCHITECTURE.md for the map of modules and the invariants they keep.

pub mod archive;
pub mod cli;
pub mod lzop;
pub mod progress;
