//! The presence roster (`hookbus roster`): who is in each channel now, kept from the events the
//! bridge published. `state` holds the rules (pure: events in, channel state out); `store`
//! keeps the state in NATS KV or Redis with compare-and-set; the rest consumes the bridge's
//! output, serves the read API and reconciles with PubNub Here Now. Nothing here is on the
//! bridge's hot path.

pub mod api;
mod consume;
pub mod here_now;
pub mod input;
pub mod metrics;
pub mod outputs;
pub mod reconcile;
pub mod run;
pub mod state;
pub mod store;
pub mod writer;

pub use run::run;
