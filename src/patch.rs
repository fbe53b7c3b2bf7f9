//! The JSON Patch between a view and its changed version: exactly `json_patch::diff` of the two
//! views serialized, computed by walking the typed views instead.
//!
//! `json_patch::diff` recurses into objects (first the keys of the new object in key order:
//! into a key both have, `add` for a new one; then `remove` for each key only the old one has)
//! and into arrays (index by index, then `add` past the old end or `remove` past the new end),
//! and `replace`s any other value that differs. [`Diff`] does the same over the typed views: a
//! struct is an object whose members are listed in key order ([`object!`]), a `Vec` an array, a
//! map an object; a part no rule looks into is serialized and handed to `json_patch::diff`
//! itself (with the path so far in front), and only when it differs. So the ~40 env vars of a
//! notebook are compared, not serialized, and a path is built only for an operation. The
//! property tests below check the equality on generated views; `admission`'s tests on every fixture.

use json_patch::jsonptr::{PointerBuf, Token};
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use serde::Serialize;

use std::collections::BTreeMap;

use crate::model::{
    Container, InitContainer, JobSetSpecPatch, JobSetTemplatePatch, JobTemplate, JobTemplateSpec,
    MetaOnly, Named, ObjectMeta, OwnerReference, Pod, PodSpec, PodTemplate, ReplicaSpec,
    ReplicatedJob, RuntimePatch, RuntimeSpecPatch, Str, TemplateSpec, VolumeMount, Workload,
    WorkloadSpec,
};

type Result<T = (), E = serde_json::Error> = std::result::Result<T, E>;

/// The patch that turns `before` into `after`, both views of the same object:
/// `json_patch::diff(&to_value(before)?, &to_value(after)?)`.
pub fn diff<T: Diff>(before: &T, after: &T) -> Result<Patch> {
    let mut differ = Differ {
        path: Vec::new(),
        patch: Vec::new(),
    };
    before.diff(after, &mut differ)?;
    Ok(Patch(differ.patch))
}

/// A view (or part of one) that can be diffed against another version of itself.
pub trait Diff: Serialize + PartialEq + Sized {
    /// Appends the operations `json_patch::diff` gives for `self` → `after` at the differ's
    /// path. By default the serialized values are diffed, when they differ.
    fn diff<'v>(&'v self, after: &'v Self, d: &mut Differ<'v>) -> Result {
        if self == after {
            return Ok(());
        }
        d.leaf(self, after)
    }
}

/// One step of a path: an object member or an array index.
#[derive(Clone, Copy)]
enum Step<'v> {
    Key(&'v str),
    Index(usize),
}

/// The path walked so far and the operations found.
pub struct Differ<'v> {
    path: Vec<Step<'v>>,
    patch: Vec<PatchOperation>,
}

impl<'v> Differ<'v> {
    fn pointer(&self) -> PointerBuf {
        PointerBuf::from_tokens(self.path.iter().map(|step| match *step {
            Step::Key(key) => Token::new(key),
            Step::Index(index) => Token::from(index),
        }))
    }

    fn at(&mut self, step: Step<'v>, f: impl FnOnce(&mut Self) -> Result) -> Result {
        self.path.push(step);
        let result = f(self);
        self.path.pop();
        result
    }

    fn add(&mut self, value: &impl Serialize) -> Result {
        let value = serde_json::to_value(value)?;
        let path = self.pointer();
        self.patch
            .push(PatchOperation::Add(AddOperation { path, value }));
        Ok(())
    }

    fn remove(&mut self) {
        let path = self.pointer();
        self.patch
            .push(PatchOperation::Remove(RemoveOperation { path }));
    }

    fn replace(&mut self, value: &impl Serialize) -> Result {
        let value = serde_json::to_value(value)?;
        let path = self.pointer();
        self.patch
            .push(PatchOperation::Replace(ReplaceOperation { path, value }));
        Ok(())
    }

    /// `json_patch::diff` of the two values serialized, its paths under the path so far.
    fn leaf(&mut self, before: &impl Serialize, after: &impl Serialize) -> Result {
        let ops = json_patch::diff(
            &serde_json::to_value(before)?,
            &serde_json::to_value(after)?,
        );
        let prefix = self.pointer();
        self.patch.extend(ops.0.into_iter().map(|mut op| {
            let path = match &mut op {
                PatchOperation::Add(op) => &mut op.path,
                PatchOperation::Remove(op) => &mut op.path,
                PatchOperation::Replace(op) => &mut op.path,
                PatchOperation::Move(op) => &mut op.path,
                PatchOperation::Copy(op) => &mut op.path,
                PatchOperation::Test(op) => &mut op.path,
            };
            *path = prefix.concat(path);
            op
        }));
        Ok(())
    }

    /// A member of an object, in the first pass: into it when both have it, `add` when new.
    fn member<T: Diff>(
        &mut self,
        key: &'v str,
        before: Option<&'v T>,
        after: Option<&'v T>,
    ) -> Result {
        match (before, after) {
            (Some(before), Some(after)) => self.at(Step::Key(key), |d| before.diff(after, d)),
            (None, Some(after)) => self.at(Step::Key(key), |d| d.add(after)),
            _ => Ok(()),
        }
    }

    /// A member of an object, in the second pass: `remove` when only the old object has it.
    fn removed(&mut self, key: &'v str, before: bool, after: bool) {
        if before && !after {
            self.path.push(Step::Key(key));
            self.remove();
            self.path.pop();
        }
    }
}

/// A field as an object member: `opt` an `Option` (absent when `None`), `req` always there.
macro_rules! member {
    (opt, $field:expr) => {
        $field.as_ref()
    };
    (req, $field:expr) => {
        Some(&$field)
    };
}

/// The diff of a struct serialized as an object: its fields, listed in key order. Every field
/// must be listed (the pattern below does not compile otherwise), so a field added to a view
/// cannot be left out of its patch.
macro_rules! object {
    ($d:ident, $before:ident, $after:ident, $($presence:ident $field:ident = $key:literal),+ $(,)?) => {{
        let Self { $($field: _),+ } = $before;
        $( $d.member($key, member!($presence, $before.$field), member!($presence, $after.$field))?; )+
        $( $d.removed(
            $key,
            member!($presence, $before.$field).is_some(),
            member!($presence, $after.$field).is_some(),
        ); )+
        Ok(())
    }};
}

impl Diff for Str<'_> {
    fn diff<'v>(&'v self, after: &'v Self, d: &mut Differ<'v>) -> Result {
        if self == after {
            return Ok(());
        }
        d.replace(after)
    }
}

/// An array.
impl<T: Diff> Diff for Vec<T> {
    fn diff<'v>(&'v self, after: &'v Self, d: &mut Differ<'v>) -> Result {
        for (index, (before, after)) in self.iter().zip(after).enumerate() {
            // Equal elements (most of them) give nothing: no step onto the path.
            if before != after {
                d.at(Step::Index(index), |d| before.diff(after, d))?;
            }
        }
        for (index, added) in after.iter().enumerate().skip(self.len()) {
            d.at(Step::Index(index), |d| d.add(added))?;
        }
        // Each `remove` past the new end takes the element at the new length.
        for _ in after.len()..self.len() {
            d.at(Step::Index(after.len()), |d| {
                d.remove();
                Ok(())
            })?;
        }
        Ok(())
    }
}

/// An object keyed by strings (labels, annotations, replica specs).
impl<'a, T: Diff> Diff for BTreeMap<Str<'a>, T> {
    fn diff<'v>(&'v self, after: &'v Self, d: &mut Differ<'v>) -> Result {
        for (key, value) in after {
            d.member(key, self.get(&**key), Some(value))?;
        }
        for key in self.keys() {
            d.removed(key, true, after.contains_key(&**key));
        }
        Ok(())
    }
}

/// A value that may be `null` (a replica spec).
impl<T: Diff> Diff for Option<T> {
    fn diff<'v>(&'v self, after: &'v Self, d: &mut Differ<'v>) -> Result {
        match (self, after) {
            (Some(before), Some(after)) => before.diff(after, d),
            (None, None) => Ok(()),
            _ => d.replace(after),
        }
    }
}

impl Diff for OwnerReference<'_> {}
impl Diff for InitContainer<'_> {}
impl Diff for VolumeMount<'_> {}

/// An element read from the object serializes as `null`, whatever its name.
impl Diff for Named<'_> {
    fn diff<'v>(&'v self, after: &'v Self, d: &mut Differ<'v>) -> Result {
        if self.body.is_none() && after.body.is_none() || self == after {
            return Ok(());
        }
        d.leaf(self, after)
    }
}

impl Diff for ObjectMeta<'_> {
    fn diff<'v>(&'v self, after: &'v Self, d: &mut Differ<'v>) -> Result {
        object!(d, self, after,
            opt annotations = "annotations",
            opt generate_name = "generateName",
            opt labels = "labels",
            opt name = "name",
            opt namespace = "namespace",
            opt owner_references = "ownerReferences",
        )
    }
}

impl Diff for Pod<'_> {
    fn diff<'v>(&'v self, after: &'v Self, d: &mut Differ<'v>) -> Result {
        object!(d, self, after, req metadata = "metadata", opt spec = "spec")
    }
}

impl Diff for PodSpec<'_> {
    fn diff<'v>(&'v self, after: &'v Self, d: &mut Differ<'v>) -> Result {
        object!(d, self, after,
            req containers = "containers",
            opt init_containers = "initContainers",
            opt service_account_name = "serviceAccountName",
            opt volumes = "volumes",
        )
    }
}

impl Diff for Container<'_> {
    fn diff<'v>(&'v self, after: &'v Self, d: &mut Differ<'v>) -> Result {
        object!(d, self, after,
            opt args = "args",
            opt command = "command",
            opt env = "env",
            req name = "name",
            opt termination_message_path = "terminationMessagePath",
            opt volume_mounts = "volumeMounts",
        )
    }
}

impl Diff for Workload<'_> {
    fn diff<'v>(&'v self, after: &'v Self, d: &mut Differ<'v>) -> Result {
        object!(d, self, after, req metadata = "metadata", opt spec = "spec")
    }
}

impl Diff for WorkloadSpec<'_> {
    fn diff<'v>(&'v self, after: &'v Self, d: &mut Differ<'v>) -> Result {
        object!(d, self, after,
            opt jax_replica_specs = "jaxReplicaSpecs",
            opt mpi_replica_specs = "mpiReplicaSpecs",
            opt paddle_replica_specs = "paddleReplicaSpecs",
            opt pytorch_replica_specs = "pytorchReplicaSpecs",
            opt replicated_jobs = "replicatedJobs",
            opt runtime_patches = "runtimePatches",
            opt template = "template",
            opt tf_replica_specs = "tfReplicaSpecs",
            opt xgb_replica_specs = "xgbReplicaSpecs",
        )
    }
}

impl Diff for ReplicaSpec<'_> {
    fn diff<'v>(&'v self, after: &'v Self, d: &mut Differ<'v>) -> Result {
        object!(d, self, after, opt template = "template")
    }
}

impl Diff for ReplicatedJob<'_> {
    fn diff<'v>(&'v self, after: &'v Self, d: &mut Differ<'v>) -> Result {
        object!(d, self, after, opt name = "name", opt template = "template")
    }
}

impl Diff for JobTemplate<'_> {
    fn diff<'v>(&'v self, after: &'v Self, d: &mut Differ<'v>) -> Result {
        object!(d, self, after, opt spec = "spec")
    }
}

impl Diff for JobTemplateSpec<'_> {
    fn diff<'v>(&'v self, after: &'v Self, d: &mut Differ<'v>) -> Result {
        object!(d, self, after, opt template = "template")
    }
}

impl Diff for RuntimePatch<'_> {
    fn diff<'v>(&'v self, after: &'v Self, d: &mut Differ<'v>) -> Result {
        object!(d, self, after,
            opt manager = "manager",
            opt training_runtime_spec = "trainingRuntimeSpec",
        )
    }
}

impl Diff for RuntimeSpecPatch<'_> {
    fn diff<'v>(&'v self, after: &'v Self, d: &mut Differ<'v>) -> Result {
        object!(d, self, after, opt template = "template")
    }
}

impl Diff for JobSetTemplatePatch<'_> {
    fn diff<'v>(&'v self, after: &'v Self, d: &mut Differ<'v>) -> Result {
        object!(d, self, after, opt spec = "spec")
    }
}

impl Diff for JobSetSpecPatch<'_> {
    fn diff<'v>(&'v self, after: &'v Self, d: &mut Differ<'v>) -> Result {
        object!(d, self, after, opt replicated_jobs = "replicatedJobs")
    }
}

impl Diff for PodTemplate<'_> {
    fn diff<'v>(&'v self, after: &'v Self, d: &mut Differ<'v>) -> Result {
        object!(d, self, after, opt metadata = "metadata", opt spec = "spec")
    }
}

impl Diff for TemplateSpec<'_> {
    fn diff<'v>(&'v self, after: &'v Self, d: &mut Differ<'v>) -> Result {
        object!(d, self, after,
            opt service_account = "serviceAccount",
            opt service_account_name = "serviceAccountName",
        )
    }
}

impl Diff for MetaOnly<'_> {
    fn diff<'v>(&'v self, after: &'v Self, d: &mut Differ<'v>) -> Result {
        object!(d, self, after, req metadata = "metadata")
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;
    use crate::model::{Labels, Named, OwnerReference, VolumeMount};

    /// The typed diff is the diff of the whole views.
    fn same_as_whole<T: Diff>(before: &T, after: &T) -> json_patch::Patch {
        let whole = json_patch::diff(
            &serde_json::to_value(before).unwrap(),
            &serde_json::to_value(after).unwrap(),
        );
        let typed = diff(before, after).unwrap();
        assert_eq!(typed, whole);
        typed
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

    /// Generated views: small alphabets, so that two independent views share keys, names and
    /// list prefixes often; keys with `/` and `~` test the path escapes.
    mod generated {
        use proptest::{collection, option, prelude::*};
        use serde_json::{Map, Value};

        use super::*;
        use crate::{
            config::DEFAULT_TRUSTED_CONTROLLERS,
            model::{
                InitContainer, JobSetSpecPatch, JobSetTemplatePatch, JobTemplate, JobTemplateSpec,
                ReplicaSpec, ReplicaSpecs, RuntimePatch, RuntimeSpecPatch, TemplateSpec,
            },
            policy,
            testing::config,
        };

        fn word() -> impl Strategy<Value = Str<'static>> {
            prop_oneof![
                Just("a"),
                Just("b"),
                Just("x/y"),
                Just("t~1"),
                Just("true"),
                Just("notebook-name"),
                Just("kubeflow-extension"),
                Just("sidecar.istio.io/inject"),
                Just("default-editor"),
            ]
            .prop_map(Str::from)
        }

        fn words(max: usize) -> impl Strategy<Value = Option<Vec<Str<'static>>>> {
            option::of(collection::vec(word(), 0..max))
        }

        fn labels() -> impl Strategy<Value = Option<Labels<'static>>> {
            option::of(collection::btree_map(word(), word(), 0..4))
        }

        fn owner() -> BoxedStrategy<OwnerReference<'static>> {
            (
                prop_oneof![
                    Just("kubeflow.org/v1beta1"),
                    Just("batch/v1"),
                    Just("kubeflow.org/v1")
                ],
                prop_oneof![Just("Trial"), Just("Job"), Just("PyTorchJob")],
                word(),
                option::of(any::<bool>()),
            )
                .prop_map(|(api_version, kind, name, controller)| OwnerReference {
                    api_version: api_version.into(),
                    kind: kind.into(),
                    name,
                    controller,
                })
                .boxed()
        }

        fn meta() -> BoxedStrategy<ObjectMeta<'static>> {
            (
                option::of(word()),
                option::of(word()),
                option::of(word()),
                labels(),
                labels(),
                option::of(collection::vec(owner(), 0..3)),
            )
                .prop_map(
                    |(name, generate_name, namespace, labels, annotations, owner_references)| {
                        ObjectMeta {
                            name,
                            generate_name,
                            namespace,
                            labels,
                            annotations,
                            owner_references,
                        }
                    },
                )
                .boxed()
        }

        /// A list element read from an object (no body) or added by a rule.
        fn named() -> BoxedStrategy<Named<'static>> {
            let body = prop_oneof![
                Just(json!({"value": "1"})),
                Just(json!({"value": "2", "x": [1, {"y": null}]})),
                Just(json!({"emptyDir": {}})),
            ]
            .prop_map(|v| match v {
                Value::Object(map) => map,
                _ => Map::new(),
            });
            (word(), option::of(body))
                .prop_map(|(name, body)| Named { name, body })
                .boxed()
        }

        fn mount() -> impl Strategy<Value = VolumeMount<'static>> {
            (word(), word(), option::of(any::<bool>())).prop_map(|(name, mount_path, read_only)| {
                VolumeMount {
                    name,
                    mount_path,
                    read_only,
                }
            })
        }

        fn container() -> BoxedStrategy<Container<'static>> {
            (
                word(),
                words(4),
                words(4),
                option::of(collection::vec(named(), 0..5)),
                option::of(collection::vec(mount(), 0..3)),
                option::of(word()),
            )
                .prop_map(
                    |(name, command, args, env, volume_mounts, termination_message_path)| {
                        Container {
                            name,
                            command,
                            args,
                            env,
                            volume_mounts,
                            termination_message_path,
                        }
                    },
                )
                .boxed()
        }

        pub(super) fn pod() -> BoxedStrategy<Pod<'static>> {
            let init =
                (word(), option::of(word())).prop_map(|(name, restart_policy)| InitContainer {
                    name,
                    restart_policy,
                });
            let spec = (
                collection::vec(container(), 0..3),
                option::of(collection::vec(init, 0..2)),
                option::of(collection::vec(named(), 0..4)),
                option::of(word()),
            )
                .prop_map(
                    |(containers, init_containers, volumes, service_account_name)| PodSpec {
                        containers,
                        init_containers,
                        volumes,
                        service_account_name,
                    },
                );
            (meta(), option::of(spec))
                .prop_map(|(metadata, spec)| Pod { metadata, spec })
                .boxed()
        }

        fn template() -> BoxedStrategy<PodTemplate<'static>> {
            let spec = (option::of(word()), option::of(word())).prop_map(
                |(service_account_name, service_account)| TemplateSpec {
                    service_account_name,
                    service_account,
                },
            );
            (option::of(meta()), option::of(spec))
                .prop_map(|(metadata, spec)| PodTemplate { metadata, spec })
                .boxed()
        }

        fn replica_specs() -> BoxedStrategy<Option<ReplicaSpecs<'static>>> {
            let role = prop_oneof![Just("Master"), Just("Worker")].prop_map(Str::from);
            let spec =
                option::of(option::of(template()).prop_map(|template| ReplicaSpec { template }));
            option::of(collection::btree_map(role, spec, 0..3)).boxed()
        }

        fn replicated_jobs() -> BoxedStrategy<Option<Vec<ReplicatedJob<'static>>>> {
            let job = (option::of(word()), option::of(option::of(template()))).prop_map(
                |(name, template)| ReplicatedJob {
                    name,
                    template: template.map(|template| JobTemplate {
                        spec: Some(JobTemplateSpec { template }),
                    }),
                },
            );
            option::of(collection::vec(job, 0..3)).boxed()
        }

        pub(super) fn workload() -> BoxedStrategy<Workload<'static>> {
            let runtime_patch =
                (option::of(word()), replicated_jobs()).prop_map(|(manager, replicated_jobs)| {
                    RuntimePatch {
                        manager,
                        training_runtime_spec: Some(RuntimeSpecPatch {
                            template: Some(JobSetTemplatePatch {
                                spec: Some(JobSetSpecPatch { replicated_jobs }),
                            }),
                        }),
                    }
                });
            let spec = (
                option::of(template()),
                replica_specs(),
                replica_specs(),
                replicated_jobs(),
                option::of(collection::vec(runtime_patch, 0..2)),
            )
                .prop_map(
                    |(
                        template,
                        pytorch_replica_specs,
                        tf_replica_specs,
                        replicated_jobs,
                        runtime_patches,
                    )| {
                        WorkloadSpec {
                            template,
                            pytorch_replica_specs,
                            tf_replica_specs,
                            replicated_jobs,
                            runtime_patches,
                            ..Default::default()
                        }
                    },
                );
            (meta(), option::of(spec))
                .prop_map(|(metadata, spec)| Workload { metadata, spec })
                .boxed()
        }

        /// The typed diff is `json_patch::diff` of the serialized views, and turns one into the
        /// other.
        fn check<T: Diff>(before: &T, after: &T) -> Result<(), TestCaseError> {
            let (b, a) = (
                serde_json::to_value(before).unwrap(),
                serde_json::to_value(after).unwrap(),
            );
            let typed = diff(before, after).unwrap();
            prop_assert_eq!(&typed, &json_patch::diff(&b, &a));
            let mut patched = b;
            json_patch::patch(&mut patched, &typed).unwrap();
            prop_assert_eq!(patched, a);
            Ok(())
        }

        fn user() -> impl Strategy<Value = Option<&'static str>> {
            option::of(prop_oneof![
                Just(DEFAULT_TRUSTED_CONTROLLERS[0]),
                Just(DEFAULT_TRUSTED_CONTROLLERS[2]),
                Just("alice@example.com")
            ])
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            #[test]
            fn any_two_pods(before in pod(), after in pod()) {
                check(&before, &after)?;
            }

            #[test]
            fn any_two_workloads(before in workload(), after in workload()) {
                check(&before, &after)?;
            }

            #[test]
            fn any_two_metas(before in meta(), after in meta()) {
                check(&MetaOnly { metadata: before }, &MetaOnly { metadata: after })?;
            }

            /// What the rules make of generated objects, in both modes.
            #[test]
            fn pods_as_the_rules_change_them(before in pod(), user in user()) {
                for mode in ["kfpAccess: token", "kfpAccess: header"] {
                    let after = policy::mutate_pod(&before, "alice", user, &config(mode)).object;
                    check(&before, &after)?;
                }
            }

            #[test]
            fn workloads_as_the_rules_change_them(before in workload(), old in workload(), user in user()) {
                for mode in ["kfpAccess: token", "kfpAccess: header"] {
                    let config = config(mode);
                    let after = policy::mutate_workload(&before, "alice", user, &config).object;
                    check(&before, &after)?;
                    let after = policy::guard_workload_update(&before, &old, "alice", &config).object;
                    check(&before, &after)?;
                }
            }
        }
    }
}
