//! Logs through ringfold: a `tracing_subscriber::Layer` and the log record
//! it publishes. Feature `tracing`.
//!
//! [`RingfoldLayer`] turns every `tracing` event into a ringfold event
//! carrying a [`LogRecord`] (level, target, message, fields, the current
//! span's name, a wall-clock timestamp), so log lines fold by the same
//! per-pattern policies as any event: a noisy module's debug lines
//! aggregated into counts per window, warnings batched, errors urgent
//! (delivered at once, after the earlier lines of their target). With
//! [`crate::sink::JsonLinesFile`] they end in a JSON-lines file, one
//! `write` per batch, with every loss written in band.
//!
//! # Event names
//!
//! A line of target `my_app::db` at level WARN is published as
//! `log:my_app.db:warn` ([`event_name`]): prefix `log:<target>`, so all the
//! levels of one target share a prefix (an urgent error flushes its
//! target's earlier lines first, in order) and policies can pick a level
//! (`log:*:error`) or a module (`log:my_app.noisy:*`). The target is made a
//! valid name segment by a reversible mapping ([`target_segment`]):
//!
//! | in the target | in the name |
//! |---|---|
//! | `::` | `.` |
//! | `.` `:` `%` `*` | `%2E` `%3A` `%25` `%2A` |
//! | the empty target | `%` |
//! | anything else | itself |
//!
//! The reverse ([`parse_event_name`]): `.` is `::`, `%XX` is the byte
//! `0xXX`, a lone `%` is the empty target. A target too long for the
//! engine's names (`max_name_len`), or met when the engine already has
//! `max_names` names, is published as `log:%FF:<level>` (`%FF` decodes to
//! no UTF-8 string, so no real target maps there) and its records keep
//! the real target. Names are made once per callsite, when `tracing`
//! registers it, never per event.
//!
//! ```
//! use ringfold::tracing::{event_name, parse_event_name, target_segment};
//! use tracing::Level;
//! assert_eq!(event_name("my_app::db", Level::WARN), "log:my_app.db:warn");
//! assert_eq!(target_segment("v1.2::x:y*"), "v1%2E2.x%3Ay%2A");
//! assert_eq!(parse_event_name("log:my_app.db:warn"), Some(("my_app::db".to_string(), Level::WARN)));
//! assert_eq!(parse_event_name("log:v1%2E2.x%3Ay%2A:info"), Some(("v1.2::x:y*".to_string(), Level::INFO)));
//! assert_eq!(parse_event_name("log:%FF:info"), None);
//! ```
//!
//! # Set up
//!
//! ```
//! use ringfold::sink::{FsyncPolicy, JsonLinesFile};
//! use ringfold::tracing::{LogRecord, RingfoldLayer};
//! use ringfold::{Engine, Policy, SubscribeOptions};
//! use std::time::Duration;
//! use tracing_subscriber::layer::SubscriberExt;
//! # let dir = std::env::temp_dir().join(format!("ringfold-doc-tracing-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! let engine = Engine::<LogRecord>::builder()
//!     .policy("log:*", Policy::batch(Duration::from_millis(200), 1000))
//!     .policy("log:my_app.noisy:debug", Policy::aggregate(Duration::from_secs(1), 100_000))
//!     .urgent("log:*:error")
//!     .sampled() // aggregated lines count as 1 each
//!     .build()?;
//! let sink = JsonLinesFile::builder(dir.join("app.jsonl"))
//!     .fsync(FsyncPolicy::Interval(Duration::from_secs(1)))
//!     .build::<LogRecord>()?;
//! let _file = engine.subscribe_with("log:*", SubscribeOptions::new("log-file"), sink)?;
//! let subscriber = tracing_subscriber::registry().with(RingfoldLayer::new(&engine));
//! tracing::subscriber::with_default(subscriber, || {
//!     tracing::warn!(target: "my_app::db", rows = 3u64, "slow query");
//! });
//! engine.shutdown()?; // writes every accepted line
//! let text = std::fs::read_to_string(dir.join("app.jsonl"))?;
//! assert!(text.contains(r#""target":"my_app::db","message":"slow query","fields":{"rows":3}"#));
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ::tracing::callsite::Identifier;
use ::tracing::field::{Field, Visit};
use ::tracing::{Level, Metadata};
use ::tracing_subscriber::layer::{Context, Layer};
use ::tracing_subscriber::registry::LookupSpan;
use ahash::AHashMap;
use arc_swap::ArcSwap;

use crate::{Engine, EventKey, Number, PublishError, Sample, ShortStr, Value};

/// The name segment used for a target that could not be interned (see the
/// module docs): `%FF` decodes to no UTF-8 string.
pub const UNNAMED_TARGET: &str = "%FF";

/// The lowercase name of a level, as used in event names.
///
/// ```
/// assert_eq!(ringfold::tracing::level_name(tracing::Level::WARN), "warn");
/// ```
pub fn level_name(level: Level) -> &'static str {
    match level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

fn parse_level(s: &str) -> Option<Level> {
    Some(match s {
        "trace" => Level::TRACE,
        "debug" => Level::DEBUG,
        "info" => Level::INFO,
        "warn" => Level::WARN,
        "error" => Level::ERROR,
        _ => return None,
    })
}

/// A target as one event-name segment (see the module docs for the
/// mapping and [`parse_event_name`] for the reverse).
///
/// ```
/// use ringfold::tracing::target_segment;
/// assert_eq!(target_segment("my_app::db"), "my_app.db");
/// assert_eq!(target_segment(""), "%");
/// assert_eq!(target_segment("a:::b"), "a.%3Ab");
/// ```
pub fn target_segment(target: &str) -> String {
    if target.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(target.len());
    let mut rest = target;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("::") {
            out.push('.');
            rest = &rest[2..];
            continue;
        }
        match c {
            '.' => out.push_str("%2E"),
            ':' => out.push_str("%3A"),
            '%' => out.push_str("%25"),
            '*' => out.push_str("%2A"),
            c => out.push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// The event name of a line of `target` at `level`:
/// `log:<target_segment(target)>:<level_name(level)>`.
pub fn event_name(target: &str, level: Level) -> String {
    format!("log:{}:{}", target_segment(target), level_name(level))
}

/// The target and level an event name stands for: the reverse of
/// [`event_name`]. `None` for a name that is not `log:<segment>:<level>`
/// or whose segment decodes to no UTF-8 string (`log:%FF:..`).
pub fn parse_event_name(name: &str) -> Option<(String, Level)> {
    let rest = name.strip_prefix("log:")?;
    let (segment, level) = rest.rsplit_once(':')?;
    let level = parse_level(level)?;
    if segment == "%" {
        return Some((String::new(), level));
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() + 8);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'.' => out.extend_from_slice(b"::"),
            b'%' => {
                let hex = segment.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b':' | b'*' => return None,
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok().map(|t| (t, level))
}

/// One log line: what [`RingfoldLayer`] publishes for a `tracing` event.
///
/// Field values are [`Value`]s: integers, floats and flags as such,
/// strings inline up to [`crate::SHORT_STR_MAX`] bytes (no allocation) or
/// shared beyond; values recorded through `Debug` or `Display` (`?x`,
/// `%x`) are formatted once, into such a string. For aggregation a record
/// reads as the number 1 ([`Sample`]), so `Policy::aggregate` counts lines.
///
/// ```
/// use ringfold::tracing::LogRecord;
/// use ringfold::Value;
/// use tracing::Level;
/// let r = LogRecord::new(Level::INFO, "my_app::db", "row inserted")
///     .with_field("table", "users")
///     .with_field("id", 7u64);
/// assert_eq!(r.message(), "row inserted");
/// assert_eq!(r.field("id"), Some(&Value::U64(7)));
/// assert_eq!(r.fields().len(), 2);
/// ```
#[derive(Clone, PartialEq)]
pub struct LogRecord {
    level: Level,
    target: &'static str,
    message: Value,
    fields: Vec<(&'static str, Value)>,
    span: Option<&'static str>,
    timestamp: SystemTime,
}

impl LogRecord {
    /// A record stamped now, with no fields and no span.
    pub fn new(level: Level, target: &'static str, message: impl Into<Value>) -> Self {
        LogRecord {
            level,
            target,
            message: message.into(),
            fields: Vec::new(),
            span: None,
            timestamp: SystemTime::now(),
        }
    }

    /// Adds a field.
    #[must_use]
    pub fn with_field(mut self, name: &'static str, value: impl Into<Value>) -> Self {
        self.fields.push((name, value.into()));
        self
    }

    /// Sets the span name.
    #[must_use]
    pub fn with_span(mut self, span: &'static str) -> Self {
        self.span = Some(span);
        self
    }

    /// The level.
    pub fn level(&self) -> Level {
        self.level
    }

    /// The target (by default the module path, `my_app::db`).
    pub fn target(&self) -> &'static str {
        self.target
    }

    /// The message (`""` if the event had none).
    pub fn message(&self) -> &str {
        self.message.as_str().unwrap_or("")
    }

    /// The message as stored (a string `Value`, or `Unit` if none).
    pub fn message_value(&self) -> &Value {
        &self.message
    }

    /// The fields other than the message, in the callsite's order.
    pub fn fields(&self) -> &[(&'static str, Value)] {
        &self.fields
    }

    /// The value of the field `name`, if present.
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The name of the span the event was recorded in, if any.
    pub fn span(&self) -> Option<&'static str> {
        self.span
    }

    /// When the event was recorded (wall clock).
    pub fn timestamp(&self) -> SystemTime {
        self.timestamp
    }
}

impl fmt::Debug for LogRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogRecord")
            .field("level", &self.level)
            .field("target", &self.target)
            .field("message", &self.message())
            .field("fields", &self.fields)
            .field("span", &self.span)
            .finish()
    }
}

/// A record reads as 1: under `Policy::aggregate` a window's `count` (and
/// exact `sum`) is its number of lines.
impl Sample for LogRecord {
    fn as_f64(&self) -> Option<f64> {
        Some(1.0)
    }

    fn sample(&self) -> Option<Number> {
        Some(Number::Int(1))
    }
}

/// `{"ts":"<RFC 3339>","level":"WARN","target":"my_app::db","span":"req","message":"..","fields":{"rows":3}}`;
/// `span` and `fields` only when present.
///
/// ```
/// use ringfold::sink::JsonLine;
/// use ringfold::tracing::LogRecord;
/// let r = LogRecord::new(tracing::Level::WARN, "my_app::db", "slow").with_field("ms", 812u64);
/// let mut out = Vec::new();
/// r.write_json_line("log:my_app.db:warn", &mut out);
/// let line = String::from_utf8(out)?;
/// assert!(line.ends_with(r#","level":"WARN","target":"my_app::db","message":"slow","fields":{"ms":812}}"#));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl crate::sink::JsonLine for LogRecord {
    fn write_json_line(&self, _name: &str, out: &mut Vec<u8>) {
        use crate::sink::json;
        out.extend_from_slice(b"{\"ts\":");
        json::write_timestamp(out, self.timestamp);
        out.extend_from_slice(b",\"level\":\"");
        out.extend_from_slice(self.level.as_str().as_bytes());
        out.extend_from_slice(b"\",\"target\":");
        json::write_str(out, self.target);
        if let Some(span) = self.span {
            out.extend_from_slice(b",\"span\":");
            json::write_str(out, span);
        }
        out.extend_from_slice(b",\"message\":");
        json::write_str(out, self.message());
        if !self.fields.is_empty() {
            out.extend_from_slice(b",\"fields\":{");
            for (i, (name, value)) in self.fields.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json::write_str(out, name);
                out.push(b':');
                json::write_value(out, value);
            }
            out.push(b'}');
        }
        out.push(b'}');
    }
}

/// Counters of a [`RingfoldLayer`]: only the unusual, so the hot path
/// touches no shared counter. Lines published are in the engine's
/// `Stats::published`, lines refused by a full ring in its
/// `Stats::dropped.full` (and in band, `Batch::dropped`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Callsites given a name.
    pub callsites: u64,
    /// Callsites published under `log:%FF:<level>` (target too long, or
    /// the engine's name table full).
    pub unnamed_callsites: u64,
    /// Lines lost because not even the fallback name could be interned.
    pub unnamed_lost: u64,
    /// Lines logged after the engine shut down.
    pub after_shutdown: u64,
    /// Lines refused for another reason (a dead flusher).
    pub other_errors: u64,
    /// Field values or messages cut at `max_field_bytes` (they end in
    /// `…[truncated]`).
    pub truncated: u64,
}

#[derive(Debug, Default)]
struct LayerCounters {
    callsites: AtomicU64,
    unnamed_callsites: AtomicU64,
    unnamed_lost: AtomicU64,
    after_shutdown: AtomicU64,
    other_errors: AtomicU64,
    truncated: AtomicU64,
}

/// A shared handle to a layer's counters (the layer itself usually moves
/// into a subscriber stack).
#[derive(Debug, Clone)]
pub struct LayerCountersHandle(Arc<LayerCounters>);

impl LayerCountersHandle {
    /// A snapshot.
    pub fn snapshot(&self) -> LayerStats {
        let c = &self.0;
        LayerStats {
            callsites: c.callsites.load(Relaxed),
            unnamed_callsites: c.unnamed_callsites.load(Relaxed),
            unnamed_lost: c.unnamed_lost.load(Relaxed),
            after_shutdown: c.after_shutdown.load(Relaxed),
            other_errors: c.other_errors.load(Relaxed),
            truncated: c.truncated.load(Relaxed),
        }
    }
}

/// The default [`RingfoldLayer::max_field_bytes`]: 64 KiB.
pub const DEFAULT_MAX_FIELD_BYTES: usize = 64 << 10;

/// A `tracing_subscriber::Layer` that publishes every event into a ringfold
/// engine as a [`LogRecord`], named by [`event_name`].
///
/// Per event it looks up the callsite's interned key (one lock-free map
/// read; the name is made once per callsite), records the fields, reads
/// the wall clock and the current span, and publishes into the calling
/// thread's ring. It allocates only what the fields need: strings up to
/// [`crate::SHORT_STR_MAX`] bytes are inline; a longer message or string
/// field is one shared allocation (two for a long `Debug`-formatted value),
/// and a line with fields besides the message has one vector for them.
///
/// Nothing is lost silently: a full ring is the engine's drop (counted in
/// its stats and shown in band in the prefix's next batch), and the
/// layer's own refusals are in [`LayerStats`]. Values longer than
/// [`max_field_bytes`](Self::max_field_bytes) are cut at a character
/// boundary and end in `…[truncated]`; byte fields (`record_bytes`) that are
/// not UTF-8 are stored with U+FFFD for each invalid sequence. Filter
/// levels with `tracing_subscriber`'s per-layer filters
/// (`layer.with_filter(LevelFilter::INFO)`).
///
/// The layer holds a handle to the engine: shut the engine down yourself
/// (`engine.shutdown()`) before the process exits, so every accepted line
/// is delivered.
///
/// See the [module docs](self) for a complete set-up.
pub struct RingfoldLayer {
    engine: Engine<LogRecord>,
    keys: ArcSwap<AHashMap<Identifier, Option<EventKey>>>,
    writer: Mutex<()>,
    counters: Arc<LayerCounters>,
    max_field_bytes: usize,
    spans: bool,
}

impl fmt::Debug for RingfoldLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingfoldLayer")
            .field("callsites", &self.keys.load().len())
            .field("max_field_bytes", &self.max_field_bytes)
            .field("spans", &self.spans)
            .finish_non_exhaustive()
    }
}

impl RingfoldLayer {
    /// A layer publishing into `engine`.
    ///
    /// ```
    /// use ringfold::tracing::{LogRecord, RingfoldLayer};
    /// use ringfold::{Batch, Engine};
    /// use tracing_subscriber::layer::SubscriberExt;
    /// let engine = Engine::<LogRecord>::builder()
    ///     .subscriber(|b: &Batch<LogRecord>| {
    ///         for e in b.events() {
    ///             assert_eq!(e.name(), "log:my_app.db:info");
    ///             assert_eq!(e.payload().message(), "connected");
    ///         }
    ///     })
    ///     .build()?;
    /// let layer = RingfoldLayer::new(&engine);
    /// let counters = layer.counters();
    /// tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
    ///     tracing::info!(target: "my_app::db", "connected");
    /// });
    /// let stats = engine.shutdown()?;
    /// assert_eq!(stats.sealed, 1);
    /// assert_eq!(counters.snapshot().after_shutdown, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(engine: &Engine<LogRecord>) -> Self {
        RingfoldLayer {
            engine: engine.clone(),
            keys: ArcSwap::from_pointee(AHashMap::new()),
            writer: Mutex::new(()),
            counters: Arc::new(LayerCounters::default()),
            max_field_bytes: DEFAULT_MAX_FIELD_BYTES,
            spans: true,
        }
    }

    /// Longest message or string field kept, in bytes (default
    /// [`DEFAULT_MAX_FIELD_BYTES`]); longer ones are cut at a character
    /// boundary and end in `…[truncated]`, and counted.
    #[must_use]
    pub fn max_field_bytes(mut self, n: usize) -> Self {
        self.max_field_bytes = n;
        self
    }

    /// Record the current span's name (default on; it costs a span lookup
    /// per event inside a span).
    #[must_use]
    pub fn span_names(mut self, on: bool) -> Self {
        self.spans = on;
        self
    }

    /// The layer's counters, shared.
    pub fn counters(&self) -> LayerCountersHandle {
        LayerCountersHandle(self.counters.clone())
    }

    /// The key of a callsite, interning its name on first sight.
    fn key(&self, meta: &'static Metadata<'static>) -> Option<EventKey> {
        if let Some(k) = self.keys.load().get(&meta.callsite()) {
            return *k;
        }
        self.register(meta)
    }

    #[cold]
    fn register(&self, meta: &'static Metadata<'static>) -> Option<EventKey> {
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let id = meta.callsite();
        if let Some(k) = self.keys.load().get(&id) {
            return *k;
        }
        let level = *meta.level();
        let key = match self.engine.key(&event_name(meta.target(), level)) {
            Ok(k) => Some(k),
            Err(_) => {
                self.counters.unnamed_callsites.fetch_add(1, Relaxed);
                self.engine
                    .key(&format!("log:{UNNAMED_TARGET}:{}", level_name(level)))
                    .ok()
            }
        };
        self.counters.callsites.fetch_add(1, Relaxed);
        let mut map = AHashMap::clone(&self.keys.load());
        map.insert(id, key);
        self.keys.store(Arc::new(map));
        key
    }
}

impl<S> Layer<S> for RingfoldLayer
where
    S: ::tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(
        &self,
        meta: &'static Metadata<'static>,
    ) -> ::tracing::subscriber::Interest {
        if meta.is_event() {
            self.key(meta);
        }
        ::tracing::subscriber::Interest::always()
    }

    fn on_event(&self, event: &::tracing::Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let Some(key) = self.key(meta) else {
            self.counters.unnamed_lost.fetch_add(1, Relaxed);
            return;
        };
        let mut visitor = RecordVisitor {
            message: Value::Unit,
            fields: Vec::new(),
            max: self.max_field_bytes,
            truncated: 0,
        };
        // One allocation, sized once, when the callsite has fields besides
        // the message.
        let n = meta.fields().len();
        if n > 1 || (n == 1 && meta.fields().field("message").is_none()) {
            visitor.fields.reserve_exact(n);
        }
        event.record(&mut visitor);
        if visitor.truncated > 0 {
            self.counters
                .truncated
                .fetch_add(visitor.truncated, Relaxed);
        }
        let span = if self.spans {
            ctx.event_span(event).map(|s| s.name())
        } else {
            None
        };
        let record = LogRecord {
            level: *meta.level(),
            target: meta.target(),
            message: visitor.message,
            fields: visitor.fields,
            span,
            timestamp: SystemTime::now(),
        };
        match self.engine.publish_key(key, record) {
            // A full ring is the engine's drop: counted there per prefix
            // (`Stats::dropped.full`, `Batch::dropped`), not here, so the
            // hot path writes no shared counter.
            Ok(()) | Err(PublishError::Full(_)) => {}
            Err(PublishError::ShutDown(_)) => {
                self.counters.after_shutdown.fetch_add(1, Relaxed);
            }
            Err(_) => {
                self.counters.other_errors.fetch_add(1, Relaxed);
            }
        }
    }
}

/// The marker ending a value cut at `max_field_bytes`.
const TRUNCATED: &str = "…[truncated]";

struct RecordVisitor {
    message: Value,
    fields: Vec<(&'static str, Value)>,
    max: usize,
    truncated: u64,
}

impl RecordVisitor {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.fields.push((field.name(), value));
        }
    }

    fn text(&mut self, s: &str) -> Value {
        if s.len() <= self.max {
            return Value::from(s);
        }
        self.truncated += 1;
        let cut = floor_char_boundary(s, self.max);
        let mut t = String::with_capacity(cut + TRUNCATED.len());
        t.push_str(&s[..cut]);
        t.push_str(TRUNCATED);
        Value::Text(t.into())
    }

    fn formatted(&mut self, args: fmt::Arguments<'_>) -> Value {
        let mut w = TextWriter {
            inline: [0; crate::SHORT_STR_MAX],
            len: 0,
            heap: None,
            max: self.max,
            truncated: false,
        };
        // An error only means the writer stopped at `max` (or the value's
        // own formatting failed): keep what was written.
        let _ = fmt::write(&mut w, args);
        if w.truncated {
            self.truncated += 1;
        }
        w.finish()
    }
}

impl Visit for RecordVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::F64(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::U64(value));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        let v = match i64::try_from(value) {
            Ok(v) => Value::I64(v),
            Err(_) => self.formatted(format_args!("{value}")),
        };
        self.put(field, v);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        let v = match u64::try_from(value) {
            Ok(v) => Value::U64(v),
            Err(_) => self.formatted(format_args!("{value}")),
        };
        self.put(field, v);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let v = self.text(value);
        self.put(field, v);
    }

    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        let v = match std::str::from_utf8(value) {
            Ok(s) => self.text(s),
            Err(_) => {
                let lossy = String::from_utf8_lossy(value);
                self.text(&lossy)
            }
        };
        self.put(field, v);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let v = self.formatted(format_args!("{value}"));
        self.put(field, v);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let v = self.formatted(format_args!("{value:?}"));
        self.put(field, v);
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Formats into an inline buffer first and onto the heap only past
/// `SHORT_STR_MAX` bytes; stops at `max` bytes.
struct TextWriter {
    inline: [u8; crate::SHORT_STR_MAX],
    len: usize,
    heap: Option<String>,
    max: usize,
    truncated: bool,
}

impl TextWriter {
    fn written(&self) -> usize {
        self.heap.as_ref().map_or(self.len, String::len)
    }

    fn finish(self) -> Value {
        match self.heap {
            Some(mut s) => {
                if self.truncated {
                    s.push_str(TRUNCATED);
                }
                Value::Text(s.into())
            }
            None => {
                let s = std::str::from_utf8(&self.inline[..self.len]).unwrap_or_default();
                if self.truncated {
                    Value::from(format!("{s}{TRUNCATED}"))
                } else {
                    ShortStr::new(s).map_or(Value::Unit, Value::Str)
                }
            }
        }
    }
}

impl fmt::Write for TextWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let written = self.written();
        let (piece, cut) = if written + s.len() > self.max {
            (
                &s[..floor_char_boundary(s, self.max.saturating_sub(written))],
                true,
            )
        } else {
            (s, false)
        };
        match self.heap.as_mut() {
            Some(h) => h.push_str(piece),
            None if self.len + piece.len() <= crate::SHORT_STR_MAX => {
                self.inline[self.len..self.len + piece.len()].copy_from_slice(piece.as_bytes());
                self.len += piece.len();
            }
            None => {
                let mut h = String::with_capacity((self.len + piece.len()).max(64));
                // Only whole `&str`s were copied in, so this is UTF-8.
                h.push_str(std::str::from_utf8(&self.inline[..self.len]).unwrap_or_default());
                h.push_str(piece);
                self.heap = Some(h);
            }
        }
        if cut {
            self.truncated = true;
            return Err(fmt::Error);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for target in [
            "my_app::db",
            "",
            "a",
            "a.b",
            "a:b",
            "a:::b",
            "::",
            ":::",
            "%2E",
            "x*y",
            "ünï::cødé",
            "spaces in target",
            "trailing::",
        ] {
            for level in [
                Level::TRACE,
                Level::DEBUG,
                Level::INFO,
                Level::WARN,
                Level::ERROR,
            ] {
                let name = event_name(target, level);
                assert!(
                    crate::intern::validate_name(&name, 256).is_ok(),
                    "{name:?} must be a valid name"
                );
                assert_eq!(
                    parse_event_name(&name),
                    Some((target.to_owned(), level)),
                    "{name}"
                );
            }
        }
        assert_eq!(parse_event_name("log:%FF:info"), None);
        assert_eq!(parse_event_name("log:a:loud"), None);
        assert_eq!(parse_event_name("data:a:info"), None);
        assert_eq!(parse_event_name("log:%4:info"), None);
    }

    #[test]
    fn text_writer_spills_and_truncates() {
        let mut v = RecordVisitor {
            message: Value::Unit,
            fields: Vec::new(),
            max: 30,
            truncated: 0,
        };
        assert!(matches!(
            v.formatted(format_args!("{}", "short")),
            Value::Str(_)
        ));
        let long = v.formatted(format_args!("{}", "a fairly long string of text"));
        assert_eq!(long.as_str(), Some("a fairly long string of text"));
        let cut = v.formatted(format_args!("{}", "ééééééééééééééééééééééééé"));
        let s = cut.as_str().unwrap();
        assert!(
            s.ends_with(TRUNCATED) && s.len() <= 30 + TRUNCATED.len(),
            "{s}"
        );
        assert_eq!(v.truncated, 1);
        let cut = v.text(&"x".repeat(100));
        assert_eq!(cut.as_str().unwrap().len(), 30 + TRUNCATED.len());
        assert_eq!(v.truncated, 2);
    }
}
