//! Pod CREATE: behaviours 2 (notebook pods) and 5 (Katib trial pods), the token-mode
//! injection, and the reserved extension label. The rules run in this order:
//! 1. notebook pods get the extension label; other pods may keep it only when a Job owns them
//!    (Trial Jobs get it on their template from the job rule);
//! 2. labelled pods get the KFP token in token mode;
//! 3. labelled Katib trial pods have their training container and collector wrapped.

use super::{Decision, katib, token};
use crate::{
    config::{Config, KfpAccess},
    model::{ObjectMeta, Pod},
};

pub const NOTEBOOK_RULE: &str = "notebook-label";
pub const RESERVED_RULE: &str = "reserved-label";

pub fn mutate_pod<'a>(pod: &Pod<'a>, namespace: &str, config: &Config) -> Decision<Pod<'a>> {
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
    } else if meta.label(&settings.extension_label).is_some() && !owned_by_job(meta) {
        // The label grants the owner's identity in header mode: a pod may not claim it itself.
        meta.remove_label(&settings.extension_label);
        decision.applied(RESERVED_RULE);
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
    katib::wrap_trial_pod(&mut decision, config);
    if !decision.changed() {
        decision.skip("already mutated");
    }
    decision
}

fn owned_by_job(meta: &ObjectMeta<'_>) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|owner| owner.kind == "Job" && owner.api_version == "batch/v1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{Container, OwnerReference, PodSpec},
        testing::config,
    };

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

    #[test]
    fn notebook_pod_gets_the_label_header_mode() {
        let d = mutate_pod(
            &pod(&[("notebook-name", "nb")]),
            "alice",
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
        let d = mutate_pod(&p, "alice", &config("kfpAccess: token"));
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
        let d = mutate_pod(&p, "alice", &config("kfpAccess: token"));
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
        let d = mutate_pod(&p, "alice", &Config::default());
        assert!(!d.changed());
        assert_eq!(d.object, p);
        assert_eq!(d.skipped, vec!["not a notebook or trial pod"]);
    }

    #[test]
    fn kube_system_pod_is_never_touched() {
        for p in [
            pod(&[("notebook-name", "nb")]),
            pod(&[("kubeflow-extension", "true")]),
        ] {
            let d = mutate_pod(&p, "kube-system", &Config::default());
            assert!(!d.changed());
            assert_eq!(d.object, p);
        }
    }

    #[test]
    fn self_labelled_pod_loses_the_reserved_label() {
        let d = mutate_pod(
            &pod(&[("kubeflow-extension", "true"), ("app", "x")]),
            "alice",
            &Config::default(),
        );
        assert_eq!(d.applied, vec![RESERVED_RULE]);
        assert_eq!(d.object.metadata.label("kubeflow-extension"), None);
        assert_eq!(d.object.metadata.label("app"), Some("x"));
    }

    #[test]
    fn job_pod_keeps_the_label() {
        let mut p = pod(&[("kubeflow-extension", "true")]);
        p.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name: "trial-1".into(),
        }]);
        let d = mutate_pod(&p, "alice", &config("kfpAccess: header"));
        assert!(!d.changed(), "{:?}", d.applied);
    }

    #[test]
    fn mutating_twice_changes_nothing_more() {
        for mode in ["kfpAccess: header", "kfpAccess: token"] {
            let c = config(mode);
            let once = mutate_pod(&pod(&[("notebook-name", "nb")]), "alice", &c).object;
            let twice = mutate_pod(&once, "alice", &c);
            assert!(!twice.changed(), "{mode}: {:?}", twice.applied);
            assert_eq!(twice.object, once);
        }
    }
}
