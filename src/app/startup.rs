//! Start-up while the admin port already answers: the admin listener bound first, `/readyz`
//! saying "recovering …" until the spool is read back, and everything up to taking webhooks
//! (the sink, the dedup set, the spool, the webhook port).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;

use super::{Readiness, Shared, acceptor, claims, connect_sink, limits, open_dead_letters};
use crate::config::Config;
use crate::faults::Faults;
use crate::health::{Health, Recovery};
use crate::ingress::{self, Acceptor, AdminState};
use crate::metrics::Metrics;
use crate::publisher::Source;
use crate::route::Router;
use crate::shutdown::Shutdown;

/// The admin listener: serving from before recovery until the end of the drain.
pub(super) struct AdminPort {
    pub(super) addr: SocketAddr,
    /// The admin port stops last, on its own signal, so probes see the drain.
    pub(super) stop: Shutdown,
    pub(super) task: JoinHandle<()>,
}

pub(super) fn serve_admin_port(
    config: &Config,
    state: AdminState,
    faults: &Faults,
) -> anyhow::Result<AdminPort> {
    let listener = ingress::bind(config.admin.listen, config.admin.max_connections)
        .with_context(|| format!("binding admin.listen {}", config.admin.listen))?;
    let addr = listener.local_addr()?;
    faults.admin_bound(addr);
    let stop = Shutdown::new();
    let limits = limits(config, config.admin.max_connections, Duration::from_secs(1));
    let task = tokio::spawn(ingress::serve_admin(
        listener,
        Arc::new(state),
        limits,
        stop.clone(),
    ));
    Ok(AdminPort { addr, stop, task })
}

/// `/readyz`: "recovering …" until `recovery` finishes, then the ack mode's readiness, which
/// recovery leaves in `after`.
pub(super) fn readiness_after_recovery(
    recovery: &Recovery,
    after: &Arc<OnceLock<Readiness>>,
) -> Readiness {
    let (recovery, after) = (recovery.clone(), after.clone());
    Arc::new(move || {
        recovery.readiness()?;
        after
            .get()
            .map_or(Err("starting".to_owned()), |ready| ready())
    })
}

/// Everything up to taking webhooks, while the admin port already answers: the sink, the
/// dedup set, the spool read back (with `recovery` following it), the webhook port bound.
pub(super) async fn recover(
    config: &Config,
    metrics: Metrics,
    router: Router,
    health: Health,
    recovery: &Recovery,
    faults: &Faults,
) -> anyhow::Result<(Shared, Acceptor, Source, tokio::net::TcpListener)> {
    recovery.begin("connecting the sink", 0);
    let sink = connect_sink(config, &router).await?;
    let claims = claims(config, &metrics)?;
    let dead_letters = open_dead_letters(config).await?;
    metrics
        .spool_capacity_bytes
        .set(config.spool.max_bytes as i64);
    let (acceptor, source, ready) = acceptor(config, &sink, &claims, recovery, faults).await?;
    let http = ingress::bind(config.http.listen, config.http.max_connections)
        .with_context(|| format!("binding http.listen {}", config.http.listen))?;
    let shared = Shared {
        sink,
        claims,
        dead_letters,
        health,
        router,
        metrics,
        ready,
    };
    Ok((shared, acceptor, source, http))
}
