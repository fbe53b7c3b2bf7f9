//! The webhook over real HTTPS: each test starts the server on 127.0.0.1:0 with a certificate
//! from a test CA, POSTs AdmissionReview fixtures from tests/data/ and checks the answer by
//! applying the returned JSON Patch to the request's object.

mod common;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use base64::Engine;
use common::{HttpsClient, Reply, TestTls, config, fixture};
use serde_json::{Value, json};
use tenancy_fixer::{
    config::Config,
    webhook::{self, Limits, TlsFiles, WebhookError},
};
use tokio::{sync::oneshot, task::JoinHandle};

struct TestServer {
    addr: SocketAddr,
    tls: TestTls,
    client: HttpsClient,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), WebhookError>>,
}

impl TestServer {
    async fn start(settings_yaml: &str) -> Self {
        Self::start_with(config(settings_yaml)).await
    }

    async fn start_with(config: Arc<Config>) -> Self {
        common::install_crypto_provider();
        let tls = TestTls::new();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let files = TlsFiles::new(&tls.cert, &tls.key);
        let task = tokio::spawn(webhook::serve_listener(
            listener,
            files,
            config,
            Limits::default(),
            async {
                let _ = stopped.await;
            },
        ));
        let client = tls.client();
        Self {
            addr,
            tls,
            client,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    async fn post(&self, path: &str, body: impl Into<bytes::Bytes>) -> Reply {
        self.client.post(&self.url(path), body).await
    }

    /// POSTs a review and returns its `response`, after checking the envelope.
    async fn review(&self, path: &str, review: &Value) -> Value {
        let reply = self.post(path, serde_json::to_vec(review).unwrap()).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.content_type(), "application/json");
        let body = reply.json();
        assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(body["kind"], "AdmissionReview");
        let response = body["response"].clone();
        assert_eq!(
            response["uid"], review["request"]["uid"],
            "uid must be echoed"
        );
        assert_eq!(response["allowed"], true, "we never deny");
        response
    }

    async fn stop(mut self) -> Result<(), WebhookError> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("server stops after the shutdown signal")
            .expect("server task")
    }
}

/// The request's object with the response's patch applied.
fn patched(review: &Value, response: &Value) -> Value {
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(
            response["patch"]
                .as_str()
                .expect("patch is a base64 string"),
        )
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut object = review["request"]["object"].clone();
    json_patch::patch(&mut object, &patch).unwrap_or_else(|e| panic!("patch does not apply: {e}"));
    object
}

fn assert_no_patch(response: &Value) {
    assert!(
        response.get("patch").is_none(),
        "unexpected patch: {response}"
    );
    assert!(
        response.get("patchType").is_none(),
        "unexpected patchType: {response}"
    );
}

/// Appends to a JSON array, creating it when absent.
fn push(list: &mut Value, item: Value) {
    if list.is_null() {
        *list = json!([]);
    }
    list.as_array_mut().unwrap().push(item);
}

fn token_env() -> Value {
    json!({"name": "KF_PIPELINES_SA_TOKEN_PATH", "value": "/var/run/secrets/kubeflow/pipelines/token"})
}

fn token_mount() -> Value {
    json!({"name": "volume-kf-pipeline-token", "mountPath": "/var/run/secrets/kubeflow/pipelines", "readOnly": true})
}

fn token_volume() -> Value {
    json!({"name": "volume-kf-pipeline-token", "projected": {"sources": [{"serviceAccountToken": {
        "path": "token", "expirationSeconds": 7200, "audience": "pipelines.kubeflow.org"}}]}})
}

/// The review as the API server would send it again after our patch (reinvocation).
fn reinvoked(review: &Value, object: Value) -> Value {
    let mut again = review.clone();
    again["request"]["object"] = object;
    again["request"]["uid"] = json!("11111111-2222-4333-8444-555555555555");
    again
}

#[tokio::test]
async fn notebook_pod_token_mode_gets_label_and_token() {
    let server = TestServer::start("").await; // offline auto = token mode
    let review = fixture("notebook-pod.json");
    let response = server.review("/mutate/pods", &review).await;
    let got = patched(&review, &response);

    let mut expected = review["request"]["object"].clone();
    expected["metadata"]["labels"]["kubeflow-extension"] = json!("true");
    let notebook = &mut expected["spec"]["containers"][0];
    push(&mut notebook["env"], token_env());
    push(&mut notebook["volumeMounts"], token_mount());
    push(&mut expected["spec"]["volumes"], token_volume());
    assert_eq!(got, expected);
    // Everything the view does not hold survived: managedFields, env values, resources.
    assert_eq!(
        got["metadata"]["managedFields"],
        review["request"]["object"]["metadata"]["managedFields"]
    );

    // Reinvocation (IfNeeded) changes nothing more.
    let again = server
        .review("/mutate/pods", &reinvoked(&review, got))
        .await;
    assert_no_patch(&again);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn notebook_pod_header_mode_gets_only_the_label() {
    let server = TestServer::start("kfpAccess: header").await;
    let review = fixture("notebook-pod.json");
    let response = server.review("/mutate/pods", &review).await;
    let mut expected = review["request"]["object"].clone();
    expected["metadata"]["labels"]["kubeflow-extension"] = json!("true");
    assert_eq!(patched(&review, &response), expected);
}

const TRAINING_ARG: &str = "python3 /opt/pytorch-mnist/mnist.py --epochs=1 --batch-size=16 --lr=0.01 \
                            --momentum=0.5 1>/var/log/katib/metrics.log 2>&1 && echo completed > /var/log/katib/$$$$.pid";
/// The collector's words after wrapping: the termination log, the image's entrypoint, `-w false`
/// and Katib's args without its `-w`.
const COLLECTOR_WORDS: [&str; 16] = [
    "/dev/termination-log",
    "./file-metricscollector",
    "-w",
    "false",
    "-t",
    "random-exp-7mtk9x4q",
    "-m",
    "loss;Train-accuracy",
    "-o-type",
    "minimize",
    "-s-db",
    "katib-db-manager.kubeflow:6789",
    "-path",
    "/var/log/katib/metrics.log",
    "-format",
    "TEXT",
];

/// The trial pod with the token and both wrappers, given the two scripts: each container runs
/// `/bin/sh -c SCRIPT sh` with the original words as its args.
fn expected_trial_pod(
    review: &Value,
    training_script: &str,
    collector_script: &str,
    token: bool,
) -> Value {
    let mut expected = review["request"]["object"].clone();
    expected["metadata"]["annotations"]["tenancy-fixer.kubeflow.org/wrapped"] =
        json!("training-container,metrics-logger-and-collector");
    let containers = expected["spec"]["containers"].as_array_mut().unwrap();
    let training_words = json!(["sh", "-c", TRAINING_ARG]);
    for (container, script, words) in [
        (training_script, training_words),
        (collector_script, json!(COLLECTOR_WORDS)),
    ]
    .into_iter()
    .zip(containers.iter_mut())
    .map(|((script, words), container)| (container, script, words))
    {
        container["command"] = json!(["/bin/sh", "-c", script, "sh"]);
        container["args"] = words;
        if token {
            push(&mut container["env"], token_env());
            push(&mut container["volumeMounts"], token_mount());
        }
    }
    if token {
        push(&mut expected["spec"]["volumes"], token_volume());
    }
    expected
}

#[tokio::test]
async fn katib_trial_pod_modern_modes() {
    let server = TestServer::start("").await; // token, hold-annotation (wait-ready for pods), quitquitquit
    let review = fixture("katib-trial-pod.json");
    let response = server.review("/mutate/pods", &review).await;
    let got = patched(&review, &response);

    let training = got["spec"]["containers"][0]["command"][2]
        .as_str()
        .unwrap()
        .to_string();
    assert!(training.starts_with("tf_http() {"), "{training}");
    assert!(training.contains("sleep 60 &\n"), "{training}");
    assert!(
        training.contains("until tf_http GET 'http://127.0.0.1:15021/healthz/ready' 1; do\n"),
        "{training}"
    );
    assert!(training.ends_with("exec \"$@\"\n"), "{training}");

    let collector = got["spec"]["containers"][1]["command"][2]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        collector.contains("tf_http POST 'http://127.0.0.1:15020/quitquitquit' 5"),
        "{collector}"
    );
    assert!(
        collector.contains("tf_log=\"$1\"\nshift\n\"$@\"\ntf_code=$?\n"),
        "{collector}"
    );
    assert!(collector.ends_with("exit \"$tf_code\"\n"), "{collector}");

    assert_eq!(
        got,
        expected_trial_pod(&review, &training, &collector, true)
    );
    assert_eq!(
        got["spec"]["containers"][2], review["request"]["object"]["spec"]["containers"][2],
        "proxy untouched"
    );

    let again = server
        .review("/mutate/pods", &reinvoked(&review, got))
        .await;
    assert_no_patch(&again);
}

#[tokio::test]
async fn katib_trial_pod_legacy_modes() {
    let server = TestServer::start(
        "kfpAccess: header\nistioRbac: service-role-binding\nkatib:\n  proxyStartup: sleep\n  proxyShutdown: pkill\n",
    )
    .await;
    let review = fixture("katib-trial-pod.json");
    let response = server.review("/mutate/pods", &review).await;
    let got = patched(&review, &response);
    let collector = got["spec"]["containers"][1]["command"][2]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        collector.contains("pkill -INT 'pilot-agent'"),
        "{collector}"
    );
    assert_eq!(
        got,
        expected_trial_pod(&review, "sleep 10\nexec \"$@\"\n", &collector, false)
    );
}

#[tokio::test]
async fn trial_pod_with_native_sidecar_only_stops_the_collector_waiting() {
    let server = TestServer::start("kfpAccess: header").await;
    let mut review = fixture("katib-trial-pod.json");
    let pod = &mut review["request"]["object"];
    // Istio >= 1.27: the proxy is an init container with restartPolicy Always.
    let proxy = pod["spec"]["containers"].as_array_mut().unwrap().remove(2);
    let mut native = proxy.clone();
    native["restartPolicy"] = json!("Always");
    push(&mut pod["spec"]["initContainers"], native);
    let response = server.review("/mutate/pods", &review).await;
    let mut expected = review["request"]["object"].clone();
    expected["spec"]["containers"][1]["args"] = json!(COLLECTOR_WORDS[2..]);
    assert_eq!(patched(&review, &response), expected);
}

#[tokio::test]
async fn trial_job_gets_label_injection_account_and_hold() {
    let server = TestServer::start("").await;
    let review = fixture("trial-job.json");
    let response = server.review("/mutate/jobs", &review).await;
    let mut expected = review["request"]["object"].clone();
    let template = &mut expected["spec"]["template"];
    template["metadata"]["labels"]["kubeflow-extension"] = json!("true");
    // Istio reads the label first: it is set, and the fixture's opt-out annotation overridden.
    template["metadata"]["labels"]["sidecar.istio.io/inject"] = json!("true");
    template["metadata"]["annotations"]["sidecar.istio.io/inject"] = json!("true");
    template["metadata"]["annotations"]["proxy.istio.io/config"] =
        json!(r#"{"holdApplicationUntilProxyStarts":true}"#);
    template["spec"]["serviceAccountName"] = json!("default-editor");
    let got = patched(&review, &response);
    assert_eq!(got, expected);

    let again = server
        .review("/mutate/jobs", &reinvoked(&review, got))
        .await;
    assert_no_patch(&again);
}

#[tokio::test]
async fn trial_job_in_sleep_mode_gets_no_hold_annotation() {
    let server = TestServer::start("katib:\n  proxyStartup: sleep\n").await;
    let review = fixture("trial-job.json");
    let response = server.review("/mutate/jobs", &review).await;
    let got = patched(&review, &response);
    let meta = &got["spec"]["template"]["metadata"];
    assert_eq!(meta["labels"]["kubeflow-extension"], "true");
    assert_eq!(meta["labels"]["sidecar.istio.io/inject"], "true");
    assert_eq!(
        meta["annotations"],
        json!({"sidecar.istio.io/inject": "true"})
    );
    assert_eq!(
        got["spec"]["template"]["spec"]["serviceAccountName"],
        "default-editor"
    );
}

/// The same Trial Job, but not as Katib's controller would send it: each loses nothing but the
/// reserved label, and gains nothing.
#[tokio::test]
async fn forged_trial_jobs_get_nothing_and_lose_the_label() {
    let server = TestServer::start("kfpAccess: header").await;
    let mut forgeries = Vec::new();
    // Created by the tenant, not by Katib.
    let mut review = fixture("trial-job.json");
    review["request"]["userInfo"] =
        json!({"username": "alice@example.com", "groups": ["system:authenticated"]});
    forgeries.push(review);
    // Trial owners Katib never had, or that do not control the Job.
    for owner in [
        json!({"apiVersion": "kubeflow.org/v999", "kind": "Trial", "name": "t", "uid": "u", "controller": true}),
        json!({"apiVersion": "kubeflow.org/v1beta1", "kind": "Trial", "name": "t", "uid": "u"}),
    ] {
        let mut review = fixture("trial-job.json");
        review["request"]["object"]["metadata"]["ownerReferences"] = json!([owner]);
        forgeries.push(review);
    }
    for mut review in forgeries {
        review["request"]["object"]["spec"]["template"]["metadata"]["labels"]["kubeflow-extension"] =
            json!("true");
        let response = server.review("/mutate/jobs", &review).await;
        let mut expected = review["request"]["object"].clone();
        expected["spec"]["template"]["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove("kubeflow-extension");
        assert_eq!(patched(&review, &response), expected);
    }
}

#[tokio::test]
async fn pytorchjob_trial_gets_every_replica_template_into_the_mesh() {
    let server = TestServer::start("kfpAccess: header").await;
    let review = fixture("pytorchjob-trial.json");
    let response = server.review("/mutate/jobs", &review).await;
    let got = patched(&review, &response);
    let mut expected = review["request"]["object"].clone();
    for role in ["Master", "Worker"] {
        let template = &mut expected["spec"]["pytorchReplicaSpecs"][role]["template"];
        template["metadata"]["labels"] =
            json!({"kubeflow-extension": "true", "sidecar.istio.io/inject": "true"});
        template["metadata"]["annotations"] =
            json!({"proxy.istio.io/config": r#"{"holdApplicationUntilProxyStarts":true}"#});
        template["spec"]["serviceAccountName"] = json!("default-editor");
    }
    assert_eq!(got, expected);
    let again = server
        .review("/mutate/jobs", &reinvoked(&review, got))
        .await;
    assert_no_patch(&again);
}

/// `kubectl label pod web kubeflow-extension=true` and the same on a suspended Job's template:
/// the label is taken back; removing it is allowed.
#[tokio::test]
async fn update_cannot_add_the_reserved_label() {
    let server = TestServer::start("").await;
    for (name, labels) in [
        ("pod-label-update.json", "/metadata/labels"),
        (
            "job-template-label-update.json",
            "/spec/template/metadata/labels",
        ),
    ] {
        let review = fixture(name);
        let response = server.review("/mutate", &review).await;
        let got = patched(&review, &response);
        assert_eq!(
            got.pointer(labels).unwrap(),
            review["request"]["oldObject"].pointer(labels).unwrap(),
            "{name}"
        );
        assert_eq!(
            got["metadata"]["resourceVersion"],
            review["request"]["object"]["metadata"]["resourceVersion"]
        );

        // The reverse UPDATE (removing it) passes unchanged.
        let mut removal = review.clone();
        removal["request"]["object"] = review["request"]["oldObject"].clone();
        removal["request"]["oldObject"] = review["request"]["object"].clone();
        assert_no_patch(&server.review("/mutate", &removal).await);
    }
}

#[tokio::test]
async fn trials_are_labelled_in_both_versions() {
    let server = TestServer::start("").await;
    for version in ["v1beta1", "v1alpha3"] {
        let mut review = fixture("trial-v1beta1.json");
        review["request"]["kind"]["version"] = json!(version);
        review["request"]["object"]["apiVersion"] = json!(format!("kubeflow.org/{version}"));
        let response = server.review("/mutate/trials", &review).await;
        let mut expected = review["request"]["object"].clone();
        expected["metadata"]["labels"]["kubeflow-extension"] = json!("true");
        assert_eq!(patched(&review, &response), expected, "{version}");
    }
}

#[tokio::test]
async fn objects_no_rule_applies_to_are_allowed_without_patch() {
    let server = TestServer::start("kfpAccess: header").await;
    for name in ["plain-pod.json", "kube-system-pod.json", "configmap.json"] {
        let review = fixture(name);
        for path in webhook::MUTATE_PATHS {
            let response = server.review(path, &review).await;
            assert_no_patch(&response);
        }
    }
    // A Trial Job in the Kubeflow namespace is Katib's own business.
    let mut review = fixture("trial-job.json");
    review["request"]["namespace"] = json!("kubeflow");
    review["request"]["object"]["metadata"]["namespace"] = json!("kubeflow");
    assert_no_patch(&server.review("/mutate/jobs", &review).await);
}

#[tokio::test]
async fn every_mutate_path_dispatches_on_the_request_kind() {
    let server = TestServer::start("").await;
    let review = fixture("trial-job.json");
    for path in webhook::MUTATE_PATHS {
        let response = server.review(path, &review).await;
        assert_eq!(
            patched(&review, &response)["spec"]["template"]["metadata"]["labels"]["kubeflow-extension"],
            "true"
        );
    }
}

#[tokio::test]
async fn unparseable_objects_and_other_operations_are_allowed_without_patch() {
    let server = TestServer::start("").await;
    let mut invalid = fixture("notebook-pod.json");
    invalid["request"]["object"]["spec"] = json!({"containers": "nope"});
    assert_no_patch(&server.review("/mutate/pods", &invalid).await);

    let mut delete = fixture("notebook-pod.json");
    delete["request"]["operation"] = json!("DELETE");
    assert_no_patch(&server.review("/mutate/pods", &delete).await);

    // An UPDATE without its old object is not guessed at.
    let mut update = fixture("pod-label-update.json");
    update["request"]
        .as_object_mut()
        .unwrap()
        .remove("oldObject");
    assert_no_patch(&server.review("/mutate/pods", &update).await);

    let mut no_object = fixture("notebook-pod.json");
    no_object["request"]
        .as_object_mut()
        .unwrap()
        .remove("object");
    assert_no_patch(&server.review("/mutate/pods", &no_object).await);
}

#[tokio::test]
async fn bodies_that_are_not_reviews_get_400_with_a_reason() {
    let server = TestServer::start("").await;
    for (body, reason) in [
        (&b"{not json"[..], "body is not an AdmissionReview"),
        (b"{\"foo\":1}", "AdmissionReview has no request"),
        (b"", "body is not an AdmissionReview"),
        (b"[1,2]", "body is not an AdmissionReview"),
    ] {
        let reply = server.post("/mutate/pods", body.to_vec()).await;
        assert_eq!(reply.status, 400, "{}", reply.text());
        assert!(
            reply.content_type().starts_with("text/plain"),
            "{}",
            reply.content_type()
        );
        let text = reply.text();
        assert!(text.starts_with(reason), "{text}");
        assert_eq!(text.trim_end().lines().count(), 1, "one line: {text:?}");
    }
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let server = TestServer::start("").await;
    let reply = server
        .post("/mutate", vec![b' '; webhook::BODY_LIMIT + 1])
        .await;
    assert_eq!(reply.status, 413);
    // A big but acceptable review still works: 4 MiB of annotations.
    let mut review = fixture("plain-pod.json");
    review["request"]["object"]["metadata"]["annotations"] = json!({"big": "x".repeat(4 << 20)});
    assert_no_patch(&server.review("/mutate/pods", &review).await);
}

#[tokio::test]
async fn health_endpoints_and_unknown_routes() {
    let server = TestServer::start("").await;
    for path in ["/healthz", "/readyz"] {
        let reply = server.client.get(&server.url(path)).await;
        assert_eq!(
            (reply.status.as_u16(), reply.text().as_str()),
            (200, "ok"),
            "{path}"
        );
    }
    assert_eq!(
        server.client.get(&server.url("/mutate/pods")).await.status,
        405
    );
    assert_eq!(server.post("/validate", "{}").await.status, 404);
}

#[tokio::test]
async fn serves_tls_1_3_and_accepts_tls_1_2() {
    use tokio_rustls::{TlsConnector, rustls};
    let server = TestServer::start("").await;
    for (versions, expected) in [
        (
            &[&rustls::version::TLS13][..],
            rustls::ProtocolVersion::TLSv1_3,
        ),
        (
            &[&rustls::version::TLS12][..],
            rustls::ProtocolVersion::TLSv1_2,
        ),
    ] {
        let config = rustls::ClientConfig::builder_with_protocol_versions(versions)
            .with_root_certificates(server.tls.roots())
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let stream = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        assert_eq!(stream.get_ref().1.protocol_version(), Some(expected));
    }
}

#[tokio::test]
async fn untrusted_clients_cannot_connect_and_shutdown_is_graceful() {
    let server = TestServer::start("").await;
    let other = TestTls::new(); // a different CA
    let result = tokio::time::timeout(Duration::from_secs(5), async {
        let config = other.client_config();
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    })
    .await
    .unwrap();
    assert!(
        result.is_err(),
        "a client not trusting our CA must fail the handshake"
    );

    // A request, then shutdown: the server returns Ok and stops listening.
    assert_eq!(server.client.get(&server.url("/healthz")).await.status, 200);
    let addr = server.addr;
    server.stop().await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening after shutdown"
    );
}

#[tokio::test]
async fn missing_certificate_is_a_typed_error() {
    common::install_crypto_provider();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let files = TlsFiles::new("/nonexistent/tls.crt", "/nonexistent/tls.key");
    let error = webhook::serve_listener(
        listener,
        files,
        config(""),
        Limits::default(),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, WebhookError::Tls { .. }), "{error:?}");
    assert!(
        error.to_string().contains("/nonexistent/tls.crt"),
        "{error}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let tls = TestTls::new();
    let error = webhook::serve(
        addr,
        TlsFiles::new(&tls.cert, &tls.key),
        config(""),
        Limits::default(),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, WebhookError::Bind { .. }), "{error:?}");
}
