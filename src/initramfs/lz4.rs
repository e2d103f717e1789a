//! The LZ4 "legacy" frame, the one LZ4 format the kernel's initramfs unpacker reads
//! (`lib/decompress_unlz4.c`; what `lz4 -l` writes): the magic `0x184C2102`, then
//! chunks of at most [`CHUNK`] bytes of input, each as its compressed length (u32,
//! little-endian) and an LZ4 block. It unpacks several times faster than zstd at boot
//! (about 0.4 s less under QEMU's emulation for the recovery image), for about twice
//! the size.
//!
//! Does not own: the blocks' compression itself (`lz4_flex`), or the cpio inside.

use std::io::{self, Read, Write};

/// The legacy frame's magic number.
pub const MAGIC: u32 = 0x184C_2102;
/// Input bytes per chunk: the kernel decompresses each chunk into a buffer this big
/// (`LZ4_DEFAULT_UNCOMPRESSED_CHUNK_SIZE`), so no chunk may hold more.
pub const CHUNK: usize = 8 << 20;

/// Compresses what is written to it into a legacy frame on `inner`; [`Writer::finish`]
/// writes the last chunk and gives `inner` back.
pub struct Writer<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> Writer<W> {
    pub fn new(mut inner: W) -> io::Result<Writer<W>> {
        inner.write_all(&MAGIC.to_le_bytes())?;
        Ok(Writer {
            inner,
            buf: Vec::with_capacity(CHUNK),
        })
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let block = lz4_flex::block::compress(&self.buf);
        let len = u32::try_from(block.len())
            .map_err(|_| io::Error::other("an LZ4 block of more than 4 GiB"))?;
        self.inner.write_all(&len.to_le_bytes())?;
        self.inner.write_all(&block)?;
        self.buf.clear();
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.flush_chunk()?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Writer<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.flush_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // A chunk is only ever written whole: flushing early would cut the stream
        // into smaller chunks, which is valid but not reproducible.
        self.inner.flush()
    }
}

/// Decompresses a whole legacy frame (for tests and reports: the kernel does it at
/// boot). Stops at the end of the input, as the kernel does.
pub fn decompress(mut input: impl Read) -> io::Result<Vec<u8>> {
    let mut word = [0u8; 4];
    input.read_exact(&mut word)?;
    if u32::from_le_bytes(word) != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an LZ4 legacy frame (bad magic)",
        ));
    }
    let mut out = Vec::new();
    let mut block = Vec::new();
    loop {
        match input.read_exact(&mut word) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(out),
            Err(e) => return Err(e),
        }
        let len = usize::try_from(u32::from_le_bytes(word)).map_err(io::Error::other)?;
        block.resize(len, 0);
        input.read_exact(&mut block)?;
        let start = out.len();
        out.resize(start + CHUNK, 0);
        let n = lz4_flex::block::decompress_into(&block, &mut out[start..])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        out.truncate(start + n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input that compresses, and is longer than two chunks.
    fn sample() -> Vec<u8> {
        (0..(2 * CHUNK + 12_345))
            .map(|i| u8::try_from((i / 7) % 251).unwrap())
            .collect()
    }

    #[test]
    fn round_trip_across_chunks_with_the_kernels_chunk_limit() {
        let data = sample();
        let mut w = Writer::new(Vec::new()).unwrap();
        // Odd write sizes, as the cpio writer makes them.
        for piece in data.chunks(1_000_003) {
            w.write_all(piece).unwrap();
        }
        let frame = w.finish().unwrap();
        assert_eq!(frame[..4], MAGIC.to_le_bytes());
        assert!(frame.len() < data.len() / 4, "it did not compress");
        assert_eq!(decompress(&frame[..]).unwrap(), data);
        // Three chunks: two whole ones and the rest, none above CHUNK.
        let mut at = 4;
        let mut chunks = 0;
        while at < frame.len() {
            let len = u32::from_le_bytes(frame[at..at + 4].try_into().unwrap());
            at += 4 + usize::try_from(len).unwrap();
            chunks += 1;
        }
        assert_eq!(at, frame.len());
        assert_eq!(chunks, 3);
    }

    #[test]
    fn the_lz4_tool_reads_our_frame() {
        // `lz4 -d` (xtask/debian-packages.txt) is the reference reader of the legacy
        // format besides the kernel.
        let data = sample();
        let mut w = Writer::new(Vec::new()).unwrap();
        w.write_all(&data).unwrap();
        let frame = w.finish().unwrap();
        let dir = std::env::temp_dir().join(format!("understudy-lz4-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("frame.lz4");
        std::fs::write(&path, &frame).unwrap();
        let out = crate::cmd::Cmd::new("lz4").arg("-dc").arg(&path).output();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(out.unwrap().stdout == data, "lz4 -dc gave back other bytes");
    }

    #[test]
    fn other_data_is_refused() {
        assert!(decompress(&b"\x28\xb5\x2f\xfdzstd"[..]).is_err());
        // An empty frame is the magic alone.
        let frame = Writer::new(Vec::new()).unwrap().finish().unwrap();
        assert_eq!(frame.len(), 4);
        assert!(decompress(&frame[..]).unwrap().is_empty());
    }
}
