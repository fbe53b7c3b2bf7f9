//! End to end with the real Katib: a Trial becomes a Job and the Job a Pod through the real
//! controllers and the real admission chain, and we check what the API server stores.
//!
//! What runs, all against one testenv (kube-apiserver + etcd):
//! - **Katib's katib-controller v0.19.0** (built from its Go module by testenv/katib/build.sh),
//!   as its ServiceAccount `kubeflow/katib-controller` (impersonated through its kubeconfig)
//!   with Katib's own ClusterRole (manifests/v1beta1/components/controller/rbac.yaml), its
//!   experiment, suggestion and trial controllers and its webhooks: the experiment defaulter and
//!   validator and the pod mutator (`/mutate-pod`, the metrics-collector sidecar), registered
//!   from Katib's webhooks.yaml with the Service replaced by `https://127.0.0.1:PORT` (testenv
//!   has no Services to route to). Its cert generator is off (KatibConfig
//!   `init.certGenerator.enable: false`); it reads its serving certificate from the hard-coded
//!   `/tmp/cert` (consts.CertDir), so it runs in a mount namespace where our directory is
//!   bind-mounted there.
//! - **kube-controller-manager's job controller** (in testenv, `--controller-list`), acting as
//!   `system:serviceaccount:kube-system:job-controller` (`--use-service-account-credentials`,
//!   as kubeadm runs it): it turns the Job Katib creates into a Pod.
//! - **A stand-in Istio sidecar injector** (testenv/katib/cmd/istio-injector, ours): Istio's
//!   decision rules and the shape of its injection template, registered as Istio's chart does
//!   (namespace label `istio-injection=enabled`, objectSelector skipping
//!   `sidecar.istio.io/inject: "false"`).
//! - **tenancy-fixer serve**, registered as `tenancy-fixer`.
//!
//! The three MutatingWebhookConfigurations are named as a real install names them, so the API
//! server calls them in the same order (alphabetical: istio-sidecar-injector,
//! katib.kubeflow.org, tenancy-fixer), with reinvocation `IfNeeded` for Istio and us (Katib's
//! own registration does not set it: Never).
//!
//! What does not run here, and is therefore not checked:
//! - No kubelet, scheduler or container runtime: the pod is stored but never starts, so the
//!   trial never finishes and Katib never collects metrics (tests/trial_pod_exec.rs runs mutated
//!   trial pods as a kubelet would). No Deployment controller: the suggestion service Katib
//!   creates for the Experiment never runs, so no suggestion ever comes back and the experiment
//!   controller never creates a Trial itself. The test creates the one Trial the experiment
//!   controller would create for one suggestion, as katib-controller (see [`trial_for`]), owned
//!   by the real, Katib-defaulted Experiment.
//! - The Istio injector is a stand-in (no istiod, no mesh config, no native sidecars).
//! - The ServiceAccount admission plugin is off in testenv: no `kube-api-access-*` volume.

mod support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    time::Duration,
};

use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};
use support::{scenario::create_profile, *};
use tenancy_fixer::config::Settings;

/// Header mode with the readiness wait, so the trial pod's training container is wrapped (with
/// the hold annotation Istio would hold it and we would leave it alone).
const SETTINGS: &str = "kfpAccess: header\nkatib:\n  proxyStartup: wait-ready\n";
const CRDS: &[&str] = &[
    "kubeflow",
    "katib",
    "istio/envoyfilters.networking.istio.io",
    "istio/authorizationpolicies.security.istio.io",
];
const KATIB_CONTROLLER: &str = "system:serviceaccount:kubeflow:katib-controller";
const NAMESPACE: &str = "katib-alice";
const EXPERIMENT: &str = "random";
/// A name as Katib's suggestion controller makes one (experiment name, 8 random characters).
const TRIAL: &str = "random-7mtk9x4q";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_katib_trial_is_stored_mutated() {
    let dir = tempdir("katib");
    let plane = ControlPlane::start(
        CRDS,
        &dir.join("plane"),
        &[
            "--controller-list=garbage-collector-controller,namespace-controller,job-controller",
            "--use-service-account-credentials",
        ],
    );
    let status = std::process::Command::new(repo_root().join("testenv/katib/build.sh"))
        .status()
        .expect("run testenv/katib/build.sh");
    assert!(status.success(), "testenv/katib/build.sh failed");
    let client = plane.client().await;
    // One CA for the three webhooks: each serves a certificate for 127.0.0.1 signed by it.
    let tls = webhook_tls(&dir);

    let mut katib = start_katib(&client, &plane, &tls, &dir).await;
    let _injector = start_istio_injector(&client, &tls, &dir).await;
    let serve = Serve::start(&plane, SETTINGS, &tls, 0);
    let caps = tenancy_fixer::controller::discover(&client).await.unwrap();
    let config = Settings::from_yaml(SETTINGS, "e2e_katib")
        .unwrap()
        .resolve(&caps);
    ensure_namespace(&client, &config.settings.kubeflow_namespace).await;
    // Registered last: once the API server calls it, it sees the other two configurations as
    // well (one informer delivers webhook configurations to the admission chain, in order).
    register_webhook(&client, &serve.url(), &tls, &config).await;

    // The profile's namespace, plus the label Katib's pod webhook selects on.
    create_profile(&client, NAMESPACE, "alice@example.com").await;
    let label = json!({"metadata": {"labels": {"katib.kubeflow.org/metrics-collector-injection": "enabled"}}});
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(NAMESPACE, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();

    // The Experiment, through Katib's defaulting and validating webhooks; then the Trial its
    // controller would make for one suggestion, created as katib-controller.
    let experiment = create(&client, Some(NAMESPACE), &experiment_manifest()).await;
    assert_eq!(
        experiment["spec"]["metricsCollectorSpec"]["collector"]["kind"], "StdOut",
        "Katib's defaulter ran"
    );
    let as_katib = client_as(&plane, KATIB_CONTROLLER).await;
    let trial = create(
        &as_katib,
        Some(NAMESPACE),
        &trial_for(&experiment, TRIAL, &[("lr", "0.02"), ("momentum", "0.7")]),
    )
    .await;
    assert_eq!(trial["metadata"]["labels"]["kubeflow-extension"], "true");

    // Katib's trial controller makes the Job.
    let jobs: Api<Job> = Api::namespaced(client.clone(), NAMESPACE);
    let job = eventually("Katib creates the trial's Job", || async {
        jobs.get_opt(TRIAL).await.ok().flatten()
    })
    .await;
    let job = serde_json::to_value(job).unwrap();
    assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "Trial");
    let template = &job["spec"]["template"];
    assert_eq!(template["metadata"]["labels"]["kubeflow-extension"], "true");
    assert_eq!(
        template["metadata"]["labels"]["sidecar.istio.io/inject"], "true",
        "our label overrides the template's opt-out"
    );
    assert_eq!(template["spec"]["serviceAccountName"], "default-editor");

    // The job controller makes the Pod, through Istio's, Katib's and our webhooks.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let selector = ListParams::default().labels(&format!("batch.kubernetes.io/job-name={TRIAL}"));
    let pod = eventually("the job controller creates the trial's Pod", || async {
        pods.list(&selector).await.ok()?.items.into_iter().next()
    })
    .await;
    let pod = serde_json::to_value(pod).unwrap();
    let stored = dir.join("trial-pod.json");
    std::fs::write(&stored, serde_json::to_string_pretty(&pod).unwrap()).unwrap();
    eprintln!("the trial pod as stored: {}", stored.display());
    assert!(katib.exited().is_none(), "katib-controller exited");

    let labels = &pod["metadata"]["labels"];
    assert_eq!(labels["kubeflow-extension"], "true", "reserved label kept");
    assert_eq!(labels["sidecar.istio.io/inject"], "true");
    assert_eq!(
        labels["katib.kubeflow.org/trial"], TRIAL,
        "Katib's webhook ran"
    );
    assert_eq!(labels["security.istio.io/tlsMode"], "istio", "Istio's ran");
    assert_eq!(pod["spec"]["serviceAccountName"], "default-editor");
    assert_eq!(pod["spec"]["shareProcessNamespace"], true);
    assert!(pod["metadata"]["annotations"][tenancy_fixer::policy::WRAPPED_ANNOTATION].is_string());
    let container = |name: &str| {
        pod["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no container {name} in {pod}"))
            .clone()
    };
    let init = &pod["spec"]["initContainers"];
    assert!(
        init.as_array()
            .is_some_and(|c| c.iter().any(|c| c["name"] == "istio-init")),
        "{init}"
    );
    assert_eq!(container("istio-proxy")["args"][0], "proxy");

    // Katib wrapped the training command for the StdOut collector; we wrap that again so it
    // waits for the proxy first.
    let training = container("training-container");
    assert_eq!(training["command"][0], "/bin/sh");
    assert!(
        training["command"][2]
            .as_str()
            .unwrap()
            .contains("/healthz/ready"),
        "{training}"
    );
    assert_eq!(
        training["args"].as_array().unwrap()[..2],
        [json!("sh"), json!("-c")],
        "{training}"
    );
    assert!(
        training["args"][2]
            .as_str()
            .unwrap()
            .contains("/opt/pytorch-mnist/mnist.py"),
        "{training}"
    );

    let collector = container("metrics-logger-and-collector");
    assert_eq!(collector["command"][0], "/bin/sh", "collector wrapped");
    assert_eq!(collector["command"][3], "sh");
    let words = collector["args"].as_array().unwrap();
    assert!(
        words.windows(2).any(|w| w == [json!("-w"), json!("false")]),
        "{words:?}"
    );
    assert!(
        words.windows(2).any(|w| w == [json!("-t"), json!(TRIAL)]),
        "{words:?}"
    );
    assert!(
        katib
            .log()
            .contains("Inject metrics collector sidecar container")
    );
}

/// A client acting as `user` (the kubeconfig's admin impersonates it).
async fn client_as(plane: &ControlPlane, user: &str) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(plane.kubeconfig()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some(user.to_string());
    Client::try_from(config).unwrap()
}

/// The upstream manifest (copied from Katib's module by testenv/katib/build.sh), one value per
/// YAML document.
fn katib_manifest(name: &str) -> Vec<Value> {
    let path = repo_root().join("target/katib/manifests").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Starts katib-controller as Katib installs it (its RBAC, its KatibConfig file and ConfigMap),
/// registers its webhooks, and waits until it is ready.
async fn start_katib(
    client: &Client,
    plane: &ControlPlane,
    tls: &tenancy_fixer::local::WebhookTls,
    dir: &Path,
) -> Held {
    ensure_namespace(client, "kubeflow").await;
    for object in katib_manifest("rbac.yaml") {
        let namespace = object["metadata"]["namespace"].as_str();
        create(client, namespace, &object).await;
    }

    let (webhook_port, healthz_port) = (free_port(), free_port());
    let mut katib_config = katib_manifest("katib-config.yaml").remove(0);
    let init = &mut katib_config["init"];
    // Certificates come from us, not from Katib's generator (which would patch the webhook
    // configurations for a Service and write a Secret).
    init["certGenerator"] = json!({"enable": false});
    let controller = &mut init["controller"];
    controller["webhookPort"] = json!(webhook_port);
    // Not the fixed :8080 and :18080, which other processes on the machine may hold.
    controller["metricsAddr"] = json!("0");
    controller["healthzAddr"] = json!(format!("127.0.0.1:{healthz_port}"));
    // The only trial kind this control plane serves.
    controller["trialResources"] = json!(["Job.v1.batch"]);
    let katib_config = katib_config.to_string();
    let config_file = dir.join("katib-config.yaml");
    std::fs::write(&config_file, &katib_config).unwrap();
    // Init settings come from the file; the runtime ones (collector images) are read from the
    // ConfigMap by the webhook at each admission, as in a cluster.
    create(
        client,
        Some("kubeflow"),
        &json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "katib-config", "namespace": "kubeflow"},
            "data": {"katib-config.yaml": katib_config},
        }),
    )
    .await;

    let mut kubeconfig: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(plane.kubeconfig()).unwrap()).unwrap();
    kubeconfig["users"][0]["user"]["as"] = KATIB_CONTROLLER.into();
    let kubeconfig_file = dir.join("katib-kubeconfig");
    std::fs::write(
        &kubeconfig_file,
        serde_saphyr::to_string(&kubeconfig).unwrap(),
    )
    .unwrap();

    let cert_dir = dir.join("katib-cert");
    std::fs::create_dir_all(&cert_dir).unwrap();
    std::fs::copy(&tls.cert, cert_dir.join("tls.crt")).unwrap();
    std::fs::copy(&tls.key, cert_dir.join("tls.key")).unwrap();
    // The mount point only; each run mounts its own directory on it, in its own namespace.
    std::fs::create_dir_all("/tmp/cert").unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut args = vec!["--mount".to_string()];
    if !root {
        args.push("--map-root-user".into());
    }
    args.extend([
        "/bin/sh".into(),
        "-c".into(),
        r#"mount --bind "$0" /tmp/cert && exec "$@""#.into(),
        cert_dir.display().to_string(),
        repo_root()
            .join("target/katib/bin/katib-controller")
            .display()
            .to_string(),
        format!("--katib-config={}", config_file.display()),
    ]);
    let kubeconfig_env = kubeconfig_file.display().to_string();
    let mut katib = Held::spawn(
        "katib-controller",
        Path::new("unshare"),
        &args,
        &[("KUBECONFIG", &kubeconfig_env)],
        &dir.join("katib-controller.log"),
    );

    let ca_bundle =
        serde_json::to_value(k8s_openapi::ByteString(tls.ca_pem.clone().into())).unwrap();
    for mut configuration in katib_manifest("webhooks.yaml") {
        for webhook in configuration["webhooks"].as_array_mut().unwrap() {
            let path = webhook["clientConfig"]["service"]["path"].as_str().unwrap();
            webhook["clientConfig"] = json!({
                "url": format!("https://127.0.0.1:{webhook_port}{path}"),
                "caBundle": ca_bundle,
            });
        }
        create(client, None, &configuration).await;
    }

    let readyz = format!("127.0.0.1:{healthz_port}");
    eventually("katib-controller ready (webhook server started)", || {
        let ready = katib.exited().is_none() && http_ok(&readyz, "/readyz");
        async move { ready.then_some(()) }
    })
    .await;
    katib
}

/// Does `GET path` on `addr` answer 200?
fn http_ok(addr: &str, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut response = String::new();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_ok()
        && stream.read_to_string(&mut response).is_ok()
        && response.split_whitespace().nth(1) == Some("200")
}

/// Starts the stand-in Istio injector and registers it as Istio's chart does.
async fn start_istio_injector(
    client: &Client,
    tls: &tenancy_fixer::local::WebhookTls,
    dir: &Path,
) -> Held {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "-listen",
        &listen,
        "-tls-cert",
        tls.cert.to_str().unwrap(),
        "-tls-key",
        tls.key.to_str().unwrap(),
    ];
    let injector = Held::spawn(
        "istio-injector",
        &repo_root().join("target/katib/bin/istio-injector"),
        &args,
        &[],
        &dir.join("istio-injector.log"),
    );
    eventually("istio-injector listening", || {
        let up = injector.log().contains("listening on");
        async move { up.then_some(()) }
    })
    .await;
    let ca_bundle =
        serde_json::to_value(k8s_openapi::ByteString(tls.ca_pem.clone().into())).unwrap();
    create(
        client,
        None,
        &json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "istio-sidecar-injector"},
            "webhooks": [{
                "name": "namespace.sidecar-injector.istio.io",
                "clientConfig": {"url": format!("https://{listen}/inject"), "caBundle": ca_bundle},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
                "namespaceSelector": {"matchExpressions": [
                    {"key": "istio-injection", "operator": "In", "values": ["enabled"]},
                ]},
                "objectSelector": {"matchExpressions": [
                    {"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]},
                ]},
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "admissionReviewVersions": ["v1"],
                "reinvocationPolicy": "IfNeeded",
            }],
        }),
    )
    .await;
    injector
}

/// Katib's upstream example examples/v1beta1/hp-tuning/random.yaml in a profile namespace,
/// with the pod-template label `sidecar.istio.io/inject: "false"` that Katib's Kubeflow examples
/// (examples/v1beta1/kubeflow-pipelines/kubeflow-e2e-mnist.ipynb) put on trial templates.
fn experiment_manifest() -> Value {
    json!({
        "apiVersion": "kubeflow.org/v1beta1",
        "kind": "Experiment",
        "metadata": {"name": EXPERIMENT, "namespace": NAMESPACE},
        "spec": {
            "objective": {"type": "minimize", "goal": 0.001, "objectiveMetricName": "loss"},
            "algorithm": {"algorithmName": "random"},
            "parallelTrialCount": 3,
            "maxTrialCount": 12,
            "maxFailedTrialCount": 3,
            "parameters": [
                {"name": "lr", "parameterType": "double", "feasibleSpace": {"min": "0.01", "max": "0.05"}},
                {"name": "momentum", "parameterType": "double", "feasibleSpace": {"min": "0.5", "max": "0.9"}},
            ],
            "trialTemplate": {
                "primaryContainerName": "training-container",
                "trialParameters": [
                    {"name": "learningRate", "description": "Learning rate for the training model", "reference": "lr"},
                    {"name": "momentum", "description": "Momentum for the training model", "reference": "momentum"},
                ],
                "trialSpec": {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "spec": {"template": {
                        "metadata": {"labels": {"sidecar.istio.io/inject": "false"}},
                        "spec": {
                            "containers": [{
                                "name": "training-container",
                                "image": "ghcr.io/kubeflow/katib/pytorch-mnist-cpu:v0.19.0",
                                "command": [
                                    "python3", "/opt/pytorch-mnist/mnist.py", "--epochs=1", "--batch-size=16",
                                    "--lr=${trialParameters.learningRate}", "--momentum=${trialParameters.momentum}",
                                ],
                                "resources": {"limits": {"memory": "1Gi", "cpu": "0.5"}},
                            }],
                            "restartPolicy": "Never",
                        },
                    }},
                },
            },
        },
    })
}

/// The Trial Katib's experiment controller creates for the stored (Katib-defaulted)
/// `experiment` and one suggestion (`name`, parameter `assignments`), derived from
/// `ReconcileExperiment.getTrialInstance` (pkg/controller.v1beta1/experiment/
/// experiment_controller_util.go) and its run spec from
/// `DefaultGenerator.GetRunSpecWithHyperParameters` / `applyParameters`
/// (experiment/manifest/generator.go: each `${trialParameters.<name>}` replaced in the
/// template's text by the value assigned to the parameter it references, then the name and
/// namespace set).
fn trial_for(experiment: &Value, name: &str, assignments: &[(&str, &str)]) -> Value {
    let spec = &experiment["spec"];
    let template = &spec["trialTemplate"];
    let mut text = template["trialSpec"].to_string();
    for parameter in template["trialParameters"].as_array().unwrap() {
        let reference = parameter["reference"].as_str().unwrap();
        let (_, value) = assignments
            .iter()
            .find(|(parameter, _)| *parameter == reference)
            .unwrap_or_else(|| panic!("no assignment for {reference}"));
        let placeholder = format!(
            "${{trialParameters.{}}}",
            parameter["name"].as_str().unwrap()
        );
        text = text.replace(&placeholder, value);
    }
    let mut run_spec: Value = serde_json::from_str(&text).unwrap();
    run_spec["metadata"]["name"] = json!(name);
    run_spec["metadata"]["namespace"] = experiment["metadata"]["namespace"].clone();
    // util.TrialLabels: the experiment's labels plus its name.
    let mut labels = experiment["metadata"]["labels"].clone();
    labels["katib.kubeflow.org/experiment"] = experiment["metadata"]["name"].clone();
    let mut trial = json!({
        "apiVersion": "kubeflow.org/v1beta1",
        "kind": "Trial",
        "metadata": {
            "name": name,
            "namespace": experiment["metadata"]["namespace"],
            "labels": labels,
            // controllerutil.SetControllerReference
            "ownerReferences": [{
                "apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment",
                "name": experiment["metadata"]["name"], "uid": experiment["metadata"]["uid"],
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "objective": spec["objective"],
            "parameterAssignments": assignments
                .iter()
                .map(|(name, value)| json!({"name": name, "value": value}))
                .collect::<Vec<_>>(),
            "runSpec": run_spec,
            "metricsCollector": spec["metricsCollectorSpec"],
        },
    });
    let trial_spec = &mut trial["spec"];
    for (from, to) in [
        ("retain", "retainRun"),
        ("primaryPodLabels", "primaryPodLabels"),
        ("primaryContainerName", "primaryContainerName"),
    ] {
        if !template[from].is_null() {
            trial_spec[to] = template[from].clone();
        }
    }
    // Copied only as a pair.
    if template["successCondition"].is_string() && template["failureCondition"].is_string() {
        trial_spec["successCondition"] = template["successCondition"].clone();
        trial_spec["failureCondition"] = template["failureCondition"].clone();
    }
    trial
}
