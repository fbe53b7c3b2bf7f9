//! Command line: `serve` runs the webhook and the profile controller (the runtime lives in
//! [`crate::runtime`]); `mutate` and `render` apply the pure core to files, offline, so a rule or
//! a mode can be tried without a cluster; `manifests` prints the install manifests,
//! `release-finalizers` helps uninstall an earlier version, `demo` narrates a local run, `check`
//! reports what is wrong in a cluster. One file per subcommand; this one holds what they share.
//!
//! Every flag also reads an environment variable (`TENANCY_FIXER_*`), for Deployments.
//! Exit codes: 0 success, 1 bad input or runtime failure (or `check` found problems), 2 bad
//! configuration.

mod check;
mod demo;
mod document;
mod manifests;
mod mutate;
mod release_finalizers;
mod render;
mod serve;

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
};

use clap::{Parser, Subcommand};

pub use self::{
    check::{CheckArgs, Output as CheckOutput},
    demo::DemoArgs,
    document::{Format, parse_document, render_value},
    manifests::ManifestsArgs,
    mutate::{MutateArgs, mutate_document},
    release_finalizers::ReleaseFinalizersArgs,
    render::RenderArgs,
    serve::ServeArgs,
};
use crate::{
    config::{Capabilities, Config, ConfigError, Settings},
    controller, demo as local_demo, runtime,
    telemetry::{self, LogFormat},
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
    Serve(Box<ServeArgs>),
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
    /// Read a cluster and report what is wrong: APIs and modes, the webhook, Profiles' objects, known traps (exit 1 on problems).
    Check(CheckArgs),
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
    /// Boxed: the runtime's errors are large, every other result here is small.
    #[error(transparent)]
    Serve(Box<runtime::Error>),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("cannot write output: {0}")]
    Output(String),
    #[error("demo failed: {0}")]
    Demo(#[source] local_demo::DemoError),
    #[error("cannot release the finalizers: {0}")]
    ReleaseFinalizers(#[source] controller::Error),
    #[error("cannot discover the cluster's APIs: {0}")]
    Discovery(#[source] controller::Error),
    #[error("cannot read {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// `check` printed its report and found problems.
    #[error("check found {errors} error(s) and {warnings} warning(s)")]
    ProblemsFound { errors: usize, warnings: usize },
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

impl From<runtime::Error> for CliError {
    fn from(error: runtime::Error) -> Self {
        CliError::Serve(Box::new(error))
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
            Command::Check(args) => {
                // The client's own error lines would repeat the one line `check` ends with.
                telemetry::init(log_format, "warn,kube_client=off");
                let (out, report) = args.run()?;
                write_stdout(&out)?;
                let summary = report.summary;
                match summary.problems() {
                    0 => Ok(()),
                    _ => Err(CliError::ProblemsFound {
                        errors: summary.errors,
                        warnings: summary.warnings,
                    }),
                }
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

fn input(message: String) -> CliError {
    // One line on stderr, whatever the underlying error printed.
    CliError::Input(message.replace('\n', " "))
}

/// A client for the kubeconfig given, else the in-cluster config, KUBECONFIG or ~/.kube/config.
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
