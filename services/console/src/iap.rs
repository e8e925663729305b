//! Identity-Aware Proxy's signed header, `x-goog-iap-jwt-assertion`: an
//! ES256 JWT that IAP adds to every request it lets through.
//!
//! * Keys come from `iap_jwks_uri` (reqwest), parsed with jsonwebtoken's
//!   JWK types; only P-256 signature keys with a `kid` are kept. They are
//!   kept for the response's `Cache-Control: max-age` (clamped to
//!   [`MIN_MAX_AGE`]..=[`MAX_MAX_AGE`], [`DEFAULT_MAX_AGE`] without one).
//! * An assertion with a `kid` we do not hold triggers one refetch, shared
//!   by concurrent requests, at most once per [`UNKNOWN_KID_COOLDOWN`].
//! * A failed fetch never throws away the keys we hold: past `max-age` they
//!   keep verifying for [`STALE_WINDOW`]; fetches after a failure wait
//!   [`FAILURE_RETRY`].
//! * Checked: `alg` is ES256, the signature, `iss`, `aud`, `exp` and `iat`
//!   (with [`LEEWAY`]), and an `email` claim.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm},
};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// The request header IAP signs.
pub const ASSERTION_HEADER: &str = "x-goog-iap-jwt-assertion";
/// Clock skew allowed on `exp` and `iat`.
pub const LEEWAY: Duration = Duration::from_secs(30);
/// Shortest time keys are kept, whatever `max-age` says.
pub const MIN_MAX_AGE: Duration = Duration::from_secs(60);
/// Longest time keys are kept without a refetch.
pub const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// How long keys are kept when the response has no `max-age`.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
/// How long past `max-age` the last good keys keep verifying while fetches
/// fail.
pub const STALE_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// After a failed fetch, the next one waits at least this long.
pub const FAILURE_RETRY: Duration = Duration::from_secs(5);
/// Refetches caused by unknown `kid`s happen at most this often.
pub const UNKNOWN_KID_COOLDOWN: Duration = Duration::from_secs(30);
/// Largest key set document accepted.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest assertion accepted.
const MAX_ASSERTION_BYTES: usize = 8 * 1024;
/// Timeout of one key fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an assertion was not accepted. The messages are shown on the 401
/// page; none repeats the assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IapError {
    Missing,
    Malformed(&'static str),
    Algorithm,
    UnknownKey,
    BadSignature,
    Expired,
    IssuedInFuture,
    Issuer,
    Audience,
    NoEmail,
    /// IAP's keys could not be fetched: 503, not 401.
    KeysUnavailable,
}

impl IapError {
    pub(crate) fn message(&self) -> String {
        match self {
            IapError::Missing => format!(
                "The request carries no IAP assertion ({ASSERTION_HEADER}). This console is served behind Identity-Aware Proxy: open it through IAP's address, not the backend's."
            ),
            IapError::Malformed(why) => {
                format!("The IAP assertion is malformed: {why}.")
            }
            IapError::Algorithm => "The IAP assertion is not signed with ES256.".to_owned(),
            IapError::UnknownKey => {
                "The IAP assertion is signed with a key IAP does not publish.".to_owned()
            }
            IapError::BadSignature => {
                "The IAP assertion's signature does not verify: it was not signed by IAP."
                    .to_owned()
            }
            IapError::Expired => {
                "The IAP assertion has expired. Reload the page through IAP.".to_owned()
            }
            IapError::IssuedInFuture => {
                "The IAP assertion is issued in the future (check the server's clock).".to_owned()
            }
            IapError::Issuer => "The IAP assertion's issuer is not IAP.".to_owned(),
            IapError::Audience => {
                "The IAP assertion is for another audience, not this console's backend service."
                    .to_owned()
            }
            IapError::NoEmail => "The IAP assertion carries no email.".to_owned(),
            IapError::KeysUnavailable => {
                "IAP's signing keys cannot be fetched right now; try again shortly.".to_owned()
            }
        }
    }

    /// A short name for logs.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            IapError::Missing => "missing",
            IapError::Malformed(_) => "malformed",
            IapError::Algorithm => "algorithm",
            IapError::UnknownKey => "unknown_key",
            IapError::BadSignature => "bad_signature",
            IapError::Expired => "expired",
            IapError::IssuedInFuture => "issued_in_future",
            IapError::Issuer => "issuer",
            IapError::Audience => "audience",
            IapError::NoEmail => "no_email",
            IapError::KeysUnavailable => "keys_unavailable",
        }
    }
}

#[derive(serde::Deserialize)]
struct Claims {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    iat: Option<u64>,
}

/// Verifies assertions for one audience.
pub(crate) struct Iap {
    keys: IapKeys,
    validation: Validation,
}

impl Iap {
    pub(crate) fn new(
        jwks_uri: &str,
        issuer: &str,
        audience: &str,
    ) -> Result<Self, reqwest::Error> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = LEEWAY.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        Ok(Self {
            keys: IapKeys::new(jwks_uri.to_owned())?,
            validation,
        })
    }

    /// The verified email of `assertion` (lowercased).
    pub(crate) async fn verify(&self, assertion: Option<&[u8]>) -> Result<String, IapError> {
        let assertion = match assertion {
            None => return Err(IapError::Missing),
            Some([]) => return Err(IapError::Missing),
            Some(a) if a.len() > MAX_ASSERTION_BYTES => {
                return Err(IapError::Malformed("longer than 8 KiB"));
            }
            Some(a) => std::str::from_utf8(a).map_err(|_| IapError::Malformed("not text"))?,
        };
        let header =
            jsonwebtoken::decode_header(assertion).map_err(|_| IapError::Malformed("not a JWT"))?;
        if header.alg != Algorithm::ES256 {
            return Err(IapError::Algorithm);
        }
        let kid = header
            .kid
            .filter(|k| !k.is_empty())
            .ok_or(IapError::Malformed("no kid in the header"))?;
        let key = self.keys.key(&kid).await?;
        let data = jsonwebtoken::decode::<Claims>(assertion, &key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::InvalidSignature => IapError::BadSignature,
                ErrorKind::ExpiredSignature => IapError::Expired,
                ErrorKind::ImmatureSignature => IapError::IssuedInFuture,
                ErrorKind::InvalidIssuer => IapError::Issuer,
                ErrorKind::InvalidAudience => IapError::Audience,
                ErrorKind::InvalidAlgorithm => IapError::Algorithm,
                ErrorKind::MissingRequiredClaim(_) => {
                    IapError::Malformed("a required claim (exp, iss, aud) is missing")
                }
                _ => IapError::Malformed("the payload is not valid"),
            },
        )?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match data.claims.iat {
            None => return Err(IapError::Malformed("no iat claim")),
            Some(iat) if iat > now.saturating_add(LEEWAY.as_secs()) => {
                return Err(IapError::IssuedInFuture);
            }
            Some(_) => {}
        }
        let email = data
            .claims
            .email
            .map(|e| e.trim().to_ascii_lowercase())
            .filter(|e| !e.is_empty())
            .ok_or(IapError::NoEmail)?;
        Ok(email)
    }
}

/// Why no key could be found.
impl From<KeyError> for IapError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::UnknownKid => IapError::UnknownKey,
            KeyError::Unavailable => IapError::KeysUnavailable,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyError {
    UnknownKid,
    Unavailable,
}

struct KeySet {
    keys: HashMap<String, Arc<DecodingKey>>,
    expires_at: Instant,
}

impl KeySet {
    fn fresh_at(&self, now: Instant) -> bool {
        now < self.expires_at
    }

    fn usable_at(&self, now: Instant) -> bool {
        now < self.expires_at + STALE_WINDOW
    }
}

#[derive(Default)]
struct Gate {
    last_kid_refetch: Option<Instant>,
    last_failure: Option<Instant>,
}

/// IAP's key set, cached.
struct IapKeys {
    http: reqwest::Client,
    uri: String,
    current: RwLock<Option<Arc<KeySet>>>,
    gate: tokio::sync::Mutex<Gate>,
    /// Fetch attempts so far: a caller that waited for the gate while
    /// another fetched sees it changed and does not fetch again.
    attempts: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Expired,
    UnknownKid,
}

impl IapKeys {
    fn new(uri: String) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tokenbridge-console/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            uri,
            current: RwLock::new(None),
            gate: tokio::sync::Mutex::new(Gate::default()),
            attempts: AtomicU64::new(0),
        })
    }

    fn snapshot(&self) -> Option<Arc<KeySet>> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    async fn key(&self, kid: &str) -> Result<Arc<DecodingKey>, KeyError> {
        let seen = self.attempts.load(Ordering::Acquire);
        let now = Instant::now();
        let mut set = self.snapshot();
        if !set.as_ref().is_some_and(|s| s.fresh_at(now)) {
            set = self.refresh(seen, Reason::Expired).await;
        }
        let Some(set) = set.filter(|s| s.usable_at(now)) else {
            return Err(KeyError::Unavailable);
        };
        if let Some(key) = set.keys.get(kid) {
            return Ok(key.clone());
        }
        if self.attempts.load(Ordering::Acquire) != seen {
            // The set was fetched while this call ran: it is as new as it gets.
            return Err(KeyError::UnknownKid);
        }
        let set = self
            .refresh(seen, Reason::UnknownKid)
            .await
            .filter(|s| s.usable_at(now))
            .unwrap_or(set);
        set.keys.get(kid).cloned().ok_or(KeyError::UnknownKid)
    }

    async fn refresh(&self, seen: u64, reason: Reason) -> Option<Arc<KeySet>> {
        let mut gate = self.gate.lock().await;
        if self.attempts.load(Ordering::Acquire) != seen {
            return self.snapshot();
        }
        let now = Instant::now();
        if let Some(at) = gate.last_failure
            && now.saturating_duration_since(at) < FAILURE_RETRY
        {
            return self.snapshot();
        }
        if reason == Reason::UnknownKid {
            if let Some(at) = gate.last_kid_refetch
                && now.saturating_duration_since(at) < UNKNOWN_KID_COOLDOWN
            {
                debug!("unknown IAP kid: refetch skipped, cooldown in force");
                return self.snapshot();
            }
            gate.last_kid_refetch = Some(now);
        }
        match self.fetch().await {
            Ok(set) => {
                gate.last_failure = None;
                let mut guard = match self.current.write() {
                    Ok(guard) => guard,
                    Err(poisoned) => poisoned.into_inner(),
                };
                *guard = Some(Arc::new(set));
            }
            Err(why) => {
                gate.last_failure = Some(Instant::now());
                warn!(jwks_uri = %self.uri, error = %why, keys_kept = self.snapshot().is_some(), "IAP key fetch failed");
            }
        }
        self.attempts.fetch_add(1, Ordering::AcqRel);
        self.snapshot()
    }

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
            "fetched IAP signing keys"
        );
        Ok(KeySet {
            keys,
            expires_at: Instant::now() + max_age,
        })
    }
}

/// The usable keys of a JWKS document by `kid`, and how many were skipped.
fn parse_key_set(body: &[u8]) -> Result<(HashMap<String, Arc<DecodingKey>>, usize), String> {
    tokenbridge_jwks::parse_key_set(body, usable_key)
}

/// What a fetch of IAP's keys accepts.
const BOUNDS: tokenbridge_jwks::Bounds = tokenbridge_jwks::Bounds {
    max_body_bytes: MAX_BODY_BYTES,
    default_max_age: DEFAULT_MAX_AGE,
    min_max_age: MIN_MAX_AGE,
    max_max_age: MAX_MAX_AGE,
};

/// An ES256 (P-256) signature key.
fn usable_key(jwk: &Jwk) -> Result<DecodingKey, &'static str> {
    if !matches!(jwk.common.key_algorithm, None | Some(KeyAlgorithm::ES256)) {
        return Err("alg is not ES256");
    }
    let AlgorithmParameters::EllipticCurve(ec) = &jwk.algorithm else {
        return Err("not an EC key");
    };
    if ec.curve != EllipticCurve::P256 {
        return Err("curve is not P-256");
    }
    DecodingKey::from_jwk(jwk).map_err(|_| "unusable EC key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_p256_signature_keys_with_a_kid_are_kept() {
        let doc = serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "a", "alg": "ES256", "use": "sig",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "alg": "ES256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "RSA", "kid": "rsa", "n": "AQAB", "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            "not even an object"
        ]});
        let (keys, skipped) = parse_key_set(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(skipped, 5);
        assert!(parse_key_set(b"[]").is_err());
    }

    #[test]
    fn messages_do_not_name_internal_errors() {
        for e in [
            IapError::Missing,
            IapError::Malformed("not a JWT"),
            IapError::Algorithm,
            IapError::UnknownKey,
            IapError::BadSignature,
            IapError::Expired,
            IapError::IssuedInFuture,
            IapError::Issuer,
            IapError::Audience,
            IapError::NoEmail,
            IapError::KeysUnavailable,
        ] {
            let m = e.message();
            assert!(m.starts_with("The ") || m.starts_with("IAP"), "{m}");
            assert!(!m.to_lowercase().contains("internal"), "{m}");
            assert!(!e.kind().is_empty());
        }
    }
}
