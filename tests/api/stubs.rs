//! Stub payment providers on loopback, written from the published request and response
//! shapes (Daraja, KopoKopo, JPay Africa, Pagamio), for the token broker's tests.
//!
//! A stub checks what it receives as its provider would: Daraja's HTTP Basic consumer
//! key:secret on a GET with `grant_type=client_credentials`; KopoKopo's form; the JSON bodies
//! of JPay and Pagamio. A request that is not well formed answers 400, wrong credentials 401.
//! It records every request, numbers the tokens it issues (`<provider>-access-<n>`) and can be
//! told to fail (an HTTP status, 429 with `Retry-After`, or never answering) or to hold its
//! answers until released.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::Engine;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Daraja,
    KopoKopo,
    JPay,
    /// Pagamio's `{accessToken, expiresIn}`.
    PagamioFlat,
    /// Pagamio's `{successful, data: {token, refreshToken, expiresIn}}`.
    PagamioWrapped,
}

/// How the stub answers the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Answer,
    Status(u16),
    /// 429 with this `Retry-After`.
    RateLimited(u64),
    /// Accepts the request and never answers.
    Hang,
    /// Refuses refresh tokens (401) but still exchanges credentials.
    RefuseRefresh,
}

/// One request as the stub received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn form(&self) -> HashMap<String, String> {
        url_decode_form(&String::from_utf8_lossy(&self.body))
    }
}

struct State {
    kind: Kind,
    /// The key and secret the provider holds for the merchant.
    credentials: Mutex<(String, String)>,
    mode: Mutex<Mode>,
    seen: Mutex<Vec<Seen>>,
    issued: Mutex<u64>,
    /// Refresh tokens issued and not yet used.
    refresh_tokens: Mutex<Vec<String>>,
    /// While set, answers wait for this to be released.
    hold: tokio::sync::Semaphore,
    held: std::sync::atomic::AtomicBool,
    /// Seconds a token is said to live.
    lifetime: i64,
    /// In every token this stub issues, so a test can search for its tokens anywhere.
    nonce: String,
}

impl State {
    fn prefix(&self) -> &'static str {
        match self.kind {
            Kind::Daraja => "daraja",
            Kind::KopoKopo => "kopokopo",
            Kind::JPay => "jpay",
            Kind::PagamioFlat | Kind::PagamioWrapped => "pagamio",
        }
    }

    fn access(&self, n: u64) -> String {
        format!("{}-access-{n}-{}", self.prefix(), self.nonce)
    }

    fn refresh(&self, n: u64) -> String {
        format!("{}-refresh-{n}-{}", self.prefix(), self.nonce)
    }
}

pub struct Stub {
    pub url: String,
    state: Arc<State>,
    handle: actix_web::dev::ServerHandle,
}

impl Drop for Stub {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        tokio::spawn(async move { handle.stop(false).await });
    }
}

impl Stub {
    /// A stub for `kind` holding `key` and `secret`, on plain HTTP.
    pub async fn start(kind: Kind, key: &str, secret: &str) -> Stub {
        Self::start_with(kind, key, secret, None).await
    }

    /// As [`Stub::start`], over HTTPS with `tls` when given.
    pub async fn start_with(
        kind: Kind,
        key: &str,
        secret: &str,
        tls: Option<rustls::ServerConfig>,
    ) -> Stub {
        let lifetime = match kind {
            Kind::Daraja => 3599,
            Kind::KopoKopo => 3600,
            Kind::JPay => 900,
            Kind::PagamioFlat | Kind::PagamioWrapped => 1800,
        };
        let state = Arc::new(State {
            kind,
            credentials: Mutex::new((key.into(), secret.into())),
            mode: Mutex::new(Mode::Answer),
            seen: Mutex::new(Vec::new()),
            issued: Mutex::new(0),
            refresh_tokens: Mutex::new(Vec::new()),
            hold: tokio::sync::Semaphore::new(0),
            held: std::sync::atomic::AtomicBool::new(false),
            lifetime,
            nonce: uuid::Uuid::new_v4().simple().to_string(),
        });
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(handle))
        })
        .workers(1);
        let (server, scheme) = match tls {
            None => (server.bind(("127.0.0.1", 0)).unwrap(), "http"),
            Some(config) => (
                server.bind_rustls_0_23(("127.0.0.1", 0), config).unwrap(),
                "https",
            ),
        };
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Stub {
            url: format!("{scheme}://127.0.0.1:{port}"),
            state,
            handle,
        }
    }

    /// The `n`th access token this stub issues (1-based).
    pub fn token(&self, n: u64) -> String {
        self.state.access(n)
    }

    /// The `n`th refresh token this stub issues.
    pub fn refresh_token(&self, n: u64) -> String {
        self.state.refresh(n)
    }

    /// What every token and refresh token of this stub contains.
    pub fn nonce(&self) -> &str {
        &self.state.nonce
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// The merchant rotated their secret at the provider.
    pub fn set_secret(&self, secret: &str) {
        self.state.credentials.lock().unwrap().1 = secret.into();
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Tokens issued so far (exchanges and refreshes that succeeded).
    pub fn issued(&self) -> u64 {
        *self.state.issued.lock().unwrap()
    }

    /// From now on, answers wait until [`Stub::release`].
    pub fn hold(&self) {
        self.state
            .held
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn release(&self) {
        self.state
            .held
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.state.hold.add_permits(1_000_000);
    }

    /// The header value Daraja expects: `Basic base64(key:secret)`.
    pub fn basic(key: &str, secret: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{key}:{secret}"))
        )
    }
}

async fn handle(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let seen = Seen {
        method: req.method().to_string(),
        target: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        authorization: header("authorization"),
        content_type: header("content-type"),
        body: body.to_vec(),
    };
    state.seen.lock().unwrap().push(seen.clone());
    if state.held.load(std::sync::atomic::Ordering::SeqCst) {
        let _permit = state.hold.acquire().await.unwrap();
    }
    let mode = *state.mode.lock().unwrap();
    match mode {
        Mode::Answer | Mode::RefuseRefresh => {}
        Mode::Status(code) => {
            return HttpResponse::build(actix_web::http::StatusCode::from_u16(code).unwrap())
                .json(json!({ "error": "stub failure" }))
        }
        Mode::RateLimited(after) => {
            return HttpResponse::TooManyRequests()
                .insert_header(("Retry-After", after.to_string()))
                .json(json!({ "error": "slow down" }))
        }
        Mode::Hang => {
            std::future::pending::<()>().await;
        }
    }
    let (key, secret) = state.credentials.lock().unwrap().clone();
    let refresh_refused = mode == Mode::RefuseRefresh;
    let path = seen.target.as_str();
    match state.kind {
        Kind::Daraja => {
            if seen.method != "GET" || path != "/oauth/v1/generate?grant_type=client_credentials" {
                return bad("unknown endpoint");
            }
            if seen.authorization.as_deref() != Some(Stub::basic(&key, &secret).as_str()) {
                return refused();
            }
            let n = next(&state);
            HttpResponse::Ok().json(json!({
                "access_token": state.access(n),
                "expires_in": state.lifetime.to_string(),
            }))
        }
        Kind::KopoKopo => {
            if seen.method != "POST" || path != "/oauth/token" {
                return bad("unknown endpoint");
            }
            if seen.content_type.as_deref() != Some("application/x-www-form-urlencoded") {
                return bad("form expected");
            }
            let form = seen.form();
            if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
                return bad("grant_type");
            }
            if form.get("client_id") != Some(&key) || form.get("client_secret") != Some(&secret) {
                return refused();
            }
            let n = next(&state);
            HttpResponse::Ok().json(json!({
                "access_token": state.access(n),
                "token_type": "Bearer",
                "expires_in": state.lifetime,
                "created_at": 1_556_012_342,
            }))
        }
        Kind::JPay => {
            if seen.method != "POST" || seen.content_type.as_deref() != Some("application/json") {
                return bad("JSON POST expected");
            }
            let body = seen.json();
            match path {
                "/api/v1/auth/app/token" => {
                    if body.as_object().map(|o| o.len()) != Some(2)
                        || body["app_key"] != json!(key)
                        || body["app_secret"] != json!(secret)
                    {
                        return refused();
                    }
                }
                "/api/v1/auth/refresh" => {
                    if !take_refresh(&state, &body["refresh"]) || refresh_refused {
                        return refused();
                    }
                }
                _ => return bad("unknown endpoint"),
            }
            let n = next(&state);
            let refresh = state.refresh(n);
            state.refresh_tokens.lock().unwrap().push(refresh.clone());
            HttpResponse::Ok().json(json!({
                "access": state.access(n),
                "refresh": refresh,
                "merchant_id": 123,
                "app_code": 12345,
                "products": ["collections", "payouts"],
            }))
        }
        Kind::PagamioFlat | Kind::PagamioWrapped => {
            if seen.method != "POST" || seen.content_type.as_deref() != Some("application/json") {
                return bad("JSON POST expected");
            }
            let body = seen.json();
            match path {
                "/api/v1/auth/token" => {
                    if body.as_object().map(|o| o.len()) != Some(2)
                        || body["username"] != json!(key)
                        || body["password"] != json!(secret)
                    {
                        return refused();
                    }
                }
                "/api/v1/auth/token/refresh" if state.kind == Kind::PagamioWrapped => {
                    if !take_refresh(&state, &body["refreshToken"]) || refresh_refused {
                        return refused();
                    }
                }
                _ => return bad("unknown endpoint"),
            }
            let n = next(&state);
            if state.kind == Kind::PagamioFlat {
                HttpResponse::Ok().json(json!({
                    "accessToken": state.access(n),
                    "expiresIn": state.lifetime,
                }))
            } else {
                let refresh = state.refresh(n);
                state.refresh_tokens.lock().unwrap().push(refresh.clone());
                HttpResponse::Ok().json(json!({
                    "successful": true,
                    "data": {
                        "token": state.access(n),
                        "refreshToken": refresh,
                        "expiresIn": state.lifetime,
                    },
                }))
            }
        }
    }
}

fn next(state: &State) -> u64 {
    let mut n = state.issued.lock().unwrap();
    *n += 1;
    *n
}

/// A refresh token is good once, and only if this stub issued it.
fn take_refresh(state: &State, given: &Value) -> bool {
    let mut tokens = state.refresh_tokens.lock().unwrap();
    match tokens.iter().position(|t| json!(t) == *given) {
        Some(i) => {
            tokens.remove(i);
            true
        }
        None => false,
    }
}

fn bad(why: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({ "error": why }))
}

fn refused() -> HttpResponse {
    HttpResponse::Unauthorized().json(json!({ "error": "invalid credentials" }))
}

/// `application/x-www-form-urlencoded`, decoded by hand (the stub trusts no hazina code).
fn url_decode_form(body: &str) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                    out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}
