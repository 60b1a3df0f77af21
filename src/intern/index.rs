//! The interner's lock-free hash index from name to id: an open-addressing
//! table of atomic slots (`hash tag << 32 | id + 1`, 0 = empty), probed
//! linearly and kept at most half full, plus the seeded hasher it probes
//! with. The writer fills slots in place and builds a table twice the size
//! when one would pass half full; the interner publishes it.

use ahash::RandomState;

use crate::sync::{AtomicU64, Ordering};

/// Smallest index table (slots). Under loom it is tiny so that the second
/// name already replaces the table.
#[cfg(not(ringfold_loom))]
pub(super) const MIN_INDEX: usize = 64;
#[cfg(ringfold_loom)]
pub(super) const MIN_INDEX: usize = 2;

/// Bits of an index slot holding the hash tag; the low 32 hold `id + 1`.
pub(super) const TAG: u64 = 0xffff_ffff_0000_0000;

/// Open-addressing hash index from name to id: power-of-two slots, linear
/// probing, at most half full (so every probe sequence reaches an empty
/// slot). Slots go from empty to full once and never change again.
pub(super) struct Index {
    pub(super) slots: Box<[AtomicU64]>,
}

/// An index slot: the hash's tag and `id + 1` (never 0).
fn slot_value(hash: u64, id: usize) -> u64 {
    (hash & TAG) | (id as u64 + 1)
}

/// Fills the first empty slot of `hash`'s probe sequence in a table that
/// is being built (not yet shared). Ends: the table is at most half full.
pub(super) fn place(slots: &mut [u64], hash: u64, id: usize) {
    let mask = slots.len() - 1;
    let mut pos = hash as usize & mask;
    while slots[pos] != 0 {
        pos = (pos + 1) & mask;
    }
    slots[pos] = slot_value(hash, id);
}

impl Index {
    /// A table with these contents. A replacement table is built as plain
    /// words and only then turned into atomics, each created with its final
    /// value: nothing is stored into it after it is shared except new
    /// slots (and loom 0.7 trips an internal assertion, "this sometimes
    /// fails", when an atomic is created and stored to by the same thread
    /// with no synchronisation in between).
    pub(super) fn from_slots(slots: Vec<u64>) -> Self {
        Index {
            slots: slots.into_iter().map(AtomicU64::new).collect(),
        }
    }

    /// Writer only: fills the first empty slot of `hash`'s probe sequence
    /// with `id`. The Release store orders the slot before the name's
    /// publication (the writer's later Release store of the length), so
    /// a reader that sees the length also sees the slot.
    pub(super) fn insert(&self, hash: u64, id: usize) {
        let mask = self.slots.len() - 1;
        let mut pos = hash as usize & mask;
        // Ends: the table is kept at most half full.
        loop {
            let slot = &self.slots[pos];
            // Relaxed: only writers store slots, and the writer lock orders
            // them before this one.
            if slot.load(Ordering::Relaxed) == 0 {
                slot.store(slot_value(hash, id), Ordering::Release);
                return;
            }
            pos = (pos + 1) & mask;
        }
    }
}

/// The index's hasher: randomly seeded (so colliding names cannot be
/// chosen in advance), except under loom, which replays every execution
/// and needs the same probe sequences each time.
pub(super) fn new_hasher() -> RandomState {
    #[cfg(not(ringfold_loom))]
    return RandomState::new();
    #[cfg(ringfold_loom)]
    return RandomState::with_seeds(1, 2, 3, 4);
}
