//! End to end: `tenancy-fixer check` against a real API server with `serve` running, healthy
//! first, then broken one way at a time: a foreign object in a Profile's place, Katib's
//! collector waiting for all processes while an Istio injector is registered, the service not
//! answering (and a Profile made meanwhile lacking its objects), a caBundle of another CA,
//! unusable settings in the install's ConfigMap, a Service reference (from outside the cluster,
//! then through `--webhook-url`) without ready endpoints, the webhook not registered. Each run's exit
//! code and JSON report are checked. One test: the webhook configuration is one per cluster.

mod support;

use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration, core::v1::ConfigMap,
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::{Value, json};
use support::{scenario::*, *};
use tenancy_fixer::{
    config::Settings,
    manifests::{self, Endpoint, FailurePolicy, WEBHOOK_CONFIGURATION_NAME},
};

/// Defaults: token mode (a PodDefault per profile) on a current cluster.
const SETTINGS: &str = "";

/// Runs `check -o json` (plus `args`) against the plane: its exit code and report.
async fn check(plane: &ControlPlane, args: &[&str]) -> (i32, Value) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenancy-fixer"))
        .arg("check")
        .arg("--kubeconfig")
        .arg(plane.kubeconfig())
        .args(["-o", "json"])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("run tenancy-fixer check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not a JSON report ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let code = output.status.code().expect("an exit code");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if code == 1 {
        assert!(
            stderr.trim_end().ends_with("warning(s)") && stderr.lines().count() == 1,
            "one line saying how many problems: {stderr}"
        );
    }
    (code, report)
}

/// The findings of judgement `check`: (severity, subject, what).
fn found(report: &Value, check: &str) -> Vec<(String, String, String)> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == check)
        .map(|f| {
            let text = |k: &str| f[k].as_str().unwrap_or_default().to_string();
            (text("severity"), text("subject"), text("what"))
        })
        .collect()
}

/// The one finding of `check` about `subject` (a subject may list several, comma-separated).
fn finding(report: &Value, check: &str, subject: &str) -> (String, String) {
    let matching: Vec<(String, String, String)> = found(report, check)
        .into_iter()
        .filter(|(_, s, _)| s.split(", ").any(|s| s == subject))
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "one {check} finding about {subject}: {:#}",
        report["findings"]
    );
    let (severity, _, what) = matching.into_iter().next().unwrap();
    (severity, what)
}

fn problems(report: &Value) -> Vec<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "error" || f["severity"] == "warning")
        .map(|f| format!("{} {}: {}", f["check"], f["subject"], f["what"]))
        .collect()
}

const PODS: &str = "pods.tenancy-fixer.kubeflow.org";

async fn apply(client: &Client, manifest: &Value, namespace: Option<&str>) {
    let api = api_for(client, namespace, manifest).await;
    let name = manifest["metadata"]["name"].as_str().unwrap();
    api.patch(
        name,
        &PatchParams::apply("e2e-check").force(),
        &Patch::Apply(manifest),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {manifest}: {e}"));
}

async fn delete(client: &Client, manifest: &Value, namespace: Option<&str>) {
    let api = api_for(client, namespace, manifest).await;
    let name = manifest["metadata"]["name"].as_str().unwrap();
    api.delete(name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_each_broken_setup_and_a_healthy_one_exits_0() {
    let plane = control_plane(MODERN_CRDS);
    let client = plane.client().await;
    let tls = webhook_tls(&tempdir("tls"));
    let serve = Serve::start(plane, SETTINGS, &tls, 0);
    let port = serve.port;
    let caps = tenancy_fixer::controller::discover(&client).await.unwrap();
    let config = Settings::from_yaml(SETTINGS, "t").unwrap().resolve(&caps);
    let kubeflow = config.settings.kubeflow_namespace.clone();
    ensure_namespace(&client, &kubeflow).await;
    register_webhook(&client, &serve.url(), &tls, &config).await;
    create_profile(&client, "check-ok", "ok@example.com").await;
    converged(&client, "check-ok", &config).await;

    // Healthy: exit 0, every judgement fine; the settings are the defaults (no install ConfigMap).
    let (code, report) = check(plane, &[]).await;
    assert_eq!(code, 0, "{:#?}", problems(&report));
    assert_eq!(
        report["settings"],
        "defaults: no ConfigMap tenancy-fixer/tenancy-fixer with config.yaml"
    );
    for key in ["settings", "apis", "modes", "findings", "summary"] {
        assert!(report.get(key).is_some(), "report has {key}");
    }
    assert_eq!(
        report["summary"],
        json!({"ok": report["summary"]["ok"], "info": report["summary"]["info"],
               "warnings": 0, "errors": 0, "exitCode": 0})
    );
    let profile_api = report["apis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "Profile")
        .unwrap();
    assert_eq!(
        profile_api,
        &json!({"project": "Kubeflow", "apiVersion": "kubeflow.org/v1", "kind": "Profile",
                "served": true, "usedFor": "reconciled by the controller"})
    );
    assert_eq!(
        report["modes"][0],
        json!({"setting": "kfpAccess", "configured": "auto", "resolved": "token",
               "why": "auto: rbac.istio.io/v1alpha1 is not served: the modern recipe"})
    );
    let registered = &report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "webhook-registered")
        .unwrap();
    let mut keys: Vec<&String> = registered.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["check", "severity", "subject", "what"],
        "no fix on an ok finding"
    );
    assert_eq!(finding(&report, "webhook-ca-bundle", PODS).0, "ok");
    let (severity, what) = finding(&report, "webhook-answers", PODS);
    assert_eq!(severity, "ok");
    assert_eq!(what, format!("{}/mutate/pods answers reviews", serve.url()));
    assert_eq!(
        finding(&report, "profile-objects", "Profile check-ok").0,
        "ok"
    );

    // The table, as the README runs it: exit 0, the sections.
    let table = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenancy-fixer"))
        .args(["check", "--kubeconfig"])
        .arg(plane.kubeconfig())
        .output()
        .await
        .unwrap();
    assert!(table.status.success());
    let table = String::from_utf8(table.stdout).unwrap();
    for section in [
        "APIs\n",
        "\nSettings (from defaults: no ConfigMap",
        "\nFindings\n",
        "0 error(s), 0 warning(s)",
    ] {
        assert!(table.contains(section), "{section:?} in:\n{table}");
    }

    // A foreign object in a Profile's place (the user's own access-ml-pipeline, another token).
    let foreign = json!({
        "apiVersion": "kubeflow.org/v1alpha1", "kind": "PodDefault",
        "metadata": {"name": "access-ml-pipeline"},
        "spec": {"desc": "theirs", "selector": {"matchLabels": {"theirs": "true"}},
                 "env": [{"name": "THEIRS", "value": "1"}]},
    });
    ensure_namespace(&client, "check-foreign").await;
    create(&client, Some("check-foreign"), &foreign).await;
    create_profile(&client, "check-foreign", "foreign@example.com").await;
    let (code, report) = check(
        plane,
        &["--config", &serve.config_file.display().to_string()],
    )
    .await;
    assert_eq!(code, 1);
    assert!(report["settings"].as_str().unwrap().starts_with("file "));
    let (severity, what) = finding(&report, "profile-foreign-object", "Profile check-foreign");
    assert_eq!(severity, "error");
    assert!(
        what.contains("PodDefault check-foreign/access-ml-pipeline was not made by tenancy-fixer"),
        "{what}"
    );
    assert_eq!(
        finding(&report, "profile-objects", "Profile check-ok").0,
        "ok"
    );
    // Removed, it is replaced at the next reconcile (the controller watches only objects
    // labelled as ours: a Profile change brings the reconcile sooner than the resync).
    delete(&client, &foreign, Some("check-foreign")).await;
    let touch = json!({"metadata": {"annotations": {"e2e-check/touched": "1"}}});
    api_for(&client, None, &profile_manifest("check-foreign", ""))
        .await
        .patch(
            "check-foreign",
            &PatchParams::default(),
            &Patch::Merge(&touch),
        )
        .await
        .unwrap();
    converged(&client, "check-foreign", &config).await;

    // Katib's collector waits for all processes, an Istio injector is registered (sorted before
    // us), istiod injects native sidecars.
    let katib_config = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "katib-config", "namespace": kubeflow},
        "data": {"katib-config.yaml": "apiVersion: config.kubeflow.org/v1beta1\nkind: KatibConfig\nruntime:\n  metricsCollectors:\n  - kind: StdOut\n    image: ghcr.io/kubeflow/katib/file-metrics-collector:v0.19.0\n    waitAllProcesses: true\n"},
    });
    apply(&client, &katib_config, Some(&kubeflow)).await;
    let injector = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "istio-sidecar-injector"},
        "webhooks": [{
            "name": "namespace.sidecar-injector.istio.io",
            "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Ignore",
            "clientConfig": {"service": {"namespace": "istio-system", "name": "istiod", "path": "/inject"}},
            // Matches no namespace: this stand-in is never called.
            "namespaceSelector": {"matchLabels": {"e2e-check/never": "true"}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
        }],
    });
    apply(&client, &injector, None).await;
    ensure_namespace(&client, "istio-system").await;
    let istiod = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "istiod", "namespace": "istio-system"},
        "spec": {
            "selector": {"matchLabels": {"app": "istiod"}},
            "template": {
                "metadata": {"labels": {"app": "istiod"}},
                "spec": {"containers": [{"name": "discovery", "image": "docker.io/istio/pilot:1.29.0",
                                         "env": [{"name": "ENABLE_NATIVE_SIDECARS", "value": "true"}]}]},
            },
        },
    });
    apply(&client, &istiod, Some("istio-system")).await;
    let (code, report) = check(plane, &[]).await;
    assert_eq!(code, 1);
    let (severity, what) = finding(
        &report,
        "katib-collector-waits",
        "ConfigMap kubeflow/katib-config",
    );
    assert_eq!(severity, "warning");
    assert!(what.contains("StdOut (waitAllProcesses: true)"), "{what}");
    assert!(what.contains("native sidecar"), "{what}");
    let (severity, what) = finding(&report, "istio-native-sidecars", "Istio sidecar injector");
    assert_eq!(severity, "info");
    assert!(
        what.contains("istiod ENABLE_NATIVE_SIDECARS=true"),
        "{what}"
    );
    let (severity, _) = finding(
        &report,
        "webhook-order",
        "MutatingWebhookConfiguration istio-sidecar-injector",
    );
    assert_eq!(severity, "ok");
    assert_eq!(problems(&report).len(), 1, "{:#?}", problems(&report));
    // Told not to wait: fine again.
    let mut not_waiting = katib_config.clone();
    not_waiting["data"]["katib-config.yaml"] = json!(
        "runtime:\n  metricsCollectors:\n  - kind: StdOut\n    image: x\n    waitAllProcesses: false\n"
    );
    apply(&client, &not_waiting, Some(&kubeflow)).await;
    let (code, report) = check(plane, &[]).await;
    assert_eq!(code, 0, "{:#?}", problems(&report));
    delete(&client, &injector, None).await;

    // The service does not answer; a Profile made meanwhile lacks its objects.
    serve.stop();
    create_profile(&client, "check-missing", "missing@example.com").await;
    let (code, report) = check(plane, &[]).await;
    assert_eq!(code, 1);
    let (severity, what) = finding(&report, "webhook-answers", PODS);
    assert_eq!(severity, "error");
    assert!(what.contains("cannot be reached"), "{what}");
    assert!(
        what.contains("admits these objects unchanged (failurePolicy Ignore)"),
        "{what}"
    );
    let (severity, what) = finding(&report, "profile-objects", "Profile check-missing");
    assert_eq!(severity, "error");
    assert_eq!(
        what,
        "PodDefault check-missing/access-ml-pipeline is missing"
    );
    let serve = Serve::start(plane, SETTINGS, &tls, port);
    converged(&client, "check-missing", &config).await;

    // A caBundle of another CA: the certificate is refused, the answer still judged apart.
    let other_ca = webhook_tls(&tempdir("other-ca")).ca_pem;
    let wrong = manifests::webhook_configuration(
        &Endpoint::Url(serve.url()),
        other_ca.as_bytes(),
        FailurePolicy::Ignore,
        &config,
    );
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    webhooks
        .patch(
            WEBHOOK_CONFIGURATION_NAME,
            &PatchParams::apply("tenancy-fixer-local").force(),
            &Patch::Apply(&wrong),
        )
        .await
        .unwrap();
    let (code, report) = check(plane, &[]).await;
    assert_eq!(code, 1);
    let (severity, what) = finding(&report, "webhook-ca-bundle", PODS);
    assert_eq!(severity, "error");
    assert!(
        what.contains("not signed by the CA in the caBundle"),
        "{what}"
    );
    assert_eq!(finding(&report, "webhook-answers", PODS).0, "ok");
    assert_eq!(problems(&report).len(), 1, "{:#?}", problems(&report));

    // Settings in the install's ConfigMap that serve would refuse: an error naming the key.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), manifests::NAMESPACE);
    ensure_namespace(&client, manifests::NAMESPACE).await;
    let install = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": manifests::NAME, "namespace": manifests::NAMESPACE},
        "data": {manifests::CONFIG_KEY: "kfpAccess: cookies\n"},
    });
    apply(&client, &install, Some(manifests::NAMESPACE)).await;
    let (code, report) = check(plane, &[]).await;
    assert_eq!(code, 1);
    let (severity, what) = finding(&report, "settings", "ConfigMap tenancy-fixer/tenancy-fixer");
    assert_eq!(severity, "error");
    assert!(
        what.contains("kfpAccess") && what.contains("cookies"),
        "{what}"
    );
    cms.delete(manifests::NAME, &DeleteParams::default())
        .await
        .unwrap();

    // The install's way: the webhook names the Service, serve manages its certificate (for
    // the Service's DNS name) and publishes its CA. The Service's name resolves only in the
    // cluster: from here the call is reported as not checked, with --webhook-url (a
    // port-forward, as the README says) it is checked for the Service's name.
    serve.stop();
    let by_service = manifests::webhook_configuration(
        &Endpoint::Service {
            namespace: manifests::NAMESPACE.into(),
            name: manifests::NAME.into(),
            port: 443,
        },
        b"",
        FailurePolicy::Ignore,
        &config,
    );
    webhooks
        .patch(
            WEBHOOK_CONFIGURATION_NAME,
            &PatchParams::apply("tenancy-fixer-local").force(),
            &Patch::Apply(&by_service),
        )
        .await
        .unwrap();
    let serve = Serve::start_self_managed(plane, SETTINGS, 0, &[]);
    eventually("caBundle published", || async {
        let stored = webhooks.get(WEBHOOK_CONFIGURATION_NAME).await.ok()?;
        let bundle = stored.webhooks?.first()?.client_config.ca_bundle.clone()?;
        (!bundle.0.is_empty()).then_some(())
    })
    .await;
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": manifests::NAME, "namespace": manifests::NAMESPACE},
        "spec": {"ports": [{"name": "https", "port": 443, "targetPort": 8443}]},
    });
    apply(&client, &service, Some(manifests::NAMESPACE)).await;
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "tenancy-fixer-e2e", "namespace": manifests::NAMESPACE,
                     "labels": {"kubernetes.io/service-name": manifests::NAME}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.50"], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": 8443}],
    });
    apply(&client, &slice, Some(manifests::NAMESPACE)).await;
    let (code, report) = check(plane, &[]).await;
    assert_eq!(code, 0, "{:#?}", problems(&report));
    let (severity, what) = finding(&report, "webhook-answers", PODS);
    assert_eq!(severity, "info");
    assert!(
        what.contains("tenancy-fixer.tenancy-fixer.svc does not resolve from here"),
        "{what}"
    );
    assert_eq!(
        finding(
            &report,
            "webhook-service",
            "Service tenancy-fixer/tenancy-fixer"
        ),
        ("ok".into(), "1 ready endpoint(s)".into())
    );
    let via = serve.url();
    let (code, report) = check(plane, &["--webhook-url", &via]).await;
    assert_eq!(code, 0, "{:#?}", problems(&report));
    assert_eq!(
        finding(&report, "webhook-ca-bundle", PODS),
        (
            "ok".into(),
            "the caBundle trusts the certificate served for tenancy-fixer.tenancy-fixer.svc".into()
        )
    );
    assert_eq!(
        finding(&report, "webhook-answers", PODS),
        (
            "ok".into(),
            format!(
                "https://tenancy-fixer.tenancy-fixer.svc:443/mutate/pods via {via} answers reviews"
            )
        )
    );
    // No ready replica behind the Service.
    delete(&client, &slice, Some(manifests::NAMESPACE)).await;
    let (code, report) = check(plane, &["--webhook-url", &via]).await;
    assert_eq!(code, 1);
    let (severity, what) = finding(
        &report,
        "webhook-service",
        "Service tenancy-fixer/tenancy-fixer",
    );
    assert_eq!(severity, "error");
    assert!(what.contains("no ready endpoint"), "{what}");
    assert_eq!(problems(&report).len(), 1, "{:#?}", problems(&report));

    // Not registered: one error, nothing else about the webhook.
    webhooks
        .delete(WEBHOOK_CONFIGURATION_NAME, &DeleteParams::default())
        .await
        .unwrap();
    let (code, report) = check(plane, &[]).await;
    assert_eq!(code, 1);
    let (severity, what) = finding(
        &report,
        "webhook-registered",
        "MutatingWebhookConfiguration tenancy-fixer",
    );
    assert_eq!(severity, "error");
    assert!(what.starts_with("not registered"), "{what}");
    assert!(found(&report, "webhook-answers").is_empty());
    assert_eq!(problems(&report).len(), 1, "{:#?}", problems(&report));
}
