//! `tower`'s event loop: ONE runtime thread (a tokio current-thread
//! runtime) that does two jobs, as the seed's tower did:
//!
//! * **dispatch**: it consumes deliveries from a receiver used as an async
//!   stream and, for each one, serialises its events to JSON and writes the
//!   frame to a local TCP socket (127.0.0.1, a free port), as an IPC bridge
//!   to a UI would; a "UI" thread reads the other end;
//! * **health check**: every 50 ms it answers a health check by writing a
//!   `{"health":...}` frame to the same socket.
//!
//! The UI end times each health answer against the moment it was due. A
//! check is *missed* when its answer reaches the UI more than
//! [`DEADLINE`] after it was due, or never (still pending when the loop
//! ends). With per-event dispatch (the unbatched bus, `tower --baseline`)
//! the stream is ready again after every dispatch, so the loop never gets
//! back to its timer while the flood lasts: that is the seed's failure (a
//! health check blocked by an event loop flooded by per-event dispatch).
//! A runtime-agnostic stream takes no part in tokio's cooperative budget,
//! and the consumer below is the plain `while let Some(b) = next().await`
//! that event-loop code is written as.

#[cfg(feature = "stream")]
use std::future::poll_fn;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
#[cfg(feature = "stream")]
use std::pin::Pin;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ringfold::Value;
use serde_json::json;

use crate::common::Histogram;
use crate::{Batch, Receiver};

/// How often the health check is due.
pub const PERIOD: Duration = Duration::from_millis(50);
/// An answer later than this after its due time is a missed deadline.
pub const DEADLINE: Duration = Duration::from_millis(50);

/// When the run started and when the indexer's start-up burst ends.
#[derive(Clone, Copy)]
pub struct Phases {
    pub start: Instant,
    pub burst_end: Instant,
}

/// Health figures of one phase.
#[derive(Default, Clone)]
pub struct Health {
    /// Checks that fell due.
    pub due: u64,
    /// Answers the UI received.
    pub answered: u64,
    /// Answers received within [`DEADLINE`] of their due time.
    pub on_time: u64,
    /// Delay from due time to the UI reading the answer.
    pub delay: Histogram,
}

impl Health {
    /// Late or never answered.
    pub fn missed(&self) -> u64 {
        self.due.saturating_sub(self.on_time)
    }

    fn merge(&mut self, other: &Health) {
        self.due += other.due;
        self.answered += other.answered;
        self.on_time += other.on_time;
        self.delay.merge(&other.delay);
    }
}

/// What the loop did.
#[derive(Default)]
pub struct LoopReport {
    pub addr: String,
    /// Deliveries dispatched (one frame and one socket write each).
    pub dispatches: u64,
    pub events: u64,
    pub bytes: u64,
    pub write_errors: u64,
    /// Time the loop spent dispatching (serialise + write), in all.
    pub busy: Duration,
    /// Per dispatch.
    pub dispatch_time: Histogram,
    /// Frames the UI read (deliveries and health answers).
    pub ui_frames: u64,
    pub burst: Health,
    pub after: Health,
    /// The receiver's own counters when its stream ended (it is dropped
    /// with the loop, possibly before the engine's final stats are taken).
    pub subscriber: Option<ringfold::SubscriberStats>,
}

impl LoopReport {
    pub fn whole(&self) -> Health {
        let mut h = self.burst.clone();
        h.merge(&self.after);
        h
    }
}

/// Called with each health check's delay as the UI end reads its answer,
/// and whether the check fell due during the start-up burst (tower's live
/// page shows them as they happen).
pub type OnHealth = Box<dyn FnMut(Duration, bool) + Send>;

/// Starts the loop's thread; it ends when `rx` ends (engine shut down).
pub fn spawn(
    rx: Receiver,
    phases: Phases,
    on_health: Option<OnHealth>,
) -> io::Result<JoinHandle<io::Result<LoopReport>>> {
    thread::Builder::new()
        .name("tower-event-loop".into())
        .spawn(move || run(rx, phases, on_health))
}

fn run(mut rx: Receiver, phases: Phases, on_health: Option<OnHealth>) -> io::Result<LoopReport> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    let addr = listener.local_addr()?;
    let sock = TcpStream::connect(addr)?;
    sock.set_nodelay(true)?;
    let (ui_end, _) = listener.accept()?;
    let ui = thread::Builder::new()
        .name("tower-ui".into())
        .spawn(move || ui_reader(ui_end, phases, on_health))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let mut report = LoopReport {
        addr: addr.to_string(),
        ..Default::default()
    };
    let first_due = phases.start + PERIOD;
    runtime.block_on(async {
        let dispatch = dispatch(&mut rx, &sock, phases.start, &mut report);
        let health = health(&sock, phases.start, first_due);
        tokio::select! {
            () = dispatch => {}
            () = health => {}
        }
    });
    let ended = Instant::now();
    report.subscriber = Some(rx.stats());
    // Done writing: the UI reads to EOF and reports.
    let _ = sock.shutdown(Shutdown::Write);
    let (ui_frames, mut burst, mut after) = ui
        .join()
        .map_err(|_| io::Error::other("ui reader panicked"))??;

    // Checks due before the loop ended, by phase (due at PERIOD, 2 PERIOD,
    // ... after the start; a check due before the burst's end is the
    // burst's, as the UI end classifies them).
    let due_before = |t: Instant| -> u64 {
        let t = t.saturating_duration_since(phases.start).as_micros();
        t.saturating_sub(1).div_euclid(PERIOD.as_micros()) as u64
    };
    let burst_end = phases.burst_end.min(ended);
    burst.due = due_before(burst_end);
    after.due = due_before(ended) - burst.due;
    report.ui_frames = ui_frames;
    report.burst = burst;
    report.after = after;
    Ok(report)
}

/// How the loop awaits deliveries, for the report.
#[cfg(feature = "stream")]
pub const CONSUMER: &str = "Receiver as a futures_core::Stream";
/// How the loop awaits deliveries, for the report.
#[cfg(not(feature = "stream"))]
pub const CONSUMER: &str = "Receiver::try_recv, 1 ms timer when empty (build with \
                            the default `stream` feature for the Stream)";

/// The next delivery: the receiver as a `Stream` (woken by the flusher
/// when it queues a batch).
#[cfg(feature = "stream")]
async fn next(rx: &mut Receiver) -> Option<Batch> {
    use futures_core::Stream;
    poll_fn(|cx| Pin::new(&mut *rx).poll_next(cx)).await
}

/// The next delivery, without the `stream` feature: take what is queued,
/// and when nothing is, wait on the runtime's 1 ms timer (never block the
/// loop's thread in `recv`).
#[cfg(not(feature = "stream"))]
async fn next(rx: &mut Receiver) -> Option<Batch> {
    loop {
        match rx.try_recv() {
            Ok(batch) => return Some(batch),
            Err(ringfold::TryRecvError::Closed) => return None,
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

async fn dispatch(rx: &mut Receiver, sock: &TcpStream, start: Instant, report: &mut LoopReport) {
    let mut buf = Vec::with_capacity(64 << 10);
    while let Some(batch) = next(rx).await {
        let t = Instant::now();
        buf.clear();
        encode(&batch, start, &mut buf);
        buf.push(b'\n');
        match (&*sock).write_all(&buf) {
            Ok(()) => report.bytes += buf.len() as u64,
            Err(_) => report.write_errors += 1,
        }
        let took = t.elapsed();
        report.dispatches += 1;
        report.events += batch.len() as u64;
        report.busy += took;
        report.dispatch_time.record(took);
    }
}

async fn health(sock: &TcpStream, start: Instant, first_due: Instant) {
    // Burst (the default): after a stall every overdue check is answered,
    // each late, as a prober that kept asking would see.
    let mut every = tokio::time::interval_at(first_due.into(), PERIOD);
    loop {
        let due = every.tick().await.into_std();
        let due_us = due.saturating_duration_since(start).as_micros() as u64;
        let frame = format!("{{\"health\":\"ok\",\"due_us\":{due_us}}}\n");
        // A failed write is an unanswered check: the UI end counts answers.
        let _ = (&*sock).write_all(frame.as_bytes());
    }
}

/// One delivery as one JSON frame: the batch's header and every event.
fn encode(batch: &Batch, start: Instant, buf: &mut Vec<u8>) {
    let events: Vec<serde_json::Value> = batch
        .events()
        .iter()
        .map(|e| {
            json!({
                "name": e.name(),
                "value": value_json(e.payload()),
                "t_us": e.timestamp().saturating_duration_since(start).as_micros() as u64,
            })
        })
        .collect();
    let aggregates: Vec<serde_json::Value> = batch
        .aggregates()
        .iter()
        .map(|a| {
            json!({
                "name": a.name(), "count": a.count(), "mean": a.mean(),
                "min": a.min(), "max": a.max(),
            })
        })
        .collect();
    let frame = json!({
        "prefix": batch.prefix(),
        "name": batch.name(),
        "seq": batch.seq(),
        "reason": format!("{:?}", batch.reason()),
        "lagged": batch.lagged(),
        "events": events,
        "aggregates": aggregates,
    });
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, &frame);
}

fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Unit => serde_json::Value::Null,
        Value::Bool(b) => json!(b),
        Value::I64(n) => json!(n),
        Value::U64(n) => json!(n),
        Value::F64(x) => json!(x),
        other => match other.as_str() {
            Some(s) => json!(s),
            None => json!(other.to_string()),
        },
    }
}

/// The UI end: reads frames, and times each health answer against its
/// due time.
fn ui_reader(
    sock: TcpStream,
    phases: Phases,
    mut on_health: Option<OnHealth>,
) -> io::Result<(u64, Health, Health)> {
    let mut reader = BufReader::with_capacity(1 << 16, sock);
    let mut line = Vec::with_capacity(64 << 10);
    let (mut frames, mut burst, mut after) = (0u64, Health::default(), Health::default());
    let burst_us = phases.burst_end.duration_since(phases.start).as_micros();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        frames += 1;
        if !line.starts_with(b"{\"health\"") {
            continue;
        }
        let now = Instant::now();
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) else {
            continue;
        };
        let Some(due_us) = v["due_us"].as_u64() else {
            continue;
        };
        let due = phases.start + Duration::from_micros(due_us);
        let delay = now.saturating_duration_since(due);
        let in_burst = u128::from(due_us) < burst_us;
        if let Some(f) = on_health.as_mut() {
            f(delay, in_burst);
        }
        let h = if in_burst { &mut burst } else { &mut after };
        h.answered += 1;
        h.on_time += u64::from(delay <= DEADLINE);
        h.delay.record(delay);
    }
    Ok((frames, burst, after))
}
