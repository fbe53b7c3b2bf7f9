//! End to end, across a restart of `serve`: with the webhook down and failurePolicy Ignore,
//! pods are admitted unchanged; what went while we were down (a profile, a namespace) is
//! cleaned up once we are back.

mod support;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::DeleteParams};
use serde_json::json;
use support::{scenario::*, *};
use tenancy_fixer::{
    config::Settings,
    istio::{Home, ManagedKind},
};

const SETTINGS: &str = "kfpAccess: header\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_webhook_fails_open_and_restart_removes_orphans() {
    let plane = control_plane(MODERN_CRDS);
    let client = plane.client().await;
    let tls = webhook_tls(&tempdir("tls"));
    let serve = Serve::start(plane, SETTINGS, &tls, 0);
    let port = serve.port;
    let caps = tenancy_fixer::controller::discover(&client).await.unwrap();
    let config = Settings::from_yaml(SETTINGS, "t").unwrap().resolve(&caps);
    ensure_namespace(&client, &config.settings.kubeflow_namespace).await;
    register_webhook(&client, &serve.url(), &tls, &config).await;

    for name in ["life-gone-profile", "life-gone-namespace"] {
        create_profile(&client, name, "owner@example.com").await;
        converged(&client, name, &config).await;
    }

    serve.stop();

    // Down, failurePolicy Ignore: the pod is admitted, unchanged.
    let manifest = pod_json("nb-while-down", &[("notebook-name", "nb")]);
    let stored = create(&client, Some("life-gone-profile"), &manifest).await;
    assert_stored_as(&stored, &manifest);
    assert_eq!(stored["metadata"]["labels"], json!({"notebook-name": "nb"}));
    Api::<Pod>::namespaced(client.clone(), "life-gone-profile")
        .delete("nb-while-down", &DeleteParams::default())
        .await
        .unwrap();

    // While down: one profile is deleted, another profile's namespace is deleted.
    let profiles = api_for(&client, None, &profile_manifest("x", "")).await;
    profiles
        .delete("life-gone-profile", &DeleteParams::default())
        .await
        .unwrap();
    delete_namespace(&client, "life-gone-namespace").await;
    let grant = ManagedKind::AuthorizationPolicy;
    let grants = managed_api(&client, grant, "life-gone-namespace", &config);
    assert_eq!(grant.home(), Home::Kubeflow);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(
        grants
            .get_opt(&grant.object_name("life-gone-namespace", &config))
            .await
            .unwrap()
            .is_some(),
        "nobody removes the grant while we are down"
    );

    // Back: both are cleaned up, and the deleted profile is released.
    let _serve = Serve::start(plane, SETTINGS, &tls, port);
    for kind in ManagedKind::wanted(&config) {
        for name in ["life-gone-profile", "life-gone-namespace"] {
            let api = managed_api(&client, kind, name, &config);
            gone(
                &api,
                &kind.object_name(name, &config),
                &format!("{kind:?} of {name} removed after restart"),
            )
            .await;
        }
    }
    gone(&profiles, "life-gone-profile", "deleted profile released").await;
}
