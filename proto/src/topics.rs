//! The topics of one gateway on the app broker, `<prefix>/<gateway_id>/…`: where the
//! gateway publishes its readings, events and state, and where the centre sends it
//! commands and session keys.

use std::fmt;

/// Topic names of one gateway on the app broker: `<prefix>/<gateway_id>/…`.
#[derive(Clone, Debug)]
pub struct AppTopics {
    base: String,
}

impl AppTopics {
    /// Topics under `<prefix>/<gateway_id>`.
    pub fn new(prefix: &str, gateway_id: &str) -> AppTopics {
        let prefix = prefix.trim_matches('/');
        let base = if prefix.is_empty() { gateway_id.to_string() } else { format!("{prefix}/{gateway_id}") };
        AppTopics { base }
    }

    /// `…/device/<dev_eui>/up`: one device's decoded readings.
    pub fn device_up(&self, dev_eui: impl fmt::Display) -> String {
        format!("{}/device/{dev_eui}/up", self.base)
    }

    /// `…/state` (retained): `{"online": true|false}`, false from the last will.
    pub fn state(&self) -> String {
        format!("{}/state", self.base)
    }

    /// `…/health` (retained): the compact health record (`crate::health`).
    pub fn health(&self) -> String {
        format!("{}/health", self.base)
    }

    /// `…/identity` (retained): the gateway's public key (`crate::identity`).
    pub fn identity(&self) -> String {
        format!("{}/identity", self.base)
    }

    /// `…/session/set`: OTAA session keys pushed by the central side.
    pub fn session_set(&self) -> String {
        format!("{}/session/set", self.base)
    }

    /// `…/bundle` (retained): the signed configuration bundle for this gateway.
    pub fn bundle(&self) -> String {
        format!("{}/bundle", self.base)
    }

    /// `…/command`: signed command envelopes from the central platform.
    pub fn command(&self) -> String {
        format!("{}/command", self.base)
    }

    /// `…/event/<name>`: command results (`command`), alarms (`alarm`).
    pub fn event(&self, name: &str) -> String {
        format!("{}/event/{name}", self.base)
    }

    /// `…/availability/<YYYY-MM>` (retained): the month's availability record
    /// (`crate::availability::MonthRecord`).
    pub fn availability(&self, month: &str) -> String {
        format!("{}/availability/{month}", self.base)
    }

    /// `…/field/<device>/state`: a field device's points.
    pub fn field_state(&self, device: &str) -> String {
        format!("{}/field/{device}/state", self.base)
    }
}
