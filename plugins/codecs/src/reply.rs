//! What a JavaScript codec's return value means, once it is JSON.
//!
//! `decodeUplink` answers `{data, warnings, errors}` (TTN v3 / ChirpStack v4); the legacy
//! entry points answer the data object itself. Pure Rust, no engine in here.

use serde_json::Value;

use crate::{DecodeError, Decoded};

/// At most this many warnings or errors are kept from one answer.
pub(crate) const MAX_MESSAGES: usize = 16;
/// Each warning or error is cut to this many bytes.
pub(crate) const MAX_MESSAGE_BYTES: usize = 256;

/// Interprets the JSON form of what `decodeUplink` returned.
pub(crate) fn from_decode_uplink(answer: Value) -> Result<Decoded, DecodeError> {
    let Value::Object(mut answer) = answer else {
        return Err(DecodeError::BadReturn(format!(
            "decodeUplink must return an object {{data, warnings, errors}}, got {}",
            kind(&answer)
        )));
    };
    let warnings = messages(answer.remove("warnings"), "warnings")?;
    let errors = messages(answer.remove("errors"), "errors")?;
    if !errors.is_empty() {
        return Err(DecodeError::CodecErrors(errors));
    }
    match answer.remove("data") {
        Some(data) => Ok(Decoded { data, warnings, errors }),
        None => Err(DecodeError::BadReturn(
            "decodeUplink returned no data and no errors (data missing, undefined or a function)".into(),
        )),
    }
}

/// An answer that is data only: built-in codecs, and legacy `Decode`/`Decoder` whose return
/// value is the data itself.
pub(crate) fn data_only(data: Value) -> Decoded {
    Decoded { data, warnings: Vec::new(), errors: Vec::new() }
}

/// A `warnings` or `errors` array: strings kept, anything else turned into its JSON text.
fn messages(list: Option<Value>, field: &str) -> Result<Vec<String>, DecodeError> {
    let items = match list {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(Value::String(one)) => vec![Value::String(one)],
        Some(other) => {
            return Err(DecodeError::BadReturn(format!(
                "{field} must be an array of strings, got {}",
                kind(&other)
            )))
        }
    };
    let total = items.len();
    let mut out: Vec<String> = items
        .into_iter()
        .take(MAX_MESSAGES)
        .map(|item| match item {
            Value::String(text) => shorten(text, MAX_MESSAGE_BYTES),
            other => shorten(other.to_string(), MAX_MESSAGE_BYTES),
        })
        .collect();
    if total > MAX_MESSAGES {
        out.push(format!("... and {} more {field}", total - MAX_MESSAGES));
    }
    Ok(out)
}

/// Cuts `text` to at most `max` bytes (on a character boundary), marking the cut with `…`.
pub(crate) fn shorten(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// A word for the kind of JSON value, for error messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn data_and_warnings_are_kept() {
        let decoded = from_decode_uplink(json!({"data": {"a": 1}, "warnings": ["low", 3]})).unwrap();
        assert_eq!(decoded.data, json!({"a": 1}));
        assert_eq!(decoded.warnings, vec!["low".to_string(), "3".to_string()]);
        assert!(decoded.errors.is_empty());
    }

    #[test]
    fn errors_mean_decoding_failed_even_with_data() {
        let err = from_decode_uplink(json!({"data": {}, "errors": ["bad length"]})).unwrap_err();
        assert_eq!(err, DecodeError::CodecErrors(vec!["bad length".into()]));
    }

    #[test]
    fn empty_errors_array_is_success() {
        assert!(from_decode_uplink(json!({"data": null, "errors": []})).is_ok());
    }

    #[test]
    fn missing_data_is_a_bad_return() {
        let err = from_decode_uplink(json!({"warnings": []})).unwrap_err();
        assert_eq!(err.label(), "bad_return");
        let err = from_decode_uplink(json!(42)).unwrap_err();
        assert!(err.to_string().contains("got a number"), "{err}");
    }

    #[test]
    fn message_lists_are_capped_in_count_and_length() {
        let many: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
        let long = "é".repeat(400);
        let decoded = from_decode_uplink(json!({"data": 1, "warnings": many, "errors": null})).unwrap();
        assert_eq!(decoded.warnings.len(), MAX_MESSAGES + 1);
        assert_eq!(decoded.warnings[MAX_MESSAGES], "... and 24 more warnings");
        let decoded = from_decode_uplink(json!({"data": 1, "warnings": [long]})).unwrap();
        assert!(decoded.warnings[0].len() <= MAX_MESSAGE_BYTES + '…'.len_utf8());
    }

    #[test]
    fn non_array_message_list_is_a_bad_return() {
        let err = from_decode_uplink(json!({"data": 1, "errors": {"x": 1}})).unwrap_err();
        assert_eq!(err.label(), "bad_return");
    }
}
