//! The consume loop: take batches from the input, apply them channel by channel, and
//! acknowledge each batch once all of it is stored, in the order taken (Kafka commits an
//! offset: everything before it counts as done). Up to [`BATCHES_IN_FLIGHT`] batches are
//! applied at once, so the next batch is taken and its channels changed while the last
//! writes of the previous ones are still on their way; within this process one channel is
//! changed by one batch at a time (two would only conflict). A batch that fails is applied
//! again, alone and after a backoff, together with every batch taken after it (none of
//! which was acknowledged), until stored.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Mutex, OwnedMutexGuard, mpsc};
use tokio::task::JoinHandle;

use super::input::{Delivery, Input};
use super::run::{Readiness, pause};
use super::writer::{WriteError, Writer, backoff, now_i64};
use crate::config::RosterConfig;
use crate::normalize::Event;
use crate::shutdown::Shutdown;

/// Channels worked on at once within one batch. Each channel's change is a few sequential
/// round trips to the store, so a batch over many channels is bound by latency, not work.
const CHANNELS_IN_PARALLEL: usize = 64;
/// Batches applied at once (docs/performance.md, the roster rows).
const BATCHES_IN_FLIGHT: usize = 4;

pub(super) struct Consumer {
    pub writer: Arc<Writer>,
    pub input: Input,
    pub roster: RosterConfig,
    pub ready: Arc<Readiness>,
    pub rebuild: Arc<AtomicBool>,
    pub refresh: mpsc::Sender<String>,
}

/// What the batches' tasks share.
struct Shared {
    writer: Arc<Writer>,
    refresh: mpsc::Sender<String>,
    turns: Turns,
}

/// A batch being applied: its deliveries, acknowledged once its task stored it.
struct InFlight {
    batch: Vec<Delivery>,
    task: JoinHandle<Result<(), WriteError>>,
}

/// How long [`Consumer::land`] waits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Only for the front batch, then takes what else finished.
    Front,
    /// For every batch in flight.
    All,
    /// Not at all: takes what finished.
    Never,
}

impl Consumer {
    pub async fn run(mut self, stop: &Shutdown) {
        let shared = Arc::new(Shared {
            writer: self.writer.clone(),
            refresh: self.refresh.clone(),
            turns: Turns::default(),
        });
        let mut flight: VecDeque<InFlight> = VecDeque::new();
        let (mut failures, mut input_failures) = (0u32, 0u32);
        let mut last_check = tokio::time::Instant::now();
        while !stop.is_draining() {
            if self.rebuild.swap(false, Ordering::SeqCst) {
                // The rewind delivers everything again: what fails before it need not be held.
                let _ = self.land(&mut flight, Wait::All, &mut failures).await;
                self.rewind().await;
            }
            if last_check.elapsed() >= Duration::from_secs(1) {
                last_check = tokio::time::Instant::now();
                self.check_input().await;
            }
            // While a failed batch is retried, nothing else is taken; else at most
            // BATCHES_IN_FLIGHT at once.
            let wait = if (failures > 0 && !flight.is_empty()) || flight.len() >= BATCHES_IN_FLIGHT
            {
                Wait::Front
            } else {
                Wait::Never
            };
            if let Err(held) = self.land(&mut flight, wait, &mut failures).await {
                pause(backoff(failures), stop).await;
                flight.push_back(self.start(&shared, held));
                continue;
            }
            if wait == Wait::Front {
                continue;
            }
            let fetched = tokio::select! {
                fetched = self.input.fetch(self.roster.batch, Duration::from_secs(1)) => fetched,
                () = stop.wait() => break,
            };
            let batch = match fetched {
                Ok(batch) => {
                    input_failures = 0;
                    self.ready.input.store(true, Ordering::Relaxed);
                    if let Some(backlog) = self.input.last_backlog() {
                        let backlog = i64::try_from(backlog).unwrap_or(i64::MAX);
                        self.writer.metrics.pending.set(backlog);
                    }
                    batch
                }
                Err(error) => {
                    self.ready.input.store(false, Ordering::Relaxed);
                    input_failures += 1;
                    tracing::warn!(%error, "roster input");
                    pause(backoff(input_failures), stop).await;
                    continue;
                }
            };
            if batch.is_empty() {
                if flight.is_empty() {
                    // Caught up: a rebuild in progress is done.
                    self.ready.rebuilding.store(false, Ordering::Relaxed);
                    self.writer.metrics.pending.set(0);
                }
                continue;
            }
            flight.push_back(self.start(&shared, batch));
        }
        // Stopping: what is stored is acknowledged; the rest comes again to the next roster.
        let _ = self.land(&mut flight, Wait::All, &mut failures).await;
    }

    /// Starts applying `batch` (events of another sub_key and malformed ones are skipped
    /// and counted).
    fn start(&self, shared: &Arc<Shared>, batch: Vec<Delivery>) -> InFlight {
        let metrics = &self.writer.metrics;
        let mut events: Vec<(Event, Option<i64>)> = Vec::with_capacity(batch.len());
        for delivery in &batch {
            match serde_json::from_slice::<Event>(&delivery.payload) {
                Ok(event)
                    if !self.roster.sub_key.is_empty()
                        && event.sub_key.as_deref() != Some(self.roster.sub_key.as_str()) =>
                {
                    metrics.skipped.with_label_values(&["sub_key"]).inc();
                }
                Ok(event) => events.push((event, delivery.published_ms)),
                Err(_) => metrics.skipped.with_label_values(&["malformed"]).inc(),
            }
        }
        InFlight {
            batch,
            task: tokio::spawn(apply(shared.clone(), events)),
        }
    }

    /// Acknowledges the stored batches at the front of `flight`, in order, waiting as `wait`
    /// says. At the first that failed, waits for every later one and returns them all, the
    /// failed first and none acknowledged, to be applied again.
    async fn land(
        &mut self,
        flight: &mut VecDeque<InFlight>,
        wait: Wait,
        failures: &mut u32,
    ) -> Result<(), Vec<Delivery>> {
        let mut waited = false;
        while let Some(front) = flight.front() {
            let must = wait == Wait::All || (wait == Wait::Front && !waited);
            if !must && !front.task.is_finished() {
                break;
            }
            waited = true;
            let Some(InFlight { batch, task }) = flight.pop_front() else {
                break;
            };
            let error = match task.await {
                Ok(Ok(())) => {
                    *failures = 0;
                    self.ready.store.store(true, Ordering::Relaxed);
                    if let Err(error) = self.input.ack(batch).await {
                        tracing::warn!(%error, "acknowledging the input (the batch comes again)");
                    }
                    continue;
                }
                Ok(Err(error)) => error.to_string(),
                Err(error) => format!("the batch's task ended: {error}"),
            };
            *failures += 1;
            self.ready.store.store(false, Ordering::Relaxed);
            self.writer.metrics.store_errors.inc();
            tracing::warn!(%error, "roster batch not stored; retried");
            let mut held = batch;
            while let Some(later) = flight.pop_front() {
                let _ = later.task.await;
                held.extend(later.batch);
            }
            return Err(held);
        }
        Ok(())
    }

    async fn rewind(&mut self) {
        self.writer.store.forget_all();
        match self.input.rewind().await {
            Ok(()) => tracing::warn!("rebuilding the roster from the input's beginning"),
            Err(error) => {
                tracing::warn!(%error, "rewinding the input failed; retried");
                self.rebuild.store(true, Ordering::SeqCst);
            }
        }
    }

    /// The backlog gauge and the gap check.
    async fn check_input(&mut self) {
        if let Some(backlog) = self.input.backlog().await {
            self.writer
                .metrics
                .pending
                .set(i64::try_from(backlog).unwrap_or(i64::MAX));
        }
        if self.input.gap().await {
            self.ready.incomplete.store(true, Ordering::Relaxed);
            self.writer
                .metrics
                .rebuilds
                .with_label_values(&["input_gap"])
                .inc();
            tracing::warn!(
                "the input dropped events the roster had not applied (stream retention): the roster is incomplete; reconciling"
            );
            let _ = self.refresh.try_send(String::new());
        }
    }
}

/// Applies one batch's events, every channel stored before it returns.
async fn apply(shared: Arc<Shared>, events: Vec<(Event, Option<i64>)>) -> Result<(), WriteError> {
    let mut by_channel: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for (event, _) in &events {
        by_channel
            .entry(event.channel.as_str())
            .or_default()
            .push(event);
    }
    let shared = &shared;
    let changes: Vec<_> = by_channel
        .into_iter()
        .map(|(channel, events)| async move {
            let _turn = shared.turns.take(channel).await;
            let outcome = shared.writer.apply(channel, &events).await?;
            if outcome.refresh || outcome.drift {
                let _ = shared.refresh.try_send(channel.to_owned());
            }
            Ok::<_, WriteError>(())
        })
        .collect();
    let results: Vec<_> = futures::stream::iter(changes)
        .buffer_unordered(CHANNELS_IN_PARALLEL)
        .collect()
        .await;
    results.into_iter().collect::<Result<(), _>>()?;
    let now = now_i64();
    for (_, published) in &events {
        if let Some(published) = published {
            shared
                .writer
                .metrics
                .lag
                .observe((now - published).max(0) as f64 / 1000.0);
        }
    }
    Ok(())
}

/// One change of a channel at a time: a lock per channel, kept while anyone holds or waits
/// for it.
#[derive(Default)]
struct Turns(std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>);

/// A channel's turn, given back when dropped.
struct Turn<'a> {
    turns: &'a Turns,
    channel: &'a str,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Turns {
    async fn take<'a>(&'a self, channel: &'a str) -> Turn<'a> {
        let lock = self.map().entry(channel.to_owned()).or_default().clone();
        Turn {
            turns: self,
            channel,
            guard: Some(lock.lock_owned().await),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Mutex<()>>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.turns.map();
        // Only the map holds it now: nobody holds or waits for the turn.
        if map
            .get(self.channel)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            map.remove(self.channel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_channel_has_one_turn_at_a_time_and_is_forgotten_after() {
        let turns = Turns::default();
        let first = turns.take("a").await;
        let other = turns.take("b").await;
        // A second turn of "a" waits for the first.
        let second = turns.take("a");
        tokio::pin!(second);
        assert!(futures::poll!(second.as_mut()).is_pending());
        drop(first);
        let second = second.await;
        assert_eq!(turns.map().len(), 2);
        drop(second);
        drop(other);
        assert!(
            turns.map().is_empty(),
            "no turn held or awaited: nothing kept"
        );
    }
}
