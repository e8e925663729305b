//! What the console shows and changes, as a trait the server implements over
//! its in-process `PolicyAdmin` service, its audit ring and its metrics.

use std::time::SystemTime;

use futures_util::future::BoxFuture;
use serde::Serialize;
use tokenbridge_proto::v1 as pb;

/// The console's view of the server. Every method answers from the
/// replica the console runs in; none may return a token, a credential or
/// any other secret.
///
/// The async methods return boxed futures so that the trait can be used as
/// `Arc<dyn Backend>`; implement them with `Box::pin(async move { … })`.
pub trait Backend: Send + Sync + 'static {
    /// Every binding, in name order.
    fn list_bindings(&self) -> BoxFuture<'_, Result<Vec<pb::Binding>, BackendError>>;

    /// One binding by name; `None` if there is none.
    fn get_binding<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<pb::Binding>, BackendError>>;

    /// The IAM trust policy the roles of `binding` need, as
    /// `tokenbridge-admin trust-policy` prints it (the document depends on
    /// the binding's service accounts and on issuer mode, not on the role
    /// alone).
    fn trust_policy(&self, binding: &pb::Binding) -> Result<TrustPolicy, BackendError>;

    /// The decision the exchange would make, as the `Explain` RPC answers.
    fn explain(
        &self,
        request: pb::ExplainRequest,
    ) -> BoxFuture<'_, Result<pb::ExplainResponse, BackendError>>;

    /// The deny list.
    fn list_denied(&self) -> BoxFuture<'_, Result<Vec<pb::DeniedServiceAccount>, BackendError>>;

    /// Puts `service_account` on the deny list. `actor` is the person's
    /// verified identity (their IAP email, or `loopback` without IAP); the
    /// server records it in the store's audit trail.
    fn deny<'a>(
        &'a self,
        actor: &'a str,
        service_account: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<pb::DeniedServiceAccount, BackendError>>;

    /// Takes `service_account` off the deny list (`NotFound` if it is not
    /// on it); `actor` as for [`deny`](Self::deny).
    fn allow<'a>(
        &'a self,
        actor: &'a str,
        service_account: &'a str,
    ) -> BoxFuture<'a, Result<(), BackendError>>;

    /// The last exchange decisions this replica made, newest first (from an
    /// in-memory ring of audit records).
    fn recent_decisions(&self) -> Vec<Decision>;

    /// The numbers of the status page, as current as `/metrics`.
    fn status(&self) -> Status;
}

/// Why the backend could not answer. Each message is shown on the page as
/// it is, so it must be safe to show: no token, no secret, no internal
/// error chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The thing asked about does not exist (a binding, a service account
    /// that is not on the deny list). Shown as 404.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed (e.g. a service account that is not a
    /// unique ID); the person should correct it. Shown as 400.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request cannot be carried out in the current state (e.g. the
    /// policy comes from a file, not a store). Shown as 409.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The store or another dependency is unreachable; retrying later may
    /// help. Shown as 503.
    #[error("{0}")]
    Unavailable(String),
}

/// The trust policy a binding's roles need.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TrustPolicy {
    /// The roles the document is for.
    pub role_arns: Vec<String>,
    /// The trust policy document, pretty-printed JSON.
    pub document: String,
    /// What the person should know about it, e.g. service accounts named by
    /// email that IAM needs as unique IDs.
    pub warnings: Vec<String>,
}

/// How an exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Credentials were issued.
    Issued,
    /// Refused: the token, the policy, the deny list or STS said no.
    Refused,
    /// Failed: an upstream or the server could not decide; a retry may
    /// succeed.
    Failed,
}

impl Outcome {
    /// `issued`, `refused` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Issued => "issued",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }

    /// The outcome named `name` (as [`as_str`](Self::as_str) spells it).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "issued" => Some(Outcome::Issued),
            "refused" => Some(Outcome::Refused),
            "failed" => Some(Outcome::Failed),
            _ => None,
        }
    }
}

/// One exchange decision, from the audit record (no secrets: no token, no
/// credentials).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// When it was decided.
    pub time: SystemTime,
    /// How it ended.
    pub outcome: Outcome,
    /// The gRPC status code's name (`OK`, `PERMISSION_DENIED`, …).
    pub code: String,
    /// The caller's service account email, if the token carried one.
    pub service_account: String,
    /// The caller's unique ID (the token's `sub`), if the token was
    /// verified far enough to know it.
    pub sub: String,
    /// The role: granted, or requested if none was granted.
    pub role_arn: String,
    /// The status message (never a secret).
    pub reason: String,
    /// The request's identifier (trace ID or STS request ID), empty if none.
    pub request_id: String,
}

/// Exchange decisions in one minute, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MinuteBucket {
    /// The minute's start, seconds since the Unix epoch.
    pub minute_start_unix: u64,
    /// Credentials issued.
    pub issued: u64,
    /// Refused.
    pub refused: u64,
    /// Failed.
    pub failed: u64,
}

/// The numbers of the status page.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Status {
    /// Time since Google's signing keys were fetched; `None` before the
    /// first fetch.
    pub jwks_age_seconds: Option<u64>,
    /// How many of Google's signing keys are held.
    pub jwks_keys: u64,
    /// Whether the keys are past their `max-age` (a refresh is failing).
    pub jwks_stale: bool,
    /// Credentials held in the cache.
    pub cache_entries: u64,
    /// STS calls that failed, since start.
    pub sts_errors: u64,
    /// STS calls that were throttled, since start.
    pub sts_throttles: u64,
    /// The policy store's revision; `None` when the policy comes from a
    /// file.
    pub store_revision: Option<u64>,
    /// How far this replica's policy lags behind the store; `None` when
    /// unknown or without a store.
    pub store_lag_seconds: Option<f64>,
    /// Decisions per minute by outcome, oldest first, covering about the
    /// last 30 minutes.
    pub decisions_per_minute: Vec<MinuteBucket>,
}
