//! Encoded pages of events whose extent can no longer change, kept in memory and
//! bounded by bytes.
//!
//! Events never change once committed, so a *sealed* page answers the same forever:
//! a stream page the store continued (`next` is set: more events exist beyond it, in
//! that direction), and a global page that returned exactly `limit` events (positions
//! are gapless, so every position up to its end is committed and was scanned). Open
//! pages (the end of a stream, a short page of the log) are never cached.
//!
//! A deleted stream answers 410 whatever is cached: deleting a stream here drops its
//! entries and remembers its name, and a remembered stream is never served from the
//! cache (a read racing the delete may still insert a page after the invalidation).

use std::collections::HashSet;
use std::sync::RwLock;

use bytes::Bytes;
use cairn_core::{EventFilter, Position, Version};
use cairn_store::Direction;
use moka::sync::Cache;

use cairn_projection::metrics as cache_metrics;

use crate::metrics;

/// The default budget: 64 MiB of encoded pages.
pub const DEFAULT_EVENT_PAGE_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// The `route` label of stream reads.
pub(crate) const STREAM_ROUTE: &str = "/v1/streams/{stream}/events";
/// The `route` label of global reads.
pub(crate) const LOG_ROUTE: &str = "/v1/events";

#[derive(Clone, PartialEq, Eq, Hash)]
enum PageKey {
    Stream {
        stream: String,
        from: Option<Version>,
        limit: usize,
        backward: bool,
    },
    Log {
        from_position: Position,
        limit: usize,
        category: Option<String>,
        /// Sorted and deduplicated: `types` is any-of.
        types: Vec<String>,
        /// Sorted and deduplicated: `tags` is all-of.
        tags: Vec<String>,
        stream: Option<String>,
    },
}

impl PageKey {
    fn weight(&self) -> usize {
        match self {
            Self::Stream { stream, .. } => 48 + stream.len(),
            Self::Log {
                category,
                types,
                tags,
                stream,
                ..
            } => {
                64 + category.as_ref().map_or(0, String::len)
                    + types
                        .iter()
                        .chain(tags)
                        .map(|part| part.len() + 24)
                        .sum::<usize>()
                    + stream.as_ref().map_or(0, String::len)
            }
        }
    }

    fn stream(&self) -> Option<&str> {
        match self {
            Self::Stream { stream, .. } => Some(stream),
            Self::Log { .. } => None,
        }
    }
}

/// A cached page: a whole stream-page body, or a log page's body up to (not
/// including) `,"head_position":…}` and its `next_from_position`.
#[derive(Clone)]
pub(crate) struct CachedPage {
    pub body: Bytes,
    pub next_from_position: Position,
}

/// The sealed pages of stream and global reads.
pub struct EventPageCache {
    cache: Option<Cache<PageKey, CachedPage>>,
    /// Streams deleted through this server: never served from the cache.
    deleted: RwLock<HashSet<String>>,
}

impl EventPageCache {
    /// A cache holding about `bytes` of encoded pages; 0 turns caching off.
    pub fn new(bytes: u64) -> Self {
        let cache = (bytes > 0).then(|| {
            Cache::builder()
                .max_capacity(bytes)
                .weigher(|key: &PageKey, page: &CachedPage| {
                    u32::try_from(key.weight().saturating_add(page.body.len())).unwrap_or(u32::MAX)
                })
                .support_invalidation_closures()
                .eviction_listener(|_key, _page, cause| {
                    cache_metrics::record_eviction(metrics::EVENT_PAGES_CACHE, cause);
                })
                .build()
        });
        Self {
            cache,
            deleted: RwLock::new(HashSet::new()),
        }
    }

    /// Sets the cache's size gauges (after its pending evictions), when it is on.
    pub fn record_gauges(&self) {
        if let Some(cache) = &self.cache {
            cache.run_pending_tasks();
            cache_metrics::record_cache_size(
                metrics::EVENT_PAGES_CACHE,
                cache.weighted_size(),
                cache.policy().max_capacity().unwrap_or(0),
            );
        }
    }

    pub fn enabled(&self) -> bool {
        self.cache.is_some()
    }

    fn stream_key(
        stream: &str,
        from: Option<Version>,
        limit: usize,
        direction: Direction,
    ) -> PageKey {
        PageKey::Stream {
            stream: stream.to_owned(),
            from,
            limit,
            backward: direction == Direction::Backward,
        }
    }

    fn log_key(from_position: Position, limit: usize, filter: &EventFilter) -> PageKey {
        let normalized = |parts: &[String]| {
            let mut parts = parts.to_vec();
            parts.sort_unstable();
            parts.dedup();
            parts
        };
        PageKey::Log {
            from_position,
            limit,
            category: filter.category.clone(),
            types: normalized(&filter.types),
            tags: normalized(&filter.tags),
            stream: filter.stream.clone(),
        }
    }

    fn is_deleted(&self, stream: &str) -> bool {
        self.deleted
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(stream)
    }

    fn lookup(&self, key: &PageKey, route: &'static str) -> Option<CachedPage> {
        let cache = self.cache.as_ref()?;
        if key.stream().is_some_and(|stream| self.is_deleted(stream)) {
            return None;
        }
        let found = cache.get(key);
        let name = if found.is_some() {
            metrics::EVENT_PAGE_CACHE_HITS_TOTAL
        } else {
            metrics::EVENT_PAGE_CACHE_MISSES_TOTAL
        };
        ::metrics::counter!(name, "route" => route).increment(1);
        found
    }

    /// The body of a cached stream page.
    pub(crate) fn stream_page(
        &self,
        stream: &str,
        from: Option<Version>,
        limit: usize,
        direction: Direction,
    ) -> Option<Bytes> {
        self.cache.as_ref()?;
        if direction == Direction::Backward && from.is_none() {
            return None; // the end of a stream moves: never cached
        }
        let key = Self::stream_key(stream, from, limit, direction);
        self.lookup(&key, STREAM_ROUTE).map(|page| page.body)
    }

    /// Whether a stream page is sealed: the store continued it (`next` is set), and
    /// it does not start at the moving end of the stream.
    pub(crate) fn stream_page_is_sealed(
        from: Option<Version>,
        direction: Direction,
        next: Option<Version>,
    ) -> bool {
        next.is_some() && !(direction == Direction::Backward && from.is_none())
    }

    /// Keeps a sealed stream page's body.
    pub(crate) fn keep_stream_page(
        &self,
        stream: &str,
        from: Option<Version>,
        limit: usize,
        direction: Direction,
        body: Bytes,
    ) {
        let Some(cache) = &self.cache else { return };
        if self.is_deleted(stream) {
            return;
        }
        cache.insert(
            Self::stream_key(stream, from, limit, direction),
            CachedPage {
                body,
                next_from_position: 0,
            },
        );
    }

    /// A cached log page: its body without the head, and its `next_from_position`.
    pub(crate) fn log_page(
        &self,
        from_position: Position,
        limit: usize,
        filter: &EventFilter,
    ) -> Option<CachedPage> {
        self.cache.as_ref()?;
        self.lookup(&Self::log_key(from_position, limit, filter), LOG_ROUTE)
    }

    /// Keeps a sealed log page (exactly `limit` events).
    pub(crate) fn keep_log_page(
        &self,
        from_position: Position,
        limit: usize,
        filter: &EventFilter,
        page: CachedPage,
    ) {
        if let Some(cache) = &self.cache {
            cache.insert(Self::log_key(from_position, limit, filter), page);
        }
    }

    /// Forgets a deleted stream's pages; it is never served from the cache again.
    pub(crate) fn stream_deleted(&self, stream: &str) {
        let Some(cache) = &self.cache else { return };
        self.deleted
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(stream.to_owned());
        let stream = stream.to_owned();
        let invalidated =
            cache.invalidate_entries_if(move |key, _| key.stream() == Some(stream.as_str()));
        if let Err(error) = invalidated {
            // Correctness does not depend on it: deleted streams are never served.
            tracing::warn!(target: "cairn::http", %error, "could not drop a deleted stream's cached pages");
        }
    }
}

impl Default for EventPageCache {
    fn default() -> Self {
        Self::new(DEFAULT_EVENT_PAGE_CACHE_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of one series (`name{labels}` exactly as rendered).
    fn value_of(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    }

    #[test]
    fn a_full_cache_counts_its_evictions_and_stays_within_its_bytes() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        ::metrics::with_local_recorder(&recorder, || {
            let cache = EventPageCache::new(8 * 1024);
            for from in 0..40 {
                cache.keep_stream_page(
                    "order-1",
                    Some(from),
                    10,
                    Direction::Forward,
                    Bytes::from(vec![b'x'; 1000]),
                );
                // Read it back, so each page is popular enough to be admitted.
                let _ = cache.stream_page("order-1", Some(from), 10, Direction::Forward);
            }
            cache.record_gauges();
        });
        let text = handle.render();
        let evictions = value_of(
            &text,
            r#"cairn_cache_evictions_total{cache="event_pages",reason="size"}"#,
        );
        assert!(evictions.is_some_and(|count| count >= 20.0), "{text}");
        let held = value_of(&text, r#"cairn_cache_bytes{cache="event_pages"}"#).unwrap();
        assert!(held > 0.0 && held <= 8.0 * 1024.0, "{text}");
        let capacity = value_of(&text, r#"cairn_cache_capacity_bytes{cache="event_pages"}"#);
        assert_eq!(capacity, Some(8.0 * 1024.0));
        assert_eq!(
            value_of(
                &text,
                r#"cairn_cache_evictions_total{cache="event_pages",reason="expired"}"#
            ),
            Some(0.0),
            "registered before the first expiry"
        );
    }

    #[test]
    fn a_deleted_streams_pages_are_not_counted_as_evictions() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        ::metrics::with_local_recorder(&recorder, || {
            let cache = EventPageCache::new(1024 * 1024);
            for from in 0..5 {
                cache.keep_stream_page(
                    "order-1",
                    Some(from),
                    10,
                    Direction::Forward,
                    Bytes::from_static(b"[]"),
                );
            }
            cache.stream_deleted("order-1");
            cache.record_gauges();
        });
        let text = handle.render();
        assert_eq!(
            value_of(
                &text,
                r#"cairn_cache_evictions_total{cache="event_pages",reason="size"}"#
            ),
            Some(0.0),
            "{text}"
        );
    }
}
