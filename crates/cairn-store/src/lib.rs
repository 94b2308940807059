//! Storage for Cairn's events: the [`EventStore`] trait every backend implements, the
//! embedded SQLite backend with its group-commit writer, and the conformance suite that
//! every backend must pass.
//!
//! **Architecture invariants:**
//! - Positions are assigned by the store, gapless, in commit order: a reader that has
//!   seen position N never later sees a new event at a position ≤ N.
//! - An append is acknowledged (its future resolves `Ok`) only after it is durable.
//! - An append either writes all its events or none; a failing append in a group commit
//!   never fails its neighbours.
//! - Blocking database work never runs on the async executor.

use std::sync::Arc;

use async_trait::async_trait;
use cairn_core::{
    AppendCondition, EventFilter, ExpectedVersion, NewEvent, Position, RecordedEvent, StreamName,
    Version,
};
use uuid::Uuid;

pub use groups::{GroupOrdering, GroupRecord, GroupSettings, ParkedEvent};
pub use import::{ImportError, ImportRecord, ImportSummary, Tombstone};

/// A read replica as `/health/ready` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaHealth {
    /// `host:port/dbname`: never a password.
    pub label: String,
    /// In rotation: its last probe succeeded.
    pub up: bool,
    /// The position it had replayed at its last successful probe.
    pub replayed_position: Position,
    /// Positions it was behind the head this instance knew, at that probe.
    pub lag: u64,
}

/// The space a database takes on disk, for `cairn_database_size_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageSize {
    /// Every byte, the write-ahead log included.
    pub total_bytes: u64,
    /// The SQLite write-ahead log; `None` on PostgreSQL (whose WAL is the server's).
    pub wal_bytes: Option<u64>,
}

pub mod conformance;
pub mod groups;
pub mod import;
pub mod metrics;
pub mod postgres;
pub mod sqlite;
pub mod tail;
#[cfg(feature = "pg-harness")]
pub mod testing;
pub mod trace;
pub mod traced;

/// Events of one commit, contiguous in position, as published to live readers.
pub type LiveBatch = Arc<[RecordedEvent]>;

/// A store shared across the server.
pub type SharedStore = Arc<dyn EventStore>;

/// One atomic append, to one or more streams.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    /// Each stream written to, once, with its expectation. Every event names one of
    /// these by index.
    pub targets: Vec<AppendTarget>,
    /// The events in the order they are to be recorded: `(index into targets, event)`.
    pub events: Vec<(usize, NewEvent)>,
    pub condition: Option<AppendCondition>,
    pub idempotency: Option<IdempotencyClaim>,
}

impl AppendRequest {
    /// An append of `events` to one stream.
    pub fn single(stream: StreamName, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        Self {
            targets: vec![AppendTarget { stream, expected }],
            events: events.into_iter().map(|event| (0, event)).collect(),
            condition: None,
            idempotency: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendTarget {
    pub stream: StreamName,
    pub expected: ExpectedVersion,
}

/// An `Idempotency-Key` presented with an append. The store keeps the key, the
/// request's fingerprint and the response body in the same transaction as the events.
#[derive(Clone)]
pub struct IdempotencyClaim {
    pub key: String,
    /// A hash of everything in the request that determines its effect.
    pub fingerprint: [u8; 32],
    /// Renders the response body from the committed result; stored verbatim and
    /// replayed byte for byte.
    pub render: fn(&AppendResult) -> String,
}

impl std::fmt::Debug for IdempotencyClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyClaim")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// What became of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The events are durable (or, for a re-sent set of event ids, already were).
    Committed(AppendResult),
    /// The idempotency key was seen before with the same request: here is the body of
    /// the first response.
    Replayed { body: String },
}

/// Where an append's events landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    /// One entry per target, in the order of `AppendRequest::targets`.
    pub streams: Vec<StreamAppendResult>,
    pub first_position: Position,
    pub last_position: Position,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAppendResult {
    pub stream: StreamName,
    pub first_version: Version,
    pub last_version: Version,
    pub first_position: Position,
    pub last_position: Position,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// A page of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSlice {
    pub events: Vec<RecordedEvent>,
    /// The version to continue from, `None` at the end.
    pub next: Option<Version>,
}

/// A page of the global log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSlice {
    pub events: Vec<RecordedEvent>,
    /// Every matching event before this position has been returned.
    pub next_from_position: Position,
    /// The head of the log as this read saw it.
    pub head_position: Position,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub stream: StreamName,
    pub version: Version,
    pub position: Position,
    /// Microseconds since the epoch.
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPage {
    pub streams: Vec<String>,
    pub next: Option<String>,
}

/// Everything a store can refuse or fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("stream {stream} expected version {expected}, actual {}", fmt_actual(*.actual))]
    WrongExpectedVersion {
        stream: StreamName,
        expected: ExpectedVersion,
        actual: Option<Version>,
    },
    #[error("an event matching the condition was recorded at position {found} (after {after})")]
    ConditionFailed { after: Position, found: Position },
    #[error("event id {id} already exists in stream {existing_stream}")]
    DuplicateEventId { id: Uuid, existing_stream: String },
    #[error("stream {0} is deleted")]
    StreamDeleted(StreamName),
    #[error("stream {0} does not exist")]
    StreamNotFound(StreamName),
    #[error("idempotency key was already used with a different request")]
    IdempotencyKeyReused,
    #[error("consumer group {0} does not exist")]
    GroupNotFound(String),
    /// This instance does not drive the group (any more): another instance took it
    /// over, or this one lost its lock session. The request may succeed at the owner.
    #[error("consumer group {0} is not driven by this instance")]
    GroupMoved(String),
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("storage failure: {0}")]
    Internal(String),
}

fn fmt_actual(actual: Option<Version>) -> String {
    actual.map_or_else(|| "no_stream".to_owned(), |v| v.to_string())
}

/// An event store backend. Object safe: the server holds it as `Arc<dyn EventStore>`.
///
/// A method added here with a default body must also be forwarded by
/// [`traced::TracedStore`], which wraps the store when traces are exported.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends atomically and durably; see the crate's invariants.
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError>;

    /// Up to `limit` events of `stream`, starting at version `from` (inclusive) and going
    /// in `direction`. `from = None` means the start (forward) or the end (backward).
    /// `StreamNotFound` for a stream with no events, `StreamDeleted` for a deleted one.
    async fn read_stream(
        &self,
        stream: &StreamName,
        from: Option<Version>,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamSlice, StoreError>;

    /// The stream's head; `StreamNotFound` / `StreamDeleted` as for reads.
    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo, StoreError>;

    /// Stream names starting with `prefix`, in byte order, after `after` (exclusive).
    /// Deleted streams are not listed.
    async fn list_streams(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<StreamPage, StoreError>;

    /// Up to `limit` events of the global log at positions ≥ `from`, matching `filter`.
    async fn read_all(
        &self,
        from: Position,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<LogSlice, StoreError>;

    /// Marks a stream deleted: its events stay in the global log, but reads of the
    /// stream and appends to it answer `StreamDeleted`. Returns the deleted stream's
    /// last version.
    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<Version, StoreError>;

    /// The last committed position (0 for an empty log).
    async fn head_position(&self) -> Result<Position, StoreError>;

    /// A watch on the last committed position, updated right after every commit: the
    /// way live readers learn of new events without polling.
    fn watch_head(&self) -> tokio::sync::watch::Receiver<Position>;

    /// Committed events pushed to live readers, one message per commit. A commit may be
    /// left out (too large, or nobody listening when it committed) and a slow receiver
    /// may lag: readers must check positions and read the gaps from the log, as
    /// [`tail::LogTail`] does.
    fn live_events(&self) -> tokio::sync::broadcast::Receiver<LiveBatch>;

    /// Ready to serve: storage reachable, migrations done.
    async fn ready(&self) -> Result<(), StoreError>;

    /// The read replicas this store routes reads to, as of their last probe; none for a
    /// store without replicas (the default). Takes no I/O.
    fn replica_status(&self) -> Vec<ReplicaHealth> {
        Vec::new()
    }

    /// The space the store's database takes on disk; `None` when the backend cannot
    /// tell (the default). May take I/O: for a background task, not per request.
    async fn storage_size(&self) -> Result<Option<StorageSize>, StoreError> {
        Ok(None)
    }

    /// Sets the store's sampled gauges (its pools' connections and waiters) from
    /// in-memory counters; takes no I/O. Called before every scrape of `/metrics`.
    fn record_gauges(&self) {}

    /// The event at `position`, if there is one.
    async fn read_event(&self, position: Position) -> Result<Option<RecordedEvent>, StoreError>;

    /// Writes a batch of events (and tombstones) recorded elsewhere, keeping their ids,
    /// versions, positions and recorded times: `cairn import`. The batch must continue
    /// the log exactly (see [`import`] for every rule); it is checked whole and written
    /// in one transaction, so a rejected batch writes nothing. Later appends continue
    /// after the last imported position. The default refuses: a store that cannot
    /// keep positions as given cannot import.
    async fn import_events(
        &self,
        records: Vec<ImportRecord>,
    ) -> Result<ImportSummary, ImportError> {
        drop(records);
        Err(ImportError::Store(StoreError::Internal(
            "this store cannot import events".into(),
        )))
    }

    /// Deleted streams whose names come after `after`, in byte order, at most `limit`:
    /// what `cairn export` writes as tombstones. The default has none to list only when
    /// the store cannot delete streams, so it refuses instead.
    async fn list_tombstones(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Tombstone>, StoreError> {
        let _ = (after, limit);
        Err(StoreError::Internal(
            "this store cannot list deleted streams".into(),
        ))
    }

    // Consumer groups' durable state. The delivery bookkeeping itself lives in memory
    // (`groups::ConsumerGroups`); these keep what must survive a restart.

    /// Creates the group at `checkpoint`, or updates its settings and keeps its
    /// checkpoint. Returns the stored record.
    async fn save_group(
        &self,
        name: &str,
        settings: &GroupSettings,
        checkpoint: Position,
    ) -> Result<GroupRecord, StoreError>;

    /// Removes the group and its parked events; `false` when there was no such group.
    async fn delete_group(&self, name: &str) -> Result<bool, StoreError>;

    async fn load_groups(&self) -> Result<Vec<GroupRecord>, StoreError>;

    /// Moves the group's checkpoint forward to `checkpoint` (never backwards).
    async fn save_checkpoint(&self, name: &str, checkpoint: Position) -> Result<(), StoreError>;

    /// Parks events (or parks them again after a failed replay).
    async fn park_events(&self, name: &str, events: Vec<ParkedEvent>) -> Result<(), StoreError>;

    /// Marks parked events as being replayed (all of the group's when `positions` is
    /// `None`) and returns the positions marked.
    async fn replay_parked(
        &self,
        name: &str,
        positions: Option<Vec<Position>>,
    ) -> Result<Vec<Position>, StoreError>;

    /// Forgets parked events whose replay was acknowledged.
    async fn remove_parked(&self, name: &str, positions: Vec<Position>) -> Result<(), StoreError>;

    /// Parked events of the group after `after`, in position order.
    async fn list_parked(
        &self,
        name: &str,
        after: Position,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, StoreError>;
}
