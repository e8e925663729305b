//! The workload side of tokenbridge, in Rust: exchange the Google ID token of
//! the VM, pod or service you run as for temporary AWS credentials.
//!
//! - [`CredentialsProvider`] plugs into `aws-config`, so every AWS SDK client
//!   gets and refreshes its credentials through tokenbridge:
//!
//!   ```no_run
//!   # async fn example() -> Result<(), tokenbridge_client::Error> {
//!   use aws_config::BehaviorVersion;
//!   use tokenbridge_client::{Config, CredentialsProvider, CredentialsRequest, MetadataIdTokenSource};
//!
//!   let aws = aws_config::defaults(BehaviorVersion::latest())
//!       .credentials_provider(CredentialsProvider::new(
//!           Config::new("https://tokenbridge.example.com"),
//!           MetadataIdTokenSource::new("https://tokenbridge.example.com")?,
//!           CredentialsRequest::role("arn:aws:iam::111122223333:role/RoleForAccessFromGCPTeamA"),
//!       )?)
//!       .load()
//!       .await;
//!   let s3 = aws_sdk_sts::Client::new(&aws);
//!   # let _ = s3;
//!   # Ok(()) }
//!   ```
//!
//! - [`Client`] is the typed gRPC client underneath: one `GetCredentials`
//!   call, with TLS ([`Config`]), time limits, and retries of `UNAVAILABLE`
//!   with exponential backoff and jitter ([`RetryPolicy`]).
//! - [`MetadataIdTokenSource`] gets ID tokens from the metadata server
//!   (`GCE_METADATA_HOST` overrides `metadata.google.internal`) and reuses
//!   each until shortly before it expires. Other sources implement
//!   [`IdTokenSource`].
//! - [`Error`] says which step failed (metadata server, connection, or
//!   tokenbridge's refusal with its status code) and whether retrying helps.
//!
//! Secrets (ID tokens, secret access keys, session tokens) are held in
//! [`Secret`] and print as `** redacted **`; nothing in this crate logs them.
//!
//! Environment variables read: `GCE_METADATA_HOST` (by
//! [`MetadataIdTokenSource::new`] and its builder, unless a host is given).
//! `HTTPS_PROXY` and friends are not used for the metadata server.

#![forbid(unsafe_code)]

mod client;
mod config;
mod error;
mod id_token;
mod provider;
#[cfg(feature = "testing")]
pub mod testing;

pub use client::{Client, Credentials, CredentialsRequest, account_id};
pub use config::{Config, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, RetryPolicy};
pub use error::Error;
pub use id_token::{
    DEFAULT_METADATA_HOST, DEFAULT_METADATA_TIMEOUT, DEFAULT_REFRESH_MARGIN, IdToken,
    IdTokenFuture, IdTokenSource, METADATA_HOST_ENV, MetadataIdTokenSource,
    MetadataIdTokenSourceBuilder,
};
pub use provider::CredentialsProvider;
pub use tokenbridge_proto::{REDACTED, Secret, status::code_name};
