//! The daemon: the pipeline and its HTTP side (metrics, status page, local
//! API) until SIGTERM/SIGINT; SIGHUP reloads what a running gateway may re-read.
//! A configuration bundle that changes settings (`crate::bundle`) restarts the
//! pipeline in place on them: the journals are flushed and reopened, nothing
//! accepted is lost, and a pipeline that cannot start on them is rolled back.

use std::path::Path;

use anyhow::Context;
use tokio::sync::watch;
use tracing::{error, info};

use crate::config::{self, ConfigError, Site};
use crate::ledger::{Ledger, Now};
use crate::pipeline::Gateway;
use crate::service::{self};

/// The site `run` starts on: with `[bundles]`, read through the bundle in force (the
/// store seeded at the first start); a bundle on probation that does not resolve is
/// rolled back and the site read again.
pub fn load_site(path: &Path) -> Result<Site, ConfigError> {
    let loaded = config::load(path);
    // A bundle's settings that do not even parse: back to the version before, then read again.
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => match recover_from_base(path, &e.to_string()) {
            true => config::load(path)?,
            false => return Err(e),
        },
    };
    if let Err(e) = crate::bundle::prepare(&loaded) {
        return Err(ConfigError::whole(path, format!("[bundles]: {e:#}")));
    }
    match Site::resolve(loaded) {
        Ok(site) => Ok(site),
        Err(e) => match recover_from_base(path, &e.to_string()) {
            true => Site::resolve(config::load(path)?),
            false => Err(e),
        },
    }
}

/// The availability ledger, when `[ledger]` is on. A ledger that cannot open is logged and
/// left out: it never keeps the gateway from forwarding.
fn open_ledger(site: &Site) -> Option<Ledger> {
    let c = &site.loaded.config;
    if !c.ledger.enabled {
        return None;
    }
    let opened = tokio::task::block_in_place(|| {
        Ledger::open(&c.ledger, &c.gateway.state_dir, &c.gateway.id.to_string(), Now::current())
    });
    match opened {
        Ok(l) => Some(l),
        Err(e) => {
            error!("availability ledger not kept this run: {e:#}");
            None
        }
    }
}

/// Roll back the version on probation, reading the file's own text (whatever a bundle
/// set); whether there was one.
fn recover_from_base(path: &Path, why: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else { return false };
    let Ok(base) = config::parse(path, text) else { return false };
    crate::bundle::recover(&base, why).is_some()
}

/// Run the daemon on `site` until SIGTERM/SIGINT; SIGHUP reloads the registry, codecs,
/// keys and rules.
pub async fn run_until_signal(site: Site) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let path = site.loaded.path.clone();
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut hup = signal(SignalKind::hangup()).context("watching SIGHUP")?;
    let mut site = site;
    let ledger = open_ledger(&site);
    loop {
        let mut gw = match Gateway::start(&site).await {
            Ok(gw) => gw,
            Err(e) => {
                // A version on probation the pipeline cannot start on: rolled back, start again.
                if crate::bundle::recover(&site.loaded, &format!("{e:#}")).is_none() {
                    return Err(e);
                }
                site = load_site(&path)?;
                continue;
            }
        };
        let cfg = &site.loaded;
        let served = crate::api::serve(&cfg.config.http, &cfg.config.api, gw.view(), ledger.clone()).await;
        let (ledger_stop, stop_rx) = watch::channel(false);
        let watcher = ledger.clone().map(|l| {
            tokio::spawn(crate::ledger::watch::run(l, cfg.config.ledger.clone(), gw.view(), stop_rx))
        });
        service::notify_ready();
        let restart = loop {
            tokio::select! {
                _ = term.recv() => break false,
                _ = tokio::signal::ctrl_c() => break false,
                _ = gw.restart_requested() => break true,
                _ = hup.recv() => {
                    service::notify_reloading();
                    match gw.reload().await {
                        Ok(r) => info!("SIGHUP: reloaded: {r}"),
                        Err(e) => error!("SIGHUP: NOT reloaded, what was in force stays: {e}"),
                    }
                    service::notify_ready();
                }
            }
        };
        let _ = ledger_stop.send(true);
        if let Some(w) = watcher {
            let _ = w.await;
        }
        if !restart {
            info!("stopping");
            service::notify_stopping();
            if let Some(l) = &ledger {
                // Open incidents end with the daemon; what that closes goes out before the sinks stop.
                let up = tokio::task::block_in_place(|| l.stop(Now::current()));
                let view = gw.view();
                let app = crate::ledger::watch::app_of(&view);
                crate::ledger::watch::send(app.as_ref(), up).await;
            }
            served.stop().await;
            return gw.stop().await;
        }
        info!("restarting the pipeline on the settings of the configuration bundle in force");
        service::notify_reloading();
        served.stop().await;
        gw.stop().await?;
        site = load_site(&path)?;
    }
}
