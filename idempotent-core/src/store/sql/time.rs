//! Time conversions: durations and instants as the signed microseconds the statements bind.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Durations are bound as microseconds and capped at the longest duration any option accepts
/// ([`LONGEST`](crate::defaults::LONGEST)), so that `now + d` stays inside every database's timestamp range.
const MAX_MICROS: i64 = crate::defaults::LONGEST.as_micros() as i64;

/// `duration` in microseconds, capped (see [`MAX_MICROS`]).
pub(crate) fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros())
        .unwrap_or(i64::MAX)
        .min(MAX_MICROS)
}

/// `time` in microseconds since the Unix epoch (an instant, not capped like a duration; before
/// the epoch reads as the epoch).
pub(crate) fn epoch_micros(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A lease or TTL's remaining time from a signed count of microseconds (negative: passed).
pub(crate) fn remaining(micros: i64) -> Duration {
    Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

/// A wall-clock time from microseconds since the Unix epoch.
pub(crate) fn wall_clock(micros: i64) -> SystemTime {
    match u64::try_from(micros) {
        Ok(after) => UNIX_EPOCH + Duration::from_micros(after),
        Err(_) => UNIX_EPOCH - Duration::from_micros(micros.unsigned_abs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_capped_microseconds() {
        assert_eq!(micros(Duration::from_millis(1500)), 1_500_000);
        assert_eq!(micros(Duration::MAX), MAX_MICROS);
        assert_eq!(remaining(-5), Duration::ZERO);
        assert_eq!(remaining(7), Duration::from_micros(7));
        assert_eq!(wall_clock(1_000_000), UNIX_EPOCH + Duration::from_secs(1));
        // An instant is not a duration: today is past the longest duration after the epoch.
        assert!(epoch_micros(SystemTime::now()) > micros(Duration::MAX));
    }
}
