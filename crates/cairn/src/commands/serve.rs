//! `cairn serve`.

use std::time::Duration;

use crate::cli::ServeArgs;
use crate::embedded::{RunningServer, ServerConfig};
use crate::settings::Settings;

/// Extra time given to in-flight requests after a shutdown signal, beyond the request
/// timeout.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(5);
/// How long in-flight requests get after a shutdown signal when requests have no timeout.
const UNLIMITED_REQUESTS_GRACE: Duration = Duration::from_secs(30);

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(&args)?;
    if args.print_config {
        println!("{}", serde_json::to_string_pretty(&settings.to_json())?);
        return Ok(());
    }
    crate::logging::init(settings.log_format, &settings.log_level)?;
    let server = RunningServer::start(ServerConfig {
        listen: settings.listen,
        data_dir: settings.data_dir.clone(),
        read_connections: settings.read_connections,
        idempotency_window: settings.idempotency_window,
        request_timeout: settings.request_timeout,
        limits: settings.limits.clone(),
    })
    .await?;
    tracing::info!(
        listen = %server.local_addr,
        data_dir = %settings.data_dir.display(),
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
    tracing::info!("cairn stopped");
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
