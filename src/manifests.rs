//! How the API server is told to call us: the MutatingWebhookConfiguration; and everything
//! else an install needs ([`install_manifests`], printed by `tenancy-fixer manifests`).
//!
//! One webhook per kind of object, each on its own path: pods and workloads on CREATE and UPDATE
//! (nobody may add the reserved label by UPDATE), Trials on CREATE; `sideEffects: None`,
//! `reinvocationPolicy: IfNeeded` (so we see the pod again after the Istio injector), a short
//! timeout and a namespaceSelector that keeps the excluded namespaces out. The configuration's
//! name sorts after `istio-sidecar-injector`, so the injector usually runs first.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::{
        admissionregistration::v1::{
            MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
            WebhookClientConfig,
        },
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{
            Affinity, Capabilities as Capabilities_, ConfigMap, ConfigMapVolumeSource, Container,
            ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Namespace, ObjectFieldSelector,
            PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
            ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Service,
            ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount, WeightedPodAffinityTerm,
        },
        rbac::v1::{
            ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use kube::Resource;

use crate::{
    config::{Capabilities, Config, Settings},
    istio::ManagedKind,
    model::{Profile, WorkloadKind},
    policy::{TRIAL_GROUP, TRIAL_VERSIONS},
};

pub const WEBHOOK_CONFIGURATION_NAME: &str = "tenancy-fixer";

/// Where the API server reaches the webhook.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// In-cluster: a Service in front of the Deployment.
    Service {
        namespace: String,
        name: String,
        port: i32,
    },
    /// Out of cluster (tests, local demo): `https://host:port`.
    Url(String),
}

/// What the API server does when the webhook does not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FailurePolicy {
    Ignore,
    Fail,
}

/// The webhook configuration for `endpoint`, trusting `ca_bundle` (PEM).
pub fn webhook_configuration(
    endpoint: &Endpoint,
    ca_bundle: &[u8],
    failure_policy: FailurePolicy,
    config: &Config,
) -> MutatingWebhookConfiguration {
    let webhook = |name: &str, path: &str, rules: Vec<RuleWithOperations>| {
        let client_config = match endpoint {
            Endpoint::Service {
                namespace,
                name,
                port,
            } => WebhookClientConfig {
                service: Some(ServiceReference {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    path: Some(path.into()),
                    port: Some(*port),
                }),
                ca_bundle: Some(ByteString(ca_bundle.to_vec())),
                url: None,
            },
            Endpoint::Url(base) => WebhookClientConfig {
                url: Some(format!("{}{path}", base.trim_end_matches('/'))),
                ca_bundle: Some(ByteString(ca_bundle.to_vec())),
                service: None,
            },
        };
        MutatingWebhook {
            name: format!("{name}.{WEBHOOK_SUFFIX}"),
            admission_review_versions: vec!["v1".into()],
            client_config,
            failure_policy: Some(
                match failure_policy {
                    FailurePolicy::Ignore => "Ignore",
                    FailurePolicy::Fail => "Fail",
                }
                .into(),
            ),
            match_policy: Some("Equivalent".into()),
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "kubernetes.io/metadata.name".into(),
                    operator: "NotIn".into(),
                    values: Some(config.settings.excluded_namespaces.clone()),
                }]),
                match_labels: None,
            }),
            reinvocation_policy: Some("IfNeeded".into()),
            rules: Some(rules),
            side_effects: "None".into(),
            timeout_seconds: Some(5),
            object_selector: None,
            match_conditions: None,
        }
    };
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(WEBHOOK_CONFIGURATION_NAME.into()),
            labels: Some(
                [(
                    crate::istio::MANAGED_BY_LABEL.to_string(),
                    crate::istio::MANAGED_BY.to_string(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![
            webhook(
                "pods",
                "/mutate/pods",
                vec![rule_of("", &["v1"], "pods", CREATE_UPDATE)],
            ),
            webhook(
                WORKLOADS_WEBHOOK,
                "/mutate/jobs",
                workload_rules(&WorkloadKind::ALL),
            ),
            webhook(
                "trials",
                "/mutate/trials",
                vec![rule_of(TRIAL_GROUP, &TRIAL_VERSIONS, "trials", &["CREATE"])],
            ),
        ]),
    }
}

const CREATE_UPDATE: &[&str] = &["CREATE", "UPDATE"];

/// Our webhooks are named `<kind of object>.<this>`.
pub const WEBHOOK_SUFFIX: &str = "tenancy-fixer.kubeflow.org";
/// The webhook of trial workloads.
pub const WORKLOADS_WEBHOOK: &str = "jobs";

/// The rules of the workloads webhook for `kinds` (an install registers every kind; `serve`
/// with self-managed certificates keeps them to the kinds the cluster serves).
pub fn workload_rules(kinds: &[WorkloadKind]) -> Vec<RuleWithOperations> {
    kinds
        .iter()
        .map(|kind| {
            let (group, version, _, resource) = kind.gvkr();
            rule_of(group, &[version], resource, CREATE_UPDATE)
        })
        .collect()
}

/// The webhook rule for namespaced `resource` of `group` in `versions`, on `operations`.
fn rule_of(
    group: &str,
    versions: &[&str],
    resource: &str,
    operations: &[&str],
) -> RuleWithOperations {
    let strings = |words: &[&str]| Some(words.iter().map(|w| w.to_string()).collect());
    RuleWithOperations {
        api_groups: Some(vec![group.into()]),
        api_versions: strings(versions),
        operations: strings(operations),
        resources: Some(vec![resource.into()]),
        scope: Some("Namespaced".into()),
    }
}

/// Namespace of an install (the default settings exclude it from the webhook).
pub const NAMESPACE: &str = "tenancy-fixer";
/// Name of the install's ServiceAccount, roles, Deployment, Service, ConfigMap and Lease.
pub const NAME: &str = "tenancy-fixer";
/// The Secret (`tls.crt`, `tls.key`) holding the serving certificate, for the Service's DNS name.
pub const TLS_SECRET: &str = "tenancy-fixer-tls";
/// The Secret `serve` keeps its self-managed CA and serving certificate in (no certificate
/// files given: the default install).
pub const SELF_MANAGED_SECRET: &str = "tenancy-fixer-certs";
/// The image `manifests` puts in the Deployment unless told otherwise.
pub const DEFAULT_IMAGE: &str = "tenancy-fixer:latest";
/// Key of the settings file in the ConfigMap.
pub const CONFIG_KEY: &str = "config.yaml";
/// Port the container serves HTTPS on (the Service's 443 forwards to it).
pub const CONTAINER_PORT: i32 = 8443;
/// The DNS names the API server reaches the webhook Service by, in `namespace`.
pub fn service_dns_names(namespace: &str) -> Vec<String> {
    vec![
        format!("{NAME}.{namespace}.svc"),
        format!("{NAME}.{namespace}.svc.cluster.local"),
    ]
}

/// Port of the Prometheus metrics endpoint (plain HTTP `GET /metrics`).
pub const METRICS_PORT: i32 = 9090;
/// cert-manager's cainjector fills a webhook's caBundle from the Certificate this names.
pub const INJECT_CA_FROM: &str = "cert-manager.io/inject-ca-from";
/// UID and GID the container runs as (the Dockerfile's `USER`).
/// glibc malloc settings of the server process (`GLIBC_TUNABLES`, set by the Deployment and the
/// image). A review frees more small blocks of one size than glibc's per-thread cache keeps (7);
/// the rest go to the fast bins, which glibc consolidates before the next large allocation (the
/// next request body). A larger cache keeps them ready: −8 % instructions per notebook-pod
/// review for +3.6 MB of RSS under load (128 and 256 save more but take RSS under load to 27.7
/// and 30.8 MB; bench/README.md).
pub const MALLOC_TUNABLES: &str = "glibc.malloc.tcache_count=64";
const RUN_AS: i64 = 65532;
const CONFIG_DIR: &str = "/etc/tenancy-fixer/config";
const TLS_DIR: &str = "/etc/tenancy-fixer/tls";

/// First lines of every `manifests` output.
pub const INSTALL_HEADER: &str = "\
# tenancy-fixer install manifests, generated by `tenancy-fixer manifests` (do not edit by hand).
# deploy/install.yaml is the default render; regenerate it after a change with:
#   cargo run -q -- manifests > deploy/install.yaml
";

/// What `tenancy-fixer manifests` is asked for.
#[derive(Clone, Debug)]
pub struct Install {
    pub image: String,
    /// PEM of the CA that signed the serving certificate (`None`: empty caBundle).
    pub ca_bundle: Option<Vec<u8>>,
    /// Have cert-manager issue the serving certificate and inject the caBundle.
    pub cert_manager: bool,
    pub failure_policy: FailurePolicy,
    /// Rendered into the ConfigMap, every key spelt out.
    pub settings: Settings,
}

impl Default for Install {
    fn default() -> Self {
        Self {
            image: DEFAULT_IMAGE.into(),
            ca_bundle: None,
            cert_manager: false,
            failure_policy: FailurePolicy::Ignore,
            settings: Settings::default(),
        }
    }
}

/// The YAML stream (documents separated by `---`) installing tenancy-fixer in [`NAMESPACE`]:
/// Namespace, ServiceAccount, RBAC, ConfigMap, (cert-manager Issuer and Certificate,) Service,
/// Deployment and the MutatingWebhookConfiguration.
pub fn install_manifests(install: &Install) -> Result<String, serde_saphyr::ser::Error> {
    let Install {
        image,
        ca_bundle,
        cert_manager,
        failure_policy,
        settings,
    } = install;
    // Without a CA to trust or cert-manager, serve manages its certificate itself.
    let self_managed = ca_bundle.is_none() && !cert_manager;
    let mut out = String::from(INSTALL_HEADER);
    let mut doc = |comment: Option<&str>,
                   object: &dyn erased::Yaml|
     -> Result<(), serde_saphyr::ser::Error> {
        out.push_str("---\n");
        for line in comment.into_iter().flat_map(str::lines) {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(&object.to_yaml()?);
        Ok(())
    };
    doc(None, &namespace())?;
    doc(
        None,
        &ServiceAccount {
            metadata: meta(NAME, Some(NAMESPACE)),
            ..ServiceAccount::default()
        },
    )?;
    doc(
        Some(
            "Cluster-wide: what the profile controller reads and writes. API discovery needs no rule\n\
             (system:discovery is bound to every authenticated user).",
        ),
        &cluster_role(self_managed),
    )?;
    doc(
        None,
        &ClusterRoleBinding {
            metadata: meta(NAME, None),
            role_ref: RoleRef {
                api_group: Some(RBAC_GROUP.into()),
                kind: "ClusterRole".into(),
                name: NAME.into(),
            },
            subjects: Some(vec![service_account_subject()]),
        },
    )?;
    let events = "Events on Profiles (refusals a user would not see otherwise): a Profile is cluster-scoped, \
                  so its Events live in the namespace `default`.";
    doc(Some(events), &events_role())?;
    doc(
        None,
        &RoleBinding {
            metadata: meta(EVENTS_ROLE, Some(EVENTS_NAMESPACE)),
            role_ref: RoleRef {
                api_group: Some(RBAC_GROUP.into()),
                kind: "Role".into(),
                name: EVENTS_ROLE.into(),
            },
            subjects: Some(vec![service_account_subject()]),
        },
    )?;
    let election = if self_managed {
        "Leader election: only the Lease holder runs the controller; every replica serves admission.\n\
         Self-managed certificates: the Secret holding the CA and the serving certificate."
    } else {
        "Leader election: only the Lease holder runs the controller; every replica serves admission."
    };
    doc(Some(election), &namespace_role(self_managed))?;
    doc(
        None,
        &RoleBinding {
            metadata: meta(NAME, Some(NAMESPACE)),
            role_ref: RoleRef {
                api_group: Some(RBAC_GROUP.into()),
                kind: "Role".into(),
                name: NAME.into(),
            },
            subjects: Some(vec![service_account_subject()]),
        },
    )?;
    doc(
        None,
        &ConfigMap {
            metadata: meta(NAME, Some(NAMESPACE)),
            data: Some([(CONFIG_KEY.to_string(), serde_saphyr::to_string(settings)?)].into()),
            ..ConfigMap::default()
        },
    )?;
    if *cert_manager {
        let (issuer, certificate) = cert_manager_objects();
        doc(
            Some(
                "cert-manager: a self-signed serving certificate in the Secret the Deployment mounts.",
            ),
            &issuer,
        )?;
        doc(None, &certificate)?;
    }
    doc(None, &service())?;
    doc(None, &deployment(image, !self_managed))?;

    let endpoint = Endpoint::Service {
        namespace: NAMESPACE.into(),
        name: NAME.into(),
        port: 443,
    };
    let config = settings.clone().resolve(&Capabilities::modern());
    let mut webhooks = webhook_configuration(
        &endpoint,
        ca_bundle.as_deref().unwrap_or_default(),
        *failure_policy,
        &config,
    );
    webhooks
        .metadata
        .labels
        .get_or_insert_default()
        .extend(labels());
    let comment = match (ca_bundle, cert_manager) {
        (Some(_), _) => None,
        (None, true) => {
            let certificate = format!("{NAMESPACE}/{TLS_SECRET}");
            webhooks.metadata.annotations =
                Some([(INJECT_CA_FROM.to_string(), certificate)].into());
            Some(format!(
                "caBundle is filled by cert-manager's cainjector (annotation {INJECT_CA_FROM})."
            ))
        }
        (None, false) => Some(format!(
            "caBundle is filled by tenancy-fixer itself: the CA of its self-managed certificates \
             (Secret {NAMESPACE}/{SELF_MANAGED_SECRET})."
        )),
    };
    doc(comment.as_deref(), &webhooks)?;
    Ok(out)
}

/// Serializing the different object types through one closure.
mod erased {
    pub trait Yaml {
        fn to_yaml(&self) -> Result<String, serde_saphyr::ser::Error>;
    }
    impl<T: serde::Serialize> Yaml for T {
        fn to_yaml(&self) -> Result<String, serde_saphyr::ser::Error> {
            serde_saphyr::to_string(self)
        }
    }
}

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

fn labels() -> BTreeMap<String, String> {
    [("app.kubernetes.io/name".to_string(), NAME.to_string())].into()
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        labels: Some(labels()),
        ..ObjectMeta::default()
    }
}

fn namespace() -> Namespace {
    let mut metadata = meta(NAMESPACE, None);
    // The Deployment meets the restricted Pod Security Standard; enforce it.
    metadata.labels.get_or_insert_default().insert(
        "pod-security.kubernetes.io/enforce".into(),
        "restricted".into(),
    );
    Namespace {
        metadata,
        ..Namespace::default()
    }
}

fn service_account_subject() -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: NAME.into(),
        namespace: Some(NAMESPACE.into()),
        api_group: None,
    }
}

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.into()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..PolicyRule::default()
    }
}

/// The controller's cluster-wide access: Profiles (watch, and patch to remove the finalizer of an
/// earlier version), Namespaces (watch), and every
/// kind it manages (watch, server-side apply, delete), also those of modes not configured (it
/// cleans them up); with self-managed certificates, our own webhook configuration (its caBundle).
pub fn cluster_role(self_managed: bool) -> ClusterRole {
    let mut rules = vec![
        rule(
            &Profile::group(&()),
            &[&Profile::plural(&())],
            &["get", "list", "watch", "patch"],
        ),
        rule("", &["namespaces"], &["get", "list", "watch"]),
    ];
    for kind in ManagedKind::ALL {
        let resource = kind.api_resource();
        rules.push(rule(
            &resource.group,
            &[&resource.plural],
            &["get", "list", "watch", "create", "patch", "delete"],
        ));
    }
    if self_managed {
        let mut own = rule(
            "admissionregistration.k8s.io",
            &["mutatingwebhookconfigurations"],
            &["get", "update"],
        );
        own.resource_names = Some(vec![WEBHOOK_CONFIGURATION_NAME.into()]);
        rules.push(own);
    }
    ClusterRole {
        metadata: meta(NAME, None),
        rules: Some(rules),
        aggregation_rule: None,
    }
}

/// Where the Events on cluster-scoped objects (Profiles) are stored.
pub const EVENTS_NAMESPACE: &str = "default";
const EVENTS_ROLE: &str = "tenancy-fixer-events";

/// Events on Profiles: `kube::runtime::events::Recorder` creates an Event, then patches it when
/// the same one recurs.
pub fn events_role() -> Role {
    Role {
        metadata: meta(EVENTS_ROLE, Some(EVENTS_NAMESPACE)),
        rules: Some(vec![rule(
            "events.k8s.io",
            &["events"],
            &["create", "patch"],
        )]),
    }
}

/// In our namespace: the Lease of leader election and, with self-managed certificates, their
/// Secret (`create` cannot be limited to a name).
pub fn namespace_role(self_managed: bool) -> Role {
    let named = |group: &str, resource: &str, verbs: &[&str], name: &str| {
        let mut rule = rule(group, &[resource], verbs);
        rule.resource_names = Some(vec![name.into()]);
        rule
    };
    let mut rules = vec![
        rule("coordination.k8s.io", &["leases"], &["create"]),
        named("coordination.k8s.io", "leases", &["get", "patch"], NAME),
    ];
    if self_managed {
        rules.push(rule("", &["secrets"], &["create"]));
        rules.push(named(
            "",
            "secrets",
            &["get", "update"],
            SELF_MANAGED_SECRET,
        ));
    }
    Role {
        metadata: meta(NAME, Some(NAMESPACE)),
        rules: Some(rules),
    }
}

fn cert_manager_objects() -> (serde_json::Value, serde_json::Value) {
    let issuer_name = format!("{NAME}-selfsigned");
    let issuer = serde_json::json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Issuer",
        "metadata": {"name": issuer_name, "namespace": NAMESPACE, "labels": labels()},
        "spec": {"selfSigned": {}},
    });
    let certificate = serde_json::json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": TLS_SECRET, "namespace": NAMESPACE, "labels": labels()},
        "spec": {
            "secretName": TLS_SECRET,
            "dnsNames": [format!("{NAME}.{NAMESPACE}.svc"), format!("{NAME}.{NAMESPACE}.svc.cluster.local")],
            "issuerRef": {"kind": "Issuer", "name": issuer_name},
        },
    });
    (issuer, certificate)
}

fn service() -> Service {
    Service {
        metadata: meta(NAME, Some(NAMESPACE)),
        spec: Some(ServiceSpec {
            selector: Some(labels()),
            ports: Some(vec![ServicePort {
                name: Some("https".into()),
                port: 443,
                target_port: Some(IntOrString::String("https".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The Deployment; `certificate_files`: serve the certificate mounted from [`TLS_SECRET`]
/// (cert-manager, or made by hand), else self-managed.
fn deployment(image: &str, certificate_files: bool) -> Deployment {
    let downward = |name: &str, field: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
        value: None,
    };
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("https".into()),
            scheme: Some("HTTPS".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    };
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    let container = Container {
        name: NAME.into(),
        image: Some(image.into()),
        args: Some(
            [
                vec![
                    "serve".into(),
                    format!("--config={CONFIG_DIR}/{CONFIG_KEY}"),
                ],
                if certificate_files {
                    vec![
                        format!("--tls-cert={TLS_DIR}/tls.crt"),
                        format!("--tls-key={TLS_DIR}/tls.key"),
                    ]
                } else {
                    vec![format!("--certificate-secret={SELF_MANAGED_SECRET}")]
                },
                vec![
                    format!("--listen=0.0.0.0:{CONTAINER_PORT}"),
                    format!("--metrics-listen=0.0.0.0:{METRICS_PORT}"),
                    "--leader-elect".into(),
                ],
            ]
            .concat(),
        ),
        // The Lease's namespace and this replica's identity in it; the allocator's settings.
        env: Some(vec![
            downward("POD_NAME", "metadata.name"),
            downward("POD_NAMESPACE", "metadata.namespace"),
            EnvVar {
                name: "GLIBC_TUNABLES".into(),
                value: Some(MALLOC_TUNABLES.into()),
                ..EnvVar::default()
            },
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("https".into()),
                container_port: CONTAINER_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("metrics".into()),
                container_port: METRICS_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(probe("/readyz", 5)),
        liveness_probe: Some(probe("/healthz", 10)),
        resources: Some(ResourceRequirements {
            requests: Some(
                [
                    ("cpu".to_string(), Quantity("50m".into())),
                    ("memory".to_string(), Quantity("32Mi".into())),
                ]
                .into(),
            ),
            limits: Some([("memory".to_string(), Quantity("256Mi".into()))].into()),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities_ {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(if certificate_files {
            vec![mount("config", CONFIG_DIR), mount("tls", TLS_DIR)]
        } else {
            vec![mount("config", CONFIG_DIR)]
        }),
        ..Container::default()
    };
    let pod = PodSpec {
        service_account_name: Some(NAME.into()),
        containers: vec![container],
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        // Replicas on different nodes where possible: a node going down keeps the webhook up.
        affinity: Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    WeightedPodAffinityTerm {
                        weight: 100,
                        pod_affinity_term: PodAffinityTerm {
                            label_selector: Some(LabelSelector {
                                match_labels: Some(labels()),
                                match_expressions: None,
                            }),
                            topology_key: "kubernetes.io/hostname".into(),
                            ..PodAffinityTerm::default()
                        },
                    },
                ]),
                required_during_scheduling_ignored_during_execution: None,
            }),
            ..Affinity::default()
        }),
        volumes: Some({
            let mut volumes = vec![Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: NAME.into(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            }];
            if certificate_files {
                volumes.push(Volume {
                    name: "tls".into(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(TLS_SECRET.into()),
                        ..SecretVolumeSource::default()
                    }),
                    ..Volume::default()
                });
            }
            volumes
        }),
        ..PodSpec::default()
    };
    Deployment {
        metadata: meta(NAME, Some(NAMESPACE)),
        spec: Some(DeploymentSpec {
            replicas: Some(2),
            selector: LabelSelector {
                match_labels: Some(labels()),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels()),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The documents of a YAML stream, as JSON values.
    fn documents(stream: &str) -> Vec<Value> {
        serde_saphyr::from_multiple::<Value>(stream)
            .unwrap()
            .into_iter()
            .filter(|doc| !doc.is_null())
            .collect()
    }

    fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    }

    #[test]
    fn checked_in_install_yaml_is_the_default_render() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/install.yaml");
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        let rendered = install_manifests(&Install::default()).unwrap();
        assert!(
            checked_in == rendered,
            "deploy/install.yaml is stale; regenerate it with: cargo run -q -- manifests > deploy/install.yaml"
        );
    }

    #[test]
    fn image_and_deployment_tune_malloc_alike() {
        let dockerfile = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"),
        )
        .unwrap();
        assert!(
            dockerfile
                .lines()
                .any(|l| l == format!("ENV GLIBC_TUNABLES={MALLOC_TUNABLES}"))
        );
        let docs = documents(&install_manifests(&Install::default()).unwrap());
        let env = &find(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"];
        assert!(
            env.as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "GLIBC_TUNABLES" && e["value"] == MALLOC_TUNABLES)
        );
    }

    #[test]
    fn default_install_has_every_object_once_in_order() {
        let out = install_manifests(&Install::default()).unwrap();
        assert!(out.starts_with(INSTALL_HEADER));
        let docs = documents(&out);
        let kinds: Vec<_> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
                "Role",
                "RoleBinding",
                "ConfigMap",
                "Service",
                "Deployment",
                "MutatingWebhookConfiguration",
            ]
        );
        for doc in &docs[1..] {
            let namespaced = !matches!(
                doc["kind"].as_str(),
                Some("ClusterRole" | "ClusterRoleBinding" | "MutatingWebhookConfiguration")
            );
            let events = doc["metadata"]["name"] == EVENTS_ROLE;
            assert_eq!(
                doc["metadata"]["namespace"].as_str(),
                namespaced.then_some(if events { EVENTS_NAMESPACE } else { NAMESPACE }),
                "{}",
                doc["kind"]
            );
        }
    }

    #[test]
    fn cluster_role_covers_exactly_what_the_controller_touches() {
        let role = cluster_role(false);
        let rules = role.rules.unwrap();
        let of = |resource: &str| {
            let rule = rules
                .iter()
                .find(|r| {
                    r.resources
                        .as_ref()
                        .unwrap()
                        .contains(&resource.to_string())
                })
                .unwrap();
            (rule.api_groups.clone().unwrap(), rule.verbs.join(","))
        };
        assert_eq!(
            of("profiles"),
            (
                vec!["kubeflow.org".to_string()],
                "get,list,watch,patch".into()
            )
        );
        assert_eq!(
            of("namespaces"),
            (vec![String::new()], "get,list,watch".into())
        );
        for kind in ManagedKind::ALL {
            let resource = kind.api_resource();
            assert_eq!(
                of(&resource.plural),
                (
                    vec![resource.group],
                    "get,list,watch,create,patch,delete".into()
                )
            );
        }
        assert_eq!(rules.len(), 2 + ManagedKind::ALL.len());
        assert!(
            rules
                .iter()
                .all(|r| r.resource_names.is_none() && r.non_resource_urls.is_none())
        );
    }

    #[test]
    fn deployment_runs_leader_elected_replicas_hardened() {
        let docs = documents(&install_manifests(&Install::default()).unwrap());
        let deployment = find(&docs, "Deployment");
        assert_eq!(deployment["spec"]["replicas"], 2);
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], NAME);
        let container = &pod["containers"][0];
        assert_eq!(container["image"], DEFAULT_IMAGE);
        let args: Vec<_> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(args[0], "serve");
        assert!(args.contains(&"--leader-elect"));
        let env: Vec<_> = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let value = e["valueFrom"]["fieldRef"]["fieldPath"]
                    .as_str()
                    .or(e["value"].as_str());
                (e["name"].as_str().unwrap(), value.unwrap())
            })
            .collect();
        assert_eq!(
            env,
            [
                ("POD_NAME", "metadata.name"),
                ("POD_NAMESPACE", "metadata.namespace"),
                ("GLIBC_TUNABLES", MALLOC_TUNABLES)
            ]
        );
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            assert_eq!(container[probe]["httpGet"]["path"], path);
            assert_eq!(container[probe]["httpGet"]["scheme"], "HTTPS");
        }
        assert_eq!(container["ports"][0]["containerPort"], CONTAINER_PORT);
        let security = &container["securityContext"];
        assert_eq!(security["runAsNonRoot"], true);
        assert_eq!(security["readOnlyRootFilesystem"], true);
        assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert_eq!(
            container["resources"]["requests"],
            serde_json::json!({"cpu": "50m", "memory": "32Mi"})
        );
        // Self-managed certificates by default: no certificate volume or files.
        let volumes = pod["volumes"].as_array().unwrap();
        assert_eq!(volumes.len(), 1);
        assert_eq!(volumes[0]["configMap"]["name"], NAME);
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(!args.iter().any(|a| a.starts_with("--tls-")), "{args:?}");
        assert!(
            args.contains(&format!("--certificate-secret={SELF_MANAGED_SECRET}").as_str()),
            "{args:?}"
        );

        let service = find(&docs, "Service");
        assert_eq!(service["spec"]["ports"][0]["port"], 443);
        assert_eq!(service["spec"]["selector"], pod_labels(deployment));
        let hooks = find(&docs, "MutatingWebhookConfiguration")["webhooks"]
            .as_array()
            .unwrap()
            .clone();
        for hook in hooks {
            assert_eq!(hook["clientConfig"]["service"]["name"], NAME);
            assert_eq!(hook["clientConfig"]["service"]["namespace"], NAMESPACE);
            assert_eq!(hook["clientConfig"]["service"]["port"], 443);
            assert_eq!(hook["clientConfig"]["caBundle"], "");
            assert_eq!(hook["failurePolicy"], "Ignore");
        }
    }

    fn pod_labels(deployment: &Value) -> Value {
        deployment["spec"]["template"]["metadata"]["labels"].clone()
    }

    #[test]
    fn config_map_holds_the_settings_spelt_out() {
        let docs = documents(&install_manifests(&Install::default()).unwrap());
        let text = find(&docs, "ConfigMap")["data"][CONFIG_KEY]
            .as_str()
            .unwrap()
            .to_string();
        let parsed = Settings::from_yaml(&text, "configmap").unwrap();
        assert_eq!(
            serde_json::to_value(parsed).unwrap(),
            serde_json::to_value(Settings::default()).unwrap()
        );
        assert!(text.contains("kfpAccess: auto"), "{text}");
    }

    /// The rules self-managed certificates need, only where they are self-managed.
    fn certificate_rules(docs: &[Value]) -> (Vec<Value>, Vec<Value>) {
        let role = docs
            .iter()
            .find(|d| d["kind"] == "Role" && d["metadata"]["namespace"] == NAMESPACE)
            .unwrap();
        let secrets = role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["resources"][0] == "secrets")
            .cloned()
            .collect();
        let own = find(docs, "ClusterRole")["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["resources"][0] == "mutatingwebhookconfigurations")
            .cloned()
            .collect();
        (secrets, own)
    }

    #[test]
    fn ca_bundle_and_cert_manager_options() {
        let plain = install_manifests(&Install::default()).unwrap();
        assert!(
            plain.contains("# caBundle is filled by tenancy-fixer itself"),
            "{plain}"
        );
        assert!(
            !documents(&plain)
                .iter()
                .any(|d| d["metadata"]["annotations"].is_object())
        );
        let (secrets, own) = certificate_rules(&documents(&plain));
        assert_eq!(
            secrets,
            [
                serde_json::json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}),
                serde_json::json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "update"], "resourceNames": [SELF_MANAGED_SECRET]}),
            ]
        );
        assert_eq!(
            own,
            [
                serde_json::json!({"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"], "verbs": ["get", "update"], "resourceNames": [WEBHOOK_CONFIGURATION_NAME]})
            ]
        );

        let pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_vec();
        let with_ca = install_manifests(&Install {
            ca_bundle: Some(pem.clone()),
            failure_policy: FailurePolicy::Fail,
            ..Install::default()
        })
        .unwrap();
        assert!(!with_ca.contains("# caBundle"));
        let docs = documents(&with_ca);
        let hook = &find(&docs, "MutatingWebhookConfiguration")["webhooks"][0];
        let bundle: ByteString =
            serde_json::from_value(hook["clientConfig"]["caBundle"].clone()).unwrap();
        assert_eq!(bundle.0, pem);
        assert_eq!(hook["failurePolicy"], "Fail");
        assert_eq!(
            certificate_rules(&docs),
            (vec![], vec![]),
            "files: no Secret access"
        );
        let deployment = find(&docs, "Deployment");
        let pod = &deployment["spec"]["template"]["spec"];
        assert!(
            pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["secret"]["secretName"] == TLS_SECRET)
        );
        assert!(
            pod["containers"][0]["args"]
                .as_array()
                .unwrap()
                .contains(&Value::from(format!("--tls-cert={TLS_DIR}/tls.crt")))
        );

        let managed = install_manifests(&Install {
            cert_manager: true,
            ..Install::default()
        })
        .unwrap();
        let docs = documents(&managed);
        let mwc = find(&docs, "MutatingWebhookConfiguration");
        assert_eq!(
            mwc["metadata"]["annotations"][INJECT_CA_FROM],
            format!("{NAMESPACE}/{TLS_SECRET}")
        );
        let certificate = find(&docs, "Certificate");
        assert_eq!(certificate["spec"]["secretName"], TLS_SECRET);
        assert_eq!(
            certificate["metadata"]["name"], TLS_SECRET,
            "the annotation names the Certificate"
        );
        assert_eq!(
            certificate["spec"]["issuerRef"]["name"],
            find(&docs, "Issuer")["metadata"]["name"]
        );
        let dns_names = certificate["spec"]["dnsNames"].as_array().unwrap();
        assert!(dns_names.contains(&Value::from("tenancy-fixer.tenancy-fixer.svc")));
    }

    #[test]
    fn url_webhooks_cover_each_behaviour_and_skip_excluded_namespaces() {
        let config = Config::default();
        let mwc = webhook_configuration(
            &Endpoint::Url("https://127.0.0.1:8443/".into()),
            b"PEM",
            FailurePolicy::Ignore,
            &config,
        );
        let hooks = mwc.webhooks.unwrap();
        let urls: Vec<_> = hooks
            .iter()
            .map(|h| h.client_config.url.clone().unwrap())
            .collect();
        assert_eq!(
            urls,
            [
                "https://127.0.0.1:8443/mutate/pods",
                "https://127.0.0.1:8443/mutate/jobs",
                "https://127.0.0.1:8443/mutate/trials"
            ]
        );
        let operations = |hook: &MutatingWebhook| {
            hook.rules
                .iter()
                .flatten()
                .map(|rule| rule.operations.clone().unwrap().join(","))
                .collect::<Vec<_>>()
        };
        assert_eq!(operations(&hooks[0]), ["CREATE,UPDATE"]);
        assert_eq!(operations(&hooks[1]), ["CREATE,UPDATE"; 9]);
        assert_eq!(operations(&hooks[2]), ["CREATE"]);
        let workloads: Vec<_> = hooks[1]
            .rules
            .iter()
            .flatten()
            .map(|rule| {
                format!(
                    "{}/{} {}",
                    rule.api_groups.as_ref().unwrap()[0],
                    rule.api_versions.as_ref().unwrap()[0],
                    rule.resources.as_ref().unwrap()[0]
                )
            })
            .collect();
        assert_eq!(
            workloads,
            [
                "batch/v1 jobs",
                "kubeflow.org/v1 pytorchjobs",
                "kubeflow.org/v1 tfjobs",
                "kubeflow.org/v1 mpijobs",
                "kubeflow.org/v1 xgboostjobs",
                "kubeflow.org/v1 paddlejobs",
                "kubeflow.org/v1 jaxjobs",
                "jobset.x-k8s.io/v1alpha2 jobsets",
                "trainer.kubeflow.org/v1alpha1 trainjobs"
            ]
        );
        for hook in &hooks {
            assert_eq!(hook.side_effects, "None");
            assert_eq!(hook.failure_policy.as_deref(), Some("Ignore"));
            assert_eq!(hook.reinvocation_policy.as_deref(), Some("IfNeeded"));
            let excluded = &hook
                .namespace_selector
                .as_ref()
                .unwrap()
                .match_expressions
                .as_ref()
                .unwrap()[0];
            assert_eq!(excluded.operator, "NotIn");
            assert!(
                excluded
                    .values
                    .as_ref()
                    .unwrap()
                    .contains(&"kube-system".to_string())
            );
        }
        assert_eq!(
            hooks[2].rules.as_ref().unwrap()[0].api_versions,
            Some(vec!["v1beta1".to_string(), "v1alpha3".to_string()])
        );
    }
}
