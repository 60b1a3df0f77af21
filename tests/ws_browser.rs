//! tower's live page in a real browser: Debian's `chromium`, headless,
//! loads the page from a [`WsSink`](ringfold::ws::WsSink) on 127.0.0.1,
//! receives the engine's batches over the WebSocket, and the figures it
//! renders (read from the DOM over the DevTools protocol) must equal the
//! engine's own.
//!
//! Needs `chromium` (`apt-get install -y chromium`; `.ci/run` installs it)
//! or `RINGFOLD_CHROMIUM=/path/to/chrome`: without one the test FAILS with
//! that hint.
//!
//! The ignored `screenshot_of_running_page` takes a screenshot of a page
//! that is already being served (e.g. by `tower --ui`):
//!
//! ```text
//! RINGFOLD_UI_URL=http://127.0.0.1:8080/ RINGFOLD_UI_SCREENSHOT=docs/tower-ui.png \
//!   cargo test --features ws --test ws_browser -- --ignored screenshot_of_running_page
//! ```
#![cfg(feature = "ws")]

#[path = "../examples/tower/ui.rs"]
mod ui;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use ringfold::{Engine, Value};
use serde_json::{json, Value as Json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(60);

fn chromium_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("RINGFOLD_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "chromium is not installed: this test drives a real browser. Install it with \
         `apt-get update && apt-get install -y chromium` (Debian; .ci/run does this), or set \
         RINGFOLD_CHROMIUM to a Chrome/Chromium binary"
    );
}

/// A headless browser on a page, killed on drop.
struct Browser {
    child: Child,
    dir: PathBuf,
}

impl Browser {
    fn open(url: &str) -> Browser {
        let dir = std::env::temp_dir().join(format!(
            "ringfold-chromium-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temp dir for the browser profile");
        let log = std::fs::File::create(dir.join("chromium.log")).expect("log file");
        let child = Command::new(chromium_binary())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1200,800",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", dir.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromium: {e}"));
        Browser { child, dir }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("chromium.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The DevTools port chromium picked (its `DevToolsActivePort` file).
    fn devtools_port(&mut self) -> u16 {
        let file = self.dir.join("DevToolsActivePort");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(port) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
            {
                return port;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("chromium exited ({status}):\n{}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "chromium opened no DevTools port:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET path` on 127.0.0.1:port, the body as JSON (`Err`: the answer,
/// e.g. empty while the DevTools server starts).
async fn http_json(port: u16, path: &str) -> Result<Json, String> {
    tokio::time::timeout(Duration::from_secs(5), http_json_now(port, path))
        .await
        .map_err(|_| "no answer in 5 s".to_owned())?
}

async fn http_json_now(port: u16, path: &str) -> Result<Json, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    // The DevTools server keeps the connection open: read the head, then
    // Content-Length bytes.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("closed: {:?}", String::from_utf8_lossy(&buf)));
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .ok_or_else(|| format!("no Content-Length: {head:?}"))?;
            if body.len() >= len {
                return serde_json::from_str(&body[..len]).map_err(|e| format!("{body:?}: {e}"));
            }
        }
    }
}

/// A DevTools protocol session on the page whose URL starts with `url`.
struct Page {
    ws: WebSocketStream<TcpStream>,
    next_id: u64,
}

impl Page {
    async fn attach(port: u16, url: &str) -> Page {
        let deadline = Instant::now() + WAIT;
        let target = loop {
            let list = http_json(port, "/json/list").await.unwrap_or_default();
            let found = list.as_array().and_then(|targets| {
                targets.iter().find(|t| {
                    t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url))
                })
            });
            if let Some(t) = found {
                break t["webSocketDebuggerUrl"].as_str().unwrap().to_owned();
            }
            assert!(Instant::now() < deadline, "no page for {url}: {list}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (ws, _) =
            tokio::time::timeout(WAIT, tokio_tungstenite::client_async(target.as_str(), tcp))
                .await
                .expect("devtools handshake in time")
                .expect("devtools websocket");
        Page { ws, next_id: 0 }
    }

    async fn call(&mut self, method: &str, params: Json) -> Json {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).await.unwrap();
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("devtools answer in time")
                .expect("devtools open")
                .expect("devtools frame");
            if let Message::Text(t) = msg {
                let v: Json = serde_json::from_str(t.as_str()).unwrap();
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    /// The page's figures, read from the DOM.
    async fn figures(&mut self) -> Json {
        let expr = "JSON.stringify(Object.assign(Object.fromEntries(\
                    ['status', 'events-total', 'batches-total', 'drops-total', \
                     'frames-total', 'lagged-total'] \
                    .map(id => [id, document.getElementById(id).textContent])), \
                    {final: document.body.dataset.final || ''}))";
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true}),
            )
            .await;
        let text = r["result"]["value"]
            .as_str()
            .unwrap_or_else(|| panic!("evaluate: {r}"));
        serde_json::from_str(text).unwrap()
    }

    async fn screenshot(&mut self) -> Vec<u8> {
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        base64_decode(r["data"].as_str().expect("screenshot data"))
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

fn num(v: &Json, key: &str) -> u64 {
    v[key]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{key} is not a number on the page: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_engines_figures() {
    let (pattern, policy) = ui::rule();
    let engine = Engine::<Value>::builder()
        .default_rules()
        .policy(pattern, policy)
        .build()
        .unwrap();
    let sink = ui::start(&engine, "127.0.0.1:0".parse::<SocketAddr>().unwrap()).unwrap();
    let url = format!("http://{}/", sink.local_addr());
    let mut browser = Browser::open(&url);
    let port = browser.devtools_port();
    eprintln!("chromium: devtools on port {port}");

    // The page subscribes on load.
    let deadline = Instant::now() + WAIT;
    while !engine
        .stats()
        .subscribers
        .iter()
        .any(|s| s.name.starts_with("ws-"))
    {
        assert!(
            Instant::now() < deadline,
            "the page never subscribed ({:?}):\n{}",
            sink.stats(),
            browser.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Several families and policies, snapshots as tower publishes them.
    let start = Instant::now();
    for round in 0..8u64 {
        for i in 0..1500u64 {
            engine
                .publish("data:users:created", round * 10_000 + i)
                .unwrap();
        }
        for i in 0..700u64 {
            engine.publish("code_index:rust:indexed", i).unwrap();
        }
        for i in 0..40u64 {
            engine.publish("chat:s1:delta", i).unwrap();
        }
        engine
            .publish("gpu:0:util", 0.5 + round as f64 / 100.0)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        ui::publish(&engine, &engine.stats(), start.elapsed(), false);
    }
    engine.flush_timeout(Duration::from_secs(30)).unwrap();
    let snapshot = engine.stats();
    assert_eq!(ui::publish(&engine, &snapshot, start.elapsed(), true), 0);
    let expected = ui::totals(&snapshot);
    let final_stats = engine.shutdown().unwrap();
    assert_eq!(
        ui::totals(&final_stats),
        expected,
        "no workload after the snapshot"
    );
    assert!(expected.0 > 0 && expected.1 > 0);

    // The engine shut down: the page's subscription drains, the sink closes
    // the socket, and the page says so.
    eprintln!("workload published: {expected:?}");
    let mut page = Page::attach(port, &url).await;
    eprintln!("attached to the page");
    let deadline = Instant::now() + WAIT;
    let figures = loop {
        let f = page.figures().await;
        if f["status"] == "closed" {
            break f;
        }
        assert!(
            Instant::now() < deadline,
            "the page did not finish: {f}\n{}",
            browser.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ws = ui::finish(sink, Duration::from_secs(10)).unwrap();
    println!("page: {figures}\nsink: {ws:?}\nengine totals (in, out, drops): {expected:?}");
    assert_eq!(figures["final"], "1", "the last snapshot arrived");
    assert_eq!(num(&figures, "events-total"), expected.0);
    assert_eq!(num(&figures, "batches-total"), expected.1);
    assert_eq!(num(&figures, "drops-total"), expected.2);
    assert_eq!(num(&figures, "frames-total"), ws.frames);
    assert_eq!(num(&figures, "lagged-total"), 0);
    assert_eq!((ws.malformed, ws.accepted), (0, 1), "{ws:?}");

    let png = page.screenshot().await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG screenshot");
}

/// A screenshot of a page being served now (`tower --ui`): see the top of
/// this file. Not part of the suite (it needs a running tower).
#[tokio::test]
#[ignore = "needs RINGFOLD_UI_URL (a running tower --ui) and RINGFOLD_UI_SCREENSHOT"]
async fn screenshot_of_running_page() {
    let url = std::env::var("RINGFOLD_UI_URL").expect("RINGFOLD_UI_URL: the page's URL");
    let out = std::env::var("RINGFOLD_UI_SCREENSHOT").expect("RINGFOLD_UI_SCREENSHOT: a path");
    let wait: u64 = std::env::var("RINGFOLD_UI_WAIT_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6000);
    let mut browser = Browser::open(&url);
    let port = browser.devtools_port();
    let mut page = Page::attach(port, &url).await;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    println!("page: {}", page.figures().await);
    let png = page.screenshot().await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    std::fs::write(Path::new(&out), &png).unwrap();
}
