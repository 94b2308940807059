//! Wiring: the embedded SQLite store behind `Arc<dyn EventStore>`, the read side
//! (projections into `readmodels.db` beside `events.db`, named queries), the server's
//! state, a bound listener and `cairn_server::serve`, as one running server that
//! `cairn serve` and `cairn bench` start and stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cairn_projection::{ProjectionConfig, QueryConfig, ReadSide, ReadSideOptions};
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
    pub read_side: ReadSideConfig,
    /// API tokens (shared with whoever reloads them) and whether /metrics is public.
    pub auth: Arc<cairn_server::auth::Auth>,
    pub request_limits: cairn_server::limits::RequestLimits,
    /// The event store on PostgreSQL; `None`: the embedded SQLite in `data_dir`.
    pub database: Option<crate::backend::DatabaseSettings>,
    /// Serve HTTPS with this certificate (shared with whoever reloads it); `None`: HTTP.
    pub tls: Option<Arc<cairn_server::tls::TlsCertificates>>,
}

/// The read side to run: without projections and queries, none is started (no
/// `readmodels.db`) and the server lists no projections.
#[derive(Debug, Clone)]
pub struct ReadSideConfig {
    pub projections: Vec<ProjectionConfig>,
    pub queries: Vec<QueryConfig>,
    /// Bytes of query results the cache may hold; 0 turns it off.
    pub cache_bytes: u64,
    /// How many events a projection gathers into one transaction when it is behind.
    pub batch_size: usize,
    /// Refuse to start while any plan warning stands.
    pub strict_plans: bool,
    /// Log queries and statements slower than this; `None`: never.
    pub slow_query_threshold: Option<Duration>,
    /// The shared query-result cache (`--redis-url`); `None`: in-process only.
    pub redis: Option<cairn_projection::RedisCacheOptions>,
}

impl Default for ReadSideConfig {
    fn default() -> Self {
        Self {
            projections: Vec::new(),
            queries: Vec::new(),
            cache_bytes: crate::settings::DEFAULT_QUERY_CACHE_BYTES,
            batch_size: crate::settings::DEFAULT_PROJECTION_BATCH_SIZE,
            strict_plans: false,
            slow_query_threshold: Some(cairn_projection::DEFAULT_SLOW_QUERY_THRESHOLD),
            redis: None,
        }
    }
}

impl ReadSideConfig {
    pub fn is_empty(&self) -> bool {
        self.projections.is_empty() && self.queries.is_empty()
    }
}

/// A server serving on its own task.
pub struct RunningServer {
    /// The address actually bound (the port is known even when 0 was asked for).
    pub local_addr: SocketAddr,
    /// Whether it serves HTTPS.
    tls: bool,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
    store: SharedStore,
    read_side: Option<Arc<ReadSide>>,
}

impl RunningServer {
    /// Opens the store, binds the listener and starts serving.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Self> {
        let store: SharedStore = match &config.database {
            Some(database) => database.open(config.idempotency_window).await?,
            None => {
                let mut options = SqliteOptions::new(config.data_dir.clone());
                options.read_connections = config.read_connections;
                options.idempotency_window = config.idempotency_window;
                let data_dir = config.data_dir.clone();
                let store = tokio::task::spawn_blocking(move || SqliteStore::open(options))
                    .await
                    .context("opening the store panicked")?
                    .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
                Arc::new(store)
            }
        };
        // With traces exported, storage calls are spans; otherwise they pay nothing.
        let store: SharedStore = if cairn_store::trace::enabled() {
            let system = if config.database.is_some() {
                "postgresql"
            } else {
                "sqlite"
            };
            Arc::new(cairn_store::traced::TracedStore::new(store, system))
        } else {
            store
        };
        let read_side = if config.read_side.is_empty() {
            None
        } else {
            let read_side = config.read_side;
            let mut options = ReadSideOptions::new(config.data_dir.clone());
            options.read_connections = config.read_connections;
            options.cache_bytes = read_side.cache_bytes;
            options.batch_size = read_side.batch_size;
            options.strict_plans = read_side.strict_plans;
            options.slow_query_threshold = read_side.slow_query_threshold.unwrap_or(Duration::MAX);
            options.redis = read_side.redis.clone();
            // With the event store on PostgreSQL the read models live there too, in
            // their own schema, shared by every instance on the database.
            options.postgres = config.database.as_ref().map(|database| {
                let mut postgres = cairn_projection::PostgresReadModels::new(database.url.clone());
                postgres.replica_urls = database.replica_urls.clone();
                postgres.schema = database.readmodel_schema.clone();
                postgres.pool_size = config.read_connections.max(1);
                postgres
            });
            let started = ReadSide::start(
                store.clone(),
                options,
                read_side.projections,
                read_side.queries,
            )
            .await
            .with_context(|| match &config.database {
                Some(database) => format!(
                    "cannot start the read side (projections and queries) in schema {} of {}",
                    database.readmodel_schema,
                    database.redacted_url()
                ),
                None => format!(
                    "cannot start the read side (projections and queries) in {}",
                    config.data_dir.display()
                ),
            });
            match started {
                Ok(read_side) => Some(read_side),
                Err(error) => {
                    close_store(store).await;
                    return Err(error);
                }
            }
        };
        // Bound before the consumer groups start: on PostgreSQL, this instance
        // advertises its address to the others, which forward group requests to it.
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener
            .local_addr()
            .context("the listener has no address")?;
        let state = match &config.database {
            Some(database) => {
                let advertise_url = match &database.advertise_url {
                    Some(url) => url.clone(),
                    None if config.tls.is_some() => format!("https://{local_addr}"),
                    None => format!("http://{local_addr}"),
                };
                let leases = database.group_leases(advertise_url).await?;
                AppState::open_shared(store.clone(), leases, config.limits, config.request_timeout)
                    .await
            }
            None => AppState::open(store.clone(), config.limits, config.request_timeout).await,
        };
        let mut state = state.with_context(|| {
            format!(
                "cannot load the consumer groups in {}",
                config.data_dir.display()
            )
        })?;
        if let Some(read_side) = &read_side {
            state = state.with_read_side(Arc::clone(read_side));
        }
        if let Some(tls) = &config.tls {
            // Group requests are forwarded to the other instances over HTTPS, trusting
            // the certificates of this instance's own file (see `peer_client_config`).
            let peers = cairn_server::tls::peer_client_config(tls.certificate_path())
                .context("cannot set up TLS for forwarding to the other instances")?;
            state = state.with_peer_tls(peers);
        }
        state = state
            .with_auth(config.auth)
            .with_request_limits(config.request_limits);
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        let tls = config.tls.is_some();
        let task = tokio::spawn(async move {
            cairn_server::serve_tls(listener, state, config.tls, async move {
                signal.cancelled().await
            })
            .await
        });
        Ok(Self {
            local_addr,
            tls,
            shutdown,
            task,
            store,
            read_side,
        })
    }

    /// The base URL of this server.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr)
    }

    /// The read side, when projections or queries are configured.
    pub fn read_side(&self) -> Option<&Arc<ReadSide>> {
        self.read_side.as_ref()
    }

    /// Stops accepting connections, lets in-flight requests finish for up to `grace`,
    /// then stops the projections (each commits the batch in hand and its checkpoint)
    /// and closes the store (its writer finishes the batch in hand).
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
        close(self.read_side, self.store).await;
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
                close(self.read_side, self.store).await;
                joined
                    .context("the server task panicked")?
                    .context("the server failed")
            }
        }
    }
}

/// Stops the read side's projections (each commits the batch in hand with its
/// checkpoint), then closes the store.
async fn close(read_side: Option<Arc<ReadSide>>, store: SharedStore) {
    if let Some(read_side) = read_side {
        read_side.shutdown().await;
    }
    close_store(store).await;
}

/// The store's drop joins its writer thread: keep that off the async workers.
async fn close_store(store: SharedStore) {
    if let Err(error) = tokio::task::spawn_blocking(move || drop(store)).await {
        tracing::error!(%error, "closing the store panicked");
    }
}
