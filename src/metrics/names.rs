//! Prometheus' naming rules, checked once per series at registration.
//!
//! Metric names match `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names
//! `[a-zA-Z_][a-zA-Z0-9_]*` and must not start with `__` (reserved for
//! Prometheus' own labels); label values are any UTF-8 (always true of a
//! Rust `str`). The layer maps a name that breaks a rule (every invalid
//! character becomes `_`, a leading digit gets a `_` in front, a leading
//! `__` on a label name becomes `_`) and counts it; an empty metric name
//! cannot be mapped to anything meaningful and is refused (a no-op
//! handle), counted.

use std::borrow::Cow;
use std::fmt;

/// Why a metric or label name breaks Prometheus' rules.
///
/// ```
/// use ringfold::metrics::{check_metric_name, check_label_name, NameError};
/// assert_eq!(check_metric_name("http_requests_total"), Ok(()));
/// assert_eq!(check_metric_name(""), Err(NameError::Empty));
/// assert_eq!(check_metric_name("http.requests"), Err(NameError::InvalidChar { position: 4 }));
/// assert_eq!(check_label_name("__name"), Err(NameError::Reserved));
/// assert_eq!(check_label_name("a:b"), Err(NameError::InvalidChar { position: 1 }));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    Empty,
    /// The byte at `position` is not allowed there.
    InvalidChar {
        /// Byte offset of the first offending character.
        position: usize,
    },
    /// A label name starting with `__`, reserved for Prometheus.
    Reserved,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str("empty name"),
            NameError::InvalidChar { position } => {
                write!(f, "character at byte {position} not allowed by Prometheus")
            }
            NameError::Reserved => f.write_str("label names starting with `__` are reserved"),
        }
    }
}

impl std::error::Error for NameError {}

fn check(name: &str, colon: bool) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    for (i, c) in name.char_indices() {
        let ok = c.is_ascii_alphabetic()
            || c == '_'
            || (colon && c == ':')
            || (i > 0 && c.is_ascii_digit());
        if !ok {
            return Err(NameError::InvalidChar { position: i });
        }
    }
    Ok(())
}

/// Checks a metric name against `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn check_metric_name(name: &str) -> Result<(), NameError> {
    check(name, true)
}

/// Checks a label name against `[a-zA-Z_][a-zA-Z0-9_]*`, not starting
/// with `__`.
pub fn check_label_name(name: &str) -> Result<(), NameError> {
    check(name, false)?;
    if name.starts_with("__") {
        return Err(NameError::Reserved);
    }
    Ok(())
}

fn map(name: &str, colon: bool) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    for (i, c) in name.chars().enumerate() {
        if i == 0 && c.is_ascii_digit() {
            out.push('_');
            out.push(c);
        } else if c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':') {
            out.push(c);
        } else {
            out.push('_');
        }
    }
    out
}

/// The metric name Prometheus accepts: `name` itself when valid, else
/// every invalid character replaced by `_` and a leading digit prefixed
/// with `_`. `Err(NameError::Empty)` for an empty name.
///
/// ```
/// use ringfold::metrics::prometheus_metric_name;
/// assert_eq!(prometheus_metric_name("http.requests-total").unwrap(), "http_requests_total");
/// assert_eq!(prometheus_metric_name("5xx").unwrap(), "_5xx");
/// assert!(prometheus_metric_name("").is_err());
/// ```
pub fn prometheus_metric_name(name: &str) -> Result<Cow<'_, str>, NameError> {
    match check_metric_name(name) {
        Ok(()) => Ok(Cow::Borrowed(name)),
        Err(NameError::Empty) => Err(NameError::Empty),
        Err(_) => Ok(Cow::Owned(map(name, true))),
    }
}

/// The label name Prometheus accepts, mapped as
/// [`prometheus_metric_name`] (no `:`), and a reserved leading `__`
/// becomes `_`. An empty label name becomes `_`.
///
/// ```
/// use ringfold::metrics::prometheus_label_name;
/// assert_eq!(prometheus_label_name("otel.metric.overflow"), "otel_metric_overflow");
/// assert_eq!(prometheus_label_name("__name__"), "_name__");
/// ```
pub fn prometheus_label_name(name: &str) -> Cow<'_, str> {
    match check_label_name(name) {
        Ok(()) => Cow::Borrowed(name),
        Err(NameError::Empty) => Cow::Borrowed("_"),
        Err(_) => {
            let mut mapped = map(name, false);
            while mapped.starts_with("__") {
                mapped.remove(0);
            }
            Cow::Owned(mapped)
        }
    }
}
