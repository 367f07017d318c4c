//! A minimal model server for tests: speaks enough of the Open Inference Protocol V2 over
//! HTTP/1.1 to be probed and predicted through, records every request it gets, and misbehaves
//! on request (by model name) the ways a hostile route might.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the model server received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
}

/// A minimal OIP V2 model server on 127.0.0.1. `/v2/models/{m}/ready` answers 200 (503 while
/// `set_ready(false)`);
/// `/v2/models/{m}/infer` answers an inference response, except for these models:
/// `redirect` (307 to `/v2/models/elsewhere/infer` on this server), `endless` (a chunked
/// body that goes on for 64 MiB) and `big` (a 1 MiB body with its Content-Length).
pub struct ModelServer {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    ready: Arc<AtomicBool>,
}

impl ModelServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let ready = Arc::new(AtomicBool::new(true));
        let (log, up) = (seen.clone(), ready.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(answer(conn, log.clone(), up.clone(), port));
            }
        });
        Self { port, seen, ready }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What `/v2/models/{m}/ready` answers from now on.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn requests(&self, marker: &str) -> Vec<Seen> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|s| s.path.contains(marker))
            .cloned()
            .collect()
    }

    pub fn all_paths(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.path.clone())
            .collect()
    }
}

/// Answers one request on `conn`, then closes it.
async fn answer(
    mut conn: TcpStream,
    seen: Arc<Mutex<Vec<Seen>>>,
    ready: Arc<AtomicBool>,
    port: u16,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 1 << 16 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or_default()
        .to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        headers,
    });

    let model = path
        .strip_prefix("/v2/models/")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(m, _)| !m.is_empty());
    let reply = |status: &str, extra: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n{extra}\r\n{body}",
            body.len()
        )
    };
    let response = match model {
        Some((_, "ready")) if ready.load(Ordering::SeqCst) => reply("200 OK", "", "{}"),
        Some((_, "ready")) => reply("503 Service Unavailable", "", r#"{"error": "not ready"}"#),
        Some(("redirect", "infer")) => reply(
            "307 Temporary Redirect",
            &format!("location: http://127.0.0.1:{port}/v2/models/elsewhere/infer\r\n"),
            "{}",
        ),
        Some(("endless", "infer")) => {
            let _ = conn
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                      transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
                )
                .await;
            let piece = format!("10000\r\n{}\r\n", " ".repeat(0x10000));
            for _ in 0..1024 {
                if conn.write_all(piece.as_bytes()).await.is_err() {
                    return;
                }
            }
            let _ = conn.write_all(b"0\r\n\r\n").await;
            return;
        }
        Some(("big", "infer")) => reply("200 OK", "", &" ".repeat(1 << 20)),
        Some((m, "infer")) => reply(
            "200 OK",
            "",
            &json!({
                "model_name": m,
                "outputs": [{"name": "echo", "shape": [1], "datatype": "INT64", "data": [7]}]
            })
            .to_string(),
        ),
        _ => reply("404 Not Found", "", r#"{"error": "no such path"}"#),
    };
    let _ = conn.write_all(response.as_bytes()).await;
    let _ = conn.shutdown().await;
}
