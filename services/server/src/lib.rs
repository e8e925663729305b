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
//!   in SQLite or PostgreSQL; [`console`]: the web console's view of this
//!   replica (crate `tokenbridge-console`).
//! * [`observability`]: metrics, the metrics and probes listener, the audit
//!   log, traces.
//! * [`config`]: the config file, assembled from each component's section
//!   type, problems with file and line.
//! * [`app`]: wiring, health ([`health`]), reflection, graceful shutdown.

#![forbid(unsafe_code)]

pub mod app;
pub mod aws;
pub mod config;
pub mod console;
pub mod error;
pub mod exchange;
pub mod google;
pub mod health;
pub mod issuer;
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
    let policy = policy.and_then(|p| issuer_mode_problems(&config, &p).map_or(Ok(p), Err));
    match (policy, tls) {
        (Ok(policy), None) => Ok((config, policy)),
        (Ok(_), Some(problem)) => Err(vec![problem]),
        (Err(mut problems), tls) => {
            problems.extend(tls);
            Err(problems)
        }
    }
}

/// Bindings that need issuer mode on a server without `[issuer]`: refused
/// at load, as such a call would be refused (never passed through).
fn issuer_mode_problems(config: &Config, policy: &PolicySnapshot) -> Option<Vec<Problem>> {
    if config.issuer.is_some() {
        return None;
    }
    let problems: Vec<Problem> = policy
        .bindings()
        .filter(|b| b.issuer == Some(true) || b.session_identity().needs_issuer())
        .map(|b| Problem {
            file: config.policy_file.clone().unwrap_or_default(),
            line: None,
            reason: format!(
                "binding `{}`: needs issuer mode (issuer = true, session tags or a source identity), but the config has no [issuer] section",
                b.name
            ),
        })
        .collect();
    (!problems.is_empty()).then_some(problems)
}
