//! Local steps: a step's SQL writes and its journal entry in one transaction of the store's
//! database, so the step is exactly once.

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Transaction;

use super::{State, Steps, check_name};
use crate::error::Error;
use crate::store::MarkSwap;
use crate::store::sql::{SqlDialect, SqlStore};

impl Steps {
    /// Runs step `name` as a **local** step: `run` gets a transaction of `store`'s database
    /// (`store` must be the executor's store: the journal is there), and the step's journal
    /// entry is written in that same transaction, which then commits. The step's writes and
    /// its recovery point commit together or not at all: a crash cannot repeat it.
    ///
    /// As with [`step`](Steps::step), a journaled step returns its output without running,
    /// and an `Err` from `run` rolls the transaction back and journals nothing. A journal that
    /// another run took over rolls it back too ([`Error::LeaseLost`]).
    ///
    /// ```no_run
    /// # use idempotent_core::{steps::Steps, Error, PostgresStore};
    /// # async fn reserve(steps: &Steps, store: &PostgresStore, sku: &str) -> Result<i64, Error> {
    /// let hold: i64 = steps
    ///     .local("reserve", store, |tx| Box::pin(async move {
    ///         let row: (i64,) = sqlx::query_as(
    ///             "UPDATE stock SET held = held + 1 WHERE sku = $1 RETURNING held",
    ///         )
    ///         .bind(sku)
    ///         .fetch_one(&mut **tx)
    ///         .await
    ///         .map_err(|error| Error::InvalidOption { option: "sku", problem: "not in stock" })?;
    ///         Ok::<_, Error>(row.0)
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
        let failed = |error: sqlx::Error| self.failed(store.error(error));
        let Some(state) = &self.inner.state else {
            // No claim (fail open): the step's writes alone.
            let mut tx = store.pool().begin().await.map_err(failed)?;
            let value = run(&mut tx).await?;
            tx.commit().await.map_err(failed)?;
            return Ok(value);
        };
        // Held through the transaction: this call's journal writes stay in order.
        let mut state = state.lock().await;
        if let Some(output) = state.journal.step(name) {
            return Ok(self.decode(output)?);
        }
        let mut tx = store.pool().begin().await.map_err(failed)?;
        let value = run(&mut tx).await?;
        let mut next = state.journal.clone();
        next.steps.push((name.to_owned(), self.encode(&value)?));
        let bytes = bytes::Bytes::from(next.encode());
        let swap = MarkSwap::new(Some(&state.stored), &bytes, self.inner.ttl);
        let swapped = store
            .swap_mark_in(&mut tx, &self.inner.journal_key, swap)
            .await
            .map_err(|error| self.failed(error))?;
        if !swapped {
            return Err(Error::LeaseLost {
                key: self.inner.key.clone(),
            }
            .into());
        }
        tx.commit().await.map_err(failed)?;
        *state = State {
            journal: next,
            stored: bytes,
        };
        Ok(value)
    }
}
