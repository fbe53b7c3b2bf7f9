//! `webhook-load`: load generator and figures for the admission webhook.
//!
//! Launches each server under test as a child process (the no-op `reference-webhook`, the
//! hand-tuned `limit-webhook`, then `tenancy-fixer serve --no-controller` with its default log
//! level, then with `RUST_LOG=warn`), pinned to one CPU while the generator runs on the others,
//! and for each one measures:
//! - start to listening: from `spawn()` to the first completed TLS handshake (several starts);
//! - RSS when idle, and its high-water mark under load (/proc/PID/status);
//! - closed loop: N keep-alive HTTPS connections (HTTP/1.1, TLS 1.3 only, hyper 1 +
//!   tokio-rustls) each sending the next review as soon as the previous answer arrived: the
//!   maximum throughput, per review kind (and mixed, for tenancy-fixer);
//! - open loop: notebook reviews scheduled at a fixed rate (default: half the server's own
//!   closed-loop throughput) by a pacing thread and sent on the first free connection; latency
//!   is measured from the *scheduled* send time (no coordinated omission);
//! - server CPU per review: utime+stime deltas of the server process over each phase.
//!
//! tenancy-fixer's throughput is reported per review kind as a ratio of the limit's, measured in
//! the same run.
//!
//! Every request carries a fresh uid, and every answer is checked (HTTP 200, uid echoed);
//! before each phase one answer per kind is checked in full (patch present or not).

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail, ensure};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde::Serialize;
use tenancy_fixer_bench::{self as bench, Latency, Machine, Memory};
use tokio_rustls::TlsConnector;

#[derive(Parser, Debug, Clone)]
#[command(about = "Load generator and figures for the tenancy-fixer admission webhook")]
struct Args {
    /// The `tenancy-fixer` binary (default: next to this one).
    #[arg(long)]
    server: Option<PathBuf>,
    /// The `reference-webhook` binary (default: next to this one).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// The `limit-webhook` binary (default: next to this one).
    #[arg(long)]
    limit: Option<PathBuf>,
    /// Settings file for `tenancy-fixer serve` (default: bench/data/webhook-config.yaml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory of the AdmissionReview bodies (default: bench/data).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Measured seconds of the headline phases (closed and open loop, notebook pods).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before each measurement (not counted).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Open-loop rate, reviews per second (default: half the server's closed-loop notebook
    /// throughput, as the target asks).
    #[arg(long)]
    rate: Option<f64>,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Server starts measured for start-to-listening (median and max reported).
    #[arg(long, default_value_t = 7)]
    starts: usize,
    /// Which servers to run: reference, limit, default (tenancy-fixer, RUST_LOG unset), warn
    /// (RUST_LOG=warn), info (RUST_LOG=info).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "reference,limit,default,warn"
    )]
    servers: Vec<String>,
    /// Run the servers and the generator on the same CPUs instead of the server on the last CPU
    /// and the generator on the others.
    #[arg(long)]
    no_pin: bool,
    /// Write the results as JSON here (e.g. bench/results/webhook.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the servers' log files (in the temp dir) instead of deleting them.
    #[arg(long)]
    keep_logs: bool,
    /// A few seconds in total: checks that everything runs and prints its figures.
    #[arg(long)]
    smoke: bool,
}

impl Args {
    fn smoke(mut self) -> Self {
        self.duration = self.duration.min(1.0);
        self.warmup = self.warmup.min(0.3);
        self.rate = Some(self.rate.unwrap_or(2_000.0).min(2_000.0));
        self.starts = self.starts.min(2);
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads

/// One kind of review: a body template whose request uid is replaced per request.
struct Workload {
    name: &'static str,
    path: &'static str,
    template: Vec<u8>,
    uid_at: usize,
    expect_patch: bool,
}

const UID_LEN: usize = 36;

impl Workload {
    fn load(
        dir: &Path,
        name: &'static str,
        file: &str,
        path: &'static str,
        expect_patch: bool,
    ) -> anyhow::Result<Self> {
        let file = dir.join(file);
        let text = std::fs::read(&file).with_context(|| format!("read {}", file.display()))?;
        let text = text.trim_ascii().to_vec();
        let value: serde_json::Value =
            serde_json::from_slice(&text).with_context(|| format!("parse {}", file.display()))?;
        let uid = value["request"]["uid"]
            .as_str()
            .ok_or_else(|| anyhow!("{}: no request.uid", file.display()))?;
        ensure!(
            uid.len() == UID_LEN,
            "{}: request.uid is not a 36-character uid",
            file.display()
        );
        let needle = format!("\"uid\":\"{uid}\"");
        let at = find(&text, needle.as_bytes())
            .ok_or_else(|| anyhow!("{}: body is not minified", file.display()))?;
        Ok(Self {
            name,
            path,
            template: text,
            uid_at: at + 7,
            expect_patch,
        })
    }

    fn body(&self, n: u64) -> (Bytes, [u8; UID_LEN]) {
        let uid = uid_of(n);
        let mut body = self.template.clone();
        body[self.uid_at..self.uid_at + UID_LEN].copy_from_slice(&uid);
        (Bytes::from(body), uid)
    }
}

fn uid_of(n: u64) -> [u8; UID_LEN] {
    let text = format!(
        "{:08x}-0000-4000-8000-{:012x}",
        (n >> 48) as u32,
        n & 0xffff_ffff_ffff
    );
    text.as_bytes().try_into().expect("36 characters")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

struct Workloads {
    notebook: Arc<Workload>,
    all: Vec<Arc<Workload>>,
}

/// The headline review: the notebook pod.
const NOTEBOOK: &str = "notebook-pod";

fn load_workloads(dir: &Path) -> anyhow::Result<Workloads> {
    let notebook = Arc::new(Workload::load(
        dir,
        NOTEBOOK,
        "notebook-pod.json",
        "/mutate/pods",
        true,
    )?);
    let all = vec![
        notebook.clone(),
        Arc::new(Workload::load(
            dir,
            "trial-job",
            "trial-job.json",
            "/mutate/jobs",
            true,
        )?),
        Arc::new(Workload::load(
            dir,
            "katib-trial-pod",
            "katib-trial-pod.json",
            "/mutate/pods",
            true,
        )?),
        Arc::new(Workload::load(
            dir,
            "plain-pod",
            "plain-pod.json",
            "/mutate/pods",
            false,
        )?),
    ];
    Ok(Workloads { notebook, all })
}

// ---------------------------------------------------------------------------------------------
// Servers under test

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavour {
    Reference,
    Limit,
    /// `rust_log`: the `RUST_LOG` value, none for the default level.
    Tenancy {
        rust_log: Option<&'static str>,
    },
}

/// The server every ratio is relative to.
const LIMIT: &str = "limit";
/// tenancy-fixer as deployed: the default log level.
const DEFAULT: &str = "tenancy-fixer";

impl Flavour {
    fn label(self) -> String {
        match self {
            Flavour::Reference => "reference".into(),
            Flavour::Limit => LIMIT.into(),
            Flavour::Tenancy { rust_log: None } => DEFAULT.into(),
            Flavour::Tenancy {
                rust_log: Some(level),
            } => format!("tenancy-fixer RUST_LOG={level}"),
        }
    }

    /// The reference answers a fixed body: no uid to check, no patch.
    fn checks_answers(self) -> bool {
        !matches!(self, Flavour::Reference)
    }

    /// Whether the answer to `workload` carries a patch: the limit patches notebook pods only.
    fn patches(self, workload: &Workload) -> bool {
        match self {
            Flavour::Reference => false,
            Flavour::Limit => workload.name == NOTEBOOK,
            Flavour::Tenancy { .. } => workload.expect_patch,
        }
    }

    /// Every review kind in closed loop (the ratio's terms), not only the notebook pod.
    fn every_kind(self) -> bool {
        matches!(self, Flavour::Limit | Flavour::Tenancy { rust_log: None })
    }
}

struct Setup {
    server_bin: PathBuf,
    reference_bin: PathBuf,
    limit_bin: PathBuf,
    config: PathBuf,
    /// The CPUs the servers run on (none: not pinned).
    server_cpus: Option<Vec<usize>>,
    cert: PathBuf,
    key: PathBuf,
    ca: Vec<CertificateDer<'static>>,
    dir: PathBuf,
}

struct Server {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    startup: Duration,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Restricts the calling process (and the threads it starts from now on) to `cpus`.
fn pin_to(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays within it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn tls_client_config(ca: &[CertificateDer<'static>]) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca {
        roots.add(cert.clone())?;
    }
    let mut config =
        rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// One blocking TLS handshake: Ok when the server accepted and completed it.
fn tls_probe(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> anyhow::Result<()> {
    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    sock.set_nodelay(true)?;
    let mut conn =
        rustls::ClientConnection::new(config.clone(), ServerName::IpAddress(addr.ip().into()))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    Ok(())
}

impl Setup {
    fn start(&self, flavour: Flavour, run: usize) -> anyhow::Result<Server> {
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = self.dir.join(format!(
            "{}-{run}.log",
            flavour.label().replace([' ', '='], "-")
        ));
        let mut command = match flavour {
            Flavour::Reference => Command::new(&self.reference_bin),
            Flavour::Limit => Command::new(&self.limit_bin),
            Flavour::Tenancy { rust_log } => {
                let mut c = Command::new(&self.server_bin);
                c.args(["serve", "--no-controller", "--config"])
                    .arg(&self.config);
                match rust_log {
                    Some(level) => c.env("RUST_LOG", level),
                    None => c.env_remove("RUST_LOG"),
                };
                c
            }
        };
        if let Some(cpus) = self.server_cpus.clone() {
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure only calls sched_setaffinity, which is async-signal-safe.
            unsafe {
                command.pre_exec(move || pin_to(&cpus));
            }
        }
        command
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--tls-cert")
            .arg(&self.cert)
            .arg("--tls-key")
            .arg(&self.key)
            .env_remove("TENANCY_FIXER_LOG_FORMAT")
            // As deployed (every server: the reference and the limit share the allocator).
            .env("GLIBC_TUNABLES", tenancy_fixer::manifests::MALLOC_TUNABLES)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        let client = Arc::new(tls_client_config(&self.ca)?);
        let started = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("spawn {:?}", command.get_program()))?;
        let pid = child.id();
        loop {
            if tls_probe(addr, &client).is_ok() {
                break;
            }
            if let Some(status) = child.try_wait()? {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                bail!(
                    "{} exited with {status} before listening:\n{text}",
                    flavour.label()
                );
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                bail!(
                    "{} did not accept a TLS connection within 10 s",
                    flavour.label()
                );
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let startup = started.elapsed();
        Ok(Server {
            child,
            pid,
            addr,
            startup,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Client

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

struct Client {
    connector: TlsConnector,
    addr: SocketAddr,
    check: bool,
    next_uid: AtomicU64,
}

/// One connection: the request sender and the connection's driver, polled together by the
/// task that owns both (no second task per connection).
struct Conn {
    sender: Sender,
    driver: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl Client {
    async fn connect(&self) -> anyhow::Result<Conn> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let tls = self
            .connector
            .connect(ServerName::IpAddress(self.addr.ip().into()), tcp)
            .await?;
        let (_, session) = tls.get_ref();
        ensure!(
            session.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3),
            "not TLS 1.3"
        );
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        Ok(Conn {
            sender,
            driver: Box::pin(async move {
                let _ = connection.await;
            }),
        })
    }

    /// Sends one review of `workload`; Ok when answered 200 with our uid.
    async fn review(&self, conn: &mut Conn, workload: &Workload) -> anyhow::Result<Bytes> {
        let (body, uid) = workload.body(self.next_uid.fetch_add(1, Ordering::Relaxed));
        let request = Request::post(workload.path)
            .header(header::HOST, "127.0.0.1")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let Conn { sender, driver } = conn;
        let exchange = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        let (status, body) = tokio::select! {
            biased;
            result = exchange => result?,
            () = driver.as_mut() => bail!("connection closed"),
        };
        ensure!(
            status == StatusCode::OK,
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        if self.check {
            ensure!(
                find(&body, &uid).is_some(),
                "answer does not echo the uid: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(body)
    }

    /// Checks one answer of `workload` in full: allowed, uid, patch present iff expected.
    async fn verify(&self, workload: &Workload, expect_patch: bool) -> anyhow::Result<()> {
        let mut conn = self.connect().await?;
        let body = self.review(&mut conn, workload).await?;
        if !self.check {
            return Ok(());
        }
        let answer: serde_json::Value = serde_json::from_slice(&body)?;
        let response = &answer["response"];
        ensure!(
            response["allowed"] == true,
            "{}: not allowed: {answer}",
            workload.name
        );
        let patched = response.get("patch").is_some();
        ensure!(
            patched == expect_patch,
            "{}: patch present = {patched}: {answer}",
            workload.name
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Phases

#[derive(Clone, Debug, Serialize)]
struct Phase {
    name: String,
    mode: &'static str,
    workload: String,
    connections: usize,
    seconds: f64,
    reviews: u64,
    errors: u64,
    reviews_per_second: f64,
    /// Open loop: reviews still queued 10 s after the end (the server could not keep up).
    unfinished: u64,
    /// Open loop: the scheduled rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    target_rate: Option<f64>,
    /// Closed loop: request to answer. Open loop: scheduled send time to answer.
    latency: Latency,
    /// Open loop: how late the pacing thread released requests (generator overhead).
    #[serde(skip_serializing_if = "Option::is_none")]
    pacer_lateness: Option<Latency>,
    server_cpu_seconds: f64,
    server_cpu_us_per_review: f64,
    server_cpu_cores: f64,
    server_rss_max_mb: f64,
    /// Load generator CPU (this process), in cores.
    client_cpu_cores: f64,
    /// CPU used by other processes on the machine during the phase, in cores (should be ~0:
    /// more means the figures were disturbed).
    other_cpu_cores: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
}

struct Sampler {
    pid: u32,
    rss_max: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    /// Samples the server's RSS every 50 ms.
    fn start(pid: u32) -> Self {
        let rss_max = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (rss_max, stop) = (rss_max.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(m) = bench::process_memory(pid) {
                        rss_max.fetch_max(m.rss, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        Self {
            pid,
            rss_max,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let last = bench::process_memory(self.pid).map(|m| m.rss).unwrap_or(0);
        self.rss_max.load(Ordering::Relaxed).max(last)
    }
}

struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.start && t <= self.end
    }
}

#[derive(Default)]
struct TaskResult {
    latency: Option<Histogram<u64>>,
    errors: u64,
    first_error: Option<String>,
}

impl TaskResult {
    fn error(&mut self, e: anyhow::Error) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| format!("{e:#}"));
    }
}

fn merge(results: Vec<TaskResult>) -> (Histogram<u64>, u64, Option<String>) {
    let mut all = bench::histogram();
    let mut errors = 0;
    let mut first = None;
    for r in results {
        if let Some(h) = r.latency {
            all.add(h).expect("same bounds");
        }
        errors += r.errors;
        if first.is_none() {
            first = r.first_error;
        }
    }
    (all, errors, first)
}

fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

/// The server under load and the connections to it.
struct Load {
    client: Arc<Client>,
    pid: u32,
    connections: usize,
}

impl Load {
    async fn open_connections(&self) -> anyhow::Result<Vec<Conn>> {
        let mut conns = Vec::with_capacity(self.connections);
        for _ in 0..self.connections {
            conns.push(self.client.connect().await?);
        }
        Ok(conns)
    }
}

/// Max throughput: every connection sends its next review as soon as it has an answer.
async fn closed_loop(
    load: &Load,
    name: &str,
    workloads: Vec<Arc<Workload>>,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Phase> {
    let conns = load.open_connections().await?;
    let now = Instant::now();
    let window = Arc::new(Window {
        start: now + warmup,
        end: now + warmup + duration,
    });
    let mut tasks = Vec::with_capacity(load.connections);
    for (i, mut conn) in conns.into_iter().enumerate() {
        let (client, window, workloads) = (load.client.clone(), window.clone(), workloads.clone());
        tasks.push(tokio::spawn(async move {
            let mut result = TaskResult {
                latency: Some(bench::histogram()),
                ..Default::default()
            };
            let mut n = i;
            loop {
                let workload = &workloads[n % workloads.len()];
                n += 1;
                let sent = Instant::now();
                if sent >= window.end {
                    break;
                }
                let outcome = client.review(&mut conn, workload).await;
                let done = Instant::now();
                match outcome {
                    Ok(_) if window.contains(done) && sent >= window.start => {
                        result
                            .latency
                            .as_mut()
                            .unwrap()
                            .saturating_record(ns(done - sent));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        result.error(e);
                        match client.connect().await {
                            Ok(c) => conn = c,
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                }
            }
            result
        }));
    }
    let (server_cpu, rss_max, others) = measure(load.pid, &window).await;
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await?);
    }
    let (latency, errors, first_error) = merge(results);
    let label = workloads
        .iter()
        .map(|w| w.name)
        .collect::<Vec<_>>()
        .join("+");
    Ok(phase(
        name,
        "closed",
        label,
        load.connections,
        duration,
        latency,
        errors,
        first_error,
        None,
        None,
        server_cpu,
        rss_max,
        others,
    ))
}

/// Fixed rate: a pacing thread releases one review every 1/rate s onto a queue that the
/// connections take from when free; latency counts from the scheduled time.
async fn open_loop(
    load: &Load,
    name: &str,
    workload: Arc<Workload>,
    rate: f64,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Phase> {
    let conns = load.open_connections().await?;
    let start = Instant::now() + Duration::from_millis(20);
    let window = Arc::new(Window {
        start: start + warmup,
        end: start + warmup + duration,
    });
    let (tx, rx) = async_channel::unbounded::<Instant>();
    let pacer = std::thread::spawn({
        let window = window.clone();
        move || {
            // Wake-ups as precise as the kernel allows (the default timer slack is 50 µs).
            // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
            let mut lateness = bench::histogram();
            let period = Duration::from_secs_f64(1.0 / rate);
            let mut i: u32 = 0;
            loop {
                let scheduled = start + period * i;
                if scheduled > window.end {
                    break;
                }
                let now = Instant::now();
                if scheduled > now {
                    std::thread::sleep(scheduled - now);
                }
                if window.contains(scheduled) {
                    lateness
                        .saturating_record(ns(Instant::now().saturating_duration_since(scheduled)));
                }
                if tx.send_blocking(scheduled).is_err() {
                    break;
                }
                i += 1;
            }
            lateness
        }
    });
    let hard_end = window.end + Duration::from_secs(10);
    let mut tasks = Vec::with_capacity(load.connections);
    for mut conn in conns {
        let (client, window, workload, rx) = (
            load.client.clone(),
            window.clone(),
            workload.clone(),
            rx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut result = TaskResult {
                latency: Some(bench::histogram()),
                ..Default::default()
            };
            while let Ok(scheduled) = rx.recv().await {
                if Instant::now() > hard_end {
                    break; // overloaded: what is still queued is counted as unfinished
                }
                let outcome = client.review(&mut conn, &workload).await;
                let done = Instant::now();
                match outcome {
                    Ok(_) if window.contains(scheduled) => {
                        result
                            .latency
                            .as_mut()
                            .unwrap()
                            .saturating_record(ns(done - scheduled));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        result.error(e);
                        if let Ok(c) = client.connect().await {
                            conn = c;
                        }
                    }
                }
            }
            result
        }));
    }
    let (server_cpu, rss_max, others) = measure(load.pid, &window).await;
    let lateness = tokio::task::spawn_blocking(move || pacer.join())
        .await?
        .map_err(|_| anyhow!("pacer panicked"))?;
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await?);
    }
    let unfinished = rx.len() as u64;
    drop(rx);
    let (latency, errors, first_error) = merge(results);
    let mut p = phase(
        name,
        "open",
        workload.name.to_string(),
        load.connections,
        duration,
        latency,
        errors,
        first_error,
        Some(rate),
        Some(Latency::of(&lateness)),
        server_cpu,
        rss_max,
        others,
    );
    p.unfinished = unfinished;
    Ok(p)
}

/// Over the measured window: the server's CPU, its RSS high-water mark, and the CPU used by
/// everything else (the load generator, other processes).
async fn measure(pid: u32, window: &Window) -> (Duration, u64, Others) {
    tokio::time::sleep_until(window.start.into()).await;
    let me = std::process::id();
    let (cpu0, own0, all0) = (
        bench::process_cpu(pid).unwrap_or_default(),
        bench::process_cpu(me).unwrap_or_default(),
        bench::CpuReading::now(&[pid, me]),
    );
    let sampler = Sampler::start(pid);
    tokio::time::sleep_until(window.end.into()).await;
    let (cpu1, own1, all1) = (
        bench::process_cpu(pid).unwrap_or_default(),
        bench::process_cpu(me).unwrap_or_default(),
        bench::CpuReading::now(&[pid, me]),
    );
    let others = Others {
        client: own1.saturating_sub(own0),
        others: all1.others_since(&all0),
    };
    (cpu1 - cpu0, sampler.finish(), others)
}

/// CPU used during a phase besides the server's.
struct Others {
    client: Duration,
    others: f64,
}

#[allow(clippy::too_many_arguments)]
fn phase(
    name: &str,
    mode: &'static str,
    workload: String,
    connections: usize,
    duration: Duration,
    latency: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    target_rate: Option<f64>,
    pacer_lateness: Option<Latency>,
    cpu: Duration,
    rss_max: u64,
    others: Others,
) -> Phase {
    let seconds = duration.as_secs_f64();
    let reviews = latency.len();
    Phase {
        name: name.into(),
        mode,
        workload,
        connections,
        seconds,
        reviews,
        errors,
        reviews_per_second: reviews as f64 / seconds,
        unfinished: 0,
        target_rate,
        latency: Latency::of(&latency),
        pacer_lateness,
        server_cpu_seconds: cpu.as_secs_f64(),
        server_cpu_us_per_review: if reviews > 0 {
            cpu.as_secs_f64() * 1e6 / reviews as f64
        } else {
            0.0
        },
        server_cpu_cores: cpu.as_secs_f64() / seconds,
        server_rss_max_mb: bench::mb(rss_max),
        client_cpu_cores: others.client.as_secs_f64() / seconds,
        other_cpu_cores: others.others / seconds,
        first_error,
    }
}

// ---------------------------------------------------------------------------------------------
// One server's run

#[derive(Clone, Debug, Serialize)]
struct Startup {
    runs: usize,
    median_ms: f64,
    max_ms: f64,
    all_ms: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
struct ServerReport {
    server: String,
    startup: Startup,
    rss_idle_mb: f64,
    threads: u64,
    phases: Vec<Phase>,
    rss_hwm_mb: f64,
    /// Log lines the server wrote (one per admission decision at RUST_LOG=info).
    log_lines: u64,
    log_bytes: u64,
}

fn count_lines(path: &Path) -> (u64, u64) {
    use std::io::Read;
    let Ok(mut file) = std::fs::File::open(path) else {
        return (0, 0);
    };
    let mut buf = vec![0u8; 1 << 20];
    let (mut lines, mut bytes) = (0u64, 0u64);
    while let Ok(n) = file.read(&mut buf) {
        if n == 0 {
            break;
        }
        bytes += n as u64;
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
    (lines, bytes)
}

async fn run_server(
    args: &Args,
    setup: &Setup,
    workloads: &Workloads,
    flavour: Flavour,
) -> anyhow::Result<ServerReport> {
    let label = flavour.label();
    eprintln!("== {label}");
    // Start-to-listening, over several starts (the last one is kept for the load).
    let mut startups = Vec::new();
    let mut server = None;
    for run in 0..args.starts.max(1) {
        drop(server.take());
        let s = setup.start(flavour, run)?;
        startups.push(s.startup.as_secs_f64() * 1000.0);
        server = Some(s);
    }
    let server = server.expect("at least one start");
    let mut sorted = startups.clone();
    sorted.sort_by(f64::total_cmp);
    let startup = Startup {
        runs: sorted.len(),
        median_ms: sorted[sorted.len() / 2],
        max_ms: *sorted.last().unwrap(),
        all_ms: startups,
    };
    eprintln!(
        "   start to listening: median {:.1} ms, max {:.1} ms",
        startup.median_ms, startup.max_ms
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = bench::process_memory(server.pid).unwrap_or_default();
    let threads = bench::process_threads(server.pid).unwrap_or(0);
    eprintln!(
        "   idle RSS {:.1} MB, {threads} threads",
        bench::mb(idle.rss)
    );

    let client = Arc::new(Client {
        connector: TlsConnector::from(Arc::new(tls_client_config(&setup.ca)?)),
        addr: server.addr,
        check: flavour.checks_answers(),
        next_uid: AtomicU64::new(1),
    });
    for w in &workloads.all {
        client
            .verify(w, flavour.patches(w))
            .await
            .with_context(|| format!("{label}: {}", w.name))?;
    }

    let warmup = Duration::from_secs_f64(args.warmup);
    let full = Duration::from_secs_f64(args.duration);
    let half = Duration::from_secs_f64(args.duration / 2.0);
    let load = Load {
        client: client.clone(),
        pid: server.pid,
        connections: args.connections,
    };
    let mut phases = Vec::new();
    let mut report = |p: Phase| {
        eprintln!(
            "   {:<28} {:>9.0} reviews/s  p50 {:>7.0} µs  p99 {:>7.0} µs  p99.9 {:>7.0} µs  cpu {:>5.1} µs/review ({:.2} cores)  rss {:.1} MB  client {:.2} others {:.2} cores  errors {}",
            p.name,
            p.reviews_per_second,
            p.latency.p50_us,
            p.latency.p99_us,
            p.latency.p999_us,
            p.server_cpu_us_per_review,
            p.server_cpu_cores,
            p.server_rss_max_mb,
            p.client_cpu_cores,
            p.other_cpu_cores,
            p.errors
        );
        if p.unfinished > 0 {
            eprintln!(
                "      overloaded: {} scheduled reviews still queued 10 s after the end",
                p.unfinished
            );
        }
        if let Some(e) = &p.first_error {
            eprintln!("      first error: {e}");
        }
        phases.push(p);
    };
    let notebook = vec![workloads.notebook.clone()];
    let closed = closed_loop(&load, "closed notebook-pod", notebook.clone(), warmup, full).await?;
    // Half the capacity just measured, unless a rate is given.
    let rate = args
        .rate
        .unwrap_or((closed.reviews_per_second / 2.0).max(100.0));
    report(closed);
    if flavour.every_kind() {
        for w in workloads.all.iter().skip(1) {
            let name = format!("closed {}", w.name);
            report(closed_loop(&load, &name, vec![w.clone()], warmup / 2, half).await?);
        }
    }
    if matches!(flavour, Flavour::Tenancy { .. }) {
        report(
            closed_loop(
                &load,
                "closed mixed",
                workloads.all.clone(),
                warmup / 2,
                half,
            )
            .await?,
        );
    }
    let name = format!("open notebook-pod @{rate:.0}/s");
    report(open_loop(&load, &name, workloads.notebook.clone(), rate, warmup, full).await?);

    let memory: Memory = bench::process_memory(load.pid).unwrap_or_default();
    drop(server);
    let log = setup.dir.join(format!(
        "{}-{}.log",
        label.replace([' ', '='], "-"),
        args.starts.max(1) - 1
    ));
    let (log_lines, log_bytes) = count_lines(&log);
    if !args.keep_logs {
        for run in 0..args.starts.max(1) {
            let _ = std::fs::remove_file(
                setup
                    .dir
                    .join(format!("{}-{run}.log", label.replace([' ', '='], "-"))),
            );
        }
    }
    Ok(ServerReport {
        server: label,
        startup,
        rss_idle_mb: bench::mb(idle.rss),
        threads,
        phases,
        rss_hwm_mb: bench::mb(memory.hwm),
        log_lines,
        log_bytes,
    })
}

// ---------------------------------------------------------------------------------------------
// Report

#[derive(Clone, Debug, Serialize)]
struct Target {
    target: String,
    figure: String,
    value: f64,
    limit: f64,
    met: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    benchmark: &'static str,
    unix_time: u64,
    revision: Option<String>,
    machine: Machine,
    smoke: bool,
    connections: usize,
    duration_s: f64,
    warmup_s: f64,
    /// The open-loop rate given; none: half of each server's closed-loop throughput.
    open_loop_rate: Option<f64>,
    /// The CPUs the servers were pinned to (the generator had the others); none: not pinned.
    server_cpus: Option<Vec<usize>>,
    client_threads: usize,
    tls: String,
    bodies: Vec<(String, usize)>,
    servers: Vec<ServerReport>,
    ratios: Vec<Ratio>,
    targets: Vec<Target>,
}

fn find_phase<'a>(
    servers: &'a [ServerReport],
    server: &str,
    phase_prefix: &str,
) -> Option<&'a Phase> {
    servers
        .iter()
        .find(|s| s.server == server)?
        .phases
        .iter()
        .find(|p| p.name.starts_with(phase_prefix))
}

/// tenancy-fixer (default log level) over the limit, per review kind, measured in the same run.
#[derive(Clone, Debug, Serialize)]
struct Ratio {
    workload: String,
    limit_reviews_per_second: f64,
    ours_reviews_per_second: f64,
    /// ours / limit, throughput.
    throughput: f64,
    /// limit / ours, server CPU per review: the throughput ratio of the two servers each
    /// saturating its CPU (the measured throughput ratio understates the gap when the
    /// generator, not the limit, was the bottleneck).
    capacity: f64,
    limit_cpu_us_per_review: f64,
    ours_cpu_us_per_review: f64,
}

fn ratios(servers: &[ServerReport], workloads: &Workloads) -> Vec<Ratio> {
    workloads
        .all
        .iter()
        .filter_map(|w| {
            let phase = format!("closed {}", w.name);
            let limit = find_phase(servers, LIMIT, &phase)?;
            let ours = find_phase(servers, DEFAULT, &phase)?;
            Some(Ratio {
                workload: w.name.to_string(),
                limit_reviews_per_second: limit.reviews_per_second,
                ours_reviews_per_second: ours.reviews_per_second,
                throughput: ours.reviews_per_second / limit.reviews_per_second,
                capacity: limit.server_cpu_us_per_review / ours.server_cpu_us_per_review,
                limit_cpu_us_per_review: limit.server_cpu_us_per_review,
                ours_cpu_us_per_review: ours.server_cpu_us_per_review,
            })
        })
        .collect()
}

fn targets(servers: &[ServerReport], ratios: &[Ratio]) -> Vec<Target> {
    let mut out = Vec::new();
    let mut push = |target: &str, figure: String, value: f64, limit: f64, at_least: bool| {
        let met = if at_least {
            value >= limit
        } else {
            value <= limit
        };
        out.push(Target {
            target: target.into(),
            figure,
            value,
            limit,
            met,
        });
    };
    if let Some(r) = ratios.iter().find(|r| r.workload == NOTEBOOK) {
        push(
            ">= 0.8 of the limit's throughput",
            format!("{DEFAULT}, closed {NOTEBOOK}, ours / limit"),
            r.throughput,
            0.8,
            true,
        );
        push(
            ">= 0.8 of the limit's capacity (server CPU per review)",
            format!("{DEFAULT}, closed {NOTEBOOK}, limit CPU / ours"),
            r.capacity,
            0.8,
            true,
        );
    }
    for s in servers
        .iter()
        .filter(|s| s.server.starts_with("tenancy-fixer"))
    {
        let server = &s.server;
        if let Some(p) = find_phase(servers, server, "open ") {
            push(
                "open loop p99 <= 1 ms",
                format!("{server}, {}", p.name),
                p.latency.p99_us,
                1000.0,
                false,
            );
            push(
                "open loop p99.9 <= 5 ms",
                format!("{server}, {}", p.name),
                p.latency.p999_us,
                5000.0,
                false,
            );
        }
        push(
            "RSS idle <= 15 MB",
            server.clone(),
            s.rss_idle_mb,
            15.0,
            false,
        );
        let under_load = s
            .phases
            .iter()
            .map(|p| p.server_rss_max_mb)
            .fold(s.rss_hwm_mb, f64::max);
        push(
            "RSS under load <= 30 MB",
            format!("{server}, high-water mark"),
            under_load,
            30.0,
            false,
        );
        push(
            "start to listening <= 50 ms",
            format!("{server}, median of {}", s.startup.runs),
            s.startup.median_ms,
            50.0,
            false,
        );
        push(
            "start to listening <= 50 ms",
            format!("{server}, max of {}", s.startup.runs),
            s.startup.max_ms,
            50.0,
            false,
        );
    }
    out
}

fn print_report(report: &Report) {
    println!();
    println!(
        "webhook-load: {} connections, TLS 1.3, HTTP/1.1 keep-alive, {} s measured after {} s warm-up; {} client threads; {} ({} CPUs); servers on CPUs {:?}",
        report.connections,
        report.duration_s,
        report.warmup_s,
        report.client_threads,
        report.machine.cpu_model,
        report.machine.cpus,
        report.server_cpus
    );
    println!(
        "{:<30} {:<30} {:>10} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>7} {:>7} {:>7}",
        "server",
        "phase",
        "reviews/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "cpu µs",
        "cores",
        "client",
        "others",
        "errors"
    );
    for s in &report.servers {
        for p in &s.phases {
            println!(
                "{:<30} {:<30} {:>10.0} {:>8.0} {:>8.0} {:>8.0} {:>9.0} {:>8.1} {:>8.2} {:>7.2} {:>7.2} {:>7}",
                s.server,
                p.name,
                p.reviews_per_second,
                p.latency.p50_us,
                p.latency.p99_us,
                p.latency.p999_us,
                p.latency.max_us,
                p.server_cpu_us_per_review,
                p.server_cpu_cores,
                p.client_cpu_cores,
                p.other_cpu_cores,
                p.errors
            );
        }
    }
    println!();
    println!(
        "{:<30} {:>16} {:>16} {:>12} {:>14} {:>10} {:>8}",
        "server",
        "start median ms",
        "start max ms",
        "idle RSS MB",
        "RSS HWM MB",
        "log lines",
        "threads"
    );
    for s in &report.servers {
        println!(
            "{:<30} {:>16.1} {:>16.1} {:>12.1} {:>14.1} {:>10} {:>8}",
            s.server,
            s.startup.median_ms,
            s.startup.max_ms,
            s.rss_idle_mb,
            s.rss_hwm_mb,
            s.log_lines,
            s.threads
        );
    }
    if !report.ratios.is_empty() {
        println!();
        println!(
            "{:<18} {:>14} {:>14} {:>12} {:>16} {:>16} {:>10}",
            "ours / limit",
            "limit rev/s",
            "ours rev/s",
            "throughput",
            "limit cpu µs",
            "ours cpu µs",
            "capacity"
        );
        for r in &report.ratios {
            println!(
                "{:<18} {:>14.0} {:>14.0} {:>12.2} {:>16.1} {:>16.1} {:>10.2}",
                r.workload,
                r.limit_reviews_per_second,
                r.ours_reviews_per_second,
                r.throughput,
                r.limit_cpu_us_per_review,
                r.ours_cpu_us_per_review,
                r.capacity
            );
        }
    }
    println!();
    println!(
        "{:<34} {:<60} {:>10} {:>10}  status",
        "target", "figure", "value", "limit"
    );
    for t in &report.targets {
        println!(
            "{:<34} {:<60} {:>10.1} {:>10.1}  {}",
            t.target,
            t.figure,
            t.value,
            t.limit,
            if t.met { "met" } else { "MISSED" }
        );
    }
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = Args::parse();
    if args.smoke {
        args = args.smoke();
    }
    let exe_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let root = bench::repo_root();
    let data = args.data.clone().unwrap_or_else(|| root.join("bench/data"));
    let dir = std::env::temp_dir().join(format!("webhook-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tls = tenancy_fixer::local::WebhookTls::generate(&dir)?;
    let ca =
        CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    // The server on the last CPU, the generator (this process, and the threads it starts from
    // now on) on the others: they do not take each other's cycles.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let server_cpus = (!args.no_pin && cpus >= 2).then(|| vec![cpus - 1]);
    if server_cpus.is_some() {
        pin_to(&(0..cpus - 1).collect::<Vec<_>>()).context("pin the generator")?;
    }
    let setup = Setup {
        server_cpus,
        server_bin: args
            .server
            .clone()
            .unwrap_or_else(|| exe_dir.join("tenancy-fixer")),
        reference_bin: args
            .reference
            .clone()
            .unwrap_or_else(|| exe_dir.join("reference-webhook")),
        limit_bin: args
            .limit
            .clone()
            .unwrap_or_else(|| exe_dir.join("limit-webhook")),
        config: args
            .config
            .clone()
            .unwrap_or_else(|| data.join("webhook-config.yaml")),
        cert: tls.cert.clone(),
        key: tls.key.clone(),
        ca,
        dir: dir.clone(),
    };
    for bin in [&setup.server_bin, &setup.reference_bin, &setup.limit_bin] {
        ensure!(
            bin.exists(),
            "{} not found: run `cargo build --release --workspace` first",
            bin.display()
        );
    }
    let workloads = load_workloads(&data)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()?;
    let mut servers = Vec::new();
    for name in &args.servers {
        let flavour = match name.as_str() {
            "reference" => Flavour::Reference,
            "limit" => Flavour::Limit,
            "default" => Flavour::Tenancy { rust_log: None },
            "info" => Flavour::Tenancy {
                rust_log: Some("info"),
            },
            "warn" => Flavour::Tenancy {
                rust_log: Some("warn"),
            },
            other => bail!("unknown server {other:?} (reference, limit, default, info, warn)"),
        };
        servers.push(runtime.block_on(run_server(&args, &setup, &workloads, flavour))?);
    }
    let ratios = ratios(&servers, &workloads);
    let report = Report {
        benchmark: "webhook-load",
        unix_time: bench::unix_time(),
        revision: bench::git_revision(&root),
        machine: Machine::describe(),
        smoke: args.smoke,
        connections: args.connections,
        duration_s: args.duration,
        warmup_s: args.warmup,
        open_loop_rate: args.rate,
        server_cpus: setup.server_cpus.clone(),
        client_threads: args.client_threads,
        tls: "TLS 1.3 only (client), ring provider, ALPN http/1.1".into(),
        bodies: workloads
            .all
            .iter()
            .map(|w| (w.name.to_string(), w.template.len()))
            .collect(),
        targets: targets(&servers, &ratios),
        ratios,
        servers,
    };
    print_report(&report);
    if let Some(out) = &args.out {
        bench::write_json(out, &report)?;
        eprintln!("wrote {}", out.display());
    }
    if !args.keep_logs {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("server logs kept in {}", dir.display());
    }
    let errors: u64 = report
        .servers
        .iter()
        .flat_map(|s| &s.phases)
        .map(|p| p.errors)
        .sum();
    ensure!(errors == 0, "{errors} requests failed");
    Ok(())
}
