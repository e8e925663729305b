//! tokenbridge server: exchanges Google-signed OIDC ID tokens for temporary
//! AWS credentials over gRPC.
//!
//! One folder per concept; the policy model itself (bindings, the decision,
//! trust policies) is the `tokenbridge-policy` crate, with no I/O.
//!
//! * [`exchange`]: verify → policy → STS, free of transport types.
//! * [`google`]: ID token verification ([`google::jwt`]) and Google's keys
//!   ([`google::jwks`]).
//! * [`aws`]: `AssumeRoleWithWebIdentity` ([`aws::sts`]) and the
//!   credentials cache ([`aws::cache`]).
//! * [`transport`]: the `TokenExchange` gRPC service and the single mapping
//!   from [`Error`] to status codes ([`transport::grpc`]), rate, concurrency,
//!   deadline and size limits ([`transport::limits`]), TLS
//!   ([`transport::tls`]).
//! * [`policy_admin`]: the `PolicyAdmin` gRPC service; [`store`]: bindings
//!   in SQLite or PostgreSQL.
//! * [`observability`]: metrics, the metrics and probes listener, the audit
//!   log, traces.
//! * [`config`]: the config file, assembled from each component's section
//!   type, problems with file and line.
//! * [`app`]: wiring, health ([`health`]), reflection, graceful shutdown.

#![forbid(unsafe_code)]

pub mod app;
pub mod aws;
pub mod config;
pub mod error;
pub mod exchange;
pub mod google;
pub mod health;
pub mod observability;
pub mod policy_admin;
pub mod store;
pub mod transport;

pub use config::Config;
pub use error::Error;
pub use tokenbridge_policy::PolicySnapshot;

use std::path::Path;

use tokenbridge_policy::Problem;

/// Loads the config at `path` and the policy file it names, returning every
/// problem found in either (and in the TLS files it names, if any). With
/// `[store]` the policy is empty here: [`app::start`] loads it from the store.
pub fn load(path: &Path) -> Result<(Config, PolicySnapshot), Vec<Problem>> {
    let config = Config::load(path)?;
    let tls = config.tls.as_ref().and_then(|t| {
        transport::tls::load(t).err().map(|e| Problem {
            file: e.path(t).to_path_buf(),
            line: None,
            reason: e.to_string(),
        })
    });
    let policy = match &config.policy_file {
        Some(file) => PolicySnapshot::load(file),
        None => Ok(PolicySnapshot::default()),
    };
    match (policy, tls) {
        (Ok(policy), None) => Ok((config, policy)),
        (Ok(_), Some(problem)) => Err(vec![problem]),
        (Err(mut problems), tls) => {
            problems.extend(tls);
            Err(problems)
        }
    }
}
