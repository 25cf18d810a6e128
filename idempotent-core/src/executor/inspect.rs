//! Looking at one key's record and clearing it, for support tooling: "what happened to order
//! 1234's charge key, and can we clear it so the customer can retry?"

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::Idempotency;
use crate::error::{Error, NotStored, StoreOp};
use crate::key::{Fingerprint, Key};
use crate::output::envelope::{MARK_ERR, MARK_OK, read_not_stored, recorded_at, unmark};
use crate::record::{Record, Token};

/// What a store holds under a key: [`Idempotency::inspect`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inspection {
    /// A call holds the key and is running its body (or died holding it: the key is free
    /// again once `lease_until` passes).
    InProgress {
        /// The token of the call that holds it.
        holder: Token,
        /// The fingerprint of that call's inputs.
        fingerprint: Fingerprint,
        /// When its lease passes, unless it renews it.
        lease_until: SystemTime,
    },
    /// Done: every retry with the same inputs gets the stored outcome until `expires_at`.
    Completed {
        /// The fingerprint of the call that ran.
        fingerprint: Fingerprint,
        /// What the body returned, as far as the record says.
        outcome: StoredOutcome,
        /// When the output was recorded, by the clock of the process that ran the body
        /// (`None` for a record written by 0.1, which did not keep it).
        recorded_at: Option<SystemTime>,
        /// When the record expires (and the key runs its body again).
        expires_at: SystemTime,
        /// The size of the stored output, in bytes.
        output_len: usize,
        /// The stored output itself ([`Idempotency::inspect_with_output`] only; read it
        /// with [`output::to_json`](crate::output::to_json)).
        output: Option<Bytes>,
    },
}

/// What a completed record says the body returned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoredOutcome {
    /// An `Ok` output, replayed to retries.
    Ok,
    /// An `Err` output (a call with `store_errors`), replayed to retries.
    Err,
    /// The body returned but its output could not be stored: retries get
    /// [`Error::OutputNotStored`].
    NotStored(NotStored),
    /// Bytes this crate's executor does not write (another writer, or damage).
    Unreadable,
}

impl StoredOutcome {
    fn of(output: &[u8]) -> StoredOutcome {
        match read_not_stored(output) {
            Some(Ok(reason)) => return StoredOutcome::NotStored(reason),
            Some(Err(_)) => return StoredOutcome::Unreadable,
            None => {}
        }
        match unmark(output) {
            Ok((MARK_OK, _)) => StoredOutcome::Ok,
            Ok((MARK_ERR, _)) => StoredOutcome::Err,
            _ => StoredOutcome::Unreadable,
        }
    }
}

impl Inspection {
    fn of(record: Record, with_output: bool) -> Inspection {
        match record {
            Record::InProgress {
                token,
                fingerprint,
                lease_until,
            } => Inspection::InProgress {
                holder: token,
                fingerprint,
                lease_until,
            },
            Record::Completed {
                fingerprint,
                output,
                expires_at,
                ..
            } => Inspection::Completed {
                fingerprint,
                outcome: StoredOutcome::of(&output),
                recorded_at: recorded_at(&output),
                expires_at,
                output_len: output.len(),
                output: with_output.then_some(output),
            },
        }
    }
}

impl Idempotency {
    /// What the store holds under `key` (`None`: nothing, or an expired record), without
    /// the output's bytes. The key of an `#[idempotent]` function is
    /// [`Key::derive`]`(name, version, &key_value)` with its `name` (or its default, the
    /// module path and function name), its `version` (default 1) and the value of its
    /// `key = …`.
    ///
    /// ```
    /// use idempotent_core::{Error, Fingerprint, Idempotency, Inspection, Key, MemoryStore};
    /// use idempotent_core::StoredOutcome;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// let idempotency = Idempotency::new(MemoryStore::new());
    /// let key = Key::derive("billing.charge", 1, &"order-1234").unwrap();
    /// let fingerprint = Fingerprint::of(&"order-1234").unwrap();
    /// idempotency.run(key.clone(), fingerprint, || async { Ok::<_, Error>(1999u64) }).await?;
    ///
    /// match idempotency.inspect(&key).await? {
    ///     Some(Inspection::Completed { outcome: StoredOutcome::Ok, output, .. }) => assert!(output.is_none()),
    ///     other => panic!("{other:?}"),
    /// }
    /// assert!(idempotency.forget(&key).await?); // the customer may retry: it runs again
    /// assert!(idempotency.inspect(&key).await?.is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn inspect(&self, key: &Key) -> Result<Option<Inspection>, Error> {
        self.read(key, false).await
    }

    /// [`inspect`](Self::inspect), with the stored output's bytes.
    pub async fn inspect_with_output(&self, key: &Key) -> Result<Option<Inspection>, Error> {
        self.read(key, true).await
    }

    async fn read(&self, key: &Key, with_output: bool) -> Result<Option<Inspection>, Error> {
        let record = self.store().get(key).await.map_err(|source| Error::Store {
            op: StoreOp::Get,
            key: key.clone(),
            source,
        })?;
        Ok(record.map(|record| Inspection::of(record, with_output)))
    }

    /// Removes the record under `key`, so that the next call with it runs its body again:
    /// `true` when there was one. Refused with [`Error::InProgress`] while a call holds the
    /// key (removing it would let a retry run the body beside that call); use
    /// [`forget_forced`](Self::forget_forced) for a call known to be dead.
    ///
    /// Between the read and the removal a record could expire and a new call claim the
    /// key; the removal would then take that call's claim (its result would not be
    /// stored). Forget keys whose record is not about to expire.
    pub async fn forget(&self, key: &Key) -> Result<bool, Error> {
        if let Some(Inspection::InProgress { lease_until, .. }) = self.inspect(key).await? {
            let left = lease_until
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            return Err(Error::InProgress {
                key: key.clone(),
                retry_after: left,
            });
        }
        self.forget_forced(key).await
    }

    /// Removes the record under `key` whatever it holds, a call in progress included (its
    /// result will not be stored, and a retry may run the body again beside it): `true`
    /// when there was one.
    pub async fn forget_forced(&self, key: &Key) -> Result<bool, Error> {
        if let Some(local) = &self.inner.local {
            local.forget(key);
        }
        let removed = self.store().remove(key).await;
        // Again after the removal: a call that read the record before it is not cached now.
        if let Some(local) = &self.inner.local {
            local.forget(key);
        }
        removed.map_err(|source| Error::Store {
            op: StoreOp::Remove,
            key: key.clone(),
            source,
        })
    }
}
