//! AdmissionReview in, AdmissionReview out: parsing, dispatch on the request's kind, the patch
//! (a diff of the typed views) and the response. No I/O besides one log line per decision.
//!
//! A request we cannot parse or do not handle is answered `allowed: true` without a patch and
//! the reason is logged: a workload is never blocked or mangled because of us. Only a body that
//! is not an AdmissionReview at all is an error (the server answers it with HTTP 400).

mod json;

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
    T: for<'de> Deserialize<'de> + Serialize + Changes,
{
    let parsed: T = serde_json::from_str(object)
        .map_err(|source| AdmissionError::Object { kind: target.name(), source })?;
    // The request names the namespace; a pod from a generateName may not carry it yet.
    let namespace = namespace.or(meta(&parsed).namespace.as_deref()).unwrap_or("default");
    let Decision { object: changed, applied, skipped } = rule(&parsed, namespace, config);
    let patch = if applied.is_empty() {
        json_patch::Patch(Vec::new())
    } else {
        let mut ops = Vec::new();
        match T::changes(&parsed, &changed, &mut ops) {
            Ok(()) => json_patch::Patch(ops),
            // Not reached (serde_json writes JSON); the slow diff decides if it ever is.
            Err(Fallback) => {
                let before = serde_json::to_value(&parsed).map_err(AdmissionError::Serialize)?;
                let after = serde_json::to_value(&changed).map_err(AdmissionError::Serialize)?;
                json_patch::diff(&before, &after)
            }
        }
    };
    Ok(Mutation { patch, name: meta(&parsed).display_name().to_string(), applied, skipped })
}

/// The fast diff could not decide: use `json_patch::diff` on whole `Value`s.
struct Fallback;

/// A JSON Patch from a view to its changed copy, computed only over the parts that differ
/// (compared typed first, then as serialized text by [`json::diff_into`]): a notebook's 40
/// unchanged env vars are not serialized nor looked at.
trait Changes: Serialize + PartialEq + Sized {
    fn changes(before: &Self, after: &Self, ops: &mut Vec<json_patch::PatchOperation>) -> Result<(), Fallback> {
        section("", before, after, ops)
    }
}

/// Appends the diff of one part of a view, at JSON pointer `path`.
fn section<T: Serialize + PartialEq>(path: &str, before: &T, after: &T, ops: &mut Vec<json_patch::PatchOperation>) -> Result<(), Fallback> {
    if before == after {
        return Ok(());
    }
    let before = serde_json::to_vec(before).map_err(|_| Fallback)?;
    let after = serde_json::to_vec(after).map_err(|_| Fallback)?;
    json::diff_into(path, &before, &after, ops).ok_or(Fallback)
}

/// An optional member of an object at `path`: added, removed or diffed.
fn optional<T: Serialize + PartialEq>(path: &str, before: &Option<T>, after: &Option<T>, ops: &mut Vec<json_patch::PatchOperation>) -> Result<(), Fallback> {
    use json_patch::{AddOperation, PatchOperation, RemoveOperation, jsonptr::PointerBuf};
    let pointer = || PointerBuf::parse(path.to_string()).map_err(|_| Fallback);
    match (before, after) {
        (Some(b), Some(a)) => section(path, b, a, ops),
        (None, None) => Ok(()),
        (None, Some(a)) => {
            let value = serde_json::to_value(a).map_err(|_| Fallback)?;
            ops.push(PatchOperation::Add(AddOperation { path: pointer()?, value }));
            Ok(())
        }
        (Some(_), None) => {
            ops.push(PatchOperation::Remove(RemoveOperation { path: pointer()? }));
            Ok(())
        }
    }
}

/// A list member at `path`: elements appended at the end become `add` operations of those
/// elements only (how the rules change lists); any other change is diffed as text.
fn list<T: Serialize + PartialEq>(path: &str, before: &[T], after: &[T], ops: &mut Vec<json_patch::PatchOperation>) -> Result<(), Fallback> {
    use json_patch::{AddOperation, PatchOperation, jsonptr::PointerBuf};
    if before == after {
        return Ok(());
    }
    if after.len() > before.len() && after[..before.len()] == *before {
        for (i, item) in after.iter().enumerate().skip(before.len()) {
            let path = PointerBuf::parse(format!("{path}/{i}")).map_err(|_| Fallback)?;
            let value = serde_json::to_value(item).map_err(|_| Fallback)?;
            ops.push(PatchOperation::Add(AddOperation { path, value }));
        }
        return Ok(());
    }
    section(path, &before, &after, ops)
}

/// An optional list member: [`list`] when present on both sides, else [`optional`].
fn optional_list<T: Serialize + PartialEq>(
    path: &str,
    before: &Option<Vec<T>>,
    after: &Option<Vec<T>>,
    ops: &mut Vec<json_patch::PatchOperation>,
) -> Result<(), Fallback> {
    match (before, after) {
        (Some(b), Some(a)) => list(path, b, a, ops),
        _ => optional(path, before, after, ops),
    }
}

/// One container, member by member. The destructuring lists every member of the view: one
/// added to it later does not compile until it is handled here.
fn container(path: &str, b: &crate::model::Container, a: &crate::model::Container, ops: &mut Vec<json_patch::PatchOperation>) -> Result<(), Fallback> {
    let crate::model::Container { name, command: _, args: _, env: _, volume_mounts: _, termination_message_path: _ } = b;
    if b == a {
        return Ok(());
    }
    if *name != a.name {
        return section(path, b, a, ops);
    }
    optional_list(&format!("{path}/command"), &b.command, &a.command, ops)?;
    optional_list(&format!("{path}/args"), &b.args, &a.args, ops)?;
    optional_list(&format!("{path}/env"), &b.env, &a.env, ops)?;
    optional_list(&format!("{path}/volumeMounts"), &b.volume_mounts, &a.volume_mounts, ops)?;
    optional(&format!("{path}/terminationMessagePath"), &b.termination_message_path, &a.termination_message_path, ops)
}

impl Changes for Pod {
    fn changes(before: &Self, after: &Self, ops: &mut Vec<json_patch::PatchOperation>) -> Result<(), Fallback> {
        // Every member of the views is handled: one added later does not compile until it is.
        let Pod { metadata: _, spec: _ } = before;
        section("/metadata", &before.metadata, &after.metadata, ops)?;
        match (&before.spec, &after.spec) {
            (Some(b), Some(a)) if b != a => {
                let crate::model::PodSpec { containers: _, init_containers: _, volumes: _, service_account_name: _ } = b;
                if b.containers.len() == a.containers.len() {
                    for (i, (bc, ac)) in b.containers.iter().zip(&a.containers).enumerate() {
                        container(&format!("/spec/containers/{i}"), bc, ac, ops)?;
                    }
                } else {
                    section("/spec/containers", &b.containers, &a.containers, ops)?;
                }
                optional("/spec/initContainers", &b.init_containers, &a.init_containers, ops)?;
                optional_list("/spec/volumes", &b.volumes, &a.volumes, ops)?;
                optional("/spec/serviceAccountName", &b.service_account_name, &a.service_account_name, ops)
            }
            (b, a) => optional("/spec", b, a, ops),
        }
    }
}

impl Changes for Job {}

impl Changes for Trial {}

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
    // Parse only what is read (see `json::prune_review`); anything unusual parses it all.
    let pruned = json::prune_review(body);
    let review: Review =
        serde_json::from_slice(pruned.as_deref().unwrap_or(body)).map_err(AdmissionError::NotAReview)?;
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

    /// The fast path (pruned parse, sectioned text diff) patches every fixture exactly as the
    /// whole-body parse and `json_patch::diff` of whole views do, in both access modes.
    #[test]
    fn fast_path_agrees_with_the_whole_body_path() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut checked = 0;
        for dir in ["tests/data", "bench/data"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else { continue };
            for entry in entries {
                let path = entry.unwrap().path();
                if path.extension().is_none_or(|e| e != "json") {
                    continue;
                }
                let body = std::fs::read(&path).unwrap();
                let Ok(full) = serde_json::from_slice::<Value>(&body) else { continue };
                if full["kind"] != "AdmissionReview" {
                    continue;
                }
                for mode in ["kfpAccess: token", "kfpAccess: header"] {
                    let config = crate::config::Settings::from_yaml(mode, "t")
                        .unwrap()
                        .resolve(&crate::config::Capabilities::modern());
                    let request = &full["request"];
                    let object = request["object"].clone();
                    let response: Value = serde_json::from_slice(&review(&body, &config).unwrap()).unwrap();
                    let fast = match response["response"].get("patch") {
                        Some(_) => patched(&response, object.clone()),
                        None => object.clone(),
                    };
                    // The whole-body path: parse the object whole, diff whole views as Values.
                    let kind = &request["kind"];
                    let target = Target::of(
                        kind["group"].as_str().unwrap_or(""),
                        kind["version"].as_str().unwrap_or(""),
                        kind["kind"].as_str().unwrap_or(""),
                    );
                    let slow = match target {
                        Some(target) if request["operation"] == "CREATE" => {
                            let namespace = request["namespace"].as_str();
                            let text = object.to_string();
                            let slow_patch = match target {
                                Target::Pod => slow_diff::<Pod>(&text, namespace, &config, policy::mutate_pod),
                                Target::Job => slow_diff::<Job>(&text, namespace, &config, policy::mutate_job),
                                Target::Trial => slow_diff::<Trial>(&text, namespace, &config, policy::mutate_trial),
                            };
                            let mut slow = object.clone();
                            json_patch::patch(&mut slow, &slow_patch).unwrap();
                            slow
                        }
                        _ => object.clone(),
                    };
                    assert_eq!(fast, slow, "{} ({mode})", path.display());
                    checked += 1;
                }
            }
        }
        assert!(checked >= 10, "only {checked} fixtures checked");
    }

    fn slow_diff<T: for<'de> Deserialize<'de> + Serialize>(
        text: &str,
        namespace: Option<&str>,
        config: &Config,
        rule: impl Fn(&T, &str, &Config) -> Decision<T>,
    ) -> json_patch::Patch {
        let parsed: T = serde_json::from_str(text).unwrap();
        let decision = rule(&parsed, namespace.unwrap_or("default"), config);
        json_patch::diff(&serde_json::to_value(&parsed).unwrap(), &serde_json::to_value(&decision.object).unwrap())
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
