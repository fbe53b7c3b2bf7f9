//! End to end, current Istio with header mode forced: AuthorizationPolicy + EnvoyFilter,
//! hold-until-proxy-starts on Trial Jobs, `/quitquitquit` at the end.

mod support;

use support::scenario::{self, MODERN_CRDS, Scenario};
use tenancy_fixer::istio::ManagedKind;

const SCENARIO: Scenario = Scenario {
    crds: MODERN_CRDS,
    settings: "kfpAccess: header\n",
    expected_kinds: &[ManagedKind::AuthorizationPolicy, ManagedKind::EnvoyFilter],
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_objects_follow_profile_and_namespace() {
    scenario::profile_objects_follow_profile_and_namespace(&SCENARIO, "modern-alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_are_stored_mutated() {
    scenario::workloads_are_stored_mutated(&SCENARIO, "modern-work").await;
}
