//! Request budgets through the real gateway: a target over its budget waits on itself while
//! another target's calls go straight through, and what waits still gets done.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mlgw_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_mlgw-under-test");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_over_its_budget_waits_on_itself_and_not_on_others() {
    let dir = tempfile::tempdir().unwrap();
    // One call every two seconds on `slow` (a Submit is two: validate, then submit); the
    // calls' deadline is long enough to wait for their turn.
    let gw = Gateway::start(
        BIN,
        &dir.path().join("data"),
        Some(
            "[limits]\ncall_timeout_ms = 60000\n\
             [targets.slow]\nplugin = \"local\"\nbudget = { requests_per_second = 0.5, burst = 1 }\n\
             [targets.slow.grants.process]\n\
             [targets.fast]\nplugin = \"local\"\n[targets.fast.grants.process]\n",
        ),
    )
    .await;
    let c = gw.training().await;
    let slow_done = Arc::new(AtomicUsize::new(0));
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let (mut c, done) = (c.clone(), slow_done.clone());
        slow.spawn(async move {
            let j = submit(&mut c, "slow", spec(&["true"])).await;
            done.fetch_add(1, Ordering::SeqCst);
            j
        });
    }
    // `fast` has no budget: its Submits do not queue behind `slow`'s.
    let mut f = c.clone();
    for _ in 0..3 {
        submit(&mut f, "fast", spec(&["true"])).await.unwrap();
    }
    let when_fast_was_done = slow_done.load(Ordering::SeqCst);
    assert!(
        when_fast_was_done <= 1,
        "{when_fast_was_done} of slow's Submits (six calls at one per two seconds) finished \
         before fast's three"
    );
    // And slow's all go through, in their turn.
    let all = tokio::time::timeout(Duration::from_secs(90), async {
        let mut ids = Vec::new();
        while let Some(r) = slow.join_next().await {
            ids.push(r.unwrap().expect("a Submit within the budget succeeds").id);
        }
        ids
    })
    .await
    .expect("slow's Submits within 90 s");
    assert_eq!(all.len(), 3);
}
