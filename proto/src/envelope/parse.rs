//! Reading an envelope from a message payload, trusting nothing: at most
//! [`MAX_ENVELOPE_BYTES`], UTF-8, exactly the expected members (no unknown one, none twice,
//! no key twice in any object of `args`), finite numbers, RFC 3339 times, a 64-byte base64
//! signature, and names within [`MAX_NAME_BYTES`]. Every failure is a `malformed` refusal
//! saying what is wrong.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};

use super::{CommandEnvelope, Refusal, MAX_ENVELOPE_BYTES};
use crate::MAX_NAME_BYTES;

/// The envelope as it is on the wire; `args` goes through `StrictValue` to refuse duplicate keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    id: String,
    key_id: String,
    gateway_id: String,
    target: String,
    command: String,
    args: StrictValue,
    not_after: String,
    #[serde(default)]
    issued_at: Option<String>,
    signature: String,
}

impl CommandEnvelope {
    /// Parse an envelope strictly from a message payload. Every failure is a `malformed`
    /// refusal whose message says what is wrong (with the JSON parser's line and column).
    pub fn parse(payload: &[u8]) -> Result<CommandEnvelope, Refusal> {
        if payload.len() > MAX_ENVELOPE_BYTES {
            return Err(Refusal::malformed(format!(
                "envelope of {} bytes; at most {MAX_ENVELOPE_BYTES} are accepted",
                payload.len()
            )));
        }
        let text = std::str::from_utf8(payload)
            .map_err(|e| Refusal::malformed(format!("envelope is not UTF-8: {e}")))?;
        let wire: Wire = serde_json::from_str(text).map_err(|e| {
            Refusal::malformed(format!("envelope is not valid JSON of the expected shape: {e}"))
        })?;
        let Value::Object(args) = wire.args.0 else {
            return Err(Refusal::malformed("`args` must be a JSON object (it may be empty: {})"));
        };
        let not_after = parse_time("not_after", &wire.not_after)?;
        let issued_at = match wire.issued_at {
            Some(text) => Some((parse_time("issued_at", &text)?, text)),
            None => None,
        };
        let signature: [u8; 64] = BASE64
            .decode(wire.signature.as_bytes())
            .map_err(|e| Refusal::malformed(format!("`signature` is not standard padded base64: {e}")))?
            .try_into()
            .map_err(|bytes: Vec<u8>| {
                Refusal::malformed(format!(
                    "`signature` holds {} bytes; an Ed25519 signature has 64",
                    bytes.len()
                ))
            })?;
        let envelope = CommandEnvelope {
            id: wire.id,
            key_id: wire.key_id,
            gateway_id: wire.gateway_id,
            target: wire.target,
            command: wire.command,
            args,
            not_after,
            not_after_text: wire.not_after,
            issued_at,
            signature,
        };
        envelope.validate()?;
        Ok(envelope)
    }

    /// The names are 1 to [`MAX_NAME_BYTES`], `id` printable ASCII without spaces, the
    /// others without control characters (also checked before signing).
    pub(super) fn validate(&self) -> Result<(), Refusal> {
        if self.id.is_empty()
            || self.id.len() > MAX_NAME_BYTES
            || !self.id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Refusal::malformed(format!(
                "`id` must be 1 to {MAX_NAME_BYTES} printable ASCII characters without spaces"
            )));
        }
        for (field, value) in [
            ("key_id", &self.key_id),
            ("gateway_id", &self.gateway_id),
            ("target", &self.target),
            ("command", &self.command),
        ] {
            if value.is_empty() || value.len() > MAX_NAME_BYTES || value.chars().any(char::is_control) {
                return Err(Refusal::malformed(format!(
                    "`{field}` must be 1 to {MAX_NAME_BYTES} bytes without control characters"
                )));
            }
        }
        Ok(())
    }
}

/// An RFC 3339 time member of the envelope.
fn parse_time(member: &str, text: &str) -> Result<DateTime<Utc>, Refusal> {
    if text.len() > 64 {
        return Err(Refusal::malformed(format!("`{member}` is longer than an RFC 3339 time can be")));
    }
    DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).map_err(|e| {
        Refusal::malformed(format!(
            "`{member}` {text:?} is not an RFC 3339 time ({e}); write e.g. 2026-03-01T12:05:00Z"
        ))
    })
}

/// A JSON value read like `serde_json::Value`, except that an object with a key written
/// twice is an error: the signer and every other reader must see the same arguments.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<StrictValue, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = StrictValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Number(v.into())))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Number(v.into())))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<StrictValue, E> {
        Number::from_f64(v)
            .map(|n| StrictValue(Value::Number(n)))
            .ok_or_else(|| E::custom("not a finite number"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v.to_string())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<StrictValue, D::Error> {
        StrictValue::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrictValue, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(StrictValue(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrictValue, A::Error> {
        let mut members = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if members.contains_key(&key) {
                return Err(de::Error::custom(format!("key `{key}` appears twice in an object")));
            }
            let StrictValue(value) = map.next_value()?;
            members.insert(key, value);
        }
        Ok(StrictValue(Value::Object(members)))
    }
}
