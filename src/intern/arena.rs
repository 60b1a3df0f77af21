//! The append-only chunked arena the interner stores names and prefixes
//! in: chunks of doubling size, allocated once and never moved, so an
//! entry's address is fixed from the moment it is written until the arena
//! is dropped, and a Release-published length makes reads lock-free. This
//! module holds the arena's `unsafe` and the invariant that makes it sound.

use crate::sync::{AtomicUsize, Ordering, UnsafeCell};

/// log2 of the first chunk's length. Under loom the first chunks hold one
/// and two entries, so the models cross a chunk boundary with two names.
#[cfg(not(ringfold_loom))]
const FIRST_CHUNK_SHIFT: u32 = 6;
#[cfg(ringfold_loom)]
const FIRST_CHUNK_SHIFT: u32 = 0;

/// Chunk `k` holds `2^(FIRST_CHUNK_SHIFT + k)` entries, so this many chunks
/// hold every id below 2^32 - 2^FIRST_CHUNK_SHIFT, more than [`MAX_IDS`].
const CHUNKS: usize = (32 - FIRST_CHUNK_SHIFT) as usize;

/// The chunk holding entry `id`, and the entry's offset in it.
fn locate(id: usize) -> Option<(usize, usize)> {
    let i = id.checked_add(1 << FIRST_CHUNK_SHIFT)?;
    let top = usize::BITS - 1 - i.leading_zeros();
    Some(((top - FIRST_CHUNK_SHIFT) as usize, i - (1 << top)))
}

type Chunk<T> = Box<[UnsafeCell<Option<T>>]>;

/// An append-only, lock-free-to-read vector whose entries never move.
///
/// The invariant every access relies on: a chunk pointer and an entry are
/// written exactly once, by the single writer (see [`Arena::push`]), before
/// the Release store of a length that covers them, and never again;
/// readers touch only entries below a length they loaded with Acquire (and
/// the chunks holding them), so every read happens after the one write.
pub(super) struct Arena<T> {
    chunks: Box<[UnsafeCell<Option<Chunk<T>>>]>,
    /// Entries published so far.
    len: AtomicUsize,
}

// SAFETY: shared access only reads entries (`&T`, hence `T: Sync`) that
// were completely written before being published (see the type's
// invariant), and the single writer is serialised by the caller of
// `push`; values are moved in by the writer's thread and dropped by
// whichever thread drops the arena (`T: Send`).
unsafe impl<T: Send + Sync> Sync for Arena<T> {}

impl<T> Arena<T> {
    pub(super) fn new() -> Self {
        Arena {
            chunks: (0..CHUNKS).map(|_| UnsafeCell::new(None)).collect(),
            len: AtomicUsize::new(0),
        }
    }

    /// Entries published so far (every id below resolves).
    #[inline]
    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Entry `id`, if it has been published. Lock-free: one Acquire load,
    /// two indexed reads.
    #[inline]
    pub(super) fn get(&self, id: usize) -> Option<&T> {
        if id >= self.len() {
            return None;
        }
        let (chunk, offset) = locate(id)?;
        // SAFETY: `id` is below the length loaded with Acquire above, so the
        // chunk holding it was written before that length was published and
        // is never written again (the type's invariant): this read races
        // with no write, and the reference stays valid as long as `self`.
        let cells = self
            .chunks
            .get(chunk)?
            .with(|p| unsafe { (*p).as_deref() })?;
        // SAFETY: likewise for the entry itself: published, so written
        // once and never again.
        cells.get(offset)?.with(|p| unsafe { (*p).as_ref() })
    }

    /// Appends `value` and publishes it; returns its id, or `None` (value
    /// dropped) past the arena's capacity, which the interner's `MAX_IDS`
    /// keeps out of reach.
    ///
    /// # Safety
    ///
    /// At most one thread may be inside `push` at a time (the interner
    /// calls it only with its writer lock held).
    pub(super) unsafe fn push(&self, value: T) -> Option<usize> {
        // Only `push` stores the length and pushes are serialised (the
        // caller's lock orders them), so this reads the latest value.
        let id = self.len.load(Ordering::Relaxed);
        let (chunk, offset) = locate(id)?;
        let dir = self.chunks.get(chunk)?;
        // SAFETY: reading a chunk pointer: the only writer is this thread
        // (caller's contract), and readers only read it too.
        if dir.with(|p| unsafe { (*p).is_none() }) {
            let cells: Chunk<T> = (0..1usize << (chunk as u32 + FIRST_CHUNK_SHIFT))
                .map(|_| UnsafeCell::new(None))
                .collect();
            // SAFETY: the chunk is allocated when its first id is pushed,
            // so none of its ids is published yet and no reader looks at
            // this pointer (readers only follow chunks of published ids);
            // no other writer exists (caller's contract).
            dir.with_mut(|p| unsafe { *p = Some(cells) });
        }
        // SAFETY: as above, a read of a pointer only this thread writes.
        let cells = dir.with(|p| unsafe { (*p).as_deref() })?;
        // SAFETY: entry `id` equals the published length, so no reader
        // looks at it yet, and no other writer exists (caller's contract).
        cells.get(offset)?.with_mut(|p| unsafe { *p = Some(value) });
        self.len.store(id + 1, Ordering::Release);
        Some(id)
    }
}
