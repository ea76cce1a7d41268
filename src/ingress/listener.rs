//! The connection loop (TCP accept with back-off) and the life of each connection, for both
//! listeners: a connection cap that makes room by closing the longest-idle connection, a header
//! timeout, a keep-alive idle timeout, accept errors that back off, and a shutdown that lets
//! in-flight requests finish for a bounded time and then closes what is left (a stalled client
//! never eats the drain).
//!
//! Each connection's [`Activity`] is what the timeouts and the eviction look at: the IO
//! wrapper marks the first byte of a request, the service marks it busy and done.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::shutdown::Shutdown;

/// Binds `addr` with a listen backlog sized for `max_connections` (the standard library and
/// tokio use 128, which makes a burst of new connections wait on SYN retries; the kernel caps
/// it at `net.core.somaxconn`).
///
/// # Errors
/// The address cannot be bound (in use, not local, no permission).
pub fn bind(addr: std::net::SocketAddr, max_connections: usize) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog(max_connections))
}

/// The listen backlog for a connection cap: the cap itself, at least 128 and at most 65,535.
pub fn backlog(max_connections: usize) -> u32 {
    u32::try_from(max_connections.clamp(128, 65_535)).unwrap_or(65_535)
}

/// Bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// From a connection's start, or a request's first byte, to the end of its headers.
    pub header_timeout: Duration,
    /// A keep-alive connection between requests.
    pub idle_timeout: Duration,
    /// After the stop: how long in-flight requests may still take before their connections
    /// are closed.
    pub drain: Duration,
}

/// Why hookbus closed a connection (`hookbus_connections_closed_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    HeaderTimeout,
    BodyTimeout,
    IdleTimeout,
    /// Closed to make room for a new connection at `max_connections`.
    Evicted,
}

impl Closed {
    pub fn as_str(self) -> &'static str {
        match self {
            Closed::HeaderTimeout => "header_timeout",
            Closed::BodyTimeout => "body_timeout",
            Closed::IdleTimeout => "idle_timeout",
            Closed::Evicted => "evicted",
        }
    }
}

/// What happened on a connection, as the listener reports it.
pub trait Events: Send + Sync + 'static {
    fn closed(&self, reason: Closed);
    /// hyper answered a request it could not parse itself (400, 414, 431).
    fn refused(&self, status: u16);
}

const FRESH: u8 = 0;
const HEAD: u8 = 1;
const BUSY: u8 = 2;
const IDLE: u8 = 3;

/// The state of one connection: fresh (no byte yet), reading a request head, busy with a
/// request, or idle between requests.
pub struct Activity {
    /// The state (low 8 bits) and when it was entered (ms since the listener's start, the
    /// rest), in one word so that a reader never pairs a new state with an old time.
    now: AtomicU64,
    /// Signalled when a request's first byte arrives: the one change that can bring the
    /// connection's deadline forward (an idle connection's 90 s become the head's 10 s).
    head: Notify,
    epoch: Instant,
}

impl Activity {
    fn new(epoch: Instant) -> Activity {
        Activity {
            now: AtomicU64::new(pack(FRESH, elapsed_ms(epoch))),
            head: Notify::new(),
            epoch,
        }
    }

    fn enter(&self, state: u8) {
        self.now
            .store(pack(state, elapsed_ms(self.epoch)), Ordering::SeqCst);
    }

    /// A request's head arrived: the service is running it.
    pub fn busy(&self) {
        self.enter(BUSY);
    }

    /// The service answered: idle until the next request's first byte.
    pub fn idle(&self) {
        self.enter(IDLE);
    }

    fn first_byte(&self) {
        let (state, _) = unpack(self.now.load(Ordering::Relaxed));
        if state == FRESH || state == IDLE {
            self.enter(HEAD);
            self.head.notify_one();
        }
    }

    fn evictable_since(&self) -> Option<u64> {
        match unpack(self.now.load(Ordering::SeqCst)) {
            (FRESH | HEAD | IDLE, since) => Some(since),
            _ => None,
        }
    }

    /// Resolves with the reason the connection must close: a timeout of its current state or
    /// an eviction. Lazy: the watchdog is not woken for every state change, only when a
    /// request's first byte may have brought the deadline forward. It wakes at the deadline
    /// of the state it last saw and looks again (the state may have moved on: then it sleeps
    /// until the new state's deadline); while a request is being served (no deadline) it
    /// looks again every `min(header_timeout, idle_timeout)`, which is before any idle period
    /// that follows can run out: each timeout is timed from its own state's start, as before.
    async fn expired(&self, limits: &Limits, evicted: &Notify) -> Closed {
        // One timer, moved on each round (registering a new one per request cost more).
        let sleep = tokio::time::sleep_until(Instant::now());
        tokio::pin!(sleep);
        loop {
            let head = self.head.notified();
            tokio::pin!(head);
            head.as_mut().enable();
            let (state, since) = unpack(self.now.load(Ordering::SeqCst));
            let (limit, reason) = match state {
                FRESH | HEAD => (Some(limits.header_timeout), Closed::HeaderTimeout),
                IDLE => (Some(limits.idle_timeout), Closed::IdleTimeout),
                _ => (None, Closed::IdleTimeout),
            };
            let wake = match limit {
                Some(limit) => {
                    let deadline = self.epoch + Duration::from_millis(since) + limit;
                    if Instant::now() >= deadline {
                        return reason;
                    }
                    deadline
                }
                None => Instant::now() + limits.header_timeout.min(limits.idle_timeout),
            };
            sleep.as_mut().reset(wake);
            tokio::select! {
                () = &mut head => {}
                () = evicted.notified() => return Closed::Evicted,
                () = &mut sleep => {}
            }
        }
    }
}

/// A state and the ms it was entered at, in one word.
fn pack(state: u8, since_ms: u64) -> u64 {
    (since_ms << 8) | u64::from(state)
}

fn unpack(word: u64) -> (u8, u64) {
    ((word & 0xff) as u8, word >> 8)
}

fn elapsed_ms(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The socket of one connection, marking the first byte of each request.
struct Tracked {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl tokio::io::AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.first_byte();
        }
        result
    }
}

impl tokio::io::AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<Result<usize, std::io::Error>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), std::io::Error>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), std::io::Error>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The open connections, for eviction at the cap.
#[derive(Default)]
struct Registry {
    next: u64,
    open: HashMap<u64, (Arc<Activity>, Arc<Notify>)>,
}

impl Registry {
    /// Signals the connection idle for longest (fresh, reading a head, or between requests)
    /// to close. `false` when every connection is busy with a request.
    fn evict_oldest(&self) -> bool {
        let oldest = self
            .open
            .iter()
            .filter_map(|(id, (activity, evict))| {
                activity
                    .evictable_since()
                    .map(|since| ((since, *id), evict))
            })
            // Ties (same millisecond) go to the connection accepted first.
            .min_by_key(|(key, _)| *key);
        match oldest {
            Some((_, evict)) => {
                evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// The next connection; `None` once `stop` fires. An accept error (out of file descriptors and
/// the like) pauses for `backoff`, doubled up to a second, instead of spinning.
async fn accept(
    listener: &TcpListener,
    backoff: &mut Duration,
    stop: &Shutdown,
) -> Option<TcpStream> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    *backoff = Duration::from_millis(5);
                    return Some(stream);
                }
                Err(error) => {
                    tracing::warn!(%error, backoff = ?*backoff, "accept failed; pausing");
                    tokio::select! {
                        () = tokio::time::sleep(*backoff) => {}
                        () = stop.wait() => return None,
                    }
                    *backoff = (*backoff * 2).min(Duration::from_secs(1));
                }
            },
            () = stop.wait() => return None,
        }
    }
}

/// A place under the connection cap; at the cap the longest-idle connection is closed to make
/// room. `None` once `stop` fires.
async fn admit(
    permits: &Arc<Semaphore>,
    registry: &Arc<Mutex<Registry>>,
    stop: &Shutdown,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if let Ok(permit) = permits.clone().try_acquire_owned() {
        return Some(permit);
    }
    let evicted = registry
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .evict_oldest();
    if !evicted {
        tracing::debug!("connection cap reached with every connection busy");
    }
    tokio::select! {
        permit = permits.clone().acquire_owned() => permit.ok(),
        () = stop.wait() => None,
    }
}

/// Serves connections from `listener` until `stop` fires. `service` makes the service of one
/// connection from its [`Activity`] (which the service must mark busy and idle).
pub async fn serve<S, F>(
    listener: TcpListener,
    limits: Limits,
    events: Arc<dyn Events>,
    stop: Shutdown,
    service: F,
) where
    F: Fn(Arc<Activity>) -> S,
    S: Service<Request<Incoming>, Response = Response<http_body_util::Full<bytes::Bytes>>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let epoch = Instant::now();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let registry = Arc::new(Mutex::new(Registry::default()));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        let Some(stream) = accept(&listener, &mut backoff, &stop).await else {
            break;
        };
        let Some(permit) = admit(&permits, &registry, &stop).await else {
            break;
        };
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new(epoch));
        let evict = Arc::new(Notify::new());
        let id = {
            let mut registry = registry.lock().unwrap_or_else(|p| p.into_inner());
            let id = registry.next;
            registry.next += 1;
            registry.open.insert(id, (activity.clone(), evict.clone()));
            id
        };
        let io = TokioIo::new(Tracked {
            io: stream,
            activity: activity.clone(),
        });
        let conn = http1::Builder::new()
            .keep_alive(true)
            .serve_connection(io, service(activity.clone()));
        let conn = graceful.watch(conn);
        let registry = registry.clone();
        let events = events.clone();
        connections.spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                result = &mut conn => {
                    if let Err(error) = result {
                        refused(events.as_ref(), &error);
                        tracing::debug!(%error, "connection ended with an error");
                    }
                }
                reason = activity.expired(&limits, &evict) => {
                    events.closed(reason);
                    tracing::debug!(reason = reason.as_str(), "connection closed");
                }
            }
            registry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .open
                .remove(&id);
            drop(permit);
        });
    }
    drop(listener);
    // Idle connections close now; requests in progress get `limits.drain` to finish.
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            left = connections.len(),
            "requests still in progress after the drain time; closing their connections"
        );
    }
    connections.shutdown().await;
}

/// Counts what hyper answered by itself to a request it could not parse.
fn refused(events: &dyn Events, error: &hyper::Error) {
    let text = error.to_string();
    if error.is_parse_too_large() {
        events.refused(if text.contains("URI") { 414 } else { 431 });
    } else if error.is_parse() && !error.is_parse_version_h2() && !error.is_parse_status() {
        events.refused(400);
    }
}

/// A future that marks the connection idle when it completes (or is dropped).
pub struct Answering<F> {
    inner: Pin<Box<F>>,
    activity: Arc<Activity>,
}

impl<F> Answering<F> {
    pub fn new(activity: Arc<Activity>, inner: F) -> Answering<F> {
        activity.busy();
        Answering {
            inner: Box::pin(inner),
            activity,
        }
    }
}

impl<F: Future> Future for Answering<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<F> Drop for Answering<F> {
    fn drop(&mut self) {
        self.activity.idle();
    }
}
