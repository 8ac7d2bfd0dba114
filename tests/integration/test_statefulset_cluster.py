"""Two ``tilepipe run`` processes as one Bytewax cluster, started the way the StatefulSet does.

Each process gets only what a pod gets: the shared settings (ConfigMap) and
its own pod name, from which it derives its process id and its peers'
addresses. On loopback each "pod" has its own address (127.0.0.1 and
127.1.0.1, the same peer port), as each pod has its own IP. Recovery is
per pod. The cluster reads a four-partition topic; the final state of every
tile in Redis, and the outcome counts, equal a single process's.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.support.events import tile_record
from tests.support.job import SUMMARY, key_of, run_to_end
from tests.support.services import free_port

pytestmark = pytest.mark.integration

TILES, VERSIONS = 40, 15


def pod_env(ordinal: int, peer_port: int, metrics_port: int, recovery: str) -> dict[str, str]:
    configmap = {
        "TILEPIPE_CLUSTER_REPLICAS": "2",
        "TILEPIPE_CLUSTER_SERVICE": "tilepipe-peers",
        "TILEPIPE_CLUSTER_PORT": str(peer_port),
        # In Kubernetes: the default "{pod}.{service}:{port}", one IP per pod.
        "TILEPIPE_CLUSTER_ADDRESS": "127.{ordinal}.0.1:{port}",
        "TILEPIPE_RECOVERY_LAYOUT": "per_pod",
        "TILEPIPE_RECOVERY_DIR": recovery,
        "TILEPIPE_PROGRESS_INTERVAL": "3600",
    }
    pod = {"TILEPIPE_POD_NAME": f"tilepipe-{ordinal}", "TILEPIPE_METRICS_PORT": str(metrics_port)}
    return {**os.environ, **configmap, **pod}


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def final_state(redis_client, prefix: str) -> dict[str, tuple[int, str]]:
    out = {}
    for k in redis_client.keys(f"{prefix}:tile:*"):
        msg = json.loads(redis_client.hget(k, "msg"))
        out[k.decode().split(":", 2)[2]] = (msg["version"], msg["hash"])
    return out


def test_statefulset_style_cluster_equals_one_process(kafka, redis_url, redis_client, tmp_path):
    topic = kafka.new_topic("sts", partitions=4)
    now = int(time.time() * 1000)
    events = [tile_record(event_id=f"s{x}-{v}", version=v, x=x, ts=now + v)
              for v in range(1, VERSIONS + 1) for x in range(TILES)]  # fmt: skip
    random.Random(7).shuffle(events)  # out of order within the allowed lateness
    events += [b"not json", events[3], tile_record(event_id="z", version=1, x=5, ts=now, z=1)]
    kafka.produce(topic, events, key=key_of)
    expected = {"in": len(events), "broadcast": len(events) - 3, "duplicate": 1, "stale": 0,
                "dead_letter": 2}  # fmt: skip

    # One process, to the end of the topic.
    done = run_to_end("--source", kafka.url(topic), "--sink", f"{redis_url}?prefix=one",
                      "--dlq", "file:/dev/null")  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    single = final_state(redis_client, "one")
    assert len(single) == TILES and {v for v, _ in single.values()} == {VERSIONS}

    # Two "pods": the same command, the same settings, different pod names.
    peer_port, metrics = free_port(), [free_port(), free_port()]
    recovery = [tmp_path / "pod-0", tmp_path / "pod-1"]
    cmd = [sys.executable, "-m", "tilepipe", "run", "--source", kafka.url(topic),
           "--sink", f"{redis_url}?prefix=two", "--dlq", "file:/dev/null"]  # fmt: skip
    pods = [
        subprocess.Popen(
            cmd,
            env=pod_env(i, peer_port, metrics[i], str(recovery[i])),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 90
        while final_state(redis_client, "two") != single:
            assert all(p.poll() is None for p in pods), "a pod exited early"
            assert time.monotonic() < deadline, "the cluster never reached the single result"
            time.sleep(0.3)
        # Both processes joined, own their partitions, and say so on /readyz.
        owned: dict[int, set[str]] = {}
        for i in range(2):
            deadline = time.monotonic() + 20
            while (status := get(metrics[i], "/readyz"))[0] != 200:
                assert time.monotonic() < deadline, f"pod {i} not ready: {status}"
                time.sleep(0.3)
            page = get(metrics[i], "/metrics")[1]
            owned[i] = set(re.findall(r'tilepipe_kafka_consumer_lag\{[^}]*partition="(\d)"', page))
        assert owned[0] and owned[1] and not owned[0] & owned[1], owned
        assert owned[0] | owned[1] == {"0", "1", "2", "3"}
    finally:
        for p in pods:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        errs = [p.communicate(timeout=60)[1].decode() for p in pods]
    assert [p.returncode for p in pods] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    keys = ("in", "broadcast", "duplicate", "stale", "dead_letter")
    totals = dict.fromkeys(keys, 0)
    for err in errs:
        m = SUMMARY.search(err)
        assert m, err[-2000:]
        for k, v in zip(keys, map(int, m.groups()), strict=True):
            totals[k] += v
    assert totals == expected
    assert '"process 1 of a cluster of 2: 127.0.0.1:' in errs[1]
    # Per-pod recovery: pod 0's volume holds every partition, pod 1's none.
    assert len(list(recovery[0].glob("part-*.sqlite3"))) == 4
    assert not list(recovery[1].glob("part-*"))
