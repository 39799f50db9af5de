//! Signed checkpoints of the audit tree (SPEC §10): a C2SP `tlog-checkpoint` body in a C2SP
//! `signed-note`, signed with Ed25519.
//!
//! - **Body** (tlog-checkpoint): the origin line, the tree size in decimal, the root hash in
//!   standard base64, each ending in a newline.
//! - **Note** (signed-note): the body, one blank line, then one signature line
//!   `— <key name> <base64(key ID ‖ signature)>` where the key name is the origin, the key ID
//!   is the first four bytes of `SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ public key)` and the
//!   signature is Ed25519 over the whole body. The verifier key is
//!   `<key name>+<key ID, 8 hex digits>+<base64(0x01 ‖ public key)>`.
//! - **Key**: the Ed25519 seed is HKDF-derived from a master-key version (one signing key per
//!   keyring version); whoever lacks the keyring cannot sign, so a rewritten log cannot come
//!   with a checkpoint that verifies under the published key.
//!
//! The tests check these formats with a parser and a verifier written in the test, from the
//! C2SP specifications.

use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::merkle::Hash;
use crate::crypto::Keyring;

const KEY_PURPOSE: &str = "hazina/audit/checkpoint-ed25519/v1";
/// The signed-note signature type of Ed25519.
const ALG_ED25519: u8 = 0x01;

/// The signed-note key ID of an Ed25519 key named `name`.
pub fn key_id(name: &str, public: &[u8]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ALG_ED25519]);
    h.update(public);
    let digest = h.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// A tlog-checkpoint body.
pub fn body(origin: &str, size: u64, root: &Hash) -> String {
    format!("{origin}\n{size}\n{}\n", B64.encode(root))
}

/// The checkpoint signer of one master-key version.
pub struct Signer {
    origin: String,
    pair: Ed25519KeyPair,
    key_id: [u8; 4],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// The signer for `origin` under master-key version `version`, if the keyring has it.
    pub fn new(keyring: &Keyring, version: u32, origin: &str) -> Option<Signer> {
        let seed = keyring.derive(version, KEY_PURPOSE)?;
        let pair = Ed25519KeyPair::from_seed_unchecked(seed.as_ref()).ok()?;
        let key_id = key_id(origin, pair.public_key().as_ref());
        Some(Signer {
            origin: origin.to_owned(),
            pair,
            key_id,
        })
    }

    /// The signed-note verifier key: `<name>+<key ID hex>+<base64(0x01 ‖ public key)>`.
    pub fn verifier_key(&self) -> String {
        let mut typed = vec![ALG_ED25519];
        typed.extend_from_slice(self.pair.public_key().as_ref());
        format!(
            "{}+{}+{}",
            self.origin,
            hex::encode(self.key_id),
            B64.encode(typed)
        )
    }

    /// The signed checkpoint of the tree of `size` leaves with root `root`.
    pub fn sign(&self, size: u64, root: &Hash) -> String {
        self.sign_note(&body(&self.origin, size, root))
    }

    /// A signed note of `text` (which ends with a newline) under this signer's key.
    pub fn sign_note(&self, text: &str) -> String {
        let sig = self.pair.sign(text.as_bytes());
        let mut blob = self.key_id.to_vec();
        blob.extend_from_slice(sig.as_ref());
        format!("{text}\n\u{2014} {} {}\n", self.origin, B64.encode(blob))
    }

    /// The verifier of this signer's signatures.
    pub fn verifier(&self) -> Verifier {
        Verifier {
            name: self.origin.clone(),
            id: self.key_id,
            public: self.pair.public_key().as_ref().to_vec(),
        }
    }

    /// Checks a signed note against this signer's key (see [`Verifier::open`]).
    pub fn open<'n>(&self, note: &'n str) -> Option<&'n str> {
        self.verifier().open(note)
    }
}

/// A signed-note verifier key: who may sign (the key name) and the Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    id: [u8; 4],
    public: Vec<u8>,
}

impl Verifier {
    /// Parses `<name>+<key ID hex>+<base64(0x01 ‖ public key)>`, checking the key ID.
    pub fn parse(vkey: &str) -> Option<Verifier> {
        let mut parts = vkey.trim().splitn(3, '+');
        let name = parts.next().filter(|n| !n.is_empty())?.to_owned();
        let id: [u8; 4] = hex::decode(parts.next()?).ok()?.try_into().ok()?;
        let typed = B64.decode(parts.next()?).ok()?;
        let (&alg, public) = typed.split_first()?;
        if alg != ALG_ED25519 || public.len() != 32 || key_id(&name, public) != id {
            return None;
        }
        Some(Verifier {
            name,
            id,
            public: public.to_vec(),
        })
    }

    /// The key name (the log's origin).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The text a signed note signs, if one of its signature lines is this key's and
    /// verifies over it.
    pub fn open<'n>(&self, note: &'n str) -> Option<&'n str> {
        let split = note.find("\n\n")?;
        let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
        let public = signature::UnparsedPublicKey::new(&signature::ED25519, &self.public);
        for line in sigs.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                continue;
            };
            let Some((name, sig)) = rest.split_once(' ') else {
                continue;
            };
            let Ok(blob) = B64.decode(sig) else {
                continue;
            };
            if name != self.name || blob.len() != 4 + 64 || blob[..4] != self.id {
                continue;
            }
            if public.verify(text.as_bytes(), &blob[4..]).is_ok() {
                return Some(text);
            }
        }
        None
    }
}

/// A checkpoint body's fields: origin, tree size, root hash.
pub fn parse_body(text: &str) -> Option<(&str, u64, Hash)> {
    let mut lines = text.split('\n');
    let origin = lines.next().filter(|o| !o.is_empty())?;
    let size = lines.next()?;
    if size.is_empty() || (size.len() > 1 && size.starts_with('0')) {
        return None;
    }
    let size: u64 = size.parse().ok()?;
    let root: Hash = B64.decode(lines.next()?).ok()?.try_into().ok()?;
    Some((origin, size, root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_checkpoint_opens_under_its_key_only() {
        let k = Keyring::generate();
        let signer = Signer::new(&k, 1, "example.com/log").unwrap();
        let note = signer.sign(5, &[7u8; 32]);
        let text = signer.open(&note).unwrap();
        assert_eq!(parse_body(text), Some(("example.com/log", 5, [7u8; 32])));
        let other = Signer::new(&Keyring::generate(), 1, "example.com/log").unwrap();
        assert!(other.open(&note).is_none());
        assert!(signer.open(&note.replace("\n5\n", "\n6\n")).is_none());
        assert!(signer.verifier_key().starts_with("example.com/log+"));
        let parsed = Verifier::parse(&signer.verifier_key()).unwrap();
        assert_eq!(parsed, signer.verifier());
        assert!(Verifier::parse("example.com/log+00000000+AQ==").is_none());
    }
}

// ----- the log's signer, in the database ---------------------------------------------------

use diesel::prelude::*;

use crate::db::key_versions::{self, RETIRED};
use crate::db::schema::audit_signer as signer_row;
use crate::db::{DbConn, DbError};

/// The log's origin: `configured` (`HAZINA_AUDIT_ORIGIN`), else the random name fixed in the
/// database at the first start.
pub fn origin(conn: &mut DbConn, configured: Option<&str>) -> Result<String, DbError> {
    let random = format!("hazina.local/audit/{}", uuid::Uuid::new_v4().simple());
    diesel::sql_query(
        "INSERT INTO audit_signer (id, origin, last_checkpoint) VALUES (1, $1, NULL) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind::<diesel::sql_types::Text, _>(configured.unwrap_or(&random))
    .execute(conn)?;
    let stored: String = signer_row::table
        .find(1)
        .select(signer_row::origin)
        .first(conn)?;
    Ok(configured.map_or(stored, str::to_owned))
}

/// A signer for every master-key version that may still sign or be checked (not retired),
/// newest first.
pub fn signers(
    conn: &mut DbConn,
    keyring: &Keyring,
    origin: &str,
) -> Result<Vec<(i32, Signer)>, DbError> {
    let mut out: Vec<(i32, Signer)> = key_versions::load(conn)?
        .into_iter()
        .filter(|r| r.state != RETIRED)
        .filter_map(|r| {
            let v = u32::try_from(r.version).ok()?;
            Some((r.version, Signer::new(keyring, v, origin)?))
        })
        .collect();
    out.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    Ok(out)
}

/// What checking one checkpoint against the log found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// The tree size the checkpoint names (when it could be read).
    pub tree_size: Option<u64>,
    pub ok: bool,
    /// What is wrong, in plain words, when not ok.
    pub problem: Option<String>,
}

/// A signed checkpoint's size and root, if its signature verifies under one of the log's
/// keys and it names this log; the verdict on it otherwise. Whether the log still extends it
/// is for the walk ([`super::verify`]) to say, from the entries.
pub fn claim(signers: &[(i32, Signer)], origin: &str, note: &str) -> Result<(u64, Hash), Verdict> {
    let bad = |size: Option<u64>, problem: &str| Verdict {
        tree_size: size,
        ok: false,
        problem: Some(problem.to_owned()),
    };
    let Some(text) = signers.iter().find_map(|(_, s)| s.open(note)) else {
        return Err(bad(
            None,
            "the signature does not verify under this log's keys",
        ));
    };
    let Some((named, size, root)) = parse_body(text) else {
        return Err(bad(None, "the checkpoint body is malformed"));
    };
    if named != origin {
        return Err(bad(
            Some(size),
            "the checkpoint is for another log (origin)",
        ));
    }
    Ok((size, root))
}

/// Checks a signed checkpoint against the log as it is: the signature verifies under one of
/// the log's keys, the origin is the log's, and the tree of that size still has that root
/// (the log extends it: nothing up to it was rolled back, truncated or rewritten).
pub fn check(
    conn: &mut DbConn,
    signers: &[(i32, Signer)],
    origin: &str,
    note: &str,
) -> Result<Verdict, DbError> {
    let bad = |size: Option<u64>, problem: &str| Verdict {
        tree_size: size,
        ok: false,
        problem: Some(problem.to_owned()),
    };
    let (size, root) = match claim(signers, origin, note) {
        Ok(claimed) => claimed,
        Err(verdict) => return Ok(verdict),
    };
    let have = super::merkle::size(conn)?;
    if size > have {
        return Ok(bad(
            Some(size),
            &format!("the log holds {have} entries, fewer than the checkpoint's {size}: entries after {have} were removed or the database was restored from an older copy"),
        ));
    }
    let now = match super::merkle::root(&mut super::merkle::StoredNodes::new(conn), size) {
        Err(DbError::Archived(through)) => {
            return Ok(bad(
                Some(size),
                &format!("this checkpoint lies inside the archived part of the log (entries 1 to {through}): verify it against the archive file"),
            ))
        }
        other => other?,
    };
    if now != root {
        return Ok(bad(
            Some(size),
            &format!("the log no longer extends this checkpoint: its first {size} entries were rewritten"),
        ));
    }
    Ok(Verdict {
        tree_size: Some(size),
        ok: true,
        problem: None,
    })
}

/// Whether the log still extends the last checkpoint it signed (if any): what is wrong, in
/// plain words, when it does not.
pub fn extends_last(
    conn: &mut DbConn,
    signers: &[(i32, Signer)],
    origin: &str,
) -> Result<Option<String>, DbError> {
    let last: Option<String> = signer_row::table
        .find(1)
        .select(signer_row::last_checkpoint)
        .first(conn)?;
    let Some(last) = last else {
        return Ok(None);
    };
    let verdict = check(conn, signers, origin, &last)?;
    Ok((!verdict.ok).then(|| verdict.problem.unwrap_or_default()))
}

/// Why the signer refused to sign.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the audit log no longer extends the last signed checkpoint ({0}); refusing to sign")]
    Rewritten(String),
    #[error("no master-key version can sign checkpoints")]
    NoKey,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for SignError {
    fn from(e: diesel::result::Error) -> Self {
        SignError::Db(e.into())
    }
}

/// Signs a checkpoint of the whole tree, under the active version's key — but only if the
/// tree still extends the last checkpoint this log signed (kept in the database, and
/// checked under the log's own keys, so neither an edit of it nor a rewritten log passes).
/// The signer's lock row makes checkpoints from several nodes one sequence.
pub fn sign_current(
    conn: &mut DbConn,
    keyring: &Keyring,
    origin: &str,
) -> Result<String, SignError> {
    conn.transaction(|tx| {
        diesel::update(signer_row::table.find(1))
            .set(signer_row::id.eq(signer_row::id))
            .execute(tx)?;
        let signers = signers(tx, keyring, origin)?;
        if let Some(problem) = extends_last(tx, &signers, origin)? {
            return Err(SignError::Rewritten(problem));
        }
        let signer = &signers.first().ok_or(SignError::NoKey)?.1;
        let size = super::merkle::size(tx)?;
        let root = super::merkle::root(&mut super::merkle::StoredNodes::new(tx), size)?;
        let note = signer.sign(size, &root);
        diesel::update(signer_row::table.find(1))
            .set(signer_row::last_checkpoint.eq(Some(&note)))
            .execute(tx)?;
        Ok(note)
    })
}
