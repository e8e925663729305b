//! Generated types for the `tokenbridge.v1` gRPC API.
//!
//! The proto files are `proto/tokenbridge/v1/tokenbridge.proto` (the
//! exchange, part of the external contract) and
//! `proto/tokenbridge/v1/admin.proto` (policy administration). Messages that carry secrets have a hand-written
//! `Debug` that prints `** redacted **` in place of the secret fields.
//!
//! Beside the generated code, the two things client and server must agree
//! on: [`status`] (code names, retryability, `RetryInfo`) and [`Secret`].

#![forbid(unsafe_code)]

/// `tokenbridge.v1`: the token exchange and policy admin services and their
/// messages.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    // Generated from the protos and checked in; `tests/generated.rs` keeps
    // it in step with them.
    include!("generated/tokenbridge.v1.rs");

    impl std::fmt::Debug for GetCredentialsResponse {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("GetCredentialsResponse")
                .field("access_key_id", &self.access_key_id)
                .field("secret_access_key", &crate::Redacted)
                .field("session_token", &crate::Redacted)
                .field("expiration", &self.expiration)
                .field("assumed_role_arn", &self.assumed_role_arn)
                .field("role_session_name", &self.role_session_name)
                .finish()
        }
    }

    impl std::fmt::Debug for ExplainRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let token: &dyn std::fmt::Debug = if self.token.is_empty() {
                &""
            } else {
                &crate::Redacted
            };
            f.debug_struct("ExplainRequest")
                .field("token", token)
                .field("claims", &self.claims)
                .field("role_arn", &self.role_arn)
                .finish()
        }
    }
}

pub mod secret;
pub mod status;

pub use secret::{REDACTED, Redacted, Secret};

/// The encoded `FileDescriptorSet` of the tokenbridge protos, for server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("generated/tokenbridge_descriptor.bin");

#[cfg(test)]
mod tests {
    use super::v1::{Claims, ExplainRequest, GetCredentialsResponse};

    #[test]
    fn descriptor_set_serves_both_services_for_reflection() {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let services: Vec<String> = set
            .file
            .iter()
            .flat_map(|f| {
                f.service
                    .iter()
                    .map(move |s| format!("{}.{}", f.package(), s.name()))
            })
            .collect();
        assert!(
            services.contains(&"tokenbridge.v1.TokenExchange".to_string()),
            "{services:?}"
        );
        assert!(
            services.contains(&"tokenbridge.v1.PolicyAdmin".to_string()),
            "{services:?}"
        );
    }

    #[test]
    fn explain_request_debug_redacts_the_token() {
        let r = ExplainRequest {
            token: "eyJhbGciOiJSUzI1NiJ9.secret-payload.sig".into(),
            claims: Some(Claims {
                sub: "112233".into(),
                ..Claims::default()
            }),
            role_arn: "arn:aws:iam::111122223333:role/R".into(),
        };
        let shown = format!("{r:?}");
        assert!(!shown.contains("secret-payload"), "{shown}");
        assert!(shown.contains("** redacted **"), "{shown}");
        assert!(shown.contains("112233"), "{shown}");
    }

    #[test]
    fn response_debug_redacts_secrets() {
        let r = GetCredentialsResponse {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: "very-secret-key".into(),
            session_token: "very-secret-session".into(),
            expiration: None,
            assumed_role_arn: "arn:aws:sts::111122223333:assumed-role/R/s".into(),
            role_session_name: "s".into(),
        };
        let shown = format!("{r:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(shown.contains("** redacted **"));
        assert!(shown.contains("ASIAEXAMPLE"));
    }
}
