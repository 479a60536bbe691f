//! `rules.toml`: the file format, parsed strictly into a checked [`RuleSet`]. Every error
//! names the file, the line and the key (`rule[2].when.above`); nothing is guessed.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use berrygw_core::{locate, ConfigError};
use serde::Deserialize;
use toml::Spanned;

use super::cron::Cron;
use super::sun::{Coordinates, SunEvent};
use super::tz::TimeZone;

/// The longest hold accepted (a year): beyond that a rule is a mistake.
const MAX_HOLD_S: i64 = 366 * 86_400;
/// The largest sun offset accepted, minutes either side of the event.
const MAX_SUN_OFFSET_MIN: i64 = 12 * 60;

/// A parsed, checked rules file.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleSet {
    path: PathBuf,
    rules: Vec<Rule>,
}

/// One rule: a trigger and what to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Unique within the file; names the rule in actions, alarms and logs.
    pub name: String,
    /// Line of `name` in the file, for the caller's own messages (e.g. a command the
    /// actuation profiles refuse).
    pub line: usize,
    pub when: Trigger,
    pub then: Effect,
    /// Run once when a fired condition clears (condition triggers only).
    pub on_clear: Option<Effect>,
}

/// What makes a rule fire.
#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    /// A value of a reading or of a field device's points.
    Condition(Condition),
    /// A cron expression in local time.
    Cron { cron: Cron, timezone: TimeZone },
    /// A sun event at the site, shifted by `offset_min`.
    Sun { event: SunEvent, offset_min: i32, site: Coordinates },
}

/// A condition on one value, with hysteresis and a hold time.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub source: Watched,
    /// Key in the object, dotted for nested objects (`circuits.circuit_1`).
    pub field: String,
    pub test: Test,
    /// How long the condition must hold before the rule fires.
    pub hold_s: u32,
}

/// Where a condition's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watched {
    /// Decoded readings of the device with this registry name.
    Reading { device: String },
    /// Points of the field device with this actuation target name.
    Points { target: String },
}

/// The test on the value; the `clear_*` bound gives the hysteresis.
#[derive(Clone, Debug, PartialEq)]
pub enum Test {
    /// True when the value is above `above`, false again once below `clear_below`.
    Above { above: f64, clear_below: f64 },
    /// True when the value is below `below`, false again once above `clear_above`.
    Below { below: f64, clear_above: f64 },
    /// True when the value equals, false when it is a different value of the same kind.
    Equals(Literal),
}

/// A constant a value is compared with.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    Bool(bool),
    Number(f64),
    /// A label, e.g. an enumerated point (`"remote"`).
    Text(String),
}

/// What a rule does.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// A command to a field device, checked by the actuation engine like any other.
    Command { target: String, command: String, args: serde_json::Value },
    /// An alarm raised while the condition holds.
    Alarm { name: String, severity: Severity, message: String },
}

/// How urgent an alarm is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    site: Option<SiteEntry>,
    #[serde(default)]
    rule: Vec<RuleEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteEntry {
    latitude: Option<Spanned<f64>>,
    longitude: Option<Spanned<f64>>,
    timezone: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleEntry {
    name: Spanned<String>,
    when: Spanned<WhenEntry>,
    then: Spanned<ActionEntry>,
    on_clear: Option<Spanned<ActionEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WhenEntry {
    reading: Option<Spanned<String>>,
    field: Option<Spanned<String>>,
    target: Option<Spanned<String>>,
    point: Option<Spanned<String>>,
    above: Option<Spanned<f64>>,
    clear_below: Option<Spanned<f64>>,
    below: Option<Spanned<f64>>,
    clear_above: Option<Spanned<f64>>,
    equals: Option<Spanned<toml::Value>>,
    hold_s: Option<Spanned<i64>>,
    cron: Option<Spanned<String>>,
    sun: Option<Spanned<String>>,
    offset_min: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionEntry {
    alarm: Option<Spanned<String>>,
    severity: Option<Spanned<Severity>>,
    message: Option<Spanned<String>>,
    command: Option<Spanned<String>>,
    target: Option<Spanned<String>>,
    args: Option<Spanned<toml::Table>>,
}

/// Builds errors pointing into one file.
struct Locator<'a> {
    path: &'a Path,
    source: &'a str,
}

impl Locator<'_> {
    fn at(&self, span: Range<usize>, key: String, message: impl Into<String>) -> ConfigError {
        let mut e = locate(self.path, self.source, Some(span), message.into());
        e.key = Some(key);
        e
    }

    /// An error at `span` if there is one: a key present where it does not belong.
    fn refuse(&self, span: Option<Range<usize>>, key: String, why: &str) -> Result<(), ConfigError> {
        match span {
            Some(s) => Err(self.at(s, key, why)),
            None => Ok(()),
        }
    }
}

impl RuleSet {
    /// Read and check the rules file at `path`.
    pub fn load(path: &Path) -> Result<RuleSet, ConfigError> {
        RuleSet::parse(path, &berrygw_core::read_file(path, 0, |_| String::new())?)
    }

    /// Parse and check rules text; `path` names it in messages.
    pub fn parse(path: &Path, source: &str) -> Result<RuleSet, ConfigError> {
        let file: File =
            toml::from_str(source).map_err(|e| locate(path, source, e.span(), e.message().to_string()))?;
        let loc = Locator { path, source };
        let site = file.site.map(|s| site(&loc, s)).transpose()?.unwrap_or_default();
        let mut rules = Vec::with_capacity(file.rule.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, entry) in file.rule.into_iter().enumerate() {
            let name_span = entry.name.span();
            let rule = rule(&loc, &site, i, entry)?;
            if let Some(other) = names.insert(rule.name.clone(), i) {
                return Err(loc.at(
                    name_span,
                    format!("rule[{i}].name"),
                    format!("rule[{other}] has this name"),
                ));
            }
            rules.push(rule);
        }
        Ok(RuleSet { path: path.to_path_buf(), rules })
    }

    /// A rule set without rules.
    pub fn empty(path: &Path) -> RuleSet {
        RuleSet { path: path.to_path_buf(), rules: Vec::new() }
    }

    /// Where it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every rule, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub(super) fn into_rules(self) -> Vec<Rule> {
        self.rules
    }
}

/// `[site]`, checked.
#[derive(Default)]
struct Site {
    coordinates: Option<Coordinates>,
    timezone: Option<TimeZone>,
}

fn site(loc: &Locator<'_>, s: SiteEntry) -> Result<Site, ConfigError> {
    let coordinate = |v: &Option<Spanned<f64>>, key: &str, limit: f64| match v {
        Some(v) if !v.get_ref().is_finite() || v.get_ref().abs() > limit => Err(loc.at(
            v.span(),
            format!("site.{key}"),
            format!("{key} in decimal degrees, -{limit} to {limit}"),
        )),
        Some(v) => Ok(Some(*v.get_ref())),
        None => Ok(None),
    };
    let latitude = coordinate(&s.latitude, "latitude", 90.0)?;
    let longitude = coordinate(&s.longitude, "longitude", 180.0)?;
    let coordinates = match (latitude, longitude, &s.latitude, &s.longitude) {
        (Some(latitude), Some(longitude), _, _) => Some(Coordinates { latitude, longitude }),
        (None, None, _, _) => None,
        (_, _, Some(v), None) | (_, _, None, Some(v)) => {
            return Err(loc.at(v.span(), "site".into(), "give both latitude and longitude"))
        }
        _ => None,
    };
    let timezone = s
        .timezone
        .map(|tz| {
            TimeZone::from_config(tz.get_ref()).map_err(|e| loc.at(tz.span(), "site.timezone".into(), e))
        })
        .transpose()?;
    Ok(Site { coordinates, timezone })
}

/// A name, label or identifier: 1 to 64 printable characters.
fn identifier(loc: &Locator<'_>, v: &Spanned<String>, key: String) -> Result<String, ConfigError> {
    let s = v.get_ref().trim();
    if s.is_empty() || s.chars().count() > 64 || s.chars().any(char::is_control) {
        return Err(loc.at(v.span(), key, "1 to 64 printable characters"));
    }
    Ok(s.to_string())
}

fn rule(loc: &Locator<'_>, site: &Site, i: usize, e: RuleEntry) -> Result<Rule, ConfigError> {
    let key = |k: &str| format!("rule[{i}].{k}");
    let name = identifier(loc, &e.name, key("name"))?;
    let line = loc.source[..e.name.span().start.min(loc.source.len())].matches('\n').count() + 1;
    let when_span = e.when.span();
    let when = trigger(loc, site, &name, i, e.when.into_inner(), when_span.clone())?;
    let is_condition = matches!(when, Trigger::Condition(_));
    let then_span = e.then.span();
    let then = effect(loc, &key("then"), e.then.into_inner(), then_span.clone())?;
    if !is_condition && matches!(then, Effect::Alarm { .. }) {
        return Err(loc.at(
            then_span,
            key("then"),
            "an alarm needs a condition that can clear: use a `reading` or `target`/`point` trigger",
        ));
    }
    let on_clear = match e.on_clear {
        None => None,
        Some(c) => {
            let span = c.span();
            if !is_condition {
                return Err(loc.at(span, key("on_clear"), "a schedule never clears: remove `on_clear`"));
            }
            let effect = effect(loc, &key("on_clear"), c.into_inner(), span.clone())?;
            if matches!(effect, Effect::Alarm { .. }) {
                return Err(loc.at(
                    span,
                    key("on_clear"),
                    "an alarm in `then` clears by itself; `on_clear` takes a command",
                ));
            }
            Some(effect)
        }
    };
    Ok(Rule { name, line, when, then, on_clear })
}

fn trigger(
    loc: &Locator<'_>,
    site: &Site,
    rule_name: &str,
    i: usize,
    w: WhenEntry,
    span: Range<usize>,
) -> Result<Trigger, ConfigError> {
    let key = |k: &str| format!("rule[{i}].when.{k}");
    let kinds = [w.reading.is_some(), w.target.is_some(), w.cron.is_some(), w.sun.is_some()];
    match kinds.iter().filter(|&&k| k).count() {
        0 => {
            return Err(loc.at(
                span,
                format!("rule[{i}].when"),
                "no trigger: give `reading` (+ `field`), `target` (+ `point`), `cron` or `sun`",
            ))
        }
        1 => {}
        _ => {
            return Err(loc.at(
                span,
                format!("rule[{i}].when"),
                "one trigger per rule: `reading`, `target`, `cron` and `sun` exclude each other",
            ))
        }
    }
    // Keys that belong to another kind of trigger are mistakes, not decoration.
    let refuse = |v: Option<Range<usize>>, k: &str, why: &str| loc.refuse(v, key(k), why);
    if let Some(cron) = &w.cron {
        refuse_condition_keys(loc, &w, i, "a cron trigger")?;
        refuse(w.offset_min.as_ref().map(Spanned::span), "offset_min", "`offset_min` goes with `sun`")?;
        let parsed = Cron::parse(cron.get_ref()).map_err(|e| loc.at(cron.span(), key("cron"), e))?;
        let Some(timezone) = site.timezone.clone() else {
            return Err(loc.at(
                cron.span(),
                key("cron"),
                format!(
                    "rule `{rule_name}`: cron rules need `timezone` in [site] \
                     (e.g. \"Europe/Paris\", or \"UTC\")"
                ),
            ));
        };
        return Ok(Trigger::Cron { cron: parsed, timezone });
    }
    if let Some(sun) = &w.sun {
        refuse_condition_keys(loc, &w, i, "a sun trigger")?;
        let event = SunEvent::parse(sun.get_ref()).ok_or_else(|| {
            loc.at(
                sun.span(),
                key("sun"),
                format!(
                    "unknown sun event `{}`: use \"sunrise\", \"sunset\", \"civil_dawn\" or \"civil_dusk\"",
                    sun.get_ref()
                ),
            )
        })?;
        let offset_min = match &w.offset_min {
            None => 0,
            Some(o) if (-MAX_SUN_OFFSET_MIN..=MAX_SUN_OFFSET_MIN).contains(o.get_ref()) => {
                i32::try_from(*o.get_ref()).unwrap_or_default() // bounded just above
            }
            Some(o) => {
                return Err(loc.at(
                    o.span(),
                    key("offset_min"),
                    format!("an offset of at most {MAX_SUN_OFFSET_MIN} minutes either way"),
                ))
            }
        };
        let Some(site) = site.coordinates else {
            return Err(loc.at(
                sun.span(),
                key("sun"),
                format!("rule `{rule_name}`: sun rules need `latitude` and `longitude` in [site]"),
            ));
        };
        return Ok(Trigger::Sun { event, offset_min, site });
    }
    refuse(w.offset_min.as_ref().map(Spanned::span), "offset_min", "`offset_min` goes with `sun`")?;
    let (source, field) = match (&w.reading, &w.target) {
        (Some(device), _) => {
            refuse(
                w.point.as_ref().map(Spanned::span),
                "point",
                "a reading is read by `field`, not `point`",
            )?;
            let field = w
                .field
                .as_ref()
                .ok_or_else(|| loc.at(device.span(), key("field"), "name the reading's `field` to watch"))?;
            (
                Watched::Reading { device: identifier(loc, device, key("reading"))? },
                field_path(loc, field, key("field"))?,
            )
        }
        (None, Some(target)) => {
            refuse(
                w.field.as_ref().map(Spanned::span),
                "field",
                "a field device is read by `point`, not `field`",
            )?;
            let point = w
                .point
                .as_ref()
                .ok_or_else(|| loc.at(target.span(), key("point"), "name the `point` to watch"))?;
            (
                Watched::Points { target: identifier(loc, target, key("target"))? },
                field_path(loc, point, key("point"))?,
            )
        }
        (None, None) => return Err(loc.at(span, format!("rule[{i}].when"), "no trigger")),
    };
    let test = test(loc, &w, &key, span)?;
    let hold_s = match &w.hold_s {
        None => 0,
        Some(h) if (0..=MAX_HOLD_S).contains(h.get_ref()) => u32::try_from(*h.get_ref()).unwrap_or(u32::MAX),
        Some(h) => {
            return Err(loc.at(h.span(), key("hold_s"), format!("seconds, from 0 to {MAX_HOLD_S}")));
        }
    };
    Ok(Trigger::Condition(Condition { source, field, test, hold_s }))
}

/// A schedule trigger with condition keys is a mistake: say which key.
fn refuse_condition_keys(loc: &Locator<'_>, w: &WhenEntry, i: usize, what: &str) -> Result<(), ConfigError> {
    let why = format!("{what} watches no value");
    let spans = [
        ("field", w.field.as_ref().map(Spanned::span)),
        ("point", w.point.as_ref().map(Spanned::span)),
        ("above", w.above.as_ref().map(Spanned::span)),
        ("clear_below", w.clear_below.as_ref().map(Spanned::span)),
        ("below", w.below.as_ref().map(Spanned::span)),
        ("clear_above", w.clear_above.as_ref().map(Spanned::span)),
        ("equals", w.equals.as_ref().map(Spanned::span)),
        ("hold_s", w.hold_s.as_ref().map(Spanned::span)),
    ];
    for (k, s) in spans {
        loc.refuse(s, format!("rule[{i}].when.{k}"), &why)?;
    }
    Ok(())
}

fn field_path(loc: &Locator<'_>, v: &Spanned<String>, key: String) -> Result<String, ConfigError> {
    let s = v.get_ref();
    if s.is_empty() || s.len() > 256 || s.split('.').any(str::is_empty) || s.chars().any(char::is_control) {
        return Err(loc.at(
            v.span(),
            key,
            "a key, or a dotted path for nested objects (`circuits.circuit_1`)",
        ));
    }
    Ok(s.clone())
}

fn test(
    loc: &Locator<'_>,
    w: &WhenEntry,
    key: &dyn Fn(&str) -> String,
    span: Range<usize>,
) -> Result<Test, ConfigError> {
    let finite = |v: &Spanned<f64>, k: &str| {
        if v.get_ref().is_finite() {
            Ok(*v.get_ref())
        } else {
            Err(loc.at(v.span(), key(k), "a finite number"))
        }
    };
    let stray = |v: &Option<Spanned<f64>>, k: &str, with: &str| match v {
        Some(v) => Err(loc.at(v.span(), key(k), format!("`{k}` goes with `{with}`"))),
        None => Ok(()),
    };
    match (&w.above, &w.below, &w.equals) {
        (Some(above), None, None) => {
            stray(&w.clear_above, "clear_above", "below")?;
            let a = finite(above, "above")?;
            let c = match &w.clear_below {
                Some(c) => finite(c, "clear_below")?,
                None => a,
            };
            if c > a {
                let s = w.clear_below.as_ref().map_or(above.span(), Spanned::span);
                return Err(loc.at(
                    s,
                    key("clear_below"),
                    format!("clear_below ({c}) must not exceed above ({a})"),
                ));
            }
            Ok(Test::Above { above: a, clear_below: c })
        }
        (None, Some(below), None) => {
            stray(&w.clear_below, "clear_below", "above")?;
            let b = finite(below, "below")?;
            let c = match &w.clear_above {
                Some(c) => finite(c, "clear_above")?,
                None => b,
            };
            if c < b {
                let s = w.clear_above.as_ref().map_or(below.span(), Spanned::span);
                return Err(loc.at(
                    s,
                    key("clear_above"),
                    format!("clear_above ({c}) must not be under below ({b})"),
                ));
            }
            Ok(Test::Below { below: b, clear_above: c })
        }
        (None, None, Some(eq)) => {
            stray(&w.clear_below, "clear_below", "above")?;
            stray(&w.clear_above, "clear_above", "below")?;
            let literal = match eq.get_ref() {
                toml::Value::Boolean(b) => Literal::Bool(*b),
                toml::Value::Integer(n) => Literal::Number(*n as f64),
                toml::Value::Float(f) if f.is_finite() => Literal::Number(*f),
                toml::Value::String(s) => Literal::Text(s.clone()),
                _ => return Err(loc.at(eq.span(), key("equals"), "true, false, a number or a label")),
            };
            Ok(Test::Equals(literal))
        }
        (None, None, None) => Err(loc.at(span, key("above"), "give one test: `above`, `below` or `equals`")),
        _ => Err(loc.at(
            span,
            key("above"),
            "one test per rule: `above`, `below` and `equals` exclude each other",
        )),
    }
}

fn effect(loc: &Locator<'_>, key: &str, a: ActionEntry, span: Range<usize>) -> Result<Effect, ConfigError> {
    let k = |s: &str| format!("{key}.{s}");
    match (&a.alarm, &a.command) {
        (Some(alarm), None) => {
            for (name, s) in [
                ("target", a.target.as_ref().map(Spanned::span)),
                ("args", a.args.as_ref().map(Spanned::span)),
            ] {
                if let Some(s) = s {
                    return Err(loc.at(s, k(name), format!("`{name}` goes with `command`, not `alarm`")));
                }
            }
            let name = identifier(loc, alarm, k("alarm"))?;
            let message = match &a.message {
                Some(m) if m.get_ref().len() > 1024 => {
                    return Err(loc.at(m.span(), k("message"), "at most 1024 bytes"))
                }
                Some(m) => m.get_ref().clone(),
                None => name.clone(),
            };
            let severity = a.severity.as_ref().map_or(Severity::Warning, |s| *s.get_ref());
            Ok(Effect::Alarm { name, severity, message })
        }
        (None, Some(command)) => {
            for (name, s) in [
                ("severity", a.severity.as_ref().map(Spanned::span)),
                ("message", a.message.as_ref().map(Spanned::span)),
            ] {
                if let Some(s) = s {
                    return Err(loc.at(s, k(name), format!("`{name}` goes with `alarm`, not `command`")));
                }
            }
            let target = a.target.as_ref().ok_or_else(|| {
                loc.at(command.span(), k("target"), "a command needs the `target` field device")
            })?;
            let target = identifier(loc, target, k("target"))?;
            let command = identifier(loc, command, k("command"))?;
            let args = match &a.args {
                None => serde_json::Value::Object(serde_json::Map::new()),
                Some(t) => json(&toml::Value::Table(t.get_ref().clone()))
                    .map_err(|e| loc.at(t.span(), k("args"), e))?,
            };
            Ok(Effect::Command { target, command, args })
        }
        (Some(_), Some(_)) => Err(loc.at(span, key.to_string(), "either `alarm` or `command`, not both")),
        (None, None) => Err(loc.at(
            span,
            key.to_string(),
            "no action: give `alarm = \"name\"` or `command = \"name\", target = \"device\"`",
        )),
    }
}

/// Command arguments as JSON, the form the actuation engine checks.
fn json(v: &toml::Value) -> Result<serde_json::Value, String> {
    Ok(match v {
        toml::Value::String(s) => serde_json::Value::String(s.clone()),
        toml::Value::Integer(n) => serde_json::Value::from(*n),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .ok_or("arguments must be finite numbers")?,
        toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(a) => serde_json::Value::Array(a.iter().map(json).collect::<Result<_, _>>()?),
        toml::Value::Table(t) => serde_json::Value::Object(
            t.iter().map(|(k, v)| Ok((k.clone(), json(v)?))).collect::<Result<_, String>>()?,
        ),
    })
}
