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

/// Versioned master keys; exactly one is active for new writes.
#[derive(Debug)]
pub struct Keyring {
    active: u32,
    keys: BTreeMap<u32, MasterKey>,
}

impl Keyring {
    /// A keyring with one fresh random key, version 1.
    pub fn generate() -> Self {
        let mut keys = BTreeMap::new();
        keys.insert(1, MasterKey::generate());
        Keyring { active: 1, keys }
    }

    /// Loads a keyring file, refusing one that group or others can access.
    pub fn load_file(path: &Path) -> Result<Self, KeyringError> {
        let io = |source| KeyringError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = fs::metadata(path).map_err(io)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(KeyringError::InsecurePermissions(path.to_owned()));
        }
        let text = Zeroizing::new(fs::read_to_string(path).map_err(io)?);
        Self::parse(&text)
    }

    /// Parses the JSON form (file contents or `HAZINA_KEYRING_DATA`).
    pub fn from_secret(data: &SecretString) -> Result<Self, KeyringError> {
        Self::parse(data.expose_secret())
    }

    fn parse(text: &str) -> Result<Self, KeyringError> {
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
        Ok(Keyring {
            active: file.active,
            keys,
        })
    }

    /// Writes the keyring to a new file created with mode 0600; never overwrites.
    pub fn write_new_file(&self, path: &Path) -> Result<(), KeyringError> {
        let io = |source| KeyringError::Io {
            path: path.to_owned(),
            source,
        };
        let file = KeyringFile {
            active: self.active,
            keys: self
                .keys
                .iter()
                .map(|(v, k)| (*v, B64.encode(k.bytes())))
                .collect(),
        };
        let text = Zeroizing::new(
            serde_json::to_string_pretty(&file)
                .map_err(|_| KeyringError::Malformed("unserialisable"))?,
        );
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    KeyringError::AlreadyExists(path.to_owned())
                } else {
                    io(e)
                }
            })?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(())
    }

    pub fn active_version(&self) -> u32 {
        self.active
    }

    pub fn versions(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.keys().copied()
    }

    pub fn key(&self, version: u32) -> Option<&MasterKey> {
        self.keys.get(&version)
    }

    /// Derives a purpose-bound 256-bit subkey from one master-key version (HKDF-SHA-256).
    /// `purpose` must be a fixed label, never attacker-chosen data.
    pub fn derive(&self, version: u32, purpose: &str) -> Option<Zeroizing<[u8; KEY_LEN]>> {
        let master = self.keys.get(&version)?;
        let hk = Hkdf::<Sha256>::new(Some(b"hazina/keyring/v1"), master.bytes());
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        hk.expand(purpose.as_bytes(), out.as_mut()).ok()?;
        Some(out)
    }
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
        assert_eq!(
            loaded.key(1).unwrap().bytes(),
            original.key(1).unwrap().bytes()
        );
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
            assert!(Keyring::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn debug_never_prints_key_bytes() {
        let k = Keyring::generate();
        let printed = format!("{k:?}");
        let b64 = B64.encode(k.key(1).unwrap().bytes());
        assert!(!printed.contains(&b64));
        assert!(printed.contains("REDACTED"));
    }

    #[test]
    fn derived_keys_differ_by_purpose_and_version() {
        let mut k = Keyring::generate();
        k.keys.insert(2, MasterKey::generate());
        let a = k.derive(1, "a").unwrap();
        let b = k.derive(1, "b").unwrap();
        let a2 = k.derive(2, "a").unwrap();
        assert_ne!(*a, *b);
        assert_ne!(*a, *a2);
        assert_eq!(*a, *k.derive(1, "a").unwrap());
        assert!(k.derive(3, "a").is_none());
    }
}
