//! Tracing setup. Log lines go to stderr; `HAZINA_LOG` (an `EnvFilter`) sets the level.
//! No secret is ever a field of a span or event: secret types have redacted `Debug`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_env("HAZINA_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
