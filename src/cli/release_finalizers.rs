//! `release-finalizers`: frees the Profiles an earlier version put its finalizer on.

use std::path::PathBuf;

use clap::Args;

use super::{CliError, Result, kube_client};
use crate::controller;

#[derive(Debug, Args)]
pub struct ReleaseFinalizersArgs {
    /// Kubeconfig to reach the cluster with (default: in-cluster config, else KUBECONFIG or ~/.kube/config).
    #[arg(long, value_name = "PATH", env = "TENANCY_FIXER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
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
