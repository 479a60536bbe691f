//! The just-in-time TX queue: downlinks wait here until shortly before their
//! time, then go to the concentrator (which holds one frame at a time). It
//! refuses frames that are too late, too early, or would overlap one already
//! queued or on the air. The clock is the concentrator counter: u32 µs that
//! wraps every ~71.6 minutes, so every comparison is made relative to "now"
//! (valid while frames lie less than ~35 minutes away, far beyond the
//! too-early limit). Pure Rust, no HAL: the owner thread feeds it counter
//! values.

/// Timing rules of the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JitLimits {
    /// A frame is handed to the HAL this long before its start; a frame that
    /// arrives with less time left is too late.
    pub lead_us: u32,
    /// The radio's ramp-up before the first preamble symbol (the HAL starts
    /// the TX that much earlier).
    pub start_delay_us: u32,
    /// Guard time kept free after every transmission.
    pub margin_us: u32,
    /// A frame further ahead than this is too early.
    pub max_advance_us: u32,
    /// Frames waiting at most.
    pub capacity: usize,
}

impl Default for JitLimits {
    /// Semtech's packet forwarder values (40 ms lead, 1.5 ms start delay,
    /// 1 ms margin, 32 frames), with a 30 s horizon: class A and C downlinks
    /// come at most a few seconds ahead.
    fn default() -> Self {
        JitLimits {
            lead_us: 40_000,
            start_delay_us: 1_500,
            margin_us: 1_000,
            max_advance_us: 30_000_000,
            capacity: 32,
        }
    }
}

/// When a queued frame is to go out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxWhen {
    /// As soon as possible.
    Immediately,
    /// When the concentrator counter reaches this value (µs).
    At(u32),
}

/// Why the queue refused a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JitRefusal {
    #[error("too late: {ahead_us} µs left, at least {lead_us} µs needed")]
    TooLate { ahead_us: i64, lead_us: u32 },
    #[error("too early: {ahead_us} µs ahead, at most {max_us} µs accepted")]
    TooEarly { ahead_us: i64, max_us: u32 },
    #[error("overlaps a frame already queued or on the air")]
    Collision,
    #[error("the queue holds {0} frames already")]
    QueueFull(usize),
}

/// A frame to hand to the HAL now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handover<T> {
    pub item: T,
    /// Counter value the transmission starts at.
    pub start: u32,
    /// Send in the HAL's immediate mode rather than at `start`.
    pub immediate: bool,
}

/// What `pop_due` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Due<T> {
    /// Hand this to the HAL now.
    Send(Handover<T>),
    /// Its time passed before it could be handed over (the owner thread was
    /// held up): dropped, never sent late.
    Missed(T),
}

#[derive(Clone, Debug)]
struct Entry<T> {
    start: u32,
    /// The concentrator is taken from here (hand-over) ...
    busy_from: u32,
    /// ... to here (end of transmission plus margin).
    busy_until: u32,
    immediate: bool,
    /// `None` once handed over; the entry stays until `busy_until` for collision checks.
    item: Option<T>,
}

/// The queue itself; `T` is whatever the caller hands to the HAL.
#[derive(Clone, Debug)]
pub struct JitQueue<T> {
    limits: JitLimits,
    entries: Vec<Entry<T>>,
}

/// Signed distance from `now` to `t` on the wrapping counter.
fn ahead(t: u32, now: u32) -> i64 {
    i64::from(t.wrapping_sub(now) as i32)
}

impl<T> JitQueue<T> {
    /// An empty queue.
    pub fn new(limits: JitLimits) -> JitQueue<T> {
        JitQueue { limits, entries: Vec::new() }
    }

    /// The queue's timing rules.
    pub fn limits(&self) -> JitLimits {
        self.limits
    }

    /// Frames waiting to be handed over.
    pub fn len(&self) -> usize {
        self.entries.iter().filter(|e| e.item.is_some()).count()
    }

    /// No frame waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `item`, on the air for `airtime_us`, at `when`; returns the
    /// counter value its transmission starts at.
    pub fn enqueue(&mut self, now: u32, when: TxWhen, airtime_us: u32, item: T) -> Result<u32, JitRefusal> {
        self.forget_finished(now);
        let l = self.limits;
        let (start, immediate) = match when {
            TxWhen::Immediately => (now.wrapping_add(l.start_delay_us), true),
            TxWhen::At(start) => {
                let ahead_us = ahead(start, now);
                if ahead_us < i64::from(l.lead_us) {
                    return Err(JitRefusal::TooLate { ahead_us, lead_us: l.lead_us });
                }
                if ahead_us > i64::from(l.max_advance_us) {
                    return Err(JitRefusal::TooEarly { ahead_us, max_us: l.max_advance_us });
                }
                (start, false)
            }
        };
        let busy_from =
            if immediate { now } else { start.wrapping_sub(l.lead_us).wrapping_sub(l.start_delay_us) };
        let busy_until = start.wrapping_add(airtime_us).wrapping_add(l.margin_us);
        let (from, until) = (ahead(busy_from, now), ahead(busy_until, now));
        if self.entries.iter().any(|e| from < ahead(e.busy_until, now) && ahead(e.busy_from, now) < until) {
            return Err(JitRefusal::Collision);
        }
        let waiting = self.len();
        if waiting >= l.capacity {
            return Err(JitRefusal::QueueFull(waiting));
        }
        self.entries.push(Entry { start, busy_from, busy_until, immediate, item: Some(item) });
        Ok(start)
    }

    /// The next frame to hand over at `now` (the earliest due), if any.
    pub fn pop_due(&mut self, now: u32) -> Option<Due<T>> {
        let l = self.limits;
        let index = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.item.is_some() && (e.immediate || ahead(e.start, now) <= i64::from(l.lead_us)))
            .min_by_key(|(_, e)| ahead(e.start, now))
            .map(|(i, _)| i)?;
        let entry = &mut self.entries[index];
        let item = entry.item.take()?;
        if !entry.immediate && ahead(entry.start, now) < i64::from(l.start_delay_us) {
            // Too close (or past) to start on time; the concentrator would wait a
            // whole counter wrap otherwise. It frees its slot.
            self.entries.swap_remove(index);
            return Some(Due::Missed(item));
        }
        Some(Due::Send(Handover { item, start: entry.start, immediate: entry.immediate }))
    }

    /// Empties the queue (the concentrator restarted: its counter, and so every
    /// queued time, is void); returns the frames that were never handed over.
    pub fn clear(&mut self) -> Vec<T> {
        self.entries.drain(..).filter_map(|e| e.item).collect()
    }

    fn forget_finished(&mut self, now: u32) {
        self.entries.retain(|e| e.item.is_some() || ahead(e.busy_until, now) > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u32 = 1_000;

    fn queue() -> JitQueue<&'static str> {
        JitQueue::new(JitLimits::default())
    }

    fn sent(due: Option<Due<&'static str>>) -> Option<Handover<&'static str>> {
        match due {
            Some(Due::Send(h)) => Some(h),
            _ => None,
        }
    }

    #[test]
    fn a_timed_frame_waits_until_its_lead_time() {
        let mut q = queue();
        assert_eq!(q.enqueue(0, TxWhen::At(1_000 * MS), 50 * MS, "rx1"), Ok(1_000 * MS));
        assert_eq!(q.pop_due(0), None);
        assert_eq!(q.pop_due(959 * MS), None, "41 ms before: not yet");
        let h = sent(q.pop_due(960 * MS));
        assert_eq!(h, Some(Handover { item: "rx1", start: 1_000 * MS, immediate: false }));
        assert!(q.is_empty());
        assert_eq!(q.pop_due(970 * MS), None, "handed over once");
    }

    #[test]
    fn an_immediate_frame_is_due_at_once() {
        let mut q = queue();
        assert_eq!(q.enqueue(5, TxWhen::Immediately, 50 * MS, "now"), Ok(5 + 1_500));
        let h = sent(q.pop_due(5));
        assert_eq!(h, Some(Handover { item: "now", start: 1_505, immediate: true }));
    }

    #[test]
    fn refuses_frames_inside_the_lead_time_or_in_the_past() {
        let mut q = queue();
        let now = 10_000 * MS;
        assert_eq!(
            q.enqueue(now, TxWhen::At(now + 39 * MS), MS, "x"),
            Err(JitRefusal::TooLate { ahead_us: 39_000, lead_us: 40_000 })
        );
        assert!(matches!(q.enqueue(now, TxWhen::At(now - MS), MS, "x"), Err(JitRefusal::TooLate { .. })));
        assert_eq!(q.enqueue(now, TxWhen::At(now + 40 * MS), MS, "x"), Ok(now + 40 * MS));
    }

    #[test]
    fn refuses_frames_beyond_the_horizon() {
        let mut q = queue();
        assert_eq!(
            q.enqueue(0, TxWhen::At(30_000_001), MS, "x"),
            Err(JitRefusal::TooEarly { ahead_us: 30_000_001, max_us: 30_000_000 })
        );
        assert_eq!(q.enqueue(0, TxWhen::At(30_000_000), MS, "x"), Ok(30_000_000));
    }

    #[test]
    fn refuses_a_frame_that_overlaps_one_queued() {
        let mut q = queue();
        assert!(q.enqueue(0, TxWhen::At(1_000 * MS), 100 * MS, "first").is_ok());
        // Starts while the first is on the air.
        assert_eq!(q.enqueue(0, TxWhen::At(1_050 * MS), 10 * MS, "x"), Err(JitRefusal::Collision));
        // Would be handed over (40 ms + 1.5 ms ahead) before the first ends (+1 ms margin).
        assert_eq!(q.enqueue(0, TxWhen::At(1_140 * MS), 10 * MS, "x"), Err(JitRefusal::Collision));
        // Ends (with margin) after the first is handed over; 8 ms shorter, before it.
        assert_eq!(q.enqueue(0, TxWhen::At(900 * MS), 58 * MS, "x"), Err(JitRefusal::Collision));
        assert_eq!(q.enqueue(0, TxWhen::At(900 * MS), 50 * MS, "before"), Ok(900 * MS));
        assert_eq!(q.enqueue(0, TxWhen::At(1_143 * MS), 10 * MS, "after"), Ok(1_143 * MS));
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn a_frame_on_the_air_still_blocks_its_slot() {
        let mut q = queue();
        assert!(q.enqueue(0, TxWhen::At(100 * MS), 500 * MS, "long").is_ok());
        assert!(sent(q.pop_due(60 * MS)).is_some());
        assert_eq!(q.enqueue(200 * MS, TxWhen::Immediately, MS, "x"), Err(JitRefusal::Collision));
        // Once it ended, the slot is free again.
        assert!(q.enqueue(602 * MS, TxWhen::Immediately, MS, "next").is_ok());
    }

    #[test]
    fn timing_survives_the_counter_wrapping() {
        let mut q = queue();
        let now = u32::MAX - 100 * MS;
        let start = now.wrapping_add(500 * MS); // past the wrap: a small number
        assert!(start < now);
        assert_eq!(q.enqueue(now, TxWhen::At(start), 10 * MS, "wrapped"), Ok(start));
        assert_eq!(q.pop_due(now.wrapping_add(400 * MS)), None);
        let h = sent(q.pop_due(start.wrapping_sub(30 * MS)));
        assert_eq!(h.map(|h| h.item), Some("wrapped"));
        // And a frame just before the wrap collides with one just after it.
        let mut q = queue();
        assert!(q.enqueue(now, TxWhen::At(u32::MAX - 10 * MS), 20 * MS, "a").is_ok());
        assert_eq!(q.enqueue(now, TxWhen::At(5 * MS), 10 * MS, "b"), Err(JitRefusal::Collision));
    }

    #[test]
    fn refuses_a_frame_when_full() {
        let mut q = JitQueue::new(JitLimits { capacity: 2, ..JitLimits::default() });
        assert!(q.enqueue(0, TxWhen::At(1_000 * MS), MS, "a").is_ok());
        assert!(q.enqueue(0, TxWhen::At(2_000 * MS), MS, "b").is_ok());
        assert_eq!(q.enqueue(0, TxWhen::At(3_000 * MS), MS, "c"), Err(JitRefusal::QueueFull(2)));
    }

    #[test]
    fn reports_a_missed_frame_before_handing_over_the_next() {
        let mut q = queue();
        assert!(q.enqueue(0, TxWhen::At(300 * MS), MS, "later").is_ok());
        assert!(q.enqueue(0, TxWhen::At(100 * MS), MS, "sooner").is_ok());
        assert_eq!(q.pop_due(290 * MS), Some(Due::Missed("sooner")));
        assert_eq!(sent(q.pop_due(290 * MS)).map(|h| h.item), Some("later"));
    }

    #[test]
    fn a_frame_whose_time_passed_is_dropped_not_sent_late() {
        let mut q = queue();
        assert!(q.enqueue(0, TxWhen::At(100 * MS), MS, "stale").is_ok());
        assert_eq!(q.pop_due(99 * MS), Some(Due::Missed("stale")));
        assert!(q.is_empty());
        assert!(q.enqueue(99 * MS, TxWhen::Immediately, MS, "fresh").is_ok(), "its slot is free");
    }

    #[test]
    fn clearing_returns_the_frames_never_handed_over() {
        let mut q = queue();
        assert!(q.enqueue(0, TxWhen::At(100 * MS), MS, "gone").is_ok());
        assert!(q.enqueue(0, TxWhen::At(500 * MS), MS, "waiting").is_ok());
        assert!(sent(q.pop_due(70 * MS)).is_some());
        assert_eq!(q.clear(), vec!["waiting"]);
        assert!(q.enqueue(70 * MS, TxWhen::Immediately, MS, "x").is_ok(), "nothing blocks after a clear");
    }
}
