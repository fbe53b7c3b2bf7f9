//! Self-managed serving certificates (no certificate files given): one CA and serving
//! certificate for all replicas, kept in a Secret of our namespace; the CA published as the
//! caBundle of our MutatingWebhookConfiguration; the serving certificate renewed well before it
//! expires (see [`crate::certs`]) and picked up by every replica, with no failed admission:
//! the CA, and so the caBundle, stays the same. The same check keeps the workloads webhook's
//! rules to the workload kinds the cluster serves.
//!
//! Replicas starting at once do not fight: the Secret is created with POST (one wins, the
//! others read what it made) and renewed with a resourceVersion precondition (a conflict means
//! another replica renewed it: read again). A Secret of that name we did not make (no
//! `app.kubernetes.io/managed-by: tenancy-fixer` label) is never changed: `serve` stops with
//! an error naming it.

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use axum_server::tls_rustls::RustlsConfig;
use k8s_openapi::{
    ByteString,
    api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Secret},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use time::OffsetDateTime;

use crate::{
    certs::{self, Bundle, Verdict},
    controller,
    istio::{MANAGED_BY, MANAGED_BY_LABEL},
    manifests,
    webhook::tls,
};

/// The Secret's keys.
const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const TLS_CERT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";

/// Attempts to settle the Secret against other replicas before giving up for this round.
const ATTEMPTS: usize = 5;

/// Where and for what the certificates are managed.
#[derive(Clone, Debug)]
pub struct SelfManaged {
    /// Namespace of the Secret (ours).
    pub namespace: String,
    /// The Secret holding the CA and the serving certificate.
    pub secret: String,
    /// The MutatingWebhookConfiguration whose caBundle we keep.
    pub webhook_configuration: String,
    /// Names (DNS names or IP addresses) the serving certificate is for.
    pub names: Vec<String>,
    /// Lifetime of a serving certificate (renewed after two thirds of it).
    pub validity: Duration,
    /// How often the Secret and the caBundle are checked.
    pub check_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CertificatesError {
    #[error(
        "Secret {namespace}/{name} exists and was not made by tenancy-fixer: not touched (remove it, or give --tls-cert/--tls-key)"
    )]
    Foreign { namespace: String, name: String },
    #[error("cannot read or write Secret {namespace}/{name}: {source}")]
    Secret {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot settle {what}: other writers kept changing it")]
    Contended { what: String },
    #[error(transparent)]
    Make(#[from] certs::CertError),
    #[error("the stored certificate does not make a TLS identity: {0}")]
    Identity(#[from] tls::TlsError),
    #[error("cannot update the caBundle of MutatingWebhookConfiguration {name}: {source}")]
    Webhook {
        name: String,
        #[source]
        source: kube::Error,
    },
}

type Result<T, E = CertificatesError> = std::result::Result<T, E>;

/// The Secret's certificates, made or renewed first where needed, ready to serve; the caBundle
/// published. Then [`maintain`] keeps them.
pub async fn start(client: &Client, managed: &SelfManaged) -> Result<(RustlsConfig, Bundle)> {
    let bundle = settle(client, managed).await?;
    let rustls = RustlsConfig::from_config(Arc::new(server_config(&bundle, managed)?));
    keep_webhook_configuration(client, managed, &bundle.ca_cert).await?;
    Ok((rustls, bundle))
}

/// Every [`SelfManaged::check_interval`]: renews the certificate when due (or takes what another
/// replica renewed), reloads `rustls` when it changed, and restores the caBundle if someone
/// changed it. A failed round is logged and retried at the next one: the current certificate
/// keeps serving. Runs until dropped.
pub async fn maintain(
    client: Client,
    managed: SelfManaged,
    rustls: RustlsConfig,
    mut serving: Bundle,
) {
    let mut ticker = tokio::time::interval(managed.check_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate
    loop {
        ticker.tick().await;
        let round = async {
            let bundle = settle(&client, &managed).await?;
            if bundle != serving {
                rustls.reload_from_config(Arc::new(server_config(&bundle, &managed)?));
                tracing::info!(
                    secret = managed.secret,
                    renewal_due = certs::renewal_due(&bundle),
                    "serving the renewed certificate"
                );
            }
            keep_webhook_configuration(&client, &managed, &bundle.ca_cert).await?;
            Ok::<_, CertificatesError>(bundle)
        };
        match round.await {
            Ok(bundle) => serving = bundle,
            Err(error) => {
                tracing::warn!(%error, "certificate check failed; serving the current certificate")
            }
        }
    }
}

fn server_config(bundle: &Bundle, managed: &SelfManaged) -> Result<rustls::ServerConfig> {
    let origin = |key: &str| {
        Path::new("secret")
            .join(&managed.namespace)
            .join(&managed.secret)
            .join(key)
    };
    Ok(tls::server_config(
        bundle.cert.as_bytes(),
        &origin(TLS_CERT),
        bundle.key.as_bytes(),
        &origin(TLS_KEY),
    )?)
}

/// The Secret's bundle once it is good to serve: created when missing, renewed or replaced when
/// [`certs::verdict`] says so, re-read whenever another replica got there first.
async fn settle(client: &Client, managed: &SelfManaged) -> Result<Bundle> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &managed.namespace);
    let secret_error = |source| CertificatesError::Secret {
        namespace: managed.namespace.clone(),
        name: managed.secret.clone(),
        source,
    };
    for _ in 0..ATTEMPTS {
        let now = OffsetDateTime::now_utc();
        let Some(stored) = secrets
            .get_opt(&managed.secret)
            .await
            .map_err(secret_error)?
        else {
            let bundle = certs::new_bundle(&managed.names, now, managed.validity)?;
            match secrets
                .create(&PostParams::default(), &secret(managed, &bundle, None))
                .await
            {
                Ok(_) => {
                    tracing::info!(
                        namespace = managed.namespace,
                        secret = managed.secret,
                        "made the webhook's CA and serving certificate"
                    );
                    return Ok(bundle);
                }
                // Another replica made it: use theirs.
                Err(kube::Error::Api(status)) if status.is_already_exists() => continue,
                Err(error) => return Err(secret_error(error)),
            }
        };
        if stored
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY_LABEL))
            .map(String::as_str)
            != Some(MANAGED_BY)
        {
            return Err(CertificatesError::Foreign {
                namespace: managed.namespace.clone(),
                name: managed.secret.clone(),
            });
        }
        let bundle = bundle_of(&stored);
        let next = match certs::verdict(&bundle, &managed.names, now, managed.validity) {
            Verdict::Fresh => return Ok(bundle),
            Verdict::Renew(why) => {
                tracing::info!(
                    secret = managed.secret,
                    reason = why,
                    "renewing the serving certificate"
                );
                certs::renew(&bundle, &managed.names, now, managed.validity)?
            }
            Verdict::Replace(why) => {
                tracing::warn!(
                    secret = managed.secret,
                    reason = why,
                    "making a new CA: the caBundle changes"
                );
                certs::new_bundle(&managed.names, now, managed.validity)?
            }
        };
        let version = stored.metadata.resource_version.clone();
        match secrets
            .replace(
                &managed.secret,
                &PostParams::default(),
                &secret(managed, &next, version),
            )
            .await
        {
            Ok(_) => return Ok(next),
            // Another replica renewed it (or it went): read again.
            Err(kube::Error::Api(status)) if status.is_conflict() || status.is_not_found() => {
                continue;
            }
            Err(error) => return Err(secret_error(error)),
        }
    }
    Err(CertificatesError::Contended {
        what: format!("Secret {}/{}", managed.namespace, managed.secret),
    })
}

fn bundle_of(secret: &Secret) -> Bundle {
    let text = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|data| data.get(key))
            .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
            .unwrap_or_default()
    };
    Bundle {
        ca_cert: text(CA_CERT),
        ca_key: text(CA_KEY),
        cert: text(TLS_CERT),
        key: text(TLS_KEY),
    }
}

fn secret(managed: &SelfManaged, bundle: &Bundle, resource_version: Option<String>) -> Secret {
    let data = [
        (CA_CERT, &bundle.ca_cert),
        (CA_KEY, &bundle.ca_key),
        (TLS_CERT, &bundle.cert),
        (TLS_KEY, &bundle.key),
    ]
    .into_iter()
    .map(|(key, pem)| (key.to_string(), ByteString(pem.clone().into_bytes())))
    .collect::<BTreeMap<_, _>>();
    Secret {
        metadata: ObjectMeta {
            name: Some(managed.secret.clone()),
            namespace: Some(managed.namespace.clone()),
            labels: Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())].into()),
            resource_version,
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Secret::default()
    }
}

/// Keeps our webhook configuration: `ca` as the caBundle of every webhook, and the workloads
/// webhook's rules limited to the workload kinds the cluster serves (a kind installed later is
/// added at the next check). Written only when something differs. A missing configuration (not
/// installed yet) is logged and tried again at the next check; so is a failed discovery (the
/// rules are then left as they are).
async fn keep_webhook_configuration(
    client: &Client,
    managed: &SelfManaged,
    ca: &str,
) -> Result<()> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let workload_rules = match controller::served_workload_kinds(client).await {
        Ok(kinds) => Some(manifests::workload_rules(&kinds)),
        Err(error) => {
            tracing::warn!(%error, "cannot tell the served workload kinds; webhook rules left as they are");
            None
        }
    };
    let workloads = format!(
        "{}.{}",
        manifests::WORKLOADS_WEBHOOK,
        manifests::WEBHOOK_SUFFIX
    );
    let name = &managed.webhook_configuration;
    let webhook_error = |source| CertificatesError::Webhook {
        name: name.clone(),
        source,
    };
    for _ in 0..ATTEMPTS {
        let Some(mut configuration) = api.get_opt(name).await.map_err(webhook_error)? else {
            tracing::warn!(
                name,
                "MutatingWebhookConfiguration not found: caBundle not published yet"
            );
            return Ok(());
        };
        let mut changed = false;
        for webhook in configuration.webhooks.iter_mut().flatten() {
            let bundle = Some(ByteString(ca.as_bytes().to_vec()));
            if webhook.client_config.ca_bundle != bundle {
                webhook.client_config.ca_bundle = bundle;
                changed = true;
            }
            let served = workload_rules
                .as_ref()
                .filter(|_| webhook.name == workloads);
            if let Some(rules) = served.filter(|rules| webhook.rules.as_ref() != Some(rules)) {
                tracing::info!(
                    name,
                    webhook = webhook.name,
                    rules = rules.len(),
                    "workload rules follow the served kinds"
                );
                webhook.rules = Some(rules.clone());
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
        // `replace` carries the resourceVersion we read: a concurrent change is a conflict.
        match api
            .replace(name, &PostParams::default(), &configuration)
            .await
        {
            Ok(_) => {
                tracing::info!(name, "published the caBundle");
                return Ok(());
            }
            Err(kube::Error::Api(status)) if status.is_conflict() => continue,
            Err(error) => return Err(webhook_error(error)),
        }
    }
    Err(CertificatesError::Contended {
        what: format!("MutatingWebhookConfiguration {name}"),
    })
}
