//! Liveness: `/healthz` answers 503 once a component reports a failure it cannot recover from
//! (the publisher restarting in a loop, a spool that stays unreadable), so the orchestrator
//! restarts the process. A broker outage is never such a failure: restarting every pod at once
//! would not bring the broker back.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Cloneable latch shared by the components and the admin listener.
#[derive(Clone, Default)]
pub struct Health {
    failure: Arc<Mutex<Option<String>>>,
}

impl Health {
    pub fn new() -> Health {
        Health::default()
    }

    /// Marks the process unhealthy, with the reason `/healthz` shows.
    pub fn fail(&self, reason: impl Into<String>) {
        let reason = reason.into();
        tracing::error!(%reason, "hookbus is unhealthy; /healthz answers 503");
        *self.lock() = Some(reason);
    }

    /// Clears a failure the component recovered from after all.
    pub fn recover(&self) {
        if self.lock().take().is_some() {
            tracing::info!("hookbus is healthy again");
        }
    }

    /// `Err(reason)` while unhealthy.
    pub fn check(&self) -> Result<(), String> {
        self.lock().clone().map_or(Ok(()), Err)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Start-up recovery (reading the spool back, rebuilding the dedup set from it): the admin
/// port answers from the first moment, `/readyz` says "recovering" with the progress, and
/// `/healthz` fails only when the progress stops for `stall` (never on a fixed clock: a big
/// spool on a slow volume is read for as long as it takes). Progress is also the gauge
/// `hookbus_recovery_progress` and an INFO line every tenth of the work.
#[derive(Clone)]
pub struct Recovery {
    inner: Arc<Mutex<Progress>>,
    stall: Duration,
    gauge: Option<prometheus::Gauge>,
}

struct Progress {
    phase: &'static str,
    done: u64,
    /// 0 when unknown (counted in records instead of bytes).
    total: u64,
    last: Instant,
    started: Instant,
    logged_tenth: u64,
    finished: bool,
}

impl Recovery {
    /// A recovery that has not made progress yet; `gauge` (0..1) follows it.
    pub fn new(stall: Duration, gauge: Option<prometheus::Gauge>) -> Recovery {
        let now = Instant::now();
        if let Some(g) = &gauge {
            g.set(0.0);
        }
        Recovery {
            inner: Arc::new(Mutex::new(Progress {
                phase: "starting",
                done: 0,
                total: 0,
                last: now,
                started: now,
                logged_tenth: 0,
                finished: false,
            })),
            stall,
            gauge,
        }
    }

    /// A recovery that is already over (nothing to read back: memory and publish modes).
    pub fn finished() -> Recovery {
        let r = Recovery::new(Duration::MAX, None);
        r.finish();
        r
    }

    /// A new phase of `total` units (bytes; 0 when unknown): counts as progress.
    pub fn begin(&self, phase: &'static str, total: u64) {
        let mut p = self.lock();
        p.phase = phase;
        p.done = 0;
        p.total = total;
        p.last = Instant::now();
        p.logged_tenth = 0;
        tracing::info!(phase, total, "recovering");
    }

    /// `done` units of the current phase are through; progress when it grew.
    pub fn advance(&self, done: u64) {
        let mut p = self.lock();
        if done > p.done {
            p.done = done;
            p.last = Instant::now();
        }
        if let Some(tenth) = p.done.saturating_mul(10).checked_div(p.total) {
            if tenth > p.logged_tenth {
                p.logged_tenth = tenth;
                tracing::info!(
                    phase = p.phase,
                    done = p.done,
                    total = p.total,
                    "recovering: {}%",
                    tenth * 10
                );
            }
            if let Some(g) = &self.gauge {
                g.set((p.done as f64 / p.total as f64).min(1.0));
            }
        }
    }

    /// Recovery is over: ready and live from here on as the components say.
    pub fn finish(&self) {
        let mut p = self.lock();
        if !p.finished {
            p.finished = true;
            if let Some(g) = &self.gauge {
                g.set(1.0);
            }
            if p.phase != "starting" || p.done > 0 {
                tracing::info!(
                    seconds = p.started.elapsed().as_secs_f64(),
                    "recovery finished"
                );
            }
        }
    }

    pub fn is_finished(&self) -> bool {
        self.lock().finished
    }

    /// `Err(what is being recovered, and how far)` until [`Recovery::finish`].
    pub fn readiness(&self) -> Result<(), String> {
        let p = self.lock();
        if p.finished {
            return Ok(());
        }
        Err(match p.done.saturating_mul(100).checked_div(p.total) {
            Some(percent) => format!(
                "recovering: {} {percent}% ({} of {} bytes)",
                p.phase, p.done, p.total
            ),
            None => format!("recovering: {} ({} so far)", p.phase, p.done),
        })
    }

    /// `Err` once recovery has made no progress for the stall timeout.
    pub fn liveness(&self) -> Result<(), String> {
        self.liveness_at(Instant::now())
    }

    /// [`Recovery::liveness`] as of `now`.
    pub fn liveness_at(&self, now: Instant) -> Result<(), String> {
        let p = self.lock();
        let idle = now.saturating_duration_since(p.last);
        if p.finished || idle < self.stall {
            return Ok(());
        }
        Err(format!(
            "recovery stalled: no progress for {} s while {} ({} done)",
            idle.as_secs(),
            p.phase,
            p.done
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_is_unready_until_finished_and_dead_only_when_stalled() {
        let r = Recovery::new(Duration::from_millis(50), None);
        r.begin("reading the spool back", 1000);
        r.advance(400);
        assert_eq!(
            r.readiness(),
            Err("recovering: reading the spool back 40% (400 of 1000 bytes)".to_owned())
        );
        assert!(r.liveness().is_ok());
        // No progress for longer than the stall timeout: not live.
        let later = Instant::now() + Duration::from_millis(80);
        assert!(
            r.liveness_at(later)
                .unwrap_err()
                .starts_with("recovery stalled")
        );
        r.advance(400);
        assert!(r.liveness_at(later).is_err(), "no growth is no progress");
        r.advance(401);
        assert!(r.liveness_at(Instant::now()).is_ok());
        r.finish();
        assert!(r.readiness().is_ok() && r.liveness().is_ok());
        assert!(Recovery::finished().readiness().is_ok());
    }
}
