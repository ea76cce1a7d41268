//! The gauges of what the process holds (readiness, sink connection, spool usage, the dedup
//! set), kept current twice a second independently of the publisher.

use std::sync::Arc;
use std::time::Duration;

use super::Readiness;
use crate::dedup::Claims;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::publisher;
use crate::shutdown::Shutdown;
use crate::sink::Sink;
use crate::spool::Spool;

/// What the gauges of [`Observed::run`] look at.
pub(super) struct Observed {
    pub(super) metrics: Metrics,
    pub(super) sink: Arc<Sink>,
    pub(super) claims: Arc<Claims>,
    pub(super) spool: Option<Spool>,
    pub(super) health: Health,
    pub(super) ready: Readiness,
    pub(super) draining: Shutdown,
}

impl Observed {
    /// Keeps the gauges of what the process holds up to date, twice a second, independently
    /// of the publisher (so they tell the truth while it stalls): readiness, sink connection,
    /// spool usage, the dedup set. Marks the process unhealthy on a fatal producer error.
    pub(super) async fn run(self) {
        let metrics = &self.metrics;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let now = publisher::now_ms();
            let ready = !self.draining.is_draining() && (self.ready)().is_ok();
            metrics.ready.set(i64::from(ready));
            metrics.set_sink_up(self.sink.is_up());
            if let Some(fatal) = self.sink.fatal() {
                self.health.fail(format!(
                    "the {} producer failed for good: {fatal}",
                    self.sink.name()
                ));
            }
            metrics.dedup_entries.set(self.claims.len() as i64);
            metrics
                .dedup_window
                .set(self.claims.effective_window_ms(now) as f64 / 1000.0);
            if let Some(spool) = &self.spool {
                let stats = spool.stats();
                metrics
                    .spool_pending_events
                    .set(stats.pending_events as i64);
                metrics.spool_bytes.set(stats.bytes as i64);
                metrics
                    .spool_unpublished_bytes
                    .set(stats.unpublished_bytes as i64);
                metrics.spool_retained_bytes.set(stats.retained() as i64);
                let age = stats
                    .oldest_unconfirmed_ms
                    .map_or(0, |ms| now.saturating_sub(ms));
                metrics.oldest_unpublished_age.set(age as f64 / 1000.0);
                let counted = metrics.spool_corrupt_records.get();
                if stats.corrupt_records > counted {
                    metrics
                        .spool_corrupt_records
                        .inc_by(stats.corrupt_records - counted);
                }
            }
        }
    }
}
