//! Tracing setup. Log lines go to stderr; `HAZINA_LOG` (an `EnvFilter`) sets the level.
//! No secret is ever a field of a span or event: secret types have redacted `Debug`.
//!
//! Lines are formatted on the thread that logs them but written to stderr by a dedicated
//! thread (`tracing-appender`), so a request's worker never waits on the terminal or a pipe.
//! The writer is lossless: when its buffer (128,000 lines) is full, loggers wait rather than
//! drop lines. The thread writes every line waiting at that moment in one `write(2)` (a
//! buffer it flushes each time it has drained the queue), not one call per line. Keep the
//! returned guard alive for the life of the process: dropping it flushes what is buffered.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Flushes buffered log lines when dropped.
pub struct LogGuard {
    _writer: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// The log filter from `HAZINA_LOG` (default `info`). A filter that does not parse is an
/// error naming the setting, never silently replaced by the default.
pub fn filter_from_env() -> Result<EnvFilter, crate::config::ConfigError> {
    match std::env::var("HAZINA_LOG") {
        Err(std::env::VarError::NotPresent) => Ok(EnvFilter::new("info")),
        Err(std::env::VarError::NotUnicode(_)) => Err(crate::config::ConfigError {
            setting: "HAZINA_LOG",
            problem: "is not valid UTF-8".into(),
        }),
        Ok(raw) => EnvFilter::builder()
            .parse(raw.trim())
            .map_err(|e| crate::config::ConfigError {
                setting: "HAZINA_LOG",
                problem: format!(
                    "`{}` is not a log filter such as `info` or `warn,hazina=debug`: {e}",
                    raw.trim()
                ),
            }),
    }
}

/// Installs the subscriber with `filter` (see [`filter_from_env`]).
pub fn init(filter: EnvFilter) -> LogGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("hazina-log")
        // tracing-appender flushes its writer whenever it has drained the queue, so nothing
        // waits in this buffer beyond the batch it came with.
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .is_ok();
    LogGuard {
        _writer: installed.then_some(guard),
    }
}
