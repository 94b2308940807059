//! Connection settings and the bounded, measured deadpool pools.

use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use tokio_postgres::NoTls;
use tokio_postgres::config::{Host, TargetSessionAttrs};

use super::PostgresOptions;
use super::schema::pool_error;
use crate::StoreError;
use crate::metrics as m;

/// Parses a connection URL (or `key=value` string) and applies Cairn's timeouts: how
/// long a connect may take, TCP keep-alives so that a dead peer is noticed, and on
/// the server a statement timeout, a lock timeout and an idle-in-transaction timeout
/// (a stuck instance cannot hold the head lock for long). Statements are planned for
/// their parameters on every execution (`plan_cache_mode = force_custom_plan`): a
/// connection lives for hours while the tables grow from nothing, and a generic plan
/// cached while a table was empty (a sequential scan) would stay that connection's
/// plan forever, turning an index lookup into a scan of the whole log.
pub(crate) fn connection_config(
    url: &str,
    options: &PostgresOptions,
    session: TargetSessionAttrs,
) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
        StoreError::Unavailable(format!("invalid PostgreSQL URL {}: {e}", redact(url)))
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(options.connect_timeout);
    }
    if config.get_application_name().is_none() {
        config.application_name("cairn");
    }
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3)
        .target_session_attrs(session);
    let millis = |d: Duration| d.as_millis().max(1);
    let server_settings = format!(
        "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={} \
         -c plan_cache_mode=force_custom_plan",
        millis(options.statement_timeout),
        millis(options.lock_timeout),
        millis(options.lock_timeout),
    );
    let combined = match config.get_options() {
        Some(given) if !given.trim().is_empty() => format!("{given} {server_settings}"),
        _ => server_settings,
    };
    config.options(combined);
    Ok(config)
}

/// The writer's connection settings: `config` with its statements' plans made once
/// (`plan_cache_mode = force_generic_plan`, which the server takes over the
/// `force_custom_plan` above, coming later). The cached path's single statement
/// (`COMMIT_CACHED` in `writer.rs`) runs in a transaction of its own, with no room for a
/// `SET LOCAL` before it, and reads no table but through a unique index whatever its
/// values; the looked-up path sets the plan mode of each of its statements itself.
pub(crate) fn writer_config(config: &tokio_postgres::Config) -> tokio_postgres::Config {
    let mut config = config.clone();
    let options = config.get_options().unwrap_or_default().to_owned();
    config.options(format!("{options} -c plan_cache_mode=force_generic_plan"));
    config
}

/// A bounded pool over `config`: `size` connections at most; waiting for one, making
/// one and checking one all time out, so a request never waits forever.
pub(crate) fn build_pool(
    config: tokio_postgres::Config,
    size: usize,
    options: &PostgresOptions,
) -> Result<Pool, StoreError> {
    bounded_pool(
        config,
        size,
        options.pool_wait_timeout,
        options.connect_timeout,
    )
    .map_err(StoreError::Internal)
}

/// A pool of at most `size` connections over `config`, without TLS, whose checkout
/// waits at most `wait` and whose connects and recycling checks take at most
/// `connect`. Also the read side's pools on PostgreSQL.
pub fn bounded_pool(
    config: tokio_postgres::Config,
    size: usize,
    wait: Duration,
    connect: Duration,
) -> Result<Pool, String> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(wait),
            create: Some(connect),
            recycle: Some(connect),
        })
        .build()
        .map_err(|e| format!("cannot build a connection pool: {e}"))
}

/// `host:port/dbname` of a connection, for labels and logs: never the password.
pub fn label(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let dbname = config.get_dbname().unwrap_or("");
    format!("{host}:{port}/{dbname}")
}

/// The URL with any password replaced, for error messages.
pub(crate) fn redact(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(config) => label(&config),
        Err(_) => "(unparsable)".to_owned(),
    }
}

/// A connection from `pool`, the wait timed as `cairn_pool_wait_seconds` of the pool
/// `name` (a wait that ends in a timeout or an error is recorded too).
pub(crate) async fn checkout(
    pool: &Pool,
    name: impl Into<metrics::SharedString>,
) -> Result<deadpool_postgres::Client, StoreError> {
    let asked = Instant::now();
    let client = pool.get().await.map_err(pool_error);
    metrics::histogram!(m::POOL_WAIT_SECONDS, "pool" => name.into())
        .record(asked.elapsed().as_secs_f64());
    client
}

/// Records the pool's gauges: connections in use and idle, callers waiting.
pub(crate) fn record_pool_metrics(name: &str, pool: &Pool) {
    let status = pool.status();
    let idle = status.available;
    let in_use = status.size.saturating_sub(idle);
    metrics::gauge!(m::POOL_CONNECTIONS, "pool" => name.to_owned(), "state" => "in_use")
        .set(in_use as f64);
    metrics::gauge!(m::POOL_CONNECTIONS, "pool" => name.to_owned(), "state" => "idle")
        .set(idle as f64);
    metrics::gauge!(m::POOL_WAITING, "pool" => name.to_owned()).set(status.waiting as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_connection_plans_for_its_values_and_keeps_the_users_options() {
        let options = PostgresOptions::new("postgres://cairn@db/cairn");
        let config = connection_config(
            "postgres://cairn@db/cairn?options=-c%20work_mem%3D8MB",
            &options,
            TargetSessionAttrs::ReadWrite,
        )
        .unwrap();
        let given = config.get_options().unwrap_or_default();
        assert!(given.starts_with("-c work_mem=8MB "), "{given}");
        assert!(
            given.contains(" -c plan_cache_mode=force_custom_plan"),
            "{given}"
        );
        assert!(given.contains("-c statement_timeout="), "{given}");
    }
}
