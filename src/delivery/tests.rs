//! Unit tests of the delivery layer, through its crate-internal seams
//! (end-to-end tests through `Engine` are in tests/delivery.rs).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc as StdArc, Mutex as StdMutex};
use std::time::{Duration, Instant, SystemTime};

use super::batch::{clear_events, Sealed};
use super::queue::{Hand, PopError, Push, Queue};
use super::registry::{subscribes_to, Registry};
use super::*;
use crate::control::deadline_after;
use crate::event::{BatchReason, Event, NameRef};
use crate::histogram::Histograms;
use crate::intern::Interner;
use crate::policy::{Policy, PolicyTable};
use crate::sync::Arc;
use crate::Error;

/// Real interned names (so events carry real `NameRef`s) and a sealing
/// helper that numbers batches per prefix as the flusher will.
struct Fixture {
    interner: Interner,
    pool: BatchPool<u64>,
    seqs: Vec<u64>,
    epoch: Epoch,
    /// The reason the next sealed batches carry.
    reason: BatchReason,
}

impl Fixture {
    fn new(pool: usize) -> Self {
        Self::with_policies(pool, PolicyTable::new(Policy::Passthrough))
    }

    /// Names under `latest:*` fold as `Policy::latest`; the rest pass
    /// through.
    fn with_latest(pool: usize) -> Self {
        let mut table = PolicyTable::new(Policy::Passthrough);
        let latest = Policy::latest(Duration::from_secs(1), 100);
        table
            .rules
            .push((crate::policy::Pattern::parse("latest:*").unwrap(), latest));
        Self::with_policies(pool, table)
    }

    fn with_policies(pool: usize, table: PolicyTable) -> Self {
        let epoch = Epoch::now();
        Fixture {
            interner: Interner::new(table, 64, 64),
            pool: BatchPool::new(pool, epoch),
            seqs: Vec::new(),
            epoch,
            reason: BatchReason::Count,
        }
    }

    /// Seals one window of `prefix` whose events are `(name, payload)`.
    fn seal_named(&mut self, events: &[(&str, u64)]) -> Arc<Sealed<u64>> {
        let mut pool = std::mem::replace(&mut self.pool, BatchPool::new(1, self.epoch));
        let metas: Vec<_> = events
            .iter()
            .map(|(name, p)| {
                let key = self.interner.key(name).unwrap();
                (self.interner.name(key.name_id() as usize).unwrap(), *p)
            })
            .collect();
        let pid = metas[0].0.prefix;
        let mut sealed_events: Vec<Event<u64>> = metas
            .iter()
            .map(|(info, payload)| Event {
                meta: NameRef::new(&info.meta),
                sub_key: 0,
                nanos: 0,
                payload: *payload,
            })
            .collect();
        let sealed = self.seal_events(&mut pool, pid, &mut sealed_events);
        self.pool = pool;
        sealed
    }

    fn seal_events<T>(
        &mut self,
        pool: &mut BatchPool<T>,
        pid: u32,
        events: &mut Vec<Event<T>>,
    ) -> Arc<Sealed<T>> {
        let mut header = self.header(pid);
        // As the fold says it (see `Acc::has_latest`).
        header.latest = events.iter().any(|e| e.meta.get().latest);
        pool.seal(header, events, &mut Vec::new(), &mut Histograms::default())
    }

    /// Seals one window of `name`'s prefix holding a histogram of `samples`
    /// for `name` (as `Policy::histogram` would).
    fn seal_histogram(&mut self, name: &str, samples: &[f64]) -> Arc<Sealed<u64>> {
        let key = self.interner.key(name).unwrap();
        let info = self.interner.name(key.name_id() as usize).unwrap();
        let pid = info.prefix;
        let mut histograms = Histograms::default();
        let i = histograms.push(crate::event::InternedStr::new(&info.meta.name), key);
        for &v in samples {
            histograms.get_mut(i).unwrap().sketch.add(v);
        }
        let header = self.header(pid);
        self.pool
            .seal(header, &mut Vec::new(), &mut Vec::new(), &mut histograms)
    }

    /// The header of prefix `pid`'s next window.
    fn header(&mut self, pid: u32) -> Header {
        let prefix = self.interner.prefix(pid as usize).unwrap();
        if self.seqs.len() <= pid as usize {
            self.seqs.resize(pid as usize + 1, 0);
        }
        let seq = self.seqs[pid as usize];
        self.seqs[pid as usize] += 1;
        let now = Instant::now();
        Header {
            prefix: prefix.prefix.clone(),
            name: prefix.batch_name.clone(),
            prefix_id: pid,
            reason: self.reason,
            seq,
            opened: now - Duration::from_millis(5),
            closed: now,
            epoch: self.epoch,
            dropped: 1,
            folded: 2,
            latest: false,
            keep_alive: std::sync::Arc::new(self.interner.keepalive()),
        }
    }

    fn seal_with<T>(
        &mut self,
        pool: &mut BatchPool<T>,
        name: &str,
        payloads: Vec<T>,
    ) -> Arc<Sealed<T>> {
        let key = self.interner.key(name).unwrap();
        let info = self.interner.name(key.name_id() as usize).unwrap();
        let pid = info.prefix;
        let mut events: Vec<Event<T>> = payloads
            .into_iter()
            .map(|payload| Event {
                meta: NameRef::new(&info.meta),
                sub_key: 0,
                nanos: 0,
                payload,
            })
            .collect();
        self.seal_events(pool, pid, &mut events)
    }

    /// Seals and delivers through `cache`, recycling displaced batches
    /// into the fixture's pool, as the flusher will.
    fn deliver(
        &mut self,
        cache: &mut RouteCache<u64>,
        registry: &Registry<u64>,
        name: &str,
        payloads: Vec<u64>,
    ) -> usize {
        let sealed = self.seal(name, payloads);
        self.deliver_sealed(cache, registry, &sealed)
    }

    fn deliver_sealed(
        &mut self,
        cache: &mut RouteCache<u64>,
        registry: &Registry<u64>,
        sealed: &Arc<Sealed<u64>>,
    ) -> usize {
        // As the flusher does at the end of each pass (here: each batch).
        let taken = cache.deliver(registry, &mut self.pool, sealed);
        cache.wake();
        taken
    }

    fn seal(&mut self, name: &str, payloads: Vec<u64>) -> Arc<Sealed<u64>> {
        let mut pool = std::mem::replace(&mut self.pool, BatchPool::new(1, self.epoch));
        let sealed = self.seal_with(&mut pool, name, payloads);
        self.pool = pool;
        sealed
    }
}

/// A queue that holds `events` events and never merges (merging has its
/// own tests): what the loss tests need.
fn queue(events: u64) -> Queue<u64> {
    lag_queue(LagPolicy::DropOldest, events, OnUnsubscribe::Deliver)
}

fn lag_queue(policy: LagPolicy, events: u64, mode: OnUnsubscribe) -> Queue<u64> {
    Queue::new("q", policy, Budget::new(events, u64::MAX), usize::MAX, mode)
}

/// Subscribe options with the same tight, never-merging queue.
fn tight(name: &str, events: u64) -> SubscribeOptions {
    SubscribeOptions::new(name)
        .budget(Budget::new(events, u64::MAX))
        .coalesce_after(usize::MAX)
}

/// Pushes and wakes; returns the outcome and how many batches were
/// dropped for lag.
fn push<T>(q: &Queue<T>, sealed: &Arc<Sealed<T>>) -> (Push, usize) {
    let mut displaced = Vec::new();
    let outcome = q.push(sealed, &mut displaced);
    (outcome, displaced.len())
}

#[test]
fn batch_is_an_owned_send_sync_handle() {
    fn assert_send_sync<X: Send + Sync + 'static>() {}
    assert_send_sync::<Batch<u64>>();
    assert_send_sync::<Receiver<u64>>();
    assert_send_sync::<Subscription<u64>>();
}

#[test]
fn batch_carries_its_metadata_and_outlives_the_engine_names() {
    let mut f = Fixture::new(4);
    let first = Batch::new(f.seal("data:users:created", vec![1, 2, 3]));
    let second = Batch::new(f.seal("data:users:deleted", vec![4]));
    let other = Batch::new(f.seal("chat:s1:delta", vec![5]));
    assert_eq!(first.prefix(), "data:users");
    assert_eq!(first.name(), "data:users:batch");
    assert_eq!(first.len(), 3);
    assert_eq!((first.seq(), second.seq(), other.seq()), (0, 1, 0));
    assert_eq!(first.reason(), BatchReason::Count);
    assert_eq!((first.dropped(), first.folded(), first.lagged()), (1, 2, 0));
    assert_eq!(first.window(), Duration::from_millis(5));
    // Wall-clock times keep the monotonic spacing.
    let wall = first
        .closed_at_system()
        .duration_since(first.opened_at_system())
        .unwrap();
    assert_eq!(wall, Duration::from_millis(5));
    let age = SystemTime::now()
        .duration_since(first.closed_at_system())
        .unwrap_or_default();
    assert!(age < Duration::from_secs(60), "wall clock far off: {age:?}");
    // A clone moved to another thread still reads the interned names after
    // the interner and the fixture are gone: the batch keeps them alive.
    let clone = first.clone();
    drop(f);
    let names = std::thread::spawn(move || {
        clone
            .events()
            .iter()
            .map(|e| format!("{}={}", e.name(), e.payload()))
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    assert_eq!(names[2], "data:users:created=3");
}

#[test]
fn epoch_arithmetic_is_checked() {
    let epoch = Epoch::now();
    let later = epoch.instant + Duration::from_secs(3);
    assert_eq!(
        epoch.system_at(later).duration_since(epoch.system).unwrap(),
        Duration::from_secs(3)
    );
    if let Some(earlier) = epoch.instant.checked_sub(Duration::from_secs(1)) {
        assert_eq!(
            epoch
                .system
                .duration_since(epoch.system_at(earlier))
                .unwrap(),
            Duration::from_secs(1)
        );
    }
}

#[test]
fn pool_recycles_released_batches_without_allocating() {
    let mut f = Fixture::new(4);
    let sealed = f.seal("data:a:x", vec![1, 2, 3, 4]);
    let buffer = sealed.events.as_ptr();
    let handle = Batch::new(sealed);
    drop(handle);
    // The pool holds the only handle now: the next seal reuses it, and its
    // event buffer comes back to the caller (the flusher's accumulator).
    let key = f.interner.key("data:a:x").unwrap();
    let meta = &f.interner.name(key.name_id() as usize).unwrap().meta;
    let mut events = vec![Event {
        meta: NameRef::new(meta),
        sub_key: 0,
        nanos: 0,
        payload: 9u64,
    }];
    let header = Header {
        prefix: "data:a".into(),
        name: "data:a:batch".into(),
        prefix_id: 0,
        reason: BatchReason::Flush,
        seq: 1,
        opened: f.epoch.instant,
        closed: f.epoch.instant,
        epoch: f.epoch,
        dropped: 0,
        folded: 0,
        latest: false,
        keep_alive: std::sync::Arc::new(f.interner.keepalive()),
    };
    let again = f.pool.seal(
        header,
        &mut events,
        &mut Vec::new(),
        &mut Histograms::default(),
    );
    assert_eq!(f.pool.reused(), 1);
    assert_eq!(f.pool.allocated(), 1);
    assert!(events.is_empty());
    assert_eq!(
        events.as_ptr(),
        buffer,
        "the recycled buffer is handed back"
    );
    assert_eq!(again.events.len(), 1);
    // Held handles are never reused: with every batch held, sealing
    // allocates, and the pool stays bounded.
    let held: Vec<_> = (0..10).map(|i| f.seal("data:a:x", vec![i])).collect();
    assert_eq!(f.pool.reused(), 1);
    assert_eq!(f.pool.allocated(), 11);
    assert!(held.iter().all(|s| Arc::strong_count(s) <= 2));
}

struct PanicOnDrop(u32);
impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        if self.0 % 2 == 0 {
            panic!("payload drop {}", self.0);
        }
    }
}

#[test]
fn panicking_payload_drops_are_caught_and_counted_on_recycle() {
    let mut f = Fixture::new(2);
    let mut pool = BatchPool::<PanicOnDrop>::new(2, f.epoch);
    let payloads = (0..4).map(PanicOnDrop).collect();
    drop(f.seal_with(&mut pool, "data:p:x", payloads));
    // Reusing it drops four payloads, two of which panic: both caught (one
    // at a time, so no double panic), counted, and the flusher goes on.
    drop(f.seal_with(&mut pool, "data:p:x", vec![PanicOnDrop(1)]));
    assert_eq!(pool.reused(), 1);
    assert_eq!(pool.drop_panics(), 2);
    let mut events: Vec<Event<PanicOnDrop>> = Vec::new();
    assert_eq!(clear_events(&mut events), 0);
}

#[test]
fn drop_oldest_counts_loss_and_reports_it_in_band() {
    let mut f = Fixture::new(8);
    let q = queue(4); // two batches of two events
    for i in 0..5 {
        // Over budget the queue first merges (while the merged batch fits
        // the budget on its own), then drops the oldest batches.
        let _ = push(&q, &f.seal("data:a:x", vec![i, i]));
        assert!(q.stats().is_conserved());
        assert!(q.stats().queued_events <= 4, "within budget");
    }
    let s = q.stats();
    assert_eq!((s.sealed, s.queued, s.lag_dropped_batches), (5, 2, 3));
    assert_eq!(s.lag_dropped_events, 6);
    assert!(s.is_conserved());
    let b = q.try_pop(Hand::Out).unwrap();
    assert_eq!(
        (b.seq(), b.lagged()),
        (3, 3),
        "oldest kept batch, with the loss in band"
    );
    let b = q.try_pop(Hand::Out).unwrap();
    assert_eq!((b.seq(), b.lagged()), (4, 0), "loss is reported once");
    assert_eq!(q.try_pop(Hand::Out).unwrap_err(), PopError::Empty);
    let s = q.stats();
    assert_eq!(
        (s.delivered_batches, s.delivered_events, s.queued),
        (2, 4, 0)
    );
    assert_eq!(q.done(), 5);
    assert!(s.is_conserved());
}

#[test]
fn lag_is_the_oldest_queued_batch_age() {
    let mut f = Fixture::new(4);
    let q = queue(4);
    assert_eq!(q.stats().lag, Duration::ZERO);
    let _ = push(&q, &f.seal("data:a:x", vec![1]));
    // The fixture's batches closed "now"; 5 ms later the lag is at least 5.
    std::thread::sleep(Duration::from_millis(5));
    assert!(q.stats().lag >= Duration::from_millis(5));
}

#[test]
fn block_waits_for_the_consumer_then_times_out_and_drops_oldest() {
    let mut f = Fixture::new(8);
    let block = |timeout| LagPolicy::Block { timeout };
    let q = StdArc::new(lag_queue(
        block(Duration::from_millis(20)),
        1,
        OnUnsubscribe::Deliver,
    ));
    assert_eq!(push(&*q, &f.seal("data:a:x", vec![0])), (Push::Queued, 0));
    // No consumer: the push waits its timeout, then drops the oldest.
    let start = Instant::now();
    assert_eq!(push(&*q, &f.seal("data:a:x", vec![1])), (Push::Queued, 1));
    assert!(start.elapsed() >= Duration::from_millis(20));
    // With a consumer, a push with an unbounded timeout (no overflow
    // panic) waits for space and nothing is lost.
    let q2 = StdArc::new(lag_queue(block(Duration::MAX), 1, OnUnsubscribe::Deliver));
    let consumer = {
        let q2 = q2.clone();
        std::thread::spawn(move || {
            let mut seqs = Vec::new();
            while let Ok(b) = q2.pop(Hand::Out, None) {
                seqs.push(b.seq());
            }
            seqs
        })
    };
    for i in 0..20 {
        assert_eq!(push(&*q2, &f.seal("data:b:x", vec![i])).1, 0);
    }
    q2.close(OnUnsubscribe::Deliver);
    let seqs = consumer.join().unwrap();
    assert_eq!(seqs, (0..20).collect::<Vec<_>>());
    assert_eq!(q2.stats().lag_dropped_batches, 0);
    // A full Block queue that is closed releases a waiting flusher.
    let q3 = StdArc::new(lag_queue(block(Duration::MAX), 1, OnUnsubscribe::Discard));
    let _ = push(&*q3, &f.seal("data:c:x", vec![0]));
    let closer = {
        let q3 = q3.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            q3.close(OnUnsubscribe::Discard);
        })
    };
    assert_eq!(push(&*q3, &f.seal("data:c:x", vec![1])).0, Push::Closed);
    closer.join().unwrap();
    let s = q3.stats();
    assert_eq!((s.sealed, s.discarded_batches), (1, 1));
    assert!(s.is_conserved());
}

#[test]
fn close_delivers_or_discards_and_flush_waits_complete() {
    let mut f = Fixture::new(8);
    let q = queue(8);
    for i in 0..3 {
        let _ = push(&q, &f.seal("data:a:x", vec![i]));
    }
    let target = q.target();
    assert_eq!(target, 3);
    let soon = Instant::now() + Duration::from_millis(10);
    assert!(!q.wait_done(target, Some(soon)), "nothing processed yet");
    q.close(OnUnsubscribe::Deliver);
    assert_eq!(push(&q, &f.seal("data:a:x", vec![9])).0, Push::Closed);
    assert_eq!(q.try_pop(Hand::Out).unwrap().seq(), 0);
    assert_eq!(q.pop(Hand::Out, None).unwrap().seq(), 1);
    assert!(!q.wait_done(target, Some(Instant::now())));
    assert_eq!(q.try_pop(Hand::Out).unwrap().seq(), 2);
    assert_eq!(q.pop(Hand::Out, None).unwrap_err(), PopError::Closed);
    assert!(q.wait_done(target, None));

    let q = queue(8);
    for i in 0..3 {
        let _ = push(&q, &f.seal("data:a:x", vec![i, i]));
    }
    let target = q.target();
    q.close(OnUnsubscribe::Discard);
    assert!(q.wait_done(target, Some(Instant::now())));
    let s = q.stats();
    assert_eq!(
        (s.discarded_batches, s.discarded_events, s.queued),
        (3, 6, 0)
    );
    assert!(s.closed && s.is_conserved());
    assert_eq!(q.try_pop(Hand::Out).unwrap_err(), PopError::Closed);
}

#[test]
fn flush_wait_with_a_huge_deadline_does_not_overflow() {
    let q = queue(1);
    assert_eq!(deadline_after(Duration::MAX), None);
    assert!(q.wait_done(0, deadline_after(Duration::MAX)));
}

/// Sends what it sees to the test.
fn recorder(
    log: StdArc<StdMutex<Vec<(String, u64, usize)>>>,
) -> impl FnMut(&Batch<u64>) + Send + 'static {
    move |b: &Batch<u64>| {
        log.lock()
            .unwrap()
            .push((b.prefix().to_owned(), b.seq(), b.len()))
    }
}

#[test]
fn callback_subscribers_run_on_their_own_thread_in_order() {
    let mut f = Fixture::new(8);
    let registry = Registry::<u64>::new();
    let log = StdArc::new(StdMutex::new(Vec::new()));
    let flusher = std::thread::current().id();
    let thread_seen = StdArc::new(StdMutex::new(None));
    let (ts, rec) = (thread_seen.clone(), recorder(log.clone()));
    let mut rec = rec;
    let sub = Subscription::spawn(
        &registry,
        "data:*",
        &SubscribeOptions::new("rec"),
        Box::new(move |b: &Batch<u64>| {
            assert!(on_delivery_thread());
            *ts.lock().unwrap() = Some(std::thread::current().id());
            rec(b)
        }),
    )
    .unwrap();
    let mut cache = RouteCache::default();
    for i in 0..10 {
        let taken = f.deliver(&mut cache, &registry, "data:a:x", vec![i; 2]);
        assert_eq!(taken, 1);
    }
    assert_eq!(f.deliver(&mut cache, &registry, "chat:a:x", vec![1]), 0);
    assert!(registry.flush_ticket().wait(None));
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 10);
    assert!(seen
        .iter()
        .enumerate()
        .all(|(i, s)| s.1 == i as u64 && s.2 == 2));
    assert_ne!(*thread_seen.lock().unwrap(), Some(flusher));
    assert!(!on_delivery_thread());
    assert_eq!(sub.stats().panics, 0, "the callback's assertion held");
    let s = sub.unsubscribe();
    assert_eq!((s.delivered_batches, s.delivered_events), (10, 20));
    assert!(s.closed && s.is_conserved());
}

#[test]
fn a_panicking_subscriber_is_counted_and_keeps_receiving() {
    let mut f = Fixture::new(8);
    let registry = Registry::<u64>::new();
    let ok = StdArc::new(AtomicU64::new(0));
    let ok2 = ok.clone();
    let sub = Subscription::spawn(
        &registry,
        "*",
        &SubscribeOptions::new("flaky"),
        Box::new(move |b: &Batch<u64>| {
            if b.seq() % 2 == 0 {
                panic!("subscriber bug");
            }
            ok2.fetch_add(1, Ordering::SeqCst);
        }),
    )
    .unwrap();
    let mut cache = RouteCache::default();
    for i in 0..6 {
        f.deliver(&mut cache, &registry, "data:a:x", vec![i]);
    }
    assert!(registry.flush_ticket().wait(None));
    let s = sub.stats();
    assert_eq!((s.panics, s.delivered_batches), (3, 6));
    assert_eq!(ok.load(Ordering::SeqCst), 3);
    assert!(s.is_conserved());
}

#[test]
fn a_subscriber_can_unsubscribe_itself_without_deadlock_or_loss() {
    let mut f = Fixture::new(8);
    let registry = Registry::<u64>::new();
    let slot: StdArc<StdMutex<Option<Subscription<u64>>>> = StdArc::new(StdMutex::new(None));
    let got = StdArc::new(StdMutex::new(Vec::new()));
    let (slot2, got2) = (slot.clone(), got.clone());
    let sub = Subscription::spawn(
        &registry,
        "*",
        &SubscribeOptions::new("once").on_unsubscribe(OnUnsubscribe::Discard),
        Box::new(move |b: &Batch<u64>| {
            // Unsubscribe from inside the callback (joining would deadlock),
            // then keep using the batch in hand.
            let me = slot2.lock().unwrap().take();
            if let Some(me) = me {
                let stats = me.unsubscribe();
                assert!(stats.closed);
            }
            got2.lock().unwrap().push(b.events()[0].payload);
        }),
    )
    .unwrap();
    let queue = sub.queue().clone();
    *slot.lock().unwrap() = Some(sub);
    let mut cache = RouteCache::default();
    f.deliver(&mut cache, &registry, "data:a:x", vec![7]);
    assert!(queue.wait_done(1, deadline_after(Duration::from_secs(10))));
    assert_eq!(*got.lock().unwrap(), vec![7]);
    // Unsubscribed: the registry no longer routes to it.
    assert_eq!(f.deliver(&mut cache, &registry, "data:a:x", vec![8]), 0);
    let s = queue.stats();
    assert_eq!((s.sealed, s.delivered_batches), (1, 1));
    assert!(s.closed && s.is_conserved());
}

#[test]
fn registry_routes_by_prefix_pattern_and_follows_changes() {
    let mut f = Fixture::new(16);
    let registry = Registry::<u64>::new();
    let data = Receiver::new(&registry, "data:*", &SubscribeOptions::new("data")).unwrap();
    let all = Receiver::new(&registry, "*", &SubscribeOptions::new("all")).unwrap();
    let mut cache = RouteCache::default();
    let d = f.seal("data:users:created", vec![1]);
    let c = f.seal("chat:s1:delta", vec![2]);
    assert_eq!(f.deliver_sealed(&mut cache, &registry, &d), 2);
    assert_eq!(f.deliver_sealed(&mut cache, &registry, &c), 1);
    let g = registry.generation();
    // Resolved once per prefix: same generation, same cached queues.
    let before = cache.queues_for(&registry, d.prefix_id, &d.prefix).as_ptr();
    assert_eq!(
        cache.queues_for(&registry, d.prefix_id, &d.prefix).as_ptr(),
        before
    );
    // A new subscription at run time is picked up on the next delivery.
    let chat = Receiver::new(&registry, "chat:*", &SubscribeOptions::new("chat")).unwrap();
    assert_ne!(registry.generation(), g);
    assert_eq!(f.deliver_sealed(&mut cache, &registry, &c), 2);
    drop(all);
    assert_eq!(f.deliver_sealed(&mut cache, &registry, &c), 1);
    assert_eq!(f.deliver_sealed(&mut cache, &registry, &d), 1);
    assert_eq!(data.try_recv().unwrap().prefix(), "data:users");
    assert_eq!(chat.try_recv().unwrap().prefix(), "chat:s1");
    assert_eq!(registry.stats().len(), 2);
}

#[test]
fn bad_subscriptions_are_typed_errors() {
    let registry = Registry::<u64>::new();
    let opts = SubscribeOptions::new("x");
    assert!(matches!(
        Receiver::new(&registry, "da*", &opts),
        Err(Error::InvalidPattern { .. })
    ));
    assert!(matches!(
        Receiver::new(&registry, "", &opts),
        Err(Error::InvalidPattern { .. })
    ));
    for zero in [
        SubscribeOptions::new("x").budget(Budget::new(0, 1)),
        SubscribeOptions::new("x").budget(Budget::new(1, 0)),
        SubscribeOptions::new("x").coalesce_after(0),
    ] {
        assert!(matches!(
            Receiver::new(&registry, "*", &zero),
            Err(Error::InvalidConfig(_))
        ));
    }
    // A name that std could not give a thread is not a panic.
    let nul = SubscribeOptions::new("a\0b");
    let sub = Subscription::spawn(&registry, "*", &nul, Box::new(|_: &Batch<u64>| {})).unwrap();
    assert_eq!(sub.unsubscribe().name, "a\0b");
    registry.close_all();
    assert!(matches!(
        Receiver::new(&registry, "*", &opts),
        Err(Error::ShutDown)
    ));
    assert!(matches!(
        Subscription::spawn(&registry, "*", &opts, Box::new(|_: &Batch<u64>| {})),
        Err(Error::ShutDown)
    ));
}

#[test]
fn receiver_recv_variants_and_shutdown_end() {
    let mut f = Fixture::new(8);
    let registry = Registry::<u64>::new();
    let rx = Receiver::new(&registry, "*", &SubscribeOptions::new("rx")).unwrap();
    assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(5)).unwrap_err(),
        RecvTimeoutError::Timeout
    );
    let mut cache = RouteCache::default();
    f.deliver(&mut cache, &registry, "data:a:x", vec![1]);
    f.deliver(&mut cache, &registry, "data:a:x", vec![2]);
    f.deliver(&mut cache, &registry, "data:a:x", vec![3]);
    assert_eq!(rx.recv_timeout(Duration::MAX).unwrap().seq(), 0);
    assert_eq!(rx.recv().unwrap().seq(), 1);
    // Shutdown closes: what is queued still comes out, then the end.
    registry.close_all();
    assert_eq!(rx.try_recv().unwrap().seq(), 2);
    assert!(rx.recv().is_none());
    assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Closed);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(1)).unwrap_err(),
        RecvTimeoutError::Closed
    );
    let s = rx.stats();
    assert_eq!(s.delivered_batches, 3);
    assert!(s.is_conserved());
}

#[test]
fn dropping_a_receiver_discards_and_releases_flush() {
    let mut f = Fixture::new(8);
    let registry = Registry::<u64>::new();
    let rx = Receiver::new(&registry, "*", &SubscribeOptions::new("rx")).unwrap();
    let queue = rx.queue().clone();
    let mut cache = RouteCache::default();
    f.deliver(&mut cache, &registry, "data:a:x", vec![1, 2]);
    let ticket = registry.flush_ticket();
    assert!(!ticket.wait(Some(Instant::now())));
    drop(rx);
    assert!(ticket.wait(Some(Instant::now())));
    let s = queue.stats();
    assert_eq!((s.discarded_batches, s.discarded_events), (1, 2));
    assert!(s.is_conserved());
}

#[test]
fn slow_subscriber_costs_only_itself() {
    // One subscriber stuck in its callback, one healthy: the flusher's
    // pushes never wait, the healthy one gets everything, the stuck one
    // loses the overflow to its lag policy, counted and conserved.
    let mut f = Fixture::new(8);
    let registry = Registry::<u64>::new();
    let gate = StdArc::new(StdMutex::new(()));
    let held = gate.lock().unwrap();
    let g2 = gate.clone();
    let slow = Subscription::spawn(
        &registry,
        "*",
        &tight("slow", 4),
        Box::new(move |_: &Batch<u64>| drop(g2.lock().unwrap())),
    )
    .unwrap();
    let fast = Receiver::new(&registry, "*", &SubscribeOptions::new("fast")).unwrap();
    let mut cache = RouteCache::default();
    for i in 0..100 {
        assert_eq!(f.deliver(&mut cache, &registry, "data:a:x", vec![i]), 2);
    }
    // The fast receiver, read only now, fell behind too: its queue merged
    // (fewer, larger batches), and it lost nothing.
    let (mut windows, mut events, mut deliveries) = (0, 0, 0);
    while let Ok(b) = fast.try_recv() {
        windows += b.merged();
        events += b.len();
        deliveries += 1;
    }
    assert_eq!((windows, events), (100, 100));
    assert!(deliveries < 100, "merged: {deliveries} deliveries");
    let s = slow.stats();
    assert!(s.lag_dropped_batches >= 95, "{s:?}");
    assert!(s.is_conserved(), "{s:?}");
    drop(held);
    let ticket = registry.flush_ticket();
    assert!(ticket.wait(None));
    let s = slow.unsubscribe();
    assert_eq!(s.delivered_batches + s.lag_dropped_batches, 100);
    assert!(s.is_conserved());
}

#[test]
fn a_lagging_subscriber_does_not_make_sealing_allocate() {
    // The lagging queue always holds the newest batches, which the pool's
    // recently-sealed list then only sees held; batches the queue drops for
    // lag come back to the pool instead, so sealing keeps recycling.
    let mut f = Fixture::new(4);
    let registry = Registry::<u64>::new();
    let stuck = Receiver::new(&registry, "*", &tight("stuck", 4)).unwrap();
    let fast = Receiver::new(&registry, "*", &SubscribeOptions::new("fast")).unwrap();
    let mut cache = RouteCache::default();
    for i in 0..100 {
        f.deliver(&mut cache, &registry, "data:a:x", vec![i]);
        drop(fast.try_recv().unwrap());
    }
    let s = stuck.stats();
    assert_eq!((s.queued, s.lag_dropped_batches), (4, 96));
    assert!(f.pool.allocated() <= 10, "allocated {}", f.pool.allocated());
    assert_eq!(
        f.pool.allocated() + f.pool.reused() + f.pool.reserve_taken(),
        100
    );
}

#[test]
fn a_backlog_within_the_queues_capacity_never_makes_sealing_allocate() {
    // A consumer that falls behind (a delivery thread descheduled for a
    // while) holds a deeper backlog than any before it: the pool must not
    // have to learn that depth by allocating. Within the subscribers' bound
    // (queue capacity + the batch in hand, each), it does not.
    const CAP: usize = 64;
    let mut f = Fixture::new(1024);
    let registry = Registry::<u64>::new();
    let opts = |name: &str| tight(name, CAP as u64);
    let slow = Receiver::new(&registry, "*", &opts("slow")).unwrap();
    let fast = Receiver::new(&registry, "data:*", &opts("fast")).unwrap();
    let mut cache = RouteCache::default();
    // Warm-up: shallow backlogs (one batch at a time).
    for i in 0..100 {
        f.deliver(&mut cache, &registry, "data:a:x", vec![i]);
        drop(slow.try_recv().unwrap());
        drop(fast.try_recv().unwrap());
    }
    let warm = f.pool.allocated();
    // Now the slow one stalls for a full queue, holding one more in hand.
    for _ in 0..3 {
        f.deliver(&mut cache, &registry, "data:a:x", vec![0]);
        drop(fast.try_recv().unwrap());
        let in_hand = slow.try_recv().unwrap();
        for i in 0..CAP as u64 {
            f.deliver(&mut cache, &registry, "data:a:x", vec![i]);
            drop(fast.try_recv().unwrap());
        }
        drop(in_hand);
        while slow.try_recv().is_ok() {}
    }
    assert_eq!(slow.stats().lag_dropped_batches, 0);
    assert_eq!(
        f.pool.allocated(),
        warm,
        "sealing allocated for a backlog within the queue's capacity"
    );
    // The other path: batches kept by a consumer beyond the pool's
    // capacity (1024 here) are past the bound, and cost allocations (the
    // pool stays bounded).
    let kept: Vec<_> = (0..1024 + CAP as u64)
        .map(|i| {
            f.deliver(&mut cache, &registry, "data:a:x", vec![i]);
            drop(fast.try_recv().unwrap());
            slow.try_recv().unwrap()
        })
        .collect();
    assert!(f.pool.allocated() > warm);
    drop(kept);
}

#[test]
fn dropping_a_deliver_subscription_still_delivers_what_was_queued() {
    let mut f = Fixture::new(8);
    let registry = Registry::<u64>::new();
    let gate = StdArc::new(StdMutex::new(()));
    let held = gate.lock().unwrap();
    let (g2, count) = (gate.clone(), StdArc::new(AtomicU64::new(0)));
    let c2 = count.clone();
    let sub = Subscription::spawn(
        &registry,
        "*",
        &SubscribeOptions::new("deliver"),
        Box::new(move |_: &Batch<u64>| {
            drop(g2.lock().unwrap());
            c2.fetch_add(1, Ordering::SeqCst);
        }),
    )
    .unwrap();
    let queue = sub.queue().clone();
    let mut cache = RouteCache::default();
    for i in 0..5 {
        f.deliver(&mut cache, &registry, "data:a:x", vec![i]);
    }
    // Dropping never waits for the (stuck) delivery thread...
    drop(sub);
    assert_eq!(f.deliver(&mut cache, &registry, "data:a:x", vec![9]), 0);
    drop(held);
    // ...which still delivers the five queued batches, then exits.
    assert!(queue.wait_done(5, deadline_after(Duration::from_secs(10))));
    assert_eq!(count.load(Ordering::SeqCst), 5);
    let s = queue.stats();
    assert_eq!(
        (s.sealed, s.delivered_batches, s.discarded_batches),
        (5, 5, 0)
    );
}

/// An async flush (`FlushTicket::poll`) behind a slow callback subscriber
/// never blocks the runtime: on a current-thread runtime another task
/// keeps running while the flush waits.
async fn async_flush_scenario() {
    let mut f = Fixture::new(8);
    let registry = Registry::<u64>::new();
    let sub = Subscription::spawn(
        &registry,
        "*",
        &SubscribeOptions::new("slow"),
        Box::new(|_: &Batch<u64>| std::thread::sleep(Duration::from_millis(2))),
    )
    .unwrap();
    let mut cache = RouteCache::default();
    for i in 0..20 {
        f.deliver(&mut cache, &registry, "data:a:x", vec![i]);
    }
    let ticks = StdArc::new(AtomicU64::new(0));
    let t2 = ticks.clone();
    let ticker = tokio::spawn(async move {
        loop {
            t2.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
        }
    });
    let ticket = registry.flush_ticket();
    std::future::poll_fn(|cx| ticket.poll(cx)).await;
    assert!(ticks.load(Ordering::SeqCst) > 0, "the runtime kept running");
    ticker.abort();
    let s = sub.stats();
    assert_eq!(s.delivered_batches, 20);
}

#[test]
fn async_flush_on_current_thread_runtime() {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async_flush_scenario());
}

#[test]
fn async_flush_on_multi_thread_runtime() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async_flush_scenario());
}

#[test]
fn a_pattern_subscribes_to_a_prefix_or_the_names_directly_under_it() {
    let to = |pattern: &str, prefix: &str| {
        subscribes_to(&crate::policy::Pattern::parse(pattern).unwrap(), prefix)
    };
    assert!(to("chat:*", "chat"), "names `chat:<x>`");
    assert!(to("chat:*", "chat:s1"));
    assert!(to("data:*", "data:users"));
    assert!(to("data:users", "data:users"));
    assert!(to("data:users:created", "data:users"));
    assert!(to("a:*:c", "a:b"));
    assert!(to("*", "any:deep:prefix"));
    assert!(!to("data:users:created", "data"), "two levels down");
    assert!(!to("a:*:c", "a"));
    assert!(!to("chat:*", "data:users"));
    assert!(!to("data:orders", "data:users"));
}

#[cfg(feature = "stream")]
mod stream {
    use super::*;
    use futures_core::Stream;
    use std::future::poll_fn;
    use std::pin::Pin;

    async fn collect(mut rx: Receiver<u64>) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        while let Some(b) = poll_fn(|cx| Pin::new(&mut rx).poll_next(cx)).await {
            out.push((b.seq(), b.events()[0].payload));
        }
        out
    }

    /// A flusher thread seals and queues 50 batches while a task consumes
    /// them as a stream; then an async flush wait and the stream's end.
    async fn scenario() {
        let registry = Registry::<u64>::new();
        let rx = Receiver::new(&registry, "data:*", &SubscribeOptions::new("async")).unwrap();
        let queue = rx.queue().clone();
        let consumer = tokio::spawn(collect(rx));
        let reg = registry.clone();
        let flusher = std::thread::spawn(move || {
            let mut f = Fixture::new(8);
            let mut cache = RouteCache::default();
            for i in 0..50 {
                f.deliver(&mut cache, &reg, "data:a:x", vec![i]);
                if i % 10 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        // The async flush wait never blocks this worker thread (on the
        // current-thread runtime the consumer task runs on it too).
        while !flusher.is_finished() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        flusher.join().unwrap();
        let ticket = registry.flush_ticket();
        poll_fn(|cx| ticket.poll(cx)).await;
        assert_eq!(queue.done(), 50);
        registry.close_all();
        let got = consumer.await.unwrap();
        assert_eq!(got, (0..50).map(|i| (i, i)).collect::<Vec<_>>());
    }

    #[test]
    fn stream_on_current_thread_runtime() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(scenario());
    }

    #[test]
    fn stream_on_multi_thread_runtime() {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap()
            .block_on(scenario());
    }
}

/// A queue that merges as soon as one batch waits.
fn merging_queue(budget: Budget) -> Queue<u64> {
    Queue::new(
        "m",
        LagPolicy::DropOldest,
        budget,
        1,
        OnUnsubscribe::Deliver,
    )
}

fn payloads(b: &Batch<u64>) -> Vec<(String, u64)> {
    b.events()
        .iter()
        .map(|e| (e.name().to_owned(), *e.payload()))
        .collect()
}

#[test]
fn a_lagging_queue_merges_windows_of_a_prefix_in_order() {
    let mut f = Fixture::new(8);
    let q = merging_queue(Budget::default());
    assert_eq!(push(&q, &f.seal("data:a:x", vec![1, 2])), (Push::Queued, 0));
    // Behind (one batch waits): a's next windows merge into it, b's first
    // is queued on its own.
    assert_eq!(push(&q, &f.seal("data:a:x", vec![3])), (Push::Merged, 0));
    assert_eq!(push(&q, &f.seal("data:b:x", vec![9])), (Push::Queued, 0));
    assert_eq!(push(&q, &f.seal("data:a:y", vec![4, 5])), (Push::Merged, 0));
    let s = q.stats();
    assert_eq!((s.sealed, s.queued, s.merged_batches), (4, 4, 2));
    assert_eq!((s.queued_events, s.sealed_events), (6, 6));
    assert!(s.is_conserved(), "{s:?}");
    let a = q.try_pop(Hand::Out).unwrap();
    assert_eq!(
        (a.seq(), a.last_seq(), a.merged(), a.lagged()),
        (0, 2, 3, 0)
    );
    assert_eq!(a.len(), 5);
    let want: Vec<u64> = a.events().iter().map(|e| *e.payload()).collect();
    assert_eq!(want, [1, 2, 3, 4, 5], "events concatenated in seal order");
    // The view: indexing, from the back, and sizes agree.
    let ev = a.events();
    assert_eq!((*ev[3].payload(), ev.get(5).is_none()), (4, true));
    let back: Vec<u64> = ev.iter().rev().map(|e| *e.payload()).collect();
    assert_eq!(back, [5, 4, 3, 2, 1]);
    assert_eq!(ev.iter().len(), 5);
    assert!(ev.as_slice().is_none());
    assert_eq!(
        (a.dropped(), a.folded()),
        (3, 6),
        "per-window figures summed"
    );
    assert!(a.opened_at() < a.closed_at());
    let b = q.try_pop(Hand::Out).unwrap();
    assert_eq!((b.prefix(), b.merged(), b.len()), ("data:b", 1, 1));
    assert!(b.events().as_slice().is_some());
    let s = q.stats();
    assert_eq!(
        (s.deliveries, s.delivered_batches, s.delivered_events),
        (2, 4, 6)
    );
    assert_eq!(q.done(), 4, "a flush counts merged windows done");
    assert!(s.is_conserved(), "{s:?}");
}

#[test]
fn merged_latest_windows_keep_the_last_value_per_key_in_first_appearance_order() {
    let mut f = Fixture::with_latest(8);
    let q = merging_queue(Budget::default());
    let _ = push(&q, &f.seal_named(&[("latest:g:x", 1), ("latest:g:y", 2)]));
    let _ = push(&q, &f.seal_named(&[("latest:g:x", 3)]));
    // A passthrough name of the same prefix is never superseded.
    let _ = push(&q, &f.seal_named(&[("latest:g:z", 4), ("latest:g:y", 5)]));
    let s = q.stats();
    assert_eq!((s.merge_folded_events, s.queued_events), (2, 3));
    assert!(s.is_conserved(), "{s:?}");
    let b = q.try_pop(Hand::Out).unwrap();
    assert_eq!(
        payloads(&b),
        [
            ("latest:g:x".to_owned(), 3),
            ("latest:g:y".to_owned(), 5),
            ("latest:g:z".to_owned(), 4)
        ]
    );
    assert_eq!((b.merged(), b.folded()), (3, 3 * 2 + 2));
    // An urgent window's urgent (last) event goes after every survivor,
    // superseding its key's earlier survivor.
    let _ = push(&q, &f.seal_named(&[("latest:g:x", 10), ("latest:g:y", 11)]));
    f.reason = BatchReason::Urgent;
    let _ = push(&q, &f.seal_named(&[("latest:g:w", 12), ("latest:g:x", 13)]));
    f.reason = BatchReason::Count;
    let b = q.try_pop(Hand::Out).unwrap();
    assert_eq!(b.reason(), BatchReason::Urgent);
    assert_eq!(
        payloads(&b),
        [
            ("latest:g:y".to_owned(), 11),
            ("latest:g:w".to_owned(), 12),
            ("latest:g:x".to_owned(), 13)
        ]
    );
    assert!(q.stats().is_conserved());
}

#[test]
fn merged_latest_windows_let_go_of_superseded_windows() {
    // A stuck subscriber of a `latest` prefix holds one window's worth,
    // not every window it missed.
    let mut f = Fixture::with_latest(8);
    let q = merging_queue(Budget::default());
    for i in 0..10 {
        let _ = push(&q, &f.seal_named(&[("latest:g:x", i)]));
    }
    let after_ten = q.stats().queued_bytes;
    for i in 10..1000 {
        let _ = push(&q, &f.seal_named(&[("latest:g:x", i)]));
    }
    let s = q.stats();
    assert_eq!(
        (s.queued, s.queued_events, s.merge_folded_events),
        (1000, 1, 999)
    );
    // The head window, the survivor's window and the merge's own buffers:
    // the same after 1000 windows as after 10.
    assert_eq!(
        s.queued_bytes, after_ten,
        "memory grew with the windows missed"
    );
    let b = q.try_pop(Hand::Out).unwrap();
    assert_eq!(
        (payloads(&b), b.merged()),
        (vec![("latest:g:x".to_owned(), 999)], 1000)
    );
}

#[test]
fn over_budget_the_queue_drops_plain_batches_before_final_values() {
    let mut f = Fixture::with_latest(8);
    // Never merges for being behind; two events of budget.
    let q = lag_queue(LagPolicy::DropOldest, 2, OnUnsubscribe::Deliver);
    let _ = push(&q, &f.seal_named(&[("latest:g:x", 1)])); // a final value
    let _ = push(&q, &f.seal("data:a:x", vec![2]));
    let _ = push(&q, &f.seal("data:b:x", vec![3])); // over: data:a goes
    let s = q.stats();
    assert_eq!((s.lag_dropped_batches, s.queued), (1, 2));
    // Over budget, a window of final values merges instead of queueing.
    assert_eq!(
        push(&q, &f.seal_named(&[("latest:g:x", 4)])),
        (Push::Merged, 0)
    );
    let first = q.try_pop(Hand::Out).unwrap();
    assert_eq!(payloads(&first), [("latest:g:x".to_owned(), 4)]);
    assert_eq!(first.lagged(), 1, "the dropped window, in band");
    assert!(q.stats().is_conserved());
}

#[test]
fn aggregates_merge_exactly() {
    use crate::event::Aggregate;
    use crate::event::InternedStr;
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let agg = |count, int_sum, min: f64, max: f64, first: (f64, u64), last: (f64, u64)| Aggregate {
        name: InternedStr::new(&std::sync::Arc::from("gpu:0:w")),
        key: crate::intern::EventKey::for_tests(0, 0),
        count,
        int_sum,
        float_sum: 0.0,
        exact: true,
        min,
        max,
        first: (first.0, at(first.1)),
        last: (last.0, at(last.1)),
    };
    let mut a = agg(2, i128::from(u64::MAX), 1.0, 9.0, (9.0, 1), (1.0, 2));
    let b = agg(3, i128::from(u64::MAX), 0.5, 4.0, (4.0, 3), (0.5, 5));
    crate::fold::merge_aggregate(&mut a, &b);
    assert_eq!(a.count(), 5);
    assert_eq!(a.sum_exact(), Some(2 * i128::from(u64::MAX)));
    assert_eq!((a.min(), a.max()), (0.5, 9.0));
    assert_eq!((a.first().0, a.last().0), (9.0, 0.5));
    // Overflowing the exact sum moves it to the float sum, exactness ends.
    let mut big = agg(1, i128::MAX, 1.0, 1.0, (1.0, 0), (1.0, 0));
    crate::fold::merge_aggregate(&mut big, &agg(1, i128::MAX, 1.0, 1.0, (1.0, 0), (1.0, 0)));
    assert_eq!(big.sum_exact(), None);
    assert!(big.sum() > 3.0e38 && big.sum().is_finite());
}

#[test]
fn merged_histograms_add_their_buckets_and_count_their_memory() {
    use super::merge::Merge;
    use crate::Sketch;
    let mut f = Fixture::new(8);
    let q = merging_queue(Budget::default());
    // Positive, negative, zero, a wide range and repeats, over 3 windows.
    let windows: [&[f64]; 3] = [&[1.0, 2.0, 3.0], &[-5.0, 0.0, 1e6], &[7.5; 10]];
    let mut all = Sketch::default();
    let mut sealed = Vec::new();
    for w in windows {
        sealed.push(f.seal_histogram("hist:a:x", w));
        let (pushed, _) = push(&q, sealed.last().unwrap());
        assert!(matches!(pushed, Push::Queued | Push::Merged));
        for &v in w {
            all.add(v);
        }
    }
    let b = q.try_pop(Hand::Out).unwrap();
    assert_eq!((b.merged(), b.histograms().len()), (3, 1));
    let h = &b.histograms()[0];
    assert_eq!(h.name(), "hist:a:x");
    assert_eq!(
        (h.count(), h.sum()),
        (16, 1.0 + 2.0 + 3.0 - 5.0 + 1e6 + 75.0)
    );
    assert_eq!((h.min(), h.max()), (-5.0, 1e6));
    // Buckets added: exactly the quantiles of one sketch of every sample.
    for q in [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0] {
        assert_eq!(Some(h.quantile(q)), all.quantile(q), "q={q}");
    }
    // Memory: a window's footprint and a merge's own bytes count the
    // sketches' bucket arrays.
    let hist_bytes = sealed[0].histograms.heap_bytes() as u64;
    assert!(hist_bytes >= 64 * 8, "a sketch holds at least 64 buckets");
    assert!(sealed[0].footprint() >= hist_bytes);
    let mut m = Merge::new();
    m.start(&sealed[0]);
    m.absorb(&sealed[1]);
    let with = m.own_bytes();
    let merged_bytes = m.histograms.heap_bytes() as u64;
    assert!(merged_bytes >= 64 * 8);
    m.histograms = Histograms::default();
    assert_eq!(with - m.own_bytes(), merged_bytes);
}
