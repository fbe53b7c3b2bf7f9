//! Known traps, as far as the cluster shows them:
//! - Katib's metrics collector waiting for every process of the pod (`waitAllProcesses`, true
//!   unless set false) while pods carry an Istio proxy: a trial pod we do not rewrite never
//!   completes (Katib issue 1383);
//! - a webhook adding the containers our pod rules read (Istio's sidecar injector, Katib's pod
//!   webhook) ordered after ours: the API server calls mutating webhook configurations in the
//!   order of their names, and calls an earlier webhook again only when its
//!   `reinvocationPolicy` is `IfNeeded` (k8s.io/apiserver, `MutatingWebhookConfigurationSorter`
//!   and the mutating dispatcher);
//! - Istio injecting its proxy as a native sidecar (istiod's `ENABLE_NATIVE_SIDECARS`, default
//!   true from Istio 1.27).

use std::collections::BTreeMap;

use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration, apps::v1::Deployment,
};
use serde::Deserialize;
use serde_json::Value;

use super::{Finding, Severity};
use crate::{
    config::{Config, yaml_options},
    manifests::{WEBHOOK_CONFIGURATION_NAME, WEBHOOK_SUFFIX},
};

/// What was read for the traps.
#[derive(Clone, Debug, Default)]
pub struct TrapFacts {
    /// Every MutatingWebhookConfiguration, ours included.
    pub configurations: Vec<MutatingWebhookConfiguration>,
    /// The data of Katib's ConfigMap `katib-config` in the Kubeflow namespace, if it exists.
    pub katib_config: Option<BTreeMap<String, String>>,
    pub istio: IstioFacts,
}

/// What was read of the Istio control plane the sidecar injector webhook calls.
#[derive(Clone, Debug, Default)]
pub struct IstioFacts {
    /// The istiod Deployment (named as the injector webhook's Service), if read.
    pub istiod: Option<Deployment>,
    /// The `values` (JSON) of the injector's ConfigMap `istio-sidecar-injector[-REVISION]`.
    pub injector_values: Option<String>,
}

/// Katib's ConfigMap and its key (Katib ≥ 0.16: a KatibConfig YAML document).
pub const KATIB_CONFIG: &str = "katib-config";
pub const KATIB_CONFIG_KEY: &str = "katib-config.yaml";
/// Katib < 0.16: one JSON object, collector kind → settings.
const LEGACY_KATIB_CONFIG_KEY: &str = "metrics-collector-sidecar";
/// Katib's pod webhook (manifests/v1beta1/components/webhook), which adds the collector.
const KATIB_POD_WEBHOOK: &str = "mutator.pod.katib.kubeflow.org";
/// Istio's injector webhooks are `sidecar-injector.istio.io` (old) or `<x>.sidecar-injector.istio.io`.
const ISTIO_INJECTOR: &str = "sidecar-injector.istio.io";
const NATIVE_SIDECARS_ENV: &str = "ENABLE_NATIVE_SIDECARS";
/// The first Istio release whose istiod defaults `ENABLE_NATIVE_SIDECARS` to true.
const NATIVE_BY_DEFAULT: (u32, u32) = (1, 27);

fn is_istio_injector(webhook: &str) -> bool {
    webhook == ISTIO_INJECTOR || webhook.ends_with(&format!(".{ISTIO_INJECTOR}"))
}

/// Is some Istio sidecar injector registered (so that pods may carry a proxy)?
pub fn istio_injector(
    configurations: &[MutatingWebhookConfiguration],
) -> Option<&MutatingWebhookConfiguration> {
    configurations.iter().find(|c| {
        c.webhooks
            .iter()
            .flatten()
            .any(|w| is_istio_injector(&w.name))
    })
}

pub fn findings(facts: &TrapFacts, config: &Config) -> Vec<Finding> {
    let native = native_sidecars(&facts.istio);
    let injector = istio_injector(&facts.configurations).is_some();
    let mut findings = webhook_order(&facts.configurations);
    findings.extend(collectors_waiting(
        facts.katib_config.as_ref(),
        config,
        injector,
        &native,
    ));
    if injector {
        findings.push(native.finding());
    }
    findings
}

const ORDER: &str = "webhook-order";

/// Our pod rules read containers other webhooks add: are those webhooks called before ours, or
/// is ours called again after them?
pub fn webhook_order(configurations: &[MutatingWebhookConfiguration]) -> Vec<Finding> {
    let Some(ours) = configurations
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(WEBHOOK_CONFIGURATION_NAME))
    else {
        return vec![];
    };
    let pods = format!("pods.{WEBHOOK_SUFFIX}");
    let reinvoked = ours
        .webhooks
        .iter()
        .flatten()
        .find(|w| w.name == pods)
        .is_some_and(|w| w.reinvocation_policy.as_deref() == Some("IfNeeded"));
    let mut findings = Vec::new();
    for configuration in configurations {
        let name = configuration.metadata.name.as_deref().unwrap_or_default();
        let webhooks: Vec<&str> = configuration
            .webhooks
            .iter()
            .flatten()
            .map(|w| w.name.as_str())
            .collect();
        let adds = if webhooks.iter().any(|w| is_istio_injector(w)) {
            "Istio's sidecar injector (adds istio-proxy)"
        } else if webhooks.contains(&KATIB_POD_WEBHOOK) {
            "Katib's pod webhook (adds the metrics collector)"
        } else {
            continue;
        };
        let subject = format!("MutatingWebhookConfiguration {name}");
        // The API server sorts configurations by name, byte by byte (Go's string order).
        findings.push(if name < WEBHOOK_CONFIGURATION_NAME {
            Finding::ok(
                ORDER,
                subject,
                format!("{adds} runs before {WEBHOOK_CONFIGURATION_NAME}: pods reach us with its containers"),
            )
        } else if reinvoked {
            Finding::info(
                ORDER,
                subject,
                format!(
                    "{adds} runs after {WEBHOOK_CONFIGURATION_NAME} ({name:?} sorts after \
                     {WEBHOOK_CONFIGURATION_NAME:?}): the API server calls {pods} again once it \
                     has changed the pod (reinvocationPolicy IfNeeded)"
                ),
            )
        } else {
            Finding::problem(
                Severity::Error,
                ORDER,
                subject,
                format!(
                    "{adds} runs after {WEBHOOK_CONFIGURATION_NAME} ({name:?} sorts after \
                     {WEBHOOK_CONFIGURATION_NAME:?}) and {pods} is not called again \
                     (reinvocationPolicy is not IfNeeded): trial pods are never rewritten"
                ),
                format!("set reinvocationPolicy: IfNeeded on {pods} (the install does)"),
            )
        });
    }
    findings
}

/// How one collector kind is configured to wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collector {
    pub kind: String,
    /// `waitAllProcesses`; unset means Katib passes no `-w` and the collector waits (its default).
    pub wait_all_processes: Option<bool>,
}

impl Collector {
    fn waits(&self) -> bool {
        self.wait_all_processes != Some(false)
    }
}

/// The metrics collectors Katib's ConfigMap configures.
pub fn katib_collectors(data: &BTreeMap<String, String>) -> Result<Vec<Collector>, String> {
    #[derive(Deserialize)]
    struct KatibConfig {
        #[serde(default)]
        runtime: Runtime,
    }
    #[derive(Default, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Runtime {
        #[serde(default)]
        metrics_collectors: Vec<CollectorConfig>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct CollectorConfig {
        #[serde(default)]
        kind: String,
        wait_all_processes: Option<bool>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct LegacyCollectorConfig {
        wait_all_processes: Option<bool>,
    }
    if let Some(text) = data.get(KATIB_CONFIG_KEY) {
        let config: KatibConfig = serde_saphyr::from_str_with_options(text, yaml_options())
            .map_err(|e| format!("{KATIB_CONFIG_KEY}: {e}"))?;
        return Ok(config
            .runtime
            .metrics_collectors
            .into_iter()
            .map(|c| Collector {
                kind: c.kind,
                wait_all_processes: c.wait_all_processes,
            })
            .collect());
    }
    if let Some(text) = data.get(LEGACY_KATIB_CONFIG_KEY) {
        let kinds: BTreeMap<String, LegacyCollectorConfig> =
            serde_json::from_str(text).map_err(|e| format!("{LEGACY_KATIB_CONFIG_KEY}: {e}"))?;
        return Ok(kinds
            .into_iter()
            .map(|(kind, c)| Collector {
                kind,
                wait_all_processes: c.wait_all_processes,
            })
            .collect());
    }
    Err(format!(
        "neither {KATIB_CONFIG_KEY} nor {LEGACY_KATIB_CONFIG_KEY} in it"
    ))
}

const COLLECTOR: &str = "katib-collector-waits";

/// Do Katib's collectors wait for every process while pods may carry an Istio proxy?
pub fn collectors_waiting(
    katib_config: Option<&BTreeMap<String, String>>,
    config: &Config,
    istio_injector: bool,
    native: &NativeSidecars,
) -> Vec<Finding> {
    let namespace = &config.settings.kubeflow_namespace;
    let subject = format!("ConfigMap {namespace}/{KATIB_CONFIG}");
    let Some(data) = katib_config else {
        return vec![Finding::info(
            COLLECTOR,
            subject,
            "not found: Katib is not installed in this namespace",
        )];
    };
    let collectors = match katib_collectors(data) {
        Ok(collectors) => collectors,
        Err(error) => {
            return vec![Finding::problem(
                Severity::Warning,
                COLLECTOR,
                subject,
                format!("cannot be read ({error}): Katib cannot read it either"),
                "compare it with Katib's manifests (KatibConfig, runtime.metricsCollectors)",
            )];
        }
    };
    let waiting: Vec<String> = collectors
        .iter()
        .filter(|c| c.waits())
        .map(|c| match c.wait_all_processes {
            Some(_) => format!("{} (waitAllProcesses: true)", c.kind),
            None => format!(
                "{} (waitAllProcesses unset: the collector's default, true)",
                c.kind
            ),
        })
        .collect();
    if waiting.is_empty() {
        return vec![Finding::ok(
            COLLECTOR,
            subject,
            "no metrics collector waits for all processes",
        )];
    }
    if !istio_injector {
        return vec![Finding::ok(
            COLLECTOR,
            subject,
            format!(
                "{} wait for all processes, but no Istio sidecar injector is registered: no \
                 proxy to wait for",
                waiting.join(", ")
            ),
        )];
    }
    let proxy = match native {
        NativeSidecars::Enabled(_) => {
            "an Istio proxy (a native sidecar, which stops only after them)"
        }
        _ => "an Istio proxy",
    };
    vec![Finding::problem(
        Severity::Warning,
        COLLECTOR,
        subject,
        format!(
            "the collectors {} wait for every process of the pod, and pods get {proxy}: a trial \
             pod tenancy-fixer does not rewrite (webhook down under failurePolicy Ignore, the \
             Kubeflow or an excluded namespace, no {} label) never completes (Katib issue 1383)",
            waiting.join(", "),
            config.settings.extension_label
        ),
        format!(
            "set waitAllProcesses: false on every runtime.metricsCollectors entry of {KATIB_CONFIG_KEY} \
             (kubectl -n {namespace} edit configmap {KATIB_CONFIG})"
        ),
    )]
}

/// Does Istio inject its proxy as a native sidecar (an init container, restartPolicy Always)?
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NativeSidecars {
    Enabled(String),
    Disabled(String),
    Unknown,
}

impl NativeSidecars {
    fn finding(&self) -> Finding {
        const CHECK: &str = "istio-native-sidecars";
        const SUBJECT: &str = "Istio sidecar injector";
        match self {
            NativeSidecars::Enabled(why) => Finding::info(
                CHECK,
                SUBJECT,
                format!(
                    "istio-proxy is injected as a native sidecar ({why}): it starts first and \
                     stops last by itself; tenancy-fixer only sets -w false on Katib's collector"
                ),
            ),
            NativeSidecars::Disabled(why) => Finding::info(
                CHECK,
                SUBJECT,
                format!(
                    "istio-proxy is injected as a classic sidecar ({why}): tenancy-fixer makes \
                     trial pods wait for it and stop it"
                ),
            ),
            NativeSidecars::Unknown => Finding::info(
                CHECK,
                SUBJECT,
                "cannot tell whether istio-proxy is injected as a native sidecar (istiod and its \
                 injector ConfigMap not readable): tenancy-fixer handles both",
            ),
        }
    }
}

/// Go's `strconv.ParseBool`, which Istio's `env.Register` uses.
fn go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `major.minor` of an Istio version or image tag (`1.29.0`, `1.29.0-distroless`).
fn version_of(tag: &str) -> Option<(u32, u32)> {
    let mut parts = tag.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Decides from istiod's environment, else the injector's values, else Istio's version.
pub fn native_sidecars(istio: &IstioFacts) -> NativeSidecars {
    let container = istio
        .istiod
        .as_ref()
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| {
            s.containers
                .iter()
                .find(|c| c.name == "discovery")
                .or(s.containers.first())
        });
    let env = container
        .and_then(|c| c.env.as_ref())
        .and_then(|env| env.iter().find(|e| e.name == NATIVE_SIDECARS_ENV))
        .and_then(|e| e.value.as_deref());
    if let Some(enabled) = env.and_then(go_bool) {
        return decided(
            enabled,
            format!("istiod {NATIVE_SIDECARS_ENV}={}", env.unwrap_or_default()),
        );
    }
    let values: Option<Value> = istio
        .injector_values
        .as_deref()
        .and_then(|v| serde_json::from_str(v).ok());
    let value_env = values
        .as_ref()
        .map(|v| &v["pilot"]["env"][NATIVE_SIDECARS_ENV])
        .and_then(|v| match v {
            Value::Bool(b) => Some(*b),
            Value::String(s) => go_bool(s),
            _ => None,
        });
    if let Some(enabled) = value_env {
        return decided(
            enabled,
            format!("the injector's values pilot.env.{NATIVE_SIDECARS_ENV}={enabled}"),
        );
    }
    let image_tag = container
        .and_then(|c| c.image.as_deref())
        .and_then(|image| image.rsplit('/').next())
        .and_then(|name| name.split_once(':'))
        .map(|(_, tag)| tag.to_string());
    let values_tag = values
        .as_ref()
        .and_then(|v| v["global"]["tag"].as_str().map(str::to_string));
    match image_tag
        .or(values_tag)
        .as_deref()
        .and_then(|tag| version_of(tag).map(|v| (tag.to_string(), v)))
    {
        Some((tag, version)) => decided(
            version >= NATIVE_BY_DEFAULT,
            format!("Istio {tag}'s default, {NATIVE_SIDECARS_ENV} unset"),
        ),
        None => NativeSidecars::Unknown,
    }
}

fn decided(enabled: bool, why: String) -> NativeSidecars {
    if enabled {
        NativeSidecars::Enabled(why)
    } else {
        NativeSidecars::Disabled(why)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhook;
    use serde_json::json;

    use super::*;
    use crate::testing::config;

    fn configuration(
        name: &str,
        webhooks: &[(&str, Option<&str>)],
    ) -> MutatingWebhookConfiguration {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "webhooks": webhooks.iter().map(|(w, reinvocation)| {
                let mut hook = serde_json::to_value(MutatingWebhook {
                    name: w.to_string(),
                    admission_review_versions: vec!["v1".into()],
                    side_effects: "None".into(),
                    reinvocation_policy: reinvocation.map(str::to_string),
                    ..MutatingWebhook::default()
                }).unwrap();
                hook["clientConfig"] = json!({});
                hook
            }).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn ours(reinvocation: Option<&str>) -> MutatingWebhookConfiguration {
        configuration(
            "tenancy-fixer",
            &[
                ("pods.tenancy-fixer.kubeflow.org", reinvocation),
                ("jobs.tenancy-fixer.kubeflow.org", Some("IfNeeded")),
            ],
        )
    }

    fn order(configurations: &[MutatingWebhookConfiguration]) -> Vec<(Severity, String)> {
        webhook_order(configurations)
            .into_iter()
            .map(|f| (f.severity, f.subject))
            .collect()
    }

    #[test]
    fn injectors_named_before_ours_run_first() {
        let found = order(&[
            configuration(
                "istio-sidecar-injector",
                &[("rev.namespace.sidecar-injector.istio.io", None)],
            ),
            configuration(
                "katib.kubeflow.org",
                &[
                    ("defaulter.experiment.katib.kubeflow.org", None),
                    (KATIB_POD_WEBHOOK, None),
                ],
            ),
            configuration("cert-manager-webhook", &[("webhook.cert-manager.io", None)]),
            ours(None),
        ]);
        assert_eq!(
            found,
            [
                (
                    Severity::Ok,
                    "MutatingWebhookConfiguration istio-sidecar-injector".into()
                ),
                (
                    Severity::Ok,
                    "MutatingWebhookConfiguration katib.kubeflow.org".into()
                ),
            ]
        );
    }

    #[test]
    fn injectors_named_after_ours_need_our_reinvocation() {
        let late = [
            configuration("zz-istio", &[("sidecar-injector.istio.io", None)]),
            // Byte order: "tenancy-fixer" < "tenancy-fixer-katib".
            configuration("tenancy-fixer-katib", &[(KATIB_POD_WEBHOOK, None)]),
        ];
        let mut with_reinvocation = late.to_vec();
        with_reinvocation.push(ours(Some("IfNeeded")));
        assert_eq!(
            order(&with_reinvocation)
                .iter()
                .map(|f| f.0)
                .collect::<Vec<_>>(),
            [Severity::Info, Severity::Info]
        );
        for policy in [None, Some("Never")] {
            let mut without = late.to_vec();
            without.push(ours(policy));
            let found = webhook_order(&without);
            assert!(
                found.iter().all(|f| f.severity == Severity::Error),
                "{policy:?}: {found:?}"
            );
            assert!(
                found[0].what.contains("never rewritten"),
                "{}",
                found[0].what
            );
            assert!(found[0].fix.as_deref().unwrap().contains("IfNeeded"));
        }
        // Capital letters sort before lower case, as in Go.
        let upper = [
            configuration("Z-istio", &[("sidecar-injector.istio.io", None)]),
            ours(None),
        ];
        assert_eq!(order(&upper)[0].0, Severity::Ok);
    }

    #[test]
    fn no_order_without_our_configuration() {
        let found = order(&[configuration(
            "zz-istio",
            &[("sidecar-injector.istio.io", None)],
        )]);
        assert!(found.is_empty());
        assert!(
            istio_injector(&[configuration(
                "x",
                &[("sidecar-injector.istio.io.evil", None)]
            )])
            .is_none()
        );
        assert!(
            istio_injector(&[configuration(
                "x",
                &[("object.sidecar-injector.istio.io", None)]
            )])
            .is_some()
        );
    }

    fn data(key: &str, text: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(key.to_string(), text.to_string())])
    }

    /// Katib v0.19's manifests/v1beta1/installs/katib-standalone/katib-config.yaml, collectors only.
    const KATIB_0_19: &str = r#"
apiVersion: config.kubeflow.org/v1beta1
kind: KatibConfig
init:
  controller:
    webhookPort: 8443
    trialResources:
      - Job.v1.batch
runtime:
  metricsCollectors:
    - kind: StdOut
      image: ghcr.io/kubeflow/katib/file-metrics-collector:v0.19.0
    - kind: File
      image: ghcr.io/kubeflow/katib/file-metrics-collector:v0.19.0
      waitAllProcesses: false
    - kind: TensorFlowEvent
      image: ghcr.io/kubeflow/katib/tfevent-metrics-collector:v0.19.0
      waitAllProcesses: true
      resources:
        limits:
          memory: 1Gi
  suggestions:
    - algorithmName: random
      image: ghcr.io/kubeflow/katib/suggestion-hyperopt:v0.19.0
"#;

    #[test]
    fn katib_configs_of_both_generations_are_read() {
        assert_eq!(
            katib_collectors(&data(KATIB_CONFIG_KEY, KATIB_0_19)).unwrap(),
            [
                Collector {
                    kind: "StdOut".into(),
                    wait_all_processes: None
                },
                Collector {
                    kind: "File".into(),
                    wait_all_processes: Some(false)
                },
                Collector {
                    kind: "TensorFlowEvent".into(),
                    wait_all_processes: Some(true)
                },
            ]
        );
        let legacy =
            r#"{"StdOut": {"image": "x"}, "File": {"image": "y", "waitAllProcesses": false}}"#;
        assert_eq!(
            katib_collectors(&data(LEGACY_KATIB_CONFIG_KEY, legacy)).unwrap(),
            [
                Collector {
                    kind: "File".into(),
                    wait_all_processes: Some(false)
                },
                Collector {
                    kind: "StdOut".into(),
                    wait_all_processes: None
                },
            ]
        );
        assert!(
            katib_collectors(&data("other", ""))
                .unwrap_err()
                .contains("neither")
        );
        assert!(katib_collectors(&data(KATIB_CONFIG_KEY, "runtime: [")).is_err());
        assert!(katib_collectors(&data(LEGACY_KATIB_CONFIG_KEY, "{")).is_err());
    }

    fn waiting(
        config: Option<&BTreeMap<String, String>>,
        injector: bool,
        native: &NativeSidecars,
    ) -> Vec<(Severity, String)> {
        collectors_waiting(config, &crate::testing::config(""), injector, native)
            .into_iter()
            .map(|f| (f.severity, f.what))
            .collect()
    }

    #[test]
    fn waiting_collectors_are_a_warning_only_where_pods_get_a_proxy() {
        let katib = data(KATIB_CONFIG_KEY, KATIB_0_19);
        let found = waiting(Some(&katib), true, &NativeSidecars::Unknown);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, Severity::Warning);
        assert!(
            found[0].1.contains("StdOut (waitAllProcesses unset: the collector's default, true), TensorFlowEvent (waitAllProcesses: true)"),
            "{}",
            found[0].1
        );
        assert!(!found[0].1.contains("File"), "{}", found[0].1);
        let native = waiting(Some(&katib), true, &NativeSidecars::Enabled("x".into()));
        assert!(native[0].1.contains("native sidecar"), "{}", native[0].1);
        let kf = config("kubeflowNamespace: kf\nextensionLabel: ext");
        let fix = &collectors_waiting(Some(&katib), &kf, true, &NativeSidecars::Unknown)[0];
        assert!(fix.what.contains("no ext label"), "{}", fix.what);
        assert!(
            fix.fix
                .as_deref()
                .unwrap()
                .contains("kubectl -n kf edit configmap katib-config")
        );
        assert_eq!(fix.subject, "ConfigMap kf/katib-config");

        assert_eq!(
            waiting(Some(&katib), false, &NativeSidecars::Unknown)[0].0,
            Severity::Ok
        );
        let none_wait = data(
            KATIB_CONFIG_KEY,
            "runtime:\n  metricsCollectors:\n  - kind: StdOut\n    waitAllProcesses: false\n",
        );
        assert_eq!(
            waiting(Some(&none_wait), true, &NativeSidecars::Unknown)[0].0,
            Severity::Ok
        );
        assert_eq!(
            waiting(None, true, &NativeSidecars::Unknown)[0].0,
            Severity::Info
        );
        let broken = data(KATIB_CONFIG_KEY, "runtime: [");
        assert_eq!(
            waiting(Some(&broken), true, &NativeSidecars::Unknown)[0].0,
            Severity::Warning
        );
    }

    fn istiod(image: &str, env: Option<&str>) -> Deployment {
        let env = env
            .map(|v| json!([{"name": NATIVE_SIDECARS_ENV, "value": v}]))
            .unwrap_or(json!([]));
        serde_json::from_value(json!({
            "metadata": {"name": "istiod", "namespace": "istio-system"},
            "spec": {
                "selector": {},
                "template": {"spec": {"containers": [{"name": "discovery", "image": image, "env": env}]}},
            },
        }))
        .unwrap()
    }

    fn native(istiod_: Option<Deployment>, values: Option<Value>) -> NativeSidecars {
        native_sidecars(&IstioFacts {
            istiod: istiod_,
            injector_values: values.map(|v| v.to_string()),
        })
    }

    #[test]
    fn native_sidecars_from_istiod_then_values_then_version() {
        let enabled = |n: &NativeSidecars| matches!(n, NativeSidecars::Enabled(_));
        let disabled = |n: &NativeSidecars| matches!(n, NativeSidecars::Disabled(_));
        let image = "docker.io/istio/pilot:1.24.2";
        assert!(enabled(&native(Some(istiod(image, Some("true"))), None)));
        assert!(enabled(&native(Some(istiod(image, Some("1"))), None)));
        assert!(disabled(&native(
            Some(istiod("docker.io/istio/pilot:1.29.0", Some("False"))),
            None
        )));
        // Unparsable env: the values decide.
        let values =
            json!({"pilot": {"env": {NATIVE_SIDECARS_ENV: "true"}}, "global": {"tag": "1.20.0"}});
        assert!(enabled(&native(
            Some(istiod(image, Some("maybe"))),
            Some(values)
        )));
        assert!(enabled(&native(
            None,
            Some(json!({"pilot": {"env": {NATIVE_SIDECARS_ENV: true}}}))
        )));
        // Unset: the version's default.
        assert!(disabled(&native(Some(istiod(image, None)), None)));
        assert_eq!(
            native(
                Some(istiod(
                    "registry.local:5000/istio/pilot:1.27.0-distroless",
                    None
                )),
                None
            ),
            NativeSidecars::Enabled(format!(
                "Istio 1.27.0-distroless's default, {NATIVE_SIDECARS_ENV} unset"
            ))
        );
        assert!(enabled(&native(
            None,
            Some(json!({"global": {"tag": "1.29.1"}}))
        )));
        assert!(disabled(&native(
            None,
            Some(json!({"global": {"tag": "1.26.3"}}))
        )));
        assert_eq!(
            native(None, Some(json!({"global": {"tag": "latest"}}))),
            NativeSidecars::Unknown
        );
        assert_eq!(native(None, None), NativeSidecars::Unknown);
    }

    #[test]
    fn native_sidecars_are_reported_only_with_an_injector() {
        let mut facts = TrapFacts {
            configurations: vec![ours(Some("IfNeeded"))],
            katib_config: None,
            istio: IstioFacts::default(),
        };
        let checks = |facts: &TrapFacts| -> Vec<&'static str> {
            findings(facts, &config(""))
                .into_iter()
                .map(|f| f.check)
                .collect()
        };
        assert_eq!(checks(&facts), [COLLECTOR]);
        facts.configurations.insert(
            0,
            configuration(
                "istio-sidecar-injector",
                &[("namespace.sidecar-injector.istio.io", None)],
            ),
        );
        assert_eq!(checks(&facts), [ORDER, COLLECTOR, "istio-native-sidecars"]);
    }
}
