//! Logging: one `tracing` subscriber writing to stderr, as text for people or JSON lines for log
//! collectors. `RUST_LOG` (an `EnvFilter` directive) overrides the default level. High-volume
//! lines go through a [`Sampler`].

use std::{
    io::IsTerminal,
    sync::{
        LazyLock,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Instant,
};

use tracing_subscriber::{EnvFilter, fmt};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. `default_directive` (e.g. `info`) applies when `RUST_LOG` is
/// unset; an invalid `RUST_LOG` falls back to it with a warning. Calling it again is harmless
/// (the first subscriber stays).
pub fn init(format: LogFormat, default_directive: &str) {
    let (filter, invalid) = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(value) if !value.trim().is_empty() => match EnvFilter::try_new(&value) {
            Ok(filter) => (filter, None),
            Err(error) => (EnvFilter::new(default_directive), Some((value, error))),
        },
        _ => (EnvFilter::new(default_directive), None),
    };
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // `try_init` fails only when a subscriber is already installed (tests): keep that one.
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    if let Some((value, error)) = invalid {
        tracing::warn!(rust_log = %value, %error, "ignoring invalid RUST_LOG");
    }
}

/// Lines of one kind, at most `per_second` in each second (the seconds of a clock the caller
/// reads): beyond that they are counted, not written, and the count is handed to the caller
/// with the first line of a later second. Logging then costs nothing at any request rate past
/// the budget, and a burst cannot flood the log; at ordinary rates every line is written.
/// Lock-free; at a second's turn two threads may both write a line over the budget.
#[derive(Debug)]
pub struct Sampler {
    per_second: u32,
    second: AtomicU64,
    written: AtomicU32,
    dropped: AtomicU64,
}

impl Sampler {
    pub const fn new(per_second: u32) -> Self {
        Self {
            per_second,
            second: AtomicU64::new(0),
            written: AtomicU32::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Whether the line to write now, in second `now`, is written; `dropped` is called first
    /// (and is logged by the caller) with the lines not written since the last line written,
    /// when there are any and this is the first line of a new second.
    pub fn admit(&self, now: u64, dropped: impl FnOnce(u64)) -> bool {
        let second = self.second.load(Ordering::Relaxed);
        if now != second
            && self
                .second
                .compare_exchange(second, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.written.store(0, Ordering::Relaxed);
            match self.dropped.swap(0, Ordering::Relaxed) {
                0 => {}
                n => dropped(n),
            }
        }
        if self.written.fetch_add(1, Ordering::Relaxed) < self.per_second {
            true
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// Seconds since the process first asked, for [`Sampler::admit`].
pub fn second() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    START.elapsed().as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_writes_the_budget_per_second_and_reports_the_rest() {
        let sampler = Sampler::new(2);
        let mut reported = Vec::new();
        let mut admitted = |now| sampler.admit(now, |n| reported.push((now, n)));
        // Second 0: two written, three dropped.
        let first: Vec<bool> = (0..5).map(|_| admitted(0)).collect();
        assert_eq!(first, [true, true, false, false, false]);
        // Second 1: the count comes with its first line; the budget is whole again.
        assert!(admitted(1));
        assert!(admitted(1));
        assert!(!admitted(1));
        // Second 5 (nothing in between): the one dropped in second 1.
        assert!(admitted(5));
        // Second 6: nothing was dropped, nothing is reported.
        assert!(admitted(6));
        assert_eq!(reported, [(1, 3), (5, 1)]);
    }
}
