//! The benchmark's exactly-once check: consumes what hookbus published and counts records and
//! distinct `hookbus-event-id` headers, so a lost or a repeated event shows.
//!
//! ```text
//! count jetstream <url> <stream>                 # the whole stream, from its first message
//! count kafka <brokers> <topic-prefix> [expect]  # every partition of the matching topics
//! count nats <url> <subject>                     # core NATS: subscribes, prints "ready",
//!                                                # counts until stdin closes and 1 s of quiet
//! ```
//! Prints one JSON line: `{"records":N,"distinct":D}`. Kafka is read until `expect` distinct
//! ids were seen and 1 s passed without a record, or 5 s without one (tansu's high watermarks
//! can lag the records it serves, so they are not trusted).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::io::AsyncReadExt;

const EVENT_ID: &str = "hookbus-event-id";

#[derive(Default)]
struct Tally {
    records: u64,
    distinct: HashSet<Vec<u8>>,
}

impl Tally {
    fn add(&mut self, id: Option<&[u8]>) {
        self.records += 1;
        self.distinct.insert(id.unwrap_or_default().to_vec());
    }

    fn print(&self) {
        println!(
            "{{\"records\":{},\"distinct\":{}}}",
            self.records,
            self.distinct.len()
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tally = match args.as_slice() {
        ["jetstream", url, stream] => jetstream(url, stream).await?,
        ["nats", url, subject] => core(url, subject).await?,
        ["kafka", brokers, prefix, rest @ ..] => {
            let expect = rest.first().map_or(Ok(0), |n| n.parse())?;
            let (brokers, prefix) = ((*brokers).to_owned(), (*prefix).to_owned());
            tokio::task::spawn_blocking(move || kafka(&brokers, &prefix, expect)).await??
        }
        _ => anyhow::bail!(
            "usage: count jetstream <url> <stream> | count kafka <brokers> <prefix> [expect] | \
             count nats <url> <subject>"
        ),
    };
    tally.print();
    Ok(())
}

fn nats_id(headers: Option<&async_nats::HeaderMap>) -> Option<&[u8]> {
    headers
        .and_then(|h| h.get(EVENT_ID))
        .map(|v| v.as_str().as_bytes())
}

async fn jetstream(url: &str, stream: &str) -> anyhow::Result<Tally> {
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(stream).await?;
    let last = stream.info().await?.state.last_sequence;
    let mut tally = Tally::default();
    if last == 0 {
        return Ok(tally);
    }
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .map_err(|_| anyhow::anyhow!("no message for 10 s before sequence {last}"))?
    {
        let message = message?;
        tally.add(nats_id(message.headers.as_ref()));
        if message
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence
            >= last
        {
            break;
        }
    }
    Ok(tally)
}

async fn core(url: &str, subject: &str) -> anyhow::Result<Tally> {
    let client = async_nats::connect(url).await?;
    let mut messages = client.subscribe(subject.to_owned()).await?;
    client.flush().await?;
    println!("ready");
    let mut stdin = tokio::io::stdin();
    let mut closed = Box::pin(async move {
        let mut buf = [0u8; 64];
        while stdin.read(&mut buf).await.unwrap_or(0) > 0 {}
    });
    let mut tally = Tally::default();
    loop {
        tokio::select! {
            () = &mut closed => break,
            Some(m) = messages.next() => tally.add(nats_id(m.headers.as_ref())),
        }
    }
    // stdin closed: take what is still arriving, until 1 s of quiet.
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(1), messages.next()).await {
        tally.add(nats_id(m.headers.as_ref()));
    }
    Ok(tally)
}

fn kafka(brokers: &str, prefix: &str, expect: usize) -> anyhow::Result<Tally> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "hookbus-bench-count")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    let mut assigned = TopicPartitionList::new();
    for topic in metadata
        .topics()
        .iter()
        .filter(|t| t.name().starts_with(prefix))
    {
        for p in topic.partitions() {
            assigned.add_partition_offset(topic.name(), p.id(), Offset::Beginning)?;
        }
    }
    consumer.assign(&assigned)?;
    let mut tally = Tally::default();
    let mut last = Instant::now();
    loop {
        let quiet = last.elapsed();
        if quiet > Duration::from_secs(5)
            || (tally.distinct.len() >= expect && quiet > Duration::from_secs(1))
        {
            return Ok(tally);
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let id = m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == EVENT_ID)
                        .and_then(|h| h.value)
                        .map(<[u8]>::to_vec)
                });
                tally.add(id.as_deref());
                last = Instant::now();
            }
            Some(Err(error)) => anyhow::bail!("kafka: {error}"),
            None => {}
        }
    }
}
