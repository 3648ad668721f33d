//! What a scan means. One parser serves the fixture's serial scanner and the web scan box.
//!
//! A scan is a serial number (checked against the product's pattern), an operator badge
//! `OP:<badge>`, or a command `CMD:ABORT` / `CMD:RETRY`. Anything else is rejected with a
//! message that shows what was read, with non-printable bytes escaped.

use std::fmt;

use regex::Regex;
use secrecy::{ExposeSecret, SecretString};

use crate::ids::{BadId, SerialNumber};

/// Longest scan accepted, in bytes. Real labels hold far less; a longer line is noise.
pub const DEFAULT_MAX_LEN: usize = 128;

/// An operator's badge code. It logs a person on, so it is a credential: never printed.
#[derive(Clone)]
pub struct Badge(SecretString);

impl Badge {
    /// A badge code given another way than a scan (the command line).
    #[must_use]
    pub fn new(code: SecretString) -> Self {
        Self(code)
    }

    /// The code, for hashing and lookup only.
    #[must_use]
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Badge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Badge(<redacted>)")
    }
}

/// A scan that was understood.
#[derive(Debug, Clone)]
pub enum Scan {
    /// A unit's serial number.
    Serial(SerialNumber),
    /// An operator badge: log this person on to the fixture.
    Operator(Badge),
    /// Abort the unit on the fixture.
    Abort,
    /// Retry the failed unit on the fixture.
    Retry,
}

impl Scan {
    /// A short description safe to show and log (badges are not shown).
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Scan::Serial(s) => format!("serial {s}"),
            Scan::Operator(_) => "operator badge".to_owned(),
            Scan::Abort => "CMD:ABORT".to_owned(),
            Scan::Retry => "CMD:RETRY".to_owned(),
        }
    }
}

/// Why a scan was refused. Messages show what was read (escaped), never a badge code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanRejected {
    /// Nothing but white space.
    #[error("empty scan")]
    Empty,
    /// Longer than any label.
    #[error("scan of {len} bytes is too long (at most {max}); starts {start}")]
    TooLong {
        /// Bytes read before the line ended.
        len: usize,
        /// The limit.
        max: usize,
        /// The first bytes, escaped.
        start: String,
    },
    /// Bytes that are not printable ASCII: line noise or a misconfigured scanner.
    #[error("scan contains binary data: {escaped}")]
    Binary {
        /// The scan, escaped.
        escaped: String,
    },
    /// `CMD:` with a command that does not exist.
    #[error("unknown command {escaped} (known: CMD:ABORT, CMD:RETRY)")]
    UnknownCommand {
        /// The scan, escaped.
        escaped: String,
    },
    /// `OP:` with nothing after it.
    #[error("operator badge scan without a badge code")]
    EmptyBadge,
    /// A serial that the product's pattern does not match.
    #[error("{escaped} does not match this product's serial pattern {pattern}")]
    Pattern {
        /// The scan, escaped.
        escaped: String,
        /// The product's pattern.
        pattern: String,
    },
    /// A serial the pattern allows but the station cannot use as an identifier.
    #[error("{0}")]
    Serial(BadId),
}

/// Escapes a scan for display: printable ASCII as is, everything else as `\xNN`, `\r`, `\n`.
/// What follows a badge prefix (`OP:`, in any case, after leading white space) is not shown,
/// however malformed the scan: a badge read with line noise or cut off is still a credential.
#[must_use]
pub fn escape(bytes: &[u8]) -> String {
    let lead = bytes.len() - bytes.trim_ascii_start().len();
    let (shown, hidden) = match bytes.get(lead..lead + BADGE_PREFIX.len()) {
        Some(p) if p.eq_ignore_ascii_case(BADGE_PREFIX) => bytes.split_at(lead + p.len()),
        _ => (bytes, &[][..]),
    };
    let mut s = String::with_capacity(shown.len() + 2);
    s.push('"');
    for &b in shown {
        s.extend(std::ascii::escape_default(b).map(char::from));
    }
    if !hidden.is_empty() {
        s.push_str(&format!("<badge code, {} bytes, not shown>", hidden.len()));
    }
    s.push('"');
    s
}

/// What starts an operator badge scan (the parser takes it in upper case only).
const BADGE_PREFIX: &[u8] = b"OP:";

/// Parses scans for one product.
#[derive(Debug, Clone)]
pub struct ScanParser {
    pattern: Regex,
    max_len: usize,
}

impl ScanParser {
    /// A parser checking serials against `pattern` (anchored: the whole scan must match).
    pub fn new(pattern: &str, max_len: usize) -> Result<Self, regex::Error> {
        let anchored = format!("^(?:{pattern})$");
        Ok(Self {
            pattern: Regex::new(&anchored)?,
            max_len,
        })
    }

    /// The longest scan accepted.
    #[must_use]
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The pattern as configured (anchored form).
    #[must_use]
    pub fn pattern(&self) -> &str {
        self.pattern.as_str()
    }

    /// Parses one line (terminator already removed). Surrounding white space is trimmed.
    pub fn parse(&self, line: &[u8]) -> Result<Scan, ScanRejected> {
        if line.len() > self.max_len {
            return Err(ScanRejected::TooLong {
                len: line.len(),
                max: self.max_len,
                start: escape(&line[..line.len().min(24)]),
            });
        }
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            return Err(ScanRejected::Empty);
        }
        if !trimmed.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            return Err(ScanRejected::Binary {
                escaped: escape(trimmed),
            });
        }
        // Printable ASCII only from here: the conversion cannot fail.
        let text = String::from_utf8_lossy(trimmed);
        if let Some(badge) = text.strip_prefix("OP:") {
            let badge = badge.trim();
            if badge.is_empty() {
                return Err(ScanRejected::EmptyBadge);
            }
            return Ok(Scan::Operator(Badge(SecretString::from(badge.to_owned()))));
        }
        if let Some(cmd) = text.strip_prefix("CMD:") {
            return match cmd.trim().to_ascii_uppercase().as_str() {
                "ABORT" => Ok(Scan::Abort),
                "RETRY" => Ok(Scan::Retry),
                _ => Err(ScanRejected::UnknownCommand {
                    escaped: escape(trimmed),
                }),
            };
        }
        if !self.pattern.is_match(&text) {
            return Err(ScanRejected::Pattern {
                escaped: escape(trimmed),
                pattern: self.pattern.as_str().to_owned(),
            });
        }
        SerialNumber::new(text.into_owned())
            .map(Scan::Serial)
            .map_err(ScanRejected::Serial)
    }
}

/// Splits a byte stream into lines ending in CR, LF or CRLF. A line longer than `max_len` is
/// reported once as too long and the rest of it, up to its terminator, is dropped.
pub struct LineSplitter {
    buf: Vec<u8>,
    max_len: usize,
    overflowed: usize,
    last_was_cr: bool,
}

/// One item out of the splitter. Its Debug output escapes the bytes as [`escape`] does, so a
/// badge line is not shown.
#[derive(Clone, PartialEq, Eq)]
pub enum Line {
    /// A complete line, terminator removed.
    Complete(Vec<u8>),
    /// A line that exceeded the limit: its length and first bytes.
    TooLong {
        /// How many bytes it had.
        len: usize,
        /// Its first bytes.
        start: Vec<u8>,
    },
}

impl fmt::Debug for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Line::Complete(b) => write!(f, "Complete({})", escape(b)),
            Line::TooLong { len, start } => {
                write!(f, "TooLong {{ len: {len}, start: {} }}", escape(start))
            }
        }
    }
}

/// The bytes of a line still being read are not shown: they may be a badge's.
impl fmt::Debug for LineSplitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineSplitter")
            .field("buffered", &self.buf.len())
            .field("max_len", &self.max_len)
            .field("overflowed", &self.overflowed)
            .finish()
    }
}

impl LineSplitter {
    /// A splitter with a line limit.
    #[must_use]
    pub fn new(max_len: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_len,
            overflowed: 0,
            last_was_cr: false,
        }
    }

    /// Feeds bytes; returns the lines they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        for &b in bytes {
            let was_cr = std::mem::replace(&mut self.last_was_cr, b == b'\r');
            if b == b'\n' && was_cr {
                continue; // the LF of a CRLF
            }
            if b == b'\r' || b == b'\n' {
                if self.overflowed > 0 {
                    out.push(Line::TooLong {
                        len: self.overflowed,
                        start: std::mem::take(&mut self.buf),
                    });
                    self.overflowed = 0;
                } else if !self.buf.is_empty() {
                    out.push(Line::Complete(std::mem::take(&mut self.buf)));
                }
                continue;
            }
            if self.overflowed > 0 {
                self.overflowed += 1;
            } else if self.buf.len() >= self.max_len {
                self.overflowed = self.buf.len() + 1;
                self.buf.truncate(24);
            } else {
                self.buf.push(b);
            }
        }
        out
    }
}

/// Drops a scan identical to the previous one within a window: scanners double-read labels.
/// It keeps the last scan's SHA-256, not the scan: that may be a badge. Neither is shown.
pub struct Debouncer {
    window: std::time::Duration,
    last: Option<([u8; 32], std::time::Instant)>,
}

impl fmt::Debug for Debouncer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Debouncer")
            .field("window", &self.window)
            .field("last_at", &self.last.as_ref().map(|(_, at)| at))
            .finish()
    }
}

impl Debouncer {
    /// A debouncer with the given window (zero disables it).
    #[must_use]
    pub fn new(window: std::time::Duration) -> Self {
        Self { window, last: None }
    }

    /// Whether this scan should be acted on (false for a repeat within the window).
    pub fn accept(&mut self, line: &[u8], now: std::time::Instant) -> bool {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(line).into();
        if let Some((prev, at)) = &self.last
            && *prev == digest
            && now.duration_since(*at) < self.window
        {
            return false;
        }
        self.last = Some((digest, now));
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn parser() -> ScanParser {
        ScanParser::new(r"SN-[0-9]{6}", DEFAULT_MAX_LEN).unwrap()
    }

    #[test]
    fn serials_badges_and_commands() {
        let p = parser();
        assert!(
            matches!(p.parse(b"  SN-000123 "), Ok(Scan::Serial(s)) if s.as_str() == "SN-000123")
        );
        let Ok(Scan::Operator(b)) = p.parse(b"OP:4711-secret") else {
            panic!("badge")
        };
        assert_eq!(b.expose(), "4711-secret");
        assert_eq!(format!("{b:?}"), "Badge(<redacted>)");
        assert!(matches!(p.parse(b"CMD:ABORT"), Ok(Scan::Abort)));
        assert!(matches!(p.parse(b"CMD:retry"), Ok(Scan::Retry)));
    }

    #[test]
    fn rejections_show_what_was_read() {
        let p = parser();
        assert!(matches!(p.parse(b"   "), Err(ScanRejected::Empty)));
        let e = p.parse(b"SN-00\x00\xff12").unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"scan contains binary data: "SN-00\x00\xff12""#
        );
        let e = p.parse(b"SN-12").unwrap_err();
        assert!(e.to_string().contains(r#""SN-12" does not match"#), "{e}");
        assert!(e.to_string().contains("SN-[0-9]{6}"), "{e}");
        assert!(matches!(
            p.parse(b"CMD:REBOOT"),
            Err(ScanRejected::UnknownCommand { .. })
        ));
        assert!(matches!(p.parse(b"OP:  "), Err(ScanRejected::EmptyBadge)));
        let long = vec![b'A'; 200];
        assert!(matches!(
            p.parse(&long),
            Err(ScanRejected::TooLong { len: 200, .. })
        ));
        // A pattern wider than the serial alphabet still cannot smuggle in a bad identifier.
        let wide = ScanParser::new(r".+", DEFAULT_MAX_LEN).unwrap();
        assert!(matches!(wide.parse(b"SN 1"), Err(ScanRejected::Serial(_))));
    }

    #[test]
    fn a_malformed_badge_scan_never_shows_the_code() {
        let p = parser();
        // Checked by its letters: the digits could turn up in a Debug-printed Instant.
        let code = "4711-secret";
        let mut long = format!("OP:{code}").into_bytes();
        long.resize(200, b'x');
        let mut cut = LineSplitter::new(16);
        let lines = cut.feed(format!("  OP:{code}{code}\r").as_bytes());
        let rejections = [
            // Line noise in a badge scan, a badge too long for a label, a lower-case prefix
            // (a scanner's caps lock) that makes it read as a serial.
            p.parse(format!("OP:{code}\x07").as_bytes()).unwrap_err(),
            p.parse(&long).unwrap_err(),
            p.parse(format!("op:{code}").as_bytes()).unwrap_err(),
        ];
        for e in &rejections {
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("secret"), "{shown}");
            assert!(shown.contains("<badge code, "), "{shown}");
        }
        assert_eq!(
            rejections[0].to_string(),
            r#"scan contains binary data: "OP:<badge code, 12 bytes, not shown>""#
        );
        assert!(
            rejections[2]
                .to_string()
                .starts_with(r#""op:<badge code, 11 bytes"#)
        );
        let shown = format!("{lines:?} {cut:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("TooLong { len: 27, "), "{shown}");
        // A whole badge line, as the splitter hands it on, and the debouncer that saw it.
        let mut d = Debouncer::new(Duration::from_millis(500));
        let line = cut.feed(format!("OP:{code}\r").as_bytes());
        assert!(d.accept(format!("OP:{code}").as_bytes(), Instant::now()));
        let shown = format!("{line:?} {d:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(
            shown.starts_with(r#"[Complete("OP:<badge code, 11 bytes"#),
            "{shown}"
        );
        assert!(!shown.contains("last: "), "{shown}");
    }

    #[test]
    fn lines_end_in_cr_lf_or_crlf_and_overlong_lines_are_reported_once() {
        let mut s = LineSplitter::new(16);
        let mut got = s.feed(b"A1\rB2\nC3\r\nD4");
        got.extend(s.feed(b"\r\n\r\n"));
        assert_eq!(
            got,
            vec![
                Line::Complete(b"A1".to_vec()),
                Line::Complete(b"B2".to_vec()),
                Line::Complete(b"C3".to_vec()),
                Line::Complete(b"D4".to_vec()),
            ]
        );
        let mut got = s.feed(&[b'x'; 40]);
        got.extend(s.feed(b"\rOK\r"));
        assert_eq!(got.len(), 2);
        assert!(matches!(&got[0], Line::TooLong { len: 40, .. }));
        assert_eq!(got[1], Line::Complete(b"OK".to_vec()));
    }

    #[test]
    fn repeated_scans_inside_the_window_are_dropped() {
        let mut d = Debouncer::new(Duration::from_millis(500));
        let t0 = Instant::now();
        assert!(d.accept(b"SN-1", t0));
        assert!(!d.accept(b"SN-1", t0 + Duration::from_millis(100)));
        assert!(d.accept(b"SN-2", t0 + Duration::from_millis(200)));
        assert!(d.accept(b"SN-1", t0 + Duration::from_millis(300)));
        assert!(d.accept(b"SN-1", t0 + Duration::from_millis(900)));
    }
}
