#!/usr/bin/env python3
"""Resident memory of a running hookbus as its dedup set fills (the figure behind the chart's
memory request; see docs/runbooks.md#sizing).

    measure_rss.py --hookbus target/release/hookbus [--events 1000000] [--batch 10000]

Starts hookbus on loopback ports with ack mode spool, sink stdout (to /dev/null), the chart's
defaults otherwise (dedup.max_entries 1,000,000, spool.max_bytes 1 GiB), posts --events
distinct Events & Actions join items in batches of --batch, and prints VmRSS after start and
at every 10% of the load, then VmHWM (the peak). Each step waits for hookbus_dedup_entries to
reach the number of events sent, or 97% of max_entries (a condition, not a sleep). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def metric(admin: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return -1.0


def wait(what, cond, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hookbus", required=True)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=10_000)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="measure-rss."))
    http, admin = free_port(), free_port()
    (work / "config.toml").write_text(f"""
[http]
listen = "127.0.0.1:{http}"
max_body_bytes = 8388608
[admin]
listen = "127.0.0.1:{admin}"
[auth]
allow_anonymous = true
[ack]
mode = "spool"
[spool]
dir = "{work}/spool"
max_bytes = 1073741824
[dedup]
window = "20m"
max_entries = 1000000
[routing]
template = "presence.{{channel}}.{{action}}"
dead_letter = "presence.dead-letter"
[sink]
kind = "stdout"
[shutdown]
grace = "5s"
""")
    hb = subprocess.Popen([args.hookbus, "--config", str(work / "config.toml")],
                          stdout=subprocess.DEVNULL, stderr=open(work / "hookbus.err", "w"))
    try:
        wait("/readyz", lambda: _ok(f"http://127.0.0.1:{admin}/readyz"))
        print(f"after start: VmRSS {proc_kib(hb.pid, 'VmRSS') / 1024:.1f} MiB")
        now = int(time.time())
        sent = 0
        step = max(args.events // 10, args.batch)
        next_report = step
        while sent < args.events:
            n = min(args.batch, args.events - sent)
            items = [{"id": f"rss-{sent + i:012d}", "channel": f"room.{(sent + i) % 500}", "userId": f"user-{sent + i}",
                      "occupancy": 3, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now)),
                      "subKey": "sub-c-measure"} for i in range(n)]
            body = json.dumps({"schema": "pubnub.com/schemas/events/presence.user.channel.joined?v=1.0.0",
                               "data": items}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{http}/webhooks/pubnub", data=body, method="POST")
            with urllib.request.urlopen(req, timeout=60) as r:
                answer = json.loads(r.read())
            if answer.get("accepted") != n:
                sys.exit(f"batch at {sent}: {answer}")
            sent += n
            if sent >= next_report or sent == args.events:
                # The set is sharded, each shard capped at its share of max_entries: near the
                # cap it evicts before the total reaches it.
                wait("dedup entries", lambda: metric(admin, "hookbus_dedup_entries") >= min(sent, 0.97 * 1_000_000))
                wait("publisher", lambda: metric(admin, "hookbus_spool_pending_events") == 0)
                print(f"{sent:>9} events, {int(metric(admin, 'hookbus_dedup_entries')):>9} ids: "
                      f"VmRSS {proc_kib(hb.pid, 'VmRSS') / 1024:.1f} MiB")
                next_report += step
        print(f"peak: VmHWM {proc_kib(hb.pid, 'VmHWM') / 1024:.1f} MiB")
    finally:
        hb.terminate()
        hb.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
