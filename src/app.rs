//! Wiring only: builds the registry, sink, spool or queue, dedup set and both listeners from
//! the config sections, runs them, and orders the drain on shutdown (DESIGN §10): readiness
//! 503 → stop accepting → finish in-flight requests → publish what is queued within
//! `shutdown.grace` → flush the producer → close the spool.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::task::JoinHandle;

use crate::config::{AckMode, Config};
use crate::dedup::Claims;
use crate::faults::Faults;
use crate::health::Health;
use crate::ingress::{self, Acceptor, AdminState, Ingress, Limits};
use crate::metrics::Metrics;
use crate::publisher::{self, PublisherConfig, Source};
use crate::route::Router;
use crate::shutdown::Shutdown;
use crate::sink::Sink;
use crate::spool::{Spool, SpoolConfig};

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
    let router = Router::new(&config.routing).context("routing.template")?;
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
    let sink = Arc::new(
        Sink::connect(
            &config.sink,
            &config.nats,
            &config.kafka.for_ack_mode(config.ack.mode),
            &router,
        )
        .await
        .context("creating the sink client")?,
    );
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
    let claims = Arc::new(Claims::new(
        config.dedup.window,
        config.dedup.max_entries,
        store,
    ));
    let dead_letters = {
        let dir = config.spool.dir.join("dead-letters");
        let budget = config.spool.dead_letter_max_bytes;
        Arc::new(
            tokio::task::spawn_blocking(move || crate::message::DeadLetterDir::open(dir, budget))
                .await?,
        )
    };
    metrics
        .spool_capacity_bytes
        .set(config.spool.max_bytes as i64);
    let health = Health::new();

    let (acceptor, source, ready): (Acceptor, Source, Readiness) = match config.ack.mode {
        AckMode::Spool => {
            let spool_config = SpoolConfig {
                dir: config.spool.dir.clone(),
                max_bytes: config.spool.max_bytes,
                segment_bytes: config.spool.segment_bytes,
                retain: config.dedup.window,
            };
            let spool = tokio::task::spawn_blocking(move || Spool::open(spool_config))
                .await?
                .with_context(|| format!("opening spool.dir {}", config.spool.dir.display()))?;
            restore_dedup(&spool, &claims, config.dedup.window).await?;
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
            (Acceptor::Spool(spool.clone()), Source::Spool(spool), ready)
        }
        mode => {
            let (queue, rx) =
                publisher::queue(config.ack.queue_capacity, config.ack.queue_max_bytes);
            let probe = queue.clone();
            let probe_sink = sink.clone();
            let publish_mode = mode == AckMode::Publish;
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
            (acceptor, Source::Queue(rx), ready)
        }
    };
    let spool = match &source {
        Source::Spool(spool) => Some(spool.clone()),
        Source::Queue(_) => None,
    };

    let http = ingress::bind(config.http.listen, config.http.max_connections)
        .with_context(|| format!("binding http.listen {}", config.http.listen))?;
    let admin = ingress::bind(config.admin.listen, config.admin.max_connections)
        .with_context(|| format!("binding admin.listen {}", config.admin.listen))?;
    let http_addr = http.local_addr()?;
    let admin_addr = admin.local_addr()?;

    let shutdown = Shutdown::new();
    let ingress_state = Arc::new(Ingress {
        router: router.clone(),
        claims: claims.clone(),
        metrics: metrics.clone(),
        acceptor,
        auth: config.auth.clone(),
        auth_header: config.auth.header.to_ascii_lowercase(),
        tokens: config
            .auth
            .accepted()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        max_body_bytes: config.http.max_body_bytes,
        max_batch_items: config.http.max_batch_items,
        request_timeout: config.http.request_timeout,
        body_budget: Arc::new(tokio::sync::Semaphore::new(
            config.http.max_inflight_bytes.div_ceil(1024),
        )),
        retry_after: config.ack.retry_after,
        pending_wait: config.ack.publish_timeout,
        max_message_bytes: {
            let sink = sink.clone();
            Arc::new(move || sink.max_message_bytes())
        },
        dead_letter_dir: dead_letters.clone(),
        dead_letter_budget: Arc::new(crate::message::DeadLetterBudget::new(
            config.routing.dead_letter_budget_bytes,
            config.routing.dead_letter_budget_window,
        )),
        cloudevents: config
            .routing
            .cloudevents
            .then_some(match config.sink.kind {
                crate::config::SinkKind::Kafka => &crate::message::cloudevents::KAFKA,
                crate::config::SinkKind::Nats | crate::config::SinkKind::Stdout => {
                    &crate::message::cloudevents::NATS
                }
            }),
        faults: faults.clone(),
    });
    let admin_state = Arc::new(AdminState {
        registry,
        metrics: metrics.clone(),
        ready: ready.clone(),
        health: health.clone(),
        draining: shutdown.clone(),
    });

    // In-flight requests get a bounded part of the grace period, so a stalled client never
    // eats the publisher's drain.
    let request_drain = (config.shutdown.grace / 4).min(Duration::from_secs(5));
    let webhooks = tokio::spawn(ingress::serve_webhooks(
        http,
        ingress_state,
        Limits {
            max_connections: config.http.max_connections,
            header_timeout: config.http.header_timeout,
            idle_timeout: config.http.idle_timeout,
            drain: request_drain,
        },
        shutdown.clone(),
    ));
    let admin_stop = Shutdown::new();
    let admin_task = tokio::spawn(ingress::serve_admin(
        admin,
        admin_state,
        Limits {
            max_connections: config.admin.max_connections,
            header_timeout: config.http.header_timeout,
            idle_timeout: config.http.idle_timeout,
            drain: Duration::from_secs(1),
        },
        admin_stop.clone(),
    ));
    let publisher_drain = Shutdown::new();
    let publisher_config = PublisherConfig {
        max_in_flight: config.sink.max_in_flight,
        max_backoff: config.sink.max_backoff,
        dead_letter: router.dead_letter().to_owned(),
        overflow: router.overflow_names().to_vec(),
        dead_letter_dir: dead_letters,
    };
    let context = publisher::Context {
        sink: sink.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        faults,
    };
    let observed = Observed {
        metrics: metrics.clone(),
        sink: sink.clone(),
        claims: claims.clone(),
        spool: spool.clone(),
        health: health.clone(),
        ready,
        draining: shutdown.clone(),
    };
    let gauges = tokio::spawn(observed.run());
    let mut publisher = tokio::spawn(publisher::run(
        source,
        context,
        publisher_config,
        publisher_drain.clone(),
    ));
    tracing::info!(
        %http_addr, %admin_addr, sink = sink.name(), ack_mode = config.ack.mode.as_str(),
        "hookbus started"
    );

    let grace = config.shutdown.grace;
    let trigger = shutdown.clone();
    let task = tokio::spawn(async move {
        trigger.wait().await;
        let deadline = Instant::now() + grace;
        tracing::info!(?grace, "draining");
        if tokio::time::timeout_at(deadline.into(), webhooks)
            .await
            .is_err()
        {
            tracing::warn!("in-flight webhook requests did not finish within the grace period");
        }
        publisher_drain.trigger();
        let drained = tokio::time::timeout_at(deadline.into(), &mut publisher).await;
        if drained.is_err() {
            publisher.abort();
            match &spool {
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
        sink.flush(left).await;
        if let Some(spool) = &spool {
            spool.close().await.context("closing the spool")?;
        }
        gauges.abort();
        admin_stop.trigger();
        let _ = admin_task.await;
        tracing::info!("stopped");
        Ok(())
    });

    Ok(Running {
        http_addr,
        admin_addr,
        shutdown,
        task,
    })
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
    let spool_config = SpoolConfig {
        dir: dir.clone(),
        max_bytes: config.spool.max_bytes,
        segment_bytes: config.spool.segment_bytes,
        retain: config.dedup.window,
    };
    let spool = tokio::task::spawn_blocking(move || Spool::open(spool_config))
        .await?
        .with_context(|| format!("opening {}", dir.display()))?;
    let before = spool.stats().pending_events;
    tracing::info!(dir = %dir.display(), pending = before, "draining a spool directory");
    let sink = Arc::new(
        Sink::connect(&config.sink, &config.nats, &config.kafka, &router)
            .await
            .context("creating the sink client")?,
    );
    let dead_letters = Arc::new(crate::message::DeadLetterDir::open(
        dir.join("dead-letters"),
        config.spool.dead_letter_max_bytes,
    ));
    let publisher_config = PublisherConfig {
        max_in_flight: config.sink.max_in_flight,
        max_backoff: config.sink.max_backoff,
        dead_letter: router.dead_letter().to_owned(),
        overflow: router.overflow_names().to_vec(),
        dead_letter_dir: dead_letters,
    };
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
        publisher_config,
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

/// What the gauges of [`Observed::run`] look at.
struct Observed {
    metrics: Metrics,
    sink: Arc<Sink>,
    claims: Arc<Claims>,
    spool: Option<Spool>,
    health: Health,
    ready: Readiness,
    draining: Shutdown,
}

impl Observed {
    /// Keeps the gauges of what the process holds up to date, twice a second, independently
    /// of the publisher (so they tell the truth while it stalls): readiness, sink connection,
    /// spool usage, the dedup set. Marks the process unhealthy on a fatal producer error.
    async fn run(self) {
        let metrics = &self.metrics;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let now = publisher::now_ms();
            let ready = !self.draining.is_draining() && (self.ready)().is_ok();
            metrics.ready.set(i64::from(ready));
            metrics.set_sink_up(self.sink.is_up());
            if let Some(fatal) = self.sink.fatal() {
                self.health.fail(format!(
                    "the {} producer failed for good: {fatal}",
                    self.sink.name()
                ));
            }
            metrics.dedup_entries.set(self.claims.len() as i64);
            metrics
                .dedup_window
                .set(self.claims.effective_window_ms(now) as f64 / 1000.0);
            if let Some(spool) = &self.spool {
                let stats = spool.stats();
                metrics
                    .spool_pending_events
                    .set(stats.pending_events as i64);
                metrics.spool_bytes.set(stats.bytes as i64);
                metrics
                    .spool_unpublished_bytes
                    .set(stats.unpublished_bytes as i64);
                metrics.spool_retained_bytes.set(stats.retained() as i64);
                let age = stats
                    .oldest_unconfirmed_ms
                    .map_or(0, |ms| now.saturating_sub(ms));
                metrics.oldest_unpublished_age.set(age as f64 / 1000.0);
                let counted = metrics.spool_corrupt_records.get();
                if stats.corrupt_records > counted {
                    metrics
                        .spool_corrupt_records
                        .inc_by(stats.corrupt_records - counted);
                }
            }
        }
    }
}

/// Re-remembers the ids accepted within the dedup window, so a PubNub retry that arrives
/// after a restart is still recognized. Streams the spool: memory grows with the dedup table
/// only, never with the records read.
async fn restore_dedup(
    spool: &Spool,
    claims: &Arc<Claims>,
    window: Duration,
) -> anyhow::Result<()> {
    let now = publisher::now_ms();
    let since = now.saturating_sub(window.as_millis() as u64);
    let spool = spool.clone();
    let claims = claims.clone();
    let restored = tokio::task::spawn_blocking(move || {
        let mut restored = 0usize;
        spool.scan_since(since, |appended_ms, payload| {
            if let Some(id) = publisher::msg_id_of(payload) {
                claims.restore(claims.key(id), appended_ms, now);
                restored += 1;
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
