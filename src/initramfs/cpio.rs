//! The newc ("070701") cpio format that the kernel unpacks as an initramfs: the
//! writer (header encoding, padding, the `TRAILER!!!` record, deterministic inode
//! numbers) and a reader for the archives the writer makes (PID 1 reads the image's
//! deferred part with it, `initramfs::deferred`).
//!
//! Does not own: choosing or sorting the entries (the caller hands them over in the
//! order it wants them in the archive), nor compression (the caller wraps the writer
//! or the reader).
//! See `Documentation/driver-api/early-userspace/buffer-format.rst` in the kernel.

use std::io::{self, Read, Write};

use anyhow::{Context, Result, bail};

/// What a cpio member is; the kernel's unpacker creates all four without root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Dir,
    File,
    Symlink,
    /// A character device (`/dev/console` must exist before `/init` runs, or init
    /// starts with no standard streams).
    CharDev {
        major: u32,
        minor: u32,
    },
}

/// One member's header fields; the data (file contents or link target) is passed
/// separately so large files can stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Path inside the archive, relative (`usr/bin/busybox`), no leading `/`.
    pub name: String,
    pub node: Node,
    /// Permission bits (`0o755`); the file type bits come from `node`.
    pub perm: u32,
    pub mtime: u32,
    pub size_bytes: u32,
}

const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";

impl Node {
    fn type_bits(&self) -> u32 {
        match self {
            Node::Dir => 0o040000,
            Node::File => 0o100000,
            Node::Symlink => 0o120000,
            Node::CharDev { .. } => 0o020000,
        }
    }
}

/// Padding that brings `len` to a multiple of four.
fn pad4(len: u64) -> usize {
    // The result is 0..=3, so the cast cannot truncate.
    ((4 - (len % 4)) % 4) as usize
}

/// The 110-byte header plus the NUL-terminated name and its padding, for inode `ino`.
pub fn encode_header(h: &Header, ino: u32) -> Vec<u8> {
    let (rmaj, rmin) = match h.node {
        Node::CharDev { major, minor } => (major, minor),
        _ => (0, 0),
    };
    let nlink = if h.node == Node::Dir { 2 } else { 1 };
    let namesize = h.name.len() + 1;
    let fields: [u32; 13] = [
        ino,
        h.node.type_bits() | (h.perm & 0o7777),
        0, // uid
        0, // gid
        nlink,
        h.mtime,
        h.size_bytes,
        0, // devmajor
        0, // devminor
        rmaj,
        rmin,
        u32::try_from(namesize).unwrap_or(u32::MAX),
        0, // check (only for the "070702" crc format)
    ];
    let mut out = Vec::with_capacity(110 + namesize + 3);
    out.extend_from_slice(MAGIC);
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(h.name.as_bytes());
    out.push(0);
    out.resize(out.len() + pad4(out.len() as u64), 0);
    out
}

/// Writes members one after another, numbering inodes 1, 2, 3… in write order so
/// the same members in the same order always give the same bytes. No member shares
/// an inode: hard links are never written (a duplicate file is stored twice).
pub struct Writer<W: Write> {
    out: W,
    next_ino: u32,
    written_bytes: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Writer<W> {
        Writer {
            out,
            next_ino: 1,
            written_bytes: 0,
        }
    }

    /// Bytes of cpio written so far (before any compression the caller applies).
    pub fn written_bytes(&self) -> u64 {
        self.written_bytes
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Writes a member whose data is `data` (file contents, or a symlink's target);
    /// `h.size_bytes` is checked against it.
    pub fn append(&mut self, h: &Header, data: &[u8]) -> Result<()> {
        self.append_from(h, &mut &data[..])
    }

    /// Writes a member, streaming exactly `h.size_bytes` bytes of data from `data`.
    pub fn append_from(&mut self, h: &Header, data: &mut dyn io::Read) -> Result<()> {
        if h.name.is_empty()
            || h.name.starts_with('/')
            || h.name.contains('\0')
            || h.name.len() > 4095
        {
            bail!(
                "bad cpio member name {:?}: must be relative, non-empty and shorter than PATH_MAX",
                h.name
            );
        }
        if matches!(h.node, Node::Dir | Node::CharDev { .. }) && h.size_bytes != 0 {
            bail!(
                "cpio member {} of type {:?} cannot carry data",
                h.name,
                h.node
            );
        }
        let ino = self.next_ino;
        self.next_ino = ino.checked_add(1).context("more than 2^32 cpio members")?;
        self.put(&encode_header(h, ino))
            .with_context(|| format!("writing the cpio header of {}", h.name))?;
        let want = u64::from(h.size_bytes);
        let copied = io::copy(&mut io::Read::take(data, want), &mut self.out)
            .with_context(|| format!("writing the data of {}", h.name))?;
        self.written_bytes += copied;
        if copied != want {
            bail!(
                "{} changed while being archived: expected {want} bytes, read {copied}",
                h.name
            );
        }
        self.put(&[0u8; 3][..pad4(want)])
            .with_context(|| format!("padding the data of {}", h.name))?;
        Ok(())
    }

    /// Writes the `TRAILER!!!` record; returns the inner writer and the archive's
    /// whole length.
    pub fn finish(mut self) -> Result<(W, u64)> {
        let trailer = Header {
            name: TRAILER.to_string(),
            node: Node::File,
            perm: 0,
            mtime: 0,
            size_bytes: 0,
        };
        // Inode and mode zero, one link, as the kernel's gen_init_cpio writes it.
        let mut bytes = encode_header(&trailer, 0);
        bytes[6 + 8..6 + 16].copy_from_slice(b"00000000");
        self.put(&bytes).context("writing the cpio trailer")?;
        self.out.flush().context("flushing the cpio archive")?;
        Ok((self.out, self.written_bytes))
    }
}

/// Reads members one after another until the `TRAILER!!!` record: regular files,
/// directories, symbolic links and character devices, as the writer writes them.
pub struct Reader<R: Read> {
    input: R,
    done: bool,
}

/// One member read back: its header and its data (file contents or link target).
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub header: Header,
    pub data: Vec<u8>,
}

impl<R: Read> Reader<R> {
    pub fn new(input: R) -> Reader<R> {
        Reader { input, done: false }
    }

    /// The input, positioned after what was read.
    pub fn into_inner(self) -> R {
        self.input
    }

    fn skip_padding(&mut self, len: u64) -> Result<()> {
        let mut pad = [0u8; 3];
        self.input
            .read_exact(&mut pad[..pad4(len)])
            .context("reading cpio padding")
    }

    /// The next member, or `None` after the trailer.
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.done {
            return Ok(None);
        }
        let mut head = [0u8; 110];
        self.input
            .read_exact(&mut head)
            .context("reading a cpio header (the archive is cut short)")?;
        if &head[..6] != MAGIC {
            bail!("not a newc cpio header (magic {:?})", &head[..6]);
        }
        let field = |i: usize| -> Result<u32> {
            let text = std::str::from_utf8(&head[6 + 8 * i..6 + 8 * (i + 1)])
                .context("a cpio header field is not ASCII")?;
            u32::from_str_radix(text, 16)
                .with_context(|| format!("cpio header field {text:?} is not hexadecimal"))
        };
        let mode = field(1)?;
        let mtime = field(5)?;
        let size_bytes = field(6)?;
        let (rmaj, rmin) = (field(9)?, field(10)?);
        let namesize = usize::try_from(field(11)?).context("cpio name size")?;
        if namesize == 0 || namesize > 4096 {
            bail!("cpio name size {namesize} out of range");
        }
        let mut name = vec![0u8; namesize];
        self.input
            .read_exact(&mut name)
            .context("reading a cpio member name")?;
        if name.pop() != Some(0) {
            bail!("a cpio member name does not end in NUL");
        }
        let name = String::from_utf8(name).context("a cpio member name is not UTF-8")?;
        self.skip_padding(110 + namesize as u64)?;
        if name == TRAILER {
            self.done = true;
            return Ok(None);
        }
        let node = match mode & 0o170000 {
            0o040000 => Node::Dir,
            0o100000 => Node::File,
            0o120000 => Node::Symlink,
            0o020000 => Node::CharDev {
                major: rmaj,
                minor: rmin,
            },
            other => bail!("{name}: cpio member type {other:o} is not one the writer makes"),
        };
        let mut data = Vec::new();
        (&mut self.input)
            .take(u64::from(size_bytes))
            .read_to_end(&mut data)
            .with_context(|| format!("reading the data of {name}"))?;
        if data.len() as u64 != u64::from(size_bytes) {
            bail!("{name}: the archive ends inside its data");
        }
        self.skip_padding(u64::from(size_bytes))?;
        Ok(Some(Entry {
            header: Header {
                name,
                node,
                perm: mode & 0o7777,
                mtime,
                size_bytes,
            },
            data,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, node: Node, perm: u32, size: u32) -> Header {
        Header {
            name: name.into(),
            node,
            perm,
            mtime: 0x5f5e100,
            size_bytes: size,
        }
    }

    #[test]
    fn header_fields_are_eight_hex_digits_in_order() {
        let h = header("usr/bin/sh", Node::Symlink, 0o777, 7);
        let b = encode_header(&h, 42);
        let text = std::str::from_utf8(&b[..110]).unwrap();
        assert_eq!(
            text,
            concat!(
                "070701", "0000002A", "0000A1FF", "00000000", "00000000", "00000001", "05F5E100",
                "00000007", "00000000", "00000000", "00000000", "00000000", "0000000B", "00000000"
            )
        );
        // 110 + "usr/bin/sh\0" (11) = 121, padded to 124.
        assert_eq!(b.len(), 124);
        assert_eq!(&b[110..121], b"usr/bin/sh\0");
        assert!(b[121..].iter().all(|&x| x == 0));
    }

    #[test]
    fn device_numbers_go_in_rdev_and_dirs_have_two_links() {
        let b = encode_header(
            &header(
                "dev/console",
                Node::CharDev { major: 5, minor: 1 },
                0o600,
                0,
            ),
            3,
        );
        let field = |i: usize| {
            std::str::from_utf8(&b[6 + 8 * i..6 + 8 * (i + 1)])
                .unwrap()
                .to_string()
        };
        assert_eq!(field(1), "00002180");
        assert_eq!(field(9), "00000005");
        assert_eq!(field(10), "00000001");
        let d = encode_header(&header("etc", Node::Dir, 0o755, 0), 4);
        assert_eq!(
            std::str::from_utf8(&d[6 + 8 * 4..6 + 8 * 5]).unwrap(),
            "00000002"
        );
        assert_eq!(std::str::from_utf8(&d[6 + 8..6 + 16]).unwrap(), "000041ED");
    }

    #[test]
    fn data_is_padded_and_the_archive_ends_with_the_trailer() {
        let mut w = Writer::new(Vec::new());
        w.append(&header("a", Node::File, 0o644, 5), b"hello")
            .unwrap();
        let before_trailer = w.written_bytes();
        let (out, len) = w.finish().unwrap();
        // 110 + "a\0" = 112 (aligned), 5 data bytes + 3 padding = 120.
        assert_eq!(before_trailer, 120);
        assert_eq!(len, out.len() as u64);
        assert_eq!(&out[112..117], b"hello");
        assert_eq!(&out[117..120], &[0, 0, 0]);
        let trailer = &out[120..];
        assert_eq!(&trailer[..6], b"070701");
        assert_eq!(
            std::str::from_utf8(&trailer[6..110]).unwrap(),
            concat!(
                "00000000", "00000000", "00000000", "00000000", "00000001", "00000000", "00000000",
                "00000000", "00000000", "00000000", "00000000", "0000000B", "00000000"
            )
        );
        assert_eq!(&trailer[110..121], b"TRAILER!!!\0");
        assert_eq!(out.len() % 4, 0);
    }

    #[test]
    fn short_data_and_bad_names_are_refused() {
        let mut w = Writer::new(Vec::new());
        let err = w
            .append(&header("f", Node::File, 0o644, 9), b"short")
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("expected 9 bytes, read 5"),
            "{err:#}"
        );
        assert!(
            w.append(&header("/abs", Node::File, 0o644, 0), b"")
                .is_err()
        );
        assert!(w.append(&header("d", Node::Dir, 0o755, 1), b"x").is_err());
    }

    #[test]
    fn the_reader_gives_back_what_the_writer_wrote() {
        let members = [
            (header("etc", Node::Dir, 0o755, 0), Vec::new()),
            (header("etc/a", Node::File, 0o640, 5), b"hello".to_vec()),
            (header("etc/b", Node::File, 0o644, 0), Vec::new()),
            (
                header("bin/sh", Node::Symlink, 0o777, 7),
                b"busybox".to_vec(),
            ),
            (
                header("dev/null", Node::CharDev { major: 1, minor: 3 }, 0o666, 0),
                Vec::new(),
            ),
        ];
        let mut w = Writer::new(Vec::new());
        for (h, d) in &members {
            w.append(h, d).unwrap();
        }
        let (bytes, _) = w.finish().unwrap();
        let mut r = Reader::new(&bytes[..]);
        for (h, d) in &members {
            let e = r.next_entry().unwrap().unwrap();
            assert_eq!(&e.header, h);
            assert_eq!(&e.data, d);
        }
        assert!(r.next_entry().unwrap().is_none());
        assert!(r.next_entry().unwrap().is_none(), "stays at the end");
    }

    #[test]
    fn the_reader_refuses_a_cut_or_foreign_archive() {
        let mut w = Writer::new(Vec::new());
        w.append(&header("a", Node::File, 0o644, 5), b"hello")
            .unwrap();
        let (bytes, _) = w.finish().unwrap();
        let err = Reader::new(&bytes[..115]).next_entry().unwrap_err();
        assert!(
            format!("{err:#}").contains("ends inside its data"),
            "{err:#}"
        );
        let err = Reader::new(&b"070707"[..]).next_entry().unwrap_err();
        assert!(format!("{err:#}").contains("cut short"), "{err:#}");
        let mut foreign = bytes.clone();
        foreign[5] = b'2';
        let err = Reader::new(&foreign[..]).next_entry().unwrap_err();
        assert!(format!("{err:#}").contains("not a newc"), "{err:#}");
    }
}
