//! Issue 19, "the benchmark that shows why this library exists": the
//! consumer does real work per batch, and the question is what that work
//! costs the threads that publish.
//!
//! Workload: events named `data:t<i>:created` over 64 prefixes, `u64`
//! payloads, published flat out by 1, 2 and 4 producer threads, grouped
//! per prefix by the same rule for every contender (100 events or 50 ms;
//! ringfold: `Policy::batch(50 ms, 100)`). The consumer's work, the same
//! code for every contender ([`JsonSink`]): each batch becomes one JSON
//! line (`{"prefix":"data:t3","events":[["data:t3:created",17],...]}`,
//! serde_json) written with one `write_all` into a 64 KiB `BufWriter`
//! over a file in a temp dir.
//!
//! Measured per run:
//! * every publish call, timed with `Instant::now()` before and after it
//!   into a preallocated (and pre-touched) `Vec` per producer thread: p50,
//!   p99, p99.9 and max over all producers' calls. Every call is timed, so
//!   each figure includes one clock read (the "timer floor" line gives its
//!   cost, measured the same way around nothing);
//! * delivered events per second: events from the first producer's start
//!   until the consumer has written and flushed the last batch.
//!
//! Everything delivered, nothing dropped, for every contender: each run
//! parses its output file back, counts the events in it, and compares with
//! the events published (and the file's length with the bytes written);
//! for ringfold also `Stats` (no rejected publish, no subscriber lost
//! events to lag, conservation). A run that loses events prints a
//! `LOST n events` line and, after the table, the bench exits non-zero.
//!
//! Contenders:
//! * ringfold: a callback subscriber does the work on its own delivery
//!   thread; `FullPolicy::Block(5 s)` so no publish is refused at a full
//!   ring; the subscriber's lag policy left at its default. An extra row
//!   sets `LagPolicy::Block { timeout: 10 s }`.
//! * `parking_lot::Mutex` accumulator (the seed design card): producers
//!   push under one lock; the producer that fills a prefix's group to 100
//!   serialises and writes it while holding the lock, and a ticker thread
//!   emits due windows (50 ms, counted in 5 ms ticks) under the lock.
//! * crossbeam-channel `bounded(4096)`: producers `send` (blocking when
//!   full); the consumer groups and writes.
//! * tokio `mpsc::channel(4096)` from plain threads: `try_send`, then
//!   `blocking_send` when full; the consumer waits on a current-thread
//!   runtime, groups and writes.
//! * disruptor-rs multi producer (4096 slots): producers `try_publish`,
//!   yielding while the ring is full; an `EventPoller` consumer groups and
//!   writes.
//!
//! Threads are pinned as in `benches/throughput.rs` (consumer side on core
//! 0, producer `j` on core `(j + 1) % cores`; `RINGFOLD_BENCH_PIN=0` turns
//! it off). Runs only under `cargo bench` (the `--bench` flag); `cargo
//! test --benches` just checks that it builds. `RINGFOLD_BENCH_QUICK=1`
//! shrinks the event counts; `RINGFOLD_BENCH_FILTER=<text>` runs only the
//! contenders whose label contains the text.

use std::fs::File;
use std::hint::black_box;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ringfold::{Batch, LagPolicy, SubscribeOptions};

mod common;
use common::*;

// ---------------------------------------------------------------------------
// The consumer's work.

/// What a sink wrote, counted per batch and read after the run.
#[derive(Default)]
struct Tally {
    events: AtomicU64,
    batches: AtomicU64,
    bytes: AtomicU64,
}

/// Each batch as one JSON line, one `write_all` per batch into a buffered
/// file: the same code behind every contender's consumer.
struct JsonSink {
    out: BufWriter<File>,
    line: Vec<u8>,
    tally: Arc<Tally>,
    /// Busy-work rounds per event on top ([`spin`]); 0 for none.
    extra: u64,
}

/// Where a run's consumer writes, and how much busy work it adds per
/// event.
struct Work {
    path: PathBuf,
    extra: u64,
}

impl JsonSink {
    fn create(work: &Work) -> (Self, Arc<Tally>) {
        let path = &work.path;
        let file = File::create(path).unwrap_or_else(|e| panic!("create {path:?}: {e}"));
        let tally = Arc::new(Tally::default());
        let sink = JsonSink {
            out: BufWriter::with_capacity(64 * 1024, file),
            line: Vec::with_capacity(8 * 1024),
            tally: tally.clone(),
            extra: work.extra,
        };
        (sink, tally)
    }

    fn write_batch<'a>(&mut self, prefix: &str, events: impl Iterator<Item = (&'a str, u64)>) {
        let line = &mut self.line;
        line.clear();
        line.extend_from_slice(b"{\"prefix\":");
        serde_json::to_writer(&mut *line, prefix).expect("serialise prefix");
        line.extend_from_slice(b",\"events\":[");
        let mut n = 0u64;
        for (name, value) in events {
            if n > 0 {
                line.push(b',');
            }
            serde_json::to_writer(&mut *line, &(name, value)).expect("serialise event");
            spin(self.extra);
            n += 1;
        }
        line.extend_from_slice(b"]}\n");
        self.out.write_all(line).expect("write batch");
        self.tally.events.fetch_add(n, Ordering::Relaxed);
        self.tally.batches.fetch_add(1, Ordering::Relaxed);
        self.tally
            .bytes
            .fetch_add(line.len() as u64, Ordering::Relaxed);
    }

    fn flush(&mut self) {
        self.out.flush().expect("flush output file");
    }
}

/// `rounds` steps of a dependent multiply-add chain the compiler cannot
/// skip: the calibrated per-event cost of the slow-consumer scenario.
#[inline]
fn spin(rounds: u64) {
    let mut x = 1u64;
    for _ in 0..rounds {
        x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
    }
    black_box(x);
}

/// [`spin`] rounds per nanosecond on this machine: the fastest of 20
/// timed trials (the least disturbed by other load).
fn spin_rounds_per_ns() -> f64 {
    const ROUNDS: u64 = 200_000;
    let best = (0..20)
        .map(|_| {
            let t0 = Instant::now();
            spin(ROUNDS);
            t0.elapsed()
        })
        .min()
        .unwrap();
    ROUNDS as f64 / best.as_nanos().max(1) as f64
}

impl Emit for JsonSink {
    fn emit(&mut self, prefix: usize, events: &[Rec]) {
        let n = names();
        self.write_batch(
            n.prefixes[prefix],
            events.iter().map(|r| (n.names[r.name as usize], r.payload)),
        );
    }
    fn finish(&mut self) {
        self.flush();
    }
}

// ---------------------------------------------------------------------------
// The harness.

/// The producers' side of one run, shared with the consumer: when each
/// producer started, its publishes' latencies, and its "done" signal.
struct Probe {
    starts: Mutex<Vec<Instant>>,
    /// Context switches of the producer threads during their publish
    /// loops, summed.
    switches: Mutex<Switches>,
    lats: Mutex<Vec<Vec<u64>>>,
    end: Mutex<Option<Instant>>,
    done_tx: crossbeam_channel::Sender<()>,
    done_rx: crossbeam_channel::Receiver<()>,
    producers: usize,
}

impl Probe {
    /// Blocks until every producer has finished publishing.
    fn wait_producers(&self) {
        for _ in 0..self.producers {
            self.done_rx.recv().expect("producer vanished");
        }
    }
}

/// A thread's context switches (`/proc/thread-self/status`): voluntary
/// ones are sleeps (a blocked send, a parked lock waiter, a full ring's
/// wait); involuntary ones are preemptions and `yield_now`s that gave the
/// core away.
#[derive(Default, Clone, Copy)]
struct Switches {
    voluntary: u64,
    involuntary: u64,
}

impl Switches {
    fn now() -> Self {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        Switches {
            voluntary: field("voluntary_ctxt_switches:"),
            involuntary: field("nonvoluntary_ctxt_switches:"),
        }
    }
    fn since(self, before: Switches) -> Switches {
        Switches {
            voluntary: self.voluntary.saturating_sub(before.voluntary),
            involuntary: self.involuntary.saturating_sub(before.involuntary),
        }
    }
    fn add(&mut self, other: Switches) {
        self.voluntary += other.voluntary;
        self.involuntary += other.involuntary;
    }
}

/// One run's measurements, before checking.
struct Measured {
    /// The producers' context switches while publishing.
    switches: Switches,
    /// Every publish call's latency (ns), sorted.
    lat: Vec<u64>,
    /// First producer's start to the consumer's last flushed write.
    elapsed: Duration,
}

/// Runs `p` producers, each calling `publish(handle, j, i)` `per` times
/// (each call timed), beside `consume` on the consumer thread, which
/// returns once everything is delivered and its output flushed.
fn drive<H: Send>(
    p: usize,
    per: u64,
    handles: Vec<H>,
    publish: impl Fn(&mut H, usize, u64) + Sync,
    consume: impl FnOnce(&Probe) + Send,
) -> Measured {
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let probe = Probe {
        starts: Mutex::new(Vec::new()),
        switches: Mutex::new(Switches::default()),
        lats: Mutex::new(Vec::new()),
        end: Mutex::new(None),
        done_tx,
        done_rx,
        producers: p,
    };
    // Written once here, so no page fault lands inside a timed call.
    let bufs = (0..p).map(|_| vec![u64::MAX; per as usize]);
    let items: Vec<(H, Vec<u64>)> = handles.into_iter().zip(bufs).collect();
    let probe_ref = &probe;
    run_threads(
        p,
        |j, per, (mut h, mut lat): (H, Vec<u64>)| {
            let before = Switches::now();
            let start = Instant::now();
            for i in 0..per {
                let t0 = Instant::now();
                publish(&mut h, j, i);
                lat[i as usize] = t0.elapsed().as_nanos() as u64;
            }
            probe_ref.switches.lock().add(Switches::now().since(before));
            probe_ref.starts.lock().push(start);
            probe_ref.lats.lock().push(lat);
            probe_ref.done_tx.send(()).unwrap();
        },
        items,
        move || {
            consume(probe_ref);
            *probe_ref.end.lock() = Some(Instant::now());
        },
        per * p as u64,
    );
    let start = *probe.starts.lock().iter().min().unwrap();
    let end = probe.end.lock().expect("consumer did not finish");
    let mut lat: Vec<u64> = probe.lats.into_inner().concat();
    lat.sort_unstable();
    Measured {
        switches: probe.switches.into_inner(),
        lat,
        elapsed: end - start,
    }
}

/// What a contender's run returns: measurements, where its consumer wrote,
/// and its own loss counters (ringfold's `Stats`), `(what, count)`.
struct Outcome {
    measured: Measured,
    path: PathBuf,
    tally: Arc<Tally>,
    losses: Vec<(&'static str, u64)>,
    /// What to show beside a loss (ringfold: its subscriber's counters).
    detail: String,
}

impl Outcome {
    /// A contender with no loss counters of its own: the output file is
    /// the whole check.
    fn counted_by_file(measured: Measured, work: &Work, tally: Arc<Tally>) -> Self {
        Outcome {
            measured,
            path: work.path.clone(),
            tally,
            losses: Vec::new(),
            detail: String::new(),
        }
    }
}

// ---------------------------------------------------------------------------
// Contenders.

fn run_ringfold(p: usize, per: u64, work: &Work, lag: Option<LagPolicy>) -> Outcome {
    let (sink, tally) = JsonSink::create(work);
    let sink = Arc::new(Mutex::new(sink));
    let writer = sink.clone();
    let mut options = SubscribeOptions::new("w");
    if let Some(lag) = lag {
        options = options.lag(lag);
    }
    let (engine, keys) = ringfold_engine(options, move |b: &Batch<u64>| {
        writer.lock().write_batch(
            b.prefix(),
            b.events().iter().map(|e| (e.name(), *e.payload())),
        );
    });
    let refused = AtomicU64::new(0);
    let producers = (0..p).map(|_| engine.producer().unwrap()).collect();
    let measured = drive(
        p,
        per,
        producers,
        |producer, j, i| {
            if producer.publish_key(keys[slot(i, j)], i).is_err() {
                refused.fetch_add(1, Ordering::Relaxed);
            }
        },
        |probe| {
            probe.wait_producers();
            engine.flush().unwrap();
            sink.lock().flush();
        },
    );
    let stats = engine.stats();
    engine.shutdown().unwrap();
    let lagged: u64 = stats.subscribers.iter().map(|s| s.lag_dropped_events).sum();
    let detail = stats
        .subscribers
        .iter()
        .map(|s| {
            format!(
                "subscriber {:?}: sealed {} batches, delivered {} batches / {} events, \
                 lag-dropped {} batches / {} events",
                s.name,
                s.sealed,
                s.delivered_batches,
                s.delivered_events,
                s.lag_dropped_batches,
                s.lag_dropped_events
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let conserved = stats.is_conserved() && stats.subscribers.iter().all(|s| s.is_conserved());
    Outcome {
        measured,
        path: work.path.clone(),
        tally,
        losses: vec![
            ("publish refused", refused.into_inner()),
            ("Stats.dropped rejected", stats.dropped.rejected()),
            ("subscriber lag_dropped_events", lagged),
            ("Stats not conserved", u64::from(!conserved)),
            (
                "Stats.published short",
                (per * p as u64).saturating_sub(stats.published),
            ),
        ],
        detail,
    }
}

fn run_ringfold_default(p: usize, per: u64, work: &Work) -> Outcome {
    run_ringfold(p, per, work, None)
}

fn run_ringfold_block(p: usize, per: u64, work: &Work) -> Outcome {
    let lag = LagPolicy::Block {
        timeout: Duration::from_secs(10),
    };
    run_ringfold(p, per, work, Some(lag))
}

/// The seed design card's accumulator: the consumer's work runs under the
/// producers' lock (see the module docs).
fn run_parking_lot(p: usize, per: u64, work: &Work) -> Outcome {
    let (sink, tally) = JsonSink::create(work);
    let acc = Mutex::new(LockedAcc::new(sink));
    let measured = drive(
        p,
        per,
        vec![(); p],
        |_, j, i| acc.lock().publish(rec(slot(i, j), i)),
        |probe| {
            // The ticker: a tick every 5 ms until every producer is done.
            pin(0);
            let mut finished = 0;
            let mut next = Instant::now() + TICK;
            while finished < p {
                match probe.done_rx.recv_deadline(next) {
                    Ok(()) => finished += 1,
                    Err(_) => {
                        acc.lock().on_tick(false);
                        next = Instant::now() + TICK;
                    }
                }
            }
            acc.lock().finish();
        },
    );
    Outcome::counted_by_file(measured, work, tally)
}

fn run_crossbeam(p: usize, per: u64, work: &Work) -> Outcome {
    let (sink, tally) = JsonSink::create(work);
    let (tx, rx) = crossbeam_channel::bounded::<Rec>(CAPACITY);
    let measured = drive(
        p,
        per,
        (0..p).map(|_| tx.clone()).collect(),
        |tx, j, i| tx.send(rec(slot(i, j), i)).unwrap(),
        move |_| channel_consumer(rx, sink, per * p as u64),
    );
    Outcome::counted_by_file(measured, work, tally)
}

fn run_tokio(p: usize, per: u64, work: &Work) -> Outcome {
    let (sink, tally) = JsonSink::create(work);
    let (tx, rx) = tokio::sync::mpsc::channel::<Rec>(CAPACITY);
    let measured = drive(
        p,
        per,
        (0..p).map(|_| tx.clone()).collect(),
        |tx, j, i| tokio_send(tx, rec(slot(i, j), i)),
        move |_| channel_consumer(TokioRx::new(rx), sink, per * p as u64),
    );
    Outcome::counted_by_file(measured, work, tally)
}

fn run_disruptor(p: usize, per: u64, work: &Work) -> Outcome {
    let (sink, tally) = JsonSink::create(work);
    let (mut poller, producers) = disruptor_mp(p);
    let measured = drive(
        p,
        per,
        producers,
        |producer, j, i| disruptor_publish(producer, rec(slot(i, j), i)),
        move |_| poll_consumer(|g, now| poll_mp(&mut poller, g, now), sink, per * p as u64),
    );
    Outcome::counted_by_file(measured, work, tally)
}

type Runner = fn(usize, u64, &Work) -> Outcome;

/// (label, file stem, runner); the first is the baseline of the ratios.
const CONTENDERS: [(&str, &str, Runner); 6] = [
    ("ringfold", "ringfold", run_ringfold_default),
    (
        "ringfold, Block lag policy (extra)",
        "ringfold-block",
        run_ringfold_block,
    ),
    (
        "parking_lot Mutex, work under lock",
        "parking-lot",
        run_parking_lot,
    ),
    ("crossbeam-channel bounded", "crossbeam", run_crossbeam),
    ("tokio mpsc bounded", "tokio", run_tokio),
    ("disruptor multi producer", "disruptor-mp", run_disruptor),
];

// ---------------------------------------------------------------------------
// Checking and reporting.

/// Reads a run's output back: (events, lines). Every line must parse as
/// JSON with an `events` array.
fn read_back(path: &Path) -> (u64, u64) {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    let (mut events, mut lines) = (0, 0);
    for line in BufReader::new(file).lines() {
        let line = line.expect("read output line");
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{path:?} line {}: not JSON: {e}", lines + 1));
        let n = v["events"]
            .as_array()
            .unwrap_or_else(|| panic!("{path:?} line {}: no events array", lines + 1))
            .len();
        events += n as u64;
        lines += 1;
    }
    (events, lines)
}

struct Row {
    label: &'static str,
    producers: usize,
    p50: u64,
    p99: u64,
    p999: u64,
    p9999: u64,
    max: u64,
    /// Mean publish, ns: the producers' total time in publish calls per
    /// event, waits included however rare.
    mean: f64,
    switches: Switches,
    meps: f64,
    /// Empty when everything was delivered.
    lost: String,
}

/// Checks a run (everything published is in the file, nothing counted
/// lost) and summarises it; a failed check prints `LOST ...` at once.
fn check(scenario: &str, label: &'static str, p: usize, per: u64, out: Outcome) -> Row {
    let published = per * p as u64;
    let (in_file, lines) = read_back(&out.path);
    let len = std::fs::metadata(&out.path).map_or(0, |m| m.len());
    let mut problems = Vec::new();
    if in_file != published {
        problems.push(format!(
            "LOST {} events: {in_file} of {published} published are in the output",
            published.saturating_sub(in_file)
        ));
    }
    if lines != out.tally.batches.load(Ordering::Relaxed)
        || len != out.tally.bytes.load(Ordering::Relaxed)
        || in_file != out.tally.events.load(Ordering::Relaxed)
    {
        problems.push(format!(
            "output file disagrees with what the sink wrote ({lines} lines, {len} bytes)"
        ));
    }
    for (what, n) in &out.losses {
        if *n > 0 {
            problems.push(format!("{what}: {n}"));
        }
    }
    let _ = std::fs::remove_file(&out.path);
    if !problems.is_empty() && !out.detail.is_empty() {
        problems.push(out.detail.clone());
    }
    let lost = problems.join("; ");
    if !lost.is_empty() {
        println!("!! {scenario}: {label}, {p} producer(s): {lost}");
    }
    let lat = &out.measured.lat;
    Row {
        label,
        producers: p,
        p50: pct(lat, 0.5),
        p99: pct(lat, 0.99),
        p999: pct(lat, 0.999),
        p9999: pct(lat, 0.9999),
        max: lat.last().copied().unwrap_or(0),
        mean: lat.iter().sum::<u64>() as f64 / lat.len().max(1) as f64,
        switches: out.measured.switches,
        meps: in_file as f64 / out.measured.elapsed.as_secs_f64() / 1e6,
        lost,
    }
}

/// The cost of the timing itself: `Instant::now()` before and
/// `elapsed()` after an empty body, as around every publish.
fn timer_floor() -> (u64, u64) {
    let mut v = vec![u64::MAX; 1_000_000];
    for x in v.iter_mut() {
        let t0 = Instant::now();
        *x = t0.elapsed().as_nanos() as u64;
    }
    v.sort_unstable();
    (pct(&v, 0.5), pct(&v, 0.999))
}

/// The consumer's work alone, on this thread: ns per event to serialise
/// and write `total` events in batches of 100 (the most a consumer can
/// keep up with, with a core to itself).
fn work_alone(work: &Work, total: u64) -> f64 {
    let (mut sink, _) = JsonSink::create(work);
    let batch: Vec<Rec> = (0..MAX_COUNT).map(|i| rec(7, i as u64)).collect();
    let t0 = Instant::now();
    for _ in 0..total / MAX_COUNT as u64 {
        sink.emit(7, &batch);
    }
    sink.finish();
    let ns = t0.elapsed().as_nanos() as f64 / total as f64;
    drop(sink);
    let _ = std::fs::remove_file(&work.path);
    ns
}

fn print_table(rows: &[Row]) {
    println!(
        "| {:<36} | {:>1} | {:>6} | {:>6} | {:>8} | {:>9} | {:>11} | {:>8} | {:>6} | {:>7} | {:>6} | {:>8} | {:<8} |",
        "contender",
        "P",
        "p50 ns",
        "p99 ns",
        "p99.9 ns",
        "p99.99 ns",
        "max ns",
        "mean ns",
        "sleeps",
        "preempt",
        "M ev/s",
        "p99.9/rf",
        "delivery"
    );
    println!(
        "|{:-<38}|{:->3}|{:->8}|{:->8}|{:->10}|{:->11}|{:->13}|{:->10}|{:->8}|{:->9}|{:->8}|{:->10}|{:-<10}|",
        "", "", "", "", "", "", "", "", "", "", "", "", ""
    );
    for r in rows {
        let base = rows
            .iter()
            .find(|b| b.label == CONTENDERS[0].0 && b.producers == r.producers)
            .map_or(0, |b| b.p999);
        let ratio = if base > 0 {
            format!("{:.1}", r.p999 as f64 / base as f64)
        } else {
            "-".to_owned()
        };
        let delivery = if r.lost.is_empty() { "all" } else { "LOST" };
        println!(
            "| {:<36} | {:>1} | {:>6} | {:>6} | {:>8} | {:>9} | {:>11} | {:>8.1} | {:>6} | {:>7} | {:>6.2} | {:>8} | {:<8} |",
            r.label,
            r.producers,
            r.p50,
            r.p99,
            r.p999,
            r.p9999,
            r.max,
            r.mean,
            r.switches.voluntary,
            r.switches.involuntary,
            r.meps,
            ratio,
            delivery
        );
    }
}

/// Busy work added per event in the second scenario: with it the consumer
/// is several times slower than a producer at every producer count.
const SLOW_EXTRA_NS: u64 = 250;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("consumer_work: measurement loops run under `cargo bench` only");
        return;
    }
    let total: u64 = if quick() { 100_000 } else { 1_000_000 };
    if quick() {
        println!("RINGFOLD_BENCH_QUICK: shortened run");
    }
    let dir = std::env::temp_dir().join(format!("ringfold-consumer-work-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let (floor50, floor999) = timer_floor();
    let rounds_per_ns = spin_rounds_per_ns();
    let filter = std::env::var("RINGFOLD_BENCH_FILTER").ok();
    println!(
        "\n# Publish latency while the consumer does real work per batch\n\n\
         {total} events per row split over P producers, 64 prefixes (`data:t<i>:created`, u64), \
         groups of 100 events or 50 ms; every publish timed \
         (timer floor: p50 {floor50} ns, p99.9 {floor999} ns); cores: {}; load average at start: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let scenarios = [
        ("JSON + file", 0),
        ("JSON + file + 250 ns busy work per event", SLOW_EXTRA_NS),
    ];
    let mut tables = Vec::new();
    for (title, extra_ns) in scenarios {
        let extra = (extra_ns as f64 * rounds_per_ns).round() as u64;
        let alone = work_alone(
            &Work {
                path: dir.join("alone.jsonl"),
                extra,
            },
            total,
        );
        let mut rows = Vec::new();
        for p in [1usize, 2, 4] {
            let per = total / p as u64;
            for (label, stem, run) in CONTENDERS {
                if !filter.as_deref().is_none_or(|f| label.contains(f)) {
                    continue;
                }
                let work = Work {
                    path: dir.join(format!("{stem}-p{p}.jsonl")),
                    extra,
                };
                let out = run(p, per, &work);
                rows.push(check(title, label, p, per, out));
            }
        }
        tables.push((title, alone, rows));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut failed = Vec::new();
    for (title, alone, rows) in &tables {
        println!("\n## Consumer work: {title} (the work alone: {alone:.0} ns/event)\n");
        print_table(rows);
        for r in rows.iter().filter(|r| !r.lost.is_empty()) {
            failed.push(format!(
                "  {title}: {}, {} producer(s): {}",
                r.label, r.producers, r.lost
            ));
        }
    }
    if !failed.is_empty() {
        println!("\nNOT everything was delivered:");
        for f in &failed {
            println!("{f}");
        }
        std::process::exit(1);
    }
    println!("\nEverything published was delivered, in every row.");
}
