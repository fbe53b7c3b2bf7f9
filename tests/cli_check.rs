//! `check`'s exit codes without a cluster: 2 for a settings file serve would refuse (read before
//! anything else), 1 when the cluster cannot be reached; one line on stderr, nothing on stdout.
//! With a cluster (0, 1 with a report, the JSON shape): tests/e2e_check.rs.

mod common;

use std::process::{Command, Output};

use common::temp_dir;

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tenancy-fixer"))
        .arg("check")
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("KUBECONFIG")
        .output()
        .expect("run tenancy-fixer check")
}

/// Exit code and the one line of stderr.
fn failed(output: &Output) -> (Option<i32>, String) {
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(
        output.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    (output.status.code(), stderr)
}

#[test]
fn bad_settings_exit_2_naming_the_key_before_any_cluster_is_asked() {
    let dir = temp_dir("check");
    let config = dir.join("config.yaml");
    std::fs::write(&config, "kfpAccess: cookies\n").unwrap();
    let kubeconfig = dir.join("missing-kubeconfig");
    let (code, stderr) = failed(&run(&[
        "--config",
        config.to_str().unwrap(),
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "-o",
        "json",
    ]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("kfpAccess") && stderr.contains("cookies"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_cluster_exits_1() {
    let dir = temp_dir("check");
    let kubeconfig = dir.join("missing-kubeconfig");
    let (code, stderr) = failed(&run(&["--kubeconfig", kubeconfig.to_str().unwrap()]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot read kubeconfig"), "{stderr}");
    // A kubeconfig naming a server nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nobody = dir.join("kubeconfig");
    std::fs::write(
        &nobody,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    let (code, stderr) = failed(&run(&["--kubeconfig", nobody.to_str().unwrap()]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.starts_with("tenancy-fixer: cannot read"), "{stderr}");
}

#[test]
fn output_is_table_or_json() {
    let output = run(&["-o", "yaml"]);
    assert_eq!(output.status.code(), Some(2), "a usage error (clap)");
    let help = run(&["--help"]);
    let help = String::from_utf8(help.stdout).unwrap();
    for flag in [
        "--kubeconfig",
        "--config",
        "--webhook-url",
        "--output",
        "table",
        "json",
    ] {
        assert!(help.contains(flag), "{flag} in {help}");
    }
}
