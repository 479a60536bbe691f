//! Rules and schedules (`/etc/berrygw/rules.toml`): conditions on readings and field-device
//! points, cron and sun schedules, turned into commands and alarms. They run on the gateway,
//! so the lights still switch at dusk and the dam alarm still fires with the backhaul down.
//!
//! This module is pure logic: it reads its file and nothing else. No threads, no clock of its
//! own (every call takes `now`), no I/O for actions: [`RuleEngine`] returns [`Action`]s and the
//! caller sends commands through the actuation engine (same safety checks, audit) and
//! publishes alarms. Not here: what a command does, whether it is allowed, retries.
//!
//! # The file
//!
//! ```toml
//! [site]                       # needed by sun rules (coordinates) and cron rules (timezone)
//! latitude = 47.222
//! longitude = 2.068
//! timezone = "Europe/Paris"    # or "UTC", or a fixed offset "+01:00"
//!
//! [[rule]]
//! name = "alerte-crue-cher"
//! when = { reading = "sonde-niveau-cher-pont", field = "level_cm", above = 250.0, clear_below = 230.0, hold_s = 60 }
//! then = { alarm = "crue", severity = "critical", message = "Le Cher dépasse 2,50 m au pont" }
//!
//! [[rule]]
//! name = "fermeture-barrage-niveau-bas"
//! when = { target = "barrage-cher-1", point = "upstream_level_cm", below = 120.0, clear_above = 130.0, hold_s = 300 }
//! then = { command = "move_bay1", target = "barrage-cher-1", args = { position = 100 } }
//! on_clear = { command = "move_bay1", target = "barrage-cher-1", args = { position = 0 } }
//!
//! [[rule]]
//! name = "allumage-crepuscule"
//! when = { sun = "sunset", offset_min = -10 }   # sunrise, sunset, civil_dawn, civil_dusk
//! then = { command = "set_mode", target = "armoire-ep-rue-haute", args = { mode = "forced_on" } }
//!
//! [[rule]]
//! name = "extinction-nuit"
//! when = { cron = "30 23 * * *" }
//! then = { command = "set_mode", target = "armoire-ep-rue-haute", args = { mode = "auto" } }
//! ```
//!
//! A trigger is exactly one of: `reading` + `field` (a device of the registry and a key of its
//! decoded object, dotted for nested objects: `circuits.circuit_1`), `target` + `point` (a
//! field device and one of its points), `cron`, or `sun` (+ `offset_min`, ±720). A condition
//! has exactly one test: `above` (+ `clear_below`), `below` (+ `clear_above`), or `equals`
//! (`true`/`false`, a number, or a label such as `"remote"`), and an optional `hold_s`.
//! An action is `alarm` (+ `severity` = info | warning (default) | critical, + `message`,
//! default the alarm name) or `command` + `target` (+ `args`, a table). Alarms need a
//! condition trigger (a schedule never clears); `on_clear` is a command, for conditions only.
//!
//! # Semantics
//!
//! - **Threshold with hysteresis.** With `above = A, clear_below = C` (C ≤ A; C defaults to A)
//!   the condition becomes true when a value is strictly greater than A, and false again only
//!   when a value is strictly less than C. Values from C to A change nothing. `below = B,
//!   clear_above = C` mirrors it (true when < B, false when > C). `equals = x` is true when the
//!   value equals x and false when it is another value of the same kind.
//! - **Values that say nothing.** A missing field, or a value of the wrong kind (a string for
//!   `above`, a number for `equals = true`, NaN), changes nothing.
//! - **Hold.** The condition must stay true for `hold_s` before the rule fires. A condition
//!   is taken to persist until a new value says otherwise: it fires at *first true value +
//!   hold_s*, found by [`RuleEngine::tick`] even when no new value arrives (a probe that
//!   reports every 10 minutes still raises its alarm 60 s after its high reading). A false
//!   value during the hold cancels it; values between the bounds keep it. `hold_s = 0` (the
//!   default) fires on the value itself.
//! - **Edges.** A rule fires once per rising edge, not on every true value. `then` runs when it
//!   fires; when it clears after having fired, a raised alarm is cleared (`raised = false`) and
//!   `on_clear` runs. A condition that clears before firing does nothing.
//! - **Schedules** fire once at each instant: cron in the `[site]` time zone (DST-aware, see
//!   `cron.rs` for the skipped and repeated hours), sun events from NOAA's equations at the
//!   site's coordinates, shifted by `offset_min`. A day without the event (polar day or
//!   night) has no firing.
//! - **Never for the past.** Schedules are armed by the first `tick`: an engine started at
//!   20:00 fires the next sunset tomorrow. After a gap between ticks (suspend, stall), a
//!   schedule fires once if one of its instants lies within the last [`SCHEDULE_GRACE`]
//!   (5 minutes), otherwise the missed instants are skipped; never more than once per tick.
//!   A clock set back by more than those 5 minutes (a wrong RTC or GPS time corrected)
//!   re-arms every schedule from the new time, and a hold that started "in the future"
//!   restarts now.
//! - **Reload** keeps the state of rules whose name and trigger are unchanged (a pending
//!   hold, a raised alarm, the next schedule). Alarms of removed rules, or of rules whose
//!   trigger changed, are cleared by returned actions; a raised alarm whose definition
//!   changed is cleared and raised again as defined now.
//! - **State is not persisted.** After a restart every condition starts clear and is judged
//!   afresh by the next values; a level still high raises its alarm again after the hold.

mod cron;
mod engine;
mod file;
mod sun;
// The TZif reader is the workspace's (berrygw-core): rules and the availability ledger share it.
use berrygw_core::tz;

#[cfg(test)]
mod tests;

pub use cron::Cron;
pub use engine::{Action, ActiveAlarm, AlarmView, RuleEngine, Source, SCHEDULE_GRACE};
pub use file::{Condition, Effect, Literal, Rule, RuleSet, Severity, Test, Trigger, Watched};
pub use sun::{Coordinates, SunEvent};
pub use tz::TimeZone;
