//! The built binary: `mutate`, `render`, `--help`, exit codes, and `serve --no-controller`
//! (listening line, health check over TLS, graceful stop on SIGTERM).

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use common::{TestTls, fixture, fixture_path, temp_dir};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_tenancy-fixer");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run tenancy-fixer")
}

fn run_stdin(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// A failed run: its exit code and its stderr, which must be exactly one line.
fn failure(output: &Output) -> (i32, String) {
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    assert!(
        !output.status.success(),
        "unexpected success: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line on stderr: {stderr:?}"
    );
    assert!(
        output.stdout.is_empty(),
        "nothing on stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    (output.status.code().unwrap(), stderr)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// The notebook pod of the fixture review, as a YAML manifest.
fn notebook_pod_yaml() -> (Value, String) {
    let pod = fixture("notebook-pod.json")["request"]["object"].clone();
    let yaml = serde_saphyr::to_string(&pod).unwrap();
    (pod, yaml)
}

#[test]
fn mutate_yaml_pod_prints_mutated_yaml() {
    let dir = temp_dir("cli");
    let (pod, yaml) = notebook_pod_yaml();
    let file = write(&dir, "pod.yaml", &yaml);
    let out = stdout(&run(&[
        "mutate",
        "-f",
        &file,
        "--config",
        &write(&dir, "c.yaml", "kfpAccess: header\n"),
    ]));
    let mutated: Value = serde_saphyr::from_str(&out).expect("output is YAML");
    let mut expected = pod;
    expected["metadata"]["labels"]["kubeflow-extension"] = json!("true");
    assert_eq!(mutated, expected);

    // Default config (token mode) adds the token too; `-o json` switches the format.
    let out = stdout(&run(&["mutate", "-f", &file, "-o", "json"]));
    let mutated: Value = serde_json::from_str(&out).expect("output is JSON");
    assert_eq!(
        mutated["spec"]["volumes"][3]["name"],
        "volume-kf-pipeline-token"
    );
    assert_eq!(mutated["metadata"]["labels"]["kubeflow-extension"], "true");
}

#[test]
fn mutate_patch_only() {
    let dir = temp_dir("cli");
    let plain = fixture("plain-pod.json")["request"]["object"].clone();
    let file = write(&dir, "plain.json", &serde_json::to_string(&plain).unwrap());
    assert_eq!(
        stdout(&run(&["mutate", "-f", &file, "--patch"])).trim(),
        "[]"
    );
    // Unchanged object without --patch.
    let out: Value = serde_json::from_str(&stdout(&run(&["mutate", "-f", &file]))).unwrap();
    assert_eq!(out, plain);

    let (_, yaml) = notebook_pod_yaml();
    let file = write(&dir, "nb.yaml", &yaml);
    let header = write(&dir, "header.yaml", "kfpAccess: header\n");
    let patch: Value = serde_json::from_str(&stdout(&run(&[
        "mutate", "-f", &file, "--patch", "-o", "json", "--config", &header,
    ])))
    .unwrap();
    assert_eq!(
        patch,
        json!([{"op": "add", "path": "/metadata/labels/kubeflow-extension", "value": "true"}]),
        "header mode patch is the label only"
    );
}

#[test]
fn mutate_reads_stdin() {
    let (_, yaml) = notebook_pod_yaml();
    let out = stdout(&run_stdin(&["mutate", "-f", "-", "-o", "json"], &yaml));
    let mutated: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(mutated["metadata"]["labels"]["kubeflow-extension"], "true");
}

#[test]
fn mutate_admission_review_prints_the_response() {
    let path = fixture_path("trial-job.json");
    let out = stdout(&run(&["mutate", "-f", path.to_str().unwrap()]));
    let review: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(review["kind"], "AdmissionReview");
    assert_eq!(
        review["response"]["uid"],
        fixture("trial-job.json")["request"]["uid"]
    );
    assert_eq!(review["response"]["allowed"], true);
    assert_eq!(review["response"]["patchType"], "JSONPatch");

    let out = stdout(&run(&[
        "mutate",
        "-f",
        fixture_path("configmap.json").to_str().unwrap(),
        "-o",
        "yaml",
    ]));
    let review: Value = serde_saphyr::from_str(&out).unwrap();
    assert_eq!(
        review["response"],
        json!({"uid": "e5f6a7b8-c9d0-4e1f-a2b3-c4d5e6f7a8b9", "allowed": true})
    );
}

#[test]
fn mutate_rejects_bad_input_with_one_line() {
    let dir = temp_dir("cli");
    let cases = [
        ("garbage.yaml", "a: [1\nb", "invalid YAML"),
        ("garbage.json", "{not json", "invalid JSON"),
        ("binary.bin", "\u{0}\u{1}\u{2}", "invalid YAML"),
        (
            "cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n",
            "unsupported object v1 ConfigMap",
        ),
        (
            "bad-pod.yaml",
            "apiVersion: v1\nkind: Pod\nspec:\n  containers: nope\n",
            "cannot parse Pod",
        ),
        ("list.yaml", "- 1\n- 2\n", "expected a Kubernetes object"),
        ("empty.yaml", "", "expected a Kubernetes object"),
    ];
    for (name, text, expected) in cases {
        let file = write(&dir, name, text);
        let (code, stderr) = failure(&run(&["mutate", "-f", &file]));
        assert_eq!(code, 1, "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(
            stderr.contains(name),
            "{name}: the message names the file: {stderr}"
        );
    }
    let (code, stderr) = failure(&run(&["mutate", "-f", "/nonexistent/pod.yaml"]));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("cannot read /nonexistent/pod.yaml"),
        "{stderr}"
    );
}

#[test]
fn render_prints_the_objects_of_the_mode() {
    let dir = temp_dir("cli");
    let profile = write(
        &dir,
        "profile.yaml",
        "apiVersion: kubeflow.org/v1\nkind: Profile\nmetadata:\n  name: alice\nspec:\n  owner:\n    kind: User\n    name: alice@example.com\n",
    );
    let header = write(&dir, "header.yaml", "kfpAccess: header\n");
    let out = stdout(&run(&["render", "-f", &profile, "--config", &header]));
    let objects: Vec<Value> = serde_saphyr::from_multiple(&out).unwrap();
    let kinds: Vec<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["AuthorizationPolicy", "EnvoyFilter"]);
    assert_eq!(objects[0]["metadata"]["namespace"], "kubeflow");
    assert_eq!(objects[1]["metadata"]["namespace"], "alice");
    assert!(
        objects[0]["metadata"].get("ownerReferences").is_none(),
        "no uid, no owner"
    );
    assert!(out.contains("alice@example.com"));

    let legacy = write(
        &dir,
        "legacy.yaml",
        "kfpAccess: header\nistioRbac: service-role-binding\n",
    );
    let out = stdout(&run(&["render", "-f", &profile, "--config", &legacy]));
    assert!(
        out.contains("kind: ServiceRoleBinding") && out.contains("kind: EnvoyFilter"),
        "{out}"
    );

    let out = stdout(&run(&["render", "-f", &profile]));
    assert!(
        out.contains("kind: PodDefault") && !out.contains("EnvoyFilter"),
        "{out}"
    );

    let pod = write(
        &dir,
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n",
    );
    let (code, stderr) = failure(&run(&["render", "-f", &pod]));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("expected a kubeflow.org Profile"),
        "{stderr}"
    );
}

#[test]
fn config_errors_exit_2_naming_the_key() {
    let dir = temp_dir("cli");
    let pod = write(
        &dir,
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n",
    );
    for (yaml, key) in [
        ("kfpAccess: header\nkfpAcess: token\n", "kfpAcess"),
        ("katib:\n  proxyStartup: eventually\n", "proxyStartup"),
        ("mlPipeline:\n  port: 0\n", "mlPipeline.port"),
    ] {
        let config = write(&dir, "bad-config.yaml", yaml);
        for args in [
            vec!["mutate", "-f", &pod, "--config", &config],
            vec!["render", "-f", &pod, "--config", &config],
            vec![
                "serve",
                "--no-controller",
                "--tls-cert",
                "x",
                "--tls-key",
                "y",
                "--config",
                &config,
            ],
        ] {
            let (code, stderr) = failure(&run(&args));
            assert_eq!(code, 2, "{args:?}: {stderr}");
            assert!(stderr.contains(key), "{args:?}: {stderr}");
        }
    }
    let (code, stderr) = failure(&run(&[
        "mutate",
        "-f",
        &pod,
        "--config",
        "/nonexistent/config.yaml",
    ]));
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent/config.yaml"), "{stderr}");
}

#[test]
fn help_lists_every_subcommand_and_flag() {
    let out = stdout(&run(&["--help"]));
    for sub in ["serve", "mutate", "render"] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(sub)),
            "{sub} missing from:\n{out}"
        );
    }
    let serve = stdout(&run(&["serve", "--help"]));
    for flag in [
        "--config",
        "--listen",
        "--tls-cert",
        "--tls-key",
        "--kubeconfig",
        "--no-controller",
        "--log-format",
    ] {
        assert!(serve.contains(flag), "{flag} missing from serve --help");
    }
    let mutate = stdout(&run(&["mutate", "--help"]));
    for flag in ["--file", "--config", "--patch", "--output"] {
        assert!(mutate.contains(flag), "{flag} missing from mutate --help");
    }
    // Usage errors are clap's (exit 2).
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
}

/// Reads stderr lines until one contains `needle`; returns it. The rest is drained in a thread.
fn wait_for_line(stderr: impl std::io::Read + Send + 'static, needle: &'static str) -> String {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !sent && line.contains(needle) {
                let _ = tx.send(line);
                sent = true;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("no line containing {needle:?}"))
}

#[test]
fn serve_without_controller_listens_answers_and_stops_on_sigterm() {
    common::install_crypto_provider();
    let tls = TestTls::new();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--no-controller",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .arg("--tls-cert")
        .arg(&tls.cert)
        .arg("--tls-key")
        .arg(&tls.key)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = wait_for_line(child.stderr.take().unwrap(), "listening on https://");
    let log: Value = serde_json::from_str(&line).expect("json log line");
    let message = log["message"].as_str().unwrap();
    let port: u16 = message.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 0);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = tls.client();
        let reply = client
            .get(&format!("https://127.0.0.1:{port}/healthz"))
            .await;
        assert_eq!(reply.status, 200);
        let review = std::fs::read(fixture_path("notebook-pod.json")).unwrap();
        let reply = client
            .post(&format!("https://127.0.0.1:{port}/mutate/pods"), review)
            .await;
        assert_eq!(reply.json()["response"]["patchType"], "JSONPatch");
    });

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0));
}

#[test]
fn serve_with_missing_certificate_fails_with_one_line() {
    let output = Command::new(BIN)
        .args(["serve", "--no-controller", "--listen", "127.0.0.1:0"])
        .args([
            "--tls-cert",
            "/nonexistent/tls.crt",
            "--tls-key",
            "/nonexistent/tls.key",
        ])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let (code, stderr) = failure(&output);
    assert_eq!(code, 1);
    assert!(stderr.contains("/nonexistent/tls.crt"), "{stderr}");
}
