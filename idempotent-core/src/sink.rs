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
            self.block[self.used..end].copy_from_slice(data);
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

    /// The digest (FIPS 180-4 padding: `0x80`, zeros, the message length in bits).
    pub(crate) fn finalize(mut self) -> [u8; 32] {
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
        std::mem::replace(self, Sink::new()).finalize()
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
    fn finalize_reset_starts_over() {
        let mut sink = Sink::new();
        sink.bytes(b"first");
        assert_eq!(sink.finalize_reset(), reference(&[b"first"]));
        sink.bytes(b"second");
        assert_eq!(sink.finalize(), reference(&[b"second"]));
    }
}
