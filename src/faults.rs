//! Faults that tests inject into a running hookbus to prove it recovers: a spool read that
//! fails, a sink that panics, an accept that stalls, a start-up recovery that is slow or stuck. Production code only ever reads these
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
    /// Start-up recovery waits after each spool segment while true (a slow or stuck volume).
    recovery_held: std::sync::Mutex<bool>,
    recovery_released: std::sync::Condvar,
    /// Segments recovery has read while held (so a test knows it is past the first).
    recovery_steps: AtomicU32,
    /// Where the admin port was bound, as soon as it is (before recovery; see
    /// [`Faults::admin_addr`]).
    admin_addr: std::sync::Mutex<Option<std::net::SocketAddr>>,
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

    /// Start-up recovery stops after each spool segment it reads until
    /// [`Faults::release_recovery`]: a volume that reads slowly, or not at all.
    pub fn hold_recovery(&self) {
        *self
            .inner
            .recovery_held
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = true;
    }

    pub fn release_recovery(&self) {
        *self
            .inner
            .recovery_held
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = false;
        self.inner.recovery_released.notify_all();
    }

    /// The admin port's address once bound: it answers while `start_with` is still
    /// recovering, before it returns [`crate::app::Running`].
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        *self
            .inner
            .admin_addr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn admin_bound(&self, addr: std::net::SocketAddr) {
        *self
            .inner
            .admin_addr
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(addr);
    }

    /// Segments start-up recovery has read so far.
    pub fn recovery_steps(&self) -> u32 {
        self.inner.recovery_steps.load(Ordering::SeqCst)
    }

    /// Called by recovery after each segment; blocks (a blocking thread) while held.
    pub(crate) fn recovery_step(&self) {
        self.inner.recovery_steps.fetch_add(1, Ordering::SeqCst);
        let mut held = self
            .inner
            .recovery_held
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while *held {
            held = self
                .inner
                .recovery_released
                .wait(held)
                .unwrap_or_else(|p| p.into_inner());
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
