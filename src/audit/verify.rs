//! Verification that believes nothing the database says about itself (SPEC §10, §14).
//!
//! ## Guarantees
//! - **The entries decide.** A walk reads the entries after the archive anchor in sequence
//!   order, in bounded batches, checks the hash chain, and recomputes the RFC 6962 tree from
//!   the entries' hashes as it goes, keeping only the frontier (the roots of the complete
//!   subtrees so far, one per set bit of the size: memory stays O(log n) however long the log).
//!   Every stored node of `audit_tree` is compared as the walk closes it: a node that
//!   disagrees (or is missing) fails the walk, naming the first entry it covers, the finest
//!   the tree can say (it stores no subtree smaller than 16 entries).
//! - **Checkpoints against recomputed roots.** A checkpoint given to [`with_checkpoints`] is
//!   compared with the root the entries produce at its size, never with stored nodes.
//! - **Where the walk starts.** At the archive anchor: entry `B`'s hash comes from the anchor
//!   note, signed with a keyring-derived key; the frontier of the archived entries comes from
//!   the stored tree and, for anchors that carry it, must fold to the root the note names. An
//!   anchor without that root (written before it was recorded) leaves the frontier unchecked
//!   by the walk alone, but a forged frontier cannot make any checkpoint past `B` verify: its
//!   root commits to the frontier. From a signed checkpoint ([`from_checkpoint`]), the stored
//!   frontier must fold to the signed root and the last entry's own hash must be its last
//!   leaf, so the entries after it chain onto exactly what was signed.
//! - **One snapshot.** A walk stops at the head read at its start: a log that grows meanwhile
//!   is never reported as tampered.

use diesel::prelude::*;

use super::archive::{self, Anchor};
use super::chain::AuditRow;
use super::checkpoint::{self, Verdict};
pub use super::merkle::Frontier;
use super::merkle::{self, Hash, Nodes, StoredNodes, STORED_FROM_LEVEL};
use crate::crypto::Keyring;
use crate::db::schema::{audit_head as head, audit_log as log, audit_tree as tree};
use crate::db::{DbConn, DbError};

/// Entries read per batch.
pub const BATCH: i64 = 10_000;

/// The verifier's answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verification {
    pub ok: bool,
    /// Entries that checked out before the first problem (all of them when `ok`).
    pub checked: i64,
    pub first_bad_seq: Option<i64>,
    /// What is wrong, in plain words, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// A problem a walk found: the first entry it concerns, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bad {
    pub seq: i64,
    pub problem: String,
}

fn bad(seq: i64, problem: String) -> Bad {
    Bad { seq, problem }
}

// ----- stored nodes, read a batch at a time ------------------------------------------

/// The stored nodes (levels [`STORED_FROM_LEVEL`] and up) that close while the tree grows
/// from `lo` to `hi` leaves, in the order a walk closes them: by the leaf they end at, then
/// by level.
struct StoredRun {
    nodes: Vec<(u64, u32, u64, Vec<u8>)>,
    next: usize,
}

impl StoredRun {
    fn load(conn: &mut DbConn, lo: u64, hi: u64) -> Result<Self, DbError> {
        let mut query = tree::table
            .select((tree::level, tree::idx, tree::hash))
            .into_boxed();
        let mut any = false;
        for level in STORED_FROM_LEVEL..63 {
            // Node (level, idx) closes when the tree reaches (idx + 1)·2^level leaves.
            let (first, end) = (lo >> level, hi >> level);
            if end == 0 {
                break;
            }
            if end > first {
                query = query.or_filter(
                    tree::level
                        .eq(level as i32)
                        .and(tree::idx.ge(first as i64))
                        .and(tree::idx.lt(end as i64)),
                );
                any = true;
            }
        }
        let mut nodes = Vec::new();
        if any {
            let rows: Vec<(i32, i64, Vec<u8>)> = query.load(conn)?;
            nodes.reserve(rows.len());
            for (level, idx, hash) in rows {
                let (Ok(level), Ok(idx)) = (u32::try_from(level), u64::try_from(idx)) else {
                    continue;
                };
                nodes.push(((idx + 1) << level, level, idx, hash));
            }
            nodes.sort_unstable_by_key(|(end, level, ..)| (*end, *level));
        }
        Ok(StoredRun { nodes, next: 0 })
    }

    /// Whether the stored node (`level`, `idx`) is there and holds `hash`.
    fn matches(&mut self, level: u32, idx: u64, hash: &Hash) -> bool {
        match self.nodes.get(self.next) {
            Some((_, l, i, stored)) if *l == level && *i == idx => {
                self.next += 1;
                stored.as_slice() == hash.as_slice()
            }
            // Missing: a node of a complete subtree the tree covers is always stored.
            _ => false,
        }
    }
}

// ----- the walk ---------------------------------------------------------------------

/// Where a walk starts: after entry `seq` (0 for the whole log), whose hash is `hash`, with
/// the tree's frontier over the first `seq` leaves.
#[derive(Debug, Clone)]
pub struct Start {
    pub seq: i64,
    pub hash: Vec<u8>,
    pub frontier: Frontier,
}

/// A walk over entries in sequence order: chain, recomputed tree, stored nodes.
pub struct Walk {
    first: i64,
    expected: i64,
    prev: Vec<u8>,
    prev_self_consistent: bool,
    frontier: Frontier,
    /// Stored nodes are compared up to this many leaves (the tree's size at the start).
    tree_size: u64,
    checked: i64,
    /// A stored node that disagreed at the last entry: reported unless the next entry shows
    /// more precisely which entry was rewritten (its link names the previous one).
    tree_bad: Option<Bad>,
    /// After a problem: only the tree is still computed (for checkpoint verdicts).
    tree_only: bool,
}

impl Walk {
    pub fn new(start: Start, tree_size: u64) -> Self {
        Walk {
            first: start.seq + 1,
            expected: start.seq + 1,
            prev: start.hash,
            prev_self_consistent: true,
            frontier: start.frontier,
            tree_size,
            checked: 0,
            tree_bad: None,
            tree_only: false,
        }
    }

    /// The next sequence number the walk expects.
    pub fn next_seq(&self) -> i64 {
        self.expected
    }

    /// The hash of the last entry walked (the start's when none was).
    pub fn prev_hash(&self) -> &[u8] {
        &self.prev
    }

    pub fn frontier(&self) -> &Frontier {
        &self.frontier
    }

    /// Entries that checked out.
    pub fn checked(&self) -> i64 {
        self.checked
    }

    /// Reads up to `limit` entries from the next one through `last`.
    pub fn read(conn: &mut DbConn, from: i64, last: i64) -> Result<Vec<AuditRow>, DbError> {
        Ok(log::table
            .filter(log::seq.ge(from))
            .filter(log::seq.le(last))
            .order(log::seq.asc())
            .limit(BATCH)
            .select(AuditRow::as_select())
            .load(conn)?)
    }

    /// Walks `rows` (the next entries, in sequence order, as read); `leaf(frontier)` sees the
    /// tree after each entry. The first problem ends the checks: from then on only a gap
    /// stops the walk (see [`Walk::tree_only`]).
    pub fn rows(
        &mut self,
        conn: &mut DbConn,
        rows: &[AuditRow],
        mut leaf: impl FnMut(&Frontier),
    ) -> Result<Result<(), Bad>, DbError> {
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return Ok(Ok(()));
        };
        let lo = self.frontier.size();
        let hi = u64::try_from(last.seq).unwrap_or(0).min(self.tree_size);
        let mut stored = if self.tree_only || hi <= lo || first.seq != self.expected {
            StoredRun {
                nodes: Vec::new(),
                next: 0,
            }
        } else {
            StoredRun::load(conn, lo, hi)?
        };
        for row in rows {
            if row.seq != self.expected {
                // A gap: the expected entry was deleted (or renumbered away).
                let gap = bad(
                    self.expected,
                    format!("entry {} is missing (deleted or renumbered)", self.expected),
                );
                return Ok(Err(self.tree_bad.take().unwrap_or(gap)));
            }
            if !self.tree_only {
                if let Err(b) = self.link(row) {
                    // A link that names the entry a disagreeing node ended at is the more
                    // precise answer; anything else came later than the node's entries.
                    return Ok(Err(match self.tree_bad.take() {
                        Some(tree) if b.seq != row.seq - 1 => tree,
                        _ => b,
                    }));
                }
                if let Some(b) = self.tree_bad.take() {
                    return Ok(Err(b));
                }
            }
            let (tree_size, first_seq, tree_only) = (self.tree_size, self.first, self.tree_only);
            let compared = self.frontier.push(&row.hash, |level, idx, hash| {
                if tree_only || level < STORED_FROM_LEVEL || (idx + 1) << level > tree_size {
                    return Ok(());
                }
                if stored.matches(level, idx, hash) {
                    return Ok(());
                }
                let from = ((idx << level) as i64 + 1).max(first_seq);
                let to = ((idx + 1) << level) as i64;
                Err(bad(
                    from,
                    format!(
                        "the stored Merkle tree disagrees with what entries {from} to {to} \
                         produce: one of them was rewritten (and every later hash with it), \
                         or the stored tree was"
                    ),
                ))
            });
            if let Err(b) = compared {
                self.tree_bad.get_or_insert(b);
            }
            self.prev.clear();
            self.prev.extend_from_slice(&row.hash);
            self.expected += 1;
            if !self.tree_only && self.tree_bad.is_none() {
                self.checked += 1;
            }
            leaf(&self.frontier);
        }
        if !self.tree_only && self.tree_bad.is_none() {
            if let Some(b) = check_subjects(conn, rows)? {
                return Ok(Err(b));
            }
        }
        Ok(Ok(()))
    }

    /// The chain check of one entry (SPEC §4).
    fn link(&mut self, row: &AuditRow) -> Result<(), Bad> {
        let self_consistent = row.compute_hash().as_slice() == row.hash.as_slice();
        if row.prev_hash != self.prev {
            // The link is broken. If this entry is intact, the previous one was rewritten
            // (content and hash); otherwise this one was edited.
            if self_consistent && self.prev_self_consistent && row.seq > self.first {
                return Err(bad(
                    row.seq - 1,
                    format!(
                        "entry {} was rewritten: the next entry does not link to it",
                        row.seq - 1
                    ),
                ));
            }
            return Err(bad(
                row.seq,
                format!("entry {} does not link to the entry before it", row.seq),
            ));
        }
        if !self_consistent {
            return Err(bad(
                row.seq,
                format!("entry {} does not match its hash (edited)", row.seq),
            ));
        }
        self.prev_self_consistent = self_consistent;
        Ok(())
    }

    /// The problem a stored node showed at the last entry walked, if any.
    pub fn finish(&mut self) -> Option<Bad> {
        self.tree_bad.take()
    }

    /// Where the walk ended, as a start for another walk.
    pub fn into_start(self) -> Start {
        Start {
            seq: self.expected - 1,
            hash: self.prev,
            frontier: self.frontier,
        }
    }

    /// From now on only the tree is computed: no chain or stored-node checks.
    pub fn tree_only(&mut self) {
        self.tree_only = true;
        self.tree_bad = None;
    }
}

// ----- where walks start ------------------------------------------------------------

/// The frontier over the first `size` leaves, from the stored tree and the entries
/// (`None` when a node is missing or malformed).
/// The row-change index (`audit_subjects`, which the hot path trusts to say which change of a
/// row is the latest, SPEC §14) must hold exactly the subjects the entries' hashes cover: an
/// index row deleted (to make an older row look current), planted or moved is named by the
/// first entry it disagrees with.
fn check_subjects(conn: &mut DbConn, rows: &[AuditRow]) -> Result<Option<Bad>, DbError> {
    use crate::db::schema::audit_subjects as subj;
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Ok(None);
    };
    let mut stored: Vec<(i64, String)> = subj::table
        .filter(subj::seq.ge(first.seq))
        .filter(subj::seq.le(last.seq))
        .select((subj::seq, subj::subject))
        .load(conn)?;
    stored.sort_unstable();
    let mut expected: Vec<(i64, String)> = rows
        .iter()
        .flat_map(|r| {
            r.subjects
                .iter()
                .flat_map(|s| s.split(' ').filter(|x| !x.is_empty()))
                .map(move |x| (r.seq, x.to_owned()))
        })
        .collect();
    expected.sort_unstable();
    if stored == expected {
        return Ok(None);
    }
    let differs = stored
        .iter()
        .zip(expected.iter())
        .find(|(a, b)| a != b)
        .map(|(a, b)| a.0.min(b.0))
        .or_else(|| match stored.len().cmp(&expected.len()) {
            std::cmp::Ordering::Greater => stored.get(expected.len()).map(|a| a.0),
            _ => expected.get(stored.len()).map(|b| b.0),
        })
        .unwrap_or(first.seq);
    Ok(Some(bad(
        differs,
        format!(
            "the row-change index (audit_subjects) disagrees with entry {differs}: an index \
             row was deleted, planted or moved, so an older row could pass for the latest"
        ),
    )))
}

fn stored_frontier(conn: &mut DbConn, size: u64) -> Result<Option<Frontier>, DbError> {
    match archive::frontier(&mut StoredNodes::new(conn), size) {
        Ok(roots) => Ok(Frontier::new(size, roots)),
        Err(DbError::Query(diesel::result::Error::NotFound) | DbError::Tampered(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The start at the checked archive anchor (the log's first entry when nothing was
/// archived).
pub fn from_anchor(conn: &mut DbConn, anchor: &Anchor) -> Result<Result<Start, Bad>, DbError> {
    let at = anchor.seq + 1;
    let Ok(size) = u64::try_from(anchor.seq) else {
        return Ok(Err(bad(at, "the archive anchor is malformed".into())));
    };
    let Some(frontier) = stored_frontier(conn, size)? else {
        return Ok(Err(bad(
            at,
            format!("the stored Merkle tree lacks the subtrees of the {size} archived entries"),
        )));
    };
    if anchor.root.is_some_and(|root| root != frontier.root()) {
        return Ok(Err(bad(
            at,
            format!(
                "the stored Merkle tree over the {size} archived entries does not match the \
                 signed archive anchor"
            ),
        )));
    }
    Ok(Ok(Start {
        seq: anchor.seq,
        hash: anchor.hash.clone(),
        frontier,
    }))
}

/// The start at a signed checkpoint of `size` leaves and root `root`, if the log still
/// extends it: the stored frontier folds to `root`, and entry `size`'s own hash is its last
/// leaf (so the entries after it chain onto what was signed). The problem otherwise.
pub fn from_checkpoint(
    conn: &mut DbConn,
    anchor: &Anchor,
    size: u64,
    root: &Hash,
) -> Result<Result<Start, String>, DbError> {
    let rewritten = || {
        format!(
            "the log no longer extends this checkpoint: its first {size} entries were rewritten"
        )
    };
    let seq = i64::try_from(size).unwrap_or(i64::MAX);
    if seq < anchor.seq {
        return Ok(Err(archived_problem(anchor.seq)));
    }
    let Some(frontier) = stored_frontier(conn, size)? else {
        return Ok(Err(rewritten()));
    };
    if frontier.root() != *root {
        return Ok(Err(rewritten()));
    }
    if seq == anchor.seq {
        // The entries are gone; the anchor's own signed note names entry `seq`'s hash.
        if anchor.root.is_some_and(|r| r != *root) {
            return Ok(Err(rewritten()));
        }
        return Ok(Ok(Start {
            seq,
            hash: anchor.hash.clone(),
            frontier,
        }));
    }
    let hash: Option<Vec<u8>> = log::table
        .filter(log::seq.eq(seq))
        .select(log::hash)
        .first(conn)
        .optional()?;
    let Some(hash) = hash else {
        return Ok(Err(rewritten()));
    };
    // The last frontier node, rebuilt up its right edge from entry `seq`'s leaf and the left
    // siblings on the way (complete subtrees: stored, or hashed from entries still held).
    let level = size.trailing_zeros();
    let mut rebuilt = merkle::leaf_hash(&hash);
    let mut nodes = StoredNodes::new(conn);
    let mut index = size - 1;
    for l in 0..level {
        let left = match nodes.node(l, index - 1) {
            Ok(h) => h,
            Err(DbError::Archived(_)) => return Ok(Err(archived_problem(anchor.seq))),
            Err(DbError::Query(diesel::result::Error::NotFound) | DbError::Tampered(_)) => {
                return Ok(Err(rewritten()))
            }
            Err(e) => return Err(e),
        };
        rebuilt = merkle::node_hash(&left, &rebuilt);
        index /= 2;
    }
    if frontier.roots().last() != Some(&rebuilt) {
        return Ok(Err(rewritten()));
    }
    Ok(Ok(Start {
        seq,
        hash,
        frontier,
    }))
}

fn archived_problem(through: i64) -> String {
    format!("this checkpoint lies inside the archived part of the log (entries 1 to {through}): verify it against the archive file")
}

// ----- whole-log verification --------------------------------------------------------

/// The head and the tree's size, read in one statement (so they belong together).
fn head_and_tree(conn: &mut DbConn) -> Result<(i64, Vec<u8>, u64), DbError> {
    let (seq, hash, size) = head::table
        .filter(head::id.eq(1))
        .select((head::seq, head::hash, head::tree_size))
        .first::<(i64, Vec<u8>, i64)>(conn)?;
    Ok((seq, hash, u64::try_from(size).unwrap_or(0)))
}

/// Walks the chain from the anchor up to the head read at the start and names the first
/// entry that was edited, deleted, inserted or moved, or that the stored tree disagrees
/// with; then checks the head.
pub fn verify(conn: &mut DbConn, keyring: &Keyring) -> Result<Verification, DbError> {
    run(conn, keyring, &[]).map(|(v, _)| v)
}

/// [`verify`], and each signed checkpoint in `notes` checked against the roots the entries
/// produce: its signature under one of the log's keys, its origin, and that the log still
/// extends it.
pub fn with_checkpoints(
    conn: &mut DbConn,
    keyring: &Keyring,
    origin: &str,
    notes: &[String],
) -> Result<(Verification, Vec<Verdict>), DbError> {
    let signers = checkpoint::signers(conn, keyring, origin)?;
    let claims: Vec<_> = notes
        .iter()
        .map(|n| checkpoint::claim(&signers, origin, n))
        .collect();
    run(conn, keyring, &claims)
}

fn verdict(size: u64, problem: Option<String>) -> Verdict {
    Verdict {
        tree_size: Some(size),
        ok: problem.is_none(),
        problem,
    }
}

type Pending = std::iter::Peekable<std::vec::IntoIter<(u64, Hash, usize)>>;

/// The verdicts on the pending checkpoints of exactly the frontier's size.
fn compare(pending: &mut Pending, frontier: &Frontier, verdicts: &mut [Option<Verdict>]) {
    while let Some((size, root, i)) = pending.next_if(|(s, ..)| *s == frontier.size()) {
        let problem = (frontier.root() != root).then(|| {
            format!("the log no longer extends this checkpoint: its first {size} entries were rewritten")
        });
        verdicts[i] = Some(verdict(size, problem));
    }
}

/// The walk behind [`verify`] and [`with_checkpoints`]: `claims` are checkpoints whose
/// signature and origin were checked (size and root), or the verdict that they were not.
pub fn run(
    conn: &mut DbConn,
    keyring: &Keyring,
    claims: &[Result<(u64, Hash), Verdict>],
) -> Result<(Verification, Vec<Verdict>), DbError> {
    let mut verdicts: Vec<Option<Verdict>> =
        claims.iter().map(|c| c.as_ref().err().cloned()).collect();
    // The claims still to compare, by size.
    let mut sorted: Vec<(u64, Hash, usize)> = claims
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.as_ref().ok().map(|(size, root)| (*size, *root, i)))
        .collect();
    sorted.sort_unstable_by_key(|(size, ..)| *size);
    let done = |verdicts: Vec<Option<Verdict>>| verdicts.into_iter().flatten().collect::<Vec<_>>();
    let failed = |b: Bad, checked: i64| Verification {
        ok: false,
        checked,
        first_bad_seq: Some(b.seq),
        problem: Some(b.problem),
    };

    let anchor = match archive::anchor(conn, keyring) {
        Ok(anchor) => anchor,
        Err(DbError::Tampered(_)) => {
            let stored = archive::anchor_unchecked(conn).map_or(0, |a| a.seq);
            let problem = "the archive anchor does not verify under this log's keys";
            for (size, _, i) in sorted {
                verdicts[i] = Some(verdict(size, Some(problem.into())));
            }
            return Ok((failed(bad(stored + 1, problem.into()), 0), done(verdicts)));
        }
        Err(e) => return Err(e),
    };
    let (head_seq, head_hash, tree_size) = head_and_tree(conn)?;
    let have = u64::try_from(head_seq).unwrap_or(0);
    let start_size = u64::try_from(anchor.seq).unwrap_or(0);
    sorted.retain(|(size, _, i)| {
        let problem = if *size > have {
            format!("the log holds {have} entries, fewer than the checkpoint's {size}: entries after {have} were removed or the database was restored from an older copy")
        } else if *size < start_size {
            archived_problem(anchor.seq)
        } else {
            return true;
        };
        verdicts[*i] = Some(verdict(*size, Some(problem)));
        false
    });
    let mut pending: Pending = sorted.into_iter().peekable();

    let mut walk = match from_anchor(conn, &anchor)? {
        Ok(start) => Walk::new(start, tree_size),
        Err(b) => {
            for (size, _, i) in pending {
                verdicts[i] = Some(verdict(size, Some(b.problem.clone())));
            }
            return Ok((failed(b, 0), done(verdicts)));
        }
    };
    compare(&mut pending, walk.frontier(), &mut verdicts);
    let mut first_bad: Option<(Bad, i64)> = None;
    loop {
        if first_bad.is_some() && pending.peek().is_none() {
            break;
        }
        let rows = Walk::read(conn, walk.next_seq(), head_seq)?;
        let n = rows.len() as i64;
        let walked = walk.rows(conn, &rows, |f| compare(&mut pending, f, &mut verdicts))?;
        if let Err(b) = walked {
            if first_bad.is_some() {
                break; // a gap while only the tree was computed
            }
            first_bad = Some((b, walk.checked()));
            // Only the tree from here (checkpoint verdicts), from the entry the walk stopped at.
            walk.tree_only();
            continue;
        }
        if n < BATCH {
            break;
        }
    }
    if first_bad.is_none() {
        if let Some(b) = walk.finish() {
            first_bad = Some((b, walk.checked()));
        }
    }
    // Checkpoints the walk could not reach: an entry under them is missing.
    let missing = walk.next_seq();
    for (size, _, i) in pending {
        verdicts[i] = Some(verdict(
            size,
            Some(format!(
                "the log no longer extends this checkpoint: entry {missing} is missing"
            )),
        ));
    }
    let verdicts = done(verdicts);
    if let Some((b, checked)) = first_bad {
        return Ok((failed(b, checked), verdicts));
    }
    let last = walk.next_seq() - 1;
    let checked = walk.checked();
    if head_seq > last {
        // The head covers entries that are gone: the tail was truncated.
        let b = bad(
            last + 1,
            format!(
                "entry {} is missing: the chain head names entries that are gone (truncated)",
                last + 1
            ),
        );
        return Ok((failed(b, checked), verdicts));
    }
    if head_hash != walk.prev_hash() {
        let seq = head_seq.max(1);
        let b = bad(seq, format!("the chain head does not match entry {seq}"));
        return Ok((failed(b, checked), verdicts));
    }
    Ok((
        Verification {
            ok: true,
            checked,
            first_bad_seq: None,
            problem: None,
        },
        verdicts,
    ))
}
