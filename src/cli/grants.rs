//! `hazina grants`: let a service use an owner's credentials, change what a grant allows,
//! list grants, revoke one.

use anyhow::bail;
use clap::Subcommand;

use super::{cli_event, open_vault};
use crate::audit::{self, Action, Target};
use crate::clock::Clock;
use crate::config::Config;
use crate::domain::{Environment, Provider};
use crate::repo;
use crate::repo::services::{grant_by_names, GrantChange};
use crate::startup;
use crate::vault::Operations;

#[derive(Subcommand)]
pub(super) enum GrantsCommand {
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
    /// Add operations to a live grant, or take some away (it keeps its id and scope).
    Update {
        #[arg(long)]
        id: i64,
        /// An operation to allow as well (repeatable).
        #[arg(long = "add-operation")]
        add: Vec<String>,
        /// An operation to allow no more (repeatable); a grant keeps at least one.
        #[arg(long = "remove-operation")]
        remove: Vec<String>,
    },
    /// List grants: id, service, owner, provider/environment, operations, active or revoked.
    List,
    /// Revoke a grant by id; it stops working on the next request.
    Revoke {
        #[arg(long)]
        id: i64,
    },
}

pub(super) fn run(config: &Config, cmd: GrantsCommand) -> anyhow::Result<()> {
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
            let operations = Operations::parse(&operations)?;
            let created = grant_by_names(
                &mut *pool.get()?,
                &keyring,
                &service,
                &owner,
                (provider, environment),
                &operations,
                now,
                cli_event(Action::AdminGrantCreate, Target::default()),
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
            for warning in Operations::warnings(&grant.operations) {
                eprintln!("hazina: warning: {warning}");
            }
        }
        GrantsCommand::Update { id, add, remove } => {
            let add = Operations::parse_set(&add)?;
            let remove = Operations::parse_set(&remove)?;
            if add.is_empty() && remove.is_empty() {
                bail!("name an operation with --add-operation or --remove-operation");
            }
            let change = repo::services::change_operations(
                &mut *pool.get()?,
                &keyring,
                id,
                (&add, &remove),
                cli_event(Action::AdminGrantUpdate, Target::default()),
            )?;
            match change {
                GrantChange::Changed(grant, service, owner) => {
                    println!(
                        "grant {id} now lets `{service}` {} on `{owner}`'s credentials",
                        grant.operations
                    );
                    for warning in Operations::warnings(&grant.operations) {
                        eprintln!("hazina: warning: {warning}");
                    }
                }
                GrantChange::NoLiveGrant => bail!("no live grant with id {id}"),
                GrantChange::Refused(e) => bail!("{e}"),
            }
        }
        GrantsCommand::List => {
            println!("ID\tSERVICE\tOWNER\tPROVIDER/ENVIRONMENT\tOPERATIONS\tSTATE");
            for (g, service, owner) in repo::services::list_grants(&mut *pool.get()?)? {
                let scope = format!(
                    "{}/{}",
                    g.provider.as_deref().unwrap_or("*"),
                    g.environment.as_deref().unwrap_or("*")
                );
                let state = if g.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
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
