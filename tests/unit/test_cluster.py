"""A StatefulSet pod finds its Bytewax process id and its peers from its own name."""

from __future__ import annotations

import pytest

from dataflows.run import place_in_cluster
from dataflows.settings import Settings
from tilepipe.cli import main
from tilepipe.cluster import place_from_hostname
from tilepipe.config import settings_from_flags
from tilepipe.errors import ConfigError


def test_ordinal_and_peers_from_a_statefulset_hostname():
    place = place_from_hostname("tilepipe-2", 3, service="tilepipe-peers", port=2101)
    assert place.process_id == 2
    assert place.addresses == [
        "tilepipe-0.tilepipe-peers:2101",
        "tilepipe-1.tilepipe-peers:2101",
        "tilepipe-2.tilepipe-peers:2101",
    ]
    assert place.joined == ";".join(place.addresses)


def test_names_with_dashes_and_fully_qualified_hostnames():
    place = place_from_hostname(
        "tile-pipe-eu-10.tilepipe-peers.maps.svc.cluster.local", 12, service="s", port=1
    )
    assert place.process_id == 10
    assert place.addresses[0] == "tile-pipe-eu-0.s:1"
    assert place.addresses[11] == "tile-pipe-eu-11.s:1"


def test_address_template_fills_every_field():
    place = place_from_hostname(
        "job-1", 2, service="peers", port=2101, address="{name}/{ordinal}/{pod}.{service}.ns:{port}"
    )
    assert place.addresses == ["job/0/job-0.peers.ns:2101", "job/1/job-1.peers.ns:2101"]


@pytest.mark.parametrize(
    ("hostname", "replicas", "says"),
    [
        ("tilepipe", 2, "ordinal"),
        ("tilepipe-x", 2, "ordinal"),
        ("tilepipe-2", 2, "replicas"),
        ("tilepipe-0", 0, "at least 1"),
    ],
)
def test_clear_errors_for_a_pod_that_is_not_part_of_the_cluster(hostname, replicas, says):
    with pytest.raises(ValueError, match=says):
        place_from_hostname(hostname, replicas, service="s", port=1)


def _settings_from_env(monkeypatch, **env):
    for k in list(__import__("os").environ):
        if k.startswith("TILEPIPE_"):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import argparse

    return settings_from_flags(Settings, argparse.Namespace())


def test_settings_from_the_environment_place_the_process(monkeypatch):
    settings = _settings_from_env(
        monkeypatch,
        TILEPIPE_CLUSTER_REPLICAS="2",
        TILEPIPE_CLUSTER_SERVICE="peers",
        TILEPIPE_CLUSTER_PORT="3000",
        TILEPIPE_POD_NAME="tilepipe-1",
    )
    placed = place_in_cluster(settings, hostname="ignored-7")
    assert placed.process_id == 1
    assert placed.addresses == "tilepipe-0.peers:3000;tilepipe-1.peers:3000"


def test_hostname_is_used_without_a_pod_name(monkeypatch):
    settings = _settings_from_env(monkeypatch, TILEPIPE_CLUSTER_REPLICAS="3")
    placed = place_in_cluster(settings, hostname="tilepipe-0")
    assert placed.process_id == 0
    assert placed.addresses.split(";")[2] == "tilepipe-2.tilepipe-peers:2101"


def test_explicit_process_id_and_no_replicas_are_left_alone(monkeypatch):
    plain = _settings_from_env(monkeypatch)
    assert place_in_cluster(plain, hostname="tilepipe-1") is plain
    explicit = _settings_from_env(
        monkeypatch, TILEPIPE_CLUSTER_REPLICAS="2", TILEPIPE_PROCESS_ID="0",
        TILEPIPE_ADDRESSES="a:1;b:2",
    )  # fmt: skip
    assert place_in_cluster(explicit, hostname="tilepipe-1") is explicit


def test_a_bad_hostname_stops_the_cli_with_one_line(monkeypatch, capsys):
    _settings_from_env(monkeypatch)
    monkeypatch.setenv("TILEPIPE_CLUSTER_REPLICAS", "2")
    monkeypatch.setenv("TILEPIPE_POD_NAME", "laptop")
    assert main(["run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tilepipe run: cluster placement: hostname 'laptop'")
    assert "\n" not in err


def test_workers_and_replicas_do_not_mix(monkeypatch):
    settings = _settings_from_env(monkeypatch, TILEPIPE_CLUSTER_REPLICAS="2", TILEPIPE_WORKERS="2")
    with pytest.raises(ConfigError, match="leave --workers at 1"):
        place_in_cluster(settings, hostname="tilepipe-0")
