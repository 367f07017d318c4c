//! Sizes of what a plugin returns, checked at the WIT boundary before any of it is stored or
//! answered. A plugin's status message goes into the job record, every List and every Watch
//! event; a backend-ref is stored with the record and handed back on every call. Unbounded,
//! one misbehaving plugin makes every unfiltered List too big for any client, or its own
//! Submit unanswerable. Data (refs, URIs, log pages) over its limit is refused with an error
//! naming the target and the config key; a backend's error text is cut instead, since the call
//! is failing anyway and its reason is still worth showing.

use crate::config::Limits;

use super::PluginError;

/// The limits for one call of one target.
#[derive(Clone, Copy)]
pub struct Bounds<'a> {
    pub target: &'a str,
    pub limits: &'a Limits,
}

/// Marks text that was cut.
const CUT: &str = "…";

/// `s` cut at a char boundary to at most `max` bytes (plus the marker).
pub fn cut(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max.saturating_sub(CUT.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(CUT);
    s
}

impl Bounds<'_> {
    fn over(&self, what: &str, size: usize, limit: usize, key: &'static str) -> PluginError {
        PluginError::Oversized {
            target: self.target.to_string(),
            what: what.to_string(),
            size,
            limit,
            key,
        }
    }

    /// A short text: a name, a state word, a status message, a URI.
    pub fn text(&self, what: &str, s: &str) -> Result<(), PluginError> {
        let limit = self.limits.max_plugin_text_bytes;
        if s.len() > limit {
            return Err(self.over(what, s.len(), limit, "max_plugin_text_bytes"));
        }
        Ok(())
    }

    pub fn opt_text(&self, what: &str, s: &Option<String>) -> Result<(), PluginError> {
        s.as_deref().map_or(Ok(()), |s| self.text(what, s))
    }

    /// A backend-ref's opaque data.
    pub fn ref_data(&self, what: &str, s: &str) -> Result<(), PluginError> {
        let limit = self.limits.max_plugin_ref_bytes;
        if s.len() > limit {
            return Err(self.over(what, s.len(), limit, "max_plugin_ref_bytes"));
        }
        Ok(())
    }

    /// A page of log lines: no more lines than asked for, and bounded in bytes.
    pub fn log_page(&self, lines: usize, asked: u32, bytes: usize) -> Result<(), PluginError> {
        if lines > asked as usize {
            return Err(PluginError::Contract {
                target: self.target.to_string(),
                message: format!(
                    "training-logs returned {lines} lines when at most {asked} were asked for"
                ),
            });
        }
        let limit = self.limits.max_plugin_log_page_bytes;
        if bytes > limit {
            return Err(self.over("log page", bytes, limit, "max_plugin_log_page_bytes"));
        }
        Ok(())
    }

    /// A backend's error text, cut to fit.
    pub fn error_text(&self, s: String) -> String {
        cut(s, self.limits.max_plugin_text_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_char_boundaries() {
        assert_eq!(cut("abc".into(), 10), "abc");
        assert_eq!(cut("abcdefgh".into(), 6), "abc…");
        let s = cut("éééééé".into(), 7);
        assert!(s.len() <= 7 && s.ends_with('…'), "{s}");
    }

    #[test]
    fn data_over_its_limit_is_refused_naming_the_key() {
        let limits = Limits {
            max_plugin_text_bytes: 4,
            max_plugin_ref_bytes: 8,
            max_plugin_log_page_bytes: 16,
            ..Limits::default()
        };
        let b = Bounds {
            target: "t",
            limits: &limits,
        };
        assert!(b.text("message", "1234").is_ok());
        let e = b.text("message", "12345").unwrap_err().to_string();
        assert!(
            e.contains("target t") && e.contains("limits.max_plugin_text_bytes"),
            "{e}"
        );
        assert!(b.ref_data("backend-ref data", &"x".repeat(9)).is_err());
        assert!(b.log_page(3, 3, 16).is_ok());
        assert!(matches!(
            b.log_page(4, 3, 1),
            Err(PluginError::Contract { .. })
        ));
        assert!(b.log_page(1, 3, 17).is_err());
    }
}
