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
            status, body = (503, b"busy") if "/13/" in self.path else (200, PNG)
            self.send_response(status)
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
    with pytest.raises(RenderError, match=r"unreachable|timed out"):
        r.render(RenderJob("WebMercatorQuad", 12, 1, 1, 1))
    with pytest.raises(ValueError):
        HttpRenderer("ftp://nope/{z}")
