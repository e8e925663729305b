//! Serving the plain HTTP listeners (the admin listener's `/metrics`,
//! `/healthz`, `/readyz`; the issuer's discovery listener; the console) with
//! bounds that `axum::serve` does not set (issue 15):
//!
//! - a request's **headers** must arrive within [`HEADER_TIMEOUT`], or the
//!   connection is closed (hyper's `header_read_timeout`, which only works
//!   with a timer, and `axum::serve` sets none). It also bounds how long a
//!   kept-alive connection may sit idle before its next request;
//! - a whole **request**, body included, is answered within
//!   [`REQUEST_TIMEOUT`] from its headers, else `408 Request Timeout`;
//! - over HTTP/2 (h2c or ALPN), at most [`MAX_STREAMS`] streams per
//!   connection and keepalive PINGs, as on the gRPC listeners.
//!
//! Each connection is served by its own task; on `shutdown` the listener
//! stops accepting and open connections are closed gracefully.

use std::{future::Future, net::SocketAddr, time::Duration};

use axum::{Router, extract::ConnectInfo, response::IntoResponse as _};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tower::ServiceExt as _;
use tracing::debug;

/// A request's headers must arrive within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A request, body included, is answered within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// HTTP/2 streams per connection at most.
pub const MAX_STREAMS: u32 = 32;

/// Serves `router` on `listener` until `shutdown` completes. Handlers can
/// extract the peer's address as `ConnectInfo<SocketAddr>`.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let router = router.clone();
        let service =
            tower::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                let router = router.clone();
                async move {
                    let answered = tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        router.oneshot(request.map(axum::body::Body::new)),
                    )
                    .await;
                    Ok::<_, std::convert::Infallible>(match answered {
                        Ok(Ok(response)) => response,
                        Ok(Err(never)) => match never {},
                        Err(_) => (
                            http::StatusCode::REQUEST_TIMEOUT,
                            "the request was not received and answered in time\n",
                        )
                            .into_response(),
                    })
                }
            });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(peer = %peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
