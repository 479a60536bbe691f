//! `berryctl command`: a command signed for one gateway's field device, published on
//! the gateway's `command` topic, and its outcomes read back from its `event/command`
//! (subscribed before publishing, so none is missed). `executed` is progress; `verified`,
//! `refused` or `failed` ends it. A command the gateway cannot authenticate (a key it
//! does not know, a bad signature) gets no answer at all, by design: it is only counted
//! there (`berrygw_commands_unauthenticated_total`), so that unsigned traffic cannot
//! fill its audit log; that shows here as no answer.

use std::path::PathBuf;
use std::time::Duration;

use berrygw_proto::audit::{AuditEntry, CommandEvent, Outcome};
use berrygw_proto::envelope::{args_from_words, UnsignedCommand};
use chrono::Utc;
use rumqttc::{Event, Packet, QoS};

use crate::broker::BrokerArgs;
use crate::keygen::read_private;
use crate::Exit;
use ed25519_dalek::SigningKey;

/// What every signed message to one gateway needs (`command`, `session push`): the
/// broker, the signing key, the gateway, how long the message stays valid and how long
/// to wait for its outcome.
#[derive(clap::Args)]
pub struct Signed {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The signing key (`berryctl keygen --out`).
    #[arg(long)]
    key: PathBuf,
    /// The key's id in the gateway's authorized_keys.
    #[arg(long)]
    key_id: String,
    /// The gateway's id (its EUI, as in its `[gateway] id`).
    #[arg(long)]
    pub gateway: String,
    /// Seconds the message stays valid; after that the gateway refuses it (at most a day).
    #[arg(long, default_value_t = 300)]
    ttl: u64,
    /// Seconds to wait for the outcome.
    #[arg(long, default_value_t = 60)]
    pub wait: u64,
    /// Print the final outcome as JSON (the gateway's audit entry), or `{"outcome": null, ...}`.
    #[arg(long)]
    json: bool,
}

impl Signed {
    /// The signing key, or exit 3 with why not.
    pub fn key(&self) -> Result<SigningKey, Exit> {
        read_private(&self.key).map_err(|e| usage(&e))
    }

    /// Sign `command` for `target` with `args`, publish it on `topic`, wait for the
    /// gateway's outcome: the exit. Ids are `s-…` for session pushes, `c-…` for commands.
    pub fn send(
        &self,
        runtime: &tokio::runtime::Runtime,
        key: &SigningKey,
        topic: String,
        target: &str,
        command: &str,
        args: serde_json::Value,
    ) -> Exit {
        let now = Utc::now();
        let id = new_id(if command == "set_session" { "s" } else { "c" });
        let unsigned = UnsignedCommand {
            id: id.clone(),
            key_id: self.key_id.clone(),
            gateway_id: self.gateway.clone(),
            target: target.to_string(),
            command: command.to_string(),
            args,
            not_after: now + chrono::Duration::seconds(self.ttl.min(86_400) as i64),
            issued_at: Some(now),
        };
        let envelope = match unsigned.sign(key) {
            Ok(e) => e,
            Err(r) => return usage(&r.to_string()),
        };
        let wait = Duration::from_secs(self.wait);
        let outcome = runtime.block_on(publish_and_wait(
            &self.broker,
            &self.gateway,
            topic,
            &id,
            envelope.to_json(),
            wait,
            self.json,
        ));
        report(outcome, &self.gateway, &id, self.wait, self.json)
    }
}

#[derive(clap::Args)]
pub struct CommandArgs {
    #[command(flatten)]
    signed: Signed,
    /// Field device name (`barrage-cher-1`).
    target: String,
    /// Profile command (`move_bay`).
    command: String,
    /// Arguments, `name=value` (numbers and true/false as such), or one JSON object.
    args: Vec<String>,
}

pub fn run(a: CommandArgs) -> Exit {
    let key = match a.signed.key() {
        Ok(k) => k,
        Err(exit) => return exit,
    };
    let args = match args_from_words(&a.args) {
        Ok(v) => v,
        Err(e) => return usage(&e),
    };
    let runtime = match crate::runtime() {
        Ok(r) => r,
        Err(exit) => return exit,
    };
    let topic = a.signed.broker.topics(&a.signed.gateway).command();
    a.signed.send(&runtime, &key, topic, &a.target, &a.command, args)
}

/// The exit of a command or session push whose outcome is `outcome`.
pub fn report(
    outcome: anyhow::Result<Option<AuditEntry>>,
    gateway: &str,
    id: &str,
    wait: u64,
    json: bool,
) -> Exit {
    match outcome {
        Ok(Some(entry)) => {
            let exit = if entry.outcome == Outcome::Verified { Exit::Done } else { Exit::Refused };
            if json {
                println!("{}", serde_json::to_string(&entry).unwrap_or_default());
            } else {
                let reason = entry.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
                println!("{}{reason}: {}", entry.outcome.as_str(), entry.message);
            }
            exit
        }
        Ok(None) => {
            let why = format!(
                "no outcome from gateway {gateway} within {wait} s for command {id} (is it online? a command it \
                 cannot authenticate, from a key missing in its authorized_keys, is dropped without an answer)"
            );
            no_answer(json, id, &why)
        }
        Err(e) => no_answer(json, id, &format!("{e:#}")),
    }
}

/// Publish a signed envelope on `topic`, then read the gateway's `event/command` until its
/// final outcome or `wait` (subscribed first, so that no outcome is missed).
pub async fn publish_and_wait(
    broker: &BrokerArgs,
    gateway: &str,
    topic: String,
    id: &str,
    envelope: String,
    wait: Duration,
    quiet: bool,
) -> anyhow::Result<Option<AuditEntry>> {
    let deadline = tokio::time::Instant::now() + wait;
    let (client, mut eventloop) = broker.connect(wait).await?;
    let events = broker.topics(gateway).event("command");
    client.subscribe(&events, QoS::AtLeastOnce).await?;
    let mut published = false;
    loop {
        let event = match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(event) => event?,
            Err(_) => return Ok(None),
        };
        match event {
            Event::Incoming(Packet::SubAck(_)) if !published => {
                client.publish(&topic, QoS::AtLeastOnce, false, envelope.clone().into_bytes()).await?;
                published = true;
            }
            Event::Incoming(Packet::Publish(p)) if p.topic == events => {
                let Ok(CommandEvent { audit: entry, .. }) = serde_json::from_slice(&p.payload) else {
                    continue;
                };
                if entry.command_id.as_deref() != Some(id) {
                    continue;
                }
                if entry.outcome == Outcome::Executed {
                    if !quiet {
                        eprintln!("executed: {}", entry.message);
                    }
                    continue;
                }
                let _ = client.disconnect().await;
                return Ok(Some(entry));
            }
            _ => {}
        }
    }
}

/// A fresh envelope id: `<prefix>-<UTC time>-<random>`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}-{:08x}", Utc::now().format("%Y%m%dT%H%M%S"), rand::random::<u32>())
}

pub fn usage(message: &str) -> Exit {
    eprintln!("error: {message}");
    Exit::Usage
}

fn no_answer(json: bool, id: &str, why: &str) -> Exit {
    if json {
        println!("{}", serde_json::json!({ "command_id": id, "outcome": null, "message": why }));
    }
    eprintln!("error: {why}");
    Exit::NoAnswer
}
