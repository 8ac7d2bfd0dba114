"""Who may hear about which tiles: short-lived JWTs and the WebSocket Origin allow-list.

Off unless a key is configured (``TILEPIPE_GATEWAY_JWT_SECRET`` for HS256,
``_JWT_PUBLIC_KEY_FILE`` for RS256/ES256, or ``_JWT_JWKS_FILE``). A token must
carry ``exp`` and live at most ``jwt_max_lifetime``; ``aud`` must name the
gateway. Its ``tp`` claim limits what the session may track::

    {"sub": "user-7", "aud": "tilepipe-gateway", "exp": 1767225900,
     "tp": {"layers": ["roads"], "area": ["1202", "1203"], "bbox": [13.0, 52.3, 13.8, 52.7]}}

``layers``: only messages for these layers (or for all layers) are delivered.
``area`` (quadkey prefixes) and/or ``bbox``: a tile may be tracked when it lies
inside, or contains, an allowed prefix, or intersects the bbox. No ``tp``
claim: everything. The token itself is never logged; errors name the claim.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import jwt

from gateway.core import Area, FrameError, TileId
from gateway.settings import GatewaySettings
from tilepipe.tiles import quadkey, tile_bounds_lonlat


@dataclass(frozen=True)
class Scope:
    """What one token allows; :data:`EVERYTHING` when auth is off."""

    sub: str | None = None
    expires: float | None = None  # epoch seconds
    layers: frozenset[str] | None = None
    prefixes: tuple[str, ...] | None = None
    bbox: tuple[float, float, float, float] | None = None

    @property
    def unlimited_area(self) -> bool:
        return self.prefixes is None and self.bbox is None

    def allows_tile(self, t: TileId) -> bool:
        if self.unlimited_area:
            return True
        z, x, y = t
        if self.prefixes is not None and self._under_prefixes(quadkey(z, x, y)):
            return True
        if self.bbox is not None:
            w, s, e, n = tile_bounds_lonlat(z, x, y)
            bw, bs, be, bn = self.bbox
            if w < be and e > bw and s < bn and n > bs:
                return True
        return False

    def allows_area(self, area: Area) -> bool:
        """Whether every tile of the area is allowed: inside the bbox, or under the prefixes."""
        if self.unlimited_area:
            return True
        if self.bbox is not None:
            bw, bs, be, bn = self.bbox
            if bw <= area.west and area.east <= be and bs <= area.south and area.north <= bn:
                return True
        if self.prefixes is None:
            return False
        # At the prefixes' depth (or the area's deepest zoom, if shallower) each tile must lie
        # under, or contain, an allowed prefix; an area too large to list is refused.
        d = min(area.maxzoom, max(len(p) for p in self.prefixes))
        x0, y0, x1, y1 = area.tile_range(d)
        if (x1 - x0 + 1) * (y1 - y0 + 1) > 4096:
            return False
        return all(
            self._under_prefixes(quadkey(d, x, y))
            for x in range(x0, x1 + 1)
            for y in range(y0, y1 + 1)
        )

    def _under_prefixes(self, qk: str) -> bool:
        assert self.prefixes is not None
        return any(qk.startswith(p) or p.startswith(qk) for p in self.prefixes)

    def layer_filter(self, asked: frozenset[str] | None) -> frozenset[str] | None:
        """The layers a session hears: what it asked within what is allowed."""
        if asked is None:
            return self.layers
        if self.layers is not None and not asked <= self.layers:
            raise FrameError(
                "forbidden",
                f"layers {sorted(asked - self.layers)} are outside this token's layers",
                allowed=sorted(self.layers),
            )
        return asked


EVERYTHING = Scope()


class Verifier:
    """Checks tokens against the configured key; built once per process."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.audience = settings.jwt_audience or None
        self.max_lifetime = settings.jwt_max_lifetime.total_seconds()
        self._jwks: jwt.PyJWKSet | None = None
        self._key: Any = None
        if settings.jwt_secret is not None:
            self._key, self.algorithms = settings.jwt_secret.get_secret_value(), ["HS256"]
        elif settings.jwt_public_key_file is not None:
            self._key = _read(settings.jwt_public_key_file, "jwt_public_key_file")
            self.algorithms = ["RS256", "ES256"]
        elif settings.jwt_jwks_file is not None:
            text = _read(settings.jwt_jwks_file, "jwt_jwks_file")
            try:
                self._jwks = jwt.PyJWKSet.from_dict(json.loads(text))
            except (ValueError, jwt.PyJWTError) as e:
                raise ValueError(f"jwt_jwks_file is not a JWKS: {e}") from None
            self.algorithms = ["RS256", "ES256"]
        else:
            raise ValueError("no JWT key configured")

    def verify(self, token: Any, now: float | None = None) -> Scope:
        """The token's :class:`Scope`; raises :class:`FrameError` (code ``unauthorized``)."""
        if not isinstance(token, str) or not token:
            raise FrameError("unauthorized", 'send {"type": "auth", "token": "<JWT>"}')
        now = time.time() if now is None else now
        try:
            key = self._key
            if self._jwks is not None:
                kid = jwt.get_unverified_header(token).get("kid")
                matching = [k for k in self._jwks.keys if k.key_id == kid]
                if not matching:
                    raise FrameError("unauthorized", f"no key with kid {kid!r} in the JWKS")
                key = matching[0].key
            claims = jwt.decode(
                token, key, algorithms=self.algorithms, audience=self.audience,
                options={"require": ["exp"], "verify_aud": self.audience is not None},
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise FrameError("token_expired", "the token has expired: get a new one") from None
        except jwt.PyJWTError as e:
            raise FrameError("unauthorized", f"token refused: {e}") from None
        exp = float(claims["exp"])
        start = float(claims.get("iat", now))
        if exp - min(start, now) > self.max_lifetime + 1:
            raise FrameError(
                "unauthorized",
                f"the token lives longer than {self.max_lifetime:g}s: issue short-lived tokens",
            )
        return scope_of(claims)


def scope_of(claims: dict[str, Any]) -> Scope:
    tp = claims.get("tp") or {}
    if not isinstance(tp, dict):
        raise FrameError("unauthorized", "claim tp must be an object")
    layers = tp.get("layers")
    area = tp.get("area")
    bbox = tp.get("bbox")
    try:
        return Scope(
            sub=str(claims["sub"]) if "sub" in claims else None,
            expires=float(claims["exp"]),
            layers=frozenset(map(str, layers)) if layers is not None else None,
            prefixes=tuple(_prefix(p) for p in area) if area is not None else None,
            bbox=tuple(float(v) for v in bbox) if bbox is not None else None,  # type: ignore[arg-type]
        )
    except (TypeError, ValueError) as e:
        raise FrameError("unauthorized", f"claim tp is malformed: {e}") from None


def _prefix(p: Any) -> str:
    if not isinstance(p, str) or p.strip("0123"):
        raise ValueError(f"area prefix {p!r} is not a quadkey")
    return p


def _read(path: Any, name: str) -> str:
    try:
        return str(path.read_text())
    except OSError as e:
        raise ValueError(f"cannot read {name} {str(path)!r}: {e.strerror}") from None


def origin_allowed(origin: str | None, allowed: list[str]) -> bool:
    """An empty allow-list (local use) or ``*`` accepts any; else an exact match."""
    if not allowed or "*" in allowed:
        return True
    return origin is not None and origin.rstrip("/") in allowed
