//! The integration tests: one binary (one link of hookbus, rdkafka and librdkafka) with a
//! module per area. Run one area with `cargo test --test it nats::`.

mod cli;
mod common;
mod dead_letters;
mod dedup;
mod durability;
mod exactly_once;
mod formats;
mod hostile;
mod http;
mod kafka;
mod kafka_scale;
mod metrics;
mod nats;
mod normalize_fixtures;
mod replay;
mod roster;
mod secure_kafka;
mod secure_nats;
mod shared_dedup;
mod startup;
