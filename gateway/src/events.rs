//! App events: what berrygw tells the data platform over MQTT (decoded
//! readings, command outcomes, alarms, field state, as JSON on topics of its
//! own) and what the platform may tell it (session keys of OTAA devices).
//! Pure functions, shared by whoever makes an event (`decode`, `actuation`,
//! `rules`) and the app sink that publishes it (`sink::mqtt`).
//!
//! A journal record of this sink carries its whole message: the topic, a
//! newline, then the JSON body. The topic is decided when the record is made
//! (a device may name its own target), so a replay after an outage publishes
//! exactly what would have been published live.

use berrygw_lora::phy::{AesKey, DevAddr, Eui64};
pub use berrygw_proto::topics::AppTopics;
use serde::Deserialize;

use crate::journal::NewRecord;

/// The journal record kind of app messages (the app journal holds nothing else).
pub const RECORD_KIND: u8 = 16;
/// The same, published retained (the availability ledger's month records).
pub const RETAINED_RECORD_KIND: u8 = 17;

/// The retained state message.
pub fn state_message(gateway_id: &str, online: bool) -> Vec<u8> {
    serde_json::json!({ "gateway_id": gateway_id, "online": online }).to_string().into_bytes()
}

/// A journal record holding one message for `topic`.
pub fn record(topic: &str, body: &[u8], received_at_ms: i64) -> NewRecord {
    let mut payload = Vec::with_capacity(topic.len() + 1 + body.len());
    payload.extend_from_slice(topic.as_bytes());
    payload.push(b'\n');
    payload.extend_from_slice(body);
    NewRecord { kind: RECORD_KIND, received_at_ms, payload }
}

/// A journal record holding one message for `topic`, published retained.
pub fn retained_record(topic: &str, body: &[u8], received_at_ms: i64) -> NewRecord {
    NewRecord { kind: RETAINED_RECORD_KIND, ..record(topic, body, received_at_ms) }
}

/// Why a stored app record cannot be published.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AppRecordError {
    #[error("record kind {0} is not an app message")]
    Kind(u8),
    #[error("app record without a topic line")]
    NoTopic,
    #[error("app record topic is not valid UTF-8 or is empty")]
    BadTopic,
}

/// The topic and body of a stored app record.
pub fn open_record(kind: u8, payload: &[u8]) -> Result<(&str, &[u8]), AppRecordError> {
    if kind != RECORD_KIND && kind != RETAINED_RECORD_KIND {
        return Err(AppRecordError::Kind(kind));
    }
    let newline = payload.iter().position(|&b| b == b'\n').ok_or(AppRecordError::NoTopic)?;
    let topic = std::str::from_utf8(&payload[..newline]).map_err(|_| AppRecordError::BadTopic)?;
    if topic.is_empty() || topic.contains(['+', '#']) {
        return Err(AppRecordError::BadTopic);
    }
    Ok((topic, &payload[newline + 1..]))
}

/// Session keys of an OTAA device, pushed by the central side (the network
/// server knows them after the join) on `…/session/set`:
///
/// ```json
/// {"dev_eui": "70b3d57ed0051a05", "dev_addr": "260b1a05",
///  "nwk_s_key": "…32 hex…", "app_s_key": "…32 hex…", "f_cnt_up": 12}
/// ```
/// `f_cnt_up` is the next uplink counter the device will use (0 after a join).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushedSession {
    pub dev_eui: Eui64,
    pub dev_addr: DevAddr,
    pub nwk_s_key: AesKey,
    pub app_s_key: AesKey,
    #[serde(default)]
    pub f_cnt_up: u32,
}

/// Parse a pushed session; the error says what is wrong with it.
pub fn parse_session_push(payload: &[u8]) -> Result<PushedSession, String> {
    if payload.len() > 4096 {
        return Err(format!("{} bytes is too large for a session message", payload.len()));
    }
    serde_json::from_slice(payload).map_err(|e| format!("not a session message: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_topic_and_body() {
        let t = AppTopics::new("berrygw/", "0016c001ff10a235");
        let topic = t.device_up(Eui64::from_u64(0x70b3_d57e_d005_1a02));
        assert_eq!(topic, "berrygw/0016c001ff10a235/device/70b3d57ed0051a02/up");
        let r = record(&topic, br#"{"a":"x\ny"}"#, 5);
        assert_eq!(open_record(r.kind, &r.payload), Ok((topic.as_str(), &br#"{"a":"x\ny"}"#[..])));
    }

    #[test]
    fn damaged_records_are_refused_not_published() {
        assert_eq!(open_record(1, b"t\n{}"), Err(AppRecordError::Kind(1)));
        assert_eq!(open_record(RECORD_KIND, b"no newline"), Err(AppRecordError::NoTopic));
        assert_eq!(open_record(RECORD_KIND, b"\n{}"), Err(AppRecordError::BadTopic));
        assert_eq!(open_record(RECORD_KIND, b"a/#\n{}"), Err(AppRecordError::BadTopic));
        assert_eq!(open_record(RECORD_KIND, &[0xff, b'\n']), Err(AppRecordError::BadTopic));
    }

    #[test]
    fn session_push_is_parsed_strictly() {
        let ok = br#"{"dev_eui":"70b3d57ed0051a05","dev_addr":"260b1a05","nwk_s_key":"000102030405060708090a0b0c0d0e0f","app_s_key":"0f0e0d0c0b0a09080706050403020100","f_cnt_up":3}"#;
        let s = parse_session_push(ok).expect("valid");
        assert_eq!(s.dev_addr, DevAddr::from_u32(0x260b_1a05));
        assert_eq!(s.f_cnt_up, 3);
        for bad in [
            &b"{}"[..],
            b"not json",
            br#"{"dev_eui":"70b3d57ed0051a05","dev_addr":"260b1a05","nwk_s_key":"00","app_s_key":"00"}"#,
            br#"{"dev_eui":"70b3d57ed0051a05","dev_addr":"260b1a05","nwk_s_key":"000102030405060708090a0b0c0d0e0f","app_s_key":"0f0e0d0c0b0a09080706050403020100","extra":1}"#,
        ] {
            assert!(parse_session_push(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(parse_session_push(&vec![b' '; 5000]).is_err());
    }
}
