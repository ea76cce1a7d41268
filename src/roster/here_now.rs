//! The roster's Here Now client: reads who is in one channel from PubNub's Here Now REST API,
//! paged by 1,000 with `state=1` and signed when a secret key is set; one read per channel at a
//! time, every request under one shared rate limit and a timeout. It only reads: what a read
//! replaces in the roster, and when to read again, is the caller's decision.

mod error;
mod limiter;
mod paging;
mod response;
mod sign;
#[cfg(test)]
mod test_server;
#[cfg(test)]
mod tests;

pub use error::{BACKOFF_MAX, BACKOFF_MIN, HereNowError, backoff};

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, LengthLimitError, Limited};
use hyper::{Request, Uri, header};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use limiter::RateLimiter;
use paging::{Next, PAGE_LIMIT, Pager};
use response::Page;
use sign::Signer;

/// The `uuid` parameter of every request: the roster's own PubNub User ID.
pub const ROSTER_UUID: &str = "hookbus-roster";
/// The largest answer read: a page of 1,000 members, each with up to 32 KiB of state.
const BODY_MAX: usize = 64 << 20;
/// How long an idle connection to PubNub stays pooled.
const POOL_IDLE: Duration = Duration::from_secs(30);
const USER_AGENT: &str = concat!("hookbus/", env!("CARGO_PKG_VERSION"));

/// What the client needs from `[roster.here_now]`. Its `Debug` never prints the secret key.
#[derive(Clone)]
pub struct HereNowSettings {
    /// Scheme and host only, e.g. `https://ps.pndsn.com` (plain `http://` for a local server).
    pub origin: String,
    /// The keyset's subscribe key (in the path).
    pub subscribe_key: String,
    /// The keyset's publish key (part of the signed text; needed with `secret_key`).
    pub publish_key: String,
    /// The keyset's secret key; non-empty: every request is signed (signature v2).
    pub secret_key: String,
    /// The limit on each request, from connect to the last byte of the body.
    pub timeout: Duration,
    /// Requests per second, all channels together (at least 1).
    pub max_requests_per_second: u32,
}

impl std::fmt::Debug for HereNowSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = if self.secret_key.is_empty() {
            ""
        } else {
            "<set>"
        };
        f.debug_struct("HereNowSettings")
            .field("origin", &self.origin)
            .field("subscribe_key", &self.subscribe_key)
            .field("publish_key", &self.publish_key)
            .field("secret_key", &secret)
            .field("timeout", &self.timeout)
            .field("max_requests_per_second", &self.max_requests_per_second)
            .finish()
    }
}

/// One complete, consistent read of a channel: the listed members add up to the occupancy.
#[derive(Debug, Clone, PartialEq)]
pub struct HereNowRead {
    /// When the first page was requested (Unix ms). Here Now answers from a cache of about
    /// 3 s, so the read describes the channel as of about 3 s before this.
    pub requested_at_ms: u64,
    /// The channel's occupancy. 0 with no members: empty, or not tracked by Presence.
    pub occupancy: u64,
    /// The members, in the order Here Now listed them, each uuid once.
    pub members: Vec<HereNowMember>,
}

/// One member as Here Now lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HereNowMember {
    /// The member's User ID.
    pub uuid: String,
    /// The member's presence state, when one is set.
    pub state: Option<serde_json::Value>,
}

/// A client for one keyset's Here Now. Cheap to clone: clones share the connection pool, the
/// rate limiter and the set of channels being read.
#[derive(Clone)]
pub struct HereNowClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// Scheme and authority, no trailing slash.
    origin: String,
    /// `/v2/presence/sub-key/{sub_key}/channel/`, encoded.
    channel_prefix: String,
    signer: Option<Signer>,
    timeout: Duration,
    limiter: RateLimiter,
    /// Channels with a read running. A std mutex: held for one insert or remove, never across
    /// an `.await`.
    reading: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for HereNowClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HereNowClient")
            .field("origin", &self.inner.origin)
            .field("signed", &self.inner.signer.is_some())
            .finish_non_exhaustive()
    }
}

impl HereNowClient {
    /// A client for `settings`. Loads the system's TLS root certificates for an `https` origin.
    ///
    /// # Errors
    /// `Config` naming the setting: an origin that is empty or not `http(s)://host[:port]`, an
    /// empty subscribe key, a secret key without a publish key, a zero timeout or rate, or no
    /// usable root certificates.
    pub fn new(settings: HereNowSettings) -> Result<HereNowClient, HereNowError> {
        let config = |why: &str| Err(HereNowError::Config(why.to_owned()));
        let (origin, https) = parse_origin(&settings.origin)?;
        if settings.subscribe_key.is_empty() {
            return config("subscribe_key is empty");
        }
        if settings.timeout.is_zero() {
            return config("timeout is zero");
        }
        if settings.max_requests_per_second == 0 {
            return config("max_requests_per_second is 0");
        }
        let signer = if settings.secret_key.is_empty() {
            None
        } else if settings.publish_key.is_empty() {
            return config("secret_key needs publish_key (the signature covers it)");
        } else {
            let signer = Signer::new(&settings.publish_key, &settings.secret_key);
            Some(signer.ok_or_else(|| HereNowError::Config("secret_key is unusable".into()))?)
        };
        let mut channel_prefix = String::from("/v2/presence/sub-key/");
        sign::push_encoded(&settings.subscribe_key, &mut channel_prefix);
        channel_prefix.push_str("/channel/");
        Ok(HereNowClient {
            inner: Arc::new(Inner {
                http: http_client(https)?,
                origin,
                channel_prefix,
                signer,
                timeout: settings.timeout,
                limiter: RateLimiter::new(settings.max_requests_per_second, 1),
                reading: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// Reads every page of `channel`'s members (the raw channel name; it is encoded here).
    /// Each request first waits for the shared rate limiter, and has the timeout.
    ///
    /// Cancel safe: dropping the future drops the request in flight and ends the channel's
    /// read, so a later read of it is not `Busy`; nothing is half-done.
    ///
    /// # Errors
    /// `Busy` while another read of `channel` runs; `InvalidChannel` for an empty name;
    /// `Inconsistent` when the pages' members do not add up to the occupancy; any request's
    /// `Timeout`, `Forbidden`, `Server`, `Status`, `Malformed` or `Transport`. An error means
    /// no result: never a partial member list.
    pub async fn read(&self, channel: &str) -> Result<HereNowRead, HereNowError> {
        if channel.is_empty() {
            return Err(HereNowError::InvalidChannel);
        }
        let _claim = Claim::new(&self.inner.reading, channel).ok_or(HereNowError::Busy)?;
        let path = format!("{}{}", self.inner.channel_prefix, sign::encoded(channel));
        let mut pager = Pager::default();
        let (requested_at_ms, first) = self.inner.fetch(&path, 0).await?;
        let mut next = pager.add(first)?;
        while let Next::Page(offset) = next {
            let (_, page) = self.inner.fetch(&path, offset).await?;
            next = pager.add(page)?;
        }
        let (occupancy, members) = pager.finish()?;
        Ok(HereNowRead {
            requested_at_ms,
            occupancy,
            members,
        })
    }
}

impl Inner {
    /// Waits for the rate limiter, then requests the page at `offset`; returns when it was
    /// requested (Unix ms) and the page.
    async fn fetch(&self, path: &str, offset: u64) -> Result<(u64, Page), HereNowError> {
        self.limiter.acquire().await;
        let now_ms = crate::time::now_ms();
        let request = Request::get(self.url(path, offset, now_ms))
            .header(header::USER_AGENT, USER_AGENT)
            .body(Empty::new())
            .map_err(|e| HereNowError::Config(format!("the origin makes a bad URL: {e}")))?;
        let (status, body) = tokio::time::timeout(self.timeout, self.send(request))
            .await
            .map_err(|_| HereNowError::Timeout)??;
        Ok((now_ms, response::classify(status, &body)?))
    }

    /// The URL of one page: the canonical query, plus `timestamp` and `signature` when signed.
    fn url(&self, path: &str, offset: u64, now_ms: u64) -> String {
        let (limit, offset, timestamp) = (
            PAGE_LIMIT.to_string(),
            offset.to_string(),
            (now_ms / 1000).to_string(),
        );
        let mut params = vec![
            ("limit", limit.as_str()),
            ("offset", offset.as_str()),
            ("state", "1"),
            ("uuid", ROSTER_UUID),
        ];
        if self.signer.is_some() {
            params.push(("timestamp", timestamp.as_str()));
        }
        let query = sign::canonical_query(&params);
        let mut url = format!("{}{path}?{query}", self.origin);
        if let Some(signer) = &self.signer {
            url.push_str("&signature=");
            url.push_str(&signer.sign(path, &query));
        }
        url
    }

    /// Sends `request` and reads the whole body (at most [`BODY_MAX`] bytes).
    async fn send(&self, request: Request<Empty<Bytes>>) -> Result<(u16, Bytes), HereNowError> {
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| HereNowError::Transport(describe(&e)))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), BODY_MAX)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<LengthLimitError>() {
                    HereNowError::Malformed(format!("a body over {BODY_MAX} bytes"))
                } else {
                    HereNowError::Transport(describe(&*e))
                }
            })?;
        Ok((status, body.to_bytes()))
    }
}

/// A channel's place in the set of channels being read; leaving it (also by cancellation)
/// frees the channel.
struct Claim<'a> {
    reading: &'a Mutex<HashSet<String>>,
    channel: String,
}

impl<'a> Claim<'a> {
    /// Claims `channel`; `None` when a read of it already holds it.
    fn new(reading: &'a Mutex<HashSet<String>>, channel: &str) -> Option<Claim<'a>> {
        let mut set = reading.lock().unwrap_or_else(PoisonError::into_inner);
        set.insert(channel.to_owned()).then(|| Claim {
            reading,
            channel: channel.to_owned(),
        })
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut set = self.reading.lock().unwrap_or_else(PoisonError::into_inner);
        set.remove(&self.channel);
    }
}

/// Splits `origin` into the text requests start with and whether it is `https`.
fn parse_origin(origin: &str) -> Result<(String, bool), HereNowError> {
    let bad = |why: &str| HereNowError::Config(format!("origin {origin:?} {why}"));
    let trimmed = origin.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(bad("is empty (Here Now is off)"));
    }
    let uri: Uri = trimmed.parse().map_err(|_| bad("is not a URL"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(bad(
                "must start with https:// (or http:// for a local server)",
            ));
        }
    };
    let host_only = uri.authority().is_some_and(|a| !a.host().is_empty())
        && matches!(uri.path(), "" | "/")
        && uri.query().is_none();
    if !host_only {
        return Err(bad(
            "must be a scheme and host only, e.g. https://ps.pndsn.com",
        ));
    }
    Ok((trimmed.to_owned(), https))
}

/// The pooled HTTP/1 client; TLS (rustls with ring, the system's roots) for an `https` origin.
fn http_client(
    https: bool,
) -> Result<Client<HttpsConnector<HttpConnector>, Empty<Bytes>>, HereNowError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = HttpsConnectorBuilder::new();
    let builder = if https {
        builder
            .with_provider_and_native_roots(provider)
            .map_err(|e| HereNowError::Config(format!("no TLS root certificates: {e}")))?
            .https_only()
    } else {
        // A plain-http origin never uses TLS: no roots to load.
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| HereNowError::Config(format!("TLS: {e}")))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        builder.with_tls_config(tls).https_or_http()
    };
    let connector = builder.enable_http1().build();
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(connector))
}

/// An error and its sources, `outer: inner: …` (hyper's own messages are terse).
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
