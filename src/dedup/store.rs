//! The dedup set shared by every replica (`dedup.shared`): Redis or Valkey, one key per event
//! id (`hookbus:dedup:<hash of the id>`, so every command touches one key and one slot).
//!
//! The two phases map onto it atomically, each a small Lua script: a claim is a set-if-absent
//! holding this process's owner token, with an expiry longer than the owner can still publish
//! (renewed while it waits), so a claim outlives its owner only when the owner died; a commit
//! turns it into `c` for the dedup window; a release deletes it only if this process still owns
//! it. Claims are one round trip per request (a pipeline for a batch); commits and releases go
//! out after the answer, pipelined by a task of their own.
//!
//! The store never fails a request: an operation that errs or takes longer than
//! `dedup.shared_timeout` is counted, the store is marked down, and the request is decided by
//! this process alone until a background check finds the store again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

use super::Seen;
use crate::metrics::Metrics;

/// `GET`; absent → set our token with the claim expiry → `won`; `c` → `dup`; our token →
/// `won`; another token → `busy`.
const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 'won'
elseif v == 'c' then
  return 'dup'
elseif v == ARGV[1] then
  return 'won'
end
return 'busy'";

/// Committed for the window, unless another owner claimed it meanwhile (ours expired).
const COMMIT: &str = r"
local v = redis.call('GET', KEYS[1])
if (not v) or v == ARGV[1] then
  redis.call('SET', KEYS[1], 'c', 'PX', ARGV[2])
end
return 1";

/// Deleted only while we own it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// The expiry pushed back only while we own it.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Timings of the store, from the config.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// How long a request waits for the store.
    pub timeout: Duration,
    /// Expiry of a claim: longer than its owner can still publish; renewed every third of it.
    pub claim_ttl: Duration,
    /// Expiry of a commit: the dedup window.
    pub window: Duration,
}

enum Op {
    Commit(String),
    Release(String),
}

/// Handle to the shared store.
pub struct SharedStore {
    connection: watch::Receiver<Option<ConnectionManager>>,
    owner: String,
    timings: Timings,
    up: Arc<AtomicBool>,
    /// The scripts are in the server's script cache (lost when it restarts).
    loaded: AtomicBool,
    metrics: Metrics,
    ops: mpsc::Sender<Op>,
    /// Our claims not yet committed or released, for renewal.
    claimed: Arc<Mutex<HashMap<String, Instant>>>,
    scripts: Scripts,
}

#[derive(Clone)]
struct Scripts {
    claim: redis::Script,
    commit: redis::Script,
    release: redis::Script,
    renew: redis::Script,
}

impl SharedStore {
    /// Starts connecting to `url` in the background (a store that is down at start only
    /// means local decisions until it is up) and the tasks that write commits and releases
    /// and renew claims.
    ///
    /// # Errors
    /// A URL the client cannot parse.
    pub fn start(
        url: &str,
        timings: Timings,
        metrics: Metrics,
    ) -> anyhow::Result<Arc<SharedStore>> {
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("dedup.shared: {}", redact(&e.to_string())))?;
        let (set_connection, connection) = watch::channel(None);
        let up = Arc::new(AtomicBool::new(false));
        let (ops_tx, ops_rx) = mpsc::channel(65_536);
        let owner = format!("o{:016x}{:08x}", rand_u64(), std::process::id());
        let scripts = Scripts {
            claim: redis::Script::new(CLAIM),
            commit: redis::Script::new(COMMIT),
            release: redis::Script::new(RELEASE),
            renew: redis::Script::new(RENEW),
        };
        let store = Arc::new(SharedStore {
            connection,
            owner,
            timings,
            up: up.clone(),
            loaded: AtomicBool::new(false),
            metrics,
            ops: ops_tx,
            claimed: Arc::new(Mutex::new(HashMap::new())),
            scripts,
        });
        tokio::spawn(connect(client, set_connection, store.clone()));
        tokio::spawn(write_ops(ops_rx, Arc::downgrade(&store)));
        tokio::spawn(renew(Arc::downgrade(&store)));
        Ok(store)
    }

    /// The store's key for an event id.
    pub fn key(id: &str) -> String {
        let digest = Sha256::digest(id.as_bytes());
        let mut key = String::with_capacity(14 + 32);
        key.push_str("hookbus:dedup:");
        crate::text::push_hex(&digest[..16], &mut key);
        key
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Claims `keys` in one round trip. `None` when the store is down or did not answer in
    /// time (counted): the caller decides locally.
    pub async fn claim(&self, keys: &[&str]) -> Option<Vec<Seen>> {
        if !self.is_up() {
            return None;
        }
        let mut connection = self.connection.borrow().clone()?;
        let ttl = self.timings.claim_ttl.as_millis().to_string();
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.invoke_script(self.scripts.claim.key(*key).arg(&self.owner).arg(&ttl));
        }
        let answer = tokio::time::timeout(
            self.timings.timeout,
            pipe.query_async::<Vec<String>>(&mut connection),
        )
        .await;
        match answer {
            Ok(Ok(answers)) if answers.len() == keys.len() => {
                let now = Instant::now();
                let mut claimed = self.lock_claimed();
                let found = keys
                    .iter()
                    .zip(answers)
                    .map(|(key, answer)| match answer.as_str() {
                        "won" => {
                            claimed.insert((*key).to_owned(), now);
                            Seen::New
                        }
                        "dup" => Seen::Duplicate,
                        _ => Seen::Pending,
                    })
                    .collect();
                Some(found)
            }
            Ok(Ok(_)) => {
                self.failed("unexpected answer to a claim");
                None
            }
            Ok(Err(error)) => {
                self.failed(&error.to_string());
                None
            }
            Err(_) => {
                self.failed("claim timed out");
                None
            }
        }
    }

    /// Records the commit of a claimed id; written after the answer.
    pub fn commit(&self, key: String) {
        self.lock_claimed().remove(&key);
        self.enqueue(Op::Commit(key));
    }

    /// Records the release of a claimed id; written after the answer.
    pub fn release(&self, key: String) {
        if self.lock_claimed().remove(&key).is_some() {
            self.enqueue(Op::Release(key));
        }
    }

    fn enqueue(&self, op: Op) {
        if self.ops.try_send(op).is_err() {
            // Only when the store has been unreachable for long: the claim expires by itself.
            self.metrics.dedup_store_error();
        }
    }

    fn lock_claimed(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.claimed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failed(&self, why: &str) {
        self.metrics.dedup_store_error();
        // A restarted server has an empty script cache (EVALSHA answers NOSCRIPT).
        self.loaded.store(false, Ordering::SeqCst);
        if self.up.swap(false, Ordering::SeqCst) {
            tracing::warn!(error = %redact(why), "dedup store unreachable; deciding locally until it is back");
        }
        self.metrics.set_dedup_store_up(false);
    }

    fn recovered(&self) {
        if !self.up.swap(true, Ordering::SeqCst) {
            tracing::info!("dedup store reachable");
        }
        self.metrics.set_dedup_store_up(true);
    }
}

/// Connects, then checks the store once a second: PING for reachability, and once the
/// eviction policy (a policy that can evict claims breaks the guarantee: warned and counted).
async fn connect(
    client: redis::Client,
    set: watch::Sender<Option<ConnectionManager>>,
    store: Arc<SharedStore>,
) {
    let weak = Arc::downgrade(&store);
    drop(store);
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(1);
    let mut policy_checked = false;
    loop {
        let Some(store) = weak.upgrade() else { return };
        let connection = set.borrow().clone();
        let connection = match connection {
            Some(connection) => Some(connection),
            None => {
                match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                    Ok(connection) => {
                        set.send_replace(Some(connection.clone()));
                        Some(connection)
                    }
                    Err(error) => {
                        store.failed(&error.to_string());
                        None
                    }
                }
            }
        };
        if let Some(mut connection) = connection {
            let ping = tokio::time::timeout(
                Duration::from_secs(2),
                redis::cmd("PING").query_async::<String>(&mut connection),
            )
            .await;
            let ping = match ping {
                Ok(Ok(_)) if !store.loaded.load(Ordering::SeqCst) => {
                    load_scripts(&mut connection, &store.scripts)
                        .await
                        .map(|()| {
                            store.loaded.store(true, Ordering::SeqCst);
                        })
                }
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err("ping timed out".to_owned()),
            };
            match ping {
                Ok(()) => {
                    store.recovered();
                    if !policy_checked {
                        policy_checked = true;
                        check_eviction_policy(&mut connection, &store.metrics).await;
                    }
                }
                Err(error) => store.failed(&error),
            }
        }
        drop(store);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Puts the scripts in the server's cache, so pipelines can call them by hash.
async fn load_scripts(connection: &mut ConnectionManager, scripts: &Scripts) -> Result<(), String> {
    for script in [
        &scripts.claim,
        &scripts.commit,
        &scripts.release,
        &scripts.renew,
    ] {
        script
            .prepare_invoke()
            .load_async(connection)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Warns (and counts a config warning) when the server may evict keys that have an expiry:
/// a claim evicted early lets a retry on another replica publish the event again.
async fn check_eviction_policy(connection: &mut ConnectionManager, metrics: &Metrics) {
    let answer: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory*")
        .query_async(connection)
        .await;
    let Ok(pairs) = answer else {
        tracing::info!(
            "cannot read the dedup store's maxmemory-policy (CONFIG disabled); make sure it is noeviction"
        );
        return;
    };
    let get = |name: &str| {
        pairs
            .chunks(2)
            .find(|p| p.first().map(String::as_str) == Some(name))
            .and_then(|p| p.get(1).cloned())
    };
    let maxmemory = get("maxmemory").unwrap_or_default();
    let policy = get("maxmemory-policy").unwrap_or_default();
    if maxmemory != "0" && policy != "noeviction" {
        metrics.config_warnings.inc();
        tracing::warn!(
            %policy, %maxmemory,
            "the dedup store may evict keys at its memory limit: a claim evicted early lets a \
             retry on another replica publish twice; set maxmemory-policy noeviction or size \
             maxmemory for the window (docs/duplicates.md)"
        );
    }
}

/// Writes commits and releases, pipelined, as they come.
async fn write_ops(mut rx: mpsc::Receiver<Op>, store: std::sync::Weak<SharedStore>) {
    let mut batch = Vec::with_capacity(512);
    while rx.recv_many(&mut batch, 512).await > 0 {
        let Some(store) = store.upgrade() else { return };
        let connection = store.connection.borrow().clone();
        let Some(mut connection) = connection.filter(|_| store.is_up()) else {
            // Down: commits are lost (counted); claims expire by themselves.
            for _ in batch.drain(..) {
                store.metrics.dedup_store_error();
            }
            continue;
        };
        let window = store.timings.window.as_millis().to_string();
        let mut pipe = redis::pipe();
        for op in batch.drain(..) {
            match op {
                Op::Commit(key) => {
                    pipe.invoke_script(store.scripts.commit.key(key).arg(&store.owner).arg(&window))
                }
                Op::Release(key) => {
                    pipe.invoke_script(store.scripts.release.key(key).arg(&store.owner))
                }
            };
        }
        let written = tokio::time::timeout(
            store.timings.timeout.max(Duration::from_secs(1)),
            pipe.query_async::<Vec<i64>>(&mut connection),
        )
        .await;
        match written {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => store.failed(&error.to_string()),
            Err(_) => store.failed("commit timed out"),
        }
    }
}

/// Pushes back the expiry of our undecided claims every third of their lifetime, so a claim
/// only expires when this process is gone.
async fn renew(store: std::sync::Weak<SharedStore>) {
    loop {
        let Some(period) = store.upgrade().map(|s| s.timings.claim_ttl / 3) else {
            return;
        };
        tokio::time::sleep(period).await;
        let Some(store) = store.upgrade() else { return };
        let keys: Vec<String> = store.lock_claimed().keys().cloned().collect();
        let connection = store.connection.borrow().clone();
        let (false, Some(mut connection)) = (keys.is_empty(), connection) else {
            continue;
        };
        let ttl = store.timings.claim_ttl.as_millis().to_string();
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.invoke_script(store.scripts.renew.key(key).arg(&store.owner).arg(&ttl));
        }
        let renewed = tokio::time::timeout(
            store.timings.timeout.max(Duration::from_secs(1)),
            pipe.query_async::<Vec<i64>>(&mut connection),
        )
        .await;
        if !matches!(renewed, Ok(Ok(_))) {
            store.failed("renewing claims failed");
        }
    }
}

/// A URL or error text without its password.
fn redact(text: &str) -> String {
    match (text.find("://"), text.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &text[..scheme], &text[at..])
        }
        _ => text.to_owned(),
    }
}

/// A random owner token (the process id alone repeats across pods).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_per_id_and_secrets_are_redacted() {
        assert_eq!(SharedStore::key("abc"), SharedStore::key("abc"));
        assert_ne!(SharedStore::key("abc"), SharedStore::key("abd"));
        assert_eq!(SharedStore::key("x").len(), 14 + 32);
        assert_eq!(
            redact("redis://u:p4ss@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }
}
