//! The `understudy` binary: parse, dispatch, map the outcome to an exit code. As
//! PID 1 of the recovery image it is init instead.

use std::process::ExitCode;

fn main() -> ExitCode {
    if understudy::init::is_init(std::process::id()) {
        understudy::init::main()
    }
    understudy::cli::main()
}
