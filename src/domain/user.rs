//! Users: usernames, roles and passwords.

use secrecy::{ExposeSecret, SecretString};

use super::ValidationError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Admin,
    Auditor,
}

impl Role {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        match raw {
            "user" => Ok(Role::User),
            "admin" => Ok(Role::Admin),
            "auditor" => Ok(Role::Auditor),
            _ => Err(ValidationError(
                "role must be one of: user, admin, auditor".into(),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
        }
    }
}

/// 3 to 150 characters of letters, digits and `@.+-_` (the usual account-name alphabet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let ok_len = (3..=150).contains(&raw.chars().count());
        let ok_chars = raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@.+-_".contains(c));
        if ok_len && ok_chars {
            Ok(Username(raw.to_owned()))
        } else {
            Err(ValidationError(
                "username must be 3 to 150 characters of letters, digits and @.+-_".into(),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A new password: 12 to 1,024 characters.
pub struct Password(SecretString);

impl Password {
    pub fn parse(raw: SecretString) -> Result<Self, ValidationError> {
        let n = raw.expose_secret().chars().count();
        if !(12..=1024).contains(&n) {
            return Err(ValidationError(
                "password must be 12 to 1024 characters long".into(),
            ));
        }
        Ok(Password(raw))
    }

    pub fn secret(&self) -> &SecretString {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password([REDACTED])")
    }
}
