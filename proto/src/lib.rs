//! Generated types for the `tokenbridge.v1` gRPC API.
//!
//! The proto file is `proto/tokenbridge/v1/tokenbridge.proto` and is part of
//! the external contract. Messages that carry secrets have a hand-written
//! `Debug` that prints `** redacted **` in place of the secret fields.

#![forbid(unsafe_code)]

/// `tokenbridge.v1`: the token exchange service and its messages.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("tokenbridge.v1");

    impl std::fmt::Debug for GetCredentialsResponse {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("GetCredentialsResponse")
                .field("access_key_id", &self.access_key_id)
                .field("secret_access_key", &crate::REDACTED)
                .field("session_token", &crate::REDACTED)
                .field("expiration", &self.expiration)
                .field("assumed_role_arn", &self.assumed_role_arn)
                .field("role_session_name", &self.role_session_name)
                .finish()
        }
    }
}

/// What a redacted field prints as.
pub const REDACTED: Redacted = Redacted;

/// A marker whose `Debug` and `Display` print `** redacted **`.
#[derive(Clone, Copy)]
pub struct Redacted;

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("** redacted **")
    }
}

/// The encoded `FileDescriptorSet` of the tokenbridge protos, for server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tokenbridge_descriptor.bin"));

#[cfg(test)]
mod tests {
    use super::v1::GetCredentialsResponse;

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
