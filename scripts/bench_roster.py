#!/usr/bin/env python3
"""The roster row of scripts/bench (not a test): `hookbus roster` (release build) applying
presence events while they arrive, on NATS KV and on Redis, in two shapes:

  spread  10,000 channels, 100,000 members (one join each, then 10% leave)
  hot     one channel, 100,000 members (one join each, then 10% leave)

Events are normalized event JSON published straight to the bridge's JetStream stream by
nats-py at the rate the publisher reaches (the bridge's own throughput is the rest of
scripts/bench; this row measures what the roster keeps up with), with REPLICAS roster
processes (default 1; BENCH_ROSTER_REPLICAS) sharing the durable consumer. Per row: events
applied per second per replica while saturated, p99 lag (published → applied, from
hookbus_roster_lag_seconds), store conflicts per second, roster CPU per event, the servers'
CPU per event (nats-server, and redis-server on Redis rows: the input stream and the store),
how busy the machine's cores were while the roster applied, roster RSS and the store's
memory per 100k members (Redis used_memory; NATS: the bucket's bytes), and a
check that the roster's member counts are exact at the end.

Run through `scripts/bench 15 50 roster` (builds first). Needs nats-server, redis-server and
the Python test venv (scripts/setup).
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOOKBUS = Path(os.environ.get("BENCH_HOOKBUS", ROOT / "target" / "release" / "hookbus"))
TICK = os.sysconf("SC_CLK_TCK")
MEMBERS = int(os.environ.get("BENCH_ROSTER_MEMBERS", "100000"))
REPLICAS = int(os.environ.get("BENCH_ROSTER_REPLICAS", "1"))
# BENCH_ROSTER_STORES: which stores to measure, comma-separated (default: nats,redis).
STORES = os.environ.get("BENCH_ROSTER_STORES", "nats,redis").split(",")
# BENCH_ROSTER_SHAPES: which shapes to measure, comma-separated (default: spread,hot).
SHAPES = os.environ.get("BENCH_ROSTER_SHAPES", "spread,hot").split(",")
# BENCH_ROSTER_BATCH: roster.batch (default: the config's default).
BATCH = os.environ.get("BENCH_ROSTER_BATCH")

sys.path.insert(0, str(ROOT / "scripts"))
from bench import Proc, free_port, metric_sum, port_open, quantile, wait_for  # noqa: E402


def http_get(url, timeout=120):
    """GET with a timeout long enough for listing 10,000 channels from a busy store."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def events(shape):
    """Joins for MEMBERS members, then leaves for a tenth of them, as normalized events."""
    t0 = 1_718_035_200_000
    out = []
    for i in range(MEMBERS):
        channel = f"room.{i % 10_000}" if shape == "spread" else "hot.room"
        out.append((channel, "join", f"u{i}", t0 + i))
    for i in range(0, MEMBERS, 10):
        channel = f"room.{i % 10_000}" if shape == "spread" else "hot.room"
        out.append((channel, "leave", f"u{i}", t0 + MEMBERS + i))
    return out


def payload(n, channel, action, uuid, t):
    return json.dumps({
        "schema": "hookbus.presence.v1", "id": f"b{n}", "source": "pubnub",
        "format": "events-and-actions", "sub_key": "sub-c-1", "channel": channel,
        "action": action, "uuid": uuid, "occupancy": None, "timestamp": t // 1000,
        "timestamp_ms": t, "received_at_ms": t, "state": None, "delta": None,
        "here_now_refresh": False,
    }).encode()


def escape(value):
    return "".join(chr(b) if chr(b).isalnum() or b == 0x2D else f"_{b:02X}" for b in value.encode())


async def publish(port, items):
    import nats
    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    js = nc.jetstream()
    await js.add_stream(name="PRESENCE", subjects=["presence.*.*"])
    start = time.monotonic()
    pending = []
    for n, (channel, action, uuid, t) in enumerate(items):
        pending.append(js.publish(f"presence.{escape(channel)}.{action}", payload(n, channel, action, uuid, t)))
        if len(pending) >= 1000:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)
    seconds = time.monotonic() - start
    await nc.close()
    return seconds


def machine_busy():
    """(busy, total) jiffies of all cores, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def nats_bucket_bytes(port):
    data = json.loads(http_get(f"http://127.0.0.1:{port}/jsz?streams=true")[1] or "{}")
    for account in data.get("account_details", []):
        for stream in account.get("stream_detail", []):
            if stream.get("name") == "KV_PRESENCE_ROSTER":
                return stream["state"]["bytes"]
    return 0


def redis_used(port):
    out = subprocess.run(["redis-cli", "-p", str(port), "info", "memory"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":")[1])
    return 0


def row(work, shape, store):
    nats_port, monitor = free_port(), free_port()
    procs = []
    nats = Proc(["nats-server", "-a", "127.0.0.1", "-p", str(nats_port), "-m", str(monitor), "-js",
                 "-sd", str(work / f"nats-{shape}-{store}")], work / f"nats-{shape}-{store}.log")
    procs.append(nats)
    wait_for("nats-server", lambda: port_open(nats_port))
    store_toml, redis_port = '"nats"', None
    if store == "redis":
        redis_port = free_port()
        procs.append(Proc(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no"], work / f"redis-{shape}.log"))
        wait_for("redis", lambda: port_open(redis_port))
        store_toml = f'"redis://127.0.0.1:{redis_port}/"'
    items = events(shape)
    # The stream exists before the rosters start (the bridge creates it).
    asyncio.run(publish(nats_port, []))
    rosters = []
    for r in range(REPLICAS):
        port = free_port()
        config = work / f"roster-{shape}-{store}-{r}.toml"
        config.write_text(
            f'[http]\nlisten = "127.0.0.1:{free_port()}"\n[admin]\nlisten = "127.0.0.1:{free_port()}"\n'
            f'[auth]\nallow_anonymous = true\n[spool]\ndir = "{work / "spool"}"\n'
            f'[nats]\nurl = "nats://127.0.0.1:{nats_port}"\n'
            f'[roster]\nlisten = "127.0.0.1:{port}"\nstore = {store_toml}\n'
            + (f"batch = {BATCH}\n" if BATCH else ""))
        proc = Proc([str(HOOKBUS), "roster", "--config", str(config)], work / f"roster-{shape}-{store}-{r}.log",
                    env=dict(os.environ, RUST_LOG="warn"))
        procs.append(proc)
        wait_for("roster ready", lambda port=port: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, timeout=60)
        rosters.append((proc, f"http://127.0.0.1:{port}"))
    servers = procs[:len(procs) - len(rosters)]
    cpu0 = sum(p.cpu_seconds() for p, _ in rosters)
    server_cpu0 = sum(p.cpu_seconds() for p in servers)
    busy0 = machine_busy()
    start = time.monotonic()
    publish_s = asyncio.run(publish(nats_port, items))

    def applied():
        return sum(metric_sum(http_get(f"{url}/metrics")[1], "hookbus_roster_events_applied_total")
                   for _, url in rosters)
    wait_for(f"{shape}/{store}: every event applied", lambda: applied() >= len(items), timeout=3600)
    seconds = time.monotonic() - start
    cpu = sum(p.cpu_seconds() for p, _ in rosters) - cpu0
    server_cpu = sum(p.cpu_seconds() for p in servers) - server_cpu0
    busy1 = machine_busy()
    busy = (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1)
    texts = [http_get(f"{url}/metrics")[1] for _, url in rosters]
    conflicts = sum(metric_sum(t, "hookbus_roster_store_conflicts_total") for t in texts)
    lag_p99 = max(quantile(t, "hookbus_roster_lag_seconds", 0.99) or 0 for t in texts)
    rss_mib = max(p.status_kib("VmHWM") for p, _ in rosters) / 1024
    # Exact: the members the roster counts equal the joins minus the leaves.
    want = MEMBERS - len(range(0, MEMBERS, 10))
    url = rosters[0][1]
    listing = json.loads(http_get(f"{url}/roster?limit=10000")[1])
    got = sum(c["members"] for c in listing["channels"])
    while listing.get("next"):
        listing = json.loads(http_get(f"{url}/roster?limit=10000&after={urllib.request.quote(listing['next'])}")[1])
        got += sum(c["members"] for c in listing["channels"])
    store_bytes = redis_used(redis_port) if store == "redis" else nats_bucket_bytes(monitor)
    for p in reversed(procs):
        p.stop(signal.SIGTERM, 10)
    return {
        "shape": shape, "store": store, "events": len(items), "publish_per_s": len(items) / publish_s,
        "applied_per_s_per_replica": len(items) / seconds / REPLICAS, "lag_p99": lag_p99,
        "conflicts_per_s": conflicts / seconds, "cpu_us": cpu * 1e6 / len(items),
        "server_cpu_us": server_cpu * 1e6 / len(items), "busy": busy,
        "rss_mib": rss_mib, "store_mib_per_100k": store_bytes / 2**20 * 100_000 / max(want, 1),
        "exact": got == want, "members": got, "want": want,
    }


def main():
    work = Path(tempfile.mkdtemp(prefix="hookbus-bench-roster-"))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = []
    for shape in SHAPES:
        for store in STORES:
            r = row(work, shape, store)
            rows.append(r)
            print(f"bench roster: {shape}/{store}: {r['applied_per_s_per_replica']:.0f} events/s, exact={r['exact']}",
                  file=sys.stderr, flush=True)
    print()
    print(f"scripts/bench roster, {started}, {os.cpu_count()} cores, {REPLICAS} replica(s), "
          f"{MEMBERS:,} members, release build")
    print()
    print("| shape | store | events | published/s | applied/s per replica | p99 lag | conflicts/s "
          "| CPU µs/event | servers' CPU µs/event | cores busy | roster peak RSS | store per 100k members | exact |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['store']} | {r['events']:,} | {r['publish_per_s']:.0f} | "
              f"{r['applied_per_s_per_replica']:.0f} | {r['lag_p99']:.2f} s | {r['conflicts_per_s']:.1f} | "
              f"{r['cpu_us']:.1f} | {r['server_cpu_us']:.1f} | {r['busy'] * 100:.0f}% | {r['rss_mib']:.0f} MiB | {r['store_mib_per_100k']:.1f} MiB | "
              f"{'yes' if r['exact'] else 'NO: ' + str(r['members']) + ' of ' + str(r['want'])} |")
    if not all(r["exact"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
