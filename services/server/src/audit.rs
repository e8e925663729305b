//! The audit log: one JSON line per exchange decision, for security teams,
//! joinable with CloudTrail through the session name and the access key ID.
//!
//! Lines are in the structured format Google Cloud Logging reads from a
//! container's output (`severity`, `message`, `time`,
//! `logging.googleapis.com/trace`, `logging.googleapis.com/spanId`,
//! `logging.googleapis.com/labels`), and go to their own sink, apart from the
//! diagnostic logs on stderr:
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `audit.sink` | `stdout` | `stdout`, `stderr` or `file` |
//! | `audit.path` | required with `sink = "file"` | the file, appended to (created 0640); relative to the config file's folder |
//! | `audit.gcp_project_id` | none | the Google Cloud project of the traces, for `logging.googleapis.com/trace` = `projects/ID/traces/TRACE_ID` (without it, the bare trace ID) |
//!
//! **Fail closed.** A call gets its answer only once its record is written
//! (handed to the OS with `write(2)`; no `fsync`). If the sink cannot be
//! written (disk full, a closed pipe) or the writer is more than
//! [`ACK_TIMEOUT`] behind, the call fails with UNAVAILABLE
//! ([`crate::Error::AuditUnavailable`]) instead: no credentials leave without
//! a record. A record can exist for credentials then withheld (written, but
//! confirmed too late), never the reverse.
//!
//! **Cost.** Records are serialised by the calling task and handed through a
//! bounded queue ([`QUEUE`]) to one writer task, which writes whatever has
//! queued up in one `write` on a blocking thread (`spawn_blocking`) and then
//! confirms each record: the runtime's workers never block on the sink, and
//! at fleet rates one system call (and one thread hand-off) covers many
//! records. A full queue makes callers wait (within [`ACK_TIMEOUT`]).
//!
//! Refusals before any decision about an identity (rate, concurrency and
//! size limits, [`crate::Error::is_flood_control`]) are counted in metrics,
//! not audited. Every other call is: issued, refused (bad token, no binding,
//! bad argument, STS refusal) or failed (an upstream unavailable).

use std::{
    io::Write,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info};

use crate::{exchange::Facts, metrics::Metrics, sts::Credentials, telemetry::TraceIds};

/// How long a call waits for its record to be written before failing
/// closed.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Records queued for the writer at most; more callers wait.
pub const QUEUE: usize = 4096;
/// Records written by one `write` at most.
const BATCH: usize = 512;
/// The `logging.googleapis.com/labels` of every record, to route them.
const LABELS: Labels = Labels {
    log: "tokenbridge-audit",
};

/// Where audit records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    /// The process's standard output.
    Stdout,
    /// The process's standard error, among the diagnostic logs.
    Stderr,
    /// A file, appended to.
    File(PathBuf),
}

/// `[audit]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Where records go.
    pub sink: AuditSink,
    /// The Google Cloud project whose Cloud Trace holds the traces.
    pub gcp_project_id: Option<String>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            sink: AuditSink::Stdout,
            gcp_project_id: None,
        }
    }
}

/// Why the audit log could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The file sink cannot be opened for appending.
    #[error("cannot open the audit log {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

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
struct Labels {
    log: &'static str,
}

/// The JSON line. Field names are the documented contract of the log.
#[derive(Serialize)]
struct Record<'a> {
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
    /// The JSON line, newline included.
    fn to_line(&self, gcp_project_id: Option<&str>) -> Result<Vec<u8>, serde_json::Error> {
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
            gce_project_number: gce.and_then(|g| g.project_number),
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
struct AdminRecord<'a> {
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
    fn to_line(&self) -> Result<Vec<u8>, serde_json::Error> {
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

/// A record waiting for the writer, and who waits for it.
struct Pending {
    line: Vec<u8>,
    written: oneshot::Sender<bool>,
}

/// The audit log: hands records to the writer task and waits for them to
/// be written.
pub struct AuditLog {
    queue: mpsc::Sender<Pending>,
    gcp_project_id: Option<String>,
    metrics: Arc<Metrics>,
    ack_timeout: Duration,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("gcp_project_id", &self.gcp_project_id)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens the sink and starts the writer task, which ends when the log
    /// is dropped. Must be called within a Tokio runtime.
    pub fn open(config: &AuditConfig, metrics: Arc<Metrics>) -> Result<Self, AuditError> {
        let out: Box<dyn Write + Send> = match &config.sink {
            AuditSink::Stdout => Box::new(std::io::stdout()),
            AuditSink::Stderr => Box::new(std::io::stderr()),
            AuditSink::File(path) => {
                use std::os::unix::fs::OpenOptionsExt as _;
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o640)
                    .open(path)
                    .map_err(|source| AuditError::Open {
                        path: path.clone(),
                        source,
                    })?;
                Box::new(file)
            }
        };
        Ok(Self::with_writer(
            out,
            config.gcp_project_id.clone(),
            metrics,
        ))
    }

    /// An audit log writing to `out`. Must be called within a Tokio
    /// runtime.
    pub fn with_writer(
        out: Box<dyn Write + Send>,
        gcp_project_id: Option<String>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (queue, records) = mpsc::channel(QUEUE);
        tokio::spawn(write_records(records, out));
        Self {
            queue,
            gcp_project_id,
            metrics,
            ack_timeout: ACK_TIMEOUT,
        }
    }

    /// Waits `timeout` rather than [`ACK_TIMEOUT`] for a record to be
    /// written.
    pub fn with_ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// Writes `entry`; true once it is written, false if it could not be
    /// (the caller must then fail closed).
    pub async fn write(&self, entry: &Entry<'_>) -> bool {
        self.write_line(entry.to_line(self.gcp_project_id.as_deref()))
            .await
    }

    /// Writes one policy admin call's record; `true` once it is written.
    pub async fn write_admin(&self, entry: &AdminEntry<'_>) -> bool {
        self.write_line(entry.to_line()).await
    }

    async fn write_line(&self, line: Result<Vec<u8>, serde_json::Error>) -> bool {
        let written = match line {
            Ok(line) => {
                let (written, confirmed) = oneshot::channel();
                let handed = async {
                    self.queue.send(Pending { line, written }).await.ok()?;
                    confirmed.await.ok()
                };
                matches!(
                    tokio::time::timeout(self.ack_timeout, handed).await,
                    Ok(Some(true))
                )
            }
            Err(e) => {
                error!(error = %e, "cannot serialise an audit record");
                false
            }
        };
        self.metrics.audit_record(written);
        written
    }
}

/// The writer task: takes what has queued up, writes it in one go on a
/// blocking thread (the sink may block: a stalled pipe, a slow disk), then
/// confirms each record, until every sender is gone. Records queue up while
/// a write is in progress, so the busier the service, the more records one
/// write carries.
async fn write_records(mut records: mpsc::Receiver<Pending>, out: Box<dyn Write + Send>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut sink = Some((out, Vec::new()));
    // After a failed write a partial line may be in the sink: the next
    // write starts on a new line.
    let mut failing = false;
    while records.recv_many(&mut batch, BATCH).await > 0 {
        let Some((mut out, mut buf)) = sink.take() else {
            return;
        };
        buf.clear();
        if failing {
            buf.push(b'\n');
        }
        for pending in &batch {
            buf.extend_from_slice(&pending.line);
        }
        let done = tokio::task::spawn_blocking(move || {
            let written = out.write_all(&buf).and_then(|()| out.flush());
            (out, buf, written)
        })
        .await;
        let Ok((out, buf, written)) = done else {
            // The write panicked or the runtime is shutting down: nothing
            // more can be written. Waiting callers fail closed.
            error!("the audit log writer stopped: exchanges fail closed (UNAVAILABLE)");
            return;
        };
        sink = Some((out, buf));
        match &written {
            Ok(()) if failing => {
                info!("the audit log is writable again; exchanges resume");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                error!(error = %e, "cannot write the audit log: exchanges fail closed (UNAVAILABLE) until it can be written");
                failing = true;
            }
            Err(_) => {}
        }
        let ok = written.is_ok();
        for pending in batch.drain(..) {
            let _ = pending.written.send(ok);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::{Claims, GceInstance};

    fn facts() -> Facts {
        Facts {
            claims: Some(Claims {
                iss: "https://accounts.google.com".into(),
                aud: "aud".into(),
                sub: "112233".into(),
                azp: None,
                email: Some("w@p.iam.gserviceaccount.com".into()),
                email_verified: true,
                iat: 1,
                exp: 2,
                nbf: None,
                gce: Some(Arc::new(GceInstance {
                    project_id: Some("proj".into()),
                    project_number: Some(7),
                    zone: Some("us-central1-a".into()),
                    instance_id: Some("99".into()),
                    instance_name: Some("vm".into()),
                })),
            }),
            ..Facts::default()
        }
    }

    #[test]
    fn a_refusal_is_one_cloud_logging_line() {
        let facts = facts();
        let trace = TraceIds {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: Some("00f067aa0ba902b7".into()),
            sampled: true,
        };
        let entry = Entry {
            decision: Decision::Deny,
            code: "PERMISSION_DENIED",
            outcome: "permission_denied",
            reason: "no binding grants role R",
            requested_role_arn: "arn:aws:iam::1:role/R",
            requested_duration_seconds: 0,
            facts: &facts,
            credentials: None,
            peer: Some("192.0.2.1:5000".parse().unwrap()),
            trace: Some(&trace),
            elapsed: Duration::from_micros(1500),
        };
        let line = entry.to_line(Some("my-proj")).unwrap();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["severity"], "WARNING");
        assert_eq!(
            v["logging.googleapis.com/trace"],
            "projects/my-proj/traces/4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(v["logging.googleapis.com/spanId"], "00f067aa0ba902b7");
        assert_eq!(v["decision"], "deny");
        assert_eq!(v["sub"], "112233");
        assert_eq!(v["gce_project_id"], "proj");
        assert_eq!(v["gce_instance_id"], "99");
        assert_eq!(v["peer"], "192.0.2.1:5000");
        assert_eq!(v["elapsed_ms"], 1.5);
        assert!(v.get("access_key_id").is_none());
        let bare = entry.to_line(None).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bare).unwrap();
        assert_eq!(
            v["logging.googleapis.com/trace"],
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[tokio::test]
    async fn an_unwritable_sink_is_reported_and_a_writable_one_confirmed() {
        let facts = Facts::default();
        let entry = Entry {
            decision: Decision::Deny,
            code: "UNAUTHENTICATED",
            outcome: "invalid_token",
            reason: "token expired",
            requested_role_arn: "",
            requested_duration_seconds: 0,
            facts: &facts,
            credentials: None,
            peer: None,
            trace: None,
            elapsed: Duration::ZERO,
        };
        let full = AuditLog::open(
            &AuditConfig {
                sink: AuditSink::File("/dev/full".into()),
                gcp_project_id: None,
            },
            Metrics::disabled(),
        )
        .unwrap();
        assert!(!full.write(&entry).await);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(
            &AuditConfig {
                sink: AuditSink::File(path.clone()),
                gcp_project_id: None,
            },
            Metrics::disabled(),
        )
        .unwrap();
        assert!(log.write(&entry).await);
        assert!(log.write(&entry).await);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(
            AuditLog::open(
                &AuditConfig {
                    sink: AuditSink::File(dir.path().join("no/such/dir/audit.jsonl")),
                    gcp_project_id: None,
                },
                Metrics::disabled(),
            )
            .is_err()
        );
    }

    /// A sink whose writes block until the test lets go.
    struct Stalled(std::sync::Mutex<std::sync::mpsc::Receiver<()>>);

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.lock().unwrap().recv();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_stalled_sink_fails_calls_closed_after_the_timeout() {
        let (release, stalled) = std::sync::mpsc::channel();
        let timeout = Duration::from_millis(100);
        let log = AuditLog::with_writer(
            Box::new(Stalled(std::sync::Mutex::new(stalled))),
            None,
            Metrics::disabled(),
        )
        .with_ack_timeout(timeout);
        let facts = Facts::default();
        let entry = Entry {
            decision: Decision::Allow,
            code: "OK",
            outcome: "issued",
            reason: "credentials issued",
            requested_role_arn: "",
            requested_duration_seconds: 0,
            facts: &facts,
            credentials: None,
            peer: None,
            trace: None,
            elapsed: Duration::ZERO,
        };
        let started = tokio::time::Instant::now();
        assert!(!log.write(&entry).await, "not confirmed: fail closed");
        assert!(started.elapsed() >= timeout);
        // Queued behind the stalled write: not confirmed either.
        assert!(!log.write(&entry).await);
        drop(release);
    }
}
