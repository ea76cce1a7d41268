//! Dead letters of the request pipeline: a rejected body or batch item goes to the dead-letter
//! destination (once per dedup window), or, beyond the broker's message limit or the window's
//! dead-letter budget, to `spool.dir/dead-letters/`, and is dropped and counted only once that
//! is full.

use bytes::Bytes;

use super::IngressError;
use super::pipeline::Ingress;
use crate::dedup::{Held, Seen};
use crate::message::{self, DeadLetter, DiskMeta};
use crate::normalize;
use crate::publisher::{Done, Job};
use crate::time::now_ms;

impl Ingress {
    /// Keeps a rejected body: published byte-identical to the dead-letter destination, or
    /// written to `spool.dir/dead-letters/` when larger than the broker accepts. The same body
    /// again within the dedup window (PubNub retrying a 400) is not dead-lettered twice.
    pub(super) async fn dead_letter(
        &self,
        body: Bytes,
        reason: &'static str,
        error: &str,
        received_ms: u64,
    ) -> Result<(), IngressError> {
        let id = format!("dead-letter:{}", normalize::body_id(&body));
        let key = self.claims.id(&id);
        let mut held = Held::new(&self.claims);
        let deadline = tokio::time::Instant::now() + self.pending_wait;
        let found = self
            .claims
            .claim(
                std::slice::from_ref(&key),
                now_ms,
                self.pending_wait,
                &mut held,
            )
            .await
            .map_err(|_| {
                IngressError::Unavailable(
                    "an earlier delivery of this body is still being dead-lettered; retry shortly"
                        .to_owned(),
                )
            })?;
        if found != [Seen::New] {
            return Ok(());
        }
        let job = self.dead_letter_job(body, reason, error, None, id, received_ms);
        // The same figure the sink checks: payload, key and headers.
        if job.message.size() > (self.max_message_bytes)() {
            let meta = DiskMeta::new("too_large", error);
            if self.write_dead_letter(job.message.payload, meta).await {
                held.commit_all(now_ms());
                self.metrics.dead_letter("too_large");
            }
            return Ok(());
        }
        if !self
            .dead_letter_budget
            .try_take(job.message.payload.len(), now_ms())
        {
            let meta = DiskMeta::new(reason, error);
            self.spill(job.message.payload, meta, 1).await;
            held.commit_all(now_ms());
            return Ok(());
        }
        self.accept(vec![(key, job)], held, deadline).await?;
        self.metrics.dead_letter(reason);
        Ok(())
    }

    /// Keeps `body` on disk as the dead letter of `count` refused items (or of itself) once the
    /// window's broker budget is spent; counted as dead letters of `meta.reason`, and as
    /// spilled.
    pub(super) async fn spill(&self, body: Bytes, meta: DiskMeta, count: usize) {
        let reason = meta.reason.clone();
        if self.write_dead_letter(body, meta).await {
            self.metrics.dead_letters_spilled.inc_by(count as u64);
            for _ in 0..count {
                self.metrics.dead_letter(&reason);
            }
        } else if count > 1 {
            // One `dropped` was counted for the body; the other items went with it.
            for _ in 1..count {
                self.metrics.dead_letter("dropped");
            }
        }
    }

    /// Writes a dead letter to `spool.dir/dead-letters/` off the runtime; `false` (counted as
    /// dropped, logged at a bounded rate) when the directory is at its budget or the disk
    /// refuses. The answer to the client does not depend on it: the body is refused either
    /// way.
    async fn write_dead_letter(&self, body: Bytes, meta: DiskMeta) -> bool {
        let dir = self.dead_letter_dir.clone();
        let bytes = body.len();
        let written = tokio::task::spawn_blocking(move || dir.write(&body, &meta)).await;
        let error = match written {
            Ok(Ok(_)) => return true,
            Ok(Err(error)) => error.to_string(),
            Err(error) => error.to_string(),
        };
        self.metrics.dead_letter("dropped");
        if let Some(suppressed) = message::DROPPED_LOG.admit(now_ms()) {
            tracing::error!(%error, bytes, suppressed, "dead letter dropped");
        }
        false
    }

    /// The dead letter of a rejected body or batch item: its bytes as they came, the reason,
    /// the error sent to the client and, for an item, its index in the batch, the batch's
    /// schema and the batch body's hex SHA-256.
    pub(super) fn dead_letter_job(
        &self,
        payload: Bytes,
        reason: &'static str,
        error: &str,
        item: Option<(usize, &str, &str)>,
        id: String,
        received_ms: u64,
    ) -> Job {
        let why = DeadLetter {
            reason,
            error,
            index: item.map(|(index, _, _)| index),
            batch: item.map(|(_, schema, digest)| (schema, digest)),
        };
        Job {
            message: message::dead_letter(payload, &why, self.router.dead_letter(), None, Some(id)),
            action: None,
            received_ms,
            event_ms: None,
            done: Done::Nobody,
            charge: None,
        }
    }
}
