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
//!
//! Format 2 (a provider profile, SPEC §9.1) is the same with two differences: the sealed
//! plaintext is the JSON object `{"private_key": …, "secrets": {name: value}}`, and the
//! binding also carries the version's profile (the canonical JSON of which secrets are set and
//! of its settings), so a setting edited in the database fails authentication. The verifier
//! still covers `private_key` alone.

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

/// The envelope format of a private key alone.
pub const FORMAT_V1: i32 = 1;
/// The envelope format of a private key with a provider profile (secrets and settings).
pub const FORMAT_V2: i32 = 2;
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
    /// The version's profile (format 2 only): its canonical JSON, as stored.
    pub profile: Option<&'a str>,
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
        if let Some(profile) = self.profile {
            out.extend_from_slice(b"\x02profile");
            out.extend_from_slice(&(profile.len() as u32).to_be_bytes());
            out.extend_from_slice(profile.as_bytes());
        }
        out
    }

    fn format(&self) -> i32 {
        if self.profile.is_some() {
            FORMAT_V2
        } else {
            FORMAT_V1
        }
    }
}

/// Everything one version seals: the private key and the provider's named secrets.
pub struct Contents {
    pub private_key: SecretString,
    pub secrets: std::collections::BTreeMap<String, SecretString>,
}

impl std::fmt::Debug for Contents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contents")
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[derive(serde::Serialize)]
struct ContentsOut<'a> {
    private_key: &'a str,
    secrets: std::collections::BTreeMap<&'a str, &'a str>,
}

#[derive(serde::Deserialize)]
struct ContentsIn {
    private_key: String,
    secrets: std::collections::BTreeMap<String, String>,
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
    if env.format != FORMAT_V1 && env.format != FORMAT_V2 {
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
    if aad.profile.is_some() {
        return Err(EnvelopeError::Malformed);
    }
    seal_bytes(
        keyring,
        kek_version,
        aad,
        secret.expose_secret().as_bytes(),
        secret,
    )
}

/// Seals `contents` for `aad`: format 1 when there is no profile (the private key alone, as
/// [`seal_under`]), format 2 with one.
pub fn seal_contents_under(
    keyring: &Keyring,
    kek_version: i32,
    aad: &Aad<'_>,
    contents: &Contents,
) -> Result<Envelope, EnvelopeError> {
    if aad.profile.is_none() {
        if !contents.secrets.is_empty() {
            return Err(EnvelopeError::Malformed);
        }
        return seal_under(keyring, kek_version, aad, &contents.private_key);
    }
    let plain = Zeroizing::new(
        serde_json::to_vec(&ContentsOut {
            private_key: contents.private_key.expose_secret(),
            secrets: contents
                .secrets
                .iter()
                .map(|(k, v)| (k.as_str(), v.expose_secret()))
                .collect(),
        })
        .map_err(|_| EnvelopeError::Malformed)?,
    );
    seal_bytes(keyring, kek_version, aad, &plain, &contents.private_key)
}

fn seal_bytes(
    keyring: &Keyring,
    kek_version: i32,
    aad: &Aad<'_>,
    plaintext: &[u8],
    private_key: &SecretString,
) -> Result<Envelope, EnvelopeError> {
    let mut dek: Dek = Zeroizing::new([0u8; KEY_LEN]);
    OsRng.fill_bytes(dek.as_mut());
    let ciphertext = aead_seal(&dek, plaintext, &aad.encode(b"secret"))?;
    let wrapped_dek = wrap_dek(keyring, kek_version, &dek, aad)?;
    let mut mac = verifier_mac(&dek, aad);
    mac.update(private_key.expose_secret().as_bytes());
    Ok(Envelope {
        format: aad.format(),
        kek_version,
        wrapped_dek,
        ciphertext,
        verifier: mac.finalize().into_bytes().to_vec(),
    })
}

/// Opens the private key of `env`, which must have been sealed for exactly `aad`.
pub fn open(
    keyring: &Keyring,
    aad: &Aad<'_>,
    env: &Envelope,
) -> Result<SecretString, EnvelopeError> {
    open_contents(keyring, aad, env).map(|c| c.private_key)
}

/// Opens everything `env` seals (format 1: the private key and no secrets).
pub fn open_contents(
    keyring: &Keyring,
    aad: &Aad<'_>,
    env: &Envelope,
) -> Result<Contents, EnvelopeError> {
    if env.format != FORMAT_V1 && env.format != FORMAT_V2 {
        return Err(EnvelopeError::UnsupportedFormat(env.format));
    }
    // The stored format and the binding must agree; either one edited fails here or below.
    if env.format != aad.format() {
        return Err(EnvelopeError::Authentication);
    }
    let dek = unwrap_dek(keyring, env, aad)?;
    let mut plain = aead_open(&dek, &env.ciphertext, &aad.encode(b"secret"))?;
    if env.format == FORMAT_V1 {
        let text = String::from_utf8(std::mem::take(&mut *plain)).map_err(|e| {
            let mut bytes = e.into_bytes();
            zeroize::Zeroize::zeroize(&mut bytes);
            EnvelopeError::Malformed
        })?;
        return Ok(Contents {
            private_key: SecretString::from(text),
            secrets: Default::default(),
        });
    }
    let parsed: ContentsIn =
        serde_json::from_slice(&plain).map_err(|_| EnvelopeError::Malformed)?;
    Ok(Contents {
        private_key: SecretString::from(parsed.private_key),
        secrets: parsed
            .secrets
            .into_iter()
            .map(|(k, v)| (k, SecretString::from(v)))
            .collect(),
    })
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
            profile: None,
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
        future.format = 3;
        assert_eq!(
            open(&k, &aad(), &future).err(),
            Some(EnvelopeError::UnsupportedFormat(3))
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

    fn contents(key: &str, secrets: &[(&str, &str)]) -> Contents {
        Contents {
            private_key: secret(key),
            secrets: secrets
                .iter()
                .map(|(k, v)| (k.to_string(), secret(v)))
                .collect(),
        }
    }

    #[test]
    fn a_profile_round_trips_and_is_bound_by_the_associated_data() {
        let k = Keyring::generate();
        let profile = r#"{"secrets":["passkey"],"settings":{"business_short_code":"174379"}}"#;
        let bound = Aad {
            profile: Some(profile),
            ..aad()
        };
        let env = seal_contents_under(
            &k,
            1,
            &bound,
            &contents("consumer-secret", &[("passkey", "PASSKEY-CANARY")]),
        )
        .unwrap();
        assert_eq!(env.format, FORMAT_V2);
        let opened = open_contents(&k, &bound, &env).unwrap();
        assert_eq!(opened.private_key.expose_secret(), "consumer-secret");
        assert_eq!(opened.secrets["passkey"].expose_secret(), "PASSKEY-CANARY");
        // The verifier covers the private key alone.
        assert!(verify(&k, &bound, &env, &secret("consumer-secret")).unwrap());
        // An edited setting, a dropped profile or a flipped format opens nothing.
        let edited = Aad {
            profile: Some(r#"{"secrets":["passkey"],"settings":{"business_short_code":"600000"}}"#),
            ..aad()
        };
        assert!(open_contents(&k, &edited, &env).is_err());
        assert!(open_contents(&k, &aad(), &env).is_err());
        let flipped = Envelope {
            format: FORMAT_V1,
            ..env.clone()
        };
        assert!(open_contents(&k, &bound, &flipped).is_err());
        assert!(!format!("{opened:?}").contains("CANARY"));
    }

    #[test]
    fn without_a_profile_contents_seal_as_format_1() {
        let k = Keyring::generate();
        let env = seal_contents_under(&k, 1, &aad(), &contents("sk_live_canary_123", &[])).unwrap();
        assert_eq!(env.format, FORMAT_V1);
        assert_eq!(
            open(&k, &aad(), &env).unwrap().expose_secret(),
            "sk_live_canary_123"
        );
        assert!(seal_contents_under(
            &k,
            1,
            &aad(),
            &contents("sk_live_canary_123", &[("passkey", "x")])
        )
        .is_err());
    }
}
