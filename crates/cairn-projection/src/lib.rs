//! Cairn's read side (CQRS): projections that turn events into SQL read models in
//! `readmodels.db` (or, with the event store on PostgreSQL, in a schema of that
//! database shared by every instance: see `pg/`), and named queries over them, with a
//! result cache.
//!
//! - A projection ([`ProjectionConfig`]) follows the global log with
//!   [`cairn_store::tail::LogTail`] from its checkpoint, in its own task, and applies
//!   events in batches on a blocking thread: for each event the statements of
//!   `on[event.type]`, with `:data.a.b`-style placeholders bound as positional
//!   parameters, never spliced into the SQL.
//! - A named query ([`QueryConfig`]) runs on a read-only connection with typed,
//!   checked parameters and answers rows plus the log position they reflect;
//!   `min_position` waits (woken by the projections, not by polling) for
//!   read-your-writes.
//! - Every statement and query is planned (`EXPLAIN QUERY PLAN`) at start and after
//!   each rebuild: a full scan of a read-model table or a sort without an index is a
//!   [`PlanWarning`] naming the table, the columns and the `CREATE INDEX` that avoids
//!   it (`plans.rs`, with the columns read from the SQL by `shape.rs`); with
//!   `strict_plans` the read side refuses to start while one stands. Queries and
//!   statements slower than `slow_query_threshold` are logged with their plan
//!   (target `cairn::slow_query`), with parameter names, never values.
//!
//! **Architecture invariants:**
//! - A batch's effects and its projection's checkpoint commit in one transaction
//!   (`synchronous = FULL`): each event's effects happen exactly once, across crashes.
//! - A failing statement stops only its own projection, at the failing event, with
//!   everything before that event applied.
//! - Queries can never write: read-only connections with `query_only`.
//! - A cached result is never staler than an uncached one, unless its query has a
//!   `cache_ttl` (then never older than the TTL).
//! - SQLite work never runs on the async executor.
//! - PostgreSQL: a projection is applied only by the instance holding its advisory
//!   lock, through that lock's connection, and each batch moves the checkpoint only
//!   from where that owner left it; a replica answers a query only from a snapshot
//!   that holds the checkpoints the answer must reflect.

mod apply;
mod cache;
mod config;
mod db;
pub mod metrics;
mod pg;
mod plans;
mod projection;
mod query;
mod shape;
mod shared_cache;
mod sql;
#[cfg(feature = "redis-harness")]
pub mod testing;

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::Position;
use cairn_store::SharedStore;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use config::{
    FilterConfig, ParamSpec, ParamType, ParamValue, ProjectionConfig, QueryConfig, parse_duration,
    validate,
};
pub use db::{ProjectionError, READ_MODEL_FILE};
pub use error::ReadSideError;
pub use pg::{DEFAULT_SCHEMA as DEFAULT_READ_MODEL_SCHEMA, PostgresReadModels, check_schema_name};
pub use plans::{PlanAnalysis, PlanRow, PlanSubject, PlanWarning, PlanWarningKind, QueryPlan};
pub use projection::ProjectionState;
pub use query::{QueryStatus, Row};
pub use shared_cache::{
    DEFAULT_REDIS_TIMEOUT, DEFAULT_REDIS_TTL, RedisCacheOptions, check_redis_url, redact_redis_url,
};

use crate::cache::{CachedResult, QueryCache};
use crate::config::{CompiledQuery, ProjectionPlan};
use crate::db::{ReadPool, StoredProjection, StoredState};
use crate::error::storage;
use crate::pg::PgReadModels;
use crate::plans::PlanChecks;
use crate::projection::{Projection, RunContext};
use crate::query::{QueryEntry, QueryStats};
use crate::shape::Schema;

mod error;

/// How to run the read side.
#[derive(Debug, Clone)]
pub struct ReadSideOptions {
    /// The folder holding `readmodels.db` (the server's data directory).
    pub data_dir: PathBuf,
    /// Read-only connections for queries.
    pub read_connections: usize,
    /// Bytes of query results the cache may hold; 0 turns the cache off.
    pub cache_bytes: u64,
    /// The most events one projection applies in one transaction.
    pub batch_size: usize,
    /// Refuse to start (`ReadSideError::Config`, listing them) while any plan warning
    /// stands: for CI pipelines that keep read models indexed.
    pub strict_plans: bool,
    /// Queries and projection statements slower than this are logged, one line each
    /// (target `cairn::slow_query`) with their plan; `Duration::MAX` turns it off.
    pub slow_query_threshold: Duration,
    /// Keep the read models in PostgreSQL (for an event store on PostgreSQL) instead
    /// of `readmodels.db` in `data_dir`.
    pub postgres: Option<PostgresReadModels>,
    /// A Redis shared by every instance for query results (`--redis-url`), behind the
    /// in-process cache; `None`: in-process only.
    pub redis: Option<RedisCacheOptions>,
}

/// The default of [`ReadSideOptions::slow_query_threshold`].
pub const DEFAULT_SLOW_QUERY_THRESHOLD: Duration = Duration::from_millis(50);

impl ReadSideOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            read_connections: 4,
            cache_bytes: 64 * 1024 * 1024,
            batch_size: 2000,
            strict_plans: false,
            slow_query_threshold: DEFAULT_SLOW_QUERY_THRESHOLD,
            postgres: None,
            redis: None,
        }
    }
}

/// A projection as the API reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectionStatus {
    pub name: String,
    pub state: ProjectionState,
    /// The last log position the read model reflects.
    pub position: Position,
    pub head_position: Position,
    /// `head_position - position`.
    pub lag: u64,
    /// Events applied per second, recently.
    pub events_per_second: f64,
    pub last_error: Option<ProjectionError>,
    /// The configured definition differs from the one the read model was built with;
    /// the projection goes on with the new statements from its checkpoint.
    pub definition_changed: bool,
    /// Why `definition_changed` matters and what to do.
    pub message: Option<String>,
    /// While rebuilding: position / head, from 0.0 to 1.0.
    pub rebuild_progress: Option<f64>,
    /// Full scans and sorts without an index in its statements' plans, as checked at
    /// start and after every rebuild; each names the index that would avoid it.
    pub plan_warnings: Vec<PlanWarning>,
    /// Read models in PostgreSQL: `Some(true)` while this instance drives the
    /// projection (holds its advisory lock), `Some(false)` while another does and this
    /// one follows its checkpoint; `None` on SQLite.
    pub driving: Option<bool>,
}

/// A query's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    pub rows: Vec<Row>,
    /// The log position the rows reflect: every event up to it is in them.
    pub position: Position,
    /// Served from the cache.
    pub cached: bool,
}

/// The read side: projections running, queries served. Cheap to share as
/// `Arc<ReadSide>`.
pub struct ReadSide {
    store: SharedStore,
    context: RunContext,
    /// Bumped whenever a projection moves or changes state: what waits wake on.
    moved: Arc<watch::Sender<u64>>,
    projections: Vec<Arc<Projection>>,
    queries: HashMap<String, QueryEntry>,
    query_names: Vec<String>,
    reads: Reads,
    cache: QueryCache,
    /// The shared tier of the query cache (Redis), if configured.
    shared: Option<shared_cache::SharedCache>,
    slow_query_threshold: Duration,
    /// Held while plans are checked again, so that a later check's result is stored
    /// last.
    recheck: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
    /// The data directory's lock; running projections hold a share of it.
    lock: Mutex<Option<Arc<File>>>,
}

/// The `pool` label of the query pool's metrics.
const POOL_NAME: &str = "readmodels";

/// Where queries run: `readmodels.db`'s read-only pool, or PostgreSQL.
enum Reads {
    Sqlite(ReadPool),
    Postgres(Arc<PgReadModels>),
}

impl Reads {
    fn record_gauges(&self) {
        if let Reads::Sqlite(pool) = self {
            pool.record_gauges();
        }
    }

    fn close(&self) {
        match self {
            Reads::Sqlite(pool) => pool.close(),
            Reads::Postgres(read_models) => read_models.close(),
        }
    }
}

/// What opening the read-model database found.
struct Opened {
    stored: Vec<StoredProjection>,
    checks: PlanChecks,
    reads: Reads,
    lock: Option<Arc<File>>,
}

const DEFINITION_CHANGED: &str = "the projection's definition changed since its read model was built; \
     new events use the new statements, earlier ones are not replayed: rebuild it to apply the new definition to every event";

impl ReadSide {
    /// Opens (creating when needed) `readmodels.db` in the data directory, creates new
    /// projections (running their `setup`), checks every statement and query, plans
    /// them (logging each full scan or sort without an index once; with
    /// `strict_plans`, refusing to start while there is one), and starts each
    /// projection that has not failed from its checkpoint.
    pub async fn start(
        store: SharedStore,
        options: ReadSideOptions,
        projections: Vec<ProjectionConfig>,
        queries: Vec<QueryConfig>,
    ) -> Result<Arc<ReadSide>, ReadSideError> {
        let dialect = match options.postgres {
            Some(_) => sql::Dialect::Postgres,
            None => sql::Dialect::Sqlite,
        };
        let (projection_plans, query_plans) = config::compile(&projections, &queries, dialect)?;
        let shared = match &options.redis {
            Some(redis) => {
                Some(shared_cache::SharedCache::new(redis).map_err(ReadSideError::Config)?)
            }
            None => None,
        };
        let path = options.data_dir.join(READ_MODEL_FILE);
        let plans: Vec<Arc<ProjectionPlan>> = projection_plans.into_iter().map(Arc::new).collect();
        let Opened {
            stored,
            checks,
            reads,
            lock,
        } = match &options.postgres {
            Some(postgres) => open_postgres(postgres, &plans, &query_plans).await?,
            None => open_sqlite(&options, &path, &plans, &query_plans).await?,
        };
        let postgres = match &reads {
            Reads::Postgres(read_models) => Some(Arc::clone(read_models)),
            Reads::Sqlite(_) => None,
        };
        let warnings: Vec<&PlanWarning> = checks
            .projections
            .iter()
            .flatten()
            .chain(checks.queries.iter().flat_map(|check| &check.warnings))
            .collect();
        for warning in &warnings {
            plans::log(warning);
        }
        if options.strict_plans && !warnings.is_empty() {
            let listed: Vec<String> = warnings.iter().map(|w| format!("- {w}")).collect();
            return Err(ReadSideError::Config(format!(
                "strict plans: {} plan warning{} (add the suggested indexes to the projections' setup; \
                 an existing read model runs its setup again on rebuild):\n{}",
                warnings.len(),
                if warnings.len() == 1 { "" } else { "s" },
                listed.join("\n")
            )));
        }
        let warning_count = warnings.len();
        let PlanChecks {
            projections: projection_warnings,
            queries: query_checks,
        } = checks;
        let head = *store.watch_head().borrow();
        let (moved, _) = watch::channel(0u64);
        let moved = Arc::new(moved);
        let projections: Vec<Arc<Projection>> = plans
            .iter()
            .zip(stored)
            .zip(pad(projection_warnings, plans.len()))
            .map(|((plan, stored), plan_warnings)| {
                let definition_changed = stored.definition_hash != plan.definition_hash;
                if definition_changed {
                    tracing::warn!(projection = %plan.config.name, "{DEFINITION_CHANGED}");
                }
                let (state, error) = match stored.state {
                    StoredState::Failed => (ProjectionState::Failed, stored.error),
                    // The log was replaced under the read models: following it from
                    // here would skip its events silently. (On PostgreSQL other
                    // instances move checkpoints past the head this one has seen.)
                    _ if stored.position > head && postgres.is_none() => (
                        ProjectionState::Failed,
                        Some(ProjectionError {
                            position: stored.position,
                            event_type: None,
                            message: format!(
                                "the read model reflects position {} but the event log ends at {head}: \
                                 the log is not the one this read model was built from; rebuild it",
                                stored.position
                            ),
                        }),
                    ),
                    StoredState::Rebuilding if stored.position < head => {
                        (ProjectionState::Rebuilding, None)
                    }
                    _ => (ProjectionState::Running, None),
                };
                let projection = Projection::new(
                    Arc::clone(plan),
                    stored.position,
                    state,
                    error,
                    definition_changed,
                    Arc::clone(&moved),
                );
                if let Ok(mut warnings) = projection.plan_warnings.lock() {
                    *warnings = plan_warnings;
                }
                Arc::new(projection)
            })
            .collect();
        let query_names = query_plans.iter().map(|q| q.name.clone()).collect();
        let query_count = query_plans.len();
        let queries = query_plans
            .into_iter()
            .zip(pad(query_checks, query_count))
            .map(|(plan, check)| {
                let entry = QueryEntry {
                    projections: projections_read_by(&plan, &projections),
                    stats: QueryStats::new(&plan.name),
                    plan_check: Mutex::new(check),
                    plan,
                };
                (entry.plan.name.clone(), entry)
            })
            .collect();
        let context = RunContext {
            store: store.clone(),
            path,
            postgres,
            batch_size: options.batch_size.max(1),
            slow_query_threshold: options.slow_query_threshold,
        };
        let read_side = Arc::new(ReadSide {
            store,
            context,
            moved,
            projections,
            queries,
            query_names,
            reads,
            cache: QueryCache::new(options.cache_bytes),
            shared,
            slow_query_threshold: options.slow_query_threshold,
            recheck: tokio::sync::Mutex::new(()),
            shutdown: CancellationToken::new(),
            lock: Mutex::new(lock),
        });
        for projection in &read_side.projections {
            if projection.state() != ProjectionState::Failed {
                let run = read_side.spawn(projection)?;
                *projection.run.lock().await = Some(run);
            }
        }
        tracing::info!(
            projections = read_side.projections.len(),
            queries = read_side.queries.len(),
            plan_warnings = warning_count,
            "read side started"
        );
        Ok(read_side)
    }

    /// Sets the read side's sampled gauges: its query pool's connections and the query
    /// cache's size. Takes no I/O; called before every scrape of `/metrics`.
    pub async fn record_gauges(&self) {
        self.reads.record_gauges();
        self.cache.record_gauges().await;
    }

    /// The space `readmodels.db` takes on disk, its write-ahead log included (on
    /// PostgreSQL: the read-model schema's tables and indexes).
    pub async fn storage_size(&self) -> Result<cairn_store::StorageSize, ReadSideError> {
        if let Reads::Postgres(read_models) = &self.reads {
            return Ok(cairn_store::StorageSize {
                total_bytes: read_models.storage_bytes().await?,
                wal_bytes: None,
            });
        }
        let path = self.context.path.clone();
        tokio::task::spawn_blocking(move || cairn_store::sqlite::pool::storage_size(&path))
            .await
            .map_err(storage)?
            .map_err(storage)
    }

    /// Read models in PostgreSQL: the queries each replica answered since the start
    /// (label `host:port/dbname` → count), in the order of the replica URLs; empty on
    /// SQLite.
    pub fn replica_reads(&self) -> Vec<(String, u64)> {
        match &self.reads {
            Reads::Postgres(read_models) => read_models.replica_reads(),
            Reads::Sqlite(_) => Vec::new(),
        }
    }

    /// Every configured projection's status, in configuration order.
    pub async fn projections(&self) -> Vec<ProjectionStatus> {
        self.projections.iter().map(|p| self.status(p)).collect()
    }

    pub async fn projection(&self, name: &str) -> Result<ProjectionStatus, ReadSideError> {
        Ok(self.status(self.find(name)?))
    }

    /// Resumes a projection from its checkpoint (after a failure: retries the failing
    /// event, with the statements as now configured).
    pub async fn restart(&self, name: &str) -> Result<ProjectionStatus, ReadSideError> {
        let projection = self.find(name)?;
        self.ensure_running()?;
        let mut run = projection.run.lock().await;
        if let Some(current) = run.take() {
            current.stop().await;
        }
        let stored_name = name.to_owned();
        let path = self.context.path.clone();
        let stored = match &self.reads {
            Reads::Postgres(read_models) => read_models.clear_failure(name).await?,
            Reads::Sqlite(_) => tokio::task::spawn_blocking(move || {
                let mut connection = db::open_writer(&path)?;
                let stored = db::load(&connection, &stored_name)?
                    .ok_or_else(|| ReadSideError::ProjectionNotFound(stored_name.clone()))?;
                let state = match stored.state {
                    StoredState::Rebuilding => StoredState::Rebuilding,
                    _ => StoredState::Running,
                };
                let transaction = connection.transaction().map_err(storage)?;
                db::save_checkpoint(&transaction, &stored_name, stored.position, state, None)
                    .map_err(storage)?;
                transaction.commit().map_err(storage)?;
                Ok::<_, ReadSideError>((stored.position, state))
            })
            .await
            .map_err(storage)??,
        };
        let (position, state) = stored;
        let head = *self.store.watch_head().borrow();
        if position > head && self.context.postgres.is_none() {
            projection.set_state(ProjectionState::Failed, self.status(projection).last_error);
            return Err(ReadSideError::Storage(format!(
                "projection {name} reflects position {position} but the event log ends at {head}; rebuild it"
            )));
        }
        let state = match state {
            StoredState::Rebuilding if position < head => ProjectionState::Rebuilding,
            _ => ProjectionState::Running,
        };
        projection.set_state(state, None);
        *run = Some(self.spawn(projection)?);
        tracing::info!(projection = name, position, "projection restarted");
        drop(run);
        Ok(self.status(projection))
    }

    /// Rebuilds a projection: runs `teardown` and `setup`, resets its checkpoint to 0
    /// (one transaction), then replays the log from position 1 with the definition as
    /// now configured. If teardown or setup fails, nothing changes and the projection
    /// goes on as before. Every plan is checked again afterwards (`setup` may have
    /// added indexes); new warnings are logged.
    pub async fn rebuild(&self, name: &str) -> Result<ProjectionStatus, ReadSideError> {
        let projection = self.find(name)?;
        self.ensure_running()?;
        let mut run = projection.run.lock().await;
        let was_running = run.is_some();
        if let Some(current) = run.take() {
            current.stop().await;
        }
        let plan = Arc::clone(&projection.plan);
        let path = self.context.path.clone();
        let reset = match &self.reads {
            Reads::Postgres(read_models) => read_models.reset(&plan).await,
            Reads::Sqlite(_) => tokio::task::spawn_blocking(move || {
                let mut connection = db::open_writer(&path).map_err(|e| e.to_string())?;
                db::reset(&mut connection, &plan)
            })
            .await
            .map_err(storage)?,
        };
        if let Err(message) = reset {
            if was_running {
                *run = Some(self.spawn(projection)?);
            }
            return Err(ReadSideError::Storage(format!(
                "rebuild of projection {name} failed, nothing was changed: {message}"
            )));
        }
        projection.reset();
        let head = *self.store.watch_head().borrow();
        let state = if head == 0 {
            ProjectionState::Running
        } else {
            ProjectionState::Rebuilding
        };
        if let Ok(mut status) = projection.status.lock() {
            status.state = state;
            status.last_error = None;
            status.definition_changed = false;
        }
        *run = Some(self.spawn(projection)?);
        tracing::info!(projection = name, head, "projection rebuilding");
        drop(run);
        self.recheck_plans().await;
        Ok(self.status(projection))
    }

    /// Waits (woken by the projection, not by polling) until the projection reflects
    /// `position` or has stopped (failed, shut down), and returns its status then;
    /// `ConsistencyTimeout` if neither happens within `timeout`. A rebuilding
    /// projection counts as there only once its rebuild has caught up.
    pub async fn wait_for_projection(
        &self,
        name: &str,
        position: Position,
        timeout: Duration,
    ) -> Result<ProjectionStatus, ReadSideError> {
        let projection = self.find(name)?;
        let mut moved = self.moved.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.status(projection);
            let arrived = status.position >= position && status.state == ProjectionState::Running;
            if arrived
                || matches!(
                    status.state,
                    ProjectionState::Failed | ProjectionState::Stopped
                )
            {
                return Ok(status);
            }
            match tokio::time::timeout_at(deadline, moved.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    return Err(ReadSideError::ConsistencyTimeout {
                        min_position: position,
                        position: status.position,
                    });
                }
            }
        }
    }

    /// The configured queries' names, in configuration order.
    pub fn query_names(&self) -> Vec<String> {
        self.query_names.clone()
    }

    /// Runs a named query. `params` are the raw strings of the request (without
    /// `min_position` and `wait_ms`). With `min_position`, waits up to `wait` for the
    /// read model to reflect that position, else `ConsistencyTimeout`. Counted in the
    /// query's metrics and status; a run slower than the slow-query threshold is
    /// logged with its plan and its parameters' names (never their values).
    pub async fn query(
        &self,
        name: &str,
        params: &HashMap<String, String>,
        min_position: Option<u64>,
        wait: Duration,
    ) -> Result<QueryResult, ReadSideError> {
        let entry = self
            .queries
            .get(name)
            .ok_or_else(|| ReadSideError::QueryNotFound(name.to_owned()))?;
        entry.stats.call();
        let answer = self.answer(entry, params, min_position, wait).await;
        match &answer {
            Ok(result) => entry.stats.rows(result.rows.len()),
            Err(_) => entry.stats.error(),
        }
        answer
    }

    async fn answer(
        &self,
        entry: &QueryEntry,
        params: &HashMap<String, String>,
        min_position: Option<u64>,
        wait: Duration,
    ) -> Result<QueryResult, ReadSideError> {
        let values = query::parse_params(&entry.plan, params)?;
        if let Some(min_position) = min_position {
            self.wait_for(entry, min_position, wait).await?;
        }
        let started = Instant::now();
        let key = query::cache_key(&entry.plan.name, &values);
        if let Some(hit) = self.cache.get(&key).await {
            let now = entry.progress();
            let fresh = match entry.plan.cache_ttl {
                Some(_) => {
                    hit.position >= min_position.unwrap_or(0)
                        && now.iter().map(|p| p.epoch).eq(hit.epochs.iter().copied())
                }
                None => now
                    .iter()
                    .map(|p| p.generation)
                    .eq(hit.generations.iter().copied()),
            };
            if fresh {
                // Without a TTL the read model has not changed since the rows were
                // read: they reflect the current position.
                let position = match entry.plan.cache_ttl {
                    Some(_) => hit.position,
                    None => entry.position().max(hit.position),
                };
                entry.stats.cache_hit();
                entry
                    .stats
                    .metrics
                    .duration(started.elapsed().as_secs_f64());
                return Ok(QueryResult {
                    rows: hit.rows.as_ref().clone(),
                    position,
                    cached: true,
                });
            }
        }
        // The shared tier, keyed by the positions this instance knows now: a result
        // from before one of them advanced has another key (see `shared_cache`).
        if let Some(shared) = &self.shared {
            let now = entry.progress();
            let definition = shared_cache::definition_of(entry);
            let positions = shared_cache::positions_of(&now);
            if let Some(shared_key) = shared
                .key(&self.store, &entry.plan.name, &definition, &positions, &key)
                .await
                && let Some(rows) = shared.get(&shared_key, &entry.plan.name).await
            {
                let position = positions.iter().copied().min().unwrap_or(0);
                let rows = Arc::new(rows);
                let weight = u32::try_from(query::weight(&rows)).unwrap_or(u32::MAX);
                self.cache
                    .insert(
                        key,
                        CachedResult {
                            rows: Arc::clone(&rows),
                            generations: now.iter().map(|p| p.generation).collect(),
                            epochs: now.iter().map(|p| p.epoch).collect(),
                            position,
                            ttl: entry.plan.cache_ttl,
                            weight,
                        },
                    )
                    .await;
                entry.stats.cache_hit();
                entry
                    .stats
                    .metrics
                    .duration(started.elapsed().as_secs_f64());
                let rows = Arc::try_unwrap(rows).unwrap_or_else(|shared| shared.as_ref().clone());
                return Ok(QueryResult {
                    rows,
                    position,
                    cached: true,
                });
            }
        }
        entry.stats.cache_miss();
        // Progress is published after its commit: rows read after this snapshot
        // reflect at least these positions and generations.
        let before = entry.progress();
        let position = before.iter().map(|p| p.position).min().unwrap_or(0);
        let sql = Arc::clone(&entry.plan.sql);
        let threshold = self.slow_query_threshold;
        let (rows, ran_for, slow_plan) = match &self.reads {
            Reads::Postgres(read_models) => {
                // A replica answers once its snapshot holds each projection's last
                // committed checkpoint: then its rows are the primary's.
                let needed: Vec<(String, Position)> = entry
                    .projections
                    .iter()
                    .zip(&before)
                    .map(|(projection, progress)| (projection.name().to_owned(), progress.stored))
                    .collect();
                let health = self.store.replica_status();
                read_models
                    .query(&sql, &values, &needed, &health, threshold)
                    .await?
            }
            Reads::Sqlite(reads) => {
                reads
                    .run(move |connection| {
                        let started = Instant::now();
                        let rows = query::run(connection, &sql, &values)?;
                        let ran_for = started.elapsed();
                        // The plan is only worked out for a slow run.
                        let plan = (ran_for >= threshold)
                            .then(|| plans::one_line_plan(connection, &sql, &values));
                        Ok::<_, ReadSideError>((rows, ran_for, plan))
                    })
                    .await?
            }
        };
        if let Some(plan) = slow_plan {
            entry.stats.slow();
            tracing::warn!(
                target: "cairn::slow_query",
                query = %entry.plan.name,
                params = ?entry.plan.bound,
                duration_ms = plans::milliseconds(ran_for),
                plan = %plan,
                "slow query"
            );
        }
        let generations: Vec<u64> = before.iter().map(|p| p.generation).collect();
        let epochs: Vec<u64> = before.iter().map(|p| p.epoch).collect();
        let unchanged = entry
            .progress()
            .iter()
            .map(|p| p.generation)
            .eq(generations.iter().copied());
        let rows = Arc::new(rows);
        if unchanged {
            if let Some(shared) = &self.shared {
                let definition = shared_cache::definition_of(entry);
                let positions = shared_cache::positions_of(&before);
                if let Some(shared_key) = shared
                    .key(&self.store, &entry.plan.name, &definition, &positions, &key)
                    .await
                {
                    shared.set(shared_key, &rows, entry.plan.cache_ttl).await;
                }
            }
            let weight = u32::try_from(query::weight(&rows)).unwrap_or(u32::MAX);
            self.cache
                .insert(
                    key,
                    CachedResult {
                        rows: Arc::clone(&rows),
                        generations,
                        epochs,
                        position,
                        ttl: entry.plan.cache_ttl,
                        weight,
                    },
                )
                .await;
        }
        entry
            .stats
            .metrics
            .duration(started.elapsed().as_secs_f64());
        let rows = Arc::try_unwrap(rows).unwrap_or_else(|shared| shared.as_ref().clone());
        Ok(QueryResult {
            rows,
            position,
            cached: false,
        })
    }

    /// The plan SQLite would use for a named query with these parameters (raw strings,
    /// as for [`ReadSide::query`]; a required parameter left out takes a representative
    /// value, since SQLite's plans do not depend on values), with its warnings. With
    /// `analyze` the query is also run (every parameter required then), and its
    /// duration and the number of rows it returned are reported beside the plan:
    /// SQLite has no `EXPLAIN ANALYZE`. On PostgreSQL: `EXPLAIN (FORMAT JSON)` for these
    /// values (`ANALYZE` with `analyze`), with the warnings of the index check
    /// (`pg/plans.rs`). Not counted in the query's metrics.
    pub async fn plan(
        &self,
        name: &str,
        params: &HashMap<String, String>,
        analyze: bool,
    ) -> Result<QueryPlan, ReadSideError> {
        let entry = self
            .queries
            .get(name)
            .ok_or_else(|| ReadSideError::QueryNotFound(name.to_owned()))?;
        let values = query::parse_params_or(&entry.plan, params, !analyze)?;
        self.ensure_running()?;
        let reads = match &self.reads {
            Reads::Postgres(read_models) => {
                return pg::plan_query(read_models, &entry.plan, &values, analyze).await;
            }
            Reads::Sqlite(reads) => reads,
        };
        let query_name = entry.plan.name.clone();
        let sql = Arc::clone(&entry.plan.sql);
        reads
            .run(move |connection| {
                let subject = PlanSubject::Query {
                    name: query_name.clone(),
                };
                let schema = Schema::load(connection).map_err(storage)?;
                let (rows, warnings) =
                    plans::check(connection, &schema, &subject, &sql, &values).map_err(storage)?;
                let analysis = if analyze {
                    let started = Instant::now();
                    let returned = query::run(connection, &sql, &values)?;
                    Some(PlanAnalysis {
                        duration: started.elapsed(),
                        rows_returned: returned.len(),
                    })
                } else {
                    None
                };
                Ok(QueryPlan {
                    query: query_name,
                    sql: sql.to_string(),
                    text: plans::render(&rows),
                    rows,
                    warnings,
                    analysis,
                })
            })
            .await
    }

    /// Every configured query's status, in configuration order.
    pub fn queries(&self) -> Vec<QueryStatus> {
        self.query_names
            .iter()
            .filter_map(|name| self.queries.get(name))
            .map(QueryEntry::status)
            .collect()
    }

    /// A query's plan warnings and what it has served since the read side started.
    pub fn query_status(&self, name: &str) -> Result<QueryStatus, ReadSideError> {
        self.queries
            .get(name)
            .map(QueryEntry::status)
            .ok_or_else(|| ReadSideError::QueryNotFound(name.to_owned()))
    }

    /// Plans every statement and query again (after a rebuild ran `setup`), logging the
    /// warnings that are new and the ones that cleared.
    async fn recheck_plans(&self) {
        let _one_at_a_time = self.recheck.lock().await;
        let projections: Vec<Arc<ProjectionPlan>> = self
            .projections
            .iter()
            .map(|p| Arc::clone(&p.plan))
            .collect();
        let queries: Vec<CompiledQuery> = self
            .query_names
            .iter()
            .filter_map(|name| self.queries.get(name))
            .map(|entry| entry.plan.clone())
            .collect();
        let checked = match &self.reads {
            Reads::Postgres(read_models) => {
                pg::check_all(read_models, &projections, &queries).await
            }
            Reads::Sqlite(reads) => {
                reads
                    .run(move |connection| {
                        plans::check_all(connection, &projections, &queries).map_err(storage)
                    })
                    .await
            }
        };
        let checks = match checked {
            Ok(checks) => checks,
            Err(error) => {
                tracing::warn!(target: "cairn::plans", %error, "plans cannot be checked again");
                return;
            }
        };
        for (projection, warnings) in self.projections.iter().zip(checks.projections) {
            if let Ok(mut current) = projection.plan_warnings.lock() {
                report_changes(&current, &warnings);
                *current = warnings;
            }
        }
        let entries = self
            .query_names
            .iter()
            .filter_map(|name| self.queries.get(name));
        for (entry, check) in entries.zip(checks.queries) {
            if let Ok(mut current) = entry.plan_check.lock() {
                report_changes(&current.warnings, &check.warnings);
                *current = check;
            }
        }
    }

    /// Stops every projection (each finishes the batch in hand and saves its
    /// checkpoint), closes the read connections and releases the data directory.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        for projection in &self.projections {
            let run = projection.run.lock().await.take();
            if let Some(run) = run {
                run.stop().await;
            }
            if projection.state() != ProjectionState::Failed {
                projection.set_state(ProjectionState::Stopped, None);
            }
        }
        self.reads.close();
        self.cache.clear();
        if let Ok(mut lock) = self.lock.lock() {
            lock.take();
        }
        self.moved
            .send_modify(|count| *count = count.wrapping_add(1));
        tracing::info!("read side stopped");
    }

    fn spawn(&self, projection: &Arc<Projection>) -> Result<projection::Run, ReadSideError> {
        self.ensure_running()?;
        let lock = self.lock.lock().ok().and_then(|lock| lock.clone());
        if lock.is_none() && self.context.postgres.is_none() {
            return Err(ReadSideError::Storage("the read side is shut down".into()));
        }
        Ok(projection::spawn(
            self.context.clone(),
            Arc::clone(projection),
            &self.shutdown,
            lock,
        ))
    }

    fn find(&self, name: &str) -> Result<&Arc<Projection>, ReadSideError> {
        self.projections
            .iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| ReadSideError::ProjectionNotFound(name.to_owned()))
    }

    fn ensure_running(&self) -> Result<(), ReadSideError> {
        if self.shutdown.is_cancelled() {
            return Err(ReadSideError::Storage("the read side is shut down".into()));
        }
        Ok(())
    }

    fn status(&self, projection: &Projection) -> ProjectionStatus {
        let position = projection.position();
        let head = (*self.store.watch_head().borrow()).max(position);
        let plan_warnings = projection
            .plan_warnings
            .lock()
            .map(|warnings| warnings.clone())
            .unwrap_or_default();
        let (state, last_error, definition_changed, driving) = match projection.status.lock() {
            Ok(status) => (
                status.state,
                status.last_error.clone(),
                status.definition_changed,
                status.driving,
            ),
            Err(_) => (ProjectionState::Failed, None, false, None),
        };
        ProjectionStatus {
            name: projection.name().to_owned(),
            state,
            position,
            head_position: head,
            lag: head - position,
            events_per_second: projection.events_per_second(),
            last_error,
            definition_changed,
            message: definition_changed.then(|| DEFINITION_CHANGED.to_owned()),
            rebuild_progress: (state == ProjectionState::Rebuilding).then(|| {
                if head == 0 {
                    1.0
                } else {
                    position as f64 / head as f64
                }
            }),
            plan_warnings,
            driving,
        }
    }

    /// Waits, woken by projections moving, until the query's projections reflect
    /// `min_position`.
    async fn wait_for(
        &self,
        entry: &QueryEntry,
        min_position: Position,
        wait: Duration,
    ) -> Result<(), ReadSideError> {
        let mut moved = self.moved.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let position = entry.position();
            if position >= min_position {
                return Ok(());
            }
            let timeout = || ReadSideError::ConsistencyTimeout {
                min_position,
                position,
            };
            if self.shutdown.is_cancelled() {
                return Err(timeout());
            }
            match tokio::time::timeout_at(deadline, moved.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Err(timeout()),
            }
        }
    }
}

impl Drop for ReadSide {
    fn drop(&mut self) {
        // Tasks hold no reference to the read side; stop them with it.
        self.shutdown.cancel();
    }
}

/// Logs the warnings in `now` that were not in `before`, and notes those that cleared.
fn report_changes(before: &[PlanWarning], now: &[PlanWarning]) {
    for warning in now.iter().filter(|w| !before.contains(w)) {
        plans::log(warning);
    }
    for cleared in before.iter().filter(|w| !now.contains(w)) {
        tracing::info!(
            target: "cairn::plans",
            subject = %cleared.subject,
            kind = cleared.kind.as_str(),
            table = %cleared.table,
            "plan warning cleared"
        );
    }
}

/// `items`, or as many defaults as expected when the check could not run.
fn pad<T: Default>(mut items: Vec<T>, expected: usize) -> Vec<T> {
    items.resize_with(expected, T::default);
    items
}

/// The projections whose tables (created by their `setup`) the query reads (after
/// `FROM` or `JOIN`, not merely a word of its SQL); all of them when it reads none.
fn projections_read_by(
    plan: &CompiledQuery,
    projections: &[Arc<Projection>],
) -> Vec<Arc<Projection>> {
    let named: Vec<Arc<Projection>> = projections
        .iter()
        .filter(|p| !p.plan.tables.is_disjoint(&plan.tables))
        .cloned()
        .collect();
    if named.is_empty() {
        projections.to_vec()
    } else {
        named
    }
}

/// SQLite: locks the data directory, opens `readmodels.db` (creating projections,
/// checking statements and plans) on a blocking thread, and the read-only pool.
async fn open_sqlite(
    options: &ReadSideOptions,
    path: &std::path::Path,
    plans: &[Arc<ProjectionPlan>],
    query_plans: &[CompiledQuery],
) -> Result<Opened, ReadSideError> {
    let lock = db::lock_data_dir(&options.data_dir)?;
    let (stored, checks) = {
        let path = path.to_owned();
        let plans = plans.to_vec();
        let query_plans = query_plans.to_vec();
        tokio::task::spawn_blocking(move || {
            let stored = open_projections(&path, &plans, &query_plans)?;
            let reader = db::open_reader(&path)?;
            let checks =
                crate::plans::check_all(&reader, &plans, &query_plans).unwrap_or_else(|error| {
                    tracing::warn!(target: "cairn::plans", %error, "plans cannot be checked");
                    PlanChecks::default()
                });
            Ok::<_, ReadSideError>((stored, checks))
        })
        .await
        .map_err(storage)??
    };
    let reads = ReadPool::open(path.to_owned(), options.read_connections, POOL_NAME)?;
    Ok(Opened {
        stored,
        checks,
        reads: Reads::Sqlite(reads),
        lock: Some(Arc::new(lock)),
    })
}

/// PostgreSQL: creates the schema and Cairn's table (once, whichever instance comes
/// first), creates new projections (their `setup` and row, once), checks every
/// statement and query, and plans them.
async fn open_postgres(
    options: &PostgresReadModels,
    plans: &[Arc<ProjectionPlan>],
    query_plans: &[CompiledQuery],
) -> Result<Opened, ReadSideError> {
    let read_models = Arc::new(PgReadModels::new(options)?);
    read_models.migrate().await?;
    let mut stored = Vec::with_capacity(plans.len());
    let mut changed = Vec::with_capacity(plans.len());
    for plan in plans {
        let (existing, created) = read_models.load_or_create(plan).await?;
        if created {
            tracing::info!(projection = %plan.config.name, schema = %options.schema, "projection created");
        }
        changed.push((
            Arc::clone(plan),
            existing.definition_hash != plan.definition_hash,
        ));
        stored.push(existing);
    }
    read_models.check_definitions(&changed, query_plans).await?;
    let checks = pg::check_all(&read_models, plans, query_plans)
        .await
        .unwrap_or_else(|error| {
            tracing::warn!(target: "cairn::plans", %error, "plans cannot be checked");
            PlanChecks::default()
        });
    Ok(Opened {
        stored,
        checks,
        reads: Reads::Postgres(read_models),
        lock: None,
    })
}

/// On a blocking thread at start: migrates `readmodels.db`, creates new projections,
/// loads the others, and checks the statements and queries against the schema.
fn open_projections(
    path: &std::path::Path,
    plans: &[Arc<ProjectionPlan>],
    queries: &[CompiledQuery],
) -> Result<Vec<StoredProjection>, ReadSideError> {
    let mut connection = db::open_writer(path)?;
    db::migrate(&mut connection)?;
    let mut stored = Vec::with_capacity(plans.len());
    for plan in plans {
        let name = &plan.config.name;
        let existing = match db::load(&connection, name)? {
            Some(existing) => existing,
            None => {
                db::create(&mut connection, plan)
                    .map_err(|e| ReadSideError::Config(format!("projection {name:?}: {e}")))?;
                tracing::info!(projection = %name, "projection created");
                db::load(&connection, name)?
                    .ok_or_else(|| ReadSideError::Storage(format!("projection {name} vanished")))?
            }
        };
        let changed = existing.definition_hash != plan.definition_hash;
        check_statements(&connection, plan, changed)?;
        stored.push(existing);
    }
    let reader = db::open_reader(path)?;
    for query in queries {
        match reader.prepare(&query.sql) {
            Ok(statement) if !statement.readonly() => {
                return Err(ReadSideError::Config(format!(
                    "query {:?}: a query must only read; this one would write",
                    query.name
                )));
            }
            Ok(_) => {}
            Err(error) if is_missing_schema(&error) => {
                tracing::warn!(query = %query.name, %error, "query cannot be checked yet");
            }
            Err(error) => {
                return Err(ReadSideError::Config(format!(
                    "query {:?}: {error}",
                    query.name
                )));
            }
        }
    }
    Ok(stored)
}

/// Prepares every `on` statement, so a typo is reported at start, not at the first
/// matching event. A changed definition may name tables or columns that only its
/// rebuild creates: those errors wait for the events.
fn check_statements(
    connection: &rusqlite::Connection,
    plan: &ProjectionPlan,
    definition_changed: bool,
) -> Result<(), ReadSideError> {
    for (event_type, handler) in &plan.handlers {
        for (index, statement) in handler.statements.iter().enumerate() {
            match connection.prepare(&statement.sql) {
                Ok(prepared) if prepared.column_count() > 0 => {
                    return Err(ReadSideError::Config(format!(
                        "projection {:?}: on.{event_type} statement {} returns rows; \
                         projection statements write (no SELECT, no RETURNING)",
                        plan.config.name,
                        index + 1
                    )));
                }
                Ok(_) => {}
                Err(error)
                    if error.to_string().contains("no such table")
                        || (definition_changed && is_missing_schema(&error)) => {}
                Err(error) => {
                    return Err(ReadSideError::Config(format!(
                        "projection {:?}: on.{event_type} statement {}: {error}",
                        plan.config.name,
                        index + 1
                    )));
                }
            }
        }
    }
    Ok(())
}

fn is_missing_schema(error: &rusqlite::Error) -> bool {
    let message = error.to_string();
    message.contains("no such table")
        || message.contains("no such column")
        || message.contains("has no column named")
}
