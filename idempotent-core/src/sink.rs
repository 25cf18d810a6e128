//! A SHA-256 hasher for the canonical encoding's many small writes.
//!
//! The canonical encoding feeds the hash a tag byte, a varint, a few bytes of text, and so on:
//! a typical call's arguments are twenty writes of one to a dozen bytes. `sha2::Sha256`'s
//! `update` is built for large inputs, and its per-call bookkeeping cost more than the
//! compression of the one block those writes fill. This sink keeps the block buffer itself,
//! so a small write is a store and a compare, and hands whole blocks to `sha2`'s compression
//! function (SHA-NI where the CPU has it). Its digests are SHA-256's, byte for byte (tested
//! against `sha2::Sha256` below and by the golden vectors).

use sha2::digest::generic_array::GenericArray;

const BLOCK: usize = 64;
/// Where the message length goes in the last block.
const LENGTH_AT: usize = BLOCK - 8;
/// Longest unsigned LEB128 varint of a `u64`.
const VARINT_MAX: usize = 10;

/// SHA-256's initial hash value (FIPS 180-4, 5.3.3).
const INITIAL: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// Copies `src` into `dst` (of the same length). The canonical encoding's writes are mostly a
/// few bytes long, where a call to `memcpy` costs more than the copy: lengths up to 16 are
/// copied with two overlapping fixed-size moves instead.
#[inline(always)]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    if (8..=16).contains(&n) {
        dst[..8].copy_from_slice(&src[..8]);
        dst[n - 8..n].copy_from_slice(&src[n - 8..n]);
    } else if (4..8).contains(&n) {
        dst[..4].copy_from_slice(&src[..4]);
        dst[n - 4..n].copy_from_slice(&src[n - 4..n]);
    } else if n < 4 {
        for (to, from) in dst.iter_mut().zip(src) {
            *to = *from;
        }
    } else {
        dst.copy_from_slice(src);
    }
}

/// Streaming SHA-256 with cheap small writes.
#[derive(Clone)]
pub(crate) struct Sink {
    state: [u32; 8],
    block: [u8; BLOCK],
    /// Bytes of `block` in use; always below `BLOCK` between calls.
    used: usize,
    /// Blocks already compressed.
    blocks: u64,
}

impl Sink {
    pub(crate) const fn new() -> Sink {
        Sink {
            state: INITIAL,
            block: [0; BLOCK],
            used: 0,
            blocks: 0,
        }
    }

    fn compress_block(&mut self) {
        sha2::compress256(
            &mut self.state,
            std::slice::from_ref(GenericArray::from_slice(&self.block)),
        );
        self.blocks += 1;
        self.used = 0;
    }

    /// One byte.
    #[inline(always)]
    pub(crate) fn byte(&mut self, byte: u8) {
        self.block[self.used] = byte;
        self.used += 1;
        if self.used == BLOCK {
            self.compress_block();
        }
    }

    /// Bytes.
    #[inline(always)]
    pub(crate) fn bytes(&mut self, data: &[u8]) {
        let end = self.used + data.len();
        if end < BLOCK {
            copy_short(&mut self.block[self.used..end], data);
            self.used = end;
        } else {
            self.bytes_across(data);
        }
    }

    /// `bytes` that fill the block: complete it, compress whole blocks straight from `data`,
    /// keep the rest.
    fn bytes_across(&mut self, data: &[u8]) {
        let (head, rest) = data.split_at(BLOCK - self.used);
        self.block[self.used..].copy_from_slice(head);
        self.compress_block();
        let mut chunks = rest.chunks_exact(BLOCK);
        for chunk in &mut chunks {
            sha2::compress256(
                &mut self.state,
                std::slice::from_ref(GenericArray::from_slice(chunk)),
            );
            self.blocks += 1;
        }
        let tail = chunks.remainder();
        self.block[..tail.len()].copy_from_slice(tail);
        self.used = tail.len();
    }

    /// A tag byte, `data`'s length as a varint, then `data`: the encoding of every string.
    #[inline(always)]
    pub(crate) fn tagged(&mut self, tag: u8, data: &[u8]) {
        let len = data.len();
        let end = self.used + 2 + len;
        if len < 0x80 && end < BLOCK {
            // A short string that fits the block: one bounds check, no boundary to watch.
            self.block[self.used] = tag;
            self.block[self.used + 1] = len as u8;
            copy_short(&mut self.block[self.used + 2..end], data);
            self.used = end;
        } else {
            self.byte(tag);
            self.varint(len as u64);
            self.bytes(data);
        }
    }

    /// Unsigned LEB128: seven bits a byte, the high bit set on every byte but the last.
    #[inline(always)]
    pub(crate) fn varint(&mut self, mut value: u64) {
        if value < 0x80 {
            // Most lengths and small integers.
            self.byte(value as u8);
        } else if self.used + VARINT_MAX < BLOCK {
            // Room for the longest varint: write in place, no block boundary to watch.
            while value >= 0x80 {
                self.block[self.used] = (value as u8) | 0x80;
                self.used += 1;
                value >>= 7;
            }
            self.block[self.used] = value as u8;
            self.used += 1;
        } else {
            while value >= 0x80 {
                self.byte((value as u8) | 0x80);
                value >>= 7;
            }
            self.byte(value as u8);
        }
    }

    /// The digest (FIPS 180-4 padding: `0x80`, zeros, the message length in bits). Pads in
    /// place, so the block just written is not copied (reading it back wide right after its
    /// small writes is slow); the sink is spent afterwards.
    #[inline]
    pub(crate) fn finalize(&mut self) -> [u8; 32] {
        let bits = (self.blocks * BLOCK as u64 + self.used as u64) * 8;
        self.block[self.used] = 0x80;
        self.used += 1;
        if self.used > LENGTH_AT {
            self.block[self.used..].fill(0);
            self.compress_block();
        }
        self.block[self.used..LENGTH_AT].fill(0);
        self.block[LENGTH_AT..].copy_from_slice(&bits.to_be_bytes());
        self.compress_block();
        let mut out = [0u8; 32];
        for (bytes, word) in out.chunks_exact_mut(4).zip(self.state) {
            bytes.copy_from_slice(&word.to_be_bytes());
        }
        out
    }

    /// The digest, leaving the sink empty for the next message.
    pub(crate) fn finalize_reset(&mut self) -> [u8; 32] {
        let digest = self.finalize();
        *self = Sink::new();
        digest
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest as _, Sha256};

    use super::Sink;

    fn reference(parts: &[&[u8]]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update(part);
        }
        hasher.finalize().into()
    }

    #[test]
    fn matches_sha256_at_every_length_and_split() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..data.len() {
            let message = &data[..len];
            for split in [0, 1, len / 3, len / 2, len.saturating_sub(1), len] {
                let split = split.min(len);
                let mut sink = Sink::new();
                sink.bytes(&message[..split]);
                for &byte in &message[split..] {
                    sink.byte(byte);
                }
                assert_eq!(
                    sink.finalize(),
                    reference(&[message]),
                    "len {len}, split {split}"
                );
            }
        }
    }

    #[test]
    fn varints_match_their_bytes_at_every_offset() {
        let values = [0, 1, 127, 128, 300, 1 << 35, u64::MAX];
        for offset in 0..70 {
            for value in values {
                let mut expected = Vec::new();
                let mut v = value;
                loop {
                    let low = (v & 0x7f) as u8;
                    v >>= 7;
                    if v == 0 {
                        expected.push(low);
                        break;
                    }
                    expected.push(low | 0x80);
                }
                let prefix = vec![0xA5u8; offset];
                let mut sink = Sink::new();
                sink.bytes(&prefix);
                sink.varint(value);
                sink.byte(0x01);
                assert_eq!(
                    sink.finalize(),
                    reference(&[&prefix, &expected, &[0x01]]),
                    "offset {offset}, value {value}"
                );
            }
        }
    }

    #[test]
    fn tagged_matches_its_bytes_at_every_offset_and_length() {
        let data: Vec<u8> = (0..200u32).map(|i| (i * 13 + 5) as u8).collect();
        for offset in 0..70 {
            for len in [0, 1, 5, 40, 53, 54, 55, 61, 62, 63, 64, 127, 128, 129, 200] {
                let prefix = vec![0x5Au8; offset];
                let mut tagged = Sink::new();
                tagged.bytes(&prefix);
                tagged.tagged(0x08, &data[..len]);
                let mut plain = Sink::new();
                plain.bytes(&prefix);
                plain.byte(0x08);
                plain.varint(len as u64);
                plain.bytes(&data[..len]);
                assert_eq!(
                    tagged.finalize(),
                    plain.finalize(),
                    "offset {offset}, length {len}"
                );
            }
        }
    }

    #[test]
    fn finalize_reset_starts_over() {
        let mut sink = Sink::new();
        sink.bytes(b"first");
        assert_eq!(sink.finalize_reset(), reference(&[b"first"]));
        sink.bytes(b"second");
        assert_eq!(sink.finalize(), reference(&[b"second"]));
    }
}
