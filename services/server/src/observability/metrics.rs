//! Metrics, recorded through OpenTelemetry and exported in the Prometheus
//! text format at `/metrics` on the admin listener ([`crate::observability::probes`]).
//!
//! Every instrument is created once, when the service is built, and shared
//! (`Arc<Metrics>`) by the subsystems that record into it. Labels are a
//! small, fixed set of `&'static str` values (outcome, error kind, status
//! code, STS region from the config, limit): recording allocates nothing,
//! and never is a subject, an email or a role ARN a label (those go to the
//! audit log, [`crate::observability::audit`]).
//!
//! | metric | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `tokenbridge_exchanges_total` | counter | `outcome`, `code` | `GetCredentials` calls answered, by what happened ([`crate::Error::kind`], or `issued`) and gRPC status code |
//! | `tokenbridge_exchange_duration_seconds` | histogram | `code` | `GetCredentials`, from the call reaching the service to its answer (audit record included) |
//! | `tokenbridge_sts_requests_total` | counter | `region`, `outcome` | `AssumeRoleWithWebIdentity` per region tried: `ok`, `throttled`, `unavailable`, `idp_unreachable`, `rejected`, `timeout` |
//! | `tokenbridge_sts_request_duration_seconds` | histogram | `region`, `outcome` | the same calls' duration, the SDK's own retries included |
//! | `tokenbridge_cache_lookups_total` | counter | `result` | credentials cache: `hit`, `miss` (went to STS, or waited for a concurrent caller's STS call), `bypass` (cache off, or a duration too short to cache) |
//! | `tokenbridge_cache_refreshes_total` | counter | `result` | background refreshes ahead of expiry: `ok`, `error` |
//! | `tokenbridge_cache_entries` | gauge | | credentials cached now |
//! | `tokenbridge_jwks_fetches_total` | counter | `result` | fetches of Google's keys (start-up, background refresh, unknown `kid`): `ok`, `error` |
//! | `tokenbridge_jwks_key_age_seconds` | gauge | | time since the keys in use were fetched (absent before the first fetch) |
//! | `tokenbridge_jwks_keys_stale` | gauge | | 1 while the keys in use are past their `max-age` (refreshes failing), else 0 |
//! | `tokenbridge_jwks_keys` | gauge | | signing keys in the set in use (absent before the first fetch) |
//! | `tokenbridge_policy_revision` | gauge | | with `[store]`: the store revision of the policy in force on this replica |
//! | `tokenbridge_policy_store_revision` | gauge | | with `[store]`: the store's latest revision this replica has learned of |
//! | `tokenbridge_policy_lag_seconds` | gauge | | with `[store]`: how long this replica has been behind that revision (0 in step) |
//! | `tokenbridge_rate_limited_total` | counter | `limit` | calls refused by a limit: `peer`, `subject` (rate limits), `concurrency` (shed) |
//! | `tokenbridge_audit_records_total` | counter | `result` | audit records: `written`, `failed` (an issued call then failed closed with UNAVAILABLE), and for refusals also `queued` (for the blocking thread; no one waits) `summarised` (only counted: the sink was behind; see the `tokenbridge.audit_summary` line) and `lost` (queued, then the sink failed) |
//! | `tokenbridge_audit_writes_total` | counter | `path` | writes of audit records: `inline` (a pipe or socket with room, by the calling task) or `blocking` (a round on the blocking thread: a file, or a pipe or socket whose reader is behind) |

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry::{
    KeyValue,
    metrics::{Counter, Histogram, Meter, MeterProvider as _},
};
use opentelemetry_sdk::metrics::SdkMeterProvider;

/// How fresh a set of signing keys is, for the `tokenbridge_jwks_*` gauges
/// (Google's key set implements it; metrics need not know its type).
pub trait KeyFreshness: Send + Sync {
    /// Time since the keys in use were fetched (`None` before the first).
    fn key_age(&self) -> Option<Duration>;
    /// Whether the keys in use are past their `max-age`.
    fn is_stale(&self) -> bool;
    /// How many keys are in the set in use (`None` before the first fetch).
    fn key_count(&self) -> Option<usize>;
}

/// How the policy in force follows the store, for the
/// `tokenbridge_policy_*` gauges (the app's store follower implements it).
pub trait PolicyFreshness: Send + Sync {
    /// The store revision of the policy in force and the store's latest
    /// revision learned of (`None` before the first load).
    fn revisions(&self) -> Option<(u64, u64)>;
    /// How long the policy in force has been behind the store's latest
    /// revision (zero when in step; `None` before the first load).
    fn lag(&self) -> Option<Duration>;
}

/// Boundaries (seconds) of the latency histograms: a cached exchange takes
/// tens of microseconds, an STS call tens to hundreds of milliseconds, and
/// the slowest allowed call a few seconds.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Why the Prometheus exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the Prometheus exporter: {0}")]
pub struct MetricsError(String);

/// The service's instruments.
pub struct Metrics {
    meter: Meter,
    exporter: Option<Exporter>,
    /// Observable gauges stay registered while their handle lives.
    gauges: Mutex<Vec<opentelemetry::metrics::ObservableGauge<f64>>>,
    exchanges: Counter<u64>,
    exchange_duration: Histogram<f64>,
    sts_requests: Counter<u64>,
    sts_duration: Histogram<f64>,
    cache_lookups: Counter<u64>,
    cache_refreshes: Counter<u64>,
    jwks_fetches: Counter<u64>,
    rate_limited: Counter<u64>,
    audit_records: Counter<u64>,
    audit_writes: Counter<u64>,
}

struct Exporter {
    registry: prometheus::Registry,
    /// Kept alive with the instruments; shut down when dropped.
    _provider: SdkMeterProvider,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("exported", &self.exporter.is_some())
            .finish_non_exhaustive()
    }
}

/// One series of a metric family, as [`Metrics::samples`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Its labels, name and value.
    pub labels: Vec<(String, String)>,
    /// Its value (a counter's total or a gauge's reading).
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if it has one.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How a credentials cache lookup went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheLookup {
    /// Served from the cache.
    Hit,
    /// Not cached: STS was called (or a concurrent caller's call awaited).
    Miss,
    /// The cache was not used (off, or a duration too short to cache).
    Bypass,
}

impl CacheLookup {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheLookup::Hit => "hit",
            CacheLookup::Miss => "miss",
            CacheLookup::Bypass => "bypass",
        }
    }
}

fn ok_or_error(ok: bool) -> [KeyValue; 1] {
    [KeyValue::new("result", if ok { "ok" } else { "error" })]
}

impl Metrics {
    /// Instruments that record nothing: for components used without the
    /// service around them (benchmarks, unit tests).
    pub fn disabled() -> Arc<Self> {
        let provider = opentelemetry::metrics::noop::NoopMeterProvider::new();
        Arc::new(Self::with_meter(provider.meter("tokenbridge"), None))
    }

    /// Instruments exported through a Prometheus registry of their own (one
    /// per service, so that several services in one process, as in tests,
    /// each count their own traffic).
    pub fn prometheus() -> Result<Arc<Self>, MetricsError> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .scope_info_enabled(false)
            .build()
            .map_err(|e| MetricsError(e.to_string()))?;
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        let meter = provider.meter("tokenbridge");
        Ok(Arc::new(Self::with_meter(
            meter,
            Some(Exporter {
                registry,
                _provider: provider,
            }),
        )))
    }

    fn with_meter(meter: Meter, exporter: Option<Exporter>) -> Self {
        let latency = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build()
        };
        let counter = |name: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_description(description)
                .build()
        };
        Self {
            exchanges: counter(
                "tokenbridge_exchanges",
                "GetCredentials calls answered, by outcome and gRPC status code",
            ),
            exchange_duration: latency(
                "tokenbridge_exchange_duration",
                "GetCredentials latency, by gRPC status code",
            ),
            sts_requests: counter(
                "tokenbridge_sts_requests",
                "AssumeRoleWithWebIdentity calls per region tried, by outcome",
            ),
            sts_duration: latency(
                "tokenbridge_sts_request_duration",
                "AssumeRoleWithWebIdentity latency per region tried (SDK retries included)",
            ),
            cache_lookups: counter(
                "tokenbridge_cache_lookups",
                "Credentials cache lookups: hit, miss, bypass",
            ),
            cache_refreshes: counter(
                "tokenbridge_cache_refreshes",
                "Background refreshes of cached credentials ahead of expiry",
            ),
            jwks_fetches: counter(
                "tokenbridge_jwks_fetches",
                "Fetches of Google's signing keys",
            ),
            rate_limited: counter(
                "tokenbridge_rate_limited",
                "Calls refused by a rate or concurrency limit",
            ),
            audit_records: counter(
                "tokenbridge_audit_records",
                "Audit records written, or failed (the call then failed closed)",
            ),
            audit_writes: counter(
                "tokenbridge_audit_writes",
                "Batches of audit records written: inline (without blocking) or on a blocking thread",
            ),
            meter,
            exporter,
            gauges: Mutex::new(Vec::new()),
        }
    }

    /// The exposition of every metric in the Prometheus text format
    /// (version 0.0.4); empty for [`disabled`](Self::disabled) metrics.
    pub fn encode(&self) -> String {
        use prometheus::Encoder as _;
        let Some(e) = &self.exporter else {
            return String::new();
        };
        let mut out = Vec::new();
        if let Err(err) = prometheus::TextEncoder::new().encode(&e.registry.gather(), &mut out) {
            tracing::warn!(error = %err, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// A `GetCredentials` call answered: `outcome` is `issued` or an
    /// [`Error::kind`](crate::Error::kind), `code` a gRPC code name.
    pub fn exchange(&self, outcome: &'static str, code: &'static str, elapsed: Option<Duration>) {
        self.exchanges.add(
            1,
            &[
                KeyValue::new("outcome", outcome),
                KeyValue::new("code", code),
            ],
        );
        if let Some(elapsed) = elapsed {
            self.exchange_duration
                .record(elapsed.as_secs_f64(), &[KeyValue::new("code", code)]);
        }
    }

    /// One `AssumeRoleWithWebIdentity` in `region` (a configured name).
    pub fn sts_request(&self, region: &str, outcome: &'static str, elapsed: Duration) {
        let labels = [
            KeyValue::new("region", region.to_owned()),
            KeyValue::new("outcome", outcome),
        ];
        self.sts_requests.add(1, &labels);
        self.sts_duration.record(elapsed.as_secs_f64(), &labels);
    }

    /// A credentials cache lookup.
    pub fn cache_lookup(&self, lookup: CacheLookup) {
        self.cache_lookups
            .add(1, &[KeyValue::new("result", lookup.as_str())]);
    }

    /// A background refresh of cached credentials.
    pub fn cache_refresh(&self, ok: bool) {
        self.cache_refreshes.add(1, &ok_or_error(ok));
    }

    /// A fetch of Google's keys.
    pub fn jwks_fetch(&self, ok: bool) {
        self.jwks_fetches.add(1, &ok_or_error(ok));
    }

    /// A call refused by a limit: `peer`, `subject` or `concurrency`.
    pub fn rate_limited(&self, limit: &'static str) {
        self.rate_limited.add(1, &[KeyValue::new("limit", limit)]);
    }

    /// An audit record: `written`, `failed`, `queued`, `summarised` or
    /// `lost`.
    pub fn audit_record(&self, result: &'static str) {
        self.audit_records
            .add(1, &[KeyValue::new("result", result)]);
    }

    /// One write of audit records by `path`: `inline` (by the calling
    /// task, without blocking) or `blocking` (a round on the blocking
    /// thread).
    pub fn audit_write(&self, path: &'static str) {
        self.audit_writes.add(1, &[KeyValue::new("path", path)]);
    }

    /// Reports the age and staleness of `jwks`'s keys at every scrape.
    pub fn observe_jwks<K: KeyFreshness + 'static>(&self, jwks: &Arc<K>) {
        let age = Arc::downgrade(jwks);
        let stale = Arc::downgrade(jwks);
        let count = Arc::downgrade(jwks);
        let gauges = [
            self.meter
                .f64_observable_gauge("tokenbridge_jwks_key_age")
                .with_unit("s")
                .with_description("Time since Google's signing keys in use were fetched")
                .with_callback(move |o| {
                    if let Some(age) = age.upgrade().and_then(|j| j.key_age()) {
                        o.observe(age.as_secs_f64(), &[]);
                    }
                })
                .build(),
            self.meter
                .f64_observable_gauge("tokenbridge_jwks_keys_stale")
                .with_description(
                    "1 while Google's signing keys in use are past their max-age, else 0",
                )
                .with_callback(move |o| {
                    if let Some(j) = stale.upgrade() {
                        o.observe(if j.is_stale() { 1.0 } else { 0.0 }, &[]);
                    }
                })
                .build(),
            self.meter
                .f64_observable_gauge("tokenbridge_jwks_keys")
                .with_description("Signing keys in Google's key set in use")
                .with_callback(move |o| {
                    if let Some(n) = count.upgrade().and_then(|j| j.key_count()) {
                        o.observe(n as f64, &[]);
                    }
                })
                .build(),
        ];
        self.keep(gauges);
    }

    /// Reports how many credentials are cached, as `entries` says (`None`:
    /// the cache is gone), at every scrape.
    pub fn observe_cache(&self, entries: impl Fn() -> Option<u64> + Send + Sync + 'static) {
        let gauge = self
            .meter
            .f64_observable_gauge("tokenbridge_cache_entries")
            .with_description("Credentials cached now")
            .with_callback(move |o| {
                if let Some(n) = entries() {
                    o.observe(n as f64, &[]);
                }
            })
            .build();
        self.keep([gauge]);
    }

    /// Reports the revision of the policy in force, the store's, and the
    /// lag between them, as `policy` says, at every scrape.
    pub fn observe_policy<P: PolicyFreshness + 'static>(&self, policy: &Arc<P>) {
        let (in_force, store, lag) = (
            Arc::downgrade(policy),
            Arc::downgrade(policy),
            Arc::downgrade(policy),
        );
        let gauges = [
            self.meter
                .f64_observable_gauge("tokenbridge_policy_revision")
                .with_description("Store revision of the policy in force on this replica")
                .with_callback(move |o| {
                    if let Some((r, _)) = in_force.upgrade().and_then(|p| p.revisions()) {
                        o.observe(r as f64, &[]);
                    }
                })
                .build(),
            self.meter
                .f64_observable_gauge("tokenbridge_policy_store_revision")
                .with_description("The store's latest revision this replica has learned of")
                .with_callback(move |o| {
                    if let Some((_, r)) = store.upgrade().and_then(|p| p.revisions()) {
                        o.observe(r as f64, &[]);
                    }
                })
                .build(),
            self.meter
                .f64_observable_gauge("tokenbridge_policy_lag")
                .with_unit("s")
                .with_description(
                    "How long the policy in force has been behind the store's latest revision",
                )
                .with_callback(move |o| {
                    if let Some(l) = lag.upgrade().and_then(|p| p.lag()) {
                        o.observe(l.as_secs_f64(), &[]);
                    }
                })
                .build(),
        ];
        self.keep(gauges);
    }

    /// The samples of the metric family `name` as `/metrics` exposes them
    /// (e.g. `tokenbridge_sts_requests_total`): each series' labels and
    /// value, read from the same registry at this moment (observable gauges
    /// are observed for it). Empty for [`disabled`](Self::disabled) metrics
    /// or a family with no sample yet. For the console's status page.
    pub fn samples(&self, name: &str) -> Vec<Sample> {
        let Some(e) = &self.exporter else {
            return Vec::new();
        };
        use prometheus::proto::MetricType;
        e.registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| {
                let kind = f.get_field_type();
                f.get_metric().iter().map(move |m| Sample {
                    labels: m
                        .get_label()
                        .iter()
                        .map(|l| (l.name().to_owned(), l.value().to_owned()))
                        .collect(),
                    value: match kind {
                        MetricType::COUNTER => m.get_counter().get_value(),
                        MetricType::GAUGE => m.get_gauge().get_value(),
                        _ => 0.0,
                    },
                })
            })
            .collect()
    }

    fn keep(&self, gauges: impl IntoIterator<Item = opentelemetry::metrics::ObservableGauge<f64>>) {
        match self.gauges.lock() {
            Ok(mut g) => g.extend(gauges),
            Err(poisoned) => poisoned.into_inner().extend(gauges),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::prometheus().unwrap();
        m.exchange("issued", "OK", Some(Duration::from_millis(3)));
        m.sts_request("us-east-1", "throttled", Duration::from_millis(20));
        m.cache_lookup(CacheLookup::Hit);
        m.rate_limited("peer");
        let text = m.encode();
        for line in [
            r#"tokenbridge_exchanges_total{code="OK",outcome="issued"} 1"#,
            r#"tokenbridge_exchange_duration_seconds_count{code="OK"} 1"#,
            r#"tokenbridge_sts_requests_total{outcome="throttled",region="us-east-1"} 1"#,
            r#"tokenbridge_cache_lookups_total{result="hit"} 1"#,
            r#"tokenbridge_rate_limited_total{limit="peer"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(!text.contains("otel_scope"), "{text}");
        assert!(Metrics::disabled().encode().is_empty());
    }
}
