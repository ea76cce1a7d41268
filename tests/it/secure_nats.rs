//! NATS with TLS (server verification and required client certificates), NKey, token and JWT
//! credentials, against real `nats-server` processes configured for each. Every fixture
//! round-trips; a wrong CA, client key, seed or token is a clear error in the log, the sink
//! stays down (`hookbus_sink_up` 0) and spool mode keeps accepting.

use std::time::Duration;

use crate::common::pki::Pki;
use crate::common::*;
use async_nats::jetstream;

const SECS: Duration = Duration::from_secs(30);

/// Posts every fixture and waits until the stream holds exactly their events, reading it with
/// a client made by `options`.
async fn fixtures_round_trip(
    hookbus: std::net::SocketAddr,
    url: &str,
    options: impl Fn() -> async_nats::ConnectOptions,
) {
    let expected = post_fixtures(hookbus).await;
    let mut want: Vec<String> = expected
        .iter()
        .map(|(_, _, e)| e["id"].as_str().unwrap().to_owned())
        .collect();
    want.sort();
    let client = options().connect(url).await.expect("test client connects");
    let js = jetstream::new(client);
    let got = wait_for("every fixture event in the stream", SECS, || {
        let js = js.clone();
        let n = want.len();
        async move {
            let mut stream = js.get_stream("PRESENCE").await.ok()?;
            let info = stream.info().await.ok()?.clone();
            if (info.state.messages as usize) < n {
                return None;
            }
            let mut ids = Vec::new();
            for seq in info.state.first_sequence..=info.state.last_sequence {
                let m = stream.get_raw_message(seq).await.ok()?;
                ids.push(m.headers.get("hookbus-event-id")?.as_str().to_owned());
            }
            Some(ids)
        }
    })
    .await;
    let mut got = got;
    got.sort();
    assert_eq!(got, want);
}

fn nats_section(url: &str, lines: &str) -> String {
    format!(
        "[ack]\nmode = \"spool\"\n[sink]\nkind = \"nats\"\n[nats]\nurl = \"{url}\"\nconnect_timeout = \"2s\"\n{lines}"
    )
}

/// A hookbus that cannot authenticate: still answers 200 in spool mode, reports the sink down,
/// and says why in its log.
async fn refused(url: &str, lines: &str, why: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let hb = Process::spawn(&spool, &nats_section(url, lines)).await;
    let body = std::fs::read(format!("{FIXTURES}/g1-join.json")).unwrap();
    let r = post(hb.http_addr, &body).await;
    assert_eq!(
        r.status, 200,
        "spool mode accepts while the broker refuses us"
    );
    // hookbus's own diagnosis names the server and the reason on one line.
    wait_for("the refusal in the log", SECS, || async {
        hb.log()
            .lines()
            .any(|l| l.contains("not connected to") && why.iter().any(|w| l.contains(w)))
            .then_some(())
    })
    .await;
    assert_eq!(
        metric(hb.admin_addr, "hookbus_sink_up{sink=\"nats\"}").await,
        0.0
    );
    assert_eq!(
        metric(hb.admin_addr, "hookbus_spool_pending_events").await,
        1.0
    );
}

fn tls_block(pki: &Pki, verify: bool) -> String {
    format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: {verify}\n  timeout: 2\n}}",
        pki.path("server.pem").display().to_string(),
        pki.path("server.key").display().to_string(),
        pki.path("ca.pem").display().to_string(),
    )
}

fn path(pki: &Pki, file: &str) -> String {
    pki.path(file).display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_server_verification() {
    let pki = Pki::new();
    let nats = NatsServer::start_with(&tls_block(&pki, false));
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let spool = tempfile::tempdir().unwrap();
    let hb = start(config(
        spool.path(),
        &nats_section(&url, &format!("tls_ca_file = {:?}", path(&pki, "ca.pem"))),
    ))
    .await;
    let ca = pki.path("ca.pem");
    fixtures_round_trip(hb.http_addr, &url, || {
        async_nats::ConnectOptions::new()
            .add_root_certificates(ca.clone())
            .require_tls(true)
    })
    .await;
    assert_eq!(
        metric(hb.admin_addr, "hookbus_sink_up{sink=\"nats\"}").await,
        1.0
    );
    hb.stop().await.unwrap();

    refused(
        &url,
        &format!("tls_ca_file = {:?}", path(&pki, "other-ca.pem")),
        &["invalid peer certificate", "UnknownIssuer"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_required_client_certificate() {
    let pki = Pki::new();
    let nats = NatsServer::start_with(&tls_block(&pki, true));
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let spool = tempfile::tempdir().unwrap();
    let hb = start(config(
        spool.path(),
        &nats_section(
            &url,
            &format!(
                "tls_ca_file = {:?}\ntls_cert_file = {:?}\ntls_key_file = {:?}",
                path(&pki, "ca.pem"),
                path(&pki, "client.pem"),
                path(&pki, "client.key")
            ),
        ),
    ))
    .await;
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    fixtures_round_trip(hb.http_addr, &url, || {
        async_nats::ConnectOptions::new()
            .add_root_certificates(ca.clone())
            .add_client_certificate(cert.clone(), key.clone())
    })
    .await;
    hb.stop().await.unwrap();

    // A certificate from a CA the server does not trust is refused by the server.
    refused(
        &url,
        &format!(
            "tls_ca_file = {:?}\ntls_cert_file = {:?}\ntls_key_file = {:?}",
            path(&pki, "ca.pem"),
            path(&pki, "stranger.pem"),
            path(&pki, "stranger.key")
        ),
        &[
            "TLS error",
            "IO error",
            "connection reset",
            "broken pipe",
            "unexpected end of file",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_user() {
    let user = nkeys::KeyPair::new_user();
    let nats = NatsServer::start_with(&format!(
        "authorization {{ users = [ {{ nkey: {} }} ] }}",
        user.public_key()
    ));
    let dir = tempfile::tempdir().unwrap();
    let seed_file = dir.path().join("hookbus.nk");
    std::fs::write(&seed_file, format!("{}\n", user.seed().unwrap())).unwrap();
    let hb = start(config(
        &dir.path().join("spool"),
        &nats_section(
            &nats.url(),
            &format!("nkey_seed_file = {:?}", seed_file.display().to_string()),
        ),
    ))
    .await;
    let seed = user.seed().unwrap();
    fixtures_round_trip(hb.http_addr, &nats.url(), || {
        async_nats::ConnectOptions::new().nkey(seed.clone())
    })
    .await;
    hb.stop().await.unwrap();

    let stranger = dir.path().join("stranger.nk");
    std::fs::write(&stranger, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    refused(
        &nats.url(),
        &format!("nkey_seed_file = {:?}", stranger.display().to_string()),
        &["authorization violation"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_from_the_environment_and_a_wrong_one() {
    let nats = NatsServer::start_with("authorization { token: \"t0ps3cret\" }");
    let dir = tempfile::tempdir().unwrap();
    // `${VAR}` references are resolved when the binary loads its config.
    let spool = dir.path().join("spool");
    let hb = Process::spawn_with_env(
        &spool,
        &nats_section(&nats.url(), "token = \"${NATS_TEST_TOKEN}\""),
        &[("NATS_TEST_TOKEN", "t0ps3cret")],
    )
    .await;
    fixtures_round_trip(hb.http_addr, &nats.url(), || {
        async_nats::ConnectOptions::new().token("t0ps3cret".to_owned())
    })
    .await;
    assert!(
        !hb.log().contains("t0ps3cret"),
        "the token never reaches the log"
    );
    drop(hb);

    refused(
        &nats.url(),
        "token = \"wrong\"",
        &["authorization violation"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_credentials_file() {
    let auth = nats_jwt::Decentralized::new();
    let nats = NatsServer::start_with(&auth.server_conf);
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("hookbus.creds");
    std::fs::write(&creds, &auth.creds).unwrap();
    let hb = start(config(
        &dir.path().join("spool"),
        &nats_section(
            &nats.url(),
            &format!("credentials_file = {:?}", creds.display().to_string()),
        ),
    ))
    .await;
    let text = auth.creds.clone();
    fixtures_round_trip(hb.http_addr, &nats.url(), || {
        async_nats::ConnectOptions::with_credentials(&text).expect("creds parse")
    })
    .await;
    hb.stop().await.unwrap();

    // Credentials of another operator's user.
    let other = dir.path().join("other.creds");
    std::fs::write(&other, nats_jwt::Decentralized::new().creds).unwrap();
    refused(
        &nats.url(),
        &format!("credentials_file = {:?}", other.display().to_string()),
        &["authorization violation"],
    )
    .await;
}
