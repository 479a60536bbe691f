//! Which credential sets the sink uses, with a CUPS server: the LNS set and the CUPS set
//! in use, a set CUPS handed over that is pending until it has worked, and the kept ones.
//!
//! - In use: the set kept in the sink's directory (`tc.set`, `cups.set`, written only
//!   once a set has worked), else the configured one (Station's boot set). Without CUPS
//!   nothing is kept and the configured LNS is used as is.
//! - A new LNS set is pending: the next session uses it; if that session reaches
//!   `router_config` it is written to `tc.set` and used from then on, otherwise it is
//!   dropped and the set in use before is used again. A new CUPS set is tried at once with
//!   a second `update-info`, and kept only if that is answered.
//! - CUPS is asked at start, every `cups_interval_s`, and after three sessions in a row
//!   that did not reach `router_config` (the LNS or its credentials may have moved).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;
use tracing::{info, warn};

use super::config::{BasicStationSettings, Endpoint};
use super::creds::Credentials;
use super::cups::{self, CupsUri, StoredSet, UpdateInfo};
use super::ws::WsUri;
use crate::sink::SinkCounters;

/// How long CUPS has to answer (an update may be a few MiB on 4G).
const CUPS_TIMEOUT: Duration = Duration::from_secs(60);
/// After CUPS failed while an LNS set is in use: the first retry (doubling after).
const CUPS_RETRY: Duration = Duration::from_secs(60);
/// Sessions in a row that did not reach `router_config` before CUPS is asked again.
const FAILURES_BEFORE_CUPS: u32 = 3;

pub struct Links {
    dir: PathBuf,
    lns: Option<Endpoint<WsUri>>,
    /// A set CUPS handed over, until a session on it reaches `router_config`.
    pending: Option<Endpoint<WsUri>>,
    cups: Option<Endpoint<CupsUri>>,
    /// The current session reached `router_config`.
    worked: bool,
    /// When CUPS is asked next; `None` without CUPS.
    next_cups: Option<Instant>,
    /// CUPS exchanges in a row that failed.
    cups_failures: u32,
    failed_sessions: u32,
}

impl Links {
    pub fn open(s: &BasicStationSettings) -> Links {
        let (lns, cups) = match &s.cups {
            None => (s.tc.clone(), None),
            Some(c) => (
                kept(&s.dir.join("tc.set"), s.allow_plaintext, WsUri::parse).or_else(|| s.tc.clone()),
                Some(
                    kept(&s.dir.join("cups.set"), s.allow_plaintext, CupsUri::parse)
                        .unwrap_or_else(|| c.boot.clone()),
                ),
            ),
        };
        let next_cups = cups.is_some().then(Instant::now);
        Links {
            dir: s.dir.clone(),
            lns,
            pending: None,
            cups,
            worked: false,
            next_cups,
            cups_failures: 0,
            failed_sessions: 0,
        }
    }

    /// For logs: where the sink goes.
    pub fn describe(&self) -> String {
        match (&self.cups, &self.lns) {
            (Some(c), Some(l)) => format!("{} (from CUPS {})", l.uri, c.uri),
            (Some(c), None) => format!("CUPS {}", c.uri),
            (None, Some(l)) => l.uri.to_string(),
            (None, None) => "nowhere".into(),
        }
    }

    /// The LNS set the next session uses: a pending one first.
    pub fn lns(&self) -> Option<&Endpoint<WsUri>> {
        self.pending.as_ref().or(self.lns.as_ref())
    }

    /// When CUPS is asked next, if there is a CUPS.
    pub fn cups_due(&self) -> Option<Instant> {
        self.next_cups
    }

    /// A session on the set in `lns()` reached `router_config`: a pending set is kept
    /// (written, then used from now on).
    pub fn lns_works(&mut self) {
        self.worked = true;
        self.failed_sessions = 0;
        if let Some(endpoint) = self.pending.take() {
            match self.keep(&endpoint, "tc.set") {
                Ok(()) => info!(lns = %endpoint.uri, "basic station sink: the LNS set from CUPS works; kept"),
                Err(e) => warn!("basic station sink: the LNS set from CUPS works but was not kept: {e:#}"),
            }
            self.lns = Some(endpoint);
        }
    }

    /// After a session: a pending set still pending did not work and is dropped;
    /// failures in a row send the sink to CUPS.
    pub fn session_ended(&mut self) {
        if std::mem::take(&mut self.worked) {
            return;
        }
        if let Some(endpoint) = self.pending.take() {
            warn!(
                lns = %endpoint.uri,
                "basic station sink: the LNS set from CUPS did not work; back to the set in use"
            );
        }
        self.failed_sessions += 1;
        if self.failed_sessions >= FAILURES_BEFORE_CUPS && self.cups.is_some() {
            self.failed_sessions = 0;
            self.next_cups = Some(Instant::now());
        }
    }

    /// Ask CUPS when it is due, and take what it hands over.
    pub async fn ask_cups_if_due(
        &mut self,
        s: &BasicStationSettings,
        counters: &SinkCounters,
    ) -> anyhow::Result<()> {
        let (Some(due), Some(settings), Some(current)) = (self.next_cups, &s.cups, self.cups.clone()) else {
            return Ok(());
        };
        if Instant::now() < due {
            return Ok(());
        }
        let info = match self.update_info(&current, s).await {
            Ok(info) => info,
            Err(e) => {
                // With no LNS the reconnect backoff paces the next try. With one in use
                // the sink goes on with it, and CUPS is asked again after 1, 2, 4…
                // minutes, up to the interval (asking closes the LNS link a moment).
                self.cups_failures = self.cups_failures.saturating_add(1);
                let retry = if self.lns.is_some() {
                    (CUPS_RETRY * 2u32.pow(self.cups_failures.min(12) - 1)).min(settings.interval)
                } else {
                    Duration::ZERO
                };
                self.next_cups = Some(Instant::now() + retry);
                return Err(e);
            }
        };
        self.cups_failures = 0;
        self.next_cups = Some(Instant::now() + settings.interval);
        if info.cups_uri.is_some() || info.cups_cred.is_some() {
            self.take_cups_set(&info, &current, s, counters).await?;
        }
        if info.tc_uri.is_some() || info.tc_cred.is_some() {
            self.take_lns_set(&info, s.allow_plaintext, counters);
        }
        if let Some(update) = &info.update {
            match cups::verify(update, info.signature.as_ref(), &settings.sig_keys) {
                Ok(key) => self.in_dir(|dir| cups::keep_update(dir, update, key, &current.uri))?,
                Err(e) => {
                    counters.bad_commands.fetch_add(1, Ordering::Relaxed);
                    warn!(size = update.len(), "basic station sink: CUPS sent an update; refused: {e}");
                }
            }
        }
        Ok(())
    }

    /// A new CUPS set (URI, credentials or both): tried at once, kept if it is answered.
    async fn take_cups_set(
        &mut self,
        info: &UpdateInfo,
        current: &Endpoint<CupsUri>,
        s: &BasicStationSettings,
        counters: &SinkCounters,
    ) -> anyhow::Result<()> {
        let set = StoredSet {
            uri: info.cups_uri.clone().unwrap_or_else(|| current.text.clone()),
            cred: info.cups_cred.clone().unwrap_or_else(|| current.creds.blob().to_vec()),
        };
        let endpoint = match endpoint_of(&set, s.allow_plaintext, CupsUri::parse) {
            Ok(endpoint) => endpoint,
            Err(e) => {
                counters.bad_commands.fetch_add(1, Ordering::Relaxed);
                warn!("basic station sink: CUPS handed over an unusable CUPS set; refused: {e:#}");
                return Ok(());
            }
        };
        match self.update_info(&endpoint, s).await {
            Ok(_) => {
                self.keep(&endpoint, "cups.set")?;
                info!(cups = %endpoint.uri, "basic station sink: the CUPS set from CUPS works; kept");
                self.cups = Some(endpoint);
            }
            Err(e) => {
                warn!(
                    "basic station sink: the CUPS set from CUPS did not work ({e:#}); the set in use is kept"
                )
            }
        }
        Ok(())
    }

    /// A new LNS set (URI, credentials or both): pending, tried by the next session.
    fn take_lns_set(&mut self, info: &UpdateInfo, allow_plaintext: bool, counters: &SinkCounters) {
        let base = self.lns.as_ref();
        let uri = info.tc_uri.clone().or_else(|| base.map(|l| l.text.clone()));
        let cred = info
            .tc_cred
            .clone()
            .or_else(|| base.map(|l| l.creds.blob().to_vec()))
            .unwrap_or_else(|| Credentials::none().blob().to_vec());
        let pending = uri
            .context("credentials for an LNS but no LNS URI")
            .and_then(|uri| endpoint_of(&StoredSet { uri, cred }, allow_plaintext, WsUri::parse));
        match pending {
            Ok(endpoint) => {
                info!(
                    lns = %endpoint.uri,
                    credentials = format_args!("{:08X}", endpoint.creds.crc()),
                    "basic station sink: CUPS handed over an LNS set; trying it"
                );
                self.pending = Some(endpoint);
            }
            Err(e) => {
                counters.bad_commands.fetch_add(1, Ordering::Relaxed);
                warn!("basic station sink: CUPS handed over an unusable LNS set; refused: {e:#}");
            }
        }
    }

    /// One `update-info` exchange with `cups`, reporting the sets in use.
    async fn update_info(
        &self,
        cups: &Endpoint<CupsUri>,
        s: &BasicStationSettings,
    ) -> anyhow::Result<UpdateInfo> {
        let keys = s.cups.as_ref().map(|c| c.sig_keys.as_slice()).unwrap_or_default();
        let lns = self.lns.as_ref();
        let body = cups::request_body(
            s.router,
            &cups.text,
            lns.map(|l| l.text.as_str()),
            &cups.creds,
            lns.map(|l| &l.creds),
            keys,
        );
        let answer =
            cups::post_update_info(&cups.uri, &cups.creds, cups.tls.as_ref(), &body, CUPS_TIMEOUT).await?;
        UpdateInfo::parse(&answer)
            .map_err(|e| super::Refused(format!("{}: update-info: {e}", cups.uri)).into())
    }

    /// Write a set that worked as `name`: its URI as given and its credential blob.
    fn keep<U>(&self, endpoint: &Endpoint<U>, name: &str) -> anyhow::Result<()> {
        let set = StoredSet { uri: endpoint.text.clone(), cred: endpoint.creds.blob().to_vec() };
        self.in_dir(|dir| set.store(&dir.join(name)))
    }

    /// `write` in the sink's directory, made if missing. Files written there are synced:
    /// off the runtime's one worker.
    fn in_dir<T>(&self, write: impl FnOnce(&Path) -> anyhow::Result<T>) -> anyhow::Result<T> {
        tokio::task::block_in_place(|| {
            std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
            write(&self.dir)
        })
    }
}

/// A set as an endpoint: its URI parsed, its credentials read, TLS built.
fn endpoint_of<U: AsRef<WsUri> + std::fmt::Display>(
    set: &StoredSet,
    allow_plaintext: bool,
    parse: fn(&str) -> anyhow::Result<U>,
) -> anyhow::Result<Endpoint<U>> {
    let creds = Credentials::from_blob(&set.cred).context("credentials")?;
    Endpoint::new(parse(&set.uri)?, &set.uri, creds, allow_plaintext)
}

/// A kept set, if there is one that can be used; a damaged or unusable one is reported
/// (and the configured set used).
fn kept<U: AsRef<WsUri> + std::fmt::Display>(
    path: &Path,
    allow_plaintext: bool,
    parse: fn(&str) -> anyhow::Result<U>,
) -> Option<Endpoint<U>> {
    let result = StoredSet::load(path)
        .and_then(|set| set.map(|s| endpoint_of(&s, allow_plaintext, parse)).transpose());
    match result {
        Ok(endpoint) => endpoint,
        Err(e) => {
            warn!("basic station sink: {}: {e:#}; the configured set is used", path.display());
            None
        }
    }
}
