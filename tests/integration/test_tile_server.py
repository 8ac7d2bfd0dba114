"""``tilepipe tiles`` against real stores and a real ledger: the cache contract, end to end.

Tiles are committed the way the render worker commits them (``Ledger.start`` then
``Ledger.commit`` around the store's stage and commit), into a real directory or MBTiles
file and the PostgreSQL ledger; the server is the real ASGI app, driven over HTTP.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from starlette.testclient import TestClient

from render.jobs import RenderJob
from render.ledger import Ledger
from render.renderers import BuiltinRenderer
from render.stores import DirectoryStore, MBTilesStore, TileStore
from tiles.app import IMMUTABLE, TileServer, create_app
from tiles.settings import TilesSettings
from tiles.store import LedgerVersions, open_reader

pytestmark = pytest.mark.integration

TMS = "WebMercatorQuad"


def commit(ledger: Ledger, store: TileStore, job: RenderJob) -> bytes:
    """Render and commit one job exactly as a render worker does; the bytes it committed."""
    data = BuiltinRenderer().render(job)
    attempt = ledger.start(job, "test")
    assert attempt is not None
    result = ledger.commit(job, attempt, "test", lambda: store.commit(store.stage(job, data)))
    assert result is not None and result.committed, result
    return data


@pytest.fixture(params=["dir", "mbtiles"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, TileStore]]:
    if request.param == "dir":
        store: TileStore = DirectoryStore(tmp_path / "tiles")
        spec = f"dir:{tmp_path / 'tiles'}"
    else:
        store = MBTilesStore(tmp_path / "tiles.mbtiles")
        spec = f"mbtiles:{tmp_path / 'tiles.mbtiles'}"
    yield spec, store
    store.close()


def client(spec: str, ledger_dsn: str | None, log: Path | None = None) -> TestClient:
    settings = TilesSettings(store=spec, ledger=ledger_dsn, request_log=log)
    versions = None
    if ledger_dsn is not None:
        versions = LedgerVersions(ledger_dsn)
        versions.open()
    log_file = log.open("a", buffering=1) if log is not None else None
    server = TileServer(settings, open_reader(spec, "png"), versions, log_file)
    return TestClient(create_app(server))


def etag_of(data: bytes) -> str:
    return '"' + hashlib.blake2b(data, digest_size=8).hexdigest() + '"'


def test_the_committed_release_is_immutable_and_a_bare_url_revalidates(
    store_spec: tuple[str, TileStore], ledger_dsn: str
) -> None:
    spec, store = store_spec
    ledger = Ledger(ledger_dsn)
    v3 = commit(ledger, store, RenderJob(TMS, 14, 8805, 5376, 3, hash="77a8a0d93d78aa13"))
    with client(spec, ledger_dsn) as http:
        r = http.get("/14/8805/5376.png?v=3&h=77a8a0d93d78aa13")
        assert r.status_code == 200
        assert r.headers["cache-control"] == IMMUTABLE
        assert r.headers["content-type"] == "image/png"
        assert r.content == v3
        assert r.headers["etag"] == etag_of(v3)
        # "3.0" is version 3
        assert (
            http.get("/14/8805/5376.png?v=3.0&h=77a8a0d93d78aa13").headers["cache-control"]
            == IMMUTABLE
        )

        bare = http.get("/14/8805/5376.png")
        assert bare.headers["cache-control"] == "no-cache"
        assert bare.headers["etag"] == etag_of(v3)
        assert bare.content == v3
        again = http.get("/14/8805/5376.png", headers={"If-None-Match": bare.headers["etag"]})
        assert again.status_code == 304 and again.content == b""

        v4 = commit(ledger, store, RenderJob(TMS, 14, 8805, 5376, 4, hash="aaaabbbbccccdddd"))
        changed = http.get("/14/8805/5376.png", headers={"If-None-Match": bare.headers["etag"]})
        assert changed.status_code == 200 and changed.content == v4 != v3
        new = http.get("/14/8805/5376.png?v=4&h=aaaabbbbccccdddd")
        assert new.headers["cache-control"] == IMMUTABLE and new.content == v4
    ledger.close()


def test_what_the_store_does_not_have_is_never_cached(
    store_spec: tuple[str, TileStore], ledger_dsn: str
) -> None:
    spec, store = store_spec
    ledger = Ledger(ledger_dsn)
    v2 = commit(ledger, store, RenderJob(TMS, 5, 1, 2, "2.1", hash="1111222233334444"))
    with client(spec, ledger_dsn) as http:
        # A newer version than the stored one (a degraded job, a ledger behind): no-store.
        newer = http.get("/5/1/2.png?v=2.10&h=9999888877776666")
        assert newer.status_code == 200 and newer.headers["cache-control"] == "no-store"
        assert newer.content == v2
        # The stored version with a hash the ledger does not know: not this release.
        other = http.get("/5/1/2.png?v=2.1&h=9999888877776666")
        assert other.headers["cache-control"] == "no-store"
        # A tile with no committed version at all: 404, no-store.
        missing = http.get("/5/1/3.png?v=1&h=1111222233334444")
        assert missing.status_code == 404 and missing.headers["cache-control"] == "no-store"
        # No If-None-Match short cut for a response that must not be stored.
        etag = etag_of(v2)
        assert (
            http.get(
                "/5/1/2.png?v=3&h=9999888877776666", headers={"If-None-Match": etag}
            ).status_code
            == 200
        )
        # An older version, or a version without its hash: the current bytes, revalidated.
        older = http.get("/5/1/2.png?v=2&h=1111222233334444")
        assert older.headers["cache-control"] == "no-cache" and older.content == v2
        unhashed = http.get("/5/1/2.png?v=2.1")
        assert unhashed.headers["cache-control"] == "no-cache"
        assert http.get("/5/1/2.png?v=2.1", headers={"If-None-Match": etag}).status_code == 304
    ledger.close()


def test_a_region_rerender_is_immutable_under_its_announced_hash(
    store_spec: tuple[str, TileStore], ledger_dsn: str
) -> None:
    spec, store = store_spec
    ledger = Ledger(ledger_dsn)
    commit(ledger, store, RenderJob(TMS, 8, 10, 20, 3, hash="1111222233334444"))
    rerender = RenderJob(TMS, 8, 10, 20, 3, origin="rj_style_v2")
    data = commit(ledger, store, rerender)
    announced = rerender.key[:16]  # what render.announce puts in the message's hash
    with client(spec, ledger_dsn) as http:
        r = http.get(f"/8/10/20.png?v=3&h={announced}")
        assert r.headers["cache-control"] == IMMUTABLE and r.content == data
        # The first release at version 3 is no longer what the store holds.
        assert http.get("/8/10/20.png?v=3&h=1111222233334444").headers["cache-control"] == (
            "no-store"
        )
    ledger.close()


def test_without_a_ledger_nothing_is_immutable(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "tiles")
    job = RenderJob(TMS, 3, 4, 2, 1, hash="1111222233334444")
    store.commit(store.stage(job, BuiltinRenderer().render(job)))
    with client(f"dir:{tmp_path / 'tiles'}", None) as http:
        r = http.get("/3/4/2.png?v=1&h=1111222233334444")
        assert r.status_code == 200 and r.headers["cache-control"] == "no-cache"
        assert r.headers["access-control-allow-origin"] == "*"


def test_the_request_log_has_one_line_per_tile_request(tmp_path: Path, ledger_dsn: str) -> None:
    store = DirectoryStore(tmp_path / "tiles")
    ledger = Ledger(ledger_dsn)
    commit(ledger, store, RenderJob(TMS, 3, 4, 2, 7, hash="1111222233334444"))
    log = tmp_path / "requests.jsonl"
    with client(f"dir:{tmp_path / 'tiles'}", ledger_dsn, log) as http:
        http.get("/3/4/2.png?v=7&h=1111222233334444")
        http.get("/3/4/3.png")
        http.get("/healthz")
        assert http.get("/3/4/2.png?v=x").status_code == 400
        assert http.get("/3/9/2.png").status_code == 404  # x out of range
        assert http.get("/3/4/2.jpg").status_code == 404
        assert http.get("/readyz").json() == {"status": "ready"}
    lines = [orjson.loads(line) for line in log.read_text().splitlines()]
    assert [(r["z"], r["x"], r["y"], r["v"], r["h"], r["status"], r["cache"]) for r in lines] == [
        (3, 4, 2, "7", "1111222233334444", 200, "immutable"),
        (3, 4, 3, None, None, 404, "no-cache"),
    ]
    ledger.close()


def test_the_command_explains_itself_and_refuses_a_missing_store(tmp_path: Path) -> None:
    help_ = subprocess.run(
        [sys.executable, "-m", "tilepipe", "tiles", "--help"], capture_output=True, text=True
    )
    assert help_.returncode == 0 and "examples:" in help_.stdout and "immutable" in help_.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "tilepipe", "tiles", "--store", f"dir:{tmp_path / 'nope'}"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "no such directory" in bad.stderr and "--store" in bad.stderr
