//! Service identities: how a service's verified client certificate names it.

use super::ValidationError;

/// 3 to 100 characters of letters, digits and `.-_`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceName(String);

impl ServiceName {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let ok = (3..=100).contains(&raw.chars().count())
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c));
        if ok {
            Ok(ServiceName(raw.to_owned()))
        } else {
            Err(ValidationError(
                "service name must be 3 to 100 characters of letters, digits and .-_".into(),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a certificate must carry to be this service: a SAN URI (`spiffe://payments/billing`),
/// a DNS name (`billing.internal`), or `sha256:<64 hex>` (the certificate's fingerprint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceIdentity(String);

impl ServiceIdentity {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let bad = || {
            ValidationError(
                "identity must be a certificate SAN URI (scheme://...), a DNS name, or sha256:<64 hex digits>"
                    .into(),
            )
        };
        if raw.is_empty()
            || raw.len() > 512
            || raw.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad());
        }
        if let Some(hex) = raw.strip_prefix("sha256:") {
            let ok = hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit());
            return if ok {
                Ok(ServiceIdentity(format!(
                    "sha256:{}",
                    hex.to_ascii_lowercase()
                )))
            } else {
                Err(bad())
            };
        }
        if let Some((scheme, rest)) = raw.split_once("://") {
            let ok = !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                && !rest.is_empty();
            return if ok {
                Ok(ServiceIdentity(raw.to_owned()))
            } else {
                Err(bad())
            };
        }
        let dns_ok = raw.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
        if dns_ok {
            Ok(ServiceIdentity(raw.to_ascii_lowercase()))
        } else {
            Err(bad())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether a certificate name could pass for a fingerprint identity (`sha256:`, any case).
pub fn looks_like_fingerprint(name: &str) -> bool {
    name.get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("sha256:"))
}

/// A client certificate's fingerprint as an operator writes it: 64 hex digits (any case),
/// optionally `sha256:`-prefixed or colon-separated; stored lowercase without separators.
pub fn parse_fingerprint(raw: &str) -> Result<String, ValidationError> {
    let raw = raw.trim();
    let hex_part = if looks_like_fingerprint(raw) {
        &raw[7..]
    } else {
        raw
    };
    let digits: String = hex_part.chars().filter(|c| *c != ':').collect();
    if digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ValidationError(
            "fingerprint must be the certificate's SHA-256: 64 hex digits".into(),
        ));
    }
    Ok(digits.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_uris_dns_names_or_fingerprints() {
        assert!(ServiceIdentity::parse("spiffe://payments/billing").is_ok());
        assert!(ServiceIdentity::parse("billing.internal").is_ok());
        assert!(ServiceIdentity::parse(&format!("sha256:{}", "ab".repeat(32))).is_ok());
        for bad in ["", "has space", "sha256:abc", "://x", "a..b", "x\u{0}y"] {
            assert!(ServiceIdentity::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_names_are_short_and_plain() {
        assert!(ServiceName::parse("billing-api").is_ok());
        assert!(ServiceName::parse("x").is_err());
        assert!(ServiceName::parse("bad name").is_err());
    }
}
