//! gRPC transport: `tokenbridge.v1.TokenExchange` on top of [`Exchange`],
//! the `authorization` metadata, and the one mapping from [`Error`] to
//! `tonic::Status` (the contract's status table).

use std::sync::Arc;

use tokenbridge_proto::v1::{
    GetCredentialsRequest, GetCredentialsResponse, token_exchange_server::TokenExchange,
};
use tonic::{Request, Response, Status, metadata::MetadataMap};
use tracing::info;

use crate::{
    error::Error,
    exchange::{Exchange, ExchangeRequest},
    jwt::VerifyError,
    secret::Secret,
    sts::StsError,
};

/// The `TokenExchange` service.
pub struct TokenExchangeService {
    exchange: Arc<Exchange>,
}

impl TokenExchangeService {
    /// Serves `exchange` over gRPC.
    pub fn new(exchange: Arc<Exchange>) -> Self {
        Self { exchange }
    }
}

#[tonic::async_trait]
impl TokenExchange for TokenExchangeService {
    async fn get_credentials(
        &self,
        request: Request<GetCredentialsRequest>,
    ) -> Result<Response<GetCredentialsResponse>, Status> {
        let peer = request.remote_addr();
        let result = async {
            let token = bearer_token(request.metadata())?;
            let req = request.into_inner();
            self.exchange
                .exchange(
                    token,
                    ExchangeRequest {
                        role_arn: req.role_arn,
                        duration_seconds: req.duration_seconds,
                    },
                )
                .await
        }
        .await;
        match result {
            Ok(issued) => {
                let c = issued.credentials;
                Ok(Response::new(GetCredentialsResponse {
                    access_key_id: c.access_key_id,
                    secret_access_key: c.secret_access_key.expose_owned(),
                    session_token: c.session_token.expose_owned(),
                    expiration: Some(prost_types::Timestamp::from(c.expiration)),
                    assumed_role_arn: c.assumed_role_arn,
                    role_session_name: issued.role_session_name,
                }))
            }
            Err(e) => {
                let status = Status::from(e);
                info!(peer = ?peer, code = ?status.code(), reason = status.message(), "exchange refused");
                Err(status)
            }
        }
    }
}

/// The token from `authorization: Bearer <token>`.
fn bearer_token(metadata: &MetadataMap) -> Result<Secret<String>, Error> {
    let mut values = metadata.get_all("authorization").iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(Error::MissingToken(
            "missing or repeated authorization metadata: expected one `authorization: Bearer <Google ID token>`",
        ));
    };
    let value = value.to_str().map_err(|_| {
        Error::MissingToken(
            "authorization metadata is not ASCII text; expected `Bearer <Google ID token>`",
        )
    })?;
    let Some((scheme, token)) = value.trim().split_once(' ') else {
        return Err(Error::MissingToken(EXPECTED_FORM));
    };
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(Error::MissingToken(EXPECTED_FORM));
    }
    Ok(Secret::new(token.to_string()))
}

const EXPECTED_FORM: &str = "malformed authorization metadata: expected `Bearer <Google ID token>`";

/// The contract's status table. Exhaustive on purpose: a new error case must
/// be given its code here.
impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let message = err.to_string();
        match err {
            Error::MissingToken(_) => Status::unauthenticated(message),
            Error::Token(e) => match e {
                VerifyError::KeysUnavailable => Status::unavailable(message),
                VerifyError::TooLarge(_)
                | VerifyError::Malformed(_)
                | VerifyError::Algorithm(_)
                | VerifyError::MissingKid
                | VerifyError::Crit
                | VerifyError::DuplicateHeader(_)
                | VerifyError::UnknownKid
                | VerifyError::BadSignature
                | VerifyError::Expired
                | VerifyError::NotYetValid(_)
                | VerifyError::Issuer
                | VerifyError::Audience
                | VerifyError::MissingClaim(_)
                | VerifyError::ClaimType(..)
                | VerifyError::DuplicateClaim(_)
                | VerifyError::Lifetime => Status::unauthenticated(message),
            },
            Error::InvalidArgument(_) => Status::invalid_argument(message),
            Error::PermissionDenied(_) => Status::permission_denied(message),
            Error::Sts(e) => match e {
                StsError::InvalidIdentityToken(_) | StsError::ExpiredToken(_) => {
                    Status::unauthenticated(message)
                }
                StsError::AccessDenied(_) | StsError::IdpRejectedClaim(_) => {
                    Status::permission_denied(message)
                }
                StsError::IdpCommunication(_)
                | StsError::Throttled(_)
                | StsError::Unavailable(_) => Status::unavailable(message),
                StsError::Refused { .. } => Status::failed_precondition(message),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    fn md(values: &[&str]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for v in values {
            m.append("authorization", v.parse().unwrap());
        }
        m
    }

    #[test]
    fn bearer_forms() {
        assert_eq!(bearer_token(&md(&["Bearer abc"])).unwrap().expose(), "abc");
        assert_eq!(
            bearer_token(&md(&["bearer  abc "])).unwrap().expose(),
            "abc"
        );
        for bad in [
            &[][..],
            &["Basic abc"],
            &["Bearer"],
            &["Bearer "],
            &["abc"],
            &["Bearer a b"],
            &["Bearer a", "Bearer b"],
        ] {
            let err = bearer_token(&md(bad)).unwrap_err();
            assert_eq!(Status::from(err).code(), Code::Unauthenticated, "{bad:?}");
        }
    }

    #[test]
    fn status_table() {
        let code = |e: Error| Status::from(e).code();
        assert_eq!(code(VerifyError::Expired.into()), Code::Unauthenticated);
        assert_eq!(code(VerifyError::KeysUnavailable.into()), Code::Unavailable);
        assert_eq!(
            code(Error::InvalidArgument("x".into())),
            Code::InvalidArgument
        );
        assert_eq!(
            code(Error::PermissionDenied("x".into())),
            Code::PermissionDenied
        );
        assert_eq!(
            code(StsError::InvalidIdentityToken("x".into()).into()),
            Code::Unauthenticated
        );
        assert_eq!(
            code(StsError::ExpiredToken("x".into()).into()),
            Code::Unauthenticated
        );
        assert_eq!(
            code(StsError::AccessDenied("x".into()).into()),
            Code::PermissionDenied
        );
        assert_eq!(
            code(StsError::IdpRejectedClaim("x".into()).into()),
            Code::PermissionDenied
        );
        assert_eq!(
            code(StsError::IdpCommunication("x".into()).into()),
            Code::Unavailable
        );
        assert_eq!(
            code(StsError::Throttled("x".into()).into()),
            Code::Unavailable
        );
        assert_eq!(
            code(StsError::Unavailable("x".into()).into()),
            Code::Unavailable
        );
        assert_eq!(
            code(
                StsError::Refused {
                    code: "ValidationError".into(),
                    message: "x".into()
                }
                .into()
            ),
            Code::FailedPrecondition
        );
    }
}
