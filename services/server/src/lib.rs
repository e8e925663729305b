//! tokenbridge server: exchanges Google-signed OIDC ID tokens for temporary
//! AWS credentials over gRPC.
//!
//! Module map (transport at the edges, the decision in the middle):
//!
//! * [`grpc`]: the `TokenExchange` service, `authorization` metadata, and the
//!   single mapping from [`Error`] to gRPC status codes.
//! * [`exchange`]: verify → policy → STS, free of transport types.
//! * [`jwt`] and [`jwks`]: ID token verification and Google's keys.
//! * [`policy`]: the policy table and its hash indexes; [`bindings`]: the
//!   full bindings (conditions, session policies, the deny list) and the
//!   decision over them; [`store`]: bindings in SQLite or PostgreSQL;
//!   [`policy_admin`]: the `PolicyAdmin` gRPC service; [`trust`]: IAM trust
//!   policies for bindings.
//! * [`sts`]: `AssumeRoleWithWebIdentity` through `aws-sdk-sts`.
//! * [`config`] and [`diag`]: the config file and problems with file and line.
//! * [`limits`]: rate limits (per peer, per subject), concurrency, deadline
//!   and size limits.
//! * [`tls`]: rustls from PEM files, reloaded when they change; mTLS.
//! * [`app`]: wiring, health, reflection, graceful shutdown.
//! * [`metrics`], [`admin`], [`audit`], [`telemetry`]: observability:
//!   Prometheus metrics and probes on the admin listener, the audit log,
//!   logs and OpenTelemetry traces.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod audit;
pub mod bindings;
pub mod cache;
pub mod config;
pub mod diag;
pub mod error;
pub mod exchange;
pub mod grpc;
pub mod health;
pub mod jwks;
pub mod jwt;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod policy_admin;
pub mod secret;
pub mod store;
pub mod sts;
pub mod telemetry;
pub mod tls;
pub mod trust;

pub use bindings::PolicySnapshot;
pub use config::Config;
pub use error::Error;
pub use policy::Policy;

use std::path::Path;

use diag::Problem;

/// Loads the config at `path` and the policy file it names, returning every
/// problem found in either (and in the TLS files it names, if any). With
/// `[store]` the policy is empty here: [`app::start`] loads it from the store.
pub fn load(path: &Path) -> Result<(Config, PolicySnapshot), Vec<Problem>> {
    let config = Config::load(path)?;
    let tls = config.tls.as_ref().and_then(|t| {
        tls::load(t).err().map(|e| Problem {
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
