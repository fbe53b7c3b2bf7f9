//! `manifests`: the install manifests as one YAML stream, or as the kustomize tree of `deploy/`.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{CliError, Result, input, load_settings};
use crate::manifests::{self, Certificates, FailurePolicy, Install};

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
    /// Write the kustomize tree (base, default install, overlays/cert-manager) into DIR instead, e.g. deploy.
    #[arg(
        long,
        value_name = "DIR",
        env = "TENANCY_FIXER_KUSTOMIZE",
        conflicts_with_all = ["ca_bundle", "cert_manager"]
    )]
    pub kustomize: Option<PathBuf>,
}

impl ManifestsArgs {
    /// The install manifests as a YAML stream; with `--kustomize`, the paths of the files written.
    pub fn run(self) -> Result<String> {
        let Self {
            image,
            ca_bundle,
            cert_manager,
            failure_policy,
            config,
            kustomize,
        } = self;
        let install = Install {
            image,
            failure_policy,
            settings: load_settings(config.as_deref())?,
        };
        let output = |e: manifests::Error| CliError::Output(e.to_string());
        if let Some(dir) = kustomize {
            return write_tree(&dir, manifests::kustomize_tree(&install).map_err(output)?);
        }
        let certificates = match ca_bundle {
            Some(path) => Certificates::Files {
                ca_bundle: read_ca_bundle(&path)?,
            },
            None if cert_manager => Certificates::CertManager,
            None => Certificates::SelfManaged,
        };
        manifests::install_manifests(&install, &certificates).map_err(output)
    }
}

/// Writes `files` (paths relative to `dir`) and lists them.
fn write_tree(dir: &Path, files: Vec<manifests::TreeFile>) -> Result<String> {
    let mut written = String::new();
    for manifests::TreeFile { path, text } in files {
        let path = dir.join(path);
        let shown = path.display();
        let unwritable = |e: std::io::Error| CliError::Output(format!("cannot write {shown}: {e}"));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(unwritable)?;
        }
        std::fs::write(&path, text).map_err(unwritable)?;
        written.push_str(&format!("{shown}\n"));
    }
    Ok(written)
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn manifests_flags_reach_the_install() {
        let cli = Cli::try_parse_from(["tenancy-fixer", "manifests"]).unwrap();
        let Command::Manifests(args) = cli.command else {
            panic!("not manifests")
        };
        assert_eq!(
            args.run().unwrap(),
            manifests::install_manifests(&Install::default(), &Certificates::SelfManaged).unwrap()
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
        let empty_bundles = out
            .lines()
            .filter(|line| line.trim_start().starts_with("caBundle:"))
            .filter(|line| line.trim_end().ends_with("''") || line.trim_end().ends_with("\"\""))
            .count();
        assert_eq!(empty_bundles, 0, "{out}");
        assert!(out.contains("caBundle: "), "{out}");

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
        for source in ["--cert-manager", "--ca-bundle=ca.crt"] {
            let args = [
                "tenancy-fixer",
                "manifests",
                "--kustomize",
                "deploy",
                source,
            ];
            assert!(
                Cli::try_parse_from(args).is_err(),
                "the tree holds every certificate source: {source}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
