//! The `understudy` binary: parse, dispatch, map the outcome to an exit code. As
//! PID 1 of the recovery image (or started as `…init`) it is init instead.

use std::process::ExitCode;

fn main() -> ExitCode {
    let argv0 = std::env::args().next().unwrap_or_default();
    if understudy::init::is_init(std::process::id(), &argv0) {
        understudy::init::main()
    }
    understudy::cli::main()
}
