//! The hash chain: canonical encoding, append (one transaction per batch) and verification.

use diesel::prelude::*;
use sha2::{Digest, Sha256};

use super::{Action, Event, Outcome};
use crate::db::schema::{audit_head as head, audit_log as log};
use crate::db::{DbConn, DbError};

pub const HASH_LEN: usize = 32;
pub const GENESIS: [u8; HASH_LEN] = [0u8; HASH_LEN];

/// One stored entry.
///
/// `None` is inserted as NULL (none of these columns has another default), so every insert
/// names the same columns: diesel prepares the statement once per connection and finds it by
/// type, instead of writing its SQL again (which columns were `None` would change the text).
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = log, treat_none_as_null = true)]
pub struct AuditRow {
    pub seq: i64,
    pub occurred_at: i64,
    pub actor_kind: String,
    pub actor_id: Option<i64>,
    pub actor_name: Option<String>,
    pub source_ip: Option<String>,
    pub cert_fingerprint: Option<String>,
    pub action: String,
    pub credential_id: Option<i64>,
    pub owner_id: Option<i64>,
    pub provider: Option<String>,
    pub environment: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
    /// The operation a `credential.operation` entry records (SPEC §9.3).
    pub operation: Option<String>,
    /// The caller's payment reference (SPEC §9.3).
    pub reference: Option<String>,
    /// The signed rows this entry changed, space-separated and sorted (SPEC §14; see
    /// [`super::generation`]).
    pub subjects: Option<String>,
}

fn put_str(h: &mut Sha256, v: Option<&str>) {
    match v {
        None => h.update([0u8]),
        Some(s) => {
            h.update([1u8]);
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        }
    }
}

fn put_i64(h: &mut Sha256, v: Option<i64>) {
    match v {
        None => h.update([0u8]),
        Some(n) => {
            h.update([1u8]);
            h.update(n.to_be_bytes());
        }
    }
}

impl AuditRow {
    /// The entry's hash: SHA-256 over a domain tag, the previous hash, and every field in a
    /// fixed order with unambiguous (tagged, length-prefixed) encoding.
    pub fn compute_hash(&self) -> [u8; HASH_LEN] {
        let mut h = Sha256::new();
        h.update(b"hazina/audit/v1\0");
        h.update(&self.prev_hash);
        h.update(self.seq.to_be_bytes());
        h.update(self.occurred_at.to_be_bytes());
        put_str(&mut h, Some(&self.actor_kind));
        put_i64(&mut h, self.actor_id);
        put_str(&mut h, self.actor_name.as_deref());
        put_str(&mut h, self.source_ip.as_deref());
        put_str(&mut h, self.cert_fingerprint.as_deref());
        put_str(&mut h, Some(&self.action));
        put_i64(&mut h, self.credential_id);
        put_i64(&mut h, self.owner_id);
        put_str(&mut h, self.provider.as_deref());
        put_str(&mut h, self.environment.as_deref());
        put_str(&mut h, Some(&self.outcome));
        put_str(&mut h, self.reason.as_deref());
        put_str(&mut h, self.request_id.as_deref());
        // Fields added with provider operations: hashed only when present, behind their own
        // tag, so entries from before hash exactly as they did (the encoding above is
        // prefix-free: no entry without them can collide with one that has them).
        if self.operation.is_some() || self.reference.is_some() {
            h.update(b"\x02operation");
            put_str(&mut h, self.operation.as_deref());
            put_str(&mut h, self.reference.as_deref());
        }
        // Row generations (SPEC §14): the same rule, behind a tag of their own.
        if let Some(subjects) = self.subjects.as_deref() {
            h.update(b"\x03subjects");
            put_str(&mut h, Some(subjects));
        }
        h.finalize().into()
    }

    fn chained(seq: i64, prev_hash: Vec<u8>, e: &Event) -> Self {
        let mut row = AuditRow {
            seq,
            occurred_at: e.occurred_at,
            actor_kind: e.actor.kind.as_str().into(),
            actor_id: e.actor.id,
            actor_name: e.actor.name.clone(),
            source_ip: e.source_ip.clone(),
            cert_fingerprint: e.cert_fingerprint.clone(),
            action: e.action.as_str().into(),
            credential_id: e.target.credential_id,
            owner_id: e.target.owner_id,
            provider: e.target.provider.clone(),
            environment: e.target.environment.clone(),
            outcome: e.outcome.as_str().into(),
            reason: e.reason.map(|r| r.as_str().into()),
            request_id: e.request_id.clone(),
            prev_hash,
            hash: Vec::new(),
            operation: e.operation.map(|o| o.to_owned()),
            reference: e.reference.clone(),
            subjects: e.subjects.clone(),
        };
        row.hash = row.compute_hash().to_vec();
        row
    }

    pub fn action(&self) -> Option<Action> {
        Action::parse(&self.action)
    }

    pub fn outcome(&self) -> Option<Outcome> {
        Outcome::parse(&self.outcome)
    }
}

/// The chain head: the last sequence number and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub hash: Vec<u8>,
}

pub fn read_head(conn: &mut DbConn) -> Result<Head, DbError> {
    let (seq, hash) = head::table
        .filter(head::id.eq(1))
        .select((head::seq, head::hash))
        .first::<(i64, Vec<u8>)>(conn)?;
    Ok(Head { seq, hash })
}

/// Appends `events` in order, in one transaction, and returns their sequence numbers. The
/// head row is locked first (a write), so concurrent appenders, on any node, serialise on it
/// and the chain stays one chain.
pub fn append(conn: &mut DbConn, events: &[&Event]) -> Result<Vec<i64>, DbError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    conn.transaction(|tx| {
        crate::per_backend!(&mut *tx, |c| diesel::update(
            head::table.filter(head::id.eq(1))
        )
        .set(head::seq.eq(head::seq))
        .execute(c))?;
        let (mut seq, hash, mut tree_size) = crate::per_backend!(&mut *tx, |c| head::table
            .filter(head::id.eq(1))
            .select((head::seq, head::hash, head::tree_size))
            .first::<(i64, Vec<u8>, i64)>(c))?;
        let mut prev = hash;
        let mut rows = Vec::with_capacity(events.len());
        for e in events {
            seq += 1;
            let row = AuditRow::chained(seq, prev, e);
            prev = row.hash.clone();
            rows.push(row);
        }
        // One row per statement: the SQL text never changes, so it is prepared once and
        // cached for the connection. (A multi-row INSERT's text changes with every batch size
        // and was re-parsed for each batch.) It is all one transaction and one fsync anyway.
        for row in &rows {
            crate::per_backend!(&mut *tx, |c| diesel::insert_into(log::table)
                .values(row)
                .execute(c))?;
            if let Some(subjects) = row.subjects.as_deref() {
                super::generation::index(tx, row.seq, subjects)?;
            }
        }
        // The Merkle tree grows in the same transaction. A tree that lags the log (entries
        // written by a node from before the tree, during a rolling upgrade) catches up first.
        if !super::merkle::skipped_for_benchmark() {
            let first = rows[0].seq;
            if first - 1 > tree_size {
                super::merkle::catch_up(tx, first - 1 - tree_size)?;
            }
            let hashes: Vec<&[u8]> = rows.iter().map(|r| r.hash.as_slice()).collect();
            tree_size = super::merkle::extend_nodes(tx, first, &hashes)?;
        }
        // The chain head and the tree's size move together, in one statement.
        crate::per_backend!(&mut *tx, |c| diesel::update(
            head::table.filter(head::id.eq(1))
        )
        .set((
            head::seq.eq(seq),
            head::hash.eq(&prev),
            head::tree_size.eq(tree_size),
        ))
        .execute(c))?;
        Ok(rows.iter().map(|r| r.seq).collect())
    })
}

/// Runs `change` and appends the entry `entry` makes of its result in the **same**
/// transaction: an acknowledged change never lacks its audit entry, and no entry records a
/// change that rolled back. `entry` answers `None` when there is nothing to record (say, the
/// target did not exist); a change that signed a row must be recorded.
///
/// `change` runs in a change scope ([`super::generation`]): every row it signs binds the
/// sequence number this entry takes, and the entry names those rows among its subjects.
/// Rows are signed nowhere else.
pub fn with_entry<T>(
    conn: &mut DbConn,
    change: impl FnOnce(&mut DbConn) -> Result<T, DbError>,
    entry: impl FnOnce(&T) -> Option<Event>,
) -> Result<T, DbError> {
    with_entries(conn, change, |out| entry(out).into_iter().collect())
}

/// [`with_entry`] for a change that records more than one entry (a rotation that also
/// shreds the oldest version, say): the first entry is the change's (it carries the row
/// generations); the others follow it in the same transaction.
pub fn with_entries<T>(
    conn: &mut DbConn,
    change: impl FnOnce(&mut DbConn) -> Result<T, DbError>,
    entries: impl FnOnce(&T) -> Vec<Event>,
) -> Result<T, DbError> {
    let mut recorded = 0;
    let out = conn.transaction(|tx| {
        let scope = super::generation::Scope::open()?;
        let out = change(tx)?;
        let (reserved, subjects) = scope.close();
        let mut events = entries(&out);
        match events.first_mut() {
            Some(first) => {
                first.subjects = subjects;
                let refs: Vec<&Event> = events.iter().collect();
                let seqs = append(tx, &refs)?;
                if reserved.is_some_and(|r| seqs.first() != Some(&r)) {
                    return Err(DbError::Unaudited);
                }
                recorded = seqs.len() as u64;
            }
            None if subjects.is_some() => return Err(DbError::Unaudited),
            None => {}
        }
        Ok(out)
    })?;
    CHANGE_ENTRIES.fetch_add(recorded, std::sync::atomic::Ordering::Relaxed);
    Ok(out)
}

/// Entries this process committed with a change ([`with_entry`]), beside those its group
/// writer committed (`/metrics` adds the two).
pub static CHANGE_ENTRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub use super::verify::Verification;

/// Walks the chain in sequence order up to the head read at the start and names the first
/// entry that was edited, deleted, inserted or moved, or that the stored Merkle tree
/// disagrees with; then checks the head. See [`super::verify`], which does the walk (and
/// recomputes the tree as it goes).
pub fn verify(
    conn: &mut DbConn,
    keyring: &crate::crypto::Keyring,
) -> Result<Verification, DbError> {
    super::verify::verify(conn, keyring)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Actor, RequestMeta, Target};

    fn event(n: i64) -> Event {
        Event::new(
            n,
            Actor::anonymous(),
            &RequestMeta::default(),
            Action::Login,
        )
        .target(Target::owner(n))
    }

    #[test]
    fn the_hash_covers_every_field_and_the_previous_hash() {
        let base = AuditRow::chained(1, GENESIS.to_vec(), &event(1));
        type Change = Box<dyn Fn(&mut AuditRow)>;
        let variants: Vec<Change> = vec![
            Box::new(|r| r.seq = 2),
            Box::new(|r| r.occurred_at += 1),
            Box::new(|r| r.actor_kind = "user".into()),
            Box::new(|r| r.actor_id = Some(1)),
            Box::new(|r| r.actor_name = Some("x".into())),
            Box::new(|r| r.source_ip = Some("10.0.0.1".into())),
            Box::new(|r| r.cert_fingerprint = Some("ab".into())),
            Box::new(|r| r.action = "auth.logout".into()),
            Box::new(|r| r.credential_id = Some(5)),
            Box::new(|r| r.owner_id = None),
            Box::new(|r| r.provider = Some("mpesa".into())),
            Box::new(|r| r.environment = Some("live".into())),
            Box::new(|r| r.outcome = "denied".into()),
            Box::new(|r| r.reason = Some("bad_password".into())),
            Box::new(|r| r.request_id = Some("r".into())),
            Box::new(|r| r.prev_hash = vec![1; 32]),
        ];
        for change in variants {
            let mut row = base.clone();
            change(&mut row);
            assert_ne!(row.compute_hash().to_vec(), base.hash);
        }
    }

    #[test]
    fn an_absent_field_and_an_empty_field_hash_differently() {
        let mut a = AuditRow::chained(1, GENESIS.to_vec(), &event(1));
        let mut b = a.clone();
        a.actor_name = None;
        b.actor_name = Some(String::new());
        assert_ne!(a.compute_hash(), b.compute_hash());
    }
}
