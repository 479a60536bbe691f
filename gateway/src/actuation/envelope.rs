//! Signed commands from the central platform: the JSON envelope that arrives on the app
//! sink's command topic, its canonical bytes, its Ed25519 signature, and the checks that
//! decide whether it may go on to the profile engine. Parsing never trusts the payload;
//! `check` never writes (the replay window, which does, is `replay.rs`). Argument bounds and
//! interlocks are the Modbus profile engine's job, not this module's.
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
//! # Canonical bytes (what is signed)
//!
//! The JSON text of the object holding every member above except `signature` (that is
//! `args`, `command`, `gateway_id`, `id`, `issued_at` when present, `key_id`, `not_after`,
//! `target`), written as follows:
//!
//! - no whitespace outside strings;
//! - the members of every object, at every depth, sorted by key, comparing keys as UTF-8
//!   byte strings (the same order as Unicode code points); arrays keep their order;
//! - strings: `"` and `\` written `\"` and `\\`; U+0008, U+0009, U+000A, U+000C, U+000D written
//!   `\b`, `\t`, `\n`, `\f`, `\r`; every other character below U+0020 written `\u00xx` with
//!   lowercase hex digits; every other character written as its UTF-8 bytes (no `\u` escape
//!   for non-ASCII, `/` not escaped);
//! - `true`, `false`, `null` as such;
//! - a number written without fraction or exponent that fits a signed or unsigned 64-bit
//!   integer: in decimal, as is (`-3`, `18446744073709551615`);
//! - any other number is an IEEE 754 double, written like Python's `repr(float)`: the shortest
//!   digits that read back to the same double; with the decimal exponent `e` of the value
//!   written `d.ddd × 10^e`, in fixed notation with at least one digit after the point when
//!   `-4 <= e < 16` (`12.5`, `100.0`, `0.0001`), otherwise as `d.ddde±XX` with at least two
//!   exponent digits (`1e+16`, `1.5e-05`);
//! - `not_after` and `issued_at` are the strings exactly as received, never re-formatted.
//!
//! In Python, with `obj` the envelope as a dict without `signature`:
//! `json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()`.
//! Integers wider than 64 bits and `-0` do not survive that equivalence (we read them as
//! doubles): never send them, they end as `bad_signature`. NaN and infinities are refused.
//! A test signs envelopes with Python's `cryptography` package and verifies them here.

use std::fmt::{self, Write as _};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use ed25519_dalek::{Signature, Signer as _, SigningKey};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};

use super::keys::{AuthorizedKey, AuthorizedKeys};
use super::MAX_NAME_BYTES;

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

    fn validate(&self) -> Result<(), Refusal> {
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

    /// The bytes the signature covers (see the module documentation).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(256);
        self.write_members(&mut out, None);
        out.into_bytes()
    }

    /// The envelope as it goes on the wire: the canonical form with `signature` added.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(256);
        self.write_members(&mut out, Some(&BASE64.encode(self.signature)));
        out
    }

    fn write_members(&self, out: &mut String, signature: Option<&str>) {
        let text = |s: &str| Value::String(s.to_string());
        let mut members = vec![
            ("args", Value::Object(self.args.clone())),
            ("command", text(&self.command)),
            ("gateway_id", text(&self.gateway_id)),
            ("id", text(&self.id)),
            ("key_id", text(&self.key_id)),
            ("not_after", text(&self.not_after_text)),
            ("target", text(&self.target)),
        ];
        if let Some((_, issued_at)) = &self.issued_at {
            members.push(("issued_at", text(issued_at)));
        }
        if let Some(signature) = signature {
            members.push(("signature", text(signature)));
        }
        members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        out.push('{');
        for (i, (key, value)) in members.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_string(out, key);
            out.push(':');
            write_canonical(out, value);
        }
        out.push('}');
    }
}

impl fmt::Display for CommandEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "command {} `{}` on `{}` (key {})", self.id, self.command, self.target, self.key_id)
    }
}

/// Decide whether `envelope` may go on to the engine: [`authenticate`], then [`authorize`].
/// Returns the key that signed it. Replays are checked afterwards by `ReplayWindow::admit`.
pub fn check<'k>(
    envelope: &CommandEnvelope,
    keys: &'k AuthorizedKeys,
    gateway_id: &str,
    now: DateTime<Utc>,
) -> Result<&'k AuthorizedKey, Refusal> {
    let key = authenticate(envelope, keys)?;
    authorize(envelope, key, gateway_id, now)?;
    Ok(key)
}

/// The key named by `key_id` is known and the signature verifies with it: the key, or a
/// refusal that must be treated as coming from anyone (`key_id` is only claimed until then).
/// Pure computation, no I/O: cheap enough to run on every message before anything is stored.
pub fn authenticate<'k>(
    envelope: &CommandEnvelope,
    keys: &'k AuthorizedKeys,
) -> Result<&'k AuthorizedKey, Refusal> {
    let key = keys.get(&envelope.key_id).ok_or_else(|| {
        Refusal::new(
            reason::UNKNOWN_KEY,
            format!("no key `{}` in {}", envelope.key_id, keys.path().display()),
        )
    })?;
    let signature = Signature::from_bytes(&envelope.signature);
    key.public_key.verify_strict(&envelope.canonical_bytes(), &signature).map_err(|_| {
        Refusal::new(
            reason::BAD_SIGNATURE,
            format!(
                "signature does not verify with the claimed key `{}` (altered, or signed by another key)",
                key.id
            ),
        )
    })?;
    Ok(key)
}

/// What a correctly signed envelope must also satisfy, in this order: addressed to
/// `gateway_id`, `now` not past `not_after`, `not_after` at most [`MAX_VALIDITY`] ahead,
/// `issued_at` at most [`MAX_CLOCK_SKEW`] ahead, the key's scope allows target and command.
pub fn authorize(
    envelope: &CommandEnvelope,
    key: &AuthorizedKey,
    gateway_id: &str,
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    if envelope.gateway_id != gateway_id {
        return Err(Refusal::new(
            reason::WRONG_GATEWAY,
            format!("addressed to gateway `{}`; this is `{gateway_id}`", envelope.gateway_id),
        ));
    }
    if now > envelope.not_after {
        return Err(Refusal::new(
            reason::EXPIRED,
            format!("not_after {} is past (now {})", envelope.not_after_text, rfc3339(now)),
        ));
    }
    if envelope.not_after > now + MAX_VALIDITY {
        return Err(Refusal::new(
            reason::NOT_AFTER_TOO_FAR,
            format!(
                "not_after {} is more than {} h ahead (now {}); sign commands valid for less",
                envelope.not_after_text,
                MAX_VALIDITY.num_hours(),
                rfc3339(now)
            ),
        ));
    }
    if let Some((issued_at, text)) = &envelope.issued_at {
        if *issued_at > now + MAX_CLOCK_SKEW {
            return Err(Refusal::new(
                reason::ISSUED_IN_FUTURE,
                format!(
                    "issued_at {text} is more than {} min ahead of this gateway's clock (now {})",
                    MAX_CLOCK_SKEW.num_minutes(),
                    rfc3339(now)
                ),
            ));
        }
    }
    if !key.allows(&envelope.target, &envelope.command) {
        return Err(Refusal::new(
            reason::OUT_OF_SCOPE,
            format!("key `{}` may not send `{}` to `{}`", key.id, envelope.command, envelope.target),
        ));
    }
    Ok(())
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

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Write `value` in canonical form: sorted keys at every depth, no whitespace.
fn write_canonical(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Sorted here, whatever order the map keeps (serde_json's `preserve_order` may be on).
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                write_canonical(out, item);
            }
            out.push('}');
        }
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_number(out: &mut String, n: &Number) {
    // as_u64/as_i64/as_f64 rather than the is_* tests: right whatever serde_json features are on.
    if let Some(u) = n.as_u64() {
        let _ = write!(out, "{u}");
    } else if let Some(i) = n.as_i64() {
        let _ = write!(out, "{i}");
    } else if let Some(f) = n.as_f64() {
        write_float(out, f);
    } else {
        let _ = write!(out, "{n}");
    }
}

/// A finite double as Python's `repr(float)` writes it.
fn write_float(out: &mut String, f: f64) {
    // Rust's `{:e}` gives the shortest round-trip digits, e.g. "-1.2345e3", "5e-324", "0e0".
    let sci = format!("{f:e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if negative {
        out.push('-');
    }
    if (-4..16).contains(&exponent) {
        // Position of the decimal point after the first `point` digits.
        let point = exponent + 1;
        if point <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', point.unsigned_abs() as usize));
            out.push_str(&digits);
        } else {
            let point = point as usize;
            if point >= digits.len() {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', point - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..point]);
                out.push('.');
                out.push_str(&digits[point..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exponent < 0 { '-' } else { '+' }, exponent.unsigned_abs());
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::json;
    use std::path::Path;

    const GATEWAY: &str = "b827ebfffe000001";

    fn signing_key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn keys() -> AuthorizedKeys {
        let text = format!(
            "[[key]]\nid = \"central-2026\"\npublic_key = \"{}\"\n\
             targets = [\"barrage-*\", \"armoire-ep-rue-haute\"]\ncommands = [\"move_bay*\", \"stop_bay*\"]\n",
            BASE64.encode(signing_key(1).verifying_key().to_bytes())
        );
        AuthorizedKeys::parse(Path::new("authorized_keys"), &text).expect("valid keys")
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_772_366_400, 0).expect("2026-03-01T12:00:00Z")
    }

    fn command() -> UnsignedCommand {
        UnsignedCommand {
            id: "c-20260301-0001".into(),
            key_id: "central-2026".into(),
            gateway_id: GATEWAY.into(),
            target: "barrage-cher-1".into(),
            command: "move_bay".into(),
            args: json!({ "bay": 1, "position_pct": 40.5 }),
            not_after: now() + Duration::minutes(5),
            issued_at: None,
        }
    }

    fn signed(change: impl FnOnce(&mut UnsignedCommand)) -> CommandEnvelope {
        let mut c = command();
        change(&mut c);
        c.sign(&signing_key(1)).expect("valid command")
    }

    fn refusal(envelope: &CommandEnvelope, at: DateTime<Utc>) -> Refusal {
        check(envelope, &keys(), GATEWAY, at).expect_err("refused")
    }

    #[test]
    fn a_signed_envelope_goes_through_the_wire_and_verifies() {
        let envelope = signed(|_| {});
        let received = CommandEnvelope::parse(envelope.to_json().as_bytes()).expect("parses");
        assert_eq!(received, envelope);
        let keys = keys();
        let key = check(&received, &keys, GATEWAY, now()).expect("accepted");
        assert_eq!(key.id, "central-2026");
        assert_eq!(received.args()["position_pct"], json!(40.5));
    }

    #[test]
    fn canonical_bytes_are_sorted_compact_and_minimally_escaped() {
        let envelope = signed(|c| {
            c.args = json!({ "b": { "x": "é\n\"\\\u{1f}/", "Z": [1, -2, true, null, 0.5] }, "a": {} });
            c.not_after = DateTime::from_timestamp(1_772_366_700, 0).expect("time");
        });
        let expected = concat!(
            r#"{"args":{"a":{},"b":{"Z":[1,-2,true,null,0.5],"x":"é\n\"\\\u001f/"}},"command":"move_bay","#,
            r#""gateway_id":"b827ebfffe000001","id":"c-20260301-0001","key_id":"central-2026","#,
            r#""not_after":"2026-03-01T12:05:00Z","target":"barrage-cher-1"}"#
        );
        assert_eq!(String::from_utf8(envelope.canonical_bytes()).expect("utf-8"), expected);
    }

    #[test]
    fn canonical_bytes_do_not_depend_on_member_order_or_whitespace() {
        let envelope = signed(|c| c.args = json!({ "bay": 1, "options": { "slow": true, "margin": 2 } }));
        let signature = BASE64.encode(envelope.signature());
        let reordered = format!(
            "{{\n  \"signature\" : \"{signature}\",\n\t\"target\":\"barrage-cher-1\",  \"not_after\": \"{}\",\r\n\
             \"args\" : {{ \"options\" : {{ \"margin\" : 2 , \"slow\" : true }} , \"bay\" : 1 }},\n\
             \"key_id\":\"central-2026\", \"id\":\"c-20260301-0001\",\"gateway_id\":\"{GATEWAY}\",\n\
             \"command\":\"move\\u005fbay\"\n}}\n",
            envelope.not_after_text()
        );
        let received = CommandEnvelope::parse(reordered.as_bytes()).expect("parses");
        assert_eq!(received.canonical_bytes(), envelope.canonical_bytes());
        check(&received, &keys(), GATEWAY, now()).expect("the signature still verifies");
    }

    #[test]
    fn issued_at_is_signed_when_present_and_absent_from_the_bytes_otherwise() {
        let with = signed(|c| c.issued_at = Some(now()));
        let canonical = String::from_utf8(with.canonical_bytes()).expect("utf-8");
        assert!(
            canonical.contains(r#""id":"c-20260301-0001","issued_at":"2026-03-01T12:00:00Z","key_id""#),
            "{canonical}"
        );
        let received = CommandEnvelope::parse(with.to_json().as_bytes()).expect("parses");
        assert_eq!(received.issued_at(), Some(now()));
        check(&received, &keys(), GATEWAY, now()).expect("verifies");
        // Moved, or removed: the signature no longer holds.
        let wire = with.to_json();
        for text in [
            wire.replace("2026-03-01T12:00:00Z", "2026-03-01T12:01:00Z"),
            wire.replace(r#""issued_at":"2026-03-01T12:00:00Z","#, ""),
        ] {
            let envelope = CommandEnvelope::parse(text.as_bytes()).expect("well-formed");
            assert_eq!(refusal(&envelope, now()).reason, "bad_signature", "{text}");
        }
        let without = String::from_utf8(signed(|_| {}).canonical_bytes()).expect("utf-8");
        assert!(!without.contains("issued_at"), "old signers' bytes unchanged: {without}");
    }

    #[test]
    fn an_envelope_issued_in_the_future_is_refused() {
        let ahead = signed(|c| c.issued_at = Some(now() + MAX_CLOCK_SKEW + Duration::seconds(1)));
        assert_eq!(refusal(&ahead, now()).reason, "issued_in_future");
        let skewed = signed(|c| c.issued_at = Some(now() + MAX_CLOCK_SKEW));
        check(&skewed, &keys(), GATEWAY, now()).expect("a little skew is allowed");
        let bad = signed(|_| {}).to_json().replace("\"key_id\"", "\"issued_at\":\"yesterday\",\"key_id\"");
        let refused = CommandEnvelope::parse(bad.as_bytes()).expect_err("not a time");
        assert!(refused.message.contains("issued_at"), "{refused}");
    }

    #[test]
    fn a_forged_signature_names_the_key_as_claimed() {
        let envelope = command().sign(&signing_key(9)).expect("signed by the wrong key");
        let refused = refusal(&envelope, now());
        assert!(refused.message.contains("claimed key `central-2026`"), "{refused}");
    }

    #[test]
    fn floats_are_written_as_python_repr_does() {
        let cases = [
            (0.1, "0.1"),
            (12.5, "12.5"),
            (100.0, "100.0"),
            (-3.0, "-3.0"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-1.5e-7, "-1.5e-07"),
            (1.0 / 3.0, "0.3333333333333333"),
            (123_456_789.125, "123456789.125"),
            (9_007_199_254_740_992.0, "9007199254740992.0"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (1e22, "1e+22"),
        ];
        for (value, expected) in cases {
            let mut out = String::new();
            write_float(&mut out, value);
            assert_eq!(out, expected, "{value:e}");
        }
    }

    #[test]
    fn numbers_are_read_to_the_nearest_double() {
        // serde_json rounds long decimals one ulp off unless its `float_roundtrip` feature is
        // on; the canonical bytes would then differ from the signer's and verify nothing.
        for text in ["113118.04384909477", "-520131.84126414603", "2.2250738585072014e-308", "1e-30"] {
            let read: Value = serde_json::from_str(text).expect("a number");
            assert_eq!(
                read.as_f64().map(f64::to_bits),
                text.parse::<f64>().ok().map(f64::to_bits),
                "{text}: serde_json must be built with features = [\"float_roundtrip\"] (gateway/Cargo.toml)"
            );
        }
    }

    #[test]
    fn integers_stay_integers_and_decimals_stay_decimals() {
        let received = signed(|c| c.args = json!({}));
        let text = received.to_json().replace(
            "\"args\":{}",
            r#""args":{"i":-9223372036854775808,"u":18446744073709551615,"one":1.0,"e":1E2,"z":0}"#,
        );
        let parsed = CommandEnvelope::parse(text.as_bytes()).expect("parses");
        let canonical = String::from_utf8(parsed.canonical_bytes()).expect("utf-8");
        assert!(
            canonical.starts_with(
                r#"{"args":{"e":100.0,"i":-9223372036854775808,"one":1.0,"u":18446744073709551615,"z":0}"#
            ),
            "{canonical}"
        );
    }

    #[test]
    fn a_key_not_in_authorized_keys_is_unknown() {
        let envelope = signed(|c| c.key_id = "central-2027".into());
        let refused = refusal(&envelope, now());
        assert_eq!(refused.reason, "unknown_key");
        assert!(refused.message.contains("central-2027"), "{refused}");
    }

    #[test]
    fn a_signature_by_another_key_is_bad() {
        let envelope = command().sign(&signing_key(9)).expect("signed by the wrong key");
        assert_eq!(refusal(&envelope, now()).reason, "bad_signature");
    }

    #[test]
    fn any_change_after_signing_breaks_the_signature() {
        let wire = signed(|_| {}).to_json();
        let tampered = [
            wire.replace("40.5", "90.5"),
            wire.replace("\"bay\":1", "\"bay\":2"),
            wire.replace("barrage-cher-1", "barrage-cher-2"),
            wire.replace("c-20260301-0001", "c-20260301-0002"),
            // Same instant, written differently: the signed text is the one received.
            wire.replace("12:05:00Z", "12:05:00+00:00"),
            wire.replace("\"args\":{", "\"args\":{\"force\":true,"),
        ];
        for text in tampered {
            assert_ne!(text, wire);
            let envelope = CommandEnvelope::parse(text.as_bytes()).expect("still well-formed");
            assert_eq!(refusal(&envelope, now()).reason, "bad_signature", "{text}");
        }
    }

    #[test]
    fn a_command_for_another_gateway_is_refused() {
        let envelope = signed(|c| c.gateway_id = "b827ebfffe000002".into());
        let refused = refusal(&envelope, now());
        assert_eq!(refused.reason, "wrong_gateway");
        assert!(refused.message.contains("b827ebfffe000002"), "{refused}");
    }

    #[test]
    fn a_command_past_not_after_is_expired() {
        let envelope = signed(|_| {});
        check(&envelope, &keys(), GATEWAY, envelope.not_after()).expect("valid up to not_after itself");
        let refused = refusal(&envelope, envelope.not_after() + Duration::seconds(1));
        assert_eq!(refused.reason, "expired");
        // A command queued during a long outage arrives hours late.
        assert_eq!(refusal(&envelope, now() + Duration::hours(6)).reason, "expired");
    }

    #[test]
    fn a_not_after_more_than_a_day_ahead_is_refused() {
        let at_limit = signed(|c| c.not_after = now() + MAX_VALIDITY);
        check(&at_limit, &keys(), GATEWAY, now()).expect("24 h is allowed");
        let too_far = signed(|c| c.not_after = now() + MAX_VALIDITY + Duration::seconds(1));
        assert_eq!(refusal(&too_far, now()).reason, "not_after_too_far");
    }

    #[test]
    fn a_key_is_limited_to_its_targets_and_commands() {
        let wrong_target = signed(|c| c.target = "armoire-ep-rue-basse".into());
        assert_eq!(refusal(&wrong_target, now()).reason, "out_of_scope");
        let wrong_command = signed(|c| c.command = "set_bay_limits".into());
        let refused = refusal(&wrong_command, now());
        assert_eq!(refused.reason, "out_of_scope");
        assert!(refused.message.contains("set_bay_limits"), "{refused}");
        let listed = signed(|c| (c.target, c.command) = ("armoire-ep-rue-haute".into(), "stop_bay".into()));
        check(&listed, &keys(), GATEWAY, now()).expect("in scope");
    }

    #[test]
    fn checks_run_in_the_documented_order() {
        // Bad signature, wrong gateway, expired and out of scope at once: the signature decides.
        let envelope =
            UnsignedCommand { gateway_id: "elsewhere".into(), target: "nowhere".into(), ..command() }
                .sign(&signing_key(9))
                .expect("signed");
        assert_eq!(refusal(&envelope, now() + Duration::days(2)).reason, "bad_signature");
        // Correctly signed, other gateway and expired: the gateway decides.
        let envelope = signed(|c| c.gateway_id = "elsewhere".into());
        assert_eq!(refusal(&envelope, now() + Duration::days(2)).reason, "wrong_gateway");
        // Expired and out of scope: expiry decides.
        let envelope = signed(|c| c.target = "nowhere".into());
        assert_eq!(refusal(&envelope, now() + Duration::days(2)).reason, "expired");
    }

    #[test]
    fn malformed_envelopes_are_refused_with_what_is_wrong() {
        let wire = signed(|_| {}).to_json();
        let signature = BASE64.encode(signed(|_| {}).signature());
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"{\"id\":".to_vec(), "EOF"),
            (b"not json".to_vec(), "expected"),
            (vec![0xff, 0xfe, b'{'], "UTF-8"),
            (
                wire.replace("\"args\":{\"bay\":1,\"position_pct\":40.5}", "\"args\":[1]").into_bytes(),
                "object",
            ),
            (wire.replace("\"id\":\"c-20260301-0001\"", "\"id\":5").into_bytes(), "invalid type"),
            (
                wire.replace("\"target\":", "\"colour\":\"red\",\"target\":").into_bytes(),
                "unknown field `colour`",
            ),
            (wire.replace(",\"target\":\"barrage-cher-1\"", "").into_bytes(), "missing field `target`"),
            (wire.replace("\"bay\":1,", "\"bay\":1,\"bay\":2,").into_bytes(), "appears twice"),
            (
                wire.replace("\"target\":", "\"id\":\"again\",\"target\":").into_bytes(),
                "duplicate field `id`",
            ),
            (wire.replace(&signature, "not base64!").into_bytes(), "base64"),
            (wire.replace(&signature, &BASE64.encode([1u8; 63])).into_bytes(), "63 bytes"),
            (wire.replace("2026-03-01T12:05:00Z", "01/03/2026 12:05").into_bytes(), "RFC 3339"),
            (wire.replace("c-20260301-0001", "c 1").into_bytes(), "printable ASCII"),
            (wire.replace("c-20260301-0001", "").into_bytes(), "printable ASCII"),
            (wire.replace("\"barrage-cher-1\"", "\"\"").into_bytes(), "`target`"),
            (wire.replace("\"barrage-cher-1\"", "\"barrage\\u0000\"").into_bytes(), "control"),
            (wire.replace("40.5", "NaN").into_bytes(), "expected value"),
            (wire.replace("40.5", "1e999").into_bytes(), "out of range"),
            (format!("{wire}{}", " ".repeat(MAX_ENVELOPE_BYTES)).into_bytes(), "at most 8192"),
        ];
        for (payload, words) in cases {
            let refused = CommandEnvelope::parse(&payload).expect_err(words);
            assert_eq!(refused.reason, "malformed", "{refused}");
            assert!(refused.message.contains(words), "expected {words:?} in: {refused}");
            assert!(!refused.message.contains('\n'), "one line: {refused}");
        }
    }

    #[test]
    fn refusal_messages_stay_on_one_line() {
        let wire = signed(|_| {}).to_json().replace("\"target\":", "\"x\\ny\":1,\"target\":");
        let refused = CommandEnvelope::parse(wire.as_bytes()).expect_err("unknown field");
        assert!(refused.message.contains("x\\ny"), "{refused}");
        assert!(Refusal::new("x", "a".repeat(10_000)).message.len() < 500);
    }

    #[test]
    fn random_and_mutated_payloads_never_panic_nor_pass_altered() {
        let keys = keys();
        let original = signed(|c| c.args = json!({ "bay": 1, "position_pct": 40.5, "note": "crue" }));
        let wire = original.to_json().into_bytes();
        let mut rng = StdRng::seed_from_u64(0x0062_6572_7279_6777);
        for round in 0..20_000 {
            let payload: Vec<u8> = if round % 4 == 0 {
                let len = rng.gen_range(0..400);
                (0..len).map(|_| rng.gen()).collect()
            } else {
                let mut p = wire.clone();
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(0..=p.len());
                    match rng.gen_range(0..3) {
                        0 if at < p.len() => p[at] = rng.gen(),
                        1 if at < p.len() => {
                            p.remove(at);
                        }
                        _ => p.insert(at, *b" \"{}[],:0e-\\\n".get(rng.gen_range(0..13)).unwrap_or(&b' ')),
                    }
                }
                p
            };
            if let Ok(envelope) = CommandEnvelope::parse(&payload) {
                if check(&envelope, &keys, GATEWAY, now()).is_ok() {
                    assert_eq!(
                        envelope.canonical_bytes(),
                        original.canonical_bytes(),
                        "accepted an altered command: {}",
                        String::from_utf8_lossy(&payload)
                    );
                }
            }
        }
    }

    /// Signs envelopes with Python's `cryptography` (Debian: python3-cryptography) and
    /// `json.dumps(sort_keys=True, ...)`, then verifies them here: the platform's recipe works.
    #[test]
    fn envelopes_signed_in_python_verify_here() {
        const SCRIPT: &str = r#"
import base64, json, random, struct, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

key = Ed25519PrivateKey.from_private_bytes(bytes([7] * 32))
rng = random.Random(2026)

def random_double():
    while True:
        f = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if f == f and f not in (float("inf"), float("-inf")):
            return f

fixed = [0.1, 12.5, 100.0, 1e16, 1e15, 1e-4, 1e-5, 1.5e-7, -0.0, 0.0, 5e-324,
         1.7976931348623157e308, 123456789.125, 2.0 ** 53, 1 / 3, 2.2250738585072014e-308]
arg_sets = [
    {"bay": 1, "position_pct": 40.5, "zèbre": "é\u00e9\n\t\"\\\u001f\u007f\u2028/😀",
     "nested": {"b": [1, -2, True, False, None], "a": {}, "Z": "upper", "": "empty key"},
     "big": 2 ** 64 - 1, "neg": -(2 ** 63), "fixed": fixed},
    {"uniform": [rng.uniform(-1e6, 1e6) for _ in range(60)]},
    {"scaled": [rng.random() * 10.0 ** rng.randint(-30, 30) for _ in range(60)]},
    {"bits": [random_double() for _ in range(60)]},
]
out = {"public_key": base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode(),
       "envelopes": []}
for i, args in enumerate(arg_sets):
    obj = {"id": "py-%04d" % i, "key_id": "central-2026", "gateway_id": "b827ebfffe000001",
           "target": "barrage-cher-1", "command": "move_bay", "args": args,
           "not_after": "2026-03-01T13:05:00.250+01:00"}
    if i % 2 == 1:
        obj["issued_at"] = "2026-03-01T11:59:30.5Z"
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    wire = dict(obj, signature=base64.b64encode(key.sign(canonical)).decode())
    # As a relay might pass it on: other member order, whitespace, \u escapes.
    text = json.dumps(dict(reversed(list(wire.items()))), indent=1, ensure_ascii=True)
    assert len(text.encode()) <= 8192, len(text)
    out["envelopes"].append({"canonical_hex": canonical.hex(), "wire": text})
json.dump(out, sys.stdout)
"#;
        let python = std::env::var("BERRYGW_TEST_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
        let output = std::process::Command::new(&python).arg("-c").arg(SCRIPT).output().unwrap_or_else(|e| {
            panic!("cannot run {python} ({e}): this test needs Debian's python3 and python3-cryptography")
        });
        assert!(
            output.status.success(),
            "{python} failed; this test needs Debian's python3-cryptography (apt-get install \
             python3-cryptography):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let out: Value = serde_json::from_slice(&output.stdout).expect("the script prints JSON");
        let public_key = BASE64.encode(signing_key(7).verifying_key().to_bytes());
        assert_eq!(out["public_key"], json!(public_key), "same seed, same public key");
        let text = format!(
            "[[key]]\nid = \"central-2026\"\npublic_key = \"{public_key}\"\ntargets = [\"*\"]\ncommands = [\"*\"]\n"
        );
        let keys = AuthorizedKeys::parse(Path::new("authorized_keys"), &text).expect("keys");
        let envelopes = out["envelopes"].as_array().expect("a list");
        assert_eq!(envelopes.len(), 4);
        for e in envelopes {
            let wire = e["wire"].as_str().expect("wire text");
            let envelope = CommandEnvelope::parse(wire.as_bytes()).expect("Python's envelope parses");
            let expected = hex::decode(e["canonical_hex"].as_str().expect("hex")).expect("hex");
            assert_eq!(
                String::from_utf8_lossy(&envelope.canonical_bytes()),
                String::from_utf8_lossy(&expected),
                "canonical bytes differ from Python's json.dumps (if only long floats differ: serde_json needs its `float_roundtrip` feature)"
            );
            check(&envelope, &keys, GATEWAY, now()).expect("Python's signature verifies");
        }
        let issued: Vec<bool> = envelopes
            .iter()
            .filter_map(|e| CommandEnvelope::parse(e["wire"].as_str()?.as_bytes()).ok())
            .map(|e| e.issued_at().is_some())
            .collect();
        assert_eq!(issued, [false, true, false, true], "with and without issued_at");
    }
}
