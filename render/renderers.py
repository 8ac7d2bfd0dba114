"""Renderers: turn a render job into tile bytes. Pluggable by a spec string.

- ``builtin`` draws a real 256-px PNG that shows the tile id and version (for
  demos, tests and benchmarks); ``TILEPIPE_RENDER_DELAY`` adds a fixed cost
  per tile to stand in for real rendering work.
- ``command:PROGRAM ARGS...`` runs an external program with ``{tms}``,
  ``{z}``, ``{x}``, ``{y}``, ``{version}`` and ``{key}`` substituted in its
  arguments; the tile is what it writes to stdout, and a non-zero exit, or
  taking longer than the timeout, is a failed attempt.

- ``http:URL`` fetches the tile from an upstream tile server (Martin, Tegola, ...):
  ``{tms}``, ``{z}``, ``{x}``, ``{y}`` and ``{version}`` are substituted in the URL; each
  fetch has the timeout as a total deadline (connect, headers and every byte of the body:
  a per-read timeout let an upstream trickling 1 byte/s hold a fetch for 8 s at a 2 s
  timeout), a size cap, no redirects, and at most ``concurrency`` fetches run at once per
  process (the pool's threads share the renderer), so a slow upstream is not swamped.
  A non-2xx answer (a 3xx included), a timeout, a tile over the cap or a refused
  connection is a failed attempt.

A renderer raises :class:`RenderError` for a failed attempt; the worker
decides retries, back-off and degradation, not the renderer.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import shlex
import subprocess
import threading
import time
import urllib.parse
from typing import Protocol

from render.jobs import RenderJob


class RenderError(RuntimeError):
    """One render attempt failed; the message is recorded in the ledger."""


class Renderer(Protocol):
    format: str
    """The tile format, which is also the file extension: ``png``, ``mvt``, ..."""

    def render(self, job: RenderJob, stop: threading.Event | None = None) -> bytes: ...


class BuiltinRenderer:
    """A PNG showing ``z/x/y`` and the version on a colour derived from the tile."""

    format = "png"

    def __init__(self, delay_s: float = 0.0, size: int = 256) -> None:
        self.delay_s = delay_s
        self.size = size

    def render(self, job: RenderJob, stop: threading.Event | None = None) -> bytes:
        from PIL import Image, ImageDraw

        if self.delay_s > 0:
            time.sleep(self.delay_s)
        shade = hashlib.blake2b(f"{job.z}/{job.x}/{job.y}".encode(), digest_size=3).digest()
        background = tuple(160 + b % 96 for b in shade)
        img = Image.new("RGB", (self.size, self.size), background)  # type: ignore[arg-type]
        draw = ImageDraw.Draw(img)
        draw.rectangle((0, 0, self.size - 1, self.size - 1), outline=(40, 40, 40), width=2)
        draw.text((12, 12), f"{job.tms}", fill=(20, 20, 20))
        draw.text((12, 40), f"z{job.z} x{job.x} y{job.y}", fill=(0, 0, 0))
        draw.text((12, 68), f"version {job.version}", fill=(0, 0, 0))
        out = io.BytesIO()
        img.save(out, format="PNG", optimize=False)
        return out.getvalue()


class CommandRenderer:
    """Runs an external program per tile; its stdout is the tile."""

    def __init__(self, argv: list[str], format: str = "png", timeout_s: float = 60.0) -> None:
        if not argv:
            raise ValueError("command renderer: no program given (command:PROGRAM ARGS...)")
        self.argv = argv
        self.format = format
        self.timeout_s = timeout_s

    def render(self, job: RenderJob, stop: threading.Event | None = None) -> bytes:
        fields = job.fields()
        args = [a.format(**fields) for a in self.argv]
        try:
            done = subprocess.run(
                args, capture_output=True, timeout=self.timeout_s, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            raise RenderError(f"{args[0]}: no tile after {self.timeout_s:g}s") from None
        except OSError as e:
            raise RenderError(f"{args[0]}: {e.strerror or e}") from None
        if done.returncode != 0:
            tail = done.stderr.decode("utf-8", "replace").strip()[-300:]
            raise RenderError(f"{args[0]} exited with {done.returncode}: {tail}")
        return done.stdout


class HttpRenderer:
    """Fetches each tile from an upstream URL template: one deadline for the whole fetch, a
    size cap, no redirects, bounded concurrency."""

    def __init__(
        self,
        template: str,
        format: str = "png",
        timeout_s: float = 60.0,
        concurrency: int = 8,
        max_bytes: int = 16 << 20,
    ) -> None:
        if not template.startswith(("http://", "https://")):
            raise ValueError(f"http renderer: {template!r} is not an http(s) URL template")
        self.template = template
        self.format = format
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.concurrency = concurrency
        self.slots = threading.BoundedSemaphore(concurrency)

    def render(self, job: RenderJob, stop: threading.Event | None = None) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        url = self.template.format(**job.fields())
        where = f"{job.z}/{job.x}/{job.y}"
        # A slot is waited for within the same deadline: every slot held by a slow upstream
        # must not block the render threads for ever.
        if not self.slots.acquire(timeout=self.timeout_s):
            raise RenderError(
                f"upstream busy for {where}: all {self.concurrency} fetches still running"
                f" after {self.timeout_s:g}s"
            )
        try:
            return self._fetch(url, where, deadline)
        except TimeoutError:
            raise RenderError(f"upstream too slow for {where}: no whole tile within"
                              f" {self.timeout_s:g}s") from None  # fmt: skip
        except (OSError, http.client.HTTPException) as e:
            raise RenderError(f"upstream unreachable for {where}: {e!r}") from None
        finally:
            self.slots.release()

    def _fetch(self, url: str, where: str, deadline: float) -> bytes:

        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            return remaining

        parts = urllib.parse.urlsplit(url)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.netloc, timeout=left())
        else:
            conn = http.client.HTTPConnection(parts.netloc, timeout=left())
        sock = None
        try:
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            conn.request("GET", target, headers={"Accept": "*/*"})
            sock = conn.sock  # the response keeps reading it after conn lets go (HTTP/1.0)
            assert sock is not None
            sock.settimeout(left())
            r = conn.getresponse()
            if not 200 <= r.status < 300:
                moved = f" (to {r.getheader('Location')!r}; redirects are not followed)"
                raise RenderError(f"upstream answered {r.status} for {where}"
                                  f"{moved if 300 <= r.status < 400 else ''}")  # fmt: skip
            length = r.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                raise RenderError(
                    f"upstream tile for {where} is {length} bytes, over the"
                    f" {self.max_bytes}-byte cap (TILEPIPE_RENDER_MAX_TILE_BYTES)"
                )
            body = bytearray()
            while True:
                sock.settimeout(left())  # each read gets what is left of the deadline
                chunk = r.read1(65536)
                if not chunk:
                    return bytes(body)
                body += chunk
                if len(body) > self.max_bytes:
                    raise RenderError(
                        f"upstream tile for {where} is over the {self.max_bytes}-byte cap"
                        " (TILEPIPE_RENDER_MAX_TILE_BYTES)"
                    )
        finally:
            conn.close()
            if sock is not None:
                sock.close()


def build_renderer(
    spec: str,
    format: str = "png",
    delay_s: float = 0.0,
    timeout_s: float = 60.0,
    concurrency: int = 8,
    max_bytes: int = 16 << 20,
) -> Renderer:
    """A renderer from its spec: ``builtin``, ``command:PROGRAM ARGS...`` or ``http:URL``."""
    kind, _, rest = spec.partition(":")
    if kind == "builtin":
        if format != "png":
            raise ValueError(f"the builtin renderer draws png tiles, not {format!r}")
        return BuiltinRenderer(delay_s=delay_s)
    if kind == "command":
        return CommandRenderer(shlex.split(rest), format=format, timeout_s=timeout_s)
    if kind == "http":
        return HttpRenderer(rest, format, timeout_s, concurrency, max_bytes)
    raise ValueError(f"renderer {spec!r}: unknown kind {kind!r}; use builtin, command: or http:")
