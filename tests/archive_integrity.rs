//! Integrity: a real archive of a real tree, damaged in every way a disk, a copy or
//! a person can damage it, must fail `verify` (exit 3) and `extract` (non-zero) with
//! a message that says what is wrong and where.
//!
//! The tree is ~20 MB: copies of /usr/share/doc subdirectories (topped up with
//! generated text if there are not enough), plus `zz/f` and `zz/g`, built so that
//! a dropped or duplicated 256 KiB block leaves a tar stream that still parses:
//! - `zz/f` is random data then 512 KiB of zeros. Duplicating a block inside it
//!   makes the reader meet those zeros where it expects the next header, which
//!   reads as the end of the archive.
//! - `zz/g` follows it and takes exactly one block (a 512-byte header and
//!   256 KiB - 512 bytes of data). Dropping a block inside `zz/f` makes `zz/f`
//!   swallow `zz/g` whole, and the member after it is read in step again.
//!
//! So for the dropped, duplicated and swapped cases lzop's checksums (`lzop -t`)
//! and the tar structure are both fine, and only the summary can tell.

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use common::{Run, Scratch, sh};
use understudy::archive::Summary;
use understudy::archive::header::{BLOCK, padding};
use understudy::lzop::{self, BLOCK_SIZE};

const LIMIT: Duration = Duration::from_secs(300);
/// How much of the tree comes from /usr/share/doc (or generated text).
const DOC_BYTES: u64 = 20 << 20;
const B: u64 = BLOCK_SIZE as u64;

/// One lzop block as laid out in the file.
#[derive(Clone, Copy, Debug)]
struct Span {
    /// Byte offset of the block header.
    off: usize,
    /// Byte offset of the compressed (or stored) data.
    data: usize,
    /// One past the last byte.
    end: usize,
    dst: usize,
    src: usize,
}

/// One tar member of the uncompressed stream.
#[derive(Clone, Debug)]
struct Member {
    path: String,
    header: u64,
    data: u64,
    size: u64,
}

struct Fixture {
    dir: PathBuf,
    tree: PathBuf,
    archive: PathBuf,
    bytes: Vec<u8>,
    summary: Summary,
    /// Length of the lzop file header.
    header_len: usize,
    blocks: Vec<Span>,
    tar: Vec<u8>,
    members: Vec<Member>,
}

fn be32(b: &[u8], at: usize) -> usize {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize
}

/// Parse the lzop framing: header length and every block.
fn layout(bytes: &[u8]) -> (usize, Vec<Span>) {
    assert_eq!(bytes[..9], lzop::MAGIC);
    let flags = be32(bytes, 17);
    let name_len = bytes[33] as usize;
    let header_len = 34 + name_len + 4;
    assert_eq!(flags & 0x40, 0, "no extra field expected");
    let (adler_d, adler_c, crc_d, crc_c) = (
        flags & 1 != 0,
        flags & 2 != 0,
        flags & 0x100 != 0,
        flags & 0x200 != 0,
    );
    let mut blocks = Vec::new();
    let mut at = header_len;
    loop {
        let dst = be32(bytes, at);
        if dst == 0 {
            assert_eq!(at + 4, bytes.len(), "end marker is last");
            break;
        }
        let src = be32(bytes, at + 4);
        let stored = src == dst;
        let checks = usize::from(adler_d)
            + usize::from(crc_d)
            + if stored {
                0
            } else {
                usize::from(adler_c) + usize::from(crc_c)
            };
        let data = at + 8 + 4 * checks;
        blocks.push(Span {
            off: at,
            data,
            end: data + src,
            dst,
            src,
        });
        at = data + src;
    }
    (header_len, blocks)
}

fn members(tar: &[u8]) -> Vec<Member> {
    let mut ar = tar::Archive::new(tar);
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            Member {
                path: String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                header: e.raw_header_position(),
                data: e.raw_file_position(),
                size: e.size(),
            }
        })
        .collect()
}

/// Deterministic bytes that do not compress.
fn noise(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_be_bytes()[4]
        })
        .collect()
}

/// Bytes of regular files under `p`.
fn tree_bytes(p: &Path) -> u64 {
    common::snapshot(p, &[])
        .values()
        .filter(|r| r.kind == '-')
        .map(|r| r.size)
        .sum()
}

fn make_tree(tree: &Path) {
    let doc = tree.join("doc");
    std::fs::create_dir_all(&doc).unwrap();
    let (code, _, err) = sh(&format!(
        "set -e; cd /usr/share/doc 2>/dev/null || exit 0
         total=0
         for d in $(LC_ALL=C ls); do
             [ $total -ge {kib} ] && break
             cp -a \"$d\" '{dest}/'
             total=$((total + $(du -sk --apparent-size \"$d\" | cut -f1)))
         done",
        kib = DOC_BYTES / 1024,
        dest = doc.display()
    ));
    assert_eq!(code, 0, "copying /usr/share/doc: {err}");
    // Top up with text where the documentation is thin.
    let mut i = 0;
    while tree_bytes(tree) < DOC_BYTES {
        let words = [
            "archive", "block", "lzop", "restore", "disk", "tar", "summary",
        ];
        let mut text = String::new();
        let mut x = i as u64 + 1;
        while text.len() < 512 * 1024 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            text.push_str(words[(x >> 60) as usize % words.len()]);
            text.push(if x & 0xf == 0 { '\n' } else { ' ' });
        }
        std::fs::create_dir_all(tree.join("gen")).unwrap();
        std::fs::write(tree.join(format!("gen/text-{i:03}")), text).unwrap();
        i += 1;
    }
    let zz = tree.join("zz");
    std::fs::create_dir(&zz).unwrap();
    let mut f = noise((1 << 20) + 4321, 0x9e37_79b9_7f4a_7c15);
    f.resize(f.len() + 2 * BLOCK_SIZE, 0);
    std::fs::write(zz.join("f"), f).unwrap();
    std::fs::write(zz.join("g"), noise(BLOCK_SIZE - BLOCK, 42)).unwrap();
    // A whole-second mtime, so `zz/g` needs no pax header: one 512-byte header.
    let g = std::fs::File::options()
        .write(true)
        .open(zz.join("g"))
        .unwrap();
    g.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .unwrap();
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // A fixed place, replaced on every run, shared by the tests of this file.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("archive-integrity-fixture");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        let tree = dir.join("tree");
        make_tree(&tree);
        let archive = dir.join("good.tar.lzo");
        let r = common::understudy_in(&dir, ["archive", "create", "tree", "good.tar.lzo"], LIMIT);
        assert_eq!(r.code, 0, "create\n{}", r.text());
        let bytes = std::fs::read(&archive).unwrap();
        let summary = Summary::load(&Summary::sidecar(&archive)).unwrap();
        let (header_len, blocks) = layout(&bytes);
        let out = std::process::Command::new("lzop")
            .arg("-dc")
            .arg(&archive)
            .output()
            .unwrap();
        assert!(out.status.success(), "lzop -dc failed");
        let tar = out.stdout;
        let members = members(&tar);
        assert!(
            blocks.len() > 60,
            "want many blocks, got {} ({} bytes of tar)",
            blocks.len(),
            tar.len()
        );
        Fixture {
            dir,
            tree,
            archive,
            bytes,
            summary,
            header_len,
            blocks,
            tar,
            members,
        }
    })
}

impl Fixture {
    fn block(&self, i: usize) -> &[u8] {
        let s = self.blocks[i];
        &self.bytes[s.off..s.end]
    }

    fn head(&self) -> &[u8] {
        &self.bytes[..self.header_len]
    }

    fn end_marker(&self) -> &[u8] {
        &self.bytes[self.bytes.len() - 4..]
    }

    /// The file made of the header, these blocks in this order, and the end marker.
    fn with_blocks(&self, order: &[usize]) -> Vec<u8> {
        let mut v = self.head().to_vec();
        for &i in order {
            v.extend_from_slice(self.block(i));
        }
        v.extend_from_slice(self.end_marker());
        v
    }

    fn member(&self, path: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.path == path)
            .unwrap_or_else(|| panic!("no member {path}"))
    }

    /// The first block that lies wholly inside `zz/f`'s random data, checking
    /// the layout the dropped and duplicated cases depend on.
    fn block_in_f(&self) -> usize {
        let f = self.member("./zz/f");
        let g = self.member("./zz/g");
        assert_eq!(
            g.header,
            f.data + f.size + padding(f.size) as u64,
            "zz/g's header does not follow zz/f's data: it has a pax header?"
        );
        assert_eq!(g.data, g.header + BLOCK as u64);
        assert_eq!(g.data + g.size + padding(g.size) as u64 - g.header, B);
        let i = f.data.div_ceil(B);
        let random_end = f.data + (1 << 20) + 4321;
        assert!((i + 2) * B <= random_end, "zz/f too small for two blocks");
        // Every block but the last is a full one, so block i is tar bytes [iB, (i+1)B).
        assert!(
            self.blocks[..self.blocks.len() - 1]
                .iter()
                .all(|s| s.dst == BLOCK_SIZE)
        );
        usize::try_from(i).unwrap()
    }
}

/// Verify and extract `bytes` (with the good archive's summary beside it).
struct Damaged {
    scratch: Scratch,
    verify: Run,
    extract: Run,
}

fn damaged(tag: &str, bytes: &[u8]) -> Damaged {
    damaged_with(tag, bytes, &fixture().summary)
}

/// As `damaged`, with `summary` beside the archive.
fn damaged_with(tag: &str, bytes: &[u8], summary: &Summary) -> Damaged {
    let scratch = Scratch::new(&format!("integrity-{tag}"));
    let a = scratch.join("damaged.tar.lzo");
    std::fs::write(&a, bytes).unwrap();
    summary.save(&Summary::sidecar(&a)).unwrap();
    let verify = common::understudy_in(
        &scratch.path,
        ["archive", "verify", "damaged.tar.lzo"],
        LIMIT,
    );
    let extract = common::understudy_in(
        &scratch.path,
        ["archive", "extract", "damaged.tar.lzo", "out"],
        LIMIT,
    );
    Damaged {
        scratch,
        verify,
        extract,
    }
}

impl Damaged {
    /// verify exits 3 and extract fails, both saying `what`.
    fn assert_caught(&self, case: &str, what: &[&str]) {
        assert_eq!(
            self.verify.code,
            3,
            "{case}: verify exit code\n{}",
            self.verify.text()
        );
        assert_eq!(
            self.extract.code,
            3,
            "{case}: extract exit code\n{}",
            self.extract.text()
        );
        for w in what {
            assert!(
                self.verify.stderr.contains(w),
                "{case}: verify does not say {w:?}\n{}",
                self.verify.text()
            );
            assert!(
                self.extract.stderr.contains(w),
                "{case}: extract does not say {w:?}\n{}",
                self.extract.text()
            );
        }
        eprintln!(
            "{case}:\n  verify:  {}  extract: {}",
            self.verify.stderr.trim_end(),
            self.extract.stderr.trim_end()
        );
    }

    fn lzop_t(&self) -> i32 {
        sh(&format!(
            "lzop -t {}",
            self.scratch.join("damaged.tar.lzo").display()
        ))
        .0
    }
}

#[test]
fn undamaged_archive_passes_everything() {
    let fx = fixture();
    let a = fx.archive.display();
    let (code, _, err) = sh(&format!("lzop -t {a}"));
    assert_eq!(code, 0, "lzop -t: {err}");
    let (code, gnu, err) = sh(&format!("set -o pipefail; lzop -dc {a} | tar -tvf -"));
    assert_eq!(code, 0, "lzop -dc | tar -tvf -: {err}");
    let list = common::understudy_in(&fx.dir, ["archive", "list", "good.tar.lzo"], LIMIT);
    assert_eq!(list.code, 0, "{}", list.text());
    assert_eq!(gnu.lines().count(), list.stdout.lines().count());
    assert_eq!(list.stdout.lines().count() as u64, fx.summary.entries);
    assert_eq!(fx.members.len() as u64, fx.summary.entries);
    let v = common::understudy_in(&fx.dir, ["archive", "verify", "good.tar.lzo"], LIMIT);
    assert_eq!(v.code, 0, "{}", v.text());
    assert!(
        v.stdout.contains(&format!(
            "ok, {} entries, {} bytes",
            fx.summary.entries,
            fx.bytes.len()
        )),
        "{}",
        v.text()
    );
    assert!(!v.stderr.contains("no summary found"), "{}", v.text());
    assert_eq!(fx.summary.length, fx.bytes.len() as u64);
    assert_eq!(fx.summary.uncompressed, fx.tar.len() as u64);

    // And it extracts to the same tree.
    let s = Scratch::new("integrity-good");
    let x = common::understudy_in(
        &s.path,
        [
            "archive".as_ref(),
            "extract".as_ref(),
            fx.archive.as_os_str(),
            "out".as_ref(),
        ],
        LIMIT,
    );
    assert_eq!(x.code, 0, "{}", x.text());
    let strip = |snap: common::Snapshot| -> Vec<_> {
        snap.into_iter()
            .map(|(p, r)| (p, r.kind, r.mode, r.size, r.mtime.0, r.link, r.content))
            .collect()
    };
    let want = strip(common::snapshot(&fx.tree, &[]));
    let got = strip(common::snapshot(&s.join("out"), &[]));
    assert_eq!(want.len(), got.len());
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w, g, "extracted tree differs at {}", w.0.display());
    }
    assert_eq!(
        std::fs::metadata(fx.tree.join("zz/g")).unwrap().mtime(),
        1_700_000_000
    );
}

#[test]
fn bit_flips_in_the_container() {
    let fx = fixture();
    let stored = fx
        .blocks
        .iter()
        .position(|s| s.src == s.dst)
        .expect("a stored block");
    let packed = fx
        .blocks
        .iter()
        .position(|s| s.src < s.dst)
        .expect("a compressed block");
    let flip = |at: usize, mask: u8| {
        let mut v = fx.bytes.clone();
        v[at] ^= mask;
        v
    };
    let at = |i: usize| format!("lzop block {i} at byte offset {}", fx.blocks[i].off);
    let cases: Vec<(&str, Vec<u8>, Vec<String>)> = vec![
        (
            "bit flip in compressed block data",
            {
                let s = fx.blocks[packed];
                flip((s.data + s.end) / 2, 0x08)
            },
            vec![at(packed), "adler32 of compressed data mismatch".into()],
        ),
        (
            "bit flip in stored block data",
            {
                let s = fx.blocks[stored];
                flip((s.data + s.end) / 2, 0x01)
            },
            vec![at(stored), "adler32 of uncompressed data mismatch".into()],
        ),
        (
            "bit flip in a block header (uncompressed length)",
            flip(fx.blocks[2].off, 0x01),
            vec![at(2), "over the 8388608-byte limit".into()],
        ),
        (
            "bit flip in a block header (checksum)",
            flip(fx.blocks[5].off + 9, 0x40),
            vec![at(5), "adler32 of uncompressed data mismatch".into()],
        ),
        (
            "bit flip in the lzop file header (mtime)",
            flip(27, 0x02),
            vec!["lzop header checksum mismatch".into()],
        ),
        (
            "bit flip in the lzop magic",
            flip(1, 0x20),
            vec!["not an lzop file: bad magic at byte offset 0".into()],
        ),
    ];
    for (case, bytes, what) in cases {
        let d = damaged("flip", &bytes);
        let what: Vec<&str> = what.iter().map(String::as_str).collect();
        d.assert_caught(case, &what);
        assert_ne!(d.lzop_t(), 0, "{case}: lzop -t passed");
    }
}

#[test]
fn truncations() {
    let fx = fixture();
    let len = fx.bytes.len();
    let b3 = fx.blocks[3];
    let cases = [
        ("inside the file header", 20, None),
        ("at a block boundary", b3.off, Some(b3.off)),
        ("inside a block header", b3.off + 6, Some(b3.off + 4)),
        ("inside block data", b3.data + 100, Some(b3.data)),
        ("half way", len / 2, None),
        ("just before the end marker", len - 4, Some(len - 4)),
        ("inside the end marker", len - 1, Some(len - 4)),
    ];
    for (case, cut, offset) in cases {
        let d = damaged("trunc", &fx.bytes[..cut]);
        let want = match offset {
            Some(o) => format!("lzop stream truncated at byte offset {o}:"),
            None => "lzop stream truncated at byte offset".to_string(),
        };
        d.assert_caught(&format!("truncated {case} ({cut} of {len})"), &[&want]);
    }
}

#[test]
fn trailing_bytes() {
    let fx = fixture();
    let len = fx.bytes.len();
    for (case, extra) in [
        ("trailing text", &b"junk\n"[..]),
        ("a second end marker", &[0u8; 4][..]),
        ("one zero byte", &[0u8][..]),
    ] {
        let d = damaged("trailing", &[&fx.bytes[..], extra].concat());
        d.assert_caught(
            case,
            &[&format!(
                "trailing data after the lzop end marker at byte offset {len}"
            )],
        );
    }
}

#[test]
fn dropped_duplicated_and_swapped_blocks_need_the_summary() {
    let fx = fixture();
    let i = fx.block_in_f();
    let n = fx.blocks.len();
    let all: Vec<usize> = (0..n).collect();
    let dropped: Vec<usize> = all.iter().copied().filter(|&k| k != i).collect();
    let mut duplicated = all.clone();
    duplicated.insert(i, i);
    let mut swapped = all.clone();
    swapped.swap(i, i + 1);
    assert_eq!(fx.with_blocks(&all), fx.bytes, "reassembly");
    for (case, order, diffs) in [
        (
            "dropped block",
            dropped,
            &[
                "length is",
                "SHA-256 is",
                "uncompressed size is",
                "entries, expected",
            ][..],
        ),
        (
            "duplicated block",
            duplicated,
            &[
                "length is",
                "SHA-256 is",
                "uncompressed size is",
                "entries, expected",
            ][..],
        ),
        ("swapped blocks", swapped, &["SHA-256 is"][..]),
    ] {
        let bytes = fx.with_blocks(&order);
        let d = damaged("reorder", &bytes);
        // lzop's own test cannot see it: every block is intact.
        assert_eq!(d.lzop_t(), 0, "{case}: lzop -t failed");
        let mut want = vec!["archive does not match its summary"];
        want.extend_from_slice(diffs);
        d.assert_caught(case, &want);
        // Without the summary, nothing is wrong as far as the container and the
        // tar structure can tell; verify says so, and warns.
        let bare = d.scratch.join("bare.tar.lzo");
        std::fs::write(&bare, &bytes).unwrap();
        let v = common::understudy_in(
            &d.scratch.path,
            ["archive", "verify", "bare.tar.lzo"],
            LIMIT,
        );
        assert_eq!(v.code, 0, "{case} without summary\n{}", v.text());
        assert!(v.stderr.contains("no summary found"), "{}", v.text());
    }
}

#[test]
fn damaged_tar_inside_a_sound_container() {
    let fx = fixture();
    let m = &fx.members[fx.members.len() / 2];
    let hdr = usize::try_from(m.header).unwrap();
    // A bad header checksum; and a size field that lies, with its checksum fixed.
    let mut bad_sum = fx.tar.clone();
    bad_sum[hdr + 3] ^= 0x01;
    let mut bad_size = fx.tar.clone();
    bad_size[hdr + 124..hdr + 136].copy_from_slice(b"07777777777\0");
    common::set_checksum(&mut bad_size[hdr..hdr + BLOCK]);
    for (case, tar, what) in [
        (
            "tar header checksum",
            bad_sum,
            format!("damaged archive at tar offset {}", hdr + BLOCK),
        ),
        (
            "tar size field",
            bad_size,
            "damaged archive at tar offset".to_string(),
        ),
    ] {
        // Re-compress: the lzop layer is sound, and a summary that matches it
        // (as `create` would have written for this stream) is beside it.
        let mut w = lzop::Writer::new(Vec::new(), 2, 0).unwrap();
        w.write_all(&tar).unwrap();
        let (bytes, stats) = w.finish().unwrap();
        let sum = Summary {
            length: stats.length,
            sha256: hex::encode(stats.sha256),
            uncompressed: stats.uncompressed,
            entries: fx.summary.entries,
        };
        let d = damaged_with("tar", &bytes, &sum);
        assert_eq!(d.lzop_t(), 0, "{case}: lzop -t failed");
        d.assert_caught(case, &[&what, "(lzop block "]);
    }
}

#[test]
fn system_errors_are_not_damage() {
    // A target that cannot be made: exit 1 (an error), not 3 (a damaged archive).
    let fx = fixture();
    let s = Scratch::new("integrity-system");
    std::fs::write(s.join("file"), b"").unwrap();
    let x = common::understudy_in(
        &s.path,
        [
            "archive".as_ref(),
            "extract".as_ref(),
            fx.archive.as_os_str(),
            "file/out".as_ref(),
        ],
        LIMIT,
    );
    assert_eq!(x.code, 1, "{}", x.text());
    assert!(x.stderr.contains("creating file/out"), "{}", x.text());
    let missing = common::understudy_in(&s.path, ["archive", "verify", "missing.tar.lzo"], LIMIT);
    assert_eq!(missing.code, 1, "{}", missing.text());
}
