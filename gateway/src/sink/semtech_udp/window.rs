//! The datagrams in flight: PUSH_DATA waiting for its PUSH_ACK, their
//! retransmission times, and how far the journal may be acknowledged.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::journal::Seq;
use crate::sink::pace::ack_point;

/// PUSH_DATA datagrams of this socket that wait for their PUSH_ACK, in send
/// (= journal) order. The journal may be acknowledged up to the last record of
/// the longest fully acknowledged prefix, never past an unacknowledged datagram.
#[derive(Default)]
pub(super) struct PushWindow {
    entries: VecDeque<Sent>,
    /// Highest seq taken into any datagram of this session.
    highest: Seq,
}

/// One PUSH_DATA of this socket (without a token: records set aside, never sent).
struct Sent {
    /// `None` for records that were skipped, not sent.
    token: Option<u16>,
    bytes: Vec<u8>,
    /// Lowest and highest seq it carries (pacing lets other devices' records between).
    seqs: (Seq, Seq),
    records: u64,
    acked: bool,
    retries: u32,
    retry_at: Instant,
}

impl PushWindow {
    /// Datagrams waiting for their PUSH_ACK (acknowledged ones behind an older waiting
    /// one stay in `entries` for the ack point, but no longer take a place in the window).
    pub(super) fn len(&self) -> usize {
        self.entries.iter().filter(|e| !e.acked).count()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn push(
        &mut self,
        token: Option<u16>,
        bytes: Vec<u8>,
        seqs: (Seq, Seq),
        records: u64,
        retry_at: Instant,
    ) {
        let acked = token.is_none();
        self.highest = self.highest.max(seqs.1);
        self.entries.push_back(Sent { token, bytes, seqs, records, acked, retries: 0, retry_at });
    }

    /// A token no waiting datagram uses.
    pub(super) fn fresh_token(&self) -> u16 {
        loop {
            let token = rand::random();
            if !self.entries.iter().any(|e| e.token == Some(token) && !e.acked) {
                return token;
            }
        }
    }

    /// PUSH_ACK for `token`: how many records that datagram carried, if it was waiting.
    pub(super) fn ack(&mut self, token: u16) -> Option<u64> {
        let e = self.entries.iter_mut().find(|e| e.token == Some(token) && !e.acked)?;
        e.acked = true;
        e.bytes = Vec::new();
        Some(e.records)
    }

    /// Drop the acknowledged prefix; the journal may be acked up to the returned seq: never
    /// past a datagram still waiting for its PUSH_ACK nor a record not yet sent (`unsent`).
    pub(super) fn take_ack_point(&mut self, unsent: Option<Seq>) -> Seq {
        while self.entries.front().is_some_and(|e| e.acked) {
            self.entries.pop_front();
        }
        let waiting = self.entries.iter().filter(|e| !e.acked).map(|e| e.seqs.0).min();
        ack_point(self.highest, waiting, unsent)
    }

    pub(super) fn next_retry(&self) -> Option<Instant> {
        self.entries.iter().filter(|e| !e.acked).map(|e| e.retry_at).min()
    }

    /// The datagrams to send again now; each waits twice as long as before next time.
    pub(super) fn due(&mut self, now: Instant, first: Duration, max: Duration) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for e in self.entries.iter_mut().filter(|e| !e.acked && e.retry_at <= now) {
            e.retries = e.retries.saturating_add(1);
            let wait = first.saturating_mul(2u32.saturating_pow(e.retries.min(16))).min(max);
            e.retry_at = now + wait;
            out.push(e.bytes.clone());
        }
        out
    }
}
