//! A stand-in for AWS STS that, unlike moto, checks web identity tokens and
//! role trust policies before it lets moto issue credentials.
//!
//! It is written from AWS's documentation, not from AWS's code, and covers the
//! part of `AssumeRoleWithWebIdentity` that tokenbridge relies on:
//!
//! - the token: its issuer must be an OIDC provider the account trusts (IAM
//!   "Creating OpenID Connect (OIDC) identity providers"), its signature must
//!   verify with a key of the provider's JWKS, it must not have expired, and
//!   for providers other than Google its `aud` must be one of the provider's
//!   client IDs;
//! - the request context: `PROVIDER:aud` / `PROVIDER:sub` for OIDC providers,
//!   and `accounts.google.com:aud` (the token's `azp` if set, else its `aud`),
//!   `accounts.google.com:oaud` (its `aud`) and `accounts.google.com:sub` for
//!   Google (IAM "Available keys for AWS web identity federation");
//!   `aws:RequestTag/KEY`, `aws:TagKeys` and `sts:TransitiveTagKeys` for
//!   session tags from the `https://aws.amazon.com/tags` claim (IAM "Passing
//!   session tags using AssumeRoleWithWebIdentity"); `sts:SourceIdentity` from
//!   the `https://aws.amazon.com/source_identity` claim (IAM "Monitor and
//!   control actions taken with assumed roles"); `sts:RoleSessionName`;
//! - the role trust policy: every action the request needs
//!   (`sts:AssumeRoleWithWebIdentity`, plus `sts:TagSession` with session tags
//!   and `sts:SetSourceIdentity` with a source identity) must be allowed by a
//!   statement whose `Principal.Federated` is the provider and whose
//!   conditions hold, and denied by none; the string condition operators
//!   (`StringEquals`, `StringNotEquals`, `StringEqualsIgnoreCase`,
//!   `StringNotEqualsIgnoreCase`, `StringLike`, `StringNotLike`), with the
//!   `ForAllValues:` / `ForAnyValue:` qualifiers and the `IfExists` suffix,
//!   and `Null` (IAM "IAM JSON policy elements: Condition operators").
//!
//! Requests that pass are forwarded unchanged to moto, which issues the
//! credentials; the others get the STS error document AWS would send.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header::CONTENT_TYPE},
    response::{IntoResponse, Response},
};
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{Jwk, KeyAlgorithm},
};
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::{
    serve,
    sts_wire::{error_response, lock, unix_now, unverified_claims},
};

const ASSUME_ROLE_WITH_WEB_IDENTITY: &str = "sts:AssumeRoleWithWebIdentity";
const TAG_SESSION: &str = "sts:TagSession";
const SET_SOURCE_IDENTITY: &str = "sts:SetSourceIdentity";
/// The claim that carries session tags.
const TAGS_CLAIM: &str = "https://aws.amazon.com/tags";
/// The claim that carries the source identity.
const SOURCE_IDENTITY_CLAIM: &str = "https://aws.amazon.com/source_identity";
/// STS's limits on session tags.
const MAX_TAGS: usize = 50;
const MAX_TAG_KEY_CHARS: usize = 128;
const MAX_TAG_VALUE_CHARS: usize = 256;
const X_AMZN_REQUESTID: HeaderName = HeaderName::from_static("x-amzn-requestid");

/// An OIDC identity provider that the emulated AWS account trusts.
#[derive(Clone, Debug)]
pub struct Provider {
    /// The issuer, as the tokens' `iss` has it: `https://HOST[/PATH]`, or
    /// [`Provider::GOOGLE`] for Google, whose tokens may have either
    /// `https://accounts.google.com` or `accounts.google.com`.
    pub issuer: String,
    /// Where to fetch the provider's JWKS (HTTP or HTTPS), at every request.
    pub jwks_uri: String,
    /// The IAM OIDC provider's client ID list (audiences): a token's `aud`
    /// must be one of them. Ignored for Google, whose audiences only trust
    /// policies check.
    pub audiences: Vec<String>,
    /// A root CA (PEM) to trust, besides the public ones, for an HTTPS
    /// `jwks_uri`.
    pub ca_pem: Option<String>,
}

impl Provider {
    /// Google's issuer, and its principal in trust policies.
    pub const GOOGLE: &'static str = "accounts.google.com";

    /// Google as IAM knows it (no OIDC provider to create, no client IDs),
    /// with its keys at `jwks_uri`.
    pub fn google(jwks_uri: impl Into<String>) -> Self {
        Self {
            issuer: Self::GOOGLE.to_owned(),
            jwks_uri: jwks_uri.into(),
            audiences: Vec::new(),
            ca_pem: None,
        }
    }

    /// An IAM OIDC provider for `issuer` (`https://HOST[/PATH]`) with these
    /// client IDs, its keys at `jwks_uri`.
    pub fn oidc(
        issuer: impl Into<String>,
        jwks_uri: impl Into<String>,
        audiences: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            jwks_uri: jwks_uri.into(),
            audiences: audiences.into_iter().map(Into::into).collect(),
            ca_pem: None,
        }
    }

    fn is_google(&self) -> bool {
        is_google_issuer(&self.issuer)
    }

    /// Whether a token with this `iss` comes from this provider.
    fn issued(&self, iss: &str) -> bool {
        if self.is_google() {
            is_google_issuer(iss)
        } else {
            self.issuer == iss
        }
    }

    /// The prefix of its condition keys: the issuer URL without `https://`.
    fn key_prefix(&self) -> &str {
        if self.is_google() {
            Self::GOOGLE
        } else {
            self.issuer.strip_prefix("https://").unwrap_or(&self.issuer)
        }
    }

    /// What `Principal.Federated` names it by in a role of `role_arn`.
    fn principal(&self, role_arn: &str) -> String {
        if self.is_google() {
            return Self::GOOGLE.to_owned();
        }
        let mut parts = role_arn.split(':');
        let partition = parts.nth(1).unwrap_or("aws");
        let account = parts.nth(2).unwrap_or_default();
        format!(
            "arn:{partition}:iam::{account}:oidc-provider/{}",
            self.key_prefix()
        )
    }
}

fn is_google_issuer(issuer: &str) -> bool {
    matches!(
        issuer,
        "accounts.google.com" | "https://accounts.google.com"
    )
}

/// One request that [`StrictSts`] has answered.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The `RoleArn` parameter.
    pub role_arn: String,
    /// The `RoleSessionName` parameter.
    pub role_session_name: String,
    /// Whether the request passed all checks and went on to moto.
    pub allowed: bool,
    /// The STS error code of the answer, if the stand-in refused the request.
    pub error_code: Option<String>,
    /// The token's payload as far as it could be decoded (`Null` if it is not
    /// a JWT); verified only if `allowed`.
    pub claims: Value,
    /// The session tags from the token.
    pub tags: BTreeMap<String, String>,
    /// The transitive tag keys from the token.
    pub transitive_tag_keys: Vec<String>,
    /// The source identity from the token.
    pub source_identity: Option<String>,
    /// The form parameters, with the value of `WebIdentityToken` replaced by
    /// `<redacted>`.
    pub form: HashMap<String, String>,
}

/// A stand-in for AWS STS's `AssumeRoleWithWebIdentity` that verifies web
/// identity tokens and evaluates role trust policies as AWS documents it, then
/// has moto issue the credentials. See the [module docs](self) for what it
/// covers.
///
/// It serves HTTP on 127.0.0.1 at a port the OS picks; dropping it stops it.
pub struct StrictSts {
    addr: SocketAddr,
    state: Arc<StsState>,
    _stop: watch::Sender<()>,
}

struct StsState {
    moto_endpoint: String,
    /// Forwards to moto.
    http: reqwest::Client,
    providers: Mutex<Vec<TrustedProvider>>,
    policies: Mutex<HashMap<String, TrustPolicy>>,
    seen: Mutex<Vec<Seen>>,
}

#[derive(Clone)]
struct TrustedProvider {
    provider: Provider,
    /// Fetches its JWKS, trusting its `ca_pem`.
    http: reqwest::Client,
}

impl StrictSts {
    /// Starts the stand-in in front of moto at `moto_endpoint`
    /// (`http://127.0.0.1:PORT`), trusting no provider and knowing no role.
    pub async fn start(moto_endpoint: String) -> Self {
        let (stop, _) = watch::channel(());
        let state = Arc::new(StsState {
            moto_endpoint: moto_endpoint.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            providers: Mutex::new(Vec::new()),
            policies: Mutex::new(HashMap::new()),
            seen: Mutex::new(Vec::new()),
        });
        let router = Router::new()
            .fallback(assume_role)
            .with_state(Arc::clone(&state));
        let addr = serve(router, &stop).await;
        Self {
            addr,
            state,
            _stop: stop,
        }
    }

    /// The endpoint URL: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Trusts `provider` from now on, in place of any provider with the same
    /// issuer.
    ///
    /// # Panics
    ///
    /// If its `ca_pem` is not a PEM certificate.
    pub fn trust_provider(&self, provider: Provider) {
        let mut http = reqwest::Client::builder();
        if let Some(pem) = &provider.ca_pem {
            let ca = reqwest::Certificate::from_pem(pem.as_bytes()).expect("a PEM CA certificate");
            http = http.add_root_certificate(ca);
        }
        let http = http.build().expect("an HTTP client for the JWKS");
        let mut providers = lock(&self.state.providers);
        providers.retain(|trusted| trusted.provider.issuer != provider.issuer);
        providers.push(TrustedProvider { provider, http });
    }

    /// Sets the trust policy of the role `role_arn` (creating the role).
    ///
    /// # Panics
    ///
    /// If the policy uses what the stand-in does not evaluate (`NotAction`,
    /// `NotPrincipal`, condition operators other than the string ones and
    /// `Null`, policy variables ..), rather than evaluating it wrongly.
    pub fn set_trust_policy(&self, role_arn: &str, policy: Value) {
        let policy = TrustPolicy::parse(&policy)
            .unwrap_or_else(|error| panic!("unsupported trust policy for {role_arn}: {error}"));
        lock(&self.state.policies).insert(role_arn.to_owned(), policy);
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<Seen> {
        lock(&self.state.seen).clone()
    }
}

impl fmt::Debug for StrictSts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StrictSts")
            .field("addr", &self.addr)
            .field("moto_endpoint", &self.state.moto_endpoint)
            .finish_non_exhaustive()
    }
}

/// An STS error answer.
struct StsError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl StsError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn invalid_token(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidIdentityToken", message)
    }

    fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ValidationError", message)
    }

    fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidParameterValue", message)
    }

    fn access_denied() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            format!("Not authorized to perform {ASSUME_ROLE_WITH_WEB_IDENTITY}"),
        )
    }

    fn into_response(self) -> Response {
        error_response(self.status, self.code, &self.message)
    }
}

async fn assume_role(
    State(state): State<Arc<StsState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method != Method::POST {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let param = |name: &str| form.get(name).cloned().unwrap_or_default();
    let mut seen = Seen {
        role_arn: param("RoleArn"),
        role_session_name: param("RoleSessionName"),
        allowed: false,
        error_code: None,
        claims: Value::Null,
        tags: BTreeMap::new(),
        transitive_tag_keys: Vec::new(),
        source_identity: None,
        form: form
            .iter()
            .map(|(name, value)| {
                let value = if name == "WebIdentityToken" {
                    "<redacted>".to_owned()
                } else {
                    value.clone()
                };
                (name.clone(), value)
            })
            .collect(),
    };
    let verdict = evaluate(&state, &form, &mut seen).await;
    let response = match verdict {
        Ok(()) => {
            seen.allowed = true;
            forward(&state, &uri, &headers, body).await
        }
        Err(error) => {
            seen.error_code = Some(error.code.to_owned());
            error.into_response()
        }
    };
    lock(&state.seen).push(seen);
    response
}

/// Checks the request; fills in `seen` as far as it gets.
async fn evaluate(
    state: &StsState,
    form: &HashMap<String, String>,
    seen: &mut Seen,
) -> Result<(), StsError> {
    match form.get("Action").map(String::as_str) {
        Some("AssumeRoleWithWebIdentity") => {}
        Some(action) => {
            return Err(StsError::new(
                StatusCode::BAD_REQUEST,
                "InvalidAction",
                format!("Could not find operation {action} for version 2011-06-15"),
            ));
        }
        None => {
            return Err(StsError::new(
                StatusCode::BAD_REQUEST,
                "MissingAction",
                "Missing Action",
            ));
        }
    }
    for name in ["RoleArn", "RoleSessionName", "WebIdentityToken"] {
        if form.get(name).is_none_or(String::is_empty) {
            return Err(StsError::new(
                StatusCode::BAD_REQUEST,
                "MissingParameter",
                format!("The request must contain the parameter {name}"),
            ));
        }
    }
    check_identifier("roleSessionName", &seen.role_session_name)?;
    let token = form
        .get("WebIdentityToken")
        .map(String::as_str)
        .unwrap_or_default();

    // The token's issuer and claims, unverified for now.
    let claims = unverified_claims(token).ok_or_else(|| {
        StsError::invalid_token(
            "The ID Token provided is not a valid JWT. (You may see this error if you sent an \
             Access Token)",
        )
    })?;
    seen.claims = Value::Object(claims.clone());
    let iss = claim_str(&claims, "iss").unwrap_or_default();
    let trusted = lock(&state.providers)
        .iter()
        .find(|trusted| trusted.provider.issued(iss))
        .cloned()
        .ok_or_else(|| {
            StsError::invalid_token(format!(
                "No OpenIDConnect provider found in your account for {iss}"
            ))
        })?;
    let provider = &trusted.provider;

    verify(&trusted, token).await?;
    let audiences = claim_strings(&claims, "aud");
    if !provider.is_google() && !audiences.iter().any(|aud| provider.audiences.contains(aud)) {
        return Err(StsError::invalid_token("Incorrect token audience"));
    }

    // Session tags and source identity.
    let tags = session_tags(&claims)?;
    seen.tags = tags.tags.clone();
    seen.transitive_tag_keys = tags.transitive.clone();
    let source_identity = match claims.get(SOURCE_IDENTITY_CLAIM) {
        None => None,
        Some(Value::String(source_identity)) => Some(source_identity.clone()),
        Some(_) => {
            return Err(StsError::invalid_token(format!(
                "The {SOURCE_IDENTITY_CLAIM} claim must be a string"
            )));
        }
    };
    seen.source_identity.clone_from(&source_identity);
    if let Some(source_identity) = &source_identity {
        check_identifier("sourceIdentity", source_identity)?;
    }

    // The request context.
    let mut context = Context::default();
    let prefix = provider.key_prefix();
    if provider.is_google() {
        let azp = claim_strings(&claims, "azp");
        let aud = if azp.is_empty() {
            audiences.clone()
        } else {
            azp
        };
        context.insert(format!("{prefix}:aud"), aud);
        context.insert(format!("{prefix}:oaud"), audiences);
    } else {
        context.insert(format!("{prefix}:aud"), audiences);
    }
    context.insert(format!("{prefix}:sub"), claim_strings(&claims, "sub"));
    context.insert(
        "sts:RoleSessionName".to_owned(),
        vec![seen.role_session_name.clone()],
    );
    if let Some(source_identity) = &source_identity {
        context.insert(
            "sts:SourceIdentity".to_owned(),
            vec![source_identity.clone()],
        );
    }
    for (key, value) in &tags.tags {
        context.insert(format!("aws:RequestTag/{key}"), vec![value.clone()]);
    }
    context.insert(
        "aws:TagKeys".to_owned(),
        tags.tags.keys().cloned().collect(),
    );
    context.insert("sts:TransitiveTagKeys".to_owned(), tags.transitive.clone());

    // The trust policy, for every action the request needs.
    let mut actions = vec![ASSUME_ROLE_WITH_WEB_IDENTITY];
    if !tags.tags.is_empty() || !tags.transitive.is_empty() {
        actions.push(TAG_SESSION);
    }
    if source_identity.is_some() {
        actions.push(SET_SOURCE_IDENTITY);
    }
    let principal = provider.principal(&seen.role_arn);
    let policies = lock(&state.policies);
    let policy = policies
        .get(&seen.role_arn)
        .ok_or_else(StsError::access_denied)?;
    if actions
        .iter()
        .all(|action| policy.allows(&principal, action, &context))
    {
        Ok(())
    } else {
        Err(StsError::access_denied())
    }
}

/// Verifies the token's signature with the provider's JWKS, and its expiry.
async fn verify(trusted: &TrustedProvider, token: &str) -> Result<(), StsError> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| StsError::invalid_token("The ID Token provided is not a valid JWT."))?;
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
        return Err(StsError::invalid_token(format!(
            "Unsupported signing algorithm {:?}",
            header.alg
        )));
    }
    let communication_error = || {
        StsError::new(
            StatusCode::BAD_REQUEST,
            "IDPCommunicationError",
            "Couldn't retrieve verification key from your identity provider, please reference \
             AssumeRoleWithWebIdentity documentation for requirements",
        )
    };
    let jwks: Value = async {
        trusted
            .http
            .get(&trusted.provider.jwks_uri)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }
    .await
    .map_err(|_| communication_error())?;
    // Keys that do not parse are skipped, as they cannot verify anything.
    let keys: Vec<Jwk> = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(communication_error)?
        .iter()
        .filter_map(|key| serde_json::from_value(key.clone()).ok())
        .filter(|key: &Jwk| header.kid.is_none() || key.common.key_id == header.kid)
        .filter(|key| {
            key.common
                .key_algorithm
                .as_ref()
                .is_none_or(|alg| *alg == KeyAlgorithm::from(header.alg))
        })
        .collect();
    if keys.is_empty() {
        return Err(StsError::invalid_token(
            "No key in the identity provider's JWKS matches the token's kid",
        ));
    }
    let mut validation = Validation::new(header.alg);
    validation.validate_aud = false;
    validation.leeway = 0;
    let mut outcome = Err(StsError::invalid_token("Invalid token signature"));
    for key in &keys {
        let Ok(key) = DecodingKey::from_jwk(key) else {
            continue;
        };
        match jsonwebtoken::decode::<Value>(token, &key, &validation) {
            Ok(_) => return Ok(()),
            Err(error) => match error.kind() {
                ErrorKind::ExpiredSignature => {
                    let now = unix_now();
                    let exp = jsonwebtoken::dangerous::insecure_decode_claims::<Value>(token)
                        .ok()
                        .and_then(|claims| claims.get("exp").and_then(Value::as_u64))
                        .unwrap_or_default();
                    return Err(StsError::new(
                        StatusCode::BAD_REQUEST,
                        "ExpiredTokenException",
                        format!(
                            "Token expired: current date/time {now} must be before the \
                             expiration date/time {exp}"
                        ),
                    ));
                }
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {}
                ErrorKind::ImmatureSignature => {
                    outcome = Err(StsError::invalid_token("Token is not valid yet (nbf)"));
                }
                ErrorKind::MissingRequiredClaim(claim) => {
                    outcome = Err(StsError::invalid_token(format!("Missing claim {claim}")));
                }
                _ => {
                    outcome = Err(StsError::invalid_token(format!("Invalid token: {error}")));
                }
            },
        }
    }
    outcome
}

fn claim_str<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    claims.get(name).and_then(Value::as_str)
}

/// A claim that is a string or an array of strings, as a list.
fn claim_strings(claims: &Map<String, Value>, name: &str) -> Vec<String> {
    match claims.get(name) {
        Some(Value::String(value)) => vec![value.clone()],
        Some(Value::Array(values)) => values
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// Session tags from the token's `https://aws.amazon.com/tags` claim.
struct SessionTags {
    tags: BTreeMap<String, String>,
    transitive: Vec<String>,
}

fn session_tags(claims: &Map<String, Value>) -> Result<SessionTags, StsError> {
    let mut tags = SessionTags {
        tags: BTreeMap::new(),
        transitive: Vec::new(),
    };
    let Some(claim) = claims.get(TAGS_CLAIM) else {
        return Ok(tags);
    };
    let malformed = |what: &str| StsError::invalid_token(format!("Malformed {TAGS_CLAIM}: {what}"));
    let claim = claim
        .as_object()
        .ok_or_else(|| malformed("not an object"))?;
    if let Some(principal_tags) = claim.get("principal_tags") {
        let principal_tags = principal_tags
            .as_object()
            .ok_or_else(|| malformed("principal_tags is not an object"))?;
        for (key, value) in principal_tags {
            // One value per tag: multivalued session tags are not supported.
            let value = match value {
                Value::String(value) => value.clone(),
                Value::Array(values) => match values.as_slice() {
                    [Value::String(value)] => value.clone(),
                    _ => return Err(malformed(&format!("tag {key} must have exactly one value"))),
                },
                _ => return Err(malformed(&format!("tag {key} is not a string"))),
            };
            tags.tags.insert(key.clone(), value);
        }
    }
    if let Some(transitive) = claim.get("transitive_tag_keys") {
        tags.transitive = transitive
            .as_array()
            .ok_or_else(|| malformed("transitive_tag_keys is not an array"))?
            .iter()
            .map(|key| key.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| malformed("transitive_tag_keys has a non-string"))?;
    }
    check_tags(&tags.tags)?;
    Ok(tags)
}

/// STS's limits on session tags (IAM "Passing session tags in AWS STS" and
/// the rules for naming tags).
fn check_tags(tags: &BTreeMap<String, String>) -> Result<(), StsError> {
    if tags.len() > MAX_TAGS {
        return Err(StsError::validation(format!(
            "1 validation error detected: Value at 'tags' failed to satisfy constraint: Member \
             must have length less than or equal to {MAX_TAGS}"
        )));
    }
    let allowed = |c: char| c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c);
    let mut lowercase_keys = Vec::with_capacity(tags.len());
    for (key, value) in tags {
        let key_chars = key.chars().count();
        if key_chars == 0 || key_chars > MAX_TAG_KEY_CHARS || !key.chars().all(allowed) {
            return Err(StsError::validation(format!(
                "1 validation error detected: Value '{key}' at 'tags.member.key' failed to \
                 satisfy constraint: Member must have length between 1 and {MAX_TAG_KEY_CHARS} \
                 and match [\\p{{L}}\\p{{Z}}\\p{{N}}_.:/=+\\-@]+"
            )));
        }
        if value.chars().count() > MAX_TAG_VALUE_CHARS || !value.chars().all(allowed) {
            return Err(StsError::validation(format!(
                "1 validation error detected: Value at 'tags.member.value' (key '{key}') \
                 failed to satisfy constraint: Member must have length less than or equal to \
                 {MAX_TAG_VALUE_CHARS} and match [\\p{{L}}\\p{{Z}}\\p{{N}}_.:/=+\\-@]*"
            )));
        }
        let lowercase = key.to_lowercase();
        if lowercase.starts_with("aws:") {
            return Err(StsError::invalid_parameter(format!(
                "Tag key {key} uses the reserved prefix aws:"
            )));
        }
        if lowercase_keys.contains(&lowercase) {
            return Err(StsError::invalid_parameter(
                "Duplicate tag keys found. Please note that Tag keys are case insensitive.",
            ));
        }
        lowercase_keys.push(lowercase);
    }
    Ok(())
}

/// The constraint on `RoleSessionName` and `SourceIdentity`: 2 to 64
/// characters of `[\w+=,.@-]`.
fn check_identifier(parameter: &str, value: &str) -> Result<(), StsError> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c);
    if !(2..=64).contains(&value.len()) || !value.chars().all(valid_char) {
        return Err(StsError::validation(format!(
            "1 validation error detected: Value '{value}' at '{parameter}' failed to satisfy \
             constraint: Member must have length between 2 and 64 and satisfy regular \
             expression pattern: [\\w+=,.@-]*"
        )));
    }
    Ok(())
}

/// The request context: condition keys (lower-cased, as they are not
/// case-sensitive) and their values.
#[derive(Default)]
struct Context(HashMap<String, Vec<String>>);

impl Context {
    fn insert(&mut self, key: String, values: Vec<String>) {
        self.0.insert(key.to_lowercase(), values);
    }

    /// The key's values; `None` if absent or empty.
    fn get(&self, key: &str) -> Option<&[String]> {
        self.0
            .get(key)
            .map(Vec::as_slice)
            .filter(|values| !values.is_empty())
    }
}

/// A role trust policy, as far as the stand-in evaluates it.
struct TrustPolicy {
    statements: Vec<Statement>,
}

struct Statement {
    allow: bool,
    /// `None` for `"Principal": "*"`; else the `Federated` principals.
    federated: Option<Vec<String>>,
    actions: Vec<String>,
    conditions: Vec<Condition>,
}

struct Condition {
    operator: Operator,
    /// Lower-cased.
    key: String,
    values: Vec<String>,
}

#[derive(Clone, Copy)]
enum Qualifier {
    None,
    ForAnyValue,
    ForAllValues,
}

#[derive(Clone, Copy)]
enum Comparison {
    Equals,
    EqualsIgnoreCase,
    Like,
    Null,
}

#[derive(Clone, Copy)]
struct Operator {
    qualifier: Qualifier,
    comparison: Comparison,
    negated: bool,
    if_exists: bool,
}

impl Operator {
    fn parse(name: &str) -> Result<Self, String> {
        let (qualifier, rest) = if let Some(rest) = name.strip_prefix("ForAnyValue:") {
            (Qualifier::ForAnyValue, rest)
        } else if let Some(rest) = name.strip_prefix("ForAllValues:") {
            (Qualifier::ForAllValues, rest)
        } else {
            (Qualifier::None, name)
        };
        let (rest, if_exists) = match rest.strip_suffix("IfExists") {
            Some(rest) => (rest, true),
            None => (rest, false),
        };
        let (comparison, negated) = match rest {
            "StringEquals" => (Comparison::Equals, false),
            "StringNotEquals" => (Comparison::Equals, true),
            "StringEqualsIgnoreCase" => (Comparison::EqualsIgnoreCase, false),
            "StringNotEqualsIgnoreCase" => (Comparison::EqualsIgnoreCase, true),
            "StringLike" => (Comparison::Like, false),
            "StringNotLike" => (Comparison::Like, true),
            "Null" if !if_exists && matches!(qualifier, Qualifier::None) => {
                (Comparison::Null, false)
            }
            _ => return Err(format!("condition operator {name} is not supported")),
        };
        Ok(Self {
            qualifier,
            comparison,
            negated,
            if_exists,
        })
    }
}

impl TrustPolicy {
    fn parse(policy: &Value) -> Result<Self, String> {
        let statements = match policy.get("Statement") {
            Some(Value::Array(statements)) => statements.iter().collect(),
            Some(statement @ Value::Object(_)) => vec![statement],
            _ => return Err("no Statement".to_owned()),
        };
        let statements = statements
            .into_iter()
            .map(Statement::parse)
            .collect::<Result<_, _>>()?;
        Ok(Self { statements })
    }

    /// Whether the policy allows `principal` to perform `action` in `context`:
    /// an `Allow` statement applies and no `Deny` statement does.
    fn allows(&self, principal: &str, action: &str, context: &Context) -> bool {
        let applying = |allow: bool| {
            self.statements.iter().any(|statement| {
                statement.allow == allow && statement.applies(principal, action, context)
            })
        };
        !applying(false) && applying(true)
    }
}

impl Statement {
    fn parse(statement: &Value) -> Result<Self, String> {
        let statement = statement
            .as_object()
            .ok_or("a statement is not an object")?;
        for key in statement.keys() {
            if !matches!(
                key.as_str(),
                "Sid" | "Effect" | "Principal" | "Action" | "Condition"
            ) {
                return Err(format!("statement element {key} is not supported"));
            }
        }
        let allow = match statement.get("Effect").and_then(Value::as_str) {
            Some("Allow") => true,
            Some("Deny") => false,
            _ => return Err("Effect must be Allow or Deny".to_owned()),
        };
        let federated = match statement.get("Principal") {
            Some(Value::String(any)) if any == "*" => None,
            Some(Value::Object(principal)) => Some(
                principal
                    .get("Federated")
                    .map(strings)
                    .transpose()?
                    .unwrap_or_default(),
            ),
            _ => return Err("Principal must be \"*\" or an object".to_owned()),
        };
        let actions = strings(statement.get("Action").ok_or("no Action")?)?;
        let mut conditions = Vec::new();
        if let Some(block) = statement.get("Condition") {
            let block = block.as_object().ok_or("Condition is not an object")?;
            for (operator_name, keys) in block {
                let operator = Operator::parse(operator_name)?;
                let keys = keys
                    .as_object()
                    .ok_or_else(|| format!("{operator_name} is not an object"))?;
                for (key, values) in keys {
                    let values = strings(values)?;
                    if values.iter().any(|value| value.contains("${")) {
                        return Err(format!("policy variables ({key}) are not supported"));
                    }
                    conditions.push(Condition {
                        operator,
                        key: key.to_lowercase(),
                        values,
                    });
                }
            }
        }
        Ok(Self {
            allow,
            federated,
            actions,
            conditions,
        })
    }

    fn applies(&self, principal: &str, action: &str, context: &Context) -> bool {
        let principal_matches = self
            .federated
            .as_ref()
            .is_none_or(|federated| federated.iter().any(|name| name == principal));
        // Action names are not case-sensitive, and may have wildcards.
        let action = action.to_lowercase();
        principal_matches
            && self
                .actions
                .iter()
                .any(|pattern| like(&action, &pattern.to_lowercase()))
            && self
                .conditions
                .iter()
                .all(|condition| condition.holds(context))
    }
}

impl Condition {
    fn holds(&self, context: &Context) -> bool {
        let operator = self.operator;
        let request = context.get(&self.key);
        if let Comparison::Null = operator.comparison {
            // "true": the key must be absent; "false": present.
            return self.values.iter().any(|value| match value.as_str() {
                "true" => request.is_none(),
                "false" => request.is_some(),
                _ => false,
            });
        }
        let Some(request) = request else {
            return match operator.qualifier {
                Qualifier::ForAllValues => true,
                Qualifier::ForAnyValue => operator.if_exists,
                Qualifier::None => operator.if_exists || operator.negated,
            };
        };
        let matches = |value: &String| {
            self.values.iter().any(|pattern| match operator.comparison {
                Comparison::Equals => value == pattern,
                Comparison::EqualsIgnoreCase => value.to_lowercase() == pattern.to_lowercase(),
                Comparison::Like => like(value, pattern),
                Comparison::Null => false,
            })
        };
        match operator.qualifier {
            Qualifier::None => request.iter().any(matches) != operator.negated,
            Qualifier::ForAnyValue => request
                .iter()
                .any(|value| matches(value) != operator.negated),
            Qualifier::ForAllValues => request
                .iter()
                .all(|value| matches(value) != operator.negated),
        }
    }
}

/// A string or a list of strings (numbers and booleans as their text).
fn strings(value: &Value) -> Result<Vec<String>, String> {
    let scalar = |value: &Value| match value {
        Value::String(text) => Ok(text.clone()),
        Value::Bool(_) | Value::Number(_) => Ok(value.to_string()),
        _ => Err(format!("{value} is not a string")),
    };
    match value {
        Value::Array(values) => values.iter().map(scalar).collect(),
        value => Ok(vec![scalar(value)?]),
    }
}

/// `StringLike` matching: `*` matches any run of characters, `?` any one.
fn like(value: &str, pattern: &str) -> bool {
    let value: Vec<char> = value.chars().collect();
    let pattern: Vec<char> = pattern.chars().collect();
    let (mut v, mut p) = (0, 0);
    // Where the last `*` was, and the value position it matched up to.
    let mut star: Option<(usize, usize)> = None;
    while v < value.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, v));
                p += 1;
            }
            Some(&c) if c == '?' || c == value[v] => {
                p += 1;
                v += 1;
            }
            _ => match star {
                Some((star_p, star_v)) => {
                    p = star_p + 1;
                    v = star_v + 1;
                    star = Some((star_p, star_v + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Sends the original request on to moto, and its answer back.
async fn forward(state: &StsState, uri: &Uri, headers: &HeaderMap, body: Bytes) -> Response {
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    let content_type = headers
        .get(CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static(
            "application/x-www-form-urlencoded",
        ));
    let answer = async {
        let response = state
            .http
            .post(format!("{}{path}", state.moto_endpoint))
            .header(CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let mut headers = HeaderMap::new();
        for name in [CONTENT_TYPE, X_AMZN_REQUESTID] {
            if let Some(value) = response.headers().get(&name) {
                headers.insert(name, value.clone());
            }
        }
        let body = response.bytes().await?;
        Ok::<_, reqwest::Error>((status, headers, body))
    }
    .await;
    match answer {
        Ok((status, headers, body)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            headers,
            body,
        )
            .into_response(),
        Err(error) => StsError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("moto at {} did not answer: {error}", state.moto_endpoint),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn like_matches_wildcards() {
        assert!(like("system:serviceaccount:apps:reader", "system:*:apps:*"));
        assert!(like("abc", "a?c"));
        assert!(like("", "*"));
        assert!(like("a*c", "a*c"));
        assert!(!like("abc", "a?"));
        assert!(!like("abd", "a*c"));
        assert!(!like("ab", "a?c"));
        assert!(like("aXbXc", "a*b*c"));
        assert!(!like("aXbX", "a*b*c"));
    }

    fn context(pairs: &[(&str, &[&str])]) -> Context {
        let mut context = Context::default();
        for (key, values) in pairs {
            context.insert(
                (*key).to_owned(),
                values.iter().map(|v| (*v).to_owned()).collect(),
            );
        }
        context
    }

    fn condition(operator: &str, key: &str, values: &[&str]) -> Condition {
        Condition {
            operator: Operator::parse(operator).unwrap(),
            key: key.to_lowercase(),
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    #[test]
    fn missing_keys_follow_the_documented_rules() {
        let empty = context(&[]);
        assert!(!condition("StringEquals", "k", &["v"]).holds(&empty));
        assert!(!condition("StringLike", "k", &["*"]).holds(&empty));
        assert!(condition("StringNotEquals", "k", &["v"]).holds(&empty));
        assert!(condition("StringEqualsIfExists", "k", &["v"]).holds(&empty));
        assert!(condition("ForAllValues:StringEquals", "k", &["v"]).holds(&empty));
        assert!(!condition("ForAnyValue:StringEquals", "k", &["v"]).holds(&empty));
        assert!(condition("Null", "k", &["true"]).holds(&empty));
        assert!(!condition("Null", "k", &["false"]).holds(&empty));
    }

    #[test]
    fn set_qualifiers_compare_every_value() {
        let ctx = context(&[("K", &["a", "b"])]);
        assert!(condition("ForAllValues:StringEquals", "k", &["a", "b", "c"]).holds(&ctx));
        assert!(!condition("ForAllValues:StringEquals", "k", &["a"]).holds(&ctx));
        assert!(condition("ForAnyValue:StringEquals", "k", &["b"]).holds(&ctx));
        assert!(!condition("ForAnyValue:StringEquals", "k", &["c"]).holds(&ctx));
        assert!(condition("StringEqualsIgnoreCase", "k", &["A"]).holds(&ctx));
        assert!(!condition("StringNotEquals", "k", &["a"]).holds(&ctx));
    }

    #[test]
    fn unsupported_policies_are_refused() {
        let statement = |extra: Value| {
            let mut statement = json!({
                "Effect": "Allow",
                "Principal": {"Federated": "accounts.google.com"},
                "Action": "sts:AssumeRoleWithWebIdentity",
            });
            statement
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            json!({"Version": "2012-10-17", "Statement": [statement]})
        };
        assert!(TrustPolicy::parse(&statement(json!({}))).is_ok());
        assert!(TrustPolicy::parse(&statement(json!({"NotAction": "sts:TagSession"}))).is_err());
        let numeric = json!({"Condition": {"NumericLessThan": {"k": "1"}}});
        assert!(TrustPolicy::parse(&statement(numeric)).is_err());
        let variable = json!({"Condition": {"StringEquals": {"k": "${aws:username}"}}});
        assert!(TrustPolicy::parse(&statement(variable)).is_err());
    }

    #[test]
    fn providers_name_their_keys_and_principals() {
        let oidc = Provider::oidc("https://idp.example.com/tenant", "http://x", ["a"]);
        assert_eq!(oidc.key_prefix(), "idp.example.com/tenant");
        assert_eq!(
            oidc.principal("arn:aws:iam::123456789012:role/r"),
            "arn:aws:iam::123456789012:oidc-provider/idp.example.com/tenant"
        );
        let google = Provider::google("http://x");
        assert!(google.issued("https://accounts.google.com"));
        assert!(google.issued("accounts.google.com"));
        assert!(!google.issued("https://idp.example.com"));
        assert_eq!(
            google.principal("arn:aws:iam::1:role/r"),
            "accounts.google.com"
        );
    }
}
