//! The layer in front of `metrics-exporter-prometheus`, scraped by a real
//! Prometheus (Debian package `prometheus`): what Prometheus stored must
//! equal the engine's own figures exactly for counters and within the
//! sketch's bound for quantiles. And the exposition text, read over HTTP,
//! is well-formed.
#![cfg(feature = "metrics")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use metrics::{counter, histogram, with_local_recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use metrics_util::layers::Layer;
use ringfold::metrics::{FoldLayer, FoldRecorder, HealthReporter, Sketch};
use ringfold::{Engine, FullPolicy, Stats};

const INSTALL_HINT: &str = "the `prometheus` binary is needed for this test: \
    `apt-get update && apt-get install -y prometheus` (Debian/Ubuntu), as .ci/run does";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Kills and reaps Prometheus however the test ends.
struct Server {
    child: Child,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_prometheus(target_port: u16) -> (Server, u16) {
    let dir = std::env::temp_dir().join(format!(
        "ringfold-prometheus-{}-{}",
        std::process::id(),
        target_port
    ));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: ringfold\n    scrape_interval: 1s\n    \
             static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start prometheus ({e}): {INSTALL_HINT}"));
    (Server { child, dir }, port)
}

/// One instant query: `(labels, value)` per series.
fn query(port: u16, promql: &str) -> Vec<(serde_json::Value, f64)> {
    let path = format!("/api/v1/query?query={}", url_encode(promql));
    let Ok((200, body)) = http_get(port, &path) else {
        return Vec::new();
    };
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    json["data"]["result"]
        .as_array()
        .map(|series| {
            series
                .iter()
                .filter_map(|s| {
                    let v = s["value"][1].as_str()?.parse().ok()?;
                    Some((s["metric"].clone(), v))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The single value of `promql`, waiting (up to a minute) for a scrape.
fn scraped(port: u16, promql: &str, server: &mut Server) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            let log =
                std::fs::read_to_string(server.dir.join("prometheus.log")).unwrap_or_default();
            panic!("prometheus exited ({status}):\n{log}");
        }
        let r = query(port, promql);
        if r.len() == 1 {
            return r[0].1;
        }
        assert!(r.len() <= 1, "{promql}: several series {r:?}");
        assert!(
            Instant::now() < deadline,
            "no scrape of {promql} within a minute"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Setup {
    _rt: tokio::runtime::Runtime,
    layer: FoldLayer,
    recorder: FoldRecorder<PrometheusRecorder>,
    port: u16,
}

fn exporter(cardinality_limit: usize) -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let port = free_port();
    let (recorder, serve) = {
        let _in = rt.enter();
        PrometheusBuilder::new()
            .with_http_listener(([127, 0, 0, 1], port))
            .build()
            .unwrap()
    };
    rt.spawn(serve);
    let layer = FoldLayer::builder()
        .window(Duration::from_millis(100))
        .cardinality_limit(cardinality_limit)
        .window_quantile_gauges(true)
        // Exact counts on a loaded machine: wait for ring space.
        .on_full(FullPolicy::Block(Duration::from_secs(30)))
        .build()
        .unwrap();
    let recorder = layer.layer(recorder);
    Setup {
        _rt: rt,
        layer,
        recorder,
        port,
    }
}

const THREADS: u64 = 4;
const PER_THREAD: u64 = 50_000;

/// Counters from several threads, a histogram, overflowing label sets and
/// an engine's drops reported as health; returns the histogram's samples
/// and the drop engine's stats.
fn record(setup: &Setup) -> (Vec<f64>, Stats) {
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            let recorder = &setup.recorder;
            s.spawn(move || {
                with_local_recorder(recorder, || {
                    for _ in 0..PER_THREAD {
                        counter!("requests_total", "route" => "/a").increment(1);
                    }
                })
            });
        }
    });
    let samples: Vec<f64> = (1..=2000).map(|i| i as f64 / 1000.0).collect();
    with_local_recorder(&setup.recorder, || {
        for &v in &samples {
            histogram!("latency_seconds").record(v);
        }
        for user in 0..12 {
            counter!("logins_total", "user" => user.to_string()).increment(2);
        }
    });
    // An engine that drops: a tiny ring and no flusher wake-ups.
    let engine = Engine::<u64>::builder()
        .ring_capacity(4)
        .high_water(4)
        .tick(Duration::from_secs(3600))
        .on_full(FullPolicy::DropNewest)
        .build()
        .unwrap();
    let mut p = engine.producer().unwrap();
    for i in 0..50u64 {
        let _ = p.publish("data:jobs:done", i);
    }
    drop(p);
    engine.flush().unwrap();
    let stats = engine.stats();
    assert!(stats.dropped.full > 0);
    with_local_recorder(&setup.recorder, || HealthReporter::new().report(&stats));
    setup.layer.flush().unwrap();
    (samples, stats)
}

#[test]
fn prometheus_stores_the_engines_figures() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("{INSTALL_HINT}");
    }
    let setup = exporter(10);
    let (samples, drops) = record(&setup);
    let layer_stats = setup.layer.engine().stats();
    assert_eq!(layer_stats.dropped.rejected(), 0, "{layer_stats:?}");

    let (mut server, port) = start_prometheus(setup.port);
    let requests = scraped(
        port,
        r#"requests_total{job="ringfold",route="/a"}"#,
        &mut server,
    );
    assert_eq!(requests, (THREADS * PER_THREAD) as f64);

    // Overflow: 10 label sets kept, the other 2 in one series (the
    // health metrics stay under the limit: 8 reasons at most).
    let overflow = scraped(
        port,
        r#"logins_total{otel_metric_overflow="true"}"#,
        &mut server,
    );
    assert_eq!(overflow, 4.0);
    assert_eq!(scraped(port, r#"logins_total{user="0"}"#, &mut server), 2.0);
    assert_eq!(setup.layer.stats().overflowed, 2);

    // ringfold's own drop counters, exactly.
    let full = scraped(
        port,
        r#"ringfold_events_dropped_total{reason="full"}"#,
        &mut server,
    );
    assert_eq!(full, drops.dropped.full as f64);
    let published = scraped(port, "ringfold_events_published_total", &mut server);
    assert_eq!(published, drops.published as f64);

    // The histogram: count exact, sum and quantiles within the bound (the
    // layer's 1 % plus the exporter's own 0.01 % sketch; its rank may be
    // the neighbour of ours).
    let count = scraped(port, "latency_seconds_count", &mut server);
    assert_eq!(count, samples.len() as f64);
    let sum = scraped(port, "latency_seconds_sum", &mut server);
    let exact_sum: f64 = samples.iter().sum();
    let bound = (1.0 + Sketch::DEFAULT_ALPHA) * (1.0 + 1e-4) - 1.0;
    assert!(
        (sum - exact_sum).abs() <= bound * exact_sum,
        "{sum} vs {exact_sum}"
    );
    // The layer's own window quantiles (`window_quantile_gauges`), within
    // the sketch's bound of the exact order statistics. (The exporter's
    // own summary quantiles are not checked: metrics-exporter-prometheus
    // 0.18.3 reports quantile 0 as 1.985 for 2000 values 0.001..=2
    // recorded directly into it in one burst, without the layer.)
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let alpha = Sketch::DEFAULT_ALPHA * (1.0 + 1e-9);
    for (q, label) in [
        (0.0, "0"),
        (0.5, "0.5"),
        (0.9, "0.9"),
        (0.99, "0.99"),
        (0.999, "0.999"),
        (1.0, "1"),
    ] {
        let got = scraped(
            port,
            &format!(r#"latency_seconds_window{{quantile="{label}"}}"#),
            &mut server,
        );
        let want = sorted[(q * (sorted.len() - 1) as f64).floor() as usize];
        assert!(
            (got - want).abs() <= alpha * want,
            "q={q}: {got} vs exact {want}"
        );
    }
}

/// Checks one exposition line: `name{label="value",...} number`.
fn sample_line_ok(line: &str) -> Result<(), String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    ringfold::metrics::check_metric_name(name).map_err(|e| format!("name {name:?}: {e}"))?;
    let mut i = name_end;
    if line[i..].starts_with('{') {
        i += 1;
        loop {
            if line[i..].starts_with('}') {
                i += 1;
                break;
            }
            let eq = line[i..].find('=').ok_or("label without =")? + i;
            let label = &line[i..eq];
            ringfold::metrics::check_label_name(label)
                .map_err(|e| format!("label {label:?}: {e}"))?;
            if !line[eq + 1..].starts_with('"') {
                return Err("label value not quoted".into());
            }
            let from = eq + 2;
            let mut escaped = false;
            let mut end = None;
            for (k, c) in line[from..].char_indices() {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(from + k);
                        break;
                    }
                    _ => {}
                }
            }
            i = end.ok_or("unterminated label value")? + 1;
            if line[i..].starts_with(',') {
                i += 1;
            } else if !line[i..].starts_with('}') {
                return Err("labels not separated by ,".into());
            }
        }
    }
    let value = line[i..]
        .strip_prefix(' ')
        .ok_or("no space before the value")?;
    let value = value.split(' ').next().unwrap_or("");
    match value {
        "+Inf" | "-Inf" | "NaN" => Ok(()),
        v => v
            .parse::<f64>()
            .map(|_| ())
            .map_err(|_| format!("value {v:?} not a number")),
    }
}

#[test]
fn exposition_text_over_http_is_well_formed() {
    let setup = exporter(10);
    let _ = record(&setup);
    let (status, text) = http_get(setup.port, "/metrics").unwrap();
    assert_eq!(status, 200);
    let mut typed = std::collections::HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(
                ["counter", "gauge", "summary", "histogram", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                typed.insert(name.to_owned(), kind.to_owned()).is_none(),
                "twice: {line}"
            );
        } else if line.starts_with("# HELP ") {
            continue;
        } else {
            assert!(!line.starts_with('#'), "unknown comment: {line}");
            sample_line_ok(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains_key(*f)))
                .unwrap_or(name);
            assert!(
                typed.contains_key(family),
                "sample before its # TYPE: {line}"
            );
        }
    }
    assert_eq!(
        typed.get("requests_total").map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        typed.get("latency_seconds").map(String::as_str),
        Some("summary")
    );
    assert_eq!(
        typed.get("ringfold_events_pending").map(String::as_str),
        Some("gauge")
    );
    let want = format!("requests_total{{route=\"/a\"}} {}", THREADS * PER_THREAD);
    assert!(text.lines().any(|l| l == want), "{want} missing:\n{text}");
    assert!(text.contains("logins_total{otel_metric_overflow=\"true\"} 4"));
    assert!(text.contains("latency_seconds_count 2000"));
    assert!(text.contains("# HELP ringfold_events_dropped_total"));

    // The checker itself rejects what it should.
    for bad in ["9x 1", "x{a=\"1\" 2", "x{__a=\"1\"} 2", "x one", "x{a=1} 2"] {
        assert!(sample_line_ok(bad).is_err(), "{bad}");
    }
}
