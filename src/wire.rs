//! The wire format: a [`Batch`] with its metadata, for shipping off the
//! process (feature `serde`).
//!
//! One batch is one JSON object, so any language reads it without a schema
//! tool. Format version [`FORMAT_VERSION`] (the `"v"` field) is 1:
//!
//! ```json
//! {
//!   "v": 1,
//!   "origin": {"host": "node-7", "instance": "6f1c0a9e3b2d4c11"},
//!   "prefix": "data:users",
//!   "name": "data:users:batch",
//!   "reason": "interval",
//!   "seq": 41, "last_seq": 41, "merged": 1,
//!   "opened_ns": 1765000000000000000, "closed_ns": 1765000000100000000,
//!   "dropped": 0, "lagged": 0, "folded": 0,
//!   "events": [
//!     {"name": "data:users:created", "ts_ns": 1765000000000001000, "sub_key": 0, "payload": 7}
//!   ],
//!   "aggregates": [
//!     {"name": "gpu:0:util", "count": 2, "sum": 3.0, "sum_exact": "3", "min": 1.0, "max": 2.0,
//!      "first": {"value": 1.0, "ts_ns": 1765000000000002000},
//!      "last": {"value": 2.0, "ts_ns": 1765000000000003000}}
//!   ],
//!   "histograms": [
//!     {"name": "rpc:get:latency_ms", "count": 3, "sum": 6.5, "min": 1.0, "max": 4.0,
//!      "p50": 1.5, "p90": 4.0, "p99": 4.0, "p999": 4.0, "alpha": 0.01,
//!      "buckets": [[1.0, 1], [1.5024, 1], [4.0, 1]]}
//!   ]
//! }
//! ```
//!
//! - `origin`: who sealed the batch. `host` is the machine's host name,
//!   `instance` 16 hex digits unique per engine run ([`Origin::new`]), so
//!   two runs on one host, whose sequence numbers both start at 0, are
//!   told apart. `(origin, prefix, seq..=last_seq)` names a batch uniquely.
//! - `seq`, `last_seq`, `merged`: [`Batch::seq`], [`Batch::last_seq`],
//!   [`Batch::merged`]: the per-prefix window numbers the batch covers.
//! - `reason`: `interval`, `count`, `urgent`, `passthrough`, `flush` or
//!   `shutdown` ([`BatchReason`]; a reader should accept others).
//! - Times are Unix nanoseconds (`opened_ns`, `closed_ns`, an event's
//!   `ts_ns`, an aggregate's `first`/`last`), mapped from the engine's
//!   monotonic clock through the batch's own wall-clock reading. Readers in
//!   languages whose numbers are doubles (JavaScript) get them to about a
//!   quarter of a microsecond.
//! - `dropped`, `lagged`, `folded`: [`Batch::dropped`], [`Batch::lagged`],
//!   [`Batch::folded`]: loss and folding, in band.
//! - `events[].payload`: the payload's own serde form (`T: Serialize`); a
//!   [`Value`] is one key naming its type: `{"u64": 3}`,
//!   `{"i64": -2}`, `{"f64": 1.5}`, `{"bool": true}`, `{"str": "ok"}`, or
//!   the string `"unit"`. JSON has no NaN or infinity: serde_json writes a
//!   non-finite float as `null`, which a reader expecting a number refuses
//!   (a decode error, counted by the reader, not silently a number).
//! - `aggregates[].sum_exact`: the exact integer sum as a decimal string
//!   (an `i128` exceeds every JSON reader's integers), or `null` once a
//!   float reading was folded in.
//! - `histograms` ([`Batch::histograms`], `Policy::histogram`): count,
//!   sum, min and max, the quantiles p50 to p99.9 as the sketch gives them
//!   (within `alpha` relative error), and the sketch's non-empty buckets
//!   as `[value, count]` pairs in ascending order of value (each value
//!   within `alpha` of the samples it stands for, clamped to `[min, max]`):
//!   a reader gets any other quantile from them
//!   ([`WireHistogram::quantile`], the same figure the sketch gives) or
//!   merges windows by adding the counts of equal values. Added to
//!   version 1 with a default: a batch without the field reads as having
//!   none.
//!
//! Version changes: a reader refuses a batch whose `v` it does not know
//! ([`WireError::Version`]); fields added in a later version with a default
//! keep the number, anything else bumps it.
//!
//! ```
//! use ringfold::wire::{self, Origin, WireBatch};
//! use ringfold::{Batch, Engine, SubscribeOptions};
//! use std::sync::{Arc, Mutex};
//! let origin = Origin::new();
//! let encoded = Arc::new(Mutex::new(Vec::new()));
//! let out = encoded.clone();
//! let from = origin.clone();
//! let engine = Engine::<u64>::builder().build()?;
//! let _sub = engine.subscribe_with("data:*", SubscribeOptions::new("wire"), move |b: &Batch<u64>| {
//!     out.lock().unwrap().push((b.seq(), wire::encode(b, &from)));
//! })?;
//! engine.publish("data:users:created", 7u64)?;
//! engine.flush()?;
//! let (seq, bytes) = encoded.lock().unwrap().remove(0);
//! let bytes = bytes?;
//! let back: WireBatch<u64> = wire::decode(&bytes)?;
//! assert_eq!(back.origin, origin);
//! assert_eq!(back.prefix, "data:users");
//! assert_eq!((back.seq, back.last_seq), (seq, seq));
//! assert_eq!(back.events[0].payload, 7);
//! # engine.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::delivery::Batch;
use crate::event::{Aggregate, BatchReason, Event};
use crate::histogram::Histogram;
use crate::value::{ShortStr, Value};

/// The format version this build writes and reads (the `"v"` field).
pub const FORMAT_VERSION: u32 = 1;

/// Who sealed a batch: a host name and an id unique per engine run.
///
/// ```
/// use ringfold::wire::Origin;
/// let a = Origin::new();
/// let b = Origin::new();
/// assert_eq!(a.host, b.host);
/// assert_ne!(a.instance, b.instance);
/// assert_eq!(a.to_string(), format!("{}/{:016x}", a.host, a.instance));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Origin {
    /// The machine's host name (`/proc/sys/kernel/hostname`, else
    /// `$HOSTNAME`, else `"unknown"`).
    pub host: String,
    /// Unique per engine run: written as 16 hex digits.
    #[serde(with = "hex_u64")]
    pub instance: u64,
}

impl Origin {
    /// This host, with a fresh random instance id (std's randomly seeded
    /// hasher over the time, the process id and a counter).
    pub fn new() -> Origin {
        Origin {
            host: host_name(),
            instance: fresh_instance(),
        }
    }

    /// An origin with the given parts (e.g. a stable instance name).
    pub fn with(host: impl Into<String>, instance: u64) -> Origin {
        Origin {
            host: host.into(),
            instance,
        }
    }
}

impl Default for Origin {
    fn default() -> Self {
        Origin::new()
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:016x}", self.host, self.instance)
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn fresh_instance() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.finish()
}

mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{v:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        u64::from_str_radix(&s, 16).map_err(serde::de::Error::custom)
    }
}

/// A decoded batch: every field of the format, owned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireBatch<T> {
    /// Format version ([`FORMAT_VERSION`]).
    pub v: u32,
    /// Who sealed it.
    pub origin: Origin,
    /// The prefix, e.g. `data:users`.
    pub prefix: String,
    /// `"<prefix>:batch"`.
    pub name: String,
    /// Why it was sealed (`interval`, `count`, `urgent`, `passthrough`,
    /// `flush`, `shutdown`; see [`WireBatch::batch_reason`]).
    pub reason: String,
    /// First window covered ([`Batch::seq`]).
    pub seq: u64,
    /// Last window covered ([`Batch::last_seq`]).
    pub last_seq: u64,
    /// Windows carried ([`Batch::merged`]).
    pub merged: u64,
    /// Window opened, Unix nanoseconds.
    pub opened_ns: u64,
    /// Window closed, Unix nanoseconds.
    pub closed_ns: u64,
    /// [`Batch::dropped`].
    pub dropped: u64,
    /// [`Batch::lagged`].
    pub lagged: u64,
    /// [`Batch::folded`].
    pub folded: u64,
    /// The events.
    pub events: Vec<WireEvent<T>>,
    /// The aggregates.
    pub aggregates: Vec<WireAggregate>,
    /// The histograms (absent in batches written before they existed:
    /// read as none).
    #[serde(default)]
    pub histograms: Vec<WireHistogram>,
}

impl<T> WireBatch<T> {
    /// The reason as a [`BatchReason`], if this build knows it.
    ///
    /// ```
    /// # use ringfold::wire::{WireBatch, Origin};
    /// # let mut b = WireBatch::<u64> { v: 1, origin: Origin::with("h", 1), prefix: "p".into(),
    /// #   name: "p:batch".into(), reason: "flush".into(), seq: 0, last_seq: 0, merged: 1,
    /// #   opened_ns: 0, closed_ns: 0, dropped: 0, lagged: 0, folded: 0, events: vec![],
    /// #   aggregates: vec![], histograms: vec![] };
    /// assert_eq!(b.batch_reason(), Some(ringfold::BatchReason::Flush));
    /// ```
    pub fn batch_reason(&self) -> Option<BatchReason> {
        Some(match self.reason.as_str() {
            "interval" => BatchReason::Interval,
            "count" => BatchReason::Count,
            "urgent" => BatchReason::Urgent,
            "passthrough" => BatchReason::Passthrough,
            "flush" => BatchReason::Flush,
            "shutdown" => BatchReason::Shutdown,
            _ => return None,
        })
    }

    /// `seq..=last_seq`.
    pub fn seqs(&self) -> std::ops::RangeInclusive<u64> {
        self.seq..=self.last_seq
    }
}

/// One event of a [`WireBatch`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireEvent<T> {
    /// Full event name.
    pub name: String,
    /// Timestamp, Unix nanoseconds.
    pub ts_ns: u64,
    /// The caller's sub-key (0 when none).
    pub sub_key: u64,
    /// The payload.
    pub payload: T,
}

/// One reading of an aggregate: value and Unix-nanosecond timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WireReading {
    /// The reading.
    pub value: f64,
    /// When, Unix nanoseconds.
    pub ts_ns: u64,
}

/// One aggregate of a [`WireBatch`] ([`Aggregate`]'s figures).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireAggregate {
    /// Event name aggregated.
    pub name: String,
    /// Readings.
    pub count: u64,
    /// Sum, as a float.
    pub sum: f64,
    /// Exact integer sum as a decimal string, when every reading was an
    /// integer.
    pub sum_exact: Option<String>,
    /// Smallest reading.
    pub min: f64,
    /// Largest reading.
    pub max: f64,
    /// First reading of the window.
    pub first: WireReading,
    /// Last reading of the window.
    pub last: WireReading,
}

impl WireAggregate {
    /// [`sum_exact`](Self::sum_exact) parsed.
    pub fn sum_exact_i128(&self) -> Option<i128> {
        self.sum_exact.as_deref().and_then(|s| s.parse().ok())
    }

    /// Arithmetic mean.
    pub fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }
}

/// One histogram of a [`WireBatch`] ([`Histogram`]'s figures and its
/// sketch's buckets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireHistogram {
    /// Event name.
    pub name: String,
    /// Samples.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Median, within `alpha` relative error.
    pub p50: f64,
    /// 90th percentile, likewise.
    pub p90: f64,
    /// 99th percentile, likewise.
    pub p99: f64,
    /// 99.9th percentile, likewise.
    pub p999: f64,
    /// The sketch's relative accuracy.
    pub alpha: f64,
    /// Non-empty buckets, `(value, count)`, in ascending order of value.
    pub buckets: Vec<(f64, u64)>,
}

impl WireHistogram {
    /// The `q`-quantile from the buckets (`q` clamped to `[0, 1]`), as
    /// [`Histogram::quantile`] gives it: the bucket holding the sample of
    /// rank `⌊q (count - 1)⌋`. `None` without buckets.
    ///
    /// ```
    /// use ringfold::wire::WireHistogram;
    /// let h = WireHistogram { name: "x".into(), count: 4, sum: 10.0, min: 1.0, max: 4.0,
    ///     p50: 2.0, p90: 4.0, p99: 4.0, p999: 4.0, alpha: 0.01,
    ///     buckets: vec![(1.0, 1), (2.0, 1), (3.0, 1), (4.0, 1)] };
    /// assert_eq!(h.quantile(0.5), Some(2.0));
    /// assert_eq!(h.quantile(1.0), Some(4.0));
    /// ```
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n: u64 = self.buckets.iter().map(|b| b.1).sum();
        if n == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        let rank = (q * (n - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        for &(value, c) in &self.buckets {
            seen += c;
            if seen > rank {
                return Some(value);
            }
        }
        self.buckets.last().map(|b| b.0)
    }

    /// Arithmetic mean.
    pub fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }
}

impl From<&Histogram> for WireHistogram {
    fn from(h: &Histogram) -> Self {
        WireHistogram {
            name: h.name().to_owned(),
            count: h.count(),
            sum: h.sum(),
            min: h.min(),
            max: h.max(),
            p50: h.p50(),
            p90: h.p90(),
            p99: h.p99(),
            p999: h.p999(),
            alpha: h.sketch().alpha(),
            buckets: h.sketch().buckets().collect(),
        }
    }
}

/// A histogram serialises as a [`WireHistogram`].
impl Serialize for Histogram {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireHistogram::from(self).serialize(s)
    }
}

/// Why encoding or decoding failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum WireError {
    /// The bytes are not a batch of this format (or the payload type does
    /// not match), or a payload could not be serialised.
    Json(serde_json::Error),
    /// A batch of a format version this build does not read.
    Version {
        /// The version found.
        found: u64,
        /// The version this build reads.
        supported: u32,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Json(e) => write!(f, "wire format: {e}"),
            WireError::Version { found, supported } => write!(
                f,
                "wire format version {found} is not supported (this build reads {supported})"
            ),
        }
    }
}

impl std::error::Error for WireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WireError::Json(e) => Some(e),
            WireError::Version { .. } => None,
        }
    }
}

impl From<serde_json::Error> for WireError {
    fn from(e: serde_json::Error) -> Self {
        WireError::Json(e)
    }
}

/// Encodes `batch` as JSON (format [`FORMAT_VERSION`]), sealed by `origin`.
pub fn encode<T: Serialize>(batch: &Batch<T>, origin: &Origin) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(256 + 64 * batch.len());
    encode_into(batch, origin, &mut out)?;
    Ok(out)
}

/// [`encode`] appending to `out` (which may be reused across batches).
pub fn encode_into<T: Serialize>(
    batch: &Batch<T>,
    origin: &Origin,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    let clock = Clock {
        instant: batch.opened_at(),
        unix_ns: unix_ns_of(batch.opened_at_system()),
    };
    let view = BatchOut {
        v: FORMAT_VERSION,
        origin,
        prefix: batch.prefix(),
        name: batch.name(),
        reason: batch.reason().as_str(),
        seq: batch.seq(),
        last_seq: batch.last_seq(),
        merged: batch.merged(),
        opened_ns: clock.at(batch.opened_at()),
        closed_ns: clock.at(batch.closed_at()),
        dropped: batch.dropped(),
        lagged: batch.lagged(),
        folded: batch.folded(),
        events: EventsOut { batch, clock },
        aggregates: AggregatesOut {
            aggregates: batch.aggregates(),
            clock,
        },
        histograms: batch.histograms(),
    };
    serde_json::to_writer(out, &view)?;
    Ok(())
}

/// Decodes one batch; refuses another format version with
/// [`WireError::Version`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<WireBatch<T>, WireError> {
    match serde_json::from_slice::<WireBatch<T>>(bytes) {
        Ok(b) if b.v == FORMAT_VERSION => Ok(b),
        Ok(b) => Err(WireError::Version {
            found: u64::from(b.v),
            supported: FORMAT_VERSION,
        }),
        Err(e) => {
            #[derive(Deserialize)]
            struct Head {
                v: u64,
            }
            match serde_json::from_slice::<Head>(bytes) {
                Ok(h) if h.v != u64::from(FORMAT_VERSION) => Err(WireError::Version {
                    found: h.v,
                    supported: FORMAT_VERSION,
                }),
                _ => Err(WireError::Json(e)),
            }
        }
    }
}

fn unix_ns_of(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// Maps the monotonic clock to Unix nanoseconds through one reading.
#[derive(Clone, Copy)]
struct Clock {
    instant: Instant,
    unix_ns: i128,
}

impl Clock {
    fn now() -> Clock {
        Clock {
            instant: Instant::now(),
            unix_ns: unix_ns_of(SystemTime::now()),
        }
    }

    fn at(&self, t: Instant) -> u64 {
        let ns = match t.checked_duration_since(self.instant) {
            Some(after) => self.unix_ns + after.as_nanos() as i128,
            None => self.unix_ns - self.instant.duration_since(t).as_nanos() as i128,
        };
        ns.clamp(0, u64::MAX as i128) as u64
    }
}

#[derive(Serialize)]
struct BatchOut<'a, T> {
    v: u32,
    origin: &'a Origin,
    prefix: &'a str,
    name: &'a str,
    reason: &'static str,
    seq: u64,
    last_seq: u64,
    merged: u64,
    opened_ns: u64,
    closed_ns: u64,
    dropped: u64,
    lagged: u64,
    folded: u64,
    events: EventsOut<'a, T>,
    aggregates: AggregatesOut<'a>,
    histograms: &'a [Histogram],
}

struct EventsOut<'a, T> {
    batch: &'a Batch<T>,
    clock: Clock,
}

impl<T: Serialize> Serialize for EventsOut<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let events = self.batch.events();
        let mut seq = s.serialize_seq(Some(events.len()))?;
        for e in events.iter() {
            seq.serialize_element(&EventOut {
                event: e,
                clock: self.clock,
            })?;
        }
        seq.end()
    }
}

struct EventOut<'a, T> {
    event: &'a Event<T>,
    clock: Clock,
}

impl<T: Serialize> Serialize for EventOut<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Out<'a, T> {
            name: &'a str,
            ts_ns: u64,
            sub_key: u64,
            payload: &'a T,
        }
        Out {
            name: self.event.name(),
            ts_ns: self.clock.at(self.event.timestamp()),
            sub_key: self.event.sub_key(),
            payload: self.event.payload(),
        }
        .serialize(s)
    }
}

struct AggregatesOut<'a> {
    aggregates: &'a [Aggregate],
    clock: Clock,
}

impl Serialize for AggregatesOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.aggregates.len()))?;
        for a in self.aggregates {
            seq.serialize_element(&wire_aggregate(a, self.clock))?;
        }
        seq.end()
    }
}

fn wire_aggregate(a: &Aggregate, clock: Clock) -> WireAggregate {
    let (first, first_at) = a.first();
    let (last, last_at) = a.last();
    WireAggregate {
        name: a.name().to_owned(),
        count: a.count(),
        sum: a.sum(),
        sum_exact: a.sum_exact().map(|s| s.to_string()),
        min: a.min(),
        max: a.max(),
        first: WireReading {
            value: first,
            ts_ns: clock.at(first_at),
        },
        last: WireReading {
            value: last,
            ts_ns: clock.at(last_at),
        },
    }
}

impl From<&Aggregate> for WireAggregate {
    /// The aggregate's figures; its instants mapped to Unix time through
    /// the clocks' readings now (a batch's own encoding uses the batch's
    /// reading instead).
    fn from(a: &Aggregate) -> Self {
        wire_aggregate(a, Clock::now())
    }
}

/// An aggregate serialises as a [`WireAggregate`] (its instants mapped to
/// Unix time through the clocks' readings at serialisation).
impl Serialize for Aggregate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireAggregate::from(self).serialize(s)
    }
}

/// The JSON form of a [`Value`]: one key naming its type.
#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum ValueOut<'a> {
    Unit,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(&'a str),
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum ValueIn {
    Unit,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(String),
}

/// `{"u64": 3}`, `{"i64": -2}`, `{"f64": 1.5}`, `{"bool": true}`,
/// `{"str": "ok"}` (both [`Value::Str`] and [`Value::Text`]) or `"unit"`.
///
/// ```
/// use ringfold::Value;
/// let json = serde_json::to_string(&Value::from(3u32))?;
/// assert_eq!(json, r#"{"u64":3}"#);
/// let back: Value = serde_json::from_str(&json)?;
/// assert_eq!(back, Value::U64(3));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Unit => ValueOut::Unit,
            Value::Bool(v) => ValueOut::Bool(*v),
            Value::I64(v) => ValueOut::I64(*v),
            Value::U64(v) => ValueOut::U64(*v),
            Value::F64(v) => ValueOut::F64(*v),
            Value::Str(v) => ValueOut::Str(v.as_str()),
            Value::Text(v) => ValueOut::Str(v),
        }
        .serialize(s)
    }
}

/// A string of at most [`SHORT_STR_MAX`](crate::SHORT_STR_MAX) bytes
/// becomes [`Value::Str`], a longer one [`Value::Text`].
impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match ValueIn::deserialize(d)? {
            ValueIn::Unit => Value::Unit,
            ValueIn::Bool(v) => Value::Bool(v),
            ValueIn::I64(v) => Value::I64(v),
            ValueIn::U64(v) => Value::U64(v),
            ValueIn::F64(v) => Value::F64(v),
            ValueIn::Str(s) => match ShortStr::new(&s) {
                Some(short) => Value::Str(short),
                None => Value::Text(s.into()),
            },
        })
    }
}

#[cfg(all(test, not(ringfold_loom)))]
mod tests {
    use super::*;
    use crate::{Engine, Policy, SubscribeOptions};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    type Kept<T> = Arc<Mutex<Vec<Batch<T>>>>;

    /// Subscribes a callback that keeps every batch (a receiver drained on
    /// the flushing thread would stall the flush).
    fn keep<T: Send + Sync + 'static>(
        engine: &Engine<T>,
        pattern: &str,
    ) -> (Kept<T>, crate::Subscription<T>) {
        let kept: Kept<T> = Arc::default();
        let out = kept.clone();
        let sub = engine
            .subscribe_with(
                pattern,
                SubscribeOptions::new("keep"),
                move |b: &Batch<T>| out.lock().unwrap().push(b.clone()),
            )
            .unwrap();
        (kept, sub)
    }

    #[test]
    fn batch_round_trips_with_every_field() {
        let engine = Engine::<Value>::builder()
            .policy("gpu:*", Policy::aggregate(Duration::from_secs(60), 1000))
            .sampled()
            .build()
            .unwrap();
        let (kept, _sub) = keep(&engine, "*");
        engine.publish("data:users:created", 7u64).unwrap();
        engine
            .publish("data:users:name", "a name longer than twenty-two bytes")
            .unwrap();
        engine.publish("data:users:flag", true).unwrap();
        engine.publish("gpu:0:util", 1u64 << 60).unwrap();
        engine.publish("gpu:0:util", 3u64).unwrap();
        engine.flush().unwrap();
        let origin = Origin::new();
        let mut seen = 0;
        for batch in kept.lock().unwrap().iter() {
            let bytes = encode(batch, &origin).unwrap();
            let back: WireBatch<Value> = decode(&bytes).unwrap();
            assert_eq!(back.v, FORMAT_VERSION);
            assert_eq!(back.origin, origin);
            assert_eq!(back.prefix, batch.prefix());
            assert_eq!(back.name, batch.name());
            assert_eq!(back.batch_reason(), Some(batch.reason()));
            assert_eq!(back.seqs(), batch.seq()..=batch.last_seq());
            assert_eq!(back.merged, batch.merged());
            assert_eq!(back.opened_ns as i128, unix_ns_of(batch.opened_at_system()));
            assert!(back.closed_ns >= back.opened_ns);
            assert_eq!(
                (back.dropped, back.lagged, back.folded),
                (batch.dropped(), batch.lagged(), batch.folded())
            );
            assert_eq!(back.events.len(), batch.len());
            for (w, e) in back.events.iter().zip(batch.events().iter()) {
                assert_eq!(w.name, e.name());
                assert_eq!(&w.payload, e.payload());
                assert_eq!(w.sub_key, e.sub_key());
                assert!(w.ts_ns > 0);
            }
            assert_eq!(back.aggregates.len(), batch.aggregates().len());
            for (w, a) in back.aggregates.iter().zip(batch.aggregates()) {
                assert_eq!(w.name, a.name());
                assert_eq!(w.count, a.count());
                assert_eq!(w.sum_exact_i128(), a.sum_exact());
                assert_eq!((w.min, w.max), (a.min(), a.max()));
            }
            // Re-encoding the decoded batch gives the same bytes.
            assert_eq!(serde_json::to_vec(&back).unwrap(), bytes);
            seen += 1;
        }
        assert_eq!(seen, 2);
        engine.shutdown().unwrap();
    }

    #[test]
    fn histograms_round_trip_with_their_buckets() {
        let engine = Engine::<Value>::builder()
            .policy("rpc:*", Policy::histogram(Duration::from_secs(60), 10_000))
            .sampled()
            .build()
            .unwrap();
        let (kept, _sub) = keep(&engine, "*");
        for v in 1..=500i64 {
            engine.publish("rpc:api:get", v * v - 1000).unwrap();
            engine.publish("rpc:api:put", (v as f64) / 8.0).unwrap();
        }
        engine.flush().unwrap();
        let origin = Origin::new();
        let kept = kept.lock().unwrap();
        assert_eq!(kept.len(), 1);
        let batch = &kept[0];
        let bytes = encode(batch, &origin).unwrap();
        let back: WireBatch<Value> = decode(&bytes).unwrap();
        assert_eq!(back.histograms.len(), 2);
        // serde_json's default float parser may read a value back one bit
        // off (its `float_roundtrip` feature is not on): far below alpha.
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-15 * a.abs().max(b.abs());
        for (w, h) in back.histograms.iter().zip(batch.histograms()) {
            assert_eq!(w.name, h.name());
            assert_eq!((w.count, w.alpha), (h.count(), 0.01));
            for (a, b) in [(w.sum, h.sum()), (w.min, h.min()), (w.max, h.max())] {
                assert!(close(a, b), "{a} vs {b}");
            }
            for (a, b) in [
                (w.p50, h.p50()),
                (w.p90, h.p90()),
                (w.p99, h.p99()),
                (w.p999, h.p999()),
            ] {
                assert!(close(a, b), "{a} vs {b}");
            }
            let buckets: Vec<(f64, u64)> = h.sketch().buckets().collect();
            assert_eq!(w.buckets.len(), buckets.len());
            for (a, b) in w.buckets.iter().zip(&buckets) {
                assert!(close(a.0, b.0) && a.1 == b.1, "{a:?} vs {b:?}");
            }
            assert_eq!(w.buckets.iter().map(|b| b.1).sum::<u64>(), 500);
            // Any quantile from the buckets: the sketch's own figure.
            for q in [0.0, 0.1, 0.5, 0.75, 0.9, 0.999, 1.0] {
                assert!(close(w.quantile(q).unwrap(), h.quantile(q)), "q={q}");
            }
        }
        // A batch written without the field reads as having none.
        let mut old: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        old.as_object_mut().unwrap().remove("histograms");
        let old: WireBatch<Value> = decode(&serde_json::to_vec(&old).unwrap()).unwrap();
        assert!(old.histograms.is_empty());
        engine.shutdown().unwrap();
    }

    #[test]
    fn values_round_trip() {
        for v in [
            Value::Unit,
            Value::Bool(false),
            Value::I64(-5),
            Value::U64(u64::MAX),
            Value::F64(0.25),
            Value::from("short"),
            Value::from("a string that is longer than twenty-two bytes"),
        ] {
            let json = serde_json::to_string(&v).unwrap();
            let back: Value = serde_json::from_str(&json).unwrap();
            assert_eq!(back, v, "{json}");
        }
        assert_eq!(serde_json::to_string(&Value::Unit).unwrap(), r#""unit""#);
    }

    #[test]
    fn other_versions_and_garbage_are_typed_errors() {
        let err = decode::<u64>(br#"{"v": 9, "whatever": true}"#).unwrap_err();
        assert!(matches!(err, WireError::Version { found: 9, .. }), "{err}");
        let err = decode::<u64>(b"not json").unwrap_err();
        assert!(matches!(err, WireError::Json(_)), "{err}");
    }

    #[test]
    fn origins_differ_per_run_and_round_trip() {
        let a = Origin::new();
        let b = Origin::new();
        assert_ne!(a.instance, b.instance);
        let json = serde_json::to_string(&a).unwrap();
        assert!(json.contains(&format!("{:016x}", a.instance)));
        assert_eq!(serde_json::from_str::<Origin>(&json).unwrap(), a);
    }

    #[test]
    fn aggregate_serialises() {
        let engine = Engine::<f64>::builder()
            .policy("gpu:*", Policy::aggregate(Duration::from_secs(60), 1000))
            .sample_with(|v| Some(*v))
            .build()
            .unwrap();
        let (kept, _sub) = keep(&engine, "gpu:*");
        engine.publish("gpu:0:util", 2.5).unwrap();
        engine.flush().unwrap();
        let batch = kept.lock().unwrap()[0].clone();
        let json = serde_json::to_value(&batch.aggregates()[0]).unwrap();
        assert_eq!(json["count"], 1);
        assert_eq!(json["sum"], 2.5);
        assert!(json["sum_exact"].is_null());
        engine.shutdown().unwrap();
    }
}
