//! Internals exposed to the loom models only (compiled under `cfg(ringfold_loom)`).
//!
//! Thin public wrappers over crate-private pieces, so the models in
//! `loom-tests/` exercise the real ring and interner code (built against
//! loom's primitives through `crate::sync`), not a copy. Nothing here adds
//! behaviour: every method forwards to exactly one internal one.

use crate::error::Error;
use crate::intern::{self, EventKey, Table};
use crate::policy::{Policy, PolicyTable};
use crate::ring;
use crate::sync::Arc;

/// Creates an SPSC ring of `capacity` slots (a power of two, at least 2)
/// and returns its two ends (`ring::channel`).
pub fn ring<T>(capacity: usize) -> (RingProducer<T>, RingConsumer<T>) {
    let (p, c) = ring::channel(capacity);
    (RingProducer(p), RingConsumer(c))
}

/// The writing end of a ring (`ring::Producer`).
pub struct RingProducer<T>(ring::Producer<T>);

impl<T> RingProducer<T> {
    /// `ring::Producer::push`: pushes one item or hands it back when full.
    pub fn push(&mut self, item: T) -> Result<(), T> {
        self.0.push(item)
    }

    /// `ring::Producer::push_many`: pushes what fits, one tail store.
    pub fn push_many(&mut self, items: &mut impl Iterator<Item = T>) -> usize {
        self.0.push_many(items)
    }

    /// `ring::Producer::announce_waiting`: the producer's half of the
    /// waiting-for-space Dekker handshake.
    pub fn announce_waiting(&self, waiting: bool) {
        self.0.announce_waiting(waiting)
    }

    /// `ring::Producer::refresh_len`: exact occupancy as of now.
    pub fn refresh_len(&mut self) -> usize {
        self.0.refresh_len()
    }

    /// Items ever pushed (`ring::Ring::pushed`).
    pub fn pushed(&self) -> usize {
        self.0.ring().pushed()
    }
}

/// The reading end of a ring (`ring::Consumer`).
pub struct RingConsumer<T>(ring::Consumer<T>);

impl<T> RingConsumer<T> {
    /// `ring::Consumer::drain`: moves everything published so far into `f`;
    /// returns whether the producer had announced it waits for space.
    pub fn drain(&mut self, f: impl FnMut(T)) -> bool {
        self.0.drain(f).producer_waiting
    }

    /// `ring::Consumer::maybe_ready`: the sweep's cheap idle check.
    pub fn maybe_ready(&self) -> bool {
        self.0.maybe_ready()
    }

    /// `ring::Consumer::pending`: published and not yet drained.
    pub fn pending(&self) -> usize {
        self.0.pending()
    }
}

/// The engine's name interner (`intern::Interner`), with a passthrough
/// policy table.
pub struct Interner(intern::Interner);

impl Interner {
    /// An interner for at most `max_names` names of at most 64 bytes.
    pub fn new(max_names: usize) -> Self {
        Interner(intern::Interner::new(
            PolicyTable::new(Policy::Passthrough),
            max_names,
            64,
        ))
    }

    /// `intern::Interner::key`: the same key for the same name, from any
    /// thread.
    pub fn key(&self, name: &str) -> Result<EventKey, Error> {
        self.0.key(name)
    }

    /// `intern::Interner::snapshot`: the current table.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(self.0.snapshot())
    }
}

/// One interner snapshot, as a reader holds it.
pub struct Snapshot(Arc<Table>);

impl Snapshot {
    /// Number of names interned in this snapshot.
    pub fn len(&self) -> usize {
        self.0.names.len()
    }

    /// True if no name is interned in this snapshot.
    pub fn is_empty(&self) -> bool {
        self.0.names.is_empty()
    }

    /// The key of `name` in this snapshot.
    pub fn get(&self, name: &str) -> Option<EventKey> {
        self.0.get(name)
    }

    /// Checks that the snapshot is whole: every name resolves to its own
    /// dense id and to a prefix that exists and resolves back to the same
    /// id. A torn snapshot (names and maps from different versions) fails.
    pub fn check_consistent(&self) -> Result<(), String> {
        let table = &*self.0;
        for (id, info) in table.names.iter().enumerate() {
            let key = table
                .get(&info.meta.name)
                .ok_or_else(|| format!("name {:?} missing from the map", &*info.meta.name))?;
            if key.name_id() as usize != id || key.prefix_id() != info.prefix {
                return Err(format!(
                    "name {:?}: key {key:?}, slot {id}",
                    &*info.meta.name
                ));
            }
            let prefix = table
                .prefixes
                .get(info.prefix as usize)
                .ok_or_else(|| format!("prefix id {} has no entry", info.prefix))?;
            if table.prefix_id(&prefix.prefix) != Some(info.prefix) {
                return Err(format!("prefix {:?} does not map back", &*prefix.prefix));
            }
        }
        Ok(())
    }
}
