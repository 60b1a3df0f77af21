//! A WebSocket sink for browser UIs (feature `ws`): [`WsSink`] serves
//! batches to any number of WebSocket clients, one text frame per batch in
//! the [wire format](crate::wire).
//!
//! The protocol, per connection (plain `ws://`, no TLS):
//!
//! 1. The client sends its subscription pattern (the policies' grammar:
//!    `*`, `gpu:*`, `data:users:*`) as a text frame, either as JSON
//!    `{"subscribe": "gpu:*"}` or as the bare pattern `gpu:*`.
//! 2. The server answers `{"subscribed": "gpu:*", "subscriber": "ws-3"}`
//!    (the subscriber's name in [`Engine::stats`](crate::Engine::stats)),
//!    then sends one frame per batch: a wire-format object (it has a `"v"`
//!    field). A later subscribe message replaces the subscription.
//! 3. A message the server cannot use (not text, not a pattern, a pattern
//!    the engine refuses) is counted in [`WsStats::malformed`] and answered
//!    with `{"error": "..."}`; the connection stays open.
//!
//! Every client has its own receiver with its own [`Budget`]: a client
//! that reads slowly, or not at all, gets merged batches
//! ([`Batch::merged`](crate::Batch::merged)), then drops counted in band
//! ([`Batch::lagged`](crate::Batch::lagged), the `"lagged"` field), and
//! never slows the engine or the other clients. A client that disconnects
//! is unsubscribed (its receiver dropped).
//!
//! With [`WsConfig::page`], a plain HTTP `GET` on the same port (a request
//! without `Upgrade: websocket`) is answered with that HTML page, so one
//! address serves a UI and its data.
//!
//! ```
//! use ringfold::ws::WsSink;
//! use ringfold::{Engine, Value};
//! let engine = Engine::<Value>::builder().build()?;
//! let sink = WsSink::spawn(&engine, "127.0.0.1:0".parse()?)?;
//! println!("ws://{}", sink.local_addr());
//! engine.publish("gpu:0:util", 0.5)?;
//! engine.shutdown()?;
//! let stats = sink.shutdown()?;
//! assert_eq!(stats.clients, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! See `docs/ws.md` for a client in JavaScript and tower's live page.

mod server;

pub use server::WsSink;

use std::fmt;
use std::time::Duration;

use crate::delivery::{Budget, SubscribeOptions};
use crate::wire::Origin;

/// docs/ws.md's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/ws.md")]
pub struct WsGuide;

/// What went wrong starting or stopping a [`WsSink`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The address could not be bound.
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The runtime or its thread could not be started.
    Runtime(std::io::Error),
    /// A setting is out of range (e.g. a zero budget).
    BadConfig(String),
    /// The server thread did not stop within the time given.
    Timeout,
    /// The server thread panicked.
    Panicked,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Bind { addr, source } => write!(f, "ws: cannot bind {addr}: {source}"),
            Error::Runtime(e) => write!(f, "ws: cannot start the server thread: {e}"),
            Error::BadConfig(why) => write!(f, "ws: bad configuration: {why}"),
            Error::Timeout => write!(f, "ws: the server thread did not stop in time"),
            Error::Panicked => write!(f, "ws: the server thread panicked"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Bind { source, .. } => Some(source),
            Error::Runtime(e) => Some(e),
            _ => None,
        }
    }
}

/// What went wrong with one client: counted in [`WsStats`], the latest one
/// kept ([`WsSink::last_error`]); never fatal to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientError {
    /// The WebSocket handshake failed or timed out (counted in
    /// [`WsStats::errors`]).
    Handshake(String),
    /// Reading from or writing to the connection failed (counted in
    /// [`WsStats::errors`]).
    Io(String),
    /// The client sent something the server cannot use (counted in
    /// [`WsStats::malformed`]).
    Malformed(String),
    /// The engine refused the subscription (a bad pattern, counted in
    /// [`WsStats::malformed`]; the engine shut down, counted in
    /// [`WsStats::errors`]).
    Subscribe(String),
    /// A batch could not be encoded (its payload's `Serialize` failed):
    /// counted in [`WsStats::encode_errors`], the batch not sent.
    Encode(String),
    /// The connection was refused: [`WsConfig::max_clients`] reached
    /// (counted in [`WsStats::refused`]).
    TooManyClients,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Handshake(e) => write!(f, "handshake failed: {e}"),
            ClientError::Io(e) => write!(f, "connection error: {e}"),
            ClientError::Malformed(e) => write!(f, "malformed client message: {e}"),
            ClientError::Subscribe(e) => write!(f, "subscription refused: {e}"),
            ClientError::Encode(e) => write!(f, "batch not encodable: {e}"),
            ClientError::TooManyClients => write!(f, "too many clients"),
        }
    }
}

impl std::error::Error for ClientError {}

/// The sink's counters.
///
/// ```
/// let s = ringfold::ws::WsStats::default();
/// assert_eq!((s.clients, s.frames, s.bytes, s.malformed, s.errors), (0, 0, 0, 0, 0));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WsStats {
    /// WebSocket clients connected now.
    pub clients: u64,
    /// WebSocket clients accepted since the start (handshake done).
    pub accepted: u64,
    /// Batch frames sent (one per batch; acknowledgements and error
    /// replies are not counted).
    pub frames: u64,
    /// Bytes of those frames' payloads.
    pub bytes: u64,
    /// Events in those frames.
    pub events: u64,
    /// Client messages the server could not use.
    pub malformed: u64,
    /// Handshake and connection errors.
    pub errors: u64,
    /// Batches that could not be encoded (not sent).
    pub encode_errors: u64,
    /// Connections refused over [`WsConfig::max_clients`].
    pub refused: u64,
    /// Plain HTTP requests answered with the [page](WsConfig::page) (or a
    /// 404 without one).
    pub pages: u64,
}

/// How a [`WsSink`] serves its clients.
///
/// ```
/// use ringfold::ws::WsConfig;
/// use ringfold::Budget;
/// use std::time::Duration;
/// let config = WsConfig::new()
///     .budget(Budget::new(10_000, 4 << 20))
///     .coalesce_after(4)
///     .max_clients(16)
///     .handshake_timeout(Duration::from_secs(2))
///     .page("<!doctype html><title>ui</title>");
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct WsConfig {
    pub(crate) budget: Budget,
    pub(crate) coalesce_after: usize,
    pub(crate) max_clients: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) origin: Option<Origin>,
    pub(crate) page: Option<String>,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig::new()
    }
}

impl WsConfig {
    /// Defaults: per-client budget 65,536 events and 16 MiB, merging after
    /// 8 waiting batches, at most 1,024 clients, a 5 s handshake timeout
    /// (the subscription message may come any time later), a fresh
    /// [`Origin`], no page.
    pub fn new() -> Self {
        WsConfig {
            budget: Budget::new(65_536, 16 << 20),
            coalesce_after: 8,
            max_clients: 1024,
            handshake_timeout: Duration::from_secs(5),
            origin: None,
            page: None,
        }
    }

    /// Each client's queue budget (see [`Budget`]).
    pub fn budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }

    /// Batches waiting in a client's queue before new windows merge into
    /// them ([`SubscribeOptions::coalesce_after`]).
    pub fn coalesce_after(mut self, batches: usize) -> Self {
        self.coalesce_after = batches;
        self
    }

    /// Most clients connected at once; more are refused and counted.
    pub fn max_clients(mut self, n: usize) -> Self {
        self.max_clients = n;
        self
    }

    /// Longest wait for a client's HTTP request and handshake.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The origin stamped on batches (default: [`Origin::new`]).
    pub fn origin(mut self, origin: Origin) -> Self {
        self.origin = Some(origin);
        self
    }

    /// An HTML page served to plain HTTP `GET` requests on the same port.
    pub fn page(mut self, html: impl Into<String>) -> Self {
        self.page = Some(html.into());
        self
    }

    pub(crate) fn options(&self, id: u64) -> SubscribeOptions {
        SubscribeOptions::new(format!("ws-{id}"))
            .budget(self.budget)
            .coalesce_after(self.coalesce_after)
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.budget.events() == 0 || self.budget.bytes() == 0 {
            return Err(Error::BadConfig("a client budget must not be zero".into()));
        }
        if self.coalesce_after == 0 {
            return Err(Error::BadConfig("coalesce_after must be at least 1".into()));
        }
        if self.max_clients == 0 {
            return Err(Error::BadConfig("max_clients must be at least 1".into()));
        }
        Ok(())
    }
}

/// Parses a client's subscription message: `{"subscribe": "<pattern>"}`
/// or a bare pattern (surrounding white space ignored).
///
/// ```
/// use ringfold::ws::parse_subscribe;
/// assert_eq!(parse_subscribe(r#"{"subscribe":"gpu:*"}"#).unwrap(), "gpu:*");
/// assert_eq!(parse_subscribe(" data:* ").unwrap(), "data:*");
/// assert!(parse_subscribe(r#"{"hello":1}"#).is_err());
/// assert!(parse_subscribe("").is_err());
/// ```
pub fn parse_subscribe(text: &str) -> Result<String, ClientError> {
    let text = text.trim();
    if text.starts_with('{') {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Subscribe {
            subscribe: String,
        }
        let msg: Subscribe = serde_json::from_str(text).map_err(|e| {
            ClientError::Malformed(format!("expected {{\"subscribe\": \"<pattern>\"}}: {e}"))
        })?;
        let pattern = msg.subscribe.trim();
        if pattern.is_empty() {
            return Err(ClientError::Malformed("empty pattern".into()));
        }
        return Ok(pattern.to_owned());
    }
    if text.is_empty() {
        return Err(ClientError::Malformed("empty pattern".into()));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ClientError::Malformed(format!(
            "not a pattern: {:?}",
            text.chars().take(64).collect::<String>()
        )));
    }
    Ok(text.to_owned())
}
