//! The tracing layer and the JSON-lines file sink against a real `tracing`
//! stack (`Registry` + `RingfoldLayer`, with `fmt` beside it) and real files
//! in a temporary directory.
#![cfg(feature = "tracing")]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringfold::sink::{FsyncPolicy, JsonLinesFile, SinkError};
use ringfold::tracing::{LogRecord, RingfoldLayer};
use ringfold::{Budget, Engine, FullPolicy, LagPolicy, Policy, SubscribeOptions};
use serde_json::Value as Json;
use tracing::Dispatch;
use tracing_subscriber::layer::SubscriberExt;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "ringfold-tracing-{}-{name}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Counts the lines the `fmt` layer beside ours writes.
#[derive(Clone)]
struct CountLines(Arc<AtomicU64>);

impl Write for CountLines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.iter().filter(|&&b| b == b'\n').count() as u64;
        self.0.fetch_add(n, Ordering::Relaxed);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Registry + our layer + `fmt` (counting its lines) as one dispatch.
fn dispatch(engine: &Engine<LogRecord>, fmt_lines: &Arc<AtomicU64>) -> Dispatch {
    let layer = RingfoldLayer::new(engine);
    let counter = CountLines(fmt_lines.clone());
    let subscriber = tracing_subscriber::registry().with(layer).with(
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || counter.clone()),
    );
    Dispatch::new(subscriber)
}

fn read_lines(path: &Path) -> Vec<Json> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "a file ends with a whole line"
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

fn is_loss(j: &Json) -> bool {
    j.get("ringfold_loss").is_some()
}

fn loss_count(j: &Json, key: &str) -> u64 {
    j["ringfold_loss"]
        .get(key)
        .and_then(Json::as_u64)
        .unwrap_or(0)
}

#[test]
fn eight_threads_land_in_the_file_per_target_in_publish_order_with_fields() {
    let dir = TempDir::new("eight");
    let path = dir.path("app.jsonl");
    let engine = Engine::<LogRecord>::builder()
        .policy("log:*", Policy::batch(Duration::from_millis(20), 500))
        .on_full(FullPolicy::Block(Duration::from_secs(30)))
        .build()
        .unwrap();
    let sink = JsonLinesFile::builder(&path)
        .fsync(FsyncPolicy::Never)
        .build::<LogRecord>()
        .unwrap();
    let sink_counters = sink.counters();
    let _sub = engine
        .subscribe_with("log:*", SubscribeOptions::new("file"), sink)
        .unwrap();
    let fmt_lines = Arc::new(AtomicU64::new(0));
    let dispatch = dispatch(&engine, &fmt_lines);

    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 2_000;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let dispatch = dispatch.clone();
            s.spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || {
                    let span = tracing::info_span!("worker");
                    let _g = span.enter();
                    for seq in 0..PER_THREAD {
                        if seq % 2 == 0 {
                            tracing::info!(target: "app::db", thread = t, seq, table = "users", "row inserted");
                        } else {
                            tracing::debug!(target: "app::index", thread = t, seq, ratio = 0.5, ok = true, "file indexed");
                        }
                    }
                });
            });
        }
    });
    let stats = engine.shutdown().unwrap();
    let total = THREADS * PER_THREAD;
    assert_eq!(stats.published, total);
    assert_eq!(stats.dropped.full, 0);
    assert_eq!(
        fmt_lines.load(Ordering::Relaxed),
        total,
        "fmt beside the layer saw every line"
    );

    let lines = read_lines(&path);
    assert!(lines.iter().all(|j| !is_loss(j)), "nothing was lost");
    assert_eq!(lines.len() as u64, total);
    assert_eq!(sink_counters.snapshot().lines, total);
    // Per (target, thread): every seq, in publish order.
    let mut next: HashMap<(String, u64), u64> = HashMap::new();
    for j in &lines {
        let target = j["target"].as_str().unwrap().to_owned();
        let fields = &j["fields"];
        let thread = fields["thread"].as_u64().unwrap();
        let seq = fields["seq"].as_u64().unwrap();
        assert_eq!(j["span"], "worker");
        match target.as_str() {
            "app::db" => {
                assert_eq!(j["level"], "INFO");
                assert_eq!(j["message"], "row inserted");
                assert_eq!(fields["table"], "users");
            }
            "app::index" => {
                assert_eq!(j["level"], "DEBUG");
                assert_eq!(fields["ratio"], 0.5);
                assert_eq!(fields["ok"], true);
            }
            other => panic!("unexpected target {other}"),
        }
        let expected = next
            .entry((target.clone(), thread))
            .or_insert(if target == "app::db" { 0 } else { 1 });
        assert_eq!(
            seq, *expected,
            "{target} thread {thread}: out of order or missing"
        );
        *expected += 2;
    }
    assert_eq!(next.len() as u64, 2 * THREADS);
}

/// Logs `n` numbered lines of one target from this thread.
fn log_numbered(dispatch: &Dispatch, n: u64) {
    tracing::dispatcher::with_default(dispatch, || {
        for seq in 0..n {
            tracing::info!(target: "app::rot", seq, pad = "0123456789abcdef", "line");
        }
    });
}

fn seqs(lines: &[Json]) -> Vec<u64> {
    lines
        .iter()
        .map(|j| j["fields"]["seq"].as_u64().expect("an event line"))
        .collect()
}

#[test]
fn rotation_keeps_n_files_and_loses_no_line_at_the_boundary() {
    const MAX: u64 = 8 << 10;
    const N: u64 = 3_000;
    for keep in [100usize, 3, 1] {
        let dir = TempDir::new("rotation");
        let path = dir.path("rot.jsonl");
        let engine = Engine::<LogRecord>::builder()
            .policy("log:*", Policy::batch(Duration::from_millis(5), 97))
            .on_full(FullPolicy::Block(Duration::from_secs(30)))
            .build()
            .unwrap();
        let sink = JsonLinesFile::builder(&path)
            .max_file_bytes(MAX)
            .keep_files(keep)
            .fsync(FsyncPolicy::EveryBatch)
            .build::<LogRecord>()
            .unwrap();
        let counters = sink.counters();
        let _sub = engine
            .subscribe_with("log:*", SubscribeOptions::new("file"), sink)
            .unwrap();
        let dispatch = dispatch(&engine, &Arc::new(AtomicU64::new(0)));
        log_numbered(&dispatch, N);
        engine.shutdown().unwrap();

        let stats = counters.snapshot();
        assert!(stats.rotations >= 10, "{stats:?}");
        let mut files = Vec::new();
        for i in (1..keep).rev() {
            let p = PathBuf::from(format!("{}.{i}", path.display()));
            if p.exists() {
                files.push(p);
            }
        }
        files.push(path.clone());
        assert!(
            !Path::new(&format!("{}.{keep}", path.display())).exists(),
            "never more than {keep} files"
        );
        let mut all = Vec::new();
        for f in &files {
            let size = fs::metadata(f).unwrap().len();
            assert!(size <= MAX, "{} is {size} bytes", f.display());
            all.extend(read_lines(f));
        }
        let got = seqs(&all);
        if keep == 100 {
            assert_eq!(
                got,
                (0..N).collect::<Vec<_>>(),
                "every line, in order, across files"
            );
            assert_eq!(files.len() as u64, stats.rotations + 1);
        } else {
            assert_eq!(files.len(), keep);
            // The newest lines, contiguous across the kept files' boundaries.
            let first = got[0];
            assert_eq!(got, (first..N).collect::<Vec<_>>());
        }
    }
}

#[test]
fn a_flood_on_a_slow_disk_loses_lines_only_as_counted_and_says_where() {
    let dir = TempDir::new("flood");
    let path = dir.path("flood.jsonl");
    let engine = Engine::<LogRecord>::builder()
        .policy("log:*", Policy::batch(Duration::from_millis(2), 64))
        .ring_capacity(64)
        .build()
        .unwrap();
    let writes = Arc::new(AtomicU64::new(0));
    let w = writes.clone();
    let sink = JsonLinesFile::builder(&path)
        .fsync(FsyncPolicy::Never)
        .write_with(move |file, bytes| {
            w.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(3)); // a slow disk
            file.write_all(bytes)
        })
        .build::<LogRecord>()
        .unwrap();
    let counters = sink.counters();
    // Back-pressure from the sink to the flusher, so the loss happens at
    // the rings (counted per prefix and reported in band in lines).
    let opts = SubscribeOptions::new("file")
        .lag(LagPolicy::Block {
            timeout: Duration::MAX,
        })
        .budget(Budget::new(1, u64::MAX))
        .coalesce_after(usize::MAX);
    let _sub = engine.subscribe_with("log:*", opts, sink).unwrap();
    let dispatch = dispatch(&engine, &Arc::new(AtomicU64::new(0)));
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 5_000;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let dispatch = dispatch.clone();
            s.spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || {
                    for seq in 0..PER_THREAD {
                        tracing::info!(target: "flood", thread = t, seq, "flood line");
                    }
                });
            });
        }
    });
    // Drops after the last batch are reported by the prefix's next batch:
    // one closing line after everything was delivered.
    engine.flush().unwrap();
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::info!(target: "flood", thread = 99u64, seq = 0u64, "end");
    });
    let stats = engine.shutdown().unwrap();
    let total = THREADS * PER_THREAD + 1;
    let dropped = stats.dropped.full;
    assert!(dropped > 0, "the flood must overflow the rings: {stats:?}");
    assert_eq!(
        stats.published + dropped,
        total,
        "every line published or counted"
    );

    let lines = read_lines(&path);
    let events: Vec<&Json> = lines.iter().filter(|j| !is_loss(j)).collect();
    let reported: u64 = lines.iter().map(|j| loss_count(j, "dropped")).sum();
    assert_eq!(
        events.len() as u64,
        stats.published,
        "every accepted line is in the file"
    );
    assert_eq!(reported, dropped, "the file says how many were lost");
    assert_eq!(counters.snapshot().reported_dropped, dropped);
    assert_eq!(events.last().unwrap()["message"], "end");

    // At the right place: walking the file, the lines missing so far (gaps
    // in each thread's sequence) never exceed the loss reported so far, and
    // at the end they are equal.
    let mut next: BTreeMap<u64, u64> = BTreeMap::new();
    let (mut missing, mut reported_so_far) = (0u64, 0u64);
    for j in &lines {
        if is_loss(j) {
            assert_eq!(j["ringfold_loss"]["prefix"], "log:flood");
            reported_so_far += loss_count(j, "dropped");
            continue;
        }
        let thread = j["fields"]["thread"].as_u64().unwrap();
        let seq = j["fields"]["seq"].as_u64().unwrap();
        let expected = next.entry(thread).or_insert(0);
        assert!(seq >= *expected, "thread {thread} out of order");
        missing += seq - *expected;
        *expected = seq + 1;
        assert!(
            missing <= reported_so_far,
            "{missing} lines missing before the file reported {reported_so_far}"
        );
    }
    for t in 0..THREADS {
        missing += PER_THREAD - next.get(&t).copied().unwrap_or(0);
    }
    assert_eq!(missing, reported_so_far);
    assert!(writes.load(Ordering::Relaxed) > 0);
}

#[test]
fn shutdown_writes_everything_accepted() {
    let dir = TempDir::new("shutdown");
    let path = dir.path("s.jsonl");
    // Windows that never close on time: only shutdown delivers them.
    let engine = Engine::<LogRecord>::builder()
        .policy("log:*", Policy::batch(Duration::from_secs(3600), 1_000_000))
        .on_full(FullPolicy::Block(Duration::from_secs(30)))
        .build()
        .unwrap();
    let sink = JsonLinesFile::builder(&path).build::<LogRecord>().unwrap();
    let _sub = engine
        .subscribe_with("log:*", SubscribeOptions::new("file"), sink)
        .unwrap();
    let dispatch = dispatch(&engine, &Arc::new(AtomicU64::new(0)));
    log_numbered(&dispatch, 10_000);
    assert_eq!(
        read_lines(&path).len(),
        0,
        "nothing delivered before shutdown"
    );
    let stats = engine.shutdown().unwrap();
    assert_eq!(stats.published, 10_000);
    assert_eq!(seqs(&read_lines(&path)), (0..10_000).collect::<Vec<_>>());
}

#[test]
fn policies_apply_by_pattern_noisy_debug_counted_errors_urgent() {
    let dir = TempDir::new("policies");
    let path = dir.path("p.jsonl");
    let engine = Engine::<LogRecord>::builder()
        .policy("log:*", Policy::batch(Duration::from_secs(3600), 1_000_000))
        .policy(
            "log:app.noisy:debug",
            Policy::aggregate(Duration::from_secs(3600), 1_000_000),
        )
        .urgent("log:*:error")
        .sampled()
        .build()
        .unwrap();
    let sink = JsonLinesFile::builder(&path).build::<LogRecord>().unwrap();
    let _sub = engine
        .subscribe_with("log:*", SubscribeOptions::new("file"), sink)
        .unwrap();
    let dispatch = dispatch(&engine, &Arc::new(AtomicU64::new(0)));
    tracing::dispatcher::with_default(&dispatch, || {
        for i in 0..1000u64 {
            tracing::debug!(target: "app::noisy", i, "tick");
        }
        for i in 0..3u64 {
            tracing::warn!(target: "app::db", i, "slow query");
        }
        tracing::error!(target: "app::db", "connection lost");
    });
    // The error is urgent: delivered at once, after its target's earlier
    // lines, while the hour-long windows stay open.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines = read_lines(&path);
        if lines.iter().any(|j| j["level"] == "ERROR") || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let messages: Vec<&str> = lines.iter().filter_map(|j| j["message"].as_str()).collect();
    assert_eq!(
        messages,
        ["slow query", "slow query", "slow query", "connection lost"]
    );
    engine.shutdown().unwrap();
    let lines = read_lines(&path);
    let agg: Vec<&Json> = lines
        .iter()
        .filter(|j| j.get("aggregate").is_some())
        .collect();
    assert_eq!(agg.len(), 1, "{lines:?}");
    assert_eq!(agg[0]["name"], "log:app.noisy:debug");
    assert_eq!(agg[0]["aggregate"]["count"], 1000);
    assert!(lines.iter().all(|j| j["message"] != "tick"));
}

struct Weird;
impl std::fmt::Debug for Weird {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("quote\" backslash\\ nul\0 bell\u{7} newline\n é 𝄞 \u{2028}")
    }
}

struct Failing;
impl std::fmt::Debug for Failing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("partial")?;
        Err(std::fmt::Error)
    }
}

#[test]
fn bad_input_is_handled_never_a_panic() {
    let dir = TempDir::new("bad");
    let path = dir.path("bad.jsonl");
    let engine = Engine::<LogRecord>::builder()
        .policy("log:*", Policy::batch(Duration::from_millis(5), 100))
        .max_name_len(64)
        .build()
        .unwrap();
    let sink = JsonLinesFile::builder(&path).build::<LogRecord>().unwrap();
    let _sub = engine
        .subscribe_with("log:*", SubscribeOptions::new("file"), sink)
        .unwrap();
    let layer = RingfoldLayer::new(&engine).max_field_bytes(1024);
    let counters = layer.counters();
    let subscriber = tracing_subscriber::registry()
        .with(layer)
        .with(tracing_subscriber::fmt::layer().with_writer(io::sink));
    let huge = "x".repeat(1 << 20);
    tracing::subscriber::with_default(subscriber, || {
        // Not UTF-8, as bytes and through Debug.
        tracing::info!(target: "bad", raw = &b"ok\xff\xfeend"[..], "bytes");
        let os = std::ffi::OsStr::new("plain");
        tracing::info!(target: "bad", os = ?os, weird = ?Weird, "debug");
        tracing::info!(target: "bad", failing = ?Failing, "failing debug");
        tracing::info!(target: "bad", huge = huge.as_str(), "huge field");
        tracing::info!(target: "bad", "{}", huge);
        tracing::info!(target: "bad", big = u128::MAX, neg = i128::MIN, nan = f64::NAN, "numbers");
        // A target too long for the engine's names: published as log:%FF:info.
        tracing::info!(
            target: "a::very::long::target::that::does::not::fit::into::sixty::four::bytes",
            "long target"
        );
    });
    engine.shutdown().unwrap();
    let lines = read_lines(&path);
    assert_eq!(lines.len(), 7, "{lines:?}");
    assert_eq!(lines[0]["fields"]["raw"], "ok\u{fffd}\u{fffd}end");
    assert_eq!(lines[1]["fields"]["os"], "\"plain\"");
    assert_eq!(
        lines[1]["fields"]["weird"],
        "quote\" backslash\\ nul\0 bell\u{7} newline\n é 𝄞 \u{2028}"
    );
    assert_eq!(lines[2]["fields"]["failing"], "partial");
    let cut = lines[3]["fields"]["huge"].as_str().unwrap();
    assert!(cut.starts_with("xxx") && cut.ends_with("…[truncated]") && cut.len() < 1100);
    assert!(lines[4]["message"]
        .as_str()
        .unwrap()
        .ends_with("…[truncated]"));
    assert_eq!(lines[5]["fields"]["big"], u128::MAX.to_string());
    assert_eq!(lines[5]["fields"]["neg"], i128::MIN.to_string());
    assert_eq!(lines[5]["fields"]["nan"], "NaN");
    assert_eq!(lines[6]["message"], "long target");
    let c = counters.snapshot();
    assert_eq!(c.truncated, 2);
    assert_eq!(c.unnamed_callsites, 1);
    assert_eq!(c.unnamed_lost, 0);
}

#[test]
fn an_unwritable_directory_is_a_typed_error() {
    let dir = TempDir::new("unwritable");
    let file = dir.path("not-a-dir");
    fs::write(&file, b"").unwrap();
    match JsonLinesFile::builder(file.join("x.jsonl")).build::<LogRecord>() {
        Err(SinkError::DirectoryNotWritable { dir, .. }) => assert_eq!(dir, file),
        other => panic!("expected DirectoryNotWritable, got {other:?}"),
    }
    match JsonLinesFile::builder(dir.path("missing/x.jsonl")).build::<LogRecord>() {
        Err(SinkError::MissingDirectory { .. }) => {}
        other => panic!("expected MissingDirectory, got {other:?}"),
    }
    assert!(matches!(
        JsonLinesFile::builder(dir.path("x.jsonl"))
            .keep_files(0)
            .build::<LogRecord>(),
        Err(SinkError::InvalidConfig(_))
    ));
    // A directory where the file should be.
    fs::create_dir(dir.path("is-a-dir")).unwrap();
    let err = JsonLinesFile::builder(dir.path("is-a-dir"))
        .build::<LogRecord>()
        .unwrap_err();
    assert!(matches!(err, SinkError::Open { .. }), "{err:?}");
    assert!(!err.to_string().is_empty());
}

#[test]
fn failed_writes_are_counted_and_reported_in_band() {
    let dir = TempDir::new("failing");
    let path = dir.path("f.jsonl");
    let engine = Engine::<LogRecord>::builder()
        .policy("log:*", Policy::batch(Duration::from_secs(3600), 10))
        .on_full(FullPolicy::Block(Duration::from_secs(30)))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let sink = JsonLinesFile::builder(&path)
        .write_with(move |file, bytes| {
            // The second write fails (a full disk, say).
            if c.fetch_add(1, Ordering::Relaxed) == 1 {
                return Err(io::Error::other("disk full"));
            }
            file.write_all(bytes)
        })
        .build::<LogRecord>()
        .unwrap();
    let counters = sink.counters();
    let _sub = engine
        .subscribe_with("log:*", SubscribeOptions::new("file"), sink)
        .unwrap();
    let dispatch = dispatch(&engine, &Arc::new(AtomicU64::new(0)));
    log_numbered(&dispatch, 30); // three batches of 10
    engine.shutdown().unwrap();
    let stats = counters.snapshot();
    assert_eq!(stats.write_errors, 1);
    assert_eq!(stats.lines_lost_to_errors, 10);
    assert!(matches!(
        counters.take_last_error(),
        Some(SinkError::Write { .. })
    ));
    let lines = read_lines(&path);
    assert_eq!(seqs(&lines[..10]), (0..10).collect::<Vec<_>>());
    assert_eq!(loss_count(&lines[10], "write_failed_lines"), 10);
    assert_eq!(seqs(&lines[11..]), (20..30).collect::<Vec<_>>());
}

#[test]
fn a_lagging_sink_loses_only_counted_batches_and_says_so_in_the_file() {
    let dir = TempDir::new("lag");
    let path = dir.path("lag.jsonl");
    let engine = Engine::<LogRecord>::builder()
        .policy("log:*", Policy::batch(Duration::from_millis(1), 16))
        .on_full(FullPolicy::Block(Duration::from_secs(30)))
        .build()
        .unwrap();
    let sink = JsonLinesFile::builder(&path)
        .fsync(FsyncPolicy::Never)
        .write_with(|file, bytes| {
            std::thread::sleep(Duration::from_millis(2)); // a slow disk
            file.write_all(bytes)
        })
        .build::<LogRecord>()
        .unwrap();
    let counters = sink.counters();
    // A one-batch queue (a budget of one event, never merging) that waits
    // 1 ms for room, then drops the oldest batch (counted, and reported in
    // band as `Batch::lagged`).
    let opts = SubscribeOptions::new("file")
        .lag(LagPolicy::Block {
            timeout: Duration::from_millis(1),
        })
        .budget(Budget::new(1, u64::MAX))
        .coalesce_after(usize::MAX);
    let sub = engine.subscribe_with("log:*", opts, sink).unwrap();
    let dispatch = dispatch(&engine, &Arc::new(AtomicU64::new(0)));
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let dispatch = dispatch.clone();
            s.spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || {
                    for seq in 0..2_000u64 {
                        tracing::info!(target: "lag", thread = t, seq, "line");
                    }
                });
            });
        }
    });
    engine.flush().unwrap();
    // Lag after the last batch is reported by the next one.
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::info!(target: "lag", thread = 99u64, seq = 0u64, "end");
    });
    let stats = engine.shutdown().unwrap();
    let sub_stats = sub.unsubscribe();
    assert_eq!(stats.published, 8_001, "Block rings refuse nothing");
    let lines = read_lines(&path);
    let events = lines.iter().filter(|j| !is_loss(j)).count() as u64;
    let lagged_in_file: u64 = lines.iter().map(|j| loss_count(j, "lagged_batches")).sum();
    // Conservation: every accepted line is in the file or in a batch the
    // subscriber's stats count as lost to lag.
    assert_eq!(
        events + sub_stats.lag_dropped_events,
        8_001,
        "{sub_stats:?}"
    );
    assert_eq!(
        lagged_in_file, sub_stats.lag_dropped_batches,
        "{sub_stats:?}"
    );
    assert_eq!(counters.snapshot().reported_lagged_batches, lagged_in_file);
    assert_eq!(lines.last().unwrap()["message"], "end");
    // Today the one-batch queue loses ~250 batches (~4000 lines) here; once
    // lagging queues merge batches instead (issue 19) it may lose none, and
    // the accounting above holds either way.
}

#[test]
fn a_rotation_that_cannot_rename_keeps_writing_to_the_current_file() {
    let dir = TempDir::new("norotate");
    let path = dir.path("r.jsonl");
    // `r.jsonl.1` is a non-empty directory: neither removed nor replaced.
    fs::create_dir(dir.path("r.jsonl.1")).unwrap();
    fs::write(dir.path("r.jsonl.1/keep"), b"x").unwrap();
    let engine = Engine::<LogRecord>::builder()
        .policy("log:*", Policy::batch(Duration::from_millis(2), 50))
        .on_full(FullPolicy::Block(Duration::from_secs(30)))
        .build()
        .unwrap();
    let sink = JsonLinesFile::builder(&path)
        .max_file_bytes(2048)
        .keep_files(2)
        .build::<LogRecord>()
        .unwrap();
    let counters = sink.counters();
    let _sub = engine
        .subscribe_with("log:*", SubscribeOptions::new("file"), sink)
        .unwrap();
    let dispatch = dispatch(&engine, &Arc::new(AtomicU64::new(0)));
    log_numbered(&dispatch, 500);
    engine.shutdown().unwrap();
    let stats = counters.snapshot();
    assert!(stats.rotate_errors > 0, "{stats:?}");
    assert_eq!(stats.lines_lost_to_errors, 0);
    assert!(matches!(
        counters.take_last_error(),
        Some(SinkError::Rotate { .. })
    ));
    // Nothing lost: every line is in the current file, in order.
    assert_eq!(seqs(&read_lines(&path)), (0..500).collect::<Vec<_>>());
}
