//! `tenancy-fixer demo`: the whole product on a local control plane, narrated.
//!
//! Starts testenv (unless a kubeconfig is given), runs the webhook and the profile controller
//! in this process, registers the webhook, then creates what a Kubeflow user would — a Profile
//! with its namespace, a notebook pod, a Trial, the Trial's Job and its Katib pod — and prints
//! what tenancy-fixer did to each. Each workload is also created as a server-side dry run in an
//! excluded namespace, so the printed diff is exactly the webhook's work, server defaults aside.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, DynamicObject},
};
use serde_json::{Value, json};

use crate::{
    config::{Config, Settings},
    controller,
    istio::{Home, ManagedKind},
    local::{self, Testenv, WebhookTls},
    manifests::WEBHOOK_CONFIGURATION_NAME,
    webhook::{self, TlsFiles},
};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Local(#[from] local::LocalError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("discovery: {0}")]
    Discovery(#[from] controller::Error),
    #[error("webhook: {0}")]
    Webhook(#[from] webhook::WebhookError),
    #[error("{0}")]
    Setup(String),
}

pub type Result<T, E = DemoError> = std::result::Result<T, E>;

/// Where the demo runs.
pub struct DemoOptions {
    /// A cluster to use instead of starting testenv (its API server must reach 127.0.0.1).
    pub kubeconfig: Option<PathBuf>,
    /// The testenv binary (built by `testenv/build.sh`).
    pub testenv: PathBuf,
    /// CRD files, or directories of them (their `*.yaml` files), testenv serves.
    pub crds: Vec<PathBuf>,
    pub settings: Settings,
}

const PROFILE: &str = "demo-alice";
const OWNER: &str = "alice@example.com";
/// Where the baseline dry runs go: excluded from the webhook by default.
const BASELINE_NAMESPACE: &str = "kube-system";
const WAIT: Duration = Duration::from_secs(60);

pub async fn run(options: DemoOptions) -> Result<()> {
    let DemoOptions {
        kubeconfig,
        testenv,
        crds,
        settings,
    } = options;
    let work = std::env::temp_dir().join(format!("tenancy-fixer-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work)
        .map_err(|e| DemoError::Setup(format!("{}: {e}", work.display())))?;

    // Dropped last: stops testenv after everything else.
    let (_testenv, client) = match &kubeconfig {
        Some(path) => {
            println!("• cluster: {}", path.display());
            (None, local::client_from_kubeconfig(path).await?)
        }
        None => {
            let crd_dir = work.join("crds");
            local::gather_crds(&crds, &crd_dir)?;
            let started = Instant::now();
            let testenv = Testenv::start(
                &testenv,
                &work.join("testenv"),
                &crd_dir,
                Duration::from_secs(180),
            )?;
            println!(
                "• control plane: testenv (etcd + kube-apiserver + GC/namespace controllers) at {}, ready in {:.1}s",
                testenv.server,
                started.elapsed().as_secs_f64()
            );
            let client = testenv.client().await?;
            (Some(testenv), client)
        }
    };

    let config = Arc::new(settings.resolve(&controller::discover(&client).await?));
    let modes = &config.modes;
    println!(
        "• modes (auto decided by API discovery): kfpAccess={:?} istioRbac={:?} proxyStartup={:?} proxyShutdown={:?}",
        modes.kfp_access, modes.istio_rbac, modes.proxy_startup, modes.proxy_shutdown
    );

    let tls = WebhookTls::generate(&work)?;
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| DemoError::Setup(e.to_string()))?;
    let url = format!(
        "https://{}",
        listener
            .local_addr()
            .map_err(|e| DemoError::Setup(e.to_string()))?
    );
    let stop = Arc::new(tokio::sync::Notify::new());
    let server = tokio::spawn(webhook::serve_listener(
        listener,
        TlsFiles::new(&tls.cert, &tls.key),
        config.clone(),
        webhook::Limits::default(),
        {
            let stop = stop.clone();
            async move { stop.notified().await }
        },
    ));
    let controller = tokio::spawn(controller::run(client.clone(), config.clone()));

    local::ensure_namespace(&client, &config.settings.kubeflow_namespace).await?;
    local::register_webhook(&client, &url, &tls.ca_pem, &config, WAIT).await?;
    println!("• webhook: {url}/mutate/{{pods,jobs,trials}} registered (failurePolicy Ignore)\n");

    let outcome = narrate(&client, &config).await;

    println!("\n• cleaning up");
    cleanup(&client).await;
    controller.abort();
    stop.notify_one();
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&work);
    outcome
}

async fn narrate(client: &Client, config: &Config) -> Result<()> {
    let profile = json!({
        "apiVersion": "kubeflow.org/v1", "kind": "Profile",
        "metadata": {"name": PROFILE},
        "spec": {"owner": {"kind": "User", "name": OWNER}},
    });
    let profile = local::create(client, None, &profile, false).await?;
    // The namespace as the Kubeflow profile-controller makes it, controlled by the Profile.
    local::ensure_profile_namespace(client, &profile).await?;
    let started = Instant::now();
    let kept = kept_objects(client, config).await?;
    println!(
        "== Profile {PROFILE} (owner {OWNER}): the controller keeps {} object(s), in place after {} ms",
        kept.len(),
        started.elapsed().as_millis()
    );
    for object in &kept {
        print_object(object);
    }

    // Drift: someone deletes one; the controller puts it back.
    let victim = &kept[0];
    let api = api_of(client, victim);
    api.delete(&victim.name_any(), &DeleteParams::default())
        .await?;
    let started = Instant::now();
    let restored = local::poll(WAIT, || async {
        let found = api.get_opt(&victim.name_any()).await.ok()??;
        (found.uid() != victim.uid()).then_some(found)
    })
    .await
    .ok_or_else(|| DemoError::Setup("deleted object was not restored".into()))?;
    println!(
        "-- someone deletes {} {}: restored in {} ms (new uid {})\n",
        kind_of(victim),
        victim.name_any(),
        started.elapsed().as_millis(),
        restored.uid().unwrap_or_default()
    );

    let notebook = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "notebook-0", "labels": {"notebook-name": "notebook", "app": "notebook"}},
        "spec": {
            "serviceAccountName": "default-editor",
            "containers": [{"name": "notebook", "image": "kubeflownotebookswg/jupyter-scipy",
                            "env": [{"name": "NB_PREFIX", "value": "/notebook/demo-alice/notebook"}]}],
        },
    });
    show("Notebook pod (behaviour 2)", client, &notebook).await?;

    let trial = json!({
        "apiVersion": "kubeflow.org/v1beta1", "kind": "Trial",
        "metadata": {"name": "random-exp-trial-1"},
        "spec": {"objective": {"type": "maximize", "objectiveMetricName": "accuracy"}},
    });
    let trial = show("Trial (behaviour 3)", client, &trial).await?;

    let job = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "name": "random-exp-trial-1",
            "labels": {"app": "mnist"},
            "ownerReferences": [{"apiVersion": "kubeflow.org/v1beta1", "kind": "Trial", "name": "random-exp-trial-1",
                                 "uid": trial["metadata"]["uid"], "controller": true}],
        },
        "spec": {"template": {
            "metadata": {"labels": {"app": "mnist"}},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "training-container", "image": "docker.io/kubeflowkatib/mxnet-mnist",
                "command": ["python3", "/opt/mxnet-mnist/mnist.py"],
                "args": ["--lr=0.01", "--batch-size=64", "--note=it's \"quoted\" $(and not run)"],
            }]},
        }},
    });
    let job = show("Trial Job (behaviour 4)", client, &job).await?;

    // The pod as the Job controller, Katib's collector injection and Istio's injector make it.
    let template = &job["spec"]["template"];
    let mut containers = template["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    containers.push(json!({"name": "metrics-logger-and-collector", "image": "docker.io/kubeflowkatib/file-metrics-collector",
        "args": ["-t", "random-exp-trial-1", "-m", "accuracy", "-s-db", "katib-db-manager.kubeflow:6789", "-path", "/var/log/katib/metrics.log"]}));
    containers.push(json!({"name": "istio-proxy", "image": "docker.io/istio/proxyv2", "args": ["proxy", "sidecar"]}));
    let mut labels = template["metadata"]["labels"].clone();
    labels["batch.kubernetes.io/job-name"] = json!("random-exp-trial-1");
    let katib_pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "random-exp-trial-1-x7k2p",
            "labels": labels,
            "annotations": template["metadata"]["annotations"],
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "random-exp-trial-1",
                                 "uid": job["metadata"]["uid"], "controller": true}],
        },
        "spec": {
            "restartPolicy": "Never",
            "shareProcessNamespace": true,
            "serviceAccountName": template["spec"]["serviceAccountName"],
            "containers": containers,
        },
    });
    show("Katib trial pod (behaviour 5)", client, &katib_pod).await?;

    let plain = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "someone-elses-pod", "labels": {"kubeflow-extension": "true"}},
        "spec": {"serviceAccountName": "default-editor", "containers": [{"name": "main", "image": "busybox"}]},
    });
    show(
        "Pod claiming the extension label by itself (reserved)",
        client,
        &plain,
    )
    .await?;
    Ok(())
}

/// Creates `manifest` in the profile namespace, prints what the webhook changed, returns it.
async fn show(title: &str, client: &Client, manifest: &Value) -> Result<Value> {
    let baseline = local::create(client, Some(BASELINE_NAMESPACE), manifest, true).await?;
    let stored = local::create(client, Some(PROFILE), manifest, false).await?;
    let patch = json_patch::diff(&comparable(&baseline), &comparable(&stored));
    let kind = manifest["kind"].as_str().unwrap_or("");
    let name = manifest["metadata"]["name"].as_str().unwrap_or("");
    println!("== {title}: {kind} {PROFILE}/{name}");
    if patch.0.is_empty() {
        println!("   stored unchanged\n");
    }
    for operation in &patch.0 {
        print_operation(operation);
    }
    if !patch.0.is_empty() {
        println!();
    }
    Ok(stored)
}

/// The stored object without what differs between any two creations (identity, timestamps,
/// the Job controller's uid labels).
fn comparable(stored: &Value) -> Value {
    fn strip_uid_labels(value: &mut Value) {
        match value {
            Value::Object(map) => {
                for key in ["labels", "matchLabels"] {
                    if let Some(Value::Object(labels)) = map.get_mut(key) {
                        labels.retain(|k, _| !k.ends_with("controller-uid"));
                    }
                }
                map.values_mut().for_each(strip_uid_labels);
            }
            Value::Array(items) => items.iter_mut().for_each(strip_uid_labels),
            _ => {}
        }
    }
    let mut value = stored.clone();
    if let Some(Value::Object(meta)) = value.get_mut("metadata") {
        for key in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "namespace",
            "generation",
        ] {
            meta.remove(key);
        }
    }
    strip_uid_labels(&mut value);
    value
}

fn print_operation(operation: &json_patch::PatchOperation) {
    let (word, path, value) = match operation {
        json_patch::PatchOperation::Add(op) => ("add", op.path.to_string(), Some(&op.value)),
        json_patch::PatchOperation::Replace(op) => {
            ("replace", op.path.to_string(), Some(&op.value))
        }
        json_patch::PatchOperation::Remove(op) => ("remove", op.path.to_string(), None),
        other => ("other", format!("{other:?}"), None),
    };
    match value {
        None => println!("   {word:<8}{path}"),
        Some(value) => {
            let yaml = serde_saphyr::to_string(value).unwrap_or_default();
            let lines: Vec<&str> = yaml.trim_end().lines().collect();
            if lines.len() == 1 {
                println!("   {word:<8}{path} = {}", lines[0]);
            } else {
                println!("   {word:<8}{path} =");
                for line in lines {
                    println!("             {line}");
                }
            }
        }
    }
}

fn kind_of(object: &DynamicObject) -> &str {
    object.types.as_ref().map(|t| t.kind.as_str()).unwrap_or("")
}

fn api_of(client: &Client, object: &DynamicObject) -> Api<DynamicObject> {
    let kind = ManagedKind::ALL
        .into_iter()
        .find(|k| k.gvk().kind == kind_of(object))
        .expect("a managed kind");
    Api::namespaced_with(
        client.clone(),
        &object.namespace().unwrap_or_default(),
        &kind.api_resource(),
    )
}

/// Waits for the controller's objects for the demo profile.
async fn kept_objects(client: &Client, config: &Config) -> Result<Vec<DynamicObject>> {
    let mut kept = Vec::new();
    for kind in ManagedKind::wanted(config) {
        let namespace = match kind.home() {
            Home::Kubeflow => config.settings.kubeflow_namespace.clone(),
            Home::Profile => PROFILE.to_string(),
        };
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &namespace, &kind.api_resource());
        let name = kind.object_name(PROFILE, config);
        let object = local::poll(WAIT, || async { api.get_opt(&name).await.ok()? })
            .await
            .ok_or_else(|| {
                DemoError::Setup(format!("{kind:?} {namespace}/{name} did not appear"))
            })?;
        kept.push(object);
    }
    Ok(kept)
}

fn print_object(object: &DynamicObject) {
    let shown = json!({
        "apiVersion": object.types.as_ref().map(|t| t.api_version.clone()),
        "kind": kind_of(object),
        "metadata": {"name": object.name_any(), "namespace": object.namespace(), "labels": object.labels()},
        "spec": object.data.get("spec"),
    });
    println!(
        "--- {} {}/{}",
        kind_of(object),
        object.namespace().unwrap_or_default(),
        object.name_any()
    );
    for line in serde_saphyr::to_string(&shown).unwrap_or_default().lines() {
        println!("   {line}");
    }
    println!();
}

/// Removes what the demo created (matters when it ran against a real cluster).
async fn cleanup(client: &Client) {
    use k8s_openapi::api::{
        admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Namespace,
    };
    let dp = DeleteParams::default();
    let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(WEBHOOK_CONFIGURATION_NAME, &dp)
        .await;
    let _ = Api::<crate::model::Profile>::all(client.clone())
        .delete(PROFILE, &dp)
        .await;
    let _ = Api::<Namespace>::all(client.clone())
        .delete(PROFILE, &dp)
        .await;
}
