//! One member's record and the rule that decides it: per (channel, uuid) the event with the
//! greatest order key decides presence; a stay is everything after the latest absence. The
//! record keeps what later out-of-order events need (the presence keys of the current stay,
//! the latest absence) so that any order of the same events gives the same member.

use serde::{Deserialize, Serialize};

use super::OrderKey;
use crate::normalize::State;

/// At most this many presence keys of one stay are kept: beyond it the middle ones are
/// dropped (the earliest stays, so `since_ms` holds unless an out-of-order absence lands
/// among the dropped ones).
pub const MAX_STAY_KEYS: usize = 32;

/// Why a stay ended (the session event's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Leave,
    Timeout,
    Inactive,
    Reconciled,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Leave => "leave",
            Reason::Timeout => "timeout",
            Reason::Inactive => "inactive",
            Reason::Reconciled => "reconciled",
        }
    }
}

/// A member as stored: the documented fields first (`uuid`, `state`, `since_ms`, `last_ms`),
/// then what the rules need. A tombstone is a record with `present: false`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub uuid: String,
    /// The latest non-null state of the current stay.
    pub state: Option<State>,
    /// The earliest join or state-change after the latest absence; `None` when absent.
    pub since_ms: Option<i64>,
    /// The greatest applied event time.
    pub last_ms: i64,
    pub present: bool,
    /// The greatest key applied.
    pub key: OrderKey,
    /// The latest absence (leave, timeout, or the channel's inactive / Here Now horizon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absent: Option<OrderKey>,
    /// Presence keys after `absent`, ascending (at most [`MAX_STAY_KEYS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stay: Vec<OrderKey>,
    /// The key of the event `state` came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_key: Option<OrderKey>,
    /// A tombstone's end (Unix ms): after it the record may be deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// The stay this record ended, kept until its session event is published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Ended>,
}

/// A stay that ended, as the session event reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    pub since_ms: i64,
    pub until_ms: i64,
    pub reason: Reason,
    /// Whether the session event went out (then the record is only kept for its key).
    #[serde(default)]
    pub published: bool,
}

/// One presence fact about one member: a join / state-change (present) or a leave / timeout
/// / horizon (absent), with the key of the event it came from.
#[derive(Debug, Clone)]
pub struct Fact<'a> {
    pub key: &'a OrderKey,
    pub present: bool,
    pub state: Option<&'a State>,
    pub reason: Reason,
}

/// What applying a fact did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The record changed.
    Changed,
    /// Older than the member's latest absence or the channel's horizon: no effect.
    Stale,
    /// Already applied (a redelivery): no effect.
    Seen,
}

/// Applies `fact` to the member's record (`None`: no record), given the channel's horizon.
/// `now_ms` and `ttl_ms` date a new tombstone.
pub fn apply(
    slot: &mut Option<Member>,
    uuid: &str,
    fact: &Fact<'_>,
    horizon: Option<&OrderKey>,
    now_ms: i64,
    ttl_ms: i64,
) -> Effect {
    let floor = match (slot.as_ref().and_then(|m| m.absent.as_ref()), horizon) {
        (Some(a), Some(h)) => Some(a.max(h)),
        (a, h) => a.or(h),
    };
    if let Some(floor) = floor
        && fact.key <= floor
    {
        let same = !fact.present && slot.as_ref().and_then(|m| m.absent.as_ref()) == Some(fact.key);
        return if same { Effect::Seen } else { Effect::Stale };
    }
    let Some(member) = slot.as_mut() else {
        *slot = Some(new_member(uuid, fact, now_ms, ttl_ms));
        return Effect::Changed;
    };
    if fact.present {
        present(member, fact)
    } else {
        absent(member, fact, now_ms, ttl_ms)
    }
}

fn new_member(uuid: &str, fact: &Fact<'_>, now_ms: i64, ttl_ms: i64) -> Member {
    let time = fact.key.time_ms();
    let mut member = Member {
        uuid: uuid.to_owned(),
        state: None,
        since_ms: None,
        last_ms: time,
        present: fact.present,
        key: fact.key.clone(),
        absent: None,
        stay: Vec::new(),
        state_key: None,
        expires_at_ms: None,
        ended: None,
    };
    if fact.present {
        member.since_ms = Some(time);
        member.stay.push(fact.key.clone());
        if let Some(state) = fact.state {
            member.state = Some(state.clone());
            member.state_key = Some(fact.key.clone());
        }
    } else {
        member.absent = Some(fact.key.clone());
        member.expires_at_ms = Some(now_ms.saturating_add(ttl_ms));
    }
    member
}

/// A presence after the member's latest absence.
fn present(member: &mut Member, fact: &Fact<'_>) -> Effect {
    let Err(at) = member.stay.binary_search(fact.key) else {
        return Effect::Seen;
    };
    member.stay.insert(at, fact.key.clone());
    if member.stay.len() > MAX_STAY_KEYS {
        member.stay.remove(1);
    }
    if let Some(state) = fact.state
        && member.state_key.as_ref().is_none_or(|k| fact.key > k)
    {
        member.state = Some(state.clone());
        member.state_key = Some(fact.key.clone());
    }
    if *fact.key > member.key {
        member.key = fact.key.clone();
        member.present = true;
        member.expires_at_ms = None;
    }
    member.last_ms = member.last_ms.max(fact.key.time_ms());
    member.since_ms = member.present.then(|| member.stay[0].time_ms());
    Effect::Changed
}

/// An absence after the member's latest absence: it ends the stay when it is the latest
/// event, else it only moves the stay's start.
fn absent(member: &mut Member, fact: &Fact<'_>, now_ms: i64, ttl_ms: i64) -> Effect {
    let started = member.stay.first().map(OrderKey::time_ms);
    member.absent = Some(fact.key.clone());
    member.stay.retain(|k| k > fact.key);
    if member.state_key.as_ref().is_some_and(|k| k < fact.key) {
        member.state = None;
        member.state_key = None;
    }
    member.last_ms = member.last_ms.max(fact.key.time_ms());
    if *fact.key > member.key {
        if member.present
            && let Some(since_ms) = started
        {
            member.ended = Some(Ended {
                since_ms,
                until_ms: fact.key.time_ms(),
                reason: fact.reason,
                published: false,
            });
        }
        member.key = fact.key.clone();
        member.present = false;
        member.expires_at_ms = Some(now_ms.saturating_add(ttl_ms));
    }
    member.since_ms = if member.present {
        member.stay.first().map(OrderKey::time_ms)
    } else {
        None
    };
    Effect::Changed
}
