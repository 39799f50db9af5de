//! The master keyring: versioned 256-bit master keys (KEKs).
//!
//! Loaded from a file that must not be readable by group or others (mode 0600 or stricter),
//! or from the `HAZINA_KEYRING_DATA` environment variable. Never stored in the database and
//! never logged. One version is active for new writes; older versions stay to open rows
//! written under them.
//!
//! File format (JSON): `{"active": 2, "keys": {"1": "<base64 32 bytes>", "2": "..."}}`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hkdf::Hkdf;
use rand::rngs::OsRng;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

pub const KEY_LEN: usize = 32;

/// The HKDF label of the keyring check values (see [`Keyring::check_value`]).
const CHECK_VALUE_PURPOSE: &str = "hazina/keyring/check-value/v1";

/// One master key. Its bytes are wiped on drop and never printed.
pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl MasterKey {
    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.fill_bytes(k.as_mut());
        MasterKey(k)
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([REDACTED])")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("keyring file {0} is readable or writable by group or others; run `chmod 600` on it")]
    InsecurePermissions(PathBuf),
    #[error("keyring file {path} could not be read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("keyring is malformed: {0}")]
    Malformed(&'static str),
    #[error("keyring file {0} already exists")]
    AlreadyExists(PathBuf),
    #[error(
        "the keyring comes from HAZINA_KEYRING_DATA, not a file: add versions there and restart"
    )]
    NotAFile,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    active: u32,
    keys: BTreeMap<u32, String>,
}

impl Drop for KeyringFile {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for v in self.keys.values_mut() {
            v.zeroize();
        }
    }
}

/// The key versions and which one is active.
struct Versions {
    active: u32,
    keys: BTreeMap<u32, MasterKey>,
}

/// Versioned master keys; exactly one is active for new writes.
///
/// A keyring loaded from a file follows that file: when the file changes (a version added by
/// `hazina keys rotate`, one retired), the next lookup of an unknown version, and every read
/// of the active version, reload it — so a running server learns about a
/// rotation made by the CLI without a restart, and never misses a version a row needs.
pub struct Keyring {
    versions: RwLock<Versions>,
    file: Option<PathBuf>,
    loaded_mtime: Mutex<Option<Stamp>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.read();
        f.debug_struct("Keyring")
            .field("active", &v.active)
            .field("versions", &v.keys.keys().collect::<Vec<_>>())
            .field("keys", &"[REDACTED]")
            .finish()
    }
}

/// What tells a changed keyring file apart cheaply: modification time, size and inode (every
/// rewrite is a new file renamed over the old one).
type Stamp = (SystemTime, u64, u64);

fn mtime(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

impl Keyring {
    fn with(versions: Versions, file: Option<PathBuf>) -> Self {
        let loaded = file.as_deref().and_then(mtime);
        Keyring {
            versions: RwLock::new(versions),
            file,
            loaded_mtime: Mutex::new(loaded),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Versions> {
        self.versions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Versions> {
        self.versions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A keyring with one fresh random key, version 1.
    pub fn generate() -> Self {
        let mut keys = BTreeMap::new();
        keys.insert(1, MasterKey::generate());
        Self::with(Versions { active: 1, keys }, None)
    }

    /// Loads a keyring file, refusing one that group or others can access. The keyring
    /// remembers the file and follows later changes to it.
    pub fn load_file(path: &Path) -> Result<Self, KeyringError> {
        Ok(Self::with(read_file(path)?, Some(path.to_owned())))
    }

    /// Parses the JSON form (file contents or `HAZINA_KEYRING_DATA`).
    pub fn from_secret(data: &SecretString) -> Result<Self, KeyringError> {
        Ok(Self::with(parse(data.expose_secret())?, None))
    }

    /// Writes the keyring to a new file created with mode 0600; never overwrites.
    pub fn write_new_file(&self, path: &Path) -> Result<(), KeyringError> {
        write_file(&self.read(), path, false)
    }

    /// The active version, after following the file if it changed (one `stat`): the callers
    /// are writers and token issuers, never the reveal path, and must not act on a version
    /// another process has already moved past.
    pub fn active_version(&self) -> u32 {
        self.reload_if_changed();
        self.read().active
    }

    pub fn versions(&self) -> Vec<u32> {
        self.read().keys.keys().copied().collect()
    }

    /// The highest version this keyring holds.
    pub fn newest_version(&self) -> u32 {
        self.read().keys.keys().max().copied().unwrap_or(0)
    }

    /// Whether the keyring comes from a file (and so can be rotated in place).
    pub fn is_file_backed(&self) -> bool {
        self.file.is_some()
    }

    /// The check value of master-key version `version`: HMAC-SHA-256, under a key derived
    /// from that version, of a fixed string naming the version. Stored in the database, it
    /// proves that a keyring is the one the database was sealed under, and reveals nothing
    /// of the key.
    pub fn check_value(&self, version: u32) -> Option<[u8; 32]> {
        use hmac::{Hmac, Mac};
        let key = self.derive(version, CHECK_VALUE_PURPOSE)?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_ref()).ok()?;
        mac.update(b"hazina keyring check value\0");
        mac.update(&version.to_be_bytes());
        Some(mac.finalize().into_bytes().into())
    }

    pub fn has_version(&self, version: u32) -> bool {
        self.kek(version).is_some()
    }

    /// A copy of master key `version` (wiped on drop). An unknown version makes a
    /// file-backed keyring re-read its file once before answering `None`.
    pub fn kek(&self, version: u32) -> Option<Zeroizing<[u8; KEY_LEN]>> {
        let copy = |v: &Versions| v.keys.get(&version).map(|k| Zeroizing::new(*k.bytes()));
        if let Some(k) = copy(&self.read()) {
            return Some(k);
        }
        // File timestamps are coarse (a few milliseconds): a version written by another
        // process within the same tick as the last reload leaves the stamp unchanged, so a
        // version still unknown after the cheap check is worth one real read of the file.
        if !self.reload_if_changed() && self.file.is_some() {
            if let Err(e) = self.reload_now() {
                tracing::error!(error = %e, "cannot re-read the keyring file");
            }
        }
        copy(&self.read())
    }

    /// Derives a purpose-bound 256-bit subkey from one master-key version (HKDF-SHA-256).
    /// `purpose` must be a fixed label, never attacker-chosen data.
    pub fn derive(&self, version: u32, purpose: &str) -> Option<Zeroizing<[u8; KEY_LEN]>> {
        let master = self.kek(version)?;
        let hk = Hkdf::<Sha256>::new(Some(b"hazina/keyring/v1"), master.as_ref());
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        hk.expand(purpose.as_bytes(), out.as_mut()).ok()?;
        Some(out)
    }

    /// Re-reads the keyring file if it changed since it was loaded. A file that became
    /// unreadable or invalid is ignored (the keys in memory stay) and logged.
    pub fn reload_if_changed(&self) -> bool {
        let Some(path) = &self.file else {
            return false;
        };
        let current = mtime(path);
        let mut loaded = self.loaded_mtime.lock().unwrap_or_else(|p| p.into_inner());
        if current == *loaded {
            return false;
        }
        match read_file(path) {
            Ok(fresh) => {
                *self.write() = fresh;
                *loaded = current;
                tracing::info!(path = %path.display(), "keyring file changed: reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "keyring file changed but cannot be loaded; keeping the keys in memory");
                false
            }
        }
    }

    /// Re-reads the keyring file now, whatever its modification time says. Callers that are
    /// about to rewrite the file do this inside the database's key lock, so they never write
    /// back a stale copy that drops a version another process added.
    pub fn reload_now(&self) -> Result<(), KeyringError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let mut loaded = self.loaded_mtime.lock().unwrap_or_else(|p| p.into_inner());
        let current = mtime(path);
        *self.write() = read_file(path)?;
        *loaded = current;
        Ok(())
    }

    /// Adds a fresh random version, makes it active, and rewrites the keyring file
    /// atomically (a 0600 temporary file renamed over it). File-backed keyrings only.
    ///
    /// Only `repo::keys` calls this, inside the database's key lock and after
    /// [`reload_now`](Self::reload_now): the database decides, the file follows.
    pub fn add_version(&self) -> Result<u32, KeyringError> {
        let path = self.file.clone().ok_or(KeyringError::NotAFile)?;
        self.reload_now()?;
        let mut v = self.write();
        let next = v.keys.keys().max().copied().unwrap_or(0) + 1;
        v.keys.insert(next, MasterKey::generate());
        let previous = v.active;
        v.active = next;
        if let Err(e) = write_file(&v, &path, true) {
            v.keys.remove(&next);
            v.active = previous;
            return Err(e);
        }
        *self.loaded_mtime.lock().unwrap_or_else(|p| p.into_inner()) = mtime(&path);
        Ok(next)
    }

    /// Takes back a version [`add_version`](Self::add_version) just added, when the database
    /// decision it was written for did not commit: the key goes, and the version active
    /// before becomes active again. Nothing can have been sealed under it.
    pub fn undo_add(&self, version: u32, previous_active: u32) -> Result<(), KeyringError> {
        let path = self.file.clone().ok_or(KeyringError::NotAFile)?;
        self.reload_now()?;
        let mut v = self.write();
        if v.active != version || !v.keys.contains_key(&previous_active) {
            return Err(KeyringError::Malformed(
                "the keyring changed since the version was added",
            ));
        }
        let Some(removed) = v.keys.remove(&version) else {
            return Err(KeyringError::Malformed("no such key version"));
        };
        v.active = previous_active;
        if let Err(e) = write_file(&v, &path, true) {
            v.keys.insert(version, removed);
            v.active = version;
            return Err(e);
        }
        *self.loaded_mtime.lock().unwrap_or_else(|p| p.into_inner()) = mtime(&path);
        Ok(())
    }

    /// Removes a version from the keyring file. The caller must first have proven that no
    /// stored row depends on it; the active version can never be retired.
    pub fn retire(&self, version: u32) -> Result<(), KeyringError> {
        let path = self.file.clone().ok_or(KeyringError::NotAFile)?;
        self.reload_now()?;
        let mut v = self.write();
        if v.active == version {
            return Err(KeyringError::Malformed(
                "the active version cannot be retired",
            ));
        }
        let Some(removed) = v.keys.remove(&version) else {
            return Err(KeyringError::Malformed("no such key version"));
        };
        if let Err(e) = write_file(&v, &path, true) {
            v.keys.insert(version, removed);
            return Err(e);
        }
        *self.loaded_mtime.lock().unwrap_or_else(|p| p.into_inner()) = mtime(&path);
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<Versions, KeyringError> {
    let io = |source| KeyringError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(io)?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(KeyringError::InsecurePermissions(path.to_owned()));
    }
    let text = Zeroizing::new(fs::read_to_string(path).map_err(io)?);
    parse(&text)
}

fn parse(text: &str) -> Result<Versions, KeyringError> {
    let file: KeyringFile = serde_json::from_str(text)
        .map_err(|_| KeyringError::Malformed("not valid keyring JSON"))?;
    let mut keys = BTreeMap::new();
    for (version, encoded) in &file.keys {
        if *version == 0 || *version > i32::MAX as u32 {
            return Err(KeyringError::Malformed(
                "key versions must be positive integers",
            ));
        }
        let raw = Zeroizing::new(
            B64.decode(encoded.as_bytes())
                .map_err(|_| KeyringError::Malformed("a key is not valid base64"))?,
        );
        if raw.len() != KEY_LEN {
            return Err(KeyringError::Malformed(
                "every key must be exactly 32 bytes",
            ));
        }
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        k.copy_from_slice(&raw);
        keys.insert(*version, MasterKey(k));
    }
    if !keys.contains_key(&file.active) {
        return Err(KeyringError::Malformed("the active version has no key"));
    }
    Ok(Versions {
        active: file.active,
        keys,
    })
}

/// Writes `v` to `path` with mode 0600: a new file (`replace = false`, never overwriting), or
/// atomically over an existing one (temporary file, fsync, rename, fsync of the directory).
fn write_file(v: &Versions, path: &Path, replace: bool) -> Result<(), KeyringError> {
    let io = |source| KeyringError::Io {
        path: path.to_owned(),
        source,
    };
    let file = KeyringFile {
        active: v.active,
        keys: v
            .keys
            .iter()
            .map(|(n, k)| (*n, B64.encode(k.bytes())))
            .collect(),
    };
    let text = Zeroizing::new(
        serde_json::to_string_pretty(&file)
            .map_err(|_| KeyringError::Malformed("unserialisable"))?,
    );
    let target = if replace {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(
            ".tmp-{}-{:016x}",
            std::process::id(),
            OsRng.next_u64()
        ));
        PathBuf::from(tmp)
    } else {
        path.to_owned()
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&target)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists && !replace {
                KeyringError::AlreadyExists(path.to_owned())
            } else {
                io(e)
            }
        })?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    if replace {
        fs::rename(&target, path).map_err(io)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyring_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        Keyring::generate().write_new_file(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Keyring::load_file(&path),
            Err(KeyringError::InsecurePermissions(_))
        ));
    }

    #[test]
    fn a_keyring_file_written_by_hazina_is_0600_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let original = Keyring::generate();
        original.write_new_file(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = Keyring::load_file(&path).unwrap();
        assert_eq!(loaded.active_version(), 1);
        assert_eq!(*loaded.kek(1).unwrap(), *original.kek(1).unwrap());
    }

    #[test]
    fn an_existing_keyring_file_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        Keyring::generate().write_new_file(&path).unwrap();
        assert!(matches!(
            Keyring::generate().write_new_file(&path),
            Err(KeyringError::AlreadyExists(_))
        ));
    }

    #[test]
    fn malformed_keyrings_are_refused() {
        for bad in [
            "",
            "{}",
            r#"{"active":1,"keys":{}}"#,
            r#"{"active":1,"keys":{"1":"c2hvcnQ="}}"#,
            r#"{"active":2,"keys":{"1":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}}"#,
            r#"{"active":0,"keys":{"0":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}}"#,
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn debug_never_prints_key_bytes() {
        let k = Keyring::generate();
        let printed = format!("{k:?}");
        let b64 = B64.encode(*k.kek(1).unwrap());
        assert!(!printed.contains(&b64));
        assert!(printed.contains("REDACTED"));
    }

    #[test]
    fn adding_and_retiring_versions_rewrites_the_file_atomically_at_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        Keyring::generate().write_new_file(&path).unwrap();
        let k = Keyring::load_file(&path).unwrap();
        let before = k.kek(1).unwrap();

        assert_eq!(k.add_version().unwrap(), 2);
        assert_eq!(k.active_version(), 2);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let reread = Keyring::load_file(&path).unwrap();
        assert_eq!(reread.versions(), vec![1, 2]);
        assert_eq!(*reread.kek(1).unwrap(), *before);

        assert!(k.retire(2).is_err(), "the active version cannot be retired");
        k.retire(1).unwrap();
        assert_eq!(Keyring::load_file(&path).unwrap().versions(), vec![2]);
    }

    #[test]
    fn a_keyring_follows_its_file_when_another_process_adds_a_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        Keyring::generate().write_new_file(&path).unwrap();
        let server = Keyring::load_file(&path).unwrap();
        let cli = Keyring::load_file(&path).unwrap();
        // Make sure the modification time moves even on coarse-grained file systems.
        std::thread::sleep(std::time::Duration::from_millis(20));
        cli.add_version().unwrap();
        let k2 = cli.kek(2).unwrap();
        // The server meets version 2 in a row: it re-reads the file and finds it.
        assert_eq!(*server.kek(2).unwrap(), *k2);
        assert_eq!(server.read().active, 2);
    }

    #[test]
    fn an_inline_keyring_cannot_be_rotated_in_place() {
        let k = Keyring::generate();
        assert!(matches!(k.add_version(), Err(KeyringError::NotAFile)));
    }

    #[test]
    fn derived_keys_differ_by_purpose_and_version() {
        let k = Keyring::generate();
        k.write().keys.insert(2, MasterKey::generate());
        let a = k.derive(1, "a").unwrap();
        let b = k.derive(1, "b").unwrap();
        let a2 = k.derive(2, "a").unwrap();
        assert_ne!(*a, *b);
        assert_ne!(*a, *a2);
        assert_eq!(*a, *k.derive(1, "a").unwrap());
        assert!(k.derive(3, "a").is_none());
    }
}
