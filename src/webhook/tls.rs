//! The serving certificate: loaded from PEM files, and reloaded when they change (cert-manager
//! or a Secret volume rotating it) without dropping connections or restarting.

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum_server::tls_rustls::RustlsConfig;
use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{
        CertificateDer, PrivateKeyDer,
        pem::{self, PemObject},
    },
};
use tokio::io::AsyncReadExt;

use super::WebhookError;

/// How often the certificate files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Largest certificate or key file read (a chain of a few certificates takes a few KiB).
pub const MAX_PEM_FILE: usize = 1024 * 1024;

/// What is wrong with the certificate or key file, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is larger than {MAX_PEM_FILE} bytes: not a PEM file", path.display())]
    TooLarge { path: PathBuf },
    #[error("{} holds no PEM certificate (no -----BEGIN CERTIFICATE----- block)", path.display())]
    NoCertificate { path: PathBuf },
    #[error(
        "{} holds no PEM private key (no -----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY block)",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("{} is not valid PEM: {source}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("the certificate and key do not make a TLS identity: {0}")]
    Identity(#[source] rustls::Error),
}

/// PEM files of the serving certificate (chain) and its private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
        }
    }

    /// Reads both files into a rustls server configuration (TLS 1.3 and 1.2, ALPN http/1.1,
    /// the process's crypto provider, else ring).
    pub async fn load(&self) -> Result<RustlsConfig, WebhookError> {
        let config = self
            .server_config()
            .await
            .map_err(|source| self.error(source))?;
        Ok(RustlsConfig::from_config(Arc::new(config)))
    }

    async fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let cert = read_pem_file(&self.cert).await?;
        let key = read_pem_file(&self.key).await?;
        server_config(&cert, &self.cert, &key, &self.key)
    }

    fn error(&self, source: TlsError) -> WebhookError {
        WebhookError::Tls {
            cert: self.cert.clone(),
            key: self.key.clone(),
            source,
        }
    }

    /// What identifies the files' current contents without reading them.
    async fn stamp(&self) -> Option<Stamp> {
        Some(Stamp {
            cert: file_stamp(&self.cert).await?,
            key: file_stamp(&self.key).await?,
        })
    }
}

/// Where the serving certificate comes from.
pub enum Tls {
    /// PEM files, watched and reloaded when they change.
    Files(TlsFiles),
    /// A configuration its owner reloads (self-managed certificates, `crate::runtime`).
    Managed(RustlsConfig),
}

impl From<TlsFiles> for Tls {
    fn from(files: TlsFiles) -> Self {
        Tls::Files(files)
    }
}

/// A rustls server configuration (TLS 1.3 and 1.2, ALPN http/1.1, the process's crypto
/// provider, else ring) from a PEM certificate chain and key; `cert_origin` and `key_origin`
/// name them in errors.
pub fn server_config(
    cert: &[u8],
    cert_origin: &Path,
    key: &[u8],
    key_origin: &Path,
) -> Result<ServerConfig, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| pem_error(cert_origin, source))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_origin.to_path_buf(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: key_origin.to_path_buf(),
        },
        source => pem_error(key_origin, source),
    })?;
    let expiry = crate::certs::not_after(chain[0].as_ref());
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
        .map_err(TlsError::Identity)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if let Some(expiry) = expiry {
        crate::metrics::metrics().certificate_expires(expiry);
    }
    Ok(config)
}

fn pem_error(path: &Path, source: pem::Error) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        source,
    }
}

/// The file's bytes, refusing more than [`MAX_PEM_FILE`] (a path to a device or a log file
/// must not be read without end).
async fn read_pem_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_error = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(read_error)?;
    if bytes.len() > MAX_PEM_FILE {
        return Err(TlsError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Modification time and size of both files. `metadata` follows symlinks, so the atomic
/// `..data` swap of a Kubernetes Secret volume shows up as a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    cert: (SystemTime, u64),
    key: (SystemTime, u64),
}

async fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = tokio::fs::metadata(path).await.ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Checks the files every `interval` and reloads `config` when they changed. A reload that
/// fails (e.g. the key was not written yet) keeps the current certificate and is retried at
/// the next check. Runs until the task is dropped or aborted.
pub async fn watch(config: RustlsConfig, files: TlsFiles, interval: Duration) {
    let mut loaded = files.stamp().await;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate
    loop {
        ticker.tick().await;
        let current = files.stamp().await;
        if current.is_none() || current == loaded {
            continue;
        }
        match files.server_config().await {
            Ok(server_config) => {
                config.reload_from_config(Arc::new(server_config));
                tracing::info!(cert = %files.cert.display(), key = %files.key.display(), "reloaded TLS certificate");
                loaded = current;
            }
            Err(error) => {
                tracing::warn!(cert = %files.cert.display(), key = %files.key.display(), %error, "cannot reload TLS certificate; keeping the current one");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> TlsFiles {
        let certified = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let files = TlsFiles::new(dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&files.cert, certified.cert.pem()).unwrap();
        std::fs::write(&files.key, certified.signing_key.serialize_pem()).unwrap();
        files
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tenancy-fixer-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn missing_files_name_both_paths() {
        let files = TlsFiles::new("/nonexistent/tls.crt", "/nonexistent/tls.key");
        let error = files.load().await.err().unwrap().to_string();
        assert!(
            error.contains("/nonexistent/tls.crt") && error.contains("/nonexistent/tls.key"),
            "{error}"
        );
    }

    /// The load error's message, which must name the file at fault and what is wrong with it.
    async fn load_error(files: &TlsFiles) -> String {
        let error = files.load().await.expect_err("must not load");
        format!("{error}: {}", std::error::Error::source(&error).unwrap())
    }

    #[tokio::test]
    async fn unusable_files_say_which_and_what_is_wrong() {
        let dir = temp_dir("unusable");
        let good = write_pair(&dir, "good.example");
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello, not a certificate\n").unwrap();

        let cert_not_pem = TlsFiles::new(&not_pem, &good.key);
        let error = load_error(&cert_not_pem).await;
        assert!(
            error.contains(&format!("{} holds no PEM certificate", not_pem.display())),
            "{error}"
        );

        let key_not_pem = TlsFiles::new(&good.cert, &not_pem);
        let error = load_error(&key_not_pem).await;
        assert!(
            error.contains(&format!("{} holds no PEM private key", not_pem.display())),
            "{error}"
        );

        // The two files swapped: the key file holds no certificate.
        let swapped = TlsFiles::new(&good.key, &good.cert);
        let error = load_error(&swapped).await;
        assert!(
            error.contains(&format!("{} holds no PEM certificate", good.key.display())),
            "{error}"
        );

        let broken = dir.join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
        let error = load_error(&TlsFiles::new(&broken, &good.key)).await;
        assert!(
            error.contains(&format!("{} is not valid PEM", broken.display())),
            "{error}"
        );

        let endless = TlsFiles::new("/dev/zero", &good.key);
        let error = load_error(&endless).await;
        assert!(error.contains("/dev/zero is larger than"), "{error}");

        // A certificate with someone else's key.
        let other = temp_dir("unusable-other");
        let other = write_pair(&other, "other.example");
        let error = load_error(&TlsFiles::new(&good.cert, &other.key)).await;
        assert!(error.contains("do not make a TLS identity"), "{error}");

        assert!(good.load().await.is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn changed_files_are_reloaded_and_broken_ones_are_not() {
        let dir = temp_dir("reload");
        let files = write_pair(&dir, "first.example");
        let config = files.load().await.unwrap();
        let first = config.get_inner();
        let watcher = tokio::spawn(watch(
            config.clone(),
            files.clone(),
            Duration::from_millis(50),
        ));

        // A half-written pair (garbage key) is not loaded.
        std::fs::write(&files.key, "not a key").unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            Arc::ptr_eq(&first, &config.get_inner()),
            "a broken key must not replace the certificate"
        );

        write_pair(&dir, "second.example");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while Arc::ptr_eq(&first, &config.get_inner()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "certificate was not reloaded"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        watcher.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
