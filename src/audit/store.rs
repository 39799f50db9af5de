//! Reading the audit log: filtered, cursor-paginated listing and batched export.

use diesel::prelude::*;
use serde::Serialize;

use super::chain::AuditRow;
use crate::clock::rfc3339_micros;
use crate::db::schema::audit_log as log;
use crate::db::{DbConn, DbError};

/// Filters an auditor may combine (all optional, all exact matches except the time range).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// A username / service name, or a numeric actor id.
    pub actor: Option<String>,
    pub action: Option<String>,
    pub credential_id: Option<i64>,
    pub owner_id: Option<i64>,
    pub outcome: Option<String>,
    /// The operation (`stk-password`, …) and the caller's payment reference.
    pub operation: Option<String>,
    pub reference: Option<String>,
    /// Inclusive lower bound, microseconds.
    pub since: Option<i64>,
    /// Exclusive upper bound, microseconds.
    pub until: Option<i64>,
}

/// Which way a page of entries runs, and what its cursor means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Entries after the cursor's sequence number, oldest first (0: from the start).
    OldestFirst,
    /// Entries before the cursor's sequence number, newest first (0: from the newest).
    NewestFirst,
}

/// At most `limit` entries past `cursor` in `order`, matching `filter`.
pub fn list(
    conn: &mut DbConn,
    filter: &Filter,
    order: Order,
    cursor: i64,
    limit: i64,
) -> Result<Vec<AuditRow>, DbError> {
    let mut q = log::table.select(AuditRow::as_select()).into_boxed();
    q = match order {
        Order::OldestFirst => q.filter(log::seq.gt(cursor)).order(log::seq.asc()),
        Order::NewestFirst if cursor > 0 => q.filter(log::seq.lt(cursor)).order(log::seq.desc()),
        Order::NewestFirst => q.order(log::seq.desc()),
    };
    if let Some(actor) = &filter.actor {
        q = match actor.parse::<i64>() {
            Ok(id) => q.filter(log::actor_id.eq(id).or(log::actor_name.eq(actor.clone()))),
            Err(_) => q.filter(log::actor_name.eq(actor.clone())),
        };
    }
    if let Some(a) = &filter.action {
        q = q.filter(log::action.eq(a.clone()));
    }
    if let Some(c) = filter.credential_id {
        q = q.filter(log::credential_id.eq(c));
    }
    if let Some(o) = filter.owner_id {
        q = q.filter(log::owner_id.eq(o));
    }
    if let Some(o) = &filter.outcome {
        q = q.filter(log::outcome.eq(o.clone()));
    }
    if let Some(o) = &filter.operation {
        q = q.filter(log::operation.eq(o.clone()));
    }
    if let Some(r) = &filter.reference {
        q = q.filter(log::reference.eq(r.clone()));
    }
    if let Some(t) = filter.since {
        q = q.filter(log::occurred_at.ge(t));
    }
    if let Some(t) = filter.until {
        q = q.filter(log::occurred_at.lt(t));
    }
    Ok(q.limit(limit).load(conn)?)
}

/// The JSON shape of one entry (API, export, CLI).
#[derive(Debug, Serialize)]
pub struct EntryView {
    pub seq: i64,
    pub occurred_at: String,
    pub actor: ActorView,
    pub source_ip: Option<String>,
    pub cert_fingerprint: Option<String>,
    pub action: String,
    pub target: TargetView,
    pub outcome: String,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subjects: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Serialize)]
pub struct ActorView {
    pub kind: String,
    pub id: Option<i64>,
    pub name: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct TargetView {
    pub credential_id: Option<i64>,
    pub owner_id: Option<i64>,
    pub provider: Option<String>,
    pub environment: Option<String>,
}

impl From<AuditRow> for EntryView {
    fn from(r: AuditRow) -> Self {
        EntryView {
            seq: r.seq,
            occurred_at: rfc3339_micros(r.occurred_at),
            actor: ActorView {
                kind: r.actor_kind,
                id: r.actor_id,
                name: r.actor_name,
            },
            source_ip: r.source_ip,
            cert_fingerprint: r.cert_fingerprint,
            action: r.action,
            target: TargetView {
                credential_id: r.credential_id,
                owner_id: r.owner_id,
                provider: r.provider,
                environment: r.environment,
            },
            outcome: r.outcome,
            reason: r.reason,
            request_id: r.request_id,
            operation: r.operation,
            reference: r.reference,
            subjects: r.subjects,
            prev_hash: hex::encode(r.prev_hash),
            hash: hex::encode(r.hash),
        }
    }
}

/// Streams the log as JSON Lines through `emit`, in bounded batches, then a final line with
/// the chain head (`{"chain_head":{"seq":N,"hash":"..."}}`) so a saved export can later be
/// checked against the live log for truncation. Returns the number of entries written.
pub fn export(
    conn: &mut DbConn,
    since: Option<i64>,
    after: i64,
    mut emit: impl FnMut(Vec<u8>) -> bool,
) -> Result<i64, DbError> {
    let head = super::chain::read_head(conn)?;
    let filter = Filter {
        since,
        ..Filter::default()
    };
    // A whole export of a log whose oldest entries were archived says where it starts, so it
    // still verifies offline (see `archive`).
    let start = super::archive::anchor_unchecked(conn)?;
    if since.is_none() && after <= start.seq {
        if let Some(line) = super::archive::start_line(conn, &start)? {
            if !emit(line) {
                return Ok(0);
            }
        }
    }
    let mut after = after;
    let mut count = 0i64;
    loop {
        let rows = list(conn, &filter, Order::OldestFirst, after, 1000)?;
        let n = rows.len();
        let mut chunk = Vec::with_capacity(n * 400);
        for row in rows {
            // Entries appended after the export started are left for the next export.
            if row.seq > head.seq {
                break;
            }
            after = row.seq;
            count += 1;
            let _ = serde_json::to_writer(&mut chunk, &EntryView::from(row));
            chunk.push(b'\n');
        }
        if !chunk.is_empty() && !emit(chunk) {
            return Ok(count);
        }
        if n < 1000 || after >= head.seq {
            break;
        }
    }
    let mut last = serde_json::to_vec(&serde_json::json!({
        "chain_head": { "seq": head.seq, "hash": hex::encode(&head.hash) }
    }))
    .unwrap_or_default();
    last.push(b'\n');
    emit(last);
    Ok(count)
}

/// Follows the log: emits every entry after `after` as a JSON line as it commits, polling
/// every `every` with a connection taken from `pool` only for each poll (a follower never
/// holds a connection while it waits). Runs until `emit` answers `false` (the reader left).
pub fn follow(
    pool: &crate::db::Pool,
    mut after: i64,
    every: std::time::Duration,
    mut still_allowed: impl FnMut(&mut DbConn) -> Result<bool, DbError>,
    mut emit: impl FnMut(Vec<u8>) -> bool,
) -> Result<(), DbError> {
    let mut idle = 0u32;
    loop {
        let rows = {
            let mut conn = pool.get()?;
            // The follower's right to read is checked again on every poll, so a stream ends
            // within one poll of its session ending or its auditor losing the role (SPEC §15).
            if !still_allowed(&mut conn)? {
                return Ok(());
            }
            list(
                &mut conn,
                &Filter::default(),
                Order::OldestFirst,
                after,
                1000,
            )?
        };
        if rows.is_empty() {
            // Nothing new. Now and then a keep-alive newline (JSON Lines readers skip blank
            // lines), which is also how a follower learns that its reader has gone.
            idle += 1;
            if idle.is_multiple_of(50) && !emit(b"\n".to_vec()) {
                return Ok(());
            }
            std::thread::sleep(every);
            continue;
        }
        idle = 0;
        let mut chunk = Vec::with_capacity(rows.len() * 400);
        for row in rows {
            after = row.seq;
            let _ = serde_json::to_writer(&mut chunk, &EntryView::from(row));
            chunk.push(b'\n');
        }
        if !emit(chunk) {
            return Ok(());
        }
    }
}

/// One hour of the log: successful reveals and denials of any kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, diesel::QueryableByName)]
pub struct HourCounts {
    /// Hours since the Unix epoch.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub hour: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub reveals: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub denials: i64,
}

pub const MICROS_PER_HOUR: i64 = 3_600_000_000;

/// Reveals and denials per hour for the entries at or after `since` (microseconds), oldest
/// hour first; hours with neither are absent. Counted by the database (one row per hour).
pub fn hourly(conn: &mut DbConn, since: i64) -> Result<Vec<HourCounts>, DbError> {
    Ok(diesel::sql_query(
        "SELECT occurred_at / 3600000000 AS hour, \
           CAST(SUM(CASE WHEN action = 'credential.reveal' AND outcome = 'success' THEN 1 ELSE 0 END) AS BIGINT) AS reveals, \
           CAST(SUM(CASE WHEN outcome = 'denied' THEN 1 ELSE 0 END) AS BIGINT) AS denials \
         FROM audit_log WHERE occurred_at >= $1 \
           AND ((action = 'credential.reveal' AND outcome = 'success') OR outcome = 'denied') \
         GROUP BY occurred_at / 3600000000 ORDER BY hour",
    )
    .bind::<diesel::sql_types::BigInt, _>(since.div_euclid(MICROS_PER_HOUR) * MICROS_PER_HOUR)
    .load(conn)?)
}
