//! A command attempt and what became of it, as a gateway records it in its audit log
//! ([`AuditEntry`]) and publishes it on `<prefix>/<gateway_id>/event/command`
//! ([`CommandEvent`]); the central tool reads it to learn a command's outcome.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a command came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A signed envelope from the central platform.
    Central,
    /// The local API (`berrygw actuate`).
    Local,
    /// A rule or schedule on the gateway.
    Rule,
}

/// What became of an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Not attempted; `reason` says why.
    Refused,
    /// Written to the device.
    Executed,
    /// Written, and the read-back shows the expected state.
    Verified,
    /// Attempted, but the write or the verification failed; `reason` says why.
    Failed,
}

impl Source {
    /// The snake_case label (as in the JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Central => "central",
            Source::Local => "local",
            Source::Rule => "rule",
        }
    }

    /// The value of a label, if it is one.
    pub fn from_label(label: &str) -> Option<Source> {
        [Source::Central, Source::Local, Source::Rule].into_iter().find(|s| s.as_str() == label)
    }
}

impl Outcome {
    /// The snake_case label (as in the JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Refused => "refused",
            Outcome::Executed => "executed",
            Outcome::Verified => "verified",
            Outcome::Failed => "failed",
        }
    }

    /// The value of a label, if it is one.
    pub fn from_label(label: &str) -> Option<Outcome> {
        [Outcome::Refused, Outcome::Executed, Outcome::Verified, Outcome::Failed]
            .into_iter()
            .find(|o| o.as_str() == label)
    }
}

/// One attempt. Its JSON is the result event and `berrygw audit --json`'s output. The
/// engine makes it with `seq` 0; the audit log's `append` returns it numbered (an entry the log
/// could not store keeps 0, never a stored entry's number).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Grows by one per stored entry, never reused; 0: not stored.
    pub seq: u64,
    /// RFC 3339, UTC, milliseconds.
    #[serde(with = "rfc3339_millis")]
    pub at: DateTime<Utc>,
    pub source: Source,
    /// Who: the key id, `uid 1000`, the rule's name.
    pub actor: String,
    /// The envelope's id, for central commands.
    pub command_id: Option<String>,
    pub target: String,
    pub command: String,
    pub args: Value,
    pub outcome: Outcome,
    /// Stable snake_case cause, for `refused` and `failed`.
    pub reason: Option<String>,
    /// For people, one line.
    pub message: String,
}

mod rfc3339_millis {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| serde::de::Error::custom(format!("`at` {text:?}: {e}")))
    }
}

/// The result event on `<prefix>/<gateway_id>/event/command`: an audit entry and the
/// gateway it comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandEvent {
    pub gateway_id: String,
    pub audit: AuditEntry,
}
