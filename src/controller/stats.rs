//! Counters of what the controller did, for logs, `/metrics` and the benchmark ("API writes per
//! profile"). A write is counted when its request is sent, whether or not it succeeds.

use std::sync::{Arc, LazyLock};

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};
use serde::Serialize;

/// Live counters, shared by the reconcilers of one controller (and, registered, the metrics).
#[derive(Debug, Default)]
pub struct Stats {
    reconciles: Counter,
    failed_reconciles: Counter,
    applies: Counter,
    deletes: Counter,
    finalizer_patches: Counter,
    /// 1 while this replica runs the controller (holds the lease, when leader-elected).
    leader: Gauge,
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
            reconciles: self.reconciles.get(),
            failed_reconciles: self.failed_reconciles.get(),
            applies: self.applies.get(),
            deletes: self.deletes.get(),
            finalizer_patches: self.finalizer_patches.get(),
        }
    }

    /// Registers the counters (shared, not copied) and the leader gauge.
    pub fn register(&self, registry: &mut Registry) {
        let counters = [
            ("reconciles", "Profile reconciles run", &self.reconciles),
            (
                "reconcile_errors",
                "Reconciles that failed (retried with backoff)",
                &self.failed_reconciles,
            ),
            (
                "applies",
                "Create and server-side apply requests sent",
                &self.applies,
            ),
            ("deletes", "Delete requests sent", &self.deletes),
            (
                "finalizer_patches",
                "Patches removing an earlier version's finalizer",
                &self.finalizer_patches,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "leader",
            "1 while this replica runs the profile controller",
            self.leader.clone(),
        );
    }

    /// Every write request sent so far.
    pub fn writes(&self) -> u64 {
        self.snapshot().writes()
    }

    pub(super) fn reconcile(&self) {
        self.reconciles.inc();
    }

    pub(super) fn failed_reconcile(&self) {
        self.failed_reconciles.inc();
    }

    pub(super) fn apply(&self) {
        self.applies.inc();
    }

    pub(super) fn delete(&self) {
        self.deletes.inc();
    }

    pub(super) fn finalizer_patch(&self) {
        self.finalizer_patches.inc();
    }

    fn leading(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Marks the controller as running in this replica (the leader gauge) until dropped, also
    /// when the controller's future is dropped on a lost lease.
    pub(crate) fn lead(self: &Arc<Self>) -> Leading {
        self.leading(true);
        Leading(Arc::clone(self))
    }
}

/// See [`Stats::lead`].
pub(crate) struct Leading(Arc<Stats>);

impl Drop for Leading {
    fn drop(&mut self) {
        self.0.leading(false);
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

    #[test]
    fn registered_counters_are_the_live_ones() {
        let s = Arc::new(Stats::default());
        let mut registry = Registry::with_prefix("c");
        s.register(&mut registry);
        s.apply();
        s.failed_reconcile();
        let leading = s.lead();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "c_applies_total 1",
            "c_reconcile_errors_total 1",
            "c_leader 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        drop(leading);
        text.clear();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.lines().any(|l| l == "c_leader 0"), "{text}");
    }
}
