//! `hazina serve` and `hazina migrate`.

use anyhow::Context;

use crate::clock::Clock;
use crate::config::Config;
use crate::startup::{self, Application};

/// `migrate`: apply the migrations and exit.
pub(super) fn migrate(config: &Config) -> anyhow::Result<()> {
    startup::open_database(config)?;
    println!("migrations applied ({})", config.database_url.backend());
    Ok(())
}

/// Set only by scripts/bench.sh: the benchmark mode without the audit Merkle tree.
pub(super) const BENCH_SKIP_AUDIT_TREE: &str = "HAZINA_BENCH_SKIP_AUDIT_TREE";

/// `serve`: start the HTTP API and run until stopped.
pub(super) fn serve(config: Config) -> anyhow::Result<()> {
    reexec_with_fixed_mmap_threshold();
    let backend = config.database_url.backend();
    if std::env::var(BENCH_SKIP_AUDIT_TREE).as_deref() == Ok("1") {
        crate::audit::merkle::skip_for_benchmark();
        eprintln!(
            "hazina: BENCHMARK MODE: HAZINA_BENCH_SKIP_AUDIT_TREE=1: the audit Merkle tree is not \
             extended while this process runs (it catches up at the next start)"
        );
    }
    // Where it answers, said once it is bound (the port may be chosen then).
    let origin = origin(&config);
    let public_console = config
        .public_url
        .as_deref()
        .map(|public| format!("{}/console/", public.trim_end_matches('/')));
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(config, Clock::System)?;
        let api = format!("{origin}:{}/", app.port());
        let console = public_console.unwrap_or_else(|| format!("{api}console/"));
        eprintln!(
            "hazina: serving on port {} ({backend}): the API at {api}, the console at {console}",
            app.port()
        );
        app.run_until_stopped()
            .await
            .context("server stopped with an error")
    })?;
    Ok(())
}

/// The scheme and host this process answers at (`localhost` for an unspecified bind address
/// such as `0.0.0.0`); the port is the one it gets.
fn origin(config: &Config) -> String {
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let bind = config.bind.as_str();
    let host = bind.rsplit_once(':').map_or(bind, |(host, _)| host);
    let host = match host {
        "0.0.0.0" | "[::]" | "::" | "" => "localhost",
        other => other,
    };
    format!("{scheme}://{host}")
}

/// The environment variable glibc reads its malloc tunables from, and the setting we add.
const GLIBC_TUNABLES: &str = "GLIBC_TUNABLES";
const FIXED_MMAP_THRESHOLD: &str = "glibc.malloc.mmap_threshold=1048576";

/// Memory: argon2 needs a 19 MiB block per hash. glibc raises its mmap threshold after the
/// first such block is freed, so every later block comes from a thread's heap and stays
/// resident (~19 MiB more at idle after the first login). A fixed threshold keeps blocks
/// over 1 MiB on mmap, returned to the OS on free. glibc reads it only at process start, so
/// `serve` re-executes itself once (same PID, same arguments) with it set, unless the
/// operator already chose `GLIBC_TUNABLES`. Elsewhere (another libc) the variable is ignored.
fn reexec_with_fixed_mmap_threshold() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(GLIBC_TUNABLES).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(GLIBC_TUNABLES, FIXED_MMAP_THRESHOLD)
        .exec();
    // `exec` only returns on failure: serve anyway, with glibc's default behaviour.
    tracing::warn!(error = %err, "could not re-execute with a fixed malloc mmap threshold; continuing");
}
