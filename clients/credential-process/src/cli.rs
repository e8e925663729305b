//! The command line: `process` and `serve`, each flag also from the
//! environment.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use tokenbridge_client::{Config, CredentialsRequest, RetryPolicy};

const EXAMPLE: &str = "\
AWS config (~/.aws/config) of a workload on Google Cloud (GCE, GKE, Cloud Run):

  [profile TeamA-S3ReadOnlyAccess]
  region = us-east-1
  credential_process = tokenbridge-cred process --endpoint https://tokenbridge.example.com --audience https://tokenbridge.example.com --role-arn arn:aws:iam::111122223333:role/RoleForAccessFromGCPTeamA --cache-dir /home/me/.cache/tokenbridge

  $ aws sts get-caller-identity --profile TeamA-S3ReadOnlyAccess

For SDKs or containers that use the container credentials provider instead:

  $ tokenbridge-cred serve --endpoint https://tokenbridge.example.com \\
      --audience https://tokenbridge.example.com \\
      --role-arn arn:aws:iam::111122223333:role/RoleForAccessFromGCPTeamA --listen 127.0.0.1:9911
  AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:9911/credentials
  AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=/tmp/tokenbridge-cred-…/token

  and give the workload those two environment variables.

Environment: every flag that shows [env: …] can come from that variable.
GCE_METADATA_HOST (host:port) replaces metadata.google.internal. RUST_LOG sets
the log level on stderr (default: off for `process`, info for `serve`); no
level logs a token, a secret access key or a session token.

Exit status: 0 success; 1 a step failed (metadata server, connection,
tokenbridge's refusal); 64 bad flags or configuration. On failure stdout is
empty and stderr has one line naming the step and the reason.";

/// AWS credentials for Google Cloud workloads, through tokenbridge.
///
/// Asks the metadata server for the workload's Google ID token, exchanges it
/// at tokenbridge for temporary AWS credentials, and hands them to AWS tools:
/// as `credential_process` output (`process`) or from a local container
/// credentials endpoint (`serve`).
#[derive(Debug, Parser)]
#[command(name = "tokenbridge-cred", version, after_help = EXAMPLE, args_override_self = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print credentials as AWS `credential_process` JSON on stdout.
    #[command(after_help = EXAMPLE, args_override_self = true)]
    Process(ProcessArgs),
    /// Serve credentials on loopback in the ECS/EKS container credentials
    /// format, refreshing them ahead of expiry.
    #[command(after_help = EXAMPLE, args_override_self = true)]
    Serve(ServeArgs),
}

/// What both subcommands need.
#[derive(Debug, Args)]
pub struct Common {
    /// tokenbridge's URL: https://host[:port], or http://host:port for
    /// loopback and TLS-terminating sidecars.
    #[arg(long, env = "TOKENBRIDGE_ENDPOINT", value_name = "URL")]
    pub endpoint: String,

    /// The audience of the ID token: one of tokenbridge's configured
    /// audiences.
    #[arg(long, env = "TOKENBRIDGE_AUDIENCE", value_name = "AUD")]
    pub audience: String,

    /// The IAM role to assume (default: the service account's only bound
    /// role).
    #[arg(long, env = "TOKENBRIDGE_ROLE_ARN", value_name = "ARN")]
    pub role_arn: Option<String>,

    /// How long the credentials should last (default: the binding's
    /// default).
    #[arg(long, env = "TOKENBRIDGE_DURATION_SECONDS", value_name = "900..=43200",
          value_parser = clap::value_parser!(u32).range(900..=43200))]
    pub duration_seconds: Option<u32>,

    /// Also trust the CA certificates in this PEM file (https:// only).
    #[arg(long, env = "TOKENBRIDGE_CA_FILE", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,

    /// Allow http:// to a host that is not loopback (the ID token goes out
    /// and the AWS secret key comes back unencrypted): only for a network
    /// you trust, e.g. inside a cluster behind a NetworkPolicy.
    #[arg(long, env = "TOKENBRIDGE_INSECURE_HTTP")]
    pub insecure_http: bool,

    /// Client certificate chain (PEM) for mutual TLS.
    #[arg(
        long,
        env = "TOKENBRIDGE_CLIENT_CERT",
        value_name = "PEM",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,

    /// Private key (PEM) of --client-cert.
    #[arg(
        long,
        env = "TOKENBRIDGE_CLIENT_KEY",
        value_name = "PEM",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,

    /// The metadata server (default: metadata.google.internal).
    #[arg(long, env = "GCE_METADATA_HOST", value_name = "HOST:PORT")]
    pub metadata_host: Option<String>,

    /// Time limit for the metadata server's answer.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub metadata_timeout: Duration,

    /// Time limit for connecting to tokenbridge (TCP, TLS, HTTP/2).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Time limit for getting credentials, all steps and retries included
    /// (AWS SDKs give credential_process 5 s at most).
    #[arg(long, value_name = "DURATION", default_value = "4s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

impl Common {
    /// The client configuration these flags describe.
    pub fn client_config(&self) -> Config {
        let mut config = Config::new(self.endpoint.clone())
            .with_insecure_http(self.insecure_http)
            .with_connect_timeout(self.connect_timeout)
            .with_request_timeout(self.timeout)
            .with_retry(RetryPolicy::new(
                2,
                Duration::from_millis(100),
                Duration::from_millis(500),
            ));
        if let Some(path) = &self.ca_file {
            config = config.with_ca_file(path);
        }
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            config = config.with_client_identity(cert, key);
        }
        config
    }

    /// The request these flags describe.
    pub fn request(&self) -> CredentialsRequest {
        CredentialsRequest {
            role_arn: self.role_arn.clone().filter(|arn| !arn.is_empty()),
            duration_seconds: self.duration_seconds,
        }
    }
}

/// `process`.
#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// Flags both subcommands take.
    #[command(flatten)]
    pub common: Common,

    /// Cache credentials in this directory (created 0700) and reuse them
    /// while more than 15 minutes remain; shared by all invocations.
    #[arg(long, env = "TOKENBRIDGE_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Flags both subcommands take.
    #[command(flatten)]
    pub common: Common,

    /// Loopback address to listen on (port 0: any free port).
    #[arg(
        long,
        env = "TOKENBRIDGE_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:0"
    )]
    pub listen: SocketAddr,

    /// The value clients must send in `Authorization`; default: 32 random
    /// bytes. Never printed: it is written to --token-file.
    #[arg(
        long,
        env = "TOKENBRIDGE_AUTHORIZATION_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub authorization_token: Option<String>,

    /// Where to write the authorization token (mode 0600, replaced if it
    /// exists), for the SDKs' AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE;
    /// default: a new private directory (0700) under the temporary directory.
    #[arg(long, env = "TOKENBRIDGE_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<std::path::PathBuf>,
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn process_flags_parse() {
        let cli = Cli::try_parse_from([
            "tokenbridge-cred",
            "process",
            "--endpoint",
            "http://127.0.0.1:1",
            "--audience",
            "aud",
            "--duration-seconds",
            "3600",
            "--timeout",
            "3s",
        ])
        .unwrap();
        let Command::Process(args) = cli.command else {
            panic!("process expected")
        };
        assert_eq!(args.common.duration_seconds, Some(3600));
        assert_eq!(args.common.timeout, Duration::from_secs(3));
        assert_eq!(args.common.request().role_arn, None);
    }

    #[test]
    fn a_later_flag_overrides_an_earlier_one() {
        let cli = Cli::try_parse_from([
            "tokenbridge-cred",
            "process",
            "--endpoint",
            "http://127.0.0.1:1",
            "--audience",
            "a",
            "--audience",
            "b",
        ])
        .unwrap();
        let Command::Process(args) = cli.command else {
            panic!("process expected")
        };
        assert_eq!(args.common.audience, "b");
    }

    #[test]
    fn duration_outside_sts_limits_is_refused() {
        let error = Cli::try_parse_from([
            "tokenbridge-cred",
            "process",
            "--endpoint",
            "http://127.0.0.1:1",
            "--audience",
            "aud",
            "--duration-seconds",
            "60",
        ])
        .unwrap_err();
        assert!(error.to_string().contains("900..=43200"), "{error}");
    }

    #[test]
    fn help_shows_a_complete_aws_config_example() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("[profile TeamA-S3ReadOnlyAccess]"), "{help}");
        assert!(help.contains("credential_process = tokenbridge-cred process --endpoint"));
        assert!(help.contains("AWS_CONTAINER_CREDENTIALS_FULL_URI"));
    }
}
