//! The `hazina` command line: the clap definitions and the dispatch. Each command group has
//! its file (users, keys, audit, services, grants, certs, backup, serve); every command that
//! changes something writes its audit entry in the same transaction as the change, as the
//! operator at the machine (`Actor::system`). Each command exits non-zero with one clear line
//! on error; `src/main.rs` only calls [`main`].

mod audit;
mod backup;
mod certs;
mod grants;
mod keys;
mod serve;
mod services;
mod users;

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use secrecy::SecretString;

use crate::audit::{Action, Actor, Event, RequestMeta, Target};
use crate::clock::Clock;
use crate::config::{self, Config};
use crate::startup;

#[derive(Parser)]
#[command(
    name = "hazina",
    version,
    about = "An encrypted, multi-tenant vault for payment-provider credentials"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the HTTP API (applies migrations first).
    #[command(after_help = crate::config::SETTINGS_HELP)]
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage users.
    #[command(subcommand)]
    Users(users::UsersCommand),
    /// Manage the master keyring.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Verify or export the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Manage service identities (clients authenticated by certificate).
    #[command(subcommand)]
    Services(services::ServicesCommand),
    /// Manage grants: which service may read which owner's credentials.
    #[command(subcommand)]
    Grants(grants::GrantsCommand),
    /// Manage provider certificates (Safaricom's, for the M-Pesa SecurityCredential).
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Copy the database to a new file (mode 0600) while it serves: SQLite's online backup,
    /// or pg_dump on PostgreSQL. Keep the keyring with it: the copy opens only with it.
    Backup {
        /// The file to create (never overwritten).
        #[arg(long)]
        to: std::path::PathBuf,
    },
    /// Replace the SQLite database with a backup: refused while anything has the database
    /// open, and for a backup the keyring does not open. The replaced database is kept.
    Restore {
        /// A file made by `hazina backup`.
        #[arg(long)]
        from: std::path::PathBuf,
    },
}

/// `HAZINA_*` names that are hazina's but not settings of `serve`: `hazina-seed`'s password
/// (scripts/bench.sh exports it into the server's environment too) and the benchmark-only
/// switch `serve` reads (and announces loudly).
const NOT_SETTINGS: &[&str] = &["HAZINA_SEED_PASSWORD", serve::BENCH_SKIP_AUDIT_TREE];

/// Prefixes of names that belong to the test suite (scripts/test.sh) and the benchmark
/// scripts: the processes they start inherit them; hazina never reads them.
const TOOLING_PREFIXES: &[&str] = &["HAZINA_TEST_", "HAZINA_BENCH_"];

/// The whole program: parse the arguments, load `.env` and the logs, run one command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // `.env` first, so HAZINA_LOG may come from it too; a bad filter stops everything.
    let dotenv = config::load_dotenv();
    // A misspelled setting (`HAZINA_BIDN`) stops every command before it does anything.
    let names = std::env::vars_os().filter_map(|(name, _)| name.into_string().ok());
    if let Err(e) = config::names::refuse_unknown(names, NOT_SETTINGS, TOOLING_PREFIXES) {
        eprintln!("hazina: error: {e}");
        return ExitCode::FAILURE;
    }
    let filter = match crate::telemetry::filter_from_env() {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("hazina: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Lives until `main` returns: dropping it flushes the log lines still buffered.
    let _logs = crate::telemetry::init(filter);
    if let Err(e) = dotenv {
        eprintln!("hazina: error: {e:#}");
        return ExitCode::FAILURE;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hazina: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Every command may hold the keyring, a password or a decrypted key: no core dumps.
    startup::disable_core_dumps();
    let config = Config::from_env()?;
    match cli.command {
        Command::Serve => serve::serve(config),
        Command::Migrate => serve::migrate(&config),
        Command::Users(cmd) => users::run(&config, cmd),
        Command::Keys(cmd) => keys::run(&config, cmd),
        Command::Audit(cmd) => audit::run(&config, cmd),
        Command::Services(cmd) => services::run(&config, cmd),
        Command::Grants(cmd) => grants::run(&config, cmd),
        Command::Certs(cmd) => certs::run(&config, cmd),
        Command::Backup { to } => backup::backup(&config, &to),
        Command::Restore { from } => backup::restore(&config, &from),
    }
}

/// The audit entry of an operator action taken through the command line.
fn cli_event(action: Action, target: Target) -> Event {
    Event::new(
        Clock::System.now_micros(),
        Actor::system(),
        &RequestMeta::default(),
        action,
    )
    .target(target)
}

/// The database and the keyring that belongs to it (refused when it does not match).
fn open_vault(config: &Config) -> anyhow::Result<startup::Vault> {
    startup::open_vault(config, &Clock::System)
}

/// The first line of standard input, as a secret (passwords never go on the command line).
fn read_password() -> anyhow::Result<SecretString> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let trimmed = line.trim_end_matches(['\n', '\r']).to_owned();
    zeroize::Zeroize::zeroize(&mut line);
    if trimmed.is_empty() {
        bail!("no password on standard input");
    }
    Ok(SecretString::from(trimmed))
}
