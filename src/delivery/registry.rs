//! The set of subscriptions, changed at run time, and the flusher's cached
//! per-prefix routing over it.
//!
//! Subscribing and unsubscribing take the registry lock and bump its
//! generation. The flusher never takes that lock per batch: its
//! [`RouteCache`] resolves each prefix once against the subscriptions'
//! patterns and reuses the answer until the generation changes.

use std::task::{Context, Poll};
use std::time::Instant;

use super::batch::Batch;
use super::batch::{BatchPool, Sealed};
use super::queue::{Budget, LagPolicy, OnUnsubscribe, Push, Queue};
use super::stats::SubscriberStats;
use crate::error::Error;
use crate::policy::Pattern;
use crate::sync::{lock, Arc, AtomicU64, Mutex, Ordering};

/// How to subscribe: the subscriber's name (shown in its stats), its lag
/// policy, its queue's budget and when its queue starts merging, what
/// happens to its queue when it unsubscribes, and optionally the core its
/// delivery thread runs on.
///
/// ```
/// use ringfold::{Budget, LagPolicy, OnUnsubscribe, SubscribeOptions};
/// let opts = SubscribeOptions::new("sqlite")
///     .lag(LagPolicy::DropOldest)
///     .budget(Budget::new(200_000, 32 << 20))
///     .coalesce_after(16)
///     .on_unsubscribe(OnUnsubscribe::Discard);
/// assert_eq!(opts.name(), "sqlite");
/// ```
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    name: String,
    lag: LagPolicy,
    budget: Budget,
    coalesce_after: usize,
    on_unsubscribe: OnUnsubscribe,
    core: Option<usize>,
}

impl SubscribeOptions {
    /// Batches that may wait in a subscriber's queue before newly sealed
    /// windows merge into the queued batch of their prefix (the default
    /// of [`coalesce_after`](Self::coalesce_after)).
    pub const DEFAULT_COALESCE_AFTER: usize = 64;

    /// Defaults: `LagPolicy::default()` (`DropOldest`), `Budget::default()`,
    /// coalescing after [`DEFAULT_COALESCE_AFTER`](Self::DEFAULT_COALESCE_AFTER)
    /// waiting batches, `OnUnsubscribe::Deliver`.
    pub fn new(name: impl Into<String>) -> Self {
        SubscribeOptions {
            name: name.into(),
            lag: LagPolicy::default(),
            budget: Budget::default(),
            coalesce_after: Self::DEFAULT_COALESCE_AFTER,
            on_unsubscribe: OnUnsubscribe::default(),
            core: None,
        }
    }

    /// Sets the lag policy: what happens over budget.
    pub fn lag(mut self, lag: LagPolicy) -> Self {
        self.lag = lag;
        self
    }

    /// Sets the queue's budget in events and bytes (see [`Budget`]); zero
    /// in either is refused at subscribe time (`Error::InvalidConfig`).
    pub fn budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }

    /// The queue's budget.
    pub fn budget_limits(&self) -> Budget {
        self.budget
    }

    /// Sets how many batches may wait in the queue before a newly sealed
    /// window is merged into the queued batch of its prefix instead of
    /// queued on its own. Lower merges sooner (fewer, larger deliveries for
    /// a subscriber that is behind; batch sizes then depend on timing);
    /// `usize::MAX` merges only `latest` values and aggregates, and only
    /// when the budget is exhausted. Zero is refused at subscribe time
    /// (`Error::InvalidConfig`).
    ///
    /// ```
    /// use ringfold::{Engine, Policy, SubscribeOptions};
    /// use std::time::Duration;
    /// let engine = Engine::<u64>::builder()
    ///     .policy("data:*", Policy::batch(Duration::from_secs(60), 10))
    ///     .build()?;
    /// // A receiver nobody reads yet: it falls behind at once.
    /// let rx = engine.receiver("data:*", SubscribeOptions::new("late").coalesce_after(1))?;
    /// for i in 0..100u64 {
    ///     engine.publish("data:users:created", i)?; // 10 windows of 10
    /// }
    /// // (Not `flush()`: it would wait for this receiver to be read.)
    /// while engine.stats().subscribers[0].sealed < 10 {
    ///     std::thread::sleep(Duration::from_millis(1));
    /// }
    /// // The first window was queued; the nine after it merged into it.
    /// let all = rx.try_recv()?;
    /// assert_eq!((all.len(), all.merged(), all.seq(), all.last_seq()), (100, 10, 0, 9));
    /// assert_eq!(all.lagged(), 0); // merged, not lost
    /// assert!(rx.try_recv().is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn coalesce_after(mut self, batches: usize) -> Self {
        self.coalesce_after = batches;
        self
    }

    /// Sets what unsubscribing does with queued batches.
    pub fn on_unsubscribe(mut self, on_unsubscribe: OnUnsubscribe) -> Self {
        self.on_unsubscribe = on_unsubscribe;
        self
    }

    /// Pins the subscriber's delivery thread to this core (an index into
    /// `core_affinity`'s list, as for `EngineBuilder::pin_flusher`);
    /// subscribing fails with `Error::CoreUnavailable` if there is none.
    ///
    /// Why one would: a delivery thread wakes once per flusher pass that
    /// queued it a batch, and an unpinned one may be woken on a producer's
    /// core, preempting the producer. On a small machine, the flusher's core
    /// is usually the right place: the flusher hands it whole batches and
    /// sleeps while it runs. Pinning is best effort (where the OS refuses
    /// it, the thread runs unpinned), never a failure after subscribing.
    /// Only callback subscribers have a delivery thread: `Engine::receiver`
    /// refuses options with a core (`Error::InvalidConfig`).
    ///
    /// ```
    /// use ringfold::{Engine, Error, SubscribeOptions};
    /// let opts = SubscribeOptions::new("sink").pin_to_core(0);
    /// assert_eq!(opts.core(), Some(0));
    /// let engine = Engine::<u64>::builder().build()?;
    /// // A core the machine does not have is refused, not ignored.
    /// let refused = engine.subscribe_with("*", SubscribeOptions::new("x").pin_to_core(usize::MAX), |_: &ringfold::Batch<u64>| {});
    /// assert!(matches!(refused, Err(Error::CoreUnavailable { .. })));
    /// # Ok::<(), ringfold::Error>(())
    /// ```
    pub fn pin_to_core(mut self, core_index: usize) -> Self {
        self.core = Some(core_index);
        self
    }

    /// The subscriber's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The core the delivery thread is pinned to, if any.
    pub fn core(&self) -> Option<usize> {
        self.core
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.budget.events() == 0 || self.budget.bytes() == 0 {
            return Err(Error::InvalidConfig(
                "subscriber budget must allow at least one event and one byte",
            ));
        }
        if self.coalesce_after == 0 {
            return Err(Error::InvalidConfig(
                "coalesce_after must be at least 1 batch",
            ));
        }
        Ok(())
    }

    /// The core to pin the delivery thread to, looked up now so that a
    /// missing one is refused at subscribe time.
    pub(crate) fn core_id(&self) -> Result<Option<core_affinity::CoreId>, Error> {
        let Some(index) = self.core else {
            return Ok(None);
        };
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        cores
            .get(index)
            .copied()
            .map(Some)
            .ok_or(Error::CoreUnavailable {
                core: index,
                available: cores.len(),
            })
    }

    pub(crate) fn queue<T>(&self) -> Queue<T> {
        Queue::new(
            &self.name,
            self.lag,
            self.budget,
            self.coalesce_after,
            self.on_unsubscribe,
        )
    }
}

struct Entry<T> {
    id: u64,
    pattern: Pattern,
    queue: Arc<Queue<T>>,
}

impl<T> Clone for Entry<T> {
    fn clone(&self) -> Self {
        Entry {
            id: self.id,
            pattern: self.pattern.clone(),
            queue: self.queue.clone(),
        }
    }
}

struct State<T> {
    next_id: u64,
    closed: bool,
    /// Shutdown has begun (`release_blocked`, the engine's first shutdown
    /// step): from here on a subscription whose handle is dropped stays
    /// listed (its queue closed), so the final stats show every subscriber
    /// that existed at shutdown with its final counts, including a
    /// receiver whose thread let go of it as soon as the shutdown closed
    /// it (which can happen before `shutdown()` reads the stats).
    retain: bool,
    entries: Vec<Entry<T>>,
    /// The queues of `entries`, rebuilt on every change: a flush ticket
    /// clones this one `Arc` instead of collecting a new vector, so a
    /// flush allocates nothing in steady state.
    queues: Arc<Vec<Arc<Queue<T>>>>,
}

impl<T> State<T> {
    fn changed(&mut self, generation: &AtomicU64) {
        self.queues = Arc::new(self.entries.iter().map(|e| e.queue.clone()).collect());
        generation.fetch_add(1, Ordering::Release);
    }
}

/// Does a subscription with `pattern` receive prefix `prefix`'s batches?
/// Yes if the pattern matches the prefix itself or a name directly under
/// it (`<prefix>:<segment>`): `chat:*` receives prefix `chat` (whose names
/// are `chat:<x>`) and `data:*` receives `data:users`. Evaluated once per
/// prefix per change of the subscriptions, so the probe name's allocation
/// is off the per-batch path.
pub(crate) fn subscribes_to(pattern: &Pattern, prefix: &str) -> bool {
    if pattern.matches(prefix) {
        return true;
    }
    let segments: Vec<&str> = pattern.as_str().split(':').collect();
    let depth = prefix.split(':').count();
    if segments.len() != depth + 1 {
        // A shorter pattern ending in `*` already matched the prefix
        // itself; a longer one only matches names deeper down.
        return false;
    }
    // The pattern's own segment at the child's position names a child
    // that exists for it (a literal, or any segment for `*`).
    let child = match segments[depth] {
        "*" => format!("{prefix}:x"),
        lit => format!("{prefix}:{lit}"),
    };
    pattern.matches(&child)
}

pub(crate) struct Inner<T> {
    state: Mutex<State<T>>,
    /// Bumped (under the lock) by every add and remove; the flusher's cache
    /// compares it without the lock.
    generation: AtomicU64,
}

/// The engine's subscriptions.
pub(crate) struct Registry<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Registry<T> {
    fn clone(&self) -> Self {
        Registry {
            inner: self.inner.clone(),
        }
    }
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Registry<T> {
    pub(crate) fn new() -> Self {
        Registry {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    next_id: 0,
                    closed: false,
                    retain: false,
                    entries: Vec::new(),
                    queues: Arc::new(Vec::new()),
                }),
                generation: AtomicU64::new(0),
            }),
        }
    }

    /// Adds a subscription for the prefixes `pattern` matches; the returned
    /// registration removes it when dropped. `Error::InvalidPattern` for a
    /// pattern that does not parse, `Error::InvalidConfig` for a zero
    /// capacity, `Error::ShutDown` after [`Registry::close_all`].
    pub(crate) fn add(
        &self,
        pattern: &str,
        options: &SubscribeOptions,
    ) -> Result<(Registration<T>, Arc<Queue<T>>), Error> {
        let pattern = Pattern::parse(pattern)?;
        options.validate()?;
        let queue = Arc::new(options.queue());
        let mut st = lock(&self.inner.state);
        if st.closed {
            return Err(Error::ShutDown);
        }
        let id = st.next_id;
        st.next_id += 1;
        st.entries.push(Entry {
            id,
            pattern,
            queue: queue.clone(),
        });
        st.changed(&self.inner.generation);
        drop(st);
        Ok((
            Registration {
                inner: self.inner.clone(),
                id,
            },
            queue,
        ))
    }

    /// The current generation (changes whenever the set changes).
    pub(crate) fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Shutdown: refuses new subscriptions and closes every queue with its
    /// own `OnUnsubscribe` choice, waking every consumer. Delivery threads
    /// drain (`Deliver`) and exit; receivers return what is queued, then
    /// the end. The subscriptions stay listed (closed), even once their
    /// handles are dropped (see `State::retain`), so that the final stats
    /// show them.
    pub(crate) fn close_all(&self) {
        let queues = {
            let mut st = lock(&self.inner.state);
            st.closed = true;
            st.retain = true;
            self.inner.generation.fetch_add(1, Ordering::Release);
            st.queues.clone()
        };
        for q in queues.iter() {
            q.close(q.on_unsubscribe());
        }
    }

    /// Shutdown has begun: no `LagPolicy::Block` queue makes the flusher
    /// wait for space any more (a full one takes the final batches beyond
    /// its capacity instead), so the final drain never waits on a
    /// subscriber, and nothing waiting on that drain (a publish racing the
    /// close, possibly on that very subscriber's thread) waits on one
    /// either.
    ///
    /// Also the point from which dropped subscriptions stay listed (see
    /// `State::retain`).
    pub(crate) fn release_blocked(&self) {
        let queues = {
            let mut st = lock(&self.inner.state);
            st.retain = true;
            st.queues.clone()
        };
        for q in queues.iter() {
            q.release_blocked();
        }
    }

    /// Every current subscription's counters.
    pub(crate) fn stats(&self) -> Vec<SubscriberStats> {
        let queues = lock(&self.inner.state).queues.clone();
        queues.iter().map(|q| q.stats()).collect()
    }

    /// Captures, for every current subscription, the number of batches
    /// queued for it so far: call it after the flusher has sealed and
    /// queued everything a flush covers, then wait on the ticket.
    /// Allocation-free for up to `INLINE_TARGETS` subscriptions.
    pub(crate) fn flush_ticket(&self) -> FlushTicket<T> {
        let queues = lock(&self.inner.state).queues.clone();
        let mut targets = Targets::Inline([0; INLINE_TARGETS]);
        if queues.len() > INLINE_TARGETS {
            targets = Targets::Heap(vec![0; queues.len()]);
        }
        let slots = match &mut targets {
            Targets::Inline(a) => &mut a[..],
            Targets::Heap(v) => &mut v[..],
        };
        for (slot, q) in slots.iter_mut().zip(queues.iter()) {
            *slot = q.target();
        }
        FlushTicket { queues, targets }
    }
}

/// Subscriptions whose flush targets a ticket stores inline.
const INLINE_TARGETS: usize = 16;

enum Targets {
    Inline([u64; INLINE_TARGETS]),
    Heap(Vec<u64>),
}

impl Targets {
    fn get(&self, i: usize) -> u64 {
        match self {
            Targets::Inline(a) => a[i],
            Targets::Heap(v) => v[i],
        }
    }
}

/// Removes its subscription from the registry when dropped (the flusher's
/// cache drops the queue at its next generation check), unless shutdown has
/// begun: then the subscription stays listed for the final stats (its
/// owner closes the queue, so nothing more is queued for it). Does not
/// close the queue: its owner does, with its own `OnUnsubscribe` choice.
pub(crate) struct Registration<T> {
    inner: Arc<Inner<T>>,
    id: u64,
}

impl<T> Registration<T> {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

impl<T> Drop for Registration<T> {
    fn drop(&mut self) {
        let mut st = lock(&self.inner.state);
        if st.retain {
            return;
        }
        if let Some(i) = st.entries.iter().position(|e| e.id == self.id) {
            st.entries.remove(i);
            st.changed(&self.inner.generation);
        }
    }
}

/// What a flush waits for: per queue, the batch count to reach.
pub(crate) struct FlushTicket<T> {
    queues: Arc<Vec<Arc<Queue<T>>>>,
    targets: Targets,
}

impl<T> FlushTicket<T> {
    fn targets(&self) -> impl Iterator<Item = (&Arc<Queue<T>>, u64)> {
        self.queues
            .iter()
            .enumerate()
            .map(|(i, q)| (q, self.targets.get(i)))
    }

    /// Blocks until every queue's `done` reached its target, or `deadline`
    /// passes (`None`: no deadline). Returns whether all were reached. A
    /// queue closed meanwhile still counts its queued batches done when
    /// they are delivered or discarded, so closing cannot strand a flush.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> bool {
        self.targets()
            .all(|(q, target)| q.wait_done(target, deadline))
    }

    /// The async `wait`: never blocks the polling thread.
    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        for (q, target) in self.targets() {
            if q.poll_done(target, cx).is_pending() {
                return Poll::Pending;
            }
        }
        Poll::Ready(())
    }
}

/// The flusher's view of the registry: per prefix id, the queues whose
/// pattern matches the prefix, resolved once per prefix and generation.
pub(crate) struct RouteCache<T> {
    generation: u64,
    entries: Vec<Entry<T>>,
    /// The windows the current subscribers' ordinary backlogs hold (each
    /// `Queue::provision_hint`, plus the one in its hands): what the batch
    /// pool is provisioned to. A deeper backlog merges windows and may
    /// make the pool allocate.
    held_bound: usize,
    /// `held_bound` changed since the pool was last provisioned.
    provision_due: bool,
    /// By prefix id: `None` = not resolved since the last refresh.
    routes: Vec<Option<Vec<Arc<Queue<T>>>>>,
    /// Queues given batches since the last `wake`: each consumer is woken
    /// once per flusher pass, not once per batch (see `Queue::push_quiet`).
    to_wake: Vec<Arc<Queue<T>>>,
    /// Batches the queues dropped for lag, on their way back to the pool
    /// (kept for its capacity).
    displaced: Vec<Batch<T>>,
}

impl<T> Default for RouteCache<T> {
    fn default() -> Self {
        RouteCache {
            generation: u64::MAX,
            entries: Vec::new(),
            held_bound: 0,
            provision_due: false,
            routes: Vec::new(),
            to_wake: Vec::new(),
            displaced: Vec::new(),
        }
    }
}

impl<T> RouteCache<T> {
    /// The queues subscribed to `prefix` (whose id is `prefix_id`). One
    /// atomic load per call; a registry lock and pattern matches only after
    /// the set of subscriptions changed. (`deliver` resolves them itself;
    /// the tests look at the cache through this.)
    #[cfg(all(test, not(ringfold_loom)))]
    pub(crate) fn queues_for(
        &mut self,
        registry: &Registry<T>,
        prefix_id: u32,
        prefix: &str,
    ) -> &[Arc<Queue<T>>] {
        self.refresh(registry);
        self.resolve(prefix_id, prefix);
        self.routes[prefix_id as usize]
            .as_deref()
            .unwrap_or_default()
    }

    /// Makes sure prefix `prefix_id`'s queues are resolved (after
    /// `refresh`).
    fn resolve(&mut self, prefix_id: u32, prefix: &str) {
        let pid = prefix_id as usize;
        if pid >= self.routes.len() {
            self.routes.resize_with(pid + 1, || None);
        }
        let entries = &self.entries;
        self.routes[pid].get_or_insert_with(|| {
            entries
                .iter()
                .filter(|e| subscribes_to(&e.pattern, prefix))
                .map(|e| e.queue.clone())
                .collect()
        });
    }

    /// Re-reads the subscriptions if they changed since the last call
    /// (one atomic load otherwise).
    fn refresh(&mut self, registry: &Registry<T>) {
        if registry.generation() == self.generation {
            return;
        }
        let st = lock(&registry.inner.state);
        // Re-read under the lock: the generation only changes under it.
        self.generation = registry.generation();
        self.entries.clear();
        self.entries.extend(st.entries.iter().cloned());
        drop(st);
        self.held_bound = self
            .entries
            .iter()
            .map(|e| e.queue.provision_hint().saturating_add(1))
            .fold(0, usize::saturating_add);
        self.provision_due = true;
        self.routes.iter_mut().for_each(|r| *r = None);
    }

    /// Queues `sealed` for every subscriber of its prefix, handing batches
    /// displaced for lag back to `pool` (and provisioning `pool` when the
    /// subscriptions changed); returns how many queues took it. The
    /// flusher's whole per-batch delivery cost.
    pub(crate) fn deliver(
        &mut self,
        registry: &Registry<T>,
        pool: &mut BatchPool<T>,
        sealed: &Arc<Sealed<T>>,
    ) -> usize {
        self.refresh(registry);
        if std::mem::take(&mut self.provision_due) {
            // The subscriptions changed (not the per-batch path): make the
            // batches their backlogs can hold now, so that sealing never
            // has to allocate for a backlog within that bound.
            pool.provision(self.held_bound);
        }
        self.resolve(sealed.prefix_id, &sealed.prefix);
        let Some(Some(queues)) = self.routes.get(sealed.prefix_id as usize) else {
            return 0;
        };
        let mut taken = 0;
        for q in queues {
            let (outcome, first) = q.push_quiet(sealed, &mut self.displaced);
            taken += usize::from(outcome != Push::Closed);
            if first {
                self.to_wake.push(q.clone());
            }
        }
        if !self.displaced.is_empty() {
            for batch in self.displaced.drain(..) {
                pool.recycle(batch);
            }
        }
        taken
    }

    /// Wakes the consumers of every queue given a batch since the last
    /// call. The flusher calls it once a pass has queued its batches, and
    /// before anything that waits on the consumers (a flush completes only
    /// after it).
    pub(crate) fn wake(&mut self) {
        for q in self.to_wake.drain(..) {
            q.wake_consumer();
        }
    }
}
