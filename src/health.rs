//! Liveness: `/healthz` answers 503 once a component reports a failure it cannot recover from
//! (the publisher restarting in a loop, a spool that stays unreadable), so the orchestrator
//! restarts the process. A broker outage is never such a failure: restarting every pod at once
//! would not bring the broker back.

use std::sync::{Arc, Mutex};

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
