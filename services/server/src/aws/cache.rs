//! The credentials cache: one STS call per (identity, role, duration) per
//! credential lifetime, however many callers ask.
//!
//! * Keyed by everything that shapes the credentials: the caller's `sub`, the
//!   role ARN and the duration (extend [`CacheKey`] when the STS call gains
//!   inputs).
//! * Concurrent misses for one key share a single STS call (moka's
//!   `try_get_with`); a failure is not cached, the next caller tries again.
//! * A cached credential is handed out only while more than `margin` of its
//!   life remains (default 20 minutes: more than botocore's 15-minute refresh
//!   window, so an SDK never receives something it would immediately refresh).
//!   Entries also expire from the cache at that point.
//! * A hit inside the refresh window (between `margin + refresh_window` and
//!   `margin` before expiry, the start jittered per entry) returns the cached
//!   credential at once and refreshes it in the background with the caller's
//!   own, just-verified token; a failed refresh keeps the good credential.
//! * Requests whose duration leaves no room for the margin bypass the cache.
//! * The policy decision is made by the caller before the cache is consulted,
//!   so a removed binding is denied at once, cached credentials or not.
//! * **Revocations** (`RevokeCachedCredentials`; [`Revocations`]): each entry
//!   is stamped with the revision of the revocations in force when its STS
//!   call began. A hit that a revocation of a higher revision names (its
//!   `sub`, its role, or both) is a miss: dropped, and fetched anew with the
//!   caller's token. So credentials obtained before this replica learned of
//!   the revocation are never handed out again, those of an STS call in
//!   flight at that moment included (a request that joined such a call makes
//!   one of its own). For an entry obtained since the newest revocation (or
//!   when there is none) the check is one comparison.
//!   [`CredentialCache::drop_revoked`] frees revoked entries at once.
//! * Size-bounded by entry count (`cache.max_entries`). One entry holds the
//!   key (~100 B), the credentials (~1.3 KiB with a typical 800-byte session
//!   token) and bookkeeping: about 2 KiB, so 100,000 entries ≈ 200 MiB and
//!   10,000 ≈ 20 MiB.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use moka::{
    Expiry,
    future::Cache,
    ops::compute::{CompResult, Op},
};
use rand::Rng as _;
use tracing::{debug, warn};

use tokenbridge_policy::ExpandedSession;
use tokenbridge_policy::SessionScope;
use tokenbridge_policy::{Revocation, Revocations};

use crate::{
    aws::sts::{AssumeRole, AssumeRoleRequest, Credentials, StsError},
    observability::metrics::{CacheLookup, Metrics},
};

/// Tells the time; tests move it.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// `[cache]` settings.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Whether credentials are cached at all.
    pub enabled: bool,
    /// Most entries held.
    pub max_entries: u64,
    /// Never hand out a credential with less life left than this.
    pub margin: Duration,
    /// Refresh in the background this long before the margin (jittered).
    pub refresh_window: Duration,
    /// STS calls one identity may cause per minute for one role (misses;
    /// background refreshes are not counted); 0: no budget.
    pub sts_calls_per_minute: u32,
    /// How many of them at once.
    pub sts_burst: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_entries: 100_000,
            margin: Duration::from_secs(20 * 60),
            refresh_window: Duration::from_secs(10 * 60),
            sts_calls_per_minute: 30,
            sts_burst: 10,
        }
    }
}

/// Everything that shapes the credentials STS returns.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The caller's `sub`.
    pub subject: String,
    /// The role.
    pub role_arn: String,
    /// The requested lifetime.
    pub duration_seconds: u32,
    /// The session policies the credentials are scoped by: two bindings
    /// scoping one role differently never share credentials.
    pub scope: SessionScope,
    /// Issuer mode's session tags and source identity (`None`:
    /// pass-through): sessions that differ never share credentials.
    pub session: Option<ExpandedSession>,
}

struct Entry {
    credentials: Credentials,
    /// Never handed out with less life left than this: the configured
    /// margin, or a third of the lifetime for durations too short for it.
    margin: Duration,
    /// When to start a background refresh (Unix milliseconds); pushed back
    /// by [`REFRESH_RETRY`] after a failed one.
    refresh_at: AtomicU64,
    refreshing: AtomicBool,
    /// The revision of the revocations in force when its STS call began.
    revision: u64,
}

/// After a failed background refresh, the next one waits this long.
pub const REFRESH_RETRY: Duration = Duration::from_secs(30);

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

struct UntilMargin;

impl UntilMargin {
    fn left(&self, entry: &Entry) -> Option<Duration> {
        let usable_until = entry.credentials.expiration.checked_sub(entry.margin)?;
        Some(
            usable_until
                .duration_since(SystemTime::now())
                .unwrap_or_default(),
        )
    }
}

impl Expiry<CacheKey, Arc<Entry>> for UntilMargin {
    fn expire_after_create(
        &self,
        _: &CacheKey,
        value: &Arc<Entry>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(self.left(value).unwrap_or_default())
    }

    fn expire_after_update(
        &self,
        _: &CacheKey,
        value: &Arc<Entry>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.left(value).unwrap_or_default())
    }
}

/// STS behind the cache.
pub struct CredentialCache {
    entries: Cache<CacheKey, Arc<Entry>>,
    sts: Arc<dyn AssumeRole>,
    budget: Option<DefaultKeyedRateLimiter<(String, String)>>,
    revocations: ArcSwap<Revocations>,
    config: CacheConfig,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

impl CredentialCache {
    /// A cache in front of `sts`.
    pub fn new(sts: Arc<dyn AssumeRole>, config: CacheConfig, clock: Arc<dyn Clock>) -> Self {
        let entries = Cache::builder()
            .max_capacity(config.max_entries)
            .expire_after(UntilMargin)
            .build();
        let budget = (config.sts_calls_per_minute > 0).then(|| {
            let per_minute =
                NonZeroU32::new(config.sts_calls_per_minute).unwrap_or(NonZeroU32::MIN);
            let burst = NonZeroU32::new(config.sts_burst).unwrap_or(NonZeroU32::MIN);
            RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst))
        });
        Self {
            entries,
            sts,
            budget,
            revocations: ArcSwap::from_pointee(Revocations::default()),
            config,
            clock,
            metrics: Metrics::disabled(),
        }
    }

    /// Counts hits, misses and background refreshes in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// How many credentials are cached. moka counts an insert or removal
    /// only when its housekeeping runs, so this cache runs it after each
    /// insert and removal of its own (on a miss, next to an STS call); and
    /// the app's janitor runs [`sync`](Self::sync) every minute, for
    /// entries that expired meanwhile.
    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Runs moka's pending housekeeping (counts, evictions of expired
    /// entries).
    pub async fn sync(&self) {
        self.entries.run_pending_tasks().await;
    }

    /// Credentials for `key`: cached while usable, else from STS with `req`.
    #[tracing::instrument(name = "credentials_cache", level = "debug", skip_all, fields(result))]
    pub async fn get(
        &self,
        key: CacheKey,
        req: AssumeRoleRequest,
    ) -> Result<Credentials, StsError> {
        if self.config.enabled
            && let Some(entry) = self.entries.get(&key).await
        {
            if self.usable(&entry) && !self.revoked(&key, &entry) {
                self.lookup(CacheLookup::Hit);
                self.maybe_refresh(&key, &entry, &req);
                return Ok(entry.credentials.clone());
            }
            self.remove_if_same(&key, &entry).await;
        }
        // Boxed: the STS call and moka's single flight make this future
        // kilobytes large, and a hit (the common case) would otherwise
        // carry, and move, that space on every call.
        Box::pin(self.miss(key, req)).await
    }

    /// [`get`](Self::get) past the cache: from STS (or a concurrent
    /// caller's STS call for the same key), cached while usable; with the
    /// cache off, straight from STS.
    async fn miss(&self, key: CacheKey, req: AssumeRoleRequest) -> Result<Credentials, StsError> {
        if !self.config.enabled {
            self.lookup(CacheLookup::Bypass);
            self.spend_budget(&key)?;
            return self.sts.assume_role(req).await;
        }
        self.lookup(CacheLookup::Miss);
        let sts = self.sts.clone();
        let duration = req.duration_seconds;
        let inserted = AtomicBool::new(false);
        let entry = self
            .entries
            .try_get_with(key.clone(), async {
                // One budget unit per STS call: the leader of a single flight
                // spends it, its followers share the answer.
                self.spend_budget(&key)?;
                let revision = self.revocations.load().revision();
                let credentials = sts.assume_role(req.clone()).await?;
                inserted.store(true, Ordering::Relaxed);
                Ok::<_, StsError>(self.entry(credentials, duration, revision))
            })
            .await
            .map_err(|e| (*e).clone())?;
        if inserted.load(Ordering::Relaxed) {
            // So that `entry_count` (tokenbridge_cache_entries) counts it now.
            self.sync().await;
        }
        if self.revoked(&key, &entry) {
            // This request joined an STS call that began before this replica
            // learned of a revocation naming it: drop what it returned and
            // ask again (a newer call, or one of its own).
            self.remove_if_same(&key, &entry).await;
            return self.get(key, req).await;
        }
        if !self.usable(&entry) {
            // Straight from STS but already inside the margin: hand it to this
            // caller (there is nothing better), never to the next one.
            self.remove_if_same(&key, &entry).await;
        }
        Ok(entry.credentials.clone())
    }

    /// Whether a revocation in force names `entry`, obtained before this
    /// replica learned of it.
    fn revoked(&self, key: &CacheKey, entry: &Entry) -> bool {
        self.revocations
            .load()
            .revokes(&key.subject, &key.role_arn, entry.revision)
    }

    /// The revocations in force.
    pub fn revocations(&self) -> Arc<Revocations> {
        self.revocations.load_full()
    }

    /// Puts `revocations` (a policy store's, at its revision) in force if
    /// they are newer than those in force: two loaders racing never put
    /// older ones back. Returns whether they bring a revocation the set in
    /// force did not have (then [`drop_revoked`](Self::drop_revoked) has
    /// something to drop).
    pub fn advance_revocations(&self, revocations: Revocations) -> bool {
        let (revision, newest) = (revocations.revision(), revocations.newest());
        let new = Arc::new(revocations);
        let previous = self.revocations.rcu(|current| {
            if revision > current.revision() {
                new.clone()
            } else {
                current.clone()
            }
        });
        revision > previous.revision() && newest > previous.newest()
    }

    /// Revokes cached credentials of `subject`, `role_arn` or the pair on
    /// this replica only, in memory (a replica without a policy store).
    pub fn revoke_here(&self, subject: Option<String>, role_arn: Option<String>) -> Revocation {
        let revoked_at = self.clock.now();
        let previous = self
            .revocations
            .rcu(|current| current.with(subject.clone(), role_arn.clone(), revoked_at));
        Revocation {
            subject,
            role_arn,
            revision: previous.revision() + 1,
            revoked_at,
        }
    }

    /// Drops every cached credential that the revocations in force revoke,
    /// and returns how many. (Its next hit would drop each anyway: this
    /// frees them at once and counts them.)
    pub async fn drop_revoked(&self) -> usize {
        let revocations = self.revocations.load_full();
        if revocations.is_empty() {
            return 0;
        }
        let revoked: Vec<(Arc<CacheKey>, Arc<Entry>)> = self
            .entries
            .iter()
            .filter(|(key, entry)| revocations.revokes(&key.subject, &key.role_arn, entry.revision))
            .collect();
        let mut dropped = 0;
        for (key, entry) in revoked {
            if self.remove_if_same(&key, &entry).await {
                dropped += 1;
            }
        }
        dropped
    }

    fn lookup(&self, lookup: CacheLookup) {
        tracing::Span::current().record("result", lookup.as_str());
        self.metrics.cache_lookup(lookup);
    }

    /// The margin and refresh window for credentials of `duration_seconds`:
    /// the configured ones, or, for durations that leave no room for them,
    /// a third of the lifetime and no refresh ahead (a caller gets at least
    /// two thirds of what it asked for, and STS is not called again for
    /// every request).
    fn margins(&self, duration_seconds: u32) -> (Duration, Duration) {
        let duration = Duration::from_secs(u64::from(duration_seconds));
        if duration > self.config.margin + Duration::from_secs(60) {
            (self.config.margin, self.config.refresh_window)
        } else {
            (duration / 3, Duration::ZERO)
        }
    }

    fn entry(&self, credentials: Credentials, duration_seconds: u32, revision: u64) -> Arc<Entry> {
        let (margin, window) = self.margins(duration_seconds);
        new_entry(credentials, margin, window, revision)
    }

    /// Forgets the STS budgets of identities that have gone quiet (run by
    /// the app's janitor with the rate limiters).
    pub fn retain_recent_budgets(&self) {
        if let Some(budget) = &self.budget {
            budget.retain_recent();
        }
    }

    /// Spends one STS call of `key`'s identity and role, or says when the
    /// next one is allowed.
    fn spend_budget(&self, key: &CacheKey) -> Result<(), StsError> {
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        budget
            .check_key(&(key.subject.clone(), key.role_arn.clone()))
            .map_err(|not_until| {
                StsError::Budget(not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                )))
            })
    }

    fn usable(&self, entry: &Entry) -> bool {
        self.clock.now() + entry.margin < entry.credentials.expiration
    }

    /// Removes `stale` if it is still `key`'s entry; returns whether it did.
    async fn remove_if_same(&self, key: &CacheKey, stale: &Arc<Entry>) -> bool {
        let removed = self
            .entries
            .entry_by_ref(key)
            .and_compute_with(|current| {
                let op = match current {
                    Some(c) if Arc::ptr_eq(c.value(), stale) => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
        self.sync().await;
        matches!(removed, CompResult::Removed(_))
    }

    /// Inside the refresh window, one background refresh per entry.
    fn maybe_refresh(&self, key: &CacheKey, entry: &Arc<Entry>, req: &AssumeRoleRequest) {
        let now = self.clock.now();
        if millis(now) < entry.refresh_at.load(Ordering::Acquire)
            || entry.refreshing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let (entries, sts, key, entry, req, metrics) = (
            self.entries.clone(),
            self.sts.clone(),
            key.clone(),
            entry.clone(),
            req.clone(),
            self.metrics.clone(),
        );
        let (margin, window) = self.margins(req.duration_seconds);
        let revision = self.revocations.load().revision();
        tokio::spawn(async move {
            let refreshed = sts.assume_role(req).await;
            metrics.cache_refresh(refreshed.is_ok());
            match refreshed {
                Ok(credentials) => {
                    debug!(role_arn = %key.role_arn, "cached credentials refreshed ahead of the margin");
                    entries
                        .insert(key, new_entry(credentials, margin, window, revision))
                        .await;
                }
                Err(e) => {
                    warn!(role_arn = %key.role_arn, error = %e, "background refresh failed; the cached credentials stay in use");
                    entry
                        .refresh_at
                        .store(millis(now + REFRESH_RETRY), Ordering::Release);
                    entry.refreshing.store(false, Ordering::Release);
                }
            }
        });
    }
}

/// An entry whose background refresh starts between `margin + window / 2`
/// and `margin + window` before expiry, at random, so entries cached together
/// do not all refresh together. `revision`: that of the revocations in force
/// when its STS call began.
fn new_entry(
    credentials: Credentials,
    margin: Duration,
    window: Duration,
    revision: u64,
) -> Arc<Entry> {
    let jitter = if window.is_zero() {
        Duration::ZERO
    } else {
        rand::rng().random_range(window / 2..=window)
    };
    let refresh_at = credentials
        .expiration
        .checked_sub(margin + jitter)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Arc::new(Entry {
        credentials,
        margin,
        refresh_at: AtomicU64::new(millis(refresh_at)),
        refreshing: AtomicBool::new(false),
        revision,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, atomic::AtomicUsize};

    use super::*;
    use futures_util::future::BoxFuture;
    use tokenbridge_proto::Secret;

    /// A clock tests move by hand.
    struct ManualClock(Mutex<SystemTime>);

    impl ManualClock {
        fn advance(&self, by: Duration) {
            let mut now = self.0.lock().unwrap();
            *now += by;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> SystemTime {
            *self.0.lock().unwrap()
        }
    }

    /// An STS that counts calls, issues credentials valid for the requested
    /// duration from the manual clock's now, and can be made to fail or wait.
    struct CountingSts {
        clock: Arc<ManualClock>,
        calls: AtomicUsize,
        fail: AtomicBool,
        gate: tokio::sync::Semaphore,
    }

    impl AssumeRole for CountingSts {
        fn assume_role(
            &self,
            req: AssumeRoleRequest,
        ) -> BoxFuture<'_, Result<Credentials, StsError>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
                let _permit = self.gate.acquire().await.unwrap();
                if self.fail.load(Ordering::SeqCst) {
                    return Err(StsError::Throttled("slow down".into()));
                }
                Ok(Credentials {
                    access_key_id: format!("ASIA{n:016}"),
                    secret_access_key: Secret::new(format!("secret-{n}")),
                    session_token: Secret::new(format!("session-{n}")),
                    expiration: self.clock.now()
                        + Duration::from_secs(u64::from(req.duration_seconds)),
                    assumed_role_arn: format!("{}/{}", req.role_arn, req.session_name),
                    request_id: None,
                })
            })
        }
    }

    fn setup(config: CacheConfig) -> (Arc<CredentialCache>, Arc<CountingSts>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock(Mutex::new(SystemTime::now())));
        let sts = Arc::new(CountingSts {
            clock: clock.clone(),
            calls: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
            gate: tokio::sync::Semaphore::new(Semaphore::MAX_PERMITS),
        });
        let cache = Arc::new(CredentialCache::new(sts.clone(), config, clock.clone()));
        (cache, sts, clock)
    }

    use tokio::sync::Semaphore;

    fn key(subject: &str, duration_seconds: u32) -> CacheKey {
        CacheKey {
            subject: subject.into(),
            role_arn: "arn:aws:iam::123456789012:role/R".into(),
            duration_seconds,
            scope: Default::default(),
            session: None,
        }
    }

    fn req(duration_seconds: u32) -> AssumeRoleRequest {
        AssumeRoleRequest {
            role_arn: "arn:aws:iam::123456789012:role/R".into(),
            session_name: "s".into(),
            duration_seconds,
            web_identity_token: Secret::new("token".to_string()).into(),
            scope: Default::default(),
        }
    }

    #[tokio::test]
    async fn concurrent_cold_requests_share_one_sts_call() {
        let (cache, sts, _) = setup(CacheConfig::default());
        // Hold STS until every caller is waiting on the same load.
        let gate_permits = sts.gate.available_permits();
        sts.gate.forget_permits(gate_permits);
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..200 {
            let cache = cache.clone();
            calls.spawn(async move {
                cache
                    .get(key("a", 3600), req(3600))
                    .await
                    .unwrap()
                    .access_key_id
            });
        }
        // Let every task reach the cache before STS answers.
        while sts.calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        sts.gate.add_permits(1);
        let keys = calls.join_all().await;
        assert_eq!(sts.calls.load(Ordering::SeqCst), 1);
        assert!(keys.iter().all(|k| k == &keys[0]));
    }

    #[tokio::test]
    async fn distinct_keys_get_distinct_calls() {
        let (cache, sts, _) = setup(CacheConfig::default());
        cache.get(key("a", 3600), req(3600)).await.unwrap();
        cache.get(key("b", 3600), req(3600)).await.unwrap();
        cache.get(key("a", 7200), req(7200)).await.unwrap();
        cache.get(key("a", 3600), req(3600)).await.unwrap();
        assert_eq!(sts.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn never_handed_out_inside_the_margin() {
        let config = CacheConfig {
            refresh_window: Duration::ZERO,
            ..CacheConfig::default()
        };
        let margin = config.margin;
        let (cache, sts, clock) = setup(config);
        let first = cache.get(key("a", 3600), req(3600)).await.unwrap();
        // Just before the margin: still the cached credential.
        clock.advance(Duration::from_secs(3600) - margin - Duration::from_secs(1));
        assert_eq!(
            cache
                .get(key("a", 3600), req(3600))
                .await
                .unwrap()
                .access_key_id,
            first.access_key_id
        );
        assert_eq!(sts.calls.load(Ordering::SeqCst), 1);
        // At the margin: a new one, and what is handed out has more than the margin left.
        clock.advance(Duration::from_secs(1));
        let second = cache.get(key("a", 3600), req(3600)).await.unwrap();
        assert_ne!(second.access_key_id, first.access_key_id);
        assert!(second.expiration.duration_since(clock.now()).unwrap() > margin);
        assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn refreshed_in_the_background_before_the_margin() {
        let config = CacheConfig::default();
        let (margin, window) = (config.margin, config.refresh_window);
        let (cache, sts, clock) = setup(config);
        let first = cache.get(key("a", 3600), req(3600)).await.unwrap();
        // Past the latest possible refresh point, before the margin.
        clock.advance(Duration::from_secs(3600) - margin - window / 2 + Duration::from_secs(1));
        let during = cache.get(key("a", 3600), req(3600)).await.unwrap();
        assert_eq!(
            during.access_key_id, first.access_key_id,
            "the cached credential is returned at once"
        );
        // The background refresh replaces it.
        loop {
            let now = cache.get(key("a", 3600), req(3600)).await.unwrap();
            if now.access_key_id != first.access_key_id {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_background_refresh_keeps_the_good_credential() {
        let (cache, sts, clock) = setup(CacheConfig::default());
        let first = cache.get(key("a", 3600), req(3600)).await.unwrap();
        sts.fail.store(true, Ordering::SeqCst);
        clock.advance(Duration::from_secs(3600 - 1200 - 300 + 1));
        let again = cache.get(key("a", 3600), req(3600)).await.unwrap();
        assert_eq!(again.access_key_id, first.access_key_id);
        // Wait for the refresh attempt to fail, then the good one is still served.
        while sts.calls.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            cache
                .get(key("a", 3600), req(3600))
                .await
                .unwrap()
                .access_key_id,
            first.access_key_id
        );
    }

    #[tokio::test]
    async fn short_durations_are_cached_while_two_thirds_of_their_life_remain() {
        let (cache, sts, _) = setup(CacheConfig::default());
        cache.get(key("a", 900), req(900)).await.unwrap();
        cache.get(key("a", 900), req(900)).await.unwrap();
        assert_eq!(sts.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn sts_calls_per_identity_and_role_are_budgeted() {
        let (cache, sts, _) = setup(CacheConfig {
            sts_calls_per_minute: 2,
            sts_burst: 2,
            ..CacheConfig::default()
        });
        cache.get(key("a", 3600), req(3600)).await.unwrap();
        cache.get(key("a", 3601), req(3601)).await.unwrap();
        let over = cache.get(key("a", 3602), req(3602)).await.unwrap_err();
        assert!(
            matches!(over, StsError::Budget(wait) if wait > Duration::ZERO),
            "{over:?}"
        );
        assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
        // Another identity has its own budget; hits spend nothing.
        cache.get(key("b", 3600), req(3600)).await.unwrap();
        cache.get(key("a", 3600), req(3600)).await.unwrap();
        assert_eq!(sts.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn failures_are_not_cached() {
        let (cache, sts, _) = setup(CacheConfig::default());
        sts.fail.store(true, Ordering::SeqCst);
        assert!(cache.get(key("a", 3600), req(3600)).await.is_err());
        sts.fail.store(false, Ordering::SeqCst);
        assert!(cache.get(key("a", 3600), req(3600)).await.is_ok());
        assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
    }

    fn revoked(revision: u64, subject: Option<&str>, role: Option<&str>) -> Revocations {
        Revocations::new(
            revision,
            vec![Revocation {
                subject: subject.map(str::to_string),
                role_arn: role.map(str::to_string),
                revision,
                revoked_at: SystemTime::now(),
            }],
        )
    }

    #[tokio::test]
    async fn a_revoked_credential_is_a_miss_and_fetched_anew_once() {
        let (cache, sts, _) = setup(CacheConfig::default());
        let first = cache.get(key("a", 3600), req(3600)).await.unwrap();
        let other = cache.get(key("b", 3600), req(3600)).await.unwrap();
        assert!(cache.advance_revocations(revoked(1, Some("a"), None)));
        let second = cache.get(key("a", 3600), req(3600)).await.unwrap();
        assert_ne!(second.access_key_id, first.access_key_id);
        // Obtained once the revocation was known: cached again.
        let third = cache.get(key("a", 3600), req(3600)).await.unwrap();
        assert_eq!(third.access_key_id, second.access_key_id);
        // Another caller is not named.
        let still = cache.get(key("b", 3600), req(3600)).await.unwrap();
        assert_eq!(still.access_key_id, other.access_key_id);
        assert_eq!(sts.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_sts_call_in_flight_at_revocation_is_never_served_as_new() {
        let (cache, sts, _) = setup(CacheConfig::default());
        // Hold STS: a call begins before the revocation is known ...
        let permits = sts.gate.available_permits();
        sts.gate.forget_permits(permits);
        let leader = tokio::spawn({
            let cache = cache.clone();
            async move { cache.get(key("a", 3600), req(3600)).await.unwrap() }
        });
        while sts.calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // ... the revocation arrives while it is in flight, and a request
        // after it joins the same flight.
        assert!(cache.advance_revocations(revoked(1, None, Some(&key("a", 0).role_arn))));
        let joiner = tokio::spawn({
            let cache = cache.clone();
            async move { cache.get(key("a", 3600), req(3600)).await.unwrap() }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        sts.gate.add_permits(Semaphore::MAX_PERMITS / 2);
        let (leader, joiner) = (leader.await.unwrap(), joiner.await.unwrap());
        // What the first call returned is handed to nobody; one more call,
        // made once the revocation was known, serves both.
        let first = format!("ASIA{:016}", 1);
        assert_ne!(leader.access_key_id, first);
        assert_ne!(joiner.access_key_id, first);
        assert_eq!(leader.access_key_id, joiner.access_key_id);
        assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
        let after = cache.get(key("a", 3600), req(3600)).await.unwrap();
        assert_eq!(after.access_key_id, leader.access_key_id);
    }

    #[tokio::test]
    async fn drop_revoked_frees_and_counts_what_a_revocation_names() {
        let (cache, _, _) = setup(CacheConfig::default());
        cache.get(key("a", 3600), req(3600)).await.unwrap();
        cache.get(key("a", 7200), req(7200)).await.unwrap();
        cache.get(key("b", 3600), req(3600)).await.unwrap();
        assert_eq!(cache.drop_revoked().await, 0, "nothing revoked yet");
        assert!(cache.advance_revocations(revoked(4, Some("a"), None)));
        assert_eq!(cache.drop_revoked().await, 2);
        cache.sync().await;
        assert_eq!(cache.entry_count(), 1);
        assert_eq!(cache.drop_revoked().await, 0);
    }

    #[tokio::test]
    async fn an_older_set_of_revocations_never_replaces_a_newer_one() {
        let (cache, _, _) = setup(CacheConfig::default());
        assert!(cache.advance_revocations(revoked(7, Some("a"), None)));
        assert!(!cache.advance_revocations(Revocations::new(5, Vec::new())));
        assert_eq!(cache.revocations().revision(), 7);
        // A newer store revision that brings no new revocation.
        assert!(!cache.advance_revocations(Revocations::new(
            8,
            cache.revocations().iter().cloned().collect()
        )));
        assert_eq!(cache.revocations().revision(), 8);
    }

    #[tokio::test]
    async fn revoked_here_without_a_store() {
        let (cache, sts, _) = setup(CacheConfig::default());
        let first = cache.get(key("a", 3600), req(3600)).await.unwrap();
        let r = cache.revoke_here(Some("a".into()), None);
        assert_eq!(r.revision, 1);
        let second = cache.get(key("a", 3600), req(3600)).await.unwrap();
        assert_ne!(second.access_key_id, first.access_key_id);
        assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
        assert_eq!(cache.revoke_here(None, Some("r".into())).revision, 2);
    }

    #[tokio::test]
    async fn the_bound_holds() {
        let (cache, _, _) = setup(CacheConfig {
            max_entries: 50,
            ..CacheConfig::default()
        });
        for i in 0..500 {
            cache
                .get(key(&format!("sub-{i}"), 3600), req(3600))
                .await
                .unwrap();
        }
        cache.sync().await;
        assert!(cache.entry_count() <= 50, "{}", cache.entry_count());
    }
}
