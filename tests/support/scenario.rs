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

/// Creates the Profile, then its namespace the way the Kubeflow profile-controller makes it.
/// Returns the stored Profile.
pub async fn create_profile(client: &Client, name: &str, owner: &str) -> Value {
    let profile = create(client, None, &profile_manifest(name, owner)).await;
    create_profile_namespace(client, &profile).await;
    profile
}

/// The namespace of the stored `profile` as the Kubeflow profile-controller makes it.
pub async fn create_profile_namespace(client: &Client, profile: &Value) {
    tenancy_fixer::local::ensure_profile_namespace(client, profile)
        .await
        .unwrap();
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
    create_profile(&client, name, "first@example.com").await;

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
                spec["rules"],
                json!([{
                    "from": [{"source": {"principals": [format!("cluster.local/ns/{name}/sa/default-editor")]}}],
                    "when": [{"key": "request.headers[kubeflow-userid]", "values": ["first@example.com"]}],
                }])
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
    let profile = serde_json::to_value(profiles.get(name).await.unwrap()).unwrap();
    create_profile_namespace(&client, &profile).await;
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

    // What the controller did shows in its metrics.
    let scrape = RUNNING.get().unwrap().serve.scrape();
    let at_least = |series: &str, least: f64| {
        let value = sample(&scrape, series).unwrap_or_else(|| panic!("no {series}\n{scrape}"));
        assert!(value >= least, "{series} = {value}\n{scrape}");
    };
    at_least("tenancy_fixer_controller_reconciles_total", 1.0);
    at_least("tenancy_fixer_controller_applies_total", 1.0);
    at_least("tenancy_fixer_controller_deletes_total", 0.0);
    assert_eq!(
        sample(&scrape, "tenancy_fixer_controller_leader"),
        Some(1.0),
        "{scrape}"
    );
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

/// Who the test acts as: the admin of testenv's kubeconfig, or a user it impersonates.
const ADMIN: &str = "admin";
const KATIB_CONTROLLER: &str = "system:serviceaccount:kubeflow:katib-controller";
const JOB_CONTROLLER: &str = "system:serviceaccount:kube-system:job-controller";
const TENANT: &str = "tenant@example.com";

/// A client acting as `user` (impersonated by the admin), with the rights it has in a cluster:
/// the controllers all of them (bound once), the tenant a contributor's on pods and Jobs in
/// `namespace` (testenv runs no ClusterRole aggregation, so Kubeflow's `kubeflow-edit` and
/// Kubernetes' `edit` are empty here: the Role spells those rights out).
async fn client_as(admin: &Client, user: &str, namespace: &str) -> Client {
    let subjects = json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]);
    let grants = if user == TENANT {
        let verbs = json!([
            "get", "list", "watch", "create", "update", "patch", "delete"
        ]);
        vec![
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "tenant", "namespace": namespace},
                "rules": [
                    {"apiGroups": [""], "resources": ["pods"], "verbs": verbs},
                    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": verbs},
                ],
            }),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "tenant", "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant"},
                "subjects": subjects,
            }),
        ]
    } else {
        vec![json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": format!("e2e-{}", user.replace(':', "-"))},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": subjects,
        })]
    };
    for grant in grants {
        let scope = grant["metadata"]["namespace"].as_str();
        let api = api_for(admin, scope, &grant).await;
        let object = serde_json::from_value(grant.clone()).unwrap();
        if let Err(error) = api.create(&kube::api::PostParams::default(), &object).await {
            // Bound before, for another test of this binary: fine.
            assert!(
                error.to_string().contains("already exists"),
                "{grant}: {error}"
            );
        }
    }
    let plane = RUNNING.get().unwrap().plane;
    let kubeconfig = kube::config::Kubeconfig::read_from(plane.kubeconfig()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some(user.to_string());
    let client = Client::try_from(config).unwrap();
    // A new binding reaches the authorizer's cache a moment later.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    eventually(&format!("{user} may list pods in {namespace}"), || async {
        pods.list(&Default::default()).await.ok().map(|_| ())
    })
    .await;
    client
}

/// Creates `manifest` through the API server as `user` and checks it was stored exactly as the
/// offline rules say; returns the stored object.
async fn stored_as_rules_say(
    admin: &Client,
    user: &str,
    namespace: &str,
    manifest: &Value,
    config: &Config,
) -> Value {
    let client = if user == ADMIN {
        admin.clone()
    } else {
        client_as(admin, user, namespace).await
    };
    let stored = create(&client, Some(namespace), manifest).await;
    assert_stored_as(&stored, &expected(manifest, namespace, Some(user), config));
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
        ADMIN,
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
    let trial = stored_as_rules_say(
        &client,
        ADMIN,
        ns,
        &trial_manifest("v1beta1", "trial-1"),
        &config,
    )
    .await;
    assert_eq!(label(&trial, "kubeflow-extension"), Some("true"));
    let kf = &config.settings.kubeflow_namespace;
    let in_kubeflow = create(
        &client,
        Some(kf),
        &trial_manifest("v1beta1", &format!("{ns}-trial")),
    )
    .await;
    assert_eq!(label(&in_kubeflow, "kubeflow-extension"), None);

    // Trial Jobs, made by Katib's controller: label, sidecar, editor account (and hold, where
    // the mode says).
    let trial_uid = trial["metadata"]["uid"].as_str().unwrap();
    let job = stored_as_rules_say(
        &client,
        KATIB_CONTROLLER,
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
        template["metadata"]["labels"]["sidecar.istio.io/inject"],
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

    // The same Job made by the admin (not a trusted controller): nothing added, label removed.
    let mut forged = job_manifest("forged", Some(("kubeflow.org/v1beta1", "Trial", trial_uid)));
    forged["spec"]["template"]["metadata"]["labels"]["kubeflow-extension"] = json!("true");
    let forged = create(&client, Some(ns), &forged).await;
    let template = &forged["spec"]["template"];
    assert_eq!(
        template["metadata"]["labels"]["kubeflow-extension"],
        Value::Null
    );
    assert_eq!(
        template["metadata"]["labels"]["sidecar.istio.io/inject"],
        Value::Null
    );
    assert_eq!(template["spec"]["serviceAccountName"], "pipeline-runner");

    // Katib trial pods, made by the Job controller: training waits for the proxy, the collector
    // stops it.
    let job_uid = job["metadata"]["uid"].as_str().unwrap();
    let katib = stored_as_rules_say(
        &client,
        JOB_CONTROLLER,
        ns,
        &katib_pod_manifest("trial-1-pod", "trial-1", job_uid, false),
        &config,
    )
    .await;
    let containers = &katib["spec"]["containers"];
    assert_eq!(containers[1]["command"][0], "/bin/sh", "collector wrapped");
    assert_eq!(containers[1]["command"][3], "sh");
    let words = containers[1]["args"].as_array().unwrap();
    assert!(
        words.windows(2).any(|w| w == [json!("-w"), json!("false")]),
        "{words:?}"
    );
    assert_eq!(
        containers[2]["args"],
        json!(["proxy", "sidecar"]),
        "proxy untouched"
    );
    assert!(
        katib["metadata"]["annotations"][tenancy_fixer::policy::WRAPPED_ANNOTATION].is_string()
    );
    let native = create(
        &client_as(&client, JOB_CONTROLLER, ns).await,
        Some(ns),
        &katib_pod_manifest("trial-1-native", "trial-1", job_uid, true),
    )
    .await;
    assert_eq!(
        native["spec"]["containers"][1]["args"].as_array().unwrap()[..2],
        [json!("-w"), json!("false")],
        "a native sidecar: the collector only stops waiting for it"
    );
    assert!(native["spec"]["containers"][1].get("command").is_none());
    assert!(native["spec"]["containers"][0]["command"][0] == "python3");
    assert_eq!(label(&native, "kubeflow-extension"), Some("true"));

    tenant_cannot_obtain_the_label(&client, ns).await;
    delete_namespace(&client, ns).await;
    admission_shows_in_the_metrics();
}

/// The reviews above (the API server calling the webhook) counted by webhook, kind, outcome and
/// rule, timed, and the serving certificate's expiry known.
fn admission_shows_in_the_metrics() {
    let scrape = RUNNING.get().unwrap().serve.scrape();
    let value =
        |series: &str| sample(&scrape, series).unwrap_or_else(|| panic!("no {series}\n{scrape}"));
    for (series, least) in [
        (
            r#"tenancy_fixer_admission_requests_total{webhook="/mutate/pods",kind="Pod",outcome="patched"}"#,
            3.0,
        ),
        (
            r#"tenancy_fixer_admission_requests_total{webhook="/mutate/pods",kind="Pod",outcome="unchanged"}"#,
            1.0,
        ),
        (
            r#"tenancy_fixer_admission_requests_total{webhook="/mutate/jobs",kind="Job",outcome="patched"}"#,
            2.0,
        ),
        (
            r#"tenancy_fixer_admission_requests_total{webhook="/mutate/trials",kind="Trial",outcome="patched"}"#,
            1.0,
        ),
        (
            r#"tenancy_fixer_admission_rule_applications_total{rule="notebook-label"}"#,
            1.0,
        ),
        (
            r#"tenancy_fixer_admission_rule_applications_total{rule="trial-workload"}"#,
            1.0,
        ),
        (
            r#"tenancy_fixer_admission_rule_applications_total{rule="reserved-label"}"#,
            1.0,
        ),
        (
            r#"tenancy_fixer_admission_review_seconds_count{webhook="/mutate/pods"}"#,
            4.0,
        ),
    ] {
        assert!(
            value(series) >= least,
            "{series} = {}\n{scrape}",
            value(series)
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        value("tenancy_fixer_certificate_expiry_timestamp_seconds") > now,
        "{scrape}"
    );
}

/// A namespace contributor (`edit`, not an admin, acting as themselves) cannot get the reserved
/// label onto a pod or a pod template: not at creation, not by naming owners, not by UPDATE.
async fn tenant_cannot_obtain_the_label(admin: &Client, ns: &str) {
    let tenant = client_as(admin, TENANT, ns).await;
    let claims = |name: &str| pod_json(name, &[("kubeflow-extension", "true")]);

    // A bare pod naming a Job of theirs as its controller.
    let own_job = create(&tenant, Some(ns), &job_manifest("tenant-job", None)).await;
    let mut owned = claims("tenant-owned");
    owned["metadata"]["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "Job",
        "name": "tenant-job", "uid": own_job["metadata"]["uid"], "controller": true}]);
    let owned = create(&tenant, Some(ns), &owned).await;
    assert_eq!(label(&owned, "kubeflow-extension"), None);

    // The tenant is told why: the API server passes our warning on (kubectl prints it).
    let request = hyper::Request::post(format!("/api/v1/namespaces/{ns}/pods"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&claims("tenant-warned")).unwrap().into())
        .unwrap();
    let response = tenant.send(request).await.unwrap();
    assert_eq!(response.status(), 201);
    let warnings: Vec<&str> = response
        .headers()
        .get_all("warning")
        .iter()
        .map(|warning| warning.to_str().unwrap())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("tenancy-fixer: label kubeflow-extension removed")),
        "{warnings:?}"
    );

    // `kubectl label pod tenant-pod kubeflow-extension=true`, and `--overwrite` on the notebook.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(tenant.clone(), ns);
    create(&tenant, Some(ns), &pod_json("tenant-pod", &[("app", "x")])).await;
    let add = json!({"metadata": {"labels": {"kubeflow-extension": "true"}}});
    let patched = pods
        .patch("tenant-pod", &PatchParams::default(), &Patch::Merge(&add))
        .await
        .unwrap();
    assert_eq!(patched.labels().get("kubeflow-extension"), None);
    let change = json!({"metadata": {"labels": {"kubeflow-extension": "x"}}});
    let patched = pods
        .patch("nb-0", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap();
    assert_eq!(patched.labels()["kubeflow-extension"], "true");
    // Removing it is allowed.
    let remove = json!({"metadata": {"labels": {"kubeflow-extension": null}}});
    let patched = pods
        .patch("nb-0", &PatchParams::default(), &Patch::Merge(&remove))
        .await
        .unwrap();
    assert_eq!(patched.labels().get("kubeflow-extension"), None);

    // A suspended Job's template labelled by UPDATE.
    let mut suspended = job_manifest("tenant-suspended", None);
    suspended["spec"]["suspend"] = json!(true);
    create(&tenant, Some(ns), &suspended).await;
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(tenant.clone(), ns);
    let add =
        json!({"spec": {"template": {"metadata": {"labels": {"kubeflow-extension": "true"}}}}});
    let patched = jobs
        .patch(
            "tenant-suspended",
            &PatchParams::default(),
            &Patch::Merge(&add),
        )
        .await
        .unwrap();
    let labels = patched
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .labels
        .unwrap();
    assert_eq!(labels.get("kubeflow-extension"), None, "{labels:?}");
}
