//! The minimal reference webhook: the same TLS and HTTP stack as `tenancy-fixer serve` (the
//! same `webhook::https_server`: axum-server, rustls/ring, TCP_NODELAY and read buffer;
//! certificate from PEM files; tokio multi-thread runtime with one worker per core; the same
//! body limit; the same allocator), but it parses nothing: every POST gets a fixed "allowed"
//! AdmissionReview. `webhook-load` reports the real webhook's throughput as a ratio of this
//! one's, so the ratio measures our per-request work, not the transport.

use std::{net::SocketAddr, path::PathBuf};

use axum::{
    Router,
    body::Bytes,
    extract::DefaultBodyLimit,
    http::header,
    response::IntoResponse,
    routing::{get, post},
};
use clap::Parser;

#[global_allocator]
static ALLOC: tenancy_fixer_bench::Allocator = tenancy_fixer_bench::ALLOCATOR;

/// A webhook that answers every review with a fixed `allowed: true`.
#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    #[arg(long)]
    tls_cert: PathBuf,
    #[arg(long)]
    tls_key: PathBuf,
}

const ANSWER: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"","allowed":true}}"#;

async fn mutate(body: Bytes) -> impl IntoResponse {
    // The body is received in full (as the real webhook's extractor does) and dropped.
    drop(body);
    ([(header::CONTENT_TYPE, "application/json")], ANSWER)
}

async fn ok() -> &'static str {
    "ok"
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let tls =
            axum_server::tls_rustls::RustlsConfig::from_pem_file(&args.tls_cert, &args.tls_key)
                .await?;
        let listener = std::net::TcpListener::bind(args.listen)?;
        let local = listener.local_addr()?;
        let server = tenancy_fixer::webhook::https_server(listener, tls, &Default::default())?;
        let mut router = Router::new();
        for path in tenancy_fixer::webhook::MUTATE_PATHS {
            router = router.route(path, post(mutate));
        }
        let router = router
            .route("/healthz", get(ok))
            .layer(DefaultBodyLimit::max(tenancy_fixer::webhook::BODY_LIMIT));
        eprintln!("listening on https://{local}");
        server.serve(router.into_make_service()).await?;
        anyhow::Ok(())
    })
}
