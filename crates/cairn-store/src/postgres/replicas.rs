//! Read replicas: one pool per replica, each replica's replayed position tracked by
//! probing it, lag-aware choice of a replica for a read.
//!
//! A replica serves a read only while its last probe succeeded and it had replayed
//! far enough for that read: an unfiltered page of the log needs only its last
//! position, anything else the head this instance knows (so a client never reads less
//! from a replica than it could have read from the primary through this instance). A
//! read that fails on a replica takes it out of rotation until its next successful
//! probe, and the read goes to the primary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use cairn_core::Position;
use deadpool_postgres::Pool;

use super::pool::record_pool_metrics;
use super::read;
use super::schema::pool_error;
use crate::StoreError;
use crate::metrics as m;

/// A replica as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// `host:port/dbname`.
    pub label: String,
    /// In rotation: the last probe succeeded.
    pub up: bool,
    /// The head the replica had replayed at its last successful probe.
    pub replayed_position: Position,
    /// Positions the replica was behind the head this instance knew, at that probe.
    pub lag: u64,
    /// Reads this replica served.
    pub reads: u64,
}

pub(crate) struct Replica {
    pub(crate) label: String,
    pub(crate) pool_name: String,
    pub(crate) pool: Pool,
    replayed: AtomicU64,
    lag: AtomicU64,
    up: AtomicBool,
    reads: AtomicU64,
}

impl Replica {
    pub(crate) fn new(label: String, pool: Pool) -> Self {
        Self {
            pool_name: format!("replica:{label}"),
            label,
            pool,
            replayed: AtomicU64::new(0),
            lag: AtomicU64::new(0),
            up: AtomicBool::new(false),
            reads: AtomicU64::new(0),
        }
    }

    /// Out of rotation until the next successful probe.
    pub(crate) fn mark_down(&self, error: &str) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(replica = %self.label, error, "read replica out of rotation");
        }
        metrics::gauge!(m::REPLICA_UP, "replica" => self.label.clone()).set(0.0);
    }

    pub(crate) fn count_read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::STORE_READS, "pool" => self.pool_name.clone()).increment(1);
    }

    /// Asks the replica how far it has replayed.
    async fn probe(&self, known_head: Position, timeout: Duration) {
        let probe = async {
            let client = self.pool.get().await.map_err(pool_error)?;
            read::head_position(&client).await
        };
        let outcome = match tokio::time::timeout(timeout, probe).await {
            Ok(outcome) => outcome,
            Err(_) => Err(StoreError::Unavailable("the probe timed out".into())),
        };
        match outcome {
            Ok(replayed) => {
                let lag = known_head.saturating_sub(replayed);
                self.replayed.store(replayed, Ordering::Release);
                self.lag.store(lag, Ordering::Relaxed);
                if !self.up.swap(true, Ordering::AcqRel) {
                    tracing::info!(replica = %self.label, replayed, "read replica in rotation");
                }
                metrics::gauge!(m::REPLICA_UP, "replica" => self.label.clone()).set(1.0);
                metrics::gauge!(m::REPLICA_LAG_POSITIONS, "replica" => self.label.clone())
                    .set(lag as f64);
            }
            Err(error) => self.mark_down(&error.to_string()),
        }
        record_pool_metrics(&self.pool_name, &self.pool);
    }

    fn status(&self) -> ReplicaStatus {
        ReplicaStatus {
            label: self.label.clone(),
            up: self.up.load(Ordering::Acquire),
            replayed_position: self.replayed.load(Ordering::Acquire),
            lag: self.lag.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
        }
    }
}

#[derive(Default)]
pub(crate) struct Replicas {
    replicas: Vec<Arc<Replica>>,
    next: AtomicUsize,
}

impl Replicas {
    pub(crate) fn new(replicas: Vec<Replica>) -> Self {
        Self {
            replicas: replicas.into_iter().map(Arc::new).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A replica in rotation that has replayed `needed`, taking turns among them.
    pub(crate) fn pick(&self, needed: Position) -> Option<Arc<Replica>> {
        let count = self.replicas.len();
        if count == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..count)
            .map(|offset| &self.replicas[(start + offset) % count])
            .find(|replica| {
                replica.up.load(Ordering::Acquire)
                    && replica.replayed.load(Ordering::Acquire) >= needed
            })
            .cloned()
    }

    /// Probes every replica at once.
    pub(crate) async fn probe_all(&self, known_head: Position, timeout: Duration) {
        futures::future::join_all(
            self.replicas
                .iter()
                .map(|replica| replica.probe(known_head, timeout)),
        )
        .await;
    }

    pub(crate) fn status(&self) -> Vec<ReplicaStatus> {
        self.replicas
            .iter()
            .map(|replica| replica.status())
            .collect()
    }
}
