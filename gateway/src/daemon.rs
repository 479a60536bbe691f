//! The daemon: the pipeline and its HTTP side (metrics, status page, local
//! API) until SIGTERM/SIGINT; SIGHUP reloads what a running gateway may re-read.

use anyhow::Context;
use tracing::{error, info};

use crate::config::Site;
use crate::service::{self};

use crate::pipeline::Gateway;

/// Run the daemon until SIGTERM/SIGINT; SIGHUP reloads the device registry.
pub async fn run_until_signal(site: &Site) -> anyhow::Result<()> {
    let cfg = &site.loaded;
    use tokio::signal::unix::{signal, SignalKind};
    let gw = Gateway::start(site).await?;
    let served = crate::api::serve(&cfg.config.http, &cfg.config.api, gw.view()).await;
    service::notify_ready();
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut hup = signal(SignalKind::hangup()).context("watching SIGHUP")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => {
                service::notify_reloading();
                match gw.reload().await {
                    Ok(r) => info!("SIGHUP: reloaded: {r}"),
                    Err(e) => error!("SIGHUP: NOT reloaded, what was in force stays: {e}"),
                }
                service::notify_ready();
            }
        }
    }
    info!("stopping");
    service::notify_stopping();
    served.stop();
    gw.stop().await
}
