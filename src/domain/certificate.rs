//! A provider certificate as installed (Daraja's, for `security-credential`): plain data that
//! the database stores and the release gate computes with.

/// A provider certificate as installed: its public key and what the API shows of it.
#[derive(Debug, Clone)]
pub struct CertificateInfo {
    pub der: Vec<u8>,
    pub sha256: String,
    pub subject: String,
    pub not_before: i64,
    pub not_after: i64,
}
