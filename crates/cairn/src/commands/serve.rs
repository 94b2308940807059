//! `cairn serve`.

use std::time::Duration;

use anyhow::Context;

use crate::cli::ServeArgs;
use crate::embedded::{ReadSideConfig, RunningServer, ServerConfig};
use crate::settings::Settings;

/// Extra time given to in-flight requests after a shutdown signal, beyond the request
/// timeout.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(5);
/// How long in-flight requests get after a shutdown signal when requests have no timeout.
const UNLIMITED_REQUESTS_GRACE: Duration = Duration::from_secs(30);

/// Serves with `settings`, resolved from `args` (by `crate::main`, before the runtime
/// they size exists).
pub async fn run(args: ServeArgs, settings: Settings) -> anyhow::Result<()> {
    if args.print_config {
        println!("{}", serde_json::to_string_pretty(&settings.to_json())?);
        return Ok(());
    }
    check_exposure(&settings)?;
    // Before anything is opened: a missing or bad file stops the start at once.
    let tls = match &settings.tls {
        Some(files) => Some(std::sync::Arc::new(
            cairn_server::tls::TlsCertificates::load(&files.cert, &files.key)
                .context("cannot serve HTTPS (--tls-cert, --tls-key)")?,
        )),
        None => None,
    };
    // Traces (OTEL_* variables): set up inside the runtime, installed beside the logs,
    // flushed once the server has stopped (or when dropped on an early return).
    let telemetry = crate::telemetry::Telemetry::from_env()?;
    crate::logging::init_with_tracer(settings.log_format, &settings.log_level, telemetry.tracer())?;
    if let Some(endpoint) = telemetry.endpoint() {
        tracing::info!(endpoint, "exporting traces over OTLP/gRPC");
    }
    if settings.tokens.is_empty() && !settings.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %settings.listen,
            "--insecure-no-auth: serving a non-loopback address without API tokens; anyone who can reach it can read, write and delete"
        );
    }
    let auth = std::sync::Arc::new(cairn_server::auth::Auth::new(
        settings.tokens.clone(),
        settings.metrics_public,
    ));
    let server = RunningServer::start(ServerConfig {
        auth: std::sync::Arc::clone(&auth),
        request_limits: settings.request_limits.clone(),
        listen: settings.listen,
        data_dir: settings.data_dir.clone(),
        read_connections: settings.read_connections,
        idempotency_window: settings.idempotency_window,
        request_timeout: settings.request_timeout,
        limits: settings.limits.clone(),
        database: settings.database.clone(),
        tls: tls.clone(),
        read_side: ReadSideConfig {
            projections: settings.projections.clone(),
            queries: settings.queries.clone(),
            cache_bytes: settings.query_cache_bytes,
            batch_size: settings.projection_batch_size,
            strict_plans: settings.strict_plans,
            slow_query_threshold: settings.slow_query_threshold,
            redis: settings.redis.clone(),
        },
    })
    .await?;
    tracing::info!(
        listen = %server.local_addr,
        url = server.url(),
        tls_cert = settings.tls.as_ref().map(|files| files.cert.display().to_string()),
        data_dir = %settings.data_dir.display(),
        store = if settings.database.is_some() { "postgres" } else { "sqlite" },
        database_url = settings.database.as_ref().map(|database| database.redacted_url()),
        // Absent without PostgreSQL, as `database_url` is.
        replica_urls = settings
            .database
            .as_ref()
            .map(|database| format!("{:?}", database.redacted_replica_urls())),
        projections = settings.projections.len(),
        queries = settings.queries.len(),
        tokens = settings.tokens.len(),
        config = settings.config_file.as_ref().map(|path| path.display().to_string()),
        version = env!("CARGO_PKG_VERSION"),
        "cairn is listening"
    );
    // The first signal drains in-flight requests (for at most the request timeout plus
    // a little); a second one stops at once. Acknowledged appends are durable either way.
    let grace = if settings.request_timeout.is_zero() {
        UNLIMITED_REQUESTS_GRACE
    } else {
        settings.request_timeout + SHUTDOWN_SLACK
    };
    let reloader = tokio::spawn(crate::commands::token::reload_on_hangup(
        settings.config_file.clone(),
        auth,
        tls,
    ));
    let first_signal = tokio_util::sync::CancellationToken::new();
    let first = first_signal.clone();
    let draining = server.serve_until(
        async move {
            shutdown_signal().await;
            first.cancel();
        },
        grace,
    );
    let second_signal = async {
        first_signal.cancelled().await;
        shutdown_signal().await;
    };
    tokio::select! {
        outcome = draining => outcome?,
        () = second_signal => {
            tracing::warn!("second signal: stopping without waiting for in-flight requests");
            anyhow::bail!("stopped by a second signal before in-flight requests finished");
        }
    }
    reloader.abort();
    telemetry.shutdown().await;
    tracing::info!("cairn stopped");
    Ok(())
}

/// Without API tokens, only a loopback address is served, unless --insecure-no-auth.
fn check_exposure(settings: &Settings) -> anyhow::Result<()> {
    if settings.tokens.is_empty()
        && !settings.listen.ip().is_loopback()
        && !settings.insecure_no_auth
    {
        anyhow::bail!(
            "refusing to listen on {} without API tokens: anyone who can reach it could read, \
             write and delete. Configure tokens ([[auth.tokens]], see `cairn token create`), \
             listen on a loopback address, or pass --insecure-no-auth (CAIRN_INSECURE_NO_AUTH=true) \
             if something else guards this address",
            settings.listen
        );
    }
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => tracing::info!(signal = "SIGINT", "shutting down"),
                    _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops cairn");
                let _ = interrupt.await;
                tracing::info!(signal = "SIGINT", "shutting down");
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
        tracing::info!(signal = "ctrl-c", "shutting down");
    }
}
