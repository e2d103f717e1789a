//! `understudy layout plan` end to end: the documented example layout planned onto
//! several disks, as text, as JSON, and refused with exit code 1 and the size needed.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// docs/layout.md's example, written to a scratch file of its own for each test
/// (tests run in parallel threads of one process), removed when the guard drops.
fn example(test: &str) -> (PathBuf, impl Drop) {
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/layout.md")).unwrap();
    let start = doc.find("```json\n").unwrap() + "```json\n".len();
    let end = start + doc[start..].find("```").unwrap();
    let path = std::env::temp_dir().join(format!(
        "understudy-layout-cli-{test}-{}.json",
        std::process::id()
    ));
    std::fs::write(&path, &doc[start..end]).unwrap();
    (path.clone(), Rm(path))
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_understudy"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn plans_print_as_text_and_json() {
    let (path, _rm) = example("plans");
    let p = path.to_str().unwrap();
    let (code, out, err) = run(&["layout", "plan", p, "--size", "21474836480"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("  3       1052672      40888320    19.5 GiB  lvm                   same"),
        "{out}"
    );

    let (code, out, err) = run(&[
        "layout", "plan", p, "--size", "40G", "--sector", "4096", "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let plan = &v["plan"];
    assert_eq!(plan["sector_size"], 4096);
    assert_eq!(plan["partitions"][2]["change"], "grown");
    assert_eq!(plan["partitions"][2]["start_lba"], 1052672 / 8);
    assert_eq!(plan["lvs"][0]["size_bytes"], 28u64 << 30);
}

#[test]
fn a_disk_too_small_is_refused_with_the_size_needed() {
    let (path, _rm) = example("refused");
    let p = path.to_str().unwrap();
    let (code, out, err) = run(&["layout", "plan", p, "--size", "4G"]);
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert!(err.contains("too small: it has 4.0 GiB (4294967296 bytes) but this layout needs at least 6.7 GiB (7195328512 bytes)"), "{err}");

    let (code, out, _) = run(&["layout", "plan", p, "--size", "4G", "--json"]);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["refused"]["kind"], "target_too_small");
    assert_eq!(v["refused"]["needed_bytes"], 7195328512u64);

    let (code, _, err) = run(&["layout", "plan", p, "--size", "4G", "--sector", "1024"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("unsupported logical sector size 1024"),
        "{err}"
    );
}
