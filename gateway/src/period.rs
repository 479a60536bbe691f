//! Periodic duties that ride on the uplinks' own wake-ups (the stats, the report, the
//! availability ledger's checks, the status page's history) instead of waking the gateway
//! for themselves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// One 4.096 s slot of tokio's timer wheel and a little: a quiet timer this far past its due
/// time is dropped, whenever uplinks come, before the wheel moves it (a wake-up of its own).
pub const WHEEL_SLACK: Duration = Duration::from_millis(4_200);

/// The uplinks' wake-ups, as the periodic duties see them: the ingest calls [`Beat::tick`]
/// after each frame, and a duty's task is woken only once the duty is due, so an uplink
/// wakes no task but the ones on its own path. (Waking every duty at every append, as a
/// `watch` would, costs a task poll each per uplink: cold code at a field's 10/s.)
#[derive(Clone, Debug)]
pub struct Beat(Arc<BeatInner>);

#[derive(Debug)]
struct BeatInner {
    /// Times are milliseconds since this.
    base: Instant,
    /// The earliest due time of any armed duty (`u64::MAX`: none): the only thing a tick reads
    /// when nothing is due.
    earliest: AtomicU64,
    /// Every duty that rides on this beat; changed under the lock only.
    duties: Mutex<Vec<Arc<Slot>>>,
}

/// One duty's due time (`u64::MAX`: not armed) and the wake-up of its task.
#[derive(Debug)]
struct Slot {
    due: AtomicU64,
    wake: Notify,
}

impl Default for Beat {
    fn default() -> Beat {
        Beat(Arc::new(BeatInner {
            base: Instant::now(),
            earliest: AtomicU64::new(u64::MAX),
            duties: Mutex::new(Vec::new()),
        }))
    }
}

impl Beat {
    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.0.base).as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// The thread is awake for an uplink: wake the duties that are due.
    pub fn tick(&self) {
        let now = self.ms(Instant::now());
        if now < self.0.earliest.load(Ordering::Acquire) {
            return;
        }
        let duties = self.0.duties.lock().unwrap_or_else(|p| p.into_inner());
        let mut earliest = u64::MAX;
        for slot in duties.iter() {
            let due = slot.due.load(Ordering::Acquire);
            if due <= now {
                slot.due.store(u64::MAX, Ordering::Release);
                slot.wake.notify_one();
            } else {
                earliest = earliest.min(due);
            }
        }
        self.0.earliest.store(earliest, Ordering::Release);
    }

    fn join(&self) -> Arc<Slot> {
        let slot = Arc::new(Slot { due: AtomicU64::new(u64::MAX), wake: Notify::new() });
        self.0.duties.lock().unwrap_or_else(|p| p.into_inner()).push(slot.clone());
        slot
    }

    /// Arm `slot` for `due` (`None`: disarm). Under the lock, so that a tick's recomputed
    /// `earliest` never hides a due time armed meanwhile.
    fn arm(&self, slot: &Slot, due: Option<Instant>) {
        let _duties = self.0.duties.lock().unwrap_or_else(|p| p.into_inner());
        let due = due.map_or(u64::MAX, |at| self.ms(at));
        slot.due.store(due, Ordering::Release);
        self.0.earliest.fetch_min(due, Ordering::AcqRel);
    }
}

/// A periodic duty that rides on the uplinks' own wake-ups instead of waking the gateway for
/// itself. It is due `every` after it last ran, and runs in the first [`Beat::tick`] after
/// that (an uplink came in: the thread is awake anyway). With no traffic a timer runs it
/// `slack` later.
///
/// Why not a plain interval: tokio's timer wheel keeps a 30 s timer in 4.096 s slots and moves
/// it down a level at the start of its slot, then again 64 ms before it fires. Each move and
/// the firing are a wake-up of their own, about three per period, at a field's 10 uplinks/s
/// 0.01 context switches per uplink for each such duty (BENCHMARKS.md "Field rates"). Here the
/// quiet timer is at least one such slot past the due time, so under traffic it is dropped
/// before the wheel ever reaches it.
pub struct Period {
    every: Duration,
    slack: Duration,
    due: Instant,
    beat: Beat,
    slot: Arc<Slot>,
}

impl Period {
    /// Due `every` from now, woken by `beat` once due.
    pub fn new(every: Duration, beat: &Beat) -> Period {
        Period {
            every,
            // Past a slot of the wheel, or half a short period.
            slack: WHEEL_SLACK.min(every / 2),
            due: Instant::now() + every,
            beat: beat.clone(),
            slot: beat.join(),
        }
    }

    /// The same with a quiet timer `slack` past the due time, whatever the period.
    pub fn with_slack(mut self, slack: Duration) -> Period {
        self.slack = slack;
        self
    }

    /// Resolves when the duty should run, and counts the next period from then.
    pub async fn wait(&mut self) {
        let quiet = tokio::time::sleep_until(self.due + self.slack);
        tokio::pin!(quiet);
        self.beat.arm(&self.slot, Some(self.due));
        loop {
            tokio::select! {
                () = &mut quiet => break,
                // A wake-up left from an earlier period is passed over.
                () = self.slot.wake.notified() => if Instant::now() >= self.due { break },
            }
        }
        self.beat.arm(&self.slot, None);
        self.due = Instant::now() + self.every;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_period_runs_at_the_first_tick_once_due_and_on_its_own_when_quiet() {
        let every = Duration::from_secs(30);
        let beat = Beat::default();
        let mut period = Period::new(every, &beat);
        let start = Instant::now();
        // Ticks before the due time do not run it.
        let waiting = tokio::spawn(async move {
            period.wait().await;
            let first = Instant::now();
            period.wait().await;
            (first, Instant::now())
        });
        for _ in 1..=5 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            beat.tick();
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(!waiting.is_finished(), "ran before it was due");
        beat.tick();
        // Then no more ticks: the second period ends on the quiet timer.
        let (first, second) = waiting.await.unwrap();
        assert_eq!(first - start, Duration::from_secs(31));
        assert_eq!(second - first, every + Duration::from_millis(4_200));
    }

    #[tokio::test(start_paused = true)]
    async fn a_tick_wakes_only_the_duties_that_are_due() {
        let beat = Beat::default();
        let mut short = Period::new(Duration::from_secs(10), &beat).with_slack(Duration::from_secs(100));
        let mut long = Period::new(Duration::from_secs(60), &beat).with_slack(Duration::from_secs(100));
        let start = Instant::now();
        let runs = Arc::new(Mutex::new(Vec::new()));
        let (r1, r2) = (runs.clone(), runs.clone());
        let tasks = [
            tokio::spawn(async move {
                for _ in 0..6 {
                    short.wait().await;
                    r1.lock().unwrap().push(("short", Instant::now()));
                }
            }),
            tokio::spawn(async move {
                long.wait().await;
                r2.lock().unwrap().push(("long", Instant::now()));
            }),
        ];
        // A tick every 4 s: the short duty runs at the first tick 10 s after its last run.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(4)).await;
            beat.tick();
            tokio::task::yield_now().await;
        }
        for task in tasks {
            task.await.unwrap();
        }
        let mut runs: Vec<_> =
            runs.lock().unwrap().iter().map(|(n, at)| ((*at - start).as_secs(), *n)).collect();
        runs.sort();
        assert_eq!(
            runs,
            [
                (12, "short"),
                (24, "short"),
                (36, "short"),
                (48, "short"),
                (60, "long"),
                (60, "short"),
                (72, "short")
            ]
            .to_vec()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_period_without_ticks_runs_on_its_quiet_timer() {
        let mut period = Period::new(Duration::from_secs(2), &Beat::default());
        let start = tokio::time::Instant::now();
        period.wait().await;
        assert_eq!(tokio::time::Instant::now() - start, Duration::from_secs(3));
    }
}
