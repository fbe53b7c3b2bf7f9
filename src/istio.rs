//! Pure builders for the objects kept per profile (behaviour 1).
//!
//! - `header` mode: an Istio grant in the Kubeflow namespace letting the profile's editor
//!   account reach ml-pipeline (`AuthorizationPolicy`, or the legacy `ServiceRoleBinding`), and an
//!   `EnvoyFilter` in the profile namespace adding the owner's user id header to labelled
//!   workloads' calls to ml-pipeline;
//! - `token` mode: a `PodDefault` in the profile namespace giving pods the projected KFP token.
//!
//! Everything carries our managed-by label and a label naming the profile, and is owned by the
//! Profile, so the garbage collector removes it when the Profile goes, also if we are not there.
//!
//! The owner's name is tenant-controlled text that ends up in Envoy configuration and in an
//! Istio match: [`owner_problem`] says when it cannot be used, [`envoy_header_value`] escapes it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{
    Resource, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind},
};
use serde_json::json;

use crate::{
    config::{Config, IstioRbac, KfpAccess},
    model::Profile,
    policy::token_injection,
};

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "tenancy-fixer";
/// Names the profile an object was made for (the profile's name is its namespace's name).
pub const PROFILE_LABEL: &str = "tenancy-fixer.kubeflow.org/profile";

/// A kind of object we keep, and where it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManagedKind {
    EnvoyFilter,
    AuthorizationPolicy,
    ServiceRoleBinding,
    PodDefault,
}

/// Which namespace a managed kind lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Home {
    /// The Kubeflow namespace (grants next to ml-pipeline).
    Kubeflow,
    /// The profile's own namespace.
    Profile,
}

impl ManagedKind {
    pub const ALL: [ManagedKind; 4] = [
        ManagedKind::EnvoyFilter,
        ManagedKind::AuthorizationPolicy,
        ManagedKind::ServiceRoleBinding,
        ManagedKind::PodDefault,
    ];

    pub fn gvk(self) -> GroupVersionKind {
        let (group, version, kind) = match self {
            ManagedKind::EnvoyFilter => ("networking.istio.io", "v1alpha3", "EnvoyFilter"),
            ManagedKind::AuthorizationPolicy => ("security.istio.io", "v1", "AuthorizationPolicy"),
            ManagedKind::ServiceRoleBinding => ("rbac.istio.io", "v1alpha1", "ServiceRoleBinding"),
            ManagedKind::PodDefault => ("kubeflow.org", "v1alpha1", "PodDefault"),
        };
        GroupVersionKind::gvk(group, version, kind)
    }

    pub fn api_resource(self) -> ApiResource {
        ApiResource::from_gvk(&self.gvk())
    }

    pub fn home(self) -> Home {
        match self {
            ManagedKind::AuthorizationPolicy | ManagedKind::ServiceRoleBinding => Home::Kubeflow,
            ManagedKind::EnvoyFilter | ManagedKind::PodDefault => Home::Profile,
        }
    }

    /// The namespace of this kind's object for `profile`.
    pub fn namespace_for(self, profile: &str, config: &Config) -> String {
        match self.home() {
            Home::Kubeflow => config.settings.kubeflow_namespace.clone(),
            Home::Profile => profile.to_string(),
        }
    }

    /// Name of this kind's object for `profile`.
    pub fn object_name(self, profile: &str, config: &Config) -> String {
        match self {
            ManagedKind::AuthorizationPolicy | ManagedKind::ServiceRoleBinding => {
                format!("bind-ml-pipeline-{profile}")
            }
            ManagedKind::EnvoyFilter => "tenancy-fixer-kubeflow-userid".into(),
            ManagedKind::PodDefault => config.settings.ml_pipeline.pod_default_name.clone(),
        }
    }

    /// Does this kind carry the owner's name (header mode: the EnvoyFilter asserts it, the grant
    /// admits only it)? Such a kind is kept only for an owner [`owner_problem`] accepts.
    pub fn names_the_owner(self) -> bool {
        self != ManagedKind::PodDefault
    }

    /// The kinds the configured mode keeps.
    pub fn wanted(config: &Config) -> Vec<ManagedKind> {
        match config.modes.kfp_access {
            KfpAccess::Header => vec![
                match config.modes.istio_rbac {
                    IstioRbac::AuthorizationPolicy => ManagedKind::AuthorizationPolicy,
                    IstioRbac::ServiceRoleBinding => ManagedKind::ServiceRoleBinding,
                },
                ManagedKind::EnvoyFilter,
            ],
            KfpAccess::Token => vec![ManagedKind::PodDefault],
        }
    }
}

/// The profile's owner as KFP knows the user ("" when the Profile names none).
pub fn owner_of(profile: &Profile) -> &str {
    profile
        .spec
        .owner
        .as_ref()
        .map(|o| o.name.as_str())
        .unwrap_or("")
}

/// Why an owner name cannot be put in the user id header (and in the grant's match on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerProblem {
    /// The Profile names no owner: there is no identity to assert.
    Empty,
    /// A control character (below 0x20, or 0x7f): Envoy rejects CR, LF and NUL in a header value,
    /// which would break the whole namespace's route configuration; none belongs in a user id.
    ControlCharacter,
    /// A leading or trailing `*`: Istio reads it as a wildcard in the grant's header match, so the
    /// grant would admit other user ids.
    Wildcard,
    /// A leading or trailing space: HTTP strips it from header values, so KFP would see another
    /// user id than the one the grant matches.
    SurroundingSpace,
}

impl std::fmt::Display for OwnerProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OwnerProblem::Empty => "the profile names no owner",
            OwnerProblem::ControlCharacter => "the owner name contains a control character",
            OwnerProblem::Wildcard => {
                "the owner name starts or ends with '*', which Istio reads as a wildcard"
            }
            OwnerProblem::SurroundingSpace => "the owner name starts or ends with a space",
        })
    }
}

/// Can `owner` be asserted in the user id header and matched by the grant? `None` when it can.
pub fn owner_problem(owner: &str) -> Option<OwnerProblem> {
    if owner.is_empty() {
        Some(OwnerProblem::Empty)
    } else if owner.chars().any(|c| c < '\u{20}' || c == '\u{7f}') {
        Some(OwnerProblem::ControlCharacter)
    } else if owner.starts_with('*') || owner.ends_with('*') {
        Some(OwnerProblem::Wildcard)
    } else if owner.starts_with(' ') || owner.ends_with(' ') {
        Some(OwnerProblem::SurroundingSpace)
    } else {
        None
    }
}

/// `owner` as an Envoy header value: Envoy reads `%...%` as a formatter (`%REQ(x)%` would copy a
/// request header the caller chooses), and `%%` as a literal `%`.
pub fn envoy_header_value(owner: &str) -> String {
    owner.replace('%', "%%")
}

/// The Istio principal of the profile namespace's editor account.
pub fn principal(namespace: &str, config: &Config) -> String {
    format!(
        "cluster.local/ns/{namespace}/sa/{}",
        config.settings.service_account
    )
}

/// Every object the configured mode keeps for `profile`, in a stable order (none naming the
/// owner when [`owner_problem`] refuses it).
pub fn desired_objects(profile: &Profile, config: &Config) -> Vec<DynamicObject> {
    let owner_usable = owner_problem(owner_of(profile)).is_none();
    ManagedKind::wanted(config)
        .into_iter()
        .filter(|kind| owner_usable || !kind.names_the_owner())
        .map(|kind| build(kind, profile, config))
        .collect()
}

/// The object of `kind` kept for `profile`.
pub fn build(kind: ManagedKind, profile: &Profile, config: &Config) -> DynamicObject {
    let namespace = profile.name_any();
    let settings = &config.settings;
    let kfp = &settings.ml_pipeline;
    let owner = owner_of(profile);
    // The grant admits the editor account only with the profile's own owner in the user id header
    // (as it arrives: unescaped), so a pod of the namespace can at most assert that owner.
    let user_id_key = format!("request.headers[{}]", kfp.user_id_header);
    let spec = match kind {
        ManagedKind::AuthorizationPolicy => json!({
            "selector": {"matchLabels": {"app": kfp.app_label}},
            "action": "ALLOW",
            "rules": [{
                "from": [{"source": {"principals": [principal(&namespace, config)]}}],
                "when": [{"key": user_id_key, "values": [owner]}],
            }],
        }),
        // Istio 1.3-1.5 accept `request.headers[...]` as a ServiceRoleBinding subject property
        // (pilot's RBAC plugin lists it among the binding attributes); a subject's properties
        // must all match.
        ManagedKind::ServiceRoleBinding => json!({
            "subjects": [{"properties": {
                "source.principal": principal(&namespace, config),
                user_id_key: owner,
            }}],
            "roleRef": {"kind": "ServiceRole", "name": kfp.service_role},
        }),
        ManagedKind::EnvoyFilter => json!({
            "workloadSelector": {"labels": {settings.extension_label.clone(): "true"}},
            "configPatches": [{
                "applyTo": "VIRTUAL_HOST",
                "match": {
                    "context": "SIDECAR_OUTBOUND",
                    "routeConfiguration": {"vhost": {
                        "name": format!("{}:{}", kfp.host, kfp.port),
                        "route": {"name": "default"},
                    }},
                },
                // `append: false` replaces any value the client sent. Not `append_action`: the
                // Envoy v2 API of Istio 1.3-1.5 does not know it, while current Envoy still
                // accepts `append` (deprecated, same meaning). Not `request_headers_to_remove`
                // either: Envoy of those Istio versions applies removals after additions, so it
                // would remove our own header.
                "patch": {
                    "operation": "MERGE",
                    "value": {"request_headers_to_add": [{
                        "append": false,
                        "header": {"key": kfp.user_id_header, "value": envoy_header_value(owner)},
                    }]},
                },
            }],
        }),
        ManagedKind::PodDefault => {
            let token = token_injection(config);
            let selector_label = &kfp.pod_default_name;
            json!({
                "desc": "Allow access to Kubeflow Pipelines",
                "selector": {"matchLabels": {selector_label.clone(): "true"}},
                "volumes": [token.volume],
                "volumeMounts": [token.mount],
                "env": [token.env],
            })
        }
    };
    let resource = kind.api_resource();
    DynamicObject {
        types: Some(kube::api::TypeMeta {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
        }),
        metadata: ObjectMeta {
            name: Some(kind.object_name(&namespace, config)),
            namespace: Some(kind.namespace_for(&namespace, config)),
            labels: Some(
                [
                    (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                    (PROFILE_LABEL.to_string(), namespace.clone()),
                ]
                .into(),
            ),
            owner_references: owner_reference(profile).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: json!({ "spec": spec }),
    }
}

/// The Profile as owner of what we create for it (needs its uid, so only once it is stored).
/// Not a controller reference: an object someone else controls (a hand-made
/// `access-ml-pipeline` PodDefault, say) can still take ours beside theirs.
fn owner_reference(profile: &Profile) -> Option<OwnerReference> {
    let uid = profile.uid()?;
    Some(OwnerReference {
        api_version: Profile::api_version(&()).into_owned(),
        kind: Profile::kind(&()).into_owned(),
        name: profile.name_any(),
        uid,
        controller: None,
        block_owner_deletion: None,
    })
}

/// Does `actual` (as stored) already carry everything `desired` sets? Compares what we own,
/// the way server-side apply merges it into a schemaless custom resource: our labels, owner
/// reference, and the spec with maps compared key by key (others may add keys, which apply
/// would not remove anyway) and lists as a whole (apply replaces them). Used to skip writes
/// when nothing changed, and never to loop on fields we do not own.
pub fn is_up_to_date(actual: &DynamicObject, desired: &DynamicObject) -> bool {
    let labels_kept = desired
        .labels()
        .iter()
        .all(|(k, v)| actual.labels().get(k) == Some(v));
    let owners_kept = desired.owner_references().iter().all(|o| {
        actual
            .owner_references()
            .iter()
            .any(|a| a.uid == o.uid && a.kind == o.kind)
    });
    let spec_kept = match (actual.data.get("spec"), desired.data.get("spec")) {
        (Some(actual), Some(desired)) => merged_into(actual, desired),
        (_, None) => true,
        (None, Some(_)) => false,
    };
    labels_kept && owners_kept && spec_kept
}

/// Is every key of `desired` in `actual` with the same value (recursively for maps)?
fn merged_into(actual: &serde_json::Value, desired: &serde_json::Value) -> bool {
    match (actual, desired) {
        (serde_json::Value::Object(a), serde_json::Value::Object(d)) => d
            .iter()
            .all(|(k, dv)| a.get(k).is_some_and(|av| merged_into(av, dv))),
        _ => actual == desired,
    }
}

/// The desired objects as a YAML stream (for `render`).
pub fn to_yaml_stream(objects: &[DynamicObject]) -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(object)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::testing::{config, profile};

    #[test]
    fn the_yaml_stream_holds_each_object_as_a_document() {
        let objects = desired_objects(
            &profile("alice", "alice@example.com"),
            &config("kfpAccess: header"),
        );
        let stream = to_yaml_stream(&objects).unwrap();
        let documents: Vec<Value> = stream
            .split("---\n")
            .skip(1)
            .map(|document| serde_saphyr::from_str(document).unwrap())
            .collect();
        let expected: Vec<Value> = objects
            .iter()
            .map(|object| serde_json::to_value(object).unwrap())
            .collect();
        assert_eq!(documents, expected);
    }

    #[test]
    fn header_mode_with_authorization_policy() {
        let objects = desired_objects(
            &profile("alice", "alice@example.com"),
            &config("kfpAccess: header"),
        );
        assert_eq!(objects.len(), 2);
        let ap = &objects[0];
        assert_eq!(
            ap.types.as_ref().unwrap().api_version,
            "security.istio.io/v1"
        );
        assert_eq!(ap.types.as_ref().unwrap().kind, "AuthorizationPolicy");
        assert_eq!(ap.metadata.namespace.as_deref(), Some("kubeflow"));
        assert_eq!(ap.metadata.name.as_deref(), Some("bind-ml-pipeline-alice"));
        assert_eq!(
            ap.data["spec"],
            json!({
                "selector": {"matchLabels": {"app": "ml-pipeline"}},
                "action": "ALLOW",
                "rules": [{
                    "from": [{"source": {"principals": ["cluster.local/ns/alice/sa/default-editor"]}}],
                    "when": [{"key": "request.headers[kubeflow-userid]", "values": ["alice@example.com"]}],
                }],
            })
        );
        let ef = &objects[1];
        assert_eq!(
            ef.types.as_ref().unwrap().api_version,
            "networking.istio.io/v1alpha3"
        );
        assert_eq!(ef.metadata.namespace.as_deref(), Some("alice"));
        let patch = &ef.data["spec"]["configPatches"][0];
        assert_eq!(patch["applyTo"], "VIRTUAL_HOST");
        assert_eq!(patch["match"]["context"], "SIDECAR_OUTBOUND");
        assert_eq!(
            patch["match"]["routeConfiguration"]["vhost"]["name"],
            "ml-pipeline.kubeflow.svc.cluster.local:8888"
        );
        assert_eq!(
            patch["match"]["routeConfiguration"]["vhost"]["route"]["name"],
            "default"
        );
        assert_eq!(patch["patch"]["operation"], "MERGE");
        assert_eq!(
            patch["patch"]["value"]["request_headers_to_add"],
            json!([{
                "append": false,
                "header": {"key": "kubeflow-userid", "value": "alice@example.com"},
            }]),
            "replaces what the client sent"
        );
        assert!(
            patch["patch"]["value"]
                .get("request_headers_to_remove")
                .is_none()
        );
        assert_eq!(
            ef.data["spec"]["workloadSelector"],
            json!({"labels": {"kubeflow-extension": "true"}})
        );
        for o in &objects {
            assert_eq!(o.labels()[MANAGED_BY_LABEL], MANAGED_BY);
            assert_eq!(o.labels()[PROFILE_LABEL], "alice");
            let owner = &o.owner_references()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.uid.as_str()),
                ("Profile", "uid-alice")
            );
            assert_eq!(owner.api_version, "kubeflow.org/v1");
        }
    }

    #[test]
    fn header_mode_with_legacy_service_role_binding() {
        let objects = desired_objects(
            &profile("bob", "bob@example.com"),
            &config("kfpAccess: header\nistioRbac: service-role-binding"),
        );
        let srb = &objects[0];
        assert_eq!(
            srb.types.as_ref().unwrap().api_version,
            "rbac.istio.io/v1alpha1"
        );
        assert_eq!(srb.types.as_ref().unwrap().kind, "ServiceRoleBinding");
        assert_eq!(srb.metadata.name.as_deref(), Some("bind-ml-pipeline-bob"));
        assert_eq!(
            srb.data["spec"],
            json!({
                "subjects": [{"properties": {
                    "source.principal": "cluster.local/ns/bob/sa/default-editor",
                    "request.headers[kubeflow-userid]": "bob@example.com",
                }}],
                "roleRef": {"kind": "ServiceRole", "name": "ml-pipeline-services"},
            })
        );
    }

    #[test]
    fn token_mode_keeps_a_pod_default() {
        let objects = desired_objects(
            &profile("carol", "carol@example.com"),
            &config("kfpAccess: token"),
        );
        assert_eq!(objects.len(), 1);
        let pd = &objects[0];
        assert_eq!(
            pd.types.as_ref().unwrap().api_version,
            "kubeflow.org/v1alpha1"
        );
        assert_eq!(pd.metadata.name.as_deref(), Some("access-ml-pipeline"));
        assert_eq!(pd.metadata.namespace.as_deref(), Some("carol"));
        let spec = &pd.data["spec"];
        assert_eq!(
            spec["selector"],
            json!({"matchLabels": {"access-ml-pipeline": "true"}})
        );
        assert_eq!(
            spec["env"][0],
            json!({"name": "KF_PIPELINES_SA_TOKEN_PATH", "value": "/var/run/secrets/kubeflow/pipelines/token"})
        );
        assert_eq!(
            spec["volumeMounts"][0]["mountPath"],
            "/var/run/secrets/kubeflow/pipelines"
        );
        assert_eq!(
            spec["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"],
            json!({"path": "token", "expirationSeconds": 7200, "audience": "pipelines.kubeflow.org"})
        );
    }

    #[test]
    fn profile_without_usable_owner_gets_no_header_objects() {
        let kinds = |p: &Profile, mode: &str| {
            desired_objects(p, &config(mode))
                .iter()
                .map(|o| o.types.as_ref().unwrap().kind.clone())
                .collect::<Vec<_>>()
        };
        let mut p = profile("nobody", "");
        assert!(kinds(&p, "kfpAccess: header").is_empty());
        p.spec.owner = None;
        assert!(kinds(&p, "kfpAccess: header").is_empty());
        assert_eq!(kinds(&p, "kfpAccess: token"), ["PodDefault"]);
        let p = profile("eve", "eve\r\nkubeflow-userid: admin");
        assert!(kinds(&p, "kfpAccess: header").is_empty());
    }

    #[test]
    fn owner_problems() {
        for ok in [
            "alice@example.com",
            "a%b",
            "%REQ(x-impersonate)%",
            "名前",
            "a*b",
            "a b",
        ] {
            assert_eq!(owner_problem(ok), None, "{ok:?}");
        }
        assert_eq!(owner_problem(""), Some(OwnerProblem::Empty));
        for control in ["a\rb", "a\nb", "a\0b", "\u{1f}a", "a\u{7f}", "\t"] {
            assert_eq!(
                owner_problem(control),
                Some(OwnerProblem::ControlCharacter),
                "{control:?}"
            );
        }
        for wildcard in ["*", "*@example.com", "alice*"] {
            assert_eq!(
                owner_problem(wildcard),
                Some(OwnerProblem::Wildcard),
                "{wildcard:?}"
            );
        }
        for spaced in [" alice", "alice "] {
            assert_eq!(owner_problem(spaced), Some(OwnerProblem::SurroundingSpace));
        }
    }

    /// The user id header's value in the EnvoyFilter, and the value the grant admits.
    fn header_value_and_grant(owner: &str, mode: &str) -> (Value, Value) {
        let objects = desired_objects(&profile("alice", owner), &config(mode));
        let ef = objects
            .iter()
            .find(|o| o.types.as_ref().unwrap().kind == "EnvoyFilter")
            .unwrap();
        let value = ef.data["spec"]["configPatches"][0]["patch"]["value"]["request_headers_to_add"]
            [0]["header"]["value"]
            .clone();
        let grant = &objects[0].data["spec"];
        let admitted = match objects[0].types.as_ref().unwrap().kind.as_str() {
            "AuthorizationPolicy" => grant["rules"][0]["when"][0]["values"][0].clone(),
            _ => grant["subjects"][0]["properties"]["request.headers[kubeflow-userid]"].clone(),
        };
        (value, admitted)
    }

    #[test]
    fn percent_signs_reach_envoy_escaped_and_the_grant_as_they_are() {
        for mode in [
            "kfpAccess: header",
            "kfpAccess: header\nistioRbac: service-role-binding",
        ] {
            for (owner, in_envoy) in [
                ("%REQ(x-impersonate)%", "%%REQ(x-impersonate)%%"),
                ("%", "%%"),
                ("100%@x", "100%%@x"),
                ("%%", "%%%%"),
                ("plain@x", "plain@x"),
            ] {
                let (value, admitted) = header_value_and_grant(owner, mode);
                assert_eq!(value, in_envoy, "{mode}: {owner:?}");
                // Envoy turns `%%` back into `%`: the grant matches what arrives.
                assert_eq!(admitted, owner, "{mode}: {owner:?}");
            }
        }
    }

    #[test]
    fn owner_change_changes_the_header_value_and_the_grant() {
        let c = config("kfpAccess: header");
        let before = desired_objects(&profile("alice", "a@x"), &c);
        let after = desired_objects(&profile("alice", "b@x"), &c);
        assert!(!is_up_to_date(&before[0], &after[0]));
        assert!(!is_up_to_date(&before[1], &after[1]));
        assert!(is_up_to_date(&after[0], &after[0]));
    }

    #[test]
    fn up_to_date_compares_maps_by_key_and_lists_whole() {
        let c = config("kfpAccess: header");
        let desired = desired_objects(&profile("alice", "a@x"), &c).remove(0);
        let mut stored = desired.clone();
        stored.data["spec"]["selector"]["matchLabels"]["extra"] = json!("kept by someone else");
        assert!(is_up_to_date(&stored, &desired));
        stored.data["spec"]["action"] = json!("DENY");
        assert!(!is_up_to_date(&stored, &desired));
        let mut stored = desired.clone();
        stored.data["spec"]["rules"][0]["from"]
            .as_array_mut()
            .unwrap()
            .push(json!({"source": {}}));
        assert!(!is_up_to_date(&stored, &desired));
    }

    #[test]
    fn up_to_date_ignores_fields_the_server_adds() {
        let c = config("kfpAccess: header");
        let desired = desired_objects(&profile("alice", "a@x"), &c).remove(1);
        let mut stored = desired.clone();
        stored.metadata.resource_version = Some("42".into());
        stored
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("extra".into(), "x".into());
        assert!(is_up_to_date(&stored, &desired));
        stored
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(PROFILE_LABEL);
        assert!(!is_up_to_date(&stored, &desired));
    }
}
