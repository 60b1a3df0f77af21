//! 8 threads flood `tracing` into a file: ringfold's layer + JSON-lines
//! sink against tracing-appender's non-blocking writer (lossy, its default,
//! and not lossy) and a plain `fmt` writer.
//!
//! ```text
//! cargo bench --features tracing --bench tracing_flood
//! RINGFOLD_BENCH_QUICK=1 cargo bench --features tracing --bench tracing_flood   # 100 k lines
//! RINGFOLD_FLOOD_ONLY=ringfold,appender-lossy cargo bench --features tracing --bench tracing_flood
//! ```
//!
//! Runs only under `cargo bench` (the `--bench` flag); `cargo test
//! --benches` just checks that it builds. The workload: 8 threads log 1 M
//! lines in all, `info!` of one noisy module with three fields, and every
//! 1000th line one of four distinct warnings. Per contender: accepted lines
//! per second while the threads log (first thread start to last thread
//! end), end to end (until the file holds everything: shutdown or the
//! guard's drop), bytes and `write` calls reaching the file (counted by a
//! wrapping writer), lines lost (counted by an API, written in the file,
//! and silent: neither), and the p50/p99/max of one `info!` call.
//!
//! Contenders:
//! * `ringfold`: `RingfoldLayer` + `JsonLinesFile` (batch 50 ms / 2048,
//!   4096-slot rings dropping the newest when full, default subscriber
//!   queue): lossy, every loss counted and in the file.
//! * `ringfold-block`: the same with `FullPolicy::Block` and a blocking
//!   subscriber queue: lossless, producers wait.
//! * `ringfold-agg`: as `ringfold`, with the noisy module's info lines
//!   aggregated into one count per 50 ms window (`Policy::aggregate`): what
//!   folding instead of flooding buys. Its "lines in file" counts each
//!   aggregated line (the aggregates' counts), not the lines written.
//! * `appender-lossy`: `fmt().json()` over `tracing_appender::non_blocking`
//!   (its default: lossy, 128 000 buffered lines).
//! * `appender-block`: the same with `NonBlockingBuilder::lossy(false)`.
//! * `fmt-file`: `fmt().json()` writing to the file directly from each thread.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use ringfold::sink::{FsyncPolicy, JsonLinesFile};
use ringfold::tracing::{LogRecord, RingfoldLayer};
use ringfold::{Engine, FullPolicy, LagPolicy, Policy, SubscribeOptions};
use tracing::Dispatch;
use tracing_subscriber::layer::SubscriberExt;

const THREADS: usize = 8;

fn quick() -> bool {
    std::env::var("RINGFOLD_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A file that counts the `write` calls and bytes reaching it.
struct Counted {
    file: File,
    writes: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Write for &Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writes.fetch_add(1, Relaxed);
        let n = (&self.file).write(buf)?;
        self.bytes.fetch_add(n as u64, Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Counters {
    writes: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

fn counted(path: &Path) -> (Counted, Counters) {
    let file = File::create(path).expect("create bench file");
    let writes = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    (
        Counted {
            file,
            writes: writes.clone(),
            bytes: bytes.clone(),
        },
        Counters { writes, bytes },
    )
}

/// What one thread measured.
struct ThreadRun {
    start: Instant,
    end: Instant,
    info_ns: Vec<u32>,
}

/// The flood: `per_thread` lines from each of 8 threads under `dispatch`.
fn flood(dispatch: &Dispatch, per_thread: usize) -> (Duration, Vec<u32>, Instant) {
    let barrier = Barrier::new(THREADS);
    let runs: Vec<ThreadRun> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let dispatch = dispatch.clone();
                let barrier = &barrier;
                s.spawn(move || {
                    tracing::dispatcher::with_default(&dispatch, || {
                        let mut info_ns = Vec::with_capacity(per_thread);
                        barrier.wait();
                        let start = Instant::now();
                        for i in 0..per_thread {
                            if i % 1000 == 999 {
                                match (i / 1000) % 4 {
                                    0 => tracing::warn!(target: "app::db", thread = t, "slow query"),
                                    1 => tracing::warn!(target: "app::cache", "cache miss storm"),
                                    2 => tracing::warn!(target: "app::net", peer = "10.0.0.7", "connection reset"),
                                    _ => tracing::warn!(target: "app::disk", free_mb = 512u64, "disk almost full"),
                                }
                            } else {
                                let t0 = Instant::now();
                                tracing::info!(target: "app::noisy", thread = t, i, table = "users", "row inserted");
                                info_ns.push(t0.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
                            }
                        }
                        ThreadRun {
                            start,
                            end: Instant::now(),
                            info_ns,
                        }
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("flood thread"))
            .collect()
    });
    let start = runs.iter().map(|r| r.start).min().expect("threads");
    let end = runs.iter().map(|r| r.end).max().expect("threads");
    let mut ns: Vec<u32> = runs.into_iter().flat_map(|r| r.info_ns).collect();
    ns.sort_unstable();
    (end - start, ns, start)
}

struct Row {
    name: &'static str,
    total: u64,
    log_time: Duration,
    e2e_time: Duration,
    lines: u64,
    bytes: u64,
    writes: u64,
    /// Lines refused at the call (never accepted).
    rejected: u64,
    lost_counted: u64,
    lost_in_file: u64,
    info_ns: Vec<u32>,
}

impl Row {
    fn print(&self) {
        let lost = self.total - self.lines;
        let silent = lost.saturating_sub(self.lost_counted.max(self.lost_in_file));
        let accepted = self.total - self.rejected;
        let pct = |p: f64| {
            let i = ((self.info_ns.len() as f64 * p) as usize).min(self.info_ns.len() - 1);
            self.info_ns[i]
        };
        println!(
            "| {} | {:.2} | {:.2} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
            self.name,
            accepted as f64 / self.log_time.as_secs_f64() / 1e6,
            self.lines as f64 / self.e2e_time.as_secs_f64() / 1e6,
            self.lines,
            self.bytes as f64 / (1 << 20) as f64,
            self.writes,
            lost,
            self.lost_counted,
            self.lost_in_file,
            silent,
            pct(0.99),
            pct(0.5),
        );
    }
}

/// (event lines plus lines counted in aggregate lines, lines the file
/// says were lost).
fn count_lines(path: &Path) -> (u64, u64) {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut lines = 0;
    let mut lost = 0;
    for l in text.lines() {
        if let Some(rest) = l.split("\"ringfold_loss\":").nth(1) {
            for key in ["\"dropped\":", "\"write_failed_lines\":"] {
                if let Some(v) = rest.split(key).nth(1) {
                    lost += v
                        .split(|c: char| !c.is_ascii_digit())
                        .next()
                        .and_then(|d| d.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        } else if let Some(rest) = l.split("\"aggregate\":{\"count\":").nth(1) {
            lines += rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|d| d.parse::<u64>().ok())
                .unwrap_or(0);
        } else if !l.is_empty() {
            lines += 1;
        }
    }
    (lines, lost)
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Lossy,
    Block,
    Aggregate,
}

fn ringfold(dir: &Path, per_thread: usize, mode: Mode) -> Row {
    let name = match mode {
        Mode::Lossy => "ringfold",
        Mode::Block => "ringfold-block",
        Mode::Aggregate => "ringfold-agg",
    };
    let block = mode == Mode::Block;
    let path = dir.join(format!("{name}.jsonl"));
    let _ = fs::remove_file(&path);
    let mut builder = Engine::<LogRecord>::builder()
        .policy("log:*", Policy::batch(Duration::from_millis(50), 2048));
    if mode == Mode::Aggregate {
        builder = builder
            .policy(
                "log:app.noisy:info",
                Policy::aggregate(Duration::from_millis(50), 1_000_000),
            )
            .sampled();
    }
    if block {
        builder = builder.on_full(FullPolicy::Block(Duration::MAX));
    }
    let engine = builder.build().expect("engine");
    let sink = JsonLinesFile::builder(&path)
        .max_file_bytes(u64::MAX)
        .fsync(FsyncPolicy::Never)
        .build::<LogRecord>()
        .expect("sink");
    let counters = sink.counters();
    let mut opts = SubscribeOptions::new("file");
    if block {
        opts = opts.lag(LagPolicy::Block {
            timeout: Duration::MAX,
        });
    }
    let sub = engine
        .subscribe_with("log:*", opts, sink)
        .expect("subscribe");
    let layer = RingfoldLayer::new(&engine).span_names(false);
    let dispatch = Dispatch::new(tracing_subscriber::registry().with(layer));
    let (log_time, info_ns, start) = flood(&dispatch, per_thread);
    let stats = engine.shutdown().expect("shutdown");
    let e2e_time = start.elapsed();
    let sub_stats = sub.unsubscribe();
    let (lines, lost_in_file) = count_lines(&path);
    let s = counters.snapshot();
    let _ = fs::remove_file(&path);
    Row {
        name,
        total: (per_thread * THREADS) as u64,
        log_time,
        e2e_time,
        lines,
        bytes: s.bytes,
        writes: s.write_calls,
        rejected: stats.dropped.rejected(),
        lost_counted: stats.dropped.rejected() + sub_stats.lag_dropped_events,
        lost_in_file,
        info_ns,
    }
}

fn appender(dir: &Path, per_thread: usize, lossy: bool) -> Row {
    let path = dir.join(if lossy {
        "appender-lossy.json"
    } else {
        "appender-block.json"
    });
    let (file, c) = counted(&path);
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(lossy)
        .finish(file);
    let errors = writer.error_counter();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(writer)
        .finish();
    let dispatch = Dispatch::new(subscriber);
    let (log_time, info_ns, start) = flood(&dispatch, per_thread);
    drop(dispatch);
    drop(guard); // flushes what it accepted
    let e2e_time = start.elapsed();
    let (lines, _) = count_lines(&path);
    let _ = fs::remove_file(&path);
    Row {
        name: if lossy {
            "appender-lossy"
        } else {
            "appender-block"
        },
        total: (per_thread * THREADS) as u64,
        log_time,
        e2e_time,
        lines,
        bytes: c.bytes.load(Relaxed),
        writes: c.writes.load(Relaxed),
        rejected: errors.dropped_lines() as u64,
        lost_counted: errors.dropped_lines() as u64,
        lost_in_file: 0,
        info_ns,
    }
}

fn fmt_file(dir: &Path, per_thread: usize) -> Row {
    let path = dir.join("fmt-file.json");
    let (file, c) = counted(&path);
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(Arc::new(file))
        .finish();
    let dispatch = Dispatch::new(subscriber);
    let (log_time, info_ns, start) = flood(&dispatch, per_thread);
    drop(dispatch);
    let e2e_time = start.elapsed();
    let (lines, _) = count_lines(&path);
    let _ = fs::remove_file(&path);
    Row {
        name: "fmt-file",
        total: (per_thread * THREADS) as u64,
        log_time,
        e2e_time,
        lines,
        bytes: c.bytes.load(Relaxed),
        writes: c.writes.load(Relaxed),
        rejected: 0,
        lost_counted: 0,
        lost_in_file: 0,
        info_ns,
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let total = if quick() { 100_000 } else { 1_000_000 };
    let per_thread = total / THREADS;
    let dir: PathBuf =
        std::env::temp_dir().join(format!("ringfold-tracing-flood-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("bench dir");
    println!(
        "tracing_flood: {} threads, {} lines ({} per thread), {} cores",
        THREADS,
        per_thread * THREADS,
        per_thread,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| contender | accepted M lines/s (logging) | M lines/s end to end | lines in file | MiB written | write calls | lost | lost, counted by API | lost, said in file | lost silently | info! p99 ns | info! p50 ns |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    // RINGFOLD_FLOOD_ONLY=ringfold,appender-lossy runs only those.
    let only = std::env::var("RINGFOLD_FLOOD_ONLY").unwrap_or_default();
    let want = |name: &str| only.is_empty() || only.split(',').any(|o| o == name);
    if want("ringfold") {
        ringfold(&dir, per_thread, Mode::Lossy).print();
    }
    if want("ringfold-block") {
        ringfold(&dir, per_thread, Mode::Block).print();
    }
    if want("ringfold-agg") {
        ringfold(&dir, per_thread, Mode::Aggregate).print();
    }
    if want("appender-lossy") {
        appender(&dir, per_thread, true).print();
    }
    if want("appender-block") {
        appender(&dir, per_thread, false).print();
    }
    if want("fmt-file") {
        fmt_file(&dir, per_thread).print();
    }
    let _ = fs::remove_dir_all(&dir);
}
