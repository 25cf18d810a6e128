//! A multi-step call's journal: the bytes of one mark (see
//! [`Store::swap_mark`](crate::Store::swap_mark)) under the call's key, in the namespace
//! `{namespace}~steps`, replaced whole by compare-and-set on every change.
//!
//! ```text
//! 0      'J' 0x01                         mark and format
//! 2      fingerprint          32 bytes    the call's arguments
//! 34     owner token          16 bytes    the owner that adopted the journal last
//! 50     flags                 1 byte     1: settled (its caller got an error), 2: parked
//! 51     attempts              4 bytes    completer attempts, little-endian
//! 55     ttl                   8 bytes    the call's ttl in milliseconds
//! 63     version               4 bytes    the call key's version
//! 67     digest               32 bytes    the call key's digest
//! 99     namespace, input, last error, then each step: name and output,
//!        each a 4-byte length and its bytes
//! ```

use std::time::Duration;

use bytes::Bytes;

use crate::key::{Digest, Fingerprint, Key};
use crate::record::Token;

const MARK: [u8; 2] = [b'J', 1];
const FIXED: usize = 99;
/// Flag: the last run's body returned an error to its caller; the completer leaves it.
pub(super) const SETTLED: u8 = 1;
/// Flag: the completer gave up on it after its attempts.
pub(super) const PARKED: u8 = 2;

/// The namespace a call's journal lives in.
pub(super) fn namespace(call: &str) -> String {
    format!("{call}~steps")
}

/// The key of the journal of the call `key`.
pub(super) fn key_of(key: &Key) -> Key {
    Key::new(namespace(key.namespace()), key.version(), *key.digest())
}

/// A decoded journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Journal {
    pub(super) fingerprint: Fingerprint,
    pub(super) owner: Token,
    pub(super) flags: u8,
    pub(super) attempts: u32,
    pub(super) ttl: Duration,
    pub(super) key: Key,
    pub(super) input: Bytes,
    pub(super) last_error: String,
    pub(super) steps: Vec<(String, Bytes)>,
}

impl Journal {
    /// The journal of a call starting with no step done.
    pub(super) fn new(
        key: Key,
        fingerprint: Fingerprint,
        owner: Token,
        ttl: Duration,
        input: Bytes,
    ) -> Journal {
        Journal {
            fingerprint,
            owner,
            flags: 0,
            attempts: 0,
            ttl,
            key,
            input,
            last_error: String::new(),
            steps: Vec::new(),
        }
    }

    /// The output journaled for step `name`.
    pub(super) fn step(&self, name: &str) -> Option<&Bytes> {
        self.steps
            .iter()
            .find(|(step, _)| step == name)
            .map(|(_, output)| output)
    }

    pub(super) fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// The stored bytes.
    pub(super) fn encode(&self) -> Vec<u8> {
        let namespace = self.key.namespace().as_bytes();
        let steps: usize = self
            .steps
            .iter()
            .map(|(name, output)| 8 + name.len() + output.len())
            .sum();
        let mut out = Vec::with_capacity(
            FIXED + 12 + namespace.len() + self.input.len() + self.last_error.len() + steps,
        );
        out.extend_from_slice(&MARK);
        out.extend_from_slice(self.fingerprint.as_bytes());
        out.extend_from_slice(self.owner.as_bytes());
        out.push(self.flags);
        out.extend_from_slice(&self.attempts.to_le_bytes());
        let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        out.extend_from_slice(&ttl.to_le_bytes());
        out.extend_from_slice(&self.key.version().to_le_bytes());
        out.extend_from_slice(self.key.digest().as_bytes());
        for part in [namespace, &self.input[..], self.last_error.as_bytes()] {
            put(&mut out, part);
        }
        for (name, output) in &self.steps {
            put(&mut out, name.as_bytes());
            put(&mut out, output);
        }
        out
    }

    /// Reads stored bytes back; `Err` says what is wrong with them.
    pub(super) fn decode(bytes: &Bytes) -> Result<Journal, String> {
        if bytes.len() < FIXED || bytes[..2] != MARK {
            return Err(format!(
                "{} bytes that are not a steps journal of this version",
                bytes.len()
            ));
        }
        let array = |at: usize, n: usize| &bytes[at..at + n];
        let fingerprint = Fingerprint::from_bytes(fixed(array(2, 32)));
        let owner = Token::from_bytes(fixed(array(34, 16)));
        let flags = bytes[50];
        let attempts = u32::from_le_bytes(fixed(array(51, 4)));
        let ttl = Duration::from_millis(u64::from_le_bytes(fixed(array(55, 8))));
        let version = u32::from_le_bytes(fixed(array(63, 4)));
        let digest = Digest::from_bytes(fixed(array(67, 32)));
        let mut at = FIXED;
        let take = |at: &mut usize| -> Result<Bytes, String> {
            let start = *at;
            let len = bytes
                .get(start..start + 4)
                .map(|len| u32::from_le_bytes(fixed(len)) as usize)
                .ok_or("a length cut short")?;
            let part = bytes
                .get(start + 4..start + 4 + len)
                .ok_or("a part cut short")?;
            *at = start + 4 + len;
            Ok(bytes.slice_ref(part))
        };
        let text = |part: Bytes| {
            String::from_utf8(part.to_vec()).map_err(|_| "a name that is not UTF-8".to_owned())
        };
        let namespace = text(take(&mut at)?)?;
        let input = take(&mut at)?;
        let last_error = text(take(&mut at)?)?;
        let mut steps = Vec::new();
        while at < bytes.len() {
            let name = text(take(&mut at)?)?;
            steps.push((name, take(&mut at)?));
        }
        Ok(Journal {
            fingerprint,
            owner,
            flags,
            attempts,
            ttl,
            key: Key::new(namespace, version, digest),
            input,
            last_error,
            steps,
        })
    }
}

fn put(out: &mut Vec<u8>, part: &[u8]) {
    let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(part);
}

fn fixed<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut array = [0; N];
    array.copy_from_slice(bytes);
    array
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_reads_back_as_written() {
        let key = Key::derive("shop::checkout", 3, &"order-1").expect("key");
        let mut journal = Journal::new(
            key,
            Fingerprint::from_bytes([7; 32]),
            Token::random(),
            Duration::from_secs(3600),
            Bytes::from_static(b"input"),
        );
        journal
            .steps
            .push(("reserve".to_owned(), Bytes::from_static(b"r")));
        journal.steps.push(("charge".to_owned(), Bytes::new()));
        journal.last_error = "declined".to_owned();
        journal.flags = PARKED;
        journal.attempts = 4;
        let bytes = Bytes::from(journal.encode());
        assert_eq!(Journal::decode(&bytes), Ok(journal));
    }

    #[test]
    fn damaged_bytes_are_refused() {
        let key = Key::derive("shop::checkout", 1, &"order-1").expect("key");
        let journal = Journal::new(
            key,
            Fingerprint::from_bytes([1; 32]),
            Token::random(),
            Duration::from_secs(1),
            Bytes::new(),
        );
        let bytes = journal.encode();
        for cut in [0, 10, FIXED, bytes.len() - 1] {
            assert!(
                Journal::decode(&Bytes::copy_from_slice(&bytes[..cut])).is_err(),
                "cut at {cut}"
            );
        }
        let mut extra = bytes.clone();
        extra.extend_from_slice(&[0, 0, 0]);
        assert!(Journal::decode(&Bytes::from(extra)).is_err());
    }
}
