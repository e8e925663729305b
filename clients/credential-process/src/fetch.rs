//! One credentials fetch, metadata server then tokenbridge, within one time
//! limit; and the one-line failure it can end in.

use std::{fmt, time::Duration};

use tokenbridge_client::{
    Client, Credentials, CredentialsRequest, Error, IdTokenSource as _, MetadataIdTokenSource,
};
use tokio::time::{Instant, timeout_at};
use tracing::instrument;

use crate::cli::Common;

/// Exit status when a step failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit status for bad flags or configuration (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

/// Why the command failed: one line for stderr, and the exit status.
#[derive(Debug)]
pub struct Failure {
    /// What failed and why; one line, never a secret.
    pub message: String,
    /// The exit status.
    pub exit: u8,
}

impl Failure {
    /// A failure of the command line or configuration.
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            exit: EXIT_USAGE,
        }
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        let exit = if matches!(error, Error::Config { .. }) {
            EXIT_USAGE
        } else {
            EXIT_FAILED
        };
        Self {
            message: error.to_string(),
            exit,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Gets credentials: an ID token from the metadata server, exchanged at
/// tokenbridge.
pub struct Fetcher {
    tokens: MetadataIdTokenSource,
    client: Client,
    request: CredentialsRequest,
    timeout: Duration,
}

impl Fetcher {
    /// Sets up both clients from the flags. Must run inside a Tokio runtime.
    pub fn new(common: &Common) -> Result<Self, Failure> {
        let mut tokens = MetadataIdTokenSource::builder(common.audience.clone())
            .timeout(common.metadata_timeout);
        if let Some(host) = &common.metadata_host {
            tokens = tokens.host(host.clone());
        }
        Ok(Self {
            tokens: tokens.build()?,
            client: Client::new(&common.client_config())?,
            request: common.request(),
            timeout: common.timeout,
        })
    }

    /// The role requested (for logs and the container endpoint's `RoleArn`).
    pub fn role_arn(&self) -> Option<&str> {
        self.request.role_arn.as_deref()
    }

    /// Fetches credentials within the `--timeout` limit, naming the step that
    /// ran out of time if it does.
    #[instrument(skip_all)]
    pub async fn fetch(&self) -> Result<Credentials, Failure> {
        let deadline = Instant::now() + self.timeout;
        let limit = format!(
            "no answer within the overall time limit of {} ms (--timeout)",
            self.timeout.as_millis()
        );
        let token = timeout_at(deadline, self.tokens.id_token())
            .await
            .map_err(|_| Error::MetadataUnreachable {
                host: self.tokens.host().to_owned(),
                reason: limit,
            })??;
        let credentials = timeout_at(deadline, self.client.get_credentials(&token, &self.request))
            .await
            .map_err(|_| Error::Timeout {
                endpoint: self.client.endpoint().to_owned(),
                timeout: self.timeout,
            })??;
        Ok(credentials)
    }
}
