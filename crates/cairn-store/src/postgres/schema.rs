//! The numbered migrations, applied at connect under an advisory lock, and the mapping
//! of driver and pool errors to [`StoreError`].

use tokio_postgres::error::SqlState;

use crate::StoreError;

/// The numbered migrations, in order; `cairn_schema_migrations` records which ran.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        "0002_consumer_groups",
        include_str!("../../migrations/postgres/0002_consumer_groups.sql"),
    ),
    (
        "0003_group_owners",
        include_str!("../../migrations/postgres/0003_group_owners.sql"),
    ),
    (
        "0004_head_revision",
        include_str!("../../migrations/postgres/0004_head_revision.sql"),
    ),
    (
        "0005_events_stream_check",
        include_str!("../../migrations/postgres/0005_events_stream_check.sql"),
    ),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// The advisory lock key held while migrating ("cairn" and 1), so that instances
/// starting together do not race.
const MIGRATION_LOCK: i64 = 0x6361_6972_6e00_0001;

/// Applies the migrations this database has not seen yet, each in its own transaction,
/// holding a session advisory lock for the whole run. Refuses a database migrated by a
/// newer Cairn.
pub(crate) async fn migrate(client: &mut tokio_postgres::Client) -> Result<(), StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    let outcome = migrate_locked(client).await;
    // Released with the session anyway; unlock now when the connection still works.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    outcome?;
    unlocked.map_err(pg_error)?;
    Ok(())
}

async fn migrate_locked(client: &mut tokio_postgres::Client) -> Result<(), StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS cairn_schema_migrations (
                 version    integer     PRIMARY KEY,
                 name       text        NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(pg_error)?;
    let current = schema_version(client).await?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Unavailable(format!(
            "the database has schema version {current}, newer than this Cairn understands \
             ({SCHEMA_VERSION}); upgrade Cairn"
        )));
    }
    for (index, (name, sql)) in MIGRATIONS.iter().enumerate().skip(current) {
        let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
        let transaction = client.transaction().await.map_err(pg_error)?;
        transaction
            .batch_execute(sql)
            .await
            .map_err(|e| StoreError::Internal(format!("migration {name} failed: {e}")))?;
        transaction
            .execute(
                "INSERT INTO cairn_schema_migrations (version, name) VALUES ($1, $2)",
                &[&version, name],
            )
            .await
            .map_err(pg_error)?;
        transaction.commit().await.map_err(pg_error)?;
        tracing::info!(migration = name, "applied migration");
    }
    Ok(())
}

/// How many migrations the database has seen.
pub(crate) async fn schema_version(client: &tokio_postgres::Client) -> Result<usize, StoreError> {
    let version: i32 = client
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM cairn_schema_migrations",
            &[],
        )
        .await
        .map_err(pg_error)?
        .get(0);
    usize::try_from(version).map_err(|_| StoreError::Internal("negative schema version".into()))
}

/// A driver error as the store reports it: anything that says the database cannot be
/// reached or cannot take the work now is `Unavailable` (a retry may succeed); the
/// rest is `Internal`.
pub(crate) fn pg_error(error: tokio_postgres::Error) -> StoreError {
    let message = format!("PostgreSQL: {}", describe(&error));
    if is_transient(&error) {
        StoreError::Unavailable(message)
    } else {
        StoreError::Internal(message)
    }
}

/// The error with the server's detail, when it sent one (the driver's own text for a
/// server error is only "db error").
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

/// Whether the error says "not now" rather than "never": a connection that broke or
/// could not be made, a server shutting down or starting, a standby where a primary
/// was needed, a lock or statement timeout, a serialisation failure.
pub(crate) fn is_transient(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    let Some(code) = error.code() else {
        // No SQLSTATE: an IO error, a timeout, a failed connect.
        return true;
    };
    let class = &code.code()[..2];
    matches!(class, "08" | "53" | "57" | "58" | "40")
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::QUERY_CANCELED
}

/// A pool error as the store reports it.
pub(crate) fn pool_error(error: deadpool_postgres::PoolError) -> StoreError {
    use deadpool_postgres::PoolError;
    match error {
        PoolError::Backend(error) => pg_error(error),
        PoolError::Timeout(kind) => StoreError::Unavailable(format!(
            "PostgreSQL: no connection available ({kind:?} timeout)"
        )),
        PoolError::Closed => StoreError::Unavailable("the connection pool is closed".into()),
        other => StoreError::Unavailable(format!("PostgreSQL: {other}")),
    }
}
