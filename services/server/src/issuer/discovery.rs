//! The issuer's discovery listener: `GET /.well-known/openid-configuration`
//! and `GET /.well-known/jwks.json` over HTTPS (the `[tls]` certificate, no
//! client certificate asked), for AWS to fetch over the internet.
//!
//! Public and read only: nothing else is served, answers carry
//! `Cache-Control: public, max-age=300`, each peer address may make
//! [`PER_PEER_PER_SECOND`] requests a second (burst [`PER_PEER_BURST`]) and
//! is answered 429 with `Retry-After` beyond, TLS handshakes run
//! concurrently (at most [`MAX_PENDING_HANDSHAKES`]) with a time limit.
//! Served by [`crate::transport::http::serve`]: request headers must arrive
//! within its header timeout, a request is answered within its request
//! timeout, and HTTP/2 connections are limited in streams and kept alive.
//! Hosting the same files statically (`tokenbridge-admin issuer export`)
//! needs no listener.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{ConnectInfo, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rustls::ServerConfig;
use tokio::{net::TcpListener, sync::mpsc, task::JoinSet};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tracing::debug;

use super::Issuer;
use tokenbridge_issuer::{DISCOVERY_PATH, JWKS_PATH};

/// Requests a second per peer address.
pub const PER_PEER_PER_SECOND: u32 = 20;
/// Burst per peer address.
pub const PER_PEER_BURST: u32 = 40;
/// TLS handshakes in progress at most.
pub const MAX_PENDING_HANDSHAKES: usize = 256;
/// Time limit of one TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct Discovery {
    issuer: Arc<Issuer>,
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
}

const CACHE: HeaderValue = HeaderValue::from_static("public, max-age=300");

fn limited(state: &Discovery, peer: SocketAddr) -> Option<Response> {
    state.limiter.check_key(&peer.ip()).err().map(|_| {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, HeaderValue::from_static("1"))],
            "too many requests from this address\n",
        )
            .into_response()
    })
}

async fn configuration(
    State(state): State<Discovery>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if let Some(r) = limited(&state, peer) {
        return r;
    }
    (
        [(header::CACHE_CONTROL, CACHE)],
        Json(state.issuer.discovery()),
    )
        .into_response()
}

async fn jwks(
    State(state): State<Discovery>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if let Some(r) = limited(&state, peer) {
        return r;
    }
    ([(header::CACHE_CONTROL, CACHE)], Json(state.issuer.jwks())).into_response()
}

/// The discovery routes, for the listener and for tests.
pub fn router(issuer: Arc<Issuer>) -> Router {
    router_with(issuer, limiter())
}

type PeerLimiter = Arc<DefaultKeyedRateLimiter<IpAddr>>;

fn limiter() -> PeerLimiter {
    let quota = Quota::per_second(NonZeroU32::new(PER_PEER_PER_SECOND).unwrap_or(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(PER_PEER_BURST).unwrap_or(NonZeroU32::MIN));
    Arc::new(RateLimiter::keyed(quota))
}

fn router_with(issuer: Arc<Issuer>, limiter: PeerLimiter) -> Router {
    Router::new()
        .route(DISCOVERY_PATH, get(configuration))
        .route(JWKS_PATH, get(jwks))
        .with_state(Discovery { issuer, limiter })
}

/// TLS connections, handshaken concurrently in a background task.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accepting task ended: accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn accept_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<tokio::net::TcpStream>, SocketAddr)>,
) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept(), if handshakes.len() < MAX_PENDING_HANDSHAKES => match accepted {
                Ok((tcp, peer)) => {
                    let acceptor = acceptor.clone();
                    handshakes.spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => Some((tls, peer)),
                            _ => {
                                debug!(%peer, "discovery: TLS handshake failed or timed out");
                                None
                            }
                        }
                    });
                }
                Err(e) => debug!(error = %e, "discovery listener: accept failed"),
            },
            Some(done) = handshakes.join_next() => {
                if let Ok(Some(conn)) = done && tx.send(conn).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Serves discovery on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    issuer: Arc<Issuer>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(64);
    let accepting = tokio::spawn(accept_tls(listener, TlsAcceptor::from(tls), tx));
    // The per-peer state is forgotten once a peer goes quiet: memory follows
    // the active peers, not every address ever seen.
    let limiter = limiter();
    let janitor = {
        let limiter = limiter.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::transport::limits::JANITOR_INTERVAL);
            loop {
                tick.tick().await;
                limiter.retain_recent();
            }
        })
    };
    let app = router_with(issuer, limiter);
    let served = crate::transport::http::serve(TlsListener { rx, local }, app, shutdown).await;
    accepting.abort();
    janitor.abort();
    served
}
