//! Reading back what hookbus published to Kafka: every record of some topics, all partitions,
//! from the beginning, with a real rdkafka consumer (tansu's watermarks can lag the records it
//! serves, so tests count by consuming, never by offsets).

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// One consumed record.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `hookbus-event-id` header.
    pub fn event_id(&self) -> &str {
        self.header("hookbus-event-id")
            .expect("hookbus-event-id header")
    }
}

/// A consumer of `topics` (partitions `0..partitions`) from the beginning; `properties` are
/// extra client settings (TLS, SASL).
pub struct Reader {
    consumer: BaseConsumer,
}

impl Reader {
    pub fn new(
        brokers: &str,
        topics: &[&str],
        partitions: i32,
        properties: &[(&str, &str)],
    ) -> Reader {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("group.id", "hookbus-test")
            .set("enable.auto.commit", "false")
            .set("topic.metadata.refresh.interval.ms", "500");
        for (k, v) in properties {
            config.set(*k, *v);
        }
        let consumer: BaseConsumer = config.create().expect("consumer");
        let mut assignment = TopicPartitionList::new();
        for topic in topics {
            for p in 0..partitions {
                assignment
                    .add_partition_offset(topic, p, Offset::Beginning)
                    .unwrap();
            }
        }
        consumer.assign(&assignment).expect("assign");
        Reader { consumer }
    }

    /// Reads until at least `count` records arrived, then keeps reading until nothing new
    /// arrives for `quiet` (so a repeat published late is caught too). Panics after `within`.
    pub fn read(&self, count: usize, quiet: Duration, within: Duration) -> Vec<Record> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        let mut last_new = Instant::now();
        loop {
            let now = Instant::now();
            if out.len() >= count && now.duration_since(last_new) >= quiet {
                return out;
            }
            assert!(
                now < deadline,
                "only {} of {count} records arrived within {within:?}",
                out.len()
            );
            if let Some(record) = self.poll() {
                out.push(record);
                last_new = Instant::now();
            }
        }
    }

    /// The next record, or `None` when none arrived within 100 ms (or the poll was an error:
    /// the client retries by itself). Header values are hookbus's strings: UTF-8 or a panic.
    pub fn poll(&self) -> Option<Record> {
        let m = self.consumer.poll(Duration::from_millis(100))?.ok()?;
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| {
                        let value = x.value.unwrap_or_default().to_vec();
                        let value = String::from_utf8(value)
                            .unwrap_or_else(|e| panic!("header {} is not UTF-8: {e}", x.key));
                        (x.key.to_owned(), value)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Record {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            headers,
            payload: m.payload().unwrap_or_default().to_vec(),
        })
    }
}

/// Every record of `topics` (see [`Reader::read`]), off the async runtime.
pub async fn consume(
    brokers: &str,
    topics: &[&str],
    partitions: i32,
    count: usize,
    quiet: Duration,
) -> Vec<Record> {
    let brokers = brokers.to_owned();
    let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        Reader::new(&brokers, &topics, partitions, &[]).read(count, quiet, Duration::from_secs(60))
    })
    .await
    .expect("consumer thread")
}

/// Creates `topics` (as an operator would, before hookbus starts).
pub async fn create_topics(brokers: &str, topics: &[&str], partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    for result in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .expect("create topics")
    {
        result.expect("topic created");
    }
}

/// Asserts that every id in `ids` is in `records` exactly once, and nothing else is.
pub fn assert_exactly_once<'a>(records: &[Record], ids: impl IntoIterator<Item = &'a str>) {
    let mut counts = std::collections::HashMap::<&str, usize>::new();
    for r in records {
        *counts.entry(r.event_id()).or_default() += 1;
    }
    let ids: std::collections::HashSet<&str> = ids.into_iter().collect();
    let missing: Vec<_> = ids.iter().filter(|id| !counts.contains_key(*id)).collect();
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let extra: Vec<_> = counts.keys().filter(|id| !ids.contains(*id)).collect();
    assert!(
        missing.is_empty() && repeated.is_empty() && extra.is_empty(),
        "missing {missing:?}, repeated {repeated:?}, unexpected {extra:?}"
    );
}

/// A test hookbus's Kafka sink: `[ack] mode = mode`, `[sink] kind = "kafka"` and
/// `[kafka] brokers` with one partition, then `extra` TOML merged over it section by section
/// (later keys win: `[kafka]\npartitions = 2`, `[routing]\ntemplate = …`).
pub fn kafka(brokers: &str, mode: &str, extra: &str) -> String {
    let base = format!(
        "[ack]\nmode = \"{mode}\"\n[sink]\nkind = \"kafka\"\n\
         [kafka]\nbrokers = \"{brokers}\"\npartitions = 1"
    );
    toml::to_string(&super::merge_toml(&[&base, extra])).expect("serialize config")
}
