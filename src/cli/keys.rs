//! `hazina keys`: create the keyring, show its state, rotate the master key, retire a version.

use anyhow::bail;
use clap::Subcommand;

use super::{cli_event, open_vault};
use crate::audit::{Action, Target};
use crate::clock::Clock;
use crate::config::{Config, KeyringSource};
use crate::crypto::Keyring;
use crate::error::ApiError;
use crate::repo::{self, key_versions};
use crate::rotation;

#[derive(Subcommand)]
pub(super) enum KeysCommand {
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
        #[arg(long, default_value_t = rotation::BATCH, value_parser = clap::value_parser!(i64).range(1..=100_000))]
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

pub(super) fn run(config: &Config, cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Init => init(config),
        KeysCommand::Status => status(config),
        KeysCommand::Rotate { resume, batch } => rotate(config, resume, batch),
        KeysCommand::Retire { version, force } => {
            let vault = open_vault(config)?;
            let event = cli_event(Action::KeysRetire, Target::default());
            let message = rotation::retire(
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
    }
}

fn init(config: &Config) -> anyhow::Result<()> {
    let KeyringSource::File(path) = &config.keyring else {
        bail!(
            "HAZINA_KEYRING_DATA is set; `keys init` writes a file, so set HAZINA_KEYRING instead"
        );
    };
    Keyring::generate().write_new_file(path)?;
    println!(
        "created keyring {} (mode 0600, active version 1)",
        path.display()
    );
    Ok(())
}

fn status(config: &Config) -> anyhow::Result<()> {
    let vault = open_vault(config)?;
    let status = rotation::status(&mut *vault.pool.get()?, &vault.keyring)?;
    println!("active version: {}", status["active_version"]);
    for v in status["versions"].as_array().into_iter().flatten() {
        let mut notes = Vec::new();
        // The state says `active` already where the database registered it; say it here
        // only for a version active by the keyring alone.
        if v["active"] == true && v["state"] != "active" {
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

fn rotate(config: &Config, resume: bool, batch: i64) -> anyhow::Result<()> {
    let vault = open_vault(config)?;
    let (pool, keyring) = (&vault.pool, &vault.keyring);
    let now = Clock::System.now();
    let event = cli_event(Action::KeysRotate, Target::default());
    let rotation = if resume {
        let resumed = key_versions::resume_rotation(&mut *pool.get()?, keyring, now, Some(&event))?;
        let Some(r) = resumed else {
            println!("nothing to resume: every stored key is under the active master-key version");
            return Ok(());
        };
        r
    } else {
        // The new version, its state and the audit entry are one decision in the database.
        let r = key_versions::begin_rotation(&mut *pool.get()?, keyring, now, Some(&event))?;
        println!(
            "added master-key version {} (now active) to the keyring",
            r.target_version
        );
        r
    };
    let target = rotation.target_version;
    let mut conn = pool.get()?;
    let total = repo::keys::remaining(&mut conn, target)?;
    let bar = indicatif::ProgressBar::new(total.max(0) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} data keys re-wrapped ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let hidden = bar.is_hidden();
    let started = std::time::Instant::now();
    let moved = repo::keys::run_rotation(
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
