//! The JetStream sink: one message per batch, pipelined, retried,
//! de-duplicated by `Nats-Msg-Id`, every outcome counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{covers, message_id, parse_url, subject_for, valid_name, valid_root, Error};
use crate::delivery::{Receiver, SubscribeOptions, SubscriberStats};
use crate::wire::{self, Origin};
use crate::Engine;

/// The server's `max_payload` assumed until it has told its own (NATS'
/// default, 1 MiB).
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// Bytes a message's headers and protocol line add to its payload, at
/// most, besides the id and subject (`HPUB <subject> <reply> <hlen> <len>`
/// and `NATS/1.0\r\nNats-Msg-Id: <id>\r\n\r\n`).
const ENVELOPE: usize = 128;

/// How long dropping a [`Sink`] without [`Sink::shutdown_timeout`] lets it
/// finish what it holds.
pub const DROP_WAIT: Duration = Duration::from_secs(2);

/// How a [`Sink`] connects and publishes.
///
/// ```
/// use ringfold::nats::SinkConfig;
/// use std::time::Duration;
/// let config = SinkConfig::new("nats://127.0.0.1:4222")
///     .root("telemetry")
///     .stream("TELEMETRY")
///     .max_in_flight(128)
///     .retry_horizon(Duration::from_secs(30))
///     .duplicate_window(Duration::from_secs(120));
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub(crate) url: String,
    pub(crate) root: String,
    pub(crate) stream: String,
    pub(crate) create_stream: bool,
    pub(crate) duplicate_window: Duration,
    pub(crate) max_in_flight: usize,
    pub(crate) backlog: usize,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) retry_horizon: Duration,
    pub(crate) attempt_timeout: Duration,
    pub(crate) startup_wait: Duration,
    pub(crate) max_payload: Option<usize>,
    pub(crate) origin: Option<Origin>,
    pub(crate) subscribe: SubscribeOptions,
}

impl SinkConfig {
    /// Defaults: subject root `ringfold`, stream `RINGFOLD` (created if
    /// missing), duplicate window 2 min, 64 publishes in flight, back-off
    /// 50 ms doubling to 2 s, retry horizon 60 s, 2 s per attempt, 2 s
    /// start-up wait, subscription `SubscribeOptions::new("nats")`.
    pub fn new(url: impl Into<String>) -> Self {
        SinkConfig {
            url: url.into(),
            root: "ringfold".to_owned(),
            stream: "RINGFOLD".to_owned(),
            create_stream: true,
            duplicate_window: Duration::from_secs(120),
            max_in_flight: 64,
            backlog: 1024,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            retry_horizon: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(2),
            startup_wait: Duration::from_secs(2),
            max_payload: None,
            origin: None,
            subscribe: SubscribeOptions::new("nats"),
        }
    }

    /// Subject root: batches go to `<root>.<prefix tokens>`.
    pub fn root(mut self, root: impl Into<String>) -> Self {
        self.root = root.into();
        self
    }

    /// Stream name.
    pub fn stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = stream.into();
        self
    }

    /// Create the stream if it is missing (default true); with false a
    /// missing stream is [`Error::UnknownStream`].
    pub fn create_stream(mut self, create: bool) -> Self {
        self.create_stream = create;
        self
    }

    /// The duplicate window of a stream the sink creates; must be longer
    /// than the [retry horizon](Self::retry_horizon), so every retry of a
    /// batch is de-duplicated against its first attempt.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// Publishes awaiting their acknowledgement at once (at least 1).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Batches the sink holds while the server does not take them (at
    /// least 1; default 1024); past it the oldest is dropped and counted
    /// ([`SinkStats::backlog_dropped`]). The sink takes every batch from its
    /// subscription at once, so the engine's `flush` and `shutdown` never
    /// wait on the network.
    pub fn backlog(mut self, batches: usize) -> Self {
        self.backlog = batches;
        self
    }

    /// Retry back-off: `initial`, doubling up to `max`.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    /// How long a batch is retried from its first attempt before it is
    /// counted [`failed`](SinkStats::failed).
    pub fn retry_horizon(mut self, horizon: Duration) -> Self {
        self.retry_horizon = horizon;
        self
    }

    /// Longest wait for one attempt's acknowledgement.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// How long [`Sink::spawn`] waits for the server to confirm the stream
    /// (so that a conflicting stream is an error there); past it the sink
    /// goes on connecting in the background.
    pub fn startup_wait(mut self, wait: Duration) -> Self {
        self.startup_wait = wait;
        self
    }

    /// A message size cap below the server's `max_payload` (bytes).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = Some(bytes);
        self
    }

    /// The origin stamped on every batch (default: [`Origin::new`]).
    pub fn origin(mut self, origin: Origin) -> Self {
        self.origin = Some(origin);
        self
    }

    /// The sink's subscription options (name, lag policy): its queue is
    /// what absorbs a server outage.
    pub fn subscribe_options(mut self, options: SubscribeOptions) -> Self {
        self.subscribe = options;
        self
    }

    fn validate(&self) -> Result<(), Error> {
        parse_url(&self.url)?;
        if !valid_root(&self.root) {
            return Err(Error::BadConfig(format!(
                "subject root {:?} is not a literal NATS subject",
                self.root
            )));
        }
        if !valid_name(&self.stream) {
            return Err(Error::BadConfig(format!(
                "stream name {:?} is not a NATS stream name",
                self.stream
            )));
        }
        if self.max_in_flight == 0 || self.backlog == 0 {
            return Err(Error::BadConfig(
                "max_in_flight and backlog must be at least 1".into(),
            ));
        }
        if self.duplicate_window <= self.retry_horizon + self.attempt_timeout {
            return Err(Error::BadConfig(format!(
                "duplicate window {:?} must be longer than the retry horizon {:?} plus one attempt {:?}",
                self.duplicate_window, self.retry_horizon, self.attempt_timeout
            )));
        }
        Ok(())
    }
}

/// A sink's counters. Every batch taken from the subscription ends in
/// exactly one of `acked`, `duplicates`, `failed`, `oversize`,
/// `encode_errors`, `abandoned`, `backlog_dropped`, or is still in the
/// `backlog` or `in_flight` ([`SinkStats::is_conserved`]). The sink takes
/// batches as they come, so its subscription's own queue drops nothing
/// unless the sink's thread is starved ([`Sink::subscriber_stats`]).
///
/// ```
/// let s = ringfold::nats::SinkStats { batches: 3, acked: 2, duplicates: 1, ..Default::default() };
/// assert!(s.is_conserved());
/// assert_eq!(s.landed(), 3);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Batches taken from the subscription.
    pub batches: u64,
    /// Events in them.
    pub events: u64,
    /// Batches stored by the server (first copy).
    pub acked: u64,
    /// Batches the server had already stored (a retry of a publish whose
    /// ack was lost): acknowledged with `duplicate: true`, stored once.
    pub duplicates: u64,
    /// Events in acked and duplicate batches.
    pub events_landed: u64,
    /// Publish attempts repeated after a timeout or error.
    pub retries: u64,
    /// Batches given up after the retry horizon (or a fatal stream error).
    pub failed: u64,
    /// Batches refused as larger than the server's `max_payload`.
    pub oversize: u64,
    /// Batches whose payload could not be encoded.
    pub encode_errors: u64,
    /// Batches still unsent or unacknowledged when a shutdown's time ran
    /// out.
    pub abandoned: u64,
    /// Batches dropped from a full backlog (the server away too long).
    pub backlog_dropped: u64,
    /// Events in them.
    pub backlog_dropped_events: u64,
    /// Batches waiting in the backlog now.
    pub backlog: u64,
    /// Publishes awaiting their acknowledgement now.
    pub in_flight: u64,
    /// Connected to the server now.
    pub connected: bool,
    /// The stream has been confirmed (found covering the root, or
    /// created).
    pub stream_ready: bool,
}

impl SinkStats {
    /// Batches that are in the stream: `acked + duplicates`.
    pub fn landed(&self) -> u64 {
        self.acked + self.duplicates
    }

    /// Every batch taken is accounted for.
    pub fn is_conserved(&self) -> bool {
        self.batches
            == self.acked
                + self.duplicates
                + self.failed
                + self.oversize
                + self.encode_errors
                + self.abandoned
                + self.backlog_dropped
                + self.backlog
                + self.in_flight
    }
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    events: AtomicU64,
    acked: AtomicU64,
    duplicates: AtomicU64,
    events_landed: AtomicU64,
    retries: AtomicU64,
    failed: AtomicU64,
    oversize: AtomicU64,
    encode_errors: AtomicU64,
    abandoned: AtomicU64,
    backlog_dropped: AtomicU64,
    backlog_dropped_events: AtomicU64,
    backlog: AtomicU64,
    in_flight: AtomicU64,
    connected: AtomicBool,
    stream_ready: AtomicBool,
}

/// What the sink's task and its handles share.
struct Shared {
    counters: Counters,
    last_error: Mutex<Option<String>>,
    subscriber: Mutex<Option<SubscriberStats>>,
    /// `Some(deadline)` once a shutdown was asked for.
    stop: watch::Sender<Option<Instant>>,
}

impl Shared {
    fn note_error(&self, e: impl ToString) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(e.to_string());
        }
    }

    fn stats(&self) -> SinkStats {
        let c = &self.counters;
        SinkStats {
            batches: c.batches.load(Relaxed),
            events: c.events.load(Relaxed),
            acked: c.acked.load(Relaxed),
            duplicates: c.duplicates.load(Relaxed),
            events_landed: c.events_landed.load(Relaxed),
            retries: c.retries.load(Relaxed),
            failed: c.failed.load(Relaxed),
            oversize: c.oversize.load(Relaxed),
            encode_errors: c.encode_errors.load(Relaxed),
            abandoned: c.abandoned.load(Relaxed),
            backlog_dropped: c.backlog_dropped.load(Relaxed),
            backlog_dropped_events: c.backlog_dropped_events.load(Relaxed),
            backlog: c.backlog.load(Relaxed),
            in_flight: c.in_flight.load(Relaxed),
            connected: c.connected.load(Relaxed),
            stream_ready: c.stream_ready.load(Relaxed),
        }
    }
}

/// A handle on a running sink's figures and shutdown, from
/// [`SinkTask::handle`] (cheap to clone).
#[derive(Clone)]
pub struct SinkHandle {
    shared: Arc<Shared>,
}

impl SinkHandle {
    /// The sink's counters now.
    pub fn stats(&self) -> SinkStats {
        self.shared.stats()
    }

    /// The most recent error the sink met (a failed attempt, a refused
    /// batch), if any.
    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// The sink's subscription counters, as of the sink's last look (every
    /// 100 ms and at every batch; exact once it has finished).
    pub fn subscriber_stats(&self) -> Option<SubscriberStats> {
        self.shared.subscriber.lock().ok().and_then(|s| s.clone())
    }

    /// Asks the sink to finish: publish what its subscription holds now,
    /// await the acknowledgements until `deadline`, then stop, counting
    /// what is left as [`abandoned`](SinkStats::abandoned).
    pub fn shutdown_by(&self, deadline: Instant) {
        self.shared.stop.send_replace(Some(deadline));
    }
}

impl std::fmt::Debug for SinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

/// A sink not yet running: [`SinkTask::run`] drives it on the caller's
/// tokio runtime (a current-thread one will do).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use ringfold::nats::{SinkConfig, SinkTask};
/// use ringfold::{Engine, Value};
/// let engine = Engine::<Value>::builder().build()?;
/// let task = SinkTask::new(&engine, "*", SinkConfig::new("nats://127.0.0.1:4222"))?;
/// let handle = task.handle();
/// let running = tokio::spawn(task.run());
/// engine.publish("data:users:created", 1u64)?;
/// engine.shutdown_async().await?;
/// let stats = running.await??; // ends once the subscription is drained
/// assert_eq!(stats, handle.stats());
/// # Ok(()) }
/// ```
pub struct SinkTask<T> {
    receiver: Receiver<T>,
    config: Arc<SinkConfig>,
    origin: Arc<Origin>,
    shared: Arc<Shared>,
}

impl<T: Serialize + Send + Sync + 'static> SinkTask<T> {
    /// Checks `config` and subscribes to `pattern`; nothing connects until
    /// [`run`](Self::run).
    pub fn new(engine: &Engine<T>, pattern: &str, config: SinkConfig) -> Result<Self, Error> {
        config.validate()?;
        let receiver = engine.receiver(pattern, config.subscribe.clone())?;
        let origin = Arc::new(config.origin.clone().unwrap_or_default());
        let (stop, _) = watch::channel(None);
        Ok(SinkTask {
            receiver,
            config: Arc::new(config),
            origin,
            shared: Arc::new(Shared {
                counters: Counters::default(),
                last_error: Mutex::new(None),
                subscriber: Mutex::new(None),
                stop,
            }),
        })
    }

    /// Its figures and shutdown, for while it runs.
    pub fn handle(&self) -> SinkHandle {
        SinkHandle {
            shared: self.shared.clone(),
        }
    }

    /// The origin it stamps on batches.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Runs until the subscription is closed (engine shut down) and
    /// everything taken is acknowledged or given up, or until a
    /// [shutdown](SinkHandle::shutdown_by) ends it. A stream that exists
    /// and does not cover the root is an error as soon as the server says
    /// so (a connection that never comes up is not: the subscription's
    /// queue absorbs the batches meanwhile).
    pub async fn run(self) -> Result<SinkStats, Error> {
        self.drive(Startup::FailFast).await
    }

    async fn drive(self, mut startup: Startup) -> Result<SinkStats, Error> {
        let SinkTask {
            mut receiver,
            config,
            origin,
            shared,
        } = self;
        let c = &shared.counters;
        let addrs = parse_url(&config.url)?;
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(config.attempt_timeout)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(25u64 << attempts.min(5)).min(Duration::from_millis(500))
            })
            .connect(addrs)
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.attempt_timeout)
            .max_ack_inflight(config.max_in_flight * 4)
            .backpressure_on_inflight(true)
            .build(client.clone());

        let mut stop = shared.stop.subscribe();
        let mut tasks: JoinSet<Outcome> = JoinSet::new();
        let mut backlog: VecDeque<crate::Batch<T>> = VecDeque::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut state = State::Pending {
            next_try: Instant::now(),
            backoff: config.backoff_initial,
        };
        let mut closed = false;
        let mut fatal: Option<Error> = None;
        let mut ensuring: Option<tokio::task::JoinHandle<Result<(), Ensure>>> = None;

        loop {
            // Start what the state and the in-flight bound allow.
            while !matches!(state, State::Pending { .. }) && tasks.len() < config.max_in_flight {
                let Some(batch) = backlog.pop_front() else {
                    break;
                };
                take(
                    batch, &config, &origin, &shared, &client, &js, &mut tasks, &state,
                );
            }
            c.backlog.store(backlog.len() as u64, Relaxed);
            let deadline = *stop.borrow_and_update();
            if let Some(deadline) = deadline {
                if Instant::now() >= deadline {
                    tasks.abort_all();
                    while let Some(res) = tasks.join_next().await {
                        account(&shared, res);
                    }
                    while let Ok(batch) = receiver.try_recv() {
                        admit(&shared, &config, &mut backlog, batch);
                    }
                    c.abandoned.fetch_add(backlog.len() as u64, Relaxed);
                    backlog.clear();
                    c.backlog.store(0, Relaxed);
                    break;
                }
                if tasks.is_empty() && backlog.is_empty() {
                    // Draining: take what is queued now, then finish.
                    match receiver.try_recv() {
                        Ok(batch) => {
                            admit(&shared, &config, &mut backlog, batch);
                            continue;
                        }
                        Err(_) => break,
                    }
                }
            }
            if closed && tasks.is_empty() && backlog.is_empty() {
                break;
            }
            let sleep_until =
                deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                Some(res) = tasks.join_next(), if !tasks.is_empty() => account(&shared, res),
                _ = stop.changed() => {}
                _ = tokio::time::sleep_until(sleep_until.into()) => {}
                _ = tick.tick() => {
                    c.connected.store(
                        client.connection_state() == async_nats::connection::State::Connected,
                        Relaxed,
                    );
                    if let Ok(mut s) = shared.subscriber.lock() {
                        *s = Some(receiver.stats());
                    }
                    if let State::Pending { next_try, .. } = state {
                        if ensuring.is_none() && Instant::now() >= next_try {
                            let js = js.clone();
                            let config = config.clone();
                            ensuring = Some(tokio::spawn(async move {
                                ensure_stream(&js, &config).await
                            }));
                        }
                    }
                }
                // The stream check runs beside the loop, which goes on
                // taking batches meanwhile.
                verdict = async { ensuring.as_mut().expect("guarded").await }, if ensuring.is_some() => {
                    ensuring = None;
                    let verdict = verdict.unwrap_or_else(|e| Err(Ensure::Transient(e.to_string())));
                    let State::Pending { backoff, .. } = state else { continue };
                    match verdict {
                        Ok(()) => {
                            c.stream_ready.store(true, Relaxed);
                            state = State::Ready;
                            startup.report(Ok(()));
                        }
                        Err(Ensure::Transient(e)) => {
                            shared.note_error(&e);
                            state = State::Pending {
                                next_try: Instant::now() + backoff,
                                backoff: (backoff * 2).min(config.backoff_max),
                            };
                        }
                        Err(Ensure::Fatal(e)) => {
                            shared.note_error(&e);
                            state = State::Fatal;
                            if let Some(e) = startup.report(Err(e)) {
                                fatal = Some(e);
                                break;
                            }
                        }
                    }
                }
                // Always taken at once, so that the engine's flush and
                // shutdown never wait on the network: the backlog holds
                // what the server has not taken yet.
                item = receiver.next(), if !closed => match item {
                    Some(batch) => admit(&shared, &config, &mut backlog, batch),
                    None => closed = true,
                },
            }
        }
        c.abandoned.fetch_add(backlog.len() as u64, Relaxed);
        backlog.clear();
        c.backlog.store(0, Relaxed);
        if let Some(check) = ensuring.take() {
            check.abort();
        }
        c.in_flight.store(tasks.len() as u64, Relaxed);
        c.connected.store(
            client.connection_state() == async_nats::connection::State::Connected,
            Relaxed,
        );
        if let Ok(mut s) = shared.subscriber.lock() {
            *s = Some(receiver.stats());
        }
        drop(receiver);
        // Flush the connection's buffer (acks are in already), within what
        // is left of a shutdown's time.
        let left = match *stop.borrow() {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            None => config.attempt_timeout,
        };
        if !left.is_zero() && c.connected.load(Relaxed) {
            let _ = tokio::time::timeout(left.min(config.attempt_timeout), client.flush()).await;
        }
        match fatal {
            Some(e) => Err(e),
            None => Ok(shared.stats()),
        }
    }
}

/// Where a sink's start-up verdict goes.
enum Startup {
    /// [`SinkTask::run`]: a fatal error ends the run.
    FailFast,
    /// [`Sink::spawn`], waiting: the first verdict goes to it; after that
    /// (or once it stopped waiting) a fatal error is counted, not raised.
    Report(Option<std::sync::mpsc::Sender<Result<(), Error>>>),
}

impl Startup {
    /// Hands the verdict on; gives a fatal error back when the run must end
    /// with it.
    fn report(&mut self, verdict: Result<(), Error>) -> Option<Error> {
        match self {
            Startup::FailFast => verdict.err(),
            Startup::Report(tx) => match (tx.take(), verdict) {
                // Sent, or the spawner stopped waiting: the run goes on.
                (Some(tx), v) => {
                    let _ = tx.send(v);
                    None
                }
                (None, _) => None,
            },
        }
    }
}

#[derive(Clone, Copy)]
enum State {
    /// The stream is not confirmed yet (server away, or not answered).
    Pending {
        next_try: Instant,
        backoff: Duration,
    },
    /// Publishing.
    Ready,
    /// The stream conflicts: every batch is counted failed.
    Fatal,
}

enum Ensure {
    Transient(String),
    Fatal(Error),
}

async fn ensure_stream(js: &jetstream::Context, config: &SinkConfig) -> Result<(), Ensure> {
    let wanted = format!("{}.>", config.root);
    let conflict = |subjects: Vec<String>| {
        Ensure::Fatal(Error::StreamConflict {
            stream: config.stream.clone(),
            subjects,
            wanted: wanted.clone(),
        })
    };
    match js.get_stream(&config.stream).await {
        Ok(stream) => {
            let subjects = stream.cached_info().config.subjects.clone();
            if subjects.iter().any(|s| covers(s, &config.root)) {
                Ok(())
            } else {
                Err(conflict(subjects))
            }
        }
        Err(e) => {
            use jetstream::context::GetStreamErrorKind;
            match e.kind() {
                GetStreamErrorKind::JetStream(js_err) if js_err.code() == 404 => {
                    if !config.create_stream {
                        return Err(Ensure::Fatal(Error::UnknownStream(config.stream.clone())));
                    }
                    let stream_config = jetstream::stream::Config {
                        name: config.stream.clone(),
                        subjects: vec![wanted.clone()],
                        duplicate_window: config.duplicate_window,
                        storage: jetstream::stream::StorageType::File,
                        ..Default::default()
                    };
                    match js.create_stream(stream_config).await {
                        Ok(_) => Ok(()),
                        Err(e) => {
                            use jetstream::context::CreateStreamErrorKind;
                            match e.kind() {
                                // Another stream holds overlapping subjects,
                                // or a bad name: the server's answer.
                                CreateStreamErrorKind::JetStream(js_err) => {
                                    let text = js_err.to_string();
                                    if text.contains("overlap") {
                                        Err(conflict(vec![format!("(another stream) {text}")]))
                                    } else {
                                        Err(Ensure::Fatal(Error::JetStream(text)))
                                    }
                                }
                                _ => Err(Ensure::Transient(format!("create stream: {e}"))),
                            }
                        }
                    }
                }
                GetStreamErrorKind::JetStream(js_err) => {
                    Err(Ensure::Transient(format!("stream info: {js_err}")))
                }
                _ => Err(Ensure::Transient(format!("stream info: {e}"))),
            }
        }
    }
}

enum Outcome {
    Acked { events: u64 },
    Duplicate { events: u64 },
    Failed,
}

fn account(shared: &Shared, res: Result<Outcome, tokio::task::JoinError>) {
    let c = &shared.counters;
    c.in_flight.fetch_sub(1, Relaxed);
    match res {
        Ok(Outcome::Acked { events }) => {
            c.acked.fetch_add(1, Relaxed);
            c.events_landed.fetch_add(events, Relaxed);
        }
        Ok(Outcome::Duplicate { events }) => {
            c.duplicates.fetch_add(1, Relaxed);
            c.events_landed.fetch_add(events, Relaxed);
        }
        Ok(Outcome::Failed) => {
            c.failed.fetch_add(1, Relaxed);
        }
        // Aborted at a shutdown's deadline (a panic cannot happen in
        // `publish`, but would be counted here too).
        Err(_) => {
            c.abandoned.fetch_add(1, Relaxed);
        }
    }
}

/// Takes a batch from the subscription into the backlog, dropping (and
/// counting) the oldest when it is full.
fn admit<T>(
    shared: &Shared,
    config: &SinkConfig,
    backlog: &mut VecDeque<crate::Batch<T>>,
    batch: crate::Batch<T>,
) {
    let c = &shared.counters;
    c.batches.fetch_add(1, Relaxed);
    c.events.fetch_add(batch.len() as u64, Relaxed);
    if backlog.len() >= config.backlog {
        if let Some(old) = backlog.pop_front() {
            c.backlog_dropped.fetch_add(1, Relaxed);
            c.backlog_dropped_events
                .fetch_add(old.len() as u64, Relaxed);
        }
    }
    backlog.push_back(batch);
    c.backlog.store(backlog.len() as u64, Relaxed);
}

/// Starts one batch's publish: encodes it, or counts why not.
#[allow(clippy::too_many_arguments)]
fn take<T: Serialize>(
    batch: crate::Batch<T>,
    config: &Arc<SinkConfig>,
    origin: &Origin,
    shared: &Arc<Shared>,
    client: &async_nats::Client,
    js: &jetstream::Context,
    tasks: &mut JoinSet<Outcome>,
    state: &State,
) {
    let c = &shared.counters;
    let events = batch.len() as u64;
    if matches!(state, State::Fatal) {
        c.failed.fetch_add(1, Relaxed);
        return;
    }
    let payload = match wire::encode(&batch, origin) {
        Ok(p) => p,
        Err(e) => {
            c.encode_errors.fetch_add(1, Relaxed);
            shared.note_error(Error::Encode(e));
            return;
        }
    };
    let id = message_id(origin, batch.prefix(), batch.seq(), batch.last_seq());
    let subject = subject_for(&config.root, batch.prefix());
    let server_max = match client.server_info().max_payload {
        0 => DEFAULT_MAX_PAYLOAD,
        n => n,
    };
    let max_payload = config
        .max_payload
        .map_or(server_max, |cap| cap.min(server_max));
    let bytes = payload.len() + id.len() + subject.len() + ENVELOPE;
    if bytes > max_payload {
        c.oversize.fetch_add(1, Relaxed);
        shared.note_error(Error::Oversize {
            prefix: batch.prefix().to_owned(),
            seq: batch.seq(),
            bytes,
            max_payload,
        });
        return;
    }
    drop(batch);
    c.in_flight.fetch_add(1, Relaxed);
    let message = PublishMessage::build()
        .payload(payload.into())
        .message_id(id);
    tasks.spawn(publish(
        js.clone(),
        subject,
        message,
        config.clone(),
        shared.clone(),
        events,
    ));
}

/// Publishes one message until it is acknowledged or its retry horizon
/// has passed.
async fn publish(
    js: jetstream::Context,
    subject: String,
    message: PublishMessage,
    config: Arc<SinkConfig>,
    shared: Arc<Shared>,
    events: u64,
) -> Outcome {
    let first = Instant::now();
    let mut backoff = config.backoff_initial;
    loop {
        let attempt = async {
            js.send_publish(subject.clone(), message.clone())
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        };
        let error = match tokio::time::timeout(config.attempt_timeout, attempt).await {
            Ok(Ok(ack)) if ack.duplicate => return Outcome::Duplicate { events },
            Ok(Ok(_)) => return Outcome::Acked { events },
            Ok(Err(e)) => e,
            Err(_) => "no acknowledgement in time".to_owned(),
        };
        shared.note_error(format_args!("publish {subject}: {error}"));
        if first.elapsed() + backoff > config.retry_horizon {
            return Outcome::Failed;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(config.backoff_max);
        shared.counters.retries.fetch_add(1, Relaxed);
    }
}

/// A sink on its own thread (a current-thread tokio runtime).
///
/// ```no_run
/// use ringfold::nats::{Sink, SinkConfig};
/// use ringfold::{Engine, Value};
/// use std::time::Duration;
/// let engine = Engine::<Value>::builder().build()?;
/// let sink = Sink::spawn(&engine, "*", SinkConfig::new("nats://127.0.0.1:4222"))?;
/// engine.publish("data:users:created", 1u64)?;
/// engine.shutdown()?;
/// let stats = sink.shutdown_timeout(Duration::from_secs(5))?;
/// assert!(stats.is_conserved());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Sink {
    handle: SinkHandle,
    origin: Origin,
    done: std::sync::mpsc::Receiver<Result<SinkStats, Error>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    /// Subscribes to `pattern` and starts publishing on a thread of its
    /// own. Waits up to the configured
    /// [start-up wait](SinkConfig::startup_wait) for the server to
    /// confirm the stream, so that a conflicting stream is an error here;
    /// a server that does not answer in time is not (the sink keeps
    /// trying, and its subscription's queue absorbs the batches).
    pub fn spawn<T: Serialize + Send + Sync + 'static>(
        engine: &Engine<T>,
        pattern: &str,
        config: SinkConfig,
    ) -> Result<Sink, Error> {
        let wait = config.startup_wait;
        let task = SinkTask::new(engine, pattern, config)?;
        let handle = task.handle();
        let origin = task.origin().clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done_tx, done) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ringfold-nats-sink".into())
            .spawn(move || {
                let result = runtime.block_on(task.drive(Startup::Report(Some(ready_tx))));
                let _ = done_tx.send(result);
            })
            .map_err(Error::Runtime)?;
        let mut sink = Sink {
            handle,
            origin,
            done,
            thread: Some(thread),
        };
        if let Ok(Err(e)) = ready_rx.recv_timeout(wait) {
            sink.handle.shutdown_by(Instant::now());
            if let Some(t) = sink.thread.take() {
                let _ = t.join();
            }
            return Err(e);
        }
        Ok(sink)
    }

    /// The sink's counters now.
    pub fn stats(&self) -> SinkStats {
        self.handle.stats()
    }

    /// A handle on its figures (and shutdown).
    pub fn handle(&self) -> SinkHandle {
        self.handle.clone()
    }

    /// The origin it stamps on batches.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The most recent error it met, if any.
    pub fn last_error(&self) -> Option<String> {
        self.handle.last_error()
    }

    /// Its subscription's counters (see [`SinkHandle::subscriber_stats`]).
    pub fn subscriber_stats(&self) -> Option<SubscriberStats> {
        self.handle.subscriber_stats()
    }

    /// Publishes what its subscription holds (shut the engine down first
    /// to flush every window into it), awaits the acknowledgements for at
    /// most `timeout`, and stops; what is left is counted
    /// [`abandoned`](SinkStats::abandoned). Returns within `timeout` plus
    /// the time to abort (milliseconds), or [`Error::Timeout`].
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Result<SinkStats, Error> {
        self.finish(timeout)
    }

    fn finish(&mut self, timeout: Duration) -> Result<SinkStats, Error> {
        let deadline = Instant::now() + timeout;
        self.handle.shutdown_by(deadline);
        let Some(thread) = self.thread.take() else {
            return Ok(self.stats());
        };
        match self.done.recv_timeout(timeout + Duration::from_secs(1)) {
            Ok(result) => {
                let _ = thread.join();
                result.or_else(|e| match e {
                    // A conflict found after start-up is counted, not raised.
                    Error::StreamConflict { .. } => Ok(self.stats()),
                    e => Err(e),
                })
            }
            Err(_) => Err(Error::Timeout),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.finish(DROP_WAIT);
        }
    }
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("origin", &self.origin)
            .field("stats", &self.stats())
            .finish()
    }
}
