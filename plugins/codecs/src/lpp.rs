//! Cayenne LPP, decoded in Rust: a sequence of (channel byte, type byte, big-endian value).
//!
//! Output keys follow the common `<type>_<channel>` style (`temperature_3`, `gps_1`).
//! A repeated channel and type keeps the last value. Anything truncated or of an unknown
//! type is refused whole, naming the byte offset, rather than half-decoded.

use serde_json::{Map, Value};

use crate::DecodeError;

/// How one LPP data type is laid out and scaled.
struct LppType {
    code: u8,
    name: &'static str,
    size: usize,
    shape: Shape,
}

/// How the value bytes of a type become JSON.
enum Shape {
    /// One unsigned integer, reported as is.
    Unsigned,
    /// One unsigned integer divided by a scale.
    UnsignedScaled(f64),
    /// One signed integer divided by a scale.
    SignedScaled(f64),
    /// Three signed 16-bit integers `{x, y, z}` divided by a scale.
    Axes(f64),
    /// Latitude, longitude (0.0001°) and altitude (0.01 m), signed 24-bit each.
    Gps,
}

/// The types this decoder knows, from the public Cayenne LPP description.
const TYPES: &[LppType] = &[
    LppType { code: 0, name: "digital_in", size: 1, shape: Shape::Unsigned },
    LppType { code: 1, name: "digital_out", size: 1, shape: Shape::Unsigned },
    LppType { code: 2, name: "analog_in", size: 2, shape: Shape::SignedScaled(100.0) },
    LppType { code: 3, name: "analog_out", size: 2, shape: Shape::SignedScaled(100.0) },
    LppType { code: 101, name: "illuminance", size: 2, shape: Shape::Unsigned },
    LppType { code: 102, name: "presence", size: 1, shape: Shape::Unsigned },
    LppType { code: 103, name: "temperature", size: 2, shape: Shape::SignedScaled(10.0) },
    LppType { code: 104, name: "humidity", size: 1, shape: Shape::UnsignedScaled(2.0) },
    LppType { code: 113, name: "accelerometer", size: 6, shape: Shape::Axes(1000.0) },
    LppType { code: 115, name: "barometer", size: 2, shape: Shape::UnsignedScaled(10.0) },
    LppType { code: 134, name: "gyrometer", size: 6, shape: Shape::Axes(100.0) },
    LppType { code: 136, name: "gps", size: 9, shape: Shape::Gps },
];

fn lookup(code: u8) -> Option<&'static LppType> {
    TYPES.iter().find(|t| t.code == code)
}

/// Decodes a whole Cayenne LPP payload into a JSON object.
pub(crate) fn decode(bytes: &[u8]) -> Result<Value, DecodeError> {
    let mut out = Map::new();
    let mut at = 0;
    while at < bytes.len() {
        let (channel, code) = match bytes.get(at..at + 2) {
            Some(&[channel, code]) => (channel, code),
            _ => {
                return Err(DecodeError::Malformed(format!(
                    "Cayenne LPP: channel {} at byte {at} has no type byte",
                    bytes[at]
                )))
            }
        };
        let lpp = lookup(code).ok_or_else(|| {
            DecodeError::Malformed(format!(
                "Cayenne LPP: unknown type {code} (0x{code:02x}) at byte {} (channel {channel})",
                at + 1
            ))
        })?;
        let start = at + 2;
        let raw = bytes.get(start..start + lpp.size).ok_or_else(|| {
            DecodeError::Malformed(format!(
                "Cayenne LPP: {} on channel {channel} at byte {start} needs {} bytes, only {} left",
                lpp.name,
                lpp.size,
                bytes.len() - start
            ))
        })?;
        out.insert(key(lpp.name, channel), value(&lpp.shape, raw));
        at = start + lpp.size;
    }
    Ok(Value::Object(out))
}

/// `name_channel`, built without the formatting machinery (this runs per reading).
fn key(name: &str, channel: u8) -> String {
    let mut key = String::with_capacity(name.len() + 4);
    key.push_str(name);
    key.push('_');
    if channel >= 100 {
        key.push(char::from(b'0' + channel / 100));
    }
    if channel >= 10 {
        key.push(char::from(b'0' + channel / 10 % 10));
    }
    key.push(char::from(b'0' + channel % 10));
    key
}

fn value(shape: &Shape, raw: &[u8]) -> Value {
    match *shape {
        Shape::Unsigned => Value::from(unsigned(raw)),
        Shape::UnsignedScaled(scale) => Value::from(unsigned(raw) as f64 / scale),
        Shape::SignedScaled(scale) => Value::from(signed(raw) as f64 / scale),
        Shape::Axes(scale) => {
            let mut axes = Map::new();
            for (name, chunk) in ["x", "y", "z"].into_iter().zip(raw.chunks_exact(2)) {
                axes.insert(name.to_owned(), Value::from(signed(chunk) as f64 / scale));
            }
            Value::Object(axes)
        }
        Shape::Gps => {
            let mut gps = Map::new();
            let scales = [("latitude", 10_000.0), ("longitude", 10_000.0), ("altitude", 100.0)];
            for ((name, scale), chunk) in scales.into_iter().zip(raw.chunks_exact(3)) {
                gps.insert(name.to_owned(), Value::from(signed(chunk) as f64 / scale));
            }
            Value::Object(gps)
        }
    }
}

/// Big-endian unsigned integer of 1 to 4 bytes.
fn unsigned(raw: &[u8]) -> u32 {
    raw.iter().fold(0, |acc, &b| (acc << 8) | u32::from(b))
}

/// Big-endian two's-complement integer of 1 to 4 bytes.
fn signed(raw: &[u8]) -> i32 {
    let bits = 8 * raw.len() as u32;
    let shift = 32 - bits;
    ((unsigned(raw) << shift) as i32) >> shift
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_temperature_humidity_and_gps() {
        let bytes = [
            0x03, 0x67, 0x01, 0x10, // temperature_3 = 27.2
            0x05, 0x68, 0x29, // humidity_5 = 20.5
            0x01, 0x88, 0x06, 0x76, 0x5f, 0xf2, 0x96, 0x0a, 0x00, 0x03, 0xe8, // gps_1
        ];
        let data = decode(&bytes).unwrap();
        assert_eq!(
            data,
            json!({
                "temperature_3": 27.2,
                "humidity_5": 20.5,
                "gps_1": {"latitude": 42.3519, "longitude": -87.9094, "altitude": 10.0}
            })
        );
    }

    #[test]
    fn decodes_negative_values_and_every_scalar_type() {
        let bytes = [
            0x00, 0x00, 0x01, // digital_in_0 = 1
            0x01, 0x01, 0x00, // digital_out_1 = 0
            0x02, 0x02, 0xff, 0x38, // analog_in_2 = -2.0
            0x03, 0x03, 0x01, 0x2c, // analog_out_3 = 3.0
            0x04, 0x65, 0x01, 0xf4, // illuminance_4 = 500
            0x05, 0x66, 0x01, // presence_5 = 1
            0x06, 0x67, 0xff, 0xd7, // temperature_6 = -4.1
            0x07, 0x73, 0x27, 0x6f, // barometer_7 = 1009.5
            0xff, 0x68, 0xc8, // humidity_255 = 100
        ];
        assert_eq!(
            decode(&bytes).unwrap(),
            json!({
                "digital_in_0": 1, "digital_out_1": 0, "analog_in_2": -2.0, "analog_out_3": 3.0,
                "illuminance_4": 500, "presence_5": 1, "temperature_6": -4.1,
                "barometer_7": 1009.5, "humidity_255": 100.0
            })
        );
    }

    #[test]
    fn decodes_accelerometer_and_gyrometer_axes() {
        let bytes = [
            0x06, 0x71, 0x04, 0xd2, 0xfb, 0x2e, 0x00, 0x00, // accelerometer_6
            0x02, 0x86, 0x00, 0x64, 0xff, 0x9c, 0x27, 0x10, // gyrometer_2
        ];
        assert_eq!(
            decode(&bytes).unwrap(),
            json!({
                "accelerometer_6": {"x": 1.234, "y": -1.234, "z": 0.0},
                "gyrometer_2": {"x": 1.0, "y": -1.0, "z": 100.0}
            })
        );
    }

    #[test]
    fn empty_payload_is_an_empty_object() {
        assert_eq!(decode(&[]).unwrap(), json!({}));
    }

    #[test]
    fn truncated_value_names_the_offset() {
        let err = decode(&[0x03, 0x67, 0x01, 0x10, 0x05, 0x67, 0x01]).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Malformed(
                "Cayenne LPP: temperature on channel 5 at byte 6 needs 2 bytes, only 1 left".into()
            )
        );
        let err = decode(&[0x03, 0x67, 0x01, 0x10, 0x05]).unwrap_err();
        assert!(err.to_string().contains("at byte 4 has no type byte"), "{err}");
    }

    #[test]
    fn unknown_type_names_the_offset() {
        let err = decode(&[0x03, 0x67, 0x01, 0x10, 0x01, 0x42, 0x00]).unwrap_err();
        assert_eq!(err.label(), "malformed");
        assert!(err.to_string().contains("unknown type 66 (0x42) at byte 5"), "{err}");
    }

    #[test]
    fn keys_spell_every_channel_number() {
        assert_eq!(key("x", 0), "x_0");
        assert_eq!(key("x", 9), "x_9");
        assert_eq!(key("x", 10), "x_10");
        assert_eq!(key("x", 100), "x_100");
        assert_eq!(key("x", 255), "x_255");
    }
}
