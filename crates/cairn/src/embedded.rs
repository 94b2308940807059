//! Wiring: the embedded SQLite store behind `Arc<dyn EventStore>`, the server's state,
//! a bound listener and `cairn_server::serve`, as one running server that `cairn serve`
//! and `cairn bench` start and stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cairn_server::{AppState, Limits};
use cairn_store::SharedStore;
use cairn_store::sqlite::{SqliteOptions, SqliteStore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What a server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub read_connections: usize,
    pub idempotency_window: Duration,
    pub request_timeout: Duration,
    pub limits: Limits,
}

/// A server serving on its own task.
pub struct RunningServer {
    /// The address actually bound (the port is known even when 0 was asked for).
    pub local_addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
    store: SharedStore,
}

impl RunningServer {
    /// Opens the store, binds the listener and starts serving.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Self> {
        let mut options = SqliteOptions::new(config.data_dir.clone());
        options.read_connections = config.read_connections;
        options.idempotency_window = config.idempotency_window;
        let data_dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || SqliteStore::open(options))
            .await
            .context("opening the store panicked")?
            .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
        let store: SharedStore = Arc::new(store);
        let state = AppState::open(store.clone(), config.limits, config.request_timeout)
            .await
            .with_context(|| {
                format!(
                    "cannot load the consumer groups in {}",
                    config.data_dir.display()
                )
            })?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener
            .local_addr()
            .context("the listener has no address")?;
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        let task = tokio::spawn(async move {
            cairn_server::serve(listener, state, async move { signal.cancelled().await }).await
        });
        Ok(Self {
            local_addr,
            shutdown,
            task,
            store,
        })
    }

    /// The base URL of this server.
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Stops accepting connections, lets in-flight requests finish for up to `grace`,
    /// then closes the store (its writer finishes the batch in hand).
    pub async fn stop(self, grace: Duration) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let mut task = self.task;
        let served = match tokio::time::timeout(grace, &mut task).await {
            Ok(joined) => joined.context("the server task panicked")?,
            Err(_) => {
                tracing::warn!(
                    grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
                    "requests still running after the grace period; closing them"
                );
                task.abort();
                Ok(())
            }
        };
        // The store's drop joins its writer thread: keep that off the async workers.
        let store = self.store;
        tokio::task::spawn_blocking(move || drop(store))
            .await
            .context("closing the store panicked")?;
        served.context("the server failed")
    }

    /// Serves until `signal` resolves, then stops as [`RunningServer::stop`] does; also
    /// returns if the server stops by itself.
    pub async fn serve_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
        grace: Duration,
    ) -> anyhow::Result<()> {
        tokio::select! {
            () = signal => self.stop(grace).await,
            joined = &mut self.task => {
                let store = self.store;
                tokio::task::spawn_blocking(move || drop(store))
                    .await
                    .context("closing the store panicked")?;
                joined
                    .context("the server task panicked")?
                    .context("the server failed")
            }
        }
    }
}
