//! `hazina services`: register, list and disable services; revoke a client certificate.

use anyhow::bail;
use clap::Subcommand;

use super::{cli_event, open_vault};
use crate::audit::{self, Action, Target};
use crate::clock::Clock;
use crate::config::Config;
use crate::db::DbError;
use crate::domain::{ServiceIdentity, ServiceName};
use crate::repo;
use crate::startup;

#[derive(Subcommand)]
pub(super) enum ServicesCommand {
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

pub(super) fn run(config: &Config, cmd: ServicesCommand) -> anyhow::Result<()> {
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
            let cidrs = crate::domain::parse_allowlist(&allow_cidr)?;
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
                Err(DbError::Conflict) => {
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
            let fingerprint = crate::domain::parse_fingerprint(&fingerprint)?;
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
