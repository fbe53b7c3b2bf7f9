//! How the API server is told to call us: the MutatingWebhookConfiguration.
//!
//! One webhook per behaviour, each on its own path, all CREATE-only, `sideEffects: None`,
//! `reinvocationPolicy: IfNeeded` (so we see the pod again after the Istio injector), a short
//! timeout and a namespaceSelector that keeps the excluded namespaces out. The configuration's
//! name sorts after `istio-sidecar-injector`, so the injector usually runs first.

use k8s_openapi::{
    ByteString,
    api::admissionregistration::v1::{
        MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
        WebhookClientConfig,
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta},
};

use crate::{config::Config, policy::TRIAL_GROUP};

pub const WEBHOOK_CONFIGURATION_NAME: &str = "tenancy-fixer";

/// Where the API server reaches the webhook.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// In-cluster: a Service in front of the Deployment.
    Service { namespace: String, name: String, port: i32 },
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
    let webhook = |name: &str, path: &str, group: &str, versions: &[&str], resource: &str| {
        let client_config = match endpoint {
            Endpoint::Service { namespace, name, port } => WebhookClientConfig {
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
            name: format!("{name}.tenancy-fixer.kubeflow.org"),
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
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![group.into()]),
                api_versions: Some(versions.iter().map(|v| v.to_string()).collect()),
                operations: Some(vec!["CREATE".into()]),
                resources: Some(vec![resource.into()]),
                scope: Some("Namespaced".into()),
            }]),
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
                [(crate::istio::MANAGED_BY_LABEL.to_string(), crate::istio::MANAGED_BY.to_string())].into(),
            ),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![
            webhook("pods", "/mutate/pods", "", &["v1"], "pods"),
            webhook("jobs", "/mutate/jobs", "batch", &["v1"], "jobs"),
            webhook("trials", "/mutate/trials", TRIAL_GROUP, &["v1beta1", "v1alpha3"], "trials"),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let urls: Vec<_> = hooks.iter().map(|h| h.client_config.url.clone().unwrap()).collect();
        assert_eq!(
            urls,
            [
                "https://127.0.0.1:8443/mutate/pods",
                "https://127.0.0.1:8443/mutate/jobs",
                "https://127.0.0.1:8443/mutate/trials"
            ]
        );
        for hook in &hooks {
            assert_eq!(hook.side_effects, "None");
            assert_eq!(hook.failure_policy.as_deref(), Some("Ignore"));
            assert_eq!(hook.reinvocation_policy.as_deref(), Some("IfNeeded"));
            assert_eq!(hook.rules.as_ref().unwrap()[0].operations, Some(vec!["CREATE".to_string()]));
            let excluded = &hook.namespace_selector.as_ref().unwrap().match_expressions.as_ref().unwrap()[0];
            assert_eq!(excluded.operator, "NotIn");
            assert!(excluded.values.as_ref().unwrap().contains(&"kube-system".to_string()));
        }
        assert_eq!(
            hooks[2].rules.as_ref().unwrap()[0].api_versions,
            Some(vec!["v1beta1".to_string(), "v1alpha3".to_string()])
        );
    }
}
