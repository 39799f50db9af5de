//! What each provider's token endpoint is sent and answers (SPEC §9.4), as published:
//!
//! | provider | request | answer |
//! |---|---|---|
//! | Daraja | `GET /oauth/v1/generate?grant_type=client_credentials`, HTTP Basic consumer key:secret | `{access_token, expires_in}` (`expires_in` a string of seconds) |
//! | KopoKopo | `POST /oauth/token`, form `client_id`, `client_secret`, `grant_type=client_credentials` | `{access_token, token_type, expires_in, created_at}` |
//! | JPay | `POST /api/v1/auth/app/token` `{app_key, app_secret}`; refresh `POST /api/v1/auth/refresh` `{refresh}` | `{access, refresh, …}`: JWTs, 15 minutes and 7 days |
//! | Pagamio | `POST /api/v1/auth/token` `{username, password}`; refresh `POST /api/v1/auth/token/refresh` `{refreshToken}` | `{accessToken, expiresIn}` or `{successful, data: {token, refreshToken, expiresIn}}` |
//!
//! Nothing here does I/O: [`request`] says what to send, [`parse`] reads what came back, so
//! both are tested without a network. The secrets are exposed only into the request being
//! built; nothing parsed is logged, and a [`Token`] prints no value.

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

use crate::domain::Provider;

/// JPay's access tokens live 15 minutes and its refresh tokens 7 days, unless the JWT says.
const JPAY_ACCESS_SECONDS: i64 = 15 * 60;
const REFRESH_SECONDS: i64 = 7 * 24 * 3600;
/// The longest lifetime believed from a provider: a day (every one of them issues less).
const MAX_LIFETIME_SECONDS: i64 = 24 * 3600;
/// The longest token accepted (a JWT with many claims fits easily).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// A token from a provider: its value and when it expires (Unix seconds). Zeroized on drop
/// (`SecretString`); `Debug` shows no value.
pub struct Token {
    pub value: SecretString,
    pub expires_at: i64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What an exchange or a refresh yielded.
#[derive(Debug)]
pub struct Issued {
    pub access: Token,
    /// JPay and Pagamio: renews `access` without the app secret.
    pub refresh: Option<Token>,
}

/// One HTTP request to a provider: everything but the base URL and the client.
pub struct Call {
    pub method: reqwest::Method,
    /// Appended to the base URL.
    pub path: &'static str,
    pub body: Body,
}

pub enum Body {
    /// No body; HTTP Basic user and password.
    Basic {
        user: String,
        password: SecretString,
    },
    /// `application/x-www-form-urlencoded`.
    Form(Vec<(&'static str, SecretString)>),
    /// `application/json`, an object of string fields.
    Json(Vec<(&'static str, SecretString)>),
}

/// Whether a call exchanges the stored credentials or renews through a refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Exchange,
    Refresh,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Exchange => "exchange",
            Kind::Refresh => "refresh",
        }
    }
}

/// The exchange of the stored key (`api_key`) and secret (`private_key`) for a token.
pub fn request(provider: Provider, key: &str, secret: &SecretString) -> Call {
    let user = key;
    let key = || SecretString::from(key.to_owned());
    let secret = || secret.clone();
    match provider {
        Provider::Mpesa => Call {
            method: reqwest::Method::GET,
            path: "/oauth/v1/generate?grant_type=client_credentials",
            body: Body::Basic {
                user: user.to_owned(),
                password: secret(),
            },
        },
        Provider::KopoKopo => Call {
            method: reqwest::Method::POST,
            path: "/oauth/token",
            body: Body::Form(vec![
                ("client_id", key()),
                ("client_secret", secret()),
                (
                    "grant_type",
                    SecretString::from("client_credentials".to_owned()),
                ),
            ]),
        },
        Provider::JPay => Call {
            method: reqwest::Method::POST,
            path: "/api/v1/auth/app/token",
            body: Body::Json(vec![("app_key", key()), ("app_secret", secret())]),
        },
        // IntaSend has no token endpoint (`Operation::applies_to`); Pagamio's is the default.
        Provider::Pagamio | Provider::InstaSend => Call {
            method: reqwest::Method::POST,
            path: "/api/v1/auth/token",
            body: Body::Json(vec![("username", key()), ("password", secret())]),
        },
    }
}

/// The renewal of an access token through `refresh`, for the providers that issue one.
pub fn refresh_request(provider: Provider, refresh: &SecretString) -> Option<Call> {
    match provider {
        Provider::JPay => Some(Call {
            method: reqwest::Method::POST,
            path: "/api/v1/auth/refresh",
            body: Body::Json(vec![("refresh", refresh.clone())]),
        }),
        Provider::Pagamio => Some(Call {
            method: reqwest::Method::POST,
            path: "/api/v1/auth/token/refresh",
            body: Body::Json(vec![("refreshToken", refresh.clone())]),
        }),
        _ => None,
    }
}

/// A 2xx answer's body that is not a token answer in the provider's published shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the provider's answer is not a token answer")]
pub struct Malformed;

/// Seconds as a number or a string of digits (Daraja sends `"3599"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Seconds {
    Number(i64),
    Text(String),
}

impl Seconds {
    fn get(&self) -> Option<i64> {
        match self {
            Seconds::Number(n) => Some(*n),
            Seconds::Text(t) => t.trim().parse().ok(),
        }
    }
}

#[derive(Deserialize)]
struct OAuth {
    access_token: String,
    expires_in: Seconds,
}

#[derive(Deserialize)]
struct JPay {
    access: String,
    refresh: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Pagamio {
    Wrapped { data: PagamioData },
    Flat(PagamioFlat),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PagamioData {
    token: String,
    refresh_token: Option<String>,
    expires_in: Seconds,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PagamioFlat {
    access_token: String,
    refresh_token: Option<String>,
    expires_in: Seconds,
}

/// Reads a 2xx token answer (of an exchange or a refresh: the shapes are the same), `now`
/// being when the request was sent.
pub fn parse(provider: Provider, body: &[u8], now: i64) -> Result<Issued, Malformed> {
    match provider {
        Provider::Mpesa | Provider::KopoKopo => {
            let a: OAuth = serde_json::from_slice(body).map_err(|_| Malformed)?;
            Ok(Issued {
                access: token(a.access_token, now, a.expires_in.get())?,
                refresh: None,
            })
        }
        Provider::JPay => {
            let a: JPay = serde_json::from_slice(body).map_err(|_| Malformed)?;
            let access_for = jwt_lifetime(&a.access, now).unwrap_or(JPAY_ACCESS_SECONDS);
            let access = token(a.access, now, Some(access_for))?;
            let refresh = a
                .refresh
                .map(|r| {
                    let life = jwt_lifetime(&r, now).unwrap_or(REFRESH_SECONDS);
                    refresh_token(r, now, life)
                })
                .transpose()?;
            Ok(Issued { access, refresh })
        }
        Provider::Pagamio | Provider::InstaSend => {
            let a: Pagamio = serde_json::from_slice(body).map_err(|_| Malformed)?;
            let (value, refresh, expires_in) = match a {
                Pagamio::Wrapped { data } => (data.token, data.refresh_token, data.expires_in),
                Pagamio::Flat(f) => (f.access_token, f.refresh_token, f.expires_in),
            };
            Ok(Issued {
                access: token(value, now, expires_in.get())?,
                refresh: refresh
                    .map(|r| refresh_token(r, now, REFRESH_SECONDS))
                    .transpose()?,
            })
        }
    }
}

/// A token value must be something a client can put in an `Authorization` header: visible
/// ASCII, bounded.
fn token_value(value: String) -> Result<SecretString, Malformed> {
    let value = SecretString::from(value);
    let v = value.expose_secret();
    if v.is_empty() || v.len() > MAX_TOKEN_BYTES || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Malformed);
    }
    Ok(value)
}

/// An access token: its lifetime must be positive; more than a day is believed as a day.
fn token(value: String, now: i64, lifetime: Option<i64>) -> Result<Token, Malformed> {
    let value = token_value(value)?;
    let lifetime = lifetime.filter(|s| *s > 0).ok_or(Malformed)?;
    Ok(Token {
        value,
        expires_at: now.saturating_add(lifetime.min(MAX_LIFETIME_SECONDS)),
    })
}

/// A refresh token, believed for at most the published seven days.
fn refresh_token(value: String, now: i64, lifetime: i64) -> Result<Token, Malformed> {
    Ok(Token {
        value: token_value(value)?,
        expires_at: now.saturating_add(lifetime.clamp(1, REFRESH_SECONDS)),
    })
}

/// The lifetime a JWT's `exp` claim gives from `now`, read without verifying it: it only
/// says when to renew, and the provider checks its own token. `None` when there is no
/// readable `exp`, or it has already passed.
fn jwt_lifetime(jwt: &str, now: i64) -> Option<i64> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_i64()?;
    Some(exp - now).filter(|s| *s > 0)
}

/// A provider's `Retry-After` (seconds only; a date is not believed), bounded to ten minutes.
pub fn retry_after(header: Option<&str>) -> Option<u64> {
    header?.trim().parse::<u64>().ok().map(|s| s.clamp(1, 600))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn jwt(claims: Value) -> String {
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.c2ln",
            b64(br#"{"alg":"HS256","typ":"JWT"}"#),
            b64(claims.to_string().as_bytes())
        )
    }

    #[test]
    fn daraja_answers_carry_expires_in_as_a_string() {
        let got = parse(
            Provider::Mpesa,
            br#"{"access_token":"c9SQxWWhmdVRlyh0zh8gZDTkubVF","expires_in":"3599"}"#,
            NOW,
        )
        .unwrap();
        assert_eq!(
            got.access.value.expose_secret(),
            "c9SQxWWhmdVRlyh0zh8gZDTkubVF"
        );
        assert_eq!(got.access.expires_at, NOW + 3599);
        assert!(got.refresh.is_none());
    }

    #[test]
    fn kopokopo_answers_carry_expires_in_as_a_number() {
        let got = parse(
            Provider::KopoKopo,
            br#"{"access_token":"k2-token","token_type":"Bearer","expires_in":3600,"created_at":1556012342}"#,
            NOW,
        )
        .unwrap();
        assert_eq!(got.access.expires_at, NOW + 3600);
    }

    #[test]
    fn jpay_lifetimes_come_from_the_jwts_or_the_published_defaults() {
        let access = jwt(serde_json::json!({"user_id": 1, "exp": NOW + 900}));
        let refresh = jwt(serde_json::json!({"refresh": true, "exp": NOW + 7 * 86400}));
        let body = serde_json::json!({"access": access, "refresh": refresh, "merchant_id": 123});
        let got = parse(Provider::JPay, body.to_string().as_bytes(), NOW).unwrap();
        assert_eq!(got.access.expires_at, NOW + 900);
        assert_eq!(got.refresh.unwrap().expires_at, NOW + 7 * 86400);
        // Opaque tokens: 15 minutes and 7 days.
        let got = parse(
            Provider::JPay,
            br#"{"access":"opaque-access","refresh":"opaque-refresh"}"#,
            NOW,
        )
        .unwrap();
        assert_eq!(got.access.expires_at, NOW + 900);
        assert_eq!(got.refresh.unwrap().expires_at, NOW + 7 * 86400);
    }

    #[test]
    fn both_published_pagamio_shapes_are_read() {
        let flat = parse(
            Provider::Pagamio,
            br#"{"accessToken":"eyJhbGciOiJIUzI1NiJ9.flat","expiresIn":1800}"#,
            NOW,
        )
        .unwrap();
        assert_eq!(
            flat.access.value.expose_secret(),
            "eyJhbGciOiJIUzI1NiJ9.flat"
        );
        assert_eq!(flat.access.expires_at, NOW + 1800);
        assert!(flat.refresh.is_none());
        let wrapped = parse(
            Provider::Pagamio,
            br#"{"successful":true,"data":{"token":"wrapped","refreshToken":"r","expiresIn":1800}}"#,
            NOW,
        )
        .unwrap();
        assert_eq!(wrapped.access.value.expose_secret(), "wrapped");
        assert_eq!(wrapped.refresh.unwrap().value.expose_secret(), "r");
    }

    #[test]
    fn answers_outside_the_published_shapes_are_malformed() {
        for (provider, body) in [
            (Provider::Mpesa, &br#"{"expires_in":"3599"}"#[..]),
            (
                Provider::Mpesa,
                br#"{"access_token":"a","expires_in":"soon"}"#,
            ),
            (Provider::Mpesa, br#"{"access_token":"a","expires_in":0}"#),
            (Provider::Mpesa, br#"{"access_token":"","expires_in":60}"#),
            (
                Provider::Mpesa,
                br#"{"access_token":"a b","expires_in":60}"#,
            ),
            (
                Provider::KopoKopo,
                br#"{"access_token":"a\nb","expires_in":60}"#,
            ),
            (Provider::KopoKopo, b"<html>maintenance</html>"),
            (Provider::JPay, br#"{"refresh":"r"}"#),
            (Provider::Pagamio, br#"{"successful":false,"error":"bad"}"#),
            (Provider::Pagamio, br#"{"accessToken":"a"}"#),
        ] {
            assert!(parse(provider, body, NOW).is_err(), "{provider:?} {body:?}");
        }
        let long = format!(
            r#"{{"access_token":"{}","expires_in":60}}"#,
            "a".repeat(MAX_TOKEN_BYTES + 1)
        );
        assert!(parse(Provider::Mpesa, long.as_bytes(), NOW).is_err());
    }

    #[test]
    fn a_lifetime_beyond_a_day_is_believed_as_a_day() {
        let got = parse(
            Provider::Mpesa,
            br#"{"access_token":"a","expires_in":999999999}"#,
            NOW,
        )
        .unwrap();
        assert_eq!(got.access.expires_at, NOW + 86_400);
    }

    #[test]
    fn retry_after_is_seconds_bounded_to_ten_minutes() {
        assert_eq!(retry_after(Some("30")), Some(30));
        assert_eq!(retry_after(Some("0")), Some(1));
        assert_eq!(retry_after(Some("86400")), Some(600));
        assert_eq!(retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(retry_after(None), None);
    }

    #[test]
    fn tokens_print_no_value() {
        let t = Token {
            value: SecretString::from("canary-token-value".to_owned()),
            expires_at: NOW,
        };
        assert!(!format!("{t:?}").contains("canary"));
    }
}
