//! The thread-local publish path: `Engine::publish*` goes through the
//! calling thread's own producer, created on first use and dropped (so
//! drained, then retired) when the thread exits.

use std::any::Any;
use std::cell::RefCell;

use crate::error::PublishError;
use crate::producer::Producer;
use crate::shared::Shared;
use crate::sync::{Arc, Ordering};

struct Entry {
    engine: u64,
    producer: Box<dyn Any>,
    closed: fn(&dyn Any) -> bool,
}

#[cfg(not(ringfold_loom))]
std::thread_local! {
    static PRODUCERS: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
}
#[cfg(ringfold_loom)]
loom::thread_local! {
    static PRODUCERS: RefCell<Vec<Entry>> = RefCell::new(Vec::new());
}

fn closed<T: Send + 'static>(p: &dyn Any) -> bool {
    p.downcast_ref::<Producer<T>>()
        .is_none_or(|p| p.is_closed())
}

/// Runs `f` with this thread's producer for the engine of `shared` (creating it if
/// needed). If no producer can be had (the engine is shut down, or the
/// thread is exiting) the payload comes back as `ShutDown` (`FlusherDied`
/// if the flusher's death closed the engine), counted.
pub(crate) fn with_producer<T: Send + 'static>(
    shared: &Arc<Shared<T>>,
    payload: T,
    f: impl FnOnce(&mut Producer<T>, T) -> Result<(), PublishError<T>>,
) -> Result<(), PublishError<T>> {
    let id = shared.id;
    let mut payload = Some(payload);
    let result = PRODUCERS.try_with(|cell| {
        let Ok(mut list) = cell.try_borrow_mut() else {
            return None;
        };
        let idx = match list.iter().position(|e| e.engine == id) {
            Some(i) => i,
            None => {
                // Drop producers of engines that have shut down.
                list.retain(|e| !(e.closed)(&*e.producer));
                let producer = Producer::register(shared.clone()).ok()?;
                // As `Engine::producer`: the flusher adopts the new lane.
                shared.state.unpark();
                list.push(Entry {
                    engine: id,
                    producer: Box::new(producer),
                    closed: closed::<T>,
                });
                list.len() - 1
            }
        };
        let producer = list[idx].producer.downcast_mut::<Producer<T>>()?;
        Some(f(producer, payload.take()?))
    });
    match result {
        Ok(Some(r)) => r,
        // No producer could be had: the engine is shut down, or the
        // thread is exiting.
        _ => {
            let unlaned = &shared.unlaned;
            // Relaxed: stats counters. A dead flusher closed the engine
            // too; say which.
            let dead = shared.state.peek().dead();
            let counter = if dead {
                &unlaned.flusher_died
            } else {
                &unlaned.shut_down
            };
            counter.fetch_add(1, Ordering::Relaxed);
            match payload {
                Some(payload) if dead => Err(PublishError::FlusherDied(payload)),
                Some(payload) => Err(PublishError::ShutDown(payload)),
                // `f` ran and consumed the payload only if it returned;
                // this arm is reached only when it did not run.
                None => Ok(()),
            }
        }
    }
}
