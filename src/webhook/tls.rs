//! The serving certificate: loaded from PEM files, and reloaded when they change (cert-manager
//! or a Secret volume rotating it) without dropping connections or restarting.

use std::{
    io,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use axum_server::tls_rustls::RustlsConfig;

use super::WebhookError;

/// How often the certificate files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

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

    /// Reads both files into a rustls server configuration (TLS 1.3 and 1.2, ALPN h2 and
    /// http/1.1, ring provider).
    pub async fn load(&self) -> Result<RustlsConfig, WebhookError> {
        RustlsConfig::from_pem_file(&self.cert, &self.key)
            .await
            .map_err(|source| self.error(source))
    }

    fn error(&self, source: io::Error) -> WebhookError {
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
        match config.reload_from_pem_file(&files.cert, &files.key).await {
            Ok(()) => {
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
    use std::sync::Arc;

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
