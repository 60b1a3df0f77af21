//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ringfold::{Batch, BatchReason, Engine, LagPolicy, Producer, SubscribeOptions};

/// A generous bound for waits that should end almost at once: a failing
/// test fails after it instead of hanging.
pub const LONG: Duration = Duration::from_secs(10);
/// A window no test waits out: only a flush, a count or an urgent event
/// delivers.
pub const HOUR: Duration = Duration::from_secs(3600);

/// A delivered batch, copied out of the subscriber call.
#[derive(Debug, Clone)]
pub struct Seen<T> {
    pub prefix: String,
    pub reason: BatchReason,
    pub dropped: u64,
    pub folded: u64,
    /// (event name, sub-key, payload)
    pub events: Vec<(String, u64, T)>,
    /// (name, count, sum, min, max, first, last)
    pub aggregates: Vec<(String, u64, f64, f64, f64, f64, f64)>,
}

/// Every batch a recorder saw.
pub type Log<T> = Arc<Mutex<Vec<Seen<T>>>>;

/// A subscriber that records every batch, and the handle to read them.
pub fn recorder<T: Clone + Send + 'static>() -> (impl FnMut(&Batch<T>) + Send + 'static, Log<T>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    let subscriber = move |b: &Batch<T>| {
        sink.lock().unwrap().push(Seen {
            prefix: b.prefix().to_string(),
            reason: b.reason(),
            dropped: b.dropped(),
            folded: b.folded(),
            events: b
                .events()
                .iter()
                .map(|e| (e.name().to_string(), e.sub_key(), e.payload().clone()))
                .collect(),
            aggregates: b
                .aggregates()
                .iter()
                .map(|a| {
                    (
                        a.name().to_string(),
                        a.count(),
                        a.sum(),
                        a.min(),
                        a.max(),
                        a.first().0,
                        a.last().0,
                    )
                })
                .collect(),
        })
    };
    (subscriber, log)
}

/// Polls `cond` until it holds or `limit` passes. Tests use generous
/// limits: they assert behaviour, not timing.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    cond()
}

/// Small deterministic PRNG (xorshift64*), so tests need no extra crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A subscriber that blocks inside its first batch until released. Its
/// callback runs on its own delivery thread, so on its own it stalls only
/// itself; subscribed with [`gate_options`] (a must-deliver queue of one
/// batch) and jammed with [`jam`], it stalls the flusher too: a
/// deterministic way to let a ring fill.
pub fn gate() -> (
    impl FnMut(&Batch<u64>) + Send + 'static,
    mpsc::Receiver<()>,
    mpsc::Sender<()>,
) {
    // Bounded, so a failing test fails instead of hanging its engine's
    // shutdown on this gate.
    gate_for(LONG)
}

/// A [`gate`] that lets go by itself after `hold` if never released: the
/// slow or stuck consumer of the delivery tests.
pub fn gate_for(
    hold: Duration,
) -> (
    impl FnMut(&Batch<u64>) + Send + 'static,
    mpsc::Receiver<()>,
    mpsc::Sender<()>,
) {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let mut first = true;
    let subscriber = move |_b: &Batch<u64>| {
        if std::mem::take(&mut first) {
            // The test may have stopped listening; that is not our failure.
            let _ = entered_tx.send(());
            let _ = release_rx.lock().unwrap().recv_timeout(hold);
        }
    };
    (subscriber, entered_rx, release_tx)
}

/// Options for a [`gate`] that stalls the flusher: `LagPolicy::Block` with
/// a one-event budget (so with one batch queued, the next waits).
pub fn gate_options() -> SubscribeOptions {
    SubscribeOptions::new("gate")
        .lag(LagPolicy::Block { timeout: LONG })
        .budget(ringfold::Budget::new(1, u64::MAX))
}

/// The payload of [`jam`]'s events.
pub const JAM: u64 = u64::MAX;

/// Once a gate (subscribed to `*` with [`gate_options`]) has entered its
/// first batch: seals two more batches (`jam:x`, urgent, so any policy
/// seals them at once): the first fills the gate's queue, the second makes
/// the flusher wait for space. Returns once the flusher has taken both off
/// the ring: from then on it takes nothing until the gate is released.
pub fn jam(engine: &Engine<u64>, p: &mut Producer<u64>) {
    let key = engine.key("jam:x").unwrap();
    p.publish_urgent(key, JAM).unwrap();
    p.publish_urgent(key, JAM).unwrap();
    assert!(wait_until(LONG, || engine.stats().pending == 0));
}

/// What a subscriber saw of each event: sub-key, payload, timestamp.
pub type StampLog = Arc<Mutex<Vec<(u64, u64, std::time::Instant)>>>;

pub fn stamp_recorder() -> (impl FnMut(&Batch<u64>) + Send + 'static, StampLog) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let subscriber = move |b: &Batch<u64>| {
        let mut sink = sink.lock().unwrap();
        for e in b.events() {
            sink.push((e.sub_key(), *e.payload(), e.timestamp()));
        }
    };
    (subscriber, seen)
}
