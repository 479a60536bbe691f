//! What every sink does between its journal and its connection: keep up to
//! [`PREFETCH`] records read ahead, run the next journal read beside the
//! connection's event loop (a journal busy with an fsync must never stall
//! acknowledgement handling), and wake on appends, not commits (publishing
//! does not wait for the durable write). Also what every sink does with a
//! record it cannot send ([`set_aside`]).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use anyhow::{bail, Context};
use berrygw_core::LogLimiter;
use tokio::sync::watch;
use tracing::warn;

use super::SinkCounters;
use crate::journal::{Journal, JournalError, Record, Seq};

/// Records read from the journal ahead of sending.
pub const PREFETCH: usize = 2000;

type Read = Pin<Box<dyn Future<Output = Result<Vec<Record>, JournalError>> + Send>>;

/// A sink's window onto its journal, from one seq on.
pub struct ReadAhead {
    journal: Journal,
    appended: watch::Receiver<Seq>,
    /// Records read and not yet taken, oldest first.
    pub records: VecDeque<Record>,
    read_upto: Seq,
    reading: Option<Read>,
    caught_up: bool,
}

impl ReadAhead {
    /// Read records after `from` (the journal's ack point when a session starts).
    pub fn new(journal: &Journal, from: Seq) -> ReadAhead {
        ReadAhead {
            journal: journal.clone(),
            appended: journal.watch_appended(),
            records: VecDeque::new(),
            read_upto: from,
            reading: None,
            caught_up: false,
        }
    }

    /// Start the next read when the buffer runs low; call once per turn of the loop.
    pub fn refill(&mut self) {
        if self.reading.is_none() && !self.caught_up && self.records.len() < PREFETCH / 2 {
            // Appends after this point wake `ready` even if the read misses them.
            self.appended.borrow_and_update();
            let journal = self.journal.clone();
            let after = self.read_upto;
            self.reading = Some(Box::pin(async move { journal.read_after(after, PREFETCH).await }));
        }
    }

    /// Resolves when a read has landed in `records` or, when caught up, a record
    /// was appended. Cancel-safe: use it as one branch of the sink's `select!`.
    pub async fn ready(&mut self) -> anyhow::Result<()> {
        match self.reading.as_mut() {
            Some(read) => {
                let records = read.await.context("reading journal");
                self.reading = None;
                let records = records?;
                match records.last() {
                    Some(last) => self.read_upto = last.seq,
                    None => self.caught_up = true,
                }
                self.records.extend(records);
            }
            None if self.caught_up => {
                if self.appended.changed().await.is_err() {
                    bail!("journal closed");
                }
                self.caught_up = false;
            }
            None => std::future::pending::<()>().await,
        }
        Ok(())
    }
}

/// A journal record that a sink cannot turn into a wire message, and why.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct BadRecord {
    /// A fixed label for the log limiter ("undecodable", "time out of range", ...).
    pub cause: &'static str,
    pub detail: String,
}

impl BadRecord {
    pub fn new(cause: &'static str, detail: impl std::fmt::Display) -> BadRecord {
        BadRecord { cause, detail: detail.to_string() }
    }
}

/// What every sink does with a record it cannot send: count it in `bad_records`
/// and log it (once per cause per [`berrygw_core::log::WARN_EVERY`]). The caller
/// then acknowledges it out of the journal with the records around it, so a bad
/// record never stops the sink nor comes back after a restart.
pub fn set_aside(sink: &str, seq: Seq, bad: &BadRecord, counters: &SinkCounters, warn: &mut LogLimiter) {
    counters.bad_records.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Some(held) = warn.allow(bad.cause) {
        warn!(
            seq = seq.0,
            "{sink} sink: journal record set aside, it cannot be sent ({}): {bad}; {held} more like it since the last warning",
            bad.cause
        );
    }
}
