//! The roster's read API on `roster.listen`: `GET /roster/{channel}` (members paged by uuid)
//! and `GET /roster?prefix=` (channels), behind the ingress's `[auth]`; `/metrics`,
//! `/healthz` and `/readyz` open, as probes and scrapers expect. Errors are JSON with an
//! `error` code; nothing here writes to the store.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::state::{Member, Summary};
use super::store::Store;
use crate::ingress::{check_token, query_token};
use crate::shutdown::Shutdown;

type Body = Full<Bytes>;

/// Default and bounds of `?limit=`.
pub const DEFAULT_LIMIT: usize = 1_000;
pub const MAX_LIMIT: usize = 10_000;

pub struct Api {
    /// Set once the store is connected (until then the API answers 503).
    pub store: Arc<std::sync::OnceLock<Arc<Store>>>,
    pub tokens: Vec<String>,
    /// Lower-case header name of the token.
    pub header: String,
    pub registry: prometheus::Registry,
    /// `Err(reason)` while not ready.
    pub ready: Box<dyn Fn() -> Result<(), String> + Send + Sync>,
    pub health: crate::health::Health,
}

/// Serves until `stop` fires, then lets the answers in progress finish.
pub async fn serve(listener: TcpListener, api: Arc<Api>, stop: Shutdown) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.wait() => break,
        };
        let Ok((stream, _)) = accepted else { continue };
        let api = api.clone();
        let service = service_fn(move |req| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(answer(&api, &req).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .header_read_timeout(std::time::Duration::from_secs(10))
            .timer(hyper_util::rt::TokioTimer::new())
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
}

async fn answer(api: &Api, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET",
        );
    }
    let path = req.uri().path();
    if let Some(response) = probe(api, path) {
        return response;
    }
    if path != "/roster" && !path.starts_with("/roster/") {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "GET /roster/{channel} or /roster?prefix=",
        );
    }
    let presented = req
        .headers()
        .get(api.header.as_str())
        .map(|v| v.as_bytes().to_vec())
        .or_else(|| query_token(req.uri().query()));
    if let Err(why) = check_token(&api.tokens, presented.as_deref()) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", why.as_str());
    }
    let query = match Query::parse(req.uri().query()) {
        Ok(q) => q,
        Err(message) => return error(StatusCode::BAD_REQUEST, "invalid_request", &message),
    };
    let result = match path.strip_prefix("/roster/") {
        Some(encoded) => match percent_decode(encoded) {
            Some(channel) if !channel.is_empty() => channel_page(api, &channel, &query).await,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "the channel is not valid percent-encoded UTF-8",
                );
            }
        },
        None => channel_list(api, &query).await,
    };
    match result {
        Ok(response) => response,
        Err(message) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            &message,
        ),
    }
}

/// `/metrics`, `/healthz`, `/readyz`: open, as scrapers and probes expect.
fn probe(api: &Api, path: &str) -> Option<Response<Body>> {
    Some(match path {
        "/metrics" => {
            let body = crate::metrics::render(&api.registry);
            text(
                StatusCode::OK,
                body,
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }
        "/healthz" => match api.health.check() {
            Ok(()) => text(StatusCode::OK, b"ok\n".to_vec(), "text/plain"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("unhealthy: {why}\n").into_bytes(),
                "text/plain",
            ),
        },
        "/readyz" => match (api.ready)() {
            Ok(()) => text(StatusCode::OK, b"ready\n".to_vec(), "text/plain"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{why}\n").into_bytes(),
                "text/plain",
            ),
        },
        _ => return None,
    })
}

async fn channel_page(api: &Api, channel: &str, query: &Query) -> Result<Response<Body>, String> {
    let store = api.store.get().ok_or("the store is not connected yet")?;
    let page = store
        .page(channel, query.after.as_deref(), query.limit)
        .await
        .map_err(|e| e.to_string())?;
    let Some(page) = page else {
        return Ok(error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no roster state for this channel",
        ));
    };
    let summary: Summary = serde_json::from_slice(&page.summary).map_err(|e| e.to_string())?;
    let mut members = Vec::with_capacity(page.members.len());
    for value in &page.members {
        let member: Member = serde_json::from_slice(value).map_err(|e| e.to_string())?;
        members.push(json!({
            "uuid": member.uuid,
            "state": member.state,
            "since_ms": member.since_ms,
            "last_ms": member.last_ms,
        }));
    }
    let body = json!({
        "channel": summary.channel,
        "occupancy": summary.occupancy,
        "members": members,
        "version": summary.version,
        "updated_at_ms": summary.updated_at_ms,
        "next": page.next,
    });
    Ok(json_response(StatusCode::OK, &body))
}

async fn channel_list(api: &Api, query: &Query) -> Result<Response<Body>, String> {
    let store = api.store.get().ok_or("the store is not connected yet")?;
    let (summaries, next) = store
        .channels(&query.prefix, query.after.as_deref(), query.limit)
        .await
        .map_err(|e| e.to_string())?;
    let mut channels = Vec::with_capacity(summaries.len());
    for value in &summaries {
        let s: Summary = serde_json::from_slice(value).map_err(|e| e.to_string())?;
        channels.push(json!({
            "channel": s.channel,
            "occupancy": s.occupancy,
            "members": s.members,
            "version": s.version,
        }));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({ "channels": channels, "next": next }),
    ))
}

/// `limit`, `after` and `prefix`, checked.
#[derive(Debug, PartialEq)]
struct Query {
    limit: usize,
    after: Option<String>,
    prefix: String,
}

impl Query {
    fn parse(query: Option<&str>) -> Result<Query, String> {
        let mut out = Query {
            limit: DEFAULT_LIMIT,
            after: None,
            prefix: String::new(),
        };
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*name {
                "limit" => {
                    out.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| format!("limit must be 1–{MAX_LIMIT}, got {value:?}"))?;
                }
                "after" => out.after = Some(value.into_owned()),
                "prefix" => out.prefix = value.into_owned(),
                _ => {}
            }
        }
        Ok(out)
    }
}

/// Strict percent-decoding of a path segment: `%XX` must be hex and the result UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn text(status: StatusCode, body: Vec<u8>, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    text(status, body.to_string().into_bytes(), "application/json")
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json_response(status, &json!({ "error": code, "message": message }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_strictly_percent_decoded() {
        assert_eq!(
            percent_decode("room%2Elobby").as_deref(),
            Some("room.lobby")
        );
        assert_eq!(percent_decode("caf%C3%A9").as_deref(), Some("café"));
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("cut%4"), None);
        assert_eq!(percent_decode("%FF"), None, "not UTF-8");
    }

    #[test]
    fn limit_is_bounded() {
        assert_eq!(Query::parse(None).unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(
            Query::parse(Some("limit=10&after=u9")).unwrap(),
            Query {
                limit: 10,
                after: Some("u9".into()),
                prefix: String::new()
            }
        );
        assert!(Query::parse(Some("limit=0")).is_err());
        assert!(Query::parse(Some("limit=10001")).is_err());
        assert!(Query::parse(Some("limit=x")).is_err());
    }
}
