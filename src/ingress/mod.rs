//! The HTTP side: the webhook listener and the admin listener (hyper 1.x, HTTP/1.1). Only this
//! folder sees hyper. `accept` holds the request pipeline (normalize → dedup → accept under
//! the ack mode), `server` the listeners; every failure is an [`IngressError`] and becomes a
//! status and a JSON body in [`IngressError::status`], the one mapping.

mod accept;
mod server;

pub use accept::{Accepted, Acceptor, Ingress};
pub use server::{AdminState, serve_admin, serve_webhooks};

use hyper::StatusCode;

/// Every way a webhook request can fail, each with its status and error code (DESIGN §3).
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("{0}")]
    InvalidPayload(String),
    #[error("missing or wrong token (header X-Hookbus-Token or query ?token=)")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("no such path; webhooks go to POST /webhooks/pubnub")]
    NotFound,
    #[error("method not allowed; use POST")]
    MethodNotAllowed,
    #[error("body larger than http.max_body_bytes ({0} bytes)")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    Unavailable(String),
    #[error("reading the request body failed: {0}")]
    BodyRead(String),
}

impl IngressError {
    /// The status and the `error` code of the JSON body.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            IngressError::InvalidPayload(_) | IngressError::BodyRead(_) => {
                (StatusCode::BAD_REQUEST, "invalid_payload")
            }
            IngressError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            IngressError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            IngressError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            IngressError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            IngressError::PayloadTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            IngressError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }

    /// `{"error":"<code>","message":"…"}`.
    pub fn body(&self) -> Vec<u8> {
        let (_, code) = self.status();
        serde_json::to_vec(&serde_json::json!({ "error": code, "message": self.to_string() }))
            .unwrap_or_default()
    }
}
