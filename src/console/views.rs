//! The console's page frame and the pieces its pages share. maud escapes every value it
//! interpolates; nothing here writes unescaped text but the fixed doctype.

use actix_web::http::StatusCode;
use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

use crate::domain::Role;

/// Who is looking, for the frame's navigation and its sign-out form.
pub struct Frame<'a> {
    pub username: &'a str,
    pub role: Role,
    pub csrf: &'a str,
}

fn navigation(role: Role) -> &'static [(&'static str, &'static str)] {
    match role {
        Role::User => &[("Credentials", "/console/credentials/")],
        Role::Admin => &[
            ("Users", "/console/admin/"),
            ("Services", "/console/admin/services/"),
            ("Grants", "/console/admin/grants/"),
            ("Certificates", "/console/admin/certificates/"),
            ("Master keys", "/console/admin/keys/"),
            ("My credentials", "/console/credentials/"),
        ],
        Role::Auditor => &[
            ("Audit log", "/console/audit/"),
            ("Verify", "/console/audit/verify/"),
        ],
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::User => "user",
        Role::Admin => "admin",
        Role::Auditor => "auditor",
    }
}

/// A whole page: the frame (navigation and sign-out for a signed-in user) around `body`.
pub fn layout(title: &str, frame: Option<&Frame<'_>>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · hazina" }
                link rel="icon" href="/console/static/favicon.svg" type="image/svg+xml";
                link rel="stylesheet" href="/console/static/console.css";
            }
            body {
                a class="skip" href="#main" { "Skip to the content" }
                header class="top" {
                    a class="brand" href="/console/" { "hazina" }
                    @if let Some(frame) = frame {
                        nav aria-label="Main" {
                            ul {
                                @for (label, href) in navigation(frame.role) {
                                    li { a href=(href) { (label) } }
                                }
                            }
                        }
                        form class="signout" method="post" action="/console/logout/" {
                            input type="hidden" name="csrf" value=(frame.csrf);
                            span class="who" {
                                (frame.username) " "
                                span class="role" { "(" (role_name(frame.role)) ")" }
                            }
                            " "
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// An error page: what happened, in the API's own words, and a way back.
pub fn problem(status: StatusCode, message: &str) -> Markup {
    let title = match status.as_u16() {
        403 => "Not allowed",
        404 => "Not found",
        409 => "Conflict",
        412 => "Changed meanwhile",
        429 => "Too many requests",
        s if s >= 500 => "Something went wrong",
        _ => "Request refused",
    };
    layout(
        title,
        None,
        html! {
            p class="error" role="alert" { (message) }
            p { a href="/console/" { "Back to the console" } }
        },
    )
}

pub fn sign_in(csrf: &str, error: Option<&str>, username: &str) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            @if let Some(error) = error {
                p class="error" role="alert" { (error) }
            }
            form class="card narrow" method="post" action="/console/login/" {
                input type="hidden" name="csrf" value=(csrf);
                label for="username" { "Username" }
                input id="username" name="username" type="text" autocomplete="username"
                    required value=(username) autofocus;
                label for="password" { "Password" }
                input id="password" name="password" type="password"
                    autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// A notice after a form (Post/Redirect/Get), or a form's error.
pub fn banner(notice: Option<&str>, error: Option<&str>) -> Markup {
    html! {
        @if let Some(error) = error {
            p class="error" role="alert" { (error) }
        }
        @if let Some(notice) = notice {
            p class="notice" role="status" { (notice) }
        }
    }
}

/// A JSON value as text (strings unquoted, null as a dash).
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "—".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A timestamp as the API gives it (RFC 3339), shorter: `2026-12-02 08:15:04Z`.
pub fn when(v: &Value) -> String {
    match v.as_str() {
        Some(t) => {
            let t = t.replacen('T', " ", 1);
            match t.split_once('.') {
                Some((head, _)) => format!("{head}Z"),
                None => t,
            }
        }
        None => text(v),
    }
}

pub fn yes_no(v: &Value) -> &'static str {
    if v.as_bool().unwrap_or(false) {
        "yes"
    } else {
        "no"
    }
}

/// A button that posts one action (with the session's CSRF token).
pub fn action(csrf: &str, href: &str, label: &str, extra: &[(&str, &str)]) -> Markup {
    html! {
        form class="inline" method="post" action=(href) {
            input type="hidden" name="csrf" value=(csrf);
            @for (name, value) in extra {
                input type="hidden" name=(name) value=(value);
            }
            button type="submit" { (label) }
        }
    }
}

/// `<select>` options, the given value selected.
pub fn options(choices: &[(&str, &str)], selected: &str) -> Markup {
    html! {
        @for (value, label) in choices {
            option value=(value) selected[*value == selected] { (label) }
        }
    }
}

pub const PROVIDERS: &[(&str, &str)] = &[
    ("kopokopo", "KopoKopo"),
    ("instasend", "InstaSend"),
    ("jpay", "JPay Africa"),
    ("mpesa", "M-Pesa Daraja"),
    ("pagamio", "Pagamio"),
];

pub const ENVIRONMENTS: &[(&str, &str)] = &[("sandbox", "Sandbox"), ("live", "Live")];

/// A wait of `seconds`, in words: "12 seconds", "about a minute", "4 minutes", "1 hour".
pub fn wait_words(seconds: u64) -> String {
    match seconds {
        0..=1 => "a second".into(),
        2..=59 => format!("{seconds} seconds"),
        60..=89 => "about a minute".into(),
        90..=3599 => format!("{} minutes", seconds.div_ceil(60)),
        _ => {
            let hours = seconds.div_ceil(3600);
            format!("{hours} hour{}", if hours == 1 { "" } else { "s" })
        }
    }
}

#[cfg(test)]
mod wait_tests {
    use super::wait_words;

    #[test]
    fn waits_read_as_a_person_would_say_them() {
        assert_eq!(wait_words(1), "a second");
        assert_eq!(wait_words(45), "45 seconds");
        assert_eq!(wait_words(60), "about a minute");
        assert_eq!(wait_words(120), "2 minutes");
        assert_eq!(wait_words(121), "3 minutes");
        assert_eq!(wait_words(3600), "1 hour");
        assert_eq!(wait_words(7200), "2 hours");
    }
}
