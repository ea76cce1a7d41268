//! hookbus: PubNub Presence webhooks in, normalized events out to Kafka or NATS.
//!
//! # Layout
//! The modules read as the data flow of one webhook request:
//! - [`config`]: the `config.toml` sections, validated; every component takes its own section.
//! - [`ingress`]: the hyper server: routes, auth, body limit, and the one error → status map.
//! - [`normalize`]: pure; request bytes → `Vec<Event>` for every PubNub generation.
//! - [`dedup`]: the local id set (pure), the claims the async side holds, the shared store.
//! - [`route`]: pure; event → topic/subject name, headers and key; the escaping rules.
//! - [`spool`]: the write-ahead log behind `ack.mode = "spool"`.
//! - [`publisher`]: moves accepted events from the queue or spool to the sink, in order.
//! - [`sink`]: Kafka, NATS (JetStream) and stdout producers.
//! - [`logs`]: log lines any client can trigger, written at a bounded rate.
//! - [`message`]: the outgoing message: headers, event → message, dead letters.
//! - [`metrics`]: the Prometheus handles of DESIGN §9, registered into a passed-in registry.
//! - [`shutdown`]: signal handling and the readiness latch.
//! - [`health`]: the liveness latch behind `/healthz`.
//! - [`text`]: hex digits and cutting text at a character boundary, in one place.
//! - [`time`]: the wall clock, read in one place.
//! - [`faults`]: faults tests inject to prove recovery (never fire in production).
//! - [`app`]: wiring only.

pub mod app;
pub mod config;
pub mod dedup;
#[doc(hidden)]
pub mod faults;
pub mod health;
pub mod ingress;
pub mod logs;
pub mod message;
pub mod metrics;
pub mod normalize;
pub mod publisher;
pub mod route;
pub mod shutdown;
pub mod sink;
pub mod spool;
pub mod text;
pub mod time;
