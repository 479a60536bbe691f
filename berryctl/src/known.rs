//! The gateways' identity keys this centre has seen, pinned like SSH's known_hosts: a
//! file of `<gateway id> <public key>` lines (default `~/.config/berryctl/known_gateways`).
//! A key read from a gateway's retained announcement is added the first time (and said
//! so); a different key later is refused until its line is removed, since it may be a
//! publisher on the broker pretending to be the gateway to read the secrets sealed to it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berrygw_proto::identity::Announcement;
use berrygw_proto::sealed::Recipient;
use rumqttc::{Event, Packet, QoS};

use crate::broker::BrokerArgs;
use crate::Exit;

/// `berryctl pin`: learn gateways' identity keys from their announcements and pin them.
#[derive(clap::Args)]
pub struct PinArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// A gateway id (repeat for each).
    #[arg(long = "gateway", required = true)]
    gateways: Vec<String>,
    /// Pinned gateway keys (default ~/.config/berryctl/known_gateways).
    #[arg(long)]
    known_gateways: Option<PathBuf>,
    /// Seconds to wait for each announcement.
    #[arg(long, default_value_t = 30)]
    wait: u64,
    /// Print `{"<gateway>": {"key": …, "pinned": "already"|"now"|null, "error": …}}`.
    #[arg(long)]
    json: bool,
}

/// Pin each gateway's announced key: exit 0 all pinned (or pinned already, the same), 1 a
/// gateway announces another key than its pin, 2 one announced nothing in time.
pub fn pin(a: PinArgs) -> Exit {
    let pins = a.known_gateways.clone().unwrap_or_else(default_path);
    let runtime = match crate::runtime() {
        Ok(r) => r,
        Err(exit) => return exit,
    };
    let mut exit = Exit::Done;
    let mut report = serde_json::Map::new();
    for gateway in &a.gateways {
        let (key, pinned, error) =
            match runtime.block_on(announced_key(&a.broker, gateway, Duration::from_secs(a.wait))) {
                Ok(Some(key)) => match check_or_pin(&pins, gateway, &key) {
                    Ok(Pin::Known) => (Some(key), Some("already"), None),
                    Ok(Pin::Added) => (Some(key), Some("now"), None),
                    Err(e) => {
                        exit = Exit::Refused;
                        (Some(key), None, Some(e))
                    }
                },
                Ok(None) => {
                    if !matches!(exit, Exit::Refused) {
                        exit = Exit::NoAnswer;
                    }
                    (
                        None,
                        None,
                        Some(format!("gateway {gateway} announced no identity key within {} s", a.wait)),
                    )
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return Exit::NoAnswer;
                }
            };
        match (&key, pinned, &error) {
            (_, _, Some(e)) => eprintln!("error: {e}"),
            (Some(k), Some("now"), None) if !a.json => {
                println!("{gateway} {k} (pinned now in {})", pins.display())
            }
            (Some(k), _, None) if !a.json => println!("{gateway} {k} (pinned already)"),
            _ => {}
        }
        let key = key.map(|k| k.to_string());
        report.insert(gateway.clone(), serde_json::json!({ "key": key, "pinned": pinned, "error": error }));
    }
    if a.json {
        println!("{}", serde_json::Value::Object(report));
    }
    exit
}

/// Where the pins are when `--known-gateways` is not given.
pub fn default_path() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".config/berryctl/known_gateways")
}

/// What the pins say of `key` for `gateway`.
#[derive(Debug, PartialEq, Eq)]
pub enum Pin {
    /// The same key was pinned before.
    Known,
    /// Nothing was pinned for this gateway; it is now.
    Added,
}

/// The key pinned for `gateway` in `path`, if any.
pub fn pinned(path: &Path, gateway: &str) -> Result<Option<Recipient>, String> {
    match find(path, gateway)? {
        Some((line, pinned)) => {
            pinned.parse().map(Some).map_err(|e| format!("{}:{line}: {e}", path.display()))
        }
        None => Ok(None),
    }
}

/// The line number and key text of `gateway`'s pin in `path` (no file: none).
fn find(path: &Path, gateway: &str) -> Result<Option<(usize, String)>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(id), Some(pinned), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!("{}:{}: expected `<gateway id> <public key>`", path.display(), n + 1));
        };
        if id.eq_ignore_ascii_case(gateway) {
            return Ok(Some((n + 1, pinned.to_string())));
        }
    }
    Ok(None)
}

/// Check `key` against the pin of `gateway` in `path`, pinning it if there is none.
pub fn check_or_pin(path: &Path, gateway: &str, key: &Recipient) -> Result<Pin, String> {
    if let Some((line, pinned)) = find(path, gateway)? {
        return if pinned == key.to_string() {
            Ok(Pin::Known)
        } else {
            Err(format!(
                "gateway {gateway} announces the key {key}, but {} pins {pinned} (line {line}): refused. If the \
                 gateway's identity was made again on purpose, remove that line and run again",
                path.display()
            ))
        };
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    writeln!(file, "{gateway} {key}").map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Pin::Added)
}

/// The key in the gateway's retained identity announcement, if one comes within `wait`.
pub async fn announced_key(
    broker: &BrokerArgs,
    gateway: &str,
    wait: Duration,
) -> anyhow::Result<Option<Recipient>> {
    let deadline = tokio::time::Instant::now() + wait;
    let (client, mut eventloop) = broker.connect(wait).await?;
    let topic = broker.topics(gateway).identity();
    client.subscribe(&topic, QoS::AtLeastOnce).await?;
    loop {
        let event = match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(event) => event?,
            Err(_) => return Ok(None),
        };
        if let Event::Incoming(Packet::Publish(p)) = event {
            if p.topic != topic {
                continue;
            }
            let (announcement, key) =
                Announcement::parse(&p.payload).map_err(|e| anyhow::anyhow!("{topic}: {e}"))?;
            if !announcement.gateway_id.eq_ignore_ascii_case(gateway) {
                anyhow::bail!("{topic} announces gateway {}, not {gateway}", announcement.gateway_id);
            }
            let _ = client.disconnect().await;
            return Ok(Some(key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berrygw_proto::sealed::Identity;

    #[test]
    fn a_key_is_pinned_first_then_must_stay_the_same() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("sub/known_gateways");
        let key = Identity::generate().recipient();
        assert_eq!(check_or_pin(&path, "0016c001ff10a235", &key), Ok(Pin::Added));
        assert_eq!(check_or_pin(&path, "0016C001FF10A235", &key), Ok(Pin::Known));
        let other = Identity::generate().recipient();
        let err = check_or_pin(&path, "0016c001ff10a235", &other).expect_err("changed");
        assert!(err.contains("remove that line"), "{err}");
        assert_eq!(check_or_pin(&path, "0016c001ff10a236", &other), Ok(Pin::Added));
        std::fs::write(&path, "garbage\n").expect("write");
        assert!(check_or_pin(&path, "x", &key).is_err());
        assert!(pinned(&path, "x").is_err(), "a file that does not read is an error, not no pin");
        std::fs::write(&path, "0016c001ff10a235 not-a-key\n").expect("write");
        let err = pinned(&path, "0016c001ff10a235").expect_err("a pin that is not a key");
        assert!(err.contains(":1:"), "{err}");
        assert_eq!(pinned(&path, "0016c001ff10a236"), Ok(None));
    }
}
