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
/// error naming the setting, never silently replaced by the default; so is one that parses
/// but would silence the log by accident (see [`accidental_silence`]).
pub fn filter_from_env() -> Result<EnvFilter, crate::config::ConfigError> {
    let bad = |problem: String| crate::config::ConfigError {
        setting: "HAZINA_LOG".into(),
        problem,
    };
    match std::env::var("HAZINA_LOG") {
        Err(std::env::VarError::NotPresent) => Ok(EnvFilter::new("info")),
        Err(std::env::VarError::NotUnicode(_)) => Err(bad("is not valid UTF-8".into())),
        Ok(raw) => {
            let raw = raw.trim();
            if let Some(problem) = accidental_silence(raw) {
                return Err(bad(problem));
            }
            EnvFilter::builder().parse(raw).map_err(|e| {
                bad(format!(
                    "`{raw}` is not a log filter such as `info` or `warn,hazina=debug`: {e}"
                ))
            })
        }
    }
}

/// What is wrong with a filter `EnvFilter` would take but that turns off lines nobody meant
/// to turn off: a directive with neither a level nor `=` (`warning`, `hazina`) names a
/// *target* to trace and leaves every other line, errors and alarms included, off. `off` is
/// accepted: it says what it does.
pub fn accidental_silence(filter: &str) -> Option<String> {
    filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty() && !d.contains('='))
        .find(|d| {
            d.parse::<tracing_subscriber::filter::LevelFilter>()
                .is_err()
        })
        .map(|d| {
            format!(
                "`{d}` is neither a level (error, warn, info, debug, trace, off) nor \
                 `target=level`: alone it names a target and would turn every other log line \
                 off, errors included (for a target's lines write `{d}=debug`)"
            )
        })
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

#[cfg(test)]
mod tests {
    use super::accidental_silence;

    #[test]
    fn a_misspelled_level_is_refused_and_every_real_filter_accepted() {
        let problem = accidental_silence("warning").unwrap();
        assert!(
            problem.contains("`warning` is neither a level"),
            "{problem}"
        );
        assert!(accidental_silence("info,hazina").is_some());
        for fine in [
            "info",
            "WARN",
            "off",
            "warn,hazina=debug",
            "hazina[login]=trace",
            "debug",
            "",
        ] {
            assert_eq!(accidental_silence(fine), None, "{fine}");
        }
    }
}
