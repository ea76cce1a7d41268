//! The broker check before a replay, on JetStream. Within the stream's duplicate window a
//! replayed record is dropped by its `Nats-Msg-Id`; past it (`hookbus drain` of a volume left
//! by a lost node, a spool that waited out a long outage) JetStream dedups nothing either, so
//! the stream is read back, headers only, from a little before the oldest replayed record was
//! written, and every `Nats-Msg-Id` found on their subjects marks a record that is skipped.
//! Bounded in time and bytes; what cannot be read in full is unverified (published anyway).

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures::StreamExt;

use super::nats::NatsSink;
use super::readback::{CLOCK_MARGIN_MS, MAX_READ_BYTES};
use super::{Suspects, Verdict};

/// How long after the check the replayed records may still reach the stream: a record whose
/// id leaves the window before then is looked up too.
const PUBLISH_MARGIN: Duration = Duration::from_secs(30);

impl NatsSink {
    /// Which of `suspects` the stream holds already, read back within `within`; everything
    /// [`Stored::No`](super::Stored::No) (sent, and JetStream drops a repeat) when every
    /// record is still inside the stream's duplicate window, or without JetStream.
    pub async fn read_back(&self, suspects: Suspects, within: Duration) -> Verdict {
        let Some(oldest) = suspects.oldest_ms() else {
            return Verdict::default();
        };
        if self.jetstream.is_none() {
            return Verdict::default();
        }
        match tokio::time::timeout(within, self.read(&suspects, oldest, within)).await {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(error)) => {
                tracing::warn!(%error, sink = "nats", "replay check: the stream could not be read");
                Verdict::blind()
            }
            Err(_) => {
                tracing::warn!(
                    ?within,
                    sink = "nats",
                    "replay check: the stream was not read in time"
                );
                Verdict::blind()
            }
        }
    }

    async fn read(
        &self,
        suspects: &Suspects,
        oldest: u64,
        within: Duration,
    ) -> Result<Verdict, String> {
        let js = self.jetstream.as_ref().ok_or("no JetStream")?;
        let mut stream = js
            .get_stream(&self.stream)
            .await
            .map_err(|e| e.to_string())?;
        let info = stream.info().await.map_err(|e| e.to_string())?.clone();
        let window = info.config.duplicate_window;
        let now = crate::time::now_ms();
        let in_window_until = oldest.saturating_add(millis(window));
        if in_window_until > now + millis(within + PUBLISH_MARGIN) {
            // JetStream drops every repeat by its `Nats-Msg-Id`.
            return Ok(Verdict::default());
        }
        let start = oldest.saturating_sub(CLOCK_MARGIN_MS);
        let last_sequence = info.state.last_sequence;
        let last_ms = info.state.last_timestamp.unix_timestamp_nanos() / 1_000_000;
        if info.state.messages == 0 || last_ms < i128::from(start) {
            return Ok(Verdict::read(HashSet::new()));
        }
        let start_time =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(start) * 1_000_000)
                .map_err(|e| e.to_string())?;
        let topics = suspects.topics();
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartTime { start_time },
                filter_subject: match topics.len() {
                    1 => topics.iter().next().cloned().unwrap_or_default(),
                    _ => String::new(),
                },
                headers_only: true,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        let mut found = HashSet::new();
        let mut bytes = 0u64;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| e.to_string())?;
            if let Some(headers) = &message.headers {
                bytes += headers
                    .iter()
                    .map(|(name, values)| {
                        AsRef::<str>::as_ref(name).len()
                            + values.iter().map(|v| v.as_str().len()).sum::<usize>()
                    })
                    .sum::<usize>() as u64;
                if topics.contains(message.subject.as_str())
                    && let Some(id) = headers.get(async_nats::header::NATS_MESSAGE_ID)
                {
                    found.insert(id.as_str().to_owned());
                }
            }
            if bytes > MAX_READ_BYTES {
                return Err(format!(
                    "more than {MAX_READ_BYTES} bytes of headers to read"
                ));
            }
            let info = message.info().map_err(|e| e.to_string())?;
            // Caught up, or past what the stream held when the check began.
            if info.pending == 0 || info.stream_sequence >= last_sequence {
                break;
            }
        }
        Ok(Verdict::read(found))
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
