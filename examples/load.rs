//! A small load generator for the benchmarks: distinct PubNub G1 events over keep-alive
//! HTTP/1.1 connections, either as fast as possible or at a fixed total rate. With a rate, a
//! request whose connection was still busy when it fell due counts its latency from when it was
//! due (so a server stall is not hidden); one sent by an idle connection counts from when it
//! was sent (so the timer's 1 ms granularity is not charged to the server).
//!
//! ```text
//! cargo run --release --example load -- --addr 127.0.0.1:8080 --connections 50 --seconds 10
//! cargo run --release --example load -- --addr 127.0.0.1:8080 --rate 5000 --seconds 10
//! cargo run --release --example load -- --addr 127.0.0.1:8080 --count 100000
//! ```
//! Prints one JSON line: sent, ok, errors, requests_per_second, p50_ms, p99_ms, max_ms.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Args {
    addr: String,
    connections: usize,
    rate: f64,
    seconds: f64,
    count: u64,
    run: u64,
}

fn args() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:8080".to_owned(),
        connections: 50,
        rate: 0.0,
        seconds: 10.0,
        count: 0,
        run: std::process::id() as u64,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--addr" => a.addr = value,
            "--connections" => a.connections = value.parse().unwrap_or(50),
            "--rate" => a.rate = value.parse().unwrap_or(0.0),
            "--seconds" => a.seconds = value.parse().unwrap_or(10.0),
            "--count" => a.count = value.parse().unwrap_or(0),
            "--run" => a.run = value.parse().unwrap_or(0),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(args());
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let (args, next) = (args.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            connection(&args, &next, start, deadline).await
        }));
    }
    let mut latencies = Vec::new();
    let (mut ok, mut errors) = (0u64, 0u64);
    for t in tasks {
        let (l, o, e) = t.await??;
        latencies.extend(l);
        ok += o;
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |us| *us as f64 / 1000.0)
    };
    println!(
        "{{\"sent\":{},\"ok\":{ok},\"errors\":{errors},\"requests_per_second\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
        ok + errors,
        (ok + errors) as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}

async fn connection(
    args: &Args,
    next: &AtomicU64,
    start: Instant,
    deadline: Instant,
) -> anyhow::Result<(Vec<u64>, u64, u64)> {
    let stream = TcpStream::connect(&args.addr).await?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut latencies = Vec::new();
    let (mut ok, mut errors) = (0u64, 0u64);
    let actions = ["join", "leave", "timeout", "state-change"];
    let mut line = String::new();
    let mut idle_since = Instant::now();
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if args.count > 0 && n >= args.count {
            break;
        }
        // With a rate, request n is due at n / rate; without, now.
        let due = if args.rate > 0.0 {
            start + Duration::from_secs_f64(n as f64 / args.rate)
        } else {
            Instant::now()
        };
        if args.count == 0 && due >= deadline {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let sent = if idle_since <= due {
            Instant::now()
        } else {
            due
        };
        let body = format!(
            r#"{{"action":"{}","sub_key":"sub-c-bench","channel":"room.{}","uuid":"u-{}-{n}","timestamp":{},"occupancy":{},"data":{{"n":{n}}}}}"#,
            actions[(n % 4) as usize],
            n % 100,
            args.run,
            1718035200 + n % 3600,
            n % 50 + 1
        );
        let head = format!(
            "POST /webhooks/pubnub HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        write.write_all(head.as_bytes()).await?;
        write.write_all(body.as_bytes()).await?;
        // Status line, headers, body.
        line.clear();
        read.read_line(&mut line).await?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut length = 0usize;
        loop {
            line.clear();
            read.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut sink = vec![0u8; length];
        read.read_exact(&mut sink).await?;
        latencies.push(sent.elapsed().as_micros() as u64);
        idle_since = Instant::now();
        if status == 200 {
            ok += 1;
        } else {
            errors += 1;
        }
    }
    Ok((latencies, ok, errors))
}
