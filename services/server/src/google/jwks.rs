//! Google's signing keys: fetched over HTTPS (reqwest + rustls), kept in
//! memory for the response's `Cache-Control: max-age`, refreshed ahead of it
//! in the background, refetched on demand.
//!
//! * Keys that are not RSA signature keys of at least 2048 bits, or that are
//!   otherwise unusable (bad encoding, `use` other than `sig`, `alg` other than
//!   RS256, no `kid`), are skipped one by one; the rest of the set still works.
//! * A token with an unknown `kid` triggers one refetch, shared by every
//!   concurrent caller (single flight behind one async lock), and such
//!   refetches happen at most once per `jwks_refetch_cooldown_seconds`, so a
//!   flood of random `kid`s cannot make the service hammer Google.
//! * Outages of Google's endpoint (down, slow, 5xx, garbage, an empty key
//!   set, an oversized body) change nothing for tokens signed with a key we
//!   hold: a failed fetch never throws away the keys we have, and requests
//!   never wait for a refresh of keys they already have. Past `max-age` the
//!   last good keys are *stale* and keep verifying for
//!   `google.jwks_stale_window_seconds` (default 24 h); after that they are
//!   dropped from use and tokens get UNAVAILABLE until a fetch succeeds.
//!   [`Jwks::keep_fresh`] retries with exponential backoff and jitter (1 s to
//!   about a minute) and logs a warning while the keys are stale;
//!   [`Jwks::key_age`] and [`Jwks::is_stale`] tell the same to metrics.
//! * A `kid` that is not in the set while the endpoint is failing is
//!   UNAVAILABLE ([`KeyError::Unavailable`]), not "unknown": it may be a key
//!   Google rotated in during the outage.
//! * `max-age` is clamped to [`MIN_MAX_AGE`]..=[`MAX_MAX_AGE`]; without one
//!   the keys are kept for [`DEFAULT_MAX_AGE`].

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use backon::{BackoffBuilder as _, ExponentialBuilder};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, KeyOperations};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::observability::metrics::{KeyFreshness, Metrics};

/// Shortest time keys are kept, whatever `max-age` says.
pub const MIN_MAX_AGE: Duration = Duration::from_secs(60);
/// Longest time keys are kept without a refetch.
pub const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// How long keys are kept when the response has no `max-age`.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
/// After a failed fetch, the next one waits at least this long.
pub const FAILURE_RETRY: Duration = Duration::from_secs(1);
/// The background refresher's longest backoff before jitter (with jitter,
/// up to twice this).
pub const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(30);
/// Largest JWKS document accepted.
pub const MAX_BODY_BYTES: usize = 512 * 1024;
/// Smallest RSA modulus accepted.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted (aws-lc's RS256 verifier stops there).
pub const MAX_RSA_BITS: usize = 8192;
/// Default of `google.jwks_stale_window_seconds`.
pub const DEFAULT_STALE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Why no key could be found for a `kid`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The `kid` is not in the key set, even after a refetch (or the refetch
    /// was rate-limited). The token is not trusted; retrying will not help
    /// unless Google publishes the key.
    #[error("signing key not found")]
    UnknownKid,
    /// No usable key set is held (none fetched yet, or the last good one is
    /// past its stale window) and none could be fetched, or the `kid` is
    /// unknown while fetches fail. Retrying later helps.
    #[error("Google's signing keys are unavailable")]
    Unavailable,
}

/// One of Google's RS256 signing keys, parsed once when the key set is
/// fetched (issue 16).
///
/// Verifying through `jsonwebtoken::crypto::verify` rebuilt the RSA key from
/// its modulus and exponent on every call (aws-lc then recomputed the
/// modulus's Montgomery constants), cloned the key and boxed a verifier. A
/// token that is not in the verified-token cache paid all of that; with the
/// key parsed here, it pays the RSA operation alone.
pub struct SigningKey(ParsedPublicKey);

impl SigningKey {
    /// Whether `signature` (raw bytes, not base64) is an RSASSA-PKCS1-v1_5
    /// SHA-256 signature over `message` by this key.
    pub fn verifies_rs256(&self, message: &[u8], signature: &[u8]) -> bool {
        self.0.verify_sig(message, signature).is_ok()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(RS256)")
    }
}

/// A fetched, filtered key set.
struct KeySet {
    keys: HashMap<String, Arc<SigningKey>>,
    fetched_at: Instant,
    expires_at: Instant,
    /// When the background refresher fetches again: 75-85% into `max-age`.
    refresh_due: Instant,
}

impl KeySet {
    /// Whether the set may verify tokens at `now`: fresh, or stale but
    /// within `stale_window` past its expiry.
    fn usable_at(&self, now: Instant, stale_window: Duration) -> bool {
        now < self.expires_at + stale_window
    }
}

#[derive(Default)]
struct Gate {
    last_kid_refetch: Option<Instant>,
    last_failure: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// Nothing usable is held.
    Cold,
    UnknownKid,
}

/// The JWKS cache.
pub struct Jwks {
    http: reqwest::Client,
    uri: String,
    cooldown: Duration,
    stale_window: Duration,
    current: RwLock<Option<Arc<KeySet>>>,
    gate: tokio::sync::Mutex<Gate>,
    attempts: AtomicU64,
    /// Whether the last fetch failed.
    failing: AtomicBool,
    metrics: Arc<Metrics>,
}

impl KeyFreshness for Jwks {
    fn key_age(&self) -> Option<Duration> {
        Jwks::key_age(self)
    }

    fn is_stale(&self) -> bool {
        Jwks::is_stale(self)
    }

    fn key_count(&self) -> Option<usize> {
        Jwks::key_count(self)
    }
}

impl Jwks {
    /// A cache for the key set at `uri`; `timeout` bounds each fetch and
    /// `cooldown` separates refetches caused by unknown `kid`s. Stale keys
    /// are used for [`DEFAULT_STALE_WINDOW`] unless
    /// [`with_stale_window`](Self::with_stale_window) says otherwise.
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
            stale_window: DEFAULT_STALE_WINDOW,
            current: RwLock::new(None),
            gate: tokio::sync::Mutex::new(Gate::default()),
            attempts: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            metrics: Metrics::disabled(),
        })
    }

    /// Counts fetches and their failures in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// How long past their `max-age` the last good keys keep verifying
    /// while no fresh set can be fetched.
    pub fn with_stale_window(mut self, stale_window: Duration) -> Self {
        self.stale_window = stale_window;
        self
    }

    /// Fetches the key set now unless one is cached (used at start-up so the
    /// first caller does not wait). Returns whether keys are available.
    pub async fn prefetch(&self) -> bool {
        let seen = self.attempts.load(Ordering::Acquire);
        let now = Instant::now();
        if self
            .snapshot()
            .is_some_and(|set| set.usable_at(now, self.stale_window))
        {
            return true;
        }
        self.refresh(seen, Reason::Cold, now)
            .await
            .is_some_and(|set| set.usable_at(now, self.stale_window))
    }

    /// Whether any key set (fresh or stale) is held.
    pub fn has_keys(&self) -> bool {
        self.snapshot().is_some()
    }

    /// Time since the key set in use was fetched; `None` before the first
    /// successful fetch. For metrics and logs.
    pub fn key_age(&self) -> Option<Duration> {
        self.snapshot()
            .map(|set| Instant::now().saturating_duration_since(set.fetched_at))
    }

    /// How many keys the set in use holds; `None` before the first
    /// successful fetch. For metrics and the console.
    pub fn key_count(&self) -> Option<usize> {
        self.snapshot().map(|set| set.keys.len())
    }

    /// Whether the key set in use is past its `max-age` (a refresh is
    /// failing). False before the first fetch.
    pub fn is_stale(&self) -> bool {
        self.is_stale_at(Instant::now())
    }

    /// [`is_stale`](Self::is_stale) as of `now`.
    pub fn is_stale_at(&self, now: Instant) -> bool {
        self.snapshot().is_some_and(|set| set.expires_at <= now)
    }

    /// Whether the key set in use is past its stale window too (or none is
    /// held): tokens cannot be verified until a fetch succeeds.
    pub fn is_unusable_at(&self, now: Instant) -> bool {
        self.snapshot()
            .is_none_or(|set| !set.usable_at(now, self.stale_window))
    }

    /// The key for `kid`, fetching or refetching the set as the rules above say.
    pub async fn key(&self, kid: &str) -> Result<Arc<SigningKey>, KeyError> {
        self.key_at(kid, Instant::now()).await
    }

    /// [`key`](Self::key) as of `now`.
    pub async fn key_at(&self, kid: &str, now: Instant) -> Result<Arc<SigningKey>, KeyError> {
        let seen = self.attempts.load(Ordering::Acquire);
        let set = match self.snapshot() {
            // Fresh or stale within the window: use it as it is. Refreshing
            // it is the background refresher's job; no request waits on it.
            Some(set) if set.usable_at(now, self.stale_window) => set,
            _ => match self.refresh(seen, Reason::Cold, now).await {
                Some(set) if set.usable_at(now, self.stale_window) => set,
                _ => return Err(KeyError::Unavailable),
            },
        };
        if let Some(key) = set.keys.get(kid) {
            return Ok(key.clone());
        }
        let set = self
            .refresh(seen, Reason::UnknownKid, now)
            .await
            .filter(|set| set.usable_at(now, self.stale_window))
            .unwrap_or(set);
        match set.keys.get(kid) {
            Some(key) => Ok(key.clone()),
            None if self.failing.load(Ordering::Acquire) => Err(KeyError::Unavailable),
            None => Err(KeyError::UnknownKid),
        }
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
    async fn refresh(&self, seen: u64, reason: Reason, now: Instant) -> Option<Arc<KeySet>> {
        let mut gate = self.gate.lock().await;
        if self.attempts.load(Ordering::Acquire) != seen {
            return self.snapshot();
        }
        if let Some(at) = gate.last_failure
            && now.saturating_duration_since(at) < FAILURE_RETRY
        {
            return self.snapshot();
        }
        if reason == Reason::UnknownKid {
            if let Some(at) = gate.last_kid_refetch
                && now.saturating_duration_since(at) < self.cooldown
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
        let fetched = self.fetch().await;
        self.metrics.jwks_fetch(fetched.is_ok());
        let ok = match fetched {
            Ok(set) => {
                gate.last_failure = None;
                self.store(set);
                self.failing.store(false, Ordering::Release);
                true
            }
            Err(reason_text) => {
                gate.last_failure = Some(Instant::now());
                self.failing.store(true, Ordering::Release);
                warn!(jwks_uri = %self.uri, error = %reason_text, stale_keys_kept = self.has_keys(), "JWKS fetch failed");
                false
            }
        };
        self.attempts.fetch_add(1, Ordering::AcqRel);
        ok
    }

    /// Says how stale the keys are after a failed refresh: a warning while
    /// the stale window lasts, an error once it is over.
    fn report_staleness(&self) {
        let Some(set) = self.snapshot() else { return };
        let now = Instant::now();
        if set.expires_at > now {
            return;
        }
        let age_secs = now.saturating_duration_since(set.fetched_at).as_secs();
        let stale_until = set.expires_at + self.stale_window;
        if now < stale_until {
            warn!(
                key_age_secs = age_secs,
                stale_for_secs = now.saturating_duration_since(set.expires_at).as_secs(),
                usable_for_secs = stale_until.saturating_duration_since(now).as_secs(),
                "Google signing keys are stale: refresh failing, the last good keys stay in use"
            );
        } else {
            error!(
                key_age_secs = age_secs,
                stale_window_secs = self.stale_window.as_secs(),
                "Google signing keys are past their stale window: tokens are refused (UNAVAILABLE) until a fetch succeeds"
            );
        }
    }

    /// Refreshes the keys ahead of `max-age`, for as long as it runs: at
    /// 75-85% of each set's `max-age` (jittered), and after a failure again
    /// with exponential backoff and jitter from 1 s up to about a minute,
    /// keeping the last good set and reporting how stale it is.
    pub async fn keep_fresh(&self) {
        loop {
            let due = self
                .snapshot()
                .map_or_else(Instant::now, |set| set.refresh_due);
            tokio::time::sleep_until(due).await;
            let mut backoff = ExponentialBuilder::new()
                .with_min_delay(FAILURE_RETRY)
                .with_max_delay(MAX_FAILURE_BACKOFF)
                .with_jitter()
                .without_max_times()
                .build();
            let mut was_stale = false;
            loop {
                let ok = {
                    let mut gate = self.gate.lock().await;
                    self.fetch_and_store(&mut gate).await
                };
                if ok {
                    if was_stale {
                        info!("Google signing keys fresh again");
                    }
                    break;
                }
                was_stale |= self.is_stale();
                self.report_staleness();
                tokio::time::sleep(backoff.next().unwrap_or(MAX_FAILURE_BACKOFF)).await;
            }
        }
    }

    #[tracing::instrument(
        name = "jwks_fetch",
        level = "debug",
        skip_all,
        fields(jwks_uri = %self.uri),
        err(Display, level = "debug")
    )]
    async fn fetch(&self) -> Result<KeySet, String> {
        let tokenbridge_jwks::Fetched { body, max_age } =
            tokenbridge_jwks::fetch(&self.http, &self.uri, &BOUNDS).await?;
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
            fetched_at: now,
            expires_at: now + max_age,
            refresh_due,
        })
    }
}

/// Parses a JWKS document, keeping the usable keys by `kid` and counting
/// the skipped ones.
fn parse_key_set(body: &[u8]) -> Result<(HashMap<String, Arc<SigningKey>>, usize), String> {
    tokenbridge_jwks::parse_key_set(body, usable_key)
}

/// What a fetch of Google's keys accepts.
const BOUNDS: tokenbridge_jwks::Bounds = tokenbridge_jwks::Bounds {
    max_body_bytes: MAX_BODY_BYTES,
    default_max_age: DEFAULT_MAX_AGE,
    min_max_age: MIN_MAX_AGE,
    max_max_age: MAX_MAX_AGE,
};

/// An RS256 signature key of 2048 to 8192 bits with a sane exponent, parsed
/// for verification.
fn usable_key(jwk: &Jwk) -> Result<SigningKey, &'static str> {
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
    let bits = modulus_bits(&n);
    if bits < MIN_RSA_BITS {
        return Err("RSA modulus shorter than 2048 bits");
    }
    if bits > MAX_RSA_BITS {
        return Err("RSA modulus longer than 8192 bits");
    }
    let e_value = e.iter().skip_while(|&&b| b == 0).try_fold(0u64, |acc, &b| {
        (acc < (1 << 56)).then(|| (acc << 8) | u64::from(b))
    });
    // aws-lc verifies with public exponents of at most 33 bits; a larger one
    // would be kept and then fail every verification.
    match e_value {
        Some(e) if (3..1 << 33).contains(&e) && e % 2 == 1 => {}
        _ => return Err("unusable RSA exponent"),
    }
    // aws-lc takes both without leading zero octets (RFC 7518 forbids them;
    // a publisher that adds them is forgiven here, as by the bit count above).
    let minimal = |v: &[u8]| v[v.iter().take_while(|&&b| b == 0).count()..].to_vec();
    RsaPublicKeyComponents {
        n: minimal(&n),
        e: minimal(&e),
    }
    .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
    .map(SigningKey)
    .map_err(|_| "RSA key rejected by aws-lc")
}

fn modulus_bits(n: &[u8]) -> usize {
    let n: Vec<u8> = n.iter().copied().skip_while(|&b| b == 0).collect();
    match n.first() {
        None => 0,
        Some(first) => n.len() * 8 - first.leading_zeros() as usize,
    }
}

/// Parses a JWKS document as a fetch does, skipping unusable keys one by
/// one, and returns how many usable keys it has; `Err` says why the body is
/// not a JWKS document. (A fetch applies [`MAX_BODY_BYTES`] while reading the
/// body, and refuses a set with no usable key, around this parse.)
///
/// A public entry point for the fuzz targets (`fuzz/`), which cannot reach the
/// private parser; the server does not call it.
pub fn parse_untrusted(body: &[u8]) -> Result<usize, String> {
    parse_key_set(body).map(|(keys, _skipped)| keys.len())
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
        let huge_n = URL_SAFE_NO_PAD.encode([0xc5u8; 1025]);
        let padded_n = URL_SAFE_NO_PAD.encode([&[0u8][..], &[0xc5u8; 256]].concat());
        // 2^40 + 1: odd, but aws-lc refuses public exponents over 33 bits.
        let huge_e = URL_SAFE_NO_PAD.encode([1u8, 0, 0, 0, 0, 1]);
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
            {"kty": "RSA", "kid": "huge", "n": huge_n, "e": "AQAB"},
            {"kty": "RSA", "kid": "padded", "n": padded_n, "e": "AAEAAQ"},
            {"kty": "RSA", "kid": "e-huge", "n": big_n, "e": huge_e},
            "not even an object",
            {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "good", "n": big_n, "e": "AQAB"}
        ]});
        let (keys, skipped) = parse_key_set(doc.to_string().as_bytes()).unwrap();
        let mut kept = keys.keys().collect::<Vec<_>>();
        kept.sort();
        assert_eq!(kept, vec!["good", "padded"]);
        assert_eq!(skipped, 13);
        for (kid, reason) in [
            ("huge", "RSA modulus longer than 8192 bits"),
            ("e-huge", "unusable RSA exponent"),
        ] {
            let jwk = serde_json::from_value::<Jwk>(
                doc["keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|k| k["kid"] == kid)
                    .unwrap()
                    .clone(),
            )
            .unwrap();
            assert_eq!(usable_key(&jwk).unwrap_err(), reason, "{kid}");
        }
    }

    use tokenbridge_testing::{Issuer, JwksFault, JwksServer};

    async fn warm(max_age: u64, stale_window: Duration) -> (Issuer, JwksServer, Jwks) {
        let issuer = Issuer::new();
        let server = JwksServer::start(issuer.clone(), max_age).await;
        let jwks = Jwks::new(server.uri(), Duration::from_secs(2), Duration::ZERO)
            .unwrap()
            .with_stale_window(stale_window);
        assert!(jwks.prefetch().await);
        (issuer, server, jwks)
    }

    #[tokio::test]
    async fn stale_keys_verify_within_the_window_and_not_beyond() {
        let (issuer, server, jwks) = warm(60, Duration::from_secs(3600)).await;
        let kid = issuer.kid();
        let start = Instant::now();
        server.set_fault(Some(JwksFault::Status(503)));
        let fetches = server.fetch_count();

        // Fresh: used as is.
        assert!(
            jwks.key_at(&kid, start + Duration::from_secs(30))
                .await
                .is_ok()
        );
        assert!(!jwks.is_stale_at(start + Duration::from_secs(30)));
        // Past max-age, within the stale window: still used, and no request
        // waits for a refresh (the background refresher's job).
        let stale = start + Duration::from_secs(60 + 1800);
        assert!(jwks.is_stale_at(stale));
        assert!(!jwks.is_unusable_at(stale));
        assert!(jwks.key_at(&kid, stale).await.is_ok());
        assert_eq!(
            server.fetch_count(),
            fetches,
            "no fetch on the request path"
        );
        // Past the stale window: a fetch is tried, fails, and the old keys
        // are not used any more.
        let beyond = start + Duration::from_secs(60 + 3600 + 1);
        assert!(jwks.is_unusable_at(beyond));
        assert_eq!(
            jwks.key_at(&kid, beyond).await.unwrap_err(),
            KeyError::Unavailable
        );
        assert_eq!(server.fetch_count(), fetches + 1);
        assert!(jwks.key_age().is_some());
    }

    #[tokio::test]
    async fn an_unknown_kid_is_unavailable_while_fetches_fail_and_unknown_otherwise() {
        let (_, server, jwks) = warm(3600, DEFAULT_STALE_WINDOW).await;
        assert_eq!(
            jwks.key("not-there").await.unwrap_err(),
            KeyError::UnknownKid
        );
        server.set_fault(Some(JwksFault::Garbage));
        // After the cooldown (zero here) and the failure back-off.
        let later = Instant::now() + FAILURE_RETRY;
        assert_eq!(
            jwks.key_at("not-there", later).await.unwrap_err(),
            KeyError::Unavailable
        );
        server.set_fault(None);
        let later = later + FAILURE_RETRY;
        assert_eq!(
            jwks.key_at("not-there", later).await.unwrap_err(),
            KeyError::UnknownKid
        );
    }

    #[test]
    fn documents_that_are_not_key_sets_are_errors() {
        assert!(parse_key_set(b"<html>").is_err());
        assert!(parse_key_set(b"{}").is_err());
        // Not UTF-8 inside a member that would be skipped: still refused.
        let not_utf8 = parse_key_set(b"{\"keys\": [], \"x\": \"\xff\"}").unwrap_err();
        assert!(
            not_utf8.starts_with("not a JWKS document: not UTF-8"),
            "{not_utf8}"
        );
        assert!(parse_key_set(br#"{"keys": 5}"#).is_err());
    }
}
