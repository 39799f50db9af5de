//! Signed session tokens (HS256, pinned). The signing key for master-key version `v` is
//! HKDF(KEK_v, "hazina/jwt/hs256") and tokens name it with `kid = "k<v>"`, so tokens stay
//! valid across a master-key rotation while the old version remains in the keyring.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::clock::UnixSeconds;
use crate::crypto::Keyring;
use crate::domain::UserId;

pub const ISSUER: &str = "hazina";
pub const AUDIENCE: &str = "hazina-api";
pub const ACCESS_TTL: i64 = 15 * 60;
pub const REFRESH_TTL: i64 = 7 * 24 * 60 * 60;
pub const LEEWAY: i64 = 30;
const MAX_TOKEN_LEN: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    Access,
    Refresh,
}

/// Every claim is required: a token missing one, or with one of the wrong type, is refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    pub typ: TokenType,
    /// The session this token belongs to.
    pub sid: String,
    /// The master-key version whose derived key signed this token (from the `kid`, not a
    /// claim): the session check refuses it once that version is retired, on every node.
    #[serde(skip)]
    pub key_version: u32,
}

impl Claims {
    pub fn user_id(&self) -> Option<UserId> {
        UserId::parse(&self.sub)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is malformed or its signature is invalid")]
    Invalid,
    #[error("token is expired or not yet valid")]
    Expired,
    #[error("token is of the wrong type")]
    WrongType,
}

/// Signing and verification keys derived from the keyring, one pair per master-key version,
/// derived on first use and cached. They follow the keyring: after a rotation new tokens are
/// signed under the new version's key, and tokens signed under older versions keep working
/// while those versions remain in the keyring.
pub struct TokenKeys {
    keyring: Arc<Keyring>,
    cache: RwLock<HashMap<u32, (EncodingKey, DecodingKey)>>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys").finish_non_exhaustive()
    }
}

const PURPOSE: &str = "hazina/jwt/hs256";

impl TokenKeys {
    pub fn from_keyring(keyring: Arc<Keyring>) -> Option<Self> {
        let keys = TokenKeys {
            keyring,
            cache: RwLock::new(HashMap::new()),
        };
        // The active version must yield keys now, so a broken keyring fails at start-up.
        keys.pair(keys.keyring.active_version())?;
        Some(keys)
    }

    fn pair(&self, version: u32) -> Option<(EncodingKey, DecodingKey)> {
        // A version removed from the keyring (retired) signs and validates nothing, even if
        // its keys are still cached.
        if !self.keyring.has_version(version) {
            return None;
        }
        if let Some(p) = self.cache.read().ok()?.get(&version) {
            return Some(p.clone());
        }
        let k = self.keyring.derive(version, PURPOSE)?;
        let p = (
            EncodingKey::from_secret(k.as_ref()),
            DecodingKey::from_secret(k.as_ref()),
        );
        if let Ok(mut cache) = self.cache.write() {
            cache.insert(version, p.clone());
        }
        Some(p)
    }

    /// Signs a token of `typ` for `user` in session `sid`; returns the token and its jti.
    pub fn issue(
        &self,
        user: UserId,
        sid: &str,
        typ: TokenType,
        now: UnixSeconds,
    ) -> Result<(SecretString, String), TokenError> {
        let ttl = match typ {
            TokenType::Access => ACCESS_TTL,
            TokenType::Refresh => REFRESH_TTL,
        };
        let jti = uuid::Uuid::new_v4().to_string();
        let claims = Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: user.to_string(),
            exp: now + ttl,
            nbf: now,
            iat: now,
            jti: jti.clone(),
            typ,
            sid: sid.into(),
            key_version: 0,
        };
        let version = self.keyring.active_version();
        let (encoding, _) = self.pair(version).ok_or(TokenError::Invalid)?;
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(format!("k{version}"));
        let token =
            jsonwebtoken::encode(&header, &claims, &encoding).map_err(|_| TokenError::Invalid)?;
        Ok((SecretString::from(token), jti))
    }

    /// Verifies signature, algorithm, `kid`, every claim and the token type.
    pub fn validate(
        &self,
        token: &str,
        expected: TokenType,
        now: UnixSeconds,
    ) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenError::Invalid);
        }
        let version = header
            .kid
            .as_deref()
            .and_then(|kid| kid.strip_prefix('k'))
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or(TokenError::Invalid)?;
        let (_, decoding) = self.pair(version).ok_or(TokenError::Invalid)?;
        let key = &decoding;
        let mut v = Validation::new(Algorithm::HS256);
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[AUDIENCE]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        // Time is checked below against the injected clock only: the library would compare
        // with the wall clock, which a service clock may legitimately differ from. The claims
        // are typed `i64`, so a missing or mistyped exp/nbf/iat fails deserialisation.
        v.validate_exp = false;
        v.validate_nbf = false;
        v.leeway = LEEWAY as u64;
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|_| TokenError::Invalid)?;
        let mut c = data.claims;
        c.key_version = version;
        if now >= c.exp + LEEWAY || now + LEEWAY < c.nbf || now + LEEWAY < c.iat {
            return Err(TokenError::Expired);
        }
        if c.typ != expected {
            return Err(TokenError::WrongType);
        }
        if c.user_id().is_none() || c.sid.is_empty() || c.jti.is_empty() {
            return Err(TokenError::Invalid);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
    use base64::Engine;
    use secrecy::ExposeSecret;

    fn keys() -> (Arc<Keyring>, TokenKeys) {
        let k = Arc::new(Keyring::generate());
        let t = TokenKeys::from_keyring(k.clone()).unwrap();
        (k, t)
    }

    #[test]
    fn a_fresh_token_validates_as_its_own_type_only() {
        let (_, t) = keys();
        let now = chrono::Utc::now().timestamp();
        let user = UserId::generate();
        let (access, _) = t.issue(user, "s1", TokenType::Access, now).unwrap();
        let c = t
            .validate(access.expose_secret(), TokenType::Access, now)
            .unwrap();
        assert_eq!(c.user_id(), Some(user));
        assert_eq!(c.sid, "s1");
        assert_eq!(
            t.validate(access.expose_secret(), TokenType::Refresh, now)
                .unwrap_err(),
            TokenError::WrongType
        );
    }

    #[test]
    fn expiry_follows_the_injected_clock() {
        let (_, t) = keys();
        let now = chrono::Utc::now().timestamp();
        let (access, _) = t
            .issue(UserId::generate(), "s", TokenType::Access, now)
            .unwrap();
        assert!(t
            .validate(
                access.expose_secret(),
                TokenType::Access,
                now + ACCESS_TTL - 1
            )
            .is_ok());
        assert_eq!(
            t.validate(
                access.expose_secret(),
                TokenType::Access,
                now + ACCESS_TTL + LEEWAY
            )
            .unwrap_err(),
            TokenError::Expired
        );
        assert_eq!(
            t.validate(access.expose_secret(), TokenType::Access, now - 120)
                .unwrap_err(),
            TokenError::Expired
        );
    }

    #[test]
    fn another_keyrings_tokens_and_tampered_tokens_are_invalid() {
        let (_, t) = keys();
        let (_, other) = keys();
        let now = chrono::Utc::now().timestamp();
        let (tok, _) = other
            .issue(UserId::generate(), "s", TokenType::Access, now)
            .unwrap();
        assert_eq!(
            t.validate(tok.expose_secret(), TokenType::Access, now)
                .unwrap_err(),
            TokenError::Invalid
        );

        let (tok, _) = t
            .issue(UserId::generate(), "s", TokenType::Access, now)
            .unwrap();
        let parts: Vec<&str> = tok.expose_secret().split('.').collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
        claims["sub"] = serde_json::json!("12345");
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            B64URL.encode(claims.to_string()),
            parts[2]
        );
        assert_eq!(
            t.validate(&forged, TokenType::Access, now).unwrap_err(),
            TokenError::Invalid
        );
    }

    #[test]
    fn alg_none_and_unknown_kids_are_refused() {
        let (_, t) = keys();
        let now = chrono::Utc::now().timestamp();
        let (tok, _) = t
            .issue(UserId::generate(), "s", TokenType::Access, now)
            .unwrap();
        let parts: Vec<&str> = tok.expose_secret().split('.').collect();
        let none_header = B64URL.encode(r#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
        assert!(t
            .validate(
                &format!("{none_header}.{}.", parts[1]),
                TokenType::Access,
                now
            )
            .is_err());
        let other_kid = B64URL.encode(r#"{"alg":"HS256","typ":"JWT","kid":"k9"}"#);
        assert!(t
            .validate(
                &format!("{other_kid}.{}.{}", parts[1], parts[2]),
                TokenType::Access,
                now
            )
            .is_err());
    }

    #[test]
    fn a_mistyped_claim_is_refused() {
        let (k, t) = keys();
        let now = chrono::Utc::now().timestamp();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let key = EncodingKey::from_secret(k.derive(1, PURPOSE).unwrap().as_ref());
        let claims = serde_json::json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "42", "exp": (now + 60).to_string(),
            "nbf": now, "iat": now, "jti": "j", "typ": "access", "sid": "s"
        });
        let tok = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        assert!(t.validate(&tok, TokenType::Access, now).is_err());
    }
}
