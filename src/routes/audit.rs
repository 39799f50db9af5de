//! The auditor API (SPEC §2.4): list with filters and a cursor, export as JSON Lines, verify
//! the chain. Role `auditor` only; everyone else gets 403 (and the attempt is recorded).

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use crate::audit::store::{self, EntryView, Filter};
use crate::audit::{
    chain, checkpoint as audit_checkpoint, merkle, Action, Actor, Event, Outcome, Reason,
    RequestMeta,
};
use crate::domain::Role;
use crate::error::ApiError;
use crate::http::{AuthenticatedUser, UserRequest};
use crate::state::AppState;

const MAX_LIMIT: i64 = 1000;
const DEFAULT_LIMIT: i64 = 100;

/// The answer when every follow stream is taken.
pub const FOLLOW_BUSY: &str = "Too many audit follow streams are open; close one or retry later";

pub(crate) async fn require_auditor(
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
    operation: Option<String>,
    reference: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<i64>,
    limit: Option<i64>,
    /// `oldest` (the default: the cursor is the last sequence number seen, later entries
    /// follow) or `newest` (newest first: the cursor is the last seen, earlier ones follow).
    order: Option<String>,
}

fn order_of(q: &ListQuery) -> Result<store::Order, ApiError> {
    match q.order.as_deref() {
        None | Some("oldest") => Ok(store::Order::OldestFirst),
        Some("newest") => Ok(store::Order::NewestFirst),
        Some(_) => Err(ApiError::Invalid("order must be oldest or newest".into())),
    }
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
    if let Some(o) = &q.operation {
        if crate::vault::Operation::parse(o).is_none() {
            return Err(ApiError::Invalid("Unknown operation".into()));
        }
    }
    if let Some(r) = &q.reference {
        crate::vault::Reference::parse(r)?;
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
        operation: q.operation.clone(),
        reference: q.reference.clone(),
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
    UserRequest { state, user, meta }: UserRequest,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    require_auditor(&state, &user, &meta).await?;
    let filter = filter_of(&query)?;
    let order = order_of(&query)?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::Invalid(format!(
            "limit must be from 1 to {MAX_LIMIT}"
        )));
    }
    let cursor = query.cursor.unwrap_or(0).max(0);
    let rows = state
        .db(move |c| store::list(c, &filter, order, cursor, limit))
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
    /// Only entries after this sequence number.
    after: Option<i64>,
    /// Keep the answer open and send new entries as they commit (no chain-head line).
    follow: Option<bool>,
}

pub async fn export(
    UserRequest { state, user, meta }: UserRequest,
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

    let after = query.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::Invalid(
            "after must be a sequence number (0 or more)".into(),
        ));
    }
    // Stream in bounded chunks: memory stays flat however long the log is.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let pool = state.pool.clone();
    if query.follow == Some(true) {
        // At most HAZINA_AUDIT_FOLLOW_MAX at once (SPEC §15): each holds a thread.
        let Some(permit) = state.limits.follow_permit(state.config.audit_follow_max) else {
            return Err(ApiError::TooManyRequests {
                message: FOLLOW_BUSY,
                retry_after: 5,
            });
        };
        let keyring = state.keyring.clone();
        let clock = state.clock.clone();
        let (sid, id, key_version) = (user.session_id.clone(), user.id, user.key_version);
        // A follower polls on a thread of its own, holding a connection only per poll, and
        // ends within a poll of its session ending or its user no longer being an auditor.
        let still_auditor = move |c: &mut crate::db::DbConn| {
            let live =
                crate::repo::sessions::live(c, &keyring, &sid, id, key_version, clock.now())?;
            Ok(live.is_some_and(|l| l.verdict.is_intact() && l.role == Role::Auditor.as_str()))
        };
        let spawned = std::thread::Builder::new()
            .name("hazina-audit-follow".into())
            .spawn(move || {
                let _permit = permit;
                let every = std::time::Duration::from_millis(200);
                if let Err(e) = store::follow(&pool, after, every, still_auditor, |chunk| {
                    tx.blocking_send(chunk).is_ok()
                }) {
                    tracing::error!(error = %e, "audit follow stopped");
                }
            });
        if let Err(e) = spawned {
            return Err(ApiError::Unavailable(anyhow::anyhow!("cannot follow: {e}")));
        }
        return Ok(HttpResponse::Ok()
            .content_type("application/x-ndjson")
            .insert_header(("Cache-Control", "no-store"))
            .streaming(futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|chunk| (Ok::<_, actix_web::Error>(web::Bytes::from(chunk)), rx))
            })));
    }
    actix_web::rt::spawn(async move {
        let result = web::block(move || -> Result<i64, crate::db::DbError> {
            let mut conn = pool.get()?;
            store::export(&mut conn, since, after, |chunk| {
                tx.blocking_send(chunk).is_ok()
            })
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
    UserRequest { state, user, meta }: UserRequest,
) -> Result<HttpResponse, ApiError> {
    require_auditor(&state, &user, &meta).await?;
    let keyring = state.keyring.clone();
    let report = state.db(move |c| chain::verify(c, &keyring)).await?;
    Ok(HttpResponse::Ok().json(report))
}

// ----- Merkle proofs (SPEC §10) ----------------------------------------------------------

fn invalid(message: String) -> crate::db::DbError {
    crate::db::DbError::Rejected(crate::domain::ValidationError(message))
}

fn b64_all(hashes: &[merkle::Hash]) -> Vec<String> {
    use base64::Engine;
    hashes
        .iter()
        .map(|h| base64::engine::general_purpose::STANDARD.encode(h))
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionQuery {
    // Optional in the type so the role check answers first; required below.
    seq: Option<i64>,
    tree_size: Option<i64>,
}

/// `GET /audit/proofs/inclusion/?seq=N&tree_size=M`: the RFC 6962 audit path of entry `N`
/// (leaf `N − 1`) in the tree of the first `M` entries (default: the whole log).
pub async fn inclusion_proof(
    UserRequest { state, user, meta }: UserRequest,
    query: web::Query<InclusionQuery>,
) -> Result<HttpResponse, ApiError> {
    require_auditor(&state, &user, &meta).await?;
    let InclusionQuery { seq, tree_size } = query.into_inner();
    let seq = seq.ok_or_else(|| ApiError::Invalid("seq is required".into()))?;
    let (tree_size, path) = state
        .db(move |c| {
            // The tree only grows and its nodes never change, so no snapshot is needed.
            let size = merkle::size(c)? as i64;
            let tree_size = tree_size.unwrap_or(size);
            if tree_size < 1 || tree_size > size {
                return Err(invalid(format!(
                    "tree_size must be between 1 and the log's size ({size})"
                )));
            }
            if seq < 1 || seq > tree_size {
                return Err(invalid("seq must be between 1 and tree_size".into()));
            }
            let mut nodes = merkle::StoredNodes::new(c);
            let path = merkle::inclusion_path(&mut nodes, (seq - 1) as u64, tree_size as u64)?;
            Ok((tree_size, path))
        })
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "leaf_index": seq - 1,
        "tree_size": tree_size,
        "audit_path": b64_all(&path),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    // Optional in the type so the role check answers first; required below.
    from: Option<i64>,
    to: Option<i64>,
}

/// `GET /audit/proofs/consistency/?from=M1&to=M2`: the RFC 6962 consistency proof that the
/// tree of `M2` entries (default: the whole log) extends the tree of `M1`.
pub async fn consistency_proof(
    UserRequest { state, user, meta }: UserRequest,
    query: web::Query<ConsistencyQuery>,
) -> Result<HttpResponse, ApiError> {
    require_auditor(&state, &user, &meta).await?;
    let ConsistencyQuery { from, to } = query.into_inner();
    let from = from.ok_or_else(|| ApiError::Invalid("from is required".into()))?;
    let (to, proof) = state
        .db(move |c| {
            let size = merkle::size(c)? as i64;
            let to = to.unwrap_or(size);
            if to < 1 || to > size {
                return Err(invalid(format!(
                    "to must be between 1 and the log's size ({size})"
                )));
            }
            if from < 1 || from > to {
                return Err(invalid("from must be between 1 and to".into()));
            }
            let mut nodes = merkle::StoredNodes::new(c);
            let proof = merkle::consistency_proof(&mut nodes, from as u64, to as u64)?;
            Ok((to, proof))
        })
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "first": from,
        "second": to,
        "proof": b64_all(&proof),
    })))
}

// ----- signed checkpoints (SPEC §10) ------------------------------------------------------

/// `GET /audit/checkpoint/`: a signed checkpoint of the whole log (C2SP tlog-checkpoint in a
/// signed note, Ed25519), refused — and `/readyz` failing from then on — if the log no longer
/// extends the last checkpoint this log signed.
pub async fn checkpoint(
    UserRequest { state, user, meta }: UserRequest,
) -> Result<HttpResponse, ApiError> {
    require_auditor(&state, &user, &meta).await?;
    let signer = state.clone();
    let signed = web::block(move || {
        let mut conn = signer.pool.get().map_err(crate::db::DbError::from)?;
        audit_checkpoint::sign_current(
            &mut conn,
            &signer.keyring,
            &signer.audit_origin,
            &signer.signer_memory,
        )
    })
    .await?;
    match signed {
        Ok(note) => Ok(HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .insert_header(("Cache-Control", "no-store"))
            .body(note)),
        Err(audit_checkpoint::SignError::Rewritten(problem)) => {
            state.checkpoint_refused(&problem);
            Err(ApiError::NotReady {
                reason: crate::routes::health::AUDIT_LOG_REWRITTEN,
                detail: format!("the signer will not sign this log: {problem}"),
            })
        }
        Err(audit_checkpoint::SignError::Db(e)) => Err(e.into()),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// `GET /audit/public-key/`: the signed-note verifier key of the checkpoints (the active
/// version's first, then any older version's still in use).
pub async fn public_key(
    UserRequest { state, user, meta }: UserRequest,
) -> Result<HttpResponse, ApiError> {
    require_auditor(&state, &user, &meta).await?;
    let (keyring, origin) = (state.keyring.clone(), state.audit_origin.clone());
    let keys = state
        .db(move |c| {
            Ok(audit_checkpoint::signers(c, &keyring, &origin)?
                .iter()
                .map(|(_, s)| s.verifier_key())
                .collect::<Vec<_>>())
        })
        .await?;
    let key = keys
        .first()
        .cloned()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("no checkpoint key")))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "origin": state.audit_origin,
        "key": key,
        "keys": keys,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    checkpoints: Vec<String>,
}

/// `POST /audit/verify/` with `{checkpoints: [...]}`: the chain check of `GET`, and each
/// checkpoint checked against the log (signature, origin, and that the log still extends it).
pub async fn verify_with_checkpoints(
    UserRequest { state, user, meta }: UserRequest,
    body: web::Json<crate::routes::JsonObject<VerifyBody>>,
) -> Result<HttpResponse, ApiError> {
    require_auditor(&state, &user, &meta).await?;
    let notes = body.into_inner().0.checkpoints;
    if notes.len() > 100 || notes.iter().any(|n| n.len() > 4096) {
        return Err(ApiError::Invalid(
            "at most 100 checkpoints of at most 4096 bytes each".into(),
        ));
    }
    let (keyring, origin) = (state.keyring.clone(), state.audit_origin.clone());
    let (report, verdicts) = state
        .db(move |c| crate::audit::verify::with_checkpoints(c, &keyring, &origin, &notes))
        .await?;
    let ok = report.ok && verdicts.iter().all(|v| v.ok);
    let mut body = serde_json::json!({
        "ok": ok,
        "checked": report.checked,
        "first_bad_seq": report.first_bad_seq,
        "checkpoints": verdicts,
    });
    if let Some(problem) = report.problem {
        body["problem"] = problem.into();
    }
    Ok(HttpResponse::Ok().json(body))
}

/// Reveals and denials per hour since `since` (microseconds), for the console's chart:
/// auditors only, like every read of the log.
pub(crate) async fn activity(
    state: &AppState,
    user: &AuthenticatedUser,
    meta: &RequestMeta,
    since: i64,
) -> Result<Vec<store::HourCounts>, ApiError> {
    require_auditor(state, user, meta).await?;
    Ok(state.db(move |c| store::hourly(c, since)).await?)
}
