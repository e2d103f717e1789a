//! Fuzz `understudy::archive::walk` (what `list` and `verify` run): an lzop
//! archive as is, or any other bytes as a tar stream in a sound container.
//! `cargo fuzz run archive_walk`; a plain build runs the files it is given.

#![cfg_attr(fuzzing, no_main)]

#[path = "../harness.rs"]
mod harness;

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::archive_walk(data));

#[cfg(not(fuzzing))]
fn main() {
    harness::run_files(harness::archive_walk);
}
