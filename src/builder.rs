//! Configuring and building an engine: [`EngineBuilder`], validation,
//! and the start of the flusher.

use std::time::Duration;

use crate::config::{self, Config, FullPolicy};
use crate::delivery::{SubscribeOptions, Subscriber, Subscription};
use crate::engine::Engine;
use crate::error::Error;
use crate::flusher;
use crate::intern::Interner;
use crate::policy::{default_rules, Pattern, Policy, PolicyTable};
use crate::record::Slot;
use crate::shared::Shared;
use crate::sync::Arc;
use crate::value::{Sample, Sampler};

static NEXT_ENGINE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl<T: Send + Sync + 'static> Engine<T> {
    /// Starts configuring an engine.
    ///
    /// ```
    /// let engine = ringfold::Engine::<u64>::builder().tick(std::time::Duration::from_millis(1)).build()?;
    /// # Ok::<(), ringfold::Error>(())
    /// ```
    pub fn builder() -> EngineBuilder<T> {
        EngineBuilder::new()
    }
}

/// A build-time subscription: pattern, options (`None`: defaults with a
/// generated name) and the subscriber.
type BuildSubscriber<T> = (String, Option<SubscribeOptions>, Box<dyn Subscriber<T>>);

/// Configures and builds an [`Engine`].
pub struct EngineBuilder<T: Send + Sync + 'static> {
    default_policy: Policy,
    rules: Vec<(String, Policy)>,
    urgent: Vec<String>,
    ring_capacity: usize,
    high_water: Option<usize>,
    tick: Duration,
    pin: Option<usize>,
    on_full: FullPolicy,
    urgent_wait: Duration,
    subscribers: Vec<BuildSubscriber<T>>,
    max_names: usize,
    max_name_len: usize,
    precise_timestamps: bool,
    sampler: Option<Sampler<T>>,
}

impl<T: Send + Sync + 'static> std::fmt::Debug for EngineBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Subscribers and the sampler are closures: shown by count/presence.
        f.debug_struct("EngineBuilder")
            .field("default_policy", &self.default_policy)
            .field("rules", &self.rules)
            .field("urgent", &self.urgent)
            .field("ring_capacity", &self.ring_capacity)
            .field("high_water", &self.high_water)
            .field("tick", &self.tick)
            .field("pin", &self.pin)
            .field("on_full", &self.on_full)
            .field("urgent_wait", &self.urgent_wait)
            .field("subscribers", &self.subscribers.len())
            .field("max_names", &self.max_names)
            .field("max_name_len", &self.max_name_len)
            .field("precise_timestamps", &self.precise_timestamps)
            .field("sampler", &self.sampler.is_some())
            .finish()
    }
}

impl<T: Send + Sync + 'static> Default for EngineBuilder<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Send + Sync + 'static> EngineBuilder<T> {
    /// Defaults: `Policy::batch(50 ms, 100)` for unmatched names, rings of
    /// 4096 slots with a high-water mark of 1024, a 5 ms tick, drop-newest
    /// on a full ring, urgent events wait up to 1 s, up to 4096 names of
    /// up to 256 bytes.
    #[must_use]
    pub fn new() -> Self {
        EngineBuilder {
            default_policy: Policy::batch(Duration::from_millis(50), 100),
            rules: Vec::new(),
            urgent: Vec::new(),
            ring_capacity: 4096,
            high_water: None,
            tick: Duration::from_millis(5),
            pin: None,
            on_full: FullPolicy::DropNewest,
            urgent_wait: Duration::from_secs(1),
            subscribers: Vec::new(),
            max_names: 4096,
            max_name_len: 256,
            precise_timestamps: false,
            sampler: None,
        }
    }

    /// Policy for names no pattern matches.
    #[must_use]
    pub fn default_policy(mut self, policy: Policy) -> Self {
        self.default_policy = policy;
        self
    }

    /// Policy for names matching `pattern` (validated at `build`). The most
    /// specific pattern wins; for equal ones, the later call.
    #[must_use]
    pub fn policy(mut self, pattern: &str, policy: Policy) -> Self {
        self.rules.push((pattern.to_owned(), policy));
        self
    }

    /// Marks names matching `pattern` urgent: each such event flushes its
    /// prefix at once (after the prefix's earlier events), and on a full
    /// ring waits up to [`EngineBuilder::urgent_wait`], like
    /// `Producer::publish_urgent`.
    #[must_use]
    pub fn urgent(mut self, pattern: &str) -> Self {
        self.urgent.push(pattern.to_owned());
        self
    }

    /// Slots per producer ring; a power of two, at least 2 (4 with
    /// `precise_timestamps` or a `latest` policy), at most [`EngineBuilder::MAX_RING_CAPACITY`]
    /// and 1 GiB in all (checked by `build`). An event takes one slot, plus one if its
    /// sub-key does not fit in 32 bits and two if it is stamped at publish.
    #[must_use]
    pub fn ring_capacity(mut self, n: usize) -> Self {
        self.ring_capacity = n;
        self
    }

    /// Ring occupancy at which a producer wakes a sleeping flusher
    /// (default: a quarter of the capacity). 1..=capacity.
    #[must_use]
    pub fn high_water(mut self, n: usize) -> Self {
        self.high_water = Some(n);
        self
    }

    /// How often a sleeping flusher sweeps while events are pending.
    #[must_use]
    pub fn tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }

    /// Pins the flusher thread to this core (index into `core_affinity`'s
    /// list); `build` fails with `Error::CoreUnavailable` if there is none.
    #[must_use]
    pub fn pin_flusher(mut self, core_index: usize) -> Self {
        self.pin = Some(core_index);
        self
    }

    /// What a full ring does to an ordinary publish.
    #[must_use]
    pub fn on_full(mut self, policy: FullPolicy) -> Self {
        self.on_full = policy;
        self
    }

    /// How long an urgent publish (by `publish_urgent*` or by an
    /// [`EngineBuilder::urgent`] rule) waits for ring space before giving
    /// up (counted as `urgent_timeout`). `Duration::MAX` waits without
    /// limit.
    #[must_use]
    pub fn urgent_wait(mut self, wait: Duration) -> Self {
        self.urgent_wait = wait;
        self
    }

    /// Adds a subscriber to every prefix, with default options (name
    /// `subscriber-<n>`, a drop-oldest queue of 1024 batches). Any number;
    /// each gets every batch, in order, on its own delivery thread, and the
    /// engine joins it at shutdown.
    #[must_use]
    pub fn subscriber(mut self, subscriber: impl Subscriber<T> + 'static) -> Self {
        self.subscribers
            .push(("*".to_owned(), None, Box::new(subscriber)));
        self
    }

    /// Adds a subscriber to the prefixes `pattern` matches (see
    /// [`Engine::subscribe`]) with `options`; a bad pattern or option is
    /// reported by [`build`](Self::build).
    ///
    /// ```
    /// use ringfold::{Batch, Engine, LagPolicy, SubscribeOptions};
    /// use std::time::Duration;
    /// let engine = Engine::<u64>::builder()
    ///     .subscriber_with(
    ///         "data:*",
    ///         SubscribeOptions::new("sink").lag(LagPolicy::Block {
    ///             timeout: Duration::from_millis(100),
    ///         }),
    ///         |b: &Batch<u64>| assert!(b.prefix().starts_with("data")),
    ///     )
    ///     .build()?;
    /// engine.publish("data:users:created", 1u64)?;
    /// let stats = engine.shutdown()?;
    /// assert_eq!(stats.subscribers[0].name, "sink");
    /// assert_eq!(stats.subscribers[0].delivered_events, 1);
    /// assert!(Engine::<u64>::builder().subscriber_with("*x", SubscribeOptions::new("bad"), |_: &Batch<u64>| {}).build().is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn subscriber_with(
        mut self,
        pattern: &str,
        options: SubscribeOptions,
        subscriber: impl Subscriber<T> + 'static,
    ) -> Self {
        self.subscribers
            .push((pattern.to_owned(), Some(options), Box::new(subscriber)));
        self
    }

    /// Most distinct names the engine will intern.
    #[must_use]
    pub fn max_names(mut self, n: usize) -> Self {
        self.max_names = n;
        self
    }

    /// Longest name in bytes.
    #[must_use]
    pub fn max_name_len(mut self, n: usize) -> Self {
        self.max_name_len = n;
        self
    }

    /// Stamp events at publish (one clock read per publish) instead of when
    /// the flusher sweeps them.
    #[must_use]
    pub fn precise_timestamps(mut self, on: bool) -> Self {
        self.precise_timestamps = on;
        self
    }

    /// How `Policy::aggregate` reads a number from a payload, as a float
    /// (NaN and infinities are rejected as not numeric). For exact integer
    /// sums, implement [`Sample::sample`] and use `sampled()` instead.
    #[must_use]
    pub fn sample_with(mut self, f: fn(&T) -> Option<f64>) -> Self {
        self.sampler = Some(Sampler::Float(f));
        self
    }

    /// Most slots a producer ring may have (`ring_capacity`,
    /// `Engine::producer_with_capacity`): 2^24. A ring is also limited to
    /// 1 GiB (slots times slot size); `build` checks both
    /// (`Error::InvalidConfig`).
    pub const MAX_RING_CAPACITY: usize = config::MAX_RING_CAPACITY;

    /// Largest payload type `build` accepts, in bytes (`size_of::<T>()`):
    /// 16 KiB. Larger payloads would be moved by value across the flusher's
    /// (and the publishing thread's) stack; box them (`Box<[u8]>`, `Arc<..>`). `build` refuses a larger
    /// `T` with `Error::PayloadTooLarge`.
    ///
    /// ```
    /// use ringfold::{Engine, Error};
    /// match Engine::<[u8; 1 << 20]>::builder().build() {
    ///     Err(Error::PayloadTooLarge { size, max }) => assert!(size > max),
    ///     other => panic!("unexpected {other:?}"),
    /// }
    /// let boxed = Engine::<Box<[u8]>>::builder().build()?; // fine
    /// # Ok::<(), ringfold::Error>(())
    /// ```
    pub const MAX_PAYLOAD_SIZE: usize = config::MAX_PAYLOAD_SIZE;

    /// Validates the configuration and starts the flusher.
    pub fn build(self) -> Result<Engine<T>, Error> {
        let size = std::mem::size_of::<T>();
        if size > Self::MAX_PAYLOAD_SIZE {
            return Err(Error::PayloadTooLarge {
                size,
                max: Self::MAX_PAYLOAD_SIZE,
            });
        }
        let cap = self.ring_capacity;
        let config = Config {
            ring_capacity: cap,
            slot_size: std::mem::size_of::<Slot<T>>(),
            high_water: self.high_water.unwrap_or((cap / 4).max(1)),
            tick: self.tick,
            on_full: self.on_full,
            urgent_wait: self.urgent_wait,
            precise_timestamps: self.precise_timestamps,
            stamps: self.precise_timestamps
                || std::iter::once(&self.default_policy)
                    .chain(self.rules.iter().map(|(_, p)| p))
                    .any(|p| matches!(p, Policy::Latest { .. })),
            max_names: self.max_names,
            max_name_len: self.max_name_len,
        };
        config.validate()?;
        let table = self.policy_table()?;
        let core = match self.pin {
            None => None,
            Some(index) => {
                let cores = core_affinity::get_core_ids().unwrap_or_default();
                Some(*cores.get(index).ok_or(Error::CoreUnavailable {
                    core: index,
                    available: cores.len(),
                })?)
            }
        };
        let id = NEXT_ENGINE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let interner = Interner::new(table, config.max_names, config.max_name_len)
            .stamping_all(config.precise_timestamps);
        let shared = Arc::new(Shared::new(id, config, interner, self.sampler));
        // Subscribed before the flusher starts, so they see every batch.
        // On an error the subscriptions made so far drop (closed, their
        // threads exit).
        let mut subscriptions = Vec::with_capacity(self.subscribers.len());
        for (pattern, options, subscriber) in self.subscribers {
            let options =
                options.unwrap_or_else(|| SubscribeOptions::new(shared.subscriber_name()));
            subscriptions.push(Subscription::spawn(
                &shared.subscribers,
                &pattern,
                &options,
                subscriber,
            )?);
        }
        let join = flusher::spawn(shared.clone(), core).map_err(Error::Spawn)?;
        Ok(Engine::start(shared, join, subscriptions))
    }

    /// Validates the policies and urgent patterns into the interner's table.
    fn policy_table(&self) -> Result<PolicyTable, Error> {
        self.default_policy.validate()?;
        let mut table = PolicyTable::new(self.default_policy);
        let needs_sampler =
            |p: &Policy| matches!(p, Policy::Aggregate { .. } | Policy::Histogram { .. });
        if needs_sampler(&self.default_policy) && self.sampler.is_none() {
            return Err(Error::AggregateWithoutSampler {
                pattern: "<default>".into(),
            });
        }
        for (pattern, policy) in &self.rules {
            policy.validate()?;
            if needs_sampler(policy) && self.sampler.is_none() {
                return Err(Error::AggregateWithoutSampler {
                    pattern: pattern.clone(),
                });
            }
            table.rules.push((Pattern::parse(pattern)?, *policy));
        }
        for pattern in &self.urgent {
            table.urgent.push(Pattern::parse(pattern)?);
        }
        Ok(table)
    }
}

impl<T: Sample + Send + Sync + 'static> EngineBuilder<T> {
    /// Lets `Policy::aggregate` read payloads through their [`Sample`] impl
    /// ([`Sample::sample`]: integer readings are summed exactly).
    #[must_use]
    pub fn sampled(mut self) -> Self {
        self.sampler = Some(Sampler::Number(T::sample));
        self
    }

    /// Adds the design's default policy table ([`default_rules`]): chat,
    /// presence and sentinel status passthrough; data, code_index and
    /// training batched; gpu aggregated.
    #[must_use]
    pub fn default_rules(mut self) -> Self {
        for (pattern, policy) in default_rules() {
            self = self.policy(pattern, policy);
        }
        self.sampled()
    }
}
