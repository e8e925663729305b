//! Who may call the policy admin API: an ID token for the admin audiences
//! whose service account is one of `policy_admin.principals`.

use std::{collections::HashSet, sync::Arc};

use tonic::{Status, metadata::MetadataMap};

use crate::{
    error::Error,
    exchange::{VerifyToken, caller_of},
    transport::grpc::bearer_token,
};

/// Who may call the admin API: a verifier for the admin audiences and the
/// listed principals.
pub struct AdminAccess {
    verifier: Arc<dyn VerifyToken>,
    principals: HashSet<String>,
}

impl AdminAccess {
    /// `verifier` checks tokens for the admin audiences; `principals` are
    /// unique IDs or emails (compared without regard to case).
    pub fn new(verifier: Arc<dyn VerifyToken>, principals: &[String]) -> Self {
        Self {
            verifier,
            principals: principals.iter().map(|p| p.to_ascii_lowercase()).collect(),
        }
    }

    /// The caller's name for the audit trail (its verified email, else its
    /// unique ID), if it may call; the status to answer otherwise.
    pub(super) async fn authorize(&self, metadata: &MetadataMap) -> Result<String, Status> {
        let token = bearer_token(metadata)?;
        let verified = self.verifier.verify(token).await.map_err(Error::from)?;
        let claims = verified.claims;
        let email = claims.verified_email().map(str::to_ascii_lowercase);
        let listed = self.principals.contains(&claims.sub)
            || email.as_ref().is_some_and(|e| self.principals.contains(e));
        if !listed {
            let who = caller_of(&claims).name();
            return Err(Status::permission_denied(format!(
                "{who} may not administer the policy: it is not in policy_admin.principals"
            )));
        }
        Ok(email.unwrap_or(claims.sub))
    }
}
