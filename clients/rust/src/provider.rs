//! An `aws-config` credentials provider backed by tokenbridge.

use std::sync::Arc;

use aws_credential_types::provider::{ProvideCredentials, error::CredentialsError, future};
use tokio::sync::OnceCell;
use tonic::transport::Endpoint;

use crate::{
    client::{Client, Credentials, CredentialsRequest},
    config::Config,
    error::Error,
    id_token::IdTokenSource,
};

/// Provides AWS credentials from tokenbridge to every AWS SDK client: each
/// load asks the [`IdTokenSource`] for an ID token (cached by the source) and
/// exchanges it.
///
/// The SDK caches what this returns and asks again shortly before it
/// expires, so this provider does not cache credentials itself.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use aws_config::BehaviorVersion;
/// use tokenbridge_client::{Config, CredentialsProvider, CredentialsRequest, MetadataIdTokenSource};
///
/// let provider = CredentialsProvider::new(
///     Config::new("https://tokenbridge.example.com"),
///     MetadataIdTokenSource::new("https://tokenbridge.example.com")?,
///     CredentialsRequest::role("arn:aws:iam::111122223333:role/RoleForAccessFromGCPTeamA"),
/// )?;
/// let aws = aws_config::defaults(BehaviorVersion::latest())
///     .credentials_provider(provider)
///     .load()
///     .await;
/// let sts = aws_sdk_sts::Client::new(&aws);
/// let me = sts.get_caller_identity().send().await?;
/// println!("{}", me.arn().unwrap_or_default());
/// # Ok(()) }
/// ```
///
/// Errors reach the SDK as [`CredentialsError::InvalidConfiguration`] for
/// [`Error::Config`] and [`CredentialsError::ProviderError`] for everything
/// else, with the [`Error`] as the source.
#[derive(Clone, Debug)]
pub struct CredentialsProvider {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    endpoint: Endpoint,
    tokens: Arc<dyn IdTokenSource>,
    request: CredentialsRequest,
    client: OnceCell<Client>,
}

impl CredentialsProvider {
    /// A provider that exchanges tokens from `tokens` at the tokenbridge of
    /// `config` for the credentials of `request`.
    ///
    /// Checks the configuration and reads the CA and client certificate files
    /// now; connects on the first load. Needs no runtime.
    pub fn new(
        config: Config,
        tokens: impl IdTokenSource + 'static,
        request: CredentialsRequest,
    ) -> Result<Self, Error> {
        let endpoint = config.tonic_endpoint()?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                endpoint,
                tokens: Arc::new(tokens),
                request,
                client: OnceCell::new(),
            }),
        })
    }

    /// Gets fresh credentials, with tokenbridge's own types and errors.
    pub async fn credentials(&self) -> Result<Credentials, Error> {
        let inner = &self.inner;
        let client = inner
            .client
            .get_or_init(|| async { Client::with_endpoint(&inner.config, &inner.endpoint) })
            .await;
        let token = inner.tokens.id_token().await?;
        client.get_credentials(&token, &inner.request).await
    }
}

impl ProvideCredentials for CredentialsProvider {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            self.credentials()
                .await
                .map(Into::into)
                .map_err(credentials_error)
        })
    }
}

fn credentials_error(error: Error) -> CredentialsError {
    match error {
        Error::Config { .. } => CredentialsError::invalid_configuration(error),
        _ => CredentialsError::provider_error(error),
    }
}
