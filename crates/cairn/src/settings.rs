//! `cairn serve`'s settings: layered command-line flags > `CAIRN_*` environment
//! variables > the TOML file > defaults. Flags and variables arrive together through clap
//! ([`ServeArgs`]); the file is read into [`RawSettings`] (unknown keys are errors); the
//! merge is validated into [`Settings`].
//!
//! The read side's `[[projections]]` and `[[queries]]` come from the file only (they
//! are SQL, not one-line values); they are checked as the read side will check them
//! when the settings are resolved, so a mistake stops `cairn serve` before it listens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_projection::{ProjectionConfig, QueryConfig};
use cairn_server::Limits;
use serde::Deserialize;

use crate::cli::ServeArgs;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7171";
pub const DEFAULT_DATA_DIR: &str = "./cairn-data";
pub const DEFAULT_LOG_LEVEL: &str = "info";
pub const DEFAULT_IDEMPOTENCY_WINDOW: &str = "24h";
pub const DEFAULT_REQUEST_TIMEOUT: &str = "30s";
pub const DEFAULT_READ_CONNECTIONS: usize = 4;
/// More worker threads than this is a typo, not a setting.
pub const MAX_WORKER_THREADS: usize = 1024;
/// 64 MiB of cached query results.
pub const DEFAULT_QUERY_CACHE_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_PROJECTION_BATCH_SIZE: usize = 2000;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object a line.
    Json,
    /// Human-readable lines.
    Pretty,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Pretty => "pretty",
        }
    }

    fn parse(value: &str) -> Result<Self, String> {
        match value {
            "json" => Ok(LogFormat::Json),
            "pretty" => Ok(LogFormat::Pretty),
            other => Err(format!(
                "{other:?} is not a log format; use \"json\" or \"pretty\""
            )),
        }
    }
}

/// The settings file as written: every key optional, unknown keys refused (inside
/// `[[projections]]` and `[[queries]]` too).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<String>,
    pub log_level: Option<String>,
    pub idempotency_window: Option<String>,
    pub read_connections: Option<usize>,
    pub worker_threads: Option<usize>,
    pub request_timeout: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub max_events_per_request: Option<usize>,
    pub max_event_bytes: Option<usize>,
    pub max_json_depth: Option<usize>,
    pub query_cache_bytes: Option<u64>,
    pub projection_batch_size: Option<usize>,
    pub strict_plans: Option<bool>,
    pub slow_query_threshold: Option<String>,
    /// File only.
    pub projections: Option<Vec<ProjectionConfig>>,
    /// File only.
    pub queries: Option<Vec<QueryConfig>>,
    pub max_concurrent_requests: Option<usize>,
    pub rate_limit_per_second: Option<f64>,
    pub rate_limit_burst: Option<u32>,
    pub max_subscriptions_per_token: Option<usize>,
    pub max_claims_per_token: Option<usize>,
    pub header_read_timeout: Option<String>,
    pub metrics_public: Option<bool>,
    pub insecure_no_auth: Option<bool>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// File only: the API tokens.
    pub auth: Option<crate::auth_settings::RawAuth>,
    pub database_url: Option<String>,
    pub replica_urls: Option<Vec<String>>,
    pub pool_size: Option<usize>,
    pub advertise_url: Option<String>,
    pub readmodel_schema: Option<String>,
    pub redis_url: Option<String>,
}

impl RawSettings {
    /// Every key the file may hold, in the order of `cairn.example.toml`.
    pub const KEYS: &'static [&'static str] = &[
        "listen",
        "data_dir",
        "log_format",
        "log_level",
        "idempotency_window",
        "read_connections",
        "worker_threads",
        "request_timeout",
        "max_body_bytes",
        "max_events_per_request",
        "max_event_bytes",
        "max_json_depth",
        "query_cache_bytes",
        "projection_batch_size",
        "strict_plans",
        "slow_query_threshold",
        "max_concurrent_requests",
        "rate_limit_per_second",
        "rate_limit_burst",
        "max_subscriptions_per_token",
        "max_claims_per_token",
        "header_read_timeout",
        "metrics_public",
        "insecure_no_auth",
        "tls_cert",
        "tls_key",
        "database_url",
        "replica_urls",
        "pool_size",
        "advertise_url",
        "readmodel_schema",
        "redis_url",
    ];

    /// The arrays of tables the file may hold (file only: no flag, no variable).
    pub const TABLES: &'static [&'static str] = &["projections", "queries"];

    /// Reads a settings file; errors name the file and, for a bad key, the key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid configuration file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|error| anyhow::anyhow!("{}", error.to_string().trim_end()))
    }

    /// The command line's (and environment's) values.
    fn from_args(args: &ServeArgs) -> Self {
        Self {
            listen: args.listen.clone(),
            data_dir: args.data_dir.clone(),
            log_format: args.log_format.clone(),
            log_level: args.log_level.clone(),
            idempotency_window: args.idempotency_window.clone(),
            read_connections: args.read_connections,
            worker_threads: args.worker_threads,
            request_timeout: args.request_timeout.clone(),
            max_body_bytes: args.max_body_bytes,
            max_events_per_request: args.max_events_per_request,
            max_event_bytes: args.max_event_bytes,
            max_json_depth: args.max_json_depth,
            query_cache_bytes: args.query_cache_bytes,
            projection_batch_size: args.projection_batch_size,
            strict_plans: args.strict_plans.then_some(true),
            slow_query_threshold: args.slow_query_threshold.clone(),
            projections: None,
            queries: None,
            max_concurrent_requests: args.max_concurrent_requests,
            rate_limit_per_second: args.rate_limit_per_second,
            rate_limit_burst: args.rate_limit_burst,
            max_subscriptions_per_token: args.max_subscriptions_per_token,
            max_claims_per_token: args.max_claims_per_token,
            header_read_timeout: args.header_read_timeout.clone(),
            metrics_public: args.metrics_public.then_some(true),
            insecure_no_auth: args.insecure_no_auth.then_some(true),
            tls_cert: args.tls_cert.clone(),
            tls_key: args.tls_key.clone(),
            auth: None,
            database_url: args.database_url.clone(),
            replica_urls: (!args.replica_urls.is_empty()).then(|| args.replica_urls.clone()),
            pool_size: args.pool_size,
            advertise_url: args.advertise_url.clone(),
            readmodel_schema: args.readmodel_schema.clone(),
            redis_url: args.redis_url.clone(),
        }
    }
}

/// Validated settings of `cairn serve`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `None`: json when stderr is not a terminal, pretty when it is.
    pub log_format: Option<LogFormat>,
    pub log_level: String,
    pub idempotency_window: Duration,
    pub read_connections: usize,
    /// The async runtime's worker threads, which serve the requests (the writers and
    /// the log have threads of their own).
    pub worker_threads: usize,
    /// Zero: no limit.
    pub request_timeout: Duration,
    pub limits: Limits,
    /// Bytes of query results the read side may cache; 0 turns the cache off.
    pub query_cache_bytes: u64,
    /// How many events a projection gathers into one transaction when it is behind
    /// (one page of the log, or one live commit, is never split).
    pub projection_batch_size: usize,
    /// Refuse to start while any plan warning stands.
    pub strict_plans: bool,
    /// Queries and projection statements slower than this are logged with their plan;
    /// `None`: the slow-query log is off (`0s`).
    pub slow_query_threshold: Option<Duration>,
    /// The read side's projections and queries, checked (names, placeholders,
    /// parameters), from the file.
    pub projections: Vec<ProjectionConfig>,
    pub queries: Vec<QueryConfig>,
    /// The file the settings were read from, if any.
    pub config_file: Option<PathBuf>,
    /// The API tokens (`[auth]`, file only); none: authentication off.
    pub tokens: cairn_server::auth::Tokens,
    /// Concurrency, rate and subscription limits.
    pub request_limits: cairn_server::limits::RequestLimits,
    /// `/metrics` without a token.
    pub metrics_public: bool,
    /// Serve a non-loopback address without tokens.
    pub insecure_no_auth: bool,
    /// Serve HTTPS with this certificate and key; `None`: plain HTTP.
    pub tls: Option<TlsFiles>,
    /// The event store on PostgreSQL instead of the embedded SQLite.
    pub database: Option<crate::backend::DatabaseSettings>,
    /// Where other instances on the same PostgreSQL reach this one (consumer-group
    /// requests are forwarded to the instance driving the group); `None`: the scheme
    /// and the address actually bound (`http://<listen address>`).
    pub advertise_url: Option<String>,
    /// The shared query-result cache (Redis); `None`: in-process only. `Debug` hides
    /// the password.
    pub redis: Option<cairn_projection::RedisCacheOptions>,
}

/// The PEM files of `cairn serve`'s TLS certificate (chain, leaf first) and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where a value came from, for error messages.
struct Origin<'a> {
    flag: &'static str,
    key: &'static str,
    file: Option<&'a Path>,
}

impl Origin<'_> {
    fn describe(&self, from_file: bool) -> String {
        match (from_file, self.file) {
            (true, Some(file)) => format!("`{}` in {}", self.key, file.display()),
            _ => format!(
                "--{} (or CAIRN_{})",
                self.flag,
                self.key.to_ascii_uppercase()
            ),
        }
    }
}

impl Settings {
    /// Resolves flags and environment (`args`) over the `--config` file over defaults.
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => RawSettings::load(path)?,
            None => RawSettings::default(),
        };
        Self::merge(&RawSettings::from_args(args), &file, args.config.as_deref())
    }

    /// `over` wins over `file`; both over the defaults.
    pub fn merge(
        over: &RawSettings,
        file: &RawSettings,
        file_path: Option<&Path>,
    ) -> anyhow::Result<Self> {
        /// The winning value and whether it came from the file.
        fn pick<'v, T>(over: &'v Option<T>, file: &'v Option<T>) -> Option<(&'v T, bool)> {
            over.as_ref()
                .map(|value| (value, false))
                .or_else(|| file.as_ref().map(|value| (value, true)))
        }
        let origin = |flag, key| Origin {
            flag,
            key,
            file: file_path,
        };

        let listen = match pick(&over.listen, &file.listen) {
            Some((value, from_file)) => parse_listen(value).with_context(|| {
                format!("invalid {}", origin("listen", "listen").describe(from_file))
            })?,
            None => parse_listen(DEFAULT_LISTEN)?,
        };
        let data_dir = pick(&over.data_dir, &file.data_dir).map_or_else(
            || PathBuf::from(DEFAULT_DATA_DIR),
            |(value, _)| value.clone(),
        );
        if data_dir.as_os_str().is_empty() {
            bail!("invalid data_dir: it must not be empty");
        }
        let log_format = match pick(&over.log_format, &file.log_format) {
            Some((value, from_file)) => Some(LogFormat::parse(value).map_err(|error| {
                anyhow::anyhow!(
                    "invalid {}: {error}",
                    origin("log-format", "log_format").describe(from_file)
                )
            })?),
            None => None,
        };
        let log_level = pick(&over.log_level, &file.log_level)
            .map_or_else(|| DEFAULT_LOG_LEVEL.to_owned(), |(value, _)| value.clone());
        let duration =
            |over: &Option<String>, file: &Option<String>, flag, key, default: &str| match pick(
                over, file,
            ) {
                Some((value, from_file)) => parse_duration(value).map_err(|error| {
                    anyhow::anyhow!("invalid {}: {error}", origin(flag, key).describe(from_file))
                }),
                None => Ok(parse_duration(default).expect("defaults parse")),
            };
        let idempotency_window = duration(
            &over.idempotency_window,
            &file.idempotency_window,
            "idempotency-window",
            "idempotency_window",
            DEFAULT_IDEMPOTENCY_WINDOW,
        )?;
        let request_timeout = duration(
            &over.request_timeout,
            &file.request_timeout,
            "request-timeout",
            "request_timeout",
            DEFAULT_REQUEST_TIMEOUT,
        )?;
        let positive =
            |over: &Option<usize>, file: &Option<usize>, flag, key, default: usize| match over
                .map(|v| (v, false))
                .or(file.map(|v| (v, true)))
            {
                Some((0, from_file)) => Err(anyhow::anyhow!(
                    "invalid {}: it must be at least 1",
                    origin(flag, key).describe(from_file)
                )),
                Some((value, _)) => Ok(value),
                None => Ok(default),
            };
        let read_connections = positive(
            &over.read_connections,
            &file.read_connections,
            "read-connections",
            "read_connections",
            DEFAULT_READ_CONNECTIONS,
        )?;
        let worker_threads = positive(
            &over.worker_threads,
            &file.worker_threads,
            "worker-threads",
            "worker_threads",
            default_worker_threads(),
        )?;
        if let Some((&value, from_file)) = pick(&over.worker_threads, &file.worker_threads)
            && value > MAX_WORKER_THREADS
        {
            anyhow::bail!(
                "invalid {}: it must be at most {MAX_WORKER_THREADS}",
                origin("worker-threads", "worker_threads").describe(from_file)
            );
        }
        let defaults = Limits::default();
        let limits = Limits {
            max_body_bytes: positive(
                &over.max_body_bytes,
                &file.max_body_bytes,
                "max-body-bytes",
                "max_body_bytes",
                defaults.max_body_bytes,
            )?,
            max_events_per_request: positive(
                &over.max_events_per_request,
                &file.max_events_per_request,
                "max-events-per-request",
                "max_events_per_request",
                defaults.max_events_per_request,
            )?,
            max_event_bytes: positive(
                &over.max_event_bytes,
                &file.max_event_bytes,
                "max-event-bytes",
                "max_event_bytes",
                defaults.max_event_bytes,
            )?,
            max_json_depth: positive(
                &over.max_json_depth,
                &file.max_json_depth,
                "max-json-depth",
                "max_json_depth",
                defaults.max_json_depth,
            )?,
            ..defaults
        };
        let query_cache_bytes = pick(&over.query_cache_bytes, &file.query_cache_bytes)
            .map_or(DEFAULT_QUERY_CACHE_BYTES, |(value, _)| *value);
        let projection_batch_size = positive(
            &over.projection_batch_size,
            &file.projection_batch_size,
            "projection-batch-size",
            "projection_batch_size",
            DEFAULT_PROJECTION_BATCH_SIZE,
        )?;
        let strict_plans =
            pick(&over.strict_plans, &file.strict_plans).is_some_and(|(value, _)| *value);
        let slow_query_threshold =
            match pick(&over.slow_query_threshold, &file.slow_query_threshold) {
                Some((value, from_file)) => parse_duration(value).map_err(|error| {
                    anyhow::anyhow!(
                        "invalid {}: {error}",
                        origin("slow-query-threshold", "slow_query_threshold").describe(from_file)
                    )
                })?,
                None => cairn_projection::DEFAULT_SLOW_QUERY_THRESHOLD,
            };
        let slow_query_threshold =
            (!slow_query_threshold.is_zero()).then_some(slow_query_threshold);
        // File only: what the command line holds here is ignored by construction.
        let projections = file.projections.clone().unwrap_or_default();
        let queries = file.queries.clone().unwrap_or_default();
        cairn_projection::validate(&projections, &queries).map_err(|error| {
            let place =
                file_path.map_or_else(String::new, |path| format!(" in {}", path.display()));
            anyhow::anyhow!("invalid [[projections]] or [[queries]]{place}: {error}")
        })?;
        let defaults = cairn_server::limits::RequestLimits::default();
        let header_read_timeout = match pick(&over.header_read_timeout, &file.header_read_timeout) {
            Some((value, from_file)) => parse_duration(value).map_err(|error| {
                anyhow::anyhow!(
                    "invalid {}: {error}",
                    origin("header-read-timeout", "header_read_timeout").describe(from_file)
                )
            })?,
            None => defaults.header_read_timeout,
        };
        let rate_limit_per_second =
            match pick(&over.rate_limit_per_second, &file.rate_limit_per_second) {
                Some((value, from_file)) if !(value.is_finite() && *value > 0.0) => bail!(
                    "invalid {}: it must be a number above 0",
                    origin("rate-limit-per-second", "rate_limit_per_second").describe(from_file)
                ),
                Some((value, _)) => Some(*value),
                None => defaults.rate_limit_per_second,
            };
        let rate_limit_burst = match pick(&over.rate_limit_burst, &file.rate_limit_burst) {
            Some((0, from_file)) => bail!(
                "invalid {}: it must be at least 1",
                origin("rate-limit-burst", "rate_limit_burst").describe(from_file)
            ),
            Some((value, _)) => *value,
            None => defaults.rate_limit_burst,
        };
        let request_limits = cairn_server::limits::RequestLimits {
            max_concurrent_requests: positive(
                &over.max_concurrent_requests,
                &file.max_concurrent_requests,
                "max-concurrent-requests",
                "max_concurrent_requests",
                defaults.max_concurrent_requests,
            )?,
            rate_limit_per_second,
            rate_limit_burst,
            max_subscriptions_per_token: positive(
                &over.max_subscriptions_per_token,
                &file.max_subscriptions_per_token,
                "max-subscriptions-per-token",
                "max_subscriptions_per_token",
                defaults.max_subscriptions_per_token,
            )?,
            max_claims_per_token: positive(
                &over.max_claims_per_token,
                &file.max_claims_per_token,
                "max-claims-per-token",
                "max_claims_per_token",
                defaults.max_claims_per_token,
            )?,
            header_read_timeout,
        };
        let tokens = crate::auth_settings::tokens_from(file.auth.as_ref()).map_err(|error| {
            let place =
                file_path.map_or_else(String::new, |path| format!(" in {}", path.display()));
            anyhow::anyhow!("invalid [auth]{place}: {error}")
        })?;
        let metrics_public =
            pick(&over.metrics_public, &file.metrics_public).is_some_and(|(value, _)| *value);
        let insecure_no_auth =
            pick(&over.insecure_no_auth, &file.insecure_no_auth).is_some_and(|(value, _)| *value);
        let tls = match (
            pick(&over.tls_cert, &file.tls_cert),
            pick(&over.tls_key, &file.tls_key),
        ) {
            (None, None) => None,
            (Some((cert, _)), Some((key, _))) => {
                if cert.as_os_str().is_empty() || key.as_os_str().is_empty() {
                    bail!("invalid tls_cert or tls_key: a TLS file path must not be empty");
                }
                Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                })
            }
            (Some((_, from_file)), None) => bail!(
                "{} is set but not --tls-key (or CAIRN_TLS_KEY, `tls_key`): TLS needs both the \
                 certificate and its private key",
                origin("tls-cert", "tls_cert").describe(from_file)
            ),
            (None, Some((_, from_file))) => bail!(
                "{} is set but not --tls-cert (or CAIRN_TLS_CERT, `tls_cert`): TLS needs both the \
                 certificate and its private key",
                origin("tls-key", "tls_key").describe(from_file)
            ),
        };
        let database = crate::backend::DatabaseSettings::resolve(
            pick(&over.database_url, &file.database_url).map(|(value, from_file)| {
                (
                    value.as_str(),
                    origin("database-url", "database_url").describe(from_file),
                )
            }),
            pick(&over.replica_urls, &file.replica_urls).map(|(values, from_file)| {
                (
                    values.as_slice(),
                    origin("replica-url", "replica_urls").describe(from_file),
                )
            }),
            positive(
                &over.pool_size,
                &file.pool_size,
                "pool-size",
                "pool_size",
                crate::backend::DEFAULT_POOL_SIZE,
            )?,
        )?;
        let advertise_url = match pick(&over.advertise_url, &file.advertise_url) {
            Some((value, from_file)) => Some(parse_advertise_url(value).map_err(|error| {
                anyhow::anyhow!(
                    "invalid {}: {error}",
                    origin("advertise-url", "advertise_url").describe(from_file)
                )
            })?),
            None => None,
        };
        let redis = match pick(&over.redis_url, &file.redis_url) {
            Some((value, from_file)) => {
                let url = value.trim();
                cairn_projection::check_redis_url(url).map_err(|error| {
                    anyhow::anyhow!(
                        "invalid {}: {error}",
                        origin("redis-url", "redis_url").describe(from_file)
                    )
                })?;
                Some(cairn_projection::RedisCacheOptions::new(url))
            }
            None => None,
        };
        let readmodel_schema = match pick(&over.readmodel_schema, &file.readmodel_schema) {
            Some((value, from_file)) => {
                let setting = origin("readmodel-schema", "readmodel_schema").describe(from_file);
                if database.is_none() {
                    bail!(
                        "invalid {setting}: read models have a schema on PostgreSQL only; set \
                         --database-url (or CAIRN_DATABASE_URL, or `database_url` in the file) too"
                    );
                }
                let schema = value.trim();
                cairn_projection::check_schema_name(schema)
                    .map_err(|error| anyhow::anyhow!("invalid {setting}: {error}"))?;
                schema.to_owned()
            }
            None => cairn_projection::DEFAULT_READ_MODEL_SCHEMA.to_owned(),
        };
        let database = database.map(|database| crate::backend::DatabaseSettings {
            advertise_url: advertise_url.clone(),
            readmodel_schema,
            ..database
        });
        Ok(Settings {
            listen,
            data_dir,
            log_format,
            log_level,
            idempotency_window,
            read_connections,
            worker_threads,
            request_timeout,
            limits,
            query_cache_bytes,
            projection_batch_size,
            strict_plans,
            slow_query_threshold,
            projections,
            queries,
            config_file: file_path.map(Path::to_path_buf),
            tokens,
            request_limits,
            metrics_public,
            insecure_no_auth,
            tls,
            database,
            advertise_url,
            redis,
        })
    }

    /// The effective settings as the keys of the settings file (`cairn serve --print-config`);
    /// projections and queries by name.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "listen": self.listen.to_string(),
            "data_dir": self.data_dir.display().to_string(),
            "log_format": self.log_format.map_or("auto", LogFormat::as_str),
            "log_level": self.log_level,
            "idempotency_window": format_duration(self.idempotency_window),
            "read_connections": self.read_connections,
            "worker_threads": self.worker_threads,
            "request_timeout": format_duration(self.request_timeout),
            "max_body_bytes": self.limits.max_body_bytes,
            "max_events_per_request": self.limits.max_events_per_request,
            "max_event_bytes": self.limits.max_event_bytes,
            "max_json_depth": self.limits.max_json_depth,
            "query_cache_bytes": self.query_cache_bytes,
            "projection_batch_size": self.projection_batch_size,
            "strict_plans": self.strict_plans,
            "slow_query_threshold": self.slow_query_threshold.map_or_else(|| "0s".to_owned(), format_duration),
            "projections": self.projections.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            "queries": self.queries.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(),
            "max_concurrent_requests": self.request_limits.max_concurrent_requests,
            "rate_limit_per_second": self.request_limits.rate_limit_per_second,
            "rate_limit_burst": self.request_limits.rate_limit_burst,
            "max_subscriptions_per_token": self.request_limits.max_subscriptions_per_token,
            "max_claims_per_token": self.request_limits.max_claims_per_token,
            "header_read_timeout": format_duration(self.request_limits.header_read_timeout),
            "metrics_public": self.metrics_public,
            "insecure_no_auth": self.insecure_no_auth,
            "tls_cert": self.tls.as_ref().map(|tls| tls.cert.display().to_string()),
            "tls_key": self.tls.as_ref().map(|tls| tls.key.display().to_string()),
            "tokens": self.tokens.len(),
            "database_url": self.database.as_ref().map(|database| database.redacted_url()),
            "replica_urls": self.database.as_ref().map_or_else(Vec::new, |database| database.redacted_replica_urls()),
            "pool_size": self.database.as_ref().map_or(crate::backend::DEFAULT_POOL_SIZE, |database| database.pool_size),
            "advertise_url": self.advertise_url,
            "readmodel_schema": self.database.as_ref().map(|database| database.readmodel_schema.as_str()),
            "redis_url": self.redis.as_ref().map(|redis| cairn_projection::redact_redis_url(&redis.url)),
        })
    }
}

/// One worker thread per core the process may use (the async runtime's own default).
pub fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// An advertised base URL: `http://HOST:PORT`, or `https://HOST:PORT` for an instance
/// serving TLS (a trailing `/` is dropped), reachable by the other instances.
pub fn parse_advertise_url(value: &str) -> Result<String, String> {
    let value = value.trim().trim_end_matches('/');
    let bad = |why: &str| {
        format!(
            "{value:?} {why}; write the http:// (or, serving TLS, https://) URL other \
             instances reach this one at, e.g. http://10.0.0.5:7171"
        )
    };
    let Some(rest) = value
        .strip_prefix("http://")
        .or_else(|| value.strip_prefix("https://"))
    else {
        return Err(bad("is not an http:// or https:// URL"));
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) || rest.contains(char::is_whitespace)
    {
        return Err(bad("must be a scheme and host[:port] only"));
    }
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':')),
            None => return Err(bad("has an unclosed [")),
        },
        None => match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    if !host_ok || port.is_some_and(|port| port.parse::<u16>().is_err()) {
        return Err(bad("is not a valid host[:port]"));
    }
    Ok(value.to_owned())
}

fn parse_listen(value: &str) -> anyhow::Result<SocketAddr> {
    value.trim().parse().map_err(|_| {
        anyhow::anyhow!("{value:?} is not a listen address; expected IP:PORT such as 127.0.0.1:7171 or [::1]:7171")
    })
}

/// Parses a duration such as `500ms`, `30s`, `5m`, `24h`, `7d` or `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("a duration must not be empty; write e.g. 30s, 500ms, 24h".into());
    }
    let bad = || {
        format!(
            "{text:?} is not a duration; write a number with a unit: ms, s, m, h or d (e.g. 30s, 500ms, 1h30m)"
        )
    };
    let mut total = Duration::ZERO;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_millis: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60 * 1000,
            "h" => 3600 * 1000,
            "d" => 24 * 3600 * 1000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let millis = number.checked_mul(unit_millis).ok_or_else(bad)?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(bad)?;
    }
    Ok(total)
}

/// Writes a duration in the largest unit (up to hours) that divides it: `24h`, `30s`,
/// `1500ms`.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".into();
    }
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if millis.is_multiple_of(size) {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        for (text, millis) in [
            ("500ms", 500),
            ("30s", 30_000),
            ("5m", 300_000),
            ("24h", 86_400_000),
            ("7d", 604_800_000),
            ("1h30m", 5_400_000),
            (" 2s ", 2000),
            ("0s", 0),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(millis)),
                "{text}"
            );
        }
        for bad in [
            "",
            "30",
            "s",
            "1.5s",
            "-1s",
            "10 s",
            "3w",
            "1h30",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn advertise_urls_are_a_scheme_host_and_port() {
        for (given, kept) in [
            ("http://10.0.0.5:7171", "http://10.0.0.5:7171"),
            (
                "http://cairn-1.internal:7171/",
                "http://cairn-1.internal:7171",
            ),
            (" http://[::1]:7171 ", "http://[::1]:7171"),
            ("http://cairn", "http://cairn"),
            (
                "https://cairn-1.internal:7171/",
                "https://cairn-1.internal:7171",
            ),
        ] {
            assert_eq!(parse_advertise_url(given).as_deref(), Ok(kept), "{given}");
        }
        for bad in [
            "",
            "10.0.0.5:7171",
            "ftp://cairn:7171",
            "http://",
            "https://",
            "http://cairn:7171/v1",
            "http://user@cairn:7171",
            "http://cairn:notaport",
            "http://[::1",
            "http://ca irn",
        ] {
            let error = parse_advertise_url(bad).unwrap_err();
            assert!(error.contains("http://"), "{bad}: {error}");
        }
    }

    #[test]
    fn the_advertise_url_reaches_the_database_settings() {
        let file = RawSettings::parse(
            "database_url = \"postgres://db/cairn\"\nadvertise_url = \"http://10.1.2.3:7171\"",
        )
        .unwrap();
        let settings = Settings::merge(&RawSettings::default(), &file, None).unwrap();
        assert_eq!(
            settings.database.unwrap().advertise_url.as_deref(),
            Some("http://10.1.2.3:7171")
        );
        assert_eq!(
            settings.advertise_url.as_deref(),
            Some("http://10.1.2.3:7171")
        );
        let error = Settings::merge(
            &RawSettings {
                advertise_url: Some("10.1.2.3:7171".into()),
                ..RawSettings::default()
            },
            &file,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("--advertise-url (or CAIRN_ADVERTISE_URL)"),
            "{error}"
        );
    }

    #[test]
    fn the_readmodel_schema_is_checked_and_reaches_the_database_settings() {
        let file = RawSettings::parse(
            "database_url = \"postgres://db/cairn\"\nreadmodel_schema = \"tenant_two\"",
        )
        .unwrap();
        let settings = Settings::merge(&RawSettings::default(), &file, None).unwrap();
        assert_eq!(settings.database.unwrap().readmodel_schema, "tenant_two");
        let defaults = RawSettings::parse("database_url = \"postgres://db/cairn\"").unwrap();
        let settings = Settings::merge(&RawSettings::default(), &defaults, None).unwrap();
        assert_eq!(
            settings.database.unwrap().readmodel_schema,
            cairn_projection::DEFAULT_READ_MODEL_SCHEMA
        );
        let bad = Settings::merge(
            &RawSettings {
                readmodel_schema: Some("Tenant-Two".into()),
                ..RawSettings::default()
            },
            &file,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            bad.contains("--readmodel-schema (or CAIRN_READMODEL_SCHEMA)"),
            "{bad}"
        );
        let embedded = Settings::merge(
            &RawSettings::default(),
            &RawSettings::parse("readmodel_schema = \"tenant_two\"").unwrap(),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(embedded.contains("--database-url"), "{embedded}");
    }

    #[test]
    fn durations_format_in_their_largest_unit() {
        for text in ["24h", "30s", "500ms", "1500ms", "90m", "48h", "0s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }
}
