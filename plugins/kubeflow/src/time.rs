//! RFC 3339 times as the API server and the kubelet write them (`2026-12-01T08:25:07.123456789Z`),
//! as whole seconds and nanoseconds since the Unix epoch. Log cursors compare these exactly, so
//! they are parsed by hand rather than through a float or a millisecond clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// A point in time to the nanosecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant {
    pub secs: i64,
    pub nanos: u32,
}

impl Instant {
    pub fn millis(self) -> u64 {
        u64::try_from(self.secs)
            .unwrap_or(0)
            .saturating_mul(1000)
            .saturating_add(u64::from(self.nanos / 1_000_000))
    }

    /// The whole second this instant falls in, as RFC 3339 in UTC: what `sinceTime` takes.
    pub fn second_rfc3339(self) -> String {
        let days = self.secs.div_euclid(86_400);
        let rem = self.secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; `t` may also be lower case, as RFC 3339 allows.
pub fn parse_rfc3339(s: &str) -> Option<Instant> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = s.get(from..from + len)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // 60 is a leap second; it is counted as the next one's start.
    if second > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + u32::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..9 {
            nanos *= 10;
        }
    }
    let offset = match &s[i..] {
        "Z" | "z" => 0,
        tz if tz.len() == 6
            && matches!(tz.as_bytes()[0], b'+' | b'-')
            && tz.as_bytes()[3] == b':' =>
        {
            let h = num(i + 1, 2)?;
            let m = num(i + 4, 2)?;
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    Some(Instant {
        secs: days * 86_400 + hour * 3600 + minute * 60 + second - offset,
        nanos,
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kubelets_timestamps() {
        let t = parse_rfc3339("2026-12-01T08:25:07.123456789Z").unwrap();
        assert_eq!(t.secs, 1_796_113_507);
        assert_eq!(t.nanos, 123_456_789);
        assert_eq!(t.millis(), 1_796_113_507_123);
        assert_eq!(t.second_rfc3339(), "2026-12-01T08:25:07Z");

        let epoch = parse_rfc3339("1970-01-01T00:00:00Z").unwrap();
        assert_eq!(epoch, Instant { secs: 0, nanos: 0 });
        // Fractions of any length, offsets, a leap day.
        assert_eq!(
            parse_rfc3339("2024-02-29T23:59:59.5+01:00").unwrap(),
            Instant {
                secs: parse_rfc3339("2024-02-29T22:59:59Z").unwrap().secs,
                nanos: 500_000_000
            }
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T22:59:59.1234567891Z")
                .unwrap()
                .nanos,
            123_456_789
        );
        assert_eq!(
            parse_rfc3339("2024-03-01T00:00:00Z")
                .unwrap()
                .second_rfc3339(),
            "2024-03-01T00:00:00Z"
        );
    }

    #[test]
    fn refuses_what_is_no_rfc3339_time() {
        for bad in [
            "",
            "2026-12-01",
            "2026-12-01T08:25:07",
            "2026-12-01T08:25:07.Z",
            "2026-13-01T08:25:07Z",
            "2026-12-01T24:25:07Z",
            "2026/12/01T08:25:07Z",
            "2026-12-01T08:25:07+0100",
            "fake training log line",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn orders_to_the_nanosecond() {
        let a = parse_rfc3339("2026-12-01T08:25:07.000000001Z").unwrap();
        let b = parse_rfc3339("2026-12-01T08:25:07.000000002Z").unwrap();
        let c = parse_rfc3339("2026-12-01T08:25:08Z").unwrap();
        assert!(a < b && b < c);
    }
}
