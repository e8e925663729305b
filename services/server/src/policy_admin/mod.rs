//! `tokenbridge.v1.PolicyAdmin`: the platform team's API for the policy
//! table, served on its own listener (`[policy_admin] listen`).
//!
//! * **Who may call.** Every call carries a Google ID token
//!   (`authorization: Bearer <token>`), verified exactly like an exchange
//!   caller's (same keys, issuers, clock rules) but for the admin audiences
//!   (`policy_admin.audiences`, which must differ from the exchange's, so a
//!   workload's exchange token is never an admin token). The caller's unique
//!   ID or verified email must be in `policy_admin.principals`. No or a bad
//!   token: UNAUTHENTICATED; a principal not listed: PERMISSION_DENIED.
//! * **Where bindings live.** With `[store]` the service reads and writes the
//!   SQL store; every write is one transaction with its audit row (who,
//!   when, what, before and after: `ListAudit`). With the read-only
//!   `[policy] file`, it answers reads and `Explain` from the file as loaded
//!   and refuses writes with FAILED_PRECONDITION (change the file, reload).
//! * **Revoking cached credentials** (`RevokeCachedCredentials`, [`revoke`]):
//!   a store write every replica honours, or with a policy file a
//!   revocation kept in this replica's memory.
//! * **What every call leaves.** One `tokenbridge.admin` line in the audit
//!   log (method, actor, target, outcome), refusals included.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tokenbridge_proto::status::code_name;
use tokenbridge_proto::v1::{self as pb, policy_admin_server::PolicyAdmin};
use tonic::{Code, Request, Response, Status};
use tracing::warn;

use tokenbridge_policy::{Binding, PolicySnapshot, rules::check_role_arn, validate_set};

use crate::{
    error::Error,
    exchange::{Exchange, VerifyToken},
    observability::audit::{AdminEntry, AuditLog},
    store::{AuditQuery, PolicyStore, Store},
    transport::{
        guard::{self, CallDeadline},
        limits::{LimitsConfig, Rate, RateLimits},
    },
};

mod access;
pub mod edge;
mod mapping;
mod revoke;
mod source;

pub(crate) use source::explain;

pub use access::AdminAccess;

pub use mapping::store_status;
use mapping::{
    audit_to_pb, page_after_name, page_size, pb_to_caller, require_etag, required_binding,
    stored_to_pb,
};

/// `[policy_admin]`: the `PolicyAdmin` gRPC listener and who may call it.
#[derive(Debug, Clone)]
pub struct PolicyAdminConfig {
    /// Address of its listener (plaintext gRPC; bind it to loopback or a
    /// private address, or put a TLS-terminating proxy in front).
    pub listen: SocketAddr,
    /// Accepted `aud` values of admin tokens.
    pub audiences: Vec<String>,
    /// Unique IDs or emails allowed to call.
    pub principals: Vec<String>,
    /// Serve TLS (the `[tls]` certificate, key and client CA) instead of
    /// plaintext.
    pub tls: bool,
    /// Plaintext on a non-loopback address is acknowledged.
    pub allow_plaintext: bool,
    /// What one caller may ask of the listener.
    pub limits: PolicyAdminLimits,
}

/// The policy admin listener's own limits (see [`crate::transport::guard`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyAdminLimits {
    /// Calls in flight at most.
    pub max_concurrent_requests: usize,
    /// One call, headers to answer.
    pub request_timeout: Duration,
    /// The largest message of an authenticated caller.
    pub max_request_bytes: usize,
    /// Per peer address, before authentication; `None`: off.
    pub per_peer: Option<Rate>,
}

impl Default for PolicyAdminLimits {
    fn default() -> Self {
        Self {
            max_concurrent_requests: 32,
            request_timeout: Duration::from_secs(10),
            max_request_bytes: 4 * 1024 * 1024,
            per_peer: Rate::new(20, 40),
        }
    }
}

/// Every method, for naming a refused call without the caller's text.
const METHODS: [&str; 13] = [
    "ListBindings",
    "GetBinding",
    "CreateBinding",
    "UpdateBinding",
    "DeleteBinding",
    "ApplyBindings",
    "Explain",
    "Validate",
    "ListAudit",
    "DenyServiceAccount",
    "AllowServiceAccount",
    "ListDenied",
    "RevokeCachedCredentials",
];

/// The longest `target` an audit line carries; longer ones are cut (the
/// caller is authenticated by then, and the store refuses such names).
const MAX_AUDIT_TARGET: usize = 256;

/// The methods that change the store. (`RevokeCachedCredentials` changes
/// it too, but puts the new revision in force itself: see [`revoke`].)
const WRITES: [&str; 6] = [
    "CreateBinding",
    "UpdateBinding",
    "DeleteBinding",
    "ApplyBindings",
    "DenyServiceAccount",
    "AllowServiceAccount",
];

/// The policy admin service as its listener serves it
/// ([`PolicyAdminService::into_service`]).
pub type PolicyAdminServer = guard::Guard<
    edge::Authenticate<pb::policy_admin_server::PolicyAdminServer<PolicyAdminService>>,
>;

/// Where the bindings come from.
#[derive(Clone)]
pub enum PolicySource {
    /// The SQL store: read and write.
    Store(Store),
    /// The policy file: read only. Reads come from the exchange's snapshot.
    File(PathBuf),
}

/// The `PolicyAdmin` service.
pub struct PolicyAdminService {
    access: Arc<AdminAccess>,
    source: PolicySource,
    exchange: Arc<Exchange>,
    exchange_verifier: Arc<dyn VerifyToken>,
    audit: Option<Arc<AuditLog>>,
}

impl PolicyAdminService {
    /// `exchange_verifier` verifies the tokens `Explain` is given (the
    /// exchange's audiences); `exchange` holds the policy in force.
    pub fn new(
        access: AdminAccess,
        source: PolicySource,
        exchange: Arc<Exchange>,
        exchange_verifier: Arc<dyn VerifyToken>,
    ) -> Self {
        Self {
            access: Arc::new(access),
            source,
            exchange,
            exchange_verifier,
            audit: None,
        }
    }

    /// The service as a listener serves it: authenticated from the headers
    /// before the message is read ([`edge`]), behind the listener's guard
    /// (per-peer rate, concurrency, deadline: [`crate::transport::guard`]),
    /// with `limits.max_request_bytes` for an authenticated caller's
    /// message.
    pub fn into_service(self, limits: &PolicyAdminLimits, grace: Duration) -> PolicyAdminServer {
        let access = self.access.clone();
        let service = Arc::new(self);
        let server = pb::policy_admin_server::PolicyAdminServer::from_arc(service.clone())
            .max_decoding_message_size(limits.max_request_bytes);
        let peers = limits.per_peer.map(|rate| {
            Arc::new(RateLimits::new(&LimitsConfig {
                per_peer: Some(rate),
                per_peer_exempt_loopback: false,
                per_subject: None,
                ..LimitsConfig::default()
            }))
        });
        guard::guard(
            edge::Authenticate::new(server, access, service),
            guard::GuardSettings {
                max_concurrent: limits.max_concurrent_requests,
                deadline: limits.request_timeout,
                grace,
                max_request_bytes: limits.max_request_bytes,
                peers,
                metrics: None,
            },
        )
    }

    /// Writes one `tokenbridge.admin` line per call to `audit`.
    pub fn with_audit(mut self, audit: Arc<AuditLog>) -> Self {
        self.audit = Some(audit);
        self
    }

    fn store(&self) -> Result<&Store, Status> {
        self.source.store()
    }

    /// The policy as the store holds it now, or as the file was loaded.
    async fn snapshot(&self) -> Result<Arc<PolicySnapshot>, Status> {
        self.source.snapshot(&self.exchange).await
    }

    /// After a successful write: puts the store's policy in force on this
    /// replica before answering (see [`PolicySource::refresh`]).
    async fn refresh(&self) {
        self.source.refresh(&self.exchange).await;
    }

    /// Runs `body` for the caller [`edge::Authenticate`] authenticated
    /// from the headers, and audits the outcome.
    async fn call<T, R, F>(
        &self,
        method: &'static str,
        request: Request<T>,
        target: impl FnOnce(&T) -> String,
        body: impl FnOnce(String, T) -> F,
    ) -> Result<Response<R>, Status>
    where
        F: Future<Output = Result<R, Status>>,
    {
        let started = Instant::now();
        let peer = request.remote_addr();
        let (_, extensions, message) = request.into_parts();
        if let Some(deadline) = CallDeadline::of(&extensions) {
            deadline.started();
        }
        let mut target = target(&message);
        if target.len() > MAX_AUDIT_TARGET {
            let mut cut = MAX_AUDIT_TARGET;
            while !target.is_char_boundary(cut) {
                cut -= 1;
            }
            target.truncate(cut);
            target.push('…');
        }
        // Served only behind `edge::Authenticate` (see `into_service`);
        // without its actor the call is refused, never run.
        let actor = extensions.get::<edge::Actor>().map(|a| a.0.clone());
        let result = match &actor {
            Some(actor) => {
                let result = body(actor.clone(), message).await;
                if result.is_ok() && WRITES.contains(&method) {
                    self.refresh().await;
                }
                result
            }
            None => Err(Status::unauthenticated(
                "the call was not authenticated from its headers",
            )),
        };
        self.record(method, actor.as_deref(), &target, &result, peer, started)
            .await;
        result.map(Response::new)
    }

    async fn record<R>(
        &self,
        method: &'static str,
        actor: Option<&str>,
        target: &str,
        result: &Result<R, Status>,
        peer: Option<SocketAddr>,
        started: Instant,
    ) {
        let Some(audit) = &self.audit else { return };
        let (code, reason) = match result {
            Ok(_) => (Code::Ok, ""),
            Err(status) => (status.code(), status.message()),
        };
        let entry = AdminEntry {
            method,
            actor,
            target,
            code: code_name(code),
            reason,
            peer,
            elapsed: started.elapsed(),
        };
        if !audit.write_admin(&entry).await {
            warn!(method, "the audit log could not record an admin call");
        }
    }
}

#[tonic::async_trait]
impl PolicyAdmin for PolicyAdminService {
    async fn revoke_cached_credentials(
        &self,
        request: Request<pb::RevokeCachedCredentialsRequest>,
    ) -> Result<Response<pb::RevokeCachedCredentialsResponse>, Status> {
        self.call(
            "RevokeCachedCredentials",
            request,
            revoke::target,
            |actor, req| async move {
                revoke::revoke(&self.source, &self.exchange, &actor, req).await
            },
        )
        .await
    }

    async fn list_bindings(
        &self,
        request: Request<pb::ListBindingsRequest>,
    ) -> Result<Response<pb::ListBindingsResponse>, Status> {
        self.call(
            "ListBindings",
            request,
            |_| String::new(),
            |_, req| async move {
                let limit = page_size(req.page_size)?;
                let after = page_after_name(&req.page_token)?;
                let mut page = self
                    .source
                    .list_bindings(&self.exchange, &after, limit + 1)
                    .await?;
                let next_page_token = if page.len() > limit as usize {
                    page.truncate(limit as usize);
                    page.last().map(|b| b.name.clone()).unwrap_or_default()
                } else {
                    String::new()
                };
                Ok(pb::ListBindingsResponse {
                    bindings: page,
                    next_page_token,
                })
            },
        )
        .await
    }

    async fn get_binding(
        &self,
        request: Request<pb::GetBindingRequest>,
    ) -> Result<Response<pb::Binding>, Status> {
        self.call(
            "GetBinding",
            request,
            |r| r.name.clone(),
            |_, req| async move { self.source.get_binding(&self.exchange, &req.name).await },
        )
        .await
    }

    async fn create_binding(
        &self,
        request: Request<pb::CreateBindingRequest>,
    ) -> Result<Response<pb::Binding>, Status> {
        self.call(
            "CreateBinding",
            request,
            |r| {
                r.binding
                    .as_ref()
                    .map(|b| b.name.clone())
                    .unwrap_or_default()
            },
            |actor, req| async move {
                let store = self.store()?;
                let binding = required_binding(req.binding)?;
                store
                    .create_binding(&actor, binding)
                    .await
                    .map(stored_to_pb)
                    .map_err(store_status)
            },
        )
        .await
    }

    async fn update_binding(
        &self,
        request: Request<pb::UpdateBindingRequest>,
    ) -> Result<Response<pb::Binding>, Status> {
        self.call(
            "UpdateBinding",
            request,
            |r| {
                r.binding
                    .as_ref()
                    .map(|b| b.name.clone())
                    .unwrap_or_default()
            },
            |actor, req| async move {
                let store = self.store()?;
                let etag = req
                    .binding
                    .as_ref()
                    .map(|b| b.etag.clone())
                    .unwrap_or_default();
                let binding = required_binding(req.binding)?;
                require_etag(&binding.name, &etag)?;
                store
                    .update_binding(&actor, binding, &etag)
                    .await
                    .map(stored_to_pb)
                    .map_err(store_status)
            },
        )
        .await
    }

    async fn delete_binding(
        &self,
        request: Request<pb::DeleteBindingRequest>,
    ) -> Result<Response<pb::DeleteBindingResponse>, Status> {
        self.call(
            "DeleteBinding",
            request,
            |r| r.name.clone(),
            |actor, req| async move {
                let store = self.store()?;
                require_etag(&req.name, &req.etag)?;
                store
                    .delete_binding(&actor, &req.name, &req.etag)
                    .await
                    .map_err(store_status)?;
                Ok(pb::DeleteBindingResponse {})
            },
        )
        .await
    }

    async fn apply_bindings(
        &self,
        request: Request<pb::ApplyBindingsRequest>,
    ) -> Result<Response<pb::ApplyBindingsResponse>, Status> {
        self.call(
            "ApplyBindings",
            request,
            |_| String::new(),
            |actor, req| async move {
                let store = self.store()?;
                let bindings: Vec<Binding> = req.bindings.into_iter().map(Binding::from).collect();
                let report = store
                    .apply(&actor, bindings, req.prune, req.dry_run)
                    .await
                    .map_err(store_status)?;
                Ok(pb::ApplyBindingsResponse {
                    created: report.created,
                    updated: report.updated,
                    deleted: report.deleted,
                    unchanged: report.unchanged,
                    applied: !req.dry_run,
                })
            },
        )
        .await
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        self.call(
            "Explain",
            request,
            |r| r.role_arn.clone(),
            |_, req| async move {
                if !req.role_arn.is_empty() {
                    check_role_arn(&req.role_arn)
                        .map_err(|why| Status::invalid_argument(format!("role_arn: {why}")))?;
                }
                let caller = match (req.token.is_empty(), req.claims) {
                    (false, None) => {
                        let token = tokenbridge_proto::Secret::new(req.token);
                        let verified = self
                            .exchange_verifier
                            .verify(token)
                            .await
                            .map_err(|e| Status::from(Error::from(e)))?;
                        crate::exchange::caller_of(&verified.claims)
                    }
                    (true, Some(claims)) => pb_to_caller(claims)?,
                    _ => {
                        return Err(Status::invalid_argument(
                            "send exactly one of `token` (a Google ID token) and `claims`",
                        ));
                    }
                };
                let snapshot = self.snapshot().await?;
                Ok(source::explain(&snapshot, &caller, &req.role_arn))
            },
        )
        .await
    }

    async fn validate(
        &self,
        request: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        self.call(
            "Validate",
            request,
            |_| String::new(),
            |_, req| async move {
                let bindings: Vec<Binding> = req.bindings.into_iter().map(Binding::from).collect();
                let violations: Vec<pb::FieldViolation> = validate_set(&bindings)
                    .into_iter()
                    .map(|v| pb::FieldViolation {
                        binding: v.binding,
                        field: v.error.field,
                        description: v.error.reason,
                    })
                    .collect();
                Ok(pb::ValidateResponse {
                    valid: violations.is_empty(),
                    violations,
                })
            },
        )
        .await
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        self.call(
            "ListAudit",
            request,
            |r| r.target.clone(),
            |_, req| async move {
                let store = self.store()?;
                let limit = page_size(req.page_size)?;
                let before_id = if req.page_token.is_empty() {
                    None
                } else {
                    Some(req.page_token.parse::<u64>().map_err(|_| {
                        Status::invalid_argument("page_token is not one this service returned")
                    })?)
                };
                let mut entries = store
                    .list_audit(AuditQuery {
                        target: (!req.target.is_empty()).then_some(req.target),
                        before_id,
                        limit: limit + 1,
                    })
                    .await
                    .map_err(store_status)?;
                let next_page_token = if entries.len() > limit as usize {
                    entries.truncate(limit as usize);
                    entries.last().map(|e| e.id.to_string()).unwrap_or_default()
                } else {
                    String::new()
                };
                Ok(pb::ListAuditResponse {
                    entries: entries.into_iter().map(audit_to_pb).collect(),
                    next_page_token,
                })
            },
        )
        .await
    }

    async fn deny_service_account(
        &self,
        request: Request<pb::DenyServiceAccountRequest>,
    ) -> Result<Response<pb::DeniedServiceAccount>, Status> {
        self.call(
            "DenyServiceAccount",
            request,
            |r| r.service_account.clone(),
            |actor, req| async move {
                self.source
                    .deny(&actor, &req.service_account, &req.reason)
                    .await
            },
        )
        .await
    }

    async fn allow_service_account(
        &self,
        request: Request<pb::AllowServiceAccountRequest>,
    ) -> Result<Response<pb::AllowServiceAccountResponse>, Status> {
        self.call(
            "AllowServiceAccount",
            request,
            |r| r.service_account.clone(),
            |actor, req| async move {
                self.source.allow(&actor, &req.service_account).await?;
                Ok(pb::AllowServiceAccountResponse {})
            },
        )
        .await
    }

    async fn list_denied(
        &self,
        request: Request<pb::ListDeniedRequest>,
    ) -> Result<Response<pb::ListDeniedResponse>, Status> {
        self.call(
            "ListDenied",
            request,
            |_| String::new(),
            |_, _| async move {
                Ok(pb::ListDeniedResponse {
                    denied: self.source.list_denied().await?,
                })
            },
        )
        .await
    }
}
