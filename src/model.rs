//! Partial typed views of the objects the admission rules read and write.
//!
//! A view holds only the fields a rule looks at; serde skips the rest of the request without
//! building it (managedFields, env values, volume sources...), and its strings borrow from the
//! request body. Because every list keeps all its elements in order (an element only read
//! serializes as a placeholder), `json_patch::diff(view, changed view)` yields paths that are
//! valid on the full object: the patch touches exactly what a rule changed and nothing the view
//! does not hold ([`crate::patch`]).

use std::{borrow::Cow, collections::BTreeMap, fmt, ops::Deref};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A string of a view: borrowed from the request body, owned when the body escapes it or a
/// rule writes it. (A newtype because serde borrows a `Cow` only as the field's own type, never
/// inside an `Option`, `Vec` or map.)
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

impl Deref for Str<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// Lets a map keyed by `Str` be looked up by `&str`.
impl std::borrow::Borrow<str> for Str<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl<'a> From<&'a str> for Str<'a> {
    fn from(s: &'a str) -> Self {
        Str(Cow::Borrowed(s))
    }
}

impl From<String> for Str<'_> {
    fn from(s: String) -> Self {
        Str(Cow::Owned(s))
    }
}

impl fmt::Debug for Str<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl PartialEq<&str> for Str<'_> {
    fn eq(&self, other: &&str) -> bool {
        **self == **other
    }
}

impl PartialEq<String> for Str<'_> {
    fn eq(&self, other: &String) -> bool {
        **self == **other
    }
}

pub type Labels<'a> = BTreeMap<Str<'a>, Str<'a>>;

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta<'a> {
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub name: Option<Str<'a>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<Str<'a>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Str<'a>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels<'a>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Labels<'a>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub owner_references: Option<Vec<OwnerReference<'a>>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference<'a> {
    #[serde(default, borrow)]
    pub api_version: Str<'a>,
    #[serde(default, borrow)]
    pub kind: Str<'a>,
    #[serde(default, borrow)]
    pub name: Str<'a>,
    /// Marks the managing controller; only such a reference says who made the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
}

impl ObjectMeta<'_> {
    /// The owner marked `controller: true`; none when no reference, or more than one, is
    /// marked (the API server accepts at most one).
    pub fn controller_owner(&self) -> Option<&OwnerReference<'_>> {
        let mut controllers = self
            .owner_references
            .iter()
            .flatten()
            .filter(|owner| owner.controller == Some(true));
        let first = controllers.next();
        match controllers.next() {
            None => first,
            Some(_) => None,
        }
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.as_ref()?.get(key).map(|value| &**value)
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(|value| &**value)
    }

    pub fn set_label(&mut self, key: &str, value: &str) {
        self.labels
            .get_or_insert_default()
            .insert(key.to_owned().into(), value.to_owned().into());
    }

    pub fn remove_label(&mut self, key: &str) {
        if let Some(labels) = &mut self.labels {
            labels.remove(key);
        }
    }

    pub fn set_annotation(&mut self, key: &str, value: &str) {
        self.annotations
            .get_or_insert_default()
            .insert(key.to_owned().into(), value.to_owned().into());
    }

    /// The name to show in logs: the name, else the generateName prefix.
    pub fn display_name(&self) -> &str {
        self.name
            .as_deref()
            .or(self.generate_name.as_deref())
            .unwrap_or("")
    }
}

/// A Pod, as far as the pod rules care.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Pod<'a> {
    #[serde(default, borrow)]
    pub metadata: ObjectMeta<'a>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub spec: Option<PodSpec<'a>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec<'a> {
    #[serde(default, borrow)]
    pub containers: Vec<Container<'a>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub init_containers: Option<Vec<InitContainer<'a>>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<Named<'a>>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<Str<'a>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Container<'a> {
    #[serde(borrow)]
    pub name: Str<'a>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<Str<'a>>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<Str<'a>>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<Named<'a>>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<Vec<VolumeMount<'a>>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub termination_message_path: Option<Str<'a>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InitContainer<'a> {
    #[serde(borrow)]
    pub name: Str<'a>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<Str<'a>>,
}

/// A list element identified by `name` (env var, volume). An element read from the object is
/// known by its name only (`body` is `None`); an element a rule adds carries its whole body.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Named<'a> {
    #[serde(borrow)]
    pub name: Str<'a>,
    #[serde(skip)]
    pub body: Option<Map<String, Value>>,
}

impl<'a> Named<'a> {
    /// An element to add, `name` plus the members of `body`.
    pub fn new(name: impl Into<Str<'a>>, body: Map<String, Value>) -> Self {
        Self {
            name: name.into(),
            body: Some(body),
        }
    }
}

/// A view is serialized only to be diffed against another version of itself, so an element read
/// from the object serializes as a `null` placeholder: it keeps its index, and equal elements
/// give no operation, without building its name as JSON. (A rule that gave a read element a
/// body would get a `replace` of that element, which is what it would mean.)
impl Serialize for Named<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Some(body) = &self.body else {
            return serializer.serialize_unit();
        };
        let mut map = serializer.serialize_map(Some(body.len() + 1))?;
        map.serialize_entry("name", &self.name)?;
        for (key, value) in body {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount<'a> {
    #[serde(borrow)]
    pub name: Str<'a>,
    #[serde(borrow)]
    pub mount_path: Str<'a>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

/// The kinds that stamp out pods from pod templates and that Katib runs Trials as (or that run
/// those in turn): a pod owned by one of them, made by a trusted controller, may keep the
/// extension label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    Job,
    PyTorchJob,
    TFJob,
    MPIJob,
    XGBoostJob,
    PaddleJob,
    JAXJob,
    JobSet,
    TrainJob,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 9] = [
        WorkloadKind::Job,
        WorkloadKind::PyTorchJob,
        WorkloadKind::TFJob,
        WorkloadKind::MPIJob,
        WorkloadKind::XGBoostJob,
        WorkloadKind::PaddleJob,
        WorkloadKind::JAXJob,
        WorkloadKind::JobSet,
        WorkloadKind::TrainJob,
    ];

    /// API group, version, kind and resource (plural).
    pub fn gvkr(self) -> (&'static str, &'static str, &'static str, &'static str) {
        const TRAINING: &str = "kubeflow.org";
        match self {
            WorkloadKind::Job => ("batch", "v1", "Job", "jobs"),
            WorkloadKind::PyTorchJob => (TRAINING, "v1", "PyTorchJob", "pytorchjobs"),
            WorkloadKind::TFJob => (TRAINING, "v1", "TFJob", "tfjobs"),
            WorkloadKind::MPIJob => (TRAINING, "v1", "MPIJob", "mpijobs"),
            WorkloadKind::XGBoostJob => (TRAINING, "v1", "XGBoostJob", "xgboostjobs"),
            WorkloadKind::PaddleJob => (TRAINING, "v1", "PaddleJob", "paddlejobs"),
            WorkloadKind::JAXJob => (TRAINING, "v1", "JAXJob", "jaxjobs"),
            WorkloadKind::JobSet => ("jobset.x-k8s.io", "v1alpha2", "JobSet", "jobsets"),
            WorkloadKind::TrainJob => ("trainer.kubeflow.org", "v1alpha1", "TrainJob", "trainjobs"),
        }
    }

    pub fn of(group: &str, version: &str, kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| {
            let (g, v, k, _) = w.gvkr();
            (g, v, k) == (group, version, kind)
        })
    }

    pub fn name(self) -> &'static str {
        self.gvkr().2
    }

    /// Is `owner` a reference to a workload of one of these kinds (exact group/version)?
    pub fn owns(owner: &OwnerReference<'_>) -> bool {
        let (group, version) = owner
            .api_version
            .rsplit_once('/')
            .unwrap_or(("", &owner.api_version));
        Self::of(group, version, &owner.kind).is_some()
    }
}

/// A workload with pod templates, as far as the workload rules care: its metadata and the pod
/// templates at the paths its kind has. Each kind's schema holds only its own path, so one view
/// serves every kind; every other field is skipped, and untouched by the patch.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Workload<'a> {
    #[serde(default, borrow)]
    pub metadata: ObjectMeta<'a>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub spec: Option<WorkloadSpec<'a>>,
}

/// Replica specs of a Training Operator job, by replica type (`Master`, `Worker`...); the API
/// allows a null entry.
pub type ReplicaSpecs<'a> = BTreeMap<Str<'a>, Option<ReplicaSpec<'a>>>;

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec<'a> {
    /// batch/v1 Job: `spec.template`.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub template: Option<PodTemplate<'a>>,
    /// Training Operator (kubeflow.org/v1): `spec.<x>ReplicaSpecs.<type>.template`.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub pytorch_replica_specs: Option<ReplicaSpecs<'a>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub tf_replica_specs: Option<ReplicaSpecs<'a>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub mpi_replica_specs: Option<ReplicaSpecs<'a>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub xgb_replica_specs: Option<ReplicaSpecs<'a>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub paddle_replica_specs: Option<ReplicaSpecs<'a>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub jax_replica_specs: Option<ReplicaSpecs<'a>>,
    /// JobSet: `spec.replicatedJobs[].template.spec.template`.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub replicated_jobs: Option<Vec<ReplicatedJob<'a>>>,
    /// TrainJob: the pod template patches of
    /// `spec.runtimePatches[].trainingRuntimeSpec.template.spec.replicatedJobs[]`.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub runtime_patches: Option<Vec<RuntimePatch<'a>>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct ReplicaSpec<'a> {
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub template: Option<PodTemplate<'a>>,
}

/// A JobSet's replicated job, or a TrainJob's patch of one: a Job template, named.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct ReplicatedJob<'a> {
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub name: Option<Str<'a>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub template: Option<JobTemplate<'a>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct JobTemplate<'a> {
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub spec: Option<JobTemplateSpec<'a>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct JobTemplateSpec<'a> {
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub template: Option<PodTemplate<'a>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimePatch<'a> {
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub manager: Option<Str<'a>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub training_runtime_spec: Option<RuntimeSpecPatch<'a>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct RuntimeSpecPatch<'a> {
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub template: Option<JobSetTemplatePatch<'a>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct JobSetTemplatePatch<'a> {
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub spec: Option<JobSetSpecPatch<'a>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSetSpecPatch<'a> {
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub replicated_jobs: Option<Vec<ReplicatedJob<'a>>>,
}

impl<'a> Workload<'a> {
    /// Every pod template, with a key naming its place (stable across versions of the object).
    pub fn templates_mut(&mut self) -> Vec<(String, &mut PodTemplate<'a>)> {
        let mut found = Vec::new();
        let Some(spec) = &mut self.spec else {
            return found;
        };
        if let Some(template) = &mut spec.template {
            found.push(("template".to_string(), template));
        }
        for specs in [
            &mut spec.pytorch_replica_specs,
            &mut spec.tf_replica_specs,
            &mut spec.mpi_replica_specs,
            &mut spec.xgb_replica_specs,
            &mut spec.paddle_replica_specs,
            &mut spec.jax_replica_specs,
        ]
        .into_iter()
        .flatten()
        {
            for (role, replica) in specs.iter_mut() {
                if let Some(template) = replica.as_mut().and_then(|r| r.template.as_mut()) {
                    found.push((format!("replica {}", &**role), template));
                }
            }
        }
        fn job_templates<'r, 'a>(
            jobs: &'r mut [ReplicatedJob<'a>],
            prefix: &str,
            found: &mut Vec<(String, &'r mut PodTemplate<'a>)>,
        ) {
            for (index, job) in jobs.iter_mut().enumerate() {
                let name = job
                    .name
                    .as_deref()
                    .map_or_else(|| format!("#{index}"), str::to_string);
                if let Some(template) = job
                    .template
                    .as_mut()
                    .and_then(|t| t.spec.as_mut())
                    .and_then(|s| s.template.as_mut())
                {
                    found.push((format!("{prefix}replicated job {name}"), template));
                }
            }
        }
        if let Some(jobs) = &mut spec.replicated_jobs {
            job_templates(jobs, "", &mut found);
        }
        for (index, patch) in spec.runtime_patches.iter_mut().flatten().enumerate() {
            let manager = patch
                .manager
                .as_deref()
                .map_or_else(|| format!("#{index}"), str::to_string);
            if let Some(jobs) = patch
                .training_runtime_spec
                .as_mut()
                .and_then(|s| s.template.as_mut())
                .and_then(|t| t.spec.as_mut())
                .and_then(|s| s.replicated_jobs.as_mut())
            {
                job_templates(jobs, &format!("runtime patch {manager} "), &mut found);
            }
        }
        found
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct PodTemplate<'a> {
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta<'a>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub spec: Option<TemplateSpec<'a>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSpec<'a> {
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<Str<'a>>,
    /// Deprecated alias of `serviceAccountName`; kept in step when a manifest still sets it.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<Str<'a>>,
}

/// An object of which only the metadata matters: a Katib Trial (kubeflow.org v1beta1 or
/// v1alpha3), or a pod whose labels an UPDATE may change.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct MetaOnly<'a> {
    #[serde(default, borrow)]
    pub metadata: ObjectMeta<'a>,
}

pub type Trial<'a> = MetaOnly<'a>;

/// A Kubeflow Profile (kubeflow.org/v1, cluster-scoped; its name is the namespace's name).
#[derive(kube::CustomResource, Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[kube(
    group = "kubeflow.org",
    version = "v1",
    kind = "Profile",
    schema = "disabled"
)]
pub struct ProfileSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<ProfileOwner>,
}

/// The profile's owner (an RBAC subject); its name is the user id KFP knows.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct ProfileOwner {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Strings are borrowed from the body, also inside `Option`, `Vec` and maps; an escaped one
    /// is unescaped into an owned string.
    #[test]
    fn strings_borrow_from_the_body_unless_escaped() {
        let text = r#"{"metadata": {"name": "p", "labels": {"a": "x\ny"}},
                       "spec": {"containers": [{"name": "c", "args": ["--lr"]}]}}"#;
        let pod: Pod = serde_json::from_str(text).unwrap();
        let spec = pod.spec.as_ref().unwrap();
        for borrowed in [
            pod.metadata.name.as_ref().unwrap(),
            pod.metadata.labels.as_ref().unwrap().keys().next().unwrap(),
            &spec.containers[0].args.as_ref().unwrap()[0],
        ] {
            assert!(matches!(borrowed.0, Cow::Borrowed(_)), "{borrowed:?}");
        }
        assert_eq!(pod.metadata.label("a"), Some("x\ny"));
    }

    #[test]
    fn patch_of_a_view_applies_to_the_full_object() {
        let full = json!({
            "metadata": {"name": "p", "labels": {"a": "1"}, "managedFields": [{"manager": "x"}]},
            "spec": {
                "containers": [{"name": "c", "image": "i", "env": [{"name": "E", "value": "v"}]}],
                "volumes": [{"name": "v", "emptyDir": {}}]
            }
        });
        let before = Pod::deserialize(&full).unwrap();
        let mut after = before.clone();
        after.metadata.set_label("b", "2");
        let spec = after.spec.as_mut().unwrap();
        spec.volumes.as_mut().unwrap().push(Named::new(
            "t",
            json!({"emptyDir": {}}).as_object().unwrap().clone(),
        ));
        spec.containers[0].env.as_mut().unwrap().push(Named::new(
            "F",
            json!({"value": "w"}).as_object().unwrap().clone(),
        ));
        let patch = json_patch::diff(
            &serde_json::to_value(&before).unwrap(),
            &serde_json::to_value(&after).unwrap(),
        );
        let mut patched = full.clone();
        json_patch::patch(&mut patched, &patch).unwrap();
        assert_eq!(
            patched,
            json!({
                "metadata": {"name": "p", "labels": {"a": "1", "b": "2"}, "managedFields": [{"manager": "x"}]},
                "spec": {
                    "containers": [{"name": "c", "image": "i", "env": [{"name": "E", "value": "v"}, {"name": "F", "value": "w"}]}],
                    "volumes": [{"name": "v", "emptyDir": {}}, {"name": "t", "emptyDir": {}}]
                }
            })
        );
    }
}
