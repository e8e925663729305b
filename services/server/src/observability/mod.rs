//! What the service tells its operators: Prometheus [`metrics`], the
//! metrics and probes HTTP listener ([`probes`], `[admin]` in the config),
//! the [`audit`] log, and logs and OpenTelemetry traces ([`telemetry`]).

pub mod audit;
pub mod metrics;
pub mod probes;
pub mod telemetry;
