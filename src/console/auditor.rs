//! The security team's pages: the audit log with the API's filters and paging, a chart of
//! reveals and denials per hour, chain and checkpoint verification in plain words, and the
//! latest signed checkpoint, the public key and the export as downloads. Every answer comes
//! from the API's audit handlers (auditors only, each read audited as the API audits it).

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use maud::{html, Markup};
use serde_json::{json, Value};

use super::views::{banner, text, when};
use super::{Cx, Page, Posted, Refusal};
use crate::routes::audit as api;

pub fn register(cfg: &mut web::ServiceConfig) {
    cfg.route("/audit/", web::get().to(log))
        .route("/audit/live/", web::get().to(live))
        .route("/audit/names/", web::get().to(names))
        .route("/audit/verify/", web::get().to(verify))
        .route("/audit/verify/", web::post().to(verify_checkpoint))
        .route("/audit/checkpoint.txt", web::get().to(checkpoint_file))
        .route("/audit/public-key.txt", web::get().to(public_key_file))
        .route("/audit/export.jsonl", web::get().to(export_file));
}

/// The API's list filters, as the console's page takes them (the same names).
const FILTERS: &[(&str, &str)] = &[
    ("actor", "Actor (name or id)"),
    ("action", "Action"),
    ("outcome", "Outcome"),
    ("credential", "Credential id"),
    ("owner", "Owner id"),
    ("operation", "Operation"),
    ("reference", "Payment reference"),
    ("since", "From (RFC 3339 or Unix seconds)"),
    ("until", "Until"),
];

/// The page's query without blank fields (an empty form box means "any").
fn filled_query(raw: &str) -> Result<Vec<(String, String)>, Refusal> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(raw)
        .map_err(|_| Refusal::bad("Invalid query parameters"))?
        .into_inner();
    Ok(pairs
        .into_iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .collect())
}

fn encode(pairs: &[(String, String)]) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, NON_ALPHANUMERIC),
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

async fn log(cx: Cx) -> Page {
    let mut pairs = filled_query(cx.req.query_string())?;
    // Newest first, as a log is read; the pages' cursors lead to earlier entries.
    if !pairs.iter().any(|(k, _)| k == "order") {
        pairs.push(("order".into(), "newest".into()));
    }
    let query = web::Query::<api::ListQuery>::from_query(&encode(&pairs))
        .map_err(|_| Refusal::bad("Unknown filter; use the form's fields"))?;
    let (events, error) = match cx.ask(api::list, query).await {
        Ok(events) => (events, None),
        // A filter the API refuses is shown with the form; any other refusal is the page's.
        Err(Refusal::Page {
            status: StatusCode::BAD_REQUEST,
            message,
        }) => (
            json!({ "events": [], "next_cursor": null }),
            Some((StatusCode::BAD_REQUEST, message)),
        ),
        Err(e) => return Err(e),
    };
    let now = cx.state.clock.now_micros();
    let since = now - 24 * HOUR;
    let hours = api::activity(&cx.state, &cx.user, &cx.meta(), since)
        .await
        .map_err(|e| Refusal::from_api(&e))?;
    let value = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    };
    let rows = events["events"].as_array().cloned().unwrap_or_default();
    // Following live starts after the newest entry shown.
    let last_seq = rows
        .iter()
        .filter_map(|e| e["seq"].as_i64())
        .max()
        .unwrap_or(0);
    let names = owner_names(&cx, &rows).await?;
    let next = events["next_cursor"].as_i64().map(|cursor| {
        let mut next: Vec<(String, String)> = pairs
            .iter()
            .filter(|(k, _)| k != "cursor")
            .cloned()
            .collect();
        next.push(("cursor".into(), cursor.to_string()));
        format!("/console/audit/?{}", encode(&next))
    });
    let status = error.as_ref().map_or(StatusCode::OK, |(s, _)| *s);
    let body = html! {
        (banner(None, error.as_ref().map(|(_, m)| m.as_str())))
        section aria-labelledby="activity" {
            h2 id="activity" { "Reveals and denials, last 24 hours" }
            (chart(&hours, now))
        }
        section aria-labelledby="downloads" {
            h2 id="downloads" { "Downloads" }
            ul class="links" {
                li { a href="/console/audit/export.jsonl" download { "The whole log (JSON Lines)" } }
                li { a href="/console/audit/checkpoint.txt" download { "The latest signed checkpoint" } }
                li { a href="/console/audit/public-key.txt" download { "The checkpoints' public key" } }
            }
        }
        section aria-labelledby="entries" {
            h2 id="entries" { "Entries" }
            details class="card" open[pairs.iter().any(|(k, _)| k != "cursor" && k != "order")] {
            summary { "Filters" }
            form class="filters" method="get" action="/console/audit/" {
                @for (name, label) in FILTERS {
                    div {
                        label for={ "f-" (name) } { (label) }
                        input id={ "f-" (name) } name=(name) type="text" value=(value(name));
                    }
                }
                button type="submit" { "Filter" }
                " "
                a href="/console/audit/" { "Clear" }
            }
            }
            (entries_table(&rows, &names))
            @if let Some(next) = next {
                p { a href=(next) { "Next page" } }
            }
            p {
                button id="follow" type="button" data-after=(last_seq.max(0)) { "Follow live" }
                " "
                span id="follow-status" role="status" {}
            }
        }
        script src="/console/static/follow.js" defer {}
    };
    Ok(cx.page(status, "Audit log", body))
}

const HOUR: i64 = crate::audit::store::MICROS_PER_HOUR;

/// Two bars an hour (reveals, denials) for the 24 hours up to `now`, as an SVG drawn on the
/// server (no script), with the numbers as a table beside it for screen readers.
fn chart(hours: &[crate::audit::store::HourCounts], now: i64) -> Markup {
    let last = now.div_euclid(HOUR);
    let slots: Vec<(i64, i64, i64)> = (0..24)
        .map(|i| {
            let hour = last - 23 + i;
            let found = hours.iter().find(|h| h.hour == hour);
            (
                hour,
                found.map_or(0, |h| h.reveals),
                found.map_or(0, |h| h.denials),
            )
        })
        .collect();
    let peak = slots
        .iter()
        .map(|(_, r, d)| (*r).max(*d))
        .max()
        .unwrap_or(0)
        .max(1);
    let (width, height, base) = (480i64, 150i64, 130i64);
    let bar = |n: i64| n * (base - 10) / peak;
    let label = |hour: i64| {
        chrono::DateTime::from_timestamp(hour * 3600, 0)
            .map_or_else(String::new, |d| d.format("%H:00").to_string())
    };
    let total_reveals: i64 = slots.iter().map(|s| s.1).sum();
    let total_denials: i64 = slots.iter().map(|s| s.2).sum();
    html! {
        figure class="chart" {
            svg viewBox={ "0 0 " (width) " " (height) } role="img" aria-labelledby="chart-caption" {
                line class="axis" x1="0" y1=(base) x2=(width) y2=(base) {}
                @for (i, (hour, reveals, denials)) in slots.iter().enumerate() {
                    @let x = i as i64 * 20;
                    rect class="reveal" x=(x + 2) y=(base - bar(*reveals)) width="7" height=(bar(*reveals)) {
                        title { (label(*hour)) ": " (reveals) " reveals" }
                    }
                    rect class="denial" x=(x + 10) y=(base - bar(*denials)) width="7" height=(bar(*denials)) {
                        title { (label(*hour)) ": " (denials) " denials" }
                    }
                    @if i % 6 == 0 {
                        text class="tick" x=(x + 2) y=(base + 15) { (label(*hour)) }
                    }
                }
            }
            figcaption id="chart-caption" {
                span class="key reveal" {} " reveals (" (total_reveals) ") "
                span class="key denial" {} " denials (" (total_denials) ") per hour, UTC; the tallest bar is " (peak) "."
            }
        }
        details {
            summary { "The numbers" }
            div class="scroll" { table {
                thead { tr { th scope="col" { "Hour (UTC)" } th scope="col" { "Reveals" } th scope="col" { "Denials" } } }
                tbody { @for (hour, reveals, denials) in &slots { tr {
                    td data-label="Hour (UTC)" { (label(*hour)) } td data-label="Reveals" { (reveals) } td data-label="Denials" { (denials) }
                } } }
            } }
        }
    }
}

/// The usernames of the owners the entries name, so the table names people, not numbers.
async fn owner_names(cx: &Cx, rows: &[Value]) -> Result<Names, Refusal> {
    let ids: Vec<i64> = rows
        .iter()
        .filter_map(|e| e["target"]["owner_id"].as_i64())
        .collect();
    if ids.is_empty() {
        return Ok(Names::new());
    }
    cx.state
        .db(move |c| crate::repo::users::usernames(c, &ids))
        .await
        .map_err(|e| Refusal::from_api(&e.into()))
}

type Names = std::collections::HashMap<i64, String>;

fn entries_table(rows: &[Value], names: &Names) -> Markup {
    html! {
        @if rows.is_empty() {
            p { "No entries match." }
        }
        div class="scroll" { table id="live" data-names=(serde_json::to_string(names).unwrap_or_default()) {
                thead { tr {
                    th scope="col" { "#" } th scope="col" { "When" } th scope="col" { "Who" }
                    th scope="col" { "What" } th scope="col" { "Outcome" } th scope="col" { "Target" }
                    th scope="col" { "From" } th scope="col" { "Reference" }
                } }
                tbody { @for e in rows { tr {
                    td data-label="#" { (text(&e["seq"])) }
                    td data-label="When" class="when" { (when(&e["occurred_at"])) }
                    td data-label="Who" { (text(&e["actor"]["kind"])) " " (text(&e["actor"]["name"])) }
                    td data-label="What" { (text(&e["action"])) @if let Some(op) = e["operation"].as_str() { " (" (op) ")" } }
                    td data-label="Outcome" class={ "outcome " (text(&e["outcome"])) } {
                        (text(&e["outcome"]))
                        @if let Some(r) = e["reason"].as_str() { ": " (r.replace('_', " ")) }
                    }
                    td data-label="Target" { (target(&e["target"], names)) }
                    td data-label="From" { (text(&e["source_ip"])) }
                    td data-label="Reference" { (text(&e["reference"])) }
                } } }
        } }
    }
}

/// What an entry is about, by name: "alice's mpesa sandbox credential", then the ids, which
/// the filters take, in a quieter line.
fn target(t: &Value, names: &Names) -> Markup {
    let owner = t["owner_id"].as_i64();
    let credential = t["credential_id"].as_i64();
    let scope: Vec<&str> = ["provider", "environment"]
        .iter()
        .filter_map(|k| t[*k].as_str())
        .collect();
    let whose = owner.map(|o| match names.get(&o) {
        Some(name) => format!("{name}'s"),
        None => "a former user's".to_owned(),
    });
    let words = match (&whose, credential) {
        (Some(whose), Some(_)) => format!("{whose} {} credential", scope.join(" ")),
        (None, Some(_)) => format!("{} credential", scope.join(" ")),
        (Some(whose), None) if scope.is_empty() => whose.trim_end_matches("'s").to_owned(),
        (Some(whose), None) => format!("{whose} {}", scope.join(" ")),
        (None, None) if scope.is_empty() => return html! { "—" },
        (None, None) => scope.join(" "),
    };
    let ids: Vec<String> = credential
        .map(|c| format!("credential {c}"))
        .into_iter()
        .chain(owner.map(|o| format!("owner {o}")))
        .collect();
    html! {
        (words.split_whitespace().collect::<Vec<_>>().join(" "))
        @if !ids.is_empty() { br; span class="muted" { (ids.join(", ")) } }
    }
}

/// `GET /console/audit/names/?owner=ID&owner=ID…`: the usernames of those owners, as JSON
/// (`{"ID": "name"}`), so entries that arrive live name people as the page does. Auditors
/// only (a refusal is audited, as the log's own is); at most 100 ids.
async fn names(cx: Cx) -> Page {
    crate::routes::audit::require_auditor(&cx.state, &cx.user, &cx.meta())
        .await
        .map_err(|e| Refusal::from_api(&e))?;
    let ids: Vec<i64> = filled_query(cx.req.query_string())?
        .into_iter()
        .filter(|(k, _)| k == "owner")
        .map(|(_, v)| {
            v.parse::<i64>()
                .map_err(|_| Refusal::bad("owner must be an id"))
        })
        .collect::<Result<_, _>>()?;
    if ids.len() > 100 {
        return Err(Refusal::bad("At most 100 owners at a time"));
    }
    let found = cx
        .state
        .db(move |c| crate::repo::users::usernames(c, &ids))
        .await
        .map_err(|e| Refusal::from_api(&e.into()))?;
    let body: serde_json::Map<String, Value> = found
        .into_iter()
        .map(|(id, name)| (id.to_string(), Value::String(name)))
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body))
}

/// `GET /console/audit/live/?after=SEQ`: the API's export, following (what `follow.js`
/// reads).
async fn live(cx: Cx) -> Page {
    let after = filled_query(cx.req.query_string())?
        .into_iter()
        .find(|(k, _)| k == "after")
        .and_then(|(_, v)| v.parse::<i64>().ok())
        .unwrap_or(0);
    let query = web::Query::<api::ExportQuery>::from_query(&format!("after={after}&follow=true"))
        .map_err(|_| Refusal::bad("Invalid query parameters"))?;
    cx.respond(api::export, query).await
}

fn download(mut res: HttpResponse, filename: &str, kind: &'static str) -> HttpResponse {
    let headers = res.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
    res
}

async fn export_file(cx: Cx) -> Page {
    let query = web::Query::<api::ExportQuery>::from_query("")
        .map_err(|_| Refusal::bad("Invalid query parameters"))?;
    let res = cx.respond(api::export, query).await?;
    Ok(download(res, "hazina-audit.jsonl", "application/x-ndjson"))
}

async fn checkpoint_file(cx: Cx) -> Page {
    let res = cx.respond0(api::checkpoint).await?;
    Ok(download(
        res,
        "hazina-checkpoint.txt",
        "text/plain; charset=utf-8",
    ))
}

async fn public_key_file(cx: Cx) -> Page {
    let key = cx.ask0(api::public_key).await?;
    let mut text = String::new();
    for k in key["keys"].as_array().into_iter().flatten() {
        if let Some(k) = k.as_str() {
            text.push_str(k);
            text.push('\n');
        }
    }
    Ok(download(
        HttpResponse::Ok().body(text),
        "hazina-audit-key.txt",
        "text/plain; charset=utf-8",
    ))
}

/// The latest signed checkpoint, as text (for the verify page).
async fn latest_checkpoint(cx: &Cx) -> Result<String, Refusal> {
    let res = cx.respond0(api::checkpoint).await?;
    let bytes = super::read(res).await?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The chain's verdict in plain words.
fn chain_words(report: &Value) -> Markup {
    let checked = report["checked"].as_i64().unwrap_or(0);
    html! {
        @if report["ok"].as_bool().unwrap_or(false) {
            p class="notice" role="status" {
                "The log is intact: all " (checked) " entries check out, each linked to the one before it, up to the head, and they produce the stored Merkle tree."
            }
        } @else {
            @let bad = text(&report["first_bad_seq"]);
            p class="error" role="alert" {
                "The log has been altered: entry #" (bad) " is not the entry that was written (it was edited, deleted, inserted or moved, or the head does not match). "
                @if let Some(problem) = report["problem"].as_str() {
                    "In detail: " (problem) ". "
                }
                "The " (checked) " entries before it check out."
            }
        }
    }
}

async fn verify(cx: Cx) -> Page {
    verify_page(&cx, None, None, "").await
}

async fn verify_page(
    cx: &Cx,
    checked: Option<Value>,
    error: Option<(StatusCode, String)>,
    pasted: &str,
) -> Page {
    let report = cx.ask0(api::verify).await?;
    let key = cx.ask0(api::public_key).await?;
    let latest = latest_checkpoint(cx).await;
    let status = error.as_ref().map_or(StatusCode::OK, |(s, _)| *s);
    let body = html! {
        (banner(None, error.as_ref().map(|(_, m)| m.as_str())))
        section aria-labelledby="chain" {
            h2 id="chain" { "The hash chain" }
            (chain_words(&report))
        }
        @if let Some(result) = &checked {
            section aria-labelledby="result" {
                h2 id="result" { "Your checkpoint" }
                @for v in result["checkpoints"].as_array().into_iter().flatten() {
                    @if v["ok"].as_bool().unwrap_or(false) {
                        p class="notice" role="status" {
                            "The checkpoint holds: it is signed by this log's key, and the log still extends it, so nothing up to entry #"
                            (text(&v["tree_size"])) " was rolled back, truncated or rewritten."
                        }
                    } @else {
                        p class="error" role="alert" {
                            "The checkpoint does not hold"
                            @if let Some(size) = v["tree_size"].as_u64() { " (tree size " (size) ")" }
                            ": " (text(&v["problem"]))
                        }
                    }
                }
            }
        }
        section aria-labelledby="check-one" {
            h2 id="check-one" { "Check a checkpoint you kept" }
            p class="muted" { "Paste a signed checkpoint saved earlier (from this page, "
                code { "hazina audit checkpoint" } " or the checkpoint file): it must still verify against the log as it is now." }
            form class="card" method="post" action="/console/audit/verify/" {
                input type="hidden" name="csrf" value=(cx.csrf);
                label for="checkpoint" { "Signed checkpoint" }
                textarea id="checkpoint" name="checkpoint" rows="7" required spellcheck="false" { (pasted) }
                button type="submit" { "Verify" }
            }
        }
        section aria-labelledby="latest" {
            h2 id="latest" { "The latest signed checkpoint" }
            @match &latest {
                Ok(note) => pre class="note" { (note) },
                Err(Refusal::Page { message, .. }) => p class="error" role="alert" { (message) },
                Err(Refusal::SignIn) => p { "Sign in again to see it." },
            }
            h3 { "Public key (origin " code { (text(&key["origin"])) } ")" }
            pre class="note" { (text(&key["key"])) }
            p { a href="/console/audit/checkpoint.txt" download { "Download the checkpoint" } " · "
                a href="/console/audit/public-key.txt" download { "Download the public key" } }
        }
    };
    Ok(cx.page(status, "Verify the audit log", body))
}

async fn verify_checkpoint(posted: Posted) -> Page {
    let cx = &posted.cx;
    let mut pasted = posted
        .fields
        .get("checkpoint")
        .unwrap_or("")
        .replace("\r\n", "\n");
    // A note ends with a newline; a paste often loses it.
    if !pasted.ends_with('\n') {
        pasted.push('\n');
    }
    let answer = cx
        .send(
            api::verify_with_checkpoints,
            json!({ "checkpoints": [pasted.clone()] }),
        )
        .await;
    match answer {
        Ok(result) => verify_page(cx, Some(result), None, &pasted).await,
        Err(e) => verify_page(cx, None, Some(e.shown()?), &pasted).await,
    }
}
