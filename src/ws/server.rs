//! The server: an accept loop and one task per connection on a
//! current-thread tokio runtime of the sink's own thread.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{parse_subscribe, ClientError, Error, WsConfig, WsStats};
use crate::delivery::Receiver;
use crate::wire::{self, Origin};
use crate::Engine;

/// How long [`WsSink::shutdown`] waits for the server thread (it closes
/// every connection with a close frame, waiting at most 1 s per client).
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Largest HTTP request head the server reads.
const MAX_HEAD: usize = 16 * 1024;

#[derive(Default)]
struct Shared {
    clients: AtomicU64,
    accepted: AtomicU64,
    frames: AtomicU64,
    bytes: AtomicU64,
    events: AtomicU64,
    malformed: AtomicU64,
    errors: AtomicU64,
    encode_errors: AtomicU64,
    refused: AtomicU64,
    pages: AtomicU64,
    last_error: Mutex<Option<ClientError>>,
}

impl Shared {
    fn stats(&self) -> WsStats {
        WsStats {
            clients: self.clients.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            frames: self.frames.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            events: self.events.load(Relaxed),
            malformed: self.malformed.load(Relaxed),
            errors: self.errors.load(Relaxed),
            encode_errors: self.encode_errors.load(Relaxed),
            refused: self.refused.load(Relaxed),
            pages: self.pages.load(Relaxed),
        }
    }

    /// Counts `e` under its counter and keeps it as the latest error.
    fn count(&self, e: ClientError) {
        let counter = match &e {
            ClientError::Malformed(_) => &self.malformed,
            ClientError::Encode(_) => &self.encode_errors,
            ClientError::TooManyClients => &self.refused,
            ClientError::Subscribe(_) | ClientError::Handshake(_) | ClientError::Io(_) => {
                &self.errors
            }
        };
        counter.fetch_add(1, Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }
}

/// A WebSocket server that serves an engine's batches, one text frame per
/// batch in the [wire format](crate::wire), to every client that
/// subscribes (see the [module](super) for the protocol).
///
/// ```
/// use ringfold::ws::{WsConfig, WsSink};
/// use ringfold::{Budget, Engine};
/// let engine = Engine::<u64>::builder().build()?;
/// let config = WsConfig::new().budget(Budget::new(10_000, 4 << 20));
/// let sink = WsSink::spawn_with(&engine, "127.0.0.1:0".parse()?, config)?;
/// assert_ne!(sink.local_addr().port(), 0);
/// engine.shutdown()?;
/// let stats = sink.shutdown()?;
/// assert_eq!((stats.frames, stats.errors), (0, 0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct WsSink {
    addr: SocketAddr,
    origin: Origin,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    done: std::sync::mpsc::Receiver<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for WsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsSink")
            .field("addr", &self.addr)
            .field("stats", &self.stats())
            .finish()
    }
}

impl WsSink {
    /// Binds `addr` (port 0 picks a free one: see
    /// [`local_addr`](Self::local_addr)) and serves `engine`'s batches
    /// with the default [`WsConfig`] on a thread of its own.
    ///
    /// The sink holds a handle on the engine (to subscribe its clients):
    /// shut the engine down with [`Engine::shutdown`]; the clients then
    /// get what their queues hold and a close frame.
    pub fn spawn<T: Serialize + Send + Sync + 'static>(
        engine: &Engine<T>,
        addr: SocketAddr,
    ) -> Result<WsSink, Error> {
        WsSink::spawn_with(engine, addr, WsConfig::new())
    }

    /// [`spawn`](Self::spawn) with a configuration.
    pub fn spawn_with<T: Serialize + Send + Sync + 'static>(
        engine: &Engine<T>,
        addr: SocketAddr,
        config: WsConfig,
    ) -> Result<WsSink, Error> {
        config.check()?;
        let listener =
            std::net::TcpListener::bind(addr).map_err(|source| Error::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| Error::Bind { addr, source })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let origin = config.origin.clone().unwrap_or_default();
        let shared = Arc::new(Shared::default());
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = std::sync::mpsc::channel();
        let server = Server {
            engine: engine.clone(),
            config: Arc::new(config),
            origin: origin.clone(),
            shared: shared.clone(),
            stop: stop_rx,
        };
        let thread = std::thread::Builder::new()
            .name("ringfold-ws".into())
            .spawn(move || {
                runtime.block_on(server.run(listener));
                let _ = done_tx.send(());
            })
            .map_err(Error::Runtime)?;
        Ok(WsSink {
            addr: local,
            origin,
            shared,
            stop,
            done,
            thread: Some(thread),
        })
    }

    /// The address it listens on (with the port picked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The origin stamped on every batch it sends.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Its counters now.
    pub fn stats(&self) -> WsStats {
        self.shared.stats()
    }

    /// The latest client error, if any.
    pub fn last_error(&self) -> Option<ClientError> {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops accepting, closes every connection (a close frame each; what
    /// their queues still hold is not sent) and returns the final counters.
    /// To have the clients get every batch first, shut the engine down
    /// before: their subscriptions then drain and close by themselves.
    pub fn shutdown(mut self) -> Result<WsStats, Error> {
        self.stop_now()
    }

    fn stop_now(&mut self) -> Result<WsStats, Error> {
        let _ = self.stop.send(true);
        let Some(thread) = self.thread.take() else {
            return Ok(self.stats());
        };
        match self.done.recv_timeout(STOP_WAIT) {
            Ok(()) => thread.join().map_err(|_| Error::Panicked)?,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                thread.join().map_err(|_| Error::Panicked)?;
                return Err(Error::Panicked);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return Err(Error::Timeout),
        }
        Ok(self.stats())
    }
}

impl Drop for WsSink {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop_now();
        }
    }
}

struct Server<T: Send + Sync + 'static> {
    engine: Engine<T>,
    config: Arc<WsConfig>,
    origin: Origin,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
}

impl<T: Serialize + Send + Sync + 'static> Server<T> {
    async fn run(self, listener: std::net::TcpListener) {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                self.shared.count(ClientError::Io(format!("listener: {e}")));
                return;
            }
        };
        let mut stop = self.stop.clone();
        let mut tasks = JoinSet::new();
        let mut next_id = 0u64;
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => break,
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = joined {
                        self.shared.count(ClientError::Io(format!("connection task failed: {e}")));
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => {
                        if tasks.len() >= self.config.max_clients {
                            self.shared.count(ClientError::TooManyClients);
                            drop(stream);
                            continue;
                        }
                        next_id += 1;
                        let conn = Connection {
                            id: next_id,
                            engine: self.engine.clone(),
                            config: self.config.clone(),
                            origin: self.origin.clone(),
                            shared: self.shared.clone(),
                            stop: self.stop.clone(),
                        };
                        tasks.spawn(conn.serve(stream));
                    }
                    Err(e) => {
                        // Out of descriptors, a connection reset before
                        // accept: counted; pause so a persistent error
                        // does not spin.
                        self.shared.count(ClientError::Io(format!("accept: {e}")));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
            }
        }
        drop(listener);
        let drained = tokio::time::timeout(STOP_WAIT - Duration::from_secs(1), async {
            while let Some(joined) = tasks.join_next().await {
                if let Err(e) = joined {
                    self.shared
                        .count(ClientError::Io(format!("connection task failed: {e}")));
                }
            }
        })
        .await;
        if drained.is_err() {
            tasks.abort_all();
        }
    }
}

struct Connection<T: Send + Sync + 'static> {
    id: u64,
    engine: Engine<T>,
    config: Arc<WsConfig>,
    origin: Origin,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
}

/// Decrements the connected-clients gauge however the connection ends.
struct Connected(Arc<Shared>);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Relaxed);
    }
}

/// The `"` and `\` of `s` escaped for a JSON string.
fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

impl<T: Serialize + Send + Sync + 'static> Connection<T> {
    async fn serve(mut self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let timeout = self.config.handshake_timeout;
        let head = match tokio::time::timeout(timeout, peek_head(&stream)).await {
            Ok(Ok(Some(head))) => head,
            // Closed before sending a byte (a browser's speculative
            // preconnect, a port probe): nothing to answer, not an error.
            Ok(Ok(None)) => return,
            Ok(Err(e)) => return self.shared.count(ClientError::Handshake(e.to_string())),
            Err(_) => {
                return self
                    .shared
                    .count(ClientError::Handshake("no request in time".into()))
            }
        };
        if !is_upgrade(&head) {
            return self.serve_page(stream, head).await;
        }
        let ws = match tokio::time::timeout(timeout, tokio_tungstenite::accept_async(stream)).await
        {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => return self.shared.count(ClientError::Handshake(e.to_string())),
            Err(_) => {
                return self
                    .shared
                    .count(ClientError::Handshake("handshake timed out".into()))
            }
        };
        self.shared.accepted.fetch_add(1, Relaxed);
        self.shared.clients.fetch_add(1, Relaxed);
        let _connected = Connected(self.shared.clone());
        self.frames(ws).await;
    }

    /// The connection's life: subscription messages in, batches out.
    async fn frames(&mut self, mut ws: WebSocketStream<TcpStream>) {
        let mut rx: Option<Receiver<T>> = None;
        let mut buf = Vec::new();
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => {
                    close(&mut ws).await;
                    return;
                }
                msg = ws.next() => match msg {
                    None => return,
                    Some(Err(e)) => {
                        use tokio_tungstenite::tungstenite::Error as E;
                        if !matches!(e, E::ConnectionClosed | E::AlreadyClosed) {
                            self.shared.count(ClientError::Io(e.to_string()));
                        }
                        return;
                    }
                    Some(Ok(Message::Text(text))) => {
                        let reply = self.subscribe(text.as_str(), &mut rx);
                        if let Err(e) = ws.send(Message::text(reply)).await {
                            self.shared.count(ClientError::Io(e.to_string()));
                            return;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let e = ClientError::Malformed("binary frames are not understood".into());
                        let reply = format!("{{\"error\":{}}}", json_str(&e.to_string()));
                        self.shared.count(e);
                        if let Err(e) = ws.send(Message::text(reply)).await {
                            self.shared.count(ClientError::Io(e.to_string()));
                            return;
                        }
                    }
                    // Pings are answered by tungstenite; a close frame is
                    // answered too, and the next read ends the stream.
                    Some(Ok(_)) => {}
                },
                batch = async {
                    match rx.as_mut() {
                        Some(r) => r.next().await,
                        None => std::future::pending().await,
                    }
                } => match batch {
                    None => {
                        // The subscription closed: the engine shut down
                        // and the queue is drained.
                        close(&mut ws).await;
                        return;
                    }
                    Some(batch) => {
                        buf.clear();
                        if let Err(e) = wire::encode_into(&batch, &self.origin, &mut buf) {
                            self.shared.count(ClientError::Encode(e.to_string()));
                            continue;
                        }
                        let events = batch.len() as u64;
                        drop(batch);
                        let len = buf.len() as u64;
                        let text = match String::from_utf8(std::mem::take(&mut buf)) {
                            Ok(t) => t,
                            Err(e) => {
                                self.shared.count(ClientError::Encode(e.to_string()));
                                continue;
                            }
                        };
                        // A stalled client blocks only this task; its
                        // receiver's queue merges and then drops meanwhile.
                        let sent = tokio::select! {
                            r = ws.send(Message::text(text)) => r,
                            _ = stopped(&mut stop) => return,
                        };
                        match sent {
                            Ok(()) => {
                                self.shared.frames.fetch_add(1, Relaxed);
                                self.shared.bytes.fetch_add(len, Relaxed);
                                self.shared.events.fetch_add(events, Relaxed);
                            }
                            Err(e) => {
                                self.shared.count(ClientError::Io(e.to_string()));
                                return;
                            }
                        }
                    }
                },
            }
        }
    }

    /// Handles a text message: (re)subscribes, and returns the reply.
    fn subscribe(&self, text: &str, rx: &mut Option<Receiver<T>>) -> String {
        let pattern = match parse_subscribe(text) {
            Ok(p) => p,
            Err(e) => {
                let reply = format!("{{\"error\":{}}}", json_str(&e.to_string()));
                self.shared.count(e);
                return reply;
            }
        };
        // The old subscription goes first, so the name is free again.
        *rx = None;
        match self.engine.receiver(&pattern, self.config.options(self.id)) {
            Ok(r) => {
                *rx = Some(r);
                format!(
                    "{{\"subscribed\":{},\"subscriber\":\"ws-{}\"}}",
                    json_str(&pattern),
                    self.id
                )
            }
            Err(e) => {
                let shut = matches!(e, crate::Error::ShutDown);
                let e = if shut {
                    ClientError::Subscribe(e.to_string())
                } else {
                    ClientError::Malformed(format!("pattern {pattern:?}: {e}"))
                };
                let reply = format!("{{\"error\":{}}}", json_str(&e.to_string()));
                self.shared.count(e);
                reply
            }
        }
    }

    /// Answers a plain HTTP request with the page (GET or HEAD on `/`), or
    /// 404.
    async fn serve_page(&self, mut stream: TcpStream, head: Vec<u8>) {
        // Take the request off the socket (closing with unread bytes would
        // reset the connection under the response).
        let mut taken = vec![0u8; head.len()];
        if let Err(e) = stream.read_exact(&mut taken).await {
            return self.shared.count(ClientError::Io(e.to_string()));
        }
        let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut parts = line.split(' ');
        let method = parts.next().unwrap_or_default();
        let path = parts.next().unwrap_or_default();
        let path = path.split('?').next().unwrap_or_default();
        let page = self.config.page.as_deref();
        let (status, body) = match (method, path, page) {
            ("GET" | "HEAD", "/" | "/index.html", Some(page)) => ("200 OK", page),
            _ => ("404 Not Found", "not found\n"),
        };
        let kind = if status.starts_with("200") {
            "text/html; charset=utf-8"
        } else {
            "text/plain; charset=utf-8"
        };
        let mut response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        if method != "HEAD" {
            response.extend_from_slice(body.as_bytes());
        }
        self.shared.pages.fetch_add(1, Relaxed);
        let written = async {
            stream.write_all(&response).await?;
            stream.shutdown().await
        };
        if let Err(e) = written.await {
            self.shared.count(ClientError::Io(e.to_string()));
        }
    }
}

/// Resolves once the sink is told to stop (or dropped).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|&s| s).await;
}

/// Sends a close frame and waits (at most 1 s) for it to go out.
async fn close(ws: &mut WebSocketStream<TcpStream>) {
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
}

/// The request head (through its blank line), peeked, not read, so the
/// WebSocket handshake still finds it on the socket; `None` if the
/// connection closed before its first byte. A connection that closes
/// mid-request keeps returning its partial head: the caller's timeout ends
/// it.
async fn peek_head(stream: &TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; MAX_HEAD];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        if let Some(end) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end + 4);
            return Ok(Some(buf));
        }
        if n == buf.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        // More of the head is on its way: peek returns at once while any
        // byte is waiting, so wait a little before looking again.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Does the request head ask for a WebSocket (`Upgrade: websocket`)?
fn is_upgrade(head: &[u8]) -> bool {
    String::from_utf8_lossy(head).split("\r\n").any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("upgrade")
                && value
                    .split(',')
                    .any(|v| v.trim().eq_ignore_ascii_case("websocket"))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::is_upgrade;

    #[test]
    fn upgrade_header_is_found_in_any_case() {
        assert!(is_upgrade(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"));
        assert!(is_upgrade(b"GET / HTTP/1.1\r\nupgrade: WebSocket\r\n\r\n"));
        assert!(!is_upgrade(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!is_upgrade(b"GET /upgrade:websocket HTTP/1.1\r\n\r\n"));
    }
}
