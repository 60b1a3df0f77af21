//! Internals exposed to the loom models only (compiled under `cfg(loom)`).
//!
//! Thin public wrappers over crate-private pieces, so the models in
//! `loom-tests/` exercise the real ring and interner code (built against
//! loom's primitives through `crate::sync`), not a copy. Nothing here adds
//! behaviour: every method forwards to exactly one internal one.

use crate::error::Error;
use crate::intern::{self, EventKey};
use crate::policy::{Policy, PolicyTable};
use crate::ring;

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

    /// `intern::Interner::name`: the name with id `id`, if published.
    pub fn name(&self, id: usize) -> Option<String> {
        self.0.name(id).map(|info| info.meta.name.to_string())
    }

    /// `intern::Interner::owns`: the key was made by this interner.
    pub fn owns(&self, key: EventKey) -> bool {
        self.0.owns(key)
    }

    /// `intern::Interner::view`: the names published as of now.
    pub fn view(&self) -> View<'_> {
        View(self.0.view())
    }
}

/// The interner's names as of one moment (`intern::View`), as a reader
/// holds it.
pub struct View<'a>(intern::View<'a>);

impl View<'_> {
    /// Number of names in this view.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if no name is in this view.
    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }

    /// The key of `name` in this view.
    pub fn get(&self, name: &str) -> Option<EventKey> {
        self.0.get(name)
    }

    /// `intern::View::check_consistent`: every id below the view's length
    /// resolves by id and by name, to its own key and an existing prefix.
    pub fn check_consistent(&self) -> Result<(), String> {
        self.0.check_consistent()
    }
}
