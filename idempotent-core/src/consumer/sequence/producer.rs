//! The producer's side: a stamp (producer id and sequence) on each message, and the sequence
//! kept in the store so that a restarted producer continues it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::RETENTION;
use crate::error::{CodecOp, Error, StoreOp};
use crate::executor::Idempotency;
use crate::key::{Digest, Key, Namespace};
use crate::protocol::defaults;
use crate::store::MarkSwap;
use crate::store::Store;

/// The header that carries a message's producer id (JetStream, RabbitMQ, HTTP).
pub const PRODUCER_HEADER: &str = "Idempotency-Producer";
/// The header that carries a message's sequence number (decimal, from 1).
pub const SEQUENCE_HEADER: &str = "Idempotency-Sequence";

/// The longest producer id, in bytes.
const MAX_PRODUCER: usize = 256;
const FORMAT: u8 = 2;

/// Who sent a message, and its place in that producer's sequence (1, 2, 3, …).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Stamp {
    producer: String,
    sequence: u64,
}

impl Stamp {
    /// A stamp; the producer id is 1 to 256 bytes, the sequence at least 1.
    pub fn new(producer: impl Into<String>, sequence: u64) -> Result<Stamp, Error> {
        let producer = producer.into();
        if producer.is_empty() || producer.len() > MAX_PRODUCER {
            return Err(Error::InvalidStamp {
                problem: format!(
                    "the producer id is {} bytes; give it 1 to {MAX_PRODUCER}",
                    producer.len()
                ),
            });
        }
        if sequence == 0 {
            return Err(Error::InvalidStamp {
                problem: format!("producer `{producer}`'s sequence is 0; sequences start at 1"),
            });
        }
        Ok(Stamp { producer, sequence })
    }

    /// A stamp from the values of headers [`PRODUCER_HEADER`] and [`SEQUENCE_HEADER`]:
    /// [`Error::InvalidStamp`] says which is missing or malformed.
    ///
    /// ```
    /// use idempotent_core::consumer::sequence::Stamp;
    ///
    /// let stamp = Stamp::from_headers(Some("billing-1"), Some("42")).unwrap();
    /// assert_eq!((stamp.producer(), stamp.sequence()), ("billing-1", 42));
    /// assert!(Stamp::from_headers(Some("billing-1"), Some("forty-two")).is_err());
    /// assert!(Stamp::from_headers(None, Some("42")).is_err());
    /// ```
    pub fn from_headers(producer: Option<&str>, sequence: Option<&str>) -> Result<Stamp, Error> {
        let missing = |header: &str| Error::InvalidStamp {
            problem: format!("the message has no `{header}` header; stamp it when publishing"),
        };
        let producer = producer.ok_or_else(|| missing(PRODUCER_HEADER))?;
        let sequence = sequence.ok_or_else(|| missing(SEQUENCE_HEADER))?;
        let sequence = sequence
            .trim()
            .parse::<u64>()
            .map_err(|_| Error::InvalidStamp {
                problem: format!(
                    "`{SEQUENCE_HEADER}` is `{}`, not a whole number from 1",
                    sequence.chars().take(40).collect::<String>()
                ),
            })?;
        Stamp::new(producer, sequence)
    }

    /// The headers to publish with: `[(PRODUCER_HEADER, id), (SEQUENCE_HEADER, sequence)]`.
    pub fn headers(&self) -> [(&'static str, String); 2] {
        [
            (PRODUCER_HEADER, self.producer.clone()),
            (SEQUENCE_HEADER, self.sequence.to_string()),
        ]
    }

    /// The producer id.
    pub fn producer(&self) -> &str {
        &self.producer
    }

    /// The sequence number.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.producer, self.sequence)
    }
}

/// A producer's sequence, kept in the store: [`next`](Self::next) hands out 1, 2, 3, … and
/// stores each number before handing it out, so a producer that restarts (or moves to
/// another machine) with the same id continues the sequence instead of restarting it,
/// which its consumers would take for duplicates.
///
/// One process at a time per producer id: a number stored by another process is refused
/// with [`Error::SequenceConflict`]. After a crash, the last number handed out may not have
/// been published: publish the messages from [`last`](Self::last) back again with
/// [`again`](Self::again) (consumers skip the ones they have), then go on with `next`.
#[derive(Debug)]
pub struct ProducerSequence {
    store: Arc<dyn Store>,
    key: Key,
    producer: String,
    last: u64,
    stored: Option<Bytes>,
    /// Whether the last `next` failed without knowing whether its number was stored.
    uncertain: bool,
    retention: Duration,
}

impl ProducerSequence {
    /// Opens producer `producer`'s sequence, kept under `name` (a namespace of the
    /// application's producers) in `idempotency`'s store: it continues from the last number
    /// stored, or starts at 1.
    pub async fn open(
        idempotency: &Idempotency,
        name: impl Into<Namespace>,
        producer: impl Into<String>,
    ) -> Result<ProducerSequence, Error> {
        let producer = producer.into();
        // Checks the id as a stamp would.
        Stamp::new(producer.clone(), 1)?;
        let digest =
            Digest::of(&("idempotency.producer", producer.as_str())).map_err(|source| {
                Error::Codec {
                    op: CodecOp::HashKey,
                    key: None,
                    source: Box::new(source),
                }
            })?;
        let key = Key::new(name.into(), 1, digest);
        let store = Arc::clone(idempotency.store());
        let stored = store
            .load_mark(&key)
            .await
            .map_err(|source| Error::from_store(StoreOp::Get, &key, source))?;
        let last = decode(&key, stored.as_deref())?;
        Ok(ProducerSequence {
            store,
            key,
            producer,
            last,
            stored,
            uncertain: false,
            retention: RETENTION,
        })
    }

    /// How long the sequence is kept after its last number (default [`RETENTION`]): a
    /// producer silent for longer starts again at 1. Keep it at least as long as its
    /// consumers' retention.
    pub fn retention(mut self, retention: Duration) -> ProducerSequence {
        self.retention = retention.clamp(Duration::from_secs(1), defaults::LONGEST);
        self
    }

    /// The producer id.
    pub fn producer(&self) -> &str {
        &self.producer
    }

    /// The last number handed out (and stored): `0` before the first.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Stores the next number and returns its stamp. On [`Error::Store`] nothing is handed
    /// out: call it again (if the number was stored, the next call finds it and hands it
    /// out).
    pub async fn next(&mut self) -> Result<Stamp, Error> {
        let next = self
            .last
            .checked_add(1)
            .ok_or_else(|| Error::InvalidStamp {
                problem: format!("producer `{}`'s sequence is exhausted", self.producer),
            })?;
        let new = encode(next);
        let swapped = self
            .store
            .swap_mark(
                &self.key,
                MarkSwap::new(self.stored.as_deref(), &new, self.retention),
            )
            .await;
        let swapped = match swapped {
            Ok(swapped) => swapped,
            Err(source) => {
                self.uncertain = true;
                return Err(Error::from_store(StoreOp::Complete, &self.key, source));
            }
        };
        if !swapped {
            // Ours only if the last call failed after this very number may have been
            // stored; anything else was stored by another process with this producer id.
            let current = self
                .store
                .load_mark(&self.key)
                .await
                .map_err(|source| Error::from_store(StoreOp::Get, &self.key, source))?;
            if !(self.uncertain && current.as_deref() == Some(&new[..])) {
                return Err(Error::SequenceConflict {
                    key: self.key.clone(),
                    producer: self.producer.clone(),
                });
            }
        }
        self.uncertain = false;
        self.last = next;
        self.stored = Some(Bytes::copy_from_slice(&new));
        Stamp::new(self.producer.clone(), next)
    }

    /// The stamp of a number handed out before (1 to [`last`](Self::last)), to publish its
    /// message again.
    pub fn again(&self, sequence: u64) -> Result<Stamp, Error> {
        if sequence > self.last {
            return Err(Error::InvalidStamp {
                problem: format!(
                    "producer `{}` has handed out up to {}, not {sequence}; use `next`",
                    self.producer, self.last
                ),
            });
        }
        Stamp::new(self.producer.clone(), sequence)
    }
}

fn encode(last: u64) -> [u8; 9] {
    let mut bytes = [FORMAT; 9];
    bytes[1..].copy_from_slice(&last.to_be_bytes());
    bytes
}

fn decode(key: &Key, bytes: Option<&[u8]>) -> Result<u64, Error> {
    match bytes {
        None => Ok(0),
        Some(bytes) if bytes.len() == 9 && bytes[0] == FORMAT => {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[1..]);
            Ok(u64::from_be_bytes(word))
        }
        Some(bytes) => Err(Error::CorruptRecord {
            key: key.clone(),
            detail: format!(
                "{} bytes: not a producer sequence written by this crate",
                bytes.len()
            ),
        }),
    }
}
