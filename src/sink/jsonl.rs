//! `JsonLinesFile`: a JSON-lines file sink, one `write` per batch.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ahash::AHashMap;

use super::{json, JsonLine};
use crate::delivery::{Batch, Subscriber};
use crate::{Aggregate, Event, Histogram};

/// When the sink asks the OS to put written lines on the disk
/// (`File::sync_data`).
///
/// Every batch is written to the file (handed to the OS) as soon as it
/// arrives, whatever the policy: this only decides when the OS is also
/// made to persist it, which costs a disk round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Never: the OS writes back when it likes (lines survive a crash of
    /// the process, not of the machine).
    Never,
    /// After every batch's write.
    EveryBatch,
    /// After a batch's write when at least this long has passed since the
    /// last sync; and when the sink is dropped.
    Interval(Duration),
}

/// A typed error of the file sink. Construction errors are returned by
/// [`JsonLinesFileBuilder::build`]; errors while running are counted in
/// [`SinkStats`] and the last one is kept ([`SinkCounters::take_last_error`]),
/// never a panic.
#[derive(Debug)]
pub enum SinkError {
    /// A setting was out of range (`max_file_bytes` or `keep_files` of 0).
    InvalidConfig(&'static str),
    /// The file's directory does not exist.
    MissingDirectory {
        /// The directory.
        dir: PathBuf,
    },
    /// The file's directory cannot be written (permissions, a read-only
    /// file system, or a path component that is not a directory).
    DirectoryNotWritable {
        /// The directory.
        dir: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The file could not be opened for another reason.
    Open {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A write failed: the lines of that write are counted as lost
    /// (`SinkStats::lines_lost_to_errors`) and reported in band by the
    /// next write that succeeds.
    Write {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// Renaming or removing a file while rotating failed; the sink goes on
    /// writing to the current file.
    Rotate {
        /// The file being renamed or removed.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// `sync_data` failed.
    Sync {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkError::InvalidConfig(what) => write!(f, "invalid sink configuration: {what}"),
            SinkError::MissingDirectory { dir } => {
                write!(f, "directory {} does not exist", dir.display())
            }
            SinkError::DirectoryNotWritable { dir, source } => {
                write!(f, "directory {} is not writable: {source}", dir.display())
            }
            SinkError::Open { path, source } => {
                write!(f, "cannot open {}: {source}", path.display())
            }
            SinkError::Write { path, source } => {
                write!(f, "cannot write {}: {source}", path.display())
            }
            SinkError::Rotate { path, source } => {
                write!(f, "cannot rotate {}: {source}", path.display())
            }
            SinkError::Sync { path, source } => {
                write!(f, "cannot sync {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for SinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SinkError::InvalidConfig(_) | SinkError::MissingDirectory { .. } => None,
            SinkError::DirectoryNotWritable { source, .. }
            | SinkError::Open { source, .. }
            | SinkError::Write { source, .. }
            | SinkError::Rotate { source, .. }
            | SinkError::Sync { source, .. } => Some(source),
        }
    }
}

/// What a [`JsonLinesFile`] did, from [`SinkCounters::snapshot`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Batches taken.
    pub batches: u64,
    /// Event lines written (one per delivered event).
    pub lines: u64,
    /// Aggregate lines written (one per `Aggregate` and per `Histogram` of a
    /// batch).
    pub aggregate_lines: u64,
    /// `ringfold_loss` records written.
    pub loss_records: u64,
    /// Events the engine reported dropped (`Batch::dropped`), written in band.
    pub reported_dropped: u64,
    /// Batches this subscriber lost to lag (`Batch::lagged`), written in band.
    pub reported_lagged_batches: u64,
    /// Batches missing from a prefix's sequence (`seq` gaps), written in band.
    pub reported_missing_batches: u64,
    /// `write` calls made (one per batch, one more per rotation inside a batch).
    pub write_calls: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Rotations done.
    pub rotations: u64,
    /// `sync_data` calls made.
    pub fsyncs: u64,
    /// Lines lost because a write (or reopening the file) failed; each is
    /// also reported in band by the next write that succeeds.
    pub lines_lost_to_errors: u64,
    /// Failed writes or opens.
    pub write_errors: u64,
    /// Failed renames or removals while rotating.
    pub rotate_errors: u64,
    /// Failed `sync_data` calls.
    pub sync_errors: u64,
}

/// The live counters of a [`JsonLinesFile`], shared with whoever asked for
/// them ([`JsonLinesFile::counters`]) so they stay readable after the sink
/// moved into its subscription.
#[derive(Debug, Default)]
pub struct SinkCounters {
    batches: AtomicU64,
    lines: AtomicU64,
    aggregate_lines: AtomicU64,
    loss_records: AtomicU64,
    reported_dropped: AtomicU64,
    reported_lagged_batches: AtomicU64,
    reported_missing_batches: AtomicU64,
    write_calls: AtomicU64,
    bytes: AtomicU64,
    rotations: AtomicU64,
    fsyncs: AtomicU64,
    lines_lost_to_errors: AtomicU64,
    write_errors: AtomicU64,
    rotate_errors: AtomicU64,
    sync_errors: AtomicU64,
    last_error: Mutex<Option<SinkError>>,
}

impl SinkCounters {
    /// A snapshot of the counters.
    pub fn snapshot(&self) -> SinkStats {
        SinkStats {
            batches: self.batches.load(Relaxed),
            lines: self.lines.load(Relaxed),
            aggregate_lines: self.aggregate_lines.load(Relaxed),
            loss_records: self.loss_records.load(Relaxed),
            reported_dropped: self.reported_dropped.load(Relaxed),
            reported_lagged_batches: self.reported_lagged_batches.load(Relaxed),
            reported_missing_batches: self.reported_missing_batches.load(Relaxed),
            write_calls: self.write_calls.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            rotations: self.rotations.load(Relaxed),
            fsyncs: self.fsyncs.load(Relaxed),
            lines_lost_to_errors: self.lines_lost_to_errors.load(Relaxed),
            write_errors: self.write_errors.load(Relaxed),
            rotate_errors: self.rotate_errors.load(Relaxed),
            sync_errors: self.sync_errors.load(Relaxed),
        }
    }

    /// The last error met while running, if any (taking it clears it).
    pub fn take_last_error(&self) -> Option<SinkError> {
        self.last_error.lock().ok().and_then(|mut e| e.take())
    }

    fn error(&self, counter: &AtomicU64, e: SinkError) {
        counter.fetch_add(1, Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(e);
        }
    }
}

type Encoder<T> = Box<dyn FnMut(&Event<T>, &mut Vec<u8>) + Send>;
type WriteHook = Box<dyn FnMut(&mut File, &[u8]) -> io::Result<()> + Send>;

/// Configures a [`JsonLinesFile`]; from [`JsonLinesFile::builder`].
pub struct JsonLinesFileBuilder {
    path: PathBuf,
    max_file_bytes: u64,
    keep_files: usize,
    fsync: FsyncPolicy,
    initial_buffer: usize,
    write_hook: Option<WriteHook>,
}

impl fmt::Debug for JsonLinesFileBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonLinesFileBuilder")
            .field("path", &self.path)
            .field("max_file_bytes", &self.max_file_bytes)
            .field("keep_files", &self.keep_files)
            .field("fsync", &self.fsync)
            .field("initial_buffer", &self.initial_buffer)
            .finish_non_exhaustive()
    }
}

impl JsonLinesFileBuilder {
    /// Rotate when the current file would pass `n` bytes (default 64 MiB).
    /// Files are cut between lines: a file is larger than `n` only if a
    /// single line is.
    #[must_use]
    pub fn max_file_bytes(mut self, n: u64) -> Self {
        self.max_file_bytes = n;
        self
    }

    /// Keep `n` files in all (default 5): the current one, `path`, and
    /// `path.1` (newest) to `path.{n-1}` (oldest); older ones are removed.
    /// With 1 the current file is truncated when it is full.
    #[must_use]
    pub fn keep_files(mut self, n: usize) -> Self {
        self.keep_files = n;
        self
    }

    /// When to `sync_data` (default `FsyncPolicy::Interval(1 s)`).
    #[must_use]
    pub fn fsync(mut self, policy: FsyncPolicy) -> Self {
        self.fsync = policy;
        self
    }

    /// The line buffer's starting capacity (default 4 KiB). It grows to
    /// the largest batch met, and shrinks back once it is over 1 MiB and
    /// over 4 times what a batch needs.
    #[must_use]
    pub fn initial_buffer(mut self, bytes: usize) -> Self {
        self.initial_buffer = bytes;
        self
    }

    /// Replaces the sink's write (`file.write_all(bytes)`) by `hook`, called
    /// once per batch (once more per rotation inside a batch): to count or
    /// slow down writes in tests and benchmarks, or to write elsewhere. An
    /// error it returns is handled like a failed write.
    #[must_use]
    pub fn write_with(
        mut self,
        hook: impl FnMut(&mut File, &[u8]) -> io::Result<()> + Send + 'static,
    ) -> Self {
        self.write_hook = Some(Box::new(hook));
        self
    }

    /// Opens (creates, or appends to) the file, for payloads implementing
    /// [`JsonLine`]. Errors: `InvalidConfig`, `MissingDirectory`,
    /// `DirectoryNotWritable`, `Open`.
    pub fn build<T: JsonLine + 'static>(self) -> Result<JsonLinesFile<T>, SinkError> {
        self.build_with(|e: &Event<T>, out: &mut Vec<u8>| {
            e.payload().write_json_line(e.name(), out)
        })
    }

    /// Like [`build`](Self::build) with a closure that appends one JSON
    /// object (no newline) for an event.
    ///
    /// ```
    /// use ringfold::sink::{json, JsonLinesFile};
    /// use ringfold::Event;
    /// let dir = std::env::temp_dir().join(format!("ringfold-doc-build-with-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let sink = JsonLinesFile::builder(dir.join("rows.jsonl"))
    ///     .build_with(|e: &Event<(u32, bool)>, out: &mut Vec<u8>| {
    ///         let (id, ok) = *e.payload();
    ///         out.extend_from_slice(b"{\"id\":");
    ///         json::write_u64(out, u64::from(id));
    ///         out.extend_from_slice(b",\"ok\":");
    ///         json::write_bool(out, ok);
    ///         out.push(b'}');
    ///     })?;
    /// # drop(sink);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn build_with<T: 'static>(
        self,
        encode: impl FnMut(&Event<T>, &mut Vec<u8>) + Send + 'static,
    ) -> Result<JsonLinesFile<T>, SinkError> {
        if self.max_file_bytes == 0 {
            return Err(SinkError::InvalidConfig("max_file_bytes must be non-zero"));
        }
        if self.keep_files == 0 {
            return Err(SinkError::InvalidConfig("keep_files must be non-zero"));
        }
        let (file, size) = open(&self.path)?;
        Ok(JsonLinesFile {
            path: self.path,
            max_file_bytes: self.max_file_bytes,
            keep_files: self.keep_files,
            fsync: self.fsync,
            initial_buffer: self.initial_buffer,
            write_hook: self.write_hook,
            encode: Box::new(encode),
            file: Some(file),
            size,
            buf: Vec::with_capacity(self.initial_buffer),
            counters: Arc::new(SinkCounters::default()),
            last_sync: Instant::now(),
            unsynced: false,
            unreported_error_lines: 0,
            failed_at: None,
            next_seq: AHashMap::new(),
        })
    }
}

/// Opens `path` for appending and returns it with its current size.
fn open(path: &Path) -> Result<(File, u64), SinkError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| open_error(path, e))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((file, size))
}

/// Classifies a failed open by what is wrong with the directory.
fn open_error(path: &Path, source: io::Error) -> SinkError {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match fs::metadata(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => SinkError::MissingDirectory { dir },
        Err(_) => SinkError::DirectoryNotWritable { dir, source },
        Ok(m) if !m.is_dir() => SinkError::DirectoryNotWritable { dir, source },
        Ok(_) if source.kind() == io::ErrorKind::PermissionDenied => {
            SinkError::DirectoryNotWritable { dir, source }
        }
        Ok(_) => SinkError::Open {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// A JSON-lines file sink: subscribe it to an engine and every batch
/// becomes lines of one file, written with one `write` call per batch.
///
/// * **Lines.** One per event (through [`JsonLine`] or the closure given to
///   [`JsonLinesFileBuilder::build_with`]), one per `Aggregate`
///   (`{"ts":..,"name":..,"aggregate":{"count":..,"sum":..,"min":..,"max":..,"mean":..}}`),
///   one per `Histogram`
///   (`{"ts":..,"name":..,"histogram":{"count":..,"sum":..,"min":..,"max":..,"p50":..,"p90":..,"p99":..,"p999":..}}`),
///   in the batch's order. The batch's lines are built in one reused buffer
///   (4 KiB at first) and written at once.
/// * **Loss in band.** Before a batch's lines, a record
///   `{"ts":..,"ringfold_loss":{"prefix":..,"dropped":N,"lagged_batches":M,"missing_batches":K,"write_failed_lines":W}}`
///   (only the non-zero counts) when events of the prefix were dropped
///   since its previous batch (`Batch::dropped`: ring full, urgent
///   timeout, not numeric), when this subscriber lost batches to lag
///   (`Batch::lagged`, counted in batches, of any prefix), when the
///   prefix's sequence skipped windows (`Batch::seq`), or when an earlier
///   write failed (its lines are lost: counted, and reported here).
/// * **Flushing.** Nothing is held back across batches: every batch is
///   handed to the OS when it arrives, so a line waits at most its prefix's
///   policy window (plus delivery) before it is in the file, also under
///   continuous load (a busy prefix's windows close sooner, by count,
///   never later). [`FsyncPolicy`] says when it is also made durable.
/// * **Rotation** by size, between lines, keeping N files.
/// * **Errors** are typed ([`SinkError`]), counted ([`SinkStats`]) and
///   never a panic: a failed write is retried with a reopened file on the
///   next batch.
///
/// It runs as a callback subscriber, on the delivery thread of its own
/// subscription; a slow disk makes only this subscriber lag.
///
/// ```
/// use ringfold::sink::{FsyncPolicy, JsonLinesFile};
/// use ringfold::{Engine, SubscribeOptions, Value};
/// let dir = std::env::temp_dir().join(format!("ringfold-doc-jsonl-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("events.jsonl");
/// let engine = Engine::<Value>::builder().build()?;
/// let sink = JsonLinesFile::builder(&path)
///     .max_file_bytes(16 << 20)
///     .keep_files(3)
///     .fsync(FsyncPolicy::Never)
///     .build::<Value>()?;
/// let counters = sink.counters();
/// let _sub = engine.subscribe_with("data:*", SubscribeOptions::new("jsonl"), sink)?;
/// engine.publish("data:users:created", 7u64)?;
/// engine.shutdown()?; // delivers (and so writes) everything accepted
/// let text = std::fs::read_to_string(&path)?;
/// assert_eq!(text, "{\"name\":\"data:users:created\",\"value\":7}\n");
/// assert_eq!(counters.snapshot().write_calls, 1);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct JsonLinesFile<T> {
    path: PathBuf,
    max_file_bytes: u64,
    keep_files: usize,
    fsync: FsyncPolicy,
    initial_buffer: usize,
    write_hook: Option<WriteHook>,
    encode: Encoder<T>,
    /// `None` after a failed write or open: reopened on the next batch.
    file: Option<File>,
    /// Bytes in the current file.
    size: u64,
    buf: Vec<u8>,
    counters: Arc<SinkCounters>,
    last_sync: Instant,
    /// Written since the last sync.
    unsynced: bool,
    /// Lines lost to failed writes and not yet reported in band.
    unreported_error_lines: u64,
    /// After a failed write: the file's size before it. If the reopened file
    /// is larger, the write left part of a line: the next write starts with
    /// `\n` to end it.
    failed_at: Option<u64>,
    /// Per prefix, the sequence number the next batch should have.
    next_seq: AHashMap<Box<str>, u64>,
}

impl<T> fmt::Debug for JsonLinesFile<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonLinesFile")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("stats", &self.counters.snapshot())
            .finish_non_exhaustive()
    }
}

impl JsonLinesFile<()> {
    /// A builder for a sink writing to `path`.
    pub fn builder(path: impl AsRef<Path>) -> JsonLinesFileBuilder {
        JsonLinesFileBuilder {
            path: path.as_ref().to_path_buf(),
            max_file_bytes: 64 << 20,
            keep_files: 5,
            fsync: FsyncPolicy::Interval(Duration::from_secs(1)),
            initial_buffer: 4096,
            write_hook: None,
        }
    }
}

impl<T> JsonLinesFile<T> {
    /// The sink's counters, shared: keep this handle to read them after
    /// the sink has moved into its subscription.
    pub fn counters(&self) -> Arc<SinkCounters> {
        self.counters.clone()
    }

    /// The current file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of the `i`-th rotated file (`path.i`; 0 is `path` itself).
    fn rotated(&self, i: usize) -> PathBuf {
        if i == 0 {
            return self.path.clone();
        }
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{i}"));
        PathBuf::from(s)
    }

    /// Writes the loss record, if the batch reports any loss.
    fn write_loss(&mut self, batch: &Batch<T>) {
        let dropped = batch.dropped();
        let lagged = batch.lagged();
        let expected = self.next_seq.get(batch.prefix()).copied();
        let missing = expected.map_or(0, |next| batch.seq().saturating_sub(next));
        let next = batch.last_seq().saturating_add(1);
        match self.next_seq.get_mut(batch.prefix()) {
            Some(n) => *n = next,
            None => {
                self.next_seq.insert(batch.prefix().into(), next);
            }
        }
        let failed = self.unreported_error_lines;
        if dropped == 0 && lagged == 0 && missing == 0 && failed == 0 {
            return;
        }
        let out = &mut self.buf;
        out.extend_from_slice(b"{\"ts\":");
        json::write_timestamp(out, batch.opened_at_system());
        out.extend_from_slice(b",\"ringfold_loss\":{\"prefix\":");
        json::write_str(out, batch.prefix());
        for (key, n) in [
            (&b",\"dropped\":"[..], dropped),
            (b",\"lagged_batches\":", lagged),
            (b",\"missing_batches\":", missing),
            (b",\"write_failed_lines\":", failed),
        ] {
            if n > 0 {
                out.extend_from_slice(key);
                json::write_u64(out, n);
            }
        }
        out.extend_from_slice(b"}}\n");
        let c = &self.counters;
        c.loss_records.fetch_add(1, Relaxed);
        c.reported_dropped.fetch_add(dropped, Relaxed);
        c.reported_lagged_batches.fetch_add(lagged, Relaxed);
        c.reported_missing_batches.fetch_add(missing, Relaxed);
        // Reported now; if this very write fails, its lines (this record
        // included) are counted again.
        self.unreported_error_lines = 0;
    }

    /// The start of a summary line, up to its figures' `count`:
    /// `{"ts":..,"name":..,"<kind>":{"count":N`.
    fn write_summary_head(out: &mut Vec<u8>, batch: &Batch<T>, name: &str, kind: &[u8], n: u64) {
        out.extend_from_slice(b"{\"ts\":");
        json::write_timestamp(out, batch.closed_at_system());
        out.extend_from_slice(b",\"name\":");
        json::write_str(out, name);
        out.extend_from_slice(b",\"");
        out.extend_from_slice(kind);
        out.extend_from_slice(b"\":{\"count\":");
        json::write_u64(out, n);
    }

    fn write_aggregate(out: &mut Vec<u8>, batch: &Batch<T>, a: &Aggregate) {
        Self::write_summary_head(out, batch, a.name(), b"aggregate", a.count());
        out.extend_from_slice(b",\"sum\":");
        match a.sum_exact() {
            Some(s) => {
                let _ = write!(out, "{s}");
            }
            None => json::write_f64(out, a.sum()),
        }
        out.extend_from_slice(b",\"min\":");
        json::write_f64(out, a.min());
        out.extend_from_slice(b",\"max\":");
        json::write_f64(out, a.max());
        out.extend_from_slice(b",\"mean\":");
        json::write_f64(out, a.mean());
        out.extend_from_slice(b"}}\n");
    }

    /// One line per histogram (`Policy::histogram`): its window's count,
    /// sum, extremes and quantiles (within the sketch's 1 % bound).
    fn write_histogram(out: &mut Vec<u8>, batch: &Batch<T>, h: &Histogram) {
        Self::write_summary_head(out, batch, h.name(), b"histogram", h.count());
        for (field, v) in [
            ("sum", h.sum()),
            ("min", h.min()),
            ("max", h.max()),
            ("p50", h.p50()),
            ("p90", h.p90()),
            ("p99", h.p99()),
            ("p999", h.p999()),
        ] {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(field.as_bytes());
            out.extend_from_slice(b"\":");
            json::write_f64(out, v);
        }
        out.extend_from_slice(b"}}\n");
    }

    /// Writes `self.buf` (whole lines), rotating between lines as needed.
    fn write_out(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let mut rest = &buf[..];
        // A rotation that could not make room (its renames or its reopen
        // failed) must not loop: after one, the next line goes out anyway.
        let mut rotated_in_vain = false;
        while !rest.is_empty() {
            if self.file.is_none() {
                match open(&self.path) {
                    Ok((f, size)) => {
                        self.file = Some(f);
                        self.size = size;
                    }
                    Err(e) => {
                        self.lose(rest);
                        self.counters.error(&self.counters.write_errors, e);
                        break;
                    }
                }
                if self
                    .failed_at
                    .take()
                    .is_some_and(|before| self.size > before)
                {
                    // The failed write left part of a line: end it.
                    if self.write_chunk(b"\n").is_err() {
                        self.lose(rest);
                        break;
                    }
                }
            }
            let room = self.max_file_bytes.saturating_sub(self.size);
            let chunk = if rest.len() as u64 <= room {
                rest.len()
            } else {
                let fits = &rest[..room.min(rest.len() as u64) as usize];
                match fits.iter().rposition(|&b| b == b'\n') {
                    Some(i) => i + 1,
                    // Not even one line fits: a fresh file takes the first
                    // line whole; a used one is rotated first.
                    None if self.size == 0 || rotated_in_vain => rest
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(rest.len(), |i| i + 1),
                    None => 0,
                }
            };
            if chunk > 0 {
                if self.write_chunk(&rest[..chunk]).is_err() {
                    self.lose(rest);
                    break;
                }
                rest = &rest[chunk..];
                rotated_in_vain = false;
            } else {
                rotated_in_vain = true;
            }
            if !rest.is_empty() {
                self.rotate();
            }
        }
        let used = buf.len();
        self.buf = buf;
        self.buf.clear();
        // Give back a burst's memory once batches are much smaller again;
        // steady large batches keep their buffer.
        if self.buf.capacity() > (1 << 20).max(4 * used) {
            self.buf.shrink_to(self.initial_buffer.max(4 * used));
        }
    }

    /// Counts the lines of `lost` as lost to an error, to report in band.
    fn lose(&mut self, lost: &[u8]) {
        let lines = lost.iter().filter(|&&b| b == b'\n').count() as u64;
        self.counters.lines_lost_to_errors.fetch_add(lines, Relaxed);
        self.unreported_error_lines += lines;
    }

    /// One write call; on failure the file is closed (reopened next time).
    fn write_chunk(&mut self, bytes: &[u8]) -> Result<(), ()> {
        let Some(file) = self.file.as_mut() else {
            return Err(());
        };
        self.counters.write_calls.fetch_add(1, Relaxed);
        let r = match self.write_hook.as_mut() {
            Some(hook) => hook(file, bytes),
            None => file.write_all(bytes),
        };
        match r {
            Ok(()) => {
                self.size += bytes.len() as u64;
                self.counters.bytes.fetch_add(bytes.len() as u64, Relaxed);
                self.unsynced = true;
                Ok(())
            }
            Err(source) => {
                self.file = None;
                self.failed_at = Some(self.size);
                let e = SinkError::Write {
                    path: self.path.clone(),
                    source,
                };
                self.counters.error(&self.counters.write_errors, e);
                Err(())
            }
        }
    }

    fn sync(&mut self) {
        if !self.unsynced {
            return;
        }
        if let Some(file) = self.file.as_ref() {
            self.counters.fsyncs.fetch_add(1, Relaxed);
            if let Err(source) = file.sync_data() {
                let e = SinkError::Sync {
                    path: self.path.clone(),
                    source,
                };
                self.counters.error(&self.counters.sync_errors, e);
            }
        }
        self.unsynced = false;
        self.last_sync = Instant::now();
    }

    /// Closes the current file and starts a fresh one, shifting the kept
    /// ones (`path` -> `path.1` -> ... -> `path.{keep-1}`, the oldest removed).
    fn rotate(&mut self) {
        if self.fsync != FsyncPolicy::Never {
            self.sync();
        }
        self.file = None;
        self.counters.rotations.fetch_add(1, Relaxed);
        let keep = self.keep_files;
        if keep == 1 {
            match OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&self.path)
            {
                Ok(f) => {
                    self.file = Some(f);
                    self.size = 0;
                }
                Err(source) => {
                    let e = SinkError::Rotate {
                        path: self.path.clone(),
                        source,
                    };
                    self.counters.error(&self.counters.rotate_errors, e);
                }
            }
            return;
        }
        let mut failed = false;
        let oldest = self.rotated(keep - 1);
        if let Err(source) = fs::remove_file(&oldest) {
            if source.kind() != io::ErrorKind::NotFound {
                failed = true;
                let e = SinkError::Rotate {
                    path: oldest,
                    source,
                };
                self.counters.error(&self.counters.rotate_errors, e);
            }
        }
        for i in (0..keep - 1).rev() {
            let from = self.rotated(i);
            if let Err(source) = fs::rename(&from, self.rotated(i + 1)) {
                if source.kind() != io::ErrorKind::NotFound {
                    failed = true;
                    let e = SinkError::Rotate { path: from, source };
                    self.counters.error(&self.counters.rotate_errors, e);
                }
            }
        }
        match open(&self.path) {
            Ok((f, size)) => {
                self.file = Some(f);
                // A failed rename leaves the old, full file in place: go on
                // appending to it rather than rotating on every batch.
                self.size = if failed { 0 } else { size };
            }
            Err(e) => self.counters.error(&self.counters.write_errors, e),
        }
    }

    fn after_write(&mut self) {
        match self.fsync {
            FsyncPolicy::Never => {}
            FsyncPolicy::EveryBatch => self.sync(),
            FsyncPolicy::Interval(d) => {
                if self.last_sync.elapsed() >= d {
                    self.sync();
                }
            }
        }
    }
}

impl<T: Send + 'static> Subscriber<T> for JsonLinesFile<T> {
    /// One event outside a batch: written as one line, at once.
    fn on_event(&mut self, event: &Event<T>) {
        (self.encode)(event, &mut self.buf);
        self.buf.push(b'\n');
        self.counters.lines.fetch_add(1, Relaxed);
        self.write_out();
        self.after_write();
    }

    fn on_batch(&mut self, batch: &Batch<T>) {
        self.counters.batches.fetch_add(1, Relaxed);
        self.write_loss(batch);
        for event in batch.events() {
            (self.encode)(event, &mut self.buf);
            self.buf.push(b'\n');
        }
        for a in batch.aggregates() {
            Self::write_aggregate(&mut self.buf, batch, a);
        }
        for h in batch.histograms() {
            Self::write_histogram(&mut self.buf, batch, h);
        }
        self.counters.lines.fetch_add(batch.len() as u64, Relaxed);
        self.counters.aggregate_lines.fetch_add(
            (batch.aggregates().len() + batch.histograms().len()) as u64,
            Relaxed,
        );
        if !self.buf.is_empty() {
            self.write_out();
            self.after_write();
        }
    }
}

impl<T> Drop for JsonLinesFile<T> {
    /// Reports lines lost to a failed write that no later write reported
    /// (one last try), and syncs unless the policy is `Never`.
    fn drop(&mut self) {
        if self.unreported_error_lines > 0 {
            let lost = self.unreported_error_lines;
            self.buf.clear();
            self.buf
                .extend_from_slice(b"{\"ringfold_loss\":{\"write_failed_lines\":");
            json::write_u64(&mut self.buf, lost);
            self.buf.extend_from_slice(b"}}\n");
            self.unreported_error_lines = 0;
            self.counters.loss_records.fetch_add(1, Relaxed);
            self.write_out();
        }
        if self.fsync != FsyncPolicy::Never {
            self.sync();
        }
    }
}
