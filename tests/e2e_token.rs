//! End to end, current Kubeflow: `auto` picks token mode (a PodDefault per profile, the
//! projected KFP token injected into labelled pods).

mod support;

use support::scenario::{self, MODERN_CRDS, Scenario};
use tenancy_fixer::istio::ManagedKind;

const SCENARIO: Scenario = Scenario {
    crds: MODERN_CRDS,
    settings: "",
    expected_kinds: &[ManagedKind::PodDefault],
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_objects_follow_profile_and_namespace() {
    scenario::profile_objects_follow_profile_and_namespace(&SCENARIO, "token-alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_are_stored_mutated() {
    scenario::workloads_are_stored_mutated(&SCENARIO, "token-work").await;
}
