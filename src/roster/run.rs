//! `hookbus roster`: wiring. Connect the store (and stamp its epoch), the input and the
//! outputs, serve the read API, then run the consume loop (`consume.rs`). Beside it, the
//! maintenance loop: the epoch check (a store that lost its data triggers a rebuild), the
//! sweep (expired tombstones, unpublished sessions, the channel and member gauges).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;

use super::api::{self, Api};
use super::consume::Consumer;
use super::input::Input;
use super::metrics::RosterMetrics;
use super::outputs::{Outputs, Publisher};
use super::state::{self, Rules, Summary};
use super::store::{Store, kv::KvStore, redis::RedisStore};
use super::writer::{Writer, backoff, now_i64};
use crate::config::{Config, RosterConfig, RosterStore, SinkKind};
use crate::route::{self, OutputTemplate};
use crate::shutdown::Shutdown;

/// What `/readyz` reads.
#[derive(Default)]
pub struct Readiness {
    pub store: AtomicBool,
    pub input: AtomicBool,
    pub rebuilding: AtomicBool,
    /// The input dropped events before they were applied: until Here Now has read every
    /// channel (or for good, without `[roster.here_now]`), the roster is incomplete.
    pub incomplete: Arc<AtomicBool>,
}

impl Readiness {
    fn check(&self) -> Result<(), String> {
        if !self.store.load(Ordering::Relaxed) {
            return Err("store not reachable".to_owned());
        }
        if !self.input.load(Ordering::Relaxed) {
            return Err("input not connected".to_owned());
        }
        if self.incomplete.load(Ordering::Relaxed) {
            return Err("incomplete: the input dropped events the roster had not applied (stream retention); it is reconciled with Here Now, or without [roster.here_now] must be rebuilt (docs/roster.md)".to_owned());
        }
        if self.rebuilding.load(Ordering::Relaxed) {
            return Err("rebuilding: the store lost its data or the input skipped events; the roster is incomplete until the input is replayed".to_owned());
        }
        Ok(())
    }
}

/// Runs the roster until `stop` fires.
///
/// # Errors
/// No `[roster]` section, an unusable sink kind, or a listener/store/input that cannot be set
/// up at start.
pub async fn run(config: Config, stop: Shutdown) -> anyhow::Result<()> {
    let roster = config
        .roster
        .clone()
        .context("the config file has no [roster] section")?;
    let router = route::check(&config)?;
    let registry = prometheus::Registry::new();
    let metrics = RosterMetrics::new(&registry)?;
    let ready = Arc::new(Readiness::default());
    let nats = if config.sink.kind == SinkKind::Nats {
        Some(crate::sink::nats_client(&config.nats, "hookbus-roster").await?)
    } else {
        None
    };
    let js = nats.clone().map(async_nats::jetstream::new);
    // The API (and its probes) first: /readyz says what start-up still waits for.
    let listener = tokio::net::TcpListener::bind(roster.listen)
        .await
        .with_context(|| format!("binding roster.listen {}", roster.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "roster API listening");
    let cell = Arc::new(std::sync::OnceLock::new());
    let api = Arc::new(api_state(&config, cell.clone(), registry, ready.clone()));
    let server = tokio::spawn(api::serve(listener, api, stop.clone()));
    let Some((store, epoch)) = retry("the roster store", &stop, || async {
        let store = connect_store(&roster, js.clone()).await?;
        let epoch = store
            .epoch(true)
            .await
            .context("stamping the store's epoch")?;
        Ok((store, epoch.unwrap_or_default()))
    })
    .await
    else {
        let _ = server.await;
        return Ok(());
    };
    let _ = cell.set(store.clone());
    ready.store.store(true, Ordering::Relaxed);
    let Some(input) = retry("the roster input", &stop, || {
        connect_input(&config, &roster, &router, js.as_ref())
    })
    .await
    else {
        let _ = server.await;
        return Ok(());
    };
    let outputs = outputs(&config, &roster, &router, nats, js, &metrics).await?;
    let writer = writer(store, &roster, metrics, outputs);
    let rebuild = Arc::new(AtomicBool::new(false));
    let (refresh_tx, refresh_rx) = mpsc::channel::<String>(10_000);
    let reconciler = super::reconcile::start(
        &roster,
        writer.clone(),
        refresh_rx,
        ready.incomplete.clone(),
        stop.clone(),
    )?;
    let maintenance = tokio::spawn(maintain(
        writer.clone(),
        epoch,
        ready.clone(),
        rebuild.clone(),
        stop.clone(),
    ));
    let consumer = Consumer {
        writer,
        input,
        roster,
        ready,
        rebuild,
        refresh: refresh_tx,
    };
    consumer.run(&stop).await;
    maintenance.abort();
    if let Some(reconciler) = reconciler {
        reconciler.abort();
    }
    let _ = server.await;
    tracing::info!("roster stopped");
    Ok(())
}

fn writer(
    store: Arc<Store>,
    roster: &RosterConfig,
    metrics: RosterMetrics,
    outputs: Outputs,
) -> Arc<Writer> {
    Arc::new(Writer {
        store,
        rules: rules(roster),
        metrics,
        outputs: Arc::new(outputs),
    })
}

fn rules(roster: &RosterConfig) -> Rules {
    Rules {
        tombstone_ttl_ms: i64::try_from(roster.tombstone_ttl.as_millis()).unwrap_or(i64::MAX),
    }
}

/// `attempt` until it succeeds (`Some`) or `stop` fires (`None`), with backoff; each failure
/// is logged (the broker or store may still be starting).
async fn retry<T, F, Fut>(what: &str, stop: &Shutdown, mut attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut failures = 0;
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(error) => {
                failures += 1;
                tracing::warn!(error = format!("{error:#}"), "connecting {what}; retried");
            }
        }
        pause(backoff(failures), stop).await;
        if stop.is_draining() {
            return None;
        }
    }
}

async fn connect_store(
    roster: &RosterConfig,
    js: Option<async_nats::jetstream::Context>,
) -> anyhow::Result<Arc<Store>> {
    Ok(Arc::new(match roster.store() {
        RosterStore::Nats => {
            let js = js
                .clone()
                .context("roster.store = \"nats\" needs the NATS sink")?;
            Store::Nats(
                KvStore::open(js, &roster.bucket)
                    .await
                    .context("opening the roster bucket")?,
            )
        }
        RosterStore::Redis(url) => Store::Redis(
            RedisStore::open(&url, &roster.bucket)
                .await
                .context("connecting to the roster's Redis")?,
        ),
    }))
}

async fn connect_input(
    config: &Config,
    roster: &RosterConfig,
    router: &route::Router,
    js: Option<&async_nats::jetstream::Context>,
) -> anyhow::Result<Input> {
    Ok(match (&config.sink.kind, js) {
        (SinkKind::Nats, Some(js)) => {
            Input::nats(
                js,
                &config.nats.stream,
                &roster.consumer,
                router.stream_subjects(),
            )
            .await?
        }
        (SinkKind::Kafka, _) => {
            Input::kafka(&config.kafka, &roster.consumer, &router.topic_regex())?
        }
        _ => anyhow::bail!(
            "the roster reads what the bridge publishes to NATS JetStream or Kafka; sink.kind = stdout has nothing to read"
        ),
    })
}

fn api_state(
    config: &Config,
    store: Arc<std::sync::OnceLock<Arc<Store>>>,
    registry: prometheus::Registry,
    ready: Arc<Readiness>,
) -> Api {
    Api {
        store,
        tokens: config
            .auth
            .accepted()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        header: config.auth.header.to_ascii_lowercase(),
        registry,
        ready: { Box::new(move || ready.check()) },
        health: crate::health::Health::new(),
    }
}

async fn outputs(
    config: &Config,
    roster: &RosterConfig,
    router: &route::Router,
    nats: Option<async_nats::Client>,
    js: Option<async_nats::jetstream::Context>,
    metrics: &RosterMetrics,
) -> anyhow::Result<Outputs> {
    let compile = |text: &str| -> anyhow::Result<Option<OutputTemplate>> {
        if text.is_empty() {
            Ok(None)
        } else {
            Ok(Some(OutputTemplate::new(text)?))
        }
    };
    let changes = compile(&roster.template)?;
    let sessions = compile(&roster.sessions)?;
    let publisher = if changes.is_none() && sessions.is_none() {
        Publisher::None
    } else {
        match (nats, js) {
            (Some(client), Some(js)) => Publisher::Nats(Box::new((client, js))),
            _ => Publisher::Kafka(Box::new(
                crate::sink::Sink::connect(&config.sink, &config.nats, &config.kafka, router)
                    .await?,
            )),
        }
    };
    Ok(Outputs {
        changes,
        sessions,
        publisher,
        metrics: metrics.clone(),
    })
}

pub(super) async fn pause(wait: Duration, stop: &Shutdown) {
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        () = stop.wait() => {}
    }
}

/// Every 10 s: the epoch check; every 30 s: the sweep.
async fn maintain(
    writer: Arc<Writer>,
    mut epoch: String,
    ready: Arc<Readiness>,
    rebuild: Arc<AtomicBool>,
    stop: Shutdown,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.wait() => return,
        }
        n += 1;
        match writer.store.epoch(false).await {
            Ok(Some(now)) if now == epoch => ready.store.store(true, Ordering::Relaxed),
            Ok(_) => {
                writer
                    .metrics
                    .rebuilds
                    .with_label_values(&["store_lost"])
                    .inc();
                tracing::warn!(
                    "the roster store lost its data (new or missing epoch): rebuilding from the input"
                );
                if let Ok(Some(fresh)) = writer.store.epoch(true).await {
                    epoch = fresh;
                }
                ready.rebuilding.store(true, Ordering::Relaxed);
                rebuild.store(true, Ordering::SeqCst);
            }
            Err(_) => ready.store.store(false, Ordering::Relaxed),
        }
        if n % 3 == 1 {
            sweep(&writer).await;
        }
    }
}

/// Expires tombstones, sends unpublished sessions, removes empty channels, and counts.
pub async fn sweep(writer: &Writer) {
    let (mut channels, mut members) = (0i64, 0i64);
    let mut after: Option<String> = None;
    loop {
        let Ok((page, next)) = writer.store.channels("", after.as_deref(), 1_000).await else {
            return;
        };
        for value in &page {
            let Ok(summary) = serde_json::from_slice::<Summary>(value) else {
                continue;
            };
            channels += 1;
            members += i64::try_from(summary.members).unwrap_or(0);
            let now = now_i64();
            let due = summary.next_expiry_ms.is_some_and(|t| t <= now)
                || summary.unpublished > 0
                || summary.horizon_expires_at_ms.is_some_and(|t| t <= now);
            if due {
                sweep_channel(writer, &summary.channel).await;
            }
        }
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    writer.metrics.channels.set(channels);
    writer.metrics.members.set(members);
}

async fn sweep_channel(writer: &Writer, channel: &str) {
    let swept = writer
        .apply_all(channel, |loaded, now| {
            let before = loaded.summary.clone();
            let gone = state::sweep(loaded, now);
            (loaded.summary != before || !gone.is_empty()).then_some(gone)
        })
        .await;
    let loaded = match swept {
        Ok(Some(loaded)) => loaded,
        Ok(None) => match writer
            .store
            .read_all(channel)
            .await
            .ok()
            .and_then(|s| super::writer::decode(channel, &s).ok())
        {
            Some((loaded, _)) => loaded,
            None => return,
        },
        Err(error) => {
            tracing::warn!(%error, "roster sweep");
            return;
        }
    };
    for member in loaded.members.values().flatten() {
        if member.ended.as_ref().is_some_and(|e| !e.published) {
            writer.publish_session(channel, member).await;
        }
    }
}
