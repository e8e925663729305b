//! Verification of Google-signed ID tokens.
//!
//! The RS256 signature is checked by aws-lc-rs against a key parsed once per
//! key set ([`SigningKey`](crate::google::jwks::SigningKey)); the JWK types
//! come from `jsonwebtoken`. Everything else is checked here, more strictly
//! than `jsonwebtoken::decode` would:
//!
//! * the header must name `alg` RS256 and a `kid`, and must not carry `crit`;
//! * `exp`, `iss`, `aud`, `sub` and `iat` are required; `iss` and `aud` must be
//!   single configured strings (`jsonwebtoken` accepts an array with one
//!   configured member);
//! * `exp` and `nbf` get 60 s of leeway, and `iat` may be at most that far in
//!   the future (`jsonwebtoken` does not check `iat`);
//! * the lifetime `exp - iat` may be at most one hour plus the skew, like
//!   Google's own tokens;
//! * duplicate JSON member names are refused at any depth (serde keeps the
//!   last), by a parser of our own that reads the header and the payload once;
//! * tokens over [`MAX_TOKEN_BYTES`] are refused before any decoding;
//! * claim types are strict: JSON integers for `exp`, `iat` and `nbf`
//!   (`jsonwebtoken` accepts a float `exp`), strings for `iss`, `aud`, `sub`,
//!   `azp` and `email`, and a boolean `email_verified`.
//!
//! The header fields `jku`, `x5u`, `jwk` and `x5c` are never used: the key
//! always comes from the configured JWKS, by `kid`.
//!
//! Verified-token cache (`google.verified_token_cache_entries`, default
//! 100,000; 0 turns it off): a fleet presents the same token many times in its
//! hour of life, so the claims of a verified token are kept, keyed by the
//! SHA-256 of the whole token, until its `exp` plus the skew. A hit skips the
//! RSA verification and the parsing and re-checks only the time rules. The
//! trade-off: a token verified with a key that Google then withdraws stays
//! accepted until it expires (at most an hour), as it would be by STS itself.

use std::{
    borrow::Cow,
    cell::{Cell, RefCell},
    collections::{BTreeSet, HashSet},
    fmt,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use tokenbridge_proto::Secret;

use tokenbridge_policy::ComputeEngine;

use crate::{
    google::GoogleConfig,
    google::jwks::{Jwks, KeyError},
};

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Allowed clock skew, in seconds, for `exp`, `iat` and `nbf`.
pub const SKEW_SECONDS: u64 = 60;
/// Longest token lifetime (`exp - iat`) accepted, before skew: Google's own.
pub const MAX_LIFETIME_SECONDS: u64 = 3600;

/// The claims of a verified token that tokenbridge uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience (a single string).
    pub aud: String,
    /// Subject: the service account's unique ID.
    pub sub: String,
    /// Authorized party: for service accounts, their unique ID.
    pub azp: Option<String>,
    /// The service account's email.
    pub email: Option<String>,
    /// Whether Google verified `email`.
    pub email_verified: bool,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
    /// Not before (Unix seconds).
    pub nbf: Option<u64>,
    /// The VM the caller runs on, from a `format=full` token's
    /// `google.compute_engine` claim (absent for other workloads, such as
    /// GKE pods with Workload Identity). Informational: for the audit log,
    /// never for a decision.
    pub gce: Option<Arc<ComputeEngine>>,
}

/// Reads the `google` claim's `compute_engine` object, if there is one:
/// the policy crate's [`ComputeEngine`], so the caller the policy sees is
/// the token's claim with no second model in between. Fields missing or of
/// the wrong type are left out rather than refused: nothing is decided on
/// them.
fn compute_engine(google: Option<Value>) -> Option<Arc<ComputeEngine>> {
    let Some(Value::Object(mut google)) = google else {
        return None;
    };
    let Some(Value::Object(mut ce)) = google.remove("compute_engine") else {
        return None;
    };
    let mut text = |name: &str| match ce.remove(name) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    Some(Arc::new(ComputeEngine {
        project_id: text("project_id"),
        zone: text("zone"),
        instance_id: text("instance_id"),
        instance_name: text("instance_name"),
        project_number: ce
            .get("project_number")
            .and_then(Value::as_u64)
            .map(|n| n.to_string()),
    }))
}

impl Claims {
    /// The email, only when the token says it is verified.
    pub fn verified_email(&self) -> Option<&str> {
        if self.email_verified {
            self.email.as_deref()
        } else {
            None
        }
    }
}

/// A token that passed every check, with the claims it carries.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    /// The token itself, to be passed on to STS.
    pub token: Secret<String>,
    /// Its claims.
    pub claims: Claims,
}

/// Why a token was refused. Every variant but [`VerifyError::KeysUnavailable`]
/// means the token is not acceptable and retrying with it will not help.
/// Messages never include the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("token is {0} bytes, over the {MAX_TOKEN_BYTES}-byte limit")]
    TooLarge(usize),
    /// Not three base64url parts, or a part that is not what it should be.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// `alg` is not RS256.
    #[error("token algorithm `{0}` is not accepted; only RS256 is")]
    Algorithm(String),
    /// The header has no `kid`.
    #[error("token header has no `kid`")]
    MissingKid,
    /// The header has a `crit` parameter.
    #[error("token header has a `crit` parameter, which is not supported")]
    Crit,
    /// A header parameter appears twice.
    #[error("token header has a duplicate parameter `{0}`")]
    DuplicateHeader(String),
    /// No key with this `kid`, even after a refetch.
    #[error("token signing key (kid) is not one of Google's current keys")]
    UnknownKid,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` is more than the skew in the past.
    #[error("token expired")]
    Expired,
    /// `iat` or `nbf` is more than the skew in the future.
    #[error("token is not valid yet: `{0}` is in the future")]
    NotYetValid(&'static str),
    /// `iss` is not a configured issuer.
    #[error("token issuer is not accepted")]
    Issuer,
    /// `aud` is not a configured audience.
    #[error("token audience is not accepted by this service")]
    Audience,
    /// A required claim is absent.
    #[error("token has no `{0}` claim")]
    MissingClaim(&'static str),
    /// A claim has the wrong JSON type.
    #[error("token claim `{0}` has the wrong type: {1}")]
    ClaimType(&'static str, &'static str),
    /// A claim name appears twice.
    #[error("token has a duplicate claim `{0}`")]
    DuplicateClaim(String),
    /// `exp - iat` is longer than Google's tokens live.
    #[error("token lifetime (exp - iat) is longer than one hour")]
    Lifetime,
    /// No signing keys could be fetched: try again later.
    #[error("Google's signing keys are unavailable; try again later")]
    KeysUnavailable,
}

/// Verifies tokens against the configured issuers, audiences and JWKS.
pub struct Verifier {
    jwks: Arc<Jwks>,
    issuers: HashSet<String>,
    audiences: HashSet<String>,
    verified: Option<moka::sync::Cache<[u8; 32], Arc<Claims>>>,
}

/// Keeps a verified token's claims until its `exp` plus the skew.
struct UntilExp;

impl moka::Expiry<[u8; 32], Arc<Claims>> for UntilExp {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        claims: &Arc<Claims>,
        _: std::time::Instant,
    ) -> Option<std::time::Duration> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Some(std::time::Duration::from_secs(
            claims.exp.saturating_add(SKEW_SECONDS).saturating_sub(now),
        ))
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for `google`'s issuers and audiences, with keys from `jwks`.
    pub fn new(google: &GoogleConfig, jwks: Arc<Jwks>) -> Self {
        let verified = (google.verified_token_cache_entries > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(google.verified_token_cache_entries)
                .expire_after(UntilExp)
                .build()
        });
        Self {
            jwks,
            issuers: google.issuers.iter().cloned().collect(),
            audiences: google.audiences.iter().cloned().collect(),
            verified,
        }
    }

    /// Verifies `token` now.
    pub async fn verify(&self, token: Secret<String>) -> Result<VerifiedToken, VerifyError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.verify_at(token, now).await
    }

    /// Verifies `token` as of `now` (Unix seconds): every time rule (`exp`,
    /// `nbf`, `iat`) is checked against `now`.
    #[tracing::instrument(
        name = "verify_token",
        level = "debug",
        skip_all,
        err(Display, level = "debug")
    )]
    pub async fn verify_at(
        &self,
        token: Secret<String>,
        now: u64,
    ) -> Result<VerifiedToken, VerifyError> {
        let raw = token.expose().as_str();
        if raw.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::TooLarge(raw.len()));
        }
        // A token verified before is known by its SHA-256; only the
        // time-dependent rules are checked again. (No digest at all when the
        // cache is off: issue 16's profile of fresh tokens.)
        let digest: Option<[u8; 32]> = self
            .verified
            .as_ref()
            .map(|_| Sha256::digest(raw.as_bytes()).into());
        if let Some(claims) = self
            .verified
            .as_ref()
            .zip(digest)
            .and_then(|(c, d)| c.get(&d))
        {
            self.check_claims(&claims, now)?;
            return Ok(VerifiedToken {
                token,
                claims: Claims::clone(&claims),
            });
        }
        let Compact {
            header,
            payload,
            signed,
            signature,
        } = split_compact(raw)?;
        let kid = check_header(header)?;
        // Parsed strictly before the signature check only to refuse duplicate
        // or mistyped claims with a precise message; nothing is trusted until
        // `decode` below has verified the signature.
        let claims = parse_claims(payload)?;
        let key = self.jwks.key(&kid).await.map_err(|e| match e {
            KeyError::UnknownKid => VerifyError::UnknownKid,
            KeyError::Unavailable => VerifyError::KeysUnavailable,
        })?;
        // The signature over `header.payload`, with the key parsed when the
        // key set was fetched; the header and claims were parsed (strictly)
        // above and are checked by `check_claims`, so they are not decoded
        // twice (issue 16).
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| VerifyError::Malformed("the signature is not base64url"))?;
        if !key.verifies_rs256(signed.as_bytes(), &signature) {
            return Err(VerifyError::BadSignature);
        }
        self.check_claims(&claims, now)?;
        if let Some((cache, digest)) = self.verified.as_ref().zip(digest) {
            cache.insert(digest, Arc::new(claims.clone()));
        }
        Ok(VerifiedToken { token, claims })
    }

    fn check_claims(&self, c: &Claims, now: u64) -> Result<(), VerifyError> {
        if !self.issuers.contains(&c.iss) {
            return Err(VerifyError::Issuer);
        }
        if !self.audiences.contains(&c.aud) {
            return Err(VerifyError::Audience);
        }
        if c.exp.saturating_add(SKEW_SECONDS) < now {
            return Err(VerifyError::Expired);
        }
        if c.iat > now.saturating_add(SKEW_SECONDS) {
            return Err(VerifyError::NotYetValid("iat"));
        }
        if c.nbf
            .is_some_and(|nbf| nbf > now.saturating_add(SKEW_SECONDS))
        {
            return Err(VerifyError::NotYetValid("nbf"));
        }
        if c.exp < c.iat || c.exp - c.iat > MAX_LIFETIME_SECONDS + SKEW_SECONDS {
            return Err(VerifyError::Lifetime);
        }
        Ok(())
    }
}

/// A compact JWS split at its dots, its header and payload decoded. No
/// `Debug`: it holds the token.
struct Compact<'a> {
    header: Vec<u8>,
    payload: Vec<u8>,
    /// `header.payload`, as signed.
    signed: &'a str,
    /// The signature, still base64url.
    signature: &'a str,
}

/// Splits a compact JWS, checking the shape: three non-empty base64url
/// parts.
fn split_compact(raw: &str) -> Result<Compact<'_>, VerifyError> {
    const SHAPE: &str = "not a compact JWS (three base64url parts separated by dots)";
    let mut parts = raw.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed(SHAPE));
    };
    // Branch-free over the bytes so that it compiles to vector compares: the
    // short-circuiting `all` took 1.6 µs of a fresh token's verification, a
    // byte at a time over its kilobyte (issue 16, perf annotate).
    let b64url = |part: &str| {
        !part.is_empty()
            && part.bytes().fold(true, |ok, b| {
                ok & (b.is_ascii_alphanumeric() | (b == b'-') | (b == b'_'))
            })
    };
    if !(b64url(h) && b64url(p) && b64url(s)) {
        return Err(VerifyError::Malformed(SHAPE));
    }
    let header = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| VerifyError::Malformed("the header is not base64url"))?;
    let payload = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| VerifyError::Malformed("the payload is not base64url"))?;
    Ok(Compact {
        header,
        payload,
        signed: &raw[..h.len() + 1 + p.len()],
        signature: s,
    })
}

/// Checks the header and returns its `kid`.
fn check_header(header: Vec<u8>) -> Result<String, VerifyError> {
    let map = parse_object(&header).map_err(|e| match e {
        StrictError::Duplicate(name) => VerifyError::DuplicateHeader(name),
        StrictError::TooDeep => VerifyError::Malformed(
            "the header nests JSON arrays or objects more than 32 levels deep",
        ),
        StrictError::Invalid => VerifyError::Malformed("the header is not a JSON object"),
    })?;
    if map.contains_key("crit") {
        return Err(VerifyError::Crit);
    }
    match map.get("alg") {
        Some(Value::String(alg)) if alg == "RS256" => {}
        Some(Value::String(alg)) => return Err(VerifyError::Algorithm(printable(alg))),
        _ => return Err(VerifyError::Algorithm("(missing)".into())),
    }
    match map.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() => Ok(kid.clone()),
        _ => Err(VerifyError::MissingKid),
    }
}

fn parse_claims(payload: Vec<u8>) -> Result<Claims, VerifyError> {
    let mut m = parse_payload(&payload).map_err(|e| match e {
        StrictError::Duplicate(name) => VerifyError::DuplicateClaim(name),
        StrictError::TooDeep => VerifyError::Malformed(
            "the payload nests JSON arrays or objects more than 32 levels deep",
        ),
        StrictError::Invalid => VerifyError::Malformed("the payload is not a JSON object"),
    })?;
    let sub = required_string(m.sub.take(), "sub")?;
    if sub.is_empty() || sub.len() > 255 {
        return Err(VerifyError::ClaimType(
            "sub",
            "expected 1 to 255 characters",
        ));
    }
    Ok(Claims {
        iss: required_string(m.iss.take(), "iss")?,
        aud: required_string(m.aud.take(), "aud")?,
        sub,
        azp: optional_string(m.azp.take(), "azp")?,
        email: optional_string(m.email.take(), "email")?,
        email_verified: match m.email_verified.take() {
            None => false,
            Some(Value::Bool(b)) => b,
            Some(_) => {
                return Err(VerifyError::ClaimType(
                    "email_verified",
                    "expected a boolean",
                ));
            }
        },
        iat: optional_integer(m.iat.take(), "iat")?.ok_or(VerifyError::MissingClaim("iat"))?,
        exp: optional_integer(m.exp.take(), "exp")?.ok_or(VerifyError::MissingClaim("exp"))?,
        nbf: optional_integer(m.nbf.take(), "nbf")?,
        gce: compute_engine(m.google.take()),
    })
}

fn required_string(value: Option<Value>, name: &'static str) -> Result<String, VerifyError> {
    optional_string(value, name)?.ok_or(VerifyError::MissingClaim(name))
}

fn optional_string(
    value: Option<Value>,
    name: &'static str,
) -> Result<Option<String>, VerifyError> {
    match value {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(VerifyError::ClaimType(name, "expected a string")),
    }
}

fn optional_integer(value: Option<Value>, name: &'static str) -> Result<Option<u64>, VerifyError> {
    match value {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or(VerifyError::ClaimType(
            name,
            "expected a non-negative integer",
        )),
        Some(_) => Err(VerifyError::ClaimType(
            name,
            "expected a non-negative integer",
        )),
    }
}

/// At most 40 printable ASCII characters of an untrusted name, for messages.
fn printable(value: &str) -> String {
    value
        .chars()
        .take(40)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
enum StrictError {
    Duplicate(String),
    TooDeep,
    Invalid,
}

/// Deepest nesting of JSON arrays and objects accepted in a token's header
/// or payload (Google's go two levels deep). Bounds the parser's recursion
/// well below serde_json's own limit of 128, with a clear message.
pub const MAX_JSON_DEPTH: usize = 32;

/// Parses a JSON object, refusing duplicate member names at any depth and
/// nesting deeper than [`MAX_JSON_DEPTH`].
fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, StrictError> {
    match parse_strict(bytes, |strict, de| strict.deserialize(de))? {
        Value::Object(map) => Ok(map),
        _ => Err(StrictError::Invalid),
    }
}

/// Runs `parse` over `bytes` with a [`StrictValue`] at depth 0, requires
/// the whole input to be consumed, and says why it failed: a duplicate
/// member name, nesting past the bound, or anything else.
fn parse_strict<'de, T>(
    bytes: &'de [u8],
    parse: impl FnOnce(
        StrictValue<'_>,
        &mut serde_json::Deserializer<serde_json::de::SliceRead<'de>>,
    ) -> Result<T, serde_json::Error>,
) -> Result<T, StrictError> {
    let duplicate = RefCell::new(None);
    let too_deep = Cell::new(false);
    let strict = StrictValue {
        duplicate: &duplicate,
        too_deep: &too_deep,
        depth: 0,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = parse(strict, &mut de).and_then(|v| {
        de.end()?;
        Ok(v)
    });
    match (parsed, duplicate.into_inner()) {
        (_, Some(name)) => Err(StrictError::Duplicate(printable(&name))),
        (Ok(v), None) => Ok(v),
        _ if too_deep.get() => Err(StrictError::TooDeep),
        _ => Err(StrictError::Invalid),
    }
}

/// The payload's members that tokenbridge reads, each parsed strictly into
/// a [`Value`]; [`parse_claims`] checks their types.
#[derive(Default)]
struct Members {
    sub: Option<Value>,
    iss: Option<Value>,
    aud: Option<Value>,
    azp: Option<Value>,
    email: Option<Value>,
    email_verified: Option<Value>,
    iat: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
    google: Option<Value>,
}

impl Members {
    fn slot(&mut self, name: &str) -> Option<&mut Option<Value>> {
        Some(match name {
            "sub" => &mut self.sub,
            "iss" => &mut self.iss,
            "aud" => &mut self.aud,
            "azp" => &mut self.azp,
            "email" => &mut self.email,
            "email_verified" => &mut self.email_verified,
            "iat" => &mut self.iat,
            "exp" => &mut self.exp,
            "nbf" => &mut self.nbf,
            "google" => &mut self.google,
            _ => return None,
        })
    }
}

/// Parses a token's payload as [`parse_object`] does (duplicates refused at
/// any depth, nesting bounded), straight into the members read, without a
/// map of every member. Other members are parsed and dropped; their names
/// are kept, borrowed from the payload where they have no escapes, only to
/// refuse a second one. (Issue 16: the map, its keys and its lookups were
/// about 4 % of a fresh token's exchange.)
fn parse_payload(bytes: &[u8]) -> Result<Members, StrictError> {
    parse_strict(bytes, |strict, de| {
        de::Deserializer::deserialize_map(de, PayloadVisitor(strict))
    })
}

struct PayloadVisitor<'a>(StrictValue<'a>);

impl<'de> Visitor<'de> for PayloadVisitor<'_> {
    type Value = Members;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Members, A::Error> {
        let inner = self.0.nested()?;
        let mut members = Members::default();
        let mut others = BTreeSet::new();
        while let Some(name) = access.next_key_seed(MemberName)? {
            let seen = match members.slot(&name) {
                Some(slot) if slot.is_none() => {
                    *slot = Some(access.next_value_seed(inner)?);
                    continue;
                }
                Some(_) => true,
                None => others.contains(&name),
            };
            if seen {
                *self.0.duplicate.borrow_mut() = Some(name.into_owned());
                return Err(de::Error::custom("duplicate member name"));
            }
            access.next_value_seed(inner)?;
            others.insert(name);
        }
        Ok(members)
    }
}

/// A member name, borrowed from the input when it has no escapes.
struct MemberName;

impl<'de> DeserializeSeed<'de> for MemberName {
    type Value = Cow<'de, str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for MemberName {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

#[derive(Clone, Copy)]
struct StrictValue<'a> {
    duplicate: &'a RefCell<Option<String>>,
    too_deep: &'a Cell<bool>,
    depth: usize,
}

impl StrictValue<'_> {
    /// The seed for the members of an array or object at this level.
    fn nested<E: de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_JSON_DEPTH {
            self.too_deep.set(true);
            return Err(E::custom("nested too deeply"));
        }
        Ok(Self {
            depth: self.depth + 1,
            ..self
        })
    }
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                *self.duplicate.borrow_mut() = Some(key);
                return Err(de::Error::custom("duplicate member name"));
            }
            let value = access.next_value_seed(inner)?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

/// Every check [`Verifier::verify_at`] makes before it looks a key up: the
/// size limit, the compact-JWS shape, the header rules and the strict parse
/// of the claims and their types, in that order. The signature is not
/// checked, so nothing returned is trusted.
///
/// A public entry point for the fuzz targets (`fuzz/`), which cannot reach the
/// private steps; the server does not call it. Keep it in step with
/// `verify_at`.
pub fn check_untrusted(token: &str) -> Result<Claims, VerifyError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(VerifyError::TooLarge(token.len()));
    }
    let compact = split_compact(token)?;
    check_header(compact.header)?;
    parse_claims(compact.payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_parser_refuses_duplicates_at_any_depth() {
        assert_eq!(
            parse_object(br#"{"a":1,"b":{"c":1,"c":2}}"#),
            Err(StrictError::Duplicate("c".into()))
        );
        assert_eq!(
            parse_object(br#"{"sub":"1","sub":"2"}"#),
            Err(StrictError::Duplicate("sub".into()))
        );
        assert_eq!(
            parse_object(br#"{"a":[{"x":1},{"x":1}]}"#).unwrap().len(),
            1
        );
        assert_eq!(parse_object(b"[1]"), Err(StrictError::Invalid));
        assert_eq!(parse_object(b"{} trailing"), Err(StrictError::Invalid));
        assert_eq!(parse_object(b"{"), Err(StrictError::Invalid));
    }

    #[test]
    fn the_payload_parser_agrees_with_the_strict_parser() {
        let nested =
            |levels: usize| format!(r#"{{"a":{}1{}}}"#, "[".repeat(levels), "]".repeat(levels));
        let inputs = [
            r#"{"sub":"1","sub":"2"}"#.to_owned(),
            r#"{"sub":"1","s\u0075b":"2"}"#.to_owned(),
            r#"{"x":1,"\u0078":2}"#.to_owned(),
            r#"{"x":1,"y":2,"x":3}"#.to_owned(),
            r#"{"google":{"compute_engine":{"zone":"a","zone":"b"}}}"#.to_owned(),
            r#"{"a":[{"x":1},{"x":1,"x":2}]}"#.to_owned(),
            r#"{"a":[{"x":1},{"x":1}],"sub":"1","exp":2.5,"iss":[1]}"#.to_owned(),
            nested(MAX_JSON_DEPTH - 1),
            nested(MAX_JSON_DEPTH),
            nested(100_000),
            "[1]".to_owned(),
            "{} trailing".to_owned(),
            "{".to_owned(),
            r#"{"sub":"1""#.to_owned(),
            "\"sub\"".to_owned(),
            "{}".to_owned(),
        ];
        for input in inputs {
            let map = parse_object(input.as_bytes());
            let members = parse_payload(input.as_bytes());
            match (map, members) {
                (Ok(mut map), Ok(mut m)) => {
                    for (name, value) in [
                        ("sub", m.sub.take()),
                        ("exp", m.exp.take()),
                        ("iss", m.iss.take()),
                        ("google", m.google.take()),
                    ] {
                        assert_eq!(map.remove(name), value, "{input:.60}: {name}");
                    }
                }
                (map, members) => assert_eq!(map.err(), members.err(), "{input:.60}"),
            }
        }
    }

    #[test]
    fn strict_parser_bounds_nesting() {
        let nested =
            |levels: usize| format!(r#"{{"a":{}1{}}}"#, "[".repeat(levels), "]".repeat(levels));
        // The object is level 1: 31 arrays inside it reach the limit.
        assert!(parse_object(nested(MAX_JSON_DEPTH - 1).as_bytes()).is_ok());
        assert_eq!(
            parse_object(nested(MAX_JSON_DEPTH).as_bytes()),
            Err(StrictError::TooDeep)
        );
        // Far beyond serde_json's own limit: the same clear answer, no
        // stack exhaustion.
        assert_eq!(
            parse_object(nested(100_000).as_bytes()),
            Err(StrictError::TooDeep)
        );
        let objects = format!(r#"{}1{}"#, r#"{"a":"#.repeat(1000), "}".repeat(1000));
        assert_eq!(parse_object(objects.as_bytes()), Err(StrictError::TooDeep));
    }

    #[test]
    fn compact_shape() {
        for bad in ["", "a.b", "a.b.c.d", "a..c", "a.b.c=", "a b.c.d", "a.b.c\n"] {
            assert_eq!(
                split_compact(bad).err(),
                Some(VerifyError::Malformed(
                    "not a compact JWS (three base64url parts separated by dots)"
                )),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn header_rules() {
        let h = |json: &str| check_header(json.as_bytes().to_vec());
        assert_eq!(h(r#"{"alg":"RS256","kid":"k"}"#), Ok("k".into()));
        assert_eq!(
            h(r#"{"alg":"none","kid":"k"}"#),
            Err(VerifyError::Algorithm("none".into()))
        );
        assert_eq!(
            h(r#"{"alg":"HS256","kid":"k"}"#),
            Err(VerifyError::Algorithm("HS256".into()))
        );
        assert_eq!(
            h(r#"{"kid":"k"}"#),
            Err(VerifyError::Algorithm("(missing)".into()))
        );
        assert_eq!(h(r#"{"alg":"RS256"}"#), Err(VerifyError::MissingKid));
        assert_eq!(
            h(r#"{"alg":"RS256","kid":7}"#),
            Err(VerifyError::MissingKid)
        );
        assert_eq!(
            h(r#"{"alg":"RS256","kid":"k","crit":["exp"]}"#),
            Err(VerifyError::Crit)
        );
        assert_eq!(
            h(r#"{"alg":"RS256","kid":"k","alg":"RS256"}"#),
            Err(VerifyError::DuplicateHeader("alg".into()))
        );
    }

    #[test]
    fn claim_types_are_strict() {
        let c = |json: &str| parse_claims(json.as_bytes().to_vec());
        let ok = r#"{"iss":"i","aud":"a","sub":"1","iat":1,"exp":2,"email":"e@x.io","email_verified":true}"#;
        let claims = c(ok).unwrap();
        assert_eq!(claims.verified_email(), Some("e@x.io"));
        assert_eq!(
            c(r#"{"iss":"i","aud":["a"],"sub":"1","iat":1,"exp":2}"#),
            Err(VerifyError::ClaimType("aud", "expected a string"))
        );
        assert_eq!(
            c(r#"{"iss":["i"],"aud":"a","sub":"1","iat":1,"exp":2}"#),
            Err(VerifyError::ClaimType("iss", "expected a string"))
        );
        assert_eq!(
            c(r#"{"iss":"i","aud":"a","sub":"1","iat":1.5,"exp":2}"#),
            Err(VerifyError::ClaimType(
                "iat",
                "expected a non-negative integer"
            ))
        );
        assert_eq!(
            c(r#"{"iss":"i","aud":"a","sub":"1","exp":2}"#),
            Err(VerifyError::MissingClaim("iat"))
        );
        assert_eq!(
            c(r#"{"iss":"i","aud":"a","sub":"1","iat":1,"exp":2,"email_verified":"true"}"#),
            Err(VerifyError::ClaimType(
                "email_verified",
                "expected a boolean"
            ))
        );
        let unverified = c(
            r#"{"iss":"i","aud":"a","sub":"1","iat":1,"exp":2,"email":"e@x.io","email_verified":false}"#,
        );
        assert_eq!(unverified.unwrap().verified_email(), None);
    }

    #[test]
    fn the_compute_engine_claim_is_kept_for_the_audit_log() {
        let c = |json: &str| parse_claims(json.as_bytes().to_vec()).unwrap().gce;
        let full = c(
            r#"{"iss":"i","aud":"a","sub":"1","iat":1,"exp":2,"google":{"compute_engine":{"project_id":"p","project_number":42,"zone":"europe-west1-b","instance_id":"123","instance_name":"vm","instance_confidentiality":0}}}"#,
        )
        .unwrap();
        assert_eq!(full.project_id.as_deref(), Some("p"));
        assert_eq!(full.project_number.as_deref(), Some("42"));
        assert_eq!(full.zone.as_deref(), Some("europe-west1-b"));
        assert_eq!(full.instance_id.as_deref(), Some("123"));
        assert_eq!(full.instance_name.as_deref(), Some("vm"));
        assert_eq!(
            c(r#"{"iss":"i","aud":"a","sub":"1","iat":1,"exp":2}"#),
            None
        );
        assert_eq!(
            c(r#"{"iss":"i","aud":"a","sub":"1","iat":1,"exp":2,"google":"x"}"#),
            None
        );
        // Mistyped members are left out, not refused.
        let odd = c(
            r#"{"iss":"i","aud":"a","sub":"1","iat":1,"exp":2,"google":{"compute_engine":{"project_id":7,"zone":"z"}}}"#,
        )
        .unwrap();
        assert_eq!(odd.project_id, None);
        assert_eq!(odd.zone.as_deref(), Some("z"));
    }
}
