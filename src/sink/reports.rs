//! The Kafka producer's delivery reports and errors, served on the tokio runtime instead of by
//! a polling thread of the producer's own (one thread crossing fewer per report). Generic over
//! the producer's context; the sink's context settles each message in its `delivery`.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{BaseProducer, Producer, ProducerContext};

/// librdkafka's main queue (delivery reports and errors) as the runtime sees it: the queue
/// writes a byte to `signal` when it goes from empty to non-empty, and [`serve_reports`]
/// serves it on a tokio task. No thread of its own polls the producer, so a delivery report
/// crosses one thread (librdkafka's broker thread → the runtime) instead of two.
pub(super) struct ReportQueue {
    queue: *mut rdkafka::bindings::rd_kafka_queue_t,
    /// The write end librdkafka signals on; closed only after the signal is disabled.
    _signal: std::os::unix::net::UnixStream,
}

// SAFETY: a librdkafka queue handle may be used from any thread; only `serve_reports` uses it.
unsafe impl Send for ReportQueue {}

impl ReportQueue {
    pub(super) fn new<C: ProducerContext>(
        producer: &BaseProducer<C>,
    ) -> std::io::Result<(ReportQueue, tokio::net::UnixStream)> {
        use std::os::fd::AsRawFd;
        let (signal, wake) = std::os::unix::net::UnixStream::pair()?;
        signal.set_nonblocking(true)?;
        wake.set_nonblocking(true)?;
        // SAFETY: the client outlives this handle (the task holding both drops the handle
        // first); the fd stays open until the signal is disabled in `drop`.
        let queue = unsafe {
            let queue = rdkafka::bindings::rd_kafka_queue_get_main(producer.client().native_ptr());
            rdkafka::bindings::rd_kafka_queue_io_event_enable(
                queue,
                signal.as_raw_fd(),
                b"1".as_ptr().cast(),
                1,
            );
            queue
        };
        let wake = tokio::net::UnixStream::from_std(wake)?;
        Ok((
            ReportQueue {
                queue,
                _signal: signal,
            },
            wake,
        ))
    }

    fn len(&self) -> usize {
        // SAFETY: a live handle (see `new`).
        unsafe { rdkafka::bindings::rd_kafka_queue_length(self.queue) }
    }
}

impl Drop for ReportQueue {
    fn drop(&mut self) {
        // SAFETY: a live handle; after this librdkafka no longer writes to the fd.
        unsafe {
            rdkafka::bindings::rd_kafka_queue_io_event_enable(self.queue, -1, std::ptr::null(), 0);
            rdkafka::bindings::rd_kafka_queue_destroy(self.queue);
        }
    }
}

/// Serves the producer's delivery reports and errors on the runtime: whenever librdkafka
/// signals (and every 100 ms in any case, for errors and as a backstop), the queue is served
/// until empty, which re-arms the signal.
pub(super) async fn serve_reports<C: ProducerContext>(
    producer: Arc<BaseProducer<C>>,
    queue: ReportQueue,
    wake: tokio::net::UnixStream,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            ready = wake.readable() => {
                if ready.is_err() {
                    return;
                }
                loop {
                    match wake.try_read(&mut buf) {
                        Ok(0) => return,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => return,
                    }
                }
            }
            _ = tick.tick() => {}
        }
        loop {
            producer.poll(Duration::ZERO);
            if queue.len() == 0 {
                break;
            }
        }
    }
}
