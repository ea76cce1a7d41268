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
    /// Why the member is absent (the session's `reason` when a late start completes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absent_reason: Option<Reason>,
    /// The absence before `absent`: a presence between the two is the start of the stay
    /// `absent` ended, also when it arrives after the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_absent: Option<OrderKey>,
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
    /// Stale for presence, but it completes the stay the latest absence ended (its start
    /// arrived after its end, as across Kafka topics) or names an earlier absence: the
    /// record changed.
    Late,
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
        if same {
            return Effect::Seen;
        }
        if let Some(member) = slot.as_mut()
            && late(member, fact)
        {
            return Effect::Late;
        }
        return Effect::Stale;
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
        absent_reason: None,
        prior_absent: None,
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
        member.absent_reason = Some(fact.reason);
        member.expires_at_ms = Some(now_ms.saturating_add(ttl_ms));
    }
    member
}

/// A fact older than the member's latest absence, on a tombstone: a presence after the
/// absence before it starts the stay that absence ended (its session is recorded, or starts
/// earlier while unpublished); an absence between the two becomes the earlier one. Whether
/// the record changed.
fn late(member: &mut Member, fact: &Fact<'_>) -> bool {
    let Some(absent) = member.absent.clone() else {
        return false;
    };
    let after_prior = member.prior_absent.as_ref().is_none_or(|p| fact.key > p);
    if member.present || *fact.key >= absent || !after_prior {
        return false;
    }
    if !fact.present {
        member.prior_absent = Some(fact.key.clone());
        return true;
    }
    let (since_ms, until_ms) = (fact.key.time_ms(), absent.time_ms());
    match member.ended.as_mut() {
        Some(ended) if ended.until_ms == until_ms => {
            if ended.published || ended.since_ms <= since_ms {
                return false;
            }
            ended.since_ms = since_ms;
        }
        Some(ended) if !ended.published => return false,
        _ => {
            member.ended = Some(Ended {
                since_ms,
                until_ms,
                reason: member.absent_reason.unwrap_or(Reason::Leave),
                published: false,
            });
        }
    }
    true
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
    member.prior_absent = member.absent.take();
    member.absent = Some(fact.key.clone());
    member.absent_reason = Some(fact.reason);
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
