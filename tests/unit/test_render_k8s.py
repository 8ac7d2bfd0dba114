"""The render workers' Kubernetes manifests agree with the code they run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import redis
import yaml

from render.queue import RenderQueue
from render.settings import RenderSettings
from render.stores import default_staging

K8S = Path(__file__).parents[2] / "k8s" / "render"


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((K8S / name).read_text())
    return doc


def test_kustomization_lists_files_that_exist() -> None:
    kustomization = (K8S / "kustomization.yaml").read_text()
    for name in load("kustomization.yaml")["resources"]:
        assert (K8S / name).is_file(), name
    assert "keda-scaledobject.example.yaml" in kustomization  # offered, commented out
    assert (K8S / "keda-scaledobject.example.yaml").is_file()


@pytest.mark.parametrize("name", ["deployment.yaml", "pvc.yaml", "secret.example.yaml"])
def test_builtin_objects_validate(name: str) -> None:
    kubernetes_validate.validate(load(name), "1.30", strict=True)


def test_deployment_configures_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    pod = load("deployment.yaml")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["render-worker"]
    fields = set(RenderSettings.model_fields)
    env = {e["name"]: e.get("value") for e in container["env"]}
    for name in env:
        assert name.removeprefix("TILEPIPE_RENDER_").lower() in fields, name
    secret = load("secret.example.yaml")
    for e in container["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
            env[e["name"]] = secret["stringData"][ref["key"]]
    for name, value in env.items():
        if value is not None:
            monkeypatch.setenv(name, value)
    settings = RenderSettings()  # valid: the SLA outlasts a render at its timeout (L2)
    assert settings.store == "dir:/srv/tilepipe/tiles" and settings.broadcast is not None
    [mount] = container["volumeMounts"]
    # The tiles and their staging directory (beside them, L10) are both on the tile volume.
    root = Path(settings.store.removeprefix("dir:"))
    staging = Path(settings.staging) if settings.staging else default_staging(root)
    assert root.parent == staging.parent == Path(mount["mountPath"])
    [port] = container["ports"]
    assert port["containerPort"] == settings.metrics_port
    probes = {container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")}
    assert probes == {"/readyz", "/healthz"}


def test_keda_scales_the_deployment_on_the_queue_the_workers_read() -> None:
    scaled = load("keda-scaledobject.example.yaml")
    deployment = load("deployment.yaml")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    [trigger] = scaled["spec"]["triggers"]
    queue = RenderQueue(redis.Redis(), prefix=RenderSettings().prefix)
    assert trigger["type"] == "redis-streams"
    assert trigger["metadata"]["stream"] == queue.stream
    assert trigger["metadata"]["consumerGroup"] == RenderQueue.GROUP
    assert "streamLength" in trigger["metadata"]  # entries are deleted when acknowledged


def test_podmonitor_scrapes_the_workers_metrics_port() -> None:
    monitor = load("podmonitor.yaml")
    pod = load("deployment.yaml")["spec"]["template"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    [container] = pod["spec"]["containers"]
    assert endpoint["port"] in {p["name"] for p in container["ports"]}
