//! LZO1X-1 compression, tuned for our block sizes.
//!
//! A port of the `lzo1x` crate's `compress_1` (itself a port of liblzo2's
//! `lzo1x_1_compress`, GPL-2.0), changed only for speed: the dictionary is a fixed
//! array reused across blocks (its index is provably in range, so no bounds check),
//! the output buffer is reused, and short literal runs are copied with one fixed-size
//! overcopy instead of a variable-length copy. The output is byte-identical to
//! `lzo1x::compress(.., CompressLevel::new(3))`, which the tests check; decompression
//! stays with the `lzo1x` crate.

// LZO's format packs lengths and offsets into bytes and 16-bit slots; every narrowing
// below is bounded by the format's own limits (block < 64 KiB window, lengths < 256
// after the 255-step loops), as in the C original.
#![allow(clippy::cast_possible_truncation)]

const M2_MAX_LEN: usize = 8;
const M2_MAX_OFFSET: usize = 0x0800;
const M3_MAX_OFFSET: usize = 0x4000;
const M3_MAX_LEN: usize = 33;
const M4_MAX_LEN: usize = 9;
const M3_MARKER: usize = 32;
const M4_MARKER: usize = 16;
const D_BITS: u32 = 14;

/// Reusable compression state: one per worker thread.
pub struct Compressor {
    dict: Box<[u16; 1 << D_BITS]>,
}

#[inline(always)]
fn u32le(s: &[u8], p: usize) -> u32 {
    u32::from_le_bytes(s[p..p + 4].try_into().unwrap())
}
#[inline(always)]
fn u64ne(s: &[u8], p: usize) -> u64 {
    u64::from_ne_bytes(s[p..p + 8].try_into().unwrap())
}

/// The most output `n` input bytes can produce, plus slack for overcopies.
fn bound(n: usize) -> usize {
    n + n / 16 + 64 + 3 + 32
}

impl Compressor {
    pub fn new() -> Self {
        Compressor {
            dict: Box::new([0; 1 << D_BITS]),
        }
    }

    /// Compress `src` into `out`, replacing its contents.
    pub fn compress(&mut self, src: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.resize(bound(src.len()), 0);
        let n = self.run(src, &mut out[..]);
        out.truncate(n);
    }

    fn run(&mut self, src: &[u8], dst: &mut [u8]) -> usize {
        let src_len = src.len();
        let mut src_pos = 0;
        let mut dp = 0;
        let mut l = src_len;
        let mut t = 0;
        while l > 20 {
            let ll = l.min(49152);
            if (t + ll) >> 5 == 0 {
                break;
            }
            self.dict.fill(0);
            let dict = &mut *self.dict;
            let src_start = src_pos;
            let src_pos_end = src_start + ll - 20;
            let mut ip = src_start;
            let mut ti = t;
            let mut ii = ip;
            if ti < 4 {
                ip += 4 - ti;
            }
            ip += 1 + ((ip - ii) >> 5);
            'main: loop {
                let mut m_pos;
                loop {
                    if ip >= src_pos_end {
                        break 'main;
                    }
                    let dv = u32le(src, ip);
                    let di = (0x1824429du32.wrapping_mul(dv) >> (32 - D_BITS)) as usize;
                    m_pos = src_start + dict[di] as usize;
                    dict[di] = (ip - src_start) as u16;
                    if dv == u32le(src, m_pos) {
                        break;
                    }
                    ip += 1 + ((ip - ii) >> 5);
                }
                ii -= ti;
                ti = 0;
                let t = ip - ii;
                if t != 0 {
                    if t <= 3 {
                        dst[dp - 2] |= t as u8;
                        dst[dp..dp + 4].copy_from_slice(&src[ii..ii + 4]);
                        dp += t;
                    } else if t <= 16 {
                        dst[dp] = t as u8 - 3;
                        dp += 1;
                        dst[dp..dp + 16].copy_from_slice(&src[ii..ii + 16]);
                        dp += t;
                    } else {
                        dp = put_literal_len(dst, dp, t);
                        dst[dp..dp + t].copy_from_slice(&src[ii..ii + t]);
                        dp += t;
                    }
                }
                let mut m_len = 4;
                loop {
                    let v = u64ne(src, ip + m_len) ^ u64ne(src, m_pos + m_len);
                    if v != 0 {
                        m_len += v.trailing_zeros() as usize / 8;
                        break;
                    }
                    m_len += 8;
                    if ip + m_len >= src_pos_end {
                        break;
                    }
                }
                let mut m_off = ip - m_pos;
                ip += m_len;
                ii = ip;
                if m_len <= M2_MAX_LEN && m_off <= M2_MAX_OFFSET {
                    m_off -= 1;
                    dst[dp] = (((m_len - 1) << 5) | ((m_off & 7) << 2)) as u8;
                    dst[dp + 1] = (m_off >> 3) as u8;
                    dp += 2;
                } else if m_off <= M3_MAX_OFFSET {
                    m_off -= 1;
                    if m_len <= M3_MAX_LEN {
                        dst[dp] = (M3_MARKER | (m_len - 2)) as u8;
                        dp += 1;
                    } else {
                        m_len -= M3_MAX_LEN;
                        dst[dp] = M3_MARKER as u8;
                        dp += 1;
                        dp = put_count(dst, dp, m_len);
                    }
                    dst[dp] = (m_off << 2) as u8;
                    dst[dp + 1] = (m_off >> 6) as u8;
                    dp += 2;
                } else {
                    m_off -= 0x4000;
                    if m_len <= M4_MAX_LEN {
                        dst[dp] = (M4_MARKER | ((m_off >> 11) & 8) | (m_len - 2)) as u8;
                        dp += 1;
                    } else {
                        m_len -= M4_MAX_LEN;
                        dst[dp] = (M4_MARKER | ((m_off >> 11) & 8)) as u8;
                        dp += 1;
                        dp = put_count(dst, dp, m_len);
                    }
                    dst[dp] = (m_off << 2) as u8;
                    dst[dp + 1] = (m_off >> 6) as u8;
                    dp += 2;
                }
            }
            t = (src_start + ll) - (ii - ti);
            src_pos += ll;
            l -= ll;
        }
        t += l;
        if t > 0 {
            let ii = src_len - t;
            if dp == 0 && t <= 238 {
                dst[dp] = 17 + t as u8;
                dp += 1;
            } else if t <= 3 {
                dst[dp - 2] |= t as u8;
            } else {
                dp = put_literal_len(dst, dp, t);
            }
            dst[dp..dp + t].copy_from_slice(&src[ii..ii + t]);
            dp += t;
        }
        dst[dp] = (M4_MARKER | 1) as u8;
        dst[dp + 1] = 0;
        dst[dp + 2] = 0;
        dp + 3
    }
}

/// A length too long for its opcode's bits, LZO style: a zero byte for every 255,
/// then the remainder (never zero: callers only get here with a positive count).
#[inline(always)]
fn put_count(dst: &mut [u8], mut dp: usize, mut n: usize) -> usize {
    while n > 255 {
        n -= 255;
        dst[dp] = 0;
        dp += 1;
    }
    dst[dp] = n as u8;
    dp + 1
}

/// The header of a literal run of `t` > 3 bytes: `t - 3` in one byte up to 18, else a
/// zero byte and the rest as a count.
#[inline(always)]
fn put_literal_len(dst: &mut [u8], dp: usize, t: usize) -> usize {
    if t <= 18 {
        dst[dp] = t as u8 - 3;
        dp + 1
    } else {
        dst[dp] = 0;
        put_count(dst, dp + 1, t - 18)
    }
}

impl Default for Compressor {
    fn default() -> Self {
        Compressor::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Vec<Vec<u8>> {
        let mut x = 0x9e37_79b9u32;
        let mut noise = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog; "
            .iter()
            .cycle()
            .take(300_000)
            .copied()
            .collect();
        let mixed: Vec<u8> = (0..256 * 1024)
            .map(|i| {
                if (i / 4096) % 3 == 0 {
                    noise() as u8
                } else {
                    (i % 97) as u8
                }
            })
            .collect();
        let sparse_noise: Vec<u8> = (0..200_000)
            .map(|_| if noise() % 7 == 0 { noise() as u8 } else { 0 })
            .collect();
        let random: Vec<u8> = (0..100_000).map(|_| noise() as u8).collect();
        let mut v = vec![
            Vec::new(),
            vec![7],
            vec![0; 20],
            vec![0; 21],
            b"abcabcabcabcabcabcabcabc".to_vec(),
        ];
        v.extend([text, mixed, sparse_noise, random, vec![0; 256 * 1024]]);
        for n in [3, 17, 18, 19, 238, 239, 4096, 49_152, 49_153] {
            v.push((0..n).map(|i| (i * 31 % 251) as u8).collect());
        }
        v
    }

    #[test]
    fn output_is_identical_to_the_reference_port() {
        let mut c = Compressor::new();
        let mut out = Vec::new();
        for input in inputs() {
            c.compress(&input, &mut out);
            let reference = lzo1x::compress(&input, lzo1x::CompressLevel::new(3));
            assert_eq!(out, reference, "input of {} bytes", input.len());
            let mut back = vec![0u8; input.len()];
            lzo1x::decompress(&out, &mut back).unwrap();
            assert_eq!(back, input);
        }
    }
}
