//! Fuzz `understudy::lzop::decode`: any bytes, every decoded byte read.
//! `cargo fuzz run lzop_decode`; a plain build runs the files it is given.

#![cfg_attr(fuzzing, no_main)]

#[path = "../harness.rs"]
mod harness;

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::lzop_decode(data));

#[cfg(not(fuzzing))]
fn main() {
    harness::run_files(harness::lzop_decode);
}
