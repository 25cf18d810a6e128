//! Marks on SQL (see [`Store::load_mark`](crate::Store::load_mark)): completed rows of the
//! store's table whose output is the mark's value (statements in
//! [`MarkStatements`](super::dialect::MarkStatements)). On a pooled connection, or in the
//! caller's transaction for the sequenced inbox.

use bytes::Bytes;

use super::dialect::Args;
use super::record::row_id;
use super::{SqlDialect, SqlStore};
use crate::error::StoreError;
use crate::key::Key;
use crate::store::MarkSwap;

/// The token and fingerprint of a mark's row: no owner, no arguments.
const NO_TOKEN: [u8; 16] = [0; 16];
const NO_FINGERPRINT: [u8; 32] = [0; 32];

impl<DB: SqlDialect> SqlStore<DB> {
    /// The live mark under `key`, on `conn`.
    pub(crate) async fn load_mark_in(
        &self,
        conn: &mut DB::Connection,
        key: &Key,
    ) -> Result<Option<Bytes>, StoreError> {
        let id = row_id(key);
        let args = Args {
            id: &id,
            now: DB::CLOCK.now(),
            ..Args::default()
        };
        let row = self.fetch(conn, &self.sql().marks.load, &args).await?;
        row.map(|row| DB::bytes(&row, 0).map(Bytes::from))
            .transpose()
            .map_err(|error| self.error(error))
    }

    /// Swaps the mark under `key` from `expected` to `new`, on `conn`: one update, or
    /// (expecting none) the delete of an expired mark and an insert that changes nothing
    /// when another caller inserted first.
    pub(crate) async fn swap_mark_in(
        &self,
        conn: &mut DB::Connection,
        key: &Key,
        swap: MarkSwap<'_>,
    ) -> Result<bool, StoreError> {
        let MarkSwap { expected, new, ttl } = swap;
        let id = row_id(key);
        let args = Args {
            id: &id,
            token: &NO_TOKEN,
            fingerprint: &NO_FINGERPRINT,
            output: new,
            expected: expected.unwrap_or_default(),
            namespace: key.namespace(),
            version: i64::from(key.version()),
            ttl,
            now: DB::CLOCK.now(),
            ..Args::default()
        };
        let marks = &self.sql().marks;
        if expected.is_some() {
            return Ok(self.execute(conn, &marks.swap, &args).await? == 1);
        }
        self.execute(conn, &marks.clear, &args).await?;
        Ok(self.execute(conn, &marks.insert, &args).await? == 1)
    }

    /// Locks the row of the mark under `key` (if there is one) until `conn`'s transaction
    /// ends, so that concurrent deliveries of one producer take turns: whether there was one.
    pub(crate) async fn lock_mark_in(
        &self,
        conn: &mut DB::Connection,
        key: &Key,
    ) -> Result<bool, StoreError> {
        let id = row_id(key);
        let args = Args {
            id: &id,
            ..Args::default()
        };
        Ok(self.execute(conn, &self.sql().marks.lock, &args).await? > 0)
    }
}
