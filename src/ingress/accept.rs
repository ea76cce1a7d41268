//! The request pipeline without HTTP: body bytes → events → duplicates dropped → new events
//! accepted under the ack mode (queue, spool or broker confirmation). Ids are committed in the
//! dedup set only once the accept succeeded, and released when it failed, so a retry after a
//! 503 is published rather than mistaken for a duplicate. Rejected bodies go to the
//! dead-letter destination before the 400 is sent.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::IngressError;
use crate::config::AuthConfig;
use crate::dedup::{Key, Seen, SharedDedup};
use crate::metrics::Metrics;
use crate::normalize::{self, Event};
use crate::publisher::{self, Done, Job, QueueSender};
use crate::route::Router;
use crate::sink::{self, Message, Sink};
use crate::spool::{Spool, SpoolError};

/// Where accepted jobs go, per `ack.mode`.
pub enum Acceptor {
    /// 200 after enqueue on the bounded queue.
    Memory(QueueSender),
    /// 200 after the spool append is fsynced.
    Spool(Spool),
    /// 200 after the broker confirmed, within `timeout`.
    Publish {
        queue: QueueSender,
        timeout: Duration,
    },
}

/// The outcome of a successful request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub accepted: usize,
    pub duplicates: usize,
}

/// Shared state of the webhook listener.
pub struct Ingress {
    pub router: Router,
    pub dedup: Arc<SharedDedup>,
    pub metrics: Metrics,
    pub acceptor: Acceptor,
    pub auth: AuthConfig,
    pub max_body_bytes: usize,
    pub retry_after: Duration,
    pub sink: Arc<Sink>,
    pub dead_letter_dir: PathBuf,
}

impl Ingress {
    /// Whether requests must present `auth.token`.
    pub fn token_required(&self) -> bool {
        !self.auth.token.is_empty()
    }

    /// Constant-time comparison of the presented token with `auth.token`.
    pub fn authorized(&self, presented: Option<&[u8]>) -> bool {
        if self.auth.token.is_empty() {
            return true;
        }
        let Some(presented) = presented else {
            return false;
        };
        let expected = self.auth.token.as_bytes();
        let mut diff = u8::from(presented.len() != expected.len());
        for (i, &e) in expected.iter().enumerate() {
            diff |= e ^ presented.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }

    /// Runs one webhook body through the pipeline.
    ///
    /// # Errors
    /// `InvalidPayload` (after dead-lettering the body), `Forbidden`, or `Unavailable` when
    /// the events cannot be accepted now (queue or spool full, broker unconfirmed, a retry
    /// of the same event still in progress).
    pub async fn handle(&self, body: Bytes, received_ms: u64) -> Result<Accepted, IngressError> {
        let events = match normalize::normalize(&body, received_ms) {
            Ok(events) => events,
            Err(error) => {
                let message = error.to_string();
                self.dead_letter(body, "invalid_payload", &message, received_ms)
                    .await?;
                return Err(IngressError::InvalidPayload(message));
            }
        };
        if !self.auth.allowed_sub_keys.is_empty() {
            for event in &events {
                let allowed = event
                    .sub_key
                    .as_ref()
                    .is_some_and(|k| self.auth.allowed_sub_keys.iter().any(|a| a == k));
                if !allowed {
                    return Err(IngressError::Forbidden(format!(
                        "sub_key {:?} is not in auth.allowed_sub_keys",
                        event.sub_key.as_deref().unwrap_or("")
                    )));
                }
            }
        }
        let mut jobs = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            match self.job(event) {
                Ok(job) => jobs.push(job),
                Err(error) => {
                    let message = if events.len() > 1 {
                        format!("data[{index}]: {error}")
                    } else {
                        error.to_string()
                    };
                    self.dead_letter(body, "unroutable", &message, received_ms)
                        .await?;
                    return Err(IngressError::InvalidPayload(message));
                }
            }
        }
        for event in &events {
            self.metrics.event_received(event.format, event.action);
        }

        // Phase one: claim every id as pending, or find it known.
        let mut claimed: Vec<Key> = Vec::with_capacity(events.len());
        let mut fresh = Vec::with_capacity(events.len());
        let mut duplicates = Vec::new();
        let mut in_request: HashSet<Key> = HashSet::new();
        let mut busy = false;
        for (event, job) in events.iter().zip(jobs) {
            let key = self.dedup.key(&event.id);
            if events.len() > 1 && !in_request.insert(key) {
                duplicates.push(event.action);
                continue;
            }
            match self.dedup.begin(key, received_ms) {
                Seen::New => {
                    claimed.push(key);
                    fresh.push(job);
                }
                Seen::Duplicate => duplicates.push(event.action),
                Seen::Pending => busy = true,
            }
        }
        if busy {
            self.release(&claimed);
            return Err(IngressError::Unavailable(
                "an earlier delivery of this event is still being accepted; retry shortly"
                    .to_owned(),
            ));
        }

        // Phase two: accept, then commit or release.
        let accepted = fresh.len();
        match self.accept(fresh).await {
            Ok(()) => {
                let now = publisher::now_ms();
                for key in &claimed {
                    self.dedup.commit(*key, now);
                }
                for action in &duplicates {
                    self.metrics.duplicate(*action);
                }
                Ok(Accepted {
                    accepted,
                    duplicates: duplicates.len(),
                })
            }
            Err(error) => {
                self.release(&claimed);
                Err(error)
            }
        }
    }

    fn release(&self, keys: &[Key]) {
        for key in keys {
            self.dedup.release(*key);
        }
    }

    /// Routes and serializes one event.
    fn job(&self, event: &Event) -> Result<Job, crate::route::RouteError> {
        let topic = self.router.name(event)?;
        let mut headers = Vec::with_capacity(5);
        headers.push((sink::HEADER_EVENT_ID, event.id.clone()));
        headers.push((sink::HEADER_ACTION, event.action.as_str().to_owned()));
        headers.push((sink::HEADER_CHANNEL, event.channel.clone()));
        if let Some(sub_key) = &event.sub_key {
            headers.push((sink::HEADER_SUB_KEY, sub_key.clone()));
        }
        headers.push((sink::HEADER_CONTENT_TYPE, "application/json".to_owned()));
        Ok(Job {
            message: Message {
                topic,
                key: Some(event.channel.clone()),
                headers,
                payload: Bytes::from(event.to_json()),
                msg_id: Some(event.id.clone()),
                is_event: true,
            },
            action: Some(event.action),
            received_ms: event.received_at_ms,
            event_ms: Some(
                event
                    .timestamp_ms
                    .unwrap_or_else(|| event.timestamp.saturating_mul(1000)),
            ),
            done: Done::Nobody,
        })
    }

    /// Keeps a rejected body: published byte-identical to the dead-letter destination, or
    /// written to `spool.dir/dead-letters/` when larger than the broker accepts.
    async fn dead_letter(
        &self,
        body: Bytes,
        reason: &'static str,
        error: &str,
        received_ms: u64,
    ) -> Result<(), IngressError> {
        // Leave room for the headers in the broker's message limit.
        if body.len() + 1024 > self.sink.max_message_bytes() {
            let dir = self.dead_letter_dir.clone();
            tokio::task::spawn_blocking(move || {
                publisher::write_dead_letter_file(&dir, &body, "too_large")
            })
            .await
            .map_err(|e| IngressError::Unavailable(format!("dead-letter write failed: {e}")))?;
            self.metrics.dead_letter("too_large");
            return Ok(());
        }
        let job = Job {
            message: Message {
                topic: self.router.dead_letter().to_owned(),
                key: None,
                headers: vec![
                    (sink::HEADER_DEAD_LETTER_REASON, reason.to_owned()),
                    (
                        sink::HEADER_DEAD_LETTER_ERROR,
                        truncate(error, 512).to_owned(),
                    ),
                ],
                payload: body,
                msg_id: None,
                is_event: false,
            },
            action: None,
            received_ms,
            event_ms: None,
            done: Done::Nobody,
        };
        self.accept(vec![job]).await?;
        self.metrics.dead_letter(reason);
        Ok(())
    }

    /// Accepts `jobs` under the ack mode; all or none.
    async fn accept(&self, mut jobs: Vec<Job>) -> Result<(), IngressError> {
        if jobs.is_empty() {
            return Ok(());
        }
        match &self.acceptor {
            Acceptor::Memory(queue) => {
                let count = jobs.len();
                queue.try_send_all(jobs).map_err(|_| {
                    IngressError::Unavailable("publish queue is full; retry shortly".to_owned())
                })?;
                self.metrics.acks_before_durable.inc_by(count as u64);
                Ok(())
            }
            Acceptor::Spool(spool) => {
                let records = jobs.iter().map(Job::encode).collect();
                spool
                    .append(records)
                    .await
                    .map(|_| ())
                    .map_err(|e| match e {
                        SpoolError::Full => {
                            IngressError::Unavailable("spool is full; retry shortly".to_owned())
                        }
                        other => {
                            tracing::error!(error = %other, "spool append failed");
                            IngressError::Unavailable(format!("spool unavailable: {other}"))
                        }
                    })
            }
            Acceptor::Publish { queue, timeout } => {
                let mut waiters = Vec::with_capacity(jobs.len());
                for job in &mut jobs {
                    let (tx, rx) = oneshot::channel();
                    job.done = Done::Waiter(tx);
                    waiters.push(rx);
                }
                queue.try_send_all(jobs).map_err(|_| {
                    IngressError::Unavailable("publish queue is full; retry shortly".to_owned())
                })?;
                let all = futures::future::join_all(waiters);
                let results = tokio::time::timeout(*timeout, all).await.map_err(|_| {
                    IngressError::Unavailable(format!(
                        "broker did not confirm within {timeout:?}; retry shortly"
                    ))
                })?;
                for result in results {
                    match result {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => {
                            return Err(IngressError::Unavailable(format!(
                                "broker did not confirm: {error}"
                            )));
                        }
                        Err(_) => {
                            return Err(IngressError::Unavailable(
                                "shutting down; retry shortly".to_owned(),
                            ));
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
