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

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::Keyring;

const PURPOSE: &str = "hazina/row-mac/v1";

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
    },
    Service {
        id: i64,
        name: &'a str,
        identity: &'a str,
        is_enabled: bool,
        allowed_cidrs: Option<&'a str>,
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
    },
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
        let mut e = Encoder(Vec::with_capacity(192));
        e.0.extend_from_slice(b"hazina/row-mac/v1\0");
        match *self {
            Row::User {
                id,
                username,
                password_hash,
                role,
                is_disabled,
                allowed_cidrs,
            } => {
                e.0.extend_from_slice(b"user\0");
                e.int(id);
                e.text(Some(username));
                e.text(Some(password_hash));
                e.text(Some(role));
                e.flag(is_disabled);
                e.text(allowed_cidrs);
            }
            Row::Service {
                id,
                name,
                identity,
                is_enabled,
                allowed_cidrs,
            } => {
                e.0.extend_from_slice(b"service\0");
                e.int(id);
                e.text(Some(name));
                e.text(Some(identity));
                e.flag(is_enabled);
                e.text(allowed_cidrs);
            }
            Row::Grant {
                id,
                service_id,
                owner_id,
                provider,
                environment,
                revoked_at,
                operations,
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
            }
        }
        e.0
    }
}

/// The MAC of `row` under master-key version `version`; `None` if the keyring lacks it.
pub fn sign(keyring: &Keyring, version: u32, row: &Row<'_>) -> Option<Vec<u8>> {
    let key = keyring.derive(version, PURPOSE)?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_ref()).ok()?;
    mac.update(&row.encode());
    Some(mac.finalize().into_bytes().to_vec())
}

/// Whether `mac`, made under `version`, is `row`'s MAC. A missing MAC or version, or one the
/// keyring does not hold, is not.
pub fn verify(keyring: &Keyring, version: Option<i32>, mac: Option<&[u8]>, row: &Row<'_>) -> bool {
    let (Some(version), Some(mac)) = (version, mac) else {
        return false;
    };
    let Some(expected) = u32::try_from(version)
        .ok()
        .and_then(|v| sign(keyring, v, row))
    else {
        return false;
    };
    bool::from(expected.ct_eq(mac))
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
        };
        let b = Row::Grant {
            id: 1,
            service_id: 2,
            owner_id: 3,
            provider: None,
            environment: Some("mpesa"),
            revoked_at: None,
            operations: "reveal",
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
        };
        assert_ne!(a.encode(), wider.encode());
    }
}
