//! `cairn bench query` and `cairn bench e2e --query`: the read side under load.
//!
//! Both use the bench's own projection and query ([`READ_SIDE_TOML`]): every
//! `BenchEvent` upserts one row keyed by the counter in its data, and `bench_item`
//! reads one row by key. The counter of an event is `tag << 32 | n`, with a random `tag`
//! per run, so runs against the same server never read each other's rows.
//!
//! - `query` pre-appends `--events` events spread over `--keys` keys, measures how fast
//!   the projection reflects them (from the first append until the query answers with
//!   `min_position` at the last one), then `--clients` ask for random keys in a closed
//!   loop; `--cached` asks for a handful of keys, which the query cache serves (the
//!   embedded server runs with the cache off otherwise, so plain `query` measures the
//!   database path).
//! - `e2e --query` appends at `--rate` (open loop, as `e2e`) and, for each event, asks
//!   the query for its key with `min_position` at the event's position: the latency is
//!   from the append being sent to the event being visible in the query's answer.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_projection::{ProjectionConfig, QueryConfig};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::e2e::Schedule;
use super::{
    Access, BenchResult, BodyTemplate, Counters, ERROR_SAMPLES, Latency, Measured, ProgressKind,
    WorkerOutcome, keep_samples, micros_since, new_histogram, post_json, round, show_progress,
    wait_until_ready,
};
use crate::cli::BenchArgs;
use crate::embedded::ReadSideConfig;

/// The bench's projection and query, as a server's settings file holds them.
pub const READ_SIDE_TOML: &str = r#"# cairn bench query / e2e --query: one row per key, read by key.
[[projections]]
name = "bench_items"
filter = { types = ["BenchEvent"] }
setup = ["CREATE TABLE IF NOT EXISTS bench_items (key TEXT PRIMARY KEY, position INTEGER NOT NULL, payload TEXT)"]
teardown = ["DROP TABLE IF EXISTS bench_items"]
[projections.on]
BenchEvent = ["INSERT INTO bench_items (key, position, payload) VALUES (:data.n, :position, :data.pad) ON CONFLICT (key) DO UPDATE SET position = excluded.position, payload = excluded.payload"]

[[queries]]
name = "bench_item"
sql = "SELECT key, position, payload FROM bench_items WHERE key = :key"
params = { key = "text" }
"#;

const PROJECTION: &str = "bench_items";
const QUERY: &str = "bench_item";
/// Keys asked for with `--cached`.
const CACHED_KEYS: u64 = 16;
/// Events per append request while pre-appending.
const PREFILL_BATCH: u64 = 1000;
/// Concurrent appenders while pre-appending.
const PREFILL_WRITERS: usize = 4;
/// The longest `wait_ms` the server takes.
const MAX_WAIT_MS: u64 = 60_000;
/// How long the projection may take to reflect the pre-appended events.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(600);
/// e2e --query: how long one query may wait for its event to be visible.
const VISIBLE_WAIT_MS: u64 = 10_000;
/// e2e --query: queries in flight at most (appenders wait beyond that).
const MAX_QUERIES_IN_FLIGHT: usize = 1024;

/// The bench's read side, for the embedded server: with the query cache only for
/// `--cached` (so that `query` measures the database, `query --cached` the cache).
pub fn embedded_read_side(args: &BenchArgs) -> anyhow::Result<ReadSideConfig> {
    let mut config = read_side_config()?;
    if args.scenario == crate::cli::Scenario::Query && !args.cached {
        config.cache_bytes = 0;
    }
    Ok(config)
}

/// The bench's read side as configured in [`READ_SIDE_TOML`].
pub fn read_side_config() -> anyhow::Result<ReadSideConfig> {
    #[derive(Deserialize)]
    struct File {
        projections: Vec<ProjectionConfig>,
        queries: Vec<QueryConfig>,
    }
    let file: File = toml::from_str(READ_SIDE_TOML).context("the bench's read side parses")?;
    Ok(ReadSideConfig {
        projections: file.projections,
        queries: file.queries,
        ..ReadSideConfig::default()
    })
}

/// Whether the scenario needs the bench's read side.
pub fn needs_read_side(args: &BenchArgs) -> bool {
    match args.scenario {
        crate::cli::Scenario::Query => true,
        crate::cli::Scenario::E2e => args.query,
        _ => false,
    }
}

/// The query scenario's figures, beside the common ones (where `requests` and
/// `latency_ms` are the queries', `events` the rows answered).
#[derive(Debug, Serialize)]
pub struct QueryFigures {
    pub query: &'static str,
    /// Distinct keys asked for.
    pub keys: u64,
    pub cached: bool,
    /// Events appended before the queries started, and how long that took.
    pub pre_appended: u64,
    pub prefill_s: f64,
    /// From the first append until the projection reflected the last one.
    pub catch_up_s: f64,
    /// `pre_appended / catch_up_s`: the projection's throughput while the events were
    /// appended (it runs concurrently with the appends).
    pub catch_up_events_per_s: f64,
    /// Events the projection still had to apply when the last append was acknowledged,
    /// how long that took, and the rate.
    pub backlog_events: u64,
    pub backlog_s: f64,
    pub backlog_events_per_s: f64,
    /// Answers from the query cache and from the database (from the server's metrics;
    /// 0 and 0 when they cannot be read).
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_hit_ratio: f64,
    /// Embedded server only: a rebuild of the bench projection after the queries, timed
    /// until it reflected the whole log again: the projection's pure catch-up rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_events_per_s: Option<f64>,
}

impl QueryFigures {
    pub fn summary(&self) -> String {
        let replay = match (self.replay_s, self.replay_events_per_s) {
            (Some(seconds), Some(rate)) => format!(
                "  replay    a rebuild replayed the log in {seconds:.2}s ({rate:.0} events/s)\n"
            ),
            _ => String::new(),
        };
        format!(
            "  read side {} keys{}, {} events pre-appended in {:.2}s; projection caught up in {:.2}s ({:.0} events/s), backlog of {} applied in {:.2}s ({:.0} events/s)\n  cache     {} hits, {} misses ({:.1}% hits)\n{replay}",
            self.keys,
            if self.cached { " (cached)" } else { "" },
            self.pre_appended,
            self.prefill_s,
            self.catch_up_s,
            self.catch_up_events_per_s,
            self.backlog_events,
            self.backlog_s,
            self.backlog_events_per_s,
            self.cache_hits,
            self.cache_misses,
            self.cache_hit_ratio * 100.0,
        )
    }
}

/// `e2e --query`'s figures, beside the common ones (where `events` are the events
/// appended and `latency_ms` the append-to-visible latency).
#[derive(Debug, Serialize)]
pub struct VisibilityFigures {
    /// The asked append rate, events/s.
    pub rate: u32,
    /// Events seen in the query's answer.
    pub visible: u64,
    /// Events whose query failed (a timeout, an error) or answered no row.
    pub not_visible: u64,
    /// The appends' own latency (request sent to response received).
    pub append_latency_ms: Latency,
}

impl VisibilityFigures {
    pub fn summary(&self) -> String {
        let latency = &self.append_latency_ms;
        format!(
            "  e2e query rate {}/s asked, {} visible, {} not visible\n  appends   p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms\n",
            self.rate,
            self.visible,
            self.not_visible,
            latency.p50,
            latency.p90,
            latency.p99,
            latency.p99_9,
            latency.max
        )
    }
}

/// Only what the bench needs of an append's answer.
#[derive(Deserialize)]
struct LeanAppend {
    last_position: u64,
}

/// The event counter (and so the read model's key) of key `n` in run `tag`.
fn counter(tag: u64, n: u64) -> u64 {
    (tag << 32) | (n & 0xffff_ffff)
}

fn query_url(base_url: &str, tag: u64, n: u64) -> String {
    format!("{base_url}/v1/queries/{QUERY}?key={:016x}", counter(tag, n))
}

fn run_tag() -> u64 {
    u64::from(uuid::Uuid::new_v4().as_u128() as u32)
}

/// A small fast generator for the keys asked for (xorshift64*).
struct Keys(u64);

impl Keys {
    fn seeded(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound.max(1)
    }
}

/// Refuses early, with the remedy, when the server lacks the bench's read side.
async fn check_read_side(http: &reqwest::Client, base_url: &str) -> anyhow::Result<()> {
    let response = http
        .get(format!("{base_url}/v1/projections/{PROJECTION}"))
        .send()
        .await
        .with_context(|| format!("cannot reach {base_url}"))?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        bail!(
            "the server has no projection {PROJECTION}: add the bench's projection and query to its settings file and restart it:\n\n{READ_SIDE_TOML}"
        );
    }
    if !response.status().is_success() {
        bail!(
            "cannot read projection {PROJECTION}: HTTP {}",
            response.status()
        );
    }
    Ok(())
}

/// The bench projection's position (and whether it failed).
async fn projection_position(http: &reqwest::Client, base_url: &str) -> anyhow::Result<u64> {
    #[derive(Deserialize)]
    struct Lean {
        position: u64,
        state: String,
    }
    let body = http
        .get(format!("{base_url}/v1/projections/{PROJECTION}"))
        .send()
        .await?
        .bytes()
        .await?;
    let status: Lean = serde_json::from_slice(&body)
        .with_context(|| format!("bad projection status: {}", String::from_utf8_lossy(&body)))?;
    if status.state == "failed" {
        bail!(
            "projection {PROJECTION} failed: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(status.position)
}

/// Waits (with the query's own `min_position` wait, not by polling) until the bench
/// query reflects `position`.
async fn wait_until_reflected(
    http: &reqwest::Client,
    base_url: &str,
    tag: u64,
    position: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + CATCH_UP_LIMIT;
    let url = format!(
        "{}&min_position={position}&wait_ms={MAX_WAIT_MS}",
        query_url(base_url, tag, 0)
    );
    loop {
        let response = http
            .get(&url)
            .timeout(Duration::from_millis(MAX_WAIT_MS) + Duration::from_secs(30))
            .send()
            .await?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        if status != reqwest::StatusCode::GATEWAY_TIMEOUT {
            bail!("the bench query failed: HTTP {status}: {body}");
        }
        projection_position(http, base_url).await?;
        if Instant::now() >= deadline {
            bail!("the projection did not reflect position {position} in time: {body}");
        }
    }
}

/// Appends `total` events over `keys` keys in batches from a few writers; returns the
/// last position appended.
async fn prefill(
    http: &reqwest::Client,
    base_url: &str,
    tag: u64,
    total: u64,
    keys: u64,
    payload_bytes: usize,
) -> anyhow::Result<u64> {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writers: Vec<_> = (0..PREFILL_WRITERS)
        .map(|writer| {
            let http = http.clone();
            let next = next.clone();
            let url = format!("{base_url}/v1/streams/benchq{tag:08x}-{writer}/events");
            tokio::spawn(async move {
                let full = BodyTemplate::new(PREFILL_BATCH as usize, payload_bytes);
                let mut last = 0;
                loop {
                    let first = next.fetch_add(PREFILL_BATCH, Ordering::Relaxed);
                    if first >= total {
                        return Ok::<u64, String>(last);
                    }
                    let count = PREFILL_BATCH.min(total - first);
                    let key_of = |index: usize| counter(tag, (first + index as u64) % keys);
                    let body = if count == PREFILL_BATCH {
                        full.render_with(key_of)
                    } else {
                        BodyTemplate::new(count as usize, payload_bytes).render_with(key_of)
                    };
                    let answer = post_json(&http, &url, body).await?;
                    let appended: LeanAppend = serde_json::from_slice(&answer)
                        .map_err(|error| format!("bad append answer: {error}"))?;
                    last = last.max(appended.last_position);
                }
            })
        })
        .collect();
    let mut last = 0;
    for writer in writers {
        match writer.await.context("a pre-appending writer panicked")? {
            Ok(position) => last = last.max(position),
            Err(error) => bail!("cannot pre-append the events: {error}"),
        }
    }
    Ok(last)
}

/// The server's query-cache counters for the bench query: (hits, misses).
async fn cache_counts(http: &reqwest::Client, base_url: &str) -> (u64, u64) {
    let Ok(response) = http.get(format!("{base_url}/metrics")).send().await else {
        return (0, 0);
    };
    let text = response.text().await.unwrap_or_default();
    let value = |name: &str| {
        let series = format!("{name}{{query=\"{QUERY}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&series))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .map_or(0, |value| value as u64)
    };
    (
        value(cairn_projection::metrics::QUERY_CACHE_HITS),
        value(cairn_projection::metrics::QUERY_CACHE_MISSES),
    )
}

pub(super) async fn measure(
    args: &BenchArgs,
    access: &Access,
    base_url: &str,
    embedded: bool,
) -> anyhow::Result<BenchResult> {
    let clients = usize::try_from(args.clients).context("too many clients")?;
    let http = access.http(clients + PREFILL_WRITERS)?;
    wait_until_ready(&http, base_url, if embedded { 10 } else { 0 }).await?;
    check_read_side(&http, base_url).await?;
    let tag = run_tag();
    let keys = args.keys.min(args.events);
    let total = args.events;
    if args.verbose || std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!("appending {total} events over {keys} keys for the bench projection…");
    }
    let prefill_started = Instant::now();
    let last = prefill(&http, base_url, tag, total, keys, args.payload_bytes).await?;
    let prefill_elapsed = prefill_started.elapsed();
    let appended_at = Instant::now();
    let at_append_end = projection_position(&http, base_url).await?.min(last);
    wait_until_reflected(&http, base_url, tag, last).await?;
    let catch_up = prefill_started.elapsed();
    let backlog = appended_at.elapsed();
    let backlog_events = last - at_append_end;

    let keyspace = if args.cached {
        CACHED_KEYS.min(keys)
    } else {
        keys
    };
    let (hits_before, misses_before) = cache_counts(&http, base_url).await;
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let deadline = started + args.duration;
    let progress_done = CancellationToken::new();
    let progress = tokio::spawn(show_progress(
        counters.clone(),
        started,
        args.duration,
        args.verbose,
        ProgressKind::Requests,
        progress_done.clone(),
    ));
    let workers: Vec<_> = (0..clients)
        .map(|client| {
            tokio::spawn(query_worker(
                http.clone(),
                base_url.to_owned(),
                tag,
                keyspace,
                Keys::seeded(tag ^ (client as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                deadline,
                counters.clone(),
            ))
        })
        .collect();
    let mut histogram = new_histogram();
    let mut error_samples = Vec::new();
    for worker in workers {
        let outcome = worker.await.context("a bench client panicked")?;
        histogram
            .add(&outcome.histogram)
            .context("cannot merge latency histograms")?;
        keep_samples(&mut error_samples, outcome.errors);
    }
    let elapsed = started.elapsed();
    progress_done.cancel();
    let _ = progress.await;
    let (hits_after, misses_after) = cache_counts(&http, base_url).await;
    let cache_hits = hits_after.saturating_sub(hits_before);
    let cache_misses = misses_after.saturating_sub(misses_before);
    // On our own server the whole log is the bench's: time a replay of it.
    let replay = if embedded {
        Some(replay(&http, base_url, tag).await?)
    } else {
        None
    };

    let requests = counters.requests.load(Ordering::Relaxed);
    let answered = counters.events.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    let per_second = |events: u64, time: Duration| {
        round(events as f64 / time.as_secs_f64().max(f64::EPSILON), 1)
    };
    Ok(BenchResult {
        query: Some(QueryFigures {
            query: QUERY,
            keys: keyspace,
            cached: args.cached,
            pre_appended: total,
            prefill_s: round(prefill_elapsed.as_secs_f64(), 3),
            catch_up_s: round(catch_up.as_secs_f64(), 3),
            catch_up_events_per_s: per_second(total, catch_up),
            backlog_events,
            backlog_s: round(backlog.as_secs_f64(), 3),
            backlog_events_per_s: per_second(backlog_events, backlog),
            cache_hits,
            cache_misses,
            cache_hit_ratio: if cache_hits + cache_misses == 0 {
                0.0
            } else {
                round(cache_hits as f64 / (cache_hits + cache_misses) as f64, 4)
            },
            replay_s: replay.map(|(seconds, _)| round(seconds, 3)),
            replay_events_per_s: replay.map(|(_, rate)| round(rate, 1)),
        }),
        ..BenchResult::from_measured(Measured {
            args,
            base_url,
            embedded,
            clients: args.clients,
            events_per_request: 1,
            elapsed,
            requests,
            events: answered,
            errors,
            histogram: &histogram,
            error_samples,
        })
    })
}

/// Rebuilds the bench projection and waits until it reflects the log's head again:
/// (seconds, events per second).
async fn replay(http: &reqwest::Client, base_url: &str, tag: u64) -> anyhow::Result<(f64, f64)> {
    #[derive(Deserialize)]
    struct Lean {
        head_position: u64,
    }
    let started = Instant::now();
    let answer = post_json(
        http,
        &format!("{base_url}/v1/projections/{PROJECTION}/rebuild"),
        bytes::Bytes::new(),
    )
    .await
    .map_err(|error| anyhow::anyhow!("cannot rebuild the bench projection: {error}"))?;
    let head = serde_json::from_slice::<Lean>(&answer)
        .context("bad rebuild answer")?
        .head_position;
    wait_until_reflected(http, base_url, tag, head).await?;
    let seconds = started.elapsed().as_secs_f64().max(f64::EPSILON);
    Ok((seconds, head as f64 / seconds))
}

/// Asks for random keys, one request at a time, until the deadline. An answer counts
/// when it is 200 with a row.
async fn query_worker(
    http: reqwest::Client,
    base_url: String,
    tag: u64,
    keyspace: u64,
    mut keys: Keys,
    deadline: Instant,
    counters: Arc<Counters>,
) -> WorkerOutcome {
    let mut histogram = new_histogram();
    let mut errors = Vec::new();
    while Instant::now() < deadline {
        let url = query_url(&base_url, tag, keys.below(keyspace));
        let sent = Instant::now();
        let outcome = match http.get(&url).send().await {
            Ok(response) => {
                let status = response.status();
                match response.bytes().await {
                    Ok(body) if status.is_success() && body.starts_with(br#"{"rows":[{"#) => Ok(()),
                    Ok(body) => Err(format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    )),
                    Err(error) => Err(error.to_string()),
                }
            }
            Err(error) => Err(error.to_string()),
        };
        histogram.saturating_record(micros_since(sent).max(1));
        counters.requests.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(()) => {
                counters.events.fetch_add(1, Ordering::Relaxed);
            }
            Err(message) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                if errors.len() < ERROR_SAMPLES {
                    errors.push(message);
                }
            }
        }
    }
    WorkerOutcome { histogram, errors }
}

/// What the appenders and their queries share in `e2e --query`.
struct Visibility {
    histogram: Mutex<Histogram<u64>>,
    errors: Mutex<Vec<String>>,
    in_flight: Arc<Semaphore>,
}

impl Visibility {
    fn fail(&self, counters: &Counters, error: String) {
        counters.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut errors) = self.errors.lock()
            && errors.len() < ERROR_SAMPLES
        {
            errors.push(error);
        }
    }
}

pub(super) async fn measure_visibility(
    args: &BenchArgs,
    access: &Access,
    base_url: &str,
    embedded: bool,
) -> anyhow::Result<BenchResult> {
    let clients = usize::try_from(args.clients).context("too many clients")?;
    let http = access.http(clients * 4)?;
    wait_until_ready(&http, base_url, if embedded { 10 } else { 0 }).await?;
    check_read_side(&http, base_url).await?;
    let tag = run_tag();
    let template = BodyTemplate::new(1, args.payload_bytes);

    let counters = Arc::new(Counters::default());
    let shared = Arc::new(Visibility {
        histogram: Mutex::new(new_histogram()),
        errors: Mutex::new(Vec::new()),
        in_flight: Arc::new(Semaphore::new(MAX_QUERIES_IN_FLIGHT)),
    });
    let started = Instant::now();
    let deadline = started + args.duration;
    let progress_done = CancellationToken::new();
    let progress = tokio::spawn(show_progress(
        counters.clone(),
        started,
        args.duration,
        args.verbose,
        ProgressKind::Deliveries,
        progress_done.clone(),
    ));
    let schedule = Schedule::new(started, deadline, args.rate);
    let appenders: Vec<_> = (0..clients)
        .map(|appender| {
            let http = http.clone();
            let url = format!("{base_url}/v1/streams/benchvis{tag:08x}-{appender}/events");
            let base_url = base_url.to_owned();
            let template = template.clone();
            let schedule = schedule.clone();
            let counters = counters.clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut histogram = new_histogram();
                while let Some(slot) = schedule.next_due().await {
                    let body = template.render_value(counter(tag, slot));
                    let sent = Instant::now();
                    let answer = post_json(&http, &url, body).await;
                    histogram.saturating_record(micros_since(sent).max(1));
                    counters.requests.fetch_add(1, Ordering::Relaxed);
                    let appended = match answer.and_then(|body| {
                        serde_json::from_slice::<LeanAppend>(&body)
                            .map_err(|error| format!("bad append answer: {error}"))
                    }) {
                        Ok(appended) => appended,
                        Err(error) => {
                            shared.fail(&counters, error);
                            continue;
                        }
                    };
                    counters.events.fetch_add(1, Ordering::Relaxed);
                    let Ok(permit) = shared.in_flight.clone().acquire_owned().await else {
                        break;
                    };
                    let url = format!(
                        "{}&min_position={}&wait_ms={VISIBLE_WAIT_MS}",
                        query_url(&base_url, tag, slot),
                        appended.last_position
                    );
                    let http = http.clone();
                    let counters = counters.clone();
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let outcome = match http.get(&url).send().await {
                            Ok(response) => {
                                let status = response.status();
                                match response.bytes().await {
                                    Ok(body)
                                        if status.is_success()
                                            && body.starts_with(br#"{"rows":[{"#) =>
                                    {
                                        Ok(())
                                    }
                                    Ok(body) => Err(format!(
                                        "HTTP {status}: {}",
                                        String::from_utf8_lossy(&body[..body.len().min(300)])
                                    )),
                                    Err(error) => Err(error.to_string()),
                                }
                            }
                            Err(error) => Err(error.to_string()),
                        };
                        match outcome {
                            Ok(()) => {
                                let latency = micros_since(sent).max(1);
                                if let Ok(mut histogram) = shared.histogram.lock() {
                                    histogram.saturating_record(latency);
                                }
                                counters.delivered.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(error) => shared.fail(&counters, error),
                        }
                        drop(permit);
                    });
                }
                histogram
            })
        })
        .collect();
    let mut append_histogram = new_histogram();
    for appender in appenders {
        let histogram = appender.await.context("an appender panicked")?;
        append_histogram
            .add(&histogram)
            .context("cannot merge latency histograms")?;
    }
    let append_elapsed = started.elapsed();
    // Every query answered: all the permits are back.
    let all = u32::try_from(MAX_QUERIES_IN_FLIGHT).unwrap_or(u32::MAX);
    let _all = shared
        .in_flight
        .acquire_many(all)
        .await
        .context("the queries' semaphore closed")?;
    progress_done.cancel();
    let _ = progress.await;

    let requests = counters.requests.load(Ordering::Relaxed);
    let appended = counters.events.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    let visible = counters.delivered.load(Ordering::Relaxed);
    let histogram = shared
        .histogram
        .lock()
        .map(|histogram| histogram.clone())
        .unwrap_or_else(|_| new_histogram());
    let error_samples = shared
        .errors
        .lock()
        .map(|errors| errors.clone())
        .unwrap_or_default();
    Ok(BenchResult {
        visibility: Some(VisibilityFigures {
            rate: args.rate,
            visible,
            not_visible: appended.saturating_sub(visible),
            append_latency_ms: Latency::of(&append_histogram),
        }),
        ..BenchResult::from_measured(Measured {
            args,
            base_url,
            embedded,
            clients: args.clients,
            events_per_request: 1,
            elapsed: append_elapsed,
            requests,
            events: appended,
            errors,
            histogram: &histogram,
            error_samples,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_read_side_is_valid() {
        let config = read_side_config().unwrap();
        cairn_projection::validate(&config.projections, &config.queries).unwrap();
        assert_eq!(config.projections[0].name, PROJECTION);
        assert_eq!(config.queries[0].name, QUERY);
    }

    #[test]
    fn keys_are_the_counters_the_events_carry() {
        let template = BodyTemplate::new(2, 64);
        let body = template.render_with(|index| counter(0xabcd, index as u64 + 7));
        let request: cairn_api::AppendRequest = serde_json::from_slice(&body).unwrap();
        let data: serde_json::Value = serde_json::from_str(request.events[1].data.get()).unwrap();
        assert_eq!(data["n"], "0000abcd00000008");
        assert!(query_url("http://x", 0xabcd, 8).ends_with("?key=0000abcd00000008"));
        let mut keys = Keys::seeded(42);
        assert!((0..1000).all(|_| keys.below(10) < 10));
    }
}
