//! The JSON Patch between a view and its changed version: `json_patch::diff` of the two, after
//! pruning from both what is equal in both.
//!
//! Pruning keeps exactly the shape `json_patch::diff` walks: a member equal in both is removed
//! from both (the diff would recurse into it and find nothing), and a list element equal in
//! both is replaced in both by the same placeholder (its index, and so every other path,
//! stays the same). The patch is therefore the diff of the whole views, without serializing
//! the parts no rule touched.

use serde::Serialize;

use std::collections::BTreeMap;

use crate::model::{
    Container, Labels, MetaOnly, ObjectMeta, Pod, PodSpec, PodTemplate, ReplicatedJob, Str,
    Workload, WorkloadSpec,
};

/// The patch that turns `before` into `after`, both views of the same object.
pub fn diff<T: Prune + Serialize>(
    mut before: T,
    mut after: T,
) -> Result<json_patch::Patch, serde_json::Error> {
    T::prune(&mut before, &mut after);
    Ok(json_patch::diff(
        &serde_json::to_value(&before)?,
        &serde_json::to_value(&after)?,
    ))
}

/// Removes from two versions of a view what is equal in both (see the module's docs).
pub trait Prune {
    fn prune(before: &mut Self, after: &mut Self);
}

/// An optional member: gone from both when equal, else its parts pruned.
fn member<T: PartialEq>(
    before: &mut Option<T>,
    after: &mut Option<T>,
    parts: impl FnOnce(&mut T, &mut T),
) {
    if before == after {
        *before = None;
        *after = None;
    } else if let (Some(before), Some(after)) = (before, after) {
        parts(before, after);
    }
}

/// An optional member no rule looks into: gone from both when equal.
fn leaf<T: PartialEq>(before: &mut Option<T>, after: &mut Option<T>) {
    member(before, after, |_, _| {});
}

/// A list: elements equal in both become the same placeholder in both, the others are pruned.
fn elements<T: PartialEq + Default>(
    before: &mut [T],
    after: &mut [T],
    parts: impl Fn(&mut T, &mut T),
) {
    for (before, after) in before.iter_mut().zip(after.iter_mut()) {
        if before == after {
            *before = T::default();
            *after = T::default();
        } else {
            parts(before, after);
        }
    }
}

/// A map of strings (labels, annotations): entries equal in both are removed from both.
fn entries<'a>(before: &mut Labels<'a>, after: &mut Labels<'a>) {
    before.retain(|key, value| {
        let equal = after.get(key) == Some(value);
        if equal {
            after.remove(key);
        }
        !equal
    });
}

impl Prune for ObjectMeta<'_> {
    fn prune(before: &mut Self, after: &mut Self) {
        leaf(&mut before.name, &mut after.name);
        leaf(&mut before.generate_name, &mut after.generate_name);
        leaf(&mut before.namespace, &mut after.namespace);
        member(&mut before.labels, &mut after.labels, entries);
        member(&mut before.annotations, &mut after.annotations, entries);
        leaf(&mut before.owner_references, &mut after.owner_references);
    }
}

impl Prune for Pod<'_> {
    fn prune(before: &mut Self, after: &mut Self) {
        ObjectMeta::prune(&mut before.metadata, &mut after.metadata);
        member(&mut before.spec, &mut after.spec, PodSpec::prune);
    }
}

impl Prune for PodSpec<'_> {
    fn prune(before: &mut Self, after: &mut Self) {
        elements(
            &mut before.containers,
            &mut after.containers,
            Container::prune,
        );
        leaf(&mut before.init_containers, &mut after.init_containers);
        member(&mut before.volumes, &mut after.volumes, |b, a| {
            elements(b, a, |_, _| {})
        });
        leaf(
            &mut before.service_account_name,
            &mut after.service_account_name,
        );
    }
}

impl Prune for Container<'_> {
    fn prune(before: &mut Self, after: &mut Self) {
        leaf(&mut before.command, &mut after.command);
        leaf(&mut before.args, &mut after.args);
        member(&mut before.env, &mut after.env, |b, a| {
            elements(b, a, |_, _| {})
        });
        member(
            &mut before.volume_mounts,
            &mut after.volume_mounts,
            |b, a| elements(b, a, |_, _| {}),
        );
        leaf(
            &mut before.termination_message_path,
            &mut after.termination_message_path,
        );
    }
}

/// A map of parts (replica specs by type): entries equal in both are removed from both, the
/// others pruned.
fn keyed<'a, T: PartialEq>(
    before: &mut BTreeMap<Str<'a>, T>,
    after: &mut BTreeMap<Str<'a>, T>,
    parts: impl Fn(&mut T, &mut T),
) {
    before.retain(|key, value| match after.get_mut(key) {
        Some(other) if other == value => {
            after.remove(key);
            false
        }
        Some(other) => {
            parts(value, other);
            true
        }
        None => true,
    });
}

impl Prune for Workload<'_> {
    fn prune(before: &mut Self, after: &mut Self) {
        ObjectMeta::prune(&mut before.metadata, &mut after.metadata);
        member(&mut before.spec, &mut after.spec, WorkloadSpec::prune);
    }
}

impl Prune for WorkloadSpec<'_> {
    fn prune(before: &mut Self, after: &mut Self) {
        member(
            &mut before.template,
            &mut after.template,
            PodTemplate::prune,
        );
        for (b, a) in [
            (
                &mut before.pytorch_replica_specs,
                &mut after.pytorch_replica_specs,
            ),
            (&mut before.tf_replica_specs, &mut after.tf_replica_specs),
            (&mut before.mpi_replica_specs, &mut after.mpi_replica_specs),
            (&mut before.xgb_replica_specs, &mut after.xgb_replica_specs),
            (
                &mut before.paddle_replica_specs,
                &mut after.paddle_replica_specs,
            ),
            (&mut before.jax_replica_specs, &mut after.jax_replica_specs),
        ] {
            member(b, a, |b, a| {
                keyed(b, a, |b, a| {
                    member(b, a, |b, a| {
                        member(&mut b.template, &mut a.template, PodTemplate::prune)
                    })
                })
            });
        }
        member(
            &mut before.replicated_jobs,
            &mut after.replicated_jobs,
            |b, a| elements(b, a, ReplicatedJob::prune),
        );
        member(
            &mut before.runtime_patches,
            &mut after.runtime_patches,
            |b, a| {
                elements(b, a, |b, a| {
                    leaf(&mut b.manager, &mut a.manager);
                    member(
                        &mut b.training_runtime_spec,
                        &mut a.training_runtime_spec,
                        |b, a| {
                            member(&mut b.template, &mut a.template, |b, a| {
                                member(&mut b.spec, &mut a.spec, |b, a| {
                                    member(
                                        &mut b.replicated_jobs,
                                        &mut a.replicated_jobs,
                                        |b, a| elements(b, a, ReplicatedJob::prune),
                                    )
                                })
                            })
                        },
                    )
                })
            },
        );
    }
}

impl Prune for ReplicatedJob<'_> {
    fn prune(before: &mut Self, after: &mut Self) {
        // The name stays: it is what tells a reader of the diff which job changed.
        member(&mut before.template, &mut after.template, |b, a| {
            member(&mut b.spec, &mut a.spec, |b, a| {
                member(&mut b.template, &mut a.template, PodTemplate::prune)
            })
        });
    }
}

impl Prune for PodTemplate<'_> {
    fn prune(before: &mut Self, after: &mut Self) {
        member(&mut before.metadata, &mut after.metadata, ObjectMeta::prune);
        member(&mut before.spec, &mut after.spec, |b, a| {
            leaf(&mut b.service_account_name, &mut a.service_account_name);
            leaf(&mut b.service_account, &mut a.service_account);
        });
    }
}

impl Prune for MetaOnly<'_> {
    fn prune(before: &mut Self, after: &mut Self) {
        ObjectMeta::prune(&mut before.metadata, &mut after.metadata);
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;
    use crate::model::{Named, OwnerReference, VolumeMount};

    /// The pruned diff is the diff of the whole views.
    fn same_as_whole<T: Prune + Serialize + Clone>(before: &T, after: &T) -> json_patch::Patch {
        let whole = json_patch::diff(
            &serde_json::to_value(before).unwrap(),
            &serde_json::to_value(after).unwrap(),
        );
        let pruned = diff(before.clone(), after.clone()).unwrap();
        assert_eq!(pruned, whole);
        pruned
    }

    fn labels<'a>(pairs: &[(&'a str, &'a str)]) -> Option<Labels<'a>> {
        Some(pairs.iter().map(|&(k, v)| (k.into(), v.into())).collect())
    }

    fn pod() -> Pod<'static> {
        let named = |n: &'static str| Named {
            name: n.into(),
            body: None,
        };
        let container = |n: &'static str| Container {
            name: n.into(),
            command: Some(vec!["python".into()]),
            args: Some(vec!["train.py".into()]),
            env: Some(vec![named("A"), named("B")]),
            volume_mounts: Some(vec![VolumeMount {
                name: "v".into(),
                mount_path: "/v".into(),
                read_only: None,
            }]),
            termination_message_path: None,
        };
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("alice".into()),
                labels: labels(&[("a", "1"), ("b", "2")]),
                annotations: labels(&[("x", "y")]),
                owner_references: Some(vec![OwnerReference {
                    api_version: "batch/v1".into(),
                    kind: "Job".into(),
                    name: "j".into(),
                    controller: Some(true),
                }]),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![container("main"), container("metrics-logger-and-collector")],
                volumes: Some(vec![named("v")]),
                service_account_name: Some("default-editor".into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn equal_views_give_no_operation() {
        assert!(same_as_whole(&pod(), &pod()).0.is_empty());
    }

    #[test]
    fn label_added_changed_and_removed() {
        let mut after = pod();
        after.metadata.set_label("c", "3");
        after.metadata.set_label("a", "0");
        after.metadata.remove_label("b");
        let patch = same_as_whole(&pod(), &after);
        assert_eq!(patch.0.len(), 3, "{patch:?}");
    }

    #[test]
    fn labels_where_there_were_none() {
        let mut before = pod();
        before.metadata.labels = None;
        before.metadata.annotations = None;
        let mut after = before.clone();
        after.metadata.set_label("kubeflow-extension", "true");
        after
            .metadata
            .set_annotation("sidecar.istio.io/inject", "true");
        let patch = same_as_whole(&before, &after);
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            json!([
                {"op": "add", "path": "/metadata/annotations", "value": {"sidecar.istio.io/inject": "true"}},
                {"op": "add", "path": "/metadata/labels", "value": {"kubeflow-extension": "true"}},
            ])
        );
    }

    #[test]
    fn second_container_changed_keeps_its_index() {
        let mut after = pod();
        let spec = after.spec.as_mut().unwrap();
        spec.containers[1].command = Some(vec!["sh".into(), "-c".into()]);
        spec.containers[1].env.as_mut().unwrap().push(Named::new(
            "T",
            json!({"value": "t"}).as_object().unwrap().clone(),
        ));
        spec.containers[1].termination_message_path = Some("/dev/termination-log".into());
        let patch = same_as_whole(&pod(), &after);
        let paths: Vec<String> = patch.0.iter().map(|op| op.path().to_string()).collect();
        assert_eq!(
            paths,
            [
                "/spec/containers/1/command/0",
                "/spec/containers/1/command/1",
                "/spec/containers/1/env/2",
                "/spec/containers/1/terminationMessagePath"
            ]
        );
    }

    #[test]
    fn appended_volume_mount_and_volume() {
        let mut after = pod();
        let spec = after.spec.as_mut().unwrap();
        spec.containers[0]
            .volume_mounts
            .as_mut()
            .unwrap()
            .push(VolumeMount {
                name: "t".into(),
                mount_path: "/t".into(),
                read_only: Some(true),
            });
        spec.volumes.as_mut().unwrap().push(Named::new(
            "t",
            json!({"emptyDir": {}}).as_object().unwrap().clone(),
        ));
        spec.service_account_name = Some("other".into());
        assert_eq!(same_as_whole(&pod(), &after).0.len(), 3);
    }

    #[test]
    fn spec_where_there_was_none_and_the_reverse() {
        let mut before = pod();
        before.spec = None;
        same_as_whole(&before, &pod());
        same_as_whole(&pod(), &before);
    }

    #[test]
    fn job_template_label_annotation_and_service_account() {
        let object = json!({
            "metadata": {"name": "j", "ownerReferences": [{"apiVersion": "kubeflow.org/v1beta1", "kind": "Trial", "name": "t"}]},
            "spec": {"template": {"metadata": {"labels": {"a": "1"}}, "spec": {"serviceAccount": "x", "serviceAccountName": "x"}}}
        });
        let before = Workload::deserialize(&object).unwrap();
        let mut after = before.clone();
        let template = after.spec.as_mut().unwrap().template.as_mut().unwrap();
        template
            .metadata
            .as_mut()
            .unwrap()
            .set_label("kubeflow-extension", "true");
        template
            .metadata
            .as_mut()
            .unwrap()
            .set_annotation("sidecar.istio.io/inject", "true");
        let spec = template.spec.as_mut().unwrap();
        spec.service_account_name = Some("default-editor".into());
        spec.service_account = Some("default-editor".into());
        assert_eq!(same_as_whole(&before, &after).0.len(), 4);
    }

    #[test]
    fn templates_of_every_workload_path() {
        let object = json!({
            "metadata": {"name": "w"},
            "spec": {
                "pytorchReplicaSpecs": {
                    "Master": {"replicas": 1, "template": {"metadata": {"labels": {"a": "1"}}, "spec": {"containers": []}}},
                    "Worker": {"replicas": 2, "template": {"spec": {"serviceAccountName": "x"}}},
                    "Other": null
                },
                "replicatedJobs": [
                    {"name": "a", "replicas": 1, "template": {"spec": {"template": {"metadata": {}}}}},
                    {"name": "b", "template": {"spec": {"template": {"spec": {}}}}}
                ],
                "runtimePatches": [{"manager": "m", "trainingRuntimeSpec": {"template": {"spec": {
                    "replicatedJobs": [{"name": "node", "template": {"spec": {"template": {"metadata": {"labels": {"x": "y"}}}}}}]
                }}}}]
            }
        });
        let before = Workload::deserialize(&object).unwrap();
        let mut after = before.clone();
        let templates = after.templates_mut();
        let keys: Vec<_> = templates.iter().map(|(key, _)| key.clone()).collect();
        assert_eq!(
            keys,
            [
                "replica Master",
                "replica Worker",
                "replicated job a",
                "replicated job b",
                "runtime patch m replicated job node"
            ]
        );
        for (_, template) in templates {
            template
                .metadata
                .get_or_insert_default()
                .set_label("kubeflow-extension", "true");
        }
        let patch = same_as_whole(&before, &after);
        let mut patched = object.clone();
        json_patch::patch(&mut patched, &patch).unwrap();
        let spec = &patched["spec"];
        for template in [
            &spec["pytorchReplicaSpecs"]["Master"]["template"],
            &spec["pytorchReplicaSpecs"]["Worker"]["template"],
            &spec["replicatedJobs"][0]["template"]["spec"]["template"],
            &spec["replicatedJobs"][1]["template"]["spec"]["template"],
            &spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
                [0]["template"]["spec"]["template"],
        ] {
            assert_eq!(
                template["metadata"]["labels"]["kubeflow-extension"], "true",
                "{patched}"
            );
        }
        assert_eq!(spec["pytorchReplicaSpecs"]["Master"]["replicas"], 1);
        assert_eq!(
            spec["pytorchReplicaSpecs"]["Master"]["template"]["metadata"]["labels"]["a"],
            "1"
        );
        assert_eq!(spec["pytorchReplicaSpecs"]["Other"], json!(null));
    }

    #[test]
    fn trial_label() {
        let before = MetaOnly {
            metadata: ObjectMeta {
                name: Some("t".into()),
                ..Default::default()
            },
        };
        let mut after = before.clone();
        after.metadata.set_label("kubeflow-extension", "true");
        assert_eq!(same_as_whole(&before, &after).0.len(), 1);
    }
}
