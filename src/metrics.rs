//! The Prometheus handles (docs/metrics.md), registered into a registry the caller owns (no
//! globals). Every label value comes from a fixed set and every series of those sets is created
//! at start-up, so `rate()` works before the first event. Handles are resolved once here; the
//! hot path only touches atomics.

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::normalize::{Action, Format};

/// The git revision this binary was built from (`build.rs`: `git rev-parse --short HEAD`, or
/// `HOOKBUS_REVISION` at build time), "unknown" when neither was there.
pub const REVISION: &str = env!("HOOKBUS_REVISION");

/// Every status code the ingress answers with, and 499: the client left before the answer.
pub const HTTP_CODES: [u16; 13] = [
    200, 400, 401, 403, 404, 405, 408, 413, 414, 431, 499, 500, 503,
];
/// `hookbus_auth_failures_total{reason}`.
pub const AUTH_FAILURES: [&str; 3] = ["missing_token", "wrong_token", "forbidden_sub_key"];
/// `hookbus_connections_closed_total{listener}` × `{reason}`.
pub const LISTENERS: [&str; 2] = ["webhook", "admin"];
pub const CLOSE_REASONS: [&str; 4] = ["header_timeout", "body_timeout", "idle_timeout", "evicted"];
/// `hookbus_publisher_errors_total{kind}`: a spool read that failed, a panic in the sink.
pub const PUBLISHER_ERROR_KINDS: [&str; 2] = ["spool_read", "panic"];
/// `hookbus_publish_errors_total{kind}`.
pub const PUBLISH_ERROR_KINDS: [&str; 5] = [
    "timeout",
    "retriable",
    "permanent",
    "too_large",
    "duplicate_ack",
];
/// `hookbus_dead_letters_total{reason}`.
pub const DEAD_LETTER_REASONS: [&str; 6] = [
    "invalid_payload",
    "invalid_item",
    "unroutable",
    "too_large",
    "publish_failed",
    "dropped",
];

/// Buckets from 100 µs to 10 s: sub-millisecond acks and multi-second publishes both resolve.
const LATENCY_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];
/// Event lag spans clock skew and outages: 10 ms to 1 h.
pub(crate) const LAG_BUCKETS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Typed handles, shared: a clone is one reference count (the request and publisher paths
/// clone it per message).
#[derive(Clone)]
pub struct Metrics(Arc<Handles>);

impl std::ops::Deref for Metrics {
    type Target = Handles;

    fn deref(&self) -> &Handles {
        &self.0
    }
}

pub struct Handles {
    http_requests: IntCounterVec,
    ack_duration: Histogram,
    /// `hookbus_ack_slo_duration_seconds`: 200 and 503 answers only (see [`Handles::answered`]).
    ack_slo_duration: Histogram,
    pub event_lag: Histogram,
    pub spool_pending_events: IntGauge,
    pub spool_bytes: IntGauge,
    pub oldest_unpublished_age: prometheus::Gauge,
    pub acks_before_durable: IntCounter,
    pub replay_unverified: IntCounter,
    /// `hookbus_dead_letters_spilled_total`: dead letters kept in `spool.dir/dead-letters/`
    /// because the window's broker budget (`routing.dead_letter_budget_bytes`) was spent.
    pub dead_letters_spilled: IntCounter,
    pub config_warnings: IntCounter,
    pub queue_events: IntGauge,
    pub publisher_restarts: IntCounter,
    pub spool_unpublished_bytes: IntGauge,
    pub spool_retained_bytes: IntGauge,
    pub spool_capacity_bytes: IntGauge,
    pub dedup_entries: IntGauge,
    pub ready: IntGauge,
    pub dedup_window: prometheus::Gauge,
    /// `hookbus_recovery_progress`: 0..1 while the spool is read back at start, then 1.
    pub recovery_progress: prometheus::Gauge,
    pub spool_corrupt_records: IntCounter,
    publisher_errors_by: Vec<IntCounter>,
    overflow_by: Vec<IntCounter>,
    auth_failures_by: Vec<IntCounter>,
    /// `hookbus_dedup_store_up`, `hookbus_dedup_store_errors_total`, with `dedup.shared` only.
    dedup_store: Option<(IntGauge, IntCounter)>,
    /// `[listener * CLOSE_REASONS.len() + reason]`.
    closed_by: Vec<IntCounter>,
    /// Per-code counters resolved once, indexed like [`HTTP_CODES`].
    http_by_code: Vec<IntCounter>,
    /// The hot-path series, resolved once: `[format * 7 + action]`, `[action]`, `[kind]`…
    /// (enum discriminants follow `Format::ALL` / `Action::ALL` order).
    received_by: Vec<IntCounter>,
    duplicates_by: Vec<IntCounter>,
    published_by: Vec<IntCounter>,
    publish_seconds: Histogram,
    errors_by: Vec<IntCounter>,
    dead_letters_by: Vec<IntCounter>,
    broker_duplicate: IntCounter,
    sink_up_gauge: IntGauge,
}

impl Metrics {
    /// Registers every metric into `registry` and creates every series of the fixed label sets.
    /// The `sink` label takes one value: the configured `sink` (so `hookbus_sink_up` never
    /// reports a sink that is not in use as down).
    ///
    /// # Errors
    /// Only if a name is registered twice in `registry` (a programming error at start-up).
    pub fn new(registry: &Registry, version: &str, sink: &str) -> prometheus::Result<Metrics> {
        Metrics::with_store(registry, version, sink, false)
    }

    /// [`Metrics::new`], plus the shared dedup store's series when `dedup_store` (they exist
    /// only when `dedup.shared` is set, so its alerts stay silent otherwise).
    ///
    /// # Errors
    /// As [`Metrics::new`].
    #[allow(
        clippy::too_many_lines,
        reason = "a table: one registration per series, each with its name, help and labels"
    )]
    pub fn with_store(
        registry: &Registry,
        version: &str,
        sink: &str,
        dedup_store: bool,
    ) -> prometheus::Result<Metrics> {
        let r = Registrar(registry);
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, …
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        r.gauge_vec(
            "hookbus_build_info",
            "Always 1; the version and revision (git, or unknown) labels name the build.",
            &["version", "revision"],
        )?
        .with_label_values(&[version, REVISION])
        .set(1);
        let http_requests = r.counter_vec(
            "hookbus_http_requests_total",
            "Webhook responses by status code.",
            &["code"],
        )?;
        let received = r.counter_vec(
            "hookbus_events_received_total",
            "Valid events received, duplicates included.",
            &["format", "action"],
        )?;
        let published = r.counter_vec(
            "hookbus_events_published_total",
            "Events confirmed by the broker.",
            &["sink", "action"],
        )?;
        let duplicates = r.counter_vec(
            "hookbus_duplicates_total",
            "Events recognized as retries and not published again.",
            &["action"],
        )?;
        let publish_errors = r.counter_vec(
            "hookbus_publish_errors_total",
            "Failed publish attempts by error class.",
            &["sink", "kind"],
        )?;
        let dead_letters = r.counter_vec(
            "hookbus_dead_letters_total",
            "Rejected bodies kept as dead letters.",
            &["reason"],
        )?;
        let publisher_errors = r.counter_vec("hookbus_publisher_errors_total", "Errors inside the publisher: spool reads that failed (retried), sink panics (the message is retried).", &["kind"])?;
        let overflow = r.counter_vec(
            "hookbus_overflow_events_total",
            "Events sent to routing.overflow because their topic would exceed kafka.max_topics.",
            &["action"],
        )?;
        let auth_failures = r.counter_vec(
            "hookbus_auth_failures_total",
            "Webhooks refused 401 (missing or wrong token) or 403 (sub_key not allowed).",
            &["reason"],
        )?;
        let closed = r.counter_vec("hookbus_connections_closed_total", "Connections hookbus closed: headers or body too slow, idle too long, or the longest-idle one closed to admit a new connection at the cap.", &["listener", "reason"])?;
        let publish_duration = r.histogram_vec(
            "hookbus_publish_duration_seconds",
            "Webhook request received to broker confirmed, per event.",
            &LATENCY_BUCKETS,
            &["sink"],
        )?;
        let broker_duplicates = r.counter_vec("hookbus_broker_duplicates_total", "Messages the broker already held: JetStream recognized the Nats-Msg-Id, or (Kafka) the check before a replay found the event id on the broker and the record was not sent again.", &["sink"])?;
        let sink_up = r.gauge_vec(
            "hookbus_sink_up",
            "1 when the sink is connected to its broker.",
            &["sink"],
        )?;
        let dedup_store = if dedup_store {
            Some((
                r.gauge("hookbus_dedup_store_up", "1 while the shared dedup store (dedup.shared) answers; 0 while retries that land on another replica are decided locally.")?,
                r.counter("hookbus_dedup_store_errors_total", "Shared dedup store operations that failed or timed out (decided locally).")?,
            ))
        } else {
            None
        };
        Ok(Metrics(Arc::new(Handles {
            ack_duration: r.histogram("hookbus_ack_duration_seconds", "Webhook request received to response written, every response.", &LATENCY_BUCKETS)?,
            ack_slo_duration: r.histogram("hookbus_ack_slo_duration_seconds", "Webhook request received to response written, 200 and 503 answers only: the ack latency SLO (4xx are the sender's, 408 and 499 last as long as the client takes).", &LATENCY_BUCKETS)?,
            event_lag: r.histogram("hookbus_event_lag_seconds", "Event timestamp (PubNub) to broker confirmed.", &LAG_BUCKETS)?,
            spool_pending_events: r.gauge("hookbus_spool_pending_events", "Events accepted and not yet confirmed by the broker.")?,
            spool_bytes: r.gauge("hookbus_spool_bytes", "Bytes the spool uses on disk.")?,
            oldest_unpublished_age: r.float_gauge("hookbus_oldest_unpublished_age_seconds", "Age of the oldest accepted event not yet confirmed by the broker.")?,
            acks_before_durable: r.counter("hookbus_acks_before_durable_total", "Events answered 200 before they were durable (ack.mode = memory).")?,
            replay_unverified: r.counter("hookbus_replay_unverified_total", "Spool records replayed after a crash or restart (Kafka) that the broker check could not look up in time: sent again, so possibly stored twice.")?,
            dead_letters_spilled: r.counter("hookbus_dead_letters_spilled_total", "Dead letters written to spool.dir/dead-letters/ because the window's broker budget (routing.dead_letter_budget_bytes) was spent.")?,
            config_warnings: r.counter("hookbus_config_warnings_total", "Configuration problems found at start that did not stop it (see the log).")?,
            queue_events: r.gauge("hookbus_queue_events", "Events in the in-memory publish queue (memory and publish ack modes).")?,
            publisher_restarts: r.counter("hookbus_publisher_restarts_total", "Times the publisher loop panicked and was restarted from the last confirmed position.")?,
            spool_unpublished_bytes: r.gauge("hookbus_spool_unpublished_bytes", "Spool bytes from the first unpublished record on: what a broker outage piled up. Appends get 503 when this reaches hookbus_spool_capacity_bytes.")?,
            spool_retained_bytes: r.gauge("hookbus_spool_retained_bytes", "Spool bytes already published, kept to rebuild the dedup set after a restart and deleted whenever the space is needed.")?,
            spool_capacity_bytes: r.gauge("hookbus_spool_capacity_bytes", "spool.max_bytes: the disk the spool may use.")?,
            dedup_entries: r.gauge("hookbus_dedup_entries", "Event ids remembered for duplicate detection (at most dedup.max_entries).")?,
            ready: r.gauge("hookbus_ready", "1 while /readyz answers 200 (the pod takes webhooks), 0 while not ready or draining.")?,
            dedup_window: r.float_gauge("hookbus_dedup_window_seconds", "How far back retries are recognized now: dedup.window, or less once dedup.max_entries is reached (the oldest ids are forgotten first).")?,
            recovery_progress: r.float_gauge("hookbus_recovery_progress", "Share of the start-up recovery done (reading the spool back, then rebuilding the dedup set from it): 0 to 1 while /readyz answers recovering, 1 after.")?,
            spool_corrupt_records: r.counter("hookbus_spool_corrupt_records_total", "Spool records found damaged (checksum) with valid records after them; their bytes are kept in spool.dir/corrupt/.")?,
            publisher_errors_by: series(&publisher_errors, PUBLISHER_ERROR_KINDS.iter().map(|k| vec![*k])),
            overflow_by: series(&overflow, Action::ALL.iter().map(|a| vec![a.as_str()])),
            auth_failures_by: series(&auth_failures, AUTH_FAILURES.iter().map(|r| vec![*r])),
            dedup_store,
            closed_by: series(&closed, LISTENERS.iter().flat_map(|l| CLOSE_REASONS.iter().map(move |r| vec![*l, *r]))),
            http_by_code: HTTP_CODES.iter().map(|c| http_requests.with_label_values(&[&c.to_string()])).collect(),
            received_by: series(&received, Format::ALL.iter().flat_map(|f| Action::ALL.iter().map(move |a| vec![f.as_str(), a.as_str()]))),
            duplicates_by: series(&duplicates, Action::ALL.iter().map(|a| vec![a.as_str()])),
            published_by: series(&published, Action::ALL.iter().map(|a| vec![sink, a.as_str()])),
            publish_seconds: publish_duration.with_label_values(&[sink]),
            errors_by: series(&publish_errors, PUBLISH_ERROR_KINDS.iter().map(|k| vec![sink, *k])),
            dead_letters_by: series(&dead_letters, DEAD_LETTER_REASONS.iter().map(|r| vec![*r])),
            broker_duplicate: broker_duplicates.with_label_values(&[sink]),
            sink_up_gauge: sink_up.with_label_values(&[sink]),
            http_requests,
        })))
    }
}

/// The series of `vec` for every label tuple of a fixed set, resolved once.
fn series<'a>(vec: &IntCounterVec, labels: impl Iterator<Item = Vec<&'a str>>) -> Vec<IntCounter> {
    labels.map(|l| vec.with_label_values(&l)).collect()
}

/// Creates each metric and registers it in one step: the metric table above reads one line a
/// metric.
pub(crate) struct Registrar<'a>(pub(crate) &'a Registry);

impl Registrar<'_> {
    pub(crate) fn register<M: prometheus::core::Collector + Clone + 'static>(
        &self,
        metric: M,
    ) -> prometheus::Result<M> {
        self.0.register(Box::new(metric.clone()))?;
        Ok(metric)
    }

    pub(crate) fn counter(&self, name: &str, help: &str) -> prometheus::Result<IntCounter> {
        self.register(IntCounter::new(name, help)?)
    }

    pub(crate) fn gauge(&self, name: &str, help: &str) -> prometheus::Result<IntGauge> {
        self.register(IntGauge::new(name, help)?)
    }

    pub(crate) fn float_gauge(
        &self,
        name: &str,
        help: &str,
    ) -> prometheus::Result<prometheus::Gauge> {
        self.register(prometheus::Gauge::new(name, help)?)
    }

    pub(crate) fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        self.register(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    pub(crate) fn gauge_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntGaugeVec> {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels)?)
    }

    pub(crate) fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> prometheus::Result<Histogram> {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.register(Histogram::with_opts(opts)?)
    }

    pub(crate) fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
        labels: &[&str],
    ) -> prometheus::Result<HistogramVec> {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.register(HistogramVec::new(opts, labels)?)
    }
}

impl Handles {
    /// A webhook answered with `code`, `seconds` after its request arrived: counted by code,
    /// in `hookbus_ack_duration_seconds`, and for 200 and 503 in the SLO histogram.
    pub fn answered(&self, code: u16, seconds: f64) {
        self.http_response(code);
        self.ack_duration.observe(seconds);
        if code == 200 || code == 503 {
            self.ack_slo_duration.observe(seconds);
        }
    }

    fn http_response(&self, code: u16) {
        match HTTP_CODES.iter().position(|&c| c == code) {
            Some(i) => self.http_by_code[i].inc(),
            None => self
                .http_requests
                .with_label_values(&[&code.to_string()])
                .inc(),
        }
    }

    pub fn event_received(&self, format: Format, action: Action) {
        self.received_by[format as usize * Action::ALL.len() + action as usize].inc();
    }

    pub fn duplicate(&self, action: Action) {
        self.duplicates_by[action as usize].inc();
    }

    /// An event confirmed by the broker, `publish_seconds` after its request arrived.
    pub fn published(&self, action: Action, publish_seconds: f64) {
        self.published_by[action as usize].inc();
        self.publish_seconds.observe(publish_seconds);
    }

    pub fn broker_duplicate(&self) {
        self.broker_duplicate.inc();
    }

    /// `kind` is one of [`PUBLISH_ERROR_KINDS`].
    pub fn publish_error(&self, kind: &str) {
        if let Some(i) = PUBLISH_ERROR_KINDS.iter().position(|k| *k == kind) {
            self.errors_by[i].inc();
        }
    }

    /// `reason` is one of [`DEAD_LETTER_REASONS`].
    pub fn dead_letter(&self, reason: &str) {
        if let Some(i) = DEAD_LETTER_REASONS.iter().position(|r| *r == reason) {
            self.dead_letters_by[i].inc();
        }
    }

    pub fn dedup_store_error(&self) {
        if let Some((_, errors)) = &self.dedup_store {
            errors.inc();
        }
    }

    pub fn set_dedup_store_up(&self, up: bool) {
        if let Some((gauge, _)) = &self.dedup_store {
            gauge.set(i64::from(up));
        }
    }

    /// `reason` is one of [`AUTH_FAILURES`].
    pub fn auth_failure(&self, reason: &str) {
        if let Some(i) = AUTH_FAILURES.iter().position(|r| *r == reason) {
            self.auth_failures_by[i].inc();
        }
    }

    /// `listener` and `reason` are from [`LISTENERS`] and [`CLOSE_REASONS`].
    pub fn connection_closed(&self, listener: &str, reason: &str) {
        let l = LISTENERS.iter().position(|x| *x == listener);
        let r = CLOSE_REASONS.iter().position(|x| *x == reason);
        if let (Some(l), Some(r)) = (l, r) {
            self.closed_by[l * CLOSE_REASONS.len() + r].inc();
        }
    }

    pub fn overflow(&self, action: Action) {
        self.overflow_by[action as usize].inc();
    }

    /// `kind` is one of [`PUBLISHER_ERROR_KINDS`].
    pub fn publisher_error(&self, kind: &str) {
        if let Some(i) = PUBLISHER_ERROR_KINDS.iter().position(|k| *k == kind) {
            self.publisher_errors_by[i].inc();
        }
    }

    pub fn set_sink_up(&self, up: bool) {
        self.sink_up_gauge.set(i64::from(up));
    }
}

/// Renders `registry` in the Prometheus text exposition format.
pub fn render(registry: &Registry) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * 1024);
    // Encoding into a Vec cannot fail on I/O; a metric family error would be a bug at start-up.
    if let Err(error) = TextEncoder::new().encode(&registry.gather(), &mut out) {
        tracing::warn!(%error, "metrics encoding failed");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_series_exists_at_zero() {
        let registry = Registry::new();
        let m = Metrics::new(&registry, "1.2.3", "nats").unwrap();
        let text = String::from_utf8(render(&registry)).unwrap();
        for needle in [
            "hookbus_http_requests_total{code=\"200\"} 0",
            "hookbus_http_requests_total{code=\"503\"} 0",
            "hookbus_ack_duration_seconds_bucket{le=\"0.0001\"} 0",
            "hookbus_publish_duration_seconds_count{sink=\"nats\"} 0",
            "hookbus_event_lag_seconds_count 0",
            "hookbus_events_received_total{action=\"join\",format=\"g1\"} 0",
            "hookbus_events_received_total{action=\"interval\",format=\"events-and-actions\"} 0",
            "hookbus_events_published_total{action=\"state-change\",sink=\"nats\"} 0",
            "hookbus_duplicates_total{action=\"timeout\"} 0",
            "hookbus_publish_errors_total{kind=\"timeout\",sink=\"nats\"} 0",
            "hookbus_dead_letters_total{reason=\"too_large\"} 0",
            "hookbus_spool_pending_events 0",
            "hookbus_spool_bytes 0",
            "hookbus_oldest_unpublished_age_seconds 0",
            "hookbus_acks_before_durable_total 0",
            "hookbus_sink_up{sink=\"nats\"} 0",
            "hookbus_ack_slo_duration_seconds_count 0",
        ] {
            assert!(text.contains(needle), "missing {needle}");
        }
        assert!(text.contains(&format!(
            "hookbus_build_info{{revision=\"{REVISION}\",version=\"1.2.3\"}} 1"
        )));
        m.answered(400, 0.5);
        m.answered(200, 0.001);
        m.answered(499, 3.0);
        m.answered(503, 0.3);
        m.duplicate(Action::Join);
        let text = String::from_utf8(render(&registry)).unwrap();
        assert!(text.contains("hookbus_http_requests_total{code=\"400\"} 1"));
        assert!(text.contains("hookbus_ack_duration_seconds_count 4"));
        // The SLO histogram: the 200 and the 503 only, one of them within 250 ms.
        assert!(text.contains("hookbus_ack_slo_duration_seconds_count 2"));
        assert!(text.contains("hookbus_ack_slo_duration_seconds_bucket{le=\"0.25\"} 1"));
        assert!(text.contains("hookbus_duplicates_total{action=\"join\"} 1"));
        assert!(
            !text.contains("sink=\"kafka\""),
            "only the configured sink is labelled"
        );
    }
}
