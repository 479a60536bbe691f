//! Opening a journal: the config is checked, the store path claimed, the store opened (the
//! segment log or SQLite, moved aside if corrupt), what the RAM stage still holds after an
//! unclean stop taken back into the store, and the owner thread started.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::claim::PathClaim;
use super::{stats_from, Hot, Life, Owner, Shared, Started};
use crate::stage::{stage_path, Stage};
use crate::{segments, sqlite, Backend, Commit, JournalConfig, JournalError, Record, Seq, Store};

/// How long `open` waits for a previous journal on the same path (in this process) to finish.
const CLAIM_WAIT: Duration = Duration::from_secs(10);

/// Open the store and the stage, take back what the stage holds, then start the owner.
pub(crate) fn start(name: &str, config: JournalConfig) -> Result<Started, JournalError> {
    validate(&config)?;
    let absolute = std::path::absolute(&config.path).map_err(|source| JournalError::Io {
        path: config.path.clone(),
        action: "resolving the store path",
        source,
    })?;
    let claim = PathClaim::acquire(absolute, CLAIM_WAIT)?;
    let (mut store, quarantined): (Box<dyn Store>, _) = match config.backend {
        Backend::Log => {
            let (store, quarantined) = segments::SegmentStore::open(&config.path)?;
            (Box::new(store), quarantined)
        }
        Backend::Sqlite => {
            let (store, quarantined) = sqlite::SqliteStore::open(&config.path)?;
            (Box::new(store), quarantined)
        }
    };

    let mut stage = None;
    if let Some(dir) = &config.stage_dir {
        let path = stage_path(dir, name, &config.path);
        match Stage::open(&path) {
            Ok((mut opened, recovered)) => {
                if let Some(damage) = &recovered.damage {
                    tracing::warn!(journal = name, path = %path.display(), %damage, "journal stage is damaged; taking back what precedes the damage");
                }
                let counters = store.counters();
                let records: Vec<Record> =
                    recovered.records.into_iter().filter(|r| r.seq > counters.last_seq).collect();
                let acked = recovered.acked.max(counters.acked);
                let last_seq =
                    records.last().map_or(counters.last_seq, |r| r.seq).max(acked).max(counters.last_seq);
                if !records.is_empty() || last_seq > counters.last_seq {
                    tracing::info!(journal = name, records = records.len(), %acked, "journal takes back records its RAM stage held (berrygw stopped without a clean shutdown)");
                    let commit = Commit {
                        records: &records,
                        last_seq,
                        persist_counters: true,
                        ack_up_to: acked,
                        max_bytes: config.max_bytes,
                        unreadable: &[],
                    };
                    store.commit(&commit)?;
                }
                if let Err(error) = opened.clear(acked) {
                    tracing::warn!(journal = name, path = %path.display(), %error, "journal stage cannot be emptied; running without it");
                } else {
                    stage = Some(opened);
                }
            }
            Err(error) => {
                tracing::warn!(
                    journal = name,
                    path = %path.display(),
                    %error,
                    "journal RAM stage cannot be opened; running without it: a crash of berrygw can lose the records of one commit window"
                );
            }
        }
    }

    let counters = store.counters();
    let (stats_tx, stats_rx) = watch::channel(stats_from(&counters, 0, &quarantined));
    let (appended_tx, appended_rx) = watch::channel(counters.last_seq);
    tracing::info!(
        journal = name,
        backend = %config.backend,
        path = %config.path.display(),
        stage = %stage.as_ref().map(|s: &Stage| s.path().display().to_string()).unwrap_or_else(|| "none".into()),
        records = counters.records,
        bytes = counters.bytes,
        last_seq = %counters.last_seq,
        acked = %counters.acked,
        "journal opened"
    );
    let shared = Arc::new_cyclic(|this| Shared {
        this: this.clone(),
        clock: Notify::new(),
        clock_running: AtomicBool::new(false),
        name: name.to_string(),
        limit: config.commit_max_records.saturating_mul(4).clamp(64, 65_536),
        config: config.clone(),
        hot: Mutex::new(Hot {
            life: Life::Open,
            pending: VecDeque::new(),
            last_seq: counters.last_seq,
            acked: counters.acked,
            stored_last: if counters.records > 0 { counters.last_seq } else { Seq::NONE },
            stored_first: counters.first_seq,
            stage,
            reads: Vec::new(),
            flushes: Vec::new(),
            pings: Vec::new(),
            close_reply: None,
            owner_idle: false,
            commit_due: false,
            far_side: true,
            ack_noticed: None,
        }),
        wake: Condvar::new(),
        room: Notify::new(),
        appended: appended_tx,
        stats: stats_tx,
    });
    let owner = Owner {
        shared: Arc::clone(&shared),
        store,
        quarantined,
        commits: 0,
        retry_at: None,
        failures: 0,
        evicted_unlogged: 0,
        last_eviction_log: None,
    };
    std::thread::Builder::new().name(format!("journal-{name}")).spawn(move || owner.run(claim)).map_err(
        |source| JournalError::Io {
            path: config.path.clone(),
            action: "starting the journal thread",
            source,
        },
    )?;
    Ok((shared, stats_rx, appended_rx))
}

fn validate(config: &JournalConfig) -> Result<(), JournalError> {
    let reason = if config.path.as_os_str().is_empty() {
        "path is empty"
    } else if config.max_bytes == 0 {
        "max_bytes must be greater than 0"
    } else if config.commit_max_records == 0 {
        "commit_max_records must be at least 1"
    } else {
        return Ok(());
    };
    Err(JournalError::Config { path: config.path.clone(), reason: reason.to_string() })
}
