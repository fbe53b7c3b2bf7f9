//! AdmissionReview in, AdmissionReview out: parsing, dispatch on the request's kind, the patch
//! (a diff of the typed views) and the response. No I/O besides the decision's log line (at most
//! [`DECISION_LINES_PER_SECOND`] of each kind).
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
    model::{MetaOnly, ObjectMeta, Pod, Str, Workload, WorkloadKind},
    patch::{self, Diff},
    policy::{self, Decision, TRIAL_GROUP, TRIAL_VERSIONS},
    telemetry::{self, Sampler},
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
    #[error("UPDATE request has no oldObject")]
    NoOldObject,
    #[error("cannot serialize the result: {0}")]
    Serialize(#[source] serde_json::Error),
}

pub type Result<T, E = AdmissionError> = std::result::Result<T, E>;

/// The kinds we handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Pod,
    /// A workload with pod templates (batch Job, Training Operator jobs, JobSet, TrainJob).
    Workload(WorkloadKind),
    Trial,
}

impl Target {
    /// The target for a group/version/kind, if we handle it.
    pub fn of(group: &str, version: &str, kind: &str) -> Option<Self> {
        match (group, version, kind) {
            ("", "v1", "Pod") => Some(Target::Pod),
            (TRIAL_GROUP, version, "Trial") if TRIAL_VERSIONS.contains(&version) => {
                Some(Target::Trial)
            }
            _ => WorkloadKind::of(group, version, kind).map(Target::Workload),
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
            Target::Workload(kind) => kind.name(),
            Target::Trial => "Trial",
        }
    }
}

/// The operations we handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    Create,
    Update,
}

impl Operation {
    fn of(operation: &str) -> Option<Self> {
        match operation {
            "CREATE" => Some(Operation::Create),
            "UPDATE" => Some(Operation::Update),
            _ => None,
        }
    }
}

/// The typed view the rules for a kind and operation read: on UPDATE of a pod only its labels
/// matter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum View {
    Pod,
    Meta,
    Workload,
}

impl View {
    /// The view of the object for `target` and `operation`; none when no rule handles them.
    fn of(target: Target, operation: Operation) -> Option<Self> {
        match (target, operation) {
            (_, Operation::Create) => Some(Self::created(target)),
            (Target::Pod, Operation::Update) => Some(View::Meta),
            (Target::Workload(_), Operation::Update) => Some(View::Workload),
            (Target::Trial, Operation::Update) => None,
        }
    }

    /// The view of an object being created.
    fn created(target: Target) -> Self {
        match target {
            Target::Pod => View::Pod,
            Target::Workload(_) => View::Workload,
            Target::Trial => View::Meta,
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

/// Runs the CREATE rules for `target` over the object's JSON text, as `username` would create
/// it.
pub fn mutate(
    target: Target,
    object: &str,
    namespace: Option<&str>,
    username: Option<&str>,
    config: &Config,
) -> Result<Mutation> {
    let object = Parsed::from_text(View::created(target), target, object)?;
    run(
        target,
        Operation::Create,
        object,
        None,
        namespace,
        username,
        config,
    )
}

/// The rules for `target` and `operation` on the parsed object (and old object on UPDATE).
fn run(
    target: Target,
    operation: Operation,
    object: Parsed,
    old: Option<Parsed>,
    namespace: Option<&str>,
    username: Option<&str>,
    config: &Config,
) -> Result<Mutation> {
    use Operation::{Create, Update};
    fn meta<'o, 'a>(object: &'o Workload<'a>) -> &'o ObjectMeta<'a> {
        &object.metadata
    }
    fn meta_only<'o, 'a>(object: &'o MetaOnly<'a>) -> &'o ObjectMeta<'a> {
        &object.metadata
    }
    match (target, operation, object, old) {
        (Target::Pod, Create, Parsed::Pod(o), _) => apply(
            o,
            namespace,
            |o: &Pod| &o.metadata,
            |o, ns| policy::mutate_pod(o, ns, username, config),
        ),
        (Target::Pod, Update, Parsed::Meta(o), Some(Parsed::Meta(old))) => {
            apply(o, namespace, meta_only, |o, ns| {
                policy::guard_pod_update(o, &old, ns, config)
            })
        }
        (Target::Workload(_), Create, Parsed::Workload(o), _) => {
            apply(*o, namespace, meta, |o, ns| {
                policy::mutate_workload(o, ns, username, config)
            })
        }
        (Target::Workload(_), Update, Parsed::Workload(o), Some(Parsed::Workload(old))) => {
            apply(*o, namespace, meta, |o, ns| {
                policy::guard_workload_update(o, &old, ns, config)
            })
        }
        (Target::Trial, Create, Parsed::Meta(o), _) => apply(o, namespace, meta_only, |o, ns| {
            policy::mutate_trial(o, ns, config)
        }),
        // The views follow from the target and operation ([`View::of`]): what is left is an
        // UPDATE without its old object.
        _ => Err(AdmissionError::NoOldObject),
    }
}

/// The rule on a parsed view, and the patch (the diff of the views) when it applied.
fn apply<'a, T: Diff>(
    parsed: T,
    namespace: Option<&str>,
    meta: impl Fn(&T) -> &ObjectMeta<'a>,
    rule: impl FnOnce(&T, &str) -> Decision<T>,
) -> Result<Mutation> {
    // The request names the namespace; a pod from a generateName may not carry it yet.
    let namespace = namespace
        .or(meta(&parsed).namespace.as_deref())
        .unwrap_or("default");
    let Decision {
        object: changed,
        applied,
        skipped,
    } = rule(&parsed, namespace);
    let name = meta(&parsed).display_name().to_string();
    let patch = if applied.is_empty() {
        json_patch::Patch(Vec::new())
    } else {
        patch::diff(&parsed, &changed).map_err(AdmissionError::Serialize)?
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
    Meta(MetaOnly<'a>),
    /// Boxed: the largest view by far.
    Workload(Box<Workload<'a>>),
}

impl<'a> Parsed<'a> {
    /// The object's JSON text parsed into `view` (the object is a `target`).
    fn from_text(view: View, target: Target, object: &'a str) -> Result<Self> {
        let parsed = match view {
            View::Pod => serde_json::from_str(object).map(Parsed::Pod),
            View::Meta => serde_json::from_str(object).map(Parsed::Meta),
            View::Workload => serde_json::from_str(object).map(|o| Parsed::Workload(Box::new(o))),
        };
        parsed.map_err(|source| AdmissionError::Object {
            kind: target.name(),
            source,
        })
    }
}

/// The request's object (or old object), as far as the single pass over the review got with it.
enum Object<'a> {
    /// Parsed straight into its view: the kind and operation came first (as the API server
    /// sends them).
    Parsed(Box<Parsed<'a>>),
    /// Came before the kind or operation: kept as text and parsed once they are known.
    Raw(&'a RawValue),
    /// Not read: a kind or operation we do not handle, or an old object on CREATE.
    Skipped,
}

impl<'a> Object<'a> {
    /// The object in `view`, parsed now if it was kept as text; `None` when there is none.
    fn into_view(self, view: View, target: Target) -> Option<Result<Parsed<'a>>> {
        match self {
            Object::Parsed(parsed) => Some(Ok(*parsed)),
            Object::Raw(raw) => Some(Parsed::from_text(view, target, raw.get())),
            Object::Skipped => None,
        }
    }
}

#[derive(Deserialize)]
struct Review<'a> {
    #[serde(rename = "apiVersion", default)]
    api_version: Option<&'a str>,
    #[serde(borrow)]
    request: Option<Request<'a>>,
}

/// The request, parsed in one pass with its objects: when the `object` and `oldObject` members
/// come, the kind and operation are usually known already, so each object is deserialized
/// straight into its typed view, or skipped when it will not be read. Any error (an object that
/// is not the view, duplicate members...) makes [`review`] parse the body again the general
/// way, which answers it exactly as before.
struct Request<'a> {
    uid: Str<'a>,
    kind: Kind<'a>,
    namespace: Option<Str<'a>>,
    operation: Option<Str<'a>>,
    /// `userInfo.username`: who asks, as authentication established it.
    username: Option<Str<'a>>,
    object: Option<Object<'a>>,
    old_object: Option<Object<'a>>,
}

/// The request's members [`RequestVisitor`] reads, matched without building the key.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum Field {
    Uid,
    Kind,
    Namespace,
    Operation,
    UserInfo,
    Object,
    OldObject,
    #[serde(other)]
    Other,
}

/// `userInfo`, as far as trust goes: groups and extras are skipped.
#[derive(Deserialize)]
struct UserInfo<'a> {
    #[serde(default, borrow)]
    username: Option<Str<'a>>,
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
        /// Reads an object member into the view its rules need, or skips it.
        fn object<'de, A: serde::de::MapAccess<'de>>(
            map: &mut A,
            view: Option<Option<(View, Target)>>,
        ) -> std::result::Result<Option<Object<'de>>, A::Error> {
            let boxed = |parsed| Object::Parsed(Box::new(parsed));
            Ok(match view {
                // The kind or operation is not known yet.
                None => map.next_value::<Option<&'de RawValue>>()?.map(Object::Raw),
                Some(None) => {
                    map.next_value::<IgnoredAny>()?;
                    Some(Object::Skipped)
                }
                Some(Some((View::Pod, _))) => map
                    .next_value::<Option<Pod>>()?
                    .map(|o| boxed(Parsed::Pod(o))),
                Some(Some((View::Meta, _))) => map
                    .next_value::<Option<MetaOnly>>()?
                    .map(|o| boxed(Parsed::Meta(o))),
                Some(Some((View::Workload, _))) => map
                    .next_value::<Option<Workload>>()?
                    .map(|o| boxed(Parsed::Workload(Box::new(o)))),
            })
        }
        let (mut uid, mut kind, mut namespace, mut operation, mut user_info) =
            (None, None, None, None, None);
        let (mut object_slot, mut old_slot) = (None, None);
        while let Some(key) = map.next_key::<Field>()? {
            // The view of the object (`old`: of the old object), once kind and operation are
            // known: `Some(None)` when it will not be read.
            let view = |old: bool| -> Option<Option<(View, Target)>> {
                let kind: &Kind = kind.as_ref()?;
                let Some(target) = Target::of(&kind.group, &kind.version, &kind.kind) else {
                    return Some(None);
                };
                let operation: &Option<Str> = operation.as_ref()?;
                let operation = operation.as_deref().and_then(Operation::of);
                Some(
                    operation
                        .filter(|&op| !old || op == Operation::Update)
                        .and_then(|op| View::of(target, op))
                        .map(|view| (view, target)),
                )
            };
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
                Field::UserInfo => once(
                    &mut user_info,
                    map.next_value::<Option<UserInfo<'de>>>()?,
                    "userInfo",
                )?,
                Field::Object => {
                    let view = view(false);
                    once(&mut object_slot, object(&mut map, view)?, "object")?
                }
                Field::OldObject => {
                    let view = view(true);
                    once(&mut old_slot, object(&mut map, view)?, "oldObject")?
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
            username: user_info.flatten().and_then(|u| u.username),
            object: object_slot.flatten(),
            old_object: old_slot.flatten(),
        })
    }
}

/// The request as the general path reads it: the objects as text, parsed on their own.
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
    user_info: Option<UserInfo<'a>>,
    #[serde(default, borrow)]
    object: Option<&'a RawValue>,
    #[serde(default, borrow)]
    old_object: Option<&'a RawValue>,
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
                username: q.user_info.and_then(|u| u.username),
                object: q.object.map(Object::Raw),
                old_object: q.old_object.map(Object::Raw),
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
    /// Shown by kubectl to whoever made the request (and logged by the controllers that did).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";

/// Answers one AdmissionReview body with the response body. Errors only when the body is not
/// an AdmissionReview with a request.
pub fn review(body: &[u8], config: &Config) -> Result<Reviewed> {
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

/// An answered review: the AdmissionReview to send back and what was decided, for the metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reviewed {
    pub answer: Vec<u8>,
    pub outcome: Outcome,
}

/// What the rules made of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The kind of object ([`Target::name`]), or `"unhandled"`.
    pub kind: &'static str,
    /// Whether the answer carries a patch.
    pub patched: bool,
    /// The rules that changed the object (empty unless patched).
    pub rules: Vec<&'static str>,
}

impl Outcome {
    fn unchanged(kind: &'static str) -> Self {
        Outcome {
            kind,
            patched: false,
            rules: Vec::new(),
        }
    }
}

fn answer(review: Review, config: &Config) -> Result<Reviewed> {
    let mut request = review.request.ok_or(AdmissionError::NoRequest)?;
    let (patch, outcome) = decide(&mut request, config);
    let out = ReviewOut {
        // Answer in the version we were asked in.
        api_version: review.api_version.unwrap_or(REVIEW_API_VERSION),
        kind: "AdmissionReview",
        response: Response {
            uid: &request.uid,
            allowed: true,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch: patch.map(|p| base64::engine::general_purpose::STANDARD.encode(p)),
            warnings: warnings_for(&outcome.rules, config),
        },
    };
    let answer = serde_json::to_vec(&out).map_err(AdmissionError::Serialize)?;
    Ok(Reviewed { answer, outcome })
}

/// What the requester should be told: the changes made against what the object asked for. The
/// API server shows them to the client (`Warning:` headers), so a tenant learns why a label they
/// set is gone without access to our logs.
fn warnings_for(rules: &[&'static str], config: &Config) -> Vec<String> {
    let label = &config.settings.extension_label;
    let mut warnings: Vec<String> = rules
        .iter()
        .filter_map(|rule| match *rule {
            policy::RESERVED_RULE | policy::RESERVED_UPDATE_RULE => Some(format!(
                "tenancy-fixer: label {label} removed: it is reserved for the objects tenancy-fixer labels"
            )),
            policy::ISTIO_OVERRIDE_RULE => Some(format!(
                "tenancy-fixer: {} set to true: a Katib trial's pods need the Istio proxy",
                policy::SIDECAR_INJECT_LABEL
            )),
            _ => None,
        })
        .collect();
    warnings.dedup();
    warnings
}

/// Decision lines written per second at most, of each kind ([`Logged`]): every one at the rates
/// a cluster creates pods, a summary line instead of the rest under a burst (or a benchmark),
/// where formatting and writing a line would cost a sixth of the review. The metrics count
/// every decision; with `RUST_LOG=debug` every line is written.
pub const DECISION_LINES_PER_SECOND: u32 = 100;

/// The kinds of decision line, each with its own budget.
#[derive(Clone, Copy, Debug)]
enum Logged {
    Patched,
    Unchanged,
    /// Allowed unchanged because the object could not be read.
    Failed,
}

impl Logged {
    fn sampler(self) -> &'static Sampler {
        static SAMPLERS: [Sampler; 3] = [
            Sampler::new(DECISION_LINES_PER_SECOND),
            Sampler::new(DECISION_LINES_PER_SECOND),
            Sampler::new(DECISION_LINES_PER_SECOND),
        ];
        &SAMPLERS[self as usize]
    }

    fn name(self) -> &'static str {
        match self {
            Logged::Patched => "patched",
            Logged::Unchanged => "unchanged",
            Logged::Failed => "failed",
        }
    }
}

/// The decision's log line (`rules` that changed the object, `reasons` why others did not),
/// within its kind's budget.
fn log(
    logged: Logged,
    kind: &str,
    namespace: &str,
    name: &str,
    rules: &[&str],
    reasons: &[impl std::fmt::Display],
) {
    let written = tracing::enabled!(tracing::Level::DEBUG)
        || logged.sampler().admit(telemetry::second(), |lines| {
            tracing::info!(
                lines,
                outcome = logged.name(),
                "admission decision lines not written: more than {DECISION_LINES_PER_SECOND} per second (the metrics count every decision)"
            )
        });
    if !written {
        return;
    }
    let reason = reasons
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    match logged {
        Logged::Patched => {
            let rules = rules.join(",");
            tracing::info!(
                kind,
                namespace,
                name,
                patched = true,
                rules,
                skipped = reason,
                "admission"
            )
        }
        Logged::Unchanged => {
            tracing::info!(kind, namespace, name, patched = false, reason, "admission")
        }
        Logged::Failed => {
            tracing::warn!(kind, namespace, name, patched = false, reason, "admission")
        }
    }
}

/// The JSON Patch to send, if any, and the outcome; logs the decision.
fn decide(request: &mut Request, config: &Config) -> (Option<Vec<u8>>, Outcome) {
    let Request {
        kind,
        namespace,
        operation,
        username,
        object,
        old_object,
        ..
    } = request;
    let namespace = namespace.as_deref();
    let ns = namespace.unwrap_or("");
    let Some(target) = Target::of(&kind.group, &kind.version, &kind.kind) else {
        log(
            Logged::Unchanged,
            &kind.kind,
            ns,
            "",
            &[],
            &["kind not handled"],
        );
        return (None, Outcome::unchanged("unhandled"));
    };
    let unchanged = (None, Outcome::unchanged(target.name()));
    let handled = operation
        .as_deref()
        .and_then(Operation::of)
        .and_then(|op| Some((op, View::of(target, op)?)));
    let Some((operation, view)) = handled else {
        let reason = format!(
            "operation {} not handled",
            operation.as_deref().unwrap_or("(none)")
        );
        log(Logged::Unchanged, target.name(), ns, "", &[], &[reason]);
        return unchanged;
    };
    let no_object = |reason: &str| {
        log(Logged::Failed, target.name(), ns, "", &[], &[reason]);
        unchanged.clone()
    };
    let Some(parsed) = object.take().and_then(|o| o.into_view(view, target)) else {
        return no_object("request has no object");
    };
    let old = match operation {
        Operation::Create => None,
        Operation::Update => match old_object.take().and_then(|o| o.into_view(view, target)) {
            Some(old) => Some(old),
            None => return no_object("UPDATE request has no oldObject"),
        },
    };
    let mutation = parsed.and_then(|parsed| {
        let old = old.transpose()?;
        run(
            target,
            operation,
            parsed,
            old,
            namespace,
            username.as_deref(),
            config,
        )
    });
    match mutation {
        Err(error) => {
            log(Logged::Failed, target.name(), ns, "", &[], &[error]);
            unchanged
        }
        Ok(m) if m.patch.0.is_empty() => {
            log(
                Logged::Unchanged,
                target.name(),
                ns,
                &m.name,
                &[],
                &m.skipped,
            );
            unchanged
        }
        Ok(m) => match serde_json::to_vec(&m.patch) {
            Ok(bytes) => {
                log(
                    Logged::Patched,
                    target.name(),
                    ns,
                    &m.name,
                    &m.applied,
                    &m.skipped,
                );
                let outcome = Outcome {
                    kind: target.name(),
                    patched: true,
                    rules: m.applied,
                };
                (Some(bytes), outcome)
            }
            Err(error) => {
                log(Logged::Failed, target.name(), ns, &m.name, &[], &[error]);
                unchanged
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
        serde_json::from_slice(&review(body, &Config::default()).unwrap().answer).unwrap()
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
    fn the_requester_is_warned_of_a_removed_label_or_an_overridden_opt_out() {
        let warnings = |response: &Value| response["response"].get("warnings").cloned();
        let mut forged = notebook();
        forged["metadata"]["labels"] = json!({"kubeflow-extension": "true"});
        assert_eq!(
            warnings(&respond(&review_of(pod_kind(), "alice", "CREATE", forged))),
            Some(json!([
                "tenancy-fixer: label kubeflow-extension removed: it is reserved for the objects \
                 tenancy-fixer labels"
            ]))
        );
        assert_eq!(
            warnings(&respond(&review_of(
                pod_kind(),
                "alice",
                "CREATE",
                notebook()
            ))),
            None
        );
        let rules = [
            policy::ISTIO_OVERRIDE_RULE,
            policy::RESERVED_UPDATE_RULE,
            "trial-workload",
        ];
        let config = Config::default();
        assert_eq!(
            warnings_for(&rules, &config),
            [
                "tenancy-fixer: sidecar.istio.io/inject set to true: a Katib trial's pods need the Istio proxy",
                "tenancy-fixer: label kubeflow-extension removed: it is reserved for the objects tenancy-fixer labels",
            ]
        );
    }

    #[test]
    fn the_outcome_names_kind_and_applied_rules() {
        let outcome = |body: &[u8]| review(body, &Config::default()).unwrap().outcome;
        assert_eq!(
            outcome(&review_of(pod_kind(), "alice", "CREATE", notebook())),
            Outcome {
                kind: "Pod",
                patched: true,
                rules: vec!["notebook-label", "kfp-token"],
            }
        );
        let mut plain = notebook();
        plain["metadata"]["labels"] = json!({"app": "x"});
        assert_eq!(
            outcome(&review_of(pod_kind(), "alice", "CREATE", plain)),
            Outcome::unchanged("Pod")
        );
        let config_map = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
        assert_eq!(
            outcome(&review_of(config_map, "alice", "CREATE", json!({}))),
            Outcome::unchanged("unhandled")
        );
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

    /// On every fixture the patch (the typed diff) is the diff of the whole views.
    #[test]
    fn patch_is_the_diff_of_the_whole_views() {
        fn check<'v, T: Deserialize<'v> + Diff>(
            object: &'v Value,
            rule: impl Fn(&T, &Config) -> Decision<T>,
        ) -> usize {
            let mut changed = 0;
            for config in modes() {
                let before = T::deserialize(object).unwrap();
                let after = rule(&before, &config).object;
                let whole = json_patch::diff(
                    &serde_json::to_value(&before).unwrap(),
                    &serde_json::to_value(&after).unwrap(),
                );
                assert_eq!(patch::diff(&before, &after).unwrap(), whole);
                changed += usize::from(!whole.0.is_empty());
            }
            changed
        }
        let mut changed = 0;
        for (_, _, full) in fixtures() {
            let request = &full["request"];
            let object = &request["object"];
            let kind = &request["kind"];
            let user = request["userInfo"]["username"].as_str();
            let target = Target::of(
                kind["group"].as_str().unwrap_or(""),
                kind["version"].as_str().unwrap_or(""),
                kind["kind"].as_str().unwrap_or(""),
            );
            changed += match (target, request["operation"].as_str()) {
                (Some(Target::Pod), Some("CREATE")) => {
                    check(object, |o, c| policy::mutate_pod(o, "alice", user, c))
                }
                (Some(Target::Workload(_)), Some("CREATE")) => {
                    check(object, |o, c| policy::mutate_workload(o, "alice", user, c))
                }
                (Some(Target::Workload(_)), Some("UPDATE")) => {
                    let old = Workload::deserialize(&request["oldObject"]).unwrap();
                    check(object, |o, c| {
                        policy::guard_workload_update(o, &old, "alice", c)
                    })
                }
                (Some(Target::Pod), Some("UPDATE")) => {
                    let old = MetaOnly::deserialize(&request["oldObject"]).unwrap();
                    check(object, |o, c| policy::guard_pod_update(o, &old, "alice", c))
                }
                (Some(Target::Trial), _) => {
                    check(object, |o, c| policy::mutate_trial(o, "alice", c))
                }
                _ => 0,
            };
        }
        assert!(changed >= 8, "only {changed} fixtures changed by a rule");
    }

    #[test]
    fn targets_by_api_version() {
        assert_eq!(Target::of_api_version("v1", "Pod"), Some(Target::Pod));
        assert_eq!(
            Target::of_api_version("batch/v1", "Job"),
            Some(Target::Workload(WorkloadKind::Job))
        );
        assert_eq!(
            Target::of_api_version("jobset.x-k8s.io/v1alpha2", "JobSet"),
            Some(Target::Workload(WorkloadKind::JobSet))
        );
        assert_eq!(Target::of_api_version("kubeflow.org/v999", "Trial"), None);
        assert_eq!(
            Target::of_api_version("kubeflow.org/v2", "PyTorchJob"),
            None
        );
        assert_eq!(
            Target::of_api_version("kubeflow.org/v1alpha3", "Trial"),
            Some(Target::Trial)
        );
        assert_eq!(Target::of_api_version("batch/v1", "CronJob"), None);
        assert_eq!(Target::of_api_version("kubeflow.org/v1", "Trial"), None);
    }
}
