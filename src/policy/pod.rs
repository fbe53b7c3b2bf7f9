//! Pods: behaviours 2 (notebook pods) and 5 (Katib trial pods), the token-mode injection, and
//! the reserved extension label. On CREATE the rules run in this order:
//! 1. notebook pods get the extension label; any other pod keeps it only when a trusted
//!    controller creates it for a workload that controls it (the label then came from the
//!    workload's template, which the workload rules police);
//! 2. labelled pods get the KFP token in token mode;
//! 3. labelled Katib trial pods have their training container and collector wrapped.
//!
//! On UPDATE nobody may add or change the label: its old value is restored.

use super::{Decision, katib, restore_reserved_label, token, unread_proxy_config};
use crate::{
    config::{Config, KfpAccess},
    model::{MetaOnly, ObjectMeta, Pod, WorkloadKind},
};

pub const NOTEBOOK_RULE: &str = "notebook-label";
pub use super::{RESERVED_RULE, RESERVED_UPDATE_RULE as UPDATE_RULE};

/// The rules for a pod that `username` creates in `namespace`.
pub fn mutate_pod<'a>(
    pod: &Pod<'a>,
    namespace: &str,
    username: Option<&str>,
    config: &Config,
) -> Decision<Pod<'a>> {
    if config.namespace_excluded(namespace) {
        return Decision::unchanged(pod, "namespace excluded");
    }
    let settings = &config.settings;
    let mut decision = Decision::start(pod);
    let meta = &mut decision.object.metadata;
    if meta.label(&settings.notebook_label).is_some() {
        if meta.label(&settings.extension_label) != Some("true") {
            meta.set_label(&settings.extension_label, "true");
            decision.applied(NOTEBOOK_RULE);
        }
    } else if meta.label(&settings.extension_label).is_some()
        && let Some(reason) = untrusted_pod(meta, username, config)
    {
        // The label grants the owner's identity in header mode: a pod may not claim it itself.
        meta.remove_label(&settings.extension_label);
        decision.applied(RESERVED_RULE);
        decision.skip(reason);
    }

    if decision.object.metadata.label(&settings.extension_label) != Some("true") {
        if !decision.changed() {
            decision.skip("not a notebook or trial pod");
        }
        return decision;
    }

    if config.modes.kfp_access == KfpAccess::Token {
        match &mut decision.object.spec {
            // The API server only projects tokens of a named account; in a cluster the
            // ServiceAccount admission plugin has named one before webhooks run.
            Some(spec)
                if spec
                    .service_account_name
                    .as_deref()
                    .is_some_and(|sa| !sa.is_empty()) =>
            {
                if token::inject_token(spec, config) {
                    decision.applied(token::RULE);
                }
            }
            _ => decision.skip("pod names no service account: no KFP token"),
        }
    }
    if let Some(reason) = unread_proxy_config(&decision.object.metadata) {
        decision.skip(reason);
    }
    katib::wrap_trial_pod(&mut decision, config);
    if !decision.changed() {
        decision.skip("already mutated");
    }
    decision
}

/// Why a pod that is not a notebook's may not keep the extension label, if it may not: only a
/// trusted controller creating it for the workload that controls it may.
fn untrusted_pod(
    meta: &ObjectMeta<'_>,
    username: Option<&str>,
    config: &Config,
) -> Option<&'static str> {
    if !config.trusts(username) {
        Some("reserved label removed: created by a user who is not a trusted controller")
    } else if !meta.controller_owner().is_some_and(WorkloadKind::owns) {
        Some("reserved label removed: no workload is the pod's controller")
    } else {
        None
    }
}

/// UPDATE of a pod: the extension label may be removed, not added or changed.
pub fn guard_pod_update<'a>(
    pod: &MetaOnly<'a>,
    old: &MetaOnly<'_>,
    namespace: &str,
    config: &Config,
) -> Decision<MetaOnly<'a>> {
    if config.namespace_excluded(namespace) {
        return Decision::unchanged(pod, "namespace excluded");
    }
    let label = &config.settings.extension_label;
    let mut decision = Decision::start(pod);
    if restore_reserved_label(
        &mut decision.object.metadata,
        old.metadata.label(label),
        label,
    ) {
        decision.applied(UPDATE_RULE);
    } else {
        decision.skip("reserved label not added or changed");
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{Container, OwnerReference, PodSpec},
        testing::config,
    };

    const JOB_CONTROLLER: Option<&str> = Some("system:serviceaccount:kube-system:job-controller");
    const TENANT: Option<&str> = Some("alice@example.com");

    fn pod(labels: &[(&'static str, &'static str)]) -> Pod<'static> {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                labels: Some(labels.iter().map(|&(k, v)| (k.into(), v.into())).collect()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "main".into(),
                    ..Default::default()
                }],
                service_account_name: Some("default-editor".into()),
                ..Default::default()
            }),
        }
    }

    fn owned_by(
        mut pod: Pod<'static>,
        api_version: &'static str,
        kind: &'static str,
        controller: Option<bool>,
    ) -> Pod<'static> {
        pod.metadata
            .owner_references
            .get_or_insert_default()
            .push(OwnerReference {
                api_version: api_version.into(),
                kind: kind.into(),
                name: "owner".into(),
                controller,
            });
        pod
    }

    fn labelled() -> Pod<'static> {
        pod(&[("kubeflow-extension", "true"), ("app", "x")])
    }

    #[test]
    fn notebook_pod_gets_the_label_header_mode() {
        let d = mutate_pod(
            &pod(&[("notebook-name", "nb")]),
            "alice",
            TENANT,
            &config("kfpAccess: header"),
        );
        assert_eq!(d.applied, vec![NOTEBOOK_RULE]);
        assert_eq!(d.object.metadata.label("kubeflow-extension"), Some("true"));
        assert_eq!(
            d.object.spec,
            pod(&[]).spec,
            "header mode changes labels only"
        );
    }

    #[test]
    fn notebook_pod_gets_label_and_token_in_token_mode() {
        let d = mutate_pod(
            &pod(&[("notebook-name", "nb")]),
            "alice",
            TENANT,
            &config("kfpAccess: token"),
        );
        assert_eq!(d.applied, vec![NOTEBOOK_RULE, token::RULE]);
        let spec = d.object.spec.as_ref().unwrap();
        let c = &spec.containers[0];
        assert_eq!(
            c.env.as_ref().unwrap()[0].name,
            "KF_PIPELINES_SA_TOKEN_PATH"
        );
        assert_eq!(
            c.env.as_ref().unwrap()[0].body.as_ref().unwrap()["value"],
            "/var/run/secrets/kubeflow/pipelines/token"
        );
        assert_eq!(
            c.volume_mounts.as_ref().unwrap()[0].mount_path,
            "/var/run/secrets/kubeflow/pipelines"
        );
        let volume = &spec.volumes.as_ref().unwrap()[0];
        assert_eq!(volume.name, token::TOKEN_VOLUME);
        assert_eq!(
            volume.body.as_ref().unwrap()["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            "pipelines.kubeflow.org"
        );
    }

    #[test]
    fn no_token_without_a_service_account() {
        let mut p = pod(&[("notebook-name", "nb")]);
        p.spec.as_mut().unwrap().service_account_name = None;
        let d = mutate_pod(&p, "alice", TENANT, &config("kfpAccess: token"));
        assert_eq!(d.applied, vec![NOTEBOOK_RULE]);
        assert_eq!(d.object.spec, p.spec);
        assert!(
            d.skipped.iter().any(|s| s.contains("no service account")),
            "{:?}",
            d.skipped
        );
    }

    #[test]
    fn token_is_not_injected_into_the_proxy() {
        let mut p = pod(&[("notebook-name", "nb")]);
        p.spec.as_mut().unwrap().containers.push(Container {
            name: "istio-proxy".into(),
            ..Default::default()
        });
        let d = mutate_pod(&p, "alice", TENANT, &config("kfpAccess: token"));
        let proxy = &d.object.spec.as_ref().unwrap().containers[1];
        assert_eq!(
            proxy,
            &Container {
                name: "istio-proxy".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn plain_pod_is_unchanged() {
        let p = pod(&[("app", "x")]);
        let d = mutate_pod(&p, "alice", TENANT, &Config::default());
        assert!(!d.changed());
        assert_eq!(d.object, p);
        assert_eq!(d.skipped, vec!["not a notebook or trial pod"]);
    }

    #[test]
    fn kube_system_pod_is_never_touched() {
        for p in [pod(&[("notebook-name", "nb")]), labelled()] {
            let d = mutate_pod(&p, "kube-system", TENANT, &Config::default());
            assert!(!d.changed());
            assert_eq!(d.object, p);
        }
    }

    #[test]
    fn self_labelled_pod_loses_the_reserved_label() {
        let d = mutate_pod(&labelled(), "alice", TENANT, &Config::default());
        assert_eq!(d.applied, vec![RESERVED_RULE]);
        assert_eq!(d.object.metadata.label("kubeflow-extension"), None);
        assert_eq!(d.object.metadata.label("app"), Some("x"));
    }

    #[test]
    fn pod_of_a_workload_made_by_a_trusted_controller_keeps_the_label() {
        for (api_version, kind) in [
            ("batch/v1", "Job"),
            ("kubeflow.org/v1", "PyTorchJob"),
            ("kubeflow.org/v1", "TFJob"),
            ("kubeflow.org/v1", "MPIJob"),
            ("kubeflow.org/v1", "XGBoostJob"),
            ("kubeflow.org/v1", "PaddleJob"),
            ("kubeflow.org/v1", "JAXJob"),
        ] {
            let p = owned_by(labelled(), api_version, kind, Some(true));
            let d = mutate_pod(&p, "alice", JOB_CONTROLLER, &config("kfpAccess: header"));
            assert!(!d.changed(), "{kind}: {:?}", d.applied);
        }
    }

    /// Forgeries: each loses the label.
    #[test]
    fn pod_claiming_a_workload_owner_loses_the_label_unless_all_holds() {
        let config = config("kfpAccess: header");
        let cases = [
            // A bare pod naming the user's own Job, created by the user.
            (owned_by(labelled(), "batch/v1", "Job", Some(true)), TENANT),
            // No user at all.
            (owned_by(labelled(), "batch/v1", "Job", Some(true)), None),
            // Trusted user, but the Job is not the controller.
            (
                owned_by(labelled(), "batch/v1", "Job", None),
                JOB_CONTROLLER,
            ),
            (
                owned_by(labelled(), "batch/v1", "Job", Some(false)),
                JOB_CONTROLLER,
            ),
            // Half-matching owners: wrong version, wrong group, wrong kind.
            (
                owned_by(labelled(), "batch/v2", "Job", Some(true)),
                JOB_CONTROLLER,
            ),
            (
                owned_by(labelled(), "example.com/v1", "Job", Some(true)),
                JOB_CONTROLLER,
            ),
            (
                owned_by(labelled(), "kubeflow.org/v2", "PyTorchJob", Some(true)),
                JOB_CONTROLLER,
            ),
            (
                owned_by(labelled(), "batch/v1", "CronJob", Some(true)),
                JOB_CONTROLLER,
            ),
            (
                owned_by(labelled(), "apps/v1", "ReplicaSet", Some(true)),
                JOB_CONTROLLER,
            ),
            // Two controllers: the API server refuses it, and so do we.
            (
                owned_by(
                    owned_by(labelled(), "batch/v1", "Job", Some(true)),
                    "batch/v1",
                    "Job",
                    Some(true),
                ),
                JOB_CONTROLLER,
            ),
            // No owner at all.
            (labelled(), JOB_CONTROLLER),
        ];
        for (p, user) in cases {
            let d = mutate_pod(&p, "alice", user, &config);
            assert_eq!(d.applied, vec![RESERVED_RULE], "{p:?} by {user:?}");
            assert_eq!(d.object.metadata.label("kubeflow-extension"), None);
        }
    }

    #[test]
    fn pod_in_the_kubeflow_namespace_is_policed_too() {
        let d = mutate_pod(&labelled(), "kubeflow", TENANT, &Config::default());
        assert_eq!(d.applied, vec![RESERVED_RULE]);
    }

    #[test]
    fn mutating_twice_changes_nothing_more() {
        for mode in ["kfpAccess: header", "kfpAccess: token"] {
            let c = config(mode);
            let once = mutate_pod(&pod(&[("notebook-name", "nb")]), "alice", TENANT, &c).object;
            let twice = mutate_pod(&once, "alice", TENANT, &c);
            assert!(!twice.changed(), "{mode}: {:?}", twice.applied);
            assert_eq!(twice.object, once);
        }
    }

    fn meta(labels: &[(&'static str, &'static str)]) -> MetaOnly<'static> {
        MetaOnly {
            metadata: pod(labels).metadata,
        }
    }

    #[test]
    fn update_may_not_add_or_change_the_label() {
        let config = Config::default();
        for (new, old, expected) in [
            // `kubectl label pod p kubeflow-extension=true`
            (&[("kubeflow-extension", "true")][..], &[][..], None),
            (
                &[("kubeflow-extension", "true")],
                &[("kubeflow-extension", "x")],
                Some("x"),
            ),
            (
                &[("kubeflow-extension", "")],
                &[("kubeflow-extension", "true")],
                Some("true"),
            ),
        ] {
            let d = guard_pod_update(&meta(new), &meta(old), "alice", &config);
            assert_eq!(d.applied, vec![UPDATE_RULE], "{new:?} over {old:?}");
            assert_eq!(d.object.metadata.label("kubeflow-extension"), expected);
        }
    }

    #[test]
    fn update_may_remove_or_keep_the_label() {
        let config = Config::default();
        for (new, old) in [
            (&[][..], &[("kubeflow-extension", "true")][..]),
            (
                &[("kubeflow-extension", "true"), ("b", "2")],
                &[("kubeflow-extension", "true")],
            ),
            (&[("app", "y")], &[("app", "x")]),
        ] {
            let d = guard_pod_update(&meta(new), &meta(old), "alice", &config);
            assert!(!d.changed(), "{new:?} over {old:?}");
            assert_eq!(d.object, meta(new));
        }
        let d = guard_pod_update(
            &meta(&[("kubeflow-extension", "true")]),
            &meta(&[]),
            "kube-system",
            &config,
        );
        assert!(!d.changed());
    }
}
