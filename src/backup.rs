//! `hazina backup` and `hazina restore` (SPEC §13).
//!
//! A backup is a consistent copy of the database, taken while the server serves: SQLite's
//! online backup API copies every page inside one read transaction (WAL readers never block
//! writers, so reveals go on), into a new file of mode 0600 that appears under its name only
//! once it is complete. On PostgreSQL, `pg_dump` makes the copy. Either way the backup is
//! recorded first, with the master-key versions it needs ([`crate::repo::backups`]), so that
//! `keys retire` can refuse to make it undecryptable.
//!
//! A restore (SQLite) refuses a database that any process has open, refuses a backup that is
//! damaged, whose audit log does not verify, or that the configured keyring does not open
//! (its key check values), all before it changes anything; then it keeps the database it
//! replaces beside it and swaps the contents in one transaction.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::OpenFlags;

use crate::audit::{self, Event};
use crate::clock::{Clock, UnixSeconds};
use crate::config::{Config, DatabaseUrl, KeyringSource};
use crate::repo::backups;
use crate::startup::{self, Vault};

/// What a copy holds: checked by opening it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    /// The master-key versions it needs (every one not retired in it).
    pub versions: Vec<i32>,
    pub credentials: i64,
    pub audit_entries: i64,
}

/// A finished backup.
#[derive(Debug)]
pub struct Taken {
    pub location: PathBuf,
    pub versions: Vec<i32>,
    /// What the copy holds, where it could be read back (SQLite).
    pub contents: Option<Contents>,
}

/// What to tell PostgreSQL users who ask for a restore.
pub const POSTGRES_RESTORE: &str = "on PostgreSQL, restore a `hazina backup` (a pg_dump archive) \
     with pg_restore into a new, empty database, then point HAZINA_DATABASE_URL at it: \
     `createdb hazina_restored && pg_restore --no-owner --dbname hazina_restored FILE` \
     (see the README, \"Backups\"); hazina's start-up refuses a keyring that does not match it";

/// Copies the database named by `config` to `to`, a file that must not exist yet.
pub fn backup(
    config: &Config,
    vault: &Vault,
    to: &Path,
    now: UnixSeconds,
    event: Event,
) -> anyhow::Result<Taken> {
    if to.symlink_metadata().is_ok() {
        bail!(
            "{} exists: hazina backup never overwrites a file; name a new one",
            to.display()
        );
    }
    let location =
        std::path::absolute(to).with_context(|| format!("cannot resolve {}", to.display()))?;
    // Said about the folder the operator named, not about the hidden file written first.
    if let Some(folder) = location.parent() {
        if !folder.is_dir() {
            bail!(
                "cannot write {}: the folder {} does not exist (create it first)",
                to.display(),
                folder.display()
            );
        }
    }
    let partial = sibling(&location, &format!("partial-{}", std::process::id()))?;
    create_private(&partial)?;

    let mut conn = vault
        .pool
        .get()
        .context("cannot get a database connection")?;
    // The record comes first: a copy never exists without it.
    let versions = backups::unretired_versions(&mut conn)?;
    let id = backups::record(&mut conn, now, &location.display().to_string(), &versions)?;
    let made = match &config.database_url {
        DatabaseUrl::Sqlite(live) => copy_sqlite(live, &partial).map(Some),
        DatabaseUrl::Postgres(url) => pg_dump(url, &partial).map(|()| None),
    }
    .and_then(|contents| publish(&partial, &location).map(|()| contents));
    let contents = match made {
        Ok(contents) => contents,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            if let Err(forget) = backups::forget(&mut conn, id) {
                tracing::warn!(error = %forget, "cannot drop the record of a failed backup");
            }
            return Err(e);
        }
    };
    // What the copy needs: read from it (SQLite), or the live set once more (a rotation may
    // have added a version while pg_dump ran).
    let needed = match &contents {
        Some(c) => c.versions.clone(),
        None => backups::unretired_versions(&mut conn)?,
    };
    let mut versions = versions;
    versions.extend(needed);
    versions.sort_unstable();
    versions.dedup();
    audit::chain::with_entry(
        &mut conn,
        |tx| backups::set_versions(tx, id, &versions),
        |_| Some(event),
    )?;
    Ok(Taken {
        location,
        versions,
        contents,
    })
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    pub contents: Contents,
    /// Where the database it replaced was kept (none if there was none).
    pub previous: Option<PathBuf>,
    /// Audit entries that verified in the backup.
    pub audit_checked: i64,
}

/// Replaces the SQLite database named by `config` with the backup at `from`.
pub fn restore(config: &Config, from: &Path, clock: &Clock) -> anyhow::Result<Restored> {
    let DatabaseUrl::Sqlite(target) = &config.database_url else {
        bail!("{POSTGRES_RESTORE}");
    };
    if let KeyringSource::File(path) = &config.keyring {
        if !path.exists() {
            bail!(
                "no keyring at {}: a restore needs the keyring that belongs to the backup \
                 (HAZINA_KEYRING); hazina never creates one for it",
                path.display()
            );
        }
    }
    if std::fs::canonicalize(from).ok() == std::fs::canonicalize(target).ok() {
        bail!("the backup is the database itself; name a backup file");
    }
    let source = open_existing(from)
        .with_context(|| format!("cannot open the backup {}", from.display()))?;
    let contents = read_contents(&source)
        .with_context(|| format!("{} is not a usable hazina backup", from.display()))?;

    // The target: nobody may have it open, from here to the end.
    let created = crate::db::create_sqlite_file(target)
        .with_context(|| format!("cannot create {}", target.display()))?;
    let mut live = lock_exclusively(target)?;

    // A working copy beside it, brought up to date and checked as a start would check it.
    let work = sibling(target, &format!("restoring-{}", std::process::id()))?;
    let checked = prepare(config, &source, &work, clock);
    drop(source);
    let audit_checked = match checked {
        Ok(n) => n,
        Err(e) => {
            remove_database_files(&work);
            if created {
                drop(live);
                remove_database_files(target);
            }
            return Err(e);
        }
    };

    // The database it replaces is kept, never overwritten.
    let previous = if created {
        None
    } else {
        let stamp = chrono::DateTime::from_timestamp(clock.now(), 0)
            .map(|t| t.format("%Y%m%dT%H%M%SZ").to_string())
            .unwrap_or_default();
        let mut name = target.as_os_str().to_owned();
        name.push(format!(".before-restore-{stamp}"));
        let aside = PathBuf::from(name);
        create_private(&aside)?;
        let mut kept = rusqlite::Connection::open(&aside)?;
        copy_all(&live, &mut kept).context("cannot keep a copy of the current database")?;
        kept.pragma_update(None, "journal_mode", "DELETE")?;
        drop(kept);
        Some(aside)
    };
    let prepared = open_existing(&work)?;
    let swapped = copy_all(&prepared, &mut live);
    drop(prepared);
    drop(live);
    remove_database_files(&work);
    swapped.context("cannot write the restored database")?;
    Ok(Restored {
        contents,
        previous,
        audit_checked,
    })
}

/// Copies `source` into a new database at `work`, migrates it, checks it against the keyring
/// and its audit log, and records the restore in it. The entries that verified.
fn prepare(
    config: &Config,
    source: &rusqlite::Connection,
    work: &Path,
    clock: &Clock,
) -> anyhow::Result<i64> {
    create_private(work)?;
    let mut copy = rusqlite::Connection::open(work)?;
    copy_all(source, &mut copy)?;
    drop(copy);
    let work_config = Config {
        database_url: DatabaseUrl::Sqlite(work.to_path_buf()),
        db_pool_size: 1,
        ..config.clone()
    };
    let vault = startup::open_vault(&work_config, clock)
        .context("the backup does not open with this keyring; nothing was changed")?;
    let mut conn = vault.pool.get().context("cannot open the working copy")?;
    let verified = audit::chain::verify(&mut conn, &vault.keyring)?;
    if !verified.ok {
        bail!(
            "the backup's audit log does not verify (first bad entry: {}): the file was \
             edited or damaged; nothing was changed",
            verified
                .first_bad_seq
                .map_or_else(|| "the head".into(), |s| s.to_string())
        );
    }
    let event = Event::new(
        clock.now_micros(),
        audit::Actor::system(),
        &audit::RequestMeta::default(),
        audit::Action::Restore,
    );
    audit::chain::append(&mut conn, &[&event])?;
    Ok(verified.checked)
}

/// `FILE` → `.FILE.<what>` in the same directory (same filesystem, so links and renames
/// stay atomic).
fn sibling(path: &Path, what: &str) -> anyhow::Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let mut hidden = std::ffi::OsString::from(".");
    hidden.push(name);
    hidden.push(".");
    hidden.push(what);
    Ok(path.with_file_name(hidden))
}

fn create_private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    Ok(())
}

fn open_existing(path: &Path) -> anyhow::Result<rusqlite::Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = rusqlite::Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}

/// An exclusive lock on the database at `path`, held until the connection closes: refused
/// at once while any other connection (a running server's pool, a CLI command) has it open.
fn lock_exclusively(path: &Path) -> anyhow::Result<rusqlite::Connection> {
    let conn = open_existing(path)?;
    conn.busy_timeout(Duration::ZERO)?;
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    match conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;") {
        Ok(()) => Ok(conn),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            bail!(
                "{} is in use by a running hazina server or command: stop it, then restore",
                path.display()
            )
        }
        Err(e) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

/// Every page of `source` into `dest`, in one step: one read transaction on the source (a
/// consistent snapshot) and one write transaction on the destination.
fn copy_all(source: &rusqlite::Connection, dest: &mut rusqlite::Connection) -> anyhow::Result<()> {
    let backup = Backup::new(source, dest)?;
    // A busy source (a checkpoint holding a lock for an instant) is tried again.
    for _ in 0..100 {
        match backup.step(-1)? {
            StepResult::Done => return Ok(()),
            StepResult::Busy | StepResult::Locked | StepResult::More => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => {}
        }
    }
    bail!("the database stayed busy; try again")
}

/// A consistent copy of the live SQLite database at `live` into `partial`: checked, and
/// what it holds.
fn copy_sqlite(live: &Path, partial: &Path) -> anyhow::Result<Contents> {
    let source = open_existing(live).context("cannot open the database")?;
    let mut copy = rusqlite::Connection::open(partial)?;
    copy_all(&source, &mut copy)?;
    drop(source);
    // Self-contained: a backup file has no write-ahead log beside it.
    copy.pragma_update(None, "journal_mode", "DELETE")?;
    let contents = read_contents(&copy).context("the copy does not check")?;
    drop(copy);
    Ok(contents)
}

/// Checks a hazina database (SQLite's integrity check) and reads what it holds.
fn read_contents(conn: &rusqlite::Connection) -> anyhow::Result<Contents> {
    let integrity: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if integrity != "ok" {
        bail!("it is damaged (SQLite's integrity check: {integrity})");
    }
    let hazina: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('key_versions', 'credentials', 'audit_log')",
        [],
        |r| r.get(0),
    )?;
    if hazina != 3 {
        bail!("it is not a hazina database");
    }
    let mut stmt =
        conn.prepare("SELECT version FROM key_versions WHERE state <> 'retired' ORDER BY version")?;
    let versions = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<Vec<i32>, _>>()?;
    let credentials = conn.query_row(
        "SELECT count(*) FROM credentials WHERE deleted_at IS NULL",
        [],
        |r| r.get(0),
    )?;
    let audit_entries = conn.query_row("SELECT count(*) FROM audit_log", [], |r| r.get(0))?;
    Ok(Contents {
        versions,
        credentials,
        audit_entries,
    })
}

/// Gives the finished copy its name: synced first, linked (never over an existing file),
/// then the directory synced.
fn publish(partial: &Path, location: &Path) -> anyhow::Result<()> {
    std::fs::File::open(partial)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", partial.display()))?;
    std::fs::hard_link(partial, location).with_context(|| {
        format!(
            "cannot create {} (did another command create it meanwhile?)",
            location.display()
        )
    })?;
    std::fs::remove_file(partial)
        .with_context(|| format!("cannot remove {}", partial.display()))?;
    if let Some(dir) = location.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", dir.display()))?;
    }
    Ok(())
}

/// A PostgreSQL backup: `pg_dump --format=custom`, the password (if the URL holds one) given
/// in the environment, never on the command line where `ps` would show it.
fn pg_dump(url: &secrecy::SecretString, partial: &Path) -> anyhow::Result<()> {
    use secrecy::ExposeSecret;
    let mut url = reqwest::Url::parse(url.expose_secret())
        .map_err(|_| anyhow::anyhow!("HAZINA_DATABASE_URL is not a valid URL"))?;
    let password = url.password().map(|p| {
        percent_encoding::percent_decode_str(p)
            .decode_utf8_lossy()
            .into_owned()
    });
    let _ = url.set_password(None);
    let mut cmd = std::process::Command::new("pg_dump");
    cmd.args(["--format=custom", "--no-owner", "--no-privileges", "--file"])
        .arg(partial)
        .arg("--dbname")
        .arg(url.as_str())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if let Some(password) = password {
        cmd.env("PGPASSWORD", password);
    }
    let out = cmd.output().context(
        "cannot run pg_dump: install PostgreSQL's client tools (Debian: postgresql-client)",
    )?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "pg_dump failed: {}",
            stderr.lines().next().unwrap_or("no message")
        );
    }
    Ok(())
}

/// A database file and the files SQLite keeps beside it.
fn remove_database_files(path: &Path) {
    let _ = std::fs::remove_file(path);
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siblings_are_hidden_files_in_the_same_directory() {
        assert_eq!(
            sibling(Path::new("/var/lib/hazina/hazina.db"), "partial-7").unwrap(),
            PathBuf::from("/var/lib/hazina/.hazina.db.partial-7")
        );
        assert!(sibling(Path::new("/"), "x").is_err());
    }
}
