//! Fidelity of archives: a tree that went through an archive must come back entry by
//! entry the same, compared with `understudy::tree::Inventory`, in three directions:
//!
//! * a. us → us: `understudy archive create`, then `understudy archive extract`;
//! * b. us → GNU tar: `lzop -dc A | tar --xattrs … -xpf -` (plus `lzop -t`, and
//!   `tar -tvf` listing as many members as `understudy archive list`);
//! * c. GNU tar → us: `tar --xattrs … -cpf - | lzop`, then `understudy archive
//!   extract`; without `--sparse`, and with it in each of GNU's sparse formats
//!   (pax 1.0, the default, 0.1 and 0.0, and old GNU with `--format=gnu`).
//!
//! On a synthetic tree made here with every kind of entry and metadata (as root: it
//! needs mknod, chown and `trusted.*`), and on the debootstrapped Debian tree named by
//! `UNDERSTUDY_CORPUS` (`cargo xtask corpus`) when that is set. Run with
//! `--nocapture` to see one summary line per round trip and GNU tar's warnings.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;
use understudy::tree::{Compare, Inventory, Kind};

const BIN: &str = env!("CARGO_BIN_EXE_understudy");

/// GNU tar's flags for both directions: all xattrs (ACLs and capabilities are
/// `system.posix_acl_*` and `security.capability` xattrs to it as well).
const GNU_XATTRS: &str = "--xattrs --xattrs-include='*'";

// ---------------------------------------------------------------------------------
// Scratch space and commands
// ---------------------------------------------------------------------------------

/// A directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Whether `dir`'s filesystem takes user and trusted xattrs and POSIX ACLs.
fn xattrs_work(dir: &Path) -> bool {
    let probe = dir.join(format!("fidelity-probe-{}", std::process::id()));
    let ok = File::create(&probe).is_ok()
        && xattr::set(&probe, "user.probe", b"1").is_ok()
        && xattr::set(&probe, "trusted.probe", b"1").is_ok()
        && Command::new("setfacl")
            .args(["-m", "u:12345:r"])
            .arg(&probe)
            .output()
            .is_ok_and(|o| o.status.success());
    let _ = fs::remove_file(&probe);
    ok
}

/// A fresh directory on a filesystem where xattrs and ACLs work: the target
/// directory's tmp (`target/tmp`) first, else the system's temporary directory.
fn scratch(label: &str) -> Scratch {
    let candidates = [
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        std::env::temp_dir(),
    ];
    for base in candidates {
        if fs::create_dir_all(&base).is_ok() && xattrs_work(&base) {
            let dir = base.join(format!("fidelity-{label}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            return Scratch(dir);
        }
    }
    panic!(
        "no scratch filesystem with user/trusted xattrs and POSIX ACLs (tried target/tmp and the temp dir)"
    );
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn show(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Run `cmd`; panics with its output unless it exits 0.
fn run(cmd: &mut Command) -> Output {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?} failed: {}", show(&o));
    o
}

/// A bash pipeline with `$1`, `$2`, … bound to `args`, under `set -euo pipefail`.
fn pipeline(script: &str, args: &[&Path]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!("set -euo pipefail; {script}"))
        .arg("fidelity");
    cmd.args(args);
    run(&mut cmd)
}

/// Lines of GNU tar's stderr worth showing (its warnings), prefixed.
fn print_warnings(label: &str, o: &Output) {
    for line in String::from_utf8_lossy(&o.stderr).lines() {
        println!("  [{label}] {line}");
    }
}

// ---------------------------------------------------------------------------------
// The round trips
// ---------------------------------------------------------------------------------

fn understudy_create(src: &Path, archive: &Path) -> Output {
    run(Command::new(BIN)
        .args(["archive", "create"])
        .arg(src)
        .arg(archive))
}

fn understudy_extract(archive: &Path, dest: &Path) -> Output {
    run(Command::new(BIN)
        .args(["archive", "extract"])
        .arg(archive)
        .arg(dest))
}

fn understudy_list_count(archive: &Path) -> usize {
    let o = run(Command::new(BIN).args(["archive", "list"]).arg(archive));
    o.stdout.iter().filter(|&&b| b == b'\n').count()
}

/// a. Our archive, our extraction.
fn us_to_us(src: &Path, work: &Path) -> (Output, PathBuf) {
    let archive = work.join("us.tar.lzo");
    let created = understudy_create(src, &archive);
    run(Command::new(BIN).args(["archive", "verify"]).arg(&archive));
    let dest = work.join("a-us-us");
    understudy_extract(&archive, &dest);
    (created, dest)
}

/// b. Our archive, GNU tar's extraction; also `lzop -t` and the member count.
fn us_to_gnu(src: &Path, work: &Path) -> PathBuf {
    let archive = work.join("us.tar.lzo");
    if !archive.exists() {
        understudy_create(src, &archive);
    }
    run(Command::new("lzop").arg("-t").arg(&archive));
    let listed = pipeline("lzop -dc \"$1\" | tar -tvf -", &[&archive]);
    let gnu_count = listed.stdout.iter().filter(|&&b| b == b'\n').count();
    let our_count = understudy_list_count(&archive);
    assert_eq!(
        gnu_count, our_count,
        "`tar -tvf` lists {gnu_count} members, `understudy archive list` {our_count}"
    );
    let dest = work.join("b-us-gnu");
    fs::create_dir_all(&dest).unwrap();
    let o = pipeline(
        &format!("lzop -dc \"$1\" | tar {GNU_XATTRS} --numeric-owner -xpf - -C \"$2\""),
        &[&archive, &dest],
    );
    print_warnings("GNU tar -x", &o);
    dest
}

/// c. GNU tar's archive (with `flags`, e.g. `--sparse`), our extraction.
fn gnu_to_us(src: &Path, work: &Path, flags: &str, tag: &str) -> PathBuf {
    let archive = work.join(format!("gnu-{tag}.tar.lzo"));
    let o = pipeline(
        &format!("tar {flags} -cpf - -C \"$1\" . | lzop > \"$2\""),
        &[src, &archive],
    );
    print_warnings(&format!("GNU tar -c {tag}"), &o);
    let dest = work.join(format!("c-gnu-us-{tag}"));
    understudy_extract(&archive, &dest);
    let _ = fs::remove_file(&archive);
    dest
}

/// Scan `got_dir` and compare it with `want`, print the summary line and the
/// differences, and return the differences as text.
fn compare(label: &str, want: &Inventory, got_dir: &Path, what: Compare) -> Vec<String> {
    compare_scanned(label, want, &Inventory::scan(got_dir).unwrap(), what)
}

fn compare_scanned(label: &str, want: &Inventory, got: &Inventory, what: Compare) -> Vec<String> {
    let diffs = want.diff(got, what);
    println!(
        "fidelity: {label}: {} entries compared, {} differences",
        want.len(),
        diffs.len()
    );
    for d in diffs.iter().take(50) {
        println!("  {d}");
    }
    diffs.iter().map(|d| format!("{label}: {d}")).collect()
}

/// The source's inventory without its sockets, which no archive carries.
fn without_sockets(mut inv: Inventory) -> Inventory {
    inv.entries.retain(|e| e.kind != Kind::Socket);
    inv
}

/// `tar --format=gnu --sparse` (no `--xattrs`) is run for what only that format has:
/// old GNU sparse members (type `S`, with extension blocks) and `././@LongLink`
/// names. It writes no pax headers, so no xattrs (nor ACLs or capabilities), and
/// its header's mtime field holds whole seconds only.
const GNU_FORMAT: Compare = Compare {
    xattrs: false,
    acls: false,
    capability: false,
    mtime_nsec: false,
    ..Compare::ALL
};

/// Every direction over `src`, in `work`; returns all differences found. `sparse`
/// adds GNU tar's `--sparse` formats to direction c; `check_us` looks further at
/// what direction a extracted.
fn all_round_trips(
    src: &Path,
    work: &Path,
    what: &str,
    sparse: bool,
    check_us: &dyn Fn(&Inventory),
) -> Vec<String> {
    let all = Inventory::scan(src).unwrap();
    let want = without_sockets(all.clone());
    let mut failures = Vec::new();

    let (created, dest) = us_to_us(src, work);
    if want.len() < all.len() {
        let stderr = String::from_utf8_lossy(&created.stderr);
        assert!(
            stderr.contains("socket skipped"),
            "a socket was not reported as skipped: {stderr}"
        );
    }
    let got = Inventory::scan(&dest).unwrap();
    let label = format!("{what} us → us");
    failures.extend(compare_scanned(&label, &want, &got, Compare::ALL));
    check_us(&got);
    fs::remove_dir_all(&dest).unwrap();

    let dest = us_to_gnu(src, work);
    failures.extend(compare(
        &format!("{what} us → GNU tar"),
        &want,
        &dest,
        Compare::ALL,
    ));
    fs::remove_dir_all(&dest).unwrap();
    let _ = fs::remove_file(work.join("us.tar.lzo"));
    let _ = fs::remove_file(work.join("us.tar.lzo.json"));

    // Without --sparse GNU tar stores a sparse file's holes as zeros, and nothing
    // marks them as holes any more: we extract it fully allocated, as GNU tar would.
    let dest = gnu_to_us(src, work, GNU_XATTRS, "plain");
    failures.extend(compare(
        &format!("{what} GNU tar → us"),
        &want,
        &dest,
        Compare {
            sparseness: false,
            ..Compare::ALL
        },
    ));
    fs::remove_dir_all(&dest).unwrap();
    if !sparse {
        return failures;
    }

    for (version, tag) in [
        ("1.0", "sparse-1.0"),
        ("0.1", "sparse-0.1"),
        ("0.0", "sparse-0.0"),
    ] {
        let flags = format!("{GNU_XATTRS} --sparse --sparse-version={version}");
        let dest = gnu_to_us(src, work, &flags, tag);
        failures.extend(compare(
            &format!("{what} GNU tar --sparse (pax {version}) → us"),
            &want,
            &dest,
            Compare::ALL,
        ));
        fs::remove_dir_all(&dest).unwrap();
    }

    let dest = gnu_to_us(src, work, "--format=gnu --sparse", "gnu-format");
    failures.extend(compare(
        &format!("{what} GNU tar --format=gnu --sparse → us"),
        &want,
        &dest,
        GNU_FORMAT,
    ));
    fs::remove_dir_all(&dest).unwrap();
    failures
}

// ---------------------------------------------------------------------------------
// The synthetic tree
// ---------------------------------------------------------------------------------

/// Deterministic bytes that do not compress to nothing.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let t = TimeSpec::new(sec, nsec);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap_or_else(|e| panic!("setting the mtime of {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn write(path: &Path, data: &[u8]) {
    File::create(path).unwrap().write_all(data).unwrap();
}

fn tool(args: &[&str], path: &Path) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .arg(path)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A file of `size` bytes with data only at `extents` (offset, length).
fn sparse_file(path: &Path, size: u64, extents: &[(u64, usize)]) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (i, &(off, len)) in extents.iter().enumerate() {
        f.write_all_at(&noise(len, 1000 + i as u64), off).unwrap();
    }
}

/// Build every kind of entry under `root`; returns notes on what could not be made.
fn make_tree(root: &Path) -> Vec<String> {
    let mut notes = Vec::new();
    let p = |rel: &str| root.join(rel);
    chmod(root, 0o755);

    // Regular files: empty, small, over 1 MiB.
    write(&p("empty"), b"");
    write(&p("small.txt"), b"hello, understudy\n");
    write(&p("big.bin"), &noise(1_500_000, 1));

    // Sparse: 64 MiB with 31 data extents (more than fit in the header's map, so
    // GNU sparse extension blocks are needed), data right up to the end; and a file
    // that ends in a hole.
    let mut extents: Vec<(u64, usize)> = (0..30).map(|i| (i * (2 << 20), 4096)).collect();
    extents.push(((64 << 20) - 8192, 8192));
    sparse_file(&p("sparse.img"), 64 << 20, &extents);
    sparse_file(&p("trailing-hole.img"), 16 << 20, &[(0, 128 << 10)]);
    let blocks = fs::metadata(p("sparse.img")).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.blocks()
    });
    if blocks.is_ok_and(|b| b * 512 >= 64 << 20) {
        notes.push("this filesystem does not make holes: sparseness untested".into());
    }

    // Directories with odd modes.
    for (name, mode) in [
        ("d0700", 0o700),
        ("tmp1777", 0o1777),
        ("setgid2775", 0o2775),
    ] {
        fs::create_dir(p(name)).unwrap();
        write(&p(&format!("{name}/inside")), name.as_bytes());
        chmod(&p(name), mode);
    }

    // Setuid and setgid files, and owners that exist nowhere.
    write(&p("suid"), b"#!/bin/sh\n");
    chmod(&p("suid"), 0o4755);
    write(&p("sgid"), b"#!/bin/sh\n");
    chmod(&p("sgid"), 0o2755);
    fs::create_dir(p("nobody-dir")).unwrap();
    write(&p("nobody-dir/owned"), b"12345:54321\n");
    for rel in ["nobody-dir", "nobody-dir/owned"] {
        lchown(p(rel), Some(12345), Some(54321)).unwrap();
    }
    // chown clears setuid: the owner first, then the mode.
    write(&p("nobody-dir/suid-nobody"), b"x");
    lchown(p("nobody-dir/suid-nobody"), Some(12345), Some(54321)).unwrap();
    chmod(&p("nobody-dir/suid-nobody"), 0o6750);

    // Symlinks: relative, absolute, dangling, a target over 100 bytes, owned.
    fs::create_dir(p("links")).unwrap();
    symlink("../small.txt", p("links/relative")).unwrap();
    symlink("/etc/passwd", p("links/absolute")).unwrap();
    symlink("does/not/exist", p("links/dangling")).unwrap();
    let long_target = format!("../{}/target", "t".repeat(140));
    symlink(&long_target, p("links/long-target")).unwrap();
    symlink("relative", p("links/owned")).unwrap();
    lchown(p("links/owned"), Some(12345), Some(54321)).unwrap();

    // A hardlink group of three, in different directories.
    fs::create_dir_all(p("hard/a")).unwrap();
    fs::create_dir_all(p("hard/b")).unwrap();
    write(&p("hard/a/one"), b"three names, one inode\n");
    fs::hard_link(p("hard/a/one"), p("hard/b/two")).unwrap();
    fs::hard_link(p("hard/a/one"), p("hard/three")).unwrap();

    // Devices, a fifo, a socket.
    fs::create_dir(p("dev")).unwrap();
    let node = |rel: &str, kind: SFlag, maj: u64, min: u64| {
        mknod(
            &p(rel),
            kind,
            Mode::from_bits_truncate(0o640),
            makedev(maj, min),
        )
        .unwrap_or_else(|e| panic!("mknod {rel}: {e}"));
    };
    node("dev/null", SFlag::S_IFCHR, 1, 3);
    node("dev/sda1", SFlag::S_IFBLK, 8, 1);
    node("dev/big-numbers", SFlag::S_IFCHR, 4095, 1_048_575);
    nix::unistd::mkfifo(&p("dev/fifo"), Mode::from_bits_truncate(0o620)).unwrap();
    let sock = std::os::unix::net::UnixListener::bind(p("dev/socket")).unwrap();
    drop(sock); // the socket file stays

    // Extended attributes in every namespace.
    xattr::set(p("small.txt"), "user.comment", b"a comment").unwrap();
    xattr::set(
        p("small.txt"),
        "user.binary",
        &[0, 1, 0xff, 0x80, b'=', b'\n'],
    )
    .unwrap();
    // GNU tar percent-encodes `%` and `=` in the names it puts in pax keywords.
    xattr::set(p("small.txt"), "user.with=equals", b"a=b").unwrap();
    xattr::set(p("small.txt"), "user.per%3Dcent%", b"%").unwrap();
    xattr::set(p("d0700"), "trusted.overlay.opaque", b"y").unwrap();
    xattr::set(p("links/relative"), "trusted.on-a-symlink", b"1").unwrap();
    xattr::set(p("dev/null"), "trusted.on-a-device", b"1").unwrap();
    let selinux = b"system_u:object_r:bin_t:s0\0";
    if xattr::set(p("suid"), "security.selinux", selinux).is_err() {
        notes.push(
            "security.selinux cannot be set here (an SELinux policy refused it): skipped".into(),
        );
    }
    write(&p("ping"), b"\x7fELF not really\n");
    chmod(&p("ping"), 0o755);
    if !tool(&["setcap", "cap_net_raw+ep"], &p("ping")) {
        // What setcap writes for cap_net_raw+ep: VFS_CAP_REVISION_2 with the
        // effective flag, permitted bit 13.
        notes.push("setcap failed (libcap2-bin missing?): capability set as a raw xattr".into());
        let mut cap = vec![0u8; 20];
        cap[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
        cap[4..8].copy_from_slice(&(1u32 << 13).to_le_bytes());
        xattr::set(p("ping"), "security.capability", &cap).unwrap();
    }
    assert!(
        xattr::get(p("ping"), "security.capability")
            .unwrap()
            .is_some()
    );
    write(&p("acl-file"), b"acl\n");
    assert!(
        tool(
            &["setfacl", "-m", "u:12345:rw,g:54321:r,u:10:r"],
            &p("acl-file")
        ),
        "setfacl on a file"
    );
    fs::create_dir(p("acl-dir")).unwrap();
    assert!(
        tool(&["setfacl", "-d", "-m", "u:12345:rwx,g::rx"], &p("acl-dir")),
        "setfacl -d on a directory"
    );
    write(&p("acl-dir/inherits"), b"made after the default ACL\n");

    // (uid 10 puts a 0x0a byte in the ACL value: a newline inside a pax record.)
    // Names: spaces, UTF-8, bytes that are not UTF-8, and lengths around the ustar
    // limits (archive names are "./"-prefixed, directories end in "/").
    write(&p("with space.txt"), b"space");
    write(&p("café ünïcødé ✓"), b"utf-8");
    let bad = std::ffi::OsStr::from_bytes(b"bad-\xff\xfe-bytes");
    fs::create_dir(root.join(bad)).unwrap();
    write(
        &root
            .join(bad)
            .join(std::ffi::OsStr::from_bytes(b"\xe9t\xe9")),
        b"latin-1",
    );
    write(&p(&"n".repeat(98)), b"archive name exactly 100 bytes");
    write(&p(&"o".repeat(99)), b"archive name 101 bytes");
    write(&p(&"x".repeat(100)), b"file name exactly 100 bytes");
    fs::create_dir(p(&"d".repeat(97))).unwrap(); // "./ddd…/" is 100 bytes
    let deep = format!("long/{}", "p".repeat(120));
    fs::create_dir_all(p(&deep)).unwrap();
    write(&p(&format!("{deep}/over-100")), b"path over 100 bytes");
    let very = format!("long/{}/{}", "A".repeat(200), "B".repeat(200));
    fs::create_dir_all(p(&very)).unwrap();
    let name255 = format!("{very}/{}", "C".repeat(255));
    write(&p(&name255), b"path over 255 bytes, a 255-byte name");
    // A hardlink whose first name is long: its link name needs a pax linkpath.
    write(&p(&format!("{very}/first")), b"linked from far");
    fs::hard_link(p(&format!("{very}/first")), p("zz-link-to-long")).unwrap();
    symlink(&name255, p("links/to-very-long")).unwrap();

    // Times: nanoseconds everywhere, before 1970 with and without a fraction, the
    // epoch itself; directories last, deepest first, since filling them moved theirs.
    let mut all = Vec::new();
    collect(root, &mut all);
    for (i, path) in all.iter().enumerate() {
        let ns = 123_456_789 + i64::try_from(i).unwrap();
        set_mtime(path, 1_600_000_000 + i64::try_from(i).unwrap() * 7919, ns);
    }
    set_mtime(&p("small.txt"), -1_000_000_000, 250_000_000); // 1938, with a fraction
    set_mtime(&p("empty"), -86_400, 0); // 1969-12-31, whole seconds
    set_mtime(&p("suid"), 0, 0);
    set_mtime(&p("links/absolute"), -5, 500_000_000);
    set_mtime(&p("d0700"), -31_536_000, 999_999_999);
    set_mtime(root, 1_700_000_000, 1);
    notes
}

/// Every path below `dir`, children before their directory.
fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let path = e.path();
        if e.file_type().unwrap().is_dir() {
            collect(&path, out);
        }
        out.push(path);
    }
}

fn need_tools() -> bool {
    let missing: Vec<&str> = ["lzop", "tar", "setfacl"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if !missing.is_empty() {
        println!("fidelity: SKIPPED, missing tools: {}", missing.join(", "));
    }
    missing.is_empty()
}

#[test]
fn synthetic_tree_round_trips() {
    if !is_root() {
        println!("fidelity: synthetic part SKIPPED: needs root (mknod, chown, trusted.*)");
        return;
    }
    if !need_tools() {
        return;
    }
    let work = scratch("synthetic");
    let src = work.0.join("src");
    fs::create_dir(&src).unwrap();
    for note in make_tree(&src) {
        println!("fidelity: note: {note}");
    }
    let want = Inventory::scan(&src).unwrap();
    // The tree has what it claims to have.
    let kinds: std::collections::BTreeSet<String> =
        want.entries.iter().map(|e| e.kind.to_string()).collect();
    assert_eq!(kinds.len(), 7, "every kind of entry: {kinds:?}");
    assert!(want.get(b"./sparse.img").unwrap().is_sparse());
    assert!(want.get(b"./trailing-hole.img").unwrap().is_sparse());
    assert_eq!(
        want.get(b"./hard/three")
            .unwrap()
            .link_group
            .as_ref()
            .map(|g| g.to_string()),
        Some("./hard/a/one".to_string())
    );

    // Beyond `Compare::sparseness`: a 64 MiB file with 31 small extents (220 KiB of
    // data) stays small after a round trip through us.
    let sparse_kept = |got: &Inventory| {
        let sparse = got.get(b"./sparse.img").unwrap();
        assert!(
            sparse.blocks * 512 < 4 << 20,
            "sparse.img allocates {} KiB after extraction",
            sparse.blocks / 2
        );
    };
    let failures = all_round_trips(&src, &work.0, "synthetic", true, &sparse_kept);

    assert!(
        failures.is_empty(),
        "{} differences:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn corpus_round_trips() {
    let Some(corpus) = std::env::var_os("UNDERSTUDY_CORPUS") else {
        println!("fidelity: corpus part SKIPPED: UNDERSTUDY_CORPUS is not set");
        return;
    };
    let corpus = PathBuf::from(corpus);
    assert!(
        corpus.is_dir(),
        "UNDERSTUDY_CORPUS={} is not a directory",
        corpus.display()
    );
    if !is_root() {
        println!("fidelity: corpus part SKIPPED: needs root to restore owners and devices");
        return;
    }
    if !need_tools() {
        return;
    }
    let work = scratch("corpus");
    // The corpus has no sparse files: GNU's sparse formats are left to the synthetic
    // tree, which has them, and the corpus gets the three directions only.
    let failures = all_round_trips(&corpus, &work.0, "corpus", false, &|_| {});
    assert!(
        failures.is_empty(),
        "{} differences:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
