//! The spool record of a [`Job`]: the routed message (topic, key, headers, event id, payload)
//! plus what the metrics need, length-prefixed and versioned. Encoding happens on the request
//! path, decoding in the publisher and at start-up (dedup rebuild).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{Done, Job};
use crate::message::{self, Message};
use crate::normalize::Action;

const RECORD_VERSION: u8 = 1;

/// A spool record that does not decode: written by another version or damaged.
#[derive(Debug, thiserror::Error)]
#[error("spool record {0} does not decode")]
pub struct RecordError(u64);

impl Job {
    /// Encodes the routed message for the spool (everything but `done`).
    pub fn encode(&self) -> Bytes {
        let m = &self.message;
        let mut out = BytesMut::with_capacity(64 + m.topic.len() + m.payload.len() + 128);
        out.put_u8(RECORD_VERSION);
        out.put_u8(u8::from(m.is_event));
        out.put_u8(self.action.map_or(u8::MAX, |a| a as u8));
        out.put_u64(self.received_ms);
        out.put_i64(self.event_ms.unwrap_or(i64::MIN));
        put_str(&mut out, &m.topic);
        put_opt_str(&mut out, m.key.as_deref());
        put_opt_str(&mut out, m.msg_id.as_deref());
        out.put_u8(m.headers.len() as u8);
        for (name, value) in &m.headers {
            let index = message::header_index(name).unwrap_or(0);
            out.put_u8(index as u8);
            put_str(&mut out, value);
        }
        out.put_slice(&m.payload);
        out.freeze()
    }

    /// Inverse of [`Job::encode`]; `done` confirms spool record `seq`.
    ///
    /// # Errors
    /// A record that is truncated or has an unknown version or header.
    pub fn decode(seq: u64, mut record: Bytes) -> Result<Job, RecordError> {
        let bad = || RecordError(seq);
        if record.remaining() < 19 || record.get_u8() != RECORD_VERSION {
            return Err(bad());
        }
        let is_event = record.get_u8() == 1;
        let action = Action::ALL.get(record.get_u8() as usize).copied();
        let received_ms = record.get_u64();
        let event_ms = Some(record.get_i64()).filter(|&t| t != i64::MIN);
        let topic = get_str(&mut record).ok_or_else(bad)?;
        let key = get_opt_str(&mut record).ok_or_else(bad)?;
        let msg_id = get_opt_str(&mut record).ok_or_else(bad)?;
        if !record.has_remaining() {
            return Err(bad());
        }
        let count = record.get_u8();
        let mut headers = Vec::with_capacity(count as usize);
        for _ in 0..count {
            if !record.has_remaining() {
                return Err(bad());
            }
            let name = message::HEADER_NAMES
                .get(record.get_u8() as usize)
                .ok_or_else(bad)?;
            headers.push((*name, get_str(&mut record).ok_or_else(bad)?));
        }
        Ok(Job {
            message: Message {
                topic,
                key,
                headers,
                payload: record,
                msg_id,
                is_event,
            },
            action,
            received_ms,
            event_ms,
            done: Done::Spool(seq),
            charge: None,
        })
    }
}

/// The event id (`msg_id`) of an encoded record, read in place: rebuilding the dedup set at
/// start touches nothing else, so it needs no memory per record.
pub fn msg_id_of(record: &[u8]) -> Option<&str> {
    // version, is_event, action, received_ms, event_ms
    let mut at = 1 + 1 + 1 + 8 + 8;
    if record.first() != Some(&RECORD_VERSION) {
        return None;
    }
    let skip_str = |at: &mut usize| -> Option<(usize, usize)> {
        let len = u32::from_be_bytes(record.get(*at..*at + 4)?.try_into().ok()?) as usize;
        let start = *at + 4;
        record.get(start..start + len)?;
        *at = start + len;
        Some((start, len))
    };
    skip_str(&mut at)?; // topic
    match record.get(at)? {
        0 => at += 1,
        _ => {
            at += 1;
            skip_str(&mut at)?; // key
        }
    }
    match record.get(at)? {
        0 => None,
        _ => {
            at += 1;
            let (start, len) = skip_str(&mut at)?;
            std::str::from_utf8(&record[start..start + len]).ok()
        }
    }
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u32(s.len() as u32);
    out.put_slice(s.as_bytes());
}

fn put_opt_str(out: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => {
            out.put_u8(1);
            put_str(out, s);
        }
        None => out.put_u8(0),
    }
}

fn get_str(b: &mut Bytes) -> Option<String> {
    if b.remaining() < 4 {
        return None;
    }
    let len = b.get_u32() as usize;
    if b.remaining() < len {
        return None;
    }
    String::from_utf8(b.split_to(len).to_vec()).ok()
}

fn get_opt_str(b: &mut Bytes) -> Option<Option<String>> {
    if !b.has_remaining() {
        return None;
    }
    match b.get_u8() {
        0 => Some(None),
        _ => get_str(b).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_roundtrip() {
        let job = Job {
            message: Message {
                topic: "presence.room_2Elobby.join".to_owned(),
                key: Some("room.lobby".to_owned()),
                headers: vec![
                    (message::HEADER_EVENT_ID, "abc".to_owned()),
                    (message::HEADER_CHANNEL, "room.lobby".to_owned()),
                ],
                payload: Bytes::from_static(b"{\"x\":1}"),
                msg_id: Some("abc".to_owned()),
                is_event: true,
            },
            action: Some(Action::Join),
            received_ms: 42,
            event_ms: Some(-5),
            done: Done::Nobody,
            charge: None,
        };
        assert_eq!(msg_id_of(&job.encode()), Some("abc"));
        let back = Job::decode(7, job.encode()).unwrap();
        assert_eq!(back.message.topic, job.message.topic);
        assert_eq!(back.message.key, job.message.key);
        assert_eq!(back.message.headers, job.message.headers);
        assert_eq!(back.message.payload, job.message.payload);
        assert_eq!(back.message.msg_id, job.message.msg_id);
        assert!(back.message.is_event);
        assert_eq!(back.action, Some(Action::Join));
        assert_eq!(back.received_ms, 42);
        assert_eq!(back.event_ms, Some(-5));
        assert!(matches!(back.done, Done::Spool(7)));
        let encoded = job.encode();
        for cut in 0..encoded.len() - job.message.payload.len() {
            assert!(
                Job::decode(1, encoded.slice(..cut)).is_err(),
                "cut at {cut}"
            );
            assert!(
                msg_id_of(&encoded[..cut]).is_none_or(|id| id == "abc"),
                "cut at {cut}"
            );
        }
        let mut dead = job;
        dead.message.msg_id = None;
        assert_eq!(msg_id_of(&dead.encode()), None);
    }
}
