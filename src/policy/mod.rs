//! The admission rules: pure functions from a typed view to a changed view.
//!
//! No I/O here. Each rule decides from the request itself (the object, the old object on
//! UPDATE, the requesting user) and the resolved [`Config`](crate::config::Config), so every
//! replica, before and after a restart, gives the same answer for the same request.
//!
//! The extension label grants the profile owner's identity in header mode, so it is reserved,
//! and trust rests only on what a tenant cannot fabricate: `userInfo.username` (the API server
//! sets it from authentication) and the object's controller ownerReference. A tenant can write
//! any ownerReference, but only a trusted controller's request counts, and those controllers
//! create objects only for owners that exist.

use std::borrow::Cow;

mod job;
mod katib;
mod pod;
mod token;
mod trial;

pub use job::{ISTIO_OVERRIDE_RULE, guard_workload_update, mutate_workload};
pub use katib::WRAPPED_ANNOTATION;
pub use pod::{guard_pod_update, mutate_pod};
pub use token::token_injection;
pub use trial::mutate_trial;

/// The rule that removed the reserved label from an object whose maker may not set it.
pub const RESERVED_RULE: &str = "reserved-label";
/// The rule that undid an UPDATE adding or changing the reserved label.
pub const RESERVED_UPDATE_RULE: &str = "reserved-label-update";

/// Annotation Istio reads for per-pod proxy settings.
pub const PROXY_CONFIG_ANNOTATION: &str = "proxy.istio.io/config";
/// Annotation asking the Istio injector for a sidecar; Istio reads the label of the same name
/// first, and its injector's objectSelector skips pods labelled `"false"`.
pub const SIDECAR_INJECT_ANNOTATION: &str = "sidecar.istio.io/inject";
pub const SIDECAR_INJECT_LABEL: &str = SIDECAR_INJECT_ANNOTATION;

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
/// A `proxy.istio.io/config` value larger than this is not read: a real one is a few lines.
pub const PROXY_CONFIG_MAX_BYTES: usize = 4096;
/// Nor one whose flow collections (`[`, `{`) nest deeper than this: YAML parsers take time
/// quadratic in that depth, and a ProxyConfig nests a few levels.
pub const PROXY_CONFIG_MAX_DEPTH: usize = 8;

/// The `proxy.istio.io/config` annotation, as far as it was read.
enum ProxyConfig {
    Absent,
    Read(serde_json::Map<String, serde_json::Value>),
    /// Not read, and why: too large, too deep, not a YAML mapping.
    Unread(String),
}

/// Reads the `proxy.istio.io/config` annotation, in time and memory linear in its size: a
/// linear pre-scan bounds size and nesting before the YAML parser sees it.
fn proxy_config(meta: &crate::model::ObjectMeta<'_>) -> ProxyConfig {
    let Some(text) = meta.annotation(PROXY_CONFIG_ANNOTATION) else {
        return ProxyConfig::Absent;
    };
    if text.len() > PROXY_CONFIG_MAX_BYTES {
        return ProxyConfig::Unread(format!(
            "{PROXY_CONFIG_ANNOTATION} not read: {} bytes, more than {PROXY_CONFIG_MAX_BYTES}",
            text.len()
        ));
    }
    if flow_depth_exceeds(text, PROXY_CONFIG_MAX_DEPTH) {
        return ProxyConfig::Unread(format!(
            "{PROXY_CONFIG_ANNOTATION} not read: nested deeper than {PROXY_CONFIG_MAX_DEPTH} levels"
        ));
    }
    if text.trim().is_empty() {
        return ProxyConfig::Read(serde_json::Map::new());
    }
    match serde_saphyr::from_str_with_options(text, crate::config::yaml_options()) {
        Ok(config) => ProxyConfig::Read(config),
        Err(error) => ProxyConfig::Unread(format!(
            "{PROXY_CONFIG_ANNOTATION} is not a YAML mapping: {error}"
        )),
    }
}

/// Do the flow collections of `text` nest deeper than `max`? Counts every bracket, quoted or
/// not: an over-estimate, which only refuses more.
fn flow_depth_exceeds(text: &str, max: usize) -> bool {
    let mut depth = 0usize;
    for byte in text.bytes() {
        match byte {
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Does the object's `proxy.istio.io/config` annotation hold the application until the proxy
/// has started? An annotation we do not read does not.
fn holds_until_proxy_starts(meta: &crate::model::ObjectMeta<'_>) -> bool {
    match proxy_config(meta) {
        ProxyConfig::Read(config) => config.get(HOLD_KEY) == Some(&serde_json::Value::Bool(true)),
        ProxyConfig::Absent | ProxyConfig::Unread(_) => false,
    }
}

/// Why the object's `proxy.istio.io/config` annotation is not read, if it is present and not.
fn unread_proxy_config(meta: &crate::model::ObjectMeta<'_>) -> Option<String> {
    match proxy_config(meta) {
        ProxyConfig::Unread(reason) => Some(reason),
        ProxyConfig::Absent | ProxyConfig::Read(_) => None,
    }
}

/// The `proxy.istio.io/config` value with the hold flag set, keeping the other keys; or why
/// the existing value is left as is (we do not overwrite what we cannot read).
fn with_hold_until_proxy_starts(meta: &crate::model::ObjectMeta<'_>) -> Result<String, String> {
    let mut config = match proxy_config(meta) {
        ProxyConfig::Absent => serde_json::Map::new(),
        ProxyConfig::Read(config) => config,
        ProxyConfig::Unread(reason) => return Err(format!("{reason}; left as is")),
    };
    config.insert(HOLD_KEY.into(), serde_json::Value::Bool(true));
    serde_json::to_string(&config).map_err(|error| error.to_string())
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

/// API group of Katib's Trial.
pub const TRIAL_GROUP: &str = "kubeflow.org";
/// The Trial versions Katib serves (v1beta1) and served (v1alpha3); no other counts.
pub const TRIAL_VERSIONS: [&str; 2] = ["v1beta1", "v1alpha3"];

/// Is `owner` a Katib Trial, of exactly a version Katib has?
fn is_trial(owner: &crate::model::OwnerReference<'_>) -> bool {
    owner.kind == "Trial"
        && owner
            .api_version
            .split_once('/')
            .is_some_and(|(group, version)| {
                group == TRIAL_GROUP && TRIAL_VERSIONS.contains(&version)
            })
}

/// Restores the reserved label to its value in the old object (removes it when the old object
/// had none) if an UPDATE added or changed it; removing it is allowed. True when it did.
fn restore_reserved_label(
    meta: &mut crate::model::ObjectMeta<'_>,
    old: Option<&str>,
    label: &str,
) -> bool {
    let new = meta.label(label);
    if new.is_none() || new == old {
        return false;
    }
    match old {
        Some(old) => meta.set_label(label, old),
        None => meta.remove_label(label),
    }
    true
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::model::ObjectMeta;

    fn with_proxy_config(value: &str) -> ObjectMeta<'static> {
        ObjectMeta {
            annotations: Some([(PROXY_CONFIG_ANNOTATION.into(), value.to_string().into())].into()),
            ..Default::default()
        }
    }

    /// Issue 9.1: an 80 KB `a: [[[…]]]` took serde_yaml seconds; it is now refused by a linear
    /// pre-scan, as is anything too large or too deep.
    #[test]
    fn deep_or_large_proxy_config_is_not_read_and_answers_fast() {
        let deep = format!("a: {}{}", "[".repeat(40_000), "]".repeat(40_000));
        let meta = with_proxy_config(&deep);
        let start = Instant::now();
        assert!(!holds_until_proxy_starts(&meta));
        let reason = unread_proxy_config(&meta).unwrap();
        assert!(with_hold_until_proxy_starts(&meta).is_err());
        let took = start.elapsed();
        assert!(took < Duration::from_millis(10), "took {took:?}");
        assert!(reason.contains("80003 bytes"), "{reason}");

        // Small but deep: refused for its depth.
        let small_deep = format!(
            "holdApplicationUntilProxyStarts: true\na: {}{}",
            "[".repeat(PROXY_CONFIG_MAX_DEPTH + 1),
            "]".repeat(PROXY_CONFIG_MAX_DEPTH + 1)
        );
        let meta = with_proxy_config(&small_deep);
        assert!(!holds_until_proxy_starts(&meta));
        assert!(
            unread_proxy_config(&meta)
                .unwrap()
                .contains("nested deeper")
        );
        let at_bound = format!(
            "holdApplicationUntilProxyStarts: true\na: {}{}",
            "[".repeat(PROXY_CONFIG_MAX_DEPTH),
            "]".repeat(PROXY_CONFIG_MAX_DEPTH)
        );
        assert!(holds_until_proxy_starts(&with_proxy_config(&at_bound)));

        // Large but flat (a 256 KiB annotation): refused for its size.
        let large = format!(
            "holdApplicationUntilProxyStarts: true\n#{}",
            "x".repeat(256 << 10)
        );
        let meta = with_proxy_config(&large);
        assert!(!holds_until_proxy_starts(&meta));
        assert!(
            unread_proxy_config(&meta)
                .unwrap()
                .contains("more than 4096")
        );
    }

    #[test]
    fn readable_proxy_config_is_read() {
        for (text, holds) in [
            ("holdApplicationUntilProxyStarts: true\n", true),
            (
                "{\"holdApplicationUntilProxyStarts\": true, \"concurrency\": 2}",
                true,
            ),
            ("holdApplicationUntilProxyStarts: false\n", false),
            ("concurrency: 2\n", false),
        ] {
            let meta = with_proxy_config(text);
            assert_eq!(holds_until_proxy_starts(&meta), holds, "{text}");
            assert_eq!(unread_proxy_config(&meta), None);
        }
        let meta = with_proxy_config("- not a mapping\n");
        assert!(
            unread_proxy_config(&meta)
                .unwrap()
                .contains("not a YAML mapping")
        );
        assert_eq!(
            with_hold_until_proxy_starts(&with_proxy_config("concurrency: 2\n")),
            Ok(r#"{"concurrency":2,"holdApplicationUntilProxyStarts":true}"#.to_string())
        );
    }
}
