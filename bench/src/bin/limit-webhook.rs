//! The hand-tuned limit: what a webhook doing the notebook mutation costs at the least on the
//! stack of `tenancy-fixer serve` (the same `webhook::https_server`, runtime, allocator and body
//! limit as `reference-webhook`), answering with [`tenancy_fixer_bench::limit::review`].
//! `webhook-load` reports tenancy-fixer's throughput as a ratio of this one's for every review
//! body.

use std::{net::SocketAddr, path::PathBuf};

use axum::{
    Router,
    body::Bytes,
    extract::DefaultBodyLimit,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use clap::Parser;

#[global_allocator]
static ALLOC: tenancy_fixer_bench::Allocator = tenancy_fixer_bench::ALLOCATOR;

/// A webhook that answers notebook pods with a fixed patch and everything else without one.
#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    #[arg(long)]
    tls_cert: PathBuf,
    #[arg(long)]
    tls_key: PathBuf,
}

async fn mutate(body: Bytes) -> Response {
    match tenancy_fixer_bench::limit::review(&body) {
        Some(answer) => ([(header::CONTENT_TYPE, "application/json")], answer).into_response(),
        None => (StatusCode::BAD_REQUEST, "not an AdmissionReview\n").into_response(),
    }
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
