//! Periodic duties that ride on the uplinks' own wake-ups (the stats, the report, the
//! availability ledger's checks) instead of waking the gateway for themselves.

use std::time::Duration;

use tokio::sync::watch;

use crate::journal::Seq;

/// A periodic duty that rides on the uplinks' own wake-ups instead of waking the gateway for
/// itself. It is due `every` after it last ran, and runs in the first wake-up after that in
/// which a record is appended (an uplink came in: the thread is awake anyway). With no
/// traffic a timer runs it `quiet_slack` later.
///
/// Why not a plain interval: tokio's timer wheel keeps a 30 s timer in 4.096 s slots and moves
/// it down a level at the start of its slot, then again 64 ms before it fires. Each move and
/// the firing are a wake-up of their own, about three per period, at a field's 10 uplinks/s
/// 0.01 context switches per uplink for each such duty (BENCHMARKS.md "Field rates"). Here the
/// quiet timer is at least one such slot past the due time, so under traffic it is dropped
/// before the wheel ever reaches it.
pub struct Period {
    every: Duration,
    due: tokio::time::Instant,
    traffic: Option<watch::Receiver<Seq>>,
}

impl Period {
    /// Due `every` from now; `traffic` changes at each append (`Journal::watch_appended`).
    pub fn new(every: Duration, traffic: Option<watch::Receiver<Seq>>) -> Period {
        Period { every, due: tokio::time::Instant::now() + every, traffic }
    }

    /// How long past its due time a duty waits for traffic: one 4.096 s slot of the wheel
    /// and a little, or a quarter of a short period.
    fn quiet_slack(&self) -> Duration {
        Duration::from_millis(4_200).min(self.every / 4)
    }

    /// Resolves when the duty should run, and counts the next period from then.
    pub async fn wait(&mut self) {
        let quiet = tokio::time::sleep_until(self.due + self.quiet_slack());
        tokio::pin!(quiet);
        loop {
            tokio::select! {
                () = &mut quiet => break,
                appended = appended(&mut self.traffic) => {
                    if !appended {
                        self.traffic = None;
                    } else if tokio::time::Instant::now() >= self.due {
                        break;
                    }
                }
            }
        }
        self.due = tokio::time::Instant::now() + self.every;
    }
}

/// Resolves at the next append: true, or false once the journal is gone. Never without one.
async fn appended(traffic: &mut Option<watch::Receiver<Seq>>) -> bool {
    match traffic {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_period_runs_at_the_first_append_once_due_and_on_its_own_when_quiet() {
        let every = Duration::from_secs(30);
        let (tx, rx) = watch::channel(Seq(0));
        let mut period = Period::new(every, Some(rx));
        let start = tokio::time::Instant::now();
        // Appends before the due time do not run it.
        let waiting = tokio::spawn(async move {
            period.wait().await;
            let first = tokio::time::Instant::now();
            period.wait().await;
            (first, tokio::time::Instant::now())
        });
        for n in 1..=5 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            tx.send_replace(Seq(n));
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(!waiting.is_finished(), "ran before it was due");
        tx.send_replace(Seq(6));
        // Then nothing more is appended: the second period ends on the quiet timer.
        let (first, second) = waiting.await.unwrap();
        assert_eq!(first - start, Duration::from_secs(31));
        assert_eq!(second - first, every + Duration::from_millis(4_200));
    }

    #[tokio::test(start_paused = true)]
    async fn a_period_without_a_journal_is_a_timer() {
        let mut period = Period::new(Duration::from_secs(2), None);
        let start = tokio::time::Instant::now();
        period.wait().await;
        assert_eq!(tokio::time::Instant::now() - start, Duration::from_millis(2_500));
    }
}
