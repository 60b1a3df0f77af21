//! NATS sink throughput against a `nats-server` this bench starts itself
//! (127.0.0.1, free port, temporary store), in one run:
//!
//! - the sink with 100-event batches (`Policy::batch`, count 100),
//! - the sink with passthrough (one event per batch), with 64 publishes in
//!   flight and with 1 (no pipelining),
//! - a naive loop publishing each event to JetStream and awaiting its ack
//!   (what a user writes first),
//! - the producers' `publish_key` cost with the sink attached, beside none.
//!
//! `cargo bench --features nats --bench nats_sink` (needs `nats-server`:
//! `apt-get install -y nats-server`). `NATS_BENCH_SCALE=0.1` shortens it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringfold::nats::{Sink, SinkConfig};
use ringfold::{Engine, LagPolicy, Policy, SubscribeOptions, Value};

struct Server {
    child: Child,
    dir: std::path::PathBuf,
    url: String,
}

impl Server {
    fn start() -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let dir = std::env::temp_dir().join(format!("ringfold-nats-bench-{}", std::process::id()));
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("nats-server: {e}: install it with `apt-get update && apt-get install -y nats-server`")
            });
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            child,
            dir,
            url: format!("nats://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Publishes `events` events through an engine with the sink, and times
/// until the last batch is acknowledged.
fn sink_run(url: &str, tag: &str, policy: Policy, events: u64, in_flight: usize) {
    let engine = Engine::<Value>::builder()
        .policy("bench:*", policy)
        .ring_capacity(1 << 16)
        .build()
        .unwrap();
    let sink = Sink::spawn(
        &engine,
        "*",
        SinkConfig::new(url)
            .root(format!("b{tag}"))
            .stream(format!("B{tag}"))
            .max_in_flight(in_flight)
            .backlog(1 << 20)
            // Back-pressure instead of the default queue's drops: the
            // bench measures what the sink ships, all of it.
            .subscribe_options(SubscribeOptions::new("nats").lag(LagPolicy::Block {
                timeout: Duration::MAX,
            })),
    )
    .unwrap();
    let handle = sink.handle();
    let key = engine.key("bench:load:ev").unwrap();
    let mut producer = engine.producer().unwrap();
    let start = Instant::now();
    let mut dropped = 0u64;
    for i in 0..events {
        // A full ring is the producer's back-pressure here: retry.
        let mut v = Value::U64(i);
        loop {
            match producer.publish_key(key, v) {
                Ok(()) => break,
                Err(e) => {
                    v = e.into_inner();
                    dropped += 1;
                    std::thread::yield_now();
                }
            }
        }
    }
    drop(producer);
    engine.shutdown().unwrap();
    let stats = sink.shutdown_timeout(Duration::from_secs(300)).unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert!(stats.is_conserved(), "{stats:?}");
    assert_eq!(stats.landed(), stats.batches, "{stats:?}");
    let sub = handle.subscriber_stats().expect("subscriber stats");
    assert_eq!(sub.lag_dropped_batches, 0, "{sub:?}");
    assert_eq!(stats.events_landed, events, "every event shipped");
    println!(
        "{:<40} {:>8} batches {:>9} events {:>8.2} s {:>10.0} batches/s {:>10.0} events/s  (retries {}, full-ring retries {dropped})",
        format!("sink {tag} (in flight {in_flight})"),
        stats.landed(),
        stats.events_landed,
        secs,
        stats.landed() as f64 / secs,
        stats.events_landed as f64 / secs,
        stats.retries,
    );
}

/// One JetStream publish per event, each acknowledgement awaited.
fn naive_run(url: &str, events: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "NAIVE".into(),
            subjects: vec!["naive.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        let start = Instant::now();
        for i in 0..events {
            let body = format!(r#"{{"name":"bench:load:ev","payload":{{"u64":{i}}}}}"#);
            js.publish("naive.bench.load", body.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{:<40} {:>8} batches {:>9} events {:>8.2} s {:>10.0} batches/s {:>10.0} events/s",
            "naive per-event publish + ack",
            events,
            events,
            secs,
            events as f64 / secs,
            events as f64 / secs,
        );
    });
}

/// ns per `publish_key` on one producer, with and without a sink attached.
fn publish_cost(url: Option<&str>, events: u64) {
    let engine = Engine::<Value>::builder()
        .policy("bench:*", Policy::batch(Duration::from_millis(10), 100))
        .ring_capacity(1 << 16)
        .build()
        .unwrap();
    let sink = url.map(|url| {
        Sink::spawn(
            &engine,
            "*",
            SinkConfig::new(url).root("bcost").stream("BCOST"),
        )
        .unwrap()
    });
    let key = engine.key("bench:cost:ev").unwrap();
    let mut producer = engine.producer().unwrap();
    let mut rejected = 0u64;
    let mut timed = Duration::ZERO;
    // Timed in chunks of 8192 with an untimed pause between them, so the
    // flusher keeps the ring from filling (a rejected publish is cheaper
    // and would flatter whichever run rejects more).
    let chunk = 8192;
    let mut i = 0;
    while i < events {
        let start = Instant::now();
        for j in i..(i + chunk).min(events) {
            if producer.publish_key(key, Value::U64(j)).is_err() {
                rejected += 1;
            }
        }
        timed += start.elapsed();
        i += chunk;
        std::thread::sleep(Duration::from_millis(2));
    }
    let ns = timed.as_nanos() as f64 / events as f64;
    drop(producer);
    engine.shutdown().unwrap();
    if let Some(sink) = sink {
        sink.shutdown_timeout(Duration::from_secs(60)).unwrap();
    }
    println!(
        "{:<40} {ns:>8.1} ns/publish_key over {events} events ({rejected} rejected: ring full)",
        if url.is_some() {
            "publish_key, sink attached"
        } else {
            "publish_key, no subscriber"
        },
    );
}

fn main() {
    // `cargo test --all-targets` builds and runs benches: stay quick there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("nats_sink: run with `cargo bench --features nats --bench nats_sink`");
        return;
    }
    let scale: f64 = std::env::var("NATS_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let n = |base: u64| ((base as f64 * scale) as u64).max(100);
    let server = Server::start();
    sink_run(
        &server.url,
        "batch100",
        Policy::batch(Duration::from_secs(60), 100),
        n(1_000_000),
        64,
    );
    sink_run(
        &server.url,
        "passthrough",
        Policy::Passthrough,
        n(50_000),
        64,
    );
    sink_run(
        &server.url,
        "passthrough1",
        Policy::Passthrough,
        n(10_000),
        1,
    );
    naive_run(&server.url, n(10_000));
    for _ in 0..2 {
        publish_cost(None, n(2_000_000));
        publish_cost(Some(&server.url), n(2_000_000));
    }
}
