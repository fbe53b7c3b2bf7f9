//! Counters of what the controller did, for logs, `/metrics` and the benchmark ("API writes per
//! profile"). A write is counted when its request is sent, whether or not it succeeds.

use std::sync::{
    Arc, LazyLock,
    atomic::{AtomicU64, Ordering},
};

use serde::Serialize;

/// Live counters, shared by the reconcilers of one controller.
#[derive(Debug, Default)]
pub struct Stats {
    reconciles: AtomicU64,
    failed_reconciles: AtomicU64,
    applies: AtomicU64,
    deletes: AtomicU64,
    finalizer_patches: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsSnapshot {
    /// Reconciles run (including ones that only waited for the caches to fill).
    pub reconciles: u64,
    /// Reconciles that returned an error (the profile is retried with backoff).
    pub failed_reconciles: u64,
    /// Create (POST) and server-side apply requests.
    pub applies: u64,
    /// Delete requests.
    pub deletes: u64,
    /// JSON patches removing an earlier version's finalizer from a Profile.
    pub finalizer_patches: u64,
}

impl StatsSnapshot {
    /// Every write request sent to the API server.
    pub fn writes(&self) -> u64 {
        self.applies + self.deletes + self.finalizer_patches
    }
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            reconciles: self.reconciles.load(Ordering::Relaxed),
            failed_reconciles: self.failed_reconciles.load(Ordering::Relaxed),
            applies: self.applies.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
            finalizer_patches: self.finalizer_patches.load(Ordering::Relaxed),
        }
    }

    /// Every write request sent so far.
    pub fn writes(&self) -> u64 {
        self.snapshot().writes()
    }

    pub(super) fn reconcile(&self) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn failed_reconcile(&self) {
        self.failed_reconciles.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn apply(&self) {
        self.applies.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn delete(&self) {
        self.deletes.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn finalizer_patch(&self) {
        self.finalizer_patches.fetch_add(1, Ordering::Relaxed);
    }
}

static GLOBAL: LazyLock<Arc<Stats>> = LazyLock::new(Arc::default);

/// The counters [`run`](super::run) updates (process-wide).
pub fn stats() -> Arc<Stats> {
    Arc::clone(&GLOBAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_sum_applies_deletes_and_finalizer_patches() {
        let s = Stats::default();
        s.reconcile();
        s.apply();
        s.apply();
        s.delete();
        s.finalizer_patch();
        s.failed_reconcile();
        let snap = s.snapshot();
        assert_eq!(
            snap,
            StatsSnapshot {
                reconciles: 1,
                failed_reconciles: 1,
                applies: 2,
                deletes: 1,
                finalizer_patches: 1
            }
        );
        assert_eq!(snap.writes(), 4);
        assert_eq!(s.writes(), 4);
    }
}
