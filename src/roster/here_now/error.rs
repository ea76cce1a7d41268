//! What can go wrong with a Here Now read, each class with a fixed metric label and whether a
//! retry may help, and the backoff before a channel's next attempt. Pure.

use std::time::Duration;

/// Why a Here Now read gave no result. A read that fails replaces nothing: the caller keeps its
/// roster and tries again after [`backoff`] (when [`retriable`](HereNowError::retriable)) or at
/// its next interval.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HereNowError {
    /// A request (connect, send, the whole body) took longer than the configured timeout.
    #[error("Here Now did not answer within the timeout")]
    Timeout,
    /// 403: Access Manager refused the request (PubNub's message, cut to 200 bytes).
    #[error("Here Now refused the request (403): {0}")]
    Forbidden(String),
    /// A 5xx answer: the service is unavailable.
    #[error("Here Now answered {0}")]
    Server(u16),
    /// Any other non-200 answer, with PubNub's message (cut to 200 bytes).
    #[error("Here Now answered {0}: {1}")]
    Status(u16, String),
    /// A 200 whose body is not Here Now's documented shape (or too large).
    #[error("Here Now answered with a body that is not its documented shape: {0}")]
    Malformed(String),
    /// The pages listed a different number of members than the occupancy reported (or the pages
    /// disagreed on the occupancy): the membership moved during the read.
    #[error("Here Now listed {listed} members for occupancy {occupancy}")]
    Inconsistent {
        /// The occupancy the first page reported.
        occupancy: u64,
        /// How many distinct members the pages listed.
        listed: u64,
    },
    /// A read of the same channel is already running; its result is the one to wait for.
    #[error("a Here Now read of this channel is already running")]
    Busy,
    /// The connection failed or broke before a whole answer arrived (refused, reset, TLS).
    /// Counted as `http_error`: no usable HTTP answer.
    #[error("Here Now could not be reached: {0}")]
    Transport(String),
    /// The channel name is empty (Here Now's path would then name no channel). Counted as
    /// `http_error`: the request cannot be made.
    #[error("the channel name is empty")]
    InvalidChannel,
    /// `HereNowClient::new` refused the settings (the message names the setting). Never the
    /// result of a read; labelled `http_error` only so that every error has a label.
    #[error("invalid Here Now settings: {0}")]
    Config(String),
}

impl HereNowError {
    /// Every label [`result_label`](Self::result_label) returns: the failed results of
    /// `hookbus_roster_reconciliations_total` (the caller adds its own for a successful read).
    pub const LABELS: [&'static str; 7] = [
        "timeout",
        "forbidden",
        "server_error",
        "http_error",
        "malformed",
        "inconsistent",
        "busy",
    ];

    /// The metric label of this error, from the fixed set [`LABELS`](Self::LABELS).
    pub fn result_label(&self) -> &'static str {
        match self {
            HereNowError::Timeout => "timeout",
            HereNowError::Forbidden(_) => "forbidden",
            HereNowError::Server(_) => "server_error",
            HereNowError::Status(..)
            | HereNowError::Transport(_)
            | HereNowError::InvalidChannel
            | HereNowError::Config(_) => "http_error",
            HereNowError::Malformed(_) => "malformed",
            HereNowError::Inconsistent { .. } => "inconsistent",
            HereNowError::Busy => "busy",
        }
    }

    /// Whether the same read may succeed soon, so the channel is retried after [`backoff`]:
    /// timeouts, 5xx, 408, 429, broken connections, malformed bodies (often a proxy's error
    /// page) and inconsistent pages (members moving during the read). Not retriable: 403 and
    /// other 4xx (they need an operator), `Busy` (the running read gives the answer), and bad
    /// input or settings.
    pub fn retriable(&self) -> bool {
        match self {
            HereNowError::Timeout
            | HereNowError::Server(_)
            | HereNowError::Malformed(_)
            | HereNowError::Inconsistent { .. }
            | HereNowError::Transport(_) => true,
            HereNowError::Status(status, _) => matches!(status, 408 | 429),
            HereNowError::Forbidden(_)
            | HereNowError::Busy
            | HereNowError::InvalidChannel
            | HereNowError::Config(_) => false,
        }
    }
}

/// The shortest backoff, after the first failure.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest backoff, however many failures.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// How long a channel waits before its next read after `failures` consecutive failures:
/// exponential with full jitter, `BACKOFF_MIN + jitter × (ceiling − BACKOFF_MIN)` where the ceiling is
/// 1 s after one failure, doubling with each further one up to [`BACKOFF_MAX`] (5 min). Zero
/// for no failure. `jitter` is a uniform random number in 0..=1, passed in so tests are
/// deterministic; values outside are clamped (NaN counts as 1, the longest wait).
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    // 2^9 s already passes the cap, so the shift never overflows.
    let doublings = (failures - 1).min(16);
    let ceiling = BACKOFF_MIN.saturating_mul(1 << doublings).min(BACKOFF_MAX);
    let jitter = if jitter.is_nan() {
        1.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    BACKOFF_MIN + (ceiling - BACKOFF_MIN).mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<HereNowError> {
        vec![
            HereNowError::Timeout,
            HereNowError::Forbidden("Forbidden".into()),
            HereNowError::Server(503),
            HereNowError::Status(400, "Invalid".into()),
            HereNowError::Malformed("x".into()),
            HereNowError::Inconsistent {
                occupancy: 3,
                listed: 2,
            },
            HereNowError::Busy,
            HereNowError::Transport("refused".into()),
            HereNowError::InvalidChannel,
            HereNowError::Config("origin".into()),
        ]
    }

    #[test]
    fn every_error_has_a_label_from_the_fixed_set() {
        let labels: Vec<&str> = all().iter().map(HereNowError::result_label).collect();
        assert_eq!(labels[..7], HereNowError::LABELS);
        // No usable answer, an impossible request, refused settings: all `http_error`.
        assert_eq!(labels[7..], ["http_error"; 3]);
    }

    #[test]
    fn retriable_only_when_a_retry_may_help() {
        let retriable: Vec<HereNowError> = all().into_iter().filter(|e| e.retriable()).collect();
        let want = [
            HereNowError::Timeout,
            HereNowError::Server(503),
            HereNowError::Malformed("x".into()),
            HereNowError::Inconsistent {
                occupancy: 3,
                listed: 2,
            },
            HereNowError::Transport("refused".into()),
        ];
        assert_eq!(retriable, want);
        assert!(HereNowError::Status(429, String::new()).retriable());
        assert!(HereNowError::Status(408, String::new()).retriable());
        assert!(!HereNowError::Status(404, String::new()).retriable());
    }

    #[test]
    fn backoff_doubles_from_one_second_and_is_capped_at_five_minutes() {
        let longest: Vec<u64> = (1..=11).map(|n| backoff(n, 1.0).as_secs()).collect();
        assert_eq!(longest, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(u32::MAX, 1.0), BACKOFF_MAX);
        assert_eq!(backoff(0, 1.0), Duration::ZERO);
    }

    #[test]
    fn backoff_jitter_spans_from_the_minimum_to_the_ceiling() {
        assert_eq!(backoff(5, 0.0), BACKOFF_MIN);
        assert_eq!(backoff(5, 0.5), Duration::from_millis(8_500));
        assert_eq!(backoff(u32::MAX, 0.0), BACKOFF_MIN);
        assert_eq!(backoff(u32::MAX, 0.5), Duration::from_millis(150_500));
        // Out-of-range jitter is clamped; NaN waits longest.
        assert_eq!(backoff(3, -1.0), BACKOFF_MIN);
        assert_eq!(backoff(3, 7.0), Duration::from_secs(4));
        assert_eq!(backoff(3, f64::NAN), Duration::from_secs(4));
    }

    #[test]
    fn backoff_never_shrinks_as_failures_grow() {
        for jitter in [0.0, 0.25, 0.9, 1.0] {
            let mut previous = Duration::ZERO;
            for failures in 0..40 {
                let next = backoff(failures, jitter);
                assert!(next >= previous, "{failures} failures, jitter {jitter}");
                assert!(next <= BACKOFF_MAX);
                previous = next;
            }
        }
    }
}
