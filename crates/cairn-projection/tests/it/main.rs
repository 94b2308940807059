//! The read side end to end: a real SQLite event store and a real `readmodels.db` in a
//! temporary directory. Read-model contents are checked through one `check` helper
//! ("given this configuration and these events, these queries answer these rows"),
//! with snapshots in `snapshots/`.

mod behaviour;
mod plans;
mod postgres;
mod read_models;
mod redis;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::{ExpectedVersion, NewEvent, Position, StreamName};
use cairn_projection::{
    ProjectionConfig, ProjectionState, QueryConfig, QueryResult, ReadSide, ReadSideError,
    ReadSideOptions,
};
use cairn_store::sqlite::{SqliteOptions, SqliteStore};
use cairn_store::{AppendOutcome, AppendRequest, SharedStore};
use serde::Deserialize;
use tempfile::TempDir;
use uuid::Uuid;

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The `[[projections]]` and `[[queries]]` of a settings file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub projections: Vec<ProjectionConfig>,
    #[serde(default)]
    pub queries: Vec<QueryConfig>,
}

pub fn settings(toml_text: &str) -> Settings {
    toml::from_str(toml_text).expect("test settings parse")
}

/// An event to append: stream, type, data (JSON), metadata (JSON object).
pub struct Ev<'a>(pub &'a str, pub &'a str, pub &'a str);

pub struct Harness {
    pub dir: TempDir,
    pub store: SharedStore,
    pub read_side: Arc<ReadSide>,
}

impl Harness {
    pub async fn start(config: &str) -> Self {
        Self::start_with(config, |_| {}).await
    }

    pub async fn start_with(config: &str, tune: impl FnOnce(&mut ReadSideOptions)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: SharedStore = Arc::new(
            SqliteStore::open(SqliteOptions::new(dir.path())).expect("open the event store"),
        );
        let read_side = start_read_side(&store, &dir, config, tune)
            .await
            .expect("start the read side");
        Self {
            dir,
            store,
            read_side,
        }
    }

    /// Stops the read side and starts a new one on the same files with `config`.
    ///
    /// The directory's lock is released when the stopped read side drops its file, but
    /// a process that another test of this binary is starting at that moment (a
    /// PostgreSQL or Redis server) holds a copy of every open file from its fork to its
    /// exec, so the lock can outlive the read side by that long: a refusal for that
    /// reason is retried for a while.
    pub async fn reopen(&mut self, config: &str) -> Result<(), ReadSideError> {
        self.read_side.shutdown().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match start_read_side(&self.store, &self.dir, config, |_| {}).await {
                Err(ReadSideError::Storage(message))
                    if message.contains("in use by another Cairn process")
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                started => {
                    self.read_side = started?;
                    return Ok(());
                }
            }
        }
    }

    pub async fn append(&self, events: &[Ev<'_>]) -> Position {
        append(&self.store, events).await
    }

    pub async fn append_meta(&self, stream: &str, event_type: &str, data: &str, meta: &str) {
        append_events(&self.store, stream, vec![new_event(event_type, data, meta)]).await;
    }

    pub async fn head(&self) -> Position {
        self.store.head_position().await.unwrap()
    }

    /// Waits until the projection reflects the head.
    pub async fn settle(&self, projection: &str) -> cairn_projection::ProjectionStatus {
        let head = self.head().await;
        self.read_side
            .wait_for_projection(projection, head, PATIENCE)
            .await
            .expect("the projection catches up")
    }

    pub async fn query(&self, name: &str, params: &[(&str, &str)]) -> QueryResult {
        self.try_query(name, params, None, Duration::ZERO)
            .await
            .unwrap_or_else(|e| panic!("query {name} failed: {e}"))
    }

    pub async fn try_query(
        &self,
        name: &str,
        params: &[(&str, &str)],
        min_position: Option<Position>,
        wait: Duration,
    ) -> Result<QueryResult, ReadSideError> {
        self.read_side
            .query(name, &params_map(params), min_position, wait)
            .await
    }

    /// A direct connection to `readmodels.db`, as an operator would open it.
    pub fn read_models(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join(cairn_projection::READ_MODEL_FILE))
            .expect("open readmodels.db")
    }
}

pub async fn start_read_side(
    store: &SharedStore,
    dir: &TempDir,
    config: &str,
    tune: impl FnOnce(&mut ReadSideOptions),
) -> Result<Arc<ReadSide>, ReadSideError> {
    let settings = settings(config);
    let mut options = ReadSideOptions::new(dir.path());
    options.read_connections = 2;
    options.cache_bytes = 1 << 20;
    tune(&mut options);
    ReadSide::start(
        store.clone(),
        options,
        settings.projections,
        settings.queries,
    )
    .await
}

pub fn params_map(params: &[(&str, &str)]) -> HashMap<String, String> {
    params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

pub fn new_event(event_type: &str, data: &str, metadata: &str) -> NewEvent {
    NewEvent {
        id: Uuid::now_v7(),
        event_type: event_type.to_owned(),
        data: cairn_core::compact_json(data),
        metadata: cairn_core::compact_json(metadata),
        tags: Vec::new(),
    }
}

pub async fn append(store: &SharedStore, events: &[Ev<'_>]) -> Position {
    let mut last = 0;
    for Ev(stream, event_type, data) in events {
        last = append_events(store, stream, vec![new_event(event_type, data, "{}")]).await;
    }
    last
}

pub async fn append_events(store: &SharedStore, stream: &str, events: Vec<NewEvent>) -> Position {
    let stream = StreamName::parse(stream).expect("valid stream");
    match store
        .append(AppendRequest::single(stream, ExpectedVersion::Any, events))
        .await
        .expect("append")
    {
        AppendOutcome::Committed(result) => result.last_position,
        AppendOutcome::Replayed { body } => panic!("replayed {body}"),
    }
}

/// Given `config` and `events`, runs each query (name and parameters) once every
/// projection reflects the head, and compares the rows with the snapshot `name`.
pub async fn check(
    name: &str,
    config: &str,
    events: &[Ev<'_>],
    queries: &[(&str, &[(&str, &str)])],
) {
    let harness = Harness::start(config).await;
    let head = harness.append(events).await;
    let mut answers = serde_json::Map::new();
    for (query, params) in queries {
        let result = harness
            .try_query(query, params, Some(head), PATIENCE)
            .await
            .unwrap_or_else(|e| panic!("query {query} failed: {e}"));
        assert_eq!(result.position, head, "{query} reflects the head");
        let label = if params.is_empty() {
            (*query).to_owned()
        } else {
            let rendered: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{query}?{}", rendered.join("&"))
        };
        answers.insert(label, serde_json::Value::from(result.rows));
    }
    for status in harness.read_side.projections().await {
        assert_eq!(status.state, ProjectionState::Running, "{status:?}");
    }
    insta::assert_json_snapshot!(name, answers);
    harness.read_side.shutdown().await;
}
