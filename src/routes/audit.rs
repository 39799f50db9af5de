//! The auditor API (SPEC §2.4): list with filters and a cursor, export as JSON Lines, verify
//! the chain. Role `auditor` only; everyone else gets 403 (and the attempt is recorded).

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use crate::audit::store::{self, EntryView, Filter};
use crate::audit::{chain, Action, Actor, Event, Outcome, Reason, RequestMeta};
use crate::auth::AuthenticatedUser;
use crate::domain::Role;
use crate::error::ApiError;
use crate::startup::AppState;

const MAX_LIMIT: i64 = 1000;
const DEFAULT_LIMIT: i64 = 100;

async fn require_auditor(
    state: &AppState,
    user: &AuthenticatedUser,
    meta: &RequestMeta,
) -> Result<(), ApiError> {
    if user.role == Role::Auditor {
        return Ok(());
    }
    let ev = Event::new(
        state.clock.now_micros(),
        Actor::user(user),
        meta,
        Action::AuditRead,
    )
    .outcome(Outcome::Denied, Some(Reason::RoleForbidden));
    state.audit.record_best_effort(ev).await;
    Err(ApiError::Forbidden("Only auditors may read the audit log"))
}

/// `2026-11-22T05:00:00Z` or Unix seconds → microseconds.
fn parse_time(name: &str, raw: &str) -> Result<i64, ApiError> {
    if let Ok(secs) = raw.parse::<i64>() {
        return secs
            .checked_mul(1_000_000)
            .ok_or_else(|| ApiError::Invalid(format!("{name} is out of range")));
    }
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|t| t.timestamp_micros())
        .map_err(|_| ApiError::Invalid(format!("{name} must be an RFC 3339 time or Unix seconds")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    actor: Option<String>,
    action: Option<String>,
    credential: Option<i64>,
    owner: Option<i64>,
    outcome: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<i64>,
    limit: Option<i64>,
}

fn filter_of(q: &ListQuery) -> Result<Filter, ApiError> {
    if let Some(a) = &q.action {
        if Action::parse(a).is_none() {
            return Err(ApiError::Invalid("Unknown action".into()));
        }
    }
    if let Some(o) = &q.outcome {
        if Outcome::parse(o).is_none() {
            return Err(ApiError::Invalid(
                "outcome must be one of: success, denied, error".into(),
            ));
        }
    }
    if q.actor
        .as_ref()
        .is_some_and(|a| a.len() > 150 || a.contains('\0'))
    {
        return Err(ApiError::Invalid("actor is not a valid name or id".into()));
    }
    Ok(Filter {
        actor: q.actor.clone(),
        action: q.action.clone(),
        credential_id: q.credential,
        owner_id: q.owner,
        outcome: q.outcome.clone(),
        since: q
            .since
            .as_deref()
            .map(|t| parse_time("since", t))
            .transpose()?,
        until: q
            .until
            .as_deref()
            .map(|t| parse_time("until", t))
            .transpose()?,
    })
}

pub async fn list(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    require_auditor(&state, &user, &meta).await?;
    let filter = filter_of(&query)?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::Invalid(format!(
            "limit must be from 1 to {MAX_LIMIT}"
        )));
    }
    let after = query.cursor.unwrap_or(0).max(0);
    let rows = state
        .db(move |c| store::list(c, &filter, after, limit))
        .await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.seq))
        .flatten();
    let events: Vec<EntryView> = rows.into_iter().map(EntryView::from).collect();
    Ok(
        HttpResponse::Ok()
            .json(serde_json::json!({ "events": events, "next_cursor": next_cursor })),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    since: Option<String>,
}

pub async fn export(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
    query: web::Query<ExportQuery>,
) -> Result<HttpResponse, ApiError> {
    require_auditor(&state, &user, &meta).await?;
    let since = query
        .since
        .as_deref()
        .map(|t| parse_time("since", t))
        .transpose()?;
    let ev = Event::new(
        state.clock.now_micros(),
        Actor::user(&user),
        &meta,
        Action::AuditRead,
    );
    state.audit.record_best_effort(ev).await;

    // Stream in bounded chunks: memory stays flat however long the log is.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let pool = state.pool.clone();
    actix_web::rt::spawn(async move {
        let result = web::block(move || -> Result<i64, crate::db::DbError> {
            let mut conn = pool.get()?;
            store::export(&mut conn, since, |chunk| tx.blocking_send(chunk).is_ok())
        })
        .await;
        // A failed export ends without its chain-head line, so it is visibly incomplete.
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "audit export failed part-way"),
            Err(e) => tracing::error!(error = %e, "audit export could not run"),
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, actix_web::Error>(web::Bytes::from(chunk)), rx))
    });
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .streaming(body))
}

pub async fn verify(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    meta: RequestMeta,
) -> Result<HttpResponse, ApiError> {
    require_auditor(&state, &user, &meta).await?;
    let report = state.db(chain::verify).await?;
    Ok(HttpResponse::Ok().json(report))
}
