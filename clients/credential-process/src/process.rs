//! `tokenbridge-cred process`: credentials as AWS `credential_process` JSON
//! on stdout, optionally from the file cache.

use std::{
    io::Write as _,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tokenbridge_client::{Credentials, DEFAULT_METADATA_HOST, METADATA_HOST_ENV};
use tokio::time::timeout;
use tracing::{debug, warn};

use crate::{
    cache::{Cache, CacheKey},
    cli::ProcessArgs,
    fetch::{Failure, Fetcher},
};

/// The longest wait for another invocation's fetch (the holder of the lock)
/// before fetching without the lock.
const MAX_LOCK_WAIT: Duration = Duration::from_secs(2);

/// The `credential_process` output, version 1
/// (<https://docs.aws.amazon.com/cli/latest/topic/config-vars.html#sourcing-credentials-from-external-processes>).
///
/// It holds secrets in the clear, to print them; `Debug` redacts them.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProcessOutput {
    /// Always 1.
    pub version: u8,
    /// The access key ID.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// The session token.
    pub session_token: String,
    /// Strict RFC 3339 in UTC with `Z`, to the second.
    pub expiration: String,
    /// The account of the assumed role, when its ARN shows it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub account_id: Option<String>,
}

impl std::fmt::Debug for ProcessOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessOutput")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &tokenbridge_client::REDACTED)
            .field("session_token", &tokenbridge_client::REDACTED)
            .field("expiration", &self.expiration)
            .field("account_id", &self.account_id)
            .finish()
    }
}

impl From<&Credentials> for ProcessOutput {
    fn from(credentials: &Credentials) -> Self {
        Self {
            version: 1,
            access_key_id: credentials.access_key_id.clone(),
            secret_access_key: credentials.secret_access_key.expose().clone(),
            session_token: credentials.session_token.expose().clone(),
            expiration: rfc3339(credentials.expiration),
            account_id: credentials.account_id().map(str::to_owned),
        }
    }
}

/// `2026-11-26T03:37:00Z`: RFC 3339, UTC, whole seconds. A time RFC 3339
/// cannot write (before 1970, after 9999) is clamped to its range, where
/// humantime would panic; only a misbehaving server sends such a time.
pub fn rfc3339(time: SystemTime) -> String {
    /// 9999-12-31T23:59:59Z, the last second of a four-digit year.
    const LAST: Duration = Duration::from_secs(253_402_300_799);
    let time = time.clamp(UNIX_EPOCH, UNIX_EPOCH + LAST);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Runs `process`: prints the credentials, or fails without printing
/// anything on stdout.
pub async fn run(args: ProcessArgs) -> Result<(), Failure> {
    let cache = args.cache_dir.as_deref().and_then(|dir| {
        Cache::open(dir, cache_key(&args))
            .inspect_err(|reason| warn!(reason, "not using the cache"))
            .ok()
    });
    if let Some(hit) = cache
        .as_ref()
        .and_then(|cache| cache.read(SystemTime::now()))
    {
        debug!("cache hit");
        return print(&hit);
    }

    let lock = match &cache {
        Some(cache) => lock(cache).await,
        None => None,
    };
    if lock.is_some()
        && let Some(hit) = cache
            .as_ref()
            .and_then(|cache| cache.read(SystemTime::now()))
    {
        debug!("cache hit after waiting for another invocation");
        return print(&hit);
    }

    let fetcher = Fetcher::new(&args.common)?;
    let output = ProcessOutput::from(&fetcher.fetch().await?);
    if let Some(cache) = &cache
        && let Err(reason) = cache.write(&output)
    {
        warn!(reason, file = %cache.path().display(), "cannot write the cache");
    }
    drop(lock);
    print(&output)
}

fn cache_key(args: &ProcessArgs) -> CacheKey {
    let common = &args.common;
    let metadata_host = common
        .metadata_host
        .clone()
        .or_else(|| std::env::var(METADATA_HOST_ENV).ok())
        .unwrap_or_else(|| DEFAULT_METADATA_HOST.to_owned());
    CacheKey {
        endpoint: common.endpoint.trim_end_matches('/').to_owned(),
        audience: common.audience.clone(),
        role_arn: common.role_arn.clone().unwrap_or_default(),
        duration_seconds: common.duration_seconds.unwrap_or(0),
        metadata_host,
    }
}

/// The key's lock, waiting at most [`MAX_LOCK_WAIT`]; `None` if it cannot be
/// had (the fetch then goes ahead without it).
async fn lock(cache: &Cache) -> Option<std::fs::File> {
    let cache = cache.clone();
    let waiting = tokio::task::spawn_blocking(move || cache.lock());
    match timeout(MAX_LOCK_WAIT, waiting).await {
        Ok(Ok(Ok(file))) => Some(file),
        Ok(Ok(Err(reason))) => {
            warn!(reason, "fetching without the cache lock");
            None
        }
        Ok(Err(_)) | Err(_) => {
            warn!("the cache lock is busy; fetching without it");
            None
        }
    }
}

/// `output` as the one line of JSON, newline included, that `process` prints.
pub fn json_line(output: &ProcessOutput) -> Result<String, Failure> {
    let mut line = serde_json::to_string(output).map_err(|error| Failure {
        message: format!("cannot encode the credentials: {error}"),
        exit: crate::fetch::EXIT_FAILED,
    })?;
    line.push('\n');
    Ok(line)
}

/// Prints `output` as one line of JSON on stdout.
fn print(output: &ProcessOutput) -> Result<(), Failure> {
    let line = json_line(output)?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(line.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|error| Failure {
            message: format!("cannot write to stdout: {error}"),
            exit: crate::fetch::EXIT_FAILED,
        })
}

#[cfg(test)]
mod tests {
    use tokenbridge_client::Secret;

    use super::*;

    #[test]
    fn output_has_the_credential_process_shape() {
        let credentials = Credentials::new(
            "ASIAEXAMPLE",
            Secret::new("secret".into()),
            Secret::new("session".into()),
            UNIX_EPOCH + Duration::from_secs(1_900_000_000),
            "arn:aws:sts::111122223333:assumed-role/R/s",
            "s",
        );
        let json = serde_json::to_string(&ProcessOutput::from(&credentials)).unwrap();
        assert_eq!(
            json,
            r#"{"Version":1,"AccessKeyId":"ASIAEXAMPLE","SecretAccessKey":"secret","SessionToken":"session","Expiration":"2030-03-17T17:46:40Z","AccountId":"111122223333"}"#
        );
    }

    #[test]
    fn expirations_rfc3339_cannot_write_are_clamped_not_a_panic() {
        // Found by the `credential_process` fuzz target: humantime panics
        // before 1970 and after 9999, and the client accepts any positive
        // `expiration.seconds` from the server.
        let far = UNIX_EPOCH + Duration::from_secs(i64::MAX.unsigned_abs());
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59Z");
        let last = UNIX_EPOCH + Duration::new(253_402_300_799, 999_999_999);
        assert_eq!(rfc3339(last), "9999-12-31T23:59:59Z");
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(rfc3339(before), "1970-01-01T00:00:00Z");
        let credentials = Credentials::new(
            "ASIAEXAMPLE",
            Secret::new("secret".into()),
            Secret::new("session".into()),
            far,
            "",
            "s",
        );
        let json = json_line(&ProcessOutput::from(&credentials)).unwrap();
        assert!(
            json.contains(r#""Expiration":"9999-12-31T23:59:59Z""#),
            "{json}"
        );
    }

    #[test]
    fn account_id_is_left_out_when_unknown() {
        let credentials = Credentials::new(
            "ASIAEXAMPLE",
            Secret::new("secret".into()),
            Secret::new("session".into()),
            UNIX_EPOCH,
            "",
            "s",
        );
        let json = serde_json::to_string(&ProcessOutput::from(&credentials)).unwrap();
        assert!(!json.contains("AccountId"), "{json}");
        assert!(
            json.contains(r#""Expiration":"1970-01-01T00:00:00Z""#),
            "{json}"
        );
    }
}
