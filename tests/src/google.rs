//! Google's HTTP endpoints that tokenbridge talks to: the JWKS of ID token
//! signing keys and the GCE metadata server's identity endpoint.

use std::{
    collections::HashMap,
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

/// What a [`JwksServer`] answers instead of the key set, to play Google's
/// endpoint having a bad day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksFault {
    /// This HTTP status (e.g. 503) with a short text body.
    Status(u16),
    /// No answer until the fault changes or the server is dropped.
    Hang,
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with `{"keys": []}`.
    EmptyKeySet,
    /// 200 with a valid-looking JSON document larger than any sane JWKS
    /// (1 MiB of keys that are not keys).
    Oversized,
    /// 200 with a `keys` array nested 10,000 levels deep.
    DeeplyNested,
}

/// Serves an [`Issuer`]'s JWKS over HTTP on 127.0.0.1 at
/// `/oauth2/v3/certs`, with Google's `Cache-Control`, counting fetches; or,
/// after [`set_fault`](Self::set_fault), fails in a chosen way.
///
/// The JWKS is read from the issuer at every request, so rotations and
/// retirements show at once. Dropping the server stops it.
pub struct JwksServer {
    addr: SocketAddr,
    state: Arc<JwksState>,
    _stop: watch::Sender<()>,
}

struct JwksState {
    issuer: Issuer,
    extra_keys: Vec<Value>,
    cache_control: String,
    fetches: watch::Sender<usize>,
    fault: watch::Sender<Option<JwksFault>>,
    stopped: watch::Receiver<()>,
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
        let (stop, stopped) = watch::channel(());
        let state = Arc::new(JwksState {
            issuer,
            extra_keys,
            cache_control: format!("public, max-age={max_age_secs}, must-revalidate, no-transform"),
            fetches: watch::Sender::new(0),
            fault: watch::Sender::new(None),
            stopped,
        });
        let router = Router::new()
            .route(CERTS_PATH, get(certs))
            .with_state(Arc::clone(&state));
        let addr = serve(router, &stop).await;
        Self {
            addr,
            state,
            _stop: stop,
        }
    }

    /// The JWKS URL: `http://127.0.0.1:PORT/oauth2/v3/certs`.
    pub fn uri(&self) -> String {
        format!("http://{}{CERTS_PATH}", self.addr)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many times the JWKS has been fetched (faulty answers included).
    pub fn fetch_count(&self) -> usize {
        *self.state.fetches.borrow()
    }

    /// Resolves once `n` fetches in all have arrived.
    pub async fn wait_for_fetches(&self, n: usize) {
        let mut fetches = self.state.fetches.subscribe();
        let _ = fetches.wait_for(|&count| count >= n).await;
    }

    /// Answers later requests with `fault`, or normally again with `None`
    /// (which also releases requests held by [`JwksFault::Hang`]).
    pub fn set_fault(&self, fault: Option<JwksFault>) {
        self.state.fault.send_replace(fault);
    }
}

async fn certs(State(state): State<Arc<JwksState>>) -> Response {
    state.fetches.send_modify(|n| *n += 1);
    let fault = state.fault.borrow().clone();
    let json = |body: String| {
        (
            [
                (CACHE_CONTROL, state.cache_control.clone()),
                (CONTENT_TYPE, "application/json".to_owned()),
            ],
            body,
        )
            .into_response()
    };
    match fault {
        None => {
            let mut jwks = state.issuer.jwks();
            if let Some(keys) = jwks["keys"].as_array_mut() {
                keys.extend(state.extra_keys.iter().cloned());
            }
            json(jwks.to_string())
        }
        Some(JwksFault::Status(code)) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "backend unavailable\n",
        )
            .into_response(),
        Some(JwksFault::Hang) => {
            let mut fault = state.fault.subscribe();
            let mut stopped = state.stopped.clone();
            tokio::select! {
                _ = fault.wait_for(|f| *f != Some(JwksFault::Hang)) => {}
                _ = stopped.changed() => {}
            }
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
        Some(JwksFault::Garbage) => json("<html><body>502 Bad Gateway</body></html>".to_owned()),
        Some(JwksFault::EmptyKeySet) => json(r#"{"keys": []}"#.to_owned()),
        Some(JwksFault::Oversized) => {
            let filler = format!(r#"{{"kty": "none", "pad": "{}"}}"#, "x".repeat(1024));
            let keys = vec![filler; 1024].join(",");
            json(format!(r#"{{"keys": [{keys}]}}"#))
        }
        Some(JwksFault::DeeplyNested) => json(format!(
            r#"{{"keys": {}{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        )),
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
