//! The log cursor: per pod, the timestamp of the last line returned and how many lines at
//! that instant were returned. The API server resumes a log at a whole second (`sinceTime`),
//! so a read asks from that second with timestamps and skips what the cursor has seen; lines
//! sharing an instant (the kubelet writes several per nanosecond tick under load) are told
//! apart by their count.

use std::collections::BTreeMap;

use mlgw_plugin_sdk::{BackendError, LogLine, invalid};
use serde::{Deserialize, Serialize};

use crate::time::{Instant, parse_rfc3339};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMark {
    /// RFC 3339 with nanoseconds, as the API server wrote it.
    pub t: String,
    /// Lines at exactly `t` already returned.
    pub n: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(default)]
    pub pods: BTreeMap<String, PodMark>,
}

impl Cursor {
    pub fn parse(raw: Option<&str>) -> Result<Self, BackendError> {
        match raw {
            None | Some("") => Ok(Self::default()),
            Some(c) => {
                let cur: Cursor = serde_json::from_str(c).map_err(|_| bad(c))?;
                for m in cur.pods.values() {
                    parse_rfc3339(&m.t).ok_or_else(|| bad(c))?;
                }
                Ok(cur)
            }
        }
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The second to ask the API server from, if this pod was read before.
    pub fn since(&self, pod: &str) -> Option<String> {
        let m = self.pods.get(pod)?;
        parse_rfc3339(&m.t).map(Instant::second_rfc3339)
    }
}

fn bad(c: &str) -> BackendError {
    let shown: String = c.chars().take(40).collect();
    invalid(
        "cursor",
        format!("{shown:?} is not a cursor this target returned"),
    )
}

/// One pod's read: the lines after the cursor, at most `room`, and whether that was all.
pub struct PodRead {
    pub lines: Vec<LogLine>,
    pub drained: bool,
}

/// Takes the lines of a `timestamps=true` log read (from the cursor's second) that come after
/// the cursor's mark, at most `room`, and moves the mark past them. A line without a
/// timestamp (a cut-off last line) is left for the next read.
pub fn take(cursor: &mut Cursor, pod: &str, text: &str, room: usize) -> PodRead {
    let mark = cursor.pods.get(pod).cloned();
    let since = mark.as_ref().and_then(|m| parse_rfc3339(&m.t));
    let mut seen_at_mark = 0u32;
    let mut out = Vec::new();
    let mut last: Option<(String, Instant, u32)> =
        mark.as_ref().zip(since).map(|(m, t)| (m.t.clone(), t, m.n));
    let mut drained = true;
    for line in text.split_inclusive('\n') {
        let Some(body) = line.strip_suffix('\n') else {
            // An unterminated last line may still grow: read it again next time.
            break;
        };
        let body = body.strip_suffix('\r').unwrap_or(body);
        let Some((ts, rest)) = body.split_once(' ') else {
            continue;
        };
        let Some(t) = parse_rfc3339(ts) else { continue };
        if let (Some(s), Some(m)) = (since, &mark) {
            if t < s {
                continue;
            }
            if t == s && seen_at_mark < m.n {
                seen_at_mark += 1;
                continue;
            }
        }
        if out.len() >= room {
            drained = false;
            break;
        }
        out.push(LogLine {
            timestamp_ms: t.millis(),
            source: pod.to_string(),
            text: rest.to_string(),
        });
        last = match last {
            Some((raw, lt, n)) if lt == t => Some((raw, lt, n + 1)),
            _ => Some((ts.to_string(), t, 1)),
        };
    }
    if let Some((t, _, n)) = last {
        cursor.pods.insert(pod.to_string(), PodMark { t, n });
    }
    PodRead {
        lines: out,
        drained,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "2026-12-01T08:25:07.000000000Z";
    const T2: &str = "2026-12-01T08:25:07.500000000Z";
    const T3: &str = "2026-12-01T08:25:09.000000001Z";

    fn log(lines: &[(&str, &str)]) -> String {
        lines.iter().map(|(t, l)| format!("{t} {l}\n")).collect()
    }

    fn texts(r: &PodRead) -> Vec<&str> {
        r.lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn pages_through_lines_sharing_an_instant() {
        // KWOK writes every line at one instant: only the count tells them apart.
        let all = log(&[(T1, "a"), (T1, "b"), (T1, "c")]);
        let mut c = Cursor::default();
        let r = take(&mut c, "p", &all, 2);
        assert_eq!(texts(&r), ["a", "b"]);
        assert!(!r.drained);
        assert_eq!(c.pods["p"], PodMark { t: T1.into(), n: 2 });
        assert_eq!(c.since("p").as_deref(), Some("2026-12-01T08:25:07Z"));
        // Through the encoded cursor, as the gateway hands it back.
        let mut c = Cursor::parse(Some(&c.encode())).unwrap();
        let r = take(&mut c, "p", &all, 2);
        assert_eq!(texts(&r), ["c"]);
        assert!(r.drained);
        assert_eq!(c.pods["p"].n, 3);
        let r = take(&mut c, "p", &all, 2);
        assert!(r.lines.is_empty() && r.drained);
        assert_eq!(c.pods["p"].n, 3, "nothing new: the mark stays");
    }

    #[test]
    fn resumes_within_a_second_and_after_it() {
        let mut c = Cursor::default();
        let first = log(&[(T1, "a")]);
        assert_eq!(texts(&take(&mut c, "p", &first, 10)), ["a"]);
        // The next read starts at 08:25:07 and so repeats "a"; it is skipped.
        let next = log(&[(T1, "a"), (T2, "b"), (T2, "c"), (T3, "d")]);
        let r = take(&mut c, "p", &next, 10);
        assert_eq!(texts(&r), ["b", "c", "d"]);
        assert_eq!(r.lines[0].timestamp_ms, 1_796_113_507_500);
        assert_eq!(r.lines[0].source, "p");
        assert_eq!(c.pods["p"], PodMark { t: T3.into(), n: 1 });
    }

    #[test]
    fn a_cut_off_line_waits_and_pods_are_separate() {
        let mut c = Cursor::default();
        let text = format!("{T1} whole\n{T2} half");
        assert_eq!(texts(&take(&mut c, "p", &text, 10)), ["whole"]);
        let r = take(&mut c, "q", &log(&[(T1, "other pod")]), 10);
        assert_eq!(texts(&r), ["other pod"]);
        assert_eq!(c.pods.len(), 2);
        assert_eq!(c.pods["p"].t, T1);
        // A pod that never logged has no mark.
        assert_eq!(c.since("never"), None);
        let r = take(&mut c, "never", "", 10);
        assert!(r.drained && r.lines.is_empty());
        assert!(!c.pods.contains_key("never"));
    }

    #[test]
    fn foreign_cursors_are_refused() {
        assert_eq!(Cursor::parse(None).unwrap(), Cursor::default());
        assert_eq!(Cursor::parse(Some("")).unwrap(), Cursor::default());
        for c in [
            "12",
            "{\"pods\": {\"p\": {\"t\": \"yesterday\", \"n\": 1}}}",
            "{",
        ] {
            assert!(
                matches!(Cursor::parse(Some(c)), Err(BackendError::InvalidSpec(f)) if f.field == "cursor"),
                "{c}"
            );
        }
    }
}
