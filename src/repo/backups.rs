//! The record of backups made by `hazina backup` (SPEC §13): when, where to, and which
//! master-key versions each one needs to open. `keys retire` reads it
//! ([`super::key_versions::retire`]) so that retiring a version never silently makes a
//! backup undecryptable.

use diesel::prelude::*;

use crate::audit::generation;
use crate::clock::UnixSeconds;
use crate::db::schema::backups as b;
use crate::db::schema::key_versions as kv;
use crate::db::{DbConn, DbError};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = b)]
pub struct BackupRow {
    pub id: i64,
    pub taken_at: i64,
    pub location: String,
    pub key_versions: String,
}

impl BackupRow {
    /// The master-key versions the backup opens only with.
    pub fn versions(&self) -> Vec<i32> {
        parse_versions(&self.key_versions)
    }

    pub fn needs(&self, version: i32) -> bool {
        self.versions().contains(&version)
    }
}

fn parse_versions(stored: &str) -> Vec<i32> {
    stored
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

/// `1,2`: sorted, without repeats.
pub fn format_versions(versions: &[i32]) -> String {
    let mut v = versions.to_vec();
    v.sort_unstable();
    v.dedup();
    v.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

/// The versions a copy of this database needs: every one not retired.
pub fn unretired_versions(conn: &mut DbConn) -> Result<Vec<i32>, DbError> {
    Ok(kv::table
        .filter(kv::state.ne(super::key_versions::RETIRED))
        .order(kv::version.asc())
        .select(kv::version)
        .load(conn)?)
}

/// Records a backup before its file exists, so that no copy is ever without its record.
pub fn record(
    conn: &mut DbConn,
    taken_at: UnixSeconds,
    location: &str,
    versions: &[i32],
) -> Result<i64, DbError> {
    // Random, so that two backups recording at once never contend for a number.
    let id = rand::random::<i64>() & i64::MAX;
    diesel::insert_into(b::table)
        .values((
            b::id.eq(id),
            b::taken_at.eq(taken_at),
            b::location.eq(location),
            b::key_versions.eq(format_versions(versions)),
        ))
        .execute(conn)?;
    Ok(id)
}

/// Sets the versions a record's finished copy needs (a write first, so that SQLite takes
/// its write lock up front inside the caller's transaction), inside the backup's audited
/// change: its entry names the backup and its versions, so deleting the record later does not
/// let `keys retire` forget it (SPEC §14).
pub fn set_versions(conn: &mut DbConn, id: i64, versions: &[i32]) -> Result<(), DbError> {
    diesel::update(b::table.filter(b::id.eq(id)))
        .set(b::key_versions.eq(format_versions(versions)))
        .execute(conn)?;
    generation::record(conn, generation::backup(id, &format_versions(versions)))?;
    Ok(())
}

/// Drops the record of a backup that failed (its file was removed).
pub fn forget(conn: &mut DbConn, id: i64) -> Result<(), DbError> {
    diesel::delete(b::table.filter(b::id.eq(id))).execute(conn)?;
    Ok(())
}

pub fn list(conn: &mut DbConn) -> Result<Vec<BackupRow>, DbError> {
    Ok(b::table
        .order((b::taken_at.asc(), b::id.asc()))
        .select(BackupRow::as_select())
        .load(conn)?)
}

/// The recorded backups that open only with master-key version `version`, oldest first: the
/// records, and the backups the audit log remembers whose record was deleted.
pub fn needing(conn: &mut DbConn, version: i32) -> Result<Vec<BackupRow>, DbError> {
    let mut rows = list(conn)?;
    for (subject, _) in generation::with_prefix(conn, generation::BACKUP_PREFIX)? {
        let Some((id, versions)) = subject
            .strip_prefix(generation::BACKUP_PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .and_then(|(id, v)| id.parse::<i64>().ok().map(|id| (id, v)))
        else {
            continue;
        };
        if !rows.iter().any(|r| r.id == id) {
            rows.push(BackupRow {
                id,
                taken_at: 0,
                location: "(a backup whose record was deleted; see the audit log)".into(),
                key_versions: versions.to_owned(),
            });
        }
    }
    Ok(rows.into_iter().filter(|r| r.needs(version)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_stored_sorted_once_and_read_back() {
        assert_eq!(format_versions(&[3, 1, 2, 3]), "1,2,3");
        assert_eq!(format_versions(&[]), "");
        assert_eq!(parse_versions("1,2,3"), vec![1, 2, 3]);
        assert_eq!(parse_versions(""), Vec::<i32>::new());
        let row = BackupRow {
            id: 1,
            taken_at: 0,
            location: "x".into(),
            key_versions: "1,12".into(),
        };
        assert!(row.needs(1) && row.needs(12) && !row.needs(2));
    }
}
