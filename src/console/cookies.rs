//! The console's session cookies: which names, how they are set and cleared, and the
//! middleware ([`CookieSession`]) that turns them into a request's bearer token before the
//! rate limiter and the handlers run, renewing an expired access token through the API's
//! single-use refresh.

use std::future::{ready, Ready};
use std::rc::Rc;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use futures_util::future::LocalBoxFuture;
use secrecy::{ExposeSecret, SecretString};

use crate::audit::RequestMeta;
use crate::auth::jwt::TokenType;
use crate::http::principal::ValidatedAccess;
use crate::routes::sessions::{self, TokenPair};
use crate::state::AppState;

use super::PREFIX;

/// The console's cookies. Over HTTPS (hazina's own TLS, or `HAZINA_PUBLIC_URL=https://…`)
/// they are `__Host-` prefixed, `Secure` and scoped to `/` — a sibling subdomain cannot set
/// or overwrite such a cookie — and only the prefixed names are read; over plain HTTP (a
/// development set-up) they are unprefixed and scoped to `/console/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Jar {
    Access,
    Refresh,
    /// The sign-in form's CSRF token: server-issued (see [`sign_in_token`]), and the cookie
    /// and the form field must match.
    SignIn,
}

impl Jar {
    pub(super) fn name(self, https: bool) -> &'static str {
        match (self, https) {
            (Jar::Access, false) => "hazina_access",
            (Jar::Refresh, false) => "hazina_refresh",
            (Jar::SignIn, false) => "hazina_signin",
            (Jar::Access, true) => "__Host-hazina_access",
            (Jar::Refresh, true) => "__Host-hazina_refresh",
            (Jar::SignIn, true) => "__Host-hazina_signin",
        }
    }

    pub(super) fn read(self, req: &HttpRequest, https: bool) -> Option<String> {
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
pub(super) const STATIC: &str = "/console/static/";

pub(super) fn cookie(jar: Jar, value: String, https: bool) -> Cookie<'static> {
    Cookie::build(jar.name(https), value)
        .path(if https { "/" } else { PREFIX })
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(https)
        .finish()
}

pub(super) fn removal(jar: Jar, https: bool) -> Cookie<'static> {
    let mut c = cookie(jar, String::new(), https);
    c.make_removal();
    c
}

pub(super) fn set_session<B>(res: &mut HttpResponse<B>, pair: &TokenPair, https: bool) {
    for (jar, token) in [(Jar::Access, &pair.access), (Jar::Refresh, &pair.refresh)] {
        // A token is base64url and dots: always a valid cookie value.
        let _ = res.add_cookie(&cookie(jar, token.expose_secret().to_owned(), https));
    }
}

pub(super) fn clear_session<B>(res: &mut HttpResponse<B>, https: bool) {
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
        // The limiter may have validated this cookie's access token already (it keys the
        // page's budget by user); otherwise it is validated here, once, for the whole page.
        let checked = req.extensions().get::<ValidatedAccess>().is_some();
        Box::pin(async move {
            let now = state.clock.now();
            let live = match access {
                Some(token) if checked => Some(token),
                Some(token) => match state.tokens.validate(&token, TokenType::Access, now) {
                    Ok(claims) => {
                        req.extensions_mut().insert(ValidatedAccess(claims));
                        Some(token)
                    }
                    Err(_) => None,
                },
                None => None,
            };
            let (token, renewed, dead) = match (live, refresh) {
                (Some(token), _) => (Some(SecretString::from(token)), None, false),
                (None, Some(refresh)) => {
                    // Another token goes on the request: no claims stand for it yet.
                    req.extensions_mut().remove::<ValidatedAccess>();
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
