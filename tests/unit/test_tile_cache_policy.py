"""The tile server's cache contract as a table: which request may be cached how.

``tiles.app.cache_policy`` decides from the request's ``v``/``h`` and what the ledger says
is committed; tests/integration/test_tile_server.py checks the same through HTTP.
"""

from __future__ import annotations

import pytest

from render.jobs import job_key
from tilepipe.versions import version_key
from tiles.app import Cache, cache_policy
from tiles.store import Committed

TMS = "WebMercatorQuad"
TILE = (14, 8805, 5376)
H = "77a8a0d93d78aa13"
STORED = Committed((3,), "3", job_key(TMS, *TILE, 3, H))
RERENDER = Committed((3,), "3", job_key(TMS, *TILE, 3, "", origin="rj_1"))


@pytest.mark.parametrize(
    ("v", "h", "committed", "ledger", "expected"),
    [
        ("3", H, STORED, True, Cache.IMMUTABLE),  # the committed release
        ("3.0", H, STORED, True, Cache.IMMUTABLE),  # the same version, spelt otherwise
        (None, None, STORED, True, Cache.REVALIDATE),  # bare URL
        ("4", H, STORED, True, Cache.NEVER),  # newer than stored
        ("3", "0000000000000000", STORED, True, Cache.NEVER),  # another release at 3
        ("3", None, STORED, True, Cache.REVALIDATE),  # a version names several releases
        ("2", H, STORED, True, Cache.REVALIDATE),  # older: the current bytes, revalidated
        ("1", H, None, True, Cache.NEVER),  # nothing committed yet
        ("3", H, STORED, False, Cache.REVALIDATE),  # no ledger: nothing immutable
        ("3", RERENDER.job_key[:16], RERENDER, True, Cache.IMMUTABLE),  # a region re-render
    ],
)
def test_cache_policy(
    v: str | None, h: str | None, committed: Committed | None, ledger: bool, expected: Cache
) -> None:
    vkey = None if v is None else version_key(v)
    assert cache_policy(TMS, *TILE, vkey, h, committed, ledger) is expected
