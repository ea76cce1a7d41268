#!/usr/bin/env python3
"""hookbus's benchmark (not a test): the same load through every path, same sitting.

wrk sends distinct PubNub G1 events (bench/wrk-pubnub.lua) to a bare hyper server (read body,
answer 200; run before and after, the mean is the baseline) and to hookbus on each path:
ack mode memory / spool / publish x core NATS / JetStream / Kafka (tansu, memory storage),
plus spool -> JetStream with the shared dedup store (Redis). Brokers are private processes on
free loopback ports. Per path it prints 2xx/s, non-2xx, the ratio of 2xx/s to bare hyper,
wrk's p50/p99, hookbus's CPU time (user+system, /proc/PID/stat) per acknowledged event, idle
and peak RSS, and the exactly-once check: the broker holds exactly the events hookbus
acknowledged (records and distinct hookbus-event-ids counted by consuming; never fewer than
wrk saw acknowledged). Then each ack mode at half its saturation rate (open loop) with hookbus's
own ack latency, and the replay of a spool backlog. Bare hyper's CPU per request is measured
the same way as hookbus's, and each row's CPU per event is printed as a multiple of it; every
Kafka row gets a fresh tansu. Last, instructions per request under callgrind for bare hyper and
the COUNTED paths (deterministic; BENCH_INSTRUCTIONS=0 skips them).

Run through scripts/bench, which builds first. Exit status 1 if an exactly-once check failed.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"
# BENCH_HOOKBUS: another hookbus binary to measure (e.g. a build of an earlier commit, for a
# before/after comparison in one sitting). BENCH_INSTRUCTIONS=0: no callgrind counts;
# BENCH_CALLGRIND_DIR: a directory to keep the callgrind dumps in.
HOOKBUS = Path(os.environ.get("BENCH_HOOKBUS", RELEASE / "hookbus"))
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"bench: {what} not reached within {timeout:.0f} s")


def port_open(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def http_get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read().decode()


def metric_sum(text, name, labels=""):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + labels) and (labels or line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def quantile(text, name, q):
    """histogram_quantile over the cumulative buckets, in seconds."""
    buckets = sorted(
        (float(m.group(1)), float(m.group(2)))
        for m in re.finditer(name + r'_bucket\{le="([0-9.e+-]+|\+Inf)"\} ([0-9.e+]+)', text)
        if m.group(1) != "+Inf"
    )
    total = metric_sum(text, name + "_count")
    if total == 0:
        return 0.0
    rank, prev_le, prev_c = q * total, 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-9)
        prev_le, prev_c = le, c
    return buckets[-1][0]


class Proc:
    """A child process whose CPU time and memory we read from /proc."""

    def __init__(self, args, log, cwd=None, env=None, stdin=None, stdout=None):
        self.log = open(log, "w")
        self.p = subprocess.Popen(
            args, stdout=stdout or self.log, stderr=self.log, cwd=cwd, env=env,
            stdin=stdin, start_new_session=True, text=True,
        )

    def cpu_seconds(self):
        fields = Path(f"/proc/{self.p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def status_kib(self, key):
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


class Bench:
    def __init__(self, seconds, conns):
        self.seconds, self.conns = seconds, conns
        self.work = Path(tempfile.mkdtemp(prefix="hookbus-bench-"))
        self.procs = []
        self.failures = []

    def start(self, name, args, **kw):
        proc = Proc(args, self.work / f"{name}.log", **kw)
        self.procs.append(proc)
        return proc

    def close(self):
        for proc in reversed(self.procs):
            proc.stop(signal.SIGKILL, 5)
        shutil.rmtree(self.work, ignore_errors=True)

    # -- brokers -----------------------------------------------------------------------------
    def brokers(self):
        self.nats_port = free_port()
        self.nats = self.start("nats", ["nats-server", "-a", "127.0.0.1", "-p", str(self.nats_port), "-js",
                            "-sd", str(self.work / "nats")])
        wait_for("nats-server", lambda: port_open(self.nats_port))
        self.kafka_port, self.tansu = None, None
        self.redis_port = free_port()
        self.start("redis", ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no",
                             "--maxmemory-policy", "noeviction"])
        wait_for("redis", lambda: port_open(self.redis_port))

    def fresh_tansu(self, name):
        """A Kafka broker of its own for one row: thousands of topics left by an earlier row
        slow tansu down, which would be charged to the next row."""
        if self.tansu is not None:
            self.tansu.stop(signal.SIGKILL, 5)
        self.kafka_port = free_port()
        tansu = shutil.which("tansu") or str(Path.home() / ".cargo/bin/tansu")
        url = f"tcp://127.0.0.1:{self.kafka_port}"
        self.tansu = self.start(f"tansu-{name}", [tansu, "broker", "--listener-url", url,
                                "--advertised-listener-url", url,
                                "--storage-engine", "memory://tansu/"], cwd=self.work)
        wait_for("tansu", lambda: port_open(self.kafka_port))

    # -- load --------------------------------------------------------------------------------
    def wrk(self, port):
        out = subprocess.run(
            ["wrk", f"-t{min(2, self.conns)}", f"-c{self.conns}", f"-d{self.seconds}s", "--latency", "-s",
             str(ROOT / "bench/wrk-pubnub.lua"), f"http://127.0.0.1:{port}/webhooks/pubnub"],
            capture_output=True, text=True, check=True).stdout
        total, secs = re.search(r"(\d+) requests in ([0-9.]+)(m?s)", out).group(1, 2)
        unit = re.search(r"\d+ requests in [0-9.]+(m?s)", out).group(1)
        secs = float(secs) / (1000 if unit == "ms" else 1)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors = re.search(r"Socket errors: (.*)", out)
        lat = {m.group(1): m.group(2) for m in re.finditer(r"^\s+(50|99)%\s+(\S+)", out, re.M)}
        total = int(total)
        non2xx = int(non2xx.group(1)) if non2xx else 0
        return {"total": total, "ok": total - non2xx, "non2xx": non2xx, "seconds": secs,
                "ok_per_s": (total - non2xx) / secs, "p50": lat.get("50"), "p99": lat.get("99"),
                "socket_errors": errors.group(1) if errors else ""}

    def bare(self):
        port = free_port()
        proc = self.start("bare", [str(RELEASE / "examples/bare_hyper"), f"127.0.0.1:{port}"])
        wait_for("bare hyper", lambda: port_open(port))
        cpu0 = proc.cpu_seconds()
        result = self.wrk(port)
        result["cpu_us"] = (proc.cpu_seconds() - cpu0) * 1e6 / max(result["total"], 1)
        proc.stop()
        return result

    # -- hookbus -----------------------------------------------------------------------------
    def hookbus(self, name, mode, sink, extra="", ready=True, template=None, kafka="",
                wrap=None):
        http, admin = free_port(), free_port()
        template = template or f"{name}.{{channel}}.{{action}}"
        if sink == "kafka":
            sink_toml = (f'[sink]\nkind = "kafka"\n[kafka]\nbrokers = "127.0.0.1:{self.kafka_port}"\n'
                         + kafka)
        else:
            sink_toml = (f'[sink]\nkind = "nats"\n[nats]\nurl = "nats://127.0.0.1:{self.nats_port}"\n'
                         f'jetstream = {"true" if sink == "jetstream" else "false"}\n'
                         f'stream = "BENCH_{name.upper()}"\nstorage = "file"\n')
        config = self.work / f"{name}.toml"
        config.write_text(
            f'[http]\nlisten = "127.0.0.1:{http}"\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
            # Loopback only: wrk sends no token.
            f'[auth]\nallow_anonymous = true\n'
            f'[ack]\nmode = "{mode}"\n[spool]\ndir = "{self.work / ("spool-" + name)}"\n'
            f'[routing]\ntemplate = "{template}"\n'
            f'dead_letter = "{name}.dead-letter"\noverflow = "{name}._overflow.{{action}}"\n'
            f'[shutdown]\ngrace = "30s"\n' + sink_toml + extra
            # BENCH_EXTRA: more config for experiments (appended last).
            + os.environ.get("BENCH_EXTRA", "").replace("\\n", "\n"))
        env = dict(os.environ, RUST_LOG="warn")
        proc = self.start(name, [*(wrap or []), str(HOOKBUS), "--config", str(config)],
                          env=env)
        metrics = f"http://127.0.0.1:{admin}/metrics"
        if ready:
            wait_for(f"{name} ready",
                     lambda: http_get(f"http://127.0.0.1:{admin}/readyz")[0] == 200,
                     timeout=120 if wrap else 30)
        else:
            wait_for(f"{name} listening", lambda: port_open(http))
        return proc, http, metrics

    def settle(self, name, metrics, acked):
        """Waits until hookbus published every event it answered 200 to, and then until the
        count stops moving (requests wrk abandoned at the end are still published: their
        events were accepted, only the answer had nobody to go to). Returns the count."""
        published = lambda: int(metric_sum(http_get(metrics)[1], "hookbus_events_published_total"))
        wait_for(f"{name}: {acked} events published", lambda: published() >= acked, timeout=120)
        last, since = published(), time.monotonic()
        while time.monotonic() - since < 1.0:
            time.sleep(0.1)
            now = published()
            if now != last:
                last, since = now, time.monotonic()
        return last

    def count(self, args):
        out = subprocess.run([str(RELEASE / "examples/count"), *args], capture_output=True,
                             text=True, timeout=300)
        if out.returncode != 0:
            raise SystemExit(f"bench: count {args}: {out.stderr.strip()}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def path(self, name, mode, sink, extra="", template=None, kafka=""):
        counter = None
        if sink == "kafka":
            self.fresh_tansu(name)
        if sink == "nats":
            counter = self.start(
                f"{name}-count",
                [str(RELEASE / "examples/count"), "nats", f"nats://127.0.0.1:{self.nats_port}",
                 f"{name}.>"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            if counter.p.stdout.readline().strip() != "ready":
                raise SystemExit("bench: core NATS counter did not subscribe")
        proc, http, metrics = self.hookbus(name, mode, sink, extra, template=template, kafka=kafka)
        time.sleep(1)  # idle RSS: after start-up and the broker handshake settle
        idle = proc.status_kib("VmRSS")
        broker = {"kafka": self.tansu, "jetstream": self.nats, "nats": self.nats}[sink]
        cpu0, broker0 = proc.cpu_seconds(), broker.cpu_seconds()
        load = self.wrk(http)
        text = http_get(metrics)[1]
        acked = int(metric_sum(text, "hookbus_http_requests_total", '{code="200"}'))
        published = self.settle(name, metrics, acked)
        cpu = proc.cpu_seconds() - cpu0
        broker_cpu = broker.cpu_seconds() - broker0
        peak = proc.status_kib("VmHWM")
        text = http_get(metrics)[1]
        shed = int(metric_sum(text, "hookbus_http_requests_total", '{code="503"}'))
        if sink == "jetstream":
            got = self.count(["jetstream", f"nats://127.0.0.1:{self.nats_port}",
                              f"BENCH_{name.upper()}"])
        elif sink == "kafka":
            got = self.count(["kafka", f"127.0.0.1:{self.kafka_port}", f"{name}.",
                              str(published)])
        proc.stop()
        if counter is not None:
            out, _ = counter.p.communicate(timeout=60)
            got = json.loads(out.strip().splitlines()[-1])
        # Nothing duplicated (records = distinct ids = what hookbus published once each), nothing
        # acknowledged lost (at least every event answered 200, by hookbus's count and wrk's).
        exact = (got["records"] == got["distinct"] == published
                 and published >= acked >= load["ok"])
        if not exact:
            self.failures.append(f"{name}: wrk saw {load['ok']} acknowledged, hookbus answered "
                                 f"200 to {acked} and published {published}, the broker holds "
                                 f"{got['records']} records with {got['distinct']} distinct ids")
        return {"name": name, "load": load, "acked": acked, "published": published, "shed": shed,
                "cpu_us": cpu * 1e6 / max(published, 1),
                "broker_us": broker_cpu * 1e6 / max(published, 1), "idle_mib": idle / 1024,
                "peak_mib": peak / 1024, "got": got, "exact": exact}

    # -- instructions ------------------------------------------------------------------------
    CALLGRIND = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]

    def callgrind_total(self, proc, out):
        """Stops counting, stops the process and reads the instruction total of its dump."""
        subprocess.run(["callgrind_control", "-i", "off", str(proc.p.pid)], check=True,
                       capture_output=True)
        proc.stop(timeout=120)
        totals = [int(line.split()[1]) for line in out.read_text().splitlines()
                  if line.startswith("totals:")]
        if not totals or totals[-1] == 0:
            raise SystemExit(f"bench: no instruction total in {out}")
        # BENCH_CALLGRIND_DIR: keep the dumps there (callgrind_annotate shows where they go).
        if os.environ.get("BENCH_CALLGRIND_DIR"):
            shutil.copy(out, os.environ["BENCH_CALLGRIND_DIR"])
        return totals[-1]

    def load_count(self, port, n):
        subprocess.run([str(RELEASE / "examples/load"), "--addr", f"127.0.0.1:{port}",
                        "--connections", "4", "--count", str(n), "--run", "3"],
                       capture_output=True, check=True, timeout=600)

    def instructions_bare(self, n):
        port = free_port()
        out = self.work / "bare.callgrind"
        proc = self.start("bare-callgrind", [*self.CALLGRIND, f"--callgrind-out-file={out}",
                                             str(RELEASE / "examples/bare_hyper"),
                                             f"127.0.0.1:{port}"])
        wait_for("bare hyper under callgrind", lambda: port_open(port), timeout=120)
        subprocess.run(["callgrind_control", "-i", "on", str(proc.p.pid)], check=True,
                       capture_output=True)
        self.load_count(port, n)
        return self.callgrind_total(proc, out) / n

    def instructions(self, name, mode, sink, n, template=None, kafka=""):
        """hookbus's instructions per request on one path: from ready until every event of
        `n` requests (one event each) is published."""
        if sink == "kafka":
            self.fresh_tansu(name + "-count")
        out = self.work / f"{name}.callgrind"
        proc, http, metrics = self.hookbus(
            name + "-count", mode, sink, template=template, kafka=kafka,
            wrap=[*self.CALLGRIND, f"--callgrind-out-file={out}"])
        subprocess.run(["callgrind_control", "-i", "on", str(proc.p.pid)], check=True,
                       capture_output=True)
        self.load_count(http, n)
        wait_for(f"{name}: {n} published under callgrind", lambda: metric_sum(
            http_get(metrics)[1], "hookbus_events_published_total") >= n, timeout=600)
        return self.callgrind_total(proc, out) / n

    def half(self, name, mode, sink, saturated):
        rate = int(saturated / 2)
        proc, http, metrics = self.hookbus(name, mode, sink)
        out = subprocess.run(
            [str(RELEASE / "examples/load"), "--addr", f"127.0.0.1:{http}", "--connections",
             str(self.conns), "--rate", str(rate), "--seconds", str(self.seconds), "--run", "1"],
            capture_output=True, text=True, check=True).stdout
        client = json.loads(out)
        text = http_get(metrics)[1]
        proc.stop()
        return {"name": name, "rate": rate, "client": client,
                "server_p50_ms": quantile(text, "hookbus_ack_duration_seconds", 0.50) * 1000,
                "server_p99_ms": quantile(text, "hookbus_ack_duration_seconds", 0.99) * 1000}

    def replay(self, backlog=100000):
        """A spool backlog written while JetStream was unreachable, published after a restart."""
        dead = free_port()
        saved = self.nats_port
        self.nats_port = dead
        proc, http, metrics = self.hookbus("replay", "spool", "jetstream", ready=False)
        self.nats_port = saved
        subprocess.run([str(RELEASE / "examples/load"), "--addr", f"127.0.0.1:{http}",
                        "--connections", str(self.conns), "--count", str(backlog), "--run", "2"],
                       capture_output=True, check=True)
        proc.stop()
        config = self.work / "replay.toml"
        config.write_text(config.read_text().replace(f":{dead}", f":{self.nats_port}"))
        t0 = time.monotonic()
        proc = self.start("replay2", [str(HOOKBUS), "--config", str(config)],
                          env=dict(os.environ, RUST_LOG="warn"))
        wait_for("replay published", lambda: metric_sum(
            http_get(metrics)[1], "hookbus_events_published_total") >= backlog, timeout=120)
        seconds = time.monotonic() - t0
        proc.stop()
        got = self.count(["jetstream", f"nats://127.0.0.1:{self.nats_port}", "BENCH_REPLAY"])
        if not got["records"] == got["distinct"] == backlog:
            self.failures.append(f"replay: {backlog} spooled, the stream holds {got}")
        return seconds, got


ONE_TOPIC = {"template": "pubkafka1.all", "kafka": "partitions = 1\n"}

PATHS = [
    # name, ack mode, sink, extra config, label, hookbus() options
    ("memcore", "memory", "nats", "", "memory → core NATS", {}),
    ("memjs", "memory", "jetstream", "", "memory → JetStream", {}),
    ("spooljs", "spool", "jetstream", "", "spool → JetStream", {}),
    ("pubjs", "publish", "jetstream", "", "publish → JetStream", {}),
    ("memkafka", "memory", "kafka", "", "memory → Kafka", {}),
    ("spoolkafka", "spool", "kafka", "", "spool → Kafka", {}),
    ("pubkafka", "publish", "kafka", "", "publish → Kafka, topic per channel", {}),
    ("pubkafka1", "publish", "kafka", "", "publish → Kafka, one topic, one partition", ONE_TOPIC),
    ("spooljsredis", "spool", "jetstream", "SHARED", "spool → JetStream, shared dedup (Redis)", {}),
]

# Instructions per request under callgrind (deterministic: the same binary and inputs give the
# same count whatever else the machine does): bare hyper and these paths.
COUNTED = ["memcore", "spooljs", "pubkafka", "pubkafka1"]
COUNTED_REQUESTS = 2000


def main():
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    conns = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    only = sys.argv[3].split(",") if len(sys.argv) > 3 else None
    bench = Bench(seconds, conns)
    try:
        bench.brokers()
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        bare1 = bench.bare()
        rows = []
        for name, mode, sink, extra, label, options in PATHS:
            if only and name not in only:
                continue
            if extra == "SHARED":
                extra = f'[dedup]\nshared = "redis://127.0.0.1:{bench.redis_port}/"\n'
            row = bench.path(name, mode, sink, extra=extra, **options)
            row["label"] = label
            rows.append(row)
            print(f"bench: {label}: {row['load']['ok_per_s']:.0f} 2xx/s, exact={row['exact']}",
                  file=sys.stderr, flush=True)
        bare2 = bench.bare()
        baseline = (bare1["ok_per_s"] + bare2["ok_per_s"]) / 2
        bare_cpu = (bare1["cpu_us"] + bare2["cpu_us"]) / 2
        counted = []
        if os.environ.get("BENCH_INSTRUCTIONS", "1") != "0":
            counted.append(("bare hyper", bench.instructions_bare(COUNTED_REQUESTS)))
            for name, mode, sink, extra, label, options in PATHS:
                if name in COUNTED and (not only or name in only):
                    counted.append((label, bench.instructions(name, mode, sink,
                                                              COUNTED_REQUESTS, **options)))
        halves = []
        if not only:
            by = {r["name"]: r for r in rows}
            for name, mode in (("halfmem", "memory"), ("halfspool", "spool"), ("halfpub", "publish")):
                src = {"memory": "memjs", "spool": "spooljs", "publish": "pubjs"}[mode]
                halves.append((mode, bench.half(name, mode, "jetstream",
                                                by[src]["load"]["ok_per_s"])))
            replay_s, replay_got = bench.replay()

        print()
        print(f"scripts/bench {seconds} {conns}, {started}, {os.cpu_count()} cores: "
              f"wrk -t2 -c{conns} -d{seconds}s, distinct G1 events")
        print()
        print("| path | 2xx/s | non-2xx | ratio | p50 / p99 | CPU µs/event (broker) | × bare "
              "| idle / peak RSS | exactly once |")
        print("|---|---|---|---|---|---|---|---|---|")
        print(f"| bare hyper (read body, 200), mean of {bare1['ok_per_s']:.0f} before and "
              f"{bare2['ok_per_s']:.0f} after | {baseline:.0f} | {bare1['non2xx'] + bare2['non2xx']} "
              f"| 1.00 | {bare1['p50']} / {bare1['p99']} | {bare_cpu:.1f} per request | 1.0 | | |")
        for r in rows:
            load = r["load"]
            check = (f"yes: {r['got']['distinct']:,} events" if r["exact"]
                     else f"**NO**: {r['got']['records']:,} records, {r['got']['distinct']:,} "
                          f"distinct, {r['published']:,} published, {r['acked']:,} acked")
            print(f"| {r['label']} | {load['ok_per_s']:.0f} | {load['non2xx']} | "
                  f"{load['ok_per_s'] / baseline:.2f} | {load['p50']} / {load['p99']} | "
                  f"{r['cpu_us']:.1f} ({r['broker_us']:.1f}) | {r['cpu_us'] / bare_cpu:.1f}× | "
                  f"{r['idle_mib']:.0f} / {r['peak_mib']:.0f} MiB | {check} |")
        if counted:
            print()
            print(f"Instructions per request under callgrind ({COUNTED_REQUESTS} distinct G1 "
                  "requests, 4 connections; counted from ready until every event is published):")
            print()
            print("| path | instructions / request | × bare |")
            print("|---|---|---|")
            base = counted[0][1]
            for label, per in counted:
                print(f"| {label} | {per:,.0f} | {per / base:.1f}× |")
        if halves:
            print()
            print("At half the saturation rate of the JetStream path (open loop, "
                  f"{conns} connections, examples/load):")
            print()
            print("| ack mode | rate | server p50 / p99 (hookbus_ack_duration_seconds) "
                  "| client p50 / p99 |")
            print("|---|---|---|---|")
            for mode, h in halves:
                print(f"| {mode} | {h['rate']} req/s | {h['server_p50_ms']:.2f} / "
                      f"{h['server_p99_ms']:.2f} ms | {h['client']['p50_ms']:.2f} / "
                      f"{h['client']['p99_ms']:.2f} ms |")
            print()
            print(f"Replay: a 100,000-event spool backlog (written while JetStream was "
                  f"unreachable) published in {replay_s:.1f} s after a restart "
                  f"({replay_got['distinct']:,} distinct events in the stream).")
        for failure in bench.failures:
            print(f"EXACTLY-ONCE CHECK FAILED: {failure}", file=sys.stderr)
        return 1 if bench.failures else 0
    finally:
        bench.close()


if __name__ == "__main__":
    sys.exit(main())
