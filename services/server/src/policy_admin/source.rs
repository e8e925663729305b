//! What the policy admin API and the console share: each read and write on
//! the store or on the read-only policy file, and `Explain`'s evaluation.
//! The gRPC methods ([`super::PolicyAdminService`]) and the console's
//! backend ([`crate::console`]) both call these, so they answer alike.

use std::sync::Arc;

use tokenbridge_policy::{Caller, PolicySnapshot};
use tokenbridge_proto::v1 as pb;
use tonic::Status;
use tracing::warn;

use super::{
    PolicySource,
    mapping::{check_deniable, check_service_account, denied_to_pb, stored_to_pb},
    store_status,
};
use crate::{
    exchange::Exchange,
    store::{PolicyStore as _, Store, load_snapshot},
};

impl PolicySource {
    /// The store, or FAILED_PRECONDITION for the read-only policy file.
    pub(crate) fn store(&self) -> Result<&Store, Status> {
        match self {
            PolicySource::Store(store) => Ok(store),
            PolicySource::File(path) => Err(Status::failed_precondition(format!(
                "the policy is read from the file {} and is read-only here: change the file and \
                 reload (SIGHUP), or configure [store] to administer it through this API",
                path.display()
            ))),
        }
    }

    /// The policy as the store holds it now, or as the file was loaded
    /// (the one `exchange` has in force).
    pub(crate) async fn snapshot(
        &self,
        exchange: &Exchange,
    ) -> Result<Arc<PolicySnapshot>, Status> {
        match self {
            PolicySource::Store(store) => {
                Ok(Arc::new(load_snapshot(store).await.map_err(store_status)?))
            }
            PolicySource::File(_) => Ok(exchange.snapshot()),
        }
    }

    /// After a successful write: puts the store's policy in force on this
    /// replica before answering, so the writer's next exchange already sees
    /// it (other replicas follow the store within about a second).
    pub(crate) async fn refresh(&self, exchange: &Exchange) {
        let PolicySource::Store(store) = self else {
            return;
        };
        match load_snapshot(store).await {
            Ok(snapshot) => {
                exchange.advance_policy(snapshot);
            }
            Err(e) => warn!(error = %e, "cannot reload the policy after an admin write"),
        }
    }

    /// At most `limit` bindings named after `after`, in name order.
    pub(crate) async fn list_bindings(
        &self,
        exchange: &Exchange,
        after: &str,
        limit: u32,
    ) -> Result<Vec<pb::Binding>, Status> {
        match self {
            PolicySource::Store(store) => Ok(store
                .list_bindings(after, limit)
                .await
                .map_err(store_status)?
                .into_iter()
                .map(stored_to_pb)
                .collect()),
            PolicySource::File(_) => Ok(exchange
                .snapshot()
                .bindings()
                .filter(|b| b.name.as_str() > after)
                .take(limit as usize)
                .map(|b| pb::Binding::from(b.clone()))
                .collect()),
        }
    }

    /// The binding `name`, or NOT_FOUND.
    pub(crate) async fn get_binding(
        &self,
        exchange: &Exchange,
        name: &str,
    ) -> Result<pb::Binding, Status> {
        match self {
            PolicySource::Store(store) => store
                .get_binding(name)
                .await
                .map(stored_to_pb)
                .map_err(store_status),
            PolicySource::File(_) => exchange
                .snapshot()
                .binding(name)
                .map(|b| pb::Binding::from(b.clone()))
                .ok_or_else(|| Status::not_found(format!("binding `{name}` not found"))),
        }
    }

    /// Puts `service_account` (a unique ID) on the deny list, `actor` in
    /// the store's audit trail.
    pub(crate) async fn deny(
        &self,
        actor: &str,
        service_account: &str,
        reason: &str,
    ) -> Result<pb::DeniedServiceAccount, Status> {
        let store = self.store()?;
        check_deniable(service_account)?;
        store
            .deny(actor, service_account, reason)
            .await
            .map(denied_to_pb)
            .map_err(store_status)
    }

    /// Takes `service_account` off the deny list, `actor` in the store's
    /// audit trail.
    pub(crate) async fn allow(&self, actor: &str, service_account: &str) -> Result<(), Status> {
        let store = self.store()?;
        check_service_account(service_account)?;
        store
            .allow(actor, service_account)
            .await
            .map_err(store_status)
    }

    /// The deny list (empty for the policy file, which has none).
    pub(crate) async fn list_denied(&self) -> Result<Vec<pb::DeniedServiceAccount>, Status> {
        match self {
            PolicySource::Store(store) => Ok(store
                .list_denied()
                .await
                .map_err(store_status)?
                .into_iter()
                .map(denied_to_pb)
                .collect()),
            PolicySource::File(_) => Ok(Vec::new()),
        }
    }
}

/// `Explain`'s answer: the decision `snapshot` makes for `caller` and
/// `role_arn` (empty: the caller's only role), with each binding's
/// evaluation.
pub(crate) fn explain(
    snapshot: &PolicySnapshot,
    caller: &Caller,
    role_arn: &str,
) -> pb::ExplainResponse {
    let explanation = snapshot.explain(caller, role_arn);
    let mut response = pb::ExplainResponse {
        allowed: explanation.decision.is_ok(),
        service_account_denied: explanation.denied,
        claims: Some(pb::Claims::from(caller)),
        bindings: explanation
            .evaluations
            .into_iter()
            .map(|e| pb::BindingEvaluation {
                binding: e.binding,
                outcome: pb::binding_evaluation::Outcome::from(e.outcome) as i32,
                details: e.details,
            })
            .collect(),
        ..Default::default()
    };
    match explanation.decision {
        Ok(d) => {
            response.reason = format!(
                "allowed by {}",
                d.bindings.iter().cloned().collect::<Vec<_>>().join(", ")
            );
            response.role_arn = d.role_arn;
            response.max_duration_seconds = d.max_duration_seconds;
            response.default_duration_seconds = d.default_duration_seconds;
            response.session_policy = d.scope.session_policy.unwrap_or_default();
            response.managed_policy_arns = d.scope.managed_policy_arns;
        }
        Err(refusal) => response.reason = refusal.to_string(),
    }
    response
}
