//! The PostgreSQL backend: any number of Cairn instances on one database, with
//! streaming read replicas.
//!
//! # Gap-free global order with several instances
//!
//! Event stores on PostgreSQL commonly take positions from a sequence (or an identity
//! column). A sequence hands out numbers at insert time, but transactions commit in
//! any order: position 11 can commit and become visible while position 10 is still in
//! flight. A reader that has just seen 11 moves its cursor past 10 and never sees it
//! (Marten #3321, Eventuous #222, SQLStreamStore #121 are this bug).
//!
//! Cairn takes no position from a sequence. The log's head is one row,
//! `cairn_head(position)`. Every append transaction, whichever instance runs it,
//! begins by locking that row (`SELECT … FROM cairn_head WHERE id = 1 FOR UPDATE`),
//! reads the head from it, writes its events at `head + 1 …`, stores the new head in
//! the row, and commits. The row lock is held until the commit, so appenders of all
//! instances are serialised: the transaction that writes positions `N + 1 …` cannot
//! even learn `N` before the one that wrote `N` has committed. PostgreSQL makes a
//! committed transaction visible before it releases its locks, so every snapshot that
//! sees position `N + 1` also sees `N`, on the primary and on every replica (they
//! replay commits in WAL order, which is this order too). Commit order is position
//! order; positions are gapless because a transaction that rolls back has written
//! nothing, including the head.
//!
//! One kind of transaction locks the row last: a large batch that overlaps the one
//! before it (`writer/flight.rs`) writes its rows at `N + 1 …` first, then updates the
//! row only if it still holds `N` and the revision the batch was decided against, and
//! rolls back otherwise. Updating the row waits for the transaction that stored `N` to
//! commit, so the same order holds: its rows become visible after `N`'s, and only
//! continuing `N`.
//!
//! The price is that appends to one database commit one transaction at a time. Group
//! commit (`writer.rs`, `batch.rs`) makes that cheap: each instance has one writer
//! task that takes every waiting append, decides them all in memory against what it
//! looked up after taking the lock, and writes and commits them in two pipelined round
//! trips, so the lock is held for about two round trips per batch, not per append.
//! Because every check happens before any write, a refused request writes nothing and
//! needs no savepoint: a batch has no subtransactions (past 64 in one transaction,
//! PostgreSQL makes every snapshot slower, on the primary and on hot standbys). If the
//! database refuses a write anyway, the batch rolls back and its requests are
//! committed again one by one, so one bad request never fails its neighbours.
//!
//! # Live updates between instances
//!
//! A committing batch queues `NOTIFY cairn_events, '<last position>'` in its
//! transaction; PostgreSQL delivers it only on commit. Each instance LISTENs on one
//! connection and, on a notification (or when its own writer committed), reads the new
//! events once from the primary, publishes them to its live feed as contiguous
//! batches and then moves its head watch (`live.rs`). After losing the LISTEN
//! connection it reconnects and catches up from the stored head, so nothing is
//! skipped.
//!
//! # Reads and replicas
//!
//! Reads use a bounded pool to the primary (the writer has connections of its own)
//! or, when one has replayed at least the head this instance knows, a pool to a
//! replica (`replicas.rs`): each replica's replayed head is probed a few times a
//! second and exported as lag. A replica that fails is out of rotation until a probe
//! succeeds again. Consumer-group state is always read and written on the primary.
//!
//! # Faults
//!
//! Every connection has a connect timeout, TCP keep-alives and server-side statement,
//! lock and idle-in-transaction timeouts; every request has a client-side timeout.
//! When the primary is unreachable, writes answer `Unavailable` quickly, reads that a
//! replica can serve keep working, and the pools reconnect by themselves when it comes
//! back. An append is answered success only after `COMMIT` returned, or after a
//! lookup found its events stored: if the connection broke during the commit, a batch
//! of appends is looked up once more on a new connection, and answered as the log
//! holds it. Otherwise (a batch with a delete, a timeout, a second break) the outcome
//! is unknown and the answer is `Unavailable`, never success (a retry with the same
//! idempotency key or event ids is safe).

mod batch;
mod groups;
mod import;
mod known;
mod leases;
mod live;
mod pool;
pub use self::pool::{bounded_pool, label as connection_label};
mod read;
mod replicas;
mod schema;
mod writer;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cairn_core::{EventFilter, ExpectedVersion, Position, RecordedEvent, StreamName, Version};
use deadpool_postgres::Pool;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;
use tokio_postgres::config::TargetSessionAttrs;

pub use self::leases::{PgGroupLeases, group_lock_key};
use self::live::Publisher;
use self::pool::{
    build_pool, checkout, connection_config, label, record_pool_metrics, writer_config,
};
pub use self::replicas::ReplicaStatus;
use self::replicas::{Replica, Replicas};
pub use self::schema::SCHEMA_VERSION;
use self::schema::{migrate, pg_error, pool_error, schema_version};
use self::writer::{Command, MAX_FLIGHTS, Writer};
use crate::metrics as m;
use crate::{
    AppendOutcome, AppendRequest, Direction, EventStore, GroupRecord, GroupSettings, LiveBatch,
    LogSlice, ParkedEvent, StoreError, StreamInfo, StreamPage, StreamSlice,
};

/// Commits kept for live readers that fall behind; past it they read from the log.
const LIVE_FEED_CAPACITY: usize = 512;
/// How often expired idempotency keys are removed.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Checks, without connecting, that `url` is a connection URL or `key=value` string
/// that PostgreSQL's client accepts. The error names what is wrong, never the password.
pub fn check_url(url: &str) -> Result<(), String> {
    url.parse::<tokio_postgres::Config>()
        .map(drop)
        .map_err(|error| error.to_string())
}

/// How to connect the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The primary: a `postgres://` URL or a `key=value` connection string.
    pub url: String,
    /// Streaming replicas for reads (`--replica-url`, repeatable).
    pub replica_urls: Vec<String>,
    /// Connections to the primary at most (the writer uses one at a time).
    pub pool_size: usize,
    /// Connections to each replica at most.
    pub replica_pool_size: usize,
    /// How long idempotency keys are kept.
    pub idempotency_window: Duration,
    /// The most append requests committed in one transaction.
    pub max_batch_requests: usize,
    /// Append requests that may wait for the writer before callers wait to enqueue.
    pub queue_depth: usize,
    /// The longest a new connection may take.
    pub connect_timeout: Duration,
    /// The longest one statement may run on the server, and a read in all.
    pub statement_timeout: Duration,
    /// The longest a batch waits for another instance's batch to release the head,
    /// and the longest a transaction may sit idle on the server.
    pub lock_timeout: Duration,
    /// The longest a request waits for a pooled connection.
    pub pool_wait_timeout: Duration,
    /// The longest a group commit may take, from taking a connection to `COMMIT`.
    pub write_timeout: Duration,
    /// How often each replica's replayed position is probed.
    pub replica_probe_interval: Duration,
    /// The fewest events a batch decided from memory needs to write on a second
    /// connection while the batch before it commits; 0 turns that off.
    pub overlap_min_events: usize,
}

impl PostgresOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            replica_urls: Vec::new(),
            pool_size: 16,
            replica_pool_size: 16,
            idempotency_window: Duration::from_secs(24 * 3600),
            max_batch_requests: 512,
            queue_depth: 4096,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(5),
            pool_wait_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(15),
            replica_probe_interval: Duration::from_millis(200),
            overlap_min_events: 200,
        }
    }
}

/// The PostgreSQL event store. Dropping it stops its tasks; the writer finishes the
/// batch in hand first.
pub struct PostgresStore {
    commands: Option<mpsc::Sender<Command>>,
    primary: Pool,
    replicas: Arc<Replicas>,
    head: watch::Receiver<Position>,
    live: broadcast::Sender<LiveBatch>,
    /// Told of imported batches, as the writer tells it of appends.
    publisher: Arc<Publisher>,
    /// The listener and the monitor, stopped on drop.
    tasks: Vec<JoinHandle<()>>,
    read_timeout: Duration,
    label: String,
}

impl PostgresStore {
    /// Connects to the primary, applies the migrations it lacks (under an advisory
    /// lock, so instances starting together do not race), and starts the writer, the
    /// LISTEN connection and the replica probes. Must run inside a tokio runtime.
    pub async fn connect(options: PostgresOptions) -> Result<Self, StoreError> {
        let primary_config =
            connection_config(&options.url, &options, TargetSessionAttrs::ReadWrite)?;
        let label = label(&primary_config);
        {
            let (mut client, connection) =
                tokio::time::timeout(options.connect_timeout, primary_config.connect(NoTls))
                    .await
                    .map_err(|_| {
                        StoreError::Unavailable(format!("PostgreSQL {label}: connect timed out"))
                    })?
                    .map_err(pg_error)?;
            let driver = tokio::spawn(connection);
            let migrated = migrate(&mut client).await;
            drop(client);
            let _ = driver.await;
            migrated?;
        }
        let primary = build_pool(primary_config.clone(), options.pool_size, &options)?;
        let head = {
            let client = primary.get().await.map_err(pool_error)?;
            read::head_position(&client).await?
        };

        let mut replicas = Vec::with_capacity(options.replica_urls.len());
        for url in &options.replica_urls {
            let config = connection_config(url, &options, TargetSessionAttrs::ReadOnly)?;
            let replica_label = self::pool::label(&config);
            let pool = build_pool(config, options.replica_pool_size, &options)?;
            replicas.push(Replica::new(replica_label, pool));
        }
        let replicas = Arc::new(Replicas::new(replicas));

        let (head_tx, head_rx) = watch::channel(head);
        let (live_tx, _) = broadcast::channel(LIVE_FEED_CAPACITY);
        let publisher = Arc::new(Publisher::new(
            head,
            live_tx.clone(),
            head_tx,
            primary.clone(),
        ));
        metrics::gauge!(m::HEAD_POSITION).set(head as f64);

        // The writer has connections of its own, so that reads never keep it waiting:
        // one per flight in the air at once (`writer/flight.rs`).
        let writer_pool = build_pool(writer_config(&primary_config), MAX_FLIGHTS, &options)?;
        let (commands_tx, commands_rx) = mpsc::channel(options.queue_depth.max(1));
        let writer = Writer {
            primary: writer_pool.clone(),
            publisher: Arc::clone(&publisher),
            idempotency_window: options.idempotency_window,
            max_batch_requests: options.max_batch_requests,
            write_timeout: options.write_timeout,
            overlap_min_events: options.overlap_min_events,
        };
        // The writer runs on a thread of its own, with its connection's driver: each
        // batch waits on two wake-ups per round trip (the connection's, then the
        // writer's), and on the shared runtime those queue behind every request's
        // tasks while the head lock is held.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| StoreError::Internal(format!("the writer's runtime: {error}")))?;
        std::thread::Builder::new()
            .name("cairn-pg-writer".into())
            .spawn(move || runtime.block_on(writer.run(commands_rx)))
            .map_err(|error| StoreError::Internal(format!("the writer's thread: {error}")))?;

        // The LISTEN connection idles outside any transaction, so the server-side
        // timeouts never end it.
        let listener = tokio::spawn(live::listen(
            primary_config,
            primary.clone(),
            Arc::clone(&publisher),
        ));
        let monitor = tokio::spawn(monitor(
            vec![("primary", primary.clone()), ("writer", writer_pool)],
            Arc::clone(&replicas),
            head_rx.clone(),
            options.clone(),
        ));
        tracing::info!(primary = %label, replicas = options.replica_urls.len(), head, "PostgreSQL store connected");
        Ok(Self {
            commands: Some(commands_tx),
            primary,
            replicas,
            head: head_rx,
            live: live_tx,
            publisher,
            tasks: vec![listener, monitor],
            read_timeout: options.statement_timeout + options.pool_wait_timeout,
            label,
        })
    }

    /// The primary as `host:port/dbname`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Each replica's state, in the order of `replica_urls`.
    pub fn replicas(&self) -> Vec<ReplicaStatus> {
        self.replicas.status()
    }

    /// The head this instance has published.
    fn known_head(&self) -> Position {
        *self.head.borrow()
    }

    /// Queues the command `make` builds around a reply channel and waits for the
    /// writer's answer.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let commands = self
            .commands
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("the store is closed".into()))?;
        let (reply, answer) = oneshot::channel();
        commands
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the writer stopped before answering".into()))?
    }

    /// Runs a read with the read timeout.
    async fn timed<T>(
        &self,
        read: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.read_timeout, read).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(
                "PostgreSQL: the read timed out".into(),
            )),
        }
    }

    /// A pooled connection to the primary.
    async fn primary(&self) -> Result<deadpool_postgres::Client, StoreError> {
        checkout(&self.primary, "primary").await
    }
}

/// Runs `$read` with `$client` bound to a pooled connection: on a replica that has
/// replayed `$needed` (by default the known head) if there is one, else (or if the
/// replica fails to answer) on the primary.
macro_rules! routed {
    ($store:expr, |$client:ident| $read:expr) => {{
        let store = $store;
        routed!(store, store.known_head(), |$client| $read)
    }};
    ($store:expr, $needed:expr, |$client:ident| $read:expr) => {{
        let store = $store;
        let mut answer = None;
        if let Some(replica) = store.replicas.pick($needed) {
            let outcome = store
                .timed(async {
                    let $client = checkout(&replica.pool, replica.pool_name.clone()).await?;
                    $read.await
                })
                .await;
            match outcome {
                Err(StoreError::Unavailable(error)) => replica.mark_down(&error),
                other => {
                    replica.count_read();
                    answer = Some(other);
                }
            }
        }
        match answer {
            Some(answer) => answer,
            None => {
                metrics::counter!(m::STORE_READS, "pool" => "primary").increment(1);
                store
                    .timed(async {
                        let $client = store.primary().await?;
                        $read.await
                    })
                    .await
            }
        }
    }};
}

/// How far a replica must have replayed to answer a read of the log from `from` exactly
/// as the primary would through this instance: an unfiltered page that the known head
/// fills needs only its last position, so a catch-up far behind the head can use a
/// replica that lags; a filtered page may skip any number of events, so it needs the
/// known head.
fn needed_for_log_read(
    known_head: Position,
    from: Position,
    filter: &EventFilter,
    limit: usize,
) -> Position {
    if !filter.is_empty() {
        return known_head;
    }
    let last = from
        .max(1)
        .saturating_add(u64::try_from(limit).unwrap_or(u64::MAX))
        .saturating_sub(1);
    last.min(known_head)
}

/// Runs `$work` on a pooled connection to the primary, with the read timeout.
macro_rules! on_primary {
    ($store:expr, |$client:ident| $work:expr) => {{
        let store = $store;
        store
            .timed(async {
                let $client = store.primary().await?;
                $work.await
            })
            .await
    }};
}

/// The background upkeep of one store: replica probes, pool gauges, and the sweep of
/// expired idempotency keys.
async fn monitor(
    pools: Vec<(&'static str, Pool)>,
    replicas: Arc<Replicas>,
    head: watch::Receiver<Position>,
    options: PostgresOptions,
) {
    let mut ticks = tokio::time::interval(options.replica_probe_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sweep = Instant::now();
    loop {
        ticks.tick().await;
        let known_head = *head.borrow();
        replicas
            .probe_all(
                known_head,
                options
                    .replica_probe_interval
                    .max(Duration::from_millis(500)),
            )
            .await;
        for (name, pool) in &pools {
            record_pool_metrics(name, pool);
        }
        if last_sweep.elapsed() >= SWEEP_INTERVAL
            && let Some((_, primary)) = pools.first()
        {
            last_sweep = Instant::now();
            sweep_idempotency_keys(primary, options.idempotency_window).await;
        }
    }
}

async fn sweep_idempotency_keys(primary: &Pool, window: Duration) {
    let window = i64::try_from(window.as_micros()).unwrap_or(i64::MAX);
    let cutoff = cairn_core::now_micros().saturating_sub(window);
    let outcome = async {
        let client = primary.get().await.map_err(pool_error)?;
        client
            .execute(
                "DELETE FROM idempotency_keys WHERE created_at < $1",
                &[&cutoff],
            )
            .await
            .map_err(pg_error)
    }
    .await;
    match outcome {
        Ok(0) => {}
        Ok(removed) => tracing::debug!(removed, "expired idempotency keys removed"),
        Err(error) => tracing::warn!(%error, "could not remove expired idempotency keys"),
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Closing the channel ends the writer after its batch in hand.
        self.commands.take();
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    fn replica_status(&self) -> Vec<crate::ReplicaHealth> {
        self.replicas()
            .into_iter()
            .map(|replica| crate::ReplicaHealth {
                label: replica.label,
                up: replica.up,
                replayed_position: replica.replayed_position,
                lag: replica.lag,
            })
            .collect()
    }

    async fn storage_size(&self) -> Result<Option<crate::StorageSize>, StoreError> {
        on_primary!(self, |client| async move {
            let row = client
                .query_one("SELECT pg_database_size(current_database())", &[])
                .await
                .map_err(pg_error)?;
            let bytes: i64 = row.try_get(0).map_err(pg_error)?;
            Ok(Some(crate::StorageSize {
                total_bytes: u64::try_from(bytes).unwrap_or(0),
                wal_bytes: None,
            }))
        })
    }

    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        self.ask(|reply| Command::Append { request, reply }).await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from: Option<Version>,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamSlice, StoreError> {
        routed!(self, |client| read::read_stream(
            &client, stream, from, direction, limit
        ))
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo, StoreError> {
        routed!(self, |client| read::stream_info(&client, stream))
    }

    async fn list_streams(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<StreamPage, StoreError> {
        routed!(self, |client| read::list_streams(
            &client, prefix, after, limit
        ))
    }

    async fn read_all(
        &self,
        from: Position,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<LogSlice, StoreError> {
        let needed = needed_for_log_read(self.known_head(), from, filter, limit);
        routed!(self, needed, |client| read::read_all(
            &client, from, filter, limit
        ))
    }

    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<Version, StoreError> {
        self.ask(|reply| Command::Delete {
            stream: stream.clone(),
            expected,
            reply,
        })
        .await
    }

    async fn head_position(&self) -> Result<Position, StoreError> {
        Ok(self.known_head())
    }

    fn watch_head(&self) -> watch::Receiver<Position> {
        self.head.clone()
    }

    fn live_events(&self) -> broadcast::Receiver<LiveBatch> {
        self.live.subscribe()
    }

    async fn ready(&self) -> Result<(), StoreError> {
        if self.commands.as_ref().is_none_or(|c| c.is_closed()) {
            return Err(StoreError::Unavailable("the writer has stopped".into()));
        }
        let version = on_primary!(self, |client| schema_version(&client))?;
        if version == SCHEMA_VERSION {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!(
                "schema version {version}, expected {SCHEMA_VERSION}"
            )))
        }
    }

    async fn import_events(
        &self,
        records: Vec<crate::ImportRecord>,
    ) -> Result<crate::ImportSummary, crate::ImportError> {
        let work = async {
            let mut client = self.primary().await?;
            let outcome = import::import(&mut client, &records).await;
            if outcome.is_err() {
                // It may be inside a failed transaction: never reuse it.
                drop(deadpool_postgres::Object::take(client));
            }
            outcome
        };
        let (summary, written) = tokio::time::timeout(self.read_timeout, work)
            .await
            .map_err(|_| {
                StoreError::Unavailable(
                    "PostgreSQL: an import batch timed out; its outcome is unknown".into(),
                )
            })??;
        if let Some((first, last)) = written {
            self.publisher.committed_here(first, last, None).await;
        }
        Ok(summary)
    }

    async fn list_tombstones(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::Tombstone>, StoreError> {
        on_primary!(self, |client| import::list_tombstones(
            &client, after, limit
        ))
    }

    async fn read_event(&self, position: Position) -> Result<Option<RecordedEvent>, StoreError> {
        let needed = position.min(self.known_head());
        routed!(self, needed, |client| read::read_event(&client, position))
    }

    async fn save_group(
        &self,
        name: &str,
        settings: &GroupSettings,
        checkpoint: Position,
    ) -> Result<GroupRecord, StoreError> {
        on_primary!(self, |client| groups::save_group(
            &client, name, settings, checkpoint
        ))
    }

    async fn delete_group(&self, name: &str) -> Result<bool, StoreError> {
        on_primary!(self, |client| groups::delete_group(&client, name))
    }

    async fn load_groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
        on_primary!(self, |client| groups::load_groups(&client))
    }

    async fn save_checkpoint(&self, name: &str, checkpoint: Position) -> Result<(), StoreError> {
        on_primary!(self, |client| groups::save_checkpoint(
            &client, name, checkpoint
        ))
    }

    async fn park_events(&self, name: &str, events: Vec<ParkedEvent>) -> Result<(), StoreError> {
        on_primary!(self, |client| groups::park_events(&client, name, events))
    }

    async fn replay_parked(
        &self,
        name: &str,
        positions: Option<Vec<Position>>,
    ) -> Result<Vec<Position>, StoreError> {
        on_primary!(self, |client| groups::replay_parked(
            &client, name, positions
        ))
    }

    async fn remove_parked(&self, name: &str, positions: Vec<Position>) -> Result<(), StoreError> {
        on_primary!(self, |client| groups::remove_parked(
            &client, name, positions
        ))
    }

    async fn list_parked(
        &self,
        name: &str,
        after: Position,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, StoreError> {
        on_primary!(self, |client| groups::list_parked(
            &client, name, after, limit
        ))
    }
}
