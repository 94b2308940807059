//! The shared tier of the query-result cache: Redis (`--redis-url`), behind the
//! in-process cache, so that every instance serves what any instance computed.
//!
//! # Keys: never staler than the instance asking
//!
//! Generations (what the in-process tier checks) are counters of one instance; other
//! instances cannot compare them. The shared tier keys a result by what determines it
//! on every instance instead: the log it was projected from (the id of the event at
//! position 1), the query's definition and its projections' definitions (hashed), the
//! **position of each projection it reads**, and the parameters. A read model is a
//! function of the log up to its position, so two instances whose projections stand
//! at the same positions hold the same rows. An instance only ever asks for the key
//! of the positions it knows now: a result computed before one of its projections
//! advanced has another key and is never served. A result is stored only when no
//! projection it reads changed while it was computed (as for the in-process tier).
//!
//! The value is the rows as JSON; Redis expires it after the query's `cache_ttl`, or
//! after [`RedisCacheOptions::ttl`] for queries without one (their keys are never
//! asked for again once a projection moves on). A query's `cache_ttl` staleness
//! allowance is the in-process tier's only: the shared tier always matches positions.
//!
//! # Faults
//!
//! Redis is an optimisation, never a dependency: every call has a short time limit,
//! and a failure or a timeout is a miss (counted in
//! `cairn_query_cache_redis_errors_total`, logged at most every
//! [`WARN_INTERVAL`]). After a failure the tier is skipped for [`BACKOFF`], so a
//! dead Redis costs queries nothing; the connection manager reconnects by itself,
//! and sharing resumes when Redis answers again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_core::Position;
use cairn_store::SharedStore;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::metrics;
use crate::query::Row;

/// What decides a query's rows besides positions and parameters: its SQL and bound
/// parameters, and the name and definition hash of each projection it reads.
pub(crate) fn definition_of(entry: &crate::query::QueryEntry) -> Vec<&str> {
    let mut parts = vec![entry.plan.sql.as_ref()];
    parts.extend(entry.plan.bound.iter().map(String::as_str));
    for projection in &entry.projections {
        parts.push(projection.plan.config.name.as_str());
        parts.push(projection.plan.definition_hash.as_str());
    }
    parts
}

/// The positions of a progress snapshot, in the query's projection order.
pub(crate) fn positions_of(progress: &[crate::projection::Progress]) -> Vec<Position> {
    progress.iter().map(|p| p.position).collect()
}

/// How the shared tier reaches Redis. `Debug` shows the URL without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisCacheOptions {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// The longest one Redis call may take before it counts as a miss.
    pub timeout: Duration,
    /// How long Redis keeps a result of a query without `cache_ttl`.
    pub ttl: Duration,
}

/// The default of [`RedisCacheOptions::timeout`].
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(100);
/// The default of [`RedisCacheOptions::ttl`].
pub const DEFAULT_REDIS_TTL: Duration = Duration::from_secs(300);
/// How long the tier is skipped after a failure.
pub const BACKOFF: Duration = Duration::from_secs(1);
/// At most one warning per this interval while Redis fails.
pub const WARN_INTERVAL: Duration = Duration::from_secs(30);
/// The beginning of every key, with the layout's version.
const KEY_PREFIX: &str = "cairn:query:v1:";

impl std::fmt::Debug for RedisCacheOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCacheOptions")
            .field("url", &redact_redis_url(&self.url))
            .field("timeout", &self.timeout)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl RedisCacheOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            timeout: DEFAULT_REDIS_TIMEOUT,
            ttl: DEFAULT_REDIS_TTL,
        }
    }
}

/// `url` without its password, for messages.
pub fn redact_redis_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(end);
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
                    if userinfo.contains(':') {
                        format!("{scheme}://{user}:***@{host}{tail}")
                    } else {
                        format!("{scheme}://{userinfo}@{host}{tail}")
                    }
                }
                None => url.to_owned(),
            }
        }
        None => "(not a URL)".to_owned(),
    }
}

/// Checks a Redis URL without connecting; the error never shows the password.
pub fn check_redis_url(url: &str) -> Result<(), String> {
    redis::Client::open(url).map(drop).map_err(|error| {
        let shown = if url.contains("://") {
            redact_redis_url(url)
        } else {
            "the value".to_owned()
        };
        format!(
            "{shown} is not a Redis URL ({}); write redis://HOST:PORT or redis://:PASSWORD@HOST:PORT/DB",
            error.category()
        )
    })
}

struct Health {
    /// Skip Redis until then (after a failure).
    down_until: Option<Instant>,
    last_warning: Option<Instant>,
    /// Failures since the last warning.
    failures: u64,
    /// A failure was warned about and Redis has not answered since.
    failing: bool,
}

pub(crate) struct SharedCache {
    connection: ConnectionManager,
    timeout: Duration,
    ttl: Duration,
    label: String,
    /// The id of the event at position 1, once the log has one.
    log_identity: OnceCell<String>,
    health: Mutex<Health>,
}

impl SharedCache {
    /// Prepares the connection without connecting (the first query does, and a Redis
    /// that is down at start is simply a miss). Must run inside a tokio runtime.
    pub(crate) fn new(options: &RedisCacheOptions) -> Result<Self, String> {
        check_redis_url(&options.url)?;
        let client = redis::Client::open(options.url.as_str()).map_err(|e| e.to_string())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.timeout))
            .set_response_timeout(Some(options.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|error| format!("cannot prepare the Redis connection: {error}"))?;
        Ok(Self {
            connection,
            timeout: options.timeout,
            ttl: options.ttl,
            label: redact_redis_url(&options.url),
            log_identity: OnceCell::new(),
            health: Mutex::new(Health {
                down_until: None,
                last_warning: None,
                failures: 0,
                failing: false,
            }),
        })
    }

    /// The key of a result: see the module's documentation. `definition` holds the
    /// query's SQL and its projections' definition hashes; `local_key` names the query
    /// and its parameters (the in-process key). `None` when the log cannot be read.
    pub(crate) async fn key(
        &self,
        store: &SharedStore,
        query: &str,
        definition: &[&str],
        positions: &[Position],
        local_key: &str,
    ) -> Option<String> {
        let identity = match self.log_identity.get() {
            Some(identity) => identity.as_str(),
            None => match store.read_event(1).await {
                Ok(Some(first)) => self
                    .log_identity
                    .get_or_init(|| async { first.id.to_string() })
                    .await
                    .as_str(),
                // Nothing is projected from an empty log: every projection is at 0.
                Ok(None) => "empty",
                Err(_) => return None,
            },
        };
        let mut hash = Sha256::new();
        for part in [identity].iter().chain(definition) {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part.as_bytes());
        }
        for position in positions {
            hash.update(position.to_le_bytes());
        }
        hash.update(local_key.as_bytes());
        let digest = hash.finalize();
        let mut key = String::with_capacity(KEY_PREFIX.len() + query.len() + 65);
        key.push_str(KEY_PREFIX);
        key.push_str(query);
        key.push(':');
        for byte in digest {
            key.push_str(&format!("{byte:02x}"));
        }
        Some(key)
    }

    fn skipping(&self) -> bool {
        self.health
            .lock()
            .map(|health| {
                health
                    .down_until
                    .is_some_and(|until| Instant::now() < until)
            })
            .unwrap_or(false)
    }

    fn succeeded(&self) {
        if let Ok(mut health) = self.health.lock()
            && health.failing
        {
            health.failing = false;
            health.failures = 0;
            health.down_until = None;
            tracing::info!(redis = %self.label, "the shared query cache answers again");
        }
    }

    fn failed(&self, operation: &'static str, error: &str) {
        metrics::redis_error(operation);
        let Ok(mut health) = self.health.lock() else {
            return;
        };
        let now = Instant::now();
        health.down_until = Some(now + BACKOFF);
        health.failures += 1;
        health.failing = true;
        if health
            .last_warning
            .is_none_or(|last| now.duration_since(last) >= WARN_INTERVAL)
        {
            tracing::warn!(
                redis = %self.label,
                operation,
                error,
                failures = health.failures,
                "the shared query cache (Redis) failed; queries are answered without it"
            );
            health.last_warning = Some(now);
            health.failures = 0;
        }
    }

    /// The rows stored under `key`, if Redis has them and answers in time.
    pub(crate) async fn get(&self, key: &str, query: &str) -> Option<Vec<Row>> {
        if self.skipping() {
            metrics::redis_miss(query);
            return None;
        }
        let mut connection = self.connection.clone();
        let answer =
            tokio::time::timeout(self.timeout, connection.get::<_, Option<Vec<u8>>>(key)).await;
        let bytes = match answer {
            Ok(Ok(bytes)) => {
                self.succeeded();
                bytes
            }
            Ok(Err(error)) => {
                self.failed("get", &error.to_string());
                None
            }
            Err(_) => {
                self.failed("get", "timed out");
                None
            }
        };
        let rows = bytes.and_then(|bytes| match serde_json::from_slice::<Vec<Row>>(&bytes) {
            Ok(rows) => Some(rows),
            Err(error) => {
                self.failed("decode", &error.to_string());
                None
            }
        });
        match &rows {
            Some(_) => metrics::redis_hit(query),
            None => metrics::redis_miss(query),
        }
        rows
    }

    /// Stores `rows` under `key` for `ttl` (the query's `cache_ttl`) or the default.
    pub(crate) async fn set(&self, key: String, rows: &[Row], ttl: Option<Duration>) {
        if self.skipping() {
            return;
        }
        let Ok(bytes) = serde_json::to_vec(rows) else {
            return;
        };
        let seconds = ttl.unwrap_or(self.ttl).as_secs().max(1);
        let mut connection = self.connection.clone();
        let answer = tokio::time::timeout(
            self.timeout,
            connection.set_ex::<_, _, ()>(key, bytes, seconds),
        )
        .await;
        match answer {
            Ok(Ok(())) => self.succeeded(),
            Ok(Err(error)) => self.failed("set", &error.to_string()),
            Err(_) => self.failed("set", "timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_shown_without_passwords() {
        assert_eq!(
            redact_redis_url("redis://:s3cret@cache:6379/2"),
            "redis://:***@cache:6379/2"
        );
        assert_eq!(
            redact_redis_url("redis://app:s3cret@cache"),
            "redis://app:***@cache"
        );
        assert_eq!(redact_redis_url("redis://cache:6379"), "redis://cache:6379");
        assert!(check_redis_url("redis://127.0.0.1:6379/0").is_ok());
        let error = check_redis_url("http://:s3cret@cache").unwrap_err();
        assert!(!error.contains("s3cret"), "{error}");
        assert!(check_redis_url("not a url").is_err());
    }
}
