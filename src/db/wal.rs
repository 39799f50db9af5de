//! Shredding on SQLite, second half: the WAL checkpoint after a delete (SPEC §3, §14).
//!
//! `secure_delete` (set on every connection, [`super::establish`]) makes a delete write the
//! freed cells and pages back as zeros, but in WAL mode it writes them as *new* WAL frames:
//! the older frames that hold the deleted rows stay in the `-wal` file, and the database
//! file keeps its old page images, until a checkpoint copies the zeroed pages home. Only a
//! `TRUNCATE` checkpoint also empties the `-wal` file:
//! - `PASSIVE` (what SQLite's auto-checkpoint does) copies what it can without waiting, and
//!   never resets the log, so the deleted frames stay in the file;
//! - `FULL` waits for every reader to reach the latest snapshot, but also leaves the log as
//!   it is;
//! - `RESTART` makes the next writer start the log from its beginning, which overwrites old
//!   frames only as far as new writes reach;
//! - `TRUNCATE` is `RESTART` and then truncates the log to zero bytes.
//!
//! `TRUNCATE` (like `FULL` and `RESTART`) holds SQLite's write lock while it waits for
//! readers that are still on an older snapshot, and the audit writer, which records every
//! reveal, is a writer. So the checkpoint waits at most [`WAIT_MS`] at a time (not the
//! connection's ten-second busy timeout), gives the writers a moment between attempts, and
//! gives up after [`ATTEMPTS`] with a warning: the delete has committed and stands either
//! way. What a busy checkpoint leaves behind is overwritten by the next delete's checkpoint,
//! or when the last connection to the database closes (SQLite then checkpoints and removes
//! the WAL). PostgreSQL has no equivalent; the README says what it keeps.

use std::time::Duration;

use diesel::sql_types::{BigInt, Integer};
use diesel::sqlite::SqliteConnection;
use diesel::RunQueryDsl;

use super::DbConn;

/// How long one checkpoint attempt may hold up writers (the audit writer among them).
const WAIT_MS: i64 = 100;
/// Attempts before the checkpoint is left to a later one.
const ATTEMPTS: u32 = 5;

/// What the checkpoint after a delete achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// The WAL was checkpointed and truncated: no frame of the deleted rows remains.
    Truncated,
    /// Readers or writers kept it busy on every attempt (or it failed); logged.
    Deferred,
    /// Not SQLite: nothing to do here.
    NotSqlite,
}

#[derive(diesel::QueryableByName)]
struct CheckpointRow {
    /// 1 when a reader or writer kept the checkpoint from completing.
    #[diesel(sql_type = Integer)]
    busy: i32,
}

#[derive(diesel::QueryableByName)]
struct Timeout {
    #[diesel(sql_type = BigInt)]
    timeout: i64,
}

/// Checkpoints and truncates the WAL after a committed delete. Never fails: a busy or failed
/// checkpoint is retried, then logged (without anything about the deleted rows) and left.
/// Call it outside any transaction, on the connection that committed the delete.
pub fn checkpoint_after_shred(conn: &mut DbConn) -> Checkpoint {
    let DbConn::Sqlite(c) = conn else {
        return Checkpoint::NotSqlite;
    };
    let previous = match diesel::sql_query("PRAGMA busy_timeout").get_result::<Timeout>(c) {
        Ok(t) => t.timeout,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the busy timeout; the WAL is not checkpointed after this delete");
            return Checkpoint::Deferred;
        }
    };
    let outcome = attempts(c);
    if let Err(e) = set_busy_timeout(c, previous) {
        // The connection would otherwise keep the short wait for every later write.
        tracing::error!(error = %e, "cannot restore the busy timeout after a WAL checkpoint");
    }
    outcome
}

fn attempts(c: &mut SqliteConnection) -> Checkpoint {
    if let Err(e) = set_busy_timeout(c, WAIT_MS) {
        tracing::warn!(error = %e, "cannot shorten the busy timeout; the WAL is not checkpointed after this delete");
        return Checkpoint::Deferred;
    }
    for attempt in 1..=ATTEMPTS {
        match diesel::sql_query("PRAGMA wal_checkpoint(TRUNCATE)").get_result::<CheckpointRow>(c) {
            Ok(row) if row.busy == 0 => return Checkpoint::Truncated,
            Ok(_) => tracing::debug!(attempt, "WAL checkpoint after a delete was busy"),
            Err(e) => tracing::debug!(attempt, error = %e, "WAL checkpoint after a delete failed"),
        }
        if attempt < ATTEMPTS {
            // Let the writers that queued behind this attempt through before the next one.
            std::thread::sleep(Duration::from_millis(10 * u64::from(attempt)));
        }
    }
    tracing::warn!(
        attempts = ATTEMPTS,
        "the WAL could not be checkpointed after a delete (readers or writers kept it busy): \
         the deleted key material stays in the WAL file until a later checkpoint"
    );
    Checkpoint::Deferred
}

fn set_busy_timeout(c: &mut SqliteConnection, ms: i64) -> diesel::QueryResult<()> {
    use diesel::connection::SimpleConnection;
    c.batch_execute(&format!("PRAGMA busy_timeout = {ms};"))
}

#[cfg(test)]
mod tests {
    use diesel::connection::SimpleConnection;

    use super::*;
    use crate::config::DatabaseUrl;
    use crate::db::establish;

    fn database() -> (tempfile::TempDir, DatabaseUrl) {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::Sqlite(dir.path().join("wal.db"));
        let mut c = establish(&url).unwrap();
        c.batch_execute("CREATE TABLE t (v BLOB); INSERT INTO t VALUES (randomblob(4000));")
            .unwrap();
        (dir, url)
    }

    fn wal_len(url: &DatabaseUrl) -> u64 {
        let DatabaseUrl::Sqlite(path) = url else {
            unreachable!()
        };
        std::fs::metadata(format!("{}-wal", path.display()))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    fn busy_timeout(conn: &mut DbConn) -> i64 {
        let DbConn::Sqlite(c) = conn else {
            unreachable!()
        };
        diesel::sql_query("PRAGMA busy_timeout")
            .get_result::<Timeout>(c)
            .unwrap()
            .timeout
    }

    #[test]
    fn a_checkpoint_with_no_reader_behind_empties_the_wal_and_keeps_the_busy_timeout() {
        let (_dir, url) = database();
        let mut conn = establish(&url).unwrap();
        conn.batch_execute("DELETE FROM t;").unwrap();
        assert!(wal_len(&url) > 0);

        assert_eq!(checkpoint_after_shred(&mut conn), Checkpoint::Truncated);

        assert_eq!(wal_len(&url), 0);
        assert_eq!(busy_timeout(&mut conn), 10_000);
    }

    #[test]
    fn a_reader_on_an_older_snapshot_defers_the_checkpoint_without_an_error() {
        let (_dir, url) = database();
        let mut reader = establish(&url).unwrap();
        reader
            .batch_execute("BEGIN; SELECT count(*) FROM t;")
            .unwrap();
        let mut conn = establish(&url).unwrap();
        conn.batch_execute("DELETE FROM t;").unwrap();

        assert_eq!(checkpoint_after_shred(&mut conn), Checkpoint::Deferred);

        assert_eq!(busy_timeout(&mut conn), 10_000);
        reader.batch_execute("COMMIT;").unwrap();
        assert_eq!(checkpoint_after_shred(&mut conn), Checkpoint::Truncated);
        assert_eq!(wal_len(&url), 0);
    }
}
