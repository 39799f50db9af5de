//! Cryptography: the only module that touches key material.
//!
//! ## Key hierarchy
//! ```text
//! master key (KEK, versioned, keyring file, never in the database)
//!   ├─ wraps  → data key (DEK, one per credential version, random 256-bit)
//!   │            ├─ AES-256-GCM seals the private key
//!   │            └─ HKDF → verifier key → HMAC-SHA-256 of the private key
//!   └─ HKDF  → token-signing key (per KEK version, named by the JWT `kid`)
//! ```
//! ## Guarantees
//! - Every ciphertext (secret and wrapped DEK) carries associated data naming its owner,
//!   credential, provider, environment and version; opening it under any other binding fails.
//! - A DEK encrypts exactly one plaintext, so a random 96-bit nonce never repeats under it.
//! - Key material lives in [`zeroize::Zeroizing`] buffers and is wiped on drop; no type here
//!   implements `Display`, and `Debug` never prints key bytes.
//! - Verification never decrypts the secret: it unwraps the DEK, derives the verifier key and
//!   compares MACs in constant time. Without the keyring a dump cannot test guesses.
//! - All primitives come from the RustCrypto crates (`aes-gcm`, `hkdf`, `hmac`, `sha2`).

pub mod envelope;
pub mod keyring;
pub mod rowmac;

pub use envelope::{Aad, Envelope, EnvelopeError};
pub use keyring::{Keyring, KeyringError};
