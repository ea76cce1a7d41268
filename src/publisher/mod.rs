//! Moves accepted messages from the in-memory queue or the spool to the sink. One task sends
//! in arrival order (so per-channel order holds on the broker) while up to
//! `sink.max_in_flight` confirmations are awaited concurrently. A message that fails for a
//! retriable reason is retried with capped exponential backoff until it is confirmed or the
//! drain deadline passes; one the broker refuses for good goes to the dead-letter destination.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

mod record;

pub use record::RecordError;

use crate::metrics::Metrics;
use crate::normalize::Action;
use crate::shutdown::Shutdown;
use crate::sink::{self, Message, Sink, SinkError};
use crate::spool::{Spool, SpoolReader};

/// Wall clock in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Who waits for the outcome of a job.
pub enum Done {
    /// Nobody (memory mode): the request was answered at enqueue.
    Nobody,
    /// A request in `publish` mode.
    Waiter(oneshot::Sender<Result<(), SinkError>>),
    /// A spool record to confirm.
    Spool(u64),
}

/// One message on its way to the broker, with what the metrics need.
pub struct Job {
    pub message: Message,
    /// The event's action; `None` for dead letters.
    pub action: Option<Action>,
    /// When the webhook request arrived, Unix ms.
    pub received_ms: u64,
    /// The event's own timestamp, Unix ms, for `hookbus_event_lag_seconds`.
    pub event_ms: Option<i64>,
    pub done: Done,
}

/// The ingress side of the bounded in-memory queue.
#[derive(Clone)]
pub struct QueueSender {
    tx: mpsc::Sender<Job>,
}

impl QueueSender {
    /// Enqueues all jobs or none.
    ///
    /// # Errors
    /// Gives the jobs back when the queue has no room for all of them (or is closed).
    pub fn try_send_all(&self, jobs: Vec<Job>) -> Result<(), Vec<Job>> {
        if jobs.is_empty() {
            return Ok(());
        }
        match self.tx.try_reserve_many(jobs.len()) {
            Ok(permits) => {
                for (permit, job) in permits.zip(jobs) {
                    permit.send(job);
                }
                Ok(())
            }
            Err(_) => Err(jobs),
        }
    }

    /// Room left, in jobs.
    pub fn capacity(&self) -> usize {
        self.tx.capacity()
    }

    pub fn max_capacity(&self) -> usize {
        self.tx.max_capacity()
    }
}

/// Creates the bounded queue of `capacity` jobs.
pub fn queue(capacity: usize) -> (QueueSender, mpsc::Receiver<Job>) {
    let (tx, rx) = mpsc::channel(capacity);
    (QueueSender { tx }, rx)
}

/// Where the publisher takes jobs from.
pub enum Source {
    Queue(mpsc::Receiver<Job>),
    Spool(Spool, SpoolReader),
}

/// Tuning of [`run`].
#[derive(Clone)]
pub struct PublisherConfig {
    pub max_in_flight: usize,
    pub timeout: Duration,
    pub max_backoff: Duration,
    pub dead_letter: String,
    /// Where dead letters too large for the broker are written.
    pub dead_letter_dir: PathBuf,
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

type Flight = std::pin::Pin<
    Box<dyn std::future::Future<Output = (u64, Job, Result<sink::Ack, SinkError>)> + Send>,
>;

/// Batches smaller than this are followed by [`LINGER`].
const LINGER_BELOW: usize = 64;
/// Pause after a small batch (tokio's timer rounds it up to 1 ms).
const LINGER: Duration = Duration::from_micros(500);

/// Runs until the source is exhausted after `drain` fired (queue closed and empty, or spool
/// fully confirmed) and every in-flight message is settled. The caller bounds it with the
/// shutdown grace period.
pub async fn run(
    source: Source,
    sink: Arc<Sink>,
    metrics: Metrics,
    config: PublisherConfig,
    drain: Shutdown,
) {
    prepare(&sink, &metrics, &config, &drain).await;
    // The spool is read by its own task into a bounded channel, so a read in progress is never
    // cancelled (and repeated) when a confirmation or a timer wins the select below.
    let (mut rx, spool, _feeder) = match source {
        Source::Queue(rx) => (rx, None, None),
        Source::Spool(spool, reader) => {
            let (tx, rx) = mpsc::channel(config.max_in_flight.max(256));
            let feeder = tokio::spawn(feed(spool.clone(), reader, tx));
            (rx, Some(spool), Some(AbortOnDrop(feeder)))
        }
    };
    let mut in_flight: FuturesUnordered<Flight> = FuturesUnordered::new();
    let mut marks = Watermark::default();
    let mut batch = Vec::with_capacity(256);
    let mut gauges = tokio::time::interval(Duration::from_millis(500));
    let drain_started = drain.wait();
    tokio::pin!(drain_started);
    let mut draining = false;
    let mut source_done = false;
    let settle = Settle {
        sink: &sink,
        metrics: &metrics,
        config: &config,
        spool: spool.as_ref(),
    };
    loop {
        if source_done && in_flight.is_empty() {
            break;
        }
        let room = config.max_in_flight.saturating_sub(in_flight.len());
        tokio::select! {
            biased;
            Some((mark, job, result)) = in_flight.next(), if !in_flight.is_empty() => {
                match settle.settle(mark, job, result) {
                    Some(next) => in_flight.push(next),
                    None => marks.close(mark),
                }
            }
            () = &mut drain_started, if !draining => {
                draining = true;
                if spool.is_none() {
                    rx.close();
                }
            }
            taken = rx.recv_many(&mut batch, room.min(256)), if room > 0 && !source_done => {
                // 0: the queue is closed and empty, or the spool feeder stopped on an error.
                source_done = taken == 0;
                // A short linger after a small batch lets the next requests queue up, so one
                // wake-up serves many (cross-thread wake-ups cost more than the work here).
                // Not when a request waits for the confirmation (`publish` mode).
                sink.prepare_batch(batch.iter().map(|j| j.message.topic.as_str())).await;
                let mut linger = batch.len() < LINGER_BELOW && !draining;
                for job in batch.drain(..) {
                    linger &= !matches!(job.done, Done::Waiter(_));
                    let mark = marks.open(job.received_ms);
                    let flight = start(sink.clone(), job, mark, config.timeout).await;
                    in_flight.push(flight);
                }
                if linger {
                    tokio::time::sleep(LINGER).await;
                }
            }
            _ = gauges.tick() => {
                metrics.set_sink_up(sink.is_up());
                metrics.queue_events.set(rx.len() as i64);
                if let Some(spool) = &spool {
                    let stats = spool.stats();
                    metrics.spool_pending_events.set(stats.pending_events as i64);
                    metrics.spool_bytes.set(stats.bytes as i64);
                    let age = stats.oldest_unconfirmed_ms.map_or(0, |ms| now_ms().saturating_sub(ms));
                    metrics.oldest_unpublished_age.set(age as f64 / 1000.0);
                    if draining && stats.pending_events == 0 && in_flight.is_empty() {
                        source_done = true;
                    }
                } else {
                    metrics.spool_pending_events.set((marks.len() + rx.len()) as i64);
                    let age = marks.oldest_ms().map_or(0, |ms| now_ms().saturating_sub(ms));
                    metrics.oldest_unpublished_age.set(age as f64 / 1000.0);
                }
            }
        }
    }
    metrics.set_sink_up(sink.is_up());
}

/// Aborts the task when dropped (also when `run` itself is aborted at the grace deadline).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads committed spool records in order and hands them to the publisher as jobs.
async fn feed(spool: Spool, mut reader: SpoolReader, tx: mpsc::Sender<Job>) {
    loop {
        let records = match reader.next_batch(256).await {
            Ok(records) => records,
            Err(error) => {
                tracing::error!(%error, "spool read failed; publishing stops until restart");
                return;
            }
        };
        for record in records {
            match Job::decode(record.seq, record.payload) {
                Ok(job) => {
                    if tx.send(job).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    // Unreadable by this version: never publishable, so do not block on it.
                    tracing::error!(%error, "skipping undecodable spool record");
                    spool.confirm(record.seq);
                }
            }
        }
    }
}

/// Broker-side setup, retried with backoff until it works or the drain starts.
async fn prepare(sink: &Sink, metrics: &Metrics, config: &PublisherConfig, drain: &Shutdown) {
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
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = drain.wait() => return,
        }
        backoff = (backoff * 2).min(config.max_backoff);
    }
}

/// Sends `job` now (preserving call order) and returns the future of its confirmation.
async fn start(sink: Arc<Sink>, job: Job, mark: u64, timeout: Duration) -> Flight {
    match sink.send(&job.message).await {
        Ok(confirm) => Box::pin(async move {
            let result = match tokio::time::timeout(timeout, confirm).await {
                Ok(result) => result,
                Err(_) => Err(SinkError::Timeout(timeout)),
            };
            (mark, job, result)
        }),
        Err(error) => Box::pin(async move { (mark, job, Err(error)) }),
    }
}

/// Resends `job` after `delay` (a retry; order relative to later messages is not kept).
fn retry(sink: Arc<Sink>, job: Job, mark: u64, timeout: Duration, delay: Duration) -> Flight {
    Box::pin(async move {
        tokio::time::sleep(delay).await;
        start(sink, job, mark, timeout).await.await
    })
}

struct Settle<'a> {
    sink: &'a Arc<Sink>,
    metrics: &'a Metrics,
    config: &'a PublisherConfig,
    spool: Option<&'a Spool>,
}

impl Settle<'_> {
    /// Records the outcome of `job`; returns the follow-up flight (a retry or the dead letter
    /// that replaces it), which keeps the job's `mark`.
    fn settle(&self, mark: u64, job: Job, result: Result<sink::Ack, SinkError>) -> Option<Flight> {
        let sink_name = self.sink.name();
        let config = self.config;
        let error = match result {
            Ok(ack) => {
                let now = now_ms();
                if ack.duplicate {
                    // Stored before by another replica or a pre-crash attempt: not new.
                    self.metrics.broker_duplicate();
                } else if let Some(action) = job.action {
                    let seconds = now.saturating_sub(job.received_ms) as f64 / 1000.0;
                    self.metrics.published(action, seconds);
                    if let Some(event_ms) = job.event_ms {
                        let lag = (now as i64).saturating_sub(event_ms).max(0);
                        self.metrics.event_lag.observe(lag as f64 / 1000.0);
                    }
                }
                self.finish(job.done, Ok(()));
                return None;
            }
            Err(error) => error,
        };
        self.metrics.publish_error(error.kind());
        if matches!(job.done, Done::Waiter(_)) {
            // The request answers 503 and releases its ids; PubNub retries.
            self.finish(job.done, Err(error));
            return None;
        }
        if error.is_retriable() {
            let delay = backoff_for(&job, config.max_backoff);
            tracing::warn!(%error, sink = sink_name, ?delay, "publish failed; retrying");
            return Some(retry(self.sink.clone(), job, mark, config.timeout, delay));
        }
        let reason = if matches!(error, SinkError::TooLarge { .. }) {
            "too_large"
        } else {
            "publish_failed"
        };
        self.metrics.dead_letter(reason);
        if job.message.topic == config.dead_letter || reason == "too_large" {
            // Nowhere on the broker to put it: keep it on disk.
            write_dead_letter_file(&config.dead_letter_dir, &job.message.payload, reason);
            self.finish(job.done, Ok(()));
            return None;
        }
        tracing::warn!(%error, sink = sink_name, topic = %job.message.topic, "broker refused message; dead-lettering");
        let dead = dead_letter_job(job, reason, &error.to_string(), config);
        Some(retry(
            self.sink.clone(),
            dead,
            mark,
            config.timeout,
            Duration::ZERO,
        ))
    }

    fn finish(&self, done: Done, result: Result<(), SinkError>) {
        match done {
            Done::Nobody => {}
            Done::Waiter(tx) => {
                let _ = tx.send(result);
            }
            Done::Spool(seq) => {
                if let Some(spool) = self.spool {
                    spool.confirm(seq);
                }
            }
        }
    }
}

fn backoff_for(job: &Job, max: Duration) -> Duration {
    // Grows with the job's age: 50 ms doubling, capped; no per-job attempt counter needed.
    let age = Duration::from_millis(now_ms().saturating_sub(job.received_ms));
    let mut delay = Duration::from_millis(50);
    while delay < age / 4 && delay < max {
        delay *= 2;
    }
    delay.min(max)
}

/// The dead letter replacing `job`, which inherits its completion.
fn dead_letter_job(job: Job, reason: &str, error: &str, config: &PublisherConfig) -> Job {
    Job {
        message: Message {
            topic: config.dead_letter.clone(),
            key: job.message.key,
            headers: vec![
                (sink::HEADER_DEAD_LETTER_REASON, reason.to_owned()),
                (sink::HEADER_DEAD_LETTER_ERROR, error.to_owned()),
            ],
            payload: job.message.payload,
            msg_id: None,
            is_event: false,
        },
        action: None,
        received_ms: job.received_ms,
        event_ms: None,
        done: job.done,
    }
}

/// Writes a dead letter the broker cannot take to `dir`, named by time and content hash.
/// Blocking; used rarely (oversized bodies only).
pub fn write_dead_letter_file(dir: &std::path::Path, body: &[u8], reason: &str) {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(body);
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join(format!("{}-{reason}-{hex}.body", now_ms()));
    let result = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, body));
    match result {
        Ok(()) => {
            tracing::warn!(path = %path.display(), bytes = body.len(), reason, "dead letter written to disk")
        }
        Err(error) => {
            tracing::error!(%error, path = %path.display(), "cannot write dead letter: body lost")
        }
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
