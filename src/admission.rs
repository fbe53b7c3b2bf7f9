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
    model::{Job, ObjectMeta, Pod, Str, Trial},
    patch::{self, Prune},
    policy::{self, Decision, TRIAL_GROUP},
};

#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error("body is not an AdmissionReview: {0}")]
    NotAReview(#[source] serde_json::Error),
    #[error("body is not UTF-8 text: {0}")]
    NotUtf8(#[source] std::str::Utf8Error),
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
pub fn mutate(
    target: Target,
    object: &str,
    namespace: Option<&str>,
    config: &Config,
) -> Result<Mutation> {
    Parsed::from_text(target, object)?.mutate(namespace, config)
}

/// The rules on a parsed view, and the patch (the diff of the views) when one applied.
fn apply<'a, T: Serialize + Prune>(
    parsed: T,
    namespace: Option<&str>,
    config: &Config,
    meta: impl Fn(&T) -> &ObjectMeta<'a>,
    rule: impl Fn(&T, &str, &Config) -> Decision<T>,
) -> Result<Mutation> {
    // The request names the namespace; a pod from a generateName may not carry it yet.
    let namespace = namespace
        .or(meta(&parsed).namespace.as_deref())
        .unwrap_or("default");
    let Decision {
        object: changed,
        applied,
        skipped,
    } = rule(&parsed, namespace, config);
    let name = meta(&parsed).display_name().to_string();
    let patch = if applied.is_empty() {
        json_patch::Patch(Vec::new())
    } else {
        patch::diff(parsed, changed).map_err(AdmissionError::Serialize)?
    };
    Ok(Mutation {
        patch,
        name,
        applied,
        skipped,
    })
}

/// A view parsed in the same pass as the review (see [`Request`]).
enum Parsed<'a> {
    Pod(Pod<'a>),
    Job(Job<'a>),
    Trial(Trial<'a>),
}

impl<'a> Parsed<'a> {
    /// The object's JSON text parsed into the view of `target`.
    fn from_text(target: Target, object: &'a str) -> Result<Self> {
        let parsed = match target {
            Target::Pod => serde_json::from_str(object).map(Parsed::Pod),
            Target::Job => serde_json::from_str(object).map(Parsed::Job),
            Target::Trial => serde_json::from_str(object).map(Parsed::Trial),
        };
        parsed.map_err(|source| AdmissionError::Object {
            kind: target.name(),
            source,
        })
    }

    fn target(&self) -> Target {
        match self {
            Parsed::Pod(_) => Target::Pod,
            Parsed::Job(_) => Target::Job,
            Parsed::Trial(_) => Target::Trial,
        }
    }

    fn mutate(self, namespace: Option<&str>, config: &Config) -> Result<Mutation> {
        match self {
            Parsed::Pod(o) => apply(
                o,
                namespace,
                config,
                |o: &Pod| &o.metadata,
                policy::mutate_pod,
            ),
            Parsed::Job(o) => apply(
                o,
                namespace,
                config,
                |o: &Job| &o.metadata,
                policy::mutate_job,
            ),
            Parsed::Trial(o) => apply(
                o,
                namespace,
                config,
                |o: &Trial| &o.metadata,
                policy::mutate_trial,
            ),
        }
    }
}

/// The request's object, as far as the single pass over the review got with it.
enum Object<'a> {
    /// Parsed straight into its view: the kind came first (as the API server sends it).
    Parsed(Box<Parsed<'a>>),
    /// Came before the kind: kept as text and parsed once the kind is known.
    Raw(&'a RawValue),
    /// Not read: a kind we do not handle, or not a CREATE.
    Skipped,
}

#[derive(Deserialize)]
struct Review<'a> {
    #[serde(rename = "apiVersion", default)]
    api_version: Option<&'a str>,
    #[serde(borrow)]
    request: Option<Request<'a>>,
}

/// The request, parsed in one pass with its object: when the `object` member comes, the kind
/// (and usually the operation) are known already, so the object is deserialized straight into
/// its typed view, or skipped when it will not be read. Any error (an object that is not the
/// view, duplicate members...) makes [`review`] parse the body again the general way, which
/// answers it exactly as before.
struct Request<'a> {
    uid: Str<'a>,
    kind: Kind<'a>,
    namespace: Option<Str<'a>>,
    operation: Option<Str<'a>>,
    object: Option<Object<'a>>,
}

/// The request's members [`RequestVisitor`] reads, matched without building the key.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum Field {
    Uid,
    Kind,
    Namespace,
    Operation,
    Object,
    #[serde(other)]
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Request<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_map(RequestVisitor)
    }
}

struct RequestVisitor;

impl<'de> serde::de::Visitor<'de> for RequestVisitor {
    type Value = Request<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an admission request")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Request<'de>, A::Error> {
        use serde::de::{Error, IgnoredAny};
        fn once<T, E: Error>(
            slot: &mut Option<T>,
            value: T,
            name: &'static str,
        ) -> std::result::Result<(), E> {
            match slot.replace(value) {
                Some(_) => Err(E::duplicate_field(name)),
                None => Ok(()),
            }
        }
        let (mut uid, mut kind, mut namespace, mut operation, mut object) =
            (None, None, None, None, None);
        while let Some(key) = map.next_key::<Field>()? {
            match key {
                Field::Uid => once(&mut uid, map.next_value::<Str<'de>>()?, "uid")?,
                Field::Kind => once(&mut kind, map.next_value::<Kind<'de>>()?, "kind")?,
                Field::Namespace => once(
                    &mut namespace,
                    map.next_value::<Option<Str<'de>>>()?,
                    "namespace",
                )?,
                Field::Operation => once(
                    &mut operation,
                    map.next_value::<Option<Str<'de>>>()?,
                    "operation",
                )?,
                Field::Object => {
                    let target = kind
                        .as_ref()
                        .map(|k: &Kind| Target::of(&k.group, &k.version, &k.kind));
                    let create = operation
                        .as_ref()
                        .map(|o: &Option<Str>| o.as_deref() == Some("CREATE"));
                    let value = match (target, create) {
                        (None, _) => map.next_value::<Option<&'de RawValue>>()?.map(Object::Raw),
                        (Some(None), _) | (Some(Some(_)), Some(false)) => {
                            map.next_value::<IgnoredAny>()?;
                            Some(Object::Skipped)
                        }
                        (Some(Some(Target::Pod)), _) => map
                            .next_value::<Option<Pod>>()?
                            .map(|o| Object::Parsed(Box::new(Parsed::Pod(o)))),
                        (Some(Some(Target::Job)), _) => map
                            .next_value::<Option<Job>>()?
                            .map(|o| Object::Parsed(Box::new(Parsed::Job(o)))),
                        (Some(Some(Target::Trial)), _) => map
                            .next_value::<Option<Trial>>()?
                            .map(|o| Object::Parsed(Box::new(Parsed::Trial(o)))),
                    };
                    once(&mut object, value, "object")?;
                }
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Request {
            uid: uid.ok_or_else(|| A::Error::missing_field("uid"))?,
            kind: kind.ok_or_else(|| A::Error::missing_field("kind"))?,
            namespace: namespace.flatten(),
            operation: operation.flatten(),
            object: object.flatten(),
        })
    }
}

/// The request as the general path reads it: the object as text, parsed on its own.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TextRequest<'a> {
    #[serde(borrow)]
    uid: Str<'a>,
    kind: Kind<'a>,
    #[serde(default, borrow)]
    namespace: Option<Str<'a>>,
    #[serde(default, borrow)]
    operation: Option<Str<'a>>,
    #[serde(default, borrow)]
    object: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct TextReview<'a> {
    #[serde(rename = "apiVersion", default)]
    api_version: Option<&'a str>,
    #[serde(borrow)]
    request: Option<TextRequest<'a>>,
}

impl<'a> From<TextReview<'a>> for Review<'a> {
    fn from(r: TextReview<'a>) -> Self {
        Review {
            api_version: r.api_version,
            request: r.request.map(|q| Request {
                uid: q.uid,
                kind: q.kind,
                namespace: q.namespace,
                operation: q.operation,
                object: q.object.map(Object::Raw),
            }),
        }
    }
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
    // One pass with the object parsed into its view; on any error, the general way (object as
    // text, parsed on its own), whose errors are the answers.
    // JSON is UTF-8 (RFC 8259): checked once for the whole body, so that the parser need not
    // check every string it reads.
    let body = std::str::from_utf8(body).map_err(AdmissionError::NotUtf8)?;
    let review: Review = match serde_json::from_str(body) {
        Ok(review) => review,
        Err(_) => serde_json::from_str::<TextReview>(body)
            .map_err(AdmissionError::NotAReview)?
            .into(),
    };
    answer(review, config)
}

fn answer(review: Review, config: &Config) -> Result<Vec<u8>> {
    let mut request = review.request.ok_or(AdmissionError::NoRequest)?;
    let patch = decide(&mut request, config);
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
fn decide(request: &mut Request, config: &Config) -> Option<Vec<u8>> {
    let Request {
        kind,
        namespace,
        operation,
        object,
        ..
    } = request;
    let namespace = namespace.as_deref();
    let ns = namespace.unwrap_or("");
    let Some(target) = Target::of(&kind.group, &kind.version, &kind.kind) else {
        tracing::info!(kind = %kind.kind, namespace = ns, patched = false, reason = "kind not handled", "admission");
        return None;
    };
    if operation.as_deref() != Some("CREATE") {
        let reason = format!(
            "operation {} not handled",
            operation.as_deref().unwrap_or("(none)")
        );
        tracing::info!(
            kind = target.name(),
            namespace = ns,
            patched = false,
            reason,
            "admission"
        );
        return None;
    }
    let Some(object) = object.take() else {
        tracing::warn!(
            kind = target.name(),
            namespace = ns,
            patched = false,
            reason = "request has no object",
            "admission"
        );
        return None;
    };
    let mutation = match object {
        Object::Parsed(parsed) if parsed.target() == target => (*parsed).mutate(namespace, config),
        Object::Raw(raw) => mutate(target, raw.get(), namespace, config),
        // Not reached: the object is skipped only when it is not read, parsed as its kind.
        Object::Parsed(_) | Object::Skipped => {
            tracing::warn!(
                kind = target.name(),
                namespace = ns,
                patched = false,
                reason = "request has no object",
                "admission"
            );
            return None;
        }
    };
    match mutation {
        Err(error) => {
            tracing::warn!(kind = target.name(), namespace = ns, patched = false, reason = %error, "admission");
            None
        }
        Ok(m) if m.patch.0.is_empty() => {
            let reason = m.skipped.join("; ");
            tracing::info!(
                kind = target.name(),
                namespace = ns,
                name = m.name,
                patched = false,
                reason,
                "admission"
            );
            None
        }
        Ok(m) => match serde_json::to_vec(&m.patch) {
            Ok(bytes) => {
                let rules = m.applied.join(",");
                let skipped = m.skipped.join("; ");
                tracing::info!(
                    kind = target.name(),
                    namespace = ns,
                    name = m.name,
                    patched = true,
                    rules,
                    skipped,
                    "admission"
                );
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
        assert_eq!(
            response["response"]["uid"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
        assert!(response["response"].get("patch").is_none(), "{response}");
        assert!(
            response["response"].get("patchType").is_none(),
            "{response}"
        );
    }

    #[test]
    fn notebook_pod_review_gets_a_patch_that_applies() {
        let response = respond(&review_of(pod_kind(), "alice", "CREATE", notebook()));
        assert_eq!(response["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(response["kind"], "AdmissionReview");
        assert_eq!(
            response["response"]["uid"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
        assert_eq!(response["response"]["allowed"], true);
        let after = patched(&response, notebook());
        let mut expected = notebook();
        expected["metadata"]["labels"]["kubeflow-extension"] = json!("true");
        // Token mode (offline default): the projected token reaches the notebook container.
        let container = &after["spec"]["containers"][0];
        assert_eq!(container["env"][0], json!({"name": "A", "value": "1"}));
        assert_eq!(container["env"][1]["name"], "KF_PIPELINES_SA_TOKEN_PATH");
        assert_eq!(
            after["spec"]["volumes"][0]["name"],
            "volume-kf-pipeline-token"
        );
        assert_eq!(after["metadata"], expected["metadata"]);
        assert_eq!(container["image"], "jupyter");
    }

    #[test]
    fn unknown_kind_other_operations_and_excluded_namespaces_pass_untouched() {
        let config_map = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
        for body in [
            review_of(
                config_map,
                "alice",
                "CREATE",
                json!({"metadata": {"name": "x"}}),
            ),
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
        assert_allowed_without_patch(&respond(&review_of(
            pod_kind(),
            "alice",
            "CREATE",
            json!(null),
        )));
    }

    #[test]
    fn trial_versions_are_both_handled() {
        for version in ["v1beta1", "v1alpha3"] {
            let kind = json!({"group": "kubeflow.org", "version": version, "kind": "Trial"});
            let trial = json!({"apiVersion": format!("kubeflow.org/{version}"), "kind": "Trial", "metadata": {"name": "t"}, "spec": {}});
            let after = patched(
                &respond(&review_of(kind, "alice", "CREATE", trial)),
                json!({"metadata": {"name": "t"}, "spec": {}}),
            );
            assert_eq!(
                after["metadata"]["labels"],
                json!({"kubeflow-extension": "true"})
            );
        }
    }

    #[test]
    fn body_that_is_not_a_review_is_an_error() {
        let config = Config::default();
        assert!(matches!(
            review(b"{not json", &config),
            Err(AdmissionError::NotAReview(_))
        ));
        assert!(matches!(
            review(b"{\"foo\": 1}", &config),
            Err(AdmissionError::NoRequest)
        ));
        assert!(matches!(
            review(b"{\"request\": \"\xff\"}", &config),
            Err(AdmissionError::NotUtf8(_))
        ));
        assert!(matches!(
            review(b"[1,2]", &config),
            Err(AdmissionError::NotAReview(_))
        ));
    }

    /// Every AdmissionReview among the test and benchmark fixtures, with its path.
    fn fixtures() -> Vec<(std::path::PathBuf, Vec<u8>, Value)> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut found = Vec::new();
        for dir in ["tests/data", "bench/data"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let body = std::fs::read(&path).unwrap();
                match serde_json::from_slice::<Value>(&body) {
                    Ok(full) if full["kind"] == "AdmissionReview" => found.push((path, body, full)),
                    _ => {}
                }
            }
        }
        assert!(found.len() >= 5, "only {} fixtures", found.len());
        found
    }

    fn modes() -> Vec<Config> {
        ["kfpAccess: token", "kfpAccess: header"]
            .into_iter()
            .map(crate::testing::config)
            .collect()
    }

    /// The single pass answers every fixture as the general path (object parsed on its own)
    /// does, also with the object before the kind.
    #[test]
    fn one_pass_answers_like_the_general_path() {
        for (path, body, mut full) in fixtures() {
            for config in modes() {
                let general = serde_json::from_slice::<TextReview>(&body).unwrap().into();
                let expected = answer(general, &config).unwrap();
                assert_eq!(
                    review(&body, &config).unwrap(),
                    expected,
                    "{}",
                    path.display()
                );
            }
            // The object first (serde_json's map is sorted: "object" < "operation" but after "kind"):
            // move it to the front by hand.
            let object = full["request"]
                .as_object_mut()
                .unwrap()
                .remove("object")
                .unwrap();
            let rest = serde_json::to_string(&full["request"]).unwrap();
            let reordered = format!(
                r#"{{"apiVersion":"admission.k8s.io/v1","request":{{"object":{object},{}}}"#,
                &rest[1..]
            );
            let config = Config::default();
            let general = serde_json::from_slice::<TextReview>(reordered.as_bytes())
                .unwrap()
                .into();
            assert_eq!(
                review(reordered.as_bytes(), &config).unwrap(),
                answer(general, &config).unwrap()
            );
        }
    }

    /// On every fixture the patch (diff of the pruned views) is the diff of the whole views.
    #[test]
    fn patch_is_the_diff_of_the_whole_views() {
        fn check<'v, T: Deserialize<'v> + Serialize + Prune + Clone>(
            object: &'v Value,
            rule: impl Fn(&T, &str, &Config) -> Decision<T>,
        ) -> usize {
            let mut changed = 0;
            for config in modes() {
                let before = T::deserialize(object).unwrap();
                let after = rule(&before, "alice", &config).object;
                let whole = json_patch::diff(
                    &serde_json::to_value(&before).unwrap(),
                    &serde_json::to_value(&after).unwrap(),
                );
                assert_eq!(patch::diff(before, after).unwrap(), whole);
                changed += usize::from(!whole.0.is_empty());
            }
            changed
        }
        let mut changed = 0;
        for (_, _, full) in fixtures() {
            let object = &full["request"]["object"];
            let kind = &full["request"]["kind"];
            let target = Target::of(
                kind["group"].as_str().unwrap_or(""),
                kind["version"].as_str().unwrap_or(""),
                kind["kind"].as_str().unwrap_or(""),
            );
            changed += match target {
                Some(Target::Pod) => check(object, policy::mutate_pod),
                Some(Target::Job) => check(object, policy::mutate_job),
                Some(Target::Trial) => check(object, policy::mutate_trial),
                None => 0,
            };
        }
        assert!(changed >= 8, "only {changed} fixtures changed by a rule");
    }

    #[test]
    fn targets_by_api_version() {
        assert_eq!(Target::of_api_version("v1", "Pod"), Some(Target::Pod));
        assert_eq!(Target::of_api_version("batch/v1", "Job"), Some(Target::Job));
        assert_eq!(
            Target::of_api_version("kubeflow.org/v1alpha3", "Trial"),
            Some(Target::Trial)
        );
        assert_eq!(Target::of_api_version("batch/v1", "CronJob"), None);
        assert_eq!(Target::of_api_version("kubeflow.org/v1", "Trial"), None);
    }
}
