//! An owner's pages: their credentials (list, create, rotate, toggle, verify a candidate key)
//! and each credential's access log. Every answer comes from the API's credential handlers,
//! scoped by owner in their SQL; no page ever holds a stored secret (nothing here reveals).

use actix_web::http::StatusCode;
use actix_web::web;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::views::{self, banner, text, when, yes_no, ENVIRONMENTS, PROVIDERS};
use super::{body, call, see_other, Cx, Page, Posted, Refusal};
use crate::domain::profile;
use crate::domain::Provider;
use crate::routes::credentials::{self as api, IfMatch};

pub fn register(cfg: &mut web::ServiceConfig) {
    cfg.route("/credentials/", web::get().to(list))
        .route("/credentials/", web::post().to(create))
        .route("/credentials/{id}/", web::get().to(detail))
        .route("/credentials/{id}/rotate/", web::post().to(rotate))
        .route("/credentials/{id}/toggle/", web::post().to(toggle))
        .route("/credentials/{id}/verify/", web::post().to(verify));
}

/// What a finished form says on the page it leads to (fixed words: nothing the caller sent
/// is echoed through a URL).
#[derive(Deserialize)]
pub struct Notice {
    notice: Option<String>,
    cursor: Option<i64>,
}

fn notice_text(notice: Option<&str>) -> Option<&'static str> {
    Some(match notice? {
        "created" => "The credential was stored.",
        "rotated" => "The private key was replaced; the new version is current.",
        "activated" => "The credential is active: granted services can use it again.",
        "deactivated" => "The credential is inactive: no service can use it until you activate it.",
        "match" => "Match: the key you entered is the stored private key.",
        "mismatch" => "No match: the key you entered is not the stored private key.",
        _ => return None,
    })
}

async fn list(cx: Cx, q: web::Query<Notice>) -> Page {
    list_page(&cx, notice_text(q.notice.as_deref()), None).await
}

async fn list_page(cx: &Cx, notice: Option<&str>, error: Option<(StatusCode, String)>) -> Page {
    let creds = cx.ask0(api::list).await?;
    let rows = creds.as_array().cloned().unwrap_or_default();
    let status = error.as_ref().map_or(StatusCode::OK, |(s, _)| *s);
    let body = html! {
        (banner(notice, error.as_ref().map(|(_, m)| m.as_str())))
        section aria-labelledby="stored" {
            h2 id="stored" { "Stored credentials" }
            @if rows.is_empty() {
                p { "You have no credentials yet. Add one below." }
            } @else {
                div class="scroll" {
                    table {
                        thead { tr {
                            th scope="col" { "Provider" } th scope="col" { "Environment" }
                            th scope="col" { "Status" } th scope="col" { "Version" }
                            th scope="col" { "Updated" }
                        } }
                        tbody {
                            @for c in &rows {
                                tr {
                                    td data-label="Provider" { a href={ "/console/credentials/" (text(&c["id"])) "/" } {
                                        (text(&c["provider_display"])) } }
                                    td data-label="Environment" { (text(&c["environment"])) }
                                    td data-label="Status" { (status_word(&c["is_active"])) }
                                    td data-label="Version" { (text(&c["version"])) }
                                    td data-label="Updated" class="when" { (when(&c["updated_at"])) }
                                }
                            }
                        }
                    }
                }
            }
        }
        (create_form(&cx.csrf))
    };
    Ok(cx.page(status, "Your credentials", body))
}

fn status_word(active: &Value) -> &'static str {
    if active.as_bool().unwrap_or(false) {
        "active"
    } else {
        "inactive"
    }
}

/// The secret and setting fields every provider may take, named `secret.NAME` and
/// `setting.NAME` (the API refuses a name the chosen provider does not take).
fn profile_fields(providers: &[Provider]) -> Markup {
    html! {
        @for p in providers {
            @for name in profile::secret_names(*p) {
                @let id = format!("secret-{name}");
                label for=(id) { (name.replace('_', " ")) " (" (p.display_name()) ", optional)" }
                input id=(id) name={ "secret." (name) } type="password" autocomplete="off";
            }
            @for name in profile::setting_names(*p) {
                @let id = format!("setting-{name}");
                label for=(id) { (name.replace('_', " ")) " (" (p.display_name()) ", optional)" }
                input id=(id) name={ "setting." (name) } type="text" autocomplete="off";
            }
        }
    }
}

fn create_form(csrf: &str) -> Markup {
    html! {
        section aria-labelledby="add" {
            h2 id="add" { "Add a credential" }
            form class="card" method="post" action="/console/credentials/" {
                input type="hidden" name="csrf" value=(csrf);
                label for="provider" { "Provider" }
                select id="provider" name="provider" required { (views::options(PROVIDERS, "")) }
                label for="environment" { "Environment" }
                select id="environment" name="environment" { (views::options(ENVIRONMENTS, "sandbox")) }
                label for="api_key" { "API key (shown in metadata)" }
                input id="api_key" name="api_key" type="text" autocomplete="off" required;
                label for="private_key" { "Private key (never shown again)" }
                input id="private_key" name="private_key" type="password" autocomplete="off"
                    required minlength="10";
                details {
                    summary { "Provider secrets and settings" }
                    (profile_fields(&Provider::ALL))
                }
                button type="submit" { "Store the credential" }
            }
        }
    }
}

/// The filled form fields named `prefix` + NAME, as a JSON object of NAME → value (the
/// `secret.*` and `setting.*` fields), if there are any.
fn named(posted: &Posted, prefix: &str) -> Option<Value> {
    let named: Map<String, Value> = posted
        .fields
        .under(prefix)
        .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
        .collect();
    (!named.is_empty()).then_some(Value::Object(named))
}

async fn create(posted: Posted) -> Page {
    let f = &posted.fields;
    let mut fields = Map::new();
    for name in ["provider", "environment", "api_key", "private_key"] {
        fields.insert(name.into(), json!(f.get(name).unwrap_or("")));
    }
    for (prefix, name) in [("secret.", "secrets"), ("setting.", "settings")] {
        if let Some(named) = named(&posted, prefix) {
            fields.insert(name.into(), named);
        }
    }
    let cx = &posted.cx;
    let answer = cx.send(api::create, Value::Object(fields)).await;
    match answer {
        Ok(created) => Ok(see_other(&format!(
            "/console/credentials/{}/?notice=created",
            text(&created["id"])
        ))),
        Err(e) => list_page(cx, None, Some(e.shown()?)).await,
    }
}

/// The credential id of a console path: digits only (anything else names nothing).
fn id_of(path: &str) -> Result<String, Refusal> {
    if path.is_empty() || path.len() > 19 || !path.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refusal::missing());
    }
    Ok(path.to_owned())
}

async fn detail(cx: Cx, id: web::Path<String>, q: web::Query<Notice>) -> Page {
    let id = id_of(&id)?;
    detail_page(&cx, &id, notice_text(q.notice.as_deref()), None, q.cursor).await
}

async fn detail_page(
    cx: &Cx,
    id: &str,
    notice: Option<&str>,
    error: Option<(StatusCode, String)>,
    cursor: Option<i64>,
) -> Page {
    let path = || web::Path::from(id.to_owned());
    let cred = cx.ask(api::get_one, path()).await?;
    let versions = cx.ask(api::versions, path()).await?;
    let query = api::AccessLogQuery::page(cursor, 50);
    let log = call(api::access_log(cx.request(), path(), web::Query(query))).await?;
    let provider = cred["provider"]
        .as_str()
        .and_then(|p| Provider::parse(p).ok());
    let version = text(&cred["version"]);
    let active = cred["is_active"].as_bool().unwrap_or(false);
    let status = error.as_ref().map_or(StatusCode::OK, |(s, _)| *s);
    let base = format!("/console/credentials/{id}/");
    let secrets: Vec<String> = cred["secrets"]
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    let body = html! {
        (banner(notice, error.as_ref().map(|(_, m)| m.as_str())))
        dl class="facts" {
            dt { "Provider" } dd { (text(&cred["provider_display"])) }
            dt { "Environment" } dd { (text(&cred["environment"])) }
            dt { "Status" } dd { (status_word(&cred["is_active"])) }
            dt { "Current version" } dd { (version) }
            dt { "API key" } dd { code { (text(&cred["api_key"])) } }
            dt { "Provider secrets held" } dd {
                @if secrets.is_empty() { "none" } @else { (secrets.join(", ")) }
            }
            @if let Some(settings) = cred["settings"].as_object() {
                @for (k, v) in settings {
                    dt { (k.replace('_', " ")) } dd { (text(v)) }
                }
            }
            dt { "Created" } dd { (when(&cred["created_at"])) }
            dt { "Updated" } dd { (when(&cred["updated_at"])) }
        }
        p class="muted" { "The private key is never shown here. Check a key against it below." }
        div class="grid" {
            section class="card" aria-labelledby="check" {
                h2 id="check" { "Check a key" }
                form method="post" action={ (base) "verify/" } {
                    input type="hidden" name="csrf" value=(cx.csrf);
                    label for="candidate" { "Candidate private key" }
                    input id="candidate" name="private_key" type="password" autocomplete="off" required;
                    button type="submit" { "Check" }
                }
            }
            section class="card" aria-labelledby="rotate" {
                h2 id="rotate" { "Rotate" }
                form method="post" action={ (base) "rotate/" } {
                    input type="hidden" name="csrf" value=(cx.csrf);
                    input type="hidden" name="version" value=(version);
                    label for="new_key" { "New private key" }
                    input id="new_key" name="private_key" type="password" autocomplete="off" minlength="10";
                    @if let Some(p) = provider {
                        (profile_secret_fields(p))
                    }
                    button type="submit" { "Replace" }
                }
            }
            section class="card" aria-labelledby="state" {
                h2 id="state" { "Status" }
                p { @if active { "Granted services can use this credential." }
                    @else { "No service can use this credential while it is inactive." } }
                (views::action(&cx.csrf, &format!("{base}toggle/"),
                    if active { "Deactivate" } else { "Activate" }, &[("version", &version)]))
            }
        }
        section aria-labelledby="versions" {
            h2 id="versions" { "Versions" }
            div class="scroll" { table {
                thead { tr {
                    th scope="col" { "Version" } th scope="col" { "Environment" }
                    th scope="col" { "Created" } th scope="col" { "By" }
                    th scope="col" { "Master key" } th scope="col" { "Current" }
                } }
                tbody {
                    @for v in versions["versions"].as_array().into_iter().flatten() {
                        tr {
                            td data-label="Version" { (text(&v["version"])) } td data-label="Environment" { (text(&v["environment"])) }
                            td data-label="Created" class="when" { (when(&v["created_at"])) } td data-label="By" { (text(&v["created_by"]["username"])) }
                            td data-label="Master key" { (text(&v["master_key_version"])) } td data-label="Current" { (yes_no(&v["is_current"])) }
                        }
                    }
                }
            } }
        }
        section aria-labelledby="log" {
            h2 id="log" { "Access log" }
            p class="muted" { "Every use of this credential, by you and by the services you granted, oldest first." }
            (access_log_table(&log))
            @if let Some(next) = log["next_cursor"].as_i64() {
                p { a href={ (base) "?cursor=" (next) "#log" } { "Later entries" } }
            }
        }
    };
    let title = format!(
        "{} ({})",
        text(&cred["provider_display"]),
        text(&cred["environment"])
    );
    Ok(cx.page(status, &title, body))
}

fn profile_secret_fields(p: Provider) -> Markup {
    html! {
        @for name in profile::secret_names(p) {
            @let id = format!("rotate-{name}");
            label for=(id) { "New " (name.replace('_', " ")) " (optional)" }
            input id=(id) name={ "secret." (name) } type="password" autocomplete="off";
        }
    }
}

fn access_log_table(log: &Value) -> Markup {
    let entries = log["entries"].as_array().cloned().unwrap_or_default();
    html! {
        @if entries.is_empty() {
            p { "No entries." }
        } @else {
            div class="scroll" { table {
                thead { tr {
                    th scope="col" { "#" } th scope="col" { "When" } th scope="col" { "Who" }
                    th scope="col" { "From" } th scope="col" { "What" }
                    th scope="col" { "Reference" } th scope="col" { "Outcome" }
                } }
                tbody {
                    @for e in &entries {
                        tr {
                            td data-label="#" { (text(&e["seq"])) }
                            td data-label="When" class="when" { (when(&e["occurred_at"])) }
                            td data-label="Who" { (text(&e["actor_kind"])) " " (text(&e["actor_name"])) }
                            td data-label="From" { (text(&e["source_ip"])) }
                            td data-label="What" { (text(&e["action"]))
                                @if let Some(op) = e["operation"].as_str() { " (" (op) ")" } }
                            td data-label="Reference" { (text(&e["reference"])) }
                            td data-label="Outcome" class={ "outcome " (text(&e["outcome"])) } {
                                (text(&e["outcome"]))
                                @if let Some(r) = e["reason"].as_str() { ": " (r.replace('_', " ")) }
                            }
                        }
                    }
                }
            } }
        }
    }
}

/// The version the form was rendered at, for `If-Match`: a credential changed since answers
/// 412 instead of silently acting on what the user did not see.
fn seen_version(posted: &Posted) -> IfMatch {
    IfMatch(posted.fields.get("version").and_then(|v| v.parse().ok()))
}

async fn rotate(posted: Posted, id: web::Path<String>) -> Page {
    let id = id_of(&id)?;
    let mut fields = Map::new();
    if let Some(key) = posted.fields.filled("private_key") {
        fields.insert("private_key".into(), json!(key));
    }
    if let Some(secrets) = named(&posted, "secret.") {
        fields.insert("secrets".into(), secrets);
    }
    let cx = &posted.cx;
    if fields.is_empty() {
        let error = (
            StatusCode::BAD_REQUEST,
            "Enter a new private key or a new provider secret".to_owned(),
        );
        return detail_page(cx, &id, None, Some(error), None).await;
    }
    let answer = match body(Value::Object(fields)) {
        Ok(b) => {
            let path = web::Path::from(id.clone());
            call(api::rotate(cx.request(), seen_version(&posted), path, b)).await
        }
        Err(e) => Err(e),
    };
    back_to(cx, &id, answer, |_| "rotated").await
}

async fn toggle(posted: Posted, id: web::Path<String>) -> Page {
    let id = id_of(&id)?;
    let cx = &posted.cx;
    let path = web::Path::from(id.clone());
    let answer = call(api::toggle_status(
        cx.request(),
        seen_version(&posted),
        path,
    ))
    .await;
    back_to(cx, &id, answer, |toggled| {
        if toggled["credentials"]["is_active"]
            .as_bool()
            .unwrap_or(false)
        {
            "activated"
        } else {
            "deactivated"
        }
    })
    .await
}

async fn verify(posted: Posted, id: web::Path<String>) -> Page {
    let id = id_of(&id)?;
    let cx = &posted.cx;
    let candidate = json!({ "private_key": posted.fields.get("private_key").unwrap_or("") });
    let answer = match body(candidate) {
        Ok(b) => {
            let path = web::Path::from(id.clone());
            call(api::verify(
                cx.state.clone(),
                cx.req.clone(),
                cx.meta(),
                path,
                b,
            ))
            .await
        }
        Err(e) => Err(e),
    };
    back_to(cx, &id, answer, |verdict| {
        if verdict["is_valid"].as_bool().unwrap_or(false) {
            "match"
        } else {
            "mismatch"
        }
    })
    .await
}

/// After a form on a credential's page: back to the page with the notice `notice` picks from
/// the API's answer, or the page again with the refusal in it.
async fn back_to(
    cx: &Cx,
    id: &str,
    answer: Result<Value, Refusal>,
    notice: impl FnOnce(&Value) -> &'static str,
) -> Page {
    match answer {
        Ok(answer) => Ok(see_other(&format!(
            "/console/credentials/{id}/?notice={}",
            notice(&answer)
        ))),
        Err(e) => detail_page(cx, id, None, Some(e.shown()?), None).await,
    }
}
