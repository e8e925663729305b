//! The last exchange decisions of this replica, in memory, for the console
//! (`[console]`): a bounded ring of what the audit records say, and counts
//! per minute by outcome for the last [`MINUTES`] minutes.
//!
//! Fed by [`AuditLog::write`](super::AuditLog::write) only when a ring is
//! attached ([`AuditLog::with_recent`](super::AuditLog::with_recent)), so
//! a server without the console pays nothing. A record costs one short
//! lock and a few small copies.
//!
//! **No secrets.** A decision keeps what the audit line shows about the
//! caller and the outcome (service account, unique ID, role, status code and
//! message, request identifiers): never the token, the secret access key or
//! the session token. Text from the request (the requested role) and the
//! status message are cut at [`MAX_FIELD`] characters.

use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use super::{Decision, Entry};

/// Decisions kept by default.
pub const CAPACITY: usize = 1000;
/// Minutes of counts kept.
pub const MINUTES: u64 = 30;
/// Longest text field kept, in characters.
pub const MAX_FIELD: usize = 512;

/// How an exchange ended, as the audit record's `decision` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Credentials were issued (and their record written).
    Issued,
    /// Refused.
    Refused,
    /// Failed: an upstream or this server could not decide; a retry may
    /// help. Also issued credentials whose record could not be written
    /// (withheld: the call failed closed).
    Failed,
}

/// One decision, without secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentDecision {
    /// When it was recorded.
    pub time: SystemTime,
    /// How it ended.
    pub outcome: Outcome,
    /// The gRPC status code's name.
    pub code: &'static str,
    /// The verified token's `email`, if any.
    pub email: String,
    /// The verified token's `sub`, if the token was verified.
    pub sub: String,
    /// The role granted, else the role requested.
    pub role_arn: String,
    /// The status message.
    pub reason: String,
    /// The STS request ID, else the call's trace ID; empty if neither.
    pub request_id: String,
    /// The access key ID handed out (not a secret: CloudTrail shows it).
    pub access_key_id: String,
}

/// Decisions in one minute, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinuteCounts {
    /// The minute's start, Unix seconds.
    pub minute_start_unix: u64,
    /// Issued.
    pub issued: u64,
    /// Refused.
    pub refused: u64,
    /// Failed.
    pub failed: u64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Oldest first.
    ring: VecDeque<RecentDecision>,
    /// Oldest first, one per minute that saw a decision, the last
    /// [`MINUTES`] at most.
    minutes: VecDeque<MinuteCounts>,
}

/// The ring (see the [module docs](self)).
#[derive(Debug)]
pub struct RecentDecisions {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl Default for RecentDecisions {
    fn default() -> Self {
        Self::new(CAPACITY)
    }
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_FIELD) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn minute_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) / 60 * 60
}

impl RecentDecisions {
    /// A ring keeping the last `capacity` decisions (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Records `entry`; `written` says whether its audit record was
    /// written (issued credentials without one were withheld).
    pub fn record(&self, entry: &Entry<'_>, written: bool) {
        self.record_at(entry, written, SystemTime::now());
    }

    fn record_at(&self, entry: &Entry<'_>, written: bool, now: SystemTime) {
        let (outcome, code, reason) = match entry.decision {
            Decision::Allow if written => (Outcome::Issued, entry.code, cut(entry.reason)),
            Decision::Allow => (
                Outcome::Failed,
                "UNAVAILABLE",
                crate::Error::AuditUnavailable.to_string(),
            ),
            Decision::Deny => (Outcome::Refused, entry.code, cut(entry.reason)),
            Decision::Error => (Outcome::Failed, entry.code, cut(entry.reason)),
        };
        let claims = entry.facts.claims.as_ref();
        let credentials = entry.credentials.filter(|_| outcome == Outcome::Issued);
        let decision = RecentDecision {
            time: now,
            outcome,
            code,
            email: claims
                .and_then(|c| c.email.as_deref())
                .map(cut)
                .unwrap_or_default(),
            sub: claims.map(|c| cut(&c.sub)).unwrap_or_default(),
            role_arn: cut(entry
                .facts
                .role_arn
                .as_deref()
                .unwrap_or(entry.requested_role_arn)),
            reason,
            request_id: credentials
                .and_then(|c| c.request_id.clone())
                .or_else(|| entry.trace.map(|t| t.trace_id.clone()))
                .unwrap_or_default(),
            access_key_id: credentials
                .map(|c| c.access_key_id.clone())
                .unwrap_or_default(),
        };
        let minute = minute_of(now);
        let mut inner = self.inner();
        if inner.ring.len() == self.capacity {
            inner.ring.pop_front();
        }
        inner.ring.push_back(decision);
        if inner
            .minutes
            .back()
            .is_none_or(|m| m.minute_start_unix != minute)
        {
            inner.minutes.push_back(MinuteCounts {
                minute_start_unix: minute,
                ..MinuteCounts::default()
            });
        }
        while inner
            .minutes
            .front()
            .is_some_and(|m| m.minute_start_unix + MINUTES * 60 <= minute)
        {
            inner.minutes.pop_front();
        }
        if let Some(m) = inner.minutes.back_mut() {
            match outcome {
                Outcome::Issued => m.issued += 1,
                Outcome::Refused => m.refused += 1,
                Outcome::Failed => m.failed += 1,
            }
        }
    }

    /// The decisions held, newest first.
    pub fn decisions(&self) -> Vec<RecentDecision> {
        self.inner().ring.iter().rev().cloned().collect()
    }

    /// Counts for each of the last [`MINUTES`] minutes up to the current
    /// one, oldest first (zeros for minutes without a decision).
    pub fn per_minute(&self) -> Vec<MinuteCounts> {
        self.per_minute_at(SystemTime::now())
    }

    fn per_minute_at(&self, now: SystemTime) -> Vec<MinuteCounts> {
        let current = minute_of(now);
        let first = current.saturating_sub((MINUTES - 1) * 60);
        let inner = self.inner();
        (0..MINUTES)
            .map(|i| first + i * 60)
            .filter(|m| *m <= current)
            .map(|minute| {
                inner
                    .minutes
                    .iter()
                    .find(|m| m.minute_start_unix == minute)
                    .copied()
                    .unwrap_or(MinuteCounts {
                        minute_start_unix: minute,
                        ..MinuteCounts::default()
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use tokenbridge_proto::Secret;

    use super::*;
    use crate::{aws::sts::Credentials, google::jwt::Claims, observability::audit::Facts};

    fn claims() -> Claims {
        Claims {
            iss: "https://accounts.google.com".into(),
            aud: "https://tokenbridge.test".into(),
            sub: "112233445566778899001".into(),
            azp: None,
            email: Some("w@p.iam.gserviceaccount.com".into()),
            email_verified: true,
            iat: 0,
            exp: 0,
            nbf: None,
            gce: None,
        }
    }

    fn entry<'a>(
        decision: Decision,
        code: &'static str,
        reason: &'a str,
        facts: &'a Facts,
        credentials: Option<&'a Credentials>,
    ) -> Entry<'a> {
        Entry {
            decision,
            code,
            outcome: "x",
            reason,
            requested_role_arn: "arn:aws:iam::1:role/Asked",
            requested_duration_seconds: 0,
            facts,
            credentials,
            peer: None,
            trace: None,
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn keeps_the_last_decisions_without_secrets_and_counts_per_minute() {
        let ring = RecentDecisions::new(2);
        let facts = Facts {
            claims: Some(claims()),
            role_arn: Some("arn:aws:iam::1:role/Granted".into()),
            ..Facts::default()
        };
        let creds = Credentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: Secret::new("SECRET-KEY-VALUE".into()),
            session_token: Secret::new("SESSION-TOKEN-VALUE".into()),
            expiration: SystemTime::now(),
            assumed_role_arn: "arn:aws:sts::1:assumed-role/Granted/s".into(),
            request_id: Some("req-1".into()),
        };
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_040);
        let unverified = Facts::default();
        ring.record_at(
            &entry(Decision::Deny, "UNAUTHENTICATED", "bad", &unverified, None),
            true,
            t0,
        );
        ring.record_at(
            &entry(
                Decision::Allow,
                "OK",
                "credentials issued",
                &facts,
                Some(&creds),
            ),
            true,
            t0 + Duration::from_secs(30),
        );
        ring.record_at(
            &entry(
                Decision::Allow,
                "OK",
                "credentials issued",
                &facts,
                Some(&creds),
            ),
            false,
            t0 + Duration::from_secs(70),
        );
        let held = ring.decisions();
        assert_eq!(held.len(), 2, "capacity 2: the oldest went");
        assert_eq!(held[0].outcome, Outcome::Failed, "newest first");
        assert_eq!(held[0].code, "UNAVAILABLE");
        assert!(held[0].access_key_id.is_empty(), "withheld: no key shown");
        assert_eq!(held[1].outcome, Outcome::Issued);
        assert_eq!(held[1].access_key_id, "ASIAEXAMPLE");
        assert_eq!(held[1].request_id, "req-1");
        assert_eq!(held[1].role_arn, "arn:aws:iam::1:role/Granted");
        assert_eq!(held[1].email, "w@p.iam.gserviceaccount.com");
        let shown = format!("{held:?}");
        assert!(!shown.contains("SECRET-KEY-VALUE") && !shown.contains("SESSION-TOKEN"));

        let minutes = ring.per_minute_at(t0 + Duration::from_secs(70));
        assert_eq!(minutes.len(), MINUTES as usize);
        let last = minutes[minutes.len() - 1];
        let before = minutes[minutes.len() - 2];
        assert_eq!((last.issued, last.refused, last.failed), (0, 0, 1));
        assert_eq!((before.issued, before.refused, before.failed), (1, 1, 0));
        // Half an hour later, the counts have aged out.
        let later = ring.per_minute_at(t0 + Duration::from_secs(70 + 1800));
        assert!(later.iter().all(|m| m.issued + m.refused + m.failed == 0));
    }

    #[test]
    fn long_text_is_cut() {
        let ring = Arc::new(RecentDecisions::default());
        let reason = "x".repeat(MAX_FIELD * 3);
        let facts = Facts::default();
        ring.record(
            &entry(Decision::Error, "UNAVAILABLE", &reason, &facts, None),
            true,
        );
        let d = &ring.decisions()[0];
        assert_eq!(d.reason.chars().count(), MAX_FIELD + 1);
        assert_eq!(d.role_arn, "arn:aws:iam::1:role/Asked");
    }
}
