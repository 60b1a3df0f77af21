//! The NATS JetStream sink and source against a real `nats-server`
//! (Debian package `nats-server`; each test starts its own on a free
//! loopback port with a temporary store).
#![cfg(feature = "nats")]

mod common_nats;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common_nats::{create_stream, free_port, stream_messages, NatsServer};
use ringfold::nats::{self, BlockingSource, Error, Sink, SinkConfig, SinkStats, SourceConfig};
use ringfold::{Engine, Policy, SubscribeOptions, Value};

type Sealed = Arc<Mutex<BTreeMap<String, BTreeSet<(u64, u64)>>>>;

/// An engine that seals a batch per prefix every 10 ms (or 50 events).
fn engine() -> Engine<Value> {
    Engine::<Value>::builder()
        .policy("*", Policy::batch(Duration::from_millis(10), 50))
        .build()
        .unwrap()
}

/// Ships one event (`data:users:created`) through a sink into stream
/// `stream` (subjects `<root>.>`), shutting the engine and the sink down:
/// the sink's final figures.
fn ship_one(url: &str, root: &str, stream: &str) -> SinkStats {
    let engine = engine();
    let sink = Sink::spawn(
        &engine,
        "data:*",
        SinkConfig::new(url).root(root).stream(stream),
    )
    .unwrap();
    engine.publish("data:users:created", 1u64).unwrap();
    engine.shutdown().unwrap();
    sink.shutdown_timeout(Duration::from_secs(10)).unwrap()
}

/// Records every batch the engine seals for `pattern` (a second
/// subscriber beside the sink, drained by a thread of its own).
fn record(engine: &Engine<Value>, pattern: &str) -> (Sealed, thread::JoinHandle<u64>) {
    let rx = engine
        .receiver(
            pattern,
            SubscribeOptions::new("record").coalesce_after(usize::MAX),
        )
        .unwrap();
    let sealed: Sealed = Arc::default();
    let out = sealed.clone();
    let handle = thread::spawn(move || {
        let mut events = 0;
        while let Some(batch) = rx.recv() {
            events += batch.len() as u64;
            out.lock()
                .unwrap()
                .entry(batch.prefix().to_owned())
                .or_default()
                .insert((batch.seq(), batch.last_seq()));
        }
        events
    });
    (sealed, handle)
}

/// Reads `stream` until `want` batches arrived or `wait` passed, acking
/// each; returns the source.
fn read_all(url: &str, stream: &str, want: u64, wait: Duration) -> BlockingSource<Value> {
    let mut source =
        BlockingSource::<Value>::connect(SourceConfig::new(url).stream(stream).durable("check"))
            .unwrap();
    let deadline = Instant::now() + wait;
    while source.stats().batches < want && Instant::now() < deadline {
        if let Some(d) = source.next_timeout(Duration::from_millis(500)) {
            source.ack(d.unwrap()).unwrap();
        }
    }
    // Anything beyond `want` would be a duplicate: give it a moment.
    while let Some(d) = source.next_timeout(Duration::from_millis(300)) {
        source.ack(d.unwrap()).unwrap();
    }
    source
}

/// Per prefix, the windows the source saw for `origin`, as ranges.
fn seen_by_prefix(
    source: &BlockingSource<Value>,
    origin: &ringfold::wire::Origin,
) -> BTreeMap<String, Vec<(u64, u64)>> {
    source
        .seen()
        .into_iter()
        .filter(|s| &s.origin == origin)
        .map(|s| (s.prefix, s.ranges))
        .collect()
}

/// The recorder's windows merged into ranges.
fn sealed_ranges(sealed: &Sealed) -> BTreeMap<String, Vec<(u64, u64)>> {
    sealed
        .lock()
        .unwrap()
        .iter()
        .map(|(prefix, set)| {
            let mut ranges: Vec<(u64, u64)> = Vec::new();
            for &(a, b) in set {
                match ranges.last_mut() {
                    Some(last) if a == last.1 + 1 => last.1 = b,
                    _ => ranges.push((a, b)),
                }
            }
            (prefix.clone(), ranges)
        })
        .collect()
}

fn publish_for(engine: &Engine<Value>, prefixes: &[&str], rounds: u64, pause: Duration) -> u64 {
    let mut n = 0;
    for round in 0..rounds {
        for p in prefixes {
            for i in 0..7u64 {
                engine
                    .publish(&format!("{p}:ev{}", i % 3), round * 10 + i)
                    .unwrap();
                n += 1;
            }
        }
        thread::sleep(pause);
    }
    n
}

#[test]
fn every_batch_lands_exactly_once() {
    let server = NatsServer::start();
    let engine = engine();
    let (sealed, recorder) = record(&engine, "*");
    let sink = Sink::spawn(
        &engine,
        "*",
        SinkConfig::new(server.url()).root("t1").stream("T1"),
    )
    .unwrap();
    let origin = sink.origin().clone();
    let published = publish_for(
        &engine,
        &["data:users", "data:orders", "gpu:0"],
        100,
        Duration::from_millis(2),
    );
    engine.shutdown().unwrap();
    let recorded_events = recorder.join().unwrap();
    let stats = sink.shutdown_timeout(Duration::from_secs(20)).unwrap();

    assert_eq!(recorded_events, published, "nothing dropped in the engine");
    let sealed_batches: u64 = sealed
        .lock()
        .unwrap()
        .values()
        .map(|s| s.len() as u64)
        .sum();
    assert!(sealed_batches > 30, "{sealed_batches} batches");
    assert_eq!(stats.batches, sealed_batches, "{stats:?}");
    assert_eq!(stats.acked, sealed_batches, "{stats:?}");
    assert_eq!(stats.duplicates, 0);
    assert_eq!(stats.failed + stats.oversize + stats.abandoned, 0);
    assert_eq!(stats.events, published);
    assert_eq!(stats.events_landed, published);
    assert!(stats.is_conserved());

    assert_eq!(stream_messages(&server.url(), "T1"), sealed_batches);
    let source = read_all(&server.url(), "T1", sealed_batches, Duration::from_secs(20));
    let s = source.stats();
    assert_eq!(s.batches, sealed_batches, "{s:?}");
    assert_eq!(s.events, published);
    assert_eq!((s.gaps, s.duplicates, s.undecodable), (0, 0, 0), "{s:?}");
    assert_eq!(seen_by_prefix(&source, &origin), sealed_ranges(&sealed));
}

#[test]
fn server_killed_mid_stream_loses_nothing_and_stores_no_duplicate() {
    let mut server = NatsServer::start();
    let engine = engine();
    let (sealed, recorder) = record(&engine, "*");
    let sink = Sink::spawn(
        &engine,
        "*",
        SinkConfig::new(server.url())
            .root("t2")
            .stream("T2")
            .attempt_timeout(Duration::from_millis(500))
            .backoff(Duration::from_millis(20), Duration::from_millis(200)),
    )
    .unwrap();
    let origin = sink.origin().clone();
    let handle = sink.handle();
    let producer = {
        let engine = engine.clone();
        thread::spawn(move || {
            publish_for(
                &engine,
                &["data:users", "data:orders"],
                600,
                Duration::from_millis(5),
            )
        })
    };
    thread::sleep(Duration::from_millis(800));
    server.kill();
    thread::sleep(Duration::from_millis(1200));
    server.restart();
    let published = producer.join().unwrap();
    engine.shutdown().unwrap();
    let recorded_events = recorder.join().unwrap();
    let stats = sink.shutdown_timeout(Duration::from_secs(60)).unwrap();
    let sub = handle.subscriber_stats().unwrap().lag_dropped_batches + stats.backlog_dropped;
    println!("after SIGKILL and restart: {stats:?}");

    assert_eq!(recorded_events, published);
    let sealed_batches: u64 = sealed
        .lock()
        .unwrap()
        .values()
        .map(|s| s.len() as u64)
        .sum();
    assert_eq!(sub, 0, "the sink's queue absorbed the outage");
    assert_eq!(stats.batches, sealed_batches, "{stats:?}");
    assert_eq!(stats.landed(), sealed_batches, "{stats:?}");
    assert_eq!(stats.failed + stats.abandoned, 0, "{stats:?}");
    assert!(stats.retries > 0, "the outage cost retries: {stats:?}");
    assert!(stats.is_conserved());
    // Stored once each, whatever the retries.
    assert_eq!(stream_messages(&server.url(), "T2"), sealed_batches);
    let source = read_all(&server.url(), "T2", sealed_batches, Duration::from_secs(20));
    let s = source.stats();
    assert_eq!(
        (s.batches, s.gaps, s.duplicates),
        (sealed_batches, 0, 0),
        "{s:?}"
    );
    assert_eq!(s.events, published);
    assert_eq!(seen_by_prefix(&source, &origin), sealed_ranges(&sealed));
}

#[test]
fn server_down_at_start_then_up() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let engine = engine();
    let (sealed, recorder) = record(&engine, "*");
    let started = Instant::now();
    let sink = Sink::spawn(
        &engine,
        "*",
        SinkConfig::new(&url)
            .root("t3")
            .stream("T3")
            .startup_wait(Duration::from_millis(200)),
    )
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!sink.stats().stream_ready);
    let published = publish_for(&engine, &["data:users"], 100, Duration::from_millis(5));
    let server_up_at = Instant::now() + Duration::from_secs(2);
    thread::sleep(server_up_at.saturating_duration_since(Instant::now()));
    let server = NatsServer::start_on(port, None);
    engine.shutdown().unwrap();
    recorder.join().unwrap();
    let stats = sink.shutdown_timeout(Duration::from_secs(30)).unwrap();
    let sealed_batches: u64 = sealed
        .lock()
        .unwrap()
        .values()
        .map(|s| s.len() as u64)
        .sum();
    // The default queue (1024 batches) holds this outage.
    assert_eq!(stats.batches, sealed_batches, "{stats:?}");
    assert_eq!(stats.landed(), sealed_batches, "{stats:?}");
    assert_eq!(stats.events_landed, published);
    assert!(stats.stream_ready);
    assert_eq!(stream_messages(&server.url(), "T3"), sealed_batches);
}

#[test]
fn server_never_reachable_is_bounded_and_counted() {
    let port = free_port();
    let engine = engine();
    let backlog = 16;
    let sink = Sink::spawn(
        &engine,
        "*",
        SinkConfig::new(format!("nats://127.0.0.1:{port}"))
            .root("t4")
            .stream("T4")
            .startup_wait(Duration::from_millis(100))
            .backlog(backlog),
    )
    .unwrap();
    let handle = sink.handle();
    let published = publish_for(
        &engine,
        &["data:users", "data:orders"],
        200,
        Duration::from_millis(2),
    );
    // The sink takes every batch at once: neither flush nor shutdown
    // waits on the server.
    let t = Instant::now();
    engine.flush().unwrap();
    engine.shutdown().unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let during = handle.stats();
    assert!(during.backlog <= backlog as u64, "bounded: {during:?}");
    let t = Instant::now();
    let stats = sink.shutdown_timeout(Duration::from_millis(500)).unwrap();
    let took = t.elapsed();
    assert!(took < Duration::from_millis(1500), "shutdown took {took:?}");
    let sub = handle.subscriber_stats().expect("subscriber stats");
    assert!(sub.is_conserved(), "{sub:?}");
    assert_eq!(sub.lag_dropped_batches, 0, "{sub:?}");
    assert_eq!(stats.batches, sub.delivered_batches, "{stats:?} {sub:?}");
    assert_eq!(stats.events, published, "{stats:?}");
    assert!(stats.is_conserved(), "{stats:?}");
    assert_eq!(stats.landed(), 0);
    assert!(stats.backlog_dropped > 0, "{stats:?}");
    assert_eq!(
        stats.backlog_dropped + stats.abandoned,
        stats.batches,
        "{stats:?}"
    );
    assert!(stats.abandoned <= backlog as u64, "{stats:?}");
    assert!(!stats.connected && !stats.stream_ready);
}

#[test]
fn unacked_batch_is_redelivered_and_flagged_duplicate() {
    let server = NatsServer::start();
    assert_eq!(ship_one(&server.url(), "t5", "T5").acked, 1);

    let config = SourceConfig::new(server.url())
        .stream("T5")
        .durable("flaky")
        .ack_wait(Duration::from_secs(1));
    let mut source = BlockingSource::<Value>::connect(config).unwrap();
    let first = source
        .next_timeout(Duration::from_secs(5))
        .expect("delivered")
        .unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.delivered, 1);
    let seq = first.batch.seq;
    drop(first); // the handler "died" before acknowledging
    let again = source
        .next_timeout(Duration::from_secs(5))
        .expect("redelivered")
        .unwrap();
    assert_eq!(again.batch.seq, seq);
    assert!(again.duplicate, "the source flags the redelivery");
    assert_eq!(again.delivered, 2);
    source.ack(again).unwrap();
    assert!(source.next_timeout(Duration::from_millis(1500)).is_none());
    let s = source.stats();
    assert_eq!(
        (s.batches, s.duplicates, s.redelivered, s.acked),
        (2, 1, 1, 1)
    );
    assert_eq!(s.gaps, 0);
}

#[test]
fn handler_error_redelivers_then_acks() {
    let server = NatsServer::start();
    ship_one(&server.url(), "t7", "T7");

    let mut source =
        BlockingSource::<Value>::connect(SourceConfig::new(server.url()).stream("T7")).unwrap();
    let mut calls = 0;
    // Fails the first time, takes it the second; `run` ends when the
    // iterator would wait forever, so drive it item by item instead.
    for _ in 0..2 {
        let d = source
            .next_timeout(Duration::from_secs(5))
            .expect("a delivery")
            .unwrap();
        calls += 1;
        if calls == 1 {
            source.nak(d).unwrap();
        } else {
            assert!(d.duplicate);
            source.ack(d).unwrap();
        }
    }
    let s = source.stats();
    assert_eq!((s.nacked, s.acked, s.redelivered), (1, 1, 1));
}

#[test]
fn bad_input_gives_typed_errors() {
    let engine = engine();
    for url in [
        "",
        "nats://[::1",
        "http://127.0.0.1:4222",
        "nats://host:notaport",
    ] {
        match Sink::spawn(&engine, "*", SinkConfig::new(url)) {
            Err(Error::BadUrl { .. }) => {}
            other => panic!("{url:?}: {other:?}"),
        }
    }
    let url = "nats://127.0.0.1:1";
    for config in [
        SinkConfig::new(url).root("a..b"),
        SinkConfig::new(url).root("a.*"),
        SinkConfig::new(url).stream("no.dots"),
        SinkConfig::new(url).max_in_flight(0),
        SinkConfig::new(url)
            .duplicate_window(Duration::from_secs(10))
            .retry_horizon(Duration::from_secs(60)),
    ] {
        match Sink::spawn(&engine, "*", config) {
            Err(Error::BadConfig(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    match Sink::spawn(&engine, "chat:**", SinkConfig::new(url)) {
        Err(Error::Engine(ringfold::Error::InvalidPattern { .. })) => {}
        other => panic!("{other:?}"),
    }
    engine.shutdown().unwrap();
}

#[test]
fn conflicting_and_unknown_streams_are_refused() {
    let server = NatsServer::start();
    create_stream(&server.url(), "OTHER", &["elsewhere.>"]);
    let engine = engine();
    match Sink::spawn(
        &engine,
        "*",
        SinkConfig::new(server.url()).root("mine").stream("OTHER"),
    ) {
        Err(Error::StreamConflict {
            stream, subjects, ..
        }) => {
            assert_eq!(stream, "OTHER");
            assert_eq!(subjects, vec!["elsewhere.>".to_owned()]);
        }
        other => panic!("{other:?}"),
    }
    // A new stream whose subjects overlap another stream's.
    match Sink::spawn(
        &engine,
        "*",
        SinkConfig::new(server.url())
            .root("elsewhere")
            .stream("NEW"),
    ) {
        Err(Error::StreamConflict { .. }) | Err(Error::JetStream(_)) => {}
        other => panic!("{other:?}"),
    }
    match Sink::spawn(
        &engine,
        "*",
        SinkConfig::new(server.url())
            .stream("MISSING")
            .create_stream(false),
    ) {
        Err(Error::UnknownStream(s)) => assert_eq!(s, "MISSING"),
        other => panic!("{other:?}"),
    }
    match BlockingSource::<Value>::connect(SourceConfig::new(server.url()).stream("MISSING")) {
        Err(Error::UnknownStream(_)) => {}
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("connected to a missing stream"),
    }
    engine.shutdown().unwrap();
}

#[test]
fn oversize_batches_are_refused_and_counted() {
    let server = NatsServer::start_with_config("max_payload: 4096\n");
    let engine = Engine::<Value>::builder()
        .policy("big:*", Policy::batch(Duration::from_secs(60), 10_000))
        .policy("small:*", Policy::batch(Duration::from_millis(10), 50))
        .build()
        .unwrap();
    let sink = Sink::spawn(
        &engine,
        "*",
        SinkConfig::new(server.url()).root("t8").stream("T8"),
    )
    .unwrap();
    for i in 0..500u64 {
        engine.publish("big:blob:ev", i).unwrap();
    }
    engine.publish("small:one:ev", 1u64).unwrap();
    engine.shutdown().unwrap();
    let handle = sink.handle();
    let stats = sink.shutdown_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(stats.oversize, 1, "{stats:?}");
    assert_eq!(stats.acked, 1, "{stats:?}");
    assert!(stats.is_conserved());
    let last = handle.last_error().expect("the refusal is reported");
    assert!(last.contains("max_payload 4096"), "{last}");
}

#[test]
fn prefixes_with_forbidden_characters_land_on_mapped_subjects() {
    let server = NatsServer::start();
    let engine = engine();
    let sink = Sink::spawn(
        &engine,
        "*",
        SinkConfig::new(server.url()).root("t9").stream("T9"),
    )
    .unwrap();
    let prefixes = ["sp ace:x", "dot.ted:y", "gt>:z", "pct%:w"];
    for p in prefixes {
        engine.publish(&format!("{p}:ev"), 1u64).unwrap();
    }
    engine.shutdown().unwrap();
    let stats = sink.shutdown_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(stats.acked, prefixes.len() as u64, "{stats:?}");
    let mut source =
        BlockingSource::<Value>::connect(SourceConfig::new(server.url()).stream("T9")).unwrap();
    let mut got = BTreeSet::new();
    while let Some(d) = source.next_timeout(Duration::from_secs(2)) {
        let d = d.unwrap();
        got.insert(d.batch.prefix.clone());
        source.ack(d).unwrap();
    }
    let want: BTreeSet<String> = prefixes.iter().map(|s| s.to_string()).collect();
    assert_eq!(got, want);
    for p in prefixes {
        let subject = nats::subject_for("t9", p);
        assert_eq!(nats::prefix_of("t9", &subject).as_deref(), Some(p));
    }
}

/// Not a test by itself: the producer process of
/// `conservation_across_processes`, which runs this test binary with
/// `RINGFOLD_NATS_PRODUCER` set to the server's URL (without it, this
/// returns at once).
#[test]
fn producer_process() {
    let Ok(url) = std::env::var("RINGFOLD_NATS_PRODUCER") else {
        return;
    };
    let engine = engine();
    let sink = Sink::spawn(&engine, "*", SinkConfig::new(url).root("t10").stream("T10")).unwrap();
    let origin = sink.origin().clone();
    let published = publish_for(
        &engine,
        &["data:users", "data:orders"],
        150,
        Duration::from_millis(2),
    );
    engine.shutdown().unwrap();
    let stats = sink.shutdown_timeout(Duration::from_secs(20)).unwrap();
    println!(
        "PRODUCER origin={} published={published} landed_events={} batches={} landed={}",
        origin,
        stats.events_landed,
        stats.batches,
        stats.landed()
    );
}

#[test]
fn conservation_across_processes() {
    let server = NatsServer::start();
    let exe = std::env::current_exe().unwrap();
    let producers: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "producer_process",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("RINGFOLD_NATS_PRODUCER", server.url())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Their lines: origin -> (published, landed events, batches).
    let mut sent: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for p in producers {
        let out = p.wait_with_output().unwrap();
        assert!(out.status.success(), "producer failed");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find_map(|l| l.split_once("PRODUCER ").map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("no PRODUCER line in {text}"));
        let field = |k: &str| -> String {
            line.split(' ')
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                .unwrap()
                .to_owned()
        };
        let n = |k: &str| field(k).parse::<u64>().unwrap();
        sent.insert(
            field("origin"),
            (n("published"), n("landed_events"), n("batches")),
        );
        assert_eq!(n("batches"), n("landed"), "{line}");
    }
    assert_eq!(sent.len(), 2, "two origins: {sent:?}");
    let want: u64 = sent.values().map(|v| v.2).sum();
    let mut source = BlockingSource::<Value>::connect(
        SourceConfig::new(server.url())
            .stream("T10")
            .durable("rollup"),
    )
    .unwrap();
    let mut got: BTreeMap<String, u64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while source.stats().batches < want && Instant::now() < deadline {
        if let Some(d) = source.next_timeout(Duration::from_millis(500)) {
            let d = d.unwrap();
            *got.entry(d.batch.origin.to_string()).or_default() += d.batch.events.len() as u64;
            source.ack(d).unwrap();
        }
    }
    for (origin, (published, landed, _)) in &sent {
        assert_eq!(landed, published, "{origin}: every event acked by its sink");
        assert_eq!(
            got.get(origin),
            Some(landed),
            "{origin}: the roll-up got them all"
        );
    }
    let s = source.stats();
    assert_eq!((s.gaps, s.duplicates), (0, 0), "{s:?}");
    assert_eq!(s.series, 4, "2 origins x 2 prefixes");
}

#[test]
fn sink_task_and_source_on_the_callers_runtime() {
    let server = NatsServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let engine = engine();
        let task = nats::SinkTask::new(
            &engine,
            "*",
            SinkConfig::new(server.url()).root("t11").stream("T11"),
        )
        .unwrap();
        let handle = task.handle();
        let running = tokio::spawn(task.run());
        for i in 0..50u64 {
            engine.publish("data:users:created", i).unwrap();
        }
        engine.shutdown_async().await.unwrap();
        let stats = running.await.unwrap().unwrap();
        assert_eq!(stats, handle.stats());
        assert_eq!(stats.events_landed, 50, "{stats:?}");
        assert_eq!(stats.landed(), stats.batches);

        let mut source =
            nats::Source::<Value>::connect(SourceConfig::new(server.url()).stream("T11"))
                .await
                .unwrap();
        let mut events = 0;
        while events < 50 {
            let d = tokio::time::timeout(Duration::from_secs(5), source.next_delivery())
                .await
                .expect("a delivery in time")
                .expect("the stream goes on")
                .unwrap();
            events += d.batch.events.len();
            d.ack().await.unwrap();
        }
        let s = source.stats();
        assert_eq!(
            (s.events, s.acked, s.gaps, s.duplicates),
            (50, stats.landed(), 0, 0)
        );
    });
}

/// Not a test by itself: the consumer process of
/// `consumer_killed_before_ack_gets_redelivery`, which runs this test
/// binary with `RINGFOLD_NATS_CONSUMER` set to the server's URL (without
/// it, this returns at once). It takes one delivery and dies without
/// acknowledging it.
#[test]
fn consumer_process() {
    let Ok(url) = std::env::var("RINGFOLD_NATS_CONSUMER") else {
        return;
    };
    let config = SourceConfig::new(url)
        .stream("T12")
        .durable("mortal")
        .ack_wait(Duration::from_secs(1));
    let mut source = BlockingSource::<Value>::connect(config).unwrap();
    let d = source
        .next_timeout(Duration::from_secs(10))
        .expect("a delivery")
        .unwrap();
    println!("CONSUMER seq={} delivered={}", d.batch.seq, d.delivered);
    // Killed mid-batch: no ack, no clean exit.
    std::process::abort();
}

#[test]
fn consumer_killed_before_ack_gets_redelivery() {
    let server = NatsServer::start();
    assert_eq!(ship_one(&server.url(), "t12", "T12").acked, 1);

    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "consumer_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RINGFOLD_NATS_CONSUMER", server.url())
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the consumer process died");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CONSUMER seq=0 delivered=1"), "{text}");

    // The same durable consumer, in this process: the batch comes again.
    let config = SourceConfig::new(server.url())
        .stream("T12")
        .durable("mortal")
        .ack_wait(Duration::from_secs(1));
    let mut source = BlockingSource::<Value>::connect(config).unwrap();
    let d = source
        .next_timeout(Duration::from_secs(10))
        .expect("redelivered")
        .unwrap();
    assert_eq!(d.batch.seq, 0);
    assert_eq!(d.delivered, 2, "the server counts the earlier delivery");
    source.ack(d).unwrap();
    assert!(source.next_timeout(Duration::from_millis(1500)).is_none());
    let s = source.stats();
    assert_eq!((s.redelivered, s.acked), (1, 1), "{s:?}");
}
