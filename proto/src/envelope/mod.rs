//! Signed commands from the central platform: the JSON envelope that arrives on the app
//! sink's command topic, its canonical bytes, its Ed25519 signature, and the checks that
//! decide whether it may go on to the profile engine. Parsing never trusts the payload;
//! `check` never writes (the replay window, which does, is `replay.rs`). Argument bounds and
//! interlocks are the Modbus profile engine's job, not this module's.
//!
//! Here: the envelope ([`CommandEnvelope`], its accessors), the limits, and why a command is
//! refused ([`Refusal`], [`reason`]). `parse` reads an envelope strictly from a payload,
//! `canonical` writes the bytes that are signed (and the wire form), `sign` signs an
//! [`UnsignedCommand`], `check` authenticates and authorizes an envelope against
//! `authorized_keys`, the gateway id and the clock.
//!
//! # On the wire
//!
//! ```json
//! {
//!   "id": "c-20260301-0001",
//!   "key_id": "central-2026",
//!   "gateway_id": "b827ebfffe123456",
//!   "target": "barrage-cher-1",
//!   "command": "move_bay",
//!   "args": { "bay": 1, "position_pct": 40.5 },
//!   "issued_at": "2026-03-01T12:00:00Z",
//!   "not_after": "2026-03-01T12:05:00Z",
//!   "signature": "<base64 of the 64-byte Ed25519 signature>"
//! }
//! ```
//!
//! Every member but `issued_at` is required and no other is allowed; a payload is at most
//! [`MAX_ENVELOPE_BYTES`]. `id` is 1 to 128 printable ASCII characters without spaces and
//! must never be reused (the gateway remembers ids until their `not_after` has passed).
//! `key_id` names the key in `authorized_keys` that signed it: it is not in the issue's list
//! of fields, and was added so that an unknown key and a bad signature are told apart (and so
//! that a key is looked up, not tried). `gateway_id`, `target` and `command` are 1 to 128
//! characters without control characters. `args` is a JSON object (possibly empty) in which no
//! key appears twice. `not_after` is an RFC 3339 time at most [`MAX_VALIDITY`] ahead of the
//! gateway's clock; after it the command is refused. `issued_at` (RFC 3339, optional but
//! recommended) is when the platform signed it: at most [`MAX_CLOCK_SKEW`] ahead of the
//! gateway's clock, and an envelope issued before the gateway's replay window existed is
//! refused (`replay.rs`; a missing `issued_at` counts as `not_after` minus [`MAX_VALIDITY`], the
//! earliest it could have been accepted, so after a lost window envelopes without it are
//! refused for up to a day). `signature` is standard base64
//! (RFC 4648 §4, with padding) of the Ed25519 (RFC 8032, pure) signature of the canonical
//! bytes.
//!
//! Expiry is judged by the gateway's clock. A board without a battery-backed clock boots
//! with the time it saved last, possibly hours behind: until the clock is synchronized,
//! commands that expired during an outage would look fresh. Whoever calls [`check`] must
//! not accept central commands before the system clock is known to be synchronized.
//!
//! The canonical bytes, what the signature covers, are described in `canonical.rs`.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value};

mod canonical;
mod check;
mod parse;
mod sign;
#[cfg(test)]
mod tests;

pub use check::{authenticate, authorize, check};
pub use sign::{args_from_words, UnsignedCommand};

/// Largest envelope accepted, in bytes.
pub const MAX_ENVELOPE_BYTES: usize = 8 * 1024;

/// Furthest `not_after` may lie ahead of the gateway's clock. It bounds how long an id must be
/// remembered (the replay window) and how long a captured command stays usable.
pub const MAX_VALIDITY: Duration = Duration::hours(24);

/// Furthest `issued_at` may lie ahead of the gateway's clock (the two clocks differ a little).
pub const MAX_CLOCK_SKEW: Duration = Duration::minutes(5);

/// The stable labels of [`Refusal::reason`] produced by this module and by `replay.rs`.
pub mod reason {
    /// Not a well-formed envelope (the message says what is wrong).
    pub const MALFORMED: &str = "malformed";
    /// `key_id` is not in `authorized_keys`.
    pub const UNKNOWN_KEY: &str = "unknown_key";
    /// The signature does not verify with the named key.
    pub const BAD_SIGNATURE: &str = "bad_signature";
    /// Addressed to another gateway.
    pub const WRONG_GATEWAY: &str = "wrong_gateway";
    /// `not_after` is past.
    pub const EXPIRED: &str = "expired";
    /// `not_after` is more than `MAX_VALIDITY` ahead.
    pub const NOT_AFTER_TOO_FAR: &str = "not_after_too_far";
    /// The key may not send this command to this target.
    pub const OUT_OF_SCOPE: &str = "out_of_scope";
    /// The id was seen before.
    pub const REPLAYED: &str = "replayed";
    /// `issued_at` is more than `MAX_CLOCK_SKEW` ahead of the gateway's clock.
    pub const ISSUED_IN_FUTURE: &str = "issued_in_future";
    /// Issued before the replay window existed (it cannot tell whether the id ran before).
    pub const ISSUED_BEFORE_WINDOW: &str = "issued_before_window";
}

/// Why a command was refused: a stable snake_case `reason` (metrics, audit, result events)
/// and a one-line `message` for people.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Refusal {
    /// Stable label, one of [`reason`] (or the engine's own).
    pub reason: &'static str,
    /// What is wrong, on one line.
    pub message: String,
}

impl Refusal {
    /// A refusal; control characters in `message` are escaped and it is cut at 400 bytes,
    /// since it may quote what an attacker sent.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Refusal {
        let message = message.into();
        let mut line = String::with_capacity(message.len().min(400));
        for c in message.chars() {
            if line.len() >= 400 {
                line.push('…');
                break;
            }
            if c.is_control() {
                line.extend(c.escape_default());
            } else {
                line.push(c);
            }
        }
        Refusal { reason, message: line }
    }

    fn malformed(message: impl Into<String>) -> Refusal {
        Refusal::new(reason::MALFORMED, message)
    }
}

/// A parsed, well-formed command envelope. Its signature is not checked yet: that is [`check`].
#[derive(Clone, Debug, PartialEq)]
pub struct CommandEnvelope {
    id: String,
    key_id: String,
    gateway_id: String,
    target: String,
    command: String,
    args: Map<String, Value>,
    not_after: DateTime<Utc>,
    /// `not_after` exactly as received: the canonical bytes use it, never a re-formatting.
    not_after_text: String,
    /// When the platform signed it, when it says so (with the text as received).
    issued_at: Option<(DateTime<Utc>, String)>,
    signature: [u8; 64],
}

impl CommandEnvelope {
    /// The command's id, unique for the platform.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The id of the key that signed it.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The gateway it is addressed to.
    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    /// The field device (profile instance) it is for.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The profile command to run.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// The command's arguments (checked against the profile by the engine).
    pub fn args(&self) -> &Map<String, Value> {
        &self.args
    }

    /// After this instant the command must not run.
    pub fn not_after(&self) -> DateTime<Utc> {
        self.not_after
    }

    /// When the platform says it signed it.
    pub fn issued_at(&self) -> Option<DateTime<Utc>> {
        self.issued_at.as_ref().map(|(t, _)| *t)
    }

    /// `not_after` exactly as it was received.
    pub fn not_after_text(&self) -> &str {
        &self.not_after_text
    }

    /// The 64-byte signature.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }
}

impl fmt::Display for CommandEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "command {} `{}` on `{}` (key {})", self.id, self.command, self.target, self.key_id)
    }
}
