//! Typed errors. Library code never panics on bad input: it returns one of
//! these, and every event it could not take is handed back to the caller.

use std::fmt;

use crate::stats::Stats;

/// Errors from building, configuring, interning, flushing or shutting down.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An event name was empty.
    EmptyName,
    /// An event name had an empty `:` segment (`a::b`, `:a`, `a:`).
    EmptySegment {
        /// The offending name.
        name: String,
    },
    /// An event name contained a character reserved for patterns (`*`).
    ReservedCharacter {
        /// The offending name.
        name: String,
    },
    /// An event name was longer than the configured limit.
    NameTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The engine already interned its maximum number of distinct names.
    TooManyNames {
        /// The configured limit (`EngineBuilder::max_names`).
        limit: usize,
    },
    /// A policy pattern could not be parsed.
    InvalidPattern {
        /// The pattern as given.
        pattern: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A builder setting was out of range (zero capacity, zero interval, ...).
    InvalidConfig(&'static str),
    /// `Policy::aggregate` was configured but the engine cannot read numbers
    /// from its payload type; call `EngineBuilder::sampled` (for payloads
    /// implementing `Sample`) or `EngineBuilder::sample_with`.
    AggregateWithoutSampler {
        /// The pattern that asked for aggregation.
        pattern: String,
    },
    /// `pin_flusher` named a core this machine does not have.
    CoreUnavailable {
        /// The requested core index.
        core: usize,
        /// How many cores `core_affinity` reports.
        available: usize,
    },
    /// The flusher thread could not be spawned.
    Spawn(std::io::Error),
    /// The engine has been shut down.
    ShutDown,
    /// `flush` was called from inside a subscriber's callback, i.e. on its
    /// delivery thread, which would wait for its own progress (the batch in
    /// hand). Events published before are still delivered in order.
    FlushFromSubscriber,
    /// A bounded shutdown or flush ran out of time; the report says what was
    /// still pending, and per subscriber what is queued or in its hands
    /// (`Stats::subscribers`). The rest goes on in the background.
    Timeout(Box<Stats>),
    /// The flusher thread died (a bug: subscriber panics are caught).
    FlusherDied,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::EmptyName => f.write_str("event name is empty"),
            Error::EmptySegment { name } => write!(f, "event name {name:?} has an empty segment"),
            Error::ReservedCharacter { name } => {
                write!(f, "event name {name:?} contains `*`, which is reserved for patterns")
            }
            Error::NameTooLong { len, max } => {
                write!(f, "event name is {len} bytes, over the limit of {max}")
            }
            Error::TooManyNames { limit } => {
                write!(f, "more than {limit} distinct event names (raise EngineBuilder::max_names)")
            }
            Error::InvalidPattern { pattern, reason } => {
                write!(f, "invalid pattern {pattern:?}: {reason}")
            }
            Error::InvalidConfig(what) => write!(f, "invalid configuration: {what}"),
            Error::AggregateWithoutSampler { pattern } => write!(
                f,
                "pattern {pattern:?} aggregates, but no sampler is set: call .sampled() or .sample_with(..) on the builder"
            ),
            Error::CoreUnavailable { core, available } => {
                write!(f, "cannot pin flusher to core {core}: {available} cores available")
            }
            Error::Spawn(e) => write!(f, "cannot spawn the flusher thread: {e}"),
            Error::ShutDown => f.write_str("the engine has been shut down"),
            Error::FlushFromSubscriber => {
                f.write_str("flush called from inside a subscriber's callback")
            }
            Error::Timeout(stats) => write!(
                f,
                "timed out with {} events still pending",
                stats.pending
            ),
            Error::FlusherDied => f.write_str("the flusher thread terminated unexpectedly"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Spawn(e) => Some(e),
            _ => None,
        }
    }
}

/// A publish that was not accepted; the payload comes back to the caller.
///
/// ```
/// use ringfold::{Engine, PublishError, Value};
/// let engine = Engine::<Value>::builder().build()?;
/// let mut producer = engine.producer()?;
/// engine.shutdown()?;
/// match producer.publish("data:users:created", Value::from(1)) {
///     Err(PublishError::ShutDown(v)) => assert_eq!(v, Value::from(1)),
///     other => panic!("unexpected {other:?}"),
/// }
/// # Ok::<(), ringfold::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum PublishError<T> {
    /// The producer's ring was full (after waiting, under
    /// `FullPolicy::Block` or for urgent events). Counted in stats.
    Full(T),
    /// The engine was shut down. Counted in stats.
    ShutDown(T),
    /// The name was invalid or could not be interned. Counted in stats.
    InvalidName(T),
}

impl<T> PublishError<T> {
    /// Takes the payload back.
    pub fn into_inner(self) -> T {
        match self {
            PublishError::Full(t) | PublishError::ShutDown(t) | PublishError::InvalidName(t) => t,
        }
    }
}

impl<T> fmt::Display for PublishError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PublishError::Full(_) => "producer ring is full",
            PublishError::ShutDown(_) => "engine is shut down",
            PublishError::InvalidName(_) => "invalid event name",
        })
    }
}

/// Shows the reason only: the payload need not be `Debug` (so that
/// `PublishError<T>` is an `Error` for every `T`), and telemetry payloads
/// do not belong in error logs.
impl<T> fmt::Debug for PublishError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PublishError::Full(_) => "Full(..)",
            PublishError::ShutDown(_) => "ShutDown(..)",
            PublishError::InvalidName(_) => "InvalidName(..)",
        })
    }
}

impl<T> std::error::Error for PublishError<T> {}

/// Why [`Producer::publish_many`](crate::Producer::publish_many) rejected
/// events, with their payloads handed back. Events the call never took off
/// the iterator (beyond what fit in the ring) are not rejections: they stay
/// in the iterator.
///
/// ```
/// use ringfold::{Engine, PublishManyError};
/// let engine = Engine::<u64>::builder().build()?;
/// let other = Engine::<u64>::builder().build()?;
/// let good = engine.key("data:a:b")?;
/// let foreign = other.key("data:a:b")?; // id 0 there too...
/// let unknown = other.key("data:a:c")?; // ...but id 1 is not interned here
/// let mut producer = engine.producer()?;
/// let mut events = vec![(good, 1), (unknown, 2), (foreign, 3)].into_iter();
/// match producer.publish_many(&mut events) {
///     Err(PublishManyError::InvalidName { accepted, rejected }) => {
///         assert_eq!(accepted, 2);
///         assert_eq!(rejected, vec![2]);
///     }
///     other => panic!("unexpected {other:?}"),
/// }
/// # Ok::<(), ringfold::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishManyError<T> {
    /// The engine is shut down. `rejected` holds every payload the call
    /// took and did not publish (none when the engine was already closed
    /// at the call: then every event is still in the iterator). Counted as
    /// `shut_down` (those with unknown keys as `invalid_name`).
    ShutDown {
        /// The payloads handed back (those with unknown keys first).
        rejected: Vec<T>,
    },
    /// `accepted` events were published; `rejected` holds the payloads
    /// whose keys are not interned in this engine (counted as
    /// `invalid_name`).
    InvalidName {
        /// Events published by the call.
        accepted: usize,
        /// The payloads handed back, in iteration order.
        rejected: Vec<T>,
    },
}

impl<T> PublishManyError<T> {
    /// Takes the rejected payloads back.
    pub fn into_rejected(self) -> Vec<T> {
        match self {
            PublishManyError::ShutDown { rejected }
            | PublishManyError::InvalidName { rejected, .. } => rejected,
        }
    }
}

impl<T> fmt::Display for PublishManyError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishManyError::ShutDown { rejected } => {
                write!(
                    f,
                    "engine is shut down ({} payloads handed back)",
                    rejected.len()
                )
            }
            PublishManyError::InvalidName { accepted, rejected } => write!(
                f,
                "{} events with unknown keys handed back ({accepted} published)",
                rejected.len()
            ),
        }
    }
}

/// Shows counts only, like `PublishError`'s `Debug`.
impl<T> fmt::Debug for PublishManyError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishManyError::ShutDown { rejected } => f
                .debug_struct("ShutDown")
                .field("rejected", &rejected.len())
                .finish(),
            PublishManyError::InvalidName { accepted, rejected } => f
                .debug_struct("InvalidName")
                .field("accepted", accepted)
                .field("rejected", &rejected.len())
                .finish(),
        }
    }
}

impl<T> std::error::Error for PublishManyError<T> {}
