//! Partial typed views of the objects the admission rules read and write.
//!
//! A view holds only the fields a rule looks at; serde skips the rest of the request without
//! building it (managedFields, env values, volume sources...). Because every list keeps its
//! elements in order and every element keeps its key fields, `json_patch::diff(view, changed
//! view)` yields paths that are valid on the full object: the patch touches exactly what a rule
//! changed and nothing the view does not hold.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Labels>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_references: Option<Vec<OwnerReference>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
}

impl ObjectMeta {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.as_ref()?.get(key).map(String::as_str)
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }

    pub fn set_label(&mut self, key: &str, value: &str) {
        self.labels
            .get_or_insert_default()
            .insert(key.into(), value.into());
    }

    pub fn remove_label(&mut self, key: &str) {
        if let Some(labels) = &mut self.labels {
            labels.remove(key);
        }
    }

    pub fn set_annotation(&mut self, key: &str, value: &str) {
        self.annotations
            .get_or_insert_default()
            .insert(key.into(), value.into());
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
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<PodSpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_containers: Option<Vec<InitContainer>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<Named>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<Named>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<Vec<VolumeMount>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_message_path: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InitContainer {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<String>,
}

/// A list element identified by `name` (env var, volume). An element read from the object is
/// known by its name only (`body` is `None`); an element a rule adds carries its whole body.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Named {
    pub name: String,
    #[serde(skip)]
    pub body: Option<Map<String, Value>>,
}

impl Named {
    /// An element to add, `name` plus the members of `body`.
    pub fn new(name: impl Into<String>, body: Map<String, Value>) -> Self {
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
impl Serialize for Named {
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
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

/// A batch/v1 Job, as far as the job rule cares.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Job {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<JobSpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct JobSpec {
    #[serde(default)]
    pub template: PodTemplate,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct PodTemplate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<TemplateSpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Deprecated alias of `serviceAccountName`; kept in step when a manifest still sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

/// A Katib Trial (kubeflow.org v1beta1 or v1alpha3): only its metadata matters.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Trial {
    #[serde(default)]
    pub metadata: ObjectMeta,
}

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

    #[test]
    fn patch_of_a_view_applies_to_the_full_object() {
        let full = json!({
            "metadata": {"name": "p", "labels": {"a": "1"}, "managedFields": [{"manager": "x"}]},
            "spec": {
                "containers": [{"name": "c", "image": "i", "env": [{"name": "E", "value": "v"}]}],
                "volumes": [{"name": "v", "emptyDir": {}}]
            }
        });
        let before: Pod = serde_json::from_value(full.clone()).unwrap();
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
