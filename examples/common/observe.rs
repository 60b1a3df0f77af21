//! tower's own instrumentation through the facades a Rust program already
//! uses, each folded by ringfold (issues 21 and 22):
//!
//! * with the cargo feature `metrics` and `--prometheus ADDR`: tower's
//!   `counter!`/`histogram!` calls (one per indexed file and per changed
//!   row) go through `ringfold::metrics::FoldLayer` into
//!   metrics-exporter-prometheus, served on `ADDR`, beside ringfold's own
//!   health (`HealthReporter`);
//! * with the cargo feature `tracing`: tower logs per file and per row
//!   through `tracing` into a second engine of `LogRecord`s
//!   (`RingfoldLayer`), whose debug lines are counted per second and whose
//!   warnings are batched into a JSON-lines file (`JsonLinesFile`) in the
//!   temp directory; the summary shows the log family's reduction.
//!
//! Without the features these are no-ops, and tower runs as before.

use std::error::Error;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// What was installed, kept until the end of the run.
#[derive(Default)]
pub struct Observe {
    #[cfg(feature = "metrics")]
    prometheus: Option<Prometheus>,
    #[cfg(feature = "tracing")]
    logs: Option<Logs>,
}

#[cfg(feature = "metrics")]
struct Prometheus {
    _runtime: tokio::runtime::Runtime,
    layer: ringfold::metrics::FoldLayer,
    health: ringfold::metrics::HealthThread,
    addr: std::net::SocketAddr,
}

#[cfg(feature = "tracing")]
struct Logs {
    engine: ringfold::Engine<ringfold::tracing::LogRecord>,
    counters: std::sync::Arc<ringfold::sink::SinkCounters>,
    path: std::path::PathBuf,
}

/// Installs what the build and the flags ask for.
pub fn install(
    engine: &ringfold::Engine<ringfold::Value>,
    prometheus: Option<std::net::SocketAddr>,
) -> Res<Observe> {
    #[allow(unused_mut)]
    let mut observe = Observe::default();
    #[cfg(feature = "metrics")]
    if let Some(addr) = prometheus {
        use metrics_util::layers::Layer;
        use std::time::Duration;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (recorder, serve) = {
            let _in = runtime.enter();
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(addr)
                .build()?
        };
        runtime.spawn(serve);
        let layer = ringfold::metrics::FoldLayer::builder()
            .histogram_samples(false)
            .build()?;
        metrics::set_global_recorder(layer.layer(recorder))?;
        let health = ringfold::metrics::HealthReporter::new()
            .spawn(engine.clone(), Duration::from_secs(1))?;
        observe.prometheus = Some(Prometheus {
            _runtime: runtime,
            layer,
            health,
            addr,
        });
    }
    #[cfg(not(feature = "metrics"))]
    if prometheus.is_some() {
        return Err("--prometheus needs the cargo feature `metrics` \
                    (cargo run --release --features metrics --example tower -- --prometheus 127.0.0.1:9464)"
            .into());
    }
    #[cfg(feature = "tracing")]
    {
        use ringfold::sink::JsonLinesFile;
        use ringfold::tracing::{LogRecord, RingfoldLayer};
        use ringfold::{Engine, Policy, SubscribeOptions};
        use std::time::Duration;
        use tracing_subscriber::layer::SubscriberExt;
        let logs = Engine::<LogRecord>::builder()
            .policy("log:*", Policy::batch(Duration::from_millis(200), 2048))
            // The hot paths' debug lines: counted per second, not written.
            .policy(
                "log:tower.indexer:debug",
                Policy::aggregate(Duration::from_secs(1), 1_000_000),
            )
            .policy(
                "log:tower.data:debug",
                Policy::aggregate(Duration::from_secs(1), 1_000_000),
            )
            .urgent("log:*:error")
            .sampled()
            .build()?;
        let path =
            std::env::temp_dir().join(format!("ringfold-tower-{}.jsonl", std::process::id()));
        let file = JsonLinesFile::builder(&path).build::<LogRecord>()?;
        let counters = file.counters();
        // Kept by the engine: dropped at its shutdown, after the last batch.
        std::mem::forget(logs.subscribe_with("log:*", SubscribeOptions::new("log-file"), file)?);
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(RingfoldLayer::new(&logs)),
        )?;
        tracing::info!(target: "tower", "logging through ringfold into {}", path.display());
        observe.logs = Some(Logs {
            engine: logs,
            counters,
            path,
        });
    }
    let _ = engine;
    Ok(observe)
}

/// The indexer indexed a file.
#[inline]
pub fn file_indexed(lang: &'static str, bytes: u64) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("tower_files_indexed_total", "lang" => lang).increment(1);
        metrics::histogram!("tower_file_bytes").record(bytes as f64);
    }
    #[cfg(feature = "tracing")]
    tracing::debug!(target: "tower::indexer", lang, bytes, "indexed");
    let _ = (lang, bytes);
}

/// The data layer changed a row.
#[inline]
pub fn row_changed(table: &'static str, op: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("tower_rows_changed_total", "table" => table, "op" => op).increment(1);
    #[cfg(feature = "tracing")]
    tracing::debug!(target: "tower::data", table, op, "row changed");
    let _ = (table, op);
}

impl Observe {
    /// One line for the live table: the log family's reduction so far
    /// (feature `tracing`), tracing events in against `write` calls out.
    pub fn print_live(&self) {
        #[cfg(feature = "tracing")]
        if let Some(l) = &self.logs {
            let (published, c) = (l.engine.stats().published, l.counters.snapshot());
            println!(
                "  log family (tracing): {published} events in, {} lines and {} counts out in {} \
                 write calls ({:.0}x fewer writes than events)",
                c.lines,
                c.aggregate_lines,
                c.write_calls,
                published as f64 / c.write_calls.max(1) as f64
            );
        }
    }

    /// Stops what was installed and prints what it did.
    pub fn finish(self) -> Res<()> {
        #[cfg(feature = "metrics")]
        if let Some(p) = self.prometheus {
            p.layer.flush()?;
            let s = p.layer.stats();
            println!(
                "prometheus: served on http://{}/metrics: {} series folded in {} windows \
                 (tower's counter!/histogram! calls and ringfold's health)",
                p.addr, s.series, s.windows
            );
            p.health.stop();
        }
        #[cfg(feature = "tracing")]
        if let Some(l) = self.logs {
            tracing::info!(target: "tower", "done");
            let stats = l.engine.shutdown()?;
            let c = l.counters.snapshot();
            let published = stats.published.max(1);
            println!(
                "logs: {} tracing events -> {} lines and {} per-second counts in {} write calls \
                 ({:.0}x fewer writes than lines logged) to {}; {} lost, all counted",
                stats.published,
                c.lines,
                c.aggregate_lines,
                c.write_calls,
                published as f64 / c.write_calls.max(1) as f64,
                l.path.display(),
                stats.lost()
            );
        }
        Ok(())
    }
}
