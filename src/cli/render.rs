//! `render`: the objects the configured mode keeps for a Profile, offline.

use std::path::PathBuf;

use clap::Args;
use serde_json::Value;

use super::{
    CliError, Result,
    document::{parse_document, read_input, type_of},
    input, offline_config,
};
use crate::{istio, model::Profile};

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// YAML or JSON file holding one kubeflow.org Profile (`-` reads stdin).
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        env = "TENANCY_FIXER_RENDER_FILE"
    )]
    pub file: PathBuf,
    /// Settings file (YAML); `auto` settings resolve to the modern modes.
    #[arg(long, value_name = "FILE", env = "TENANCY_FIXER_CONFIG")]
    pub config: Option<PathBuf>,
}

impl RenderArgs {
    /// The YAML stream of the objects the configured mode keeps for the Profile.
    pub fn run(self) -> Result<String> {
        let Self { file, config } = self;
        let config = offline_config(config.as_deref())?;
        let (text, shown) = read_input(&file)?;
        let (document, _) = parse_document(&text, &shown)?;
        let profile = parse_profile(document, &shown)?;
        istio::to_yaml_stream(&istio::desired_objects(&profile, &config))
            .map_err(|e| CliError::Output(e.to_string()))
    }
}

fn parse_profile(document: Value, shown: &str) -> Result<Profile> {
    let (api_version, kind) = type_of(&document, shown)?;
    let group = api_version.split_once('/').map(|(group, _)| group);
    if kind != "Profile" || group != Some("kubeflow.org") {
        return Err(input(format!(
            "{shown}: expected a kubeflow.org Profile, found {api_version} {kind}"
        )));
    }
    if document
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(input(format!("{shown}: the Profile has no metadata.name")));
    }
    serde_json::from_value(document).map_err(|e| input(format!("{shown}: invalid Profile: {e}")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn profile_needs_kind_and_name() {
        let ok = json!({"apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {"name": "alice"},
                        "spec": {"owner": {"kind": "User", "name": "alice@example.com"}}});
        let profile = parse_profile(ok, "p").unwrap();
        assert_eq!(istio::owner_of(&profile), "alice@example.com");
        let no_name = json!({"apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {}});
        assert!(
            parse_profile(no_name, "p")
                .unwrap_err()
                .to_string()
                .contains("metadata.name")
        );
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}});
        assert!(
            parse_profile(pod, "p")
                .unwrap_err()
                .to_string()
                .contains("expected a kubeflow.org Profile")
        );
    }
}
