//! The end-to-end checks every mode runs, through the real API server.
//!
//! A scenario is one test binary: the CRDs the control plane serves and the settings `serve`
//! runs with. Each test uses its own namespaces, so the tests of a binary run in parallel.

use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, DynamicObject, Patch, PatchParams},
};
use serde_json::{Value, json};
use tenancy_fixer::{
    config::{Config, Settings},
    istio::{self, Home, ManagedKind},
    model::Profile,
};

use super::*;
use tenancy_fixer::local::WebhookTls;

pub struct Scenario {
    /// CRDs the control plane serves (`<set>/<CRD name>` under target/crds, see testenv/crds.lock).
    pub crds: &'static [&'static str],
    /// The settings file `serve` runs with.
    pub settings: &'static str,
    /// What `auto` must resolve to: the kinds kept per profile.
    pub expected_kinds: &'static [ManagedKind],
}

/// A current cluster: Kubeflow, Katib and Istio as released today (no `rbac.istio.io`).
pub const MODERN_CRDS: &[&str] = &[
    "kubeflow/profiles.kubeflow.org",
    "kubeflow/poddefaults.kubeflow.org",
    "katib/trials.kubeflow.org",
    "istio/envoyfilters.networking.istio.io",
    "istio/authorizationpolicies.security.istio.io",
];
/// A legacy cluster: Istio 1.5's own CRDs, `rbac.istio.io` included.
pub const LEGACY_CRDS: &[&str] = &[
    "kubeflow/profiles.kubeflow.org",
    "kubeflow/poddefaults.kubeflow.org",
    "katib/trials.kubeflow.org",
    "istio-1.5/envoyfilters.networking.istio.io",
    "istio-1.5/authorizationpolicies.security.istio.io",
    "istio-1.5/servicerolebindings.rbac.istio.io",
    "istio-1.5/serviceroles.rbac.istio.io",
];
/// Every kind tenancy-fixer manages, each in the Istio generation that has it.
pub const ALL_CRDS: &[&str] = &[
    "kubeflow/profiles.kubeflow.org",
    "kubeflow/poddefaults.kubeflow.org",
    "katib/trials.kubeflow.org",
    "istio/envoyfilters.networking.istio.io",
    "istio/authorizationpolicies.security.istio.io",
    "istio-1.5/servicerolebindings.rbac.istio.io",
    "istio-1.5/serviceroles.rbac.istio.io",
];

struct Running {
    plane: &'static ControlPlane,
    tls: WebhookTls,
    serve: Serve,
}

static RUNNING: OnceLock<Running> = OnceLock::new();
static READY: tokio::sync::OnceCell<Config> = tokio::sync::OnceCell::const_new();

/// Starts (once per binary) the control plane and `serve`, registers the webhook, and returns a
/// client plus the configuration as `serve` resolved it.
pub async fn setup(scenario: &Scenario) -> (Client, Config) {
    let running = RUNNING.get_or_init(|| {
        let plane = control_plane(scenario.crds);
        let tls = webhook_tls(&tempdir("tls"));
        let serve = Serve::start(plane, scenario.settings, &tls, 0);
        Running { plane, tls, serve }
    });
    let client = running.plane.client().await;
    let config = READY
        .get_or_init(|| async {
            let caps = tenancy_fixer::controller::discover(&client).await.unwrap();
            let config = Settings::from_yaml(scenario.settings, "scenario")
                .unwrap()
                .resolve(&caps);
            ensure_namespace(&client, &config.settings.kubeflow_namespace).await;
            register_webhook(&client, &running.serve.url(), &running.tls, &config).await;
            config
        })
        .await
        .clone();
    assert_eq!(
        ManagedKind::wanted(&config),
        scenario.expected_kinds,
        "auto resolved differently"
    );
    (client, config)
}

pub fn managed_api(
    client: &Client,
    kind: ManagedKind,
    profile: &str,
    config: &Config,
) -> Api<DynamicObject> {
    let namespace = match kind.home() {
        Home::Kubeflow => config.settings.kubeflow_namespace.clone(),
        Home::Profile => profile.to_string(),
    };
    Api::namespaced_with(client.clone(), &namespace, &kind.api_resource())
}

pub fn profile_manifest(name: &str, owner: &str) -> Value {
    json!({
        "apiVersion": "kubeflow.org/v1",
        "kind": "Profile",
        "metadata": {"name": name},
        "spec": {"owner": {"kind": "User", "name": owner}},
    })
}

/// Waits until every wanted object for `profile` is stored as the builders make it, and
/// returns them.
pub async fn converged(client: &Client, name: &str, config: &Config) -> Vec<DynamicObject> {
    let profiles: Api<Profile> = Api::all(client.clone());
    let mut stored = Vec::new();
    for kind in ManagedKind::wanted(config) {
        let api = managed_api(client, kind, name, config);
        let object = eventually(&format!("{kind:?} for {name} up to date"), || async {
            let profile = profiles.get(name).await.ok()?;
            let desired = istio::build(kind, &profile, config);
            let actual = api.get_opt(&kind.object_name(name, config)).await.ok()??;
            istio::is_up_to_date(&actual, &desired).then_some(actual)
        })
        .await;
        stored.push(object);
    }
    stored
}

pub async fn gone(api: &Api<DynamicObject>, name: &str, what: &str) {
    eventually(what, || async {
        api.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}

/// Behaviour 1: objects follow the profile, its owner, its namespace; drift is repaired.
pub async fn profile_objects_follow_profile_and_namespace(scenario: &Scenario, name: &str) {
    let (client, config) = setup(scenario).await;
    ensure_namespace(&client, name).await;
    create(&client, None, &profile_manifest(name, "first@example.com")).await;

    let stored = converged(&client, name, &config).await;
    for object in &stored {
        assert_eq!(object.labels()[istio::MANAGED_BY_LABEL], istio::MANAGED_BY);
        assert_eq!(object.labels()[istio::PROFILE_LABEL], name);
        assert_eq!(object.owner_references()[0].kind, "Profile");
        assert_eq!(object.owner_references()[0].name, name);
        let spec = &object.data["spec"];
        match object.types.as_ref().unwrap().kind.as_str() {
            "EnvoyFilter" => assert_eq!(
                spec["configPatches"][0]["patch"]["value"]["request_headers_to_add"][0]["header"],
                json!({"key": "kubeflow-userid", "value": "first@example.com"})
            ),
            "AuthorizationPolicy" => assert_eq!(
                spec["rules"][0]["from"][0]["source"]["principals"],
                json!([format!("cluster.local/ns/{name}/sa/default-editor")])
            ),
            "ServiceRoleBinding" => {
                assert_eq!(
                    spec["roleRef"],
                    json!({"kind": "ServiceRole", "name": "ml-pipeline-services"})
                );
                assert_eq!(
                    spec["subjects"][0]["properties"]["source.principal"],
                    format!("cluster.local/ns/{name}/sa/default-editor")
                );
            }
            "PodDefault" => assert_eq!(spec["env"][0]["name"], "KF_PIPELINES_SA_TOKEN_PATH"),
            other => panic!("unexpected kind {other}"),
        }
    }
    // Kinds the mode does not want are not created.
    for kind in ManagedKind::ALL
        .into_iter()
        .filter(|k| !ManagedKind::wanted(&config).contains(k))
    {
        let api = managed_api(&client, kind, name, &config);
        if let Ok(found) = api.get_opt(&kind.object_name(name, &config)).await {
            assert!(
                found.is_none(),
                "{kind:?} created in a mode that does not want it"
            );
        }
    }

    // Owner change: the objects follow.
    let profiles: Api<DynamicObject> = api_for(&client, None, &profile_manifest(name, "")).await;
    let owner = json!({"spec": {"owner": {"kind": "User", "name": "second@example.com"}}});
    profiles
        .patch(name, &PatchParams::default(), &Patch::Merge(&owner))
        .await
        .unwrap();
    let stored = converged(&client, name, &config).await;
    if let Some(filter) = stored
        .iter()
        .find(|o| o.types.as_ref().unwrap().kind == "EnvoyFilter")
    {
        assert_eq!(
            filter.data["spec"]["configPatches"][0]["patch"]["value"]["request_headers_to_add"][0]
                ["header"]["value"],
            "second@example.com"
        );
    }

    // Someone deletes one, someone edits another: both come back.
    let kinds = ManagedKind::wanted(&config);
    let first = managed_api(&client, kinds[0], name, &config);
    let first_name = kinds[0].object_name(name, &config);
    let uid = first.get(&first_name).await.unwrap().uid();
    first
        .delete(&first_name, &DeleteParams::default())
        .await
        .unwrap();
    eventually("deleted object restored", || async {
        let again = first.get_opt(&first_name).await.ok()??;
        (again.uid() != uid).then_some(())
    })
    .await;
    let last = *kinds.last().unwrap();
    let last_api = managed_api(&client, last, name, &config);
    let last_name = last.object_name(name, &config);
    let spec = last_api.get(&last_name).await.unwrap().data["spec"].clone();
    let list_key = spec
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, v)| v.is_array())
        .map(|(k, _)| k.clone())
        .unwrap();
    let tamper = json!({"spec": {list_key.clone(): []}});
    last_api
        .patch(&last_name, &PatchParams::default(), &Patch::Merge(&tamper))
        .await
        .unwrap();
    let restored = converged(&client, name, &config).await;
    assert_eq!(
        restored.last().unwrap().data["spec"][&list_key],
        spec[&list_key],
        "edited {list_key} restored"
    );

    // Namespace goes: everything goes, the grant in the Kubeflow namespace included.
    delete_namespace(&client, name).await;
    for kind in ManagedKind::wanted(&config) {
        gone(
            &managed_api(&client, kind, name, &config),
            &kind.object_name(name, &config),
            "objects removed with the namespace",
        )
        .await;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    eventually("namespace deleted", || async {
        namespaces.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;

    // It comes back: so do the objects.
    ensure_namespace(&client, name).await;
    converged(&client, name, &config).await;

    // Profile goes: everything goes, and the profile is not held by us.
    profiles
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    for kind in ManagedKind::wanted(&config) {
        gone(
            &managed_api(&client, kind, name, &config),
            &kind.object_name(name, &config),
            "objects removed with the profile",
        )
        .await;
    }
    gone(&profiles, name, "profile deleted").await;
    delete_namespace(&client, name).await;
}

fn trial_manifest(version: &str, name: &str) -> Value {
    json!({
        "apiVersion": format!("kubeflow.org/{version}"),
        "kind": "Trial",
        "metadata": {"name": name},
        "spec": {"objective": {"type": "maximize", "objectiveMetricName": "accuracy"}},
    })
}

fn job_manifest(name: &str, owner: Option<(&str, &str, &str)>) -> Value {
    let mut job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"template": {
            "metadata": {"labels": {"app": "train"}},
            "spec": {
                "restartPolicy": "Never",
                "serviceAccountName": "pipeline-runner",
                "containers": [{"name": "training-container", "image": "python:3", "command": ["python3", "train.py"]}],
            },
        }},
    });
    if let Some((api_version, kind, uid)) = owner {
        job["metadata"]["ownerReferences"] = json!([{"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "controller": true}]);
    }
    job
}

/// Arguments a shell would interpret if they were not quoted.
const NASTY_ARGS: [&str; 5] = ["it's", "$(touch /tmp/pwned)", "a  b", "\"dq\"", "`id`"];

fn katib_pod_manifest(name: &str, job: &str, job_uid: &str, native_proxy: bool) -> Value {
    let mut args = vec!["--lr=0.1"];
    args.extend(NASTY_ARGS);
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"kubeflow-extension": "true", "job-name": job, "batch.kubernetes.io/job-name": job},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": job_uid, "controller": true}],
        },
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": "default-editor",
            "shareProcessNamespace": true,
            "containers": [
                {"name": "training-container", "image": "python:3", "command": ["python3", "/opt/train.py"], "args": args},
                {"name": "metrics-logger-and-collector", "image": "katib/file-metrics-collector",
                 "args": ["-t", name, "-m", "accuracy", "-s-db", "katib-db-manager.kubeflow:6789", "-path", "/var/log/katib/metrics.log"]},
                {"name": "istio-proxy", "image": "istio/proxyv2", "args": ["proxy", "sidecar"]},
            ],
        },
    });
    if native_proxy {
        let proxy = pod["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .pop()
            .unwrap();
        let mut init = proxy;
        init["restartPolicy"] = json!("Always");
        pod["spec"]["initContainers"] = json!([init]);
    }
    pod
}

/// Creates `manifest` through the API server and checks it was stored exactly as the offline
/// rules say; returns the stored object.
async fn stored_as_rules_say(
    client: &Client,
    namespace: &str,
    manifest: &Value,
    config: &Config,
) -> Value {
    let stored = create(client, Some(namespace), manifest).await;
    assert_stored_as(&stored, &expected(manifest, namespace, config));
    stored
}

fn label<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object["metadata"]["labels"][key].as_str()
}

/// Behaviours 2-5 (and token injection): what the API server stores.
pub async fn workloads_are_stored_mutated(scenario: &Scenario, ns: &str) {
    let (client, config) = setup(scenario).await;
    let token_mode = ManagedKind::wanted(&config).contains(&ManagedKind::PodDefault);
    ensure_namespace(&client, ns).await;

    // Notebook pods get the label (and, in token mode, the KFP token).
    let notebook = stored_as_rules_say(
        &client,
        ns,
        &pod_json("nb-0", &[("notebook-name", "nb")]),
        &config,
    )
    .await;
    assert_eq!(label(&notebook, "kubeflow-extension"), Some("true"));
    let env_names: Vec<_> = notebook["spec"]["containers"][0]["env"]
        .as_array()
        .map(|env| {
            env.iter()
                .map(|e| e["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        env_names.contains(&"KF_PIPELINES_SA_TOKEN_PATH".to_string()),
        token_mode
    );

    // Plain pods are stored unchanged; a pod may not claim the reserved label.
    let plain_manifest = pod_json("plain", &[("app", "x")]);
    let plain = create(&client, Some(ns), &plain_manifest).await;
    assert_stored_as(&plain, &plain_manifest);
    assert_eq!(plain["metadata"]["labels"], json!({"app": "x"}));
    assert!(plain["metadata"].get("annotations").is_none());
    let claimed = create(
        &client,
        Some(ns),
        &pod_json("claims", &[("kubeflow-extension", "true")]),
    )
    .await;
    assert_eq!(label(&claimed, "kubeflow-extension"), None);

    // kube-system is never touched.
    let system = create(
        &client,
        Some("kube-system"),
        &pod_json(&format!("{ns}-nb"), &[("notebook-name", "nb")]),
    )
    .await;
    assert_eq!(system["metadata"]["labels"], json!({"notebook-name": "nb"}));
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), "kube-system")
        .delete(&format!("{ns}-nb"), &DeleteParams::default())
        .await
        .unwrap();

    // Trials outside the Kubeflow namespace are labelled; inside they are not. (Katib's CRD
    // serves v1beta1 only; v1alpha3 Trials, from Katib <= 0.10, are covered by tests/http.rs.)
    let trial =
        stored_as_rules_say(&client, ns, &trial_manifest("v1beta1", "trial-1"), &config).await;
    assert_eq!(label(&trial, "kubeflow-extension"), Some("true"));
    let kf = &config.settings.kubeflow_namespace;
    let in_kubeflow = create(
        &client,
        Some(kf),
        &trial_manifest("v1beta1", &format!("{ns}-trial")),
    )
    .await;
    assert_eq!(label(&in_kubeflow, "kubeflow-extension"), None);

    // Trial Jobs: label, sidecar, editor account (and hold, where the mode says).
    let trial_uid = trial["metadata"]["uid"].as_str().unwrap();
    let job = stored_as_rules_say(
        &client,
        ns,
        &job_manifest(
            "trial-1",
            Some(("kubeflow.org/v1beta1", "Trial", trial_uid)),
        ),
        &config,
    )
    .await;
    let template = &job["spec"]["template"];
    assert_eq!(template["metadata"]["labels"]["kubeflow-extension"], "true");
    assert_eq!(
        template["metadata"]["annotations"]["sidecar.istio.io/inject"],
        "true"
    );
    assert_eq!(template["spec"]["serviceAccountName"], "default-editor");
    let plain_job = create(&client, Some(ns), &job_manifest("not-a-trial", None)).await;
    assert_stored_as(&plain_job, &job_manifest("not-a-trial", None));
    assert_eq!(
        plain_job["spec"]["template"]["spec"]["serviceAccountName"],
        "pipeline-runner"
    );
    assert!(
        plain_job["spec"]["template"]["metadata"]
            .get("annotations")
            .is_none()
    );

    // Katib trial pods: training waits for the proxy, the collector stops it.
    let job_uid = job["metadata"]["uid"].as_str().unwrap();
    let katib = stored_as_rules_say(
        &client,
        ns,
        &katib_pod_manifest("trial-1-pod", "trial-1", job_uid, false),
        &config,
    )
    .await;
    let containers = &katib["spec"]["containers"];
    assert_eq!(containers[1]["command"][0], "/bin/sh", "collector wrapped");
    assert!(
        containers[1]["command"][2]
            .as_str()
            .unwrap()
            .contains("'-w' 'false'")
    );
    assert!(katib["spec"]["containers"][1].get("args").is_none());
    assert_eq!(
        containers[2]["args"],
        json!(["proxy", "sidecar"]),
        "proxy untouched"
    );
    assert!(
        katib["metadata"]["annotations"][tenancy_fixer::policy::WRAPPED_ANNOTATION].is_string()
    );
    let native = create(
        &client,
        Some(ns),
        &katib_pod_manifest("trial-1-native", "trial-1", job_uid, true),
    )
    .await;
    assert_eq!(
        native["spec"]["containers"][1]["args"][0], "-t",
        "nothing wrapped when the proxy is a native sidecar"
    );
    assert!(native["spec"]["containers"][0]["command"][0] == "python3");

    delete_namespace(&client, ns).await;
}
