//! openapi.yaml is kept true (SPEC §2.6): it names exactly the routes the server serves, and
//! every answer the API gives in a realistic flow has a status the spec lists for that
//! operation and a body that validates against the schema it gives (JSON Schema 2020-12,
//! every `$ref` resolved inside the document). Requests the server accepts must validate
//! against the spec's request-body schemas too.

use std::collections::BTreeSet;

use jsonschema::{Draft, Registry, Validator};
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Value};

use hazina::domain::Role;
use hazina::routes::ROUTE_TABLE;

use crate::helpers::*;

/// The base URI the whole document is registered under, so `#/components/...` resolves.
const SPEC_URI: &str = "urn:hazina:openapi";
const SPEC_YAML: &str = include_str!("../../openapi.yaml");
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
            Some(other) => Err(format!("only JSON content is checked, not {other}")),
            None if body.is_null() => Ok(()),
            None => Err(format!("the spec gives no body, but got {body}")),
        }
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
        let sent = match body {
            Body::None => None,
            Body::Json(v) => {
                req = req.json(&v);
                Some(v)
            }
            Body::Raw(content_type, bytes) => {
                req = req.header(CONTENT_TYPE, content_type).body(bytes);
                None
            }
        };
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let body: Value = if text.is_empty() {
            Value::Null
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
                self.spec
                    .check_accepted_request(&route, sent.as_ref())
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
}

// ---------------------------------------------------------------------------------------
// The API answers as documented.

#[tokio::test]
async fn every_route_answers_as_documented_through_a_full_flow() {
    let mut api = Contract::new().await;

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
    let succeeded: BTreeSet<Route> = api
        .seen
        .iter()
        .filter(|(_, _, s)| (200..300).contains(s))
        .map(|(m, p, _)| (m.clone(), p.clone()))
        .collect();
    let untested: Vec<Route> = table_routes().difference(&succeeded).cloned().collect();
    assert!(untested.is_empty(), "routes never exercised: {untested:?}");
}

/// A path of `template` with its parameters filled in.
fn concrete(template: &str, id: i64) -> String {
    template
        .replace("{id}", &id.to_string())
        .replace("{provider}", "kopokopo")
}

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
        t if t.ends_with("/update-private-key/")
            || t.ends_with("/rotate/")
            || t.ends_with("/verify/") =>
        {
            Body::Json(json!({ "private_key": "sk-acceptable-key" }))
        }
        _ => Body::None,
    }
}

/// Every served route that requires a bearer token, per the spec.
fn bearer_routes(spec: &Spec) -> Vec<Route> {
    table_routes()
        .into_iter()
        .filter(|(method, path)| {
            spec.doc["paths"][path.as_str()][method.as_str()]["security"] != json!([])
        })
        .collect()
}

fn method_of(name: &str) -> Method {
    Method::from_bytes(name.to_ascii_uppercase().as_bytes()).unwrap()
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

    assert_eq!(api.statuses_seen(), BTreeSet::from([200, 201, 400]));
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
    assert_eq!(routes.len(), 12);
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

    assert_eq!(routes.len(), 11);
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
async fn credentials_that_are_not_the_callers_answer_404_as_documented() {
    let mut api = Contract::new().await;
    let (owner, _) = api.login_as(Role::User).await;
    let theirs = api.create(&owner, "kopokopo", "sandbox").await;
    let (stranger, _) = api.login_as(Role::User).await;
    let id_routes: Vec<Route> = table_routes()
        .into_iter()
        .filter(|(_, p)| p.contains("{id}"))
        .collect();

    for (method, template) in &id_routes {
        for id in [
            theirs.to_string(),
            "0".into(),
            "abc".into(),
            "9007199254740992".into(),
        ] {
            let path = template.replace("{id}", &id);
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

    assert_eq!(id_routes.len(), 8);
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
