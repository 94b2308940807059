//! Every metric the read side records, declared in one place.

/// Query results served from the cache, counter by `query`.
pub const QUERY_CACHE_HITS: &str = "cairn_query_cache_hits_total";
/// Query results computed (not in the cache, or no longer valid), counter by `query`.
pub const QUERY_CACHE_MISSES: &str = "cairn_query_cache_misses_total";
/// Time to answer a named query (cache hits included, waits for `min_position`
/// excluded), histogram in seconds by `query`.
pub const QUERY_DURATION_SECONDS: &str = "cairn_query_duration_seconds";

/// The last log position a projection reflects, gauge by `projection`.
pub const PROJECTION_POSITION: &str = "cairn_projection_position";
/// Log positions between the head and a projection's position, gauge by `projection`.
pub const PROJECTION_LAG: &str = "cairn_projection_lag";
/// Time to apply and commit one batch of events, histogram in seconds by `projection`.
pub const PROJECTION_APPLY_DURATION_SECONDS: &str = "cairn_projection_apply_duration_seconds";
/// Times a projection stopped on a failing statement, counter by `projection`.
pub const PROJECTION_FAILURES: &str = "cairn_projection_failures_total";

/// Histogram buckets suited to each histogram above, for the exporter.
pub const QUERY_DURATION_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0,
];
pub const APPLY_DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Each histogram with its buckets, for `PrometheusBuilder::set_buckets_for_metric`.
pub const HISTOGRAMS: &[(&str, &[f64])] = &[
    (QUERY_DURATION_SECONDS, QUERY_DURATION_BUCKETS),
    (PROJECTION_APPLY_DURATION_SECONDS, APPLY_DURATION_BUCKETS),
];
