//! What the fuzz targets do with one input. Shared, through `#[path]`, by the
//! cargo-fuzz targets in `fuzz_targets/` and by the main crate's
//! `tests/fuzz_seeds.rs`, so the seed test runs exactly what the fuzzer runs.
//!
//! Both entry points must return (never panic, never hang) whatever the bytes;
//! an `Err` is the expected answer to nearly every input.

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::path::Path;

use understudy::{archive, lzop};

/// Threads for decoding: more than one, so that out-of-order block results and
/// the shutdown of a failed pipeline are exercised too.
pub const THREADS: usize = 2;

/// Fail loudly if a worker thread panicked: `lzop::decode` turns a panic of its
/// reader thread into an ordinary error, which would hide it from the fuzzer.
fn no_panic<T>(r: anyhow::Result<T>) {
    if let Err(e) = r {
        let text = format!("{e:#}");
        assert!(!text.contains("panicked"), "a thread panicked: {text}");
    }
}

/// `lzop::decode`, reading every decoded byte.
pub fn lzop_decode(data: &[u8]) {
    no_panic(lzop::decode(data, THREADS, &mut |_| {}, |r| {
        io::copy(r, &mut io::sink())?;
        Ok(())
    }));
}

/// `archive::walk` over the input. Input that starts with the lzop magic is
/// walked as it is; anything else is taken as a tar stream and put in a sound
/// lzop container first, since a mutated container almost never gets past the
/// block checksums to the tar reader.
pub fn archive_walk(data: &[u8]) {
    let mut count = 0u64;
    let mut each = |item: archive::Listed| {
        // Touch what `list` would print.
        count += item.size.min(1) + item.path.len() as u64;
        Ok(())
    };
    if data.starts_with(&lzop::MAGIC) {
        no_panic(archive::walk(data, THREADS, &mut |_| {}, &mut each));
    } else {
        let mut w = lzop::Writer::new(Vec::new(), 1, 0).expect("lzop writer");
        w.write_all(data).expect("compressing");
        let (wrapped, _) = w.finish().expect("compressing");
        no_panic(archive::walk(&wrapped[..], THREADS, &mut |_| {}, &mut each));
    }
}

/// For plain (non-fuzzing) builds: run `target` on every file named on the
/// command line, or in the directories named.
pub fn run_files(target: fn(&[u8])) {
    let mut n = 0usize;
    let mut run = |p: &Path| {
        let mut data = Vec::new();
        std::fs::File::open(p)
            .and_then(|mut f| f.read_to_end(&mut data))
            .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
        eprintln!("{}", p.display());
        target(&data);
        n += 1;
    };
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if args.is_empty() {
        eprintln!("usage: TARGET FILE|DIR... (a plain build runs the given inputs once)");
        std::process::exit(2);
    }
    for a in args {
        let p = Path::new(&a);
        if p.is_dir() {
            let mut files: Vec<_> = std::fs::read_dir(p)
                .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
                .map(|e| e.unwrap().path())
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            for f in files {
                run(&f);
            }
        } else {
            run(p);
        }
    }
    eprintln!("{n} inputs, no crash");
}
