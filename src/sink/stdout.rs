//! Stdout sink for trying hookbus without a broker: one JSON line per message,
//! `{"subject": …, "headers": {…}, "event": {…}}` (dead letters carry `"body"` instead of
//! `"event"`). Lines are written by a dedicated thread so the runtime never blocks on a pipe.

use std::io::Write;
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{Ack, Confirm, Message, SinkError};

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

fn render(message: &Message) -> Vec<u8> {
    let headers: serde_json::Map<String, serde_json::Value> = message
        .headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String(v.clone())))
        .collect();
    let mut line = serde_json::Map::new();
    line.insert("subject".to_owned(), message.topic.clone().into());
    line.insert("headers".to_owned(), headers.into());
    let body = if message.is_event {
        serde_json::from_slice(&message.payload).ok()
    } else {
        None
    };
    match body {
        Some(event) => line.insert("event".to_owned(), event),
        None => line.insert(
            "body".to_owned(),
            String::from_utf8_lossy(&message.payload)
                .into_owned()
                .into(),
        ),
    };
    let mut out = serde_json::to_vec(&line).unwrap_or_default();
    out.push(b'\n');
    out
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
