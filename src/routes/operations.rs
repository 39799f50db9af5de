//! Provider operations (SPEC §9.3): the vault computes what the provider needs, so the
//! long-lived secrets never leave it. Thin handlers over the release gate ([`crate::vault`]):
//! authenticate, parse and check the body, find through the gate, shape the answer.

use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use base64::Engine;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use validator::Validate;

use super::credentials::{find_for_service, grace_since, LookupQuery};
use crate::audit::{Action, Actor, Outcome, Reason, RequestMeta};
use crate::domain::{CredentialId, Provider};
use crate::error::ApiError;
use crate::http::principal::bearer_token;
use crate::http::{AuthenticatedService, Caller};
use crate::providers::compute;
use crate::routes::JsonObject;
use crate::state::AppState;
use crate::vault::{self, Address, Answer, Lookup, Opened, Operation, Reference, Refusal, Scope};

/// The largest webhook body accepted, base64 (what fits in the request-size limit anyway).
const BODY_BASE64_MAX: u64 = 1 << 20;

fn reference_pattern(raw: &str) -> Result<(), validator::ValidationError> {
    if Reference::is_valid(raw) {
        Ok(())
    } else {
        Err(validator::ValidationError::new("reference")
            .with_message("reference must be 1 to 64 of A-Z a-z 0-9 . _ : / -".into()))
    }
}

/// Every operation's body; each operation reads the fields it needs (SPEC §9.3).
#[derive(Debug, Default, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct OperationBody {
    /// The caller's payment reference (order id, CheckoutRequestID).
    #[validate(custom(function = "reference_pattern"))]
    reference: Option<String>,
    /// `stk-password`: `YYYYMMDDHHmmss`, Nairobi time.
    #[validate(length(equal = 14, message = "timestamp must be YYYYMMDDHHmmss"))]
    timestamp: Option<String>,
    /// `webhook-verify` (KopoKopo, JPay): the raw request body, base64.
    #[validate(length(min = 1, max = BODY_BASE64_MAX, message = "body_base64 must be 1 to 1,048,576 characters"))]
    body_base64: Option<String>,
    /// `webhook-verify` (KopoKopo, JPay): the signature header's value, hex.
    #[validate(length(min = 1, max = 256, message = "signature must be 1 to 256 characters"))]
    signature: Option<String>,
    /// `webhook-verify` (IntaSend): the challenge the webhook carried.
    #[validate(length(
        min = 1,
        max = 4096,
        message = "challenge must be 1 to 4,096 characters"
    ))]
    challenge: Option<String>,
}

/// The first message of a failed validation (safe to show: it names fields, never values).
fn invalid(errors: validator::ValidationErrors) -> ApiError {
    let message = errors
        .field_errors()
        .into_iter()
        .flat_map(|(field, errs)| {
            errs.iter().map(move |e| {
                e.message
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| format!("{field} is invalid"))
            })
        })
        .next()
        .unwrap_or_else(|| "The request body is invalid".into());
    ApiError::Invalid(message)
}

/// An operation named in the path: one of the table's, never `reveal` (that is
/// `get-private-key`); anything else is a JSON 404.
fn operation_named(name: &str) -> Result<Operation, ApiError> {
    match Operation::parse(name) {
        Some(op) if op != Operation::Reveal => Ok(op),
        _ => Err(ApiError::NotFound("No such operation")),
    }
}

struct Checked {
    operation: Operation,
    reference: Option<Reference>,
    body: OperationBody,
    /// The STK timestamp to use: the caller's (checked) or now's.
    timestamp: String,
}

fn check(state: &AppState, operation: Operation, body: OperationBody) -> Result<Checked, ApiError> {
    body.validate().map_err(invalid)?;
    let reference = body
        .reference
        .as_deref()
        .map(Reference::parse)
        .transpose()?;
    let now = state.clock.now();
    let timestamp = match (&body.timestamp, operation) {
        (Some(t), Operation::StkPassword) => {
            compute::check_daraja_timestamp(t, now).map_err(ApiError::Invalid)?;
            t.clone()
        }
        (Some(_), _) => {
            return Err(ApiError::Invalid(format!(
                "timestamp is not used by {}",
                operation.as_str()
            )))
        }
        (None, Operation::StkPassword) => compute::daraja_timestamp(now),
        (None, _) => String::new(),
    };
    Ok(Checked {
        operation,
        reference,
        body,
        timestamp,
    })
}

/// The operation's body, read once the caller is authenticated and the lookup made, with the
/// app's JSON limits and errors: by then a small body is already buffered, so reading it
/// costs no further wake-up of the connection's task (an extractor would wait for it first).
async fn body_of(
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<OperationBody, actix_web::Error> {
    let body = web::Json::<JsonObject<OperationBody>>::from_request(req, &mut payload.into_inner())
        .await?;
    Ok(body.into_inner().0)
}

/// `POST /payments/credentials/{id}/operations/{name}/`: an owner on their credential, or a
/// service whose grant names the operation.
pub async fn by_id(
    state: web::Data<AppState>,
    req: HttpRequest,
    meta: RequestMeta,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let (raw_id, name) = path.into_inner();
    // The caller is authenticated before anything about the request is answered.
    let named = operation_named(&name);
    let requested = CredentialId::parse(&raw_id);
    let grace = grace_since(&state);
    let keyring = state.keyring.clone();
    if bearer_token(&req).is_none() {
        let service =
            AuthenticatedService::from_request(&req, &mut actix_web::dev::Payload::None).await?;
        let operation = named?;
        let address = requested.map(Address::Id);
        let lookup = find_for_service(&state, &service, address, operation, grace).await?;
        let checked = check(&state, operation, body_of(&req, payload).await?)?;
        let caller = vault::Caller {
            gate: state.gate(),
            actor: Actor::service(&service),
            meta: &meta,
        };
        return Ok(run(&caller, checked, requested, lookup).await?);
    }
    let wanted = named.as_ref().ok().copied();
    let (user, lookup) =
        super::credentials::confirmed_with(&req, move |c, owner| match (requested, wanted) {
            (Some(id), Some(operation)) => vault::find(
                c,
                &keyring,
                Scope::Owner(owner),
                &Address::Id(id),
                operation,
                grace,
            )
            .map(Some),
            _ => Ok(None),
        })
        .await?;
    let checked = check(&state, named?, body_of(&req, payload).await?)?;
    let operation = checked.operation;
    let caller = vault::Caller {
        gate: state.gate(),
        actor: Actor::user(&user),
        meta: &meta,
    };
    let denied = |reason| {
        crate::audit::Event::new(
            state.clock.now_micros(),
            Actor::user(&user),
            &meta,
            Action::CredentialOperation,
        )
        .operation(
            operation.as_str(),
            checked.reference.clone().map(Reference::into_inner),
        )
        .outcome(Outcome::Denied, Some(reason))
    };
    if let Err(e) = user.require_owner() {
        state
            .audit
            .record_best_effort(denied(Reason::RoleForbidden))
            .await;
        return Err(e.into());
    }
    if !state.config.owner_operations {
        state
            .audit
            .record_best_effort(denied(Reason::OwnerOperationsDisabled))
            .await;
        return Err(ApiError::Forbidden(
            "Provider operations are reserved for services on this vault",
        )
        .into());
    }
    // An answer that gives a stored secret away is a reveal, whatever its name (SPEC §14).
    if operation.disclosure().is_some() && !state.config.owner_reveal {
        state
            .audit
            .record_best_effort(denied(Reason::OwnerRevealDisabled))
            .await;
        return Err(ApiError::Forbidden(
            "stk-password discloses the M-Pesa passkey, and revealing is reserved for services on this vault",
        )
        .into());
    }
    Ok(run(
        &caller,
        checked,
        requested,
        lookup.unwrap_or(Lookup::NotFound),
    )
    .await?)
}

/// `POST /payments/credentials/lookup/operations/{name}/?owner=U&provider=P&environment=E`:
/// services address the owner's credential without knowing its id.
pub async fn by_lookup(
    state: web::Data<AppState>,
    caller: Caller,
    meta: RequestMeta,
    path: web::Path<String>,
    query: web::Query<LookupQuery>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let Caller::Service(service) = &caller else {
        return Err(ApiError::Forbidden(
            "This endpoint is for services; owners use /payments/credentials/{id}/operations/{name}/",
        )
        .into());
    };
    let operation = operation_named(&path)?;
    let address = query.address()?;
    let grace = grace_since(&state);
    let gate = vault::Caller {
        gate: state.gate(),
        actor: Actor::service(service),
        meta: &meta,
    };
    let lookup = find_for_service(&state, service, address, operation, grace).await?;
    let checked = check(&state, operation, body_of(&req, payload).await?)?;
    Ok(run(&gate, checked, None, lookup).await?)
}

#[derive(Serialize)]
struct StkPassword<'a> {
    business_short_code: &'a str,
    password: String,
    timestamp: &'a str,
}

#[derive(Serialize)]
struct SecurityCredential<'a> {
    security_credential: String,
    certificate_sha256: &'a str,
}

/// `access-token`: the provider's token, never the secret it was exchanged for.
#[derive(Serialize)]
struct AccessToken<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_at: String,
}

#[derive(Serialize)]
struct WebhookVerdict {
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<i32>,
}

fn secret<'a>(o: &'a Opened<'_>, name: &str) -> Result<&'a secrecy::SecretString, Refusal> {
    o.contents.secrets.get(name).ok_or_else(|| {
        Refusal::Missing(format!(
            "This credential has no {name}; set it with a rotation first"
        ))
    })
}

fn json<T: Serialize>(value: &T, reason: Option<Reason>) -> Result<Answer<Vec<u8>>, Refusal> {
    Ok(Answer {
        value: serde_json::to_vec(value).map_err(|e| Refusal::Storage(e.into()))?,
        reason,
    })
}

async fn run(
    caller: &vault::Caller<'_>,
    checked: Checked,
    requested: Option<CredentialId>,
    lookup: Lookup,
) -> Result<HttpResponse, ApiError> {
    let Checked {
        operation,
        reference,
        body,
        timestamp,
    } = checked;
    if operation == Operation::AccessToken {
        let issued = vault::access_token(caller, reference, requested, lookup).await?;
        let answer = serde_json::to_vec(&AccessToken {
            access_token: issued.access.value.expose_secret(),
            token_type: "Bearer",
            expires_at: crate::clock::rfc3339(issued.access.expires_at),
        })
        .map_err(ApiError::internal)?;
        return Ok(no_store_json(answer));
    }
    let answer = vault::release(
        caller,
        operation,
        reference,
        requested,
        lookup,
        |o| match operation {
            Operation::StkPassword => {
                let short_code =
                    o.profile
                        .settings
                        .get("business_short_code")
                        .ok_or_else(|| {
                            Refusal::Missing("This credential has no business_short_code".into())
                        })?;
                json(
                    &StkPassword {
                        business_short_code: short_code,
                        password: compute::stk_password(
                            short_code,
                            secret(o, "passkey")?,
                            &timestamp,
                        ),
                        timestamp: &timestamp,
                    },
                    None,
                )
            }
            Operation::SecurityCredential => {
                let cert = o.certificate.ok_or_else(|| {
                    Refusal::Missing("No provider certificate is installed".into())
                })?;
                let info = compute::parse_certificate(&cert.pem).map_err(|_| {
                    Refusal::Storage(anyhow::anyhow!("stored certificate does not parse"))
                })?;
                let credential =
                    compute::security_credential(&info.der, secret(o, "initiator_password")?)
                        .ok_or_else(|| {
                            Refusal::Storage(anyhow::anyhow!("RSA encryption failed"))
                        })?;
                json(
                    &SecurityCredential {
                        security_credential: credential,
                        certificate_sha256: &cert.sha256,
                    },
                    None,
                )
            }
            Operation::WebhookVerify => webhook_verify(o, &body),
            Operation::Reveal | Operation::AccessToken => Err(Refusal::NoSuchOperation),
        },
    )
    .await?;
    Ok(no_store_json(answer))
}

fn no_store_json(body: Vec<u8>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .content_type("application/json")
        .body(body)
}

fn webhook_verify(o: &Opened<'_>, body: &OperationBody) -> Result<Answer<Vec<u8>>, Refusal> {
    let verdict = if o.provider == Provider::InstaSend {
        let Some(challenge) = &body.challenge else {
            return Err(Refusal::Invalid(
                "IntaSend webhooks are verified by their challenge: send challenge".into(),
            ));
        };
        let valid = compute::challenge_matches(secret(o, "webhook_challenge")?, challenge);
        WebhookVerdict {
            valid,
            version: None,
        }
    } else {
        let (Some(raw), Some(signature)) = (&body.body_base64, &body.signature) else {
            return Err(Refusal::Invalid(
                "Send body_base64 (the raw request body) and signature".into(),
            ));
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map_err(|_| Refusal::Invalid("body_base64 must be standard base64".into()))?;
        let current = secret(o, "webhook_secret")?;
        let matched = if compute::hmac_hex_matches(current, &raw, signature) {
            Some(o.version)
        } else {
            o.previous.as_ref().and_then(|(version, contents)| {
                contents
                    .secrets
                    .get("webhook_secret")
                    .filter(|s| compute::hmac_hex_matches(s, &raw, signature))
                    .map(|_| *version)
            })
        };
        WebhookVerdict {
            valid: matched.is_some(),
            version: matched,
        }
    };
    let reason = (!verdict.valid).then_some(Reason::SignatureMismatch);
    json(&verdict, reason)
}
