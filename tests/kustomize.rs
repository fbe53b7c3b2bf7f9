//! One source for the install: src/manifests.rs. `deploy/` is the kustomize tree that
//! `tenancy-fixer manifests --kustomize` generates from it, byte for byte, and `kustomize build`
//! of that tree gives exactly the objects `tenancy-fixer manifests` prints — the default install
//! (`kubectl apply -k deploy/`) and the cert-manager overlay (`manifests --cert-manager`),
//! compared object by object, whatever their order.

mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use support::{kustomize, repo_root, tempdir};

/// Every file under `dir` (recursively), by path relative to it, leaving out `skip`.
fn files_under(dir: &Path, skip: &[&str]) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, skip: &[&str], files: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            if skip.contains(&relative.as_str()) {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, skip, files);
            } else {
                files.insert(relative, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(dir, dir, skip, &mut files);
    files
}

fn tenancy_fixer(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tenancy-fixer"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tenancy-fixer {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn deploy_is_the_tree_manifests_generates() {
    let dir = tempdir("kustomize-tree");
    let listed = tenancy_fixer(&["manifests", "--kustomize", dir.to_str().unwrap()]);
    let generated = files_under(&dir, &[]);
    let written: Vec<PathBuf> = listed.lines().map(PathBuf::from).collect();
    assert_eq!(
        written.len(),
        generated.len(),
        "every file written is listed once: {listed}"
    );
    assert!(
        written.iter().all(|path| path.starts_with(&dir)),
        "{listed}"
    );

    // deploy/crds: the hand-written CRDs the tests serve, not part of the install.
    let committed = files_under(&repo_root().join("deploy"), &["crds"]);
    let regenerate = "regenerate it with: cargo run -q -- manifests --kustomize deploy";
    for (path, text) in &generated {
        let in_deploy = committed.get(path);
        assert!(
            in_deploy == Some(text),
            "deploy/{path} is {}; {regenerate}",
            if in_deploy.is_some() {
                "stale"
            } else {
                "missing"
            }
        );
    }
    for path in committed.keys() {
        assert!(
            generated.contains_key(path),
            "deploy/{path} is not generated any more: remove it"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The objects by what tells them apart (apiVersion, kind, namespace, name), each once.
fn by_identity(documents: Vec<Value>) -> BTreeMap<[String; 4], Value> {
    let mut objects = BTreeMap::new();
    for object in documents {
        let field = |value: &Value| value.as_str().unwrap_or_default().to_string();
        let metadata = &object["metadata"];
        let id = [
            field(&object["apiVersion"]),
            field(&object["kind"]),
            field(&metadata["namespace"]),
            field(&metadata["name"]),
        ];
        let again = objects.insert(id.clone(), object);
        assert!(again.is_none(), "{id:?} twice");
    }
    objects
}

#[test]
fn kustomize_build_gives_the_objects_manifests_prints() {
    for (dir, flags) in [
        ("deploy", &[][..]),
        ("deploy/overlays/cert-manager", &["--cert-manager"][..]),
    ] {
        let built = by_identity(kustomize::build(&repo_root().join(dir)));
        let printed = by_identity(kustomize::documents(&tenancy_fixer(
            &[&["manifests"][..], flags].concat(),
        )));
        let ids =
            |objects: &BTreeMap<[String; 4], Value>| objects.keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            ids(&built),
            ids(&printed),
            "kustomize build {dir} vs manifests {flags:?}: objects"
        );
        for (id, object) in &built {
            let difference = json_patch::diff(&printed[id], object);
            assert!(
                difference.0.is_empty(),
                "kustomize build {dir} vs manifests {flags:?}: {id:?} differs by {difference}"
            );
        }
        assert!(built.len() >= 13, "{dir}: {} objects", built.len());
    }
}
