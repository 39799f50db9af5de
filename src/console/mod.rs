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
mod owner;
mod views;

use std::future::{ready, Future, Ready};
use std::rc::Rc;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::{forward_ready, Payload, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use futures_util::future::LocalBoxFuture;
use maud::Markup;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::Value;
use zeroize::Zeroize;

use crate::audit::RequestMeta;
use crate::auth::jwt::TokenType;
use crate::domain::Role;
use crate::error::ApiError;
use crate::http::principal::bearer_token;
use crate::http::AuthenticatedUser;
use crate::routes::sessions::{self, TokenPair};
use crate::routes::JsonObject;
use crate::state::AppState;

/// Where the console lives; every console path starts with it.
pub const PREFIX: &str = "/console/";

/// The console's Content-Security-Policy: scripts, styles and images from the console's own
/// files only (never inline), forms posted only to itself, never framed.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
    base-uri 'none'";

/// The console's cookies. Over HTTPS (hazina's own TLS, or `HAZINA_PUBLIC_URL=https://…`)
/// they are `__Host-` prefixed, `Secure` and scoped to `/` — a sibling subdomain cannot set
/// or overwrite such a cookie — and only the prefixed names are read; over plain HTTP (a
/// development set-up) they are unprefixed and scoped to `/console/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Jar {
    Access,
    Refresh,
    /// The sign-in form's CSRF token: server-issued (see [`sign_in_token`]), and the cookie
    /// and the form field must match.
    SignIn,
}

impl Jar {
    fn name(self, https: bool) -> &'static str {
        match (self, https) {
            (Jar::Access, false) => "hazina_access",
            (Jar::Refresh, false) => "hazina_refresh",
            (Jar::SignIn, false) => "hazina_signin",
            (Jar::Access, true) => "__Host-hazina_access",
            (Jar::Refresh, true) => "__Host-hazina_refresh",
            (Jar::SignIn, true) => "__Host-hazina_signin",
        }
    }

    fn read(self, req: &HttpRequest, https: bool) -> Option<String> {
        req.cookie(self.name(https)).map(|c| c.value().to_owned())
    }
}

/// The access token of a console request's cookie, for the rate limiter's choice of budget
/// (it runs before [`CookieSession`]).
pub fn cookie_access_token(req: &HttpRequest, https: bool) -> Option<String> {
    let path = req.path();
    (path.starts_with(PREFIX) && !path.starts_with(STATIC))
        .then(|| Jar::Access.read(req, https))
        .flatten()
}
const STATIC: &str = "/console/static/";

/// Keys the console's CSRF tokens (a fixed label, never caller data).
const CSRF_PURPOSE: &str = "hazina/console-csrf/v1";

/// Registers the console's pages and files.
pub fn register(cfg: &mut web::ServiceConfig, max_body_bytes: usize) {
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

// ---------------------------------------------------------------------------------------
// Sessions by cookie

fn cookie(jar: Jar, value: String, https: bool) -> Cookie<'static> {
    Cookie::build(jar.name(https), value)
        .path(if https { "/" } else { PREFIX })
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(https)
        .finish()
}

fn removal(jar: Jar, https: bool) -> Cookie<'static> {
    let mut c = cookie(jar, String::new(), https);
    c.make_removal();
    c
}

fn set_session<B>(res: &mut HttpResponse<B>, pair: &TokenPair, https: bool) {
    for (jar, token) in [(Jar::Access, &pair.access), (Jar::Refresh, &pair.refresh)] {
        // A token is base64url and dots: always a valid cookie value.
        let _ = res.add_cookie(&cookie(jar, token.expose_secret().to_owned(), https));
    }
}

fn clear_session<B>(res: &mut HttpResponse<B>, https: bool) {
    for jar in [Jar::Access, Jar::Refresh] {
        let _ = res.add_cookie(&removal(jar, https));
    }
}

/// Turns a console request's session cookies into its bearer token, before the rate limiter
/// and the handlers see it: an access token that has expired is renewed through the API's
/// single-use refresh (the new pair replaces the cookies). Requests outside `/console/`, and
/// any request that brings its own `Authorization`, pass untouched.
pub struct CookieSession;

impl<S, B> Transform<S, ServiceRequest> for CookieSession
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = CookieSessionMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(CookieSessionMiddleware {
            service: Rc::new(service),
        }))
    }
}

pub struct CookieSessionMiddleware<S> {
    service: Rc<S>,
}

impl<S, B> Service<ServiceRequest> for CookieSessionMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        let service = Rc::clone(&self.service);
        let path = req.path();
        let console = path.starts_with(PREFIX) && !path.starts_with(STATIC);
        if !console || req.headers().contains_key(header::AUTHORIZATION) {
            return Box::pin(service.call(req));
        }
        let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
            return Box::pin(service.call(req));
        };
        let https = state.config.served_over_https();
        let access = Jar::Access.read(req.request(), https);
        let refresh = Jar::Refresh.read(req.request(), https);
        Box::pin(async move {
            let now = state.clock.now();
            let live = access.filter(|t| state.tokens.validate(t, TokenType::Access, now).is_ok());
            let (token, renewed, dead) = match (live, refresh) {
                (Some(token), _) => (Some(SecretString::from(token)), None, false),
                (None, Some(refresh)) => {
                    let meta = RequestMeta::of(req.request());
                    match sessions::renew(&state, &meta, &SecretString::from(refresh)).await {
                        Ok(pair) => (Some(pair.access.clone()), Some(pair), false),
                        Err(_) => (None, None, true),
                    }
                }
                (None, None) => (None, None, false),
            };
            if let Some(token) = token {
                let bearer = format!("Bearer {}", token.expose_secret());
                if let Ok(value) = HeaderValue::from_str(&bearer) {
                    req.headers_mut().insert(header::AUTHORIZATION, value);
                }
            }
            let mut res = service.call(req).await?;
            // A handler that set the session itself (sign-in, sign-out) has the last word.
            let handled = res
                .response()
                .cookies()
                .any(|c| c.name() == Jar::Access.name(https));
            if !handled {
                if let Some(pair) = &renewed {
                    set_session(res.response_mut(), pair, https);
                } else if dead {
                    clear_session(res.response_mut(), https);
                }
            }
            Ok(res)
        })
    }
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

    /// The pieces of the page frame that depend on who is looking.
    pub fn frame(&self) -> views::Frame<'_> {
        views::Frame {
            username: &self.user.username,
            role: self.user.role,
            csrf: &self.csrf,
        }
    }

    /// Runs one of the API's handlers of the common shape (state, caller, request, `extra`:
    /// a path, a query or a body) for this user, and reads its answer.
    pub async fn ask<T, F, Fut>(&self, handler: F, extra: T) -> Result<Value, Refusal>
    where
        F: FnOnce(web::Data<AppState>, AuthenticatedUser, RequestMeta, T) -> Fut,
        Fut: Future<Output = Result<HttpResponse, ApiError>>,
    {
        json(self.respond(handler, extra).await?).await
    }

    /// [`ask`](Self::ask), keeping the answer as it is (see [`pass`]).
    pub async fn respond<T, F, Fut>(&self, handler: F, extra: T) -> Page
    where
        F: FnOnce(web::Data<AppState>, AuthenticatedUser, RequestMeta, T) -> Fut,
        Fut: Future<Output = Result<HttpResponse, ApiError>>,
    {
        pass(handler(
            self.state.clone(),
            self.user.clone(),
            self.meta(),
            extra,
        ))
        .await
    }

    /// [`respond`](Self::respond) for a handler that takes nothing more.
    pub async fn respond0<F, Fut>(&self, handler: F) -> Page
    where
        F: FnOnce(web::Data<AppState>, AuthenticatedUser, RequestMeta) -> Fut,
        Fut: Future<Output = Result<HttpResponse, ApiError>>,
    {
        pass(handler(self.state.clone(), self.user.clone(), self.meta())).await
    }

    /// [`ask`](Self::ask) for a handler that takes nothing more.
    pub async fn ask0<F, Fut>(&self, handler: F) -> Result<Value, Refusal>
    where
        F: FnOnce(web::Data<AppState>, AuthenticatedUser, RequestMeta) -> Fut,
        Fut: Future<Output = Result<HttpResponse, ApiError>>,
    {
        json(self.respond0(handler).await?).await
    }

    /// [`ask`](Self::ask) with a JSON body made of `fields` (see [`body`]).
    pub async fn send<B, F, Fut>(&self, handler: F, fields: Value) -> Result<Value, Refusal>
    where
        B: DeserializeOwned,
        F: FnOnce(
            web::Data<AppState>,
            AuthenticatedUser,
            RequestMeta,
            web::Json<JsonObject<B>>,
        ) -> Fut,
        Fut: Future<Output = Result<HttpResponse, ApiError>>,
    {
        self.ask(handler, body(fields)?).await
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
                    message: other.public_message(),
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

async fn sign_in_page(req: HttpRequest) -> HttpResponse {
    sign_in_form(&req, StatusCode::OK, None, "")
}

/// `POST /console/login/`: the API's sign-in (throttled, audited, allowlisted), then the
/// session's tokens into cookies.
async fn sign_in(
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
            let mut res = sign_in_form(&req, status, Some(&e.public_message()), &username);
            retry_after(&mut res, &e);
            res
        }
    }
}

/// `POST /console/logout/`: the API's logout (the session row is revoked), cookies cleared.
async fn sign_out(posted: Posted) -> Page {
    let Posted { cx, .. } = posted;
    cx.ask0(sessions::logout).await?;
    let https = cx.state.config.served_over_https();
    let mut res = see_other("/console/login/");
    clear_session(&mut res, https);
    Ok(res)
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
