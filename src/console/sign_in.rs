//! Signing in and out of the console: the sign-in form's server-issued CSRF token (SPEC §15),
//! the API's own sign-in behind it (throttled, audited, allowlisted), and the session's
//! tokens into cookies.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use secrecy::SecretString;

use crate::audit::RequestMeta;
use crate::routes::sessions;
use crate::state::AppState;

use super::cookies::{clear_session, cookie, removal, set_session, Jar};
use super::{
    html, retry_after, same_token, see_other, views, Fields, Page, Posted, Refusal, PREFIX,
};

/// Keys the sign-in form's tokens (a fixed label, never caller data).
const SIGN_IN_PURPOSE: &str = "hazina/console-sign-in/v1";
/// A sign-in form's token is good for this long.
const SIGN_IN_TTL_SECONDS: i64 = 2 * 60 * 60;
const SIGN_IN_NONCE: usize = 16;

/// The MAC of a sign-in token's nonce and issue time.
fn sign_in_mac(state: &AppState, nonce: &[u8], issued_at: i64) -> Option<[u8; 32]> {
    use hmac::{Hmac, Mac};
    let keyring = &state.keyring;
    let key = keyring.derive(keyring.active_version(), SIGN_IN_PURPOSE)?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_ref()).ok()?;
    mac.update(nonce);
    mac.update(&issued_at.to_be_bytes());
    Some(mac.finalize().into_bytes().into())
}

/// A new sign-in token issued by this server: a random nonce, the time, and their MAC under
/// a keyring-derived key (SPEC §15). A value the client chose never verifies.
fn sign_in_token(state: &AppState) -> Option<String> {
    use base64::Engine as _;
    use rand::RngCore;
    let mut nonce = [0u8; SIGN_IN_NONCE];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let now = state.clock.now();
    let mac = sign_in_mac(state, &nonce, now)?;
    let mut raw = nonce.to_vec();
    raw.extend_from_slice(&now.to_be_bytes());
    raw.extend_from_slice(&mac);
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

/// Whether `token` is one this server issued within [`SIGN_IN_TTL_SECONDS`].
fn sign_in_token_valid(state: &AppState, token: &str) -> bool {
    use base64::Engine as _;
    use subtle::ConstantTimeEq;
    let Ok(raw) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token) else {
        return false;
    };
    if raw.len() != SIGN_IN_NONCE + 8 + 32 {
        return false;
    }
    let (nonce, rest) = raw.split_at(SIGN_IN_NONCE);
    let (time, mac) = rest.split_at(8);
    let issued_at = i64::from_be_bytes(time.try_into().unwrap_or([0; 8]));
    let age = state.clock.now().saturating_sub(issued_at);
    (0..=SIGN_IN_TTL_SECONDS).contains(&age)
        && sign_in_mac(state, nonce, issued_at).is_some_and(|m| bool::from(m.ct_eq(mac)))
}

fn sign_in_form(
    req: &HttpRequest,
    status: StatusCode,
    error: Option<&str>,
    username: &str,
) -> HttpResponse {
    let Some(state) = req.app_data::<web::Data<AppState>>() else {
        return Refusal::internal(anyhow::anyhow!("application state missing")).error_response();
    };
    let https = state.config.served_over_https();
    let kept = Jar::SignIn
        .read(req, https)
        .filter(|t| sign_in_token_valid(state, t));
    let Some(token) = kept.or_else(|| sign_in_token(state)) else {
        return Refusal::internal(anyhow::anyhow!("no active master key")).error_response();
    };
    let mut res = html(status, views::sign_in(&token, error, username));
    let _ = res.add_cookie(&cookie(Jar::SignIn, token, https));
    res
}

pub(super) async fn sign_in_page(req: HttpRequest) -> HttpResponse {
    sign_in_form(&req, StatusCode::OK, None, "")
}

/// `POST /console/login/`: the API's sign-in (throttled, audited, allowlisted), then the
/// session's tokens into cookies.
pub(super) async fn sign_in(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<Vec<(String, String)>>,
) -> HttpResponse {
    let fields = Fields(form.into_inner());
    let https = state.config.served_over_https();
    // The token must be one this server issued, and the form must carry the cookie's.
    let expected = Jar::SignIn
        .read(&req, https)
        .filter(|t| sign_in_token_valid(&state, t));
    if !same_token(fields.get("csrf"), expected.as_deref().unwrap_or("")) {
        return Refusal::forged().error_response();
    }
    let username = fields.get("username").unwrap_or("").to_owned();
    let password = SecretString::from(fields.get("password").unwrap_or("").to_owned());
    let meta = RequestMeta::of(&req);
    match sessions::sign_in(&state, &meta, username.clone(), password).await {
        Ok(pair) => {
            let mut res = see_other(PREFIX);
            set_session(&mut res, &pair, https);
            let _ = res.add_cookie(&removal(Jar::SignIn, https));
            res
        }
        Err(e) => {
            let status = e.status_code();
            let mut res = sign_in_form(&req, status, Some(&super::message_of(&e)), &username);
            retry_after(&mut res, &e);
            res
        }
    }
}

/// `POST /console/logout/`: the API's logout (the session row is revoked), cookies cleared.
pub(super) async fn sign_out(posted: Posted) -> Page {
    let Posted { cx, .. } = posted;
    cx.ask0(sessions::logout).await?;
    let https = cx.state.config.served_over_https();
    let mut res = see_other("/console/login/");
    clear_session(&mut res, https);
    Ok(res)
}
