//! The wall clock, read in one place: Unix milliseconds. Pure modules take the time as an
//! argument instead (`dedup`, `normalize`), so their tests need no clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall clock in Unix milliseconds (0 before 1970, saturating far in the future).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
