//! The opt-in file cache of `process` (`--cache-dir`), shared by every
//! invocation of the same user, since the aws CLI runs `credential_process`
//! for every command.
//!
//! - One file per (endpoint, audience, role, duration, metadata host): its
//!   name is the SHA-256 of that key, `<hex>.json`, and the file repeats the
//!   key, which must match.
//! - The directory is created with mode 0700 and must be owned by the user
//!   and not writable by group or others; otherwise the cache is not used.
//! - Files are written with mode 0600, atomically (a temporary file in the
//!   same directory, renamed over the old one), while holding an exclusive
//!   lock on `<hex>.lock`, so concurrent invocations share one fetch.
//! - A file is used only while its credentials have more than 15 minutes
//!   left (botocore starts refreshing at 15 minutes; anything less would
//!   make it call us on every request).
//! - A file that is not a regular file, is owned by someone else, is
//!   readable or writable by group or others, is too large, or does not
//!   parse, is ignored and replaced after a fresh fetch, never trusted.
//!
//! The cache never makes the command fail: any problem with it is logged
//! (at `warn`, visible with `RUST_LOG`) and the credentials are fetched.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tracing::debug;

use crate::process::ProcessOutput;

/// Cached credentials are used only while more than this is left.
pub const MIN_REMAINING: Duration = Duration::from_secs(15 * 60);
/// The largest cache file read.
const MAX_FILE_BYTES: u64 = 64 * 1024;
/// The version of the file format.
const FORMAT: u32 = 1;

/// What the cached credentials were fetched for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    /// `--endpoint`.
    pub endpoint: String,
    /// `--audience`.
    pub audience: String,
    /// `--role-arn`, or empty.
    pub role_arn: String,
    /// `--duration-seconds`, or 0.
    pub duration_seconds: u32,
    /// The metadata server, whose identity the credentials belong to.
    pub metadata_host: String,
}

impl CacheKey {
    /// The file name stem: hex SHA-256 of the key's canonical JSON.
    fn hash(&self) -> String {
        let canonical = serde_json::to_vec(&(
            "tokenbridge-cred",
            FORMAT,
            &self.endpoint,
            &self.audience,
            &self.role_arn,
            self.duration_seconds,
            &self.metadata_host,
        ))
        .unwrap_or_default();
        Sha256::digest(canonical)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

#[derive(Serialize, Deserialize)]
struct Entry {
    format: u32,
    key: CacheKey,
    credentials: ProcessOutput,
}

/// The cache directory, checked, for one key.
#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
    key: CacheKey,
    file: PathBuf,
    lock: PathBuf,
    owner: u32,
}

impl Cache {
    /// Opens (creating it if need be) the cache directory for the current
    /// user. `Err` says why the cache cannot be used.
    pub fn open(dir: &Path, key: CacheKey) -> Result<Self, String> {
        Self::open_as(dir, key, rustix::process::geteuid().as_raw())
    }

    /// [`open`](Self::open) for files owned by `owner`.
    pub fn open_as(dir: &Path, key: CacheKey, owner: u32) -> Result<Self, String> {
        let shown = dir.display();
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|error| format!("cannot create the cache directory {shown}: {error}"))?;
        }
        let meta = fs::metadata(dir)
            .map_err(|error| format!("cannot use the cache directory {shown}: {error}"))?;
        if !meta.is_dir() {
            return Err(format!("the cache directory {shown} is not a directory"));
        }
        if meta.uid() != owner {
            return Err(format!(
                "the cache directory {shown} belongs to uid {}, not {owner}",
                meta.uid()
            ));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(format!(
                "the cache directory {shown} is writable by group or others (mode {:o})",
                meta.mode() & 0o7777
            ));
        }
        let hash = key.hash();
        Ok(Self {
            file: dir.join(format!("{hash}.json")),
            lock: dir.join(format!("{hash}.lock")),
            dir: dir.to_owned(),
            key,
            owner,
        })
    }

    /// The cache file of this key.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// The cached credentials, if there are any that can be trusted and have
    /// more than [`MIN_REMAINING`] left at `now`.
    pub fn read(&self, now: SystemTime) -> Option<ProcessOutput> {
        match self.try_read(now) {
            Ok(output) => Some(output),
            Err(reason) => {
                debug!(file = %self.file.display(), reason, "cache miss");
                None
            }
        }
    }

    fn try_read(&self, now: SystemTime) -> Result<ProcessOutput, String> {
        let fd = rustix::fs::open(
            &self.file,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .map_err(|errno| format!("cannot open: {errno}"))?;
        let mut file = File::from(fd);
        let meta = file.metadata().map_err(|error| error.to_string())?;
        if !meta.is_file() {
            return Err("not a regular file".into());
        }
        if meta.uid() != self.owner {
            return Err(format!("owned by uid {}, not {}", meta.uid(), self.owner));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(format!(
                "accessible to group or others (mode {:o})",
                meta.mode() & 0o7777
            ));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(format!("{} bytes, too large", meta.len()));
        }
        let mut text = Vec::new();
        file.read_to_end(&mut text)
            .map_err(|error| format!("cannot read: {error}"))?;
        decode(&self.key, &text, now)
    }

    /// Takes the exclusive lock of this key (blocking until it is free).
    pub fn lock(&self) -> Result<File, String> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(OFlags::NOFOLLOW.bits() as i32)
            .open(&self.lock)
            .map_err(|error| format!("cannot open the lock file: {error}"))?;
        file.lock()
            .map_err(|error| format!("cannot take the lock: {error}"))?;
        Ok(file)
    }

    /// Stores `credentials` atomically: a 0600 temporary file in the cache
    /// directory, renamed over the cache file.
    pub fn write(&self, credentials: &ProcessOutput) -> Result<(), String> {
        let text = encode(&self.key, credentials)?;
        let mut temp = tempfile::Builder::new()
            .prefix(".tmp-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .tempfile_in(&self.dir)
            .map_err(|error| format!("cannot create a temporary file: {error}"))?;
        temp.write_all(&text)
            .and_then(|()| temp.flush())
            .map_err(|error| format!("cannot write: {error}"))?;
        temp.persist(&self.file)
            .map_err(|error| format!("cannot rename into place: {}", error.error))?;
        Ok(())
    }
}

/// The text of a cache file for `key` holding `credentials`.
pub fn encode(key: &CacheKey, credentials: &ProcessOutput) -> Result<Vec<u8>, String> {
    let entry = Entry {
        format: FORMAT,
        key: key.clone(),
        credentials: credentials.clone(),
    };
    serde_json::to_vec(&entry).map_err(|error| error.to_string())
}

/// The credentials in the text of a cache file, if it was written for `key`
/// and they have more than [`MIN_REMAINING`] left at `now`; `Err` says why
/// not. The text is untrusted: anything that is not such a file is refused.
pub fn decode(key: &CacheKey, text: &[u8], now: SystemTime) -> Result<ProcessOutput, String> {
    let entry: Entry = serde_json::from_slice(text).map_err(|_| "corrupt".to_owned())?;
    if entry.format != FORMAT {
        return Err(format!("format {}, not {FORMAT}", entry.format));
    }
    if &entry.key != key {
        return Err("written for another key".into());
    }
    let expiration = humantime::parse_rfc3339(&entry.credentials.expiration)
        .map_err(|_| "corrupt expiration".to_owned())?;
    let left = expiration.duration_since(now).unwrap_or_default();
    if left <= MIN_REMAINING {
        return Err(format!("only {} s left", left.as_secs()));
    }
    Ok(entry.credentials)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn key() -> CacheKey {
        CacheKey {
            endpoint: "http://127.0.0.1:1".into(),
            audience: "aud".into(),
            role_arn: "arn:aws:iam::123456789012:role/R".into(),
            duration_seconds: 0,
            metadata_host: "127.0.0.1:2".into(),
        }
    }

    fn output(expiration: SystemTime) -> ProcessOutput {
        ProcessOutput {
            version: 1,
            access_key_id: "ASIACACHED".into(),
            secret_access_key: "secret".into(),
            session_token: "session".into(),
            expiration: humantime::format_rfc3339_seconds(expiration).to_string(),
            account_id: Some("123456789012".into()),
        }
    }

    fn me() -> u32 {
        rustix::process::geteuid().as_raw()
    }

    #[test]
    fn round_trip_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("a/b");
        let cache = Cache::open(&cache_dir, key()).unwrap();
        let dir_mode = fs::metadata(&cache_dir).unwrap().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        let now = SystemTime::now();
        cache
            .write(&output(now + Duration::from_secs(3600)))
            .unwrap();
        let file_mode = fs::metadata(cache.path()).unwrap().mode() & 0o777;
        assert_eq!(file_mode, 0o600);
        let name = cache.path().file_name().unwrap().to_str().unwrap();
        assert_eq!(name.len(), 64 + ".json".len(), "{name}");
        let read = cache.read(now).expect("a hit");
        assert_eq!(read.access_key_id, "ASIACACHED");
        // The same credentials with 15 minutes or less left are not used.
        assert!(cache.read(now + Duration::from_secs(2700)).is_none());
        assert!(cache.read(now + Duration::from_secs(2699)).is_some());
    }

    #[test]
    fn other_keys_use_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = Cache::open(dir.path(), key()).unwrap();
        let mut other = key();
        other.duration_seconds = 3600;
        let b = Cache::open(dir.path(), other).unwrap();
        assert_ne!(a.path(), b.path());
        a.write(&output(SystemTime::now() + Duration::from_secs(3600)))
            .unwrap();
        assert!(b.read(SystemTime::now()).is_none());
    }

    #[test]
    fn a_file_written_for_another_key_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let a = Cache::open(dir.path(), key()).unwrap();
        a.write(&output(SystemTime::now() + Duration::from_secs(3600)))
            .unwrap();
        let mut other = key();
        other.audience = "other".into();
        let b = Cache::open(dir.path(), other).unwrap();
        // Put a's file where b's belongs, as if the hash collided.
        fs::copy(a.path(), b.path()).unwrap();
        fs::set_permissions(b.path(), fs::Permissions::from_mode(0o600)).unwrap();
        assert!(b.read(SystemTime::now()).is_none());
    }

    #[test]
    fn a_file_of_another_owner_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), key()).unwrap();
        cache
            .write(&output(SystemTime::now() + Duration::from_secs(3600)))
            .unwrap();
        // The same directory seen by another user (whose uid we pretend to
        // be, since tests cannot chown without root): the file is foreign.
        // Its directory is foreign to that user too, so check the file alone.
        let foreign = Cache {
            owner: me() + 1,
            ..Cache::open(dir.path(), key()).unwrap()
        };
        assert!(
            foreign
                .try_read(SystemTime::now())
                .unwrap_err()
                .contains("owned by uid")
        );
        assert!(Cache::open_as(dir.path(), key(), me() + 1).is_err());
    }

    #[test]
    fn too_open_corrupt_or_symlinked_files_are_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), key()).unwrap();
        let now = SystemTime::now();
        cache
            .write(&output(now + Duration::from_secs(3600)))
            .unwrap();
        fs::set_permissions(cache.path(), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(cache.try_read(now).unwrap_err().contains("group or others"));

        fs::write(cache.path(), "{not json").unwrap();
        fs::set_permissions(cache.path(), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(cache.try_read(now).unwrap_err(), "corrupt");

        let elsewhere = dir.path().join("elsewhere.json");
        cache
            .write(&output(now + Duration::from_secs(3600)))
            .unwrap();
        fs::rename(cache.path(), &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, cache.path()).unwrap();
        assert!(cache.try_read(now).unwrap_err().contains("cannot open"));

        // Writing replaces whatever was there with a good file.
        cache
            .write(&output(now + Duration::from_secs(3600)))
            .unwrap();
        assert!(cache.read(now).is_some());
        assert!(!fs::symlink_metadata(cache.path()).unwrap().is_symlink());
    }

    #[test]
    fn a_directory_others_can_write_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let error = Cache::open(dir.path(), key()).unwrap_err();
        assert!(error.contains("writable by group or others"), "{error}");
    }

    #[test]
    fn a_cache_path_that_cannot_be_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, "").unwrap();
        assert!(
            Cache::open(&file, key())
                .unwrap_err()
                .contains("not a directory")
        );
        let error = Cache::open(&file.join("sub"), key()).unwrap_err();
        assert!(error.contains("cannot create"), "{error}");
    }

    #[test]
    fn the_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), key()).unwrap();
        let held = cache.lock().unwrap();
        let other = File::options()
            .write(true)
            .open(dir.path().join(format!("{}.lock", key().hash())))
            .unwrap();
        assert!(other.try_lock().is_err());
        drop(held);
        assert!(other.try_lock().is_ok());
    }
}
