//! What a client of the webhook port can make the server hold, and for how long. Anyone who
//! reaches the port is a client, tenants' pods included, so every connection pattern is bounded:
//! connections (a cap; beyond it new ones are closed at once), TLS handshake, request headers
//! and keep-alive idleness (one hyper timer), the body (size, time to receive it, and memory
//! shared by all bodies in flight). README "Resource bounds" states the figures and why.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::{Body, Bytes, HttpBody},
    extract::Request,
    http::StatusCode,
};
use futures::StreamExt;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
};

/// What etcd stores at most in one request (its `--max-request-bytes` default, 1.5 MiB): an
/// object larger than this cannot be created, whatever we answer about it.
const STORED_OBJECT: usize = 3 * 1024 * 1024 / 2;
/// How much an object grows when the API server encodes it as JSON for us: Go escapes `<`, `>`,
/// `&`, control characters and invalid UTF-8 as six bytes (`\u003c`), so a stored string of
/// such bytes comes six times its size.
const JSON_EXPANSION: usize = 6;
/// The rest of a review: uid, kinds, userInfo (groups and extra can be long), options.
const REVIEW_ENVELOPE: usize = 1024 * 1024;

/// Largest request body accepted: a review of an UPDATE carries `object` and `oldObject`, each
/// at most a storable object at its largest JSON expansion, plus the envelope (19 MiB). A
/// review of any object the cluster can store fits, so a tenant cannot get past the rules
/// (`failurePolicy: Ignore`) by inflating an object; larger bodies get 413.
pub const BODY_LIMIT: usize = 2 * JSON_EXPANSION * STORED_OBJECT + REVIEW_ENVELOPE;

/// Bodies up to this size are not charged to [`BODY_BUDGET`]: the connection cap bounds them
/// (1,024 × 32 KiB = 32 MiB), and a usual review (a notebook pod's is 10 KB as the API server
/// writes it, 20 KB pretty-printed) never waits behind large bodies that clients send slowly.
pub const UNCHARGED_BODY: usize = 32 * 1024;

/// Memory shared by the larger bodies being received or reviewed: two of the largest at once.
/// A body waits for its share (within the body read timeout) before it is read.
pub const BODY_BUDGET: usize = 2 * BODY_LIMIT;

// The largest body fits the budget.
const _: () = assert!(BODY_LIMIT <= BODY_BUDGET);

/// Most bytes hyper buffers per connection while reading request headers (its default is
/// ~400 KiB, which 1,024 connections would turn into 400 MiB). The API server's headers take
/// well under 1 KiB; bodies are read in chunks of this size.
pub const HEADER_BUFFER: usize = 16 * 1024;

/// Bodies larger than this are reviewed on the blocking pool. A review's cost grows with its
/// size: measured on a debug build, 1.6 ms for the 20 KB notebook review and 354 ms for an
/// 18 MB UPDATE review of escaped strings (the largest kind; release builds are tens of times
/// faster, still milliseconds), which must not hold a runtime worker. Small reviews stay
/// inline and skip the hand-off (~10 µs).
pub const INLINE_REVIEW: usize = 256 * 1024;

const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
const DEFAULT_TLS_HANDSHAKE_SECONDS: u64 = 10;
const DEFAULT_HEADER_READ_SECONDS: u64 = 30;
const DEFAULT_BODY_READ_SECONDS: u64 = 10;

/// The tunable bounds (flags of `serve`); the sizes above follow from the API server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::Args)]
pub struct Limits {
    /// Most connections served at once; beyond it new connections are closed as soon as accepted.
    #[arg(
        long,
        value_name = "N",
        default_value_t = DEFAULT_MAX_CONNECTIONS,
        value_parser = clap::value_parser!(u32).range(1..),
        env = "TENANCY_FIXER_MAX_CONNECTIONS"
    )]
    pub max_connections: u32,
    /// Seconds a client has to complete the TLS handshake.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = DEFAULT_TLS_HANDSHAKE_SECONDS,
        value_parser = clap::value_parser!(u64).range(1..),
        env = "TENANCY_FIXER_TLS_HANDSHAKE_TIMEOUT"
    )]
    pub tls_handshake_timeout: u64,
    /// Seconds a client has to send a request's headers, counted from the end of the previous
    /// response: also how long an idle keep-alive connection stays open.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = DEFAULT_HEADER_READ_SECONDS,
        value_parser = clap::value_parser!(u64).range(1..),
        env = "TENANCY_FIXER_HEADER_READ_TIMEOUT"
    )]
    pub header_read_timeout: u64,
    /// Seconds a client has to send a request's whole body (waiting for memory included).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = DEFAULT_BODY_READ_SECONDS,
        value_parser = clap::value_parser!(u64).range(1..),
        env = "TENANCY_FIXER_BODY_READ_TIMEOUT"
    )]
    pub body_read_timeout: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_SECONDS,
            header_read_timeout: DEFAULT_HEADER_READ_SECONDS,
            body_read_timeout: DEFAULT_BODY_READ_SECONDS,
        }
    }
}

impl Limits {
    pub fn tls_handshake(&self) -> Duration {
        Duration::from_secs(self.tls_handshake_timeout)
    }

    pub fn header_read(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout)
    }

    pub fn body_read(&self) -> Duration {
        Duration::from_secs(self.body_read_timeout)
    }
}

/// The connection cap: a slot per open connection, taken without waiting.
#[derive(Debug)]
pub(crate) struct ConnectionSlots {
    slots: Arc<Semaphore>,
    max: u32,
    /// Set while connections are being refused, so that the log says so once per episode.
    refusing: AtomicBool,
    refused: AtomicU64,
}

impl ConnectionSlots {
    pub(crate) fn new(max: u32) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max as usize)),
            max,
            refusing: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        }
    }

    /// A slot held as long as the connection lives, or `None` when all are taken.
    pub(crate) fn take(&self) -> Option<OwnedSemaphorePermit> {
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => {
                if self.refusing.load(Ordering::Relaxed)
                    && self.refusing.swap(false, Ordering::Relaxed)
                {
                    tracing::info!(
                        refused = self.refused.load(Ordering::Relaxed),
                        "accepting connections again"
                    );
                }
                Some(slot)
            }
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                if !self.refusing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        max_connections = self.max,
                        "connection limit reached: closing new connections until open ones end"
                    );
                }
                None
            }
        }
    }
}

/// A connection's transport holding its slot: the slot returns when the connection is dropped.
#[derive(Debug)]
pub struct Slotted<S> {
    inner: S,
    _slot: OwnedSemaphorePermit,
}

impl<S> Slotted<S> {
    pub(crate) fn new(inner: S, slot: OwnedSemaphorePermit) -> Self {
        Self { inner, _slot: slot }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Slotted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Slotted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    // rustls writes records with vectored writes: keep them one system call.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request has no Content-Length (the API server always sends one)")]
    LengthRequired,
    #[error("the body of {length} bytes is over the limit of {BODY_LIMIT} bytes")]
    TooLarge { length: u64 },
    #[error("the body was not received within {} s", .0.as_secs())]
    Timeout(Duration),
    #[error("cannot read the body: {0}")]
    Read(#[source] axum::Error),
}

impl BodyError {
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::LengthRequired => StatusCode::LENGTH_REQUIRED,
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            BodyError::Read(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Reads request bodies within [`BODY_LIMIT`], the body read timeout and [`BODY_BUDGET`].
#[derive(Clone, Debug)]
pub struct BodyReader {
    budget: Arc<Budget>,
    timeout: Duration,
}

/// Bytes of [`BODY_BUDGET`] not taken. Not a fair semaphore: a body takes its share whenever
/// there is room, so that a small one never waits behind a large one still waiting for its own
/// (tokio's semaphore, first come first served, hands free permits to the first waiter).
#[derive(Debug)]
struct Budget {
    available: AtomicUsize,
    returned: Notify,
}

impl Budget {
    fn new(bytes: usize) -> Self {
        Self {
            available: AtomicUsize::new(bytes),
            returned: Notify::new(),
        }
    }

    fn try_take(self: &Arc<Self>, bytes: usize) -> Option<Charge> {
        self.available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(bytes)
            })
            .ok()?;
        Some(Charge {
            budget: self.clone(),
            bytes,
        })
    }

    /// Waits until `bytes` are free and takes them (callers bound the wait).
    async fn take(self: &Arc<Self>, bytes: usize) -> Charge {
        loop {
            let returned = self.returned.notified();
            tokio::pin!(returned);
            // Registered before the check, so a return in between still wakes us.
            returned.as_mut().enable();
            if let Some(charge) = self.try_take(bytes) {
                return charge;
            }
            returned.await;
        }
    }
}

/// A share of the budget, returned when dropped.
#[derive(Debug)]
struct Charge {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget
            .available
            .fetch_add(self.bytes, Ordering::AcqRel);
        self.budget.returned.notify_waiters();
    }
}

/// A received body, holding its share of [`BODY_BUDGET`] until dropped.
#[derive(Debug)]
pub struct ReceivedBody {
    bytes: Bytes,
    _charge: Option<Charge>,
}

impl std::ops::Deref for ReceivedBody {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl BodyReader {
    pub fn new(limits: &Limits) -> Self {
        Self {
            budget: Arc::new(Budget::new(BODY_BUDGET)),
            timeout: limits.body_read(),
        }
    }

    /// The whole body of `request`. Its declared length is checked before anything is read,
    /// and the memory it needs is reserved (larger bodies) before it is received.
    pub async fn read(&self, request: Request) -> Result<ReceivedBody, BodyError> {
        let body = request.into_body();
        let length = body.size_hint().exact().ok_or(BodyError::LengthRequired)?;
        if length > BODY_LIMIT as u64 {
            return Err(BodyError::TooLarge { length });
        }
        // Checked against BODY_LIMIT above, so it fits in usize and in the budget.
        let length = length as usize;
        tokio::time::timeout(self.timeout, self.receive(body, length))
            .await
            .map_err(|_| BodyError::Timeout(self.timeout))?
    }

    async fn receive(&self, body: Body, length: usize) -> Result<ReceivedBody, BodyError> {
        let charge = match length > UNCHARGED_BODY {
            true => Some(self.budget.take(length).await),
            false => None,
        };
        // hyper ends the stream with an error if fewer or more bytes than declared arrive.
        let mut chunks = body.into_data_stream();
        let first = match chunks.next().await {
            None => Bytes::new(),
            Some(chunk) => chunk.map_err(BodyError::Read)?,
        };
        let bytes = if first.len() == length {
            first // the usual case for a review: one chunk, no copy
        } else {
            let mut all = Vec::with_capacity(length);
            all.extend_from_slice(&first);
            while let Some(chunk) = chunks.next().await {
                all.extend_from_slice(&chunk.map_err(BodyError::Read)?);
            }
            Bytes::from(all)
        };
        Ok(ReceivedBody {
            bytes,
            _charge: charge,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_limit_fits_a_review_of_the_largest_storable_update() {
        assert_eq!(BODY_LIMIT, 19 * 1024 * 1024);
    }

    #[test]
    fn slots_are_refused_beyond_the_cap_and_return_when_dropped() {
        let slots = ConnectionSlots::new(2);
        let first = slots.take().expect("first");
        let _second = slots.take().expect("second");
        assert!(slots.take().is_none(), "over the cap");
        drop(first);
        assert!(slots.take().is_some(), "a slot returns with its connection");
        assert_eq!(slots.refused.load(Ordering::Relaxed), 1);
    }

    /// A request whose body has an exact size (as hyper gives one with Content-Length) unless
    /// it is a stream.
    fn request(body: Body) -> Request {
        Request::builder()
            .method("POST")
            .uri("/mutate")
            .body(body)
            .unwrap()
    }

    #[tokio::test]
    async fn bodies_are_checked_before_they_are_read() {
        let reader = BodyReader::new(&Limits::default());
        // A stream body has no exact size: like a chunked request.
        let stream = Body::from_stream(futures::stream::iter([Ok::<_, io::Error>(Bytes::from(
            "{}",
        ))]));
        assert!(matches!(
            reader.read(request(stream)).await,
            Err(BodyError::LengthRequired)
        ));
        let oversized = Body::from(vec![b' '; BODY_LIMIT + 1]);
        let error = reader.read(request(oversized)).await.unwrap_err();
        assert!(matches!(error, BodyError::TooLarge { .. }), "{error}");
        assert_eq!(error.status(), StatusCode::PAYLOAD_TOO_LARGE);

        let body = reader.read(request(Body::from("{}"))).await.unwrap();
        assert_eq!(&*body, b"{}");
    }

    #[tokio::test]
    async fn a_body_waits_for_its_share_of_the_budget_within_the_timeout() {
        let limits = Limits {
            body_read_timeout: 1,
            ..Limits::default()
        };
        let reader = BodyReader::new(&limits);
        let held = reader.budget.take(BODY_BUDGET).await;
        let large = Body::from(vec![b' '; UNCHARGED_BODY + 1]);
        let error = reader.read(request(large)).await.unwrap_err();
        assert!(matches!(error, BodyError::Timeout(_)), "{error}");
        // A small body is not charged: it is read while the budget is exhausted.
        let small = reader.read(request(Body::from("{}"))).await.unwrap();
        assert_eq!(small.len(), 2);
        drop(held);
        // A body that fits what is left is read even while a larger one waits for its share.
        let most = reader.budget.take(BODY_BUDGET - BODY_LIMIT / 2).await;
        let waiting = tokio::spawn({
            let reader = reader.clone();
            async move {
                let largest = Body::from(vec![b' '; BODY_LIMIT]);
                reader.read(request(largest)).await.map(|body| body.len())
            }
        });
        tokio::task::yield_now().await;
        let medium = Body::from(vec![b' '; 4 * UNCHARGED_BODY]);
        assert!(reader.read(request(medium)).await.is_ok());
        drop(most);
        assert_eq!(waiting.await.unwrap().unwrap(), BODY_LIMIT);
        let large = Body::from(vec![b' '; UNCHARGED_BODY + 1]);
        let body = reader.read(request(large)).await.unwrap();
        let available = || reader.budget.available.load(Ordering::Acquire);
        assert_eq!(available(), BODY_BUDGET - body.len());
        drop(body);
        assert_eq!(available(), BODY_BUDGET);
    }
}
