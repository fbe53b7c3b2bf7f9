//! The admission rules: pure functions from a typed view to a changed view.
//!
//! No I/O here. Each rule decides from the object itself (labels, ownerReferences, containers)
//! and the resolved [`Config`](crate::config::Config), so every replica, before and after a
//! restart, gives the same answer for the same request.

use std::borrow::Cow;

mod job;
mod katib;
mod pod;
mod token;
mod trial;

pub use job::mutate_job;
pub use katib::WRAPPED_ANNOTATION;
pub use pod::mutate_pod;
pub use token::token_injection;
pub use trial::mutate_trial;

/// Annotation Istio reads for per-pod proxy settings.
pub const PROXY_CONFIG_ANNOTATION: &str = "proxy.istio.io/config";
/// Annotation asking the Istio injector for a sidecar.
pub const SIDECAR_INJECT_ANNOTATION: &str = "sidecar.istio.io/inject";

/// What the rules decided about one object.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision<T> {
    /// The object as it should be stored; equal to the input when `applied` is empty.
    pub object: T,
    /// Names of the rules that changed something, in the order they ran.
    pub applied: Vec<&'static str>,
    /// Why a rule did not apply (for the log line).
    pub skipped: Vec<Cow<'static, str>>,
}

impl<T: Clone> Decision<T> {
    fn start(object: &T) -> Self {
        Self {
            object: object.clone(),
            applied: Vec::new(),
            skipped: Vec::new(),
        }
    }

    fn unchanged(object: &T, reason: impl Into<Cow<'static, str>>) -> Self {
        let mut decision = Self::start(object);
        decision.skip(reason);
        decision
    }

    fn applied(&mut self, rule: &'static str) {
        self.applied.push(rule);
    }

    fn skip(&mut self, reason: impl Into<Cow<'static, str>>) {
        self.skipped.push(reason.into());
    }

    pub fn changed(&self) -> bool {
        !self.applied.is_empty()
    }
}

/// Key of Istio's ProxyConfig that keeps application containers from starting before the proxy.
const HOLD_KEY: &str = "holdApplicationUntilProxyStarts";

/// Does the object's `proxy.istio.io/config` annotation hold the application until the proxy
/// has started?
fn holds_until_proxy_starts(meta: &crate::model::ObjectMeta<'_>) -> bool {
    meta.annotation(PROXY_CONFIG_ANNOTATION)
        .and_then(|text| serde_yaml::from_str::<serde_yaml::Mapping>(text).ok())
        .and_then(|config| config.get(HOLD_KEY).and_then(serde_yaml::Value::as_bool))
        .unwrap_or(false)
}

/// The `proxy.istio.io/config` value with the hold flag set, keeping the other keys; `None`
/// when the existing value is not a YAML mapping (we do not overwrite what we cannot read).
fn with_hold_until_proxy_starts(existing: Option<&str>) -> Option<String> {
    let mut config = match existing {
        None => serde_json::Map::new(),
        Some(text) if text.trim().is_empty() => serde_json::Map::new(),
        Some(text) => {
            serde_yaml::from_str::<serde_json::Map<String, serde_json::Value>>(text).ok()?
        }
    };
    config.insert(HOLD_KEY.into(), serde_json::Value::Bool(true));
    serde_json::to_string(&config).ok()
}

/// Why a Trial or a Trial Job in `namespace` is left alone, if it is: Katib's own objects live
/// in the Kubeflow namespace, and excluded namespaces are never touched.
fn outside_user_namespaces(
    namespace: &str,
    config: &crate::config::Config,
) -> Option<&'static str> {
    if namespace == config.settings.kubeflow_namespace {
        Some("in the Kubeflow namespace")
    } else if config.namespace_excluded(namespace) {
        Some("namespace excluded")
    } else {
        None
    }
}

/// Is one of the object's owners a Katib Trial?
fn owned_by_trial(meta: &crate::model::ObjectMeta<'_>) -> bool {
    meta.owner_references.iter().flatten().any(|owner| {
        owner.kind == "Trial"
            && owner.api_version.split_once('/').map(|(group, _)| group) == Some(TRIAL_GROUP)
    })
}

/// API group of Katib's Trial.
pub const TRIAL_GROUP: &str = "kubeflow.org";
