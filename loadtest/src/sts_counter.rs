//! Counts the `AssumeRoleWithWebIdentity` calls that reach STS: a
//! pass-through HTTP proxy in front of moto, so the load test can report
//! STS calls made without any help from the server under test.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};

struct Upstream {
    base: String,
    http: reqwest::Client,
    calls: AtomicU64,
}

/// The proxy.
pub struct StsCounter {
    addr: std::net::SocketAddr,
    upstream: Arc<Upstream>,
    _task: tokio::task::JoinHandle<()>,
}

impl StsCounter {
    /// Proxies to `upstream` (e.g. moto's endpoint).
    pub async fn start(upstream: String) -> std::io::Result<Self> {
        let upstream = Arc::new(Upstream {
            base: upstream,
            http: reqwest::Client::new(),
            calls: AtomicU64::new(0),
        });
        let app = Router::new().fallback(forward).with_state(upstream.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            upstream,
            _task: task,
        })
    }

    /// The endpoint to give the server as `aws.sts_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `AssumeRoleWithWebIdentity` calls so far.
    pub fn calls(&self) -> u64 {
        self.upstream.calls.load(Ordering::Relaxed)
    }
}

async fn forward(
    State(up): State<Arc<Upstream>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if body.windows(25).any(|w| w == b"AssumeRoleWithWebIdentity") {
        up.calls.fetch_add(1, Ordering::Relaxed);
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = up
        .http
        .request(method, format!("{}{path}", up.base))
        .body(body);
    for (name, value) in &headers {
        if name != http::header::HOST && name != http::header::CONTENT_LENGTH {
            req = req.header(name, value);
        }
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await.unwrap_or_default();
            let mut out = (status, body).into_response();
            for (name, value) in &headers {
                if name != http::header::CONTENT_LENGTH && name != http::header::TRANSFER_ENCODING {
                    out.headers_mut().insert(name, value.clone());
                }
            }
            out
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}
