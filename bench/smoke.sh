#!/usr/bin/env bash
# CI smoke of the benchmarks: each one runs for a few seconds and prints its figures. No
# thresholds: it fails only when a benchmark cannot run (build, start, a request that fails).
# controller-load needs testenv (testenv/build.sh: a no-op when fresh, ~15 min cold).
# BENCH_PROFILE=debug reuses the test build (CI); figures are only meaningful in release.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${BENCH_PROFILE:-release}"
if [ "$profile" = release ]; then cargo build --release --workspace --bins; else cargo build --workspace --bins; fi
bin="target/$profile"
"$bin/review-cpu" --iterations 200
"$bin/webhook-load" --smoke
"$bin/controller-load" --smoke
