//! The audit log's records: one Cloud Logging JSON line per exchange
//! decision ([`Entry`]) and per policy admin call ([`AdminEntry`]).

use std::{
    collections::BTreeSet,
    fmt,
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use humantime::Rfc3339Timestamp;
use serde::{Serialize, Serializer};

use super::Facts;
use crate::{aws::sts::Credentials, observability::telemetry::TraceIds};

/// The `logging.googleapis.com/labels` of every record, to route them.
pub(super) const LABELS: Labels = Labels {
    log: "tokenbridge-audit",
};

/// What a call came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Credentials issued.
    Allow,
    /// Refused: the token, the policy, the request or STS said no.
    Deny,
    /// Failed: an upstream (Google's keys, STS) or this server could not
    /// decide; a retry may succeed.
    Error,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Error => "error",
        }
    }

    /// Cloud Logging's severity for it.
    fn severity(self) -> &'static str {
        match self {
            Decision::Allow => "INFO",
            Decision::Deny => "WARNING",
            Decision::Error => "ERROR",
        }
    }
}

/// One exchange decision, as the transport saw it.
#[derive(Debug)]
pub struct Entry<'a> {
    /// What the call came to.
    pub decision: Decision,
    /// The gRPC status code's name (`OK`, `PERMISSION_DENIED`, …).
    pub code: &'static str,
    /// `issued` or [`crate::Error::kind`].
    pub outcome: &'static str,
    /// The status message (never a secret).
    pub reason: &'a str,
    /// The `role_arn` of the request (empty: the caller's only role).
    pub requested_role_arn: &'a str,
    /// The `duration_seconds` of the request (0: the binding's default).
    pub requested_duration_seconds: u32,
    /// What the exchange established.
    pub facts: &'a Facts,
    /// The credentials handed out, on success.
    pub credentials: Option<&'a Credentials>,
    /// The caller's address.
    pub peer: Option<SocketAddr>,
    /// The call's trace, if it has one.
    pub trace: Option<&'a TraceIds>,
    /// From the call reaching the service to now.
    pub elapsed: Duration,
}

#[derive(Serialize)]
pub(super) struct Labels {
    log: &'static str,
}

/// A value written as a JSON string through its `Display`, straight into
/// the line (no `String` in between: issue 16's per-call allocations).
struct Displayed<T>(T);

impl<T: fmt::Display> Serialize for Displayed<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// Cloud Logging's trace name: `projects/PROJECT/traces/TRACE_ID`, or the
/// trace ID alone when the project is not known.
struct TraceName<'a> {
    project: Option<&'a str>,
    trace_id: &'a str,
}

impl fmt::Display for TraceName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.project {
            Some(project) => write!(f, "projects/{project}/traces/{}", self.trace_id),
            None => f.write_str(self.trace_id),
        }
    }
}

/// The matching bindings, as a JSON array (empty when there were none).
struct Bindings<'a>(Option<&'a BTreeSet<String>>);

impl Serialize for Bindings<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.into_iter().flatten())
    }
}

/// A record's line: serialised into a buffer sized for a typical exchange
/// record (about 600 bytes), so that it is not grown on the way, newline
/// included.
fn line_of<T: Serialize>(record: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = Vec::with_capacity(1024);
    serde_json::to_writer(&mut line, record)?;
    line.push(b'\n');
    Ok(line)
}

/// The JSON line. Field names are the documented contract of the log.
#[derive(Serialize)]
pub(super) struct Record<'a> {
    time: Displayed<Rfc3339Timestamp>,
    severity: &'static str,
    message: &'a str,
    #[serde(
        rename = "logging.googleapis.com/trace",
        skip_serializing_if = "Option::is_none"
    )]
    trace: Option<Displayed<TraceName<'a>>>,
    #[serde(
        rename = "logging.googleapis.com/spanId",
        skip_serializing_if = "Option::is_none"
    )]
    span_id: Option<&'a str>,
    #[serde(
        rename = "logging.googleapis.com/trace_sampled",
        skip_serializing_if = "Option::is_none"
    )]
    trace_sampled: Option<bool>,
    #[serde(rename = "logging.googleapis.com/labels")]
    labels: &'static Labels,
    event: &'static str,
    decision: &'static str,
    code: &'static str,
    outcome: &'static str,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email_verified: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gce_project_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gce_project_number: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gce_zone: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gce_instance_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gce_instance_name: Option<&'a str>,
    requested_role_arn: &'a str,
    requested_duration_seconds: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    role_arn: Option<&'a str>,
    bindings: Bindings<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_seconds: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role_session_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    assumed_role_arn: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_key_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiration: Option<Displayed<Rfc3339Timestamp>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sts_request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<Displayed<SocketAddr>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
    elapsed_ms: f64,
}

impl Entry<'_> {
    /// The JSON line, newline included (public for the hot-path bench).
    pub fn to_line(&self, gcp_project_id: Option<&str>) -> Result<Vec<u8>, serde_json::Error> {
        let facts = self.facts;
        let claims = facts.claims.as_ref();
        let gce = claims.and_then(|c| c.gce.as_deref());
        let creds = self.credentials;
        let message = match self.decision {
            Decision::Allow => "credentials issued",
            Decision::Deny => "exchange refused",
            Decision::Error => "exchange failed",
        };
        let record = Record {
            time: Displayed(humantime::format_rfc3339_micros(SystemTime::now())),
            severity: self.decision.severity(),
            message,
            trace: self.trace.map(|t| {
                Displayed(TraceName {
                    project: gcp_project_id,
                    trace_id: &t.trace_id,
                })
            }),
            span_id: self.trace.and_then(|t| t.span_id.as_deref()),
            trace_sampled: self.trace.map(|t| t.sampled),
            labels: &LABELS,
            event: "tokenbridge.exchange",
            decision: self.decision.as_str(),
            code: self.code,
            outcome: self.outcome,
            reason: self.reason,
            sub: claims.map(|c| c.sub.as_str()),
            email: claims.and_then(|c| c.email.as_deref()),
            email_verified: claims.map(|c| c.email_verified),
            gce_project_id: gce.and_then(|g| g.project_id.as_deref()),
            gce_project_number: gce
                .and_then(|g| g.project_number.as_deref())
                .and_then(|n| n.parse().ok()),
            gce_zone: gce.and_then(|g| g.zone.as_deref()),
            gce_instance_id: gce.and_then(|g| g.instance_id.as_deref()),
            gce_instance_name: gce.and_then(|g| g.instance_name.as_deref()),
            requested_role_arn: self.requested_role_arn,
            requested_duration_seconds: self.requested_duration_seconds,
            role_arn: facts.role_arn.as_deref(),
            bindings: Bindings(facts.decision.as_ref().map(|d| &d.bindings)),
            duration_seconds: facts.duration_seconds,
            role_session_name: facts.role_session_name.as_deref(),
            assumed_role_arn: creds.map(|c| c.assumed_role_arn.as_str()),
            access_key_id: creds.map(|c| c.access_key_id.as_str()),
            expiration: creds.map(|c| Displayed(humantime::format_rfc3339_seconds(c.expiration))),
            sts_request_id: creds.and_then(|c| c.request_id.as_deref()),
            peer: self.peer.map(Displayed),
            trace_id: self.trace.map(|t| t.trace_id.as_str()),
            elapsed_ms: self.elapsed.as_secs_f64() * 1000.0,
        };
        line_of(&record)
    }
}

/// One policy admin call (`tokenbridge.v1.PolicyAdmin`), refusals included.
/// What a write changed (before and after) is in the store's own audit
/// table, written in the same transaction as the change (`ListAudit`).
#[derive(Debug)]
pub struct AdminEntry<'a> {
    /// The RPC method, e.g. `UpdateBinding`.
    pub method: &'static str,
    /// The verified caller (email or unique ID); `None` if it was refused
    /// before it was known.
    pub actor: Option<&'a str>,
    /// The binding or service account the call is about (may be empty).
    pub target: &'a str,
    /// The gRPC status code's name.
    pub code: &'static str,
    /// The status message (never a secret); empty on success.
    pub reason: &'a str,
    /// The caller's address.
    pub peer: Option<SocketAddr>,
    /// How long the call took.
    pub elapsed: Duration,
}

#[derive(Serialize)]
pub(super) struct AdminRecord<'a> {
    time: Displayed<Rfc3339Timestamp>,
    severity: &'static str,
    message: &'static str,
    #[serde(rename = "logging.googleapis.com/labels")]
    labels: &'static Labels,
    event: &'static str,
    method: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<&'a str>,
    target: &'a str,
    code: &'static str,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<Displayed<SocketAddr>>,
    elapsed_ms: f64,
}

impl AdminEntry<'_> {
    pub(super) fn to_line(&self) -> Result<Vec<u8>, serde_json::Error> {
        let ok = self.code == "OK";
        let record = AdminRecord {
            time: Displayed(humantime::format_rfc3339_micros(SystemTime::now())),
            severity: if ok { "NOTICE" } else { "WARNING" },
            message: if ok {
                "policy admin call"
            } else {
                "policy admin call refused"
            },
            labels: &LABELS,
            event: "tokenbridge.admin",
            method: self.method,
            actor: self.actor,
            target: self.target,
            code: self.code,
            reason: self.reason,
            peer: self.peer.map(Displayed),
            elapsed_ms: self.elapsed.as_secs_f64() * 1000.0,
        };
        line_of(&record)
    }
}

/// The line that stands for refusals not recorded one by one while the
/// sink was behind: how many, by outcome.
#[derive(Serialize)]
struct SummaryRecord<'a> {
    time: Displayed<Rfc3339Timestamp>,
    severity: &'static str,
    message: String,
    #[serde(rename = "logging.googleapis.com/labels")]
    labels: &'static Labels,
    event: &'static str,
    refusals: u64,
    by_outcome: &'a std::collections::BTreeMap<&'static str, u64>,
}

/// The `tokenbridge.audit_summary` line for `counts` (by outcome).
pub(super) fn summary_line(
    counts: &std::collections::BTreeMap<&'static str, u64>,
) -> Result<Vec<u8>, serde_json::Error> {
    let refusals = counts.values().sum();
    let record = SummaryRecord {
        time: Displayed(humantime::format_rfc3339_micros(SystemTime::now())),
        severity: "WARNING",
        message: format!(
            "{refusals} refused calls were counted, not recorded one by one: the audit sink was behind"
        ),
        labels: &LABELS,
        event: "tokenbridge.audit_summary",
        refusals,
        by_outcome: counts,
    };
    line_of(&record)
}
