//! Tar header blocks as we write them: ustar, pax extended headers, and GNU sparse.
//!
//! Pure byte encoding; no I/O. Reading is left to the `tar` crate, which already
//! understands all three; this module only has to produce what GNU tar reads.

/// Size of every tar block.
pub const BLOCK: usize = 512;

/// What an entry is, with what only that kind carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Regular,
    Directory,
    Symlink(Vec<u8>),
    /// A hardlink to an earlier entry, by its archive name.
    Hardlink(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
    /// A regular file with holes: the data segments (offset, length) that are stored.
    Sparse(Vec<(u64, u64)>),
}

/// Everything written for one entry, before its data.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Archive name, `./`-prefixed, directories ending in `/`.
    pub name: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Logical size of a regular or sparse file.
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Extended attributes, name and raw value, sorted by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Write `value` into a numeric field: octal when it fits (NUL-terminated), else
/// GNU base-256, which GNU tar and the `tar` crate both read.
fn numeric(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    if digits < 22 && value < 1u64 << (3 * digits) {
        let s = format!("{value:0digits$o}");
        field[..digits].copy_from_slice(s.as_bytes());
        field[digits] = 0;
    } else {
        field.fill(0);
        field[0] = 0x80;
        let bytes = value.to_be_bytes();
        let n = bytes.len().min(field.len() - 1);
        let len = field.len();
        field[len - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    }
}

fn set_checksum(h: &mut [u8; BLOCK]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

/// Copy as much of `src` as fits; names that do not fit travel in a pax record.
fn text(field: &mut [u8], src: &[u8]) {
    let n = src.len().min(field.len());
    field[..n].copy_from_slice(&src[..n]);
}

/// One pax record: "LEN key=value\n", where LEN counts itself.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let rest = 1 + key.len() + 1 + value.len() + 1; // space, key, '=', value, '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % BLOCK;
    if rem != 0 {
        out.resize(out.len() + BLOCK - rem, 0);
    }
}

/// The header blocks for `e`: an optional pax header, the main header, and GNU sparse
/// extension blocks. The entry's data (for sparse files: only the stored segments)
/// follows, padded to a block.
pub fn encode(e: &Entry, out: &mut Vec<u8>) {
    let mut pax = Vec::new();
    if e.name.len() > 100 {
        pax_record(&mut pax, "path", &e.name);
    }
    if let Kind::Symlink(target) | Kind::Hardlink(target) = &e.kind {
        if target.len() > 100 {
            pax_record(&mut pax, "linkpath", target);
        }
    }
    if e.mtime_nsec != 0 || e.mtime < 0 {
        let (sec, nsec) = (e.mtime, e.mtime_nsec);
        let v = if sec < 0 && nsec != 0 {
            // pax wants -1.5 for one and a half seconds before the epoch.
            format!("-{}.{:09}", -(sec + 1), 1_000_000_000 - nsec)
        } else if nsec != 0 {
            format!("{sec}.{nsec:09}")
        } else {
            sec.to_string()
        };
        pax_record(&mut pax, "mtime", v.as_bytes());
    }
    for (name, value) in &e.xattrs {
        pax_record(&mut pax, &format!("SCHILY.xattr.{name}"), value);
    }
    if !pax.is_empty() {
        let mut h = [0u8; BLOCK];
        text(&mut h[0..100], b"././@PaxHeader");
        numeric(&mut h[100..108], 0o644);
        numeric(&mut h[108..116], 0);
        numeric(&mut h[116..124], 0);
        numeric(&mut h[124..136], pax.len() as u64);
        numeric(&mut h[136..148], 0);
        h[156] = b'x';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        set_checksum(&mut h);
        out.extend_from_slice(&h);
        out.extend_from_slice(&pax);
        pad(out);
    }

    let mut h = [0u8; BLOCK];
    text(&mut h[0..100], &e.name);
    numeric(&mut h[100..108], u64::from(e.mode & 0o7777));
    numeric(&mut h[108..116], e.uid);
    numeric(&mut h[116..124], e.gid);
    numeric(&mut h[136..148], e.mtime.max(0) as u64);
    let (flag, stored) = match &e.kind {
        Kind::Regular => (b'0', e.size),
        Kind::Directory => (b'5', 0),
        Kind::Symlink(_) => (b'2', 0),
        Kind::Hardlink(_) => (b'1', 0),
        Kind::Char(..) => (b'3', 0),
        Kind::Block(..) => (b'4', 0),
        Kind::Fifo => (b'6', 0),
        Kind::Sparse(map) => (b'S', map.iter().map(|s| s.1).sum()),
    };
    numeric(&mut h[124..136], stored);
    h[156] = flag;
    if let Kind::Symlink(t) | Kind::Hardlink(t) = &e.kind {
        text(&mut h[157..257], t);
    }
    if let Kind::Char(maj, min) | Kind::Block(maj, min) = e.kind {
        numeric(&mut h[329..337], u64::from(maj));
        numeric(&mut h[337..345], u64::from(min));
    }
    let mut ext = Vec::new();
    if let Kind::Sparse(map) = &e.kind {
        // Old GNU sparse: GNU magic, four map slots in the header, 21 per extension
        // block, and a final empty segment at the real size for a trailing hole.
        h[257..265].copy_from_slice(b"ustar  \0");
        let mut map = map.clone();
        if map.last().is_none_or(|&(o, l)| o + l < e.size) {
            map.push((e.size, 0));
        }
        numeric(&mut h[483..495], e.size);
        let (first, rest) = map.split_at(map.len().min(4));
        for (i, &(o, l)) in first.iter().enumerate() {
            numeric(&mut h[386 + i * 24..398 + i * 24], o);
            numeric(&mut h[398 + i * 24..410 + i * 24], l);
        }
        h[482] = u8::from(!rest.is_empty());
        let chunks: Vec<_> = rest.chunks(21).collect();
        for (ci, chunk) in chunks.iter().enumerate() {
            let mut b = [0u8; BLOCK];
            for (i, &(o, l)) in chunk.iter().enumerate() {
                numeric(&mut b[i * 24..i * 24 + 12], o);
                numeric(&mut b[i * 24 + 12..i * 24 + 24], l);
            }
            b[504] = u8::from(ci + 1 < chunks.len());
            ext.extend_from_slice(&b);
        }
    } else {
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
    }
    set_checksum(&mut h);
    out.extend_from_slice(&h);
    out.extend_from_slice(&ext);
}

/// Padding after `len` bytes of entry data.
pub fn padding(len: u64) -> usize {
    let rem = usize::try_from(len % BLOCK as u64).unwrap_or(0);
    if rem == 0 { 0 } else { BLOCK - rem }
}

/// Parse the records of a pax extended header.
pub fn pax_records(mut data: &[u8]) -> Vec<(&str, &[u8])> {
    let mut out = Vec::new();
    while let Some(sp) = data.iter().position(|&b| b == b' ') {
        let Some(len) = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            break;
        };
        if len <= sp + 1 || len > data.len() {
            break;
        }
        let rec = &data[sp + 1..len - 1];
        if let Some(eq) = rec.iter().position(|&b| b == b'=') {
            if let Ok(key) = std::str::from_utf8(&rec[..eq]) {
                out.push((key, &rec[eq + 1..]));
            }
        }
        data = &data[len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, kind: Kind) -> Entry {
        Entry {
            name: name.as_bytes().to_vec(),
            kind,
            mode: 0o4755,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 1_700_000_000,
            mtime_nsec: 0,
            xattrs: vec![],
        }
    }

    #[test]
    fn pax_record_length_counts_itself() {
        for n in [0, 1, 5, 90, 93, 94, 95, 995, 996, 997, 5000] {
            let mut v = Vec::new();
            pax_record(&mut v, "path", &vec![b'a'; n]);
            let text = String::from_utf8(v.clone()).unwrap();
            let len: usize = text.split(' ').next().unwrap().parse().unwrap();
            assert_eq!(len, v.len(), "value length {n}");
            assert_eq!(pax_records(&v), vec![("path", &vec![b'a'; n][..])]);
        }
    }

    #[test]
    fn numeric_fields_fall_back_to_base256() {
        let mut f = [0u8; 12];
        numeric(&mut f, 0o777);
        assert_eq!(&f, b"00000000777\0");
        numeric(&mut f, 1 << 40);
        assert_eq!(f[0], 0x80);
        assert_eq!(u64::from_be_bytes(f[4..12].try_into().unwrap()), 1 << 40);
    }

    #[test]
    fn short_entries_need_no_pax_header() {
        let mut out = Vec::new();
        encode(&entry("./bin/su", Kind::Regular), &mut out);
        assert_eq!(out.len(), BLOCK);
        assert_eq!(&out[156..157], b"0");
        assert_eq!(&out[100..108], b"0004755\0");
    }

    #[test]
    fn long_names_nanoseconds_and_xattrs_go_to_pax() {
        let long = format!("./{}", "d/".repeat(80));
        let mut e = entry(&long, Kind::Directory);
        e.mtime_nsec = 5;
        e.xattrs = vec![("security.capability".into(), vec![1, 0, 0, 2, 0x20])];
        let mut out = Vec::new();
        encode(&e, &mut out);
        assert_eq!(out[156], b'x');
        let size = usize::from_str_radix(std::str::from_utf8(&out[124..135]).unwrap(), 8).unwrap();
        let recs = pax_records(&out[BLOCK..BLOCK + size]);
        assert_eq!(recs[0], ("path", long.as_bytes()));
        assert_eq!(recs[1], ("mtime", &b"1700000000.000000005"[..]));
        assert_eq!(recs[2].0, "SCHILY.xattr.security.capability");
        assert_eq!(recs[2].1, &[1, 0, 0, 2, 0x20]);
    }

    #[test]
    fn sparse_maps_spill_into_extension_blocks() {
        let map: Vec<(u64, u64)> = (0..30).map(|i| (i * 8192, 512)).collect();
        let mut e = entry("./sparse", Kind::Sparse(map));
        e.size = 1 << 20;
        let mut out = Vec::new();
        encode(&e, &mut out);
        // 30 segments + trailing hole marker = 31: 4 in the header, 21 + 6 in two blocks.
        assert_eq!(out.len(), 3 * BLOCK);
        assert_eq!(out[156], b'S');
        assert_eq!(out[482], 1);
        assert_eq!(out[BLOCK + 504], 1);
        assert_eq!(out[2 * BLOCK + 504], 0);
    }
}
