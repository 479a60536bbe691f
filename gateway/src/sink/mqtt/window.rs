//! The publishes of one connection that wait for their PUBACK, and how far the
//! journal may be acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::journal::Seq;
use crate::sink::pace::ack_point;

/// Publishes of this connection that wait for their PUBACK.
#[derive(Default)]
pub(super) struct PubackWindow {
    /// Every publish awaiting its PUBACK, by packet id: its journal seq, or None for
    /// state, identity, health and downlink answers.
    by_pkid: HashMap<u16, Option<u64>>,
    /// Journal seqs awaiting PUBACK, with when they were published.
    seqs: BTreeMap<u64, Instant>,
    highest_sent: u64,
}

/// A PUBACK that acknowledged a journal record.
#[derive(Debug, PartialEq)]
pub(super) struct Acked {
    /// Everything up to here is acknowledged (the journal's new ack point if it moved).
    pub(super) up_to: Seq,
    /// Publish to PUBACK of this record.
    pub(super) latency: Duration,
}

impl PubackWindow {
    /// The journal is acknowledged up to `acked` already: nothing at or below it is sent.
    pub(super) fn resume_after(&mut self, acked: Seq) {
        self.highest_sent = acked.0;
    }

    /// Journal records awaiting their PUBACK.
    pub(super) fn waiting(&self) -> usize {
        self.seqs.len()
    }

    /// A record set aside, not published: it leaves the journal with the records around it.
    pub(super) fn skipped(&mut self, seq: Seq) {
        self.highest_sent = self.highest_sent.max(seq.0);
    }

    /// How far the journal may be acknowledged: never past a record awaiting its PUBACK
    /// nor one not yet published (`unsent`).
    pub(super) fn ack_point(&self, unsent: Option<Seq>) -> Seq {
        ack_point(Seq(self.highest_sent), self.oldest(), unsent)
    }

    /// The oldest journal record awaiting its PUBACK.
    pub(super) fn oldest(&self) -> Option<Seq> {
        self.seqs.first_key_value().map(|(seq, _)| Seq(*seq))
    }

    /// Publishes of any kind awaiting their PUBACK.
    pub(super) fn in_flight(&self) -> usize {
        self.by_pkid.len()
    }

    /// When the oldest journal record awaiting its PUBACK was published.
    pub(super) fn oldest_sent_at(&self) -> Option<Instant> {
        self.seqs.first_key_value().map(|(_, at)| *at)
    }

    /// Published with packet id `pkid`: journal record `tag`, or something else (None).
    pub(super) fn sent(&mut self, pkid: u16, tag: Option<u64>) {
        self.by_pkid.insert(pkid, tag);
        if let Some(seq) = tag {
            self.seqs.insert(seq, Instant::now());
            self.highest_sent = self.highest_sent.max(seq);
        }
    }

    /// PUBACK for `pkid`: if it acknowledged a journal record, the seq up to which
    /// everything is acknowledged and how long this one took.
    pub(super) fn acked(&mut self, pkid: u16) -> Option<Acked> {
        let seq = self.by_pkid.remove(&pkid)??;
        let latency = self.seqs.remove(&seq).map(|at| at.elapsed()).unwrap_or_default();
        let up_to = match self.seqs.first_key_value() {
            Some((oldest, _)) => oldest - 1,
            None => self.highest_sent,
        };
        Some(Acked { up_to: Seq(up_to), latency })
    }
}
