//! Command line: `serve` runs the webhook (and the profile controller); `mutate` and `render`
//! apply the pure core to files, offline, so a rule or a mode can be tried without a cluster;
//! `manifests` prints the install manifests and `release-finalizers` helps uninstall.
//!
//! Every flag also reads an environment variable (`TENANCY_FIXER_*`), for Deployments.
//! Exit codes: 0 success, 1 bad input or runtime failure, 2 bad configuration.

use std::{
    io::{self, Read, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use serde_json::Value;

use crate::{
    admission::{self, Target},
    config::{Capabilities, Config, ConfigError, Settings},
    controller::{self, LeaderElection},
    demo::{self, DemoOptions},
    istio,
    manifests::{self, FailurePolicy, Install},
    model::Profile,
    telemetry::{self, LogFormat},
    webhook::{self, TlsFiles, WebhookError},
};

/// Extends Kubeflow multi-tenancy to Katib and Kubeflow Pipelines.
#[derive(Debug, Parser)]
#[command(name = "tenancy-fixer", version, about, propagate_version = true)]
pub struct Cli {
    /// Log line format (logs go to stderr; RUST_LOG sets the level).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "TENANCY_FIXER_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the admission webhook over HTTPS and run the profile controller.
    Serve(ServeArgs),
    /// Apply the admission rules to a Pod, Job, Trial or AdmissionReview from a file (offline).
    Mutate(MutateArgs),
    /// Print the objects kept for a Profile in the configured mode (offline).
    Render(RenderArgs),
    /// Run everything on a local control plane (testenv) and narrate what tenancy-fixer does.
    Demo(DemoArgs),
    /// Print the manifests installing tenancy-fixer in a cluster (a YAML stream for `kubectl apply -f -`).
    Manifests(ManifestsArgs),
    /// Remove the finalizer earlier versions put on every Profile (uninstalling one without upgrading, after stopping it).
    ReleaseFinalizers(ReleaseFinalizersArgs),
}

#[derive(Debug, Args)]
pub struct ManifestsArgs {
    /// Container image of the Deployment.
    #[arg(long, value_name = "IMAGE", default_value = manifests::DEFAULT_IMAGE, env = "TENANCY_FIXER_IMAGE")]
    pub image: String,
    /// PEM file with the CA that signed the serving certificate (Secret tenancy-fixer-tls): the webhook's caBundle.
    #[arg(
        long,
        value_name = "FILE",
        env = "TENANCY_FIXER_CA_BUNDLE",
        conflicts_with = "cert_manager"
    )]
    pub ca_bundle: Option<PathBuf>,
    /// Let cert-manager issue the serving certificate (self-signed Issuer, Certificate) and inject the caBundle.
    #[arg(long, env = "TENANCY_FIXER_CERT_MANAGER")]
    pub cert_manager: bool,
    /// What the API server does when the webhook does not answer.
    #[arg(
        long,
        value_enum,
        value_name = "POLICY",
        default_value = "ignore",
        env = "TENANCY_FIXER_FAILURE_POLICY"
    )]
    pub failure_policy: FailurePolicy,
    /// Settings file (YAML) to install in the ConfigMap (default: the default settings, every key spelt out).
    #[arg(long, value_name = "FILE", env = "TENANCY_FIXER_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReleaseFinalizersArgs {
    /// Kubeconfig to reach the cluster with (default: in-cluster config, else KUBECONFIG or ~/.kube/config).
    #[arg(long, value_name = "PATH", env = "TENANCY_FIXER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Use this cluster instead of starting testenv (its API server must reach 127.0.0.1).
    #[arg(long, value_name = "PATH", env = "TENANCY_FIXER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The testenv binary (`testenv/build.sh` builds it).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "target/testenv/testenv",
        env = "TENANCY_FIXER_TESTENV"
    )]
    pub testenv: PathBuf,
    /// CRD file or directory testenv serves; repeat to add more. `testenv/crds.sh` puts the
    /// upstream sets under target/crds (target/crds/istio-1.5 for the legacy Istio < 1.6 recipe).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "target/crds/kubeflow,target/crds/katib,target/crds/istio",
        env = "TENANCY_FIXER_CRDS",
        value_delimiter = ','
    )]
    pub crds: Vec<PathBuf>,
    /// Settings file (YAML); `auto` settings are decided by API discovery.
    #[arg(long, value_name = "FILE", env = "TENANCY_FIXER_CONFIG")]
    pub config: Option<PathBuf>,
}

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
    /// PEM file with the serving certificate (chain); reloaded when it changes.
    #[arg(long, value_name = "FILE", env = "TENANCY_FIXER_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM file with the serving certificate's private key; reloaded when it changes.
    #[arg(long, value_name = "FILE", env = "TENANCY_FIXER_TLS_KEY")]
    pub tls_key: PathBuf,
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
    #[command(flatten)]
    pub limits: webhook::Limits,
}

#[derive(Debug, Args)]
pub struct MutateArgs {
    /// YAML or JSON file holding one Pod, batch/v1 Job, Trial or AdmissionReview (`-` reads stdin).
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        env = "TENANCY_FIXER_MUTATE_FILE"
    )]
    pub file: PathBuf,
    /// Settings file (YAML); `auto` settings resolve to the modern modes.
    #[arg(long, value_name = "FILE", env = "TENANCY_FIXER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print only the JSON Patch (`[]` when no rule applies) instead of the mutated object.
    #[arg(long, env = "TENANCY_FIXER_MUTATE_PATCH")]
    pub patch: bool,
    /// Output format (default: the input's format).
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        value_name = "FORMAT",
        env = "TENANCY_FIXER_OUTPUT"
    )]
    pub output: Option<Format>,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// YAML or JSON file holding one kubeflow.org Profile (`-` reads stdin).
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        env = "TENANCY_FIXER_RENDER_FILE"
    )]
    pub file: PathBuf,
    /// Settings file (YAML); `auto` settings resolve to the modern modes.
    #[arg(long, value_name = "FILE", env = "TENANCY_FIXER_CONFIG")]
    pub config: Option<PathBuf>,
}

/// A document format, read or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Json,
    Yaml,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The input file is unreadable, not YAML/JSON, or not an object we handle.
    #[error("{0}")]
    Input(String),
    #[error("cannot read kubeconfig {path}: {source}", path = .path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cannot create Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("cannot decide the auto settings: {0}")]
    Discovery(#[source] controller::Error),
    #[error("controller failed: {0}")]
    Controller(#[source] controller::Error),
    #[error("controller task failed: {0}")]
    ControllerTask(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("cannot write output: {0}")]
    Output(String),
    #[error("demo failed: {0}")]
    Demo(#[source] demo::DemoError),
    #[error("cannot release the finalizers: {0}")]
    ReleaseFinalizers(#[source] controller::Error),
}

impl CliError {
    /// The process exit code for this error: 2 for configuration, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) => 2,
            _ => 1,
        }
    }
}

pub type Result<T, E = CliError> = std::result::Result<T, E>;

impl Cli {
    /// Runs the subcommand. Logging is set up here (stderr; `info` for `serve`, `warn` offline).
    pub fn run(self) -> Result<()> {
        let Self {
            log_format,
            command,
        } = self;
        match command {
            Command::Serve(args) => {
                telemetry::init(log_format, "info");
                args.run()
            }
            Command::Mutate(args) => {
                telemetry::init(log_format, "warn");
                let out = args.run()?;
                write_stdout(&out)
            }
            Command::Render(args) => {
                telemetry::init(log_format, "warn");
                let out = args.run()?;
                write_stdout(&out)
            }
            Command::Demo(args) => {
                telemetry::init(log_format, "warn");
                args.run()
            }
            Command::Manifests(args) => {
                telemetry::init(log_format, "warn");
                let out = args.run()?;
                write_stdout(&out)
            }
            Command::ReleaseFinalizers(args) => {
                telemetry::init(log_format, "info");
                let out = args.run()?;
                write_stdout(&out)
            }
        }
    }
}

fn write_stdout(text: &str) -> Result<()> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| CliError::Output(e.to_string()))
}

/// Reads the settings file (or the defaults when none is given).
fn load_settings(path: Option<&Path>) -> Result<Settings> {
    Ok(match path {
        Some(path) => Settings::load(path)?,
        None => Settings::default(),
    })
}

/// Settings resolved without a cluster: `auto` means the modern modes.
fn offline_config(path: Option<&Path>) -> Result<Config> {
    Ok(load_settings(path)?.resolve(&Capabilities::modern()))
}

impl DemoArgs {
    pub fn run(self) -> Result<()> {
        let Self {
            kubeconfig,
            testenv,
            crds,
            config,
        } = self;
        let settings = load_settings(config.as_deref())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(CliError::Runtime)?;
        runtime
            .block_on(demo::run(DemoOptions {
                kubeconfig,
                testenv,
                crds,
                settings,
            }))
            .map_err(CliError::Demo)
    }
}

impl ServeArgs {
    pub fn run(self) -> Result<()> {
        let settings = load_settings(self.config.as_deref())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(CliError::Runtime)?;
        runtime.block_on(self.serve(settings))
    }

    async fn serve(self, settings: Settings) -> Result<()> {
        let Self {
            config: _,
            listen,
            tls_cert,
            tls_key,
            kubeconfig,
            no_controller,
            leader_elect,
            lease_namespace,
            lease_name,
            lease_identity,
            limits,
        } = self;
        let election = leader_elect.then(|| {
            leader_election(
                lease_namespace,
                lease_name,
                lease_identity,
                |key| std::env::var(key).ok(),
                hostname,
            )
        });
        let (config, client) = if no_controller {
            tracing::info!("controller disabled: auto settings resolve to the modern modes");
            (settings.resolve(&Capabilities::modern()), None)
        } else {
            let client = kube_client(kubeconfig.as_deref()).await?;
            let capabilities = controller::discover(&client)
                .await
                .map_err(CliError::Discovery)?;
            (settings.resolve(&capabilities), Some(client))
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
        let tls = TlsFiles::new(tls_cert, tls_key);

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
        let server = webhook::serve(listen, tls, config.clone(), limits, shutdown);

        let Some(client) = client else {
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
                    Ok(Err(error)) => Some(CliError::Controller(error)),
                    Err(error) => Some(CliError::ControllerTask(error)),
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
}

/// Where this replica competes for the lease: the flags, else the pod's downward-API
/// environment (`POD_NAMESPACE`, `POD_NAME`), else our namespace and the hostname.
fn leader_election(
    lease_namespace: Option<String>,
    lease_name: String,
    lease_identity: Option<String>,
    env: impl Fn(&str) -> Option<String>,
    hostname: impl FnOnce() -> Option<String>,
) -> LeaderElection {
    let given = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
    LeaderElection {
        namespace: given(lease_namespace)
            .or_else(|| given(env("POD_NAMESPACE")))
            .unwrap_or_else(|| manifests::NAMESPACE.into()),
        lease_name,
        identity: given(lease_identity)
            .or_else(|| given(env("POD_NAME")))
            .or_else(|| given(hostname()))
            .unwrap_or_else(|| format!("tenancy-fixer-{}", std::process::id())),
    }
}

/// The kernel's hostname (a pod's name, unless the pod sets another), else `$HOSTNAME`.
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
}

impl ManifestsArgs {
    /// The install manifests as a YAML stream.
    pub fn run(self) -> Result<String> {
        let Self {
            image,
            ca_bundle,
            cert_manager,
            failure_policy,
            config,
        } = self;
        let ca_bundle = ca_bundle.map(|path| read_ca_bundle(&path)).transpose()?;
        let settings = load_settings(config.as_deref())?;
        let install = Install {
            image,
            ca_bundle,
            cert_manager,
            failure_policy,
            settings,
        };
        manifests::install_manifests(&install).map_err(|e| CliError::Output(e.to_string()))
    }
}

/// A PEM file holding at least one certificate.
fn read_ca_bundle(path: &Path) -> Result<Vec<u8>> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| input(format!("cannot read {shown}: {e}")))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(input(format!(
            "{shown}: not a PEM certificate bundle (no BEGIN CERTIFICATE line)"
        )));
    }
    Ok(pem)
}

impl ReleaseFinalizersArgs {
    /// One line per released profile.
    pub fn run(self) -> Result<String> {
        let Self { kubeconfig } = self;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(CliError::Runtime)?;
        let released = runtime.block_on(async {
            let client = kube_client(kubeconfig.as_deref()).await?;
            controller::release_finalizers(&client)
                .await
                .map_err(CliError::ReleaseFinalizers)
        })?;
        let finalizer = controller::FINALIZER;
        Ok(released
            .iter()
            .map(|name| format!("profile/{name}: finalizer {finalizer} removed\n"))
            .collect())
    }
}

/// A mode as the settings file spells it (`authorization-policy`, ...).
fn word<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

async fn kube_client(kubeconfig: Option<&Path>) -> Result<kube::Client> {
    let Some(path) = kubeconfig else {
        return kube::Client::try_default().await.map_err(CliError::Client);
    };
    let kubeconfig =
        kube::config::Kubeconfig::read_from(path).map_err(|source| CliError::Kubeconfig {
            path: path.into(),
            source,
        })?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|source| CliError::Kubeconfig {
        path: path.into(),
        source,
    })?;
    kube::Client::try_from(config).map_err(CliError::Client)
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

impl MutateArgs {
    /// The text to print: the mutated object, its patch, or the AdmissionReview response.
    pub fn run(self) -> Result<String> {
        let Self {
            file,
            config,
            patch,
            output,
        } = self;
        let config = offline_config(config.as_deref())?;
        let (text, shown) = read_input(&file)?;
        let (document, input_format) = parse_document(&text, &shown)?;
        let format = output.unwrap_or(input_format);
        render_value(&mutate_document(document, &shown, patch, &config)?, format)
    }
}

/// Mutates one parsed document: an AdmissionReview is answered as the webhook would; an object
/// is returned changed (or its patch, with `patch_only`).
pub fn mutate_document(
    mut document: Value,
    shown: &str,
    patch_only: bool,
    config: &Config,
) -> Result<Value> {
    let (api_version, kind) = type_of(&document, shown)?;
    if kind == "AdmissionReview" {
        let body = serde_json::to_vec(&document).map_err(|e| input(format!("{shown}: {e}")))?;
        let answer =
            admission::review(&body, config).map_err(|e| input(format!("{shown}: {e}")))?;
        return serde_json::from_slice(&answer)
            .map_err(|e| input(format!("{shown}: invalid response: {e}")));
    }
    let Some(target) = Target::of_api_version(&api_version, &kind) else {
        return Err(input(format!(
            "{shown}: unsupported object {api_version} {kind} (expected a v1 Pod, batch/v1 Job, \
             kubeflow.org/v1beta1 or v1alpha3 Trial, or an admission.k8s.io/v1 AdmissionReview)"
        )));
    };
    let namespace = document
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let object = serde_json::to_string(&document).map_err(|e| input(format!("{shown}: {e}")))?;
    let mutation = admission::mutate(target, &object, Some(&namespace), None, config)
        .map_err(|e| input(format!("{shown}: {e}")))?;
    if patch_only {
        return serde_json::to_value(&mutation.patch).map_err(|e| input(format!("{shown}: {e}")));
    }
    json_patch::patch(&mut document, &mutation.patch).map_err(|e| {
        input(format!(
            "{shown}: the rules' patch does not apply to the object: {e}"
        ))
    })?;
    Ok(document)
}

impl RenderArgs {
    /// The YAML stream of the objects the configured mode keeps for the Profile.
    pub fn run(self) -> Result<String> {
        let Self { file, config } = self;
        let config = offline_config(config.as_deref())?;
        let (text, shown) = read_input(&file)?;
        let (document, _) = parse_document(&text, &shown)?;
        let profile = parse_profile(document, &shown)?;
        istio::to_yaml_stream(&istio::desired_objects(&profile, &config))
            .map_err(|e| CliError::Output(e.to_string()))
    }
}

fn parse_profile(document: Value, shown: &str) -> Result<Profile> {
    let (api_version, kind) = type_of(&document, shown)?;
    let group = api_version.split_once('/').map(|(group, _)| group);
    if kind != "Profile" || group != Some("kubeflow.org") {
        return Err(input(format!(
            "{shown}: expected a kubeflow.org Profile, found {api_version} {kind}"
        )));
    }
    if document
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(input(format!("{shown}: the Profile has no metadata.name")));
    }
    serde_json::from_value(document).map_err(|e| input(format!("{shown}: invalid Profile: {e}")))
}

fn input(message: String) -> CliError {
    // One line on stderr, whatever the underlying error printed.
    CliError::Input(message.replace('\n', " "))
}

/// The file's text and how to name it in messages. At most [`webhook::BODY_LIMIT`] bytes are
/// read (the largest AdmissionReview the webhook accepts), so `-f /dev/zero` ends.
fn read_input(path: &Path) -> Result<(String, String)> {
    let (reader, shown): (Box<dyn Read>, String) = if path == Path::new("-") {
        (Box::new(io::stdin().lock()), "stdin".into())
    } else {
        let shown = path.display().to_string();
        let file =
            std::fs::File::open(path).map_err(|e| input(format!("cannot read {shown}: {e}")))?;
        (Box::new(file), shown)
    };
    let mut text = String::new();
    reader
        .take(webhook::BODY_LIMIT as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| input(format!("cannot read {shown}: {e}")))?;
    if text.len() > webhook::BODY_LIMIT {
        return Err(input(format!(
            "{shown}: larger than {} bytes, the largest AdmissionReview the webhook accepts",
            webhook::BODY_LIMIT
        )));
    }
    Ok((text, shown))
}

/// Parses JSON (text starting with `{` or `[`) or YAML (one document) into a JSON value.
pub fn parse_document(text: &str, shown: &str) -> Result<(Value, Format)> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let value =
            serde_json::from_str(text).map_err(|e| input(format!("{shown}: invalid JSON: {e}")))?;
        return Ok((value, Format::Json));
    }
    let value: Value =
        serde_yaml::from_str(text).map_err(|e| input(format!("{shown}: invalid YAML: {e}")))?;
    Ok((value, Format::Yaml))
}

/// `apiVersion` and `kind` of a document that must be a Kubernetes object.
fn type_of(document: &Value, shown: &str) -> Result<(String, String)> {
    let Value::Object(map) = document else {
        return Err(input(format!(
            "{shown}: expected a Kubernetes object, found {}",
            value_type(document)
        )));
    };
    let field = |name: &str| match map.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(input(format!("{shown}: the object has no {name}"))),
    };
    Ok((field("apiVersion")?, field("kind")?))
}

fn value_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "an empty document",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Writes a value as pretty JSON or YAML, ending with a newline.
pub fn render_value(value: &Value, format: Format) -> Result<String> {
    match format {
        Format::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| CliError::Output(e.to_string())),
        Format::Yaml => serde_yaml::to_string(value).map_err(|e| CliError::Output(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_has_help_and_env() {
        use clap::CommandFactory;
        let cli = Cli::command();
        for sub in cli.get_subcommands().chain(std::iter::once(&cli)) {
            for arg in sub.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") || arg.is_positional() {
                    continue;
                }
                assert!(
                    arg.get_help().is_some(),
                    "{}: --{id} has no help",
                    sub.get_name()
                );
                assert!(
                    arg.get_env().is_some(),
                    "{}: --{id} has no env",
                    sub.get_name()
                );
            }
        }
    }

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

    #[test]
    fn manifests_flags_reach_the_install() {
        let cli = Cli::try_parse_from(["tenancy-fixer", "manifests"]).unwrap();
        let Command::Manifests(args) = cli.command else {
            panic!("not manifests")
        };
        assert_eq!(
            args.run().unwrap(),
            manifests::install_manifests(&Install::default()).unwrap()
        );

        let dir = std::env::temp_dir().join(format!("tf-cli-manifests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.crt");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "tenancy-fixer",
            "manifests",
            "--image",
            "tenancy-fixer:1.0-test",
            "--failure-policy",
            "fail",
            "--ca-bundle",
            ca.to_str().unwrap(),
        ])
        .unwrap();
        let Command::Manifests(args) = cli.command else {
            panic!("not manifests")
        };
        let out = args.run().unwrap();
        assert!(out.contains("image: tenancy-fixer:1.0-test"), "{out}");
        assert!(out.contains("failurePolicy: Fail"), "{out}");
        assert!(!out.contains("caBundle: ''"), "{out}");

        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let cli = Cli::try_parse_from([
            "tenancy-fixer",
            "manifests",
            "--ca-bundle",
            not_pem.to_str().unwrap(),
        ])
        .unwrap();
        let Command::Manifests(args) = cli.command else {
            panic!("not manifests")
        };
        let error = args.run().unwrap_err();
        assert_eq!(error.exit_code(), 1);
        assert!(
            error.to_string().contains("not a PEM certificate bundle"),
            "{error}"
        );

        let conflicting = [
            "tenancy-fixer",
            "manifests",
            "--cert-manager",
            "--ca-bundle",
            "ca.crt",
        ];
        assert!(
            Cli::try_parse_from(conflicting).is_err(),
            "cert-manager injects the CA itself"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn yaml_and_json_documents_parse() {
        let (v, f) = parse_document("apiVersion: v1\nkind: Pod\n", "t").unwrap();
        assert_eq!(
            (v, f),
            (json!({"apiVersion": "v1", "kind": "Pod"}), Format::Yaml)
        );
        let (v, f) = parse_document(" {\"kind\": \"Pod\"}", "t").unwrap();
        assert_eq!((v, f), (json!({"kind": "Pod"}), Format::Json));
        for bad in ["{not json", "a: [1", "a: 1\n---\nb: 2\n"] {
            let error = parse_document(bad, "f.yaml").unwrap_err().to_string();
            assert!(error.starts_with("f.yaml: invalid"), "{error}");
            assert!(!error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn input_is_read_up_to_the_largest_review() {
        let error = read_input(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(
            error.starts_with("/dev/zero: larger than 19922944 bytes"),
            "{error}"
        );
    }

    #[test]
    fn notebook_pod_is_labelled_and_plain_pod_is_not() {
        let config = offline_config(None).unwrap();
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "nb-0", "namespace": "alice", "labels": {"notebook-name": "nb"}},
            "spec": {"containers": [{"name": "nb", "image": "jupyter"}]}
        });
        let out = mutate_document(pod.clone(), "t", false, &config).unwrap();
        assert_eq!(out["metadata"]["labels"]["kubeflow-extension"], "true");
        assert_eq!(out["spec"]["containers"][0]["image"], "jupyter");

        let mut plain = pod;
        plain["metadata"]["labels"] = json!({"app": "x"});
        assert_eq!(
            mutate_document(plain.clone(), "t", true, &config).unwrap(),
            json!([])
        );
        assert_eq!(
            mutate_document(plain.clone(), "t", false, &config).unwrap(),
            plain
        );
    }

    #[test]
    fn unsupported_and_invalid_objects_are_input_errors() {
        let config = offline_config(None).unwrap();
        let cases = [
            (
                json!({"apiVersion": "v1", "kind": "ConfigMap"}),
                "unsupported object v1 ConfigMap",
            ),
            (json!({"kind": "Pod"}), "no apiVersion"),
            (json!([1]), "found a list"),
            (
                json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": "nope"}}),
                "cannot parse Pod",
            ),
            (
                json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
                "has no request",
            ),
        ];
        for (document, expected) in cases {
            let error = mutate_document(document, "in.json", false, &config).unwrap_err();
            assert_eq!(error.exit_code(), 1);
            assert!(error.to_string().contains(expected), "{error}");
        }
    }

    #[test]
    fn profile_needs_kind_and_name() {
        let ok = json!({"apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {"name": "alice"},
                        "spec": {"owner": {"kind": "User", "name": "alice@example.com"}}});
        let profile = parse_profile(ok, "p").unwrap();
        assert_eq!(istio::owner_of(&profile), "alice@example.com");
        let no_name = json!({"apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {}});
        assert!(
            parse_profile(no_name, "p")
                .unwrap_err()
                .to_string()
                .contains("metadata.name")
        );
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}});
        assert!(
            parse_profile(pod, "p")
                .unwrap_err()
                .to_string()
                .contains("expected a kubeflow.org Profile")
        );
    }
}
