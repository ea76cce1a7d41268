//! The benchmark baseline: a bare hyper 1.x HTTP/1.1 server that reads the whole body and
//! answers 200 with a small JSON body — what any webhook receiver must do at least.
//!
//! `cargo run --release --example bare_hyper -- 127.0.0.1:18090`

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18090".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("bare hyper on {addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let reply = format!(
                    "{{\"accepted\":1,\"duplicates\":0,\"bytes\":{}}}",
                    body.len()
                );
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(reply))))
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
