//! MACs over authorization rows (SPEC §11): what a database writer would edit to gain access.
//!
//! A user's role, password hash, disabled flag and allowlist; a service's name, identity and
//! enabled flag; a grant's service, owner, scope, operations and revocation — each row carries
//! `HMAC-SHA-256(K_v, encoding)` with `K_v = HKDF(master key v, "hazina/row-mac/v1")` and the
//! version `v` beside it. Every use checks the MAC first; a row edited in the database (or
//! inserted without the keyring) fails, and is refused and audited, never obeyed.
//!
//! The encoding is unambiguous: a tag per row kind, then every field as a tagged,
//! length-prefixed value, so no edit of one field can be balanced by another. A change made
//! by hazina verifies the row's current MAC before it writes the new one, so a tampered row is
//! never re-signed ("laundered") by a later legitimate change.
//!
//! **Format 2** (SPEC §14) adds the row's *generation* (the audit entry of its last change,
//! `audit::generation`) to every encoding, and covers sessions, a credential's state and key
//! wear too. Only format 2 is accepted on use; format 1 is read once, by the one-time upgrade
//! (`repo::integrity`), which re-signs the rows whose format-1 MAC still verifies. A row written
//! back from before the upgrade therefore never verifies again.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::Keyring;

const PURPOSE: &str = "hazina/row-mac/v1";

/// The encoding version of [`sign`]; [`verify_format1`] reads the one before.
const FORMAT2: &[u8] = b"hazina/row-mac/v2\0";
const FORMAT1: &[u8] = b"hazina/row-mac/v1\0";

/// The fields of one authorization row, as they are covered by its MAC.
#[derive(Debug, Clone, Copy)]
pub enum Row<'a> {
    User {
        id: i64,
        username: &'a str,
        password_hash: &'a str,
        role: &'a str,
        is_disabled: bool,
        allowed_cidrs: Option<&'a str>,
        generation: i64,
    },
    Service {
        id: i64,
        name: &'a str,
        identity: &'a str,
        is_enabled: bool,
        allowed_cidrs: Option<&'a str>,
        generation: i64,
    },
    Grant {
        id: i64,
        service_id: i64,
        owner_id: i64,
        provider: Option<&'a str>,
        environment: Option<&'a str>,
        revoked_at: Option<i64>,
        /// Canonical (sorted, comma-separated) operations the grant allows.
        operations: &'a str,
        generation: i64,
    },
    /// A provider's public certificate (SPEC §9.2).
    ProviderCertificate {
        provider: &'a str,
        environment: &'a str,
        pem: &'a str,
        sha256: &'a str,
        subject: &'a str,
        not_before: i64,
        not_after: i64,
        updated_at: i64,
        updated_by: &'a str,
        generation: i64,
    },
    /// A session: whose it is, which refresh token is next, until when, whether revoked.
    Session {
        id: &'a str,
        user_id: i64,
        refresh_jti: &'a str,
        created_at: i64,
        expires_at: i64,
        revoked_at: Option<i64>,
        generation: i64,
    },
    /// A credential's state: what a reveal, an operation or a toggle believes.
    Credential {
        id: i64,
        owner_id: i64,
        provider: &'a str,
        environment: &'a str,
        api_key: Option<&'a str>,
        is_active: bool,
        current_version: i32,
        deleted_at: Option<i64>,
        /// When the current version was written (the webhook grace window runs from it);
        /// `None` once the versions are shredded.
        version_created_at: Option<i64>,
        generation: i64,
    },
    /// How many data keys a master-key version has wrapped.
    KeyWear {
        kek_version: i32,
        encryptions: i64,
        generation: i64,
    },
    /// The marker that the database's rows carry generations (`repo::integrity`).
    Marker { format: i32, marked_at: i64 },
}

/// The operations every grant allowed before grants named them (and the MAC encoding of a
/// grant that allows exactly these, which is the encoding grants had then).
pub const LEGACY_GRANT_OPERATIONS: &str = "reveal";

struct Encoder(Vec<u8>);

impl Encoder {
    fn int(&mut self, v: i64) {
        self.0.push(b'i');
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn text(&mut self, v: Option<&str>) {
        match v {
            None => self.0.push(b'n'),
            Some(s) => {
                self.0.push(b's');
                self.0.extend_from_slice(&(s.len() as u64).to_be_bytes());
                self.0.extend_from_slice(s.as_bytes());
            }
        }
    }
    fn opt_int(&mut self, v: Option<i64>) {
        match v {
            None => self.0.push(b'n'),
            Some(n) => self.int(n),
        }
    }
    fn flag(&mut self, v: bool) {
        self.0.push(if v { b't' } else { b'f' });
    }
}

impl Row<'_> {
    fn encode(&self) -> Vec<u8> {
        self.encode_as(FORMAT2).unwrap_or_default()
    }

    /// The encoding in `format`; `None` for a row kind format 1 did not sign.
    fn encode_as(&self, format: &[u8]) -> Option<Vec<u8>> {
        let v2 = format == FORMAT2;
        let mut e = Encoder(Vec::with_capacity(192));
        e.0.extend_from_slice(format);
        let generation = match *self {
            Row::User {
                id,
                username,
                password_hash,
                role,
                is_disabled,
                allowed_cidrs,
                generation,
            } => {
                e.0.extend_from_slice(b"user\0");
                e.int(id);
                e.text(Some(username));
                e.text(Some(password_hash));
                e.text(Some(role));
                e.flag(is_disabled);
                e.text(allowed_cidrs);
                generation
            }
            Row::Service {
                id,
                name,
                identity,
                is_enabled,
                allowed_cidrs,
                generation,
            } => {
                e.0.extend_from_slice(b"service\0");
                e.int(id);
                e.text(Some(name));
                e.text(Some(identity));
                e.flag(is_enabled);
                e.text(allowed_cidrs);
                generation
            }
            Row::Grant {
                id,
                service_id,
                owner_id,
                provider,
                environment,
                revoked_at,
                operations,
                generation,
            } => {
                e.0.extend_from_slice(b"grant\0");
                e.int(id);
                e.int(service_id);
                e.int(owner_id);
                e.text(provider);
                e.text(environment);
                e.opt_int(revoked_at);
                // Grants from before operations allowed reveal alone and were signed without
                // this field; they verify unchanged. Any other set is a further tagged field
                // (the encoding is prefix-free, so the two forms never collide).
                if operations != LEGACY_GRANT_OPERATIONS {
                    e.0.extend_from_slice(b"\x02operations");
                    e.text(Some(operations));
                }
                generation
            }
            Row::ProviderCertificate {
                provider,
                environment,
                pem,
                sha256,
                subject,
                not_before,
                not_after,
                updated_at,
                updated_by,
                generation,
            } => {
                e.0.extend_from_slice(b"provider_certificate\0");
                e.text(Some(provider));
                e.text(Some(environment));
                e.text(Some(pem));
                e.text(Some(sha256));
                e.text(Some(subject));
                e.int(not_before);
                e.int(not_after);
                e.int(updated_at);
                e.text(Some(updated_by));
                generation
            }
            Row::Session {
                id,
                user_id,
                refresh_jti,
                created_at,
                expires_at,
                revoked_at,
                generation,
            } if v2 => {
                e.0.extend_from_slice(b"session\0");
                e.text(Some(id));
                e.int(user_id);
                e.text(Some(refresh_jti));
                e.int(created_at);
                e.int(expires_at);
                e.opt_int(revoked_at);
                generation
            }
            Row::Credential {
                id,
                owner_id,
                provider,
                environment,
                api_key,
                is_active,
                current_version,
                deleted_at,
                version_created_at,
                generation,
            } if v2 => {
                e.0.extend_from_slice(b"credential\0");
                e.int(id);
                e.int(owner_id);
                e.text(Some(provider));
                e.text(Some(environment));
                e.text(api_key);
                e.flag(is_active);
                e.int(i64::from(current_version));
                e.opt_int(deleted_at);
                e.opt_int(version_created_at);
                generation
            }
            Row::KeyWear {
                kek_version,
                encryptions,
                generation,
            } if v2 => {
                e.0.extend_from_slice(b"key_wear\0");
                e.int(i64::from(kek_version));
                e.int(encryptions);
                generation
            }
            Row::Marker { format, marked_at } if v2 => {
                e.0.extend_from_slice(b"integrity_marker\0");
                e.int(i64::from(format));
                e.int(marked_at);
                0
            }
            _ => return None,
        };
        if v2 {
            e.0.extend_from_slice(b"\x03generation");
            e.int(generation);
        }
        Some(e.0)
    }
}

fn mac_of(keyring: &Keyring, version: u32, encoded: &[u8]) -> Option<Vec<u8>> {
    let key = keyring.derive(version, PURPOSE)?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_ref()).ok()?;
    mac.update(encoded);
    Some(mac.finalize().into_bytes().to_vec())
}

/// The MAC of `row` (format 2) under master-key version `version`; `None` if the keyring
/// lacks it.
pub fn sign(keyring: &Keyring, version: u32, row: &Row<'_>) -> Option<Vec<u8>> {
    mac_of(keyring, version, &row.encode())
}

fn check(
    keyring: &Keyring,
    version: Option<i32>,
    mac: Option<&[u8]>,
    encoded: Option<Vec<u8>>,
) -> bool {
    let (Some(version), Some(mac), Some(encoded)) = (version, mac, encoded) else {
        return false;
    };
    let Some(expected) = u32::try_from(version)
        .ok()
        .and_then(|v| mac_of(keyring, v, &encoded))
    else {
        return false;
    };
    bool::from(expected.ct_eq(mac))
}

/// Whether `mac`, made under `version`, is `row`'s format-2 MAC. A missing MAC or version, or
/// one the keyring does not hold, is not.
pub fn verify(keyring: &Keyring, version: Option<i32>, mac: Option<&[u8]>, row: &Row<'_>) -> bool {
    check(keyring, version, mac, row.encode_as(FORMAT2))
}

/// The MAC the previous release made of `row` (format 1, before generations). Nothing in
/// hazina signs with it; the upgrade tests build a previous release's database with it.
pub fn sign_format1(keyring: &Keyring, version: u32, row: &Row<'_>) -> Option<Vec<u8>> {
    mac_of(keyring, version, &row.encode_as(FORMAT1)?)
}

/// Whether `mac` is `row`'s MAC in format 1 (before generations), for the one-time upgrade
/// only: nothing else ever accepts it.
pub fn verify_format1(
    keyring: &Keyring,
    version: Option<i32>,
    mac: Option<&[u8]>,
    row: &Row<'_>,
) -> bool {
    check(keyring, version, mac, row.encode_as(FORMAT1))
}

/// What a row's integrity check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// As hazina last wrote it, and the latest the audit log knows.
    Intact,
    /// Its MAC does not verify: edited (or inserted) outside hazina.
    Tampered,
    /// A genuine row, but an older one than the audit log's latest change of it: written
    /// back from a backup, a dump or a WAL.
    Replayed,
}

impl Verdict {
    /// The verdict on a row whose MAC check gave `mac_ok`, of `generation`, when the latest
    /// audit entry naming it is `latest`.
    pub fn of(mac_ok: bool, generation: i64, latest: Option<i64>) -> Self {
        if !mac_ok {
            Verdict::Tampered
        } else if latest.unwrap_or(0) == generation {
            Verdict::Intact
        } else {
            Verdict::Replayed
        }
    }

    pub fn is_intact(self) -> bool {
        self == Verdict::Intact
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: &str) -> Row<'_> {
        Row::User {
            id: 7,
            username: "amina",
            password_hash: "$argon2id$...",
            role,
            is_disabled: false,
            allowed_cidrs: None,
            generation: 3,
        }
    }

    #[test]
    fn a_signed_row_verifies_and_any_edit_does_not() {
        let k = Keyring::generate();
        let mac = sign(&k, 1, &user("user")).unwrap();
        assert!(verify(&k, Some(1), Some(&mac), &user("user")));
        assert!(!verify(&k, Some(1), Some(&mac), &user("admin")));
        assert!(!verify(&k, Some(2), Some(&mac), &user("user")));
        assert!(!verify(&k, Some(1), None, &user("user")));
        assert!(!verify(
            &Keyring::generate(),
            Some(1),
            Some(&mac),
            &user("user")
        ));
    }

    #[test]
    fn fields_cannot_be_shifted_between_each_other() {
        let a = Row::Grant {
            id: 1,
            service_id: 2,
            owner_id: 3,
            provider: Some("mpesa"),
            environment: None,
            revoked_at: None,
            operations: "reveal",
            generation: 0,
        };
        let b = Row::Grant {
            id: 1,
            service_id: 2,
            owner_id: 3,
            provider: None,
            environment: Some("mpesa"),
            revoked_at: None,
            operations: "reveal",
            generation: 0,
        };
        assert_ne!(a.encode(), b.encode());
        let wider = Row::Grant {
            id: 1,
            service_id: 2,
            owner_id: 3,
            provider: Some("mpesa"),
            environment: None,
            revoked_at: None,
            operations: "reveal,stk-password",
            generation: 0,
        };
        assert_ne!(a.encode(), wider.encode());
    }

    #[test]
    fn a_row_of_another_generation_or_format_does_not_verify() {
        let k = Keyring::generate();
        let mac = sign(&k, 1, &user("user")).unwrap();
        let older = Row::User {
            id: 7,
            username: "amina",
            password_hash: "$argon2id$...",
            role: "user",
            is_disabled: false,
            allowed_cidrs: None,
            generation: 2,
        };
        assert!(!verify(&k, Some(1), Some(&mac), &older));
        assert!(!verify_format1(&k, Some(1), Some(&mac), &user("user")));
        let v1 = mac_of(&k, 1, &user("user").encode_as(FORMAT1).unwrap()).unwrap();
        assert!(verify_format1(&k, Some(1), Some(&v1), &older));
        assert!(!verify(&k, Some(1), Some(&v1), &user("user")));
    }
}
