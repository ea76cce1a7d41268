//! The HTTP side: the webhook listener and the admin listener (hyper 1.x, HTTP/1.1). Only this
//! folder sees hyper. `pipeline` holds the request pipeline (normalize → dedup → accept under
//! the ack mode), `server` the listeners; every failure is an [`IngressError`] and becomes a
//! status and a JSON body in [`IngressError::status`], the one mapping.

mod dead_letter;
mod listener;
mod pipeline;
mod server;

pub use listener::{Limits, backlog, bind};
pub use pipeline::{Accepted, Acceptor, Ingress, Parts};
pub use server::{AdminState, CLIENT_CLOSED_REQUEST, query_token, serve_admin, serve_webhooks};

use hyper::StatusCode;

/// Compares the presented token with every accepted one (`tokens`; none: anyone is let in),
/// in constant time: no early exit on a mismatch, none on a match either. The ingress and the
/// roster's read API both ask here.
///
/// # Errors
/// Why the request is refused.
pub fn check_token(tokens: &[String], presented: Option<&[u8]>) -> Result<(), Unauthorized> {
    if tokens.is_empty() {
        return Ok(());
    }
    let Some(presented) = presented else {
        return Err(Unauthorized::MissingToken);
    };
    let mut matched = 0u8;
    for expected in tokens {
        let expected = expected.as_bytes();
        let mut diff = u8::from(presented.len() != expected.len());
        for (i, &e) in expected.iter().enumerate() {
            diff |= e ^ presented.get(i).copied().unwrap_or(0);
        }
        matched |= u8::from(diff == 0);
    }
    if matched == 1 {
        Ok(())
    } else {
        Err(Unauthorized::WrongToken)
    }
}

/// Why a request was refused 401 (`hookbus_auth_failures_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthorized {
    /// No token in the header or the query.
    MissingToken,
    /// A token that is none of the accepted ones.
    WrongToken,
}

impl Unauthorized {
    pub fn as_str(self) -> &'static str {
        match self {
            Unauthorized::MissingToken => "missing_token",
            Unauthorized::WrongToken => "wrong_token",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Unauthorized::MissingToken => {
                "no token: send it in the configured header (auth.header) or as ?token="
            }
            Unauthorized::WrongToken => "wrong token",
        }
    }
}

/// Every way a webhook request can fail, each with its status and error code (docs/events.md).
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("{0}")]
    InvalidPayload(String),
    #[error("{}", .0.message())]
    Unauthorized(Unauthorized),
    #[error("{0}")]
    Forbidden(String),
    #[error("no such path; webhooks go to POST /webhooks/pubnub")]
    NotFound,
    #[error("method not allowed; use POST")]
    MethodNotAllowed,
    #[error("body larger than http.max_body_bytes ({0} bytes)")]
    PayloadTooLarge(usize),
    #[error("batch of {count} items exceeds http.max_batch_items ({max})")]
    TooManyItems { count: usize, max: usize },
    #[error("the body did not arrive within http.request_timeout ({0:?})")]
    RequestTimeout(std::time::Duration),
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
            IngressError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            IngressError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            IngressError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            IngressError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            IngressError::PayloadTooLarge(_) | IngressError::TooManyItems { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            IngressError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
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
