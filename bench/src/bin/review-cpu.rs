//! `review-cpu`: the admission hot path without any I/O: `admission::review` on each benchmark
//! body in a loop on one thread, in µs per review (wall clock, and CPU time user + system). With `--log` the logging of `serve` is
//! installed (`telemetry::init`: text, its default level unless `RUST_LOG` says otherwise,
//! lines to stderr), else none (lines are dropped).
//! With `--limit`, the limit webhook's review instead (`tenancy_fixer_bench::limit`).

use std::time::Instant;

use anyhow::Context;
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
    /// Log as `serve` does (to stderr: redirect it to a file or a pipe).
    #[arg(long)]
    log: bool,
    /// Run the limit webhook's review instead of tenancy-fixer's.
    #[arg(long)]
    limit: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = tenancy_fixer_bench::repo_root();
    let settings = Settings::load(&root.join("bench/data/webhook-config.yaml"))?;
    let config: Config = settings.resolve(&Capabilities::modern());
    if args.log {
        // `serve`'s default level.
        tenancy_fixer::telemetry::init(tenancy_fixer::telemetry::LogFormat::Text, "info");
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
        let review = |body: &[u8]| -> anyhow::Result<Vec<u8>> {
            if args.limit {
                tenancy_fixer_bench::limit::review(body).context("not a review")
            } else {
                Ok(tenancy_fixer::admission::review(body, &config)?.answer)
            }
        };
        for _ in 0..args.iterations / 10 {
            std::hint::black_box(review(body)?);
        }
        let (start, cpu) = (
            Instant::now(),
            tenancy_fixer_bench::process_cpu(std::process::id()),
        );
        for _ in 0..args.iterations {
            std::hint::black_box(review(std::hint::black_box(body))?);
        }
        let per_review = |seconds: f64| seconds * 1e6 / args.iterations as f64;
        let us = per_review(start.elapsed().as_secs_f64());
        // CPU time includes the kernel's (the log's writes).
        let cpu_us = cpu
            .zip(tenancy_fixer_bench::process_cpu(std::process::id()))
            .map_or(f64::NAN, |(before, after)| {
                per_review((after - before).as_secs_f64())
            });
        println!(
            "{name:<16} {:>6} bytes {us:>8.2} µs/review {cpu_us:>8.2} µs CPU",
            body.len()
        );
    }
    Ok(())
}
