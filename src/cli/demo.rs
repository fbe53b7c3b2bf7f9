//! `demo`: everything on a local control plane, narrated (the demo itself: [`crate::demo`]).

use std::path::PathBuf;

use clap::Args;

use super::{CliError, Result, load_settings};
use crate::demo::{self, DemoOptions};

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
