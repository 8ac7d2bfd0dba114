"""The Kubernetes manifests render, validate against the Kubernetes schemas, and fit together.

Offline: ``kubectl kustomize`` renders ``k8s/``; ``kubernetes-validate``
(which bundles the schemas) validates every built-in object strictly. The
custom resources (ServiceMonitor, PrometheusRule) have no bundled schema, so
what matters about them is checked directly: the ServiceMonitor selects the
metrics Service and names its port; the rules parse (``promtool``) and name
only metrics the job exports.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest

import sources.kafka  # noqa: F401  (registers every metric the job exports)
import tilepipe.metrics  # noqa: F401
from dataflows.settings import Settings
from gateway import metrics as gateway_metrics
from render import metrics as render_metrics  # noqa: F401  (and every render worker metric)
from tests.support import observability as obs

K8S_VERSION = "1.30"
BUILTIN_GROUPS = ("v1", "apps/v1", "policy/v1", "autoscaling/v2")

needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="needs kubectl (for `kubectl kustomize`)"
)


def render(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    docs = render(obs.K8S)
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


@needs_kubectl
def test_every_builtin_object_validates_against_the_kubernetes_schema(objects):
    kinds = {kind for kind, _ in objects}
    assert {"StatefulSet", "Service", "ConfigMap", "Secret", "PodDisruptionBudget",
            "ServiceMonitor", "PrometheusRule", "Namespace", "ServiceAccount", "Deployment",
            "HorizontalPodAutoscaler", "PodMonitor"} <= kinds  # fmt: skip
    for (kind, name), obj in objects.items():
        if obj["apiVersion"] in BUILTIN_GROUPS:
            try:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{kind}/{name}: {e.message} at {'.'.join(map(str, e.path))}")
        else:
            assert obj["apiVersion"] == "monitoring.coreos.com/v1", f"{kind}/{name}: unchecked"
        assert obj["metadata"].get("namespace", "tilepipe") == "tilepipe"


@needs_kubectl
def test_statefulset_runs_one_bytewax_cluster(objects):
    sts = objects[("StatefulSet", "tilepipe")]["spec"]
    peers = objects[("Service", sts["serviceName"])]["spec"]
    config = objects[("ConfigMap", "tilepipe-config")]["data"]
    pod = sts["template"]["spec"]
    (container,) = pod["containers"]
    # Peers resolve before they are ready, and all processes start together.
    assert peers["clusterIP"] == "None" and peers["publishNotReadyAddresses"] is True
    assert sts["podManagementPolicy"] == "Parallel"
    assert int(config["TILEPIPE_CLUSTER_REPLICAS"]) == sts["replicas"]
    assert config["TILEPIPE_CLUSTER_SERVICE"] == sts["serviceName"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["peers"] == int(config["TILEPIPE_CLUSTER_PORT"])
    assert ports["metrics"] == int(config["TILEPIPE_METRICS_PORT"])
    assert {p["targetPort"] for p in peers["ports"]} == {"peers"}
    # The pod name is the process id's source.
    env = {e["name"]: e for e in container.get("env", [])}
    assert env["TILEPIPE_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # Probes on the metrics port; recovery on a per-pod volume.
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["recovery"] == config["TILEPIPE_RECOVERY_DIR"]
    assert [t["metadata"]["name"] for t in sts["volumeClaimTemplates"]] == ["recovery"]
    assert config["TILEPIPE_RECOVERY_LAYOUT"] == "per_pod"
    assert int(config["TILEPIPE_RECOVERY_PARTITIONS"]) >= sts["replicas"]
    # Limits, non-root, nothing to escalate.
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


@needs_kubectl
def test_every_configured_setting_is_one_tilepipe_knows(objects, monkeypatch):
    """pydantic-settings ignores unknown variables, so a typo would be silently dropped."""
    config = objects[("ConfigMap", "tilepipe-config")]["data"]
    secret = objects[("Secret", "tilepipe-secrets")]["stringData"]
    known = {f"TILEPIPE_{name.upper()}" for name in Settings.model_fields}
    known.add("TILEPIPE_PROGRESS_INTERVAL")  # read by the runner for its progress line
    assert set(config) | set(secret) <= known, (set(config) | set(secret)) - known
    for key, value in {**config, **secret}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TILEPIPE_POD_NAME", "tilepipe-1")
    from tilepipe.cli import place_in_cluster

    placed = place_in_cluster(Settings())
    assert placed.process_id == 1
    assert placed.addresses == "tilepipe-0.tilepipe-peers:2101;tilepipe-1.tilepipe-peers:2101"


@needs_kubectl
def test_selectors_match_the_pods(objects):
    pod_labels = objects[("StatefulSet", "tilepipe")]["spec"]["template"]["metadata"]["labels"]
    metrics = objects[("Service", "tilepipe-metrics")]
    for kind, name in (("Service", "tilepipe-metrics"), ("Service", "tilepipe-peers")):
        assert objects[(kind, name)]["spec"]["selector"].items() <= pod_labels.items()
    pdb = objects[("PodDisruptionBudget", "tilepipe")]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    monitor = objects[("ServiceMonitor", "tilepipe")]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items()
    port_names = {p["name"] for p in metrics["spec"]["ports"]}
    assert {e["port"] for e in monitor["endpoints"]} <= port_names


@needs_kubectl
def test_dashboard_is_provisionable_from_its_configmap(objects):
    cm = objects[("ConfigMap", "tilepipe-grafana-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (body,) = cm["data"].values()
    doc = json.loads(body)
    assert doc == obs.dashboard()
    assert doc["uid"] == "tilepipe-overview" and "__inputs" not in doc
    assert "${DS_" not in body  # only interactive import fills __inputs
    assert doc["templating"]["list"][0] == {**doc["templating"]["list"][0],
                                            "name": "datasource", "type": "datasource",
                                            "query": "prometheus"}  # fmt: skip
    for p in obs.panels(doc):
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"])


def test_dashboard_and_alerts_name_only_metrics_the_job_exports():
    exported = obs.exported_names(generate_latest(REGISTRY).decode()) | obs.exported_names(
        generate_latest(gateway_metrics.REGISTRY).decode()
    )
    queries = obs.dashboard_queries(obs.dashboard()) + obs.rule_exprs()
    for where, expr in queries:
        assert obs.metric_names(expr) <= exported, (where, obs.metric_names(expr) - exported)
    wanted = {"tilepipe_events_in_total", "tilepipe_events_total", "tilepipe_dead_letters_total",
              "tilepipe_late_events_total", "tilepipe_end_to_end_latency_seconds_bucket",
              "tilepipe_processing_latency_seconds_bucket", "tilepipe_watermark_lag_seconds",
              "tilepipe_kafka_consumer_lag", "tilepipe_tiles_tracked",
              "tilepipe_tile_updates_total", "tilepipe_render_triggers_total",
              "tilepipe_broadcast_errors_total", "tilepipe_broadcast_retries_total",
              "tilepipe_render_queue_depth", "tilepipe_render_dead_letters",
              "tilepipe_render_jobs_total", "tilepipe_render_latency_seconds_bucket",
              "tilepipe_render_degraded_total", "tilepipe_render_circuit_open",
              "tilepipe_render_cache_invalidations_total",
              "tilepipe_render_purges_total", "tilepipe_gateway_connections",
              "tilepipe_gateway_delivered_total", "tilepipe_gateway_received_total",
              "tilepipe_gateway_delivery_latency_seconds_bucket",
              "tilepipe_gateway_slow_closes_total", "tilepipe_gateway_resyncs_total",
              "tilepipe_gateway_redis_subscribed"}  # fmt: skip
    used = set().union(*(obs.metric_names(e) for _, e in queries))
    assert wanted <= used, wanted - used


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (apt: prometheus)")
def test_alert_rules_parse_and_fire_when_they_should(tmp_path):
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": obs.rule_groups()}))
    check = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True,
                           text=True)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    alerts = {a for a, _ in obs.rule_exprs()}
    assert {"TilepipeConsumerLagGrowing", "TilepipeDeadLetterSpike", "TilepipeEndToEndLatencyHigh",
            "TilepipeNoOutput", "TilepipeRenderQueueGrowing", "TilepipeRenderJobsDead",
            "TilepipeRenderLatencyHigh", "TilepipeGatewayRedisUnsubscribed",
            "TilepipeGatewayDeliveryLatencyHigh",
            "TilepipeGatewaySlowClients"} <= alerts  # fmt: skip
    # Firing is what is tested here; the annotations' templates were checked above.
    bare = tmp_path / "bare.yml"
    bare.write_text(yaml.safe_dump({"groups": [
        {**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
        for g in obs.rule_groups()
    ]}))  # fmt: skip
    lbl = 'namespace="maps", job="tilepipe-metrics"'
    rlbl = 'namespace="maps", job="tilepipe-render"'
    calm = 'namespace="calm", job="tilepipe-render"'  # a busy but healthy render deployment
    glbl = 'namespace="maps", job="tilepipe-gateway"'
    glat = "tilepipe_gateway_delivery_latency_seconds_bucket"
    cases = {
        "rule_files": [str(bare)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # lag climbs by 1000 a minute from 20k; partition 1 steady
                    {
                        "series": f'tilepipe_kafka_consumer_lag{{{lbl}, topic="t", partition="0"}}',
                        "values": "20000+1000x40",
                    },
                    {
                        "series": f'tilepipe_kafka_consumer_lag{{{lbl}, topic="t", partition="1"}}',
                        "values": "10x40",
                    },
                    # 100/s in, nothing comes out
                    {"series": f"tilepipe_events_in_total{{{lbl}}}", "values": "0+6000x40"},
                    {
                        "series": f'tilepipe_events_total{{{lbl}, outcome="broadcast"}}',
                        "values": "0x40",
                    },
                    # 10/s dead-lettered
                    {
                        "series": f'tilepipe_dead_letters_total{{{lbl}, reason="invalid_json"}}',
                        "values": "0+600x40",
                    },
                    # every publish takes 5-10 s
                    {
                        "series": f'tilepipe_end_to_end_latency_seconds_bucket{{{lbl}, le="2.5"}}',
                        "values": "0x40",
                    },
                    {
                        "series": f'tilepipe_end_to_end_latency_seconds_bucket{{{lbl}, le="10.0"}}',
                        "values": "0+60x40",
                    },
                    {
                        "series": f'tilepipe_end_to_end_latency_seconds_bucket{{{lbl}, le="+Inf"}}',
                        "values": "0+60x40",
                    },
                    # render queue: two workers see 2,000 jobs growing by 100 a minute; the calm
                    # deployment holds a steady 5,000
                    *[
                        {
                            "series": f'tilepipe_render_queue_depth{{{rlbl}, instance="{i}"}}',
                            "values": "2000+100x40",
                        }
                        for i in ("w0", "w1")
                    ],
                    {"series": f"tilepipe_render_queue_depth{{{calm}}}", "values": "5000x40"},
                    # one job dies at minute 5, none after
                    {
                        "series": f'tilepipe_render_jobs_total{{{rlbl}, state="DEAD"}}',
                        "values": "0x4 1x35",
                    },
                    {
                        "series": f'tilepipe_render_jobs_total{{{calm}, state="DEAD"}}',
                        "values": "0x40",
                    },
                    # every render takes 10-60 s; the calm deployment's take under 0.1 s
                    {
                        "series": f'tilepipe_render_latency_seconds_bucket{{{rlbl}, le="10.0"}}',
                        "values": "0x40",
                    },
                    {
                        "series": f'tilepipe_render_latency_seconds_bucket{{{rlbl}, le="60.0"}}',
                        "values": "0+60x40",
                    },
                    {
                        "series": f'tilepipe_render_latency_seconds_bucket{{{rlbl}, le="+Inf"}}',
                        "values": "0+60x40",
                    },
                    {
                        "series": f'tilepipe_render_latency_seconds_bucket{{{calm}, le="0.1"}}',
                        "values": "0+600x40",
                    },
                    {
                        "series": f'tilepipe_render_latency_seconds_bucket{{{calm}, le="10.0"}}',
                        "values": "0+600x40",
                    },
                    {
                        "series": f'tilepipe_render_latency_seconds_bucket{{{calm}, le="+Inf"}}',
                        "values": "0+600x40",
                    },
                    # a gateway: unsubscribed from minute 3 on; deliveries take 0.5-1 s; 1 slow
                    # close a second
                    {
                        "series": f'tilepipe_gateway_redis_subscribed{{{glbl}, instance="g0"}}',
                        "values": "1x2 0x38",
                    },
                    {
                        "series": f'{glat}{{{glbl}, le="0.25"}}',
                        "values": "0x40",
                    },
                    {
                        "series": f'{glat}{{{glbl}, le="1.0"}}',
                        "values": "0+600x40",
                    },
                    {
                        "series": f'{glat}{{{glbl}, le="+Inf"}}',
                        "values": "0+600x40",
                    },
                    {
                        "series": f"tilepipe_gateway_slow_closes_total{{{glbl}}}",
                        "values": "0+60x40",
                    },
                ],
                "alert_rule_test": [
                    *[
                        {
                            "eval_time": "30m",
                            "alertname": alert,
                            "exp_alerts": [
                                {
                                    "exp_labels": {
                                        "severity": sev,
                                        **extra,
                                        "namespace": "maps",
                                        "job": "tilepipe-gateway",
                                    }
                                }
                            ],
                        }
                        for alert, sev, extra in (
                            ("TilepipeGatewayRedisUnsubscribed", "critical", {"instance": "g0"}),
                            ("TilepipeGatewayDeliveryLatencyHigh", "warning", {}),
                            ("TilepipeGatewaySlowClients", "warning", {}),
                        )
                    ],
                    {
                        "eval_time": "4m",
                        "alertname": "TilepipeGatewayRedisUnsubscribed",
                        "exp_alerts": [],
                    },  # not for 2 minutes yet
                    {
                        "eval_time": "30m",
                        "alertname": "TilepipeConsumerLagGrowing",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "namespace": "maps",
                                    "job": "tilepipe-metrics",
                                    "topic": "t",
                                }
                            }
                        ],
                    },
                    {
                        "eval_time": "30m",
                        "alertname": "TilepipeNoOutput",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "namespace": "maps",
                                    "job": "tilepipe-metrics",
                                }
                            }
                        ],
                    },
                    {
                        "eval_time": "30m",
                        "alertname": "TilepipeDeadLetterSpike",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "namespace": "maps",
                                    "job": "tilepipe-metrics",
                                }
                            }
                        ],
                    },
                    {
                        "eval_time": "30m",
                        "alertname": "TilepipeEndToEndLatencyHigh",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "namespace": "maps",
                                    "job": "tilepipe-metrics",
                                }
                            }
                        ],
                    },
                    {
                        "eval_time": "5m",
                        "alertname": "TilepipeConsumerLagGrowing",
                        "exp_alerts": [],
                    },  # not for 15 minutes yet
                    *[
                        {
                            "eval_time": "30m",
                            "alertname": alert,
                            "exp_alerts": [
                                {
                                    "exp_labels": {
                                        "severity": "warning",
                                        "namespace": "maps",
                                        "job": "tilepipe-render",
                                    }
                                }
                            ],
                        }
                        for alert in ("TilepipeRenderQueueGrowing", "TilepipeRenderLatencyHigh")
                    ],
                    {
                        "eval_time": "10m",
                        "alertname": "TilepipeRenderQueueGrowing",
                        "exp_alerts": [],
                    },  # growing, but not for 15 minutes yet
                    {
                        "eval_time": "8m",
                        "alertname": "TilepipeRenderJobsDead",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "namespace": "maps",
                                    "job": "tilepipe-render",
                                }
                            }
                        ],
                    },  # at once: no "for"
                    {
                        "eval_time": "30m",
                        "alertname": "TilepipeRenderJobsDead",
                        "exp_alerts": [],
                    },  # none died in the last 10 minutes
                ],
            }
        ],
    }
    tests = tmp_path / "tests.yml"
    tests.write_text(yaml.safe_dump(cases))
    run = subprocess.run(["promtool", "test", "rules", str(tests)], capture_output=True,
                         text=True)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


def test_dockerfile_builds_the_image_the_manifests_run():
    dockerfile = (obs.ROOT / "Dockerfile").read_text()
    kustomization = yaml.safe_load((obs.K8S / "kustomization.yaml").read_text())
    sts = yaml.safe_load((obs.K8S / "statefulset.yaml").read_text())
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert container["image"] in {i["name"] for i in kustomization["images"]}
    assert 'ENTRYPOINT ["tilepipe"]' in dockerfile and container["args"] == ["run"]
    uid = sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert f"USER {uid}:" in dockerfile
    # Every package the project installs (bench aside: it runs from a checkout) is copied
    # into the image, read from pyproject so a new package cannot be forgotten.
    import tomllib

    project = tomllib.loads((obs.ROOT / "pyproject.toml").read_text())
    included = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [p.rstrip("*") for p in included if p.rstrip("*") != "bench"]
    assert {"ingress", "render", "gateway"} <= set(packages)
    for package in packages:
        assert f"COPY {package} /src/{package}" in dockerfile, package
    assert f"python:{sys.version_info.major}.{sys.version_info.minor}" in dockerfile or (
        "python:3.11" in dockerfile
    )
