//! `cargo xtask test`: what CI runs (`.ci/run` -> `./x test`).
//!
//! fmt check, clippy with warnings denied, then the whole workspace's tests
//! with the corpus built and its path in `UNDERSTUDY_CORPUS`, then the VM
//! scenarios (`vmtest.rs`). Every step runs even after an earlier one
//! failed, so one CI run shows all that is wrong; the exit status is non-zero
//! if any failed.

use anyhow::{Result, bail};

use crate::corpus;
use crate::repo_root;
use crate::run::Cmd;
use crate::vmtest;

pub fn main(args: &[String]) -> Result<()> {
    if let Some(a) = args.first() {
        bail!("test takes no arguments (got `{a}`)");
    }
    let root = repo_root();
    let mut failed: Vec<String> = Vec::new();

    let mut step = |name: &str, cmd: Cmd| -> Result<()> {
        eprintln!("\n==> {name}: {cmd}");
        if !cmd.run_ok()? {
            eprintln!("==> {name}: FAILED");
            failed.push(name.to_string());
        }
        Ok(())
    };

    step(
        "fmt",
        Cmd::new("cargo")
            .args(["fmt", "--all", "--", "--check"])
            .dir(&root),
    )?;
    step(
        "clippy",
        Cmd::new("cargo")
            .args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
            .dir(&root),
    )?;

    eprintln!("\n==> corpus");
    match corpus::ensure() {
        Ok(path) => {
            eprintln!("==> corpus: {}", path.display());
            step(
                "cargo test",
                Cmd::new("cargo")
                    .args(["test", "--workspace"])
                    .env("UNDERSTUDY_CORPUS", &path)
                    .dir(&root),
            )?;
        }
        Err(e) => {
            eprintln!("==> corpus: FAILED: {e:#}");
            eprintln!("==> cargo test: not run (it needs the corpus)");
            failed.push("corpus".into());
            failed.push("cargo test (not run)".into());
        }
    }

    eprintln!("\n==> vm");
    match vmtest::run(&[]) {
        Ok(t) if t.failed == 0 => eprintln!("==> vm: {} scenarios passed", t.passed),
        Ok(t) => {
            eprintln!(
                "==> vm: FAILED: {} of {} scenarios",
                t.failed,
                t.failed + t.passed
            );
            failed.push("vm".into());
        }
        Err(e) => {
            eprintln!("==> vm: FAILED: {e:#}");
            failed.push("vm".into());
        }
    }

    if failed.is_empty() {
        eprintln!("\n==> all steps passed: fmt, clippy, corpus, cargo test, vm");
        Ok(())
    } else {
        bail!("failed steps: {}", failed.join(", "))
    }
}
