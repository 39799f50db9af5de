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
use hazina::error::ApiError;
use hazina::repo;
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
    #[command(after_help = hazina::config::SETTINGS_HELP)]
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
    /// Manage provider certificates (Safaricom's, for the M-Pesa SecurityCredential).
    #[command(subcommand)]
    Certs(CertsCommand),
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

#[derive(Subcommand)]
enum CertsCommand {
    /// Install (or replace) a provider's public certificate for an environment.
    Set {
        #[arg(long)]
        provider: String,
        #[arg(long)]
        environment: String,
        /// The PEM certificate file.
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// List the installed certificates with their fingerprints and validity.
    List,
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
    /// Revoke one client certificate by its SHA-256 fingerprint: its next request, on any
    /// node, is refused (403), whatever service it names.
    RevokeCertificate {
        #[arg(long)]
        fingerprint: String,
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
        /// An operation the grant allows (repeatable): reveal, stk-password,
        /// security-credential, webhook-verify, access-token. Default: reveal.
        #[arg(long = "operation")]
        operations: Vec<String>,
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
    /// Check the hash chain (and each given signed checkpoint: that the log still extends
    /// it); exits non-zero and says what is wrong if anything is.
    Verify {
        /// A signed checkpoint file, as `hazina audit checkpoint` wrote it (repeatable).
        #[arg(long = "checkpoint")]
        checkpoints: Vec<std::path::PathBuf>,
        /// Verify this export (`hazina audit export`) instead of the database: no database
        /// and no keyring are used (needs --public-key).
        #[arg(long, requires = "public_key")]
        export: Option<std::path::PathBuf>,
        /// The checkpoints' verifier key (`hazina audit public-key`), or a file holding it.
        #[arg(long, requires = "export")]
        public_key: Option<String>,
    },
    /// Sign and print a checkpoint of the whole log (C2SP tlog-checkpoint, signed note).
    Checkpoint,
    /// Print the checkpoints' signed-note verifier key.
    PublicKey,
    /// Write the log as JSON Lines to standard output, ending with the chain head.
    Export {
        /// Only entries at or after this time (RFC 3339, or Unix seconds).
        #[arg(long)]
        since: Option<String>,
        /// Only entries after this sequence number.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
        after: i64,
        /// Keep running and print new entries as they commit (for a SIEM shipper).
        #[arg(long, conflicts_with = "since")]
        follow: bool,
    },
    /// Move the entries older than a date to a new file that verifies on its own (with
    /// `audit verify --export`), then delete them from the database. Archives end on a
    /// multiple of 16 entries; proofs and checkpoints about the rest stay valid.
    Archive {
        /// Archive entries that occurred before this time (RFC 3339, or Unix seconds).
        #[arg(long)]
        before: String,
        /// The archive file to create (never overwritten).
        #[arg(long)]
        to: std::path::PathBuf,
        /// Archive entries younger than HAZINA_AUDIT_RETENTION_MIN_DAYS too.
        #[arg(long)]
        force: bool,
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
    /// Enable a disabled user; they may log in again.
    Enable {
        #[arg(long)]
        username: String,
    },
    /// List every user: name, role, enabled or disabled, created.
    List,
    /// Set a user's password (read from the first line of standard input); every session of
    /// theirs ends.
    SetPassword {
        #[arg(long)]
        username: String,
        /// Read the password from standard input (required: passwords never go on the command line).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Set a user's role; it applies from their next request.
    SetRole {
        #[arg(long)]
        username: String,
        #[arg(long, value_parser = ["user", "admin", "auditor"])]
        role: String,
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
    /// Remove a master-key version from the keyring (refused while any stored key, or any
    /// backup made by `hazina backup`, needs it).
    Retire {
        #[arg(long)]
        version: i32,
        /// Retire even though recorded backups need the version: they will then open only
        /// with a copy of the keyring from before.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `.env` first, so HAZINA_LOG may come from it too; a bad filter stops everything.
    let dotenv = config::load_dotenv();
    let filter = match hazina::telemetry::filter_from_env() {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("hazina: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Lives until `main` returns: dropping it flushes the log lines still buffered.
    let _logs = hazina::telemetry::init(filter);
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
            let cidrs = hazina::domain::parse_allowlist(&allow_cidr)?;
            let password = Password::parse(read_password()?)?;
            let hash = password::hash(password.secret())?;
            let vault = open_vault(&config)?;
            let pool = vault.pool;
            let mut conn = pool.get()?;
            let now = Clock::System.now();
            // The user and its audit entry are one transaction.
            let created = audit::chain::with_entry(
                &mut conn,
                |tx| {
                    let cidrs = cidrs.as_deref();
                    repo::users::create(tx, &vault.keyring, &username, &hash, role, cidrs, now)
                },
                |id| Some(cli_event(Action::AdminUserCreate, Target::owner(id.get()))),
            );
            drop(conn);
            match created {
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
        Command::Users(UsersCommand::Enable { username }) => {
            let vault = open_vault(&config)?;
            let mut conn = vault.pool.get()?;
            let enabled = audit::chain::with_entry(
                &mut conn,
                |tx| repo::users::enable(tx, &vault.keyring, &username),
                |id| id.map(|id| cli_event(Action::AdminUserEnable, Target::owner(id))),
            )?;
            if enabled.is_none() {
                bail!("no user named `{username}`");
            }
            println!("enabled `{username}`; they may log in again");
            Ok(())
        }
        Command::Users(UsersCommand::List) => {
            let vault = open_vault(&config)?;
            let rows = repo::users::list(&mut *vault.pool.get()?)?;
            println!("{:<32} {:<8} {:<9} created", "username", "role", "state");
            for row in rows {
                let state = match (row.intact(&vault.keyring), row.is_disabled) {
                    (false, _) => "TAMPERED",
                    (true, true) => "disabled",
                    (true, false) => "enabled",
                };
                println!(
                    "{:<32} {:<8} {:<9} {}",
                    row.username,
                    row.role,
                    state,
                    hazina::clock::rfc3339(row.created_at)
                );
            }
            Ok(())
        }
        Command::Users(UsersCommand::SetPassword { username, .. }) => {
            let password = Password::parse(read_password()?)?;
            let hash = password::hash(password.secret())?;
            let vault = open_vault(&config)?;
            let mut conn = vault.pool.get()?;
            let now = Clock::System.now();
            let set = audit::chain::with_entry(
                &mut conn,
                |tx| repo::users::set_password(tx, &vault.keyring, &username, &hash, None, now),
                |id| id.map(|id| cli_event(Action::AdminUserPassword, Target::owner(id))),
            )?;
            if set.is_none() {
                bail!("no user named `{username}`");
            }
            println!("set the password of `{username}`; every session of theirs has ended");
            Ok(())
        }
        Command::Users(UsersCommand::SetRole { username, role }) => {
            let role = Role::parse(&role)?;
            let vault = open_vault(&config)?;
            let mut conn = vault.pool.get()?;
            let set = audit::chain::with_entry(
                &mut conn,
                |tx| repo::users::set_role(tx, &vault.keyring, &username, role),
                |id| id.map(|id| cli_event(Action::AdminUserRole, Target::owner(id))),
            );
            match set {
                Ok(Some(_)) => {
                    println!("`{username}` is now {}", role.as_str());
                    Ok(())
                }
                Ok(None) => bail!("no user named `{username}`"),
                Err(db::DbError::Rejected(why)) => bail!("{}", why.0),
                Err(e) => Err(e.into()),
            }
        }
        Command::Users(UsersCommand::Disable { username }) => {
            let vault = open_vault(&config)?;
            let pool = vault.pool;
            let mut conn = pool.get()?;
            let disabled = audit::chain::with_entry(
                &mut conn,
                |tx| repo::users::disable(tx, &vault.keyring, &username),
                |id| id.map(|id| cli_event(Action::AdminUserDisable, Target::owner(id))),
            )?;
            if disabled.is_none() {
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
        Command::Keys(KeysCommand::Rotate { resume, batch }) => keys_rotate(&config, resume, batch),
        Command::Keys(KeysCommand::Retire { version, force }) => {
            let vault = open_vault(&config)?;
            let event = cli_event(Action::KeysRetire, Target::default());
            let message = hazina::rotation::retire(
                &vault.pool,
                &vault.keyring,
                version,
                force,
                Clock::System.now(),
                Some(&event),
            )
            .map_err(|e| anyhow::anyhow!("{}", ApiError::from(e).public_message()))?;
            println!("{message}");
            Ok(())
        }
        Command::Services(cmd) => services(&config, cmd),
        Command::Grants(cmd) => grants(&config, cmd),
        Command::Certs(cmd) => certs(&config, cmd),
        Command::Backup { to } => {
            let vault = open_vault(&config)?;
            let event = cli_event(Action::Backup, Target::default());
            let taken = hazina::backup::backup(&config, &vault, &to, Clock::System.now(), event)?;
            let versions = taken
                .versions
                .iter()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            match taken.contents {
                Some(c) => println!(
                    "backed up to {} (mode 0600): {} credentials, {} audit entries",
                    taken.location.display(),
                    c.credentials,
                    c.audit_entries
                ),
                None => println!(
                    "backed up to {} (mode 0600, a pg_dump archive)",
                    taken.location.display()
                ),
            }
            println!(
                "it opens only with master-key versions {versions} of this keyring: keep a copy \
                 of the keyring apart from it (keys retire refuses those versions while this \
                 backup needs them)"
            );
            Ok(())
        }
        Command::Restore { from } => {
            let restored = hazina::backup::restore(&config, &from, &Clock::System)?;
            println!(
                "restored {}: {} credentials; its audit log verified ({} entries)",
                from.display(),
                restored.contents.credentials,
                restored.audit_checked
            );
            if let Some(previous) = restored.previous {
                println!("the database it replaced is kept at {}", previous.display());
            }
            println!(
                "the audit log is back where the backup left it: monitors holding later \
                 checkpoints will report the rollback, and the restore is its newest entry"
            );
            Ok(())
        }
        Command::Audit(AuditCommand::Verify {
            checkpoints,
            export: Some(export),
            public_key: Some(key),
        }) => verify_export_offline(&export, &key, &checkpoints),
        Command::Audit(AuditCommand::Verify { checkpoints, .. }) => {
            let vault = open_vault(&config)?;
            let mut conn = vault.pool.get()?;
            let notes = checkpoints
                .iter()
                .map(|path| {
                    std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read checkpoint {}", path.display()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let origin = audit::checkpoint::origin(&mut conn, config.audit_origin.as_deref())?;
            let (report, verdicts) =
                audit::verify::with_checkpoints(&mut conn, &vault.keyring, &origin, &notes)?;
            println!("{}", serde_json::to_string(&report)?);
            let mut problems = Vec::new();
            for (path, verdict) in checkpoints.iter().zip(verdicts) {
                if let Some(problem) = verdict.problem {
                    problems.push(format!("checkpoint {}: {problem}", path.display()));
                }
            }
            if let Some(seq) = report.first_bad_seq {
                let why = report.problem.as_deref().unwrap_or("the chain is broken");
                problems.insert(
                    0,
                    format!(
                        "the audit log does not verify: first bad sequence number {seq} ({why})"
                    ),
                );
            }
            if problems.is_empty() {
                Ok(())
            } else {
                bail!("{}", problems.join("; "))
            }
        }
        Command::Audit(AuditCommand::Checkpoint) => {
            let vault = open_vault(&config)?;
            let mut conn = vault.pool.get()?;
            let origin = audit::checkpoint::origin(&mut conn, config.audit_origin.as_deref())?;
            let memory = signer_memory(&config, &mut conn, &vault.keyring, &origin)?;
            let note =
                audit::checkpoint::sign_current(&mut conn, &vault.keyring, &origin, &memory)?;
            print!("{note}");
            Ok(())
        }
        Command::Audit(AuditCommand::PublicKey) => {
            let vault = open_vault(&config)?;
            let mut conn = vault.pool.get()?;
            let origin = audit::checkpoint::origin(&mut conn, config.audit_origin.as_deref())?;
            let signers = audit::checkpoint::signers(&mut conn, &vault.keyring, &origin)?;
            let (_, signer) = signers
                .first()
                .context("no master-key version signs checkpoints")?;
            println!("{}", signer.verifier_key());
            Ok(())
        }
        Command::Audit(AuditCommand::Export {
            after,
            follow: true,
            ..
        }) => {
            let pool = open_vault(&config)?.pool;
            let mut out = std::io::stdout().lock();
            audit::store::follow(
                &pool,
                after,
                std::time::Duration::from_millis(200),
                // The operator at the console of the machine: no session to end.
                |_| Ok(true),
                |chunk| out.write_all(&chunk).and_then(|()| out.flush()).is_ok(),
            )?;
            Ok(())
        }
        Command::Audit(AuditCommand::Archive { before, to, force }) => {
            let before = parse_time("--before", &before)?;
            audit::archive::check_retention(
                before,
                Clock::System.now_micros(),
                config.audit_retention_min_days,
                force,
            )?;
            let vault = open_vault(&config)?;
            let mut conn = vault.pool.get()?;
            let origin = audit::checkpoint::origin(&mut conn, config.audit_origin.as_deref())?;
            let memory = signer_memory(&config, &mut conn, &vault.keyring, &origin)?;
            match audit::archive::archive(&mut conn, &vault.keyring, &origin, &memory, before, &to)?
            {
                None => println!("nothing to archive: no run of 16 entries older than that"),
                Some(done) => {
                    println!(
                        "archived entries {} to {} to {} and deleted them from the database; its checkpoint:",
                        done.first_seq,
                        done.last_seq,
                        to.display()
                    );
                    print!("{}", done.checkpoint);
                }
            }
            Ok(())
        }
        Command::Audit(AuditCommand::Export { since, after, .. }) => {
            let since = since.as_deref().map(parse_since).transpose()?;
            let pool = open_vault(&config)?.pool;
            let mut out = std::io::stdout().lock();
            let mut failed = None;
            audit::store::export(&mut *pool.get()?, since, after, |chunk| {
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
    let startup::Vault { pool, keyring, .. } = open_vault(config)?;
    let now = Clock::System.now();
    match cmd {
        ServicesCommand::Create {
            name,
            identity,
            allow_cidr,
        } => {
            let name = ServiceName::parse(&name)?;
            let identity = ServiceIdentity::parse(&identity)?;
            let cidrs = hazina::domain::parse_allowlist(&allow_cidr)?;
            let created = audit::chain::with_entry(
                &mut *pool.get()?,
                |tx| {
                    let (name, identity) = (name.as_str(), identity.as_str());
                    repo::services::create_service(
                        tx,
                        &keyring,
                        name,
                        identity,
                        cidrs.as_deref(),
                        now,
                    )
                },
                |_| Some(cli_event(Action::AdminServiceCreate, Target::default())),
            );
            let row = match created {
                Ok(row) => row,
                Err(db::DbError::Conflict) => {
                    bail!("a service with this name or identity already exists")
                }
                Err(e) => return Err(e.into()),
            };
            println!(
                "created service `{}` (identity {}, id {})",
                row.name, row.identity, row.id
            );
        }
        ServicesCommand::List => {
            for s in repo::services::list_services(&mut *pool.get()?)? {
                let state = if s.is_enabled { "enabled" } else { "disabled" };
                let cidrs = s.allowed_cidrs.as_deref().unwrap_or("any address");
                println!("{}\t{}\t{state}\t{cidrs}", s.name, s.identity);
            }
        }
        ServicesCommand::Disable { name } => {
            let disabled = audit::chain::with_entry(
                &mut *pool.get()?,
                |tx| repo::services::disable_service(tx, &keyring, &name),
                |row| {
                    row.as_ref()
                        .map(|_| cli_event(Action::AdminServiceDisable, Target::default()))
                },
            )?;
            if disabled.is_none() {
                bail!("no service named `{name}`");
            }
            println!("disabled service `{name}`; its next request is refused");
        }
        ServicesCommand::RevokeCertificate { fingerprint } => {
            let fingerprint = hazina::domain::parse_fingerprint(&fingerprint)?;
            let newly = audit::chain::with_entry(
                &mut *pool.get()?,
                |tx| repo::services::revoke_certificate(tx, &fingerprint, now),
                |newly| newly.then(|| cli_event(Action::AdminCertificateRevoke, Target::default())),
            )?;
            if newly {
                println!("revoked certificate sha256:{fingerprint}; its next request is refused");
            } else {
                println!("certificate sha256:{fingerprint} was already revoked");
            }
        }
    }
    Ok(())
}

fn grants(config: &Config, cmd: GrantsCommand) -> anyhow::Result<()> {
    let startup::Vault { pool, keyring, .. } = open_vault(config)?;
    let now = Clock::System.now();
    match cmd {
        GrantsCommand::Create {
            service,
            owner,
            provider,
            environment,
            operations,
        } => {
            let provider = provider.as_deref().map(Provider::parse).transpose()?;
            let environment = environment.as_deref().map(Environment::parse).transpose()?;
            let operations = hazina::vault::Operations::parse(&operations)?;
            use hazina::repo::services::{grant_by_names, grant_target};
            let created = audit::chain::with_entry(
                &mut *pool.get()?,
                |tx| {
                    grant_by_names(
                        tx,
                        &keyring,
                        &service,
                        &owner,
                        (provider, environment),
                        &operations,
                        now,
                    )
                },
                |made| {
                    let (grant, owner_id) = made.as_ref().ok()?;
                    let target = grant_target(grant, *owner_id);
                    Some(cli_event(Action::AdminGrantCreate, target))
                },
            )?;
            let (grant, _) = created.map_err(|e| anyhow::anyhow!("{e}"))?;
            // The scope in words, so that a grant wider than meant is seen at once.
            let providers = grant.provider.as_deref().unwrap_or("every provider's");
            let environments = match grant.environment.as_deref() {
                Some(e) => format!("{e} only"),
                None => "every environment, live included (narrow it with --environment)".into(),
            };
            println!(
                "granted `{service}` {} on `{owner}`'s {providers} credentials, {environments} (grant id {})",
                grant.operations, grant.id
            );
            // On stderr, so that it reaches the person even when the answer is piped.
            for warning in hazina::vault::Operations::warnings(&grant.operations) {
                eprintln!("hazina: warning: {warning}");
            }
        }
        GrantsCommand::List => {
            for (g, service, owner) in repo::services::list_grants(&mut *pool.get()?)? {
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
                println!(
                    "{}\t{service}\t{owner}\t{scope}\t{}\t{state}",
                    g.id, g.operations
                );
            }
        }
        GrantsCommand::Revoke { id } => {
            let revoked = audit::chain::with_entry(
                &mut *pool.get()?,
                |tx| repo::services::revoke_grant(tx, &keyring, id, now),
                |grant| {
                    let owner = grant.as_ref()?.owner_id;
                    Some(cli_event(Action::AdminGrantRevoke, Target::owner(owner)))
                },
            )?;
            if revoked.is_none() {
                bail!("no live grant with id {id}");
            }
            println!("revoked grant {id}");
        }
    }
    Ok(())
}

/// RFC 3339 or Unix seconds → microseconds.
fn parse_since(raw: &str) -> anyhow::Result<i64> {
    parse_time("--since", raw)
}

/// An RFC 3339 time or Unix seconds, as microseconds since the epoch.
fn parse_time(name: &str, raw: &str) -> anyhow::Result<i64> {
    if let Ok(secs) = raw.parse::<i64>() {
        return secs
            .checked_mul(1_000_000)
            .with_context(|| format!("{name} is out of range"));
    }
    Ok(chrono::DateTime::parse_from_rfc3339(raw)
        .with_context(|| format!("{name} must be an RFC 3339 time or Unix seconds"))?
        .timestamp_micros())
}

/// The audit entry of an operator action taken through the command line.
fn certs(config: &Config, cmd: CertsCommand) -> anyhow::Result<()> {
    let vault = open_vault(config)?;
    let mut conn = vault.pool.get()?;
    match cmd {
        CertsCommand::Set {
            provider,
            environment,
            file,
        } => {
            let provider = Provider::parse(&provider)?;
            if provider != Provider::Mpesa {
                bail!("only mpesa takes a provider certificate (for the SecurityCredential)");
            }
            let environment = Environment::parse(&environment)?;
            let pem = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let entry = cli_event(Action::AdminProviderCertificateSet, Target::default());
            let row = hazina::repo::provider_certs::set_certificate(
                &mut conn,
                &vault.keyring,
                (provider, environment),
                &pem,
                "cli",
                entry,
                Clock::System.now(),
            )?;
            println!(
                "installed the {} {} certificate: sha256 {}, subject {}",
                row.provider, row.environment, row.sha256, row.subject
            );
        }
        CertsCommand::List => {
            for row in repo::provider_certs::list(&mut conn)? {
                let state = if row.intact(&vault.keyring) {
                    "intact"
                } else {
                    "FAILED ITS INTEGRITY CHECK"
                };
                println!(
                    "{}\t{}\t{}\t{}\tvalid {} to {}\t{state}",
                    row.provider,
                    row.environment,
                    row.sha256,
                    row.subject,
                    hazina::clock::rfc3339(row.not_before),
                    hazina::clock::rfc3339(row.not_after)
                );
            }
        }
    }
    Ok(())
}

fn cli_event(action: Action, target: Target) -> Event {
    Event::new(
        Clock::System.now_micros(),
        Actor::system(),
        &RequestMeta::default(),
        action,
    )
    .target(target)
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

/// `audit verify --export`: an export checked against signed checkpoints, with no database
/// and no keyring.
fn verify_export_offline(
    export: &std::path::Path,
    key: &str,
    checkpoints: &[std::path::PathBuf],
) -> anyhow::Result<()> {
    let key = match audit::checkpoint::Verifier::parse(key) {
        Some(k) => k,
        None => {
            let text = std::fs::read_to_string(key).with_context(|| {
                format!("--public-key is neither a verifier key nor a readable file: {key}")
            })?;
            audit::checkpoint::Verifier::parse(&text)
                .context("--public-key does not hold a signed-note verifier key")?
        }
    };
    let text = std::fs::read_to_string(export)
        .with_context(|| format!("cannot read the export {}", export.display()))?;
    let notes = checkpoints
        .iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read checkpoint {}", p.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let report = audit::offline::verify_export(&text, &key, &notes);
    println!("{}", serde_json::to_string(&report)?);
    let mut problems = Vec::new();
    if let Some(seq) = report.first_bad_seq {
        problems.push(format!(
            "the export's chain is broken: first bad sequence number {seq}"
        ));
    }
    for (path, verdict) in checkpoints.iter().zip(&report.checkpoints) {
        if let Some(problem) = &verdict.problem {
            problems.push(format!("checkpoint {}: {problem}", path.display()));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{}", problems.join("; "))
    }
}

/// The database and the keyring that belongs to it (refused when it does not match).
/// What a signing command remembers: the checkpoint file's last note, when one is configured.
fn signer_memory(
    config: &Config,
    conn: &mut hazina::db::DbConn,
    keyring: &hazina::crypto::Keyring,
    origin: &str,
) -> anyhow::Result<audit::checkpoint::Memory> {
    Ok(match &config.audit_checkpoint_file {
        None => audit::checkpoint::Memory::empty(),
        Some(path) => audit::checkpoint::Memory::from_file(conn, keyring, origin, path)?,
    })
}

fn open_vault(config: &Config) -> anyhow::Result<startup::Vault> {
    startup::open_vault(config, &Clock::System)
}

fn keys_status(config: &Config) -> anyhow::Result<()> {
    let vault = open_vault(config)?;
    let status = hazina::rotation::status(&mut *vault.pool.get()?, &vault.keyring)?;
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
            "version {}{notes}: {} stored keys, {} encryptions, {}",
            v["version"],
            v["stored_keys"],
            v["encryptions"],
            v["state"].as_str().unwrap_or("not registered")
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
    use hazina::repo::key_versions;
    let vault = open_vault(config)?;
    let (pool, keyring) = (&vault.pool, &vault.keyring);
    let now = Clock::System.now();
    let rotation = if resume {
        let event = cli_event(Action::KeysRotate, Target::default());
        let resumed = key_versions::resume_rotation(&mut *pool.get()?, keyring, now, Some(&event))?;
        let Some(r) = resumed else {
            println!("nothing to resume: every stored key is under the active master-key version");
            return Ok(());
        };
        r
    } else {
        // The new version, its state and the audit entry are one decision in the database.
        let event = cli_event(Action::KeysRotate, Target::default());
        let r = key_versions::begin_rotation(&mut *pool.get()?, keyring, now, Some(&event))?;
        println!(
            "added master-key version {} (now active) to the keyring",
            r.target_version
        );
        r
    };
    let target = rotation.target_version;
    let mut conn = pool.get()?;
    let total = hazina::repo::keys::remaining(&mut conn, target)?;
    let bar = indicatif::ProgressBar::new(total.max(0) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} data keys re-wrapped ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let hidden = bar.is_hidden();
    let started = std::time::Instant::now();
    let moved = hazina::repo::keys::run_rotation(
        &mut conn,
        keyring,
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
    let backend = config.database_url.backend();
    if std::env::var("HAZINA_BENCH_SKIP_AUDIT_TREE").as_deref() == Ok("1") {
        hazina::audit::merkle::skip_for_benchmark();
        eprintln!(
            "hazina: BENCHMARK MODE: HAZINA_BENCH_SKIP_AUDIT_TREE=1: the audit Merkle tree is not \
             extended while this process runs (it catches up at the next start)"
        );
    }
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(config, Clock::System)?;
        eprintln!("hazina: serving on port {} ({backend})", app.port());
        app.run_until_stopped()
            .await
            .context("server stopped with an error")
    })?;
    Ok(())
}
