//! The accept loop behind [`crate::serve`]: hyper's connection builder (HTTP/1 and
//! HTTP/2) with a timer, so that a client sending its request head slowly
//! ("slowloris") is cut off after `header_read_timeout`; `axum::serve` does not expose
//! that setting. Each connection gets TCP_NODELAY and its peer address (`ConnectInfo`),
//! and a shutdown stops accepting, then lets open connections finish their requests.
//!
//! With TLS ([`crate::tls`]) each connection's handshake runs on the connection's own
//! task (a slow one never delays `accept`) and is bounded by the header read timeout
//! ([`DEFAULT_HANDSHAKE_TIMEOUT`] when that is off), so a client that opens a connection
//! and never finishes the handshake is cut off too. HTTP/2 and HTTP/1.1 are offered by
//! ALPN; the auto builder serves whichever the client speaks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio_util::either::Either;
use tower::ServiceExt;

use crate::tls::TlsCertificates;

/// How long a TLS handshake may take when the header read timeout is off (0s).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` (over TLS when `tls` is given) until `shutdown`
/// resolves, then waits for the open connections' requests to finish (`on_shutdown`
/// runs first, to end what never finishes by itself).
pub async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    header_read_timeout: Duration,
    tls: Option<Arc<TlsCertificates>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_shutdown: impl FnOnce(),
) -> std::io::Result<()> {
    let handshake_timeout = if header_read_timeout.is_zero() {
        DEFAULT_HANDSHAKE_TIMEOUT
    } else {
        header_read_timeout
    };
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout((!header_read_timeout.is_zero()).then_some(header_read_timeout));
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) if is_connection_error(&error) => continue,
                Err(error) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::error!(target: "cairn::http", %error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(target: "cairn::http", %error, "could not set TCP_NODELAY");
        }
        let router = router.clone();
        let service =
            tower::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(remote));
                let router = router.clone();
                async move {
                    let response = router.oneshot(request.map(axum::body::Body::new)).await;
                    Ok::<_, Infallible>(match response {
                        Ok(response) => response,
                        Err(never) => match never {},
                    })
                }
            });
        let service = TowerToHyperService::new(service);
        // Taken before the task starts, so that a shutdown waits for this connection
        // (a handshake in progress included).
        let watcher = graceful.watcher();
        let builder = Arc::clone(&builder);
        let acceptor = tls.as_ref().map(|tls| tls.acceptor());
        tokio::spawn(async move {
            let stream = match acceptor {
                None => Either::Left(stream),
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => Either::Right(stream),
                        Ok(Err(error)) => {
                            tracing::debug!(target: "cairn::http", %error, %remote, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(target: "cairn::http", %remote, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(target: "cairn::http", error = %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    on_shutdown();
    graceful.shutdown().await;
    Ok(())
}

/// Errors that concern one connection only (the listener is fine).
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        error.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
