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
//! - **The signer signs only what the entries produce** ([`prepare`]): the entries added since
//!   the last signed checkpoint must chain onto its last entry, and the root is recomputed from
//!   them, never read from the stored tree.
//! - **The signer remembers outside the database** ([`Memory`]): the last checkpoint it signed
//!   stays in the process and is read back from `HAZINA_AUDIT_CHECKPOINT_FILE` at start; a
//!   cleared or moved-back `audit_signer` row while it remembers a later one is tampering.
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

use crate::db::schema::{audit_signer as signer_row, key_versions as kv};
use crate::db::{DbConn, DbError};
use crate::domain::key_state::RETIRED;

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

/// Every master-key version and its state, oldest first (read from the table itself: the log
/// sits below the repositories that change it).
fn master_key_versions(conn: &mut DbConn) -> Result<Vec<(i32, String)>, DbError> {
    Ok(kv::table
        .order(kv::version.asc())
        .select((kv::version, kv::state))
        .load(conn)?)
}

/// A signer for every master-key version that may still sign or be checked (not retired),
/// newest first.
pub fn signers(
    conn: &mut DbConn,
    keyring: &Keyring,
    origin: &str,
) -> Result<Vec<(i32, Signer)>, DbError> {
    let mut out: Vec<(i32, Signer)> = master_key_versions(conn)?
        .into_iter()
        .filter(|(_, state)| state != RETIRED)
        .filter_map(|(version, _)| {
            let v = u32::try_from(version).ok()?;
            Some((version, Signer::new(keyring, v, origin)?))
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

/// Checks one signed checkpoint against the log as it is (see
/// [`super::verify::with_checkpoints`], which checks many in one walk).
pub fn check(
    conn: &mut DbConn,
    keyring: &Keyring,
    origin: &str,
    note: &str,
) -> Result<Verdict, DbError> {
    let (_, mut verdicts) =
        super::verify::with_checkpoints(conn, keyring, origin, &[note.to_owned()])?;
    verdicts
        .pop()
        .ok_or(DbError::Tampered("audit checkpoint verdict"))
}

// ----- what the signer remembers outside the database ------------------------------

#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Remembered {
    #[default]
    Nothing,
    /// The latest checkpoint this process signed, or read back from the checkpoint file.
    Signed { size: u64, root: Hash },
    /// The checkpoint file could not be read back: nothing is signed until an operator looks.
    Unreadable(String),
}

/// The last checkpoint the signer signed, kept in the process (and read back from
/// `HAZINA_AUDIT_CHECKPOINT_FILE` at start), so that neither clearing nor moving back
/// `audit_signer.last_checkpoint` makes it sign a log that does not extend it.
#[derive(Debug, Default)]
pub struct Memory(std::sync::Mutex<Remembered>);

/// How much of the checkpoint file's end is read back: many notes' worth.
const FILE_TAIL: u64 = 64 * 1024;

impl Memory {
    /// Nothing remembered yet (a process without a checkpoint file, at its start).
    pub fn empty() -> Self {
        Memory::default()
    }

    /// The last complete note of the checkpoint file `path`, checked under the log's keys
    /// (nothing when the file does not exist or is empty). A file whose last note does not
    /// verify, or that cannot be read, is remembered as a problem: the signer refuses.
    pub fn from_file(
        conn: &mut DbConn,
        keyring: &Keyring,
        origin: &str,
        path: &std::path::Path,
    ) -> Result<Memory, DbError> {
        let remembered = match last_note(path) {
            Ok(None) => Remembered::Nothing,
            Ok(Some(note)) => {
                // Retired versions too: the memory only ever restricts what is signed, and a
                // note signed just before a version was retired is still this log's.
                let signers: Vec<(i32, Signer)> = master_key_versions(conn)?
                    .into_iter()
                    .filter_map(|(version, _)| {
                        let v = u32::try_from(version).ok()?;
                        Some((version, Signer::new(keyring, v, origin)?))
                    })
                    .collect();
                match claim(&signers, origin, &note) {
                    Ok((size, root)) => Remembered::Signed { size, root },
                    Err(verdict) => Remembered::Unreadable(format!(
                        "the last checkpoint in {} does not verify: {}",
                        path.display(),
                        verdict.problem.unwrap_or_default()
                    )),
                }
            }
            Err(e) => Remembered::Unreadable(format!(
                "cannot read the checkpoint file {} back: {e}",
                path.display()
            )),
        };
        Ok(Memory(std::sync::Mutex::new(remembered)))
    }

    fn get(&self) -> Remembered {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Remembers a checkpoint just signed (never one older than what is remembered).
    fn remember(&self, size: u64, root: Hash) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match &*m {
            Remembered::Signed { size: had, .. } if *had > size => {}
            Remembered::Unreadable(_) => {}
            _ => *m = Remembered::Signed { size, root },
        }
    }

    /// Why the signer will not sign whatever the log holds, if the memory itself says so.
    pub fn problem(&self) -> Option<String> {
        match self.get() {
            Remembered::Unreadable(problem) => Some(problem),
            _ => None,
        }
    }
}

/// The last complete signed note of a checkpoint file (notes follow each other directly, each
/// ending with its signature line): `None` when there is none yet.
fn last_note(path: &std::path::Path) -> std::io::Result<Option<String>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(FILE_TAIL)))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let text = String::from_utf8_lossy(&tail);
    let (mut last, mut current) = (None, String::new());
    for line in text.split_inclusive('\n') {
        current.push_str(line);
        if line.starts_with('\u{2014}') && line.ends_with('\n') {
            last = Some(std::mem::take(&mut current));
        }
    }
    if last.is_none() && !text.trim().is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "it holds no complete signed note",
        ));
    }
    Ok(last)
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

/// The start at checkpoint (`size`, `root`), if the log of `tree_size` leaves extends it.
fn extends(
    tx: &mut DbConn,
    anchor: &super::archive::Anchor,
    tree_size: u64,
    size: u64,
    root: &Hash,
) -> Result<super::verify::Start, SignError> {
    if size > tree_size {
        return Err(SignError::Rewritten(format!(
            "the log holds {tree_size} entries, fewer than the checkpoint's {size}: entries after {tree_size} were removed or the database was restored from an older copy"
        )));
    }
    super::verify::from_checkpoint(tx, anchor, size, root)?.map_err(SignError::Rewritten)
}

/// The size and root the signer may sign now, computed from the entries: the log must extend
/// the last checkpoint the database names and the one `memory` holds (a cleared or moved
/// back `audit_signer` row while the process or its file remembers a later one is
/// tampering), and the entries since then must chain onto it and produce every stored node
/// they close. Run inside the signer's lock.
pub fn prepare(
    tx: &mut DbConn,
    keyring: &Keyring,
    signers: &[(i32, Signer)],
    origin: &str,
    memory: &Memory,
) -> Result<(u64, Hash), SignError> {
    let end = prepare_from(tx, keyring, signers, origin, memory, None)?;
    Ok((end.frontier.size(), end.frontier.root()))
}

/// [`prepare`], answering where the walk ended; with `resume` (where an earlier walk of this
/// signer ended, from a checkpoint this log signed) it walks only the entries after that,
/// which must chain onto the entries that walk saw.
fn prepare_from(
    tx: &mut DbConn,
    keyring: &Keyring,
    signers: &[(i32, Signer)],
    origin: &str,
    memory: &Memory,
    resume: Option<super::verify::Start>,
) -> Result<super::verify::Start, SignError> {
    let anchor = match super::archive::anchor(tx, keyring) {
        Err(DbError::Tampered(_)) => {
            return Err(SignError::Rewritten(
                "the archive anchor does not verify under this log's keys".into(),
            ))
        }
        other => other?,
    };
    let stored: Option<String> = signer_row::table
        .find(1)
        .select(signer_row::last_checkpoint)
        .first(tx)?;
    let last = match stored {
        None => None,
        Some(note) => Some(
            claim(signers, origin, &note)
                .map_err(|v| SignError::Rewritten(v.problem.unwrap_or_default()))?,
        ),
    };
    let tree_size = super::merkle::size(tx)?;
    let archived = u64::try_from(anchor.seq).unwrap_or(0);
    match memory.get() {
        Remembered::Nothing => {}
        Remembered::Unreadable(problem) => return Err(SignError::Rewritten(problem)),
        Remembered::Signed { size, root } => {
            match last {
                None => {
                    return Err(SignError::Rewritten(format!(
                        "the signer's row names no checkpoint, but this signer signed one of {size} entries: the row was cleared"
                    )))
                }
                Some((had, _)) if had < size => {
                    return Err(SignError::Rewritten(format!(
                        "the signer's row names a checkpoint of {had} entries, but this signer signed one of {size}: the row was moved back"
                    )))
                }
                Some((had, other)) if had == size && other != root => {
                    return Err(SignError::Rewritten(format!(
                        "the signer's row names another root for the checkpoint of {size} entries this signer signed"
                    )))
                }
                _ => {}
            }
            // A later checkpoint (another node's) must not hide that the log stopped
            // extending this one; one inside the archive was checked before the archive.
            if size >= archived && last != Some((size, root)) {
                extends(tx, &anchor, tree_size, size, &root)?;
            }
        }
    }
    let start = match &last {
        None => {
            super::verify::from_anchor(tx, &anchor)?.map_err(|b| SignError::Rewritten(b.problem))?
        }
        Some((size, root)) => extends(tx, &anchor, tree_size, *size, root)?,
    };
    let start = match resume {
        Some(resume) if resume.seq >= start.seq && resume.frontier.size() <= tree_size => resume,
        _ => start,
    };
    let through = i64::try_from(tree_size).unwrap_or(i64::MAX);
    let mut walk = super::verify::Walk::new(start, tree_size);
    loop {
        let rows = super::verify::Walk::read(tx, walk.next_seq(), through)?;
        let n = rows.len() as i64;
        walk.rows(tx, &rows, |_| ())?
            .map_err(|b| SignError::Rewritten(b.problem))?;
        if n < super::verify::BATCH {
            break;
        }
    }
    if let Some(b) = walk.finish() {
        return Err(SignError::Rewritten(b.problem));
    }
    if walk.frontier().size() != tree_size {
        return Err(SignError::Rewritten(format!(
            "entry {} is missing",
            walk.next_seq()
        )));
    }
    Ok(walk.into_start())
}

/// Signs a checkpoint of the whole tree, under the active version's key — but only of the
/// root the entries produce, and only if the log still extends the last checkpoint this log
/// signed (kept in the database, checked under the log's own keys, and remembered outside
/// it: see [`prepare`]). The signer's lock row makes checkpoints from several nodes one
/// sequence.
pub fn sign_current(
    conn: &mut DbConn,
    keyring: &Keyring,
    origin: &str,
    memory: &Memory,
) -> Result<String, SignError> {
    // The long part of the walk first, outside the signer's lock (which, on SQLite, is the
    // database's write lock): inside it, only the entries appended meanwhile are walked.
    let walked = {
        let signers = signers(conn, keyring, origin)?;
        prepare_from(conn, keyring, &signers, origin, memory, None)?
    };
    let (note, size, root) = conn.transaction(|tx| {
        diesel::update(signer_row::table.find(1))
            .set(signer_row::id.eq(signer_row::id))
            .execute(tx)?;
        let signers = signers(tx, keyring, origin)?;
        let end = prepare_from(tx, keyring, &signers, origin, memory, Some(walked))?;
        let (size, root) = (end.frontier.size(), end.frontier.root());
        let signer = &signers.first().ok_or(SignError::NoKey)?.1;
        let note = signer.sign(size, &root);
        diesel::update(signer_row::table.find(1))
            .set(signer_row::last_checkpoint.eq(Some(&note)))
            .execute(tx)?;
        Ok::<_, SignError>((note, size, root))
    })?;
    // Remembered once committed: a memory ahead of the database would read as tampering.
    memory.remember(size, root);
    Ok(note)
}
