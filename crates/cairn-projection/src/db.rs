//! `readmodels.db`: opening connections (WAL, `synchronous = FULL`), Cairn's own
//! table of projections (checkpoint, definition hash, state, last error), and the pool
//! of read-only connections that named queries run on.

use std::fs::File;
use std::path::Path;

use cairn_core::{Position, now_micros};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::config::ProjectionPlan;
use crate::error::{ReadSideError, storage};

/// The read-model database's file name inside the data directory.
pub const READ_MODEL_FILE: &str = "readmodels.db";
const LOCK_FILE: &str = "readmodels.lock";

/// Cairn's own schema in `readmodels.db`; `PRAGMA user_version` counts the migrations.
const MIGRATIONS: &[&str] = &["CREATE TABLE IF NOT EXISTS cairn_projections (
        name TEXT PRIMARY KEY,
        position INTEGER NOT NULL,
        definition_hash TEXT NOT NULL,
        state TEXT NOT NULL,
        error_position INTEGER,
        error_type TEXT,
        error_message TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    )"];

/// A projection's state as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoredState {
    Running,
    Failed,
    Rebuilding,
}

impl StoredState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StoredState::Running => "running",
            StoredState::Failed => "failed",
            StoredState::Rebuilding => "rebuilding",
        }
    }

    pub(crate) fn parse(text: &str) -> Self {
        match text {
            "failed" => StoredState::Failed,
            "rebuilding" => StoredState::Rebuilding,
            _ => StoredState::Running,
        }
    }
}

/// Why a projection stopped: the failing event and the database's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionError {
    /// The log position of the event that failed (the projection's checkpoint is the
    /// position before it).
    pub position: Position,
    /// The failing event's type; `None` when the failure was not an event's
    /// (the read-model database itself failed).
    pub event_type: Option<String>,
    pub message: String,
}

/// A projection's row in `cairn_projections`.
#[derive(Debug, Clone)]
pub(crate) struct StoredProjection {
    pub position: Position,
    pub definition_hash: String,
    pub state: StoredState,
    pub error: Option<ProjectionError>,
    /// Rebuilds since it was created (PostgreSQL only; always 0 on SQLite): a driver
    /// that finds it changed starts again from the stored row.
    pub resets: u64,
}

/// Holds `readmodels.lock`: one read side per data directory, or projections would be
/// applied twice.
pub(crate) fn lock_data_dir(data_dir: &Path) -> Result<File, ReadSideError> {
    Ok(cairn_store::sqlite::pool::lock_dir(data_dir, LOCK_FILE)?)
}

/// A connection that writes: WAL, and `synchronous = FULL` so that a committed batch
/// and its checkpoint are on disk together.
pub(crate) fn open_writer(path: &Path) -> Result<Connection, ReadSideError> {
    let connection = Connection::open(path)
        .map_err(|e| ReadSideError::Storage(format!("cannot open {}: {e}", path.display())))?;
    connection
        .execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 10000;
             PRAGMA cache_size = -16000;
             PRAGMA temp_store = MEMORY;",
        )
        .map_err(storage)?;
    let mode: String = connection
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .map_err(storage)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(ReadSideError::Storage(format!(
            "{} cannot use write-ahead logging (journal mode {mode})",
            path.display()
        )));
    }
    Ok(connection)
}

pub(crate) use cairn_store::sqlite::pool::{ReadPool, open_reader};

pub(crate) fn migrate(connection: &mut Connection) -> Result<(), ReadSideError> {
    let current: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(storage)?;
    let current = usize::try_from(current).unwrap_or(usize::MAX);
    if current > MIGRATIONS.len() {
        return Err(ReadSideError::Storage(format!(
            "{READ_MODEL_FILE} has schema version {current}, newer than this Cairn understands ({}); upgrade Cairn",
            MIGRATIONS.len()
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(storage)?;
        transaction.execute_batch(sql).map_err(storage)?;
        transaction
            .pragma_update(None, "user_version", (index + 1) as i64)
            .map_err(storage)?;
        transaction.commit().map_err(storage)?;
    }
    Ok(())
}

pub(crate) fn load(
    connection: &Connection,
    name: &str,
) -> Result<Option<StoredProjection>, ReadSideError> {
    connection
        .prepare_cached(
            "SELECT position, definition_hash, state, error_position, error_type, error_message
             FROM cairn_projections WHERE name = ?1",
        )
        .and_then(|mut statement| {
            statement
                .query_row([name], |row| {
                    let state = StoredState::parse(&row.get::<_, String>(2)?);
                    let error = match row.get::<_, Option<i64>>(3)? {
                        Some(position) => Some(ProjectionError {
                            position: position as Position,
                            event_type: row.get(4)?,
                            message: row.get::<_, Option<String>>(5)?.unwrap_or_default(),
                        }),
                        None => None,
                    };
                    Ok(StoredProjection {
                        position: row.get::<_, i64>(0)? as Position,
                        definition_hash: row.get(1)?,
                        state,
                        error,
                        resets: 0,
                    })
                })
                .optional()
        })
        .map_err(storage)
}

/// Creates a projection: runs its `setup` and records it at position 0, in one
/// transaction.
pub(crate) fn create(connection: &mut Connection, plan: &ProjectionPlan) -> Result<(), String> {
    let transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    run_all(&transaction, "setup", &plan.config.setup)?;
    let now = now_micros();
    transaction
        .execute(
            "INSERT INTO cairn_projections (name, position, definition_hash, state, created_at, updated_at)
             VALUES (?1, 0, ?2, 'running', ?3, ?3)",
            params![plan.config.name, plan.definition_hash, now],
        )
        .map_err(|e| e.to_string())?;
    transaction.commit().map_err(|e| e.to_string())
}

/// Rebuild's first step, in one transaction: `teardown`, `setup`, position 0, the new
/// definition, state `rebuilding`, no error.
pub(crate) fn reset(connection: &mut Connection, plan: &ProjectionPlan) -> Result<(), String> {
    let transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    run_all(&transaction, "teardown", &plan.config.teardown)?;
    run_all(&transaction, "setup", &plan.config.setup)?;
    transaction
        .execute(
            "UPDATE cairn_projections SET position = 0, definition_hash = ?2, state = 'rebuilding',
                error_position = NULL, error_type = NULL, error_message = NULL, updated_at = ?3
             WHERE name = ?1",
            params![plan.config.name, plan.definition_hash, now_micros()],
        )
        .map_err(|e| e.to_string())?;
    transaction.commit().map_err(|e| e.to_string())
}

fn run_all(connection: &Connection, what: &str, statements: &[String]) -> Result<(), String> {
    for (index, statement) in statements.iter().enumerate() {
        connection
            .execute_batch(statement)
            .map_err(|e| format!("{what} statement {} failed: {e}", index + 1))?;
    }
    Ok(())
}

/// Records the checkpoint and state (inside the caller's transaction, with the
/// batch's effects).
pub(crate) fn save_checkpoint(
    connection: &Connection,
    name: &str,
    position: Position,
    state: StoredState,
    error: Option<&ProjectionError>,
) -> rusqlite::Result<()> {
    connection
        .prepare_cached(
            "UPDATE cairn_projections SET position = ?2, state = ?3, error_position = ?4,
                error_type = ?5, error_message = ?6, updated_at = ?7
             WHERE name = ?1",
        )?
        .execute(params![
            name,
            position as i64,
            state.as_str(),
            error.map(|e| e.position as i64),
            error.and_then(|e| e.event_type.as_deref()),
            error.map(|e| e.message.as_str()),
            now_micros(),
        ])
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_connections_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(READ_MODEL_FILE);
        let writer = open_writer(&path).unwrap();
        writer
            .execute_batch("CREATE TABLE t (a); INSERT INTO t VALUES (1);")
            .unwrap();
        let reader = open_reader(&path).unwrap();
        let count: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(count, 1);
        for sql in [
            "INSERT INTO t VALUES (2)",
            "DELETE FROM t",
            "CREATE TABLE u (b)",
            "DROP TABLE t",
        ] {
            let error = reader.execute_batch(sql).unwrap_err().to_string();
            assert!(
                error.contains("readonly")
                    || error.contains("read-only")
                    || error.contains("query_only"),
                "{sql}: {error}"
            );
        }
        // Even with query_only switched off, the connection was opened read-only.
        reader.execute_batch("PRAGMA query_only = OFF").unwrap();
        assert!(reader.execute_batch("INSERT INTO t VALUES (3)").is_err());
    }
}
