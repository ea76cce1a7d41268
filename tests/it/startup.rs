//! Start-up recovery: the admin port answers while the spool is read back (`/readyz` 503 with
//! the progress, `/healthz` 200, `hookbus_recovery_progress` between 0 and 1), and `/healthz`
//! fails only once the recovery stops making progress for `spool.recovery_stall_timeout`.
//! A slow volume is the `hold_recovery` fault: recovery waits after each segment it read.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hookbus::app;
use hookbus::faults::Faults;

use crate::common::{NatsServer, config, metric, post, request, start, wait_for};

const SECS: Duration = Duration::from_secs(30);

/// Small segments: the spool of `events` G1 events spans many of them.
fn spool_config(spool: &Path, nats: &NatsServer, stall: &str) -> hookbus::config::Config {
    config(
        spool,
        &format!(
            "[ack]\nmode = \"spool\"\n[spool]\nsegment_bytes = 4096\n\
             recovery_stall_timeout = \"{stall}\"\n[nats]\nurl = \"{}\"\n",
            nats.url()
        ),
    )
}

async fn fill(spool: &Path, nats: &NatsServer, events: usize) {
    let hb = start(spool_config(spool, nats, "2m")).await;
    for n in 0..events {
        let body = format!(
            r#"{{"action":"join","sub_key":"sub-c-startup","channel":"room.{}","uuid":"u-{n}","timestamp":1718035200,"occupancy":1}}"#,
            n % 7
        );
        assert_eq!(post(hb.http_addr, body.as_bytes()).await.status, 200);
    }
    hb.stop().await.expect("clean stop");
    let segments = std::fs::read_dir(spool).unwrap().count();
    assert!(
        segments > 10,
        "expected many segments, got {segments} entries"
    );
}

async fn text(admin: SocketAddr, path: &str) -> (u16, String) {
    let r = request(admin, "GET", path, &[], b"").await;
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

/// Starts hookbus with recovery held; returns the faults and the start task once the admin
/// port answers and recovery has read its first segment.
async fn start_held(
    spool: &Path,
    nats: &NatsServer,
    stall: &str,
) -> (
    Faults,
    SocketAddr,
    tokio::task::JoinHandle<anyhow::Result<app::Running>>,
) {
    let faults = Faults::none();
    faults.hold_recovery();
    let task = tokio::spawn(app::start_with(
        spool_config(spool, nats, stall),
        faults.clone(),
    ));
    let f = faults.clone();
    let admin = wait_for("the admin port, before recovery ends", SECS, || {
        let f = f.clone();
        async move { f.admin_addr().filter(|_| f.recovery_steps() >= 1) }
    })
    .await;
    (faults, admin, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_that_progresses_is_live_and_unready_until_done() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    fill(&spool, &nats, 300).await;

    let (faults, admin, task) = start_held(&spool, &nats, "10m").await;
    let (status, body) = text(admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("recovering: reading the spool back"),
        "{body}"
    );
    assert_eq!(
        text(admin, "/healthz").await.0,
        200,
        "a recovery making progress is live"
    );
    let progress = metric(admin, "hookbus_recovery_progress").await;
    assert!(progress > 0.0 && progress < 1.0, "progress {progress}");
    assert_eq!(metric(admin, "hookbus_ready").await, 0.0);

    faults.release_recovery();
    let hb = task.await.unwrap().expect("hookbus starts after recovery");
    assert_eq!(hb.admin_addr, admin);
    assert_eq!(metric(admin, "hookbus_recovery_progress").await, 1.0);
    wait_for("/readyz 200", SECS, || async move {
        (text(admin, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    hb.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_recovery_fails_liveness_and_recovers_it_when_progress_resumes() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    fill(&spool, &nats, 100).await;

    let (faults, admin, task) = start_held(&spool, &nats, "300ms").await;
    let body = wait_for("/healthz 503 once progress stopped", SECS, || async move {
        let (status, body) = text(admin, "/healthz").await;
        (status == 503).then_some(body)
    })
    .await;
    assert!(body.contains("recovery stalled"), "{body}");
    assert_eq!(text(admin, "/readyz").await.0, 503);

    faults.release_recovery();
    let hb = task.await.unwrap().expect("hookbus starts after recovery");
    assert_eq!(
        text(admin, "/healthz").await.0,
        200,
        "live again once recovered"
    );
    hb.stop().await.expect("clean stop");
}
