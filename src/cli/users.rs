//! `hazina users`: create, enable, disable, unlock, list, set a password or a role.

use anyhow::bail;
use clap::Subcommand;

use super::{cli_event, open_vault, read_password};
use crate::audit::{self, Action, Target};
use crate::auth::password;
use crate::clock::Clock;
use crate::config::Config;
use crate::db::DbError;
use crate::domain::{Password, Role, Username};
use crate::repo::{self, throttle};

#[derive(Subcommand)]
pub(super) enum UsersCommand {
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
    /// Enable a disabled user; they may log in again (a login lockout stays until it ends or
    /// `users unlock` lifts it).
    Enable {
        #[arg(long)]
        username: String,
    },
    /// Lift the login lockout of a user's account: their next sign-in checks the password at
    /// once (addresses keep their own limits).
    Unlock {
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

pub(super) fn run(config: &Config, cmd: UsersCommand) -> anyhow::Result<()> {
    match cmd {
        UsersCommand::Create {
            username,
            role,
            allow_cidr,
            ..
        } => {
            let username = Username::parse(&username)?;
            let role = Role::parse(&role)?;
            let cidrs = crate::domain::parse_allowlist(&allow_cidr)?;
            let password = Password::parse(read_password()?)?;
            let hash = password::hash(password.secret())?;
            let vault = open_vault(config)?;
            let mut conn = vault.pool.get()?;
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
            match created {
                Ok(id) => {
                    println!(
                        "created {} `{}` (id {id})",
                        role.as_str(),
                        username.as_str()
                    );
                    Ok(())
                }
                Err(DbError::Conflict) => {
                    bail!("a user named `{}` already exists", username.as_str())
                }
                Err(e) => Err(e.into()),
            }
        }
        UsersCommand::Enable { username } => {
            let vault = open_vault(config)?;
            let enabled = audit::chain::with_entry(
                &mut *vault.pool.get()?,
                |tx| repo::users::enable(tx, &vault.keyring, &username),
                |id| id.map(|id| cli_event(Action::AdminUserEnable, Target::owner(id))),
            )?;
            if enabled.is_none() {
                bail!("no user named `{username}`");
            }
            println!(
                "enabled `{username}`; they may log in again{}",
                lockout_note(&vault, &username)?
            );
            Ok(())
        }
        UsersCommand::Unlock { username } => {
            let vault = open_vault(config)?;
            let unlocked = throttle::unlock_user(
                &mut *vault.pool.get()?,
                &vault.keyring,
                &username,
                Clock::System.now(),
                cli_event(Action::AdminUserUnlock, Target::default()),
            )?;
            match unlocked {
                None => bail!("no user named `{username}`"),
                Some((_, true)) => println!("lifted the login lockout of `{username}`"),
                Some((_, false)) => println!("no login lockout held `{username}`; nothing to lift"),
            }
            Ok(())
        }
        UsersCommand::List => {
            let vault = open_vault(config)?;
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
                    crate::clock::rfc3339(row.created_at)
                );
            }
            Ok(())
        }
        UsersCommand::SetPassword { username, .. } => {
            let password = Password::parse(read_password()?)?;
            let hash = password::hash(password.secret())?;
            let vault = open_vault(config)?;
            let now = Clock::System.now();
            let set = audit::chain::with_entry(
                &mut *vault.pool.get()?,
                |tx| repo::users::set_password(tx, &vault.keyring, &username, &hash, None, now),
                |id| id.map(|id| cli_event(Action::AdminUserPassword, Target::owner(id))),
            )?;
            if set.is_none() {
                bail!("no user named `{username}`");
            }
            println!(
                "set the password of `{username}`; every session of theirs has ended{}",
                lockout_note(&vault, &username)?
            );
            Ok(())
        }
        UsersCommand::SetRole { username, role } => {
            let role = Role::parse(&role)?;
            let vault = open_vault(config)?;
            let set = audit::chain::with_entry(
                &mut *vault.pool.get()?,
                |tx| repo::users::set_role(tx, &vault.keyring, &username, role),
                |id| id.map(|id| cli_event(Action::AdminUserRole, Target::owner(id))),
            );
            match set {
                Ok(Some(_)) => {
                    println!("`{username}` is now {}", role.as_str());
                    Ok(())
                }
                Ok(None) => bail!("no user named `{username}`"),
                Err(DbError::Rejected(why)) => bail!("{}", why.0),
                Err(e) => Err(e.into()),
            }
        }
        UsersCommand::Disable { username } => {
            let vault = open_vault(config)?;
            let disabled = audit::chain::with_entry(
                &mut *vault.pool.get()?,
                |tx| repo::users::disable(tx, &vault.keyring, &username),
                |id| id.map(|id| cli_event(Action::AdminUserDisable, Target::owner(id))),
            )?;
            if disabled.is_none() {
                bail!("no user named `{username}`");
            }
            println!("disabled `{username}`; their sessions stop working on their next request");
            Ok(())
        }
    }
}

/// What enabling a user or setting their password leaves in force: a login lockout of their
/// account, in words (empty when none holds).
fn lockout_note(vault: &crate::startup::Vault, username: &str) -> anyhow::Result<String> {
    let until = throttle::account_locked_until(
        &mut *vault.pool.get()?,
        &vault.keyring,
        username,
        Clock::System.now(),
    )?;
    Ok(match until {
        None => String::new(),
        Some(t) => format!(
            "; a login lockout holds their account until {} (`hazina users unlock --username {username}` lifts it)",
            crate::clock::rfc3339(t)
        ),
    })
}
