//! `berryctl fleet`: every gateway of the network in one table, from what the broker
//! keeps retained: each gateway's state (`…/state`, `online: false` from its last will
//! when its connection drops) and its compact health record (`…/health`). A gateway is
//! `online` when its state says so and its health record is fresh (younger than twice
//! the period it promises), `stale` when it says online but its record is old,
//! `offline` when its last will has spoken (since the time of its last record).
//!
//! Exit 0 when every gateway heard is online and healthy, 1 when one is not, 2 when no
//! gateway was heard within `--wait`.

use std::collections::BTreeMap;
use std::time::Duration;

use berrygw_proto::health::Health;
use rumqttc::{AsyncClient, QoS};
use serde::Serialize;

use crate::broker::BrokerArgs;
use crate::Exit;

#[derive(clap::Args)]
pub struct FleetArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Seconds to collect the retained records.
    #[arg(long, default_value_t = 2)]
    wait: u64,
    /// One JSON object per gateway, in an array.
    #[arg(long)]
    json: bool,
}

/// One gateway as the broker knows it.
#[derive(Debug, Default, Serialize)]
pub struct Row {
    pub gateway_id: String,
    /// `online`, `stale`, `offline` or `unknown` (a health record and no state).
    pub status: String,
    /// Its state message said online (`None`: no state message retained).
    pub online: Option<bool>,
    /// Age of its latest health record, in seconds.
    pub health_age_secs: Option<u64>,
    pub health: Option<Health>,
}

pub fn run(a: FleetArgs) -> Exit {
    let runtime = match crate::runtime() {
        Ok(r) => r,
        Err(exit) => return exit,
    };
    let rows = match runtime.block_on(collect(&a.broker, Duration::from_secs(a.wait))) {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Exit::NoAnswer;
        }
    };
    if a.json {
        println!("{}", serde_json::to_string(&rows).unwrap_or_default());
    } else {
        print!("{}", table(&rows));
    }
    if rows.is_empty() {
        eprintln!("no gateway heard on {} within {} s", a.broker.broker, a.wait);
        Exit::NoAnswer
    } else if rows.iter().all(|r| r.status == "online" && r.health.as_ref().is_some_and(|h| h.healthy)) {
        Exit::Done
    } else {
        Exit::Refused
    }
}

/// What the broker keeps retained of one gateway.
#[derive(Default)]
pub struct Known {
    /// Its state message said online (`None`: no state message retained).
    pub online: Option<bool>,
    pub health: Option<Health>,
}

/// Subscribe `client` to every gateway's state and health under `prefix`.
pub async fn subscribe(client: &AsyncClient, prefix: &str) -> Result<(), rumqttc::ClientError> {
    let prefix = prefix.trim_matches('/');
    for what in ["state", "health"] {
        let filter = if prefix.is_empty() { format!("+/{what}") } else { format!("{prefix}/+/{what}") };
        client.subscribe(filter, QoS::AtLeastOnce).await?;
    }
    Ok(())
}

/// Take one message into `fleet` if it is a gateway's state or health under `prefix`.
/// Anything else, or a payload that does not parse, is ignored: anyone able to publish
/// may leave junk, and the table shows what is known.
pub fn take(fleet: &mut BTreeMap<String, Known>, prefix: &str, topic: &str, payload: &[u8]) {
    let prefix = prefix.trim_matches('/');
    let rest = if prefix.is_empty() { topic } else { topic.strip_prefix(prefix).unwrap_or("") };
    let mut parts = rest.trim_start_matches('/').split('/');
    let (Some(gateway), Some(kind), None) = (parts.next(), parts.next(), parts.next()) else { return };
    match kind {
        "state" => {
            let v: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
            if let Some(online) = v["online"].as_bool() {
                fleet.entry(gateway.to_string()).or_default().online = Some(online);
            }
        }
        "health" => {
            if let Ok(h) = serde_json::from_slice::<Health>(payload) {
                fleet.entry(gateway.to_string()).or_default().health = Some(h);
            }
        }
        _ => {}
    }
}

/// The retained state and health of every gateway under the prefix.
async fn collect(broker: &BrokerArgs, wait: Duration) -> anyhow::Result<Vec<Row>> {
    let all = broker.topics("+");
    let mut fleet = BTreeMap::new();
    for (topic, payload) in broker.retained(&[all.state(), all.health()], wait).await? {
        take(&mut fleet, &broker.prefix, &topic, &payload);
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    Ok(fleet
        .into_iter()
        .map(|(id, Known { online, health })| {
            let age = health.as_ref().map(|h| ((now_ms - h.at_ms).max(0) / 1000) as u64);
            let fresh = health.as_ref().zip(age).is_some_and(|(h, age)| age <= 2 * h.every_secs.max(1));
            let status = match (online, fresh) {
                (Some(true), true) => "online",
                (Some(true), false) => "stale",
                (Some(false), _) => "offline",
                (None, _) => "unknown",
            };
            Row { gateway_id: id, status: status.into(), online, health_age_secs: age, health }
        })
        .collect())
}

fn human(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

/// The rows for a terminal.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<18} {:<8} {:<10} {:<9} {:<6} {:<8} {:<9} {:<22} {:<6} {:<6} {}\n",
        "GATEWAY",
        "STATUS",
        "RECORD",
        "VERSION",
        "CONFIG",
        "UPTIME",
        "RADIO",
        "SINKS (backlog)",
        "CLOCK",
        "ALARMS",
        "PROBLEMS"
    );
    for r in rows {
        let record = r.health_age_secs.map(|a| format!("{} ago", human(a))).unwrap_or_else(|| "none".into());
        let Some(h) = &r.health else {
            out.push_str(&format!("{:<18} {:<8} {record}\n", r.gateway_id, r.status));
            continue;
        };
        let sinks: Vec<String> = h
            .sinks
            .iter()
            .map(|s| format!("{}:{}({})", s.name, if s.connected { "up" } else { "DOWN" }, s.backlog))
            .collect();
        let radio = format!("{}{}", h.radio.kind, if h.radio.running { "" } else { " DOWN" });
        let clock = match h.clock_synced {
            Some(true) => "ntp",
            Some(false) => "NOSYNC",
            None => "?",
        };
        let config = h.config_version.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<18} {:<8} {:<10} {:<9} {:<6} {:<8} {:<9} {:<22} {:<6} {:<6} {}\n",
            r.gateway_id,
            r.status,
            record,
            h.version,
            config,
            human(h.uptime_secs),
            radio,
            sinks.join(" "),
            clock,
            h.alarms_open,
            h.problems.join("; ")
        ));
    }
    out
}
