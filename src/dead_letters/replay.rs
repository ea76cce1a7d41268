//! `hookbus dead-letters replay`: each dead letter through today's normalize, and what now
//! passes published as a fresh webhook's events would be (same ids, same routing, same
//! headers). Nothing is dead-lettered again; what still fails is reported and kept.

use std::time::Duration;

use bytes::Bytes;

use super::record::Record;
use super::{DeadLetter, ReadError, Source, disk};
use crate::config::Config;
use crate::message::{self, Message};
use crate::normalize::{self, Action, Event};
use crate::route::Router;
use crate::sink::{Sink, SinkError};

/// What to replay, and how.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only dead letters written at or after this time (Unix milliseconds).
    pub since_ms: Option<u64>,
    /// Only dead letters of this reason (`invalid_payload`, `invalid_item`, …).
    pub reason: Option<String>,
    /// Normalize and report, publish nothing, record nothing, remove nothing.
    pub dry_run: bool,
    /// How long the broker may take: to connect, to be read, to confirm a publish.
    pub within: Duration,
}

/// How the dead letters that matched the options ended: each is counted once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Published now (all of it valid today; on disk, its files removed).
    pub replayed: u64,
    /// Every event it holds was published by an earlier replay: nothing sent.
    pub duplicates: u64,
    /// Some or all of it still fails (what passes was published); kept.
    pub still_invalid: u64,
    /// Events published.
    pub events: u64,
}

/// Why a replay stopped before the end (exit 1): what was published so far is recorded.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("the broker: {0}")]
    Broker(String),
    #[error("the replay record {path}: {error}")]
    Record { path: String, error: std::io::Error },
}

/// A dead letter's events, and why its other parts still fail.
#[derive(Default)]
struct Plan {
    messages: Vec<Planned>,
    failing: Vec<String>,
}

/// One event to publish: its id, its action (for the overflow destination) and its message.
#[derive(Clone)]
struct Planned {
    id: String,
    action: Action,
    message: Message,
}

struct Replayer<'a> {
    config: &'a Config,
    router: Router,
    cloudevents: Option<&'static [&'static str; 7]>,
    sink: Option<Sink>,
    record: Record,
    options: &'a Options,
    summary: Summary,
}

/// Replays every dead letter that matches `options`; `report` gets one line per dead letter
/// that still fails, and progress.
///
/// # Errors
/// The broker could not be reached or read, or refused a publish; the record could not be
/// written. What was published before is recorded.
pub async fn replay(
    config: &Config,
    options: &Options,
    report: &mut (dyn FnMut(Progress<'_>) + Send),
) -> Result<Summary, ReplayError> {
    let router = Router::new(&config.routing).map_err(|e| ReplayError::Broker(e.to_string()))?;
    let dir = config.spool.dir.join("dead-letters");
    let record = Record::open(&dir).map_err(|error| ReplayError::Record {
        path: dir.join(super::record::FILE).display().to_string(),
        error,
    })?;
    let sink = if options.dry_run {
        None
    } else {
        Some(connect(config, &router, options.within).await?)
    };
    let mut replayer = Replayer {
        config,
        cloudevents: crate::app::cloudevent_names(config),
        router,
        sink,
        record,
        options,
        summary: Summary::default(),
    };
    let mut failed = None;
    let mut seen = 0u64;
    super::each(config, options.within, async |letter| {
        if !replayer.wanted(&letter) {
            return true;
        }
        seen += 1;
        match replayer.one(&letter, report).await {
            Ok(()) => {
                report(Progress::Done(seen));
                true
            }
            Err(error) => {
                failed = Some(error);
                false
            }
        }
    })
    .await?;
    if let Some(sink) = &replayer.sink {
        sink.flush(options.within).await;
    }
    match failed {
        Some(error) => Err(error),
        None => Ok(replayer.summary),
    }
}

/// What a replay tells its caller as it goes.
pub enum Progress<'a> {
    /// This many matching dead letters handled.
    Done(u64),
    /// A dead letter that still fails, and why.
    StillInvalid {
        letter: &'a DeadLetter,
        errors: &'a [String],
    },
}

/// The configured sink, ready (stream or topics known), within `within`.
async fn connect(config: &Config, router: &Router, within: Duration) -> Result<Sink, ReplayError> {
    let sink = Sink::connect(&config.sink, &config.nats, &config.kafka, router)
        .await
        .map_err(|e| ReplayError::Broker(format!("{e:#}")))?;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match sink.prepare().await {
            Ok(_) => return Ok(sink),
            Err(error) if tokio::time::Instant::now() >= deadline => {
                return Err(ReplayError::Broker(error.to_string()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

impl Replayer<'_> {
    fn wanted(&self, letter: &DeadLetter) -> bool {
        self.options.since_ms.is_none_or(|t| letter.time_ms >= t)
            && self
                .options
                .reason
                .as_ref()
                .is_none_or(|r| *r == letter.meta.reason)
    }

    /// Plans, publishes what is new, records it, and on disk removes a dead letter that is
    /// all replayed.
    async fn one(
        &mut self,
        letter: &DeadLetter,
        report: &mut (dyn FnMut(Progress<'_>) + Send),
    ) -> Result<(), ReplayError> {
        let plan = self.plan(letter);
        let mut fresh: Vec<Planned> = Vec::new();
        for planned in plan.messages.iter().cloned() {
            if !self.record.contains(&planned.id) && !fresh.iter().any(|f| f.id == planned.id) {
                fresh.push(planned);
            }
        }
        let any = !plan.messages.is_empty();
        if !self.options.dry_run && !fresh.is_empty() {
            self.publish(&mut fresh).await?;
            let ids: Vec<String> = fresh.iter().map(|f| f.id.clone()).collect();
            self.record.add(&ids).map_err(|error| ReplayError::Record {
                path: super::record::FILE.to_owned(),
                error,
            })?;
        }
        self.summary.events += fresh.len() as u64;
        if !plan.failing.is_empty() {
            self.summary.still_invalid += 1;
            report(Progress::StillInvalid {
                letter,
                errors: &plan.failing,
            });
            return Ok(());
        }
        if any && fresh.is_empty() {
            self.summary.duplicates += 1;
        } else {
            self.summary.replayed += 1;
        }
        if !self.options.dry_run
            && letter.source == Source::Disk
            && let Some(files) = &letter.files
            && let Err(error) = disk::remove(files)
        {
            tracing::warn!(%error, file = %files.0.display(), "replayed, but the file could not be removed (the record skips it next time)");
        }
        Ok(())
    }

    /// The messages a dead letter gives today, by event id, and what in it still fails.
    fn plan(&self, letter: &DeadLetter) -> Plan {
        let mut plan = Plan::default();
        let events = match events_of(letter) {
            Ok((events, failing)) => {
                plan.failing = failing;
                events
            }
            Err(error) => {
                plan.failing.push(error);
                return plan;
            }
        };
        let allowed = &self.config.auth.allowed_sub_keys;
        for event in events {
            if !allowed.is_empty()
                && !event
                    .sub_key
                    .as_ref()
                    .is_some_and(|k| allowed.iter().any(|a| a == k))
            {
                plan.failing.push(format!(
                    "sub_key {:?} is not in auth.allowed_sub_keys",
                    event.sub_key.as_deref().unwrap_or("")
                ));
                continue;
            }
            match message::event(&self.router, &event, self.cloudevents) {
                Ok(message) => plan.messages.push(Planned {
                    id: event.id.clone(),
                    action: event.action,
                    message,
                }),
                Err(error) => plan.failing.push(error.to_string()),
            }
        }
        plan
    }

    /// Sends `messages` (topics created first, `kafka.max_topics` respected) and waits for
    /// every confirmation.
    async fn publish(&self, messages: &mut [Planned]) -> Result<(), ReplayError> {
        let sink = self.sink.as_ref().expect("connected unless a dry run");
        for planned in messages.iter_mut() {
            if !sink.admit(&planned.message.topic) {
                planned
                    .message
                    .topic
                    .clone_from(&self.router.overflow_names()[planned.action as usize]);
            }
        }
        if let Some(ready) = sink.prepare_batch(messages.iter().map(|p| p.message.topic.as_str())) {
            ready.await;
        }
        let mut confirms = Vec::with_capacity(messages.len());
        for planned in messages.iter() {
            confirms.push(sink.send(&planned.message).await.map_err(broker)?);
        }
        for confirm in confirms {
            match tokio::time::timeout(self.options.within, confirm).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => return Err(broker(error)),
                Err(_) => return Err(broker(SinkError::Timeout(self.options.within))),
            }
        }
        Ok(())
    }
}

fn broker(error: SinkError) -> ReplayError {
    ReplayError::Broker(error.to_string())
}

/// What today's normalize makes of a dead letter: its events, and the errors of what still
/// fails; `Err` when nothing of it can be replayed.
fn events_of(letter: &DeadLetter) -> Result<(Vec<Event>, Vec<String>), String> {
    let payload: &Bytes = &letter.payload;
    // A message the broker refused after it was normalized (`publish_failed`, `too_large`
    // from the publisher) holds the event itself.
    if let Some(event) = as_event(payload) {
        return Ok((vec![event], Vec::new()));
    }
    let received = letter.time_ms;
    if let Some(index) = letter.meta.index {
        let Some(schema) = &letter.meta.schema else {
            return Err(format!(
                "data[{index}]: schema unknown (an older hookbus did not keep a dead-lettered \
                 item's batch schema)"
            ));
        };
        let batch = letter.meta.batch.as_deref().and_then(digest);
        return normalize::normalize_item(payload, schema, index, batch.as_ref(), received)
            .map(|event| (vec![event], Vec::new()))
            .map_err(|e| e.to_string());
    }
    let normalized =
        normalize::normalize_items(payload, received, usize::MAX).map_err(|e| e.to_string())?;
    let refused = letter.meta.items.as_ref();
    if refused.is_none() && letter.meta.reason == "invalid_item" {
        return Err(
            "which items of this batch were refused is not recorded (an older hookbus \
                    wrote this file); not replayed, so that the items published then are not \
                    published twice"
                .to_owned(),
        );
    }
    // The k-th event is the k-th item not rejected now.
    let rejected: std::collections::HashSet<usize> =
        normalized.rejected.iter().map(|r| r.index).collect();
    let total = normalized.events.len() + rejected.len();
    let indexes = (0..total).filter(|i| !rejected.contains(i));
    let was_refused = |i: &usize| refused.is_none_or(|r| r.contains(i));
    let events = indexes
        .zip(normalized.events)
        .filter(|(i, _)| was_refused(i))
        .map(|(_, e)| e)
        .collect();
    let failing = normalized
        .rejected
        .into_iter()
        .filter(|r| was_refused(&r.index))
        .map(|r| r.error.to_string())
        .collect();
    Ok((events, failing))
}

/// The normalized event a payload holds, when it is one.
fn as_event(payload: &[u8]) -> Option<Event> {
    let marker = format!("\"schema\":\"{}\"", normalize::SCHEMA);
    payload
        .windows(marker.len())
        .any(|w| w == marker.as_bytes())
        .then(|| serde_json::from_slice(payload).ok())
        .flatten()
}

/// A hex SHA-256.
fn digest(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::DiskMeta;

    fn letter(payload: &str, meta: DiskMeta) -> DeadLetter {
        DeadLetter {
            time_ms: 1_764_950_000_000,
            meta,
            source: Source::Disk,
            reference: "x".to_owned(),
            payload: Bytes::from(payload.to_owned()),
            files: None,
        }
    }

    const BATCH: &str = r#"{"schema":"pubnub.com/schemas/events/presence.user.channel.joined?v=1.0.0","data":[{"id":"a","channel":"c","userId":"u1","timestamp":"2024-01-01T00:00:00Z"},{"channel":"c","userId":"u2","timestamp":"2024-01-01T00:00:01Z"},{"id":"b","userId":"u3","timestamp":"2024-01-01T00:00:02Z"}]}"#;

    #[test]
    fn an_item_replays_as_its_batch_would_have_normalized_it() {
        let whole = normalize::normalize_items(BATCH.as_bytes(), 1, usize::MAX).unwrap();
        assert_eq!(whole.events.len(), 2);
        assert_eq!(whole.rejected.len(), 1, "the item without a channel");
        let schema = whole.schema.clone().unwrap();
        let batch = crate::text::hex(&normalize::batch_digest(BATCH.as_bytes()));
        // The second item has no id: its id comes from the batch digest and its index.
        let span = r#"{"channel":"c","userId":"u2","timestamp":"2024-01-01T00:00:01Z"}"#;
        let meta = DiskMeta {
            reason: "invalid_item".to_owned(),
            index: Some(1),
            schema: Some(schema.clone()),
            batch: Some(batch),
            ..DiskMeta::default()
        };
        let (events, failing) = events_of(&letter(span, meta.clone())).unwrap();
        assert!(failing.is_empty());
        assert_eq!(
            events[0].id, whole.events[1].id,
            "the id a fresh webhook gives"
        );
        // Without the schema (an older hookbus's dead letter) it cannot be replayed.
        let old = DiskMeta {
            schema: None,
            ..meta.clone()
        };
        let error = events_of(&letter(span, old)).unwrap_err();
        assert!(error.contains("schema unknown"), "{error}");
        // Still invalid: the error names its index.
        let bad = r#"{"id":"b","userId":"u3","timestamp":"2024-01-01T00:00:02Z"}"#;
        let meta = DiskMeta {
            index: Some(2),
            ..meta
        };
        let error = events_of(&letter(bad, meta)).unwrap_err();
        assert!(error.starts_with("data[2]"), "{error}");
    }

    #[test]
    fn a_batch_kept_whole_replays_only_the_items_it_refused() {
        let meta = DiskMeta {
            reason: "invalid_item".to_owned(),
            items: Some(vec![1, 2]),
            ..DiskMeta::default()
        };
        let (events, failing) = events_of(&letter(BATCH, meta)).unwrap();
        assert_eq!(events.len(), 1, "item 0 was published then");
        assert_eq!(events[0].uuid.as_deref(), Some("u2"));
        assert_eq!(failing.len(), 1, "item 2 still has no channel");
        let old = DiskMeta {
            reason: "invalid_item".to_owned(),
            ..DiskMeta::default()
        };
        assert!(
            events_of(&letter(BATCH, old)).is_err(),
            "refused items unknown"
        );
        let whole = DiskMeta {
            reason: "too_large".to_owned(),
            ..DiskMeta::default()
        };
        let (events, failing) = events_of(&letter(BATCH, whole)).unwrap();
        assert_eq!(
            (events.len(), failing.len()),
            (2, 1),
            "a body refused whole"
        );
    }

    #[test]
    fn an_event_the_broker_refused_replays_as_it_was() {
        let event = normalize::normalize(
            br#"{"action":"join","uuid":"u","occupancy":1,"timestamp":1700000000,"channel":"c"}"#,
            5,
        )
        .unwrap()
        .remove(0);
        let meta = DiskMeta::new("publish_failed", "refused");
        let (events, _) =
            events_of(&letter(&String::from_utf8(event.to_json()).unwrap(), meta)).unwrap();
        assert_eq!(events, vec![event]);
        assert_eq!(digest(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(digest("zz"), None);
    }
}
