//! `kustomize build` with the kustomize CLI of testenv/kustomize (built on first use, a no-op
//! when fresh), as `kubectl apply -k` builds a directory.

use std::{path::Path, process::Command};

use serde_json::Value;

use super::repo_root;

/// The objects `kustomize build DIR` gives, in its order.
pub fn build(dir: &Path) -> Vec<Value> {
    let script = repo_root().join("testenv/kustomize/build.sh");
    let status = Command::new(&script)
        .status()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(status.success(), "{} failed", script.display());
    let out = Command::new(repo_root().join("target/kustomize/kustomize"))
        .arg("build")
        .arg(dir)
        .output()
        .expect("run kustomize");
    assert!(
        out.status.success(),
        "kustomize build {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    documents(&String::from_utf8(out.stdout).unwrap())
}

/// The documents of a YAML stream, as JSON values.
pub fn documents(stream: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(stream)
        .unwrap()
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}
