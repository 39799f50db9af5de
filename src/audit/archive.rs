//! Retention: `hazina audit archive --before DATE --to FILE` moves the oldest entries to a
//! file that verifies on its own, and deletes them from the database, while every proof and
//! checkpoint about the entries that stay remains valid.
//!
//! - **Boundary.** Entries are archived through `B`: the last entry older than DATE, rounded
//!   down to a multiple of 16, the smallest subtree the tree stores. Every node a proof about a
//!   later entry needs is then either stored or hashed from entries still in the log. Stored
//!   tree nodes are never deleted.
//! - **The file.** JSON Lines. A later archive (one that does not start at entry 1) first
//!   has a line saying where it starts: `{"archived_before":{"seq":A,"hash":…,"frontier":[…]}}`,
//!   the hash of entry `A` and the roots of the complete subtrees that cover entries 1 to `A`,
//!   left to right. Then come entries `A+1` to `B`, as `hazina audit export` writes them. Then a
//!   signed checkpoint of the tree of size `B`, as `{"checkpoint":NOTE}`. Last comes the
//!   file's chain head. `hazina audit verify --export FILE --public-key KEY` re-chains and
//!   re-hashes the file and checks its checkpoint.
//! - **Retention.** A `--before` later than `HAZINA_AUDIT_RETENTION_MIN_DAYS` days ago is
//!   refused unless forced ([`check_retention`]); the `audit.archive` entry records the
//!   first and last archived sequence numbers, the file's SHA-256 and its checkpoint's root
//!   ([`record`]).
//! - **Nothing signed comes from the stored tree.** The file's checkpoint is of the root the
//!   archived entries produce, recomputed while they are written (every stored node they close
//!   must agree); the vault's replacement checkpoint is signed only as the signer would.
//! - **The anchor.** The database keeps `archived_seq = B` and a note signed with the
//!   checkpoint key that names `B`, entry `B`'s hash and the root of the tree of the first `B`
//!   entries (to which the stored subtrees over them must fold: they cannot be recomputed
//!   once the entries are gone). Chain verification starts there.
//!   Without the keyring nobody can move it. Deleting more entries, or putting an older
//!   anchor back, breaks the chain at the first missing entry.
//! - **Order.** The file is written and synced before anything is deleted. Entries are then
//!   deleted in bounded transactions (so reveals, whose audit entries wait for the head's
//!   lock, are held up briefly, however large the archive). Each transaction first checks
//!   that the log still holds what the file holds, deletes, and moves the anchor over what it
//!   deleted. The first one also makes the vault's last signed checkpoint one of the whole
//!   tree, which stays checkable after the deletion. The last one records `audit.archive`.
//!   A crash leaves a consistent log: every entry is still in the database, or it is in the
//!   file, and the anchor says where the database starts.

use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use diesel::prelude::*;
use sha2::{Digest, Sha256};

use super::chain::GENESIS;
use super::checkpoint;
use super::merkle::{self, Nodes, StoredNodes};
use super::store::EntryView;
use super::{Action, Actor, Event, RequestMeta};
use crate::crypto::Keyring;
use crate::db::schema::{audit_head as head, audit_log as log, audit_signer as signer_row};
use crate::db::{DbConn, DbError};

/// Archives end on a multiple of this: the smallest subtree the tree stores.
pub const ALIGN: i64 = 1 << merkle::STORED_FROM_LEVEL;

/// Entries deleted per transaction (a multiple of [`ALIGN`]): the audit writer waits for the
/// head's lock only this long, however large the archive.
const DELETE_CHUNK: i64 = 1 << 16;

/// Where the log in the database starts: after entry `seq`, whose hash is `hash` (entry 0 and
/// the genesis hash when nothing was archived).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub seq: i64,
    pub hash: Vec<u8>,
    /// The root of the tree of the first `seq` entries, as the archive computed it from the
    /// entries (absent in anchors written before it was recorded): the stored frontier of the
    /// archived entries must fold to it.
    pub root: Option<merkle::Hash>,
}

impl Anchor {
    pub fn genesis() -> Self {
        Anchor {
            seq: 0,
            hash: GENESIS.to_vec(),
            root: None,
        }
    }
}

const TAMPERED: DbError = DbError::Tampered("audit_head (archive anchor)");

/// The anchor note's body: origin, `archive`, the sequence number, entry `seq`'s hash and the
/// root of the tree of the first `seq` entries. Its second line is not a number, so it never
/// reads as a checkpoint.
fn body(origin: &str, seq: i64, hash: &[u8], root: Option<&merkle::Hash>) -> String {
    let root = root.map_or(String::new(), |r| format!("{}\n", B64.encode(r)));
    format!("{origin}\narchive\n{seq}\n{}\n{root}", B64.encode(hash))
}

/// An anchor body's origin, sequence number, hash and root (absent in the older form).
fn parse_body(text: &str) -> Option<(&str, i64, Vec<u8>, Option<merkle::Hash>)> {
    let mut lines = text.strip_suffix('\n')?.split('\n');
    let origin = lines.next()?;
    if lines.next()? != "archive" {
        return None;
    }
    let seq: i64 = lines.next()?.parse().ok()?;
    let hash = B64.decode(lines.next()?).ok()?;
    let root = match lines.next() {
        None => None,
        Some(line) => Some(B64.decode(line).ok()?.try_into().ok()?),
    };
    if lines.next().is_some() || hash.len() != 32 || seq <= 0 {
        return None;
    }
    Some((origin, seq, hash, root))
}

/// What a checked anchor note says: the signing version, the sequence number, the hash and
/// the root.
type Opened = (i32, i64, Vec<u8>, Option<merkle::Hash>);

/// The key name a signed note names in its first signature line.
fn signer_name(note: &str) -> Option<&str> {
    let (_, signatures) = note.split_once("\n\n")?;
    signatures
        .lines()
        .next()?
        .strip_prefix("\u{2014} ")?
        .split(' ')
        .next()
}

/// The master-key version whose checkpoint key signed the anchor `note`, and what it says.
fn open(conn: &mut DbConn, keyring: &Keyring, note: &str) -> Result<Option<Opened>, DbError> {
    let Some(name) = signer_name(note) else {
        return Ok(None);
    };
    let signers = checkpoint::signers(conn, keyring, name)?;
    Ok(signers.iter().find_map(|(version, signer)| {
        let (origin, seq, hash, root) = parse_body(signer.open(note)?)?;
        (origin == name).then_some((*version, seq, hash, root))
    }))
}

fn stored_anchor(conn: &mut DbConn) -> Result<(i64, Option<String>), DbError> {
    Ok(head::table
        .filter(head::id.eq(1))
        .select((head::archived_seq, head::archived_note))
        .first(conn)?)
}

/// The checked anchor: its note must verify under one of the log's keys and name the
/// sequence number beside it. Anything else is tampering.
pub fn anchor(conn: &mut DbConn, keyring: &Keyring) -> Result<Anchor, DbError> {
    match stored_anchor(conn)? {
        (0, None) => Ok(Anchor::genesis()),
        (seq, Some(note)) if seq > 0 => match open(conn, keyring, &note)? {
            Some((_, named, hash, root)) if named == seq => Ok(Anchor { seq, hash, root }),
            _ => Err(TAMPERED),
        },
        _ => Err(TAMPERED),
    }
}

/// The anchor as stored, unchecked (for an export, which the offline verifier checks against
/// signed checkpoints instead).
pub fn anchor_unchecked(conn: &mut DbConn) -> Result<Anchor, DbError> {
    match stored_anchor(conn)? {
        (seq, Some(note)) if seq > 0 => note
            .split_once("\n\n")
            .and_then(|(text, _)| parse_body(&format!("{text}\n")).map(|(_, _, h, r)| (h, r)))
            .map(|(hash, root)| Anchor { seq, hash, root })
            .ok_or(TAMPERED),
        _ => Ok(Anchor::genesis()),
    }
}

/// The roots of the complete subtrees that cover the first `size` leaves, left to right.
pub fn frontier(nodes: &mut impl Nodes, size: u64) -> Result<Vec<merkle::Hash>, DbError> {
    merkle::frontier_nodes(size)
        .map(|(level, index)| nodes.node(level, index))
        .collect()
}

/// The JSON line that says where a file of entries starts, when not at entry 1.
pub fn start_line(conn: &mut DbConn, anchor: &Anchor) -> Result<Option<Vec<u8>>, DbError> {
    if anchor.seq == 0 {
        return Ok(None);
    }
    let frontier = frontier(&mut StoredNodes::new(conn), anchor.seq as u64)?;
    let mut line = serde_json::to_vec(&serde_json::json!({
        "archived_before": {
            "seq": anchor.seq,
            "hash": hex::encode(&anchor.hash),
            "frontier": frontier.iter().map(hex::encode).collect::<Vec<_>>(),
        }
    }))
    .unwrap_or_default();
    line.push(b'\n');
    Ok(Some(line))
}

/// What an archive moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    pub first_seq: i64,
    pub last_seq: i64,
    /// The signed checkpoint of the tree of size `last_seq`, also in the file.
    pub checkpoint: String,
    /// The checkpoint's root, computed from the archived entries.
    pub root: merkle::Hash,
    /// The SHA-256 of the file as written.
    pub sha256: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{0} already exists; archive to a new file")]
    Exists(String),
    #[error("cannot write the archive file: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "the audit log no longer extends its last signed checkpoint ({0}); nothing was archived"
    )]
    Rewritten(String),
    #[error("no master-key version can sign checkpoints")]
    NoKey,
    #[error("the audit log changed while the archive was moved (another archive?): what was deleted is in the file, the rest is still in the database")]
    Changed,
    #[error("refusing to archive entries younger than HAZINA_AUDIT_RETENTION_MIN_DAYS ({days} days): --before must be {latest} or earlier, or pass --force; nothing was archived")]
    TooRecent { days: u32, latest: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for ArchiveError {
    fn from(e: diesel::result::Error) -> Self {
        ArchiveError::Db(e.into())
    }
}

impl From<checkpoint::SignError> for ArchiveError {
    fn from(e: checkpoint::SignError) -> Self {
        match e {
            checkpoint::SignError::Rewritten(problem) => ArchiveError::Rewritten(problem),
            checkpoint::SignError::NoKey => ArchiveError::NoKey,
            checkpoint::SignError::Db(e) => ArchiveError::Db(e),
        }
    }
}

/// Retention: an archive may only take entries older than `min_days` days before `now`
/// (microseconds), unless forced. `before` is the archive's bound, in microseconds.
pub fn check_retention(
    before: i64,
    now: i64,
    min_days: u32,
    force: bool,
) -> Result<(), ArchiveError> {
    let latest = now.saturating_sub(i64::from(min_days) * 86_400 * 1_000_000);
    if force || before <= latest {
        return Ok(());
    }
    Err(ArchiveError::TooRecent {
        days: min_days,
        latest: crate::clock::rfc3339_micros(latest),
    })
}

/// What the `audit.archive` entry records: the first and last archived sequence numbers, the
/// file's SHA-256 and its checkpoint's root (hex), in the entry's `reference`.
pub fn record(first_seq: i64, last_seq: i64, sha256: &[u8], root: &merkle::Hash) -> String {
    format!(
        "seq {first_seq}-{last_seq} sha256 {} root {}",
        hex::encode(sha256),
        hex::encode(root)
    )
}

/// Moves the entries older than `before` (microseconds since the epoch; through the last
/// multiple of 16) to `file`, then deletes them. `None` when there is nothing to archive
/// (no file is written then). The caller checks the retention minimum first
/// ([`check_retention`]). Nothing signed here comes from the stored tree: the file's
/// checkpoint is of the root the archived entries produce, and the vault's last checkpoint is
/// re-signed only as the signer would ([`checkpoint::prepare`]).
pub fn archive(
    conn: &mut DbConn,
    keyring: &Keyring,
    origin: &str,
    memory: &checkpoint::Memory,
    before: i64,
    file: &Path,
) -> Result<Option<Archived>, ArchiveError> {
    let start = anchor(conn, keyring)?;
    let (head_seq, tree_size): (i64, i64) = head::table
        .filter(head::id.eq(1))
        .select((head::seq, head::tree_size))
        .first(conn)?;
    let first_newer: Option<i64> = log::table
        .filter(log::seq.gt(start.seq))
        .filter(log::occurred_at.ge(before))
        .select(diesel::dsl::min(log::seq))
        .first(conn)?;
    let last_older = first_newer.map_or(head_seq, |s| s - 1).min(tree_size);
    let through = last_older / ALIGN * ALIGN;
    if through <= start.seq {
        return Ok(None);
    }

    // Sign nothing about a log that no longer extends what this log signed last.
    let signers = checkpoint::signers(conn, keyring, origin)?;
    checkpoint::prepare(conn, keyring, &signers, origin, memory)?;
    let signer = &signers.first().ok_or(ArchiveError::NoKey)?.1;

    let written = write_file(conn, &start, through, signer, file)?;

    let mut current = start.clone();
    for (n, (end, end_hash, end_root)) in written.ends.iter().enumerate() {
        let last_chunk = n + 1 == written.ends.len();
        conn.transaction(|tx| {
            diesel::update(head::table.filter(head::id.eq(1)))
                .set(head::seq.eq(head::seq))
                .execute(tx)?;
            if anchor(tx, keyring)? != current {
                return Err(ArchiveError::Changed);
            }
            let still: Option<Vec<u8>> = log::table
                .filter(log::seq.eq(*end))
                .select(log::hash)
                .first(tx)
                .optional()?;
            if still.as_deref() != Some(end_hash.as_slice()) {
                return Err(ArchiveError::Changed);
            }
            if n == 0 {
                // The signer checks the log against its last checkpoint before each new one;
                // one of a size inside the archive could no longer be checked. Replace it by
                // one of the whole tree (after checking it, as the signer would).
                diesel::update(signer_row::table.find(1))
                    .set(signer_row::id.eq(signer_row::id))
                    .execute(tx)?;
                let (size, root) = checkpoint::prepare(tx, keyring, &signers, origin, memory)?;
                diesel::update(signer_row::table.find(1))
                    .set(signer_row::last_checkpoint.eq(Some(signer.sign(size, &root))))
                    .execute(tx)?;
            }
            let deleted = diesel::delete(
                log::table
                    .filter(log::seq.gt(current.seq))
                    .filter(log::seq.le(*end)),
            )
            .execute(tx)?;
            if deleted as i64 != end - current.seq {
                return Err(ArchiveError::Changed);
            }
            let anchor_note = signer.sign_note(&body(origin, *end, end_hash, Some(end_root)));
            diesel::update(head::table.filter(head::id.eq(1)))
                .set((
                    head::archived_seq.eq(*end),
                    head::archived_note.eq(Some(anchor_note)),
                ))
                .execute(tx)?;
            if last_chunk {
                let mut event = Event::new(
                    crate::clock::Clock::System.now_micros(),
                    Actor::system(),
                    &RequestMeta::default(),
                    Action::AuditArchive,
                );
                // What moved where, in the column the schema has for a reference.
                event.reference = Some(record(
                    start.seq + 1,
                    through,
                    &written.sha256,
                    &written.root,
                ));
                super::chain::append(tx, &[&event])?;
            }
            Ok(())
        })?;
        current = Anchor {
            seq: *end,
            hash: end_hash.clone(),
            root: Some(*end_root),
        };
    }
    Ok(Some(Archived {
        first_seq: start.seq + 1,
        last_seq: through,
        checkpoint: written.checkpoint,
        root: written.root,
        sha256: written.sha256,
    }))
}

/// What [`write_file`] wrote.
struct Written {
    /// Where each deletion chunk ends: the entry, its hash and the root of the tree up to it
    /// (the last is `through`).
    ends: Vec<(i64, Vec<u8>, merkle::Hash)>,
    checkpoint: String,
    root: merkle::Hash,
    sha256: [u8; 32],
}

/// A writer that also hashes what it writes.
struct Hashing<W> {
    inner: W,
    sha: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes entries `start.seq + 1 ..= through` to a new file, synced, checking their chain and
/// recomputing the tree over them on the way (every stored node they close must agree), then
/// the signed checkpoint of the root they produce and the file's chain head.
fn write_file(
    conn: &mut DbConn,
    start: &Anchor,
    through: i64,
    signer: &checkpoint::Signer,
    file: &Path,
) -> Result<Written, ArchiveError> {
    let tampered = |_| ArchiveError::Db(DbError::Tampered("audit log (an entry to archive)"));
    let walk_start = super::verify::from_anchor(conn, start)?.map_err(tampered)?;
    let tree_size = u64::try_from(through).unwrap_or(0);
    let mut walk = super::verify::Walk::new(walk_start, tree_size);

    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => ArchiveError::Exists(file.display().to_string()),
            _ => ArchiveError::Io(e),
        })?;
    let mut w = Hashing {
        inner: std::io::BufWriter::new(out),
        sha: Sha256::new(),
    };
    if let Some(line) = start_line(conn, start)? {
        w.write_all(&line)?;
    }
    let mut ends = Vec::new();
    while walk.next_seq() <= through {
        let rows = super::verify::Walk::read(conn, walk.next_seq(), through)?;
        if rows.is_empty() {
            return Err(DbError::Tampered("audit log (an entry to archive is missing)").into());
        }
        let mut roots = Vec::new();
        walk.rows(conn, &rows, |f| {
            let seq = f.size() as i64;
            if seq == through || (seq - start.seq) % DELETE_CHUNK == 0 {
                roots.push((seq, f.root()));
            }
        })?
        .map_err(tampered)?;
        if let Some(b) = walk.finish() {
            return Err(tampered(b));
        }
        for (seq, root) in roots {
            let hash = rows
                .iter()
                .find(|r| r.seq == seq)
                .map(|r| r.hash.clone())
                .unwrap_or_default();
            ends.push((seq, hash, root));
        }
        for row in rows {
            serde_json::to_writer(&mut w, &EntryView::from(row)).map_err(std::io::Error::from)?;
            w.write_all(b"\n")?;
        }
    }
    let root = walk.frontier().root();
    let note = signer.sign(tree_size, &root);
    serde_json::to_writer(&mut w, &serde_json::json!({ "checkpoint": note }))
        .map_err(std::io::Error::from)?;
    w.write_all(b"\n")?;
    serde_json::to_writer(
        &mut w,
        &serde_json::json!({ "chain_head": { "seq": through, "hash": hex::encode(walk.prev_hash()) } }),
    )
    .map_err(std::io::Error::from)?;
    w.write_all(b"\n")?;
    let sha256: [u8; 32] = w.sha.finalize().into();
    let out = w.inner.into_inner().map_err(|e| e.into_error())?;
    out.sync_all()?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(Written {
        ends,
        checkpoint: note,
        root,
        sha256,
    })
}

/// Key rotation: re-signs the anchor under `target` (after checking it under its own key), so
/// the version that signed it can be retired. A tampered anchor is left as it is.
pub fn resign_anchor(conn: &mut DbConn, keyring: &Keyring, target: i32) -> Result<(), DbError> {
    let (seq, Some(note)) = stored_anchor(conn)? else {
        return Ok(());
    };
    let Some((version, named, hash, root)) = open(conn, keyring, &note)? else {
        return Ok(());
    };
    let Some(name) = signer_name(&note) else {
        return Ok(());
    };
    if version == target || named != seq {
        return Ok(());
    }
    let Some(signer) = u32::try_from(target)
        .ok()
        .and_then(|v| checkpoint::Signer::new(keyring, v, name))
    else {
        return Ok(());
    };
    diesel::update(head::table.filter(head::id.eq(1)))
        .set(head::archived_note.eq(Some(signer.sign_note(&body(
            name,
            seq,
            &hash,
            root.as_ref(),
        )))))
        .execute(conn)?;
    Ok(())
}

/// Whether the anchor is signed under `version` (which then cannot be retired).
pub fn signed_under(conn: &mut DbConn, keyring: &Keyring, version: i32) -> Result<bool, DbError> {
    let (_, Some(note)) = stored_anchor(conn)? else {
        return Ok(false);
    };
    Ok(open(conn, keyring, &note)?.is_some_and(|(v, ..)| v == version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_anchor_body_never_reads_as_a_checkpoint_and_round_trips() {
        let text = body("example.com/log", 32, &[7u8; 32], Some(&[9u8; 32]));
        assert!(checkpoint::parse_body(&text).is_none());
        let (origin, seq, hash, root) = parse_body(&text).unwrap();
        assert_eq!((origin, seq, hash), ("example.com/log", 32, vec![7u8; 32]));
        assert_eq!(root, Some([9u8; 32]));
        // The form from before the root was recorded still reads.
        let older = body("example.com/log", 32, &[7u8; 32], None);
        assert_eq!(parse_body(&older).unwrap().3, None);
        assert!(parse_body("example.com/log\narchive\n0\nAAAA\n").is_none());
        assert!(parse_body("example.com/log\n32\nroot\n").is_none());
    }

    #[test]
    fn the_retention_minimum_holds_unless_forced() {
        const DAY: i64 = 86_400 * 1_000_000;
        let now = 100 * DAY;
        assert!(check_retention(now - 30 * DAY, now, 30, false).is_ok());
        let refused = check_retention(now - 30 * DAY + 1, now, 30, false).unwrap_err();
        assert!(matches!(refused, ArchiveError::TooRecent { days: 30, .. }));
        assert!(!refused.to_string().contains('\n'));
        assert!(check_retention(now + DAY, now, 30, true).is_ok());
        assert!(check_retention(now, now, 0, false).is_ok());
    }

    #[test]
    fn the_frontier_is_the_complete_subtrees_of_the_size_left_to_right() {
        struct Named;
        impl Nodes for Named {
            fn node(&mut self, level: u32, index: u64) -> Result<merkle::Hash, DbError> {
                let mut h = [0u8; 32];
                h[0] = level as u8;
                h[1] = index as u8;
                Ok(h)
            }
        }
        let got: Vec<(u8, u8)> = frontier(&mut Named, 48 + 8)
            .unwrap()
            .iter()
            .map(|h| (h[0], h[1]))
            .collect();
        // 56 = 32 + 16 + 8: [0, 32), [32, 48), [48, 56).
        assert_eq!(got, vec![(5, 0), (4, 2), (3, 6)]);
        assert!(frontier(&mut Named, 0).unwrap().is_empty());
    }
}
