//! AdmissionReview in, AdmissionReview out: parsing, dispatch on the request's kind, the patch
//! (a diff of the typed views) and the response. No I/O besides one log line per decision.
//!
//! A request we cannot parse or do not handle is answered `allowed: true` without a patch and
//! the reason is logged: a workload is never blocked or mangled because of us. Only a body that
//! is not an AdmissionReview at all is an error (the server answers it with HTTP 400).

use std::borrow::Cow;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{
    config::Config,
    model::{Job, ObjectMeta, Pod, Trial},
    policy::{self, Decision, TRIAL_GROUP},
};

#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error("body is not an AdmissionReview: {0}")]
    NotAReview(#[source] serde_json::Error),
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("cannot parse {kind}: {source}")]
    Object {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot serialize the result: {0}")]
    Serialize(#[source] serde_json::Error),
}

pub type Result<T, E = AdmissionError> = std::result::Result<T, E>;

/// The kinds we mutate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Pod,
    Job,
    Trial,
}

impl Target {
    /// The target for a group/version/kind, if we handle it.
    pub fn of(group: &str, version: &str, kind: &str) -> Option<Self> {
        match (group, version, kind) {
            ("", "v1", "Pod") => Some(Target::Pod),
            ("batch", "v1", "Job") => Some(Target::Job),
            (TRIAL_GROUP, "v1beta1" | "v1alpha3", "Trial") => Some(Target::Trial),
            _ => None,
        }
    }

    /// The target for an object's `apiVersion` and `kind`.
    pub fn of_api_version(api_version: &str, kind: &str) -> Option<Self> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        Self::of(group, version, kind)
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Pod => "Pod",
            Target::Job => "Job",
            Target::Trial => "Trial",
        }
    }
}

/// What the rules did to one object: the patch (empty when nothing applied) and why.
#[derive(Clone, Debug)]
pub struct Mutation {
    pub patch: json_patch::Patch,
    pub name: String,
    pub applied: Vec<&'static str>,
    pub skipped: Vec<Cow<'static, str>>,
}

/// Runs the rules for `target` over the object's JSON text.
pub fn mutate(target: Target, object: &str, namespace: Option<&str>, config: &Config) -> Result<Mutation> {
    match target {
        Target::Pod => run(target, object, namespace, config, |o: &Pod| &o.metadata, policy::mutate_pod),
        Target::Job => run(target, object, namespace, config, |o: &Job| &o.metadata, policy::mutate_job),
        Target::Trial => {
            run(target, object, namespace, config, |o: &Trial| &o.metadata, policy::mutate_trial)
        }
    }
}

fn run<T>(
    target: Target,
    object: &str,
    namespace: Option<&str>,
    config: &Config,
    meta: impl Fn(&T) -> &ObjectMeta,
    rule: impl Fn(&T, &str, &Config) -> Decision<T>,
) -> Result<Mutation>
where
    T: for<'de> Deserialize<'de> + Serialize,
{
    let parsed: T = serde_json::from_str(object)
        .map_err(|source| AdmissionError::Object { kind: target.name(), source })?;
    // The request names the namespace; a pod from a generateName may not carry it yet.
    let namespace = namespace.or(meta(&parsed).namespace.as_deref()).unwrap_or("default");
    let Decision { object: changed, applied, skipped } = rule(&parsed, namespace, config);
    let patch = if applied.is_empty() {
        json_patch::Patch(Vec::new())
    } else {
        let before = serde_json::to_value(&parsed).map_err(AdmissionError::Serialize)?;
        let after = serde_json::to_value(&changed).map_err(AdmissionError::Serialize)?;
        json_patch::diff(&before, &after)
    };
    Ok(Mutation { patch, name: meta(&parsed).display_name().to_string(), applied, skipped })
}

#[derive(Deserialize)]
struct Review<'a> {
    #[serde(rename = "apiVersion", default)]
    api_version: Option<&'a str>,
    #[serde(borrow)]
    request: Option<Request<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    uid: Cow<'a, str>,
    kind: Kind<'a>,
    #[serde(default, borrow)]
    namespace: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    operation: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    object: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Kind<'a> {
    #[serde(default, borrow)]
    group: Cow<'a, str>,
    #[serde(default, borrow)]
    version: Cow<'a, str>,
    #[serde(default, borrow)]
    kind: Cow<'a, str>,
}

#[derive(Serialize)]
struct ReviewOut<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    kind: &'static str,
    response: Response<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
}

const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";

/// Answers one AdmissionReview body with the response body. Errors only when the body is not
/// an AdmissionReview with a request.
pub fn review(body: &[u8], config: &Config) -> Result<Vec<u8>> {
    let review: Review = serde_json::from_slice(body).map_err(AdmissionError::NotAReview)?;
    let request = review.request.ok_or(AdmissionError::NoRequest)?;
    let patch = decide(&request, config);
    let out = ReviewOut {
        // Answer in the version we were asked in.
        api_version: review.api_version.unwrap_or(REVIEW_API_VERSION),
        kind: "AdmissionReview",
        response: Response {
            uid: &request.uid,
            allowed: true,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch: patch.map(|p| base64::engine::general_purpose::STANDARD.encode(p)),
        },
    };
    serde_json::to_vec(&out).map_err(AdmissionError::Serialize)
}

/// The JSON Patch to send, if any; logs the decision.
fn decide(request: &Request, config: &Config) -> Option<Vec<u8>> {
    let Request { kind, namespace, operation, object, .. } = request;
    let namespace = namespace.as_deref();
    let ns = namespace.unwrap_or("");
    let Some(target) = Target::of(&kind.group, &kind.version, &kind.kind) else {
        tracing::info!(kind = %kind.kind, namespace = ns, patched = false, reason = "kind not handled", "admission");
        return None;
    };
    if operation.as_deref() != Some("CREATE") {
        let reason = format!("operation {} not handled", operation.as_deref().unwrap_or("(none)"));
        tracing::info!(kind = target.name(), namespace = ns, patched = false, reason, "admission");
        return None;
    }
    let Some(object) = object else {
        tracing::warn!(kind = target.name(), namespace = ns, patched = false, reason = "request has no object", "admission");
        return None;
    };
    match mutate(target, object.get(), namespace, config) {
        Err(error) => {
            tracing::warn!(kind = target.name(), namespace = ns, patched = false, reason = %error, "admission");
            None
        }
        Ok(m) if m.patch.0.is_empty() => {
            let reason = m.skipped.join("; ");
            tracing::info!(kind = target.name(), namespace = ns, name = m.name, patched = false, reason, "admission");
            None
        }
        Ok(m) => match serde_json::to_vec(&m.patch) {
            Ok(bytes) => {
                let rules = m.applied.join(",");
                let skipped = m.skipped.join("; ");
                tracing::info!(kind = target.name(), namespace = ns, name = m.name, patched = true, rules, skipped, "admission");
                Some(bytes)
            }
            Err(error) => {
                tracing::warn!(kind = target.name(), namespace = ns, name = m.name, patched = false, reason = %error, "admission");
                None
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn review_of(kind: Value, namespace: &str, operation: &str, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": kind,
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": namespace,
                "operation": operation,
                "object": object,
            }
        }))
        .unwrap()
    }

    fn pod_kind() -> Value {
        json!({"group": "", "version": "v1", "kind": "Pod"})
    }

    fn notebook() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "nb-", "labels": {"notebook-name": "nb"},
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"serviceAccountName": "default-editor", "containers": [{"name": "nb", "image": "jupyter", "env": [{"name": "A", "value": "1"}]}]}
        })
    }

    fn respond(body: &[u8]) -> Value {
        serde_json::from_slice(&review(body, &Config::default()).unwrap()).unwrap()
    }

    fn patched(response: &Value, mut object: Value) -> Value {
        assert_eq!(response["response"]["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(response["response"]["patch"].as_str().unwrap())
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut object, &patch).unwrap();
        object
    }

    fn assert_allowed_without_patch(response: &Value) {
        assert_eq!(response["response"]["allowed"], true);
        assert_eq!(response["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert!(response["response"].get("patch").is_none(), "{response}");
        assert!(response["response"].get("patchType").is_none(), "{response}");
    }

    #[test]
    fn notebook_pod_review_gets_a_patch_that_applies() {
        let response = respond(&review_of(pod_kind(), "alice", "CREATE", notebook()));
        assert_eq!(response["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(response["kind"], "AdmissionReview");
        assert_eq!(response["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(response["response"]["allowed"], true);
        let after = patched(&response, notebook());
        let mut expected = notebook();
        expected["metadata"]["labels"]["kubeflow-extension"] = json!("true");
        // Token mode (offline default): the projected token reaches the notebook container.
        let container = &after["spec"]["containers"][0];
        assert_eq!(container["env"][0], json!({"name": "A", "value": "1"}));
        assert_eq!(container["env"][1]["name"], "KF_PIPELINES_SA_TOKEN_PATH");
        assert_eq!(after["spec"]["volumes"][0]["name"], "volume-kf-pipeline-token");
        assert_eq!(after["metadata"], expected["metadata"]);
        assert_eq!(container["image"], "jupyter");
    }

    #[test]
    fn unknown_kind_other_operations_and_excluded_namespaces_pass_untouched() {
        let config_map = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
        for body in [
            review_of(config_map, "alice", "CREATE", json!({"metadata": {"name": "x"}})),
            review_of(pod_kind(), "alice", "UPDATE", notebook()),
            review_of(pod_kind(), "kube-system", "CREATE", notebook()),
        ] {
            assert_allowed_without_patch(&respond(&body));
        }
    }

    #[test]
    fn object_that_is_not_a_pod_is_allowed_without_patch() {
        let broken = json!({"metadata": {"labels": {"notebook-name": "nb"}}, "spec": {"containers": "nope"}});
        assert_allowed_without_patch(&respond(&review_of(pod_kind(), "alice", "CREATE", broken)));
        assert_allowed_without_patch(&respond(&review_of(pod_kind(), "alice", "CREATE", json!(null))));
    }

    #[test]
    fn trial_versions_are_both_handled() {
        for version in ["v1beta1", "v1alpha3"] {
            let kind = json!({"group": "kubeflow.org", "version": version, "kind": "Trial"});
            let trial = json!({"apiVersion": format!("kubeflow.org/{version}"), "kind": "Trial", "metadata": {"name": "t"}, "spec": {}});
            let after = patched(&respond(&review_of(kind, "alice", "CREATE", trial)), json!({"metadata": {"name": "t"}, "spec": {}}));
            assert_eq!(after["metadata"]["labels"], json!({"kubeflow-extension": "true"}));
        }
    }

    #[test]
    fn body_that_is_not_a_review_is_an_error() {
        let config = Config::default();
        assert!(matches!(review(b"{not json", &config), Err(AdmissionError::NotAReview(_))));
        assert!(matches!(review(b"{\"foo\": 1}", &config), Err(AdmissionError::NoRequest)));
        assert!(matches!(review(b"[1,2]", &config), Err(AdmissionError::NotAReview(_))));
    }

    #[test]
    fn targets_by_api_version() {
        assert_eq!(Target::of_api_version("v1", "Pod"), Some(Target::Pod));
        assert_eq!(Target::of_api_version("batch/v1", "Job"), Some(Target::Job));
        assert_eq!(Target::of_api_version("kubeflow.org/v1alpha3", "Trial"), Some(Target::Trial));
        assert_eq!(Target::of_api_version("batch/v1", "CronJob"), None);
        assert_eq!(Target::of_api_version("kubeflow.org/v1", "Trial"), None);
    }
}
