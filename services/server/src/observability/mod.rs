//! What the service tells its operators: Prometheus [`metrics`], the
//! metrics and probes HTTP listener ([`probes`], `[admin]` in the config),
//! the [`audit`] log, and logs and OpenTelemetry traces ([`telemetry`]);
//! how far this replica's policy is behind the store ([`policy_sync`]).

pub mod audit;
pub mod metrics;
pub mod policy_sync;
pub mod probes;
pub mod telemetry;
