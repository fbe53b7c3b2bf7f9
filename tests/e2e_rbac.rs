//! The install (`kustomize build deploy/`, what `kubectl apply -k deploy/` applies) against a
//! real API server: every object is accepted, the Deployment's pod meets the namespace's
//! `restricted` Pod Security level, and the ClusterRole, Role and bindings are enough for the
//! controller. The controller runs in-process
//! leader-elected, as the install's ServiceAccount (the admin client impersonating it), through
//! every mode: each managed kind is watched, created, applied and deleted, an earlier version's
//! finalizer removed, Events published, the Lease created, held, released and taken over. Then
//! `serve --leader-elect`, as the ServiceAccount with self-managed certificates, makes their
//! Secret, publishes the caBundle of the installed webhook configuration, takes the Lease and
//! releases it on SIGTERM. Then the uninstall (`kubectl delete -k deploy/`): everything the build
//! lists goes, no Profile is left stuck, no user object is deleted. Last, `release-finalizers`
//! (uninstalling an earlier version) frees a Profile while the controller is stopped.

mod support;

use std::{process::Command, sync::Arc, time::Duration};

use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Pod, Secret},
    events::v1::Event,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::{Value, json};
use support::{scenario::*, *};
use tenancy_fixer::{
    config::{Config, Settings},
    controller::{self, FINALIZER, LeaderElection, Stats},
    istio::ManagedKind,
    manifests::{self, NAME, NAMESPACE},
    model::Profile,
};
use tokio::{sync::Notify, task::JoinHandle};

/// Server-side dry run: validated and admitted, not stored.
async fn dry_run_create(client: &Client, namespace: Option<&str>, manifest: &Value) {
    let object: DynamicObject = serde_json::from_value(manifest.clone()).unwrap();
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    api_for(client, namespace, manifest)
        .await
        .create(&params, &object)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "dry-run create {} {}: {e}",
                manifest["kind"], manifest["metadata"]["name"]
            )
        });
}

/// A client acting as the install's ServiceAccount.
async fn service_account_client(plane: &ControlPlane) -> Client {
    let kubeconfig = Kubeconfig::read_from(plane.kubeconfig()).unwrap();
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap();
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{NAMESPACE}:{NAME}"));
    Client::try_from(config).unwrap()
}

/// A leader-elected controller replica, stopped (lease released) by [`Replica::stop`].
struct Replica {
    halt: Arc<Notify>,
    task: JoinHandle<controller::Result<()>>,
}

impl Replica {
    async fn start(client: &Client, settings: &str, identity: &str) -> (Replica, Config) {
        // Discovery as the ServiceAccount, too.
        let caps = controller::discover(client)
            .await
            .expect("discovery as the ServiceAccount");
        let config = Settings::from_yaml(settings, "test")
            .unwrap()
            .resolve(&caps);
        let halt = Arc::new(Notify::new());
        let halted = {
            let halt = halt.clone();
            async move { halt.notified().await }
        };
        let election = LeaderElection {
            namespace: NAMESPACE.into(),
            lease_name: NAME.into(),
            identity: identity.into(),
        };
        let task = tokio::spawn(controller::run_leader_elected_until(
            client.clone(),
            Arc::new(config.clone()),
            Arc::new(Stats::default()),
            election,
            halted,
        ));
        (Replica { halt, task }, config)
    }

    async fn stop(self) {
        self.halt.notify_one();
        let ended = tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("replica stops");
        ended.unwrap().expect("replica ends without error");
    }
}

async fn lease_holder(admin: &Client) -> Option<String> {
    let lease = Api::<Lease>::namespaced(admin.clone(), NAMESPACE)
        .get_opt(NAME)
        .await
        .ok()??;
    lease.spec?.holder_identity
}

async fn wait_for_holder(admin: &Client, holder: Option<&str>) {
    let what = format!("lease holder {holder:?}");
    eventually(&what, || async {
        (lease_holder(admin).await.as_deref() == holder).then_some(())
    })
    .await;
}

async fn has_finalizer(admin: &Client, profile: &str) -> bool {
    let profile = Api::<Profile>::all(admin.clone())
        .get(profile)
        .await
        .unwrap();
    profile.finalizers().iter().any(|f| f == FINALIZER)
}

async fn add_finalizer(admin: &Client, profile: &str) {
    let patch = json!({"metadata": {"finalizers": [FINALIZER]}});
    Api::<Profile>::all(admin.clone())
        .patch(profile, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// Waits for an Event with `reason` on the Profile `profile` (Events of cluster-scoped objects
/// are in `default`).
async fn event_on(admin: &Client, profile: &str, reason: &str) {
    let events: Api<Event> = Api::namespaced(admin.clone(), manifests::EVENTS_NAMESPACE);
    eventually(&format!("{reason} event on {profile}"), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(profile)
                    && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Profile")
            })
            .then_some(())
    })
    .await;
}

async fn kinds_gone(admin: &Client, kinds: &[ManagedKind], profile: &str, config: &Config) {
    for kind in kinds {
        let api = managed_api(admin, *kind, profile, config);
        gone(
            &api,
            &kind.object_name(profile, config),
            &format!("{kind:?} of {profile} removed"),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_rbac_is_enough_for_the_leader_elected_controller() {
    // Every CRD, the legacy rbac.istio.io ones included, so that all four managed kinds are served.
    let plane = control_plane(ALL_CRDS);
    let admin = plane.client().await;

    // The whole install, as `kubectl apply -k deploy/` applies it. Nothing runs its pods (no
    // Deployment controller, no kubelet); the webhook configuration points at a Service without
    // endpoints, created last so that the Pod Security probe does not wait for it.
    let docs = kustomize::build(&repo_root().join("deploy"));
    let is_webhook = |doc: &&Value| doc["kind"] == "MutatingWebhookConfiguration";
    for doc in docs.iter().filter(|doc| !is_webhook(doc)) {
        create(&admin, doc["metadata"]["namespace"].as_str(), doc).await;
    }
    // The namespace enforces the restricted Pod Security level: the Deployment's pod meets it.
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "tenancy-fixer-pss-probe", "labels": deployment["spec"]["template"]["metadata"]["labels"]},
        "spec": deployment["spec"]["template"]["spec"],
    });
    dry_run_create(&admin, Some(NAMESPACE), &pod).await;
    for doc in docs.iter().filter(is_webhook) {
        create(&admin, None, doc).await;
    }

    let sa = service_account_client(plane).await;
    // Really restricted: no Secrets, no Pods, no Leases other than ours.
    let denied = |result: Result<_, kube::Error>| matches!(result, Err(kube::Error::Api(s)) if s.code == 403);
    assert!(denied(
        Api::<Secret>::all(sa.clone())
            .list(&ListParams::default())
            .await
            .map(|_| ())
    ));
    assert!(denied(
        Api::<Pod>::namespaced(sa.clone(), "default")
            .list(&ListParams::default())
            .await
            .map(|_| ())
    ));
    assert!(denied(
        Api::<Lease>::namespaced(sa.clone(), NAMESPACE)
            .get("someone-else")
            .await
            .map(|_| ())
    ));

    ensure_namespace(&admin, "kubeflow").await;
    for name in ["rbac-alice", "rbac-bob"] {
        create_profile(&admin, name, &format!("{name}@example.com")).await;
    }
    // An earlier version put its finalizer on every Profile.
    add_finalizer(&admin, "rbac-alice").await;
    // A Profile that does not control its namespace: refused, reported as an Event.
    ensure_namespace(&admin, "rbac-mallory").await;
    create(&admin, None, &profile_manifest("rbac-mallory", "m@x")).await;

    // Token mode: the PodDefault is created, the earlier finalizer removed, the refusal
    // published, the Lease created and held.
    let (replica, config) = Replica::start(&sa, "kfpAccess: token\n", "replica-a").await;
    wait_for_holder(&admin, Some("replica-a")).await;
    converged(&admin, "rbac-alice", &config).await;
    converged(&admin, "rbac-bob", &config).await;
    eventually("earlier finalizer removed", || async {
        (!has_finalizer(&admin, "rbac-alice").await).then_some(())
    })
    .await;
    event_on(&admin, "rbac-mallory", "NamespaceNotOwned").await;
    replica.stop().await;
    wait_for_holder(&admin, None).await;

    // Header mode, AuthorizationPolicy: another replica takes the released lease at once; the
    // other mode's PodDefault is deleted.
    let settings = "kfpAccess: header\nistioRbac: authorization-policy\n";
    let (replica, config) = Replica::start(&sa, settings, "replica-b").await;
    wait_for_holder(&admin, Some("replica-b")).await;
    converged(&admin, "rbac-alice", &config).await;
    kinds_gone(&admin, &[ManagedKind::PodDefault], "rbac-alice", &config).await;
    replica.stop().await;

    // Header mode, legacy ServiceRoleBinding; then the profile goes: everything is removed.
    let settings = "kfpAccess: header\nistioRbac: service-role-binding\n";
    let (replica, config) = Replica::start(&sa, settings, "replica-a").await;
    converged(&admin, "rbac-alice", &config).await;
    converged(&admin, "rbac-bob", &config).await;
    kinds_gone(
        &admin,
        &[ManagedKind::AuthorizationPolicy],
        "rbac-alice",
        &config,
    )
    .await;
    let profiles = api_for(&admin, None, &profile_manifest("x", "")).await;
    profiles
        .delete("rbac-alice", &DeleteParams::default())
        .await
        .unwrap();
    kinds_gone(&admin, &ManagedKind::wanted(&config), "rbac-alice", &config).await;
    gone(&profiles, "rbac-alice", "rbac-alice released and deleted").await;
    replica.stop().await;
    wait_for_holder(&admin, None).await;

    // `serve --leader-elect` as the Deployment runs it — as the ServiceAccount, with
    // self-managed certificates — makes its Secret, keeps the installed webhook configuration
    // (caBundle, rules), takes the lease, and releases it when stopped (SIGTERM from the wrapper
    // shell when its stdin closes). Nothing calls the configuration (its Service has no
    // endpoints, failurePolicy Ignore): only its fields are checked.
    let webhook_configurations: Api<
        k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
    > = Api::all(admin.clone());
    let kubeconfig = tempdir("sa").join("kubeconfig");
    let mut as_account = Kubeconfig::read_from(plane.kubeconfig()).unwrap();
    for user in &mut as_account.auth_infos {
        if let Some(auth) = user.auth_info.as_mut() {
            auth.impersonate = Some(format!("system:serviceaccount:{NAMESPACE}:{NAME}"));
        }
    }
    std::fs::write(&kubeconfig, serde_saphyr::to_string(&as_account).unwrap()).unwrap();
    // The Deployment's flags, but for the container's file and listening addresses.
    let in_container = ["--config=", "--listen=", "--metrics-listen="];
    let flags: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap())
        .filter(|arg| *arg != "serve" && !in_container.iter().any(|p| arg.starts_with(p)))
        .collect();
    assert_eq!(
        flags,
        [
            "--leader-elect",
            &format!("--certificate-secret={}", manifests::SELF_MANAGED_SECRET)
        ]
    );
    let serve = Serve::start_self_managed_as(
        &kubeconfig,
        &flags,
        &[
            ("POD_NAMESPACE", NAMESPACE),
            ("POD_NAME", "tenancy-fixer-serve-0"),
        ],
        "lease acquired",
    );
    wait_for_holder(&admin, Some("tenancy-fixer-serve-0")).await;
    converged(&admin, "rbac-bob", &config).await;
    let certificates = Api::<Secret>::namespaced(admin.clone(), NAMESPACE)
        .get(manifests::SELF_MANAGED_SECRET)
        .await
        .unwrap();
    let ca = certificates.data.unwrap()["ca.crt"].0.clone();
    eventually("the ServiceAccount published the caBundle", || async {
        let stored = webhook_configurations
            .get(manifests::WEBHOOK_CONFIGURATION_NAME)
            .await
            .ok()?;
        stored
            .webhooks?
            .iter()
            .all(|w| w.client_config.ca_bundle.as_ref().map(|b| &b.0) == Some(&ca))
            .then_some(())
    })
    .await;
    let status = tokio::task::spawn_blocking(move || serve.stop())
        .await
        .unwrap();
    assert!(status.success(), "serve stopped cleanly: {status}");
    assert_eq!(lease_holder(&admin).await, None, "released before exiting");

    // Uninstall, as `kubectl delete -k deploy/` does: every object of the build deleted (in its
    // order, background propagation), the namespace with what serve made in it (Secret, Lease).
    // A user's PodDefault carrying our label stays: a label alone does not make it ours.
    let users = json!({
        "apiVersion": "kubeflow.org/v1alpha1",
        "kind": "PodDefault",
        "metadata": {
            "name": "user-defaults",
            "labels": {"app.kubernetes.io/managed-by": "tenancy-fixer"},
        },
        "spec": {"selector": {"matchLabels": {"user-defaults": "true"}}, "desc": "a user's own"},
    });
    let user_object = create(&admin, Some("rbac-bob"), &users).await;
    for doc in &docs {
        let name = doc["metadata"]["name"].as_str().unwrap();
        let api = api_for(&admin, doc["metadata"]["namespace"].as_str(), doc).await;
        match api.delete(name, &DeleteParams::background()).await {
            // Already taken with the namespace (kubectl says NotFound; `--ignore-not-found`).
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            result => {
                result.unwrap_or_else(|e| panic!("delete {} {name}: {e}", doc["kind"]));
            }
        }
    }
    for doc in &docs {
        let name = doc["metadata"]["name"].as_str().unwrap();
        let api = api_for(&admin, doc["metadata"]["namespace"].as_str(), doc).await;
        gone(&api, name, &format!("{} {name} uninstalled", doc["kind"])).await;
    }
    // Nothing stuck: no Profile holds a finalizer of ours, and one deleted now goes at once.
    let remaining = Api::<Profile>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    let names: Vec<_> = remaining.items.iter().map(|p| p.name_any()).collect();
    assert_eq!(names, ["rbac-bob", "rbac-mallory"], "no Profile deleted");
    assert!(
        remaining.items.iter().all(|p| p.finalizers().is_empty()),
        "no finalizer left on a Profile"
    );
    profiles
        .delete("rbac-mallory", &DeleteParams::default())
        .await
        .unwrap();
    gone(
        &profiles,
        "rbac-mallory",
        "rbac-mallory deleted after the uninstall",
    )
    .await;
    // Nothing of the users' deleted: the namespaces, the user's PodDefault as it was.
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone());
    for namespace in ["rbac-bob", "rbac-mallory", "kubeflow"] {
        namespaces.get(namespace).await.unwrap();
    }
    let stored = api_for(&admin, Some("rbac-bob"), &users)
        .await
        .get("user-defaults")
        .await
        .unwrap();
    assert_eq!(
        (stored.metadata.uid, stored.metadata.resource_version),
        (
            user_object["metadata"]["uid"].as_str().map(Into::into),
            user_object["metadata"]["resourceVersion"]
                .as_str()
                .map(Into::into)
        ),
        "the user's PodDefault untouched"
    );

    // Uninstalling an earlier version (which put its finalizer on every Profile): with the
    // controller stopped, `release-finalizers` frees the profile, which then goes at once; the
    // garbage collector takes what we made for it.
    assert!(
        !has_finalizer(&admin, "rbac-bob").await,
        "this version adds none"
    );
    add_finalizer(&admin, "rbac-bob").await;
    let out = Command::new(env!("CARGO_BIN_EXE_tenancy-fixer"))
        .arg("release-finalizers")
        .arg("--kubeconfig")
        .arg(plane.kubeconfig())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "release-finalizers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("profile/rbac-bob: finalizer {FINALIZER} removed\n")
    );
    assert!(!has_finalizer(&admin, "rbac-bob").await);
    profiles
        .delete("rbac-bob", &DeleteParams::default())
        .await
        .unwrap();
    gone(
        &profiles,
        "rbac-bob",
        "rbac-bob deleted without the controller",
    )
    .await;
    kinds_gone(&admin, &ManagedKind::wanted(&config), "rbac-bob", &config).await;
}
