"""MapLibre GL JS in headless Chromium, kept fresh by @tilepipe/live through the real stack.

The page is the demo's (demo/static); the tiles come from ``tilepipe tiles`` after the
render worker committed them and announced them through Redis and ``tilepipe gateway``.
The oracle is the tile server's request log: which tile, with which ``v``, when.
"""

from __future__ import annotations

import io
import math
import signal
import time
from typing import Any

import orjson
import pytest
import redis

from tests.browser.conftest import LAT, LON, ZOOM, Live, wait_for

pytestmark = pytest.mark.browser


def block(cols: int = 8) -> list[tuple[int, int, int]]:
    """8 rows of ``cols`` tiles from 4 left of and above the centre tile (the demo's block)."""
    n = 1 << ZOOM
    cx = int((LON + 180.0) / 360.0 * n)
    cy = int((1.0 - math.asinh(math.tan(math.radians(LAT))) / math.pi) / 2.0 * n)
    return [(ZOOM, cx - 4 + i % cols, cy - 4 + i // cols) for i in range(8 * cols)]


def tile_centre(z: int, x: int, y: int) -> tuple[float, float]:
    n = 1 << z
    lon = (x + 0.5) / n * 360.0 - 180.0
    lat = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * (y + 0.5) / n))))
    return lon, lat


def open_map(browser: Any, live: Live, extra: str = "") -> Any:
    page = browser.new_page()
    page.goto(live.stack.page_url + extra)
    page.wait_for_function("document.body.dataset.status === 'live'", timeout=15_000)
    settle(page)
    return page


def settle(page: Any) -> None:
    """Until the map has loaded what it shows and nothing is waiting to be refreshed."""
    page.wait_for_function(
        "window.tilepipeDemo?.map.loaded() && window.tilepipeDemo.map.areTilesLoaded()",
        timeout=15_000,
    )
    time.sleep(0.3)


def visible(page: Any) -> list[tuple[int, int, int]]:
    keys = page.evaluate(
        """async (z) => { const m = await import('/live/index.js');
        const b = window.tilepipeDemo.map.getBounds();
        return m.tilesForBounds([b.getWest(), b.getSouth(), b.getEast(), b.getNorth()], z); }""",
        ZOOM,
    )
    return [tuple(int(p) for p in k.split("/")) for k in keys]  # type: ignore[misc]


def tile_box(page: Any, z: int, x: int, y: int) -> dict[str, float]:
    """The tile's box on screen, in CSS pixels, shrunk by 4 px against edge blending."""
    n = 1 << z

    def lonlat(tx: float, ty: float) -> list[float]:
        lon = tx / n * 360.0 - 180.0
        lat = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * ty / n))))
        return [lon, lat]

    a = page.evaluate("p => window.tilepipeDemo.map.project(p)", lonlat(x, y))
    b = page.evaluate("p => window.tilepipeDemo.map.project(p)", lonlat(x + 1, y + 1))
    return {"x": a["x"] + 4, "y": a["y"] + 4, "width": b["x"] - a["x"] - 8,
            "height": b["y"] - a["y"] - 8}  # fmt: skip


def pixels(page: Any, box: dict[str, float]) -> bytes:
    from PIL import Image

    png = page.screenshot(clip=box)
    return Image.open(io.BytesIO(png)).convert("RGB").tobytes()


def since(live: Live, mark: int) -> list[tuple[int, int, int, str | None]]:
    return [(r["z"], r["x"], r["y"], r["v"]) for r in live.requests()[mark:]]


def render_block(live: Live, cols: int = 8) -> None:
    for z, x, y in block(cols):
        live.update(z, x, y)
    live.wait_committed()


@pytest.mark.parametrize("maplibre", ["6", "5.6"])
def test_an_update_refetches_exactly_that_tile_with_its_new_version_within_a_second(
    browser: Any, live_stack: Live, maplibre: str
) -> None:
    live = live_stack
    render_block(live)
    page = open_map(browser, live, f"&maplibre={maplibre}")
    assert page.evaluate("window.tilepipeDemo.version").startswith(maplibre)
    shown = visible(page)
    z, x, y = target = block()[8 * 4 + 4]  # the centre tile
    assert target in shown
    neighbour = (z, x - 1, y)
    before, around = pixels(page, tile_box(page, *target)), pixels(page, tile_box(page, *neighbour))
    mark = len(live.requests())

    # Hear the announcement as the gateway does, to time the browser's refetch against it.
    sub = redis.Redis.from_url(live.stack.redis_url).pubsub()
    sub.subscribe(live.stack.channel)
    wait_for(lambda: sub.get_message(timeout=0.1), "the subscription")
    version = live.update(*target)
    announced = None
    deadline = time.monotonic() + 20
    while announced is None and time.monotonic() < deadline:
        m = sub.get_message(timeout=0.5)
        if m and m["type"] == "message" and orjson.loads(m["data"])["x"] == x:
            announced = time.time() * 1000
    assert announced is not None, "the render worker did not announce the commit"
    want = (x, y, str(version))
    fetched = wait_for(
        lambda: [r for r in live.requests()[mark:] if (r["x"], r["y"], r["v"]) == want],
        "the browser to refetch the tile",
        10,
    )
    assert fetched[0]["ts"] - announced < 1000, f"{fetched[0]['ts'] - announced:.0f} ms"
    assert fetched[0]["cache"] == "immutable" and fetched[0]["status"] == 200
    time.sleep(1.5)  # anything else the page would fetch has been fetched by now
    assert since(live, mark) == [(z, x, y, str(version))]

    # The screenshot: the tile's pixels changed (the builtin renderer draws its version);
    # its neighbour's did not.
    page.wait_for_timeout(200)
    assert pixels(page, tile_box(page, *target)) != before
    assert pixels(page, tile_box(page, *neighbour)) == around
    assert page.evaluate("window.tilepipeDemo.errors") == []
    sub.close()


@pytest.mark.parametrize("maplibre", ["6", "5.6"])
def test_an_off_screen_update_is_refetched_when_panned_into_view(
    browser: Any, live_stack: Live, maplibre: str
) -> None:
    live = live_stack
    render_block(live, cols=14)  # wide enough that the view around the far tile has no gaps
    page = open_map(browser, live, f"&maplibre={maplibre}")
    # A tile seen once (so MapLibre keeps it in its tile cache), then left.
    far = block(14)[14 * 4 + 10]
    lon, lat = tile_centre(*far)
    page.evaluate("c => window.tilepipeDemo.map.jumpTo({center: c})", [lon, lat])
    settle(page)
    assert far in set(visible(page))
    page.evaluate("c => window.tilepipeDemo.map.jumpTo({center: c})", [LON, LAT])
    settle(page)
    assert far not in set(visible(page))

    mark = len(live.requests())
    version = live.update(*far)
    live.wait_committed()
    time.sleep(1.0)
    assert since(live, mark) == [], "nothing fetches a tile out of view"

    page.evaluate("c => window.tilepipeDemo.map.jumpTo({center: c})", [lon, lat])
    wait_for(lambda: since(live, mark), "the refetch once it is in view", 5)
    time.sleep(1.5)
    # Exactly the updated tile; every other tile came back from MapLibre's cache.
    assert since(live, mark) == [(*far, str(version))]


def test_updates_to_one_tile_in_quick_succession_end_at_the_newest_with_one_load_at_a_time(
    browser: Any, live_stack: Live
) -> None:
    live = live_stack
    render_block(live)
    page = open_map(browser, live)
    z, x, y = target = block()[8 * 4 + 3]
    key = f"{z}/{x}/{y}"
    mark = len(live.requests())
    for _ in range(3):
        live.update(*target)
    newest = live.versions[target]
    live.wait_committed()
    wait_for(lambda: any(r[3] == str(newest) for r in since(live, mark)), "the newest version", 10)
    time.sleep(1.5)
    fetched = since(live, mark)
    assert {r[:3] for r in fetched} == {target}
    assert fetched[-1] == (z, x, y, str(newest)), fetched
    assert 1 <= len(fetched) <= 3
    assert len({r[3] for r in fetched}) == len(fetched), f"a version fetched twice: {fetched}"
    assert page.evaluate("k => window.tilepipeDemo.live.get(k).version", key) == newest
    assert page.evaluate("window.tilepipeDemo.sync.stale()") == []


def test_after_a_gateway_restart_the_map_shows_what_changed_with_one_fetch_per_tile(
    browser: Any, live_stack: Live
) -> None:
    live = live_stack
    render_block(live)
    page = open_map(browser, live)
    a, b = block()[8 * 4 + 4], block()[8 * 3 + 3]
    assert {a, b} <= set(visible(page))
    box_a, box_b = tile_box(page, *a), tile_box(page, *b)
    before_a, before_b = pixels(page, box_a), pixels(page, box_b)

    live.stack.stop("gateway", signal.SIGKILL)
    page.wait_for_function("document.body.dataset.status === 'offline'", timeout=10_000)
    mark = len(live.requests())
    live.update(*a)
    live.update(*b)
    newest_a = live.update(*a)  # three updates while the gateway is down: a twice, b once
    live.wait_committed()
    live.stack.start_gateway()
    page.wait_for_function("document.body.dataset.status === 'live'", timeout=40_000)
    wait_for(lambda: len(since(live, mark)) >= 2, "the two refetches", 10)
    time.sleep(1.5)
    assert sorted(since(live, mark)) == sorted([(*a, str(newest_a)), (*b, "2")])
    assert pixels(page, box_a) != before_a and pixels(page, box_b) != before_b


def test_many_changes_at_once_refresh_the_whole_source_and_still_fetch_only_those_tiles(
    browser: Any, live_stack: Live
) -> None:
    live = live_stack
    render_block(live)
    page = open_map(browser, live, "&full=3")  # a whole-source refresh above 3 tiles a frame
    shown = set(visible(page))
    changed = [t for t in block() if t in shown][:5]
    assert len(changed) == 5
    # While the gateway is away the five change; on its return their stored state arrives
    # in one frame, over the threshold.
    live.stack.stop("gateway", signal.SIGKILL)
    page.wait_for_function("document.body.dataset.status === 'offline'", timeout=10_000)
    mark = len(live.requests())
    versions = {t: live.update(*t) for t in changed}
    live.wait_committed()
    live.stack.start_gateway()
    page.wait_for_function("document.body.dataset.status === 'live'", timeout=40_000)
    wait_for(lambda: len(since(live, mark)) >= 5, "the five refetches", 10)
    time.sleep(1.5)
    assert page.evaluate("window.tilepipeDemo.sync.stats.fullRefreshes") >= 1
    # Every tile in view was reloaded, but the unchanged ones kept their versioned URLs,
    # which the browser's cache answered (immutable): the server saw only the five.
    assert sorted(since(live, mark)) == sorted((*t, str(v)) for t, v in versions.items())


@pytest.mark.parametrize("maplibre", ["6", "5.6"])
def test_no_frame_goes_blank_while_a_tile_is_refetched(
    browser: Any, live_stack: Live, maplibre: str
) -> None:
    live = live_stack
    render_block(live)
    page = open_map(browser, live, f"&maplibre={maplibre}&probe=1")
    target = block()[8 * 4 + 4]
    lon, lat = tile_centre(*target)
    # A point in the tile's empty lower half: the builtin renderer's text is at the top.
    n = 1 << ZOOM
    lat = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * (target[2] + 0.85) / n))))
    page.evaluate("at => { window.tilepipeDemo.probe = {at, frames: []};"
                  " window.tilepipeDemo.map.triggerRepaint(); }", [lon, lat])  # fmt: skip
    wait_for(lambda: page.evaluate("window.tilepipeDemo.probe.frames.length") > 0, "a frame")
    shade = page.evaluate("window.tilepipeDemo.probe.frames[0]")
    mark = len(live.requests())
    for _ in range(3):
        version = live.update(*target)
        wait_for(lambda v=version: (*target, str(v)) in since(live, mark), f"v{version}", 10)
    settle(page)
    frames = page.evaluate("window.tilepipeDemo.probe.frames")
    assert len(frames) >= 4, frames  # the new tiles were drawn, each in a frame of its own
    background = [0xE8, 0xE4, 0xDA]  # the map's background: what a dropped tile would show
    assert all(abs(a - b) <= 2 for f in frames for a, b in zip(f, shade, strict=True)), (
        f"a frame changed colour where the tile is: {shade} -> {frames}"
    )
    assert shade != background
