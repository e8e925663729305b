//! JSON Web Key Sets as tokenbridge reads them: Google's signing keys (the
//! server's `google::jwks`) and Identity-Aware Proxy's (the console's `iap`).
//! Both keep their own cache, refresh and key rules; this crate is what they
//! share:
//!
//! - [`fetch`]: one GET of the set, with a bound on the body (refused while
//!   it is read, whatever `Content-Length` says) and the response's
//!   `Cache-Control: max-age` clamped to the caller's bounds;
//! - [`parse_key_set`]: the document's keys by `kid`, each one kept or
//!   skipped by the caller's rule, so one odd key never spoils the set.

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::Arc,
    time::Duration,
};

use headers::{CacheControl, HeaderMapExt as _};
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use tracing::debug;

/// What a fetch accepts.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The largest body read.
    pub max_body_bytes: usize,
    /// The keys' lifetime when the response has no `max-age`.
    pub default_max_age: Duration,
    /// `max-age` is clamped to at least this...
    pub min_max_age: Duration,
    /// ...and at most this.
    pub max_max_age: Duration,
}

/// A fetched JWKS document and how long its keys may be kept.
#[derive(Debug)]
pub struct Fetched {
    /// The body, at most [`Bounds::max_body_bytes`].
    pub body: Vec<u8>,
    /// The response's `max-age`, clamped, or the default.
    pub max_age: Duration,
}

/// GETs `uri` with `http` (whose timeout bounds the whole fetch); `Err`
/// says why in words fit for a log line (the URI is the caller's to add).
pub async fn fetch(http: &reqwest::Client, uri: &str, bounds: &Bounds) -> Result<Fetched, String> {
    let mut resp = http
        .get(uri)
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("HTTP status {}", resp.status()));
    }
    let max_age = resp
        .headers()
        .typed_get::<CacheControl>()
        .and_then(|cc| cc.max_age())
        .map_or(bounds.default_max_age, |age| {
            age.clamp(bounds.min_max_age, bounds.max_max_age)
        });
    let limit = bounds.max_body_bytes;
    if resp.content_length().is_some_and(|len| len > limit as u64) {
        return Err(format!("body larger than {limit} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("reading body: {e}"))?
    {
        if body.len() + chunk.len() > limit {
            return Err(format!("body larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Fetched { body, max_age })
}

/// The signature keys of a JWKS document by `kid` that `usable` keeps, and
/// how many were skipped (not a JWK, no `kid`, a `use` other than `sig`,
/// refused by `usable` with its reason, or a `kid` seen before: the first one
/// wins). `Err` when the body is not a JWKS
/// document at all.
pub fn parse_key_set<K>(
    body: &[u8],
    usable: impl Fn(&Jwk) -> Result<K, &'static str>,
) -> Result<(HashMap<String, Arc<K>>, usize), String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    // UTF-8 is checked first: serde_json does not check it inside the
    // members it skips, and a document that is not UTF-8 is not JSON.
    let body = std::str::from_utf8(body)
        .map_err(|e| format!("not a JWKS document: not UTF-8 text ({e})"))?;
    let doc: Doc = serde_json::from_str(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = HashMap::new();
    let mut skipped = 0;
    for value in doc.keys {
        let kept = serde_json::from_value::<Jwk>(value)
            .map_err(|_| "not a JWK")
            .and_then(|jwk| match &jwk.common.key_id {
                Some(kid) if !kid.is_empty() => match jwk.common.public_key_use {
                    None | Some(PublicKeyUse::Signature) => Ok((kid.clone(), usable(&jwk)?)),
                    Some(_) => Err("use is not sig"),
                },
                _ => Err("no kid"),
            });
        match kept {
            Ok((kid, key)) => match keys.entry(kid) {
                Entry::Occupied(e) => {
                    debug!(kid = %e.key(), "JWKS key skipped: duplicate kid");
                    skipped += 1;
                }
                Entry::Vacant(e) => {
                    e.insert(Arc::new(key));
                }
            },
            Err(why) => {
                debug!(reason = why, "JWKS key skipped");
                skipped += 1;
            }
        }
    }
    Ok((keys, skipped))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_are_kept_by_the_rule_and_the_first_kid_wins() {
        let doc = br#"{"keys": [
            {"kty": "oct", "kid": "a", "k": "AAAA"},
            {"kty": "oct", "kid": "a", "k": "BBBB"},
            {"kty": "oct", "k": "CCCC"},
            {"kty": "oct", "kid": "b", "k": "DDDD", "use": "enc"},
            {"not": "a jwk"},
            {"kty": "oct", "kid": "c", "k": "EEEE"},
            {"kty": "oct", "kid": "d", "k": "FFFF"}
        ]}"#;
        let (keys, skipped) = parse_key_set(doc, |jwk| match jwk.common.key_id.as_deref() {
            Some("d") => Err("refused by the rule"),
            kid => Ok(kid.unwrap_or_default().to_string()),
        })
        .unwrap();
        let mut kept: Vec<_> = keys.values().map(|k| k.as_str()).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["a", "c"]);
        // The second "a", the one without a kid, "b" (use enc), the non-JWK
        // and "d" (refused by the rule).
        assert_eq!(skipped, 5);
        assert!(
            parse_key_set(b"\xff\xfe", |_| Ok(()))
                .unwrap_err()
                .contains("not UTF-8")
        );
        assert!(
            parse_key_set(b"{\"keys\": 1}", |_| Ok(()))
                .unwrap_err()
                .starts_with("not a JWKS document")
        );
    }

    #[tokio::test]
    async fn a_fetch_bounds_the_body_and_clamps_max_age() {
        use axum::{Router, routing::get};
        let app = Router::new()
            .route(
                "/small",
                get(|| async { ([("cache-control", "public, max-age=5")], "{\"keys\": []}") }),
            )
            .route(
                "/big",
                get(|| async { ([("cache-control", "max-age=999999")], "x".repeat(2048)) }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let bounds = Bounds {
            max_body_bytes: 1024,
            default_max_age: Duration::from_secs(300),
            min_max_age: Duration::from_secs(60),
            max_max_age: Duration::from_secs(3600),
        };
        let http = reqwest::Client::new();
        let small = fetch(&http, &format!("http://{addr}/small"), &bounds)
            .await
            .unwrap();
        assert_eq!(small.body, b"{\"keys\": []}");
        assert_eq!(small.max_age, Duration::from_secs(60));
        let big = fetch(&http, &format!("http://{addr}/big"), &bounds)
            .await
            .unwrap_err();
        assert_eq!(big, "body larger than 1024 bytes");
        let missing = fetch(&http, &format!("http://{addr}/none"), &bounds)
            .await
            .unwrap_err();
        assert!(missing.starts_with("HTTP status 404"), "{missing}");
    }
}
