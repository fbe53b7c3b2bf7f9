//! Workloads with pod templates (batch Jobs, the Training Operator's jobs, JobSets, TrainJobs):
//! behaviour 4 and the reserved extension label.
//!
//! On CREATE, a *trial workload* — controlled by a Katib Trial and created by a trusted
//! controller — runs as the profile's editor account, in the mesh, labelled for the profile's
//! ml-pipeline access: every pod template is changed. A workload a trusted controller creates
//! for another workload (a JobSet's Jobs, a TrainJob's JobSet) keeps its templates as they are.
//! Any other workload loses the extension label from every template. Decided from the request
//! alone: no state is kept between requests.
//!
//! On UPDATE nobody may add or change the label on a template: its old value is restored.

use std::collections::BTreeMap;

use super::{
    Decision, PROXY_CONFIG_ANNOTATION, SIDECAR_INJECT_ANNOTATION, SIDECAR_INJECT_LABEL, is_trial,
    restore_reserved_label, with_hold_until_proxy_starts,
};
use crate::{
    config::{Config, ProxyStartup},
    model::{ObjectMeta, PodTemplate, Workload, WorkloadKind},
};

pub const RULE: &str = "trial-workload";
pub const HOLD_RULE: &str = "trial-workload-hold-proxy";
/// Istio's opt-out (`sidecar.istio.io/inject` other than "true") was overridden: a trial's
/// workload belongs in the mesh.
pub const ISTIO_OVERRIDE_RULE: &str = "istio-opt-out-overridden";
pub use super::{RESERVED_RULE, RESERVED_UPDATE_RULE as UPDATE_RULE};

/// Who made a workload, as far as trust goes.
enum Origin {
    /// A trusted controller, for a Katib Trial that controls it.
    Trial,
    /// A trusted controller, for a workload that controls it.
    Workload,
    /// Anything else, and why.
    Untrusted(&'static str),
}

fn origin(workload: &Workload<'_>, username: Option<&str>, config: &Config) -> Origin {
    if !config.trusts(username) {
        return Origin::Untrusted("created by a user who is not a trusted controller");
    }
    match workload.metadata.controller_owner() {
        Some(owner) if is_trial(owner) => Origin::Trial,
        Some(owner) if WorkloadKind::owns(owner) => Origin::Workload,
        _ => Origin::Untrusted("controlled by neither a Trial nor a workload"),
    }
}

/// The rules for a workload that `username` creates in `namespace`.
pub fn mutate_workload<'a>(
    workload: &Workload<'a>,
    namespace: &str,
    username: Option<&str>,
    config: &Config,
) -> Decision<Workload<'a>> {
    let settings = &config.settings;
    if config.namespace_excluded(namespace) {
        return Decision::unchanged(workload, "namespace excluded");
    }
    let mut decision = Decision::start(workload);
    let Decision {
        object,
        applied,
        skipped,
    } = &mut decision;
    let templates = object.templates_mut();
    match origin(workload, username, config) {
        Origin::Untrusted(reason) => {
            // The label grants the owner's identity in header mode: only a trial's workload may
            // carry it. Checked before the Kubeflow namespace is left alone.
            let mut removed = false;
            for (_, template) in templates {
                if let Some(meta) = &mut template.metadata
                    && meta.label(&settings.extension_label).is_some()
                {
                    meta.remove_label(&settings.extension_label);
                    removed = true;
                }
            }
            if removed {
                applied.push(RESERVED_RULE);
                skipped.push(format!("reserved label removed: {reason}").into());
            } else {
                skipped.push(format!("not a trial workload: {reason}").into());
            }
        }
        Origin::Workload => {
            skipped.push("made by a trusted controller for a workload: templates kept".into())
        }
        Origin::Trial if namespace == settings.kubeflow_namespace => {
            skipped.push("in the Kubeflow namespace".into())
        }
        Origin::Trial if templates.is_empty() => skipped.push("no pod template".into()),
        Origin::Trial => {
            let mut changed = false;
            let mut overridden = false;
            let mut held = false;
            for (key, template) in templates {
                let (c, o) = join_trial(template, config);
                changed |= c;
                overridden |= o;
                if config.modes.proxy_startup == ProxyStartup::HoldAnnotation {
                    let meta = template.metadata.get_or_insert_default();
                    match with_hold_until_proxy_starts(meta) {
                        Ok(value) => held |= set_annotation(meta, PROXY_CONFIG_ANNOTATION, &value),
                        Err(reason) => skipped.push(format!("{key}: {reason}").into()),
                    }
                }
            }
            if changed {
                applied.push(RULE);
            }
            if overridden {
                applied.push(ISTIO_OVERRIDE_RULE);
            }
            if held {
                applied.push(HOLD_RULE);
            }
        }
    }
    if !decision.changed() && decision.skipped.is_empty() {
        decision.skip("already mutated");
    }
    decision.settle(workload)
}

/// A trial's pod template joins the profile: the extension label, Istio injection (label, and
/// the annotation where one is set) and the editor account. Returns (changed, an Istio opt-out
/// was overridden).
fn join_trial(template: &mut PodTemplate<'_>, config: &Config) -> (bool, bool) {
    let settings = &config.settings;
    let meta = template.metadata.get_or_insert_default();
    let spec = template.spec.get_or_insert_default();
    let mut changed = set_label(meta, &settings.extension_label, "true");
    // Istio reads the label before the annotation, and its injector skips pods labelled "false".
    let overridden = meta
        .label(SIDECAR_INJECT_LABEL)
        .is_some_and(|v| v != "true")
        || meta
            .annotation(SIDECAR_INJECT_ANNOTATION)
            .is_some_and(|v| v != "true");
    changed |= set_label(meta, SIDECAR_INJECT_LABEL, "true");
    if meta.annotation(SIDECAR_INJECT_ANNOTATION).is_some() {
        changed |= set_annotation(meta, SIDECAR_INJECT_ANNOTATION, "true");
    }
    if spec.service_account_name.as_deref() != Some(settings.service_account.as_str()) {
        spec.service_account_name = Some(settings.service_account.clone().into());
        changed = true;
    }
    if spec
        .service_account
        .as_ref()
        .is_some_and(|sa| *sa != settings.service_account)
    {
        spec.service_account = Some(settings.service_account.clone().into());
        changed = true;
    }
    (changed, overridden)
}

/// UPDATE of a workload: on every pod template the extension label may be removed, not added
/// or changed (a suspended Job's template, for one, can be edited).
pub fn guard_workload_update<'a>(
    workload: &Workload<'a>,
    old: &Workload<'_>,
    namespace: &str,
    config: &Config,
) -> Decision<Workload<'a>> {
    if config.namespace_excluded(namespace) {
        return Decision::unchanged(workload, "namespace excluded");
    }
    let label = &config.settings.extension_label;
    let mut old = old.clone();
    // The old label of each template, by its place; a place named twice counts as unlabelled.
    let mut old_labels: BTreeMap<String, Option<&str>> = BTreeMap::new();
    for (key, template) in old.templates_mut() {
        let value = template
            .metadata
            .as_ref()
            .and_then(|meta| meta.label(label));
        old_labels
            .entry(key)
            .and_modify(|seen| {
                if *seen != value {
                    *seen = None;
                }
            })
            .or_insert(value);
    }
    let mut decision = Decision::start(workload);
    let mut restored = false;
    for (key, template) in decision.object.templates_mut() {
        if let Some(meta) = &mut template.metadata {
            restored |=
                restore_reserved_label(meta, old_labels.get(&key).copied().flatten(), label);
        }
    }
    if restored {
        decision.applied(UPDATE_RULE);
    } else {
        decision.skip("reserved label not added or changed");
    }
    decision
}

impl<'a> Decision<Workload<'a>> {
    /// Drops the empty template parts created while looking, when nothing changed.
    fn settle(mut self, original: &Workload<'a>) -> Self {
        if !self.changed() {
            self.object = original.clone();
        }
        self
    }
}

/// Sets a label; true when that changed it.
fn set_label(meta: &mut ObjectMeta<'_>, key: &str, value: &str) -> bool {
    let changed = meta.label(key) != Some(value);
    if changed {
        meta.set_label(key, value);
    }
    changed
}

/// Sets an annotation; true when that changed it.
fn set_annotation(meta: &mut ObjectMeta<'_>, key: &str, value: &str) -> bool {
    let changed = meta.annotation(key) != Some(value);
    if changed {
        meta.set_annotation(key, value);
    }
    changed
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::{Value, json};

    use super::*;
    use crate::testing::config;

    const KATIB: Option<&str> = Some("system:serviceaccount:kubeflow:katib-controller");
    const TRAINER: Option<&str> =
        Some("system:serviceaccount:kubeflow-system:kubeflow-trainer-controller-manager");
    const TENANT: Option<&str> = Some("alice@example.com");

    fn trial_owner(api_version: &str) -> Value {
        json!([{"apiVersion": api_version, "kind": "Trial", "name": "trial-1", "uid": "u", "controller": true}])
    }

    fn template(labels: Value) -> Value {
        json!({"metadata": {"labels": labels}, "spec": {"serviceAccountName": "pipeline-runner", "containers": [{"name": "c"}]}})
    }

    /// A workload of `kind` (its templates at the kind's paths), owned as `owners` says.
    fn workload(kind: &str, owners: Value, labels: Value) -> Value {
        let t = template(labels);
        let spec = match kind {
            "Job" => json!({"suspend": false, "template": t}),
            "PyTorchJob" => {
                json!({"pytorchReplicaSpecs": {"Master": {"template": t}, "Worker": {"replicas": 2, "template": t}}})
            }
            "TFJob" => json!({"tfReplicaSpecs": {"Worker": {"template": t}}}),
            "MPIJob" => {
                json!({"mpiReplicaSpecs": {"Launcher": {"template": t}, "Worker": {"template": t}}})
            }
            "XGBoostJob" => json!({"xgbReplicaSpecs": {"Master": {"template": t}}}),
            "PaddleJob" => json!({"paddleReplicaSpecs": {"Worker": {"template": t}}}),
            "JAXJob" => json!({"jaxReplicaSpecs": {"Worker": {"template": t}}}),
            "JobSet" => {
                json!({"replicatedJobs": [{"name": "a", "template": {"spec": {"template": t}}}, {"name": "b", "template": {"spec": {"template": t}}}]})
            }
            "TrainJob" => {
                json!({"runtimeRef": {"name": "torch-distributed"}, "runtimePatches": [{"manager": "katib", "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{"name": "node", "template": {"spec": {"template": t}}}]}}}}]})
            }
            other => panic!("{other}"),
        };
        json!({"metadata": {"name": "w", "ownerReferences": owners}, "spec": spec})
    }

    fn view(object: &Value) -> Workload<'_> {
        Workload::deserialize(object).unwrap()
    }

    const KINDS: [&str; 9] = [
        "Job",
        "PyTorchJob",
        "TFJob",
        "MPIJob",
        "XGBoostJob",
        "PaddleJob",
        "JAXJob",
        "JobSet",
        "TrainJob",
    ];

    fn metas<'a>(w: &mut Workload<'a>) -> Vec<ObjectMeta<'a>> {
        w.templates_mut()
            .into_iter()
            .map(|(_, t)| t.metadata.clone().unwrap_or_default())
            .collect()
    }

    #[test]
    fn every_template_of_every_trial_workload_kind_joins_the_profile() {
        for kind in KINDS {
            let object = workload(
                kind,
                trial_owner("kubeflow.org/v1beta1"),
                json!({"app": "x"}),
            );
            let d = mutate_workload(&view(&object), "alice", KATIB, &Config::default());
            assert_eq!(d.applied, vec![RULE, HOLD_RULE], "{kind}");
            let mut changed = d.object.clone();
            let count = changed.templates_mut().len();
            assert!(count >= 1, "{kind}");
            for (key, t) in changed.templates_mut() {
                let meta = t.metadata.as_ref().unwrap();
                assert_eq!(
                    meta.label("kubeflow-extension"),
                    Some("true"),
                    "{kind} {key}"
                );
                assert_eq!(
                    meta.label("sidecar.istio.io/inject"),
                    Some("true"),
                    "{kind} {key}"
                );
                assert_eq!(meta.label("app"), Some("x"));
                assert_eq!(
                    meta.annotation("sidecar.istio.io/inject"),
                    None,
                    "only where set"
                );
                assert_eq!(
                    meta.annotation("proxy.istio.io/config"),
                    Some(r#"{"holdApplicationUntilProxyStarts":true}"#)
                );
                let spec = t.spec.as_ref().unwrap();
                assert_eq!(spec.service_account_name.as_deref(), Some("default-editor"));
            }
            // Reinvocation changes nothing more.
            let again = mutate_workload(&d.object, "alice", KATIB, &Config::default());
            assert!(!again.changed(), "{kind}: {:?}", again.applied);
        }
    }

    #[test]
    fn v1alpha3_trial_owner_counts_too() {
        let object = workload("Job", trial_owner("kubeflow.org/v1alpha3"), json!({}));
        assert!(mutate_workload(&view(&object), "alice", KATIB, &Config::default()).changed());
    }

    #[test]
    fn istio_opt_out_is_overridden_and_said() {
        let mut object = workload(
            "Job",
            trial_owner("kubeflow.org/v1beta1"),
            json!({"sidecar.istio.io/inject": "false"}),
        );
        object["spec"]["template"]["metadata"]["annotations"] =
            json!({"sidecar.istio.io/inject": "false"});
        let d = mutate_workload(
            &view(&object),
            "alice",
            KATIB,
            &config("katib:\n  proxyStartup: sleep\n"),
        );
        assert_eq!(d.applied, vec![RULE, ISTIO_OVERRIDE_RULE]);
        let mut w = d.object;
        let meta = &metas(&mut w)[0];
        assert_eq!(meta.label("sidecar.istio.io/inject"), Some("true"));
        assert_eq!(meta.annotation("sidecar.istio.io/inject"), Some("true"));
    }

    /// Forgeries and half-matches: the label goes, nothing is added.
    #[test]
    fn untrusted_or_half_matching_trial_workloads_lose_the_label() {
        let labelled = json!({"kubeflow-extension": "true"});
        let not_controller = json!([{"apiVersion": "kubeflow.org/v1beta1", "kind": "Trial", "name": "t", "uid": "u"}]);
        let controller_false = json!([{"apiVersion": "kubeflow.org/v1beta1", "kind": "Trial", "name": "t", "uid": "u", "controller": false}]);
        for kind in KINDS {
            for (owners, user) in [
                (trial_owner("kubeflow.org/v1beta1"), TENANT),
                (trial_owner("kubeflow.org/v1beta1"), None),
                (trial_owner("kubeflow.org/v999"), KATIB),
                (trial_owner("kubeflow.org/v1"), KATIB),
                (trial_owner("example.com/v1beta1"), KATIB),
                (trial_owner("kubeflow.org"), KATIB),
                (
                    json!([{"apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment", "name": "t", "controller": true}]),
                    KATIB,
                ),
                (not_controller.clone(), KATIB),
                (controller_false.clone(), KATIB),
                (json!([]), KATIB),
            ] {
                let object = workload(kind, owners.clone(), labelled.clone());
                let d = mutate_workload(&view(&object), "alice", user, &Config::default());
                assert_eq!(d.applied, vec![RESERVED_RULE], "{kind} {owners} {user:?}");
                let mut w = d.object;
                for meta in metas(&mut w) {
                    assert_eq!(meta.label("kubeflow-extension"), None, "{kind} {owners}");
                    assert_eq!(meta.label("sidecar.istio.io/inject"), None);
                }
            }
        }
    }

    #[test]
    fn workload_without_the_label_or_trial_is_unchanged() {
        for kind in KINDS {
            let object = workload(kind, json!([]), json!({"app": "x"}));
            let d = mutate_workload(&view(&object), "alice", TENANT, &Config::default());
            assert!(!d.changed(), "{kind}");
            assert_eq!(d.object, view(&object));
        }
    }

    #[test]
    fn workload_made_for_a_workload_keeps_the_label_and_gets_nothing() {
        let labelled = json!({"kubeflow-extension": "true"});
        for (kind, owner_api, owner_kind) in [
            ("JobSet", "trainer.kubeflow.org/v1alpha1", "TrainJob"),
            ("Job", "jobset.x-k8s.io/v1alpha2", "JobSet"),
        ] {
            let owners = json!([{"apiVersion": owner_api, "kind": owner_kind, "name": "o", "controller": true}]);
            let object = workload(kind, owners.clone(), labelled.clone());
            let d = mutate_workload(&view(&object), "alice", TRAINER, &Config::default());
            assert!(!d.changed(), "{kind}: {:?}", d.applied);
            assert_eq!(d.object, view(&object));
            // Made by the tenant instead: the label goes.
            let d = mutate_workload(&view(&object), "alice", TENANT, &Config::default());
            assert_eq!(d.applied, vec![RESERVED_RULE]);
            // An owner of a half-matching version: the label goes.
            let owners = json!([{"apiVersion": "jobset.x-k8s.io/v1", "kind": "JobSet", "name": "o", "controller": true}]);
            let object = workload(kind, owners, labelled.clone());
            let d = mutate_workload(&view(&object), "alice", TRAINER, &Config::default());
            assert_eq!(d.applied, vec![RESERVED_RULE]);
        }
    }

    #[test]
    fn kubeflow_namespace_keeps_katib_s_own_but_polices_the_label_first() {
        let config = Config::default();
        let own = workload("Job", trial_owner("kubeflow.org/v1beta1"), json!({}));
        let d = mutate_workload(&view(&own), "kubeflow", KATIB, &config);
        assert!(!d.changed());
        assert_eq!(d.skipped, vec!["in the Kubeflow namespace"]);
        let forged = workload("Job", json!([]), json!({"kubeflow-extension": "true"}));
        let d = mutate_workload(&view(&forged), "kubeflow", TENANT, &config);
        assert_eq!(d.applied, vec![RESERVED_RULE]);
        for ns in ["kube-system", "tenancy-fixer"] {
            let d = mutate_workload(&view(&forged), ns, TENANT, &config);
            assert!(!d.changed(), "{ns}");
            assert_eq!(d.object, view(&forged));
        }
    }

    #[test]
    fn no_hold_annotation_in_wait_ready_or_sleep_modes() {
        for mode in ["wait-ready", "sleep"] {
            let yaml = format!("katib:\n  proxyStartup: {mode}\n");
            let object = workload("Job", trial_owner("kubeflow.org/v1beta1"), json!({}));
            let d = mutate_workload(&view(&object), "alice", KATIB, &config(&yaml));
            assert_eq!(d.applied, vec![RULE]);
            let mut w = d.object;
            assert_eq!(metas(&mut w)[0].annotation("proxy.istio.io/config"), None);
        }
    }

    #[test]
    fn hold_keeps_other_proxy_settings_and_leaves_what_it_cannot_read() {
        let mut object = workload("Job", trial_owner("kubeflow.org/v1beta1"), json!({}));
        object["spec"]["template"]["metadata"]["annotations"] =
            json!({"proxy.istio.io/config": "concurrency: 2\n"});
        let d = mutate_workload(&view(&object), "alice", KATIB, &Config::default());
        let mut w = d.object;
        assert_eq!(
            metas(&mut w)[0].annotation("proxy.istio.io/config"),
            Some(r#"{"concurrency":2,"holdApplicationUntilProxyStarts":true}"#)
        );
        let deep = format!("a: {}{}", "[".repeat(40_000), "]".repeat(40_000));
        object["spec"]["template"]["metadata"]["annotations"] =
            json!({"proxy.istio.io/config": deep});
        let d = mutate_workload(&view(&object), "alice", KATIB, &Config::default());
        assert_eq!(d.applied, vec![RULE]);
        assert!(
            d.skipped
                .iter()
                .any(|s| s.contains("not read") && s.contains("left as is")),
            "{:?}",
            d.skipped
        );
    }

    #[test]
    fn deprecated_service_account_is_kept_in_step() {
        let mut object = workload("Job", trial_owner("kubeflow.org/v1beta1"), json!({}));
        object["spec"]["template"]["spec"]["serviceAccount"] = json!("x");
        let mut w = mutate_workload(&view(&object), "alice", KATIB, &Config::default()).object;
        let spec = w.templates_mut()[0].1.spec.clone().unwrap();
        assert_eq!(spec.service_account.as_deref(), Some("default-editor"));
    }

    #[test]
    fn update_may_not_add_or_change_a_template_label() {
        let config = Config::default();
        for kind in KINDS {
            // A suspended Job's template (or any template) labelled by UPDATE: reverted.
            let old = workload(kind, json!([]), json!({"app": "x"}));
            let new = workload(
                kind,
                json!([]),
                json!({"app": "x", "kubeflow-extension": "true"}),
            );
            let d = guard_workload_update(&view(&new), &view(&old), "alice", &config);
            assert_eq!(d.applied, vec![UPDATE_RULE], "{kind}");
            let mut w = d.object;
            for meta in metas(&mut w) {
                assert_eq!(meta.label("kubeflow-extension"), None, "{kind}");
                assert_eq!(meta.label("app"), Some("x"));
            }
            // Changed: the old value comes back.
            let old = workload(kind, json!([]), json!({"kubeflow-extension": "false"}));
            let d = guard_workload_update(&view(&new), &view(&old), "kubeflow", &config);
            let mut w = d.object;
            for meta in metas(&mut w) {
                assert_eq!(meta.label("kubeflow-extension"), Some("false"), "{kind}");
            }
            // Removed or kept: allowed.
            let d = guard_workload_update(&view(&new), &view(&new), "alice", &config);
            assert!(!d.changed(), "{kind}");
            let removed = workload(kind, json!([]), json!({}));
            let d = guard_workload_update(&view(&removed), &view(&new), "alice", &config);
            assert!(!d.changed(), "{kind}");
        }
    }

    #[test]
    fn update_of_a_template_that_was_not_there_before_may_not_bring_the_label() {
        let old = json!({"metadata": {"name": "js"}, "spec": {"replicatedJobs": [
            {"name": "a", "template": {"spec": {"template": template(json!({"kubeflow-extension": "true"}))}}}]}});
        let new = json!({"metadata": {"name": "js"}, "spec": {"replicatedJobs": [
            {"name": "b", "template": {"spec": {"template": template(json!({"kubeflow-extension": "true"}))}}},
            {"name": "a", "template": {"spec": {"template": template(json!({"kubeflow-extension": "true"}))}}}]}});
        let d = guard_workload_update(&view(&new), &view(&old), "alice", &Config::default());
        assert_eq!(d.applied, vec![UPDATE_RULE]);
        let mut w = d.object;
        let labels: Vec<_> = metas(&mut w)
            .iter()
            .map(|m| m.label("kubeflow-extension").map(str::to_string))
            .collect();
        assert_eq!(labels, [None, Some("true".to_string())]);
    }
}
