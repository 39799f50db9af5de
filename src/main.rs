//! The `hazina` command: parse, load configuration, dispatch. Each command exits non-zero
//! with one clear line on error.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use secrecy::SecretString;

use hazina::auth::password;
use hazina::clock::Clock;
use hazina::config::{self, Config, KeyringSource};
use hazina::crypto::Keyring;
use hazina::db;
use hazina::domain::{Password, Role, Username};
use hazina::startup::{self, Application};

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
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage users.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Manage the master keyring.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Create a user; the password is read from the first line of standard input.
    Create {
        #[arg(long)]
        username: String,
        #[arg(long, value_parser = ["user", "admin", "auditor"])]
        role: String,
        /// Read the password from standard input (required: passwords never go on the command line).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Disable a user; their tokens stop working on the next request.
    Disable {
        #[arg(long)]
        username: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a new keyring file (mode 0600) at HAZINA_KEYRING.
    Init,
    /// Show the keyring's versions and how many stored rows each protects.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    hazina::telemetry::init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hazina: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    config::load_dotenv()?;
    let config = Config::from_env()?;
    match cli.command {
        Command::Serve => serve(config),
        Command::Migrate => {
            startup::open_database(&config)?;
            println!("migrations applied ({})", config.database_url.backend());
            Ok(())
        }
        Command::Users(UsersCommand::Create { username, role, .. }) => {
            let username = Username::parse(&username)?;
            let role = Role::parse(&role)?;
            let password = Password::parse(read_password()?)?;
            let hash = password::hash(password.secret())?;
            let pool = startup::open_database(&config)?;
            let mut conn = pool.get()?;
            let now = Clock::System.now();
            match db::users::create(&mut conn, &username, &hash, role, now) {
                Ok(id) => {
                    println!(
                        "created {} `{}` (id {id})",
                        role.as_str(),
                        username.as_str()
                    );
                    Ok(())
                }
                Err(db::DbError::Conflict) => {
                    bail!("a user named `{}` already exists", username.as_str())
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Users(UsersCommand::Disable { username }) => {
            let pool = startup::open_database(&config)?;
            let mut conn = pool.get()?;
            if !db::users::disable(&mut conn, &username)? {
                bail!("no user named `{username}`");
            }
            println!("disabled `{username}`; their sessions stop working on their next request");
            Ok(())
        }
        Command::Keys(KeysCommand::Init) => {
            let KeyringSource::File(path) = &config.keyring else {
                bail!("HAZINA_KEYRING_DATA is set; `keys init` writes a file, so set HAZINA_KEYRING instead");
            };
            Keyring::generate().write_new_file(path)?;
            println!(
                "created keyring {} (mode 0600, active version 1)",
                path.display()
            );
            Ok(())
        }
        Command::Keys(KeysCommand::Status) => keys_status(&config),
    }
}

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

fn keys_status(config: &Config) -> anyhow::Result<()> {
    let (keyring, _) = match &config.keyring {
        KeyringSource::File(path) if !path.exists() => {
            bail!("no keyring at {} (run `hazina keys init`)", path.display())
        }
        source => startup::load_keyring(source)?,
    };
    let pool = startup::open_database(config)?;
    let mut conn = pool.get()?;
    let counts = db::credentials::count_by_kek_version(&mut conn)?;
    println!("active version: {}", keyring.active_version());
    for v in keyring.versions() {
        let rows = counts
            .iter()
            .find(|(k, _)| *k as u32 == v)
            .map_or(0, |(_, n)| *n);
        let mark = if v == keyring.active_version() {
            " (active)"
        } else {
            ""
        };
        println!("version {v}{mark}: {rows} stored key versions");
    }
    for (k, n) in counts
        .iter()
        .filter(|(k, _)| keyring.key(*k as u32).is_none())
    {
        println!("version {k}: {n} stored key versions — MISSING FROM THE KEYRING");
    }
    Ok(())
}

fn serve(config: Config) -> anyhow::Result<()> {
    if let KeyringSource::File(path) = &config.keyring {
        if !path.exists() {
            eprintln!(
                "hazina: WARNING: no keyring at {}; creating a DEVELOPMENT keyring there. \
                 Back it up: without it no stored key can ever be decrypted.",
                path.display()
            );
        }
    }
    let backend = config.database_url.backend();
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(config, Clock::System)?;
        eprintln!("hazina: serving on port {} ({backend})", app.port());
        app.run_until_stopped()
            .await
            .context("server stopped with an error")
    })?;
    Ok(())
}
