//! The rule engine's state machine: values in, time passing, actions out. No I/O, no
//! threads, no clock of its own; the semantics are in the module docs of `rules`.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::file::{Condition, Effect, Literal, Rule, RuleSet, Severity, Test, Trigger, Watched};
use super::sun;

/// A schedule whose instant is further back than this when `tick` notices is skipped.
pub const SCHEDULE_GRACE: Duration = Duration::minutes(5);

/// Where observed values come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source<'a> {
    /// A decoded reading of the device with this registry name; pass `Reading::object`.
    Reading { device: &'a str },
    /// The points of the field device with this actuation target name, as a JSON object.
    Points { target: &'a str },
}

/// Something the caller must do.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// Send this command through the actuation engine (its safety checks apply).
    Command { rule: String, target: String, command: String, args: serde_json::Value },
    /// An alarm was raised (`raised = true`) or cleared.
    Alarm { rule: String, name: String, severity: Severity, raised: bool, message: String },
}

/// An alarm currently raised.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ActiveAlarm {
    pub rule: String,
    pub name: String,
    pub severity: Severity,
    /// When the condition had held for its hold time (RFC 3339 in JSON).
    #[serde(serialize_with = "rfc3339")]
    pub since: DateTime<Utc>,
    pub message: String,
}

/// Runs a rule set: holds each rule's state between calls.
#[derive(Debug)]
pub struct RuleEngine {
    slots: Vec<Slot>,
    /// The latest `now` seen, to notice the clock being set back.
    latest: Option<DateTime<Utc>>,
}

#[derive(Debug)]
struct Slot {
    rule: Rule,
    state: State,
}

#[derive(Clone, Debug, PartialEq)]
enum State {
    Condition(Phase),
    /// `None` until the first `tick` arms it.
    Schedule(Option<Next>),
}

#[derive(Clone, Debug, PartialEq)]
enum Phase {
    /// The condition is false (or has never been seen true).
    Clear,
    /// True since `since`, waiting for the hold time.
    Holding { since: DateTime<Utc> },
    /// Fired at `since`; `alarm` is the alarm it raised, if any.
    Fired { since: DateTime<Utc>, alarm: Option<ActiveAlarm> },
}

#[derive(Clone, Debug, PartialEq)]
struct Next {
    at: DateTime<Utc>,
    /// False when `at` is only a time to look again (no sun event within a year).
    fires: bool,
}

/// What a new value says about a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    True,
    False,
    /// Between the threshold and the clear bound: no change.
    Unchanged,
}

impl RuleEngine {
    /// An engine with every condition clear and schedules not yet armed (the first `tick`
    /// arms them from its `now`; nothing fires for the past).
    pub fn new(rules: RuleSet) -> RuleEngine {
        RuleEngine { slots: rules.into_rules().into_iter().map(Slot::new).collect(), latest: None }
    }

    /// If the clock was set back by more than the grace window (a wrong RTC or GPS time
    /// corrected), schedules armed for the "future" and holds started there would wait
    /// until the clock caught up: re-arm schedules from `now` and restart such holds now.
    fn notice_clock(&mut self, now: DateTime<Utc>) {
        let stepped_back = self.latest.is_some_and(|latest| now < shift(latest, -SCHEDULE_GRACE));
        if stepped_back {
            for slot in &mut self.slots {
                match &mut slot.state {
                    State::Schedule(next) => *next = None,
                    State::Condition(Phase::Holding { since }) if *since > now => *since = now,
                    State::Condition(_) => {}
                }
            }
        }
        if stepped_back || self.latest.is_none_or(|latest| now > latest) {
            self.latest = Some(now);
        }
    }

    /// A new reading's decoded object, or a field device's points as a JSON object, at `now`.
    pub fn observe(
        &mut self,
        source: Source<'_>,
        values: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Vec<Action> {
        self.notice_clock(now);
        let mut actions = Vec::new();
        for slot in &mut self.slots {
            let Trigger::Condition(c) = &slot.rule.when else { continue };
            if !watches(c, source) {
                continue;
            }
            let verdict = lookup(values, &c.field).and_then(|v| judge(&c.test, v));
            // A hold that expired before this value counts first: the condition held
            // until now, whatever this value says.
            slot.expire_hold(now, &mut actions);
            if let Some(verdict) = verdict {
                slot.apply(verdict, now, &mut actions);
            }
        }
        actions
    }

    /// Time passes: hold durations elapse, cron and sun schedules fire. Call at least every
    /// `next_due()`.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Vec<Action> {
        self.notice_clock(now);
        let mut actions = Vec::new();
        for slot in &mut self.slots {
            match &slot.state {
                State::Condition(_) => slot.expire_hold(now, &mut actions),
                State::Schedule(_) => slot.run_schedule(now, &mut actions),
            }
        }
        actions
    }

    /// When `tick` next has something to do (the earliest hold expiry or schedule), for the
    /// caller's timer. `now` itself when a schedule is not armed yet.
    pub fn next_due(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.slots
            .iter()
            .filter_map(|slot| match (&slot.state, &slot.rule.when) {
                (State::Condition(Phase::Holding { since }), Trigger::Condition(c)) => {
                    Some(shift(*since, hold(c)))
                }
                (State::Condition(_), _) => None,
                (State::Schedule(None), _) => Some(now),
                (State::Schedule(Some(next)), _) => Some(next.at),
            })
            .min()
    }

    /// Alarms currently raised, in rule order.
    pub fn active_alarms(&self) -> Vec<ActiveAlarm> {
        self.slots
            .iter()
            .filter_map(|slot| match &slot.state {
                State::Condition(Phase::Fired { alarm: Some(a), .. }) => Some(a.clone()),
                _ => None,
            })
            .collect()
    }

    /// Swap rules, keeping the state of rules that still exist with the same trigger (reload
    /// on SIGHUP). Alarms of removed or re-triggered rules are cleared; an alarm whose
    /// definition changed under a still-true condition is cleared and raised anew.
    pub fn reload(&mut self, rules: RuleSet) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut old: HashMap<String, Slot> =
            self.slots.drain(..).map(|slot| (slot.rule.name.clone(), slot)).collect();
        for rule in rules.into_rules() {
            let mut slot = Slot::new(rule);
            if let Some(prev) = old.remove(&slot.rule.name) {
                if prev.rule.when == slot.rule.when {
                    slot.state = prev.state;
                    slot.adopt_alarm(&mut actions);
                } else {
                    prev.clear_alarm(&mut actions);
                }
            }
            self.slots.push(slot);
        }
        // Removed rules, cleared in a stable order.
        let mut removed: Vec<Slot> = old.into_values().collect();
        removed.sort_by(|a, b| a.rule.name.cmp(&b.rule.name));
        for slot in removed {
            slot.clear_alarm(&mut actions);
        }
        actions
    }
}

impl Slot {
    fn new(rule: Rule) -> Slot {
        let state = match rule.when {
            Trigger::Condition(_) => State::Condition(Phase::Clear),
            Trigger::Cron { .. } | Trigger::Sun { .. } => State::Schedule(None),
        };
        Slot { rule, state }
    }

    /// Fire a holding condition whose hold time has run out by `now`.
    fn expire_hold(&mut self, now: DateTime<Utc>, actions: &mut Vec<Action>) {
        let (State::Condition(Phase::Holding { since }), Trigger::Condition(c)) =
            (&self.state, &self.rule.when)
        else {
            return;
        };
        let due = shift(*since, hold(c));
        if due <= now {
            self.fire(due, actions);
        }
    }

    fn apply(&mut self, verdict: Verdict, now: DateTime<Utc>, actions: &mut Vec<Action>) {
        let State::Condition(phase) = &self.state else { return };
        match (phase, verdict) {
            (Phase::Clear, Verdict::True) => {
                self.state = State::Condition(Phase::Holding { since: now });
                self.expire_hold(now, actions); // a hold of 0 fires at once
            }
            (Phase::Holding { .. }, Verdict::False) => self.state = State::Condition(Phase::Clear),
            (Phase::Fired { .. }, Verdict::False) => {
                let mut cleared = Vec::new();
                self.clear_alarm(&mut cleared);
                actions.append(&mut cleared);
                if let Some(effect) = &self.rule.on_clear {
                    actions.extend(self.command(effect));
                }
                self.state = State::Condition(Phase::Clear);
            }
            _ => {}
        }
    }

    fn fire(&mut self, at: DateTime<Utc>, actions: &mut Vec<Action>) {
        let alarm = self.raise(&self.rule.then, at, actions);
        self.state = State::Condition(Phase::Fired { since: at, alarm });
    }

    /// Carry out `effect`; for an alarm, return it as raised.
    fn raise(&self, effect: &Effect, at: DateTime<Utc>, actions: &mut Vec<Action>) -> Option<ActiveAlarm> {
        match effect {
            Effect::Command { .. } => {
                actions.extend(self.command(effect));
                None
            }
            Effect::Alarm { name, severity, message } => {
                let alarm = ActiveAlarm {
                    rule: self.rule.name.clone(),
                    name: name.clone(),
                    severity: *severity,
                    since: at,
                    message: message.clone(),
                };
                actions.push(alarm_action(&alarm, true));
                Some(alarm)
            }
        }
    }

    fn command(&self, effect: &Effect) -> Option<Action> {
        match effect {
            Effect::Command { target, command, args } => Some(Action::Command {
                rule: self.rule.name.clone(),
                target: target.clone(),
                command: command.clone(),
                args: args.clone(),
            }),
            Effect::Alarm { .. } => None,
        }
    }

    /// Emit the clearing of this slot's raised alarm, if any.
    fn clear_alarm(&self, actions: &mut Vec<Action>) {
        if let State::Condition(Phase::Fired { alarm: Some(a), .. }) = &self.state {
            actions.push(alarm_action(a, false));
        }
    }

    /// After a reload kept the state: make the raised alarm match the new rule's `then`.
    fn adopt_alarm(&mut self, actions: &mut Vec<Action>) {
        let State::Condition(Phase::Fired { since, alarm }) = &self.state else { return };
        let since = *since;
        let wanted = match &self.rule.then {
            Effect::Alarm { name, severity, message } => Some(ActiveAlarm {
                rule: self.rule.name.clone(),
                name: name.clone(),
                severity: *severity,
                since: alarm.as_ref().map_or(since, |a| a.since),
                message: message.clone(),
            }),
            Effect::Command { .. } => None,
        };
        if *alarm == wanted {
            return;
        }
        if let Some(old) = alarm {
            actions.push(alarm_action(old, false));
        }
        if let Some(new) = &wanted {
            actions.push(alarm_action(new, true));
        }
        self.state = State::Condition(Phase::Fired { since, alarm: wanted });
    }

    fn run_schedule(&mut self, now: DateTime<Utc>, actions: &mut Vec<Action>) {
        let State::Schedule(next) = &self.state else { return };
        let fire = match next {
            None => false, // first tick: arm from now, never fire for the past
            Some(next) if next.at > now => return,
            Some(next) => {
                // Overran the wait: fire only for an instant within the grace window.
                let window = shift(now, -SCHEDULE_GRACE);
                let candidate = if next.at >= window { Some(next.at) } else { self.next_instant(window) };
                next.fires && candidate.is_some_and(|c| c <= now)
            }
        };
        if fire {
            actions.extend(self.command(&self.rule.then));
        }
        let next = match self.next_instant(now) {
            Some(at) => Next { at, fires: true },
            // No sun event within a year (polar site): look again tomorrow.
            None => Next { at: shift(now, Duration::days(1)), fires: false },
        };
        self.state = State::Schedule(Some(next));
    }

    /// The schedule's first instant strictly after `after`.
    fn next_instant(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.rule.when {
            Trigger::Cron { cron, timezone } => cron.next_after(after, timezone),
            Trigger::Sun { event, offset_min, site } => sun::next_after(*event, *offset_min, *site, after),
            Trigger::Condition(_) => None,
        }
    }
}

fn rfc3339<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// `t + d`, saturating at the ends of time rather than panicking.
fn shift(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(if d < Duration::zero() {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

fn hold(c: &Condition) -> Duration {
    Duration::seconds(i64::from(c.hold_s))
}

fn alarm_action(a: &ActiveAlarm, raised: bool) -> Action {
    Action::Alarm {
        rule: a.rule.clone(),
        name: a.name.clone(),
        severity: a.severity,
        raised,
        message: a.message.clone(),
    }
}

fn watches(c: &Condition, source: Source<'_>) -> bool {
    match (&c.source, source) {
        (Watched::Reading { device }, Source::Reading { device: d }) => device == d,
        (Watched::Points { target }, Source::Points { target: t }) => target == t,
        _ => false,
    }
}

/// The value at `path`: the whole path as one key first, else a dotted walk through objects
/// (and arrays, by index).
fn lookup<'v>(values: &'v serde_json::Value, path: &str) -> Option<&'v serde_json::Value> {
    if let Some(v) = values.get(path) {
        return Some(v);
    }
    path.split('.').try_fold(values, |v, part| match v {
        serde_json::Value::Object(map) => map.get(part),
        serde_json::Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// What `value` says about `test`; `None` when it is of the wrong kind (ignored).
fn judge(test: &Test, value: &serde_json::Value) -> Option<Verdict> {
    let verdict = |on: bool, off: bool| {
        if on {
            Verdict::True
        } else if off {
            Verdict::False
        } else {
            Verdict::Unchanged
        }
    };
    match test {
        Test::Above { above, clear_below } => {
            let v = value.as_f64().filter(|v| v.is_finite())?;
            Some(verdict(v > *above, v < *clear_below))
        }
        Test::Below { below, clear_above } => {
            let v = value.as_f64().filter(|v| v.is_finite())?;
            Some(verdict(v < *below, v > *clear_above))
        }
        Test::Equals(literal) => {
            let same = match (literal, value) {
                (Literal::Bool(a), serde_json::Value::Bool(b)) => a == b,
                (Literal::Number(a), serde_json::Value::Number(b)) => Some(*a) == b.as_f64(),
                (Literal::Text(a), serde_json::Value::String(b)) => a == b,
                _ => return None,
            };
            Some(verdict(same, !same))
        }
    }
}

/// An active alarm as the status page and `berrygw status` show it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AlarmView {
    pub rule: String,
    pub name: String,
    pub severity: String,
    pub since: String,
    pub message: String,
}
