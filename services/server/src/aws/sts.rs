//! AWS STS `AssumeRoleWithWebIdentity`, behind the [`AssumeRole`] trait.
//!
//! The call is unsigned (STS authenticates it by the web identity token), so
//! the service needs no AWS credentials of its own. The SDK has no timeout by
//! default; we set an operation timeout (`aws.sts_timeout_ms`, default 3 s, so
//! that a `credential_process` caller with a 5-second budget still gets an
//! answer), an attempt timeout of half of it, and at most 3 attempts with
//! backoff for throttling, 5xx and transport errors.
//!
//! Regional endpoint by default (`https://sts.REGION.amazonaws.com`, never the
//! global one). Optional fallback regions (`aws.fallback_regions`) are tried
//! in order when a region fails with an error a retry can cure (throttling,
//! 5xx, timeouts, connection failures, `IDPCommunicationError`); refusals
//! (bad token, access denied) are final. With fallbacks, each region gets at
//! most half of `sts_timeout_ms` and all of them together at most
//! `sts_timeout_ms`, so the overall deadline stays what the shim's budget
//! allows.

use std::{sync::Arc, time::Duration};

use aws_sdk_sts::{
    config::{BehaviorVersion, Region},
    error::{ProvideErrorMetadata as _, SdkError},
    operation::{RequestId as _, assume_role_with_web_identity::AssumeRoleWithWebIdentityError},
    types::PolicyDescriptorType,
};
use aws_smithy_types::{retry::RetryConfig, timeout::TimeoutConfig};
use tracing::{field::Empty, info, warn};

use tokenbridge_policy::{SessionScope, rules::shorten};

use futures_util::future::BoxFuture;
use tokenbridge_proto::Secret;

use super::AwsConfig;
use crate::observability::metrics::Metrics;

/// Signs the token for one STS call in issuer mode, when STS is called.
pub trait MintToken: Send + Sync {
    /// A fresh token.
    fn mint(&self) -> Result<Secret<String>, StsError>;
}

/// The web identity token of an `AssumeRoleWithWebIdentity` call.
#[derive(Clone)]
pub enum WebIdentity {
    /// The caller's own Google ID token (pass-through mode).
    Caller(Secret<String>),
    /// A token tokenbridge signs when STS is called (issuer mode).
    Issued(Arc<dyn MintToken>),
}

impl WebIdentity {
    /// The token to send now.
    pub fn token(&self) -> Result<Secret<String>, StsError> {
        match self {
            WebIdentity::Caller(token) => Ok(token.clone()),
            WebIdentity::Issued(minter) => minter.mint(),
        }
    }
}

impl std::fmt::Debug for WebIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WebIdentity::Caller(_) => f.write_str("Caller(** redacted **)"),
            WebIdentity::Issued(_) => f.write_str("Issued"),
        }
    }
}

impl From<Secret<String>> for WebIdentity {
    fn from(token: Secret<String>) -> Self {
        WebIdentity::Caller(token)
    }
}

/// What is asked of STS.
#[derive(Debug, Clone)]
pub struct AssumeRoleRequest {
    /// The role to assume.
    pub role_arn: String,
    /// The session name (already valid for STS).
    pub session_name: String,
    /// Requested lifetime of the credentials.
    pub duration_seconds: u32,
    /// The token STS gets: the caller's own Google ID token, or one
    /// tokenbridge signs (issuer mode).
    pub web_identity_token: WebIdentity,
    /// Session policies (`Policy`, `PolicyArns`) scoping the role down.
    pub scope: SessionScope,
}

/// Temporary credentials from STS.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Access key ID (not secret; appears in CloudTrail).
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: Secret<String>,
    /// Session token.
    pub session_token: Secret<String>,
    /// When the credentials expire.
    pub expiration: std::time::SystemTime,
    /// `AssumedRoleUser.Arn`.
    pub assumed_role_arn: String,
    /// STS request ID, for the audit trail.
    pub request_id: Option<String>,
}

/// Why STS gave no credentials. Messages come from STS, shortened, with the
/// token removed should STS ever echo it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StsError {
    /// `InvalidIdentityToken`: STS did not accept the token. Not retryable.
    #[error("STS rejected the identity token: {0}")]
    InvalidIdentityToken(String),
    /// `ExpiredTokenException`: the token expired on its way. Get a new token.
    #[error("STS says the identity token expired: {0}")]
    ExpiredToken(String),
    /// `AccessDenied`: usually the role's trust policy. Not retryable.
    #[error("STS denied access to the role: {0}")]
    AccessDenied(String),
    /// `IDPRejectedClaim`: the trust policy's conditions did not match.
    #[error("STS rejected a claim of the token: {0}")]
    IdpRejectedClaim(String),
    /// `IDPCommunicationError`: STS could not reach Google. Retry later.
    #[error("STS could not reach the identity provider: {0}")]
    IdpCommunication(String),
    /// STS throttled us. Retry later.
    #[error("STS is throttling requests: {0}")]
    Throttled(String),
    /// STS failed (5xx, timeout, connection, unreadable answer). Retry later.
    #[error("STS is unavailable: {0}")]
    Unavailable(String),
    /// STS refused the request for another reason (its error code and
    /// message say which); retrying the same request will not help.
    #[error("STS refused the request: {code}: {message}")]
    Refused {
        /// The STS error code.
        code: String,
        /// The STS error message.
        message: String,
    },
    /// Not sent: this identity has used its budget of STS calls for this
    /// role (`cache.sts_calls_per_identity_per_minute`), which keeps one
    /// caller from making STS throttle the whole account. Retry after the
    /// delay.
    #[error("too many STS calls for this service account and role; retry in {} ms", .0.as_millis())]
    Budget(Duration),
}

/// Assumes AWS roles with a web identity token.
pub trait AssumeRole: Send + Sync {
    /// Calls `AssumeRoleWithWebIdentity`.
    fn assume_role(&self, req: AssumeRoleRequest) -> BoxFuture<'_, Result<Credentials, StsError>>;
}

impl StsError {
    /// Whether another attempt (later, or in another region) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            StsError::IdpCommunication(_) | StsError::Throttled(_) | StsError::Unavailable(_) => {
                true
            }
            StsError::InvalidIdentityToken(_)
            | StsError::ExpiredToken(_)
            | StsError::AccessDenied(_)
            | StsError::IdpRejectedClaim(_)
            | StsError::Refused { .. }
            | StsError::Budget(_) => false,
        }
    }

    /// The `outcome` label of STS metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            StsError::Throttled(_) => "throttled",
            StsError::Unavailable(_) => "unavailable",
            StsError::IdpCommunication(_) => "idp_unreachable",
            StsError::InvalidIdentityToken(_)
            | StsError::ExpiredToken(_)
            | StsError::AccessDenied(_)
            | StsError::IdpRejectedClaim(_)
            | StsError::Refused { .. } => "rejected",
            StsError::Budget(_) => "budget",
        }
    }
}

/// The real STS, through `aws-sdk-sts`: the primary region, then the
/// fallback regions in order.
#[derive(Debug, Clone)]
pub struct Sts {
    regions: Vec<(String, aws_sdk_sts::Client)>,
    overall: Duration,
    metrics: Arc<Metrics>,
}

fn client(region: &str, endpoint: Option<&str>, timeout: Duration) -> aws_sdk_sts::Client {
    let timeouts = TimeoutConfig::builder()
        .operation_timeout(timeout)
        .operation_attempt_timeout(timeout / 2)
        .connect_timeout(timeout.min(Duration::from_secs(1)))
        .build();
    let retries = RetryConfig::standard()
        .with_max_attempts(3)
        .with_initial_backoff(Duration::from_millis(50))
        .with_max_backoff(Duration::from_millis(500));
    let mut builder = aws_sdk_sts::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .timeout_config(timeouts)
        .retry_config(retries);
    if let Some(endpoint) = endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    aws_sdk_sts::Client::from_conf(builder.build())
}

impl Sts {
    /// Clients for the configured regions and endpoints, with no credentials.
    pub fn new(aws: &AwsConfig) -> Self {
        let per_region = if aws.fallback_regions.is_empty() {
            aws.sts_timeout
        } else {
            aws.sts_timeout / 2
        };
        let mut regions = vec![(
            aws.region.clone(),
            client(&aws.region, aws.sts_endpoint.as_deref(), per_region),
        )];
        for f in &aws.fallback_regions {
            regions.push((
                f.region.clone(),
                client(&f.region, f.sts_endpoint.as_deref(), per_region),
            ));
        }
        Self {
            regions,
            overall: aws.sts_timeout,
            metrics: Metrics::disabled(),
        }
    }

    /// Counts calls, throttles and their latency in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    #[tracing::instrument(
        name = "sts_assume_role",
        level = "debug",
        skip_all,
        fields(role_arn = %req.role_arn, role_session_name = %req.session_name, region = Empty, outcome = Empty, sts_request_id = Empty)
    )]
    async fn call(&self, req: AssumeRoleRequest) -> Result<Credentials, StsError> {
        let deadline = tokio::time::Instant::now() + self.overall;
        let mut last = StsError::Unavailable("no STS region configured".into());
        let span = tracing::Span::current();
        for (i, (region, client)) in self.regions.iter().enumerate() {
            let started = tokio::time::Instant::now();
            let result = tokio::time::timeout_at(deadline, Self::call_region(client, &req)).await;
            let outcome = match &result {
                Ok(Ok(_)) => "ok",
                Ok(Err(e)) => e.outcome(),
                Err(_) => "timeout",
            };
            self.metrics.sts_request(region, outcome, started.elapsed());
            span.record("region", region.as_str());
            span.record("outcome", outcome);
            match result {
                Ok(Ok(credentials)) => {
                    if let Some(id) = &credentials.request_id {
                        span.record("sts_request_id", id.as_str());
                    }
                    if i > 0 {
                        info!(region = %region, "STS answered from a fallback region");
                    }
                    return Ok(credentials);
                }
                Ok(Err(e)) if e.is_retryable() => {
                    if i + 1 < self.regions.len() {
                        warn!(region = %region, error = %e, "STS failed; trying the next region");
                    }
                    last = e;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(StsError::Unavailable("timed out".into())),
            }
        }
        Err(last)
    }

    async fn call_region(
        client: &aws_sdk_sts::Client,
        req: &AssumeRoleRequest,
    ) -> Result<Credentials, StsError> {
        let token = req.web_identity_token.token()?;
        let token = token.expose();
        let out = client
            .assume_role_with_web_identity()
            .role_arn(&req.role_arn)
            .role_session_name(&req.session_name)
            .duration_seconds(i32::try_from(req.duration_seconds).unwrap_or(i32::MAX))
            .web_identity_token(token)
            .set_policy(req.scope.session_policy.clone())
            .set_policy_arns((!req.scope.managed_policy_arns.is_empty()).then(|| {
                req.scope
                    .managed_policy_arns
                    .iter()
                    .map(|arn| PolicyDescriptorType::builder().arn(arn).build())
                    .collect()
            }))
            .send()
            .await
            .map_err(|e| map_sdk_error(e, token))?;
        let request_id = out.request_id().map(str::to_string);
        let (Some(creds), Some(user)) = (out.credentials(), out.assumed_role_user()) else {
            return Err(StsError::Unavailable(
                "the response has no credentials".into(),
            ));
        };
        let expiration = std::time::SystemTime::try_from(*creds.expiration())
            .map_err(|_| StsError::Unavailable("the response has an unusable expiration".into()))?;
        Ok(Credentials {
            access_key_id: creds.access_key_id().to_string(),
            secret_access_key: Secret::new(creds.secret_access_key().to_string()),
            session_token: Secret::new(creds.session_token().to_string()),
            expiration,
            assumed_role_arn: user.arn().to_string(),
            request_id,
        })
    }
}

impl AssumeRole for Sts {
    fn assume_role(&self, req: AssumeRoleRequest) -> BoxFuture<'_, Result<Credentials, StsError>> {
        Box::pin(self.call(req))
    }
}

fn map_sdk_error(
    err: SdkError<AssumeRoleWithWebIdentityError, aws_smithy_runtime_api::http::Response>,
    token: &str,
) -> StsError {
    let clean = |m: Option<&str>| scrub(m.unwrap_or("no message"), token);
    match err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let e = ctx.into_err();
            let message = clean(e.message());
            match &e {
                AssumeRoleWithWebIdentityError::InvalidIdentityTokenException(_) => {
                    StsError::InvalidIdentityToken(message)
                }
                AssumeRoleWithWebIdentityError::ExpiredTokenException(_) => {
                    StsError::ExpiredToken(message)
                }
                AssumeRoleWithWebIdentityError::IdpRejectedClaimException(_) => {
                    StsError::IdpRejectedClaim(message)
                }
                AssumeRoleWithWebIdentityError::IdpCommunicationErrorException(_) => {
                    StsError::IdpCommunication(message)
                }
                AssumeRoleWithWebIdentityError::RegionDisabledException(_) => {
                    StsError::Unavailable(message)
                }
                other => match other.code() {
                    Some("AccessDenied") => StsError::AccessDenied(message),
                    Some("Throttling" | "ThrottlingException" | "RequestLimitExceeded") => {
                        StsError::Throttled(message)
                    }
                    _ if status >= 500 => {
                        StsError::Unavailable(format!("HTTP {status}: {message}"))
                    }
                    // No error code at all: not an STS error document.
                    None => StsError::Unavailable(format!("unreadable response (HTTP {status})")),
                    Some(code) => StsError::Refused {
                        code: scrub(code, token),
                        message,
                    },
                },
            }
        }
        SdkError::TimeoutError(_) => StsError::Unavailable("timed out".into()),
        SdkError::DispatchFailure(f) => StsError::Unavailable(if f.is_timeout() {
            "timed out".into()
        } else {
            "could not connect".into()
        }),
        SdkError::ResponseError(_) => {
            StsError::Unavailable("the response could not be read".into())
        }
        SdkError::ConstructionFailure(_) => {
            StsError::Unavailable("the request could not be built".into())
        }
        _ => StsError::Unavailable("unexpected SDK error".into()),
    }
}

/// An upstream message made safe to pass on: the token removed, shortened.
fn scrub(message: &str, token: &str) -> String {
    let without = if token.is_empty() {
        message.to_string()
    } else {
        message.replace(token, "<token>")
    };
    shorten(&without)
}

/// The token's `sub` made valid for STS's `RoleSessionName`: 2 to 64
/// characters of `[A-Za-z0-9_+=,.@-]`. Other characters become `-`; a
/// one-character name is padded with `-`. Google's `sub` (21 digits) passes
/// unchanged, so CloudTrail shows it as is.
pub fn session_name(sub: &str) -> String {
    let mut name: String = sub
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    while name.len() < 2 {
        name.push('-');
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_follow_sts_rules() {
        assert_eq!(
            session_name("112233445566778899001"),
            "112233445566778899001"
        );
        assert_eq!(session_name("a"), "a-");
        assert_eq!(session_name(""), "--");
        assert_eq!(session_name("a b/c:d"), "a-b-c-d");
        assert_eq!(session_name("é"), "--");
        assert_eq!(session_name(&"x".repeat(100)).len(), 64);
    }

    #[tokio::test]
    async fn the_default_endpoint_is_regional_even_in_us_east_1() {
        use aws_sdk_sts::config::endpoint::{DefaultResolver, Params, ResolveEndpoint as _};
        for region in ["us-east-1", "eu-west-1"] {
            // What the SDK resolves for a client built as `client()` builds
            // it: a region, no endpoint override, no global-endpoint flag.
            let params = Params::builder().region(region).build().unwrap();
            let endpoint = DefaultResolver::new()
                .resolve_endpoint(&params)
                .await
                .unwrap();
            assert_eq!(
                endpoint.url(),
                format!("https://sts.{region}.amazonaws.com")
            );
        }
    }

    #[test]
    fn only_transient_failures_are_retried_elsewhere() {
        assert!(StsError::Throttled("x".into()).is_retryable());
        assert!(StsError::Unavailable("x".into()).is_retryable());
        assert!(StsError::IdpCommunication("x".into()).is_retryable());
        assert!(!StsError::AccessDenied("x".into()).is_retryable());
        assert!(!StsError::InvalidIdentityToken("x".into()).is_retryable());
        assert!(
            !StsError::Refused {
                code: "ValidationError".into(),
                message: "x".into()
            }
            .is_retryable()
        );
    }

    #[test]
    fn scrub_removes_the_token() {
        assert_eq!(
            scrub("bad token abc.def.ghi here", "abc.def.ghi"),
            "bad token <token> here"
        );
    }
}
