//! `controller-load`: the profile controller against a real API server (testenv).
//!
//! 1. Starts testenv (etcd + kube-apiserver, the Kubeflow and Istio CRDs of target/crds) and the controller as a
//!    child process of this binary (`controller-load child`, which runs
//!    `tenancy_fixer::controller::run_with_stats` exactly as `serve` does after discovery, and
//!    prints its counters as JSON lines), so its RSS and CPU are the controller's own.
//! 2. Creates N Profiles and their namespaces (the Profile the namespace's controller owner, as
//!    the profile-controller makes them) at once from this process (concurrent requests over a
//!    pool of connections) and measures the time until every profile's objects exist (seen
//!    through watches), the API writes per profile, and the controller's RSS and CPU.
//! 3. Restarts the controller with nothing changed: the new one reconciles every profile once
//!    its caches are filled (what a periodic resync does too) and must write nothing.
//!
//! kube-rs has no client-side rate limiter (client-go's default is QPS 5 / burst 10): nothing
//! throttles the controller below what the API server accepts; its own bound is
//! `controller::CONCURRENCY` reconciles in flight. testenv's admin user is in
//! `system:masters`, which API Priority and Fairness exempts.

use std::{
    collections::HashSet,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures::{StreamExt, TryStreamExt};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde::Serialize;
use serde_json::json;
use tenancy_fixer::{
    config::{Config, Settings},
    controller::{self, StatsSnapshot},
    istio::{MANAGED_BY, MANAGED_BY_LABEL, ManagedKind},
    local::Testenv,
    model::Profile,
};
use tenancy_fixer_bench::{self as bench, Machine};

#[global_allocator]
static ALLOC: tenancy_fixer_bench::Allocator = tenancy_fixer_bench::ALLOCATOR;

#[derive(Parser, Debug)]
#[command(about = "Profile controller benchmark against testenv")]
struct Args {
    #[command(subcommand)]
    child: Option<ChildCommand>,
    /// Profiles (and namespaces) created at once.
    #[arg(long, default_value_t = 1000)]
    profiles: usize,
    /// kfpAccess mode: header (AuthorizationPolicy + EnvoyFilter per profile) or token (PodDefault).
    #[arg(long, default_value = "header")]
    kfp_access: String,
    /// Create requests in flight from the benchmark's client.
    #[arg(long, default_value_t = 64)]
    create_concurrency: usize,
    /// Give up waiting for convergence after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// The testenv binary (default: target/testenv/testenv, built by testenv/build.sh).
    #[arg(long)]
    testenv: Option<PathBuf>,
    /// Write the results as JSON here (e.g. bench/results/controller.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep testenv's and the controllers' logs (in the temp dir).
    #[arg(long)]
    keep_logs: bool,
    /// 20 profiles: checks that everything runs and prints its figures.
    #[arg(long)]
    smoke: bool,
}

#[derive(Subcommand, Debug)]
enum ChildCommand {
    /// (internal) Run the controller and print its counters as JSON lines.
    Child {
        #[arg(long)]
        kubeconfig: PathBuf,
        #[arg(long)]
        kfp_access: String,
    },
}

fn settings(kfp_access: &str) -> anyhow::Result<Settings> {
    Ok(Settings::from_yaml(
        &format!("kfpAccess: {kfp_access}\n"),
        "controller-load",
    )?)
}

// ---------------------------------------------------------------------------------------------
// The controller process

fn run_child(kubeconfig: &Path, kfp_access: &str) -> anyhow::Result<()> {
    tenancy_fixer::telemetry::init(tenancy_fixer::telemetry::LogFormat::Text, "info");
    let settings = settings(kfp_access)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = tenancy_fixer::local::client_from_kubeconfig(kubeconfig).await?;
        let capabilities = controller::discover(&client).await?;
        let config: Config = settings.resolve(&capabilities);
        let stats = Arc::new(controller::Stats::default());
        let printer = tokio::spawn({
            let stats = stats.clone();
            async move {
                loop {
                    let line = serde_json::to_string(&stats.snapshot()).unwrap_or_default();
                    let written = {
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "{line}").and_then(|()| out.flush())
                    };
                    if written.is_err() {
                        std::process::exit(0); // the benchmark went away
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        let result = controller::run_with_stats(client, Arc::new(config), stats).await;
        printer.abort();
        result.map_err(anyhow::Error::from)
    })
}

/// A controller child process and its latest counters.
struct ControllerProcess {
    child: Child,
    pid: u32,
    latest: Arc<Mutex<Option<StatsSnapshot>>>,
    started: Instant,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SnapshotLine {
    reconciles: u64,
    failed_reconciles: u64,
    applies: u64,
    deletes: u64,
    finalizer_patches: u64,
}

impl ControllerProcess {
    fn start(kubeconfig: &Path, kfp_access: &str, log: &Path) -> anyhow::Result<Self> {
        let started = Instant::now();
        let mut child = Command::new(std::env::current_exe()?)
            .args(["child", "--kubeconfig"])
            .arg(kubeconfig)
            .args(["--kfp-access", kfp_access])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .spawn()?;
        let pid = child.id();
        let latest = Arc::new(Mutex::new(None));
        let stdout = child.stdout.take().expect("piped");
        std::thread::spawn({
            let latest = latest.clone();
            move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(s) = serde_json::from_str::<SnapshotLine>(&line) {
                        *latest.lock().unwrap() = Some(StatsSnapshot {
                            reconciles: s.reconciles,
                            failed_reconciles: s.failed_reconciles,
                            applies: s.applies,
                            deletes: s.deletes,
                            finalizer_patches: s.finalizer_patches,
                        });
                    }
                }
            }
        });
        Ok(Self {
            child,
            pid,
            latest,
            started,
        })
    }

    fn stats(&self) -> StatsSnapshot {
        self.latest.lock().unwrap().unwrap_or_default()
    }

    fn check_alive(&mut self, log: &Path) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            bail!(
                "controller exited with {status}; last log lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    /// Waits until the counters have not moved for `quiet` (and at least one line arrived).
    /// Returns the counters and when they last changed.
    async fn settle(
        &mut self,
        quiet: Duration,
        timeout: Duration,
        log: &Path,
    ) -> anyhow::Result<(StatsSnapshot, Instant)> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        let mut since = Instant::now();
        loop {
            self.check_alive(log)?;
            let now = self.stats();
            if last != Some(now) {
                last = Some(now);
                since = Instant::now();
            } else if self.latest.lock().unwrap().is_some() && since.elapsed() >= quiet {
                return Ok((now, since));
            }
            if Instant::now() > deadline {
                return Ok((now, since));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Watching convergence from the benchmark's side

/// Names seen through watches: managed objects per kind.
#[derive(Default)]
struct Seen {
    objects: Mutex<HashSet<(String, String, String)>>,
}

fn watch_converged(
    client: &Client,
    kinds: &[ManagedKind],
    seen: Arc<Seen>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY}");
    for &kind in kinds {
        let api = Api::<DynamicObject>::all_with(client.clone(), &kind.api_resource());
        let seen = seen.clone();
        let config = watcher::Config::default().labels(&selector);
        tasks.push(tokio::spawn(async move {
            let mut events = watcher(api, config)
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(event) = events.next().await {
                if let Ok(o) = event {
                    seen.objects.lock().unwrap().insert((
                        format!("{kind:?}"),
                        o.namespace().unwrap_or_default(),
                        o.name_any(),
                    ));
                }
            }
        }));
    }
    tasks
}

// ---------------------------------------------------------------------------------------------
// Report

#[derive(Debug, Serialize)]
struct Converge {
    profiles: usize,
    objects_per_profile: usize,
    /// From the first create request to the last create answered (the benchmark's client).
    create_seconds: f64,
    create_requests_per_second: f64,
    /// From the first create request until every object exists.
    converged_seconds: f64,
    converged: bool,
    stats: StatsSnapshot,
    writes: u64,
    writes_per_profile: f64,
    controller_cpu_seconds: f64,
    controller_rss_mb: f64,
    controller_rss_hwm_mb: f64,
}

#[derive(Debug, Serialize)]
struct Resync {
    what: &'static str,
    /// From the new controller's spawn until its counters stopped moving (every profile
    /// reconciled from filled caches; 50 ms resolution).
    all_reconciled_seconds: f64,
    stats: StatsSnapshot,
    writes: u64,
    controller_cpu_seconds: f64,
    controller_rss_hwm_mb: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    benchmark: &'static str,
    unix_time: u64,
    revision: Option<String>,
    machine: Machine,
    smoke: bool,
    kfp_access: String,
    kinds: Vec<String>,
    client_rate_limiter: &'static str,
    controller_concurrency: u16,
    create_concurrency: usize,
    testenv_start_seconds: f64,
    converge: Converge,
    resync: Resync,
    targets: Vec<Target>,
}

#[derive(Debug, Serialize)]
struct Target {
    target: String,
    value: f64,
    limit: f64,
    met: bool,
}

fn print_report(r: &Report) {
    let c = &r.converge;
    println!();
    println!(
        "controller-load: {} profiles, kfpAccess {} ({}), {} ({} CPUs)",
        c.profiles,
        r.kfp_access,
        r.kinds.join(" + "),
        r.machine.cpu_model,
        r.machine.cpus
    );
    println!(
        "  testenv start                  {:>10.1} s",
        r.testenv_start_seconds
    );
    println!(
        "  create namespaces + profiles   {:>10.2} s  ({:.0} requests/s from the benchmark client, {} in flight)",
        c.create_seconds, c.create_requests_per_second, r.create_concurrency
    );
    println!(
        "  converged (all objects exist)  {:>10.2} s  {}",
        c.converged_seconds,
        if c.converged { "" } else { "(TIMED OUT)" }
    );
    println!(
        "  API writes                     {:>10}    {:.2} per profile (applies {}, deletes {}, finalizer patches {}); reconciles {}, failed {}",
        c.writes,
        c.writes_per_profile,
        c.stats.applies,
        c.stats.deletes,
        c.stats.finalizer_patches,
        c.stats.reconciles,
        c.stats.failed_reconciles
    );
    println!(
        "  controller CPU {:.2} s, RSS {:.1} MB (high-water {:.1} MB)",
        c.controller_cpu_seconds, c.controller_rss_mb, c.controller_rss_hwm_mb
    );
    let s = &r.resync;
    println!(
        "  resync ({}): all {} profiles reconciled in {:.2} s, writes {} (reconciles {}, failed {}), CPU {:.2} s, RSS high-water {:.1} MB",
        s.what,
        c.profiles,
        s.all_reconciled_seconds,
        s.writes,
        s.stats.reconciles,
        s.stats.failed_reconciles,
        s.controller_cpu_seconds,
        s.controller_rss_hwm_mb
    );
    println!("  client rate limiter: {}", r.client_rate_limiter);
    println!();
    println!("{:<52} {:>10} {:>10}  status", "target", "value", "limit");
    for t in &r.targets {
        println!(
            "{:<52} {:>10.2} {:>10.2}  {}",
            t.target,
            t.value,
            t.limit,
            if t.met { "met" } else { "MISSED" }
        );
    }
}

// ---------------------------------------------------------------------------------------------

/// Each Profile, then its namespace the way the profile-controller makes it (the controller
/// acts only on namespaces their Profile controls).
async fn create_all(client: &Client, n: usize, concurrency: usize) -> anyhow::Result<()> {
    let profiles: Api<Profile> = Api::all(client.clone());
    let pp = PostParams::default();
    futures::stream::iter(0..n)
        .map(|i| {
            let (profiles, pp) = (profiles.clone(), pp.clone());
            async move {
                let name = format!("user-{i:04}");
                let profile: Profile = serde_json::from_value(json!({
                    "apiVersion": "kubeflow.org/v1", "kind": "Profile",
                    "metadata": {"name": name},
                    "spec": {"owner": {"kind": "User", "name": format!("{name}@example.com")}},
                }))?;
                let stored = profiles
                    .create(&pp, &profile)
                    .await
                    .with_context(|| format!("create profile {name}"))?;
                tenancy_fixer::local::ensure_profile_namespace(
                    client,
                    &serde_json::to_value(&stored)?,
                )
                .await
                .with_context(|| format!("create namespace {name}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<Report> {
    let root = bench::repo_root();
    let n = if args.smoke {
        args.profiles.min(20)
    } else {
        args.profiles
    };
    let testenv_bin = args
        .testenv
        .clone()
        .unwrap_or_else(|| root.join("target/testenv/testenv"));
    if args.testenv.is_none() {
        let status = Command::new(root.join("testenv/build.sh"))
            .stdout(Stdio::inherit())
            .status()
            .context("run testenv/build.sh")?;
        if !status.success() {
            bail!("testenv/build.sh failed");
        }
    }
    let status = Command::new(root.join("testenv/crds.sh"))
        .status()
        .context("run testenv/crds.sh")?;
    if !status.success() {
        bail!("testenv/crds.sh failed");
    }
    let dir = std::env::temp_dir().join(format!("controller-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let crds = dir.join("crds");
    std::fs::create_dir_all(&crds)?;
    let sets = ["kubeflow", "istio"].map(|set| root.join("target/crds").join(set));
    tenancy_fixer::local::gather_crds(&sets, &crds)?;
    eprintln!("starting testenv ...");
    let t = Instant::now();
    let testenv = Testenv::start(
        &testenv_bin,
        &dir.join("state"),
        &crds,
        Duration::from_secs(180),
    )?;
    let testenv_start_seconds = t.elapsed().as_secs_f64();
    let client = testenv.client().await?;
    tenancy_fixer::local::ensure_namespace(&client, "kubeflow").await?;

    let settings = settings(&args.kfp_access)?;
    let config = settings.resolve(&controller::discover(&client).await?);
    let kinds = ManagedKind::wanted(&config);

    // The controller, with empty caches filled before the burst.
    let log1 = dir.join("controller-1.log");
    let mut first = ControllerProcess::start(&testenv.kubeconfig, &args.kfp_access, &log1)?;
    first
        .settle(Duration::from_millis(500), Duration::from_secs(30), &log1)
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let seen = Arc::new(Seen::default());
    let watchers = watch_converged(&client, &kinds, seen.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    eprintln!("creating {n} namespaces and profiles ...");
    let cpu0 = bench::process_cpu(first.pid).unwrap_or_default();
    let t0 = Instant::now();
    let creating = {
        let client = client.clone();
        let concurrency = args.create_concurrency;
        tokio::spawn(async move {
            create_all(&client, n, concurrency).await?;
            anyhow::Ok(Instant::now())
        })
    };
    let expected_objects = n * kinds.len();
    let deadline = t0 + Duration::from_secs(args.timeout);
    let mut converged_at = None;
    let mut last_print = Instant::now();
    while Instant::now() < deadline {
        first.check_alive(&log1)?;
        let objects = seen.objects.lock().unwrap().len();
        if objects >= expected_objects {
            converged_at = Some(Instant::now());
            break;
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "  {:.0} s: {objects}/{expected_objects} objects",
                t0.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let created_at = creating.await??;
    let converged_seconds = converged_at
        .unwrap_or_else(Instant::now)
        .duration_since(t0)
        .as_secs_f64();
    // Trailing writes (if any) are counted once the counters stop moving.
    let (stats1, _) = first
        .settle(Duration::from_secs(3), Duration::from_secs(60), &log1)
        .await?;
    let cpu1 = bench::process_cpu(first.pid).unwrap_or_default();
    let mem1 = bench::process_memory(first.pid).unwrap_or_default();
    let create_seconds = created_at.duration_since(t0).as_secs_f64();
    let converge = Converge {
        profiles: n,
        objects_per_profile: kinds.len(),
        create_seconds,
        create_requests_per_second: (2 * n) as f64 / create_seconds,
        converged_seconds,
        converged: converged_at.is_some(),
        stats: stats1,
        writes: stats1.writes(),
        writes_per_profile: stats1.writes() as f64 / n as f64,
        controller_cpu_seconds: (cpu1 - cpu0).as_secs_f64(),
        controller_rss_mb: bench::mb(mem1.rss),
        controller_rss_hwm_mb: bench::mb(mem1.hwm),
    };
    eprintln!(
        "converged in {:.2} s ({} writes, {:.2} per profile); restarting the controller ...",
        converged_seconds, converge.writes, converge.writes_per_profile
    );
    first.stop();

    // Restart: every profile is reconciled once the new caches are filled; nothing changed.
    let log2 = dir.join("controller-2.log");
    let mut second = ControllerProcess::start(&testenv.kubeconfig, &args.kfp_access, &log2)?;
    // Done when the counters stop moving (reconciles that found the caches still filling
    // requeue after 1 s and count again).
    let (stats2, last_change) = second
        .settle(
            Duration::from_secs(3),
            Duration::from_secs(args.timeout),
            &log2,
        )
        .await?;
    let all_reconciled_seconds = last_change.duration_since(second.started).as_secs_f64();
    let cpu2 = bench::process_cpu(second.pid).unwrap_or_default();
    let mem2 = bench::process_memory(second.pid).unwrap_or_default();
    second.stop();
    let resync = Resync {
        what: "controller restarted with the cluster converged: every profile reconciled once from filled caches",
        all_reconciled_seconds,
        stats: stats2,
        writes: stats2.writes(),
        controller_cpu_seconds: cpu2.as_secs_f64(),
        controller_rss_hwm_mb: bench::mb(mem2.hwm),
    };
    for w in watchers {
        w.abort();
    }
    drop(testenv);
    if args.keep_logs {
        eprintln!("logs kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }

    let mut targets = Vec::new();
    let mut push = |target: &str, value: f64, limit: f64, met: bool| {
        targets.push(Target {
            target: target.into(),
            value,
            limit,
            met,
        });
    };
    push(
        &format!("{n} profiles converged <= 60 s"),
        converge.converged_seconds,
        60.0,
        converge.converged && converge.converged_seconds <= 60.0,
    );
    push(
        "resync with no change: writes = 0",
        resync.writes as f64,
        0.0,
        resync.writes == 0,
    );
    push(
        "failed reconciles (throttling, errors) = 0",
        (stats1.failed_reconciles + stats2.failed_reconciles) as f64,
        0.0,
        stats1.failed_reconciles + stats2.failed_reconciles == 0,
    );
    Ok(Report {
        benchmark: "controller-load",
        unix_time: bench::unix_time(),
        revision: bench::git_revision(&root),
        machine: Machine::describe(),
        smoke: args.smoke,
        kfp_access: args.kfp_access.clone(),
        kinds: kinds.iter().map(|k| format!("{k:?}")).collect(),
        client_rate_limiter: "none: kube-rs 5 has no client-side rate limiter (client-go's default is QPS 5, burst 10); in flight: controller CONCURRENCY reconciles",
        controller_concurrency: controller::CONCURRENCY,
        create_concurrency: args.create_concurrency,
        testenv_start_seconds,
        converge,
        resync,
        targets,
    })
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    if let Some(ChildCommand::Child {
        kubeconfig,
        kfp_access,
    }) = &args.child
    {
        return run_child(kubeconfig, kfp_access);
    }
    let out = args.out.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(args))?;
    print_report(&report);
    if let Some(out) = out {
        bench::write_json(&out, &report)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
