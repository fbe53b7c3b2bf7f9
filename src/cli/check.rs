//! `check`: reads a cluster, has [`crate::check`] judge it, prints the report (a table, or JSON)
//! and exits 1 when something is a problem.
//!
//! Everything is read with the caller's credentials (cluster-wide reads: an admin's
//! kubeconfig). The webhook is called as the API server calls it: its clientConfig's URL, or its
//! Service at `https://NAME.NAMESPACE.svc:PORT`, which resolves only inside the cluster; from
//! outside, `--webhook-url` names where the Service is reachable (e.g. `kubectl port-forward`),
//! and without it the certificate and the answer are reported as not checked, not as a fault.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Full, Limited};
use k8s_openapi::api::{
    admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration},
    apps::v1::Deployment,
    core::v1::{ConfigMap, Namespace, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, ListParams},
};
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::net::TcpStream;

use super::{CliError, Result, kube_client};
use crate::{
    check::{
        self, Facts, Report, SettingsFacts,
        apis::{self, Api as CheckedApi},
        profiles::{ProfileFacts, ProfilesFacts},
        traps::{self, IstioFacts, KATIB_CONFIG, TrapFacts},
        webhook::{self, Answer, Probe, Reach, ServiceFacts, WebhookFacts},
    },
    config::Settings,
    controller,
    manifests::{CONFIG_KEY, NAME, NAMESPACE, WEBHOOK_CONFIGURATION_NAME},
    model::Profile,
};

/// How the report is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Kubeconfig to reach the cluster with (default: in-cluster config, else KUBECONFIG or ~/.kube/config).
    #[arg(long, value_name = "PATH", env = "TENANCY_FIXER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Settings file to judge by (default: the install's ConfigMap, else the defaults).
    #[arg(long, value_name = "FILE", env = "TENANCY_FIXER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Namespace of the install, whose ConfigMap holds the settings.
    #[arg(long, value_name = "NAMESPACE", default_value = NAMESPACE, env = "TENANCY_FIXER_CHECK_NAMESPACE")]
    pub namespace: String,
    /// Call webhooks that name a Service at this https URL instead (e.g. a kubectl port-forward); the certificate is still verified for the Service's DNS name.
    #[arg(long, value_name = "URL", env = "TENANCY_FIXER_CHECK_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Output format: a table, or JSON (the shape README "Troubleshooting with check" describes).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table, env = "TENANCY_FIXER_CHECK_OUTPUT")]
    pub output: Output,
}

/// At most this much of a webhook's answer is read.
const ANSWER_LIMIT: usize = 1024 * 1024;
/// The API server's default webhook timeout, for a webhook that sets none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl CheckArgs {
    /// The report as printed, and its judgement.
    pub fn run(self) -> Result<(String, Report)> {
        let Self {
            kubeconfig,
            config,
            namespace,
            webhook_url,
            output,
        } = self;
        // A settings file given is read first: a bad one is exit code 2, with no cluster needed.
        let file = match config {
            Some(path) => Some(SettingsFacts {
                source: format!("file {}", path.display()),
                settings: Settings::load(&path)?,
                problem: None,
            }),
            None => None,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(CliError::Runtime)?;
        let facts = runtime.block_on(async {
            let client = kube_client(kubeconfig.as_deref()).await?;
            let settings = match file {
                Some(file) => file,
                None => install_settings(&client, &namespace).await?,
            };
            gather(&client, settings, webhook_url.as_deref()).await
        })?;
        let report = check::judge(&facts);
        let text = match output {
            Output::Table => table(&report),
            Output::Json => {
                let mut json = serde_json::to_string_pretty(&report)
                    .map_err(|e| CliError::Output(e.to_string()))?;
                json.push('\n');
                json
            }
        };
        Ok((text, report))
    }
}

fn read(what: impl Into<String>) -> impl FnOnce(kube::Error) -> CliError {
    let what = what.into();
    move |source| CliError::Read { what, source }
}

/// The settings of the install's ConfigMap, else the defaults.
async fn install_settings(client: &Client, namespace: &str) -> Result<SettingsFacts> {
    let shown = format!("ConfigMap {namespace}/{NAME}");
    let found = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(NAME)
        .await
        .map_err(read(&shown))?;
    let text = found.and_then(|cm| cm.data.and_then(|mut data| data.remove(CONFIG_KEY)));
    Ok(match text {
        None => SettingsFacts {
            source: format!("defaults: no {shown} with {CONFIG_KEY}"),
            settings: Settings::default(),
            problem: None,
        },
        Some(text) => match Settings::from_yaml(&text, &shown) {
            Ok(settings) => SettingsFacts {
                source: shown,
                settings,
                problem: None,
            },
            Err(error) => SettingsFacts {
                source: shown,
                settings: Settings::default(),
                problem: Some(error.to_string()),
            },
        },
    })
}

async fn gather(client: &Client, settings: SettingsFacts, via: Option<&str>) -> Result<Facts> {
    let capabilities = controller::discover(client)
        .await
        .map_err(CliError::Discovery)?;
    let served = controller::served(client, CheckedApi::all().into_iter(), |api| {
        (api.api_version(), api.kind().to_string())
    })
    .await
    .map_err(CliError::Discovery)?;
    let configurations = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(read("MutatingWebhookConfigurations"))?
        .items;
    let ours = configurations
        .iter()
        .find(|c| c.name_any() == WEBHOOK_CONFIGURATION_NAME)
        .cloned();
    let webhooks = ours.iter().flat_map(|c| c.webhooks.iter().flatten());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut probes = Vec::new();
    let mut services = Vec::new();
    for hook in webhooks {
        probes.push(probe(hook, via).await);
        if let Some(service) = &hook.client_config.service
            && !services.iter().any(|s: &ServiceFacts| {
                (&s.namespace, &s.name) == (&service.namespace, &service.name)
            })
        {
            services.push(service_facts(client, &service.namespace, &service.name).await?);
        }
    }
    let config = settings.settings.clone().resolve(&capabilities);
    let profiles = profiles(client, &served, &config.settings.kubeflow_namespace).await?;
    let katib_config =
        Api::<ConfigMap>::namespaced(client.clone(), &config.settings.kubeflow_namespace)
            .get_opt(KATIB_CONFIG)
            .await
            .map_err(read(format!(
                "ConfigMap {}/{KATIB_CONFIG}",
                config.settings.kubeflow_namespace
            )))?
            .map(|cm| cm.data.unwrap_or_default());
    let istio = istio(client, &configurations).await;
    Ok(Facts {
        settings,
        capabilities,
        served,
        webhook: WebhookFacts {
            configuration: ours,
            probes,
            services,
            now,
        },
        profiles,
        traps: TrapFacts {
            configurations,
            katib_config,
            istio,
        },
    })
}

async fn service_facts(client: &Client, namespace: &str, name: &str) -> Result<ServiceFacts> {
    let shown = format!("Service {namespace}/{name}");
    let found = Api::<Service>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(read(&shown))?
        .is_some();
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={name}")))
        .await
        .map_err(read(format!("EndpointSlices of {shown}")))?;
    // An endpoint whose readiness is unknown counts as ready (the EndpointSlice API says so).
    let ready_endpoints = slices
        .items
        .iter()
        .flat_map(|slice| slice.endpoints.iter().flatten())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .count();
    Ok(ServiceFacts {
        namespace: namespace.into(),
        name: name.into(),
        found,
        ready_endpoints,
    })
}

async fn profiles(
    client: &Client,
    served: &[CheckedApi],
    kubeflow_namespace: &str,
) -> Result<ProfilesFacts> {
    if !served.contains(&CheckedApi::Profile) {
        return Ok(ProfilesFacts::default());
    }
    let profiles = Api::<Profile>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(read("Profiles"))?
        .items;
    let namespaces: BTreeMap<String, _> = Api::<Namespace>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await
        .map_err(read("Namespaces"))?
        .items
        .into_iter()
        .map(|ns| (ns.name_any(), ns.metadata))
        .collect();
    let mut objects = Vec::new();
    for kind in apis::managed_kinds(served) {
        let resource = kind.api_resource();
        let listed = Api::<DynamicObject>::all_with(client.clone(), &resource)
            .list(&ListParams::default())
            .await
            .map_err(read(resource.plural.clone()))?;
        objects.extend(listed.items.into_iter().map(|o| (kind, Arc::new(o))));
    }
    Ok(ProfilesFacts {
        profiles: profiles
            .into_iter()
            .map(|profile| ProfileFacts {
                namespace: namespaces.get(&profile.name_any()).cloned(),
                profile,
            })
            .collect(),
        kubeflow_namespace: namespaces.get(kubeflow_namespace).cloned(),
        objects,
    })
}

/// istiod and its injector's values, found through the injector webhook's Service. Optional:
/// whatever cannot be read is left out (the judgement says it cannot tell).
async fn istio(client: &Client, configurations: &[MutatingWebhookConfiguration]) -> IstioFacts {
    let Some(injector) = traps::istio_injector(configurations) else {
        return IstioFacts::default();
    };
    let Some(service) = injector
        .webhooks
        .iter()
        .flatten()
        .find_map(|w| w.client_config.service.as_ref())
    else {
        return IstioFacts::default();
    };
    const INJECTOR_CONFIG_MAP: &str = "istio-sidecar-injector";
    // The injector's configuration and ConfigMap share their name, `-REVISION` included.
    let config_map = Some(injector.name_any())
        .filter(|name| name.starts_with(INJECTOR_CONFIG_MAP))
        .unwrap_or_else(|| INJECTOR_CONFIG_MAP.into());
    let istiod = Api::<Deployment>::namespaced(client.clone(), &service.namespace)
        .get_opt(&service.name)
        .await
        .ok()
        .flatten();
    let injector_values = Api::<ConfigMap>::namespaced(client.clone(), &service.namespace)
        .get_opt(&config_map)
        .await
        .ok()
        .flatten()
        .and_then(|cm| cm.data.and_then(|mut data| data.remove("values")));
    IstioFacts {
        istiod,
        injector_values,
    }
}

/// Calls `hook` as the API server would, reporting how far it got.
async fn probe(hook: &MutatingWebhook, via: Option<&str>) -> Probe {
    let target = match webhook::target(&hook.client_config, via) {
        Ok(target) => target,
        Err(why) => {
            return Probe {
                webhook: hook.name.clone(),
                target: "(no target)".into(),
                reach: Reach::Unreachable(why),
            };
        }
    };
    let timeout = hook
        .timeout_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let reach = match tokio::time::timeout(timeout, reach(&target, via.is_some())).await {
        Ok(reach) => reach,
        Err(_) => Reach::Unreachable(format!("no answer within {}s", timeout.as_secs())),
    };
    Probe {
        webhook: hook.name.clone(),
        target: target.shown,
        reach,
    }
}

async fn reach(target: &webhook::Target, via: bool) -> Reach {
    let addresses = match tokio::net::lookup_host((target.host.as_str(), target.port)).await {
        Ok(addresses) => addresses.collect::<Vec<_>>(),
        Err(_) if target.service && !via => {
            return Reach::NotFromHere {
                host: target.host.clone(),
            };
        }
        Err(error) => return Reach::Unreachable(format!("{}: {error}", target.host)),
    };
    let mut last = String::from("no address");
    let mut stream = None;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(connected) => {
                stream = Some(connected);
                break;
            }
            Err(error) => last = format!("{address}: {error}"),
        }
    }
    let Some(stream) = stream else {
        return Reach::Unreachable(last);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = match rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
        Err(error) => return Reach::Handshake(error.to_string()),
    };
    // As the API server: HTTP/1.1.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let Ok(server_name) = ServerName::try_from(target.server_name.clone()) else {
        return Reach::Handshake(format!("{:?} is not a server name", target.server_name));
    };
    let stream = match tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(server_name, stream)
        .await
    {
        Ok(stream) => stream,
        Err(error) => return Reach::Handshake(error.to_string()),
    };
    let chain = stream
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|c| c.to_vec())
        .collect();
    Reach::Presented {
        server_name: target.server_name.clone(),
        chain,
        answer: ask(stream, target).await,
    }
}

/// POSTs the probe review and reads the answer.
async fn ask(
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    target: &webhook::Target,
) -> Answer {
    let uid = format!(
        "tenancy-fixer-check-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let body = webhook::probe_review(&uid).to_string();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = match hyper::client::conn::http1::handshake(io).await {
        Ok(pair) => pair,
        Err(error) => return Answer::Failed(error.to_string()),
    };
    let connection = tokio::spawn(connection);
    let request = hyper::Request::post(target.path.as_str())
        .header(hyper::header::HOST, &target.server_name)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)));
    let answer = match request {
        Err(error) => Answer::Failed(error.to_string()),
        Ok(request) => match sender.send_request(request).await {
            Err(error) => Answer::Failed(error.to_string()),
            Ok(response) => {
                let status = response.status().as_u16();
                match Limited::new(response.into_body(), ANSWER_LIMIT)
                    .collect()
                    .await
                {
                    Ok(body) => webhook::read_answer(status, &body.to_bytes(), &uid),
                    Err(error) => Answer::Failed(format!("reading the answer: {error}")),
                }
            }
        },
    };
    connection.abort();
    answer
}

/// Accepts any certificate (the handshake's signatures are still verified): the certificate is
/// judged afterwards, against the caBundle, by [`webhook::ca_verdict`].
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The report as tables: APIs, settings, findings (with their fixes), summary.
fn table(report: &Report) -> String {
    let Report {
        settings,
        apis,
        modes,
        findings,
        summary,
    } = report;
    let mut out = String::from("APIs\n");
    out.push_str(&columns(
        &["PROJECT", "API VERSION", "KIND", "SERVED", "USED FOR"],
        apis.iter()
            .map(|a| {
                vec![
                    a.project.to_string(),
                    a.api_version.clone(),
                    a.kind.to_string(),
                    if a.served { "yes" } else { "no" }.to_string(),
                    a.used_for.to_string(),
                ]
            })
            .collect(),
    ));
    out.push_str(&format!("\nSettings (from {settings})\n"));
    out.push_str(&columns(
        &["SETTING", "CONFIGURED", "RESOLVED", "WHY"],
        modes
            .iter()
            .map(|m| {
                vec![
                    m.setting.to_string(),
                    m.configured.clone(),
                    m.resolved.clone(),
                    m.why.clone(),
                ]
            })
            .collect(),
    ));
    out.push_str("\nFindings\n");
    for finding in findings {
        let severity = serde_json::to_value(finding.severity)
            .ok()
            .and_then(|v| v.as_str().map(str::to_uppercase))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {severity:<8} {}  {}\n           {}\n",
            finding.check, finding.subject, finding.what
        ));
        if let Some(fix) = &finding.fix {
            out.push_str(&format!("           fix: {fix}\n"));
        }
    }
    out.push_str(&format!(
        "\n{} error(s), {} warning(s), {} info, {} ok\n",
        summary.errors, summary.warnings, summary.info, summary.ok
    ));
    out
}

/// Left-aligned columns, indented by two spaces, as wide as their widest cell.
fn columns(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("  {}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let text = columns(
            &["A", "BB"],
            vec![
                vec!["long cell".into(), "x".into()],
                vec!["y".into(), "".into()],
            ],
        );
        assert_eq!(text, "  A          BB\n  long cell  x\n  y\n");
    }
}
