//! The command line, as clap sees it. Every flag's help says its default and its
//! `CAIRN_*` variable; settings are validated in [`crate::settings`].

use std::path::PathBuf;

use cairn_client::ExpectedVersion;
use clap::{Args, Parser, Subcommand, ValueEnum};
use uuid::Uuid;

const MAIN_EXAMPLES: &str = "\
Examples:
  cairn serve --data-dir /var/lib/cairn
  cairn append order-17 --type OrderPlaced --data '{\"total\": 42}'
  cairn read order-17
  cairn read --all --category order --follow-pages
  cairn streams --prefix order-
  cairn tail --category order
  cairn groups create billing --category order --ack-timeout 30s
  cairn projections list
  cairn query orders_by_customer customer=c-42 limit=10
  cairn bench append-batch --clients 8 --duration 30s
  cairn top";

const SERVE_EXAMPLES: &str = "\
Settings come from flags, then CAIRN_* environment variables, then the --config file,
then the defaults, in that order of precedence. See cairn.example.toml for every key.

Projections and named queries (the CQRS read side) are `[[projections]]` and
`[[queries]]` tables in the --config file only; they are checked before the server
listens, and their read models live in readmodels.db beside events.db in --data-dir.

Examples:
  cairn serve
  cairn serve --listen 0.0.0.0:7171 --data-dir /var/lib/cairn --log-format json
  CAIRN_REQUEST_TIMEOUT=10s cairn serve --config /etc/cairn/cairn.toml
  cairn serve --config examples/shop/cairn.toml --data-dir /tmp/shop
  cairn serve --config cairn.toml --print-config
  cairn serve --listen 0.0.0.0:7443 --tls-cert /etc/cairn/cert.pem --tls-key /etc/cairn/key.pem

With --tls-cert and --tls-key Cairn serves HTTPS only (HTTP/2 and HTTP/1.1); SIGHUP
re-reads both files (and the API tokens) without a restart. Clients of a private CA
pass --ca-cert, e.g. `cairn read order-17 --url https://cairn:7443 --ca-cert ca.pem`.

Traces (OpenTelemetry over OTLP/gRPC) use the standard variables and are off unless an
endpoint is set: OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT),
e.g. http://localhost:4317; OTEL_SERVICE_NAME [default: cairn]; OTEL_TRACES_SAMPLER and
OTEL_TRACES_SAMPLER_ARG, e.g. parentbased_traceidratio and 0.01 for 1%; OTEL_BSP_*;
OTEL_SDK_DISABLED=true turns them off. A write's W3C traceparent header is continued,
and each event stores the trace context as $traceparent in its metadata.
  OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317 OTEL_SERVICE_NAME=cairn cairn serve";

const APPEND_EXAMPLES: &str = "\
Examples:
  cairn append order-17 --type OrderPlaced --data '{\"total\": 42}' --tag customer:7
  cairn append order-17 --type OrderShipped --data '{}' --expected-version 0
  cairn append order-17 --file events.jsonl
  generate-events | cairn append order-17 --file -

A JSON Lines file holds one event a line: {\"type\", \"data\", \"metadata\"?, \"tags\"?, \"id\"?}.
Its events are appended in batches of up to --batch-size, each batch atomically. The
expected version applies to the first batch; unless it is `any`, later batches expect
the previous batch's last version, so the file lands contiguously or stops at the first
conflict.";

const READ_EXAMPLES: &str = "\
Examples:
  cairn read order-17
  cairn read order-17 --from 10 --limit 5
  cairn read order-17 --backward --limit 1
  cairn read --all --from-position 1000 --follow-pages
  cairn read --all --category order --types OrderPlaced,OrderShipped --tags customer:7

Events are printed as JSON Lines on stdout.";

const STREAMS_EXAMPLES: &str = "\
Examples:
  cairn streams
  cairn streams --prefix order- --limit 20";

const TAIL_EXAMPLES: &str = "\
Examples:
  cairn tail
  cairn tail --category order --types OrderPlaced,OrderShipped
  cairn tail --stream order-17 --from 1
  cairn tail --tags customer:7 --format json | jq .data

Events are printed as they are appended: one readable line each on a terminal, JSON Lines
(the event as `cairn read` prints it) otherwise. Without --from only new events are shown.
A dropped connection (a server restart, a slow terminal) is resumed after the last event
shown, with no gap and no duplicate. Ctrl-C stops.";

const GROUPS_EXAMPLES: &str = "\
Examples:
  cairn groups list
  cairn groups create billing --category order --ack-timeout 30s --max-deliveries 5
  cairn groups create shipping --from 1 --types OrderPaid --ordering per_stream
  cairn groups status billing
  cairn groups parked billing
  cairn groups replay-parked billing --position 42 --position 43
  cairn groups delete billing

A consumer group hands each matching event to one of its consumers (competing
consumers) and redelivers it until it is acknowledged; after --max-deliveries it is
parked. Output is readable text on a terminal and JSON otherwise.";

const GROUPS_CREATE_EXAMPLES: &str = "\
Examples:
  cairn groups create billing --category order
  cairn groups create audit --from 1 --tags customer:7 --ack-timeout 2m
  cairn groups create shipping --types OrderPaid,OrderCancelled --ordering per_stream

On an existing group this replaces its settings (flags left out take their defaults)
and keeps its checkpoint; --from only applies when the group is created.";

const PROJECTIONS_EXAMPLES: &str = "\
Examples:
  cairn projections list
  cairn projections status orders
  cairn projections restart orders
  cairn projections rebuild orders --wait

Projections are configured as [[projections]] in the server's settings file. A failed
projection has stopped at the event whose statement failed (status shows its position,
type and the database's message): `restart` retries that event (fix its cause first),
`rebuild` drops the read model (teardown, setup) and replays the whole log. Output is
readable text on a terminal and JSON otherwise.";

const QUERY_EXAMPLES: &str = "\
Examples:
  cairn query orders_by_customer customer=c-42
  cairn query orders_by_customer customer=c-42 limit=10 --format json
  cairn query order id=o-17 --min-position 1234 --wait 2s
  cairn query top_customers | jq '.rows[].id'

Parameters are NAME=VALUE pairs, typed and checked by the server as the query declares
them. --min-position answers only once the read model reflects that log position (an
append's last_position: read-your-writes), waiting up to --wait for it (without --wait it
is checked once); otherwise the query fails with consistency_timeout. On a terminal the
rows are a table; otherwise one JSON object: {\"rows\": [...], \"position\": N}.";

const BENCH_EXAMPLES: &str = "\
Without --url an embedded server is started on a temporary data directory and an
ephemeral port, and removed afterwards.

Scenarios:
  append        one event per request, closed loop, --clients at a time
  append-batch  --batch-size events per request
  read          pages of 100 events from pre-populated streams
  e2e           appends at --rate events/s while --subscribers SSE subscribers follow the
                log; latency is from the append being sent to the event's delivery
  group         pre-appends --events events, then --workers consumer-group workers claim
                (--batch-size at a time) and ack at once; latency is the claim's
  query         pre-appends --events events that the bench projection upserts into
                --keys rows, reports how fast the projection caught up, then --clients
                query one row by a random key; the embedded server's query cache is off
                unless --cached, which asks for a few keys only, so the cache serves them
  e2e --query   appends at --rate and asks the bench query for each event with
                min_position: latency is from the append being sent to the event being
                visible in the query's answer

The query scenarios need the bench's projection and query: the embedded server is
started with them; a server given by --url must have them in its settings file
(`cairn bench query --print-read-side` prints them as TOML).

Against a server given by --url every request carries --token, whose scopes must be
append and read (admin for the group scenario, which creates its group), and trusts
--ca-cert; the embedded server needs neither.

Examples:
  cairn bench
  cairn bench append-batch --batch-size 500 --clients 4 --duration 30s
  cairn bench read --url http://127.0.0.1:7171 --json > result.json
  cairn bench e2e --rate 5000 --subscribers 100 --duration 30s
  cairn bench group --events 100000 --workers 8
  cairn bench query --events 100000 --keys 10000 --clients 16 --duration 10s
  cairn bench query --cached --json
  cairn bench e2e --query --rate 2000";

/// Cairn: an event-sourcing and CQRS server in one binary.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, after_help = MAIN_EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the Cairn server.
    #[command(after_help = SERVE_EXAMPLES)]
    Serve(Box<ServeArgs>),
    /// Append events to a stream.
    #[command(after_help = APPEND_EXAMPLES)]
    Append(AppendArgs),
    /// Read a stream, or the global log with --all.
    #[command(after_help = READ_EXAMPLES)]
    Read(ReadArgs),
    /// List stream names, one a line.
    #[command(after_help = STREAMS_EXAMPLES)]
    Streams(StreamsArgs),
    /// Print events as they are appended (follows the log over Server-Sent Events).
    #[command(after_help = TAIL_EXAMPLES)]
    Tail(TailArgs),
    /// Manage consumer groups: list, status, create, delete, parked events.
    #[command(after_help = GROUPS_EXAMPLES)]
    Groups(GroupsArgs),
    /// Inspect and operate the read side's projections: list, status, restart, rebuild.
    #[command(after_help = PROJECTIONS_EXAMPLES)]
    Projections(ProjectionsArgs),
    /// Run a named query over the read models.
    #[command(after_help = QUERY_EXAMPLES)]
    Query(QueryArgs),
    /// Load-test a Cairn server and report throughput and latency percentiles.
    #[command(after_help = BENCH_EXAMPLES)]
    Bench(BenchArgs),
    /// Manage API tokens: create one (prints its secret and the block for cairn.toml).
    #[command(after_help = TOKEN_EXAMPLES)]
    Token(TokenArgs),
    /// Watch a running Cairn live: request rates, latency, appends, lag, caches, pools, memory.
    #[command(after_help = TOP_EXAMPLES)]
    Top(TopArgs),
    /// Write the whole log (or from a position) as JSON Lines, read straight from the store.
    #[command(after_help = EXPORT_EXAMPLES)]
    Export(ExportArgs),
    /// Load a `cairn export` file into an empty store, keeping ids, versions, positions and times.
    #[command(after_help = IMPORT_EXAMPLES)]
    Import(ImportArgs),
    /// Apply the migrations the event store lacks (as `cairn serve` does at start), print its schema version, and exit.
    #[command(after_help = MIGRATE_EXAMPLES)]
    Migrate(StoreArgs),
}

const MIGRATE_EXAMPLES: &str = "\
Examples:
  cairn migrate --data-dir ./cairn-data
  cairn migrate --database-url postgres://cairn:secret@db:5432/cairn";

const EXPORT_EXAMPLES: &str = "\
Examples:
  cairn export --data-dir /var/lib/cairn --output cairn.jsonl
  cairn export --database-url postgres://cairn:secret@db/cairn | gzip > cairn.jsonl.gz
  cairn export --config /etc/cairn/cairn.toml --from-position 1000001 -o tail.jsonl

The store is opened directly, as `cairn serve` would open it (--data-dir or
--database-url, also from CAIRN_* variables and the --config file); no server is
needed. The embedded store must not be in use by a running server; on PostgreSQL the
export reads up to the head it found at start while servers keep running.

The first line is a header {\"cairn_export\":1,\"from_position\",\"head_position\"}; then one
event a line, in position order, as the HTTP API shows events (data and metadata byte for
byte, recorded_at to the microsecond); then one {\"tombstone\":{...}} line per deleted
stream (always all of them). Idempotency keys, consumer groups and read models are not
exported. A progress bar is shown on a terminal.";

const IMPORT_EXAMPLES: &str = "\
Examples:
  cairn import cairn.jsonl --database-url postgres://cairn:secret@db/cairn
  gunzip -c cairn.jsonl.gz | cairn import - --data-dir /var/lib/cairn-new
  cairn import cairn.jsonl --database-url postgres://cairn:secret@db/cairn --resume

The target must be empty. Records are imported in batches of --batch-size, each checked
whole (positions gapless and continuing the target's head, stream versions contiguous,
ids unique, times never going backwards, no event after a stream's tombstone) and
written in one transaction: a bad line stops the import with its line number, and
nothing of its batch is written; a file that ends before the head its header names is
refused as cut short. Later appends continue after the last imported
position. --resume continues an import that stopped: lines up to the target's head are
checked against it and skipped. Idempotency keys are not imported (they protect retries
against the source); set up consumer groups again; projections rebuild from the log.";

const TOP_EXAMPLES: &str = "\
Examples:
  cairn top
  cairn top --url http://cairn-1:7171 --token \"$CAIRN_TOKEN\" --interval 2s
  cairn top --once > frame.txt

Every --interval the server's /metrics is read again and the screen redrawn: rates and
p50/p99 latencies are over the last interval, gauges (head, lag, pools, memory) as they
are now. /metrics needs any valid API token unless the server runs with
--metrics-public. A server that cannot be reached is shown as an error line above the
last frame and read again next interval. Ctrl-C quits.";

/// `cairn top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Time between two frames; rates and percentiles are over it.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration_arg)]
    pub interval: std::time::Duration,
    /// Print one frame (from two reads one --interval apart) without clearing the screen, then exit; fails if the server cannot be read.
    #[arg(long)]
    pub once: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

const TOKEN_EXAMPLES: &str = "\
Examples:
  cairn token create --name orders-service --scopes read,append --streams order-
  cairn token create --name ops --scopes admin";

/// `cairn token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token: prints `token: <secret>` and the [[auth.tokens]] block to paste
    /// into cairn.toml (which holds only the secret's SHA-256).
    Create {
        /// The token's name, shown in logs.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Comma-separated scopes: read, append, admin (admin implies the others).
        #[arg(long, value_name = "SCOPES", value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// A stream-name prefix the token is limited to (repeatable); none: every stream.
        #[arg(long = "streams", value_name = "PREFIX")]
        streams: Vec<String>,
    },
}

/// `cairn serve`. Every value is optional here: what is absent comes from the file or
/// the defaults (see `Settings::resolve`).
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML settings file (see cairn.example.toml); unknown keys are errors.
    #[arg(long, env = "CAIRN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on, IP:PORT [default: 127.0.0.1:7171].
    #[arg(long, env = "CAIRN_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Folder of the embedded database; created when missing [default: ./cairn-data].
    #[arg(long, env = "CAIRN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log format [default: json when stderr is not a terminal, pretty otherwise].
    #[arg(long, env = "CAIRN_LOG_FORMAT", value_name = "FORMAT", value_parser = ["json", "pretty"])]
    pub log_format: Option<String>,
    /// Log level or filter, e.g. info, debug, cairn_server=debug [default: info: a line per request; warn leaves them out]. RUST_LOG wins when set.
    #[arg(long, env = "CAIRN_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// How long idempotency keys are remembered, e.g. 24h, 30m [default: 24h].
    #[arg(long, env = "CAIRN_IDEMPOTENCY_WINDOW", value_name = "DURATION")]
    pub idempotency_window: Option<String>,
    /// Read connections to the embedded database [default: 4].
    #[arg(long, env = "CAIRN_READ_CONNECTIONS", value_name = "N")]
    pub read_connections: Option<usize>,
    /// Threads serving requests; fewer leave cores to a database on the same machine [default: one per core].
    #[arg(long, env = "CAIRN_WORKER_THREADS", value_name = "N")]
    pub worker_threads: Option<usize>,
    /// Longest time a request may take before it is answered 503, e.g. 30s, 500ms; 0s for no limit [default: 30s].
    #[arg(long, env = "CAIRN_REQUEST_TIMEOUT", value_name = "DURATION")]
    pub request_timeout: Option<String>,
    /// Largest request body, in bytes [default: 8388608].
    #[arg(long, env = "CAIRN_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Most events in one append request [default: 1000].
    #[arg(long, env = "CAIRN_MAX_EVENTS_PER_REQUEST", value_name = "N")]
    pub max_events_per_request: Option<usize>,
    /// Largest event (data plus metadata), in bytes [default: 1048576].
    #[arg(long, env = "CAIRN_MAX_EVENT_BYTES", value_name = "BYTES")]
    pub max_event_bytes: Option<usize>,
    /// Deepest nesting of arrays and objects in a request body [default: 64].
    #[arg(long, env = "CAIRN_MAX_JSON_DEPTH", value_name = "N")]
    pub max_json_depth: Option<usize>,
    /// Bytes of named-query results the read side may cache; 0 turns the cache off [default: 67108864].
    #[arg(long, env = "CAIRN_QUERY_CACHE_BYTES", value_name = "BYTES")]
    pub query_cache_bytes: Option<u64>,
    /// Events a projection gathers into one transaction when it is behind (a page of the log or one commit is never split) [default: 2000].
    #[arg(long, env = "CAIRN_PROJECTION_BATCH_SIZE", value_name = "N")]
    pub projection_batch_size: Option<usize>,
    /// Refuse to start while a query or projection statement reads a whole table or sorts without an index (each plan warning is listed).
    #[arg(long, env = "CAIRN_STRICT_PLANS")]
    pub strict_plans: bool,
    /// Log queries and projection statements slower than this, with their plan, e.g. 50ms; 0s turns the log off [default: 50ms].
    #[arg(long, env = "CAIRN_SLOW_QUERY_THRESHOLD", value_name = "DURATION")]
    pub slow_query_threshold: Option<String>,
    /// Requests served at once (subscriptions and claims excepted); beyond, 503 [default: 1024].
    #[arg(long, env = "CAIRN_MAX_CONCURRENT_REQUESTS", value_name = "N")]
    pub max_concurrent_requests: Option<usize>,
    /// Sustained requests per second per token (per IP without auth) [default: no limit].
    #[arg(long, env = "CAIRN_RATE_LIMIT_PER_SECOND", value_name = "N")]
    pub rate_limit_per_second: Option<f64>,
    /// Requests a token may make at once above its rate [default: 1].
    #[arg(long, env = "CAIRN_RATE_LIMIT_BURST", value_name = "N")]
    pub rate_limit_burst: Option<u32>,
    /// Live SSE subscriptions per token (per IP without auth); beyond, 429 [default: 100].
    #[arg(long, env = "CAIRN_MAX_SUBSCRIPTIONS_PER_TOKEN", value_name = "N")]
    pub max_subscriptions_per_token: Option<usize>,
    /// Consumer-group claims (long polls) in progress per token (per IP without auth); beyond, 429 [default: 100].
    #[arg(long, env = "CAIRN_MAX_CLAIMS_PER_TOKEN", value_name = "N")]
    pub max_claims_per_token: Option<usize>,
    /// Longest time a client may take to send a request's head, e.g. 10s; 0s for no limit [default: 10s].
    #[arg(long, env = "CAIRN_HEADER_READ_TIMEOUT", value_name = "DURATION")]
    pub header_read_timeout: Option<String>,
    /// Serve /metrics without a token.
    #[arg(long, env = "CAIRN_METRICS_PUBLIC")]
    pub metrics_public: bool,
    /// Serve a non-loopback address without API tokens (anyone who can reach it can do anything).
    #[arg(long, env = "CAIRN_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Serve HTTPS: PEM file of the server's certificate chain (leaf first); needs --tls-key. Re-read on SIGHUP [default: plain HTTP].
    #[arg(long, env = "CAIRN_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the private key of --tls-cert (PKCS#8, PKCS#1 or SEC1). Re-read on SIGHUP.
    #[arg(long, env = "CAIRN_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PostgreSQL primary for the event store (postgres://USER:PASSWORD@HOST:PORT/DB); absent: the embedded SQLite in --data-dir.
    #[arg(long, env = "CAIRN_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// A PostgreSQL streaming replica for reads (repeatable; CAIRN_REPLICA_URLS is comma-separated). Needs --database-url.
    #[arg(
        long = "replica-url",
        env = "CAIRN_REPLICA_URLS",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub replica_urls: Vec<String>,
    /// Connections to the PostgreSQL primary, and to each replica, at most [default: 16].
    #[arg(long, env = "CAIRN_POOL_SIZE", value_name = "N")]
    pub pool_size: Option<usize>,
    /// With PostgreSQL: the URL other instances reach this one at; consumer-group requests are forwarded to the instance driving the group (over HTTPS when serving TLS, trusting the certificates in --tls-cert's file) [default: http(s)://<listen address>].
    #[arg(long, env = "CAIRN_ADVERTISE_URL", value_name = "URL")]
    pub advertise_url: Option<String>,
    /// With PostgreSQL: the schema of the read models (the projections' tables and Cairn's `cairn_projections`), shared by the instances of one deployment; give deployments that share a database one each [default: cairn_readmodels].
    #[arg(long, env = "CAIRN_READMODEL_SCHEMA", value_name = "NAME")]
    pub readmodel_schema: Option<String>,
    /// Redis shared by every instance for named-query results (redis://[:PASSWORD@]HOST:PORT[/DB]), behind the in-process cache; Redis down is a cache miss [default: none].
    #[arg(long, env = "CAIRN_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// Print the effective settings as JSON and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// Where `cairn export` and `cairn import` find the event store: as `cairn serve` does.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// TOML settings file of the server (its data_dir and database_url are used).
    #[arg(long, env = "CAIRN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Folder of the embedded database [default: ./cairn-data].
    #[arg(long, env = "CAIRN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL event store (postgres://USER:PASSWORD@HOST:PORT/DB) instead of the embedded one.
    #[arg(long, env = "CAIRN_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
}

/// `cairn export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The first position to export; an export from position N continues a store whose head is N - 1 (`cairn import --resume`).
    #[arg(long, value_name = "POSITION", default_value_t = 1)]
    pub from_position: u64,
    /// Write to this file instead of stdout (`-` is stdout).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// `cairn import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The export to read; `-` or nothing reads stdin.
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Records checked and written in one transaction.
    #[arg(long, value_name = "N", default_value_t = 5000)]
    pub batch_size: usize,
    /// Continue an import into a store that is not empty: lines up to its head are checked and skipped.
    #[arg(long)]
    pub resume: bool,
}

/// Where the server is, for the client commands.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Cairn's base URL.
    #[arg(
        long,
        env = "CAIRN_URL",
        value_name = "URL",
        default_value = "http://127.0.0.1:7171"
    )]
    pub url: String,
    #[command(flatten)]
    pub credentials: Credentials,
}

/// What a client presents to a server: the CA it trusts and the token it sends.
#[derive(Debug, Clone, Default, Args)]
pub struct Credentials {
    /// PEM file of a CA certificate to trust for https:// URLs, besides the system's (e.g. a private CA).
    #[arg(long, env = "CAIRN_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// API token sent as `Authorization: Bearer` (see `cairn token create`); needed
    /// when the server has tokens configured.
    #[arg(
        long,
        env = "CAIRN_TOKEN",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct AppendArgs {
    /// The stream to append to, e.g. order-17.
    pub stream: String,
    /// The event's type (one event from the command line).
    #[arg(
        long = "type",
        short = 't',
        value_name = "TYPE",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    pub event_type: Option<String>,
    /// The event's data, any JSON value.
    #[arg(
        long,
        short = 'd',
        value_name = "JSON",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    pub data: Option<String>,
    /// The event's metadata, a JSON object.
    #[arg(long, value_name = "JSON", conflicts_with = "file")]
    pub metadata: Option<String>,
    /// A tag for cross-stream reads, e.g. customer:7 (repeatable).
    #[arg(long = "tag", value_name = "TAG", conflicts_with = "file")]
    pub tags: Vec<String>,
    /// The event's id (a UUID); Cairn assigns one when absent.
    #[arg(long, value_name = "UUID", conflicts_with = "file")]
    pub id: Option<Uuid>,
    /// Append the events of a JSON Lines file instead; `-` reads stdin.
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The stream's expected version: a number (the last version), no_stream, exists or any.
    #[arg(long, short = 'e', value_name = "VERSION", default_value = "any", value_parser = parse_expected_version)]
    pub expected_version: ExpectedVersion,
    /// Events per request when appending a file (1–1000).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch_size: u16,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn parse_expected_version(text: &str) -> Result<ExpectedVersion, String> {
    match text {
        "any" => Ok(ExpectedVersion::Any),
        "no_stream" | "no-stream" => Ok(ExpectedVersion::NoStream),
        "exists" => Ok(ExpectedVersion::Exists),
        number => number.parse().map(ExpectedVersion::Exact).map_err(|_| {
            format!("{number:?} is not an expected version; use a number, no_stream, exists or any")
        }),
    }
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// The stream to read (or --all for the global log).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub stream: Option<String>,
    /// Read the global log instead of one stream.
    #[arg(long)]
    pub all: bool,
    /// Stream version to start at [default: the start, or the end with --backward].
    #[arg(long, value_name = "VERSION", conflicts_with = "all")]
    pub from: Option<u64>,
    /// Events per page (the server caps it at 1000).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Read the stream from the newest event to the oldest.
    #[arg(long, conflicts_with = "all")]
    pub backward: bool,
    /// Keep reading page after page to the end.
    #[arg(long)]
    pub follow_pages: bool,
    /// Global position to start at [default: 1].
    #[arg(long, value_name = "POSITION", requires = "all")]
    pub from_position: Option<u64>,
    /// Only events of streams in this category (`order` for `order-17`).
    #[arg(long, value_name = "CATEGORY", requires = "all")]
    pub category: Option<String>,
    /// Only events of these types (comma-separated: any of them).
    #[arg(long, value_name = "TYPES", value_delimiter = ',', requires = "all")]
    pub types: Vec<String>,
    /// Only events with these tags (comma-separated: all of them).
    #[arg(long, value_name = "TAGS", value_delimiter = ',', requires = "all")]
    pub tags: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct StreamsArgs {
    /// Only streams whose names start with this.
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// Start after this stream name.
    #[arg(long, value_name = "NAME")]
    pub after: Option<String>,
    /// Print at most this many names [default: all].
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// How `cairn tail` prints events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TailFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per event (JSON Lines).
    Json,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Global position to start at, inclusive (1: the whole log) [default: new events only].
    #[arg(long, value_name = "POSITION", value_parser = clap::value_parser!(u64).range(1..))]
    pub from: Option<u64>,
    /// Only events of streams in this category (`order` for `order-17`).
    #[arg(long, value_name = "CATEGORY")]
    pub category: Option<String>,
    /// Only events of these types (comma-separated: any of them).
    #[arg(long, value_name = "TYPES", value_delimiter = ',')]
    pub types: Vec<String>,
    /// Only events with these tags (comma-separated: all of them).
    #[arg(long, value_name = "TAGS", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Only events of this stream.
    #[arg(long, value_name = "STREAM")]
    pub stream: Option<String>,
    /// Output format [default: text on a terminal, json otherwise].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<TailFormat>,
    /// Exit after printing this many events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct GroupsArgs {
    #[command(subcommand)]
    pub command: GroupsCommand,
}

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// List every consumer group with its checkpoint, lag and counts.
    List(GroupsListArgs),
    /// Show one group: checkpoint, head, lag, in flight, waiting, parked and settings.
    Status(GroupNameArgs),
    /// Create a group, or replace an existing group's settings.
    #[command(after_help = GROUPS_CREATE_EXAMPLES)]
    Create(GroupCreateArgs),
    /// Delete a group with its checkpoint and parked events.
    Delete(GroupNameArgs),
    /// List a group's parked events (those that ran out of deliveries).
    Parked(GroupParkedArgs),
    /// Bring parked events back into delivery: all of them, or those given.
    ReplayParked(GroupReplayArgs),
}

#[derive(Debug, Args)]
pub struct GroupsListArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct GroupNameArgs {
    /// The group's name.
    pub group: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Delivery order within a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OrderingArg {
    /// Any events may be in flight together.
    None,
    /// At most one event per stream in flight, in version order.
    #[value(name = "per_stream", alias = "per-stream")]
    PerStream,
}

#[derive(Debug, Args)]
pub struct GroupCreateArgs {
    /// The group's name.
    pub group: String,
    /// The first global position the group delivers, on creation [default: 1].
    #[arg(long, value_name = "POSITION", value_parser = clap::value_parser!(u64).range(1..))]
    pub from: Option<u64>,
    /// Only events of streams in this category (`order` for `order-17`).
    #[arg(long, value_name = "CATEGORY")]
    pub category: Option<String>,
    /// Only events of these types (comma-separated: any of them).
    #[arg(long, value_name = "TYPES", value_delimiter = ',')]
    pub types: Vec<String>,
    /// Only events with these tags (comma-separated: all of them).
    #[arg(long, value_name = "TAGS", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Only events of this stream.
    #[arg(long, value_name = "STREAM")]
    pub stream: Option<String>,
    /// How long a claimed event may stay unacknowledged before it is delivered again, e.g. 30s, 2m [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub ack_timeout: Option<std::time::Duration>,
    /// Deliveries of one event before it is parked [default: 5].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_deliveries: Option<u32>,
    /// Delivery order: none, or per_stream (one event per stream in flight) [default: none].
    #[arg(long, value_enum, value_name = "ORDERING")]
    pub ordering: Option<OrderingArg>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct GroupParkedArgs {
    /// The group's name.
    pub group: String,
    /// Start after this position.
    #[arg(long, value_name = "POSITION")]
    pub after: Option<u64>,
    /// Print at most this many [default: all].
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct GroupReplayArgs {
    /// The group's name.
    pub group: String,
    /// A parked event's position (repeatable, or comma-separated) [default: every parked event].
    #[arg(long = "position", value_name = "POSITION", value_delimiter = ',')]
    pub positions: Vec<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct ProjectionsArgs {
    #[command(subcommand)]
    pub command: ProjectionsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// List every projection with its state, position, lag and rate.
    List(ProjectionsListArgs),
    /// Show one projection: state, position, head, lag, rate, last error.
    Status(ProjectionNameArgs),
    /// Resume a projection from its checkpoint (after a failure: retry the failing event).
    Restart(ProjectionNameArgs),
    /// Rebuild a projection's read model from the whole log (teardown, setup, replay).
    Rebuild(ProjectionRebuildArgs),
}

#[derive(Debug, Args)]
pub struct ProjectionsListArgs {
    /// Output format [default: text on a terminal, json otherwise].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<OutputFormat>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct ProjectionNameArgs {
    /// The projection's name, as configured.
    pub name: String,
    /// Output format [default: text on a terminal, json otherwise].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<OutputFormat>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct ProjectionRebuildArgs {
    #[command(flatten)]
    pub projection: ProjectionNameArgs,
    /// Wait until the replay has caught up with the log as it was when the rebuild began.
    #[arg(long)]
    pub wait: bool,
}

/// How a client command prints its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Readable text (tables).
    Text,
    /// JSON.
    Json,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The query's name, as configured ([[queries]] in the server's settings).
    pub name: String,
    /// The query's parameters, NAME=VALUE (e.g. customer=c-42 limit=10).
    #[arg(value_name = "NAME=VALUE", value_parser = parse_query_param)]
    pub params: Vec<(String, String)>,
    /// Answer only once the rows reflect this log position (read-your-writes).
    #[arg(long, value_name = "POSITION", conflicts_with = "explain")]
    pub min_position: Option<u64>,
    /// Show the plan SQLite would use (and its warnings) instead of the rows; needs an admin token. A required parameter may be left out.
    #[arg(long)]
    pub explain: bool,
    /// With --explain: also run the query and report its duration and row count.
    #[arg(long, requires = "explain")]
    pub analyze: bool,
    /// How long the server may wait for --min-position, e.g. 500ms, 2s (at most 60s) [default: check once].
    #[arg(long, value_name = "DURATION", requires = "min_position", value_parser = parse_query_wait)]
    pub wait: Option<std::time::Duration>,
    /// Output format [default: text on a terminal, json otherwise].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<OutputFormat>,
    #[command(flatten)]
    pub client: ClientArgs,
}

fn parse_query_param(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!(
            "{text:?} is not a parameter; write NAME=VALUE, e.g. customer=c-42"
        )),
    }
}

fn parse_query_wait(text: &str) -> Result<std::time::Duration, String> {
    let wait = crate::settings::parse_duration(text)?;
    if wait > std::time::Duration::from_secs(60) {
        return Err("the wait can be at most 60s".into());
    }
    Ok(wait)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// One event per append request, each client on its own stream.
    Append,
    /// --batch-size events per append request.
    AppendBatch,
    /// Reads of 100 events from a few pre-populated streams.
    Read,
    /// Appends at --rate while --subscribers SSE subscribers receive them: append-to-delivery latency.
    E2e,
    /// --workers consumer-group workers claim and ack --events pre-appended events.
    Group,
    /// Point queries by random key over a projection of --events pre-appended events.
    Query,
}

impl Scenario {
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Append => "append",
            Scenario::AppendBatch => "append-batch",
            Scenario::Read => "read",
            Scenario::E2e => "e2e",
            Scenario::Group => "group",
            Scenario::Query => "query",
        }
    }
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum, default_value = "append")]
    pub scenario: Scenario,
    /// Concurrent clients, each sending one request at a time.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub clients: u32,
    /// How long to run, e.g. 10s, 1m.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration_arg)]
    pub duration: std::time::Duration,
    /// Size of each event's data, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 300)]
    pub payload_bytes: usize,
    /// Events per request in the append-batch scenario; events per claim in the group scenario (1–1000).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch_size: u16,
    /// e2e: events appended per second, spread over the clients (open loop).
    #[arg(long, value_name = "EVENTS_PER_S", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate: u32,
    /// e2e: SSE subscribers receiving every event.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub subscribers: u32,
    /// group, query: events appended before the run starts.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub events: u64,
    /// query: distinct keys (read-model rows) the pre-appended events are spread over.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=4_000_000_000))]
    pub keys: u64,
    /// query: ask for a few keys only, so that answers come from the query cache.
    #[arg(long)]
    pub cached: bool,
    /// e2e: measure append-to-visible latency in the bench query (min_position) instead
    /// of SSE delivery.
    #[arg(long)]
    pub query: bool,
    /// Print the bench's projection and query as TOML (for a server's settings file) and exit.
    #[arg(long)]
    pub print_read_side: bool,
    /// group: consumer-group workers, each claiming and acking one batch at a time.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    /// The server to load; an embedded server on a temporary directory when absent.
    #[arg(long, env = "CAIRN_URL", value_name = "URL")]
    pub url: Option<String>,
    /// With --url: the CA to trust and the token every request sends.
    #[command(flatten)]
    pub credentials: Credentials,
    /// Print the result as JSON on stdout (the human summary goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Show progress even when stderr is not a terminal.
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

fn parse_duration_arg(text: &str) -> Result<std::time::Duration, String> {
    let duration = crate::settings::parse_duration(text)?;
    if duration.is_zero() {
        return Err("the duration must be more than 0".into());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn expected_versions_parse() {
        assert_eq!(parse_expected_version("7"), Ok(ExpectedVersion::Exact(7)));
        assert_eq!(
            parse_expected_version("no_stream"),
            Ok(ExpectedVersion::NoStream)
        );
        assert!(parse_expected_version("-1").is_err());
        assert!(parse_expected_version("latest").is_err());
    }

    #[test]
    fn query_parameters_are_name_value_pairs() {
        assert_eq!(
            parse_query_param("customer=c=42"),
            Ok(("customer".into(), "c=42".into()))
        );
        assert_eq!(
            parse_query_param("note="),
            Ok(("note".into(), String::new()))
        );
        assert!(parse_query_param("customer").is_err());
        assert!(parse_query_param("=x").is_err());
        assert!(parse_query_wait("61s").is_err());
        assert_eq!(
            parse_query_wait("2s"),
            Ok(std::time::Duration::from_secs(2))
        );
    }
}
