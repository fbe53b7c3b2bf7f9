//! The `serve` runtime, what the Deployment runs: the HTTPS admission webhook on every replica,
//! and the profile controller (while this replica holds the Lease, with leader election),
//! until SIGTERM/SIGINT or until either of them stops. `auto` settings are decided once, by API
//! discovery, before anything is served. Without certificate files the serving certificate is
//! self-managed ([`certificates`]).

pub mod certificates;

use std::{net::SocketAddr, sync::Arc};

use serde::Serialize;
use serde_json::Value;

use self::certificates::{CertificatesError, SelfManaged};
use crate::{
    config::{Capabilities, Settings},
    controller::{self, LeaderElection},
    manifests,
    webhook::{self, Tls, TlsFiles, WebhookError},
};

/// Where the serving certificate comes from.
pub enum Certificates {
    /// PEM files (cert-manager, a mounted Secret), reloaded when they change.
    Files(TlsFiles),
    /// Made and renewed by us, in a Secret shared by the replicas (needs the cluster).
    SelfManaged(SelfManaged),
}

/// What `serve` was asked to run.
pub struct Options {
    pub listen: SocketAddr,
    pub certificates: Certificates,
    pub limits: webhook::Limits,
    /// Where `/metrics` is served (plain HTTP), if anywhere.
    pub metrics: Option<SocketAddr>,
    /// The cluster, for the controller and self-managed certificates.
    pub client: Option<kube::Client>,
    /// Run the profile controller (else only the webhook runs and `auto` means the modern modes).
    pub controller: bool,
    /// Run the controller only while holding this Lease.
    pub election: Option<LeaderElection>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot decide the auto settings: {0}")]
    Discovery(#[source] controller::Error),
    #[error("controller failed: {0}")]
    Controller(#[source] controller::Error),
    #[error("controller task failed: {0}")]
    ControllerTask(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    #[error("self-managed certificates: {0}")]
    Certificates(#[from] CertificatesError),
    #[error(
        "self-managed certificates need the cluster: give a kubeconfig, or --tls-cert and --tls-key"
    )]
    NoClusterForCertificates,
}

/// Serves until a signal, or until the webhook or the controller stops.
pub async fn serve(settings: Settings, options: Options) -> Result<(), Error> {
    let Options {
        listen,
        certificates,
        limits,
        metrics,
        client,
        controller,
        election,
    } = options;
    // Bound first, so a taken port fails the start; stopped when `serve` returns.
    let _metrics = match metrics {
        Some(addr) => {
            let served = webhook::serve_metrics(addr, std::future::pending()).await?;
            Some(AbortOnDrop(tokio::spawn(async move {
                if let Err(error) = served.await {
                    tracing::error!(%error, "metrics endpoint stopped");
                }
            })))
        }
        None => None,
    };
    let config = match client.as_ref().filter(|_| controller) {
        None => {
            tracing::info!("controller disabled: auto settings resolve to the modern modes");
            settings.resolve(&Capabilities::modern())
        }
        Some(client) => {
            let capabilities = controller::discover(client)
                .await
                .map_err(Error::Discovery)?;
            settings.resolve(&capabilities)
        }
    };
    let modes = &config.modes;
    tracing::info!(
        kfp_access = word(&modes.kfp_access),
        istio_rbac = word(&modes.istio_rbac),
        proxy_startup = word(&modes.proxy_startup),
        proxy_shutdown = word(&modes.proxy_shutdown),
        "resolved modes"
    );
    let config = Arc::new(config);

    // Stops the webhook on SIGTERM/SIGINT, or when the controller has stopped.
    let stop = Arc::new(tokio::sync::Notify::new());
    let shutdown = {
        let stop = stop.clone();
        async move {
            tokio::select! {
                () = shutdown_signal() => {}
                () = stop.notified() => {}
            }
        }
    };
    let (tls, _maintenance) = match certificates {
        Certificates::Files(files) => (Tls::Files(files), None),
        Certificates::SelfManaged(managed) => {
            let client = client.clone().ok_or(Error::NoClusterForCertificates)?;
            let (rustls, serving) = certificates::start(&client, &managed).await?;
            let maintenance = certificates::maintain(client, managed, rustls.clone(), serving);
            (
                Tls::Managed(rustls),
                Some(AbortOnDrop(tokio::spawn(maintenance))),
            )
        }
    };
    let server = webhook::serve(listen, tls, config.clone(), limits, shutdown);

    let Some(client) = client.filter(|_| controller) else {
        return Ok(server.await?);
    };
    // Stops the controller (and releases the lease) once the webhook has stopped.
    let halt = Arc::new(tokio::sync::Notify::new());
    let halted = {
        let halt = halt.clone();
        async move { halt.notified().await }
    };
    let mut controller = match election {
        Some(election) => {
            tracing::info!(
                namespace = election.namespace,
                lease_name = election.lease_name,
                identity = election.identity,
                "leader election: the controller runs while this replica holds the lease"
            );
            tokio::spawn(controller::run_leader_elected_until(
                client,
                config,
                controller::stats(),
                election,
                halted,
            ))
        }
        None => tokio::spawn(async move {
            tokio::select! {
                result = controller::run(client, config) => result,
                () = halted => Ok(()),
            }
        }),
    };
    tokio::pin!(server);
    tokio::select! {
        served = &mut server => {
            halt.notify_one();
            let bound = controller::LEASE_RELEASE_TIMEOUT + std::time::Duration::from_secs(1);
            if tokio::time::timeout(bound, &mut controller).await.is_err() {
                controller.abort();
            }
            Ok(served?)
        }
        ended = &mut controller => {
            let error = match ended {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(Error::Controller(error)),
                Err(error) => Some(Error::ControllerTask(error)),
            };
            match &error {
                Some(error) => tracing::error!(%error, "controller stopped; shutting down"),
                None => tracing::warn!("controller stopped; shutting down"),
            }
            stop.notify_one();
            server.await?;
            error.map_or(Ok(()), Err)
        }
    }
}

/// A background task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where this replica competes for the lease: the flags, else the pod's downward-API
/// environment (`POD_NAMESPACE`, `POD_NAME`), else our namespace and the hostname.
pub fn leader_election(
    lease_namespace: Option<String>,
    lease_name: String,
    lease_identity: Option<String>,
    env: impl Fn(&str) -> Option<String>,
    hostname: impl FnOnce() -> Option<String>,
) -> LeaderElection {
    let namespace = own_namespace(lease_namespace, &env);
    LeaderElection {
        namespace,
        lease_name,
        identity: given(lease_identity)
            .or_else(|| given(env("POD_NAME")))
            .or_else(|| given(hostname()))
            .unwrap_or_else(|| format!("tenancy-fixer-{}", std::process::id())),
    }
}

/// A value given, unless blank.
fn given(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// Our namespace: the flag, else the pod's (downward API `POD_NAMESPACE`), else the install's.
pub fn own_namespace(flag: Option<String>, env: impl Fn(&str) -> Option<String>) -> String {
    given(flag)
        .or_else(|| given(env("POD_NAMESPACE")))
        .unwrap_or_else(|| manifests::NAMESPACE.into())
}

/// The kernel's hostname (a pod's name, unless the pod sets another), else `$HOSTNAME`.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
}

/// A mode as the settings file spells it (`authorization-policy`, ...).
pub(crate) fn word<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!(signal = "SIGTERM", "received signal"),
                _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "received signal"),
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!(signal = "SIGINT", "received signal");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_defaults_come_from_the_pod_then_the_host() {
        let pod_env = |key: &str| match key {
            "POD_NAMESPACE" => Some("kubeflow-ops".to_string()),
            "POD_NAME" => Some("tenancy-fixer-5d9c-abcde".to_string()),
            _ => None,
        };
        let host = || Some("node-host".to_string());
        let election = leader_election(None, "tenancy-fixer".into(), None, pod_env, host);
        assert_eq!(
            (
                election.namespace.as_str(),
                election.lease_name.as_str(),
                election.identity.as_str()
            ),
            ("kubeflow-ops", "tenancy-fixer", "tenancy-fixer-5d9c-abcde")
        );

        let flags = leader_election(
            Some("ops".into()),
            "l".into(),
            Some("me".into()),
            pod_env,
            host,
        );
        assert_eq!(
            (flags.namespace.as_str(), flags.identity.as_str()),
            ("ops", "me"),
            "flags win"
        );

        let empty_env = |_: &str| Some(String::new());
        let outside = leader_election(Some(" ".into()), "l".into(), None, empty_env, host);
        assert_eq!(
            (outside.namespace.as_str(), outside.identity.as_str()),
            ("tenancy-fixer", "node-host")
        );

        let nothing = leader_election(None, "l".into(), None, |_| None, || None);
        assert!(
            nothing.identity.starts_with("tenancy-fixer-"),
            "{}",
            nothing.identity
        );
    }
}
