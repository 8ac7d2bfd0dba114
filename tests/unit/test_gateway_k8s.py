"""The gateway's Kubernetes manifests agree with the code they run (offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.settings import GatewaySettings

K8S = Path(__file__).parents[2] / "k8s"
GW = K8S / "gateway"


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


def test_kustomization_lists_files_that_exist_and_the_top_level_includes_it() -> None:
    for name in load(GW / "kustomization.yaml")["resources"]:
        assert (GW / name).is_file(), name
    assert "gateway" in load(K8S / "kustomization.yaml")["resources"]


@pytest.mark.parametrize(
    "name", ["deployment.yaml", "service.yaml", "poddisruptionbudget.yaml", "hpa.yaml"]
)
def test_builtin_objects_validate(name: str) -> None:
    kubernetes_validate.validate(load(GW / name), "1.30", strict=True)


def test_deployment_configures_real_settings_from_the_dataflows_secret(monkeypatch) -> None:
    deployment = load(GW / "deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["gateway"]
    fields = set(GatewaySettings.model_fields)
    secret = load(K8S / "secret.example.yaml")
    for e in container["env"]:
        name = e["name"]
        assert name.removeprefix("TILEPIPE_GATEWAY_").lower() in fields or name == (
            "TILEPIPE_LOG_LEVEL"
        ), f"{name} is no gateway setting"
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:  # the same Redis URI as the dataflow's sink
            assert ref["name"] == secret["metadata"]["name"]
            value = secret["stringData"][ref["key"]]
        else:
            value = e["value"]
        monkeypatch.setenv(name, value)
    settings = GatewaySettings()
    assert settings.redis_target()[1] == "tilepipe:tile_updated"
    [port] = container["ports"]
    assert settings.listen == f"0.0.0.0:{port['containerPort']}"
    probes = {container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")}
    assert probes == {"/readyz", "/healthz"}
    assert container["resources"]["requests"]["cpu"] == "1"  # one process, one core
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_service_pdb_hpa_and_monitor_select_the_pods() -> None:
    deployment = load(GW / "deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert load(GW / "service.yaml")["spec"]["selector"].items() <= labels.items()
    pdb = load(GW / "poddisruptionbudget.yaml")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    monitor = load(GW / "podmonitor.yaml")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    [endpoint] = monitor["podMetricsEndpoints"]
    [port] = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"
    hpa = load(GW / "hpa.yaml")["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["minReplicas"] >= 2
