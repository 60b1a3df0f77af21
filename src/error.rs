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
    /// The payload type is larger than `EngineBuilder::MAX_PAYLOAD_SIZE`;
    /// box it.
    PayloadTooLarge {
        /// `size_of` the payload type, in bytes.
        size: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// `Policy::aggregate` or `Policy::histogram` was configured but the
    /// engine cannot read numbers from its payload type; call
    /// `EngineBuilder::sampled` (for payloads implementing `Sample`) or
    /// `EngineBuilder::sample_with`.
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
    /// The flusher thread died: a panic escaped its loop (a bug in the
    /// engine, or user code it runs, such as a sampler, that panicked).
    /// The engine is closed; the stats are as of the death (`pending`
    /// counts what will never be delivered, `flusher_died` is set). Every
    /// later publish, flush and shutdown reports it.
    FlusherDied(Box<Stats>),
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
            Error::PayloadTooLarge { size, max } => write!(
                f,
                "payload type is {size} bytes, over the limit of {max}: box it"
            ),
            Error::AggregateWithoutSampler { pattern } => write!(
                f,
                "pattern {pattern:?} aggregates (aggregate or histogram policy), but no sampler is set: call .sampled() or .sample_with(..) on the builder"
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
            Error::FlusherDied(stats) => write!(
                f,
                "the flusher thread died; {} accepted events will not be delivered",
                stats.pending
            ),
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
///
/// The `Full` message names the settings that avoid it:
///
/// ```
/// use ringfold::PublishError;
/// let full = PublishError::Full(7u64).to_string();
/// assert!(full.starts_with("producer ring is full"));
/// for setting in ["FullPolicy::Block", "ring_capacity", "flush"] {
///     assert!(full.contains(setting), "{full}");
/// }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum PublishError<T> {
    /// The producer's ring was full (after waiting, under
    /// `FullPolicy::Block` or for urgent events). Counted in stats. Avoided
    /// by `FullPolicy::Block` (`EngineBuilder::on_full`), a larger
    /// `EngineBuilder::ring_capacity`, or flushing between bursts; its
    /// message says so.
    Full(T),
    /// The engine was shut down. Counted in stats.
    ShutDown(T),
    /// The name was invalid (empty, an empty segment, `*`, too long).
    /// Counted in stats as `invalid_name`.
    InvalidName(T),
    /// The key was made by another engine (`Engine::key` of a different
    /// engine): refused, never delivered under this engine's name for the
    /// same id. Counted as `foreign_key`.
    ForeignKey(T),
    /// The name is new and the engine already interned
    /// `EngineBuilder::max_names` names. Counted as `too_many_names`.
    TooManyNames(T),
    /// The engine's flusher thread died (see [`Error::FlusherDied`]):
    /// nothing can be delivered any more. Counted as `flusher_died`.
    FlusherDied(T),
}

impl<T> PublishError<T> {
    /// Takes the payload back.
    pub fn into_inner(self) -> T {
        match self {
            PublishError::Full(t)
            | PublishError::ShutDown(t)
            | PublishError::InvalidName(t)
            | PublishError::ForeignKey(t)
            | PublishError::TooManyNames(t)
            | PublishError::FlusherDied(t) => t,
        }
    }
}

impl<T> fmt::Display for PublishError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PublishError::Full(_) => {
                "producer ring is full: the event was not accepted (counted in \
                 Stats::dropped.full); to avoid it, wait for space with \
                 EngineBuilder::on_full(FullPolicy::Block(timeout)) (or a longer timeout), \
                 give producers a larger EngineBuilder::ring_capacity, or flush between bursts"
            }
            PublishError::ShutDown(_) => "engine is shut down",
            PublishError::InvalidName(_) => "invalid event name",
            PublishError::ForeignKey(_) => "event key of another engine",
            PublishError::TooManyNames(_) => "too many distinct event names",
            PublishError::FlusherDied(_) => "the engine's flusher thread died",
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
            PublishError::ForeignKey(_) => "ForeignKey(..)",
            PublishError::TooManyNames(_) => "TooManyNames(..)",
            PublishError::FlusherDied(_) => "FlusherDied(..)",
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
/// let foreign = other.key("data:a:b")?; // same name, same id, other engine
/// let mut producer = engine.producer()?;
/// let mut events = vec![(good, 1), (foreign, 2), (good, 3)].into_iter();
/// match producer.publish_many(&mut events) {
///     Err(PublishManyError::ForeignKey { accepted, rejected }) => {
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
    /// `shut_down` (those with keys of another engine as `foreign_key`).
    ShutDown {
        /// The payloads handed back (those with foreign keys first).
        rejected: Vec<T>,
    },
    /// The engine's flusher thread died (see [`Error::FlusherDied`]);
    /// `rejected` as for `ShutDown`. Counted as `flusher_died`.
    FlusherDied {
        /// The payloads handed back.
        rejected: Vec<T>,
    },
    /// `accepted` events were published; `rejected` holds the payloads
    /// whose keys were made by another engine (counted as `foreign_key`).
    ForeignKey {
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
            | PublishManyError::FlusherDied { rejected }
            | PublishManyError::ForeignKey { rejected, .. } => rejected,
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
            PublishManyError::FlusherDied { rejected } => write!(
                f,
                "the engine's flusher thread died ({} payloads handed back)",
                rejected.len()
            ),
            PublishManyError::ForeignKey { accepted, rejected } => write!(
                f,
                "{} events with keys of another engine handed back ({accepted} published)",
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
            PublishManyError::FlusherDied { rejected } => f
                .debug_struct("FlusherDied")
                .field("rejected", &rejected.len())
                .finish(),
            PublishManyError::ForeignKey { accepted, rejected } => f
                .debug_struct("ForeignKey")
                .field("accepted", accepted)
                .field("rejected", &rejected.len())
                .finish(),
        }
    }
}

impl<T> std::error::Error for PublishManyError<T> {}
