//! Per-prefix delivery policies and the pattern table that assigns them.
//!
//! A policy is resolved once per interned event name (never per event) by
//! matching the name against the builder's patterns; the most specific
//! pattern wins.

use std::time::Duration;

use crate::error::Error;

/// How the events of a name are delivered.
///
/// ```
/// use ringfold::Policy;
/// use std::time::Duration;
/// let p = Policy::batch(Duration::from_millis(50), 100);
/// assert_eq!(p.window(), Some((Duration::from_millis(50), 100)));
/// assert_eq!(Policy::Passthrough.window(), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Real time: each event goes out on the sweep that takes it off its ring.
    Passthrough,
    /// Keep every event; emit when `interval` has elapsed since the first
    /// pending event of the prefix, or `max_count` events are pending.
    Batch {
        /// Window measured from the first pending event.
        interval: Duration,
        /// Count threshold.
        max_count: usize,
    },
    /// Within a window keep only the latest payload per key (the event name,
    /// or name plus the caller's sub-key); see `Batch::folded`.
    Latest {
        /// Window measured from the first pending event.
        interval: Duration,
        /// Threshold on events taken in (folded ones included).
        max_count: usize,
    },
    /// Fold numeric payloads into count/sum/min/max/mean/first/last per
    /// event name; see `Batch::aggregates`.
    Aggregate {
        /// Window measured from the first pending event.
        interval: Duration,
        /// Threshold on events taken in.
        max_count: usize,
    },
    /// Fold numeric payloads into a quantile sketch per event name: count,
    /// sum, min, max and quantiles within 1 %; see `Batch::histograms`.
    Histogram {
        /// Window measured from the first pending event.
        interval: Duration,
        /// Threshold on events taken in.
        max_count: usize,
    },
}

impl Policy {
    /// Accumulate every event for `interval` or `max_count` events.
    pub const fn batch(interval: Duration, max_count: usize) -> Policy {
        Policy::Batch {
            interval,
            max_count,
        }
    }

    /// Last value wins per key within the window.
    ///
    /// ```
    /// use ringfold::{Engine, Policy, Value};
    /// use std::time::Duration;
    /// let engine = Engine::<Value>::builder()
    ///     .policy("chat:*", Policy::latest(Duration::from_millis(33), 1000))
    ///     .build()?;
    /// # engine.shutdown()?;
    /// # Ok::<(), ringfold::Error>(())
    /// ```
    pub const fn latest(interval: Duration, max_count: usize) -> Policy {
        Policy::Latest {
            interval,
            max_count,
        }
    }

    /// Numeric aggregation per event name within the window.
    pub const fn aggregate(interval: Duration, max_count: usize) -> Policy {
        Policy::Aggregate {
            interval,
            max_count,
        }
    }

    /// Windowed quantiles per event name: within the window, each name's
    /// samples (read through `EngineBuilder::sample_with` or `sampled`,
    /// like [`aggregate`](Self::aggregate)'s, which the builder then
    /// requires) fold into a [`Histogram`](crate::Histogram): count, sum,
    /// min and max exactly, and any quantile (`p50`, `p90`, `p99`, `p999`,
    /// `quantile(q)`) within 1 % relative error of the exact one, from a
    /// DDSketch-style [`Sketch`](crate::Sketch). NaN and infinite samples,
    /// and payloads with no sample, are not numeric: counted as dropped
    /// (`Stats::dropped.not_numeric`, the batch's `dropped()`), as under
    /// `aggregate`. The window's sketches are reused by later windows: no
    /// allocation per window in steady state.
    ///
    /// ```
    /// use ringfold::{Batch, Engine, Policy};
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    /// let p99s = Arc::new(Mutex::new(Vec::new()));
    /// let sink = p99s.clone();
    /// let engine = Engine::<u64>::builder()
    ///     .policy("http:*", Policy::histogram(Duration::from_secs(1), 100_000))
    ///     .sample_with(|micros| Some(*micros as f64))
    ///     .subscriber(move |b: &Batch<u64>| {
    ///         for h in b.histograms() {
    ///             sink.lock().unwrap().push((h.name().to_owned(), h.count(), h.p99()));
    ///         }
    ///     })
    ///     .build()?;
    /// for us in 1..=1000u64 {
    ///     engine.publish("http:api:latency_us", us)?;
    /// }
    /// engine.flush()?;
    /// let (name, count, p99) = p99s.lock().unwrap()[0].clone();
    /// assert_eq!((name.as_str(), count), ("http:api:latency_us", 1000));
    /// // Exact: the sample of rank ⌊0.99 · 999⌋ = 989, i.e. 990.
    /// assert!((p99 - 990.0).abs() <= 0.01 * 990.0);
    /// # engine.shutdown()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub const fn histogram(interval: Duration, max_count: usize) -> Policy {
        Policy::Histogram {
            interval,
            max_count,
        }
    }

    /// `(interval, max_count)` for windowed policies, `None` for passthrough.
    pub const fn window(&self) -> Option<(Duration, usize)> {
        match *self {
            Policy::Passthrough => None,
            Policy::Batch {
                interval,
                max_count,
            }
            | Policy::Latest {
                interval,
                max_count,
            }
            | Policy::Aggregate {
                interval,
                max_count,
            }
            | Policy::Histogram {
                interval,
                max_count,
            } => Some((interval, max_count)),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        match self.window() {
            Some((interval, _)) if interval.is_zero() => {
                Err(Error::InvalidConfig("policy interval must be non-zero"))
            }
            Some((_, 0)) => Err(Error::InvalidConfig("policy max_count must be non-zero")),
            _ => Ok(()),
        }
    }

    /// The window the flusher applies: passthrough is a zero-length window
    /// with a count threshold of one.
    ///
    /// Intervals are capped at [`MAX_WINDOW`], so the flusher's `now +
    /// interval` cannot overflow the clock (`Policy::batch(Duration::MAX,
    /// ..)` used to panic the flusher on its first event).
    pub(crate) fn effective_window(&self) -> (Duration, usize) {
        let (interval, max_count) = self.window().unwrap_or((Duration::ZERO, 1));
        (interval.min(MAX_WINDOW), max_count)
    }
}

/// Longest window interval the flusher applies: about a century. A longer
/// one (up to `Duration::MAX`) is accepted and means "never closes on time":
/// only its count, an urgent event, a flush or shutdown closes it.
pub(crate) const MAX_WINDOW: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    /// `*`: exactly one segment when in the middle, one or more when last.
    Star,
}

/// A compiled `:`-separated pattern such as `chat:*` or `sentinel:*:status`.
///
/// ```
/// use ringfold::Pattern;
/// let p = Pattern::parse("sentinel:*:status")?;
/// assert!(p.matches("sentinel:job7:status"));
/// assert!(!p.matches("sentinel:job7:progress"));
/// assert!(Pattern::parse("chat:*")?.matches("chat:s1:delta"));
/// assert!(Pattern::parse("chat:**").is_err());
/// # Ok::<(), ringfold::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    source: Box<str>,
    segments: Vec<Segment>,
}

impl Pattern {
    /// Parses a pattern. Segments are literals or a lone `*`; empty
    /// segments and partial wildcards (`da*`) are rejected.
    pub fn parse(pattern: &str) -> Result<Pattern, Error> {
        let invalid = |reason: &'static str| Error::InvalidPattern {
            pattern: pattern.to_owned(),
            reason,
        };
        if pattern.is_empty() {
            return Err(invalid("empty pattern"));
        }
        let segments = pattern
            .split(':')
            .map(|s| match s {
                "" => Err(invalid("empty segment")),
                "*" => Ok(Segment::Star),
                s if s.contains('*') => Err(invalid("`*` must be a whole segment")),
                s => Ok(Segment::Literal(s.into())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pattern {
            source: pattern.into(),
            segments,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Does `name` match? A trailing `*` matches one or more segments, any
    /// other `*` exactly one.
    pub fn matches(&self, name: &str) -> bool {
        let mut parts = name.split(':');
        let last = self.segments.len() - 1;
        for (i, seg) in self.segments.iter().enumerate() {
            let Some(part) = parts.next() else {
                return false;
            };
            match seg {
                Segment::Literal(lit) if **lit != *part => return false,
                Segment::Star if i == last => return true,
                _ => {}
            }
        }
        parts.next().is_none()
    }

    /// Specificity for "most specific wins": more literal segments first,
    /// then more segments, then no trailing wildcard over a trailing one.
    fn specificity(&self) -> (usize, usize, bool) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        let trailing_star = matches!(self.segments.last(), Some(Segment::Star));
        (literals, self.segments.len(), !trailing_star)
    }
}

/// The resolved rule of a name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resolved {
    pub(crate) policy: Policy,
    pub(crate) urgent: bool,
}

/// Patterns with their policies, plus the urgent patterns.
#[derive(Debug, Clone)]
pub(crate) struct PolicyTable {
    pub(crate) default: Policy,
    pub(crate) rules: Vec<(Pattern, Policy)>,
    pub(crate) urgent: Vec<Pattern>,
}

impl PolicyTable {
    pub(crate) fn new(default: Policy) -> Self {
        PolicyTable {
            default,
            rules: Vec::new(),
            urgent: Vec::new(),
        }
    }

    /// Resolves a name once, at interning time. Among matching patterns the
    /// most specific wins; on a tie the one registered last wins (so a later
    /// `.policy()` call overrides an earlier one for the same pattern).
    pub(crate) fn resolve(&self, name: &str) -> Resolved {
        let policy = self
            .rules
            .iter()
            .filter(|(p, _)| p.matches(name))
            .max_by_key(|(p, _)| p.specificity())
            .map_or(self.default, |(_, policy)| *policy);
        let urgent = self.urgent.iter().any(|p| p.matches(name));
        Resolved { policy, urgent }
    }
}

/// The design's default policy table: the rules the project was built for.
///
/// | pattern | policy |
/// |---|---|
/// | `chat:*`, `presence:*`, `sentinel:*:status` | passthrough |
/// | `data:*` | batch 50 ms / 100 |
/// | `code_index:*` | batch 200 ms / 500 |
/// | `gpu:*` | aggregate 1000 ms / 50 |
/// | `training:*` | batch 500 ms / 20 |
///
/// ```
/// let rules = ringfold::default_rules();
/// assert_eq!(rules.len(), 7);
/// assert_eq!(rules[0].0, "chat:*");
/// ```
pub fn default_rules() -> Vec<(&'static str, Policy)> {
    let ms = Duration::from_millis;
    vec![
        ("chat:*", Policy::Passthrough),
        ("presence:*", Policy::Passthrough),
        ("sentinel:*:status", Policy::Passthrough),
        ("data:*", Policy::batch(ms(50), 100)),
        ("code_index:*", Policy::batch(ms(200), 500)),
        ("gpu:*", Policy::aggregate(ms(1000), 50)),
        ("training:*", Policy::batch(ms(500), 20)),
    ]
}

#[cfg(all(test, not(ringfold_loom)))]
mod tests {
    use super::*;

    #[test]
    fn trailing_star_needs_at_least_one_segment() {
        let p = Pattern::parse("chat:*").unwrap();
        assert!(p.matches("chat:a"));
        assert!(p.matches("chat:a:b:c"));
        assert!(!p.matches("chat"));
        assert!(!p.matches("chatter:a"));
    }

    #[test]
    fn middle_star_is_exactly_one_segment() {
        let p = Pattern::parse("sentinel:*:status").unwrap();
        assert!(p.matches("sentinel:x:status"));
        assert!(!p.matches("sentinel:x:y:status"));
        assert!(!p.matches("sentinel:status"));
    }

    #[test]
    fn exact_pattern() {
        let p = Pattern::parse("data:users:created").unwrap();
        assert!(p.matches("data:users:created"));
        assert!(!p.matches("data:users:created:x"));
        assert!(!p.matches("data:users"));
    }

    #[test]
    fn invalid_patterns_are_typed_errors() {
        for bad in ["", "a::b", ":a", "a:", "da*", "a:*b:c"] {
            assert!(
                matches!(Pattern::parse(bad), Err(Error::InvalidPattern { .. })),
                "{bad:?} must be rejected"
            );
        }
    }

    #[test]
    fn most_specific_wins() {
        let mut t = PolicyTable::new(Policy::batch(Duration::from_millis(1), 1));
        let fast = Policy::batch(Duration::from_millis(5), 5);
        let slow = Policy::batch(Duration::from_millis(500), 500);
        t.rules.push((
            Pattern::parse("sentinel:*:status").unwrap(),
            Policy::Passthrough,
        ));
        t.rules.push((Pattern::parse("sentinel:*").unwrap(), slow));
        t.rules
            .push((Pattern::parse("sentinel:job1:*").unwrap(), fast));
        assert_eq!(
            t.resolve("sentinel:job9:status").policy,
            Policy::Passthrough
        );
        assert_eq!(t.resolve("sentinel:job9:log").policy, slow);
        // Two literals beat one literal plus a trailing star ...
        assert_eq!(t.resolve("sentinel:job1:log").policy, fast);
        // ... and on equal literals a trailing wildcard loses.
        assert_eq!(
            t.resolve("sentinel:job1:status").policy,
            Policy::Passthrough
        );
        assert_eq!(t.resolve("other:x").policy, t.default);
    }

    #[test]
    fn zero_window_is_rejected() {
        assert!(Policy::batch(Duration::ZERO, 1).validate().is_err());
        assert!(Policy::latest(Duration::from_millis(1), 0)
            .validate()
            .is_err());
        assert!(Policy::Passthrough.validate().is_ok());
    }
}
