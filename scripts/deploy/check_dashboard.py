#!/usr/bin/env python3
"""Checks of deploy/grafana/hookbus.json (run by scripts/check-deploy).

  static               importable Grafana JSON: uid/title, a `datasource` variable of type
                       prometheus used by every panel, every panel has targets[].expr
  live --prom URL      every panel's PromQL (Grafana variables replaced) runs on a real
                       Prometheus that scraped a running hookbus: each query must parse, the
                       core panels must return data, every hookbus_* metric named by the
                       dashboard or the alerts must exist, and no health alert condition holds
  wait --prom URL --expr E --min N --timeout S
                       poll until the scalar value of E reaches N (deadline, not a sleep)
Only the standard library is used, so it runs with any python3.
"""

from __future__ import annotations

import argparse
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

# Panels that must show data after a short load (title: what the data must show).
CORE = {
    "Requests by status code": "series for code 200 and 400 with a rate above 0",
    "Ack latency": "a quantile that is a number (not NaN)",
    "Duplicates": "a rate above 0",
    "Duplicate ratio": "a ratio above 0",
    "Events by action": "a rate above 0",
    "Spool depth": "a series (0 is fine)",
    "Spool size": "a series (0 is fine)",
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

# Alert conditions that must not hold for a healthy hookbus with a stdout sink.
HEALTH = {
    "HookbusSinkDown": "max by (namespace, job, instance) (hookbus_sink_up) == 0",
    "HookbusUnpublishedEventsOld": "hookbus_oldest_unpublished_age_seconds > 300",
    "publish errors": "sum(rate(hookbus_publish_errors_total[1m])) > 0",
}


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
    required_metrics = ["hookbus_http_requests_total", "hookbus_ack_duration_seconds", "hookbus_publish_duration_seconds",
                        "hookbus_event_lag_seconds", "hookbus_duplicates_total", "hookbus_events_received_total",
                        "hookbus_spool_pending_events", "hookbus_oldest_unpublished_age_seconds", "hookbus_sink_up",
                        "hookbus_publish_errors_total", "hookbus_dead_letters_total"]
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


def metric_names() -> set[str]:
    text = DASHBOARD.read_text() + ALERTS.read_text()
    return set(re.findall(r"\bhookbus_[a-z_]+\b", text))


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
        else:
            ok = bool(vs)
        shown = ", ".join(f"{ {k: v for k, v in m.items() if k not in ('job', 'instance')} }={x:.4g}"
                          for m, x in vs[:6]) or "no data"
        if f.check(ok, f"core panel {title!r} should show {what}; got: {shown}"):
            print(f"  ok   core panel {title!r}: {shown}")

    for m in sorted(metric_names()):
        # A histogram exists as <name>_bucket/_count/_sum series.
        res = query(args.prom, f"count({{__name__=~\"{m}(_bucket|_count|_sum)?\"}})")
        got = values(res)
        f.check(got and got[0][1] > 0,
                f"metric {m} (named by the dashboard or the alerts) is not exported by hookbus")
    res = query(args.prom, 'count(hookbus_ack_duration_seconds_bucket{le="0.25"})')
    f.check(values(res), "hookbus_ack_duration_seconds has no le=\"0.25\" bucket: the ack SLO alerts need it")
    for what, expr in HEALTH.items():
        res = query(args.prom, expr)
        f.check(res.get("status") == "success" and not values(res),
                f"healthy hookbus trips {what}: {expr} -> {values(res)}")
    if f.items:
        print(f"dashboard (live): {len(f.items)} failure(s)")
        return 1
    print(f"  ok   every metric the dashboard and alerts name exists ({len(metric_names())}); health conditions clear")
    print("dashboard (live): ok")
    return 0


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
    p.add_argument("command", choices=["static", "live", "wait"])
    p.add_argument("--prom", default="http://127.0.0.1:9090")
    p.add_argument("--expr")
    p.add_argument("--min", type=float, default=1)
    p.add_argument("--timeout", type=float, default=30)
    args = p.parse_args()
    return {"static": cmd_static, "live": cmd_live, "wait": cmd_wait}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
