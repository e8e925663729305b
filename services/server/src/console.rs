//! The web console (`[console]`, crate `tokenbridge-console`) inside the
//! server: [`ConsoleBackend`] answers its pages from this replica.
//!
//! * **Bindings** and the **deny list**: from the store, or the policy
//!   file as loaded, exactly as the `PolicyAdmin` API answers (the same
//!   [`PolicySource`] methods).
//! * **Trust policy**: `tokenbridge_policy::trust`, as
//!   `tokenbridge-admin trust-policy` prints it: pass-through mode for
//!   `google.audiences`, or issuer mode (`[issuer]` url and audience) for a
//!   binding in issuer mode.
//! * **Explain**: the `Explain` RPC's evaluation, on the store's policy as
//!   it is now (or the file's).
//! * **Deny and allow**: through the store with the person's identity as
//!   the actor (the store's audit trail), then the new policy is put in
//!   force on this replica before the page answers, and one
//!   `tokenbridge.admin` audit line is written (`ConsoleDeny`,
//!   `ConsoleAllow`), refusals included. With the policy file they are
//!   refused (FAILED_PRECONDITION: 409 page).
//! * **Recent decisions**: the audit log's ring
//!   ([`crate::observability::audit::recent`]).
//! * **Status**: the numbers `/metrics` exposes, from the same sources:
//!   Google's key set, the credentials cache, the STS request counter, the
//!   store follower ([`PolicySync`]).

use std::{sync::Arc, time::Instant};

use futures_util::future::BoxFuture;
use tokenbridge_console::{
    Backend, BackendError, Decision, MinuteBucket, Outcome, Status, TrustPolicy,
};
use tokenbridge_policy::{Binding, rules::check_role_arn, trust, wire};
use tokenbridge_proto::{status::code_name, v1 as pb};
use tonic::Code;
use tracing::warn;

use crate::{
    exchange::Exchange,
    google::jwks::Jwks,
    issuer::IssuerConfig,
    observability::{
        audit::{
            AdminEntry, AuditLog,
            recent::{self, RecentDecisions},
        },
        metrics::{Metrics, PolicyFreshness as _},
        policy_sync::PolicySync,
    },
    policy_admin::{PolicySource, explain},
    store::MAX_PAGE_SIZE,
};

/// What the console reads and changes on this replica.
pub struct ConsoleBackend {
    source: PolicySource,
    exchange: Arc<Exchange>,
    audit: Arc<AuditLog>,
    recent: Arc<RecentDecisions>,
    metrics: Arc<Metrics>,
    jwks: Arc<Jwks>,
    policy_sync: Option<Arc<PolicySync>>,
    exchange_audiences: Vec<String>,
    issuer: Option<IssuerConfig>,
}

impl std::fmt::Debug for ConsoleBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleBackend").finish_non_exhaustive()
    }
}

/// What [`ConsoleBackend::new`] is built from: the server's components.
pub struct ConsoleParts {
    /// Where bindings live.
    pub source: PolicySource,
    /// The policy in force and the credentials cache.
    pub exchange: Arc<Exchange>,
    /// For the `tokenbridge.admin` lines of deny and allow.
    pub audit: Arc<AuditLog>,
    /// The ring the audit log feeds.
    pub recent: Arc<RecentDecisions>,
    /// The registry `/metrics` reads.
    pub metrics: Arc<Metrics>,
    /// Google's keys.
    pub jwks: Arc<Jwks>,
    /// With `[store]`: how far the policy in force is behind it.
    pub policy_sync: Option<Arc<PolicySync>>,
    /// `google.audiences`: the pass-through trust policy's `oaud`.
    pub exchange_audiences: Vec<String>,
    /// `[issuer]`, if configured.
    pub issuer: Option<IssuerConfig>,
}

impl ConsoleBackend {
    /// The backend over the server's components.
    pub fn new(parts: ConsoleParts) -> Self {
        Self {
            source: parts.source,
            exchange: parts.exchange,
            audit: parts.audit,
            recent: parts.recent,
            metrics: parts.metrics,
            jwks: parts.jwks,
            policy_sync: parts.policy_sync,
            exchange_audiences: parts.exchange_audiences,
            issuer: parts.issuer,
        }
    }

    /// After a write: the policy in force here, then the audit line.
    async fn finish_write<T>(
        &self,
        method: &'static str,
        actor: &str,
        target: &str,
        started: Instant,
        result: Result<T, tonic::Status>,
    ) -> Result<T, BackendError> {
        if result.is_ok() {
            self.source.refresh(&self.exchange).await;
        }
        let (code, reason) = match &result {
            Ok(_) => (Code::Ok, ""),
            Err(status) => (status.code(), status.message()),
        };
        let entry = AdminEntry {
            method,
            actor: Some(actor),
            target,
            code: code_name(code),
            reason,
            peer: None,
            elapsed: started.elapsed(),
        };
        if !self.audit.write_admin(&entry).await {
            warn!(method, "the audit log could not record a console write");
        }
        result.map_err(backend_error)
    }
}

/// A policy admin status as the console shows it: its message (never a
/// secret; store failures are already reduced to "unavailable").
fn backend_error(status: tonic::Status) -> BackendError {
    let message = status.message().to_owned();
    match status.code() {
        Code::NotFound => BackendError::NotFound(message),
        Code::InvalidArgument | Code::OutOfRange => BackendError::InvalidArgument(message),
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => {
            BackendError::FailedPrecondition(message)
        }
        _ => BackendError::Unavailable(message),
    }
}

/// The trust policy `binding`'s roles need, as `tokenbridge-admin
/// trust-policy` prints it: issuer mode when `issuer` is configured and the
/// binding uses it (its own `issuer`, else the server's default), else
/// pass-through for `exchange_audiences`; with what the person should know.
fn trust_policy(
    binding: &pb::Binding,
    exchange_audiences: &[String],
    issuer: Option<&IssuerConfig>,
) -> Result<TrustPolicy, BackendError> {
    let b = Binding::from(binding.clone());
    let issuer = issuer.filter(|i| b.issuer.unwrap_or(i.default));
    let mut warnings = Vec::new();
    let policy = match issuer {
        Some(i) => trust::for_binding_issuer(&b, &i.url, &i.audience, &|_| None),
        None => {
            let extras = trust::bypassable(&b, false);
            if !extras.is_empty() {
                warnings.push(format!(
                    "Binding {} is in pass-through mode, so what it adds to the role ({}) \
                     applies only to calls through tokenbridge: this trust policy lets its \
                     service accounts call STS directly without it (issuer mode closes that).",
                    b.name,
                    extras.join(", ")
                ));
            }
            trust::for_binding(&b, exchange_audiences, &|_| None)
        }
    }
    .map_err(|e| BackendError::FailedPrecondition(format!("Binding {}: {e}", b.name)))?;
    if !policy.unresolved_emails.is_empty() {
        warnings.push(format!(
            "Binding {} names service accounts by email ({}); IAM trust policies need \
             their unique IDs (gcloud iam service-accounts describe EMAIL \
             --format='value(uniqueId)'): add them to the binding or the policy.",
            b.name,
            policy.unresolved_emails.join(", ")
        ));
    }
    let document = serde_json::to_string_pretty(&policy.document)
        .map_err(|e| BackendError::Unavailable(format!("trust policy: {e}")))?;
    Ok(TrustPolicy {
        role_arns: policy.role_arns,
        document,
        warnings,
    })
}

fn outcome(o: recent::Outcome) -> Outcome {
    match o {
        recent::Outcome::Issued => Outcome::Issued,
        recent::Outcome::Refused => Outcome::Refused,
        recent::Outcome::Failed => Outcome::Failed,
    }
}

impl Backend for ConsoleBackend {
    fn list_bindings(&self) -> BoxFuture<'_, Result<Vec<pb::Binding>, BackendError>> {
        Box::pin(async move {
            let mut all = Vec::new();
            loop {
                let after = all
                    .last()
                    .map(|b: &pb::Binding| b.name.clone())
                    .unwrap_or_default();
                let page = self
                    .source
                    .list_bindings(&self.exchange, &after, MAX_PAGE_SIZE)
                    .await
                    .map_err(backend_error)?;
                let full = page.len() == MAX_PAGE_SIZE as usize;
                all.extend(page);
                if !full {
                    return Ok(all);
                }
            }
        })
    }

    fn get_binding<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<pb::Binding>, BackendError>> {
        Box::pin(async move {
            match self.source.get_binding(&self.exchange, name).await {
                Ok(b) => Ok(Some(b)),
                Err(status) if status.code() == Code::NotFound => Ok(None),
                Err(status) => Err(backend_error(status)),
            }
        })
    }

    fn trust_policy(&self, binding: &pb::Binding) -> Result<TrustPolicy, BackendError> {
        trust_policy(binding, &self.exchange_audiences, self.issuer.as_ref())
    }

    fn explain(
        &self,
        request: pb::ExplainRequest,
    ) -> BoxFuture<'_, Result<pb::ExplainResponse, BackendError>> {
        Box::pin(async move {
            if !request.role_arn.is_empty() {
                check_role_arn(&request.role_arn)
                    .map_err(|why| BackendError::InvalidArgument(format!("role_arn: {why}")))?;
            }
            let Some(claims) = request.claims else {
                return Err(BackendError::InvalidArgument(
                    "the console explains claims, not tokens".to_owned(),
                ));
            };
            let caller = wire::caller_from_pb(claims).ok_or_else(|| {
                BackendError::InvalidArgument(
                    "the service account's unique ID is needed (the token's sub): give it as the \
                     service account or in the field sub (gcloud iam service-accounts describe \
                     EMAIL --format='value(uniqueId)')"
                        .to_owned(),
                )
            })?;
            let snapshot = self
                .source
                .snapshot(&self.exchange)
                .await
                .map_err(backend_error)?;
            Ok(explain(&snapshot, &caller, &request.role_arn))
        })
    }

    fn list_denied(&self) -> BoxFuture<'_, Result<Vec<pb::DeniedServiceAccount>, BackendError>> {
        Box::pin(async move { self.source.list_denied().await.map_err(backend_error) })
    }

    fn deny<'a>(
        &'a self,
        actor: &'a str,
        service_account: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<pb::DeniedServiceAccount, BackendError>> {
        Box::pin(async move {
            let started = Instant::now();
            let result = self.source.deny(actor, service_account, reason).await;
            self.finish_write("ConsoleDeny", actor, service_account, started, result)
                .await
        })
    }

    fn allow<'a>(
        &'a self,
        actor: &'a str,
        service_account: &'a str,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let started = Instant::now();
            let result = self.source.allow(actor, service_account).await;
            self.finish_write("ConsoleAllow", actor, service_account, started, result)
                .await
        })
    }

    fn recent_decisions(&self) -> Vec<Decision> {
        self.recent
            .decisions()
            .into_iter()
            .map(|d| Decision {
                time: d.time,
                outcome: outcome(d.outcome),
                code: d.code.to_owned(),
                service_account: d.email,
                sub: d.sub,
                role_arn: d.role_arn,
                reason: d.reason,
                request_id: d.request_id,
            })
            .collect()
    }

    fn status(&self) -> Status {
        let sts = self.metrics.samples("tokenbridge_sts_requests_total");
        let sum = |keep: &dyn Fn(&str) -> bool| -> u64 {
            sts.iter()
                .filter(|s| keep(s.label("outcome").unwrap_or_default()))
                .map(|s| s.value)
                .sum::<f64>() as u64
        };
        let sync = self.policy_sync.as_ref();
        Status {
            jwks_age_seconds: self.jwks.key_age().map(|a| a.as_secs()),
            jwks_keys: self.jwks.key_count().unwrap_or(0) as u64,
            jwks_stale: self.jwks.is_stale(),
            cache_entries: self.exchange.cache().entry_count(),
            sts_errors: sum(&|o| o != "ok"),
            sts_throttles: sum(&|o| o == "throttled"),
            store_revision: sync.and_then(|s| s.revisions()).map(|(_, store)| store),
            store_lag_seconds: sync.and_then(|s| s.lag()).map(|l| l.as_secs_f64()),
            decisions_per_minute: self
                .recent
                .per_minute()
                .into_iter()
                .map(|m| MinuteBucket {
                    minute_start_unix: m.minute_start_unix,
                    issued: m.issued,
                    refused: m.refused,
                    failed: m.failed,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn binding(issuer: Option<bool>) -> pb::Binding {
        pb::Binding {
            name: "etl".into(),
            service_accounts: vec![
                "112233445566778899001".into(),
                "etl@p.iam.gserviceaccount.com".into(),
            ],
            role_arns: vec!["arn:aws:iam::123456789012:role/etl".into()],
            max_duration_seconds: Some(3600),
            issuer,
            ..pb::Binding::default()
        }
    }

    fn issuer(default: bool) -> IssuerConfig {
        IssuerConfig {
            url: "https://tokenbridge.example.com".into(),
            key_files: Vec::new(),
            active_key_file: None,
            audience: "sts.amazonaws.com".into(),
            default,
            token_lifetime: Duration::from_secs(300),
            listen: None,
        }
    }

    #[test]
    fn trust_policies_follow_the_binding_and_the_server_mode() {
        let audiences = vec!["https://tokenbridge.test".to_owned()];
        let pass = trust_policy(&binding(None), &audiences, None).unwrap();
        assert_eq!(pass.role_arns, ["arn:aws:iam::123456789012:role/etl"]);
        assert!(
            pass.document
                .contains("\"accounts.google.com:oaud\": \"https://tokenbridge.test\"")
        );
        assert!(pass.document.contains("112233445566778899001"));
        assert!(
            !pass.document.contains("etl@p"),
            "emails are not in a trust policy"
        );
        assert!(
            pass.warnings.iter().any(|w| w.contains("pass-through")),
            "{:?}",
            pass.warnings
        );
        assert!(
            pass.warnings
                .iter()
                .any(|w| w.contains("etl@p.iam.gserviceaccount.com"))
        );

        // Issuer mode: by the server's default, or the binding's own say.
        let provider = "arn:aws:iam::123456789012:oidc-provider/tokenbridge.example.com";
        for (b, i) in [
            (binding(None), issuer(true)),
            (binding(Some(true)), issuer(false)),
        ] {
            let minted = trust_policy(&b, &audiences, Some(&i)).unwrap();
            assert!(minted.document.contains(provider), "{}", minted.document);
            assert!(minted.document.contains("tokenbridge.example.com:sub"));
            assert!(!minted.warnings.iter().any(|w| w.contains("pass-through")));
        }
        let opted_out =
            trust_policy(&binding(Some(false)), &audiences, Some(&issuer(true))).unwrap();
        assert!(opted_out.document.contains("accounts.google.com:oaud"));

        let emails_only = pb::Binding {
            service_accounts: vec!["etl@p.iam.gserviceaccount.com".into()],
            ..binding(None)
        };
        let err = trust_policy(&emails_only, &audiences, None).unwrap_err();
        assert!(matches!(err, BackendError::FailedPrecondition(m) if m.contains("unique ID")));
    }
}
