//! The one error type of an exchange, and what each case tells the caller.
//! Its mapping to gRPC status codes lives in exactly one place:
//! `impl From<Error> for tonic::Status` in [`crate::grpc`].

use crate::{jwt::VerifyError, sts::StsError};

/// Why an exchange produced no credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request has no usable `authorization: Bearer <token>` metadata.
    /// The caller must send its Google ID token.
    #[error("{0}")]
    MissingToken(&'static str),
    /// The token failed verification (or, for
    /// [`VerifyError::KeysUnavailable`], could not be verified yet).
    #[error(transparent)]
    Token(#[from] VerifyError),
    /// The request itself is wrong (role ARN, duration); fix it, do not retry.
    #[error("{0}")]
    InvalidArgument(String),
    /// The policy table does not allow this; an administrator must add a binding.
    #[error("{0}")]
    PermissionDenied(String),
    /// STS gave no credentials; whether a retry helps depends on the case.
    #[error(transparent)]
    Sts(#[from] StsError),
}
