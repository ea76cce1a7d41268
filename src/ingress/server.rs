//! The two listeners. Webhooks: `POST /webhooks/pubnub[/{anything}]` on `http.listen`, every
//! response counted and timed. Admin: `/metrics`, `/healthz`, `/readyz` on `admin.listen`,
//! never counted. Connection limits, timeouts and the stop are [`listener`]'s.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use super::listener::{self, Answering, Closed, Limits};
use super::{Accepted, Ingress, IngressError};
use crate::logs::Sampled;
use crate::metrics::Metrics;
use crate::publisher::now_ms;
use crate::shutdown::Shutdown;

const WEBHOOK_PATH: &str = "/webhooks/pubnub";

type Body = Full<Bytes>;

/// Reports what the listener did to the metrics (`listener` label: `webhook` or `admin`).
struct Counted {
    metrics: Metrics,
    listener: &'static str,
}

impl listener::Events for Counted {
    fn closed(&self, reason: Closed) {
        self.metrics
            .connection_closed(self.listener, reason.as_str());
    }

    fn refused(&self, status: u16) {
        if self.listener == "webhook" {
            self.metrics.answered(status, 0.0);
        }
    }
}

/// Serves webhooks until `stop` fires, then lets in-flight requests finish (for
/// `limits.drain` at most).
pub async fn serve_webhooks(
    listener: TcpListener,
    ingress: Arc<Ingress>,
    limits: Limits,
    stop: Shutdown,
) {
    let events = Arc::new(Counted {
        metrics: ingress.metrics.clone(),
        listener: "webhook",
    });
    listener::serve(listener, limits, events, stop, move |activity| {
        let ingress = ingress.clone();
        service_fn(move |req| {
            let ingress = ingress.clone();
            Answering::new(activity.clone(), async move {
                Ok::<_, Infallible>(webhook(&ingress, req).await)
            })
        })
    })
    .await;
}

/// Counts a request whose client left before its answer (hyper drops the service future): as
/// code 499, as nginx logs it, and in the ack latency histogram with the time it waited.
struct Answer<'a> {
    metrics: &'a crate::metrics::Metrics,
    started: Instant,
    answered: bool,
}

impl Answer<'_> {
    fn record(&mut self, code: u16) {
        self.answered = true;
        self.metrics
            .answered(code, self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Answer<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.record(CLIENT_CLOSED_REQUEST);
        }
    }
}

/// One line a second for rejected and for unauthorized webhooks (`suppressed` says how many
/// were not logged; `hookbus_http_requests_total` counts them all).
static REJECTED_LOG: Sampled = Sampled::per_second();
static UNAUTHORIZED_LOG: Sampled = Sampled::per_second();

/// The `code` counted for a request whose client disconnected before the answer.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

async fn webhook(ingress: &Arc<Ingress>, req: Request<Incoming>) -> Response<Body> {
    let mut answer = Answer {
        metrics: &ingress.metrics,
        started: Instant::now(),
        answered: false,
    };
    let result = handle(ingress, req).await;
    let response = match result {
        Ok(accepted) => json(StatusCode::OK, accepted_body(accepted)),
        Err(error) => {
            let (status, _) = error.status();
            let mut response = json(status, error.body());
            match &error {
                IngressError::Unavailable(message) => {
                    tracing::debug!(%message, "webhook answered 503");
                    let secs = ingress.retry_after.as_secs().max(1).to_string();
                    if let Ok(value) = HeaderValue::from_str(&secs) {
                        response.headers_mut().insert(header::RETRY_AFTER, value);
                    }
                }
                IngressError::MethodNotAllowed => {
                    response
                        .headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static("POST"));
                }
                IngressError::InvalidPayload(message) => {
                    if let Some(suppressed) = REJECTED_LOG.admit(now_ms()) {
                        tracing::info!(%message, suppressed, "webhook rejected");
                    }
                }
                IngressError::Unauthorized(why) => {
                    // Never the token, the query string or the URI.
                    if let Some(suppressed) = UNAUTHORIZED_LOG.admit(now_ms()) {
                        tracing::info!(reason = why.as_str(), suppressed, "webhook unauthorized");
                    }
                }
                IngressError::RequestTimeout(_) => {
                    // hyper closes the connection after this answer.
                    ingress
                        .metrics
                        .connection_closed("webhook", Closed::BodyTimeout.as_str());
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                _ => {}
            }
            response
        }
    };
    answer.record(response.status().as_u16());
    response
}

async fn handle(ingress: &Arc<Ingress>, req: Request<Incoming>) -> Result<Accepted, IngressError> {
    let received_ms = now_ms();
    let path = req.uri().path();
    let is_webhook = path == WEBHOOK_PATH
        || path
            .strip_prefix(WEBHOOK_PATH)
            .is_some_and(|rest| rest.starts_with('/'));
    if !is_webhook {
        return Err(IngressError::NotFound);
    }
    if req.method() != Method::POST {
        return Err(IngressError::MethodNotAllowed);
    }
    if ingress.token_required() {
        let presented = req
            .headers()
            .get(ingress.auth_header.as_str())
            .map(|v| v.as_bytes().to_vec())
            .or_else(|| query_token(req.uri().query()));
        if let Err(why) = ingress.authorized(presented.as_deref()) {
            ingress.metrics.auth_failure(why.as_str());
            return Err(IngressError::Unauthorized(why));
        }
    }
    let limit = ingress.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(IngressError::PayloadTooLarge(limit));
    }
    // The body counts against the budget of bodies in flight from now until its events are
    // accepted; without a declared length, the largest allowed body is reserved.
    let budget = ingress.reserve_body(declared.map_or(limit, |n| n as usize))?;
    let mut read = std::pin::pin!(read_body(req.into_body(), declared, limit));
    // A small body has usually arrived with the head: read it without arming a timer.
    let read = match futures::poll!(read.as_mut()) {
        std::task::Poll::Ready(read) => Ok(read),
        std::task::Poll::Pending => tokio::time::timeout(ingress.request_timeout, read).await,
    };
    let body = match read {
        Err(_) => return Err(IngressError::RequestTimeout(ingress.request_timeout)),
        Ok(Ok(body)) => body,
        Ok(Err(error)) if error.is::<LengthLimitError>() => {
            return Err(IngressError::PayloadTooLarge(limit));
        }
        Ok(Err(error)) => return Err(IngressError::BodyRead(error.to_string())),
    };
    ingress.handle(body, received_ms, budget).await
}

/// Reads the body into one buffer sized by its declared length, each frame copied in and
/// freed as it arrives: the body costs its size once (collecting the frames and then joining
/// them would hold it twice).
async fn read_body(
    body: Incoming,
    declared: Option<u64>,
    limit: usize,
) -> Result<Bytes, Box<dyn std::error::Error + Send + Sync>> {
    let mut body = Limited::new(body, limit);
    let capacity = declared.map_or(0, |n| usize::try_from(n).unwrap_or(limit).min(limit));
    let mut buffer = bytes::BytesMut::with_capacity(capacity);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer.freeze())
}

/// The `token` query parameter, decoded as `application/x-www-form-urlencoded`.
pub fn query_token(query: Option<&str>) -> Option<Vec<u8>> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned().into_bytes())
}

/// The 200's body; the answers to one event (new or a duplicate) without formatting.
fn accepted_body(accepted: crate::ingress::Accepted) -> Bytes {
    match (accepted.accepted, accepted.duplicates, accepted.rejected) {
        (1, 0, 0) => Bytes::from_static(br#"{"accepted":1,"duplicates":0}"#),
        (0, 1, 0) => Bytes::from_static(br#"{"accepted":0,"duplicates":1}"#),
        (a, d, 0) => format!(r#"{{"accepted":{a},"duplicates":{d}}}"#).into(),
        (a, d, r) => format!(r#"{{"accepted":{a},"duplicates":{d},"rejected":{r}}}"#).into(),
    }
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// What the admin listener needs.
pub struct AdminState {
    pub registry: prometheus::Registry,
    pub metrics: Metrics,
    /// Readiness as the ack mode defines it (spool headroom, queue room, sink connected).
    pub ready: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
    /// Liveness: fails when a component cannot recover (`/healthz` 503).
    pub health: crate::health::Health,
    /// Start-up recovery: `/healthz` also fails when it stops making progress.
    pub recovery: crate::health::Recovery,
    pub draining: Shutdown,
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `stop` fires.
pub async fn serve_admin(
    listener: TcpListener,
    state: Arc<AdminState>,
    limits: Limits,
    stop: Shutdown,
) {
    let events = Arc::new(Counted {
        metrics: state.metrics.clone(),
        listener: "admin",
    });
    listener::serve(listener, limits, events, stop, move |activity| {
        let state = state.clone();
        service_fn(move |req| {
            let state = state.clone();
            Answering::new(activity.clone(), async move {
                Ok::<_, Infallible>(admin(&state, &req))
            })
        })
    })
    .await;
}

fn admin(state: &AdminState, req: &Request<Incoming>) -> Response<Body> {
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = json(
            StatusCode::METHOD_NOT_ALLOWED,
            br#"{"error":"method_not_allowed","message":"use GET"}"#.to_vec(),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(crate::metrics::render(
                &state.registry,
            ))));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/healthz" => match state.health.check().and_then(|()| state.recovery.liveness()) {
            Ok(()) => text(StatusCode::OK, "ok\n".to_owned()),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("unhealthy: {reason}\n"),
            ),
        },
        "/readyz" => {
            if state.draining.is_draining() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned());
            }
            match (state.ready)() {
                Ok(()) => text(StatusCode::OK, "ready\n".to_owned()),
                Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
            }
        }
        _ => json(
            StatusCode::NOT_FOUND,
            br#"{"error":"not_found","message":"the admin port serves /metrics, /healthz and /readyz"}"#
                .to_vec(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_token_is_decoded() {
        assert_eq!(
            query_token(Some("a=1&token=s%2Fx+y")),
            Some(b"s/x y".to_vec())
        );
        assert_eq!(query_token(Some("token=abc%")), Some(b"abc%".to_vec()));
        assert_eq!(
            query_token(Some("tok=1&token=%E2%82%AC")),
            Some("€".as_bytes().to_vec())
        );
        assert_eq!(query_token(Some("a=1")), None);
        assert_eq!(query_token(None), None);
    }
}
