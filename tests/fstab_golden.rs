//! Golden tests on real-world fstabs (tests/fixtures/fstab/, provenance in its
//! README): every fixture round-trips byte for byte, is read by libmount exactly as
//! we read it, and its remap (NAME.plan.json) gives NAME.remapped, which libmount's
//! `findmnt --verify` accepts and which a second remap leaves alone.
//!
//! `UNDERSTUDY_BLESS=1 cargo test --test fstab_golden` rewrites the .remapped files;
//! review their diff before committing.

use std::path::{Path, PathBuf};

use serde_json::Value;
use understudy::cmd::Cmd;
use understudy::fstab::Fstab;
use understudy::remap::{self, FstabRemap};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fstab")
}

fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".fstab").map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// A scratch directory for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("understudy-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Messages from `findmnt --verify` that depend on this machine rather than on the
/// file: whether sources and targets exist here, what the running kernel supports,
/// and where this machine's symlinks point.
const MACHINE_DEPENDENT: [&str; 4] = [
    "unreachable",
    "cannot detect on-disk filesystem type",
    "seems unsupported by the current kernel",
    "non-canonical target path",
];

/// Run `findmnt --verify --verbose` on `file`; return every finding that is not
/// machine-dependent, plus the parse-error count if it is not zero. The shell wrapper
/// only keeps findmnt's exit status from hiding its report (it exits 1 on findings).
fn findmnt_verify(file: &Path) -> Vec<String> {
    let out = Cmd::new("sh")
        .args([
            "-c",
            "findmnt --verify --verbose --tab-file \"$1\"; echo \"exit $?\" >&2",
            "sh",
        ])
        .arg(file)
        .output()
        .expect("running findmnt --verify");
    let stdout = out.text();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let summary = stderr
        .lines()
        .find(|l| l.starts_with(|c: char| c.is_ascii_digit()) && l.contains(" parse error"))
        .unwrap_or_else(|| panic!("no summary from findmnt --verify: {stderr}"));
    let mut problems = Vec::new();
    if !summary.starts_with("0 parse errors,") {
        problems.push(format!("{summary} ({stderr})"));
    }
    let mut target = String::new();
    for line in stdout.lines() {
        if !line.starts_with(' ') {
            target = line.to_string();
            continue;
        }
        let l = line.trim_start();
        if (l.starts_with("[E]") || l.starts_with("[W]"))
            && !MACHINE_DEPENDENT.iter().any(|m| l.contains(m))
        {
            problems.push(format!("{target}: {l}"));
        }
    }
    problems
}

/// The entries libmount reads from `file`, as (source, target, fstype, options, freq,
/// passno).
fn libmount_entries(file: &Path) -> Vec<(String, String, String, String, u64, u64)> {
    let out = Cmd::new("findmnt")
        .args(["--tab-file"])
        .arg(file)
        .args([
            "--json",
            "--nocanonicalize",
            "-o",
            "SOURCE,TARGET,FSTYPE,OPTIONS,FREQ,PASSNO",
        ])
        .output()
        .expect("running findmnt --tab-file");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = |e: &Value, k: &str| e[k].as_str().unwrap_or("").to_string();
    let n = |e: &Value, k: &str| {
        e[k].as_u64()
            .or_else(|| e[k].as_str().and_then(|t| t.parse().ok()))
            .unwrap_or(0)
    };
    v["filesystems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                s(e, "source"),
                s(e, "target"),
                s(e, "fstype"),
                s(e, "options"),
                n(e, "freq"),
                n(e, "passno"),
            )
        })
        .collect()
}

fn our_entries(f: &Fstab) -> Vec<(String, String, String, String, u64, u64)> {
    f.entries()
        .map(|(_, e)| {
            let options = e.field(understudy::fstab::MNTOPS).unwrap_or_default();
            (
                e.spec(),
                e.target(),
                e.fstype(),
                options,
                u64::from(e.freq()),
                u64::from(e.passno()),
            )
        })
        .collect()
}

#[test]
fn real_world_fstabs_round_trip_remap_and_pass_findmnt() {
    let names = fixture_names();
    assert!(names.len() >= 6, "fixtures: {names:?}");
    let bless = std::env::var_os("UNDERSTUDY_BLESS").is_some();
    let tmp = Scratch::new("fstab-golden");
    let readme = std::fs::read_to_string(fixtures().join("README.md")).unwrap();
    for name in &names {
        assert!(
            readme.contains(&format!("`{name}.fstab`")),
            "{name} has no provenance in the README"
        );
        let path = fixtures().join(format!("{name}.fstab"));
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed = Fstab::parse(&text);
        assert_eq!(parsed.render(), text, "{name}: round trip");
        assert_eq!(
            our_entries(&parsed),
            libmount_entries(&path),
            "{name}: libmount reads it otherwise"
        );
        assert_eq!(
            findmnt_verify(&path),
            Vec::<String>::new(),
            "{name}: the fixture itself"
        );

        let plan: FstabRemap = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join(format!("{name}.plan.json"))).unwrap(),
        )
        .unwrap_or_else(|e| panic!("{name}.plan.json: {e}"));
        let (remapped, notes) = remap::fstab(&parsed, &plan);
        let out = remapped.render();
        let golden = fixtures().join(format!("{name}.remapped"));
        if bless {
            std::fs::write(&golden, &out).unwrap();
        }
        let expected = std::fs::read_to_string(&golden)
            .unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
        assert_eq!(
            out,
            expected,
            "{name}: remap differs from {}",
            golden.display()
        );
        assert!(
            !notes.is_empty(),
            "{name}: a remap that changes nothing says nothing"
        );
        for n in &notes {
            if n.action != remap::Action::RootChanged
                && n.action != remap::Action::Mapped
                && n.action != remap::Action::Warning
            {
                assert!(
                    out.contains(&format!("# understudy: {}", n.detail)),
                    "{name}: note {n} not in the file"
                );
            }
        }

        let file = tmp.file(&format!("{name}.remapped"));
        std::fs::write(&file, &out).unwrap();
        assert_eq!(
            findmnt_verify(&file),
            Vec::<String>::new(),
            "{name}: remapped"
        );
        assert_eq!(
            our_entries(&Fstab::parse(&out)),
            libmount_entries(&file),
            "{name}: remapped, as libmount reads it"
        );
        let root = libmount_entries(&file)
            .into_iter()
            .find(|e| e.1 == "/")
            .map(|e| e.0);
        assert_eq!(
            root.as_deref(),
            Some(plan.root.source.as_str()),
            "{name}: libmount sees the new root"
        );

        let (twice, notes2) = remap::fstab(&Fstab::parse(&out), &plan);
        assert_eq!(twice.render(), out, "{name}: a second remap changed it");
        assert!(
            notes2.iter().all(|n| n.action == remap::Action::Warning),
            "{name}: {notes2:?}"
        );
    }
}

#[test]
fn the_findmnt_check_catches_what_it_claims_to() {
    // A mount listed before the one it sits on, and a target listed twice: structure
    // that findmnt flags whatever the machine, so the check is not vacuous.
    let tmp = Scratch::new("fstab-findmnt");
    let file = tmp.file("bad-order");
    std::fs::write(
        &file,
        "tmpfs /srv/a/b tmpfs defaults 0 0\ntmpfs /srv/a tmpfs defaults 0 0\ntmpfs /srv/a tmpfs defaults 0 0\n",
    )
    .unwrap();
    let problems = findmnt_verify(&file);
    assert!(
        problems.iter().any(|p| p.contains("wrong order")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("more than once")),
        "{problems:?}"
    );
    // A line libmount cannot parse is counted.
    std::fs::write(&file, "tmpfs /srv\n").unwrap();
    let problems = findmnt_verify(&file);
    assert!(
        problems.iter().any(|p| p.starts_with("1 parse error")),
        "{problems:?}"
    );
}

/// A small deterministic generator (64-bit LCG), so failures reproduce.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.next() % from.len()]
    }
}

/// Generated files with every oddity at once: libmount must read each entry as we
/// do, the text must round-trip, and editing one field must leave the rest alone.
#[test]
fn generated_fstabs_round_trip_and_agree_with_libmount() {
    const SEP: [&str; 5] = [" ", "\t", "  ", " \t ", "\t\t"];
    const SRC: [&str; 9] = [
        "UUID=0a1b2c3d-0000-4000-8000-000000000001",
        "UUID=\"7E57-0001\"",
        "LABEL=my\\040disk",
        "PARTUUID=738a4d67-02",
        "PARTLABEL=data",
        "/dev/mapper/vg-lv--x",
        "/dev/vg/home",
        "nas:/export/a\\134b",
        "tmpfs",
    ];
    const TARGET: [&str; 6] = [
        "/",
        "/srv/a\\040b",
        "/mnt/x\\011y",
        "none",
        "/var/lib/docker",
        "/home",
    ];
    const TYPE: [&str; 5] = ["ext4", "xfs", "swap", "nfs4", "tmpfs"];
    const OPTS: [&str; 4] = [
        "defaults",
        "noauto,nofail",
        "rw,size=10%,mode=1777",
        "bind,x-systemd.requires=a b",
    ];
    const OTHER: [&str; 5] = [
        "",
        "# comment",
        "   # indented",
        "\t",
        "#UUID=x / ext4 defaults 0 1",
    ];
    let tmp = Scratch::new("fstab-generated");
    let mut rng = Lcg(0x5eed);
    for round in 0..40 {
        let mut text = String::new();
        let lines = 1 + rng.next() % 12;
        for i in 0..lines {
            if rng.next() % 4 == 0 {
                text.push_str(rng.pick(&OTHER));
            } else {
                let lead = if rng.next() % 5 == 0 {
                    rng.pick(&SEP)
                } else {
                    ""
                };
                let fields = 3 + rng.next() % 4;
                let values = [
                    rng.pick(&SRC),
                    rng.pick(&TARGET),
                    rng.pick(&TYPE),
                    rng.pick(&OPTS),
                    "0",
                    "2",
                ];
                text.push_str(lead);
                for (k, v) in values.iter().take(fields).enumerate() {
                    if k > 0 {
                        text.push_str(rng.pick(&SEP));
                    }
                    // An option list with a blank in it must be escaped to stay one field.
                    text.push_str(&v.replace(' ', "\\040"));
                }
                if rng.next() % 3 == 0 {
                    text.push_str(rng.pick(&SEP));
                }
            }
            if i + 1 < lines || rng.next() % 2 == 0 {
                text.push('\n');
            }
        }
        let parsed = Fstab::parse(&text);
        assert_eq!(parsed.render(), text, "round {round}");
        let file = tmp.file(&format!("gen-{round}"));
        std::fs::write(&file, &text).unwrap();
        if parsed.entries().count() > 0 {
            assert_eq!(
                our_entries(&parsed),
                libmount_entries(&file),
                "round {round}:\n{text}"
            );
        }
        // Edit the options of every entry: the other fields must not move.
        let mut edited = parsed.clone();
        for line in &mut edited.lines {
            if let understudy::fstab::Line::Entry(e) = line {
                e.set_field(understudy::fstab::MNTOPS, "ro,x-edited=a b");
            }
        }
        let reparsed = Fstab::parse(&edited.render());
        let before: Vec<_> = our_entries(&parsed)
            .into_iter()
            .map(|e| (e.0, e.1, e.2, e.4, e.5))
            .collect();
        let after: Vec<_> = our_entries(&reparsed)
            .into_iter()
            .map(|e| (e.0, e.1, e.2, e.4, e.5))
            .collect();
        assert_eq!(before, after, "round {round}");
        assert!(
            reparsed
                .entries()
                .all(|(_, e)| e.options() == "ro,x-edited=a b"),
            "round {round}"
        );
    }
}
