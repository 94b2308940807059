//! Read models in PostgreSQL: when the event store is PostgreSQL, projections write
//! into a schema of their own (`cairn_readmodels` by default) of a database, every
//! instance on that database shares them, and queries run on streaming replicas that
//! have replayed far enough.
//!
//! - **Schema.** Every connection of the read side has `search_path` set to the
//!   schema, so a projection's `setup`, `teardown` and `on` statements and the queries
//!   name their tables plainly. Cairn's own table, `cairn_projections` (checkpoint,
//!   definition hash, state, last error, and a count of resets), lives there too.
//! - **Exactly once.** The owner of a projection applies each batch in one transaction
//!   that also moves the checkpoint; the checkpoint update comes first and only matches
//!   the position (and reset count) the owner last wrote, so a second writer could
//!   never apply a batch twice even if ownership were ever confused.
//! - **One driver per projection** (`drive.rs`): a session advisory lock per
//!   projection, taken with `pg_try_advisory_lock` on a dedicated connection that also
//!   runs the batches. An instance that does not hold it follows the shared checkpoint
//!   table when the owner notifies a move (`moves.rs`, LISTEN/NOTIFY), and at least
//!   once a second (for its status, its queries' positions and their cache), and
//!   tries the lock again once a second; when the owner dies its connection ends, PostgreSQL releases
//!   the lock, and another instance takes over within about a second.
//! - **Queries** (`query.rs`) run in read-only transactions; on a replica, in a
//!   `REPEATABLE READ` snapshot that first reads the checkpoints of the query's
//!   projections: the replica answers only when that snapshot holds what the query
//!   must reflect, else the next replica or the primary does.

mod apply;
mod drive;
mod moves;
mod plans;
mod query;
mod values;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cairn_core::{Position, now_micros};
use deadpool_postgres::Pool;
use sha2::{Digest, Sha256};
use tokio_postgres::GenericClient;
use tokio_postgres::error::SqlState;

pub(crate) use self::apply::Owner;
pub(crate) use self::drive::drive;
pub(crate) use self::plans::{check_all, plan_query};
use crate::config::{CompiledQuery, ProjectionPlan};
use crate::db::{ProjectionError, StoredProjection, StoredState};
use crate::error::{ReadSideError, storage};

/// The schema read models live in unless configured otherwise.
pub const DEFAULT_SCHEMA: &str = "cairn_readmodels";

/// How often an instance that does not drive a projection reads its checkpoint and
/// tries to take it over, and how often the owner checks that it still owns it.
pub(crate) const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// Where the read models live when the event store is PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresReadModels {
    /// The primary (a `postgres://` URL or `key=value` string); normally the event
    /// store's database.
    pub url: String,
    /// Streaming replicas that serve queries.
    pub replica_urls: Vec<String>,
    /// The schema of the read models and of Cairn's `cairn_projections` table: a plain
    /// lower-case name (`[a-z_][a-z0-9_]*`, at most 63 bytes).
    pub schema: String,
    /// Connections to the primary, and to each replica, for queries (each projection
    /// that this instance drives has one more, its own).
    pub pool_size: usize,
    pub connect_timeout: Duration,
    /// The longest one statement may run on the server.
    pub statement_timeout: Duration,
}

impl PostgresReadModels {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            replica_urls: Vec::new(),
            schema: DEFAULT_SCHEMA.to_owned(),
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

/// Checks a schema name: what Cairn puts in `search_path` and DDL unquoted.
pub fn check_schema_name(schema: &str) -> Result<(), String> {
    let plain = schema
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && schema.len() <= 63;
    if !plain || schema.starts_with("pg_") {
        return Err(format!(
            "the read-model schema {schema:?} must be a plain lower-case name \
             ([a-z_][a-z0-9_]*, at most 63 bytes, not starting with pg_)"
        ));
    }
    Ok(())
}

/// A replica that serves queries.
pub(crate) struct Replica {
    /// `host:port/dbname`, as the event store labels it.
    pub label: String,
    pub pool: Pool,
}

/// The read side's connections to PostgreSQL.
pub(crate) struct PgReadModels {
    pub schema: String,
    /// The primary's settings, for the connections of projection owners.
    pub config: tokio_postgres::Config,
    pub primary: Pool,
    pub replicas: Vec<Replica>,
    next_replica: AtomicUsize,
    /// Queries each replica answered, in the order of `replicas`.
    replica_reads: Vec<std::sync::atomic::AtomicU64>,
    /// Names of projections whose checkpoint another instance moved (`moves.rs`).
    moved: tokio::sync::broadcast::Sender<String>,
    /// Stops the LISTEN connection, started with the first follower.
    listening: std::sync::OnceLock<tokio_util::sync::CancellationToken>,
}

/// Cairn's own tables in the schema, in order; `cairn_readmodel_schema` counts them.
const MIGRATIONS: &[&str] = &["CREATE TABLE IF NOT EXISTS cairn_projections (
        name TEXT PRIMARY KEY,
        position BIGINT NOT NULL,
        definition_hash TEXT NOT NULL,
        state TEXT NOT NULL,
        error_position BIGINT,
        error_type TEXT,
        error_message TEXT,
        resets BIGINT NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    )"];

impl PgReadModels {
    /// Builds the pools (connecting lazily) for `options`.
    pub(crate) fn new(options: &PostgresReadModels) -> Result<Self, ReadSideError> {
        check_schema_name(&options.schema).map_err(ReadSideError::Config)?;
        let config = connection_config(&options.url, options)?;
        let primary = pool(config.clone(), options.pool_size, options)?;
        let mut replicas = Vec::with_capacity(options.replica_urls.len());
        for url in &options.replica_urls {
            let replica = connection_config(url, options)?;
            replicas.push(Replica {
                label: label(&replica),
                pool: pool(replica, options.pool_size, options)?,
            });
        }
        let replica_reads = replicas
            .iter()
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect();
        Ok(Self {
            schema: options.schema.clone(),
            config,
            primary,
            replicas,
            next_replica: AtomicUsize::new(0),
            replica_reads,
            moved: tokio::sync::broadcast::channel(moves::BUFFERED).0,
            listening: std::sync::OnceLock::new(),
        })
    }

    /// Notifications of checkpoint moves, by projection name. The first call starts
    /// the LISTEN connection (inside the runtime), which lasts until [`Self::close`].
    pub(crate) fn checkpoint_moves(&self) -> tokio::sync::broadcast::Receiver<String> {
        let receiver = self.moved.subscribe();
        self.listening.get_or_init(|| {
            let cancel = tokio_util::sync::CancellationToken::new();
            tokio::spawn(moves::listen(
                self.config.clone(),
                self.moved.clone(),
                cancel.clone(),
            ));
            cancel
        });
        receiver
    }

    /// A pooled connection to the primary.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Client, ReadSideError> {
        self.primary.get().await.map_err(|e| {
            ReadSideError::Storage(format!(
                "read models on PostgreSQL {}: {e}",
                label(&self.config)
            ))
        })
    }

    /// Creates the schema and Cairn's table in it, once, whichever instance comes
    /// first (under a transaction-level advisory lock).
    pub(crate) async fn migrate(&self) -> Result<(), ReadSideError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(pg)?;
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&lock_key(&self.schema, "$migrations")],
            )
            .await
            .map_err(pg)?;
        transaction
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema};
                 CREATE TABLE IF NOT EXISTS {schema}.cairn_readmodel_schema (version INT NOT NULL);",
                schema = self.schema
            ))
            .await
            .map_err(pg)?;
        let version: Option<i32> = transaction
            .query_opt(
                &format!("SELECT version FROM {}.cairn_readmodel_schema", self.schema),
                &[],
            )
            .await
            .map_err(pg)?
            .map(|row| row.get(0));
        let current = usize::try_from(version.unwrap_or(0)).unwrap_or(usize::MAX);
        if current > MIGRATIONS.len() {
            return Err(ReadSideError::Storage(format!(
                "the read-model schema {} has version {current}, newer than this Cairn understands ({}); upgrade Cairn",
                self.schema,
                MIGRATIONS.len()
            )));
        }
        for sql in MIGRATIONS.iter().skip(current) {
            transaction.batch_execute(sql).await.map_err(pg)?;
        }
        let latest = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
        let table = format!("{}.cairn_readmodel_schema", self.schema);
        if version.is_none() {
            transaction
                .execute(&format!("INSERT INTO {table} VALUES ($1)"), &[&latest])
                .await
                .map_err(pg)?;
        } else {
            transaction
                .execute(&format!("UPDATE {table} SET version = $1"), &[&latest])
                .await
                .map_err(pg)?;
        }
        transaction.commit().await.map_err(pg)
    }

    /// Loads a projection's row, or creates the projection (its `setup` and its row at
    /// position 0, in one transaction, under an advisory lock so that instances
    /// starting together create it once).
    pub(crate) async fn load_or_create(
        &self,
        plan: &ProjectionPlan,
    ) -> Result<(StoredProjection, bool), ReadSideError> {
        let name = &plan.config.name;
        let mut client = self.client().await?;
        if let Some(stored) = load(&**client, name).await? {
            return Ok((stored, false));
        }
        let transaction = client.transaction().await.map_err(pg)?;
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&lock_key(&self.schema, &format!("$create:{name}"))],
            )
            .await
            .map_err(pg)?;
        if let Some(stored) = load(&*transaction, name).await? {
            return Ok((stored, false));
        }
        run_all(&*transaction, "setup", &plan.config.setup)
            .await
            .map_err(|e| ReadSideError::Config(format!("projection {name:?}: {e}")))?;
        let now = now_micros();
        transaction
            .execute(
                "INSERT INTO cairn_projections (name, position, definition_hash, state, created_at, updated_at)
                 VALUES ($1, 0, $2, 'running', $3, $3)",
                &[name, &plan.definition_hash, &now],
            )
            .await
            .map_err(pg)?;
        transaction.commit().await.map_err(pg)?;
        let stored = load(&**client, name)
            .await?
            .ok_or_else(|| ReadSideError::Storage(format!("projection {name} vanished")))?;
        Ok((stored, true))
    }

    pub(crate) async fn load(&self, name: &str) -> Result<StoredProjection, ReadSideError> {
        let client = self.client().await?;
        load(&**client, name)
            .await?
            .ok_or_else(|| ReadSideError::ProjectionNotFound(name.to_owned()))
    }

    /// Rebuild's first step, in one transaction: `teardown`, `setup`, position 0, the
    /// new definition, state `rebuilding`, no error, one more reset. The row is locked
    /// first, so a batch the owner is committing finishes before; the owner notices
    /// the reset (its next checkpoint does not match, or its next check) and starts
    /// again from the stored row.
    pub(crate) async fn reset(&self, plan: &ProjectionPlan) -> Result<(), String> {
        let mut client = self.client().await.map_err(|e| e.to_string())?;
        let transaction = client.transaction().await.map_err(|e| e.to_string())?;
        transaction
            .execute(
                "SELECT 1 FROM cairn_projections WHERE name = $1 FOR UPDATE",
                &[&plan.config.name],
            )
            .await
            .map_err(|e| e.to_string())?;
        run_all(&*transaction, "teardown", &plan.config.teardown).await?;
        run_all(&*transaction, "setup", &plan.config.setup).await?;
        transaction
            .execute(
                "UPDATE cairn_projections SET position = 0, definition_hash = $2, state = 'rebuilding',
                    error_position = NULL, error_type = NULL, error_message = NULL,
                    resets = resets + 1, updated_at = $3
                 WHERE name = $1",
                &[&plan.config.name, &plan.definition_hash, &now_micros()],
            )
            .await
            .map_err(|e| e.to_string())?;
        transaction.commit().await.map_err(|e| e.to_string())
    }

    /// Restart's step: clears a failure (a rebuilding projection stays rebuilding), so
    /// that whichever instance takes the projection resumes it from its checkpoint.
    pub(crate) async fn clear_failure(
        &self,
        name: &str,
    ) -> Result<(Position, StoredState), ReadSideError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "UPDATE cairn_projections SET
                    state = CASE WHEN state = 'rebuilding' THEN 'rebuilding' ELSE 'running' END,
                    error_position = NULL, error_type = NULL, error_message = NULL, updated_at = $2
                 WHERE name = $1 RETURNING position, state",
                &[&name, &now_micros()],
            )
            .await
            .map_err(pg)?
            .ok_or_else(|| ReadSideError::ProjectionNotFound(name.to_owned()))?;
        let position: i64 = row.get(0);
        let state: String = row.get(1);
        Ok((to_position(position), StoredState::parse(&state)))
    }

    /// Prepares every `on` statement (a typo is reported at start) and refuses ones
    /// that return rows; a changed definition may name tables only its rebuild
    /// creates. Then each query: prepared, and planned to refuse one that writes.
    pub(crate) async fn check_definitions(
        &self,
        plans: &[(Arc<ProjectionPlan>, bool)],
        queries: &[CompiledQuery],
    ) -> Result<(), ReadSideError> {
        let client = self.client().await?;
        for (plan, definition_changed) in plans {
            for (event_type, handler) in &plan.handlers {
                for (index, statement) in handler.statements.iter().enumerate() {
                    let place = || {
                        format!(
                            "projection {:?}: on.{event_type} statement {}",
                            plan.config.name,
                            index + 1
                        )
                    };
                    match client.prepare(&statement.sql).await {
                        Ok(prepared) if !prepared.columns().is_empty() => {
                            return Err(ReadSideError::Config(format!(
                                "{}: returns rows; projection statements write (no SELECT, no RETURNING)",
                                place()
                            )));
                        }
                        Ok(_) => {}
                        Err(error)
                            if error.code() == Some(&SqlState::UNDEFINED_TABLE)
                                || (*definition_changed && is_missing_schema(&error)) => {}
                        Err(error) => {
                            return Err(ReadSideError::Config(format!(
                                "{}: {}{}",
                                place(),
                                describe(&error),
                                cast_hint(&error)
                            )));
                        }
                    }
                }
            }
        }
        for query in queries {
            match client.prepare(&query.sql).await {
                Ok(_) => {}
                Err(error) if is_missing_schema(&error) => {
                    tracing::warn!(query = %query.name, error = %describe(&error), "query cannot be checked yet");
                    continue;
                }
                Err(error) => {
                    return Err(ReadSideError::Config(format!(
                        "query {:?}: {}{}",
                        query.name,
                        describe(&error),
                        cast_hint(&error)
                    )));
                }
            }
            if plans::writes(&client, &query.sql, query.bound.len())
                .await
                .unwrap_or(false)
            {
                return Err(ReadSideError::Config(format!(
                    "query {:?}: a query must only read; this one would write",
                    query.name
                )));
            }
        }
        Ok(())
    }

    /// A replica for a query that must see `needed`, taking turns, skipping those the
    /// event store has seen replay less than that (a replica that has replayed a
    /// projection's checkpoint at `needed` has replayed event `needed` before it, since
    /// the projection committed after reading that event).
    pub(crate) fn replica_order(
        &self,
        needed: Position,
        health: &[cairn_store::ReplicaHealth],
    ) -> Vec<usize> {
        let count = self.replicas.len();
        if count == 0 {
            return Vec::new();
        }
        let start = self.next_replica.fetch_add(1, Ordering::Relaxed);
        (0..count)
            .map(|offset| (start + offset) % count)
            .filter(|index| {
                let label = &self.replicas[*index].label;
                health
                    .iter()
                    .find(|replica| &replica.label == label)
                    .is_none_or(|replica| replica.up && replica.replayed_position >= needed)
            })
            .collect()
    }

    pub(crate) fn count_replica_read(&self, index: usize) {
        if let Some(reads) = self.replica_reads.get(index) {
            reads.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queries each replica has answered, by label.
    pub(crate) fn replica_reads(&self) -> Vec<(String, u64)> {
        self.replicas
            .iter()
            .zip(&self.replica_reads)
            .map(|(replica, reads)| (replica.label.clone(), reads.load(Ordering::Relaxed)))
            .collect()
    }

    /// The bytes the schema's tables and their indexes take.
    pub(crate) async fn storage_bytes(&self) -> Result<u64, ReadSideError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0)::BIGINT
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'm')",
                &[&self.schema],
            )
            .await
            .map_err(pg)?;
        let bytes: i64 = row.get(0);
        Ok(u64::try_from(bytes).unwrap_or(0))
    }

    pub(crate) fn close(&self) {
        if let Some(listening) = self.listening.get() {
            listening.cancel();
        }
        self.primary.close();
        for replica in &self.replicas {
            replica.pool.close();
        }
    }
}

/// The key of a session or transaction advisory lock: the first 8 bytes of
/// SHA-256(`cairn.readmodels:<schema>:<name>`), so that deployments with different
/// schemas in one database never share a lock.
pub(crate) fn lock_key(schema: &str, name: &str) -> i64 {
    let digest = Sha256::digest(format!("cairn.readmodels:{schema}:{name}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

pub(crate) async fn load(
    client: &impl GenericClient,
    name: &str,
) -> Result<Option<StoredProjection>, ReadSideError> {
    let row = client
        .query_opt(
            "SELECT position, definition_hash, state, error_position, error_type, error_message, resets
             FROM cairn_projections WHERE name = $1",
            &[&name],
        )
        .await
        .map_err(pg)?;
    Ok(row.map(|row| {
        let error_position: Option<i64> = row.get(3);
        StoredProjection {
            position: to_position(row.get(0)),
            definition_hash: row.get(1),
            state: StoredState::parse(row.get(2)),
            error: error_position.map(|position| ProjectionError {
                position: to_position(position),
                event_type: row.get(4),
                message: row.get::<_, Option<String>>(5).unwrap_or_default(),
            }),
            resets: to_position(row.get(6)),
        }
    }))
}

async fn run_all(
    client: &impl GenericClient,
    what: &str,
    statements: &[String],
) -> Result<(), String> {
    for (index, statement) in statements.iter().enumerate() {
        client
            .batch_execute(statement)
            .await
            .map_err(|e| format!("{what} statement {} failed: {}", index + 1, describe(&e)))?;
    }
    Ok(())
}

pub(crate) fn to_position(value: i64) -> Position {
    u64::try_from(value).unwrap_or(0)
}

pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The server's message (with its detail) rather than the driver's "db error".
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_owned(),
        },
        None => error.to_string(),
    }
}

pub(crate) fn pg(error: tokio_postgres::Error) -> ReadSideError {
    storage(describe(&error))
}

fn cast_hint(error: &tokio_postgres::Error) -> &'static str {
    if error.code() == Some(&SqlState::INDETERMINATE_DATATYPE) {
        "; say which with a cast, such as :data.total::numeric"
    } else {
        ""
    }
}

pub(crate) fn is_missing_schema(error: &tokio_postgres::Error) -> bool {
    matches!(
        error.code(),
        Some(code) if *code == SqlState::UNDEFINED_TABLE || *code == SqlState::UNDEFINED_COLUMN
    )
}

/// Whether an error is the statement's own (its SQL or its values), the same on any
/// server, rather than the connection's or the server's state.
pub(crate) fn is_statement_error(error: &tokio_postgres::Error) -> bool {
    error.code().is_some_and(|code| {
        let class = &code.code()[..2];
        matches!(class, "22" | "23" | "42" | "2B" | "21" | "0A")
    })
}

/// Parses a URL and applies the read side's settings: timeouts, keep-alives,
/// `search_path` set to the schema, and plans made for each execution's values (a
/// generic plan cached while a read model was empty would otherwise stay a sequential
/// scan for the life of the connection).
fn connection_config(
    url: &str,
    options: &PostgresReadModels,
) -> Result<tokio_postgres::Config, ReadSideError> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
        ReadSideError::Config(format!("invalid PostgreSQL URL for the read models: {e}"))
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(options.connect_timeout);
    }
    if config.get_application_name().is_none() {
        config.application_name("cairn-readmodels");
    }
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3);
    let millis = options.statement_timeout.as_millis().max(1);
    let settings = format!(
        "-c search_path={} -c statement_timeout={millis} -c idle_in_transaction_session_timeout={millis} \
         -c plan_cache_mode=force_custom_plan",
        options.schema
    );
    let combined = match config.get_options() {
        Some(given) if !given.trim().is_empty() => format!("{given} {settings}"),
        _ => settings,
    };
    config.options(combined);
    Ok(config)
}

fn pool(
    config: tokio_postgres::Config,
    size: usize,
    options: &PostgresReadModels,
) -> Result<Pool, ReadSideError> {
    cairn_store::postgres::bounded_pool(
        config,
        size,
        options.connect_timeout,
        options.connect_timeout,
    )
    .map_err(ReadSideError::Storage)
}

/// `host:port/dbname`, as the event store labels its replicas.
pub(crate) fn label(config: &tokio_postgres::Config) -> String {
    cairn_store::postgres::connection_label(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain() {
        for good in ["cairn_readmodels", "_x", "rm2"] {
            assert!(check_schema_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Upper",
            "a-b",
            "a b",
            "1st",
            "pg_x",
            "x;drop",
            &"a".repeat(64),
        ] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lock_keys_differ_by_schema_and_name() {
        let a = lock_key("cairn_readmodels", "orders");
        assert_eq!(a, lock_key("cairn_readmodels", "orders"));
        assert_ne!(a, lock_key("cairn_readmodels", "parcels"));
        assert_ne!(a, lock_key("other", "orders"));
    }
}
