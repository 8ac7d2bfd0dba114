"""The ingress's Kubernetes manifests agree with the code they run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ingress.settings import IngressSettings

K8S = Path(__file__).parents[2] / "k8s" / "ingress"


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((K8S / name).read_text())
    return doc


def test_kustomization_lists_files_that_exist() -> None:
    for name in load("kustomization.yaml")["resources"]:
        assert (K8S / name).is_file(), name


def test_deployment_env_names_real_settings_and_the_secret_is_mounted_where_it_says() -> None:
    deployment = load("deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    fields = set(IngressSettings.model_fields)
    for name in env:
        assert name.startswith("TILEPIPE_"), name
        own = name.removeprefix("TILEPIPE_INGRESS_").lower()
        shared = name.removeprefix("TILEPIPE_").lower()
        assert own in fields or shared in fields, f"{name} is no ingress setting"
    settings = IngressSettings(**{
        k.removeprefix("TILEPIPE_INGRESS_").lower(): v
        for k, v in env.items() if k.startswith("TILEPIPE_INGRESS_")
    })  # fmt: skip
    assert settings.listen.endswith(":8080")
    [mount] = container["volumeMounts"]
    [volume] = pod["volumes"]
    secret = load("secret-hmac.example.yaml")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    key = env["TILEPIPE_HMAC_SECRETS_FILE"].removeprefix(mount["mountPath"] + "/")
    assert key in secret["stringData"]
    probes = {container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")}
    assert probes == {"/readyz", "/healthz"}
    grace = settings.shutdown_grace.total_seconds()
    assert pod["terminationGracePeriodSeconds"] > grace + 5  # drain + preStop fit


def test_service_and_edge_route_to_the_container_port() -> None:
    service = load("service.yaml")
    selector = load("deployment.yaml")["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == selector
    [port] = service["spec"]["ports"]
    assert port["targetPort"] == "http"
    [rule] = load("edge.example.yaml")["spec"]["rules"]
    [path] = rule["http"]["paths"]
    assert path["path"] == "/v1/events"  # metrics and probes stay inside the cluster
    assert path["backend"]["service"]["name"] == service["metadata"]["name"]
