//! The policy admin API's wire side: `Status` for every store error and
//! bad field (one mapping), request checks, conversions to the messages.

use std::time::SystemTime;

use tokenbridge_proto::status::{self};
use tokenbridge_proto::v1::{self as pb};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};
use tracing::{error, warn};

use tokenbridge_policy::{
    Binding, Caller, Violation,
    rules::{ServiceAccountRef, classify_service_account},
    wire,
};

use crate::{
    error::RETRY_UPSTREAM,
    store::{AuditEntry, DeniedServiceAccount, MAX_PAGE_SIZE, StoreError, StoredBinding},
};

// ---------------------------------------------------------------------------
// Statuses.

/// The status for a store error: the contract's code, a message that names
/// what was wrong, and for INVALID_ARGUMENT the field violations as
/// `google.rpc.BadRequest` details. Failures of the store itself are logged
/// in full and answered UNAVAILABLE without the database's words.
pub fn store_status(err: StoreError) -> Status {
    match err {
        StoreError::Invalid(violations) => invalid_status(&violations),
        StoreError::NotFound { .. } => Status::not_found(err.to_string()),
        StoreError::AlreadyExists { .. } => Status::already_exists(err.to_string()),
        StoreError::Conflict { .. } => Status::aborted(format!(
            "{err}: read the binding again, re-apply your change and retry"
        )),
        StoreError::Unavailable(ref source) => {
            warn!(error = %source, "policy store unavailable");
            status::status(
                Code::Unavailable,
                "policy store unavailable; retry shortly",
                Some(RETRY_UPSTREAM),
            )
        }
        other => {
            error!(error = %other, source = ?std::error::Error::source(&other), "policy store failure");
            Status::unavailable(format!("{other}; see the server log"))
        }
    }
}

pub(super) fn invalid_status(violations: &[Violation]) -> Status {
    let message = violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::new();
    for v in violations {
        let field = if v.binding.is_empty() {
            v.error.field.clone()
        } else {
            format!("binding[{}].{}", v.binding, v.error.field)
        };
        details.add_bad_request_violation(field, v.error.reason.clone());
    }
    Status::with_error_details(Code::InvalidArgument, message, details)
}

pub(super) fn field_status(binding: &str, field: &str, reason: &str) -> Status {
    invalid_status(&[Violation {
        index: 0,
        binding: binding.to_string(),
        error: tokenbridge_policy::FieldError {
            field: field.to_string(),
            reason: reason.to_string(),
        },
    }])
}

/// Update and delete must say which version they change.
pub(super) fn require_etag(binding: &str, etag: &str) -> Result<(), Status> {
    if etag.is_empty() {
        return Err(field_status(
            binding,
            "etag",
            "required: send the etag of the binding as last read",
        ));
    }
    Ok(())
}

pub(super) fn page_size(requested: u32) -> Result<u32, Status> {
    match requested {
        0 => Ok(100),
        n if n <= MAX_PAGE_SIZE => Ok(n),
        n => Err(Status::invalid_argument(format!(
            "page_size {n} is above the maximum of {MAX_PAGE_SIZE}"
        ))),
    }
}

/// A list page token is the last binding name of the previous page.
pub(super) fn page_after_name(token: &str) -> Result<String, Status> {
    if token.len() > 128 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Status::invalid_argument(
            "page_token is not one this service returned",
        ));
    }
    Ok(token.to_string())
}

pub(super) fn required_binding(binding: Option<pb::Binding>) -> Result<Binding, Status> {
    binding
        .map(Binding::from)
        .ok_or_else(|| field_status("", "binding", "required"))
}

/// The deny list takes unique IDs only: an email entry would miss every
/// token without an `email` claim (the metadata server's default format,
/// GKE Workload Identity, Cloud Run), which bindings still match by `sub`.
/// Email entries made before this rule still match emails and can be
/// allowed (removed).
pub(super) fn check_deniable(sa: &str) -> Result<(), Status> {
    check_service_account(sa)?;
    if classify_service_account(sa) == Some(ServiceAccountRef::Email) {
        return Err(field_status(
            "",
            "service_account",
            "deny the service account's unique ID, not its email: ID tokens without format=full \
             (the metadata server's default, GKE Workload Identity, Cloud Run) carry no email, so \
             an email entry would not stop them; find the ID with \
             gcloud iam service-accounts describe EMAIL --format='value(uniqueId)'",
        ));
    }
    Ok(())
}

pub(super) fn check_service_account(sa: &str) -> Result<(), Status> {
    if classify_service_account(sa).is_none() {
        return Err(field_status(
            "",
            "service_account",
            "not a service account unique ID (digits) or email",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Conversions between the wire and the model.

pub(super) fn stored_to_pb(s: StoredBinding) -> pb::Binding {
    pb::Binding {
        etag: s.etag,
        create_time: Some(timestamp(s.created_at)),
        update_time: Some(timestamp(s.updated_at)),
        ..pb::Binding::from(s.binding)
    }
}

pub(super) fn denied_to_pb(d: DeniedServiceAccount) -> pb::DeniedServiceAccount {
    pb::DeniedServiceAccount {
        service_account: d.service_account,
        reason: d.reason,
        actor: d.actor,
        create_time: Some(timestamp(d.created_at)),
    }
}

pub(super) fn audit_to_pb(e: AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        id: e.id,
        time: Some(timestamp(e.at)),
        actor: e.actor,
        action: e.action.as_str().to_string(),
        target: e.target,
        before_json: e.before.unwrap_or_default(),
        after_json: e.after.unwrap_or_default(),
        revision: e.revision,
    }
}

pub(super) fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

pub(super) fn pb_to_caller(c: pb::Claims) -> Result<Caller, Status> {
    wire::caller_from_pb(c).ok_or_else(|| field_status("", "claims.sub", "required"))
}

#[cfg(test)]
mod tests {
    use tonic::Code;
    use tonic_types::StatusExt as _;

    use super::*;

    #[test]
    fn store_errors_get_the_documented_codes() {
        let conflict = store_status(StoreError::Conflict {
            name: "b".into(),
            given: "1".into(),
            current: "2".into(),
        });
        assert_eq!(conflict.code(), Code::Aborted);
        assert!(conflict.message().contains("read the binding again"));
        assert_eq!(
            store_status(StoreError::NotFound {
                what: "binding `x`".into()
            })
            .code(),
            Code::NotFound
        );
        assert_eq!(
            store_status(StoreError::AlreadyExists { name: "x".into() }).code(),
            Code::AlreadyExists
        );
        let invalid = field_status("b", "session_policy", "over 2048 characters");
        assert_eq!(invalid.code(), Code::InvalidArgument);
        assert!(
            invalid.message().contains("session_policy"),
            "{}",
            invalid.message()
        );
        let details = invalid.get_error_details();
        let bad = details.bad_request().expect("BadRequest details");
        assert_eq!(bad.field_violations[0].field, "binding[b].session_policy");
        let unavailable = store_status(StoreError::WatchClosed);
        assert_eq!(unavailable.code(), Code::Unavailable);
    }

    #[test]
    fn page_sizes_and_tokens_are_checked() {
        assert_eq!(page_size(0).unwrap(), 100);
        assert_eq!(page_size(7).unwrap(), 7);
        assert_eq!(
            page_size(MAX_PAGE_SIZE + 1).unwrap_err().code(),
            Code::InvalidArgument
        );
        assert!(page_after_name("team-a").is_ok());
        assert_eq!(
            page_after_name("bad token\u{0}").unwrap_err().code(),
            Code::InvalidArgument
        );
    }

    #[test]
    fn explain_claims_need_a_subject() {
        let err = pb_to_caller(pb::Claims::default()).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("claims.sub"), "{}", err.message());
    }
}
