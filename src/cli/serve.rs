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
    let config_urls = Urls {
        bind: config.bind.clone(),
        https: config.tls.is_some(),
        public_url: config.public_url.clone(),
    };
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(config, Clock::System)?;
        let api = base_url(&config_urls, app.port());
        let console = match &config_urls.public_url {
            Some(public) => format!("{}/console/", public.trim_end_matches('/')),
            None => format!("{api}console/"),
        };
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

/// What `serve` says about where it answers.
struct Urls {
    bind: String,
    https: bool,
    public_url: Option<String>,
}

/// The URL this process answers at: the bound host (`localhost` for an unspecified one such as
/// `0.0.0.0`) and the port it got.
fn base_url(urls: &Urls, port: u16) -> String {
    let scheme = if urls.https { "https" } else { "http" };
    let host = urls
        .bind
        .rsplit_once(':')
        .map_or(urls.bind.as_str(), |(host, _)| host);
    let host = match host {
        "0.0.0.0" | "[::]" | "::" | "" => "localhost",
        other => other,
    };
    format!("{scheme}://{host}:{port}/")
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
