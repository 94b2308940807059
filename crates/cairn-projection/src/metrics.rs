//! Every metric the read side records, declared in one place.
//!
//! Per-query and per-statement metrics are recorded on hot paths, so their keys (name
//! and labels) are built once, when a query or projection is compiled, and each record
//! looks the handle up in whatever recorder is installed at that moment: nothing is
//! allocated per call, and a recorder installed after the read side started (as the
//! server does) still receives everything.

use metrics::{Counter, Histogram, Key, Label, Level, Metadata};

/// Calls of a named query (cache hits, misses and errors alike), counter by `query`.
pub const QUERY_CALLS: &str = "cairn_query_calls_total";
/// Calls of a named query answered with an error (bad parameters, consistency
/// timeouts and read-model failures alike), counter by `query`.
pub const QUERY_ERRORS: &str = "cairn_query_errors_total";
/// Rows returned by a named query (from the cache or not), counter by `query`;
/// divided by [`QUERY_CALLS`] it is the mean result size.
pub const QUERY_ROWS: &str = "cairn_query_rows_total";
/// Query results served from the cache, counter by `query`.
pub const QUERY_CACHE_HITS: &str = "cairn_query_cache_hits_total";
/// Query results computed (not in the cache, or no longer valid), counter by `query`.
pub const QUERY_CACHE_MISSES: &str = "cairn_query_cache_misses_total";
/// Time to answer a named query (cache hits included, waits for `min_position`
/// excluded), histogram in seconds by `query`.
pub const QUERY_DURATION_SECONDS: &str = "cairn_query_duration_seconds";
/// Results the in-process cache lacked and the shared Redis tier had, counter by
/// `query`.
pub const QUERY_CACHE_REDIS_HITS: &str = "cairn_query_cache_redis_hits_total";
/// Results the shared Redis tier did not have (or could not give in time), counter by
/// `query`.
pub const QUERY_CACHE_REDIS_MISSES: &str = "cairn_query_cache_redis_misses_total";
/// Failed or timed-out calls to the shared Redis tier (each answered as a miss),
/// counter by `operation` (`get`, `set`, `decode`).
pub const QUERY_CACHE_REDIS_ERRORS: &str = "cairn_query_cache_redis_errors_total";

/// The last log position a projection reflects, gauge by `projection`.
pub const PROJECTION_POSITION: &str = "cairn_projection_position";
/// Log positions between the head and a projection's position, gauge by `projection`.
pub const PROJECTION_LAG: &str = "cairn_projection_lag";
/// Time to apply and commit one batch of events, histogram in seconds by `projection`.
pub const PROJECTION_APPLY_DURATION_SECONDS: &str = "cairn_projection_apply_duration_seconds";
/// Times a projection stopped on a failing statement, counter by `projection`.
pub const PROJECTION_FAILURES: &str = "cairn_projection_failures_total";
/// Time to run the statements of one event (its type's `on` list, inside the batch's
/// transaction, commit excluded), histogram in seconds by `projection` and
/// `event_type`.
pub const PROJECTION_STATEMENT_DURATION_SECONDS: &str =
    "cairn_projection_statement_duration_seconds";
/// Events whose statements failed, counter by `projection` and `event_type`.
pub const PROJECTION_STATEMENT_ERRORS: &str = "cairn_projection_statement_errors_total";

/// Entries a cache dropped by itself, counter by `cache` (`event_pages`,
/// `query_results`) and `reason` (`size`: to stay within its capacity; `expired`: past
/// its TTL). Invalidations (a deleted stream, a rebuilt projection) are not evictions.
pub const CACHE_EVICTIONS: &str = "cairn_cache_evictions_total";
/// Bytes a cache holds (as weighed: encoded pages, result rows), gauge by `cache`.
pub const CACHE_BYTES: &str = "cairn_cache_bytes";
/// Bytes a cache may hold, gauge by `cache`.
pub const CACHE_CAPACITY_BYTES: &str = "cairn_cache_capacity_bytes";
/// The `cache` label of the named-query result cache.
pub const QUERY_RESULTS_CACHE: &str = "query_results";

/// The `reason` label of an eviction, `None` for a removal that is not one (replaced,
/// invalidated).
pub fn eviction_reason(cause: moka::notification::RemovalCause) -> Option<&'static str> {
    use moka::notification::RemovalCause;
    match cause {
        RemovalCause::Size => Some("size"),
        RemovalCause::Expired => Some("expired"),
        RemovalCause::Explicit | RemovalCause::Replaced => None,
    }
}

/// Counts one eviction from `cache` (for the caches' eviction listeners).
pub fn record_eviction(cache: &'static str, cause: moka::notification::RemovalCause) {
    if let Some(reason) = eviction_reason(cause) {
        metrics::counter!(CACHE_EVICTIONS, "cache" => cache, "reason" => reason).increment(1);
    }
}

/// Sets a cache's size gauges. Its eviction counters are registered too (at 0 until
/// the first eviction), so that a rate over them exists before anything is evicted.
pub fn record_cache_size(cache: &'static str, bytes: u64, capacity: u64) {
    metrics::gauge!(CACHE_BYTES, "cache" => cache).set(bytes as f64);
    metrics::gauge!(CACHE_CAPACITY_BYTES, "cache" => cache).set(capacity as f64);
    for reason in ["size", "expired"] {
        metrics::counter!(CACHE_EVICTIONS, "cache" => cache, "reason" => reason).increment(0);
    }
}

/// Histogram buckets suited to each histogram above, for the exporter.
pub const QUERY_DURATION_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0,
];
pub const APPLY_DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
pub const STATEMENT_DURATION_BUCKETS: &[f64] = QUERY_DURATION_BUCKETS;

/// Each histogram with its buckets, for `PrometheusBuilder::set_buckets_for_metric`.
pub const HISTOGRAMS: &[(&str, &[f64])] = &[
    (QUERY_DURATION_SECONDS, QUERY_DURATION_BUCKETS),
    (PROJECTION_APPLY_DURATION_SECONDS, APPLY_DURATION_BUCKETS),
    (
        PROJECTION_STATEMENT_DURATION_SECONDS,
        STATEMENT_DURATION_BUCKETS,
    ),
];

/// Describes every metric above to the installed recorder (units and help texts);
/// call it once the recorder is installed.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        QUERY_CALLS,
        "Calls of a named query (cache hits, misses and errors alike), by query."
    );
    describe_counter!(
        QUERY_ERRORS,
        "Calls of a named query answered with an error (bad parameters, consistency timeouts, read-model failures), by query."
    );
    describe_counter!(
        QUERY_ROWS,
        "Rows returned by a named query, cached or not, by query."
    );
    describe_counter!(
        QUERY_CACHE_HITS,
        "Named-query results served from the cache, by query."
    );
    describe_counter!(
        QUERY_CACHE_MISSES,
        "Named-query results computed (not cached, or no longer valid), by query."
    );
    describe_counter!(
        QUERY_CACHE_REDIS_HITS,
        "Named-query results served from the shared Redis cache (missing from the in-process one), by query."
    );
    describe_counter!(
        QUERY_CACHE_REDIS_MISSES,
        "Named-query results the shared Redis cache did not have or could not give in time, by query."
    );
    describe_counter!(
        QUERY_CACHE_REDIS_ERRORS,
        "Failed or timed-out calls to the shared Redis cache, each answered as a miss, by operation (get, set, decode)."
    );
    describe_histogram!(
        QUERY_DURATION_SECONDS,
        Unit::Seconds,
        "Time to answer a named query, cache hits included and waits for min_position excluded, by query."
    );
    describe_gauge!(
        PROJECTION_POSITION,
        "The last log position a projection's read model reflects, by projection."
    );
    describe_gauge!(
        PROJECTION_LAG,
        "Log positions between the head and a projection's position, by projection."
    );
    describe_histogram!(
        PROJECTION_APPLY_DURATION_SECONDS,
        Unit::Seconds,
        "Time to apply and commit one batch of events, by projection."
    );
    describe_counter!(
        PROJECTION_FAILURES,
        "Times a projection stopped on a failing statement or a read-model storage failure, by projection."
    );
    describe_histogram!(
        PROJECTION_STATEMENT_DURATION_SECONDS,
        Unit::Seconds,
        "Time to run the statements of one event, by projection and event type."
    );
    describe_counter!(
        CACHE_EVICTIONS,
        "Entries a cache dropped by itself, by cache (event_pages, query_results) and reason (size, expired)."
    );
    describe_gauge!(
        CACHE_BYTES,
        "Bytes a cache holds (encoded pages, result rows), by cache."
    );
    describe_gauge!(CACHE_CAPACITY_BYTES, "Bytes a cache may hold, by cache.");
    describe_counter!(
        PROJECTION_STATEMENT_ERRORS,
        "Events whose statements failed, by projection and event type."
    );
}

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

fn counter(key: &Key) -> Counter {
    metrics::with_recorder(|recorder| recorder.register_counter(key, &METADATA))
}

fn histogram(key: &Key) -> Histogram {
    metrics::with_recorder(|recorder| recorder.register_histogram(key, &METADATA))
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(label, value)| Label::new(*label, (*value).to_owned()))
        .collect();
    Key::from_parts(name, labels)
}

/// The keys of one named query's metrics.
#[derive(Debug, Clone)]
pub(crate) struct QueryMetrics {
    calls: Key,
    errors: Key,
    rows: Key,
    cache_hits: Key,
    cache_misses: Key,
    duration: Key,
}

impl QueryMetrics {
    pub(crate) fn new(query: &str) -> Self {
        let labels = [("query", query)];
        Self {
            calls: key(QUERY_CALLS, &labels),
            errors: key(QUERY_ERRORS, &labels),
            rows: key(QUERY_ROWS, &labels),
            cache_hits: key(QUERY_CACHE_HITS, &labels),
            cache_misses: key(QUERY_CACHE_MISSES, &labels),
            duration: key(QUERY_DURATION_SECONDS, &labels),
        }
    }

    pub(crate) fn call(&self) {
        counter(&self.calls).increment(1);
    }

    pub(crate) fn error(&self) {
        counter(&self.errors).increment(1);
    }

    pub(crate) fn rows(&self, rows: u64) {
        counter(&self.rows).increment(rows);
    }

    pub(crate) fn cache_hit(&self) {
        counter(&self.cache_hits).increment(1);
    }

    pub(crate) fn cache_miss(&self) {
        counter(&self.cache_misses).increment(1);
    }

    pub(crate) fn duration(&self, seconds: f64) {
        histogram(&self.duration).record(seconds);
    }
}

/// The keys of one projection's metrics for one event type.
#[derive(Debug, Clone)]
pub(crate) struct StatementMetrics {
    duration: Key,
    errors: Key,
}

impl StatementMetrics {
    pub(crate) fn new(projection: &str, event_type: &str) -> Self {
        let labels = [("projection", projection), ("event_type", event_type)];
        Self {
            duration: key(PROJECTION_STATEMENT_DURATION_SECONDS, &labels),
            errors: key(PROJECTION_STATEMENT_ERRORS, &labels),
        }
    }

    pub(crate) fn duration(&self, seconds: f64) {
        histogram(&self.duration).record(seconds);
    }

    pub(crate) fn error(&self) {
        counter(&self.errors).increment(1);
    }
}

/// A result served by the shared Redis tier.
pub(crate) fn redis_hit(query: &str) {
    metrics::counter!(QUERY_CACHE_REDIS_HITS, "query" => query.to_owned()).increment(1);
}

/// A result the shared Redis tier did not have.
pub(crate) fn redis_miss(query: &str) {
    metrics::counter!(QUERY_CACHE_REDIS_MISSES, "query" => query.to_owned()).increment(1);
}

/// A failed call to the shared Redis tier.
pub(crate) fn redis_error(operation: &'static str) {
    metrics::counter!(QUERY_CACHE_REDIS_ERRORS, "operation" => operation).increment(1);
}
