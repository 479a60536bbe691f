//! `berryctl bundle`: a site's configuration files, signed, for gateways to take by
//! themselves (`berrygw_proto::bundle`).
//!
//! - `build DIR`: the files of DIR (`devices.toml`, `rules.toml`, `authorized_keys`,
//!   `berrygw.toml`, `codecs/*.js`, `profiles/*.toml`; anything else is refused, so
//!   nothing is left behind unnoticed) with a version and the target gateways (`--target`,
//!   `--group`), signed; `devices.toml` and `berrygw.toml` are sealed to each target's
//!   identity key, pinned in `known_gateways` (`berryctl pin`). Needs no broker: it may
//!   run on a signing machine kept offline. Written to `--out`; never published.
//! - `push FILE`: each target's copy published retained on its `…/bundle` (a gateway
//!   offline for days takes it when it is back), then each target's outcome awaited on
//!   `…/event/bundle` (or its health record naming the version, for a gateway that had
//!   it already). Exit 0 every target applied it (`--until kept`: and kept it after its
//!   watch), 1 one refused it or rolled it back, 2 one did not answer in time, 3 bad
//!   arguments or files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berrygw_proto::bundle::{self, Bundle, BundleEvent, BundleOutcome, Kind, Source};
use berrygw_proto::health::Health;
use chrono::{SecondsFormat, Utc};
use rumqttc::{Event, Packet, QoS};

use crate::broker::BrokerArgs;
use crate::command::usage;
use crate::keygen::read_private;
use crate::known;
use crate::Exit;

#[derive(clap::Args)]
pub struct BundleArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Sign a site's files into a bundle file (nothing is published).
    Build(Box<BuildArgs>),
    /// Publish a bundle to its targets and wait for their outcomes.
    Push(Box<PushArgs>),
}

#[derive(clap::Args)]
pub struct BuildArgs {
    /// The site's folder: devices.toml, rules.toml, authorized_keys, berrygw.toml,
    /// codecs/*.js, profiles/*.toml.
    dir: PathBuf,
    /// The bundle's version: higher than any version the targets ever had.
    #[arg(long)]
    version: u64,
    /// A target gateway id (repeat for each).
    #[arg(long = "target", required_unless_present = "group")]
    targets: Vec<String>,
    /// A group of targets: a file of gateway ids, one per line (`#` comments), kept at the
    /// centre (e.g. `groups/vallee-du-cher`). Adds to `--target`.
    #[arg(long)]
    group: Vec<PathBuf>,
    /// The signing key (`berryctl keygen --out`); its authorized_keys entry needs a
    /// `bundles` scope with every kind of file in DIR.
    #[arg(long)]
    key: PathBuf,
    /// The key's id in the gateways' authorized_keys.
    #[arg(long)]
    key_id: String,
    /// Pinned gateway keys (default ~/.config/berryctl/known_gateways; `berryctl pin`
    /// learns them). Building needs no broker: it may run on a machine kept offline.
    #[arg(long)]
    known_gateways: Option<PathBuf>,
    /// Where to write the bundle.
    #[arg(long)]
    out: PathBuf,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct PushArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// The bundle file (`bundle build --out`).
    file: PathBuf,
    /// Seconds to wait for every target's outcome.
    #[arg(long, default_value_t = 120)]
    wait: u64,
    /// `applied`: done once each target has it in force; `kept`: once each has watched it.
    #[arg(long, default_value = "applied", value_parser = ["applied", "kept"])]
    until: String,
    /// Print the outcomes as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: BundleArgs) -> Exit {
    match args.action {
        Action::Build(a) => build(*a),
        Action::Push(a) => push(*a),
    }
}

fn build(a: BuildArgs) -> Exit {
    let key = match read_private(&a.key) {
        Ok(k) => k,
        Err(e) => return usage(&e),
    };
    let files = match site_files(&a.dir) {
        Ok(f) => f,
        Err(e) => return usage(&e),
    };
    let pins = a.known_gateways.clone().unwrap_or_else(known::default_path);
    let mut ids = a.targets.clone();
    for group in &a.group {
        match std::fs::read_to_string(group) {
            Ok(text) => ids.extend(
                text.lines()
                    .map(|l| l.split('#').next().unwrap_or("").trim())
                    .filter(|l| !l.is_empty())
                    .map(String::from),
            ),
            Err(e) => return usage(&format!("--group {}: {e}", group.display())),
        }
    }
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return usage("no target gateway (an empty --group?)");
    }
    let mut targets = Vec::new();
    for gateway in &ids {
        let recipient = match known::pinned(&pins, gateway) {
            Ok(Some(r)) => r,
            Ok(None) => {
                return usage(&format!(
                "gateway {gateway} is not pinned in {}: run `berryctl pin --gateway {gateway} --broker …`, \
                     or add `{gateway} <key>` (what `berrygw identity show` prints there)",
                pins.display()
            ))
            }
            Err(e) => return usage(&e),
        };
        targets.push((gateway.clone(), recipient));
    }
    let created_at = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let built = match bundle::build(a.version, created_at, &targets, files, &a.key_id, &key) {
        Ok(b) => b,
        Err(e) => return usage(&e),
    };
    let json = built.to_json();
    if let Err(e) = std::fs::write(&a.out, &json) {
        return usage(&format!("--out {}: {e}", a.out.display()));
    }
    let manifest = match built.manifest() {
        Ok(m) => m,
        Err(e) => return usage(&e),
    };
    let kinds: Vec<&str> = manifest.kinds().into_iter().map(Kind::as_str).collect();
    if a.json {
        let summary = serde_json::json!({
            "version": manifest.version, "targets": manifest.targets, "kinds": kinds,
            "files": manifest.files.len(), "bytes": json.len(), "out": a.out,
        });
        println!("{summary}");
    } else {
        println!(
            "bundle {} for {} gateway(s): {} files ({}), {} bytes, written to {}",
            manifest.version,
            manifest.targets.len(),
            manifest.files.len(),
            kinds.join(", "),
            json.len(),
            a.out.display()
        );
    }
    Exit::Done
}

/// The files of a site folder a bundle carries; anything else in it is an error.
pub fn site_files(dir: &Path) -> Result<Vec<Source>, String> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if (name == "codecs" || name == "profiles") && path.is_dir() {
            let codecs = std::fs::read_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            for codec in codecs {
                let codec = codec.map_err(|e| format!("{}: {e}", path.display()))?;
                out.push(format!("{name}/{}", codec.file_name().to_string_lossy()));
            }
        } else {
            out.push(name);
        }
    }
    out.sort();
    out.into_iter()
        .map(|rel| {
            if Kind::of_path(&rel).is_none() {
                return Err(format!(
                    "{}: a bundle carries only devices.toml, rules.toml, authorized_keys, berrygw.toml, codecs/<name>.js and profiles/<name>.toml",
                    dir.join(&rel).display()
                ));
            }
            let content = std::fs::read(dir.join(&rel)).map_err(|e| format!("{}: {e}", dir.join(&rel).display()))?;
            Ok(Source { path: rel, content })
        })
        .collect()
}

fn push(a: PushArgs) -> Exit {
    let built: Bundle = match std::fs::read(&a.file)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(b) => b,
        Err(e) => return usage(&format!("{}: not a bundle: {e}", a.file.display())),
    };
    let manifest = match built.manifest() {
        Ok(m) => m,
        Err(e) => return usage(&format!("{}: {e}", a.file.display())),
    };
    let runtime = match crate::runtime() {
        Ok(r) => r,
        Err(exit) => return exit,
    };
    let until_kept = a.until == "kept";
    let outcomes = runtime.block_on(publish_and_wait(
        &a.broker,
        &built,
        &manifest.targets,
        manifest.version,
        Duration::from_secs(a.wait),
        until_kept,
    ));
    let outcomes = match outcomes {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Exit::NoAnswer;
        }
    };
    let mut exit = Exit::Done;
    let mut report = BTreeMap::new();
    for gateway in &manifest.targets {
        let event = outcomes.get(gateway);
        let (word, message) = match event {
            Some(e) => (e.outcome.as_str(), e.message.clone()),
            None => (
                "no_answer",
                format!("no outcome within {} s (it will take the bundle when it is back)", a.wait),
            ),
        };
        match event.map(|e| e.outcome) {
            Some(BundleOutcome::Refused | BundleOutcome::RolledBack) => exit = Exit::Refused,
            None if !matches!(exit, Exit::Refused) => exit = Exit::NoAnswer,
            _ => {}
        }
        if !a.json {
            let reason =
                event.and_then(|e| e.reason.as_deref()).map(|r| format!(" ({r})")).unwrap_or_default();
            println!("{gateway}: {word}{reason}: {message}");
        }
        report.insert(
            gateway.clone(),
            serde_json::json!({ "outcome": event.map(|e| e.outcome.as_str()), "event": event }),
        );
    }
    if a.json {
        println!("{}", serde_json::json!({ "version": manifest.version, "gateways": report }));
    }
    exit
}

/// Publish each target's copy retained, then gather outcomes of `version` until every
/// target has a final one (or `wait` passes). Subscribed first, so none is missed. A
/// gateway that already has this very message in force says nothing more (it ignores a
/// message it took before); then the retained copy it took and its health record naming
/// the version answer for it.
async fn publish_and_wait(
    broker: &BrokerArgs,
    built: &Bundle,
    targets: &[String],
    version: u64,
    wait: Duration,
    until_kept: bool,
) -> anyhow::Result<BTreeMap<String, BundleEvent>> {
    let deadline = tokio::time::Instant::now() + wait;
    let (client, mut eventloop) = broker.connect(wait).await?;
    // Topic -> (gateway, what it is).
    let mut watched = BTreeMap::new();
    let mut copies = BTreeMap::new();
    for gateway in targets {
        let topics = broker.topics(gateway);
        for (topic, what) in [
            (topics.event("bundle"), Heard::Event),
            (topics.health(), Heard::Health),
            (topics.bundle(), Heard::Retained),
        ] {
            client.subscribe(&topic, QoS::AtLeastOnce).await?;
            watched.insert(topic, (gateway.clone(), what));
        }
        copies.insert(gateway.clone(), built.for_gateway(gateway).to_json());
    }
    let mut subacks = 0;
    let mut outcomes: BTreeMap<String, BundleEvent> = BTreeMap::new();
    let mut already: BTreeMap<String, (bool, Option<Health>)> = BTreeMap::new();
    let final_outcome = |o: BundleOutcome| match o {
        BundleOutcome::Applied => !until_kept,
        BundleOutcome::Kept | BundleOutcome::Refused | BundleOutcome::RolledBack => true,
    };
    loop {
        if targets.iter().all(|g| outcomes.get(g).is_some_and(|e| final_outcome(e.outcome))) {
            let _ = client.disconnect().await;
            return Ok(outcomes);
        }
        let event = match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(event) => event?,
            Err(_) => return Ok(outcomes),
        };
        match event {
            Event::Incoming(Packet::SubAck(_)) => {
                subacks += 1;
                if subacks == watched.len() {
                    for (gateway, copy) in &copies {
                        client
                            .publish(broker.topics(gateway).bundle(), QoS::AtLeastOnce, true, copy.clone())
                            .await?;
                    }
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                let Some((gateway, what)) = watched.get(p.topic.as_str()) else { continue };
                match what {
                    // What was retained before this push (our own copy comes back live, unflagged).
                    Heard::Retained if p.retain => {
                        let same = copies.get(gateway).is_some_and(|c| c.as_slice() == p.payload.as_ref());
                        already.entry(gateway.clone()).or_default().0 = same;
                    }
                    Heard::Retained => continue,
                    Heard::Health => {
                        let Ok(h) = serde_json::from_slice::<Health>(&p.payload) else { continue };
                        already.entry(gateway.clone()).or_default().1 = Some(h);
                    }
                    Heard::Event => {
                        let Ok(event) = serde_json::from_slice::<BundleEvent>(&p.payload) else { continue };
                        if event.version != Some(version) {
                            continue;
                        }
                        if event.outcome == BundleOutcome::Applied && until_kept {
                            eprintln!("{gateway}: applied, watching: {}", event.message);
                        }
                        if !outcomes.get(gateway).is_some_and(|e| final_outcome(e.outcome)) {
                            outcomes.insert(gateway.clone(), event);
                        }
                        continue;
                    }
                }
                if let Some((true, Some(h))) = already.get(gateway) {
                    if h.config_version == Some(version) && !outcomes.contains_key(gateway) {
                        let event = BundleEvent {
                            gateway_id: gateway.clone(),
                            version: Some(version),
                            in_force: version,
                            key_id: None,
                            outcome: if until_kept { BundleOutcome::Kept } else { BundleOutcome::Applied },
                            reason: None,
                            message: "this bundle was in force already (its health record says so)".into(),
                            at_ms: h.at_ms,
                        };
                        outcomes.insert(gateway.clone(), event);
                    }
                }
            }
            _ => {}
        }
    }
}

/// What a subscribed topic tells.
#[derive(Clone, Copy)]
enum Heard {
    Event,
    Health,
    Retained,
}
