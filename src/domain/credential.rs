//! Credential rules: providers, environments, the private key and the api key.

use secrecy::{ExposeSecret, SecretString};

/// A rule a request broke; the message is safe to show the caller verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

fn invalid(msg: impl Into<String>) -> ValidationError {
    ValidationError(msg.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    KopoKopo,
    InstaSend,
    JPay,
    Mpesa,
    Pagamio,
}

impl Provider {
    pub const ALL: [Provider; 5] = [
        Provider::KopoKopo,
        Provider::InstaSend,
        Provider::JPay,
        Provider::Mpesa,
        Provider::Pagamio,
    ];

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == raw)
            .ok_or_else(|| {
                invalid(
                    "Invalid provider. Choose one of: kopokopo, instasend, jpay, mpesa, pagamio",
                )
            })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::KopoKopo => "kopokopo",
            Provider::InstaSend => "instasend",
            Provider::JPay => "jpay",
            Provider::Mpesa => "mpesa",
            Provider::Pagamio => "pagamio",
        }
    }

    pub fn display_name(self) -> &'static str {
        match self {
            Provider::KopoKopo => "KopoKopo",
            Provider::InstaSend => "InstaSend",
            Provider::JPay => "JPay Africa",
            Provider::Mpesa => "M-Pesa Daraja",
            Provider::Pagamio => "Pagamio",
        }
    }

    /// The environment a key's own format declares, where the provider marks it
    /// (IntaSend keys carry `_test_` or `_live_`).
    fn environment_marked_by(self, key: &str) -> Option<Environment> {
        match self {
            Provider::InstaSend if key.contains("_test_") => Some(Environment::Sandbox),
            Provider::InstaSend if key.contains("_live_") => Some(Environment::Live),
            _ => None,
        }
    }

    /// Refuses a key whose own format names the other environment.
    pub fn check_key_environment(self, key: &str, env: Environment) -> Result<(), ValidationError> {
        match self.environment_marked_by(key) {
            Some(marked) if marked != env => Err(invalid(format!(
                "This {} key is a {} key but the credential environment is {}",
                self.display_name(),
                marked.as_str(),
                env.as_str()
            ))),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Environment {
    Sandbox,
    Live,
}

impl Environment {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        match raw {
            "sandbox" => Ok(Environment::Sandbox),
            "live" => Ok(Environment::Live),
            _ => Err(invalid("Invalid environment. Choose one of: sandbox, live")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Sandbox => "sandbox",
            Environment::Live => "live",
        }
    }
}

pub const PRIVATE_KEY_MIN: usize = 10;
pub const PRIVATE_KEY_MAX: usize = 8192;
pub const API_KEY_MAX: usize = 1024;

/// A provider private key: 10 to 8,192 characters, no NUL. Redacted in `Debug`.
pub struct PrivateKey(SecretString);

impl PrivateKey {
    pub fn parse(raw: SecretString) -> Result<Self, ValidationError> {
        let s = raw.expose_secret();
        let chars = s.chars().count();
        if chars < PRIVATE_KEY_MIN {
            return Err(invalid("Private key must be at least 10 characters long"));
        }
        if chars > PRIVATE_KEY_MAX {
            return Err(invalid("Private key must be at most 8192 characters long"));
        }
        if s.contains('\0') {
            return Err(invalid("Private key must not contain NUL characters"));
        }
        Ok(PrivateKey(raw))
    }

    pub fn secret(&self) -> &SecretString {
        &self.0
    }

    /// The rules a candidate for `verify` must meet: those no stored key can break (no NUL,
    /// not over the maximum length). A short candidate is allowed; it just never matches.
    pub fn check_candidate(raw: &str) -> Result<(), ValidationError> {
        if raw.chars().count() > PRIVATE_KEY_MAX {
            return Err(invalid("Private key must be at most 8192 characters long"));
        }
        if raw.contains('\0') {
            return Err(invalid("Private key must not contain NUL characters"));
        }
        Ok(())
    }
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey([REDACTED])")
    }
}

/// The provider's public/API key: metadata shown to its owner, 1 to 1,024 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn parse(raw: String) -> Result<Self, ValidationError> {
        let n = raw.chars().count();
        if n == 0 || raw.trim().is_empty() {
            return Err(invalid("API key must not be empty"));
        }
        if n > API_KEY_MAX {
            return Err(invalid("API key must be at most 1024 characters long"));
        }
        if raw.contains('\0') {
            return Err(invalid("API key must not contain NUL characters"));
        }
        Ok(ApiKey(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn private_key_length_bounds() {
        assert_eq!(
            PrivateKey::parse(key("123456789")).unwrap_err().0,
            "Private key must be at least 10 characters long"
        );
        assert!(PrivateKey::parse(key("1234567890")).is_ok());
        assert!(PrivateKey::parse(key(&"k".repeat(8192))).is_ok());
        assert!(PrivateKey::parse(key(&"k".repeat(8193))).is_err());
        assert!(PrivateKey::parse(key("abcdefghij\0klm")).is_err());
    }

    #[test]
    fn private_key_debug_is_redacted() {
        let k = PrivateKey::parse(key("super-secret-canary")).unwrap();
        assert!(!format!("{k:?}").contains("canary"));
    }

    #[test]
    fn instasend_keys_must_match_their_environment() {
        let p = Provider::InstaSend;
        assert!(p
            .check_key_environment("ISSecretKey_test_abc", Environment::Sandbox)
            .is_ok());
        assert!(p
            .check_key_environment("ISSecretKey_live_abc", Environment::Live)
            .is_ok());
        assert!(p
            .check_key_environment("ISSecretKey_test_abc", Environment::Live)
            .is_err());
        assert!(p
            .check_key_environment("ISSecretKey_live_abc", Environment::Sandbox)
            .is_err());
        assert!(Provider::KopoKopo
            .check_key_environment("x_test_y", Environment::Live)
            .is_ok());
    }

    #[test]
    fn providers_and_environments_round_trip() {
        for p in Provider::ALL {
            assert_eq!(Provider::parse(p.as_str()), Ok(p));
        }
        assert!(Provider::parse("KopoKopo").is_err());
        assert!(Environment::parse("production").is_err());
    }
}
