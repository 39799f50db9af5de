//! The whole route table, and the request plumbing every route shares: request ids,
//! security headers, JSON errors for everything raised below the handlers.

pub mod admin;
pub(crate) mod audit;
pub(crate) mod credentials;
pub(crate) mod health;
pub mod keys;
mod operations;
pub(crate) mod sessions;

use std::future::{ready, Ready};
use std::time::Instant;

use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers};
use actix_web::{error::JsonPayloadError, web, HttpMessage, HttpRequest, HttpResponse};
use futures_util::future::LocalBoxFuture;
use tracing::Instrument;

use crate::error::{describe_json_error, ApiError};

macro_rules! route_table {
    ($( $method:ident $path:literal => $handler:path ),* $(,)?) => {
        /// Every registered route as (method, path), for the OpenAPI conformance test.
        pub const ROUTE_TABLE: &[(&str, &str)] = &[ $( (stringify!($method), $path) ),* ];

        /// Registers every route of [`ROUTE_TABLE`], in its order. The credential routes go
        /// into one scope under [`CREDENTIALS`], where they stood in the table: actix
        /// compares the scope's static prefix once, and each `{param}` route's regex then
        /// runs over the rest of the path only (the hot paths' routing cost, halved).
        pub fn register(cfg: &mut web::ServiceConfig) {
            let mut credentials = Some(web::scope(CREDENTIALS));
            let mut scoped = false;
            $(
                match $path.strip_prefix(CREDENTIALS) {
                    Some(tail) => {
                        scoped = true;
                        credentials =
                            credentials.map(|s| s.route(tail, web::$method().to($handler)));
                    }
                    None => {
                        if scoped {
                            if let Some(scope) = credentials.take() {
                                cfg.service(scope);
                            }
                        }
                        cfg.route($path, web::$method().to($handler));
                    }
                }
            )*
            if let Some(scope) = credentials.filter(|_| scoped) {
                cfg.service(scope);
            }
        }
    };
}

/// The prefix of the credential routes (one scope; see `register`). They must stand together
/// in the table: a scope takes every path under its prefix.
const CREDENTIALS: &str = "/payments/credentials";

route_table! {
    get    "/healthz" => health::healthz,
    get    "/readyz" => health::readyz,
    get    "/metrics" => health::metrics,

    post   "/users/login/" => sessions::login,
    post   "/users/token/refresh/" => sessions::refresh,
    post   "/users/logout/" => sessions::logout,
    post   "/users/password/" => sessions::change_password,

    // actix tries routes in this order and each `{param}` costs a regex match: the hot
    // paths come first. The static lookup route must precede `{id}`, which would match it.
    get    "/payments/credentials/" => credentials::list,
    get    "/payments/credentials/lookup/get-private-key/" => credentials::lookup,
    get    "/payments/credentials/{id}/get-private-key/" => credentials::reveal,
    post   "/payments/credentials/lookup/operations/{name}/" => operations::by_lookup,
    post   "/payments/credentials/{id}/operations/{name}/" => operations::by_id,
    post   "/payments/credentials/{id}/verify/" => credentials::verify,
    post   "/payments/credentials/" => credentials::create,
    get    "/payments/credentials/provider/{provider}/" => credentials::by_provider,
    get    "/payments/credentials/{id}/" => credentials::get_one,
    put    "/payments/credentials/{id}/" => credentials::update,
    delete "/payments/credentials/{id}/" => credentials::delete,
    post   "/payments/credentials/{id}/update-private-key/" => credentials::rotate,
    post   "/payments/credentials/{id}/rotate/" => credentials::rotate,
    post   "/payments/credentials/{id}/toggle-status/" => credentials::toggle_status,
    get    "/payments/credentials/{id}/versions/" => credentials::versions,
    get    "/payments/credentials/{id}/access-log/" => credentials::access_log,
    post   "/payments/credentials/{id}/rollback/" => credentials::rollback,

    get    "/admin/users/" => admin::list_users,
    post   "/admin/users/" => admin::create_user,
    post   "/admin/users/{username}/disable/" => admin::disable_user,
    post   "/admin/users/{username}/enable/" => admin::enable_user,
    post   "/admin/users/{username}/unlock/" => admin::unlock_user,
    put    "/admin/users/{username}/role/" => admin::set_user_role,
    put    "/admin/users/{username}/password/" => admin::set_user_password,
    put    "/admin/users/{username}/allowlist/" => admin::set_user_allowlist,
    post   "/admin/users/{username}/sessions/revoke/" => admin::revoke_user_sessions,
    get    "/admin/services/" => admin::list_services,
    post   "/admin/services/" => admin::create_service,
    post   "/admin/services/{name}/disable/" => admin::disable_service,
    get    "/admin/certificates/revoked/" => admin::list_revoked_certificates,
    post   "/admin/certificates/revoked/" => admin::revoke_certificate,
    get    "/admin/keys/" => keys::show,
    post   "/admin/keys/rotate/" => keys::rotate,
    post   "/admin/keys/retire/" => keys::retire,
    post   "/admin/credentials/{id}/rotate/" => credentials::admin_rotate,
    get    "/admin/credentials/{id}/versions/" => credentials::admin_versions,
    get    "/admin/grants/" => admin::list_grants,
    post   "/admin/grants/" => admin::create_grant,
    patch  "/admin/grants/{id}/" => admin::update_grant,
    delete "/admin/grants/{id}/" => admin::revoke_grant,
    get    "/admin/provider-certificates/" => admin::list_provider_certificates,
    put    "/admin/provider-certificates/{provider}/{environment}/" => admin::set_provider_certificate,
    delete "/admin/provider-certificates/{provider}/{environment}/" => admin::delete_provider_certificate,

    get    "/audit/events/" => audit::list,
    get    "/audit/export/" => audit::export,
    get    "/audit/verify/" => audit::verify,
    post   "/audit/verify/" => audit::verify_with_checkpoints,
    get    "/audit/checkpoint/" => audit::checkpoint,
    get    "/audit/public-key/" => audit::public_key,
    get    "/audit/proofs/inclusion/" => audit::inclusion_proof,
    get    "/audit/proofs/consistency/" => audit::consistency_proof,
}

/// Unmatched requests: 405 when the path exists under another method, else 404.
pub async fn fallback(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let path = req.path();
    let known = ROUTE_TABLE
        .iter()
        .any(|(_, pattern)| actix_web::dev::ResourceDef::new(*pattern).is_match(path));
    Err(if known {
        ApiError::MethodNotAllowed
    } else {
        ApiError::RouteNotFound
    })
}

/// Extractor limits and their errors: every one answers JSON, never echoing the body.
pub fn extractor_config(max_body_bytes: usize) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(
            web::JsonConfig::default()
                .limit(max_body_bytes)
                .error_handler(|err, _req| {
                    let api = match &err {
                        JsonPayloadError::Overflow { .. }
                        | JsonPayloadError::OverflowKnownLength { .. } => ApiError::PayloadTooLarge,
                        JsonPayloadError::ContentType => {
                            ApiError::Invalid("Content-Type must be application/json".into())
                        }
                        JsonPayloadError::Deserialize(e) => {
                            ApiError::Invalid(describe_json_error(e))
                        }
                        _ => ApiError::Invalid("Invalid request body".into()),
                    };
                    api.into()
                }),
        )
        .app_data(web::PayloadConfig::default().limit(max_body_bytes))
        .app_data(
            web::PathConfig::default().error_handler(|_, _| ApiError::CredentialNotFound.into()),
        )
        .app_data(
            web::QueryConfig::default()
                .error_handler(|_, _| ApiError::Invalid("Invalid query parameters".into()).into()),
        );
    }
}

/// Rewrites any error response that is not already JSON (raised by actix itself, below the
/// handlers) into the `{"error": ...}` shape.
pub fn json_errors<B: 'static>() -> ErrorHandlers<B> {
    ErrorHandlers::new().default_handler(|res: ServiceResponse<B>| {
        // JSON errors pass as they are, and so do the console's HTML error pages.
        let is_ours = res.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
            v.as_bytes().starts_with(b"application/json") || v.as_bytes().starts_with(b"text/html")
        });
        if is_ours {
            return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
        }
        let status = res.status();
        let message = match status.as_u16() {
            404 => "Not found",
            405 => "Method not allowed",
            413 => "Request body is too large",
            s if s >= 500 => "Internal server error",
            _ => status.canonical_reason().unwrap_or("Request refused"),
        };
        let (req, _) = res.into_parts();
        let body = HttpResponse::build(status).json(serde_json::json!({ "error": message }));
        Ok(ErrorHandlerResponse::Response(
            ServiceResponse::new(req, body).map_into_right_body(),
        ))
    })
}

/// A request body that must be a JSON object. serde's derived struct deserialisers also
/// accept a JSON array of the fields in order; a vault API accepts exactly one shape.
pub struct JsonObject<T>(pub T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for JsonObject<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectOnly<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for ObjectOnly<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(ObjectOnly(std::marker::PhantomData))
            .map(JsonObject)
    }
}

pub use crate::http::RequestId;

/// Request id, access log line and security headers for every response.
pub struct RequestContext;

impl<S, B> Transform<S, ServiceRequest> for RequestContext
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = RequestContextMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RequestContextMiddleware { service }))
    }
}

pub struct RequestContextMiddleware<S> {
    service: S,
}

impl<S, B> Service<ServiceRequest> for RequestContextMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let request_id = uuid::Uuid::new_v4().to_string();
        let span = tracing::info_span!("request", request_id = %request_id, method = %req.method());
        req.extensions_mut().insert(RequestId(request_id.clone()));
        let state = req.app_data::<web::Data<crate::state::AppState>>().cloned();
        let started = Instant::now();
        let fut = {
            let _entered = span.enter();
            self.service.call(req)
        };
        Box::pin(
            async move {
                let mut res = fut.await?;
                let headers = res.headers_mut();
                if let Ok(v) = HeaderValue::from_str(&request_id) {
                    headers.insert(header::HeaderName::from_static("x-request-id"), v);
                }
                headers.insert(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                );
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
                // The console's pages set their own (its own scripts, styles and images).
                if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
                    headers.insert(
                        header::CONTENT_SECURITY_POLICY,
                        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
                    );
                }
                let https = state.as_ref().is_some_and(|s| s.config.served_over_https());
                if https {
                    // Two years; only ever sent over HTTPS (browsers ignore it over HTTP).
                    headers.insert(
                        header::STRICT_TRANSPORT_SECURITY,
                        HeaderValue::from_static("max-age=63072000; includeSubDomains"),
                    );
                }
                let pattern = res.request().match_pattern();
                let latency = started.elapsed();
                if let Some(state) = &state {
                    state.metrics.observe_request(
                        pattern.as_deref(),
                        res.request().path(),
                        res.request().method(),
                        res.status(),
                        latency.as_secs_f64(),
                    );
                }
                tracing::info!(
                    status = res.status().as_u16(),
                    route = pattern.as_deref().unwrap_or("-"),
                    latency_us = latency.as_micros() as u64,
                    "request"
                );
                Ok(res)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// actix-router compiles `{param}` routes with the `regex` crate only under actix-web's
    /// `unicode` feature; without it, with `regex-lite`, whose PikeVM cost a tenth of a
    /// provider operation's instructions (docs/PERFORMANCE.md). `regex-lite` has no Unicode
    /// classes, so this pattern compiles only on the fast engine.
    #[test]
    fn routes_are_matched_by_the_regex_crate_not_regex_lite() {
        let def = std::panic::catch_unwind(|| actix_web::dev::ResourceDef::new("/{w:\\p{L}+}/"))
            .expect("routing runs on regex-lite: keep actix-web's `unicode` feature");
        assert!(def.is_match("/ñ/"));
        assert!(!def.is_match("/1/"));
    }

    #[test]
    fn the_credential_routes_stand_together_so_the_scope_keeps_every_one_in_order() {
        let under: Vec<bool> = ROUTE_TABLE
            .iter()
            .map(|(_, path)| path.starts_with(&format!("{CREDENTIALS}/")))
            .collect();
        let first = under.iter().position(|u| *u).expect("credential routes");
        let last = under.iter().rposition(|u| *u).unwrap();
        assert!(
            under[first..=last].iter().all(|u| *u),
            "a route outside {CREDENTIALS} stands between credential routes"
        );
        // Nothing else starts with the prefix without its slash (the scope would take it).
        assert!(
            ROUTE_TABLE
                .iter()
                .all(|(_, p)| !p.starts_with(CREDENTIALS)
                    || p.starts_with(&format!("{CREDENTIALS}/")))
        );
    }
}
