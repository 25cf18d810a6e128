//! The one value a sequenced consumer keeps per producer, and the fenced swaps on it.
//!
//! 42 bytes: a format byte (`1`), the high-water mark (the highest sequence processed, `0`
//! for none), then the delivery in progress, if any: a flag, its owner's random token, its
//! sequence and when its lease passes (milliseconds since the Unix epoch, this process's
//! clock). Every change is a compare-and-set of the whole value
//! ([`Store::swap_mark`]), so an owner whose lease passed and whose mark was taken over
//! changes nothing: the value no longer carries its token.

use std::ops::RangeInclusive;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::error::{Error, StoreOp};
use crate::key::Key;
use crate::record::Token;
use crate::store::MarkSwap;
use crate::store::Store;

const FORMAT: u8 = 1;
const LEN: usize = 42;

/// The delivery of one producer's message that holds the producer's mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    pub(crate) token: Token,
    pub(crate) sequence: u64,
    /// When the lease passes, in milliseconds since the Unix epoch.
    pub(crate) lease_until: u64,
}

/// A producer's mark: the highest sequence processed and the delivery in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Mark {
    pub(crate) processed: u64,
    pub(crate) owner: Option<Owner>,
}

impl Mark {
    pub(crate) fn encode(&self) -> [u8; LEN] {
        let mut bytes = [0u8; LEN];
        bytes[0] = FORMAT;
        bytes[1..9].copy_from_slice(&self.processed.to_be_bytes());
        if let Some(owner) = &self.owner {
            bytes[9] = 1;
            bytes[10..26].copy_from_slice(owner.token.as_bytes());
            bytes[26..34].copy_from_slice(&owner.sequence.to_be_bytes());
            bytes[34..42].copy_from_slice(&owner.lease_until.to_be_bytes());
        }
        bytes
    }

    /// Reads a stored mark (`None`: no mark, a producer not seen within the retention).
    pub(crate) fn decode(key: &Key, bytes: Option<&[u8]>) -> Result<Mark, Error> {
        let Some(bytes) = bytes else {
            return Ok(Mark::default());
        };
        let corrupt = |detail: &str| Error::CorruptRecord {
            key: key.clone(),
            detail: format!("{detail}: not a producer mark written by this crate"),
        };
        if bytes.len() != LEN || bytes[0] != FORMAT {
            return Err(corrupt(&format!(
                "{} bytes starting with {:?}",
                bytes.len(),
                bytes.first()
            )));
        }
        let word = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(word)
        };
        let owner = match bytes[9] {
            0 => None,
            1 => {
                let mut token = [0u8; 16];
                token.copy_from_slice(&bytes[10..26]);
                Some(Owner {
                    token: Token::from_bytes(token),
                    sequence: word(26),
                    lease_until: word(34),
                })
            }
            flag => return Err(corrupt(&format!("owner flag {flag}"))),
        };
        Ok(Mark {
            processed: word(1),
            owner,
        })
    }

    /// The owner whose lease has not passed at `now_ms`.
    pub(crate) fn live_owner(&self, now_ms: u64) -> Option<&Owner> {
        self.owner
            .as_ref()
            .filter(|owner| owner.lease_until > now_ms)
    }

    /// What this mark says of a delivery of `sequence` at `now_ms`, gaps accepted or not:
    /// the one decision both the sequenced consumer and the inbox take.
    pub(crate) fn admit(&self, sequence: u64, now_ms: u64, accept_gaps: bool) -> Admission {
        if sequence <= self.processed {
            return Admission::Duplicate;
        }
        if let Some(owner) = self.live_owner(now_ms) {
            let left = owner.lease_until.saturating_sub(now_ms);
            return Admission::Busy(Duration::from_millis(left));
        }
        let next = self.processed + 1;
        match (sequence > next, accept_gaps) {
            (false, _) => Admission::Run(None),
            (true, true) => Admission::Run(Some(next..=sequence - 1)),
            (true, false) => Admission::Gap { expected: next },
        }
    }
}

/// What a producer's mark says of a delivery ([`Mark::admit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admission {
    /// At or below the mark: processed before.
    Duplicate,
    /// Another delivery of the producer holds the mark, for this long yet.
    Busy(Duration),
    /// Past the next one expected.
    Gap { expected: u64 },
    /// To handle, skipping these sequences (an accepted gap).
    Run(Option<RangeInclusive<u64>>),
}

/// Now, in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds of `duration`, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Reads `key`'s mark and its stored bytes (the `expected` of a swap from it).
pub(crate) async fn load(store: &dyn Store, key: &Key) -> Result<(Mark, Option<Bytes>), Error> {
    let bytes = store
        .load_mark(key)
        .await
        .map_err(|source| Error::from_store(StoreOp::Get, key, source))?;
    Ok((Mark::decode(key, bytes.as_deref())?, bytes))
}

/// Swaps the mark that `token` holds for `new`, starting from `guess` (what this owner wrote
/// last). A swap can fail because an earlier one (a renewal whose answer was dropped) did
/// change the value: the mark is then read again, and the swap retried from it as long as it
/// still carries `token`. `Ok(false)`: the mark is no longer this owner's.
pub(crate) async fn swap_owned(
    store: &dyn Store,
    key: &Key,
    token: &Token,
    guess: &[u8],
    new: &Mark,
    retention: Duration,
    op: StoreOp,
) -> Result<bool, Error> {
    let error = |source| Error::from_store(op, key, source);
    let new = new.encode();
    let mut expected = Bytes::copy_from_slice(guess);
    for _ in 0..3 {
        if store
            .swap_mark(key, MarkSwap::new(Some(&expected), &new, retention))
            .await
            .map_err(error)?
        {
            return Ok(true);
        }
        let (current, bytes) = load(store, key).await?;
        match (current.owner, bytes) {
            (Some(owner), Some(bytes)) if owner.token == *token => expected = bytes,
            _ => return Ok(false),
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Digest;

    #[test]
    fn marks_round_trip_and_foreign_values_are_corrupt() {
        let key = Key::new("orders", 1, Digest::of_bytes(b"producer"));
        let owned = Mark {
            processed: 41,
            owner: Some(Owner {
                token: Token::random(),
                sequence: 42,
                lease_until: 1_700_000_000_000,
            }),
        };
        for mark in [Mark::default(), owned] {
            let bytes = mark.encode();
            assert_eq!(Mark::decode(&key, Some(&bytes)).expect("decodes"), mark);
        }
        assert_eq!(Mark::decode(&key, None).expect("none"), Mark::default());
        let short = Mark::decode(&key, Some(b"hello"));
        assert!(
            matches!(short, Err(Error::CorruptRecord { .. })),
            "{short:?}"
        );
        let mut flag = owned.encode();
        flag[9] = 7;
        let flagged = Mark::decode(&key, Some(&flag));
        assert!(
            matches!(flagged, Err(Error::CorruptRecord { .. })),
            "{flagged:?}"
        );
        assert!(owned.live_owner(1_700_000_000_000).is_none());
        assert!(owned.live_owner(1_699_999_999_999).is_some());
    }

    #[test]
    fn the_mark_admits_the_next_one_and_tells_the_rest_apart() {
        let held = Mark {
            processed: 4,
            owner: Some(Owner {
                token: Token::random(),
                sequence: 5,
                lease_until: 1_000,
            }),
        };
        assert_eq!(held.admit(4, 900, false), Admission::Duplicate);
        assert_eq!(
            held.admit(5, 900, false),
            Admission::Busy(Duration::from_millis(100))
        );
        assert_eq!(
            held.admit(5, 1_000, false),
            Admission::Run(None),
            "the lease passed"
        );
        assert_eq!(held.admit(7, 1_000, false), Admission::Gap { expected: 5 });
        assert_eq!(held.admit(7, 1_000, true), Admission::Run(Some(5..=6)));
    }
}
