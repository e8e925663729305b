//! The decision: verify the caller's token, apply the policy table, assume the
//! role with the caller's own token. Transport-free: no tonic or AWS SDK type
//! crosses this module's boundary.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tracing::{debug, debug_span, field::Empty, instrument};

use crate::{
    cache::{CacheKey, CredentialCache},
    error::Error,
    jwt::{Claims, VerifiedToken, Verifier, VerifyError},
    limits::RateLimits,
    policy::{self, Denied, Grant, MAX_DURATION_SECONDS, MIN_DURATION_SECONDS, Policy, Principal},
    secret::Secret,
    sts::{AssumeRoleRequest, BoxFuture, Credentials, session_name},
};

/// Verifies ID tokens.
pub trait VerifyToken: Send + Sync {
    /// Verifies `token` and returns its claims.
    fn verify(&self, token: Secret<String>) -> BoxFuture<'_, Result<VerifiedToken, VerifyError>>;
}

impl VerifyToken for Verifier {
    fn verify(&self, token: Secret<String>) -> BoxFuture<'_, Result<VerifiedToken, VerifyError>> {
        Box::pin(Verifier::verify(self, token))
    }
}

/// What the caller asks for.
#[derive(Debug, Clone, Default)]
pub struct ExchangeRequest {
    /// The role to assume; empty for the caller's only role.
    pub role_arn: String,
    /// Requested lifetime; 0 for the binding's default.
    pub duration_seconds: u32,
}

/// Credentials handed out, with what they were issued for.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The temporary credentials.
    pub credentials: Credentials,
    /// The session name given to STS.
    pub role_session_name: String,
}

/// What an exchange established on its way, as far as it got: for the
/// audit log. Filled in by [`Exchange::exchange_recorded`].
#[derive(Debug, Default)]
pub struct Facts {
    /// The verified token's claims (none if it was not verified).
    pub claims: Option<Claims>,
    /// The role the policy allows the caller.
    pub role_arn: Option<String>,
    /// The bindings that grant it, and the durations they allow.
    pub grant: Option<Arc<Grant>>,
    /// The credentials' lifetime asked of STS.
    pub duration_seconds: Option<u32>,
    /// The session name given to STS.
    pub role_session_name: Option<String>,
}

/// The exchange service's core.
pub struct Exchange {
    verifier: Arc<dyn VerifyToken>,
    policy: ArcSwap<Policy>,
    credentials: CredentialCache,
    rate_limits: Option<Arc<RateLimits>>,
}

impl Exchange {
    /// Wires the three steps together; STS is reached through `credentials`.
    pub fn new(
        verifier: Arc<dyn VerifyToken>,
        policy: Policy,
        credentials: CredentialCache,
    ) -> Self {
        Self {
            verifier,
            policy: ArcSwap::from_pointee(policy),
            credentials,
            rate_limits: None,
        }
    }

    /// Applies the per-subject rate limit of `rate_limits` to verified callers.
    pub fn with_rate_limits(mut self, rate_limits: Arc<RateLimits>) -> Self {
        self.rate_limits = Some(rate_limits);
        self
    }

    /// Replaces the policy table; the next request is decided by the new one.
    pub fn set_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    /// The credentials cache.
    pub fn cache(&self) -> &CredentialCache {
        &self.credentials
    }

    /// Exchanges `token` for credentials as `req` asks, if the policy allows.
    pub async fn exchange(
        &self,
        token: Secret<String>,
        req: ExchangeRequest,
    ) -> Result<Issued, Error> {
        self.exchange_recorded(token, &req, &mut Facts::default())
            .await
    }

    /// [`exchange`](Self::exchange), noting in `facts` what it established
    /// on its way (for the audit log), as far as it got.
    #[instrument(name = "exchange", level = "debug", skip_all, fields(sub, role_arn))]
    pub async fn exchange_recorded(
        &self,
        token: Secret<String>,
        req: &ExchangeRequest,
        facts: &mut Facts,
    ) -> Result<Issued, Error> {
        let VerifiedToken { token, claims } = self.verifier.verify(token).await?;
        let claims = &*facts.claims.insert(claims);
        tracing::Span::current().record("sub", claims.sub.as_str());
        if let Some(limits) = &self.rate_limits {
            limits.check_subject(&claims.sub)?;
        }

        if !req.role_arn.is_empty() {
            policy::check_role_arn(&req.role_arn)
                .map_err(|why| Error::InvalidArgument(format!("role_arn: {why}")))?;
        }
        let requested = req.duration_seconds;
        if requested != 0 && !(MIN_DURATION_SECONDS..=MAX_DURATION_SECONDS).contains(&requested) {
            return Err(Error::InvalidArgument(format!(
                "duration_seconds {requested} is outside {MIN_DURATION_SECONDS}..={MAX_DURATION_SECONDS}"
            )));
        }

        let who = Principal {
            sub: &claims.sub,
            verified_email: claims.verified_email(),
        };
        let allowed = {
            let span = debug_span!("policy_decision", allowed = Empty, bindings = Empty).entered();
            let allowed = self.policy.load().decide(who, &req.role_arn);
            span.record("allowed", allowed.is_ok());
            if let Ok(a) = &allowed {
                span.record("bindings", tracing::field::debug(&a.grant.bindings));
            }
            allowed
        };
        let allowed = allowed.map_err(|denied| match denied {
            Denied::NoRoles => Error::PermissionDenied(format!(
                "no binding grants any role to service account {}",
                who.describe()
            )),
            Denied::RoleNotGranted => Error::PermissionDenied(format!(
                "no binding grants role {} to service account {}",
                req.role_arn,
                who.describe()
            )),
            Denied::Ambiguous(roles) => Error::InvalidArgument(format!(
                "role_arn is empty but service account {} may assume {} roles ({}); name one",
                who.describe(),
                roles.len(),
                roles.join(", ")
            )),
        })?;
        tracing::Span::current().record("role_arn", allowed.role_arn.as_str());
        facts.role_arn = Some(allowed.role_arn.clone());
        facts.grant = Some(allowed.grant.clone());

        let grant = &allowed.grant;
        let duration = match requested {
            0 => grant.default_duration_seconds,
            d if d > grant.max_duration_seconds => {
                return Err(Error::InvalidArgument(format!(
                    "duration_seconds {d} is above the maximum of {} seconds that the policy allows for role {}",
                    grant.max_duration_seconds, allowed.role_arn
                )));
            }
            d => d,
        };

        facts.duration_seconds = Some(duration);
        let role_session_name = session_name(&claims.sub);
        facts.role_session_name = Some(role_session_name.clone());
        let key = CacheKey {
            subject: claims.sub.clone(),
            role_arn: allowed.role_arn.clone(),
            duration_seconds: duration,
        };
        let request = AssumeRoleRequest {
            role_arn: allowed.role_arn.clone(),
            session_name: role_session_name.clone(),
            duration_seconds: duration,
            web_identity_token: token,
        };
        let credentials = self.credentials.get(key, request).await?;
        // Per-exchange records belong to the audit log; at fleet rates an
        // info line per call would cost more than the exchange itself.
        debug!(
            sub = %claims.sub,
            role_arn = %allowed.role_arn,
            bindings = ?grant.bindings,
            duration_seconds = duration,
            access_key_id = %credentials.access_key_id,
            sts_request_id = credentials.request_id.as_deref().unwrap_or("-"),
            "credentials issued"
        );
        Ok(Issued {
            credentials,
            role_session_name,
        })
    }
}
