//! The publishing loop of [`super::run`]: takes jobs from the source in batches, starts one
//! future per batch, settles each message's outcome. It never awaits the broker itself; every
//! wait (the predecessor batch's hand-off, topic creation, client capacity, the confirmations)
//! lives in the batch's own future, so the loop always services confirmations, gauges and the
//! drain. One future, one hand-off and one wake per batch rather than per message: the
//! per-message futures cost more than the work they moved (docs/performance.md). A `publish`
//! request does not wait for its batch: its ticket is settled as soon as its own message is
//! confirmed ([`confirmed`]).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::Duration;

use futures::future::{BoxFuture, Either};
use futures::stream::{self, FuturesUnordered, SelectAll};
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{Context, Done, Job, PublisherConfig, now_ms};
use crate::message::{self, DeadLetter};
use crate::sink::{Ack, SinkError};
use crate::spool::Spool;

/// Messages the broker cannot take (too large, or refused on the dead-letter destination)
/// are logged at most once a second: any client can send them.
static TOO_LARGE_LOG: crate::logs::Sampled = crate::logs::Sampled::per_second();
/// Batches smaller than this are followed by [`LINGER`].
const LINGER_BELOW: usize = 64;
/// Pause after a small batch, so one wake-up serves many requests (tokio rounds it to 1 ms).
const LINGER: Duration = Duration::from_micros(500);
/// First pause before re-sending failed messages; doubles up to `sink.max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// The source, as the loop reads it.
pub(super) enum Jobs<'a> {
    /// The in-memory queue: closed when the drain starts, done when empty.
    Queue(&'a mut mpsc::Receiver<Job>),
    /// Jobs read from the spool: done when the drain started and nothing is pending.
    Spool(&'a mut mpsc::Receiver<Job>),
}

enum Outcome {
    /// The request withdrew the job before it was sent.
    Withdrawn,
    /// The broker's answer.
    Sent(Result<Ack, SinkError>),
    /// Kept on disk: nothing on the broker can take it.
    Filed,
}

/// A started batch: each message's mark, job and outcome, as each is confirmed.
type Flight = Pin<Box<dyn Stream<Item = (u64, Job, Outcome)> + Send>>;
type Prepared = BoxFuture<'static, ()>;

pub(super) struct Pipeline<'a> {
    context: &'a Context,
    config: &'a PublisherConfig,
    spool: Option<Spool>,
    in_flight: SelectAll<Flight>,
    /// Messages of `in_flight` not settled yet (`sink.max_in_flight` bounds this).
    in_flight_jobs: usize,
    marks: Watermark,
    /// Failed messages waiting to be sent again, by accept order (their mark).
    retry: BTreeMap<u64, Job>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Resolves when the last started message was handed to the client.
    last_handed: Option<oneshot::Receiver<()>>,
}

impl<'a> Pipeline<'a> {
    pub(super) fn new(
        context: &'a Context,
        config: &'a PublisherConfig,
        spool: Option<Spool>,
    ) -> Self {
        Pipeline {
            context,
            config,
            spool,
            in_flight: SelectAll::new(),
            in_flight_jobs: 0,
            marks: Watermark::default(),
            retry: BTreeMap::new(),
            retry_at: None,
            backoff: FIRST_BACKOFF,
            last_handed: None,
        }
    }

    pub(super) async fn run(mut self, jobs: Jobs<'_>, drain: &crate::shutdown::Shutdown) {
        let (rx, from_queue) = match jobs {
            Jobs::Queue(rx) => (rx, true),
            Jobs::Spool(rx) => (rx, false),
        };
        let mut prepare = Box::pin(prepare(
            self.context.sink.clone(),
            self.context.metrics.clone(),
            self.config.max_backoff,
        ));
        let mut prepared = false;
        let mut batch = Vec::with_capacity(256);
        let mut gauges = tokio::time::interval(Duration::from_millis(500));
        let linger = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(linger);
        let mut lingering = false;
        let retry_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(retry_timer);
        let drain_started = drain.wait();
        tokio::pin!(drain_started);
        let mut draining = false;
        let mut source_done = false;
        while !self.finished(source_done, draining, from_queue) {
            if let Some(at) = self.retry_at {
                retry_timer.as_mut().reset(at);
            }
            let room = self
                .config
                .max_in_flight
                .saturating_sub(self.in_flight_jobs);
            let take = prepared && room > 0 && self.retry.is_empty() && !lingering && !source_done;
            tokio::select! {
                biased;
                Some((mark, job, outcome)) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.in_flight_jobs -= 1;
                    self.settle(mark, job, outcome);
                    self.context.faults.maybe_panic_in_publisher();
                }
                () = &mut drain_started, if !draining => {
                    draining = true;
                    if from_queue {
                        rx.close();
                    }
                }
                () = &mut prepare, if !prepared => {
                    prepared = true;
                }
                () = &mut retry_timer, if self.retry_at.is_some() => self.retry_due(),
                () = &mut linger, if lingering => {
                    lingering = false;
                }
                taken = rx.recv_many(&mut batch, room.min(256)), if take => {
                    // 0: the queue is closed and empty (or the spool feeder stopped).
                    source_done = taken == 0;
                    if self.launch_batch(&mut batch) && !draining {
                        lingering = true;
                        linger.as_mut().reset(Instant::now() + LINGER);
                    }
                }
                _ = gauges.tick() => {
                    self.gauges(rx.len());
                }
            }
        }
        self.gauges(rx.len());
    }

    /// Whether the loop is over: the source ended and nothing is in flight or waiting for a
    /// retry; or, draining from the spool, that and nothing left in the spool either.
    fn finished(&self, source_done: bool, draining: bool, from_queue: bool) -> bool {
        // Counted, not `in_flight.is_empty()`: a batch that yielded its last outcome stays in
        // `in_flight` until polled once more.
        let idle = self.in_flight_jobs == 0 && self.retry.is_empty();
        let spool_empty = || {
            self.spool
                .as_ref()
                .is_some_and(|s| s.stats().pending_events == 0)
        };
        idle && (source_done || (draining && !from_queue && spool_empty()))
    }

    /// The retry timer fired: re-send what waits, unless the client is reconnecting (re-sending
    /// into it only piles up copies); then wait another backoff.
    fn retry_due(&mut self) {
        if self.context.sink.is_up() {
            self.retry_at = None;
            self.resend();
        } else {
            self.retry_at = Some(Instant::now() + self.backoff);
        }
    }

    /// Sends every job of `batch` (emptied), in order, after its topics are prepared. Returns
    /// whether to linger before taking more: a short linger after a small batch lets the next
    /// requests queue up, so one wake-up serves many (cross-thread wake-ups cost more than the
    /// work here); not when a request waits for the confirmation (`publish` mode).
    fn launch_batch(&mut self, batch: &mut Vec<Job>) -> bool {
        let mut waited_on = false;
        for job in batch.iter_mut() {
            waited_on |= matches!(job.done, Done::Ticket(_));
            self.overflow(job);
        }
        let topics = batch.iter().map(|j| j.message.topic.as_str());
        let ready = self.context.sink.prepare_batch(topics);
        let small = batch.len() < LINGER_BELOW;
        let jobs = batch
            .drain(..)
            .map(|job| (self.marks.open(job.received_ms), job))
            .collect();
        self.launch(jobs, ready);
        small && !waited_on
    }

    /// Sends an event whose topic is over `kafka.max_topics` to the overflow destination.
    fn overflow(&self, job: &mut Job) {
        if let Some(action) = job.action
            && !self.context.sink.admit(&job.message.topic)
        {
            job.message
                .topic
                .clone_from(&self.config.overflow[action as usize]);
            self.context.metrics.overflow(action);
        }
    }

    /// Starts the future of a batch of messages: it waits for the previous batch's hand-off
    /// (order), for the batch's topics (Kafka), then hands each message to the client in order
    /// and awaits their confirmations. Panics inside the sink fail only that message.
    fn launch(&mut self, jobs: Vec<(u64, Job)>, ready: Option<Prepared>) {
        let (handed, handed_rx) = oneshot::channel::<()>();
        let after = self.last_handed.replace(handed_rx);
        let sink = self.context.sink.clone();
        let faults = self.context.faults.clone();
        let metrics = self.context.metrics.clone();
        self.in_flight_jobs += jobs.len();
        let handing = async move {
            if let Some(after) = after {
                let _ = after.await;
            }
            if let Some(ready) = ready {
                ready.await;
            }
            let mut sent = Vec::with_capacity(jobs.len());
            for (mark, job) in jobs {
                if let Done::Ticket(ticket) = &job.done
                    && !ticket.start()
                {
                    sent.push((mark, job, None));
                    continue;
                }
                let result = AssertUnwindSafe(async {
                    faults.maybe_panic_in_sink();
                    sink.send(&job.message).await
                })
                .catch_unwind()
                .await;
                // Each confirmation is watched from here on (a ticket's settles its request
                // at once).
                let pending = match result {
                    Ok(Ok(confirm)) => Ok(confirmed(confirm, &job.done, metrics.clone())),
                    Ok(Err(error)) => Err(error),
                    Err(panic) => Err(panicked(&metrics, &panic)),
                };
                sent.push((mark, job, Some(pending)));
            }
            drop(handed);
            sent
        };
        // Then each message's outcome as soon as it is known (one slow partition holds back
        // only its own messages).
        let outcomes = stream::once(handing).flat_map(|sent| {
            sent.into_iter()
                .map(|(mark, job, pending)| async move {
                    let outcome = match pending {
                        None => Outcome::Withdrawn,
                        Some(Ok(confirmation)) => Outcome::Sent(confirmation.await),
                        Some(Err(error)) => Outcome::Sent(Err(error)),
                    };
                    (mark, job, outcome)
                })
                .collect::<FuturesUnordered<_>>()
        });
        self.in_flight.push(Box::pin(outcomes));
    }

    /// Keeps `job`'s payload on disk (off the runtime); its mark stays open until written.
    /// Counted once in `hookbus_dead_letters_total`: as `reason` when written, as `dropped`
    /// when the disk refuses it or its budget is spent.
    fn file(&mut self, job: Job, mark: u64, reason: &'static str, error: &str) {
        let dir = self.config.dead_letter_dir.clone();
        let metrics = self.context.metrics.clone();
        let meta = message::DiskMeta::of(&job.message, reason, error);
        self.in_flight_jobs += 1;
        self.in_flight.push(Box::pin(stream::once(async move {
            let payload = job.message.payload.clone();
            let written = tokio::task::spawn_blocking(move || dir.write(&payload, &meta)).await;
            if matches!(written, Ok(Ok(_))) {
                metrics.dead_letter(reason);
            } else {
                let error = match written {
                    Ok(Err(error)) => error.to_string(),
                    Err(error) => error.to_string(),
                    Ok(Ok(_)) => String::new(),
                };
                metrics.dead_letter("dropped");
                if let Some(suppressed) = message::DROPPED_LOG.admit(now_ms()) {
                    tracing::error!(%error, bytes = job.message.payload.len(), suppressed, "dead letter dropped");
                }
            }
            (mark, job, Outcome::Filed)
        })));
    }

    fn settle(&mut self, mark: u64, job: Job, outcome: Outcome) {
        let metrics = &self.context.metrics;
        let error = match outcome {
            Outcome::Withdrawn => {
                self.marks.close(mark);
                return;
            }
            Outcome::Filed => {
                self.finish(job.done);
                self.marks.close(mark);
                return;
            }
            Outcome::Sent(Ok(ack)) => {
                let now = now_ms();
                if ack.duplicate {
                    // Stored before by another replica or a pre-crash attempt: not new.
                    metrics.broker_duplicate();
                } else if let Some(action) = job.action {
                    let seconds = now.saturating_sub(job.received_ms) as f64 / 1000.0;
                    metrics.published(action, seconds);
                    if let Some(event_ms) = job.event_ms {
                        let lag = (now as i64).saturating_sub(event_ms).max(0);
                        metrics.event_lag.observe(lag as f64 / 1000.0);
                    }
                }
                self.finish(job.done);
                self.marks.close(mark);
                self.backoff = FIRST_BACKOFF;
                return;
            }
            Outcome::Sent(Err(error)) => error,
        };
        metrics.publish_error(error.kind());
        let sink_name = self.context.sink.name();
        if error.is_retriable() {
            if self.retry.is_empty() && self.retry_at.is_none() {
                tracing::warn!(%error, sink = sink_name, delay = ?self.backoff, "publish failed; retrying in accept order");
            } else {
                tracing::debug!(%error, sink = sink_name, "publish failed; retrying");
            }
            self.retry.insert(mark, job);
            if self.retry_at.is_none() {
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(self.config.max_backoff.max(FIRST_BACKOFF));
            }
            return;
        }
        let reason = if matches!(error, SinkError::TooLarge { .. }) {
            "too_large"
        } else {
            "publish_failed"
        };
        if job.message.topic == self.config.dead_letter || reason == "too_large" {
            // Nowhere on the broker to put it: keep it on disk (counted there, once).
            if let Some(suppressed) = TOO_LARGE_LOG.admit(now_ms()) {
                tracing::warn!(%error, sink = sink_name, topic = %job.message.topic, suppressed, "kept in spool.dir/dead-letters/ instead");
            }
            self.file(job, mark, reason, &error.to_string());
            return;
        }
        metrics.dead_letter(reason);
        tracing::warn!(%error, sink = sink_name, topic = %job.message.topic, "broker refused message; dead-lettering");
        let dead = dead_letter_job(job, reason, &error.to_string(), &self.config.dead_letter);
        self.launch(vec![(mark, dead)], None);
    }

    /// Sends every failed message again, in accept order, ahead of anything taken later.
    fn resend(&mut self) {
        let jobs: Vec<(u64, Job)> = std::mem::take(&mut self.retry).into_iter().collect();
        let sink = self.context.sink.clone();
        let ready = sink.prepare_batch(jobs.iter().map(|(_, j)| j.message.topic.as_str()));
        self.launch(jobs, ready);
    }

    fn finish(&self, done: Done) {
        match done {
            Done::Nobody => {}
            Done::Ticket(ticket) => ticket.settle(),
            Done::Spool(seq) => {
                if let Some(spool) = &self.spool {
                    spool.confirm(seq);
                }
            }
        }
    }

    /// What only the loop knows; the spool, dedup and sink gauges are the app's.
    fn gauges(&self, queued: usize) {
        let metrics = &self.context.metrics;
        metrics.queue_events.set(queued as i64);
        if self.spool.is_none() {
            metrics
                .spool_pending_events
                .set((self.marks.len() + queued) as i64);
            let age = self
                .marks
                .oldest_ms()
                .map_or(0, |ms| now_ms().saturating_sub(ms));
            metrics.oldest_unpublished_age.set(age as f64 / 1000.0);
        }
    }
}

/// Awaits a sent message's confirmation. A publish-mode job's confirmation is awaited in a task
/// of its own that holds the ticket and settles it as soon as the broker stores the message:
/// the request is answered without waiting for the rest of its batch, and when this future is
/// dropped while the client still holds the message (the loop panicked, the drain was cut),
/// the ticket is still settled once the broker stores it, or released once it is refused,
/// never while the broker may still store it (a release then would let PubNub's retry be
/// published a second time). The loop's own settle of the same ticket later does nothing.
fn confirmed(
    confirm: crate::sink::Confirm,
    done: &Done,
    metrics: crate::metrics::Metrics,
) -> impl Future<Output = Result<Ack, SinkError>> + Send + 'static + use<> {
    let guarded = async move {
        AssertUnwindSafe(confirm)
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(panicked(&metrics, &panic)))
    };
    let Done::Ticket(ticket) = done else {
        return Either::Left(guarded);
    };
    let ticket = ticket.clone();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let result = guarded.await;
        if result.is_ok() {
            ticket.settle();
        }
        let _ = tx.send(result);
    });
    Either::Right(async move {
        rx.await.unwrap_or_else(|_| {
            Err(SinkError::Retriable(
                "the confirmation task ended".to_owned(),
            ))
        })
    })
}

fn panicked(metrics: &crate::metrics::Metrics, panic: &Box<dyn std::any::Any + Send>) -> SinkError {
    let message = crate::text::panic_message(panic.as_ref());
    metrics.publisher_error("panic");
    tracing::error!(panic = %message, "the sink panicked; the message is retried");
    SinkError::Retriable(format!("the sink panicked: {message}"))
}

/// Broker-side setup (JetStream stream, Kafka metadata), retried with backoff until it works.
async fn prepare(
    sink: std::sync::Arc<crate::sink::Sink>,
    metrics: crate::metrics::Metrics,
    max_backoff: Duration,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match sink.prepare().await {
            Ok(warnings) => {
                for warning in warnings {
                    metrics.config_warnings.inc();
                    tracing::warn!(sink = sink.name(), "{warning}");
                }
                metrics.set_sink_up(sink.is_up());
                return;
            }
            Err(error) => {
                metrics.set_sink_up(false);
                tracing::warn!(%error, sink = sink.name(), ?backoff, "broker not ready; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(max_backoff.max(Duration::from_millis(100)));
    }
}

/// The dead letter replacing `job`, which inherits its completion.
fn dead_letter_job(job: Job, reason: &str, error: &str, dead_letter: &str) -> Job {
    let why = DeadLetter {
        reason,
        error,
        index: None,
        batch: None,
    };
    let msg_id = job.message.msg_id.map(|id| format!("dead-letter:{id}"));
    Job {
        message: message::dead_letter(
            job.message.payload,
            &why,
            dead_letter,
            job.message.key,
            msg_id,
        ),
        action: None,
        received_ms: job.received_ms,
        event_ms: None,
        done: job.done,
        charge: job.charge,
    }
}

/// Tracks the oldest unconfirmed job among those taken from the source.
#[derive(Default)]
struct Watermark {
    next: u64,
    open: VecDeque<(u64, u64)>,
    done: HashSet<u64>,
}

impl Watermark {
    fn open(&mut self, received_ms: u64) -> u64 {
        let id = self.next;
        self.next += 1;
        self.open.push_back((id, received_ms));
        id
    }

    fn close(&mut self, id: u64) {
        self.done.insert(id);
        while let Some(&(front, _)) = self.open.front() {
            if !self.done.remove(&front) {
                break;
            }
            self.open.pop_front();
        }
    }

    fn oldest_ms(&self) -> Option<u64> {
        self.open.front().map(|&(_, ms)| ms)
    }

    fn len(&self) -> usize {
        self.open.len() - self.done.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_tracks_oldest_open() {
        let mut w = Watermark::default();
        let a = w.open(10);
        let b = w.open(20);
        let c = w.open(30);
        assert_eq!(w.oldest_ms(), Some(10));
        w.close(b);
        assert_eq!(w.oldest_ms(), Some(10));
        assert_eq!(w.len(), 2);
        w.close(a);
        assert_eq!(w.oldest_ms(), Some(30));
        w.close(c);
        assert_eq!(w.oldest_ms(), None);
        assert_eq!(w.len(), 0);
    }
}
