//! The two listeners. Webhooks: `POST /webhooks/pubnub[/{anything}]` on `http.listen`, every
//! response counted and timed. Admin: `/metrics`, `/healthz`, `/readyz` on `admin.listen`,
//! never counted. Both stop accepting on shutdown and let in-flight requests finish.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{Accepted, Ingress, IngressError};
use crate::publisher::now_ms;
use crate::shutdown::Shutdown;

const WEBHOOK_PATH: &str = "/webhooks/pubnub";
const TOKEN_HEADER: &str = "x-hookbus-token";

type Body = Full<Bytes>;

/// Accepts connections until `stop` fires, then waits for in-flight requests.
pub async fn serve_webhooks(
    listener: TcpListener,
    ingress: Arc<Ingress>,
    max_connections: usize,
    stop: Shutdown,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.wait() => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            },
            _ = stop.wait() => break,
        };
        let _ = stream.set_nodelay(true);
        let ingress = ingress.clone();
        let service = service_fn(move |req| {
            let ingress = ingress.clone();
            async move { Ok::<_, Infallible>(webhook(&ingress, req).await) }
        });
        let conn = http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, "webhook connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
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
        self.metrics.http_response(code);
        self.metrics
            .ack_duration
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Answer<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.record(CLIENT_CLOSED_REQUEST);
        }
    }
}

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
        Ok(accepted) => {
            let body = if accepted.rejected > 0 {
                format!(
                    "{{\"accepted\":{},\"duplicates\":{},\"rejected\":{}}}",
                    accepted.accepted, accepted.duplicates, accepted.rejected
                )
            } else {
                format!(
                    "{{\"accepted\":{},\"duplicates\":{}}}",
                    accepted.accepted, accepted.duplicates
                )
            };
            json(StatusCode::OK, body.into_bytes())
        }
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
                    tracing::info!(%message, "webhook rejected");
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
            .get(TOKEN_HEADER)
            .map(|v| v.as_bytes().to_vec())
            .or_else(|| query_token(req.uri().query()));
        if !ingress.authorized(presented.as_deref()) {
            return Err(IngressError::Unauthorized);
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
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<LengthLimitError>() => {
            return Err(IngressError::PayloadTooLarge(limit));
        }
        Err(error) => return Err(IngressError::BodyRead(error.to_string())),
    };
    ingress.handle(body, received_ms).await
}

/// The `token` query parameter, percent-decoded.
fn query_token(query: Option<&str>) -> Option<Vec<u8>> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .map(percent_decode)
}

fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
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
    /// Readiness as the ack mode defines it (spool headroom, queue room, sink connected).
    pub ready: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
    /// Liveness: fails when a component cannot recover (`/healthz` 503).
    pub health: crate::health::Health,
    pub draining: Shutdown,
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `stop` fires.
pub async fn serve_admin(listener: TcpListener, state: Arc<AdminState>, stop: Shutdown) {
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    continue;
                }
            },
            _ = stop.wait() => break,
        };
        let state = state.clone();
        let service = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(admin(&state, &req)) }
        });
        let conn =
            graceful.watch(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
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
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".to_owned());
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
        "/healthz" => match state.health.check() {
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
        _ => text(StatusCode::NOT_FOUND, "not found\n".to_owned()),
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
        assert_eq!(query_token(Some("a=1")), None);
        assert_eq!(query_token(None), None);
    }
}
