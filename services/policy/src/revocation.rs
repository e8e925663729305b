//! Revocations of cached credentials: which credentials a replica's cache
//! must stop handing out (`RevokeCachedCredentials`, `tokenbridge-admin
//! revoke`).
//!
//! A [`Revocation`] names a service account (its unique ID, the token's
//! `sub`), a role ARN, or both. It revokes every cached credential of that
//! service account (any role), of that role (any caller), or of that pair,
//! that the replica obtained **before it learned of the revocation**.
//!
//! "Before" is counted in revisions, not by the clock. A set of revocations
//! ([`Revocations`]) has a revision that grows with every set a replica puts
//! in force: the policy store's revision with a store, a counter of the
//! replica's own with a policy file. Each revocation carries the revision
//! that brought it, and the credential cache stamps each STS call with the
//! revision in force when the call *began*. A cached credential is revoked
//! when a matching revocation has a higher revision than its stamp. So no
//! clock is compared across replicas, and an STS call in flight when the
//! revocation arrives is stamped with the older revision: what it returns is
//! revoked too, never served as new.
//!
//! A credential lives at most 12 hours (STS's longest session), so a
//! revocation older than [`RETENTION`] can match nothing still cached: the
//! store leaves them out of its loads, and an in-memory set drops them when
//! it grows.
//!
//! Role ARNs match without regard to ASCII case (IAM role names are unique
//! regardless of case): revoking too much costs one STS call, too little
//! leaves a dead credential in use.

use std::time::{Duration, SystemTime};

use crate::{
    binding::FieldError,
    rules::{MAX_DURATION_SECONDS, ServiceAccountRef, check_role_arn, classify_service_account},
};

/// How long a revocation matters: the longest credential lifetime (12 h),
/// plus 15 minutes for clocks that disagree.
pub const RETENTION: Duration = Duration::from_secs(MAX_DURATION_SECONDS as u64 + 15 * 60);

/// The longest reason kept with a revocation, in characters.
pub const MAX_REASON_CHARS: usize = 1024;

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The service account's unique ID (`sub`); `None`: every caller.
    pub subject: Option<String>,
    /// The role; `None`: every role.
    pub role_arn: Option<String>,
    /// The revision of the set that brought it.
    pub revision: u64,
    /// When it was made (for [`RETENTION`] and for people).
    pub revoked_at: SystemTime,
}

impl Revocation {
    /// Whether it names credentials of `subject` for `role_arn`.
    pub fn matches(&self, subject: &str, role_arn: &str) -> bool {
        self.subject.as_deref().is_none_or(|s| s == subject)
            && self
                .role_arn
                .as_deref()
                .is_none_or(|r| r.eq_ignore_ascii_case(role_arn))
    }
}

/// The revocations a replica honours, at one revision. Cheap to test when
/// nothing was revoked lately: [`revokes`](Self::revokes) compares one
/// number before it looks at any revocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    revision: u64,
    newest: u64,
    list: Vec<Revocation>,
}

impl Revocations {
    /// The set at `revision`: the store's revision and the revocations it
    /// holds (each with the revision that wrote it).
    pub fn new(revision: u64, list: Vec<Revocation>) -> Self {
        let newest = list.iter().map(|r| r.revision).max().unwrap_or(0);
        Self {
            revision: revision.max(newest),
            newest,
            list,
        }
    }

    /// Its revision: what the cache stamps an STS call with.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The highest revision among its revocations (0: none).
    pub fn newest(&self) -> u64 {
        self.newest
    }

    /// No revocation at all.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Its revocations, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Revocation> {
        self.list.iter()
    }

    /// Whether a credential of `subject` for `role_arn`, obtained by an STS
    /// call that began at revision `obtained`, is revoked.
    #[inline]
    pub fn revokes(&self, subject: &str, role_arn: &str, obtained: u64) -> bool {
        obtained < self.newest
            && self
                .list
                .iter()
                .any(|r| r.revision > obtained && r.matches(subject, role_arn))
    }

    /// This set and one more revocation, at the next revision, without
    /// those older than [`RETENTION`]: a replica without a store, which
    /// keeps its revocations in memory.
    pub fn with(
        &self,
        subject: Option<String>,
        role_arn: Option<String>,
        revoked_at: SystemTime,
    ) -> Self {
        let revision = self.revision + 1;
        let mut list: Vec<Revocation> = self
            .list
            .iter()
            .filter(|r| {
                revoked_at
                    .duration_since(r.revoked_at)
                    .map_or(true, |age| age <= RETENTION)
            })
            .cloned()
            .collect();
        list.push(Revocation {
            subject,
            role_arn,
            revision,
            revoked_at,
        });
        Self {
            revision,
            newest: revision,
            list,
        }
    }
}

/// Checks what a revocation names: a service account's unique ID (an email
/// is refused: credentials are cached by the token's `sub`, which every
/// token carries), a role ARN, or both; at least one. Empty is not given.
pub fn check_revocation(
    service_account: Option<&str>,
    role_arn: Option<&str>,
    reason: &str,
) -> Result<(), FieldError> {
    let problem = |field: &str, reason: &str| {
        Err(FieldError {
            field: field.to_string(),
            reason: reason.to_string(),
        })
    };
    if service_account.is_none() && role_arn.is_none() {
        return problem(
            "service_account",
            "name a service account (its unique ID), a role ARN, or both",
        );
    }
    if let Some(sa) = service_account {
        match classify_service_account(sa) {
            Some(ServiceAccountRef::UniqueId) => {}
            Some(ServiceAccountRef::Email) => {
                return problem(
                    "service_account",
                    "give the service account's unique ID, not its email: credentials are cached \
                     by the token's `sub`, and tokens without format=full carry no email; find \
                     the ID with gcloud iam service-accounts describe EMAIL \
                     --format='value(uniqueId)'",
                );
            }
            None => {
                return problem(
                    "service_account",
                    "not a service account unique ID (digits)",
                );
            }
        }
    }
    if let Some(arn) = role_arn {
        check_role_arn(arn).map_err(|why| FieldError {
            field: "role_arn".to_string(),
            reason: why,
        })?;
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return problem("reason", "at most 1024 characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: &str = "arn:aws:iam::111122223333:role/Reader";
    const SUB: &str = "112233445566778899001";

    fn at(revision: u64, subject: Option<&str>, role: Option<&str>) -> Revocation {
        Revocation {
            subject: subject.map(str::to_string),
            role_arn: role.map(str::to_string),
            revision,
            revoked_at: SystemTime::now(),
        }
    }

    #[test]
    fn a_revocation_revokes_what_was_obtained_before_its_revision() {
        let set = Revocations::new(10, vec![at(7, Some(SUB), None)]);
        assert_eq!(set.revision(), 10);
        assert!(set.revokes(SUB, ROLE, 6), "obtained before");
        assert!(!set.revokes(SUB, ROLE, 7), "obtained once it was known");
        assert!(!set.revokes("999", ROLE, 6), "another caller");
    }

    #[test]
    fn by_role_by_subject_and_by_both() {
        let set = Revocations::new(
            9,
            vec![
                at(5, None, Some(ROLE)),
                at(6, Some("1"), Some("arn:aws:iam::111122223333:role/Other")),
            ],
        );
        assert!(set.revokes("anyone", ROLE, 4));
        assert!(
            set.revokes("anyone", "arn:aws:iam::111122223333:role/READER", 4),
            "role names are unique regardless of case"
        );
        assert!(!set.revokes("2", "arn:aws:iam::111122223333:role/Other", 4));
        assert!(set.revokes("1", "arn:aws:iam::111122223333:role/Other", 5));
        assert!(!set.revokes("1", "arn:aws:iam::111122223333:role/Third", 5));
    }

    #[test]
    fn an_empty_set_revokes_nothing() {
        let set = Revocations::default();
        assert!(set.is_empty());
        assert!(!set.revokes(SUB, ROLE, 0));
    }

    #[test]
    fn in_memory_sets_grow_a_revision_each_and_forget_old_ones() {
        let long_ago = SystemTime::now() - RETENTION - Duration::from_secs(60);
        let one = Revocations::default().with(Some(SUB.into()), None, long_ago);
        assert_eq!(one.revision(), 1);
        assert!(one.revokes(SUB, "arn:aws:iam::111122223333:role/X", 0));
        // The next one forgets the first, which can match nothing cached.
        let two = one.with(None, Some(ROLE.into()), SystemTime::now());
        assert_eq!((two.revision(), two.newest()), (2, 2));
        assert_eq!(two.iter().count(), 1);
        assert!(two.revokes("5", ROLE, 1));
        assert!(!two.revokes(SUB, "arn:aws:iam::111122223333:role/X", 0));
    }

    #[test]
    fn targets_are_checked() {
        assert!(check_revocation(Some(SUB), None, "").is_ok());
        assert!(check_revocation(None, Some(ROLE), "incident").is_ok());
        assert!(check_revocation(Some(SUB), Some(ROLE), "").is_ok());
        let neither = check_revocation(None, None, "").unwrap_err();
        assert_eq!(neither.field, "service_account");
        let email = check_revocation(Some("etl@p.iam.gserviceaccount.com"), None, "").unwrap_err();
        assert!(email.reason.contains("unique ID, not its email"), "{email}");
        assert_eq!(
            check_revocation(None, Some("arn:aws:s3:::bucket"), "")
                .unwrap_err()
                .field,
            "role_arn"
        );
        assert_eq!(
            check_revocation(Some(SUB), None, &"x".repeat(1025))
                .unwrap_err()
                .field,
            "reason"
        );
    }
}
