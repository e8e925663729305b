//! The audit log's records: one Cloud Logging JSON line per exchange
//! decision ([`Entry`]) and per policy admin call ([`AdminEntry`]).

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use serde::Serialize;

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

/// The JSON line. Field names are the documented contract of the log.
#[derive(Serialize)]
pub(super) struct Record<'a> {
    time: String,
    severity: &'static str,
    message: &'a str,
    #[serde(
        rename = "logging.googleapis.com/trace",
        skip_serializing_if = "Option::is_none"
    )]
    trace: Option<String>,
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
    bindings: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_seconds: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role_session_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    assumed_role_arn: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_key_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sts_request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<String>,
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
            time: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            severity: self.decision.severity(),
            message,
            trace: self.trace.map(|t| match gcp_project_id {
                Some(project) => format!("projects/{project}/traces/{}", t.trace_id),
                None => t.trace_id.clone(),
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
            bindings: facts
                .decision
                .as_ref()
                .map(|d| d.bindings.iter().map(String::as_str).collect())
                .unwrap_or_default(),
            duration_seconds: facts.duration_seconds,
            role_session_name: facts.role_session_name.as_deref(),
            assumed_role_arn: creds.map(|c| c.assumed_role_arn.as_str()),
            access_key_id: creds.map(|c| c.access_key_id.as_str()),
            expiration: creds.map(|c| humantime::format_rfc3339_seconds(c.expiration).to_string()),
            sts_request_id: creds.and_then(|c| c.request_id.as_deref()),
            peer: self.peer.map(|p| p.to_string()),
            trace_id: self.trace.map(|t| t.trace_id.as_str()),
            elapsed_ms: self.elapsed.as_secs_f64() * 1000.0,
        };
        let mut line = serde_json::to_vec(&record)?;
        line.push(b'\n');
        Ok(line)
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
    time: String,
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
    peer: Option<String>,
    elapsed_ms: f64,
}

impl AdminEntry<'_> {
    pub(super) fn to_line(&self) -> Result<Vec<u8>, serde_json::Error> {
        let ok = self.code == "OK";
        let record = AdminRecord {
            time: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
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
            peer: self.peer.map(|p| p.to_string()),
            elapsed_ms: self.elapsed.as_secs_f64() * 1000.0,
        };
        let mut line = serde_json::to_vec(&record)?;
        line.push(b'\n');
        Ok(line)
    }
}

/// The line that stands for refusals not recorded one by one while the
/// sink was behind: how many, by outcome.
#[derive(Serialize)]
struct SummaryRecord<'a> {
    time: String,
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
        time: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
        severity: "WARNING",
        message: format!(
            "{refusals} refused calls were counted, not recorded one by one: the audit sink was behind"
        ),
        labels: &LABELS,
        event: "tokenbridge.audit_summary",
        refusals,
        by_outcome: counts,
    };
    let mut line = serde_json::to_vec(&record)?;
    line.push(b'\n');
    Ok(line)
}
