//! Pieces of SQLite plumbing shared by every SQLite file Cairn keeps (the event store's
//! `events.db`, the read side's `readmodels.db`): a pool of read-only connections used
//! on the blocking thread pool, and the lock that gives a data directory one owner.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

use super::schema::internal;
use crate::StoreError;

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
pub struct ReadPool {
    path: PathBuf,
    idle: Arc<Mutex<Vec<Connection>>>,
    permits: Arc<Semaphore>,
}

impl ReadPool {
    pub fn open(path: PathBuf, size: usize) -> Result<Self, StoreError> {
        let size = size.max(1);
        let mut idle = Vec::with_capacity(size);
        for _ in 0..size {
            idle.push(open_reader(&path)?);
        }
        Ok(Self {
            path,
            idle: Arc::new(Mutex::new(idle)),
            permits: Arc::new(Semaphore::new(size)),
        })
    }

    /// Runs `work` on an idle connection, off the async executor.
    pub async fn run<T, E, F>(&self, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("the database is closed".into()))?;
        let idle = Arc::clone(&self.idle);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let connection = idle.lock().ok().and_then(|mut idle| idle.pop());
            let mut connection = match connection {
                Some(connection) => connection,
                None => open_reader(&path)?,
            };
            let result = work(&mut connection);
            if let Ok(mut idle) = idle.lock() {
                idle.push(connection);
            }
            drop(permit);
            result
        })
        .await
        .map_err(|e| StoreError::Internal(format!("read task failed: {e}")))?
    }

    /// Closes the pool: later reads fail, idle connections are closed.
    pub fn close(&self) {
        self.permits.close();
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}
