//! The `hazina` command: parse, load configuration, dispatch. Each command exits non-zero
//! with one clear line on error.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use secrecy::SecretString;

use hazina::audit::{self, Action, Actor, Event, RequestMeta, Target};
use hazina::auth::password;
use hazina::clock::Clock;
use hazina::config::{self, Config, KeyringSource};
use hazina::crypto::Keyring;
use hazina::db;
use hazina::domain::{
    Environment, Password, Provider, Role, ServiceIdentity, ServiceName, Username,
};
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
    /// Verify or export the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manage service identities (clients authenticated by certificate).
    #[command(subcommand)]
    Services(ServicesCommand),
    /// Manage grants: which service may read which owner's credentials.
    #[command(subcommand)]
    Grants(GrantsCommand),
}

#[derive(Subcommand)]
enum ServicesCommand {
    /// Register a service by its certificate identity (SAN URI, DNS name or sha256:<hex>).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        identity: String,
        /// Only accept this service's requests from these CIDR ranges (repeatable).
        #[arg(long = "allow-cidr")]
        allow_cidr: Vec<String>,
    },
    /// List services.
    List,
    /// Disable a service; its next request is refused.
    Disable {
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum GrantsCommand {
    /// Let a service read an owner's credentials (optionally one provider / environment).
    Create {
        #[arg(long)]
        service: String,
        #[arg(long)]
        owner: String,
        #[arg(long)]
        provider: Option<String>,
        #[arg(long)]
        environment: Option<String>,
    },
    /// List grants.
    List,
    /// Revoke a grant by id; it stops working on the next request.
    Revoke {
        #[arg(long)]
        id: i64,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain; exits non-zero and names the first bad sequence number if broken.
    Verify,
    /// Write the log as JSON Lines to standard output, ending with the chain head.
    Export {
        /// Only entries at or after this time (RFC 3339, or Unix seconds).
        #[arg(long)]
        since: Option<String>,
    },
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
        /// Only accept this user's requests from these CIDR ranges (repeatable).
        #[arg(long = "allow-cidr")]
        allow_cidr: Vec<String>,
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
    /// Show the keyring's versions, how many stored keys each protects, wear and rotation.
    Status,
    /// Add a master-key version, make it active, and re-wrap every stored data key under it
    /// (online: a running server keeps serving). Shows progress.
    Rotate {
        /// Continue an interrupted rotation instead of adding another version.
        #[arg(long)]
        resume: bool,
        /// Data keys re-wrapped per transaction.
        #[arg(long, default_value_t = hazina::rotation::BATCH, value_parser = clap::value_parser!(i64).range(1..=100_000))]
        batch: i64,
    },
    /// Remove a master-key version from the keyring (refused while any stored key needs it).
    Retire {
        #[arg(long)]
        version: i32,
    },
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
    // Every command may hold the keyring, a password or a decrypted key: no core dumps.
    startup::disable_core_dumps();
    config::load_dotenv()?;
    let config = Config::from_env()?;
    match cli.command {
        Command::Serve => {
            reexec_with_fixed_mmap_threshold();
            serve(config)
        }
        Command::Migrate => {
            startup::open_database(&config)?;
            println!("migrations applied ({})", config.database_url.backend());
            Ok(())
        }
        Command::Users(UsersCommand::Create {
            username,
            role,
            allow_cidr,
            ..
        }) => {
            let username = Username::parse(&username)?;
            let role = Role::parse(&role)?;
            let cidrs = hazina::routes::admin::parse_allowlist(&allow_cidr)?;
            let password = Password::parse(read_password()?)?;
            let hash = password::hash(password.secret())?;
            let pool = startup::open_database(&config)?;
            let mut conn = pool.get()?;
            let now = Clock::System.now();
            let created = diesel::Connection::transaction(&mut *conn, |tx| {
                let id = db::users::create(tx, &username, &hash, role, now)?;
                db::users::set_allowed_cidrs(tx, username.as_str(), cidrs.as_deref())?;
                Ok::<_, db::DbError>(id)
            });
            drop(conn);
            match created {
                Ok(id) => {
                    audit_cli(&pool, Action::AdminUserCreate, Target::owner(id.get()))?;
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
            let Some(id) = db::users::disable(&mut conn, &username)? else {
                bail!("no user named `{username}`");
            };
            drop(conn);
            audit_cli(&pool, Action::AdminUserDisable, Target::owner(id))?;
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
        Command::Keys(KeysCommand::Rotate { resume, batch }) => keys_rotate(&config, resume, batch),
        Command::Keys(KeysCommand::Retire { version }) => {
            let keyring = existing_keyring(&config)?;
            let pool = startup::open_database(&config)?;
            let message = hazina::routes::keys::retire_blocking(&pool, &keyring, version)
                .map_err(|e| anyhow::anyhow!("{}", e.public_message()))?;
            audit_cli(&pool, Action::KeysRetire, Target::default())?;
            println!("{message}");
            Ok(())
        }
        Command::Services(cmd) => services(&config, cmd),
        Command::Grants(cmd) => grants(&config, cmd),
        Command::Audit(AuditCommand::Verify) => {
            let pool = startup::open_database(&config)?;
            let report = audit::chain::verify(&mut *pool.get()?)?;
            println!("{}", serde_json::to_string(&report)?);
            match report.first_bad_seq {
                None => Ok(()),
                Some(seq) => bail!("the audit chain is broken: first bad sequence number {seq}"),
            }
        }
        Command::Audit(AuditCommand::Export { since }) => {
            let since = since.as_deref().map(parse_since).transpose()?;
            let pool = startup::open_database(&config)?;
            let mut out = std::io::stdout().lock();
            let mut failed = None;
            audit::store::export(&mut *pool.get()?, since, |chunk| {
                match out.write_all(&chunk) {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            })?;
            if let Some(e) = failed {
                bail!("cannot write the export: {e}");
            }
            out.flush()?;
            Ok(())
        }
    }
}

fn services(config: &Config, cmd: ServicesCommand) -> anyhow::Result<()> {
    let pool = startup::open_database(config)?;
    let now = Clock::System.now();
    match cmd {
        ServicesCommand::Create {
            name,
            identity,
            allow_cidr,
        } => {
            let name = ServiceName::parse(&name)?;
            let identity = ServiceIdentity::parse(&identity)?;
            let cidrs = hazina::routes::admin::parse_allowlist(&allow_cidr)?;
            let created = db::services::create_service(
                &mut *pool.get()?,
                name.as_str(),
                identity.as_str(),
                cidrs.as_deref(),
                now,
            );
            let row = match created {
                Ok(row) => row,
                Err(db::DbError::Conflict) => {
                    bail!("a service with this name or identity already exists")
                }
                Err(e) => return Err(e.into()),
            };
            audit_cli(&pool, Action::AdminServiceCreate, Target::default())?;
            println!(
                "created service `{}` (identity {}, id {})",
                row.name, row.identity, row.id
            );
        }
        ServicesCommand::List => {
            for s in db::services::list_services(&mut *pool.get()?)? {
                let state = if s.is_enabled { "enabled" } else { "disabled" };
                let cidrs = s.allowed_cidrs.as_deref().unwrap_or("any address");
                println!("{}\t{}\t{state}\t{cidrs}", s.name, s.identity);
            }
        }
        ServicesCommand::Disable { name } => {
            if db::services::disable_service(&mut *pool.get()?, &name)?.is_none() {
                bail!("no service named `{name}`");
            }
            audit_cli(&pool, Action::AdminServiceDisable, Target::default())?;
            println!("disabled service `{name}`; its next request is refused");
        }
    }
    Ok(())
}

fn grants(config: &Config, cmd: GrantsCommand) -> anyhow::Result<()> {
    let pool = startup::open_database(config)?;
    let now = Clock::System.now();
    match cmd {
        GrantsCommand::Create {
            service,
            owner,
            provider,
            environment,
        } => {
            let provider = provider.as_deref().map(Provider::parse).transpose()?;
            let environment = environment.as_deref().map(Environment::parse).transpose()?;
            let created = hazina::routes::admin::grant_by_names(
                &mut *pool.get()?,
                &service,
                &owner,
                provider,
                environment,
                now,
            )?;
            let (grant, owner_id) = created.map_err(|e| anyhow::anyhow!("{e}"))?;
            let target = Target {
                owner_id: Some(owner_id),
                provider: grant.provider.clone(),
                environment: grant.environment.clone(),
                ..Target::default()
            };
            audit_cli(&pool, Action::AdminGrantCreate, target)?;
            println!(
                "granted `{service}` read access to `{owner}`'s credentials (grant id {})",
                grant.id
            );
        }
        GrantsCommand::List => {
            for (g, service, owner) in db::services::list_grants(&mut *pool.get()?)? {
                let scope = format!(
                    "{}/{}",
                    g.provider.as_deref().unwrap_or("*"),
                    g.environment.as_deref().unwrap_or("*")
                );
                let state = if g.revoked_at.is_some() {
                    "revoked"
                } else {
                    "live"
                };
                println!("{}\t{service}\t{owner}\t{scope}\t{state}", g.id);
            }
        }
        GrantsCommand::Revoke { id } => {
            let Some(grant) = db::services::revoke_grant(&mut *pool.get()?, id, now)? else {
                bail!("no live grant with id {id}");
            };
            audit_cli(
                &pool,
                Action::AdminGrantRevoke,
                Target::owner(grant.owner_id),
            )?;
            println!("revoked grant {id}");
        }
    }
    Ok(())
}

/// RFC 3339 or Unix seconds → microseconds.
fn parse_since(raw: &str) -> anyhow::Result<i64> {
    if let Ok(secs) = raw.parse::<i64>() {
        return secs
            .checked_mul(1_000_000)
            .context("--since is out of range");
    }
    Ok(chrono::DateTime::parse_from_rfc3339(raw)
        .context("--since must be an RFC 3339 time or Unix seconds")?
        .timestamp_micros())
}

/// Records an operator action taken through the command line.
fn audit_cli(pool: &hazina::db::Pool, action: Action, target: Target) -> anyhow::Result<()> {
    let event = Event::new(
        Clock::System.now_micros(),
        Actor::system(),
        &RequestMeta::default(),
        action,
    )
    .target(target);
    audit::chain::append(&mut *pool.get()?, &[&event]).context("cannot write the audit entry")?;
    Ok(())
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

/// The keyring named by the configuration, which must already exist.
fn existing_keyring(config: &Config) -> anyhow::Result<Keyring> {
    if let KeyringSource::File(path) = &config.keyring {
        if !path.exists() {
            bail!("no keyring at {} (run `hazina keys init`)", path.display());
        }
    }
    Ok(startup::load_keyring(&config.keyring)?.0)
}

fn keys_status(config: &Config) -> anyhow::Result<()> {
    let keyring = existing_keyring(config)?;
    let pool = startup::open_database(config)?;
    let status = hazina::routes::keys::status(&mut *pool.get()?, &keyring)?;
    println!("active version: {}", status["active_version"]);
    for v in status["versions"].as_array().into_iter().flatten() {
        let mut notes = Vec::new();
        if v["active"] == true {
            notes.push("active");
        }
        if v["in_keyring"] == false {
            notes.push("MISSING FROM THE KEYRING");
        }
        if v["rotation_due"] == true {
            notes.push("ROTATION DUE");
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join(", "))
        };
        println!(
            "version {}{notes}: {} stored keys, {} encryptions",
            v["version"], v["stored_keys"], v["encryptions"]
        );
    }
    if let Some(r) = status["rotation"].as_object() {
        let state = if r["finished_at"].is_null() {
            "in progress"
        } else {
            "finished"
        };
        println!(
            "last rotation: to version {} ({state}), {} re-wrapped, {} remaining",
            r["target_version"], r["rows_rewrapped"], r["remaining"]
        );
    }
    Ok(())
}

fn keys_rotate(config: &Config, resume: bool, batch: i64) -> anyhow::Result<()> {
    let keyring = existing_keyring(config)?;
    let pool = startup::open_database(config)?;
    let mut conn = pool.get()?;
    let now = Clock::System.now();
    let target = if resume {
        match hazina::db::keys::unfinished_rotation(&mut conn)? {
            Some(r) => r.target_version,
            None => keyring.active_version() as i32,
        }
    } else {
        let v = keyring.add_version()?;
        println!("added master-key version {v} (now active) to the keyring");
        v as i32
    };
    if !keyring.has_version(target as u32) {
        bail!("the rotation targets master-key version {target}, which this keyring does not have");
    }
    let rotation = hazina::db::keys::start_rotation(&mut conn, target, now)?;
    drop(conn);
    audit_cli(&pool, Action::KeysRotate, Target::default())?;
    let mut conn = pool.get()?;
    let total = hazina::db::keys::remaining(&mut conn, target)?;
    let bar = indicatif::ProgressBar::new(total.max(0) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} data keys re-wrapped ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let hidden = bar.is_hidden();
    let started = std::time::Instant::now();
    let moved = hazina::db::keys::run_rotation(
        &mut conn,
        &keyring,
        &rotation,
        batch,
        || Clock::System.now(),
        |n| {
            bar.set_position(n);
            if hidden {
                // Not a terminal: one plain line per committed batch.
                eprintln!("rewrapped {n}/{total}");
            }
        },
    )?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let rate = if secs > 0.0 { moved as f64 / secs } else { 0.0 };
    println!(
        "re-wrapped {moved} data keys under master-key version {target} in {secs:.2} s ({rate:.0} rows/s); no secret was decrypted"
    );
    Ok(())
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
