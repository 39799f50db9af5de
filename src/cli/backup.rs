//! `hazina backup` and `hazina restore`.

use std::path::Path;

use super::{cli_event, open_vault};
use crate::audit::{Action, Target};
use crate::clock::Clock;
use crate::config::Config;

/// `backup --to`: copy the database while it serves; say which master-key versions it needs.
pub(super) fn backup(config: &Config, to: &Path) -> anyhow::Result<()> {
    let vault = open_vault(config)?;
    let event = cli_event(Action::Backup, Target::default());
    let taken = crate::backup::backup(config, &vault, to, Clock::System.now(), event)?;
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

/// `restore --from`: replace the SQLite database with a backup the keyring opens.
pub(super) fn restore(config: &Config, from: &Path) -> anyhow::Result<()> {
    let restored = crate::backup::restore(config, from, &Clock::System)?;
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
