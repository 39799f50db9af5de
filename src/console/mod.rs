//! The console (SPEC §12): HTML pages for owners, admins and the security team under
//! `/console/`, rendered on the server and readable with no script at all.
//!
//! **It is a client of the API's own handlers, called in process.** A console page asks the
//! same handler the JSON API routes to (`routes::credentials::list`, `routes::admin::…`) and
//! renders its answer, so every permission check, owner scope, integrity check, rate limit
//! and audit entry is the API's, unchanged; the console adds only HTML, a cookie session and
//! CSRF tokens. Nothing here opens a secret: no page can show a stored key, because no
//! handler it calls returns one (the reveal is never called).
//!
//! Sessions: signing in creates the same revocable session row as `POST /users/login/`; its
//! access and refresh tokens live in `HttpOnly`, `SameSite=Strict` cookies scoped to
//! `/console/` (`Secure` under TLS). [`CookieSession`] turns them into the request's bearer
//! token before the rate limiter runs, renewing an expired access token through the API's
//! single-use refresh. Only `/console/` paths ever read the cookies: the API never takes
//! them, so no JSON endpoint can be driven by a forged form. Two requests that race to renew
//! the same expired token spend its refresh token twice, and the API's reuse rule then ends
//! the session (the browser signs in again): strict by choice, never a token handed out twice.
//!
//! CSRF: every form carries a token, an HMAC of the session id under a keyring-derived key;
//! [`Posted`] refuses a post without the right one before any handler runs (the sign-in form,
//! before there is a session, carries a random token that must match its cookie). Pages send
//! [`CSP`] (no inline script or style), `X-Frame-Options: DENY` and `Cache-Control: no-store`.

mod admin;
mod auditor;
mod cookies;
mod owner;
mod sign_in;
mod views;

pub use cookies::{cookie_access_token, CookieSession, CookieSessionMiddleware};

use std::future::Future;

use actix_web::dev::Payload;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use futures_util::future::LocalBoxFuture;
use maud::Markup;
use serde::de::DeserializeOwned;
use serde_json::Value;
use zeroize::Zeroize;

use crate::audit::RequestMeta;
use crate::domain::Role;
use crate::error::ApiError;
use crate::http::principal::bearer_token;
use crate::http::{AuthenticatedUser, UserRequest};
use crate::routes::JsonObject;
use crate::state::AppState;

use cookies::clear_session;
use sign_in::{sign_in, sign_in_page, sign_out};

/// Where the console lives; every console path starts with it.
pub const PREFIX: &str = "/console/";
/// Where the console's compiled-in files are served (outside every rate limit).
pub const STATIC_PREFIX: &str = "/console/static/";

/// The console's Content-Security-Policy: scripts, styles and images from the console's own
/// files only (never inline), forms posted only to itself, never framed.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
    base-uri 'none'";

/// Keys the console's CSRF tokens (a fixed label, never caller data).
const CSRF_PURPOSE: &str = "hazina/console-csrf/v1";

/// Registers the console's pages and files, and `/`, which sends a browser to the console.
pub fn register(cfg: &mut web::ServiceConfig, max_body_bytes: usize) {
    cfg.route("/", web::get().to(to_home));
    cfg.service(
        web::scope("/console")
            .app_data(
                web::FormConfig::default()
                    .limit(max_body_bytes)
                    .error_handler(|_, _| Refusal::bad("The form could not be read").into()),
            )
            .app_data(web::PathConfig::default().error_handler(|_, _| Refusal::missing().into()))
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|_, _| Refusal::bad("Invalid query parameters").into()),
            )
            .route("", web::get().to(to_home))
            .route("/", web::get().to(home))
            .route("/static/{file}", web::get().to(asset))
            .route("/login/", web::get().to(sign_in_page))
            .route("/login/", web::post().to(sign_in))
            .route("/logout/", web::post().to(sign_out))
            .configure(owner::register)
            .configure(admin::register)
            .configure(auditor::register)
            .default_service(web::to(not_found)),
    );
}

/// The CSRF token of a session: HMAC-SHA-256 of its id under a keyring-derived key.
fn csrf_token(state: &AppState, session_id: &str) -> Result<String, Refusal> {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let keyring = &state.keyring;
    let key = keyring
        .derive(keyring.active_version(), CSRF_PURPOSE)
        .ok_or_else(|| Refusal::internal(anyhow::anyhow!("no active master key")))?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_ref()).map_err(Refusal::internal)?;
    mac.update(session_id.as_bytes());
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

fn same_token(given: Option<&str>, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    given.is_some_and(|g| {
        !expected.is_empty() && bool::from(g.as_bytes().ct_eq(expected.as_bytes()))
    })
}

// ---------------------------------------------------------------------------------------
// What every page has: the signed-in user, and answers from the API's handlers

/// The signed-in user of a console page, and the request it came with.
pub struct Cx {
    pub req: HttpRequest,
    pub state: web::Data<AppState>,
    pub user: AuthenticatedUser,
    /// This session's CSRF token, for the page's forms.
    pub csrf: String,
}

impl Cx {
    pub fn meta(&self) -> RequestMeta {
        RequestMeta::of(&self.req)
    }

    /// This user's request, as the API's handlers take it.
    pub fn request(&self) -> UserRequest {
        UserRequest {
            state: self.state.clone(),
            user: self.user.clone(),
            meta: self.meta(),
        }
    }

    /// The pieces of the page frame that depend on who is looking.
    pub fn frame(&self) -> views::Frame<'_> {
        views::Frame {
            username: &self.user.username,
            role: self.user.role,
            csrf: &self.csrf,
        }
    }

    /// Runs one of the API's handlers of the common shape (a [`UserRequest`] and `extra`:
    /// a path, a query or a body) for this user, and reads its answer.
    pub async fn ask<T, F, Fut>(&self, handler: F, extra: T) -> Result<Value, Refusal>
    where
        F: FnOnce(UserRequest, T) -> Fut,
        Fut: Future<Output = Result<HttpResponse, ApiError>>,
    {
        json(self.respond(handler, extra).await?).await
    }

    /// [`ask`](Self::ask), keeping the answer as it is (see [`pass`]).
    pub async fn respond<T, F, Fut>(&self, handler: F, extra: T) -> Page
    where
        F: FnOnce(UserRequest, T) -> Fut,
        Fut: Future<Output = Result<HttpResponse, ApiError>>,
    {
        pass(handler(self.request(), extra)).await
    }

    /// [`respond`](Self::respond) for a handler that takes nothing more.
    pub async fn respond0<F, Fut>(&self, handler: F) -> Page
    where
        F: FnOnce(UserRequest) -> Fut,
        Fut: Future<Output = Result<HttpResponse, ApiError>>,
    {
        pass(handler(self.request())).await
    }

    /// [`ask`](Self::ask) for a handler that takes nothing more.
    pub async fn ask0<F, Fut>(&self, handler: F) -> Result<Value, Refusal>
    where
        F: FnOnce(UserRequest) -> Fut,
        Fut: Future<Output = Result<HttpResponse, ApiError>>,
    {
        json(self.respond0(handler).await?).await
    }

    /// [`ask`](Self::ask) with a JSON body made of `fields` (see [`body`]).
    pub async fn send<B, F, Fut>(&self, handler: F, fields: Value) -> Result<Value, Refusal>
    where
        B: DeserializeOwned,
        F: FnOnce(UserRequest, web::Json<JsonObject<B>>) -> Fut,
        Fut: Future<Output = Result<HttpResponse, ApiError>>,
    {
        self.ask(handler, body(fields)?).await
    }

    /// [`send`](Self::send) to a handler that also takes a path segment (a username).
    pub async fn send_at<B, F, Fut>(
        &self,
        handler: F,
        segment: &str,
        fields: Value,
    ) -> Result<Value, Refusal>
    where
        B: DeserializeOwned,
        F: FnOnce(UserRequest, web::Path<String>, web::Json<JsonObject<B>>) -> Fut,
        Fut: Future<Output = Result<HttpResponse, ApiError>>,
    {
        let body = body(fields)?;
        call(handler(
            self.request(),
            web::Path::from(segment.to_owned()),
            body,
        ))
        .await
    }

    /// A full page for this user.
    pub fn page(&self, status: StatusCode, title: &str, body: Markup) -> HttpResponse {
        html(status, views::layout(title, Some(&self.frame()), body))
    }
}

impl FromRequest for Cx {
    type Error = Refusal;
    type Future = LocalBoxFuture<'static, Result<Self, Refusal>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<AppState>>()
                .cloned()
                .ok_or_else(|| Refusal::internal(anyhow::anyhow!("application state missing")))?;
            if bearer_token(&req).is_none() {
                return Err(Refusal::SignIn);
            }
            let user = AuthenticatedUser::extract(&req)
                .await
                .map_err(|e| Refusal::from_api(&e))?;
            let csrf = csrf_token(&state, &user.session_id)?;
            Ok(Cx {
                req,
                state,
                user,
                csrf,
            })
        })
    }
}

/// A posted form's fields. Values are wiped from memory when it is dropped (a form may carry
/// a private key or a password).
pub struct Fields(Vec<(String, String)>);

impl Fields {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A field's value, if present and not blank.
    pub fn filled(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.trim().is_empty())
    }

    /// Every value of a repeated field (checkboxes), blanks left out.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The filled fields named `prefix` + something, as (something, value).
    pub fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.0.iter().filter_map(move |(k, v)| {
            let name = k.strip_prefix(prefix)?;
            (!v.is_empty()).then_some((name, v.as_str()))
        })
    }
}

impl Drop for Fields {
    fn drop(&mut self) {
        for (_, v) in &mut self.0 {
            v.zeroize();
        }
    }
}

/// A form posted by the signed-in user, with its CSRF token checked: a post without this
/// session's token is refused (403) before any handler runs.
pub struct Posted {
    pub cx: Cx,
    pub fields: Fields,
}

impl FromRequest for Posted {
    type Error = Refusal;
    type Future = LocalBoxFuture<'static, Result<Self, Refusal>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let form = web::Form::<Vec<(String, String)>>::from_request(req, payload);
        let cx = Cx::from_request(req, &mut Payload::None);
        Box::pin(async move {
            let cx = cx.await?;
            let fields = Fields(
                form.await
                    .map_err(|_| Refusal::bad("The form could not be read"))?
                    .into_inner(),
            );
            if !same_token(fields.get("csrf"), &cx.csrf) {
                tracing::warn!("console: a form without this session's CSRF token was refused");
                return Err(Refusal::forged());
            }
            Ok(Posted { cx, fields })
        })
    }
}

/// Runs one of the API's handlers and keeps a successful answer as it is (a download, a
/// stream); a refusal keeps its status and public message (a 401 sends the browser to the
/// sign-in page).
pub async fn pass(answer: impl Future<Output = Result<HttpResponse, ApiError>>) -> Page {
    let res = answer.await.map_err(|e| Refusal::from_api(&e))?;
    let status = res.status();
    if status.is_success() {
        return Ok(res);
    }
    let body: Value = read(res)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let message = body["error"]
        .as_str()
        .unwrap_or("The request was refused")
        .to_owned();
    Err(match status {
        StatusCode::UNAUTHORIZED => Refusal::SignIn,
        _ => Refusal::Page { status, message },
    })
}

/// The whole body of an API answer.
pub async fn read(res: HttpResponse) -> Result<web::Bytes, Refusal> {
    actix_web::body::to_bytes(res.into_body())
        .await
        .map_err(|_| Refusal::internal(anyhow::anyhow!("an API answer could not be read")))
}

/// Runs one of the API's handlers and reads its JSON answer (see [`pass`]).
pub async fn call(
    answer: impl Future<Output = Result<HttpResponse, ApiError>>,
) -> Result<Value, Refusal> {
    json(pass(answer).await?).await
}

/// A successful answer's JSON body (`null` if it has none).
async fn json(res: HttpResponse) -> Result<Value, Refusal> {
    let bytes = read(res).await?;
    Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// A request body for one of the API's handlers, from fields the console gathered: the API's
/// own type and rules (unknown fields refused, lengths, formats) decide what is acceptable.
pub fn body<T: DeserializeOwned>(fields: Value) -> Result<web::Json<JsonObject<T>>, Refusal> {
    serde_json::from_value::<JsonObject<T>>(fields)
        .map(web::Json)
        .map_err(|e| Refusal::bad(&crate::error::describe_json_error(&e)))
}

pub fn html(status: StatusCode, page: Markup) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        // A console URL (a credential's id, a filter) never leaves in a Referer.
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .body(page.into_string())
}

/// 303 to another console page (after a form: the browser then loads it with GET).
pub fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location.to_owned()))
        .finish()
}

// ---------------------------------------------------------------------------------------
// Refusals, as pages

/// Why a console request ends in something other than its page.
#[derive(Debug)]
pub enum Refusal {
    /// No session, or a dead one: to the sign-in page.
    SignIn,
    /// An error page with the API's status and public message.
    Page { status: StatusCode, message: String },
}

impl Refusal {
    pub fn bad(message: &str) -> Self {
        Refusal::Page {
            status: StatusCode::BAD_REQUEST,
            message: message.to_owned(),
        }
    }

    pub fn missing() -> Self {
        Refusal::Page {
            status: StatusCode::NOT_FOUND,
            message: crate::error::NOT_FOUND.to_owned(),
        }
    }

    fn forged() -> Self {
        Refusal::Page {
            status: StatusCode::FORBIDDEN,
            message: "This form has expired or did not come from this console. Go back, \
                      reload the page and try again."
                .to_owned(),
        }
    }

    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        Refusal::from_api(&ApiError::Internal(e.into()))
    }

    pub fn from_api(e: &ApiError) -> Self {
        match e {
            ApiError::Unauthorized(_) | ApiError::InvalidToken | ApiError::TokenExpired => {
                Refusal::SignIn
            }
            other => {
                // Logs the cause of a 5xx once, as the API would.
                let _ = other.error_response();
                Refusal::Page {
                    status: other.status_code(),
                    message: message_of(other),
                }
            }
        }
    }

    /// The status and message of a refusal shown inside a page (a form's error).
    pub fn shown(self) -> Result<(StatusCode, String), Refusal> {
        match self {
            Refusal::SignIn => Err(Refusal::SignIn),
            Refusal::Page { status, message } => Ok((status, message)),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::SignIn => f.write_str("sign in required"),
            Refusal::Page { status, .. } => write!(f, "console refusal ({status})"),
        }
    }
}

impl ResponseError for Refusal {
    fn status_code(&self) -> StatusCode {
        match self {
            Refusal::SignIn => StatusCode::SEE_OTHER,
            Refusal::Page { status, .. } => *status,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Refusal::SignIn => {
                let mut res = see_other("/console/login/");
                // No request here to say which names are in use: both are cleared.
                clear_session(&mut res, false);
                clear_session(&mut res, true);
                res
            }
            Refusal::Page { status, message } => html(*status, views::problem(*status, message)),
        }
    }
}

pub type Page = Result<HttpResponse, Refusal>;

/// What a page says for an API refusal: its public message and, when the caller must wait
/// (a lockout, a spent budget), for how long, in words.
pub fn message_of(e: &ApiError) -> String {
    let message = e.public_message();
    match e {
        ApiError::TooManyRequests { retry_after, .. } => {
            format!(
                "{message} Try again in {}.",
                views::wait_words(*retry_after)
            )
        }
        _ => message,
    }
}

fn retry_after(res: &mut HttpResponse, e: &ApiError) {
    if let ApiError::TooManyRequests { retry_after, .. } = e {
        if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
}

/// An API refusal raised below the handlers (the rate limiter, the size guards) as a console
/// page, for a console path: the same status and words, as HTML.
pub fn refusal_page(e: &ApiError) -> HttpResponse {
    let mut res = Refusal::from_api(e).error_response();
    retry_after(&mut res, e);
    res
}

// ---------------------------------------------------------------------------------------
// Sign-in, sign-out, home, files

async fn to_home() -> HttpResponse {
    see_other(PREFIX)
}

/// `/console/`: each role's main page.
async fn home(cx: Cx) -> HttpResponse {
    see_other(match cx.user.role {
        Role::User => "/console/credentials/",
        Role::Admin => "/console/admin/",
        Role::Auditor => "/console/audit/",
    })
}

async fn not_found() -> HttpResponse {
    Refusal::Page {
        status: StatusCode::NOT_FOUND,
        message: "There is no such page.".into(),
    }
    .error_response()
}

/// The console's files, compiled into the binary.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("assets/favicon.svg"),
    ),
    (
        "follow.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/follow.js"),
    ),
];

async fn asset(path: web::Path<String>) -> HttpResponse {
    match ASSETS.iter().find(|(name, _, _)| *name == path.as_str()) {
        Some((_, kind, text)) => HttpResponse::Ok()
            .content_type(*kind)
            .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
            .body(*text),
        None => Refusal::Page {
            status: StatusCode::NOT_FOUND,
            message: "There is no such file.".into(),
        }
        .error_response(),
    }
}
