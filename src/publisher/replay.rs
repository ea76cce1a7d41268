//! The broker check before the spool replays: the unconfirmed records a feeder starts with may
//! be stored already (confirmed after the last checkpoint by a process that then died, or sent
//! by a publisher loop that panicked). On a sink without broker-side dedup (Kafka), and on
//! JetStream for records older than the stream's duplicate window, they are looked up on the
//! broker first (`Sink::read_back`) and the ones found there are confirmed without being sent. What could not be looked up is sent anyway and counted
//! (`hookbus_replay_unverified_total`). docs/spool.md, "Replay after a crash".

use std::time::{Duration, Instant};

use super::{Context, Job};
use crate::message::Message;
use crate::sink::{Stored, Suspects, Verdict};
use crate::spool::{Record, Spool};

/// Who sent the records before this feeder.
#[derive(Clone, Copy)]
pub(super) enum Predecessor {
    /// Another process, dead before the spool was opened (no later than `Instant`): a start
    /// after a crash, or `hookbus drain`.
    Process(Instant),
    /// This process's publisher loop, restarted after a panic: what it handed to the client is
    /// still there.
    Loop,
}

/// The verdict on the records below `end`, and what was done with them so far.
pub(super) struct Replay {
    end: u64,
    verdict: Verdict,
    /// Records below `end` not fed yet.
    left: u64,
    skipped: u64,
    unverified: u64,
    /// The `sink` label of the log lines.
    sink: &'static str,
}

/// What the feeder does with one replayed record.
pub(super) enum Step {
    Send(Job),
    /// Stored already: confirmed, not sent.
    Skip,
}

impl Replay {
    /// Judges `job` (spool record `seq`): skipped when the broker holds it, counted when that
    /// could not be known. Logs the outcome once the last checked record went by.
    pub(super) fn judge(&mut self, seq: u64, job: Job, context: &Context) -> Step {
        if seq >= self.end || self.left == 0 {
            return Step::Send(job);
        }
        self.left -= 1;
        let step = match self.verdict.stored(&job.message) {
            Stored::Yes => {
                self.skipped += 1;
                context.metrics.broker_duplicate();
                Step::Skip
            }
            Stored::Unknown => {
                self.unverified += 1;
                context.metrics.replay_unverified.inc();
                Step::Send(job)
            }
            Stored::No => Step::Send(job),
        };
        if self.left == 0 {
            self.report();
        }
        step
    }

    fn report(&self) {
        tracing::info!(
            skipped = self.skipped,
            sink = self.sink,
            "replay check done: records already on the broker were not sent again"
        );
        if self.unverified > 0 {
            tracing::warn!(
                unverified = self.unverified,
                sink = self.sink,
                "replay check incomplete: {} replayed records could not be looked up on the \
                 broker in time and were sent again; some may now be stored twice",
                self.unverified
            );
        }
    }
}

/// Looks up the spool's unconfirmed records on the broker, after waiting out what
/// `predecessor` may still have in flight. `None` when there is nothing to check (no pending
/// record, or a sink with broker-side dedup). `within` bounds the read-back; the wait before
/// it is the sink's `replay_settle` (Kafka: the producer's `request.timeout.ms`).
///
/// Cancel safe: it only reads.
pub(super) async fn check(
    spool: &Spool,
    context: &Context,
    predecessor: Predecessor,
    within: Duration,
    overflow: &[String],
) -> Option<Replay> {
    let sink = &context.sink;
    if !sink.checks_replay() || spool.stats().pending_events == 0 {
        return None;
    }
    let settle = sink.replay_settle();
    let mut blind = false;
    match predecessor {
        Predecessor::Process(opened) => {
            let until = opened + settle;
            if until > Instant::now() {
                tracing::info!(
                    ?settle,
                    "replay check: waiting out produce requests of the previous process"
                );
                tokio::time::sleep_until(until.into()).await;
            }
        }
        Predecessor::Loop => blind = !sink.wait_idle(settle).await,
    }
    let (end, suspects) = scan(spool.clone(), overflow.to_vec()).await?;
    let left = suspects.records();
    let verdict = if blind {
        Verdict::blind()
    } else {
        let started = Instant::now();
        let verdict = sink.read_back(suspects, within).await;
        tracing::info!(
            records = left,
            found = verdict.found(),
            took = ?started.elapsed(),
            sink = sink.name(),
            "replay check: read back where the replayed records go"
        );
        verdict
    };
    Some(Replay {
        end,
        verdict,
        left,
        skipped: 0,
        unverified: 0,
        sink: sink.name(),
    })
}

/// The unconfirmed records, as suspects, and one past the last seq looked at. `None` when the
/// spool cannot be read (the feeder's own reads report that).
async fn scan(spool: Spool, overflow: Vec<String>) -> Option<(u64, Suspects)> {
    let scanned = tokio::task::spawn_blocking(move || {
        let mut suspects = Suspects::default();
        let end = spool.scan_unconfirmed(|record: &Record| {
            if let Ok(job) = Job::decode(record.seq, record.payload.clone()) {
                suspects.add(&job.message, record.appended_ms);
                // A topic past `kafka.max_topics` went to the overflow destination.
                if let Some(action) = job.action
                    && let Some(topic) = overflow.get(action as usize)
                {
                    let elsewhere = Message {
                        topic: topic.clone(),
                        ..job.message
                    };
                    suspects.add_place(&elsewhere, record.appended_ms);
                }
            }
        })?;
        Ok::<_, crate::spool::SpoolError>((end, suspects))
    })
    .await;
    match scanned {
        Ok(Ok(out)) => Some(out),
        Ok(Err(error)) => {
            tracing::warn!(%error, "replay check: the spool could not be scanned");
            None
        }
        Err(_) => None,
    }
}
