//! The JetStream source: a durable pull consumer, decoded batches,
//! acknowledged only after the caller took them, and per-origin,
//! per-prefix gap and duplicate accounting.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::{parse_url, valid_name, Error};
use crate::wire::{self, Origin, WireBatch};

/// How a [`Source`] reads.
///
/// ```
/// use ringfold::nats::SourceConfig;
/// use std::time::Duration;
/// let config = SourceConfig::new("nats://127.0.0.1:4222")
///     .durable("rollup")
///     .ack_wait(Duration::from_secs(10));
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct SourceConfig {
    url: String,
    stream: String,
    durable: String,
    filter: Option<String>,
    ack_wait: Duration,
    max_ack_pending: i64,
}

impl SourceConfig {
    /// Defaults: stream `RINGFOLD`, durable consumer `ringfold-source`,
    /// every subject, ack wait 30 s, 1000 unacknowledged at most.
    pub fn new(url: impl Into<String>) -> Self {
        SourceConfig {
            url: url.into(),
            stream: "RINGFOLD".to_owned(),
            durable: "ringfold-source".to_owned(),
            filter: None,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1000,
        }
    }

    /// Stream name.
    pub fn stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = stream.into();
        self
    }

    /// Durable consumer name: a reader restarted under the same name goes
    /// on where the previous one acknowledged.
    pub fn durable(mut self, name: impl Into<String>) -> Self {
        self.durable = name.into();
        self
    }

    /// Reads only subjects matching `filter` (e.g. `ringfold.gpu.>`).
    pub fn filter(mut self, filter: impl Into<String>) -> Self {
        self.filter = Some(filter.into());
        self
    }

    /// How long the server waits for an acknowledgement before it
    /// redelivers.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }

    /// Messages delivered and not yet acknowledged, at most.
    pub fn max_ack_pending(mut self, n: i64) -> Self {
        self.max_ack_pending = n;
        self
    }
}

/// A source's counters.
///
/// ```
/// let s = ringfold::nats::SourceStats::default();
/// assert_eq!((s.gaps, s.duplicates), (0, 0));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Messages received.
    pub messages: u64,
    /// Batches decoded.
    pub batches: u64,
    /// Events in them.
    pub events: u64,
    /// Messages acknowledged.
    pub acked: u64,
    /// Messages handed back for redelivery (a handler's error, or
    /// [`Delivery::nak`]).
    pub nacked: u64,
    /// Messages that did not decode: terminated on the server (never
    /// redelivered) and counted here.
    pub undecodable: u64,
    /// Batches whose windows (`seq..=last_seq`) this source had already
    /// seen from their origin and prefix.
    pub duplicates: u64,
    /// Messages the server delivered more than once (its count).
    pub redelivered: u64,
    /// Windows missing now: per origin and prefix, the numbers from 0 to
    /// the highest seen that no batch covered (a window still in flight
    /// counts until it arrives).
    pub gaps: u64,
    /// Origin and prefix pairs seen.
    pub series: u64,
}

/// The windows seen from one origin and prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqRanges {
    /// The origin.
    pub origin: Origin,
    /// The prefix.
    pub prefix: String,
    /// Disjoint, sorted, inclusive ranges of window numbers seen.
    pub ranges: Vec<(u64, u64)>,
}

impl SeqRanges {
    /// Windows missing between 0 and the highest seen.
    pub fn missing(&self) -> u64 {
        let mut next = 0u64;
        let mut missing = 0;
        for &(a, b) in &self.ranges {
            missing += a.saturating_sub(next);
            next = b.saturating_add(1);
        }
        missing
    }

    /// Windows seen.
    pub fn seen(&self) -> u64 {
        self.ranges.iter().map(|&(a, b)| b - a + 1).sum()
    }
}

/// Per (origin, prefix): sorted disjoint ranges.
#[derive(Default)]
struct Tracker {
    series: BTreeMap<(Origin, String), Vec<(u64, u64)>>,
}

impl Tracker {
    /// Records `a..=b`; true if any of it was seen before.
    fn record(&mut self, origin: &Origin, prefix: &str, a: u64, b: u64) -> bool {
        let (a, b) = (a.min(b), a.max(b));
        let ranges = self
            .series
            .entry((origin.clone(), prefix.to_owned()))
            .or_default();
        let overlap = ranges.iter().any(|&(x, y)| a <= y && x <= b);
        ranges.push((a, b));
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for &(x, y) in ranges.iter() {
            match merged.last_mut() {
                Some(last) if x <= last.1.saturating_add(1) => last.1 = last.1.max(y),
                _ => merged.push((x, y)),
            }
        }
        *ranges = merged;
        overlap
    }

    fn snapshot(&self) -> Vec<SeqRanges> {
        self.series
            .iter()
            .map(|((origin, prefix), ranges)| SeqRanges {
                origin: origin.clone(),
                prefix: prefix.clone(),
                ranges: ranges.clone(),
            })
            .collect()
    }
}

#[derive(Default)]
struct Counters {
    messages: AtomicU64,
    batches: AtomicU64,
    events: AtomicU64,
    acked: AtomicU64,
    nacked: AtomicU64,
    undecodable: AtomicU64,
    duplicates: AtomicU64,
    redelivered: AtomicU64,
}

struct Shared {
    counters: Counters,
    tracker: Mutex<Tracker>,
}

/// One decoded batch from the stream, not yet acknowledged: call
/// [`ack`](Self::ack) once it is safely handled (or drop it, and the
/// server redelivers it after the ack wait).
pub struct Delivery<T> {
    /// The batch.
    pub batch: WireBatch<T>,
    /// Its windows had been seen before by this source (a redelivery, or
    /// a batch stored twice).
    pub duplicate: bool,
    /// How many times the server delivered it (1 the first time).
    pub delivered: u64,
    /// Its sequence number in the stream.
    pub stream_seq: u64,
    message: jetstream::Message,
    shared: Arc<Shared>,
}

impl<T> Delivery<T> {
    /// Acknowledges it: the server will not deliver it again.
    pub async fn ack(self) -> Result<(), Error> {
        self.message
            .ack()
            .await
            .map_err(|e| Error::JetStream(e.to_string()))?;
        self.shared.counters.acked.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Hands it back: the server redelivers it.
    pub async fn nak(self) -> Result<(), Error> {
        self.message
            .ack_with(AckKind::Nak(None))
            .await
            .map_err(|e| Error::JetStream(e.to_string()))?;
        self.shared.counters.nacked.fetch_add(1, Relaxed);
        Ok(())
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Delivery<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("origin", &self.batch.origin)
            .field("prefix", &self.batch.prefix)
            .field("seqs", &self.batch.seqs())
            .field("duplicate", &self.duplicate)
            .field("delivered", &self.delivered)
            .field("stream_seq", &self.stream_seq)
            .finish()
    }
}

/// Reads a stream of batches through a durable pull consumer, as a
/// [`Stream`](futures_core::Stream) of [`Delivery`] items (each acked by
/// the caller), or through [`run`](Self::run), which acknowledges a batch
/// only after the handler returned `Ok`.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use ringfold::nats::{Source, SourceConfig};
/// use ringfold::Value;
/// let mut source = Source::<Value>::connect(SourceConfig::new("nats://127.0.0.1:4222")).await?;
/// source
///     .run(|batch| {
///         println!("{} {} #{}", batch.origin, batch.prefix, batch.seq);
///         Ok::<(), std::io::Error>(())
///     })
///     .await?;
/// # Ok(()) }
/// ```
pub struct Source<T> {
    messages: pull::Stream,
    shared: Arc<Shared>,
    _payload: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Source<T> {
    /// Connects and binds the durable consumer (creating it if missing);
    /// [`Error::UnknownStream`] if the stream does not exist.
    pub async fn connect(config: SourceConfig) -> Result<Self, Error> {
        let addrs = parse_url(&config.url)?;
        if !valid_name(&config.stream) || !valid_name(&config.durable) {
            return Err(Error::BadConfig(format!(
                "stream {:?} or consumer {:?} is not a NATS name",
                config.stream, config.durable
            )));
        }
        let client = async_nats::ConnectOptions::new()
            .max_reconnects(None)
            .connect(addrs)
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        let js = jetstream::new(client);
        let stream = match js.get_stream(&config.stream).await {
            Ok(s) => s,
            Err(e) => {
                use jetstream::context::GetStreamErrorKind;
                return Err(match e.kind() {
                    GetStreamErrorKind::JetStream(j) if j.code() == 404 => {
                        Error::UnknownStream(config.stream.clone())
                    }
                    _ => Error::JetStream(e.to_string()),
                });
            }
        };
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                &config.durable,
                pull::Config {
                    durable_name: Some(config.durable.clone()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: config.ack_wait,
                    max_ack_pending: config.max_ack_pending,
                    filter_subject: config.filter.clone().unwrap_or_default(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| Error::JetStream(e.to_string()))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| Error::JetStream(e.to_string()))?;
        Ok(Source {
            messages,
            shared: Arc::new(Shared {
                counters: Counters::default(),
                tracker: Mutex::new(Tracker::default()),
            }),
            _payload: PhantomData,
        })
    }

    /// The next delivery, waiting as long as it takes; `None` if the
    /// consumer's stream ended.
    pub async fn next_delivery(&mut self) -> Option<Result<Delivery<T>, Error>> {
        self.next().await
    }

    /// Hands each batch to `handler` and acknowledges it once the handler
    /// returned `Ok`; an `Err` hands it back for redelivery (counted in
    /// [`SourceStats::nacked`]) and the run goes on. Ends when the
    /// consumer's stream does, or with the first error of the source
    /// itself (a handler's errors are the handler's).
    pub async fn run<F, E>(&mut self, mut handler: F) -> Result<(), Error>
    where
        F: FnMut(&WireBatch<T>) -> Result<(), E>,
    {
        while let Some(item) = self.next().await {
            let delivery = match item {
                Ok(d) => d,
                // Counted and terminated: go on.
                Err(Error::Decode { .. }) => continue,
                Err(e) => return Err(e),
            };
            match handler(&delivery.batch) {
                Ok(()) => delivery.ack().await?,
                Err(_) => delivery.nak().await?,
            }
        }
        Ok(())
    }

    fn decode_message(&self, message: jetstream::Message) -> Result<Delivery<T>, Error> {
        let c = &self.shared.counters;
        c.messages.fetch_add(1, Relaxed);
        let (stream_seq, delivered) = message
            .info()
            .map(|i| (i.stream_sequence, i.delivered.max(1) as u64))
            .unwrap_or((0, 1));
        if delivered > 1 {
            c.redelivered.fetch_add(1, Relaxed);
        }
        let batch = match wire::decode::<T>(&message.payload) {
            Ok(b) => b,
            Err(error) => {
                c.undecodable.fetch_add(1, Relaxed);
                // Never redelivered: it would not decode the next time.
                let msg = message;
                tokio::spawn(async move {
                    let _ = msg.ack_with(AckKind::Term).await;
                });
                return Err(Error::Decode { stream_seq, error });
            }
        };
        c.batches.fetch_add(1, Relaxed);
        c.events.fetch_add(batch.events.len() as u64, Relaxed);
        let duplicate = self
            .shared
            .tracker
            .lock()
            .map(|mut t| t.record(&batch.origin, &batch.prefix, batch.seq, batch.last_seq))
            .unwrap_or(false);
        if duplicate {
            c.duplicates.fetch_add(1, Relaxed);
        }
        Ok(Delivery {
            batch,
            duplicate,
            delivered,
            stream_seq,
            message,
            shared: self.shared.clone(),
        })
    }
}

impl<T> Source<T> {
    /// The source's counters now.
    pub fn stats(&self) -> SourceStats {
        let c = &self.shared.counters;
        let (gaps, series) = self
            .shared
            .tracker
            .lock()
            .map(|t| {
                let s = t.snapshot();
                (s.iter().map(SeqRanges::missing).sum(), s.len() as u64)
            })
            .unwrap_or((0, 0));
        SourceStats {
            messages: c.messages.load(Relaxed),
            batches: c.batches.load(Relaxed),
            events: c.events.load(Relaxed),
            acked: c.acked.load(Relaxed),
            nacked: c.nacked.load(Relaxed),
            undecodable: c.undecodable.load(Relaxed),
            duplicates: c.duplicates.load(Relaxed),
            redelivered: c.redelivered.load(Relaxed),
            gaps,
            series,
        }
    }

    /// The windows seen, per origin and prefix.
    pub fn seen(&self) -> Vec<SeqRanges> {
        self.shared
            .tracker
            .lock()
            .map(|t| t.snapshot())
            .unwrap_or_default()
    }
}

/// Deliveries as they arrive; a message that does not decode is an
/// `Err(Error::Decode)` item (already terminated and counted).
impl<T: DeserializeOwned> futures_core::Stream for Source<T> {
    type Item = Result<Delivery<T>, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.messages.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::JetStream(e.to_string())))),
            Poll::Ready(Some(Ok(m))) => Poll::Ready(Some(self.decode_message(m))),
        }
    }
}

/// A [`Source`] on a runtime of its own, for threads without one: an
/// [`Iterator`] of deliveries, acknowledged with [`ack`](Self::ack).
///
/// ```no_run
/// use ringfold::nats::{BlockingSource, SourceConfig};
/// use std::time::Duration;
/// let mut source = BlockingSource::<u64>::connect(SourceConfig::new("nats://127.0.0.1:4222"))?;
/// while let Some(delivery) = source.next_timeout(Duration::from_secs(1)) {
///     let delivery = delivery?;
///     println!("{} events", delivery.batch.events.len());
///     source.ack(delivery)?;
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BlockingSource<T> {
    runtime: tokio::runtime::Runtime,
    /// Always `Some` until dropped (inside the runtime: the client's
    /// subscriptions unsubscribe through it).
    source: Option<Source<T>>,
}

impl<T> Drop for BlockingSource<T> {
    fn drop(&mut self) {
        let _inside = self.runtime.enter();
        drop(self.source.take());
    }
}

impl<T> BlockingSource<T> {
    fn source(&self) -> &Source<T> {
        self.source.as_ref().expect("present until dropped")
    }
}

impl<T: DeserializeOwned> BlockingSource<T> {
    /// [`Source::connect`], on a current-thread runtime of its own.
    pub fn connect(config: SourceConfig) -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let source = runtime.block_on(Source::connect(config))?;
        Ok(BlockingSource {
            runtime,
            source: Some(source),
        })
    }

    /// The next delivery within `timeout`, or `None`.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<Delivery<T>, Error>> {
        let source = self.source.as_mut()?;
        self.runtime
            .block_on(async { tokio::time::timeout(timeout, source.next()).await.ok() })
            .flatten()
    }

    /// Acknowledges a delivery.
    pub fn ack(&self, delivery: Delivery<T>) -> Result<(), Error> {
        self.runtime.block_on(delivery.ack())
    }

    /// Hands a delivery back for redelivery.
    pub fn nak(&self, delivery: Delivery<T>) -> Result<(), Error> {
        self.runtime.block_on(delivery.nak())
    }

    /// [`Source::run`], blocking.
    pub fn run<F, E>(&mut self, handler: F) -> Result<(), Error>
    where
        F: FnMut(&WireBatch<T>) -> Result<(), E>,
    {
        let Some(source) = self.source.as_mut() else {
            return Ok(());
        };
        self.runtime.block_on(source.run(handler))
    }

    /// The source's counters now.
    pub fn stats(&self) -> SourceStats {
        self.source().stats()
    }

    /// The windows seen, per origin and prefix.
    pub fn seen(&self) -> Vec<SeqRanges> {
        self.source().seen()
    }
}

/// Deliveries, waiting as long as each takes.
impl<T: DeserializeOwned> Iterator for BlockingSource<T> {
    type Item = Result<Delivery<T>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let source = self.source.as_mut()?;
        self.runtime.block_on(source.next())
    }
}

#[cfg(all(test, not(ringfold_loom)))]
mod tests {
    use super::*;

    #[test]
    fn tracker_finds_gaps_and_duplicates() {
        let o = Origin::with("h", 1);
        let mut t = Tracker::default();
        assert!(!t.record(&o, "p", 0, 0));
        assert!(!t.record(&o, "p", 2, 3));
        assert!(t.record(&o, "p", 3, 3));
        assert!(!t.record(&o, "q", 0, 0));
        let s = t.snapshot();
        assert_eq!(s[0].ranges, vec![(0, 0), (2, 3)]);
        assert_eq!(s[0].missing(), 1);
        assert!(!t.record(&o, "p", 1, 1));
        assert_eq!(t.snapshot()[0].ranges, vec![(0, 3)]);
        assert_eq!(t.snapshot()[0].missing(), 0);
        assert_eq!(t.snapshot()[0].seen(), 4);
    }
}
