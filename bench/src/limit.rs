//! The hand-tuned limit's review (`limit-webhook`, `review-cpu --limit`): each review is parsed
//! once into the few borrowed fields the notebook mutation needs (serde skips everything else,
//! as tenancy-fixer's views do); a pod created with the label `notebook-name` gets a fixed
//! 6-operation JSON Patch (two labels, two env vars, the KFP token's mount and volume, at the
//! indices the parse counted), anything else an answer without a patch. No policy, no diff, no
//! log, no metrics.

use std::{borrow::Cow, collections::BTreeMap, fmt::Write};

use base64::Engine;
use serde::{Deserialize, Serialize, de::IgnoredAny};

/// The answer to an AdmissionReview body; none when it is not one.
pub fn review(body: &[u8]) -> Option<Vec<u8>> {
    let review = serde_json::from_slice::<Review>(body).ok()?;
    let request = &review.request;
    let pod_created = request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request.operation == "CREATE"
        && request.namespace != "kube-system";
    let patch = request
        .object
        .as_ref()
        .filter(|_| pod_created)
        .and_then(notebook_patch);
    let answer = Answer {
        api_version: "admission.k8s.io/v1",
        kind: "AdmissionReview",
        response: AnswerResponse {
            uid: &request.uid,
            allowed: true,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
        },
    };
    serde_json::to_vec(&answer).ok()
}

#[derive(Deserialize)]
struct Review<'a> {
    #[serde(borrow)]
    request: Request<'a>,
}

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    uid: Cow<'a, str>,
    #[serde(borrow)]
    kind: Kind<'a>,
    #[serde(default, borrow)]
    namespace: Cow<'a, str>,
    #[serde(default, borrow)]
    operation: Cow<'a, str>,
    #[serde(default, borrow)]
    object: Option<Pod<'a>>,
}

#[derive(Deserialize)]
struct Kind<'a> {
    #[serde(default, borrow)]
    group: Cow<'a, str>,
    #[serde(default, borrow)]
    kind: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Pod<'a> {
    #[serde(default, borrow)]
    metadata: Metadata<'a>,
    #[serde(default)]
    spec: Spec,
}

#[derive(Default, Deserialize)]
struct Metadata<'a> {
    #[serde(default, borrow)]
    labels: BTreeMap<Cow<'a, str>, IgnoredAny>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    containers: Vec<Container>,
    #[serde(default)]
    volumes: Vec<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    #[serde(default)]
    env: Vec<IgnoredAny>,
    #[serde(default)]
    volume_mounts: Vec<IgnoredAny>,
}

#[derive(Serialize)]
struct Answer<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    response: AnswerResponse<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AnswerResponse<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
}

/// The patch for a notebook pod (the first container gets the env vars and the mount).
fn notebook_patch(pod: &Pod) -> Option<String> {
    if !pod.metadata.labels.contains_key("notebook-name") {
        return None;
    }
    let container = pod.spec.containers.first()?;
    let (env, mounts, volumes) = (
        container.env.len(),
        container.volume_mounts.len(),
        pod.spec.volumes.len(),
    );
    let mut patch = String::with_capacity(640);
    let _ = write!(
        patch,
        concat!(
            r#"[{{"op":"add","path":"/metadata/labels/kubeflow-extension","value":"true"}},"#,
            r#"{{"op":"add","path":"/metadata/labels/sidecar.istio.io~1inject","value":"true"}},"#,
            r#"{{"op":"add","path":"/spec/containers/0/env/{env}","value":{{"name":"KF_PIPELINES_SA_TOKEN_PATH","value":"/var/run/secrets/kubeflow/pipelines/token"}}}},"#,
            r#"{{"op":"add","path":"/spec/containers/0/env/{env1}","value":{{"name":"KF_PIPELINES_ENDPOINT","value":"http://ml-pipeline.kubeflow:8888"}}}},"#,
            r#"{{"op":"add","path":"/spec/containers/0/volumeMounts/{mounts}","value":{{"mountPath":"/var/run/secrets/kubeflow/pipelines","name":"volume-kf-pipeline-token","readOnly":true}}}},"#,
            r#"{{"op":"add","path":"/spec/volumes/{volumes}","value":{{"name":"volume-kf-pipeline-token","projected":{{"sources":[{{"serviceAccountToken":{{"audience":"pipelines.kubeflow.org","expirationSeconds":7200,"path":"token"}}}}]}}}}}}]"#,
        ),
        env = env,
        env1 = env + 1,
        mounts = mounts,
        volumes = volumes,
    );
    Some(base64::engine::general_purpose::STANDARD.encode(patch))
}
