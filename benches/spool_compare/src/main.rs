//! Appends/s at N concurrent appenders, ~300-byte records, every append acknowledged only
//! after an fsync covering it (group commit). Variants:
//!   spool       hookbus src/spool (dedicated writer thread, fdatasync per group)
//!   fjall-gc    fjall 3 keyspace, same group-commit thread: WriteBatch + persist(SyncData)
//!   fjall-naive fjall insert + persist(SyncData) per append in spawn_blocking
//!   redb-gc     redb 4, same group-commit thread: one write txn (Durability::Immediate) per group
//!
//! Run: `cargo run --release -- <variant> <appenders> <seconds>` (results: docs/spool.md).
//! Set BENCH_DIR to a directory on the disk to measure (default /tmp).
#[path = "../../../src/spool/mod.rs"]
#[allow(dead_code)]
mod spool;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

const RECORD: usize = 300;
static NAIVE_SYNCS: AtomicU64 = AtomicU64::new(0);

type Job = (Bytes, oneshot::Sender<u64>);

/// A group-commit thread around a store: takes everything queued, writes it with `write`,
/// then completes every waiter.
fn group_commit<F: FnMut(&[(u64, Bytes)]) + Send + 'static>(mut write: F) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::spawn(move || {
        let mut seq = 0u64;
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            jobs.extend(rx.try_iter());
            let items: Vec<(u64, Bytes)> = jobs
                .iter()
                .map(|(b, _)| {
                    seq += 1;
                    (seq, b.clone())
                })
                .collect();
            write(&items);
            for ((_, reply), (s, _)) in jobs.into_iter().zip(items) {
                let _ = reply.send(s);
            }
        }
    });
    tx
}

enum Store {
    Spool(spool::Spool),
    Thread(mpsc::Sender<Job>),
    FjallNaive(fjall::Database, fjall::Keyspace, Arc<AtomicU64>),
}

impl Store {
    async fn append(&self, payload: Bytes) {
        match self {
            Store::Spool(s) => {
                s.append(vec![payload]).await.expect("append");
            }
            Store::Thread(tx) => {
                let (reply, done) = oneshot::channel();
                tx.send((payload, reply)).expect("send");
                done.await.expect("reply");
            }
            Store::FjallNaive(db, ks, seq) => {
                let (db, ks) = (db.clone(), ks.clone());
                NAIVE_SYNCS.fetch_add(1, Ordering::Relaxed);
                let key = seq.fetch_add(1, Ordering::Relaxed).to_be_bytes();
                tokio::task::spawn_blocking(move || {
                    ks.insert(key, payload.as_ref()).expect("insert");
                    db.persist(fjall::PersistMode::SyncData).expect("persist");
                })
                .await
                .expect("join");
            }
        }
    }
}

fn open(kind: &str, dir: &std::path::Path, syncs: Arc<AtomicU64>) -> Store {
    match kind {
        "spool" => Store::Spool(
            spool::Spool::open(spool::SpoolConfig {
                dir: dir.to_path_buf(),
                max_bytes: 8 << 30,
                segment_bytes: 64 << 20,
                retain: Duration::from_secs(1200),
            })
            .expect("open spool"),
        ),
        "fjall-gc" => {
            let db = fjall::Database::builder(dir)
                .manual_journal_persist(true)
                .open()
                .expect("fjall");
            let ks = db
                .keyspace("events", fjall::KeyspaceCreateOptions::default)
                .expect("ks");
            Store::Thread(group_commit(move |items| {
                let mut batch = db.batch();
                for (seq, b) in items {
                    batch.insert(&ks, seq.to_be_bytes(), b.as_ref());
                }
                batch.commit().expect("commit");
                db.persist(fjall::PersistMode::SyncData).expect("persist");
                syncs.fetch_add(1, Ordering::Relaxed);
            }))
        }
        "fjall-naive" => {
            let db = fjall::Database::builder(dir)
                .manual_journal_persist(true)
                .open()
                .expect("fjall");
            let ks = db
                .keyspace("events", fjall::KeyspaceCreateOptions::default)
                .expect("ks");
            Store::FjallNaive(db, ks, Arc::new(AtomicU64::new(0)))
        }
        "redb-gc" => {
            const T: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");
            let db = redb::Database::create(dir.join("db.redb")).expect("redb");
            Store::Thread(group_commit(move |items| {
                let txn = db.begin_write().expect("txn");
                {
                    let mut t = txn.open_table(T).expect("table");
                    for (seq, b) in items {
                        t.insert(*seq, b.as_ref()).expect("insert");
                    }
                }
                txn.commit().expect("commit");
                syncs.fetch_add(1, Ordering::Relaxed);
            }))
        }
        other => panic!("unknown store {other}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kind = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("spool")
        .to_owned();
    let appenders: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(8);
    let secs: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp".into());
    let dir = tempfile_dir(&base);
    let syncs = Arc::new(AtomicU64::new(0));
    let store = Arc::new(rt.block_on(async { open(&kind, &dir, syncs.clone()) }));
    let (count, lat) = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for a in 0..appenders {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    // Incompressible (xorshift) so fjall's LZ4 gains nothing a JSON event would not give.
                    let mut x = (a as u64 + 1) * 0x9E37_79B9_7F4A_7C15 ^ i;
                    let v: Vec<u8> = (0..RECORD)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x as u8
                        })
                        .collect();
                    let t = Instant::now();
                    store.append(Bytes::from(v)).await;
                    lat.push(t.elapsed());
                    i += 1;
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        all.sort();
        (all.len(), all)
    });
    let syncs = match &*store {
        Store::Spool(s) => s.sync_count(),
        Store::FjallNaive(..) => NAIVE_SYNCS.load(Ordering::Relaxed),
        _ => syncs.load(Ordering::Relaxed),
    };
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    let du = std::process::Command::new("du")
        .arg("-sk")
        .arg(&dir)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .unwrap_or("?")
                .to_owned()
        })
        .unwrap_or_default();
    println!(
        "{kind:12} appenders={appenders} appends/s={:>8.0} syncs={syncs} appends/sync={:.1} p50={:.2}ms p99={:.2}ms disk={du}KiB",
        count as f64 / secs as f64,
        count as f64 / syncs.max(1) as f64,
        p(0.5),
        p(0.99)
    );
    if let Store::Spool(s) = &*store {
        rt.block_on(s.close()).expect("close");
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir(base: &str) -> std::path::PathBuf {
    let d = std::path::PathBuf::from(base).join(format!("spool-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}
