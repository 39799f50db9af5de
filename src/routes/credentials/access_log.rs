//! An owner's access log of one credential (SPEC §9.5): every audit entry about it, oldest
//! first, with a cursor; scoped by owner in the SQL.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};

use crate::audit::Action;
use crate::error::ApiError;
use crate::http::UserRequest;
use crate::repo::credentials as repo;

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogQuery {
    #[serde(default)]
    cursor: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
}

/// One entry of an owner's access log (SPEC §9.5): who used the credential, how, from where.
#[derive(Serialize)]
struct AccessLogEntry {
    seq: i64,
    occurred_at: String,
    actor_kind: String,
    actor_name: Option<String>,
    source_ip: Option<String>,
    action: String,
    operation: Option<String>,
    reference: Option<String>,
    outcome: String,
    reason: Option<String>,
}

impl AccessLogQuery {
    /// A page of the access log (for the console).
    pub(crate) fn page(cursor: Option<i64>, limit: i64) -> Self {
        AccessLogQuery {
            cursor,
            limit: Some(limit),
        }
    }
}

const ACCESS_LOG_MAX: i64 = 500;

/// `GET /payments/credentials/{id}/access-log/`: every audit entry about the owner's
/// credential, oldest first, with a cursor. Scoped by owner in the SQL.
pub async fn access_log(
    UserRequest { state, user, meta }: UserRequest,
    path: web::Path<String>,
    query: web::Query<AccessLogQuery>,
) -> Result<HttpResponse, ApiError> {
    const ACTION: Action = Action::CredentialAccessLog;
    let trail = Trail::new(&state, &user, meta);
    let (owner, id) = trail.owned(ACTION, &path).await?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=ACCESS_LOG_MAX).contains(&limit) {
        return Err(ApiError::Invalid(format!(
            "limit must be from 1 to {ACCESS_LOG_MAX}"
        )));
    }
    let after = query.cursor.unwrap_or(0).max(0);
    let Some(rows) = state
        .db(move |c| repo::access_log(c, owner, id, after, limit))
        .await?
    else {
        return Err(trail.not_found(ACTION, Some(id)).await);
    };
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.seq))
        .flatten();
    let entries: Vec<AccessLogEntry> = rows
        .into_iter()
        .map(|r| AccessLogEntry {
            seq: r.seq,
            occurred_at: crate::clock::rfc3339_micros(r.occurred_at),
            actor_kind: r.actor_kind,
            actor_name: r.actor_name,
            source_ip: r.source_ip,
            action: r.action,
            operation: r.operation,
            reference: r.reference,
            outcome: r.outcome,
            reason: r.reason,
        })
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(serde_json::json!({ "credentials_id": id.get(), "entries": entries, "next_cursor": next_cursor })))
}
