//! An admin's pages: users, services, grants with their operations, provider and revoked
//! client certificates, and the master keyring (rows per version, a rotation's progress).
//! Each answer comes from the API's admin handlers, which check the role and audit.

use actix_web::http::StatusCode;
use actix_web::web;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Value};

use super::views::{self, banner, text, when, yes_no, ENVIRONMENTS, PROVIDERS};
use super::{see_other, Cx, Page, Posted, Refusal};
use crate::routes::{admin as api, keys};
use crate::vault::Operation;

pub fn register(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/", web::get().to(users))
        .route("/admin/users/", web::post().to(create_user))
        .route("/admin/users/{name}/", web::get().to(user))
        .route("/admin/users/{name}/disable/", web::post().to(disable_user))
        .route("/admin/users/{name}/enable/", web::post().to(enable_user))
        .route("/admin/users/{name}/role/", web::post().to(set_role))
        .route(
            "/admin/users/{name}/password/",
            web::post().to(set_password),
        )
        .route(
            "/admin/users/{name}/sessions/revoke/",
            web::post().to(revoke_sessions),
        )
        .route("/admin/users/{name}/unlock/", web::post().to(unlock_user))
        .route("/admin/services/", web::get().to(services))
        .route("/admin/services/", web::post().to(create_service))
        .route(
            "/admin/services/{name}/disable/",
            web::post().to(disable_service),
        )
        .route("/admin/grants/", web::get().to(grants))
        .route("/admin/grants/", web::post().to(create_grant))
        .route("/admin/grants/{id}/revoke/", web::post().to(revoke_grant))
        .route("/admin/certificates/", web::get().to(certificates))
        .route("/admin/keys/", web::get().to(master_keys))
        .route("/admin/keys/rotate/", web::post().to(rotate_keys));
}

#[derive(Deserialize)]
pub struct Notice {
    notice: Option<String>,
}

fn notice_text(notice: Option<&str>) -> Option<&'static str> {
    Some(match notice? {
        "user-created" => "The user was created.",
        "user-disabled" => "The user is disabled; their sessions have ended.",
        "user-enabled" => "The user is enabled.",
        "role-set" => "The role was changed; it applies from their next request.",
        "password-set" => "The password was set; every session of theirs has ended.",
        "sessions-revoked" => "Every session of the user has ended.",
        "unlocked" => "The login lockout was lifted; they may sign in now.",
        "not-locked" => "No login lockout held this user; nothing was changed.",
        "service-created" => "The service was registered.",
        "service-disabled" => "The service is disabled.",
        "grant-created" => "The grant was made.",
        "grant-created-disclosing" => GRANT_DISCLOSES,
        "grant-revoked" => "The grant was revoked.",
        "rotation-started" => "A master-key rotation is under way; its progress is shown below.",
        _ => return None,
    })
}

type Shown = Option<(StatusCode, String)>;

fn status_of(error: &Shown) -> StatusCode {
    error.as_ref().map_or(StatusCode::OK, |(s, _)| *s)
}

fn message_of(error: &Shown) -> Option<&str> {
    error.as_ref().map(|(_, m)| m.as_str())
}

/// After a form: on success to `page` with its notice; on a refusal shown in the page, the
/// page again with the error.
async fn after<F, Fut>(answer: Result<Value, Refusal>, page: &str, notice: &str, again: F) -> Page
where
    F: FnOnce(Shown) -> Fut,
    Fut: std::future::Future<Output = Page>,
{
    match answer {
        Ok(_) => Ok(see_other(&format!("{page}?notice={notice}"))),
        Err(e) => again(Some(e.shown()?)).await,
    }
}

// ---- users

async fn users(cx: Cx, q: web::Query<Notice>) -> Page {
    users_page(&cx, notice_text(q.notice.as_deref()), None).await
}

async fn users_page(cx: &Cx, notice: Option<&str>, error: Shown) -> Page {
    let rows = cx.ask0(api::list_users).await?;
    let body = html! {
        (banner(notice, message_of(&error)))
        div class="scroll" { table {
            thead { tr {
                th scope="col" { "User" } th scope="col" { "Role" } th scope="col" { "Status" }
                th scope="col" { "Created" } th scope="col" { span class="sr-only" { "Actions" } }
            } }
            tbody {
                @for u in rows.as_array().into_iter().flatten() {
                    @let name = text(&u["username"]);
                    @let disabled = u["is_disabled"].as_bool().unwrap_or(false);
                    tr {
                        td data-label="User" { (name) } td data-label="Role" { (text(&u["role"])) }
                        td data-label="Status" { @if disabled { "disabled" } @else { "enabled" } }
                        td data-label="Created" class="when" { (when(&u["created_at"])) }
                        td {
                            a href=(format!("/console/admin/users/{}/", urlpath(&name))) { "Manage " span class="sr-only" { (name) } }
                        }
                    }
                }
            }
        } }
        section aria-labelledby="new-user" {
            h2 id="new-user" { "Create a user" }
            form class="card" method="post" action="/console/admin/users/" {
                input type="hidden" name="csrf" value=(cx.csrf);
                label for="username" { "Username" }
                input id="username" name="username" type="text" autocomplete="off" required;
                label for="password" { "Initial password" }
                input id="password" name="password" type="password" autocomplete="new-password" required;
                label for="role" { "Role" }
                select id="role" name="role" {
                    (views::options(&[("user", "user (owns credentials)"), ("admin", "admin"), ("auditor", "auditor (reads the audit log)")], "user"))
                }
                button type="submit" { "Create the user" }
            }
        }
    };
    Ok(cx.page(status_of(&error), "Users", body))
}

/// A path segment for a username or service name (both are restricted to URL-safe
/// characters by their parsers; anything else is percent-encoded all the same).
fn urlpath(segment: &str) -> String {
    // RFC 3986's unreserved characters stay as they are (`dana-the-merchant`, not `%2D`).
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(segment, SEGMENT).to_string()
}

async fn create_user(posted: Posted) -> Page {
    let f = &posted.fields;
    let fields = json!({
        "username": f.get("username").unwrap_or(""),
        "password": f.get("password").unwrap_or(""),
        "role": f.get("role").unwrap_or("user"),
    });
    let cx = &posted.cx;
    let answer = cx.send(api::create_user, fields).await;
    after(answer, "/console/admin/", "user-created", |e| {
        users_page(cx, None, e)
    })
    .await
}

/// One user's page: their role, a password reset, their sessions, a login lockout, and
/// disabling them (each destructive action asks for a tick that confirms it).
async fn user(cx: Cx, name: web::Path<String>, q: web::Query<Notice>) -> Page {
    user_page(&cx, &name, notice_text(q.notice.as_deref()), None).await
}

async fn user_page(cx: &Cx, name: &str, notice: Option<&str>, error: Shown) -> Page {
    let rows = cx.ask0(api::list_users).await?;
    let Some(u) = rows
        .as_array()
        .into_iter()
        .flatten()
        .find(|u| u["username"] == name)
    else {
        return Err(Refusal::Page {
            status: StatusCode::NOT_FOUND,
            message: "No such user".into(),
        });
    };
    let disabled = u["is_disabled"].as_bool().unwrap_or(false);
    let role = text(&u["role"]);
    let base = format!("/console/admin/users/{}", urlpath(name));
    let oneself = name == cx.user.username;
    let body = html! {
        (banner(notice, message_of(&error)))
        p { "Role " strong { (role) } "; " @if disabled { "disabled" } @else { "enabled" } "; created " (when(&u["created_at"])) "." }
        section class="card" aria-labelledby="role-h" {
            h2 id="role-h" { "Role" }
            form method="post" action=(format!("{base}/role/")) {
                input type="hidden" name="csrf" value=(cx.csrf);
                label for="role" { "New role" }
                select id="role" name="role" {
                    (views::options(&[("user", "user (owns credentials)"), ("admin", "admin"), ("auditor", "auditor (reads the audit log)")], &role))
                }
                button type="submit" { "Set the role" }
            }
        }
        section class="card" aria-labelledby="password-h" {
            h2 id="password-h" { "Password" }
            form method="post" action=(format!("{base}/password/")) {
                input type="hidden" name="csrf" value=(cx.csrf);
                label for="password" { "New password (12 characters or more); every session of theirs ends" }
                input id="password" name="password" type="password" autocomplete="new-password" required;
                button type="submit" { "Set the password" }
            }
        }
        section class="card" aria-labelledby="access-h" {
            h2 id="access-h" { "Sign-in" }
            p class="muted" { "Failed logins lock a name out for a while; neither enabling a user nor a new password lifts that." }
            (views::action(&cx.csrf, &format!("{base}/unlock/"), &format!("Lift the login lockout of {name}"), &[]))
            (confirmed(&cx.csrf, &format!("{base}/sessions/revoke/"), &format!("End every session of {name}"), "end-sessions", &format!("Yes, sign {name} out everywhere")))
        }
        section class="card" aria-labelledby="status-h" {
            h2 id="status-h" { "Status" }
            @if disabled {
                (views::action(&cx.csrf, &format!("{base}/enable/"), &format!("Enable {name}"), &[]))
            } @else if oneself {
                p class="muted" { "You cannot disable yourself." }
            } @else {
                (confirmed(&cx.csrf, &format!("{base}/disable/"), &format!("Disable {name}"), "disable", &format!("Yes, disable {name}: their sessions end at once")))
            }
        }
    };
    Ok(cx.page(status_of(&error), &format!("User {name}"), body))
}

/// A destructive action's form: it runs only with its box ticked (the browser asks for the
/// tick; the server refuses a form without it).
fn confirmed(csrf: &str, href: &str, label: &str, id: &str, confirm: &str) -> Markup {
    html! {
        form class="confirm" method="post" action=(href) {
            input type="hidden" name="csrf" value=(csrf);
            div class="check" {
                input id=(format!("confirm-{id}")) type="checkbox" name="confirm" value="yes" required;
                label for=(format!("confirm-{id}")) { (confirm) }
            }
            button class="danger" type="submit" { (label) }
        }
    }
}

/// Whether a destructive form came with its confirming tick.
fn unconfirmed(posted: &Posted) -> Shown {
    (posted.fields.get("confirm") != Some("yes")).then(|| {
        (
            StatusCode::BAD_REQUEST,
            "Tick the box to confirm, then try again".to_owned(),
        )
    })
}

/// After a form on a user's page: back to it with `notice`, or the page with the error.
async fn on_user_page(cx: &Cx, name: &str, answer: Result<Value, Refusal>, notice: &str) -> Page {
    let page = format!("/console/admin/users/{}/", urlpath(name));
    after(answer, &page, notice, |e| user_page(cx, name, None, e)).await
}

async fn disable_user(posted: Posted, name: web::Path<String>) -> Page {
    let cx = &posted.cx;
    if let Some(e) = unconfirmed(&posted) {
        return user_page(cx, &name, None, Some(e)).await;
    }
    let answer = cx
        .ask(api::disable_user, web::Path::from(name.clone()))
        .await;
    on_user_page(cx, &name, answer, "user-disabled").await
}

async fn enable_user(posted: Posted, name: web::Path<String>) -> Page {
    let cx = &posted.cx;
    let answer = cx
        .ask(api::enable_user, web::Path::from(name.clone()))
        .await;
    on_user_page(cx, &name, answer, "user-enabled").await
}

async fn set_role(posted: Posted, name: web::Path<String>) -> Page {
    let cx = &posted.cx;
    let fields = json!({ "role": posted.fields.get("role").unwrap_or("") });
    let answer = cx.send_at(api::set_user_role, &name, fields).await;
    on_user_page(cx, &name, answer, "role-set").await
}

async fn set_password(posted: Posted, name: web::Path<String>) -> Page {
    let cx = &posted.cx;
    let fields = json!({ "password": posted.fields.get("password").unwrap_or("") });
    let answer = cx.send_at(api::set_user_password, &name, fields).await;
    on_user_page(cx, &name, answer, "password-set").await
}

async fn revoke_sessions(posted: Posted, name: web::Path<String>) -> Page {
    let cx = &posted.cx;
    if let Some(e) = unconfirmed(&posted) {
        return user_page(cx, &name, None, Some(e)).await;
    }
    let answer = cx
        .ask(api::revoke_user_sessions, web::Path::from(name.clone()))
        .await;
    on_user_page(cx, &name, answer, "sessions-revoked").await
}

async fn unlock_user(posted: Posted, name: web::Path<String>) -> Page {
    let cx = &posted.cx;
    let answer = cx
        .ask(api::unlock_user, web::Path::from(name.clone()))
        .await;
    let notice = match &answer {
        Ok(v) if v["was_locked_out"] == false => "not-locked",
        _ => "unlocked",
    };
    on_user_page(cx, &name, answer, notice).await
}

// ---- services

async fn services(cx: Cx, q: web::Query<Notice>) -> Page {
    services_page(&cx, notice_text(q.notice.as_deref()), None).await
}

async fn services_page(cx: &Cx, notice: Option<&str>, error: Shown) -> Page {
    let rows = cx.ask0(api::list_services).await?;
    let body = html! {
        (banner(notice, message_of(&error)))
        div class="scroll" { table {
            thead { tr {
                th scope="col" { "Service" } th scope="col" { "Certificate identity" }
                th scope="col" { "Allowed from" } th scope="col" { "Status" }
                th scope="col" { "Created" } th scope="col" { span class="sr-only" { "Actions" } }
            } }
            tbody {
                @for s in rows.as_array().into_iter().flatten() {
                    @let name = text(&s["name"]);
                    @let enabled = s["is_enabled"].as_bool().unwrap_or(false);
                    tr {
                        td data-label="Service" { (name) } td data-label="Certificate identity" { code { (text(&s["identity"])) } }
                        td data-label="Allowed from" { @match s["allowed_cidrs"].as_array() {
                            Some(c) if !c.is_empty() => (c.iter().map(text).collect::<Vec<_>>().join(", ")),
                            _ => "anywhere",
                        } }
                        td data-label="Status" { @if enabled { "enabled" } @else { "disabled" } }
                        td data-label="Created" class="when" { (when(&s["created_at"])) }
                        td { @if enabled {
                            (views::action(&cx.csrf, &format!("/console/admin/services/{}/disable/", urlpath(&name)), &format!("Disable {name}"), &[]))
                        } }
                    }
                }
            }
        } }
        section aria-labelledby="new-service" {
            h2 id="new-service" { "Register a service" }
            form class="card" method="post" action="/console/admin/services/" {
                input type="hidden" name="csrf" value=(cx.csrf);
                label for="name" { "Name" }
                input id="name" name="name" type="text" autocomplete="off" required;
                label for="identity" { "Certificate identity (a SAN URI or DNS name, or sha256:FINGERPRINT)" }
                input id="identity" name="identity" type="text" autocomplete="off" required;
                button type="submit" { "Register the service" }
            }
        }
    };
    Ok(cx.page(status_of(&error), "Services", body))
}

async fn create_service(posted: Posted) -> Page {
    let f = &posted.fields;
    let fields = json!({
        "name": f.get("name").unwrap_or(""),
        "identity": f.get("identity").unwrap_or(""),
    });
    let cx = &posted.cx;
    let answer = cx.send(api::create_service, fields).await;
    after(answer, "/console/admin/services/", "service-created", |e| {
        services_page(cx, None, e)
    })
    .await
}

async fn disable_service(posted: Posted, name: web::Path<String>) -> Page {
    let cx = &posted.cx;
    let answer = cx.ask(api::disable_service, name).await;
    after(
        answer,
        "/console/admin/services/",
        "service-disabled",
        |e| services_page(cx, None, e),
    )
    .await
}

// ---- grants

const OPERATIONS: &[&str] = &[
    "reveal",
    "stk-password",
    "security-credential",
    "webhook-verify",
    "access-token",
];

/// The notice after a grant whose operations give a secret away (the API's `warnings`).
const GRANT_DISCLOSES: &str = "The grant was made. Warning: stk-password discloses the M-Pesa \
     passkey: the password is base64(shortcode + passkey + timestamp), so the service can \
     decode the passkey from any password it is given.";

async fn grants(cx: Cx, q: web::Query<Notice>) -> Page {
    grants_page(&cx, notice_text(q.notice.as_deref()), None).await
}

async fn grants_page(cx: &Cx, notice: Option<&str>, error: Shown) -> Page {
    let rows = cx.ask0(api::list_grants).await?;
    let body = html! {
        (banner(notice, message_of(&error)))
        div class="scroll" { table {
            thead { tr {
                th scope="col" { "#" } th scope="col" { "Service" } th scope="col" { "Owner" }
                th scope="col" { "Provider" } th scope="col" { "Environment" }
                th scope="col" { "Operations" } th scope="col" { "Created" }
                th scope="col" { "Status" }
            } }
            tbody {
                @for g in rows.as_array().into_iter().flatten() {
                    @let id = text(&g["id"]);
                    tr {
                        td data-label="#" { (id) } td data-label="Service" { (text(&g["service"])) } td data-label="Owner" { (text(&g["owner"])) }
                        td data-label="Provider" { @if g["provider"].is_null() { "every provider" } @else { (text(&g["provider"])) } }
                        td data-label="Environment" { @if g["environment"].is_null() { "both, live included" } @else { (text(&g["environment"])) } }
                        td data-label="Operations" { (g["operations"].as_array().map(|o| o.iter().map(text).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                        td data-label="Created" class="when" { (when(&g["created_at"])) }
                        td data-label="Status" { @if g["revoked_at"].is_null() {
                            (views::action(&cx.csrf, &format!("/console/admin/grants/{id}/revoke/"), &format!("Revoke grant {id}"), &[]))
                        } @else { "revoked " (when(&g["revoked_at"])) } }
                    }
                }
            }
        } }
        section aria-labelledby="new-grant" {
            h2 id="new-grant" { "Grant a service an owner's credentials" }
            form class="card" method="post" action="/console/admin/grants/" {
                input type="hidden" name="csrf" value=(cx.csrf);
                label for="service" { "Service name" }
                input id="service" name="service" type="text" autocomplete="off" required;
                label for="owner" { "Owner's username" }
                input id="owner" name="owner" type="text" autocomplete="off" required;
                label for="provider" { "Provider" }
                select id="provider" name="provider" {
                    option value="" { "every provider" }
                    (views::options(PROVIDERS, ""))
                }
                label for="environment" { "Environment" }
                select id="environment" name="environment" {
                    (views::options(ENVIRONMENTS, "sandbox"))
                    option value="" { "both, live included" }
                }
                fieldset {
                    legend { "Operations" }
                    p class="muted" { "Use, don't reveal: tick " code { "reveal" } " only for a service that must hold the secret itself." }
                    @for op in OPERATIONS {
                        @let id = format!("op-{op}");
                        @let warning = Operation::parse(op).and_then(Operation::disclosure);
                        @let described = warning.map(|_| format!("{id}-warning"));
                        div class="check" {
                            input id=(id) type="checkbox" name="operation" value=(op) aria-describedby=[described.as_deref()];
                            label for=(id) { (op) }
                        }
                        @if let (Some(warning), Some(described)) = (warning, &described) {
                            p class="muted" id=(described) { "Warning: " (warning) "." }
                        }
                    }
                }
                button type="submit" { "Make the grant" }
            }
        }
    };
    Ok(cx.page(status_of(&error), "Grants", body))
}

async fn create_grant(posted: Posted) -> Page {
    let f = &posted.fields;
    let mut fields = json!({
        "service": f.get("service").unwrap_or(""),
        "owner": f.get("owner").unwrap_or(""),
        "operations": f.all("operation"),
    });
    if let Some(p) = f.filled("provider") {
        fields["provider"] = json!(p);
    }
    if let Some(e) = f.filled("environment") {
        fields["environment"] = json!(e);
    }
    let cx = &posted.cx;
    let answer = cx.send(api::create_grant, fields).await;
    let notice = match &answer {
        Ok(grant) if grant["warnings"].as_array().is_some_and(|w| !w.is_empty()) => {
            "grant-created-disclosing"
        }
        _ => "grant-created",
    };
    after(answer, "/console/admin/grants/", notice, |e| {
        grants_page(cx, None, e)
    })
    .await
}

async fn revoke_grant(posted: Posted, id: web::Path<String>) -> Page {
    let cx = &posted.cx;
    let answer = cx.ask(api::revoke_grant, id).await;
    after(answer, "/console/admin/grants/", "grant-revoked", |e| {
        grants_page(cx, None, e)
    })
    .await
}

// ---- certificates

async fn certificates(cx: Cx) -> Page {
    let installed = cx.ask0(api::list_provider_certificates).await?;
    let revoked = cx.ask0(api::list_revoked_certificates).await?;
    let body = html! {
        section aria-labelledby="provider-certs" {
            h2 id="provider-certs" { "Provider certificates" }
            p class="muted" { "The providers' public certificates that security credentials are encrypted to. Install one with "
                code { "hazina certs set" } " or the admin API." }
            @let rows = installed.as_array().cloned().unwrap_or_default();
            @if rows.is_empty() { p { "None installed." } } @else {
                div class="scroll" { table {
                    thead { tr {
                        th scope="col" { "Provider" } th scope="col" { "Environment" }
                        th scope="col" { "Subject" } th scope="col" { "Valid until" }
                        th scope="col" { "SHA-256" } th scope="col" { "Installed by" }
                        th scope="col" { "Intact" }
                    } }
                    tbody { @for c in &rows { tr {
                        td data-label="Provider" { (text(&c["provider"])) } td data-label="Environment" { (text(&c["environment"])) }
                        td data-label="Subject" { (text(&c["subject"])) } td data-label="Valid until" class="when" { (when(&c["not_after"])) }
                        td data-label="SHA-256" { code class="hash" { (text(&c["sha256"])) } }
                        td data-label="Installed by" { (text(&c["updated_by"])) " " (when(&c["updated_at"])) }
                        td data-label="Intact" { (yes_no(&c["intact"])) }
                    } } }
                } }
            }
        }
        section aria-labelledby="revoked" {
            h2 id="revoked" { "Revoked client certificates" }
            @let rows = revoked.as_array().cloned().unwrap_or_default();
            @if rows.is_empty() { p { "None revoked." } } @else {
                div class="scroll" { table {
                    thead { tr { th scope="col" { "Fingerprint" } th scope="col" { "Revoked" } } }
                    tbody { @for c in &rows { tr {
                        td data-label="Fingerprint" { code class="hash" { (text(&c["fingerprint"])) } } td data-label="Revoked" class="when" { (when(&c["revoked_at"])) }
                    } } }
                } }
            }
        }
    };
    Ok(cx.page(StatusCode::OK, "Certificates", body))
}

// ---- master keys

async fn master_keys(cx: Cx, q: web::Query<Notice>) -> Page {
    keys_page(&cx, notice_text(q.notice.as_deref()), None).await
}

fn progress(rotation: &Value) -> Markup {
    let done = rotation["rows_rewrapped"].as_i64().unwrap_or(0);
    let left = rotation["remaining"].as_i64().unwrap_or(0);
    let total = (done + left).max(1);
    html! {
        p {
            "Rotation " (text(&rotation["id"])) " to version " (text(&rotation["target_version"]))
            ", started " (when(&rotation["started_at"])) ": "
            @if rotation["finished_at"].is_null() {
                (done) " keys re-wrapped, " (left) " to go."
            } @else {
                "finished " (when(&rotation["finished_at"])) " (" (done) " keys re-wrapped)."
            }
        }
        label for="rotation-progress" { "Progress" }
        progress id="rotation-progress" max=(total) value=(done) { (done * 100 / total) "%" }
    }
}

async fn keys_page(cx: &Cx, notice: Option<&str>, error: Shown) -> Page {
    let status = cx.ask0(keys::show).await?;
    let body = html! {
        (banner(notice, message_of(&error)))
        p { "New data keys are wrapped under version " strong { (text(&status["active_version"])) } "." }
        div class="scroll" { table {
            thead { tr {
                th scope="col" { "Version" } th scope="col" { "State" } th scope="col" { "In the keyring" }
                th scope="col" { "Keys it protects" } th scope="col" { "Encryptions" }
                th scope="col" { "Rotation due" }
            } }
            tbody { @for v in status["versions"].as_array().into_iter().flatten() { tr {
                td data-label="Version" { (text(&v["version"])) } td data-label="State" { (text(&v["state"])) }
                td data-label="In the keyring" { (yes_no(&v["in_keyring"])) } td data-label="Keys it protects" { (text(&v["stored_keys"])) }
                td data-label="Encryptions" { (text(&v["encryptions"])) } td data-label="Rotation due" { (yes_no(&v["rotation_due"])) }
            } } }
        } }
        section aria-labelledby="rotation" {
            h2 id="rotation" { "Rotation" }
            @if status["rotation"].is_null() {
                p { "No rotation has run yet." }
            } @else {
                (progress(&status["rotation"]))
            }
            p class="muted" { "A rotation adds a master-key version and re-wraps every stored key under it, in the background; a second start joins the running one." }
            (views::action(&cx.csrf, "/console/admin/keys/rotate/", "Start a master-key rotation", &[]))
        }
    };
    Ok(cx.page(status_of(&error), "Master keys", body))
}

async fn rotate_keys(posted: Posted) -> Page {
    let cx = &posted.cx;
    let answer = cx.ask0(keys::rotate).await;
    after(answer, "/console/admin/keys/", "rotation-started", |e| {
        keys_page(cx, None, e)
    })
    .await
}
