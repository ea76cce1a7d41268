//! Reconciliation with PubNub Here Now (`[roster.here_now]`): a channel is read when an
//! interval asks (`here_now_refresh`), when its occupancy drifts from its member count, after
//! an input gap, and on a jittered interval; one read at a time per channel, failures backed
//! off per channel. A read replaces the member set as of its first page's time − 3 s (Here Now
//! is cached ~3 s); it replaces nothing when it is inconsistent or the channel is untracked.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::here_now::{HereNowClient, HereNowError, HereNowRead, HereNowSettings, backoff};
use super::state::{self, Snapshot, Summary};
use super::writer::{Writer, now_i64};
use crate::config::RosterConfig;
use crate::normalize::State;
use crate::shutdown::Shutdown;

/// Here Now's cache: a read shows the channel as of about this long before it was asked.
pub const HERE_NOW_CACHE_MS: i64 = 3_000;

/// Starts the reconciler when `[roster.here_now]` has an origin. Channel names arrive on
/// `requests` (`""`: every channel).
///
/// # Errors
/// The client cannot be built from the settings.
/// `incomplete`: set while an input gap is not yet reconciled; cleared once every channel the
/// store listed when the gap was found has been read successfully (failed reads are retried
/// after their backoff).
pub fn start(
    roster: &RosterConfig,
    writer: Arc<Writer>,
    requests: mpsc::Receiver<String>,
    incomplete: Arc<AtomicBool>,
    stop: Shutdown,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    let here_now = &roster.here_now;
    if !here_now.enabled() {
        return Ok(None);
    }
    let client = HereNowClient::new(HereNowSettings {
        origin: here_now.origin.clone(),
        subscribe_key: here_now.subscribe_key.clone(),
        publish_key: here_now.publish_key.clone(),
        secret_key: here_now.secret_key.clone(),
        timeout: here_now.timeout,
        max_requests_per_second: here_now.max_requests_per_second,
    })
    .map_err(|e| anyhow::anyhow!("roster.here_now: {e}"))?;
    let reconciler = Reconciler {
        client,
        writer,
        interval: here_now.interval,
        ttl_ms: i64::try_from(roster.tombstone_ttl.as_millis()).unwrap_or(i64::MAX),
        queue: VecDeque::new(),
        queued: HashSet::new(),
        failures: HashMap::new(),
        incomplete,
        gap: Gap::None,
    };
    Ok(Some(tokio::spawn(reconciler.run(requests, stop))))
}

struct Reconciler {
    client: HereNowClient,
    writer: Arc<Writer>,
    interval: Duration,
    ttl_ms: i64,
    queue: VecDeque<String>,
    queued: HashSet<String>,
    /// Per channel: consecutive failures and when it may be read again.
    failures: HashMap<String, (u32, Instant)>,
    /// The roster's "incomplete after an input gap" flag (readiness).
    incomplete: Arc<AtomicBool>,
    /// The reconciliation an input gap asked for: the flag clears when it is done.
    gap: Gap,
}

/// Where the reconciliation after an input gap stands.
enum Gap {
    /// None asked for (or done).
    None,
    /// The store's channel list could not be read yet: tried again at this instant (kept
    /// here, so refresh requests arriving more often than that do not postpone it).
    Listing(Instant),
    /// The channels not read successfully since the gap; a failed read is retried after its
    /// backoff, for as long as it fails (a 403 needs an operator: the roster says incomplete
    /// until then).
    Owed(HashSet<String>),
}

/// How often the channel list is tried again after a gap while the store cannot list it.
const LISTING_RETRY: Duration = Duration::from_secs(1);

impl Reconciler {
    async fn run(mut self, mut requests: mpsc::Receiver<String>, stop: Shutdown) {
        let mut next_round = Instant::now() + jittered(self.interval);
        loop {
            let idle = self.queue.is_empty();
            let gap_wake = if idle { self.gap_wake() } else { None };
            tokio::select! {
                request = requests.recv() => match request {
                    Some(channel) if channel.is_empty() => self.start_gap().await,
                    Some(channel) => self.enqueue(channel),
                    None => return,
                },
                () = tokio::time::sleep_until(next_round) => {
                    next_round = Instant::now() + jittered(self.interval);
                    self.enqueue_all().await;
                }
                () = stop.wait() => return,
                () = std::future::ready(()), if !idle => {
                    if let Some(channel) = self.queue.pop_front() {
                        self.queued.remove(&channel);
                        if self.reconcile(&channel).await
                            && let Gap::Owed(owed) = &mut self.gap
                        {
                            owed.remove(&channel);
                        }
                    }
                }
                () = tokio::time::sleep_until(gap_wake.unwrap_or_else(Instant::now)), if gap_wake.is_some() => {
                    self.advance_gap().await;
                }
            }
        }
    }

    /// An input gap: every channel the store knows is owed a successful read.
    async fn start_gap(&mut self) {
        self.gap = match self.list_channels().await {
            Some(channels) => {
                for channel in &channels {
                    self.enqueue(channel.clone());
                }
                Gap::Owed(channels.into_iter().collect())
            }
            None => Gap::Listing(Instant::now() + LISTING_RETRY),
        };
    }

    /// When the gap's reconciliation needs a step while the queue is empty: list again, clear
    /// the flag, or read an owed channel once its backoff has passed.
    fn gap_wake(&self) -> Option<Instant> {
        match &self.gap {
            Gap::None => None,
            Gap::Listing(at) => Some(*at),
            Gap::Owed(owed) => Some(
                owed.iter()
                    .map(|c| self.failures.get(c).map_or_else(Instant::now, |f| f.1))
                    .min()
                    .unwrap_or_else(Instant::now),
            ),
        }
    }

    async fn advance_gap(&mut self) {
        match &self.gap {
            Gap::None => {}
            Gap::Listing(_) => self.start_gap().await,
            Gap::Owed(owed) if owed.is_empty() => {
                self.gap = Gap::None;
                self.incomplete.store(false, Ordering::Relaxed);
                tracing::info!("every channel read from Here Now after the input gap");
            }
            Gap::Owed(owed) => {
                // `enqueue` leaves out those whose backoff has not passed.
                let owed: Vec<String> = owed.iter().cloned().collect();
                for channel in owed {
                    self.enqueue(channel);
                }
            }
        }
    }

    fn enqueue(&mut self, channel: String) {
        if let Some((_, not_before)) = self.failures.get(&channel)
            && *not_before > Instant::now()
        {
            return;
        }
        if self.queued.insert(channel.clone()) {
            self.queue.push_back(channel);
        }
    }

    async fn enqueue_all(&mut self) {
        for channel in self.list_channels().await.unwrap_or_default() {
            self.enqueue(channel);
        }
    }

    /// Every channel the store has a summary of; `None` when the store could not list them.
    async fn list_channels(&self) -> Option<Vec<String>> {
        let mut channels = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (page, next) = self
                .writer
                .store
                .channels("", after.as_deref(), 1_000)
                .await
                .ok()?;
            for value in &page {
                if let Ok(summary) = serde_json::from_slice::<Summary>(value) {
                    channels.push(summary.channel);
                }
            }
            match next {
                Some(next) => after = Some(next),
                None => return Some(channels),
            }
        }
    }

    /// Reads `channel` from Here Now and applies it; whether it was read and stored (the
    /// store now holds Here Now's answer, or the read changed nothing, or the channel is
    /// untracked).
    async fn reconcile(&mut self, channel: &str) -> bool {
        let result = match self.client.read(channel).await {
            Ok(read) => {
                self.failures.remove(channel);
                self.apply(channel, &read).await
            }
            Err(error) => {
                self.failed(channel);
                if !matches!(error, HereNowError::Busy) {
                    tracing::warn!(%error, channel, "Here Now read failed");
                }
                error.result_label()
            }
        };
        if result == "store_error" {
            self.failed(channel);
        }
        self.writer
            .metrics
            .reconciliations
            .with_label_values(&[result])
            .inc();
        matches!(result, "replaced" | "unchanged" | "untracked")
    }

    /// One more failure of `channel`: it is not read again before its backoff has passed.
    fn failed(&mut self, channel: &str) {
        let entry = self
            .failures
            .entry(channel.to_owned())
            .or_insert((0, Instant::now()));
        entry.0 += 1;
        entry.1 = Instant::now() + backoff(entry.0, jitter());
    }

    /// Applies a read; returns the `result` label.
    async fn apply(&self, channel: &str, read: &HereNowRead) -> &'static str {
        let writer = &self.writer;
        let current = writer
            .store
            .read(channel, &[])
            .await
            .ok()
            .and_then(|s| super::writer::decode(channel, &s).ok())
            .and_then(|(c, _)| c.summary);
        let members = current.as_ref().map_or(0, |s| s.members);
        writer
            .metrics
            .drift
            .observe(members.abs_diff(read.members.len() as u64) as f64);
        let recent = current
            .as_ref()
            .is_some_and(|s| s.updated_at_ms > now_i64() - self.ttl_ms);
        if read.occupancy == 0 && read.members.is_empty() && recent && members > 0 {
            return "untracked";
        }
        let listed: Vec<(String, Option<State>)> = read
            .members
            .iter()
            .map(|m| (m.uuid.clone(), m.state.as_ref().map(State::from_value)))
            .collect();
        let time_ms = i64::try_from(read.requested_at_ms).unwrap_or(i64::MAX) - HERE_NOW_CACHE_MS;
        let snapshot = Snapshot {
            time_ms,
            members: &listed,
        };
        let rules = writer.rules;
        let applied = writer
            .apply_all(channel, |loaded, now| {
                let outcome = state::reconcile(loaded, channel, &snapshot, rules, now);
                outcome.dirty.then_some(outcome.changed)
            })
            .await;
        match applied {
            Ok(Some(_)) => "replaced",
            Ok(None) => "unchanged",
            Err(error) => {
                tracing::warn!(%error, channel, "storing a Here Now read failed");
                "store_error"
            }
        }
    }
}

/// A uniform draw in 0..1 from the clock (jitter needs no quality).
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(nanos % 1_000_000) / 1_000_000.0
}

/// `interval` ± 20 %.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.8 + 0.4 * jitter())
}
