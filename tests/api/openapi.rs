//! openapi.yaml is kept true (SPEC §2.6): it names exactly the routes the server serves, and
//! every answer the API gives in a realistic flow has a status the spec lists for that
//! operation and a body that validates against the schema it gives (JSON Schema 2020-12,
//! every `$ref` resolved inside the document). Requests the server accepts must validate
//! against the spec's request-body schemas too.

use std::collections::BTreeSet;

use base64::Engine;
use jsonschema::{Draft, Registry, Validator};
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Value};

use hazina::domain::Role;
use hazina::routes::ROUTE_TABLE;

use crate::helpers::*;
use crate::pki::{
    spawn_tls_app, spawn_tls_app_with, ClientCert, ClientCerts, TestPki, SERVICE_URI,
};
use crate::stubs::{Kind, Mode, Stub};

/// The base URI the whole document is registered under, so `#/components/...` resolves.
const SPEC_URI: &str = "urn:hazina:openapi";
const SPEC_YAML: &str = include_str!("../../openapi.yaml");
/// JSON Lines (the audit export).
const NDJSON: &str = "application/x-ndjson";
/// Prometheus text (`/metrics`): checked as a JSON string against its schema.
const OPENMETRICS: &str = "application/openmetrics-text";
const TEXT: &str = "text/plain";
const OPERATION_KEYS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

type Route = (String, String);

// ---------------------------------------------------------------------------------------
// The spec, and checks against it that never touch a server.

struct Spec {
    doc: Value,
    registry: Registry<'static>,
}

/// A JSON pointer segment, escaped (RFC 6901).
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// A JSON pointer made safe for a URI fragment.
fn fragment(pointer: &str) -> String {
    pointer
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Whether a concrete request path matches an OpenAPI path template (`{name}` is one
/// non-empty segment, like actix's default).
fn template_matches(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    t.len() == p.len()
        && t.iter().zip(&p).all(|(t, p)| {
            if t.starts_with('{') && t.ends_with('}') {
                !p.is_empty()
            } else {
                t == p
            }
        })
}

fn table_routes() -> BTreeSet<Route> {
    ROUTE_TABLE
        .iter()
        .map(|(method, path)| (method.to_ascii_lowercase(), (*path).to_owned()))
        .collect()
}

/// (routes served but missing from the spec, routes in the spec but not served).
fn route_differences(table: &BTreeSet<Route>, spec: &BTreeSet<Route>) -> (Vec<Route>, Vec<Route>) {
    (
        table.difference(spec).cloned().collect(),
        spec.difference(table).cloned().collect(),
    )
}

impl Spec {
    fn load() -> Spec {
        let doc: Value = serde_norway::from_str(SPEC_YAML).expect("openapi.yaml is valid YAML");
        let registry = Registry::new()
            .draft(Draft::Draft202012)
            .add(SPEC_URI, doc.clone())
            .expect("the spec's base URI is valid")
            .prepare()
            .expect("openapi.yaml registers as a JSON Schema resource");
        Spec { doc, registry }
    }

    fn at(&self, pointer: &str) -> Option<&Value> {
        self.doc.pointer(pointer)
    }

    /// Follows local `$ref`s from `pointer` to the object they name.
    fn deref(&self, mut pointer: String) -> Result<(String, &Value), String> {
        for _ in 0..16 {
            let value = self
                .at(&pointer)
                .ok_or_else(|| format!("openapi.yaml has nothing at #{pointer}"))?;
            match value.get("$ref").and_then(Value::as_str) {
                Some(target) => {
                    pointer = target
                        .strip_prefix('#')
                        .ok_or_else(|| format!("non-local $ref {target} at #{pointer}"))?
                        .to_owned();
                }
                None => return Ok((pointer, value)),
            }
        }
        Err(format!("$ref chain too long at #{pointer}"))
    }

    /// Every (method, path) the spec describes.
    fn routes(&self) -> BTreeSet<Route> {
        let mut routes = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().expect("paths is a map") {
            for key in OPERATION_KEYS {
                if item.get(key).is_some() {
                    routes.insert((key.to_owned(), path.clone()));
                }
            }
        }
        routes
    }

    /// The spec path a concrete request path falls under, preferring literal segments (as
    /// the router does: `/provider/x/` is not an id).
    fn template_for(&self, path: &str) -> Option<String> {
        let path = path.split('?').next().unwrap_or(path);
        self.doc["paths"]
            .as_object()
            .expect("paths is a map")
            .keys()
            .filter(|t| template_matches(t, path))
            .max_by_key(|t| t.split('/').filter(|s| !s.starts_with('{')).count())
            .cloned()
    }

    /// A validator for the schema found at `pointer` (any `$ref` inside it resolved within
    /// the document; nothing is ever fetched).
    fn validator(&self, pointer: &str) -> Result<Validator, String> {
        let schema = json!({ "$ref": format!("{SPEC_URI}#{}", fragment(pointer)) });
        jsonschema::options()
            .with_draft(Draft::Draft202012)
            .should_validate_formats(true)
            .offline()
            .with_registry(&self.registry)
            .build(&schema)
            .map_err(|e| format!("the schema at #{pointer} does not compile: {e}"))
    }

    /// Validates `instance` against the schema found at `pointer`.
    fn validate_at(&self, pointer: &str, instance: &Value) -> Result<(), String> {
        let validator = self.validator(pointer)?;
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{} at '{}'", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{instance} does not match #{pointer}: {}",
                errors.join("; ")
            ))
        }
    }

    /// Checks one answer against a response object (headers, content type, body schema).
    fn check_response_object(
        &self,
        pointer: String,
        headers: &HeaderMap,
        body: &Value,
    ) -> Result<(), String> {
        let (pointer, response) = self.deref(pointer)?;
        if let Some(declared) = response.get("headers").and_then(Value::as_object) {
            for name in declared.keys() {
                let (header_ptr, header) =
                    self.deref(format!("{pointer}/headers/{}", escape(name)))?;
                let value = headers.get(name.as_str()).and_then(|v| v.to_str().ok());
                match value {
                    Some(v) => self.validate_at(&format!("{header_ptr}/schema"), &json!(v))?,
                    None if header["required"] == true => {
                        return Err(format!("required header {name} is missing"))
                    }
                    None => {}
                }
            }
        }
        match response.get("content") {
            Some(content) if content.get("application/json").is_some() => {
                let content_type = headers
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !content_type.starts_with("application/json") {
                    return Err(format!("content type is {content_type:?}, not JSON"));
                }
                self.validate_at(&format!("{pointer}/content/application~1json/schema"), body)
            }
            Some(content) if content.get(NDJSON).is_some() => self.check_json_lines(
                &format!("{pointer}/content/{}", escape(NDJSON)),
                headers,
                body,
            ),
            Some(content) if content.get(OPENMETRICS).is_some() => {
                let content_type = headers
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !content_type.starts_with(OPENMETRICS) {
                    return Err(format!(
                        "content type is {content_type:?}, not {OPENMETRICS}"
                    ));
                }
                self.validate_at(
                    &format!("{pointer}/content/{}/schema", escape(OPENMETRICS)),
                    body,
                )
            }
            Some(content) if content.get(TEXT).is_some() => {
                let content_type = headers
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !content_type.starts_with(TEXT) {
                    return Err(format!("content type is {content_type:?}, not {TEXT}"));
                }
                self.validate_at(&format!("{pointer}/content/{}/schema", escape(TEXT)), body)
            }
            Some(other) => Err(format!("only JSON content is checked, not {other}")),
            None if body.is_null() => Ok(()),
            None => Err(format!("the spec gives no body, but got {body}")),
        }
    }

    /// Checks a JSON Lines answer (its lines arrive as a JSON array): every line but the
    /// last matches the media type's `x-item-schema`, the last its `x-last-item-schema`.
    fn check_json_lines(
        &self,
        pointer: &str,
        headers: &HeaderMap,
        body: &Value,
    ) -> Result<(), String> {
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type.starts_with(NDJSON) {
            return Err(format!("content type is {content_type:?}, not {NDJSON}"));
        }
        let Some((last, items)) = body.as_array().and_then(|lines| lines.split_last()) else {
            return Err(format!("expected JSON lines, got {body}"));
        };
        for item in items {
            self.validate_at(&format!("{pointer}/x-item-schema"), item)?;
        }
        self.validate_at(&format!("{pointer}/x-last-item-schema"), last)
    }

    /// Checks one answer: its status must be listed for the operation (or, for a request no
    /// route takes, in `x-unrouted-responses`) and its body must match.
    fn check_response(
        &self,
        method: &str,
        path: &str,
        status: u16,
        headers: &HeaderMap,
        body: &Value,
    ) -> Result<Option<Route>, String> {
        let method = method.to_ascii_lowercase();
        let operation = self
            .template_for(path)
            .filter(|t| self.doc["paths"][t.as_str()].get(&method).is_some());
        let Some(template) = operation else {
            let pointer = format!("/x-unrouted-responses/{status}");
            if self.at(&pointer).is_none() {
                return Err(format!(
                    "{method} {path} is not an operation of the spec, and {status} is not \
                     among its x-unrouted-responses"
                ));
            }
            return self
                .check_response_object(pointer, headers, body)
                .map(|_| None);
        };
        let op = format!("/paths/{}/{method}", escape(&template));
        let pointer = format!("{op}/responses/{status}");
        if self.at(&pointer).is_none() {
            return Err(format!(
                "{status} is not a documented response of {method} {template}"
            ));
        }
        self.check_response_object(pointer, headers, body)
            .map_err(|e| format!("{method} {template} {status}: {e}"))?;
        Ok(Some((method, template)))
    }

    /// Checks a request body the server accepted against the operation's request schema.
    fn check_accepted_request(
        &self,
        (method, template): &Route,
        body: Option<&Value>,
    ) -> Result<(), String> {
        let op = format!("/paths/{}/{method}", escape(template));
        if self.at(&format!("{op}/requestBody")).is_none() {
            return match body {
                None => Ok(()),
                Some(b) => Err(format!(
                    "{method} {template} takes no body, but accepted {b}"
                )),
            };
        }
        let (pointer, request) = self.deref(format!("{op}/requestBody"))?;
        match body {
            Some(b) => self.validate_at(&format!("{pointer}/content/application~1json/schema"), b),
            None if request["required"] == true => Err(format!(
                "{method} {template} requires a body, but succeeded without one"
            )),
            None => Ok(()),
        }
    }

    /// Checks a non-JSON request body the server accepted (a PEM certificate): the operation
    /// must list its content type, and the text must match that media type's schema.
    fn check_accepted_raw(
        &self,
        (method, template): &Route,
        content_type: &str,
        bytes: &[u8],
    ) -> Result<(), String> {
        let op = format!("/paths/{}/{method}", escape(template));
        if self.at(&format!("{op}/requestBody")).is_none() {
            return Err(format!(
                "{method} {template} takes no body, but accepted {content_type}"
            ));
        }
        let (pointer, _) = self.deref(format!("{op}/requestBody"))?;
        let essence = content_type.split(';').next().unwrap_or("").trim();
        let media = format!("{pointer}/content/{}", escape(essence));
        if self.at(&media).is_none() {
            return Err(format!(
                "{method} {template} accepted {essence}, which its request body does not list"
            ));
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| format!("{method} {template} accepted a body that is not text"))?;
        self.validate_at(&format!("{media}/schema"), &json!(text))
    }
}

// ---------------------------------------------------------------------------------------
// The API, driven through the spec.

/// A request body as sent on the wire.
enum Body {
    None,
    Json(Value),
    Raw(&'static str, Vec<u8>),
}

/// A running app whose every answer is checked against the spec as it arrives.
struct Contract {
    spec: Spec,
    app: TestApp,
    /// Every (method, template, status) answered so far.
    seen: BTreeSet<(String, String, u16)>,
}

impl Contract {
    async fn new() -> Contract {
        Contract::with(spawn_app().await)
    }

    fn with(app: TestApp) -> Contract {
        Contract {
            spec: Spec::load(),
            app,
            seen: BTreeSet::new(),
        }
    }

    /// Sends one request, asserts its status, checks the answer (and, when it succeeded,
    /// the request body) against the spec, and returns the answer's body.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Body,
        expect: u16,
    ) -> Value {
        let mut req = self.app.client.request(method.clone(), self.app.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let mut raw = None;
        let sent = match body {
            Body::None => None,
            Body::Json(v) => {
                req = req.json(&v);
                Some(v)
            }
            Body::Raw(content_type, bytes) => {
                req = req.header(CONTENT_TYPE, content_type).body(bytes.clone());
                raw = Some((content_type, bytes));
                None
            }
        };
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let is_json_lines = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(NDJSON));
        let is_openmetrics = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(OPENMETRICS) || v.starts_with(TEXT));
        let body: Value = if text.is_empty() {
            Value::Null
        } else if is_openmetrics {
            Value::String(text)
        } else if is_json_lines {
            assert!(
                text.ends_with('\n'),
                "{method} {path}: every line ends with a newline"
            );
            let lines = text.lines().map(|line| {
                serde_json::from_str::<Value>(line).unwrap_or_else(|_| {
                    panic!("{method} {path} answered a line that is not JSON: {line}")
                })
            });
            Value::Array(lines.collect())
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| {
                panic!("{method} {path} answered {status} with non-JSON {text}")
            })
        };
        assert_eq!(status, expect, "{method} {path}: {body}");
        let operation = self
            .spec
            .check_response(method.as_str(), path, status, &headers, &body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        if let Some(route) = operation {
            if (200..300).contains(&status) {
                match &raw {
                    Some((content_type, bytes)) => {
                        self.spec.check_accepted_raw(&route, content_type, bytes)
                    }
                    None => self.spec.check_accepted_request(&route, sent.as_ref()),
                }
                .unwrap_or_else(|e| panic!("request {method} {path}: {e}"));
            }
            self.seen.insert((route.0, route.1, status));
        }
        body
    }

    async fn get(&mut self, path: &str, token: &str, expect: u16) -> Value {
        self.send(Method::GET, path, Some(token), Body::None, expect)
            .await
    }

    async fn post(&mut self, path: &str, token: &str, body: Value, expect: u16) -> Value {
        self.send(Method::POST, path, Some(token), Body::Json(body), expect)
            .await
    }

    async fn post_empty(&mut self, path: &str, token: &str, expect: u16) -> Value {
        self.send(Method::POST, path, Some(token), Body::None, expect)
            .await
    }

    async fn put(&mut self, path: &str, token: &str, body: Value, expect: u16) -> Value {
        self.send(Method::PUT, path, Some(token), Body::Json(body), expect)
            .await
    }

    async fn delete(&mut self, path: &str, token: &str, expect: u16) -> Value {
        self.send(Method::DELETE, path, Some(token), Body::None, expect)
            .await
    }

    /// A fresh user of `role`, logged in through the API (so the login answer is checked).
    async fn login_as(&mut self, role: Role) -> (String, String) {
        let username = format!("u{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        self.app.insert_user(&username, role);
        let pair = self
            .send(
                Method::POST,
                "/users/login/",
                None,
                Body::Json(json!({ "username": username, "password": PASSWORD })),
                200,
            )
            .await;
        (
            pair["access_token"].as_str().unwrap().to_owned(),
            pair["refresh_token"].as_str().unwrap().to_owned(),
        )
    }

    async fn create(&mut self, token: &str, provider: &str, environment: &str) -> i64 {
        let created = self
            .post(
                "/payments/credentials/",
                token,
                json!({
                    "provider": provider,
                    "api_key": format!("api-{provider}-{environment}"),
                    "private_key": "sk-original-private-key",
                    "environment": environment,
                }),
                201,
            )
            .await;
        created["id"].as_i64().unwrap()
    }

    fn statuses_seen(&self) -> BTreeSet<u16> {
        self.seen.iter().map(|(_, _, s)| *s).collect()
    }
}

// ---------------------------------------------------------------------------------------
// The spec names exactly the served routes.

#[test]
fn every_served_route_is_described_in_the_spec() {
    let spec = Spec::load();

    let (missing, _) = route_differences(&table_routes(), &spec.routes());

    assert!(
        missing.is_empty(),
        "routes missing from openapi.yaml: {missing:?}"
    );
}

#[test]
fn every_route_in_the_spec_is_served() {
    let spec = Spec::load();

    let (_, not_served) = route_differences(&table_routes(), &spec.routes());

    assert!(
        not_served.is_empty(),
        "routes in openapi.yaml but not served: {not_served:?}"
    );
}

#[test]
fn the_route_comparison_reports_a_difference_either_way() {
    let spec = Spec::load();
    let mut table = table_routes();
    table.remove(&("get".to_owned(), "/healthz".to_owned()));
    table.insert(("patch".to_owned(), "/payments/credentials/{id}/".to_owned()));

    let (missing, not_served) = route_differences(&table, &spec.routes());

    assert_eq!(
        missing,
        vec![("patch".to_owned(), "/payments/credentials/{id}/".to_owned())]
    );
    assert_eq!(not_served, vec![("get".to_owned(), "/healthz".to_owned())]);
}

#[test]
fn the_spec_is_openapi_3_1_and_every_schema_and_reference_in_it_resolves() {
    let spec = Spec::load();
    assert!(spec.doc["openapi"].as_str().unwrap().starts_with("3.1."));
    let bearer = &spec.doc["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(
        (&bearer["type"], &bearer["scheme"], &bearer["bearerFormat"]),
        (&json!("http"), &json!("bearer"), &json!("JWT"))
    );
    assert_eq!(spec.doc["security"], json!([{ "bearerAuth": [] }]));

    let mut refs = Vec::new();
    collect_refs(&spec.doc, &mut refs);
    let schemas = spec.doc["components"]["schemas"].as_object().unwrap();

    for target in &refs {
        let pointer = target.strip_prefix('#').expect("every $ref is local");
        assert!(spec.at(pointer).is_some(), "$ref {target} names nothing");
    }
    for name in schemas.keys() {
        // Compiling resolves every $ref the schema reaches.
        let compiled = spec.validator(&format!("/components/schemas/{}", escape(name)));
        assert!(compiled.is_ok(), "{:?}", compiled.err());
    }
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(s)) => out.push(s.clone()),
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// The checker itself is not vacuous.

fn a_valid_credential() -> Value {
    json!({
        "id": 4_503_599_627_370_497_i64,
        "provider": "kopokopo",
        "provider_display": "KopoKopo",
        "environment": "sandbox",
        "is_active": true,
        "is_live": false,
        "is_sandbox": true,
        "api_key": "api-kopokopo-sandbox",
        "version": 1,
        "created_at": "2026-01-02T03:04:05Z",
        "updated_at": "2026-01-02T03:04:05Z",
    })
}

#[test]
fn a_wrong_credential_body_fails_the_credential_schema() {
    let spec = Spec::load();
    let schema = "/components/schemas/Credential";
    assert_eq!(spec.validate_at(schema, &a_valid_credential()), Ok(()));

    let mut leaks_the_key = a_valid_credential();
    leaks_the_key["private_key"] = json!("sk-original-private-key");
    let mut lacks_a_field = a_valid_credential();
    lacks_a_field
        .as_object_mut()
        .unwrap()
        .remove("provider_display");
    let mut id_as_string = a_valid_credential();
    id_as_string["id"] = json!("4503599627370497");
    let mut unknown_provider = a_valid_credential();
    unknown_provider["provider"] = json!("paypal");
    let mut bad_timestamp = a_valid_credential();
    bad_timestamp["created_at"] = json!("yesterday");

    for wrong in [
        leaks_the_key,
        lacks_a_field,
        id_as_string,
        unknown_provider,
        bad_timestamp,
        json!([a_valid_credential()]),
    ] {
        assert!(spec.validate_at(schema, &wrong).is_err(), "{wrong} passed");
    }
}

#[test]
fn an_answer_with_an_undocumented_status_or_wrong_body_fails_the_check() {
    let spec = Spec::load();
    let json_headers = {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, "application/json".parse().unwrap());
        h
    };
    let path = "/payments/credentials/42/";

    let documented = spec.check_response("GET", path, 200, &json_headers, &a_valid_credential());
    let undocumented_status =
        spec.check_response("GET", path, 409, &json_headers, &json!({"error": "x"}));
    let wrong_error_shape = spec.check_response(
        "GET",
        path,
        404,
        &json_headers,
        &json!({"error": NOT_FOUND, "detail": "row 42"}),
    );
    let wrong_message = spec.check_response(
        "GET",
        path,
        404,
        &json_headers,
        &json!({"error": "Not found"}),
    );
    let not_json = spec.check_response("GET", path, 200, &HeaderMap::new(), &a_valid_credential());
    let unknown_route = spec.check_response("GET", "/nope/", 200, &json_headers, &json!({}));

    assert_eq!(
        documented,
        Ok(Some(("get".into(), "/payments/credentials/{id}/".into())))
    );
    for (what, result) in [
        ("undocumented status", undocumented_status),
        ("extra error field", wrong_error_shape),
        ("wrong 404 message", wrong_message),
        ("missing content type", not_json),
        ("unknown route answering 200", unknown_route),
    ] {
        assert!(result.is_err(), "{what} passed the check");
    }
}

fn a_valid_audit_entry() -> Value {
    json!({
        "seq": 1,
        "occurred_at": "2026-01-02T03:04:05.000000Z",
        "actor": { "kind": "user", "id": 7, "name": "alice" },
        "source_ip": "127.0.0.1",
        "cert_fingerprint": null,
        "action": "credential.reveal",
        "target": {
            "credential_id": 4_503_599_627_370_497_i64,
            "owner_id": 7,
            "provider": "kopokopo",
            "environment": "sandbox",
        },
        "outcome": "success",
        "reason": null,
        "request_id": "0b6e1c8e-9f7a-4c1e-8d55-3f0d6a1b2c3d",
        "prev_hash": "00".repeat(32),
        "hash": "ab".repeat(32),
    })
}

#[test]
fn a_wrong_audit_export_fails_the_check() {
    let spec = Spec::load();
    let headers = |content_type: &str| {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, content_type.parse().unwrap());
        h
    };
    let entry = a_valid_audit_entry();
    let head = json!({ "chain_head": { "seq": 1, "hash": "ab".repeat(32) } });
    let mut leaks_a_key = a_valid_audit_entry();
    leaks_a_key["private_key"] = json!("sk-original-private-key");
    let mut unknown_action = a_valid_audit_entry();
    unknown_action["action"] = json!("credential.steal");
    let check = |content_type: &str, lines: Value| {
        spec.check_response("GET", "/audit/export/", 200, &headers(content_type), &lines)
    };

    assert_eq!(
        check(NDJSON, json!([entry.clone(), head.clone()])),
        Ok(Some(("get".into(), "/audit/export/".into())))
    );
    for (what, result) in [
        ("no chain head", check(NDJSON, json!([entry.clone()]))),
        (
            "head first",
            check(NDJSON, json!([head.clone(), entry.clone()])),
        ),
        ("nothing at all", check(NDJSON, json!([]))),
        (
            "a leaked key",
            check(NDJSON, json!([leaks_a_key, head.clone()])),
        ),
        (
            "an unknown action",
            check(NDJSON, json!([unknown_action, head.clone()])),
        ),
        (
            "sent as JSON",
            check("application/json", json!([entry, head])),
        ),
    ] {
        assert!(result.is_err(), "{what} passed the check");
    }
}

#[test]
fn a_request_body_the_spec_refuses_fails_the_check() {
    let spec = Spec::load();
    let create = ("post".to_owned(), "/payments/credentials/".to_owned());
    let toggle = (
        "post".to_owned(),
        "/payments/credentials/{id}/toggle-status/".to_owned(),
    );
    let good = json!({"provider": "jpay", "api_key": "k", "private_key": "0123456789"});

    assert_eq!(spec.check_accepted_request(&create, Some(&good)), Ok(()));
    for bad in [
        json!({"provider": "jpay", "api_key": "k", "private_key": "short"}),
        json!({"provider": "jpay", "api_key": "k", "private_key": "0123456789", "owner_id": 1}),
        json!({"api_key": "k", "private_key": "0123456789"}),
    ] {
        assert!(
            spec.check_accepted_request(&create, Some(&bad)).is_err(),
            "{bad}"
        );
    }
    assert!(spec.check_accepted_request(&create, None).is_err());
    assert!(spec.check_accepted_request(&toggle, Some(&good)).is_err());

    // A rotation names a new private key and/or new secrets.
    let rotate = (
        "post".to_owned(),
        "/payments/credentials/{id}/rotate/".to_owned(),
    );
    for ok in [
        json!({"private_key": "0123456789"}),
        json!({"secrets": {"passkey": "p"}}),
        json!({"private_key": "0123456789", "secrets": {}}),
    ] {
        assert_eq!(
            spec.check_accepted_request(&rotate, Some(&ok)),
            Ok(()),
            "{ok}"
        );
    }
    for bad in [
        json!({}),
        json!({"secrets": {}}),
        json!({"private_key": null}),
        json!({"secrets": {"passkey": ""}}),
        json!({"secrets": {"api_token": "x"}}),
    ] {
        assert!(
            spec.check_accepted_request(&rotate, Some(&bad)).is_err(),
            "{bad}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The API answers as documented.

#[tokio::test]
async fn every_route_answers_as_documented_through_a_full_flow() {
    // Over HTTPS with optional client certificates, so a service can take part.
    let pki = TestPki::new();
    // A Daraja stub for the token broker, holding the credential made below.
    let daraja_stub = Stub::start(
        Kind::Daraja,
        "daraja-consumer-key",
        "daraja-consumer-secret",
    )
    .await;
    let mut api = Contract::with(
        spawn_tls_app_with(
            &pki,
            ClientCerts::Optional,
            &[(
                "HAZINA_PROVIDER_MPESA_SANDBOX_URL",
                daraja_stub.url.as_str(),
            )],
        )
        .await,
    );

    api.send(Method::GET, "/healthz", None, Body::None, 200)
        .await;
    api.send(Method::GET, "/readyz", None, Body::None, 200)
        .await;
    let (_, refresh) = api.login_as(Role::User).await;
    let pair = api
        .send(
            Method::POST,
            "/users/token/refresh/",
            None,
            Body::Json(json!({ "refresh_token": refresh })),
            200,
        )
        .await;
    let token = pair["access_token"].as_str().unwrap().to_owned();
    let t = token.as_str();

    let id = api.create(t, "kopokopo", "sandbox").await;
    api.create(t, "kopokopo", "live").await;
    let one = format!("/payments/credentials/{id}/");
    let listed = api.get("/payments/credentials/", t, 200).await;
    let by_provider = api
        .get(
            "/payments/credentials/provider/kopokopo/?environment=sandbox",
            t,
            200,
        )
        .await;
    api.get(&one, t, 200).await;
    api.put(&one, t, json!({ "api_key": "api-kopokopo-2" }), 200)
        .await;
    let key = json!({ "private_key": "sk-rotated-private-key" });
    api.post(&format!("{one}update-private-key/"), t, key.clone(), 200)
        .await;
    let rotated = api
        .post(&format!("{one}rotate/"), t, key.clone(), 200)
        .await;
    let revealed = api.get(&format!("{one}get-private-key/"), t, 200).await;
    let verified = api.post(&format!("{one}verify/"), t, key, 200).await;
    let refuted = api
        .post(
            &format!("{one}verify/"),
            t,
            json!({ "private_key": "nope" }),
            200,
        )
        .await;
    let off = api
        .post_empty(&format!("{one}toggle-status/"), t, 200)
        .await;
    let on = api
        .post_empty(&format!("{one}toggle-status/"), t, 200)
        .await;
    let deleted = api.delete(&one, t, 200).await;
    api.post_empty("/users/logout/", t, 200).await;
    let (auditor, _) = api.login_as(Role::Auditor).await;
    let a = auditor.as_str();
    let first = api.get("/audit/events/?limit=5", a, 200).await;
    let cursor = first["next_cursor"].as_i64().unwrap();
    let rest = api
        .get(
            &format!("/audit/events/?cursor={cursor}&limit=1000"),
            a,
            200,
        )
        .await;
    let reveals = api
        .get(
            &format!("/audit/events/?action=credential.reveal&credential={id}&outcome=success"),
            a,
            200,
        )
        .await;
    let exported = api.get("/audit/export/", a, 200).await;
    let verdict = api.get("/audit/verify/", a, 200).await;

    // The flow did what it meant to (so the bodies checked were the interesting ones).
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(by_provider["id"], id);
    assert_eq!(rotated["credentials"]["version"], 3);
    assert_eq!(revealed["private_key"], "sk-rotated-private-key");
    assert_eq!(
        (&verified["is_valid"], &refuted["is_valid"]),
        (&json!(true), &json!(false))
    );
    assert_eq!(
        (
            &off["credentials"]["is_active"],
            &on["credentials"]["is_active"]
        ),
        (&json!(false), &json!(true))
    );
    assert_eq!(
        deleted["message"],
        "Payment credentials for KopoKopo have been successfully deleted"
    );
    assert_eq!(reveals["events"].as_array().unwrap().len(), 1);
    let listed = 5 + rest["events"].as_array().unwrap().len();
    let exported = exported.as_array().unwrap();
    // Every listed entry, the export's own entry, then the chain head.
    assert_eq!(exported.len(), listed + 2);
    let head = &exported[listed + 1]["chain_head"];
    assert_eq!(
        verdict,
        json!({ "ok": true, "checked": head["seq"], "first_bad_seq": null })
    );
    api.get("/audit/proofs/inclusion/?seq=1", a, 200).await;
    api.get("/audit/proofs/consistency/?from=1", a, 200).await;
    let note = api.get("/audit/checkpoint/", a, 200).await;
    api.get("/audit/public-key/", a, 200).await;
    let checked = api
        .post("/audit/verify/", a, json!({ "checkpoints": [note] }), 200)
        .await;
    assert_eq!(checked["ok"], true, "{checked}");

    // Administration, and a service revealing over mutual TLS.
    let (admin, _) = api.login_as(Role::Admin).await;
    let ad = admin.as_str();
    let merchant = json!({ "username": "merchant-two", "password": PASSWORD, "role": "user" });
    api.post("/admin/users/", ad, merchant, 201).await;
    let users = api.get("/admin/users/", ad, 200).await;
    let login = json!({ "username": "merchant-two", "password": PASSWORD });
    let pair = api
        .send(Method::POST, "/users/login/", None, Body::Json(login), 200)
        .await;
    let m = pair["access_token"].as_str().unwrap().to_owned();
    let granted = api.create(&m, "mpesa", "live").await;
    let service = json!({
        "name": "billing",
        "identity": SERVICE_URI,
        "allowed_cidrs": ["127.0.0.0/8"],
    });
    api.post("/admin/services/", ad, service, 201).await;
    let services = api.get("/admin/services/", ad, 200).await;
    let grant = json!({
        "service": "billing",
        "owner": "merchant-two",
        "provider": "mpesa",
        "operations": ["reveal", "stk-password"],
    });
    let grant = api.post("/admin/grants/", ad, grant, 201).await;
    let widened = api
        .send(
            Method::PATCH,
            &format!("/admin/grants/{}/", grant["id"]),
            Some(ad),
            Body::Json(json!({ "add_operations": ["webhook-verify"] })),
            200,
        )
        .await;
    assert_eq!(
        widened["operations"],
        json!(["reveal", "stk-password", "webhook-verify"])
    );
    let grants = api.get("/admin/grants/", ad, 200).await;
    let billing = pki.https_client(Some(&pki.client(ClientCert::Valid)));
    let by_id = api
        .send_as(
            &billing,
            Method::GET,
            &format!("/payments/credentials/{granted}/get-private-key/"),
            200,
        )
        .await;
    let by_lookup = api
        .send_as(
            &billing,
            Method::GET,
            &format!("{LOOKUP}?owner=merchant-two&provider=mpesa&environment=live"),
            200,
        )
        .await;
    // Provider operations: an M-Pesa credential with secrets and settings, used by its owner,
    // by the granted service (by lookup), and through an installed provider certificate.
    let daraja = api
        .post(
            "/payments/credentials/",
            &m,
            json!({
                "provider": "mpesa",
                "environment": "sandbox",
                "api_key": "daraja-consumer-key",
                "private_key": "daraja-consumer-secret",
                "secrets": { "passkey": "daraja-passkey", "initiator_password": "initiator-one" },
                "settings": { "business_short_code": "174379" },
            }),
            201,
        )
        .await;
    let daraja_path = format!("/payments/credentials/{}/", daraja["id"]);
    let op = |name: &str| format!("{daraja_path}operations/{name}/");
    let stk = api
        .post(
            &op("stk-password"),
            &m,
            json!({ "reference": "order-1" }),
            200,
        )
        .await;
    api.post(&op("security-credential"), &m, json!({}), 409)
        .await;
    let token = api.post(&op("access-token"), &m, json!({}), 200).await;
    assert_eq!(token["access_token"], json!(daraja_stub.token(1)));
    api.post(&op("reveal"), &m, json!({}), 404).await;
    let dir = tempfile::tempdir().unwrap();
    let pem = rsa_certificate(dir.path());
    let certificates = "/admin/provider-certificates/mpesa/sandbox/";
    api.send(
        Method::PUT,
        "/admin/provider-certificates/kopokopo/sandbox/",
        Some(ad),
        Body::Raw("text/plain", pem.clone().into_bytes()),
        400,
    )
    .await;
    let installed = api
        .send(
            Method::PUT,
            certificates,
            Some(ad),
            Body::Raw("application/x-pem-file", pem.into_bytes()),
            200,
        )
        .await;
    let credential = api
        .post(
            &op("security-credential"),
            &m,
            json!({ "reference": "b2c-1" }),
            200,
        )
        .await;
    let installed_list = api.get("/admin/provider-certificates/", ad, 200).await;
    api.delete(certificates, ad, 200).await;
    api.delete(certificates, ad, 404).await;
    let by_service = api
        .send_as_with(
            &billing,
            Method::POST,
            "/payments/credentials/lookup/operations/stk-password/?owner=merchant-two&provider=mpesa&environment=sandbox",
            Body::Json(json!({ "reference": "order-2" })),
            200,
        )
        .await;
    let new_secret = json!({ "secrets": { "initiator_password": "initiator-two" } });
    let resealed = api
        .post(&format!("{daraja_path}rotate/"), &m, new_secret, 200)
        .await;
    let daraja_revealed = api
        .get(&format!("{daraja_path}get-private-key/"), &m, 200)
        .await;
    // A webhook signed with a JPay credential's secret.
    let jpay = api
        .post(
            "/payments/credentials/",
            &m,
            json!({
                "provider": "jpay",
                "api_key": "jpay-api-key",
                "private_key": "jpay-private-key",
                "secrets": { "webhook_secret": "jpay-webhook-secret" },
            }),
            201,
        )
        .await;
    let webhook = br#"{"event":"payment.completed"}"#;
    let verdict_ok = api
        .post(
            &format!(
                "/payments/credentials/{}/operations/webhook-verify/",
                jpay["id"]
            ),
            &m,
            json!({
                "body_base64": base64::engine::general_purpose::STANDARD.encode(webhook),
                "signature": hmac_sha256_hex("jpay-webhook-secret", webhook),
            }),
            200,
        )
        .await;
    let access_log = api
        .get(&format!("{daraja_path}access-log/?limit=500"), &m, 200)
        .await;
    let by_reference = api
        .get(
            "/audit/events/?operation=stk-password&reference=order-2",
            a,
            200,
        )
        .await;
    assert_eq!(daraja["secrets"], json!(["initiator_password", "passkey"]));
    assert_eq!(
        daraja["settings"],
        json!({ "business_short_code": "174379" })
    );
    assert_eq!(stk["business_short_code"], "174379");
    assert_eq!(by_service["business_short_code"], "174379");
    assert_eq!(credential["certificate_sha256"], installed["sha256"]);
    assert_eq!(installed_list[0]["intact"], true, "{installed_list}");
    assert_eq!(resealed["credentials"]["version"], 2);
    assert_eq!(
        daraja_revealed["secrets"]["initiator_password"],
        "initiator-two"
    );
    assert_eq!(verdict_ok, json!({ "valid": true, "version": 1 }));
    let references: Vec<&Value> = access_log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "credential.operation" && e["outcome"] == "success")
        .map(|e| &e["reference"])
        .collect();
    assert_eq!(
        references,
        [
            &json!("order-1"),
            &Value::Null,
            &json!("b2c-1"),
            &json!("order-2")
        ]
    );
    assert_eq!(by_reference["events"].as_array().unwrap().len(), 1);
    assert_eq!(by_reference["events"][0]["operation"], "stk-password");

    // Provider-key versions, rollback, and an administrator's rotation of any owner's key.
    let granted_path = format!("/payments/credentials/{granted}/");
    let newer = json!({ "private_key": "sk-second-private-key" });
    api.post(&format!("{granted_path}rotate/"), &m, newer.clone(), 200)
        .await;
    let history = api.get(&format!("{granted_path}versions/"), &m, 200).await;
    let rolled = api
        .post(
            &format!("{granted_path}rollback/"),
            &m,
            json!({ "version": 1 }),
            200,
        )
        .await;
    api.get(&format!("/admin/credentials/{granted}/versions/"), ad, 200)
        .await;
    api.post(
        &format!("/admin/credentials/{granted}/rotate/"),
        ad,
        newer,
        200,
    )
    .await;
    // Master keys: start a rotation, finish it here (deterministically), retire the old key.
    api.get("/admin/keys/", ad, 200).await;
    api.post_empty("/admin/keys/rotate/", ad, 202).await;
    // Deterministically refused, whatever the background rewrap has done by now.
    api.post("/admin/keys/retire/", ad, json!({ "version": 2 }), 409)
        .await;
    if let Some(r) = hazina::repo::keys::unfinished_rotation(&mut api.app.conn()).unwrap() {
        let keyring = api.app.state.keyring.clone();
        hazina::repo::keys::run_rotation(&mut api.app.conn(), &keyring, &r, 100, || 0, |_| {})
            .unwrap();
    }
    let keys = api.get("/admin/keys/", ad, 200).await;
    api.post("/admin/keys/retire/", ad, json!({ "version": 1 }), 200)
        .await;
    // Tokens signed under the retired version are refused from now on: a fresh session.
    let (admin, _) = api.login_as(Role::Admin).await;
    let ad = admin.as_str();
    assert_eq!(history["versions"].as_array().unwrap().len(), 2);
    assert_eq!(rolled["credentials"]["version"], 3);
    assert_eq!(keys["active_version"], 2);
    assert_eq!(keys["rotation"]["remaining"], 0);

    let revoked = api
        .delete(&format!("/admin/grants/{}/", grant["id"]), ad, 200)
        .await;
    let disabled = api
        .post_empty("/admin/services/billing/disable/", ad, 200)
        .await;
    let fingerprint = "ab".repeat(32);
    api.post(
        "/admin/certificates/revoked/",
        ad,
        json!({ "fingerprint": fingerprint }),
        200,
    )
    .await;
    let revoked_certs = api.get("/admin/certificates/revoked/", ad, 200).await;
    assert_eq!(revoked_certs[0]["fingerprint"], fingerprint);
    api.put(
        "/admin/users/merchant-two/allowlist/",
        ad,
        json!({ "allowed_cidrs": ["127.0.0.0/8"] }),
        200,
    )
    .await;
    api.post_empty("/admin/users/merchant-two/sessions/revoke/", ad, 200)
        .await;
    api.post_empty("/admin/users/merchant-two/disable/", ad, 200)
        .await;
    api.post_empty("/admin/users/merchant-two/enable/", ad, 200)
        .await;
    let unlocked = api
        .post_empty("/admin/users/merchant-two/unlock/", ad, 200)
        .await;
    assert_eq!(unlocked["was_locked_out"], false);
    let role = api
        .put(
            "/admin/users/merchant-two/role/",
            ad,
            json!({ "role": "auditor" }),
            200,
        )
        .await;
    assert_eq!(
        role,
        json!({ "username": "merchant-two", "role": "auditor" })
    );
    api.put(
        "/admin/users/merchant-two/password/",
        ad,
        json!({ "password": "a reset password 0001" }),
        200,
    )
    .await;
    // A user's own password.
    let (own, _) = api.login_as(Role::User).await;
    api.post(
        "/users/password/",
        &own,
        json!({ "old_password": "not the password", "new_password": "a brand new password 1" }),
        403,
    )
    .await;
    api.post(
        "/users/password/",
        &own,
        json!({ "old_password": PASSWORD, "new_password": "short" }),
        400,
    )
    .await;
    api.post(
        "/users/password/",
        &own,
        json!({ "old_password": PASSWORD, "new_password": "a brand new password 1" }),
        200,
    )
    .await;
    api.send(Method::GET, "/metrics", None, Body::None, 200)
        .await;

    assert!(
        users
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["username"] == "merchant-two"),
        "{users}"
    );
    assert_eq!(services[0]["allowed_cidrs"], json!(["127.0.0.0/8"]));
    assert_eq!(grants.as_array().unwrap().len(), 1, "{grants}");
    assert_eq!(by_id["private_key"], "sk-original-private-key");
    assert_eq!(by_id, by_lookup);
    assert_eq!(revoked["id"], grant["id"]);
    assert_eq!(disabled["is_enabled"], false);
    let succeeded: BTreeSet<Route> = api
        .seen
        .iter()
        .filter(|(_, _, s)| (200..300).contains(s))
        .map(|(m, p, _)| (m.clone(), p.clone()))
        .collect();
    let untested: Vec<Route> = table_routes().difference(&succeeded).cloned().collect();
    assert!(untested.is_empty(), "routes never exercised: {untested:?}");
}

/// A self-signed RSA certificate (PEM), made by the openssl command-line tool in `dir`.
fn rsa_certificate(dir: &std::path::Path) -> String {
    let (key, cert) = (dir.join("provider.key"), dir.join("provider.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=sandbox.safaricom.test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(&cert).unwrap()
}

/// HMAC-SHA256 of `body` under `secret`, lowercase hex (a webhook signature).
fn hmac_sha256_hex(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A path of `template` with its parameters filled in (and the lookup's query).
fn concrete(template: &str, id: i64) -> String {
    let path = template
        .replace("{id}", &id.to_string())
        .replace("{provider}", "kopokopo")
        .replace("{environment}", "sandbox")
        .replace("{username}", "nobody-here")
        // An operation that exists, so a refusal is about something else.
        .replace("/operations/{name}/", "/operations/stk-password/")
        .replace("{name}", "nothing");
    if template == LOOKUP || template == LOOKUP_OPERATION {
        format!("{path}?owner=nobody-here&provider=kopokopo&environment=sandbox")
    } else {
        path
    }
}

/// Services find a granted key by owner, provider and environment here.
const LOOKUP: &str = "/payments/credentials/lookup/get-private-key/";
/// ... and run a granted operation on it here.
const LOOKUP_OPERATION: &str = "/payments/credentials/lookup/operations/{name}/";

/// A body the operation would accept (so a refusal is about something else).
fn acceptable_body(template: &str) -> Body {
    match template {
        "/users/login/" => Body::Json(json!({ "username": "nobody", "password": PASSWORD })),
        "/users/token/refresh/" => Body::Json(json!({ "refresh_token": "a.b.c" })),
        "/payments/credentials/" => Body::Json(json!({
            "provider": "pagamio",
            "api_key": "api-pagamio",
            "private_key": "sk-acceptable-key",
            "environment": "live",
        })),
        "/payments/credentials/{id}/" => Body::Json(json!({ "api_key": "api-other" })),
        "/admin/users/" => Body::Json(json!({
            "username": "someone-new",
            "password": PASSWORD,
            "role": "user",
        })),
        "/admin/services/" => Body::Json(json!({
            "name": "someone-new",
            "identity": "spiffe://payments/someone-new",
        })),
        "/admin/grants/" => Body::Json(json!({ "service": "nothing", "owner": "nobody-here" })),
        "/admin/grants/{id}/" => Body::Json(json!({ "add_operations": ["reveal"] })),
        "/admin/users/{username}/role/" => Body::Json(json!({ "role": "auditor" })),
        "/admin/users/{username}/password/" => Body::Json(json!({ "password": PASSWORD })),
        "/users/password/" => Body::Json(json!({
            "old_password": PASSWORD,
            "new_password": "a brand new password 1",
        })),
        "/audit/verify/" => Body::Json(json!({ "checkpoints": [] })),
        "/admin/certificates/revoked/" => Body::Json(json!({ "fingerprint": "ab".repeat(32) })),
        "/payments/credentials/{id}/rollback/" | "/admin/keys/retire/" => {
            Body::Json(json!({ "version": 1 }))
        }
        t if t.contains("/operations/") => Body::Json(json!({})),
        t if t.ends_with("/update-private-key/")
            || t.ends_with("/rotate/")
            || t.ends_with("/verify/") =>
        {
            Body::Json(json!({ "private_key": "sk-acceptable-key" }))
        }
        _ => Body::None,
    }
}

/// Every served route that requires a bearer token, per the spec (not those open without
/// one, `security: []`, nor those where a token is optional, `security: [{}, ...]`).
fn bearer_routes(spec: &Spec) -> Vec<Route> {
    table_routes()
        .into_iter()
        .filter(|(method, path)| {
            let security = &spec.doc["paths"][path.as_str()][method.as_str()]["security"];
            security != &json!([])
                && !security
                    .as_array()
                    .is_some_and(|s| s.iter().any(|r| r == &json!({})))
        })
        .collect()
}

fn method_of(name: &str) -> Method {
    Method::from_bytes(name.to_ascii_uppercase().as_bytes()).unwrap()
}

impl Contract {
    /// Sends as `client` with no bearer token: a service presenting its certificate (or a
    /// caller presenting none), over the TLS test kit.
    async fn send_as(
        &mut self,
        client: &reqwest::Client,
        method: Method,
        path: &str,
        expect: u16,
    ) -> Value {
        self.send_as_with(client, method, path, Body::None, expect)
            .await
    }

    /// [`Contract::send_as`], with a request body.
    async fn send_as_with(
        &mut self,
        client: &reqwest::Client,
        method: Method,
        path: &str,
        body: Body,
        expect: u16,
    ) -> Value {
        let own = std::mem::replace(&mut self.app.client, client.clone());
        let answer = self.send(method, path, None, body, expect).await;
        self.app.client = own;
        answer
    }
}

#[tokio::test]
async fn malformed_and_invalid_requests_answer_400_as_documented() {
    let mut api = Contract::new().await;
    let (t, _) = api.login_as(Role::User).await;
    let t = t.as_str();
    let id = api.create(t, "kopokopo", "sandbox").await;
    api.create(t, "kopokopo", "live").await;
    let one = format!("/payments/credentials/{id}/");
    let create = "/payments/credentials/";

    let unknown_field =
        json!({"provider": "jpay", "api_key": "k", "private_key": "0123456789", "owner_id": 7});
    api.post(create, t, unknown_field, 400).await;
    api.post(create, t, json!({"provider": "jpay", "api_key": "k"}), 400)
        .await;
    api.post(
        create,
        t,
        json!({"provider": "jpay", "api_key": "k", "private_key": "short"}),
        400,
    )
    .await;
    api.post(
        create,
        t,
        json!({"provider": "paypal", "api_key": "k", "private_key": "0123456789"}),
        400,
    )
    .await;
    api.send(
        Method::POST,
        create,
        Some(t),
        Body::Raw("application/json", b"{".to_vec()),
        400,
    )
    .await;
    api.send(
        Method::POST,
        create,
        Some(t),
        Body::Raw("text/plain", b"{}".to_vec()),
        400,
    )
    .await;
    api.put(&one, t, json!({}), 400).await;
    api.put(&one, t, json!({"environment": "production"}), 400)
        .await;
    api.post(
        &format!("{one}rotate/"),
        t,
        json!({"private_key": "short"}),
        400,
    )
    .await;
    api.post(
        &format!("{one}update-private-key/"),
        t,
        json!({"private_key": 12345678901_i64}),
        400,
    )
    .await;
    api.post(&format!("{one}verify/"), t, json!({"candidate": "x"}), 400)
        .await;
    api.get("/payments/credentials/provider/paypal/", t, 400)
        .await;
    api.get("/payments/credentials/provider/kopokopo/", t, 400)
        .await;
    api.get(
        "/payments/credentials/provider/kopokopo/?environment=staging",
        t,
        400,
    )
    .await;
    api.get("/payments/credentials/provider/kopokopo/?owner=1", t, 400)
        .await;
    api.send(
        Method::POST,
        "/users/login/",
        None,
        Body::Json(json!({"username": "x"})),
        400,
    )
    .await;
    api.send(
        Method::POST,
        "/users/token/refresh/",
        None,
        Body::Json(json!({"token": "x"})),
        400,
    )
    .await;
    let (auditor, _) = api.login_as(Role::Auditor).await;
    for query in [
        "limit=0",
        "limit=1001",
        "action=credential.steal",
        "outcome=maybe",
        "since=yesterday",
        "until=2026-13-01",
        "cursor=abc",
        "secret=1",
    ] {
        api.get(&format!("/audit/events/?{query}"), &auditor, 400)
            .await;
    }
    api.get("/audit/export/?since=soon", &auditor, 400).await;

    assert_eq!(api.statuses_seen(), BTreeSet::from([200, 201, 400]));
}

#[tokio::test]
async fn provider_failures_answer_502_503_and_504_as_documented() {
    let stub = Stub::start(Kind::KopoKopo, "client-id", "client-secret").await;
    let mut api = Contract::with(
        spawn_app_with(&[
            ("HAZINA_PROVIDER_KOPOKOPO_LIVE_URL", stub.url.as_str()),
            ("HAZINA_PROVIDER_KOPOKOPO_SANDBOX_URL", stub.url.as_str()),
            ("HAZINA_PROVIDER_TIMEOUT_SECONDS", "1"),
        ])
        .await,
    );
    let (m, _) = api.login_as(Role::User).await;
    let mut paths = Vec::new();
    for environment in ["live", "sandbox"] {
        let created = api
            .post(
                "/payments/credentials/",
                &m,
                json!({ "provider": "kopokopo", "environment": environment,
                        "api_key": "client-id", "private_key": "client-secret" }),
                201,
            )
            .await;
        paths.push(format!(
            "/payments/credentials/{}/operations/access-token/",
            created["id"]
        ));
    }
    stub.set_mode(Mode::Status(500));
    let failed = api.post(&paths[0], &m, json!({}), 502).await;
    assert_eq!(failed["provider_status"], 500);
    stub.set_mode(Mode::Hang);
    api.post(&paths[0], &m, json!({}), 504).await;
    stub.set_mode(Mode::Answer);
    api.post(&paths[0], &m, json!({}), 200).await;
    stub.set_mode(Mode::RateLimited(45));
    api.post(&paths[1], &m, json!({}), 503).await;
    // Another user's credential: 404.
    let (other, _) = api.login_as(Role::User).await;
    api.post(&paths[0], &other, json!({}), 404).await;
    assert_eq!(
        api.statuses_seen(),
        BTreeSet::from([200, 201, 404, 502, 503, 504])
    );
}

#[tokio::test]
async fn duplicates_answer_409_as_documented() {
    let mut api = Contract::new().await;
    let (t, _) = api.login_as(Role::User).await;
    let t = t.as_str();
    let sandbox = api.create(t, "jpay", "sandbox").await;
    api.create(t, "jpay", "live").await;

    let again = json!({"provider": "jpay", "api_key": "k2", "private_key": "0123456789", "environment": "live"});
    api.post("/payments/credentials/", t, again, 409).await;
    api.put(
        &format!("/payments/credentials/{sandbox}/"),
        t,
        json!({"environment": "live"}),
        409,
    )
    .await;

    assert!(api.seen.contains(&(
        "put".to_owned(),
        "/payments/credentials/{id}/".to_owned(),
        409
    )));
    assert!(api
        .seen
        .contains(&("post".to_owned(), "/payments/credentials/".to_owned(), 409)));
}

#[tokio::test]
async fn oversized_bodies_answer_413_as_documented() {
    let mut api = Contract::new().await;
    let (t, _) = api.login_as(Role::User).await;
    let t = t.as_str();
    let id = api.create(t, "mpesa", "sandbox").await;
    let huge = "k".repeat(70 * 1024);

    api.post(
        "/payments/credentials/",
        t,
        json!({"provider": "mpesa", "api_key": "k", "private_key": huge, "environment": "live"}),
        413,
    )
    .await;
    api.post(
        &format!("/payments/credentials/{id}/verify/"),
        t,
        json!({"private_key": huge}),
        413,
    )
    .await;
    api.put(
        &format!("/payments/credentials/{id}/"),
        t,
        json!({"api_key": huge}),
        413,
    )
    .await;
    api.send(
        Method::POST,
        "/users/login/",
        None,
        Body::Json(json!({"username": "someone", "password": huge})),
        413,
    )
    .await;

    assert_eq!(api.statuses_seen(), BTreeSet::from([200, 201, 413]));
}

#[tokio::test]
async fn unauthenticated_requests_answer_401_as_documented() {
    let mut api = Contract::new().await;
    let (access, refresh) = api.login_as(Role::User).await;
    let routes = bearer_routes(&api.spec);

    for (method, template) in &routes {
        let path = concrete(template, 1);
        api.send(
            method_of(method),
            &path,
            None,
            acceptable_body(template),
            401,
        )
        .await;
        api.send(
            method_of(method),
            &path,
            Some("not-a-token"),
            acceptable_body(template),
            401,
        )
        .await;
        api.send(
            method_of(method),
            &path,
            Some(&refresh),
            acceptable_body(template),
            401,
        )
        .await;
    }
    let login = json!({"username": "nobody", "password": "wrong password"});
    api.send(Method::POST, "/users/login/", None, Body::Json(login), 401)
        .await;
    let with_access = json!({"refresh_token": access});
    api.send(
        Method::POST,
        "/users/token/refresh/",
        None,
        Body::Json(with_access),
        401,
    )
    .await;

    let answered_401: BTreeSet<Route> = api
        .seen
        .iter()
        .filter(|(_, _, s)| *s == 401)
        .map(|(m, p, _)| (m.clone(), p.clone()))
        .collect();
    // Every table route but /healthz, /readyz, /metrics (token optional), login and refresh.
    assert_eq!(routes.len(), ROUTE_TABLE.len() - 5);
    assert_eq!(answered_401.len(), routes.len() + 2);
}

#[tokio::test]
async fn auditors_answer_403_as_documented_on_every_credentials_route() {
    let mut api = Contract::new().await;
    let (owner, _) = api.login_as(Role::User).await;
    let id = api.create(&owner, "instasend", "sandbox").await;
    let (auditor, _) = api.login_as(Role::Auditor).await;
    let routes: Vec<Route> = table_routes()
        .into_iter()
        .filter(|(_, p)| p.starts_with("/payments/"))
        .collect();

    for (method, template) in &routes {
        let path = concrete(template, id);
        api.send(
            method_of(method),
            &path,
            Some(&auditor),
            acceptable_body(template),
            403,
        )
        .await;
    }

    assert_eq!(routes.len(), 17);
    assert_eq!(
        api.seen.iter().filter(|(_, _, s)| *s == 403).count(),
        routes.len()
    );
}

#[tokio::test]
async fn everyone_but_auditors_answers_403_as_documented_on_every_audit_route() {
    let mut api = Contract::new().await;
    let (user, _) = api.login_as(Role::User).await;
    let (admin, _) = api.login_as(Role::Admin).await;
    let routes: Vec<Route> = table_routes()
        .into_iter()
        .filter(|(_, p)| p.starts_with("/audit/"))
        .collect();

    for token in [&user, &admin] {
        for (method, template) in &routes {
            let sent = match method.as_str() {
                "post" => acceptable_body(template),
                _ => Body::None,
            };
            let body = api
                .send(method_of(method), template, Some(token), sent, 403)
                .await;
            assert_eq!(body["error"], "Only auditors may read the audit log");
        }
    }

    // events, export, verify (GET and POST), the two Merkle proofs, the checkpoint and its key.
    assert_eq!(routes.len(), 8);
    assert_eq!(
        api.seen.iter().filter(|(_, _, s)| *s == 403).count(),
        routes.len()
    );
}

#[tokio::test]
async fn a_vault_without_owner_reveal_answers_403_as_documented() {
    let app = spawn_app_with(&[("HAZINA_OWNER_REVEAL", "false")]).await;
    let mut api = Contract::with(app);
    let (t, _) = api.login_as(Role::User).await;
    let id = api.create(&t, "pagamio", "live").await;

    let body = api
        .get(
            &format!("/payments/credentials/{id}/get-private-key/"),
            &t,
            403,
        )
        .await;

    assert_eq!(
        body["error"],
        "Revealing private keys is reserved for services on this vault"
    );
}

#[tokio::test]
async fn a_vault_without_owner_reveal_answers_an_owners_stk_password_403_as_documented() {
    let app = spawn_app_with(&[("HAZINA_OWNER_REVEAL", "false")]).await;
    let mut api = Contract::with(app);
    let (t, _) = api.login_as(Role::User).await;
    let id = api.create(&t, "mpesa", "sandbox").await;

    let body = api
        .post(
            &format!("/payments/credentials/{id}/operations/stk-password/"),
            &t,
            json!({}),
            403,
        )
        .await;

    assert_eq!(
        body["error"],
        "stk-password discloses the M-Pesa passkey, and revealing is reserved for services on this vault"
    );
}

#[tokio::test]
async fn admin_routes_answer_as_documented() {
    let mut api = Contract::new().await;
    let (admin, _) = api.login_as(Role::Admin).await;
    let (user, _) = api.login_as(Role::User).await;
    let ad = admin.as_str();
    let routes: Vec<Route> = table_routes()
        .into_iter()
        .filter(|(_, p)| {
            p.starts_with("/admin/users/")
                || p.starts_with("/admin/services/")
                || p.starts_with("/admin/grants/")
        })
        .filter(|(_, p)| !p.contains("/sessions/") && !p.contains("/allowlist/"))
        .collect();

    // Role `user` is refused everywhere.
    for (method, template) in &routes {
        let path = concrete(template, 1);
        let body = api
            .send(
                method_of(method),
                &path,
                Some(&user),
                acceptable_body(template),
                403,
            )
            .await;
        assert_eq!(body["error"], "Only administrators may do this");
    }
    // Created, and refused again as a duplicate.
    let carol = json!({ "username": "carol", "password": PASSWORD, "role": "user" });
    api.post("/admin/users/", ad, carol.clone(), 201).await;
    api.post("/admin/users/", ad, carol, 409).await;
    let billing = json!({ "name": "billing", "identity": SERVICE_URI });
    api.post("/admin/services/", ad, billing.clone(), 201).await;
    api.post("/admin/services/", ad, billing, 409).await;
    // Invalid input.
    for bad in [
        json!({ "name": "ledger", "identity": "has space" }),
        json!({ "name": "ledger", "identity": "spiffe://l", "allowed_cidrs": ["10.0.0.0/33"] }),
        json!({ "name": "x", "identity": "spiffe://l" }),
        json!({ "name": "ledger", "identity": "spiffe://l", "is_enabled": true }),
    ] {
        api.post("/admin/services/", ad, bad, 400).await;
    }
    api.post(
        "/admin/users/",
        ad,
        json!({ "username": "dave", "password": PASSWORD, "role": "root" }),
        400,
    )
    .await;
    api.post(
        "/admin/grants/",
        ad,
        json!({ "service": "billing", "owner": "carol", "provider": "paypal" }),
        400,
    )
    .await;
    // Unknown names and ids.
    let unknown = [
        api.post_empty("/admin/users/nobody-here/disable/", ad, 404)
            .await,
        api.post_empty("/admin/services/nothing/disable/", ad, 404)
            .await,
        api.post(
            "/admin/grants/",
            ad,
            json!({ "service": "nothing", "owner": "carol" }),
            404,
        )
        .await,
        api.post(
            "/admin/grants/",
            ad,
            json!({ "service": "billing", "owner": "nobody-here" }),
            404,
        )
        .await,
        api.delete("/admin/grants/4242424242/", ad, 404).await,
    ];

    let messages: Vec<&Value> = unknown.iter().map(|b| &b["error"]).collect();
    assert_eq!(
        messages,
        [
            "No such user",
            "No such service",
            "No such service",
            "No such owner",
            "No such live grant"
        ]
    );
    assert_eq!(routes.len(), 14);
    for status in [403, 201, 409, 400, 404] {
        assert!(
            api.seen
                .iter()
                .any(|(_, p, s)| p.starts_with("/admin/") && *s == status),
            "no admin route answered {status}"
        );
    }
}

#[tokio::test]
async fn services_answer_as_documented_over_mutual_tls() {
    let pki = TestPki::new();
    let mut api = Contract::with(spawn_tls_app(&pki, ClientCerts::Optional).await);
    let (admin, _) = api.login_as(Role::Admin).await;
    let ad = admin.as_str();
    let owner = json!({ "username": "merchant", "password": PASSWORD, "role": "user" });
    api.post("/admin/users/", ad, owner, 201).await;
    let login = json!({ "username": "merchant", "password": PASSWORD });
    let pair = api
        .send(Method::POST, "/users/login/", None, Body::Json(login), 200)
        .await;
    let m = pair["access_token"].as_str().unwrap().to_owned();
    let sandbox = api.create(&m, "jpay", "sandbox").await;
    let live = api.create(&m, "jpay", "live").await;
    let billing = json!({ "name": "billing", "identity": SERVICE_URI });
    api.post("/admin/services/", ad, billing, 201).await;
    let fenced = json!({
        "name": "fenced",
        "identity": "billing.payments.internal",
        "allowed_cidrs": ["10.0.0.0/8"],
    });
    api.post("/admin/services/", ad, fenced, 201).await;
    let grant = json!({ "service": "billing", "owner": "merchant", "environment": "sandbox" });
    api.post("/admin/grants/", ad, grant, 201).await;
    let service = pki.https_client(Some(&pki.client(ClientCert::Valid)));
    let outside = pki.https_client(Some(&pki.client(ClientCert::DnsOnly)));
    let stranger = pki.https_client(Some(&pki.client(ClientCert::NoSan)));
    let anonymous = pki.https_client(None);
    let reveal = |id: i64| format!("/payments/credentials/{id}/get-private-key/");
    let lookup = |env: &str| format!("{LOOKUP}?owner=merchant&provider=jpay&environment={env}");

    let answers = [
        api.send_as(&service, Method::GET, &reveal(sandbox), 200)
            .await,
        api.send_as(&service, Method::GET, &lookup("sandbox"), 200)
            .await,
        api.send_as(&service, Method::GET, &reveal(live), 404).await,
        api.send_as(&service, Method::GET, &lookup("live"), 404)
            .await,
        api.send_as(&service, Method::GET, &lookup("staging"), 400)
            .await,
        api.send_as(&stranger, Method::GET, &reveal(sandbox), 403)
            .await,
        api.send_as(&stranger, Method::GET, &lookup("sandbox"), 403)
            .await,
        api.send_as(&outside, Method::GET, &reveal(sandbox), 403)
            .await,
        api.send_as(&outside, Method::GET, &lookup("sandbox"), 403)
            .await,
        api.send_as(&anonymous, Method::GET, &reveal(sandbox), 401)
            .await,
        api.send_as(&anonymous, Method::GET, &lookup("sandbox"), 401)
            .await,
        api.get(&lookup("sandbox"), &m, 403).await,
        api.send_as(&service, Method::GET, "/payments/credentials/", 403)
            .await,
        api.send_as(&service, Method::GET, "/admin/grants/", 403)
            .await,
    ];

    let errors: Vec<&Value> = answers[2..].iter().map(|b| &b["error"]).collect();
    assert_eq!(answers[0]["private_key"], "sk-original-private-key");
    assert_eq!(answers[0], answers[1]);
    assert_eq!(
        errors,
        [
            NOT_FOUND,
            NOT_FOUND,
            "Invalid environment. Choose one of: sandbox, live",
            "This client certificate is not a registered, enabled service",
            "This client certificate is not a registered, enabled service",
            "Requests from this address are not allowed for this principal",
            "Requests from this address are not allowed for this principal",
            "Authentication credentials were not provided or are invalid",
            "Authentication credentials were not provided or are invalid",
            "This endpoint is for services; owners use /payments/credentials/provider/{provider}/",
            "Services may only fetch the keys they are granted",
            "Services may only fetch the keys they are granted",
        ]
    );
}

#[tokio::test]
async fn credentials_that_are_not_the_callers_answer_404_as_documented() {
    let mut api = Contract::new().await;
    let (owner, _) = api.login_as(Role::User).await;
    let theirs = api.create(&owner, "kopokopo", "sandbox").await;
    let (stranger, _) = api.login_as(Role::User).await;
    let id_routes: Vec<Route> = table_routes()
        .into_iter()
        .filter(|(_, p)| p.starts_with("/payments/") && p.contains("{id}"))
        .collect();

    for (method, template) in &id_routes {
        for id in [
            theirs.to_string(),
            "0".into(),
            "abc".into(),
            "9007199254740992".into(),
        ] {
            let path = template
                .replace("{id}", &id)
                .replace("{name}", "stk-password");
            api.send(
                method_of(method),
                &path,
                Some(&stranger),
                acceptable_body(template),
                404,
            )
            .await;
        }
    }
    api.get("/payments/credentials/provider/kopokopo/", &stranger, 404)
        .await;

    assert_eq!(id_routes.len(), 12);
    let answered_404 = api.seen.iter().filter(|(_, _, s)| *s == 404).count();
    assert_eq!(answered_404, id_routes.len() + 1);
}

#[tokio::test]
async fn requests_no_route_takes_answer_as_documented() {
    let mut api = Contract::new().await;
    let (t, _) = api.login_as(Role::User).await;

    let unknown = api.get("/payments/nothing-here/", &t, 404).await;
    let no_slash = api.get("/payments/credentials", &t, 404).await;
    let patch = api
        .send(
            Method::PATCH,
            "/payments/credentials/1/",
            Some(&t),
            Body::Json(json!({})),
            405,
        )
        .await;
    let get_verify = api.get("/payments/credentials/1/verify/", &t, 405).await;
    let delete_health = api
        .send(Method::DELETE, "/healthz", None, Body::None, 405)
        .await;

    assert_eq!(unknown["error"], "Not found");
    assert_eq!(no_slash["error"], "Not found");
    for refused in [patch, get_verify, delete_health] {
        assert_eq!(refused["error"], "Method not allowed");
    }
}

/// The spec's audit vocabulary is the code's closed enums, exactly (so an entry the code can
/// write always validates, and the spec names nothing the code cannot write).
#[test]
fn the_audit_vocabulary_in_the_spec_is_exactly_the_codes() {
    use hazina::audit::{Action, ActorKind, Outcome, Reason};
    let spec = Spec::load();
    let names = |schema: &str| -> BTreeSet<String> {
        spec.doc["components"]["schemas"][schema]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{schema} has an enum"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let code =
        |all: Vec<&str>| -> BTreeSet<String> { all.into_iter().map(str::to_owned).collect() };
    assert_eq!(
        names("AuditAction"),
        code(Action::ALL.iter().map(|a| a.as_str()).collect())
    );
    assert_eq!(
        names("AuditReason"),
        code(Reason::ALL.iter().map(|r| r.as_str()).collect())
    );
    assert_eq!(
        names("AuditOutcome"),
        code(Outcome::ALL.iter().map(|o| o.as_str()).collect())
    );
    assert_eq!(
        names("AuditActorKind"),
        code(ActorKind::ALL.iter().map(|k| k.as_str()).collect())
    );
}

/// The README's reference table names every route, and nothing that is not one.
#[test]
fn the_readme_endpoint_table_lists_exactly_the_route_table() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let listed: std::collections::BTreeSet<(String, String)> = readme
        .lines()
        .filter_map(|line| {
            let mut cells = line.strip_prefix("| ")?.split(" | ");
            let method = cells.next()?;
            if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method) {
                return None;
            }
            let path = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            Some((method.to_ascii_lowercase(), path.to_owned()))
        })
        .collect();
    let routes: std::collections::BTreeSet<(String, String)> = hazina::routes::ROUTE_TABLE
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert!(routes.len() > 50, "the route table is read");
    assert_eq!(
        listed, routes,
        "README.md's reference table and the route table differ"
    );
}
