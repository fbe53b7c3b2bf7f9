//! End-to-end harness: a real kube-apiserver (testenv) and the real `tenancy-fixer serve`,
//! registered as a MutatingWebhookConfiguration by URL over TLS.
//!
//! One control plane per test binary (a binary is one scenario: which CRDs are served, which
//! settings `serve` runs with). Child processes are tied to the test process through their
//! stdin, so nothing outlives a crashed or killed test run.
#![allow(dead_code)] // each test binary uses its own part of the harness

pub mod kustomize;
pub mod scenario;

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{DeleteParams, DynamicObject},
};
use serde_json::{Value, json};
use tenancy_fixer::{
    config::Config,
    local::{Testenv, WebhookTls, wait_for_line},
};

pub use tenancy_fixer::local::ensure_namespace as ensure_namespace_checked;

pub const TIMEOUT: Duration = Duration::from_secs(60);

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running testenv for this test binary.
pub struct ControlPlane {
    testenv: Testenv,
}

static PLANE: OnceLock<ControlPlane> = OnceLock::new();

/// [`start_control_plane`] once per test binary.
pub fn control_plane(crds: &[&str]) -> &'static ControlPlane {
    PLANE.get_or_init(|| start_control_plane(crds))
}

/// A control plane of the caller's own (stopped when dropped), in a fresh directory.
pub fn start_control_plane(crds: &[&str]) -> ControlPlane {
    ControlPlane::start(crds, &tempdir("testenv"), &[])
}

impl ControlPlane {
    /// Builds testenv and lays out the CRDs if needed (both no-ops when fresh), then starts a
    /// control plane with its state in `dir` (`flags`: more of testenv's flags) serving exactly
    /// the CRDs named, from target/crds (the upstream sets of testenv/crds.lock and the
    /// hand-written ones of deploy/crds): `<set>/<CRD name>`, e.g.
    /// `istio/envoyfilters.networking.istio.io`, or a whole `<set>`, e.g. `training-operator`.
    pub fn start(crds: &[&str], dir: &Path, flags: &[&str]) -> ControlPlane {
        let _ = rustls::crypto::ring::default_provider().install_default();
        for script in ["testenv/build.sh", "testenv/crds.sh"] {
            let status = Command::new(repo_root().join(script))
                .stdout(Stdio::inherit())
                .status()
                .unwrap_or_else(|e| panic!("run {script}: {e}"));
            assert!(status.success(), "{script} failed");
        }
        let crd_dir = dir.join("crds");
        let sources: Vec<PathBuf> = crds
            .iter()
            .map(|crd| {
                let crds = repo_root().join("target/crds");
                let set = crds.join(crd);
                if set.is_dir() {
                    set
                } else {
                    crds.join(format!("{crd}.yaml"))
                }
            })
            .collect();
        tenancy_fixer::local::gather_crds(&sources, &crd_dir).unwrap_or_else(|e| panic!("CRD {e}"));
        let testenv = Testenv::start_with(
            &repo_root().join("target/testenv/testenv"),
            &dir.join("state"),
            &crd_dir,
            Duration::from_secs(180),
            flags,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        ControlPlane { testenv }
    }
}

impl ControlPlane {
    pub async fn client(&self) -> Client {
        self.testenv.client().await.unwrap()
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.testenv.kubeconfig
    }
}

/// A fresh directory under the system temp dir.
pub fn tempdir(prefix: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tf-{prefix}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn webhook_tls(dir: &Path) -> WebhookTls {
    WebhookTls::generate(dir).unwrap()
}

/// `sh -c HOLD_SCRIPT sh PROGRAM ARGS...` holds PROGRAM and stops it (SIGTERM) when our end of
/// its stdin closes (drop, or the test process dying); its exit status is PROGRAM's.
const HOLD_SCRIPT: &str = r#""$@" & pid=$!; trap 'kill $pid 2>/dev/null; wait $pid; exit' TERM INT; cat >/dev/null; kill $pid 2>/dev/null; wait $pid"#;

/// A background process held through its stdin (see [`HOLD_SCRIPT`]), stdout and stderr in a
/// log file that is printed when it is dropped during a failing test.
pub struct Held {
    what: String,
    log: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Held {
    /// Starts `program args` with `env`, logging to `log`.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(
        what: &str,
        program: &Path,
        args: &[S],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Held {
        let file = std::fs::File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(HOLD_SCRIPT)
            .arg("sh")
            .arg(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        let stdin = child.stdin.take();
        Held {
            what: what.to_string(),
            log: log.to_path_buf(),
            child,
            stdin,
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Has it exited (it should not have)?
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(200)..].join("\n");
            eprintln!(
                "--- {} (last 200 lines of {}) ---\n{tail}\n--- end of {} ---",
                self.what,
                self.log.display(),
                self.what
            );
        }
    }
}

/// A running `tenancy-fixer serve`, stopped on drop.
pub struct Serve {
    pub port: u16,
    /// Where its `/metrics` is served (plain HTTP).
    pub metrics_port: u16,
    pub config_file: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Serve {
    /// Starts `serve` against the control plane with `settings_yaml`, on `port` (0 = free).
    pub fn start(plane: &ControlPlane, settings_yaml: &str, tls: &WebhookTls, port: u16) -> Serve {
        Self::start_with(
            plane,
            settings_yaml,
            tls,
            port,
            &[],
            &[],
            "listening on https://",
        )
    }

    /// Like [`Serve::start`], with extra flags and environment, ready once a log line contains
    /// `ready_marker`.
    pub fn start_with(
        plane: &ControlPlane,
        settings_yaml: &str,
        tls: &WebhookTls,
        port: u16,
        extra_args: &[&str],
        env: &[(&str, &str)],
        ready_marker: &str,
    ) -> Serve {
        let (cert, key) = (
            tls.cert.display().to_string(),
            tls.key.display().to_string(),
        );
        let mut args = vec!["--tls-cert", &cert, "--tls-key", &key];
        args.extend_from_slice(extra_args);
        Self::spawn(
            plane.kubeconfig(),
            settings_yaml,
            port,
            &args,
            env,
            ready_marker,
        )
    }

    /// Like [`Serve::start`] without certificate files: the serving certificate is
    /// self-managed (its flags in `extra_args`).
    pub fn start_self_managed(
        plane: &ControlPlane,
        settings_yaml: &str,
        port: u16,
        extra_args: &[&str],
    ) -> Serve {
        Self::spawn(
            plane.kubeconfig(),
            settings_yaml,
            port,
            extra_args,
            &[],
            "listening on https://",
        )
    }

    /// Like [`Serve::start_self_managed`], reaching the API server through `kubeconfig` (e.g. as
    /// a ServiceAccount), with environment, ready once a log line contains `ready_marker`.
    pub fn start_self_managed_as(
        kubeconfig: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
        ready_marker: &str,
    ) -> Serve {
        Self::spawn(kubeconfig, "", 0, extra_args, env, ready_marker)
    }

    fn spawn(
        kubeconfig: &Path,
        settings_yaml: &str,
        port: u16,
        extra_args: &[&str],
        env: &[(&str, &str)],
        ready_marker: &str,
    ) -> Serve {
        let port = if port == 0 { free_port() } else { port };
        let metrics_port = free_port();
        let config_file = tempdir("serve").join("config.yaml");
        std::fs::write(&config_file, settings_yaml).unwrap();
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(HOLD_SCRIPT)
            .arg("sh")
            .arg(env!("CARGO_BIN_EXE_tenancy-fixer"))
            .arg("serve")
            .arg("--config")
            .arg(&config_file)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .args(extra_args)
            .envs(env.iter().copied())
            // TF_SERVE_LOG: another filter while debugging a test (`info,kube_runtime=debug`).
            .env(
                "RUST_LOG",
                std::env::var("TF_SERVE_LOG").unwrap_or("info".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tenancy-fixer serve");
        wait_for_line(child.stderr.take().unwrap(), ready_marker, TIMEOUT)
            .unwrap_or_else(|| panic!("serve did not log {ready_marker:?}"));
        let stdin = child.stdin.take();
        Serve {
            port,
            metrics_port,
            config_file,
            child,
            stdin,
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// `GET /metrics`: the text exposition, as Prometheus scrapes it.
    pub fn scrape(&self) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port))
            .expect("connect to /metrics");
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        body.to_string()
    }

    /// Stops the server and waits for it; its exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.shutdown().expect("wait for serve")
    }

    /// Kills the server with SIGKILL (no shutdown, no lease release), as a crash or an OOM kill
    /// would, and waits for it.
    pub fn kill(mut self) {
        // The server is the holding shell's only child.
        let children = format!("/proc/{0}/task/{0}/children", self.child.id());
        let pids = std::fs::read_to_string(&children).unwrap_or_default();
        for pid in pids.split_whitespace() {
            let status = Command::new("kill").args(["-KILL", pid]).status().unwrap();
            assert!(status.success(), "kill -KILL {pid}");
        }
        let _ = self.shutdown();
    }

    fn shutdown(&mut self) -> std::io::Result<std::process::ExitStatus> {
        drop(self.stdin.take());
        self.child.wait()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// The value of the sample `name{labels}` (`name` alone when it has no labels) in a scrape.
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Registers the webhook for `serve` and waits until the API server calls it.
pub async fn register_webhook(client: &Client, serve_url: &str, tls: &WebhookTls, config: &Config) {
    tenancy_fixer::local::register_webhook(client, serve_url, &tls.ca_pem, config, TIMEOUT)
        .await
        .unwrap();
}

/// Polls `check` until it returns `Some`, or panics after [`TIMEOUT`].
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    tenancy_fixer::local::poll(TIMEOUT, check)
        .await
        .unwrap_or_else(|| panic!("timed out waiting for: {what}"))
}

pub async fn ensure_namespace(client: &Client, name: &str) {
    ensure_namespace_checked(client, name).await.unwrap();
}

pub async fn delete_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::default()).await;
}

/// A minimal pod manifest with the given labels.
pub fn pod_json(name: &str, labels: &[(&str, &str)]) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "serviceAccountName": "default-editor",
            "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"]}],
        }
    })
}

/// The API for a manifest's kind, in `namespace` (None: cluster-scoped).
pub async fn api_for(
    client: &Client,
    namespace: Option<&str>,
    manifest: &Value,
) -> Api<DynamicObject> {
    tenancy_fixer::local::api_for(client, namespace, manifest)
        .await
        .unwrap()
}

/// Creates an object of any kind from its manifest and returns it as stored.
pub async fn create(client: &Client, namespace: Option<&str>, manifest: &Value) -> Value {
    tenancy_fixer::local::create(client, namespace, manifest, false)
        .await
        .unwrap_or_else(|e| panic!("create {manifest}: {e}"))
}

/// The object the offline rules make of `manifest` created by `username` (what the webhook must
/// have stored).
pub fn expected(
    manifest: &Value,
    namespace: &str,
    username: Option<&str>,
    config: &Config,
) -> Value {
    let target = tenancy_fixer::admission::Target::of_api_version(
        manifest["apiVersion"].as_str().unwrap(),
        manifest["kind"].as_str().unwrap(),
    )
    .unwrap();
    let mutation = tenancy_fixer::admission::mutate(
        target,
        &manifest.to_string(),
        Some(namespace),
        username,
        config,
    )
    .unwrap();
    let mut object = manifest.clone();
    json_patch::patch(&mut object, &mutation.patch).unwrap();
    object
}

/// Asserts that every field of `expected` is in `actual` with the same value (the server adds
/// defaults and its own labels, so `actual` may hold more; a `null` field is an absent one).
pub fn assert_stored_as(actual: &Value, expected: &Value) {
    fn subset(path: &str, actual: &Value, expected: &Value) {
        match (expected, actual) {
            (Value::Object(e), Value::Object(a)) => {
                for (k, v) in e.iter().filter(|(_, v)| !v.is_null()) {
                    let a = a
                        .get(k)
                        .unwrap_or_else(|| panic!("{path}/{k} missing in stored object"));
                    subset(&format!("{path}/{k}"), a, v);
                }
            }
            (Value::Array(e), Value::Array(a)) => {
                assert_eq!(e.len(), a.len(), "{path}: length differs");
                for (i, (e, a)) in e.iter().zip(a).enumerate() {
                    subset(&format!("{path}/{i}"), a, e);
                }
            }
            _ => assert_eq!(actual, expected, "{path}"),
        }
    }
    subset("", actual, expected);
}
