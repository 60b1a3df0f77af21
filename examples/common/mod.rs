//! Helpers shared by the examples: a source-tree walker and file indexer,
//! a small latency histogram, a deterministic RNG, number formatting, and
//! per-thread CPU time from `/proc`.

// Each example uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ringfold::{Engine, EventKey, Value};

// ---------------------------------------------------------------------------
// Source trees
// ---------------------------------------------------------------------------

/// Directories no indexer wants: build outputs, VCS metadata, vendored JS.
const SKIP_DIRS: &[&str] = &["target", "loom-target", "node_modules"];

/// Walks `root` depth-first in a stable (sorted) order, calling `visit` on
/// every regular file. Hidden entries, symlinks and build directories are
/// skipped; unreadable directories are ignored. Stops early when `visit`
/// breaks.
pub fn walk(root: &Path, visit: &mut dyn FnMut(&Path) -> ControlFlow<()>) -> ControlFlow<()> {
    let meta = match fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(_) => return ControlFlow::Continue(()),
    };
    if meta.is_file() {
        return visit(root);
    }
    if !meta.is_dir() {
        return ControlFlow::Continue(());
    }
    let Ok(entries) = fs::read_dir(root) else {
        return ControlFlow::Continue(());
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if SKIP_DIRS.contains(&&*name) {
                continue;
            }
            walk(&entry.path(), visit)?;
        } else if kind.is_file() {
            visit(&entry.path())?;
        }
    }
    ControlFlow::Continue(())
}

/// The language of a file, from its extension: the middle segment of
/// `code_index:<lang>:indexed`.
pub fn language(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "rs" => "rust",
        "toml" => "toml",
        "md" | "markdown" => "markdown",
        "c" | "h" => "c",
        "cc" | "cpp" | "cxx" | "hpp" | "hh" => "cpp",
        "py" => "python",
        "sh" | "bash" => "shell",
        "js" | "mjs" | "cjs" => "javascript",
        "ts" | "tsx" => "typescript",
        "json" => "json",
        "yml" | "yaml" => "yaml",
        "lock" => "lock",
        "txt" => "text",
        "html" | "htm" => "html",
        "css" => "css",
        "go" => "go",
        "s" | "asm" => "asm",
        _ => "other",
    }
}

/// One indexed file.
#[derive(Debug, Clone, Copy)]
pub struct Indexed {
    pub lang: &'static str,
    pub bytes: u64,
    pub lines: u64,
}

/// Reads a file and counts its lines (a final line without a newline
/// counts too). `None` if it cannot be read.
pub fn index_file(path: &Path) -> Option<Indexed> {
    let content = fs::read(path).ok()?;
    let mut lines = content.iter().filter(|&&b| b == b'\n').count() as u64;
    if content.last().is_some_and(|&b| b != b'\n') {
        lines += 1;
    }
    Some(Indexed {
        lang: language(path),
        bytes: content.len() as u64,
        lines,
    })
}

/// Interned keys per language: `code_index:<lang>:indexed` (payload: the
/// file's size in bytes) and `code_index:<lang>:lines` (its line count).
/// Both share the prefix `code_index:<lang>`, so they travel in one batch.
pub struct IndexKeys {
    keys: HashMap<&'static str, (EventKey, EventKey)>,
}

impl IndexKeys {
    pub fn new() -> Self {
        IndexKeys {
            keys: HashMap::new(),
        }
    }

    pub fn get(
        &mut self,
        engine: &Engine<Value>,
        lang: &'static str,
    ) -> Result<(EventKey, EventKey), ringfold::Error> {
        if let Some(&k) = self.keys.get(lang) {
            return Ok(k);
        }
        let k = (
            engine.key(&format!("code_index:{lang}:indexed"))?,
            engine.key(&format!("code_index:{lang}:lines"))?,
        );
        self.keys.insert(lang, k);
        Ok(k)
    }
}

/// The Rust toolchain's installed standard-library sources (the
/// `rust-src` component), if present.
pub fn rust_src_dir() -> Option<PathBuf> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = std::process::Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let sysroot = String::from_utf8(out.stdout).ok()?;
    let dir = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library");
    dir.is_dir().then_some(dir)
}

// ---------------------------------------------------------------------------
// Latency histogram
// ---------------------------------------------------------------------------

/// Log-linear histogram of microsecond values: exact below 128 µs, then 64
/// sub-buckets per power of two (at most ~1.6% relative error), up to ~12
/// days.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

const SUB_BITS: u32 = 6;
const EXACT: u64 = 2 << SUB_BITS;
const MAX_EXP: u32 = 40;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; Self::index(u64::MAX) + 1],
            total: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        let v = v.min((1 << MAX_EXP) - 1);
        if v < EXACT {
            return v as usize;
        }
        let e = 63 - v.leading_zeros(); // > SUB_BITS
        let sub = (v >> (e - SUB_BITS)) & ((1 << SUB_BITS) - 1);
        (EXACT + u64::from(e - SUB_BITS - 1) * (1 << SUB_BITS) + sub) as usize
    }

    /// The largest value that falls in bucket `i`.
    fn upper(i: usize) -> u64 {
        let i = i as u64;
        if i < EXACT {
            return i;
        }
        let e = (i - EXACT) / (1 << SUB_BITS) + u64::from(SUB_BITS) + 1;
        let sub = (i - EXACT) % (1 << SUB_BITS);
        (((1 << SUB_BITS) + sub + 1) << (e - u64::from(SUB_BITS))) - 1
    }

    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.counts[Self::index(us)] += 1;
        self.total += 1;
    }

    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
    }

    /// The `q` quantile (0..=1), as the upper edge of its bucket.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_micros(Self::upper(i)));
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

/// xorshift64*: deterministic, dependency-free randomness for workloads.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }
}

/// `1234567` -> `1,234,567`.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration in the most readable unit: `850 µs`, `4.9 ms`, `1.20 s`.
pub fn duration(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.1} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// `1536` -> `1.5 KiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Events per batch, or `-` when nothing was emitted yet.
pub fn reduction(events: u64, batches: u64) -> String {
    if batches == 0 {
        "-".into()
    } else {
        format!("{:.1}x", events as f64 / batches as f64)
    }
}

// ---------------------------------------------------------------------------
// CPU time from /proc (Linux)
// ---------------------------------------------------------------------------

/// USER_HZ: the unit of `utime`/`stime` in `/proc/*/stat`; 100 on every
/// mainstream Linux configuration.
const USER_HZ: u64 = 100;

/// utime + stime of a `/proc/.../stat` file.
fn stat_cpu(stat: &str) -> Option<Duration> {
    // The command name (field 2) is parenthesised and may contain spaces;
    // fields after it start at field 3 (state). utime and stime are fields
    // 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
}

/// CPU time (user + system) of this process's threads whose name starts
/// with `prefix` (thread names are truncated to 15 bytes in `comm`), summed;
/// `None` if there is no such thread or no `/proc`.
pub fn thread_cpu(prefix: &str) -> Option<Duration> {
    let mut total = None;
    for entry in fs::read_dir("/proc/self/task").ok()?.flatten() {
        let dir = entry.path();
        let Ok(comm) = fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        if let Some(cpu) = fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|s| stat_cpu(&s))
        {
            total = Some(total.unwrap_or(Duration::ZERO) + cpu);
        }
    }
    total
}

/// The flusher thread's CPU time (`ringfold-flusher-<n>`, truncated to
/// `ringfold-flushe` in `comm`).
pub fn flusher_cpu() -> Option<Duration> {
    thread_cpu("ringfold-flush")
}

/// CPU time of the whole process.
pub fn process_cpu() -> Option<Duration> {
    stat_cpu(&fs::read_to_string("/proc/self/stat").ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_contiguous() {
        let mut last = 0;
        for v in (0..300_000u64).chain([1 << 39, u64::MAX]) {
            let v = v.min((1 << MAX_EXP) - 1);
            let i = Histogram::index(v);
            assert!(i >= last);
            assert!(Histogram::upper(i) >= v, "{v}");
            assert!(i == 0 || Histogram::upper(i - 1) < v, "{v}");
            last = i;
        }
        let mut h = Histogram::default();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let p99 = h.quantile(0.99).unwrap().as_micros() as f64;
        assert!((p99 - 99_000.0).abs() / 99_000.0 < 0.02, "{p99}");
    }
}
