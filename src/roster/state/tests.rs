//! The rules against hand-worked cases, and against a small reference model over shuffled,
//! repeated event sets (proptest).

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::normalize::{Delta, Format};

const TTL: Rules = Rules {
    tombstone_ttl_ms: 30 * 60_000,
};
const NOW: i64 = 1_800_000_000_000;

fn event(id: &str, action: Action, uuid: Option<&str>, time_ms: i64) -> Event {
    Event {
        id: id.to_owned(),
        format: Format::EventsAndActions,
        sub_key: Some("sub-c-1".to_owned()),
        channel: "room".to_owned(),
        action,
        uuid: uuid.map(str::to_owned),
        occupancy: None,
        timestamp: time_ms / 1000,
        timestamp_ms: Some(time_ms),
        received_at_ms: 0,
        state: None,
        delta: None,
        here_now_refresh: false,
    }
}

fn join(id: &str, uuid: &str, time_ms: i64) -> Event {
    event(id, Action::Join, Some(uuid), time_ms)
}

fn leave(id: &str, uuid: &str, time_ms: i64) -> Event {
    event(id, Action::Leave, Some(uuid), time_ms)
}

fn with_state(mut event: Event, state: serde_json::Value) -> Event {
    event.state = Some(State::from_value(&state));
    event
}

fn run(channel: &mut Channel, events: &[Event]) -> Outcome {
    let refs: Vec<&Event> = events.iter().collect();
    apply(channel, "room", &refs, TTL, NOW)
}

fn member<'a>(channel: &'a Channel, uuid: &str) -> Option<&'a Member> {
    channel.members.get(uuid).and_then(Option::as_ref)
}

#[test]
fn a_join_makes_a_member_present_and_a_leave_ends_the_stay() {
    let mut channel = Channel::default();
    let outcome = run(&mut channel, &[join("a", "u1", 1_000)]);
    assert_eq!(outcome.applied, vec![Action::Join]);
    let m = member(&channel, "u1").unwrap();
    assert!(m.present);
    assert_eq!((m.since_ms, m.last_ms), (Some(1_000), 1_000));
    assert_eq!(channel.summary.as_ref().unwrap().members, 1);

    let outcome = run(&mut channel, &[leave("b", "u1", 4_000)]);
    assert_eq!(outcome.changed, vec!["u1".to_owned()]);
    let m = member(&channel, "u1").unwrap();
    assert!(!m.present);
    assert_eq!(m.since_ms, None);
    let ended = m.ended.clone().unwrap();
    assert_eq!((ended.since_ms, ended.until_ms), (1_000, 4_000));
    assert_eq!(ended.reason, Reason::Leave);
    let summary = channel.summary.as_ref().unwrap();
    assert_eq!((summary.members, summary.tombstones), (0, 1));
}

#[test]
fn a_late_join_older_than_the_leave_is_stale_and_keeps_the_member_absent() {
    let mut channel = Channel::default();
    run(
        &mut channel,
        &[join("a", "u1", 1_000), leave("b", "u1", 5_000)],
    );
    let version = channel.summary.as_ref().unwrap().version;
    let outcome = run(&mut channel, &[join("late", "u1", 3_000)]);
    assert_eq!(outcome.stale, 1);
    assert!(outcome.applied.is_empty());
    assert!(!outcome.dirty);
    assert!(!member(&channel, "u1").unwrap().present);
    assert_eq!(channel.summary.as_ref().unwrap().version, version);
}

#[test]
fn a_redelivered_event_changes_nothing_and_ends_no_second_session() {
    let mut channel = Channel::default();
    let timeout = event("t", Action::Timeout, Some("u1"), 9_000);
    run(&mut channel, &[join("a", "u1", 1_000), timeout.clone()]);
    let before = channel.clone();
    let outcome = run(&mut channel, &[timeout]);
    assert!(!outcome.dirty);
    assert_eq!(outcome.seen, 1);
    assert_eq!(outcome.stale, 0);
    assert_eq!(channel, before);
    assert_eq!(
        member(&channel, "u1")
            .unwrap()
            .ended
            .as_ref()
            .unwrap()
            .reason,
        Reason::Timeout
    );
}

#[test]
fn a_state_change_that_overtakes_its_join_keeps_its_state_and_the_join_time() {
    let mut channel = Channel::default();
    run(
        &mut channel,
        &[with_state(
            event("s", Action::StateChange, Some("u1"), 2_000),
            json!({"mood": "busy"}),
        )],
    );
    run(
        &mut channel,
        &[with_state(join("j", "u1", 1_000), json!({"mood": "idle"}))],
    );
    let m = member(&channel, "u1").unwrap();
    assert_eq!(
        m.state.as_ref().unwrap().to_value(),
        json!({"mood": "busy"})
    );
    assert_eq!((m.since_ms, m.last_ms), (Some(1_000), 2_000));
}

#[test]
fn an_out_of_order_leave_inside_a_stay_moves_its_start() {
    let mut channel = Channel::default();
    run(
        &mut channel,
        &[join("a", "u1", 1_000), join("c", "u1", 5_000)],
    );
    run(&mut channel, &[leave("b", "u1", 3_000)]);
    let m = member(&channel, "u1").unwrap();
    assert!(m.present);
    assert_eq!(m.since_ms, Some(5_000));
}

#[test]
fn equal_times_order_by_rank_then_id() {
    // G1 gives whole seconds: a leave and a join in the same second — the join (rank 3) wins.
    let mut channel = Channel::default();
    run(
        &mut channel,
        &[join("z", "u1", 7_000), leave("a", "u1", 7_000)],
    );
    assert!(member(&channel, "u1").unwrap().present);
    assert!(
        OrderKey(7_000, rank(Action::Join), "a".into())
            < OrderKey(7_000, rank(Action::Join), "b".into())
    );
    assert!(
        OrderKey(7_000, rank(Action::Inactive), "z".into())
            < OrderKey(7_000, rank(Action::Leave), "a".into())
    );
}

#[test]
fn interval_sets_occupancy_and_applies_its_deltas() {
    let mut channel = Channel::default();
    run(&mut channel, &[join("a", "gone", 1_000)]);
    let mut interval = event("i", Action::Interval, None, 10_000);
    interval.occupancy = Some(2);
    interval.delta = Some(Delta {
        join: vec!["n1".into(), "n2".into()],
        leave: vec!["gone".into()],
        timeout: vec![],
    });
    interval.here_now_refresh = true;
    let outcome = run(&mut channel, &[interval]);
    assert!(outcome.refresh);
    assert!(
        !outcome.drift,
        "an interval's count is not checked against members"
    );
    let summary = channel.summary.as_ref().unwrap();
    assert_eq!((summary.occupancy, summary.members), (Some(2), 2));
    assert!(!member(&channel, "gone").unwrap().present);
    assert_eq!(member(&channel, "n1").unwrap().since_ms, Some(10_000));
}

#[test]
fn inactive_empties_the_channel_and_its_horizon_makes_older_events_stale() {
    let mut channel = Channel::default();
    run(
        &mut channel,
        &[
            join("a", "u1", 1_000),
            join("b", "u2", 2_000),
            join("late-but-new", "u3", 9_000),
        ],
    );
    let outcome = run(&mut channel, &[event("x", Action::Inactive, None, 5_000)]);
    assert_eq!(outcome.applied, vec![Action::Inactive]);
    assert!(!member(&channel, "u1").unwrap().present);
    assert!(!member(&channel, "u2").unwrap().present);
    assert!(
        member(&channel, "u3").unwrap().present,
        "an event newer than the inactive stays"
    );
    assert_eq!(
        member(&channel, "u1")
            .unwrap()
            .ended
            .as_ref()
            .unwrap()
            .reason,
        Reason::Inactive
    );
    let outcome = run(&mut channel, &[join("old", "u9", 4_000)]);
    assert_eq!(outcome.stale, 1);
    assert!(member(&channel, "u9").is_none());
    let summary = channel.summary.as_ref().unwrap();
    assert_eq!((summary.occupancy, summary.members), (Some(0), 1));
}

#[test]
fn active_only_moves_updated_at() {
    let mut channel = Channel::default();
    run(&mut channel, &[event("a", Action::Active, None, 3_000)]);
    let summary = channel.summary.as_ref().unwrap();
    assert_eq!(
        (summary.updated_at_ms, summary.members, summary.occupancy),
        (3_000, 0, None)
    );
}

#[test]
fn occupancy_that_disagrees_with_the_members_is_drift() {
    let mut channel = Channel::default();
    let mut j = join("a", "u1", 1_000);
    j.occupancy = Some(3);
    assert!(run(&mut channel, &[j]).drift);
    let mut j = join("b", "u2", 2_000);
    j.occupancy = Some(2);
    assert!(!run(&mut channel, &[j]).drift);
}

#[test]
fn a_channel_with_nothing_left_is_removable_once_its_tombstones_expire() {
    let mut channel = Channel::default();
    run(
        &mut channel,
        &[join("a", "u1", 1_000), leave("b", "u1", 2_000)],
    );
    let summary = channel.summary.clone().unwrap();
    assert!(!removable(&summary, NOW), "a tombstone is left");
    assert_eq!(
        sweep(&mut channel, NOW + TTL.tombstone_ttl_ms),
        Vec::<String>::new(),
        "its session is not out yet"
    );
    assert!(mark_published(&mut channel, "u1", NOW));
    assert!(!mark_published(&mut channel, "u1", NOW), "once");
    assert_eq!(
        sweep(&mut channel, NOW + TTL.tombstone_ttl_ms - 1),
        Vec::<String>::new()
    );
    assert_eq!(
        sweep(&mut channel, NOW + TTL.tombstone_ttl_ms),
        vec!["u1".to_owned()]
    );
    let summary = channel.summary.clone().unwrap();
    assert_eq!((summary.members, summary.tombstones), (0, 0));
    assert!(removable(&summary, NOW + TTL.tombstone_ttl_ms));
}

#[test]
fn versions_strictly_increase_even_when_the_clock_is_behind() {
    assert_eq!(next_version(0, NOW), 1_800_000_000_000_000);
    assert_eq!(
        next_version(1_800_000_000_000_005, NOW),
        1_800_000_000_000_006
    );
    let mut channel = Channel::default();
    run(&mut channel, &[join("a", "u1", 1_000)]);
    let v1 = channel.summary.as_ref().unwrap().version;
    run(&mut channel, &[join("b", "u2", 1_000)]);
    assert!(channel.summary.as_ref().unwrap().version > v1);
}

#[test]
fn reconciliation_replaces_members_older_than_the_read() {
    let mut channel = Channel::default();
    run(
        &mut channel,
        &[join("a", "ghost", 1_000), join("b", "fresh", 20_000)],
    );
    let listed = vec![("kept".to_owned(), Some(State::from_value(&json!({"k": 1}))))];
    let read = Snapshot {
        time_ms: 10_000,
        members: &listed,
    };
    let outcome = reconcile(&mut channel, "room", &read, TTL, NOW);
    assert!(outcome.dirty);
    assert!(!member(&channel, "ghost").unwrap().present);
    assert_eq!(
        member(&channel, "ghost")
            .unwrap()
            .ended
            .as_ref()
            .unwrap()
            .reason,
        Reason::Reconciled
    );
    assert!(
        member(&channel, "fresh").unwrap().present,
        "its own event is newer than the read"
    );
    let kept = member(&channel, "kept").unwrap();
    assert_eq!((kept.present, kept.since_ms), (true, Some(10_000)));
    assert_eq!(channel.summary.as_ref().unwrap().members, 2);
    assert_eq!(run(&mut channel, &[join("c", "ghost", 9_000)]).stale, 1);
}

#[test]
fn records_round_trip_through_their_json_with_the_documented_fields_first() {
    let mut channel = Channel::default();
    run(
        &mut channel,
        &[with_state(join("a", "u1", 1_000), json!({"x": 1}))],
    );
    let m = member(&channel, "u1").unwrap();
    let text = serde_json::to_string(m).unwrap();
    assert!(
        text.starts_with(r#"{"uuid":"u1","state":{"x":1},"since_ms":1000,"last_ms":1000,"#),
        "{text}"
    );
    assert_eq!(&serde_json::from_str::<Member>(&text).unwrap(), m);
    let summary = channel.summary.as_ref().unwrap();
    let text = serde_json::to_string(summary).unwrap();
    assert!(
        text.starts_with(r#"{"channel":"room","occupancy":null,"members":1,"version":"#),
        "{text}"
    );
    assert_eq!(&serde_json::from_str::<Summary>(&text).unwrap(), summary);
}

// ---- reference model ----------------------------------------------------------------------

/// The state the rules must reach, computed from the sorted set of events directly: per uuid
/// the facts after the latest absence (its own or an inactive's), the greatest one deciding.
#[derive(Debug, PartialEq)]
struct Expected {
    present: BTreeMap<String, (Option<String>, i64, i64)>,
    occupancy: Option<u64>,
    updated_at_ms: i64,
}

fn facts(e: &Event) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    match e.action {
        Action::Join | Action::StateChange => out.push((e.uuid.clone().unwrap(), true)),
        Action::Leave | Action::Timeout => out.push((e.uuid.clone().unwrap(), false)),
        Action::Interval => {
            if let Some(d) = &e.delta {
                let gone: Vec<&String> = d.leave.iter().chain(&d.timeout).collect();
                out.extend(
                    d.join
                        .iter()
                        .filter(|u| !gone.contains(u))
                        .map(|u| (u.clone(), true)),
                );
                out.extend(gone.into_iter().map(|u| (u.clone(), false)));
            }
        }
        _ => {}
    }
    out
}

fn reference(events: &[Event]) -> Expected {
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| OrderKey::of(e));
    sorted.dedup_by_key(|e| OrderKey::of(e));
    let horizon = sorted
        .iter()
        .filter(|e| e.action == Action::Inactive)
        .map(|e| OrderKey::of(e))
        .max();
    let mut per_uuid: BTreeMap<String, Vec<(OrderKey, bool, Option<String>)>> = BTreeMap::new();
    for e in &sorted {
        for (uuid, present) in facts(e) {
            let state = if e.uuid.is_some() {
                e.state.as_ref().map(|s| s.as_str().to_owned())
            } else {
                None
            };
            per_uuid
                .entry(uuid)
                .or_default()
                .push((OrderKey::of(e), present, state));
        }
    }
    let mut present = BTreeMap::new();
    for (uuid, facts) in per_uuid {
        let absent = facts
            .iter()
            .filter(|f| !f.1)
            .map(|f| f.0.clone())
            .chain(horizon.clone())
            .max();
        let stay: Vec<_> = facts
            .iter()
            .filter(|f| absent.as_ref().is_none_or(|a| f.0 > *a))
            .collect();
        let Some(last) = stay.last() else { continue };
        if !last.1 {
            continue;
        }
        let state = stay.iter().rev().find_map(|f| f.2.clone());
        present.insert(uuid, (state, stay[0].0.time_ms(), last.0.time_ms()));
    }
    let occupancy = sorted
        .iter()
        .filter(|e| horizon.as_ref().is_none_or(|h| OrderKey::of(e) >= *h))
        .filter_map(|e| {
            if e.action == Action::Inactive {
                Some(0)
            } else {
                e.occupancy
            }
        })
        .next_back();
    let updated_at_ms = sorted.iter().map(|e| time_ms(e)).max().unwrap_or(0);
    Expected {
        present,
        occupancy,
        updated_at_ms,
    }
}

fn observed(channel: &Channel) -> Expected {
    let summary = channel.summary.clone().unwrap();
    let present: BTreeMap<_, _> = channel
        .members
        .iter()
        .filter_map(|(u, m)| m.as_ref().filter(|m| m.present).map(|m| (u.clone(), m)))
        .map(|(u, m)| {
            (
                u,
                (
                    m.state.as_ref().map(|s| s.as_str().to_owned()),
                    m.since_ms.unwrap(),
                    m.last_ms,
                ),
            )
        })
        .collect();
    assert_eq!(
        summary.members,
        present.len() as u64,
        "the summary counts the present members"
    );
    Expected {
        present,
        occupancy: summary.occupancy,
        updated_at_ms: summary.updated_at_ms,
    }
}

fn arb_event() -> impl Strategy<Value = Event> {
    let uuids = prop::sample::select(vec!["u1", "u2", "u3", "u4"]);
    (
        0u8..20,
        0i64..12,
        uuids.clone(),
        prop::option::of(0u64..5),
        prop::option::of(0u8..3),
        prop::collection::vec(uuids, 0..3),
        any::<u32>(),
    )
        .prop_map(|(kind, sec, uuid, occupancy, state, delta_uuids, id)| {
            let action = match kind {
                0..=5 => Action::Join,
                6..=8 => Action::StateChange,
                9..=11 => Action::Leave,
                12..=13 => Action::Timeout,
                14..=16 => Action::Interval,
                17 => Action::Inactive,
                _ => Action::Active,
            };
            let member = matches!(
                action,
                Action::Join | Action::StateChange | Action::Leave | Action::Timeout
            );
            // Whole seconds, as G1 sends them: ties are common and must be ordered.
            let mut e = event(
                &format!("{id:08x}"),
                action,
                member.then_some(uuid),
                sec * 1000,
            );
            e.timestamp_ms = None;
            e.occupancy = if action == Action::Inactive {
                Some(0)
            } else {
                occupancy
            };
            if member && let Some(s) = state {
                e.state = Some(State::from_value(&json!({ "s": s })));
            }
            if action == Action::Interval {
                let (j, l) = delta_uuids.split_at(delta_uuids.len() / 2);
                e.delta = Some(Delta {
                    join: j.iter().map(|u| (*u).to_owned()).collect(),
                    leave: l.iter().map(|u| (*u).to_owned()).collect(),
                    timeout: vec![],
                });
            }
            e
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any order, any copies, any split into batches: the same state, and it is the model's.
    #[test]
    fn the_state_is_a_function_of_the_set_of_events(
        events in prop::collection::vec(arb_event(), 1..24),
        order in any::<u64>(),
        repeats in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        batch in 1usize..6,
    ) {
        let mut delivered = events.clone();
        for r in &repeats {
            delivered.push(events[r.index(events.len())].clone());
        }
        // A deterministic shuffle from `order`.
        let mut seed = order | 1;
        for i in (1..delivered.len()).rev() {
            seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
            delivered.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        let mut channel = Channel::default();
        for chunk in delivered.chunks(batch) {
            let refs: Vec<&Event> = chunk.iter().collect();
            // The caller loads every record for an inactive; the test channel holds them all.
            apply(&mut channel, "room", &refs, TTL, NOW);
        }
        prop_assert_eq!(observed(&channel), reference(&events));
    }
}

#[test]
fn a_join_that_arrives_after_its_timeout_still_ends_one_session() {
    // Kafka keeps per-action topics in no common order: the end can come first.
    let mut channel = Channel::default();
    let timeout = event("t", Action::Timeout, Some("u1"), 90_000);
    run(&mut channel, std::slice::from_ref(&timeout));
    assert!(member(&channel, "u1").unwrap().ended.is_none());
    let outcome = run(&mut channel, &[join("j", "u1", 1_000)]);
    assert_eq!(
        (outcome.stale, outcome.applied.len()),
        (1, 0),
        "stale for presence"
    );
    assert!(outcome.dirty, "the session is recorded");
    let m = member(&channel, "u1").unwrap();
    assert!(!m.present);
    let ended = m.ended.clone().unwrap();
    assert_eq!(
        (ended.since_ms, ended.until_ms, ended.reason),
        (1_000, 90_000, Reason::Timeout)
    );
    assert_eq!(channel.summary.as_ref().unwrap().unpublished, 1);
    // The same events again change nothing.
    let before = channel.clone();
    let outcome = run(&mut channel, &[timeout, join("j", "u1", 1_000)]);
    assert!(!outcome.dirty);
    assert_eq!(channel, before);
    // Once published, an even earlier join of the same stay does not reopen it.
    assert!(mark_published(&mut channel, "u1", NOW));
    assert!(!run(&mut channel, &[join("j0", "u1", 500)]).dirty);
}

#[test]
fn a_late_join_before_the_earlier_absence_starts_no_session() {
    let mut channel = Channel::default();
    run(
        &mut channel,
        &[leave("l1", "u1", 10_000), leave("l2", "u1", 20_000)],
    );
    assert!(
        !run(&mut channel, &[join("j", "u1", 5_000)]).dirty,
        "before both absences"
    );
    let outcome = run(&mut channel, &[join("j2", "u1", 15_000)]);
    assert!(outcome.dirty);
    let ended = member(&channel, "u1").unwrap().ended.clone().unwrap();
    assert_eq!((ended.since_ms, ended.until_ms), (15_000, 20_000));
}
