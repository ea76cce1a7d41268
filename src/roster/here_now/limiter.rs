//! The token bucket every Here Now request waits for, shared by all channels so the reads
//! together stay under `max_requests_per_second`. Uses tokio's clock, so tests run it on a
//! paused clock.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket of `burst` tokens refilled at `per_second`, kept as the time the bucket is
/// next full-by-one (GCRA): each caller reserves its slot under a lock held for a few
/// arithmetic steps (never across an `.await`), then sleeps until it.
#[derive(Debug)]
pub(super) struct RateLimiter {
    interval: Duration,
    tolerance: Duration,
    next: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// A limiter that lets `burst` requests go at once and then one every `1 / per_second`
    /// (`per_second` and `burst` are taken as at least 1).
    pub(super) fn new(per_second: u32, burst: u32) -> RateLimiter {
        let interval = Duration::from_secs(1) / per_second.max(1);
        RateLimiter {
            interval,
            tolerance: interval * (burst.max(1) - 1),
            next: Mutex::new(None),
        }
    }

    /// Waits until one more request may go. Cancel safe in the sense that matters: a cancelled
    /// wait keeps its slot used, so the limiter errs on the slow side and never lets more
    /// requests through than the rate allows.
    pub(super) async fn acquire(&self) {
        let at = self.reserve(Instant::now());
        tokio::time::sleep_until(at).await;
    }

    /// Reserves the next slot for a request arriving at `now`; returns when it may go.
    fn reserve(&self, now: Instant) -> Instant {
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        let theoretical = next.map_or(now, |t| t.max(now));
        *next = Some(theoretical + self.interval);
        theoretical
            .checked_sub(self.tolerance)
            .map_or(now, |earliest| earliest.max(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn n_requests_at_rate_r_take_at_least_n_minus_burst_over_r() {
        let (n, rate, burst) = (25_u32, 10_u32, 5_u32);
        let limiter = RateLimiter::new(rate, burst);
        let start = Instant::now();
        futures::future::join_all((0..n).map(|_| limiter.acquire())).await;
        let elapsed = start.elapsed();
        let bound = Duration::from_secs(1) * (n - burst) / rate;
        assert!(elapsed >= bound, "{elapsed:?} < {bound:?}");
        // …and no slower than the rate asks for.
        assert!(elapsed < bound + Duration::from_millis(1), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_goes_at_once_then_requests_are_spaced() {
        let limiter = RateLimiter::new(4, 3);
        let start = Instant::now();
        for _ in 0..3 {
            limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        limiter.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_millis(250));
        limiter.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_limiter_refills_up_to_the_burst_only() {
        let limiter = RateLimiter::new(10, 2);
        limiter.acquire().await;
        limiter.acquire().await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        let start = Instant::now();
        for _ in 0..4 {
            limiter.acquire().await;
        }
        // Two from the refilled bucket, then two more spaced by 100 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(200));
    }
}
