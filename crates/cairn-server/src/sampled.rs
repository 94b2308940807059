//! Metrics sampled rather than counted as things happen: the databases' sizes, refreshed
//! by a background task (measuring may take I/O, e.g. PostgreSQL's
//! `pg_database_size`), and the pools' and caches' gauges, set from in-memory counters
//! before every scrape. (The process's own figures are read as `/metrics` renders:
//! [`crate::process`].)

use std::sync::Arc;
use std::time::Duration;

use cairn_projection::ReadSide;
use cairn_store::SharedStore;
use cairn_store::metrics::record_database_size;

use crate::AppState;

/// How often the databases' sizes are measured while serving.
pub const DATABASE_SIZE_INTERVAL: Duration = Duration::from_secs(10);

/// Measures the event store's and the read side's databases.
pub(crate) struct DatabaseSizes {
    store: SharedStore,
    read_side: Option<Arc<ReadSide>>,
}

impl DatabaseSizes {
    pub(crate) fn new(state: &AppState) -> Self {
        Self {
            store: Arc::clone(&state.store),
            read_side: state.read_side.clone(),
        }
    }

    /// Measures once and sets `cairn_database_size_bytes` (and the WAL's gauge).
    pub(crate) async fn refresh(&self) {
        match self.store.storage_size().await {
            Ok(Some(size)) => record_database_size("events", size),
            Ok(None) => {}
            Err(error) => {
                tracing::debug!(target: "cairn::http", %error, "cannot measure the event store's database");
            }
        }
        if let Some(read_side) = &self.read_side {
            match read_side.storage_size().await {
                Ok(size) => record_database_size("readmodels", size),
                Err(error) => {
                    tracing::debug!(target: "cairn::http", %error, "cannot measure readmodels.db");
                }
            }
        }
    }

    /// Measures every `interval`, the first time one interval from now, forever.
    pub(crate) async fn run(self, interval: Duration) {
        let start = tokio::time::Instant::now() + interval;
        let mut ticks = tokio::time::interval_at(start, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.refresh().await;
        }
    }
}

/// Sets the gauges sampled at scrape time: the store's pools, the read side's query
/// pool and result cache, and the event-page cache. Takes no I/O.
pub(crate) async fn record_gauges(state: &AppState) {
    state.store.record_gauges();
    if let Some(read_side) = &state.read_side {
        read_side.record_gauges().await;
    }
    state.event_pages.record_gauges();
}
