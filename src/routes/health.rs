//! Liveness, readiness and metrics.

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};

use crate::domain::Role;
use crate::error::ApiError;
use crate::http::principal::{bearer_token, UNAUTHENTICATED};
use crate::http::AuthenticatedUser;
use crate::state::AppState;

/// The process is up.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// The database answers and the keyring is loaded.
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    // The keyring must still match the database (a keyring file swapped under a running
    // server, or key states edited in the database, make this node unready).
    let keyring = state.keyring.clone();
    let keys = state
        .db(move |c| {
            // Follow the file first, so a keyring swapped under us is what gets checked.
            keyring.reload_if_changed();
            let rows = crate::repo::key_versions::load(c)?;
            Ok(crate::repo::key_versions::verify(&rows, &keyring).map_err(|e| e.to_string()))
        })
        .await?;
    // Each refusal says why (key versions and sizes, never a key): an operator reads it
    // from the load balancer, an auditor from the probe.
    if let Err(mismatch) = keys {
        return Err(ApiError::NotReady {
            reason: "keyring_mismatch",
            detail: mismatch,
        });
    }
    if state
        .checkpoint_alarm
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return Err(ApiError::NotReady {
            reason: AUDIT_LOG_REWRITTEN,
            detail: "the audit log no longer extends the last signed checkpoint: it was \
                     rolled back, truncated or rewritten (see `hazina audit verify`)"
                .into(),
        });
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "status": "ready",
        "keyring_active_version": state.keyring.active_version(),
    })))
}

/// The reason `/readyz` and `/audit/checkpoint/` give once the log no longer extends the last
/// signed checkpoint.
pub const AUDIT_LOG_REWRITTEN: &str = "audit_log_rewritten";

pub const METRICS_FORBIDDEN: &str =
    "Metrics are available to administrators and to allowed addresses only";

/// Prometheus text. Open to addresses in `HAZINA_METRICS_ALLOW_CIDRS` (the TCP peer, never a
/// forwarded-for header) and to admins by bearer token; nothing in it names a user, a
/// credential or a secret.
pub async fn metrics(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if !state.config.abuse.metrics_allowed_from(req.peer_addr()) {
        if bearer_token(&req).is_none() {
            return Err(ApiError::Unauthorized(UNAUTHENTICATED));
        }
        let user = AuthenticatedUser::from_request(&req, &mut Payload::None).await?;
        if user.role != Role::Admin {
            return Err(ApiError::Forbidden(METRICS_FORBIDDEN));
        }
    }
    state
        .metrics
        .set_rate_limiter_keys(state.limits.tracked_keys());
    let body = state.metrics.render().map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(body))
}
