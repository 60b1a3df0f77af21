//! A fleet roll-up over NATS JetStream: several producer processes, each an
//! engine with a `nats::Sink`, and one roll-up process reading the stream
//! with a `nats::Source` and printing a live table (origins x families).
//!
//! All in one go (starts its own `nats-server` on a free port, two
//! producers for 5 s, the roll-up in this process, then checks that every
//! event each producer's sink had acknowledged reached the roll-up):
//!
//! ```sh
//! cargo run --release --features nats --example fleet -- demo
//! ```
//!
//! Or by hand, against a server of your own
//! (`nats-server -js -a 127.0.0.1 -p 4222 -sd /tmp/nats-store`):
//!
//! ```sh
//! cargo run --release --features nats --example fleet -- rollup nats://127.0.0.1:4222 30 &
//! cargo run --release --features nats --example fleet -- producer nats://127.0.0.1:4222 20 &
//! cargo run --release --features nats --example fleet -- producer nats://127.0.0.1:4222 20
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringfold::nats::{BlockingSource, Sink, SinkConfig, SourceConfig};
use ringfold::{Engine, Policy, Value};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_owned());
    match args.first().map(String::as_str) {
        Some("producer") => producer(&arg(1, "nats://127.0.0.1:4222"), arg(2, "10").parse()?),
        Some("rollup") => {
            rollup(
                &arg(1, "nats://127.0.0.1:4222"),
                arg(2, "30").parse()?,
                None,
            )?;
            Ok(())
        }
        Some("demo") | None => demo(),
        Some(other) => Err(format!("unknown mode {other:?}: producer | rollup | demo").into()),
    }
}

/// One producer: an engine with a sink, publishing for `seconds`.
fn producer(url: &str, seconds: u64) -> Res<()> {
    let engine = Engine::<Value>::builder()
        .policy("data:*", Policy::batch(Duration::from_millis(50), 100))
        .policy("gpu:*", Policy::aggregate(Duration::from_millis(500), 1000))
        .policy("chat:*", Policy::Passthrough)
        .sampled()
        .build()?;
    let sink = Sink::spawn(
        &engine,
        "*",
        SinkConfig::new(url).root("fleet").stream("FLEET"),
    )?;
    let origin = sink.origin().clone();
    let keys = [
        engine.key("data:users:created")?,
        engine.key("data:orders:placed")?,
        engine.key("gpu:0:util")?,
        engine.key("chat:room1:msg")?,
    ];
    let mut producer = engine.producer()?;
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut i = 0u64;
    while Instant::now() < end {
        for (k, key) in keys.iter().enumerate() {
            // Fewer chat messages than data events.
            if k == 3 && i % 20 != 0 {
                continue;
            }
            producer.publish_key(*key, Value::U64(i % 100))?;
        }
        i += 1;
        // About 10k rounds/s at most: a load one sink keeps up with in a
        // debug build on a busy machine (a faster producer overflows the
        // sink's backlog, which is counted and seen as gaps downstream).
        if i % 16 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    drop(producer);
    engine.shutdown()?;
    let stats = sink.shutdown_timeout(Duration::from_secs(20))?;
    // One machine-readable line for the demo's check.
    println!(
        "FLEET-DONE origin={origin} landed_events={} batches={} landed={} failed={} backlog_dropped={} conserved={}",
        stats.events_landed,
        stats.batches,
        stats.landed(),
        stats.failed,
        stats.backlog_dropped,
        stats.is_conserved()
    );
    Ok(())
}

#[derive(Default)]
struct Cell {
    events: u64,
    batches: u64,
    duplicates: u64,
    last_ns: u64,
}

/// Reads the stream for `seconds` (or until `idle_after` passes with
/// nothing new), printing a table every second; returns events and gaps
/// (missing windows) per origin.
type PerOrigin = BTreeMap<String, u64>;
fn rollup(url: &str, seconds: u64, idle_after: Option<Duration>) -> Res<(PerOrigin, PerOrigin)> {
    // Wait for the stream (a producer creates it).
    let start = Instant::now();
    let mut source = loop {
        match BlockingSource::<Value>::connect(
            SourceConfig::new(url)
                .stream("FLEET")
                .durable("fleet-rollup"),
        ) {
            Ok(s) => break s,
            Err(e) if start.elapsed() < Duration::from_secs(10) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let end = start + Duration::from_secs(seconds);
    let mut table: BTreeMap<(String, String), Cell> = BTreeMap::new();
    let mut per_origin: BTreeMap<String, u64> = BTreeMap::new();
    let mut fleet_aggs: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    let mut last_print = Instant::now();
    let mut last_new = Instant::now();
    let mut window_events: BTreeMap<(String, String), u64> = BTreeMap::new();
    while Instant::now() < end {
        if let Some(d) = source.next_timeout(Duration::from_millis(200)) {
            let d = d?;
            let b = &d.batch;
            let origin = b.origin.to_string();
            let family = b.prefix.split(':').next().unwrap_or("").to_owned();
            let cell = table.entry((origin.clone(), family.clone())).or_default();
            let events = b.events.len() as u64 + b.aggregates.iter().map(|a| a.count).sum::<u64>();
            cell.batches += 1;
            cell.events += events;
            cell.last_ns = b.closed_ns;
            for a in &b.aggregates {
                let f = fleet_aggs.entry(a.name.clone()).or_default();
                f.0 += a.count;
                f.1 += a.sum;
            }
            *window_events.entry((origin.clone(), family)).or_default() += events;
            if d.duplicate {
                cell.duplicates += 1;
            }
            // What the sink counts as landed: the events carried (an
            // aggregate's readings are summarised, not carried).
            *per_origin.entry(origin).or_default() += b.events.len() as u64;
            source.ack(d)?;
            last_new = Instant::now();
        } else if idle_after.is_some_and(|idle| last_new.elapsed() > idle) {
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            let secs = last_print.elapsed().as_secs_f64();
            print_table(&table, &window_events, secs, &source, &fleet_aggs);
            window_events.clear();
            last_print = Instant::now();
        }
    }
    print_table(&table, &window_events, 1.0, &source, &fleet_aggs);
    let mut gaps = PerOrigin::new();
    for s in source.seen() {
        *gaps.entry(s.origin.to_string()).or_default() += s.missing();
    }
    Ok((per_origin, gaps))
}

fn print_table(
    table: &BTreeMap<(String, String), Cell>,
    window: &BTreeMap<(String, String), u64>,
    secs: f64,
    source: &BlockingSource<Value>,
    fleet_aggs: &BTreeMap<String, (u64, f64)>,
) {
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let seen = source.seen();
    println!(
        "\n{:<34} {:<6} {:>10} {:>9} {:>8} {:>5} {:>5} {:>8}",
        "origin", "family", "events/s", "events*", "batches", "gaps", "dups", "lag ms"
    );
    for ((origin, family), cell) in table {
        let gaps: u64 = seen
            .iter()
            .filter(|s| &s.origin.to_string() == origin && s.prefix.starts_with(family.as_str()))
            .map(|s| s.missing())
            .sum();
        let rate = window
            .get(&(origin.clone(), family.clone()))
            .copied()
            .unwrap_or(0) as f64
            / secs;
        println!(
            "{:<34} {:<6} {:>10.0} {:>9} {:>8} {:>5} {:>5} {:>8.1}",
            origin,
            family,
            rate,
            cell.events,
            cell.batches,
            gaps,
            cell.duplicates,
            now_ns.saturating_sub(cell.last_ns) as f64 / 1e6
        );
    }
    let s = source.stats();
    println!("(* events carried plus aggregated readings)");
    println!(
        "source: {} batches, {} events, gaps {}, duplicates {}, redelivered {}",
        s.batches, s.events, s.gaps, s.duplicates, s.redelivered
    );
    for (name, (count, sum)) in fleet_aggs {
        println!(
            "fleet {name}: {count} readings, mean {:.2}",
            sum / *count as f64
        );
    }
}

/// Starts a server, two producer processes, and the roll-up; checks that
/// each origin's acknowledged events all reached the roll-up.
fn demo() -> Res<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = std::env::temp_dir().join(format!("ringfold-fleet-{}", std::process::id()));
    let mut server = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!("nats-server: {e} (install: apt-get update && apt-get install -y nats-server)")
        })?;
    let url = format!("nats://127.0.0.1:{port}");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            return Err("nats-server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let exe = std::env::current_exe()?;
    let producers: Vec<_> = (0..2)
        .map(|_| {
            Command::new(&exe)
                .args(["producer", &url, "5"])
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let (received, gaps) = rollup(&url, 60, Some(Duration::from_secs(3)))?;
    let mut ok = true;
    for p in producers {
        let out = p.wait_with_output()?;
        for line in BufReader::new(&out.stdout[..]).lines() {
            let line = line?;
            let Some(rest) = line.strip_prefix("FLEET-DONE ") else {
                continue;
            };
            println!("producer: {rest}");
            let field = |k: &str| {
                rest.split(' ')
                    .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                    .unwrap_or("")
                    .to_owned()
            };
            let origin = field("origin");
            let landed: u64 = field("landed_events").parse().unwrap_or(0);
            let got = received.get(&origin).copied().unwrap_or(0);
            let verdict = if got == landed { "ok" } else { "MISMATCH" };
            ok &= got == landed;
            println!(
                "{origin}: sink landed {landed} events, roll-up received {got}: {verdict}; \
                 windows missing downstream {}, dropped by the sink's backlog {}",
                gaps.get(&origin).copied().unwrap_or(0),
                field("backlog_dropped")
            );
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    if ok {
        println!("conserved: every acknowledged event reached the roll-up");
        Ok(())
    } else {
        Err("conservation check failed".into())
    }
}
