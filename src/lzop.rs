//! The lzop container: header, blocks, checksums, and parallel block coding.
//!
//! Owns the byte format that `lzop -t` and `lzop -dc` read; knows nothing about tar.
//! Every block is independent, so both directions spread blocks over a thread pool and
//! put them back in order. Memory stays bounded: a fixed number of blocks are in flight.
//! The decoder refuses any block larger than [`MAX_BLOCK_SIZE`] before allocating for it.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::thread;

use anyhow::{Context, Result, bail};
use crossbeam_channel::{Receiver, Sender, bounded};
use sha2::{Digest, Sha256};

mod lzo1x_1;

/// The nine bytes every lzop file starts with.
pub const MAGIC: [u8; 9] = [0x89, b'L', b'Z', b'O', 0x00, 0x0d, 0x0a, 0x1a, 0x0a];
/// Uncompressed bytes per block when writing (lzop's own default).
pub const BLOCK_SIZE: usize = 256 * 1024;
/// The largest block the decoder accepts. lzop writes 256 KiB blocks; its own hard
/// limit is 64 MiB, which would let a hostile header make us allocate that much
/// per thread, so we stop at 8 MiB.
pub const MAX_BLOCK_SIZE: usize = 8 * 1024 * 1024;

const F_ADLER32_D: u32 = 0x0000_0001;
const F_ADLER32_C: u32 = 0x0000_0002;
const F_H_EXTRA_FIELD: u32 = 0x0000_0040;
const F_CRC32_D: u32 = 0x0000_0100;
const F_CRC32_C: u32 = 0x0000_0200;
const F_MULTIPART: u32 = 0x0000_0400;
const F_H_FILTER: u32 = 0x0000_0800;
const F_H_CRC32: u32 = 0x0000_1000;
const F_OS_UNIX: u32 = 0x0300_0000;
const F_RESERVED: u32 = 0x000f_c000; // lzop.h: everything outside F_MASK, F_OS_MASK, F_CS_MASK

const M_LZO1X_1: u8 = 1;
const M_LZO1X_1_15: u8 = 2;
const M_LZO1X_999: u8 = 3;

/// Adler-32 as lzop uses it, continuing from `adler` (1 for a fresh sum).
pub fn adler32(adler: u32, data: &[u8]) -> u32 {
    let mut a = simd_adler32::Adler32::from_checksum(adler);
    a.write(data);
    a.finish()
}

fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Which checksums a stream's blocks carry, from the header flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Checks {
    adler_d: bool,
    crc_d: bool,
    adler_c: bool,
    crc_c: bool,
}

impl Checks {
    fn from_flags(flags: u32) -> Checks {
        Checks {
            adler_d: flags & F_ADLER32_D != 0,
            crc_d: flags & F_CRC32_D != 0,
            adler_c: flags & F_ADLER32_C != 0,
            crc_c: flags & F_CRC32_C != 0,
        }
    }
}

/// The parsed lzop file header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub method: u8,
    pub level: u8,
    pub flags: u32,
    pub mode: u32,
    pub mtime: u64,
    pub name: Vec<u8>,
}

impl Header {
    /// The header we write: what `lzop -3` writes, plus a checksum of the compressed
    /// data so corruption is caught before decompression.
    pub fn ours(mtime: u64) -> Header {
        Header {
            version: 0x1040,
            method: M_LZO1X_1,
            level: 5,
            flags: F_OS_UNIX | F_ADLER32_D | F_ADLER32_C,
            mode: 0o100_644,
            mtime,
            name: Vec::new(),
        }
    }

    /// Serialize, magic and header checksum included.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(64);
        body.extend_from_slice(&self.version.to_be_bytes());
        body.extend_from_slice(&0x20a0u16.to_be_bytes()); // library version
        body.extend_from_slice(&0x0940u16.to_be_bytes()); // needed to extract
        body.push(self.method);
        body.push(self.level);
        body.extend_from_slice(&self.flags.to_be_bytes());
        body.extend_from_slice(&self.mode.to_be_bytes());
        let (lo, hi) = (self.mtime & 0xffff_ffff, self.mtime >> 32);
        body.extend_from_slice(&u32::try_from(lo).unwrap_or(0).to_be_bytes());
        body.extend_from_slice(&u32::try_from(hi).unwrap_or(0).to_be_bytes());
        let name = &self.name[..self.name.len().min(255)];
        body.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        body.extend_from_slice(name);
        let check = adler32(1, &body);
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&body);
        out.extend_from_slice(&check.to_be_bytes());
        out
    }
}

/// Reads exactly `buf.len()` bytes, telling a clean end of input (`Ok(false)` with
/// nothing read) from a truncation in the middle.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) if done == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// A reader that counts and hashes every byte that passes through it.
struct Tally<R> {
    inner: R,
    offset: u64,
    sha: Sha256,
}

impl<R: Read> Tally<R> {
    fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let at = self.offset;
        match read_full(self, buf) {
            Ok(true) => Ok(()),
            Ok(false) | Err(_) if buf.is_empty() => Ok(()),
            Ok(false) => bail!("lzop stream truncated at byte offset {at}: expected {what}"),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                bail!("lzop stream truncated at byte offset {at}: expected {what}")
            }
            Err(e) => Err(e).with_context(|| format!("reading {what} at byte offset {at}")),
        }
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let mut b = [0u8; 4];
        self.exact(&mut b, what)?;
        Ok(u32::from_be_bytes(b))
    }
}

impl<R: Read> Read for Tally<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.offset += n as u64;
        Ok(n)
    }
}

/// Parse the header, checking magic, version, method, flags and header checksum.
fn read_header<R: Read>(t: &mut Tally<R>) -> Result<Header> {
    let mut magic = [0u8; 9];
    t.exact(&mut magic, "the lzop magic")?;
    if magic != MAGIC {
        bail!("not an lzop file: bad magic at byte offset 0");
    }
    // Everything after the magic up to the checksum is covered by the checksum.
    let mut body = Vec::with_capacity(64);
    let mut take = |t: &mut Tally<R>, n: usize, what: &str| -> Result<Vec<u8>> {
        let mut b = vec![0u8; n];
        t.exact(&mut b, what)?;
        body.extend_from_slice(&b);
        Ok(b)
    };
    let be16 = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let version = be16(&take(t, 2, "the header version")?);
    let _lib_version = take(t, 2, "the library version")?;
    if version < 0x0940 {
        bail!("lzop header version {version:#06x} is older than 0x0940, not supported");
    }
    let needed = be16(&take(t, 2, "the version needed")?);
    if needed > 0x1040 {
        bail!("lzop stream needs version {needed:#06x} to extract, newer than we know");
    }
    let ml = take(t, 2, "the method and level")?;
    let (method, level) = (ml[0], ml[1]);
    if ![M_LZO1X_1, M_LZO1X_1_15, M_LZO1X_999].contains(&method) {
        bail!("lzop method {method} is not LZO1X, not supported");
    }
    let flags = be32(&take(t, 4, "the flags")?);
    if flags & F_MULTIPART != 0 {
        bail!("multipart lzop streams are not supported");
    }
    if flags & F_RESERVED != 0 {
        bail!("lzop header has reserved flags set ({flags:#010x})");
    }
    if flags & F_H_FILTER != 0 {
        bail!("lzop filters are not supported");
    }
    let mode = be32(&take(t, 4, "the mode")?);
    let lo = be32(&take(t, 4, "the mtime")?);
    let hi = be32(&take(t, 4, "the mtime")?);
    let name_len = take(t, 1, "the name length")?[0] as usize;
    let name = take(t, name_len, "the name")?;
    let expect = if flags & F_H_CRC32 != 0 {
        crc32(&body)
    } else {
        adler32(1, &body)
    };
    let got = t.u32("the header checksum")?;
    if got != expect {
        bail!("lzop header checksum mismatch (stored {got:#010x}, computed {expect:#010x})");
    }
    if flags & F_H_EXTRA_FIELD != 0 {
        let len = t.u32("the extra field length")? as usize;
        if len > 64 * 1024 {
            bail!("lzop extra field of {len} bytes is implausible");
        }
        let mut extra = vec![0u8; len];
        t.exact(&mut extra, "the extra field")?;
        let _check = t.u32("the extra field checksum")?;
    }
    Ok(Header {
        version,
        method,
        level,
        flags,
        mode,
        mtime: u64::from(lo) | (u64::from(hi) << 32),
        name,
    })
}

/// What a whole container turned out to be, from either direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Length of the compressed file, header to end marker.
    pub length: u64,
    /// SHA-256 of exactly those bytes.
    pub sha256: [u8; 32],
    /// Bytes of payload (the tar stream).
    pub uncompressed: u64,
    pub blocks: u64,
}

// ---------------------------------------------------------------------------
// Writing

fn compress_block(c: &mut lzo1x_1::Compressor, data: &[u8], checks: Checks) -> Vec<u8> {
    let mut packed = Vec::new();
    c.compress(data, &mut packed);
    // lzop stores a block raw when compression does not make it smaller.
    let stored = packed.len() >= data.len();
    let payload: &[u8] = if stored { data } else { &packed };
    let mut out = Vec::with_capacity(payload.len() + 16);
    // Blocks are at most BLOCK_SIZE, far below 4 GiB.
    let len32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes();
    out.extend_from_slice(&len32(data.len()));
    out.extend_from_slice(&len32(payload.len()));
    if checks.adler_d {
        out.extend_from_slice(&adler32(1, data).to_be_bytes());
    }
    if checks.crc_d {
        out.extend_from_slice(&crc32(data).to_be_bytes());
    }
    if !stored {
        if checks.adler_c {
            out.extend_from_slice(&adler32(1, payload).to_be_bytes());
        }
        if checks.crc_c {
            out.extend_from_slice(&crc32(payload).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// An lzop encoder. Input is cut into [`BLOCK_SIZE`] blocks, compressed on `threads`
/// workers, and written to `out` in order. Call [`Writer::finish`] to write the end
/// marker; dropping without it leaves a truncated stream, which readers reject.
pub struct Writer<W: Write> {
    out: Option<W>,
    sha: Sha256,
    length: u64,
    uncompressed: u64,
    blocks: u64,
    buf: Vec<u8>,
    checks: Checks,
    pool: Option<Pool>,
    /// Used when there is no pool (one thread).
    compressor: Option<Box<lzo1x_1::Compressor>>,
    next_seq: u64,
    next_out: u64,
    done: BTreeMap<u64, Vec<u8>>,
}

struct Pool {
    jobs: Sender<(u64, Vec<u8>)>,
    results: Receiver<(u64, Vec<u8>)>,
    workers: Vec<thread::JoinHandle<()>>,
    in_flight: usize,
    limit: usize,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W, threads: usize, mtime: u64) -> Result<Writer<W>> {
        let header = Header::ours(mtime);
        let checks = Checks::from_flags(header.flags);
        let pool = (threads > 1).then(|| {
            let (jobs, job_rx) = bounded::<(u64, Vec<u8>)>(threads * 2);
            let (res_tx, results) = bounded(threads * 2);
            let workers = (0..threads)
                .map(|_| {
                    let job_rx = job_rx.clone();
                    let res_tx: Sender<(u64, Vec<u8>)> = res_tx.clone();
                    thread::spawn(move || {
                        let mut c = lzo1x_1::Compressor::new();
                        for (seq, data) in job_rx {
                            if res_tx
                                .send((seq, compress_block(&mut c, &data, checks)))
                                .is_err()
                            {
                                return;
                            }
                        }
                    })
                })
                .collect();
            Pool {
                jobs,
                results,
                workers,
                in_flight: 0,
                limit: threads * 3,
            }
        });
        let mut w = Writer {
            out: Some(out),
            sha: Sha256::new(),
            length: 0,
            uncompressed: 0,
            blocks: 0,
            buf: Vec::with_capacity(BLOCK_SIZE),
            checks,
            pool,
            compressor: None,
            next_seq: 0,
            next_out: 0,
            done: BTreeMap::new(),
        };
        w.emit(&header.encode())?;
        Ok(w)
    }

    fn emit(&mut self, bytes: &[u8]) -> io::Result<()> {
        let out = self.out.as_mut().ok_or(io::ErrorKind::BrokenPipe)?;
        out.write_all(bytes)?;
        self.sha.update(bytes);
        self.length += bytes.len() as u64;
        Ok(())
    }

    /// Write every finished block that is next in order.
    fn drain_ready(&mut self) -> io::Result<()> {
        while let Some(block) = self.done.remove(&self.next_out) {
            self.emit(&block)?;
            self.next_out += 1;
        }
        Ok(())
    }

    fn wait_one(&mut self) -> io::Result<()> {
        let Some(pool) = self.pool.as_mut() else {
            return Ok(());
        };
        let (seq, block) = pool
            .results
            .recv()
            .map_err(|_| io::Error::other("compression worker died"))?;
        pool.in_flight -= 1;
        self.done.insert(seq, block);
        self.drain_ready()
    }

    fn submit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(BLOCK_SIZE));
        self.uncompressed += data.len() as u64;
        self.blocks += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.pool.is_none() {
            let block = compress_block(
                self.compressor.get_or_insert_with(Box::default),
                &data,
                self.checks,
            );
            self.next_out += 1;
            return self.emit(&block);
        }
        while self.pool.as_ref().is_some_and(|p| p.in_flight >= p.limit) {
            self.wait_one()?;
        }
        if let Some(pool) = self.pool.as_mut() {
            pool.jobs
                .send((seq, data))
                .map_err(|_| io::Error::other("compression worker died"))?;
            pool.in_flight += 1;
        }
        Ok(())
    }

    /// Flush every block, write the end marker, and return the sink and the stats.
    pub fn finish(mut self) -> Result<(W, StreamStats)> {
        self.submit().context("compressing the last block")?;
        while self.pool.as_ref().is_some_and(|p| p.in_flight > 0) {
            self.wait_one().context("compressing")?;
        }
        self.emit(&0u32.to_be_bytes())
            .context("writing the end marker")?;
        let mut out = self.out.take().context("lzop writer already finished")?;
        out.flush().context("flushing the archive")?;
        let stats = StreamStats {
            length: self.length,
            sha256: self.sha.clone().finalize().into(),
            uncompressed: self.uncompressed,
            blocks: self.blocks,
        };
        Ok((out, stats))
    }
}

impl<W: Write> Write for Writer<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            let room = BLOCK_SIZE - self.buf.len();
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == BLOCK_SIZE {
                self.submit()?;
            }
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for Writer<W> {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            drop(pool.jobs);
            drop(pool.results);
            for w in pool.workers {
                let _ = w.join();
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Reading

/// One block as read from the stream, not yet decompressed.
struct RawBlock {
    index: u64,
    offset: u64,
    dst_len: usize,
    stored: bool,
    check_d: (Option<u32>, Option<u32>),
    check_c: (Option<u32>, Option<u32>),
    payload: Vec<u8>,
}

/// A decoded block, or the reason it could not be.
struct Decoded {
    index: u64,
    offset: u64,
    data: Result<Vec<u8>, String>,
}

/// Block buffers go back and forth instead of being freed: a fresh 256 KiB buffer
/// per block costs page faults and kernel zeroing, about 7% of an extraction.
/// Only buffers of ordinary size are kept, so the pool stays a few MiB whatever
/// block sizes a stream claims.
#[derive(Clone)]
struct Spares {
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
}

impl Spares {
    fn new(n: usize) -> Spares {
        let (tx, rx) = bounded(n);
        Spares { tx, rx }
    }

    /// A zeroed buffer of `len` bytes, reused if one is spare.
    fn take(&self, len: usize) -> Vec<u8> {
        let mut v = self.rx.try_recv().unwrap_or_default();
        v.clear();
        v.resize(len, 0);
        v
    }

    fn give(&self, v: Vec<u8>) {
        if v.capacity() <= 2 * BLOCK_SIZE {
            let _ = self.tx.try_send(v);
        }
    }
}

fn decode_block(b: RawBlock, spares: &Spares) -> Decoded {
    let check = |what: &str, data: &[u8], (adler, crc): (Option<u32>, Option<u32>)| {
        if let Some(want) = adler {
            let got = adler32(1, data);
            if got != want {
                return Err(format!("adler32 of {what} data mismatch"));
            }
        }
        if let Some(want) = crc {
            if crc32(data) != want {
                return Err(format!("crc32 of {what} data mismatch"));
            }
        }
        Ok(())
    };
    let data = (|| {
        if b.stored {
            check("uncompressed", &b.payload, b.check_d)?;
            return Ok(b.payload);
        }
        check("compressed", &b.payload, b.check_c)?;
        let mut out = spares.take(b.dst_len);
        let done =
            lzo1x::decompress(&b.payload, &mut out).map_err(|e| format!("LZO data invalid: {e}"));
        spares.give(b.payload);
        done?;
        check("uncompressed", &out, b.check_d)?;
        Ok(out)
    })();
    Decoded {
        index: b.index,
        offset: b.offset,
        data,
    }
}

/// Read the next block's framing and payload; `None` at the end marker.
fn read_block<R: Read>(
    t: &mut Tally<R>,
    checks: Checks,
    index: u64,
    spares: &Spares,
) -> Result<Option<RawBlock>> {
    let offset = t.offset;
    let dst_len = t.u32("a block header")? as usize;
    if dst_len == 0 {
        return Ok(None);
    }
    if dst_len > MAX_BLOCK_SIZE {
        bail!(
            "lzop block {index} at byte offset {offset} claims {dst_len} bytes, over the {MAX_BLOCK_SIZE}-byte limit"
        );
    }
    let src_len = t.u32("a block header")? as usize;
    if src_len == 0 || src_len > dst_len {
        bail!(
            "lzop block {index} at byte offset {offset} is corrupt: {src_len} compressed bytes for {dst_len}"
        );
    }
    let stored = src_len == dst_len;
    let adler_d = if checks.adler_d {
        Some(t.u32("a block checksum")?)
    } else {
        None
    };
    let crc_d = if checks.crc_d {
        Some(t.u32("a block checksum")?)
    } else {
        None
    };
    let (adler_c, crc_c) = if stored {
        (None, None)
    } else {
        (
            if checks.adler_c {
                Some(t.u32("a block checksum")?)
            } else {
                None
            },
            if checks.crc_c {
                Some(t.u32("a block checksum")?)
            } else {
                None
            },
        )
    };
    let mut payload = spares.take(src_len);
    t.exact(&mut payload, "block data")?;
    Ok(Some(RawBlock {
        index,
        offset,
        dst_len,
        stored,
        check_d: (adler_d, crc_d),
        check_c: (adler_c, crc_c),
        payload,
    }))
}

/// Where in the compressed stream the decoded bytes currently being read came from,
/// so that a tar-level error can name a place in the file.
#[derive(Clone, Copy, Debug, Default)]
pub struct Position {
    /// Offset in the uncompressed (tar) stream.
    pub uncompressed: u64,
    /// Index and byte offset in the lzop file of the block holding that offset.
    pub block: u64,
    pub block_offset: u64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tar offset {} (lzop block {} at byte offset {})",
            self.uncompressed, self.block, self.block_offset
        )
    }
}

/// The decoded byte stream handed to the consumer of [`decode`].
pub struct Decoder<'a> {
    results: &'a Receiver<Decoded>,
    pending: BTreeMap<u64, Decoded>,
    next: u64,
    current: Vec<u8>,
    pos_in_current: usize,
    position: Position,
    finished: bool,
    on_block: &'a mut dyn FnMut(u64),
    spares: Spares,
}

impl Decoder<'_> {
    /// The place of the next byte to be read.
    pub fn position(&self) -> Position {
        self.position
    }

    fn next_block(&mut self) -> io::Result<bool> {
        loop {
            if let Some(d) = self.pending.remove(&self.next) {
                self.next += 1;
                self.position.block = d.index;
                self.position.block_offset = d.offset;
                match d.data {
                    Ok(data) => {
                        (self.on_block)(data.len() as u64);
                        self.spares.give(std::mem::replace(&mut self.current, data));
                        self.pos_in_current = 0;
                        return Ok(true);
                    }
                    Err(why) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("lzop block {} at byte offset {}: {why}", d.index, d.offset),
                        ));
                    }
                }
            }
            match self.results.recv() {
                Ok(d) => {
                    self.pending.insert(d.index, d);
                }
                Err(_) => {
                    self.finished = true;
                    return Ok(false);
                }
            }
        }
    }
}

impl Read for Decoder<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos_in_current == self.current.len() {
            if self.finished || !self.next_block()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.current.len() - self.pos_in_current);
        buf[..n].copy_from_slice(&self.current[self.pos_in_current..self.pos_in_current + n]);
        self.pos_in_current += n;
        self.position.uncompressed += n as u64;
        Ok(n)
    }
}

/// Decode an lzop stream on `threads` workers and hand the payload to `consume` as a
/// reader. After `consume` returns, the rest of the stream is read and checked too,
/// so a successful return means the whole container, end marker included, is sound
/// and nothing follows it. `on_block` is told the size of each block as it is read
/// (for progress).
pub fn decode<R, T>(
    input: R,
    threads: usize,
    on_block: &mut dyn FnMut(u64),
    consume: impl FnOnce(&mut Decoder<'_>) -> Result<T>,
) -> Result<(T, StreamStats)>
where
    R: Read + Send,
{
    let threads = threads.max(1);
    let (raw_tx, raw_rx) = bounded::<RawBlock>(threads * 2);
    let (res_tx, res_rx) = bounded::<Decoded>(threads * 2);
    let spares = Spares::new(threads * 8);
    let feeder_spares = spares.clone();
    thread::scope(|s| {
        let feeder = s.spawn(move || -> Result<StreamStats> {
            let mut t = Tally {
                inner: input,
                offset: 0,
                sha: Sha256::new(),
            };
            let header = read_header(&mut t)?;
            let checks = Checks::from_flags(header.flags);
            let mut index = 0u64;
            let mut uncompressed = 0u64;
            while let Some(block) = read_block(&mut t, checks, index, &feeder_spares)? {
                uncompressed += block.dst_len as u64;
                index += 1;
                if raw_tx.send(block).is_err() {
                    // The consumer stopped; its error is the one to report.
                    return Ok(StreamStats::default());
                }
            }
            drop(raw_tx);
            let end = t.offset;
            let mut probe = [0u8; 1];
            if read_full(&mut t, &mut probe).context("reading past the end marker")? {
                bail!("trailing data after the lzop end marker at byte offset {end}");
            }
            Ok(StreamStats {
                length: t.offset,
                sha256: t.sha.finalize().into(),
                uncompressed,
                blocks: index,
            })
        });
        for _ in 0..threads {
            let raw_rx = raw_rx.clone();
            let res_tx = res_tx.clone();
            let spares = spares.clone();
            s.spawn(move || {
                for block in raw_rx {
                    if res_tx.send(decode_block(block, &spares)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(raw_rx);
        drop(res_tx);
        let mut decoder = Decoder {
            results: &res_rx,
            pending: BTreeMap::new(),
            next: 0,
            current: Vec::new(),
            pos_in_current: 0,
            position: Position::default(),
            finished: false,
            on_block,
            spares,
        };
        let consumed = consume(&mut decoder);
        let drained = consumed
            .as_ref()
            .ok()
            .map(|_| io::copy(&mut decoder, &mut io::sink()));
        drop(decoder);
        drop(res_rx);
        let fed = feeder
            .join()
            .map_err(|_| anyhow::anyhow!("lzop reader thread panicked"))?;
        // A framing error in the feeder explains any payload error that followed.
        let stats = fed?;
        let value = consumed?;
        if let Some(d) = drained {
            d.context("reading the rest of the lzop stream")?;
        }
        Ok((value, stats))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(data: &[u8], threads: usize) -> (Vec<u8>, StreamStats) {
        let mut w = Writer::new(Vec::new(), threads, 0).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn decode_all(bytes: &[u8], threads: usize) -> Result<(Vec<u8>, StreamStats)> {
        decode(bytes, threads, &mut |_| {}, |r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v)?;
            Ok(v)
        })
    }

    fn sample(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| ((i * 7) % 251) as u8 ^ ((i >> 13) as u8))
            .collect()
    }

    #[test]
    fn adler32_matches_known_values() {
        assert_eq!(adler32(1, b""), 1);
        assert_eq!(adler32(1, b"Wikipedia"), 0x11E6_0398);
        let big = vec![0xffu8; 100_000];
        // Reference computed with the straightforward modular definition.
        let (mut a, mut b) = (1u64, 0u64);
        for &x in &big {
            a = (a + u64::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!(adler32(1, &big), ((b << 16) | a) as u32);
    }

    #[test]
    fn round_trips_across_thread_counts() {
        let data = sample(3 * BLOCK_SIZE + 1234);
        for threads in [1, 2, 5] {
            let (bytes, st) = encode(&data, threads);
            assert_eq!(st.length, bytes.len() as u64);
            assert_eq!(st.uncompressed, data.len() as u64);
            assert_eq!(st.blocks, 4);
            let (back, rst) = decode_all(&bytes, threads).unwrap();
            assert_eq!(back, data);
            assert_eq!(rst, st);
        }
    }

    #[test]
    fn incompressible_blocks_are_stored() {
        let mut x = 0x1234_5678u32;
        let noise: Vec<u8> = (0..BLOCK_SIZE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let (bytes, _) = encode(&noise, 2);
        // header + block header (8) + adler (4) + raw data + end marker.
        let header_len = Header::ours(0).encode().len();
        assert_eq!(bytes.len(), header_len + 12 + BLOCK_SIZE + 4);
        assert_eq!(decode_all(&bytes, 2).unwrap().0, noise);
    }

    #[test]
    fn every_kind_of_damage_is_caught() {
        let data = sample(4 * BLOCK_SIZE);
        let (good, _) = encode(&data, 2);
        let hl = Header::ours(0).encode().len();
        // Block boundaries, to drop, duplicate and swap whole blocks.
        let mut bounds = vec![hl];
        let mut at = hl;
        loop {
            let dst = u32::from_be_bytes(good[at..at + 4].try_into().unwrap()) as usize;
            if dst == 0 {
                break;
            }
            let src = u32::from_be_bytes(good[at + 4..at + 8].try_into().unwrap()) as usize;
            at += 8 + 4 + if src < dst { 4 } else { 0 } + src;
            bounds.push(at);
        }
        let block = |i: usize| good[bounds[i]..bounds[i + 1]].to_vec();
        let end = good[bounds[4]..].to_vec();
        let head = good[..hl].to_vec();
        let cat = |parts: &[Vec<u8>]| parts.concat();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("bit flip in data", {
                let mut v = good.clone();
                v[hl + 100] ^= 0x10;
                v
            }),
            ("bit flip in header", {
                let mut v = good.clone();
                v[12] ^= 1;
                v
            }),
            ("truncated", good[..good.len() - 10].to_vec()),
            ("no end marker", good[..good.len() - 4].to_vec()),
            ("trailing bytes", [good.clone(), vec![0]].concat()),
            ("huge block", {
                let mut v = good.clone();
                v[hl..hl + 4].copy_from_slice(&u32::MAX.to_be_bytes());
                v
            }),
        ];
        for (what, bytes) in cases {
            assert!(decode_all(&bytes, 2).is_err(), "{what} was not detected");
        }
        // These keep every block checksum valid: only the payload length or the
        // whole-file digest can tell. The decoder passes them; the stats differ.
        let reordered = [
            (
                "dropped block",
                cat(&[head.clone(), block(0), block(2), block(3), end.clone()]),
            ),
            (
                "duplicated block",
                cat(&[
                    head.clone(),
                    block(0),
                    block(1),
                    block(1),
                    block(2),
                    block(3),
                    end.clone(),
                ]),
            ),
            (
                "swapped blocks",
                cat(&[head.clone(), block(1), block(0), block(2), block(3), end]),
            ),
        ];
        let (_, good_stats) = decode_all(&good, 1).unwrap();
        for (what, bytes) in reordered {
            let (_, st) = decode_all(&bytes, 2).unwrap();
            assert_ne!(st.sha256, good_stats.sha256, "{what}");
        }
    }

    #[test]
    fn error_names_the_block_offset() {
        let data = sample(3 * BLOCK_SIZE);
        let (mut bytes, _) = encode(&data, 1);
        let hl = Header::ours(0).encode().len();
        let dst = BLOCK_SIZE;
        let src = u32::from_be_bytes(bytes[hl + 4..hl + 8].try_into().unwrap()) as usize;
        let second = hl + 16 + src.min(dst);
        bytes[second + 40] ^= 0xff;
        let err = decode_all(&bytes, 2).unwrap_err();
        assert!(
            format!("{err:#}").contains(&format!("lzop block 1 at byte offset {second}")),
            "{err:#}"
        );
    }
}
