//! One screen of `cairn top`, built from two scrapes of `/metrics`: rates and
//! percentiles over the interval between them, gauges as of the second.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::prometheus::{Interval, Metrics, Sample, by_label, histogram_quantile};

/// The frame for `interval`, headed by `title` (the server's URL and the refresh).
pub fn render(title: &str, interval: &Interval<'_>, now_unix_seconds: f64) -> String {
    let mut out = String::new();
    let now = interval.after;
    let uptime = now
        .sum("cairn_process_start_time_seconds")
        .map(|start| format!("  up {}", duration_text(now_unix_seconds - start)))
        .unwrap_or_default();
    line(&mut out, format!("cairn top  {title}{uptime}"));
    line(&mut out, String::new());
    summary(&mut out, interval);
    routes(&mut out, interval);
    projections(&mut out, now);
    groups(&mut out, interval);
    caches(&mut out, interval);
    pools(&mut out, interval);
    replicas(&mut out, now);
    out
}

fn line(out: &mut String, text: String) {
    out.push_str(text.trim_end());
    out.push('\n');
}

fn summary(out: &mut String, interval: &Interval<'_>) {
    let now = interval.after;
    let requests = interval.rate("cairn_http_requests_total").unwrap_or(0.0);
    let status_rate = |class: char| {
        interval
            .rate_where("cairn_http_requests_total", |sample| {
                sample
                    .label("status")
                    .is_some_and(|status| status.starts_with(class))
            })
            .unwrap_or(0.0)
    };
    let (server_errors, client_errors) = (status_rate('5'), status_rate('4'));
    let error_ratio = if requests > 0.0 {
        percent(server_errors / requests)
    } else {
        "-".to_owned()
    };
    line(
        out,
        format!(
            "HTTP       {} req/s   errors {error_ratio} (5xx {}/s, 4xx {}/s)",
            number(requests),
            number(server_errors),
            number(client_errors),
        ),
    );

    let appended = interval.rate("cairn_appended_events_total").unwrap_or(0.0);
    let batch = mean_over(interval, "cairn_group_commit_batch_size");
    let commit_p99 = quantile_over(interval, "cairn_commit_duration_seconds", 0.99);
    line(
        out,
        format!(
            "Appends    {} events/s   {} requests/commit   commit p99 {}",
            number(appended),
            batch.map_or_else(|| "-".to_owned(), number),
            commit_p99.map_or_else(|| "-".to_owned(), seconds_text),
        ),
    );

    let head = now
        .sum("cairn_head_position")
        .map_or_else(|| "-".to_owned(), |head| format!("{head:.0}"));
    let subscriptions = now.sum("cairn_subscriptions_active").unwrap_or(0.0);
    let pushed = interval
        .rate("cairn_subscription_events_total")
        .unwrap_or(0.0);
    line(
        out,
        format!(
            "Log        head {head}   subscriptions {subscriptions:.0} ({} events/s pushed)",
            number(pushed)
        ),
    );

    let memory = now
        .sum("cairn_process_resident_memory_bytes")
        .map_or_else(|| "-".to_owned(), bytes_text);
    let cpu = interval
        .rate("cairn_process_cpu_seconds_total")
        .map_or_else(|| "-".to_owned(), percent);
    let threads = now
        .sum("cairn_process_threads")
        .map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
    let fds = match (
        now.sum("cairn_process_open_fds"),
        now.sum("cairn_process_max_fds"),
    ) {
        (Some(open), Some(max)) => format!("{open:.0}/{max:.0}"),
        (Some(open), None) => format!("{open:.0}"),
        _ => "-".to_owned(),
    };
    line(
        out,
        format!("Process    memory {memory}   CPU {cpu}   threads {threads}   files {fds}"),
    );

    let sizes = now.sum_by("cairn_database_size_bytes", "database");
    if !sizes.is_empty() {
        let wal = now.sum_by("cairn_database_wal_bytes", "database");
        let parts: Vec<String> = sizes
            .iter()
            .map(|(database, size)| match wal.get(database) {
                Some(wal) => format!(
                    "{database} {} (WAL {})",
                    bytes_text(*size),
                    bytes_text(*wal)
                ),
                None => format!("{database} {}", bytes_text(*size)),
            })
            .collect();
        line(out, format!("Storage    {}", parts.join("   ")));
    }
}

fn routes(out: &mut String, interval: &Interval<'_>) {
    let route_key = |sample: &Sample| {
        format!(
            "{} {}",
            sample.label("method").unwrap_or("-"),
            sample.label("route").unwrap_or("-")
        )
    };
    let rates = interval.rate_by("cairn_http_requests_total", route_key);
    let latencies = interval.bucket_increases("cairn_http_request_duration_seconds", route_key);
    let mut busy: Vec<(&String, f64)> = rates
        .iter()
        .filter(|(_, rate)| **rate > 0.0)
        .map(|(route, rate)| (route, *rate))
        .collect();
    busy.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    line(out, String::new());
    line(
        out,
        format!("{:<48} {:>10} {:>9} {:>9}", "ROUTE", "REQ/S", "P50", "P99"),
    );
    if busy.is_empty() {
        line(out, "(no requests in the last interval)".to_owned());
    }
    for (route, rate) in busy {
        let quantile = |q: f64| {
            latencies
                .get(route)
                .and_then(|buckets| histogram_quantile(q, buckets))
                .map_or_else(|| "-".to_owned(), seconds_text)
        };
        line(
            out,
            format!(
                "{:<48} {:>10} {:>9} {:>9}",
                route,
                number(rate),
                quantile(0.5),
                quantile(0.99)
            ),
        );
    }
}

fn projections(out: &mut String, now: &Metrics) {
    let positions = now.sum_by("cairn_projection_position", "projection");
    if positions.is_empty() {
        return;
    }
    let lags = now.sum_by("cairn_projection_lag", "projection");
    let failed = now.sum_by("cairn_projection_failed", "projection");
    line(out, String::new());
    line(
        out,
        format!(
            "{:<32} {:>12} {:>10}  STATE",
            "PROJECTION", "POSITION", "LAG"
        ),
    );
    for (name, position) in &positions {
        let lag = lags.get(name).copied().unwrap_or(0.0);
        let state = if failed.get(name).copied().unwrap_or(0.0) > 0.0 {
            "failed"
        } else if lag > 0.0 {
            "catching up"
        } else {
            "running"
        };
        line(
            out,
            format!("{name:<32} {position:>12.0} {lag:>10.0}  {state}"),
        );
    }
}

fn groups(out: &mut String, interval: &Interval<'_>) {
    let lags = interval.after.sum_by("cairn_group_lag", "group");
    if lags.is_empty() {
        return;
    }
    let delivered = interval.rate_by("cairn_group_deliveries_total", by_label("group"));
    let redelivered = interval.rate_by("cairn_group_redeliveries_total", by_label("group"));
    line(out, String::new());
    line(
        out,
        format!(
            "{:<32} {:>12} {:>12} {:>12}",
            "CONSUMER GROUP", "LAG", "DELIVERED/S", "REDELIVERED/S"
        ),
    );
    for (group, lag) in &lags {
        line(
            out,
            format!(
                "{group:<32} {lag:>12.0} {:>12} {:>12}",
                number(delivered.get(group).copied().unwrap_or(0.0)),
                number(redelivered.get(group).copied().unwrap_or(0.0)),
            ),
        );
    }
}

fn caches(out: &mut String, interval: &Interval<'_>) {
    let now = interval.after;
    // Each cache's hits and misses (their metrics predate the shared `cache` label).
    let lookups = [
        (
            "event_pages",
            "cairn_event_page_cache_hits_total",
            "cairn_event_page_cache_misses_total",
        ),
        (
            "query_results",
            "cairn_query_cache_hits_total",
            "cairn_query_cache_misses_total",
        ),
    ];
    let sizes = now.sum_by("cairn_cache_bytes", "cache");
    let capacities = now.sum_by("cairn_cache_capacity_bytes", "cache");
    let evictions = interval.rate_by("cairn_cache_evictions_total", by_label("cache"));
    let mut names: BTreeSet<&str> = sizes.keys().map(String::as_str).collect();
    for (name, hits, _) in lookups {
        if now.has(hits) {
            names.insert(name);
        }
    }
    if names.is_empty() {
        return;
    }
    line(out, String::new());
    line(
        out,
        format!(
            "{:<16} {:>10} {:>10} {:>11} {:>11} {:>12}",
            "CACHE", "HIT RATIO", "LOOKUPS/S", "BYTES", "CAPACITY", "EVICTIONS/S"
        ),
    );
    for name in names {
        let (hits, misses) = lookups
            .iter()
            .find(|(cache, _, _)| *cache == name)
            .map(|(_, hits, misses)| {
                (
                    interval.rate(hits).unwrap_or(0.0),
                    interval.rate(misses).unwrap_or(0.0),
                )
            })
            .unwrap_or((0.0, 0.0));
        let ratio = if hits + misses > 0.0 {
            percent(hits / (hits + misses))
        } else {
            "-".to_owned()
        };
        let size = |sizes: &BTreeMap<String, f64>| {
            sizes
                .get(name)
                .map_or_else(|| "-".to_owned(), |bytes| bytes_text(*bytes))
        };
        line(
            out,
            format!(
                "{name:<16} {ratio:>10} {:>10} {:>11} {:>11} {:>12}",
                number(hits + misses),
                size(&sizes),
                size(&capacities),
                number(evictions.get(name).copied().unwrap_or(0.0)),
            ),
        );
    }
}

fn pools(out: &mut String, interval: &Interval<'_>) {
    let now = interval.after;
    let mut in_use = BTreeMap::new();
    let mut idle = BTreeMap::new();
    for sample in now.series("cairn_pool_connections") {
        let pool = sample.label("pool").unwrap_or_default().to_owned();
        match sample.label("state") {
            Some("in_use") => *in_use.entry(pool).or_insert(0.0) += sample.value,
            Some("idle") => *idle.entry(pool).or_insert(0.0) += sample.value,
            _ => {}
        }
    }
    let waiting = now.sum_by("cairn_pool_waiting", "pool");
    let waits = interval.bucket_increases("cairn_pool_wait_seconds", by_label("pool"));
    let gets = interval.rate_by("cairn_pool_wait_seconds_count", by_label("pool"));
    let names: BTreeSet<&String> = in_use.keys().chain(waits.keys()).collect();
    if names.is_empty() {
        return;
    }
    line(out, String::new());
    line(
        out,
        format!(
            "{:<32} {:>7} {:>6} {:>8} {:>9} {:>10}",
            "POOL", "IN USE", "IDLE", "WAITING", "GETS/S", "WAIT P99"
        ),
    );
    let count = |map: &BTreeMap<String, f64>, pool: &str| {
        map.get(pool)
            .map_or_else(|| "-".to_owned(), |value| format!("{value:.0}"))
    };
    for pool in names {
        let wait_p99 = waits
            .get(pool)
            .and_then(|buckets| histogram_quantile(0.99, buckets))
            .map_or_else(|| "-".to_owned(), seconds_text);
        line(
            out,
            format!(
                "{pool:<32} {:>7} {:>6} {:>8} {:>9} {wait_p99:>10}",
                count(&in_use, pool),
                count(&idle, pool),
                count(&waiting, pool),
                number(gets.get(pool).copied().unwrap_or(0.0)),
            ),
        );
    }
}

fn replicas(out: &mut String, now: &Metrics) {
    let lags = now.sum_by("cairn_replica_lag_positions", "replica");
    let up = now.sum_by("cairn_replica_up", "replica");
    if lags.is_empty() && up.is_empty() {
        return;
    }
    line(out, String::new());
    line(out, format!("{:<40} {:>12}  STATE", "REPLICA", "LAG"));
    let names: BTreeSet<&String> = lags.keys().chain(up.keys()).collect();
    for replica in names {
        let lag = lags
            .get(replica)
            .map_or_else(|| "-".to_owned(), |lag| format!("{lag:.0}"));
        let state = if up.get(replica).copied().unwrap_or(0.0) > 0.0 {
            "in rotation"
        } else {
            "down"
        };
        line(out, format!("{replica:<40} {lag:>12}  {state}"));
    }
}

/// The mean observation of a histogram over the interval.
fn mean_over(interval: &Interval<'_>, name: &str) -> Option<f64> {
    let count = interval.increase_where(&format!("{name}_count"), |_| true)?;
    let sum = interval.increase_where(&format!("{name}_sum"), |_| true)?;
    (count > 0.0).then(|| sum / count)
}

/// A quantile of a histogram over the interval, every series together.
fn quantile_over(interval: &Interval<'_>, name: &str, q: f64) -> Option<f64> {
    let buckets = interval.bucket_increases(name, |_| String::new());
    histogram_quantile(q, buckets.get("")?)
}

/// A rate or count: no decimals from 100 on.
fn number(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn percent(ratio: f64) -> String {
    format!("{:.1}%", ratio * 100.0)
}

fn seconds_text(seconds: f64) -> String {
    if seconds >= 1.0 {
        format!("{seconds:.2}s")
    } else if seconds >= 0.001 {
        format!("{:.1}ms", seconds * 1e3)
    } else {
        format!("{:.0}µs", seconds * 1e6)
    }
}

fn bytes_text(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn duration_text(seconds: f64) -> String {
    let total = seconds.max(0.0) as u64;
    let (hours, minutes, seconds) = (total / 3600, total / 60 % 60, total % 60);
    let mut text = String::new();
    if hours > 0 {
        let _ = write!(text, "{hours}h");
    }
    if hours > 0 || minutes > 0 {
        let _ = write!(text, "{minutes:02}m");
    }
    let _ = write!(text, "{seconds:02}s");
    text
}

#[cfg(test)]
mod tests {
    use super::super::prometheus::parse;
    use super::*;

    const BEFORE: &str = r#"
cairn_http_requests_total{method="POST",route="/v1/streams/{stream}/events",status="201"} 100
cairn_http_requests_total{method="GET",route="/v1/events",status="200"} 50
cairn_http_requests_total{method="GET",route="/v1/events",status="503"} 0
cairn_http_request_duration_seconds_bucket{method="POST",route="/v1/streams/{stream}/events",le="0.001"} 50
cairn_http_request_duration_seconds_bucket{method="POST",route="/v1/streams/{stream}/events",le="0.01"} 100
cairn_http_request_duration_seconds_bucket{method="POST",route="/v1/streams/{stream}/events",le="+Inf"} 100
cairn_http_request_duration_seconds_count{method="POST",route="/v1/streams/{stream}/events"} 100
cairn_appended_events_total 300
cairn_group_commit_batch_size_sum 100
cairn_group_commit_batch_size_count 50
cairn_head_position 300
cairn_process_cpu_seconds_total 10
cairn_process_start_time_seconds 1000
cairn_event_page_cache_hits_total{route="/v1/events"} 10
cairn_event_page_cache_misses_total{route="/v1/events"} 10
cairn_cache_evictions_total{cache="event_pages",reason="size"} 0
cairn_pool_wait_seconds_bucket{pool="events",le="0.001"} 10
cairn_pool_wait_seconds_bucket{pool="events",le="+Inf"} 10
cairn_pool_wait_seconds_count{pool="events"} 10
"#;

    const AFTER: &str = r#"
cairn_http_requests_total{method="POST",route="/v1/streams/{stream}/events",status="201"} 120
cairn_http_requests_total{method="GET",route="/v1/events",status="200"} 50
cairn_http_requests_total{method="GET",route="/v1/events",status="503"} 5
cairn_http_request_duration_seconds_bucket{method="POST",route="/v1/streams/{stream}/events",le="0.001"} 60
cairn_http_request_duration_seconds_bucket{method="POST",route="/v1/streams/{stream}/events",le="0.01"} 120
cairn_http_request_duration_seconds_bucket{method="POST",route="/v1/streams/{stream}/events",le="+Inf"} 120
cairn_http_request_duration_seconds_count{method="POST",route="/v1/streams/{stream}/events"} 120
cairn_appended_events_total 400
cairn_group_commit_batch_size_sum 140
cairn_group_commit_batch_size_count 60
cairn_head_position 400
cairn_subscriptions_active 2
cairn_process_cpu_seconds_total 10.5
cairn_process_start_time_seconds 1000
cairn_process_resident_memory_bytes 52428800
cairn_process_open_fds 40
cairn_process_max_fds 1024
cairn_database_size_bytes{database="events"} 2097152
cairn_database_wal_bytes{database="events"} 1048576
cairn_projection_position{projection="orders"} 390
cairn_projection_lag{projection="orders"} 10
cairn_projection_failed{projection="orders"} 0
cairn_group_lag{group="billing"} 7
cairn_event_page_cache_hits_total{route="/v1/events"} 40
cairn_event_page_cache_misses_total{route="/v1/events"} 20
cairn_cache_bytes{cache="event_pages"} 1024
cairn_cache_capacity_bytes{cache="event_pages"} 67108864
cairn_cache_evictions_total{cache="event_pages",reason="size"} 3
cairn_pool_connections{pool="events",state="in_use"} 1
cairn_pool_connections{pool="events",state="idle"} 3
cairn_pool_waiting{pool="events"} 0
cairn_pool_wait_seconds_bucket{pool="events",le="0.001"} 19
cairn_pool_wait_seconds_bucket{pool="events",le="+Inf"} 20
cairn_pool_wait_seconds_count{pool="events"} 20
"#;

    #[test]
    fn a_frame_shows_rates_percentiles_and_gauges_over_the_interval() {
        let before = parse(BEFORE).unwrap();
        let after = parse(AFTER).unwrap();
        let interval = Interval {
            before: &before,
            after: &after,
            seconds: 2.0,
        };
        let frame = render("http://cairn:7171  every 2s", &interval, 4723.0);
        let has = |text: &str| assert!(frame.contains(text), "{text:?} not in\n{frame}");
        has("cairn top  http://cairn:7171  every 2s  up 1h02m03s");
        // 25 requests in 2 s, 5 of them 503.
        has("HTTP       12.5 req/s   errors 20.0% (5xx 2.5/s, 4xx 0.0/s)");
        // 100 events, 10 commits of 40 requests.
        has("Appends    50.0 events/s   4.0 requests/commit");
        has("Log        head 400   subscriptions 2");
        has("memory 50.0 MiB   CPU 25.0%");
        has("files 40/1024");
        has("Storage    events 2.0 MiB (WAL 1.0 MiB)");
        // The POST route: 20 requests, 10 under 1 ms, 10 in (1 ms, 10 ms].
        let post = frame
            .lines()
            .find(|line| line.starts_with("POST /v1/streams/{stream}/events"))
            .unwrap();
        assert!(post.contains(" 10.0 "), "{post}");
        assert!(post.contains("1.0ms") && post.contains("9.8ms"), "{post}");
        // The GET route answered only 503s, which count as requests.
        assert!(frame.contains("GET /v1/events"), "{frame}");
        has("orders");
        has("catching up");
        has("billing");
        // 30 hits, 10 misses: 75 %, 20 lookups/s; 3 evictions in 2 s.
        let cache = frame
            .lines()
            .find(|line| line.starts_with("event_pages"))
            .unwrap();
        assert!(cache.contains("75.0%") && cache.contains("20.0"), "{cache}");
        assert!(
            cache.contains("1.0 KiB") && cache.contains("64.0 MiB"),
            "{cache}"
        );
        assert!(cache.trim_end().ends_with("1.5"), "{cache}");
        let pool = frame
            .lines()
            .find(|line| line.starts_with("events"))
            .unwrap();
        assert!(pool.contains(" 5.0 "), "10 gets in 2 s: {pool}");
        assert!(!frame.contains("REPLICA"), "no replicas, no section");
    }

    #[test]
    fn an_idle_server_shows_no_rates_rather_than_nonsense() {
        let scrape = parse("cairn_head_position 7\n").unwrap();
        let interval = Interval {
            before: &scrape,
            after: &scrape,
            seconds: 1.0,
        };
        let frame = render("x", &interval, 0.0);
        assert!(frame.contains("HTTP       0.0 req/s   errors -"), "{frame}");
        assert!(frame.contains("head 7"), "{frame}");
        assert!(
            frame.contains("(no requests in the last interval)"),
            "{frame}"
        );
        assert!(frame.contains("memory -"), "{frame}");
    }

    #[test]
    fn units_read_naturally() {
        assert_eq!(seconds_text(0.000_025), "25µs");
        assert_eq!(seconds_text(0.0123), "12.3ms");
        assert_eq!(seconds_text(2.5), "2.50s");
        assert_eq!(bytes_text(512.0), "512 B");
        assert_eq!(bytes_text(1536.0), "1.5 KiB");
        assert_eq!(duration_text(59.0), "59s");
        assert_eq!(duration_text(3723.0), "1h02m03s");
        assert_eq!(number(12.345), "12.3");
        assert_eq!(number(1234.5), "1234");
    }
}
