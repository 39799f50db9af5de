//! Administration (SPEC §2.3): users, services and grants. Role `admin` only; each change is
//! audited as the admin who made it and takes effect on the next request.
//!
//! One file per resource; this one holds what they share (the role check and its audit
//! events, the conflict answer) and re-exports every handler for the route table.

use crate::audit::{Action, Actor, Event, Outcome, Reason, RequestMeta};
use crate::db::DbError;
use crate::domain::Role;
use crate::error::ApiError;
use crate::http::AuthenticatedUser;
use crate::state::AppState;

mod grants;
mod provider_certificates;
mod services;
mod users;

pub use grants::{
    create_grant, list_grants, revoke_grant, update_grant, CreateGrantBody, UpdateGrantBody,
};
pub use provider_certificates::{
    delete_provider_certificate, list_provider_certificates, set_provider_certificate,
};
pub use services::{
    create_service, disable_service, list_revoked_certificates, list_services, revoke_certificate,
    CreateServiceBody, RevokeCertificateBody,
};
pub use users::{
    create_user, disable_user, enable_user, list_users, revoke_user_sessions, set_user_allowlist,
    set_user_password, set_user_role, unlock_user, AllowlistBody, CreateUserBody, PasswordBody,
    RoleBody,
};

/// An administrator's request: the role check (a refusal is recorded) and its audit events.
pub(crate) struct Admin<'a> {
    state: &'a AppState,
    user: &'a AuthenticatedUser,
    meta: RequestMeta,
}

impl<'a> Admin<'a> {
    pub(crate) async fn check(
        state: &'a AppState,
        user: &'a AuthenticatedUser,
        meta: RequestMeta,
        action: Action,
    ) -> Result<Self, ApiError> {
        let admin = Admin { state, user, meta };
        if user.role != Role::Admin {
            let ev = admin
                .event(action)
                .outcome(Outcome::Denied, Some(Reason::RoleForbidden));
            state.audit.record_best_effort(ev).await;
            return Err(ApiError::Forbidden("Only administrators may do this"));
        }
        Ok(admin)
    }

    pub(crate) fn event(&self, action: Action) -> Event {
        Event::new(
            self.state.clock.now_micros(),
            Actor::user(self.user),
            &self.meta,
            action,
        )
    }
}

fn conflict(what: &'static str) -> impl Fn(DbError) -> ApiError {
    move |e| match e {
        DbError::Conflict => ApiError::Conflict(format!("{what} already exists")),
        other => other.into(),
    }
}
