//! The platform's side: the fields of a command before it is signed, checked as a received
//! envelope would be, and signed over the canonical bytes with an Ed25519 key.

use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::Value;

use super::{CommandEnvelope, Refusal};

/// The fields of a command before it is signed (tests, and a future `berrygw sign`).
#[derive(Clone, Debug)]
pub struct UnsignedCommand {
    pub id: String,
    pub key_id: String,
    pub gateway_id: String,
    pub target: String,
    pub command: String,
    /// Must be a JSON object.
    pub args: Value,
    pub not_after: DateTime<Utc>,
    /// When it is signed (recommended: now).
    pub issued_at: Option<DateTime<Utc>>,
}

impl UnsignedCommand {
    /// Check the fields as `CommandEnvelope::parse` would, and sign the canonical bytes with `key`.
    /// `not_after` is written in RFC 3339 with `Z`, with a fraction only when it has one.
    pub fn sign(self, key: &SigningKey) -> Result<CommandEnvelope, Refusal> {
        let Value::Object(args) = self.args else {
            return Err(Refusal::malformed("`args` must be a JSON object"));
        };
        let mut envelope = CommandEnvelope {
            id: self.id,
            key_id: self.key_id,
            gateway_id: self.gateway_id,
            target: self.target,
            command: self.command,
            args,
            not_after_text: self.not_after.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            not_after: self.not_after,
            issued_at: self.issued_at.map(|t| (t, t.to_rfc3339_opts(SecondsFormat::AutoSi, true))),
            signature: [0; 64],
        };
        envelope.validate()?;
        envelope.signature = key.sign(&envelope.canonical_bytes()).to_bytes();
        Ok(envelope)
    }
}

/// A command's arguments as people type them (`berrygw actuate`, `berryctl command`):
/// `name=value` words, numbers and `true`/`false` as such, anything else a string (an
/// enumeration label); or one JSON object.
pub fn args_from_words(args: &[String]) -> Result<serde_json::Value, String> {
    if let [one] = args {
        if one.trim_start().starts_with('{') {
            return serde_json::from_str(one).map_err(|e| format!("arguments are not a JSON object: {e}"));
        }
    }
    let mut map = serde_json::Map::new();
    for a in args {
        let (k, v) = a.split_once('=').ok_or_else(|| format!("argument {a:?}: write name=value"))?;
        // 60 and true are numbers and booleans; anything else is a string (an enumeration label).
        let value = serde_json::from_str::<serde_json::Value>(v)
            .ok()
            .filter(|v| v.is_number() || v.is_boolean())
            .unwrap_or_else(|| serde_json::Value::String(v.to_string()));
        map.insert(k.to_string(), value);
    }
    Ok(serde_json::Value::Object(map))
}
