//! Replay pacing: how fast a sink lets a backlog out, so that the network server
//! accepts all of it.
//!
//! A network server handles each uplink in its own task after a short deduplication
//! wait (ChirpStack: 200 ms), then checks that the device's frame counter grew. A
//! device's backlog sent in one burst puts hundreds of its frames in flight at once:
//! a later counter commits first and every earlier one is refused. So a late uplink
//! (received more than [`LATE_AFTER`] ago: a backlog) leaves at least `device_gap`
//! after the previous uplink of its device, and late uplinks leave at most `rate` per
//! second overall. Devices drain side by side; each device's uplinks stay in order.
//! Live traffic is not slowed: a live uplink only keeps the spacing it was received
//! with from its device's previous one (at most `device_gap`), which a real device,
//! seconds apart by duty cycle, always has; but a device's live uplinks wait behind its
//! own backlog until that has drained (their downlink windows pass meanwhile). A backlog
//! catches up with its device as long as `device_gap` is shorter than the device's
//! interval. Records that are not
//! uplinks (gateway stats) are never held.
//!
//! The pacer holds records taken from the journal and not yet sent; the sink must not
//! acknowledge the journal past the oldest of them ([`Pacer::oldest`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::journal::{Record, Seq};

/// Default least time between two replayed uplinks of one device (BENCHMARKS.md, "Replay").
pub const DEFAULT_REPLAY_GAP_MS: u64 = 500;
/// Default most replayed uplinks per second, all devices together.
pub const DEFAULT_REPLAY_RATE: u32 = 50;

/// How far ahead of the oldest held record the pacer looks for one it may send.
pub const LOOKAHEAD: usize = 512;

/// An uplink received longer ago than this is late (part of a backlog) and paced in full.
pub const LATE_AFTER: Duration = Duration::from_secs(2);

/// Pacing settings of one sink; both zero: no pacing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PaceSettings {
    /// Least time between two uplinks of one device.
    pub device_gap: Duration,
    /// Most uplinks per second overall (0: no limit).
    pub rate: u32,
}

impl PaceSettings {
    /// No pacing at all: records leave as fast as the connection takes them.
    pub const OFF: PaceSettings = PaceSettings { device_gap: Duration::ZERO, rate: 0 };

    fn is_off(&self) -> bool {
        self.device_gap.is_zero() && self.rate == 0
    }

    fn global_gap(&self) -> Duration {
        if self.rate == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(1) / self.rate
        }
    }
}

/// Who sent an uplink: what a network server keeps one frame counter (or nonce) for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sender {
    /// A data uplink's DevAddr.
    DevAddr(u32),
    /// A JoinRequest's (or rejoin's) DevEUI.
    DevEui(u64),
}

/// What the pacer knows of a held uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Uplink {
    sender: Sender,
    /// When the radio received it, ms since the Unix epoch.
    received_ms: i64,
}

struct Held {
    uplink: Option<Uplink>,
    record: Record,
}

/// When a record was last let out, and when it had been received.
#[derive(Clone, Copy)]
struct Last {
    sent: Instant,
    received_ms: i64,
}

impl Last {
    /// Earliest time the next uplink, received at `received_ms`, may follow this one: a
    /// late one `gap` after, a live one no closer than it was received (at most `gap`).
    fn next_at(&self, received_ms: i64, late: bool, gap: Duration) -> Instant {
        if late {
            return self.sent + gap;
        }
        let apart = Duration::from_millis(u64::try_from(received_ms - self.received_ms).unwrap_or(0));
        self.sent + gap.min(apart)
    }
}

/// What [`Pacer::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// The record at this index may go now.
    Ready(usize),
    /// Nothing may go before this time.
    Wait(Instant),
    /// Nothing held.
    Empty,
}

/// Records taken from a sink's journal and waiting for their turn, in journal order.
pub struct Pacer {
    settings: PaceSettings,
    sender_of: fn(&Record) -> Option<Sender>,
    held: VecDeque<Held>,
    devices: HashMap<Sender, Last>,
    any: Option<Last>,
}

impl Pacer {
    /// `sender_of` tells uplinks (paced) from other records (not paced).
    pub fn new(settings: PaceSettings, sender_of: fn(&Record) -> Option<Sender>) -> Pacer {
        Pacer { settings, sender_of, held: VecDeque::new(), devices: HashMap::new(), any: None }
    }

    /// Take records from the front of the sink's read-ahead, up to [`LOOKAHEAD`] held.
    pub fn fill(&mut self, from: &mut VecDeque<Record>) {
        let room = if self.settings.is_off() { 1 } else { LOOKAHEAD };
        while self.held.len() < room {
            let Some(record) = from.pop_front() else { break };
            let uplink = if self.settings.is_off() {
                None
            } else {
                (self.sender_of)(&record).map(|sender| Uplink { sender, received_ms: record.received_at_ms })
            };
            self.held.push_back(Held { uplink, record });
        }
    }

    /// The oldest record held: the journal may not be acknowledged past it.
    pub fn oldest(&self) -> Option<Seq> {
        self.held.front().map(|h| h.record.seq)
    }

    /// The oldest record taken from the journal and not yet sent: held here, or still in the
    /// sink's read-ahead (`fresh`).
    pub fn unsent(&self, fresh: &VecDeque<Record>) -> Option<Seq> {
        self.oldest().or_else(|| fresh.front().map(|r| r.seq))
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The first held record that may go at `now` (`now_ms` on the wall clock): not an
    /// uplink, or an uplink whose device has nothing older held and whose spacing is kept.
    pub fn next(&self, now: Instant, now_ms: i64) -> Next {
        let mut wait: Option<Instant> = None;
        let mut blocked: HashSet<Sender> = HashSet::new();
        let global_gap = self.settings.global_gap();
        for (i, h) in self.held.iter().enumerate() {
            let Some(up) = h.uplink else { return Next::Ready(i) };
            if blocked.contains(&up.sender) {
                continue;
            }
            let late = now_ms.saturating_sub(up.received_ms) > LATE_AFTER.as_millis() as i64;
            let mut at = match self.any {
                Some(last) if late => last.sent + global_gap,
                _ => now,
            };
            if let Some(last) = self.devices.get(&up.sender) {
                at = at.max(last.next_at(up.received_ms, late, self.settings.device_gap));
            }
            if at <= now {
                return Next::Ready(i);
            }
            wait = Some(wait.map_or(at, |w| w.min(at)));
            blocked.insert(up.sender);
        }
        wait.map_or(Next::Empty, Next::Wait)
    }

    /// The record at `i` (from [`Pacer::next`]), to look at before taking it.
    pub fn peek(&self, i: usize) -> Option<&Record> {
        self.held.get(i).map(|h| &h.record)
    }

    /// Take the record at `i` out, as sent at `now`.
    pub fn take(&mut self, i: usize, now: Instant) -> Option<Record> {
        let h = self.held.remove(i)?;
        if let Some(up) = h.uplink {
            let last = Last { sent: now, received_ms: up.received_ms };
            self.devices.insert(up.sender, last);
            self.any = Some(last);
            // Devices quiet for longer than the gap need no memory.
            if self.devices.len() > 4 * LOOKAHEAD {
                let gap = self.settings.device_gap;
                self.devices.retain(|_, l| now.saturating_duration_since(l.sent) < gap);
            }
        }
        Some(h.record)
    }
}

/// The journal's new ack point: everything sent and acknowledged, never past a record
/// still in flight (`oldest_in_flight`) or held back (`oldest_unsent`).
pub fn ack_point(highest_sent: Seq, oldest_in_flight: Option<Seq>, oldest_unsent: Option<Seq>) -> Seq {
    [oldest_in_flight, oldest_unsent]
        .into_iter()
        .flatten()
        .map(|s| Seq(s.0.saturating_sub(1)))
        .fold(highest_sent, Seq::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records carry their sender in the kind byte (0: not an uplink), for the tests.
    fn uplink_of(r: &Record) -> Option<Sender> {
        (r.kind != 0).then_some(Sender::DevAddr(u32::from(r.kind)))
    }

    fn rec(seq: u64, device: u8, received_at_ms: i64) -> Record {
        Record { seq: Seq(seq), kind: device, received_at_ms, payload: Vec::new() }
    }

    const GAP: Duration = Duration::from_millis(500);
    /// The wall clock in the tests: records received before `NOW_MS - 2000` are late.
    const NOW_MS: i64 = 10_000_000;

    fn pacer(rate: u32) -> Pacer {
        Pacer::new(PaceSettings { device_gap: GAP, rate }, uplink_of)
    }

    fn take_ready(p: &mut Pacer, now: Instant) -> Option<u64> {
        match p.next(now, NOW_MS) {
            Next::Ready(i) => p.take(i, now).map(|r| r.seq.0),
            _ => None,
        }
    }

    #[test]
    fn a_backlog_leaves_one_uplink_per_device_per_gap_devices_side_by_side_each_in_order() {
        let mut p = pacer(0);
        // Two devices, three uplinks each, received 10 s apart (an outage's backlog).
        let mut q: VecDeque<Record> =
            (0..6).map(|i| rec(i + 1, 1 + (i % 2) as u8, 1_000_000 + i as i64 * 10_000)).collect();
        p.fill(&mut q);
        let t0 = Instant::now();
        assert_eq!(take_ready(&mut p, t0), Some(1));
        assert_eq!(take_ready(&mut p, t0), Some(2), "the other device goes at once");
        assert_eq!(p.next(t0, NOW_MS), Next::Wait(t0 + GAP), "both devices wait out their gap");
        assert_eq!(p.oldest(), Some(Seq(3)));
        let t1 = t0 + GAP;
        assert_eq!(take_ready(&mut p, t1), Some(3));
        assert_eq!(take_ready(&mut p, t1), Some(4));
        assert_eq!(take_ready(&mut p, t1), None);
        let t2 = t1 + GAP;
        assert_eq!((take_ready(&mut p, t2), take_ready(&mut p, t2)), (Some(5), Some(6)));
        assert_eq!(p.next(t2, NOW_MS), Next::Empty);
    }

    #[test]
    fn a_device_waits_behind_its_own_older_uplink_while_others_pass() {
        let mut p = pacer(0);
        let mut q: VecDeque<Record> =
            [rec(1, 1, 0), rec(2, 1, 10_000), rec(3, 2, 20_000), rec(4, 1, 30_000)].into();
        p.fill(&mut q);
        let t0 = Instant::now();
        assert_eq!(take_ready(&mut p, t0), Some(1));
        assert_eq!(take_ready(&mut p, t0), Some(3), "device 2 passes device 1's held uplinks");
        assert_eq!(take_ready(&mut p, t0), None, "seq 4 never overtakes seq 2 of its own device");
        assert_eq!(take_ready(&mut p, t0 + GAP), Some(2));
        assert_eq!(take_ready(&mut p, t0 + GAP * 2), Some(4));
    }

    #[test]
    fn live_uplinks_go_as_far_apart_as_they_were_received() {
        let mut p = pacer(0);
        // One device's live uplinks received 5 ms apart (a test load, not a real device): not held to the gap.
        let mut q: VecDeque<Record> = [rec(1, 1, NOW_MS - 10), rec(2, 1, NOW_MS - 5)].into();
        p.fill(&mut q);
        let t0 = Instant::now();
        assert_eq!(take_ready(&mut p, t0), Some(1));
        assert_eq!(p.next(t0, NOW_MS), Next::Wait(t0 + Duration::from_millis(5)));
        assert_eq!(take_ready(&mut p, t0 + Duration::from_millis(5)), Some(2));
    }

    #[test]
    fn a_live_uplink_behind_its_device_s_backlog_keeps_the_gap() {
        let mut p = pacer(0);
        let mut q: VecDeque<Record> = [rec(1, 1, 1_000), rec(2, 1, NOW_MS - 1)].into();
        p.fill(&mut q);
        let t0 = Instant::now();
        assert_eq!(take_ready(&mut p, t0), Some(1));
        assert_eq!(p.next(t0, NOW_MS), Next::Wait(t0 + GAP), "received long after: the whole gap");
    }

    #[test]
    fn the_overall_rate_spaces_a_backlog_of_many_devices() {
        let mut p = pacer(10);
        let mut q: VecDeque<Record> = (1..=3).map(|i| rec(i, i as u8, i as i64 * 60_000)).collect();
        p.fill(&mut q);
        let t0 = Instant::now();
        assert_eq!(take_ready(&mut p, t0), Some(1));
        assert_eq!(p.next(t0, NOW_MS), Next::Wait(t0 + Duration::from_millis(100)), "10/s: 100 ms apart");
        assert_eq!(take_ready(&mut p, t0 + Duration::from_millis(100)), Some(2));
    }

    #[test]
    fn records_that_are_not_uplinks_are_never_held() {
        let mut p = pacer(1);
        let mut q: VecDeque<Record> = [rec(1, 1, 0), rec(2, 1, 10_000), rec(3, 0, 0)].into();
        p.fill(&mut q);
        let t0 = Instant::now();
        assert_eq!(take_ready(&mut p, t0), Some(1));
        assert_eq!(take_ready(&mut p, t0), Some(3), "stats pass a held uplink");
        assert_eq!(p.oldest(), Some(Seq(2)));
    }

    #[test]
    fn pacing_off_passes_records_straight_through() {
        let mut p = Pacer::new(PaceSettings::OFF, |_| panic!("no decoding when pacing is off"));
        let mut q: VecDeque<Record> = [rec(1, 1, 0), rec(2, 1, 0)].into();
        p.fill(&mut q);
        let now = Instant::now();
        assert_eq!(take_ready(&mut p, now), Some(1));
        p.fill(&mut q);
        assert_eq!(take_ready(&mut p, now), Some(2));
    }

    #[test]
    fn the_ack_point_stops_before_anything_in_flight_or_held() {
        assert_eq!(ack_point(Seq(9), None, None), Seq(9));
        assert_eq!(ack_point(Seq(9), Some(Seq(5)), None), Seq(4));
        assert_eq!(ack_point(Seq(9), Some(Seq(5)), Some(Seq(3))), Seq(2));
        assert_eq!(ack_point(Seq(9), None, Some(Seq(12))), Seq(9), "records not yet sent at all");
    }
}
