//! The roster process's metrics (`hookbus_roster_*`), registered into a passed-in registry.

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, Registry};

use crate::metrics::{LAG_BUCKETS, Registrar};
use crate::normalize::Action;

/// Reconciliation results (the `result` label).
pub const RESULTS: [&str; 11] = [
    "replaced",
    "unchanged",
    "inconsistent",
    "untracked",
    "timeout",
    "forbidden",
    "server_error",
    "http_error",
    "malformed",
    "busy",
    "store_error",
];

/// Why an input message was skipped (the `reason` label).
pub const SKIPPED: [&str; 3] = ["sub_key", "malformed", "no_channel"];

#[derive(Clone)]
pub struct RosterMetrics {
    pub applied: IntCounterVec,
    pub stale: IntCounter,
    pub skipped: IntCounterVec,
    pub conflicts: IntCounter,
    pub store_errors: IntCounter,
    pub channels: IntGauge,
    pub members: IntGauge,
    pub pending: IntGauge,
    pub lag: Histogram,
    pub reconciliations: IntCounterVec,
    pub drift: Histogram,
    pub rebuilds: IntCounterVec,
    pub outputs: IntCounterVec,
}

impl RosterMetrics {
    /// Registers every series (label values pre-created, so dashboards see zeros).
    ///
    /// # Errors
    /// Only if a name is registered twice in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<RosterMetrics> {
        let r = Registrar(registry);
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let m = RosterMetrics {
            applied: r.counter_vec("hookbus_roster_events_applied_total", "Events that changed the roster (or confirmed it), by action.", &["action"])?,
            stale: r.counter("hookbus_roster_events_stale_total", "Events (or interval delta entries) older than a member's tombstone or the channel's horizon: no effect.")?,
            skipped: r.counter_vec("hookbus_roster_events_skipped_total", "Input messages not applied: another sub_key, not a presence event, no channel.", &["reason"])?,
            conflicts: r.counter("hookbus_roster_store_conflicts_total", "Compare-and-set writes that found the channel changed by another writer (retried).")?,
            store_errors: r.counter("hookbus_roster_store_errors_total", "Store requests that failed (retried with backoff).")?,
            channels: r.gauge("hookbus_roster_channels", "Channels with roster state (counted by the periodic sweep).")?,
            members: r.gauge("hookbus_roster_members", "Present members over all channels (counted by the periodic sweep).")?,
            pending: r.gauge("hookbus_roster_pending_events", "Input messages not yet delivered to the roster (consumer backlog).")?,
            lag: r.histogram("hookbus_roster_lag_seconds", "Event published by the bridge to applied to the roster store.", &LAG_BUCKETS)?,
            reconciliations: r.counter_vec("hookbus_roster_reconciliations_total", "Here Now reads, by result.", &["result"])?,
            drift: r.histogram("hookbus_roster_drift_members", "|members from events − Here Now| at each read.", &[0.0, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 1000.0, 10000.0])?,
            rebuilds: r.counter_vec("hookbus_roster_rebuilds_total", "Rebuilds from the input's beginning: the store lost its data (new epoch) or the input skipped events (gap).", &["reason"])?,
            outputs: r.counter_vec("hookbus_roster_outputs_total", "Change and session events published.", &["kind"])?,
        };
        for action in Action::ALL {
            m.applied.with_label_values(&[action.as_str()]);
        }
        for reason in SKIPPED {
            m.skipped.with_label_values(&[reason]);
        }
        for result in RESULTS {
            m.reconciliations.with_label_values(&[result]);
        }
        for reason in ["store_lost", "input_gap"] {
            m.rebuilds.with_label_values(&[reason]);
        }
        for kind in ["change", "session"] {
            m.outputs.with_label_values(&[kind]);
        }
        Ok(m)
    }
}
