//! The JetStream side of the NATS sink: the event stream and the dead-letter stream, created
//! if missing with the configured retention, an event stream made before dead letters had
//! their own narrowed, and the warnings an operator should see about an existing stream.

use async_nats::jetstream::{self, stream};

use super::SinkError;
use super::nats::NatsSink;
use crate::config::StreamStorage;
use crate::route::subject_covers;

impl NatsSink {
    /// Creates the event stream and the dead-letter stream if missing, with the configured
    /// retention; an existing stream is left alone (each setting that differs from the
    /// configuration, or subject it does not cover, is returned as a warning), except that an
    /// event stream whose subjects also take the dead-letter subject (every stream made before
    /// dead letters had their own) is narrowed to the event subjects.
    ///
    /// # Errors
    /// `Retriable` while the broker is unreachable, or while a stream that takes the
    /// dead-letter subject cannot be narrowed (the message says what to run).
    pub async fn prepare(&self) -> Result<Vec<String>, SinkError> {
        if !self.wait_connected().await {
            return Err(self.diagnose().await);
        }
        let Some(js) = &self.jetstream else {
            return Ok(Vec::new());
        };
        let c = &self.config;
        let wanted = stream::Config {
            name: self.stream.clone(),
            subjects: self.subjects.clone(),
            duplicate_window: c.duplicate_window,
            max_age: c.max_age,
            max_bytes: limit(c.max_bytes),
            num_replicas: c.replicas,
            storage: storage(c.storage),
            ..Default::default()
        };
        // Returns the existing stream untouched when there is one: its owner's settings win.
        let mut existing = js.get_or_create_stream(wanted.clone()).await.map_err(|e| {
            SinkError::Retriable(format!("get or create stream {}: {e}", self.stream))
        })?;
        let mut warnings = self.narrow(js, &mut existing).await?;
        self.prepare_dead_letters(js).await?;
        let info = existing
            .info()
            .await
            .map_err(|e| SinkError::Retriable(format!("stream info: {e}")))?;
        let have = &info.config;
        let mut differs = |setting: &str, have: String, want: String| {
            if have != want {
                warnings.push(format!(
                    "JetStream stream {} has {setting} {have}, the config says {want}; \
                     hookbus leaves an existing stream as it is",
                    self.stream
                ));
            }
        };
        differs(
            "duplicate_window",
            format!("{:?}", have.duplicate_window),
            format!("{:?}", wanted.duplicate_window),
        );
        differs(
            "max_age",
            format!("{:?}", have.max_age),
            format!("{:?}", wanted.max_age),
        );
        differs(
            "max_bytes",
            have.max_bytes.to_string(),
            wanted.max_bytes.to_string(),
        );
        differs(
            "replicas",
            have.num_replicas.to_string(),
            wanted.num_replicas.to_string(),
        );
        differs(
            "storage",
            format!("{:?}", have.storage),
            format!("{:?}", wanted.storage),
        );
        if have.duplicate_window <= self.timeout {
            warnings.push(format!(
                "JetStream stream {} has duplicate_window {:?}, not longer than sink.timeout \
                 {:?}: a message re-sent after a PubAck timeout may be stored twice",
                self.stream, have.duplicate_window, self.timeout
            ));
        }
        for subject in &self.subjects {
            let covered = have.subjects.iter().any(|s| subject_covers(s, subject));
            if !covered {
                warnings.push(format!(
                    "JetStream stream {} does not list subject {subject}: publishes there fail",
                    self.stream
                ));
            }
        }
        Ok(warnings)
    }

    /// Narrows the event stream when its subjects take the dead-letter subject: each subject
    /// that does is replaced by the event subjects it covered. Returns the warning saying so.
    async fn narrow(
        &self,
        js: &jetstream::Context,
        existing: &mut stream::Stream,
    ) -> Result<Vec<String>, SinkError> {
        let info = existing
            .info()
            .await
            .map_err(|e| SinkError::Retriable(format!("stream info: {e}")))?;
        let have = info.config.clone();
        if !have
            .subjects
            .iter()
            .any(|s| subject_covers(s, &self.dead_letter))
        {
            return Ok(Vec::new());
        }
        let mut subjects: Vec<String> = Vec::new();
        for subject in &have.subjects {
            if !subject_covers(subject, &self.dead_letter) {
                subjects.push(subject.clone());
                continue;
            }
            for event in &self.subjects {
                if subject_covers(subject, event)
                    && !subjects.iter().any(|s| subject_covers(s, event))
                {
                    subjects.push(event.clone());
                }
            }
        }
        let command = format!(
            "nats stream edit {} --subjects '{}'",
            self.stream,
            subjects.join(",")
        );
        if subjects.is_empty() {
            return Err(SinkError::Retriable(format!(
                "JetStream stream {} takes the dead-letter subject {} and none of the event \
                 subjects; set nats.stream to hookbus's own stream, or routing.dead_letter \
                 outside {:?}",
                self.stream, self.dead_letter, have.subjects
            )));
        }
        let mut narrowed = have.clone();
        narrowed.subjects = subjects.clone();
        js.update_stream(&narrowed).await.map_err(|e| {
            SinkError::Retriable(format!(
                "JetStream stream {} takes the dead-letter subject {} (subjects {:?}), and \
                 narrowing it failed: {e}; run `{command}` (dead letters have a stream of \
                 their own, {})",
                self.stream,
                self.dead_letter,
                have.subjects,
                self.config.dead_letter_stream_name()
            ))
        })?;
        Ok(vec![format!(
            "JetStream stream {} took the dead-letter subject {}: its subjects were narrowed \
             from {:?} to {:?}; dead letters now go to the stream {} (those already in {} stay \
             there)",
            self.stream,
            self.dead_letter,
            have.subjects,
            subjects,
            self.config.dead_letter_stream_name(),
            self.stream
        )])
    }

    /// Makes sure a stream takes the dead-letter subject: one that already does (an operator's,
    /// or hookbus's from an earlier start) is left as it is; else the dead-letter stream is
    /// created with the dead-letter subject alone and limits of its own
    /// (`nats.dead_letter_max_bytes`, `nats.dead_letter_max_age`).
    async fn prepare_dead_letters(&self, js: &jetstream::Context) -> Result<(), SinkError> {
        if let Ok(name) = js.stream_by_subject(self.dead_letter.clone()).await
            && name != self.stream
        {
            return Ok(());
        }
        let c = &self.config;
        let name = c.dead_letter_stream_name();
        let wanted = stream::Config {
            name: name.clone(),
            subjects: vec![self.dead_letter.clone()],
            duplicate_window: c.duplicate_window,
            max_age: c.dead_letter_max_age,
            max_bytes: limit(c.dead_letter_max_bytes),
            num_replicas: c.replicas,
            storage: storage(c.storage),
            ..Default::default()
        };
        js.get_or_create_stream(wanted).await.map_err(|e| {
            SinkError::Retriable(format!("get or create the dead-letter stream {name}: {e}"))
        })?;
        Ok(())
    }
}

/// A JetStream byte limit: 0 in the config means none (-1).
fn limit(bytes: u64) -> i64 {
    if bytes == 0 {
        -1
    } else {
        i64::try_from(bytes).unwrap_or(i64::MAX)
    }
}

fn storage(storage: StreamStorage) -> stream::StorageType {
    match storage {
        StreamStorage::File => stream::StorageType::File,
        StreamStorage::Memory => stream::StorageType::Memory,
    }
}
