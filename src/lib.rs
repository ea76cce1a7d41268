//! hookbus: PubNub Presence webhooks in, normalized events out to Kafka or NATS.
//!
//! The modules read as the data flow of one webhook request: ingress → normalize → dedup →
//! message → spool or queue → publisher → sink. The module map, with what each module owns,
//! is in `docs/design.md` (the one map; this list would only drift from it).

#![warn(clippy::too_many_lines)]

pub mod app;
pub mod config;
pub mod dead_letters;
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
pub mod roster;
pub mod route;
pub mod shutdown;
pub mod sink;
pub mod spool;
pub mod text;
pub mod time;
