//! A stand-in for PubNub's Here Now endpoint, for tests: on 127.0.0.1:0 it answers in Here
//! Now's documented shape from the member lists it is given (paged by `limit`/`offset`, state
//! with `state=1`), or as told (any status and body, or never), and records every request. It
//! uses nothing of the client, so the integration tests can take it as it is.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// How the server answers for one channel.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Here Now's 200 for a channel with this occupancy and these members (uuid, state).
    Members {
        occupancy: u64,
        members: Vec<(String, Option<Value>)>,
    },
    /// This status and body, as they are.
    Raw { status: u16, body: String },
    /// Nothing, ever: the request stays unanswered (for timeouts).
    Silence,
}

impl Answer {
    /// Here Now's 200 for exactly these members (the occupancy is their number).
    pub fn members(members: Vec<(String, Option<Value>)>) -> Answer {
        let occupancy = u64::try_from(members.len()).unwrap_or(u64::MAX);
        Answer::Members { occupancy, members }
    }

    /// This status with a PubNub-style error body carrying `message`.
    pub fn error(status: u16, message: &str) -> Answer {
        let body =
            json!({"status": status, "error": true, "message": message, "service": "Presence"});
        Answer::Raw {
            status,
            body: body.to_string(),
        }
    }
}

/// One request as the server got it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// The path as sent (still percent-encoded).
    pub path: String,
    /// The query as sent (still percent-encoded), `""` without one.
    pub query: String,
    /// The query's parameters, decoded, in the order sent.
    pub params: Vec<(String, String)>,
    /// The channel named by the path, decoded; `None` for a path that is not Here Now's.
    pub channel: Option<String>,
}

impl RecordedRequest {
    /// The decoded value of the query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Shared {
    answers: Mutex<HashMap<String, Answer>>,
    requests: Mutex<Vec<RecordedRequest>>,
    count: watch::Sender<usize>,
}

/// The running server; stops (with every open connection) when dropped.
pub struct HereNowServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl HereNowServer {
    /// Starts a server on a free loopback port. A channel nobody configured answers as Here
    /// Now does for an untracked one: occupancy 0, no members.
    pub async fn start() -> std::io::Result<HereNowServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(HereNowServer {
            addr,
            shared,
            accept,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, requests for `channel` (the raw name) get `answer`.
    pub fn answer(&self, channel: &str, answer: Answer) {
        let mut answers = self.shared.answers.lock().unwrap();
        answers.insert(channel.to_owned(), answer);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Returns once at least `n` requests have arrived (recorded before any answer).
    pub async fn wait_for_requests(&self, n: usize) {
        let mut count = self.shared.count.subscribe();
        count.wait_for(|&c| c >= n).await.unwrap();
    }
}

impl Drop for HereNowServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Dropped with the task: aborts every connection.
    let mut connections = JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        let shared = Arc::clone(&shared);
        let service = service_fn(move |request: Request<Incoming>| {
            let shared = Arc::clone(&shared);
            let recorded = record(&request);
            async move { Ok::<_, Infallible>(respond(&shared, recorded).await) }
        });
        connections.spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn respond(shared: &Shared, recorded: RecordedRequest) -> Response<Full<Bytes>> {
    let answer = recorded.channel.as_ref().map(|channel| {
        let answers = shared.answers.lock().unwrap();
        answers
            .get(channel)
            .cloned()
            .unwrap_or_else(|| Answer::members(Vec::new()))
    });
    shared.requests.lock().unwrap().push(recorded.clone());
    shared.count.send_modify(|c| *c += 1);
    match answer {
        None => reply(
            404,
            json!({"status": 404, "error": true, "message": "Not Found"}).to_string(),
        ),
        Some(Answer::Raw { status, body }) => reply(status, body),
        Some(Answer::Silence) => std::future::pending().await,
        Some(Answer::Members { occupancy, members }) => page(&recorded, occupancy, &members),
    }
}

fn record(request: &Request<Incoming>) -> RecordedRequest {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let params = form_urlencoded::parse(query.as_bytes())
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .collect();
    let channel = path
        .strip_prefix("/v2/presence/sub-key/")
        .and_then(|rest| rest.split_once("/channel/"))
        .filter(|(sub_key, channel)| !sub_key.is_empty() && !channel.contains('/'))
        .and_then(|(_, channel)| percent_decode(channel));
    RecordedRequest {
        method: request.method().to_string(),
        path,
        query,
        params,
        channel,
    }
}

/// Here Now's answer to one page request: `limit` (default 1000, 0 = count only) members
/// from `offset`, as objects with state when `state=1`, else as plain uuids.
fn page(
    request: &RecordedRequest,
    occupancy: u64,
    members: &[(String, Option<Value>)],
) -> Response<Full<Bytes>> {
    let number = |name: &str, default: usize| {
        request
            .param(name)
            .map_or(Some(default), |v| v.parse().ok())
    };
    let (Some(limit), Some(offset)) = (number("limit", 1000), number("offset", 0)) else {
        return reply(
            400,
            json!({"status": 400, "error": true, "message": "Invalid paging"}).to_string(),
        );
    };
    if limit > 1000 {
        return reply(
            400,
            json!({"status": 400, "error": true, "message": "Invalid limit"}).to_string(),
        );
    }
    let mut body =
        json!({"status": 200, "message": "OK", "service": "Presence", "occupancy": occupancy});
    if limit > 0 && request.param("disable_uuids") != Some("1") {
        let with_state = request.param("state") == Some("1");
        let listed: Vec<Value> = members
            .iter()
            .skip(offset)
            .take(limit)
            .map(|(uuid, state)| match (with_state, state) {
                (true, Some(state)) => json!({"uuid": uuid, "state": state}),
                (true, None) => json!({"uuid": uuid}),
                (false, _) => json!(uuid),
            })
            .collect();
        body["uuids"] = Value::Array(listed);
    }
    reply(200, body.to_string())
}

fn reply(status: u16, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/javascript; charset=UTF-8"),
    );
    response
}

/// `%XX`-decodes `text` into UTF-8; `None` for a bad escape or bad UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}
