//! Faults, end to end against a real API server: the leader killed while it reconciles, `serve`
//! killed while pods stream in (failurePolicy Ignore and Fail), and a conflicting manual edit of
//! one of our objects. Nothing may go missing, be duplicated, or touch a user's object.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    coordination::v1::Lease,
    core::v1::{Namespace, Pod},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use support::{scenario::*, *};
use tenancy_fixer::{
    config::{Config, Settings},
    istio::{Home, MANAGED_BY, MANAGED_BY_LABEL, ManagedKind, PROFILE_LABEL},
    local::WebhookTls,
    manifests::{Endpoint, FailurePolicy, webhook_configuration},
    model::Profile,
};

const SETTINGS: &str = "kfpAccess: header\n";
const LEASE_NAMESPACE: &str = "faults-lease";
const LEASE_NAME: &str = "tenancy-fixer";

async fn config(client: &Client) -> Config {
    let caps = tenancy_fixer::controller::discover(client).await.unwrap();
    Settings::from_yaml(SETTINGS, "t").unwrap().resolve(&caps)
}

/// A Profile and its namespace, made the way Kubeflow's profile-controller makes them.
async fn profile_with_namespace(client: &Client, name: &str) {
    create_profile(client, name, &format!("{name}@example.com")).await;
}

/// A user's own EnvoyFilter in the namespace: it must never be touched.
fn user_filter(name: &str) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": "users-own", "namespace": name, "labels": {"team": "data"}},
        "spec": {"workloadSelector": {"labels": {"app": "mine"}}, "configPatches": []},
    })
}

async fn lease_holder(client: &Client) -> Option<String> {
    let lease = Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE)
        .get_opt(LEASE_NAME)
        .await
        .ok()??;
    lease.spec?.holder_identity
}

fn replica(plane: &'static ControlPlane, tls: &WebhookTls, identity: &str) -> Serve {
    Serve::start_with(
        plane,
        SETTINGS,
        tls,
        0,
        &[
            "--leader-elect",
            "--lease-namespace",
            LEASE_NAMESPACE,
            "--lease-name",
            LEASE_NAME,
            "--lease-identity",
            identity,
        ],
        &[],
        "listening on https://",
    )
}

/// Each profile has exactly the objects we keep (no duplicates, nothing missing) and each
/// user's object is as the user left it.
async fn all_converged(client: &Client, names: &[String], config: &Config, users: &[Value]) {
    for name in names {
        converged(client, name, config).await;
        for kind in ManagedKind::wanted(config) {
            let api = managed_api(client, kind, name, config);
            let ours = api
                .list(&ListParams::default().labels(&format!("{PROFILE_LABEL}={name}")))
                .await
                .unwrap();
            assert_eq!(ours.items.len(), 1, "{kind:?} of {name}: {:?}", ours.items);
        }
    }
    for user in users {
        let api = api_for(client, user["metadata"]["namespace"].as_str(), user).await;
        let now = api
            .get(user["metadata"]["name"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(
            now.metadata.resource_version.as_deref(),
            user["metadata"]["resourceVersion"].as_str(),
            "user object changed: {:?}",
            now
        );
        assert!(!now.labels().contains_key(MANAGED_BY_LABEL));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_mid_reconcile_hands_over_and_converges() {
    let plane = control_plane(MODERN_CRDS);
    let client = plane.client().await;
    let config = config(&client).await;
    ensure_namespace(&client, &config.settings.kubeflow_namespace).await;
    ensure_namespace(&client, LEASE_NAMESPACE).await;
    let tls = webhook_tls(&tempdir("tls"));
    let mut first = Some(replica(plane, &tls, "replica-a"));
    eventually("replica-a leads", || async {
        (lease_holder(&client).await.as_deref() == Some("replica-a")).then_some(())
    })
    .await;
    let second = replica(plane, &tls, "replica-b");

    let names: Vec<String> = (0..60).map(|i| format!("fault-leader-{i}")).collect();
    let mut users = Vec::new();
    for (i, name) in names.iter().enumerate() {
        profile_with_namespace(&client, name).await;
        users.push(create(&client, Some(name), &user_filter(name)).await);
        if i == names.len() / 2 {
            // Mid-way: the leader dies without releasing its lease.
            first.take().unwrap().kill();
            let killed = Instant::now();
            break_ties(&client, killed).await;
        }
    }
    all_converged(&client, &names, &config, &users).await;
    drop(second);
}

/// Waits for replica-b to take the lease over, within the lease's duration and some slack.
async fn break_ties(client: &Client, killed: Instant) {
    let bound = Duration::from_secs(60);
    while lease_holder(client).await.as_deref() != Some("replica-b") {
        assert!(
            killed.elapsed() < bound,
            "replica-b did not take over in {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("replica-b took over {:?} after the kill", killed.elapsed());
}

/// Registers the webhook of `serve_url` with `policy` (the probe shows it is called first).
async fn register(
    client: &Client,
    serve_url: &str,
    tls: &WebhookTls,
    config: &Config,
    policy: FailurePolicy,
) {
    register_webhook(client, serve_url, tls, config).await;
    let mwc = webhook_configuration(
        &Endpoint::Url(serve_url.into()),
        tls.ca_pem.as_bytes(),
        policy,
        config,
    );
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(
            &mwc.metadata.name.clone().unwrap(),
            &PatchParams::apply("faults").force(),
            &Patch::Apply(&mwc),
        )
        .await
        .unwrap();
}

/// Creates notebook pods (dry run) every 20 ms until `stop`; counts rejections and pods stored
/// without the label.
struct Stream {
    created: AtomicUsize,
    rejected: AtomicUsize,
    unlabelled: AtomicUsize,
    stop: AtomicBool,
}

async fn stream_pods(client: Client, ns: String, stream: Arc<Stream>, config: Config) {
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mut i = 0;
    while !stream.stop.load(Ordering::SeqCst) {
        i += 1;
        let pod: Pod = serde_json::from_value(pod_json(
            &format!("nb-{i}"),
            &[(&config.settings.notebook_label, "nb")],
        ))
        .unwrap();
        match pods.create(&dry, &pod).await {
            Ok(stored) => {
                stream.created.fetch_add(1, Ordering::SeqCst);
                if stored
                    .labels()
                    .get(&config.settings.extension_label)
                    .map(String::as_str)
                    != Some("true")
                {
                    stream.unlabelled.fetch_add(1, Ordering::SeqCst);
                }
            }
            Err(_) => {
                stream.rejected.fetch_add(1, Ordering::SeqCst);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_stream_across_a_killed_and_restarted_server() {
    let plane = control_plane(MODERN_CRDS);
    let client = plane.client().await;
    let config = config(&client).await;
    ensure_namespace(&client, &config.settings.kubeflow_namespace).await;
    let ns = "fault-stream".to_string();
    ensure_namespace(&client, &ns).await;
    let tls = webhook_tls(&tempdir("tls"));
    let serve = Serve::start_with(
        plane,
        SETTINGS,
        &tls,
        0,
        &["--no-controller"],
        &[],
        "listening on https://",
    );
    let port = serve.port;
    let mut serve = Some(serve);

    for policy in [FailurePolicy::Ignore, FailurePolicy::Fail] {
        register(
            &client,
            &format!("https://127.0.0.1:{port}"),
            &tls,
            &config,
            policy,
        )
        .await;
        let stream = Arc::new(Stream {
            created: AtomicUsize::new(0),
            rejected: AtomicUsize::new(0),
            unlabelled: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let task = tokio::spawn(stream_pods(
            client.clone(),
            ns.clone(),
            stream.clone(),
            config.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        serve.take().unwrap().kill();
        let down = Instant::now();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let restarted = Serve::start_with(
            plane,
            SETTINGS,
            &tls,
            port,
            &["--no-controller"],
            &[],
            "listening on https://",
        );
        let window = down.elapsed();
        serve = Some(restarted);
        // After the restart every pod is admitted and labelled again.
        let after = stream.created.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let rejected_before_settling = stream.rejected.load(Ordering::SeqCst);
        let unlabelled_before_settling = stream.unlabelled.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        stream.stop.store(true, Ordering::SeqCst);
        task.await.unwrap();
        let (created, rejected, unlabelled) = (
            stream.created.load(Ordering::SeqCst),
            stream.rejected.load(Ordering::SeqCst),
            stream.unlabelled.load(Ordering::SeqCst),
        );
        eprintln!(
            "{policy:?}: down {window:?}; created {created}, rejected {rejected}, unlabelled {unlabelled}"
        );
        assert!(
            created > after,
            "{policy:?}: pods are admitted after the restart"
        );
        assert_eq!(
            rejected, rejected_before_settling,
            "{policy:?}: rejections only while down"
        );
        assert_eq!(
            unlabelled, unlabelled_before_settling,
            "{policy:?}: every pod after the restart is labelled"
        );
        match policy {
            FailurePolicy::Ignore => assert_eq!(rejected, 0, "Ignore rejects nothing"),
            FailurePolicy::Fail => {
                assert_eq!(unlabelled, 0, "Fail admits nothing unlabelled");
                // Bounded by the window: one pod per 20 ms at the most, plus the call timeout.
                let bound = (window.as_millis() / 20 + 5 * 1000 / 20) as usize;
                assert!(rejected <= bound, "{rejected} rejections > {bound}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_manual_edit_is_repaired_and_foreign_fields_kept() {
    let plane = control_plane(MODERN_CRDS);
    let client = plane.client().await;
    let config = config(&client).await;
    ensure_namespace(&client, &config.settings.kubeflow_namespace).await;
    let tls = webhook_tls(&tempdir("tls"));
    let _serve = Serve::start(plane, SETTINGS, &tls, 0);
    let name = "fault-edit";
    profile_with_namespace(&client, name).await;
    converged(&client, name, &config).await;

    let kind = ManagedKind::EnvoyFilter;
    assert_eq!(kind.home(), Home::Profile);
    let api = managed_api(&client, kind, name, &config);
    let object_name = kind.object_name(name, &config);
    // Someone else takes our header value and adds a label of their own.
    let edit = json!({
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": object_name, "labels": {"team": "platform"}},
        "spec": {"workloadSelector": {"labels": {config.settings.extension_label.clone(): "false"}}},
    });
    api.patch(
        &object_name,
        &PatchParams::apply("someone-else").force(),
        &Patch::Apply(&edit),
    )
    .await
    .unwrap();
    let profiles: Api<Profile> = Api::all(client.clone());
    let profile = profiles.get(name).await.unwrap();
    let desired = tenancy_fixer::istio::build(kind, &profile, &config);
    let repaired = eventually("our fields restored", || async {
        let actual = api.get(&object_name).await.ok()?;
        tenancy_fixer::istio::is_up_to_date(&actual, &desired).then_some(actual)
    })
    .await;
    assert_eq!(
        repaired.labels().get("team").map(String::as_str),
        Some("platform"),
        "foreign label kept"
    );
    assert_eq!(
        repaired.labels().get(MANAGED_BY_LABEL).map(String::as_str),
        Some(MANAGED_BY)
    );
    let _: Api<Namespace> = Api::all(client.clone());
}

// The API server's restart makes every watch fail for a while and then answer `410 Gone`: the
// Profiles made after it are reconciled once the watches have re-listed (this failed while one
// watch's errors paused all the controller's watches, see `controller::errors_kept_back`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_restart_while_profiles_reconcile() {
    // A control plane of this test's own, restarted on the same state, port and certificates.
    let dir = tempdir("restart");
    let port = free_port().to_string();
    let flags = ["--port", port.as_str(), "--keep-state"];
    let plane = ControlPlane::start(MODERN_CRDS, &dir, &flags);
    let client = plane.client().await;
    let config = config(&client).await;
    ensure_namespace(&client, &config.settings.kubeflow_namespace).await;
    let tls = webhook_tls(&tempdir("tls"));
    let serve = Serve::start(&plane, SETTINGS, &tls, 0);

    let names: Vec<String> = (0..200).map(|i| format!("fault-restart-{i}")).collect();
    let (before, after) = names.split_at(100);
    let mut users = Vec::new();
    for (i, name) in before.iter().enumerate() {
        profile_with_namespace(&client, name).await;
        if i % 10 == 0 {
            users.push(create(&client, Some(name), &user_filter(name)).await);
        }
    }
    // While the controller works through them, the API server (and etcd) go down and return.
    drop(plane);
    let plane = ControlPlane::start(MODERN_CRDS, &dir, &flags);
    let client = plane.client().await;
    for name in after {
        profile_with_namespace(&client, name).await;
    }
    all_converged(&client, &names, &config, &users).await;
    drop(serve);
}
