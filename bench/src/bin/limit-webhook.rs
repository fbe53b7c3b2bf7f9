//! The hand-tuned limit: what a webhook doing the notebook mutation costs at the least on the
//! stack of `tenancy-fixer serve` (the same `webhook::https_server`, runtime, allocator and body
//! limit as `reference-webhook`). Each review is parsed once into the few borrowed fields the
//! notebook mutation needs (serde skips everything else, as tenancy-fixer's views do); a pod
//! labelled `notebook-name` gets a fixed 6-operation JSON Patch (the extension label, the KFP
//! token's env var, mount and volume, at the indices the parse counted), anything else an
//! answer without a patch. No policy, no diff, no log, no metrics. `webhook-load` reports
//! tenancy-fixer's throughput as a ratio of this one's for every review body.

use std::{borrow::Cow, collections::BTreeMap, fmt::Write, net::SocketAddr, path::PathBuf};

use axum::{
    Router,
    body::Bytes,
    extract::DefaultBodyLimit,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine;
use clap::Parser;
use serde::{Deserialize, Serialize, de::IgnoredAny};

#[global_allocator]
static ALLOC: tenancy_fixer_bench::Allocator = tenancy_fixer_bench::ALLOCATOR;

/// A webhook that answers notebook pods with a fixed patch and everything else without one.
#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    #[arg(long)]
    tls_cert: PathBuf,
    #[arg(long)]
    tls_key: PathBuf,
}

#[derive(Deserialize)]
struct Review<'a> {
    #[serde(borrow)]
    request: Request<'a>,
}

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    uid: Cow<'a, str>,
    #[serde(borrow)]
    kind: Kind<'a>,
    #[serde(default, borrow)]
    namespace: Cow<'a, str>,
    #[serde(default, borrow)]
    operation: Cow<'a, str>,
    #[serde(default, borrow)]
    object: Option<Pod<'a>>,
}

#[derive(Deserialize)]
struct Kind<'a> {
    #[serde(default, borrow)]
    group: Cow<'a, str>,
    #[serde(default, borrow)]
    kind: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Pod<'a> {
    #[serde(default, borrow)]
    metadata: Metadata<'a>,
    #[serde(default)]
    spec: Spec,
}

#[derive(Default, Deserialize)]
struct Metadata<'a> {
    #[serde(default, borrow)]
    labels: BTreeMap<Cow<'a, str>, IgnoredAny>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    containers: Vec<Container>,
    #[serde(default)]
    volumes: Vec<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    #[serde(default)]
    env: Vec<IgnoredAny>,
    #[serde(default)]
    volume_mounts: Vec<IgnoredAny>,
}

#[derive(Serialize)]
struct Answer<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    response: AnswerResponse<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AnswerResponse<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
}

/// The patch for a notebook pod: label, token env var, mount and volume (the first container
/// gets them; two labels and two env vars make the six operations).
fn notebook_patch(pod: &Pod) -> Option<String> {
    if !pod.metadata.labels.contains_key("notebook-name") {
        return None;
    }
    let container = pod.spec.containers.first()?;
    let (env, mounts, volumes) = (
        container.env.len(),
        container.volume_mounts.len(),
        pod.spec.volumes.len(),
    );
    let mut patch = String::with_capacity(640);
    let _ = write!(
        patch,
        concat!(
            r#"[{{"op":"add","path":"/metadata/labels/kubeflow-extension","value":"true"}},"#,
            r#"{{"op":"add","path":"/metadata/labels/sidecar.istio.io~1inject","value":"true"}},"#,
            r#"{{"op":"add","path":"/spec/containers/0/env/{env}","value":{{"name":"KF_PIPELINES_SA_TOKEN_PATH","value":"/var/run/secrets/kubeflow/pipelines/token"}}}},"#,
            r#"{{"op":"add","path":"/spec/containers/0/env/{env1}","value":{{"name":"KF_PIPELINES_ENDPOINT","value":"http://ml-pipeline.kubeflow:8888"}}}},"#,
            r#"{{"op":"add","path":"/spec/containers/0/volumeMounts/{mounts}","value":{{"mountPath":"/var/run/secrets/kubeflow/pipelines","name":"volume-kf-pipeline-token","readOnly":true}}}},"#,
            r#"{{"op":"add","path":"/spec/volumes/{volumes}","value":{{"name":"volume-kf-pipeline-token","projected":{{"sources":[{{"serviceAccountToken":{{"audience":"pipelines.kubeflow.org","expirationSeconds":7200,"path":"token"}}}}]}}}}}}]"#,
        ),
        env = env,
        env1 = env + 1,
        mounts = mounts,
        volumes = volumes,
    );
    Some(base64::engine::general_purpose::STANDARD.encode(patch))
}

async fn mutate(body: Bytes) -> Response {
    let Ok(review) = serde_json::from_slice::<Review>(&body) else {
        return (StatusCode::BAD_REQUEST, "not an AdmissionReview\n").into_response();
    };
    let request = &review.request;
    let pod_created = request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request.operation == "CREATE"
        && request.namespace != "kube-system";
    let patch = request
        .object
        .as_ref()
        .filter(|_| pod_created)
        .and_then(notebook_patch);
    let answer = Answer {
        api_version: "admission.k8s.io/v1",
        kind: "AdmissionReview",
        response: AnswerResponse {
            uid: &request.uid,
            allowed: true,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
        },
    };
    match serde_json::to_vec(&answer) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn ok() -> &'static str {
    "ok"
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let tls =
            axum_server::tls_rustls::RustlsConfig::from_pem_file(&args.tls_cert, &args.tls_key)
                .await?;
        let listener = std::net::TcpListener::bind(args.listen)?;
        let local = listener.local_addr()?;
        let server = tenancy_fixer::webhook::https_server(listener, tls, &Default::default())?;
        let mut router = Router::new();
        for path in tenancy_fixer::webhook::MUTATE_PATHS {
            router = router.route(path, post(mutate));
        }
        let router = router
            .route("/healthz", get(ok))
            .layer(DefaultBodyLimit::max(tenancy_fixer::webhook::BODY_LIMIT));
        eprintln!("listening on https://{local}");
        server.serve(router.into_make_service()).await?;
        anyhow::Ok(())
    })
}
