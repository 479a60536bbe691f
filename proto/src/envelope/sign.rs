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
