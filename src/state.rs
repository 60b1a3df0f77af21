//! The engine's state word and its protocol: closed, parked, deep sleep,
//! wake-up, and the asymmetric barrier behind the park announcement.
//!
//! The word is zero in the common case (open, flusher awake), so a publish
//! reads it once and moves on. Every access goes through a method here, and
//! each method has one ordering, justified once below; nothing else in the
//! crate sees the raw word.
//!
//! Two store-load (Dekker) hand-offs run through it. "I published, are you
//! asleep?" (producer: tail store, `barrier::light`, [`State::peek`])
//! against "I am going to sleep, did anyone publish?" (flusher:
//! [`State::announce_park`], which runs `barrier::heavy`, then a re-check of
//! the rings); and "I published, are you closing?" against "I am closing,
//! did anyone publish?" (flusher: [`State::is_closed`], `barrier::heavy`,
//! final sweep). The barriers, not the orderings of the word's accesses,
//! make those hand-offs work; see `barrier.rs`.
//!
//! Bits: CLOSED (shutdown begun), PARKED and DEEP (the flusher's park
//! announcements), DEAD (the flusher thread died; set with CLOSED).
//! Operations, one ordering each: `peek` and `after_publish` Relaxed (after
//! `barrier::light`), `is_closed` Acquire, `close` and `die` SeqCst RMW,
//! `announce_park` and `end_park` SeqCst RMW, `wake` AcqRel RMW.

use crate::barrier;
use crate::sync::{self, lock, AtomicUsize, Mutex, Ordering, Thread};

/// The engine is closing; no publish is accepted after the flusher's final
/// drain.
const CLOSED: usize = 1;
/// The flusher sleeps until its next tick or deadline; producers wake it
/// only on crossing their high-water mark (or urgent).
const PARKED: usize = 2;
/// The flusher sleeps with nothing pending anywhere; the first publish
/// wakes it.
const DEEP: usize = 4;
/// The flusher thread died (a panic escaped its loop: a bug, or user code
/// such as a sampler that panicked). Always set together with CLOSED, so
/// every path that refuses work after shutdown refuses it after a death
/// too; this bit only changes what they report (`FlusherDied`).
const DEAD: usize = 8;

/// One read of the state word.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen(usize);

impl Seen {
    /// Open and the flusher awake: the common case, nothing to do.
    #[inline]
    pub(crate) fn is_quiet(self) -> bool {
        self.0 == 0
    }

    /// Shutdown has begun.
    #[inline]
    pub(crate) fn closed(self) -> bool {
        self.0 & CLOSED != 0
    }

    /// The flusher announced a park until its next tick or deadline.
    #[inline]
    pub(crate) fn parked(self) -> bool {
        self.0 & PARKED != 0
    }

    /// The flusher announced a park with nothing pending anywhere.
    #[inline]
    pub(crate) fn deep(self) -> bool {
        self.0 & DEEP != 0
    }

    /// The flusher died (implies [`Seen::closed`]).
    #[inline]
    pub(crate) fn dead(self) -> bool {
        self.0 & DEAD != 0
    }
}

/// The state word, and the flusher thread's handle for waking it.
pub(crate) struct State {
    word: AtomicUsize,
    flusher: Mutex<Option<Thread>>,
}

impl State {
    pub(crate) fn new() -> Self {
        // Register for membarrier before any producer exists (the state is
        // created before the engine's flusher and producers), so producers
        // take the light barrier from their first publish (a failed
        // registration leaves both sides on SeqCst fences).
        barrier::init();
        State {
            word: AtomicUsize::new(0),
            flusher: Mutex::new(None),
        }
    }

    /// A Relaxed read, for hints and for the producer's check after its
    /// publish. Relaxed is enough: where the answer must be ordered after
    /// the caller's own stores (the post-publish check), the caller runs
    /// `barrier::light` first, and the flusher's side of the hand-off runs
    /// `barrier::heavy`; elsewhere (early outs, `has_work`) a stale answer
    /// only costs one more pass or is corrected by the exact check later.
    #[inline]
    pub(crate) fn peek(&self) -> Seen {
        Seen(self.word.load(Ordering::Relaxed))
    }

    /// Has shutdown begun? Acquire pairs with the Release half of
    /// [`State::close`], so whatever the closing thread did before closing
    /// is visible. The registry check in `Shared::register_lane` relies on
    /// it together with the registry mutex: the flusher's final adoption
    /// locks the registry after seeing CLOSED, so a registration that locks
    /// after it sees CLOSED too (coherence), and one that locks before it is
    /// adopted and drained.
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.word.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Producer, after publishing (tail store, maybe the urgent hint): the
    /// light half of the asymmetric barrier, then [`State::peek`]. The
    /// barrier orders the producer's stores before this load; the flusher
    /// runs the heavy half between setting PARKED/DEEP (or seeing CLOSED)
    /// and re-reading the tails, so at least one side sees the other's
    /// store. On Linux `light` is only a compiler barrier (see barrier.rs).
    #[inline]
    pub(crate) fn after_publish(&self) -> Seen {
        barrier::light();
        self.peek()
    }

    /// Flusher, at the top of each pass: has shutdown begun? If so, runs
    /// the heavy half of the barrier before returning, pairing with the
    /// producers' [`State::after_publish`]: a publish that did not see
    /// CLOSED has its tail visible to the final sweep that follows.
    pub(crate) fn closing(&self) -> bool {
        let closed = self.is_closed();
        if closed {
            barrier::heavy();
        }
        closed
    }

    /// Begins shutdown; true if this call closed the engine. SeqCst, as it
    /// was before the state word had a module of its own: the close is rare,
    /// and the loom shutdown model was checked with it.
    pub(crate) fn close(&self) -> bool {
        self.word.fetch_or(CLOSED, Ordering::SeqCst) & CLOSED == 0
    }

    /// The flusher's thread wrapper, after catching a panic out of the
    /// flusher's loop: sets CLOSED and DEAD together, so publishes, new
    /// producers and flushes from now on are refused as after a shutdown,
    /// reported as `FlusherDied`. SeqCst, like [`State::close`] (rare, and
    /// the same kind of transition); no barrier: there is no final sweep
    /// to hand off to, so a publish racing the death may be accepted and
    /// never delivered (it stays counted as pending in the stats).
    pub(crate) fn die(&self) {
        self.word.fetch_or(CLOSED | DEAD, Ordering::SeqCst);
    }

    /// Flusher: announces a park (DEEP or PARKED), then runs the heavy half
    /// of the asymmetric barrier, after which the caller must re-check for
    /// work before it parks. SeqCst on the RMW as the loom models check it;
    /// the barrier is what orders the announcement before the re-check's
    /// loads (a producer's `light` + [`State::peek`] pairs with it).
    pub(crate) fn announce_park(&self, deep: bool) {
        let bit = if deep { DEEP } else { PARKED };
        self.word.fetch_or(bit, Ordering::SeqCst);
        barrier::heavy();
    }

    /// Flusher: awake again (clears both park bits). SeqCst, as the loom
    /// models check it; only the flusher runs it, once per park.
    pub(crate) fn end_park(&self) {
        self.word.fetch_and(!(PARKED | DEEP), Ordering::SeqCst);
    }

    /// Producer-side wake-up: clears the park bits and unparks the flusher
    /// if this call was the one to clear them (so a burst of producers
    /// costs one unpark). Returns whether it unparked. AcqRel: the RMW
    /// reads the latest announcement, and of racing producers exactly one
    /// sees the bits set.
    pub(crate) fn wake(&self) -> bool {
        let prev = self.word.fetch_and(!(PARKED | DEEP), Ordering::AcqRel);
        if prev & (PARKED | DEEP) != 0 {
            self.unpark();
            true
        } else {
            false
        }
    }

    /// Unconditional wake-up for control requests (flush, shutdown, new
    /// producer). Park/unpark keeps a token, so an unpark that lands before
    /// the flusher parks makes that park return at once: no lost wake-up.
    pub(crate) fn unpark(&self) {
        if let Some(t) = lock(&self.flusher).as_ref() {
            t.unpark();
        }
    }

    /// Flusher, first thing on its thread: registers itself for wake-ups.
    /// A producer that looked for the handle earlier found none, but it only
    /// looks when the word says the flusher is parked, which it has not done
    /// yet; a flush or shutdown request made earlier is seen by the first
    /// pass.
    pub(crate) fn register_flusher(&self) {
        *lock(&self.flusher) = Some(sync::current());
    }

    /// Is the caller the flusher thread (a subscriber)?
    pub(crate) fn on_flusher_thread(&self) -> bool {
        lock(&self.flusher)
            .as_ref()
            .is_some_and(|t| t.id() == sync::current().id())
    }
}
