//! SPEC §2.2: login, single-use refresh tokens with reuse detection, logout, and the checks
//! every signed token must pass before it names a caller.

use std::collections::BTreeSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

const BAD_LOGIN: &str = "Invalid username or password";
const BAD_REFRESH: &str = "Invalid or expired refresh token";
const UNAUTHENTICATED: &str = "Authentication credentials were not provided or are invalid";
/// Any endpoint that needs a Bearer access token and answers 200 to a live one.
const PROTECTED: &str = "/payments/credentials/";
const ACCESS_TTL: i64 = 15 * 60;
const REFRESH_TTL: i64 = 7 * 24 * 60 * 60;

async fn refresh(app: &TestApp, refresh_token: &str) -> Response {
    app.client
        .post(app.url("/users/token/refresh/"))
        .json(&json!({ "refresh_token": refresh_token }))
        .send()
        .await
        .unwrap()
}

/// Asserts a 200 token pair and returns `(access, refresh)`.
async fn token_pair(res: Response) -> (String, String) {
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

/// The decoded JSON of one base64url segment of a token.
fn segment(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).unwrap();
    serde_json::from_slice(&B64URL.decode(part).unwrap()).unwrap()
}

fn keys_of(object: &Value) -> BTreeSet<String> {
    object.as_object().unwrap().keys().cloned().collect()
}

/// Replaces the character at `index` with a different base64url character.
fn change_char_at(token: &str, index: usize) -> String {
    let mut bytes = token.as_bytes().to_vec();
    bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

/// Signs `claims` as the server would: HS256 with kid `k1` and the server's real key.
fn sign_with_server_key(app: &TestApp, claims: &Value) -> String {
    let key = app.state.keyring.derive(1, "hazina/jwt/hs256").unwrap();
    sign(&EncodingKey::from_secret(key.as_ref()), claims)
}

fn sign(key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// Claims for a well-formed access token of `user`'s live session, as of the app's clock.
fn live_access_claims(app: &TestApp, user: &TestUser) -> Value {
    let now = app.clock.now();
    json!({
        "iss": "hazina",
        "aud": "hazina-api",
        "sub": user.id.to_string(),
        "exp": now + ACCESS_TTL,
        "nbf": now,
        "iat": now,
        "jti": uuid::Uuid::new_v4().to_string(),
        "typ": "access",
        "sid": segment(&user.access, 1)["sid"],
    })
}

#[tokio::test]
async fn login_returns_a_bearer_pair_of_signed_jwts_with_every_claim() {
    // Arrange
    let app = spawn_app().await;
    let id = app.insert_user("amina", hazina::domain::Role::User);

    // Act
    let res = app.login("amina", PASSWORD).await;

    // Assert
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let expected_keys: BTreeSet<String> =
        ["access_token", "refresh_token", "token_type", "expires_in"]
            .into_iter()
            .map(String::from)
            .collect();
    assert_eq!(keys_of(&body), expected_keys, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);

    let access = body["access_token"].as_str().unwrap();
    let refresh = body["refresh_token"].as_str().unwrap();
    let claim_names = [
        "iss", "aud", "sub", "exp", "nbf", "iat", "jti", "typ", "sid",
    ];
    for (token, typ, ttl) in [
        (access, "access", ACCESS_TTL),
        (refresh, "refresh", REFRESH_TTL),
    ] {
        assert_eq!(token.split('.').count(), 3, "{typ} token is a 3-part JWT");
        let header = segment(token, 0);
        assert_eq!(header["alg"], "HS256", "{header}");
        assert!(
            header["kid"].as_str().is_some_and(|k| !k.is_empty()),
            "{header}"
        );
        let claims = segment(token, 1);
        for name in claim_names {
            assert!(
                claims.get(name).is_some(),
                "{typ} token lacks `{name}`: {claims}"
            );
        }
        assert_eq!(claims["typ"], typ);
        assert_eq!(claims["sub"], id.to_string());
        assert_eq!(claims["iss"], "hazina");
        assert_eq!(claims["aud"], "hazina-api");
        let iat = claims["iat"].as_i64().unwrap();
        assert_eq!(claims["exp"].as_i64().unwrap() - iat, ttl, "{typ} lifetime");
    }
    let (a, r) = (segment(access, 1), segment(refresh, 1));
    assert_eq!(a["sid"], r["sid"], "both tokens name the same session");
    assert_ne!(a["jti"], r["jti"]);
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_username_answer_identically() {
    // Arrange
    let app = spawn_app().await;
    let user = app.user().await;

    // Act
    let wrong_password = app.login(&user.username, "not the password at all").await;
    let unknown_user = app.login("nobody_by_this_name", PASSWORD).await;

    // Assert
    assert_eq!(wrong_password.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown_user.status(), StatusCode::UNAUTHORIZED);
    let a = wrong_password.bytes().await.unwrap();
    let b = unknown_user.bytes().await.unwrap();
    assert_eq!(a, b, "the two bodies are byte-identical");
    assert_eq!(&a[..], br#"{"error":"Invalid username or password"}"#);
}

#[tokio::test]
async fn a_disabled_user_cannot_log_in() {
    // Arrange
    let app = spawn_app().await;
    let user = app.user().await;
    assert_eq!(app.disable_user(&user.username), Some(user.id));

    // Act
    let res = app.login(&user.username, PASSWORD).await;

    // Assert
    assert_error(res, StatusCode::UNAUTHORIZED, BAD_LOGIN).await;
}

#[tokio::test]
async fn refresh_returns_a_new_pair_whose_access_token_works() {
    // Arrange
    let app = spawn_app().await;
    let user = app.user().await;

    // Act
    let (access, refresh_token) = token_pair(refresh(&app, &user.refresh).await).await;

    // Assert
    assert_ne!(access, user.access);
    assert_ne!(refresh_token, user.refresh);
    assert_eq!(segment(&access, 1)["typ"], "access");
    assert_eq!(segment(&refresh_token, 1)["typ"], "refresh");
    assert_eq!(
        segment(&access, 1)["sid"],
        segment(&user.access, 1)["sid"],
        "refreshing keeps the session"
    );
    assert_eq!(app.get(PROTECTED, &access).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn each_refresh_token_works_once() {
    // Arrange
    let app = spawn_app().await;
    let user = app.user().await;
    token_pair(refresh(&app, &user.refresh).await).await;

    // Act
    let again = refresh(&app, &user.refresh).await;

    // Assert
    assert_error(again, StatusCode::UNAUTHORIZED, BAD_REFRESH).await;
}

#[tokio::test]
async fn reusing_a_spent_refresh_token_revokes_that_whole_session_only() {
    // Arrange: two sessions of one user; session one has been refreshed once.
    let app = spawn_app().await;
    let user = app.user().await;
    let (other_access, other_refresh) = token_pair(app.login(&user.username, PASSWORD).await).await;
    let (newest_access, newest_refresh) = token_pair(refresh(&app, &user.refresh).await).await;
    assert_eq!(
        app.get(PROTECTED, &newest_access).await.status(),
        StatusCode::OK
    );

    // Act: the spent refresh token is presented again.
    let reuse = refresh(&app, &user.refresh).await;

    // Assert
    assert_error(reuse, StatusCode::UNAUTHORIZED, BAD_REFRESH).await;
    assert_error(
        refresh(&app, &newest_refresh).await,
        StatusCode::UNAUTHORIZED,
        BAD_REFRESH,
    )
    .await;
    for access in [&user.access, &newest_access] {
        assert_error(
            app.get(PROTECTED, access).await,
            StatusCode::UNAUTHORIZED,
            UNAUTHENTICATED,
        )
        .await;
    }
    assert_eq!(
        app.get(PROTECTED, &other_access).await.status(),
        StatusCode::OK
    );
    token_pair(refresh(&app, &other_refresh).await).await;
}

#[tokio::test]
async fn an_access_token_is_refused_at_the_refresh_endpoint() {
    // Arrange
    let app = spawn_app().await;
    let user = app.user().await;

    // Act
    let res = refresh(&app, &user.access).await;

    // Assert
    assert_error(res, StatusCode::UNAUTHORIZED, BAD_REFRESH).await;
}

#[tokio::test]
async fn a_refresh_token_is_refused_as_a_bearer_token() {
    // Arrange
    let app = spawn_app().await;
    let user = app.user().await;

    // Act
    let res = app.get(PROTECTED, &user.refresh).await;

    // Assert
    assert_error(res, StatusCode::UNAUTHORIZED, UNAUTHENTICATED).await;
}

#[tokio::test]
async fn a_token_with_one_payload_character_changed_is_refused() {
    // Arrange
    let app = spawn_app().await;
    let user = app.user().await;
    let payload_start = user.access.find('.').unwrap() + 1;
    let payload_len = user.access.split('.').nth(1).unwrap().len();
    let tampered = change_char_at(&user.access, payload_start + payload_len / 2);

    // Act
    let res = app.get(PROTECTED, &tampered).await;

    // Assert
    assert_error(res, StatusCode::UNAUTHORIZED, UNAUTHENTICATED).await;
}

#[tokio::test]
async fn a_token_with_one_signature_character_changed_is_refused() {
    // Arrange
    let app = spawn_app().await;
    let user = app.user().await;
    let signature_start = user.access.rfind('.').unwrap() + 1;
    let signature_len = user.access.len() - signature_start;
    let tampered = change_char_at(&user.access, signature_start + signature_len / 2);

    // Act
    let res = app.get(PROTECTED, &tampered).await;

    // Assert
    assert_error(res, StatusCode::UNAUTHORIZED, UNAUTHENTICATED).await;
}

#[tokio::test]
async fn a_token_carrying_another_users_payload_is_refused() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.user().await;
    let bob = app.user().await;
    let a: Vec<&str> = alice.access.split('.').collect();
    let b: Vec<&str> = bob.access.split('.').collect();
    let spliced = format!("{}.{}.{}", a[0], b[1], a[2]);

    // Act
    let res = app.get(PROTECTED, &spliced).await;

    // Assert
    assert_error(res, StatusCode::UNAUTHORIZED, UNAUTHENTICATED).await;
}

#[tokio::test]
async fn an_expired_access_token_is_refused_while_a_fresh_login_works() {
    // Arrange
    let app = spawn_app().await;
    let user = app.user().await;
    assert_eq!(
        app.get(PROTECTED, &user.access).await.status(),
        StatusCode::OK
    );
    app.clock.advance(ACCESS_TTL + 31);

    // Act
    let res = app.get(PROTECTED, &user.access).await;

    // Assert: RFC 6750's invalid_token, saying why, and a code a client can act on.
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.headers()["www-authenticate"],
        r#"Bearer error="invalid_token", error_description="The access token expired""#
    );
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({ "error": "The access token expired", "code": "token_expired" })
    );
    let (fresh, _) = token_pair(app.login(&user.username, PASSWORD).await).await;
    assert_eq!(app.get(PROTECTED, &fresh).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_garbage_or_revoked_token_is_only_invalid_and_a_missing_one_is_only_challenged() {
    let app = spawn_app().await;
    let user = app.user().await;
    // Not a token at all, and a token whose signature fails.
    let mut tampered = user.access.clone();
    tampered.pop();
    tampered.push(if user.access.ends_with('A') { 'B' } else { 'A' });
    for bad in ["garbage", tampered.as_str()] {
        let res = app.get(PROTECTED, bad).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            res.headers()["www-authenticate"],
            r#"Bearer error="invalid_token""#
        );
        assert_error(res, StatusCode::UNAUTHORIZED, UNAUTHENTICATED).await;
    }
    // A revoked session's token is valid in form, and still only invalid.
    let res = app.post_empty("/users/logout/", &user.access).await;
    assert!(res.status().is_success());
    let res = app.get(PROTECTED, &user.access).await;
    assert_eq!(
        res.headers()["www-authenticate"],
        r#"Bearer error="invalid_token""#
    );
    assert_error(res, StatusCode::UNAUTHORIZED, UNAUTHENTICATED).await;
    // No token: the bare challenge (RFC 6750 §3.1: no error code).
    let res = app.client.get(app.url(PROTECTED)).send().await.unwrap();
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    assert_error(res, StatusCode::UNAUTHORIZED, UNAUTHENTICATED).await;
}

#[tokio::test]
async fn an_expired_refresh_token_is_refused() {
    // Arrange
    let app = spawn_app().await;
    let user = app.user().await;
    app.clock.advance(REFRESH_TTL + 31);

    // Act
    let res = refresh(&app, &user.refresh).await;

    // Assert
    assert_error(res, StatusCode::UNAUTHORIZED, BAD_REFRESH).await;
}

#[tokio::test]
async fn an_unsigned_alg_none_token_is_refused() {
    // Arrange: the claims of a real, live access token under an `alg: none` header.
    let app = spawn_app().await;
    let user = app.user().await;
    let header = B64URL.encode(r#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
    let payload = B64URL.encode(live_access_claims(&app, &user).to_string());
    let token = format!("{header}.{payload}.");

    // Act
    let res = app.get(PROTECTED, &token).await;

    // Assert
    assert_error(res, StatusCode::UNAUTHORIZED, UNAUTHENTICATED).await;
}

#[tokio::test]
async fn a_token_signed_with_another_key_is_refused() {
    // Arrange
    let app = spawn_app().await;
    let user = app.user().await;
    let other_key = EncodingKey::from_secret(&[7u8; 32]);
    let token = sign(&other_key, &live_access_claims(&app, &user));

    // Act
    let res = app.get(PROTECTED, &token).await;

    // Assert
    assert_error(res, StatusCode::UNAUTHORIZED, UNAUTHENTICATED).await;
}

#[tokio::test]
async fn a_well_formed_token_signed_with_the_server_key_is_accepted() {
    // Arrange: the control for the forged-token tests below, which change one thing each.
    let app = spawn_app().await;
    let user = app.user().await;
    let token = sign_with_server_key(&app, &live_access_claims(&app, &user));

    // Act
    let res = app.get(PROTECTED, &token).await;

    // Assert
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_correctly_signed_token_with_a_mistyped_claim_is_refused() {
    // Arrange
    let app = spawn_app().await;
    let user = app.user().await;
    let mut claims = live_access_claims(&app, &user);
    claims["exp"] = json!(claims["exp"].to_string());

    // Act
    let res = app
        .get(PROTECTED, &sign_with_server_key(&app, &claims))
        .await;

    // Assert
    assert_error(res, StatusCode::UNAUTHORIZED, UNAUTHENTICATED).await;
}

#[tokio::test]
async fn a_correctly_signed_refresh_typed_token_is_refused_as_a_bearer_token() {
    // Arrange
    let app = spawn_app().await;
    let user = app.user().await;
    let mut claims = live_access_claims(&app, &user);
    claims["typ"] = json!("refresh");

    // Act
    let res = app
        .get(PROTECTED, &sign_with_server_key(&app, &claims))
        .await;

    // Assert
    assert_error(res, StatusCode::UNAUTHORIZED, UNAUTHENTICATED).await;
}

#[tokio::test]
async fn a_correctly_signed_token_for_another_audience_is_refused() {
    // Arrange
    let app = spawn_app().await;
    let user = app.user().await;
    let mut claims = live_access_claims(&app, &user);
    claims["aud"] = json!("some-other-api");

    // Act
    let res = app
        .get(PROTECTED, &sign_with_server_key(&app, &claims))
        .await;

    // Assert
    assert_error(res, StatusCode::UNAUTHORIZED, UNAUTHENTICATED).await;
}

#[tokio::test]
async fn a_correctly_signed_token_from_another_issuer_is_refused() {
    // Arrange
    let app = spawn_app().await;
    let user = app.user().await;
    let mut claims = live_access_claims(&app, &user);
    claims["iss"] = json!("not-hazina");

    // Act
    let res = app
        .get(PROTECTED, &sign_with_server_key(&app, &claims))
        .await;

    // Assert
    assert_error(res, StatusCode::UNAUTHORIZED, UNAUTHENTICATED).await;
}

#[tokio::test]
async fn a_correctly_signed_token_missing_a_required_claim_is_refused() {
    // Arrange
    let app = spawn_app().await;
    let user = app.user().await;
    for missing in ["jti", "sid", "nbf"] {
        let mut claims = live_access_claims(&app, &user);
        claims.as_object_mut().unwrap().remove(missing);

        // Act
        let res = app
            .get(PROTECTED, &sign_with_server_key(&app, &claims))
            .await;

        // Assert
        assert_eq!(
            res.status(),
            StatusCode::UNAUTHORIZED,
            "a token without `{missing}`"
        );
        assert_error(res, StatusCode::UNAUTHORIZED, UNAUTHENTICATED).await;
    }
}

#[tokio::test]
async fn logout_revokes_the_sessions_access_and_refresh_tokens() {
    // Arrange
    let app = spawn_app().await;
    let user = app.user().await;

    // Act
    let res = app.post_empty("/users/logout/", &user.access).await;

    // Assert
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body, json!({ "message": "Logged out successfully" }));
    assert_error(
        app.get(PROTECTED, &user.access).await,
        StatusCode::UNAUTHORIZED,
        UNAUTHENTICATED,
    )
    .await;
    assert_error(
        refresh(&app, &user.refresh).await,
        StatusCode::UNAUTHORIZED,
        BAD_REFRESH,
    )
    .await;
}

#[tokio::test]
async fn a_disabled_users_valid_access_token_is_refused_on_the_next_request() {
    // Arrange
    let app = spawn_app().await;
    let user = app.user().await;
    assert_eq!(
        app.get(PROTECTED, &user.access).await.status(),
        StatusCode::OK
    );

    // Act
    app.sql_execute(&format!(
        "UPDATE users SET is_disabled = TRUE WHERE id = {}",
        user.id
    ));
    let res = app.get(PROTECTED, &user.access).await;

    // Assert
    assert_error(res, StatusCode::UNAUTHORIZED, UNAUTHENTICATED).await;
}
