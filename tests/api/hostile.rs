//! Hostile input: every kind of bad request gets a clear JSON 4xx, never a 5xx or a panic,
//! and never an echo of what was sent.

use reqwest::{Method, Response, StatusCode, Url};
use serde_json::{json, Value};

use crate::helpers::*;

const MALFORMED: &str = "Malformed JSON body";
const WRONG_TYPE: &str = "Invalid request body: a field has the wrong type or value";
const WRONG_CONTENT_TYPE: &str = "Content-Type must be application/json";
const TOO_SHORT: &str = "Private key must be at least 10 characters long";
const TOO_LONG: &str = "Private key must be at most 8192 characters long";
const BAD_PROVIDER: &str =
    "Invalid provider. Choose one of: kopokopo, instasend, jpay, mpesa, pagamio";
const BAD_ENVIRONMENT: &str = "Invalid environment. Choose one of: sandbox, live";
const BAD_LOGIN: &str = "Invalid username or password";
const UNAUTHENTICATED: &str = "Authentication credentials were not provided or are invalid";

const SQL_INJECTIONS: [&str; 3] = ["' OR 1=1 --", "1; DROP TABLE credentials", "kopokopo' --"];

/// An endpoint that takes a JSON body, with a body it would accept and the string fields
/// of that body (`true` when the field is required, so `null` is a wrong type too).
struct BodyEndpoint {
    method: Method,
    path: String,
    valid_body: Value,
    string_fields: &'static [(&'static str, bool)],
}

/// Every endpoint that takes a body, aimed at `id` (a credential of `user`).
fn body_endpoints(user: &TestUser, id: i64) -> Vec<BodyEndpoint> {
    let key_body = json!({ "private_key": "another-private-key-0001" });
    let key_field: &'static [(&'static str, bool)] = &[("private_key", true)];
    vec![
        BodyEndpoint {
            method: Method::POST,
            path: "/payments/credentials/".into(),
            valid_body: json!({
                "provider": "mpesa",
                "api_key": "api-mpesa-sandbox",
                "private_key": "mpesa-private-key-0001",
                "environment": "sandbox",
            }),
            string_fields: &[
                ("provider", true),
                ("api_key", true),
                ("private_key", true),
                ("environment", false),
            ],
        },
        BodyEndpoint {
            method: Method::PUT,
            path: format!("/payments/credentials/{id}/"),
            valid_body: json!({ "api_key": "api-updated", "environment": "live" }),
            string_fields: &[("api_key", false), ("environment", false)],
        },
        BodyEndpoint {
            method: Method::POST,
            path: format!("/payments/credentials/{id}/update-private-key/"),
            valid_body: key_body.clone(),
            string_fields: key_field,
        },
        BodyEndpoint {
            method: Method::POST,
            path: format!("/payments/credentials/{id}/rotate/"),
            valid_body: key_body.clone(),
            string_fields: key_field,
        },
        BodyEndpoint {
            method: Method::POST,
            path: format!("/payments/credentials/{id}/verify/"),
            valid_body: key_body,
            string_fields: key_field,
        },
        BodyEndpoint {
            method: Method::POST,
            path: "/users/login/".into(),
            valid_body: json!({ "username": user.username, "password": user.password }),
            string_fields: &[("username", true), ("password", true)],
        },
        BodyEndpoint {
            method: Method::POST,
            path: "/users/token/refresh/".into(),
            valid_body: json!({ "refresh_token": user.refresh }),
            string_fields: &[("refresh_token", true)],
        },
    ]
}

/// Every endpoint whose path carries a credential id, with a body it would accept.
fn id_endpoints(id: &str) -> Vec<(Method, String, Option<Value>)> {
    let key_body = || Some(json!({ "private_key": "another-private-key-0001" }));
    vec![
        (Method::GET, format!("/payments/credentials/{id}/"), None),
        (
            Method::PUT,
            format!("/payments/credentials/{id}/"),
            Some(json!({ "api_key": "api-updated" })),
        ),
        (Method::DELETE, format!("/payments/credentials/{id}/"), None),
        (
            Method::POST,
            format!("/payments/credentials/{id}/update-private-key/"),
            key_body(),
        ),
        (
            Method::POST,
            format!("/payments/credentials/{id}/rotate/"),
            key_body(),
        ),
        (
            Method::GET,
            format!("/payments/credentials/{id}/get-private-key/"),
            None,
        ),
        (
            Method::POST,
            format!("/payments/credentials/{id}/verify/"),
            key_body(),
        ),
        (
            Method::POST,
            format!("/payments/credentials/{id}/toggle-status/"),
            None,
        ),
    ]
}

/// A merchant holding one kopokopo sandbox credential; its id.
async fn owner_with_credential(app: &TestApp) -> (TestUser, i64) {
    let user = app.user().await;
    let created = app
        .create_credential(&user, "kopokopo", "sandbox", "kk-private-key-0001")
        .await;
    (user, created["id"].as_i64().unwrap())
}

/// Sends `body` as-is, labelled as JSON, with the caller's bearer token.
async fn send_raw(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: impl Into<reqwest::Body>,
) -> Response {
    app.client
        .request(method, app.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn send_json(
    app: &TestApp,
    method: Method,
    url: impl reqwest::IntoUrl,
    token: &str,
    body: Option<&Value>,
) -> Response {
    let req = app.client.request(method, url).bearer_auth(token);
    let req = match body {
        Some(b) => req.json(b),
        None => req,
    };
    req.send().await.unwrap()
}

/// Asserts a JSON 4xx carrying exactly `message`, labelled with what was sent.
async fn assert_refused(res: Response, status: StatusCode, message: &str, what: &str) {
    assert_eq!(res.status(), status, "{what}");
    let body = assert_json_4xx(res).await;
    assert_eq!(body, json!({ "error": message }), "{what}");
}

/// `base` with `segments` appended as percent-encoded path segments, and a trailing `/`.
fn url_with_segments(app: &TestApp, base: &str, segments: &[&str]) -> Url {
    let mut url = Url::parse(&app.url(base)).unwrap();
    url.path_segments_mut()
        .unwrap()
        .pop_if_empty()
        .extend(segments)
        .push("");
    url
}

/// The row count of each table, in order: users, sessions, credentials, versions (each
/// table answering proves it still exists).
fn table_counts(app: &TestApp) -> Vec<String> {
    ["users", "sessions", "credentials", "credential_versions"]
        .iter()
        .map(|table| {
            let lines = app.sql_lines(&format!(
                "SELECT CAST(COUNT(*) AS TEXT) AS line FROM {table}"
            ));
            assert_eq!(lines.len(), 1, "{table} answers a count");
            lines[0].clone()
        })
        .collect()
}

fn credential_rows(app: &TestApp) -> usize {
    app.sql_lines("SELECT CAST(COUNT(*) AS TEXT) AS line FROM credentials")[0]
        .parse()
        .unwrap()
}

/// A key of exactly `chars` characters mixing ASCII, JSON escapes and multi-byte characters.
fn varied_key(chars: usize) -> String {
    const ALPHABET: [char; 16] = [
        'a', 'Z', '0', '~', ' ', '"', '\\', '/', '\n', '\t', 'é', '€', '🔑', '中', '\u{7f}', '\'',
    ];
    (0..chars).map(|i| ALPHABET[i % ALPHABET.len()]).collect()
}

async fn reveal(app: &TestApp, user: &TestUser, id: i64) -> Value {
    let res = app
        .get(
            &format!("/payments/credentials/{id}/get-private-key/"),
            &user.access,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK, "reveal");
    res.json().await.unwrap()
}

// ---------------------------------------------------------------------------------------
// Malformed and mistyped bodies

#[tokio::test]
async fn malformed_json_on_every_body_endpoint_answers_400_malformed_json_body() {
    let app = spawn_app().await;
    let (user, id) = owner_with_credential(&app).await;

    for endpoint in body_endpoints(&user, id) {
        let valid = endpoint.valid_body.to_string();
        let cases = [
            ("truncated", valid[..valid.len() - 3].to_string()),
            ("trailing garbage", format!("{valid} trailing-garbage")),
            ("two objects", format!("{valid}{valid}")),
            ("empty body", String::new()),
            ("single quotes", valid.replace('"', "'")),
            ("a lone brace", "{".into()),
        ];
        for (case, raw) in cases {
            let what = format!("{} {} with {case}", endpoint.method, endpoint.path);
            let res = send_raw(
                &app,
                endpoint.method.clone(),
                &endpoint.path,
                &user.access,
                raw,
            )
            .await;
            assert_refused(res, StatusCode::BAD_REQUEST, MALFORMED, &what).await;
        }
    }
}

#[tokio::test]
async fn a_json_body_that_is_not_an_object_answers_400() {
    let app = spawn_app().await;
    let (user, id) = owner_with_credential(&app).await;

    for endpoint in body_endpoints(&user, id) {
        for raw in ["[1, 2]", "\"a string\"", "12345", "null", "true"] {
            let what = format!("{} {} with {raw}", endpoint.method, endpoint.path);
            let res = send_raw(
                &app,
                endpoint.method.clone(),
                &endpoint.path,
                &user.access,
                raw,
            )
            .await;
            assert_refused(res, StatusCode::BAD_REQUEST, WRONG_TYPE, &what).await;
        }
    }
}

#[tokio::test]
async fn a_json_array_holding_the_fields_in_order_is_not_accepted_as_a_body() {
    let app = spawn_app().await;
    let (user, id) = owner_with_credential(&app).await;

    let create = app
        .client
        .post(app.url("/payments/credentials/"))
        .bearer_auth(&user.access)
        .json(&json!([
            "jpay",
            "api-jpay",
            "jpay-private-key-0001",
            "sandbox"
        ]))
        .send()
        .await
        .unwrap();
    assert_refused(
        create,
        StatusCode::BAD_REQUEST,
        WRONG_TYPE,
        "create from an array",
    )
    .await;
    let verify = app
        .client
        .post(app.url(&format!("/payments/credentials/{id}/verify/")))
        .bearer_auth(&user.access)
        .json(&json!(["kk-private-key-0001"]))
        .send()
        .await
        .unwrap();
    assert_refused(
        verify,
        StatusCode::BAD_REQUEST,
        WRONG_TYPE,
        "verify from an array",
    )
    .await;
    assert_eq!(credential_rows(&app), 1, "no credential was created");
}

#[tokio::test]
async fn a_wrongly_typed_field_answers_400_without_echoing_the_value() {
    let app = spawn_app().await;
    let (user, id) = owner_with_credential(&app).await;
    let wrong_values = [
        json!(987_654_321_987_u64),
        json!(-12.5e300),
        json!(["hostile-array-canary"]),
        json!({ "nested": "hostile-object-canary" }),
        json!(true),
    ];

    for endpoint in body_endpoints(&user, id) {
        for (field, required) in endpoint.string_fields {
            let mut values: Vec<Value> = wrong_values.to_vec();
            if *required {
                values.push(Value::Null);
            }
            for value in values {
                let mut body = endpoint.valid_body.clone();
                body[*field] = value.clone();
                let what = format!(
                    "{} {} with {field} = {value}",
                    endpoint.method, endpoint.path
                );
                let res = send_json(
                    &app,
                    endpoint.method.clone(),
                    app.url(&endpoint.path),
                    &user.access,
                    Some(&body),
                )
                .await;
                assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{what}");
                let text = res.text().await.unwrap();
                assert_eq!(text, json!({ "error": WRONG_TYPE }).to_string(), "{what}");
                for echo in [
                    "987654321987",
                    "hostile-array-canary",
                    "hostile-object-canary",
                ] {
                    assert!(!text.contains(echo), "{what} echoed the value: {text}");
                }
            }
        }
    }
}

#[tokio::test]
async fn a_missing_required_field_is_named_in_the_400() {
    let app = spawn_app().await;
    let (user, id) = owner_with_credential(&app).await;

    for endpoint in body_endpoints(&user, id) {
        for (field, _) in endpoint
            .string_fields
            .iter()
            .filter(|(_, required)| *required)
        {
            let mut body = endpoint.valid_body.clone();
            body.as_object_mut().unwrap().remove(*field);
            let what = format!("{} {} without {field}", endpoint.method, endpoint.path);
            let res = send_json(
                &app,
                endpoint.method.clone(),
                app.url(&endpoint.path),
                &user.access,
                Some(&body),
            )
            .await;
            let message = format!("Missing required field: {field}");
            assert_refused(res, StatusCode::BAD_REQUEST, &message, &what).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Unknown fields

#[tokio::test]
async fn an_unknown_field_on_create_is_named_in_the_400_and_creates_nothing() {
    let app = spawn_app().await;
    let user = app.user().await;
    let other = app.user().await;
    let smuggled = [
        ("owner_id", json!(other.id)),
        ("version", json!(7)),
        ("wrapped_dek", json!("AAAAAAAAAAAAAAAAAAAAAAAA")),
        ("id", json!(12345)),
    ];

    for (field, value) in smuggled {
        let mut body = json!({
            "provider": "kopokopo",
            "api_key": "api-kopokopo-sandbox",
            "private_key": "kk-private-key-0001",
            "environment": "sandbox",
        });
        body[field] = value;
        let res = app
            .post("/payments/credentials/", &user.access, &body)
            .await;
        let message = format!("Unknown field: {field}");
        assert_refused(res, StatusCode::BAD_REQUEST, &message, field).await;
    }

    assert_eq!(credential_rows(&app), 0, "no credential row was created");
    let versions = app.sql_lines("SELECT CAST(COUNT(*) AS TEXT) AS line FROM credential_versions");
    assert_eq!(versions, ["0"], "no version row was created");
}

#[tokio::test]
async fn an_unknown_field_on_any_other_body_endpoint_is_named_and_changes_nothing() {
    let app = spawn_app().await;
    let (user, id) = owner_with_credential(&app).await;
    let other = app.user().await;

    for endpoint in body_endpoints(&user, id) {
        for (field, value) in [
            ("owner_id", json!(other.id)),
            ("version", json!(9)),
            ("role", json!("admin")),
        ] {
            let mut body = endpoint.valid_body.clone();
            body[field] = value;
            let what = format!("{} {} with {field}", endpoint.method, endpoint.path);
            let res = send_json(
                &app,
                endpoint.method.clone(),
                app.url(&endpoint.path),
                &user.access,
                Some(&body),
            )
            .await;
            let message = format!("Unknown field: {field}");
            assert_refused(res, StatusCode::BAD_REQUEST, &message, &what).await;
        }
    }
    let put_key = app
        .put(
            &format!("/payments/credentials/{id}/"),
            &user.access,
            &json!({ "private_key": "smuggled-private-key" }),
        )
        .await;
    assert_refused(
        put_key,
        StatusCode::BAD_REQUEST,
        "Unknown field: private_key",
        "PUT cannot set the private key",
    )
    .await;

    let res = app
        .get(&format!("/payments/credentials/{id}/"), &user.access)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let credential: Value = res.json().await.unwrap();
    assert_eq!(credential["version"], 1);
    assert_eq!(credential["api_key"], "api-kopokopo-sandbox");
    assert_eq!(credential["environment"], "sandbox");
    assert_eq!(
        reveal(&app, &user, id).await["private_key"],
        "kk-private-key-0001"
    );
    assert_eq!(credential_rows(&app), 1);
}

// ---------------------------------------------------------------------------------------
// Key lengths and body size

#[tokio::test]
async fn a_nine_character_private_key_is_refused_with_the_exact_message() {
    let app = spawn_app().await;
    let (user, id) = owner_with_credential(&app).await;

    for key in ["123456789", "ключ-ключ", "🔑🔑🔑🔑🔑🔑🔑🔑🔑"] {
        assert_eq!(key.chars().count(), 9);
        let create = app
            .post(
                "/payments/credentials/",
                &user.access,
                &json!({ "provider": "jpay", "api_key": "api-jpay", "private_key": key }),
            )
            .await;
        assert_refused(create, StatusCode::BAD_REQUEST, TOO_SHORT, key).await;
        let rotate = app
            .post(
                &format!("/payments/credentials/{id}/rotate/"),
                &user.access,
                &json!({ "private_key": key }),
            )
            .await;
        assert_refused(rotate, StatusCode::BAD_REQUEST, TOO_SHORT, key).await;
    }
    assert_eq!(credential_rows(&app), 1);
}

#[tokio::test]
async fn an_8193_character_private_key_is_refused_with_the_exact_message() {
    let app = spawn_app().await;
    let (user, id) = owner_with_credential(&app).await;

    for key in ["k".repeat(8193), varied_key(8193)] {
        let create = app
            .post(
                "/payments/credentials/",
                &user.access,
                &json!({ "provider": "jpay", "api_key": "api-jpay", "private_key": key }),
            )
            .await;
        assert_refused(create, StatusCode::BAD_REQUEST, TOO_LONG, "create").await;
        let rotate = app
            .post(
                &format!("/payments/credentials/{id}/update-private-key/"),
                &user.access,
                &json!({ "private_key": key }),
            )
            .await;
        assert_refused(rotate, StatusCode::BAD_REQUEST, TOO_LONG, "rotate").await;
    }
    assert_eq!(credential_rows(&app), 1);
}

#[tokio::test]
async fn an_8192_character_private_key_is_accepted_and_revealed_byte_exact() {
    let app = spawn_app().await;
    let user = app.user().await;
    let key = varied_key(8192);
    let rotated: String = varied_key(8193).chars().skip(1).collect();
    assert_eq!(rotated.chars().count(), 8192);

    let created = app.create_credential(&user, "pagamio", "live", &key).await;
    let id = created["id"].as_i64().unwrap();
    let revealed = reveal(&app, &user, id).await;
    assert_eq!(
        revealed["private_key"].as_str().unwrap().as_bytes(),
        key.as_bytes()
    );

    let res = app
        .post(
            &format!("/payments/credentials/{id}/rotate/"),
            &user.access,
            &json!({ "private_key": rotated }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let revealed = reveal(&app, &user, id).await;
    assert_eq!(
        revealed["private_key"].as_str().unwrap().as_bytes(),
        rotated.as_bytes()
    );
}

#[tokio::test]
async fn a_one_mebibyte_body_answers_413_json_and_the_server_keeps_serving() {
    let app = spawn_app().await;
    let (user, id) = owner_with_credential(&app).await;
    let huge = format!(
        r#"{{"provider":"jpay","api_key":"api-jpay","private_key":"{}"}}"#,
        "k".repeat(1024 * 1024)
    );

    for (method, path) in [
        (Method::POST, "/payments/credentials/".to_string()),
        (Method::POST, format!("/payments/credentials/{id}/verify/")),
        (Method::POST, "/users/login/".to_string()),
    ] {
        let res = send_raw(&app, method, &path, &user.access, huge.clone()).await;
        assert_refused(
            res,
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body is too large",
            &path,
        )
        .await;
        let health = app.client.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK, "healthz after {path}");
    }
    assert_eq!(credential_rows(&app), 1);
}

// ---------------------------------------------------------------------------------------
// SQL injection

#[tokio::test]
async fn sql_injection_in_provider_or_environment_is_refused_as_invalid() {
    let app = spawn_app().await;
    let (user, id) = owner_with_credential(&app).await;

    for injection in SQL_INJECTIONS {
        let as_provider = app
            .post(
                "/payments/credentials/",
                &user.access,
                &json!({ "provider": injection, "api_key": "api-x", "private_key": "private-key-0001" }),
            )
            .await;
        assert_refused(
            as_provider,
            StatusCode::BAD_REQUEST,
            BAD_PROVIDER,
            injection,
        )
        .await;
        let as_environment = app
            .post(
                "/payments/credentials/",
                &user.access,
                &json!({
                    "provider": "jpay",
                    "api_key": "api-x",
                    "private_key": "private-key-0001",
                    "environment": injection,
                }),
            )
            .await;
        assert_refused(
            as_environment,
            StatusCode::BAD_REQUEST,
            BAD_ENVIRONMENT,
            injection,
        )
        .await;
        let updated_environment = app
            .put(
                &format!("/payments/credentials/{id}/"),
                &user.access,
                &json!({ "environment": injection }),
            )
            .await;
        assert_refused(
            updated_environment,
            StatusCode::BAD_REQUEST,
            BAD_ENVIRONMENT,
            injection,
        )
        .await;
    }

    assert_eq!(table_counts(&app)[2], "1", "one credential, as before");
    let res = app
        .get(&format!("/payments/credentials/{id}/"), &user.access)
        .await;
    let credential: Value = res.json().await.unwrap();
    assert_eq!(credential["environment"], "sandbox");
}

#[tokio::test]
async fn sql_injection_in_api_key_and_private_key_round_trips_literally() {
    let app = spawn_app().await;
    let user = app.user().await;
    let bystander = app.user().await;
    app.create_credential(&bystander, "kopokopo", "sandbox", "bystander-key-0001")
        .await;

    for (injection, provider) in SQL_INJECTIONS.iter().zip(["kopokopo", "jpay", "mpesa"]) {
        let res = app
            .post(
                "/payments/credentials/",
                &user.access,
                &json!({ "provider": provider, "api_key": injection, "private_key": injection }),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED, "{injection}");
        let created: Value = res.json().await.unwrap();
        assert_eq!(created["api_key"], *injection);
        let id = created["id"].as_i64().unwrap();

        let res = app
            .get(&format!("/payments/credentials/{id}/"), &user.access)
            .await;
        let fetched: Value = res.json().await.unwrap();
        assert_eq!(fetched["api_key"], *injection);
        assert_eq!(reveal(&app, &user, id).await["private_key"], *injection);
        let res = app
            .post(
                &format!("/payments/credentials/{id}/verify/"),
                &user.access,
                &json!({ "private_key": injection }),
            )
            .await;
        let verified: Value = res.json().await.unwrap();
        assert_eq!(verified["is_valid"], true, "{injection}");
    }

    assert_eq!(
        table_counts(&app)[2..],
        ["4".to_string(), "4".to_string()],
        "the three new credentials and the bystander's, one version each"
    );
    let res = app.get("/payments/credentials/", &bystander.access).await;
    let list: Value = res.json().await.unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "the bystander sees only their own"
    );
}

#[tokio::test]
async fn sql_injection_in_login_is_an_ordinary_failed_login() {
    let app = spawn_app().await;
    let user = app.user().await;

    for injection in SQL_INJECTIONS {
        let as_username = app.login(injection, &user.password).await;
        assert_refused(as_username, StatusCode::UNAUTHORIZED, BAD_LOGIN, injection).await;
        let as_password = app.login(&user.username, injection).await;
        assert_refused(as_password, StatusCode::UNAUTHORIZED, BAD_LOGIN, injection).await;
    }
    let commented_out = app
        .login(&format!("{}' --", user.username), "not-the-password")
        .await;
    assert_refused(commented_out, StatusCode::UNAUTHORIZED, BAD_LOGIN, "' --").await;

    assert_eq!(table_counts(&app)[0], "1", "the user is still there");
    let res = app.login(&user.username, &user.password).await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "the real password still works"
    );
}

#[tokio::test]
async fn sql_injection_in_paths_and_query_strings_answers_4xx() {
    let app = spawn_app().await;
    let (user, id) = owner_with_credential(&app).await;

    for injection in SQL_INJECTIONS {
        let url = url_with_segments(&app, "/payments/credentials/provider/", &[injection]);
        let res = send_json(&app, Method::GET, url, &user.access, None).await;
        assert_refused(res, StatusCode::BAD_REQUEST, BAD_PROVIDER, injection).await;

        let mut url = Url::parse(&app.url("/payments/credentials/provider/kopokopo/")).unwrap();
        url.query_pairs_mut().append_pair("environment", injection);
        let res = send_json(&app, Method::GET, url, &user.access, None).await;
        assert_refused(res, StatusCode::BAD_REQUEST, BAD_ENVIRONMENT, injection).await;

        let as_id = format!("{id}{injection}");
        for raw_id in [injection, as_id.as_str()] {
            for (method, path, body) in id_endpoints("ID") {
                let segments: Vec<&str> = path
                    .trim_matches('/')
                    .split('/')
                    .map(|s| if s == "ID" { raw_id } else { s })
                    .collect();
                let url = url_with_segments(&app, "/", &segments);
                let what = format!("{method} {url}");
                let res = send_json(&app, method, url, &user.access, body.as_ref()).await;
                assert_refused(res, StatusCode::NOT_FOUND, NOT_FOUND, &what).await;
            }
        }
    }

    assert_eq!(table_counts(&app)[2..], ["1".to_string(), "1".to_string()]);
    let res = app
        .get(&format!("/payments/credentials/{id}/"), &user.access)
        .await;
    assert_eq!(res.status(), StatusCode::OK, "the credential is intact");
    let credential: Value = res.json().await.unwrap();
    assert_eq!(credential["is_active"], true);
}

// ---------------------------------------------------------------------------------------
// NUL characters

/// Sends `endpoint`'s valid body with a NUL put into each string field (at the end, the
/// start and the middle); every answer that is not a JSON 4xx, described.
async fn nul_failures(app: &TestApp, user: &TestUser, endpoint: &BodyEndpoint) -> Vec<String> {
    let mut failures = Vec::new();
    for (field, _) in endpoint.string_fields {
        let valid = endpoint.valid_body[*field].as_str().unwrap().to_string();
        for poisoned in [
            format!("{valid}\u{0000}"),
            format!("\u{0000}{valid}"),
            format!("{}\u{0000}{}", &valid[..3], &valid[3..]),
        ] {
            let mut body = endpoint.valid_body.clone();
            body[*field] = json!(poisoned);
            let res = send_json(
                app,
                endpoint.method.clone(),
                app.url(&endpoint.path),
                &user.access,
                Some(&body),
            )
            .await;
            let status = res.status();
            let text = res.text().await.unwrap();
            let is_json_error =
                serde_json::from_str::<Value>(&text).is_ok_and(|body| body["error"].is_string());
            if !status.is_client_error() || !is_json_error {
                failures.push(format!(
                    "{} {} with NUL in {field}: {status} {text}",
                    endpoint.method, endpoint.path
                ));
            }
        }
    }
    failures
}

/// The body endpoints whose path ends with one of `suffixes`.
fn body_endpoints_ending(user: &TestUser, id: i64, suffixes: &[&str]) -> Vec<BodyEndpoint> {
    body_endpoints(user, id)
        .into_iter()
        .filter(|e| suffixes.iter().any(|s| e.path.ends_with(s)))
        .collect()
}

#[tokio::test]
async fn a_nul_character_in_any_credential_field_answers_a_json_4xx() {
    let app = spawn_app().await;
    let (user, id) = owner_with_credential(&app).await;
    let endpoints = body_endpoints_ending(
        &user,
        id,
        &[
            "/credentials/",
            &format!("/{id}/"),
            "/update-private-key/",
            "/rotate/",
        ],
    );
    assert_eq!(endpoints.len(), 4);

    let mut failures = Vec::new();
    for endpoint in &endpoints {
        failures.extend(nul_failures(&app, &user, endpoint).await);
    }

    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let res = app
        .get(&format!("/payments/credentials/{id}/"), &user.access)
        .await;
    let credential: Value = res.json().await.unwrap();
    assert_eq!(credential["version"], 1, "no NUL key was stored");
    assert_eq!(credential["api_key"], "api-kopokopo-sandbox");
    assert_eq!(credential["environment"], "sandbox");
    assert_eq!(credential_rows(&app), 1);
}

#[tokio::test]
async fn a_nul_character_in_a_login_or_refresh_field_answers_a_json_4xx() {
    let app = spawn_app().await;
    let (user, id) = owner_with_credential(&app).await;
    let endpoints = body_endpoints_ending(&user, id, &["/login/", "/refresh/"]);
    assert_eq!(endpoints.len(), 2);

    let mut failures = Vec::new();
    for endpoint in &endpoints {
        failures.extend(nul_failures(&app, &user, endpoint).await);
    }

    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn a_nul_character_in_a_verify_candidate_answers_a_json_4xx() {
    let app = spawn_app().await;
    let (user, id) = owner_with_credential(&app).await;
    let endpoints = body_endpoints_ending(&user, id, &["/verify/"]);
    assert_eq!(endpoints.len(), 1);

    let failures = nul_failures(&app, &user, &endpoints[0]).await;

    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn an_encoded_nul_in_a_path_segment_or_query_answers_a_json_4xx() {
    let app = spawn_app().await;
    let (user, id) = owner_with_credential(&app).await;

    for raw_id in ["%00".to_string(), format!("{id}%00"), format!("%00{id}")] {
        for (method, path, body) in id_endpoints(&raw_id) {
            let what = format!("{method} {path}");
            let res = send_json(&app, method, app.url(&path), &user.access, body.as_ref()).await;
            assert_refused(res, StatusCode::NOT_FOUND, NOT_FOUND, &what).await;
        }
    }
    for path in [
        "/payments/credentials/provider/%00/",
        "/payments/credentials/provider/kopokopo%00/",
    ] {
        let res = app.get(path, &user.access).await;
        assert_refused(res, StatusCode::BAD_REQUEST, BAD_PROVIDER, path).await;
    }
    for query in ["%00", "sandbox%00", "%00sandbox"] {
        let path = format!("/payments/credentials/provider/kopokopo/?environment={query}");
        let res = app.get(&path, &user.access).await;
        assert_refused(res, StatusCode::BAD_REQUEST, BAD_ENVIRONMENT, &path).await;
    }
    let res = app
        .get(&format!("/payments/credentials/{id}/"), &user.access)
        .await;
    assert_eq!(res.status(), StatusCode::OK, "the credential is intact");
}

// ---------------------------------------------------------------------------------------
// Ids

#[tokio::test]
async fn a_non_numeric_zero_negative_or_huge_id_answers_the_standard_404() {
    let app = spawn_app().await;
    let (user, id) = owner_with_credential(&app).await;
    let bad_ids = [
        "abc",
        "1.5",
        "-1",
        "0",
        "%20",
        "1e3",
        "0x10",
        "+1",
        "99999999999999999999999",
        "9223372036854775808",
        "9223372036854775807",
        "9007199254740992",
        "-9223372036854775808",
    ];

    for bad in bad_ids {
        for (method, path, body) in id_endpoints(bad) {
            let what = format!("{method} {path}");
            let res = send_json(&app, method, app.url(&path), &user.access, body.as_ref()).await;
            assert_refused(res, StatusCode::NOT_FOUND, NOT_FOUND, &what).await;
        }
    }

    let res = app
        .get(&format!("/payments/credentials/{id}/"), &user.access)
        .await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "the real credential is untouched"
    );
    let credential: Value = res.json().await.unwrap();
    assert_eq!(credential["is_active"], true);
    assert_eq!(credential["version"], 1);
}

// ---------------------------------------------------------------------------------------
// Content type, routes and methods

#[tokio::test]
async fn a_wrong_or_missing_content_type_answers_400_json() {
    let app = spawn_app().await;
    let (user, id) = owner_with_credential(&app).await;

    for endpoint in body_endpoints(&user, id) {
        let raw = endpoint.valid_body.to_string();
        for content_type in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/xml"),
            None,
        ] {
            let mut req = app
                .client
                .request(endpoint.method.clone(), app.url(&endpoint.path))
                .bearer_auth(&user.access)
                .body(raw.clone());
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            let res = req.send().await.unwrap();
            let what = format!("{} {} as {content_type:?}", endpoint.method, endpoint.path);
            assert_refused(res, StatusCode::BAD_REQUEST, WRONG_CONTENT_TYPE, &what).await;
        }
    }
    assert_eq!(credential_rows(&app), 1);
}

#[tokio::test]
async fn an_unknown_route_answers_404_json() {
    let app = spawn_app().await;
    let user = app.user().await;

    // `/` is no unknown route: it sends a browser to the console (first_hour.rs).
    for (method, path) in [
        (Method::GET, "/nope/"),
        (Method::GET, "/payments/credentials"),
        (Method::GET, "/payments/credentials/1/nope/"),
        (
            Method::POST,
            "/payments/credentials/1/get-private-key/extra/",
        ),
        (Method::GET, "/admin/"),
        (Method::DELETE, "/users/"),
        (Method::GET, "/../../etc/passwd"),
    ] {
        let res = app
            .client
            .request(method.clone(), app.url(path))
            .bearer_auth(&user.access)
            .send()
            .await
            .unwrap();
        let what = format!("{method} {path}");
        assert_refused(res, StatusCode::NOT_FOUND, "Not found", &what).await;
    }
}

#[tokio::test]
async fn a_known_path_with_another_method_answers_405_json() {
    let app = spawn_app().await;
    let (user, id) = owner_with_credential(&app).await;

    for (method, path) in [
        (Method::PATCH, format!("/payments/credentials/{id}/")),
        (Method::POST, format!("/payments/credentials/{id}/")),
        (Method::DELETE, "/payments/credentials/".to_string()),
        (Method::PUT, "/payments/credentials/".to_string()),
        (Method::GET, "/users/login/".to_string()),
        (Method::GET, "/users/token/refresh/".to_string()),
        (Method::POST, "/healthz".to_string()),
        (
            Method::DELETE,
            format!("/payments/credentials/{id}/verify/"),
        ),
        (
            Method::POST,
            format!("/payments/credentials/{id}/get-private-key/"),
        ),
        (Method::GET, format!("/payments/credentials/{id}/rotate/")),
    ] {
        let res = app
            .client
            .request(method.clone(), app.url(&path))
            .bearer_auth(&user.access)
            .send()
            .await
            .unwrap();
        let what = format!("{method} {path}");
        assert_refused(
            res,
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            &what,
        )
        .await;
    }
    let res = app
        .get(&format!("/payments/credentials/{id}/"), &user.access)
        .await;
    assert_eq!(res.status(), StatusCode::OK, "the credential is untouched");
}

// ---------------------------------------------------------------------------------------
// Authentication

#[tokio::test]
async fn a_request_without_an_authorization_header_answers_401_json() {
    let app = spawn_app().await;
    let (_user, id) = owner_with_credential(&app).await;

    let mut endpoints = id_endpoints(&id.to_string());
    endpoints.push((Method::GET, "/payments/credentials/".into(), None));
    endpoints.push((
        Method::POST,
        "/payments/credentials/".into(),
        Some(json!({ "provider": "jpay", "api_key": "api-jpay", "private_key": "jpay-key-0001" })),
    ));
    endpoints.push((
        Method::GET,
        "/payments/credentials/provider/kopokopo/".into(),
        None,
    ));
    endpoints.push((Method::POST, "/users/logout/".into(), None));

    for (method, path, body) in endpoints {
        let req = app.client.request(method.clone(), app.url(&path));
        let req = match &body {
            Some(b) => req.json(b),
            None => req,
        };
        let res = req.send().await.unwrap();
        let what = format!("{method} {path}");
        assert_refused(res, StatusCode::UNAUTHORIZED, UNAUTHENTICATED, &what).await;
    }
    assert_eq!(credential_rows(&app), 1);
}

#[tokio::test]
async fn a_garbage_authorization_header_answers_401_json() {
    let app = spawn_app().await;
    let (user, id) = owner_with_credential(&app).await;
    let huge = format!("Bearer {}", "a".repeat(10 * 1024));
    let parts: Vec<&str> = user.access.split('.').collect();
    let unsigned = format!("Bearer {}.{}.", parts[0], parts[1]);
    let garbage = [
        "Bearer",
        "Bearer ",
        "Basic abc",
        "Basic dXNlcjpwYXNz",
        "Bearer a.b.c",
        "Bearer ...",
        "Token abc.def.ghi",
        unsigned.as_str(),
        huge.as_str(),
        user.access.as_str(),
    ];

    for value in garbage {
        for path in [
            "/payments/credentials/".to_string(),
            format!("/payments/credentials/{id}/get-private-key/"),
        ] {
            let res = app
                .client
                .get(app.url(&path))
                .header("authorization", value)
                .send()
                .await
                .unwrap();
            let what = format!("{path} with {:.40}", value);
            assert_refused(res, StatusCode::UNAUTHORIZED, UNAUTHENTICATED, &what).await;
        }
    }
}
