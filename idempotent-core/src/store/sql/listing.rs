//! Listing and counting rows for operators ([`Store::list`](crate::Store::list),
//! [`Store::stats`](crate::Store::stats)), by the `namespace` and `version` columns each claim
//! writes. There is no index on them: a claim pays nothing for listing, and a page of one
//! namespace reads the table in id order until it has found its rows. A table listed often can
//! take an index of its own (`CREATE INDEX … ON idempotency_records (namespace, version, id)`).

use super::dialect::{self, Args};
use super::record::decode;
use super::time::wall_clock;
use super::{SqlDialect, SqlStore};
use crate::error::StoreError;
use crate::store::listing::marks_need_a_namespace;
use crate::store::{
    Cursor, ListRequest, ListedNamespace, ListedRecord, ListedState, Listing, MarkPage,
    NamespaceStats, StoreStats,
};

/// The row id a request's cursor names (none: from the start).
fn after(request: &ListRequest) -> Result<Vec<u8>, StoreError> {
    match request.cursor() {
        None => Ok(Vec::new()),
        Some(cursor) => from_hex(cursor.as_str()).ok_or_else(|| {
            StoreError::InvalidRequest(format!(
                "`{cursor}` is not a cursor of this SQL store (the hex row id a listing's \
                 `next` gave): start without one, or pass the `next` of the previous page"
            ))
        }),
    }
}

impl<DB: SqlDialect> SqlStore<DB> {
    /// One page of the marks of a namespace: their values, in row id order.
    pub(super) async fn list_mark_rows(
        &self,
        request: ListRequest,
    ) -> Result<MarkPage, StoreError> {
        let (namespace, version) = request
            .namespace_filter()
            .ok_or_else(marks_need_a_namespace)?;
        let after = after(&request)?;
        let args = Args {
            id: &after,
            limit: request.page_limit(),
            namespace,
            version: i64::from(version),
            ..Args::default()
        };
        let mut conn = self.acquire().await?;
        let rows = dialect::fetch_all::<DB>(&mut conn, &self.sql().listing.marks, &args)
            .await
            .map_err(|error| self.error(error))?;
        let full = rows.len() >= request.page_limit() as usize;
        let mut values = Vec::with_capacity(rows.len());
        let mut last = Vec::new();
        for row in &rows {
            last = DB::bytes(row, 0).map_err(decode)?;
            values.push(bytes::Bytes::from(DB::bytes(row, 1).map_err(decode)?));
        }
        Ok(MarkPage {
            values,
            next: full.then(|| Cursor::from(to_hex(&last))),
        })
    }

    pub(super) async fn list_rows(&self, request: ListRequest) -> Result<Listing, StoreError> {
        let after = after(&request)?;
        let (namespace, version) = request.namespace_filter().unwrap_or(("", 0));
        let args = Args {
            id: &after,
            limit: request.page_limit(),
            namespace,
            version: i64::from(version),
            ..Args::default()
        };
        let listing = &self.sql().listing;
        let statement = match request.namespace_filter() {
            Some(_) => &listing.namespace,
            None => &listing.all,
        };
        let mut conn = self.acquire().await?;
        let rows = dialect::fetch_all::<DB>(&mut conn, statement, &args)
            .await
            .map_err(|error| self.error(error))?;
        let full = rows.len() >= request.page_limit() as usize;
        let mut records = Vec::with_capacity(rows.len());
        let mut last = Vec::new();
        for row in &rows {
            last = DB::bytes(row, 0).map_err(decode)?;
            let completed = DB::flag(row, 3).map_err(decode)?;
            let lease_until = DB::maybe_int(row, 4).map_err(decode)?;
            let expires_at = DB::int(row, 5).map_err(decode)?;
            records.push(ListedRecord {
                id: to_hex(&last),
                namespace: namespace_of::<DB>(row, 1)?,
                state: if completed {
                    ListedState::Completed {
                        expires_at: wall_clock(expires_at),
                    }
                } else {
                    ListedState::InProgress {
                        lease_until: wall_clock(lease_until.unwrap_or(expires_at)),
                    }
                },
            });
        }
        Ok(Listing {
            records,
            next: full.then(|| Cursor::from(to_hex(&last))),
        })
    }

    pub(super) async fn count_rows(&self) -> Result<StoreStats, StoreError> {
        let args = Args {
            now: DB::CLOCK.now(),
            ..Args::default()
        };
        let mut conn = self.acquire().await?;
        let rows = dialect::fetch_all::<DB>(&mut conn, &self.sql().listing.stats, &args)
            .await
            .map_err(|error| self.error(error))?;
        let count = |row: &DB::Row, index| {
            DB::int(row, index)
                .map_err(decode)
                .map(|count| u64::try_from(count).unwrap_or(0))
        };
        let mut namespaces: Vec<NamespaceStats> = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut stats = NamespaceStats::new(namespace_of::<DB>(row, 0)?);
            stats.in_progress = count(row, 2)?;
            stats.lease_passed = count(row, 3)?;
            stats.completed = count(row, 4)?;
            stats.expired = count(row, 5)?;
            // A namespace without a version (or the reverse) is as unknown as neither.
            match namespaces
                .iter_mut()
                .find(|seen| seen.namespace == stats.namespace)
            {
                Some(previous) => {
                    previous.in_progress += stats.in_progress;
                    previous.lease_passed += stats.lease_passed;
                    previous.completed += stats.completed;
                    previous.expired += stats.expired;
                }
                _ => namespaces.push(stats),
            }
        }
        namespaces.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        Ok(StoreStats {
            namespaces,
            complete: true,
        })
    }
}

/// The namespace in columns `at` (text) and `at + 1` (version) of `row`.
fn namespace_of<DB: SqlDialect>(row: &DB::Row, at: usize) -> Result<ListedNamespace, StoreError> {
    // MySQL reports a column of a binary collation (`utf8mb4_bin`, so that namespaces compare
    // exactly) as bytes.
    let name = match DB::maybe_text(row, at) {
        Ok(name) => name,
        Err(_) => DB::maybe_bytes(row, at)
            .map_err(decode)?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
    };
    let version = DB::maybe_int(row, at + 1).map_err(decode)?;
    Ok(match (name, version.and_then(|v| u32::try_from(v).ok())) {
        (Some(name), Some(version)) => ListedNamespace::Named { name, version },
        _ => ListedNamespace::Unknown,
    })
}

fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    hex::decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_hex_row_ids() {
        let id = [0u8, 1, 0xab, 0xff];
        assert_eq!(to_hex(&id), "0001abff");
        assert_eq!(from_hex("0001abff").as_deref(), Some(&id[..]));
        assert_eq!(from_hex("0001ABFF").as_deref(), Some(&id[..]));
        for bad in ["0", "zz", "é1", "0x00"] {
            assert_eq!(from_hex(bad), None, "{bad}");
        }
    }
}
