//! [`TracedStore`]: any [`EventStore`] with a span around each storage call, for the
//! trace exporter.
//!
//! The binary wraps its store in one only when traces are exported, so without an
//! exporter storage calls pay nothing. Each span is named after the operation and
//! carries `db.system` (`sqlite`, `postgresql`) and `db.operation` (`append`,
//! `read_stream`, `read_all`, `save_checkpoint`, …); its duration is the call's.
//! Calls made outside any span (a projection's or a subscription's tail reading the
//! log in the background) get none: they would each start a trace of their own.

use async_trait::async_trait;
use cairn_core::{EventFilter, ExpectedVersion, Position, RecordedEvent, StreamName, Version};
use tracing::Instrument;

use crate::trace::SPAN_TARGET;
use crate::{
    AppendOutcome, AppendRequest, Direction, EventStore, GroupRecord, GroupSettings, LiveBatch,
    LogSlice, ParkedEvent, ReplicaHealth, SharedStore, StorageSize, StoreError, StreamInfo,
    StreamPage, StreamSlice,
};

/// A store whose calls are spans (see the module's documentation).
pub struct TracedStore {
    inner: SharedStore,
    /// `db.system`: `sqlite` or `postgresql`.
    system: &'static str,
}

impl TracedStore {
    pub fn new(inner: SharedStore, system: &'static str) -> Self {
        Self { inner, system }
    }

    /// The span of one storage call: only inside a request whose trace is sampled, so
    /// that the unsampled majority of calls costs no span at all.
    fn span(&self, operation: &'static str) -> tracing::Span {
        let sampled = crate::trace::span_context(&tracing::Span::current())
            .is_some_and(|context| context.is_sampled());
        if !sampled {
            return tracing::Span::none();
        }
        tracing::info_span!(
            target: SPAN_TARGET,
            "db",
            otel.name = operation,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            db.system = self.system,
            db.operation = operation,
        )
    }

    /// Runs `call` inside the span of `operation`; a failure of the storage itself
    /// (not a refusal such as a wrong expected version) marks the span as an error.
    async fn traced<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let span = self.span(operation);
        let outcome = call.instrument(span.clone()).await;
        if let Err(StoreError::Unavailable(_) | StoreError::Internal(_)) = &outcome {
            span.record("otel.status_code", "error");
        }
        outcome
    }
}

#[async_trait]
impl EventStore for TracedStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        self.traced("append", self.inner.append(request)).await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from: Option<Version>,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamSlice, StoreError> {
        self.traced(
            "read_stream",
            self.inner.read_stream(stream, from, direction, limit),
        )
        .await
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo, StoreError> {
        self.traced("stream_info", self.inner.stream_info(stream))
            .await
    }

    async fn list_streams(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<StreamPage, StoreError> {
        self.traced(
            "list_streams",
            self.inner.list_streams(prefix, after, limit),
        )
        .await
    }

    async fn read_all(
        &self,
        from: Position,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<LogSlice, StoreError> {
        self.traced("read_all", self.inner.read_all(from, filter, limit))
            .await
    }

    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<Version, StoreError> {
        self.traced("delete_stream", self.inner.delete_stream(stream, expected))
            .await
    }

    async fn head_position(&self) -> Result<Position, StoreError> {
        self.traced("head_position", self.inner.head_position())
            .await
    }

    fn watch_head(&self) -> tokio::sync::watch::Receiver<Position> {
        self.inner.watch_head()
    }

    fn live_events(&self) -> tokio::sync::broadcast::Receiver<LiveBatch> {
        self.inner.live_events()
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.traced("ready", self.inner.ready()).await
    }

    fn replica_status(&self) -> Vec<ReplicaHealth> {
        self.inner.replica_status()
    }

    async fn storage_size(&self) -> Result<Option<StorageSize>, StoreError> {
        self.inner.storage_size().await
    }

    fn record_gauges(&self) {
        self.inner.record_gauges();
    }

    async fn read_event(&self, position: Position) -> Result<Option<RecordedEvent>, StoreError> {
        self.traced("read_event", self.inner.read_event(position))
            .await
    }

    async fn import_events(
        &self,
        records: Vec<crate::ImportRecord>,
    ) -> Result<crate::ImportSummary, crate::ImportError> {
        self.inner.import_events(records).await
    }

    async fn list_tombstones(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::Tombstone>, StoreError> {
        self.traced("list_tombstones", self.inner.list_tombstones(after, limit))
            .await
    }

    async fn save_group(
        &self,
        name: &str,
        settings: &GroupSettings,
        checkpoint: Position,
    ) -> Result<GroupRecord, StoreError> {
        self.traced(
            "save_group",
            self.inner.save_group(name, settings, checkpoint),
        )
        .await
    }

    async fn delete_group(&self, name: &str) -> Result<bool, StoreError> {
        self.traced("delete_group", self.inner.delete_group(name))
            .await
    }

    async fn load_groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
        self.traced("load_groups", self.inner.load_groups()).await
    }

    async fn save_checkpoint(&self, name: &str, checkpoint: Position) -> Result<(), StoreError> {
        self.traced(
            "save_checkpoint",
            self.inner.save_checkpoint(name, checkpoint),
        )
        .await
    }

    async fn park_events(&self, name: &str, events: Vec<ParkedEvent>) -> Result<(), StoreError> {
        self.traced("park_events", self.inner.park_events(name, events))
            .await
    }

    async fn replay_parked(
        &self,
        name: &str,
        positions: Option<Vec<Position>>,
    ) -> Result<Vec<Position>, StoreError> {
        self.traced("replay_parked", self.inner.replay_parked(name, positions))
            .await
    }

    async fn remove_parked(&self, name: &str, positions: Vec<Position>) -> Result<(), StoreError> {
        self.traced("remove_parked", self.inner.remove_parked(name, positions))
            .await
    }

    async fn list_parked(
        &self,
        name: &str,
        after: Position,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, StoreError> {
        self.traced("list_parked", self.inner.list_parked(name, after, limit))
            .await
    }
}
