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
  fetch has the timeout, and at most ``concurrency`` fetches run at once per process
  (the pool's threads share the renderer), so a slow upstream is not swamped. A non-2xx
  answer, a timeout or a refused connection is a failed attempt.

A renderer raises :class:`RenderError` for a failed attempt; the worker
decides retries, back-off and degradation, not the renderer.
"""

from __future__ import annotations

import hashlib
import io
import shlex
import subprocess
import threading
import time
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
        fields = {"tms": job.tms, "z": job.z, "x": job.x, "y": job.y,
                  "version": job.version, "key": job.key}  # fmt: skip
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
    """Fetches each tile from an upstream URL template, with a timeout and bounded concurrency."""

    def __init__(
        self, template: str, format: str = "png", timeout_s: float = 60.0, concurrency: int = 8
    ) -> None:
        if not template.startswith(("http://", "https://")):
            raise ValueError(f"http renderer: {template!r} is not an http(s) URL template")
        self.template = template
        self.format = format
        self.timeout_s = timeout_s
        self.slots = threading.BoundedSemaphore(concurrency)

    def render(self, job: RenderJob, stop: threading.Event | None = None) -> bytes:
        import urllib.error
        import urllib.request

        url = self.template.format(tms=job.tms, z=job.z, x=job.x, y=job.y, version=job.version)
        with self.slots:
            try:
                with urllib.request.urlopen(url, timeout=self.timeout_s) as r:
                    return bytes(r.read())
            except urllib.error.HTTPError as e:
                raise RenderError(
                    f"upstream answered {e.code} for {job.z}/{job.x}/{job.y}"
                ) from None
            except (urllib.error.URLError, TimeoutError, OSError) as e:
                reason = getattr(e, "reason", e)
                raise RenderError(
                    f"upstream unreachable for {job.z}/{job.x}/{job.y}: {reason}"
                ) from None


def build_renderer(
    spec: str,
    format: str = "png",
    delay_s: float = 0.0,
    timeout_s: float = 60.0,
    concurrency: int = 8,
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
        return HttpRenderer(rest, format=format, timeout_s=timeout_s, concurrency=concurrency)
    raise ValueError(f"renderer {spec!r}: unknown kind {kind!r}; use builtin, command: or http:")
