//! End to end, the controller against objects it did not make and Profiles it must refuse
//! (issues 8.4, 9.4, 9.5, 10.3, 10.5): a user's own `access-ml-pipeline` PodDefault is neither
//! changed by token mode nor deleted by a switch to header mode; a different one in the way is
//! reported; Profiles named `kubeflow` and `default`, a Profile whose namespace it does not
//! control, and an owner name that cannot go into a header get nothing; every refusal is an Event
//! on the Profile. The controller runs in-process, once per mode.

mod support;

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::events::v1::Event;
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, ListParams},
};
use serde_json::{Value, json};
use support::{scenario::*, *};
use tenancy_fixer::{
    config::{Config, Settings},
    controller::{self, Stats},
    istio::{self, ManagedKind},
    manifests::EVENTS_NAMESPACE,
};
use tokio::task::JoinHandle;

/// The PodDefault the Kubeflow Pipelines docs tell users to create, with `audience`.
fn users_pod_default(audience: &str) -> Value {
    json!({
        "apiVersion": "kubeflow.org/v1alpha1",
        "kind": "PodDefault",
        "metadata": {"name": "access-ml-pipeline"},
        "spec": {
            "desc": "Allow access to Kubeflow Pipelines",
            "selector": {"matchLabels": {"access-ml-pipeline": "true"}},
            "volumes": [{"name": "volume-kf-pipeline-token", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 7200, "audience": audience}}]}}],
            "volumeMounts": [{"mountPath": "/var/run/secrets/kubeflow/pipelines",
                              "name": "volume-kf-pipeline-token", "readOnly": true}],
            "env": [{"name": "KF_PIPELINES_SA_TOKEN_PATH",
                     "value": "/var/run/secrets/kubeflow/pipelines/token"}],
        },
    })
}

async fn start(client: &Client, settings: &str) -> (JoinHandle<controller::Result<()>>, Config) {
    let caps = controller::discover(client).await.unwrap();
    let config = Settings::from_yaml(settings, "test")
        .unwrap()
        .resolve(&caps);
    let task = tokio::spawn(controller::run_with_stats(
        client.clone(),
        Arc::new(config.clone()),
        Arc::new(Stats::default()),
    ));
    (task, config)
}

/// Waits for an Event with `reason` on the Profile `profile`; returns its note.
async fn event_on(client: &Client, profile: &str, reason: &str) -> String {
    let events: Api<Event> = Api::namespaced(client.clone(), EVENTS_NAMESPACE);
    eventually(&format!("{reason} event on {profile}"), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find_map(|e| {
            let regarding = e.regarding.as_ref()?;
            (e.reason.as_deref() == Some(reason)
                && regarding.kind.as_deref() == Some("Profile")
                && regarding.name.as_deref() == Some(profile))
            .then(|| e.note.clone().unwrap_or_default())
        })
    })
    .await
}

/// Every managed object the cluster holds, of the kinds served here.
async fn all_managed(client: &Client) -> Vec<DynamicObject> {
    let mut out = Vec::new();
    for kind in [
        ManagedKind::PodDefault,
        ManagedKind::EnvoyFilter,
        ManagedKind::AuthorizationPolicy,
    ] {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.api_resource());
        out.extend(api.list(&ListParams::default()).await.unwrap().items);
    }
    out
}

/// No managed object made for any of the `refused` profiles: none labelled for it, no grant
/// named after it, no EnvoyFilter or PodDefault in its namespace (grants of other profiles live
/// in `kubeflow`).
async fn nothing_for(client: &Client, refused: &[&str]) {
    for object in all_managed(client).await {
        let (namespace, name) = (object.namespace().unwrap_or_default(), object.name_any());
        let is_grant = object.types.as_ref().unwrap().kind == "AuthorizationPolicy";
        for profile in refused {
            assert!(
                object
                    .labels()
                    .get(istio::PROFILE_LABEL)
                    .map(String::as_str)
                    != Some(profile)
                    && name != format!("bind-ml-pipeline-{profile}")
                    && (is_grant || namespace != *profile),
                "{namespace}/{name} made for refused profile {profile}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_objects_and_refused_profiles_are_left_alone_and_reported() {
    let plane = control_plane(MODERN_CRDS);
    let client = plane.client().await;
    ensure_namespace(&client, "kubeflow").await;
    let pod_defaults = |ns: &str| {
        Api::<DynamicObject>::namespaced_with(
            client.clone(),
            ns,
            &ManagedKind::PodDefault.api_resource(),
        )
    };

    // carol made her own access-ml-pipeline (as the KFP docs say); dave made a different one.
    create_profile(&client, "own-carol", "carol@example.com").await;
    let carols = create(
        &client,
        Some("own-carol"),
        &users_pod_default("pipelines.kubeflow.org"),
    )
    .await;
    create_profile(&client, "own-dave", "dave@example.com").await;
    let daves = create(&client, Some("own-dave"), &users_pod_default("elsewhere")).await;
    create_profile(&client, "own-erin", "erin@example.com").await;
    // An owner name Envoy would reject, and Profiles claiming namespaces they do not control.
    create_profile(&client, "own-oscar", "oscar\r\nkubeflow-userid: admin").await;
    for name in ["kubeflow", "default"] {
        create(
            &client,
            None,
            &profile_manifest(name, "mallory@example.com"),
        )
        .await;
    }
    ensure_namespace(&client, "own-frank").await;
    create(
        &client,
        None,
        &profile_manifest("own-frank", "frank@example.com"),
    )
    .await;

    // Token mode.
    let (token, config) = start(&client, "kfpAccess: token\n").await;
    converged(&client, "own-erin", &config).await;
    let note = event_on(&client, "own-carol", "ExistingObjectUsed").await;
    assert!(note.contains("own-carol/access-ml-pipeline"), "{note}");
    event_on(&client, "own-dave", "ForeignObjectInTheWay").await;
    event_on(&client, "kubeflow", "NamespaceReserved").await;
    event_on(&client, "default", "NamespaceNotOwned").await;
    event_on(&client, "own-frank", "NamespaceNotOwned").await;
    converged(&client, "own-oscar", &config).await; // token mode does not use the owner
    // The users' PodDefaults are exactly as they made them: not one write.
    for (ns, theirs) in [("own-carol", &carols), ("own-dave", &daves)] {
        let now = pod_defaults(ns).get("access-ml-pipeline").await.unwrap();
        assert_eq!(
            now.resource_version().as_deref(),
            theirs["metadata"]["resourceVersion"].as_str()
        );
        assert!(now.labels().is_empty() && now.owner_references().is_empty());
    }
    nothing_for(&client, &["kubeflow", "default", "own-frank"]).await;
    token.abort();
    let _ = token.await;

    // Header mode: ours go (reported), the users' stay; carol now gets the header objects.
    let (header, config) = start(&client, "kfpAccess: header\n").await;
    converged(&client, "own-carol", &config).await;
    let note = event_on(&client, "own-erin", "ObjectRemoved").await;
    assert!(
        note.contains("PodDefault own-erin/access-ml-pipeline"),
        "{note}"
    );
    gone(
        &pod_defaults("own-erin"),
        "access-ml-pipeline",
        "our PodDefault removed",
    )
    .await;
    let note = event_on(&client, "own-oscar", "OwnerNotUsable").await;
    assert!(note.contains("control character"), "{note}");
    assert!(!note.contains('\r'), "{note}");
    // Give the controller time to (wrongly) act before looking at what must not change.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (ns, theirs) in [("own-carol", &carols), ("own-dave", &daves)] {
        let now = pod_defaults(ns).get("access-ml-pipeline").await.unwrap();
        assert_eq!(
            now.uid(),
            theirs["metadata"]["uid"].as_str().map(Into::into)
        );
        assert_eq!(
            now.resource_version().as_deref(),
            theirs["metadata"]["resourceVersion"].as_str()
        );
    }
    let filters = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        "own-oscar",
        &ManagedKind::EnvoyFilter.api_resource(),
    );
    assert!(
        filters
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    nothing_for(&client, &["kubeflow", "default", "own-frank", "own-oscar"]).await;
    header.abort();
    let _ = header.await;
}
