//! What producers, engine handles and the flusher share: the settings, the
//! interner, the state word, the control plane, the lane registry and the
//! published counters. Each part's protocol lives in its own module
//! (`state`, `control`, `lane`, `stats`); this one only holds them together
//! and registers lanes.

use crate::config::Config;
use crate::control::Control;
use crate::delivery;
use crate::error::Error;
use crate::intern::Interner;
use crate::lane::{Backlog, Lane};
use crate::record::Slot;
use crate::ring::Consumer;
use crate::state::State;
use crate::stats::{DropCounters, Parts, Report, Retired, Stats};
use crate::sync::{lock, Arc, AtomicBool, AtomicU64, Mutex, Ordering};
use crate::value::Sampler;

/// A lane registered by a new producer, with the ring's reading end for the
/// flusher to adopt.
pub(crate) type NewLane<T> = (Arc<Lane<T>>, Consumer<Slot<T>>);

/// Lanes waiting to be adopted by the flusher, and every live lane (for
/// stats), plus the totals of retired lanes. One mutex, so stats never see
/// a lane both retired and live.
pub(crate) struct Registry<T> {
    pub(crate) new: Vec<NewLane<T>>,
    pub(crate) live: Vec<Arc<Lane<T>>>,
    pub(crate) retired: Retired,
}

/// Everything producers, handles and the flusher share.
pub(crate) struct Shared<T> {
    pub(crate) id: u64,
    pub(crate) config: Config,
    pub(crate) interner: Interner,
    pub(crate) sampler: Option<Sampler<T>>,
    /// Closed / parked / deep, and the flusher's handle (see `state.rs`).
    pub(crate) state: State,
    pub(crate) control: Control,
    pub(crate) high_water_wakeups: AtomicU64,
    /// Rejections of `Engine::publish*` calls that never reached a producer
    /// (engine shut down, or the name invalid before a producer existed).
    pub(crate) unlaned: DropCounters,
    pub(crate) registry: Mutex<Registry<T>>,
    /// Lanes whose producer was dropped and which the flusher has not
    /// retired yet: what `make_room` bounds (see `lane::MAX_RETIRING_LANES`).
    pub(crate) backlog: Backlog,
    /// New lanes are waiting in `registry.new`: the flusher's lock-free
    /// check, so a pass without a new producer takes no lock.
    pub(crate) registry_dirty: AtomicBool,
    /// The flusher's counters, as of its last pass.
    pub(crate) report: Mutex<Report>,
    /// Every subscription (build-time and run-time), each with its own
    /// queue; the flusher routes sealed batches to them.
    pub(crate) subscribers: delivery::Registry<T>,
    /// Numbers the default subscriber names (`subscriber-<n>`).
    pub(crate) next_subscriber: AtomicU64,
}

impl<T: Send + 'static> Shared<T> {
    pub(crate) fn new(
        id: u64,
        config: Config,
        interner: Interner,
        sampler: Option<Sampler<T>>,
    ) -> Self {
        Shared {
            id,
            config,
            interner,
            sampler,
            state: State::new(),
            control: Control::new(),
            high_water_wakeups: AtomicU64::new(0),
            unlaned: DropCounters::default(),
            registry: Mutex::new(Registry {
                new: Vec::new(),
                live: Vec::new(),
                retired: Retired::default(),
            }),
            backlog: Backlog::new(),
            registry_dirty: AtomicBool::new(false),
            report: Mutex::new(Report::default()),
            subscribers: delivery::Registry::new(),
            next_subscriber: AtomicU64::new(0),
        }
    }

    pub(crate) fn register_lane(
        &self,
        lane: Arc<Lane<T>>,
        consumer: Consumer<Slot<T>>,
    ) -> Result<(), Error> {
        let mut reg = lock(&self.registry);
        // Checked under the registry lock: the flusher's final adoption
        // takes the same lock after CLOSED is set, so a lane is either
        // adopted (and drained) or refused here.
        if self.state.is_closed() {
            return Err(Error::ShutDown);
        }
        reg.live.push(lane.clone());
        reg.new.push((lane, consumer));
        // Release: pairs with the flusher's AcqRel swap in `adopt_lanes`
        // (the lane itself travels under the registry mutex).
        self.registry_dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Before a new producer registers its lane: if the backlog of dropped
    /// but unretired lanes is at its bound, wakes the flusher and waits for
    /// it to retire some (see `lane::MAX_RETIRING_LANES` for why, and
    /// `Backlog::wait_for_room` for how long). Never waits on the flusher's
    /// own thread (a payload `Drop` creating a producer would wait for
    /// itself) nor on a delivery thread (a subscriber creating producers:
    /// under `LagPolicy::Block` the flusher may be waiting for that very
    /// subscriber); those go ahead, as does a creation after a stall. If the
    /// engine closed meanwhile, the registration that follows reports it
    /// (`ShutDown` or `FlusherDied`).
    pub(crate) fn make_room(&self) {
        if self.backlog.has_room()
            || self.state.on_flusher_thread()
            || delivery::on_delivery_thread()
        {
            return;
        }
        self.backlog
            .wait_for_room(|| self.state.is_closed(), || self.state.unpark());
    }

    /// A producer handle is dropped: counts its lane into the backlog, then
    /// marks it gone for the flusher to drain and retire. Release on
    /// `gone`: the producer's last tail store happens-before the flusher's
    /// Acquire load of it, so its drain after seeing `gone` sees everything
    /// (and its backlog decrement comes after our increment).
    pub(crate) fn drop_lane(&self, lane: &Lane<T>) {
        self.backlog.lane_dropped();
        lane.gone.store(true, Ordering::Release);
    }

    /// A default subscriber name: `subscriber-<n>`.
    pub(crate) fn subscriber_name(&self) -> String {
        // Relaxed: a name counter.
        let n = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
        format!("subscriber-{n}")
    }

    /// A snapshot of the counters (see `Stats::assemble`).
    pub(crate) fn stats(&self) -> Stats {
        let report = lock(&self.report).clone();
        let reg = lock(&self.registry);
        Stats::assemble(Parts {
            report: &report,
            prefix_name: &|id| self.interner.prefix(id).map(|p| p.prefix.to_string()),
            retired: &reg.retired,
            live: reg.live.iter().map(|lane| lane.share()),
            unlaned: &self.unlaned,
            high_water_wakeups: self.high_water_wakeups.load(Ordering::Relaxed),
            flusher_died: self.state.peek().dead(),
            subscribers: self.subscribers.stats(),
        })
    }
}
