//! The `understudy` binary: parse, dispatch, map the outcome to an exit code.

use std::process::ExitCode;

fn main() -> ExitCode {
    understudy::cli::main()
}
