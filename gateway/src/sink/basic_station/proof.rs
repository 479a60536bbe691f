//! When a record sent to a Basics Station LNS may leave the journal.
//!
//! Station's protocol acknowledges nothing. So after what it sent, the sink sends a
//! `timesync` request; the LNS answers on the same WebSocket, which it reads in order, so
//! its answer proves that it read everything sent before the request. The records sent
//! before a request are acknowledged when the answer comes back. If the socket dies first,
//! they were not proven, and the next socket sends them again from the journal's ack point
//! (at least once, in order). An answer from an earlier socket proves nothing.
//!
//! Requests are told apart by their `txtime` (the LNS echoes it): each is at least 1 ms
//! after the one before, and an answer matches the request within half a millisecond.

use std::collections::VecDeque;
use std::time::Instant;

use crate::journal::Seq;

/// Requests in flight at most; past it, sending waits for an answer.
pub const MAX_PROBES: usize = 8;

/// The records sent and not yet proven read, and the `timesync` requests in flight.
#[derive(Debug, Default)]
pub struct Proof {
    /// The highest seq sent on this socket.
    sent: Option<Seq>,
    /// The highest seq a request in flight or answered covers.
    covered: Option<Seq>,
    /// Requests in flight: their `txtime`, the highest seq sent before them, when sent.
    probes: VecDeque<(f64, Seq, Instant)>,
    last_txtime: f64,
    /// The highest seq an answer proved read.
    proven: Option<Seq>,
}

impl Proof {
    /// `seq` went out on the socket.
    pub fn sent(&mut self, seq: Seq) {
        self.sent = Some(self.sent.map_or(seq, |s| s.max(seq)));
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.probes.len()
    }

    /// Whether something sent is not proven read yet.
    pub fn unproven(&self) -> bool {
        self.sent.is_some_and(|s| self.proven.is_none_or(|p| p < s))
    }

    /// When the oldest request still unanswered was sent.
    pub fn waiting_since(&self) -> Option<Instant> {
        self.probes.front().map(|(_, _, at)| *at)
    }

    /// Nothing unproven and nothing in flight.
    pub fn is_idle(&self) -> bool {
        !self.unproven() && self.probes.is_empty()
    }

    /// The `txtime` of a request that only checks the link (it proves nothing new).
    pub fn ping(&mut self, now: f64) -> f64 {
        let txtime = now.max(self.last_txtime + 0.001);
        self.last_txtime = txtime;
        let up_to = self.covered.or(self.proven).unwrap_or(Seq(0));
        self.probes.push_back((txtime, up_to, Instant::now()));
        txtime
    }

    /// Whether more may be sent before an answer comes.
    pub fn may_send(&self) -> bool {
        self.probes.len() < MAX_PROBES
    }

    /// The `txtime` of a request to send now (`now`: the gateway's clock, seconds), if
    /// something was sent since the last request.
    pub fn probe(&mut self, now: f64) -> Option<f64> {
        let sent = self.sent?;
        if self.covered.is_some_and(|c| c >= sent) || !self.may_send() {
            return None;
        }
        let txtime = now.max(self.last_txtime + 0.001);
        self.last_txtime = txtime;
        self.probes.push_back((txtime, sent, Instant::now()));
        self.covered = Some(sent);
        Some(txtime)
    }

    /// The LNS answered the request sent at `txtime`: the seq every record up to which may
    /// leave the journal (`None`: not a request of this socket).
    pub fn answered(&mut self, txtime: f64) -> Option<Seq> {
        let i = self.probes.iter().position(|(t, _, _)| (t - txtime).abs() < 0.0005)?;
        // Answers come in order; one lost means the ones before are proven by this one too.
        let (_, up_to, _) = self.probes.drain(..=i).next_back()?;
        self.proven = Some(self.proven.map_or(up_to, |p| p.max(up_to)));
        Some(up_to)
    }

    /// The socket is gone: nothing in flight proves anything any more.
    pub fn reset(&mut self) {
        *self = Proof { last_txtime: self.last_txtime, ..Proof::default() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_proven_read_by_the_answer_to_a_timesync_sent_after_them() {
        let mut p = Proof::default();
        assert_eq!(p.probe(100.0), None, "nothing sent, nothing to prove");
        for s in 1..=3 {
            p.sent(Seq(s));
        }
        let a = p.probe(100.0).expect("a request");
        assert_eq!(p.probe(100.0), None, "already covered");
        p.sent(Seq(4));
        p.sent(Seq(5));
        let b = p.probe(100.0).expect("a second request");
        assert!(b > a, "each request has its own txtime");
        assert_eq!(p.answered(a), Some(Seq(3)));
        assert_eq!(p.answered(a), None, "once");
        assert_eq!(p.answered(12345.0), None, "not ours");
        assert_eq!(p.answered(b), Some(Seq(5)));
    }

    #[test]
    fn a_socket_that_dies_between_send_and_proof_proves_nothing() {
        let mut p = Proof::default();
        p.sent(Seq(1));
        let a = p.probe(5.0).unwrap();
        p.reset();
        // The old socket's answer does not count; the next socket sends 1 again.
        assert_eq!(p.answered(a), None);
        p.sent(Seq(1));
        let b = p.probe(5.0).unwrap();
        assert!(b > a);
        assert_eq!(p.answered(b), Some(Seq(1)));
    }

    #[test]
    fn a_later_answer_proves_the_earlier_requests_too_and_requests_are_bounded() {
        let mut p = Proof::default();
        let mut probes = Vec::new();
        for s in 1..=MAX_PROBES as u64 {
            p.sent(Seq(s));
            probes.push(p.probe(1.0).unwrap());
        }
        assert!(!p.may_send());
        p.sent(Seq(99));
        assert_eq!(p.probe(1.0), None, "bounded");
        assert_eq!(p.answered(probes[2]), Some(Seq(3)));
        assert!(p.may_send());
        assert_eq!(p.answered(probes[1]), None, "proven by the later one already");
    }
}
