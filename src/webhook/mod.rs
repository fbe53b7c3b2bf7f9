//! The admission webhook's HTTPS server: AdmissionReview bodies in, AdmissionReview bodies out.
//!
//! Every `/mutate*` route answers through [`admission::review`], which dispatches on the
//! request's kind (a kind we do not handle is allowed without a patch). Only a body that is not
//! an AdmissionReview at all gets HTTP 400, with the reason as one line of plain text. The
//! handler does no I/O besides the log line. What a client can make the server hold is bounded
//! by [`Limits`] (see [`limits`]); HTTP/1.1 only, as the API server calls webhooks.

use std::{
    fmt::Display,
    future::Future,
    io,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use axum_server::Handle;

use crate::{
    admission::{self, AdmissionError},
    config::Config,
    metrics::metrics,
};

pub mod limits;
pub mod tls;

pub use limits::{BODY_LIMIT, Limits};
pub use tls::{Tls, TlsError, TlsFiles};

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
        source: TlsError,
    },
    #[error("webhook server failed: {0}")]
    Serve(#[source] io::Error),
}

pub type Result<T, E = WebhookError> = std::result::Result<T, E>;

/// What every request handler shares.
struct Shared {
    config: Arc<Config>,
    bodies: limits::BodyReader,
}

/// The webhook's routes: `POST /mutate`, `/mutate/pods`, `/mutate/jobs`, `/mutate/trials`,
/// and `GET /healthz`, `/readyz`.
pub fn router(config: Arc<Config>, limits: &Limits) -> Router {
    let mut router = Router::new();
    for path in MUTATE_PATHS {
        router = router.route(path, post(mutate));
    }
    router
        .route("/healthz", get(ok))
        .route("/readyz", get(ok))
        .with_state(Arc::new(Shared {
            config,
            bodies: limits::BodyReader::new(limits),
        }))
}

async fn ok() -> &'static str {
    "ok"
}

async fn mutate(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    // The route matched one of these paths: a static name for the metrics' labels.
    let webhook = MUTATE_PATHS
        .into_iter()
        .find(|path| *path == request.uri().path())
        .unwrap_or(MUTATE_PATHS[0]);
    let body = match shared.bodies.read(request).await {
        Ok(body) => body,
        Err(error) => return refusal(webhook, error.status(), error, None),
    };
    let bytes = body.len();
    let started = Instant::now();
    let reviewed = if bytes <= limits::INLINE_REVIEW {
        admission::review(&body, &shared.config)
    } else {
        // A large body takes milliseconds to parse: off the runtime's workers. The body (and
        // its share of the budget) lives until the review is done.
        let config = shared.config.clone();
        match tokio::task::spawn_blocking(move || admission::review(&body, &config)).await {
            Ok(reviewed) => reviewed,
            Err(error) => {
                return refusal(
                    webhook,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    error,
                    Some(bytes),
                );
            }
        }
    };
    match reviewed {
        Ok(reviewed) => {
            let seconds = started.elapsed().as_secs_f64();
            metrics().reviewed(webhook, &reviewed.outcome, seconds);
            (
                [(header::CONTENT_TYPE, "application/json")],
                reviewed.answer,
            )
                .into_response()
        }
        Err(error) => {
            let status = match error {
                AdmissionError::Serialize(_) => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_REQUEST,
            };
            refusal(webhook, status, error, Some(bytes))
        }
    }
}

/// An answer that is not a review: the reason as one line of text, logged and counted.
fn refusal(
    webhook: &'static str,
    status: StatusCode,
    error: impl Display,
    bytes: Option<usize>,
) -> Response {
    tracing::warn!(%error, status = status.as_u16(), bytes, "rejected webhook request");
    metrics().refused(webhook, status.as_u16());
    let reason = error.to_string().replace('\n', " ");
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{reason}\n"),
    )
        .into_response()
}

/// The metrics endpoint (`GET /metrics`, plain HTTP on its own port, for Prometheus).
pub async fn serve_metrics(
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<impl Future<Output = Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| WebhookError::Bind { addr, source })?;
    tracing::info!(%addr, "serving metrics on /metrics");
    let router = Router::new().route(
        "/metrics",
        get(|| async {
            (
                [(
                    header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                metrics().encode(),
            )
        }),
    );
    Ok(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(WebhookError::Serve)
    })
}

/// Read buffer in front of rustls on each connection. rustls reads at most 4 KiB per call, so
/// a 10 KB review took three `recv` calls (and as many buffer resizes); through this buffer one
/// `recv` takes what has arrived. 64 connections hold 2 MiB. Measured on the reference
/// webhook (bench/README.md): 37 -> 24 µs of server CPU per 10 KB review.
pub const READ_BUFFER: usize = 32 * 1024;

/// The transport under TLS: a slot of the connection cap (no slot: the connection is closed
/// at once), `TCP_NODELAY` (answers leave at once) and [`READ_BUFFER`].
#[derive(Clone, Debug)]
pub struct TransportAcceptor {
    slots: Arc<limits::ConnectionSlots>,
}

impl TransportAcceptor {
    pub fn new(max_connections: u32) -> Self {
        Self {
            slots: Arc::new(limits::ConnectionSlots::new(max_connections)),
        }
    }
}

impl<S> axum_server::accept::Accept<tokio::net::TcpStream, S> for TransportAcceptor {
    type Stream = limits::Slotted<tokio::io::BufReader<tokio::net::TcpStream>>;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Self::Stream, S)>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        let Some(slot) = self.slots.take() else {
            // Dropping the stream closes the connection.
            return std::future::ready(Err(io::Error::other("connection limit reached")));
        };
        let _ = stream.set_nodelay(true);
        let buffered = tokio::io::BufReader::with_capacity(READ_BUFFER, stream);
        std::future::ready(Ok((limits::Slotted::new(buffered, slot), service)))
    }
}

/// The HTTPS server on `listener` within `limits`: rustls over [`TransportAcceptor`], HTTP/1.1
/// with hyper's header read timeout (which also ends idle keep-alive connections) and
/// [`limits::HEADER_BUFFER`]. The benchmark's reference webhook serves through this too, so
/// the two differ only in their handlers.
pub fn https_server(
    listener: std::net::TcpListener,
    rustls: axum_server::tls_rustls::RustlsConfig,
    limits: &Limits,
) -> io::Result<
    axum_server::Server<SocketAddr, axum_server::tls_rustls::RustlsAcceptor<TransportAcceptor>>,
> {
    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(rustls)
        .handshake_timeout(limits.tls_handshake())
        .acceptor(TransportAcceptor::new(limits.max_connections));
    // The API server calls webhooks over HTTP/1.1 (k8s.io/apiserver pkg/util/webhook: HTTP/2
    // would not spread its requests over replicas); serving only that keeps HTTP/2's per-stream
    // buffers out of the bounds.
    let mut server = axum_server::from_tcp(listener)?
        .acceptor(acceptor)
        .http1_only();
    server
        .http_builder()
        .http1()
        .header_read_timeout(limits.header_read())
        .max_buf_size(limits::HEADER_BUFFER);
    Ok(server)
}

/// Binds `addr` and serves the webhook over TLS until `shutdown` completes, then stops
/// accepting and gives open requests [`SHUTDOWN_GRACE`] to finish. Certificate files are
/// watched and reloaded when they change; a managed configuration is reloaded by its owner.
pub async fn serve(
    addr: SocketAddr,
    tls: impl Into<Tls>,
    config: Arc<Config>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| WebhookError::Bind { addr, source })?;
    serve_listener(listener, tls, config, limits, shutdown).await
}

/// Like [`serve`], on a listener bound by the caller (e.g. to port 0, reading the port first).
/// Logs `listening on https://ADDR` once the listener accepts connections.
pub async fn serve_listener(
    listener: std::net::TcpListener,
    tls: impl Into<Tls>,
    config: Arc<Config>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (rustls, reloader) = match tls.into() {
        Tls::Files(files) => {
            let rustls = files.load().await?;
            let watcher = tls::watch(rustls.clone(), files, tls::RELOAD_INTERVAL);
            (rustls, Some(tokio::spawn(watcher)))
        }
        Tls::Managed(rustls) => (rustls, None),
    };
    let local = listener.local_addr().map_err(WebhookError::Serve)?;
    let server =
        https_server(listener, rustls.clone(), &limits).map_err(|source| WebhookError::Bind {
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

    // The socket is bound and listening already: connections made from now on are served.
    tracing::info!("listening on https://{local}");
    let result = server
        .handle(handle)
        .serve(router(config, &limits).into_make_service())
        .await;
    stopper.abort();
    if let Some(reloader) = reloader {
        reloader.abort();
    }
    result.map_err(WebhookError::Serve)?;
    tracing::info!("webhook server stopped");
    Ok(())
}
