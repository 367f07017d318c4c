//! Paging through a job's log file. The process supervisor appends one record per line,
//! `<unix_ms> <source> <text>`, so a byte offset is a stable cursor.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use mlgw_plugin_sdk::{BackendError, LogLine, internal, invalid};

/// Pages are bounded so one call cannot pull a whole multi-gigabyte log into the guest.
pub const MAX_LINES_CAP: u32 = 10_000;
/// What `max-lines = 0` means: zero would page forever without making progress.
pub const DEFAULT_MAX_LINES: u32 = 1_000;

/// At most this much of the file is read per page: the supervisor cuts lines at 64 KiB, so a
/// page of long lines would otherwise reach `max-lines` × 64 KiB, past what the host takes
/// from a plugin in one answer (4 MiB by default), and the log could not be read at all.
pub const MAX_PAGE_BYTES: usize = 1 << 20;

const READ_CHUNK: usize = 64 * 1024;

pub fn parse_cursor(cursor: Option<&str>) -> Result<u64, BackendError> {
    match cursor {
        None | Some("") => Ok(0),
        Some(c) => c.parse::<u64>().map_err(|_| {
            invalid(
                "cursor",
                format!("{c:?} is not a cursor this target returned"),
            )
        }),
    }
}

pub fn effective_max_lines(max_lines: u32) -> usize {
    match max_lines {
        0 => DEFAULT_MAX_LINES as usize,
        n => n.min(MAX_LINES_CAP) as usize,
    }
}

/// `<unix_ms> <source> <text>`; a line that does not fit (written by something other than
/// the supervisor) is kept whole as text rather than dropped.
pub fn parse_line(line: &[u8]) -> LogLine {
    let line = String::from_utf8_lossy(line);
    let line = line.strip_suffix('\r').unwrap_or(&line);
    let mut parts = line.splitn(3, ' ');
    let ms = parts.next().and_then(|ms| ms.parse::<u64>().ok());
    let source = parts.next().filter(|s| !s.is_empty());
    match (ms, source) {
        (Some(timestamp_ms), Some(source)) => LogLine {
            timestamp_ms,
            source: source.to_string(),
            text: parts.next().unwrap_or("").to_string(),
        },
        _ => LogLine {
            timestamp_ms: 0,
            source: String::new(),
            text: line.to_string(),
        },
    }
}

#[derive(Debug, PartialEq)]
pub struct Page {
    pub lines: Vec<LogLine>,
    /// Offset just after the last returned line.
    pub next: u64,
    /// The process has ended and every byte of the log has been returned.
    pub complete: bool,
}

/// Splits `data` (the file's bytes from `offset` on) into at most `max_lines` lines.
/// `at_eof` says `data` reaches the end of the file; only then, and only once the process has
/// `ended`, is an unterminated last line returned: before that it may still be growing.
/// A whole page of bytes with no line end (something other than the supervisor wrote the
/// file) is returned as one line, so paging always moves on.
pub fn split_page(
    data: &[u8],
    offset: u64,
    file_len: u64,
    max_lines: usize,
    ended: bool,
    at_eof: bool,
) -> Page {
    let mut lines = Vec::new();
    let mut pos = 0;
    while lines.len() < max_lines && pos < data.len() {
        match data[pos..].iter().position(|&b| b == b'\n') {
            Some(nl) => {
                lines.push(parse_line(&data[pos..pos + nl]));
                pos += nl + 1;
            }
            None if (ended && at_eof) || (pos == 0 && data.len() >= MAX_PAGE_BYTES) => {
                lines.push(parse_line(&data[pos..]));
                pos = data.len();
            }
            None => break,
        }
    }
    let next = offset + pos as u64;
    Page {
        lines,
        next,
        complete: ended && next >= file_len,
    }
}

/// Reads one page of the log at `path`. A missing file is an empty log: the process may not
/// have written anything yet.
pub fn read_page(
    path: &Path,
    offset: u64,
    max_lines: usize,
    ended: bool,
) -> Result<Page, BackendError> {
    // The job runs in the directory that holds its log and could put a FIFO or a device in
    // its place; opening one could block or never end, so only a regular file is opened.
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.is_file() => {
            return Err(internal(format!(
                "{} is not a regular file; the job replaced its log",
                path.display()
            )));
        }
        _ => {}
    }
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Page {
                lines: Vec::new(),
                next: offset,
                complete: ended,
            });
        }
        Err(e) => return Err(internal(format!("reading {}: {e}", path.display()))),
    };
    let io_err = |e: io::Error| internal(format!("reading {}: {e}", path.display()));
    // Everything below is bounded by this length, so a log that grows while we read cannot
    // make `complete` claim bytes that were never returned.
    let file_len = file.metadata().map_err(io_err)?.len();
    if offset > file_len {
        return Err(invalid(
            "cursor",
            format!("{offset} is past the end of the log ({file_len} bytes)"),
        ));
    }
    file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
    let available = file_len - offset;
    let mut reader = file.take(available.min(MAX_PAGE_BYTES as u64));
    let mut data = Vec::new();
    let mut newlines = 0;
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let n = reader.read(&mut chunk).map_err(io_err)?;
        if n == 0 {
            break;
        }
        newlines += chunk[..n].iter().filter(|&&b| b == b'\n').count();
        data.extend_from_slice(&chunk[..n]);
        if newlines >= max_lines || data.len() >= MAX_PAGE_BYTES {
            break;
        }
    }
    let at_eof = data.len() as u64 == available;
    Ok(split_page(
        &data, offset, file_len, max_lines, ended, at_eof,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ms: u64, source: &str, text: &str) -> LogLine {
        LogLine {
            timestamp_ms: ms,
            source: source.into(),
            text: text.into(),
        }
    }

    #[test]
    fn parses_supervisor_lines() {
        assert_eq!(
            parse_line(b"1700 stdout hello world"),
            line(1700, "stdout", "hello world")
        );
        assert_eq!(parse_line(b"1700 stderr "), line(1700, "stderr", ""));
        assert_eq!(parse_line(b"1700 stderr"), line(1700, "stderr", ""));
        assert_eq!(
            parse_line(b"1700 stdout  two  spaces "),
            line(1700, "stdout", " two  spaces ")
        );
        assert_eq!(parse_line(b"garbage here"), line(0, "", "garbage here"));
        assert_eq!(parse_line(b""), line(0, "", ""));
        assert_eq!(
            parse_line(b"1 stdout caf\xc3\xa9\r"),
            line(1, "stdout", "café")
        );
    }

    #[test]
    fn cursors() {
        assert_eq!(parse_cursor(None).unwrap(), 0);
        assert_eq!(parse_cursor(Some("")).unwrap(), 0);
        assert_eq!(parse_cursor(Some("42")).unwrap(), 42);
        for bad in ["-1", "x", "1.5", " 1"] {
            assert!(matches!(
                parse_cursor(Some(bad)),
                Err(BackendError::InvalidSpec(f)) if f.field == "cursor"
            ));
        }
    }

    #[test]
    fn max_lines_is_bounded() {
        assert_eq!(effective_max_lines(0), DEFAULT_MAX_LINES as usize);
        assert_eq!(effective_max_lines(5), 5);
        assert_eq!(effective_max_lines(u32::MAX), MAX_LINES_CAP as usize);
    }

    const LOG: &[u8] = b"1 stdout a\n2 stderr b\n3 stdout c\n4 stdout part";

    #[test]
    fn pages_through_complete_lines_while_running() {
        let len = LOG.len() as u64;
        let p = split_page(LOG, 0, len, 2, false, true);
        assert_eq!(
            p.lines,
            vec![line(1, "stdout", "a"), line(2, "stderr", "b")]
        );
        assert_eq!(p.next, 22);
        assert!(!p.complete);

        let p = split_page(&LOG[22..], 22, len, 10, false, true);
        assert_eq!(p.lines, vec![line(3, "stdout", "c")]);
        assert_eq!(
            p.next, 33,
            "the partial line is held back while the process runs"
        );
        assert!(!p.complete);
    }

    #[test]
    fn returns_the_partial_line_once_ended() {
        let len = LOG.len() as u64;
        let p = split_page(&LOG[33..], 33, len, 10, true, true);
        assert_eq!(p.lines, vec![line(4, "stdout", "part")]);
        assert_eq!(p.next, len);
        assert!(p.complete);

        // Ended, but this page stops short of the end: not complete yet.
        let p = split_page(LOG, 0, len, 1, true, true);
        assert_eq!(p.next, 11);
        assert!(!p.complete);

        // Nothing left: an empty, complete page.
        let p = split_page(b"", len, len, 10, true, true);
        assert!(p.lines.is_empty());
        assert_eq!(p.next, len);
        assert!(p.complete);
    }

    #[test]
    fn reads_pages_from_a_file() {
        let dir = std::env::temp_dir().join(format!("mlgw-local-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("logs.txt");

        let missing = read_page(&path, 0, 10, false).unwrap();
        assert_eq!(
            missing,
            Page {
                lines: vec![],
                next: 0,
                complete: false
            }
        );
        assert!(read_page(&path, 0, 10, true).unwrap().complete);

        std::fs::write(&path, LOG).unwrap();
        let (all, _, cursor) = read_all(&path, 2);
        assert_eq!(all.len(), 4);
        assert_eq!(cursor, LOG.len() as u64);

        assert!(matches!(
            read_page(&path, LOG.len() as u64 + 1, 2, true),
            Err(BackendError::InvalidSpec(f)) if f.field == "cursor"
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn long_logs_are_read_in_bounded_pages() {
        let dir = std::env::temp_dir().join(format!("mlgw-local-longlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("logs.txt");
        let body: String = (0..50_000)
            .map(|i| format!("{i} stdout line {i}\n"))
            .collect();
        std::fs::write(&path, &body).unwrap();
        let p = read_page(&path, 0, 3, false).unwrap();
        assert_eq!(p.lines.len(), 3);
        assert_eq!(p.lines[2], line(2, "stdout", "line 2"));
        assert_eq!(
            p.next,
            "0 stdout line 0\n1 stdout line 1\n2 stdout line 2\n".len() as u64
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Pages through `path` from the start with `max_lines`, checking each page's size: the
    /// lines, how many pages they took and the cursor after the last.
    fn read_all(path: &Path, max_lines: usize) -> (Vec<LogLine>, usize, u64) {
        let (mut cursor, mut all, mut pages) = (0, Vec::new(), 0);
        loop {
            let p = read_page(path, cursor, max_lines, true).unwrap();
            let bytes: usize = p.lines.iter().map(|l| l.text.len()).sum();
            assert!(bytes <= MAX_PAGE_BYTES, "a page of {bytes} bytes");
            assert!(p.next > cursor || p.complete, "paging stalled at {cursor}");
            all.extend(p.lines);
            cursor = p.next;
            pages += 1;
            if p.complete {
                return (all, pages, cursor);
            }
        }
    }

    #[test]
    fn pages_of_long_lines_are_bounded_in_bytes() {
        let dir = std::env::temp_dir().join(format!("mlgw-local-widelog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("logs.txt");
        // 100 lines as long as the supervisor writes them: 6 MiB in all.
        let text = "x".repeat(64 * 1024 - 20);
        let body: String = (0..100).map(|i| format!("{i} stdout {text}\n")).collect();
        std::fs::write(&path, &body).unwrap();
        let (lines, pages, _) = read_all(&path, 10_000);
        assert_eq!(lines.len(), 100, "every line, each whole");
        assert!(lines.iter().all(|l| l.text == text));
        assert!(pages >= 6, "6 MiB in pages of at most 1 MiB, not {pages}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_without_line_ends_is_still_read_through() {
        let dir = std::env::temp_dir().join(format!("mlgw-local-endless-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("logs.txt");
        let body = "y".repeat(3 * MAX_PAGE_BYTES + 5);
        std::fs::write(&path, &body).unwrap();
        let (lines, pages, _) = read_all(&path, 10);
        let text: String = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(text, body, "every byte, in order");
        assert_eq!(pages, 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
