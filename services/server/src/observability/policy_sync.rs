//! How far the policy in force on this replica is behind the store: the
//! store's latest revision the follower has learned of (a change
//! notification, or a load), the revision in force, and since when the
//! first has been ahead of the second. Fed by the app's store follower;
//! read by `/metrics` (`tokenbridge_policy_*`) and the console's status
//! page.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::observability::metrics::PolicyFreshness;

#[derive(Debug, Default)]
struct State {
    /// `(in force, store)`, once the first load happened.
    revisions: Option<(u64, u64)>,
    /// Since when the store has been ahead of the policy in force.
    behind_since: Option<Instant>,
}

/// The store follower's progress (see the [module docs](self)).
#[derive(Debug, Default)]
pub struct PolicySync {
    state: Mutex<State>,
}

impl PolicySync {
    /// A follower that has loaded nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The store is at `revision` (learned from a change notification).
    pub fn store_at(&self, revision: u64) {
        self.store_at_time(revision, Instant::now());
    }

    /// The policy in force is at `revision` after a load that read the
    /// store at `store_revision`.
    pub fn loaded(&self, in_force: u64, store_revision: u64) {
        self.loaded_at(in_force, store_revision, Instant::now());
    }

    fn store_at_time(&self, revision: u64, now: Instant) {
        let mut s = self.state();
        let (in_force, store) = s.revisions.unwrap_or((0, 0));
        let store = store.max(revision);
        s.revisions = Some((in_force, store));
        if store > in_force {
            s.behind_since.get_or_insert(now);
        }
    }

    fn loaded_at(&self, in_force: u64, store_revision: u64, now: Instant) {
        let mut s = self.state();
        let (old_in_force, old_store) = s.revisions.unwrap_or((0, 0));
        let in_force = in_force.max(old_in_force);
        let store = store_revision.max(old_store);
        s.revisions = Some((in_force, store));
        if in_force >= store {
            s.behind_since = None;
        } else {
            s.behind_since.get_or_insert(now);
        }
    }

    fn lag_at(&self, now: Instant) -> Option<Duration> {
        let s = self.state();
        s.revisions?;
        Some(
            s.behind_since
                .map_or(Duration::ZERO, |since| now.saturating_duration_since(since)),
        )
    }
}

impl PolicyFreshness for PolicySync {
    fn revisions(&self) -> Option<(u64, u64)> {
        self.state().revisions
    }

    fn lag(&self) -> Option<Duration> {
        self.lag_at(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_when_the_store_got_ahead() {
        let sync = PolicySync::new();
        let t0 = Instant::now();
        assert_eq!(sync.revisions(), None);
        assert_eq!(sync.lag_at(t0), None);
        sync.loaded_at(3, 3, t0);
        assert_eq!(sync.revisions(), Some((3, 3)));
        assert_eq!(
            sync.lag_at(t0 + Duration::from_secs(9)),
            Some(Duration::ZERO)
        );
        // A change is announced; the load fails for a while.
        sync.store_at_time(5, t0 + Duration::from_secs(10));
        sync.store_at_time(6, t0 + Duration::from_secs(11));
        assert_eq!(sync.revisions(), Some((3, 6)));
        assert_eq!(
            sync.lag_at(t0 + Duration::from_secs(14)),
            Some(Duration::from_secs(4))
        );
        // A load catches up with part of it, then with all.
        sync.loaded_at(5, 5, t0 + Duration::from_secs(15));
        assert_eq!(
            sync.lag_at(t0 + Duration::from_secs(15)),
            Some(Duration::from_secs(5))
        );
        sync.loaded_at(6, 6, t0 + Duration::from_secs(16));
        assert_eq!(sync.revisions(), Some((6, 6)));
        assert_eq!(
            sync.lag_at(t0 + Duration::from_secs(20)),
            Some(Duration::ZERO)
        );
    }
}
