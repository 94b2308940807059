//! The embedded backend: one SQLite file in WAL mode, one writer thread doing group
//! commit, a pool of read connections.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use cairn_core::{EventFilter, ExpectedVersion, Position, StreamName, Version};

use crate::{
    AppendOutcome, AppendRequest, Direction, EventStore, LogSlice, StoreError, StreamInfo,
    StreamPage, StreamSlice,
};

/// How to open the embedded store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// The folder holding `events.db`; created when missing.
    pub data_dir: PathBuf,
    /// Read connections in the pool.
    pub read_connections: usize,
    /// How long idempotency keys are kept.
    pub idempotency_window: Duration,
    /// The most append requests committed in one transaction.
    pub max_batch_requests: usize,
}

impl SqliteOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            read_connections: 4,
            idempotency_window: Duration::from_secs(24 * 3600),
            max_batch_requests: 512,
        }
    }
}

pub struct SqliteStore {}

impl SqliteStore {
    /// Opens (creating and migrating when needed) the store in `options.data_dir`.
    pub fn open(options: SqliteOptions) -> Result<Self, StoreError> {
        let _ = options;
        Err(StoreError::Internal("not yet".into()))
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(&self, _request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        Err(StoreError::Internal("not yet".into()))
    }
    async fn read_stream(
        &self,
        _stream: &StreamName,
        _from: Option<Version>,
        _direction: Direction,
        _limit: usize,
    ) -> Result<StreamSlice, StoreError> {
        Err(StoreError::Internal("not yet".into()))
    }
    async fn stream_info(&self, _stream: &StreamName) -> Result<StreamInfo, StoreError> {
        Err(StoreError::Internal("not yet".into()))
    }
    async fn list_streams(
        &self,
        _prefix: &str,
        _after: Option<&str>,
        _limit: usize,
    ) -> Result<StreamPage, StoreError> {
        Err(StoreError::Internal("not yet".into()))
    }
    async fn read_all(
        &self,
        _from: Position,
        _filter: &EventFilter,
        _limit: usize,
    ) -> Result<LogSlice, StoreError> {
        Err(StoreError::Internal("not yet".into()))
    }
    async fn delete_stream(
        &self,
        _stream: &StreamName,
        _expected: ExpectedVersion,
    ) -> Result<Version, StoreError> {
        Err(StoreError::Internal("not yet".into()))
    }
    async fn head_position(&self) -> Result<Position, StoreError> {
        Err(StoreError::Internal("not yet".into()))
    }
    fn watch_head(&self) -> tokio::sync::watch::Receiver<Position> {
        tokio::sync::watch::channel(0).1
    }
    async fn ready(&self) -> Result<(), StoreError> {
        Err(StoreError::Internal("not yet".into()))
    }
}
