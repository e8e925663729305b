//! What a status code means on the `tokenbridge.v1` wire, defined once for
//! the server that sends it and the clients that read it: the code's
//! canonical name, whether a later retry can help, and the
//! `google.rpc.RetryInfo` delay a retryable status carries.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// The canonical name of a gRPC code (`OK`, `PERMISSION_DENIED`, …), as in
/// the gRPC specification: metric labels, the audit log, error messages.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Whether the same call can succeed later (the contract's status table):
/// `UNAVAILABLE` (an upstream or this server is briefly unable),
/// `RESOURCE_EXHAUSTED` (a rate or concurrency limit; wait the `RetryInfo`
/// delay) and `UNAUTHENTICATED` (with a fresh ID token). Every other code
/// needs a change (of policy, of request, of configuration) first.
pub fn retry_may_help(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::ResourceExhausted | Code::Unauthenticated
    )
}

/// A status with `code` and `message`, and a `google.rpc.RetryInfo` detail
/// asking the caller to wait `retry_after` when given.
pub fn status(code: Code, message: impl Into<String>, retry_after: Option<Duration>) -> Status {
    match retry_after {
        Some(delay) => {
            Status::with_error_details(code, message, ErrorDetails::with_retry_info(Some(delay)))
        }
        None => Status::new(code, message),
    }
}

/// The delay a status's `google.rpc.RetryInfo` asks for, if it has one.
pub fn retry_after(status: &Status) -> Option<Duration> {
    status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_info_round_trips_and_is_absent_otherwise() {
        let busy = status(
            Code::ResourceExhausted,
            "slow down",
            Some(Duration::from_secs(2)),
        );
        assert_eq!(retry_after(&busy), Some(Duration::from_secs(2)));
        assert_eq!(busy.message(), "slow down");
        let denied = status(Code::PermissionDenied, "no", None);
        assert_eq!(retry_after(&denied), None);
    }

    #[test]
    fn only_transient_codes_are_retryable() {
        assert!(retry_may_help(Code::Unavailable));
        assert!(retry_may_help(Code::ResourceExhausted));
        assert!(!retry_may_help(Code::PermissionDenied));
        assert!(!retry_may_help(Code::InvalidArgument));
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
    }
}
