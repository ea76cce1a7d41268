#!/usr/bin/env python3
"""Offline checks of the hookbus Helm chart and the kustomize base (run by scripts/check-deploy).

Subcommands, each exits non-zero on the first class of failure it finds and prints why:
  lint       helm lint --strict, default values and every ci/*.yaml
  render     offline render of the same cases; wiring checks (selectors, ports, probes,
             grace period, security context, config.toml keys, checksum roll); the presence
             roster (roster.enabled: its own Deployment, Service, ServiceMonitor, PDB apart
             from the bridge's, no spool, the bridge's config and Secrets); the webhook
             token: from the source the values name, else generated into <fullname>-auth,
             none only with config.auth.allow_anonymous, the same for the helm test pod;
             and, rendered against a fake API server (fake_kube.py) so `lookup` answers,
             the generated token kept on upgrade and an existing Secret's key honoured
  schema     values.schema.json accepts the good cases and rejects known-bad values
  kube       every rendered manifest and the kustomize base validate against Kubernetes
             OpenAPI schemas (kubernetes-validate, strict); CRD kinds checked structurally
  sync       the chart's copy of the dashboard equals deploy/; deploy/prometheus/alerts.yaml
             equals the chart's alert rules rendered with the default values (--fix
             regenerates both); the chart README's values table is values.yaml's and its
             Upgrading section names what changed
  configcheck --hookbus BIN
             `hookbus --check` on the config.toml of the default values, every ci/*.yaml
             and the kustomize base, as the pod would see it: every ${VAR} it references
             set, every file it names (TLS CA/cert/key, NKey seed, .creds, ${file:...})
             present: taken from the chart-managed Secret when the values carry it, else
             generated (openssl, a valid NKey seed and .creds); HOOKBUS_AUTH_TOKEN set
             exactly when the pod spec gives the container one (its value when rendered),
             HOOKBUS_PUBNUB_SECRET_KEY when the roster container gets one; a config that
             cannot start fails. With roster.enabled the config has [roster]: a hookbus
             without `hookbus roster` skips those cases, saying so
  alerts     renders the chart's alert rules in their default, custom (re-thresholded,
             disabled, relabelled: deploy/prometheus/alerts_custom_values.yaml), all-disabled
             and ci/*.yaml forms into --out/../rules for promtool; checks every alert has
             severity, summary, description, a runbook_url whose section exists in
             docs/runbooks.md, and that overrides and disabling take effect
Rendered manifests and config.toml files are written under --out for inspection and for
`hookbus --check`.
"""

from __future__ import annotations

import argparse
import copy
import filecmp
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, Iterable

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "hookbus"
DEPLOY = ROOT / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
COPIES = {
    CHART / "files" / "grafana" / "hookbus.json": DEPLOY / "grafana" / "hookbus.json",
}
# The alert rules: one source in the chart, the plain rule file generated from it.
RULES_SOURCE = CHART / "files" / "prometheus" / "rules.yaml"
PLAIN_ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
CUSTOM_ALERT_VALUES = DEPLOY / "prometheus" / "alerts_custom_values.yaml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
# The presence roster's operations page: the runbooks of the alert group hookbus.roster.
ROSTER_DOC = ROOT / "docs" / "roster.md"
ROSTER_GROUP = "hookbus.roster"
PLAIN_HEADER = """\
# hookbus alerting and recording rules (a Prometheus rule file).
#
# GENERATED from helm/hookbus/files/prometheus/rules.yaml, rendered by the Helm chart
# with its default values (metrics.prometheusRule.rules.* in helm/hookbus/values.yaml):
# do not edit; change the source and run `scripts/check-deploy --sync`, which fails while
# this file differs. Tests: alerts_test.yaml (promtool test rules alerts_test.yaml).
#
# runbook_url annotations point at docs/runbooks.md relative to the repository root (a
# placeholder): with the chart set metrics.prometheusRule.runbookBase to the URL of your
# copy; loading this file as is, replace "docs/runbooks.md#" with that URL.
# HookbusTargetMissing and HookbusScrapeFailing select the admin targets with job="hookbus"
# (what a ServiceMonitor of the chart gives them): adjust it to your scrape job.
# The group hookbus.roster is the presence roster's (`hookbus roster`, docs/roster.md, its
# runbook_url into docs/roster.md): HookbusRosterDown selects its targets with
# job="hookbus-roster"; without roster series none of the group fires.
"""
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
RELEASE, NAMESPACE = "hookbus", "hookbus"

# The config.toml keys the tooling relies on (the documented contract, docs/configuration.md)
# and the TOML types they must have.
CONFIG_KEYS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "http": {"listen": str, "max_body_bytes": int},
    "admin": {"listen": str},
    "auth": {"allowed_sub_keys": list, "allow_anonymous": bool},
    "ack": {"mode": str},
    "spool": {"dir": str, "max_bytes": int},
    "dedup": {"window": str, "max_entries": int},
    "routing": {"template": str, "dead_letter": str},
    "sink": {"kind": str},
    "nats": {"url": str, "jetstream": bool, "stream": str},
    "shutdown": {"grace": str},
    "kafka": {"brokers": str, "create_topics": bool, "partitions": int,
              "replication_factor": int, "properties": dict},
}

# [roster] and [roster.here_now], rendered with roster.enabled: the keys the chart
# may render and their TOML types (listen always; the others unless null in the values).
ROSTER_KEYS: dict[str, type] = {"listen": str, "store": str, "bucket": str, "consumer": str, "sub_key": str,
                                "tombstone_ttl": str, "template": str, "sessions": str, "batch": int, "here_now": dict}
HERE_NOW_KEYS: dict[str, type] = {"origin": str, "subscribe_key": str, "publish_key": str, "interval": str,
                                  "max_requests_per_second": int, "timeout": str}
PUBNUB_SECRET = "HOOKBUS_PUBNUB_SECRET_KEY"

# Values that values.schema.json must reject (dotted path, value, why).
BAD_VALUES: list[tuple[str, Any, str]] = [
    ("config.ack.mode", "fast", "ack.mode outside spool|memory|publish"),
    ("replicaCount", "x", "replicaCount not an integer"),
    ("config.sink.kind", "rabbitmq", "unknown sink kind"),
    ("config.shutdown.grace", "20 seconds", "duration in an unknown format"),
    ("config.spool.max_bytes", -1, "negative spool size"),
    ("containerPorts.http", 70000, "port out of range"),
    ("image.pullPolicy", "Sometimes", "unknown pull policy"),
    ("replicaCont", 3, "misspelt top-level key"),
    ("config.dedup.windw", "20m", "misspelt config key"),
    ("metrics.prometheusRule.rules.HookbusSpoolFilling.threshold", "high", "non-numeric alert threshold"),
    ("metrics.prometheusRule.rules.HookbusSpoolFilling.severity", "page", "unknown severity"),
    ("metrics.prometheusRule.rules.HookbusSpoolFilling.treshold", 0.9, "misspelt alert setting"),
    ("podAntiAffinityPreset", "sometimes", "unknown anti-affinity preset"),
    ("config.nats.replicas", 7, "JetStream replicas above 5"),
    ("config.nats.storage", "disk", "unknown stream storage"),
    ("config.nats.tls_ca_file", "ca.crt", "relative TLS file path"),
    ("config.routing.rules", [{"channel": "chat.*"}], "routing rule without template"),
    ("spoolVolume.sizeLimit", "2 GB", "not a Kubernetes quantity"),
    ("config.dedup.shared", "memcached://x", "shared store that is not redis"),
    ("helmTest.channel", "a b", "channel with a space"),
    ("config.auth.allow_anonymous", "yes", "allow_anonymous not a boolean"),
    ("config.nats.dead_letter_stream", "PRESENCE.DL", "dead-letter stream name with a dot"),
    ("config.nats.dead_letter_max_bytes", 0, "dead-letter stream without a size limit"),
    ("config.nats.dead_letter_max_age", "1 week", "dead-letter max age in an unknown format"),
    ("config.routing.dead_letter_budget_bytes", -1, "negative dead-letter budget"),
    ("config.routing.dead_letter_budget_window", "1 minute", "dead-letter budget window in an unknown format"),
    ("roster.enabled", "yes", "roster.enabled not a boolean"),
    ("roster.replicaCount", "two", "roster replicas not an integer"),
    ("roster.containerPort", 0, "roster port out of range"),
    ("roster.servicemonitor", {"enabled": True}, "misspelt roster key"),
    ("config.roster.store", "memcached://x:11211", "roster store neither nats nor redis"),
    ("config.roster.tombstone_ttl", "30 minutes", "tombstone_ttl in an unknown format"),
    ("config.roster.bucket", "PRESENCE.ROSTER", "KV bucket name with a dot"),
    ("config.roster.here_now.secret_key", "sec-c-x", "the PubNub secret key in config (a ConfigMap)"),
    ("config.roster.here_now.max_requests_per_second", 0, "Here Now rate limit of 0"),
    ("config.roster.here_now.max_requests_per_second", 5000, "Here Now rate limit above hookbus's 1000"),
    ("config.roster.batch", 0, "roster batch of 0"),
    ("config.roster.here_now.origin", "ps.pndsn.com", "Here Now origin without a scheme"),
    ("config.roster.template", "roster.>", "change-event template with a wildcard"),
    ("metrics.prometheusRule.rules.HookbusRosterLagging.threshold", "slow", "non-numeric roster alert threshold"),
]


class Failures:
    """Collects failures of one subcommand; printed as they happen."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def fail(self, msg: str) -> None:
        self.items.append(msg)
        print(f"  FAIL {msg}", flush=True)

    def check(self, cond: bool, msg: str) -> bool:
        if not cond:
            self.fail(msg)
        return cond

    def exit(self, what: str) -> None:
        if self.items:
            print(f"{what}: {len(self.items)} failure(s)")
            sys.exit(1)
        print(f"{what}: ok")
        sys.exit(0)


def helm():
    import helm_python  # imported late: only the venv has it

    return helm_python


def cases() -> list[tuple[str, dict[str, Any]]]:
    """(name, values) for the default values and every ci/*.yaml file."""
    out: list[tuple[str, dict[str, Any]]] = [("default", {})]
    for f in sorted((CHART / "ci").glob("*.yaml")):
        out.append((f"ci/{f.name}", yaml.safe_load(f.read_text()) or {}))
    return out


def render(values: dict[str, Any], namespace: str = NAMESPACE) -> dict[str, str]:
    h = helm()
    with h.Chart.load(str(CHART)) as chart:
        return chart.render(values=values, name=RELEASE, namespace=namespace, is_install=True)


def alert_groups(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The rule groups the chart renders into its PrometheusRule for these values, without
    metrics.prometheusRule.additionalGroups."""
    vals = copy.deepcopy(values)
    pr = vals.setdefault("metrics", {}).setdefault("prometheusRule", {})
    pr["enabled"] = True
    pr["additionalGroups"] = []
    docs = docs_of(render(vals))
    rules = [d for _, d in docs if d.get("kind") == "PrometheusRule"]
    if len(rules) != 1:
        raise RuntimeError(f"expected one PrometheusRule, got {len(rules)}")
    return rules[0]["spec"]["groups"]


class _RuleDumper(yaml.SafeDumper):
    pass


def _str_rep(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else (">" if len(data) > 80 else None)
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_RuleDumper.add_representer(str, _str_rep)
RULE_KEY_ORDER = ["record", "alert", "expr", "for", "labels", "annotations"]
ANNOTATION_ORDER = ["summary", "description", "runbook_url"]


def rule_file_text(groups: list[dict[str, Any]], header: str = "") -> str:
    """A Prometheus rule file, keys in the conventional order."""
    def ordered(d: dict, order: list[str]) -> dict:
        return {k: d[k] for k in sorted(d, key=lambda k: (order.index(k) if k in order else len(order), k))}
    out = []
    for g in groups:
        rules = []
        for r in g["rules"]:
            r = ordered(r, RULE_KEY_ORDER)
            if "annotations" in r:
                r["annotations"] = ordered(r["annotations"], ANNOTATION_ORDER)
            rules.append(r)
        out.append({"name": g["name"], "rules": rules})
    body = yaml.dump({"groups": out}, Dumper=_RuleDumper, sort_keys=False, width=96, allow_unicode=True)
    return header + body


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub generates for the headings of a Markdown file."""
    out = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            out.add(text.replace(" ", "-"))
    return out


def docs_of(manifests: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """(template, object) for every non-empty YAML document, NOTES.txt excluded."""
    out = []
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append((template, doc))
    return out


def duration_seconds(text: str) -> float:
    """Seconds of a hookbus duration (500ms, 20s, 20m, 1h, 1m30s)."""
    parts = re.findall(r"([0-9]+)\s*(ms|h|m|s)", text)
    if not parts or re.sub(r"([0-9]+)\s*(ms|h|m|s)|\s", "", text):
        raise ValueError(f"not a duration: {text!r}")
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(int(n) * unit[u] for n, u in parts)


def set_path(values: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(values)
    cur = out
    keys = dotted.split(".")
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
    cur[keys[-1]] = value
    return out


def by_kind(docs: Iterable[tuple[str, dict]], kind: str) -> list[dict]:
    return [d for _, d in docs if d.get("kind") == kind]


def is_roster(d: dict[str, Any]) -> bool:
    """An object of the presence roster (roster.enabled): labelled component roster."""
    return ((d.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/component") == "roster"


def bridge_kind(docs: Iterable[tuple[str, dict]], kind: str) -> list[dict]:
    """by_kind without the roster's objects."""
    return [d for d in by_kind(docs, kind) if not is_roster(d)]


def bridge_workload(docs: Iterable[tuple[str, dict]]) -> dict[str, Any]:
    """The bridge's StatefulSet or Deployment (never the roster's Deployment)."""
    return (bridge_kind(docs, "StatefulSet") + bridge_kind(docs, "Deployment"))[0]


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ---------------------------------------------------------------- lint

def cmd_lint(args: argparse.Namespace) -> None:
    f = Failures()
    h = helm()
    for name, values in cases():
        report = h.lint(str(CHART), values, strict=True, kube_version=f"v{args.kube_versions[0]}.0")
        for err in report.get("errors") or []:
            f.fail(f"helm lint [{name}]: {err}")
        for m in report.get("messages") or []:
            if m.get("severity", 0) >= 2:
                f.fail(f"helm lint [{name}]: {m.get('path')}: {m.get('error')}")
        if not report.get("errors") and not any(m.get("severity", 0) >= 2 for m in report.get("messages") or []):
            print(f"  ok   helm lint --strict [{name}]")
    f.exit("helm lint")


# ---------------------------------------------------------------- render + wiring

def config_toml_of(docs: list[tuple[str, dict]]) -> tuple[str, dict[str, Any]] | None:
    for _, d in docs:
        if d.get("kind") in ("ConfigMap", "Secret"):
            data = d.get("data") or d.get("stringData") or {}
            text = data.get("config.toml")
            if text is not None:
                return text, tomllib.loads(text)
    return None


def check_config(f: Failures, name: str, cfg: dict[str, Any]) -> None:
    for section, keys in CONFIG_KEYS.items():
        if not f.check(isinstance(cfg.get(section), dict), f"[{name}] config.toml lacks [{section}]"):
            continue
        for key, typ in keys.items():
            val = cfg[section].get(key)
            f.check(isinstance(val, typ) and not (typ is int and isinstance(val, bool)),
                    f"[{name}] config.toml {section}.{key} = {val!r} is not a {typ}")
    extra = set(cfg) - set(CONFIG_KEYS) - {"roster"}
    f.check(not extra, f"[{name}] config.toml has sections the contract does not name: {sorted(extra)}")
    for section, table, keys in (("roster", cfg.get("roster") or {}, ROSTER_KEYS),
                                 ("roster.here_now", (cfg.get("roster") or {}).get("here_now") or {}, HERE_NOW_KEYS)):
        f.check(not set(table) - set(keys), f"[{name}] config.toml [{section}] has keys the contract does not name: "
                                            f"{sorted(set(table) - set(keys))}")
        for key, val in table.items():
            typ = keys.get(key)
            if typ is not None:
                f.check(isinstance(val, typ) and not (typ is int and isinstance(val, bool)),
                        f"[{name}] config.toml {section}.{key} = {val!r} is not a {typ}")
    f.check("token" not in cfg.get("auth", {}), f"[{name}] the auth token must not be in config.toml")
    for key in ("window",):
        try:
            duration_seconds(cfg["dedup"][key])
        except (ValueError, KeyError) as e:
            f.fail(f"[{name}] dedup.{key}: {e}")


def prestop_seconds(container: dict[str, Any]) -> float | None:
    pre = (container.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    cmd = (pre.get("exec") or {}).get("command") or []
    if len(cmd) == 2 and cmd[0].endswith("sleep"):
        return float(cmd[1])
    return None


def check_workload(f: Failures, name: str, docs: list[tuple[str, dict]], cfg: dict[str, Any],
                   kustomize: bool = False, values: dict[str, Any] | None = None) -> None:
    values = values or {}
    workloads = bridge_kind(docs, "Deployment") + bridge_kind(docs, "StatefulSet")
    if not f.check(len(workloads) == 1, f"[{name}] expected one Deployment or StatefulSet, got {len(workloads)}"):
        return
    wl = workloads[0]
    pod = wl["spec"]["template"]
    spec = pod["spec"]
    labels = pod["metadata"].get("labels") or {}
    f.check(selector_matches(wl["spec"]["selector"]["matchLabels"], labels),
            f"[{name}] {wl['kind']} selector does not match its pod labels")
    c = next((c for c in spec["containers"] if c["name"] == "hookbus"), None)
    if not f.check(c is not None, f"[{name}] no container named hookbus"):
        return
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    f.check(set(ports) >= {"http", "admin"}, f"[{name}] container ports {ports} lack http/admin")
    f.check(c.get("command", [None])[0] == "/usr/local/bin/hookbus" and
            c.get("args") == ["--config", "/etc/hookbus/config.toml"],
            f"[{name}] container does not run /usr/local/bin/hookbus --config /etc/hookbus/config.toml")

    # Listen ports in config.toml are the container ports.
    for section, port in (("http", "http"), ("admin", "admin")):
        listen = cfg.get(section, {}).get("listen", "")
        f.check(listen.rsplit(":", 1)[-1] == str(ports.get(port)),
                f"[{name}] [{section}] listen {listen!r} != containerPort {port}={ports.get(port)}")

    # Probes on the admin port.
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = (c.get(probe) or {}).get("httpGet") or {}
        f.check(get.get("path") == path and get.get("port") in ("admin", ports.get("admin")),
                f"[{name}] {probe} is not GET {path} on the admin port: {get}")

    # Grace: terminationGracePeriodSeconds > shutdown.grace + preStop.
    grace = duration_seconds(cfg["shutdown"]["grace"])
    pre = prestop_seconds(c)
    tgps = spec.get("terminationGracePeriodSeconds", 30)
    if f.check(pre is not None, f"[{name}] no preStop sleep"):
        ok = f.check(tgps > grace + pre,
                     f"[{name}] terminationGracePeriodSeconds {tgps} <= shutdown.grace {grace} + preStop {pre}")
        if ok:
            print(f"  ok   [{name}] terminationGracePeriodSeconds {tgps} > shutdown.grace {grace:g} + preStop {pre:g}")

    # Security: non-root, read-only root FS, no escalation, caps dropped.
    psc, sc = spec.get("securityContext") or {}, c.get("securityContext") or {}
    f.check(sc.get("runAsNonRoot") or psc.get("runAsNonRoot"), f"[{name}] runAsNonRoot not set")
    f.check((sc.get("runAsUser") or psc.get("runAsUser")) not in (None, 0), f"[{name}] runAsUser missing or 0")
    f.check(sc.get("readOnlyRootFilesystem") is True, f"[{name}] readOnlyRootFilesystem not true")
    f.check(sc.get("allowPrivilegeEscalation") is False, f"[{name}] allowPrivilegeEscalation not false")
    f.check("ALL" in ((sc.get("capabilities") or {}).get("drop") or []), f"[{name}] capabilities not dropped")
    f.check(c.get("resources", {}).get("requests"), f"[{name}] no resource requests")

    # Spool dir and config file are mounted; the spool is an emptyDir or the PVC.
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    spool_vol = mounts.get(cfg["spool"]["dir"])
    if f.check(spool_vol is not None, f"[{name}] nothing mounted at spool.dir {cfg['spool']['dir']}"):
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        if wl["kind"] == "StatefulSet":
            claims = [t["metadata"]["name"] for t in wl["spec"].get("volumeClaimTemplates", [])]
            f.check(spool_vol in claims, f"[{name}] StatefulSet spool volume {spool_vol} is not a PVC template")
        else:
            f.check("emptyDir" in vols.get(spool_vol, {}), f"[{name}] Deployment spool volume is not an emptyDir")
    f.check("/etc/hookbus/config.toml" in mounts or "/etc/hookbus" in mounts,
            f"[{name}] config.toml is not mounted under /etc/hookbus")

    # Services select the pods and target existing ports.
    services = bridge_kind(docs, "Service")
    names = {s["metadata"]["name"] for s in services}
    for s in services:
        f.check(selector_matches(s["spec"].get("selector") or {}, labels),
                f"[{name}] Service {s['metadata']['name']} does not select the pods")
        for p in s["spec"]["ports"]:
            f.check(p.get("targetPort") in ports or p.get("targetPort") in ports.values(),
                    f"[{name}] Service {s['metadata']['name']} targets unknown port {p.get('targetPort')}")
    svc_ports = {(s["metadata"]["name"], p["name"]): p["port"] for s in services for p in s["spec"]["ports"]}
    f.check(any(k[1] == "http" for k in svc_ports) and any(k[1] == "admin" for k in svc_ports),
            f"[{name}] need a Service port named http and one named admin: {sorted(svc_ports)}")
    for s in services:
        pnames = {p["name"] for p in s["spec"]["ports"]}
        f.check(not {"http", "admin"} <= pnames,
                f"[{name}] Service {s['metadata']['name']} mixes the webhook and admin ports")

    if kustomize:
        return
    # Config changes roll the pods.
    f.check("checksum/config" in (pod["metadata"].get("annotations") or {}),
            f"[{name}] pod template lacks the checksum/config annotation")

    full = wl["metadata"]["name"]
    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        f.check(ref["kind"] == wl["kind"] and ref["name"] == full,
                f"[{name}] HPA targets {ref['kind']}/{ref['name']}, not {wl['kind']}/{full}")
        f.check("replicas" not in wl["spec"], f"[{name}] replicas set on the workload while an HPA owns it")
    for pdb in bridge_kind(docs, "PodDisruptionBudget"):
        f.check(selector_matches(pdb["spec"]["selector"]["matchLabels"], labels),
                f"[{name}] PDB does not select the pods")
    for ing in by_kind(docs, "Ingress"):
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                be = p["backend"]["service"]
                f.check((be["name"], be["port"].get("name")) in svc_ports and be["port"].get("name") == "http",
                        f"[{name}] Ingress backend {be} is not the http port of a Service")
                f.check(p["path"].startswith("/webhooks/pubnub"), f"[{name}] Ingress exposes {p['path']}")
    for np_ in by_kind(docs, "NetworkPolicy"):
        f.check(selector_matches(np_["spec"]["podSelector"]["matchLabels"], labels),
                f"[{name}] NetworkPolicy does not select the pods")
        for rule in np_["spec"].get("ingress", []):
            for p in rule.get("ports", []):
                f.check(p["port"] in ports or p["port"] in ports.values(),
                        f"[{name}] NetworkPolicy allows unknown port {p['port']}")
    if wl["kind"] == "StatefulSet":
        f.check(wl["spec"]["serviceName"] in names, f"[{name}] StatefulSet serviceName is not a rendered Service")

    # CRDs: structural checks (no schema in kubernetes-validate).
    for sm in bridge_kind(docs, "ServiceMonitor"):
        f.check(sm["apiVersion"] == "monitoring.coreos.com/v1", f"[{name}] ServiceMonitor apiVersion")
        sel = sm["spec"]["selector"]["matchLabels"]
        targets = [s for s in services if selector_matches(sel, s["metadata"].get("labels") or {})]
        f.check(len(targets) == 1 and targets[0]["metadata"]["name"].endswith("-admin"),
                f"[{name}] ServiceMonitor must select exactly the admin Service, selects "
                f"{[t['metadata']['name'] for t in targets]}")
        for ep in sm["spec"]["endpoints"]:
            f.check(ep.get("port") == "admin" and ep.get("path", "/metrics") == "/metrics",
                    f"[{name}] ServiceMonitor endpoint {ep} is not admin /metrics")
            for k in ("interval", "scrapeTimeout"):
                if k in ep:
                    f.check(bool(re.fullmatch(r"[0-9]+(ms|s|m|h)", str(ep[k]))), f"[{name}] ServiceMonitor {k}")
    for pr in by_kind(docs, "PrometheusRule"):
        f.check(pr["apiVersion"] == "monitoring.coreos.com/v1", f"[{name}] PrometheusRule apiVersion")
        groups = pr["spec"]["groups"]
        names = [g.get("name") for g in groups]
        f.check(len(names) == len(set(names)), f"[{name}] PrometheusRule has duplicate group names {names}")
        for g in groups:
            for r in g.get("rules", []):
                f.check(bool(r.get("expr")) and (("alert" in r) != ("record" in r)),
                        f"[{name}] PrometheusRule group {g.get('name')}: malformed rule {r}")
    for cm in by_kind(docs, "ConfigMap"):
        if cm["metadata"]["name"].endswith("-dashboard"):
            want = (values.get("grafanaDashboard") or {}).get("labels", {"grafana_dashboard": "1"}) or {}
            f.check(all(cm["metadata"]["labels"].get(k) == v for k, v in want.items()),
                    f"[{name}] dashboard ConfigMap lacks the labels {want}")
            f.check(json.loads(cm["data"]["hookbus.json"]) == json.loads((DEPLOY / "grafana" / "hookbus.json").read_text()),
                    f"[{name}] dashboard ConfigMap differs from deploy/grafana/hookbus.json")


SENSITIVE_PROPERTY = re.compile(r"(password|secret|sasl\.jaas|oauthbearer\.config|private|\.pem$|key\.pem)", re.I)
REFERENCE = re.compile(r"^\$\{[^}]+\}$")


def config_strings(cfg: Any, path: str = "") -> list[tuple[str, str]]:
    """(dotted key, value) of every string in a parsed config.toml."""
    if isinstance(cfg, dict):
        return [x for k, v in cfg.items() for x in config_strings(v, f"{path}.{k}" if path else k)]
    if isinstance(cfg, list):
        return [x for i, v in enumerate(cfg) for x in config_strings(v, f"{path}[{i}]")]
    return [(path, cfg)] if isinstance(cfg, str) else []


def env_references(cfg: dict[str, Any]) -> set[str]:
    """Names of the ${VAR} references in config.toml's values (${file:...} excluded)."""
    return {m for _, s in config_strings(cfg) for m in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", s)}


def secret_values(values: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, value) of every credential the values carry, literal ones only."""
    out: list[tuple[str, str]] = []
    sec = values.get("secret", {}) or {}
    for k in ("authToken", "natsPassword", "natsToken"):  # a user name is no secret
        if sec.get(k):
            out.append((f"secret.{k}", str(sec[k])))
    for k, v in (sec.get("env") or {}).items():
        out.append((f"secret.env.{k}", str(v)))
    for k, v in ((values.get("secretFiles") or {}).get("files") or {}).items():
        out.append((f"secretFiles.files.{k}", str(v)))
    cfg = values.get("config", {}) or {}
    for k, v in ((cfg.get("kafka") or {}).get("properties") or {}).items():
        if SENSITIVE_PROPERTY.search(k) and not REFERENCE.match(str(v)):
            out.append((f"config.kafka.properties.{k}", str(v)))
    nats = cfg.get("nats") or {}
    if nats.get("token") and not REFERENCE.match(str(nats["token"])):
        out.append(("config.nats.token", str(nats["token"])))
    for i, tok in enumerate((cfg.get("auth") or {}).get("tokens") or []):
        if not REFERENCE.match(str(tok)):
            out.append((f"config.auth.tokens[{i}]", str(tok)))
    shared = str((cfg.get("dedup") or {}).get("shared") or "")
    if re.match(r"^rediss?://[^/@]*:[^/@]+@", shared):
        out.append(("config.dedup.shared (password in the URL)", shared))
    store = str((cfg.get("roster") or {}).get("store") or "")
    if re.match(r"^rediss?://[^/@]*:[^/@]+@", store):
        out.append(("config.roster.store (password in the URL)", store))
    key = ((values.get("roster") or {}).get("pubnubSecretKey") or {}).get("value")
    if key:
        out.append(("roster.pubnubSecretKey.value", str(key)))
    return [(w, v) for w, v in out if len(v) >= 4]


def check_secrets(f: Failures, name: str, values: dict[str, Any], docs: list[tuple[str, dict]]) -> None:
    """Credentials live in Secrets and reach the pod as env or files; none sits in any
    other object (ConfigMap, pod spec, annotations...)."""
    for where, value in secret_values(values):
        for _, d in docs:
            if d.get("kind") == "Secret":
                continue
            blob = json.dumps(d)
            if value in blob or (len(value) > 40 and value.strip().splitlines()[0] in blob):
                f.fail(f"[{name}] {d['kind']}/{d['metadata']['name']} holds the value of {where} (only Secrets may)")
    cfg_obj = next((d for _, d in docs if d.get("kind") in ("ConfigMap", "Secret")
                    and "config.toml" in (d.get("data") or d.get("stringData") or {})), None)
    if cfg_obj is not None and cfg_obj["kind"] == "ConfigMap":
        for k, v in (((values.get("config") or {}).get("kafka") or {}).get("properties") or {}).items():
            if SENSITIVE_PROPERTY.search(k):
                f.check(REFERENCE.match(str(v)) is not None,
                        f"[{name}] config.kafka.properties.{k} is a literal in a ConfigMap: reference it as \"${{VAR}}\" "
                        "(secret.existingSecret / secret.env) or set configAsSecret")
    wl = bridge_workload(docs)
    c = wl["spec"]["template"]["spec"]["containers"][0]
    refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
    sec = values.get("secret", {}) or {}
    secrets = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}
    if sec.get("existingSecret"):
        f.check(refs == [sec["existingSecret"]], f"[{name}] envFrom does not use secret.existingSecret")
        f.check(sec["existingSecret"] not in secrets, f"[{name}] the chart renders the existing Secret itself")
        text = (cfg_obj.get("data") or cfg_obj.get("stringData") or {}).get("config.toml", "") if cfg_obj else ""
        env_refs = sorted(env_references(tomllib.loads(text))) if text else []
        if cfg_obj is not None and cfg_obj["kind"] == "ConfigMap" and env_refs:
            print(f"  ok   [{name}] existingSecret: the ConfigMap holds only references ({', '.join('${' + r + '}' for r in env_refs)}),"
                  " no secret value outside a Secret")
    elif any(sec.get(k) for k in ("authToken", "natsUser", "natsPassword", "natsToken", "env")):
        if f.check(len(refs) == 1 and refs[0] in secrets, f"[{name}] envFrom does not reference the chart Secret"):
            keys = set(secrets[refs[0]].get("data", {}))
            for key, env in (("authToken", "HOOKBUS_AUTH_TOKEN"), ("natsUser", "HOOKBUS_NATS_USER"),
                             ("natsPassword", "HOOKBUS_NATS_PASSWORD"), ("natsToken", "HOOKBUS_NATS_TOKEN")):
                f.check(not sec.get(key) or env in keys, f"[{name}] Secret lacks {env}")
            for env in sec.get("env") or {}:
                f.check(env in keys, f"[{name}] Secret lacks secret.env.{env}")
    else:
        f.check(not refs, f"[{name}] envFrom references a Secret although none is configured")


QUANTITY = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
MIB = 2**20


def quantity_bytes(q: Any) -> int:
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?", str(q).strip())
    if not m:
        raise ValueError(f"not a quantity: {q!r}")
    return int(float(m.group(1)) * QUANTITY[m.group(2) or ""])


def spool_budget(cfg: dict[str, Any]) -> int:
    s = cfg["spool"]
    return s["max_bytes"] + s.get("segment_bytes", 64 * MIB) + s.get("dead_letter_max_bytes", 100 * MIB)


def merged(values: dict[str, Any]) -> dict[str, Any]:
    """values.yaml with these values merged over it (as Helm does, nulls delete)."""
    def merge(a: Any, b: Any) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            out = dict(a)
            for k, v in b.items():
                if v is None:
                    out[k] = None
                else:
                    out[k] = merge(a.get(k), v)
            return out
        return copy.deepcopy(b)
    return merge(yaml.safe_load((CHART / "values.yaml").read_text()), values)


def check_guard_rails(f: Failures, name: str, values: dict[str, Any], docs: list[tuple[str, dict]],
                      cfg: dict[str, Any]) -> None:
    """The chart's guard rails and defaults, on a rendering that passed."""
    v = merged(values)
    dns1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
    for _, d in docs:
        md = d.get("metadata", {})
        if d.get("kind") == "Service":
            f.check(len(md["name"]) <= 63 and dns1035.fullmatch(md["name"]) is not None,
                    f"[{name}] Service name {md['name']!r} is not a DNS label of at most 63 characters")
        for k, lv in (md.get("labels") or {}).items():
            f.check(len(str(lv)) <= 63, f"[{name}] {d['kind']}/{md.get('name')} label {k} longer than 63")
    wl = bridge_workload(docs)
    spec = wl["spec"]["template"]["spec"]
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        paths = [m["mountPath"] for m in c.get("volumeMounts", [])]
        f.check(len(paths) == len(set(paths)), f"[{name}] container {c['name']} mounts a path twice: {sorted(paths)}")
    hb = next(c for c in spec["containers"] if c["name"] == "hookbus")

    # The spool fits its volume; an emptyDir on node disk is requested as ephemeral storage.
    need = spool_budget(cfg)
    if wl["kind"] == "StatefulSet":
        size = wl["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        f.check(need <= quantity_bytes(size), f"[{name}] spool budget {need} > PVC size {size}")
    else:
        vol = next(x for x in spec["volumes"] if x["name"] == "spool")["emptyDir"] or {}
        if vol.get("sizeLimit"):
            f.check(need <= quantity_bytes(vol["sizeLimit"]), f"[{name}] spool budget {need} > sizeLimit {vol['sizeLimit']}")
        req = ((hb.get("resources") or {}).get("requests") or {}).get("ephemeral-storage")
        user = (((values.get("resources") or {}).get("requests") or {}).get("ephemeral-storage"))
        if vol.get("medium") != "Memory" and v["spoolVolume"].get("requestEphemeralStorage") and not user:
            want = f"{-(-(need + 64 * MIB) // MIB)}Mi"
            f.check(req == want, f"[{name}] ephemeral-storage request {req!r}, expected {want} (spool budget + /tmp)")
        elif user:
            f.check(str(req) == str(user), f"[{name}] the ephemeral-storage request of resources was overridden")
        else:
            f.check(req is None, f"[{name}] ephemeral-storage requested although not asked for: {req}")

    # Scheduling defaults: soft anti-affinity per node, spread over zones.
    aff = spec.get("affinity") or {}
    if not v.get("affinity") and v.get("podAntiAffinityPreset") != "none":
        anti = aff.get("podAntiAffinity") or {}
        key = "requiredDuringSchedulingIgnoredDuringExecution" if v["podAntiAffinityPreset"] == "hard" \
            else "preferredDuringSchedulingIgnoredDuringExecution"
        f.check(key in anti, f"[{name}] no {v['podAntiAffinityPreset']} pod anti-affinity by default: {aff}")
    tsc = spec.get("topologySpreadConstraints") or []
    if not v.get("topologySpreadConstraints") and v.get("zoneSpread"):
        f.check(any(c.get("topologyKey") == "topology.kubernetes.io/zone" and c.get("whenUnsatisfiable") == "ScheduleAnyway"
                    for c in tsc), f"[{name}] no best-effort zone spread by default")
    for c in tsc:
        f.check(selector_matches((c.get("labelSelector") or {}).get("matchLabels") or {},
                                 wl["spec"]["template"]["metadata"]["labels"]),
                f"[{name}] a topology spread constraint does not select the pods")

    # ingress-nginx: body size from max_body_bytes, no access log (the token is in the query).
    for ing in by_kind(docs, "Ingress"):
        ann = ing["metadata"].get("annotations") or {}
        cls = ing["spec"].get("ingressClassName") or ann.get("kubernetes.io/ingress.class") or ""
        if "nginx" in cls:
            body = ann.get("nginx.ingress.kubernetes.io/proxy-body-size", "")
            m = re.fullmatch(r"([0-9]+)([kKmMgG]?)", body)
            size = int(m.group(1)) * {"": 1, "k": 1024, "m": MIB, "g": 2**30}[m.group(2).lower()] if m else 0
            f.check(size >= cfg["http"]["max_body_bytes"],
                    f"[{name}] nginx proxy-body-size {body!r} below http.max_body_bytes {cfg['http']['max_body_bytes']}")
            user = (values.get("ingress") or {}).get("annotations") or {}
            f.check(ann.get("nginx.ingress.kubernetes.io/enable-access-log")
                    == user.get("nginx.ingress.kubernetes.io/enable-access-log", "false"),
                    f"[{name}] nginx access log not turned off for the webhook path (the token is in the query)")

    # NetworkPolicy: Prometheus' namespace may scrape the admin port.
    for np_ in by_kind(docs, "NetworkPolicy"):
        sel = (v["networkPolicy"].get("metricsFrom") or {}).get("namespaceSelector")
        admin_rules = [r for r in np_["spec"]["ingress"] if any(p["port"] == "admin" for p in r.get("ports", []))]
        peers = [p for r in admin_rules for p in r.get("from", [])]
        if sel:
            f.check(any(p.get("namespaceSelector") == sel for p in peers),
                    f"[{name}] NetworkPolicy does not let {sel} scrape the admin port")

    # helm test: a hook pod that calls the release's own Services.
    tests = [d for _, d in docs if d.get("kind") == "Pod"
             and (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"]
    if v["helmTest"]["enabled"]:
        services = {s["metadata"]["name"] for s in by_kind(docs, "Service")}
        if f.check(len(tests) == 1, f"[{name}] expected one helm test pod, got {len(tests)}"):
            env = {e["name"]: e.get("value", "") for e in tests[0]["spec"]["containers"][0].get("env", [])}
            for var in ("ADMIN_URL", "WEBHOOK_URL"):
                host = re.sub(r"^http://([^:/]+).*", r"\1", env.get(var, ""))
                f.check(host in services, f"[{name}] helm test {var} {env.get(var)!r} names no Service of the release")
            f.check(v["helmTest"]["channel"] in env.get("EVENT_PREFIX", ""), f"[{name}] helm test event lacks its channel")
    else:
        f.check(not tests, f"[{name}] helm test pod rendered although helmTest.enabled is false")


TOKEN = "HOOKBUS_AUTH_TOKEN"
GENERATED_TOKEN = re.compile(r"[A-Za-z0-9]{48}")


def token_source(values: dict[str, Any], existing: dict[str, str] | None = None) -> str:
    """Where the pods' HOOKBUS_AUTH_TOKEN should come from for these values (the chart's
    hookbus.authTokenSource): authToken, env, extraEnv, existingSecret, anonymous or
    generated. existing: the data of secret.existingSecret as the cluster has it (None: it
    cannot be looked up, as offline, and is assumed to hold the token)."""
    v = merged(values)
    sec = v["secret"]
    if sec.get("authToken"):
        return "authToken"
    if TOKEN in (sec.get("env") or {}):
        return "env"
    if any(e.get("name") == TOKEN for e in v.get("extraEnv") or []):
        return "extraEnv"
    if sec.get("existingSecret") and (existing is None or existing.get(TOKEN)):
        return "existingSecret"
    if v["config"]["auth"].get("allow_anonymous"):
        return "anonymous"
    return "generated"


def token_route(container: dict[str, Any], secrets: dict[str, dict]) -> tuple[str, Any] | None:
    """How a container gets HOOKBUS_AUTH_TOKEN: ("env", the EnvVar) (env wins over envFrom),
    ("envFrom", Secret name) from a rendered Secret holding it or from a Secret the chart does
    not render (an existing one), or None."""
    for e in container.get("env") or []:
        if e.get("name") == TOKEN:
            return ("env", e)
    for ef in container.get("envFrom") or []:
        ref = (ef.get("secretRef") or {}).get("name")
        if ref and (ref not in secrets or TOKEN in (secrets[ref].get("data") or {})):
            return ("envFrom", ref)
    return None


def check_auth(f: Failures, name: str, values: dict[str, Any], docs: list[tuple[str, dict]],
               cfg: dict[str, Any], notes: str, source: str) -> None:
    """The webhook token reaches hookbus (and the helm test pod) from the expected source;
    with none named the chart generates one; none only with allow_anonymous."""
    import base64  # noqa: PLC0415

    v = merged(values)
    wl = bridge_workload(docs)
    full = wl["metadata"]["name"]
    auth_name = f"{full[:58].rstrip('-')}-auth"
    secrets = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}
    hb = next(c for c in wl["spec"]["template"]["spec"]["containers"] if c["name"] == "hookbus")
    got = token_route(hb, secrets)
    anonymous = bool(v["config"]["auth"].get("allow_anonymous"))
    f.check(cfg["auth"].get("allow_anonymous") is anonymous,
            f"[{name}] config.toml auth.allow_anonymous = {cfg['auth'].get('allow_anonymous')!r}, values say {anonymous}")
    read = "kubectl get secret -n {ns} {secret} -o jsonpath='{{.data.HOOKBUS_AUTH_TOKEN}}' | base64 -d"
    ns = wl["metadata"].get("namespace", NAMESPACE)
    if source == "generated":
        gen = secrets.get(auth_name)
        if f.check(gen is not None, f"[{name}] no token named: expected the generated Secret {auth_name}"):
            token = base64.b64decode((gen.get("data") or {}).get(TOKEN, "")).decode()
            f.check(GENERATED_TOKEN.fullmatch(token) is not None,
                    f"[{name}] generated {TOKEN} is {len(token)} characters, not 48 alphanumerics")
            f.check((gen["metadata"].get("annotations") or {}).get("helm.sh/resource-policy") == "keep",
                    f"[{name}] Secret {auth_name} lacks helm.sh/resource-policy: keep")
            leaks = [f"{d['kind']}/{d['metadata']['name']}" for _, d in docs
                     if d.get("kind") != "Secret" and token and token in json.dumps(d)]
            f.check(not leaks and token not in notes, f"[{name}] the generated token appears in {leaks or 'NOTES.txt'}")
        want: Any = ("env", {"name": TOKEN, "valueFrom": {"secretKeyRef": {"name": auth_name, "key": TOKEN}}})
        f.check(got == want, f"[{name}] hookbus gets {TOKEN} as {got}, expected {want}")
        f.check(read.format(ns=ns, secret=auth_name) in notes, f"[{name}] NOTES.txt does not show how to read the generated token")
    else:
        f.check(auth_name not in secrets, f"[{name}] token source {source}, yet the chart generated Secret {auth_name}")
        if source in ("authToken", "env"):
            expected = v["secret"]["authToken"] if source == "authToken" else str(v["secret"]["env"][TOKEN])
            data = (secrets.get(full) or {}).get("data") or {}
            f.check(base64.b64decode(data.get(TOKEN, "")).decode() == expected,
                    f"[{name}] Secret {full} does not hold the {source} token as given")
            f.check(got == ("envFrom", full), f"[{name}] hookbus gets {TOKEN} as {got}, expected envFrom {full}")
            f.check(read.format(ns=ns, secret=full) in notes, f"[{name}] NOTES.txt does not show how to read the token")
        elif source == "existingSecret":
            ex = v["secret"]["existingSecret"]
            f.check(got == ("envFrom", ex), f"[{name}] hookbus gets {TOKEN} as {got}, expected envFrom {ex}")
            f.check(read.format(ns=ns, secret=ex) in notes, f"[{name}] NOTES.txt does not show how to read the token")
        elif source == "extraEnv":
            entry = next(e for e in v["extraEnv"] if e.get("name") == TOKEN)
            f.check(got == ("env", entry), f"[{name}] hookbus gets {TOKEN} as {got}, expected the extraEnv entry")
        elif source == "anonymous":
            f.check(got is None, f"[{name}] allow_anonymous without a token, yet hookbus gets {TOKEN} as {got}")
            f.check("WARNING" in notes and "allow_anonymous" in notes and "?token=" not in notes,
                    f"[{name}] NOTES.txt does not warn that the endpoint is open")
    if source != "anonymous":
        f.check("?token=" in notes, f"[{name}] NOTES.txt does not say to give PubNub the token (?token=)")
    # The helm test pod sends the token hookbus expects, got the same way.
    tests = [d for _, d in docs if d.get("kind") == "Pod"
             and (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"]
    for pod in tests:
        c = pod["spec"]["containers"][0]
        # The token alone: hookbus's envFrom Secret holds broker passwords too.
        want_test = got
        if got and got[0] == "envFrom":
            ref = {"name": got[1], "key": TOKEN}
            if source == "existingSecret":
                ref["optional"] = True
            want_test = ("env", {"name": TOKEN, "valueFrom": {"secretKeyRef": ref}})
        f.check(not c.get("envFrom"), f"[{name}] the helm test pod mounts whole Secrets: {c.get('envFrom')}")
        f.check(token_route(c, secrets) == want_test,
                f"[{name}] the helm test pod gets {TOKEN} as {token_route(c, secrets)}, expected {want_test}")
        script = " ".join(c.get("args") or [])
        f.check('$TOKEN_HEADER: $HOOKBUS_AUTH_TOKEN' in script, f"[{name}] the helm test does not send the token header")


# Dead-letter keys: chart value -> config.toml [section] key, passed through as given.
DEAD_LETTER_KEYS = [("nats", "dead_letter_stream"), ("nats", "dead_letter_max_bytes"), ("nats", "dead_letter_max_age"),
                    ("routing", "dead_letter_budget_bytes"), ("routing", "dead_letter_budget_window")]


def roster_sm_enabled(v: dict[str, Any]) -> bool:
    """roster.serviceMonitor.enabled, null: as metrics.serviceMonitor.enabled (v: merged values)."""
    own = (v["roster"].get("serviceMonitor") or {}).get("enabled")
    return bool(v["metrics"]["serviceMonitor"]["enabled"] if own is None else own)


def check_roster(f: Failures, name: str, values: dict[str, Any], docs: list[tuple[str, dict]],
                 cfg: dict[str, Any], notes: str = "") -> None:
    """The presence roster (roster.enabled): its own Deployment running `hookbus roster` on
    the release's config.toml, Secrets and files, probes and metrics on the roster port, no
    spool; a Service, ServiceMonitor and PDB that select its pods only, and no selector of the
    bridge that does; [roster] rendered from config.roster, the PubNub secret key from a Secret
    into the roster container alone. Without roster.enabled: no roster object, no [roster]."""
    import base64  # noqa: PLC0415

    v = merged(values)
    r = v["roster"]
    objs = [d for _, d in docs if is_roster(d)]
    if not r["enabled"]:
        f.check(not objs, f"[{name}] roster.enabled false, yet roster objects rendered: "
                          f"{[d['kind'] + '/' + d['metadata']['name'] for d in objs]}")
        f.check("roster" not in cfg, f"[{name}] roster.enabled false, yet config.toml has [roster]")
        return
    before = len(f.items)
    deps = [d for d in objs if d["kind"] == "Deployment"]
    if not f.check(len(deps) == 1 and not any(d["kind"] == "StatefulSet" for d in objs),
                   f"[{name}] expected one roster Deployment, got {[d['kind'] for d in objs]}"):
        return
    dep = deps[0]
    pod, spec = dep["spec"]["template"], dep["spec"]["template"]["spec"]
    labels = pod["metadata"].get("labels") or {}
    full = bridge_workload(docs)["metadata"]["name"]
    want_name = f"{full[:56].rstrip('-')}-roster"
    f.check(dep["metadata"]["name"] == want_name and len(want_name) <= 63,
            f"[{name}] roster Deployment {dep['metadata']['name']!r}, expected {want_name!r}")
    f.check(selector_matches(dep["spec"]["selector"]["matchLabels"], labels),
            f"[{name}] roster Deployment selector does not match its pod labels")
    f.check(dep["spec"].get("replicas") == r["replicaCount"], f"[{name}] roster replicas {dep['spec'].get('replicas')}")

    # Apart from the bridge: no selector of one selects the other's pods.
    bridge = bridge_workload(docs)
    bridge_labels = bridge["spec"]["template"]["metadata"].get("labels") or {}
    f.check(not selector_matches(dep["spec"]["selector"]["matchLabels"], bridge_labels),
            f"[{name}] the roster's selector selects the bridge's pods")
    selectors = [(f"{bridge['kind']}/{bridge['metadata']['name']}", bridge["spec"]["selector"]["matchLabels"])]
    selectors += [(f"Service/{s['metadata']['name']}", s["spec"].get("selector") or {}) for s in bridge_kind(docs, "Service")]
    selectors += [(f"PodDisruptionBudget/{x['metadata']['name']}", x["spec"]["selector"]["matchLabels"])
                  for x in bridge_kind(docs, "PodDisruptionBudget")]
    selectors += [(f"NetworkPolicy/{x['metadata']['name']}", x["spec"]["podSelector"].get("matchLabels") or {})
                  for x in bridge_kind(docs, "NetworkPolicy")]
    for what, sel in selectors:
        f.check(not selector_matches(sel, labels), f"[{name}] the bridge's {what} selects the roster pods")

    c = next((c for c in spec["containers"] if c["name"] == "roster"), None)
    if not f.check(c is not None and len(spec["containers"]) == 1, f"[{name}] roster pod: expected one container named roster"):
        return
    f.check(c.get("command") == ["/usr/local/bin/hookbus"] and c.get("args") == ["roster", "--config", "/etc/hookbus/config.toml"],
            f"[{name}] roster container does not run /usr/local/bin/hookbus roster --config /etc/hookbus/config.toml: "
            f"{c.get('command')} {c.get('args')}")
    ports = {x["name"]: x["containerPort"] for x in c.get("ports", [])}
    f.check(ports == {"roster": r["containerPort"]}, f"[{name}] roster container ports {ports}, expected roster={r['containerPort']}")

    # config.toml: [roster] listen is the container port; the keys are config.roster's.
    rcfg = cfg.get("roster")
    if f.check(isinstance(rcfg, dict), f"[{name}] roster.enabled but config.toml has no [roster]"):
        f.check(str(rcfg.get("listen", "")).rsplit(":", 1)[-1] == str(r["containerPort"]),
                f"[{name}] [roster] listen {rcfg.get('listen')!r} != containerPort roster={r['containerPort']}")
        want = v["config"].get("roster") or {}
        for key in ROSTER_KEYS:
            if key in ("listen", "here_now"):
                continue
            f.check(rcfg.get(key) == want.get(key), f"[{name}] config.roster.{key} = {want.get(key)!r} rendered as {rcfg.get(key)!r}")
        hn, want_hn = rcfg.get("here_now") or {}, want.get("here_now") or {}
        for key in HERE_NOW_KEYS:
            f.check(hn.get(key) == want_hn.get(key),
                    f"[{name}] config.roster.here_now.{key} = {want_hn.get(key)!r} rendered as {hn.get(key)!r}")
        f.check("secret_key" not in hn, f"[{name}] [roster.here_now] secret_key is in config.toml")
        for key, section in (("tombstone_ttl", rcfg), ("interval", hn), ("timeout", hn)):
            if key in section:
                try:
                    duration_seconds(section[key])
                except ValueError as e:
                    f.fail(f"[{name}] roster {key}: {e}")

    # Probes on the roster port: liveness /healthz, readiness /readyz (startup /healthz).
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        if probe == "startupProbe" and not r["probes"]["startup"]["enabled"]:
            f.check(probe not in c, f"[{name}] roster startupProbe rendered although disabled")
            continue
        get = (c.get(probe) or {}).get("httpGet") or {}
        f.check(get.get("path") == path and get.get("port") in ("roster", r["containerPort"]) and not get.get("httpHeaders"),
                f"[{name}] roster {probe} is not GET {path} on the roster port: {get}")

    # No spool: nothing mounted at spool.dir, no spool volume, no claim.
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    vols = {x["name"]: x for x in spec.get("volumes", [])}
    f.check(cfg["spool"]["dir"] not in mounts and "spool" not in vols
            and not any("persistentVolumeClaim" in x for x in vols.values()) and "volumeClaimTemplates" not in dep["spec"],
            f"[{name}] the roster mounts a spool: {mounts}")
    # The bridge's config.toml object, secret files and environment.
    bspec = bridge["spec"]["template"]["spec"]
    bvols = {x["name"]: x for x in bspec.get("volumes", [])}
    hb = next(x for x in bspec["containers"] if x["name"] == "hookbus")
    f.check(mounts.get("/etc/hookbus/config.toml") == "config" and vols.get("config") == bvols.get("config"),
            f"[{name}] the roster does not mount the bridge's config.toml ({vols.get('config')} vs {bvols.get('config')})")
    f.check(vols.get("secret-files") == bvols.get("secret-files"), f"[{name}] the roster's secret files differ from the bridge's")
    if "secret-files" in vols:
        f.check(v["secretFiles"]["mountPath"] in mounts, f"[{name}] the roster does not mount secretFiles at its mountPath")
    f.check(c.get("envFrom") == hb.get("envFrom"), f"[{name}] roster envFrom {c.get('envFrom')} != the bridge's {hb.get('envFrom')}")
    secrets = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}
    f.check(token_route(c, secrets) == token_route(hb, secrets),
            f"[{name}] the roster gets {TOKEN} as {token_route(c, secrets)}, the bridge as {token_route(hb, secrets)}")
    env = {e["name"]: e for e in c.get("env") or []}
    f.check(len(env) == len(c.get("env") or []), f"[{name}] duplicate env names in the roster container")
    benv = {e["name"] for e in hb.get("env") or []}
    for e in hb.get("env") or []:
        f.check(env.get(e["name"]) == e, f"[{name}] roster env {e['name']} differs from the bridge's: {env.get(e['name'])}")
    key = r["pubnubSecretKey"]
    extra = any(e.get("name") == PUBNUB_SECRET for e in v.get("extraEnv") or [])
    if extra:
        pass
    elif key.get("value"):
        ref = {"name": want_name, "key": PUBNUB_SECRET}
        f.check(env.get(PUBNUB_SECRET) == {"name": PUBNUB_SECRET, "valueFrom": {"secretKeyRef": ref}},
                f"[{name}] {PUBNUB_SECRET} is {env.get(PUBNUB_SECRET)}, expected secretKeyRef {ref}")
        data = (secrets.get(want_name) or {}).get("data") or {}
        f.check(base64_text(data.get(PUBNUB_SECRET, "")) == key["value"], f"[{name}] Secret {want_name} does not hold roster.pubnubSecretKey.value")
    elif key.get("existingSecret"):
        ref = {"name": key["existingSecret"], "key": key.get("key") or PUBNUB_SECRET}
        f.check(env.get(PUBNUB_SECRET) == {"name": PUBNUB_SECRET, "valueFrom": {"secretKeyRef": ref}},
                f"[{name}] {PUBNUB_SECRET} is {env.get(PUBNUB_SECRET)}, expected secretKeyRef {ref}")
        f.check(want_name not in secrets, f"[{name}] the chart renders Secret {want_name} although the key is in an existing Secret")
    else:
        f.check(PUBNUB_SECRET not in env and want_name not in secrets, f"[{name}] {PUBNUB_SECRET} set although no key is configured")
    f.check(PUBNUB_SECRET not in benv or extra, f"[{name}] the bridge gets {PUBNUB_SECRET}")

    # Security, resources, grace, roll on config change.
    psc, sc = spec.get("securityContext") or {}, c.get("securityContext") or {}
    f.check((sc.get("runAsNonRoot") or psc.get("runAsNonRoot")) and (sc.get("runAsUser") or psc.get("runAsUser")) not in (None, 0)
            and sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
            and "ALL" in ((sc.get("capabilities") or {}).get("drop") or []),
            f"[{name}] roster container security context {sc}")
    f.check("/tmp" in mounts, f"[{name}] the roster has no writable /tmp under its read-only root filesystem")
    f.check((c.get("resources") or {}).get("requests"), f"[{name}] roster container has no resource requests")
    grace, pre = duration_seconds(cfg["shutdown"]["grace"]), prestop_seconds(c)
    f.check(pre is not None and spec.get("terminationGracePeriodSeconds", 30) > grace + pre,
            f"[{name}] roster terminationGracePeriodSeconds {spec.get('terminationGracePeriodSeconds')} <= grace {grace} + preStop {pre}")
    f.check("checksum/config" in (pod["metadata"].get("annotations") or {}), f"[{name}] roster pod lacks checksum/config")

    # Service, ServiceMonitor, PDB: the roster's pods only.
    svcs = [s for s in by_kind(docs, "Service") if is_roster(s)]
    if f.check(len(svcs) == 1, f"[{name}] expected one roster Service, got {len(svcs)}"):
        s = svcs[0]
        f.check(s["metadata"]["name"] == want_name and s["spec"].get("type", "ClusterIP") == "ClusterIP",
                f"[{name}] roster Service {s['metadata']['name']} ({s['spec'].get('type')})")
        f.check(selector_matches(s["spec"].get("selector") or {}, labels), f"[{name}] the roster Service does not select the roster pods")
        f.check(not selector_matches(s["spec"].get("selector") or {}, bridge_labels), f"[{name}] the roster Service selects the bridge's pods")
        f.check([(x["name"], x["port"], x["targetPort"]) for x in s["spec"]["ports"]] == [("roster", r["service"]["port"], "roster")],
                f"[{name}] roster Service ports {s['spec']['ports']}")
    sms = [x for x in by_kind(docs, "ServiceMonitor") if is_roster(x)]
    if f.check(len(sms) == int(roster_sm_enabled(v)),
               f"[{name}] {len(sms)} roster ServiceMonitor(s), roster.serviceMonitor.enabled (or metrics') says {roster_sm_enabled(v)}"):
        for sm in sms:
            sel = sm["spec"]["selector"]["matchLabels"]
            targets = [x["metadata"]["name"] for x in by_kind(docs, "Service") if selector_matches(sel, x["metadata"].get("labels") or {})]
            f.check(targets == [want_name], f"[{name}] the roster ServiceMonitor selects {targets}, not [{want_name}]")
            eps = sm["spec"]["endpoints"]
            f.check(len(eps) == 1 and eps[0].get("port") == "roster" and eps[0].get("path") == "/metrics",
                    f"[{name}] roster ServiceMonitor endpoints {eps} are not roster /metrics")
            rl = (eps[0].get("relabelings") or [{}])[0] if eps else {}
            f.check(rl == {"action": "replace", "targetLabel": "release", "replacement": RELEASE},
                    f"[{name}] roster ServiceMonitor does not label its targets release={RELEASE}")
            job = (svcs[0]["metadata"].get("labels") or {}).get(sm["spec"].get("jobLabel", "")) if svcs else None
            f.check(job is not None and job.endswith("-roster"), f"[{name}] roster targets get job {job!r}, not <chart name>-roster")
    pdbs = [x for x in by_kind(docs, "PodDisruptionBudget") if is_roster(x)]
    if f.check(len(pdbs) == int(bool(r["podDisruptionBudget"]["enabled"])), f"[{name}] {len(pdbs)} roster PDB(s)"):
        for x in pdbs:
            f.check(selector_matches(x["spec"]["selector"]["matchLabels"], labels), f"[{name}] the roster PDB does not select the roster pods")
    if notes:
        f.check(f"deployment/{want_name}" in notes and want_name in notes, f"[{name}] NOTES.txt does not show the roster")
    if len(f.items) == before:
        print(f"  ok   [{name}] roster: Deployment {want_name} ({r['replicaCount']} replica(s)) runs `hookbus roster` on the "
              f"bridge's config.toml, Secrets and files, port roster {r['containerPort']} (probes, Service, "
              f"{'ServiceMonitor, ' if sms else ''}{'PDB, ' if pdbs else ''}no spool), selectors apart from the bridge's")


def check_dead_letters(f: Failures, name: str, cfg: dict[str, Any], values: dict[str, Any] | None) -> None:
    """Dead letters have their own JetStream stream, sized on its own; the chart passes the
    dead-letter keys through (values None: the kustomize base, whose keys are checked only)."""
    nats = cfg.get("nats", {})
    f.check(isinstance(nats.get("dead_letter_stream"), str) and nats["dead_letter_stream"] != nats.get("stream"),
            f"[{name}] config.toml nats.dead_letter_stream {nats.get('dead_letter_stream')!r} is missing or the events' stream")
    f.check(isinstance(nats.get("dead_letter_max_bytes"), int) and nats["dead_letter_max_bytes"] > 0,
            f"[{name}] config.toml nats.dead_letter_max_bytes {nats.get('dead_letter_max_bytes')!r}: the dead-letter stream needs a size limit")
    try:
        duration_seconds(str(nats.get("dead_letter_max_age")))
    except ValueError as e:
        f.fail(f"[{name}] config.toml nats.dead_letter_max_age: {e}")
    if values is None:
        return
    v = merged(values)["config"]
    for section, key in DEAD_LETTER_KEYS:
        want = v[section].get(key)
        got = cfg.get(section, {}).get(key)
        f.check(got == want, f"[{name}] config.{section}.{key} = {want!r} rendered as {got!r}")


# (values, expected token source, what it shows): each rendered offline.
AUTH_CASES: list[tuple[dict[str, Any], str, str]] = [
    ({}, "generated", "default values: a generated token"),
    ({"config": {"auth": {"allow_anonymous": True}}}, "anonymous", "allow_anonymous: no token generated"),
    ({"secret": {"authToken": "explicit-token-0123456789"}}, "authToken", "an explicit authToken, used as is"),
    ({"secret": {"authToken": "explicit-token-0123456789"}, "config": {"auth": {"allow_anonymous": True}}},
     "authToken", "allow_anonymous with a token: the token stays"),
    ({"secret": {"env": {TOKEN: "env-token-0123456789"}}}, "env", "secret.env.HOOKBUS_AUTH_TOKEN"),
    ({"extraEnv": [{"name": TOKEN, "valueFrom": {"secretKeyRef": {"name": "my-token", "key": "token"}}}]},
     "extraEnv", "an extraEnv entry"),
    ({"secret": {"existingSecret": "hookbus-env"}}, "existingSecret", "an existing Secret (offline: assumed to hold it)"),
    ({"config": {"auth": {"tokens": ["${HOOKBUS_AUTH_TOKEN_NEXT}"]}}, "secret": {"env": {"HOOKBUS_AUTH_TOKEN_NEXT": "next-0123456789"}}},
     "generated", "config.auth.tokens are further tokens: the primary is still generated"),
    ({"fullnameOverride": "h" * 63, "persistence": {"enabled": False}, "replicaCount": 1}, "generated",
     "a 63-character full name: the -auth Secret name still fits"),
]


def check_auth_cases(f: Failures) -> None:
    for vals, source, what in AUTH_CASES:
        label = f"auth: {what}"
        manifests = render(vals)
        docs = docs_of(manifests)
        notes = next((m for t, m in manifests.items() if t.endswith("NOTES.txt")), "")
        _, cfg = config_toml_of(docs)  # type: ignore[misc]
        before = len(f.items)
        f.check(token_source(vals) == source, f"[{label}] token_source() says {token_source(vals)}, the case {source}")
        check_auth(f, label, vals, docs, cfg, notes, source)
        check_secrets(f, label, vals, docs)
        for s in by_kind(docs, "Secret"):
            f.check(len(s["metadata"]["name"]) <= 63, f"[{label}] Secret name {s['metadata']['name']!r} over 63")
        if len(f.items) == before:
            print(f"  ok   [{label}] token from {source}")
    # Offline (no cluster to read the Secret back) every render is a new random token.
    tokens = set()
    for _ in range(2):
        docs = docs_of(render({}))
        s = next(d for d in by_kind(docs, "Secret") if d["metadata"]["name"].endswith("-auth"))
        tokens.add(s["data"][TOKEN])
    f.check(len(tokens) == 2, "two offline renders generated the same token: not random")

    # With a cluster: `lookup` keeps the token across upgrades and reads the existing Secret.
    from fake_kube import FakeKube  # noqa: PLC0415 - sibling module

    kept = "KeptFromTheFirstInstall0123456789abcdefghijklmno"  # 48 alphanumerics, as generated
    secrets = {
        ("upgrade", f"{RELEASE}-auth"): {TOKEN: kept},
        ("no-key", "hookbus-env"): {"KAFKA_SASL_PASSWORD": "x"},
        ("blank-key", "hookbus-env"): {TOKEN: "", "KAFKA_SASL_PASSWORD": "x"},
        ("has-key", "hookbus-env"): {TOKEN: "from-the-existing-secret-0123456789"},
    }
    existing = {"secret": {"existingSecret": "hookbus-env"}}
    h = helm()
    try:
        with FakeKube(secrets) as kube, h.Chart.load(str(CHART)) as chart:
            for ns, vals, upgrade, source, what in (
                    ("upgrade", {}, True, "generated", "upgrade: the generated token is read back, not replaced"),
                    ("fresh", {}, False, "generated", "install: a new token"),
                    ("no-key", existing, False, "generated", "existing Secret without HOOKBUS_AUTH_TOKEN: generated"),
                    ("blank-key", existing, False, "generated", "existing Secret with a blank HOOKBUS_AUTH_TOKEN: generated"),
                    ("has-key", existing, False, "existingSecret", "existing Secret with HOOKBUS_AUTH_TOKEN: used"),
                    ("upgrade", {"config": {"auth": {"allow_anonymous": True}}}, True, "anonymous",
                     "allow_anonymous: no token, not even the kept one")):
                label = f"lookup: {what}"
                manifests = kube.render(chart, vals, name=RELEASE, namespace=ns, upgrade=upgrade)
                docs = [(t, d) for t, d in docs_of(manifests)]
                notes = next((m for t, m in manifests.items() if t.endswith("NOTES.txt")), "")
                _, cfg = config_toml_of(docs)  # type: ignore[misc]
                before = len(f.items)
                f.check(token_source(vals, secrets.get((ns, "hookbus-env"))) == source,
                        f"[{label}] token_source() disagrees with the case")
                check_auth(f, label, vals, docs, cfg, notes, source)
                gen = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}.get(f"{RELEASE}-auth")
                token = base64_text((gen or {}).get("data", {}).get(TOKEN, ""))
                if ns == "upgrade" and source == "generated":
                    f.check(token == kept, f"[{label}] the token {token!r} is not the one in the cluster's Secret {kept!r}")
                elif source == "generated":
                    f.check(token not in (kept, "") and GENERATED_TOKEN.fullmatch(token) is not None,
                            f"[{label}] expected a new generated token, got {token!r}")
                if len(f.items) == before:
                    print(f"  ok   [{label}]")
            f.check(any(r.endswith("/secrets/hookbus-env") for r in kube.requests),
                    "the chart never looked up secret.existingSecret")
    except h.HelmError as e:
        f.fail(f"rendering against the fake API server failed: {' '.join(str(e).split())[:300]}")


def notes_of(manifests: dict[str, str]) -> str:
    return next((m for t, m in manifests.items() if t.endswith("NOTES.txt")), "")


def runbook_section(title: str) -> str:
    """The text of the '## title' section of docs/runbooks.md ('' when there is none)."""
    text = RUNBOOKS.read_text() if RUNBOOKS.exists() else ""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^#{{1,2}} |\Z)", text, re.S | re.M)
    return m.group(1) if m else ""


def check_durability(f: Failures) -> None:
    """The default values keep acknowledged events through scale-in, eviction and node loss:
    a StatefulSet whose claims are retained; the HPA scales that StatefulSet; the retained
    claims of removed pods are drained by the drainJobs the runbooks describe; Kafka topics
    get 3 replicas unless NOTES warns; the ServiceMonitor labels targets with the release."""
    before = len(f.items)
    docs = docs_of(render({}))
    sts = by_kind(docs, "StatefulSet")
    if f.check(len(sts) == 1 and not by_kind(docs, "Deployment"), "[durability] default values render no StatefulSet"):
        pol = sts[0]["spec"].get("persistentVolumeClaimRetentionPolicy") or {}
        f.check(pol == {"whenDeleted": "Retain", "whenScaled": "Retain"},
                f"[durability] default claims not retained on scale-in and delete: {pol}")
        f.check(sts[0]["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "spool",
                "[durability] the spool claim template is not named spool (claims spool-<sts>-<ordinal>)")
    _, cfg = config_toml_of(docs)  # type: ignore[misc]
    f.check(cfg["ack"]["mode"] == "spool", "[durability] default ack mode is not spool")

    # The memory request covers the measured peak with the default dedup set full (157 MiB,
    # docs/runbooks.md#sizing): below it the pod is among the first evicted under pressure.
    hb = next(c for c in pod_of(docs)["spec"]["containers"] if c["name"] == "hookbus")
    req = quantity_bytes(hb["resources"]["requests"]["memory"])
    f.check(req >= 157 * MIB, f"[durability] memory request {hb['resources']['requests']['memory']} below the measured 157 MiB peak")

    # The HPA scales the StatefulSet in: the removed ordinals' claims stay (Retain).
    docs = docs_of(render({"autoscaling": {"enabled": True}}))
    hpa = by_kind(docs, "HorizontalPodAutoscaler")
    f.check(bool(hpa) and hpa[0]["spec"]["scaleTargetRef"]["kind"] == "StatefulSet",
            "[durability] the default HPA does not scale the StatefulSet")

    # Kafka: 3 replicas by default; 1 renders with a NOTES warning; NATS gets no such warning.
    m = render({"config": {"sink": {"kind": "kafka"}}})
    _, cfg = config_toml_of(docs_of(m))  # type: ignore[misc]
    f.check(cfg["kafka"]["replication_factor"] == 3, f"[durability] kafka replication_factor {cfg['kafka']['replication_factor']}, expected 3")
    f.check("replication_factor" not in notes_of(m), "[durability] NOTES warns about replication factor 3")
    m = render({"config": {"sink": {"kind": "kafka"}, "kafka": {"replication_factor": 1}}})
    f.check("WARNING: config.kafka.replication_factor is 1" in notes_of(m),
            "[durability] replication_factor 1 with sink kafka renders without a NOTES warning")
    m = render({"config": {"kafka": {"replication_factor": 1}}})
    f.check("replication_factor" not in notes_of(m), "[durability] NOTES warns about Kafka with sink nats")
    # An acknowledged emptyDir: rendered, and NOTES says what it risks.
    m = render({"persistence": {"enabled": False}, "spoolVolume": {"acknowledgeEventLoss": True}})
    f.check("WARNING: the spool is an emptyDir" in notes_of(m), "[durability] an emptyDir spool renders without a NOTES warning")

    # The ServiceMonitor labels every target with the release (alerts group by it).
    docs = docs_of(render({"metrics": {"serviceMonitor": {"enabled": True, "relabelings": [{"action": "labeldrop", "regex": "x"}]}}}))
    eps = bridge_kind(docs, "ServiceMonitor")[0]["spec"]["endpoints"][0]
    rl = eps.get("relabelings") or []
    f.check(bool(rl) and rl[0] == {"action": "replace", "targetLabel": "release", "replacement": RELEASE}
            and rl[-1] == {"action": "labeldrop", "regex": "x"},
            f"[durability] ServiceMonitor relabelings do not set release={RELEASE} before the user's: {rl}")

    # drainJobs: one Job per retained claim, with the pods' config, Secrets and security.
    claims = [f"spool-{RELEASE}-3", f"spool-{RELEASE}-4"]
    docs = docs_of(render({"drainJobs": {"claims": claims, "timeout": "5m"},
                           "secretFiles": {"existingSecret": "hookbus-tls"}}))
    pod = bridge_workload(docs)["spec"]["template"]["spec"]
    hb = next(c for c in pod["containers"] if c["name"] == "hookbus")
    jobs = by_kind(docs, "Job")
    f.check(sorted(j["metadata"]["annotations"]["hookbus.io/claim"] for j in jobs) == claims,
            f"[drain] expected one Job per claim {claims}, got {[j['metadata']['name'] for j in jobs]}")
    for job in jobs:
        claim = job["metadata"]["annotations"]["hookbus.io/claim"]
        js = job["spec"]["template"]["spec"]
        c = js["containers"][0]
        vols = {v["name"]: v for v in js["volumes"]}
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        f.check(len(job["metadata"]["name"]) <= 52, f"[drain] Job name {job['metadata']['name']} too long")
        f.check(c["command"][:2] == ["/usr/local/bin/hookbus", "drain"] and "--spool-dir" in c["command"]
                and c["command"][c["command"].index("--spool-dir") + 1] == mounts.get("spool")
                and c["command"][-2:] == ["--timeout", "5m"],
                f"[drain] {claim}: command {c['command']} does not drain the mounted claim")
        f.check(vols["spool"].get("persistentVolumeClaim") == {"claimName": claim}, f"[drain] {claim}: claim not mounted")
        want = {v["name"]: v for v in pod["volumes"]}
        f.check(vols["config"] == want["config"] and vols.get("secret-files") == want.get("secret-files"),
                f"[drain] {claim}: config or secret files differ from the pods'")
        f.check(c.get("envFrom") == hb.get("envFrom") and c.get("env") == hb.get("env"),
                f"[drain] {claim}: environment differs from the hookbus container's (broker credentials)")
        f.check(c["image"] == hb["image"] and c["securityContext"] == hb["securityContext"]
                and js["securityContext"] == pod["securityContext"] and js["restartPolicy"] == "Never",
                f"[drain] {claim}: image or security context differs from the pods'")
    kube_validate(f, "drainJobs", [(f"drain/{j['metadata']['name']}", j) for j in jobs], ["1.31"])

    # Startup: the probe's budget covers reading a full spool back at the slowest rate allowed
    # for (hookbus opens its admin port only after that read), in every rendering and the
    # kustomize base; a budget that does not is refused.
    def startup(docs: list[tuple[str, dict]]) -> int:
        c = next(c for c in pod_of(docs)["spec"]["containers"] if c["name"] == "hookbus")
        sp = c["startupProbe"]
        return sp["periodSeconds"] * sp["failureThreshold"]

    def need(cfg: dict[str, Any], rate: int = 8 * MIB, base: int = 60) -> int:
        return base + -(-spool_budget(cfg) // rate)

    for vals in ({}, {"config": {"spool": {"max_bytes": 10 * 2**30}}, "persistence": {"size": "12Gi"}},
                 {"probes": {"startup": {"minReplayBytesPerSecond": 2 * MIB, "periodSeconds": 5}}},
                 {**EMPTYDIR, "config": {"spool": {"max_bytes": 128 * MIB, "segment_bytes": 16 * MIB}},
                  "spoolVolume": {"sizeLimit": "512Mi"}}):
        docs = docs_of(render(vals))
        _, cfg = config_toml_of(docs)  # type: ignore[misc]
        st = (vals.get("probes") or {}).get("startup") or {}
        want = need(cfg, st.get("minReplayBytesPerSecond", 8 * MIB))
        got = startup(docs)
        f.check(want <= got < want + st.get("periodSeconds", 2),
                f"[startup] {json.dumps(vals)[:90]}: probe budget {got} s, expected the smallest >= {want} s")
        f.check(got > 60 or spool_budget(cfg) < 8 * MIB * 2, f"[startup] {json.dumps(vals)[:90]}: the old fixed 60 s budget")
    try:
        render({"probes": {"startup": {"failureThreshold": 30}}})
        f.fail("[startup] probes.startup.failureThreshold 30 (60 s) rendered although a full default spool needs 209 s")
    except Exception as e:  # noqa: BLE001
        f.check("does not cover reading the spool back" in str(e), f"[startup] refused for another reason: {e}")
    try:
        render({"probes": {"startup": {"failureThreshold": 200}}})
    except Exception as e:  # noqa: BLE001
        f.fail(f"[startup] a generous explicit failureThreshold is refused: {e}")
    kdocs = kustomize_docs(f)
    kcfg = next((tomllib.loads(d["data"]["config.toml"]) for _, d in kdocs
                 if d.get("kind") == "ConfigMap" and "config.toml" in (d.get("data") or {})), None)
    if f.check(kcfg is not None, "[startup] the kustomize base has no config.toml ConfigMap"):
        kwl = next(d for _, d in kdocs if d.get("kind") == "Deployment")
        f.check(startup([("", kwl)]) >= need(kcfg),
                f"[startup] the kustomize base's startup probe allows {startup([('', kwl)])} s, reading its spool back needs {need(kcfg)} s")

    # The runbooks say what to do, with the commands and values this chart has.
    scale_in = runbook_section("Scale-in with unpublished events")
    node_loss = runbook_section("Node loss under the StatefulSet")
    for what, text, needles in (
        ("Scale-in with unpublished events", scale_in,
         ["drainJobs.claims", "whenScaled", "hookbus_spool_pending_events", "kubectl -n hookbus get pvc"]),
        ("Node loss under the StatefulSet", node_loss,
         ["--force", "--grace-period=0", "volumeattachment", "hookbus drain", "--spool-dir", "drainJobs.claims"]),
    ):
        f.check(bool(text), f"docs/runbooks.md has no section '## {what}'")
        for n in needles:
            f.check(n in text, f"docs/runbooks.md '## {what}' does not mention {n}")
    if len(f.items) == before:
        print("  ok   durability: default StatefulSet with retained claims (HPA scales it), Kafka replication 3 "
              "(1 warns in NOTES), ServiceMonitor release label, drainJobs mount the claim with the pods' "
              "config/Secrets/security, runbooks for scale-in and node loss; the startup probe covers reading "
              "a full spool back at 8 MiB/s (209 s by default, not 60 s), a smaller explicit budget is refused")


def check_roster_roll(f: Failures) -> None:
    """checksum/config: the bridge's covers its own sections, the roster's the whole file. Turning
    the roster on or changing config.roster rolls the roster alone; a shared section rolls both;
    with the roster off config.toml is what it was before the roster existed."""
    def sums(values: dict[str, Any]) -> tuple[str, str | None]:
        docs = docs_of(render(values))
        bridge = pod_of(docs)["metadata"]["annotations"]["checksum/config"]
        roster = [d for d in by_kind(docs, "Deployment") if is_roster(d)]
        return bridge, (roster[0]["spec"]["template"]["metadata"]["annotations"]["checksum/config"] if roster else None)

    before = len(f.items)
    on = {"roster": {"enabled": True}}
    off_b, _ = sums({})
    on_b, on_r = sums(on)
    ttl_b, ttl_r = sums({**on, "config": {"roster": {"tombstone_ttl": "45m"}}})
    dedup_b, dedup_r = sums({**on, "config": {"dedup": {"window": "5m"}}})
    f.check(on_b == off_b, "[roster roll] turning the roster on changes the bridge's checksum/config (the bridge would roll)")
    f.check(ttl_b == on_b and ttl_r != on_r, "[roster roll] a config.roster change must roll the roster only")
    f.check(dedup_b != on_b and dedup_r != on_r, "[roster roll] a shared config change must roll both")
    text_off = config_toml_of(docs_of(render({})))[0]  # type: ignore[index]
    text_on = config_toml_of(docs_of(render(on)))[0]  # type: ignore[index]
    f.check(text_on.startswith(text_off) and "[roster]" in text_on[len(text_off):] and "[roster]" not in text_off,
            "[roster roll] [roster] is not appended to the bridge's config.toml, or rendered with the roster off")
    if len(f.items) == before:
        print("  ok   roster roll: turning it on or changing config.roster rolls the roster alone (the bridge's "
              "checksum/config covers its sections), a shared section rolls both; off, config.toml has no [roster]")


def pod_of(docs: list[tuple[str, dict]]) -> dict[str, Any]:
    return bridge_workload(docs)["spec"]["template"]


def check_logs_and_secret_roll(f: Failures) -> None:
    before = len(f.items)

    def env(values: dict[str, Any]) -> dict[str, Any]:
        c = next(c for c in pod_of(docs_of(render(values)))["spec"]["containers"] if c["name"] == "hookbus")
        names = [e["name"] for e in c.get("env") or []]
        f.check(len(names) == len(set(names)), f"[logs] duplicate env names {names} for {values}")
        return {e["name"]: e.get("value") for e in c.get("env") or []}

    e = env({})
    f.check(e.get("RUST_LOG") == "info" and "HOOKBUS_LOG_FORMAT" not in e, f"[logs] default env {e}")
    e = env({"logFormat": "json", "logLevel": "info,hookbus=debug"})
    f.check(e.get("HOOKBUS_LOG_FORMAT") == "json" and e.get("RUST_LOG") == "info,hookbus=debug",
            f"[logs] logFormat json / logLevel not in env: {e}")
    e = env({"logFormat": "json", "extraEnv": [{"name": "RUST_LOG", "value": "warn"}]})
    f.check(e.get("RUST_LOG") == "warn" and e.get("HOOKBUS_LOG_FORMAT") == "json",
            f"[logs] an extraEnv RUST_LOG does not replace logLevel: {e}")

    def annotations(values: dict[str, Any]) -> dict[str, str]:
        return pod_of(docs_of(render(values)))["metadata"].get("annotations") or {}

    a1 = annotations({"secret": {"authToken": "token-one-0123456789"}})
    a2 = annotations({"secret": {"authToken": "token-two-0123456789"}})
    f.check("checksum/secret" in a1 and a1["checksum/secret"] != a2["checksum/secret"]
            and a1["checksum/config"] == a2["checksum/config"],
            "[secret roll] a changed secret.authToken does not change checksum/secret (pods would not roll)")
    a3 = annotations({"secret": {"authToken": "token-one-0123456789"}, "rollOnSecretChange": False})
    f.check(not any(k.startswith("checksum/secret") or k.startswith("checksum/external") for k in a3),
            f"[secret roll] rollOnSecretChange false still rolls on Secrets: {sorted(a3)}")
    # A Secret the chart does not manage, read from the cluster at upgrade: its change rolls.
    from fake_kube import FakeKube  # noqa: PLC0415 - sibling module

    vals = {"secret": {"existingSecret": "hookbus-env"}}
    sums = []
    h = helm()
    for password in ("old-password", "rotated-password"):
        with FakeKube({("roll", "hookbus-env"): {TOKEN: "existing-token-0123456789", "KAFKA_SASL_PASSWORD": password}}) as kube, \
                h.Chart.load(str(CHART)) as chart:
            ann = pod_of(docs_of(kube.render(chart, vals, name=RELEASE, namespace="roll", upgrade=True)))["metadata"]["annotations"]
            sums.append(ann.get("checksum/external-secrets"))
    f.check(None not in sums and sums[0] != sums[1],
            f"[secret roll] rotating a key of secret.existingSecret does not change checksum/external-secrets: {sums}")
    if len(f.items) == before:
        print("  ok   logFormat json -> HOOKBUS_LOG_FORMAT, logLevel -> RUST_LOG (extraEnv replaces them); "
              "Secret changes (chart-managed, and existing ones via lookup) roll the pods unless rollOnSecretChange false")


def base64_text(b64: str) -> str:
    import base64  # noqa: PLC0415

    return base64.b64decode(b64).decode() if b64 else ""


# An emptyDir spool that the chart allows in ack mode spool: one replica, no HPA.
EMPTYDIR: dict[str, Any] = {"persistence": {"enabled": False}, "replicaCount": 1}

# Values the chart must refuse to render (values, text the error must contain).
MUST_FAIL: list[tuple[dict[str, Any], str]] = [
    ({**EMPTYDIR, "config": {"spool": {"max_bytes": 10737418240}}}, "do not fit spoolVolume.sizeLimit"),
    # 2e9 + 64 MiB segment + 100 MiB dead letters > 2Gi although max_bytes alone fits.
    ({**EMPTYDIR, "config": {"spool": {"max_bytes": 2000000000}}}, "do not fit spoolVolume.sizeLimit"),
    ({**EMPTYDIR, "config": {"spool": {"max_bytes": 1073741824, "dead_letter_max_bytes": 1073741824}}}, "do not fit spoolVolume.sizeLimit"),
    # Ack mode spool on an emptyDir with more than one pod or the HPA: scale-in, eviction or
    # node loss deletes acknowledged events. Refused unless acknowledged.
    ({"persistence": {"enabled": False}}, "emptyDir spool (persistence.enabled false) and replicaCount 2"),
    ({"persistence": {"enabled": False}, "replicaCount": 1, "autoscaling": {"enabled": True}},
     "emptyDir spool (persistence.enabled false) and the HPA"),
    ({"persistence": {"enabled": False}, "replicaCount": 3, "spoolVolume": {"acknowledgeEventLoss": False}},
     "spoolVolume.acknowledgeEventLoss=true to accept that loss"),
    ({"persistence": {"enabled": True, "size": "1Gi"}}, "do not fit persistence.size"),
    ({"persistence": {"enabled": True, "size": "10G"}, "config": {"spool": {"max_bytes": 10737418240}}}, "do not fit persistence.size"),
    ({**EMPTYDIR, "spoolVolume": {"medium": "Memory", "sizeLimit": "2Gi"}}, "counts against resources.limits.memory"),
    ({"secret": {"existingSecret": "hookbus-env", "authToken": "x"}}, "secret.existingSecret is set together"),
    ({"persistence": {"enabled": True}, "fullnameOverride": "h" * 53}, "longer than 52 characters"),
    ({**EMPTYDIR, "spoolVolume": {"sizeLimit": "2 GB"}}, "sizeLimit"),
    # hookbus exits 64 on a blank token: refused before it reaches a pod.
    ({"secret": {"env": {"HOOKBUS_AUTH_TOKEN": " "}}}, "secret.env.HOOKBUS_AUTH_TOKEN is blank"),
    ({"extraEnv": [{"name": "HOOKBUS_AUTH_TOKEN", "value": ""}]}, "extraEnv HOOKBUS_AUTH_TOKEN has a blank value"),
    # Dead letters in the events' stream could push events out.
    ({"config": {"nats": {"dead_letter_stream": "PRESENCE"}}}, "dead letters need a stream of their own"),
    # The roster needs a broker to consume from, a store that works with it, and Here Now one keyset.
    ({"roster": {"enabled": True}, "config": {"sink": {"kind": "stdout"}}}, "roster.enabled with config.sink.kind stdout"),
    ({"roster": {"enabled": True}, "config": {"nats": {"jetstream": False}}}, "roster.enabled needs config.nats.jetstream true"),
    ({"roster": {"enabled": True}, "config": {"sink": {"kind": "kafka"}}}, "needs config.sink.kind nats, not kafka"),
    ({"roster": {"enabled": True}, "config": {"roster": {"here_now": {"origin": "https://ps.pndsn.com"}}}},
     "config.roster.sub_key is empty"),
    ({"roster": {"enabled": True, "pubnubSecretKey": {"value": "sec-c-x", "existingSecret": "pubnub"}}},
     "roster.pubnubSecretKey.value and roster.pubnubSecretKey.existingSecret are both set"),
    ({"roster": {"enabled": True}, "config": {"roster": {"sub_key": "sub-c-x", "here_now": {"origin": "https://ps.pndsn.com"}}}},
     "config.roster.here_now.subscribe_key is empty"),
    ({"roster": {"enabled": True, "pubnubSecretKey": {"existingSecret": "pubnub"}},
      "config": {"roster": {"sub_key": "sub-c-x", "here_now": {"origin": "https://ps.pndsn.com", "subscribe_key": "sub-c-x"}}}},
     "config.roster.here_now.publish_key is empty"),
    ({"roster": {"enabled": True, "containerPort": 9090}}, "roster.containerPort 9090 is also containerPorts.http or .admin"),
]
# Values right at the edge that must render.
MUST_PASS: list[dict[str, Any]] = [
    {**EMPTYDIR, "config": {"spool": {"max_bytes": 1900000000}}},
    {**EMPTYDIR, "spoolVolume": {"sizeLimit": None}, "config": {"spool": {"max_bytes": 10737418240}}},
    {"persistence": {"enabled": True, "size": "1.5Gi"}},
    {**EMPTYDIR, "config": {"spool": {"max_bytes": 134217728, "segment_bytes": 16777216}}, "spoolVolume": {"sizeLimit": "256Mi"}},
    {**EMPTYDIR, "spoolVolume": {"medium": "Memory", "sizeLimit": "300Mi"},
     "config": {"spool": {"max_bytes": 134217728, "segment_bytes": 16777216}}},
    {**EMPTYDIR, "fullnameOverride": "h" * 63, "ingress": {"enabled": True, "className": "nginx"}},
    # The emptyDir refusal applies to ack mode spool only, and yields to an acknowledgement.
    {"persistence": {"enabled": False}, "config": {"ack": {"mode": "memory"}}, "autoscaling": {"enabled": True}},
    {"persistence": {"enabled": False}, "config": {"ack": {"mode": "publish"}}, "replicaCount": 3},
    {"persistence": {"enabled": False}, "spoolVolume": {"acknowledgeEventLoss": True}, "autoscaling": {"enabled": True}},
    # The HPA on the StatefulSet: allowed, the claims of removed pods are retained.
    {"autoscaling": {"enabled": True}},
    # The roster: with Kafka and Redis; next to an HPA-scaled StatefulSet; with the longest
    # names (the -roster objects stay within 63 characters); every optional key null.
    {"roster": {"enabled": True}, "config": {"sink": {"kind": "kafka"}, "roster": {"store": "rediss://redis:6380/2"}}},
    {"roster": {"enabled": True, "serviceMonitor": {"enabled": True}}, "autoscaling": {"enabled": True}},
    {**EMPTYDIR, "fullnameOverride": "h" * 63, "nameOverride": "n" * 58, "roster": {"enabled": True}},
    {"roster": {"enabled": True, "podDisruptionBudget": {"enabled": False}, "probes": {"startup": {"enabled": False}}},
     "config": {"roster": {k: None for k in ("bucket", "consumer", "sub_key", "tombstone_ttl", "template", "sessions")}
                | {"here_now": None}}},
]


EXPECT = {
    # case: kinds that must be present / absent. The default is a StatefulSet: in ack mode
    # spool the spool must outlive its pod (persistence.enabled).
    "default": ({"StatefulSet", "Service", "ConfigMap", "ServiceAccount", "PodDisruptionBudget", "Secret"},
                {"Deployment", "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule",
                 "NetworkPolicy", "Ingress", "Job"}),
}
FULL_KINDS = {"StatefulSet", "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule",
              "NetworkPolicy", "Ingress", "PodDisruptionBudget"}


def cmd_render(args: argparse.Namespace) -> None:
    f = Failures()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    (out / "config").mkdir(parents=True)
    full_case_seen = roster_case_seen = False
    for name, values in cases():
        try:
            manifests = render(values)
        except Exception as e:  # noqa: BLE001 - report any render failure
            f.fail(f"render [{name}]: {e}")
            continue
        slug = name.replace("ci/", "ci-").removesuffix(".yaml")
        (out / f"{slug}.yaml").write_text("\n---\n".join(
            f"# Source: {t}\n{m.strip()}" for t, m in sorted(manifests.items()) if m.strip()))
        docs = docs_of(manifests)
        kinds = {d["kind"] for _, d in docs}
        notes = next((m for t, m in manifests.items() if t.endswith("NOTES.txt")), "")
        f.check("/webhooks/pubnub" in notes, f"[{name}] NOTES.txt does not show the webhook URL")
        if name in EXPECT:
            must, mustnt = EXPECT[name]
            f.check(must <= kinds, f"[{name}] missing kinds {sorted(must - kinds)}")
            f.check(not (mustnt & kinds), f"[{name}] unexpected kinds {sorted(mustnt & kinds)}")
        if FULL_KINDS <= kinds:
            full_case_seen = True
            dash = [d for _, d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
            f.check(bool(dash), f"[{name}] all features on but no dashboard ConfigMap")
        got = config_toml_of(docs)
        if not f.check(got is not None, f"[{name}] no config.toml in a -config ConfigMap/Secret"):
            continue
        text, cfg = got
        (out / "config" / f"{slug}.toml").write_text(text)
        check_secrets(f, name, values, docs)
        check_auth(f, name, values, docs, cfg, notes, token_source(values))
        check_dead_letters(f, name, cfg, values)
        check_config(f, name, cfg)
        check_workload(f, name, docs, cfg, values=values)
        check_guard_rails(f, name, values, docs, cfg)
        check_roster(f, name, values, docs, cfg, notes)
        roster_case_seen = roster_case_seen or bool(merged(values)["roster"]["enabled"])
        print(f"  ok   rendered [{name}]: {len(docs)} objects ({', '.join(sorted(kinds))})")
    f.check(full_case_seen, "no ci/*.yaml turns on persistence, HPA, ServiceMonitor, PrometheusRule, "
                            "NetworkPolicy, Ingress and PDB together")
    f.check(roster_case_seen, "no ci/*.yaml turns on the presence roster (roster.enabled)")

    # The roster rolls alone: its config changes its pods' checksum, not the bridge's.
    check_roster_roll(f)

    # The webhook token: generated unless named, kept across upgrades, none only when anonymous.
    check_auth_cases(f)

    # Defaults that cannot lose an acknowledged event; the drain of retained claims.
    check_durability(f)

    # Log format and level; the pod roll on a Secret change (optional).
    check_logs_and_secret_roll(f)

    # The dead-letter keys reach config.toml as given; the routing budget only when set.
    dl = {"config": {"nats": {"dead_letter_stream": "PUBNUB_DL", "dead_letter_max_bytes": 1073741824,
                              "dead_letter_max_age": "720h"},
                     "routing": {"dead_letter_budget_bytes": 1048576, "dead_letter_budget_window": "30s"}}}
    for vals in ({}, dl):
        _, cfg = config_toml_of(docs_of(render(vals)))  # type: ignore[misc]
        before = len(f.items)
        check_dead_letters(f, f"dead letters {json.dumps(vals)[:60]}", cfg, vals)
        if not vals:
            f.check(cfg["nats"].get("dead_letter_stream") == "PRESENCE_DEAD_LETTERS"
                    and "dead_letter_budget_bytes" not in cfg["routing"],
                    "[dead letters] defaults: expected stream PRESENCE_DEAD_LETTERS and hookbus's routing budget")
        if len(f.items) == before:
            print(f"  ok   dead-letter keys passed through: {json.dumps(vals)[:110]}")

    # A config change changes the checksum annotation (pods roll); an unrelated value does not.
    def checksum(values: dict[str, Any]) -> str:
        docs = docs_of(render(values))
        wl = bridge_workload(docs)
        return wl["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    base = checksum({})
    f.check(checksum({"config": {"dedup": {"window": "5m"}}}) != base,
            "changing config.dedup.window does not change checksum/config (pods would not roll)")
    f.check(checksum({"podLabels": {"team": "x"}}) == base, "checksum/config changes without a config change")

    # terminationGracePeriodSeconds: derived from grace + preStop; a too-small explicit one is refused.
    for vals in ({"config": {"shutdown": {"grace": "2m"}}, "lifecycle": {"preStopSleepSeconds": 15}},
                 {"config": {"shutdown": {"grace": "1500ms"}}}):
        docs = docs_of(render(vals))
        _, cfg = config_toml_of(docs)  # type: ignore[misc]
        check_workload(f, f"grace {vals}", docs, cfg)
    for vals, why in MUST_FAIL:
        try:
            render(vals)
            f.fail(f"{vals} rendered; expected a refusal ({why})")
        except Exception as e:  # noqa: BLE001
            msg = " ".join(str(e).split())
            if f.check(why in msg, f"{vals} refused for another reason: {msg[:300]}"):
                print(f"  ok   refused: {json.dumps(vals)[:90]}: ...{why}...")
    for vals in MUST_PASS:
        try:
            docs = docs_of(render(vals))
            _, cfg = config_toml_of(docs)  # type: ignore[misc]
            check_workload(f, f"edge {vals}", docs, cfg, values=vals)
            check_guard_rails(f, f"edge {vals}", vals, docs, cfg)
            check_roster(f, f"edge {vals}", vals, docs, cfg)
            print(f"  ok   renders: {json.dumps(vals)[:100]}")
        except Exception as e:  # noqa: BLE001
            f.fail(f"{vals} refused; it fits: {' '.join(str(e).split())[:300]}")
    try:
        render({"terminationGracePeriodSeconds": 20})
        f.fail("terminationGracePeriodSeconds 20 (< grace 20s + preStop 5s) rendered; expected a refusal")
    except Exception as e:  # noqa: BLE001
        f.check("terminationGracePeriodSeconds" in str(e), f"too-small grace refused for another reason: {e}")
        print("  ok   terminationGracePeriodSeconds 20 <= 20s + 5s is refused at render time")
    f.exit("helm render + wiring")


# ---------------------------------------------------------------- schema

def cmd_schema(args: argparse.Namespace) -> None:
    f = Failures()
    h = helm()
    with h.Chart.load(str(CHART)) as chart:
        f.check(chart.schema is not None, "chart ships no values.schema.json")
        for name, values in cases():
            try:
                chart.validate_schema(values)
                print(f"  ok   schema accepts [{name}]")
            except h.HelmError as e:
                f.fail(f"schema rejects good values [{name}]: {e}")
        for path, value, why in BAD_VALUES:
            bad = set_path({}, path, value)
            try:
                chart.validate_schema(bad)
                f.fail(f"schema accepted {path}={value!r} ({why})")
            except h.HelmValuesError as e:
                print(f"  ok   schema rejects {path}={value!r} ({why}): {' '.join(str(e).split())[:120]}")
            # The render path (helm install/template) must refuse it as well.
            try:
                chart.render(values=bad, name=RELEASE, namespace=NAMESPACE, is_install=True)
                f.fail(f"render accepted {path}={value!r} ({why})")
            except h.HelmError:
                pass
        # Lint with a bad value must report an error too.
        report = h.lint(str(CHART), {"config": {"ack": {"mode": "fast"}}}, strict=True)
        f.check(bool(report.get("errors")) or any(m.get("severity", 0) >= 3 for m in report.get("messages", [])),
                "helm lint accepts config.ack.mode=fast")
    f.exit("values.schema.json")


# ---------------------------------------------------------------- kube validation

def kube_validate(f: Failures, source: str, docs: list[tuple[str, dict]], versions: list[str]) -> int:
    import kubernetes_validate as kv
    from kubernetes_validate import utils as kvu

    n = 0
    for template, d in docs:
        what = f"{source} {template} {d.get('kind')}/{d.get('metadata', {}).get('name')}"
        if d.get("kind") in CRD_KINDS:
            continue  # checked structurally in `render`
        for v in versions:
            try:
                kv.validate(d, v, strict=True)
            except kvu.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                f.fail(f"{what} invalid for Kubernetes {v}: {path}: {e.message}")
            except kvu.SchemaNotFoundError as e:
                f.fail(f"{what}: {e.message}")
        n += 1
    return n


def kustomize_docs(f: Failures) -> list[tuple[str, dict]]:
    """Build deploy/kubernetes with `kubectl kustomize` when kubectl exists, else read the
    resources of kustomization.yaml and build its configMapGenerator entries here."""
    kubectl = shutil.which("kubectl")
    if kubectl:
        proc = subprocess.run([kubectl, "kustomize", str(KUSTOMIZE)], capture_output=True, text=True)
        if proc.returncode != 0:
            f.fail(f"kubectl kustomize deploy/kubernetes: {proc.stderr.strip()}")
            return []
        print("  ok   kubectl kustomize deploy/kubernetes")
        return [("kustomize", d) for d in yaml.safe_load_all(proc.stdout) if d]
    print("  note kubectl not found: building deploy/kubernetes with the built-in reader")
    k = yaml.safe_load((KUSTOMIZE / "kustomization.yaml").read_text())
    docs = []
    for r in k.get("resources", []):
        for d in yaml.safe_load_all((KUSTOMIZE / r).read_text()):
            if d:
                docs.append((r, d))
    for gen in k.get("configMapGenerator", []):
        data = {}
        for spec in gen.get("files", []):
            key, _, path = spec.partition("=") if "=" in spec else (Path(spec).name, "", spec)
            data[key] = (KUSTOMIZE / path).read_text()
        docs.append(("configMapGenerator", {"apiVersion": "v1", "kind": "ConfigMap",
                                            "metadata": {"name": gen["name"]}, "data": data}))
    return docs


def cmd_kube(args: argparse.Namespace) -> None:
    f = Failures()
    versions = args.kube_versions
    for name, values in cases():
        try:
            docs = docs_of(render(values))
        except Exception as e:  # noqa: BLE001
            f.fail(f"render [{name}]: {e}")
            continue
        before = len(f.items)
        n = kube_validate(f, f"[{name}]", docs, versions)
        if len(f.items) == before:
            print(f"  ok   [{name}] {n} objects checked against Kubernetes {', '.join(versions)}"
                  f" (+{sum(1 for _, d in docs if d['kind'] in CRD_KINDS)} CRD objects: structural checks in render)")

    # The kustomize base: every file listed, every object valid, same wiring rules.
    k = yaml.safe_load((KUSTOMIZE / "kustomization.yaml").read_text())
    listed = set(k.get("resources", []))
    on_disk = {p.name for p in KUSTOMIZE.glob("*.yaml")} - {"kustomization.yaml"}
    f.check(on_disk <= listed, f"deploy/kubernetes files not in kustomization.yaml: {sorted(on_disk - listed)}")
    docs = kustomize_docs(f)
    if docs:
        before = len(f.items)
        n = kube_validate(f, "[kustomize]", docs, versions)
        got = config_toml_of(docs)
        if f.check(got is not None, "[kustomize] no ConfigMap <name>-config with config.toml"):
            text, cfg = got
            out = Path(args.out) / "config"
            out.mkdir(parents=True, exist_ok=True)
            (out / "kustomize.toml").write_text(text)
            check_config(f, "kustomize", cfg)
            check_dead_letters(f, "kustomize", cfg, None)
            check_workload(f, "kustomize", docs, cfg, kustomize=True)
            # Secure by default: no anonymous ingress, and the pod requires the token Secret.
            f.check(cfg["auth"].get("allow_anonymous") is False,
                    f"[kustomize] config.toml auth.allow_anonymous = {cfg['auth'].get('allow_anonymous')!r}, expected false")
            c = next(c for c in by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
                     if c["name"] == "hookbus")
            route = token_route(c, {})
            env_ref = route[1] if route and route[0] == "env" else {}
            key_ref = (env_ref.get("valueFrom") or {}).get("secretKeyRef") or {}
            f.check(key_ref.get("key") == TOKEN and bool(key_ref.get("name")) and not key_ref.get("optional"),
                    f"[kustomize] the Deployment does not require {TOKEN} from a Secret (env valueFrom.secretKeyRef, "
                    f"not optional): {route}")
            optional = [e["secretRef"]["name"] for e in c.get("envFrom") or []
                        if (e.get("secretRef") or {}).get("optional")]
            f.check(not optional, f"[kustomize] envFrom Secret(s) {optional} optional: the token Secret is required")
            # The same guard rail as the chart's: the spool budget fits the emptyDir.
            wl = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
            vol = next(v for v in wl["volumes"] if v["name"] == "spool")["emptyDir"] or {}
            if vol.get("sizeLimit"):
                f.check(spool_budget(cfg) <= quantity_bytes(vol["sizeLimit"]),
                        f"[kustomize] spool budget {spool_budget(cfg)} > emptyDir sizeLimit {vol['sizeLimit']}")
        if len(f.items) == before:
            print(f"  ok   [kustomize] {n} objects checked against Kubernetes {', '.join(versions)}")
    f.exit("Kubernetes schema validation")


# ---------------------------------------------------------------- sync

# What the chart README's "## Upgrading" must tell (the contract changes of charts 0.2.0, 0.3.0).
UPGRADING_PHRASES = ["exits 64", "allow_anonymous", '"${VAR}"', "resolves blank", "hookbus narrows",
                     "`presence.>` to `presence.*.*`", "dead_letter_stream", "new stream",
                     "persistence.enabled: false", "spoolVolume.acknowledgeEventLoss", "replication_factor: 1",
                     "hookbus_ack_slo_duration_seconds", "severityByAckMode"]

def check_changelog(f: Failures) -> None:
    """CHANGELOG.md in the Keep a Changelog shape: [Unreleased] with upgrade notes, every
    release `## [x.y.z] - YYYY-MM-DD` with a link reference, the crate's version released or
    unreleased, known section names only; the chart README has upgrade notes for the chart's
    version."""
    path = ROOT / "CHANGELOG.md"
    if not f.check(path.exists(), "CHANGELOG.md is missing"):
        return
    text = path.read_text()
    before = len(f.items)
    f.check("keepachangelog.com" in text, "CHANGELOG.md does not say it follows Keep a Changelog")
    heads = re.findall(r"^## \[([^\]]+)\](.*)$", text, re.M)
    f.check(bool(heads) and heads[0][0] == "Unreleased", "CHANGELOG.md does not start with ## [Unreleased]")
    releases = []
    for name, rest in heads[1:]:
        if f.check(re.fullmatch(r"\d+\.\d+\.\d+", name) is not None and re.fullmatch(r" - \d{4}-\d\d-\d\d", rest) is not None,
                   f"CHANGELOG.md heading '## [{name}]{rest}' is not '## [x.y.z] - YYYY-MM-DD'"):
            releases.append(name)
    for name, _ in heads:
        f.check(re.search(rf"^\[{re.escape(name)}\]: \S+", text, re.M) is not None,
                f"CHANGELOG.md has no link reference [{name}]: ...")
    for sub in re.findall(r"^### (.+)$", text, re.M):
        f.check(sub.split(":")[0].split(" ")[0] in ("Added", "Changed", "Deprecated", "Removed", "Fixed", "Security", "Upgrading"),
                f"CHANGELOG.md section '### {sub}' is not a Keep a Changelog type (or Upgrading)")
    unreleased = text.split("## [Unreleased]", 1)[1].split("\n## [", 1)[0] if "## [Unreleased]" in text else ""
    f.check("### Upgrading" in unreleased, "CHANGELOG.md [Unreleased] has no '### Upgrading' notes")
    version = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
    f.check(version in releases or bool(unreleased.strip()),
            f"Cargo.toml version {version} is neither released in CHANGELOG.md nor under [Unreleased]")
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    f.check(f"### To chart {chart['version']}" in readme,
            f"helm/hookbus/README.md has no upgrade notes '### To chart {chart['version']}'")
    if len(f.items) == before:
        print(f"  ok   CHANGELOG.md: Keep a Changelog, releases {', '.join(releases)}, [Unreleased] with upgrade notes; "
              f"chart {chart['version']} has upgrade notes")


def cmd_sync(args: argparse.Namespace) -> None:
    f = Failures()
    for copy_, source in COPIES.items():
        rel_c, rel_s = copy_.relative_to(ROOT), source.relative_to(ROOT)
        if not f.check(source.exists(), f"{rel_s} is missing"):
            continue
        if args.fix:
            copy_.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, copy_)
            print(f"  copied {rel_s} -> {rel_c}")
            continue
        same = copy_.exists() and filecmp.cmp(copy_, source, shallow=False)
        if f.check(same, f"{rel_c} differs from {rel_s} (run: scripts/check-deploy --sync)"):
            digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
            print(f"  ok   {rel_c} == {rel_s} (sha256 {digest})")
    stale = CHART / "files" / "prometheus" / "alerts.yaml"
    if stale.exists():
        if args.fix:
            stale.unlink()
        f.check(args.fix, f"{stale.relative_to(ROOT)} is obsolete: the chart renders {RULES_SOURCE.relative_to(ROOT)}")
    # deploy/prometheus/alerts.yaml is generated from the chart's rule source.
    text = rule_file_text(alert_groups({}), PLAIN_HEADER)
    rel = PLAIN_ALERTS.relative_to(ROOT)
    if args.fix:
        if not PLAIN_ALERTS.exists() or PLAIN_ALERTS.read_text() != text:
            PLAIN_ALERTS.write_text(text)
            print(f"  generated {rel} from {RULES_SOURCE.relative_to(ROOT)} (chart defaults)")
    if f.check(PLAIN_ALERTS.exists() and PLAIN_ALERTS.read_text() == text,
               f"{rel} differs from the chart's rules rendered with default values "
               f"(edit {RULES_SOURCE.relative_to(ROOT)}, then run: scripts/check-deploy --sync)"):
        print(f"  ok   {rel} == chart rules rendered with default values")
    # The chart README tells an upgrading user what changed (phrases that must be there).
    readme = (CHART / "README.md").read_text()
    upgrading = readme.split("## Upgrading", 1)[1].split("\n## ", 1)[0] if "## Upgrading" in readme else ""
    for phrase in UPGRADING_PHRASES:
        f.check(phrase in upgrading, f"helm/hookbus/README.md \"## Upgrading\" does not say {phrase!r}")
    if upgrading and all(p in upgrading for p in UPGRADING_PHRASES):
        print("  ok   helm/hookbus/README.md Upgrading: exit 64 without a token or with a blank ${…}, "
              "allow_anonymous, the stream migration; 0.3.0: StatefulSet default, Kafka replication 3, alerts")
    check_changelog(f)
    import values_doc  # noqa: PLC0415 - sibling module
    if args.fix:
        values_doc.write()
    for problem in values_doc.check():
        f.fail(problem)
    if not values_doc.check():
        print(f"  ok   {values_doc.README.relative_to(ROOT)} documents every value of values.yaml with its default")
    f.exit("generated and copied files")


# ---------------------------------------------------------------- alerts

# Alerts whose description cannot carry a meaningful number ($value of absent() is 1).
NO_VALUE = {"HookbusTargetMissing"}


def roster_runbook_base(pr: dict[str, Any], base: str) -> str:
    """runbook_url base of the roster alerts: rosterRunbookBase, else runbookBase with its file
    name replaced by roster.md (the chart's hookbus.alertGroups)."""
    return pr.get("rosterRunbookBase") or re.sub(r"[^/]*$", "roster.md", base, count=1)


def check_alert_rules(f: Failures, label: str, groups: list[dict[str, Any]], base: str,
                      roster_base: str | None = None) -> list[str]:
    """Every alert: severity, summary, description with $value, runbook_url into
    docs/runbooks.md (the group hookbus.roster: into docs/roster.md, base roster_base); no
    placeholder left. Returns the alert names."""
    anchors = github_anchors(RUNBOOKS.read_text()) if RUNBOOKS.exists() else set()
    roster_anchors = github_anchors(ROSTER_DOC.read_text()) if ROSTER_DOC.exists() else set()
    roster_base = roster_base or roster_runbook_base({}, base)
    f.check(RUNBOOKS.exists(), f"{RUNBOOKS.relative_to(ROOT)} is missing")
    if any(g.get("name") == ROSTER_GROUP for g in groups):
        f.check(ROSTER_DOC.exists(), f"{ROSTER_DOC.relative_to(ROOT)} is missing")
    alerts = []
    for g in groups:
        for r in g.get("rules", []):
            text = json.dumps(r)
            f.check("${" not in text, f"[{label}] {r.get('alert') or r.get('record')}: placeholder left: {text[:200]}")
            if "record" in r:
                continue
            a = r["alert"]
            alerts.append(a)
            ann, labels = r.get("annotations") or {}, r.get("labels") or {}
            f.check(labels.get("severity") in ("critical", "warning", "info"), f"[{label}] {a}: severity {labels.get('severity')!r}")
            f.check(bool(ann.get("summary")), f"[{label}] {a}: no summary")
            f.check(bool(ann.get("description")), f"[{label}] {a}: no description")
            f.check(a in NO_VALUE or "$value" in ann.get("description", ""),
                    f"[{label}] {a}: the description does not show the number ({{{{ $value }}}})")
            url = ann.get("runbook_url", "")
            want, doc, doc_anchors = base, RUNBOOKS, anchors
            if g.get("name") == ROSTER_GROUP:
                want, doc, doc_anchors = roster_base, ROSTER_DOC, roster_anchors
            f.check(url == f"{want}#{a.lower()}", f"[{label}] {a}: runbook_url {url!r} is not {want}#{a.lower()}")
            f.check(a.lower() in doc_anchors, f"[{label}] {a}: {doc.relative_to(ROOT)} has no section '## {a}'")
    f.check(len(alerts) == len(set(alerts)), f"[{label}] duplicate alert names")
    return alerts


def rules_of(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def cmd_alerts(args: argparse.Namespace) -> None:
    f = Failures()
    out = Path(args.out).parent / "rules"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    settings = chart_values["metrics"]["prometheusRule"]["rules"]
    base = chart_values["metrics"]["prometheusRule"]["runbookBase"]
    src = yaml.safe_load(RULES_SOURCE.read_text())
    src_alerts = [r["alert"] for g in src["groups"] for r in g["rules"] if "alert" in r]
    f.check(sorted(src_alerts) == sorted(settings),
            f"values.yaml metrics.prometheusRule.rules {sorted(set(settings) ^ set(src_alerts))} "
            "do not match the alerts of files/prometheus/rules.yaml")

    # Default form: what deploy/prometheus/alerts.yaml holds.
    default = alert_groups({})
    (out / "alerts.yaml").write_text(rule_file_text(default))
    alerts = check_alert_rules(f, "default", default, base)
    off = sorted(a for a, s in settings.items() if not s.get("enabled", True))
    f.check(sorted(set(src_alerts) - set(alerts)) == off, f"[default] rendered alerts miss {sorted(set(src_alerts) - set(alerts) - set(off))}")
    f.check(yaml.safe_load(PLAIN_ALERTS.read_text())["groups"] == default,
            f"{PLAIN_ALERTS.relative_to(ROOT)} is not the default rendering (run scripts/check-deploy --sync)")
    print(f"  ok   [default] {len(alerts)} alerts ({len(off)} off by default: {', '.join(off)}), "
          f"each with severity, summary, description, runbook_url -> docs/runbooks.md")

    # Custom form: overrides take effect exactly where asked.
    custom_values = yaml.safe_load(CUSTOM_ALERT_VALUES.read_text())
    custom = alert_groups(custom_values)
    (out / "alerts_custom.yaml").write_text(rule_file_text(custom))
    cpr = custom_values["metrics"]["prometheusRule"]
    check_alert_rules(f, "custom", custom, cpr.get("runbookBase", base), roster_runbook_base(cpr, cpr.get("runbookBase", base)))
    got, dflt = rules_of(custom), rules_of(default)
    for a, over in cpr.get("rules", {}).items():
        if over.get("enabled") is False:
            f.check(a not in got, f"[custom] {a} is disabled but rendered")
            continue
        if not f.check(a in got, f"[custom] {a} is enabled but not rendered"):
            continue
        r = got[a]
        if "threshold" in over:
            th = over["threshold"]
            num = str(int(th)) if float(th).is_integer() else str(th)
            f.check(re.search(rf"(?<![\w.]){re.escape(num)}(?![\w.])", r["expr"]) is not None,
                    f"[custom] {a}: threshold {num} not in expr {r['expr']!r}")
        if "for" in over:
            f.check(r.get("for") == over["for"], f"[custom] {a}: for {r.get('for')!r} != {over['for']!r}")
        if "severity" in over:
            f.check(r["labels"]["severity"] == over["severity"], f"[custom] {a}: severity not overridden")
        for k, v in (over.get("labels") or {}).items():
            f.check(r["labels"].get(k) == v, f"[custom] {a}: label {k}={v} missing")
    untouched = [a for a in dflt if a in got and a not in cpr.get("rules", {})
                 and "${selector}" not in json.dumps(rules_of(src["groups"])[a])
                 and "${roster_selector}" not in json.dumps(rules_of(src["groups"])[a])]
    for a in untouched:
        f.check({**got[a], "annotations": {}} == {**dflt[a], "annotations": {}}, f"[custom] {a} changed although not overridden")
    if "targetSelector" in cpr:
        f.check(cpr["targetSelector"] in got.get("HookbusTargetMissing", {}).get("expr", ""),
                "[custom] targetSelector not used by HookbusTargetMissing")
    if "rosterTargetSelector" in cpr:
        f.check(cpr["rosterTargetSelector"] in got.get("HookbusRosterDown", {}).get("expr", ""),
                "[custom] rosterTargetSelector not used by HookbusRosterDown")
    roster_default = [a for g in default if g["name"] == ROSTER_GROUP for a in rules_of([g])]
    f.check(bool(roster_default) and all(dflt[a]["annotations"]["runbook_url"].startswith("docs/roster.md#")
                                         for a in roster_default),
            f"[default] the roster alerts {roster_default} do not link to docs/roster.md")
    print(f"  ok   [custom] {len(got)} alerts: overrides of {', '.join(sorted(cpr.get('rules', {})))} applied, "
          f"{len(untouched)} others unchanged")

    # Every alert disabled: only the recording rules remain.
    none = alert_groups({"metrics": {"prometheusRule": {"rules": {a: {"enabled": False} for a in src_alerts}}}})
    (out / "alerts_disabled.yaml").write_text(rule_file_text(none))
    f.check(not rules_of(none) and any(r.get("record") for g in none for r in g["rules"]),
            f"[all disabled] alerts still rendered: {sorted(rules_of(none))}")
    print("  ok   [all disabled] no alert rendered, recording rules kept")

    # Mistakes are refused at render time.
    for bad, why in (({"HookbusSpoolFiling": {"threshold": 0.9}}, "names no alert"),
                     ({"HookbusSinkDown": {"threshold": 1}}, "has no threshold"),
                     ({"HookbusSpoolFilling": {"severity": "page"}}, "severity")):
        try:
            alert_groups({"metrics": {"prometheusRule": {"rules": bad}}})
            f.fail(f"rules {bad} rendered; expected a refusal ({why})")
        except Exception as e:  # noqa: BLE001
            f.check(why in str(e), f"rules {bad} refused for another reason: {' '.join(str(e).split())[:200]}")
    print("  ok   a misspelt alert, a threshold on an alert without one, an unknown severity: refused")

    # Links inside docs/runbooks.md and docs/roster.md lead somewhere.
    for doc in (RUNBOOKS, ROSTER_DOC):
        if doc.exists():
            text = doc.read_text()
            anchors = github_anchors(text)
            for link in sorted(set(re.findall(r"\]\(#([^)]+)\)", text))):
                f.check(link in anchors, f"{doc.relative_to(ROOT)} links to #{link}, which is no heading")

    # The promtool tests cover every alert: each fires somewhere (default or custom form),
    # and the healthy scenario expects silence from every alert that is on by default.
    fired, healthy = set(), set()
    for test_file in (DEPLOY / "prometheus" / "alerts_test.yaml", DEPLOY / "prometheus" / "alerts_custom_test.yaml"):
        for tcase in yaml.safe_load(test_file.read_text())["tests"]:
            for at in tcase.get("alert_rule_test", []):
                if at.get("exp_alerts"):
                    fired.add(at["alertname"])
                elif tcase["name"] == "healthy":
                    healthy.add(at["alertname"])
    f.check(not set(src_alerts) - fired, f"alerts never fired by a promtool test: {sorted(set(src_alerts) - fired)}")
    f.check(not set(src_alerts) - healthy,
            f"alerts missing from the 'healthy' promtool test: {sorted(set(src_alerts) - healthy)}")
    print(f"  ok   promtool tests fire each of the {len(src_alerts)} alerts; the healthy scenario checks all of them")

    # Every ci/*.yaml: the rules it renders (with its additionalGroups), for promtool.
    for name, values in cases():
        docs = docs_of(render(values))
        for pr in by_kind(docs, "PrometheusRule"):
            slug = name.replace("ci/", "ci-").removesuffix(".yaml")
            (out / f"{slug}.yaml").write_text(rule_file_text(pr["spec"]["groups"]))
            vpr = (values.get("metrics", {}).get("prometheusRule", {}) or {})
            check_alert_rules(f, name, [g for g in pr["spec"]["groups"] if g["name"].startswith("hookbus.")],
                              vpr.get("runbookBase", base), roster_runbook_base(vpr, vpr.get("runbookBase", base)))
            print(f"  ok   [{name}] PrometheusRule rules written for promtool")
    f.exit("alert rules")


def cmd_configcheck(args: argparse.Namespace) -> None:
    import base64
    import tempfile

    from material import FILE_KEYS, Material  # noqa: PLC0415 - sibling module

    f = Failures()
    work = Path(tempfile.mkdtemp(prefix="hookbus-configcheck-"))
    material = Material(work / "generated")
    # (name, toml, secret files, mount, the pod's HOOKBUS_AUTH_TOKEN or None)
    targets: list[tuple[str, str, dict[str, str], str, str | None]] = []
    pubnub_keys: dict[str, str] = {}  # the roster container's HOOKBUS_PUBNUB_SECRET_KEY, by case
    for name, values in cases():
        docs = docs_of(render(values))
        got = config_toml_of(docs)
        if not f.check(got is not None, f"[{name}] no config.toml rendered"):
            continue
        v = merged(values)
        mount = v["secretFiles"]["mountPath"].rstrip("/")
        files: dict[str, str] = {}
        for s in by_kind(docs, "Secret"):
            if s["metadata"]["name"].endswith("-files"):
                files = {k: base64.b64decode(x).decode() for k, x in (s.get("data") or {}).items()}
        targets.append((name, got[0], files, mount, pod_token(docs)))
        key = pod_pubnub_key(docs)
        if key is not None:
            pubnub_keys[name] = key
    # A hookbus without the roster (`hookbus roster` unknown) cannot read [roster]: the roster's
    # renderings are then skipped, saying so, instead of failing on a section it predates.
    probe = subprocess.run([args.hookbus, "roster", "--help"], capture_output=True, text=True, timeout=60)
    roster_mode = probe.returncode == 0
    kust = Path(args.out) / "config" / "kustomize.toml"
    if kust.exists():
        targets.append(("kustomize", kust.read_text(), {}, "/etc/hookbus/secrets", pod_token(kustomize_docs(f))))
    for name, text, files, mount, token in targets:
        slug = re.sub(r"[^A-Za-z0-9.-]+", "-", name)
        case = work / slug
        secrets = case / "secrets"
        secrets.mkdir(parents=True)
        # The pod mounts the files Secret at `mount`; here it is case/secrets.
        text = text.replace(mount + "/", str(secrets) + "/")
        for fname, content in files.items():
            (secrets / fname).write_text(content)
        cfg = tomllib.loads(text)
        if "roster" in cfg and not roster_mode:
            print(f"  note [{name}] not checked: this hookbus has no `hookbus roster` ({args.hookbus} roster --help: "
                  f"exit {probe.returncode}), so it cannot read the [roster] section the chart renders with roster.enabled")
            continue
        made = []
        for key, value in config_strings(cfg):
            kind = FILE_KEYS.get(key)
            if kind and value.startswith("/") and not Path(value).exists():
                f.check(value.startswith(str(secrets) + "/"),
                        f"[{name}] {key} = {value!r} is not under secretFiles.mountPath {mount}: nothing mounts it")
                material.write(Path(value), kind)
                made.append(f"{Path(value).name} ({kind})")
            for ref in re.findall(r"\$\{file:([^}]+)\}", value):
                path = Path(ref)
                if not path.exists():
                    material.write(path, "secret")
                    made.append(f"{path.name} (file reference)")
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKBUS_")}
        refs = sorted(env_references(cfg))
        for ref in refs:
            env[ref] = f"check-deploy-{ref.lower()}"
        # The webhook token as the pod gets it (hookbus exits 64 without one unless
        # allow_anonymous): the rendered Secret's value, a stand-in for a Secret of the user's.
        if token is not None:
            env[TOKEN] = token
            refs.append(f"{TOKEN} (from the pod spec)")
        # The Here Now secret key as the roster pod gets it (hookbus then requires the publish key).
        if name in pubnub_keys:
            env[PUBNUB_SECRET] = pubnub_keys[name]
            refs.append(f"{PUBNUB_SECRET} (from the roster pod spec)")
        (case / "config.toml").write_text(text)
        proc = subprocess.run([args.hookbus, "--config", str(case / "config.toml"), "--check"],
                              capture_output=True, text=True, env=env, timeout=60)
        detail = "; ".join(x for x in (f"env {', '.join(refs)}" if refs else "",
                                       f"files from values: {', '.join(sorted(files))}" if files else "",
                                       f"generated {', '.join(made)}" if made else "") if x)
        if f.check(proc.returncode == 0,
                   f"[{name}] hookbus --check exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:600]}"):
            print(f"  ok   hookbus --check accepts [{name}]{' (' + detail + ')' if detail else ''}")
    shutil.rmtree(work, ignore_errors=True)
    f.check(len(targets) > 1, "no rendered config.toml to check")
    f.exit(f"hookbus --check on {len(targets)} rendered config.toml files")


def pod_pubnub_key(docs: list[tuple[str, dict]]) -> str | None:
    """The HOOKBUS_PUBNUB_SECRET_KEY the roster container of these manifests gets from its env
    (a rendered Secret's value, else a stand-in for a Secret of the user's); None without one."""
    roster = [d for d in by_kind(docs, "Deployment") if is_roster(d)]
    if not roster:
        return None
    c = roster[0]["spec"]["template"]["spec"]["containers"][0]
    entry = next((e for e in c.get("env") or [] if e.get("name") == PUBNUB_SECRET), None)
    if entry is None:
        return None
    if "value" in entry:
        return str(entry["value"])
    ref = (entry.get("valueFrom") or {}).get("secretKeyRef") or {}
    data = next((s.get("data") or {} for s in by_kind(docs, "Secret") if s["metadata"]["name"] == ref.get("name")), {})
    return base64_text(data[ref["key"]]) if ref.get("key") in data else "check-deploy-pubnub-secret-key-from-a-secret-of-the-user"


def pod_token(docs: list[tuple[str, dict]]) -> str | None:
    """The HOOKBUS_AUTH_TOKEN the hookbus container of these manifests would get: the value
    from a rendered Secret or a literal, a stand-in when it comes from a Secret they do not
    hold (an existing one), None when it gets none."""
    import base64  # noqa: PLC0415

    wl = bridge_workload(docs)
    c = next(c for c in wl["spec"]["template"]["spec"]["containers"] if c["name"] == "hookbus")
    secrets = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}
    route = token_route(c, secrets)
    if route is None:
        return None
    how, what = route
    if how == "env":
        if "value" in what:
            return str(what["value"])
        ref = (what.get("valueFrom") or {}).get("secretKeyRef") or {}
        name, key = ref.get("name"), ref.get("key")
    else:
        name, key = what, TOKEN
    data = (secrets.get(name) or {}).get("data") or {}
    if key in data:
        return base64.b64decode(data[key]).decode()
    return "check-deploy-token-from-a-secret-of-the-user"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["lint", "render", "schema", "kube", "sync", "alerts", "configcheck"])
    p.add_argument("--hookbus", default=str(ROOT / "target" / "debug" / "hookbus"), help="configcheck: the binary")
    p.add_argument("--out", default=str(ROOT / "target" / "check-deploy" / "rendered"))
    p.add_argument("--kube-versions", default="1.31,latest",
                   help="comma-separated Kubernetes versions; 'latest' = newest kubernetes-validate knows")
    p.add_argument("--fix", action="store_true",
                   help="sync: copy deploy/ files into the chart, generate alerts.yaml and the chart README table")
    args = p.parse_args()
    if "latest" in args.kube_versions:
        from kubernetes_validate import utils as kvu
        args.kube_versions = args.kube_versions.replace("latest", kvu.latest_version())
    args.kube_versions = list(dict.fromkeys(v.strip() for v in args.kube_versions.split(",")))
    os.chdir(ROOT)
    {"lint": cmd_lint, "render": cmd_render, "schema": cmd_schema, "kube": cmd_kube, "sync": cmd_sync,
     "alerts": cmd_alerts, "configcheck": cmd_configcheck}[args.command](args)


if __name__ == "__main__":
    main()
