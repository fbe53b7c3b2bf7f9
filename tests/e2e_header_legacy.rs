//! End to end, legacy cluster: `rbac.istio.io` is served, so `auto` picks the prototype's
//! recipe (header mode with ServiceRoleBindings, sleep before training, pkill at the end).

mod support;

use support::scenario::{self, LEGACY_CRDS, Scenario};
use tenancy_fixer::istio::ManagedKind;

const SCENARIO: Scenario = Scenario {
    crds: LEGACY_CRDS,
    settings: "",
    expected_kinds: &[ManagedKind::ServiceRoleBinding, ManagedKind::EnvoyFilter],
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_objects_follow_profile_and_namespace() {
    scenario::profile_objects_follow_profile_and_namespace(&SCENARIO, "legacy-alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_are_stored_mutated() {
    scenario::workloads_are_stored_mutated(&SCENARIO, "legacy-work").await;
}
