//! Domain types that hold the product's invariants. Each has a private inner value and a
//! `parse` that returns `Result`, so a handler never holds an unchecked string.

mod allowlist;
mod certificate;
mod credential;
mod ids;
pub mod key_state;
pub mod operation;
pub mod profile;
mod service;
mod user;

pub use allowlist::parse_allowlist;
pub use certificate::CertificateInfo;
pub use credential::{ApiKey, Environment, PrivateKey, Provider, ValidationError};
pub use ids::{CredentialId, UserId};
pub use service::{looks_like_fingerprint, parse_fingerprint, ServiceIdentity, ServiceName};
pub use user::{Password, Role, Username};
