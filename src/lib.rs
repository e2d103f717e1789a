//! understudy: point-in-time images of a two-disk appliance's primary disk, an
//! emergency copy that boots when the primary dies, and the restore that puts it back.
//!
//! See ARCHITECTURE.md for the map of modules and the invariants they keep.

// Test data is built with deliberate narrowing casts.
#![cfg_attr(test, allow(clippy::cast_possible_truncation))]

pub mod archive;
pub mod boot;
pub mod cli;
pub mod cmd;
pub mod cmdline;
pub mod console;
pub mod disk;
pub mod fstab;
pub mod image;
pub mod init;
pub mod initramfs;
pub mod layout;
pub mod lzop;
pub mod partition;
pub mod progress;
pub mod provision;
pub mod recovery;
pub mod remap;
pub mod restore;
pub mod rootfs;
pub mod sys;
pub mod tree;
