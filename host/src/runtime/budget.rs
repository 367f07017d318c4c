//! A target's request budget (`[targets.X.budget]`): plugin calls per second, shared by the
//! reconciler and client calls, and a pause after the backend says it is throttling (a
//! `throttled` answer, which the capabilities give for AWS's and Kubernetes' throttling). Each
//! target has its own, so one that is throttled (or simply busy) only ever slows itself.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::BudgetConfig;

const FIRST_PAUSE: Duration = Duration::from_millis(500);
const MAX_PAUSE: Duration = Duration::from_secs(30);

pub struct Budget {
    limiter: DefaultDirectRateLimiter,
    pause: Mutex<Pause>,
    /// Wakes the calls waiting behind a probe once it has its answer.
    answered: Notify,
}

#[derive(Default)]
struct Pause {
    until: Option<Instant>,
    next: Duration,
    /// The deadline of the call sent to see whether the backend still throttles, while it is
    /// out; the others wait for its answer instead of all hitting the backend at once.
    probe: Option<Instant>,
}

/// What a call has to wait for before it may go.
enum Wait {
    Pause(Instant),
    Probe(Instant),
}

impl Budget {
    pub fn new(c: &BudgetConfig) -> Self {
        let burst = NonZeroU32::new(c.burst.max(1)).expect("at least 1");
        let period = Duration::from_secs_f64(1.0 / c.requests_per_second);
        let quota = Quota::with_period(period)
            .expect("a positive rate (checked with the config)")
            .allow_burst(burst);
        Self {
            limiter: RateLimiter::direct(quota),
            pause: Mutex::new(Pause::default()),
            answered: Notify::new(),
        }
    }

    /// Waits for this call's share of the budget; false when that would pass `deadline`.
    /// After a pause, one call goes first and the rest wait for its answer: a target that is
    /// still throttling then costs its backend one request per pause, not one per caller.
    /// `answer_by` is when the call, once admitted, reports at the latest (its own deadline):
    /// as the probe, the others wait no longer than that for it.
    pub async fn admit(&self, deadline: Instant, answer_by: Instant) -> bool {
        loop {
            let answered = self.answered.notified();
            tokio::pin!(answered);
            let wait = {
                let mut p = self.pause.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                match (p.until, p.probe) {
                    (None, _) => break,
                    (Some(until), _) if until > now => Wait::Pause(until),
                    (Some(_), Some(probe)) if probe > now => {
                        // Registered before the lock is let go, so the answer cannot slip by.
                        answered.as_mut().enable();
                        Wait::Probe(probe)
                    }
                    (Some(_), _) => {
                        p.probe = Some(answer_by);
                        break;
                    }
                }
            };
            match wait {
                Wait::Pause(until) => {
                    if until > deadline {
                        return false;
                    }
                    tokio::time::sleep_until(until).await;
                }
                Wait::Probe(probe) => {
                    // Its answer, or its deadline if it never reports, whichever comes first.
                    if tokio::time::timeout_at(probe.min(deadline), answered)
                        .await
                        .is_err()
                        && deadline <= Instant::now()
                    {
                        return false;
                    }
                }
            }
        }
        tokio::time::timeout_at(deadline, self.limiter.until_ready())
            .await
            .is_ok()
    }

    /// The backend answered that it is throttling: every call of this target waits, longer
    /// each time it happens again, until one gets an answer that is not throttling.
    pub fn throttled(&self) {
        let mut p = self.pause.lock().unwrap_or_else(|p| p.into_inner());
        p.next = (p.next * 2).clamp(FIRST_PAUSE, MAX_PAUSE);
        p.until = Some(Instant::now() + p.next);
        p.probe = None;
        tracing::warn!(pause = ?p.next, "the target is throttling its callers; pausing its calls");
        drop(p);
        self.answered.notify_waiters();
    }

    /// The backend answered without throttling: a pause that is over ends.
    pub fn answered(&self) {
        let mut p = self.pause.lock().unwrap_or_else(|p| p.into_inner());
        if p.until.is_some_and(|u| u <= Instant::now()) {
            *p = Pause::default();
        }
        drop(p);
        self.answered.notify_waiters();
    }

    /// A call ended without the backend's word either way (it trapped, ran out of time): the
    /// next waiting call goes out to ask instead.
    pub fn unanswered(&self) {
        self.pause.lock().unwrap_or_else(|p| p.into_inner()).probe = None;
        self.answered.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_throttled_budget_pauses_and_recovers() {
        let b = Budget::new(&BudgetConfig {
            requests_per_second: 1000.0,
            burst: 10,
        });
        let far = Instant::now() + Duration::from_secs(60);
        assert!(b.admit(far, far).await);
        b.throttled();
        // Within the pause, a call whose deadline comes first is refused at once.
        let soon = Instant::now() + Duration::from_millis(100);
        assert!(!b.admit(soon, soon).await);
        let before = Instant::now();
        assert!(b.admit(far, far).await);
        assert!(Instant::now() - before >= FIRST_PAUSE);
        b.answered();
        b.throttled();
        assert_eq!(
            b.pause.lock().unwrap().next,
            FIRST_PAUSE,
            "a success resets the pause"
        );
    }

    /// A budget paused by a throttle whose pause is already over.
    fn after_a_pause() -> std::sync::Arc<Budget> {
        let b = Budget::new(&BudgetConfig {
            requests_per_second: 1000.0,
            burst: 100,
        });
        b.throttled();
        b.pause.lock().unwrap().until = Some(Instant::now());
        std::sync::Arc::new(b)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_pause_one_call_asks_and_the_rest_wait_for_its_answer() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let b = after_a_pause();
        let far = Instant::now() + Duration::from_secs(60);
        let admitted = std::sync::Arc::new(AtomicUsize::new(0));
        let mut waiting = tokio::task::JoinSet::new();
        for _ in 0..5 {
            let (b, admitted) = (b.clone(), admitted.clone());
            waiting.spawn(async move {
                assert!(b.admit(far, far).await);
                admitted.fetch_add(1, SeqCst);
            });
        }
        let one = async {
            while admitted.load(SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), one)
            .await
            .expect("the first call after the pause goes out");
        // The rest cannot go before the probe's answer (or its deadline, a minute away).
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(admitted.load(SeqCst), 1, "the others wait for its answer");
        // It got through: everyone goes.
        b.answered();
        tokio::time::timeout(Duration::from_secs(10), async {
            while waiting.join_next().await.is_some() {}
        })
        .await
        .expect("all admitted after the answer");
        assert_eq!(admitted.load(SeqCst), 5);
        assert!(b.pause.lock().unwrap().until.is_none(), "the pause ended");
    }

    #[tokio::test]
    async fn a_probe_throttled_again_pauses_longer_and_one_that_never_answers_hands_over() {
        let b = after_a_pause();
        let far = Instant::now() + Duration::from_secs(60);
        assert!(
            b.admit(far, far).await,
            "the first call after the pause asks"
        );
        b.throttled();
        assert_eq!(b.pause.lock().unwrap().next, 2 * FIRST_PAUSE);
        // Within the new pause, a call whose deadline comes first is refused at once.
        let soon = Instant::now() + Duration::from_millis(100);
        assert!(!b.admit(soon, soon).await);

        // A probe that never reports: the next call goes once the probe's deadline passed.
        let b = after_a_pause();
        let short = Instant::now() + Duration::from_millis(300);
        assert!(b.admit(short, short).await);
        let before = Instant::now();
        assert!(b.admit(far, far).await);
        assert!(
            Instant::now() >= short,
            "went {:?} before the probe's deadline",
            short - before
        );
    }
}
