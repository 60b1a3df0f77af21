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
    /// payload back as `Full` and count it. A timeout too long for the
    /// clock (`Duration::MAX`) waits without limit.
    Block(Duration),
}

/// Most slots in one producer ring (`EngineBuilder::ring_capacity`,
/// `Engine::producer_with_capacity`): 2^24, some 16.8 million.
pub(crate) const MAX_RING_CAPACITY: usize = 1 << 24;

/// Most bytes of one producer ring (slots times slot size): 1 GiB. Rings
/// are allocated whole when a producer is created, and a failed allocation
/// aborts the process, so the size is checked up front.
pub(crate) const MAX_RING_BYTES: usize = 1 << 30;

/// Largest payload type, in bytes (`size_of::<T>()`): 16 KiB. Payloads are
/// moved by value through the ring, the fold and the delivery buffers, and
/// in an unoptimised build several such moves sit on one stack frame chain
/// at once (a publishing thread's, the flusher's), so a large payload can
/// overflow a thread's stack: a `[u8; 1 << 20]` overflowed the flusher's,
/// and on a 2 MiB stack (Rust's default for spawned threads) a debug build
/// overflowed at 64 KiB and held at 32 KiB. 16 KiB keeps a margin of
/// four. Box larger payloads (`Box<[u8]>`, `Arc<..>`).
pub(crate) const MAX_PAYLOAD_SIZE: usize = 16 * 1024;

/// Engine settings, fixed at build time.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) ring_capacity: usize,
    /// `size_of` one ring slot for the engine's payload type.
    pub(crate) slot_size: usize,
    pub(crate) high_water: usize,
    pub(crate) tick: Duration,
    pub(crate) on_full: FullPolicy,
    pub(crate) urgent_wait: Duration,
    pub(crate) precise_timestamps: bool,
    /// Some events are stamped at publish (precise timestamps, or a
    /// `latest` policy, whose survivors are chosen by stamp): those take
    /// three slots, so a ring needs at least four.
    pub(crate) stamps: bool,
    pub(crate) max_names: usize,
    pub(crate) max_name_len: usize,
}

impl Config {
    /// Checks the settings that do not involve policies (those are checked
    /// by `EngineBuilder::build` as it builds the policy table).
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let cap = self.ring_capacity;
        self.check_ring_capacity(cap)?;
        if self.high_water == 0 || self.high_water > cap {
            return Err(Error::InvalidConfig(
                "high_water must be in 1..=ring_capacity",
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

    /// Checks one ring size (the engine's, or one given to
    /// `Engine::producer_with_capacity`): a power of two, at least 2 (4
    /// with precise timestamps), at most [`MAX_RING_CAPACITY`] slots and
    /// [`MAX_RING_BYTES`] bytes.
    pub(crate) fn check_ring_capacity(&self, cap: usize) -> Result<(), Error> {
        if cap < 2 || !cap.is_power_of_two() {
            return Err(Error::InvalidConfig(
                "ring_capacity must be a power of two of at least 2",
            ));
        }
        if self.stamps && cap < 4 {
            // A stamped event takes up to four slots (see record.rs); in a
            // smaller ring it could never be published.
            return Err(Error::InvalidConfig(
                "precise_timestamps and latest policies need ring_capacity of at least 4",
            ));
        }
        if cap > MAX_RING_CAPACITY {
            return Err(Error::InvalidConfig(
                "ring_capacity must be at most 2^24 (EngineBuilder::MAX_RING_CAPACITY)",
            ));
        }
        if cap.saturating_mul(self.slot_size) > MAX_RING_BYTES {
            return Err(Error::InvalidConfig(
                "ring_capacity times the slot size must be at most 1 GiB",
            ));
        }
        Ok(())
    }

    /// The high-water mark of a ring of `capacity` slots: the engine's,
    /// or a quarter of a smaller ring (`Engine::producer_with_capacity`),
    /// so that a small ring still wakes a sleeping flusher before it fills.
    pub(crate) fn high_water_for(&self, capacity: usize) -> usize {
        if capacity == self.ring_capacity {
            self.high_water
        } else {
            self.high_water.min((capacity / 4).max(1))
        }
    }
}
