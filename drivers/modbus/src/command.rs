//! The safety rules of a command, as pure functions the gateway can call and test without
//! a device: argument checking, interlocks, minimum interval, the register writes a command
//! produces, and the read-back predicate. Nothing here does I/O; `poller.rs` runs them in
//! order against a fresh read (`Device::execute`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::profile::value::{self, PointValue, Points};
use crate::profile::{ArgType, CommandSpec, Literal, Point, Profile};

/// Why a command was not even attempted. `reason` is stable (metrics, audit, API).
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Refusal {
    /// Stable snake_case cause.
    pub reason: RefusalReason,
    /// For the person refused: what is wrong and what to do.
    pub message: String,
}

impl Refusal {
    fn new(reason: RefusalReason, message: impl Into<String>) -> Refusal {
        Refusal { reason, message: message.into() }
    }
}

/// Stable causes of a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// The profile has no such command.
    UnknownCommand,
    /// Arguments missing, extra, or of the wrong type.
    BadArgs,
    /// An argument outside its `min..=max` or not among its `values`.
    ArgsOutOfBounds,
    /// An interlock on another point does not hold.
    Interlock,
    /// A point an interlock needs has no known value.
    StateUnknown,
    /// The command ran less than `min_interval_s` ago.
    TooSoon,
    /// The device could not be read just before the write.
    DeviceOffline,
}

impl RefusalReason {
    /// The snake_case label.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::UnknownCommand => "unknown_command",
            RefusalReason::BadArgs => "bad_args",
            RefusalReason::ArgsOutOfBounds => "args_out_of_bounds",
            RefusalReason::Interlock => "interlock",
            RefusalReason::StateUnknown => "state_unknown",
            RefusalReason::TooSoon => "too_soon",
            RefusalReason::DeviceOffline => "device_offline",
        }
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A checked argument value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ArgValue {
    /// `int` argument.
    Int(i64),
    /// `float` argument.
    Float(f64),
    /// `bool` argument.
    Bool(bool),
    /// `enum` argument: one of the declared labels.
    Label(String),
}

/// Arguments after `check_args`: every declared argument, typed and within bounds.
pub type TypedArgs = BTreeMap<String, ArgValue>;

/// One Modbus write a command produces, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "table", rename_all = "snake_case")]
pub enum RegisterWrite {
    /// Write one coil (function code 5).
    Coil {
        /// Coil address.
        address: u16,
        /// New state.
        value: bool,
    },
    /// Write holding registers (function code 16, or 6 for one register).
    Registers {
        /// First register address.
        address: u16,
        /// Words, already in device order.
        words: Vec<u16>,
    },
}

impl Profile {
    /// The command called `name`, or a refusal a person can act on.
    pub fn find_command(&self, name: &str) -> Result<&CommandSpec, Refusal> {
        self.command(name).ok_or_else(|| {
            let known: Vec<&str> = self.commands.iter().map(|c| c.name.as_str()).collect();
            Refusal::new(
                RefusalReason::UnknownCommand,
                format!("`{}` has no command `{name}` (known: {})", self.name, known.join(", ")),
            )
        })
    }

    /// The writes `command` performs with `args` (already checked by `check_args`).
    pub fn register_writes(
        &self,
        command: &CommandSpec,
        args: &TypedArgs,
    ) -> Result<Vec<RegisterWrite>, Refusal> {
        command
            .writes
            .iter()
            .map(|w| {
                // Load checked that write points exist and are writable.
                let p = self
                    .point(&w.point)
                    .ok_or_else(|| Refusal::new(RefusalReason::BadArgs, format!("no point `{}`", w.point)))?;
                let value = match (&w.arg, &w.value) {
                    (Some(a), _) => match args.get(a) {
                        Some(v) => Literal::from(v),
                        None => return Err(Refusal::new(RefusalReason::BadArgs, format!("missing `{a}`"))),
                    },
                    (None, Some(lit)) => lit.clone(),
                    (None, None) => {
                        return Err(Refusal::new(RefusalReason::BadArgs, "write without a value"))
                    }
                };
                encode_write(p, &value)
            })
            .collect()
    }
}

fn encode_write(p: &Point, value: &Literal) -> Result<RegisterWrite, Refusal> {
    let oob = |m: String| Refusal::new(RefusalReason::ArgsOutOfBounds, format!("{}: {m}", p.name));
    if p.kind.is_bit() {
        let bit = match value {
            Literal::Bool(b) => *b,
            Literal::Label(l) => p.raw_of(l).ok_or_else(|| oob(format!("no label `{l}`")))? != 0,
            Literal::Number(n) => *n != 0.0,
        };
        return Ok(RegisterWrite::Coil { address: p.address, value: bit });
    }
    let words = match value {
        Literal::Label(l) => {
            let raw = p.raw_of(l).ok_or_else(|| oob(format!("no label `{l}`")))?;
            value::encode_raw(p, raw)
        }
        Literal::Number(n) => value::encode_number(p, *n),
        Literal::Bool(b) => value::encode_raw(p, i64::from(*b)),
    }
    .map_err(|e| oob(e.to_string()))?;
    Ok(RegisterWrite::Registers { address: p.address, words })
}

impl From<&ArgValue> for Literal {
    fn from(v: &ArgValue) -> Literal {
        match v {
            ArgValue::Int(i) => Literal::Number(*i as f64),
            ArgValue::Float(f) => Literal::Number(*f),
            ArgValue::Bool(b) => Literal::Bool(*b),
            ArgValue::Label(l) => Literal::Label(l.clone()),
        }
    }
}

impl CommandSpec {
    /// Check the JSON arguments of a request (`{"position": 60}`) against the declared ones:
    /// all present, none extra, right type, within bounds.
    pub fn check_args(&self, args: &serde_json::Value) -> Result<TypedArgs, Refusal> {
        let bad = |m: String| Refusal::new(RefusalReason::BadArgs, m);
        let oob = |m: String| Refusal::new(RefusalReason::ArgsOutOfBounds, m);
        let empty = serde_json::Map::new();
        let given = match args {
            serde_json::Value::Object(map) => map,
            serde_json::Value::Null => &empty,
            other => return Err(bad(format!("arguments must be a JSON object, not {other}"))),
        };
        if let Some(extra) = given.keys().find(|k| !self.args.iter().any(|a| &a.name == *k)) {
            let known: Vec<&str> = self.args.iter().map(|a| a.name.as_str()).collect();
            return Err(bad(format!(
                "`{}` takes no argument `{extra}` (takes: {})",
                self.name,
                known.join(", ")
            )));
        }
        let mut typed = TypedArgs::new();
        for spec in &self.args {
            let v = given.get(&spec.name).ok_or_else(|| bad(format!("missing argument `{}`", spec.name)))?;
            let wrong =
                || bad(format!("`{}` must be {:?}, got {v}", spec.name, spec.arg_type).to_lowercase());
            let in_bounds = |x: f64| {
                let (min, max) = (spec.min.unwrap_or(f64::MIN), spec.max.unwrap_or(f64::MAX));
                if x < min || x > max {
                    Err(oob(format!("`{}` = {x} is outside {min}..={max} {}", spec.name, spec.unit)))
                } else {
                    Ok(())
                }
            };
            let value = match spec.arg_type {
                ArgType::Bool => ArgValue::Bool(v.as_bool().ok_or_else(wrong)?),
                ArgType::Float => {
                    let x = v.as_f64().ok_or_else(wrong)?;
                    in_bounds(x)?;
                    ArgValue::Float(x)
                }
                ArgType::Int => {
                    let x = v.as_f64().filter(|x| x.fract() == 0.0).ok_or_else(wrong)?;
                    in_bounds(x)?;
                    // Bounds are whole numbers within i64 (checked at load).
                    ArgValue::Int(x as i64)
                }
                ArgType::Enum => {
                    let label = v.as_str().ok_or_else(wrong)?;
                    let allowed = spec.values.as_deref().unwrap_or_default();
                    if !allowed.iter().any(|a| a == label) {
                        return Err(oob(format!(
                            "`{}` = \"{label}\" is not one of: {}",
                            spec.name,
                            allowed.join(", ")
                        )));
                    }
                    ArgValue::Label(label.to_string())
                }
            };
            typed.insert(spec.name.clone(), value);
        }
        Ok(typed)
    }

    /// Check every interlock against `points` (a fresh read). A missing or unlabelled value
    /// refuses the command: unknown state is never taken as safe.
    pub fn check_preconditions(&self, points: &Points) -> Result<(), Refusal> {
        for pre in &self.preconditions {
            let Some(current) = points.get(&pre.point) else {
                return Err(Refusal::new(
                    RefusalReason::StateUnknown,
                    format!("`{}` has no known value: {}", pre.point, pre.reason),
                ));
            };
            if let PointValue::Enum { label: None, raw } = current {
                return Err(Refusal::new(
                    RefusalReason::StateUnknown,
                    format!("`{}` reads raw value {raw}, which the profile does not name", pre.point),
                ));
            }
            let holds = if let Some(lit) = &pre.equals {
                current.matches(lit, 0.0)
            } else if let Some(lit) = &pre.not_equals {
                !current.matches(lit, 0.0)
            } else {
                current
                    .as_f64()
                    .is_some_and(|x| pre.min.is_none_or(|min| x >= min) && pre.max.is_none_or(|max| x <= max))
            };
            if !holds {
                return Err(Refusal::new(
                    RefusalReason::Interlock,
                    format!("{} (`{}` is {current})", pre.reason, pre.point),
                ));
            }
        }
        Ok(())
    }

    /// The minimum interval between two executions of this command on one device.
    pub fn min_interval(&self) -> Duration {
        Duration::try_from_secs_f64(self.min_interval_s).unwrap_or(Duration::MAX)
    }

    /// Refuse if this command last ran (on this device) less than `min_interval_s` ago.
    pub fn check_interval(&self, last_run: Option<Instant>, now: Instant) -> Result<(), Refusal> {
        match last_run {
            Some(last) if now.saturating_duration_since(last) < self.min_interval() => {
                let wait = self.min_interval() - now.saturating_duration_since(last);
                Err(Refusal::new(
                    RefusalReason::TooSoon,
                    format!(
                        "`{}` ran {:.1} s ago; it may run again in {:.1} s",
                        self.name,
                        now.saturating_duration_since(last).as_secs_f64(),
                        wait.as_secs_f64()
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// How long after the write the read-back may take.
    pub fn verify_deadline(&self) -> Duration {
        Duration::try_from_secs_f64(self.verify.deadline_s).unwrap_or(Duration::MAX)
    }

    /// Whether `points` show the command took effect.
    pub fn is_verified(&self, args: &TypedArgs, points: &Points) -> bool {
        let v = &self.verify;
        let target = match (&v.arg, &v.value) {
            (Some(a), _) => match args.get(a) {
                Some(arg) => Literal::from(arg),
                None => return false,
            },
            (None, Some(lit)) => lit.clone(),
            (None, None) => return false,
        };
        points.get(&v.point).is_some_and(|current| current.matches(&target, v.tolerance))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    const DAM: &str = r#"
name = "dam"
[[points]]
name = "selector"
kind = "input_register"
address = 20
type = "u16"
enum = { 0 = "local", 1 = "remote" }
[[points]]
name = "fault"
kind = "discrete_input"
address = 8
type = "bool"
[[points]]
name = "level"
kind = "input_register"
address = 10
type = "f32"
[[points]]
name = "target"
kind = "holding_register"
address = 1
type = "u16"
scale = 0.1
[[points]]
name = "position"
kind = "input_register"
address = 1
type = "u16"
scale = 0.1
[[points]]
name = "stop"
kind = "coil"
address = 1
type = "bool"

[[commands]]
name = "move"
min_interval_s = 10
args = [{ name = "position", type = "float", min = 0, max = 100 }]
writes = [{ point = "target", arg = "position" }]
preconditions = [
  { point = "selector", equals = "remote", reason = "selector on local" },
  { point = "fault", equals = false, reason = "motor fault" },
  { point = "level", max = 3.5, reason = "level too high" },
]
verify = { point = "position", arg = "position", tolerance = 1.0, deadline_s = 60 }

[[commands]]
name = "stop"
writes = [{ point = "stop", value = true }]
verify = { point = "fault", value = false, deadline_s = 5 }
"#;

    fn dam() -> Profile {
        Profile::parse(Path::new("dam.toml"), DAM).expect("valid profile")
    }

    fn safe_points() -> Points {
        Points::from([
            ("selector".into(), PointValue::Enum { raw: 1, label: Some("remote".into()) }),
            ("fault".into(), PointValue::Bool(false)),
            ("level".into(), PointValue::Number(2.4)),
            ("position".into(), PointValue::Number(20.0)),
        ])
    }

    #[test]
    fn args_within_bounds_are_typed() {
        let p = dam();
        let args = p.find_command("move").unwrap().check_args(&json!({"position": 60})).unwrap();
        assert_eq!(args.get("position"), Some(&ArgValue::Float(60.0)));
    }

    #[test]
    fn args_out_of_bounds_missing_extra_or_mistyped_are_refused() {
        let p = dam();
        let c = p.find_command("move").unwrap();
        let reason = |v| c.check_args(&v).unwrap_err().reason;
        assert_eq!(reason(json!({"position": 100.5})), RefusalReason::ArgsOutOfBounds);
        assert_eq!(reason(json!({"position": -1})), RefusalReason::ArgsOutOfBounds);
        assert_eq!(reason(json!({})), RefusalReason::BadArgs);
        assert_eq!(reason(json!({"position": 5, "speed": 1})), RefusalReason::BadArgs);
        assert_eq!(reason(json!({"position": "60"})), RefusalReason::BadArgs);
        assert_eq!(reason(json!([60])), RefusalReason::BadArgs);
    }

    #[test]
    fn unknown_command_is_refused_with_the_known_ones() {
        let e = dam().find_command("open_all").unwrap_err();
        assert_eq!(e.reason.as_str(), "unknown_command");
        assert!(e.message.contains("move, stop"), "{}", e.message);
    }

    #[test]
    fn interlocks_refuse_local_selector_fault_and_high_level() {
        let p = dam();
        let c = p.find_command("move").unwrap();
        assert_eq!(c.check_preconditions(&safe_points()), Ok(()));
        let with = |name: &str, v: PointValue| {
            let mut pts = safe_points();
            pts.insert(name.into(), v);
            c.check_preconditions(&pts).unwrap_err()
        };
        let local = with("selector", PointValue::Enum { raw: 0, label: Some("local".into()) });
        assert_eq!(local.reason, RefusalReason::Interlock);
        assert!(local.message.contains("selector on local"), "{}", local.message);
        assert_eq!(with("fault", PointValue::Bool(true)).reason, RefusalReason::Interlock);
        assert_eq!(with("level", PointValue::Number(3.6)).reason, RefusalReason::Interlock);
        let odd = with("selector", PointValue::Enum { raw: 9, label: None });
        assert_eq!(odd.reason, RefusalReason::StateUnknown);
        let mut missing = safe_points();
        missing.remove("fault");
        assert_eq!(c.check_preconditions(&missing).unwrap_err().reason, RefusalReason::StateUnknown);
    }

    #[test]
    fn min_interval_refuses_a_second_run_too_soon() {
        let p = dam();
        let c = p.find_command("move").unwrap();
        let t0 = Instant::now();
        assert!(c.check_interval(None, t0).is_ok());
        let e = c.check_interval(Some(t0), t0 + Duration::from_secs(3)).unwrap_err();
        assert_eq!(e.reason, RefusalReason::TooSoon);
        assert!(c.check_interval(Some(t0), t0 + Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn writes_are_encoded_with_the_point_scale() {
        let p = dam();
        let c = p.find_command("move").unwrap();
        let args = c.check_args(&json!({"position": 60})).unwrap();
        assert_eq!(
            p.register_writes(c, &args).unwrap(),
            vec![RegisterWrite::Registers { address: 1, words: vec![600] }]
        );
        let stop = p.find_command("stop").unwrap();
        assert_eq!(
            p.register_writes(stop, &TypedArgs::new()).unwrap(),
            vec![RegisterWrite::Coil { address: 1, value: true }]
        );
    }

    #[test]
    fn read_back_is_verified_within_tolerance_only() {
        let p = dam();
        let c = p.find_command("move").unwrap();
        let args = c.check_args(&json!({"position": 60})).unwrap();
        let mut pts = safe_points();
        assert!(!c.is_verified(&args, &pts));
        pts.insert("position".into(), PointValue::Number(59.2));
        assert!(c.is_verified(&args, &pts));
        pts.insert("position".into(), PointValue::Number(58.9));
        assert!(!c.is_verified(&args, &pts));
    }
}
