//! Hostile connection patterns against the real server: `tenancy-fixer serve --no-controller`
//! as a child process (its RSS read from /proc), with timeouts shortened to 3 s through the
//! environment so the test takes well under a minute. Each pattern runs against a fresh server
//! while a good client keeps sending the notebook review on its keep-alive connection (as the
//! API server does), and checks: the server's peak RSS, that hostile connections are closed
//! within the timeouts, and the good review's latency.
//!
//! Figures are printed (`cargo test --test hostile_connections -- --nocapture`).
//! `TENANCY_FIXER_TEST_BIN` runs the patterns against another build of the binary (to measure
//! an older version; unknown settings in the environment are ignored by it).

mod common;

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{TestTls, fixture_path};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
    task::JoinSet,
};
use tokio_rustls::{TlsConnector, client::TlsStream, rustls};

/// Timeouts given to the server under test (seconds): header read (and keep-alive idle), body
/// read, TLS handshake.
const TIMEOUT_SECONDS: u64 = 3;
/// Keep-alive idle timeout of the server under the idle pattern (seconds).
const IDLE_SECONDS: u64 = 15;
/// How long after its timeout a hostile connection may still be open.
const CLOSE_MARGIN: Duration = Duration::from_secs(3);
/// Peak RSS the server may reach under any pattern (the pod's limit is 256 MiB).
const RSS_BOUND_KIB: u64 = 128 * 1024;
/// Slowest good review allowed during a pattern: the server is a debug build on a shared 2-core
/// machine, and TLS handshakes of 1,023 new connections take its CPU for seconds in (c).
const GOOD_REVIEW_BOUND: Duration = Duration::from_millis(1500);
/// The least time good reviews flow around each pattern.
const GOOD_REVIEW_WINDOW: Duration = Duration::from_millis(1500);
/// The server's connection cap (its default).
const MAX_CONNECTIONS: usize = 1024;

struct Server {
    child: Child,
    port: u16,
    connector: TlsConnector,
    /// The certificate files, removed when the server goes.
    _tls: TestTls,
}

impl Server {
    /// A server whose timeouts are [`TIMEOUT_SECONDS`], the header read (keep-alive) timeout
    /// `header_read_seconds`.
    fn start(header_read_seconds: u64) -> Self {
        common::install_crypto_provider();
        let tls = TestTls::new();
        let binary = std::env::var_os("TENANCY_FIXER_TEST_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_tenancy-fixer").into());
        let timeout = TIMEOUT_SECONDS.to_string();
        let mut child = Command::new(binary)
            .args(["serve", "--no-controller", "--listen", "127.0.0.1:0"])
            .arg("--tls-cert")
            .arg(&tls.cert)
            .arg("--tls-key")
            .arg(&tls.key)
            .env(
                "TENANCY_FIXER_HEADER_READ_TIMEOUT",
                header_read_seconds.to_string(),
            )
            .env("TENANCY_FIXER_BODY_READ_TIMEOUT", &timeout)
            .env("TENANCY_FIXER_TLS_HANDSHAKE_TIMEOUT", &timeout)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let port = listening_port(child.stderr.take().unwrap());
        let connector = TlsConnector::from(Arc::new(tls.client_config()));
        Self {
            child,
            port,
            connector,
            _tls: tls,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `VmRSS` (now) or `VmHWM` (peak so far) of the server, in KiB.
    fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid()))
    }

    fn rss_kib(&self) -> u64 {
        self.memory_kib("VmRSS")
    }

    fn peak_rss_kib(&self) -> u64 {
        self.memory_kib("VmHWM")
    }

    async fn connect(&self) -> std::io::Result<TlsStream<TcpStream>> {
        connect(&self.connector, self.port).await
    }

    /// One notebook review on a new connection: its status, or the error.
    async fn review_on_new_connection(&self) -> Result<u16, String> {
        let stream = self.connect().await.map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let response = sender
            .send_request(notebook_review())
            .await
            .map_err(|e| e.to_string())?;
        Ok(response.status().as_u16())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect(connector: &TlsConnector, port: u16) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    connector.connect(name, tcp).await
}

/// An HTTP/1.1 connection, kept open for many requests.
async fn keep_alive(connector: &TlsConnector, port: u16) -> SendRequest<Full<Bytes>> {
    let stream = connect(connector, port).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// Reads the server's log until it listens; drains the rest in a thread.
fn listening_port(stderr: impl std::io::Read + Send + 'static) -> u16 {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("listening on https://").nth(1) {
                let port = rest.trim().rsplit(':').next().unwrap_or("").parse::<u16>();
                let _ = tx.send(port);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the server never said it listens")
        .expect("port in the listening line")
}

fn notebook_review() -> hyper::Request<Full<Bytes>> {
    let body = std::fs::read(fixture_path("notebook-pod.json")).unwrap();
    hyper::Request::post("/mutate/pods")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// Sends the notebook review every 20 ms on one keep-alive connection until `stop`; returns the
/// slowest answer and how many were answered. Every answer must be a patch.
async fn good_reviews(
    mut sender: SendRequest<Full<Bytes>>,
    mut stop: watch::Receiver<bool>,
) -> (Duration, usize) {
    let mut slowest = Duration::ZERO;
    let mut answered = 0;
    while !*stop.borrow() {
        let started = Instant::now();
        let response = sender
            .send_request(notebook_review())
            .await
            .expect("the good client's connection must stay up");
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["response"]["patchType"], "JSONPatch");
        slowest = slowest.max(started.elapsed());
        answered += 1;
        let _ = tokio::time::timeout(Duration::from_millis(20), stop.changed()).await;
    }
    (slowest, answered)
}

/// Runs `pattern` while good reviews flow; returns the pattern's result and checks the reviews.
/// The good client runs on a thread of its own, so that the attackers' TLS work in this
/// (debug-built) test process does not delay it: what is measured is the server.
async fn with_good_reviews<T>(
    server: &Server,
    name: &str,
    pattern: impl std::future::Future<Output = T>,
) -> T {
    let (stop, stopped) = watch::channel(false);
    let (connector, port) = (server.connector.clone(), server.port);
    let (ready, connected) = tokio::sync::oneshot::channel();
    let reviews = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let sender = keep_alive(&connector, port).await;
            let _ = ready.send(());
            good_reviews(sender, stopped).await
        })
    });
    connected.await.expect("the good client connects");
    let began = Instant::now();
    let result = pattern.await;
    // A pattern that ends at once (oversized bodies are refused in milliseconds) still leaves
    // the good client a window of reviews to count and time.
    tokio::time::sleep(GOOD_REVIEW_WINDOW.saturating_sub(began.elapsed())).await;
    let _ = stop.send(true);
    let (slowest, answered) = tokio::task::spawn_blocking(move || reviews.join().unwrap())
        .await
        .unwrap();
    eprintln!("{name}: {answered} good reviews, slowest {slowest:?}");
    assert!(answered > 10, "{name}: only {answered} good reviews");
    assert!(
        slowest < GOOD_REVIEW_BOUND,
        "{name}: a good review took {slowest:?}"
    );
    result
}

/// Waits until the server closes `stream` (EOF or error on read); returns how long after
/// `since`, or `None` if it is still open at `deadline`. What the server answers first is read
/// and ignored.
async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    since: Instant,
    deadline: Instant,
) -> Option<Duration> {
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await;
        match read {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// The longest a hostile connection stayed open after its timeout started, checked against
/// the timeout; fails on any still open.
fn latest_close(name: &str, timeout_seconds: u64, closes: Vec<Option<Duration>>) -> Duration {
    let open = closes.iter().filter(|c| c.is_none()).count();
    assert_eq!(open, 0, "{name}: {open} hostile connections still open");
    let latest = closes.into_iter().flatten().max().unwrap_or_default();
    assert!(
        latest < Duration::from_secs(timeout_seconds) + CLOSE_MARGIN,
        "{name}: a connection stayed open {latest:?} (timeout {timeout_seconds} s)"
    );
    latest
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Soft RLIMIT_NOFILE raised to the hard limit (the idle pattern holds 5,000 connections; the
/// server, a child, inherits it).
fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

/// (a) 40 connections each declaring an 8 MB body, sending what the server takes, then
/// stalling.
async fn stalled_bodies(server: &Server) {
    const CONNECTIONS: usize = 40;
    const DECLARED: usize = 8_000_000;
    let deadline = Instant::now() + Duration::from_secs(30);
    let closes = with_good_reviews(server, "stalled bodies", async {
        let mut attackers = JoinSet::new();
        for _ in 0..CONNECTIONS {
            let mut stream = server.connect().await.unwrap();
            attackers.spawn(async move {
                let head = format!(
                    "POST /mutate/pods HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {DECLARED}\r\n\r\n"
                );
                stream.write_all(head.as_bytes()).await.unwrap();
                let since = Instant::now();
                let chunk = vec![b' '; 64 * 1024];
                let mut sent = 0;
                // Send until the server stops taking bytes (or all but the last), then stall.
                while sent + chunk.len() < DECLARED {
                    match tokio::time::timeout(Duration::from_millis(300), stream.write_all(&chunk)).await {
                        Ok(Ok(())) => sent += chunk.len(),
                        _ => break,
                    }
                }
                let _ = stream.flush().await;
                closed_by_server(&mut stream, since, deadline).await
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let fresh = server.review_on_new_connection().await;
        assert_eq!(fresh, Ok(200), "a new connection's review during stalled bodies");
        attackers.join_all().await
    })
    .await;
    let peak = server.peak_rss_kib();
    let still_open = closes.iter().filter(|c| c.is_none()).count();
    eprintln!(
        "stalled bodies: peak RSS {:.1} MiB, {still_open} still open",
        mib(peak)
    );
    let latest = latest_close("stalled bodies", TIMEOUT_SECONDS, closes);
    eprintln!(
        "stalled bodies: peak RSS {:.1} MiB, all {CONNECTIONS} closed, the last {latest:?} after its headers",
        mib(peak)
    );
    assert!(
        peak < RSS_BOUND_KIB,
        "stalled bodies: peak RSS {:.1} MiB",
        mib(peak)
    );
}

/// (b) 500 connections sending a request's headers one byte every 200 ms.
async fn slowloris(server: &Server) {
    const CONNECTIONS: usize = 500;
    let deadline = Instant::now() + Duration::from_secs(60);
    let closes = with_good_reviews(server, "slowloris", async {
        let mut attackers = JoinSet::new();
        for _ in 0..CONNECTIONS {
            let stream = server.connect().await.unwrap();
            let since = Instant::now();
            attackers.spawn(async move {
                let (mut reader, mut writer) = tokio::io::split(stream);
                let dribble = tokio::spawn(async move {
                    let head = b"POST /mutate/pods HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-padding: ";
                    for byte in head.iter().chain(std::iter::repeat(&b'a')) {
                        if writer.write_all(&[*byte]).await.is_err() || writer.flush().await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                });
                let closed = closed_by_server(&mut reader, since, deadline).await;
                dribble.abort();
                closed
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let fresh = server.review_on_new_connection().await;
        assert_eq!(fresh, Ok(200), "a new connection's review during slowloris");
        attackers.join_all().await
    })
    .await;
    let peak = server.peak_rss_kib();
    let still_open = closes.iter().filter(|c| c.is_none()).count();
    eprintln!(
        "slowloris: peak RSS {:.1} MiB, {still_open} still open",
        mib(peak)
    );
    let latest = latest_close("slowloris", TIMEOUT_SECONDS, closes);
    eprintln!(
        "slowloris: peak RSS {:.1} MiB, all {CONNECTIONS} closed, the last {latest:?} after its handshake",
        mib(peak)
    );
    assert!(
        peak < RSS_BOUND_KIB,
        "slowloris: peak RSS {:.1} MiB",
        mib(peak)
    );
}

/// Opens `connections` that each make one request and then stay idle (keep-alive), at most 64
/// being opened at once (the clients' TLS handshakes in this debug-built test process are
/// slow; unlimited, they would time out in the queue). Returns the connections the server
/// kept, each with when it answered, the number refused and the slowest refusal.
async fn open_idle(
    server: &Server,
    connections: usize,
) -> (Vec<(TlsStream<TcpStream>, Instant)>, usize, Duration) {
    let opening = Arc::new(tokio::sync::Semaphore::new(64));
    let mut attempts = JoinSet::new();
    for _ in 0..connections {
        let (connector, port, opening) = (server.connector.clone(), server.port, opening.clone());
        attempts.spawn(async move {
            let _opening = opening.acquire_owned().await.unwrap();
            let attempt = Instant::now();
            let connected = async {
                let mut stream = connect(&connector, port).await?;
                stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                    .await?;
                let mut buf = [0u8; 1024];
                let n = stream.read(&mut buf).await?;
                if !buf[..n].starts_with(b"HTTP/1.1 200") {
                    return Err(std::io::Error::other("no 200"));
                }
                Ok(stream)
            };
            match connected.await {
                Ok(stream) => Ok((stream, Instant::now())),
                Err(_) => Err(attempt.elapsed()),
            }
        });
    }
    let mut held = Vec::new();
    let mut refused = 0;
    let mut slowest_refusal = Duration::ZERO;
    while let Some(result) = attempts.join_next().await {
        match result.unwrap() {
            Ok(idle) => held.push(idle),
            Err(took) => {
                refused += 1;
                slowest_refusal = slowest_refusal.max(took);
            }
        }
    }
    (held, refused, slowest_refusal)
}

/// (c) 5,000 idle keep-alive connections: beyond the cap they are closed at once; the rest
/// are closed by the server after the idle timeout. Then a second full wave, closed by the
/// client: every slot is free again and memory stays under the bound. (RSS does not come back
/// to the idle figure: glibc keeps freed memory in its per-thread arenas, and a second wave
/// adds some; the figures are printed.)
async fn idle_keep_alive(server: &Server, connections: usize) {
    let baseline = server.rss_kib();
    let deadline = Instant::now() + Duration::from_secs(IDLE_SECONDS) * 4;
    let (held, refused, slowest_refusal, closes) =
        with_good_reviews(server, "idle keep-alive", async {
            let (held, refused, slowest_refusal) = open_idle(server, connections).await;
            let held_count = held.len();
            eprintln!(
                "idle keep-alive: {held_count} held, {refused} refused (slowest refusal {slowest_refusal:?}), RSS {:.1} MiB",
                mib(server.rss_kib())
            );
            let mut waits = JoinSet::new();
            for (mut stream, since) in held {
                waits.spawn(async move { closed_by_server(&mut stream, since, deadline).await });
            }
            (held_count, refused, slowest_refusal, waits.join_all().await)
        })
        .await;
    let latest = latest_close("idle keep-alive", IDLE_SECONDS, closes);
    let peak = server.peak_rss_kib();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = server.rss_kib();
    eprintln!(
        "idle keep-alive: peak RSS {:.1} MiB, all {held} closed, the last {latest:?} after its answer; RSS {:.1} MiB before, {:.1} MiB after",
        mib(peak),
        mib(baseline),
        mib(after)
    );
    assert!(
        held < MAX_CONNECTIONS,
        "the good client holds a slot too: {held}"
    );
    assert_eq!(held + refused, connections);
    assert!(
        slowest_refusal < Duration::from_secs(2),
        "refused connections must be closed at once, not queued: {slowest_refusal:?}"
    );
    assert!(
        peak < RSS_BOUND_KIB,
        "idle keep-alive: peak RSS {:.1} MiB",
        mib(peak)
    );

    // Slots are free again, and a second full wave costs no new memory.
    let (again, _, _) = open_idle(server, MAX_CONNECTIONS + 100).await;
    assert_eq!(again.len(), MAX_CONNECTIONS, "every slot is free again");
    drop(again);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (second_peak, second_after) = (server.peak_rss_kib(), server.rss_kib());
    eprintln!(
        "idle keep-alive, second wave: peak RSS {:.1} MiB, {:.1} MiB after",
        mib(second_peak),
        mib(second_after)
    );
    assert!(
        second_peak < RSS_BOUND_KIB,
        "idle keep-alive, second wave: peak RSS {:.1} MiB",
        mib(second_peak)
    );
    assert_eq!(server.review_on_new_connection().await, Ok(200));
}

/// (d) 40 connections sending bodies over the limit: half declare their length, half send
/// chunks without one; both are answered before the body is read.
async fn oversized_bodies(server: &Server) {
    const CONNECTIONS: usize = 40;
    const SENT: usize = 24 * 1024 * 1024;
    let slowest = with_good_reviews(server, "oversized bodies", async {
        let mut attackers = JoinSet::new();
        for i in 0..CONNECTIONS {
            let stream = server.connect().await.unwrap();
            attackers.spawn(async move {
                let started = Instant::now();
                let chunked = i % 2 == 1;
                let head = if chunked {
                    "POST /mutate/pods HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                        .to_string()
                } else {
                    format!(
                        "POST /mutate/pods HTTP/1.1\r\nhost: x\r\ncontent-length: {SENT}\r\n\r\n"
                    )
                };
                let (mut reader, mut writer) = tokio::io::split(stream);
                let sender = tokio::spawn(async move {
                    writer.write_all(head.as_bytes()).await?;
                    let chunk = vec![b' '; 64 * 1024];
                    for _ in 0..SENT / chunk.len() {
                        if chunked {
                            writer
                                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                                .await?;
                        }
                        writer.write_all(&chunk).await?;
                        if chunked {
                            writer.write_all(b"\r\n").await?;
                        }
                    }
                    writer.flush().await
                });
                let mut answer = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut answer))
                        .await;
                sender.abort();
                let status =
                    String::from_utf8_lossy(answer.get(..12).unwrap_or_default()).into_owned();
                (status, started.elapsed())
            });
        }
        let answers = attackers.join_all().await;
        let mut slowest = Duration::ZERO;
        for (status, took) in answers {
            assert!(
                status == "HTTP/1.1 413" || status == "HTTP/1.1 411",
                "oversized body answered {status:?}"
            );
            slowest = slowest.max(took);
        }
        slowest
    })
    .await;
    let peak = server.peak_rss_kib();
    eprintln!(
        "oversized bodies: peak RSS {:.1} MiB, slowest refusal {slowest:?}",
        mib(peak)
    );
    assert!(slowest < Duration::from_secs(2), "refusal took {slowest:?}");
    assert!(
        peak < RSS_BOUND_KIB,
        "oversized bodies: peak RSS {:.1} MiB",
        mib(peak)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_connection_patterns_are_bounded() {
    let open_files = raise_open_files_limit();
    // 5,000 client sockets here and up to the cap in the server, plus spare.
    let idle = 5_000.min(open_files.saturating_sub(MAX_CONNECTIONS as u64 + 200) as usize);
    if idle < 5_000 {
        eprintln!("idle keep-alive: open files limited to {open_files}: {idle} connections");
    }
    let server = Server::start(TIMEOUT_SECONDS);
    eprintln!("idle server: RSS {:.1} MiB", mib(server.rss_kib()));
    stalled_bodies(&server).await;
    drop(server);
    slowloris(&Server::start(TIMEOUT_SECONDS)).await;
    // Idle connections must outlive the time it takes to open them all.
    idle_keep_alive(&Server::start(IDLE_SECONDS), idle).await;
    oversized_bodies(&Server::start(TIMEOUT_SECONDS)).await;
}
