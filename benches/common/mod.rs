//! What the contender benches share (`mod common;` in each): the workload
//! (64 prefixes, `data:t<i>:created`, the 100-event / 50 ms grouping rule),
//! thread pinning, the per-prefix [`Grouper`] every transport contender's
//! consumer uses, the consumer loops, the producer/consumer harness, the
//! `parking_lot` accumulator, and the few contender-specific pieces (tokio
//! receiver, disruptor multi producer) more than one bench builds.
//!
//! What a grouped batch turns into is the bench's choice, through
//! [`Emit`]: `throughput` counts it, `consumer_work` serialises it to JSON
//! and writes it to a file.

// Each bench uses a subset.
#![allow(dead_code)]

use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

pub const PREFIXES: usize = 64;
pub const WINDOW: Duration = Duration::from_millis(50);
pub const MAX_COUNT: usize = 100;
pub const TICK: Duration = Duration::from_millis(5);
/// Slots per ring / channel capacity (ringfold's default ring capacity).
pub const CAPACITY: usize = 4096;

pub fn quick() -> bool {
    std::env::var("RINGFOLD_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Nearest-rank percentile of sorted nanoseconds.
pub fn pct(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

// ---------------------------------------------------------------------------
// Pinning.

/// The machine's cores, looked up once (empty if `core_affinity` cannot
/// list them; then nothing is pinned).
///
/// `RINGFOLD_BENCH_PIN=0` turns pinning off (to compare with the
/// scheduler's placement).
pub fn cores() -> &'static [core_affinity::CoreId] {
    static CORES: std::sync::OnceLock<Vec<core_affinity::CoreId>> = std::sync::OnceLock::new();
    CORES.get_or_init(|| {
        if std::env::var("RINGFOLD_BENCH_PIN").is_ok_and(|v| v == "0") {
            return Vec::new();
        }
        core_affinity::get_core_ids().unwrap_or_default()
    })
}

/// Pins the calling thread for role `role`: 0 is the consumer, `j + 1`
/// producer `j`. Round-robin over the cores, so the roles get distinct
/// cores exactly when there are enough of them.
pub fn pin(role: usize) {
    let c = cores();
    if !c.is_empty() {
        core_affinity::set_for_current(c[role % c.len()]);
    }
}

/// The role-0 core for ringfold's flusher (`EngineBuilder::pin_flusher`)
/// and its subscriber's delivery thread (`SubscribeOptions::pin_to_core`).
pub fn consumer_core() -> Option<usize> {
    (!cores().is_empty()).then_some(0)
}

// ---------------------------------------------------------------------------
// The workload.

/// Event names and their prefixes, leaked once so every design can hold
/// `&'static str`s.
pub struct Names {
    pub names: Vec<&'static str>,
    pub prefixes: Vec<&'static str>,
}

pub fn names() -> &'static Names {
    static NAMES: std::sync::OnceLock<Names> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let names: Vec<&'static str> = (0..PREFIXES)
            .map(|i| &*Box::leak(format!("data:t{i}:created").into_boxed_str()))
            .collect();
        let prefixes = names.iter().map(|n| &n[..n.rfind(':').unwrap()]).collect();
        Names { names, prefixes }
    })
}

/// What the contenders' transports carry: the same ids and payload a
/// ringfold record carries (interned name and prefix, `u64`).
#[derive(Clone, Copy)]
pub struct Rec {
    pub name: u32,
    pub prefix: u32,
    pub payload: u64,
}

pub fn rec(i: usize, payload: u64) -> Rec {
    Rec {
        name: i as u32,
        prefix: i as u32,
        payload,
    }
}

/// Which event producer `j` publishes `i`-th: spread over the 64 prefixes.
#[inline]
pub fn slot(i: u64, j: usize) -> usize {
    (i as usize + j) % PREFIXES
}

// ---------------------------------------------------------------------------
// ringfold.

/// ringfold as the contender benches run it: every prefix under
/// `Policy::batch(50 ms, 100)` (everyone's grouping rule), producers that
/// wait up to 5 s for ring space (`FullPolicy::Block`) instead of dropping,
/// one subscriber on every prefix with `options`. The flusher and the
/// subscriber's delivery thread share the consumer core, as every
/// contender's consumer has that core: left unpinned, the scheduler may
/// wake them on a producer's core.
pub fn ringfold_engine(
    mut options: ringfold::SubscribeOptions,
    subscriber: impl ringfold::Subscriber<u64> + 'static,
) -> (ringfold::Engine<u64>, Vec<ringfold::EventKey>) {
    if let Some(core) = consumer_core() {
        options = options.pin_to_core(core);
    }
    let mut builder = ringfold::Engine::<u64>::builder()
        .default_policy(ringfold::Policy::batch(WINDOW, MAX_COUNT))
        .on_full(ringfold::FullPolicy::Block(Duration::from_secs(5)))
        .subscriber_with("*", options, subscriber);
    if let Some(core) = consumer_core() {
        builder = builder.pin_flusher(core);
    }
    let engine = builder.build().unwrap();
    let keys: Vec<_> = names()
        .names
        .iter()
        .map(|s| engine.key(s).unwrap())
        .collect();
    (engine, keys)
}

// ---------------------------------------------------------------------------
// Grouping.

/// What a consumer does with one grouped batch of one prefix.
pub trait Emit {
    /// One batch: `events` (never empty) all have prefix id `prefix`.
    fn emit(&mut self, prefix: usize, events: &[Rec]);
    /// The stream ended (after the last `emit`).
    fn finish(&mut self) {}
}

/// One open group per prefix and the sink they go to: the storage both
/// grouping designs below share.
struct Groups<S: Emit> {
    accs: Vec<Vec<Rec>>,
    sink: S,
}

impl<S: Emit> Groups<S> {
    fn new(sink: S) -> Self {
        Groups {
            accs: (0..PREFIXES)
                .map(|_| Vec::with_capacity(MAX_COUNT))
                .collect(),
            sink,
        }
    }
    /// Adds `r` to its prefix's group, emitting the group when it reaches
    /// `MAX_COUNT`; says whether the group was empty before.
    #[inline]
    fn push(&mut self, r: Rec) -> bool {
        let p = r.prefix as usize;
        let acc = &mut self.accs[p];
        let opened = acc.is_empty();
        acc.push(r);
        if acc.len() >= MAX_COUNT {
            self.emit(p);
        }
        opened
    }
    fn is_open(&self, p: usize) -> bool {
        !self.accs[p].is_empty()
    }
    fn emit(&mut self, p: usize) {
        let acc = &mut self.accs[p];
        if !acc.is_empty() {
            self.sink.emit(p, acc);
            acc.clear();
        }
    }
    /// End of stream: emits every open group, then finishes the sink.
    fn finish(&mut self) {
        for p in 0..PREFIXES {
            self.emit(p);
        }
        self.sink.finish();
    }
}

/// Per-prefix windows for the transport contenders: the same rule as
/// `Policy::batch(50 ms, 100)` (emit at 100 events or when the window that
/// began with the prefix's first pending event has elapsed).
pub struct Grouper<S: Emit> {
    groups: Groups<S>,
    deadlines: Vec<Instant>,
    pub received: u64,
}

impl<S: Emit> Grouper<S> {
    pub fn new(sink: S) -> Self {
        Grouper {
            groups: Groups::new(sink),
            deadlines: vec![Instant::now(); PREFIXES],
            received: 0,
        }
    }
    #[inline]
    pub fn take(&mut self, r: Rec, now: Instant) {
        self.received += 1;
        let p = r.prefix as usize;
        if self.groups.push(r) {
            self.deadlines[p] = now + WINDOW;
        }
    }
    pub fn emit_due(&mut self, now: Instant) {
        for p in 0..PREFIXES {
            if self.groups.is_open(p) && now >= self.deadlines[p] {
                self.groups.emit(p);
            }
        }
    }
    /// End of stream: emits every open window, then finishes the sink.
    pub fn finish(&mut self) {
        self.groups.finish();
    }
}

/// The accumulator a careful user would write with a lock: one
/// `parking_lot::Mutex` over per-prefix `Vec`s indexed by integer prefix id
/// (no hashing, no strings). The batch rule is the same as everyone's: a
/// producer that fills a prefix to 100 emits it; the ticker emits prefixes
/// whose window (counted in ticks since their first pending event) has
/// elapsed. Emitting (the sink's work) is done under the lock.
pub struct LockedAcc<S: Emit> {
    groups: Groups<S>,
    opened: Vec<u64>,
    tick: u64,
}

impl<S: Emit> LockedAcc<S> {
    pub fn new(sink: S) -> Self {
        LockedAcc {
            groups: Groups::new(sink),
            opened: vec![0; PREFIXES],
            tick: 0,
        }
    }
    #[inline]
    pub fn publish(&mut self, r: Rec) {
        let p = r.prefix as usize;
        if self.groups.push(r) {
            self.opened[p] = self.tick;
        }
    }
    pub fn on_tick(&mut self, last: bool) {
        const WINDOW_TICKS: u64 = (WINDOW.as_millis() / TICK.as_millis()) as u64;
        self.tick += 1;
        for p in 0..PREFIXES {
            if last || self.tick - self.opened[p] >= WINDOW_TICKS {
                self.groups.emit(p);
            }
        }
    }
    /// End of stream: emits every open window, then finishes the sink.
    pub fn finish(&mut self) {
        self.groups.finish();
    }
}

// ---------------------------------------------------------------------------
// Consumers and the harness.

/// The polling consumer shared by the transports without a blocking
/// receive (rtrb, disruptor's `EventPoller`, `ArrayQueue`): `poll` hands
/// every event available now to the grouper and says how many; on an empty
/// poll the consumer yields its core (on 2 cores a spinning consumer would
/// starve the producers).
pub fn poll_consumer<S: Emit>(
    mut poll: impl FnMut(&mut Grouper<S>, Instant) -> usize,
    sink: S,
    expected: u64,
) {
    pin(0);
    let mut grouper = Grouper::new(sink);
    while grouper.received < expected {
        let now = Instant::now();
        let got = poll(&mut grouper, now);
        grouper.emit_due(now);
        if got == 0 {
            thread::yield_now();
        }
    }
    grouper.finish();
}

/// Runs `p` producer threads (producer `j` calls `produce(j, per, h)`,
/// pinned to role `j + 1`) beside `consume` (which pins itself), timed from
/// the common start until both sides are done.
pub fn run_threads<P>(
    p: usize,
    produce: impl Fn(usize, u64, P) + Sync,
    handles_for: Vec<P>,
    consume: impl FnOnce() + Send,
    total: u64,
) -> Duration
where
    P: Send,
{
    assert_eq!(handles_for.len(), p);
    let per = total / p as u64;
    let barrier = Barrier::new(p + 2);
    thread::scope(|s| {
        let barrier = &barrier;
        let produce = &produce;
        let consumer = s.spawn(move || {
            barrier.wait();
            consume();
        });
        let handles: Vec<_> = handles_for
            .into_iter()
            .enumerate()
            .map(|(j, h)| {
                s.spawn(move || {
                    pin(j + 1);
                    barrier.wait();
                    produce(j, per, h);
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        for h in handles {
            h.join().unwrap();
        }
        consumer.join().unwrap();
        t0.elapsed()
    })
}

/// A channel's receiving end, as the consumer loop uses it.
pub trait Recv {
    /// Waits up to `t` for one event.
    fn recv_timeout(&mut self, t: Duration) -> Option<Rec>;
    /// Takes one event if there is one.
    fn try_recv(&mut self) -> Option<Rec>;
}

impl Recv for crossbeam_channel::Receiver<Rec> {
    fn recv_timeout(&mut self, t: Duration) -> Option<Rec> {
        crossbeam_channel::Receiver::recv_timeout(self, t).ok()
    }
    fn try_recv(&mut self) -> Option<Rec> {
        crossbeam_channel::Receiver::try_recv(self).ok()
    }
}

impl Recv for std::sync::mpsc::Receiver<Rec> {
    fn recv_timeout(&mut self, t: Duration) -> Option<Rec> {
        std::sync::mpsc::Receiver::recv_timeout(self, t).ok()
    }
    fn try_recv(&mut self) -> Option<Rec> {
        std::sync::mpsc::Receiver::try_recv(self).ok()
    }
}

/// tokio's receiver outside async code: the timed wait runs on a
/// current-thread runtime owned by the consumer thread.
pub struct TokioRx {
    rt: tokio::runtime::Runtime,
    rx: tokio::sync::mpsc::Receiver<Rec>,
}

impl TokioRx {
    /// Wraps `rx` with a new current-thread runtime (timers enabled); call
    /// it on the consumer thread.
    pub fn new(rx: tokio::sync::mpsc::Receiver<Rec>) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        TokioRx { rt, rx }
    }
}

impl Recv for TokioRx {
    fn recv_timeout(&mut self, t: Duration) -> Option<Rec> {
        let rx = &mut self.rx;
        // The timer must be made inside the runtime's context.
        self.rt
            .block_on(async { tokio::time::timeout(t, rx.recv()).await.ok().flatten() })
    }
    fn try_recv(&mut self) -> Option<Rec> {
        self.rx.try_recv().ok()
    }
}

/// tokio `mpsc` from a plain thread, as a service that already has tokio
/// would send: `try_send`, falling back to `blocking_send` when full.
#[inline]
pub fn tokio_send(tx: &tokio::sync::mpsc::Sender<Rec>, r: Rec) {
    match tx.try_send(r) {
        Ok(()) => {}
        Err(tokio::sync::mpsc::error::TrySendError::Full(r)) => tx.blocking_send(r).unwrap(),
        Err(e) => panic!("send failed: {e}"),
    }
}

/// Consumer loop shared by the channel contenders: block up to a tick for
/// the first event, then take what is there (up to a ring's worth).
pub fn channel_consumer<S: Emit>(mut rx: impl Recv, sink: S, expected: u64) {
    pin(0);
    let mut grouper = Grouper::new(sink);
    while grouper.received < expected {
        let first = rx.recv_timeout(TICK);
        let now = Instant::now();
        if let Some(r) = first {
            grouper.take(r, now);
            for _ in 0..CAPACITY {
                match rx.try_recv() {
                    Some(r) => grouper.take(r, now),
                    None => break,
                }
            }
        }
        grouper.emit_due(now);
    }
    grouper.finish();
}

// ---------------------------------------------------------------------------
// disruptor-rs.

/// disruptor-rs's producers spin inside `publish` on a full ring; on 2
/// shared cores that spin would starve the consumer, so they use
/// `try_publish` and yield on a full ring, as the rtrb producers do.
pub fn disruptor_publish(producer: &mut impl disruptor::Producer<Rec>, r: Rec) {
    while producer.try_publish(|e| *e = r).is_err() {
        thread::yield_now();
    }
}

pub type MpPoller = disruptor::EventPoller<Rec, disruptor::MultiProducerBarrier>;
pub type MpProducer = disruptor::MultiProducer<Rec, disruptor::SingleConsumerBarrier>;

/// disruptor-rs, multi producer: one shared ring (4096 slots), `p` clones
/// of one `MultiProducer`, one `EventPoller` for the consumer.
pub fn disruptor_mp(p: usize) -> (MpPoller, Vec<MpProducer>) {
    let (poller, builder) = disruptor::build_multi_producer(
        CAPACITY,
        || rec(0, 0),
        disruptor::BusySpinWithSpinLoopHint,
    )
    .new_event_poller();
    let first = builder.build();
    let producers: Vec<_> = (0..p).map(|_| first.clone()).collect();
    (poller, producers)
}

/// One poll of a multi-producer ring into `g`: how many events it took.
pub fn poll_mp<S: Emit>(poller: &mut MpPoller, g: &mut Grouper<S>, now: Instant) -> usize {
    let mut got = 0;
    if let Ok(mut events) = poller.poll() {
        for r in &mut events {
            g.take(*r, now);
            got += 1;
        }
    }
    got
}
