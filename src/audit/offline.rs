//! Verifying an export with no database and no keyring (SPEC §10): `hazina audit verify
//! --export FILE --public-key KEY --checkpoint FILE`.
//!
//! The export's entries are re-hashed and re-chained from their own fields, its Merkle tree is
//! rebuilt from their hashes, and each checkpoint — signed under the given verifier key — must
//! be a tree of the export (same root at its size). An export that was edited, cut short of a
//! checkpoint, or belongs to a rewritten log fails, naming what and where.

use serde::Deserialize;

use super::chain::{AuditRow, GENESIS};
use super::checkpoint::{parse_body, Verdict, Verifier};
use super::merkle::{self, Hash, Nodes};
use crate::db::DbError;

#[derive(Deserialize)]
struct Actor {
    kind: String,
    id: Option<i64>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct Target {
    credential_id: Option<i64>,
    owner_id: Option<i64>,
    provider: Option<String>,
    environment: Option<String>,
}

#[derive(Deserialize)]
struct Line {
    seq: i64,
    occurred_at: String,
    actor: Actor,
    source_ip: Option<String>,
    cert_fingerprint: Option<String>,
    action: String,
    target: Target,
    outcome: String,
    reason: Option<String>,
    request_id: Option<String>,
    #[serde(default)]
    operation: Option<String>,
    #[serde(default)]
    reference: Option<String>,
    #[serde(default)]
    subjects: Option<String>,
    prev_hash: String,
    hash: String,
}

/// The answer: the chain's verdict and each checkpoint's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub ok: bool,
    pub checked: i64,
    pub first_bad_seq: Option<i64>,
    pub checkpoints: Vec<Verdict>,
}

/// The tree of an export: the complete subtrees before its first entry (an archive's or a
/// later export's frontier, left to right) and its own leaves, held in memory; complete
/// subtrees hashed on demand.
struct Tree {
    /// Leaves before the export's first entry.
    start: u64,
    frontier: Vec<(u32, u64, Hash)>,
    leaves: Vec<Hash>,
}

impl Tree {
    /// The tree of an export from entry 1.
    fn empty() -> Tree {
        Tree {
            start: 0,
            frontier: Vec::new(),
            leaves: Vec::new(),
        }
    }

    fn new(start: u64, frontier: &[Hash]) -> Option<Tree> {
        let nodes: Vec<(u32, u64)> = merkle::frontier_nodes(start).collect();
        if nodes.len() != frontier.len() {
            return None;
        }
        let placed = nodes
            .into_iter()
            .zip(frontier)
            .map(|((level, index), hash)| (level, index, *hash))
            .collect();
        Some(Tree {
            start,
            frontier: placed,
            leaves: Vec::new(),
        })
    }
}

impl Nodes for Tree {
    fn node(&mut self, level: u32, index: u64) -> Result<Hash, DbError> {
        fn hash(leaves: &[Hash]) -> Hash {
            match leaves {
                [one] => *one,
                _ => {
                    let (l, r) = leaves.split_at(leaves.len() / 2);
                    merkle::node_hash(&hash(l), &hash(r))
                }
            }
        }
        if let Some((.., h)) = self
            .frontier
            .iter()
            .find(|(l, i, _)| *l == level && *i == index)
        {
            return Ok(*h);
        }
        let width = 1u64 << level;
        let low = index * width;
        if low >= self.start {
            let from = (low - self.start) as usize;
            return self
                .leaves
                .get(from..from + width as usize)
                .map(hash)
                .ok_or(DbError::Tampered("export (a tree node past its end)"));
        }
        if low + width <= self.start || level == 0 {
            return Err(DbError::Tampered("export (a tree node before its start)"));
        }
        let left = self.node(level - 1, index * 2)?;
        let right = self.node(level - 1, index * 2 + 1)?;
        Ok(merkle::node_hash(&left, &right))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Start {
    seq: i64,
    hash: String,
    frontier: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartLine {
    archived_before: Start,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointLine {
    checkpoint: String,
}

/// Where an export starts: after entry `seq` with hash `hash`, under `frontier`.
fn start_of(line: &str) -> Option<(i64, Vec<u8>, Tree)> {
    let StartLine {
        archived_before: start,
    } = serde_json::from_str(line).ok()?;
    let hash = hex::decode(&start.hash).ok().filter(|h| h.len() == 32)?;
    let frontier = start
        .frontier
        .iter()
        .map(|h| hex::decode(h).ok().and_then(|h| <Hash>::try_from(h).ok()))
        .collect::<Option<Vec<Hash>>>()?;
    let tree = Tree::new(u64::try_from(start.seq).ok().filter(|s| *s > 0)?, &frontier)?;
    Some((start.seq, hash, tree))
}

fn row_of(line: Line) -> Option<AuditRow> {
    let occurred_at = chrono::DateTime::parse_from_rfc3339(&line.occurred_at)
        .ok()?
        .timestamp_micros();
    Some(AuditRow {
        seq: line.seq,
        occurred_at,
        actor_kind: line.actor.kind,
        actor_id: line.actor.id,
        actor_name: line.actor.name,
        source_ip: line.source_ip,
        cert_fingerprint: line.cert_fingerprint,
        action: line.action,
        credential_id: line.target.credential_id,
        owner_id: line.target.owner_id,
        provider: line.target.provider,
        environment: line.target.environment,
        outcome: line.outcome,
        reason: line.reason,
        request_id: line.request_id,
        prev_hash: hex::decode(line.prev_hash).ok()?,
        hash: hex::decode(line.hash).ok()?,
        operation: line.operation,
        reference: line.reference,
        subjects: line.subjects,
    })
}

/// Verifies a whole export (`hazina audit export` without `--since`, or an archive file of
/// `hazina audit archive`) against `checkpoints` signed under `key`, and against the
/// checkpoints the file carries itself (an archive's).
pub fn verify_export(export: &str, key: &Verifier, checkpoints: &[String]) -> Report {
    let mut lines = export.lines().peekable();
    let mut first_bad = None;
    let (start, mut prev, mut tree) = match lines.next_if(|l| l.contains("\"archived_before\"")) {
        Some(first) => match start_of(first) {
            Some(start) => start,
            None => {
                first_bad = Some(1);
                (0, GENESIS.to_vec(), Tree::empty())
            }
        },
        _ => (0, GENESIS.to_vec(), Tree::empty()),
    };
    let mut carried = Vec::new();
    let mut head_seen = false;
    for text in lines {
        let expected = start + tree.leaves.len() as i64 + 1;
        if first_bad.is_some() || text.trim().is_empty() {
            break;
        }
        if text.contains("\"chain_head\"") {
            head_seen = true;
            break;
        }
        if text.starts_with("{\"checkpoint\"") {
            match serde_json::from_str::<CheckpointLine>(text) {
                Ok(line) => carried.push(line.checkpoint),
                Err(_) => first_bad = Some(expected),
            }
            continue;
        }
        let row = serde_json::from_str::<Line>(text).ok().and_then(row_of);
        match row {
            Some(row)
                if row.seq == expected
                    && row.prev_hash == prev
                    && row.compute_hash().as_slice() == row.hash.as_slice() =>
            {
                tree.leaves.push(merkle::leaf_hash(&row.hash));
                prev = row.hash;
            }
            _ => first_bad = Some(expected),
        }
    }
    if first_bad.is_none() && !head_seen {
        // An export always ends with its chain head: without it, it was cut short.
        first_bad = Some(start + tree.leaves.len() as i64 + 1);
    }
    let checked = tree.leaves.len() as i64;
    let size = start as u64 + tree.leaves.len() as u64;
    let verdicts: Vec<Verdict> = checkpoints
        .iter()
        .chain(&carried)
        .map(|note| check(&mut tree, size, key, note))
        .collect();
    Report {
        ok: first_bad.is_none() && verdicts.iter().all(|v| v.ok),
        checked,
        first_bad_seq: first_bad,
        checkpoints: verdicts,
    }
}

fn check(nodes: &mut Tree, have: u64, key: &Verifier, note: &str) -> Verdict {
    let bad = |size: Option<u64>, problem: String| Verdict {
        tree_size: size,
        ok: false,
        problem: Some(problem),
    };
    let Some(text) = key.open(note) else {
        return bad(None, "the signature does not verify under this key".into());
    };
    let Some((origin, size, root)) = parse_body(text) else {
        return bad(None, "the checkpoint body is malformed".into());
    };
    if origin != key.name() {
        return bad(
            Some(size),
            "the checkpoint is for another log (origin)".into(),
        );
    }
    if size > have {
        return bad(
            Some(size),
            format!("the export holds {have} entries, fewer than the checkpoint's {size}"),
        );
    }
    match merkle::root(nodes, size) {
        Ok(r) if r == root => Verdict {
            tree_size: Some(size),
            ok: true,
            problem: None,
        },
        _ => bad(
            Some(size),
            format!(
                "the export is not the log of this checkpoint: its first {size} entries differ"
            ),
        ),
    }
}
