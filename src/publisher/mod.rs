//! Moves accepted messages from the in-memory queue or the spool to the sink.
//!
//! Messages reach the producer in accept order (each message's future waits for its
//! predecessor's hand-off, and for broker capacity, inside itself), up to `sink.max_in_flight`
//! are confirmed concurrently, and the driving loop never waits on the broker: confirmations,
//! gauges and the drain keep running while it stalls. A message that fails for a retriable
//! reason is re-sent, in accept order, before any message taken after it (so one transient
//! error does not reorder a channel); one the broker refuses for good goes to the dead-letter
//! destination. A panic is contained: inside a send it fails that message, anywhere else it
//! restarts the loop from the last confirmed position ([`run`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::mpsc;

mod feed;
mod pipeline;
mod record;
mod replay;
mod ticket;

pub use record::{RecordError, msg_id_of};
pub use ticket::Ticket;

use crate::faults::Faults;
use crate::health::Health;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::normalize::Action;
use crate::shutdown::Shutdown;
use crate::sink::Sink;
use crate::spool::Spool;

pub use crate::time::now_ms;

/// Who learns the outcome of a job.
pub enum Done {
    /// Nobody (memory mode): the request was answered at enqueue.
    Nobody,
    /// A `publish`-mode request and the event id it owns.
    Ticket(Arc<Ticket>),
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
    /// Its bytes in the in-memory queue's budget, given back when the job is dropped.
    pub charge: Option<Charge>,
}

impl Job {
    /// Roughly what the job holds in memory.
    pub fn size(&self) -> usize {
        let m = &self.message;
        256 + m.topic.len()
            + m.payload.len()
            + m.key.as_ref().map_or(0, String::len)
            + m.headers.iter().map(|(_, v)| v.len() + 32).sum::<usize>()
    }
}

/// Bytes of a job in the in-memory queue (from enqueue until it is settled or dropped).
pub struct Charge {
    used: Arc<AtomicUsize>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// Why [`QueueSender::try_send_all`] gave the jobs back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `ack.queue_capacity` jobs are waiting.
    Jobs,
    /// The jobs waiting or in flight hold `ack.queue_max_bytes`.
    Bytes,
    /// The publisher closed the queue: it drains before the process stops.
    Closed,
}

impl Refused {
    /// The 503 message for a webhook refused this way.
    pub fn message(self) -> &'static str {
        match self {
            Refused::Jobs => "publish queue is full (ack.queue_capacity events); retry shortly",
            Refused::Bytes => "publish queue is full (ack.queue_max_bytes); retry shortly",
            Refused::Closed => "shutting down; retry shortly",
        }
    }
}

/// The ingress side of the bounded in-memory queue: at most `capacity` jobs and
/// `ack.queue_max_bytes` bytes of them, counted until each job is confirmed.
#[derive(Clone)]
pub struct QueueSender {
    tx: mpsc::Sender<Job>,
    used: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl QueueSender {
    /// Enqueues all jobs or none.
    ///
    /// # Errors
    /// Gives the jobs back, with the reason, when the queue has no room for all of them, in
    /// jobs or bytes, or is closed (the publisher drains: shutting down).
    pub fn try_send_all(&self, mut jobs: Vec<Job>) -> Result<(), (Vec<Job>, Refused)> {
        if jobs.is_empty() {
            return Ok(());
        }
        if self.tx.is_closed() {
            return Err((jobs, Refused::Closed));
        }
        let sizes: Vec<usize> = jobs.iter().map(Job::size).collect();
        let bytes: usize = sizes.iter().sum();
        let before = self.used.fetch_add(bytes, Ordering::SeqCst);
        if before.saturating_add(bytes) > self.max_bytes {
            self.used.fetch_sub(bytes, Ordering::SeqCst);
            return Err((jobs, Refused::Bytes));
        }
        for (job, size) in jobs.iter_mut().zip(sizes) {
            job.charge = Some(Charge {
                used: self.used.clone(),
                bytes: size,
            });
        }
        match self.tx.try_reserve_many(jobs.len()) {
            Ok(permits) => {
                for (permit, job) in permits.zip(jobs) {
                    permit.send(job);
                }
                Ok(())
            }
            Err(error) => {
                for job in &mut jobs {
                    job.charge = None;
                }
                let why = match error {
                    mpsc::error::TrySendError::Closed(()) => Refused::Closed,
                    mpsc::error::TrySendError::Full(()) => Refused::Jobs,
                };
                Err((jobs, why))
            }
        }
    }

    /// Bytes of jobs queued or in flight.
    pub fn bytes(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Room left, in jobs.
    pub fn capacity(&self) -> usize {
        self.tx.capacity()
    }

    pub fn max_capacity(&self) -> usize {
        self.tx.max_capacity()
    }
}

/// Creates the bounded queue of `capacity` jobs and `max_bytes` bytes.
pub fn queue(capacity: usize, max_bytes: usize) -> (QueueSender, mpsc::Receiver<Job>) {
    let (tx, rx) = mpsc::channel(capacity);
    let sender = QueueSender {
        tx,
        used: Arc::new(AtomicUsize::new(0)),
        max_bytes,
    };
    (sender, rx)
}

/// Where the publisher takes jobs from.
pub enum Source {
    Queue(mpsc::Receiver<Job>),
    Spool(Spool),
}

/// Tuning of [`run`].
#[derive(Clone)]
pub struct PublisherConfig {
    pub max_in_flight: usize,
    pub max_backoff: Duration,
    pub dead_letter: String,
    /// The overflow destination per action (`Action::ALL` order), for `kafka.max_topics`.
    pub overflow: Vec<String>,
    /// Where dead letters too large for the broker are written.
    pub dead_letter_dir: Arc<crate::message::DeadLetterDir>,
    /// How long the broker check before a replay may read (`sink.timeout`).
    pub check_timeout: Duration,
}

/// What [`run`] shares with the rest of the process.
#[derive(Clone)]
pub struct Context {
    pub sink: Arc<Sink>,
    pub metrics: Metrics,
    pub health: Health,
    pub faults: Faults,
}

/// Restarts of the loop within this window that mean it cannot recover.
const RESTART_WINDOW: Duration = Duration::from_secs(60);
const MAX_RESTARTS: usize = 5;

/// Runs until the source is exhausted after `drain` fired (queue closed and empty, or spool
/// fully confirmed) and every in-flight message is settled; the caller bounds it with the
/// shutdown grace period.
///
/// A panic in the loop is logged, counted (`hookbus_publisher_restarts_total`) and the loop
/// restarts after a pause, from the spool's first unconfirmed record (the in-memory queue keeps
/// what was not taken yet). More than a few restarts a minute mark the process unhealthy.
pub async fn run(source: Source, context: Context, config: PublisherConfig, drain: Shutdown) {
    let mut source = source;
    // The spool was opened before this: whoever wrote it last was gone by now.
    let mut predecessor = replay::Predecessor::Process(Instant::now());
    let mut restarts: Vec<Instant> = Vec::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        let pass = match &mut source {
            Source::Queue(rx) => {
                let jobs = pipeline::Jobs::Queue(rx);
                pipeline::Pipeline::new(&context, &config, None)
                    .run(jobs, &drain)
                    .boxed()
            }
            Source::Spool(spool) => {
                let (tx, rx) = mpsc::channel(config.max_in_flight.max(256));
                let feeder = feed::Feeder::start(spool.clone(), tx, &context, &config, predecessor);
                let spool = spool.clone();
                let context = &context;
                let config = &config;
                let drain = &drain;
                async move {
                    let _feeder = feeder;
                    let mut rx = rx;
                    pipeline::Pipeline::new(context, config, Some(spool))
                        .run(pipeline::Jobs::Spool(&mut rx), drain)
                        .await;
                }
                .boxed()
            }
        };
        predecessor = replay::Predecessor::Loop;
        match std::panic::AssertUnwindSafe(pass).catch_unwind().await {
            Ok(()) => return,
            Err(panic) => {
                let message = crate::text::panic_message(panic.as_ref());
                context.metrics.publisher_restarts.inc();
                let now = Instant::now();
                restarts.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
                restarts.push(now);
                tracing::error!(
                    panic = %message, restarts = restarts.len(), ?backoff,
                    "publisher panicked; restarting from the last confirmed position"
                );
                if restarts.len() > MAX_RESTARTS {
                    context.health.fail(format!(
                        "publisher restarted {} times within {RESTART_WINDOW:?}; last panic: {message}",
                        restarts.len()
                    ));
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = drain.wait() => {}
        }
        backoff = (backoff * 2).min(config.max_backoff.max(Duration::from_millis(100)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn job() -> Job {
        Job {
            message: Message {
                topic: "t".to_owned(),
                key: None,
                headers: Vec::new(),
                payload: bytes::Bytes::from_static(b"{}"),
                msg_id: None,
                is_event: true,
            },
            action: None,
            received_ms: 0,
            event_ms: None,
            done: Done::Nobody,
            charge: None,
        }
    }

    /// Each refusal says why: a 503 during the drain must not read "queue is full".
    #[test]
    fn a_refused_send_names_its_reason() {
        let (queue, mut rx) = super::queue(1, 1 << 20);
        assert!(queue.try_send_all(vec![job()]).is_ok());
        let (back, why) = queue.try_send_all(vec![job()]).unwrap_err();
        assert_eq!((back.len(), why), (1, Refused::Jobs));
        let (small, _rx2) = super::queue(8, 10);
        assert_eq!(
            small.try_send_all(vec![job()]).unwrap_err().1,
            Refused::Bytes
        );
        rx.close();
        assert_eq!(
            queue.try_send_all(vec![job()]).unwrap_err().1,
            Refused::Closed
        );
        assert_eq!(Refused::Closed.message(), "shutting down; retry shortly");
    }
}
