//! Behaviour 4: batch/v1 Jobs owned by a Katib Trial (outside the Kubeflow namespace) run as
//! the profile's editor account, with an Istio sidecar, labelled for the profile's ml-pipeline
//! access. Decided from the Job's own ownerReferences: no state is kept between requests.

use super::{
    Decision, PROXY_CONFIG_ANNOTATION, SIDECAR_INJECT_ANNOTATION, outside_user_namespaces,
    owned_by_trial, with_hold_until_proxy_starts,
};
use crate::{
    config::{Config, ProxyStartup},
    model::{Job, ObjectMeta},
};

pub const RULE: &str = "trial-job";
pub const HOLD_RULE: &str = "trial-job-hold-proxy";
pub const RESERVED_RULE: &str = "reserved-label";

pub fn mutate_job<'a>(job: &Job<'a>, namespace: &str, config: &Config) -> Decision<Job<'a>> {
    let settings = &config.settings;
    if let Some(reason) = outside_user_namespaces(namespace, config) {
        return Decision::unchanged(job, reason);
    }
    let mut decision = Decision::start(job);
    let trial_owned = owned_by_trial(&job.metadata);
    let Decision {
        object,
        applied,
        skipped,
    } = &mut decision;
    let template = &mut object.spec.get_or_insert_default().template;

    if !trial_owned {
        // The label grants the owner's identity in header mode: only trial Jobs may carry it.
        let meta = template.metadata.get_or_insert_default();
        if meta.label(&settings.extension_label).is_some() {
            meta.remove_label(&settings.extension_label);
            applied.push(RESERVED_RULE);
        } else {
            skipped.push("not owned by a Trial".into());
        }
        return decision.settle(job);
    }

    let meta = template.metadata.get_or_insert_default();
    let spec = template.spec.get_or_insert_default();
    let mut changed = set_label(meta, &settings.extension_label, "true");
    changed |= set_annotation(meta, SIDECAR_INJECT_ANNOTATION, "true");
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
    if changed {
        applied.push(RULE);
    }

    if config.modes.proxy_startup == ProxyStartup::HoldAnnotation {
        match with_hold_until_proxy_starts(meta.annotation(PROXY_CONFIG_ANNOTATION)) {
            Some(value) => {
                if set_annotation(meta, PROXY_CONFIG_ANNOTATION, &value) {
                    applied.push(HOLD_RULE);
                }
            }
            None => skipped.push("proxy.istio.io/config is not a YAML mapping; left as is".into()),
        }
    }
    if !decision.changed() {
        decision.skip("already mutated");
    }
    decision.settle(job)
}

impl<'a> Decision<Job<'a>> {
    /// Drops the empty template parts created while looking, when nothing changed.
    fn settle(mut self, original: &Job<'a>) -> Self {
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
    use super::*;
    use crate::{
        model::{JobSpec, OwnerReference, PodTemplate, TemplateSpec},
        testing::config,
    };

    fn job(owner_kind: &'static str, owner_api: &'static str) -> Job<'static> {
        Job {
            metadata: ObjectMeta {
                name: Some("trial-1".into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: owner_api.into(),
                    kind: owner_kind.into(),
                    name: "trial-1".into(),
                }]),
                ..Default::default()
            },
            spec: Some(JobSpec {
                template: PodTemplate {
                    metadata: None,
                    spec: Some(TemplateSpec {
                        service_account_name: Some("pipeline-runner".into()),
                        service_account: None,
                    }),
                },
            }),
        }
    }

    fn trial_job() -> Job<'static> {
        job("Trial", "kubeflow.org/v1beta1")
    }

    fn template_meta<'j>(job: &'j Job) -> &'j ObjectMeta<'j> {
        job.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
    }

    #[test]
    fn trial_job_gets_label_injection_account_and_hold() {
        let d = mutate_job(&trial_job(), "alice", &Config::default());
        assert_eq!(d.applied, vec![RULE, HOLD_RULE]);
        let meta = template_meta(&d.object);
        assert_eq!(meta.label("kubeflow-extension"), Some("true"));
        assert_eq!(meta.annotation("sidecar.istio.io/inject"), Some("true"));
        assert_eq!(
            meta.annotation("proxy.istio.io/config"),
            Some(r#"{"holdApplicationUntilProxyStarts":true}"#)
        );
        let spec = d
            .object
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("default-editor"));
    }

    #[test]
    fn v1alpha3_trial_owner_counts_too() {
        assert!(
            mutate_job(
                &job("Trial", "kubeflow.org/v1alpha3"),
                "alice",
                &Config::default()
            )
            .changed()
        );
    }

    #[test]
    fn hold_keeps_other_proxy_settings() {
        let mut j = trial_job();
        j.spec.as_mut().unwrap().template.metadata = Some(ObjectMeta {
            annotations: Some([("proxy.istio.io/config".into(), "concurrency: 2\n".into())].into()),
            ..Default::default()
        });
        let d = mutate_job(&j, "alice", &Config::default());
        assert_eq!(
            template_meta(&d.object).annotation("proxy.istio.io/config"),
            Some(r#"{"concurrency":2,"holdApplicationUntilProxyStarts":true}"#)
        );
    }

    #[test]
    fn no_hold_annotation_in_wait_ready_or_sleep_modes() {
        for mode in ["wait-ready", "sleep"] {
            let yaml = format!("katib:\n  proxyStartup: {mode}\n");
            let config = config(&yaml);
            let d = mutate_job(&trial_job(), "alice", &config);
            assert_eq!(d.applied, vec![RULE]);
            assert_eq!(
                template_meta(&d.object).annotation("proxy.istio.io/config"),
                None
            );
        }
    }

    #[test]
    fn job_without_trial_owner_is_unchanged() {
        for j in [
            job("CronJob", "batch/v1"),
            job("Trial", "example.com/v1"),
            Job::default(),
        ] {
            let d = mutate_job(&j, "alice", &Config::default());
            assert!(!d.changed(), "{j:?}");
            assert_eq!(d.object, j);
        }
    }

    #[test]
    fn job_without_trial_owner_loses_the_reserved_label() {
        let mut j = job("CronJob", "batch/v1");
        j.spec.as_mut().unwrap().template.metadata = Some(ObjectMeta {
            labels: Some([("kubeflow-extension".into(), "true".into())].into()),
            ..Default::default()
        });
        let d = mutate_job(&j, "alice", &Config::default());
        assert_eq!(d.applied, vec![RESERVED_RULE]);
        assert_eq!(template_meta(&d.object).label("kubeflow-extension"), None);
    }

    #[test]
    fn trial_job_in_kubeflow_or_excluded_namespace_is_unchanged() {
        for ns in ["kubeflow", "kube-system"] {
            let d = mutate_job(&trial_job(), ns, &Config::default());
            assert!(!d.changed());
            assert_eq!(d.object, trial_job());
        }
    }

    #[test]
    fn mutating_twice_changes_nothing_more() {
        let once = mutate_job(&trial_job(), "alice", &Config::default()).object;
        let twice = mutate_job(&once, "alice", &Config::default());
        assert!(!twice.changed(), "{:?}", twice.applied);
        assert_eq!(twice.object, once);
    }

    #[test]
    fn deprecated_service_account_is_kept_in_step() {
        let mut j = trial_job();
        j.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .service_account = Some("x".into());
        let d = mutate_job(&j, "alice", &Config::default());
        let spec = d
            .object
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        assert_eq!(spec.service_account.as_deref(), Some("default-editor"));
    }
}
