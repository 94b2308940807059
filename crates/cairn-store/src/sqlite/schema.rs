//! Opening connections and migrating the schema.

use std::path::Path;

use rusqlite::Connection;

use crate::StoreError;

/// The numbered migrations, in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        "0002_consumer_groups",
        include_str!("../../migrations/sqlite/0002_consumer_groups.sql"),
    ),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

pub(crate) fn internal(error: rusqlite::Error) -> StoreError {
    StoreError::Internal(error.to_string())
}

/// Opens the writer's connection: WAL, and `synchronous = FULL` so that a commit is on
/// disk (fsync'd) before it returns.
pub(crate) fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let connection = Connection::open(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    connection
        .execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = OFF;
             PRAGMA busy_timeout = 5000;
             PRAGMA cache_size = -32000;
             PRAGMA temp_store = MEMORY;",
        )
        .map_err(internal)?;
    let mode: String = connection
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .map_err(internal)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "{} cannot use write-ahead logging (journal mode {mode})",
            path.display()
        )));
    }
    Ok(connection)
}

/// Runs the migrations this database has not seen yet, each in its own transaction.
/// Refuses a database written by a newer Cairn.
pub(crate) fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let current: usize = connection
        .query_row("PRAGMA user_version", [], |row| row.get::<_, i64>(0))
        .map_err(internal)?
        .try_into()
        .map_err(|_| StoreError::Internal("negative schema version".into()))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Unavailable(format!(
            "the database has schema version {current}, newer than this Cairn understands \
             ({SCHEMA_VERSION}); upgrade Cairn"
        )));
    }
    for (index, (name, sql)) in MIGRATIONS.iter().enumerate().skip(current) {
        let transaction = connection.transaction().map_err(internal)?;
        transaction
            .execute_batch(sql)
            .map_err(|e| StoreError::Internal(format!("migration {name} failed: {e}")))?;
        transaction
            .pragma_update(None, "user_version", (index + 1) as i64)
            .map_err(internal)?;
        transaction.commit().map_err(internal)?;
        tracing::info!(migration = name, "applied migration");
    }
    Ok(())
}
