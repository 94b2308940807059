//! Pieces of SQLite plumbing shared by every SQLite file Cairn keeps (the event store's
//! `events.db`, the read side's `readmodels.db`): a pool of read-only connections used
//! on the blocking thread pool, and the lock that gives a data directory one owner.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

use super::schema::internal;
use crate::metrics as m;
use crate::{StorageSize, StoreError};

/// Opens a read connection; it can never write (read-only, and `query_only`).
pub fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    connection
        .execute_batch(
            "PRAGMA busy_timeout = 5000;
             PRAGMA cache_size = -16000;
             PRAGMA query_only = ON;",
        )
        .map_err(internal)?;
    connection.set_prepared_statement_cache_capacity(128);
    Ok(connection)
}

/// Takes `file_name` in `data_dir` (creating both when missing) with an exclusive lock
/// held as long as the returned file lives: a second process is refused instead of
/// writing beside the first.
pub fn lock_dir(data_dir: &Path, file_name: &str) -> Result<File, StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot create data directory {}: {e}",
            data_dir.display()
        ))
    })?;
    let path = data_dir.join(file_name);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    file.try_lock().map_err(|_| {
        StoreError::Unavailable(format!(
            "{} is in use by another Cairn process",
            path.display()
        ))
    })?;
    Ok(file)
}

/// Read-only connections to one SQLite file, each used on the blocking thread pool.
/// Measured as the pool `name`: the time to get a connection (`cairn_pool_wait_seconds`,
/// recorded per read) and, when [`ReadPool::record_gauges`] is called, the connections
/// in use, idle and waited for.
pub struct ReadPool {
    path: PathBuf,
    name: &'static str,
    size: usize,
    idle: Arc<Mutex<Vec<Connection>>>,
    permits: Arc<Semaphore>,
    /// Callers waiting for a permit.
    waiting: AtomicUsize,
    /// Permits held: connections in use (or about to be).
    in_use: Arc<AtomicUsize>,
}

/// Counts one caller in `counter` while it lives (a cancelled wait uncounts itself).
struct Counted<C: std::ops::Deref<Target = AtomicUsize>>(C);

impl<C: std::ops::Deref<Target = AtomicUsize>> Counted<C> {
    fn new(counter: C) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl<C: std::ops::Deref<Target = AtomicUsize>> Drop for Counted<C> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ReadPool {
    /// `size` read connections to `path`, measured as the pool `name` (`events`,
    /// `readmodels`).
    pub fn open(path: PathBuf, size: usize, name: &'static str) -> Result<Self, StoreError> {
        let size = size.max(1);
        let mut idle = Vec::with_capacity(size);
        for _ in 0..size {
            idle.push(open_reader(&path)?);
        }
        Ok(Self {
            path,
            name,
            size,
            idle: Arc::new(Mutex::new(idle)),
            permits: Arc::new(Semaphore::new(size)),
            waiting: AtomicUsize::new(0),
            in_use: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Runs `work` on an idle connection, off the async executor.
    pub async fn run<T, E, F>(&self, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    {
        let asked = Instant::now();
        let permit = {
            let _waiting = Counted::new(&self.waiting);
            Arc::clone(&self.permits)
                .acquire_owned()
                .await
                .map_err(|_| StoreError::Unavailable("the database is closed".into()))?
        };
        let in_use = Counted::new(Arc::clone(&self.in_use));
        let idle = Arc::clone(&self.idle);
        let path = self.path.clone();
        let (waited, result) = tokio::task::spawn_blocking(move || {
            let connection = idle.lock().ok().and_then(|mut idle| idle.pop());
            let mut connection = match connection {
                Some(connection) => connection,
                None => match open_reader(&path) {
                    Ok(connection) => connection,
                    Err(error) => return (asked.elapsed(), Err(E::from(error))),
                },
            };
            let waited = asked.elapsed();
            let result = work(&mut connection);
            if let Ok(mut idle) = idle.lock() {
                idle.push(connection);
            }
            drop(in_use);
            drop(permit);
            (waited, result)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("read task failed: {e}")))?;
        // Recorded here rather than on the blocking thread: the caller's recorder.
        metrics::histogram!(m::POOL_WAIT_SECONDS, "pool" => self.name).record(waited.as_secs_f64());
        result
    }

    /// Sets the pool's gauges: connections in use and idle, callers waiting.
    pub fn record_gauges(&self) {
        let in_use = self.in_use.load(Ordering::Relaxed).min(self.size);
        let idle = self.size - in_use;
        let waiting = self.waiting.load(Ordering::Relaxed);
        metrics::gauge!(m::POOL_CONNECTIONS, "pool" => self.name, "state" => "in_use")
            .set(in_use as f64);
        metrics::gauge!(m::POOL_CONNECTIONS, "pool" => self.name, "state" => "idle")
            .set(idle as f64);
        metrics::gauge!(m::POOL_WAITING, "pool" => self.name).set(waiting as f64);
    }

    /// Closes the pool: later reads fail, idle connections are closed.
    pub fn close(&self) {
        self.permits.close();
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}

/// The bytes a SQLite database takes on disk: the file and its write-ahead log (absent
/// when no connection has it open). Blocking: call it off the async executor.
pub fn storage_size(path: &Path) -> std::io::Result<StorageSize> {
    let main = std::fs::metadata(path)?.len();
    let mut wal_path = path.as_os_str().to_owned();
    wal_path.push("-wal");
    let wal = match std::fs::metadata(PathBuf::from(wal_path)) {
        Ok(metadata) => metadata.len(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
        Err(error) => return Err(error),
    };
    Ok(StorageSize {
        total_bytes: main + wal,
        wal_bytes: Some(wal),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    }

    #[tokio::test]
    async fn the_pool_measures_waits_connections_in_use_and_waiters() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(&[0.001, 1.0])
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        // This test's runtime runs on this thread only: everything records here.
        let _recorder = metrics::set_default_local_recorder(&recorder);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x);")
            .unwrap();
        let pool = ReadPool::open(path.clone(), 1, "test").unwrap();

        // One read holds the only connection until told to stop; a second waits.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (started, has_started) = tokio::sync::oneshot::channel();
        let holder = pool.run(move |_connection| {
            let _ = started.send(());
            let _ = released.recv();
            Ok::<_, StoreError>(())
        });
        let waiter = pool.run(|connection| {
            connection
                .query_row("SELECT count(*) FROM t", [], |row| row.get::<_, i64>(0))
                .map_err(internal)
        });
        let observe = async {
            let _ = has_started.await;
            // The waiter asks after the holder took the permit (both futures polled in
            // order); give it a turn to queue on the semaphore.
            tokio::task::yield_now().await;
            pool.record_gauges();
            let text = handle.render();
            release.send(()).unwrap();
            text
        };
        let (held, count, during) = tokio::join!(holder, waiter, observe);
        held.unwrap();
        assert_eq!(count.unwrap(), 0);
        let in_use = r#"cairn_pool_connections{pool="test",state="in_use"}"#;
        assert_eq!(value_of(&during, in_use), Some(1.0), "{during}");
        let idle = r#"cairn_pool_connections{pool="test",state="idle"}"#;
        assert_eq!(value_of(&during, idle), Some(0.0), "{during}");
        assert_eq!(
            value_of(&during, r#"cairn_pool_waiting{pool="test"}"#),
            Some(1.0),
            "{during}"
        );

        pool.record_gauges();
        let after = handle.render();
        assert_eq!(value_of(&after, in_use), Some(0.0), "{after}");
        assert_eq!(value_of(&after, idle), Some(1.0), "{after}");
        assert_eq!(
            value_of(&after, r#"cairn_pool_waiting{pool="test"}"#),
            Some(0.0)
        );
        // Two waits recorded; the second waited for the first read to end.
        assert_eq!(
            value_of(&after, r#"cairn_pool_wait_seconds_count{pool="test"}"#),
            Some(2.0),
            "{after}"
        );
        let size = storage_size(&path).unwrap();
        assert!(size.total_bytes >= 4096, "{size:?}");
        assert!(size.wal_bytes.is_some());
    }
}
