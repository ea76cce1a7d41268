//! Kafka over TLS, mutual TLS and SASL_SSL (SCRAM-SHA-512), each through a real handshake:
//! tansu serves plaintext, so a real TLS terminator (stunnel) sits in front of it as the
//! advertised listener; SCRAM is tansu's own. Every fixture round-trips; a wrong CA, a missing
//! client certificate or a wrong password is a clear error in the log, the sink stays down
//! and spool mode keeps accepting.

use std::time::Duration;

use crate::common::kafka::{Reader, assert_exactly_once, kafka};
use crate::common::pki::Pki;
use crate::common::ports::PORT_ATTEMPTS;
use crate::common::stunnel::Stunnel;
use crate::common::*;

const SECS: Duration = Duration::from_secs(30);

/// [`kafka`] in spool mode with short timeouts and these client `properties`.
fn kafka_section(brokers: &str, properties: &[(&str, String)]) -> String {
    let mut extra =
        "[sink]\ntimeout = \"5s\"\nmax_backoff = \"200ms\"\n[kafka.properties]\n".to_owned();
    for (k, v) in properties {
        extra.push_str(&format!("{k:?} = {v:?}\n"));
    }
    kafka(brokers, "spool", &extra)
}

/// Posts every fixture and reads them back with a consumer using `consumer` settings.
async fn fixtures_round_trip(
    hookbus: std::net::SocketAddr,
    brokers: &str,
    consumer: Vec<(&'static str, String)>,
) {
    let expected = post_fixtures(hookbus).await;
    let mut topics: Vec<&'static str> = expected.iter().map(|(_, t, _)| *t).collect();
    topics.sort();
    topics.dedup();
    let brokers = brokers.to_owned();
    let count = expected.len();
    let records = tokio::task::spawn_blocking(move || {
        let properties: Vec<(&str, &str)> =
            consumer.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Reader::new(&brokers, &topics, 1, &properties).read(count, Duration::from_secs(1), SECS)
    })
    .await
    .unwrap();
    let ids = expected.iter().map(|(_, _, e)| e["id"].as_str().unwrap());
    assert_exactly_once(&records, ids);
}

/// hookbus with `properties` cannot get through: 200 in spool mode, sink down, and the log
/// line from the client says why.
async fn refused(brokers: &str, properties: &[(&str, String)], why: &[&str], env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let hb = Process::spawn_with_env(&spool, &kafka_section(brokers, properties), env).await;
    let body = std::fs::read(format!("{FIXTURES}/g1-join.json")).unwrap();
    assert_eq!(post(hb.http_addr, &body).await.status, 200);
    let deadline = std::time::Instant::now() + SECS;
    while !why.iter().any(|w| hb.log().contains(w)) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {why:?} in the log:\n{}",
            hb.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = hb.admin_addr;
    wait_for("the spooled event counted as pending", SECS, || async move {
        (metric(admin, "hookbus_spool_pending_events").await == 1.0).then_some(())
    })
    .await;
    assert_eq!(metric(admin, "hookbus_sink_up{sink=\"kafka\"}").await, 0.0);
    for (_, secret) in env {
        assert!(!hb.log().contains(secret), "a secret reached the log");
    }
}

/// A broker made by `broker(tls_port)` behind a TLS terminator on `tls_port`, a port picked
/// here (tansu must be told the port it advertises before the terminator binds it): when
/// another process takes the port first, both start again on another one.
fn behind_tls(
    pki: &Pki,
    client_ca: Option<&std::path::Path>,
    broker: impl Fn(u16) -> Tansu,
) -> (Tansu, Stunnel) {
    for _ in 0..PORT_ATTEMPTS {
        let tls_port = free_port();
        let broker = broker(tls_port);
        let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
        if let Some(tunnel) = Stunnel::start(tls_port, broker.port, &cert, &key, client_ca) {
            return (broker, tunnel);
        }
    }
    panic!("each of {PORT_ATTEMPTS} TLS ports was taken before stunnel could bind it");
}

fn tls(pki: &Pki, ca: &str) -> Vec<(&'static str, String)> {
    vec![
        ("security.protocol", "SSL".to_owned()),
        ("ssl.ca.location", pki.path(ca).display().to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_server_verification() {
    let pki = Pki::new();
    let (broker, _tunnel) = behind_tls(&pki, None, Tansu::behind);
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(
        dir.path(),
        &kafka_section(&broker.brokers(), &tls(&pki, "ca.pem")),
    ))
    .await;
    fixtures_round_trip(hb.http_addr, &broker.brokers(), tls(&pki, "ca.pem")).await;
    hb.stop().await.unwrap();

    refused(
        &broker.brokers(),
        &tls(&pki, "other-ca.pem"),
        &["certificate verify failed"],
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_required_client_certificate() {
    let pki = Pki::new();
    let (broker, _tunnel) = behind_tls(&pki, Some(&pki.path("ca.pem")), Tansu::behind);
    let mut mtls = tls(&pki, "ca.pem");
    mtls.push((
        "ssl.certificate.location",
        pki.path("client.pem").display().to_string(),
    ));
    mtls.push((
        "ssl.key.location",
        pki.path("client.key").display().to_string(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(dir.path(), &kafka_section(&broker.brokers(), &mtls))).await;
    fixtures_round_trip(hb.http_addr, &broker.brokers(), mtls.clone()).await;
    hb.stop().await.unwrap();

    // Without a client certificate the terminator ends the handshake.
    refused(
        &broker.brokers(),
        &tls(&pki, "ca.pem"),
        &["certificate required"],
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_scram_with_the_password_from_the_environment() {
    let pki = Pki::new();
    let (broker, _tunnel) = behind_tls(&pki, None, |tls_port| {
        Tansu::with_scram_user(Some(tls_port), "hookbus", "pa55word")
    });
    let sasl = |password: &str| {
        let mut p = tls(&pki, "ca.pem");
        p[0].1 = "SASL_SSL".to_owned();
        p.push(("sasl.mechanisms", "SCRAM-SHA-512".to_owned()));
        p.push(("sasl.username", "hookbus".to_owned()));
        p.push(("sasl.password", password.to_owned()));
        p
    };
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let hb = Process::spawn_with_env(
        &spool,
        &kafka_section(&broker.brokers(), &sasl("${KAFKA_SASL_PASSWORD}")),
        &[("KAFKA_SASL_PASSWORD", "pa55word")],
    )
    .await;
    fixtures_round_trip(hb.http_addr, &broker.brokers(), sasl("pa55word")).await;
    assert!(
        !hb.log().contains("pa55word"),
        "the password never reaches the log"
    );
    drop(hb);

    refused(
        &broker.brokers(),
        &sasl("${KAFKA_SASL_PASSWORD}"),
        &["SASL SCRAM authentication failed"],
        &[("KAFKA_SASL_PASSWORD", "not-the-password")],
    )
    .await;
}
