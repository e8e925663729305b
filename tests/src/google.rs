//! Google's HTTP endpoints that tokenbridge talks to: the JWKS of ID token
//! signing keys and the GCE metadata server's identity endpoint.

use std::{
    collections::HashMap,
    future::ready,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
};

use axum::{
    Router,
    extract::{Query, State},
    http::{
        HeaderMap, HeaderName, Method, StatusCode, Uri,
        header::{CACHE_CONTROL, CONTENT_TYPE},
    },
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::Value;
use tokio::sync::watch;

use crate::{Issuer, ServiceAccount, serve};

/// The path of Google's JWKS (`https://www.googleapis.com/oauth2/v3/certs`).
const CERTS_PATH: &str = "/oauth2/v3/certs";
const IDENTITY_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/identity";
const EMAIL_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/email";
const METADATA_FLAVOR: HeaderName = HeaderName::from_static("metadata-flavor");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Serves an [`Issuer`]'s JWKS over HTTP on 127.0.0.1 at
/// `/oauth2/v3/certs`, with Google's `Cache-Control`, counting fetches.
///
/// The JWKS is read from the issuer at every request, so rotations and
/// retirements show at once. Dropping the server stops it.
pub struct JwksServer {
    addr: SocketAddr,
    fetches: Arc<AtomicUsize>,
    _stop: watch::Sender<()>,
}

impl JwksServer {
    /// Serves `issuer`'s JWKS with `Cache-Control: public,
    /// max-age=<max_age_secs>, must-revalidate, no-transform`.
    pub async fn start(issuer: Issuer, max_age_secs: u64) -> Self {
        Self::start_with_extra_keys(issuer, max_age_secs, Vec::new()).await
    }

    /// Like [`start`](Self::start), with `extra_keys` appended to the `keys`
    /// of every response (for tests of malformed, weak or foreign keys).
    pub async fn start_with_extra_keys(
        issuer: Issuer,
        max_age_secs: u64,
        extra_keys: Vec<Value>,
    ) -> Self {
        let fetches = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&fetches);
        let cache_control =
            format!("public, max-age={max_age_secs}, must-revalidate, no-transform");
        let handler = move || {
            counter.fetch_add(1, SeqCst);
            let mut jwks = issuer.jwks();
            if let Some(keys) = jwks["keys"].as_array_mut() {
                keys.extend(extra_keys.iter().cloned());
            }
            let headers = [
                (CACHE_CONTROL, cache_control.clone()),
                (CONTENT_TYPE, "application/json".to_owned()),
            ];
            ready((headers, jwks.to_string()))
        };
        let (stop, _) = watch::channel(());
        let addr = serve(Router::new().route(CERTS_PATH, get(handler)), &stop).await;
        Self {
            addr,
            fetches,
            _stop: stop,
        }
    }

    /// The JWKS URL: `http://127.0.0.1:PORT/oauth2/v3/certs`.
    pub fn uri(&self) -> String {
        format!("http://{}{CERTS_PATH}", self.addr)
    }

    /// How many times the JWKS has been fetched.
    pub fn fetch_count(&self) -> usize {
        self.fetches.load(SeqCst)
    }
}

/// An emulator of the GCE metadata server, for one service account.
///
/// `GET /computeMetadata/v1/instance/service-accounts/default/identity?audience=AUD[&format=full|standard][&licenses=..]`
/// answers a fresh ID token from the issuer (with the `google.compute_engine`
/// claims for `format=full` only); `GET ../default/email` answers the email.
/// Like the real one, it answers 403 to requests without the header
/// `Metadata-Flavor: Google` or with `X-Forwarded-For`, 400 to a missing or
/// empty audience, and puts `Metadata-Flavor: Google` on every response.
/// Dropping the server stops it.
pub struct MetadataServer {
    addr: SocketAddr,
    state: Arc<MetadataState>,
    _stop: watch::Sender<()>,
}

struct MetadataState {
    issuer: Issuer,
    sa: ServiceAccount,
    requests: AtomicUsize,
}

impl MetadataServer {
    /// Serves ID tokens for `sa`, signed by `issuer`.
    pub async fn start(issuer: Issuer, sa: ServiceAccount) -> Self {
        let state = Arc::new(MetadataState {
            issuer,
            sa,
            requests: AtomicUsize::new(0),
        });
        let router = Router::new()
            .fallback(metadata)
            .with_state(Arc::clone(&state));
        let (stop, _) = watch::channel(());
        let addr = serve(router, &stop).await;
        Self {
            addr,
            state,
            _stop: stop,
        }
    }

    /// `127.0.0.1:PORT`: the value for `GCE_METADATA_HOST`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// How many requests the server has had, refused ones included.
    pub fn request_count(&self) -> usize {
        self.state.requests.load(SeqCst)
    }
}

async fn metadata(
    State(state): State<Arc<MetadataState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    state.requests.fetch_add(1, SeqCst);
    let (status, body) = answer(&state, &method, &uri, &headers);
    let headers = [
        (METADATA_FLAVOR, "Google"),
        (CONTENT_TYPE, "text/plain; charset=utf-8"),
    ];
    (status, headers, body).into_response()
}

fn answer(
    state: &MetadataState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> (StatusCode, String) {
    if headers
        .get(METADATA_FLAVOR)
        .is_none_or(|flavor| flavor != "Google")
    {
        let body = "Missing required header \"Metadata-Flavor\": \"Google\"\n";
        return (StatusCode::FORBIDDEN, body.to_owned());
    }
    if headers.contains_key(X_FORWARDED_FOR) {
        let body = "Request had a X-Forwarded-For header and was rejected\n";
        return (StatusCode::FORBIDDEN, body.to_owned());
    }
    if method != Method::GET {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed\n".to_owned(),
        );
    }
    let Ok(Query(query)) = Query::<HashMap<String, String>>::try_from_uri(uri) else {
        return (StatusCode::BAD_REQUEST, "Malformed query\n".to_owned());
    };
    match uri.path() {
        IDENTITY_PATH => match query
            .get("audience")
            .filter(|audience| !audience.is_empty())
        {
            None => (
                StatusCode::BAD_REQUEST,
                "non-empty audience parameter required\n".to_owned(),
            ),
            Some(audience) => {
                let full = query.get("format").is_some_and(|format| format == "full");
                let claims = state.issuer.claims(&state.sa, audience, full);
                (StatusCode::OK, state.issuer.sign(&claims))
            }
        },
        EMAIL_PATH => (StatusCode::OK, state.sa.email.clone()),
        _ => (StatusCode::NOT_FOUND, "Not Found\n".to_owned()),
    }
}
