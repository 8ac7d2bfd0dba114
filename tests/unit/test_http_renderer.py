"""The http renderer against a tiny local tile server: the URL template, bounded concurrency,
a timeout, and upstream errors as failed attempts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from render.jobs import RenderJob
from render.renderers import BuiltinRenderer, HttpRenderer, RenderError, build_renderer
from render.stores import validate_tile

PNG = BuiltinRenderer().render(RenderJob("WebMercatorQuad", 1, 0, 0, 1))


class Upstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.paths: list[str] = []
        self.active = 0
        self.most_active = 0
        self.lock = threading.Lock()
        self.delay_s = 0.0

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the client that timed out hung up: a broken pipe here is expected

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Upstream

    def do_GET(self) -> None:
        s = self.server
        with s.lock:
            s.paths.append(self.path)
            s.active += 1
            s.most_active = max(s.most_active, s.active)
        try:
            time.sleep(s.delay_s)
            if self.path.startswith("/trickle/"):  # 1 byte per 0.25 s: 12 s for 48 bytes
                self.send_response(200)
                self.send_header("Content-Length", "48")
                self.end_headers()
                for _ in range(48):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.25)
                return
            if self.path.startswith("/moved/"):
                self.send_response(302)
                self.send_header("Location", "/1/0/0.png")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status, body = (503, b"busy") if "/13/" in self.path else (200, PNG)
            self.send_response(status)
            if not self.path.startswith("/unsized/"):  # else: the body ends when we close
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        finally:
            with s.lock:
                s.active -= 1

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_fetches_the_tile_from_the_template(upstream: Upstream) -> None:
    r = build_renderer(f"http:{upstream.url}/tiles/{{z}}/{{x}}/{{y}}.png?v={{version}}")
    data = r.render(RenderJob("WebMercatorQuad", 12, 2200, 1343, 7))
    validate_tile(data, "png")
    assert upstream.paths == ["/tiles/12/2200/1343.png?v=7"]


def test_at_most_concurrency_fetches_at_once(upstream: Upstream) -> None:
    upstream.delay_s = 0.05
    r = HttpRenderer(f"{upstream.url}/{{z}}/{{x}}/{{y}}.png", concurrency=3)
    jobs = [RenderJob("WebMercatorQuad", 10, i, 1, 1) for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        assert all(pool.map(r.render, jobs))
    assert upstream.most_active == 3


def test_errors_and_timeouts_are_failed_attempts(upstream: Upstream) -> None:
    r = HttpRenderer(f"{upstream.url}/{{z}}/{{x}}/{{y}}.png", timeout_s=0.2)
    with pytest.raises(RenderError, match="503"):
        r.render(RenderJob("WebMercatorQuad", 13, 1, 1, 1))
    upstream.delay_s = 1.0
    with pytest.raises(RenderError, match=r"unreachable|too slow"):
        r.render(RenderJob("WebMercatorQuad", 12, 1, 1, 1))
    with pytest.raises(ValueError):
        HttpRenderer("ftp://nope/{z}")


def test_the_timeout_bounds_the_whole_fetch_not_each_read(upstream: Upstream) -> None:
    """L1: an upstream that trickles a byte every 0.25 s never hits a per-read timeout of
    1 s; the fetch as a whole must still end at the deadline, as a failed attempt."""
    r = HttpRenderer(f"{upstream.url}/trickle/{{z}}/{{x}}/{{y}}.png", timeout_s=1.0)
    with pytest.raises(RenderError, match="too slow"):
        r.render(RenderJob("WebMercatorQuad", 12, 1, 1, 1))
    # its slot is free again: a fetch that timed out holds none of the `concurrency` slots
    ok = HttpRenderer(f"{upstream.url}/{{z}}/{{x}}/{{y}}.png", timeout_s=1.0, concurrency=1)
    ok.slots = r.slots
    validate_tile(ok.render(RenderJob("WebMercatorQuad", 12, 1, 1, 1)), "png")


def test_redirects_are_not_followed(upstream: Upstream) -> None:
    r = HttpRenderer(f"{upstream.url}/moved/{{z}}/{{x}}/{{y}}.png", timeout_s=2)
    with pytest.raises(RenderError, match=r"302.*not followed"):
        r.render(RenderJob("WebMercatorQuad", 12, 1, 1, 1))
    assert upstream.paths == ["/moved/12/1/1.png"]


@pytest.mark.parametrize("kind", ["sized", "unsized"])
def test_a_tile_over_the_size_cap_is_a_failed_attempt(upstream: Upstream, kind: str) -> None:
    r = HttpRenderer(f"{upstream.url}/{kind}/{{z}}/{{x}}/{{y}}.png", max_bytes=len(PNG) - 1)
    with pytest.raises(RenderError, match="cap"):
        r.render(RenderJob("WebMercatorQuad", 12, 1, 1, 1))
    fits = HttpRenderer(f"{upstream.url}/{kind}/{{z}}/{{x}}/{{y}}.png", max_bytes=len(PNG))
    assert fits.render(RenderJob("WebMercatorQuad", 12, 1, 1, 1)) == PNG
