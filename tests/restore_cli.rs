//! `understudy restore` refusals on image files: a damaged image is refused in the
//! verify step, before any byte of the target changes; a target that is not a whole
//! disk is refused before the point of no return. The JSON progress stream says which
//! step stopped, as the recovery console reads it. (Restores that write run in a VM:
//! `cargo xtask vm restore-engine`.)

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Scratch, understudy_in};
use sha2::{Digest, Sha256};
use understudy::archive::{self, CaptureOptions};
use understudy::image::manifest::{ArchiveEntry, Manifest};
use understudy::layout::Layout;

const LIMIT: Duration = Duration::from_secs(120);

/// A 64 MiB disk: GPT, one ext4 partition at `/`.
const LAYOUT: &str = r#"{
  "schema": 1,
  "table": {"type": "gpt", "disk_guid": "5a5a5a5a-0000-4000-8000-000000000001"},
  "disk": {"size_bytes": 67108864, "logical_sector": 512, "physical_sector": 512},
  "partitions": [
    {"number": 1, "start_lba": 2048, "size_lba": 126976,
     "type_guid": "0fc63daf-8483-4772-8e79-3d69d8477de4", "name": "root"}
  ],
  "filesystems": [
    {"source": {"partition": 1}, "fstype": "ext4",
     "uuid": "5a5a5a5a-0000-4000-8000-000000000002", "used_bytes": 1048576,
     "mountpoint": "/", "mount_options": []}
  ]
}"#;

/// An image directory `img/` with one archive of a small tree.
fn image(s: &Scratch) -> std::path::PathBuf {
    let tree = s.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(
        tree.join("etc/fstab"),
        "UUID=5a5a5a5a-0000-4000-8000-000000000002 / ext4 defaults 0 1\n",
    )
    .unwrap();
    // Enough data for several lzop blocks, so a flipped byte lands inside one.
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(tree.join("data"), data).unwrap();
    let img = s.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let out = std::fs::File::create(img.join("root.tar.lzo")).unwrap();
    let opts = CaptureOptions {
        excludes: vec![],
        threads: 2,
        one_file_system: true,
        mtime: 0,
    };
    let (_, report) = archive::create(&tree, out, &opts, &mut |_| {}).unwrap();
    let m = Manifest {
        schema: 1,
        id: "img".into(),
        created: "2026-11-25T03:15:00Z".into(),
        host: "test".into(),
        tool_version: "0.1.0".into(),
        layout: Layout::from_json(LAYOUT).unwrap(),
        archives: vec![ArchiveEntry {
            filesystem: "/".into(),
            file: "root.tar.lzo".into(),
            summary: report.summary,
        }],
        excludes: vec![],
    };
    m.check().unwrap();
    std::fs::write(img.join("manifest.json"), m.to_json_pretty()).unwrap();
    img
}

/// A target "disk" full of a pattern, and its digest.
fn target(s: &Scratch) -> (std::path::PathBuf, Vec<u8>) {
    let t = s.join("target.img");
    let bytes: Vec<u8> = (0..64u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&t, &bytes).unwrap();
    (t, digest(&s.join("target.img")))
}

fn digest(p: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(p).unwrap()).to_vec()
}

fn events(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn restore(s: &Scratch, img: &Path, target: &Path) -> common::Run {
    understudy_in(
        &s.path,
        [
            "restore".as_ref(),
            img.as_os_str(),
            "--target".as_ref(),
            target.as_os_str(),
            "--yes".as_ref(),
            "--progress=json".as_ref(),
        ],
        LIMIT,
    )
}

/// Every phase is before the point of no return, and the last event is `failed` at `step`.
fn assert_failed_untouched(r: &common::Run, step: &str) {
    let ev = events(&r.stdout);
    let phases: Vec<&str> = ev
        .iter()
        .filter(|e| e["event"] == "phase")
        .map(|e| e["step"].as_str().unwrap())
        .collect();
    assert!(!phases.is_empty(), "{}", r.text());
    assert!(
        ev.iter()
            .filter(|e| e["event"] == "phase")
            .all(|e| e["point_of_no_return"] == false),
        "a phase past the point of no return started:\n{}",
        r.text()
    );
    let last = ev.last().unwrap();
    assert_eq!(last["event"], "failed", "{}", r.text());
    assert_eq!(last["step"], step, "{}", r.text());
    assert!(!last["error"].as_str().unwrap().contains('\n'));
}

#[test]
fn a_flipped_byte_is_refused_in_verify_and_the_target_is_untouched() {
    let s = Scratch::new("restore-flip");
    let img = image(&s);
    let (t, before) = target(&s);
    let path = img.join("root.tar.lzo");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    let r = restore(&s, &img, &t);
    assert_eq!(r.code, 3, "verification failure exit code\n{}", r.text());
    assert_failed_untouched(&r, "verify");
    assert!(r.stderr.contains("verification failed"), "{}", r.text());
    assert_eq!(digest(&t), before, "the target changed");
}

#[test]
fn a_truncated_archive_is_refused_by_its_length() {
    let s = Scratch::new("restore-trunc");
    let img = image(&s);
    let (t, before) = target(&s);
    let path = img.join("root.tar.lzo");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    let r = restore(&s, &img, &t);
    assert_eq!(r.code, 3, "{}", r.text());
    assert_failed_untouched(&r, "verify");
    let last = events(&r.stdout).pop().unwrap();
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("the manifest says"),
        "{}",
        r.text()
    );
    assert_eq!(digest(&t), before);
}

#[test]
fn a_sound_image_onto_a_file_is_refused_before_the_point_of_no_return() {
    let s = Scratch::new("restore-file");
    let img = image(&s);
    let (t, before) = target(&s);
    let r = restore(&s, &img, &t);
    assert_eq!(r.code, 1, "{}", r.text());
    assert_failed_untouched(&r, "refuse");
    // Verification ran to the end first: progress reached the archive's length.
    let ev = events(&r.stdout);
    let verified = ev
        .iter()
        .rfind(|e| e["event"] == "progress" && e["step"] == "verify")
        .unwrap();
    assert_eq!(verified["done"], verified["total"], "{}", r.text());
    assert!(r.stderr.contains("is not a block device"), "{}", r.text());
    assert_eq!(digest(&t), before);
}

#[test]
fn json_progress_needs_yes() {
    let s = Scratch::new("restore-yes");
    let img = image(&s);
    let (t, before) = target(&s);
    let r = understudy_in(
        &s.path,
        [
            "restore".as_ref(),
            img.as_os_str(),
            "--target".as_ref(),
            t.as_os_str(),
            "--progress=json".as_ref(),
        ],
        LIMIT,
    );
    assert_eq!(r.code, 1, "{}", r.text());
    assert!(r.stderr.contains("needs --yes"), "{}", r.text());
    assert_eq!(digest(&t), before);
}
