//! `hazina certs`: install a provider's public certificate, list the installed ones.

use anyhow::{bail, Context};
use clap::Subcommand;

use super::{cli_event, open_vault};
use crate::audit::{Action, Target};
use crate::clock::Clock;
use crate::config::Config;
use crate::domain::{Environment, Provider};
use crate::repo::provider_certs;

#[derive(Subcommand)]
pub(super) enum CertsCommand {
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

pub(super) fn run(config: &Config, cmd: CertsCommand) -> anyhow::Result<()> {
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
            let given =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let pem = crate::providers::compute::certificate_pem(&given)
                .map_err(|m| anyhow::anyhow!("{}: {m}", file.display()))?;
            let entry = cli_event(Action::AdminProviderCertificateSet, Target::default());
            let row = provider_certs::set_certificate(
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
            for row in provider_certs::list(&mut conn)? {
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
                    crate::clock::rfc3339(row.not_before),
                    crate::clock::rfc3339(row.not_after)
                );
            }
        }
    }
    Ok(())
}
