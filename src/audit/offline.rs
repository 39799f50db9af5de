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

/// Leaves held in memory; complete subtrees hashed on demand.
struct Leaves(Vec<Hash>);

impl Nodes for Leaves {
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
        let width = 1usize << level;
        let start = index as usize * width;
        self.0
            .get(start..start + width)
            .map(hash)
            .ok_or(DbError::Tampered("export (a tree node past its end)"))
    }
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
    })
}

/// Verifies a whole export (from entry 1: `hazina audit export` without `--since`) against
/// `checkpoints` signed under `key`.
pub fn verify_export(export: &str, key: &Verifier, checkpoints: &[String]) -> Report {
    let mut leaves = Vec::new();
    let mut prev = GENESIS.to_vec();
    let mut first_bad = None;
    let mut head_seen = false;
    for (n, text) in export.lines().enumerate() {
        let expected = n as i64 + 1;
        if first_bad.is_some() || text.trim().is_empty() {
            break;
        }
        if text.contains("\"chain_head\"") {
            head_seen = true;
            break;
        }
        let row = serde_json::from_str::<Line>(text).ok().and_then(row_of);
        match row {
            Some(row)
                if row.seq == expected
                    && row.prev_hash == prev
                    && row.compute_hash().as_slice() == row.hash.as_slice() =>
            {
                leaves.push(merkle::leaf_hash(&row.hash));
                prev = row.hash;
            }
            _ => first_bad = Some(expected),
        }
    }
    if first_bad.is_none() && !head_seen {
        // An export always ends with its chain head: without it, it was cut short.
        first_bad = Some(leaves.len() as i64 + 1);
    }
    let size = leaves.len() as u64;
    let mut nodes = Leaves(leaves);
    let verdicts: Vec<Verdict> = checkpoints
        .iter()
        .map(|note| check(&mut nodes, size, key, note))
        .collect();
    Report {
        ok: first_bad.is_none() && verdicts.iter().all(|v| v.ok),
        checked: size as i64,
        first_bad_seq: first_bad,
        checkpoints: verdicts,
    }
}

fn check(nodes: &mut Leaves, have: u64, key: &Verifier, note: &str) -> Verdict {
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
