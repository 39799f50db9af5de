//! Provider profiles (SPEC §9.1): the named secrets and settings each provider's credential
//! may carry beside `api_key` and `private_key`.
//!
//! Secrets are sealed in the version's envelope with the private key; settings are shown in
//! metadata and bound to the version by the envelope's associated data, through the stored
//! profile ([`Profile::canonical`]): the sorted names of the secrets that are set and the
//! settings, as canonical JSON.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::credential::{Provider, ValidationError};

/// The longest secret value accepted (characters).
pub const SECRET_MAX: usize = 4096;

/// The secrets `provider`'s credentials may carry.
pub fn secret_names(provider: Provider) -> &'static [&'static str] {
    match provider {
        Provider::Mpesa => &["initiator_password", "passkey"],
        Provider::KopoKopo | Provider::JPay => &["webhook_secret"],
        Provider::InstaSend => &["webhook_challenge"],
        Provider::Pagamio => &[],
    }
}

/// The settings `provider`'s credentials may carry.
pub fn setting_names(provider: Provider) -> &'static [&'static str] {
    match provider {
        Provider::Mpesa => &["business_short_code", "initiator_name"],
        _ => &[],
    }
}

fn allowed(
    kind: &str,
    provider: Provider,
    names: &[&str],
    name: &str,
) -> Result<(), ValidationError> {
    if names.contains(&name) {
        return Ok(());
    }
    Err(ValidationError(if names.is_empty() {
        format!("{} credentials take no {kind}s", provider.display_name())
    } else {
        format!(
            "Unknown {kind} for {}. Allowed: {}",
            provider.display_name(),
            names.join(", ")
        )
    }))
}

/// Checks named secrets for `provider`: known names, 1 to 4,096 characters, no NUL.
pub fn check_secrets(
    provider: Provider,
    secrets: &BTreeMap<String, SecretString>,
) -> Result<(), ValidationError> {
    for (name, value) in secrets {
        allowed("secret", provider, secret_names(provider), name)?;
        let v = value.expose_secret();
        let n = v.chars().count();
        if n == 0 || n > SECRET_MAX || v.contains('\0') {
            return Err(ValidationError(format!(
                "Secret {name} must be 1 to {SECRET_MAX} characters with no NUL"
            )));
        }
    }
    Ok(())
}

/// Checks settings for `provider`: known names and each setting's own rule.
pub fn check_settings(
    provider: Provider,
    settings: &BTreeMap<String, String>,
) -> Result<(), ValidationError> {
    for (name, value) in settings {
        allowed("setting", provider, setting_names(provider), name)?;
        let ok = match name.as_str() {
            "business_short_code" => {
                (5..=7).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_digit())
            }
            // Daraja's InitiatorName: the API operator's user name.
            _ => {
                (1..=64).contains(&value.chars().count())
                    && value.chars().all(|c| c.is_ascii_graphic() || c == ' ')
            }
        };
        if !ok {
            return Err(ValidationError(match name.as_str() {
                "business_short_code" => "business_short_code must be 5 to 7 digits".into(),
                _ => format!("{name} must be 1 to 64 printable ASCII characters"),
            }));
        }
    }
    Ok(())
}

/// What a version's profile says: which secrets are set, and the settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub secrets: Vec<String>,
    pub settings: BTreeMap<String, String>,
}

impl Profile {
    pub fn of(
        secrets: &BTreeMap<String, SecretString>,
        settings: &BTreeMap<String, String>,
    ) -> Self {
        Profile {
            secrets: secrets.keys().cloned().collect(),
            settings: settings.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty() && self.settings.is_empty()
    }

    /// The stored form: `None` for an empty profile (envelope format 1, today's two-field
    /// credentials), else canonical JSON (sorted names; a `BTreeMap` serialises in order).
    pub fn canonical(&self) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        let mut names = self.secrets.clone();
        names.sort();
        names.dedup();
        serde_json::to_string(&Profile {
            secrets: names,
            settings: self.settings.clone(),
        })
        .ok()
    }

    /// Reads a stored profile; `None` stored means empty. A profile that does not parse is
    /// not trusted for anything (its version fails to open anyway: it is in the binding).
    pub fn parse(stored: Option<&str>) -> Option<Self> {
        match stored {
            None => Some(Profile::default()),
            Some(s) => serde_json::from_str(s).ok(),
        }
    }

    pub fn has_secret(&self, name: &str) -> bool {
        self.secrets.iter().any(|s| s == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretString> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), SecretString::from(v.to_string())))
            .collect()
    }

    #[test]
    fn names_outside_the_table_are_refused_naming_the_allowed_ones() {
        let e = check_secrets(Provider::Mpesa, &secrets(&[("webhook_secret", "x")])).unwrap_err();
        assert!(e.0.contains("initiator_password, passkey"), "{}", e.0);
        let e = check_secrets(Provider::Pagamio, &secrets(&[("passkey", "x")])).unwrap_err();
        assert!(e.0.contains("take no secrets"), "{}", e.0);
        assert!(check_secrets(Provider::KopoKopo, &secrets(&[("webhook_secret", "k")])).is_ok());
        assert!(check_secrets(Provider::KopoKopo, &secrets(&[("webhook_secret", "")])).is_err());
        let long = "k".repeat(SECRET_MAX + 1);
        assert!(check_secrets(Provider::JPay, &secrets(&[("webhook_secret", &long)])).is_err());
    }

    #[test]
    fn short_codes_are_five_to_seven_digits() {
        let s = |v: &str| BTreeMap::from([("business_short_code".to_string(), v.to_string())]);
        assert!(check_settings(Provider::Mpesa, &s("174379")).is_ok());
        assert!(check_settings(Provider::Mpesa, &s("12345")).is_ok());
        assert!(check_settings(Provider::Mpesa, &s("1234")).is_err());
        assert!(check_settings(Provider::Mpesa, &s("12345678")).is_err());
        assert!(check_settings(Provider::Mpesa, &s("17437a")).is_err());
        assert!(check_settings(Provider::KopoKopo, &s("174379")).is_err());
    }

    #[test]
    fn the_canonical_form_is_sorted_and_round_trips() {
        let p = Profile {
            secrets: vec!["passkey".into(), "initiator_password".into()],
            settings: BTreeMap::from([
                ("initiator_name".to_string(), "testapi".to_string()),
                ("business_short_code".to_string(), "174379".to_string()),
            ]),
        };
        let c = p.canonical().unwrap();
        assert_eq!(
            c,
            r#"{"secrets":["initiator_password","passkey"],"settings":{"business_short_code":"174379","initiator_name":"testapi"}}"#
        );
        assert_eq!(Profile::parse(Some(&c)).unwrap().canonical().unwrap(), c);
        assert_eq!(Profile::default().canonical(), None);
    }
}
