//! The thread-local publish path: `Engine::publish*` goes through the
//! calling thread's own producer, created on first use.
//!
//! The producers live in the engine's handle ([`Locals`], one slot per
//! thread), not in the threads' own thread-local storage: a producer holds
//! its ring and the engine's shared state, so a thread that once published
//! and then sat idle (parked in a pool, say) would otherwise keep a shut-down
//! engine's rings alive until it published again or exited. Owned by the
//! handle, they are dropped with its last clone, whatever the threads are
//! doing. A publish borrows the handle, so no slot can be dropped under it.
//!
//! The per-thread slots come from the `thread_local` crate: finding this
//! thread's slot is a thread-local read and one Acquire load, with no lock,
//! no reference count and no `unsafe` here. Its thread ids are recycled, so
//! a thread that exits leaves its producer to the next thread that gets its
//! id (events it left in the ring are drained as usual); the number of
//! producers is bounded by the most threads ever publishing at once.

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};

use thread_local::ThreadLocal;

use crate::error::PublishError;
use crate::producer::Producer;
use crate::shared::Shared;
use crate::sync::{Arc, Ordering};

/// One engine's per-thread producers, owned by its handle.
pub(crate) struct Locals<T: Send + Sync + 'static> {
    producers: ThreadLocal<RefCell<Producer<T>>>,
}

impl<T: Send + Sync + 'static> Locals<T> {
    pub(crate) fn new() -> Self {
        Locals {
            producers: ThreadLocal::new(),
        }
    }
}

/// Where this thread is in its life, as far as this module cares: a
/// thread-local without a destructor, so it can be read at any time, even
/// while the thread's other thread-locals are being destroyed.
const FRESH: u8 = 0;
const REGISTERED: u8 = 1;
const EXITING: u8 = 2;

/// Sets `EXITING` when this thread's thread-local destructors run. Its
/// destructor is registered right after `ThreadLocal` first registers this
/// thread (whose id guard is a thread-local with a destructor too), so it
/// runs before that guard's (destructors run in reverse order of
/// registration): while the phase is not `EXITING`, asking `ThreadLocal` for
/// this thread's slot cannot hit a destroyed thread-local (which panics).
struct ExitGuard;

impl Drop for ExitGuard {
    fn drop(&mut self) {
        // `try_with`: under loom every thread-local has a destructor, and
        // `PHASE`'s may already have run.
        let _ = PHASE.try_with(|p| p.set(EXITING));
    }
}

#[cfg(not(ringfold_loom))]
std::thread_local! {
    static PHASE: Cell<u8> = const { Cell::new(FRESH) };
    static EXIT_GUARD: ExitGuard = const { ExitGuard };
}
// Loom runs model threads on one OS thread, where per-thread slots would be
// shared: no loom model publishes through `Engine::publish*`.
#[cfg(ringfold_loom)]
loom::thread_local! {
    static PHASE: Cell<u8> = Cell::new(FRESH);
    static EXIT_GUARD: ExitGuard = ExitGuard;
}

/// Runs `f` with this thread's producer for the engine of `shared` (creating it if
/// needed). If no producer can be had (the engine is shut down, the thread
/// is exiting, or `f` is re-entered on this thread, e.g. from a payload's
/// `Drop`) the payload comes back as `ShutDown` (`FlusherDied` if the
/// flusher's death closed the engine), counted.
pub(crate) fn with_producer<T: Send + Sync + 'static>(
    shared: &Arc<Shared<T>>,
    locals: &Locals<T>,
    payload: T,
    f: impl FnOnce(&mut Producer<T>, T) -> Result<(), PublishError<T>>,
) -> Result<(), PublishError<T>> {
    if let Some(cell) = producer_cell(shared, locals) {
        if let Ok(mut producer) = cell.try_borrow_mut() {
            return f(&mut producer, payload);
        }
    }
    // No producer could be had.
    let unlaned = &shared.unlaned;
    // Relaxed: stats counters. A dead flusher closed the engine too; say
    // which.
    let dead = shared.state.peek().dead();
    let counter = if dead {
        &unlaned.flusher_died
    } else {
        &unlaned.shut_down
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if dead {
        Err(PublishError::FlusherDied(payload))
    } else {
        Err(PublishError::ShutDown(payload))
    }
}

/// This thread's producer slot, created (and the flusher told) on first
/// use; `None` if the engine refuses a new producer or the thread is
/// exiting.
fn producer_cell<'a, T: Send + Sync + 'static>(
    shared: &Arc<Shared<T>>,
    locals: &'a Locals<T>,
) -> Option<&'a RefCell<Producer<T>>> {
    let phase = PHASE.with(Cell::get);
    if phase == EXITING {
        // Its thread-locals (`ThreadLocal`'s id among them) may be gone.
        return None;
    }
    // Backstop for an unusual destructor order: `ThreadLocal` panics rather
    // than fail when its id guard is gone. No cost on the path that does not
    // unwind; the closure only reads and inserts, so nothing is left torn.
    let cell = catch_unwind(AssertUnwindSafe(|| {
        locals.producers.get_or_try(|| {
            let producer = Producer::register(shared.clone())?;
            // As `Engine::producer`: the flusher adopts the new lane.
            shared.state.unpark();
            Ok::<_, crate::error::Error>(RefCell::new(producer))
        })
    }))
    .ok()?
    .ok()?;
    if phase == FRESH {
        // After `ThreadLocal` registered this thread (see `ExitGuard`).
        if EXIT_GUARD.try_with(|_| ()).is_ok() {
            PHASE.with(|p| p.set(REGISTERED));
        }
    }
    Some(cell)
}
