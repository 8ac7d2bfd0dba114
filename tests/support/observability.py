"""What the dashboard and the alert rules ask of Prometheus, read from the repo's files.

Shared by the manifest checks (offline) and the Prometheus test (a real
server scraping a running job).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
DASHBOARD = K8S / "grafana" / "tilepipe-dashboard.json"
RULES = K8S / "prometheusrule.yaml"

_METRIC = re.compile(r"\b(tilepipe_[a-z0-9_]+)\b")
_LABEL_VALUES = re.compile(r"^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*(\w+)\s*\)$")


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in doc["panels"]:
        yield p
        yield from p.get("panels", [])  # panels inside collapsed rows


def dashboard_queries(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    out = []
    for p in panels(doc):
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} {t['refId']}", t["expr"]))
    for v in doc["templating"]["list"]:
        if v["type"] == "query":
            query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = _LABEL_VALUES.match(query.strip())
            assert m, f"variable {v['name']}: only label_values(metric, label) is checked"
            out.append((f"variable {v['name']!r}", m.group(1)))
    return out


def grafana_to_promql(expr: str, rate_interval: str = "10s") -> str:
    """A panel expression as Prometheus sees it once Grafana has filled in its variables."""
    return (
        expr.replace("$__rate_interval", rate_interval)
        .replace("$__interval", rate_interval)
        .replace('"$namespace"', '".*"')
        .replace('"$job"', '".*"')
        .replace('"$render_job"', '".*"')
        .replace('"$gateway_job"', '".*"')
    )


def rule_groups() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    groups: list[dict[str, Any]] = doc["spec"]["groups"]
    return groups


def rule_exprs() -> list[tuple[str, str]]:
    return [(r["alert"], r["expr"]) for g in rule_groups() for r in g["rules"]]


def metric_names(expr: str) -> set[str]:
    return set(_METRIC.findall(expr))


def exported_names(exposition: str) -> set[str]:
    """Every series name a /metrics page can carry, from its # TYPE lines."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            if kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
    return names
