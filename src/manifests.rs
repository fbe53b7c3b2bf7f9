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
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
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
use serde_json::Value;

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
/// glibc malloc settings of the server process (`GLIBC_TUNABLES`, set by the Deployment and the
/// image). A review frees more small blocks of one size than glibc's per-thread cache keeps (7);
/// the rest go to the fast bins, which glibc consolidates before the next large allocation (the
/// next request body). A larger cache keeps them ready: −8 % instructions per notebook-pod
/// review for +3.6 MB of RSS under load (128 and 256 save more but take RSS under load to 27.7
/// and 30.8 MB; bench/README.md).
pub const MALLOC_TUNABLES: &str = "glibc.malloc.tcache_count=64";
/// UID and GID the container runs as (the Dockerfile's `USER`).
const RUN_AS: i64 = 65532;
const CONFIG_DIR: &str = "/etc/tenancy-fixer/config";
const TLS_DIR: &str = "/etc/tenancy-fixer/tls";

/// First lines of every `manifests` output.
pub const INSTALL_HEADER: &str = "\
# tenancy-fixer install manifests, generated by `tenancy-fixer manifests` (do not edit by hand).
# The same objects as `kubectl kustomize deploy/` (with --cert-manager: deploy/overlays/cert-manager).
";

/// First lines of every file of the kustomize tree (`manifests --kustomize`).
pub const KUSTOMIZE_HEADER: &str = "\
# Generated from src/manifests.rs by `tenancy-fixer manifests --kustomize deploy` (do not edit by
# hand: regenerate with `cargo run -q -- manifests --kustomize deploy`; customise in an overlay).
";

/// What every variant of the install shares.
#[derive(Clone, Debug)]
pub struct Install {
    pub image: String,
    pub failure_policy: FailurePolicy,
    /// Rendered into the ConfigMap, every key spelt out.
    pub settings: Settings,
}

impl Default for Install {
    fn default() -> Self {
        Self {
            image: DEFAULT_IMAGE.into(),
            failure_policy: FailurePolicy::Ignore,
            settings: Settings::default(),
        }
    }
}

/// Where an install's serving certificate comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Certificates {
    /// `serve` makes and renews its own, in Secret [`SELF_MANAGED_SECRET`], and writes their CA
    /// into the webhook's caBundle.
    #[default]
    SelfManaged,
    /// cert-manager issues it into Secret [`TLS_SECRET`] (a self-signed Issuer and a
    /// Certificate) and its cainjector fills the caBundle.
    CertManager,
    /// Secret [`TLS_SECRET`], made by hand; `ca_bundle` is the PEM of the CA that signed it.
    Files { ca_bundle: Vec<u8> },
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot convert a manifest to JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot write a manifest as YAML: {0}")]
    Yaml(#[from] serde_saphyr::ser::Error),
}

/// The YAML stream (documents separated by `---`) installing tenancy-fixer in [`NAMESPACE`]:
/// Namespace, ServiceAccount, RBAC, ConfigMap, (cert-manager Issuer and Certificate,) Service,
/// Deployment, PodDisruptionBudget and the MutatingWebhookConfiguration.
pub fn install_manifests(install: &Install, certificates: &Certificates) -> Result<String, Error> {
    let mut out = String::from(INSTALL_HEADER);
    for document in install_documents(install, Some(certificates))? {
        out.push_str(&document.render()?);
    }
    Ok(out)
}

/// One object of the install, where it is kept and why it is there.
struct Document {
    /// The file of the kustomize tree holding it (in the base, or in the variant adding it).
    file: &'static str,
    /// A YAML comment above it: what the object itself does not say.
    comment: Option<String>,
    object: Value,
}

impl Document {
    fn new(
        file: &'static str,
        comment: Option<&str>,
        object: impl serde::Serialize,
    ) -> Result<Self, Error> {
        Ok(Self {
            file,
            comment: comment.map(Into::into),
            object: serde_json::to_value(object)?,
        })
    }

    /// What kustomize, like the API server, tells objects apart by.
    fn id(&self) -> [&str; 4] {
        fn field(value: &Value) -> &str {
            value.as_str().unwrap_or_default()
        }
        let metadata = &self.object["metadata"];
        [
            field(&self.object["apiVersion"]),
            field(&self.object["kind"]),
            field(&metadata["namespace"]),
            field(&metadata["name"]),
        ]
    }

    fn render(&self) -> Result<String, Error> {
        let mut out = String::from("---\n");
        out.push_str(&yaml_comment(self.comment.as_deref().unwrap_or_default()));
        out.push_str(&serde_saphyr::to_string(&self.object)?);
        Ok(out)
    }
}

fn yaml_comment(text: &str) -> String {
    text.lines().map(|line| format!("# {line}\n")).collect()
}

/// The objects of an install in [`NAMESPACE`], in the order they are applied; with no
/// `certificates`, the kustomize base: everything but the serving certificate's source.
fn install_documents(
    install: &Install,
    certificates: Option<&Certificates>,
) -> Result<Vec<Document>, Error> {
    let Install {
        image,
        failure_policy,
        settings,
    } = install;
    let self_managed = certificates == Some(&Certificates::SelfManaged);
    let binding = |role_kind: &str, name: &str, namespace: Option<&str>| {
        let role_ref = RoleRef {
            api_group: Some(RBAC_GROUP.into()),
            kind: role_kind.into(),
            name: name.into(),
        };
        let subjects = Some(vec![service_account_subject()]);
        match namespace {
            None => Document::new(
                "rbac.yaml",
                None,
                ClusterRoleBinding {
                    metadata: meta(name, None),
                    role_ref,
                    subjects,
                },
            ),
            Some(namespace) => Document::new(
                "rbac.yaml",
                None,
                RoleBinding {
                    metadata: meta(name, Some(namespace)),
                    role_ref,
                    subjects,
                },
            ),
        }
    };
    let election = "Leader election: only the Lease holder runs the controller; every replica serves admission.";
    let namespace_role_comment = if self_managed {
        format!(
            "{election}\nSelf-managed certificates: the Secret holding the CA and the serving certificate."
        )
    } else {
        election.into()
    };
    let mut documents = vec![
        Document::new("namespace.yaml", None, namespace())?,
        Document::new(
            "service-account.yaml",
            None,
            ServiceAccount {
                metadata: meta(NAME, Some(NAMESPACE)),
                ..ServiceAccount::default()
            },
        )?,
        Document::new(
            "rbac.yaml",
            Some(
                "Cluster-wide: what the profile controller reads and writes. API discovery needs no rule\n\
                 (system:discovery is bound to every authenticated user).",
            ),
            cluster_role(self_managed),
        )?,
        binding("ClusterRole", NAME, None)?,
        Document::new(
            "rbac.yaml",
            Some(
                "Events on Profiles (refusals a user would not see otherwise): a Profile is cluster-scoped, \
                 so its Events live in the namespace `default`.",
            ),
            events_role(),
        )?,
        binding("Role", EVENTS_ROLE, Some(EVENTS_NAMESPACE))?,
        Document::new(
            "rbac.yaml",
            Some(&namespace_role_comment),
            namespace_role(self_managed),
        )?,
        binding("Role", NAME, Some(NAMESPACE))?,
        Document::new(
            "config-map.yaml",
            None,
            ConfigMap {
                metadata: meta(NAME, Some(NAMESPACE)),
                data: Some([(CONFIG_KEY.to_string(), serde_saphyr::to_string(settings)?)].into()),
                ..ConfigMap::default()
            },
        )?,
    ];
    if certificates == Some(&Certificates::CertManager) {
        let (issuer, certificate) = cert_manager_objects();
        documents.push(Document::new(
            "cert-manager.yaml",
            Some("cert-manager: a self-signed serving certificate in the Secret the Deployment mounts."),
            issuer,
        )?);
        documents.push(Document::new("cert-manager.yaml", None, certificate)?);
    }
    documents.push(Document::new("service.yaml", None, service())?);
    documents.push(Document::new(
        "deployment.yaml",
        None,
        deployment(image, certificates),
    )?);
    documents.push(Document::new(
        "pod-disruption-budget.yaml",
        Some("A drain or a node upgrade keeps one replica serving admission."),
        pod_disruption_budget(),
    )?);

    let endpoint = Endpoint::Service {
        namespace: NAMESPACE.into(),
        name: NAME.into(),
        port: 443,
    };
    let config = settings.clone().resolve(&Capabilities::modern());
    let ca_bundle = match certificates {
        Some(Certificates::Files { ca_bundle }) => ca_bundle.as_slice(),
        _ => &[],
    };
    let mut webhooks = webhook_configuration(&endpoint, ca_bundle, *failure_policy, &config);
    if ca_bundle.is_empty() {
        // Filled in the cluster (by serve or the cainjector): no field, or every later
        // `kubectl apply` would send it empty again, and webhook calls fail until it is refilled.
        for webhook in webhooks.webhooks.iter_mut().flatten() {
            webhook.client_config.ca_bundle = None;
        }
    }
    webhooks
        .metadata
        .labels
        .get_or_insert_default()
        .extend(labels());
    let comment = match certificates {
        Some(Certificates::Files { .. }) => None,
        Some(Certificates::CertManager) => {
            let certificate = format!("{NAMESPACE}/{TLS_SECRET}");
            webhooks.metadata.annotations =
                Some([(INJECT_CA_FROM.to_string(), certificate)].into());
            Some(format!(
                "caBundle is filled by cert-manager's cainjector (annotation {INJECT_CA_FROM})."
            ))
        }
        Some(Certificates::SelfManaged) => Some(format!(
            "caBundle is filled by tenancy-fixer itself: the CA of its self-managed certificates \
             (Secret {NAMESPACE}/{SELF_MANAGED_SECRET})."
        )),
        None => Some(
            "caBundle is filled by the certificate source a variant adds: tenancy-fixer itself \
             (../kustomization.yaml) or cert-manager (../overlays/cert-manager)."
                .into(),
        ),
    };
    documents.push(Document::new("webhook.yaml", comment.as_deref(), webhooks)?);
    Ok(documents)
}

/// A file of the kustomize tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeFile {
    /// Relative to the tree's root.
    pub path: String,
    pub text: String,
}

/// A variant of the install in the kustomize tree: its base plus a certificate source.
struct Variant {
    /// Its directory in the tree (`""`: the tree's root).
    dir: &'static str,
    /// The base, relative to `dir`.
    base: &'static str,
    certificates: Certificates,
    about: &'static str,
}

const VARIANTS: [Variant; 2] = [
    Variant {
        dir: "",
        base: "base",
        certificates: Certificates::SelfManaged,
        about: "tenancy-fixer, the default install: `kubectl apply -k deploy/`; uninstall: `kubectl delete -k deploy/`.\n\
                The base with self-managed certificates: serve keeps its CA and serving certificate in the Secret\n\
                tenancy-fixer-certs and writes the CA into the caBundle of the MutatingWebhookConfiguration\n\
                tenancy-fixer; the patches let it create that Secret, and update only it and only that configuration.",
    },
    Variant {
        dir: "overlays/cert-manager",
        base: "../../base",
        certificates: Certificates::CertManager,
        about: "tenancy-fixer with cert-manager (installed beforehand): `kubectl apply -k deploy/overlays/cert-manager`.\n\
                The base plus a self-signed Issuer and a Certificate for the Service's DNS names in the Secret\n\
                tenancy-fixer-tls, which the Deployment mounts and serves (reloaded when renewed); cert-manager's\n\
                cainjector fills the webhook's caBundle. No access to Secrets or to the webhook configuration.",
    },
];

const BASE_ABOUT: &str = "The base of tenancy-fixer's install: everything but the serving certificate's source, which\n\
                          each variant adds (../kustomization.yaml: self-managed, the default; ../overlays/cert-manager).";

/// The kustomize tree of `deploy/` (`manifests --kustomize DIR`): `base/` (everything but the
/// serving certificate's source), the default install at the root (self-managed certificates)
/// and `overlays/cert-manager`. A variant is the base plus the objects its [`install_manifests`]
/// adds and a JSON patch for each object it changes, so that `kustomize build` of it gives the
/// objects of [`install_manifests`] (tests/kustomize.rs checks, with the kustomize CLI).
pub fn kustomize_tree(install: &Install) -> Result<Vec<TreeFile>, Error> {
    let base = install_documents(install, None)?;
    let (resources, mut tree) = files_of("base", &base.iter().collect::<Vec<_>>())?;
    tree.push(kustomization("base", BASE_ABOUT, resources, Vec::new())?);
    for variant in &VARIANTS {
        let mut added = Vec::new();
        let mut patches = Vec::new();
        let documents = install_documents(install, Some(&variant.certificates))?;
        for document in &documents {
            match base.iter().find(|b| b.id() == document.id()) {
                None => added.push(document),
                Some(in_base) => {
                    let patch = json_patch::diff(&in_base.object, &document.object);
                    if !patch.0.is_empty() {
                        patches.push(KustomizePatch::new(document, &patch)?);
                    }
                }
            }
        }
        let (files, written) = files_of(variant.dir, &added)?;
        let resources = std::iter::once(variant.base).chain(files).collect();
        tree.extend(written);
        tree.push(kustomization(
            variant.dir,
            variant.about,
            resources,
            patches,
        )?);
    }
    Ok(tree)
}

/// `documents` in their files under `dir`: the file names in order, and the files.
fn files_of(
    dir: &str,
    documents: &[&Document],
) -> Result<(Vec<&'static str>, Vec<TreeFile>), Error> {
    let mut names: Vec<&'static str> = Vec::new();
    for document in documents {
        if !names.contains(&document.file) {
            names.push(document.file);
        }
    }
    let mut files = Vec::new();
    for name in &names {
        let mut text = String::from(KUSTOMIZE_HEADER);
        for document in documents.iter().filter(|d| d.file == *name) {
            text.push_str(&document.render()?);
        }
        files.push(TreeFile {
            path: tree_path(dir, name),
            text,
        });
    }
    Ok((names, files))
}

fn tree_path(dir: &str, file: &str) -> String {
    if dir.is_empty() {
        file.into()
    } else {
        format!("{dir}/{file}")
    }
}

fn kustomization(
    dir: &str,
    about: &str,
    resources: Vec<&str>,
    patches: Vec<KustomizePatch>,
) -> Result<TreeFile, Error> {
    let kustomization = Kustomization {
        api_version: "kustomize.config.k8s.io/v1beta1",
        kind: "Kustomization",
        resources,
        patches,
    };
    let text = format!(
        "{KUSTOMIZE_HEADER}{}{}",
        yaml_comment(about),
        serde_saphyr::to_string(&kustomization)?
    );
    Ok(TreeFile {
        path: tree_path(dir, "kustomization.yaml"),
        text,
    })
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Kustomization<'a> {
    api_version: &'static str,
    kind: &'static str,
    resources: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    patches: Vec<KustomizePatch>,
}

/// A JSON patch (RFC 6902, as YAML) of the object `target` selects.
#[derive(serde::Serialize)]
struct KustomizePatch {
    target: PatchTarget,
    patch: String,
}

#[derive(serde::Serialize)]
struct PatchTarget {
    #[serde(skip_serializing_if = "String::is_empty")]
    group: String,
    version: String,
    kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    namespace: String,
    name: String,
}

impl KustomizePatch {
    fn new(document: &Document, patch: &json_patch::Patch) -> Result<Self, Error> {
        let [api_version, kind, namespace, name] = document.id();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        Ok(Self {
            target: PatchTarget {
                group: group.into(),
                version: version.into(),
                kind: kind.into(),
                namespace: namespace.into(),
                name: name.into(),
            },
            patch: serde_saphyr::to_string(patch)?,
        })
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

fn cert_manager_objects() -> (Value, Value) {
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

/// The Deployment, serving the certificate `certificates` names (none: the kustomize base, whose
/// variants add its arguments, volume and mount at the end of their lists).
fn deployment(image: &str, certificates: Option<&Certificates>) -> Deployment {
    let certificate_files = matches!(
        certificates,
        Some(Certificates::CertManager | Certificates::Files { .. })
    );
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
                    format!("--listen=0.0.0.0:{CONTAINER_PORT}"),
                    format!("--metrics-listen=0.0.0.0:{METRICS_PORT}"),
                    "--leader-elect".into(),
                ],
                match certificates {
                    None => vec![],
                    Some(Certificates::SelfManaged) => {
                        vec![format!("--certificate-secret={SELF_MANAGED_SECRET}")]
                    }
                    Some(Certificates::CertManager | Certificates::Files { .. }) => vec![
                        format!("--tls-cert={TLS_DIR}/tls.crt"),
                        format!("--tls-key={TLS_DIR}/tls.key"),
                    ],
                },
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

/// Voluntary evictions (a drain) leave at least one of the 2 replicas serving.
fn pod_disruption_budget() -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(NAME, Some(NAMESPACE)),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(labels()),
                match_expressions: None,
            }),
            ..PodDisruptionBudgetSpec::default()
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
        let docs =
            documents(&install_manifests(&Install::default(), &Certificates::SelfManaged).unwrap());
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
        let out = install_manifests(&Install::default(), &Certificates::SelfManaged).unwrap();
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
                "PodDisruptionBudget",
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
        let docs =
            documents(&install_manifests(&Install::default(), &Certificates::SelfManaged).unwrap());
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
        let budget = find(&docs, "PodDisruptionBudget");
        assert_eq!(budget["spec"]["minAvailable"], 1);
        assert_eq!(
            budget["spec"]["selector"]["matchLabels"],
            pod_labels(deployment)
        );
        let hooks = find(&docs, "MutatingWebhookConfiguration")["webhooks"]
            .as_array()
            .unwrap()
            .clone();
        for hook in hooks {
            assert_eq!(hook["clientConfig"]["service"]["name"], NAME);
            assert_eq!(hook["clientConfig"]["service"]["namespace"], NAMESPACE);
            assert_eq!(hook["clientConfig"]["service"]["port"], 443);
            assert_eq!(hook["clientConfig"].get("caBundle"), None);
            assert_eq!(hook["failurePolicy"], "Ignore");
        }
    }

    fn pod_labels(deployment: &Value) -> Value {
        deployment["spec"]["template"]["metadata"]["labels"].clone()
    }

    #[test]
    fn config_map_holds_the_settings_spelt_out() {
        let docs =
            documents(&install_manifests(&Install::default(), &Certificates::SelfManaged).unwrap());
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
        let plain = install_manifests(&Install::default(), &Certificates::SelfManaged).unwrap();
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
        let with_ca = install_manifests(
            &Install {
                failure_policy: FailurePolicy::Fail,
                ..Install::default()
            },
            &Certificates::Files {
                ca_bundle: pem.clone(),
            },
        )
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

        let managed = install_manifests(&Install::default(), &Certificates::CertManager).unwrap();
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

    #[test]
    fn kustomize_variants_add_only_their_certificate_source_to_the_base() {
        let tree: BTreeMap<String, String> = kustomize_tree(&Install::default())
            .unwrap()
            .into_iter()
            .map(|file| (file.path, file.text))
            .collect();
        assert!(tree.values().all(|text| text.starts_with(KUSTOMIZE_HEADER)));
        let kustomization = |dir: &str| -> Value {
            serde_saphyr::from_str(&tree[&tree_path(dir, "kustomization.yaml")]).unwrap()
        };
        let strings = |value: &Value| -> Vec<String> {
            value
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };

        let base = kustomization("base");
        let base_files = strings(&base["resources"]);
        assert_eq!(base_files.len(), 8, "{base_files:?}");
        let base_text: String = base_files
            .iter()
            .map(|file| tree[&format!("base/{file}")].as_str())
            .collect();
        assert_eq!(documents(&base_text).len(), 13);
        for source in [SELF_MANAGED_SECRET, TLS_SECRET, INJECT_CA_FROM, "--tls-"] {
            assert!(!base_text.contains(source), "{source} in the base");
        }
        assert!(base.get("patches").is_none());

        // (resources, kinds patched); every patch only adds.
        let variant = |dir: &str| {
            let kustomization = kustomization(dir);
            let mut kinds = Vec::new();
            for patch in kustomization["patches"].as_array().unwrap() {
                kinds.push(patch["target"]["kind"].as_str().unwrap().to_string());
                let operations: Vec<Value> =
                    serde_saphyr::from_str(patch["patch"].as_str().unwrap()).unwrap();
                assert!(operations.iter().all(|op| op["op"] == "add"), "{patch}");
            }
            (strings(&kustomization["resources"]), kinds)
        };
        assert_eq!(
            variant(""),
            (
                vec!["base".into()],
                vec!["ClusterRole".into(), "Role".into(), "Deployment".into()]
            )
        );
        assert_eq!(
            variant("overlays/cert-manager"),
            (
                vec!["../../base".into(), "cert-manager.yaml".into()],
                vec!["Deployment".into(), "MutatingWebhookConfiguration".into()]
            ),
            "no access to Secrets or to the webhook configuration"
        );
        let added = documents(&tree["overlays/cert-manager/cert-manager.yaml"]);
        let kinds: Vec<_> = added.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["Issuer", "Certificate"]);
        assert_eq!(tree.len(), base_files.len() + 4);
    }
}
