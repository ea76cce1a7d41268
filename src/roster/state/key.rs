//! The order key that makes the roster a function of the *set* of events: (event time, rank,
//! id), compared in that order. Event time is `timestamp_ms`, else `timestamp` × 1000 (G1 has
//! whole seconds, so its ties are broken by the rank and then the id, bytewise).

use serde::{Deserialize, Serialize};

use crate::normalize::{Action, Event};

/// An event's place in the total order of presence events of one channel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderKey(pub i64, pub u8, pub String);

impl OrderKey {
    /// The key of `event`.
    pub fn of(event: &Event) -> OrderKey {
        OrderKey(time_ms(event), rank(event.action), event.id.clone())
    }

    /// Event time, Unix milliseconds.
    pub fn time_ms(&self) -> i64 {
        self.0
    }
}

/// `timestamp_ms`, else `timestamp` × 1000.
pub fn time_ms(event: &Event) -> i64 {
    event
        .timestamp_ms
        .unwrap_or_else(|| event.timestamp.saturating_mul(1000))
}

/// Ties at one event time: inactive 0, leave 1, timeout 2, join 3, state-change 4, interval 5,
/// active 6 (an absence sorts before a presence of the same instant, and `active` last).
pub fn rank(action: Action) -> u8 {
    match action {
        Action::Inactive => 0,
        Action::Leave => 1,
        Action::Timeout => 2,
        Action::Join => 3,
        Action::StateChange => 4,
        Action::Interval => 5,
        Action::Active => 6,
    }
}
