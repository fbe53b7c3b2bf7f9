//! A local control plane for the demo and the end-to-end tests: starts the `testenv` binary
//! (etcd + kube-apiserver + GC and namespace controllers, see `testenv/`), makes the webhook's
//! TLS material, and registers the webhook by URL.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    core::v1::{Namespace, Pod},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    discovery,
};
use serde_json::{Value, json};

use crate::{
    config::Config,
    manifests::{Endpoint, FailurePolicy, webhook_configuration},
};

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} did not report ready in time")]
    NotReady(String),
    #[error("file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("manifest is not a Kubernetes object: {0}")]
    Manifest(#[source] serde_json::Error),
    #[error("the webhook did not answer the API server within {timeout:?} (last: {last})")]
    WebhookSilent { timeout: Duration, last: String },
}

pub type Result<T, E = LocalError> = std::result::Result<T, E>;

/// A running testenv. It exits when this handle is dropped (its stdin closes), and also when
/// our process dies, so nothing is left behind.
pub struct Testenv {
    pub kubeconfig: PathBuf,
    pub server: String,
    stdin: Option<ChildStdin>,
    child: Child,
}

/// The line testenv prints once it serves.
const READY_MARKER: &str = "testenv ready";

impl Testenv {
    /// Starts `binary` with its state under `dir`, serving the CRDs found in `crds`.
    pub fn start(binary: &Path, dir: &Path, crds: &Path, timeout: Duration) -> Result<Self> {
        Self::start_with(binary, dir, crds, timeout, &[])
    }

    /// Like [`Testenv::start`], with more of testenv's flags (e.g. `--port`, `--keep-state`).
    pub fn start_with(
        binary: &Path,
        dir: &Path,
        crds: &Path,
        timeout: Duration,
        flags: &[&str],
    ) -> Result<Self> {
        let mut child = Command::new(binary)
            .arg("--dir")
            .arg(dir)
            .arg("--crds")
            .arg(crds)
            .arg("--exit-on-stdin-eof")
            .args(flags)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| LocalError::Spawn {
                what: binary.display().to_string(),
                source,
            })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let line = wait_for_line(stdout, READY_MARKER, timeout)
            .ok_or_else(|| LocalError::NotReady(format!("testenv (logs in {})", dir.display())))?;
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_default()
                .to_string()
        };
        Ok(Self {
            kubeconfig: PathBuf::from(field("kubeconfig=")),
            server: field("server="),
            stdin: child.stdin.take(),
            child,
        })
    }

    pub async fn client(&self) -> Result<Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }
}

impl Drop for Testenv {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

pub async fn client_from_kubeconfig(path: &Path) -> Result<Client> {
    let error = |message: String| LocalError::Kubeconfig {
        path: path.into(),
        message,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| error(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| error(e.to_string()))?;
    Client::try_from(config).map_err(LocalError::Kube)
}

/// Reads `out` on a thread until a line contains `marker` (returned); every other line is
/// echoed to stderr, also after the marker, so the child never blocks on a full pipe.
pub fn wait_for_line(
    out: impl Read + Send + 'static,
    marker: &str,
    timeout: Duration,
) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    let marker = marker.to_string();
    std::thread::spawn(move || {
        let mut found = false;
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if !found && line.contains(&marker) {
                found = true;
                let _ = tx.send(line.clone());
            }
            eprintln!("{line}");
        }
    });
    rx.recv_timeout(timeout).ok()
}

/// Copies CRD files into `into`, one directory testenv's `--crds` reads: each source is a
/// `.yaml` file or a directory whose `.yaml` files are all taken (`testenv/crds.sh` lays out
/// the upstream and hand-written CRDs as `target/crds/<set>/<CRD name>.yaml`).
pub fn gather_crds(sources: &[PathBuf], into: &Path) -> Result<()> {
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LocalError::File { path, source }
    };
    std::fs::create_dir_all(into).map_err(fail(into))?;
    for source in sources {
        let files = if source.is_dir() {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(source).map_err(fail(source))? {
                let path = entry.map_err(fail(source))?.path();
                if path.extension().is_some_and(|e| e == "yaml") {
                    files.push(path);
                }
            }
            files
        } else {
            vec![source.clone()]
        };
        for file in files {
            let target = into.join(file.file_name().unwrap_or_default());
            std::fs::copy(&file, target).map_err(fail(&file))?;
        }
    }
    Ok(())
}

/// A CA and a serving certificate for 127.0.0.1/localhost, written as PEM files.
pub struct WebhookTls {
    pub ca_pem: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl WebhookTls {
    pub fn generate(dir: &Path) -> Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tenancy-fixer local CA");
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = params.signed_by(&key, &issuer)?;
        let tls = Self {
            ca_pem: ca.pem(),
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        for (path, pem) in [(&tls.cert, cert.pem()), (&tls.key, key.serialize_pem())] {
            std::fs::write(path, pem).map_err(|source| LocalError::File {
                path: path.clone(),
                source,
            })?;
        }
        Ok(tls)
    }
}

/// Namespace where [`register_webhook`] probes the admission chain.
const PROBE_NAMESPACE: &str = "tenancy-fixer-probe";

/// Registers the webhook at `url` (failurePolicy Ignore) and waits until the API server calls
/// it: configuration changes reach the admission chain asynchronously, so a dry-run notebook
/// pod is created until it comes back labelled.
pub async fn register_webhook(
    client: &Client,
    url: &str,
    ca_pem: &str,
    config: &Config,
    timeout: Duration,
) -> Result<()> {
    let mwc = webhook_configuration(
        &Endpoint::Url(url.into()),
        ca_pem.as_bytes(),
        FailurePolicy::Ignore,
        config,
    );
    let apply = PatchParams::apply("tenancy-fixer-local").force();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(&mwc.name_any(), &apply, &Patch::Apply(&mwc))
        .await?;
    ensure_namespace(client, PROBE_NAMESPACE).await?;
    let probe: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe", "labels": {config.settings.notebook_label.clone(): "probe"}},
        "spec": {"serviceAccountName": "default", "containers": [{"name": "probe", "image": "probe"}]},
    }))
    .expect("static pod manifest");
    let pods: Api<Pod> = Api::namespaced(client.clone(), PROBE_NAMESPACE);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let start = Instant::now();
    let mut last = String::from("no attempt");
    while start.elapsed() < timeout {
        match pods.create(&dry_run, &probe).await {
            Ok(pod)
                if pod
                    .labels()
                    .get(&config.settings.extension_label)
                    .map(String::as_str)
                    == Some("true") =>
            {
                return Ok(());
            }
            Ok(_) => last = "probe pod admitted without our label".into(),
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(LocalError::WebhookSilent { timeout, last })
}

/// Creates the namespace if it does not exist.
pub async fn ensure_namespace(client: &Client, name: &str) -> Result<()> {
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    Api::<Namespace>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply("tenancy-fixer-local"),
            &Patch::Apply(&namespace),
        )
        .await?;
    Ok(())
}

/// Makes (or completes) the namespace of the stored `profile` the way the Kubeflow
/// profile-controller makes it: the Profile its controller owner (`SetControllerReference`), the
/// `owner` annotation, sidecar injection on. The controller keeps objects only in such a
/// namespace.
pub async fn ensure_profile_namespace(client: &Client, profile: &Value) -> Result<()> {
    let name = profile["metadata"]["name"].as_str().unwrap_or_default();
    let namespace = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "annotations": {"owner": profile["spec"]["owner"]["name"]},
            "labels": {"istio-injection": "enabled"},
            "ownerReferences": [{
                "apiVersion": "kubeflow.org/v1", "kind": "Profile", "name": name,
                "uid": profile["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true,
            }],
        },
    });
    Api::<Namespace>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply("tenancy-fixer-local"),
            &Patch::Apply(&namespace),
        )
        .await?;
    Ok(())
}

/// The API of a manifest's kind (by discovery), in `namespace` (None: cluster-scoped).
pub async fn api_for(
    client: &Client,
    namespace: Option<&str>,
    manifest: &Value,
) -> Result<Api<DynamicObject>> {
    let api_version = manifest["apiVersion"].as_str().unwrap_or("");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, manifest["kind"].as_str().unwrap_or(""));
    let (resource, _) = discovery::pinned_kind(client, &gvk).await?;
    Ok(match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    })
}

/// Creates a manifest of any kind (optionally as a dry run) and returns it as stored.
pub async fn create(
    client: &Client,
    namespace: Option<&str>,
    manifest: &Value,
    dry_run: bool,
) -> Result<Value> {
    let object: DynamicObject =
        serde_json::from_value(manifest.clone()).map_err(LocalError::Manifest)?;
    let params = PostParams {
        dry_run,
        ..PostParams::default()
    };
    let stored = api_for(client, namespace, manifest)
        .await?
        .create(&params, &object)
        .await?;
    serde_json::to_value(stored).map_err(LocalError::Manifest)
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `timeout`.
pub async fn poll<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if start.elapsed() >= timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
