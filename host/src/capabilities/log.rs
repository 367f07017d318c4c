//! The `log` capability: plugins write into the gateway's own log, tagged with their target.
//!
//! Every target has it, bounded by its grant (`[targets.X.grants.log]`): lines and bytes per
//! call, and a per-second budget shared by all of the target's calls, so one plugin cannot
//! flood the gateway's log or its disk. What is over the budget is dropped and counted, and
//! the count is reported once per call. The text is logged as a field value, escaped, never
//! as a raw line: a newline or a terminal escape in it cannot forge a gateway log entry.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::LogGrant;
use crate::contract::mlgw::backend::log::{self, Level};

/// One target's log budget, shared by its calls.
pub struct LogCapability {
    target: Arc<str>,
    grant: LogGrant,
    bucket: Mutex<Bucket>,
}

/// A token bucket for lines and for bytes, refilled continuously, holding one second's worth.
struct Bucket {
    lines: f64,
    bytes: f64,
    at: Instant,
}

impl LogCapability {
    pub fn new(target: &str, grant: &LogGrant) -> Self {
        Self {
            target: target.into(),
            grant: grant.clone(),
            bucket: Mutex::new(Bucket {
                lines: grant.lines_per_second as f64,
                bytes: grant.bytes_per_second as f64,
                at: Instant::now(),
            }),
        }
    }

    /// Takes one line of `bytes` from the per-second budget, if it is there.
    fn take(&self, bytes: usize) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let secs = now.duration_since(b.at).as_secs_f64();
        b.at = now;
        let (lps, bps) = (
            self.grant.lines_per_second as f64,
            self.grant.bytes_per_second as f64,
        );
        b.lines = (b.lines + secs * lps).min(lps);
        b.bytes = (b.bytes + secs * bps).min(bps);
        if b.lines >= 1.0 && b.bytes >= bytes as f64 {
            b.lines -= 1.0;
            b.bytes -= bytes as f64;
            true
        } else {
            false
        }
    }
}

/// The capability as one call sees it: the shared budget plus this call's own counts.
pub struct LogCall {
    cap: Arc<LogCapability>,
    lines: u64,
    bytes: u64,
    dropped: u64,
}

impl LogCall {
    pub fn new(cap: Arc<LogCapability>) -> Self {
        Self {
            cap,
            lines: 0,
            bytes: 0,
            dropped: 0,
        }
    }

    /// Cuts `message` to the grant's line length and decides whether it may be written.
    fn admit(&mut self, message: &mut String) -> bool {
        let g = &self.cap.grant;
        let max = g.max_line_bytes as usize;
        if message.len() > max {
            let mut cut = max;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let n = message.len() as u64;
        let ok = self.lines < g.lines_per_call as u64
            && self.bytes + n <= g.bytes_per_call
            && self.cap.take(message.len());
        if ok {
            self.lines += 1;
            self.bytes += n;
        } else {
            self.dropped += 1;
        }
        ok
    }
}

impl Drop for LogCall {
    fn drop(&mut self) {
        if self.dropped > 0 {
            let target = &*self.cap.target;
            tracing::warn!(
                target: "mlgw::plugin",
                %target,
                dropped = self.dropped,
                "plugin log messages over the target's log grant were dropped \
                 (targets.{target}.grants.log)"
            );
        }
    }
}

impl log::Host for LogCall {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let mut message = message;
        if !self.admit(&mut message) {
            return Ok(());
        }
        let target = &*self.cap.target;
        // `text = ?message` writes the text quoted and escaped (\n, \u{1b}, …) as data.
        match level {
            Level::Trace => tracing::trace!(target: "mlgw::plugin", %target, text = ?message),
            Level::Debug => tracing::debug!(target: "mlgw::plugin", %target, text = ?message),
            Level::Info => tracing::info!(target: "mlgw::plugin", %target, text = ?message),
            Level::Warn => tracing::warn!(target: "mlgw::plugin", %target, text = ?message),
            Level::Error => tracing::error!(target: "mlgw::plugin", %target, text = ?message),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> LogGrant {
        LogGrant {
            lines_per_call: 5,
            bytes_per_call: 1000,
            lines_per_second: 8,
            bytes_per_second: 100_000,
            max_line_bytes: 10,
        }
    }

    #[test]
    fn calls_and_seconds_are_bounded() {
        let cap = Arc::new(LogCapability::new("t", &grant()));
        let mut call = LogCall::new(cap.clone());
        let admitted = (0..100)
            .filter(|_| call.admit(&mut "x".to_string()))
            .count();
        assert_eq!(admitted, 5, "lines per call");
        assert_eq!(call.dropped, 95);
        // A second call within the same second gets what is left of the target's budget.
        let mut second = LogCall::new(cap);
        let admitted = (0..100)
            .filter(|_| second.admit(&mut "x".to_string()))
            .count();
        assert_eq!(
            admitted, 3,
            "lines per second, shared by the target's calls"
        );
    }

    #[test]
    fn long_lines_are_cut() {
        let mut call = LogCall::new(Arc::new(LogCapability::new("t", &grant())));
        let mut m = "ééééééé".to_string(); // 14 bytes
        assert!(call.admit(&mut m));
        assert_eq!(m, "ééééé…", "cut at a char boundary within 10 bytes");
    }
}
