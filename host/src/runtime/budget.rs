//! A target's request budget (`[targets.X.budget]`): plugin calls per second, shared by the
//! reconciler and client calls, and a pause after the backend says it is throttling. Each
//! target has its own, so one that is throttled (or simply busy) only ever slows itself.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

use crate::config::BudgetConfig;

const FIRST_PAUSE: Duration = Duration::from_millis(500);
const MAX_PAUSE: Duration = Duration::from_secs(30);

pub struct Budget {
    limiter: DefaultDirectRateLimiter,
    pause: Mutex<Pause>,
}

#[derive(Default)]
struct Pause {
    until: Option<Instant>,
    next: Duration,
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
        }
    }

    /// Waits for this call's share of the budget; false when that would pass `deadline`.
    pub async fn admit(&self, deadline: Instant) -> bool {
        let until = self.pause.lock().unwrap_or_else(|p| p.into_inner()).until;
        if let Some(until) = until {
            if until > deadline {
                return false;
            }
            tokio::time::sleep_until(until).await;
        }
        tokio::time::timeout_at(deadline, self.limiter.until_ready())
            .await
            .is_ok()
    }

    /// The backend answered that it is throttling: every call of this target waits, longer
    /// each time it happens again, until a call goes through.
    pub fn throttled(&self) {
        let mut p = self.pause.lock().unwrap_or_else(|p| p.into_inner());
        p.next = (p.next * 2).clamp(FIRST_PAUSE, MAX_PAUSE);
        p.until = Some(Instant::now() + p.next);
        tracing::warn!(pause = ?p.next, "the target is throttling its callers; pausing its calls");
    }

    pub fn succeeded(&self) {
        let mut p = self.pause.lock().unwrap_or_else(|p| p.into_inner());
        if p.until.is_some_and(|u| u <= Instant::now()) {
            *p = Pause::default();
        }
    }
}

/// Whether an error a backend gave means "too many requests" (AWS's ThrottlingException and
/// SlowDown, Kubernetes' 429, any "rate exceeded").
pub fn is_throttling(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "throttl",
        "rate exceeded",
        "too many requests",
        "slowdown",
        "slow down",
        "429",
    ]
    .iter()
    .any(|w| m.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_is_recognised_in_the_backends_words() {
        for m in [
            "ThrottlingException: Rate exceeded",
            "429 Too Many Requests",
            "SlowDown: please reduce your request rate",
        ] {
            assert!(is_throttling(m), "{m}");
        }
        assert!(!is_throttling(
            "ResourceLimitExceeded: quota for ml.g5.xlarge"
        ));
    }

    #[tokio::test]
    async fn a_throttled_budget_pauses_and_recovers() {
        let b = Budget::new(&BudgetConfig {
            requests_per_second: 1000.0,
            burst: 10,
        });
        let far = Instant::now() + Duration::from_secs(60);
        assert!(b.admit(far).await);
        b.throttled();
        // Within the pause, a call whose deadline comes first is refused at once.
        assert!(!b.admit(Instant::now() + Duration::from_millis(100)).await);
        let before = Instant::now();
        assert!(b.admit(far).await);
        assert!(Instant::now() - before >= FIRST_PAUSE);
        b.succeeded();
        b.throttled();
        assert_eq!(
            b.pause.lock().unwrap().next,
            FIRST_PAUSE,
            "a success resets the pause"
        );
    }
}
