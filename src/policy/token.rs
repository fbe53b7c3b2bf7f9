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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{Container, Str},
        testing::config,
    };

    const PATH: &str = "/var/run/secrets/kubeflow/pipelines";

    fn mount(name: &'static str, path: &'static str) -> VolumeMount<'static> {
        VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            read_only: Some(true),
        }
    }

    /// A read element (no body), as the webhook parses one from the object.
    fn read(name: &'static str) -> Named<'static> {
        Named {
            name: name.into(),
            body: None,
        }
    }

    fn container(
        name: &'static str,
        mounts: Vec<VolumeMount<'static>>,
        env: &[&'static str],
    ) -> Container<'static> {
        Container {
            name: name.into(),
            volume_mounts: (!mounts.is_empty()).then_some(mounts),
            env: (!env.is_empty()).then(|| env.iter().map(|&e| read(e)).collect()),
            ..Default::default()
        }
    }

    fn spec(containers: Vec<Container<'static>>, volumes: &[&'static str]) -> PodSpec<'static> {
        PodSpec {
            containers,
            volumes: (!volumes.is_empty()).then(|| volumes.iter().map(|&v| read(v)).collect()),
            service_account_name: Some(Str::from("default-editor")),
            ..Default::default()
        }
    }

    fn names(volumes: &Option<Vec<Named<'_>>>) -> Vec<String> {
        volumes
            .iter()
            .flatten()
            .map(|v| v.name.to_string())
            .collect()
    }

    #[test]
    fn a_container_that_mounts_the_token_path_already_is_left_alone() {
        // A user's own PodDefault got there first, with a volume of its own name.
        let config = config("kfpAccess: token");
        let before = spec(
            vec![container(
                "main",
                vec![mount("users-token", PATH)],
                &[TOKEN_PATH_ENV],
            )],
            &["users-token"],
        );
        let mut after = before.clone();
        assert!(!inject_token(&mut after, &config));
        assert_eq!(after, before, "no second mount, env or volume");
    }

    #[test]
    fn reinvocation_adds_nothing_twice() {
        let config = config("kfpAccess: token");
        let mut once = spec(vec![container("main", vec![], &[])], &[]);
        assert!(inject_token(&mut once, &config));
        let mut twice = once.clone();
        assert!(!inject_token(&mut twice, &config));
        assert_eq!(twice, once);
        assert_eq!(names(&twice.volumes), [TOKEN_VOLUME]);
    }

    #[test]
    fn only_the_containers_without_the_token_get_it_and_the_volume_is_added_once() {
        let config = config("kfpAccess: token");
        let mut spec = spec(
            vec![
                container(
                    "has-it",
                    vec![mount("users-token", PATH)],
                    &[TOKEN_PATH_ENV],
                ),
                container("lacks-it", vec![mount("data", "/data")], &[]),
                container("istio-proxy", vec![], &[]),
                container("env-only", vec![], &[TOKEN_PATH_ENV]),
            ],
            &["users-token", "data"],
        );
        assert!(inject_token(&mut spec, &config));
        let c = &spec.containers;
        assert_eq!(c[0].volume_mounts.as_ref().unwrap().len(), 1);
        assert_eq!(c[0].env.as_ref().unwrap().len(), 1);
        let lacks = c[1].volume_mounts.as_ref().unwrap();
        assert_eq!(lacks[1], mount(TOKEN_VOLUME, PATH));
        assert_eq!(c[1].env.as_ref().unwrap()[0].name, TOKEN_PATH_ENV);
        assert_eq!(
            c[2],
            container("istio-proxy", vec![], &[]),
            "proxy untouched"
        );
        assert_eq!(
            c[3].volume_mounts.as_ref().unwrap()[0],
            mount(TOKEN_VOLUME, PATH)
        );
        assert_eq!(c[3].env.as_ref().unwrap().len(), 1, "env not duplicated");
        assert_eq!(names(&spec.volumes), ["users-token", "data", TOKEN_VOLUME]);
    }

    #[test]
    fn our_volume_already_mounted_by_name_is_declared_when_missing() {
        // A container mounts our volume at the path but the pod lost the volume (e.g. a
        // PodDefault added only the mount): the pod would be rejected without it.
        let config = config("kfpAccess: token");
        let mut spec = spec(
            vec![container(
                "main",
                vec![mount(TOKEN_VOLUME, PATH)],
                &[TOKEN_PATH_ENV],
            )],
            &[],
        );
        assert!(inject_token(&mut spec, &config));
        assert_eq!(names(&spec.volumes), [TOKEN_VOLUME]);
        assert_eq!(spec.containers[0].volume_mounts.as_ref().unwrap().len(), 1);
    }
}
