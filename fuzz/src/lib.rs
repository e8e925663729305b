//! What the fuzz targets share: arbitrary credentials as the shim gets them,
//! the checks of an emitted `Expiration`, and the fixed inputs (cache key,
//! clock) that make every run reproducible.

#![forbid(unsafe_code)]

use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arbitrary::{Result, Unstructured};
use aws_smithy_types::date_time::{DateTime, Format};
use tokenbridge_client::{Credentials, Secret};
use tokenbridge_cred::cache::CacheKey;

/// The clock of the cache-file targets, Unix seconds (2027-01-15T08:00:00Z):
/// fixed, so that a crash reproduces whenever it is replayed.
pub const NOW_SECS: u64 = 1_800_000_000;

/// The last second RFC 3339 (four-digit years) can write:
/// `9999-12-31T23:59:59Z`, in Unix seconds.
pub const LAST_RFC3339_SECS: u64 = 253_402_300_799;

/// [`NOW_SECS`] as a time.
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_SECS)
}

/// The cache key every cache-file input is read with (the seed corpus is
/// written with it too).
pub fn cache_key() -> CacheKey {
    CacheKey {
        endpoint: "https://tokenbridge.example.com".into(),
        audience: "https://tokenbridge.example.com".into(),
        role_arn: "arn:aws:iam::111122223333:role/RoleForAccessFromGCPTeamA".into(),
        duration_seconds: 0,
        metadata_host: "metadata.google.internal".into(),
    }
}

/// Any time a `SystemTime` can hold on Linux that arbitrary input picks:
/// whole seconds over the whole `i64` range either side of the epoch, plus
/// nanoseconds; or, as often, a time near [`NOW_SECS`].
pub fn arbitrary_time(u: &mut Unstructured<'_>) -> Result<SystemTime> {
    let nanos = Duration::from_nanos(u.int_in_range(0..=999_999_999)?);
    let time = if u.arbitrary()? {
        let offset: i32 = u.arbitrary()?;
        let secs = NOW_SECS.saturating_add_signed(i64::from(offset));
        UNIX_EPOCH.checked_add(Duration::from_secs(secs))
    } else {
        let secs: i64 = u.arbitrary()?;
        if secs >= 0 {
            UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
        } else {
            UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
        }
    };
    Ok(time
        .and_then(|t| t.checked_add(nanos))
        .unwrap_or(UNIX_EPOCH))
}

/// Credentials with arbitrary fields: any strings (quotes, control
/// characters, non-ASCII), any expiration, and an assumed-role ARN that is
/// well formed as often as not, so that `AccountId` shows up.
pub fn arbitrary_credentials(u: &mut Unstructured<'_>) -> Result<Credentials> {
    let access_key_id: String = u.arbitrary()?;
    let secret: String = u.arbitrary()?;
    let session: String = u.arbitrary()?;
    let expiration = arbitrary_time(u)?;
    let arn = if u.arbitrary()? {
        let account: u64 = u.int_in_range(0..=999_999_999_999)?;
        let role: String = u.arbitrary()?;
        format!("arn:aws:sts::{account:012}:assumed-role/{role}/112233445566778899001")
    } else {
        u.arbitrary()?
    };
    let session_name: String = u.arbitrary()?;
    Ok(Credentials::new(
        access_key_id,
        Secret::new(secret),
        Secret::new(session),
        expiration,
        arn,
        session_name,
    ))
}

/// What an emitted `Expiration` must say for `expiration`: its whole second,
/// clamped to what RFC 3339 can write (1970-01-01T00:00:00Z to
/// 9999-12-31T23:59:59Z).
pub fn expected_expiration_secs(expiration: SystemTime) -> u64 {
    match expiration.duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_secs().min(LAST_RFC3339_SECS),
        Err(_) => 0,
    }
}

/// Asserts that `text` is `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339, UTC, `Z`, whole
/// seconds), that both humantime and the AWS SDKs' own parser read it, and
/// that it is [`expected_expiration_secs`] of `expiration`.
pub fn check_expiration(text: &str, expiration: SystemTime) {
    let shape = text.len() == 20
        && text.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    assert!(shape, "Expiration {text:?} is not YYYY-MM-DDTHH:MM:SSZ");
    let parsed = humantime::parse_rfc3339(text)
        .unwrap_or_else(|e| panic!("Expiration {text:?} does not parse: {e}"));
    let secs = parsed
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    assert_eq!(
        secs,
        expected_expiration_secs(expiration),
        "Expiration {text:?} for {expiration:?}"
    );
    // aws-config reads `Expiration` with smithy's RFC 3339 parser.
    let smithy = DateTime::from_str(text, Format::DateTime)
        .unwrap_or_else(|e| panic!("the AWS SDK cannot read Expiration {text:?}: {e}"));
    assert_eq!(u64::try_from(smithy.secs()).ok(), Some(secs), "{text:?}");
}

/// Asserts what every refusal of a config or policy file must be: at least
/// one problem, each naming `path`, with a reason, and a line (when it has
/// one) inside `src`.
pub fn check_problems(problems: &[tokenbridge_policy::Problem], path: &Path, src: &str) {
    assert!(!problems.is_empty(), "refused without a problem");
    let lines = src.bytes().filter(|&b| b == b'\n').count() + 1;
    for problem in problems {
        assert_eq!(problem.file, path);
        assert!(!problem.reason.trim().is_empty(), "{problem:?}");
        if let Some(line) = problem.line {
            assert!((1..=lines).contains(&line), "line {line} of {lines}");
        }
        assert!(
            problem
                .to_string()
                .starts_with(&format!("{}:", path.display()))
        );
    }
}

/// Asserts that `shifted`, the problems of a file with one more line at its
/// top, are `problems` one line further down. A problem about the whole
/// document (a missing table or key, which TOML places at its start) stays
/// on line 1.
pub fn check_shifted(
    problems: &[tokenbridge_policy::Problem],
    shifted: &[tokenbridge_policy::Problem],
) {
    assert_eq!(problems.len(), shifted.len(), "{problems:?} vs {shifted:?}");
    for (before, after) in problems.iter().zip(shifted) {
        let whole_document = before.line == Some(1)
            && after.line == Some(1)
            && before.reason.contains("missing field");
        assert!(
            whole_document || after.line == before.line.map(|line| line + 1),
            "{before:?} became {after:?}"
        );
    }
}
