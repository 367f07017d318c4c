//! Request budgets through the real gateway: a target over its budget waits on itself while
//! another target's calls go straight through, and what waits still gets done.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mlgw::api::pb;
use mlgw_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_mlgw-under-test");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_over_its_budget_waits_on_itself_and_not_on_others() {
    let dir = tempfile::tempdir().unwrap();
    // One call every two seconds on `slow` (a Submit's validation asks no backend and is not
    // counted; its submit is); the calls' deadline is long enough to wait for their turn.
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
        "{when_fast_was_done} of slow's Submits (three calls at one per two seconds) finished \
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

/// A test double for a throttling AWS, since moto never throttles: every request is answered
/// with SageMaker's ThrottlingException, as AWS's JSON protocol frames it. It counts the
/// operations it was asked (the SDK's `amz-sdk-invocation-id`, which its own retries of one
/// operation share).
struct ThrottlingAws {
    endpoint: String,
    operations: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl ThrottlingAws {
    async fn start() -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let operations = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        let seen = operations.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Read one request (head and body), answer it, close.
                    loop {
                        let n = conn.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf);
                        let Some(end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .and_then(|v| v.trim().parse::<usize>().ok())
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                    let invocation = head
                        .lines()
                        .find_map(|l| l.strip_prefix("amz-sdk-invocation-id:"))
                        .map(|v| v.trim().to_string())
                        .unwrap_or_else(|| format!("request {}", buf.len()));
                    seen.lock().unwrap().insert(invocation);
                    let body = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;
                    let answer = format!(
                        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/x-amz-json-1.1\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                });
            }
        });
        Self {
            endpoint,
            operations,
        }
    }

    fn operations(&self) -> usize {
        self.operations.lock().unwrap().len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_target_pauses_itself_and_not_others() {
    let aws = ThrottlingAws::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"[limits]
call_timeout_ms = 60000
[targets.throttled]
plugin = "sagemaker"
budget = {{ requests_per_second = 1000, burst = 1000 }}
[targets.throttled.settings]
output_path = "s3://bucket/out"
[targets.throttled.grants.sagemaker]
region = "us-east-1"
role_arn = "arn:aws:iam::123456789012:role/mlgw"
endpoint_url = "{}"
output_prefixes = ["s3://bucket/out/"]
[targets.fast]
plugin = "local"
[targets.fast.grants.process]
"#,
        aws.endpoint
    );
    let env = [
        ("AWS_ACCESS_KEY_ID", "AKIDTEST"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
        ("AWS_CONFIG_FILE", "/nonexistent/mlgw-test/config"),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/mlgw-test/credentials",
        ),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .to_vec();
    let gw = Gateway::start_with_env(BIN, &dir.path().join("data"), Some(&config), env).await;
    let c = gw.training().await;
    let sagemaker_spec = || pb::TrainingJobSpec {
        image: "123456789012.dkr.ecr.us-east-1.amazonaws.com/train:1".into(),
        ..spec(&["python", "train.py"])
    };

    // The other target's first call instantiates its plugin, which can take seconds on a busy
    // machine; done here, it does not eat the pause the test measures against below.
    let mut f = c.clone();
    let warm = submit(&mut f, "fast", spec(&["true"])).await.unwrap();
    let warm = wait_job(&mut f, &warm.id, Duration::from_secs(60)).await;
    assert_eq!(state(&warm), pb::JobState::Succeeded, "{}", warm.message);

    // A Submit reaches AWS, is told to slow down and keeps its job waiting, saying why; the
    // target's pause doubles with each throttled answer (0.5 s, 1 s, 2 s, 4 s, ...), the
    // reconciler's retries of the waiting jobs included, so later Submits wait out the pause
    // or, past their deadline, keep their job pending without asking AWS.
    for i in 0..4 {
        let j = match submit(&mut c.clone(), "throttled", sagemaker_spec()).await {
            Ok(j) => j,
            Err(e) => panic!(
                "a throttled Submit keeps its job for later: {e}\ngateway log:\n{}",
                gw.log()
            ),
        };
        assert_eq!(state(&j), pb::JobState::Pending, "{}", j.message);
        assert!(
            j.message.starts_with("waiting for the target"),
            "{}",
            j.message
        );
        if i == 0 {
            assert!(j.message.contains("Rate exceeded"), "{}", j.message);
        }
    }
    let before = aws.operations();
    assert!(before >= 4, "{before}");

    // Five more at once, inside the pause that the last throttled answer began (4 s or more,
    // and at most 16 s, well within the 30 s a call may wait for its budget): they wait for
    // it...
    let answered = Arc::new(AtomicUsize::new(0));
    let mut throttled = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let (mut c, answered, spec) = (c.clone(), answered.clone(), sagemaker_spec());
        throttled.spawn(async move {
            let j = submit(&mut c, "throttled", spec).await;
            answered.fetch_add(1, Ordering::SeqCst);
            j
        });
    }
    // ...while another target's Submits go straight through.
    let mut fast = Vec::new();
    for _ in 0..3 {
        fast.push(submit(&mut f, "fast", spec(&["true"])).await.unwrap());
    }
    let waiting = 5 - answered.load(Ordering::SeqCst);
    assert!(
        waiting >= 4,
        "only {waiting} of five Submits to the paused target were still waiting when the other \
         target's three had been answered"
    );
    for j in fast {
        let done = wait_job(&mut f, &j.id, Duration::from_secs(60)).await;
        assert_eq!(state(&done), pb::JobState::Succeeded, "{}", done.message);
    }
    // After each pause one call asks AWS, not all five (and the reconciler's retries) at once;
    // what the budget could not admit before its deadline keeps its job pending too.
    let all = tokio::time::timeout(Duration::from_secs(120), async {
        let mut n = 0;
        while let Some(r) = throttled.join_next().await {
            let j = r.unwrap().expect("a throttled Submit keeps its job");
            assert_eq!(state(&j), pb::JobState::Pending, "{}", j.message);
            n += 1;
        }
        n
    })
    .await
    .expect("every Submit answered within its deadline");
    assert_eq!(all, 5);
    let asked = aws.operations() - before;
    assert!(
        asked <= 4,
        "the paused target asked AWS {asked} more times in the pauses after the first four \
         (once per pause; five Submits and the reconciler would ask at once)"
    );
}
