//! Log lines that any client can trigger (a rejected or unauthorized webhook, a dead letter
//! kept on disk or dropped), written at a bounded rate: a flood must not fill the disk with
//! logs. The counters carry the full numbers; each line that is written says how many like
//! it were left out since the previous one.

use std::sync::atomic::{AtomicU64, Ordering};

/// Allows one line per `interval_ms`, counting the ones it holds back.
pub struct Sampled {
    interval_ms: u64,
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Sampled {
    /// One line per second.
    pub const fn per_second() -> Sampled {
        Sampled::every(1000)
    }

    pub const fn every(interval_ms: u64) -> Sampled {
        Sampled {
            interval_ms,
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be written now, `n` being the lines held back since the
    /// last one; `None` (and one more held back) otherwise.
    pub fn admit(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms.saturating_add(self.interval_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let s = Sampled::every(1000);
        assert_eq!(s.admit(5_000), Some(0));
        for t in 5_001..5_999 {
            assert_eq!(s.admit(t), None);
        }
        assert_eq!(s.admit(6_000), Some(998));
        assert_eq!(s.admit(6_001), None);
        assert_eq!(s.admit(60_000), Some(1));
    }
}
