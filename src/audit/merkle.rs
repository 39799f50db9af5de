//! The RFC 6962 Merkle tree over the audit log (SPEC §10).
//!
//! Leaf *i* (0-based; entry `seq` = *i* + 1) is the entry's 32-byte chain hash, hashed as an
//! RFC 6962 leaf, `SHA-256(0x00 ‖ hash)`; interior nodes are `SHA-256(0x01 ‖ left ‖ right)`.
//! Node (`level`, `idx`) covers leaves `[idx·2^level, (idx+1)·2^level)`. Every **complete**
//! subtree of level [`STORED_FROM_LEVEL`] or more is stored once it exists, in the same
//! transaction as the entries that close it (group commit stays one fsync); smaller ones
//! (fewer than 16 leaves) are hashed from the entries' stored hashes when needed, one range
//! read of at most 15 rows. Appending writes about one node per eight entries. Any tree head,
//! inclusion proof or consistency proof at any size is then a fold of O(log n) nodes: RFC 6962
//! splits every range at the largest power of two below its size, so each left part is a
//! complete subtree. The number of leaves the tree covers is kept in `audit_head.tree_size`.
//!
//! The proof functions follow RFC 6962 §2.1.1 (`PATH`) and §2.1.2 (`PROOF`/`SUBPROOF`)
//! literally; the tests check them against an independent implementation.

use std::collections::HashMap;

use diesel::prelude::*;
use sha2::{Digest, Sha256};

use crate::db::schema::{audit_log as log, audit_tree as tree};
use crate::db::{DbConn, DbError};

pub type Hash = [u8; 32];

/// The lowest level whose complete nodes are stored (subtrees of 16 leaves and up).
pub const STORED_FROM_LEVEL: u32 = 4;

/// Set only by `scripts/bench.sh` (`HAZINA_BENCH_SKIP_AUDIT_TREE=1`, read by `hazina serve`),
/// to measure what extending the tree costs: while set, appends leave the tree behind the
/// log. Nothing is lost: the next append made without it (or the next start-up) catches the
/// tree up, and checkpoints meanwhile cover only the entries the tree holds.
static SKIP_FOR_BENCHMARK: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

pub fn skip_for_benchmark() {
    SKIP_FOR_BENCHMARK.store(true, std::sync::atomic::Ordering::Relaxed);
}

pub fn skipped_for_benchmark() -> bool {
    SKIP_FOR_BENCHMARK.load(std::sync::atomic::Ordering::Relaxed)
}

/// `SHA-256(0x00 ‖ entry hash)`.
pub fn leaf_hash(entry_hash: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry_hash);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two strictly below `n` (`n` ≥ 2).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The complete subtrees that cover the first `size` leaves, left to right, as
/// (`level`, `index`): one per set bit of `size`, largest first.
pub fn frontier_nodes(size: u64) -> impl Iterator<Item = (u32, u64)> {
    let mut start = 0u64;
    (0..64u32).rev().filter_map(move |level| {
        let width = 1u64 << level;
        (size & width != 0).then(|| {
            let node = (level, start >> level);
            start += width;
            node
        })
    })
}

/// Where the hashes of complete subtrees come from.
pub trait Nodes {
    /// The hash of node (`level`, `index`), which must be complete.
    fn node(&mut self, level: u32, index: u64) -> Result<Hash, DbError>;
}

/// `MTH(D[start : start + size])`, `size` ≥ 1.
pub fn subtree(nodes: &mut impl Nodes, start: u64, size: u64) -> Result<Hash, DbError> {
    if size.is_power_of_two() && start.is_multiple_of(size) {
        return nodes.node(size.trailing_zeros(), start / size);
    }
    let k = split(size);
    let left = subtree(nodes, start, k)?;
    let right = subtree(nodes, start + k, size - k)?;
    Ok(node_hash(&left, &right))
}

/// The root of the tree of the first `size` leaves (`SHA-256("")` for the empty tree).
pub fn root(nodes: &mut impl Nodes, size: u64) -> Result<Hash, DbError> {
    if size == 0 {
        return Ok(Sha256::digest([]).into());
    }
    subtree(nodes, 0, size)
}

/// RFC 6962 `PATH(index, D[size])`: the audit path of leaf `index` in the tree of `size`.
pub fn inclusion_path(nodes: &mut impl Nodes, index: u64, size: u64) -> Result<Vec<Hash>, DbError> {
    fn path(
        nodes: &mut impl Nodes,
        m: u64,
        start: u64,
        n: u64,
        out: &mut Vec<Hash>,
    ) -> Result<(), DbError> {
        if n == 1 {
            return Ok(());
        }
        let k = split(n);
        if m < k {
            path(nodes, m, start, k, out)?;
            out.push(subtree(nodes, start + k, n - k)?);
        } else {
            path(nodes, m - k, start + k, n - k, out)?;
            out.push(subtree(nodes, start, k)?);
        }
        Ok(())
    }
    let mut out = Vec::new();
    if index < size {
        path(nodes, index, 0, size, &mut out)?;
    }
    Ok(out)
}

/// RFC 6962 `PROOF(first, D[second])`: the consistency proof between the trees of `first`
/// and `second` leaves (empty when they are equal).
pub fn consistency_proof(
    nodes: &mut impl Nodes,
    first: u64,
    second: u64,
) -> Result<Vec<Hash>, DbError> {
    fn subproof(
        nodes: &mut impl Nodes,
        m: u64,
        start: u64,
        n: u64,
        complete: bool,
        out: &mut Vec<Hash>,
    ) -> Result<(), DbError> {
        if m == n {
            if !complete {
                out.push(subtree(nodes, start, n)?);
            }
            return Ok(());
        }
        let k = split(n);
        if m <= k {
            subproof(nodes, m, start, k, complete, out)?;
            out.push(subtree(nodes, start + k, n - k)?);
        } else {
            subproof(nodes, m - k, start + k, n - k, false, out)?;
            out.push(subtree(nodes, start, k)?);
        }
        Ok(())
    }
    let mut out = Vec::new();
    if 0 < first && first < second {
        subproof(nodes, first, 0, second, true, &mut out)?;
    }
    Ok(out)
}

/// The stored tree, read through the caller's connection (and so its transaction), with the
/// nodes written or computed in this transaction remembered.
pub struct StoredNodes<'a> {
    conn: &'a mut DbConn,
    known: HashMap<(u32, u64), Hash>,
}

impl<'a> StoredNodes<'a> {
    pub fn new(conn: &'a mut DbConn) -> Self {
        StoredNodes {
            conn,
            known: HashMap::new(),
        }
    }

    fn put(&mut self, level: u32, index: u64, hash: Hash) -> Result<(), DbError> {
        if level >= STORED_FROM_LEVEL {
            diesel::insert_into(tree::table)
                .values((
                    tree::level.eq(level as i32),
                    tree::idx.eq(index as i64),
                    tree::hash.eq(hash.to_vec()),
                ))
                .execute(self.conn)?;
        }
        self.known.insert((level, index), hash);
        Ok(())
    }

    /// A node below the stored levels, hashed from its entries' hashes (one range read).
    fn hash_of_entries(&mut self, level: u32, index: u64) -> Result<Hash, DbError> {
        let width = 1u64 << level;
        let first = (index * width) as i64 + 1;
        let rows: Vec<(i64, Vec<u8>)> = log::table
            .filter(log::seq.ge(first))
            .filter(log::seq.lt(first + width as i64))
            .order(log::seq.asc())
            .select((log::seq, log::hash))
            .load(self.conn)?;
        if rows.len() as u64 != width
            || rows
                .iter()
                .zip(first..)
                .any(|((seq, _), want)| *seq != want)
        {
            // Entries moved out by `hazina audit archive` are gone by design, not tampering.
            let archived: i64 = crate::db::schema::audit_head::table
                .filter(crate::db::schema::audit_head::id.eq(1))
                .select(crate::db::schema::audit_head::archived_seq)
                .first(self.conn)?;
            if first + width as i64 - 1 <= archived {
                return Err(DbError::Archived(archived));
            }
            return Err(DbError::Tampered(
                "audit log (an entry under the tree is missing)",
            ));
        }
        let mut hashes: Vec<Hash> = rows.iter().map(|(_, h)| leaf_hash(h)).collect();
        while hashes.len() > 1 {
            hashes = hashes
                .chunks(2)
                .map(|pair| node_hash(&pair[0], &pair[1]))
                .collect();
        }
        Ok(hashes[0])
    }
}

impl Nodes for StoredNodes<'_> {
    fn node(&mut self, level: u32, index: u64) -> Result<Hash, DbError> {
        if let Some(h) = self.known.get(&(level, index)) {
            return Ok(*h);
        }
        let hash = if level < STORED_FROM_LEVEL {
            self.hash_of_entries(level, index)?
        } else {
            let stored: Vec<u8> = tree::table
                .filter(tree::level.eq(level as i32))
                .filter(tree::idx.eq(index as i64))
                .select(tree::hash)
                .first(self.conn)?;
            stored
                .try_into()
                .map_err(|_| DbError::Tampered("audit tree node"))?
        };
        self.known.insert((level, index), hash);
        Ok(hash)
    }
}

/// How many leaves the tree covers.
pub fn size(conn: &mut DbConn) -> Result<u64, DbError> {
    let size: i64 = crate::db::schema::audit_head::table
        .filter(crate::db::schema::audit_head::id.eq(1))
        .select(crate::db::schema::audit_head::tree_size)
        .first(conn)?;
    u64::try_from(size).map_err(|_| DbError::Tampered("audit tree size"))
}

/// Appends leaves for `entry_hashes` (the entries `first_seq`, `first_seq + 1`, …) and every
/// complete subtree they close, inside the caller's transaction.
pub fn extend(tx: &mut DbConn, first_seq: i64, entry_hashes: &[&[u8]]) -> Result<(), DbError> {
    if entry_hashes.is_empty() {
        return Ok(());
    }
    let covered = extend_nodes(tx, first_seq, entry_hashes)?;
    diesel::update(
        crate::db::schema::audit_head::table.filter(crate::db::schema::audit_head::id.eq(1)),
    )
    .set(crate::db::schema::audit_head::tree_size.eq(covered))
    .execute(tx)?;
    Ok(())
}

/// [`extend`] without recording the new size: the caller writes it (with the chain head, in
/// one statement) and answers for it. Answers the size the tree now covers.
pub(crate) fn extend_nodes(
    tx: &mut DbConn,
    first_seq: i64,
    entry_hashes: &[&[u8]],
) -> Result<i64, DbError> {
    let mut nodes = StoredNodes::new(tx);
    for (offset, entry_hash) in entry_hashes.iter().enumerate() {
        let mut index = (first_seq - 1) as u64 + offset as u64;
        let mut level = 0u32;
        let mut hash = leaf_hash(entry_hash);
        nodes.put(level, index, hash)?;
        // An odd index closes the subtree it completes with its left sibling.
        while index % 2 == 1 {
            let left = nodes.node(level, index - 1)?;
            hash = node_hash(&left, &hash);
            level += 1;
            index /= 2;
            nodes.put(level, index, hash)?;
        }
    }
    Ok(first_seq - 1 + entry_hashes.len() as i64)
}

/// Builds the tree over entries that are in the log but not yet in the tree (a log from
/// before the tree, upgraded in place; nothing is re-hashed), up to `limit` entries per call.
/// The number of leaves added; 0 once the tree covers the whole log. An entry missing from
/// the sequence stops it: the tree is never built over a gap.
pub fn catch_up(tx: &mut DbConn, limit: i64) -> Result<usize, DbError> {
    let have = size(tx)? as i64;
    let rows: Vec<(i64, Vec<u8>)> = log::table
        .filter(log::seq.gt(have))
        .order(log::seq.asc())
        .limit(limit)
        .select((log::seq, log::hash))
        .load(tx)?;
    for (n, (seq, _)) in rows.iter().enumerate() {
        if *seq != have + 1 + n as i64 {
            return Err(DbError::Tampered(
                "audit log (a sequence number is missing)",
            ));
        }
    }
    let hashes: Vec<&[u8]> = rows.iter().map(|(_, h)| h.as_slice()).collect();
    extend(tx, have + 1, &hashes)?;
    Ok(rows.len())
}

/// Runs [`catch_up`] to the end, one bounded transaction at a time (start-up).
pub fn build_missing(conn: &mut DbConn) -> Result<u64, DbError> {
    let head: i64 = crate::db::schema::audit_head::table
        .select(crate::db::schema::audit_head::seq)
        .first(conn)?;
    if size(conn)? as i64 >= head {
        return Ok(0);
    }
    let mut total = 0u64;
    loop {
        let added = conn.transaction(|tx| {
            // Take the head row's lock first, as appenders do, so nobody appends meanwhile.
            diesel::sql_query("UPDATE audit_head SET seq = seq WHERE id = 1").execute(tx)?;
            catch_up(tx, 10_000)
        })?;
        if added == 0 {
            return Ok(total);
        }
        total += added as u64;
    }
}

/// The roots of the complete subtrees covering the first `size` leaves, largest (leftmost)
/// first: enough to extend the tree leaf by leaf and to compute its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    pub fn empty() -> Self {
        Frontier {
            size: 0,
            nodes: Vec::with_capacity(64),
        }
    }

    /// The frontier of `size` leaves from its subtree roots, left to right (one per set bit
    /// of `size`, see [`frontier_nodes`]).
    pub fn new(size: u64, roots: Vec<Hash>) -> Option<Self> {
        if roots.len() != size.count_ones() as usize {
            return None;
        }
        let mut nodes = Vec::with_capacity(64);
        nodes.extend(roots);
        Some(Frontier { size, nodes })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The subtree roots, left to right.
    pub fn roots(&self) -> &[Hash] {
        &self.nodes
    }

    /// The tree's root (`SHA-256("")` for the empty tree).
    pub fn root(&self) -> Hash {
        let mut nodes = self.nodes.iter().rev();
        let Some(last) = nodes.next() else {
            return Sha256::digest([]).into();
        };
        nodes.fold(*last, |right, left| node_hash(left, &right))
    }

    /// Appends the leaf of `entry_hash`; `closed(level, index, hash)` sees every subtree of
    /// one or more levels this completes, lowest first.
    pub fn push<E>(
        &mut self,
        entry_hash: &[u8],
        mut closed: impl FnMut(u32, u64, &Hash) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut hash = leaf_hash(entry_hash);
        let mut index = self.size;
        let mut level = 0u32;
        while index & 1 == 1 {
            let Some(left) = self.nodes.pop() else {
                break;
            };
            hash = node_hash(&left, &hash);
            level += 1;
            index >>= 1;
            closed(level, index, &hash)?;
        }
        self.nodes.push(hash);
        self.size += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All nodes computed from the leaves in memory (for checking the algorithms).
    struct Memory(Vec<Hash>);

    impl Nodes for Memory {
        fn node(&mut self, level: u32, index: u64) -> Result<Hash, DbError> {
            let width = 1u64 << level;
            let start = (index * width) as usize;
            Ok(naive(&self.0[start..start + width as usize]))
        }
    }

    /// MTH straight from RFC 6962's definition.
    fn naive(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => Sha256::digest([]).into(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&naive(&leaves[..k]), &naive(&leaves[k..]))
            }
        }
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&Sha256::digest(i.to_be_bytes())))
            .collect()
    }

    #[test]
    fn split_is_the_largest_power_of_two_below() {
        assert_eq!(split(2), 1);
        assert_eq!(split(3), 2);
        assert_eq!(split(4), 2);
        assert_eq!(split(5), 4);
        assert_eq!(split(1 << 40), 1 << 39);
    }

    #[test]
    fn roots_from_complete_subtrees_match_the_definition() {
        for n in 1..70 {
            let l = leaves(n);
            assert_eq!(
                root(&mut Memory(l.clone()), n as u64).unwrap(),
                naive(&l),
                "{n}"
            );
        }
        assert_eq!(
            hex::encode(root(&mut Memory(vec![]), 0).unwrap()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn the_frontier_computes_every_root_and_closes_each_subtree_once() {
        let entries: Vec<[u8; 32]> = (0u64..70)
            .map(|i| Sha256::digest(i.to_be_bytes()).into())
            .collect();
        let leaves: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
        let mut frontier = Frontier::empty();
        assert_eq!(frontier.root(), naive(&[]));
        let mut closed = Vec::new();
        for (n, e) in entries.iter().enumerate() {
            frontier
                .push(e, |level, idx, hash| {
                    let width = 1usize << level;
                    let start = idx as usize * width;
                    assert_eq!(*hash, naive(&leaves[start..start + width]));
                    closed.push((level, idx));
                    Ok::<(), ()>(())
                })
                .unwrap();
            assert_eq!(frontier.root(), naive(&leaves[..=n]), "{n}");
            assert_eq!(frontier.size(), n as u64 + 1);
        }
        // 70 leaves close 35 + 17 + 8 + 4 + 2 + 1 subtrees above the leaves.
        assert_eq!(closed.len(), 35 + 17 + 8 + 4 + 2 + 1);
        // A frontier rebuilt from its roots goes on the same way.
        let copy = Frontier::new(frontier.size(), frontier.roots().to_vec()).unwrap();
        assert_eq!(copy, frontier);
        assert!(Frontier::new(3, vec![[0u8; 32]]).is_none());
    }
}
