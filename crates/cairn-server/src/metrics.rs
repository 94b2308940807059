//! Every metric this crate records, declared in one place, and the process-wide
//! Prometheus recorder that `/metrics` renders.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{LazyLock, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Counter `{method, route, status}`: HTTP requests answered.
pub const HTTP_REQUESTS_TOTAL: &str = "cairn_http_requests_total";
/// Histogram `{method, route}`: seconds from request to response head.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "cairn_http_request_duration_seconds";
/// Gauge: SSE subscriptions (`/v1/subscribe`) being served.
pub const SUBSCRIPTIONS_ACTIVE: &str = "cairn_subscriptions_active";
/// Counter: events pushed to SSE subscribers.
pub const SUBSCRIPTION_EVENTS_TOTAL: &str = "cairn_subscription_events_total";
/// Counter `{reason}`: SSE subscribers the server dropped (`slow_consumer`: the client
/// did not read fast enough).
pub const SUBSCRIPTIONS_DROPPED_TOTAL: &str = "cairn_subscriptions_dropped_total";
/// Counter `{route}`: sealed event pages served from the cache.
pub const EVENT_PAGE_CACHE_HITS_TOTAL: &str = "cairn_event_page_cache_hits_total";
/// Counter `{route}`: cacheable event pages read from the store.
pub const EVENT_PAGE_CACHE_MISSES_TOTAL: &str = "cairn_event_page_cache_misses_total";
/// The `cache` label of the event-page cache in the caches' shared metrics
/// (`cairn_projection::metrics::CACHE_EVICTIONS`, `CACHE_BYTES`, `CACHE_CAPACITY_BYTES`).
pub const EVENT_PAGES_CACHE: &str = "event_pages";

// The process's own figures, read from `/proc/self` as `/metrics` renders
// (`crate::process`).
/// Gauge: resident memory, in bytes.
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "cairn_process_resident_memory_bytes";
/// Gauge: virtual memory, in bytes.
pub const PROCESS_VIRTUAL_MEMORY_BYTES: &str = "cairn_process_virtual_memory_bytes";
/// Counter: CPU time used (user and system), in seconds.
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "cairn_process_cpu_seconds_total";
/// Gauge: threads.
pub const PROCESS_THREADS: &str = "cairn_process_threads";
/// Gauge: open file descriptors.
pub const PROCESS_OPEN_FDS: &str = "cairn_process_open_fds";
/// Gauge: the soft limit of open file descriptors.
pub const PROCESS_MAX_FDS: &str = "cairn_process_max_fds";
/// Gauge: when the process started, in seconds since the Unix epoch.
pub const PROCESS_START_TIME_SECONDS: &str = "cairn_process_start_time_seconds";
/// Gauge: the async runtime's worker threads, which serve the requests (`cairn serve
/// --worker-threads`).
pub const RUNTIME_WORKER_THREADS: &str = "cairn_runtime_worker_threads";
/// Counter: log lines dropped because stderr was not read fast enough (recorded by the
/// `cairn` binary's log writer).
pub const LOG_LINES_DROPPED_TOTAL: &str = "cairn_log_lines_dropped_total";

// The store's histograms (`cairn_store::metrics`) get their buckets here, where the
// recorder is built.
use cairn_store::metrics::{
    BATCH_SIZE_BUCKETS, COMMIT_DURATION_BUCKETS, COMMIT_DURATION_SECONDS, COMMIT_PHASE_SECONDS,
    GROUP_COMMIT_BATCH_SIZE, POOL_WAIT_BUCKETS, POOL_WAIT_SECONDS,
};

/// The `route` label of a request that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// How often histogram samples are folded in when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder for this process (once; later calls return the same
/// handle). If another recorder was installed first, metrics go there and `/metrics`
/// renders an empty document.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        if let Err(error) = metrics::set_global_recorder(recorder) {
            tracing::warn!(target: "cairn::http", %error, "a metrics recorder was already installed; /metrics will be empty");
        } else {
            describe();
        }
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("cairn-metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(target: "cairn::http", %error, "could not start the metrics upkeep thread");
        }
        handle
    })
}

/// Every histogram renders as a Prometheus histogram (not a summary): latency buckets
/// by default, and their own buckets for batch sizes, commit latencies and the read
/// side's query and apply durations.
fn builder() -> PrometheusBuilder {
    let with_buckets = || -> Result<PrometheusBuilder, BuildError> {
        let mut builder = PrometheusBuilder::new();
        for (name, buckets) in cairn_projection::metrics::HISTOGRAMS {
            builder = builder.set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets)?;
        }
        builder
            .set_buckets(LATENCY_BUCKETS)?
            .set_buckets_for_metric(
                Matcher::Full(HTTP_REQUEST_DURATION_SECONDS.to_owned()),
                LATENCY_BUCKETS,
            )?
            .set_buckets_for_metric(
                Matcher::Full(COMMIT_DURATION_SECONDS.to_owned()),
                COMMIT_DURATION_BUCKETS,
            )?
            .set_buckets_for_metric(
                Matcher::Full(COMMIT_PHASE_SECONDS.to_owned()),
                COMMIT_DURATION_BUCKETS,
            )?
            .set_buckets_for_metric(
                Matcher::Full(GROUP_COMMIT_BATCH_SIZE.to_owned()),
                BATCH_SIZE_BUCKETS,
            )?
            .set_buckets_for_metric(
                Matcher::Full(POOL_WAIT_SECONDS.to_owned()),
                POOL_WAIT_BUCKETS,
            )
    };
    // Only empty bucket lists are refused, and these are constants.
    with_buckets().unwrap_or_else(|error| {
        tracing::warn!(target: "cairn::http", %error, "histogram buckets refused");
        PrometheusBuilder::new()
    })
}

fn describe() {
    metrics::describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP requests answered, by method, route template and status."
    );
    metrics::describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time from request to response head, by method and route template."
    );
    metrics::describe_gauge!(
        SUBSCRIPTIONS_ACTIVE,
        "Server-Sent Events subscriptions being served."
    );
    metrics::describe_counter!(
        SUBSCRIPTION_EVENTS_TOTAL,
        "Events pushed to Server-Sent Events subscribers."
    );
    metrics::describe_counter!(
        SUBSCRIPTIONS_DROPPED_TOTAL,
        "Subscribers dropped by the server, by reason (slow_consumer: the client did not read fast enough)."
    );
    metrics::describe_gauge!(
        cairn_store::metrics::GROUP_LAG,
        "Log positions between a consumer group's checkpoint and the head, by group."
    );
    metrics::describe_counter!(
        cairn_store::metrics::GROUP_DELIVERIES,
        "Events delivered by a consumer group (first deliveries and redeliveries), by group."
    );
    metrics::describe_counter!(
        cairn_store::metrics::GROUP_REDELIVERIES,
        "Events delivered again after an ack timeout or a nack, by group."
    );
    metrics::describe_counter!(
        cairn_store::metrics::GROUP_PARKED,
        "Events parked after their last delivery, by group."
    );
    metrics::describe_counter!(
        EVENT_PAGE_CACHE_HITS_TOTAL,
        "Sealed pages of events served from the cache, by route."
    );
    metrics::describe_counter!(
        EVENT_PAGE_CACHE_MISSES_TOTAL,
        "Pages of events read from the store while the page cache is on, by route."
    );
    metrics::describe_counter!(
        LOG_LINES_DROPPED_TOTAL,
        "Log lines dropped because stderr was not read fast enough and the log buffer was full."
    );
    describe_storage();
    describe_read_side();
}

/// The store's pool and database-size metrics.
fn describe_storage() {
    use cairn_store::metrics as store;
    metrics::describe_gauge!(
        store::POOL_CONNECTIONS,
        "Pooled database connections, by pool and state (in_use, idle)."
    );
    metrics::describe_gauge!(
        store::POOL_WAITING,
        "Callers waiting for a pooled database connection, by pool."
    );
    metrics::describe_histogram!(
        store::POOL_WAIT_SECONDS,
        metrics::Unit::Seconds,
        "Time from asking a pool for a connection to holding one, by pool."
    );
    metrics::describe_gauge!(
        store::DATABASE_SIZE_BYTES,
        metrics::Unit::Bytes,
        "Bytes a database takes on disk (SQLite: file and write-ahead log), by database."
    );
    metrics::describe_gauge!(
        store::DATABASE_WAL_BYTES,
        metrics::Unit::Bytes,
        "Bytes of a SQLite database's write-ahead log, by database."
    );
}

/// The read side describes its own metrics; the server adds its failed-projection
/// gauge.
fn describe_read_side() {
    cairn_projection::metrics::describe();
    metrics::describe_gauge!(
        PROJECTION_FAILED,
        "1 while a projection is failed (stopped at a failing event), else 0, by projection."
    );
}

/// Gauge `{projection}`: 1 while the projection is failed, else 0.
pub const PROJECTION_FAILED: &str = "cairn_projection_failed";

/// Sets the read side's gauges from the projections' statuses: lag moves with the head
/// even when a projection does not (a failed one, say).
pub fn record_projections(statuses: &[cairn_projection::ProjectionStatus]) {
    use cairn_projection::metrics as read_side;
    for status in statuses {
        let labels = [("projection", status.name.clone())];
        metrics::gauge!(read_side::PROJECTION_POSITION, &labels).set(status.position as f64);
        metrics::gauge!(read_side::PROJECTION_LAG, &labels).set(status.lag as f64);
        let failed = status.state == cairn_projection::ProjectionState::Failed;
        metrics::gauge!(PROJECTION_FAILED, &labels).set(if failed { 1.0 } else { 0.0 });
    }
}

/// The prometheus text of every metric recorded so far, and the process's own figures
/// as of now (blocking: it reads `/proc`).
pub fn render() -> String {
    let mut text = install().render();
    if !text.is_empty() && !text.ends_with("\n\n") {
        text.push('\n');
    }
    crate::process::ProcessSample::read().render(&mut text);
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let name = RUNTIME_WORKER_THREADS;
        // Writing to a String cannot fail.
        let _ = write!(
            text,
            "# HELP {name} Worker threads of the async runtime, which serve the requests.\n\
             # TYPE {name} gauge\n{name} {}\n\n",
            runtime.metrics().num_workers()
        );
    }
    text
}

/// The request metrics' handles, by method, route template and status code.
type RequestMetrics = HashMap<(&'static str, Cow<'static, str>, u16), (Counter, Histogram)>;

/// Handles registered by the first request of each method, route and status. The
/// `counter!` and `histogram!` macros build a labelled metric's key and look it up in
/// the recorder's registry on every call, a cost every request paid; the label sets are
/// few (routes are templates), so requests keep the handles instead. They belong to the
/// recorder in place at registration: in a server, the process's ([`install`]).
static REQUEST_METRICS: LazyLock<RwLock<RequestMetrics>> = LazyLock::new(Default::default);

/// Records one answered request. `route` is a route template, never a raw path.
pub fn record_request(
    method: &http::Method,
    route: Cow<'static, str>,
    status: http::StatusCode,
    elapsed: Duration,
) {
    let method = method_label(method);
    let key = (method, route, status.as_u16());
    let seconds = elapsed.as_secs_f64();
    let known = REQUEST_METRICS
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some((requests, duration)) = known.get(&key) {
        requests.increment(1);
        duration.record(seconds);
        return;
    }
    drop(known);
    let (method, route, code) = key;
    let requests = metrics::counter!(
        HTTP_REQUESTS_TOTAL,
        "method" => method,
        "route" => route.clone(),
        "status" => status_label(status),
    );
    let duration = metrics::histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        "method" => method,
        "route" => route.clone(),
    );
    requests.increment(1);
    duration.record(seconds);
    REQUEST_METRICS
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert((method, route, code), (requests, duration));
}

fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::PATCH => "PATCH",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

fn status_label(status: http::StatusCode) -> Cow<'static, str> {
    Cow::Borrowed(match status.as_u16() {
        200 => "200",
        201 => "201",
        204 => "204",
        400 => "400",
        404 => "404",
        405 => "405",
        409 => "409",
        410 => "410",
        413 => "413",
        422 => "422",
        500 => "500",
        503 => "503",
        504 => "504",
        other => return Cow::Owned(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A series' value as `/metrics` renders it.
    fn value_of(rendered: &str, series: &str) -> Option<f64> {
        rendered
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn requests_count_once_each_also_through_the_kept_handles() {
        let handle = install();
        let route = || Cow::Owned("/test/kept-handles".to_owned());
        for _ in 0..3 {
            record_request(
                &http::Method::POST,
                route(),
                http::StatusCode::CREATED,
                Duration::from_millis(2),
            );
        }
        record_request(
            &http::Method::POST,
            route(),
            http::StatusCode::CONFLICT,
            Duration::from_millis(1),
        );
        let rendered = handle.render();
        let labels = r#"{method="POST",route="/test/kept-handles""#;
        let series = |name: &str, rest: &str| format!("{name}{labels}{rest}");
        assert_eq!(
            value_of(&rendered, &series(HTTP_REQUESTS_TOTAL, r#",status="201"}"#)),
            Some(3.0),
            "{rendered}"
        );
        assert_eq!(
            value_of(&rendered, &series(HTTP_REQUESTS_TOTAL, r#",status="409"}"#)),
            Some(1.0),
            "{rendered}"
        );
        let count = format!("{HTTP_REQUEST_DURATION_SECONDS}_count");
        assert_eq!(
            value_of(&rendered, &series(&count, "}")),
            Some(4.0),
            "{rendered}"
        );
    }
}
