//! Off the machine: a NATS JetStream [`Sink`] and [`Source`] (feature
//! `nats`).
//!
//! The sink subscribes to a pattern and publishes every batch as one
//! JetStream message in the [wire format](crate::wire), on subject
//! `<root>.<prefix tokens>` ([`subject_for`]), with the header
//! `Nats-Msg-Id: <origin>:<prefix>:<seq>-<last_seq>` ([`message_id`]), so a
//! retried publish within the stream's duplicate window is stored once.
//! The source reads the stream through a durable pull consumer,
//! acknowledges a message only once the caller's handler took it, and
//! reports, per origin and prefix, the gaps and duplicates in the batches'
//! sequence numbers.
//!
//! ```no_run
//! use ringfold::nats::{Sink, SinkConfig};
//! use ringfold::{Engine, Value};
//! use std::time::Duration;
//! let engine = Engine::<Value>::builder().build()?;
//! let sink = Sink::spawn(&engine, "*", SinkConfig::new("nats://127.0.0.1:4222"))?;
//! engine.publish("data:users:created", 1u64)?;
//! engine.shutdown()?;
//! let stats = sink.shutdown_timeout(Duration::from_secs(5))?;
//! assert_eq!(stats.landed(), stats.batches);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! See `docs/nats.md` for the subject mapping, the accounting, and what
//! happens while the server is down.

mod sink;
mod source;

/// docs/nats.md's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/nats.md")]
pub struct NatsGuide;

pub use sink::{Sink, SinkConfig, SinkHandle, SinkStats, SinkTask};
pub use source::{BlockingSource, Delivery, SeqRanges, Source, SourceConfig, SourceStats};

use std::fmt;

use crate::wire::{Origin, WireError};

/// What went wrong in the NATS sink or source.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The server URL does not parse.
    BadUrl {
        /// The URL given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// A setting is out of range (e.g. a duplicate window not longer than
    /// the retry horizon, a subject root or stream name NATS refuses).
    BadConfig(String),
    /// The engine refused the subscription.
    Engine(crate::Error),
    /// The connection failed.
    Connect(String),
    /// The stream exists but its subjects do not cover the sink's
    /// `<root>.>`.
    StreamConflict {
        /// Stream name.
        stream: String,
        /// Its subjects.
        subjects: Vec<String>,
        /// The subjects the sink needs.
        wanted: String,
    },
    /// The source's stream does not exist.
    UnknownStream(String),
    /// An encoded batch is larger than the server's `max_payload`: it is
    /// refused (not split), and counted in [`SinkStats::oversize`].
    Oversize {
        /// The batch's prefix.
        prefix: String,
        /// Its first sequence number.
        seq: u64,
        /// Encoded size, bytes (with the headers).
        bytes: usize,
        /// The server's limit.
        max_payload: usize,
    },
    /// A batch could not be encoded.
    Encode(WireError),
    /// A message could not be decoded (terminated on the server, counted
    /// in [`SourceStats::undecodable`]).
    Decode {
        /// Its stream sequence number.
        stream_seq: u64,
        /// Why.
        error: WireError,
    },
    /// A JetStream request failed.
    JetStream(String),
    /// The sink's or source's runtime could not be started.
    Runtime(std::io::Error),
    /// The operation did not finish in time.
    Timeout,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadUrl { url, reason } => write!(f, "bad NATS URL {url:?}: {reason}"),
            Error::BadConfig(why) => write!(f, "bad NATS configuration: {why}"),
            Error::Engine(e) => write!(f, "engine: {e}"),
            Error::Connect(e) => write!(f, "NATS connect: {e}"),
            Error::StreamConflict {
                stream,
                subjects,
                wanted,
            } => write!(
                f,
                "stream {stream} exists with subjects {subjects:?}, which do not cover {wanted}"
            ),
            Error::UnknownStream(s) => write!(f, "stream {s} does not exist"),
            Error::Oversize {
                prefix,
                seq,
                bytes,
                max_payload,
            } => write!(
                f,
                "batch {prefix} #{seq} is {bytes} bytes, over the server's max_payload {max_payload}"
            ),
            Error::Encode(e) => write!(f, "encode: {e}"),
            Error::Decode { stream_seq, error } => {
                write!(f, "message {stream_seq} does not decode: {error}")
            }
            Error::JetStream(e) => write!(f, "JetStream: {e}"),
            Error::Runtime(e) => write!(f, "runtime: {e}"),
            Error::Timeout => f.write_str("timed out"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Engine(e) => Some(e),
            Error::Encode(e) | Error::Decode { error: e, .. } => Some(e),
            Error::Runtime(e) => Some(e),
            _ => None,
        }
    }
}

impl From<crate::Error> for Error {
    fn from(e: crate::Error) -> Self {
        Error::Engine(e)
    }
}

/// Parses a server URL (`nats://host:port`, `host:port`, or several
/// separated by commas) into addresses, or a [`Error::BadUrl`].
///
/// ```
/// use ringfold::nats::{parse_url, Error};
/// assert!(parse_url("nats://127.0.0.1:4222").is_ok());
/// assert!(matches!(parse_url("nats://[::1"), Err(Error::BadUrl { .. })));
/// assert!(matches!(parse_url(""), Err(Error::BadUrl { .. })));
/// ```
pub fn parse_url(url: &str) -> Result<Vec<async_nats::ServerAddr>, Error> {
    let bad = |reason: String| Error::BadUrl {
        url: url.to_owned(),
        reason,
    };
    let parts: Vec<&str> = url.split(',').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad("empty server address".to_owned()));
    }
    parts
        .into_iter()
        .map(|p| {
            let addr: async_nats::ServerAddr = p.parse().map_err(|e| bad(format!("{e}")))?;
            if addr.host().is_empty() {
                return Err(bad("no host".to_owned()));
            }
            Ok(addr)
        })
        .collect()
}

/// Bytes a subject token may not hold as themselves (written `%XX`):
/// whitespace and control characters, `.` (the token separator), the
/// wildcards `*` and `>`, and `%` (the escape itself).
fn escaped(b: u8) -> bool {
    b <= b' ' || b == 0x7f || matches!(b, b'.' | b'*' | b'>' | b'%')
}

fn escape_token(token: &str, out: &mut String) {
    if token.is_empty() {
        // An empty token is illegal in a subject; a lone `%` (an escape is
        // always `%` and two hex digits) names it unambiguously.
        out.push('%');
        return;
    }
    for ch in token.chars() {
        if ch.is_ascii() && escaped(ch as u8) {
            out.push_str(&format!("%{:02X}", ch as u8));
        } else {
            out.push(ch);
        }
    }
}

/// The subject a batch of `prefix` is published on: `root`, then each
/// `:`-separated token of the prefix as one subject token, with the bytes
/// NATS forbids in a token (whitespace and control characters, `.`, `*`,
/// `>`, and `%` itself) written `%XX` (upper-case hex) and an empty token
/// written `%`. The mapping is one-to-one ([`prefix_of`] inverts it).
///
/// ```
/// use ringfold::nats::{prefix_of, subject_for};
/// assert_eq!(subject_for("ringfold", "data:users"), "ringfold.data.users");
/// assert_eq!(subject_for("rf", "a b:*:>:v1.2::x%"), "rf.a%20b.%2A.%3E.v1%2E2.%.x%25");
/// assert_eq!(prefix_of("rf", "rf.a%20b.%2A.%3E.v1%2E2.%.x%25").as_deref(), Some("a b:*:>:v1.2::x%"));
/// ```
pub fn subject_for(root: &str, prefix: &str) -> String {
    let mut out = String::with_capacity(root.len() + prefix.len() + 8);
    out.push_str(root);
    for token in prefix.split(':') {
        out.push('.');
        escape_token(token, &mut out);
    }
    out
}

/// The prefix a subject of [`subject_for`] carries, or `None` if `subject`
/// is not under `root` or not a mapping's output.
pub fn prefix_of(root: &str, subject: &str) -> Option<String> {
    let rest = subject.strip_prefix(root)?.strip_prefix('.')?;
    let mut out = String::with_capacity(rest.len());
    for (i, token) in rest.split('.').enumerate() {
        if i > 0 {
            out.push(':');
        }
        if token == "%" {
            continue;
        }
        let bytes = token.as_bytes();
        let mut j = 0;
        let mut raw = Vec::with_capacity(bytes.len());
        while j < bytes.len() {
            if bytes[j] == b'%' {
                let hex = token.get(j + 1..j + 3)?;
                raw.push(u8::from_str_radix(hex, 16).ok()?);
                j += 3;
            } else {
                raw.push(bytes[j]);
                j += 1;
            }
        }
        out.push_str(std::str::from_utf8(&raw).ok()?);
    }
    Some(out)
}

/// The `Nats-Msg-Id` of a batch: `<origin>:<prefix>:<seq>-<last_seq>`,
/// with the prefix's control characters and `%` written `%XX` (a header
/// value cannot hold a line break). Unique per batch within one engine
/// run, the same for every retry of it.
///
/// ```
/// use ringfold::nats::message_id;
/// use ringfold::wire::Origin;
/// let origin = Origin::with("node-7", 0xabc);
/// assert_eq!(message_id(&origin, "data:users", 4, 6), "node-7/0000000000000abc:data:users:4-6");
/// ```
pub fn message_id(origin: &Origin, prefix: &str, seq: u64, last_seq: u64) -> String {
    let mut id = format!("{origin}:");
    for ch in prefix.chars() {
        if ch.is_control() || ch == '%' {
            id.push_str(&format!("%{:02X}", ch as u32));
        } else {
            id.push(ch);
        }
    }
    id.push_str(&format!(":{seq}-{last_seq}"));
    id
}

/// True if the stream subject `pattern` matches every subject under `root`
/// (`root.>`).
fn covers(pattern: &str, root: &str) -> bool {
    let mut p = pattern.split('.');
    for r in root.split('.') {
        match p.next() {
            Some(">") => return true,
            Some(t) if t == "*" || t == r => {}
            _ => return false,
        }
    }
    p.next() == Some(">")
}

/// A subject root NATS accepts: non-empty tokens without whitespace or
/// wildcards.
fn valid_root(root: &str) -> bool {
    !root.is_empty()
        && root.split('.').all(|t| {
            !t.is_empty()
                && !t
                    .bytes()
                    .any(|b| b <= b' ' || b == 0x7f || b == b'*' || b == b'>')
        })
}

/// A stream or consumer name NATS accepts.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .bytes()
            .any(|b| b <= b' ' || b == 0x7f || matches!(b, b'.' | b'*' | b'>' | b'/' | b'\\'))
}

#[cfg(all(test, not(ringfold_loom)))]
mod tests {
    use super::*;

    #[test]
    fn subject_mapping_is_one_to_one_and_legal() {
        for prefix in [
            "data:users",
            "a b:c",
            "x.y",
            "*",
            ">",
            "",
            "::",
            "%41",
            "tab\there",
            "ünï:cödé",
            "new\nline",
        ] {
            let subject = subject_for("root.sub", prefix);
            assert!(
                subject
                    .split('.')
                    .all(|t| !t.is_empty() && !t.contains([' ', '\t', '\n', '*', '>'])),
                "{prefix:?} -> {subject:?}"
            );
            assert_eq!(prefix_of("root.sub", &subject).as_deref(), Some(prefix));
        }
        assert_ne!(subject_for("r", "a:b"), subject_for("r", "a.b"));
        assert_eq!(prefix_of("r", "other.a"), None);
        assert_eq!(prefix_of("r", "r.%zz"), None);
    }

    #[test]
    fn coverage() {
        assert!(covers(">", "ringfold"));
        assert!(covers("ringfold.>", "ringfold"));
        assert!(covers("*.>", "ringfold"));
        assert!(covers("a.>", "a.b"));
        assert!(!covers("ringfold.*", "ringfold"));
        assert!(!covers("ringfold", "ringfold"));
        assert!(!covers("ringfold.x.>", "ringfold"));
        assert!(!covers("other.>", "ringfold"));
    }

    #[test]
    fn names_and_roots() {
        assert!(valid_root("a.b"));
        assert!(!valid_root("a..b"));
        assert!(!valid_root("a.*"));
        assert!(!valid_root(""));
        assert!(valid_name("RINGFOLD"));
        assert!(!valid_name("a.b"));
        assert!(!valid_name(""));
    }

    #[test]
    fn message_ids_escape_line_breaks() {
        let id = message_id(&Origin::with("h", 1), "a\r\nb%", 0, 0);
        assert!(!id.contains(['\r', '\n']));
        assert!(id.ends_with(":a%0D%0Ab%25:0-0"));
    }
}
