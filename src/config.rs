//! Engine settings, fixed at build time, and their validation.

use std::time::Duration;

use crate::error::Error;
use crate::record::MAX_NAMES;

/// What a producer does when its ring is full.
///
/// ```
/// use std::time::Duration;
/// use ringfold::{Engine, FullPolicy};
/// let engine = Engine::<u64>::builder()
///     .on_full(FullPolicy::Block(Duration::from_millis(10)))
///     .build()?;
/// # Ok::<(), ringfold::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FullPolicy {
    /// Hand the payload back as `PublishError::Full` at once and count it
    /// (LTTng's discard mode). The default: the hot path never blocks.
    DropNewest,
    /// Wake the flusher and wait up to the timeout for space, then hand the
    /// payload back as `Full` and count it.
    Block(Duration),
}

/// Engine settings, fixed at build time.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) ring_capacity: usize,
    pub(crate) high_water: usize,
    pub(crate) tick: Duration,
    pub(crate) on_full: FullPolicy,
    pub(crate) urgent_wait: Duration,
    pub(crate) precise_timestamps: bool,
    pub(crate) max_names: usize,
    pub(crate) max_name_len: usize,
}

impl Config {
    /// Checks the settings that do not involve policies (those are checked
    /// by `EngineBuilder::build` as it builds the policy table).
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let cap = self.ring_capacity;
        if cap < 2 || !cap.is_power_of_two() {
            return Err(Error::InvalidConfig(
                "ring_capacity must be a power of two of at least 2",
            ));
        }
        if self.high_water == 0 || self.high_water > cap {
            return Err(Error::InvalidConfig(
                "high_water must be in 1..=ring_capacity",
            ));
        }
        if self.precise_timestamps && cap < 4 {
            // A stamped event takes up to four slots (see record.rs).
            return Err(Error::InvalidConfig(
                "precise_timestamps needs ring_capacity of at least 4",
            ));
        }
        if self.tick.is_zero() {
            return Err(Error::InvalidConfig("tick must be non-zero"));
        }
        if self.max_names == 0 || self.max_names > MAX_NAMES {
            return Err(Error::InvalidConfig("max_names must be in 1..=2^30"));
        }
        if self.max_name_len == 0 {
            return Err(Error::InvalidConfig("max_name_len must be non-zero"));
        }
        if let FullPolicy::Block(t) = self.on_full {
            if t.is_zero() {
                return Err(Error::InvalidConfig(
                    "FullPolicy::Block needs a non-zero timeout",
                ));
            }
        }
        Ok(())
    }
}
