//! Everything tenancy-fixer writes passes the real upstream schemas. Each object is applied to a
//! control plane serving the upstream CRDs (testenv/crds.lock) as a server-side dry run with
//! `fieldValidation=Strict` — an unknown or duplicate field is an error — and must come back
//! with every field it was sent (nothing pruned, nothing rewritten). The objects: what the
//! controller keeps per profile in each mode, and what the webhook makes of every AdmissionReview
//! fixture in tests/data.

mod support;

use kube::{
    Client,
    api::{Patch, PatchParams},
};
use serde_json::Value;
use support::{
    api_for, assert_stored_as, ensure_namespace, expected, repo_root,
    scenario::{LEGACY_CRDS, MODERN_CRDS},
    start_control_plane,
};
use tenancy_fixer::{
    admission::Target,
    config::{Config, Settings},
    istio::{ManagedKind, desired_objects},
    model::{Profile, ProfileOwner, ProfileSpec},
};

const PROFILE: &str = "schema-alice";

/// Current Kubeflow, Katib and Istio: header mode with an AuthorizationPolicy (and the trial
/// wrapper that waits for readiness), then token mode with a PodDefault. The trial workload
/// kinds' CRDs are served beside them (the API server must accept every upstream file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modern_objects_pass_the_upstream_schemas() {
    let workload_sets = ["katib", "training-operator", "trainer", "jobset"];
    let plane = start_control_plane(&[MODERN_CRDS, &workload_sets].concat());
    let client = plane.client().await;
    let header = config(
        &client,
        "kfpAccess: header\nistioRbac: authorization-policy\nkatib:\n  proxyStartup: wait-ready\n",
    )
    .await;
    let token = config(&client, "kfpAccess: token\n").await;
    assert_written_objects_pass(&client, &header, &[ManagedKind::AuthorizationPolicy]).await;
    assert_written_objects_pass(&client, &token, &[ManagedKind::PodDefault]).await;
}

/// Istio 1.5's own CRDs (`rbac.istio.io` served, so `auto` picks the legacy recipe); the
/// Training Operator's too, for the PyTorchJob fixture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_objects_pass_the_istio_1_5_schemas() {
    let plane = start_control_plane(&[LEGACY_CRDS, &["training-operator"]].concat());
    let client = plane.client().await;
    let legacy = config(&client, "").await;
    assert_written_objects_pass(&client, &legacy, &[ManagedKind::ServiceRoleBinding]).await;
}

/// Settings as `serve` resolves them against this cluster.
async fn config(client: &Client, yaml: &str) -> Config {
    let capabilities = tenancy_fixer::controller::discover(client).await.unwrap();
    Settings::from_yaml(yaml, "test")
        .unwrap()
        .resolve(&capabilities)
}

/// The profile's objects (which must include `kinds` and an EnvoyFilter in header mode) and
/// every fixture as mutated under `config` pass the schemas served.
async fn assert_written_objects_pass(client: &Client, config: &Config, kinds: &[ManagedKind]) {
    let mut profile = Profile::new(
        PROFILE,
        ProfileSpec {
            owner: Some(ProfileOwner {
                kind: "User".into(),
                name: "alice@example.com".into(),
            }),
        },
    );
    profile.metadata.uid = Some("5f1c1b3e-0d6f-4a52-9a51-3b1d3c6f2a10".into());
    let objects: Vec<Value> = desired_objects(&profile, config)
        .iter()
        .map(|object| serde_json::to_value(object).unwrap())
        .collect();
    for kind in kinds {
        assert!(
            objects.iter().any(|o| o["kind"] == kind.gvk().kind),
            "{kind:?} is among the objects kept for {:?}",
            config.modes
        );
    }
    for object in &objects {
        assert_passes(client, object).await;
    }
    for (file, review) in fixtures() {
        let request = &review["request"];
        if request["operation"] != "CREATE" {
            // An UPDATE's object exists only as the server made it (uid-bound selectors):
            // its CREATE is the fixture of the same object.
            continue;
        }
        let object = &request["object"];
        let namespace = request["namespace"].as_str().unwrap();
        let handled = Target::of_api_version(
            object["apiVersion"].as_str().unwrap(),
            object["kind"].as_str().unwrap(),
        );
        if handled.is_none() {
            continue;
        }
        let username = request["userInfo"]["username"].as_str();
        let mut mutated = expected(object, namespace, username, config);
        // What the API server sets itself (the fixtures carry it as the server sent it); a
        // status is written through its subresource, never by a create, nor by our rules.
        mutated.as_object_mut().unwrap().remove("status");
        let metadata = mutated["metadata"].as_object_mut().unwrap();
        for owned_by_server in [
            "creationTimestamp",
            "uid",
            "resourceVersion",
            "managedFields",
        ] {
            metadata.remove(owned_by_server);
        }
        metadata.insert("namespace".into(), namespace.into());
        // Apply needs a name; the API server would derive it from generateName.
        if mutated["metadata"]["name"].is_null() {
            let name = format!(
                "{}schema",
                mutated["metadata"]["generateName"].as_str().unwrap()
            );
            mutated["metadata"]["name"] = name.into();
        }
        eprintln!("fixture {file}:");
        assert_passes(client, &mutated).await;
    }
}

/// `object` is accepted by a strict server-side dry run and comes back with all its fields.
async fn assert_passes(client: &Client, object: &Value) {
    let namespace = object["metadata"]["namespace"].as_str();
    if let Some(namespace) = namespace {
        ensure_namespace(client, namespace).await;
    }
    let name = object["metadata"]["name"].as_str().unwrap();
    let kind = object["kind"].as_str().unwrap();
    let what = format!("{kind} {}/{name}", namespace.unwrap_or(""));
    let params = PatchParams::apply("tenancy-fixer")
        .dry_run()
        .validation_strict();
    let stored = api_for(client, namespace, object)
        .await
        .patch(name, &params, &Patch::Apply(object))
        .await
        .unwrap_or_else(|e| panic!("{what} rejected by the upstream schema: {e}\n{object:#}"));
    eprintln!("{what}: accepted; comparing with what was sent");
    assert_stored_as(&serde_json::to_value(stored).unwrap(), object);
}

/// Every AdmissionReview fixture, by file name.
fn fixtures() -> Vec<(String, Value)> {
    let mut fixtures: Vec<(String, Value)> = std::fs::read_dir(repo_root().join("tests/data"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let review = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                review,
            )
        })
        .collect();
    fixtures.sort_by(|a, b| a.0.cmp(&b.0));
    fixtures
}
