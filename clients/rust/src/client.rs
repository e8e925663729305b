//! The typed client: `GetCredentials` with retries, and what it returns.

use std::{
    error::Error as StdError,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use backon::Retryable as _;
use tokenbridge_proto::v1::{
    GetCredentialsRequest, GetCredentialsResponse, token_exchange_client::TokenExchangeClient,
};
use tonic::{
    Code, Status,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};
use tracing::{debug, instrument};

use tokenbridge_proto::Secret;

use crate::{
    config::{Config, RetryPolicy},
    error::{Error, chain, one_line},
    id_token::IdToken,
};

/// What to ask tokenbridge for.
///
/// ```
/// use tokenbridge_client::CredentialsRequest;
///
/// let request = CredentialsRequest::role("arn:aws:iam::111122223333:role/TeamA").with_duration_seconds(3600);
/// assert_eq!(request.role_arn.as_deref(), Some("arn:aws:iam::111122223333:role/TeamA"));
/// assert_eq!(CredentialsRequest::default().role_arn, None);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CredentialsRequest {
    /// The IAM role to assume; `None`: the caller's only bound role.
    pub role_arn: Option<String>,
    /// How long the credentials should last, 900..=43200; `None`: the
    /// binding's default.
    pub duration_seconds: Option<u32>,
}

impl CredentialsRequest {
    /// A request for this role, for the binding's default duration.
    pub fn role(role_arn: impl Into<String>) -> Self {
        Self {
            role_arn: Some(role_arn.into()),
            duration_seconds: None,
        }
    }

    /// The same request for this many seconds.
    pub fn with_duration_seconds(mut self, seconds: u32) -> Self {
        self.duration_seconds = Some(seconds);
        self
    }
}

/// Temporary AWS credentials from tokenbridge.
///
/// `Debug` shows the access key ID, never the secret access key or the
/// session token.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Credentials {
    /// The access key ID (`ASIA…`).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: Secret<String>,
    /// The session token.
    pub session_token: Secret<String>,
    /// When the credentials expire.
    pub expiration: SystemTime,
    /// The assumed role's ARN
    /// (`arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`).
    pub assumed_role_arn: String,
    /// The role session name (the service account's unique ID).
    pub role_session_name: String,
}

impl Credentials {
    /// Credentials with these values.
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: Secret<String>,
        session_token: Secret<String>,
        expiration: SystemTime,
        assumed_role_arn: impl Into<String>,
        role_session_name: impl Into<String>,
    ) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key,
            session_token,
            expiration,
            assumed_role_arn: assumed_role_arn.into(),
            role_session_name: role_session_name.into(),
        }
    }

    /// The AWS account ID, from the assumed role's ARN.
    ///
    /// ```
    /// # use std::time::SystemTime;
    /// # use tokenbridge_client::{Credentials, Secret};
    /// let credentials = Credentials::new(
    ///     "ASIAEXAMPLE",
    ///     Secret::new("secret".into()),
    ///     Secret::new("session".into()),
    ///     SystemTime::now(),
    ///     "arn:aws:sts::111122223333:assumed-role/TeamA/112233445566778899001",
    ///     "112233445566778899001",
    /// );
    /// assert_eq!(credentials.account_id(), Some("111122223333"));
    /// ```
    pub fn account_id(&self) -> Option<&str> {
        account_id(&self.assumed_role_arn)
    }
}

/// The 12-digit account of an ARN (`arn:PARTITION:SERVICE:REGION:ACCOUNT:…`).
pub fn account_id(arn: &str) -> Option<&str> {
    let mut fields = arn.splitn(6, ':');
    let (Some("arn"), Some(_), Some(_), Some(_), Some(account), Some(_)) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return None;
    };
    (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())).then_some(account)
}

impl From<Credentials> for aws_credential_types::Credentials {
    fn from(credentials: Credentials) -> Self {
        let account_id = credentials.account_id().map(str::to_owned);
        let mut builder = aws_credential_types::Credentials::builder()
            .access_key_id(credentials.access_key_id)
            .secret_access_key(credentials.secret_access_key.into_exposed())
            .session_token(credentials.session_token.into_exposed())
            .expiry(credentials.expiration)
            .provider_name("tokenbridge");
        if let Some(account_id) = account_id {
            builder = builder.account_id(account_id);
        }
        builder.build()
    }
}

/// A client of tokenbridge's `TokenExchange` service.
///
/// Cheap to clone: clones share one HTTP/2 connection, which is made on first
/// use and remade after it breaks. Calls that fail with `UNAVAILABLE` or
/// cannot connect are retried with exponential backoff and jitter (see
/// [`RetryPolicy`]), and so are refusals the server marks retryable with a
/// `google.rpc.RetryInfo` (rate and concurrency limits), after at least the
/// delay it asks for; nothing else is retried.
///
/// ```no_run
/// # async fn example() -> Result<(), tokenbridge_client::Error> {
/// use tokenbridge_client::{
///     Client, Config, CredentialsRequest, IdTokenSource as _, MetadataIdTokenSource,
/// };
///
/// let client = Client::new(&Config::new("https://tokenbridge.example.com"))?;
/// let tokens = MetadataIdTokenSource::new("https://tokenbridge.example.com")?;
/// let credentials = client
///     .get_credentials(
///         &tokens.id_token().await?,
///         &CredentialsRequest::role("arn:aws:iam::111122223333:role/TeamA"),
///     )
///     .await?;
/// println!("{} until {:?}", credentials.access_key_id, credentials.expiration);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    grpc: TokenExchangeClient<Channel>,
    endpoint: String,
    request_timeout: Duration,
    retry: RetryPolicy,
}

impl Client {
    /// A client for `config`. Reads the CA and client certificate files now;
    /// connects on the first call.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (the connection is driven by a background
    /// task).
    pub fn new(config: &Config) -> Result<Self, Error> {
        Ok(Self::with_endpoint(config, &config.tonic_endpoint()?))
    }

    /// A client for `config` over `endpoint`, made from it already.
    pub(crate) fn with_endpoint(config: &Config, endpoint: &Endpoint) -> Self {
        Self {
            grpc: TokenExchangeClient::new(endpoint.connect_lazy()),
            endpoint: config.endpoint().trim_end_matches('/').to_owned(),
            request_timeout: config.request_timeout(),
            retry: config.retry(),
        }
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Exchanges `id_token` for temporary AWS credentials.
    #[instrument(skip_all, fields(endpoint = %self.endpoint, role_arn = request.role_arn.as_deref().unwrap_or("")))]
    pub async fn get_credentials(
        &self,
        id_token: &IdToken,
        request: &CredentialsRequest,
    ) -> Result<Credentials, Error> {
        let mut authorization = MetadataValue::try_from(format!("Bearer {}", id_token.expose()))
            .map_err(|_| Error::config("the ID token is not a valid header value"))?;
        authorization.set_sensitive(true);
        let message = GetCredentialsRequest {
            role_arn: request.role_arn.clone().unwrap_or_default(),
            duration_seconds: request.duration_seconds.unwrap_or(0),
        };
        let attempt = || {
            let mut call = tonic::Request::new(message.clone());
            call.metadata_mut()
                .insert("authorization", authorization.clone());
            let mut grpc = self.grpc.clone();
            async move {
                grpc.get_credentials(call)
                    .await
                    .map_err(|status| self.classify(&status))
            }
        };
        // Retried: UNAVAILABLE and connection failures, and whatever the
        // server marks retryable with RetryInfo (a rate or concurrency
        // limit), waiting at least the delay it asks for. Nothing else.
        let response = attempt
            .retry(self.retry.backoff())
            .when(|e| e.is_unavailable() || e.server_retry_after().is_some())
            .adjust(|e, next| next.map(|wait| wait.max(e.server_retry_after().unwrap_or_default())))
            .notify(|error, wait| {
                debug!(error = %error, wait_ms = wait.as_millis() as u64, "retrying GetCredentials");
            })
            .await?
            .into_inner();
        self.credentials(response)
    }

    /// Turns a failed call into an [`Error`]: a status that came from the
    /// server is a refusal; one made locally (it has a source) is a
    /// connection problem or a timeout.
    fn classify(&self, status: &Status) -> Error {
        let Some(source) = status.source() else {
            return Error::Refused {
                code: status.code(),
                message: one_line(status.message()),
                retry_after: tokenbridge_proto::status::retry_after(status),
            };
        };
        if status.code() == Code::Cancelled && status.message().contains("Timeout expired") {
            return Error::Timeout {
                endpoint: self.endpoint.clone(),
                timeout: self.request_timeout,
            };
        }
        let mut reason = chain(source);
        if reason.is_empty() {
            reason = one_line(status.message());
        }
        Error::Connect {
            endpoint: self.endpoint.clone(),
            reason,
        }
    }

    fn credentials(&self, response: GetCredentialsResponse) -> Result<Credentials, Error> {
        let missing = |what: &str| Error::InvalidResponse {
            endpoint: self.endpoint.clone(),
            missing: what.to_owned(),
        };
        if response.access_key_id.is_empty() {
            return Err(missing("an access key ID"));
        }
        if response.secret_access_key.is_empty() {
            return Err(missing("a secret access key"));
        }
        if response.session_token.is_empty() {
            return Err(missing("a session token"));
        }
        let expiration = response
            .expiration
            .and_then(|t| u64::try_from(t.seconds).ok())
            .filter(|&seconds| seconds > 0)
            .ok_or_else(|| missing("an expiration"))?;
        Ok(Credentials {
            access_key_id: response.access_key_id,
            secret_access_key: Secret::new(response.secret_access_key),
            session_token: Secret::new(response.session_token),
            expiration: UNIX_EPOCH + Duration::from_secs(expiration),
            assumed_role_arn: response.assumed_role_arn,
            role_session_name: response.role_session_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_id_from_arns() {
        assert_eq!(
            account_id("arn:aws:sts::123456789012:assumed-role/R/s"),
            Some("123456789012")
        );
        assert_eq!(
            account_id("arn:aws-cn:sts::123456789012:assumed-role/R/s"),
            Some("123456789012")
        );
        assert_eq!(account_id("arn:aws:sts::12345:assumed-role/R/s"), None);
        assert_eq!(account_id("arn:aws:sts::123456789012"), None);
        assert_eq!(account_id(""), None);
    }

    #[test]
    fn debug_shows_no_secret() {
        let credentials = Credentials::new(
            "ASIAEXAMPLE",
            Secret::new("the-secret-key".into()),
            Secret::new("the-session-token".into()),
            UNIX_EPOCH,
            "arn:aws:sts::123456789012:assumed-role/R/s",
            "s",
        );
        let shown = format!("{credentials:?}");
        assert!(shown.contains("ASIAEXAMPLE"), "{shown}");
        assert!(!shown.contains("the-secret-key"), "{shown}");
        assert!(!shown.contains("the-session-token"), "{shown}");
    }

    #[test]
    fn converts_to_aws_credentials_with_account() {
        let expiration = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let credentials = Credentials::new(
            "ASIAEXAMPLE",
            Secret::new("k".into()),
            Secret::new("t".into()),
            expiration,
            "arn:aws:sts::123456789012:assumed-role/R/s",
            "s",
        );
        let aws: aws_credential_types::Credentials = credentials.into();
        assert_eq!(aws.access_key_id(), "ASIAEXAMPLE");
        assert_eq!(aws.session_token(), Some("t"));
        assert_eq!(aws.expiry(), Some(expiration));
        assert_eq!(aws.account_id().map(|a| a.as_str()), Some("123456789012"));
    }
}
