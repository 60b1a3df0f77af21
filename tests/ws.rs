//! The WebSocket sink against real WebSocket clients (tokio-tungstenite)
//! on 127.0.0.1.
#![cfg(feature = "ws")]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use ringfold::wire::{self, WireBatch};
use ringfold::ws::{ClientError, WsConfig, WsSink};
use ringfold::{Budget, Engine, Policy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

const WAIT: Duration = Duration::from_secs(20);

fn engine(window_events: usize) -> Engine<u64> {
    Engine::<u64>::builder()
        .policy("*", Policy::batch(Duration::from_secs(600), window_events))
        .build()
        .expect("engine")
}

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn connect(addr: SocketAddr) -> Ws {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), stream)
        .await
        .expect("websocket handshake");
    ws
}

/// The next text frame, as JSON.
async fn next_json(ws: &mut Ws) -> serde_json::Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("connection open")
            .expect("frame readable");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("frame is JSON"),
            Message::Close(_) => panic!("closed while waiting for a frame"),
            _ => {}
        }
    }
}

/// Sends `msg` and returns the subscriber name from the acknowledgement.
async fn subscribe(ws: &mut Ws, msg: &str) -> String {
    ws.send(Message::text(msg)).await.expect("send");
    let ack = next_json(ws).await;
    assert!(ack.get("subscribed").is_some(), "not an ack: {ack}");
    ack["subscriber"]
        .as_str()
        .expect("subscriber name")
        .to_owned()
}

/// The next batch frame, decoded with the wire format.
async fn next_batch(ws: &mut Ws) -> WireBatch<u64> {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a batch in time")
            .expect("connection open")
            .expect("frame readable");
        if let Message::Text(t) = msg {
            return wire::decode(t.as_bytes()).expect("a wire-format batch");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_decode_and_patterns_filter_per_client() {
    let engine = engine(10);
    let sink = WsSink::spawn(&engine, local()).expect("sink");
    let addr = sink.local_addr();
    assert_ne!(addr.port(), 0);
    let mut gpu = connect(addr).await;
    let mut data = connect(addr).await;
    let gpu_name = subscribe(&mut gpu, "gpu:*").await;
    let data_name = subscribe(&mut data, r#"{"subscribe": "data:*"}"#).await;
    assert_ne!(gpu_name, data_name);

    for i in 0..20u64 {
        engine.publish("data:users:created", i).unwrap();
    }
    for i in 0..10u64 {
        engine.publish("gpu:0:util", 100 + i).unwrap();
    }
    let g = next_batch(&mut gpu).await;
    assert_eq!(g.prefix, "gpu:0");
    assert_eq!(g.origin, *sink.origin());
    assert_eq!(
        g.events.iter().map(|e| e.payload).collect::<Vec<_>>(),
        (100..110).collect::<Vec<_>>()
    );
    let d0 = next_batch(&mut data).await;
    let d1 = next_batch(&mut data).await;
    assert_eq!(
        (d0.prefix.as_str(), d1.prefix.as_str()),
        ("data:users", "data:users")
    );
    assert_eq!((d0.seq, d1.seq), (0, 1));
    let payloads: Vec<u64> = d0
        .events
        .iter()
        .chain(&d1.events)
        .map(|e| e.payload)
        .collect();
    assert_eq!(payloads, (0..20).collect::<Vec<_>>());

    // Shut down: each client's subscription drains and its connection
    // closes; nothing else arrived for either.
    let stats = engine.shutdown().unwrap();
    assert!(stats.is_lossless(), "{stats:?}");
    for ws in [&mut gpu, &mut data] {
        while let Some(Ok(msg)) = tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            assert!(
                matches!(msg, Message::Close(_)),
                "a frame past the published windows: {msg:?}"
            );
        }
    }
    let ws = sink.shutdown().unwrap();
    assert_eq!((ws.frames, ws.events), (3, 30), "{ws:?}");
    assert_eq!((ws.accepted, ws.clients), (2, 0), "{ws:?}");
    assert_eq!(
        (ws.malformed, ws.errors, ws.encode_errors),
        (0, 0, 0),
        "{ws:?}"
    );
    assert!(ws.bytes > 30 * 40, "{ws:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_lags_alone() {
    const WINDOW: usize = 1000;
    const WINDOWS: u64 = 300;
    let engine = engine(WINDOW);
    let config = WsConfig::new().budget(Budget::new(2 * WINDOW as u64, 4 << 20));
    let sink = WsSink::spawn_with(&engine, local(), config).expect("sink");
    let mut fast = connect(sink.local_addr()).await;
    let mut stalled = connect(sink.local_addr()).await;
    subscribe(&mut fast, "data:*").await;
    let stalled_name = subscribe(&mut stalled, "data:*").await;

    // One window at a time, the next only once the fast client has it: if
    // the stalled client held the engine or the server back, this would
    // wait forever (and fail on the timeout).
    let mut fast_events = 0u64;
    let mut fast_lagged = 0u64;
    for w in 0..WINDOWS {
        for i in 0..WINDOW as u64 {
            engine.publish("data:users:created", w * 1000 + i).unwrap();
        }
        let b = next_batch(&mut fast).await;
        assert_eq!(
            (b.seq, b.last_seq),
            (w, w),
            "the fast client got every window"
        );
        fast_events += b.events.len() as u64;
        fast_lagged += b.lagged;
    }
    assert_eq!((fast_events, fast_lagged), (WINDOWS * WINDOW as u64, 0));

    // The stalled client's queue merged and then dropped, in band: read it
    // now and account for every window by its sequence numbers.
    let mut covered = 0u64;
    let mut lagged = 0u64;
    let mut frames = 0u64;
    let mut next_seq = 0u64;
    let deadline = Instant::now() + WAIT;
    while covered + lagged < WINDOWS {
        assert!(
            Instant::now() < deadline,
            "stalled client: {covered} + {lagged} of {WINDOWS}"
        );
        let b = next_batch(&mut stalled).await;
        assert!(b.seq >= next_seq, "windows in order, none twice");
        next_seq = b.last_seq + 1;
        covered += b.merged;
        lagged += b.lagged;
        frames += 1;
    }
    println!(
        "stalled client: {frames} frames for {WINDOWS} windows: {covered} delivered \
         (merged), {lagged} lost and reported in band"
    );
    assert_eq!(covered + lagged, WINDOWS);
    assert!(
        lagged > 0,
        "a stalled client over its budget loses windows, counted"
    );
    assert!(frames < WINDOWS, "fewer frames than windows: {frames}");
    let stats = engine.stats();
    let sub = stats
        .subscribers
        .iter()
        .find(|s| s.name == stalled_name)
        .expect("the stalled client's subscription");
    assert_eq!(sub.lag_dropped_batches, lagged);
    assert!(sub.is_conserved());
    engine.shutdown().unwrap();
    sink.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_and_bad_connections_are_counted() {
    let engine = engine(1);
    let sink = WsSink::spawn_with(
        &engine,
        local(),
        WsConfig::new().handshake_timeout(Duration::from_secs(2)),
    )
    .expect("sink");
    let addr = sink.local_addr();
    let mut ws = connect(addr).await;
    for bad in [
        Message::binary(vec![1u8, 2, 3]),
        Message::text(r#"{"hello": 1}"#),
        Message::text("two words"),
        Message::text("data::x"),
    ] {
        ws.send(bad).await.unwrap();
        let reply = next_json(&mut ws).await;
        assert!(reply["error"].is_string(), "an error reply: {reply}");
    }
    assert_eq!(sink.stats().malformed, 4);
    assert!(matches!(sink.last_error(), Some(ClientError::Malformed(_))));
    // The connection still works.
    subscribe(&mut ws, "data:*").await;
    engine.publish("data:users:created", 5u64).unwrap();
    assert_eq!(next_batch(&mut ws).await.events[0].payload, 5);

    // A WebSocket upgrade without a key, and a connection that stops
    // mid-request: handshake errors. One that closes before its first
    // byte (a browser's preconnect) is not an error.
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, raw.read_to_end(&mut answer)).await;
    drop(TcpStream::connect(addr).await.unwrap());
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial.write_all(b"GET / HTT").await.unwrap();
    let deadline = Instant::now() + WAIT;
    while sink.stats().errors < 2 {
        assert!(Instant::now() < deadline, "{:?}", sink.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(matches!(sink.last_error(), Some(ClientError::Handshake(_))));
    let stats = sink.stats();
    assert_eq!(
        (stats.malformed, stats.errors, stats.accepted),
        (4, 2, 1),
        "{stats:?}"
    );
    engine.shutdown().unwrap();
    sink.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_unsubscribes() {
    let engine = engine(1);
    let sink = WsSink::spawn(&engine, local()).expect("sink");
    let mut ws = connect(sink.local_addr()).await;
    let name = subscribe(&mut ws, "*").await;
    let open = |engine: &Engine<u64>| {
        engine
            .stats()
            .subscribers
            .iter()
            .any(|s| s.name == name && !s.closed)
    };
    assert!(open(&engine));
    assert_eq!(sink.stats().clients, 1);
    ws.close(None).await.unwrap();
    drop(ws);
    let deadline = Instant::now() + WAIT;
    while open(&engine) || sink.stats().clients != 0 {
        assert!(Instant::now() < deadline, "still subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sink.stats().errors, 0);
    engine.shutdown().unwrap();
    sink.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_gets_the_page() {
    let engine = engine(1);
    let page = "<!doctype html><title>ringfold</title><p id=x>live</p>";
    let sink = WsSink::spawn_with(&engine, local(), WsConfig::new().page(page)).expect("sink");
    let get = |path: &'static str| {
        let addr = sink.local_addr();
        async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    let ok = get("/").await;
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(ok.ends_with(page), "{ok}");
    assert!(get("/nothing").await.starts_with("HTTP/1.1 404"));
    assert_eq!(sink.stats().pages, 2);
    // The WebSocket on the same port still works.
    let mut ws = connect(sink.local_addr()).await;
    subscribe(&mut ws, "*").await;
    engine.shutdown().unwrap();
    sink.shutdown().unwrap();
}
