//! Envelope encryption of one credential version.
//!
//! `seal` draws a fresh DEK, seals the secret under it with AES-256-GCM, wraps the DEK under
//! the active master key with AES-256-GCM, and computes the keyed verifier. `open` and
//! `verify` reverse it. Both ciphertexts carry [`Aad`], so a blob copied into another row,
//! owner, environment or version fails authentication.
//!
//! Stored layout (format 1), each column on its own:
//! - `wrapped_dek` = nonce (12) ‖ AES-GCM(KEK, DEK, aad = "dek" ‖ kek_version ‖ binding) (48)
//! - `ciphertext`  = nonce (12) ‖ AES-GCM(DEK, secret, aad = "secret" ‖ binding)
//! - `verifier`    = HMAC-SHA-256(HKDF(DEK, "verifier"), binding ‖ secret) (32)

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::keyring::{Keyring, KEY_LEN};

/// The envelope format this build writes.
pub const FORMAT_V1: i32 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("the master-key version {0} is not in the keyring")]
    UnknownKeyVersion(i32),
    #[error("unsupported envelope format {0}")]
    UnsupportedFormat(i32),
    #[error("ciphertext failed authentication")]
    Authentication,
    #[error("envelope is malformed")]
    Malformed,
}

/// What a ciphertext is bound to. Every field goes into the associated data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aad<'a> {
    pub owner_id: i64,
    pub credential_id: i64,
    pub provider: &'a str,
    pub environment: &'a str,
    pub version: i32,
}

impl Aad<'_> {
    /// Unambiguous encoding: fixed-width integers and length-prefixed strings.
    fn encode(&self, domain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(b"hazina/envelope/v1/");
        out.extend_from_slice(domain);
        out.push(0);
        out.extend_from_slice(&self.owner_id.to_be_bytes());
        out.extend_from_slice(&self.credential_id.to_be_bytes());
        for s in [self.provider, self.environment] {
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(&self.version.to_be_bytes());
        out
    }
}

/// One sealed credential version, as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    pub format: i32,
    pub kek_version: i32,
    pub wrapped_dek: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub verifier: Vec<u8>,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("format", &self.format)
            .field("kek_version", &self.kek_version)
            .finish_non_exhaustive()
    }
}

type Dek = Zeroizing<[u8; KEY_LEN]>;

fn aead_seal(key: &[u8; KEY_LEN], msg: &[u8], aad: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let cipher = Aes256Gcm::new(key.into());
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg, aad })
        .map_err(|_| EnvelopeError::Malformed)?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

fn aead_open(
    key: &[u8; KEY_LEN],
    blob: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    if blob.len() < NONCE_LEN + TAG_LEN {
        return Err(EnvelopeError::Malformed);
    }
    let (nonce, ct) = blob.split_at(NONCE_LEN);
    let cipher = Aes256Gcm::new(key.into());
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map(Zeroizing::new)
        .map_err(|_| EnvelopeError::Authentication)
}

fn kek_version_u32(v: i32) -> Result<u32, EnvelopeError> {
    u32::try_from(v).map_err(|_| EnvelopeError::UnknownKeyVersion(v))
}

fn dek_aad(aad: &Aad<'_>, kek_version: i32) -> Vec<u8> {
    let mut out = aad.encode(b"dek");
    out.extend_from_slice(&kek_version.to_be_bytes());
    out
}

fn wrap_dek(
    keyring: &Keyring,
    kek_version: i32,
    dek: &Dek,
    aad: &Aad<'_>,
) -> Result<Vec<u8>, EnvelopeError> {
    let kek = keyring
        .kek(kek_version_u32(kek_version)?)
        .ok_or(EnvelopeError::UnknownKeyVersion(kek_version))?;
    aead_seal(&kek, dek.as_ref(), &dek_aad(aad, kek_version))
}

fn unwrap_dek(keyring: &Keyring, env: &Envelope, aad: &Aad<'_>) -> Result<Dek, EnvelopeError> {
    if env.format != FORMAT_V1 {
        return Err(EnvelopeError::UnsupportedFormat(env.format));
    }
    let kek = keyring
        .kek(kek_version_u32(env.kek_version)?)
        .ok_or(EnvelopeError::UnknownKeyVersion(env.kek_version))?;
    let raw = aead_open(&kek, &env.wrapped_dek, &dek_aad(aad, env.kek_version))?;
    if raw.len() != KEY_LEN {
        return Err(EnvelopeError::Malformed);
    }
    let mut dek = Zeroizing::new([0u8; KEY_LEN]);
    dek.copy_from_slice(&raw);
    Ok(dek)
}

fn verifier_mac(dek: &Dek, aad: &Aad<'_>) -> Hmac<Sha256> {
    // A full-block (64-byte) HMAC key, derived from the DEK; 64 bytes is a valid HKDF output.
    let hk = Hkdf::<Sha256>::new(None, dek.as_ref());
    let mut vk = Zeroizing::new([0u8; 64]);
    let _ = hk.expand(b"hazina/verifier/v1", vk.as_mut());
    let mut mac = <Hmac<Sha256> as KeyInit>::new((&*vk).into());
    mac.update(&aad.encode(b"verifier"));
    mac
}

/// Seals `secret` for `aad` under the keyring's active master key (tests, benchmarks and the
/// seeding tool; the vault itself seals under the version its database names active, with
/// [`seal_under`]).
pub fn seal(
    keyring: &Keyring,
    aad: &Aad<'_>,
    secret: &SecretString,
) -> Result<Envelope, EnvelopeError> {
    let kek_version =
        i32::try_from(keyring.active_version()).map_err(|_| EnvelopeError::Malformed)?;
    seal_under(keyring, kek_version, aad, secret)
}

/// Seals `secret` for `aad`, wrapping its fresh DEK under master-key version `kek_version`.
pub fn seal_under(
    keyring: &Keyring,
    kek_version: i32,
    aad: &Aad<'_>,
    secret: &SecretString,
) -> Result<Envelope, EnvelopeError> {
    let mut dek: Dek = Zeroizing::new([0u8; KEY_LEN]);
    OsRng.fill_bytes(dek.as_mut());
    let plaintext = secret.expose_secret().as_bytes();
    let ciphertext = aead_seal(&dek, plaintext, &aad.encode(b"secret"))?;
    let wrapped_dek = wrap_dek(keyring, kek_version, &dek, aad)?;
    let mut mac = verifier_mac(&dek, aad);
    mac.update(plaintext);
    Ok(Envelope {
        format: FORMAT_V1,
        kek_version,
        wrapped_dek,
        ciphertext,
        verifier: mac.finalize().into_bytes().to_vec(),
    })
}

/// Opens the secret of `env`, which must have been sealed for exactly `aad`.
pub fn open(
    keyring: &Keyring,
    aad: &Aad<'_>,
    env: &Envelope,
) -> Result<SecretString, EnvelopeError> {
    let dek = unwrap_dek(keyring, env, aad)?;
    let mut plain = aead_open(&dek, &env.ciphertext, &aad.encode(b"secret"))?;
    let text = String::from_utf8(std::mem::take(&mut *plain)).map_err(|e| {
        let mut bytes = e.into_bytes();
        zeroize::Zeroize::zeroize(&mut bytes);
        EnvelopeError::Malformed
    })?;
    Ok(SecretString::from(text))
}

/// Whether `candidate` is the sealed secret, by MAC comparison in constant time; the secret
/// itself is never decrypted.
pub fn verify(
    keyring: &Keyring,
    aad: &Aad<'_>,
    env: &Envelope,
    candidate: &SecretString,
) -> Result<bool, EnvelopeError> {
    let dek = unwrap_dek(keyring, env, aad)?;
    let mut mac = verifier_mac(&dek, aad);
    mac.update(candidate.expose_secret().as_bytes());
    Ok(mac.verify_slice(&env.verifier).is_ok())
}

/// Whether the keyring opens the wrapped DEK of `env` (the DEK itself is wiped at once).
pub fn check_dek(keyring: &Keyring, aad: &Aad<'_>, env: &Envelope) -> Result<(), EnvelopeError> {
    unwrap_dek(keyring, env, aad).map(drop)
}

/// The DEK of `env` wrapped under `new_kek_version` instead: only the wrapped key is read
/// (the secret ciphertext is neither needed nor touched).
pub fn rewrap_dek(
    keyring: &Keyring,
    aad: &Aad<'_>,
    env: &Envelope,
    new_kek_version: i32,
) -> Result<Vec<u8>, EnvelopeError> {
    let dek = unwrap_dek(keyring, env, aad)?;
    wrap_dek(keyring, new_kek_version, &dek, aad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    fn aad() -> Aad<'static> {
        Aad {
            owner_id: 7,
            credential_id: 42,
            provider: "kopokopo",
            environment: "sandbox",
            version: 1,
        }
    }

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn round_trip_returns_the_sealed_secret() {
        let k = Keyring::generate();
        let env = seal(&k, &aad(), &secret("sk_live_canary_123")).unwrap();
        assert_eq!(env.format, FORMAT_V1);
        assert_eq!(env.kek_version, 1);
        let opened = open(&k, &aad(), &env).unwrap();
        assert_eq!(opened.expose_secret(), "sk_live_canary_123");
    }

    #[test]
    fn ciphertext_does_not_contain_the_plaintext() {
        let k = Keyring::generate();
        let env = seal(&k, &aad(), &secret("PLAINTEXT-CANARY")).unwrap();
        let hay = [env.ciphertext.as_slice(), &env.wrapped_dek, &env.verifier].concat();
        assert!(!hay.windows(16).any(|w| w == b"PLAINTEXT-CANARY"));
    }

    #[test]
    fn every_field_of_the_binding_is_authenticated() {
        let k = Keyring::generate();
        let env = seal(&k, &aad(), &secret("sk_live_canary_123")).unwrap();
        let variants = [
            Aad {
                owner_id: 8,
                ..aad()
            },
            Aad {
                credential_id: 43,
                ..aad()
            },
            Aad {
                provider: "mpesa",
                ..aad()
            },
            Aad {
                environment: "live",
                ..aad()
            },
            Aad {
                version: 2,
                ..aad()
            },
        ];
        for wrong in variants {
            assert_eq!(
                open(&k, &wrong, &env).err(),
                Some(EnvelopeError::Authentication),
                "{wrong:?}"
            );
            assert_eq!(
                verify(&k, &wrong, &env, &secret("sk_live_canary_123")),
                Err(EnvelopeError::Authentication)
            );
        }
    }

    #[test]
    fn an_unknown_key_version_is_refused() {
        let k = Keyring::generate();
        let mut env = seal(&k, &aad(), &secret("sk_live_canary_123")).unwrap();
        env.kek_version = 2;
        assert_eq!(
            open(&k, &aad(), &env).err(),
            Some(EnvelopeError::UnknownKeyVersion(2))
        );
        env.kek_version = -1;
        assert_eq!(
            open(&k, &aad(), &env).err(),
            Some(EnvelopeError::UnknownKeyVersion(-1))
        );
    }

    #[test]
    fn another_keyring_cannot_open() {
        let env = seal(&Keyring::generate(), &aad(), &secret("sk_live_canary_123")).unwrap();
        assert_eq!(
            open(&Keyring::generate(), &aad(), &env).err(),
            Some(EnvelopeError::Authentication)
        );
    }

    #[test]
    fn a_flipped_bit_anywhere_fails_to_open() {
        let k = Keyring::generate();
        let env = seal(&k, &aad(), &secret("sk_live_canary_123")).unwrap();
        for i in 0..env.ciphertext.len() {
            let mut bad = env.clone();
            bad.ciphertext[i] ^= 0x01;
            assert_eq!(
                open(&k, &aad(), &bad).err(),
                Some(EnvelopeError::Authentication)
            );
        }
        for i in 0..env.wrapped_dek.len() {
            let mut bad = env.clone();
            bad.wrapped_dek[i] ^= 0x80;
            assert_eq!(
                open(&k, &aad(), &bad).err(),
                Some(EnvelopeError::Authentication)
            );
        }
    }

    #[test]
    fn truncated_blobs_and_unknown_formats_are_refused() {
        let k = Keyring::generate();
        let env = seal(&k, &aad(), &secret("sk_live_canary_123")).unwrap();
        let mut short = env.clone();
        short.ciphertext.truncate(10);
        assert_eq!(
            open(&k, &aad(), &short).err(),
            Some(EnvelopeError::Malformed)
        );
        let mut future = env.clone();
        future.format = 2;
        assert_eq!(
            open(&k, &aad(), &future).err(),
            Some(EnvelopeError::UnsupportedFormat(2))
        );
    }

    #[test]
    fn each_seal_uses_a_fresh_data_key_and_nonce() {
        let k = Keyring::generate();
        let a = seal(&k, &aad(), &secret("sk_live_canary_123")).unwrap();
        let b = seal(&k, &aad(), &secret("sk_live_canary_123")).unwrap();
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_ne!(a.wrapped_dek, b.wrapped_dek);
        assert_ne!(a.verifier, b.verifier);
    }

    #[test]
    fn the_verifier_accepts_the_key_and_rejects_others() {
        let k = Keyring::generate();
        let env = seal(&k, &aad(), &secret("sk_live_canary_123")).unwrap();
        assert!(verify(&k, &aad(), &env, &secret("sk_live_canary_123")).unwrap());
        assert!(!verify(&k, &aad(), &env, &secret("sk_live_canary_124")).unwrap());
        assert!(!verify(&k, &aad(), &env, &secret("")).unwrap());
    }

    #[test]
    fn the_verifier_is_not_a_bare_hash_of_the_key() {
        let k = Keyring::generate();
        let env = seal(&k, &aad(), &secret("sk_live_canary_123")).unwrap();
        let bare = sha2::Sha256::digest(b"sk_live_canary_123");
        assert_ne!(env.verifier.as_slice(), bare.as_slice());
        assert_eq!(env.verifier.len(), 32);
    }

    #[test]
    fn rewrap_changes_only_the_wrapped_key() {
        let mut ring_json = String::from(r#"{"active":2,"keys":{"#);
        ring_json.push_str(r#""1":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=","#);
        ring_json.push_str(r#""2":"AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="}}"#);
        let two = Keyring::from_secret(&SecretString::from(ring_json)).unwrap();
        let one = Keyring::from_secret(&SecretString::from(
            r#"{"active":1,"keys":{"1":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}}"#
                .to_owned(),
        ))
        .unwrap();
        let env = seal(&one, &aad(), &secret("sk_live_canary_123")).unwrap();
        let moved = Envelope {
            kek_version: 2,
            wrapped_dek: rewrap_dek(&two, &aad(), &env, 2).unwrap(),
            ..env.clone()
        };
        assert_eq!(moved.kek_version, 2);
        assert_eq!(moved.ciphertext, env.ciphertext);
        assert_ne!(moved.wrapped_dek, env.wrapped_dek);
        assert_eq!(
            open(&two, &aad(), &moved).unwrap().expose_secret(),
            "sk_live_canary_123"
        );
    }
}
