//! The bytes an envelope's signature covers, and the envelope as it goes on the wire.
//!
//! # Canonical bytes (what is signed)
//!
//! The JSON text of the object holding every member of the envelope (`mod.rs`, "On the wire")
//! except `signature` (that is `args`, `command`, `gateway_id`, `id`, `issued_at` when present,
//! `key_id`, `not_after`, `target`), written as follows:
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

use std::fmt::Write as _;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{Number, Value};

use super::CommandEnvelope;

impl CommandEnvelope {
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
pub(super) fn write_float(out: &mut String, f: f64) {
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
