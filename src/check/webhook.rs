//! Is our webhook registered, does its caBundle trust the certificate its endpoint presents, and
//! does the endpoint answer a review as the API server expects?
//!
//! The certificate is judged here, after the handshake, the way the API server's TLS client
//! would (the caBundle as the only root, the server name it would ask for): the prober accepts
//! any certificate, so that a caBundle fault and an answering fault are told apart.

use std::sync::Arc;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, WebhookClientConfig,
};
use rustls::{
    CertificateError,
    client::{WebPkiServerVerifier, danger::ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use serde_json::Value;

use super::{Finding, Severity, merge_subjects};
use crate::{
    config::Config,
    manifests::{self, Endpoint, FailurePolicy, WEBHOOK_CONFIGURATION_NAME},
};

/// What was read about our webhook.
#[derive(Clone, Debug, Default)]
pub struct WebhookFacts {
    /// Our MutatingWebhookConfiguration, if registered.
    pub configuration: Option<MutatingWebhookConfiguration>,
    /// One per webhook of the configuration, in its order.
    pub probes: Vec<Probe>,
    /// The Services the webhooks name, each once.
    pub services: Vec<ServiceFacts>,
    /// When the probes ran (Unix seconds): certificates are judged valid or not at this time.
    pub now: u64,
}

/// Calling one webhook as the API server would.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The webhook's name.
    pub webhook: String,
    /// Where it was called, as shown (`https://…/path`).
    pub target: String,
    pub reach: Reach,
}

/// How far the call went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    /// A Service's DNS name that does not resolve from here (outside the cluster), and no
    /// `--webhook-url` was given.
    NotFromHere { host: String },
    /// No TCP connection (refused, timed out, name unknown).
    Unreachable(String),
    /// Connected, but no TLS handshake (not TLS, no certificate, timed out).
    Handshake(String),
    /// The endpoint presented `chain` (DER, leaf first) when asked for `server_name`.
    Presented {
        server_name: String,
        chain: Vec<Vec<u8>>,
        answer: Answer,
    },
}

/// What the endpoint answered to a review.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// An AdmissionReview response; is its uid ours, does it allow?
    Review { uid_echoed: bool, allowed: bool },
    /// HTTP status other than 200.
    Status(u16),
    /// 200, but not an AdmissionReview response (why).
    NotAReview(String),
    /// The request failed after the handshake (why).
    Failed(String),
}

/// A Service a webhook's clientConfig names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceFacts {
    pub namespace: String,
    pub name: String,
    pub found: bool,
    /// Endpoints of its EndpointSlices that are ready.
    pub ready_endpoints: usize,
}

/// Where to call a webhook, as the API server would, from here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Host and port to connect to.
    pub host: String,
    pub port: u16,
    /// The name the certificate must be valid for (the API server's TLS server name).
    pub server_name: String,
    /// Path and query of the request.
    pub path: String,
    /// The clientConfig names a Service (reached at `via`, if given).
    pub service: bool,
    /// As shown in findings.
    pub shown: String,
}

/// The target of `client_config`: its URL, or its Service at `https://NAME.NAMESPACE.svc:PORT`
/// (the API server's service resolver and TLS server name), connected to at `via` when given
/// (e.g. a `kubectl port-forward` of the Service).
pub fn target(client_config: &WebhookClientConfig, via: Option<&str>) -> Result<Target, String> {
    let https = |url: &str| -> Result<(String, u16, String), String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("{url:?} is not an https URL"));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("{url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let path = uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string());
        Ok((host, uri.port_u16().unwrap_or(443), path))
    };
    match (&client_config.url, &client_config.service) {
        (Some(url), _) => {
            let (host, port, path) = https(url)?;
            Ok(Target {
                server_name: host.clone(),
                host,
                port,
                path,
                service: false,
                shown: url.clone(),
            })
        }
        (None, Some(service)) => {
            let server_name = format!("{}.{}.svc", service.name, service.namespace);
            let port = service.port.map_or(Ok(443), u16::try_from).map_err(|_| {
                format!(
                    "port {:?} of Service {server_name} is out of range",
                    service.port
                )
            })?;
            let path = service.path.clone().unwrap_or_else(|| "/".into());
            let shown = format!("https://{server_name}:{port}{path}");
            let (host, port, shown) = match via {
                Some(via) => {
                    let (host, port, _) = https(via)?;
                    let shown = format!("{shown} via {}", via.trim_end_matches('/'));
                    (host, port, shown)
                }
                None => (server_name.clone(), port, shown),
            };
            Ok(Target {
                host,
                port,
                server_name,
                path,
                service: true,
                shown,
            })
        }
        (None, None) => Err("the clientConfig names neither a URL nor a Service".into()),
    }
}

/// The review the probe sends: a plain pod's CREATE as a dry run, which any of our webhooks
/// answers allowed and unchanged.
pub fn probe_review(uid: &str) -> Value {
    let gvk = serde_json::json!({"group": "", "version": "v1", "kind": "Pod"});
    let gvr = serde_json::json!({"group": "", "version": "v1", "resource": "pods"});
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": gvk, "requestKind": gvk,
            "resource": gvr, "requestResource": gvr,
            "name": "tenancy-fixer-check",
            "namespace": "tenancy-fixer-check",
            "operation": "CREATE",
            "userInfo": {"username": "tenancy-fixer-check"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "tenancy-fixer-check", "namespace": "tenancy-fixer-check"},
                "spec": {"containers": [{"name": "check", "image": "check"}]},
            },
            "oldObject": null,
            "dryRun": true,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    })
}

/// Reads the HTTP answer to the review with `uid` the way the API server does.
pub fn read_answer(status: u16, body: &[u8], uid: &str) -> Answer {
    if status != 200 {
        return Answer::Status(status);
    }
    let review: Value = match serde_json::from_slice(body) {
        Ok(review) => review,
        Err(error) => return Answer::NotAReview(format!("not JSON: {error}")),
    };
    let response = &review["response"];
    if review["kind"] != "AdmissionReview" || !response.is_object() {
        return Answer::NotAReview("no AdmissionReview with a response".into());
    }
    Answer::Review {
        uid_echoed: response["uid"] == uid,
        allowed: response["allowed"] == true,
    }
}

/// Does the caBundle trust the presented certificate?
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaVerdict {
    Trusted,
    /// Not signed by a CA of the caBundle.
    OtherCa,
    /// Signed by it, but not for the name the API server asks for.
    WrongName,
    Expired,
    NotYetValid,
    NoCaBundle,
    /// The caBundle holds no usable PEM certificate (why).
    UnusableCaBundle(String),
    /// Refused for another reason (why).
    Refused(String),
}

/// Verifies `chain` (leaf first) for `server_name` at `now` with the caBundle as the only root,
/// as the API server's TLS client does.
pub fn ca_verdict(ca_bundle: &[u8], chain: &[Vec<u8>], server_name: &str, now: u64) -> CaVerdict {
    if ca_bundle.iter().all(u8::is_ascii_whitespace) {
        return CaVerdict::NoCaBundle;
    }
    let mut roots = rustls::RootCertStore::empty();
    let certificates: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(ca_bundle).collect();
    match certificates {
        Err(error) => return CaVerdict::UnusableCaBundle(format!("not PEM: {error}")),
        Ok(certificates) => {
            let (_, refused) = roots.add_parsable_certificates(certificates);
            if roots.is_empty() {
                return CaVerdict::UnusableCaBundle(format!(
                    "no X.509 CA certificate in it ({refused} refused)"
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        match WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build() {
            Ok(verifier) => verifier,
            Err(error) => return CaVerdict::UnusableCaBundle(error.to_string()),
        };
    let Some((leaf, intermediates)) = chain.split_first() else {
        return CaVerdict::Refused("no certificate presented".into());
    };
    let Ok(name) = ServerName::try_from(server_name.to_string()) else {
        return CaVerdict::Refused(format!("{server_name:?} is not a server name"));
    };
    let intermediates: Vec<CertificateDer> = intermediates
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now));
    let leaf = CertificateDer::from(leaf.clone());
    match verifier.verify_server_cert(&leaf, &intermediates, &name, &[], now) {
        Ok(_) => CaVerdict::Trusted,
        Err(rustls::Error::InvalidCertificate(error)) => match error {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => CaVerdict::OtherCa,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                CaVerdict::WrongName
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                CaVerdict::Expired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                CaVerdict::NotYetValid
            }
            other => CaVerdict::Refused(format!("{other:?}")),
        },
        Err(other) => CaVerdict::Refused(other.to_string()),
    }
}

/// The webhooks an install registers, by name.
fn expected_webhooks(config: &Config) -> Vec<String> {
    let expected = manifests::webhook_configuration(
        &Endpoint::Url("https://127.0.0.1".into()),
        b"",
        FailurePolicy::Ignore,
        config,
    );
    expected
        .webhooks
        .into_iter()
        .flatten()
        .map(|w| w.name)
        .collect()
}

const REGISTERED: &str = "webhook-registered";
const CA_BUNDLE: &str = "webhook-ca-bundle";
const ANSWERS: &str = "webhook-answers";
const SERVICE: &str = "webhook-service";
const APPLY_INSTALL: &str =
    "kubectl apply -k deploy/ (or tenancy-fixer manifests --image IMAGE | kubectl apply -f -)";

/// Everything about our webhook.
pub fn findings(facts: &WebhookFacts, config: &Config) -> Vec<Finding> {
    let subject = format!("MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION_NAME}");
    let Some(configuration) = &facts.configuration else {
        return vec![Finding::problem(
            Severity::Error,
            REGISTERED,
            subject,
            "not registered: the API server calls no tenancy-fixer webhook, so pods, Jobs and \
             Trials are admitted unchanged",
            APPLY_INSTALL,
        )];
    };
    let webhooks = configuration.webhooks.as_deref().unwrap_or_default();
    let mut findings = Vec::new();
    let missing: Vec<String> = expected_webhooks(config)
        .into_iter()
        .filter(|name| !webhooks.iter().any(|w| w.name == *name))
        .collect();
    findings.push(if missing.is_empty() {
        Finding::ok(
            REGISTERED,
            subject,
            format!(
                "registered: {}",
                webhooks
                    .iter()
                    .map(|w| format!(
                        "{} (failurePolicy {})",
                        w.name,
                        w.failure_policy.as_deref().unwrap_or("Fail")
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    } else {
        Finding::problem(
            Severity::Error,
            REGISTERED,
            subject,
            format!("lacks the webhooks {}", missing.join(", ")),
            APPLY_INSTALL,
        )
    });
    let mut per_webhook = Vec::new();
    for webhook in webhooks {
        let probe = facts.probes.iter().find(|p| p.webhook == webhook.name);
        per_webhook.extend(judge_webhook(webhook, probe, facts.now));
    }
    findings.extend(merge_subjects(per_webhook));
    findings.extend(facts.services.iter().map(judge_service));
    findings
}

/// One webhook: its caBundle, and what its probe found.
fn judge_webhook(webhook: &MutatingWebhook, probe: Option<&Probe>, now: u64) -> Vec<Finding> {
    let name = webhook.name.clone();
    let ca_bundle = webhook
        .client_config
        .ca_bundle
        .as_ref()
        .map(|b| b.0.as_slice())
        .unwrap_or_default();
    let Some(probe) = probe else {
        return vec![];
    };
    let target = &probe.target;
    match &probe.reach {
        Reach::NotFromHere { host } => vec![Finding::info(
            ANSWERS,
            name,
            format!(
                "{host} does not resolve from here (outside the cluster): the certificate and the \
                 answer are not checked"
            ),
        )
        .with_fix(
            "kubectl -n tenancy-fixer port-forward svc/tenancy-fixer 8443:443, then check \
             --webhook-url https://127.0.0.1:8443",
        )],
        Reach::Unreachable(why) => vec![Finding::problem(
            Severity::Error,
            ANSWERS,
            name,
            format!("{target} cannot be reached ({why}): {}", failing(webhook)),
            "is serve running? kubectl -n tenancy-fixer get pods; kubectl -n tenancy-fixer logs deploy/tenancy-fixer",
        )],
        Reach::Handshake(why) => vec![Finding::problem(
            Severity::Error,
            ANSWERS,
            name,
            format!(
                "{target} accepts connections but no TLS handshake ({why}): {}",
                failing(webhook)
            ),
            "point the webhook at serve's HTTPS port (443 on the Service, 8443 on the pod)",
        )],
        Reach::Presented {
            server_name,
            chain,
            answer,
        } => vec![
            judge_certificate(&name, ca_bundle, chain, server_name, now),
            judge_answer(&name, target, answer, webhook),
        ],
    }
}

/// What the API server does when the webhook fails, said after a fault.
fn failing(webhook: &MutatingWebhook) -> &'static str {
    match webhook.failure_policy.as_deref() {
        Some("Ignore") => "the API server admits these objects unchanged (failurePolicy Ignore)",
        _ => "the API server refuses these objects (failurePolicy Fail)",
    }
}

fn judge_certificate(
    name: &str,
    ca_bundle: &[u8],
    chain: &[Vec<u8>],
    server_name: &str,
    now: u64,
) -> Finding {
    let problem =
        |what: String, fix: &str| Finding::problem(Severity::Error, CA_BUNDLE, name, what, fix);
    const RESTART: &str = "self-managed certificates: restart serve, which writes its CA into the \
                           caBundle; cert-manager: check the cainjector annotation; files: \
                           tenancy-fixer manifests --ca-bundle ca.crt";
    match ca_verdict(ca_bundle, chain, server_name, now) {
        CaVerdict::Trusted => Finding::ok(
            CA_BUNDLE,
            name,
            format!("the caBundle trusts the certificate served for {server_name}"),
        ),
        CaVerdict::OtherCa => problem(
            "the served certificate is not signed by the CA in the caBundle: the API server \
             refuses the connection"
                .into(),
            RESTART,
        ),
        CaVerdict::WrongName => problem(
            format!(
                "the served certificate is signed by the caBundle's CA but not valid for \
                 {server_name}, the name the API server asks for"
            ),
            "serve --certificate-names must include the Service's DNS name (the default does)",
        ),
        CaVerdict::Expired => problem(
            "the served certificate has expired".into(),
            "self-managed: restart serve (it renews); files: renew them (serve reloads them)",
        ),
        CaVerdict::NotYetValid => problem(
            "the served certificate is not valid yet (clock skew?)".into(),
            "check the clocks of the nodes and of the API server",
        ),
        CaVerdict::NoCaBundle => problem(
            "the caBundle is empty: the API server cannot verify the webhook".into(),
            RESTART,
        ),
        CaVerdict::UnusableCaBundle(why) => {
            problem(format!("the caBundle cannot be used: {why}"), RESTART)
        }
        CaVerdict::Refused(why) => {
            problem(format!("the served certificate is refused: {why}"), RESTART)
        }
    }
}

fn judge_answer(name: &str, target: &str, answer: &Answer, webhook: &MutatingWebhook) -> Finding {
    let problem = |what: String| {
        Finding::problem(
            Severity::Error,
            ANSWERS,
            name,
            format!("{what}: {}", failing(webhook)),
            "point the webhook at tenancy-fixer serve (paths /mutate/pods, /mutate/jobs, \
             /mutate/trials); its logs say why",
        )
    };
    match answer {
        Answer::Review {
            uid_echoed: true,
            allowed: true,
        } => Finding::ok(ANSWERS, name, format!("{target} answers reviews")),
        Answer::Review {
            uid_echoed: false, ..
        } => problem(format!("{target} answers a review with another uid")),
        Answer::Review { .. } => problem(format!("{target} denies a plain pod")),
        Answer::Status(status) => problem(format!("{target} answers HTTP {status}")),
        Answer::NotAReview(why) => problem(format!("{target} answers, but {why}")),
        Answer::Failed(why) => problem(format!("calling {target} failed ({why})")),
    }
}

fn judge_service(service: &ServiceFacts) -> Finding {
    let subject = format!("Service {}/{}", service.namespace, service.name);
    if !service.found {
        Finding::problem(
            Severity::Error,
            SERVICE,
            subject,
            "not found: the API server has nowhere to send reviews",
            APPLY_INSTALL,
        )
    } else if service.ready_endpoints == 0 {
        Finding::problem(
            Severity::Error,
            SERVICE,
            subject,
            "no ready endpoint: no replica of serve is ready",
            "kubectl -n tenancy-fixer get pods; kubectl -n tenancy-fixer logs deploy/tenancy-fixer",
        )
    } else {
        Finding::ok(
            SERVICE,
            subject,
            format!("{} ready endpoint(s)", service.ready_endpoints),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::{ByteString, api::admissionregistration::v1::WebhookClientConfig};
    use serde_json::json;
    use time::OffsetDateTime;

    use super::*;
    use crate::{
        certs::{self, Bundle},
        testing::config,
    };

    const DAY: Duration = Duration::from_secs(24 * 3600);
    const NAME: &str = "tenancy-fixer.tenancy-fixer.svc";

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn unix(t: OffsetDateTime) -> u64 {
        t.unix_timestamp() as u64
    }

    fn bundle(names: &[&str]) -> Bundle {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        certs::new_bundle(&names, now(), 90 * DAY).unwrap()
    }

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn the_ca_that_signed_is_trusted_for_the_names_of_the_certificate() {
        let ours = bundle(&[NAME, "127.0.0.1"]);
        let chain = [der(&ours.cert)];
        let ca = ours.ca_cert.as_bytes();
        let t = unix(now());
        assert_eq!(ca_verdict(ca, &chain, NAME, t), CaVerdict::Trusted);
        assert_eq!(ca_verdict(ca, &chain, "127.0.0.1", t), CaVerdict::Trusted);
        assert_eq!(
            ca_verdict(ca, &chain, "other.tenancy-fixer.svc", t),
            CaVerdict::WrongName
        );
        // A bundle of several CAs trusts what any of them signed.
        let other = bundle(&[NAME]);
        let both = format!("{}{}", other.ca_cert, ours.ca_cert);
        assert_eq!(
            ca_verdict(both.as_bytes(), &chain, NAME, t),
            CaVerdict::Trusted
        );
    }

    #[test]
    fn a_different_ca_is_told_apart_even_with_the_same_name() {
        // Both CAs are called "tenancy-fixer webhook CA": the signature tells them apart.
        let (ours, theirs) = (bundle(&[NAME]), bundle(&[NAME]));
        let chain = [der(&ours.cert)];
        assert_eq!(
            ca_verdict(theirs.ca_cert.as_bytes(), &chain, NAME, unix(now())),
            CaVerdict::OtherCa
        );
    }

    #[test]
    fn validity_is_judged_at_the_time_of_the_probe() {
        let ours = bundle(&[NAME]);
        let chain = [der(&ours.cert)];
        let ca = ours.ca_cert.as_bytes();
        assert_eq!(
            ca_verdict(ca, &chain, NAME, unix(now() + 91 * DAY)),
            CaVerdict::Expired
        );
        assert_eq!(
            ca_verdict(ca, &chain, NAME, unix(now() - DAY)),
            CaVerdict::NotYetValid
        );
    }

    #[test]
    fn unusable_ca_bundles_and_chains() {
        let ours = bundle(&[NAME]);
        let chain = [der(&ours.cert)];
        let t = unix(now());
        assert_eq!(ca_verdict(b"", &chain, NAME, t), CaVerdict::NoCaBundle);
        assert_eq!(ca_verdict(b" \n", &chain, NAME, t), CaVerdict::NoCaBundle);
        assert!(matches!(
            ca_verdict(b"hello", &chain, NAME, t),
            CaVerdict::UnusableCaBundle(_)
        ));
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            ca_verdict(garbage.as_bytes(), &chain, NAME, t),
            CaVerdict::UnusableCaBundle(_)
        ));
        let ca = ours.ca_cert.as_bytes();
        assert!(matches!(
            ca_verdict(ca, &[], NAME, t),
            CaVerdict::Refused(_)
        ));
        assert!(matches!(
            ca_verdict(ca, &[b"not DER".to_vec()], NAME, t),
            CaVerdict::Refused(_)
        ));
        assert!(matches!(
            ca_verdict(ca, &chain, "not a name!", t),
            CaVerdict::Refused(_)
        ));
    }

    #[test]
    fn answers_are_read_as_the_api_server_reads_them() {
        let review = |response: Value| {
            serde_json::to_vec(&json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response
            }))
            .unwrap()
        };
        let ok = review(json!({"uid": "u1", "allowed": true}));
        assert_eq!(
            read_answer(200, &ok, "u1"),
            Answer::Review {
                uid_echoed: true,
                allowed: true
            }
        );
        assert_eq!(
            read_answer(200, &ok, "u2"),
            Answer::Review {
                uid_echoed: false,
                allowed: true
            }
        );
        assert_eq!(
            read_answer(200, &review(json!({"uid": "u1", "allowed": false})), "u1"),
            Answer::Review {
                uid_echoed: true,
                allowed: false
            }
        );
        assert_eq!(read_answer(404, b"", "u1"), Answer::Status(404));
        assert!(matches!(
            read_answer(200, b"<html>", "u1"),
            Answer::NotAReview(_)
        ));
        assert!(matches!(
            read_answer(200, br#"{"kind": "Status"}"#, "u1"),
            Answer::NotAReview(_)
        ));
    }

    fn registered(ca_bundle: &str) -> MutatingWebhookConfiguration {
        manifests::webhook_configuration(
            &Endpoint::Url("https://127.0.0.1:8443".into()),
            ca_bundle.as_bytes(),
            FailurePolicy::Ignore,
            &config(""),
        )
    }

    fn names(configuration: &MutatingWebhookConfiguration) -> Vec<String> {
        configuration
            .webhooks
            .iter()
            .flatten()
            .map(|w| w.name.clone())
            .collect()
    }

    fn probes(configuration: &MutatingWebhookConfiguration, reach: Reach) -> Vec<Probe> {
        names(configuration)
            .into_iter()
            .map(|webhook| Probe {
                target: format!("https://127.0.0.1:8443/{webhook}"),
                webhook,
                reach: reach.clone(),
            })
            .collect()
    }

    fn served(bundle: &Bundle, answer: Answer) -> Reach {
        Reach::Presented {
            server_name: "127.0.0.1".into(),
            chain: vec![der(&bundle.cert)],
            answer,
        }
    }

    const ANSWERED: Answer = Answer::Review {
        uid_echoed: true,
        allowed: true,
    };

    fn judged(facts: &WebhookFacts) -> Vec<(Severity, &'static str, String)> {
        findings(facts, &config(""))
            .into_iter()
            .map(|f| (f.severity, f.check, f.subject))
            .collect()
    }

    fn facts(configuration: MutatingWebhookConfiguration, reach: Reach) -> WebhookFacts {
        WebhookFacts {
            probes: probes(&configuration, reach),
            configuration: Some(configuration),
            services: vec![],
            now: unix(now()),
        }
    }

    const ALL: &str = "pods.tenancy-fixer.kubeflow.org, jobs.tenancy-fixer.kubeflow.org, \
                       trials.tenancy-fixer.kubeflow.org";

    #[test]
    fn healthy_webhook_is_all_ok() {
        let ours = bundle(&["127.0.0.1"]);
        let facts = facts(registered(&ours.ca_cert), served(&ours, ANSWERED));
        assert_eq!(
            judged(&facts),
            [
                (
                    Severity::Ok,
                    REGISTERED,
                    "MutatingWebhookConfiguration tenancy-fixer".into()
                ),
                (Severity::Ok, CA_BUNDLE, ALL.into()),
                (
                    Severity::Ok,
                    ANSWERS,
                    "pods.tenancy-fixer.kubeflow.org".into()
                ),
                (
                    Severity::Ok,
                    ANSWERS,
                    "jobs.tenancy-fixer.kubeflow.org".into()
                ),
                (
                    Severity::Ok,
                    ANSWERS,
                    "trials.tenancy-fixer.kubeflow.org".into()
                ),
            ]
        );
    }

    #[test]
    fn not_registered_is_one_error() {
        let found = findings(&WebhookFacts::default(), &config(""));
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].severity, found[0].check),
            (Severity::Error, REGISTERED)
        );
        assert!(found[0].fix.as_deref().unwrap().contains("kubectl apply"));
    }

    #[test]
    fn a_missing_webhook_is_an_error_naming_it() {
        let ours = bundle(&["127.0.0.1"]);
        let mut configuration = registered(&ours.ca_cert);
        configuration.webhooks.as_mut().unwrap().remove(2);
        let found = findings(&facts(configuration, served(&ours, ANSWERED)), &config(""));
        assert_eq!(
            (found[0].severity, found[0].check),
            (Severity::Error, REGISTERED)
        );
        assert_eq!(
            found[0].what,
            "lacks the webhooks trials.tenancy-fixer.kubeflow.org"
        );
    }

    #[test]
    fn a_ca_bundle_of_another_ca_is_one_error_for_all_webhooks() {
        let (ours, theirs) = (bundle(&["127.0.0.1"]), bundle(&["127.0.0.1"]));
        let facts = facts(registered(&theirs.ca_cert), served(&ours, ANSWERED));
        let found = findings(&facts, &config(""));
        let ca: Vec<&Finding> = found.iter().filter(|f| f.check == CA_BUNDLE).collect();
        assert_eq!(ca.len(), 1, "{found:?}");
        assert_eq!(
            (ca[0].severity, ca[0].subject.as_str()),
            (Severity::Error, ALL)
        );
        assert!(
            ca[0].what.contains("not signed by the CA"),
            "{}",
            ca[0].what
        );
        // The answer is judged apart: it still answers.
        assert!(
            found
                .iter()
                .filter(|f| f.check == ANSWERS)
                .all(|f| f.severity == Severity::Ok)
        );
    }

    #[test]
    fn an_empty_ca_bundle_is_an_error() {
        let ours = bundle(&["127.0.0.1"]);
        let found = findings(&facts(registered(""), served(&ours, ANSWERED)), &config(""));
        let ca = found.iter().find(|f| f.check == CA_BUNDLE).unwrap();
        assert_eq!(ca.severity, Severity::Error);
        assert!(ca.what.contains("empty"), "{}", ca.what);
    }

    #[test]
    fn endpoints_that_do_not_answer_are_errors_saying_what_the_api_server_does() {
        let ours = bundle(&["127.0.0.1"]);
        for (reach, says) in [
            (
                Reach::Unreachable("connection refused".into()),
                "cannot be reached",
            ),
            (Reach::Handshake("not TLS".into()), "no TLS handshake"),
            (served(&ours, Answer::Status(404)), "HTTP 404"),
            (
                served(&ours, Answer::NotAReview("not JSON".into())),
                "not JSON",
            ),
            (
                served(&ours, Answer::Failed("reset".into())),
                "failed (reset)",
            ),
            (
                served(
                    &ours,
                    Answer::Review {
                        uid_echoed: false,
                        allowed: true,
                    },
                ),
                "another uid",
            ),
            (
                served(
                    &ours,
                    Answer::Review {
                        uid_echoed: true,
                        allowed: false,
                    },
                ),
                "denies",
            ),
        ] {
            let found = findings(&facts(registered(&ours.ca_cert), reach), &config(""));
            let answers: Vec<&Finding> = found.iter().filter(|f| f.check == ANSWERS).collect();
            assert_eq!(answers.len(), 3, "{says}: {found:?}");
            for answer in answers {
                assert_eq!(answer.severity, Severity::Error, "{says}");
                assert!(answer.what.contains(says), "{says}: {}", answer.what);
                assert!(
                    answer.what.contains("failurePolicy Ignore"),
                    "{}",
                    answer.what
                );
            }
        }
    }

    #[test]
    fn a_service_outside_reach_is_worth_knowing_not_a_problem() {
        let ours = bundle(&["127.0.0.1"]);
        let reach = Reach::NotFromHere {
            host: "tenancy-fixer.tenancy-fixer.svc".into(),
        };
        let found = findings(&facts(registered(&ours.ca_cert), reach), &config(""));
        let outside: Vec<&Finding> = found.iter().filter(|f| f.check == ANSWERS).collect();
        assert_eq!(outside.len(), 1, "one finding for the three webhooks");
        assert_eq!(outside[0].severity, Severity::Info);
        assert_eq!(outside[0].subject, ALL);
        assert!(outside[0].fix.as_deref().unwrap().contains("--webhook-url"));
        assert!(!found.iter().any(|f| f.severity.is_problem()), "{found:?}");
    }

    #[test]
    fn a_webhook_without_probe_is_judged_by_its_registration_only() {
        let webhook = MutatingWebhook {
            name: "pods.tenancy-fixer.kubeflow.org".into(),
            client_config: WebhookClientConfig {
                ca_bundle: Some(ByteString(vec![])),
                ..WebhookClientConfig::default()
            },
            ..MutatingWebhook::default()
        };
        assert!(judge_webhook(&webhook, None, 0).is_empty());
        assert_eq!(
            failing(&webhook),
            "the API server refuses these objects (failurePolicy Fail)"
        );
    }

    #[test]
    fn services_need_to_exist_and_have_ready_endpoints() {
        let service = |found, ready_endpoints| ServiceFacts {
            namespace: "tenancy-fixer".into(),
            name: "tenancy-fixer".into(),
            found,
            ready_endpoints,
        };
        let judged = |s: ServiceFacts| {
            let f = judge_service(&s);
            (f.severity, f.what)
        };
        assert_eq!(
            judged(service(true, 2)),
            (Severity::Ok, "2 ready endpoint(s)".into())
        );
        assert_eq!(judged(service(true, 0)).0, Severity::Error);
        assert!(judged(service(true, 0)).1.contains("no ready endpoint"));
        assert!(judged(service(false, 0)).1.contains("not found"));
        assert_eq!(
            judge_service(&service(false, 0)).subject,
            "Service tenancy-fixer/tenancy-fixer"
        );
    }

    #[test]
    fn targets_are_where_the_api_server_calls() {
        use k8s_openapi::api::admissionregistration::v1::ServiceReference;
        let url = |u: &str| WebhookClientConfig {
            url: Some(u.into()),
            ..WebhookClientConfig::default()
        };
        let t = target(
            &url("https://127.0.0.1:8443/mutate/pods"),
            Some("https://x"),
        )
        .unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.server_name.as_str(),
                t.path.as_str(),
                t.service
            ),
            ("127.0.0.1", 8443, "127.0.0.1", "/mutate/pods", false),
            "a URL is called as it is, whatever --webhook-url says"
        );
        let t = target(&url("https://[::1]/m?x=1"), None).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 443, "/m?x=1")
        );
        assert!(
            target(&url("http://127.0.0.1/m"), None)
                .unwrap_err()
                .contains("not an https")
        );
        assert!(target(&url("::"), None).is_err());

        let service = |port: Option<i32>, path: Option<&str>| WebhookClientConfig {
            service: Some(ServiceReference {
                namespace: "tenancy-fixer".into(),
                name: "tenancy-fixer".into(),
                port,
                path: path.map(str::to_string),
            }),
            ..WebhookClientConfig::default()
        };
        let t = target(&service(None, Some("/mutate/jobs")), None).unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.server_name.as_str(),
                t.path.as_str(),
                t.service
            ),
            (
                "tenancy-fixer.tenancy-fixer.svc",
                443,
                "tenancy-fixer.tenancy-fixer.svc",
                "/mutate/jobs",
                true
            )
        );
        assert_eq!(
            t.shown,
            "https://tenancy-fixer.tenancy-fixer.svc:443/mutate/jobs"
        );
        let t = target(&service(Some(8443), None), Some("https://127.0.0.1:9443/")).unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.server_name.as_str(),
                t.path.as_str()
            ),
            ("127.0.0.1", 9443, "tenancy-fixer.tenancy-fixer.svc", "/"),
            "via: connect there, verify for the Service"
        );
        assert_eq!(
            t.shown,
            "https://tenancy-fixer.tenancy-fixer.svc:8443/ via https://127.0.0.1:9443"
        );
        assert!(target(&service(Some(70000), None), None).is_err());
        assert!(target(&WebhookClientConfig::default(), None).is_err());
    }

    #[test]
    fn the_probe_review_is_answered_by_our_webhook_allowed_and_unchanged() {
        let review = probe_review("uid-1").to_string();
        let reviewed = crate::admission::review(review.as_bytes(), &config("")).unwrap();
        assert!(!reviewed.outcome.patched);
        assert_eq!(
            read_answer(200, &reviewed.answer, "uid-1"),
            Answer::Review {
                uid_echoed: true,
                allowed: true
            }
        );
    }
}
