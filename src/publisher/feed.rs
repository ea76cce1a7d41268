//! Reads committed spool records in order, in a task of its own (so a read in progress is never
//! cancelled by the publisher's select), and hands them to the publisher as jobs. A read error
//! is logged, counted and retried with backoff from the same position; one that persists marks
//! the process unhealthy until a read succeeds again.

use std::time::Duration;

use tokio::sync::mpsc;

use super::replay::{self, Predecessor, Step};
use super::{Context, Job, PublisherConfig};
use crate::spool::{Spool, SpoolError};

/// Consecutive failed reads after which the spool counts as unreadable (`/healthz` 503).
const UNHEALTHY_AFTER: u32 = 10;

/// The feeding task; aborted when dropped (the publisher restarted or stopped).
pub(super) struct Feeder(tokio::task::JoinHandle<()>);

impl Drop for Feeder {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Feeder {
    /// Starts reading at the spool's first unconfirmed record; records above it that were
    /// confirmed already (a restart after a panic) are skipped. The unconfirmed records
    /// `predecessor` may have sent are looked up on the broker first ([`replay::check`]).
    pub(super) fn start(
        spool: Spool,
        tx: mpsc::Sender<Job>,
        context: &Context,
        config: &PublisherConfig,
        predecessor: Predecessor,
    ) -> Feeder {
        let context = context.clone();
        let config = config.clone();
        Feeder(tokio::spawn(async move {
            let replay = replay::check(
                &spool,
                &context,
                predecessor,
                config.check_timeout,
                &config.overflow,
            )
            .await;
            feed(spool, tx, context, config.max_backoff, replay).await;
        }))
    }
}

async fn feed(
    spool: Spool,
    tx: mpsc::Sender<Job>,
    context: Context,
    max_backoff: Duration,
    mut replay: Option<replay::Replay>,
) {
    let mut reader = spool.reader();
    let mut failures = 0u32;
    let mut backoff = Duration::from_millis(50);
    loop {
        let batch = match reader.wait_unread().await {
            Err(error) => Err(error),
            Ok(()) => match context.faults.spool_read_error() {
                Some(error) => Err(SpoolError::Io(error)),
                None => reader.next_batch(256).await,
            },
        };
        let records = match batch {
            Ok(records) => records,
            Err(SpoolError::Closed) => return,
            Err(error) => {
                failures += 1;
                context.metrics.publisher_error("spool_read");
                tracing::error!(%error, failures, ?backoff, "spool read failed; retrying");
                if failures == UNHEALTHY_AFTER {
                    context
                        .health
                        .fail(format!("the spool stays unreadable: {error}"));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max_backoff.max(Duration::from_millis(50)));
                continue;
            }
        };
        if failures > 0 {
            tracing::info!(failures, "spool readable again");
            if failures >= UNHEALTHY_AFTER {
                context.health.recover();
            }
            failures = 0;
            backoff = Duration::from_millis(50);
        }
        for record in records {
            let job = Job::decode(record.seq, record.payload).map(|job| match &mut replay {
                Some(replay) => replay.judge(record.seq, job, &context),
                None => Step::Send(job),
            });
            match job {
                Ok(Step::Skip) => spool.confirm(record.seq),
                Ok(Step::Send(job)) => {
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
