//! `cairn bench`: a lean load generator. In the append and read scenarios each client
//! sends one request at a time for the duration (closed loop); bodies are serialised
//! once and only a counter inside each event's payload changes between requests;
//! latencies go to a per-client histogram, merged at the end. The `e2e` scenario
//! ([`e2e`]) appends at a fixed rate and measures delivery to SSE subscribers; the
//! `group` scenario ([`group`]) drains a consumer group with competing workers; the
//! `query` and `e2e --query` scenarios ([`query`]) load the read side.

mod conn;
mod e2e;
mod group;
mod query;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::HeaderValue;
use serde::Serialize;

use crate::cli::{BenchArgs, Credentials, Scenario};
use crate::embedded::{RunningServer, ServerConfig};

/// Streams the read scenario reads from.
const READ_STREAMS: usize = 4;
/// Events per read request (and per pre-populated stream).
const READ_EVENTS: usize = 100;
/// Hex digits of the counter written into every event's payload.
const COUNTER_DIGITS: usize = 16;
/// Error messages kept for the report.
const ERROR_SAMPLES: usize = 5;

/// What `cairn bench` measured, with the parameters it measured under.
#[derive(Debug, Serialize)]
pub struct BenchResult {
    pub scenario: &'static str,
    /// The server's URL, or `embedded`.
    pub target: String,
    /// Concurrent clients: appenders in e2e, workers in group.
    pub clients: u32,
    pub duration_s: f64,
    pub payload_bytes: usize,
    pub events_per_request: usize,
    pub elapsed_s: f64,
    pub requests: u64,
    pub events: u64,
    pub errors: u64,
    pub requests_per_s: f64,
    pub events_per_s: f64,
    pub latency_ms: Latency,
    pub error_samples: Vec<String>,
    /// The e2e scenario's own figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e2e: Option<e2e::E2eFigures>,
    /// The group scenario's own figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<group::GroupFigures>,
    /// The query scenario's own figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<query::QueryFigures>,
    /// `e2e --query`'s own figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visibility: Option<query::VisibilityFigures>,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// Percentiles in milliseconds of a histogram of microseconds.
    fn of(histogram: &Histogram<u64>) -> Self {
        let millis = |micros: u64| micros as f64 / 1000.0;
        if histogram.is_empty() {
            return Self {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p99_9: 0.0,
                max: 0.0,
                mean: 0.0,
            };
        }
        Self {
            p50: millis(histogram.value_at_quantile(0.50)),
            p90: millis(histogram.value_at_quantile(0.90)),
            p99: millis(histogram.value_at_quantile(0.99)),
            p99_9: millis(histogram.value_at_quantile(0.999)),
            max: millis(histogram.max()),
            mean: round(histogram.mean() / 1000.0, 3),
        }
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.print_read_side {
        print!("{}", query::READ_SIDE_TOML);
        return Ok(());
    }
    // Only the embedded server logs; warnings and errors are worth seeing.
    crate::logging::init(Some(crate::settings::LogFormat::Pretty), "warn")?;
    let (base_url, embedded) = match &args.url {
        Some(url) => (url.trim_end_matches('/').to_owned(), None),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("cairn-bench-")
                .tempdir()
                .context("cannot create a temporary data directory")?;
            let server = RunningServer::start(ServerConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                data_dir: dir.path().join("data"),
                read_connections: 4,
                idempotency_window: Duration::from_secs(24 * 3600),
                request_timeout: Duration::from_secs(30),
                limits: cairn_server::Limits::default(),
                auth: Default::default(),
                request_limits: Default::default(),
                database: None,
                tls: None,
                read_side: if query::needs_read_side(&args) {
                    query::embedded_read_side(&args)?
                } else {
                    crate::embedded::ReadSideConfig::default()
                },
            })
            .await?;
            (server.url(), Some((server, dir)))
        }
    };
    let outcome = match Access::of(&args, embedded.is_some()) {
        Err(error) => Err(error),
        Ok(access) => {
            let (args, base_url, embedded) = (&args, base_url.as_str(), embedded.is_some());
            match args.scenario {
                Scenario::E2e if args.query => {
                    query::measure_visibility(args, &access, base_url, embedded).await
                }
                Scenario::E2e => e2e::measure(args, &access, base_url, embedded).await,
                Scenario::Group => group::measure(args, &access, base_url, embedded).await,
                Scenario::Query => query::measure(args, &access, base_url, embedded).await,
                Scenario::Append | Scenario::AppendBatch | Scenario::Read => {
                    measure(args, &access, base_url, embedded).await
                }
            }
        }
    };
    if let Some((server, dir)) = embedded {
        server.stop(Duration::from_secs(10)).await?;
        dir.close()
            .context("cannot remove the temporary data directory")?;
    }
    let result = outcome?;
    let summary = summary(&result);
    if args.json {
        eprint!("{summary}");
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{summary}");
    }
    Ok(())
}

async fn measure(
    args: &BenchArgs,
    access: &Access,
    base_url: &str,
    embedded: bool,
) -> anyhow::Result<BenchResult> {
    let clients = usize::try_from(args.clients).context("too many clients")?;
    let http = access.http(clients)?;
    wait_until_ready(&http, base_url, if embedded { 10 } else { 0 }).await?;

    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let events_per_request = match args.scenario {
        Scenario::AppendBatch => usize::from(args.batch_size),
        Scenario::Read => READ_EVENTS,
        Scenario::Append | Scenario::E2e | Scenario::Group | Scenario::Query => 1,
    };
    let template = BodyTemplate::new(events_per_request, args.payload_bytes);
    let mut plans = Vec::with_capacity(clients);
    match args.scenario {
        Scenario::Append
        | Scenario::AppendBatch
        | Scenario::E2e
        | Scenario::Group
        | Scenario::Query => {
            for client in 0..clients {
                plans.push(Plan::Append {
                    path: format!("/v1/streams/bench-{run_id}-{client}/events"),
                    template: template.clone(),
                });
            }
        }
        Scenario::Read => {
            let mut paths = Vec::with_capacity(READ_STREAMS);
            for stream in 0..READ_STREAMS {
                let name = format!("benchread-{run_id}-{stream}");
                let body = template.render(stream as u64);
                let response = http
                    .post(format!("{base_url}/v1/streams/{name}/events"))
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .send()
                    .await
                    .context("cannot pre-populate the read streams")?;
                if !response.status().is_success() {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    bail!("cannot pre-populate the read streams: HTTP {status}: {text}");
                }
                paths.push(format!(
                    "/v1/streams/{name}/events?from=0&limit={READ_EVENTS}"
                ));
            }
            let paths: Arc<[String]> = paths.into();
            for client in 0..clients {
                plans.push(Plan::Read {
                    paths: paths.clone(),
                    next: client,
                });
            }
        }
    }

    let target = conn::Target::new(base_url, &http, access.authorization())?;
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let deadline = started + args.duration;
    let progress_done = tokio_util::sync::CancellationToken::new();
    let progress = tokio::spawn(show_progress(
        counters.clone(),
        started,
        args.duration,
        args.verbose,
        ProgressKind::Requests,
        progress_done.clone(),
    ));
    let outcomes = run_clients(
        plans,
        &target,
        events_per_request as u64,
        deadline,
        &counters,
    )
    .await?;
    let mut histogram = new_histogram();
    let mut error_samples = Vec::new();
    for outcome in outcomes {
        histogram
            .add(&outcome.histogram)
            .context("cannot merge latency histograms")?;
        for sample in outcome.errors {
            if error_samples.len() < ERROR_SAMPLES && !error_samples.contains(&sample) {
                error_samples.push(sample);
            }
        }
    }
    let elapsed = started.elapsed();
    progress_done.cancel();
    let _ = progress.await;

    let requests = counters.requests.load(Ordering::Relaxed);
    let events = counters.events.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    Ok(BenchResult::from_measured(Measured {
        args,
        base_url,
        embedded,
        clients: args.clients,
        events_per_request,
        elapsed,
        requests,
        events,
        errors,
        histogram: &histogram,
        error_samples,
    }))
}

/// What every scenario measures, in one place: counts over the elapsed time and the
/// latency histogram. A scenario adds its own figures with struct-update syntax.
pub struct Measured<'a> {
    pub args: &'a BenchArgs,
    pub base_url: &'a str,
    pub embedded: bool,
    pub clients: u32,
    pub events_per_request: usize,
    pub elapsed: Duration,
    pub requests: u64,
    pub events: u64,
    pub errors: u64,
    pub histogram: &'a Histogram<u64>,
    pub error_samples: Vec<String>,
}

impl BenchResult {
    pub fn from_measured(measured: Measured<'_>) -> Self {
        let seconds = measured.elapsed.as_secs_f64().max(f64::EPSILON);
        Self {
            scenario: measured.args.scenario.as_str(),
            target: target(measured.base_url, measured.embedded),
            clients: measured.clients,
            duration_s: measured.args.duration.as_secs_f64(),
            payload_bytes: measured.args.payload_bytes,
            events_per_request: measured.events_per_request,
            elapsed_s: round(seconds, 3),
            requests: measured.requests,
            events: measured.events,
            errors: measured.errors,
            requests_per_s: round(measured.requests as f64 / seconds, 1),
            events_per_s: round(measured.events as f64 / seconds, 1),
            latency_ms: Latency::of(measured.histogram),
            error_samples: measured.error_samples,
            e2e: None,
            group: None,
            query: None,
            visibility: None,
        }
    }
}

/// The target as reported: the URL, or `embedded`.
fn target(base_url: &str, embedded: bool) -> String {
    if embedded {
        "embedded".to_owned()
    } else {
        base_url.to_owned()
    }
}

/// Keeps the first few distinct error messages.
fn keep_samples(samples: &mut Vec<String>, more: impl IntoIterator<Item = String>) {
    for sample in more {
        if samples.len() < ERROR_SAMPLES && !samples.contains(&sample) {
            samples.push(sample);
        }
    }
}

fn micros_since(instant: Instant) -> u64 {
    u64::try_from(instant.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// How the load reaches a server given by `--url`: the API token every request sends
/// and the CA certificate trusted besides the system's (`--token`, `--ca-cert`). The
/// embedded server needs neither.
#[derive(Default)]
struct Access {
    /// `Bearer <token>`, marked sensitive.
    authorization: Option<HeaderValue>,
    ca_certificates: Vec<reqwest::Certificate>,
    credentials: Credentials,
}

impl Access {
    fn of(args: &BenchArgs, embedded: bool) -> anyhow::Result<Self> {
        if embedded {
            return Ok(Self::default());
        }
        let credentials = &args.credentials;
        let authorization = match &credentials.token {
            Some(token) => Some(cairn_client::bearer_header(token).context("--token")?),
            None => None,
        };
        let ca_certificates = match &credentials.ca_cert {
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("cannot read --ca-cert {}", path.display()))?;
                cairn_client::ca_certificates_of(&pem)
                    .with_context(|| format!("--ca-cert {}", path.display()))?
            }
            None => Vec::new(),
        };
        Ok(Self {
            authorization,
            ca_certificates,
            credentials: credentials.clone(),
        })
    }

    fn authorization(&self) -> Option<HeaderValue> {
        self.authorization.clone()
    }

    /// The HTTP client of the load loops: no retries, no idempotency keys, pooled
    /// connections, Nagle off.
    fn http(&self, connections: usize) -> anyhow::Result<reqwest::Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(authorization) = &self.authorization {
            headers.insert(reqwest::header::AUTHORIZATION, authorization.clone());
        }
        let mut builder = reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .default_headers(headers);
        for certificate in &self.ca_certificates {
            builder = builder.add_root_certificate(certificate.clone());
        }
        builder.build().context("cannot build the HTTP client")
    }

    /// A `cairn-client` client (subscriptions, set-up reads) with the same access.
    fn client(&self, base_url: &str) -> anyhow::Result<cairn_client::Client> {
        crate::commands::build_client(
            cairn_client::Client::builder(base_url),
            &crate::cli::ClientArgs {
                url: base_url.to_owned(),
                credentials: self.credentials.clone(),
            },
        )
    }
}

/// POSTs a JSON body; `Err` with the status and the start of the body unless 2xx.
async fn post_json(http: &reqwest::Client, url: &str, body: Bytes) -> Result<Bytes, String> {
    let response = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|error| error.to_string())?;
    let status = response.status();
    let body = response.bytes().await.map_err(|error| error.to_string())?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ))
    }
}

fn round(value: f64, decimals: i32) -> f64 {
    let factor = 10f64.powi(decimals);
    (value * factor).round() / factor
}

async fn wait_until_ready(
    http: &reqwest::Client,
    base_url: &str,
    wait_seconds: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(wait_seconds);
    let url = format!("{base_url}/health/ready");
    loop {
        let outcome = http.get(&url).send().await;
        let problem = match outcome {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => format!("HTTP {}", response.status()),
            Err(error) => error.to_string(),
        };
        if Instant::now() >= deadline {
            bail!("{base_url} is not ready: {problem}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    /// Events appended (append, e2e), read (read) or acknowledged (group).
    events: AtomicU64,
    errors: AtomicU64,
    /// Events received by subscribers (e2e).
    delivered: AtomicU64,
}

/// What a load client sends: paths below the target's base URL.
enum Plan {
    Append {
        path: String,
        template: BodyTemplate,
    },
    Read {
        paths: Arc<[String]>,
        next: usize,
    },
}

struct WorkerOutcome {
    histogram: Histogram<u64>,
    errors: Vec<String>,
}

/// Runs one load client per plan until the deadline. Plain HTTP clients run on
/// threads of their own, one per core, each with a single-threaded runtime (as `wrk`'s
/// threads each run an event loop), so a request and its answer never hop between
/// threads: against the command's multi-threaded runtime this gave ~10% more appends
/// at 64 clients for the same CPU per request (BENCHMARKS.md, "The load clients'
/// threads"). `https://` clients share reqwest's pool, which lives on the command's
/// runtime, so they run there.
async fn run_clients(
    plans: Vec<Plan>,
    target: &conn::Target,
    events_per_request: u64,
    deadline: Instant,
    counters: &Arc<Counters>,
) -> anyhow::Result<Vec<WorkerOutcome>> {
    if matches!(target, conn::Target::Pooled { .. }) {
        let workers: Vec<_> = plans
            .into_iter()
            .map(|plan| {
                tokio::spawn(client_loop(
                    target,
                    plan,
                    events_per_request,
                    deadline,
                    counters,
                ))
            })
            .collect();
        let mut outcomes = Vec::with_capacity(workers.len());
        for handle in workers {
            outcomes.push(handle.await.context("a bench client panicked")?);
        }
        return Ok(outcomes);
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .clamp(1, plans.len().max(1));
    let mut groups: Vec<Vec<Plan>> = (0..threads).map(|_| Vec::new()).collect();
    for (index, plan) in plans.into_iter().enumerate() {
        groups[index % threads].push(plan);
    }
    let mut finished = Vec::with_capacity(threads);
    for group in groups {
        let (target, counters) = (target.clone(), counters.clone());
        let (done, outcome) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("cairn-bench-load".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let outcomes = runtime.map(|runtime| {
                    runtime.block_on(futures::future::join_all(group.into_iter().map(|plan| {
                        client_loop(&target, plan, events_per_request, deadline, &counters)
                    })))
                });
                // The receiver only goes away if the command itself stopped.
                let _ = done.send(outcomes);
            })
            .context("cannot start a load thread")?;
        finished.push(outcome);
    }
    let mut outcomes = Vec::new();
    for outcome in finished {
        let group = outcome
            .await
            .context("a load thread stopped before its clients finished")?
            .context("cannot start a load thread's runtime")?;
        outcomes.extend(group);
    }
    Ok(outcomes)
}

/// One load client: `plan`'s requests on a connection of its own until the deadline.
fn client_loop(
    target: &conn::Target,
    plan: Plan,
    events_per_request: u64,
    deadline: Instant,
    counters: &Arc<Counters>,
) -> impl std::future::Future<Output = WorkerOutcome> + Send + 'static {
    worker(
        target.client(),
        plan,
        events_per_request,
        deadline,
        counters.clone(),
    )
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

async fn worker(
    mut client: conn::Client,
    mut plan: Plan,
    events_per_request: u64,
    deadline: Instant,
    counters: Arc<Counters>,
) -> WorkerOutcome {
    let mut histogram = new_histogram();
    let mut errors = Vec::new();
    let mut sequence: u64 = 0;
    while Instant::now() < deadline {
        sequence += 1;
        let (path, body) = match &mut plan {
            Plan::Append { path, template } => (path.as_str(), Some(template.render(sequence))),
            Plan::Read { paths, next } => {
                *next = (*next + 1) % paths.len();
                (paths[*next].as_str(), None)
            }
        };
        let sent = Instant::now();
        let outcome = match client.send(path, body).await {
            Ok((status, _)) if status.is_success() => Ok(()),
            Ok((status, body)) => Err(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            )),
            Err(error) => Err(error),
        };
        let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        histogram.saturating_record(micros.max(1));
        counters.requests.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(()) => {
                counters
                    .events
                    .fetch_add(events_per_request, Ordering::Relaxed);
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

/// An append body serialised once; rendering copies it and writes a counter into each
/// event's payload.
#[derive(Clone)]
struct BodyTemplate {
    bytes: Arc<[u8]>,
    /// Where each event's counter digits start.
    counter_offsets: Arc<[usize]>,
}

impl BodyTemplate {
    fn new(events: usize, payload_bytes: usize) -> Self {
        // data = {"n":"<16 hex digits>","pad":"xxx…"}: `payload_bytes` long when it can be.
        let fixed = r#"{"n":"","pad":""}"#.len() + COUNTER_DIGITS;
        let pad = "x".repeat(payload_bytes.saturating_sub(fixed));
        let mut body = String::from(r#"{"expected_version":"any","events":["#);
        let mut offsets = Vec::with_capacity(events);
        for index in 0..events {
            if index > 0 {
                body.push(',');
            }
            body.push_str(r#"{"type":"BenchEvent","data":{"n":""#);
            offsets.push(body.len());
            body.push_str(&"0".repeat(COUNTER_DIGITS));
            body.push_str(r#"","pad":""#);
            body.push_str(&pad);
            body.push_str(r#""}}"#);
        }
        body.push_str("]}");
        Self {
            bytes: body.into_bytes().into(),
            counter_offsets: offsets.into(),
        }
    }

    fn render(&self, sequence: u64) -> Bytes {
        self.render_with(|index| sequence.wrapping_mul(1000).wrapping_add(index as u64))
    }

    /// Every event's counter set to `value` (the e2e scenario's send time).
    fn render_value(&self, value: u64) -> Bytes {
        self.render_with(|_| value)
    }

    fn render_with(&self, value_of: impl Fn(usize) -> u64) -> Bytes {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut body = self.bytes.to_vec();
        for (index, &offset) in self.counter_offsets.iter().enumerate() {
            let mut value = value_of(index);
            for digit in body[offset..offset + COUNTER_DIGITS].iter_mut().rev() {
                *digit = HEX[(value & 0xf) as usize];
                value >>= 4;
            }
        }
        Bytes::from(body)
    }
}

/// What the progress line counts.
#[derive(Debug, Clone, Copy)]
enum ProgressKind {
    /// Requests and events per second.
    Requests,
    /// Events appended and delivered per second.
    Deliveries,
    /// Events acknowledged per second, out of a total.
    Acks { total: u64 },
}

/// A progress line once a second: a bar on a terminal, plain lines with --verbose
/// elsewhere, nothing otherwise.
async fn show_progress(
    counters: Arc<Counters>,
    started: Instant,
    duration: Duration,
    verbose: bool,
    kind: ProgressKind,
    done: tokio_util::sync::CancellationToken,
) {
    let terminal = std::io::stderr().is_terminal();
    if !terminal && !verbose {
        return;
    }
    let bar = terminal.then(|| {
        let bar = indicatif::ProgressBar::new(duration.as_secs().max(1));
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {msg}")
                .expect("a valid progress template")
                .progress_chars("=> "),
        );
        bar
    });
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut last_requests = 0;
    let mut last_events = 0;
    let mut last_delivered = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = done.cancelled() => break,
        }
        let requests = counters.requests.load(Ordering::Relaxed);
        let events = counters.events.load(Ordering::Relaxed);
        let errors = counters.errors.load(Ordering::Relaxed);
        let delivered = counters.delivered.load(Ordering::Relaxed);
        let message = match kind {
            ProgressKind::Requests => format!(
                "{} req/s, {} events/s, {requests} requests, {errors} errors",
                requests - last_requests,
                events - last_events
            ),
            ProgressKind::Deliveries => format!(
                "{} appended/s, {} delivered/s, {events} appended, {errors} errors",
                events - last_events,
                delivered.saturating_sub(last_delivered)
            ),
            ProgressKind::Acks { total } => format!(
                "{} acked/s, {events}/{total} acked, {errors} errors",
                events - last_events
            ),
        };
        last_requests = requests;
        last_events = events;
        last_delivered = delivered;
        match &bar {
            Some(bar) => {
                bar.set_position(started.elapsed().as_secs());
                bar.set_message(message);
            }
            None => eprintln!("{:>4}s {message}", started.elapsed().as_secs()),
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

fn summary(result: &BenchResult) -> String {
    let latency = &result.latency_ms;
    let who = match result.scenario {
        "e2e" => "appenders",
        "group" => "workers",
        _ => "clients",
    };
    let mut text = format!(
        "cairn bench {}: {} {who}, {}s, {} events/request, {}-byte payloads, target {}\n",
        result.scenario,
        result.clients,
        result.duration_s,
        result.events_per_request,
        result.payload_bytes,
        result.target,
    );
    text.push_str(&format!(
        "  requests  {:>10}  {:>10.1}/s\n  events    {:>10}  {:>10.1}/s\n  errors    {:>10}\n",
        result.requests, result.requests_per_s, result.events, result.events_per_s, result.errors
    ));
    // What the headline latency is the latency of.
    let label = match result.scenario {
        "e2e" if result.visibility.is_some() => "visible ",
        "e2e" => "delivery",
        "group" => "claims  ",
        _ => "latency ",
    };
    text.push_str(&format!(
        "  {label}  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms\n",
        latency.p50, latency.p90, latency.p99, latency.p99_9, latency.max
    ));
    if let Some(e2e) = &result.e2e {
        text.push_str(&e2e.summary());
    }
    if let Some(group) = &result.group {
        text.push_str(&group.summary());
    }
    if let Some(query) = &result.query {
        text.push_str(&query.summary());
    }
    if let Some(visibility) = &result.visibility {
        text.push_str(&visibility.summary());
    }
    for sample in &result.error_samples {
        text.push_str(&format!("  error: {sample}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_bodies_are_append_requests_with_payloads_of_the_asked_size() {
        let template = BodyTemplate::new(3, 300);
        let body = template.render(0x1234);
        let request: cairn_api::AppendRequest = serde_json::from_slice(&body).unwrap();
        assert_eq!(request.events.len(), 3);
        for (index, event) in request.events.iter().enumerate() {
            assert_eq!(event.data.get().len(), 300);
            let data: serde_json::Value = serde_json::from_str(event.data.get()).unwrap();
            let expected = format!("{:016x}", 0x1234u64 * 1000 + index as u64);
            assert_eq!(data["n"], expected.as_str());
        }
        assert_ne!(template.render(1), template.render(2));
    }
}
