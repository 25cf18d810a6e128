//! Local steps: a step's SQL writes and its journal entry in one transaction of the store's
//! database (the step's own, or the caller's), so the step is exactly once.

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Transaction;

use super::{State, Steps, check_name};
use crate::error::Error;
use crate::store::MarkSwap;
use crate::store::sql::{SqlDialect, SqlStore};

impl Steps {
    /// Runs step `name` as a **local** step: `run` gets a new transaction of `store`'s
    /// database (`store` must be the executor's store: the journal is there), the step's
    /// journal entry is written in that same transaction, which then commits. The step's
    /// writes and its recovery point commit together or not at all: a crash cannot repeat it.
    ///
    /// As with [`step`](Steps::step), a journaled step returns its output without running,
    /// and an `Err` from `run` rolls the transaction back and journals nothing. A journal that
    /// another run took over rolls it back too ([`Error::LeaseLost`]).
    ///
    /// ```no_run
    /// # use idempotent_core::{steps::Steps, Error, PostgresStore};
    /// # async fn reserve(steps: &Steps, store: &PostgresStore, sku: String) -> Result<i64, Error> {
    /// let hold: i64 = steps
    ///     .local("reserve", store, |tx| Box::pin(async move {
    ///         let held: i64 = sqlx::query_scalar(
    ///             "UPDATE stock SET held = held + 1 WHERE sku = $1 RETURNING held",
    ///         )
    ///         .bind(sku)
    ///         .fetch_one(&mut **tx)
    ///         .await
    ///         .map_err(|_| Error::InvalidOption { option: "sku", problem: "is not in stock" })?;
    ///         Ok::<_, Error>(held)
    ///     }))
    ///     .await?;
    /// # Ok(hold)
    /// # }
    /// ```
    pub async fn local<DB, T, E, F>(&self, name: &str, store: &SqlStore<DB>, run: F) -> Result<T, E>
    where
        DB: SqlDialect,
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: for<'c> FnOnce(&'c mut Transaction<'static, DB>) -> BoxFuture<'c, Result<T, E>>,
    {
        check_name(name)?;
        if let Some(output) = self.journaled(name).await {
            return Ok(self.decode(&output)?);
        }
        let failed = |error: sqlx::Error| self.failed(store.error(error));
        let mut tx = store.pool().begin().await.map_err(failed)?;
        let value = self.local_in(name, store, &mut tx, run).await?;
        tx.commit().await.map_err(failed)?;
        Ok(value)
    }

    /// [`local`](Steps::local) in the caller's transaction `tx`: the step's writes and its
    /// journal entry are made in `tx`, which the caller commits (or rolls back: the step then
    /// did not happen, and a later write of this call's journal finds that out and goes on).
    pub async fn local_in<'t, DB, T, E, F>(
        &self,
        name: &str,
        store: &SqlStore<DB>,
        tx: &mut Transaction<'t, DB>,
        run: F,
    ) -> Result<T, E>
    where
        DB: SqlDialect,
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: for<'c> FnOnce(&'c mut Transaction<'t, DB>) -> BoxFuture<'c, Result<T, E>>,
    {
        check_name(name)?;
        let Some(state) = &self.inner.state else {
            // No claim (fail open): the step's writes alone.
            return run(tx).await;
        };
        // Held until the entry is written: this call's journal writes stay in order.
        let mut state = state.lock().await;
        if let Some(output) = state.journal.step(name) {
            return Ok(self.decode(output)?);
        }
        let value = run(tx).await?;
        let output = self.encode(&value)?;
        for first in [true, false] {
            let mut next = state.journal.clone();
            next.steps.push((name.to_owned(), output.clone()));
            let bytes = bytes::Bytes::from(next.encode());
            let swap = MarkSwap::new(Some(&state.stored), &bytes, self.inner.ttl);
            let swapped = store
                .swap_mark_in(tx, &self.inner.journal_key, swap)
                .await
                .map_err(|error| self.failed(error))?;
            if swapped {
                *state = State {
                    journal: next,
                    stored: bytes,
                };
                return Ok(value);
            }
            if !(first && self.resync(&mut state).await?) {
                break;
            }
        }
        Err(Error::LeaseLost {
            key: self.inner.key.clone(),
        }
        .into())
    }
}
