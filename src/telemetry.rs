//! Logging: one `tracing` subscriber writing to stderr, as text for people or JSON lines for log
//! collectors. `RUST_LOG` (an `EnvFilter` directive) overrides the default level.

use std::io::IsTerminal;

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
