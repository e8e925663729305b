//! The decision: verify the caller's token, apply the policy table, assume the
//! role with the caller's own token. Transport-free: no tonic or AWS SDK type
//! crosses this module's boundary.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tracing::{debug, debug_span, field::Empty, instrument};

use tokenbridge_policy::{
    Caller, Decision, DurationRefusal, ExpandedSession, PolicySnapshot, Refusal,
    rules::{self, MAX_DURATION_SECONDS, MIN_DURATION_SECONDS},
};

use futures_util::future::BoxFuture;
use tokenbridge_proto::Secret;

use crate::{
    aws::cache::{CacheKey, CredentialCache},
    aws::sts::{AssumeRoleRequest, Credentials, WebIdentity, session_name},
    error::Error,
    google::jwt::{Claims, VerifiedToken, Verifier, VerifyError},
    issuer::Issuer,
    observability::audit::Facts,
    transport::limits::RateLimits,
};

/// The caller as the policy sees it: `sub`, email, and the GCE claims of a
/// `format=full` token (which binding conditions test).
pub fn caller_of(claims: &Claims) -> Caller {
    Caller {
        sub: claims.sub.clone(),
        email: claims.email.clone(),
        email_verified: claims.email_verified,
        compute_engine: claims.gce.as_deref().cloned(),
    }
}

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

/// The exchange service's core.
pub struct Exchange {
    verifier: Arc<dyn VerifyToken>,
    policy: ArcSwap<PolicySnapshot>,
    revision: tokio::sync::watch::Sender<u64>,
    credentials: CredentialCache,
    rate_limits: Option<Arc<RateLimits>>,
    issuer: Option<Arc<Issuer>>,
}

impl Exchange {
    /// Wires the three steps together; STS is reached through `credentials`.
    pub fn new(
        verifier: Arc<dyn VerifyToken>,
        policy: PolicySnapshot,
        credentials: CredentialCache,
    ) -> Self {
        credentials.advance_revocations(policy.revocations().clone());
        Self {
            verifier,
            revision: tokio::sync::watch::Sender::new(policy.revision),
            policy: ArcSwap::from_pointee(policy),
            credentials,
            rate_limits: None,
            issuer: None,
        }
    }

    /// Signs the tokens STS gets for issuer-mode grants with `issuer`.
    pub fn with_issuer(mut self, issuer: Arc<Issuer>) -> Self {
        self.issuer = Some(issuer);
        self
    }

    /// The issuer, if `[issuer]` is configured.
    pub fn issuer(&self) -> Option<&Arc<Issuer>> {
        self.issuer.as_ref()
    }

    /// Applies the per-subject rate limit of `rate_limits` to verified callers.
    pub fn with_rate_limits(mut self, rate_limits: Arc<RateLimits>) -> Self {
        self.rate_limits = Some(rate_limits);
        self
    }

    /// Replaces the policy table; the next request is decided by the new one
    /// (whatever is cached: the decision precedes the credentials cache).
    /// Its revocations go to the credentials cache if newer than those in
    /// force (a policy file carries none, and keeps those revoked in memory).
    pub fn set_policy(&self, policy: PolicySnapshot) {
        self.credentials
            .advance_revocations(policy.revocations().clone());
        let revision = policy.revision;
        self.policy.store(Arc::new(policy));
        self.revision.send_replace(revision);
    }

    /// Puts `policy` in force only if it is newer (a higher store revision)
    /// than the one in force, atomically: two loaders racing (the store
    /// follower and an admin write) can never put an older policy back.
    /// Returns whether it did. The snapshot's revocations are put in force
    /// in the credentials cache first (under the same rule), so whoever
    /// waits on [`policy_revisions`](Self::policy_revisions) finds them
    /// honoured.
    pub fn advance_policy(&self, policy: PolicySnapshot) -> bool {
        self.credentials
            .advance_revocations(policy.revocations().clone());
        let revision = policy.revision;
        let new = Arc::new(policy);
        let previous = self.policy.rcu(|current| {
            if revision > current.revision {
                new.clone()
            } else {
                current.clone()
            }
        });
        let advanced = revision > previous.revision;
        if advanced {
            self.revision.send_modify(|r| *r = (*r).max(revision));
        }
        advanced
    }

    /// The store revision of the policy in force, as it changes (0 for a
    /// policy file). For tests and readiness: await a revision, no polling.
    pub fn policy_revisions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// The policy table in force.
    pub fn snapshot(&self) -> Arc<PolicySnapshot> {
        self.policy.load_full()
    }

    /// The token verifier.
    pub fn verifier(&self) -> &Arc<dyn VerifyToken> {
        &self.verifier
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
            rules::check_role_arn(&req.role_arn)
                .map_err(|why| Error::InvalidArgument(format!("role_arn: {why}")))?;
        }
        let requested = req.duration_seconds;
        if requested != 0 && !(MIN_DURATION_SECONDS..=MAX_DURATION_SECONDS).contains(&requested) {
            return Err(Error::InvalidArgument(format!(
                "duration_seconds {requested} is outside {MIN_DURATION_SECONDS}..={MAX_DURATION_SECONDS}"
            )));
        }

        let caller = caller_of(claims);
        let decision = {
            let span = debug_span!("policy_decision", allowed = Empty, bindings = Empty).entered();
            let decision = self.policy.load().decide(&caller, &req.role_arn);
            span.record("allowed", decision.is_ok());
            if let Ok(d) = &decision {
                span.record("bindings", tracing::field::debug(&d.bindings));
            }
            decision
        };
        let decision = decision.map_err(|refusal| refused(refusal, &caller, &req.role_arn))?;
        tracing::Span::current().record("role_arn", decision.role_arn.as_str());
        facts.role_arn = Some(decision.role_arn.clone());

        // One whole grant: the least scoped that allows the duration; scope
        // and duration never come from different bindings.
        let (decision, duration) = match requested {
            0 => {
                let d = decision.default_duration_seconds;
                (decision, d)
            }
            d => match decision.for_duration(d) {
                Ok(grant) => (decision.with_grant(grant), d),
                Err(DurationRefusal::TooLong { max }) => {
                    let role = decision.role_arn.clone();
                    facts.decision = Some(decision);
                    return Err(Error::InvalidArgument(format!(
                        "duration_seconds {d} is above the maximum of {max} seconds that the policy allows for role {role}"
                    )));
                }
                Err(DurationRefusal::Conflicting { bindings }) => {
                    facts.decision = Some(decision);
                    return Err(refused(
                        Refusal::ConflictingScopes { bindings },
                        &caller,
                        &req.role_arn,
                    ));
                }
            },
        };
        let decision = &*facts.decision.insert(decision);

        facts.duration_seconds = Some(duration);
        let role_session_name = session_name(&claims.sub);
        facts.role_session_name = Some(role_session_name.clone());
        let (web_identity_token, session) = self.web_identity(decision, &caller, token)?;
        let key = CacheKey {
            subject: claims.sub.clone(),
            role_arn: decision.role_arn.clone(),
            duration_seconds: duration,
            scope: decision.scope.clone(),
            session,
        };
        let request = AssumeRoleRequest {
            role_arn: decision.role_arn.clone(),
            session_name: role_session_name.clone(),
            duration_seconds: duration,
            web_identity_token,
            scope: decision.scope.clone(),
        };
        let credentials = self.credentials.get(key, request).await?;
        // Per-exchange records belong to the audit log; at fleet rates an
        // info line per call would cost more than the exchange itself.
        debug!(
            sub = %claims.sub,
            role_arn = %decision.role_arn,
            bindings = ?decision.bindings,
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

impl Exchange {
    /// What STS gets for `decision`: the caller's own token (pass-through),
    /// or a token signed when STS is called (issuer mode), with the session
    /// tags and source identity expanded from the caller. `None` in the
    /// second place means pass-through; the cache keys on it.
    fn web_identity(
        &self,
        decision: &Decision,
        caller: &Caller,
        token: Secret<String>,
    ) -> Result<(WebIdentity, Option<ExpandedSession>), Error> {
        let issuer_mode = decision
            .session
            .issuer
            .unwrap_or_else(|| self.issuer.as_ref().is_some_and(|i| i.config().default));
        if !issuer_mode {
            if decision.session.needs_issuer() {
                return Err(Error::IssuerMode(format!(
                    "binding {} sends session tags or a source identity, which need issuer mode, \
                     but issuer mode is off for it; the platform team must set `issuer = true`",
                    decision.session_binding
                )));
            }
            return Ok((WebIdentity::Caller(token), None));
        }
        let Some(issuer) = &self.issuer else {
            return Err(Error::IssuerMode(format!(
                "binding {} needs issuer mode, but this server has no [issuer] configured; \
                 it does not fall back to the caller's own token",
                decision.session_binding
            )));
        };
        let session = decision
            .session
            .expand(caller, &decision.session_binding)
            .map_err(|e| Error::IssuerMode(format!("binding {}: {e}", decision.session_binding)))?;
        let minter = issuer.token_for(&caller.sub, caller.verified_email(), session.clone());
        Ok((WebIdentity::Issued(minter), Some(session)))
    }
}

/// The status a refusal gets, with a message that names the service account
/// and the role but never the token.
fn refused(refusal: Refusal, caller: &Caller, role_arn: &str) -> Error {
    let who = caller.name();
    match refusal {
        Refusal::ServiceAccountDenied => Error::PermissionDenied(format!(
            "service account {who} is on the deny list; ask the platform team"
        )),
        Refusal::NoRoles => Error::PermissionDenied(format!(
            "no binding grants any role to service account {who}"
        )),
        Refusal::RoleNotGranted => Error::PermissionDenied(format!(
            "no binding grants role {role_arn} to service account {who}"
        )),
        Refusal::ConditionsNotMet { bindings } => Error::PermissionDenied(format!(
            "service account {who} does not meet the conditions of the bindings that grant {} ({}): \
             they require a format=full token from a matching GCE VM",
            if role_arn.is_empty() {
                "its role"
            } else {
                role_arn
            },
            bindings.into_iter().collect::<Vec<_>>().join(", ")
        )),
        Refusal::ConflictingScopes { bindings } => Error::PermissionDenied(format!(
            "bindings {} grant role {role_arn} to service account {who} with different session \
             policies, and tokenbridge cannot combine them; the platform team must reconcile them",
            bindings.into_iter().collect::<Vec<_>>().join(", ")
        )),
        Refusal::Ambiguous(roles) => Error::InvalidArgument(format!(
            "role_arn is empty but service account {who} may assume {} roles ({}); name one",
            roles.len(),
            roles.join(", ")
        )),
    }
}
