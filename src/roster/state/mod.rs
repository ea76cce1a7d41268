//! The roster's rules, pure: a channel's state and a batch of its events in, the new state
//! and what changed out. No tokio, no broker, no store: time is passed in. The rules make the
//! state a function of the *set* of events seen (any order, any number of copies), up to the
//! tombstones' lifetime; `docs/roster.md` states them for consumers.

mod key;
pub mod member;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use key::{OrderKey, rank, time_ms};
pub use member::{Effect, Ended, Fact, Member, Reason};

use crate::normalize::{Action, Event, State};

/// The channel summary as stored: the documented fields first (`channel`, `occupancy`,
/// `members`, `version`, `updated_at_ms`), then what the rules need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub channel: String,
    /// PubNub's own count from the latest event that carries one.
    pub occupancy: Option<u64>,
    /// Present members.
    pub members: u64,
    /// Strictly increases on every change, also across the channel's removal.
    pub version: u64,
    /// The greatest applied event time.
    pub updated_at_ms: i64,
    /// The key of the event `occupancy` came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occupancy_key: Option<OrderKey>,
    /// Whether that event was an `interval` (its count is not a member count to check).
    #[serde(default)]
    pub occupancy_interval: bool,
    /// Set by `inactive` and Here Now reads: older events of any uuid are stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizon: Option<OrderKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizon_expires_at_ms: Option<i64>,
    /// Member records that are tombstones.
    #[serde(default)]
    pub tombstones: u64,
    /// No tombstone expires before this (a lower bound; exact after a sweep).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_expiry_ms: Option<i64>,
    /// Member records whose ended stay still waits for its session event.
    #[serde(default)]
    pub unpublished: u64,
}

impl Summary {
    fn new(channel: &str) -> Summary {
        Summary {
            channel: channel.to_owned(),
            occupancy: None,
            members: 0,
            version: 0,
            updated_at_ms: 0,
            occupancy_key: None,
            occupancy_interval: false,
            horizon: None,
            horizon_expires_at_ms: None,
            tombstones: 0,
            next_expiry_ms: None,
            unpublished: 0,
        }
    }
}

/// A channel as loaded for one change: its summary (`None`: no state yet) and the member
/// records the change touches (all of them when [`needs_all`] says so).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Channel {
    pub summary: Option<Summary>,
    pub members: BTreeMap<String, Option<Member>>,
}

/// The rules' parameters.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// How long a tombstone (or a horizon) is kept after it is written.
    pub tombstone_ttl_ms: i64,
}

/// What a batch did to a channel.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Applied events, by action.
    pub applied: Vec<Action>,
    /// Events (or delta entries) older than a tombstone or the horizon.
    pub stale: u64,
    /// Redeliveries of events already applied.
    pub seen: u64,
    /// Members whose record changed (to write back).
    pub changed: Vec<String>,
    /// An interval asked for a Here Now read (`here_now_refresh`).
    pub refresh: bool,
    /// The latest occupancy disagrees with the member count (not from an interval).
    pub drift: bool,
    /// The channel changed (summary or members): there is something to write.
    pub dirty: bool,
}

impl Outcome {
    /// Adds what `other` (another group of the same channel's events) did.
    pub fn merge(&mut self, other: Outcome) {
        self.applied.extend(other.applied);
        self.stale += other.stale;
        self.seen += other.seen;
        for uuid in other.changed {
            if !self.changed.contains(&uuid) {
                self.changed.push(uuid);
            }
        }
        self.refresh |= other.refresh;
        self.drift |= other.drift;
        self.dirty |= other.dirty;
    }
}

/// A Here Now read, as the rules apply it: the member set as of `time_ms`.
#[derive(Debug, Clone)]
pub struct Snapshot<'a> {
    pub time_ms: i64,
    pub members: &'a [(String, Option<State>)],
}

/// Whether applying `events` needs every member record loaded (`inactive` decides over all
/// of them), not only the uuids the events name.
pub fn needs_all(events: &[&Event]) -> bool {
    events.iter().any(|e| e.action == Action::Inactive)
}

/// The uuids `events` name (members and delta entries), sorted, once each.
pub fn uuids<'a>(events: &[&'a Event]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for event in events {
        out.extend(event.uuid.as_deref());
        if let Some(delta) = &event.delta {
            out.extend(delta.join.iter().map(String::as_str));
            out.extend(delta.leave.iter().map(String::as_str));
            out.extend(delta.timeout.iter().map(String::as_str));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Applies `events` (all of channel `name`) to `channel`, at wall time `now_ms`.
pub fn apply(
    channel: &mut Channel,
    name: &str,
    events: &[&Event],
    rules: Rules,
    now_ms: i64,
) -> Outcome {
    let mut summary = channel.summary.take().unwrap_or_else(|| Summary::new(name));
    let before = summary.clone();
    let mut outcome = Outcome::default();
    let mut batch = Batch {
        summary: &mut summary,
        members: &mut channel.members,
        outcome: &mut outcome,
        rules,
        now_ms,
    };
    for event in events {
        batch.event(event);
    }
    outcome.changed.sort_unstable();
    outcome.changed.dedup();
    outcome.dirty = summary != before || !outcome.changed.is_empty();
    if outcome.dirty {
        summary.version = next_version(before.version, now_ms);
    }
    outcome.drift = drifts(&summary);
    channel.summary = Some(summary);
    outcome
}

/// Applies a Here Now read: every member whose latest event is older than the read's time is
/// present exactly when the read lists it; the read's time becomes the channel's horizon.
pub fn reconcile(
    channel: &mut Channel,
    name: &str,
    read: &Snapshot<'_>,
    rules: Rules,
    now_ms: i64,
) -> Outcome {
    let mut summary = channel.summary.take().unwrap_or_else(|| Summary::new(name));
    let before = summary.clone();
    let mut outcome = Outcome::default();
    let key = OrderKey(read.time_ms, 0, String::new());
    let listed: BTreeMap<&str, Option<&State>> = read
        .members
        .iter()
        .map(|(uuid, state)| (uuid.as_str(), state.as_ref()))
        .collect();
    let mut batch = Batch {
        summary: &mut summary,
        members: &mut channel.members,
        outcome: &mut outcome,
        rules,
        now_ms,
    };
    let unlisted: Vec<String> = batch
        .members
        .iter()
        .filter(|(uuid, m)| {
            m.as_ref().is_some_and(|m| m.present) && !listed.contains_key(uuid.as_str())
        })
        .map(|(uuid, _)| uuid.clone())
        .collect();
    for uuid in &unlisted {
        batch.fact(uuid, &key, false, None, Reason::Reconciled);
    }
    for (uuid, state) in &listed {
        batch.fact(uuid, &key, true, *state, Reason::Reconciled);
    }
    batch.occupancy(&key, Some(read.members.len() as u64), false);
    batch.raise_horizon(&key);
    outcome.changed.sort_unstable();
    outcome.changed.dedup();
    outcome.dirty = summary != before || !outcome.changed.is_empty();
    if outcome.dirty {
        summary.version = next_version(before.version, now_ms);
    }
    channel.summary = Some(summary);
    outcome
}

/// Whether the channel is to be removed: no member, occupancy 0 or unknown, no tombstone and
/// no live horizon left.
pub fn removable(summary: &Summary, now_ms: i64) -> bool {
    summary.members == 0
        && summary.occupancy.unwrap_or(0) == 0
        && summary.tombstones == 0
        && summary.unpublished == 0
        && summary.horizon_expires_at_ms.is_none_or(|t| t <= now_ms)
}

/// Drops expired tombstones (with their sessions published) from a fully loaded channel and
/// recomputes the summary's counters exactly; returns the uuids whose records went.
pub fn sweep(channel: &mut Channel, now_ms: i64) -> Vec<String> {
    let Some(summary) = channel.summary.as_mut() else {
        return Vec::new();
    };
    let mut gone = Vec::new();
    let (mut members, mut tombstones, mut unpublished) = (0, 0, 0);
    let mut next_expiry: Option<i64> = None;
    for (uuid, slot) in &mut channel.members {
        let Some(member) = slot else { continue };
        let waiting = member.ended.as_ref().is_some_and(|e| !e.published);
        if !member.present && !waiting && member.expires_at_ms.is_some_and(|t| t <= now_ms) {
            *slot = None;
            gone.push(uuid.clone());
            continue;
        }
        members += u64::from(member.present);
        tombstones += u64::from(!member.present);
        unpublished += u64::from(waiting);
        if let Some(t) = member.expires_at_ms.filter(|_| !member.present) {
            next_expiry = Some(next_expiry.map_or(t, |n| n.min(t)));
        }
    }
    let before = (summary.members, summary.tombstones, summary.unpublished);
    summary.members = members;
    summary.tombstones = tombstones;
    summary.unpublished = unpublished;
    summary.next_expiry_ms = next_expiry;
    if summary.horizon_expires_at_ms.is_some_and(|t| t <= now_ms) {
        summary.horizon_expires_at_ms = None;
        gone.push(String::new());
    }
    if !gone.is_empty() || before != (members, tombstones, unpublished) {
        summary.version = next_version(summary.version, now_ms);
    }
    gone.retain(|u| !u.is_empty());
    gone
}

/// The state between `before` and `after` (a change of a fully loaded channel) once only the
/// members `part` of the change are applied: their records as in `after`, the rest as in
/// `before`, the summary as in `after` with its counters recomputed exactly over these
/// members and a version after `before`'s. Applying a large change part by part goes
/// through such states, each one whole; the last part gives `after`'s members.
pub fn partly(before: &Channel, after: &Channel, part: &[String], now_ms: i64) -> Channel {
    let mut members = before.members.clone();
    for uuid in part {
        members.insert(uuid.clone(), after.members.get(uuid).cloned().flatten());
    }
    let summary = after.summary.as_ref().map(|summary| {
        let mut summary = summary.clone();
        let (mut present, mut tombstones, mut unpublished) = (0, 0, 0);
        let mut next_expiry: Option<i64> = None;
        for member in members.values().flatten() {
            present += u64::from(member.present);
            tombstones += u64::from(!member.present);
            unpublished += u64::from(member.ended.as_ref().is_some_and(|e| !e.published));
            if let Some(t) = member.expires_at_ms.filter(|_| !member.present) {
                next_expiry = Some(next_expiry.map_or(t, |n| n.min(t)));
            }
        }
        summary.members = present;
        summary.tombstones = tombstones;
        summary.unpublished = unpublished;
        summary.next_expiry_ms = next_expiry;
        let previous = before.summary.as_ref().map_or(0, |s| s.version);
        summary.version = next_version(previous, now_ms);
        summary
    });
    Channel { summary, members }
}

/// Marks `uuid`'s ended stay as published; returns whether anything changed.
pub fn mark_published(channel: &mut Channel, uuid: &str, now_ms: i64) -> bool {
    let (Some(summary), Some(Some(member))) =
        (channel.summary.as_mut(), channel.members.get_mut(uuid))
    else {
        return false;
    };
    let Some(ended) = member.ended.as_mut().filter(|e| !e.published) else {
        return false;
    };
    ended.published = true;
    summary.unpublished = summary.unpublished.saturating_sub(1);
    summary.version = next_version(summary.version, now_ms);
    true
}

/// The version after `previous`: one more, or the wall clock in microseconds when that is
/// greater, so a channel removed and created again still gets greater versions.
pub fn next_version(previous: u64, now_ms: i64) -> u64 {
    let clock = u64::try_from(now_ms).unwrap_or(0).saturating_mul(1000);
    previous.saturating_add(1).max(clock)
}

fn drifts(summary: &Summary) -> bool {
    !summary.occupancy_interval
        && summary
            .occupancy
            .is_some_and(|occupancy| occupancy != summary.members)
}

/// One batch's work on a channel.
struct Batch<'a> {
    summary: &'a mut Summary,
    members: &'a mut BTreeMap<String, Option<Member>>,
    outcome: &'a mut Outcome,
    rules: Rules,
    now_ms: i64,
}

impl Batch<'_> {
    fn event(&mut self, event: &Event) {
        let key = OrderKey::of(event);
        if self.summary.horizon.as_ref().is_some_and(|h| key <= *h)
            && event.action != Action::Inactive
        {
            self.outcome.stale += 1;
            return;
        }
        let (changed, stale) = (self.outcome.changed.len(), self.outcome.stale);
        match event.action {
            Action::Join | Action::StateChange | Action::Leave | Action::Timeout => {
                if let Some(uuid) = event.uuid.as_deref() {
                    let present = matches!(event.action, Action::Join | Action::StateChange);
                    let reason = if event.action == Action::Timeout {
                        Reason::Timeout
                    } else {
                        Reason::Leave
                    };
                    self.fact(uuid, &key, present, event.state.as_ref(), reason);
                }
            }
            Action::Interval => self.interval(event, &key),
            Action::Inactive => self.inactive(&key),
            Action::Active => {}
        }
        let occupancy = if event.action == Action::Inactive {
            Some(0)
        } else {
            event.occupancy
        };
        self.occupancy(&key, occupancy, event.action == Action::Interval);
        let member_event = event.uuid.is_some() && event.action != Action::Interval;
        if self.outcome.stale > stale || (member_event && self.outcome.changed.len() == changed) {
            // Stale (counted by `fact`) or a redelivery: no effect on who is present.
            return;
        }
        self.outcome.applied.push(event.action);
        self.summary.updated_at_ms = self.summary.updated_at_ms.max(key.time_ms());
    }

    fn interval(&mut self, event: &Event, key: &OrderKey) {
        if event.here_now_refresh {
            self.outcome.refresh = true;
        }
        let Some(delta) = &event.delta else { return };
        // One interval names a uuid once per list; in more than one list, the absence wins.
        let absent: Vec<(&String, Reason)> = delta
            .leave
            .iter()
            .map(|u| (u, Reason::Leave))
            .chain(delta.timeout.iter().map(|u| (u, Reason::Timeout)))
            .collect();
        for uuid in &delta.join {
            if !absent.iter().any(|(u, _)| *u == uuid) {
                self.fact(uuid, key, true, None, Reason::Leave);
            }
        }
        for (uuid, reason) in absent {
            self.fact(uuid, key, false, None, reason);
        }
    }

    /// Every present member gets the absence; tombstones need none (the horizon covers them,
    /// and rewriting every tombstone of a large room would cost a write each).
    fn inactive(&mut self, key: &OrderKey) {
        let present: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.as_ref().is_some_and(|m| m.present))
            .map(|(uuid, _)| uuid.clone())
            .collect();
        for uuid in &present {
            self.fact(uuid, key, false, None, Reason::Inactive);
        }
        self.raise_horizon(key);
    }

    fn raise_horizon(&mut self, key: &OrderKey) {
        if self.summary.horizon.as_ref().is_none_or(|h| key > h) {
            self.summary.horizon = Some(key.clone());
            self.summary.horizon_expires_at_ms =
                Some(self.now_ms.saturating_add(self.rules.tombstone_ttl_ms));
        }
    }

    fn occupancy(&mut self, key: &OrderKey, occupancy: Option<u64>, interval: bool) {
        let Some(occupancy) = occupancy else { return };
        if self.summary.occupancy_key.as_ref().is_none_or(|k| key > k) {
            self.summary.occupancy = Some(occupancy);
            self.summary.occupancy_key = Some(key.clone());
            self.summary.occupancy_interval = interval;
        }
    }

    fn fact(
        &mut self,
        uuid: &str,
        key: &OrderKey,
        present: bool,
        state: Option<&State>,
        reason: Reason,
    ) {
        let slot = self.members.entry(uuid.to_owned()).or_insert(None);
        let was = Counted::of(slot.as_ref());
        let fact = Fact {
            key,
            present,
            state,
            reason,
        };
        let horizon = self.summary.horizon.as_ref();
        match member::apply(
            slot,
            uuid,
            &fact,
            horizon,
            self.now_ms,
            self.rules.tombstone_ttl_ms,
        ) {
            effect @ (Effect::Changed | Effect::Late) => {
                if effect == Effect::Late {
                    self.outcome.stale += 1;
                }
                let now = Counted::of(slot.as_ref());
                let expires = slot.as_ref().and_then(|m| m.expires_at_ms);
                self.count(was, now);
                if let Some(t) = expires
                    && now.tombstone
                {
                    let next = self.summary.next_expiry_ms.map_or(t, |n| n.min(t));
                    self.summary.next_expiry_ms = Some(next);
                }
                self.outcome.changed.push(uuid.to_owned());
            }
            Effect::Stale => self.outcome.stale += 1,
            Effect::Seen => self.outcome.seen += 1,
        }
    }

    fn count(&mut self, was: Counted, now: Counted) {
        let s = &mut *self.summary;
        s.members = (s.members + u64::from(now.present)).saturating_sub(u64::from(was.present));
        s.tombstones =
            (s.tombstones + u64::from(now.tombstone)).saturating_sub(u64::from(was.tombstone));
        s.unpublished =
            (s.unpublished + u64::from(now.waiting)).saturating_sub(u64::from(was.waiting));
    }
}

/// What a member record adds to the summary's counters.
#[derive(Debug, Clone, Copy)]
struct Counted {
    present: bool,
    tombstone: bool,
    waiting: bool,
}

impl Counted {
    fn of(member: Option<&Member>) -> Counted {
        Counted {
            present: member.is_some_and(|m| m.present),
            tombstone: member.is_some_and(|m| !m.present),
            waiting: member.is_some_and(|m| m.ended.as_ref().is_some_and(|e| !e.published)),
        }
    }
}
