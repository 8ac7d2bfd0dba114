"""What a slow or unsigned client can hold of a live ingress: time, bytes, connections.

The ingress app runs under uvicorn with the configuration ``tilepipe ingress``
uses (:func:`ingress.server.uvicorn_config`), on a loopback socket, and the
clients are raw sockets that send a request's head and then trickle its body,
as the review's reproduction did (M1). The producer is the stand-in of
tests/support/fakes.py: nothing here reaches the broker.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from ingress.app import Ingress
from ingress.server import uvicorn_config
from ingress.settings import IngressSettings
from tests.support.events import dumps, tile_event
from tests.support.fakes import SECRETS, FakeProducer
from tests.support.services import free_port
from tilepipe.client import post
from tilepipe.serving import bind

# How long a test waits for an answer before calling the server stuck. Generous: it is a
# failure ceiling, not a timing assertion.
STUCK_S = 15.0


class LiveIngress:
    def __init__(self, **settings: Any) -> None:
        self.settings = IngressSettings(
            sink="kafka://h:9092/raw", listen=f"127.0.0.1:{free_port()}", **settings
        )
        self.ingress = Ingress(self.settings, SECRETS, FakeProducer())
        self.socks = [bind(self.settings.listen)]
        if self.settings.metrics_listen is not None:
            self.socks.append(bind(self.settings.metrics_listen))
        self.port = self.socks[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(self.settings, self.ingress))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": self.socks}, daemon=True
        )

    def __enter__(self) -> LiveIngress:
        self.thread.start()
        deadline = time.monotonic() + STUCK_S
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(STUCK_S)
        for s in self.socks:
            s.close()


@pytest.fixture
def live() -> Iterator[LiveIngress]:
    with LiveIngress(body_timeout="1s", max_unauthenticated_bytes=4096) as server:
        yield server


def slow_request(port: int, declared: int, first: bytes) -> socket.socket:
    """A request head claiming ``declared`` body bytes, a current timestamp, and ``first``."""
    s = socket.create_connection(("127.0.0.1", port), timeout=STUCK_S)
    head = (
        "POST /v1/events HTTP/1.1\r\nHost: ingress\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\nX-Tilepipe-Timestamp: {int(time.time())}\r\n"
        "X-Tilepipe-Signature: sha256=00\r\n\r\n"
    )
    s.sendall(head.encode() + first)
    return s


def answer(s: socket.socket, trickle: bool = True) -> bytes:
    """What the server sends back, trickling a byte of body every 0.2 s meanwhile."""
    s.settimeout(0.2)
    got = b""
    deadline = time.monotonic() + STUCK_S
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            if trickle:
                try:
                    s.sendall(b" ")
                except OSError:  # the server closed its end
                    return got
            continue
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk
        if b"\r\n\r\n" in got and got.endswith(b"}"):
            return got
    pytest.fail(f"the server held a trickling body for {STUCK_S:.0f} s without answering")


def status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def test_a_trickling_body_is_cut_off_at_the_deadline_with_408(live) -> None:
    """M1: 8 MB declared, a byte every 0.2 s: the connection used to stay open for good."""
    s = slow_request(live.port, 8_000_000, b"x" * 1000)
    try:
        raw = answer(s)
    finally:
        s.close()
    assert status(raw) == 408, raw[:200]
    assert b'"error":"body_timeout"' in raw
    assert live.ingress.auth.unverified_bytes == 0  # released with the request


def test_unverified_bodies_together_cannot_hold_more_than_the_budget(live) -> None:
    """M1: the bytes of bodies not yet authenticated are capped across all requests."""
    a = slow_request(live.port, 8000, b"a" * 3000)
    try:
        deadline = time.monotonic() + STUCK_S
        while live.ingress.auth.unverified_bytes < 3000:  # a's bytes are in the server's hands
            assert time.monotonic() < deadline, live.ingress.auth.unverified_bytes
            time.sleep(0.01)
        b = slow_request(live.port, 8000, b"b" * 3000)
        try:
            raw = answer(b, trickle=False)
        finally:
            b.close()
        assert status(raw) == 503, raw[:200]
        assert b"Retry-After" in raw and b'"error":"busy"' in raw
        assert status(answer(a)) == 408
    finally:
        a.close()
    assert live.ingress.auth.unverified_bytes == 0
    # A signed request that arrives whole is served as usual.
    r = post(
        live.url, dumps(tile_event(event_id="after")), "application/json", secret=SECRETS["k2027"]
    )
    assert r.status == 202, r.body


def test_connections_are_capped_by_default_and_beyond_the_cap_answered_503() -> None:
    assert IngressSettings().max_connections == 1024  # was None: no cap at all
    # uvicorn counts the connection being served too: 2 lets one request in at a time.
    with LiveIngress(body_timeout="5s", max_connections=2) as live:
        hold = slow_request(live.port, 8000, b"x" * 10)
        try:
            deadline = time.monotonic() + STUCK_S
            while live.ingress.auth.unverified_bytes < 10:  # the held request is being served
                assert time.monotonic() < deadline
                time.sleep(0.01)
            r = post(
                live.url,
                dumps(tile_event(event_id="e2")),
                "application/json",
                secret=SECRETS["k2027"],
            )
            assert r.status == 503
        finally:
            hold.close()


def test_metrics_can_have_a_port_of_their_own_for_the_network_policy() -> None:
    """M9: Prometheus is admitted to the metrics port only, producers to the API port."""
    metrics_port = free_port()
    with LiveIngress(metrics_listen=f"127.0.0.1:{metrics_port}") as live:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as r:
            assert b"tilepipe_ingress_requests_total" in r.read()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{live.url}/metrics")
        assert e.value.code == 404
        with urllib.request.urlopen(f"{live.url}/healthz") as r:  # probes stay on both
            assert r.status == 200
