//! Token mode: the projected ServiceAccount token current KFP authenticates in-mesh callers
//! with. The same volume, mount and env go into the per-profile PodDefault (built in
//! `crate::istio`) and into every pod the webhook labels for ml-pipeline access.

use serde_json::{Map, Value, json};

use crate::{
    config::Config,
    model::{Named, PodSpec, VolumeMount},
};

pub const RULE: &str = "kfp-token";
/// Volume name used by upstream's `access-ml-pipeline` PodDefault.
pub const TOKEN_VOLUME: &str = "volume-kf-pipeline-token";
/// Environment variable the KFP SDK reads the token path from.
pub const TOKEN_PATH_ENV: &str = "KF_PIPELINES_SA_TOKEN_PATH";

/// The volume, mount and env that give a pod the KFP token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenInjection {
    pub volume: Named<'static>,
    pub mount: VolumeMount<'static>,
    pub env: Named<'static>,
}

fn body(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

pub fn token_injection(config: &Config) -> TokenInjection {
    let kfp = &config.settings.ml_pipeline;
    TokenInjection {
        volume: Named::new(
            TOKEN_VOLUME,
            body(json!({"projected": {"sources": [{"serviceAccountToken": {
                "path": "token",
                "expirationSeconds": kfp.token_expiration_seconds,
                "audience": kfp.token_audience,
            }}]}})),
        ),
        mount: VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: kfp.token_mount_path.clone().into(),
            read_only: Some(true),
        },
        env: Named::new(TOKEN_PATH_ENV, body(json!({"value": config.token_file()}))),
    }
}

/// Adds the token to every application container (not the Istio proxy); true when that changed
/// the pod. Containers that already mount something at the token path, or set the env var,
/// are left as they are, so a PodDefault that got there first is not duplicated.
pub(super) fn inject_token(spec: &mut PodSpec<'_>, config: &Config) -> bool {
    let injection = token_injection(config);
    let mut changed = false;
    let mut mounted = false;
    for container in &mut spec.containers {
        if container.name == config.settings.istio.proxy_container {
            continue;
        }
        let mounts = container.volume_mounts.get_or_insert_default();
        if !mounts
            .iter()
            .any(|m| m.mount_path == injection.mount.mount_path)
        {
            mounts.push(injection.mount.clone());
            mounted = true;
            changed = true;
        } else if mounts.iter().any(|m| m.name == injection.volume.name) {
            mounted = true;
        }
        if mounts.is_empty() {
            container.volume_mounts = None;
        }
        let env = container.env.get_or_insert_default();
        if !env.iter().any(|e| e.name == injection.env.name) {
            env.push(injection.env.clone());
            changed = true;
        }
    }
    let volumes = spec.volumes.get_or_insert_default();
    if mounted && !volumes.iter().any(|v| v.name == injection.volume.name) {
        volumes.push(injection.volume);
        changed = true;
    }
    if volumes.is_empty() {
        spec.volumes = None;
    }
    changed
}
