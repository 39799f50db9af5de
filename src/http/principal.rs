//! Who is calling. The only source of identity is a verified bearer token (and, for
//! services, a verified client certificate); no request header ever sets or changes it.

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use futures_util::future::LocalBoxFuture;

use crate::audit::{Action, Actor, Event, Outcome, Reason, RequestMeta};
use crate::auth::jwt::{Claims, TokenType};
use crate::domain::{Role, UserId};
use crate::error::ApiError;
use crate::repo::services::FoundService;
use crate::repo::sessions;
use crate::state::AppState;
use crate::tls::PeerIdentity;

pub use crate::error::UNAUTHENTICATED;
pub const SERVICE_FORBIDDEN: &str = "Services may only fetch the keys they are granted";
pub const UNKNOWN_SERVICE: &str = "This client certificate is not a registered, enabled service";
pub const REVOKED_CERTIFICATE: &str = "This client certificate has been revoked";
pub const OUTSIDE_ALLOWLIST: &str = "Requests from this address are not allowed for this principal";

/// A user authenticated by a live access token.
#[derive(Debug, Clone)]
pub struct AuthenticatedUser {
    pub id: UserId,
    pub username: String,
    pub role: Role,
    pub session_id: String,
    /// The master-key version that signed the access token (for re-checking the session).
    pub key_version: u32,
}

impl AuthenticatedUser {
    /// Callers that may own credentials (users and admins). Auditors never touch secrets.
    pub fn require_owner(&self) -> Result<UserId, ApiError> {
        match self.role {
            Role::User | Role::Admin => Ok(self.id),
            Role::Auditor => Err(ApiError::Forbidden(
                "Auditors cannot access payment credentials",
            )),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header, if well formed.
pub fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// Access-token claims already validated for this request (by the rate limiter, or by the
/// console's cookie session), kept in the request's extensions so the token is verified once.
/// Whoever puts another token on the request (the console, renewing a session) removes them.
#[derive(Debug, Clone)]
pub struct ValidatedAccess(pub Claims);

/// The database half of authenticating a user: is the session live and the user enabled?
#[derive(Debug, Clone)]
pub struct SessionProbe {
    user: UserId,
    sid: String,
    key_version: u32,
}

impl SessionProbe {
    /// Blocking: run it with the handler's own query, in one trip to a blocking thread.
    pub fn confirm(
        &self,
        conn: &mut crate::db::DbConn,
        keyring: &crate::crypto::Keyring,
        now: i64,
    ) -> Result<Option<sessions::LiveSession>, crate::db::DbError> {
        sessions::live(conn, keyring, &self.sid, self.user, self.key_version, now)
    }
}

/// A user whose access token is valid but whose session has not yet been checked against
/// the database. [`SessionProbe::confirm`] (on a blocking thread, possibly in the same trip
/// as the handler's own query) and [`PendingUser::finish`] complete it; the
/// [`AuthenticatedUser`] extractor is exactly those two steps.
#[derive(Debug, Clone)]
pub struct PendingUser {
    user: UserId,
    claims: Claims,
    req: HttpRequest,
}

impl PendingUser {
    /// Validates the bearer token (no database access). A certificate-only caller (a
    /// service) is refused here, and recorded.
    pub async fn from_request(req: &HttpRequest) -> Result<(Self, web::Data<AppState>), ApiError> {
        let state = req
            .app_data::<web::Data<AppState>>()
            .cloned()
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("application state missing")))?;
        let Some(token) = bearer_token(req) else {
            if req.conn_data::<PeerIdentity>().is_some() {
                // A certificate-only caller on an owners' endpoint: refused and recorded
                // (the entry carries the certificate's fingerprint).
                let ev = Event::new(
                    state.clock.now_micros(),
                    Actor::anonymous(),
                    &RequestMeta::of(req),
                    Action::ServiceAuthenticate,
                )
                .outcome(Outcome::Denied, Some(Reason::RoleForbidden));
                state.audit.record_best_effort(ev).await;
                return Err(ApiError::Forbidden(SERVICE_FORBIDDEN));
            }
            return Err(ApiError::Unauthorized(UNAUTHENTICATED));
        };
        // The rate limiter may already have validated this request's token (it keys budgets
        // by user); reuse its answer rather than verify the signature twice.
        let validated = req.extensions_mut().remove::<ValidatedAccess>();
        let claims = match validated {
            Some(ValidatedAccess(claims)) => claims,
            None => state
                .tokens
                .validate(token, TokenType::Access, state.clock.now())
                .map_err(|e| match e {
                    // Only a token whose signature verified can be called expired.
                    crate::auth::jwt::TokenError::Expired => ApiError::TokenExpired,
                    _ => ApiError::InvalidToken,
                })?,
        };
        let user = claims.user_id().ok_or(ApiError::InvalidToken)?;
        Ok((
            PendingUser {
                user,
                claims,
                req: req.clone(),
            },
            state,
        ))
    }

    /// The claimed user, not yet confirmed.
    pub fn user_id(&self) -> UserId {
        self.user
    }

    /// What the database half needs, sendable to a blocking thread.
    pub fn probe(&self) -> SessionProbe {
        SessionProbe {
            user: self.user,
            sid: self.claims.sid.clone(),
            key_version: self.claims.key_version,
        }
    }

    /// Completes authentication from what [`confirm`](Self::confirm) found: a dead session
    /// is 401; a request from outside the user's allowlist is 403 (and recorded).
    pub async fn finish(
        self,
        state: &AppState,
        live: Option<sessions::LiveSession>,
    ) -> Result<AuthenticatedUser, ApiError> {
        let live = live.ok_or(ApiError::InvalidToken)?;
        if !live.verdict.is_intact() {
            // The user's or the session's row was edited outside hazina, or written back from
            // an older state: its role, hash, flags or revocation mean nothing.
            let ev = Event::new(
                state.clock.now_micros(),
                Actor {
                    kind: crate::audit::ActorKind::User,
                    id: Some(self.user.get()),
                    name: Some(live.username.clone()),
                },
                &RequestMeta::of(&self.req),
                Action::IntegrityViolation,
            )
            .target(crate::audit::Target::owner(self.user.get()))
            .outcome(Outcome::Denied, Some(Reason::of_verdict(live.verdict)));
            state.audit.record_best_effort(ev).await;
            return Err(ApiError::InvalidToken);
        }
        if !allowed(
            live.allowed_cidrs.as_deref(),
            crate::http::client_ip(&self.req),
        ) {
            let actor = Actor {
                kind: crate::audit::ActorKind::User,
                id: Some(self.user.get()),
                name: Some(live.username.clone()),
            };
            let ev = Event::new(
                state.clock.now_micros(),
                actor,
                &RequestMeta::of(&self.req),
                Action::UserAuthenticate,
            )
            .target(crate::audit::Target::owner(self.user.get()))
            .outcome(Outcome::Denied, Some(Reason::OutsideAllowlist));
            state.audit.record_best_effort(ev).await;
            return Err(ApiError::Forbidden(OUTSIDE_ALLOWLIST));
        }
        let role = Role::parse(&live.role).map_err(|_| ApiError::InvalidToken)?;
        Ok(AuthenticatedUser {
            id: self.user,
            username: live.username,
            role,
            session_id: self.claims.sid,
            key_version: self.claims.key_version,
        })
    }
}

impl FromRequest for AuthenticatedUser {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let (pending, state) = PendingUser::from_request(&req).await?;
            let now = state.clock.now();
            let probe = pending.probe();
            let keyring = state.keyring.clone();
            let live = state.db(move |c| probe.confirm(c, &keyring, now)).await?;
            pending.finish(&state, live).await
        })
    }
}

/// A service authenticated by a verified client certificate whose identity is registered and
/// enabled, calling from inside its allowlist (if it has one).
#[derive(Debug, Clone)]
pub struct AuthenticatedService {
    pub id: i64,
    pub name: String,
    pub identity: String,
    pub fingerprint: String,
}

impl Actor {
    /// A signed-in user, as audit entries name them.
    pub fn user(u: &AuthenticatedUser) -> Self {
        Actor {
            kind: crate::audit::ActorKind::User,
            id: Some(u.id.get()),
            name: Some(u.username.clone()),
        }
    }

    /// A service, as audit entries name it.
    pub fn service(s: &AuthenticatedService) -> Self {
        Actor {
            kind: crate::audit::ActorKind::Service,
            id: Some(s.id),
            name: Some(s.name.clone()),
        }
    }
}

/// Whether `ip` falls inside a comma-separated CIDR allowlist (`None` = any address).
pub fn allowed(allowlist: Option<&str>, ip: Option<std::net::IpAddr>) -> bool {
    let Some(list) = allowlist.filter(|l| !l.trim().is_empty()) else {
        return true;
    };
    let Some(ip) = ip.map(|ip| ip.to_canonical()) else {
        return false;
    };
    list.split(',')
        .filter_map(|c| c.trim().parse::<ipnet::IpNet>().ok())
        .any(|net| net.contains(&ip))
}

impl FromRequest for AuthenticatedService {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let peer = req.conn_data::<PeerIdentity>().cloned();
        let ip = crate::http::client_ip(req);
        let meta = RequestMeta::of(req);
        Box::pin(async move {
            let state = state
                .ok_or_else(|| ApiError::internal(anyhow::anyhow!("application state missing")))?;
            let peer = peer.ok_or(ApiError::Unauthorized(UNAUTHENTICATED))?;
            let identity = peer.identity.clone();
            let fingerprint = peer.fingerprint.clone();
            let keyring = state.keyring.clone();
            let found = state
                .db(move |c| {
                    crate::repo::services::find_enabled_intact(c, &keyring, &identity, &fingerprint)
                })
                .await?;
            let denied = |actor: Actor, reason: Reason| {
                Event::new(
                    state.clock.now_micros(),
                    actor,
                    &meta,
                    Action::ServiceAuthenticate,
                )
                .outcome(Outcome::Denied, Some(reason))
            };
            // A certificate that makes no principal is audited once per certificate and
            // reason per minute (SPEC §15); the rest are answered and counted.
            let first = |reason: Reason| state.limits.audit_denial(reason, &meta);
            if peer.revoked || matches!(found, FoundService::Revoked) {
                // Revoked by the CRL or by `services revoke-certificate`: nobody, whatever
                // service the certificate names (recorded by fingerprint in the meta).
                if first(Reason::CertificateRevoked) {
                    state
                        .audit
                        .record_best_effort(denied(Actor::anonymous(), Reason::CertificateRevoked))
                        .await;
                }
                return Err(ApiError::Forbidden(REVOKED_CERTIFICATE));
            }
            let found = match found {
                FoundService::Revoked => None,
                FoundService::Enabled(service) => Some(service),
                FoundService::Tampered(row, verdict) => {
                    // The row this certificate matched was edited outside hazina.
                    let ev = Event::new(
                        state.clock.now_micros(),
                        Actor {
                            kind: crate::audit::ActorKind::Service,
                            id: Some(row.id),
                            name: Some(row.name),
                        },
                        &meta,
                        Action::IntegrityViolation,
                    )
                    .outcome(Outcome::Denied, Some(Reason::of_verdict(verdict)));
                    state.audit.record_best_effort(ev).await;
                    return Err(ApiError::Forbidden(UNKNOWN_SERVICE));
                }
                FoundService::None => None,
            };
            let Some(service) = found else {
                // The certificate is recorded by fingerprint (in the entry's meta).
                if first(Reason::UnknownService) {
                    state
                        .audit
                        .record_best_effort(denied(Actor::anonymous(), Reason::UnknownService))
                        .await;
                }
                return Err(ApiError::Forbidden(UNKNOWN_SERVICE));
            };
            let authenticated = AuthenticatedService {
                id: service.id,
                name: service.name,
                identity: peer.identity,
                fingerprint: peer.fingerprint,
            };
            if !allowed(service.allowed_cidrs.as_deref(), ip) {
                let ev = denied(Actor::service(&authenticated), Reason::OutsideAllowlist);
                state.audit.record_best_effort(ev).await;
                return Err(ApiError::Forbidden(OUTSIDE_ALLOWLIST));
            }
            Ok(authenticated)
        })
    }
}

/// Whoever calls an endpoint open to owners and services alike: a bearer token makes a user;
/// only a verified client certificate (and no token) makes a service.
#[derive(Debug, Clone)]
pub enum Caller {
    User(AuthenticatedUser),
    Service(AuthenticatedService),
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        if bearer_token(req).is_some() {
            let user = AuthenticatedUser::from_request(req, payload);
            Box::pin(async move { user.await.map(Caller::User) })
        } else {
            let service = AuthenticatedService::from_request(req, payload);
            Box::pin(async move { service.await.map(Caller::Service) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::allowed;

    #[test]
    fn allowlists_match_by_cidr() {
        let ip = |s: &str| Some(s.parse().unwrap());
        assert!(allowed(None, ip("203.0.113.9")));
        assert!(allowed(Some("10.0.0.0/8, 127.0.0.1/32"), ip("127.0.0.1")));
        assert!(allowed(Some("10.0.0.0/8"), ip("10.1.2.3")));
        assert!(!allowed(Some("10.0.0.0/8"), ip("127.0.0.1")));
        assert!(!allowed(Some("10.0.0.0/8"), None));
        assert!(allowed(Some("::1/128"), ip("::1")));
        // A dual-stack listener reports IPv4 peers as IPv4-mapped IPv6.
        assert!(allowed(Some("10.0.0.0/8"), ip("::ffff:10.1.2.3")));
    }
}
