//! The one rule set: what a service account reference, a binding name, a
//! duration, an IAM ARN and a session policy may be. The policy file, the
//! admin API, the store and the server's config all check with these.

/// The shortest session STS allows.
pub const MIN_DURATION_SECONDS: u32 = 900;
/// The longest session STS allows.
pub const MAX_DURATION_SECONDS: u32 = 43_200;
/// `max_duration_seconds` when a binding does not say.
pub const DEFAULT_MAX_DURATION_SECONDS: u32 = 3_600;
/// STS's limit on an inline session policy, in characters.
pub const MAX_SESSION_POLICY_CHARS: usize = 2048;
/// STS's limit on managed session policy ARNs.
pub const MAX_MANAGED_POLICY_ARNS: usize = 10;
/// The most values one condition list may hold.
pub const MAX_CONDITION_VALUES: usize = 100;
/// The longest glob or value in a condition.
pub const MAX_CONDITION_VALUE_LEN: usize = 128;

/// What kind of service account reference an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceAccountRef {
    /// Digits: the token's `sub`.
    UniqueId,
    /// An email: the token's verified `email`.
    Email,
}

/// Google service account unique IDs are 21 decimal digits; any run of 1 to
/// 64 digits is accepted as one. An email has one `@` with something on each
/// side, a dotted domain and no white space.
pub fn classify_service_account(entry: &str) -> Option<ServiceAccountRef> {
    if !entry.is_empty() && entry.len() <= 64 && entry.bytes().all(|b| b.is_ascii_digit()) {
        return Some(ServiceAccountRef::UniqueId);
    }
    let (local, domain) = entry.split_once('@')?;
    let ok = !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && entry.len() <= 254
        && !entry.chars().any(|c| c.is_whitespace() || c.is_control());
    ok.then_some(ServiceAccountRef::Email)
}

/// A binding name: 1 to 128 of `A-Z a-z 0-9 . _ -`.
pub fn valid_binding_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether STS accepts `seconds` as a session duration.
pub fn valid_duration(seconds: u32) -> bool {
    (MIN_DURATION_SECONDS..=MAX_DURATION_SECONDS).contains(&seconds)
}

/// Checks that `arn` is an IAM role ARN:
/// `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`, with a 12-digit account,
/// a role name of 1 to 64 characters from `[A-Za-z0-9+=,.@_-]`, and a path of
/// the same characters and `/`.
pub fn check_role_arn(arn: &str) -> Result<(), String> {
    check_iam_arn(
        arn,
        "role",
        64,
        twelve_digits,
        "the account ID must be 12 digits",
    )
}

/// Checks an IAM managed policy ARN:
/// `arn:PARTITION:iam::(ACCOUNT|aws):policy/[PATH/]NAME`.
pub fn check_managed_policy_arn(arn: &str) -> Result<(), String> {
    check_iam_arn(
        arn,
        "policy",
        128,
        |account| account == "aws" || twelve_digits(account),
        "the account must be 12 digits, or `aws` for an AWS managed policy",
    )
}

fn twelve_digits(account: &str) -> bool {
    account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())
}

/// Checks an IAM ARN `arn:PARTITION:iam::ACCOUNT:KIND/[PATH/]NAME`: the
/// shape, an `aws*` partition, the account (`account_ok`, else
/// `account_why`), a name of 1 to `max_name` characters of
/// `[A-Za-z0-9+=,.@_-]` and a path of those and `/`. Role and managed
/// policy ARNs differ only in KIND, the name length and the account rule.
fn check_iam_arn(
    arn: &str,
    kind: &str,
    max_name: usize,
    account_ok: fn(&str) -> bool,
    account_why: &str,
) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "`{}` is not an IAM {kind} ARN: {why}",
            shorten(arn)
        ))
    };
    if arn.len() > 2048 {
        return bad("longer than 2048 characters");
    }
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("iam"), Some(""), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return bad(&format!("expected arn:aws:iam::ACCOUNT_ID:{kind}/NAME"));
    };
    if !partition.starts_with("aws")
        || !partition
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'-')
    {
        return bad("unknown partition");
    }
    if !account_ok(account) {
        return bad(account_why);
    }
    let Some(path_and_name) = resource
        .strip_prefix(kind)
        .and_then(|r| r.strip_prefix('/'))
    else {
        return bad(&format!("the resource must be {kind}/NAME"));
    };
    let name = path_and_name.rsplit('/').next().unwrap_or_default();
    let name_char = |b: u8| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b);
    if name.is_empty() || name.len() > max_name || !name.bytes().all(name_char) {
        return bad(&format!(
            "the {kind} name must be 1 to {max_name} characters of A-Z a-z 0-9 + = , . @ _ -"
        ));
    }
    if path_and_name.len() > 512 || !path_and_name.bytes().all(|b| name_char(b) || b == b'/') {
        return bad(&format!(
            "the {kind} path has characters IAM does not allow"
        ));
    }
    Ok(())
}

/// Checks an inline session policy: a JSON object with a `Statement`, at most
/// 2048 characters (STS's limit, white space included).
pub fn check_session_policy(policy: &str) -> Result<(), String> {
    let chars = policy.chars().count();
    if chars > MAX_SESSION_POLICY_CHARS {
        return Err(format!(
            "{chars} characters; STS accepts at most {MAX_SESSION_POLICY_CHARS}"
        ));
    }
    if policy.trim().is_empty() {
        return Err("empty; leave the field out for no session policy".into());
    }
    let value: serde_json::Value =
        serde_json::from_str(policy).map_err(|e| format!("not valid JSON: {e}"))?;
    let Some(object) = value.as_object() else {
        return Err("must be a JSON object (an IAM policy document)".into());
    };
    if !object.contains_key("Statement") {
        return Err("an IAM policy document needs a `Statement`".into());
    }
    Ok(())
}

/// At most 200 characters of an untrusted value, control characters replaced,
/// for messages.
pub fn shorten(value: &str) -> String {
    const LIMIT: usize = 200;
    let clean: String = value
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if clean.chars().count() <= LIMIT {
        clean
    } else {
        let head: String = clean.chars().take(LIMIT).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_arns() {
        assert!(check_role_arn("arn:aws:iam::111122223333:role/RoleA").is_ok());
        assert!(check_role_arn("arn:aws:iam::111122223333:role/team/RoleB").is_ok());
        assert!(check_role_arn("arn:aws-us-gov:iam::111122223333:role/a/b/c").is_ok());
        for bad in [
            "",
            "role/x",
            "arn:aws:iam::111122223333:user/x",
            "arn:aws:iam::11112222333:role/x",
            "arn:aws:iam::111122223333:role/",
            "arn:aws:iam::111122223333:role/has space",
            "arn:aws:sts::111122223333:role/x",
            "arn:AWS:iam::111122223333:role/x",
        ] {
            assert!(check_role_arn(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_account_references() {
        use ServiceAccountRef::*;
        assert_eq!(
            classify_service_account("112233445566778899001"),
            Some(UniqueId)
        );
        assert_eq!(
            classify_service_account("etl@p.iam.gserviceaccount.com"),
            Some(Email)
        );
        for bad in [
            "",
            "not an id",
            "a@b",
            "@b.c",
            "a@.b",
            "a@b.",
            "a b@c.d",
            "a@b@c.d",
        ] {
            assert_eq!(classify_service_account(bad), None, "{bad}");
        }
    }

    #[test]
    fn shorten_cuts_and_cleans() {
        assert_eq!(shorten("a\nb"), "a?b");
        let long = "x".repeat(500);
        assert_eq!(shorten(&long).chars().count(), 201);
    }
}
