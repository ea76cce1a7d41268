//! Stdout sink for trying hookbus without a broker: one JSON line per message,
//! `{"subject": …, "headers": {…}, "event": {…}}` (dead letters carry `"body"` instead of
//! `"event"`). Lines are written by a dedicated thread so the runtime never blocks on a pipe.

use std::io::Write;
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{Ack, Confirm, SinkError};
use crate::message::Message;

type Line = (Vec<u8>, Option<oneshot::Sender<()>>);

pub struct StdoutSink {
    lines: mpsc::Sender<Line>,
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self::new()
    }
}

impl StdoutSink {
    pub fn new() -> StdoutSink {
        let (lines, rx) = mpsc::channel::<Line>();
        std::thread::Builder::new()
            .name("hookbus-stdout".to_owned())
            .spawn(move || write_lines(rx))
            .map(|_| ())
            .unwrap_or_else(|error| tracing::error!(%error, "cannot start the stdout writer"));
        StdoutSink { lines }
    }

    pub fn send(&self, message: &Message) -> Result<Confirm, SinkError> {
        let line = render(message);
        let (tx, rx) = oneshot::channel();
        self.lines
            .send((line, Some(tx)))
            .map_err(|_| SinkError::Permanent("stdout writer stopped".to_owned()))?;
        Ok(Box::pin(async move {
            rx.await
                .map(|()| Ack::default())
                .map_err(|_| SinkError::Permanent("stdout closed".to_owned()))
        }))
    }

    pub async fn flush(&self, timeout: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.lines.send((Vec::new(), Some(tx))).is_ok() {
            let _ = tokio::time::timeout(timeout, rx).await;
        }
    }
}

/// One line; the event payload is already JSON and goes in as is (no parse and re-encode).
fn render(message: &Message) -> Vec<u8> {
    let headers: serde_json::Map<String, serde_json::Value> = message
        .headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String(v.clone())))
        .collect();
    let mut line = Vec::with_capacity(message.payload.len() + 256);
    line.extend_from_slice(b"{\"subject\":");
    // Serializing a str or a map of strings into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut line, &message.topic);
    line.extend_from_slice(b",\"headers\":");
    let _ = serde_json::to_writer(&mut line, &headers);
    if message.is_event {
        line.extend_from_slice(b",\"event\":");
        line.extend_from_slice(&message.payload);
    } else {
        line.extend_from_slice(b",\"body\":");
        let _ = serde_json::to_writer(&mut line, &String::from_utf8_lossy(&message.payload));
    }
    line.extend_from_slice(b"}\n");
    line
}

fn write_lines(rx: mpsc::Receiver<Line>) {
    let stdout = std::io::stdout();
    let mut waiting = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut out = stdout.lock();
        let mut next = Some(first);
        // Write everything queued, flush once, then confirm: one syscall for a burst.
        while let Some((line, done)) = next {
            if out.write_all(&line).is_err() {
                return;
            }
            waiting.extend(done);
            next = rx.try_recv().ok();
        }
        if out.flush().is_err() {
            return;
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_with_the_event_embedded() {
        let mut message = Message {
            topic: "presence.room_2Elobby.join".to_owned(),
            key: None,
            headers: vec![(crate::message::HEADER_CHANNEL, "room.\"lobby\"".to_owned())],
            payload: bytes::Bytes::from_static(br#"{"id":"x","n":1}"#),
            msg_id: None,
            is_event: true,
        };
        let line: serde_json::Value = serde_json::from_slice(&render(&message)).unwrap();
        assert_eq!(
            line,
            serde_json::json!({
                "subject": "presence.room_2Elobby.join",
                "headers": {"hookbus-channel": "room.\"lobby\""},
                "event": {"id": "x", "n": 1}
            })
        );
        message.is_event = false;
        message.payload = bytes::Bytes::from_static(b"not json \xff");
        let line: serde_json::Value = serde_json::from_slice(&render(&message)).unwrap();
        assert_eq!(line["body"], "not json \u{fffd}");
    }
}
