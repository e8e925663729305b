//! Who may look and who may write.
//!
//! * With IAP: the verified email of the IAP assertion, matched
//!   (case-insensitively) against `viewers` and `admins`.
//! * Without IAP: the console serves loopback only. The person is
//!   `loopback` and an admin; a peer address that is not loopback is
//!   refused, and so is a `Host` header that does not name a loopback
//!   address or `localhost` (a DNS-rebinding page in the person's browser
//!   would otherwise be same-origin with the console).
//! * Writes (POST) are also refused when the browser says they come from
//!   another site (`Origin` other than the `Host`, or
//!   `Sec-Fetch-Site: cross-site`); the CSRF token ([`crate::csrf`]) is
//!   checked by the handler.

use std::{collections::HashSet, net::SocketAddr, sync::Arc};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tracing::info;

use crate::{
    App,
    iap::{ASSERTION_HEADER, Iap, IapError},
    render::PageError,
};

/// The actor name without IAP.
pub const LOOPBACK_ACTOR: &str = "loopback";

/// The person behind a request, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Principal {
    /// Their verified email, or [`LOOPBACK_ACTOR`].
    pub(crate) actor: String,
    /// Whether they may deny and allow.
    pub(crate) admin: bool,
}

/// How requests are authenticated.
pub(crate) enum Access {
    Loopback,
    Iap {
        iap: Box<Iap>,
        viewers: HashSet<String>,
        admins: HashSet<String>,
    },
}

impl Access {
    pub(crate) fn iap(iap: Iap, viewers: &[String], admins: &[String]) -> Self {
        let lower = |list: &[String]| list.iter().map(|e| e.trim().to_ascii_lowercase()).collect();
        Access::Iap {
            iap: Box::new(iap),
            viewers: lower(viewers),
            admins: lower(admins),
        }
    }

    async fn principal(
        &self,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
        path: &str,
    ) -> Result<Principal, PageError> {
        match self {
            Access::Loopback => {
                // No peer address: served without `ConnectInfo`, so where the
                // request comes from is unknown; refused, never assumed.
                if peer.is_none_or(|peer| !peer.ip().is_loopback()) {
                    return Err(PageError::new(
                        StatusCode::FORBIDDEN,
                        "Loopback only",
                        "Without Identity-Aware Proxy this console answers loopback clients only.",
                    ));
                }
                if let Some(host) = headers.get(header::HOST)
                    && !host.to_str().is_ok_and(is_loopback_host)
                {
                    return Err(PageError::new(
                        StatusCode::FORBIDDEN,
                        "Loopback only",
                        "Without Identity-Aware Proxy this console must be opened as localhost or a loopback address.",
                    ));
                }
                Ok(Principal {
                    actor: LOOPBACK_ACTOR.to_owned(),
                    admin: true,
                })
            }
            Access::Iap {
                iap,
                viewers,
                admins,
            } => {
                let assertion = headers.get(ASSERTION_HEADER).map(|v| v.as_bytes());
                let email = iap.verify(assertion).await.map_err(|e| {
                    info!(reason = e.kind(), path = %path, "console: IAP assertion refused");
                    iap_refusal(&e)
                })?;
                let admin = admins.contains(&email);
                if !admin && !viewers.contains(&email) {
                    info!(%email, path = %path, "console: not a listed viewer or admin");
                    return Err(PageError::new(
                        StatusCode::FORBIDDEN,
                        "Not allowed",
                        format!(
                            "{email} is signed in but is neither a viewer nor an admin of this console. Ask the platform team to add you to console.viewers or console.admins."
                        ),
                    ));
                }
                Ok(Principal {
                    actor: email,
                    admin,
                })
            }
        }
    }
}

fn iap_refusal(e: &IapError) -> PageError {
    let status = match e {
        IapError::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        IapError::Missing
        | IapError::Malformed(_)
        | IapError::Algorithm
        | IapError::UnknownKey
        | IapError::BadSignature
        | IapError::Expired
        | IapError::IssuedInFuture
        | IapError::Issuer
        | IapError::Audience
        | IapError::NoEmail => StatusCode::UNAUTHORIZED,
    };
    let title = if status == StatusCode::UNAUTHORIZED {
        "Not signed in"
    } else {
        "Sign-in unavailable"
    };
    PageError::new(status, title, e.message())
}

/// `localhost`, `127.0.0.1`, `[::1]`, … with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or("", |(ip, _)| ip)
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A POST that the browser says comes from another site.
///
/// `Sec-Fetch-Site` decides when the browser sends it (every current
/// browser does, over HTTPS and to localhost): only `same-origin` and
/// `none` (typed by the person) pass. Without it, `Origin` must name the
/// `Host`. (`Origin` alone is not enough: under this console's
/// `Referrer-Policy: no-referrer` browsers send `Origin: null` with its own
/// forms.) A client that sends neither is not a browser acting for someone
/// else; the CSRF token still has to match.
fn cross_site(method: &Method, headers: &HeaderMap) -> bool {
    if method == Method::GET || method == Method::HEAD {
        return false;
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_authority = origin.to_str().ok().and_then(|o| {
        o.strip_prefix("https://")
            .or_else(|| o.strip_prefix("http://"))
    });
    match (origin_authority, host) {
        (Some(a), Some(h)) => !a.eq_ignore_ascii_case(h),
        _ => true,
    }
}

/// Authenticates every request it wraps and hands the [`Principal`] to the
/// handlers; refusals are pages.
pub(crate) async fn authenticate(
    State(app): State<Arc<App>>,
    mut req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer);
    let path = req.uri().path().to_owned();
    let principal = match app.access.principal(req.headers(), peer, &path).await {
        Ok(p) => p,
        Err(page) => return page.into_response(),
    };
    if cross_site(req.method(), req.headers()) {
        info!(actor = %principal.actor, "console: cross-site form post refused");
        return PageError::new(
            StatusCode::FORBIDDEN,
            "Cross-site request refused",
            "This form was posted from another site. Open the console and use its own forms.",
        )
        .into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for ok in [
            "localhost",
            "localhost:9465",
            "127.0.0.1:9465",
            "127.0.0.2",
            "[::1]:80",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example.com",
            "evil.example.com:9465",
            "10.0.0.1:9465",
            "[::2]:80",
            "localhost.evil.com",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn cross_site_posts() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:9465".parse().unwrap());
        assert!(
            !cross_site(&Method::POST, &h),
            "no Origin: not a browser or same-origin"
        );
        h.insert(header::ORIGIN, "http://127.0.0.1:9465".parse().unwrap());
        assert!(!cross_site(&Method::POST, &h));
        h.insert(header::ORIGIN, "https://evil.example.com".parse().unwrap());
        assert!(cross_site(&Method::POST, &h));
        assert!(!cross_site(&Method::GET, &h), "reads are not writes");
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(cross_site(&Method::POST, &h));
        let mut s = HeaderMap::new();
        s.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(cross_site(&Method::POST, &s));
        s.insert("sec-fetch-site", "same-site".parse().unwrap());
        assert!(
            cross_site(&Method::POST, &s),
            "a sibling subdomain is another site"
        );
        // The console's own form under `Referrer-Policy: no-referrer`, as
        // Chromium posts it.
        s.insert("sec-fetch-site", "same-origin".parse().unwrap());
        s.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(!cross_site(&Method::POST, &s));
    }
}
