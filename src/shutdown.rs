//! Shutdown signals and the draining latch. SIGTERM or SIGINT flips the latch; every server and
//! the publisher watch it. Readiness reads `is_draining` to answer 503 at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// Cloneable handle: `trigger` once, `wait` from anywhere.
#[derive(Clone)]
pub struct Shutdown {
    draining: Arc<AtomicBool>,
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let (tx, _rx) = watch::channel(false);
        Shutdown {
            draining: Arc::new(AtomicBool::new(false)),
            tx: Arc::new(tx),
        }
    }

    /// Starts the drain; idempotent.
    pub fn trigger(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.tx.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Resolves once `trigger` has been called. Cancel-safe.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        // `wait_for` only errs when the sender is gone, and `self` holds it.
        let _ = rx.wait_for(|&v| v).await;
    }
}

/// Resolves on the first SIGTERM or SIGINT.
///
/// # Errors
/// If the signal handlers cannot be installed (start-up only).
pub async fn signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_returns_after_trigger_even_if_late() {
        let s = Shutdown::new();
        assert!(!s.is_draining());
        s.trigger();
        assert!(s.is_draining());
        tokio::time::timeout(std::time::Duration::from_secs(1), s.clone().wait())
            .await
            .unwrap();
    }
}
