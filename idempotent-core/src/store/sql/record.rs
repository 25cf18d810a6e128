//! Rows and records: row ids and the decoding of a row into a record or a
//! claim's answer, written once for every database.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use super::dialect::Dialect;
use super::time::wall_clock;
use crate::error::StoreError;
use crate::key::{Fingerprint, Key};
use crate::record::{Claim, Record, Token};

/// The row id of `key`: SHA-256 of its text form, streamed without building the string. The
/// text form is unambiguous (the version and the hex digest end it and contain no `:`).
pub(crate) fn row_id(key: &Key) -> [u8; 32] {
    struct Hashing(Sha256);
    impl fmt::Write for Hashing {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.0.update(s.as_bytes());
            Ok(())
        }
    }
    let mut hashing = Hashing(Sha256::new());
    // Writing into a hasher cannot fail.
    let _ = fmt::write(&mut hashing, format_args!("{key}"));
    hashing.0.finalize().into()
}

/// A column that does not decode as this store wrote it.
pub(crate) fn decode(error: sqlx::Error) -> StoreError {
    StoreError::corrupt(error.to_string())
}

/// A fenced write's answer: it changed the row, or the token no longer owns it.
pub(crate) fn fenced(rows: u64) -> Result<(), StoreError> {
    if rows == 0 {
        Err(StoreError::LeaseLost)
    } else {
        Ok(())
    }
}

fn token_from(bytes: &[u8]) -> Result<Token, StoreError> {
    <[u8; 16]>::try_from(bytes)
        .map(Token::from_bytes)
        .map_err(|_| StoreError::corrupt(format!("a token of {} bytes, not 16", bytes.len())))
}

pub(crate) fn fingerprint_from(bytes: &[u8]) -> Result<Fingerprint, StoreError> {
    <[u8; 32]>::try_from(bytes)
        .map(Fingerprint::from_bytes)
        .map_err(|_| StoreError::corrupt(format!("a fingerprint of {} bytes, not 32", bytes.len())))
}

pub(crate) fn completed_output(output: Option<Vec<u8>>) -> Result<Bytes, StoreError> {
    output
        .map(Bytes::from)
        .ok_or_else(|| StoreError::corrupt("a completed record without an output"))
}

/// The record in a row of `get`: `completed, token, fingerprint, output, lease_until,
/// expires_at`, times in microseconds since the Unix epoch.
pub(crate) fn record_from<DB: Dialect>(row: &DB::Row) -> Result<Record, StoreError> {
    let completed = DB::flag(row, 0).map_err(decode)?;
    let token = token_from(&DB::bytes(row, 1).map_err(decode)?)?;
    let fingerprint = fingerprint_from(&DB::bytes(row, 2).map_err(decode)?)?;
    let output = DB::maybe_bytes(row, 3).map_err(decode)?;
    let lease_until = DB::maybe_int(row, 4).map_err(decode)?;
    let expires_at = DB::int(row, 5).map_err(decode)?;
    Ok(if completed {
        Record::Completed {
            token,
            fingerprint,
            output: completed_output(output)?,
            expires_at: wall_clock(expires_at),
        }
    } else {
        Record::InProgress {
            token,
            fingerprint,
            lease_until: wall_clock(lease_until.unwrap_or(expires_at)),
        }
    })
}

/// The answer of a claim that gave up waiting for a row lock held by another transaction
/// (PostgreSQL's `lock_timeout`, MySQL's `innodb_lock_wait_timeout`): the key is in progress
/// there, but its record is not visible before that transaction commits, so the fingerprint is
/// the caller's own (a key reuse shows after the commit) and the lease is unknown (zero).
pub(crate) fn locked_elsewhere(fingerprint: &Fingerprint) -> Claim {
    Claim::InProgress {
        fingerprint: *fingerprint,
        lease_remaining: Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_ids_hash_the_key_text() {
        let key = Key::derive("ns", 1, &"material").unwrap();
        let expected: [u8; 32] = Sha256::digest(key.to_string().as_bytes()).into();
        assert_eq!(row_id(&key), expected);
        let other = Key::derive("ns", 2, &"material").unwrap();
        assert_ne!(row_id(&key), row_id(&other));
    }
}
