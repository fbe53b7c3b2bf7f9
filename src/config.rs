//! Typed settings: every name the rules use, with the design's defaults.
//!
//! `Settings` is what the operator writes (YAML, camelCase, unknown keys rejected); it may say
//! `auto`. `Settings::resolve` turns it into a [`Config`] with concrete [`Modes`], once, before
//! anything is served: the rules never see `auto`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use serde::{Deserialize, Serialize};

/// Errors reading the configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// `key` is the dotted path of the offending setting (`.` for the document itself).
    #[error("invalid config file {path}: {key}: {source}")]
    Parse {
        path: String,
        key: String,
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    #[error("invalid config file {path}: {key}: {reason}")]
    Value {
        path: String,
        key: &'static str,
        reason: String,
    },
}

/// How YAML is read here: a parse error is one line (no source snippet), because it ends up in
/// one stderr or log line.
pub fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    options
}

/// How notebooks and trials authenticate to Kubeflow Pipelines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KfpAccess {
    /// The prototype's recipe: an Istio grant plus an EnvoyFilter adding `kubeflow-userid`.
    Header,
    /// Current KFP: a projected ServiceAccount token (PodDefault + pod injection).
    Token,
}

/// Which Istio API grants the profile's service account access to ml-pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IstioRbac {
    ServiceRoleBinding,
    AuthorizationPolicy,
}

/// How a trial's training container is kept from starting before the Istio proxy is ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyStartup {
    /// Trial Jobs get `holdApplicationUntilProxyStarts`; pods without it are wrapped as `WaitReady`.
    HoldAnnotation,
    /// The training container polls the proxy's readiness endpoint (bounded) before it starts.
    WaitReady,
    /// The training container sleeps a fixed time first (Istio < 1.6 has no readiness port).
    Sleep,
}

/// How the metrics collector stops the Istio proxy when it has finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyShutdown {
    /// `POST /quitquitquit` on pilot-agent's status port.
    Quitquitquit,
    /// `pkill -INT pilot-agent` through the shared process namespace (Istio 1.3).
    Pkill,
}

/// A setting that is either fixed by the operator or decided from API discovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Choice<T> {
    #[default]
    Auto,
    Fixed(T),
}

impl<T> Choice<T> {
    /// The fixed value, or for `auto` the choice matching the cluster's Istio generation.
    fn decide(self, legacy_istio: bool, legacy: T, modern: T) -> T {
        match self {
            Choice::Fixed(v) => v,
            Choice::Auto if legacy_istio => legacy,
            Choice::Auto => modern,
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Choice<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr<T> {
            Auto(AutoTag),
            Fixed(T),
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum AutoTag {
            Auto,
        }
        // Untagged enums lose the inner error, so name the accepted words ourselves.
        let value = serde_json::Value::deserialize(d)?;
        match Repr::<T>::deserialize(value.clone()) {
            Ok(Repr::Auto(AutoTag::Auto)) => Ok(Choice::Auto),
            Ok(Repr::Fixed(v)) => Ok(Choice::Fixed(v)),
            Err(_) => Err(serde::de::Error::custom(format!(
                "unsupported value {}",
                match &value {
                    serde_json::Value::String(word) => word.clone(),
                    other => other.to_string(),
                }
            ))),
        }
    }
}

impl<T: Serialize> Serialize for Choice<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Choice::Auto => s.serialize_str("auto"),
            Choice::Fixed(v) => v.serialize(s),
        }
    }
}

/// The whole configuration file. Every key is optional; absent keys take the defaults.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Settings {
    /// Namespace of the Kubeflow control plane (ml-pipeline, Katib's own trials).
    pub kubeflow_namespace: String,
    /// Label marking workloads that may reach ml-pipeline as the namespace owner.
    pub extension_label: String,
    /// Label the notebook controller puts on notebook pods.
    pub notebook_label: String,
    /// Service account Trial Jobs run as, and the principal granted in header mode.
    pub service_account: String,
    /// Namespaces whose objects are never changed (the webhook's namespaceSelector excludes them too).
    pub excluded_namespaces: Vec<String>,
    /// Users (`userInfo.username`, set by the API server from authentication) whose workloads and
    /// pods may carry the extension label: the controllers that turn Trials into workloads and
    /// workloads into pods. Nobody else can obtain it, whatever the object says.
    pub trusted_controllers: Vec<String>,
    pub kfp_access: Choice<KfpAccess>,
    pub istio_rbac: Choice<IstioRbac>,
    pub ml_pipeline: MlPipeline,
    pub katib: Katib,
    pub istio: Istio,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MlPipeline {
    /// Host of the ml-pipeline API as the EnvoyFilter's virtual host names it.
    pub host: String,
    pub port: u16,
    /// Legacy ServiceRole that header-mode ServiceRoleBindings refer to.
    pub service_role: String,
    /// `app` label of the ml-pipeline pods (AuthorizationPolicy selector).
    pub app_label: String,
    /// Header carrying the user identity in header mode.
    pub user_id_header: String,
    /// Audience of the projected token in token mode.
    pub token_audience: String,
    pub token_expiration_seconds: i64,
    /// Directory the token is mounted in; the token file is `<dir>/token`.
    pub token_mount_path: String,
    /// Name of the per-profile PodDefault in token mode.
    pub pod_default_name: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Katib {
    /// Katib's metrics collector sidecars by container name (a pod with one of them is a trial
    /// pod), each with its image's entrypoint, run when the container gives no command.
    pub metrics_collectors: BTreeMap<String, Vec<String>>,
    pub proxy_startup: Choice<ProxyStartup>,
    pub proxy_startup_timeout_seconds: u32,
    pub sleep_seconds: u32,
    pub proxy_shutdown: Choice<ProxyShutdown>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Istio {
    /// Name of the injected proxy container.
    pub proxy_container: String,
    /// Proxy readiness endpoint (Istio >= 1.6).
    pub readiness_url: String,
    /// pilot-agent's shutdown endpoint.
    pub quit_url: String,
    /// Process name signalled in `pkill` mode.
    pub pilot_agent_process: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            kubeflow_namespace: "kubeflow".into(),
            extension_label: "kubeflow-extension".into(),
            notebook_label: "notebook-name".into(),
            service_account: "default-editor".into(),
            excluded_namespaces: vec!["kube-system".into(), "tenancy-fixer".into()],
            trusted_controllers: DEFAULT_TRUSTED_CONTROLLERS
                .iter()
                .map(|name| name.to_string())
                .collect(),
            kfp_access: Choice::Auto,
            istio_rbac: Choice::Auto,
            ml_pipeline: MlPipeline::default(),
            katib: Katib::default(),
            istio: Istio::default(),
        }
    }
}

/// The controllers that create trial workloads and their pods, under the ServiceAccounts and
/// namespaces their upstream manifests install them with.
pub const DEFAULT_TRUSTED_CONTROLLERS: [&str; 9] = [
    // kube-controller-manager's Job controller (--use-service-account-credentials=true), and
    // the controller-manager itself when it runs with its own credentials only.
    "system:serviceaccount:kube-system:job-controller",
    "system:kube-controller-manager",
    // Katib: manifests/v1beta1/components/controller/rbac.yaml (namespace kubeflow).
    "system:serviceaccount:kubeflow:katib-controller",
    // Training Operator v1: manifests/base/cluster-role-binding.yaml, overlays/{standalone,kubeflow}.
    "system:serviceaccount:kubeflow:training-operator",
    // Kubeflow Trainer: manifests/base/rbac/service_account.yaml in overlays/manager
    // (kubeflow-system) and overlays/kubeflow-platform (kubeflow).
    "system:serviceaccount:kubeflow-system:kubeflow-trainer-controller-manager",
    "system:serviceaccount:kubeflow:kubeflow-trainer-controller-manager",
    // JobSet: config/default (namePrefix jobset-, namespace jobset-system), and as Trainer's
    // manifests/third-party/jobset installs it (kubeflow-system, or kubeflow on the platform).
    "system:serviceaccount:jobset-system:jobset-controller-manager",
    "system:serviceaccount:kubeflow-system:jobset-controller-manager",
    "system:serviceaccount:kubeflow:jobset-controller-manager",
];

impl Default for MlPipeline {
    fn default() -> Self {
        Self {
            host: "ml-pipeline.kubeflow.svc.cluster.local".into(),
            port: 8888,
            service_role: "ml-pipeline-services".into(),
            app_label: "ml-pipeline".into(),
            user_id_header: "kubeflow-userid".into(),
            token_audience: "pipelines.kubeflow.org".into(),
            token_expiration_seconds: 7200,
            token_mount_path: "/var/run/secrets/kubeflow/pipelines".into(),
            pod_default_name: "access-ml-pipeline".into(),
        }
    }
}

impl Default for Katib {
    fn default() -> Self {
        Self {
            // Katib names the File/StdOut collector `metrics-logger-and-collector` (image
            // entrypoint `./file-metricscollector`) and the others `metrics-collector` (the
            // TF-event collector's entrypoint is `python main.py`): katib's Dockerfiles under
            // cmd/metricscollector/v1beta1/.
            metrics_collectors: BTreeMap::from([
                (
                    "metrics-logger-and-collector".into(),
                    vec!["./file-metricscollector".into()],
                ),
                (
                    "metrics-collector".into(),
                    vec!["python".into(), "main.py".into()],
                ),
            ]),
            proxy_startup: Choice::Auto,
            proxy_startup_timeout_seconds: 60,
            sleep_seconds: 10,
            proxy_shutdown: Choice::Auto,
        }
    }
}

impl Default for Istio {
    fn default() -> Self {
        Self {
            proxy_container: "istio-proxy".into(),
            readiness_url: "http://127.0.0.1:15021/healthz/ready".into(),
            quit_url: "http://127.0.0.1:15020/quitquitquit".into(),
            pilot_agent_process: "pilot-agent".into(),
        }
    }
}

/// The group/versions a cluster serves, as far as `auto` cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    served: BTreeSet<String>,
}

/// Served only by Istio < 1.6, whose clusters run the prototype's Kubeflow.
pub const LEGACY_ISTIO_RBAC: &str = "rbac.istio.io/v1alpha1";

impl Capabilities {
    /// What a current cluster serves: the answer `auto` gives offline.
    pub fn modern() -> Self {
        Self::default()
    }

    pub fn from_group_versions<I: IntoIterator<Item = S>, S: Into<String>>(served: I) -> Self {
        Self {
            served: served.into_iter().map(Into::into).collect(),
        }
    }

    pub fn serves(&self, group_version: &str) -> bool {
        self.served.contains(group_version)
    }

    fn legacy_istio(&self) -> bool {
        self.serves(LEGACY_ISTIO_RBAC)
    }
}

/// Concrete choices, `auto` resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Modes {
    pub kfp_access: KfpAccess,
    pub istio_rbac: IstioRbac,
    pub proxy_startup: ProxyStartup,
    pub proxy_shutdown: ProxyShutdown,
}

/// Settings plus resolved modes: what every rule and builder reads.
#[derive(Clone, Debug)]
pub struct Config {
    pub settings: Settings,
    pub modes: Modes,
}

impl Default for Config {
    fn default() -> Self {
        Settings::default().resolve(&Capabilities::modern())
    }
}

impl Settings {
    /// Reads a YAML settings file; unknown keys and bad values are errors naming the key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_yaml(&text, &shown)
    }

    /// Parses settings from YAML text; `origin` names the source in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        // An empty file is a valid "all defaults" configuration.
        let settings: Settings = if text.trim().is_empty() {
            Settings::default()
        } else {
            // The path of the offending key leaves the closure beside the parser's error.
            let mut key = String::from(".");
            serde_saphyr::with_deserializer_from_str_with_options(
                text,
                yaml_options(),
                |deserializer| {
                    serde_path_to_error::deserialize(deserializer).map_err(|error| {
                        key = error.path().to_string();
                        error.into_inner()
                    })
                },
            )
            .map_err(|source| ConfigError::Parse {
                path: origin.into(),
                key,
                source: Box::new(source),
            })?
        };
        settings
            .validate()
            .map_err(|(key, reason)| ConfigError::Value {
                path: origin.into(),
                key,
                reason,
            })?;
        Ok(settings)
    }

    /// Every name and value checked with the API server's own rules, so that a setting never
    /// makes the API server reject the pods, templates or objects we write.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        use validation::*;
        let kfp = &self.ml_pipeline;
        let checks: [(&'static str, Result<(), String>); 21] = [
            ("kubeflowNamespace", dns_label(&self.kubeflow_namespace)),
            ("extensionLabel", label_key(&self.extension_label)),
            ("notebookLabel", label_key(&self.notebook_label)),
            ("serviceAccount", dns_subdomain(&self.service_account)),
            (
                "excludedNamespaces",
                self.excluded_namespaces
                    .iter()
                    .try_for_each(|n| dns_label(n)),
            ),
            (
                "trustedControllers",
                self.trusted_controllers
                    .iter()
                    .try_for_each(|user| printable(user)),
            ),
            ("mlPipeline.host", dns_subdomain(&kfp.host)),
            (
                "mlPipeline.port",
                (kfp.port != 0)
                    .then_some(())
                    .ok_or_else(|| "must be between 1 and 65535".into()),
            ),
            ("mlPipeline.serviceRole", dns_subdomain(&kfp.service_role)),
            ("mlPipeline.appLabel", label_value(&kfp.app_label)),
            ("mlPipeline.userIdHeader", header_name(&kfp.user_id_header)),
            ("mlPipeline.tokenAudience", printable(&kfp.token_audience)),
            (
                "mlPipeline.tokenExpirationSeconds",
                token_expiration(kfp.token_expiration_seconds),
            ),
            (
                "mlPipeline.tokenMountPath",
                mount_path(&kfp.token_mount_path),
            ),
            (
                "mlPipeline.podDefaultName",
                dns_subdomain(&kfp.pod_default_name),
            ),
            (
                "katib.metricsCollectors",
                collectors(&self.katib.metrics_collectors),
            ),
            (
                "katib.proxyStartupTimeoutSeconds",
                (self.katib.proxy_startup_timeout_seconds != 0)
                    .then_some(())
                    .ok_or_else(|| "must be at least 1".into()),
            ),
            (
                "istio.proxyContainer",
                dns_label(&self.istio.proxy_container),
            ),
            ("istio.readinessUrl", script_word(&self.istio.readiness_url)),
            ("istio.quitUrl", script_word(&self.istio.quit_url)),
            (
                "istio.pilotAgentProcess",
                script_word(&self.istio.pilot_agent_process),
            ),
        ];
        checks
            .into_iter()
            .try_for_each(|(key, check)| check.map_err(|reason| (key, reason)))
    }

    /// Decides every `auto` from what the cluster serves.
    pub fn resolve(self, caps: &Capabilities) -> Config {
        let legacy = caps.legacy_istio();
        let modes = Modes {
            kfp_access: self
                .kfp_access
                .decide(legacy, KfpAccess::Header, KfpAccess::Token),
            istio_rbac: self.istio_rbac.decide(
                legacy,
                IstioRbac::ServiceRoleBinding,
                IstioRbac::AuthorizationPolicy,
            ),
            proxy_startup: self.katib.proxy_startup.decide(
                legacy,
                ProxyStartup::Sleep,
                ProxyStartup::HoldAnnotation,
            ),
            proxy_shutdown: self.katib.proxy_shutdown.decide(
                legacy,
                ProxyShutdown::Pkill,
                ProxyShutdown::Quitquitquit,
            ),
        };
        Config {
            settings: self,
            modes,
        }
    }
}

impl Config {
    /// Path of the KFP token file inside the mount.
    pub fn token_file(&self) -> String {
        format!(
            "{}/token",
            self.settings
                .ml_pipeline
                .token_mount_path
                .trim_end_matches('/')
        )
    }

    /// Is the requesting user one of the trusted controllers?
    pub fn trusts(&self, username: Option<&str>) -> bool {
        username.is_some_and(|user| {
            self.settings
                .trusted_controllers
                .iter()
                .any(|trusted| trusted == user)
        })
    }

    pub fn namespace_excluded(&self, namespace: &str) -> bool {
        self.settings
            .excluded_namespaces
            .iter()
            .any(|n| n == namespace)
    }
}

/// The API server's rules for the names and values of the settings (apimachinery's
/// validation: DNS-1123 labels and subdomains, qualified names, label values), plus what our
/// scripts and Envoy need.
mod validation {
    use std::collections::BTreeMap;

    type Check = Result<(), String>;

    fn fail(reason: impl Into<String>) -> Check {
        Err(reason.into())
    }

    /// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters (a namespace, a container).
    pub fn dns_label(s: &str) -> Check {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok {
            Ok(())
        } else {
            fail(format!(
                "{s:?} is not a DNS-1123 label (lower-case alphanumerics and '-', at most 63)"
            ))
        }
    }

    /// Dot-separated DNS-1123 labels, at most 253 characters (object names, hosts).
    pub fn dns_subdomain(s: &str) -> Check {
        if s.is_empty() || s.len() > 253 || s.split('.').any(|part| dns_label(part).is_err()) {
            return fail(format!("{s:?} is not a DNS-1123 subdomain"));
        }
        Ok(())
    }

    /// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63 characters.
    fn name_part(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
    }

    /// A label key: an optional DNS subdomain prefix and `/`, then a name part.
    pub fn label_key(s: &str) -> Check {
        let (prefix, name) = match s.rsplit_once('/') {
            Some((prefix, name)) => (Some(prefix), name),
            None => (None, s),
        };
        if !name_part(name) || prefix.is_some_and(|p| dns_subdomain(p).is_err()) {
            return fail(format!("{s:?} is not a valid label key"));
        }
        Ok(())
    }

    /// A non-empty label value.
    pub fn label_value(s: &str) -> Check {
        if name_part(s) {
            Ok(())
        } else {
            fail(format!("{s:?} is not a valid label value"))
        }
    }

    /// An HTTP header name (RFC 9110 token), lower case as Envoy and Istio match it.
    pub fn header_name(s: &str) -> Check {
        let tchar =
            |b: u8| b.is_ascii_digit() || b.is_ascii_lowercase() || b"!#$%&'*+-.^_`|~".contains(&b);
        if !s.is_empty() && s.bytes().all(tchar) {
            Ok(())
        } else {
            fail(format!("{s:?} is not a lower-case HTTP header name"))
        }
    }

    /// Non-empty, printable, no white space at its ends.
    pub fn printable(s: &str) -> Check {
        if s.is_empty() || s.trim() != s || s.chars().any(char::is_control) {
            return fail(format!("{s:?} must be non-empty printable text"));
        }
        Ok(())
    }

    /// The API server accepts projected token lifetimes from 10 minutes to 2^32 seconds.
    pub fn token_expiration(seconds: i64) -> Check {
        if (600..=1 << 32).contains(&seconds) {
            Ok(())
        } else {
            fail(format!(
                "{seconds} is outside 600..=4294967296 (the API server's bounds)"
            ))
        }
    }

    /// An absolute path without ':' (the API server refuses ':' in a mountPath).
    pub fn mount_path(s: &str) -> Check {
        printable(s)?;
        if !s.starts_with('/') || s.contains(':') || s.split('/').any(|part| part == "..") {
            return fail(format!(
                "{s:?} must be an absolute path without ':' or '..'"
            ));
        }
        Ok(())
    }

    /// A configured word that goes into a wrapper script, which the kubelet also reads: no `$`
    /// (the kubelet would expand `$(NAME)`), nothing unprintable.
    pub fn script_word(s: &str) -> Check {
        printable(s)?;
        if s.contains('$') {
            return fail(format!("{s:?} must not contain '$'"));
        }
        Ok(())
    }

    pub fn collectors(collectors: &BTreeMap<String, Vec<String>>) -> Check {
        if collectors.is_empty() {
            return fail("must name at least one collector container");
        }
        for (name, entrypoint) in collectors {
            dns_label(name)?;
            if entrypoint
                .first()
                .is_none_or(|program| program.trim().is_empty())
            {
                return fail(format!("{name}: the entrypoint must name a program"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults_and_offline_auto_is_modern() {
        let config = Settings::from_yaml("", "test")
            .unwrap()
            .resolve(&Capabilities::modern());
        assert_eq!(config.settings.kubeflow_namespace, "kubeflow");
        assert_eq!(config.settings.ml_pipeline.port, 8888);
        assert_eq!(
            config.modes,
            Modes {
                kfp_access: KfpAccess::Token,
                istio_rbac: IstioRbac::AuthorizationPolicy,
                proxy_startup: ProxyStartup::HoldAnnotation,
                proxy_shutdown: ProxyShutdown::Quitquitquit,
            }
        );
        assert_eq!(
            config.token_file(),
            "/var/run/secrets/kubeflow/pipelines/token"
        );
    }

    #[test]
    fn auto_on_legacy_istio_picks_the_prototype_recipe() {
        let caps =
            Capabilities::from_group_versions([LEGACY_ISTIO_RBAC, "security.istio.io/v1beta1"]);
        let modes = Settings::default().resolve(&caps).modes;
        assert_eq!(modes.kfp_access, KfpAccess::Header);
        assert_eq!(modes.istio_rbac, IstioRbac::ServiceRoleBinding);
        assert_eq!(modes.proxy_startup, ProxyStartup::Sleep);
        assert_eq!(modes.proxy_shutdown, ProxyShutdown::Pkill);
    }

    #[test]
    fn fixed_values_win_over_discovery() {
        let yaml = "kfpAccess: header\nistioRbac: authorization-policy\nkatib:\n  proxyStartup: wait-ready\n  proxyShutdown: pkill\n";
        let caps = Capabilities::from_group_versions([LEGACY_ISTIO_RBAC]);
        let modes = Settings::from_yaml(yaml, "t").unwrap().resolve(&caps).modes;
        assert_eq!(modes.kfp_access, KfpAccess::Header);
        assert_eq!(modes.istio_rbac, IstioRbac::AuthorizationPolicy);
        assert_eq!(modes.proxy_startup, ProxyStartup::WaitReady);
        assert_eq!(modes.proxy_shutdown, ProxyShutdown::Pkill);
    }

    #[test]
    fn every_contract_key_is_accepted() {
        let yaml = r#"
kubeflowNamespace: kf
extensionLabel: ext
notebookLabel: nb
serviceAccount: sa
kfpAccess: token
istioRbac: service-role-binding
mlPipeline: {host: h.example, port: 9999, serviceRole: role}
katib:
  metricsCollectors: {mc: [/bin/mc, -v]}
  proxyStartup: sleep
  proxyStartupTimeoutSeconds: 5
  sleepSeconds: 3
  proxyShutdown: quitquitquit
"#;
        let s = Settings::from_yaml(yaml, "t").unwrap();
        assert_eq!(s.kubeflow_namespace, "kf");
        assert_eq!(s.ml_pipeline.port, 9999);
        assert_eq!(s.ml_pipeline.service_role, "role");
        assert_eq!(
            s.katib.metrics_collectors,
            BTreeMap::from([(
                "mc".to_string(),
                vec!["/bin/mc".to_string(), "-v".to_string()]
            )])
        );
        assert_eq!(s.katib.sleep_seconds, 3);
        assert_eq!(s.katib.proxy_startup, Choice::Fixed(ProxyStartup::Sleep));
    }

    #[test]
    fn settings_the_api_server_would_refuse_are_errors_naming_the_key() {
        for (yaml, key) in [
            (
                "mlPipeline:\n  tokenExpirationSeconds: 60\n",
                "mlPipeline.tokenExpirationSeconds",
            ),
            (
                "mlPipeline:\n  tokenExpirationSeconds: 4294967297\n",
                "mlPipeline.tokenExpirationSeconds",
            ),
            (
                "mlPipeline:\n  tokenMountPath: ''\n",
                "mlPipeline.tokenMountPath",
            ),
            (
                "mlPipeline:\n  tokenMountPath: relative/dir\n",
                "mlPipeline.tokenMountPath",
            ),
            (
                "mlPipeline:\n  tokenMountPath: /a:b\n",
                "mlPipeline.tokenMountPath",
            ),
            ("extensionLabel: 'Not a label!'\n", "extensionLabel"),
            ("notebookLabel: -x\n", "notebookLabel"),
            (
                "mlPipeline:\n  userIdHeader: ''\n",
                "mlPipeline.userIdHeader",
            ),
            (
                "mlPipeline:\n  userIdHeader: 'kubeflow userid'\n",
                "mlPipeline.userIdHeader",
            ),
            ("kubeflowNamespace: Kubeflow\n", "kubeflowNamespace"),
            ("excludedNamespaces: [ok, not_ok]\n", "excludedNamespaces"),
            ("serviceAccount: ''\n", "serviceAccount"),
            (
                "mlPipeline:\n  podDefaultName: A\n",
                "mlPipeline.podDefaultName",
            ),
            ("mlPipeline:\n  appLabel: ''\n", "mlPipeline.appLabel"),
            (
                "mlPipeline:\n  tokenAudience: ''\n",
                "mlPipeline.tokenAudience",
            ),
            (
                "katib:\n  metricsCollectors: {}\n",
                "katib.metricsCollectors",
            ),
            (
                "katib:\n  metricsCollectors: {mc: []}\n",
                "katib.metricsCollectors",
            ),
            (
                "katib:\n  metricsCollectors: {Bad_Name: [x]}\n",
                "katib.metricsCollectors",
            ),
            ("istio:\n  proxyContainer: ''\n", "istio.proxyContainer"),
            (
                "istio:\n  readinessUrl: 'http://$(HOST)/'\n",
                "istio.readinessUrl",
            ),
            ("istio:\n  quitUrl: ''\n", "istio.quitUrl"),
            (
                "istio:\n  pilotAgentProcess: 'a$b'\n",
                "istio.pilotAgentProcess",
            ),
        ] {
            let err = Settings::from_yaml(yaml, "c").unwrap_err();
            match &err {
                ConfigError::Value { key: got, .. } => assert_eq!(*got, key, "{yaml}: {err}"),
                other => panic!("{yaml}: {other}"),
            }
        }
        for yaml in [
            "extensionLabel: example.com/ext\n",
            "mlPipeline:\n  tokenExpirationSeconds: 600\n",
        ] {
            assert!(Settings::from_yaml(yaml, "c").is_ok(), "{yaml}");
        }
    }

    #[test]
    fn trusted_controllers_default_and_configured() {
        let config = Config::default();
        assert!(config.trusts(Some("system:serviceaccount:kubeflow:katib-controller")));
        assert!(config.trusts(Some("system:serviceaccount:kube-system:job-controller")));
        assert!(!config.trusts(Some("alice@example.com")));
        assert!(!config.trusts(None));
        let settings = Settings::from_yaml("trustedControllers: [admin]\n", "t").unwrap();
        let config = settings.resolve(&Capabilities::modern());
        assert!(config.trusts(Some("admin")));
        assert!(!config.trusts(Some("system:serviceaccount:kubeflow:katib-controller")));
        let err = Settings::from_yaml("trustedControllers: ['']\n", "c")
            .unwrap_err()
            .to_string();
        assert!(err.contains("trustedControllers"), "{err}");
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = Settings::from_yaml("katib:\n  sleepSecs: 3\n", "cfg.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sleepSecs"), "{err}");
        assert!(err.contains("cfg.yaml"), "{err}");
    }

    #[test]
    fn bad_value_is_an_error_naming_the_key() {
        let err = Settings::from_yaml("kfpAccess: cookies\n", "c")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kfpAccess") && err.contains("cookies"),
            "{err}"
        );
        let err = Settings::from_yaml("mlPipeline:\n  port: 0\n", "c")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mlPipeline.port"), "{err}");
    }
}
