//! Helpers shared by the webhook HTTP tests and the CLI tests: a test CA and serving
//! certificate (SAN IP 127.0.0.1), an HTTPS client trusting that CA, and fixture loading.
#![allow(dead_code)] // each test binary uses its own part

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, header::HeaderMap};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::Value;

pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A fresh directory under the system temp dir, unique per call.
pub fn temp_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!(
        "tenancy-fixer-test-{tag}-{}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A CA and a serving certificate for 127.0.0.1 signed by it, written as PEM files.
pub struct TestTls {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca_pem: String,
}

impl TestTls {
    pub fn new() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tenancy-fixer test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "tenancy-fixer");
        let cert = params.signed_by(&key, &issuer).unwrap();

        let dir = temp_dir("tls");
        let tls = TestTls {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            ca_pem: ca_cert.pem(),
            dir,
        };
        std::fs::write(&tls.cert, cert.pem()).unwrap();
        std::fs::write(&tls.key, key.serialize_pem()).unwrap();
        tls
    }

    /// Root store holding only the test CA.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        let der = pem_to_der(&self.ca_pem);
        roots
            .add(rustls::pki_types::CertificateDer::from(der))
            .unwrap();
        roots
    }

    pub fn client_config(&self) -> rustls::ClientConfig {
        rustls::ClientConfig::builder()
            .with_root_certificates(self.roots())
            .with_no_client_auth()
    }

    /// An HTTP/1.1 client over TLS that trusts only the test CA.
    pub fn client(&self) -> HttpsClient {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(self.client_config())
            .https_only()
            .enable_http1()
            .build();
        HttpsClient {
            inner: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl Drop for TestTls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

pub struct HttpsClient {
    inner: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// A response with its body read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn content_type(&self) -> &str {
        self.headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

impl HttpsClient {
    pub async fn request(&self, method: &str, url: &str, body: impl Into<Bytes>) -> Reply {
        let request = Request::builder()
            .method(method)
            .uri(url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.into()))
            .unwrap();
        let response = self
            .inner
            .request(request)
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e:?}"));
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn post(&self, url: &str, body: impl Into<Bytes>) -> Reply {
        self.request("POST", url, body).await
    }

    pub async fn get(&self, url: &str) -> Reply {
        self.request("GET", url, Bytes::new()).await
    }
}

pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// A fixture under tests/data, parsed.
pub fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture_path(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Shared config handle for the server under test.
pub fn config(yaml: &str) -> Arc<tenancy_fixer::config::Config> {
    Arc::new(
        tenancy_fixer::config::Settings::from_yaml(yaml, "test")
            .unwrap()
            .resolve(&tenancy_fixer::config::Capabilities::modern()),
    )
}
