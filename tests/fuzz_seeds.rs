//! The fuzz targets' seed corpus, and a few thousand deterministic mutations of it,
//! through the fuzz targets' own entry points (`fuzz/harness.rs`): no input may
//! panic, hang, or take more memory than the decoder's design allows.
//!
//! Seeds come from `fuzz/make-seeds.sh` (real archives from `understudy archive
//! create` and from `tar | lzop`) and from archives built here with the header
//! encoder. Mutations: bit flips, truncations, splices, inserted, deleted and
//! repeated ranges, interesting 32-bit values; and two that get past checksums:
//! tar header fields rewritten with the header checksum fixed, and compressed
//! lzop block data changed with its compressed-data checksum fixed (so the LZO
//! decompressor itself sees garbage).

mod common;
#[path = "../fuzz/harness.rs"]
mod harness;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Scratch, Tar, entry};
use understudy::archive::header::{BLOCK, Kind};
use understudy::lzop::{self, MAX_BLOCK_SIZE};

/// Counts live heap bytes, and their high-water mark, across all threads.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed straight to the system allocator; the counters
// only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The counters are global: the tests that read them take turns.
static MEASURING: Mutex<()> = Mutex::new(());

/// Blocks the decoder can hold at once with `harness::THREADS` workers: the one
/// being read, 2 per thread queued raw, one per worker, 2 per thread queued
/// decoded, as many again waiting to be put in order, and the one being read
/// out; each at most `MAX_BLOCK_SIZE` compressed plus as much decoded.
fn memory_bound(input: usize) -> usize {
    let t = harness::THREADS;
    let blocks = 1 + 2 * t + t + 2 * t + (2 * t + t) + 1;
    // The input itself, the walk target's copy of it in a container, and slack
    // for the tar reader and the test's own bookkeeping.
    blocks * 2 * MAX_BLOCK_SIZE + 4 * input + (16 << 20)
}

/// A fuzz target: its name, its entry point, how many mutations to run.
type Target = (&'static str, fn(&[u8]), usize);

/// Longest any one input may take (a debug build, on a loaded machine).
const TIME_LIMIT: Duration = Duration::from_secs(60);

/// xorshift64*: the same mutations on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn byte(&mut self) -> u8 {
        self.next().to_be_bytes()[0]
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            usize::try_from(self.next() % n as u64).unwrap()
        }
    }
}

const INTERESTING: [u32; 10] = [
    0,
    1,
    0x7f,
    0x200,
    0x0004_0000,
    0x0080_0000, // MAX_BLOCK_SIZE
    0x0080_0001,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
];

const OCTALS: [&[u8]; 8] = [
    b"00000000000",
    b"77777777777",
    b"00000001000",
    b"00001000000",
    b"99999999999",
    b"\x80\x00\x00\x00\x00\x00\x00\x00\x00\x00\x7f",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
    b"           ",
];

/// Offsets of the 512-byte blocks of a tar stream that look like headers.
fn tar_headers(data: &[u8]) -> Vec<usize> {
    (0..data.len() / BLOCK)
        .map(|i| i * BLOCK)
        .filter(|&o| &data[o + 257..o + 262] == b"ustar")
        .collect()
}

/// Compressed (not stored) blocks of an lzop stream written with our flags:
/// (offset of the adler32 of the compressed data, payload range).
fn packed_blocks(data: &[u8]) -> Vec<(usize, std::ops::Range<usize>)> {
    let be32 = |at: usize| -> Option<usize> {
        data.get(at..at + 4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap()) as usize)
    };
    let mut out = Vec::new();
    if !data.starts_with(&lzop::MAGIC) || data.len() < 40 {
        return out;
    }
    let flags = be32(17).unwrap_or(0);
    // Only the layout our writer and plain `lzop` use: adler32 of both.
    if flags & 0x343 != 0x3 {
        return out;
    }
    let mut at = 34 + data[33] as usize + 4;
    while let (Some(dst), Some(src)) = (be32(at), be32(at + 4)) {
        if dst == 0 || src > dst {
            break;
        }
        let stored = src == dst;
        let payload = at + 12 + if stored { 0 } else { 4 };
        if payload + src > data.len() {
            break;
        }
        if !stored {
            out.push((at + 12, payload..payload + src));
        }
        at = payload + src;
    }
    out
}

fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> (String, Vec<u8>) {
    let mut v = seed.to_vec();
    let len = v.len();
    match rng.below(10) {
        0 => {
            let n = 1 + rng.below(8);
            for _ in 0..n {
                if len > 0 {
                    let at = rng.below(len);
                    v[at] ^= 1 << rng.below(8);
                }
            }
            (format!("{n} bit flips"), v)
        }
        1 => {
            let at = rng.below(len + 1);
            v.truncate(at);
            (format!("truncated at {at}"), v)
        }
        2 => {
            let (a, b) = (rng.below(len + 1), rng.below(other.len() + 1));
            v.truncate(a);
            v.extend_from_slice(&other[b..]);
            (format!("spliced at {a} with another from {b}"), v)
        }
        3 => {
            let at = rng.below(len.saturating_sub(3));
            let value = INTERESTING[rng.below(INTERESTING.len())];
            if len >= 4 {
                v[at..at + 4].copy_from_slice(&value.to_be_bytes());
            }
            (format!("{value:#x} at {at}"), v)
        }
        4 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(64);
            let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
            v.splice(at..at, bytes);
            (format!("{n} bytes inserted at {at}"), v)
        }
        5 => {
            let at = rng.below(len + 1);
            let end = (at + 1 + rng.below(1024)).min(len);
            v.drain(at..end.max(at));
            (format!("bytes {at}..{end} deleted"), v)
        }
        6 => {
            let at = rng.below(len + 1);
            let end = (at + 1 + rng.below(4096)).min(len).max(at);
            let chunk = v[at..end].to_vec();
            let to = rng.below(len + 1);
            v.splice(to..to, chunk);
            (format!("bytes {at}..{end} repeated at {to}"), v)
        }
        7 => {
            // A tar header field rewritten, its checksum fixed.
            let hs = tar_headers(&v);
            if hs.is_empty() {
                return mutate(rng, seed, other);
            }
            let h = hs[rng.below(hs.len())];
            let (field, what) = match rng.below(6) {
                0 => (124..135, "size"),
                1 => (156..157, "type"),
                2 => (0..100, "name"),
                3 => (157..257, "link name"),
                4 => (345..500, "prefix/sparse map"),
                _ => (100..107, "mode"),
            };
            match rng.below(3) {
                0 if field.len() == 11 => {
                    v[field.clone()].copy_from_slice(OCTALS[rng.below(OCTALS.len())])
                }
                1 if field.len() == 1 => v[field.start] = b"0125634gxLKSDV\0"[rng.below(15)],
                _ => {
                    let at = field.start + rng.below(field.len());
                    v[at] = match rng.below(4) {
                        0 => b'/',
                        1 => b'.',
                        2 => 0,
                        _ => rng.byte(),
                    };
                }
            }
            common::set_checksum(&mut v[h..h + BLOCK]);
            (format!("tar {what} at header {h}, checksum fixed"), v)
        }
        8 => {
            // Compressed lzop data changed, its checksum fixed.
            let blocks = packed_blocks(&v);
            if blocks.is_empty() {
                return mutate(rng, seed, other);
            }
            let (sum_at, range) = blocks[rng.below(blocks.len())].clone();
            let n = 1 + rng.below(4);
            for _ in 0..n {
                let at = range.start + rng.below(range.len());
                v[at] = rng.byte();
            }
            let sum = lzop::adler32(1, &v[range]);
            v[sum_at..sum_at + 4].copy_from_slice(&sum.to_be_bytes());
            (
                format!("{n} bytes of LZO data at {sum_at}, checksum fixed"),
                v,
            )
        }
        _ => {
            // A block's uncompressed or compressed length set to a value that
            // tests the limits (what the decoder allocates for).
            let blocks = packed_blocks(&v);
            if blocks.is_empty() {
                return mutate(rng, seed, other);
            }
            let (sum_at, _) = blocks[rng.below(blocks.len())];
            let field = sum_at - 12 + 4 * rng.below(2);
            let value = INTERESTING[rng.below(INTERESTING.len())];
            v[field..field + 4].copy_from_slice(&value.to_be_bytes());
            (format!("block length {value:#x} at {field}"), v)
        }
    }
}

/// Seeds built here: what make-seeds.sh cannot make with real tools.
fn built_seeds() -> Vec<(String, Vec<u8>)> {
    let mut t = Tar::new();
    t.file("a", 0o644, b"data")
        .dir("d/", 0o755)
        .symlink("s", "../x")
        .hardlink("h", "a")
        .node("c", Kind::Char(1, 3), 0o666)
        .node("p", Kind::Fifo, 0o644)
        .file(&"n".repeat(150), 0o644, b"long");
    let mut sparse = entry(
        b"sparse",
        Kind::Sparse((0..30).map(|i| (i * 8192, 512)).collect()),
        0o644,
        0,
    );
    sparse.size = 1 << 20;
    let stored = vec![7u8; 30 * 512];
    t.add(&sparse, &stored);
    let mut x = entry(b"x", Kind::Regular, 0o644, 3);
    x.xattrs = vec![("user.a".into(), b"v".to_vec())];
    x.mtime_nsec = 5;
    t.add(&x, b"xyz");
    let tar = t.finish();
    vec![
        ("built.tar".into(), tar.clone()),
        ("built.tar.lzo".into(), common::lzop(&tar)),
    ]
}

fn load(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Run one input, failing with a way to reproduce it if it panics or takes
/// more memory than the bound.
fn run_one(
    target_name: &str,
    target: fn(&[u8]),
    what: &str,
    input: &[u8],
    keep: &std::path::Path,
    stats: &mut (usize, usize, Duration),
) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let start = Instant::now();
    let r = std::panic::catch_unwind(|| target(input));
    let took = start.elapsed();
    let used = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    let saved = || {
        let p = keep.join(format!("{target_name}-failure"));
        std::fs::write(&p, input).unwrap();
        p
    };
    if r.is_err() {
        panic!(
            "{target_name} panicked on {what}; input kept as {} (run it with the fuzz \
             target to reproduce)",
            saved().display()
        );
    }
    let bound = memory_bound(input.len());
    assert!(
        used <= bound,
        "{target_name} took {used} bytes (bound {bound}) on {what}; input kept as {}",
        saved().display()
    );
    stats.0 += 1;
    stats.1 = stats.1.max(used);
    stats.2 = stats.2.max(took);
}

#[test]
fn seeds_and_mutations_neither_panic_nor_hang_nor_balloon() {
    let _turn = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new("fuzz-seeds");
    let corpus = scratch.join("corpus");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/make-seeds.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg(&corpus)
        .env("UNDERSTUDY", common::bin())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make-seeds.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Failures are kept where a person can find them after the scratch is gone.
    let keep = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));

    // A hang anywhere aborts the whole test with a message, rather than never ending.
    let current = Arc::new(Mutex::new((String::new(), Instant::now())));
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (current, done) = (Arc::clone(&current), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let (what, since) = current.lock().unwrap().clone();
                if since.elapsed() > TIME_LIMIT {
                    eprintln!("fuzz seeds: no answer after {TIME_LIMIT:?} on {what}");
                    std::process::abort();
                }
            }
        })
    };

    let targets: [Target; 2] = [
        ("lzop_decode", harness::lzop_decode, 3000),
        ("archive_walk", harness::archive_walk, 3000),
    ];
    let mut rng = Rng(0x5eed_f022);
    for (name, target, mutations) in targets {
        let mut seeds = load(&corpus.join(name));
        seeds.extend(
            built_seeds()
                .into_iter()
                .filter(|(n, _)| name == "archive_walk" || n.ends_with(".lzo")),
        );
        assert!(seeds.len() >= 10, "{name}: only {} seeds", seeds.len());
        let mut stats = (0usize, 0usize, Duration::ZERO);
        for (seed, bytes) in &seeds {
            let what = format!("seed {seed}");
            *current.lock().unwrap() = (format!("{name} {what}"), Instant::now());
            run_one(name, target, &what, bytes, &keep, &mut stats);
        }
        // The big seeds cost the most and teach the least: mutate a 64 KiB head
        // of them (a truncation is itself a case worth having).
        for i in 0..mutations {
            let (sname, seed) = &seeds[i % seeds.len()];
            let (_, other) = &seeds[rng.below(seeds.len())];
            let head = &seed[..seed.len().min(64 << 10)];
            let (how, input) = mutate(&mut rng, head, &other[..other.len().min(64 << 10)]);
            let what = format!("mutation {i} of {sname}: {how}");
            *current.lock().unwrap() = (format!("{name} {what}"), Instant::now());
            run_one(name, target, &what, &input, &keep, &mut stats);
        }
        eprintln!(
            "{name}: {} inputs, peak {} KiB above baseline, slowest {:?}",
            stats.0,
            stats.1 >> 10,
            stats.2
        );
    }
    done.store(true, Ordering::Relaxed);
    watchdog.join().unwrap();
}

#[test]
fn decoding_big_blocks_stays_within_the_bound() {
    let _turn = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    // 16 blocks that each decode to MAX_BLOCK_SIZE: 128 MiB out of ~0.5 MiB in.
    // The decoder streams it; what it holds is bounded by blocks in flight.
    let zeros = vec![0u8; MAX_BLOCK_SIZE];
    let packed = lzo1x::compress(&zeros, lzo1x::CompressLevel::new(3));
    let mut block = Vec::new();
    block.extend_from_slice(&u32::try_from(MAX_BLOCK_SIZE).unwrap().to_be_bytes());
    block.extend_from_slice(&u32::try_from(packed.len()).unwrap().to_be_bytes());
    block.extend_from_slice(&lzop::adler32(1, &zeros).to_be_bytes());
    block.extend_from_slice(&lzop::adler32(1, &packed).to_be_bytes());
    block.extend_from_slice(&packed);
    let mut input = lzop::Header::ours(0).encode();
    for _ in 0..16 {
        input.extend_from_slice(&block);
    }
    input.extend_from_slice(&[0; 4]);
    drop(zeros);
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let mut total = 0u64;
    let (_, stats) = lzop::decode(&input[..], harness::THREADS, &mut |n| total += n, |r| {
        std::io::copy(r, &mut std::io::sink())?;
        Ok(())
    })
    .unwrap();
    let used = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    assert_eq!(stats.uncompressed, 16 * MAX_BLOCK_SIZE as u64);
    assert_eq!(total, stats.uncompressed);
    assert!(
        used <= memory_bound(input.len()),
        "{used} bytes for a stream of {} bytes",
        input.len()
    );
    // And it really is streamed, not gathered: well under the 128 MiB decoded.
    assert!(used < 16 * MAX_BLOCK_SIZE, "{used} bytes");
}
