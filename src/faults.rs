//! Faults that tests inject into a running hookbus to prove it recovers: a spool read that
//! fails, a sink that panics, an accept that stalls. Production code only ever reads these
//! (one relaxed atomic load at each point); [`Faults::none`] never fires.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tokio::sync::Semaphore;

/// Cloneable handle; every clone sees the same faults.
#[derive(Clone, Default)]
pub struct Faults {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    spool_read_errors: AtomicU32,
    spool_reads_broken: AtomicBool,
    sink_panics: AtomicU32,
    publisher_panics: AtomicU32,
    accept_gate: std::sync::Mutex<Option<Arc<Semaphore>>>,
}

impl Faults {
    /// No faults (what the binary runs with).
    pub fn none() -> Faults {
        Faults::default()
    }

    /// The next `n` spool reads fail with an I/O error.
    pub fn fail_spool_reads(&self, n: u32) {
        self.inner.spool_read_errors.fetch_add(n, Ordering::SeqCst);
    }

    /// Every spool read fails until [`Faults::repair_spool_reads`].
    pub fn break_spool_reads(&self) {
        self.inner.spool_reads_broken.store(true, Ordering::SeqCst);
    }

    pub fn repair_spool_reads(&self) {
        self.inner.spool_reads_broken.store(false, Ordering::SeqCst);
    }

    /// The next `n` sends panic inside the sink.
    pub fn panic_sends(&self, n: u32) {
        self.inner.sink_panics.fetch_add(n, Ordering::SeqCst);
    }

    /// The publisher loop panics `n` times (outside any message), to exercise its restart.
    pub fn panic_publisher(&self, n: u32) {
        self.inner.publisher_panics.fetch_add(n, Ordering::SeqCst);
    }

    /// Accepts stop after claiming their ids until [`Faults::open_accepts`] (a stalled disk or
    /// queue, from the request's point of view).
    pub fn hold_accepts(&self) {
        let mut gate = self
            .inner
            .accept_gate
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *gate = Some(Arc::new(Semaphore::new(0)));
    }

    /// Lets held and later accepts through.
    pub fn open_accepts(&self) {
        let gate = self
            .inner
            .accept_gate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(gate) = gate {
            gate.close();
        }
    }

    /// Consumes one injected spool read error, if any.
    pub(crate) fn spool_read_error(&self) -> Option<std::io::Error> {
        let fire = self.inner.spool_reads_broken.load(Ordering::Relaxed)
            || take_one(&self.inner.spool_read_errors);
        fire.then(|| std::io::Error::other("injected spool read error"))
    }

    /// Panics if a sink panic was injected.
    pub(crate) fn maybe_panic_in_sink(&self) {
        if take_one(&self.inner.sink_panics) {
            panic!("injected sink panic");
        }
    }

    /// Panics if a publisher panic was injected.
    pub(crate) fn maybe_panic_in_publisher(&self) {
        if take_one(&self.inner.publisher_panics) {
            panic!("injected publisher panic");
        }
    }

    /// Waits while accepts are held.
    pub(crate) async fn accept_gate(&self) {
        let gate = self
            .inner
            .accept_gate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(gate) = gate {
            // Closed when opened: the acquire then fails, which is the signal to go on.
            let _ = gate.acquire().await;
        }
    }
}

fn take_one(counter: &AtomicU32) -> bool {
    counter.load(Ordering::Relaxed) > 0
        && counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
}
