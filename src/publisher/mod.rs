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

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use tokio::sync::mpsc;

mod feed;
mod pipeline;
mod record;
mod ticket;

pub use record::{RecordError, msg_id_of};
pub use ticket::Ticket;

use crate::faults::Faults;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::normalize::Action;
use crate::shutdown::Shutdown;
use crate::sink::{Message, Sink};
use crate::spool::Spool;

/// Wall clock in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

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
    /// Gives the jobs back when the queue has no room for all of them, in jobs or bytes (or
    /// is closed).
    pub fn try_send_all(&self, mut jobs: Vec<Job>) -> Result<(), Vec<Job>> {
        if jobs.is_empty() {
            return Ok(());
        }
        let sizes: Vec<usize> = jobs.iter().map(Job::size).collect();
        let bytes: usize = sizes.iter().sum();
        let before = self.used.fetch_add(bytes, Ordering::SeqCst);
        if before.saturating_add(bytes) > self.max_bytes {
            self.used.fetch_sub(bytes, Ordering::SeqCst);
            return Err(jobs);
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
            Err(_) => {
                for job in &mut jobs {
                    job.charge = None;
                }
                Err(jobs)
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
    pub dead_letter_dir: Arc<DeadLetterDir>,
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
                let feeder = feed::Feeder::start(spool.clone(), tx, &context, config.max_backoff);
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
        match std::panic::AssertUnwindSafe(pass).catch_unwind().await {
            Ok(()) => return,
            Err(panic) => {
                let message = panic_message(&panic);
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

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// What a dead-letter file counts against the directory's budget at the least.
const FILE_BLOCK: u64 = 4096;

/// One "dead letter written to disk" line a second (the files and the counters say the rest).
static WRITTEN_LOG: crate::logs::Sampled = crate::logs::Sampled::per_second();

/// One "dead letter dropped" line a second (`hookbus_dead_letters_total{reason="dropped"}`
/// counts every one).
pub static DROPPED_LOG: crate::logs::Sampled = crate::logs::Sampled::per_second();

/// What a dead letter costs its destination beyond its payload: the reason, error (up to 512
/// bytes) and index headers, and the broker's own framing.
pub const DEAD_LETTER_OVERHEAD: usize = 512;

/// The bytes of dead letters that may go to the broker per window
/// (`routing.dead_letter_budget_bytes` per `routing.dead_letter_budget_window`): beyond it
/// they are kept in [`DeadLetterDir`] instead, so a flood of invalid input costs the
/// dead-letter destination a bounded amount per window.
pub struct DeadLetterBudget {
    bytes: u64,
    window_ms: u64,
    /// (start of the current window, bytes taken in it); never held across an await.
    state: std::sync::Mutex<(u64, u64)>,
}

impl DeadLetterBudget {
    pub fn new(bytes: u64, window: Duration) -> DeadLetterBudget {
        DeadLetterBudget {
            bytes,
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1),
            state: std::sync::Mutex::new((0, 0)),
        }
    }

    /// Takes a dead letter of `payload` bytes from the current window's budget, counting its
    /// headers and the broker's framing too ([`DEAD_LETTER_OVERHEAD`]: a flood of tiny items
    /// costs the destination far more than its payload); `false` (nothing taken) when it does
    /// not fit.
    pub fn try_take(&self, payload: usize, now_ms: u64) -> bool {
        let bytes = payload.saturating_add(DEAD_LETTER_OVERHEAD);
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (start, used) = &mut *state;
        if now_ms.saturating_sub(*start) >= self.window_ms {
            *start = now_ms;
            *used = 0;
        }
        let bytes = bytes as u64;
        if used.saturating_add(bytes) > self.bytes {
            return false;
        }
        *used += bytes;
        true
    }
}

/// `spool.dir/dead-letters/`: dead letters no broker message can hold, one file each, within
/// a disk budget (`spool.dead_letter_max_bytes`) so that unauthenticated junk cannot fill the
/// spool's volume. Files are written whole or not at all (temporary name, fsync, rename).
pub struct DeadLetterDir {
    dir: PathBuf,
    budget: u64,
    used: std::sync::atomic::AtomicU64,
}

/// Why a dead letter was not kept.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("the dead-letter directory is at its budget ({budget} bytes)")]
    Full { budget: u64 },
    #[error("writing the dead letter failed: {0}")]
    Io(#[from] std::io::Error),
}

impl DeadLetterDir {
    /// The directory and its budget; counts the files already there (blocking, at start).
    pub fn open(dir: PathBuf, budget: u64) -> DeadLetterDir {
        let used = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.metadata().ok())
                    .filter(std::fs::Metadata::is_file)
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        DeadLetterDir {
            dir,
            budget,
            used: std::sync::atomic::AtomicU64::new(used),
        }
    }

    /// Bytes of dead letters on disk.
    pub fn used(&self) -> u64 {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes `body` as one file named by time, reason and content hash; it counts at least
    /// 4 KiB against the budget. Blocking.
    ///
    /// # Errors
    /// `Full` when it would exceed the budget; `Io` when the disk refuses (no partial file is
    /// left behind either way).
    pub fn write(&self, body: &[u8], reason: &str) -> Result<PathBuf, DeadLetterError> {
        use std::io::Write;
        use std::sync::atomic::Ordering;

        use sha2::{Digest, Sha256};
        // A file costs at least a block, whatever its length: thousands of tiny dead letters
        // must not fill the volume's inodes under a byte budget they hardly touch.
        let size = (body.len() as u64).max(FILE_BLOCK);
        let before = self.used.fetch_add(size, Ordering::SeqCst);
        if before.saturating_add(size) > self.budget {
            self.used.fetch_sub(size, Ordering::SeqCst);
            return Err(DeadLetterError::Full {
                budget: self.budget,
            });
        }
        let digest = Sha256::digest(body);
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let path = self.dir.join(format!("{}-{reason}-{hex}.body", now_ms()));
        let tmp = path.with_extension("tmp");
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| {
                let mut file = std::fs::File::create(&tmp)?;
                file.write_all(body)?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &path));
        match written {
            Ok(()) => {
                if let Some(suppressed) = WRITTEN_LOG.admit(now_ms()) {
                    tracing::warn!(path = %path.display(), bytes = body.len(), reason, suppressed, "dead letter written to disk");
                }
                Ok(path)
            }
            Err(error) => {
                let _ = std::fs::remove_file(&tmp);
                self.used.fetch_sub(size, Ordering::SeqCst);
                Err(error.into())
            }
        }
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn dead_letter_budget_counts_overhead_and_refills_per_window() {
        let budget =
            DeadLetterBudget::new(10 * DEAD_LETTER_OVERHEAD as u64, Duration::from_secs(60));
        // Ten empty dead letters fill it: each costs its overhead.
        for _ in 0..10 {
            assert!(budget.try_take(0, 1_000));
        }
        assert!(!budget.try_take(0, 1_000));
        assert!(!budget.try_take(0, 60_999), "same window");
        assert!(budget.try_take(0, 61_000), "the next window starts empty");
        let small = DeadLetterBudget::new(100, Duration::from_secs(1));
        assert!(
            !small.try_take(1, 0),
            "one that never fits is refused, not split"
        );
    }
}
