//! Wiring only: builds the registry, sink, spool or queue, dedup set and both listeners from
//! the config sections and runs them; [`Drain`] orders the shutdown (docs/configuration.md,
//! "Shutdown"): readiness 503 → stop accepting → finish in-flight requests → publish what is
//! queued within `shutdown.grace` → flush the producer → close the spool.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::task::JoinHandle;

use crate::config::{AckMode, Config};
use crate::dedup::Claims;
use crate::faults::Faults;
use crate::health::{Health, Recovery};
use crate::ingress::{self, Acceptor, AdminState, Ingress, Limits};
use crate::message::DeadLetterDir;
use crate::metrics::Metrics;
use crate::publisher::{self, PublisherConfig, Source};
use crate::route::Router;
use crate::shutdown::Shutdown;
use crate::sink::Sink;
use crate::spool::{Spool, SpoolConfig};

mod observed;
mod startup;

use observed::Observed;
use startup::{readiness_after_recovery, recover, serve_admin_port};

/// Answers `/readyz`: `Err(reason)` when not ready.
type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// A started hookbus.
pub struct Running {
    /// Where the webhook listener is bound (useful with port 0).
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: Shutdown,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Starts the drain; [`Running::wait`] returns when it is complete.
    pub fn shutdown(&self) {
        self.shutdown.trigger();
    }

    /// Starts the drain and waits for it: [`Running::shutdown`] then [`Running::wait`].
    ///
    /// # Errors
    /// As [`Running::wait`].
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown();
        self.wait().await
    }

    /// Waits for the drain to finish.
    ///
    /// # Errors
    /// If a task panicked or the spool could not be closed cleanly.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("hookbus task panicked")?
    }
}

/// The metrics registry with every hookbus series, and the router: what both [`start_with`]
/// and [`drain`] build first.
fn metrics_and_router(config: &Config) -> anyhow::Result<(prometheus::Registry, Metrics, Router)> {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::with_store(
        &registry,
        env!("CARGO_PKG_VERSION"),
        config.sink.kind.as_str(),
        !config.dedup.shared.is_empty(),
    )
    .context("registering metrics")?;
    let router = crate::route::check(config).map_err(|e| config.redact_error(e))?;
    Ok((registry, metrics, router))
}

/// Builds and starts everything; returns once both listeners are bound.
///
/// # Errors
/// Unusable configuration at run time: ports in use, spool directory not writable, invalid
/// client settings.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    start_with(config, Faults::none()).await
}

/// [`start`] with faults a test injects while it runs.
///
/// # Errors
/// As [`start`].
pub async fn start_with(config: Config, faults: Faults) -> anyhow::Result<Running> {
    let (registry, metrics, router) = metrics_and_router(&config)?;
    // The admin port answers from the first moment: /readyz says "recovering" (and how far)
    // while the sink connects and the spool is read back, /healthz fails only if that stops
    // making progress.
    let recovery = Recovery::new(
        config.spool.recovery_stall_timeout,
        Some(metrics.recovery_progress.clone()),
    );
    let (health, shutdown) = (Health::new(), Shutdown::new());
    let ready_after: Arc<OnceLock<Readiness>> = Arc::default();
    let ready = readiness_after_recovery(&recovery, &ready_after);
    let admin = serve_admin_port(
        &config,
        AdminState {
            registry,
            metrics: metrics.clone(),
            ready: ready.clone(),
            health: health.clone(),
            recovery: recovery.clone(),
            draining: shutdown.clone(),
        },
        &faults,
    )?;
    let recovered = recover(&config, metrics, router, health, &recovery, &faults).await;
    let (shared, acceptor, source, http) = match recovered {
        Ok(parts) => parts,
        Err(error) => {
            admin.stop.trigger();
            let _ = admin.task.await;
            return Err(error);
        }
    };
    let _ = ready_after.set(shared.ready.clone());
    recovery.finish();
    let admin_addr = admin.addr;
    let spool = match &source {
        Source::Spool(spool) => Some(spool.clone()),
        Source::Queue(_) => None,
    };
    let http_addr = http.local_addr()?;
    let webhooks = serve_webhooks(&config, &shared, acceptor, faults.clone(), http, &shutdown);
    let spool_probe = spool.clone();
    let publisher_drain = Shutdown::new();
    let publisher = publisher::run(
        source,
        shared.publisher_context(faults),
        publisher_config(&config, &shared.router, shared.dead_letters.clone()),
        publisher_drain.clone(),
    );
    let drain = Drain {
        grace: config.shutdown.grace,
        webhooks,
        publisher: tokio::spawn(publisher),
        publisher_drain,
        sink: shared.sink.clone(),
        spool,
        gauges: tokio::spawn(shared.observed(spool_probe, ready, &shutdown).run()),
        admin_stop: admin.stop,
        admin_task: admin.task,
    };
    tracing::info!(
        %http_addr, %admin_addr, sink = shared.sink.name(), ack_mode = config.ack.mode.as_str(),
        "hookbus started"
    );
    let trigger = shutdown.clone();
    let task = tokio::spawn(async move {
        trigger.wait().await;
        drain.run().await
    });
    Ok(Running {
        http_addr,
        admin_addr,
        shutdown,
        task,
    })
}

/// What the webhook listener, the publisher and the gauges share.
struct Shared {
    router: Router,
    metrics: Metrics,
    sink: Arc<Sink>,
    claims: Arc<Claims>,
    dead_letters: Arc<DeadLetterDir>,
    health: Health,
    /// Readiness as the ack mode defines it, once recovered (spool headroom, queue room).
    ready: Readiness,
}

impl Shared {
    /// What keeps the gauges, readiness and liveness current.
    fn observed(&self, spool: Option<Spool>, ready: Readiness, draining: &Shutdown) -> Observed {
        Observed {
            metrics: self.metrics.clone(),
            sink: self.sink.clone(),
            claims: self.claims.clone(),
            spool,
            health: self.health.clone(),
            ready,
            draining: draining.clone(),
        }
    }

    fn publisher_context(&self, faults: Faults) -> publisher::Context {
        publisher::Context {
            sink: self.sink.clone(),
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            faults,
        }
    }
}

/// Starts the webhook listener on `http`; in-flight requests get a bounded part of the grace
/// period when `shutdown` fires, so a stalled client never eats the publisher's drain.
fn serve_webhooks(
    config: &Config,
    shared: &Shared,
    acceptor: Acceptor,
    faults: Faults,
    http: tokio::net::TcpListener,
    shutdown: &Shutdown,
) -> JoinHandle<()> {
    let sink = shared.sink.clone();
    let parts = ingress::Parts {
        router: shared.router.clone(),
        claims: shared.claims.clone(),
        metrics: shared.metrics.clone(),
        acceptor,
        max_message_bytes: Arc::new(move || sink.max_message_bytes()),
        dead_letter_dir: shared.dead_letters.clone(),
        cloudevents: cloudevent_names(config),
        faults,
    };
    let state = Ingress::new(
        &config.http,
        &config.auth,
        &config.ack,
        &config.routing,
        parts,
    );
    let request_drain = (config.shutdown.grace / 4).min(Duration::from_secs(5));
    tokio::spawn(ingress::serve_webhooks(
        http,
        Arc::new(state),
        limits(config, config.http.max_connections, request_drain),
        shutdown.clone(),
    ))
}

/// The shutdown order, owned in one place: stop taking webhooks (in-flight ones finish within
/// their share of the grace), let the publisher drain what was accepted, flush the producer,
/// close the spool, then stop the admin port (last, so probes see the drain).
struct Drain {
    grace: Duration,
    webhooks: JoinHandle<()>,
    publisher: JoinHandle<()>,
    publisher_drain: Shutdown,
    sink: Arc<Sink>,
    spool: Option<Spool>,
    gauges: JoinHandle<()>,
    admin_stop: Shutdown,
    admin_task: JoinHandle<()>,
}

impl Drain {
    /// Runs the shutdown order within the grace period.
    ///
    /// # Errors
    /// The spool could not be closed cleanly (the next start replays more).
    async fn run(mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.grace;
        tracing::info!(grace = ?self.grace, "draining");
        if tokio::time::timeout_at(deadline.into(), &mut self.webhooks)
            .await
            .is_err()
        {
            tracing::warn!("in-flight webhook requests did not finish within the grace period");
        }
        self.publisher_drain.trigger();
        let drained = tokio::time::timeout_at(deadline.into(), &mut self.publisher).await;
        if drained.is_err() {
            self.publisher.abort();
            match &self.spool {
                Some(spool) => tracing::warn!(
                    pending = spool.stats().pending_events,
                    "grace period over; unpublished events stay in the spool for the next start"
                ),
                None => {
                    tracing::error!("grace period over; events still queued in memory are lost")
                }
            }
        }
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        close(&self.sink, self.spool.as_ref(), left).await?;
        self.gauges.abort();
        self.admin_stop.trigger();
        let _ = self.admin_task.await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The last steps of every drain: what the producer holds goes out (for `flush` at most),
/// then the spool's final checkpoint.
async fn close(sink: &Sink, spool: Option<&Spool>, flush: Duration) -> anyhow::Result<()> {
    sink.flush(flush).await;
    if let Some(spool) = spool {
        spool.close().await.context("closing the spool")?;
    }
    Ok(())
}

/// The producer for the configured sink (in `publish` mode Kafka lingers 0 by default).
async fn connect_sink(config: &Config, router: &Router) -> anyhow::Result<Arc<Sink>> {
    let sink = Sink::connect(
        &config.sink,
        &config.nats,
        &config.kafka.for_ack_mode(config.ack.mode),
        router,
    )
    .await
    .context("creating the sink client")?;
    Ok(Arc::new(sink))
}

/// The dedup claims, with the shared store when `dedup.shared` names one.
fn claims(config: &Config, metrics: &Metrics) -> anyhow::Result<Arc<Claims>> {
    let store = if config.dedup.shared.is_empty() {
        None
    } else {
        // A claim outlives what its owner can still publish: the request's wait, one broker
        // confirmation, and a margin; it is renewed while the owner waits.
        let timings = crate::dedup::Timings {
            timeout: config.dedup.shared_timeout,
            claim_ttl: config.sink.timeout + config.ack.publish_timeout + Duration::from_secs(2),
            window: config.dedup.window,
        };
        Some(crate::dedup::SharedStore::start(
            &config.dedup.shared,
            timings,
            metrics.clone(),
        )?)
    };
    Ok(Arc::new(Claims::new(
        config.dedup.window,
        config.dedup.max_entries,
        store,
    )))
}

/// `spool.dir/dead-letters/` within its budget (its existing files counted, off the runtime).
async fn open_dead_letters(config: &Config) -> anyhow::Result<Arc<DeadLetterDir>> {
    let dir = config.spool.dir.join("dead-letters");
    let budget = config.spool.dead_letter_max_bytes;
    let opened = tokio::task::spawn_blocking(move || DeadLetterDir::open(dir, budget)).await?;
    Ok(Arc::new(opened))
}

/// The spool's settings, from `[spool]` and the dedup window it must retain.
fn spool_config(config: &Config) -> SpoolConfig {
    SpoolConfig {
        dir: config.spool.dir.clone(),
        max_bytes: config.spool.max_bytes,
        segment_bytes: config.spool.segment_bytes,
        retain: config.dedup.window,
    }
}

/// Opens the spool directory off the runtime.
async fn open_spool(
    config: SpoolConfig,
    recovery: &Recovery,
    faults: &Faults,
) -> anyhow::Result<Spool> {
    let dir = config.dir.clone();
    let (recovery, faults) = (recovery.clone(), faults.clone());
    tokio::task::spawn_blocking(move || {
        Spool::open_observed(config, &mut |done, total| {
            if done == 0 {
                recovery.begin("reading the spool back", total);
            } else {
                recovery.advance(done);
                faults.recovery_step();
            }
        })
    })
    .await?
    .with_context(|| format!("opening spool.dir {}", dir.display()))
}

/// The publisher's settings: `[sink]` limits, and where refused messages and overflow go.
fn publisher_config(
    config: &Config,
    router: &Router,
    dead_letters: Arc<DeadLetterDir>,
) -> PublisherConfig {
    PublisherConfig {
        max_in_flight: config.sink.max_in_flight,
        max_backoff: config.sink.max_backoff,
        dead_letter: router.dead_letter().to_owned(),
        overflow: router.overflow_names().to_vec(),
        dead_letter_dir: dead_letters,
        check_timeout: config.sink.timeout,
    }
}

/// The CloudEvents header names of the configured sink, when `routing.cloudevents` is on.
pub(crate) fn cloudevent_names(config: &Config) -> Option<&'static [&'static str; 7]> {
    config
        .routing
        .cloudevents
        .then_some(match config.sink.kind {
            crate::config::SinkKind::Kafka => &crate::message::cloudevents::KAFKA,
            crate::config::SinkKind::Nats | crate::config::SinkKind::Stdout => {
                &crate::message::cloudevents::NATS
            }
        })
}

/// A listener's limits: its connection cap and request drain, the `[http]` timeouts.
fn limits(config: &Config, max_connections: usize, drain: Duration) -> Limits {
    Limits {
        max_connections,
        header_timeout: config.http.header_timeout,
        idle_timeout: config.http.idle_timeout,
        drain,
    }
}

/// Where accepted events go under `ack.mode`, what the publisher reads, and readiness.
async fn acceptor(
    config: &Config,
    sink: &Arc<Sink>,
    claims: &Arc<Claims>,
    recovery: &Recovery,
    faults: &Faults,
) -> anyhow::Result<(Acceptor, Source, Readiness)> {
    if config.ack.mode == AckMode::Spool {
        let spool = open_spool(spool_config(config), recovery, faults).await?;
        restore_dedup(&spool, claims, config.dedup.window, recovery).await?;
        // Ready while a burst of large requests still fits: 5% of the spool, ≥ 16 MiB.
        let headroom = (config.spool.max_bytes / 20)
            .max(16 * 1024 * 1024)
            .min(config.spool.max_bytes / 2);
        let probe = spool.clone();
        let ready: Readiness = Arc::new(move || {
            if probe.has_headroom(headroom) {
                Ok(())
            } else {
                Err("spool nearly full".to_owned())
            }
        });
        return Ok((Acceptor::Spool(spool.clone()), Source::Spool(spool), ready));
    }
    let (queue, rx) = publisher::queue(config.ack.queue_capacity, config.ack.queue_max_bytes);
    let probe = queue.clone();
    let probe_sink = sink.clone();
    let publish_mode = config.ack.mode == AckMode::Publish;
    let ready: Readiness = Arc::new(move || {
        if probe.capacity() < probe.max_capacity() / 20
            || probe.bytes() > probe.max_bytes() / 20 * 19
        {
            Err("publish queue nearly full".to_owned())
        } else if publish_mode && !probe_sink.is_up() {
            Err("sink not connected".to_owned())
        } else {
            Ok(())
        }
    });
    let acceptor = if publish_mode {
        Acceptor::Publish {
            queue,
            timeout: config.ack.publish_timeout,
        }
    } else {
        Acceptor::Memory(queue)
    };
    Ok((acceptor, Source::Queue(rx), ready))
}

/// What [`drain`] did.
pub struct DrainReport {
    pub dir: std::path::PathBuf,
    /// Records confirmed by the broker.
    pub published: u64,
    /// Records still unpublished when it stopped (timeout).
    pub left: u64,
}

/// Publishes every unpublished record of `config.spool.dir` (the volume of a stopped instance)
/// with the configured sink, in order and with the records' original event ids, then closes
/// the spool. Nothing listens; the directory's lock keeps a live instance away.
///
/// # Errors
/// The spool cannot be opened (missing, locked by a live instance) or the sink not built.
pub async fn drain(config: Config, timeout: Duration) -> anyhow::Result<DrainReport> {
    let (_registry, metrics, router) = metrics_and_router(&config)?;
    let dir = config.spool.dir.clone();
    if !dir.is_dir() {
        anyhow::bail!("{} is not a spool directory", dir.display());
    }
    let spool = open_spool(
        spool_config(&config),
        &Recovery::finished(),
        &Faults::none(),
    )
    .await?;
    let before = spool.stats().pending_events;
    tracing::info!(dir = %dir.display(), pending = before, "draining a spool directory");
    let sink = Arc::new(
        Sink::connect(&config.sink, &config.nats, &config.kafka, &router)
            .await
            .context("creating the sink client")?,
    );
    let context = publisher::Context {
        sink: sink.clone(),
        metrics,
        health: Health::new(),
        faults: Faults::none(),
    };
    let done = Shutdown::new();
    done.trigger();
    let run = publisher::run(
        Source::Spool(spool.clone()),
        context,
        publisher_config(&config, &router, open_dead_letters(&config).await?),
        done,
    );
    if tokio::time::timeout(timeout, run).await.is_err() {
        tracing::warn!(
            ?timeout,
            "drain timed out; what is left stays in the directory"
        );
    }
    sink.flush(Duration::from_secs(10)).await;
    let left = spool.stats().pending_events;
    spool.close().await.context("closing the spool")?;
    Ok(DrainReport {
        dir: config.spool.dir,
        published: before.saturating_sub(left),
        left,
    })
}

/// Re-remembers the ids accepted within the dedup window, so a PubNub retry that arrives
/// after a restart is still recognized. Streams the spool: memory grows with the dedup table
/// only, never with the records read.
async fn restore_dedup(
    spool: &Spool,
    claims: &Arc<Claims>,
    window: Duration,
    recovery: &Recovery,
) -> anyhow::Result<()> {
    let now = publisher::now_ms();
    let since = now.saturating_sub(window.as_millis() as u64);
    let spool = spool.clone();
    let claims = claims.clone();
    let recovery = recovery.clone();
    recovery.begin("rebuilding the dedup set", 0);
    let restored = tokio::task::spawn_blocking(move || {
        let mut restored = 0usize;
        spool.scan_since(since, |appended_ms, payload| {
            if let Some(id) = publisher::msg_id_of(payload) {
                claims.restore(claims.key(id), appended_ms, now);
                restored += 1;
                if restored.is_multiple_of(10_000) {
                    recovery.advance(restored as u64);
                }
            }
        })?;
        Ok::<_, crate::spool::SpoolError>(restored)
    })
    .await?
    .context("scanning the spool for recent event ids")?;
    if restored > 0 {
        tracing::info!(restored, "dedup ids restored from the spool");
    }
    Ok(())
}
