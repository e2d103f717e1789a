//! Project tasks: `cargo xtask <corpus|bench|test|demo>` (or `./x ...`).

mod appliance;
mod bench;
mod corpus;
mod demo;
mod images;
mod initramfs;
mod kernel;
mod qemu;
mod run;
mod test;
mod vmtest;

use std::path::PathBuf;

use anyhow::{Result, bail};

const USAGE: &str = "usage: cargo xtask <command> [args]

commands:
  corpus                    build (if missing) the debootstrap tree; print its path
  bench [--runs N] [--quick]  time understudy against tar+lzop on the corpus
  bench --boot              time QEMU start to the recovery console against a trivial /init
  bench --restore [--runs N]  restore throughput in a VM against lzop -dc | tar -x
  test                      fmt check, clippy -D warnings, cargo test (what CI runs)
  demo [--no-primary|--blank-primary] [--uefi]
                            boot the demo appliance pair in QEMU on this terminal
  demo --archive            archive round trip on the corpus, with a summary
  vm [SCENARIO...]          boot the QEMU harness's proof scenarios (--list names them)
  compare A B               check two trees match (contents, modes, owners, links)
  kernel                    fetch and unpack Debian's kernel into target/kernel/; print its paths
  initramfs [--smoke] [--json]  build target/recovery/{initrd.img,vmlinuz}; --smoke boots a test image";

fn main() {
    if let Err(e) = real_main() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        println!("{USAGE}");
        return Ok(());
    };
    match cmd.as_str() {
        "corpus" => corpus::main(rest),
        "bench" => bench::main(rest),
        "test" => test::main(rest),
        "demo" => demo::main(rest),
        "vm" => vmtest::main(rest),
        "compare" => demo::compare_main(rest),
        "kernel" => kernel::main(rest),
        "initramfs" => initramfs::main(rest),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}

/// The workspace root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// Cargo's target directory (honours CARGO_TARGET_DIR).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                repo_root().join(d)
            }
        }
        _ => repo_root().join("target"),
    }
}

/// Where `cargo build --release` puts binary `name` (.cargo/config.toml sets
/// build.target, so it lands under the target triple).
pub fn release_bin(name: &str) -> PathBuf {
    target_dir()
        .join("x86_64-unknown-linux-gnu")
        .join("release")
        .join(name)
}
