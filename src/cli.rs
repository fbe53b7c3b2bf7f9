//! Command line: `serve` runs the webhook (and the profile controller); `mutate` and `render`
//! apply the pure core to files, offline, so a rule or a mode can be tried without a cluster.
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
    controller,
    demo::{self, DemoOptions},
    istio,
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
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Use this cluster instead of starting testenv (its API server must reach 127.0.0.1).
    #[arg(long, value_name = "PATH", env = "TENANCY_FIXER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The testenv binary (`testenv/build.sh` builds it).
    #[arg(long, value_name = "FILE", default_value = "target/testenv/testenv", env = "TENANCY_FIXER_TESTENV")]
    pub testenv: PathBuf,
    /// Directory of CRDs testenv serves; repeat to add more (deploy/crds/legacy-istio for Istio < 1.6).
    #[arg(long, value_name = "DIR", default_value = "deploy/crds", env = "TENANCY_FIXER_CRDS", value_delimiter = ',')]
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
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8443", env = "TENANCY_FIXER_LISTEN")]
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
}

#[derive(Debug, Args)]
pub struct MutateArgs {
    /// YAML or JSON file holding one Pod, batch/v1 Job, Trial or AdmissionReview (`-` reads stdin).
    #[arg(short = 'f', long = "file", value_name = "FILE", env = "TENANCY_FIXER_MUTATE_FILE")]
    pub file: PathBuf,
    /// Settings file (YAML); `auto` settings resolve to the modern modes.
    #[arg(long, value_name = "FILE", env = "TENANCY_FIXER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print only the JSON Patch (`[]` when no rule applies) instead of the mutated object.
    #[arg(long, env = "TENANCY_FIXER_MUTATE_PATCH")]
    pub patch: bool,
    /// Output format (default: the input's format).
    #[arg(short = 'o', long = "output", value_enum, value_name = "FORMAT", env = "TENANCY_FIXER_OUTPUT")]
    pub output: Option<Format>,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// YAML or JSON file holding one kubeflow.org Profile (`-` reads stdin).
    #[arg(short = 'f', long = "file", value_name = "FILE", env = "TENANCY_FIXER_RENDER_FILE")]
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
        let Self { log_format, command } = self;
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
        let Self { kubeconfig, testenv, crds, config } = self;
        let settings = load_settings(config.as_deref())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(CliError::Runtime)?;
        runtime
            .block_on(demo::run(DemoOptions { kubeconfig, testenv, crds, settings }))
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
        let Self { config: _, listen, tls_cert, tls_key, kubeconfig, no_controller } = self;
        let (config, client) = if no_controller {
            tracing::info!("controller disabled: auto settings resolve to the modern modes");
            (settings.resolve(&Capabilities::modern()), None)
        } else {
            let client = kube_client(kubeconfig.as_deref()).await?;
            let capabilities = controller::discover(&client).await.map_err(CliError::Discovery)?;
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
        let server = webhook::serve(listen, tls, config.clone(), shutdown);

        let Some(client) = client else {
            return Ok(server.await?);
        };
        let mut controller = tokio::spawn(controller::run(client, config));
        tokio::pin!(server);
        tokio::select! {
            served = &mut server => {
                controller.abort();
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
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .map_err(|source| CliError::Kubeconfig { path: path.into(), source })?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|source| CliError::Kubeconfig { path: path.into(), source })?;
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
        let Self { file, config, patch, output } = self;
        let config = offline_config(config.as_deref())?;
        let (text, shown) = read_input(&file)?;
        let (document, input_format) = parse_document(&text, &shown)?;
        let format = output.unwrap_or(input_format);
        render_value(&mutate_document(document, &shown, patch, &config)?, format)
    }
}

/// Mutates one parsed document: an AdmissionReview is answered as the webhook would; an object
/// is returned changed (or its patch, with `patch_only`).
pub fn mutate_document(mut document: Value, shown: &str, patch_only: bool, config: &Config) -> Result<Value> {
    let (api_version, kind) = type_of(&document, shown)?;
    if kind == "AdmissionReview" {
        let body = serde_json::to_vec(&document).map_err(|e| input(format!("{shown}: {e}")))?;
        let answer = admission::review(&body, config).map_err(|e| input(format!("{shown}: {e}")))?;
        return serde_json::from_slice(&answer).map_err(|e| input(format!("{shown}: invalid response: {e}")));
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
    let mutation = admission::mutate(target, &object, Some(&namespace), config)
        .map_err(|e| input(format!("{shown}: {e}")))?;
    if patch_only {
        return serde_json::to_value(&mutation.patch).map_err(|e| input(format!("{shown}: {e}")));
    }
    json_patch::patch(&mut document, &mutation.patch)
        .map_err(|e| input(format!("{shown}: the rules' patch does not apply to the object: {e}")))?;
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
        return Err(input(format!("{shown}: expected a kubeflow.org Profile, found {api_version} {kind}")));
    }
    if document.pointer("/metadata/name").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(input(format!("{shown}: the Profile has no metadata.name")));
    }
    serde_json::from_value(document).map_err(|e| input(format!("{shown}: invalid Profile: {e}")))
}

fn input(message: String) -> CliError {
    // One line on stderr, whatever the underlying error printed.
    CliError::Input(message.replace('\n', " "))
}

/// The file's text and how to name it in messages.
fn read_input(path: &Path) -> Result<(String, String)> {
    if path == Path::new("-") {
        let mut text = String::new();
        io::stdin().read_to_string(&mut text).map_err(|e| input(format!("cannot read stdin: {e}")))?;
        return Ok((text, "stdin".into()));
    }
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| input(format!("cannot read {shown}: {e}")))?;
    Ok((text, shown))
}

/// Parses JSON (text starting with `{` or `[`) or YAML (one document) into a JSON value.
pub fn parse_document(text: &str, shown: &str) -> Result<(Value, Format)> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let value = serde_json::from_str(text).map_err(|e| input(format!("{shown}: invalid JSON: {e}")))?;
        return Ok((value, Format::Json));
    }
    let value: Value = serde_yaml::from_str(text).map_err(|e| input(format!("{shown}: invalid YAML: {e}")))?;
    Ok((value, Format::Yaml))
}

/// `apiVersion` and `kind` of a document that must be a Kubernetes object.
fn type_of(document: &Value, shown: &str) -> Result<(String, String)> {
    let Value::Object(map) = document else {
        return Err(input(format!("{shown}: expected a Kubernetes object, found {}", value_type(document))));
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
                assert!(arg.get_help().is_some(), "{}: --{id} has no help", sub.get_name());
                assert!(arg.get_env().is_some(), "{}: --{id} has no env", sub.get_name());
            }
        }
    }

    #[test]
    fn yaml_and_json_documents_parse() {
        let (v, f) = parse_document("apiVersion: v1\nkind: Pod\n", "t").unwrap();
        assert_eq!((v, f), (json!({"apiVersion": "v1", "kind": "Pod"}), Format::Yaml));
        let (v, f) = parse_document(" {\"kind\": \"Pod\"}", "t").unwrap();
        assert_eq!((v, f), (json!({"kind": "Pod"}), Format::Json));
        for bad in ["{not json", "a: [1", "a: 1\n---\nb: 2\n"] {
            let error = parse_document(bad, "f.yaml").unwrap_err().to_string();
            assert!(error.starts_with("f.yaml: invalid"), "{error}");
            assert!(!error.contains('\n'), "{error}");
        }
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
        assert_eq!(mutate_document(plain.clone(), "t", true, &config).unwrap(), json!([]));
        assert_eq!(mutate_document(plain.clone(), "t", false, &config).unwrap(), plain);
    }

    #[test]
    fn unsupported_and_invalid_objects_are_input_errors() {
        let config = offline_config(None).unwrap();
        let cases = [
            (json!({"apiVersion": "v1", "kind": "ConfigMap"}), "unsupported object v1 ConfigMap"),
            (json!({"kind": "Pod"}), "no apiVersion"),
            (json!([1]), "found a list"),
            (json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": "nope"}}), "cannot parse Pod"),
            (json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}), "has no request"),
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
        assert!(parse_profile(no_name, "p").unwrap_err().to_string().contains("metadata.name"));
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}});
        assert!(parse_profile(pod, "p").unwrap_err().to_string().contains("expected a kubeflow.org Profile"));
    }
}
