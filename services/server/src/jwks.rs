//! Google's signing keys: fetched over HTTPS (reqwest + rustls), kept in
//! memory for the response's `Cache-Control: max-age`, refetched on demand.
//!
//! * Keys that are not RSA signature keys of at least 2048 bits, or that are
//!   otherwise unusable (bad encoding, `use` other than `sig`, `alg` other than
//!   RS256, no `kid`), are skipped one by one; the rest of the set still works.
//! * A token with an unknown `kid` triggers one refetch, shared by every
//!   concurrent caller (single flight behind one async lock), and such
//!   refetches happen at most once per `jwks_refetch_cooldown_seconds`, so a
//!   flood of random `kid`s cannot make the service hammer Google.
//! * A failed fetch never throws away the keys we have: expired keys keep
//!   verifying until a fetch succeeds, and a failing endpoint is retried at
//!   most once per [`FAILURE_RETRY`].
//! * `max-age` is clamped to [`MIN_MAX_AGE`]..=[`MAX_MAX_AGE`]; without one
//!   the keys are kept for [`DEFAULT_MAX_AGE`].

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use headers::{CacheControl, HeaderMapExt as _};
use jsonwebtoken::{
    DecodingKey,
    jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse},
};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Shortest time keys are kept, whatever `max-age` says.
pub const MIN_MAX_AGE: Duration = Duration::from_secs(60);
/// Longest time keys are kept without a refetch.
pub const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// How long keys are kept when the response has no `max-age`.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
/// After a failed fetch, the next one waits at least this long.
pub const FAILURE_RETRY: Duration = Duration::from_secs(1);
/// Largest JWKS document accepted.
pub const MAX_BODY_BYTES: usize = 512 * 1024;
/// Smallest RSA modulus accepted.
pub const MIN_RSA_BITS: usize = 2048;

/// Why no key could be found for a `kid`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The `kid` is not in the key set, even after a refetch (or the refetch
    /// was rate-limited). The token is not trusted; retrying will not help
    /// unless Google publishes the key.
    #[error("signing key not found")]
    UnknownKid,
    /// No key set could be fetched and none is cached. Retrying later helps.
    #[error("Google's signing keys are unavailable")]
    Unavailable,
}

/// A fetched, filtered key set.
struct KeySet {
    keys: HashMap<String, Arc<DecodingKey>>,
    expires_at: Instant,
    /// When the background refresher fetches again: 75-85% into `max-age`.
    refresh_due: Instant,
}

#[derive(Default)]
struct Gate {
    last_kid_refetch: Option<Instant>,
    last_failure: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Cold,
    Expired,
    UnknownKid,
}

/// The JWKS cache.
pub struct Jwks {
    http: reqwest::Client,
    uri: String,
    cooldown: Duration,
    current: RwLock<Option<Arc<KeySet>>>,
    gate: tokio::sync::Mutex<Gate>,
    attempts: AtomicU64,
}

impl Jwks {
    /// A cache for the key set at `uri`; `timeout` bounds each fetch and
    /// `cooldown` separates refetches caused by unknown `kid`s.
    pub fn new(uri: String, timeout: Duration, cooldown: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tokenbridge/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            uri,
            cooldown,
            current: RwLock::new(None),
            gate: tokio::sync::Mutex::new(Gate::default()),
            attempts: AtomicU64::new(0),
        })
    }

    /// Fetches the key set now unless one is cached (used at start-up so the
    /// first caller does not wait). Returns whether keys are available.
    pub async fn prefetch(&self) -> bool {
        let seen = self.attempts.load(Ordering::Acquire);
        if self.snapshot().is_some() {
            return true;
        }
        self.refresh(seen, Reason::Cold).await.is_some()
    }

    /// Whether any key set (fresh or stale) is held.
    pub fn has_keys(&self) -> bool {
        self.snapshot().is_some()
    }

    /// The key for `kid`, fetching or refetching the set as the rules above say.
    pub async fn key(&self, kid: &str) -> Result<Arc<DecodingKey>, KeyError> {
        let seen = self.attempts.load(Ordering::Acquire);
        let set = match self.snapshot() {
            None => self
                .refresh(seen, Reason::Cold)
                .await
                .ok_or(KeyError::Unavailable)?,
            Some(set) if set.expires_at <= Instant::now() => {
                self.refresh(seen, Reason::Expired).await.unwrap_or(set)
            }
            Some(set) => set,
        };
        if let Some(key) = set.keys.get(kid) {
            return Ok(key.clone());
        }
        let set = self.refresh(seen, Reason::UnknownKid).await.unwrap_or(set);
        set.keys.get(kid).cloned().ok_or(KeyError::UnknownKid)
    }

    fn snapshot(&self) -> Option<Arc<KeySet>> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn store(&self, set: KeySet) {
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Some(Arc::new(set));
    }

    /// One fetch at a time; callers that waited while another fetch ran take
    /// its result instead of fetching again.
    async fn refresh(&self, seen: u64, reason: Reason) -> Option<Arc<KeySet>> {
        let mut gate = self.gate.lock().await;
        if self.attempts.load(Ordering::Acquire) != seen {
            return self.snapshot();
        }
        let now = Instant::now();
        if let Some(at) = gate.last_failure
            && now.duration_since(at) < FAILURE_RETRY
        {
            return self.snapshot();
        }
        if reason == Reason::UnknownKid {
            if let Some(at) = gate.last_kid_refetch
                && now.duration_since(at) < self.cooldown
            {
                debug!("unknown kid: refetch skipped, cooldown in force");
                return self.snapshot();
            }
            gate.last_kid_refetch = Some(now);
        }
        self.fetch_and_store(&mut gate).await;
        self.snapshot()
    }

    /// Fetches under the gate; returns whether a new key set is in place.
    async fn fetch_and_store(&self, gate: &mut Gate) -> bool {
        let ok = match self.fetch().await {
            Ok(set) => {
                gate.last_failure = None;
                self.store(set);
                true
            }
            Err(reason_text) => {
                gate.last_failure = Some(Instant::now());
                warn!(jwks_uri = %self.uri, error = %reason_text, stale_keys_kept = self.has_keys(), "JWKS fetch failed");
                false
            }
        };
        self.attempts.fetch_add(1, Ordering::AcqRel);
        ok
    }

    /// Refreshes the keys ahead of `max-age`, for as long as it runs: at
    /// 75-85% of each set's `max-age` (jittered), and after a failure again
    /// with exponential backoff from 1 s to 60 s, keeping the last good set.
    pub async fn keep_fresh(&self) {
        loop {
            let due = self
                .snapshot()
                .map_or_else(Instant::now, |set| set.refresh_due);
            tokio::time::sleep_until(due).await;
            let mut retry = FAILURE_RETRY;
            loop {
                let ok = {
                    let mut gate = self.gate.lock().await;
                    self.fetch_and_store(&mut gate).await
                };
                if ok {
                    break;
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(60));
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let mut resp = self
            .http
            .get(&self.uri)
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
            .map_or(DEFAULT_MAX_AGE, |age| age.clamp(MIN_MAX_AGE, MAX_MAX_AGE));
        if resp
            .content_length()
            .is_some_and(|len| len > MAX_BODY_BYTES as u64)
        {
            return Err(format!("body larger than {MAX_BODY_BYTES} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading body: {e}"))?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(format!("body larger than {MAX_BODY_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let (keys, skipped) = parse_key_set(&body)?;
        if keys.is_empty() {
            return Err(format!("no usable key in the set ({skipped} skipped)"));
        }
        info!(
            keys = keys.len(),
            skipped,
            max_age_secs = max_age.as_secs(),
            "fetched Google signing keys"
        );
        let now = Instant::now();
        let refresh_due = now + max_age.mul_f64(rand::random_range(0.75..0.85));
        Ok(KeySet {
            keys,
            expires_at: now + max_age,
            refresh_due,
        })
    }
}

/// Parses a JWKS document, keeping the usable keys by `kid` and counting
/// the skipped ones.
fn parse_key_set(body: &[u8]) -> Result<(HashMap<String, Arc<DecodingKey>>, usize), String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = HashMap::new();
    let mut skipped = 0;
    for value in doc.keys {
        match usable_key(value) {
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

fn usable_key(value: serde_json::Value) -> Result<(String, DecodingKey), &'static str> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|_| "not a JWK")?;
    let kid = match &jwk.common.key_id {
        Some(kid) if !kid.is_empty() => kid.clone(),
        _ => return Err("no kid"),
    };
    if !matches!(
        jwk.common.public_key_use,
        None | Some(PublicKeyUse::Signature)
    ) {
        return Err("use is not sig");
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.iter().any(|op| matches!(op, KeyOperations::Verify))
    {
        return Err("key_ops lacks verify");
    }
    if !matches!(jwk.common.key_algorithm, None | Some(KeyAlgorithm::RS256)) {
        return Err("alg is not RS256");
    }
    let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else {
        return Err("not an RSA key");
    };
    let n = URL_SAFE_NO_PAD
        .decode(&rsa.n)
        .map_err(|_| "modulus is not base64url")?;
    let e = URL_SAFE_NO_PAD
        .decode(&rsa.e)
        .map_err(|_| "exponent is not base64url")?;
    if modulus_bits(&n) < MIN_RSA_BITS {
        return Err("RSA modulus shorter than 2048 bits");
    }
    let e_value = e.iter().skip_while(|&&b| b == 0).try_fold(0u64, |acc, &b| {
        (acc < (1 << 56)).then(|| (acc << 8) | u64::from(b))
    });
    match e_value {
        Some(e) if e >= 3 && e % 2 == 1 => {}
        _ => return Err("unusable RSA exponent"),
    }
    Ok((kid, DecodingKey::from_rsa_raw_components(&n, &e)))
}

fn modulus_bits(n: &[u8]) -> usize {
    let n: Vec<u8> = n.iter().copied().skip_while(|&b| b == 0).collect();
    match n.first() {
        None => 0,
        Some(first) => n.len() * 8 - first.leading_zeros() as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modulus_bit_length_ignores_leading_zeros() {
        assert_eq!(modulus_bits(&[0, 0, 1]), 1);
        assert_eq!(modulus_bits(&[0x80, 0]), 16);
        assert_eq!(modulus_bits(&[0; 4]), 0);
        assert_eq!(modulus_bits(&[0xff; 256]), 2048);
    }

    #[test]
    fn unusable_keys_are_skipped_one_by_one() {
        let big_n = URL_SAFE_NO_PAD.encode([0xc5u8; 256]);
        let small_n = URL_SAFE_NO_PAD.encode([0xc5u8; 128]);
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "good", "n": big_n, "e": "AQAB"},
            {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "small", "n": small_n, "e": "AQAB"},
            {"kty": "RSA", "alg": "RS256", "use": "enc", "kid": "enc", "n": big_n, "e": "AQAB"},
            {"kty": "RSA", "alg": "RS512", "kid": "rs512", "n": big_n, "e": "AQAB"},
            {"kty": "RSA", "kid": "e-even", "n": big_n, "e": "AAI"},
            {"kty": "RSA", "n": big_n, "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "kid": "ec", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "bad-b64", "n": "!!!", "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "ops", "key_ops": ["encrypt"], "n": big_n, "e": "AQAB"},
            "not even an object",
            {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "good", "n": big_n, "e": "AQAB"}
        ]});
        let (keys, skipped) = parse_key_set(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["good"]);
        assert_eq!(skipped, 11);
    }

    #[test]
    fn documents_that_are_not_key_sets_are_errors() {
        assert!(parse_key_set(b"<html>").is_err());
        assert!(parse_key_set(b"{}").is_err());
        assert!(parse_key_set(br#"{"keys": 5}"#).is_err());
    }
}
