//! Query results cached per (query, parameters after defaults), bounded by bytes.
//!
//! An entry remembers the generation of each projection its query reads (a
//! generation moves with every commit that changed that projection's read model). It
//! is served only while those generations are current, so a cached answer is never
//! staler than an uncached one; events that change nothing (filtered out, or with no
//! statement) do not invalidate it. A query with `cache_ttl` accepted staleness: its
//! entries are served until the TTL ends, with the position they were computed at.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::Position;
use moka::Expiry;
use moka::future::Cache;

use crate::metrics;
use crate::query::Row;

pub(crate) struct CachedResult {
    pub rows: Arc<Vec<Row>>,
    /// The generation of each of the query's projections the rows were read at.
    pub generations: Vec<u64>,
    /// The rebuild epoch of each of the query's projections.
    pub epochs: Vec<u64>,
    /// The position the rows reflect (what a TTL hit reports).
    pub position: Position,
    pub ttl: Option<Duration>,
    pub weight: u32,
}

pub(crate) struct QueryCache {
    cache: Option<Cache<String, Arc<CachedResult>>>,
    capacity: u64,
}

struct PerEntryTtl;

impl Expiry<String, Arc<CachedResult>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<CachedResult>,
        _created_at: Instant,
    ) -> Option<Duration> {
        value.ttl
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Arc<CachedResult>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        value.ttl
    }
}

impl QueryCache {
    /// A cache holding about `bytes` of results; 0 turns caching off.
    pub(crate) fn new(bytes: u64) -> Self {
        let cache = (bytes > 0).then(|| {
            Cache::builder()
                .max_capacity(bytes)
                .weigher(|key: &String, value: &Arc<CachedResult>| {
                    value
                        .weight
                        .saturating_add(u32::try_from(key.len()).unwrap_or(u32::MAX))
                })
                .expire_after(PerEntryTtl)
                .eviction_listener(|_key, _value, cause| {
                    metrics::record_eviction(metrics::QUERY_RESULTS_CACHE, cause);
                })
                .build()
        });
        Self {
            cache,
            capacity: bytes,
        }
    }

    /// Sets the cache's size gauges (after its pending evictions), when it is on.
    pub(crate) async fn record_gauges(&self) {
        if let Some(cache) = &self.cache {
            cache.run_pending_tasks().await;
            metrics::record_cache_size(
                metrics::QUERY_RESULTS_CACHE,
                cache.weighted_size(),
                self.capacity,
            );
        }
    }

    pub(crate) async fn get(&self, key: &str) -> Option<Arc<CachedResult>> {
        self.cache.as_ref()?.get(key).await
    }

    pub(crate) async fn insert(&self, key: String, value: CachedResult) {
        if let Some(cache) = &self.cache {
            cache.insert(key, Arc::new(value)).await;
        }
    }

    pub(crate) fn clear(&self) {
        if let Some(cache) = &self.cache {
            cache.invalidate_all();
        }
    }
}
