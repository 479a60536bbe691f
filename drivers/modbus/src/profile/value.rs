//! Registers ⇄ engineering values for one point: types, word order, scale, offset, enums.
//!
//! Pure functions, no I/O: the poller decodes what it read, commands encode what they write.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};

use super::{DataType, Literal, Point, WordOrder};

/// The state of every point of a device, by point name.
pub type Points = BTreeMap<String, PointValue>;

/// A decoded point value.
#[derive(Debug, Clone, PartialEq)]
pub enum PointValue {
    /// A coil or discrete input without labels.
    Bool(bool),
    /// A register after scale and offset.
    Number(f64),
    /// An enumeration: the raw value and its label (`None` when the device sent a value
    /// the profile does not name).
    Enum {
        /// The raw integer read.
        raw: i64,
        /// Its label in the profile.
        label: Option<String>,
    },
}

impl PointValue {
    /// The numeric value, for numbers only.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            PointValue::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// Whether this value equals a profile constant (numbers within `tolerance`).
    pub fn matches(&self, lit: &Literal, tolerance: f64) -> bool {
        match (self, lit) {
            (PointValue::Bool(a), Literal::Bool(b)) => a == b,
            (PointValue::Number(a), Literal::Number(b)) => (a - b).abs() <= tolerance,
            (PointValue::Enum { label: Some(a), .. }, Literal::Label(b)) => a == b,
            _ => false,
        }
    }
}

impl std::fmt::Display for PointValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PointValue::Bool(b) => write!(f, "{b}"),
            PointValue::Number(n) => write!(f, "{n}"),
            PointValue::Enum { label: Some(l), .. } => write!(f, "\"{l}\""),
            PointValue::Enum { raw, label: None } => write!(f, "unknown raw value {raw}"),
        }
    }
}

/// JSON for the platform: `true`, `61.5`, `"remote"` (or the raw number if unlabelled).
impl Serialize for PointValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PointValue::Bool(b) => s.serialize_bool(*b),
            PointValue::Number(n) => s.serialize_f64(*n),
            PointValue::Enum { label: Some(l), .. } => s.serialize_str(l),
            PointValue::Enum { raw, label: None } => s.serialize_i64(*raw),
        }
    }
}

/// A value that cannot be written to a point.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    /// Outside what the raw type can hold after scale and offset.
    #[error("{value} is outside what the register can hold ({min}..={max})")]
    OutOfRange {
        /// The engineering value asked for.
        value: f64,
        /// Lowest writable engineering value.
        min: f64,
        /// Highest writable engineering value.
        max: f64,
    },
    /// NaN or infinite.
    #[error("{0} is not a finite number")]
    NotFinite(f64),
    /// The point is a bit, not a register.
    #[error("point is a bit, not a register")]
    NotARegister,
}

/// Decode a bit (coil or discrete input).
pub fn decode_bit(p: &Point, bit: bool) -> PointValue {
    if p.labels.is_empty() {
        PointValue::Bool(bit)
    } else {
        let raw = i64::from(bit);
        PointValue::Enum { raw, label: p.label_of(raw).map(str::to_string) }
    }
}

/// Decode `p` from its registers (`words.len()` must be the type's width; the poller
/// guarantees it by slicing a checked reply).
pub fn decode_registers(p: &Point, words: &[u16]) -> PointValue {
    let word = |i: usize| words.get(i).copied().unwrap_or(0);
    let wide = || {
        let (hi, lo) = match p.word_order {
            WordOrder::Big => (word(0), word(1)),
            WordOrder::Little => (word(1), word(0)),
        };
        (u32::from(hi) << 16) | u32::from(lo)
    };
    let raw: i64 = match p.data_type {
        DataType::Bool => i64::from(word(0) != 0),
        DataType::U16 => i64::from(word(0)),
        DataType::I16 => i64::from(word(0) as i16),
        DataType::U32 => i64::from(wide()),
        DataType::I32 => i64::from(wide() as i32),
        DataType::F32 => {
            // The shortest decimal that is this f32 (230.1, not 230.10000610351562).
            let x = f32::from_bits(wide());
            let x = x.to_string().parse::<f64>().unwrap_or(f64::from(x));
            return PointValue::Number(scaled(x, p.scale) + p.offset);
        }
    };
    if p.labels.is_empty() {
        PointValue::Number(scaled(raw as f64, p.scale) + p.offset)
    } else {
        PointValue::Enum { raw, label: p.label_of(raw).map(str::to_string) }
    }
}

/// `x * scale`, dividing by 10, 100, ... for decimal scales so that 101 × 0.1 reads 10.1.
fn scaled(x: f64, scale: f64) -> f64 {
    let inverse = 1.0 / scale;
    if scale.abs() < 1.0 && (inverse - inverse.round()).abs() < 1e-9 {
        x / inverse.round()
    } else {
        x * scale
    }
}

/// Encode an engineering value for a register point: `raw = (value - offset) / scale`,
/// rounded to the nearest integer for integer types.
pub fn encode_number(p: &Point, value: f64) -> Result<Vec<u16>, EncodeError> {
    if !value.is_finite() {
        return Err(EncodeError::NotFinite(value));
    }
    let raw = (value - p.offset) / p.scale;
    match p.data_type {
        DataType::Bool => Err(EncodeError::NotARegister),
        DataType::F32 => {
            let x = raw as f32;
            if !x.is_finite() {
                return Err(EncodeError::OutOfRange {
                    value,
                    min: f64::from(f32::MIN),
                    max: f64::from(f32::MAX),
                });
            }
            Ok(split(p, x.to_bits()))
        }
        t => {
            // int_range is Some for every integer type.
            let (lo, hi) = t.int_range().unwrap_or((0, 0));
            let rounded = raw.round();
            if rounded < lo as f64 || rounded > hi as f64 {
                let (a, b) = (lo as f64 * p.scale + p.offset, hi as f64 * p.scale + p.offset);
                return Err(EncodeError::OutOfRange { value, min: a.min(b), max: a.max(b) });
            }
            encode_raw(p, rounded as i64)
        }
    }
}

/// Encode a raw integer (an enum's raw value) for a register point.
pub fn encode_raw(p: &Point, raw: i64) -> Result<Vec<u16>, EncodeError> {
    let (lo, hi) = p.data_type.int_range().ok_or(EncodeError::NotARegister)?;
    if raw < lo || raw > hi {
        return Err(EncodeError::OutOfRange { value: raw as f64, min: lo as f64, max: hi as f64 });
    }
    Ok(match p.data_type {
        DataType::Bool => return Err(EncodeError::NotARegister),
        // In range checked above: the casts keep the two's complement bits.
        DataType::U16 | DataType::I16 => vec![raw as u16],
        _ => split(p, raw as u32),
    })
}

fn split(p: &Point, v: u32) -> Vec<u16> {
    let (hi, lo) = ((v >> 16) as u16, v as u16);
    match p.word_order {
        WordOrder::Big => vec![hi, lo],
        WordOrder::Little => vec![lo, hi],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::PointKind;

    fn point(t: DataType, order: WordOrder, scale: f64, offset: f64) -> Point {
        Point {
            name: "p".into(),
            kind: PointKind::HoldingRegister,
            address: 0,
            data_type: t,
            word_order: order,
            scale,
            offset,
            unit: String::new(),
            labels: BTreeMap::new(),
            description: String::new(),
        }
    }

    #[test]
    fn decodes_every_integer_type() {
        let p = |t| point(t, WordOrder::Big, 1.0, 0.0);
        assert_eq!(decode_registers(&p(DataType::U16), &[0xFFFF]), PointValue::Number(65535.0));
        assert_eq!(decode_registers(&p(DataType::I16), &[0xFFFE]), PointValue::Number(-2.0));
        assert_eq!(decode_registers(&p(DataType::U32), &[0x0001, 0x0002]), PointValue::Number(65538.0));
        assert_eq!(decode_registers(&p(DataType::I32), &[0xFFFF, 0xFFFF]), PointValue::Number(-1.0));
    }

    #[test]
    fn word_order_little_swaps_the_two_registers() {
        let big = point(DataType::U32, WordOrder::Big, 1.0, 0.0);
        let little = point(DataType::U32, WordOrder::Little, 1.0, 0.0);
        assert_eq!(decode_registers(&big, &[0x0001, 0x0000]), PointValue::Number(65536.0));
        assert_eq!(decode_registers(&little, &[0x0000, 0x0001]), PointValue::Number(65536.0));
        let f = point(DataType::F32, WordOrder::Little, 1.0, 0.0);
        let bits = 230.5f32.to_bits();
        assert_eq!(decode_registers(&f, &[bits as u16, (bits >> 16) as u16]), PointValue::Number(230.5));
    }

    #[test]
    fn scale_and_offset_apply_after_the_raw_type() {
        let p = point(DataType::I16, WordOrder::Big, 0.1, -40.0);
        assert_eq!(decode_registers(&p, &[600]), PointValue::Number(600.0 * 0.1 - 40.0));
        assert_eq!(encode_number(&p, 20.0), Ok(vec![600]));
    }

    #[test]
    fn encode_then_decode_round_trips_each_type_and_order() {
        for order in [WordOrder::Big, WordOrder::Little] {
            for (t, v) in [
                (DataType::U16, 612.3),
                (DataType::I16, -512.0),
                (DataType::U32, 4_000_000.0),
                (DataType::I32, -4_000_000.0),
                (DataType::F32, 2.75),
            ] {
                let p = point(t, order, 0.1, 0.0);
                let words = encode_number(&p, v).unwrap();
                let PointValue::Number(back) = decode_registers(&p, &words) else { panic!("number") };
                assert!((back - v).abs() < 0.051, "{t:?} {order:?}: {v} -> {back}");
            }
        }
    }

    #[test]
    fn decimal_scales_and_floats_read_as_people_write_them() {
        let p = point(DataType::U16, WordOrder::Big, 0.1, 0.0);
        assert_eq!(decode_registers(&p, &[101]), PointValue::Number(10.1));
        let p = point(DataType::U32, WordOrder::Big, 0.001, 0.0);
        assert_eq!(decode_registers(&p, &[0, 1234]), PointValue::Number(1.234));
        let f = point(DataType::F32, WordOrder::Big, 1.0, 0.0);
        let bits = 230.1f32.to_bits();
        assert_eq!(decode_registers(&f, &[(bits >> 16) as u16, bits as u16]), PointValue::Number(230.1));
    }

    #[test]
    fn out_of_range_values_are_refused_not_wrapped() {
        let p = point(DataType::U16, WordOrder::Big, 0.1, 0.0);
        assert!(matches!(encode_number(&p, 6553.6), Err(EncodeError::OutOfRange { .. })));
        assert!(matches!(encode_number(&p, -0.1), Err(EncodeError::OutOfRange { .. })));
        assert!(matches!(encode_number(&p, f64::NAN), Err(EncodeError::NotFinite(_))));
    }

    #[test]
    fn enum_points_decode_to_labels_and_keep_unknown_raw_values() {
        let mut p = point(DataType::U16, WordOrder::Big, 1.0, 0.0);
        p.labels = BTreeMap::from([(0, "local".to_string()), (1, "remote".to_string())]);
        assert_eq!(decode_registers(&p, &[1]), PointValue::Enum { raw: 1, label: Some("remote".into()) });
        let unknown = decode_registers(&p, &[7]);
        assert_eq!(unknown, PointValue::Enum { raw: 7, label: None });
        assert!(!unknown.matches(&Literal::Label("remote".into()), 0.0));
        assert_eq!(serde_json::to_string(&unknown).unwrap(), "7");
        let mut bit = p.clone();
        bit.data_type = DataType::Bool;
        assert_eq!(decode_bit(&bit, false), PointValue::Enum { raw: 0, label: Some("local".into()) });
    }
}
