//! The admin listener: plain HTTP/1.1 (axum) for Prometheus and Kubernetes
//! probes, apart from the gRPC listeners.
//!
//! | path | answer |
//! | --- | --- |
//! | `GET /metrics` | every metric ([`crate::observability::metrics`]) in the Prometheus text format 0.0.4 |
//! | `GET /healthz` | `200 ok` while the process serves HTTP at all (liveness) |
//! | `GET /readyz` | `200 ready` once Google's keys are loaded and until shutdown begins; else `503` with the reason (readiness) |
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `admin.listen` | `127.0.0.1:9464` | the admin listener; in Kubernetes use `0.0.0.0:9464` so that the kubelet and Prometheus reach it |
//! | `admin.enabled` | `true` | `false`: no admin listener |
//!
//! It stays up while in-flight calls drain after SIGTERM (answering
//! `/readyz` with 503), and closes with the gRPC server.

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;

use crate::{health::HealthHandle, observability::metrics::Metrics};

/// The default `admin.listen`.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

/// `[admin]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where the admin listener listens; `None`: no admin listener.
    pub listen: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: Some(DEFAULT_LISTEN),
        }
    }
}

#[derive(Clone)]
struct Admin {
    metrics: Arc<Metrics>,
    health: HealthHandle,
}

/// The content type of the Prometheus text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn scrape(State(admin): State<Admin>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        admin.metrics.encode(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(admin): State<Admin>) -> (StatusCode, &'static str) {
    if admin.health.is_serving() {
        (StatusCode::OK, "ready\n")
    } else if admin.health.is_stopping() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n",
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: Google's signing keys are not loaded yet\n",
        )
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: HealthHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Admin { metrics, health });
    crate::transport::http::serve(listener, router, shutdown).await
}
