//! `serve`: the flags of the Deployment's process; what it runs is [`crate::runtime`].

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;

use super::{CliError, Result, kube_client, load_settings};
use crate::{
    manifests,
    runtime::{self, Certificates, certificates::SelfManaged, leader_election},
    webhook::{self, TlsFiles},
};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Settings file (YAML); absent keys take their defaults.
    #[arg(long, value_name = "FILE", env = "TENANCY_FIXER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address and port the HTTPS webhook listens on.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "0.0.0.0:8443",
        env = "TENANCY_FIXER_LISTEN"
    )]
    pub listen: SocketAddr,
    /// PEM file with the serving certificate (chain); reloaded when it changes. Without it the certificate is self-managed.
    #[arg(
        long,
        value_name = "FILE",
        env = "TENANCY_FIXER_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the serving certificate's private key; reloaded when it changes.
    #[arg(
        long,
        value_name = "FILE",
        env = "TENANCY_FIXER_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Self-managed certificates: the Secret holding the CA and serving certificate.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "tenancy-fixer-certs",
        env = "TENANCY_FIXER_CERTIFICATE_SECRET"
    )]
    pub certificate_secret: String,
    /// Self-managed certificates: the Secret's namespace (default: env POD_NAMESPACE, else `tenancy-fixer`).
    #[arg(
        long,
        value_name = "NAMESPACE",
        env = "TENANCY_FIXER_CERTIFICATE_NAMESPACE"
    )]
    pub certificate_namespace: Option<String>,
    /// Self-managed certificates: DNS names or IP addresses of the serving certificate (default: the Service's DNS names).
    #[arg(
        long,
        value_name = "NAME",
        value_delimiter = ',',
        env = "TENANCY_FIXER_CERTIFICATE_NAMES"
    )]
    pub certificate_names: Vec<String>,
    /// Self-managed certificates: lifetime of a serving certificate in seconds (renewed after two thirds).
    #[arg(long, value_name = "SECONDS", default_value_t = 90 * 24 * 3600, value_parser = clap::value_parser!(u64).range(10..), env = "TENANCY_FIXER_CERTIFICATE_VALIDITY")]
    pub certificate_validity: u64,
    /// Self-managed certificates: seconds between checks of the Secret and the caBundle.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..), env = "TENANCY_FIXER_CERTIFICATE_CHECK_INTERVAL")]
    pub certificate_check_interval: u64,
    /// Kubeconfig to reach the cluster with (default: in-cluster config, else KUBECONFIG or ~/.kube/config).
    #[arg(long, value_name = "PATH", env = "TENANCY_FIXER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Serve the webhook only: no controller, no API access; `auto` settings resolve to the modern modes.
    #[arg(long, env = "TENANCY_FIXER_NO_CONTROLLER")]
    pub no_controller: bool,
    /// Run the controller only while holding a Lease (several replicas: all serve admission, one writes).
    #[arg(
        long,
        env = "TENANCY_FIXER_LEADER_ELECT",
        conflicts_with = "no_controller"
    )]
    pub leader_elect: bool,
    /// Namespace of the Lease (default: env POD_NAMESPACE, else `tenancy-fixer`).
    #[arg(long, value_name = "NAMESPACE", env = "TENANCY_FIXER_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Name of the Lease (coordination.k8s.io/v1; created when absent).
    #[arg(long, value_name = "NAME", default_value = manifests::NAME, env = "TENANCY_FIXER_LEASE_NAME")]
    pub lease_name: String,
    /// This replica's identity in the Lease, unique among replicas (default: env POD_NAME, else the hostname).
    #[arg(long, value_name = "ID", env = "TENANCY_FIXER_LEASE_IDENTITY")]
    pub lease_identity: Option<String>,
    /// Address and port of the Prometheus metrics endpoint (`GET /metrics`, plain HTTP); none by default.
    #[arg(long, value_name = "ADDR", env = "TENANCY_FIXER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub limits: webhook::Limits,
}

impl ServeArgs {
    pub fn run(self) -> Result<()> {
        let Self {
            config,
            listen,
            tls_cert,
            tls_key,
            certificate_secret,
            certificate_namespace,
            certificate_names,
            certificate_validity,
            certificate_check_interval,
            kubeconfig,
            no_controller,
            leader_elect,
            lease_namespace,
            lease_name,
            lease_identity,
            metrics_listen,
            limits,
        } = self;
        let settings = load_settings(config.as_deref())?;
        let certificates = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Certificates::Files(TlsFiles::new(cert, key)),
            _ => {
                let namespace =
                    runtime::own_namespace(certificate_namespace, |key| std::env::var(key).ok());
                let names = if certificate_names.is_empty() {
                    manifests::service_dns_names(&namespace)
                } else {
                    certificate_names
                };
                Certificates::SelfManaged(SelfManaged {
                    namespace,
                    secret: certificate_secret,
                    webhook_configuration: manifests::WEBHOOK_CONFIGURATION_NAME.into(),
                    names,
                    validity: Duration::from_secs(certificate_validity),
                    check_interval: Duration::from_secs(certificate_check_interval),
                })
            }
        };
        let needs_client = !no_controller || matches!(certificates, Certificates::SelfManaged(_));
        let election = leader_elect.then(|| {
            leader_election(
                lease_namespace,
                lease_name,
                lease_identity,
                |key| std::env::var(key).ok(),
                runtime::hostname,
            )
        });
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(CliError::Runtime)?;
        tokio.block_on(async {
            let client = if needs_client {
                Some(kube_client(kubeconfig.as_deref()).await?)
            } else {
                None
            };
            let options = runtime::Options {
                listen,
                certificates,
                limits,
                metrics: metrics_listen,
                client,
                controller: !no_controller,
                election,
            };
            Ok(runtime::serve(settings, options).await?)
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    #[test]
    fn serve_takes_the_leader_election_flags() {
        let cli = Cli::try_parse_from([
            "tenancy-fixer",
            "serve",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
            "--leader-elect",
            "--lease-namespace",
            "ops",
            "--lease-name",
            "tf",
            "--lease-identity",
            "pod-0",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert!(args.leader_elect);
        assert_eq!(
            (
                args.lease_namespace.as_deref(),
                args.lease_name.as_str(),
                args.lease_identity.as_deref()
            ),
            (Some("ops"), "tf", Some("pod-0"))
        );

        let cli = Cli::try_parse_from([
            "tenancy-fixer",
            "serve",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert!(!args.leader_elect, "off by default");
        assert_eq!(args.lease_name, "tenancy-fixer");

        let both = [
            "tenancy-fixer",
            "serve",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
            "--leader-elect",
            "--no-controller",
        ];
        assert!(
            Cli::try_parse_from(both).is_err(),
            "nothing to elect without a controller"
        );
    }
}
