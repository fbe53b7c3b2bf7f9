//! Logging: one `tracing` subscriber writing to stderr, as text for people or JSON lines for log
//! collectors. `RUST_LOG` (an `EnvFilter` directive) overrides the default level.
//!
//! The admission decision lines (one per review, tens of thousands per second under load) are
//! batched: appended to a buffer that a background thread writes out every [`BATCH_INTERVAL`],
//! one `write` per batch instead of one per line. Every other line flushes the batch and is
//! written at once, in order, so nothing is held back around startup, warnings or shutdown.

use std::{
    io::{self, IsTerminal, Write},
    sync::{Condvar, Mutex, OnceLock},
    time::Duration,
};

use tracing_subscriber::{EnvFilter, fmt, fmt::MakeWriter};

/// How long a batched line may wait before it is written.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(20);
/// A batch this large is written without waiting for the interval.
const BATCH_BYTES: usize = 64 * 1024;
/// Beyond this much unwritten text (stderr blocked), batched lines are dropped and counted.
const BATCH_LIMIT: usize = 8 * 1024 * 1024;
/// The events that are batched: the admission module's decision lines.
const BATCHED_TARGET: &str = "tenancy_fixer::admission";

/// Batched lines not yet written, and how many were dropped since the last write.
#[derive(Default)]
struct Batch {
    text: Vec<u8>,
    dropped: u64,
}

struct Batcher {
    batch: Mutex<Batch>,
    full: Condvar,
}

impl Batcher {
    fn get() -> &'static Batcher {
        static BATCHER: OnceLock<&'static Batcher> = OnceLock::new();
        BATCHER.get_or_init(|| {
            let batcher: &'static Batcher =
                Box::leak(Box::new(Batcher { batch: Mutex::new(Batch::default()), full: Condvar::new() }));
            let spawned = std::thread::Builder::new().name("log-writer".into()).spawn(move || batcher.run());
            if spawned.is_err() {
                // No thread: lines are still written, by `flush` before each direct line.
                eprintln!("tenancy-fixer: cannot start the log writer thread; batched lines are written late");
            }
            batcher
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Batch> {
        self.batch.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, line: &[u8]) {
        let mut batch = self.lock();
        if batch.text.len() + line.len() > BATCH_LIMIT {
            batch.dropped += 1;
            return;
        }
        batch.text.extend_from_slice(line);
        if batch.text.len() >= BATCH_BYTES {
            self.full.notify_one();
        }
    }

    /// Writes what is batched (called with no lock held by the caller).
    fn flush(&self) {
        let (text, dropped) = {
            let mut batch = self.lock();
            (std::mem::take(&mut batch.text), std::mem::take(&mut batch.dropped))
        };
        let mut err = io::stderr().lock();
        let _ = err.write_all(&text);
        if dropped > 0 {
            let _ = writeln!(err, "tenancy-fixer: {dropped} log lines dropped (stderr blocked)");
        }
    }

    fn run(&self) {
        loop {
            {
                let batch = self.lock();
                let _ = self.full.wait_timeout_while(batch, BATCH_INTERVAL, |b| b.text.len() < BATCH_BYTES);
            }
            self.flush();
        }
    }
}

/// The subscriber's writer: decision lines go to the batch, other lines flush it and are
/// written directly.
struct Stderr;

enum LineWriter {
    Batched,
    Direct,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            LineWriter::Batched => Batcher::get().push(buf),
            LineWriter::Direct => {
                Batcher::get().flush();
                io::stderr().lock().write_all(buf)?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter::Direct
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter {
        if meta.target() == BATCHED_TARGET && *meta.level() >= tracing::Level::INFO {
            LineWriter::Batched
        } else {
            LineWriter::Direct
        }
    }
}

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
        .with_writer(Stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // `try_init` fails only when a subscriber is already installed (tests): keep that one.
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    if let Some((value, error)) = invalid {
        tracing::warn!(rust_log = %value, %error, "ignoring invalid RUST_LOG");
    }
}
