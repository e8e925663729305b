//! `RevokeCachedCredentials`: drops the cached credentials of a service
//! account (its unique ID), of a role, or of the pair, so that the next
//! request for them calls STS anew with the caller's token.
//!
//! * **With the policy store**: a store write like `DenyServiceAccount` (one
//!   transaction with its audit row, bumping the revision so every
//!   replica's follower loads it). The loaded snapshot carries the
//!   revocations to each replica's credential cache, which treats what it
//!   obtained before learning of them as a miss ([`crate::aws::cache`]);
//!   so a revocation reaches every replica within its follower's delay
//!   (about a second), whatever is in flight. The answering replica puts
//!   the new revision in force before it answers and drops what it holds
//!   at once (`dropped_here`). It is not in `WRITES` for that reason: the
//!   generic refresh after a write would load the store a second time.
//! * **With a policy file** there is nothing shared: the revocation is kept
//!   in this replica's memory (lost on restart, which empties the cache
//!   anyway), and the answer says so (`every_replica` false).
//!
//! It does not revoke anything at AWS. A leaked session dies at AWS only by
//! the role's "Revoke active sessions"; this makes sure no replica keeps
//! handing out the cached credentials that revocation killed.

use tokenbridge_policy::revocation::check_revocation;
use tokenbridge_proto::v1 as pb;
use tonic::Status;
use tracing::{info, warn};

use super::{
    PolicySource,
    mapping::{field_status, timestamp},
    store_status,
};
use crate::{
    exchange::Exchange,
    store::{PolicyStore as _, load_snapshot},
};

/// What the audit line names: the service account, else the role.
pub(super) fn target(r: &pb::RevokeCachedCredentialsRequest) -> String {
    if r.service_account.is_empty() {
        r.role_arn.clone()
    } else {
        r.service_account.clone()
    }
}

/// Revokes as `req` asks, `actor` in the store's audit trail.
pub(super) async fn revoke(
    source: &PolicySource,
    exchange: &Exchange,
    actor: &str,
    req: pb::RevokeCachedCredentialsRequest,
) -> Result<pb::RevokeCachedCredentialsResponse, Status> {
    let given = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
    let (service_account, role_arn) = (given(&req.service_account), given(&req.role_arn));
    check_revocation(service_account.as_deref(), role_arn.as_deref(), &req.reason)
        .map_err(|e| field_status("", &e.field, &e.reason))?;
    let (revision, revoked_at, every_replica) = match source {
        PolicySource::Store(store) => {
            let stored = store
                .revoke(
                    actor,
                    service_account.as_deref(),
                    role_arn.as_deref(),
                    &req.reason,
                )
                .await
                .map_err(store_status)?;
            // In force here before answering; the other replicas follow
            // the store. If the load fails, this replica's follower retries.
            match load_snapshot(store).await {
                Ok(snapshot) => {
                    exchange.advance_policy(snapshot);
                }
                Err(e) => warn!(error = %e, "cannot reload the policy after a revocation"),
            }
            (stored.revision, stored.revoked_at, true)
        }
        PolicySource::File(_) => {
            let r = exchange
                .cache()
                .revoke_here(service_account.clone(), role_arn.clone());
            (r.revision, r.revoked_at, false)
        }
    };
    let dropped_here = exchange.cache().drop_revoked().await;
    info!(
        service_account = service_account.as_deref().unwrap_or("*"),
        role_arn = role_arn.as_deref().unwrap_or("*"),
        revision,
        dropped_here,
        every_replica,
        "cached credentials revoked"
    );
    Ok(pb::RevokeCachedCredentialsResponse {
        service_account: service_account.unwrap_or_default(),
        role_arn: role_arn.unwrap_or_default(),
        revoked_at: Some(timestamp(revoked_at)),
        revision,
        dropped_here: dropped_here as u64,
        every_replica,
        actor: actor.to_string(),
        reason: req.reason,
    })
}
