//! The request pipeline without HTTP: body bytes → events → duplicates dropped → new events
//! accepted under the ack mode (queue, spool or broker confirmation).
//!
//! Each request's pipeline runs in a task of its own ([`Ingress::handle`]): once the body is
//! read, nothing the client does (giving up, disconnecting) can stop it half-way, so every
//! claimed id is committed or released by its owner. Ids are committed only once the accept
//! succeeded, and released when it failed, so a retry after a 503 is published rather than
//! mistaken for a duplicate; a retry that finds the id still pending waits for the outcome.
//! Rejected bodies go to the dead-letter destination before the 400 is sent, once per window.

use std::collections::HashSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{IngressError, Unauthorized};
use crate::config::{AckConfig, AuthConfig, HttpConfig, RoutingConfig};
use crate::dedup::{Claims, Held, Id, Key, Seen};
use crate::faults::Faults;
use crate::message::{self, DeadLetterBudget, DeadLetterDir, DiskMeta};
use crate::metrics::Metrics;
use crate::normalize::{self, Event};
use crate::publisher::{Done, Job, QueueSender, Ticket};
use crate::route::Router;
use crate::spool::{Spool, SpoolError};
use crate::time::now_ms;

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
    /// Invalid items of an Events & Actions batch, each dead-lettered on its own.
    pub rejected: usize,
}

/// A request's messages between normalizing and claiming.
struct Candidates {
    /// Each message to claim: its id, its event's action (`None` for a dead letter), the job.
    unique: Vec<(Id, Option<normalize::Action>, Job)>,
    /// Actions of the events repeated within the request.
    duplicates: Vec<normalize::Action>,
    /// Invalid items in the batch.
    rejected: usize,
    /// Invalid items kept on disk with the whole body (the dead-letter budget was spent), by
    /// index, and the first one's error.
    spilled: Vec<usize>,
    spilled_error: String,
}

/// What the webhook listener is built from besides its config sections: the parts it shares
/// with the rest of the process.
pub struct Parts {
    pub router: Router,
    pub claims: Arc<Claims>,
    pub metrics: Metrics,
    pub acceptor: Acceptor,
    /// The largest message the broker takes now (it may say so only once connected).
    pub max_message_bytes: Arc<dyn Fn() -> usize + Send + Sync>,
    pub dead_letter_dir: Arc<DeadLetterDir>,
    /// The CloudEvents header names for the sink (`routing.cloudevents`), or `None`.
    pub cloudevents: Option<&'static [&'static str; 7]>,
    pub faults: Faults,
}

/// Shared state of the webhook listener.
pub struct Ingress {
    pub(super) router: Router,
    pub(super) claims: Arc<Claims>,
    pub(super) metrics: Metrics,
    pub(super) acceptor: Acceptor,
    pub(super) allowed_sub_keys: Vec<String>,
    /// `auth.header`, lowercased.
    pub(super) auth_header: String,
    /// `auth.token` and `auth.tokens`, the non-empty ones.
    pub(super) tokens: Vec<String>,
    pub(super) max_body_bytes: usize,
    pub(super) max_batch_items: usize,
    pub(super) request_timeout: Duration,
    /// Bodies being read or processed, in KiB (`http.max_inflight_bytes`).
    pub(super) body_budget: Arc<Semaphore>,
    pub(super) retry_after: Duration,
    /// How long a retry waits for an earlier delivery of the same event to be decided.
    pub(super) pending_wait: Duration,
    pub(super) max_message_bytes: Arc<dyn Fn() -> usize + Send + Sync>,
    pub(super) dead_letter_dir: Arc<DeadLetterDir>,
    /// Bytes of dead letters the broker may take per window; beyond, they go to the dir.
    pub(super) dead_letter_budget: DeadLetterBudget,
    pub(super) cloudevents: Option<&'static [&'static str; 7]>,
    pub(super) faults: Faults,
}

impl Ingress {
    /// The webhook listener's state from its config sections and the shared [`Parts`].
    pub fn new(
        http: &HttpConfig,
        auth: &AuthConfig,
        ack: &AckConfig,
        routing: &RoutingConfig,
        parts: Parts,
    ) -> Ingress {
        Ingress {
            router: parts.router,
            claims: parts.claims,
            metrics: parts.metrics,
            acceptor: parts.acceptor,
            allowed_sub_keys: auth.allowed_sub_keys.clone(),
            auth_header: auth.header.to_ascii_lowercase(),
            tokens: auth.accepted().into_iter().map(str::to_owned).collect(),
            max_body_bytes: http.max_body_bytes,
            max_batch_items: http.max_batch_items,
            request_timeout: http.request_timeout,
            body_budget: Arc::new(Semaphore::new(http.max_inflight_bytes.div_ceil(1024))),
            retry_after: ack.retry_after,
            pending_wait: ack.publish_timeout,
            max_message_bytes: parts.max_message_bytes,
            dead_letter_dir: parts.dead_letter_dir,
            dead_letter_budget: DeadLetterBudget::new(
                routing.dead_letter_budget_bytes,
                routing.dead_letter_budget_window,
            ),
            cloudevents: parts.cloudevents,
            faults: parts.faults,
        }
    }

    /// Whether requests must present a token.
    pub fn token_required(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Compares the presented token with every accepted one, in constant time (no early exit
    /// on a mismatch, none on a match either).
    ///
    /// # Errors
    /// Why the request is refused.
    pub fn authorized(&self, presented: Option<&[u8]>) -> Result<(), Unauthorized> {
        super::check_token(&self.tokens, presented)
    }

    /// Counts `bytes` of body against `http.max_inflight_bytes` until the returned permit is
    /// dropped.
    ///
    /// # Errors
    /// `Unavailable` (503) when the budget has no room now.
    pub fn reserve_body(&self, bytes: usize) -> Result<OwnedSemaphorePermit, IngressError> {
        let kib = u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        self.body_budget
            .clone()
            .try_acquire_many_owned(kib)
            .map_err(|_| {
                IngressError::Unavailable(
                    "too many request bodies in flight (http.max_inflight_bytes); retry shortly"
                        .to_owned(),
                )
            })
    }

    /// Runs one webhook body through the pipeline.
    ///
    /// Cancel safe: dropping the returned future (the client left) does not stop the
    /// pipeline; its events are accepted (or not) exactly as if the client had stayed, and a
    /// retry learns the outcome. The pipeline is polled once here, in the request's own
    /// future: when it finishes without waiting (the common case in `memory` mode) no task is
    /// spawned, and nothing can be cancelled because nothing was awaited. When it must wait
    /// (the spool's fsync, the broker's confirmation, a pending retry, the shared store), the
    /// rest moves into a task of its own before this future can be dropped. A panic in the
    /// pipeline is answered 503 either way.
    ///
    /// # Errors
    /// `InvalidPayload` (after dead-lettering the body), `Forbidden`, `TooManyItems`, or
    /// `Unavailable` when
    /// the events cannot be accepted now (queue or spool full, broker unconfirmed, an earlier
    /// delivery of the same event still undecided).
    pub async fn handle(
        self: &Arc<Self>,
        body: Bytes,
        received_ms: u64,
        budget: OwnedSemaphorePermit,
    ) -> Result<Accepted, IngressError> {
        let this = self.clone();
        let mut task = Box::pin(async move {
            let result = this.process(body, received_ms).await;
            drop(budget);
            result
        });
        let first = std::future::poll_fn(|cx| {
            Poll::Ready(std::panic::catch_unwind(AssertUnwindSafe(|| {
                task.as_mut().poll(cx)
            })))
        })
        .await;
        let outcome = match first {
            Ok(Poll::Ready(result)) => return result,
            Ok(Poll::Pending) => tokio::spawn(task).await.map_err(|e| e.to_string()),
            Err(panic) => Err(crate::text::panic_message(panic.as_ref())),
        };
        outcome.unwrap_or_else(|error| {
            tracing::error!(%error, "webhook pipeline failed");
            Err(IngressError::Unavailable(
                "internal error while accepting; retry shortly".to_owned(),
            ))
        })
    }

    /// The pipeline, step by step over one [`Candidates`]: normalize → check sub_keys → build
    /// messages → drop repeats within the request → add the invalid items' dead letters →
    /// claim → accept.
    async fn process(&self, body: Bytes, received_ms: u64) -> Result<Accepted, IngressError> {
        let normalized = self.normalize(&body, received_ms).await?;
        self.check_sub_keys(&normalized.events)?;
        let jobs = self
            .messages(&body, &normalized.events, received_ms)
            .await?;
        for event in &normalized.events {
            self.metrics.event_received(event.format, event.action);
        }
        let mut candidates = self.unique(&normalized.events, jobs);
        self.rejected_items(&mut candidates, &body, normalized, received_ms);
        self.claim_and_accept(candidates, body).await
    }

    /// The body's events; a body that is invalid as a whole is dead-lettered, then refused.
    async fn normalize(
        &self,
        body: &Bytes,
        received_ms: u64,
    ) -> Result<normalize::Normalized, IngressError> {
        match normalize::normalize_items(body, received_ms, self.max_batch_items) {
            Ok(normalized) => Ok(normalized),
            Err(normalize::NormalizeError::TooManyItems { count, max }) => {
                Err(IngressError::TooManyItems { count, max })
            }
            Err(error) => {
                let message = error.to_string();
                self.dead_letter(body.clone(), "invalid_payload", &message, received_ms)
                    .await?;
                Err(IngressError::InvalidPayload(message))
            }
        }
    }

    /// `Forbidden` when `auth.allowed_sub_keys` is set and an event's keyset is not in it.
    fn check_sub_keys(&self, events: &[Event]) -> Result<(), IngressError> {
        if self.allowed_sub_keys.is_empty() {
            return Ok(());
        }
        for event in events {
            let allowed = event
                .sub_key
                .as_ref()
                .is_some_and(|k| self.allowed_sub_keys.iter().any(|a| a == k));
            if !allowed {
                self.metrics.auth_failure("forbidden_sub_key");
                return Err(IngressError::Forbidden(format!(
                    "sub_key {:?} is not in auth.allowed_sub_keys",
                    event.sub_key.as_deref().unwrap_or("")
                )));
            }
        }
        Ok(())
    }

    /// One message per event; a name no broker accepts refuses the body (dead-lettered).
    async fn messages(
        &self,
        body: &Bytes,
        events: &[Event],
        received_ms: u64,
    ) -> Result<Vec<Job>, IngressError> {
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
                    self.dead_letter(body.clone(), "unroutable", &message, received_ms)
                        .await?;
                    return Err(IngressError::InvalidPayload(message));
                }
            }
        }
        Ok(jobs)
    }

    /// The events to claim: the same id twice in one batch counts once, the rest are
    /// duplicates.
    fn unique(&self, events: &[Event], jobs: Vec<Job>) -> Candidates {
        let mut candidates = Candidates {
            unique: Vec::with_capacity(events.len()),
            duplicates: Vec::new(),
            rejected: 0,
            spilled: Vec::new(),
            spilled_error: String::new(),
        };
        let mut in_request: HashSet<Key> = HashSet::new();
        for (event, job) in events.iter().zip(jobs) {
            let id = self.claims.id(&event.id);
            if events.len() > 1 && !in_request.insert(id.key()) {
                candidates.duplicates.push(event.action);
                continue;
            }
            candidates.unique.push((id, Some(event.action), job));
        }
        candidates
    }

    /// Invalid items are dead-lettered one by one, each once per window (PubNub retries the
    /// whole batch), while the window's dead-letter budget lasts; the items beyond it are kept
    /// with the whole body in one file on disk ([`Ingress::spill`]).
    fn rejected_items(
        &self,
        candidates: &mut Candidates,
        body: &Bytes,
        normalized: normalize::Normalized,
        received_ms: u64,
    ) {
        let rejected = normalized.rejected;
        candidates.rejected = rejected.len();
        if rejected.is_empty() {
            return;
        }
        // One SHA-256 of the body: the dead letters' ids and the batch digest they carry.
        let sha = normalize::batch_digest(body);
        let body_id = normalize::body_id_of(&sha);
        let digest = crate::text::hex(&sha);
        let schema = normalized.schema.unwrap_or_default();
        let now = now_ms();
        for item in rejected {
            if !candidates.spilled.is_empty()
                || !self.dead_letter_budget.try_take(item.span.len(), now)
            {
                if candidates.spilled.is_empty() {
                    candidates.spilled_error = item.error.to_string();
                }
                candidates.spilled.push(item.index);
                continue;
            }
            let id = format!("dead-letter:{body_id}:{}", item.index);
            let job = self.dead_letter_job(
                body.slice(item.span),
                "invalid_item",
                &item.error.to_string(),
                Some((item.index, &schema, &digest)),
                id,
                received_ms,
            );
            let key = self
                .claims
                .id(job.message.msg_id.as_deref().unwrap_or_default());
            candidates.unique.push((key, None, job));
        }
    }

    /// Claims every candidate's id, then accepts the new ones under the ack mode.
    async fn claim_and_accept(
        &self,
        candidates: Candidates,
        body: Bytes,
    ) -> Result<Accepted, IngressError> {
        let Candidates {
            unique,
            mut duplicates,
            rejected,
            spilled,
            spilled_error,
        } = candidates;
        let keys: Vec<Id> = unique.iter().map(|(id, _, _)| id.clone()).collect();
        let mut held = Held::new(&self.claims);
        // One deadline for the request: a retry that waited on an undecided first delivery
        // and then became the owner has what is left of it for the publish, not a second
        // `ack.publish_timeout` (PubNub gives up after 5 s).
        let deadline = tokio::time::Instant::now() + self.pending_wait;
        let found = self
            .claims
            .claim(&keys, now_ms, self.pending_wait, &mut held)
            .await
            .map_err(|pending| {
                IngressError::Unavailable(format!(
                    "an earlier delivery of {pending} of these events is still being accepted; \
                     retry shortly"
                ))
            })?;
        self.faults.accept_gate().await;
        let mut fresh = Vec::with_capacity(unique.len());
        let mut dead_lettered = 0;
        for ((key, action, job), found) in unique.into_iter().zip(found) {
            match (found, action) {
                (Seen::New, None) => {
                    dead_lettered += 1;
                    fresh.push((key, job));
                }
                (Seen::New, Some(_)) => fresh.push((key, job)),
                (Seen::Duplicate, Some(action)) => duplicates.push(action),
                (Seen::Duplicate, None) => {}
                // `claim` waits pending ids out; should one come back, the retry decides.
                (Seen::Pending, _) => {
                    return Err(IngressError::Unavailable(
                        "an earlier delivery of these events is still being accepted; retry \
                         shortly"
                            .to_owned(),
                    ));
                }
            }
        }
        let accepted = fresh.len() - dead_lettered;
        if !spilled.is_empty() {
            let count = spilled.len();
            let mut meta = DiskMeta::new("invalid_item", &spilled_error);
            meta.items = Some(spilled);
            self.spill(body, meta, count).await;
        }
        self.accept(fresh, held, deadline).await?;
        for action in &duplicates {
            self.metrics.duplicate(*action);
        }
        for _ in 0..dead_lettered {
            self.metrics.dead_letter("invalid_item");
        }
        Ok(Accepted {
            accepted,
            duplicates: duplicates.len(),
            rejected,
        })
    }

    /// Routes and serializes one event.
    fn job(&self, event: &Event) -> Result<Job, crate::route::RouteError> {
        Ok(Job {
            message: message::event(&self.router, event, self.cloudevents)?,
            action: Some(event.action),
            received_ms: event.received_at_ms,
            event_ms: Some(
                event
                    .timestamp_ms
                    .unwrap_or_else(|| event.timestamp.saturating_mul(1000)),
            ),
            done: Done::Nobody,
            charge: None,
        })
    }

    /// Accepts `jobs` (each with its pending key, held in `held`) under the ack mode, all or
    /// none, and settles their keys: committed on success, released on failure.
    pub(super) async fn accept(
        &self,
        jobs: Vec<(Id, Job)>,
        mut held: Held,
        deadline: tokio::time::Instant,
    ) -> Result<(), IngressError> {
        if jobs.is_empty() {
            return Ok(());
        }
        match &self.acceptor {
            Acceptor::Memory(queue) => {
                let count = jobs.len();
                queue
                    .try_send_all(jobs.into_iter().map(|(_, job)| job).collect())
                    .map_err(|(_, why)| IngressError::Unavailable(why.message().to_owned()))?;
                held.commit_all(now_ms());
                self.metrics.acks_before_durable.inc_by(count as u64);
                Ok(())
            }
            Acceptor::Spool(spool) => {
                let records = jobs.iter().map(|(_, job)| job.encode()).collect();
                match spool.append(records).await {
                    Ok(_) => {
                        held.commit_all(now_ms());
                        Ok(())
                    }
                    Err(SpoolError::Full) => Err(IngressError::Unavailable(
                        "spool is full; retry shortly".to_owned(),
                    )),
                    Err(other) => {
                        tracing::error!(error = %other, "spool append failed");
                        Err(IngressError::Unavailable(format!(
                            "spool unavailable: {other}"
                        )))
                    }
                }
            }
            Acceptor::Publish { queue, timeout } => {
                let mut tickets = Vec::with_capacity(jobs.len());
                let mut waiters = Vec::with_capacity(jobs.len());
                let mut queued = Vec::with_capacity(jobs.len());
                for (key, mut job) in jobs {
                    let (ticket, waiter) = Ticket::new(&self.claims, held.hand_over(&key));
                    job.done = Done::Ticket(ticket.clone());
                    tickets.push(ticket);
                    waiters.push(waiter);
                    queued.push(job);
                }
                drop(held);
                // On failure the jobs come back and are dropped with their tickets, which
                // releases their ids.
                queue
                    .try_send_all(queued)
                    .map_err(|(_, why)| IngressError::Unavailable(why.message().to_owned()))?;
                let all = futures::future::join_all(waiters);
                let until = deadline.min(tokio::time::Instant::now() + *timeout);
                match tokio::time::timeout_at(until, all).await {
                    Ok(results) if results.iter().all(Result::is_ok) => Ok(()),
                    // A ticket dropped unsettled: the publisher lost the job (it restarted after
                    // a panic, or its drain was cut at the shutdown deadline).
                    Ok(_) => Err(IngressError::Unavailable(
                        "the publisher dropped the event before the broker confirmed it \
                         (restart or shutdown); retry shortly"
                            .to_owned(),
                    )),
                    Err(_) => {
                        // Jobs still queued are withdrawn (never sent, ids released); those the
                        // producer has settle their ids when confirmed, so the retry of one that
                        // gets stored is a duplicate, never a second publish.
                        let withdrawn = tickets.iter().filter(|t| t.withdraw()).count();
                        tracing::debug!(
                            withdrawn,
                            pending = tickets.len() - withdrawn,
                            "publish wait timed out"
                        );
                        Err(IngressError::Unavailable(format!(
                            "broker did not confirm within {timeout:?}; retry shortly"
                        )))
                    }
                }
            }
        }
    }
}
