//! The admission webhook's HTTPS server: AdmissionReview bodies in, AdmissionReview bodies out.
//!
//! Every `/mutate*` route answers through [`admission::review`], which dispatches on the
//! request's kind (a kind we do not handle is allowed without a patch). Only a body that is not
//! an AdmissionReview at all gets HTTP 400, with the reason as one line of plain text. The
//! handler does no I/O besides the log line: the review is synchronous CPU work of a few
//! microseconds, so it runs inline on the runtime.

use std::{future::Future, io, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use axum_server::Handle;

use crate::{
    admission::{self, AdmissionError},
    config::Config,
};

pub mod tls;

pub use tls::TlsFiles;

/// Largest request body accepted (the API server caps objects at 3 MiB; reviews carry two).
pub const BODY_LIMIT: usize = 8 * 1024 * 1024;
/// How long open requests may take to finish once shutdown has begun.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Paths the webhook configurations point at. All of them accept any kind.
pub const MUTATE_PATHS: [&str; 4] = ["/mutate", "/mutate/pods", "/mutate/jobs", "/mutate/trials"];

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot load TLS certificate {} and key {}: {source}", cert.display(), key.display())]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("webhook server failed: {0}")]
    Serve(#[source] io::Error),
}

pub type Result<T, E = WebhookError> = std::result::Result<T, E>;

/// The webhook's routes: `POST /mutate`, `/mutate/pods`, `/mutate/jobs`, `/mutate/trials`,
/// and `GET /healthz`, `/readyz`.
pub fn router(config: Arc<Config>) -> Router {
    let mut router = Router::new();
    for path in MUTATE_PATHS {
        router = router.route(path, post(mutate));
    }
    router
        .route("/healthz", get(ok))
        .route("/readyz", get(ok))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(config)
}

async fn ok() -> &'static str {
    "ok"
}

async fn mutate(State(config): State<Arc<Config>>, body: Bytes) -> Response {
    match admission::review(&body, &config) {
        Ok(answer) => ([(header::CONTENT_TYPE, "application/json")], answer).into_response(),
        Err(error) => {
            let status = match error {
                AdmissionError::Serialize(_) => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_REQUEST,
            };
            tracing::warn!(%error, status = status.as_u16(), bytes = body.len(), "rejected webhook request");
            let reason = error.to_string().replace('\n', " ");
            (
                status,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!("{reason}\n"),
            )
                .into_response()
        }
    }
}

/// Read buffer in front of rustls on each connection. rustls reads at most 4 KiB per call, so
/// a 10 KB review took three `recv` calls (and as many buffer resizes); through this buffer one
/// `recv` takes what has arrived. 64 connections hold 2 MiB. Measured on the reference
/// webhook (bench/README.md): 37 -> 24 µs of server CPU per 10 KB review.
pub const READ_BUFFER: usize = 32 * 1024;

/// The transport under TLS: `TCP_NODELAY` (answers leave at once) and [`READ_BUFFER`].
#[derive(Clone, Copy, Debug, Default)]
pub struct TransportAcceptor;

impl<S> axum_server::accept::Accept<tokio::net::TcpStream, S> for TransportAcceptor {
    type Stream = tokio::io::BufReader<tokio::net::TcpStream>;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Self::Stream, S)>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        let _ = stream.set_nodelay(true);
        std::future::ready(Ok((
            tokio::io::BufReader::with_capacity(READ_BUFFER, stream),
            service,
        )))
    }
}

/// The HTTPS server on `listener`: rustls over [`TransportAcceptor`]. The benchmark's
/// reference webhook serves through this too, so the two differ only in their handlers.
pub fn https_server(
    listener: std::net::TcpListener,
    rustls: axum_server::tls_rustls::RustlsConfig,
) -> io::Result<
    axum_server::Server<SocketAddr, axum_server::tls_rustls::RustlsAcceptor<TransportAcceptor>>,
> {
    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(rustls).acceptor(TransportAcceptor);
    Ok(axum_server::from_tcp(listener)?.acceptor(acceptor))
}

/// Binds `addr` and serves the webhook over TLS until `shutdown` completes, then stops
/// accepting and gives open requests [`SHUTDOWN_GRACE`] to finish. The certificate files are
/// watched and reloaded when they change.
pub async fn serve(
    addr: SocketAddr,
    tls: TlsFiles,
    config: Arc<Config>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| WebhookError::Bind { addr, source })?;
    serve_listener(listener, tls, config, shutdown).await
}

/// Like [`serve`], on a listener bound by the caller (e.g. to port 0, reading the port first).
/// Logs `listening on https://ADDR` once the listener accepts connections.
pub async fn serve_listener(
    listener: std::net::TcpListener,
    tls: TlsFiles,
    config: Arc<Config>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let rustls = tls.load().await?;
    let local = listener.local_addr().map_err(WebhookError::Serve)?;
    let server = https_server(listener, rustls.clone()).map_err(|source| WebhookError::Bind {
        addr: local,
        source,
    })?;

    let handle = Handle::new();
    let stopper = tokio::spawn({
        let handle = handle.clone();
        async move {
            shutdown.await;
            tracing::info!(
                grace_seconds = SHUTDOWN_GRACE.as_secs(),
                "shutting down the webhook server"
            );
            handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
        }
    });
    let reloader = tokio::spawn(tls::watch(rustls, tls, tls::RELOAD_INTERVAL));

    // The socket is bound and listening already: connections made from now on are served.
    tracing::info!("listening on https://{local}");
    let result = server
        .handle(handle)
        .serve(router(config).into_make_service())
        .await;
    stopper.abort();
    reloader.abort();
    result.map_err(WebhookError::Serve)?;
    tracing::info!("webhook server stopped");
    Ok(())
}
