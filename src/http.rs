//! The HTTP layer's view of a request, computed once and handed down as plain data: its id,
//! and the [`RequestMeta`] (client address, client certificate, request id) that audit
//! entries record. Nothing below this layer knows an `HttpRequest`.

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest};

use crate::audit::RequestMeta;

/// The id of one request: on every log line (via the span) and in `X-Request-Id`.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestMeta {
    /// The request's metadata: the client's address (the TCP peer, or what a trusted proxy
    /// says: see [`crate::limits::client_ip`]), its verified client certificate's
    /// fingerprint, and the request id.
    pub fn of(req: &HttpRequest) -> Self {
        RequestMeta {
            source_ip: crate::limits::client_ip(req),
            cert_fingerprint: req
                .conn_data::<crate::tls::PeerIdentity>()
                .map(|p| p.fingerprint.clone()),
            request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
        }
    }
}

impl FromRequest for RequestMeta {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(Ok(RequestMeta::of(req)))
    }
}
