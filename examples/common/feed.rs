//! A stand-in for the engine's delivery layer (issue 13), used by `tower`
//! until `Engine::receiver` / `Stats::subscribers` are wired in: owned
//! batches, one bounded drop-oldest queue per consumer, a blocking
//! `recv` and an async `poll_next`, per-consumer counters. Its names match
//! the engine's (`Batch`, `Receiver`, `SubscriberStats`), so switching
//! `tower` over is a change of imports and of how receivers are made.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use ringfold::{Aggregate, BatchReason, Pattern, Value};

/// One event of an owned batch.
pub struct Ev {
    name: Arc<str>,
    payload: Value,
    timestamp: Instant,
}

impl Ev {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn payload(&self) -> &Value {
        &self.payload
    }
    pub fn timestamp(&self) -> Instant {
        self.timestamp
    }
}

/// An owned copy of one delivered batch.
pub struct Batch {
    prefix: String,
    name: String,
    reason: BatchReason,
    seq: u64,
    events: Vec<Ev>,
    aggregates: Vec<Aggregate>,
    lagged: u64,
    sealed_at: Instant,
}

impl Batch {
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn len(&self) -> usize {
        self.events.len() + self.aggregates.len()
    }
    pub fn reason(&self) -> BatchReason {
        self.reason
    }
    pub fn seq(&self) -> u64 {
        self.seq
    }
    pub fn events(&self) -> &[Ev] {
        &self.events
    }
    pub fn aggregates(&self) -> &[Aggregate] {
        &self.aggregates
    }
    pub fn lagged(&self) -> u64 {
        self.lagged
    }
}

/// Per-consumer counters, named as the engine's `SubscriberStats`.
#[derive(Clone, Default)]
pub struct SubscriberStats {
    pub name: String,
    pub sealed: u64,
    pub delivered_batches: u64,
    pub delivered_events: u64,
    pub lag_dropped_batches: u64,
    pub lag_dropped_events: u64,
    pub queued: u64,
    pub lag: Duration,
}

struct State {
    queue: VecDeque<Batch>,
    waker: Option<Waker>,
    closed: bool,
    stats: SubscriberStats,
    /// Lag drops not yet reported in band.
    unreported: u64,
}

struct Shared {
    filter: Pattern,
    capacity: usize,
    state: Mutex<State>,
    ready: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Subscription semantics: the pattern matches the prefix itself or a
    /// name directly under it.
    fn wants(&self, prefix: &str) -> bool {
        self.filter.matches(prefix) || self.filter.matches(&format!("{prefix}:x"))
    }

    fn push(&self, mut batch: Batch) {
        let mut s = lock(&self.state);
        if s.closed {
            return;
        }
        s.stats.sealed += 1;
        if s.queue.len() == self.capacity {
            if let Some(old) = s.queue.pop_front() {
                s.stats.lag_dropped_batches += 1;
                s.stats.lag_dropped_events += old.len() as u64;
                s.unreported += 1;
            }
        }
        batch.lagged = 0;
        s.queue.push_back(batch);
        let waker = s.waker.take();
        drop(s);
        self.ready.notify_one();
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn take(&self, s: &mut State) -> Option<Batch> {
        let mut b = s.queue.pop_front()?;
        b.lagged = std::mem::take(&mut s.unreported);
        s.stats.delivered_batches += 1;
        s.stats.delivered_events += b.len() as u64;
        Some(b)
    }
}

/// Fans the engine's (borrowed, flusher-thread) batches out to owned
/// per-consumer queues.
#[derive(Clone, Default)]
pub struct Feed {
    consumers: Arc<Mutex<Vec<Arc<Shared>>>>,
    seqs: Arc<Mutex<HashMap<String, u64>>>,
}

impl Feed {
    /// A pull-mode consumer of the prefixes `pattern` selects.
    pub fn receiver(&self, pattern: &str, name: &str, capacity: usize) -> Receiver {
        let shared = Arc::new(Shared {
            filter: Pattern::parse(pattern).expect("valid pattern"),
            capacity: capacity.max(1),
            state: Mutex::new(State {
                queue: VecDeque::new(),
                waker: None,
                closed: false,
                stats: SubscriberStats {
                    name: name.to_string(),
                    ..Default::default()
                },
                unreported: 0,
            }),
            ready: Condvar::new(),
        });
        lock(&self.consumers).push(shared.clone());
        Receiver { shared }
    }

    /// The engine-side subscriber: copies each batch once per interested
    /// consumer.
    pub fn deliver(&self, batch: &ringfold::Batch<'_, Value>) {
        let seq = {
            let mut seqs = lock(&self.seqs);
            let s = seqs.entry(batch.prefix().to_string()).or_insert(0);
            *s += 1;
            *s
        };
        let now = Instant::now();
        for c in lock(&self.consumers).iter() {
            if !c.wants(batch.prefix()) {
                continue;
            }
            c.push(Batch {
                prefix: batch.prefix().to_string(),
                name: batch.name().to_string(),
                reason: batch.reason(),
                seq,
                events: batch
                    .events()
                    .iter()
                    .map(|e| Ev {
                        name: e.name().into(),
                        payload: e.payload().clone(),
                        timestamp: e.timestamp(),
                    })
                    .collect(),
                aggregates: batch.aggregates().to_vec(),
                lagged: 0,
                sealed_at: now,
            });
        }
    }

    /// Ends every receiver once what is queued has been taken.
    pub fn close(&self) {
        for c in lock(&self.consumers).iter() {
            let mut s = lock(&c.state);
            s.closed = true;
            let waker = s.waker.take();
            drop(s);
            c.ready.notify_all();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    /// Every consumer's counters.
    pub fn stats(&self) -> Vec<SubscriberStats> {
        lock(&self.consumers)
            .iter()
            .map(|c| {
                let s = lock(&c.state);
                let mut st = s.stats.clone();
                st.queued = s.queue.len() as u64;
                st.lag = s
                    .queue
                    .front()
                    .map_or(Duration::ZERO, |b| b.sealed_at.elapsed());
                st
            })
            .collect()
    }
}

/// One consumer's end of the feed.
pub struct Receiver {
    shared: Arc<Shared>,
}

impl Receiver {
    /// Blocks for the next batch; `None` once closed and drained.
    pub fn recv(&self) -> Option<Batch> {
        let mut s = lock(&self.shared.state);
        loop {
            if let Some(b) = self.shared.take(&mut s) {
                return Some(b);
            }
            if s.closed {
                return None;
            }
            s = self.shared.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// `Stream::poll_next`'s shape.
    pub fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Batch>> {
        let mut s = lock(&self.shared.state);
        if let Some(b) = self.shared.take(&mut s) {
            return Poll::Ready(Some(b));
        }
        if s.closed {
            return Poll::Ready(None);
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}
