"""The OpenLayers 10 and Leaflet 1.9 adapters in headless Chromium, through the real stack.

Neither library can reload one tile by itself (README, "Map clients"); what these show is
that with the adapters an update still costs exactly one fetch, of exactly the changed tile
at its new version: OpenLayers reloads the view under a new source key, and every
unchanged tile's versioned URL is answered by the browser's HTTP cache (immutable);
Leaflet preloads the one tile and swaps it in.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.browser.conftest import LAT, LON, ZOOM, Live, wait_for
from tests.browser.test_maplibre import block, render_block, since, tile_centre

pytestmark = pytest.mark.browser


def open_page(browser: Any, live: Live, name: str) -> Any:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    gateway = f"http://{live.stack.config.host}:{live.stack.gateway_port}"
    query = urlencode({"gateway": gateway, "lon": LON, "lat": LAT, "zoom": ZOOM})
    page.goto(f"{live.stack.tiles_url}/pages/{name}.html?{query}")
    page.wait_for_function("document.body.dataset.status === 'live'", timeout=15_000)
    assert errors == []
    return page


def quiet(live: Live, seconds: float = 1.0, timeout: float = 20) -> None:
    """Until the tile server has seen no request for ``seconds`` (the start has settled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = len(live.requests())
        time.sleep(seconds)
        if len(live.requests()) == n:
            return
    raise AssertionError("the page kept fetching tiles")


@pytest.mark.parametrize("name", ["openlayers", "leaflet"])
def test_an_update_costs_one_fetch_of_exactly_that_tile(
    browser: Any, live_stack: Live, name: str
) -> None:
    live = live_stack
    render_block(live)
    page = open_page(browser, live, name)
    quiet(live)
    z, x, y = target = block()[8 * 4 + 4]
    mark = len(live.requests())
    version = live.update(*target)
    live.wait_committed()
    wait_for(lambda: since(live, mark), f"{name} to fetch the tile", 10)
    quiet(live)
    assert since(live, mark) == [(z, x, y, str(version))]
    if name == "leaflet":
        src = page.evaluate(
            "k => Object.values(window.page.layer._tiles).map(t => t.el.src)"
            ".find(s => s.includes(k))",
            f"/{z}/{x}/{y}.png",
        )
        assert f"v={version}&" in src, src


@pytest.mark.parametrize("name", ["openlayers", "leaflet"])
def test_an_off_screen_update_is_fetched_once_when_panned_into_view(
    browser: Any, live_stack: Live, name: str
) -> None:
    live = live_stack
    render_block(live, cols=14)
    page = open_page(browser, live, name)
    quiet(live)
    far = block(14)[14 * 4 + 10]
    lon, lat = tile_centre(*far)
    page.evaluate("([lon, lat]) => window.page.jump(lon, lat)", [lon, lat])
    quiet(live)
    page.evaluate("([lon, lat]) => window.page.jump(lon, lat)", [LON, LAT])
    quiet(live)
    mark = len(live.requests())
    version = live.update(*far)
    live.wait_committed()
    time.sleep(1.0)
    assert since(live, mark) == [], "nothing fetches a tile out of view"
    page.evaluate("([lon, lat]) => window.page.jump(lon, lat)", [lon, lat])
    wait_for(lambda: since(live, mark), f"{name} to fetch the tile in view", 10)
    quiet(live)
    # Only the changed tile reaches the server: the rest are answered by the HTTP cache.
    assert since(live, mark) == [(*far, str(version))]
