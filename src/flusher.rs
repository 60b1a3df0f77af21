//! The flusher thread: sweeps every producer ring into the fold
//! (`fold.rs`), seals closed windows into shared batches and queues them for
//! their subscribers (`delivery`; no subscriber code ever runs here),
//! answers flush and shutdown requests, and sleeps when there is nothing to
//! do. Reads top-down:
//! `spawn`, the loop (`run`), a sweep, the sleep, the final hand-off.
//!
//! Sleeping is adaptive, in the manner of kernel ring buffers: the flusher
//! announces that it parks (PARKED: until its next tick or window deadline;
//! DEEP: indefinitely, nothing pending anywhere), re-checks the rings, and
//! only then parks. Producers look at the announcement after each publish
//! (one Relaxed load) and wake it only when they cross their high-water mark
//! (PARKED), publish the first event into an idle engine (DEEP), or publish
//! something urgent. So there is never a syscall per event, and an idle
//! engine costs no CPU.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crate::delivery::{BatchPool, Epoch, Header, KeepAlive, RouteCache};
use crate::event::BatchReason;
use crate::fold::{Closed, Folder};
use crate::lane::Lane;
use crate::record::{Decoder, Slot};
use crate::ring::Consumer;
use crate::shared::Shared;
use crate::sync::{self, lock, Arc, JoinHandle, Ordering};

/// How long a DEEP park lasts at most. Correctness does not depend on it
/// (the first publish wakes the flusher); it only bounds the damage of a
/// bug, and costs one wake-up per minute when idle.
const DEEP_PARK: Duration = Duration::from_secs(60);

/// While producers stream (the last sweep took at least a high-water
/// mark's worth of slots), the flusher yields its core up to this many times,
/// sweeping again as soon as a ring reaches its high-water mark, before it
/// announces a park. Announcing costs the heavy barrier (a membarrier IPI to
/// every running producer's CPU, microseconds on a VM) and the park a futex
/// round trip, both of which a streaming producer would undo within
/// microseconds by crossing its high-water mark; yielding costs the
/// producers nothing and hands them the core when they are more threads than
/// cores. Measured on a 2-core VM (`benches/throughput.rs`): lingering until
/// only a quarter of the high-water mark was pending made sweeps so small
/// that their fixed cost dominated (40 ns/event instead of 11), so the
/// threshold is the high-water mark itself. Under loom it is off: lingering
/// only ever leads to another sweep, which is always safe, and the models
/// check the park protocol itself.
const STREAM_YIELDS: u32 = if cfg!(ringfold_loom) { 0 } else { 64 };

/// Sealed batches the pool keeps for reuse, at most. A batch is reusable
/// once every subscriber let go of it, so the pool must span the batches in
/// flight (queued or in a subscriber's hands) for the steady state to
/// allocate nothing; it is provisioned to that bound (each subscriber's
/// queue capacity plus one) when the subscriptions change, up to this cap
/// (`BatchPool::provision`): 2048 covers two default-sized (1024-batch)
/// queues' backlogs of passthrough batches (`tests/alloc.rs`). The price: a
/// default subscriber costs 1025 batch shells made at subscribe time
/// (about 240 bytes each with `u64` payloads: ~250 KiB), and a kept batch's
/// payloads stay alive until its buffers are reused (cleared then), so
/// memory holds up to this many delivered windows; beyond it a lagging
/// subscriber costs allocations, never unbounded memory.
const POOL_BATCHES: usize = 2048;

/// Spawns the flusher thread.
///
/// The loop runs under `catch_unwind`: user input never panics it by
/// design (checked time arithmetic, subscriber and payload-drop panics
/// caught where they happen), but if a panic escapes anyway (a bug, or user
/// code such as a sampler that panicked), the engine must not go on
/// accepting events that nobody will deliver, nor leave callers waiting
/// for a flusher that is gone. See [`died`].
pub(crate) fn spawn<T: Send + Sync + 'static>(
    shared: Arc<Shared<T>>,
    core: Option<core_affinity::CoreId>,
) -> std::io::Result<JoinHandle<()>> {
    let name = format!("ringfold-flusher-{}", shared.id);
    sync::spawn_named(name, move || {
        shared.state.register_flusher();
        if let Some(core) = core {
            core_affinity::set_for_current(core);
        }
        let mut flusher = Flusher::new(shared.clone());
        if catch_unwind(AssertUnwindSafe(|| flusher.run())).is_err() {
            died(&shared, flusher);
        } else {
            // A payload's `Drop` may panic here, after the
            // final drain: everything was delivered and nothing waits on
            // us, so it is ignored rather than reported as a death.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(flusher)));
        }
    })
}

/// The flusher's loop panicked. Closes the engine as dead (`State::die`:
/// publishes, new producers and flushes are refused with `FlusherDied`),
/// hands every ring's reading end back to its lane (so a publish that
/// raced the death can take its own record back, as at shutdown), publishes
/// the last report it can, and releases everyone waiting in `Control`.
///
/// The fold, which holds the accepted-but-undelivered payloads, is leaked,
/// not dropped: its state after a panic is unknown, and a payload `Drop`
/// that panicked twice in one drop would abort the process. The stats say
/// how many events that is (`pending`).
fn died<T: Send + Sync + 'static>(shared: &Shared<T>, mut flusher: Flusher<T>) {
    shared.state.die();
    // Adopted lanes, and lanes registered but not yet adopted (after `die`
    // no more come: the registry refuses lanes once the engine is closed,
    // under this lock).
    let unadopted: Vec<_> = lock(&shared.registry).new.drain(..).collect();
    let adopted = flusher.lanes.drain(..).map(|s| (s.lane, s.consumer));
    for (lane, consumer) in adopted.chain(unadopted) {
        *lock(&lane.orphan) = Some(consumer);
        // A producer waiting for space sees CLOSED when it wakes.
        if let Some(t) = lock(&lane.waiter).as_ref() {
            t.unpark();
        }
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        flusher.folder.mark_dirty();
        flusher.publish_report();
    }));
    // Subscribers get what was already queued, then their streams end.
    shared.subscribers.close_all();
    let Flusher { folder, .. } = flusher;
    std::mem::forget(folder);
    shared.control.stop();
    // Producer creations waiting for retirement see the engine dead.
    shared.backlog.release();
}

/// One producer's ring, as the flusher holds it.
struct LaneSlot<T> {
    lane: Arc<Lane<T>>,
    consumer: Consumer<Slot<T>>,
    drops_seen: u64,
}

/// Turns closed windows into shared batches and queues them: the
/// flusher's whole share of delivery.
struct Sealer<T> {
    pool: BatchPool<T>,
    routes: RouteCache<T>,
    /// By prefix id: the next batch's sequence number.
    seqs: Vec<u64>,
    epoch: Epoch,
    /// What every batch carries to keep the interned names it points into
    /// alive: one handle to the interner's storage, made at the first seal
    /// (one allocation per engine, none per batch).
    keep_alive: Option<KeepAlive>,
    /// `pool.drop_panics()` as last put into the report.
    reported_panics: u64,
}

struct Flusher<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    lanes: Vec<LaneSlot<T>>,
    folder: Folder<T>,
    sealer: Sealer<T>,
    /// Reassembles events from ring slots (see `record.rs`).
    decoder: Decoder,
    /// An event was taken since the flusher last went to sleep.
    took_any: bool,
    /// Slots taken by the current pass's sweep.
    pass_taken: usize,
    /// Lanes drained after their producer was dropped, unregistered at the
    /// end of the sweep (`retire`); kept allocated between passes.
    retiring: Vec<Arc<Lane<T>>>,
}

impl<T: Send + Sync + 'static> Flusher<T> {
    fn new(shared: Arc<Shared<T>>) -> Self {
        // Batches' wall-clock times are derived from the interner's epoch
        // (the base of event timestamps) and the wall clock read with it.
        let now = Epoch::now();
        let epoch = Epoch {
            instant: shared.interner.epoch(),
            system: now.system_at(shared.interner.epoch()),
        };
        Flusher {
            lanes: Vec::new(),
            folder: Folder::new(&shared.interner, shared.sampler, Instant::now()),
            sealer: Sealer {
                pool: BatchPool::new(POOL_BATCHES, epoch),
                routes: RouteCache::default(),
                seqs: Vec::new(),
                epoch,
                keep_alive: None,
                reported_panics: 0,
            },
            decoder: Decoder::default(),
            took_any: false,
            pass_taken: 0,
            retiring: Vec::new(),
            shared,
        }
    }

    /// The loop: take requests and new lanes, sweep, close due windows,
    /// answer a flush, sleep; on shutdown, the final drain.
    fn run(&mut self) {
        loop {
            // On closing, also the heavy barrier (see `State::closing`): the
            // final sweep below sees every publish that did not see CLOSED.
            let closing = self.shared.state.closing();
            let flush = self.shared.control.take_request();
            self.adopt_lanes(closing);
            self.folder.set_now(Instant::now());
            self.sweep();
            if self.folder.holding() {
                // An urgent window waits for one more sweep (see
                // `fold::Hold`): the catch-up sweep, at once.
                self.catch_up();
            }
            self.folder.emit_due();
            self.deliver();
            if closing {
                self.folder.emit_all(BatchReason::Shutdown, None);
                self.deliver();
                self.finish();
                return;
            }
            if let Some(req) = flush {
                if self.folder.holding() {
                    // Taken by the catch-up sweep: one more rather than
                    // seal it early.
                    self.catch_up();
                }
                let filter = (!req.full).then_some(req.patterns.as_slice());
                self.folder.emit_all(BatchReason::Flush, filter);
                self.deliver();
                self.folder.mark_dirty();
                self.publish_report();
                self.shared.control.complete(req.generation);
                continue;
            }
            self.publish_report();
            self.sleep();
        }
    }

    /// One more sweep, for the urgent windows the last one held (see
    /// `fold::Hold`): they are sealed at its end, so an urgent batch costs
    /// one extra pass over the rings, not a loop iteration. Windows held by
    /// urgent events it takes itself wait for the next iteration (the
    /// flusher does not sleep while any is held).
    fn catch_up(&mut self) {
        self.adopt_lanes(false);
        self.folder.set_now(Instant::now());
        self.sweep();
    }

    fn adopt_lanes(&mut self, force: bool) {
        // AcqRel swap: pairs with `register_lane`'s Release store.
        if !self.shared.registry_dirty.swap(false, Ordering::AcqRel) && !force {
            return;
        }
        let mut reg = lock(&self.shared.registry);
        for (lane, consumer) in reg.new.drain(..) {
            self.lanes.push(LaneSlot {
                lane,
                consumer,
                drops_seen: 0,
            });
        }
    }

    /// Takes everything off every ring; retires rings of dropped producers
    /// once drained.
    fn sweep(&mut self) {
        self.folder.report_mut().sweeps += 1;
        self.pass_taken = 0;
        let mut i = 0;
        while i < self.lanes.len() {
            let slot = &mut self.lanes[i];
            // Acquire pairs with the producer's Release in `Drop`: if it is
            // gone, every record it pushed is visible to the drain below.
            let gone = slot.lane.gone.load(Ordering::Acquire);
            // Consume a wake hint before draining. The swap reads the
            // producer's latest hint store (an RMW always does) and
            // synchronises with it, so every record it flagged is visible to
            // the drain; a hint stored after the swap stays set for the
            // re-check before parking.
            if slot.lane.wake_hint.load(Ordering::Relaxed) {
                slot.lane.wake_hint.swap(false, Ordering::AcqRel);
            }
            // Acquire pairs with `Lane::count_drop`'s Release.
            let drops = slot.lane.drops_total.load(Ordering::Acquire);
            if drops != slot.drops_seen {
                slot.drops_seen = drops;
                note_drops(&mut self.folder, &slot.lane);
            }
            if gone || slot.consumer.maybe_ready() {
                let folder = &mut self.folder;
                // The lane's address: which ring an urgent event came from
                // (see `fold::Hold`).
                folder.set_source(std::ptr::from_ref::<Lane<T>>(&slot.lane) as usize);
                let decoder = &mut self.decoder;
                let interner = &self.shared.interner;
                let outcome = slot.consumer.drain(|slot| {
                    if let Some(event) = decoder.decode(slot) {
                        folder.take(event, interner);
                    }
                });
                if outcome.taken > 0 {
                    self.took_any = true;
                    folder.mark_dirty();
                    self.pass_taken += outcome.taken;
                }
                let ext = decoder.take_ext_count();
                if ext > 0 {
                    // Release: the stats' Acquire load sees it with the
                    // ring's head it goes with.
                    slot.lane.ext_popped.fetch_add(ext, Ordering::Release);
                }
                // The range is released; now the closed windows are queued.
                self.sealer.deliver(&mut self.folder, &self.shared);
                if outcome.producer_waiting {
                    if let Some(t) = lock(&slot.lane.waiter).as_ref() {
                        t.unpark();
                    }
                }
            }
            if gone {
                // Drained for good (nothing more can be pushed): its
                // reading end goes now, the registry entry at the end of
                // the pass.
                let slot = self.lanes.swap_remove(i);
                self.retiring.push(slot.lane);
            } else {
                i += 1;
            }
        }
        if self.folder.holding() {
            // Urgent windows held since the previous sweep are complete:
            // sealed now, with their urgent events last.
            self.folder.end_sweep(false);
            self.sealer.deliver(&mut self.folder, &self.shared);
        }
        self.retire();
    }

    /// Unregisters the lanes this sweep drained after their producer was
    /// dropped, all under one registry lock and in one pass over the live
    /// list: retiring one at a time cost a scan of every registered lane
    /// each, quadratic in a backlog of dead lanes, which is exactly when
    /// retirement must be fast. Then tells waiting producer creations (see
    /// `lane::Backlog`). Called after every sweep, retiring or not, so a
    /// waiter can tell a busy flusher from a stuck one.
    fn retire(&mut self) {
        let retired = self.retiring.len();
        if retired > 0 {
            let mut reg = lock(&self.shared.registry);
            for lane in &self.retiring {
                reg.retired.published += lane.events().0;
                lane.drops.add_to(&mut reg.retired.dropped);
                // Relaxed: read only under this lock, just below.
                lane.retired.store(true, Ordering::Relaxed);
            }
            reg.live.retain(|l| !l.retired.load(Ordering::Relaxed));
            drop(reg);
            // The rings are freed here (the registry held the last other
            // handle), outside the lock.
            self.retiring.clear();
        }
        self.shared.backlog.pass_done(retired);
    }

    fn deliver(&mut self) {
        self.sealer.deliver(&mut self.folder, &self.shared);
    }

    fn publish_report(&mut self) {
        // Payload drops that panicked while batches were recycled or while
        // the fold discarded payloads; the delivery side's panics are in
        // the subscribers' own stats.
        let panics = self.sealer.pool.drop_panics() + self.folder.drop_panics();
        if panics != self.sealer.reported_panics {
            self.sealer.reported_panics = panics;
            self.folder.report_mut().panics = panics;
        }
        let mut report = lock(&self.shared.report);
        self.folder.publish_report(&mut report);
    }

    /// Announces the park, re-checks for work, parks.
    fn sleep(&mut self) {
        if self.folder.holding() {
            // An urgent window waits for the next sweep: no sleep.
            return;
        }
        let now = self.folder.now();
        let deadline = self.folder.next_deadline();
        // DEEP (any publish wakes us) when nothing is pending, or when
        // windows are pending but the last sweep took nothing: the engine
        // has gone quiet, so ticking every `tick` until a distant deadline
        // would only burn wake-ups. While events keep arriving we tick
        // (PARKED), so a busy trickle never costs a wake-up per event.
        let quiet = !std::mem::take(&mut self.took_any);
        let deep = deadline.is_none() || quiet;
        let timeout = match deadline {
            None => DEEP_PARK,
            Some(d) if deep => d.saturating_duration_since(now),
            Some(d) => d
                .saturating_duration_since(now)
                .min(self.shared.config.tick),
        };
        let threshold = if deep {
            1
        } else {
            self.shared.config.high_water
        };
        // Nothing to announce if we would not park anyway: this skips the
        // heavy barrier (a membarrier IPI on Linux) whenever work is already
        // visible, which is common while producers stream.
        if timeout.is_zero() || self.has_work(threshold) {
            return;
        }
        if self.streaming() && self.linger() {
            return;
        }
        // Sets PARKED/DEEP, then the heavy barrier, which pairs with the
        // producers' post-publish barrier (see state.rs and barrier.rs).
        self.shared.state.announce_park(deep);
        // The re-check after announcing the park is what makes wake-ups
        // impossible to lose; the `ringfold_mutation = "no_recheck"` cfg
        // removes it so the loom model can demonstrate exactly that.
        let recheck = !cfg!(ringfold_mutation = "no_recheck");
        let work = recheck && self.has_work(threshold);
        if !work {
            sync::park_timeout(timeout);
            if !deep && Instant::now() >= now + timeout {
                self.folder.report_mut().ticks += 1;
            }
        }
        self.shared.state.end_park();
    }

    /// Producers are streaming: the last sweep took at least a high-water
    /// mark's worth of slots.
    fn streaming(&self) -> bool {
        self.pass_taken >= self.shared.config.high_water
    }

    /// Streaming: yields the core (see `STREAM_YIELDS`) until a ring reaches
    /// its high-water mark (true: sweep again) or the producers seem to
    /// have slowed down (false: go on and park).
    #[cfg_attr(
        ringfold_loom,
        allow(clippy::reversed_empty_ranges, reason = "no yields under loom")
    )]
    fn linger(&self) -> bool {
        for _ in 0..STREAM_YIELDS {
            sync::yield_now();
            if self.has_work(self.shared.config.high_water) {
                return true;
            }
        }
        false
    }

    /// Anything that should keep the flusher from parking: a request flag,
    /// a dropped producer, or a ring holding at least `threshold` records.
    /// Relaxed loads throughout: after the park announcement the heavy
    /// barrier orders them, and before it a stale answer costs one pass.
    fn has_work(&self, threshold: usize) -> bool {
        self.shared.state.peek().closed()
            || self.shared.control.flush_pending()
            || self.shared.registry_dirty.load(Ordering::Relaxed)
            || self.lanes.iter().any(|l| {
                l.lane.wake_hint.load(Ordering::Relaxed)
                    || l.consumer.pending() >= threshold
                    || l.lane.gone.load(Ordering::Relaxed)
            })
    }

    /// Final step of shutdown: close every subscriber's queue (delivery
    /// threads deliver what is queued, then exit), publish the last
    /// report, hand each ring's reading end back to its lane (so a publish
    /// that raced the close can take its record back), and release
    /// everyone waiting.
    fn finish(&mut self) {
        self.shared.subscribers.close_all();
        // The payloads only the pool still holds are dropped now, so that
        // panicking `Drop`s among them are counted in the final report.
        self.sealer.pool.clear();
        self.folder.mark_dirty();
        self.publish_report();
        for slot in self.lanes.drain(..) {
            *lock(&slot.lane.orphan) = Some(slot.consumer);
        }
        self.shared.control.stop();
        // Producer creations waiting for retirement see the engine closed.
        self.shared.backlog.release();
    }
}

impl<T: Send + Sync + 'static> Sealer<T> {
    /// Seals the fold's closed windows (in the order they closed) and
    /// queues each for the subscribers of its prefix. Never runs subscriber
    /// code: a queue push is the whole cost per subscriber.
    fn deliver(&mut self, folder: &mut Folder<T>, shared: &Shared<T>) {
        folder.deliver(|closed| self.seal_and_queue(closed, shared));
        self.routes.wake();
    }

    fn seal_and_queue(&mut self, closed: Closed<'_, T>, shared: &Shared<T>) {
        let pid = closed.prefix_id as usize;
        if pid >= self.seqs.len() {
            self.seqs.resize(pid + 1, 0);
        }
        let seq = self.seqs[pid];
        self.seqs[pid] += 1;
        let keep_alive = self
            .keep_alive
            .get_or_insert_with(|| {
                // A std `Arc` around the storage handle: `KeepAlive` is a
                // `dyn Any`, which loom's `Arc` cannot hold.
                std::sync::Arc::new(closed.names.clone())
            })
            .clone();
        let header = Header {
            prefix: closed.info.prefix.clone(),
            name: closed.info.batch_name.clone(),
            prefix_id: closed.prefix_id,
            reason: closed.reason,
            seq,
            opened: closed.opened,
            closed: closed.closed,
            epoch: self.epoch,
            dropped: closed.dropped,
            folded: closed.folded,
            latest: closed.latest,
            keep_alive,
        };
        let sealed = self
            .pool
            .seal(header, closed.events, closed.aggregates, closed.histograms);
        self.routes
            .deliver(&shared.subscribers, &mut self.pool, &sealed);
    }
}

/// Moves a lane's per-prefix rejection counts into the fold, for the next
/// batch's `dropped`.
fn note_drops<T>(folder: &mut Folder<T>, lane: &Lane<T>) {
    // Held while folding in: the producer takes this lock only when it
    // rejects an event, and draining in place allocates nothing.
    let mut drops = lock(&lane.drops_by_prefix);
    for (pid, n) in drops.drain() {
        folder.note_drops(pid, n);
    }
    folder.mark_dirty();
}
