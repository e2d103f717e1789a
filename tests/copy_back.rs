//! Copy-back from the emergency copy onto a restored primary: the index written at
//! expansion, the plan of what changed since, and its application inside the target
//! root. Trees are built here; the "restored" target is the original emergency tree
//! put through the archive engine, as a restore would.

mod common;

use std::fs;
use std::io::Cursor;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use common::Scratch;
use understudy::archive::{self, CaptureOptions, ExtractOptions};
use understudy::restore::copyback::{
    self, CopyBackPlan, INDEX_PATH, Index, IndexError, apply, plan, plan_from, write_index,
};
use understudy::tree::{Bytes, Compare, Entry, Inventory, Kind};

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

/// The emergency tree as expansion leaves it.
fn original(root: &Path) {
    write(root, "etc/fstab", "UUID=emergency / ext4 defaults 0 1\n");
    write(root, "etc/hostname", "aaaa\n");
    write(root, "etc/motd", "welcome\n");
    write(root, "boot/grub/grub.cfg", "set root=emergency\n");
    write(root, "usr/bin/tool", "#!/bin/sh\necho tool\n");
    fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    write(root, "usr/share/doc/readme", "unchanged\n");
    write(root, "usr/share/motd", "shared motd\n");
    write(root, "usr/lib/a", "linked\n");
    fs::hard_link(root.join("usr/lib/a"), root.join("usr/lib/b")).unwrap();
    write(root, "var/log/app.log", "line 1\n");
    write(root, "var/cache/old.bin", "old cache\n");
    write(root, "opt/owned", "ownership changes\n");
    write(root, "opt/plugin/plugin.so", "plugin\n");
    write(root, "opt/plugin/conf/plugin.conf", "conf\n");
    write(root, "data/x", "emergency data\n");
    symlink("../usr/share/doc/readme", root.join("etc/readme-link")).unwrap();
}

/// What happened on the emergency copy while the appliance ran from it.
fn mutate(root: &Path, outside: &Path) {
    // New file in a new directory, with an xattr; a new fifo.
    write(root, "srv/data/new.txt", "made in emergency mode\n");
    xattr::set(root.join("srv/data/new.txt"), "user.origin", b"emergency").unwrap();
    nix::unistd::mkfifo(
        &root.join("srv/data/pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    // Changed content, size and mtime.
    fs::write(root.join("var/log/app.log"), "line 1\nline 2\n").unwrap();
    // Changed content, same size, mtime put back: only the hash tells.
    let host = root.join("etc/hostname");
    let mtime = fs::metadata(&host).unwrap().modified().unwrap();
    fs::write(&host, "bbbb\n").unwrap();
    fs::File::options()
        .write(true)
        .open(&host)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    // Mode only; owner only.
    fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::lchown(root.join("opt/owned"), Some(1234), Some(5678)).unwrap();
    // Both names of a hardlink pair see the new content.
    fs::write(root.join("usr/lib/a"), "linked, changed\n").unwrap();
    // Deleted file, deleted directory tree.
    fs::remove_file(root.join("var/cache/old.bin")).unwrap();
    fs::remove_dir_all(root.join("opt/plugin")).unwrap();
    // A file replaced by a symlink.
    fs::remove_file(root.join("etc/motd")).unwrap();
    symlink("../usr/share/motd", root.join("etc/motd")).unwrap();
    // The remapped files change too, and must not come back.
    fs::write(
        root.join("etc/fstab"),
        "UUID=changed-in-emergency / ext4 defaults 0 1\n",
    )
    .unwrap();
    write(
        root,
        "boot/grub/grub.cfg",
        "set root=changed-in-emergency\n",
    );
    write(root, "boot/grub/new-in-emergency", "x\n");
    // Hostile: a directory replaced by an absolute symlink to a host directory that
    // holds a file of the same name as the one deleted below it.
    fs::remove_dir_all(root.join("data")).unwrap();
    symlink(outside, root.join("data")).unwrap();
    // An absolute symlink to the host's root, new.
    symlink("/", root.join("etc/root-link")).unwrap();
}

/// What the restore left: the original tree through the archive engine, with the
/// target's own remapped fstab.
fn restored(emergency: &Path, target: &Path) {
    let (stream, _) = archive::create(
        emergency,
        Vec::new(),
        &CaptureOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let report = archive::extract(
        Cursor::new(stream),
        target,
        &ExtractOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    // In place, as the remap does not touch the directory's entries here.
    fs::write(
        target.join("etc/fstab"),
        "UUID=target / ext4 defaults 0 1\n",
    )
    .unwrap();
}

const LOOSE: Compare = Compare {
    sparseness: false,
    ..Compare::ALL
};

/// Every difference between the two trees outside `skip` (paths and all below).
fn differences(a: &Path, b: &Path, skip: &[&str]) -> Vec<String> {
    let keep = |inv: Inventory| Inventory {
        entries: inv
            .entries
            .into_iter()
            .filter(|e| {
                !skip.iter().any(|s| {
                    let p = e.path.as_slice();
                    p.starts_with(s.as_bytes()) && (p.len() == s.len() || p[s.len()] == b'/')
                })
            })
            .collect(),
    };
    let a = keep(Inventory::scan(a).unwrap());
    let b = keep(Inventory::scan(b).unwrap());
    a.diff(&b, LOOSE).iter().map(|d| d.to_string()).collect()
}

fn paths(list: &[copyback::Change]) -> Vec<String> {
    list.iter().map(|c| c.path.to_string()).collect()
}

#[test]
fn copy_back_brings_the_target_to_the_emergency_tree_except_remapped_paths() {
    let s = Scratch::new("copy-back");
    let (e, t, outside) = (s.join("emergency"), s.join("target"), s.join("outside"));
    fs::create_dir_all(&e).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("x"), "host file\n").unwrap();
    original(&e);
    restored(&e, &t);
    let index_file = s.join("index.jsonl");
    let index = write_index(&e, &["/etc/fstab", "boot/grub"], &index_file).unwrap();
    assert_eq!(index.own_path, None);
    let unchanged_ino = fs::metadata(t.join("usr/share/doc/readme")).unwrap().ino();
    let sentinel_before = fs::read(outside.join("x")).unwrap();

    mutate(&e, &outside);
    let index = Index::load(&index_file).unwrap();
    let p = plan(&index, &e).unwrap();
    eprintln!("{p}");
    assert_eq!(
        paths(&p.new),
        [
            "./etc/root-link",
            "./srv",
            "./srv/data",
            "./srv/data/new.txt",
            "./srv/data/pipe"
        ]
    );
    for want in [
        "./etc/hostname",
        "./opt/owned",
        "./usr/bin/tool",
        "./usr/lib/a",
        "./usr/lib/b",
        "./var/log/app.log",
    ] {
        assert!(
            paths(&p.changed).contains(&want.to_string()),
            "{want} not changed in\n{p}"
        );
    }
    let tool = p
        .changed
        .iter()
        .find(|c| c.path.to_string() == "./usr/bin/tool")
        .unwrap();
    assert_eq!(tool.what, "mode 0755 vs 0750");
    assert_eq!(paths(&p.type_changed), ["./data", "./etc/motd"]);
    assert_eq!(
        paths(&p.deleted),
        [
            "./data/x",
            "./opt/plugin",
            "./opt/plugin/conf",
            "./opt/plugin/conf/plugin.conf",
            "./opt/plugin/plugin.so",
            "./var/cache/old.bin"
        ]
    );
    assert_eq!(
        paths(&p.excluded),
        [
            "./boot/grub",
            "./boot/grub/grub.cfg",
            "./boot/grub/new-in-emergency",
            "./etc/fstab"
        ]
    );
    assert!(p.skipped.is_empty(), "{p}");
    let removals: Vec<String> = p.removals.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        removals,
        [
            "./data",
            "./etc/motd",
            "./opt/plugin",
            "./var/cache/old.bin"
        ]
    );

    let mut progressed = 0u64;
    let report = apply(&p, &e, &t, &mut |n| progressed += n).unwrap();
    eprintln!("{report}");
    assert!(report.notes.is_empty(), "{:#?}", report.notes);
    assert_eq!(report.bytes, p.bytes);
    assert_eq!(progressed, p.bytes);

    // The target is the emergency tree now, except what expansion remapped.
    let diffs = differences(&e, &t, &["./etc/fstab", "./boot/grub"]);
    assert!(
        diffs.is_empty(),
        "target differs from the emergency tree:\n{}",
        diffs.join("\n")
    );
    assert_eq!(
        fs::read_to_string(t.join("etc/fstab")).unwrap(),
        "UUID=target / ext4 defaults 0 1\n"
    );
    assert_eq!(
        fs::read_to_string(t.join("boot/grub/grub.cfg")).unwrap(),
        "set root=emergency\n"
    );
    assert!(!t.join("boot/grub/new-in-emergency").exists());
    // Nothing outside the target moved, and the symlinks are links, not followed.
    assert_eq!(fs::read(outside.join("x")).unwrap(), sentinel_before);
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
    assert_eq!(fs::read_link(t.join("data")).unwrap(), outside);
    assert_eq!(
        fs::read_link(t.join("etc/root-link")).unwrap(),
        Path::new("/")
    );
    // Copy-back is incremental: an unchanged file was not rewritten.
    assert_eq!(
        fs::metadata(t.join("usr/share/doc/readme")).unwrap().ino(),
        unchanged_ino
    );
    // And the hardlink pair is still one inode.
    assert_eq!(
        fs::metadata(t.join("usr/lib/a")).unwrap().ino(),
        fs::metadata(t.join("usr/lib/b")).unwrap().ino()
    );

    // A second pass has nothing left to copy but the same plan, and changes nothing.
    let again = apply(&p, &e, &t, &mut |_| {}).unwrap();
    assert!(again.notes.is_empty(), "{:#?}", again.notes);
    assert!(differences(&e, &t, &["./etc/fstab", "./boot/grub"]).is_empty());
}

#[test]
fn a_target_that_differs_is_overwritten_inside_the_root_and_the_conflict_named() {
    let s = Scratch::new("copy-back-conflict");
    let (e, t, outside) = (s.join("emergency"), s.join("target"), s.join("outside"));
    fs::create_dir_all(&e).unwrap();
    fs::create_dir_all(&outside).unwrap();
    original(&e);
    restored(&e, &t);
    let index = write_index(&e, &["etc/fstab"], &s.join("index.jsonl")).unwrap();
    fs::write(e.join("var/log/app.log"), "line 1\nline 2\n").unwrap();
    // The target holds an absolute symlink where the index (and the emergency tree)
    // has a directory; and a file of its own where the emergency tree made a new one.
    fs::remove_dir_all(t.join("var/log")).unwrap();
    symlink(&outside, t.join("var/log")).unwrap();
    write(&e, "srv/new.txt", "emergency's\n");
    write(&t, "srv/new.txt", "target's own\n");

    let p = plan(&index, &e).unwrap();
    let report = apply(&p, &e, &t, &mut |_| {}).unwrap();
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "wrote outside the target"
    );
    assert!(fs::symlink_metadata(t.join("var/log")).unwrap().is_dir());
    assert_eq!(
        fs::read_to_string(t.join("var/log/app.log")).unwrap(),
        "line 1\nline 2\n"
    );
    assert_eq!(
        fs::read_to_string(t.join("srv/new.txt")).unwrap(),
        "emergency's\n"
    );
    let named: Vec<String> = report.notes.iter().map(|n| n.to_string()).collect();
    assert!(
        named
            .iter()
            .any(|n| n.starts_with("./var/log: type directory vs symlink")
                && n.ends_with("the emergency copy's version wins")),
        "{named:#?}"
    );
    assert!(
        named
            .iter()
            .any(|n| n.starts_with("./srv/new.txt: the target has a path")),
        "{named:#?}"
    );
    assert!(differences(&e, &t, &["./etc/fstab"]).is_empty());
}

#[test]
fn the_index_excludes_itself_and_an_untouched_tree_plans_nothing() {
    let s = Scratch::new("copy-back-own");
    let e = s.join("emergency");
    fs::create_dir_all(&e).unwrap();
    original(&e);
    let index = write_index(&e, &["/etc/fstab"], &e.join(INDEX_PATH)).unwrap();
    assert_eq!(
        index.own_path,
        Some(Bytes::from("./var/lib/understudy/copy-back-index.jsonl"))
    );
    // The parents the index needed were made before the scan: they are indexed.
    assert!(index.tree.get(b"./var/lib/understudy").is_some());
    let p = plan(&index, &e).unwrap();
    assert!(p.is_empty(), "{p}");
    assert_eq!(
        p,
        CopyBackPlan {
            excluded: p.excluded.clone(),
            ..CopyBackPlan::default()
        }
    );
    assert_eq!(
        p.excluded.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        [
            "./etc/fstab: unchanged",
            "./var/lib/understudy/copy-back-index.jsonl: new in the emergency copy; not copied back"
        ]
    );
    // The technician's entry point finds the index in its usual place.
    let t = s.join("target");
    fs::create_dir_all(&t).unwrap();
    let outcome = copyback::copy_back(&e, &t, None, true, &mut |_| {}).unwrap();
    assert!(outcome.report.is_none());
    assert_eq!(
        fs::read_dir(&t).unwrap().count(),
        0,
        "a dry run wrote to the target"
    );
}

#[test]
fn index_files_round_trip_and_bad_ones_are_refused_with_the_reason() {
    let s = Scratch::new("copy-back-index");
    let e = s.join("emergency");
    fs::create_dir_all(&e).unwrap();
    original(&e);
    fs::write(e.join("name-\u{e9}-\u{1}"), "odd name").unwrap();
    let path = s.join("index.jsonl");
    let index = write_index(&e, &["etc/fstab", "/boot/grub/"], &path).unwrap();
    assert_eq!(Index::load(&path).unwrap(), index);
    assert_eq!(index.tree, Inventory::scan(&e).unwrap());
    assert_eq!(
        index.remapped,
        [Bytes::from("./boot/grub"), Bytes::from("./etc/fstab")]
    );
    let text = fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        index.tree.len() + 1,
        "one line per entry after the header"
    );
    assert!(lines[0].starts_with(r#"{"format":"understudy-copy-back-index","version":1,"#));
    assert!(!s.join(".index.jsonl.tmp").exists());

    let version = |v: &str| {
        let bad = text.replacen(r#""version":1,"#, v, 1);
        Index::read_from(bad.as_bytes()).unwrap_err()
    };
    let err = version(r#""version":2,"#);
    assert!(
        matches!(
            err.downcast_ref::<IndexError>(),
            Some(IndexError::UnsupportedVersion { found: 2 })
        ),
        "{err:#}"
    );
    assert_eq!(
        err.to_string(),
        "copy-back index version 2 is not supported (this understudy reads version 1)"
    );
    let err = version(r#""version":"one","#);
    assert!(matches!(
        err.downcast_ref::<IndexError>(),
        Some(IndexError::NotAnIndex)
    ));
    let err = Index::read_from(&b"{\"schema\":1}\n"[..]).unwrap_err();
    assert!(matches!(
        err.downcast_ref::<IndexError>(),
        Some(IndexError::NotAnIndex)
    ));
    let err = Index::read_from(&b""[..]).unwrap_err();
    assert!(matches!(
        err.downcast_ref::<IndexError>(),
        Some(IndexError::NotAnIndex)
    ));
    // A cut file is caught by the count, even on a line boundary.
    let cut: String = lines[..lines.len() - 3]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    let err = Index::read_from(cut.as_bytes()).unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<IndexError>(),
            Some(IndexError::Truncated { found, .. }) if *found == index.tree.len() as u64 - 3
        ),
        "{err:#}"
    );
    // The whole tree or a path outside it cannot be excluded.
    assert!(write_index(&e, &["/"], &path).is_err());
    assert!(write_index(&e, &["../etc/fstab"], &path).is_err());
    // Through a file: the error names it, and the reason can still be told apart.
    fs::write(
        &path,
        text.replacen(r#""version":1,"#, r#""version":7,"#, 1),
    )
    .unwrap();
    let err = Index::load(&path).unwrap_err();
    assert!(format!("{err:#}").contains("index.jsonl"), "{err:#}");
    assert!(matches!(
        err.downcast_ref::<IndexError>(),
        Some(IndexError::UnsupportedVersion { found: 7 })
    ));
}

fn entry(path: &str, kind: Kind) -> Entry {
    Entry {
        path: path.into(),
        kind,
        mode: if kind == Kind::Dir { 0o755 } else { 0o644 },
        uid: 0,
        gid: 0,
        size: 0,
        sha256: (kind == Kind::File).then(|| "00".repeat(32)),
        target: None,
        rdev: None,
        mtime: 1_700_000_000,
        mtime_nsec: 0,
        xattrs: Default::default(),
        blocks: 0,
        link_group: None,
    }
}

#[test]
fn a_deleted_directory_holding_a_remapped_path_is_kept_and_its_other_paths_removed() {
    let before = vec![
        entry(".", Kind::Dir),
        entry("./etc", Kind::Dir),
        entry("./etc/default", Kind::Dir),
        entry("./etc/default/grub", Kind::File),
        entry("./etc/default/other", Kind::File),
        entry("./etc/default/sub", Kind::Dir),
        entry("./etc/default/sub/f", Kind::File),
    ];
    let index = Index::new(
        Inventory { entries: before },
        vec![Bytes::from("./etc/default/grub")],
        None,
    );
    let now = Inventory {
        entries: vec![entry(".", Kind::Dir), entry("./etc", Kind::Dir)],
    };
    let p = plan_from(&index, &now);
    assert_eq!(paths(&p.skipped), ["./etc/default"]);
    let removals: Vec<String> = p.removals.iter().map(|r| r.to_string()).collect();
    assert_eq!(removals, ["./etc/default/other", "./etc/default/sub"]);
    assert_eq!(paths(&p.excluded), ["./etc/default/grub"]);
    assert!(p.writes.is_empty());
}

#[test]
fn a_change_to_one_name_of_a_hardlink_group_rewrites_the_group_first_name_first() {
    let mut a = entry("./a", Kind::File);
    a.link_group = Some(Bytes::from("./a"));
    let mut z = entry("./d/z", Kind::File);
    z.link_group = Some(Bytes::from("./a"));
    let index = Index::new(
        Inventory {
            entries: vec![
                entry(".", Kind::Dir),
                a.clone(),
                entry("./d", Kind::Dir),
                z.clone(),
            ],
        },
        Vec::new(),
        None,
    );
    let mut z2 = z.clone();
    z2.mode = 0o600; // one inode: both names see it
    let mut a2 = a.clone();
    a2.mode = 0o600;
    let now = Inventory {
        entries: vec![entry(".", Kind::Dir), a2, entry("./d", Kind::Dir), z2],
    };
    let p = plan_from(&index, &now);
    let writes: Vec<(String, Option<String>)> = p
        .writes
        .iter()
        .map(|w| {
            (
                w.entry.path.to_string(),
                w.link_to.as_ref().map(|l| l.to_string()),
            )
        })
        .collect();
    assert_eq!(
        writes,
        [
            ("./a".to_string(), None),
            ("./d".to_string(), None),
            ("./d/z".to_string(), Some("./a".to_string()))
        ]
    );
}

#[test]
fn the_command_line_plans_with_dry_run_and_applies_without() {
    let s = Scratch::new("copy-back-cli");
    let (e, t) = (s.join("emergency"), s.join("target"));
    fs::create_dir_all(&e).unwrap();
    original(&e);
    restored(&e, &t);
    write_index(&e, &["etc/fstab"], &e.join(INDEX_PATH)).unwrap();
    fs::write(e.join("var/log/app.log"), "line 1\nline 2\n").unwrap();
    let (em, ta) = (e.to_str().unwrap(), t.to_str().unwrap());
    let limit = std::time::Duration::from_secs(120);

    let run = common::understudy_in(
        &s.path,
        [
            "copy-back",
            "--emergency",
            em,
            "--target",
            ta,
            "--dry-run",
            "--json",
        ],
        limit,
    );
    assert_eq!(run.code, 0, "{}", run.text());
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        v["plan"]["changed"][0]["path"], "./var/log/app.log",
        "{}",
        run.stdout
    );
    assert_eq!(v["plan"]["bytes"], 14);
    assert!(v["report"].is_null());
    assert_eq!(
        fs::read_to_string(t.join("var/log/app.log")).unwrap(),
        "line 1\n"
    );

    let run = common::understudy_in(
        &s.path,
        ["copy-back", "--emergency", em, "--target", ta],
        limit,
    );
    assert_eq!(run.code, 0, "{}", run.text());
    assert!(
        run.stdout.contains("copied back: 0 removed, "),
        "{}",
        run.text()
    );
    assert_eq!(
        fs::read_to_string(t.join("var/log/app.log")).unwrap(),
        "line 1\nline 2\n"
    );
}

#[test]
fn the_disk_form_stands_apart_and_refuses_before_it_touches_anything() {
    let s = Scratch::new("copy-back-disk");
    let limit = std::time::Duration::from_secs(120);
    let run = |args: &[&str]| common::understudy_in(&s.path, args, limit);

    // The two forms exclude each other, and each needs its pair (clap: exit 2).
    for args in [
        &[
            "copy-back",
            "--disk",
            "/dev/null",
            "--image",
            "i",
            "--emergency",
            "e",
        ][..],
        &[
            "copy-back",
            "--disk",
            "/dev/null",
            "--image",
            "i",
            "--dry-run",
        ],
        &["copy-back", "--disk", "/dev/null"],
        &["copy-back", "--image", "i"],
        &["copy-back", "--emergency", "e"],
        &["copy-back", "--emergency", "e", "--target", "t", "--yes"],
        &["copy-back"],
    ] {
        let r = run(args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.text());
    }
    let help = run(&["copy-back", "--help"]);
    for form in [
        "copy-back --disk DISK --image IMAGE [--yes]",
        "copy-back --emergency DIR --target DIR",
        "asks for the disk's serial number",
    ] {
        assert!(
            help.stdout.contains(form),
            "no {form:?} in\n{}",
            help.stdout
        );
    }

    // The JSON stream is for a caller that asked for the serial itself.
    let r = run(&[
        "copy-back",
        "--disk",
        "/dev/null",
        "--image",
        "i",
        "--progress",
        "json",
    ]);
    assert_eq!(r.code, 1, "{}", r.text());
    assert!(r.stderr.contains("needs --yes"), "{}", r.text());

    // Not a whole disk: refused in the refuse step, the file untouched.
    let disk = s.join("disk.img");
    let pattern: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(&disk, &pattern).unwrap();
    let r = run(&[
        "copy-back",
        "--disk",
        disk.to_str().unwrap(),
        "--image",
        "i",
        "--yes",
        "--progress",
        "json",
    ]);
    assert_eq!(r.code, 1, "{}", r.text());
    let events: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        events[0],
        serde_json::json!({"event": "phase", "step": "refuse", "point_of_no_return": false}),
        "{}",
        r.text()
    );
    let last = events.last().unwrap();
    assert_eq!(last["event"], "failed", "{}", r.text());
    assert_eq!(last["step"], "refuse", "{}", r.text());
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("is not a block device"),
        "{}",
        r.text()
    );
    assert_eq!(fs::read(&disk).unwrap(), pattern);
}
