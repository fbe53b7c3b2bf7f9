//! End to end, self-managed certificates: `serve` given no certificate files makes the CA and
//! serving certificate in a Secret, publishes the CA as the caBundle of its
//! MutatingWebhookConfiguration, and the API server then calls it over verified TLS. Two
//! replicas starting at once share one certificate; a rotation during a stream of admissions
//! (failurePolicy Fail) loses none of them.

mod support;

use std::{
    io::Write,
    net::TcpStream,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    core::v1::{Pod, Secret},
};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::json;
use support::{scenario::MODERN_CRDS, *};
use tenancy_fixer::{
    config::{Capabilities, Config, Settings},
    manifests::{self, Endpoint, FailurePolicy},
};

const NAMESPACE: &str = "tenancy-fixer";

fn config() -> Config {
    Settings::default().resolve(&Capabilities::modern())
}

/// Our MutatingWebhookConfiguration pointing at `port`, trusting nothing yet (empty caBundle).
async fn register_without_ca(client: &Client, port: u16, failure_policy: FailurePolicy) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let _ = api
        .delete(
            manifests::WEBHOOK_CONFIGURATION_NAME,
            &DeleteParams::default(),
        )
        .await;
    eventually("the old configuration gone", || async {
        api.get_opt(manifests::WEBHOOK_CONFIGURATION_NAME)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let configuration = manifests::webhook_configuration(
        &Endpoint::Url(format!("https://127.0.0.1:{port}")),
        b"",
        failure_policy,
        &config(),
    );
    api.create(&PostParams::default(), &configuration)
        .await
        .unwrap();
}

/// The resources the workloads webhook's rules name.
async fn workload_resources(client: &Client) -> Vec<String> {
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(manifests::WEBHOOK_CONFIGURATION_NAME)
        .await
        .unwrap()
        .webhooks
        .unwrap()
        .into_iter()
        .find(|w| w.name.starts_with("jobs."))
        .unwrap()
        .rules
        .unwrap_or_default()
        .into_iter()
        .flat_map(|rule| rule.resources.unwrap_or_default())
        .collect()
}

async fn secret(client: &Client, name: &str) -> Secret {
    Api::<Secret>::namespaced(client.clone(), NAMESPACE)
        .get(name)
        .await
        .unwrap()
}

fn key(secret: &Secret, key: &str) -> Vec<u8> {
    secret.data.as_ref().unwrap()[key].0.clone()
}

async fn ca_bundles(client: &Client) -> Vec<Vec<u8>> {
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(manifests::WEBHOOK_CONFIGURATION_NAME)
        .await
        .unwrap()
        .webhooks
        .unwrap()
        .into_iter()
        .map(|w| w.client_config.ca_bundle.map(|b| b.0).unwrap_or_default())
        .collect()
}

/// The certificate the server on `port` presents, verified against `ca_pem` for 127.0.0.1.
fn served_certificate(port: u16, ca_pem: &[u8]) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(ca.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut stream = rustls::Stream::new(&mut connection, &mut socket);
    stream.flush().unwrap();
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(stream.sock).unwrap();
    }
    connection.peer_certificates().unwrap()[0].to_vec()
}

fn der(pem: &[u8]) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem).unwrap().to_vec()
}

/// A notebook pod, created as a dry run: admitted through the webhook or refused.
async fn admit_notebook(client: &Client, name: &str) -> Result<Pod, kube::Error> {
    let pod: Pod = serde_json::from_value(pod_json(name, &[("notebook-name", "nb")])).unwrap();
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    Api::<Pod>::namespaced(client.clone(), "alice")
        .create(&dry_run, &pod)
        .await
}

/// Waits until the API server calls the webhook over verified TLS (a probe pod comes back
/// labelled).
async fn webhook_answers(client: &Client, probe: &str, what: &str) {
    eventually(what, || async {
        admit_notebook(client, probe)
            .await
            .ok()
            .filter(labelled)
            .map(|_| ())
    })
    .await;
}

fn labelled(pod: &Pod) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubeflow-extension"))
        .map(String::as_str)
        == Some("true")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_managed_certificates_bootstrap_are_shared_and_rotate_without_a_lost_admission() {
    let plane = control_plane(MODERN_CRDS);
    let client = plane.client().await;
    ensure_namespace(&client, NAMESPACE).await;
    ensure_namespace(&client, "alice").await;

    // Two replicas start at once, with no certificate files: one Secret, one certificate.
    let (port_a, port_b) = (free_port(), free_port());
    register_without_ca(&client, port_a, FailurePolicy::Ignore).await;
    let flags = [
        "--no-controller",
        "--certificate-namespace",
        NAMESPACE,
        "--certificate-names",
        "127.0.0.1",
    ];
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| Serve::start_self_managed(plane, "", port_a, &flags));
        let b = scope.spawn(|| Serve::start_self_managed(plane, "", port_b, &flags));
        (a.join().unwrap(), b.join().unwrap())
    });
    let stored = secret(&client, "tenancy-fixer-certs").await;
    assert_eq!(
        stored.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
        "tenancy-fixer"
    );
    let ca = key(&stored, "ca.crt");
    let served = der(&key(&stored, "tls.crt"));
    assert_eq!(served_certificate(port_a, &ca), served, "replica a");
    assert_eq!(served_certificate(port_b, &ca), served, "replica b");
    // The caBundle is the Secret's CA, and the API server now reaches us over verified TLS.
    eventually("caBundle published", || async {
        ca_bundles(&client)
            .await
            .iter()
            .all(|bundle| *bundle == ca)
            .then_some(())
    })
    .await;
    webhook_answers(&client, "bootstrap", "the API server calls the webhook").await;
    drop((a, b));

    // Rotation: 12-second certificates (renewed after 8 s), checked every second, while pods
    // are admitted one after another under failurePolicy Fail.
    let port = free_port();
    register_without_ca(&client, port, FailurePolicy::Fail).await;
    let serve = Serve::start_self_managed(
        plane,
        "",
        port,
        &[
            "--no-controller",
            "--certificate-namespace",
            NAMESPACE,
            "--certificate-secret",
            "rotating-certs",
            "--certificate-names",
            "127.0.0.1",
            "--certificate-validity",
            "12",
            "--certificate-check-interval",
            "1",
        ],
    );
    let first = secret(&client, "rotating-certs").await;
    let ca = key(&first, "ca.crt");
    webhook_answers(
        &client,
        "rotating-probe",
        "the API server calls the rotating webhook",
    )
    .await;
    let mut served = vec![served_certificate(port, &ca)];
    let (mut admitted, mut refused) = (0, Vec::new());
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        match admit_notebook(&client, &format!("nb-{admitted}")).await {
            Ok(pod) if labelled(&pod) => admitted += 1,
            Ok(pod) => refused.push(format!("admitted without the label: {:?}", pod.metadata)),
            Err(error) => refused.push(error.to_string()),
        }
        let now = served_certificate(port, &ca);
        if served.last() != Some(&now) {
            served.push(now);
        }
    }
    assert_eq!(refused, Vec::<String>::new(), "after {admitted} admissions");
    assert!(admitted > 20, "{admitted} admissions");
    assert!(
        served.len() >= 3,
        "the serving certificate rotated at least twice in 20 s: {} certificates",
        served.len()
    );
    let last = secret(&client, "rotating-certs").await;
    assert_eq!(key(&last, "ca.crt"), ca, "the CA (and caBundle) stays");
    assert_eq!(der(&key(&last, "tls.crt")), *served.last().unwrap());
    assert!(ca_bundles(&client).await.iter().all(|bundle| *bundle == ca));

    // The workloads webhook names only the kinds the cluster serves (here batch Jobs: no
    // Training Operator, JobSet or Trainer), and a kind installed later joins at the next check.
    eventually("workload rules limited to the served kinds", || async {
        (workload_resources(&client).await == ["jobs"]).then_some(())
    })
    .await;
    let crd_file = repo_root().join("target/crds/training-operator/pytorchjobs.kubeflow.org.yaml");
    let crd: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&crd_file).unwrap()).unwrap();
    create(&client, None, &crd).await;
    eventually("PyTorchJobs join the workload rules", || async {
        (workload_resources(&client).await == ["jobs", "pytorchjobs"]).then_some(())
    })
    .await;
    drop(serve);

    // A Secret of that name we did not make is never touched: serve refuses to start.
    let foreign = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "users-secret", "namespace": NAMESPACE},
        "stringData": {"note": "mine"},
    });
    create(&client, Some(NAMESPACE), &foreign).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenancy-fixer"))
        .args(["serve", "--no-controller", "--listen", "127.0.0.1:0"])
        .args(["--kubeconfig", plane.kubeconfig().to_str().unwrap()])
        .args(["--certificate-namespace", NAMESPACE])
        .args(["--certificate-secret", "users-secret"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("was not made by tenancy-fixer"), "{stderr}");
    let kept = secret(&client, "users-secret").await;
    assert_eq!(kept.data.unwrap()["note"].0, b"mine");
}
