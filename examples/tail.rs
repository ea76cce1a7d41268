//! Watch what hookbus publishes.
//!
//! ```text
//! cargo run --example tail -- nats 'presence.>'                  # nats://127.0.0.1:4222
//! cargo run --example tail -- nats 'presence.>' nats://host:4222
//! cargo run --example tail -- kafka presence.                    # topics starting with it
//! cargo run --example tail -- kafka presence. 127.0.0.1:9092
//! ```
//! Prints one line per message: subject/topic, key, headers, payload.

use std::time::Duration;

use futures::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["nats", subject, rest @ ..] => {
            nats(
                subject,
                rest.first().copied().unwrap_or("nats://127.0.0.1:4222"),
            )
            .await
        }
        ["kafka", prefix, rest @ ..] => {
            let brokers = rest.first().copied().unwrap_or("127.0.0.1:9092").to_owned();
            let prefix = (*prefix).to_owned();
            tokio::task::spawn_blocking(move || kafka(&prefix, &brokers)).await?
        }
        _ => {
            anyhow::bail!("usage: tail nats <subject> [url] | tail kafka <topic-prefix> [brokers]")
        }
    }
}

async fn nats(subject: &str, url: &str) -> anyhow::Result<()> {
    let client = async_nats::connect(url).await?;
    let mut messages = client.subscribe(subject.to_owned()).await?;
    eprintln!("listening on {subject} at {url}");
    while let Some(m) = messages.next().await {
        let headers = m
            .headers
            .as_ref()
            .map(|h| {
                h.iter()
                    .map(|(k, v)| {
                        format!(
                            "{k}={}",
                            v.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(",")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        println!(
            "{} [{headers}] {}",
            m.subject,
            String::from_utf8_lossy(&m.payload)
        );
    }
    Ok(())
}

fn kafka(prefix: &str, brokers: &str) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "hookbus-tail")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assigned = TopicPartitionList::new();
    eprintln!("listening on topics starting with {prefix} at {brokers}");
    loop {
        // Pick up topics created since the last look.
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(5))?;
        let mut changed = false;
        for topic in metadata
            .topics()
            .iter()
            .filter(|t| t.name().starts_with(prefix))
        {
            for p in topic.partitions() {
                if assigned.find_partition(topic.name(), p.id()).is_none() {
                    assigned.add_partition_offset(topic.name(), p.id(), Offset::Beginning)?;
                    changed = true;
                }
            }
        }
        if changed {
            consumer.assign(&assigned)?;
        }
        let until = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < until {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| {
                            format!(
                                "{}={}",
                                x.key,
                                String::from_utf8_lossy(x.value.unwrap_or_default())
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            println!(
                "{} key={} [{headers}] {}",
                m.topic(),
                String::from_utf8_lossy(m.key().unwrap_or_default()),
                String::from_utf8_lossy(m.payload().unwrap_or_default())
            );
        }
    }
}
