//! `hazina audit`: verify the log (or an export, offline), sign a checkpoint, print the
//! verifier key, export or follow the log, archive old entries.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;

use super::open_vault;
use crate::audit::{self, checkpoint};
use crate::clock::Clock;
use crate::config::Config;
use crate::crypto::Keyring;
use crate::db::DbConn;

#[derive(Subcommand)]
pub(super) enum AuditCommand {
    /// Check the hash chain (and each given signed checkpoint: that the log still extends
    /// it); exits non-zero and says what is wrong if anything is.
    Verify {
        /// A signed checkpoint file, as `hazina audit checkpoint` wrote it (repeatable).
        #[arg(long = "checkpoint")]
        checkpoints: Vec<PathBuf>,
        /// Verify this export (`hazina audit export`) instead of the database: no database
        /// and no keyring are used (needs --public-key).
        #[arg(long, requires = "public_key")]
        export: Option<PathBuf>,
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
        to: PathBuf,
        /// Archive entries younger than HAZINA_AUDIT_RETENTION_MIN_DAYS too.
        #[arg(long)]
        force: bool,
    },
}

pub(super) fn run(config: &Config, cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify {
            checkpoints,
            export: Some(export),
            public_key: Some(key),
        } => verify_export_offline(&export, &key, &checkpoints),
        AuditCommand::Verify { checkpoints, .. } => verify(config, &checkpoints),
        AuditCommand::Checkpoint => {
            let vault = open_vault(config)?;
            let mut conn = vault.pool.get()?;
            let origin = checkpoint::origin(&mut conn, config.audit_origin.as_deref())?;
            let memory = signer_memory(config, &mut conn, &vault.keyring, &origin)?;
            let note = checkpoint::sign_current(&mut conn, &vault.keyring, &origin, &memory)?;
            print!("{note}");
            Ok(())
        }
        AuditCommand::PublicKey => {
            let vault = open_vault(config)?;
            let mut conn = vault.pool.get()?;
            let origin = checkpoint::origin(&mut conn, config.audit_origin.as_deref())?;
            let signers = checkpoint::signers(&mut conn, &vault.keyring, &origin)?;
            let (_, signer) = signers
                .first()
                .context("no master-key version signs checkpoints")?;
            println!("{}", signer.verifier_key());
            Ok(())
        }
        AuditCommand::Export {
            after,
            follow: true,
            ..
        } => {
            let pool = open_vault(config)?.pool;
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
        AuditCommand::Export { since, after, .. } => export(config, since.as_deref(), after),
        AuditCommand::Archive { before, to, force } => archive(config, &before, &to, force),
    }
}

/// `audit verify`: the chain in the database, and each checkpoint file against it.
fn verify(config: &Config, checkpoints: &[PathBuf]) -> anyhow::Result<()> {
    let vault = open_vault(config)?;
    let mut conn = vault.pool.get()?;
    let notes = read_checkpoints(checkpoints)?;
    let origin = checkpoint::origin(&mut conn, config.audit_origin.as_deref())?;
    let (report, verdicts) =
        audit::verify::with_checkpoints(&mut conn, &vault.keyring, &origin, &notes)?;
    let mut problems = Vec::new();
    if let Some(seq) = report.first_bad_seq {
        let why = report.problem.as_deref().unwrap_or("the chain is broken");
        problems.push(format!(
            "the audit log does not verify: first bad sequence number {seq} ({why})"
        ));
    }
    for (path, verdict) in checkpoints.iter().zip(&verdicts) {
        if let Some(problem) = &verdict.problem {
            problems.push(format!("checkpoint {}: {problem}", path.display()));
        }
    }
    // One verdict on stdout for the whole run: `ok` only when the log and every checkpoint
    // verify, and (when checkpoints were given) each one's verdict beside its file.
    let mut answer = serde_json::to_value(&report)?;
    answer["ok"] = problems.is_empty().into();
    if checkpoints.is_empty() {
        println!("{}", serde_json::to_string(&answer)?);
        return fail_on(problems);
    }
    answer["checkpoints"] = checkpoints
        .iter()
        .zip(&verdicts)
        .map(|(path, verdict)| {
            let mut v = serde_json::to_value(verdict)?;
            v["file"] = path.display().to_string().into();
            Ok(v)
        })
        .collect::<Result<Vec<_>, serde_json::Error>>()?
        .into();
    println!("{}", serde_json::to_string(&answer)?);
    fail_on(problems)
}

/// `audit verify --export`: an export checked against signed checkpoints, with no database
/// and no keyring.
fn verify_export_offline(export: &Path, key: &str, checkpoints: &[PathBuf]) -> anyhow::Result<()> {
    let key = match checkpoint::Verifier::parse(key) {
        Some(k) => k,
        None => {
            let text = std::fs::read_to_string(key).with_context(|| {
                format!("--public-key is neither a verifier key nor a readable file: {key}")
            })?;
            checkpoint::Verifier::parse(&text)
                .context("--public-key does not hold a signed-note verifier key")?
        }
    };
    let text = std::fs::read_to_string(export)
        .with_context(|| format!("cannot read the export {}", export.display()))?;
    let notes = read_checkpoints(checkpoints)?;
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
    fail_on(problems)
}

/// `audit export`: the log as JSON Lines on standard output.
fn export(config: &Config, since: Option<&str>, after: i64) -> anyhow::Result<()> {
    let since = since.map(|raw| parse_time("--since", raw)).transpose()?;
    let pool = open_vault(config)?.pool;
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

/// `audit archive`: the entries older than `before` to a file of their own, then out of the
/// database.
fn archive(config: &Config, before: &str, to: &Path, force: bool) -> anyhow::Result<()> {
    let before = parse_time("--before", before)?;
    audit::archive::check_retention(
        before,
        Clock::System.now_micros(),
        config.audit_retention_min_days,
        force,
    )?;
    let vault = open_vault(config)?;
    let mut conn = vault.pool.get()?;
    let origin = checkpoint::origin(&mut conn, config.audit_origin.as_deref())?;
    let memory = signer_memory(config, &mut conn, &vault.keyring, &origin)?;
    match audit::archive::archive(&mut conn, &vault.keyring, &origin, &memory, before, to)? {
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

/// Every checkpoint file's text, or which one cannot be read.
fn read_checkpoints(paths: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    paths
        .iter()
        .map(|path| {
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read checkpoint {}", path.display()))
        })
        .collect()
}

/// Success when nothing is wrong; otherwise every problem, in one line.
fn fail_on(problems: Vec<String>) -> anyhow::Result<()> {
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{}", problems.join("; "))
    }
}

/// What a signing command remembers: the checkpoint file's last note, when one is configured.
fn signer_memory(
    config: &Config,
    conn: &mut DbConn,
    keyring: &Keyring,
    origin: &str,
) -> anyhow::Result<checkpoint::Memory> {
    Ok(match &config.audit_checkpoint_file {
        None => checkpoint::Memory::empty(),
        Some(path) => checkpoint::Memory::from_file(conn, keyring, origin, path)?,
    })
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
