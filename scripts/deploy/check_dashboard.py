#!/usr/bin/env python3
"""Checks of deploy/grafana/hookbus.json (run by scripts/check-deploy).

  static               importable Grafana JSON: uid/title, a `datasource` variable of type
                       prometheus used by every panel, every panel has targets[].expr
  live --prom URL      every panel's PromQL (Grafana variables replaced) runs on a real
                       Prometheus that scraped a running hookbus: each query must parse, the
                       core panels must return data, every hookbus_* metric named by the
                       dashboard or the alerts must exist (the presence roster's
                       hookbus_roster_* excepted: `hookbus roster` exports them, not the
                       bridge this check runs; their queries still run and must parse), the spool
                       gauges must be there with capacity = spool.max_bytes, and no health alert
                       condition holds (HookbusSpoolFilling's expression included)
  alerts --prom URL --allow A,B
                       the alert rules Prometheus loaded (deploy/prometheus/alerts.yaml) are
                       healthy and no alert outside --allow is pending or firing
  wait --prom URL --expr E --min N --timeout S
                       poll until the scalar value of E reaches N (deadline, not a sleep)
Only the standard library is used, so it runs with any python3.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "hookbus.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"

# Series of hookbus's own registry every dashboard may rely on (process collector included).
SPOOL_GAUGES = ["hookbus_spool_unpublished_bytes", "hookbus_spool_retained_bytes", "hookbus_spool_capacity_bytes",
                "hookbus_spool_bytes"]

# The presence roster's series (`hookbus roster`, docs/roster.md): a process of their own, which
# the live check does not run. The dashboard and the alerts must name every one of them.
ROSTER_PREFIX = "hookbus_roster_"
ROSTER_METRICS = ["hookbus_roster_events_applied_total", "hookbus_roster_events_stale_total",
                  "hookbus_roster_events_skipped_total", "hookbus_roster_store_conflicts_total",
                  "hookbus_roster_channels", "hookbus_roster_members", "hookbus_roster_pending_events",
                  "hookbus_roster_lag_seconds", "hookbus_roster_reconciliations_total",
                  "hookbus_roster_drift_members"]
ROSTER_ROW = "Presence roster (hookbus roster)"

# Panels that must show data after a short load (title: what the data must show).
CORE = {
    "Requests by status code": "series for code 200 and 400 with a rate above 0",
    "Ack latency": "a quantile that is a number (not NaN)",
    "Duplicates": "a rate above 0",
    "Duplicate ratio": "a ratio above 0",
    "Events by action": "a rate above 0",
    "Spool depth": "a series (0 is fine)",
    "Spool bytes": "unpublished, retained and capacity series",
    "Oldest unpublished event": "a series (0 is fine)",
}

# Grafana's built-in variables, replaced as Grafana would for a 5-minute view of a
# Prometheus scraping every second.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}

# Alert conditions that must not hold for a healthy hookbus with a stdout sink. The
# HookbusSpoolFilling expression (from alerts.yaml) must stay silent although published
# segments kept for dedup fill most of the small spool of the live run.
HEALTH = {
    "HookbusSinkDown": "max by (namespace, job, instance) (hookbus_sink_up) == 0",
    "HookbusUnpublishedEventsOld": "hookbus_oldest_unpublished_age_seconds > 300",
    "publish errors": "sum(rate(hookbus_publish_errors_total[1m])) > 0",
    "hookbus not ready": "hookbus_ready == 0",
}


def alert_expr(name: str) -> str:
    import yaml  # noqa: PLC0415 - the venv has it; static/wait need only the standard library

    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    return next(r["expr"] for r in rules if r.get("alert") == name)


def panels(dash: dict) -> list[dict]:
    """Every panel, including those nested in collapsed rows."""
    out = []
    for p in dash.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def substitute(expr: str, variables: list[str]) -> str:
    """Replace $var, ${var}, ${var:fmt} and [[var]]: built-ins by durations, dashboard
    variables by '.*' (every value, as the 'All' option with allValue '.*')."""
    def value(name: str) -> str:
        if name in BUILTINS:
            return BUILTINS[name]
        if name in variables:
            return ".*"
        raise KeyError(name)

    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return value(name)

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", repl, expr)


class Failures:
    def __init__(self) -> None:
        self.items: list[str] = []

    def fail(self, msg: str) -> None:
        self.items.append(msg)
        print(f"  FAIL {msg}", flush=True)

    def check(self, cond: object, msg: str) -> bool:
        if not cond:
            self.fail(msg)
        return bool(cond)


def cmd_static(_: argparse.Namespace) -> int:
    f = Failures()
    try:
        dash = json.loads(DASHBOARD.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"  FAIL {DASHBOARD}: {e}")
        return 1
    f.check(dash.get("uid") and dash.get("title"), "dashboard needs uid and title")
    f.check(dash.get("id") is None, "dashboard id must be null to import anywhere")
    f.check(isinstance(dash.get("schemaVersion"), int), "dashboard needs schemaVersion")
    tvars = dash.get("templating", {}).get("list", [])
    ds = [v for v in tvars if v.get("name") == "datasource"]
    f.check(ds and ds[0].get("type") == "datasource" and ds[0].get("query") == "prometheus",
            "templating needs a variable 'datasource' of type datasource, query prometheus")
    names = [v["name"] for v in tvars]
    f.check(len(names) == len(set(names)), f"duplicate template variables {names}")
    ids = [p.get("id") for p in panels(dash)]
    f.check(len(ids) == len(set(ids)), "panel ids are not unique")
    titles = set()
    n_exprs = 0
    for p in panels(dash):
        if p.get("type") == "row":
            continue
        title = p.get("title", "?")
        titles.add(title)
        f.check(p.get("gridPos"), f"panel {title!r} has no gridPos")
        uid = (p.get("datasource") or {}).get("uid")
        f.check(uid in ("${datasource}", "$datasource"), f"panel {title!r} does not use the datasource variable")
        targets = p.get("targets") or []
        f.check(targets, f"panel {title!r} has no targets")
        for t in targets:
            f.check(t.get("expr", "").strip(), f"panel {title!r} target {t.get('refId')} has no expr")
            n_exprs += 1
            try:
                substitute(t.get("expr", ""), names)
            except KeyError as e:
                f.fail(f"panel {title!r} uses undefined variable ${e.args[0]}")
    for core in CORE:
        f.check(core in titles, f"core panel {core!r} is missing")
    for v in ("cluster", "namespace", "pod"):
        f.check(v in names, f"templating needs a variable {v!r}")
    for p in panels(dash):
        if p.get("type") == "row":
            continue
        title = p.get("title", "?")
        f.check(len(p.get("description", "")) >= 80 and "Bad" in p.get("description", ""),
                f"panel {title!r}: the description must say what it shows and what a bad value means ('Bad: ...')")
        for tg in p.get("targets") or []:
            legend, expr = tg.get("legendFormat", ""), tg.get("expr", "")
            f.check("{{instance}}" not in legend, f"panel {title!r}: legend by instance (IP), use {{{{pod}}}}")
            if re.match(r"\s*\w+ by \((?:[^)]*,\s*)?pod\b", expr):  # the outer aggregation keeps pod
                f.check("{{pod}}" in legend, f"panel {title!r} {tg.get('refId')}: per-pod series without {{{{pod}}}} in the legend")
            for var in ("cluster", "namespace", "pod"):
                f.check(f"${var}" in expr, f"panel {title!r} {tg.get('refId')}: query ignores ${var}")
    required_metrics = ["hookbus_http_requests_total", "hookbus_ack_duration_seconds", "hookbus_publish_duration_seconds",
                        "hookbus_event_lag_seconds", "hookbus_duplicates_total", "hookbus_events_received_total",
                        "hookbus_spool_pending_events", "hookbus_oldest_unpublished_age_seconds", "hookbus_sink_up",
                        "hookbus_publish_errors_total", "hookbus_dead_letters_total", "hookbus_ready",
                        "hookbus_spool_unpublished_bytes", "hookbus_spool_retained_bytes", "hookbus_spool_capacity_bytes",
                        "hookbus_queue_events", "hookbus_broker_duplicates_total", "hookbus_dedup_window_seconds",
                        "hookbus_overflow_events_total", "hookbus_publisher_restarts_total",
                        "process_cpu_seconds_total", "process_resident_memory_bytes"]
    # Units: a panel charting only rate()s of counters says "per second" in its unit (reqps,
    # eps, cps, ops...); CPU in cores and ratios excepted.
    per_second = {"reqps", "eps", "cps", "ops", "mps", "rps", "wps", "iops", "Bps", "binBps"}
    for p in panels(dash):
        exprs = [t.get("expr", "") for t in p.get("targets") or []]
        if p.get("type") == "row" or not exprs or "(cores)" in p.get("title", ""):
            continue
        unit = ((p.get("fieldConfig") or {}).get("defaults") or {}).get("unit")
        if all(re.search(r"\brate\(", e) and not re.search(r"\)\s*/|histogram_quantile", e) for e in exprs):
            f.check(unit in per_second, f"panel {p.get('title')!r} charts rates in unit {unit!r}, not a per-second unit")
    # The presence roster: a row of its own charting every roster metric, and nothing else.
    rows = {p.get("title"): p for p in dash.get("panels", []) if p.get("type") == "row"}
    roster_row = rows.get(ROSTER_ROW)
    if f.check(roster_row is not None, f"dashboard has no row {ROSTER_ROW!r}"):
        inner = roster_row.get("panels") or []
        exprs = " ".join(t.get("expr", "") for p in inner for t in p.get("targets") or [])
        f.check(len(inner) >= 10, f"row {ROSTER_ROW!r} has {len(inner)} panels, expected the 10 of the roster")
        for m in ROSTER_METRICS:
            f.check(m in exprs, f"row {ROSTER_ROW!r} does not chart {m}")
        others = {m for m in re.findall(r"\b(?:hookbus|process)_[a-z_]+\b", exprs) if not m.startswith(ROSTER_PREFIX)}
        f.check(not others, f"row {ROSTER_ROW!r} charts series of the bridge: {sorted(others)}")
        for p in inner:
            for tg in p.get("targets") or []:
                f.check(ROSTER_PREFIX in tg.get("expr", ""), f"panel {p.get('title')!r} of row {ROSTER_ROW!r} charts no roster series")
    # Every roster series the dashboard and the alerts name is registered by the roster's code
    # (the live check cannot see them: it runs no roster). Skipped, saying so, while src/ has none.
    registered = roster_source_metrics()
    named = {m for m in metric_names() if m.startswith(ROSTER_PREFIX)}
    named = {re.sub(r"_(bucket|count|sum)$", "", m) for m in named}  # a histogram's series
    if registered:
        f.check(named <= registered, f"roster metrics named by the dashboard or the alerts but registered nowhere in src/: "
                                     f"{sorted(named - registered)}")
        f.check(set(ROSTER_METRICS) <= registered, f"design metrics the roster's code does not register: "
                                                   f"{sorted(set(ROSTER_METRICS) - registered)}")
    else:
        print(f"  note src/ registers no hookbus_roster_* metric yet: the {len(named)} roster names of the dashboard "
              "and the alerts are not cross-checked against the code")
    required_metrics.extend(ROSTER_METRICS)
    # The container as Kubernetes sees it: memory against its limit, CPU throttling, restarts.
    for m in ("container_memory_working_set_bytes", "kube_pod_container_resource_limits",
              "container_cpu_cfs_throttled_periods_total", "kube_pod_container_status_restarts_total"):
        required_metrics.append(m)
    text = DASHBOARD.read_text()
    for m in required_metrics:
        f.check(m in text, f"dashboard does not chart {m}")
    if f.items:
        print(f"dashboard (static): {len(f.items)} failure(s)")
        return 1
    print(f"  ok   {DASHBOARD.relative_to(ROOT)}: {len(titles)} panels, {n_exprs} queries, variables {names}")
    print("dashboard (static): ok")
    return 0


def query(prom: str, expr: str) -> dict:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:  # 400 carries the parse error as JSON
        try:
            return json.load(e)
        except json.JSONDecodeError:
            return {"status": "error", "error": f"HTTP {e.code}"}


def values(result: dict) -> list[tuple[dict, float]]:
    data = result.get("data", {})
    if data.get("resultType") == "scalar":
        return [({}, float(data["result"][1]))]
    return [(s.get("metric", {}), float(s["value"][1])) for s in data.get("result", [])]


def roster_source_metrics() -> set[str]:
    """The hookbus_roster_* names the Rust sources spell as string literals (their registration)."""
    out: set[str] = set()
    for f in (ROOT / "src").rglob("*.rs"):
        out.update(re.findall(r'"(hookbus_roster_[a-z_]+)"', f.read_text(errors="replace")))
    return out


def metric_names() -> set[str]:
    text = DASHBOARD.read_text() + ALERTS.read_text()
    return set(re.findall(r"\b(?:hookbus|process)_[a-z_]+\b", text))


def cmd_live(args: argparse.Namespace) -> int:
    f = Failures()
    dash = json.loads(DASHBOARD.read_text())
    names = [v["name"] for v in dash["templating"]["list"]]
    core_seen: dict[str, list[tuple[dict, float]]] = {}
    n = 0
    for v in dash["templating"]["list"]:
        q = v.get("definition") or ""
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", q)
        if m:
            expr = f"group by ({m.group(2)}) ({substitute(m.group(1), names)})"
            res = query(args.prom, expr)
            f.check(res.get("status") == "success", f"variable {v['name']}: {expr}: {res.get('error')}")
            n += 1
    for p in panels(dash):
        for t in p.get("targets") or []:
            expr = substitute(t["expr"], names)
            res = query(args.prom, expr)
            n += 1
            if not f.check(res.get("status") == "success",
                           f"panel {p['title']!r} {t['refId']}: {res.get('errorType')}: {res.get('error')}\n       {expr}"):
                continue
            vals = values(res)
            if p["title"] in CORE:
                core_seen.setdefault(p["title"], []).extend(vals)
            elif not vals:
                print(f"  note panel {p['title']!r} {t['refId']} returns no data now (allowed: not a core panel)")
    if f.items:
        print(f"  ..   {n} queries sent, {len(f.items)} failed")
    else:
        print(f"  ok   {n} queries sent, every one parsed and ran (status success)")

    finite = lambda vs: [(m, x) for m, x in vs if not math.isnan(x)]  # noqa: E731
    for title, what in CORE.items():
        vs = core_seen.get(title, [])
        if title == "Requests by status code":
            codes = {m.get("code") for m, x in vs if x > 0}
            ok = {"200", "400"} <= codes
        elif title in ("Duplicates", "Duplicate ratio", "Events by action"):
            ok = any(x > 0 for _, x in finite(vs))
        elif title == "Ack latency":
            ok = bool(finite(vs))
        elif title == "Spool bytes":
            ok = len(vs) >= 3
        else:
            ok = bool(vs)
        shown = ", ".join(f"{ {k: v for k, v in m.items() if k not in ('job', 'instance')} }={x:.4g}"
                          for m, x in vs[:6]) or "no data"
        if f.check(ok, f"core panel {title!r} should show {what}; got: {shown}"):
            print(f"  ok   core panel {title!r}: {shown}")

    roster = sorted(m for m in metric_names() if m.startswith(ROSTER_PREFIX))
    if roster:
        print(f"  note {len(roster)} presence roster metrics ({', '.join(roster)}) are exported by `hookbus roster`, "
              "a process this check does not run (it needs a broker and a store): their presence is not checked "
              "here; their panel queries and alert rules ran above and parsed")
    for m in sorted(m for m in metric_names() if not m.startswith(ROSTER_PREFIX)):
        # A histogram exists as <name>_bucket/_count/_sum series.
        res = query(args.prom, f"count({{__name__=~\"{m}(_bucket|_count|_sum)?\"}})")
        got = values(res)
        present = bool(got and got[0][1] > 0)
        f.check(present, f"metric {m} (named by the dashboard or the alerts) is not exported by hookbus")

    # The spool gauges that HookbusSpoolFilling and the dashboard rely on.
    for m in SPOOL_GAUGES:
        f.check(values(query(args.prom, m)), f"spool gauge {m} is missing")
    if args.capacity:
        cap = values(query(args.prom, "hookbus_spool_capacity_bytes"))
        f.check(cap and cap[0][1] == args.capacity,
                f"hookbus_spool_capacity_bytes = {cap[0][1] if cap else None}, expected spool.max_bytes {args.capacity:g}")
    if args.min_retained_ratio:
        ratio = values(query(args.prom, "max(hookbus_spool_retained_bytes / hookbus_spool_capacity_bytes)"))
        got = ratio[0][1] if ratio else 0
        if f.check(got >= args.min_retained_ratio,
                   f"retained/capacity = {got:.3f}: the load did not keep enough published segments to test "
                   f"HookbusSpoolFilling against (want >= {args.min_retained_ratio})"):
            total = values(query(args.prom, "max(hookbus_spool_bytes / hookbus_spool_capacity_bytes)"))
            print(f"  ok   published segments kept for dedup fill {got:.0%} of the spool "
                  f"(on-disk bytes {total[0][1] if total else 0:.0%} of capacity): the old on-disk rule would fire")
    HEALTH["HookbusSpoolFilling"] = alert_expr("HookbusSpoolFilling")
    res = query(args.prom, 'count(hookbus_ack_duration_seconds_bucket{le="0.25"})')
    f.check(values(res), "hookbus_ack_duration_seconds has no le=\"0.25\" bucket: the ack SLO alerts need it")
    for what, expr in HEALTH.items():
        res = query(args.prom, expr)
        f.check(res.get("status") == "success" and not values(res),
                f"healthy hookbus trips {what}: {expr} -> {values(res)}")
    if f.items:
        print(f"dashboard (live): {len(f.items)} failure(s)")
        return 1
    print(f"  ok   every bridge metric the dashboard and alerts name exists "
          f"({len([m for m in metric_names() if not m.startswith(ROSTER_PREFIX)])})"
          f"; health conditions clear, HookbusSpoolFilling's expression silent")
    print("dashboard (live): ok")
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    """Prometheus evaluated the shipped rules against the live hookbus: every rule loaded and
    healthy, and nothing pending or firing except the alerts the load is meant to trigger."""
    f = Failures()
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            with urllib.request.urlopen(f"{args.prom}/api/v1/rules", timeout=10) as r:
                groups = json.load(r)["data"]["groups"]
        except OSError as e:
            print(f"  FAIL {args.prom}/api/v1/rules: {e}")
            return 1
        # --evaluated-after: every group evaluated since then (it saw the load), polled.
        stale = [g["name"] for g in groups if evaluated_at(g.get("lastEvaluation", "")) <= args.evaluated_after]
        if not stale:
            break
        if time.monotonic() > deadline:
            print(f"  FAIL rule groups {stale} not evaluated after {args.evaluated_after:.0f} within {args.timeout:g}s")
            return 1
        time.sleep(0.2)
    rules = [r for g in groups for r in g["rules"]]
    alerts = [r for r in rules if r["type"] == "alerting"]
    f.check(len(alerts) >= 20, f"Prometheus loaded only {len(alerts)} alerting rules")
    for r in rules:
        f.check(r.get("health") == "ok", f"rule {r['name']} is {r.get('health')}: {r.get('lastError')}")
        f.check(r.get("lastEvaluation", "").startswith("20") and not r.get("lastEvaluation", "").startswith("0001"),
                f"rule {r['name']} was never evaluated")
    allowed = set(filter(None, args.allow.split(",")))
    active = {(a["labels"]["alertname"], a["state"]) for r in alerts for a in r.get("alerts", [])}
    for name, state in sorted(active):
        if name in allowed:
            print(f"  ok   {name} is {state}: expected from the load")
        else:
            f.fail(f"{name} is {state} for a healthy hookbus under load")
    f.check(not any(n == "HookbusSpoolFilling" for n, _ in active), "HookbusSpoolFilling is active")
    if f.items:
        return 1
    print(f"  ok   {len(rules)} rules loaded and evaluated ({len(alerts)} alerts); none pending or firing "
          f"beyond {sorted(allowed) or 'none'}; HookbusSpoolFilling silent")
    return 0


def evaluated_at(stamp: str) -> float:
    """Unix time of a Prometheus RFC 3339 timestamp (nanosecond fraction allowed); 0 if none."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", stamp)
    if not m or stamp.startswith("0001"):
        return 0.0
    base = datetime.datetime.fromisoformat(m.group(1) + (m.group(3).replace("Z", "+00:00")))
    return base.timestamp() + float("0" + (m.group(2) or ""))


def cmd_wait(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            vs = values(query(args.prom, args.expr))
            if vs and vs[0][1] >= args.min:
                print(f"  ok   {args.expr} = {vs[0][1]:g} (>= {args.min:g})")
                return 0
            last = f"{vs[0][1]:g}" if vs else "empty"
        except OSError as e:
            last = str(e)
        time.sleep(0.5)
    print(f"  FAIL {args.expr} did not reach {args.min:g} within {args.timeout:g}s (last: {last})")
    return 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["static", "live", "wait", "alerts"])
    p.add_argument("--capacity", type=float, default=0, help="live: expected hookbus_spool_capacity_bytes")
    p.add_argument("--min-retained-ratio", type=float, default=0,
                   help="live: retained/capacity the load must reach (the scenario HookbusSpoolFilling must ignore)")
    p.add_argument("--allow", default="", help="alerts: comma-separated alerts the load may trigger")
    p.add_argument("--evaluated-after", type=float, default=0,
                   help="alerts: wait (up to --timeout) until every rule group was evaluated after this Unix time")
    p.add_argument("--prom", default="http://127.0.0.1:9090")
    p.add_argument("--expr")
    p.add_argument("--min", type=float, default=1)
    p.add_argument("--timeout", type=float, default=30)
    args = p.parse_args()
    return {"static": cmd_static, "live": cmd_live, "wait": cmd_wait, "alerts": cmd_alerts}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
