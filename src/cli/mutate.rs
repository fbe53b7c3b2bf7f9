//! `mutate`: the admission rules applied to one object or AdmissionReview from a file, offline.

use std::path::PathBuf;

use clap::Args;
use serde_json::Value;

use super::{
    Result,
    document::{Format, parse_document, read_input, render_value, type_of},
    input, offline_config,
};
use crate::{
    admission::{self, Target},
    config::Config,
};

#[derive(Debug, Args)]
pub struct MutateArgs {
    /// YAML or JSON file holding one Pod, batch/v1 Job, Trial or AdmissionReview (`-` reads stdin).
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        env = "TENANCY_FIXER_MUTATE_FILE"
    )]
    pub file: PathBuf,
    /// Settings file (YAML); `auto` settings resolve to the modern modes.
    #[arg(long, value_name = "FILE", env = "TENANCY_FIXER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print only the JSON Patch (`[]` when no rule applies) instead of the mutated object.
    #[arg(long, env = "TENANCY_FIXER_MUTATE_PATCH")]
    pub patch: bool,
    /// Output format (default: the input's format).
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        value_name = "FORMAT",
        env = "TENANCY_FIXER_OUTPUT"
    )]
    pub output: Option<Format>,
}

impl MutateArgs {
    /// The text to print: the mutated object, its patch, or the AdmissionReview response.
    pub fn run(self) -> Result<String> {
        let Self {
            file,
            config,
            patch,
            output,
        } = self;
        let config = offline_config(config.as_deref())?;
        let (text, shown) = read_input(&file)?;
        let (document, input_format) = parse_document(&text, &shown)?;
        let format = output.unwrap_or(input_format);
        render_value(&mutate_document(document, &shown, patch, &config)?, format)
    }
}

/// Mutates one parsed document: an AdmissionReview is answered as the webhook would; an object
/// is returned changed (or its patch, with `patch_only`).
pub fn mutate_document(
    mut document: Value,
    shown: &str,
    patch_only: bool,
    config: &Config,
) -> Result<Value> {
    let (api_version, kind) = type_of(&document, shown)?;
    if kind == "AdmissionReview" {
        let body = serde_json::to_vec(&document).map_err(|e| input(format!("{shown}: {e}")))?;
        let answer =
            admission::review(&body, config).map_err(|e| input(format!("{shown}: {e}")))?;
        return serde_json::from_slice(&answer.answer)
            .map_err(|e| input(format!("{shown}: invalid response: {e}")));
    }
    let Some(target) = Target::of_api_version(&api_version, &kind) else {
        return Err(input(format!(
            "{shown}: unsupported object {api_version} {kind} (expected a v1 Pod, batch/v1 Job, \
             kubeflow.org/v1beta1 or v1alpha3 Trial, or an admission.k8s.io/v1 AdmissionReview)"
        )));
    };
    let namespace = document
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let object = serde_json::to_string(&document).map_err(|e| input(format!("{shown}: {e}")))?;
    let mutation = admission::mutate(target, &object, Some(&namespace), None, config)
        .map_err(|e| input(format!("{shown}: {e}")))?;
    if patch_only {
        return serde_json::to_value(&mutation.patch).map_err(|e| input(format!("{shown}: {e}")));
    }
    json_patch::patch(&mut document, &mutation.patch).map_err(|e| {
        input(format!(
            "{shown}: the rules' patch does not apply to the object: {e}"
        ))
    })?;
    Ok(document)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn notebook_pod_is_labelled_and_plain_pod_is_not() {
        let config = offline_config(None).unwrap();
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "nb-0", "namespace": "alice", "labels": {"notebook-name": "nb"}},
            "spec": {"containers": [{"name": "nb", "image": "jupyter"}]}
        });
        let out = mutate_document(pod.clone(), "t", false, &config).unwrap();
        assert_eq!(out["metadata"]["labels"]["kubeflow-extension"], "true");
        assert_eq!(out["spec"]["containers"][0]["image"], "jupyter");

        let mut plain = pod;
        plain["metadata"]["labels"] = json!({"app": "x"});
        assert_eq!(
            mutate_document(plain.clone(), "t", true, &config).unwrap(),
            json!([])
        );
        assert_eq!(
            mutate_document(plain.clone(), "t", false, &config).unwrap(),
            plain
        );
    }

    #[test]
    fn unsupported_and_invalid_objects_are_input_errors() {
        let config = offline_config(None).unwrap();
        let cases = [
            (
                json!({"apiVersion": "v1", "kind": "ConfigMap"}),
                "unsupported object v1 ConfigMap",
            ),
            (json!({"kind": "Pod"}), "no apiVersion"),
            (json!([1]), "found a list"),
            (
                json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": "nope"}}),
                "cannot parse Pod",
            ),
            (
                json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
                "has no request",
            ),
        ];
        for (document, expected) in cases {
            let error = mutate_document(document, "in.json", false, &config).unwrap_err();
            assert_eq!(error.exit_code(), 1);
            assert!(error.to_string().contains(expected), "{error}");
        }
    }
}
