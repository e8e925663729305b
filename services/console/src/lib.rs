//! tokenbridge's web console for the platform team: server-rendered HTML
//! (axum and minijinja, no JavaScript) over a [`Backend`] the server
//! implements with its policy admin service, its audit ring and its
//! metrics.
//!
//! | path | what |
//! | --- | --- |
//! | `GET /` | redirect to `/bindings` |
//! | `GET /bindings?q=` | the bindings, filtered by name, service account or role (substring, any case) |
//! | `GET /bindings/{name}` | one binding: roles, conditions, session scope, tags, the trust policy its roles need |
//! | `GET /explain`, `POST /explain` | the decision for a service account and role (and optional claims), with each binding's evaluation |
//! | `GET /deny` | the deny list, with the deny and allow forms for admins |
//! | `POST /deny`, `POST /allow` | the only writes: admin, CSRF token, then a confirmation page; `confirm=yes` writes and redirects (303) to `/deny` |
//! | `GET /decisions?outcome=&sa=` | the last exchange decisions of this replica |
//! | `GET /status` | keys, cache, STS, store, and a chart of decisions per minute |
//! | `GET /healthz` | `200 ok`, without authentication, for the load balancer |
//!
//! Who may look is [`ConsoleConfig`] (`[console]`; see [`config`]): behind
//! Identity-Aware Proxy, the verified email of `x-goog-iap-jwt-assertion`
//! matched against `viewers` and `admins`; without IAP, loopback only and
//! everyone there is the admin `loopback`. Every refusal and failure is a
//! page with its HTTP status; no page or log line contains an assertion, a
//! token or a secret. Every response carries a strict
//! `Content-Security-Policy` (no script at all), `X-Content-Type-Options`,
//! `Referrer-Policy: no-referrer` and `Cache-Control: no-store`. Request
//! bodies are limited to [`MAX_BODY_BYTES`] (413 past it) and each form or
//! query field to [`MAX_FIELD_BYTES`] (400).

#![forbid(unsafe_code)]

mod access;
pub mod backend;
mod chart;
pub mod config;
mod csrf;
mod iap;
mod pages;
mod render;
#[cfg(feature = "testing")]
pub mod testing;

use std::{path::PathBuf, sync::Arc};

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::{HeaderValue, header},
    middleware,
    response::Response,
    routing::{get, post},
};

pub use access::LOOPBACK_ACTOR;
pub use backend::{Backend, BackendError, Decision, MinuteBucket, Outcome, Status, TrustPolicy};
pub use config::ConsoleConfig;
pub use iap::ASSERTION_HEADER;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Longest form or query field accepted.
pub const MAX_FIELD_BYTES: usize = 512;

/// The `Content-Security-Policy` of every response.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'";

/// Why the console could not be built. Each variant is a start-up problem
/// to fix in the config or the environment; retrying does not help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsoleError {
    /// `[console]` is inconsistent (the message names the key).
    #[error("{0}")]
    Config(String),
    /// `csrf_secret_file` cannot be read or is too short.
    #[error("console.csrf_secret_file {path}: {reason}", path = path.display())]
    CsrfSecret {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No random CSRF key could be drawn from the system.
    #[error("no randomness for the console's CSRF key")]
    Random,
    /// The HTTP client for IAP's keys could not be built.
    #[error("the HTTP client for IAP's keys cannot be built")]
    HttpClient(#[source] reqwest::Error),
    /// A page template does not compile (a bug in this crate).
    #[error("console templates: {0}")]
    Templates(String),
}

/// What every handler shares.
pub(crate) struct App {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) access: access::Access,
    pub(crate) csrf: csrf::Csrf,
}

/// The console's routes over `backend`, authenticated as `config` says.
/// Checks `config` first ([`ConsoleConfig::check`]). Serve it with an HTTP
/// server that puts the peer's address in each request's extensions as
/// `axum::extract::ConnectInfo<SocketAddr>` (the tokenbridge server's
/// hardened listener does; so does `axum::serve` with
/// `into_make_service_with_connect_info::<SocketAddr>()`): without it, the
/// loopback-only console refuses every request.
pub fn router(config: &ConsoleConfig, backend: Arc<dyn Backend>) -> Result<Router, ConsoleError> {
    config.check().map_err(ConsoleError::Config)?;
    render::check().map_err(ConsoleError::Templates)?;
    let csrf = match &config.csrf_secret_file {
        Some(path) => {
            let secret =
                config::read_csrf_secret(path).map_err(|reason| ConsoleError::CsrfSecret {
                    path: path.clone(),
                    reason,
                })?;
            csrf::Csrf::new(&secret)
        }
        None => csrf::Csrf::random().map_err(|_| ConsoleError::Random)?,
    };
    let access = match &config.iap_audience {
        Some(audience) => access::Access::iap(
            iap::Iap::new(&config.iap_jwks_uri, &config.iap_issuer, audience)
                .map_err(ConsoleError::HttpClient)?,
            &config.viewers,
            &config.admins,
        ),
        None => access::Access::Loopback,
    };
    let app = Arc::new(App {
        backend,
        access,
        csrf,
    });
    let pages = Router::new()
        .route("/", get(pages::home))
        .route("/bindings", get(pages::bindings))
        .route("/bindings/{name}", get(pages::binding))
        .route(
            "/explain",
            get(pages::explain_get).post(pages::explain_post),
        )
        .route("/deny", get(pages::deny_list).post(pages::deny_post))
        .route("/allow", post(pages::allow_post))
        .route("/decisions", get(pages::decisions))
        .route("/status", get(pages::status))
        .fallback(pages::not_found)
        .method_not_allowed_fallback(pages::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            app.clone(),
            access::authenticate,
        ))
        .with_state(app);
    Ok(Router::new()
        .route("/healthz", get(pages::healthz))
        .merge(pages)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::map_response(security_headers)))
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}
