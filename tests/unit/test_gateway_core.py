"""The gateway's routing, conflation and resume rules, driven directly (no I/O)."""

from __future__ import annotations

import json
import time

import jwt
import orjson
import pytest

from gateway.auth import Scope, Verifier, origin_allowed
from gateway.core import (
    Area,
    FrameError,
    Have,
    Message,
    Router,
    Session,
    area_cells,
    batch_frame,
    parse_tile_spec,
)
from gateway.hub import parse_tiles
from gateway.settings import GatewaySettings
from tilepipe.tiles import quadkey, tile_bounds_lonlat
from tilepipe.versions import version_key

SECRET = "a-test-secret-of-more-than-32-bytes"


def msg(z: int, x: int, y: int, version: int | str = 1, hash_: str | None = None, **extra):
    doc = {"type": "tile_updated", "tms": "WebMercatorQuad", "z": z, "x": x, "y": y,
           "version": version, "hash": hash_ or f"h{version}", **extra}  # fmt: skip
    return Message.parse(orjson.dumps(doc))


def session(name: str = "s", max_tiles: int = 512, max_pending: int = 1024) -> Session:
    return Session(name, max_tiles, max_pending)


def inner(z: int, x: int, y: int, eps: float = 1e-7) -> list[float]:
    w, s, e, n = tile_bounds_lonlat(z, x, y)
    return [w + eps, s + eps, e - eps, n - eps]


def test_an_update_reaches_exactly_the_sessions_tracking_its_tile():
    r = Router(level=12)
    a, b, c = session("a"), session("b"), session("c")
    r.track(a, {(12, 1, 2): Have()})
    r.track(b, {(12, 1, 2): Have(), (12, 1, 3): Have()})
    r.track(c, {(12, 9, 9): Have()})
    assert set(r.route(msg(12, 1, 2))) == {a, b}
    assert set(r.route(msg(12, 1, 3))) == {b}
    assert set(r.route(msg(12, 5, 5))) == set()
    r.untrack(b, [(12, 1, 2)])
    assert set(r.route(msg(12, 1, 2))) == {a}
    r.drop(a)
    assert r.by_tile == {(12, 1, 3): {b}, (12, 9, 9): {c}}


def test_areas_route_by_cell_and_check_the_bbox_below_the_cell_level():
    level = 11
    r = Router(level)
    s = session()
    t13 = (13, 4400, 2686)
    area = Area.parse(inner(*t13), 11, 14)
    r.set_area(s, area, area_cells(area, level, 4096))
    _z, x, y = t13
    inside = {
        (11, x >> 2, y >> 2),  # the ancestor at 11 contains the bbox
        (13, x, y),
        (14, 2 * x + 1, 2 * y),
    }
    outside = {
        (10, x >> 3, y >> 3),  # zoom below the range
        (15, 4 * x, 4 * y),  # zoom above it
        (13, x + 1, y),  # the neighbour: same z11 cell, outside the bbox
        (14, 2 * x + 2, 2 * y),  # the same at 14
        (12, (x >> 1) + 1, y >> 1),  # another z12 tile of the same z11 cell
    }
    assert (14, 2 * x + 2, 2 * y) and quadkey(14, 2 * x + 2, 2 * y)[:11] == quadkey(
        14, 2 * x, 2 * y
    )[:11]
    for t in inside:
        assert list(r.route(msg(*t))) == [s], t
    for t in outside:
        assert list(r.route(msg(*t))) == [], t


def test_a_session_tracking_a_tile_inside_its_area_hears_it_once():
    r = Router(12)
    s = session()
    area = Area.parse(inner(12, 100, 100), 12, 12)
    r.set_area(s, area, area_cells(area, 12, 100))
    r.track(s, {(12, 100, 100): Have()})
    assert list(r.route(msg(12, 100, 100))) == [s]


def test_limits_refuse_with_what_to_do():
    r = Router(12)
    s = session(max_tiles=2)
    r.track(s, {(1, 0, 0): Have(), (1, 1, 0): Have()})
    with pytest.raises(FrameError) as e:
        r.track(s, {(1, 0, 1): Have()})
    assert e.value.code == "too_many_tiles" and "untrack" in e.value.message
    r.track(s, {(1, 0, 0): Have(version_key(3))})  # re-tracking a tracked tile is no new tile
    world = Area.parse([-180, -85, 180, 85], 0, 12)
    with pytest.raises(FrameError) as e:
        area_cells(world, 12, 4096)
    assert e.value.code == "area_too_large"
    assert len(area_cells(Area.parse([-180, -85, 180, 85], 0, 5), 12, 4096)) == sum(
        4**z for z in range(6)
    )


def test_conflation_keeps_only_the_newest_message_per_tile():
    s = session()
    r = Router(12)
    r.track(s, {(5, 1, 1): Have(), (5, 2, 2): Have()})
    for v in range(1, 6):
        s.offer(msg(5, 1, 1, v))
    s.offer(msg(5, 2, 2, 1))
    s.offer(msg(5, 1, 1, 5))  # a re-broadcast (same hash) of what it has: nothing more
    taken = s.take(10)
    assert [(m.tile, m.version) for m in taken] == [((5, 1, 1), (5,)), ((5, 2, 2), (1,))]
    assert s.pending == {}


def test_area_updates_beyond_the_pending_bound_are_dropped_with_a_resync():
    r = Router(12)
    s = session(max_pending=3)
    area = Area.parse([-180, -85, 180, 85], 4, 4)
    r.set_area(s, area, area_cells(area, 12, 4096))
    for x in range(6):
        for m in [msg(4, x, 0)]:
            for target in r.route(m):
                target.offer(m)
    assert len(s.pending) == 3
    assert [orjson.loads(f)["reason"] for f in s.notices] == ["overflow"]


def test_a_state_read_superseded_by_a_live_message_is_dropped():
    """The barrier rule: a live message after registration is at least as new as the read."""
    r = Router(12)
    s = session()
    gens = r.track(s, {(8, 1, 1): Have(), (8, 2, 2): Have()})
    s.offer(msg(8, 1, 1, 7))  # live, arrived while the read was in flight
    stored_old = msg(8, 1, 1, 6)
    assert not s.offer_state(stored_old, gens[(8, 1, 1)])
    assert s.offer_state(msg(8, 2, 2, 4), gens[(8, 2, 2)])
    assert [(m.tile, m.version) for m in s.take(10)] == [((8, 1, 1), (7,)), ((8, 2, 2), (4,))]


def test_a_feature_tile_whose_version_went_down_is_still_delivered():
    """A tile's ``version`` is its winning object's: feature B at 1 after feature A at 5."""
    r = Router(12)
    s = session()
    r.track(s, {(14, 5, 5): Have()})
    s.offer(msg(14, 5, 5, 5, "a5"))
    s.offer(msg(14, 5, 5, 1, "a5b1"))
    assert [m.hash for m in s.take(10)] == ["a5b1"]
    # On resume, the hash says exactly whether the stored message is news.
    assert Have(version_key(5), "a5").wants(version_key(1), "a5b1")
    assert not Have(version_key(1), "a5b1").wants(version_key(1), "a5b1")
    # A version alone: strictly newer, numerically ("1.10" > "1.9", "2" == "2.0").
    assert Have(version_key("1.9")).wants(version_key("1.10"), "x")
    assert not Have(version_key("2")).wants(version_key("2.0"), "x")


def test_state_reads_honour_what_the_client_has():
    r = Router(12)
    s = session()
    gens = r.track(s, {(3, 1, 1): Have(version_key(4), None), (3, 2, 2): Have(version_key(4))})
    assert not s.offer_state(msg(3, 1, 1, 4), gens[(3, 1, 1)])
    assert s.offer_state(msg(3, 2, 2, 5), gens[(3, 2, 2)])
    r.untrack(s, [(3, 2, 2)])
    assert s.pending == {}  # untracking drops what was pending for it


def test_layers_filter_messages_but_not_all_layer_updates():
    s = session()
    s.layers = frozenset({"roads"})
    r = Router(12)
    r.track(s, {(2, 1, 1): Have()})
    assert not s.offer(msg(2, 1, 1, 1, layers=["water"]))
    assert s.offer(msg(2, 1, 1, 2, layers=["water", "roads"]))
    assert s.offer(msg(2, 1, 1, 3))  # no layers: every layer of the tile changed


def test_batches_carry_the_messages_exactly():
    a, b = msg(1, 0, 0, 1), msg(1, 1, 0, "1.2")
    assert batch_frame([a]) == a.raw
    doc = orjson.loads(batch_frame([a, b]))
    assert doc == {"type": "batch", "messages": [orjson.loads(a.raw), orjson.loads(b.raw)]}


def test_tile_specs():
    assert parse_tile_spec("14/8805/5376") == ((14, 8805, 5376), Have())
    assert parse_tile_spec("14/8805/5376@4.2.0:abc") == (
        (14, 8805, 5376), Have(version_key("4.2"), "abc")
    )  # fmt: skip
    assert parse_tiles({"3/1/1": {"version": 2, "hash": "h"}, "3/1/2": 7}) == {
        (3, 1, 1): Have((2,), "h"), (3, 1, 2): Have((7,)),
    }  # fmt: skip
    for bad in ("14/8805", "3/8/0", "a/b/c", "3/1/1@-1", "3/1/1@x.y"):
        with pytest.raises(FrameError):
            parse_tile_spec(bad)
    with pytest.raises(FrameError):
        Area.parse([10, 0, -10, 1], 0, 1)  # crosses the antimeridian


# -- auth ------------------------------------------------------------------------------------


def test_scope_by_prefixes_and_bbox():
    t = (12, 2200, 1343)
    qk = quadkey(*t)
    scope = Scope(prefixes=(qk[:8],))
    assert scope.allows_tile(t)
    assert scope.allows_tile((4, 2200 >> 8, 1343 >> 8))  # an ancestor shows the area too
    assert not scope.allows_tile((12, 100, 100))
    assert scope.allows_area(Area.parse(inner(*t), 10, 14))
    assert not scope.allows_area(Area.parse([-10, -10, 10, 10], 5, 6))
    boxed = Scope(bbox=(13.0, 52.3, 13.8, 52.7))
    assert boxed.allows_area(Area.parse([13.1, 52.4, 13.5, 52.6], 10, 16))
    assert not boxed.allows_area(Area.parse([12.1, 52.4, 13.5, 52.6], 10, 16))
    assert boxed.allows_tile((12, 2200, 1343)) and not boxed.allows_tile((12, 100, 100))
    with pytest.raises(FrameError):
        Scope(layers=frozenset({"roads"})).layer_filter(frozenset({"roads", "water"}))


def test_tokens_are_checked_for_key_lifetime_and_audience(monkeypatch):
    monkeypatch.setenv("TILEPIPE_GATEWAY_JWT_SECRET", SECRET)
    v = Verifier(GatewaySettings())
    now = time.time()

    def token(**claims):
        base = {"sub": "u1", "aud": "tilepipe-gateway", "iat": int(now), "exp": int(now) + 600}
        return jwt.encode({**base, **claims}, SECRET, algorithm="HS256")

    scope = v.verify(token(tp={"layers": ["roads"], "area": ["1202"]}))
    assert scope.sub == "u1" and scope.layers == {"roads"} and scope.prefixes == ("1202",)
    cases = {
        "expired": token(exp=int(now) - 10),
        "too long-lived": token(exp=int(now) + 86400),
        "wrong audience": token(aud="someone-else"),
        "wrong key": jwt.encode(
            {"exp": int(now) + 60, "aud": "tilepipe-gateway"}, "guess-" * 8, algorithm="HS256"
        ),
        "no exp": jwt.encode({"aud": "tilepipe-gateway"}, SECRET, algorithm="HS256"),
        "bad tp": token(tp={"area": ["12x"]}),
    }
    for why, tok in cases.items():
        with pytest.raises(FrameError) as e:
            v.verify(tok)
        assert e.value.code in {"unauthorized", "token_expired"}, why
        assert SECRET not in e.value.message


def test_origins_and_settings(monkeypatch):
    assert origin_allowed("https://x", [])
    assert origin_allowed("https://maps.example.org/", ["https://maps.example.org"])
    assert not origin_allowed("https://evil.example", ["https://maps.example.org"])
    assert not origin_allowed(None, ["https://maps.example.org"])
    monkeypatch.setenv("TILEPIPE_GATEWAY_ALLOWED_ORIGINS", "https://a.org/, https://b.org")
    monkeypatch.setenv("TILEPIPE_GATEWAY_REDIS", "redis://r:6379/2?channel=c1&prefix=p1")
    s = GatewaySettings()
    assert s.allowed_origins == ["https://a.org", "https://b.org"]
    assert s.redis_target() == ("redis://r:6379/2", "c1", "p1") and not s.auth_enabled
    monkeypatch.setenv("TILEPIPE_GATEWAY_JWT_SECRET", "x")
    monkeypatch.setenv("TILEPIPE_GATEWAY_JWT_JWKS_FILE", "/nonexistent")
    with pytest.raises(ValueError, match="one JWT key"):
        GatewaySettings()


def test_rs256_public_key_and_jwks_files(tmp_path, monkeypatch):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "pub.pem").write_bytes(pem)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1"}]}))
    now = int(time.time())
    claims = {"sub": "u9", "aud": "tilepipe-gateway", "exp": now + 300, "tp": {"area": ["3"]}}
    signed = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
    monkeypatch.setenv("TILEPIPE_GATEWAY_JWT_PUBLIC_KEY_FILE", str(tmp_path / "pub.pem"))
    assert Verifier(GatewaySettings()).verify(signed).prefixes == ("3",)
    monkeypatch.delenv("TILEPIPE_GATEWAY_JWT_PUBLIC_KEY_FILE")
    monkeypatch.setenv("TILEPIPE_GATEWAY_JWT_JWKS_FILE", str(tmp_path / "jwks.json"))
    v = Verifier(GatewaySettings())
    assert v.verify(signed).sub == "u9"
    other = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "nope"})
    with pytest.raises(FrameError, match="kid"):
        v.verify(other)
    # An HS256 token signed with the public key as secret (algorithm confusion) is refused.
    forged = jwt.encode(claims, "x" * 40, algorithm="HS256", headers={"kid": "k1"})
    with pytest.raises(FrameError):
        v.verify(forged)
