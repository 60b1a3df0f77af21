//! `tower`'s slow consumer: an SQLite event log that stores each `data:*`
//! batch as ONE transaction (a batch row, then one row per event), with
//! `synchronous = FULL`, so every commit waits for the disk as a durable
//! audit log must. One transaction per batch is the point of batching for
//! a database sink: the commit, not the row, is what costs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection};

use crate::common::Histogram;
use crate::Batch;

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = FULL;
    CREATE TABLE batches (
        id INTEGER PRIMARY KEY, prefix TEXT NOT NULL, seq INTEGER NOT NULL,
        reason TEXT NOT NULL, events INTEGER NOT NULL, lagged INTEGER NOT NULL);
    CREATE TABLE events (
        batch INTEGER NOT NULL REFERENCES batches(id), name TEXT NOT NULL,
        payload TEXT NOT NULL);
";

/// What the sink did, readable while it runs.
#[derive(Default)]
pub struct SinkCounters {
    pub transactions: AtomicU64,
    pub rows: AtomicU64,
    pub errors: AtomicU64,
    /// Time per transaction (begin to commit).
    pub commit: Mutex<Histogram>,
}

/// The sink; owns its connection (one writer).
pub struct SqliteSink {
    conn: Connection,
    path: PathBuf,
    counters: Arc<SinkCounters>,
}

impl SqliteSink {
    /// Creates a fresh event log at `path` (removed when the sink drops).
    pub fn create(path: &Path, counters: Arc<SinkCounters>) -> rusqlite::Result<Self> {
        let _ = std::fs::remove_file(path);
        let conn = Connection::open(path)?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteSink {
            conn,
            path: path.to_path_buf(),
            counters,
        })
    }

    /// Writes one batch as one transaction; errors are counted, never
    /// raised (a sink must not take the pipeline down).
    pub fn write(&mut self, batch: &Batch) {
        let started = std::time::Instant::now();
        match self.try_write(batch) {
            Ok(rows) => {
                self.counters.transactions.fetch_add(1, Ordering::Relaxed);
                self.counters.rows.fetch_add(rows, Ordering::Relaxed);
            }
            Err(_) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        let took = started.elapsed();
        self.counters
            .commit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(took);
    }

    fn try_write(&mut self, batch: &Batch) -> rusqlite::Result<u64> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO batches (prefix, seq, reason, events, lagged) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                batch.prefix(),
                batch.seq() as i64,
                format!("{:?}", batch.reason()),
                batch.len() as i64,
                batch.lagged() as i64
            ],
        )?;
        let id = tx.last_insert_rowid();
        let mut rows = 0;
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO events (batch, name, payload) VALUES (?1, ?2, ?3)")?;
            for e in batch.events() {
                insert.execute(params![id, e.name(), e.payload().to_string()])?;
                rows += 1;
            }
        }
        tx.commit()?;
        Ok(rows)
    }
}

impl Drop for SqliteSink {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}
