//! `review-cpu`: the admission hot path without any I/O: `admission::review` on each benchmark
//! body in a loop on one thread, in µs per review. With `--log` the `tracing` subscriber of
//! `serve` (text, INFO) writes to a file, else no subscriber is installed (lines are dropped).

use std::{path::PathBuf, time::Instant};

use clap::Parser;
use tenancy_fixer::config::{Capabilities, Config, Settings};

#[global_allocator]
static ALLOC: tenancy_fixer_bench::Allocator = tenancy_fixer_bench::ALLOCATOR;

#[derive(Parser)]
struct Args {
    /// Reviews per body.
    #[arg(long, default_value_t = 20_000)]
    iterations: u32,
    /// Only these bodies (notebook-pod, trial-job, katib-trial-pod, plain-pod, and the tenant's
    /// proxy-config annotation: trial-job-proxy-config-at-bound, trial-job-proxy-config-deep).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Install the text subscriber at INFO, writing to this file.
    #[arg(long)]
    log: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = tenancy_fixer_bench::repo_root();
    let settings = Settings::load(&root.join("bench/data/webhook-config.yaml"))?;
    let config: Config = settings.resolve(&Capabilities::modern());
    if let Some(path) = &args.log {
        let file = std::fs::File::create(path)?;
        tracing_subscriber_init(file);
    }
    for name in [
        "notebook-pod",
        "trial-job",
        "katib-trial-pod",
        "plain-pod",
        "trial-job-proxy-config-at-bound",
        "trial-job-proxy-config-deep",
    ] {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        let body = std::fs::read(root.join(format!("bench/data/{name}.json")))?;
        let body = body.trim_ascii();
        for _ in 0..args.iterations / 10 {
            std::hint::black_box(tenancy_fixer::admission::review(body, &config)?);
        }
        let start = Instant::now();
        for _ in 0..args.iterations {
            std::hint::black_box(tenancy_fixer::admission::review(
                std::hint::black_box(body),
                &config,
            )?);
        }
        let us = start.elapsed().as_secs_f64() * 1e6 / args.iterations as f64;
        println!("{name:<16} {:>6} bytes {us:>8.2} µs/review", body.len());
    }
    Ok(())
}

fn tracing_subscriber_init(file: std::fs::File) {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .with_target(false)
        .try_init();
}
